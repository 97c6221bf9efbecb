//! Changelog topics: naming, writing a table partition's changes, and
//! turning acknowledgements into the offset a store records.
//!
//! A table's changelog is the compacted topic `<app_id>-<table>-changelog`
//! with the partition count of the table's source topics. Partition `p` of
//! the changelog contains the changes of partition `p` of the table, so
//! recovering a source partition reads exactly one changelog partition.
//! Each record is a key with its newest value, or a tombstone (no value)
//! for a delete, so compaction keeps one record per live key.
//!
//! The last record a commit writes to a partition carries, in headers named
//! [`POSITION_HEADER`], the source positions the partition's state reflects
//! (`<topic>:<next offset>`). The newest record of a partition is never
//! compacted away, so the newest positions survive, and the worker that
//! recovers the partition knows which source records its state already contains,
//! even when the source offsets were never committed.

use anyhow::bail;

use crate::kafka::embedded::record_footprint;
use crate::kafka::producer::{Acknowledged, TrackedProducer};
use crate::kafka::Kafka;
use crate::store::{ChangelogRecord, Partition, SourcePosition};

/// The header that carries a source position on a changelog record.
pub const POSITION_HEADER: &str = "tablehost-source-position";

/// Reads the source positions from a changelog record's headers; headers
/// of another name or shape are ignored.
pub fn positions_from_headers(message: &impl rdkafka::message::Message) -> Vec<SourcePosition> {
    use rdkafka::message::Headers;
    let Some(headers) = message.headers() else {
        return Vec::new();
    };
    headers
        .iter()
        .filter(|h| h.key == POSITION_HEADER)
        .filter_map(|h| {
            let text = std::str::from_utf8(h.value?).ok()?;
            let (topic, offset) = text.rsplit_once(':')?;
            Some((topic.to_owned(), offset.parse().ok()?))
        })
        .collect()
}

/// Returns the changelog topic of `table` in application `app_id`.
pub fn topic_name(app_id: &str, table: &str) -> String {
    format!("{app_id}-{table}-changelog")
}

/// Queues `records` for partition `partition` of changelog `topic`.
///
/// On the embedded cluster it first reserves room for them, because the
/// cluster would silently drop changelog records beyond what it retains.
///
/// # Errors
///
/// Fails when the embedded cluster has no room for the records or the
/// producer rejects one.
pub fn send(
    kafka: &Kafka,
    producer: &TrackedProducer,
    topic: &str,
    partition: Partition,
    records: &[ChangelogRecord],
    positions: &[SourcePosition],
) -> anyhow::Result<()> {
    if let Some(cluster) = kafka.embedded_cluster() {
        let bytes = records
            .iter()
            .map(|r| record_footprint(r.key.len(), r.value.as_ref().map_or(0, Vec::len), 0))
            .sum();
        cluster
            .ledger()
            .reserve(topic, partition, bytes, records.len() as u64)?;
    }
    let headers: Vec<(String, Vec<u8>)> = positions
        .iter()
        .map(|(source, offset)| {
            (
                POSITION_HEADER.to_owned(),
                format!("{source}:{offset}").into_bytes(),
            )
        })
        .collect();
    for (i, record) in records.iter().enumerate() {
        let last = i + 1 == records.len();
        producer.send(
            topic,
            Some(partition as i32),
            Some(&record.key),
            record.value.as_deref(),
            if last { &headers } else { &[] },
        )?;
    }
    Ok(())
}

/// Returns the offset that follows the last acknowledged record of
/// `topic`/`partition`: the changelog offset a store records once it has
/// applied those records.
///
/// # Errors
///
/// Fails when no record of that partition was acknowledged, which means
/// [`send`] was not called for it since the previous flush.
pub fn next_offset(
    acknowledged: &Acknowledged,
    topic: &str,
    partition: Partition,
) -> anyhow::Result<i64> {
    match acknowledged.get(&(topic.to_owned(), partition as i32)) {
        Some(last) => Ok(last + 1),
        None => bail!("commit: no acknowledgement for changelog {topic}/{partition}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changelog_topic_name() {
        assert_eq!(
            topic_name("flights", "delays_by_origin"),
            "flights-delays_by_origin-changelog"
        );
    }

    #[test]
    fn next_offset_follows_last_acknowledged() {
        let acknowledged: Acknowledged = [(("app-t-changelog".to_owned(), 2), 41)]
            .into_iter()
            .collect();
        assert_eq!(
            next_offset(&acknowledged, "app-t-changelog", 2).unwrap(),
            42
        );
        let error = next_offset(&acknowledged, "app-t-changelog", 3)
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "commit: no acknowledgement for changelog app-t-changelog/3"
        );
    }
}
