//! Recovery: rebuilding a table partition from its changelog.
//!
//! A store remembers the offset of the next changelog record it has not
//! applied. Recovery reads the changelog partition from that offset up to
//! the high watermark observed at the start and applies the records in
//! chunks, each chunk together with its offset, so an interrupted recovery
//! resumes where it stopped. A store that has never been written starts at
//! the low watermark.
//!
//! Recovery ends when the high watermark is reached or when the consumer
//! reports the end of the partition, whichever comes first. The second
//! case covers a changelog whose last offsets are transaction markers,
//! because markers are never delivered as records.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::changelog;
use crate::config::StoreAhead;
use crate::kafka::Kafka;
use crate::store::{ChangelogRecord, Partition, SourcePosition};
use crate::table::Table;

/// Records applied to the store in one write batch.
const CHUNK: usize = 10_000;
/// Records a replay must have to show a progress bar.
const PROGRESS_BAR_RECORDS: i64 = 100_000;
/// How long recovery waits for the next record before it gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Counters of one partition's recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The table.
    pub table: String,
    /// The partition.
    pub partition: Partition,
    /// The changelog offset recovery started from.
    pub from_offset: i64,
    /// The high watermark recovery read up to.
    pub to_offset: i64,
    /// Changelog records applied.
    pub replayed: u64,
}

/// Brings partition `partition` of `table` up to date with its changelog.
///
/// # Errors
///
/// Fails when the cluster cannot be read, the store cannot be written, the
/// store claims an offset beyond the changelog's end (the changelog topic
/// was deleted and recreated), or the embedded cluster has dropped records
/// of the changelog.
pub fn recover_partition(
    kafka: &Kafka,
    table: &Table,
    partition: Partition,
) -> anyhow::Result<RecoveryReport> {
    ChangelogReader::new(kafka)?.recover(kafka, table, partition, StoreAhead::Fail)
}

/// A consumer for reading changelogs, reused across partitions because
/// creating one costs a connection and a metadata round trip (about 100 ms
/// on the embedded cluster), more than replaying a small partition.
pub struct ChangelogReader {
    consumer: BaseConsumer,
}

