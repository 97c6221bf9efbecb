//! The registry's Kafka topics: writing entries and blobs, and following
//! what any process of the application wrote.
//!
//! Entries go to `<app_id>-registry` (one partition, so every reader sees
//! them in one order). Uploaded bytes go to `<app_id>-registry-blobs` in
//! chunks keyed `<sha256>/<index>/<count>`, and to a local copy under
//! `<state_dir>/registry/blobs`, which a process reads first. The embedded
//! cluster keeps only a few MiB per partition and loses its topics at
//! exit, so there the local copy is what a restarted process reads.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{sha256_hex, Entry};
use crate::kafka::producer::TrackedProducer;
use crate::kafka::{Kafka, TopicKind};

/// Bytes per blob chunk, below Kafka's default message size limit.
const CHUNK_BYTES: usize = 512 * 1024;
/// Partitions of the blob topic.
const BLOB_PARTITIONS: u32 = 8;
/// How long a write waits for the cluster's acknowledgement.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads and writes one application's registry topics.
pub struct RegistryLog {
    kafka: Arc<Kafka>,
    topic: String,
    blob_topic: String,
    blob_dir: PathBuf,
    producer: TrackedProducer,
    consumer: BaseConsumer,
    blob_consumer: BaseConsumer,
    /// Chunks of blobs seen in the blob topic, by digest, until complete.
    chunks: HashMap<String, BTreeMap<u32, Vec<u8>>>,
}

impl RegistryLog {
    /// Creates the topics when they are missing and starts reading both
    /// from the beginning.
    ///
    /// # Errors
    ///
    /// Fails when the topics cannot be created or read.
    pub fn open(
        kafka: Arc<Kafka>,
        app_id: &str,
        state_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let topic = format!("{app_id}-registry");
        let blob_topic = format!("{app_id}-registry-blobs");
        kafka.ensure_topic(&topic, 1, TopicKind::Changelog)?;
        kafka.ensure_topic(&blob_topic, BLOB_PARTITIONS, TopicKind::Changelog)?;
        let reader = |topic: &str, partitions: u32| -> anyhow::Result<BaseConsumer> {
            let consumer: BaseConsumer = kafka
                .client_config()
                .set("group.id", "tablehost-registry")
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", "50")
                .create()
                .context("registry: failed to create a consumer")?;
            let mut list = TopicPartitionList::new();
            for partition in 0..partitions as i32 {
                list.add_partition_offset(topic, partition, Offset::Beginning)?;
            }
            consumer.assign(&list)?;
            Ok(consumer)
        };
        let blob_dir = state_dir.join("registry").join("blobs");
        std::fs::create_dir_all(&blob_dir)
            .with_context(|| format!("registry: cannot create {}", blob_dir.display()))?;
        Ok(Self {
            producer: TrackedProducer::new(&kafka)?,
            consumer: reader(&topic, 1)?,
            blob_consumer: reader(&blob_topic, BLOB_PARTITIONS)?,
            kafka,
            topic,
            blob_topic,
            blob_dir,
            chunks: HashMap::new(),
        })
    }

    /// Returns the registry topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes `entries` and waits until the cluster has them.
    ///
    /// # Errors
    ///
    /// Fails when the cluster does not acknowledge them.
    pub fn write(&self, entries: &[Entry]) -> anyhow::Result<()> {
        for entry in entries {
            let key = entry.key();
            self.producer.send(
                &self.topic,
                Some(0),
                Some(key.as_bytes()),
                entry.value().as_deref(),
                &[],
            )?;
        }
        self.producer
            .flush(WRITE_TIMEOUT)
            .context("registry: the cluster did not acknowledge a registry write")?;
        Ok(())
    }

    /// Stores `bytes` as a blob named by its digest, which it returns: in
    /// the local copy and in the blob topic.
    ///
    /// # Errors
    ///
    /// Fails when the file cannot be written or the cluster does not
    /// acknowledge the chunks.
    pub fn put_blob(&self, bytes: &[u8]) -> anyhow::Result<String> {
        let digest = sha256_hex(bytes);
        self.save_local(&digest, bytes)?;
        let chunks: Vec<&[u8]> = bytes.chunks(CHUNK_BYTES).collect();
        let count = chunks.len().max(1);
        for (index, chunk) in chunks.iter().enumerate() {
            let key = format!("{digest}/{index}/{count}");
            self.producer.send(
                &self.blob_topic,
                None,
                Some(key.as_bytes()),
                Some(chunk),
                &[],
            )?;
        }
        self.producer
            .flush(WRITE_TIMEOUT)
            .context("registry: the cluster did not acknowledge an uploaded component")?;
        Ok(digest)
    }

