//! The embedded cluster: librdkafka's mock cluster, in this process.
//!
//! It lets the demo and the fast tests run without a server. It is not a
//! Kafka broker, and three of its limits matter to a stream processor
//! (measured with the librdkafka bundled by rdkafka 0.39):
//!
//! - it keeps only the newest 5 MiB or 100,000 batches of each partition and
//!   drops older records without telling anyone;
//! - it has no topic configs, so changelogs are never compacted;
//! - it accepts transaction calls without honouring them.
//!
//! The host therefore never lets a partition outgrow the retained window
//! unread. [`RetentionLedger`] counts the bytes and records produced to each
//! partition and the part of them already consumed and committed. A
//! producer of source records waits for room
//! ([`RetentionLedger::wait_for_room`]), and the worker commits early to
//! make room ([`EARLY_COMMIT_BYTES`]). A write to a partition that no
//! consumer of this process reads (a changelog, an output topic) and that
//! would outgrow the window fails with [`RetentionError`] instead of losing
//! data. Readers check that a partition's low watermark is still zero
//! before they trust it to be complete.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// Bytes of each partition the mock cluster is known to retain.
pub const RETAINED_BYTES: u64 = 5 * 1024 * 1024;
/// Batches of each partition the mock cluster is known to retain.
pub const RETAINED_BATCHES: u64 = 100_000;
/// The share of the retained window the host lets a partition use: a
/// margin, because the mock counts its own batch overhead, which the
/// ledger only estimates.
const USABLE_BYTES: u64 = RETAINED_BYTES * 3 / 4;
const USABLE_RECORDS: u64 = RETAINED_BATCHES * 3 / 4;

/// Uncommitted bytes or records of one source partition at which a worker
/// commits before its interval ends: half the usable window, so a loader
/// waiting for room is released long before its wait times out, however
/// long `commit_interval_ms` is.
pub const EARLY_COMMIT_BYTES: u64 = USABLE_BYTES / 2;
/// See [`EARLY_COMMIT_BYTES`].
pub const EARLY_COMMIT_RECORDS: u64 = USABLE_RECORDS / 2;

/// Estimated bytes one record takes in a record batch besides its key,
/// value and headers (record and batch framing).
const RECORD_OVERHEAD: u64 = 80;

/// Returns the bytes the ledger counts for one record.
pub fn record_footprint(key_len: usize, value_len: usize, headers_len: usize) -> u64 {
    (key_len + value_len + headers_len) as u64 + RECORD_OVERHEAD
}

/// An in-process mock cluster with one broker.
pub struct EmbeddedCluster {
    cluster: MockCluster<'static, DefaultProducerContext>,
    ledger: RetentionLedger,
}

// SAFETY: `MockCluster` stores a raw pointer to librdkafka's mock cluster,
// which is why it is not `Send` or `Sync` on its own. The mock cluster runs
// on its own librdkafka thread, and the two operations used here
// (`rd_kafka_mock_cluster_bootstraps` and `rd_kafka_mock_topic_create`)
// only read an immutable string or enqueue an operation under the cluster's
// lock, so calling them from several threads is sound. The pointer is
// destroyed once, by `MockCluster`'s `Drop`.
unsafe impl Send for EmbeddedCluster {}
// SAFETY: see the `Send` impl; no method takes `&mut self`.
unsafe impl Sync for EmbeddedCluster {}

impl EmbeddedCluster {
    /// Starts a mock cluster listening on 127.0.0.1.
    ///
    /// # Errors
    ///
    /// Fails when librdkafka cannot start the cluster.
    pub fn start() -> anyhow::Result<Self> {
        let cluster = MockCluster::new(1).context("kafka: failed to start the embedded cluster")?;
        tracing::info!(bootstrap = %cluster.bootstrap_servers(), "kafka.embedded: started in-process cluster");
        Ok(Self {
            cluster,
            ledger: RetentionLedger::default(),
        })
    }

    /// Returns the cluster's bootstrap servers.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates `topic` with `partitions` partitions.
    ///
    /// # Errors
    ///
    /// Fails when the mock cluster rejects the topic.
    pub fn create_topic(&self, topic: &str, partitions: u32) -> anyhow::Result<()> {
        self.cluster
            .create_topic(topic, partitions as i32, 1)
            .with_context(|| format!("kafka.embedded: failed to create topic {topic}"))
    }

    /// Returns the ledger of retained bytes per partition.
    pub fn ledger(&self) -> &RetentionLedger {
        &self.ledger
    }
}

/// A partition would outgrow the embedded cluster's retained window.
#[derive(Debug, thiserror::Error)]
#[error(
    "embedded cluster: topic {topic} partition {partition} would hold {bytes} bytes in {records} records that \
     are not yet consumed, over the host's limit of {usable_bytes} bytes or {usable_records} records per \
     partition. The embedded cluster keeps only the newest {retained_bytes} bytes or {retained_batches} \
     batches of a partition and drops older records, and the host stays a quarter below that. Run against \
     a real broker (set `brokers` in the config) for data of this size"
)]
pub struct RetentionError {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// Bytes the partition would hold unconsumed.
    pub bytes: u64,
    /// Records the partition would hold unconsumed.
    pub records: u64,
    /// The bytes the host lets a partition hold unconsumed.
    pub usable_bytes: u64,
    /// The records the host lets a partition hold unconsumed.
    pub usable_records: u64,
    /// See [`RETAINED_BYTES`].
    pub retained_bytes: u64,
    /// See [`RETAINED_BATCHES`].
    pub retained_batches: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    produced_bytes: u64,
    produced_records: u64,
    released_bytes: u64,
    released_records: u64,
}

