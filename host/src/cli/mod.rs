//! The `tablehost` command line.

mod agent;
mod demo;
mod load;
mod run;
mod serve;
mod table;

use clap::{Args, Parser, Subcommand};

use crate::load::InputFormat;

/// Durable tables for stream-processing agents written as WebAssembly
/// components.
#[derive(Debug, Parser)]
#[command(name = "tablehost", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agents of a config until interrupted (Ctrl-C drains and commits).
    Run(run::RunArgs),
    /// Load a JSON lines, CSV or Parquet file into a topic of a real cluster.
    Load(load::LoadArgs),
    /// Read the tables of a stopped application from its state directory.
    #[command(subcommand)]
    Table(table::TableCommand),
    /// Run the flights demo end to end on the embedded cluster.
    Demo(demo::DemoArgs),
    /// Run the admin API and the agents deployed through it (needs an
    /// [admin] section and TABLEHOST_ADMIN_TOKEN).
    Serve(serve::ServeArgs),
    /// Upload, list, deploy, swap, roll back and remove a tenant's agents.
    Agent(agent::AgentArgs),
    /// Create tenants and set their limits (admin token).
    Tenant(agent::TenantArgs),
}

/// Arguments that name an input file to load.
#[derive(Debug, Clone, Args)]
pub struct InputArgs {
    /// The field whose value becomes the record key.
    #[arg(long, value_name = "FIELD")]
    pub key_field: String,
    /// The input format: jsonl, csv or parquet. By default taken from the
    /// file extension (.jsonl, .ndjson, .json, .csv, .parquet).
    #[arg(long)]
    pub format: Option<InputFormat>,
    /// Partitions to create the topic with when it does not exist; by
    /// default the count under `[[topics]]` in the config, else 8.
    #[arg(long)]
    pub partitions: Option<u32>,
}

impl InputArgs {
    /// Returns the partition count to use for `topic`: `--partitions` when
    /// given (creating the topic then fails if it exists with another
    /// count), else the existing topic's count, else the config's
    /// `[[topics]]` entry, else 8.
    pub(crate) fn partitions(
        &self,
        kafka: &crate::kafka::Kafka,
        config: &crate::config::Config,
        topic: &str,
    ) -> anyhow::Result<u32> {
        if let Some(existing) = kafka.partition_count(topic)? {
            return Ok(self.partitions.unwrap_or(existing));
        }
        let configured = config
            .topics
            .iter()
            .find(|t| t.name == topic)
            .map(|t| t.partitions);
        Ok(self.partitions.or(configured).unwrap_or(8))
    }
}

/// Runs the parsed command line.
///
/// # Errors
///
/// Returns the error of the command, for `main` to print.
pub fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Load(args) => load::load(args),
        Command::Table(command) => table::table(command),
        Command::Demo(args) => demo::demo(args),
        Command::Serve(args) => serve::serve(args),
        Command::Agent(args) => agent::agent(args),
        Command::Tenant(args) => agent::tenant(args),
    }
}
