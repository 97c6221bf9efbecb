//! `tablehost run`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::Args;

use super::InputArgs;
use crate::config::Config;
use crate::feed::{feed, FeedOptions};
use crate::kafka::Kafka;
use crate::worker::{run as run_worker, RunOptions, RunSummary, Shutdown};

#[derive(Debug, Args)]
pub(super) struct RunArgs {
    /// The application config (TOML).
    #[arg(long, short)]
    config: PathBuf,
    /// Load this file into a source topic in the same process while the
    /// agents run; with the embedded cluster this is how data gets in.
    #[arg(long, value_name = "FILE", requires = "key_field")]
    load: Option<PathBuf>,
    /// The topic `--load` writes to; by default the first agent's first source.
    #[arg(long, requires = "load")]
    topic: Option<String>,
    /// The field whose value becomes the record key of each loaded row.
    #[arg(long, value_name = "FIELD", requires = "load")]
    key_field: Option<String>,
    /// The format of the `--load` file: jsonl, csv or parquet. By default
    /// taken from its extension.
    #[arg(long, requires = "load")]
    format: Option<crate::load::InputFormat>,
    /// Partitions to create the `--load` topic with when it does not exist;
    /// by default the count under `[[topics]]` in the config, else 8.
    #[arg(long, requires = "load")]
    partitions: Option<u32>,
    /// Stop once every source partition is consumed to its end (after `--load` finishes).
    #[arg(long)]
    stop_at_end: bool,
}

pub(super) fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    if config.agents.is_empty() {
        anyhow::bail!(
            "config {}: agents: no agent is configured; add an [[agents]] section, or deploy agents through `tablehost serve`",
            args.config.display()
        );
    }
    let kafka = Arc::new(connect(&config)?);
    let shutdown = Arc::new(Shutdown::default());
    install_signal_handler(shutdown.clone())?;

    let mut options = RunOptions {
        stop_at_end: args.stop_at_end,
        ..Default::default()
    };
    let mut loader = None;
    if let Some(path) = args.load.clone() {
        let input = InputArgs {
            key_field: args.key_field.clone().context("--load needs --key-field")?,
            format: args.format,
            partitions: args.partitions,
        };
        let topic = args
            .topic
            .clone()
            .unwrap_or_else(|| config.agents[0].sources[0].clone());
        let partitions = input.partitions(&kafka, &config, &topic)?;
        // The worker checks its source topics at start, so the topic must
        // exist before the loader's first record.
        kafka.ensure_topic(&topic, partitions, crate::kafka::TopicKind::Plain)?;
        let ends = Arc::new(Mutex::new(None));
        options.end_offsets = Some(ends.clone());
        let kafka = kafka.clone();
        let shutdown = shutdown.clone();
        loader = Some(std::thread::spawn(move || {
            let result = feed(
                &kafka,
                &FeedOptions {
                    path: &path,
                    format: input.format,
                    key_field: &input.key_field,
                    topic: &topic,
                    partitions,
                    progress: std::io::stderr().is_terminal(),
                },
            );
            match &result {
                Ok(summary) => {
                    *ends.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(summary.end_offsets.clone())
                }
                // Without its input the run cannot finish; drain what was loaded and stop.
                Err(_) => shutdown.request(),
            }
            result
        }));
    }

    let summary = run_worker(&config, kafka, shutdown, options);
    if let Some(loader) = loader {
        let loaded = loader
            .join()
            .map_err(|_| anyhow::anyhow!("the loader thread panicked"))??;
        println!(
            "loaded {} records in {:.1} s ({:.0} records/s)",
            loaded.records,
            loaded.seconds,
            loaded.records as f64 / loaded.seconds.max(1e-9)
        );
    }
    print_summary(&summary?);
    Ok(())
}

pub(super) fn connect(config: &Config) -> anyhow::Result<Kafka> {
    match &config.brokers {
        Some(brokers) => Kafka::connect(brokers, config.kafka.clone()),
        None => Kafka::embedded(config.kafka.clone()),
    }
}

pub(super) fn install_signal_handler(shutdown: Arc<Shutdown>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("tablehost-signals".into())
        .spawn(move || {
            runtime.block_on(async {
                let mut terminate =
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        Ok(signal) => signal,
                        Err(error) => {
                            tracing::error!(%error, "signals: cannot listen for SIGTERM");
                            return;
                        }
                    };
                let signal = tokio::select! {
                    _ = tokio::signal::ctrl_c() => "SIGINT",
                    _ = terminate.recv() => "SIGTERM",
                };
                // The stop request comes first: logging to a closed stderr
                // must not keep the process from stopping.
                shutdown.request();
                tracing::info!("signals: {signal} received; draining and committing");
            });
        })?;
    Ok(())
}

pub(super) fn print_summary(summary: &RunSummary) {
    let replayed: u64 = summary.recoveries.iter().map(|r| r.replayed).sum();
    println!(
        "recovered {} table partitions ({} changelog records) in {:.2} s",
        summary.recoveries.len(),
        replayed,
        summary.recovery_seconds
    );
    println!(
        "handled {} events in {:.1} s ({:.0} events/s); {} outputs, {} dead letters, {} changelog records, {} commits",
        summary.events,
        summary.processing_seconds,
        summary.events as f64 / summary.processing_seconds.max(1e-9),
        summary.outputs,
        summary.dead_letters,
        summary.changelog_records,
        summary.commits
    );
}
