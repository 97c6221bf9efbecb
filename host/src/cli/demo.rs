//! `tablehost demo`: the flights job end to end on the embedded cluster.
//!
//! The demo runs in four phases:
//!
//! 1. Load the Parquet file into the source topic while the agent consumes it.
//! 2. Print the 10 origins with the highest average delay.
//! 3. Check the table and the number of `long-delays` records against an
//!    independent computation over the same file.
//! 4. Delete the RocksDB state, recover it from the changelog, and check that
//!    the recovered table equals the one before.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;

use super::run::print_summary;
use crate::config::Config;
use crate::demo::reference::{flights_reference, Reference};
use crate::feed::{feed, FeedOptions};
use crate::kafka::{Kafka, TopicKind};
use crate::manager::table_dir;
use crate::store::{RocksStore, Store};
use crate::worker::{run, RunOptions, Shutdown};

const TABLE: &str = "delays_by_origin";
const SOURCE: &str = "flights";
const LONG_DELAYS: &str = "long-delays";
/// Origins with fewer flights are left out of the ranking.
const MIN_FLIGHTS: u64 = 1000;

#[derive(Debug, Args)]
pub(super) struct DemoArgs {
    /// The demo config.
    #[arg(long, short, default_value = "plugins/flight-delays/tablehost.toml")]
    config: PathBuf,
    /// The flights Parquet file (`data/flights-3m.parquet` of vega-datasets).
    #[arg(long)]
    data: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
struct Delays {
    flights: u64,
    delay_total: i64,
    delay_max: i64,
}

pub(super) fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    if config.brokers.is_some() {
        bail!(
            "demo: {} sets `brokers`; the demo runs on the embedded cluster, so remove the key",
            args.config.display()
        );
    }
    if !config.tables.iter().any(|t| t.name == TABLE) {
        bail!("demo: {} declares no table {TABLE}", args.config.display());
    }
    let state_dir = config.state_dir();
    if state_dir.exists() {
        std::fs::remove_dir_all(&state_dir)
            .with_context(|| format!("demo: cannot clear {}", state_dir.display()))?;
    }
    let kafka = Arc::new(Kafka::embedded(config.kafka.clone())?);
    let partitions = config
        .topics
        .iter()
        .find(|t| t.name == SOURCE)
        .map_or(8, |t| t.partitions);
    kafka.ensure_topic(SOURCE, partitions, TopicKind::Plain)?;

    println!(
        "== phase 1: load {} into topic {SOURCE} while agent flight-delays consumes it",
        args.data.display()
    );
    let ends = Arc::new(Mutex::new(None));
    let shutdown = Arc::new(Shutdown::default());
    let loader = {
        let kafka = kafka.clone();
        let ends = ends.clone();
        let shutdown = shutdown.clone();
        let data = args.data.clone();
        std::thread::spawn(move || {
            let result = feed(
                &kafka,
                &FeedOptions {
                    path: &data,
                    format: None,
                    key_field: "origin",
                    topic: SOURCE,
                    partitions,
                    progress: false,
                },
            );
            match &result {
                Ok(summary) => {
                    *ends.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(summary.end_offsets.clone())
                }
                // Without end offsets the worker would wait forever.
                Err(_) => shutdown.request(),
            }
            result
        })
    };
    let options = RunOptions {
        stop_at_end: true,
        end_offsets: Some(ends),
        ..Default::default()
    };
    let first = run(&config, kafka.clone(), shutdown, options);
    let loaded = loader
        .join()
        .map_err(|_| anyhow::anyhow!("demo: the loader thread panicked"))??;
    let first = first?;
    println!(
        "load: {} records in {:.1} s ({:.0} records/s)",
        loaded.records,
        loaded.seconds,
        loaded.records as f64 / loaded.seconds.max(1e-9)
    );
    print_summary(&first);

    println!("\n== phase 2: results");
    let before = read_table(&config)?;
    print_top(&before)?;
    let long_delays = count_records(&kafka, LONG_DELAYS)?;
    println!("{LONG_DELAYS}: {long_delays} records");

    println!(
        "\n== phase 3: check against an independent computation over {}",
        args.data.display()
    );
    let started = std::time::Instant::now();
    let reference = flights_reference(&args.data)?;
    check_reference(&before, long_delays, &reference)?;
    println!(
        "table {TABLE} and topic {LONG_DELAYS} match the independent computation exactly: {} origins, {} flights, {} long delays ({:.1} s)",
        reference.origins.len(),
        reference.rows,
        reference.long_delays,
        started.elapsed().as_secs_f64()
    );

