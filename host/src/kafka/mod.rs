//! Kafka clients: connection settings, topic administration and the
//! embedded cluster.
//!
//! [`Kafka`] is the one handle the rest of the host uses to reach a cluster.
//! It is built either for a real cluster (`brokers` in the config) or for
//! librdkafka's in-process mock cluster ([`embedded`]), and hands out
//! [`ClientConfig`]s with the bootstrap servers and every librdkafka property
//! from the config's `[kafka]` table.

pub mod embedded;
pub mod partitioner;
pub mod producer;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;

pub use embedded::EmbeddedCluster;

/// How long metadata and admin requests may take before they fail.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to a Kafka cluster, real or embedded.
pub struct Kafka {
    bootstrap: String,
    properties: BTreeMap<String, String>,
    embedded: Option<EmbeddedCluster>,
    admin: AdminClient<DefaultClientContext>,
}

impl std::fmt::Debug for Kafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kafka")
            .field("bootstrap", &self.bootstrap)
            .field("embedded", &self.embedded.is_some())
            .finish()
    }
}

/// The purpose of a created topic, which sets its cleanup policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    /// A source, output or dead-letter topic with the cluster's default
    /// cleanup policy.
    Plain,
    /// A table changelog: `cleanup.policy=compact`.
    Changelog,
}

impl Kafka {
    /// Connects to the cluster at `brokers`, passing `properties` to every
    /// client.
    ///
    /// # Errors
    ///
    /// Fails when librdkafka rejects a property.
    pub fn connect(brokers: &str, properties: BTreeMap<String, String>) -> anyhow::Result<Self> {
        Self::build(brokers.to_owned(), properties, None)
    }

    /// Starts an embedded cluster in this process and connects to it.
    ///
    /// # Errors
    ///
    /// Fails when librdkafka cannot start the mock cluster.
    pub fn embedded(properties: BTreeMap<String, String>) -> anyhow::Result<Self> {
        let cluster = EmbeddedCluster::start()?;
        Self::build(cluster.bootstrap_servers(), properties, Some(cluster))
    }

    fn build(
        bootstrap: String,
        properties: BTreeMap<String, String>,
        embedded: Option<EmbeddedCluster>,
    ) -> anyhow::Result<Self> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &bootstrap);
        for (key, value) in &properties {
            config.set(key, value);
        }
        // The admin client is a producer-type client, whose metadata requests
        // would create a missing topic with the broker's default partition
        // count. Topics are created explicitly instead.
        config.set("allow.auto.create.topics", "false");
        let admin: AdminClient<DefaultClientContext> = config
            .create()
            .with_context(|| format!("kafka: failed to create an admin client for {bootstrap}; check the [kafka] properties"))?;
        Ok(Self {
            bootstrap,
            properties,
            embedded,
            admin,
        })
    }

    /// Returns the bootstrap servers.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Returns the embedded cluster, when this connection runs one.
    pub fn embedded_cluster(&self) -> Option<&EmbeddedCluster> {
        self.embedded.as_ref()
    }

    /// Returns a client config with the bootstrap servers and the
    /// configured librdkafka properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    /// Returns the partition count of `topic`, or `None` when the topic
    /// does not exist.
    ///
    /// # Errors
    ///
    /// Fails when the cluster does not respond within [`REQUEST_TIMEOUT`].
    pub fn partition_count(&self, topic: &str) -> anyhow::Result<Option<u32>> {
        let metadata = self
            .admin
            .inner()
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .with_context(|| {
                format!(
                    "kafka: failed to fetch metadata of topic {topic} from {}",
                    self.bootstrap
                )
            })?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        if found.error().is_some() || found.partitions().is_empty() {
            return Ok(None);
        }
        Ok(Some(found.partitions().len() as u32))
    }

    /// Creates `topic` with `partitions` partitions when it is missing, and
    /// checks the partition count when it exists.
    ///
    /// # Errors
    ///
    /// Fails when the topic exists with another partition count, or when the
    /// cluster rejects the creation.
    pub fn ensure_topic(
        &self,
        topic: &str,
        partitions: u32,
        kind: TopicKind,
    ) -> anyhow::Result<()> {
        if let Some(existing) = self.partition_count(topic)? {
            if existing != partitions {
                bail!(
                    "kafka: topic {topic} has {existing} partitions but {partitions} are required; \
                     delete the topic or recreate it with {partitions} partitions"
                );
            }
            return Ok(());
        }

        tracing::info!(
            topic,
            partitions,
            ?kind,
            "kafka.create_topic: creating missing topic"
        );
        if let Some(cluster) = &self.embedded {
            // NOTE: the embedded cluster has no topic configs, so a changelog
            // there is not compacted; the embedded module's retention guard
            // covers the consequences.
            if let Err(error) = cluster.create_topic(topic, partitions) {
                // Another worker of this process may have created it between
                // our check and our request; then it becomes visible.
                return self.wait_until_visible(topic).map_err(|_| error);
            }
            return self.wait_until_visible(topic);
        }

        let mut new_topic = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(-1));
        if kind == TopicKind::Changelog {
            new_topic = new_topic.set("cleanup.policy", "compact");
        }
        let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        // The admin future completes on librdkafka's thread, so any executor
        // can wait for it, including from inside a tokio runtime.
        let results = futures::executor::block_on(self.admin.create_topics([&new_topic], &options))
            .with_context(|| format!("kafka: failed to create topic {topic}"))?;
        for result in results {
            match result {
                Ok(_) => {}
                // Another worker created it between our check and our request.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => bail!("kafka: failed to create topic {name}: {code}"),
            }
        }
        self.wait_until_visible(topic)
    }

    /// Waits until a created topic appears in metadata and its partition 0
    /// returns watermarks, so callers can produce and fetch watermarks right
    /// away. Metadata propagates asynchronously on both kinds of cluster.
    fn wait_until_visible(&self, topic: &str) -> anyhow::Result<()> {
        for _ in 0..100 {
            if self.partition_count(topic)?.is_some() && self.watermarks(topic, 0).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("kafka: topic {topic} was created but is not visible after 10 seconds")
    }

    /// Returns the low and high watermarks of one partition.
    ///
    /// # Errors
    ///
    /// Fails when the cluster does not respond within [`REQUEST_TIMEOUT`].
    pub fn watermarks(&self, topic: &str, partition: u32) -> anyhow::Result<(i64, i64)> {
        self.admin
            .inner()
            .fetch_watermarks(topic, partition as i32, REQUEST_TIMEOUT)
            .with_context(|| format!("kafka: failed to fetch watermarks of {topic}/{partition}"))
    }
}
