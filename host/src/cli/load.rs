//! `tablehost load`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use super::InputArgs;
use crate::config::Config;
use crate::feed::{feed, FeedOptions};
use crate::kafka::Kafka;

#[derive(Debug, Args)]
pub(super) struct LoadArgs {
    /// The application config; its `brokers` and `[kafka]` settings are used.
    #[arg(long, short)]
    config: PathBuf,
    /// The topic to load into.
    #[arg(long)]
    topic: String,
    #[command(flatten)]
    input: InputArgs,
    /// The file to load.
    file: PathBuf,
}

pub(super) fn load(args: LoadArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let Some(brokers) = &config.brokers else {
        bail!(
            "load: {} uses the embedded cluster, which lives only inside one process; \
             use `tablehost run --config {} --load {} --key-field {}` to load and run together, \
             or set `brokers` to a real cluster",
            args.config.display(),
            args.config.display(),
            args.file.display(),
            args.input.key_field
        );
    };
    let kafka = Kafka::connect(brokers, config.kafka.clone())?;
    let partitions = args.input.partitions(&kafka, &config, &args.topic)?;
    let summary = feed(
        &kafka,
        &FeedOptions {
            path: &args.file,
            format: args.input.format,
            key_field: &args.input.key_field,
            topic: &args.topic,
            partitions,
            progress: std::io::stderr().is_terminal(),
        },
    )?;
    println!(
        "loaded {} records into {} in {:.1} s ({:.0} records/s)",
        summary.records,
        args.topic,
        summary.seconds,
        summary.records as f64 / summary.seconds.max(1e-9)
    );
    Ok(())
}