    println!("\n== phase 4: delete the RocksDB state and recover it from the changelog");
    let dir = table_dir(&state_dir, TABLE);
    std::fs::remove_dir_all(&dir)
        .with_context(|| format!("demo: cannot delete {}", dir.display()))?;
    println!("deleted {}", dir.display());
    let second = run(
        &config,
        kafka.clone(),
        Arc::new(Shutdown::default()),
        RunOptions {
            stop_at_end: true,
            ..Default::default()
        },
    )?;
    let replayed: u64 = second.recoveries.iter().map(|r| r.replayed).sum();
    let after = read_table(&config)?;
    if after != before {
        bail!("demo: the recovered table differs from the table before recovery ({} keys before, {} after)", before.len(), after.len());
    }
    println!(
        "recovered table equals the table before: {} keys, {} changelog records replayed in {:.2} s ({:.0} records/s)",
        after.len(),
        replayed,
        second.recovery_seconds,
        replayed as f64 / second.recovery_seconds.max(1e-9)
    );
    Ok(())
}

fn read_table(config: &Config) -> anyhow::Result<BTreeMap<String, Delays>> {
    let table_config = config
        .tables
        .iter()
        .find(|t| t.name == TABLE)
        .expect("checked at start");
    let store = RocksStore::open(
        TABLE,
        &table_dir(&config.state_dir(), TABLE),
        &table_config.rocksdb,
    )?;
    let mut out = BTreeMap::new();
    for partition in store.partitions()? {
        for entry in store.iter(partition)? {
            let (key, value) = entry?;
            let origin = String::from_utf8(key).context("demo: a table key is not UTF-8")?;
            let delays: Delays = serde_json::from_slice(&value).with_context(|| {
                format!(
                    "demo: value of {origin} is not a delays object: {}",
                    String::from_utf8_lossy(&value)
                )
            })?;
            out.insert(origin, delays);
        }
    }
    Ok(out)
}

fn print_top(table: &BTreeMap<String, Delays>) -> anyhow::Result<()> {
    let mut ranked: Vec<(&String, &Delays, f64)> = table
        .iter()
        .filter(|(_, d)| d.flights >= MIN_FLIGHTS)
        .map(|(origin, d)| (origin, d, d.delay_total as f64 / d.flights as f64))
        .collect();
    ranked.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.cmp(b.0)));
    println!("top 10 origins by average delay (at least {MIN_FLIGHTS} flights):");
    println!(
        "{:>4}  {:<6} {:>9} {:>15} {:>15}",
        "rank", "origin", "flights", "avg delay (min)", "max delay (min)"
    );
    for (rank, (origin, delays, average)) in ranked.iter().take(10).enumerate() {
        println!(
            "{:>4}  {:<6} {:>9} {:>15.2} {:>15}",
            rank + 1,
            origin,
            delays.flights,
            average,
            delays.delay_max
        );
    }
    Ok(())
}

fn count_records(kafka: &Kafka, topic: &str) -> anyhow::Result<u64> {
    let partitions = kafka
        .partition_count(topic)?
        .with_context(|| format!("demo: topic {topic} does not exist"))?;
    let mut total = 0;
    for partition in 0..partitions {
        let (low, high) = kafka.watermarks(topic, partition)?;
        if low > 0 {
            bail!("demo: the embedded cluster dropped the first {low} records of {topic}/{partition}; the count would be wrong");
        }
        total += high as u64;
    }
    Ok(total)
}

fn check_reference(
    table: &BTreeMap<String, Delays>,
    long_delays: u64,
    reference: &Reference,
) -> anyhow::Result<()> {
    let mut mismatches = Vec::new();
    for (origin, expected) in &reference.origins {
        let expected = Delays {
            flights: expected.flights,
            delay_total: expected.delay_total,
            delay_max: expected.delay_max,
        };
        match table.get(origin) {
            Some(actual) if *actual == expected => {}
            Some(actual) => {
                mismatches.push(format!("{origin}: table {actual:?}, expected {expected:?}"))
            }
            None => mismatches.push(format!("{origin}: missing from the table")),
        }
    }
    for origin in table.keys().filter(|o| !reference.origins.contains_key(*o)) {
        mismatches.push(format!("{origin}: in the table but not in the file"));
    }
    if long_delays != reference.long_delays {
        mismatches.push(format!(
            "{LONG_DELAYS}: {long_delays} records, expected {}",
            reference.long_delays
        ));
    }
    if !mismatches.is_empty() {
        bail!(
            "demo: {} mismatches with the independent computation, first: {}",
            mismatches.len(),
            mismatches[0]
        );
    }
    Ok(())
}