    /// Returns the blob named `digest`, waiting up to `timeout` for its
    /// chunks to arrive in the blob topic when there is no local copy.
    ///
    /// # Errors
    ///
    /// Fails when the blob is not complete within `timeout`, or its bytes
    /// do not match the digest.
    pub fn blob(&mut self, digest: &str, timeout: Duration) -> anyhow::Result<Vec<u8>> {
        let local = self.blob_dir.join(format!("{digest}.wasm"));
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(bytes) = std::fs::read(&local) {
                if sha256_hex(&bytes) == digest {
                    return Ok(bytes);
                }
                tracing::warn!(file = %local.display(), "registry: local copy of a component is damaged; reading it from the topic");
                let _ = std::fs::remove_file(&local);
            }
            self.poll_blobs()?;
            if Instant::now() >= deadline {
                bail!(
                    "registry: component {digest} is not complete in topic {} after {timeout:?}; \
                     was it uploaded to this application's cluster?",
                    self.blob_topic
                );
            }
        }
    }

    /// Reads the blob topic for a moment and saves every blob it completes.
    fn poll_blobs(&mut self) -> anyhow::Result<()> {
        let until = Instant::now() + Duration::from_millis(200);
        while let Some(message) = self
            .blob_consumer
            .poll(until.saturating_duration_since(Instant::now()))
        {
            let message = message.context("registry: failed to read the blob topic")?;
            let (Some(key), Some(value)) = (message.key(), message.payload()) else {
                continue;
            };
            let key = String::from_utf8_lossy(key);
            let parts: Vec<&str> = key.split('/').collect();
            let [digest, index, count] = parts.as_slice() else {
                continue;
            };
            let (Ok(index), Ok(count)) = (index.parse::<u32>(), count.parse::<u32>()) else {
                continue;
            };
            let chunks = self.chunks.entry((*digest).to_owned()).or_default();
            chunks.insert(index, value.to_vec());
            if chunks.len() as u32 == count {
                let bytes: Vec<u8> = std::mem::take(chunks).into_values().flatten().collect();
                self.chunks.remove(*digest);
                if sha256_hex(&bytes) == *digest {
                    self.save_local(digest, &bytes)?;
                }
            }
            if Instant::now() >= until {
                break;
            }
        }
        Ok(())
    }

    fn save_local(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.blob_dir.join(format!("{digest}.wasm"));
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, bytes)
            .and_then(|()| std::fs::rename(&temporary, &path))
            .with_context(|| format!("registry: cannot write {}", path.display()))
    }

    /// Returns every entry written since the last call, up to the topic's
    /// end at the time of the call, in the order of the topic.
    ///
    /// # Errors
    ///
    /// Fails when the topic cannot be read within a minute.
    pub fn read_new(&mut self) -> anyhow::Result<Vec<Entry>> {
        let (_, end) = self.kafka.watermarks(&self.topic, 0)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut entries = Vec::new();
        loop {
            let position = match self
                .consumer
                .position()?
                .find_partition(&self.topic, 0)
                .map(|p| p.offset())
            {
                Some(Offset::Offset(next)) => next,
                _ => 0,
            };
            if position >= end {
                return Ok(entries);
            }
            if Instant::now() >= deadline {
                bail!("registry: topic {} did not deliver offsets {position} to {end} within a minute", self.topic);
            }
            let Some(message) = self.consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let message = message.context("registry: failed to read the registry topic")?;
            let Some(key) = message.key() else { continue };
            match Entry::parse(key, message.payload()) {
                Ok(entry) => entries.push(entry),
                Err(error) => {
                    tracing::warn!(offset = message.offset(), %error, "registry: skipping a record of unknown shape");
                }
            }
        }
    }
}
