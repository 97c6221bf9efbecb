//! The table manager: table lifecycle, recovery on assignment and the
//! commit protocol.
//!
//! The manager opens every configured table with its store. It makes sure
//! each changelog topic exists with the partition count of the table's
//! source topics. It recovers a table partition before the worker hands any
//! event of that partition to an agent, and it runs the commit.
//!
//! # Commit order
//!
//! A commit runs three steps, each only after the previous one succeeded:
//!
//! 1. The write caches are drained into changelog records, and every record
//!    produced since the last commit (changelog, agent outputs, dead
//!    letters) is acknowledged by the cluster.
//! 2. The same changelog records are applied to the stores together with
//!    their changelog offsets, and the stores are made durable.
//! 3. The source offsets are committed to the consumer group.
//!
//! A crash between any two steps replays events after the last committed
//! source offset, so every event takes effect at least once and none is
//! lost. A failed commit is fatal: the caches were drained, so the worker
//! must stop and let the next start replay from the last commit.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::changelog;
use crate::config::{Config, StoreAhead, StoreKind};
use crate::kafka::producer::TrackedProducer;
use crate::kafka::{Kafka, TopicKind};
use crate::recovery::{ChangelogReader, RecoveryReport};
use crate::store::{ChangelogRecord, MemoryStore, Partition, RocksStore, Store};
use crate::table::Table;

/// How long a commit waits for the cluster to acknowledge records.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Returns the directory of `table`'s RocksDB database under `state_dir`.
pub fn table_dir(state_dir: &Path, table: &str) -> std::path::PathBuf {
    state_dir.join("tables").join(table)
}

/// Counters of one commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Changelog records written.
    pub changelog_records: u64,
}

/// Owns the tables of one application.
pub struct TableManager {
    tables: BTreeMap<String, Arc<Table>>,
    /// Source topic to the tables whose partitions follow it.
    tables_by_source: HashMap<String, Vec<Arc<Table>>>,
    /// State directories of the RocksDB tables, for error messages.
    table_dirs: HashMap<String, std::path::PathBuf>,
    /// The changelog consumer, created at the first recovery.
    reader: std::sync::Mutex<Option<ChangelogReader>>,
    /// The recovery action when a store is ahead of its changelog.
    store_ahead: StoreAhead,
}

impl TableManager {
    /// Opens every table of `config` and makes sure its changelog topic
    /// exists. `source_partitions` gives the partition count of each source
    /// topic.
    ///
    /// # Errors
    ///
    /// Fails when a store cannot be opened, when the source topics of one
    /// table have different partition counts, or when a changelog topic
    /// exists with another partition count.
    pub fn open(
        config: &Config,
        kafka: &Kafka,
        source_partitions: &HashMap<String, u32>,
    ) -> anyhow::Result<Self> {
        let state_dir = config.state_dir();
        let mut tables = BTreeMap::new();
        let mut tables_by_source: HashMap<String, Vec<Arc<Table>>> = HashMap::new();
        let mut table_dirs = HashMap::new();
        for table_config in &config.tables {
            let name = &table_config.name;
            if table_config.store == StoreKind::Rocksdb {
                table_dirs.insert(name.clone(), table_dir(&state_dir, name));
            }
            let store: Arc<dyn Store> = match table_config.store {
                StoreKind::Memory => Arc::new(MemoryStore::new()),
                StoreKind::Rocksdb => Arc::new(RocksStore::open(
                    name,
                    &table_dir(&state_dir, name),
                    &table_config.rocksdb,
                )?),
            };
            let changelog = config.changelog_topic(name);
            let table = Arc::new(Table::new(name, &changelog, store));

            // A table partition contains the state of the same partition of
            // every source topic of its agents, so those topics must agree
            // on the partition count.
            let mut partitions: Option<(String, u32)> = None;
            for agent in config.agents.iter().filter(|a| a.tables.contains(name)) {
                for source in &agent.sources {
                    let count = source_partitions[source];
                    match &partitions {
                        Some((other, n)) if *n != count => bail!(
                            "table {name}: source topics {other} ({n} partitions) and {source} ({count} partitions) \
                             differ; agents sharing a table must consume topics with the same partition count"
                        ),
                        _ => partitions = Some((source.clone(), count)),
                    }
                    let entry = tables_by_source.entry(source.clone()).or_default();
                    if !entry.iter().any(|t| t.name() == name) {
                        entry.push(table.clone());
                    }
                }
            }
            if let Some((_, count)) = partitions {
                kafka.ensure_topic(&changelog, count, TopicKind::Changelog)?;
            } else {
                tracing::warn!(table = %name, "manager.open: no agent declares this table; it is not opened for writes");
            }
            tracing::info!(table = %name, store = ?table_config.store, changelog = %changelog, "manager.open: table opened");
            tables.insert(name.clone(), table);
        }
        Ok(Self {
            tables,
            tables_by_source,
            table_dirs,
            reader: Default::default(),
            store_ahead: config.recovery.store_ahead,
        })
    }

    /// Returns every table by name.
    pub fn tables(&self) -> &BTreeMap<String, Arc<Table>> {
        &self.tables
    }