impl ChangelogReader {
    /// Creates the reader's consumer. It reads only assigned partitions and
    /// never joins a group or commits.
    ///
    /// # Errors
    ///
    /// Fails when librdkafka rejects the configuration.
    pub fn new(kafka: &Kafka) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = kafka
            .client_config()
            .set("group.id", "tablehost-recovery")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            // A fetch to an empty partition waits this long for data. The
            // default of 500 ms would delay every partition that follows a
            // reassignment of this reused consumer.
            .set("fetch.wait.max.ms", "10")
            .create()
            .context("recovery: failed to create the changelog consumer")?;
        Ok(Self { consumer })
    }

    /// Brings partition `partition` of `table` up to date with its
    /// changelog; see [`recover_partition`].
    ///
    /// `store_ahead` chooses what happens when the store has applied
    /// offsets past the changelog's end. On the embedded cluster the state
    /// is always rebuilt, because that cluster starts empty in every
    /// process.
    ///
    /// # Errors
    ///
    /// As [`recover_partition`].
    pub fn recover(
        &self,
        kafka: &Kafka,
        table: &Table,
        partition: Partition,
        store_ahead: StoreAhead,
    ) -> anyhow::Result<RecoveryReport> {
        let topic = table.changelog_topic();
        let store = table.store();
        let (low, high) = kafka.watermarks(topic, partition)?;

        let persisted = store.changelog_offset(partition)?;
        let embedded = kafka.embedded_cluster().is_some();
        let start = match start_offset(persisted, low, high, store_ahead, embedded) {
            Start::At(offset) => offset,
            Start::BelowLow(offset) => {
                tracing::warn!(
                    table = table.name(),
                    partition,
                    persisted = offset,
                    low,
                    "recovery: persisted offset is below the changelog's low watermark; replaying \
                     from the low watermark"
                );
                low
            }
            Start::Rebuild(offset) => {
                let reason = if embedded && store_ahead == StoreAhead::Fail {
                    // The embedded cluster starts empty in every process, so
                    // state left by an earlier process belongs to topics
                    // that are gone.
                    "the embedded cluster starts empty, so the state belongs to an earlier process"
                } else {
                    "recovery.store_ahead = \"rebuild\" asks to rebuild"
                };
                tracing::warn!(
                    table = table.name(),
                    partition,
                    persisted = offset,
                    high,
                    reason,
                    "recovery: the store is ahead of the changelog; dropping its state and \
                     replaying the changelog"
                );
                store.drop_partition(partition)?;
                low
            }
            Start::Lost => bail!(
                "recovery: changelog {topic} partition {partition} starts at offset {low}, so the \
                 embedded cluster has dropped older records and the table cannot be rebuilt; run \
                 against a real broker"
            ),
            Start::Ahead(offset) => bail!(
                "table {} partition {partition} has applied the changelog up to offset {offset}, but \
                 changelog {topic} ends at offset {high}, so the topic was deleted and recreated or \
                 belongs to another cluster. Delete the table's state directory, or set \
                 recovery.store_ahead = \"rebuild\", to rebuild the table from the changelog",
                table.name()
            ),
        };
        let mut report = RecoveryReport {
            table: table.name().to_owned(),
            partition,
            from_offset: start,
            to_offset: high,
            replayed: 0,
        };
        if start >= high {
            if persisted.is_none() {
                store.apply_changelog(partition, &[], high, &[])?;
            }
            return Ok(report);
        }

        let started = Instant::now();
        tracing::info!(
            table = table.name(),
            partition,
            from = start,
            to = high,
            records = high - start,
            "recovery: replaying changelog"
        );
        // A bar only for long replays on a terminal; logs cover the rest.
        let bar = if high - start >= PROGRESS_BAR_RECORDS && std::io::stderr().is_terminal() {
            let bar = ProgressBar::new((high - start) as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} {wide_bar} {human_pos}/{human_len} ({per_sec}, {eta})",
                )
                .expect("the progress bar template is valid"),
            );
            bar.set_message(format!("recovering {} partition {partition}", table.name()));
            bar
        } else {
            ProgressBar::hidden()
        };
        let consumer = &self.consumer;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition as i32, Offset::Offset(start))?;
        consumer
            .assign(&assignment)
            .with_context(|| format!("recovery: failed to assign {topic}/{partition}"))?;

        let mut chunk: Vec<ChangelogRecord> = Vec::with_capacity(CHUNK);
        // The newest source positions seen in the chunk, applied with it.
        let mut positions: Vec<SourcePosition> = Vec::new();
        let mut next_offset = start;
        let mut last_progress = Instant::now();
        let mut last_log = Instant::now();
        loop {
            match consumer.poll(Duration::from_millis(200)) {
                // A message of a partition assigned earlier may still be
                // queued; it belongs to another recovery.
                Some(Ok(message))
                    if message.topic() != topic || message.partition() != partition as i32 => {}
                Some(Ok(message)) => {
                    last_progress = Instant::now();
                    chunk.push(ChangelogRecord {
                        key: message.key().unwrap_or_default().to_vec(),
                        value: message.payload().map(<[u8]>::to_vec),
                    });
                    merge_positions(&mut positions, changelog::positions_from_headers(&message));
                    next_offset = message.offset() + 1;
                    if chunk.len() >= CHUNK {
                        store.apply_changelog(partition, &chunk, next_offset, &positions)?;
                        report.replayed += chunk.len() as u64;
                        chunk.clear();
                        positions.clear();
                        bar.set_position((next_offset - start) as u64);
                    }
                    if next_offset >= high {
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(eof))) if eof == partition as i32 => break,
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(error)) => bail!(
                    "recovery: failed to read {topic}/{partition} at offset {next_offset}: {error}"
                ),
                None if last_progress.elapsed() > STALL_TIMEOUT => bail!(
                    "recovery: no record of {topic}/{partition} arrived for {STALL_TIMEOUT:?} at \
                     offset {next_offset} (high watermark {high}); check that the cluster is reachable"
                ),
                None => {}
            }
            if last_log.elapsed() > Duration::from_secs(5) {
                last_log = Instant::now();
                let done = next_offset - start;
                let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
                let eta = (high - next_offset) as f64 / rate.max(1.0);
                tracing::info!(
                    table = table.name(),
                    partition,
                    remaining = high - next_offset,
                    eta_seconds = eta.round(),
                    "recovery: progress"
                );
            }
        }
        // Stop fetching, so the idle reader does not buffer the records
        // this worker commits to the changelog later.
        consumer
            .unassign()
            .context("recovery: failed to release the changelog partition")?;
        bar.finish_and_clear();
        report.replayed += chunk.len() as u64;
        // Offsets up to the high watermark are consumed even when the last ones
        // were transaction markers that never arrive as records.
        store.apply_changelog(partition, &chunk, high.max(next_offset), &positions)?;
        tracing::info!(
            table = table.name(),
            partition,
            replayed = report.replayed,
            seconds = started.elapsed().as_secs_f64(),
            "recovery: partition recovered"
        );
        Ok(report)
    }
}

