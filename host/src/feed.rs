//! Feeding a file into a topic: the engine behind `tablehost load` and the
//! in-process loading of `tablehost run --load`.
//!
//! Each row's partition is chosen with Kafka's default partitioner, so a
//! loaded topic is partitioned exactly as a Java producer would partition
//! it. On the embedded cluster the feed waits for the consumer to commit
//! before a partition's unconsumed backlog outgrows what the cluster
//! retains; see [`crate::kafka::embedded`].

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::ProgressBar;

use crate::kafka::embedded::record_footprint;
use crate::kafka::partitioner::partition_for_key;
use crate::kafka::producer::TrackedProducer;
use crate::kafka::{Kafka, TopicKind};
use crate::load::{read_rows, InputFormat};

/// How long the feed waits for an embedded partition to make room before
/// it concludes that nothing consumes the topic.
const ROOM_TIMEOUT: Duration = Duration::from_secs(300);

/// Counters of one load.
#[derive(Debug, Clone, Default)]
pub struct FeedSummary {
    /// Records produced.
    pub records: u64,
    /// The next offset of each partition after the load, which a consumer
    /// must reach to have read everything loaded.
    pub end_offsets: HashMap<(String, i32), i64>,
    /// Seconds from the first row read to the last acknowledgement.
    pub seconds: f64,
}

/// Options of one load.
#[derive(Debug, Clone)]
pub struct FeedOptions<'a> {
    /// The input file.
    pub path: &'a Path,
    /// Its format; `None` picks it from the extension.
    pub format: Option<InputFormat>,
    /// The field whose value becomes the record key.
    pub key_field: &'a str,
    /// The topic to load into.
    pub topic: &'a str,
    /// Partitions to create the topic with when it is missing.
    pub partitions: u32,
    /// Whether to draw a progress bar on stderr.
    pub progress: bool,
}

/// Loads a file into a topic, creating the topic when it is missing.
///
/// # Errors
///
/// Fails on a bad input file (the message names the line or row), when the
/// topic cannot be created, or when records are not acknowledged.
pub fn feed(kafka: &Kafka, options: &FeedOptions<'_>) -> anyhow::Result<FeedSummary> {
    let format = match options.format {
        Some(format) => format,
        None => InputFormat::from_path(options.path)?,
    };
    let mut rows = read_rows(options.path, format, options.key_field)?;
    kafka.ensure_topic(options.topic, options.partitions, TopicKind::Plain)?;
    let partitions = kafka.partition_count(options.topic)?.with_context(|| {
        format!(
            "load: topic {} is not visible after creation",
            options.topic
        )
    })?;
    let producer = TrackedProducer::new(kafka)?;

    // The reader advances the bar itself; indicatif hides it when stderr is
    // not a terminal.
    let bar = if options.progress {
        rows.progress_bar()
    } else {
        ProgressBar::hidden()
    };
    tracing::info!(path = %options.path.display(), topic = options.topic, partitions, ?format, "load: starting");

    let started = Instant::now();
    let mut summary = FeedSummary::default();
    let mut last_log = Instant::now();
    for row in rows {
        let row = row?;
        let partition = partition_for_key(&row.key, partitions);
        if let Some(cluster) = kafka.embedded_cluster() {
            let bytes = record_footprint(row.key.len(), row.value.len(), 0);
            cluster
                .ledger()
                .wait_for_room(options.topic, partition, bytes, ROOM_TIMEOUT)?;
        }
        producer.send(
            options.topic,
            Some(partition as i32),
            Some(&row.key),
            Some(&row.value),
            &[],
        )?;
        summary.records += 1;
        if !options.progress
            && summary.records % 4096 == 0
            && last_log.elapsed() > Duration::from_secs(5)
        {
            last_log = Instant::now();
            tracing::info!(
                records = summary.records,
                topic = options.topic,
                "load: progress"
            );
        }
    }
    let acknowledged = producer
        .flush(Duration::from_secs(120))
        .context("load: records were not acknowledged")?;
    bar.finish_and_clear();
    for ((topic, partition), offset) in acknowledged {
        summary.end_offsets.insert((topic, partition), offset + 1);
    }
    summary.seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        records = summary.records,
        topic = options.topic,
        seconds = summary.seconds,
        "load: finished"
    );
    Ok(summary)
}