impl Usage {
    fn pending(&self) -> (u64, u64) {
        (
            self.produced_bytes.saturating_sub(self.released_bytes),
            self.produced_records.saturating_sub(self.released_records),
        )
    }
}

/// Bytes and records produced to each partition of the embedded cluster,
/// and how much of them has been consumed and committed.
#[derive(Debug, Default)]
pub struct RetentionLedger {
    usage: Mutex<HashMap<(String, u32), Usage>>,
    released: Condvar,
}

impl RetentionLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u32), Usage>> {
        // The map contains only counters, which stay valid after a panic.
        self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `records` records of `bytes` bytes in total are about to
    /// be produced to a partition that no consumer of this process drains,
    /// such as a changelog.
    ///
    /// # Errors
    ///
    /// Fails, without recording anything, when the partition would outgrow
    /// the retained window.
    pub fn reserve(
        &self,
        topic: &str,
        partition: u32,
        bytes: u64,
        records: u64,
    ) -> Result<(), RetentionError> {
        let mut usage = self.lock();
        let entry = usage.entry((topic.to_owned(), partition)).or_default();
        let (pending_bytes, pending_records) = entry.pending();
        if pending_bytes + bytes > USABLE_BYTES || pending_records + records > USABLE_RECORDS {
            return Err(RetentionError {
                topic: topic.to_owned(),
                partition,
                bytes: pending_bytes + bytes,
                records: pending_records + records,
                usable_bytes: USABLE_BYTES,
                usable_records: USABLE_RECORDS,
                retained_bytes: RETAINED_BYTES,
                retained_batches: RETAINED_BATCHES,
            });
        }
        entry.produced_bytes += bytes;
        entry.produced_records += records;
        Ok(())
    }

    /// Waits until a source partition has room for a record of `bytes`
    /// bytes, then records it as produced. Room appears as consumers commit
    /// ([`RetentionLedger::release`]).
    ///
    /// # Errors
    ///
    /// Fails when no room appears within `timeout`, which means nothing is
    /// consuming the partition.
    pub fn wait_for_room(
        &self,
        topic: &str,
        partition: u32,
        bytes: u64,
        timeout: Duration,
    ) -> Result<(), RetentionError> {
        let deadline = Instant::now() + timeout;
        let mut usage = self.lock();
        loop {
            let entry = usage.entry((topic.to_owned(), partition)).or_default();
            let (pending_bytes, pending_records) = entry.pending();
            // A record larger than the whole window would never fit; let it
            // through alone rather than wait forever.
            let fits = pending_bytes + bytes <= USABLE_BYTES && pending_records < USABLE_RECORDS;
            if fits || pending_records == 0 {
                entry.produced_bytes += bytes;
                entry.produced_records += 1;
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RetentionError {
                    topic: topic.to_owned(),
                    partition,
                    bytes: pending_bytes + bytes,
                    records: pending_records + 1,
                    usable_bytes: USABLE_BYTES,
                    usable_records: USABLE_RECORDS,
                    retained_bytes: RETAINED_BYTES,
                    retained_batches: RETAINED_BATCHES,
                });
            }
            usage = self
                .released
                .wait_timeout(usage, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Records that `records` records of `bytes` bytes of a partition have
    /// been consumed and their offsets committed, so the cluster may drop
    /// them.
    pub fn release(&self, topic: &str, partition: u32, bytes: u64, records: u64) {
        let mut usage = self.lock();
        let entry = usage.entry((topic.to_owned(), partition)).or_default();
        entry.released_bytes += bytes;
        entry.released_records += records;
        drop(usage);
        self.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_rejects_overflowing_reserve() {
        let ledger = RetentionLedger::default();
        ledger.reserve("log", 0, USABLE_BYTES - 10, 1).unwrap();
        let error = ledger.reserve("log", 0, 11, 1).unwrap_err();
        assert_eq!(error.bytes, USABLE_BYTES + 1);
        assert_eq!(error.partition, 0);
        ledger.reserve("log", 1, 11, 1).unwrap();
    }

    #[test]
    fn ledger_wait_times_out_without_release() {
        let ledger = RetentionLedger::default();
        ledger
            .wait_for_room("src", 0, USABLE_BYTES, Duration::from_millis(10))
            .unwrap();
        let error = ledger
            .wait_for_room("src", 0, 100, Duration::from_millis(10))
            .unwrap_err();
        assert_eq!(error.records, 2);
    }

    #[test]
    fn ledger_release_makes_room() {
        let ledger = std::sync::Arc::new(RetentionLedger::default());
        ledger
            .wait_for_room("src", 0, USABLE_BYTES, Duration::from_millis(10))
            .unwrap();
        let releaser = {
            let ledger = ledger.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                ledger.release("src", 0, USABLE_BYTES, 1);
            })
        };
        ledger
            .wait_for_room("src", 0, 100, Duration::from_secs(10))
            .unwrap();
        releaser.join().unwrap();
    }

    #[test]
    fn embedded_cluster_creates_topic() {
        let cluster = EmbeddedCluster::start().unwrap();
        cluster.create_topic("events", 3).unwrap();
        assert!(
            cluster.bootstrap_servers().starts_with("127.0.0.1:"),
            "{}",
            cluster.bootstrap_servers()
        );
    }
}