/// The offset at which recovery of one partition starts, or why there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At this offset.
    At(i64),
    /// At the low watermark, because the persisted offset (the payload) is
    /// below it: the records in between were compacted or deleted.
    BelowLow(i64),
    /// At the low watermark after dropping the state, whose persisted
    /// offset (the payload) lies past the changelog's end.
    Rebuild(i64),
    /// Nowhere: the store is ahead of the changelog (persisted offset in
    /// the payload) and `recovery.store_ahead` is `fail`.
    Ahead(i64),
    /// Nowhere: the embedded cluster dropped records the store needs.
    Lost,
}

/// Decides where recovery starts, given the store's persisted offset and
/// the changelog partition's watermarks.
///
/// A low watermark above the persisted offset means retention removed the
/// head, and replay starts at the low watermark with a warning, as Faust
/// does. A store that has never been written is rebuilt from the low
/// watermark too, except on the embedded cluster. That cluster drops
/// records only when it runs out of room, so a rebuild from what is left
/// would look complete and be wrong. The embedded cluster also starts empty in every
/// process, so a store ahead of it is always rebuilt.
pub fn start_offset(
    persisted: Option<i64>,
    low: i64,
    high: i64,
    store_ahead: StoreAhead,
    embedded: bool,
) -> Start {
    match persisted {
        Some(offset) if offset > high => {
            if store_ahead == StoreAhead::Rebuild || embedded {
                Start::Rebuild(offset)
            } else {
                Start::Ahead(offset)
            }
        }
        None if embedded && low > 0 => Start::Lost,
        None => Start::At(low),
        Some(offset) if offset < low => Start::BelowLow(offset),
        Some(offset) => Start::At(offset),
    }
}

