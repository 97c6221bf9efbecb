//! A producer that remembers what the cluster acknowledged.
//!
//! Every record the host writes (changelog records, agent outputs, dead
//! letters) goes through one [`TrackedProducer`]. Its delivery callback
//! records the highest acknowledged offset per partition and every failed
//! delivery, and [`TrackedProducer::flush`] turns both into the facts the
//! commit needs: which changelog offsets are durable, and whether anything
//! was lost.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use super::Kafka;

/// Acknowledged offsets and failures, filled by librdkafka's delivery
/// callback on the producer's polling thread.
#[derive(Default)]
pub struct DeliveryTracker {
    acked: Mutex<HashMap<(String, i32), i64>>,
    failures: Mutex<Vec<String>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) => {
                let mut acked = self.acked.lock().unwrap_or_else(|p| p.into_inner());
                let entry = acked
                    .entry((message.topic().to_owned(), message.partition()))
                    .or_insert(-1);
                *entry = (*entry).max(message.offset());
            }
            Err((error, message)) => {
                let text = format!("{}/{}: {error}", message.topic(), message.partition());
                tracing::error!(topic = message.topic(), partition = message.partition(), %error, "kafka.produce: delivery failed");
                self.failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(text);
            }
        }
    }
}

/// Offsets the cluster acknowledged since the previous flush: the highest
/// offset per topic and partition.
pub type Acknowledged = HashMap<(String, i32), i64>;

/// A header to attach to a produced record.
pub type OutHeader = (String, Vec<u8>);

/// A producer whose deliveries are tracked.
pub struct TrackedProducer {
    producer: ThreadedProducer<DeliveryTracker>,
}

impl TrackedProducer {
    /// Creates an idempotent producer for `kafka`.
    ///
    /// # Errors
    ///
    /// Fails when librdkafka rejects the configuration.
    pub fn new(kafka: &Kafka) -> anyhow::Result<Self> {
        let mut config = kafka.client_config();
        // Idempotence keeps retried batches from being written twice or out
        // of order, which a changelog depends on. murmur2 matches the Java
        // client, so keyed outputs land where Kafka Streams would put them.
        config
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000");
        let producer = config
            .create_with_context(DeliveryTracker::default())
            .context("kafka: failed to create the producer; check the [kafka] properties")?;
        Ok(Self { producer })
    }

    /// Queues one record. `partition` of `None` lets the partitioner choose
    /// from the key. Waits while librdkafka's queue is full.
    ///
    /// # Errors
    ///
    /// Fails when librdkafka rejects the record, or its queue stays full for
    /// a minute.
    pub fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[OutHeader],
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
            if let Some(partition) = partition {
                record = record.partition(partition);
            }
            if let Some(key) = key {
                record = record.key(key);
            }
            if let Some(value) = value {
                record = record.payload(value);
            }
            if !headers.is_empty() {
                let mut owned = OwnedHeaders::new_with_capacity(headers.len());
                for (name, value) in headers {
                    owned = owned.insert(Header {
                        key: name,
                        value: Some(value),
                    });
                }
                record = record.headers(owned);
            }
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if started.elapsed() > Duration::from_secs(60) {
                        bail!("kafka: producer queue to {topic} stayed full for 60 seconds; is the cluster reachable?");
                    }
                    // The background thread drains the queue as the cluster
                    // acknowledges; give it a moment.
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((error, _)) => bail!("kafka: failed to queue a record for {topic}: {error}"),
            }
        }
    }

    /// Waits until every queued record is acknowledged and returns the
    /// acknowledged offsets since the previous flush.
    ///
    /// # Errors
    ///
    /// Fails when a record could not be delivered or `timeout` passes first;
    /// the caller must not commit source offsets then.
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<Acknowledged> {
        self.producer.flush(timeout).with_context(|| {
            format!(
                "kafka: {} records were not acknowledged within {timeout:?}",
                self.producer.in_flight_count()
            )
        })?;
        let context = self.producer.context();
        let failures =
            std::mem::take(&mut *context.failures.lock().unwrap_or_else(|p| p.into_inner()));
        if !failures.is_empty() {
            bail!(
                "kafka: {} records were not delivered, first: {}",
                failures.len(),
                failures[0]
            );
        }
        Ok(std::mem::take(
            &mut *context.acked.lock().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}