    /// Recovers the tables that follow `topic` for `partition`, unless that
    /// partition is already active, and marks them active.
    ///
    /// # Errors
    ///
    /// Fails when recovery fails; see [`crate::recovery::recover_partition`].
    pub fn assign(
        &self,
        kafka: &Kafka,
        topic: &str,
        partition: Partition,
    ) -> anyhow::Result<Vec<RecoveryReport>> {
        let mut reports = Vec::new();
        for table in self.tables_by_source.get(topic).into_iter().flatten() {
            if table.is_active(partition) {
                continue;
            }
            let mut reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
            if reader.is_none() {
                *reader = Some(ChangelogReader::new(kafka)?);
            }
            let reader = reader.as_ref().expect("the reader was just created");
            let report = reader
                .recover(kafka, table, partition, self.store_ahead)
                .with_context(|| match self.table_dirs.get(table.name()) {
                    Some(dir) => format!(
                        "recovery failed; the table's state directory is {}",
                        dir.display()
                    ),
                    None => "recovery failed".to_owned(),
                })?;
            table.activate(partition);
            reports.push(report);
        }
        Ok(reports)
    }

    /// Marks the tables that follow `topic` as no longer owning `partition`.
    /// Call after a commit, so no cached write is dropped.
    pub fn release(&self, topic: &str, partition: Partition) {
        for table in self.tables_by_source.get(topic).into_iter().flatten() {
            table.deactivate(partition);
            table.discard_dirty(partition);
        }
    }

    /// Runs steps 1 and 2 of the commit (see the module docs); the caller
    /// commits source offsets afterwards.
    ///
    /// # Errors
    ///
    /// Fails when a record is not acknowledged, a store write fails, or the
    /// embedded cluster would drop changelog records. The worker must stop
    /// without committing source offsets then.
    pub fn flush(&self, kafka: &Kafka, producer: &TrackedProducer) -> anyhow::Result<CommitStats> {
        let started = Instant::now();
        let mut stats = CommitStats::default();
        let mut pending: Vec<(&Arc<Table>, Partition, Vec<ChangelogRecord>)> = Vec::new();
        for table in self.tables.values() {
            for (partition, records) in table.take_dirty() {
                changelog::send(
                    kafka,
                    producer,
                    table.changelog_topic(),
                    partition,
                    &records,
                )?;
                stats.changelog_records += records.len() as u64;
                pending.push((table, partition, records));
            }
        }

        let acknowledged = producer
            .flush(FLUSH_TIMEOUT)
            .context("commit: records were not acknowledged")?;

        for (table, partition, records) in &pending {
            let next = changelog::next_offset(&acknowledged, table.changelog_topic(), *partition)?;
            table.store().apply_changelog(*partition, records, next)?;
        }
        for table in self.tables.values() {
            table.store().persist()?;
        }
        tracing::debug!(
            changelog_records = stats.changelog_records,
            seconds = started.elapsed().as_secs_f64(),
            "commit: changelog and stores durable"
        );
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_rejects_sources_with_different_partition_counts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.wasm"), b"\0asm").unwrap();
        let text = r#"
            app_id = "app"
            state_dir = "state"
            [[agents]]
            name = "a"
            component = "a.wasm"
            sources = ["left", "right"]
            tables = ["t"]
            [[tables]]
            name = "t"
            store = "memory"
        "#;
        let config = Config::parse(text, Path::new("app.toml"), dir.path()).unwrap();
        let kafka = Kafka::embedded(Default::default()).unwrap();
        let partitions: HashMap<String, u32> = [("left".to_owned(), 2), ("right".to_owned(), 3)]
            .into_iter()
            .collect();
        let error = TableManager::open(&config, &kafka, &partitions)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            error,
            "table t: source topics left (2 partitions) and right (3 partitions) differ; agents sharing a \
             table must consume topics with the same partition count"
        );
    }

    /// Returns a config with agent `a` on source `in` and memory table `t`,
    /// with the directory that contains its component stub.
    fn one_table_config() -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.wasm"), b"\0asm").unwrap();
        let text = "app_id = \"app\"\nstate_dir = \"state\"\n[[agents]]\nname = \"a\"\ncomponent = \"a.wasm\"\n\
                    sources = [\"in\"]\ntables = [\"t\"]\n[[tables]]\nname = \"t\"\nstore = \"memory\"\n";
        let config = Config::parse(text, Path::new("app.toml"), dir.path()).unwrap();
        (dir, config)
    }

    #[test]
    fn manager_rejects_changelog_with_other_partition_count() {
        let (_dir, config) = one_table_config();
        let kafka = Kafka::embedded(Default::default()).unwrap();
        kafka
            .ensure_topic("app-t-changelog", 5, TopicKind::Changelog)
            .unwrap();
        let partitions: HashMap<String, u32> = [("in".to_owned(), 4)].into_iter().collect();
        let error = TableManager::open(&config, &kafka, &partitions)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            error,
            "kafka: topic app-t-changelog has 5 partitions but 4 are required; delete the topic or recreate it with 4 partitions"
        );
    }

    #[test]
    fn manager_flush_refuses_what_embedded_cluster_would_drop() {
        let (_dir, config) = one_table_config();
        let kafka = Kafka::embedded(Default::default()).unwrap();
        let partitions: HashMap<String, u32> = [("in".to_owned(), 1)].into_iter().collect();
        let manager = TableManager::open(&config, &kafka, &partitions).unwrap();
        let producer = TrackedProducer::new(&kafka).unwrap();

        // 40,000 dirty keys of about 200 bytes each exceed the 5 MiB the
        // embedded cluster keeps of a partition.
        let table = &manager.tables()["t"];
        for i in 0..40_000 {
            table.put(0, format!("key-{i:08}").into_bytes(), Some(vec![b'v'; 100]));
        }
        let error = manager.flush(&kafka, &producer).unwrap_err().to_string();
        assert!(
            error.starts_with("embedded cluster: topic app-t-changelog partition 0 would hold "),
            "{error}"
        );
        assert!(
            error.ends_with(
                "run against a real broker (set `brokers` in the config) for data of this size"
            ),
            "{error}"
        );
        assert_eq!(kafka.watermarks("app-t-changelog", 0).unwrap(), (0, 0));
    }
}