/// Replaces the positions in `into` with newer ones of the same topic.
pub(crate) fn merge_positions(into: &mut Vec<SourcePosition>, newer: Vec<SourcePosition>) {
    for (topic, offset) in newer {
        match into.iter_mut().find(|(t, _)| *t == topic) {
            Some(entry) => entry.1 = offset,
            None => into.push((topic, offset)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::kafka::producer::TrackedProducer;
    use crate::kafka::TopicKind;
    use crate::store::MemoryStore;

    fn changelog_with(kafka: &Kafka, records: &[(&[u8], Option<&[u8]>)]) -> Table {
        kafka
            .ensure_topic("app-t-changelog", 1, TopicKind::Changelog)
            .unwrap();
        let producer = TrackedProducer::new(kafka).unwrap();
        for (key, value) in records {
            producer
                .send("app-t-changelog", Some(0), Some(key), *value, &[])
                .unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
        Table::new("t", "app-t-changelog", Arc::new(MemoryStore::new()))
    }

    #[test]
    fn recovery_start_covers_every_changelog_shape() {
        use StoreAhead::{Fail, Rebuild};
        // An empty partition, and one never written to this store.
        assert_eq!(start_offset(None, 0, 0, Fail, false), Start::At(0));
        assert_eq!(start_offset(None, 0, 0, Fail, true), Start::At(0));
        // A compacted or retention-deleted head on a real broker.
        assert_eq!(start_offset(None, 40, 90, Fail, false), Start::At(40));
        assert_eq!(
            start_offset(Some(10), 40, 90, Fail, false),
            Start::BelowLow(10)
        );
        assert_eq!(start_offset(Some(50), 40, 90, Fail, false), Start::At(50));
        // The embedded cluster dropped records the store still needs.
        assert_eq!(start_offset(None, 40, 90, Fail, true), Start::Lost);
        assert_eq!(
            start_offset(Some(10), 40, 90, Fail, true),
            Start::BelowLow(10)
        );
        assert_eq!(start_offset(Some(50), 40, 90, Fail, true), Start::At(50));
        // A store ahead of the changelog: the topic was recreated.
        assert_eq!(
            start_offset(Some(120), 0, 90, Fail, false),
            Start::Ahead(120)
        );
        assert_eq!(
            start_offset(Some(120), 0, 90, Rebuild, false),
            Start::Rebuild(120)
        );
        assert_eq!(
            start_offset(Some(120), 0, 90, Fail, true),
            Start::Rebuild(120)
        );
        // A store exactly at the end replays nothing.
        assert_eq!(start_offset(Some(90), 0, 90, Fail, false), Start::At(90));
    }

    #[test]
    fn recovery_replays_records_and_tombstones() {
        let kafka = Kafka::embedded(Default::default()).unwrap();
        let table = changelog_with(
            &kafka,
            &[(b"a", Some(b"1")), (b"b", Some(b"2")), (b"a", None)],
        );
        let report = recover_partition(&kafka, &table, 0).unwrap();
        assert_eq!(report.replayed, 3);
        assert_eq!(report.from_offset, 0);
        assert_eq!(report.to_offset, 3);
        assert_eq!(table.store().get(0, b"a").unwrap(), None);
        assert_eq!(table.store().get(0, b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(table.store().changelog_offset(0).unwrap(), Some(3));

        // A second recovery finds nothing new.
        assert_eq!(recover_partition(&kafka, &table, 0).unwrap().replayed, 0);
    }

    #[test]
    fn recovery_of_empty_changelog_sets_offset() {
        let kafka = Kafka::embedded(Default::default()).unwrap();
        let table = changelog_with(&kafka, &[]);
        let report = recover_partition(&kafka, &table, 0).unwrap();
        assert_eq!(report.replayed, 0);
        assert_eq!(table.store().changelog_offset(0).unwrap(), Some(0));
    }

    #[test]
    fn recovery_on_embedded_cluster_discards_stale_state() {
        let kafka = Kafka::embedded(Default::default()).unwrap();
        let table = changelog_with(&kafka, &[(b"a", Some(b"1"))]);
        let stale = [ChangelogRecord {
            key: b"old".to_vec(),
            value: Some(b"x".to_vec()),
        }];
        table.store().apply_changelog(0, &stale, 10, &[]).unwrap();
        let report = recover_partition(&kafka, &table, 0).unwrap();
        assert_eq!(report.from_offset, 0);
        assert_eq!(report.replayed, 1);
        assert_eq!(table.store().get(0, b"old").unwrap(), None);
        assert_eq!(table.store().get(0, b"a").unwrap(), Some(b"1".to_vec()));
    }
}
