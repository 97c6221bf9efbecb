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
//!
//! Global tables differ in step 2: their stores are written only by the
//! [`Follower`], which reads every worker's records from the changelog, and
//! the commit waits until it has applied this worker's records.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::changelog;
use crate::config::{Config, StoreAhead, StoreKind, TableKindConfig};
use crate::follower::Follower;
use crate::kafka::producer::TrackedProducer;
use crate::kafka::{Kafka, TopicKind};
use crate::recovery::{ChangelogReader, RecoveryReport};
use crate::store::{ChangelogRecord, MemoryStore, Partition, RocksStore, SourcePosition, Store};
use crate::table::window::WindowSpec;
use crate::table::{Table, TableKind};

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
    /// Plain or windowed table to the source topics its partitions follow.
    sources_by_table: HashMap<String, Vec<String>>,
    /// State directories of the RocksDB tables, for error messages.
    table_dirs: HashMap<String, std::path::PathBuf>,
    /// The changelog consumer, created at the first recovery.
    reader: std::sync::Mutex<Option<ChangelogReader>>,
    /// The recovery action when a store is ahead of its changelog.
    store_ahead: StoreAhead,
    /// The follower of global tables and standby partitions, created when
    /// first needed.
    follower: std::sync::Mutex<Option<Follower>>,
    /// How many partitions after each owned one to keep as standbys.
    standby_replicas: u32,
    /// The partition count of each source topic.
    source_partitions: HashMap<String, u32>,
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
        let mut sources_by_table = HashMap::new();
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

            // A table partition contains the state of the same partition of
            // every source topic of its agents, so those topics must agree
            // on the partition count.
            let mut partitions: Option<(String, u32)> = None;
            let mut sources = Vec::new();
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
                    sources.push(source.clone());
                }
            }
            let kind = match (&table_config.kind, &table_config.window) {
                (TableKindConfig::Global, _) => TableKind::Global {
                    partitions: partitions.as_ref().map_or(1, |(_, n)| *n),
                },
                (TableKindConfig::Table, Some(window)) => {
                    TableKind::Windowed(WindowSpec::new(window))
                }
                (TableKindConfig::Table, None) => TableKind::Plain,
            };
            let global = matches!(kind, TableKind::Global { .. });
            let table = Arc::new(Table::with_kind(name, &changelog, store, kind));
            // A global table is not assigned with source partitions: every
            // worker follows all of it.
            if !global {
                let mut table_sources = sources.clone();
                table_sources.sort();
                table_sources.dedup();
                sources_by_table.insert(name.clone(), table_sources);
                for source in sources {
                    let entry = tables_by_source.entry(source).or_default();
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
            tracing::info!(table = %name, kind = table.kind().name(), store = ?table_config.store, changelog = %changelog, "manager.open: table opened");
            tables.insert(name.clone(), table);
        }
        Ok(Self {
            tables,
            tables_by_source,
            sources_by_table,
            table_dirs,
            reader: Default::default(),
            store_ahead: config.recovery.store_ahead,
            follower: Default::default(),
            standby_replicas: config.standby_replicas,
            source_partitions: source_partitions.clone(),
        })
    }

    /// Runs `f` with the follower, creating it first when needed.
    fn with_follower<R>(
        &self,
        kafka: &Kafka,
        f: impl FnOnce(&mut Follower) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        let mut follower = self.follower.lock().unwrap_or_else(|p| p.into_inner());
        if follower.is_none() {
            *follower = Some(Follower::new(kafka)?);
        }
        f(follower.as_mut().expect("the follower was just created"))
    }

    /// Chooses the standby partitions for the source partitions this worker
    /// now owns, starts following new ones and stops following the rest.
    ///
    /// Placement: a worker keeps standbys of the `standby_replicas`
    /// partitions that follow each of its own, in partition order, that it
    /// does not own. With the round-robin assignor, which spreads
    /// consecutive partitions over the members in turn, those belong to
    /// the next workers, so every partition has warm copies on other
    /// workers while there are more workers than standbys.
    ///
    /// # Errors
    ///
    /// Fails when the follower cannot be created or assigned.
    pub fn update_standbys(
        &self,
        kafka: &Kafka,
        owned: &std::collections::BTreeSet<(String, i32)>,
    ) -> anyhow::Result<()> {
        if self.standby_replicas == 0 {
            return Ok(());
        }
        let mut expected: Vec<(Arc<Table>, Partition)> = Vec::new();
        for (topic, tables) in &self.tables_by_source {
            let mine: Vec<i32> = owned
                .iter()
                .filter(|(t, _)| t == topic)
                .map(|(_, p)| *p)
                .collect();
            let Some(&partitions) = self.source_partitions.get(topic) else {
                continue;
            };
            for table in tables {
                for p in &mine {
                    for step in 1..=self.standby_replicas as i32 {
                        let standby = (p + step).rem_euclid(partitions as i32);
                        if !mine.contains(&standby)
                            && !expected
                                .iter()
                                .any(|(t, q)| t.name() == table.name() && *q == standby as u32)
                        {
                            expected.push((table.clone(), standby as u32));
                        }
                    }
                }
            }
        }
        self.with_follower(kafka, |follower| {
            for (table, partition, _) in follower.positions() {
                let global = matches!(table.kind(), TableKind::Global { .. });
                let keep = expected
                    .iter()
                    .any(|(t, p)| t.name() == table.name() && *p == partition);
                if !global && !keep {
                    follower.unfollow(&table, partition)?;
                    tracing::info!(table = table.name(), partition, "manager: standby stopped");
                }
            }
            for (table, partition) in &expected {
                if follower.is_following(table, *partition) {
                    continue;
                }
                // A standby that never ran starts at the changelog's start.
                if table.store().changelog_offset(*partition)?.is_none() {
                    let (low, _) = kafka.watermarks(table.changelog_topic(), *partition)?;
                    table.store().apply_changelog(*partition, &[], low, &[])?;
                }
                follower.follow(table, *partition)?;
                tracing::info!(table = table.name(), partition, "manager: standby started");
            }
            Ok(())
        })
    }

    fn global_tables(&self) -> impl Iterator<Item = (&Arc<Table>, u32)> {
        self.tables.values().filter_map(|table| match table.kind() {
            TableKind::Global { partitions } => Some((table, *partitions)),
            _ => None,
        })
    }

    /// Recovers every partition of every global table and starts following
    /// their changelogs. Call once, before the first event.
    ///
    /// # Errors
    ///
    /// Fails when recovery fails or the follower cannot be created.
    pub fn start_global(&self, kafka: &Kafka) -> anyhow::Result<Vec<RecoveryReport>> {
        let globals: Vec<(Arc<Table>, u32)> = self
            .global_tables()
            .map(|(table, partitions)| (table.clone(), partitions))
            .collect();
        if globals.is_empty() {
            return Ok(Vec::new());
        }
        let mut reports = Vec::new();
        for (table, partitions) in globals {
            for partition in 0..partitions {
                reports.push(self.recover(kafka, &table, partition)?);
                table.activate(partition);
                self.with_follower(kafka, |follower| follower.follow(&table, partition))?;
            }
            tracing::info!(
                table = table.name(),
                partitions,
                "manager: global table recovered; following its changelog"
            );
        }
        Ok(reports)
    }

    /// Applies changelog records of global tables that have arrived since
    /// the last call, without waiting. Returns how many were applied.
    ///
    /// # Errors
    ///
    /// Fails when reading the changelog or writing a store fails.
    pub fn follow(&self) -> anyhow::Result<u64> {
        match self
            .follower
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            Some(follower) => follower.poll(Duration::ZERO),
            None => Ok(0),
        }
    }

    /// Waits until the global tables have applied their changelogs up to the
    /// high watermarks of now, so a stopping worker leaves them current.
    ///
    /// # Errors
    ///
    /// Fails when the watermarks cannot be read or the follower does not
    /// get there within the commit timeout.
    pub fn catch_up_global(&self, kafka: &Kafka) -> anyhow::Result<()> {
        let mut follower = self.follower.lock().unwrap_or_else(|p| p.into_inner());
        let Some(follower) = follower.as_mut() else {
            return Ok(());
        };
        let mut targets = Vec::new();
        for (table, partition, _) in follower.positions() {
            if !matches!(table.kind(), TableKind::Global { .. }) {
                continue;
            }
            let (_, high) = kafka.watermarks(table.changelog_topic(), partition)?;
            targets.push((table.changelog_topic().to_owned(), partition, high));
        }
        follower.catch_up(&targets, FLUSH_TIMEOUT)
    }

    fn recover(
        &self,
        kafka: &Kafka,
        table: &Table,
        partition: Partition,
    ) -> anyhow::Result<RecoveryReport> {
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
        table.rebuild_windows(partition)?;
        Ok(report)
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
            // A standby copy becomes the active one: stop following it, and
            // let recovery replay what the standby has not applied yet.
            let mut follower = self.follower.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(follower) = follower.as_mut() {
                if follower.is_following(table, partition) {
                    follower.unfollow(table, partition)?;
                    tracing::info!(
                        table = table.name(),
                        partition,
                        "manager: taking over from the standby copy"
                    );
                }
            }
            drop(follower);
            let report = self.recover(kafka, table, partition)?;
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
            table.forget_windows(partition);
        }
    }

    /// Returns the source position of `topic` and `partition` that the
    /// recovered tables of that partition record: the offset of the first
    /// event their state does not reflect. `None` when it is unknown.
    ///
    /// A table records the position with each commit that writes to it.
    /// When the partition feeds one table, that position is exact. When it
    /// feeds several, a table without writes in recent commits records an
    /// older position. A crash halfway through a commit can also leave one
    /// table's changelog ahead of another's, and the changelogs alone cannot
    /// distinguish the two cases. The smallest position is then returned,
    /// and `None` when some table records none, so that no table misses an
    /// event: events may be handled twice, as without positions.
    ///
    /// # Errors
    ///
    /// Fails when a store cannot be read.
    pub fn source_position(
        &self,
        topic: &str,
        partition: Partition,
    ) -> anyhow::Result<Option<i64>> {
        let mut oldest: Option<i64> = None;
        for table in self.tables_of_source(topic) {
            let position = table
                .store()
                .source_positions(partition)?
                .into_iter()
                .find(|(source, _)| source == topic)
                .map(|(_, next)| next);
            let Some(next) = position else {
                return Ok(None);
            };
            oldest = Some(oldest.map_or(next, |o| o.min(next)));
        }
        Ok(oldest)
    }

    /// Returns the tables whose partitions follow source topic `topic`.
    pub fn tables_of_source(&self, topic: &str) -> &[Arc<Table>] {
        self.tables_by_source.get(topic).map_or(&[], Vec::as_slice)
    }

    /// Runs steps 1 and 2 of the commit (see the module docs); the caller
    /// commits source offsets afterwards.
    ///
    /// # Errors
    ///
    /// Fails when a record is not acknowledged, a store write fails, or the
    /// embedded cluster would drop changelog records. The worker must stop
    /// without committing source offsets then.
    ///
    /// `positions` contains the next source offset to handle per source topic
    /// and partition. The changelog records and the stores of plain and
    /// windowed tables record them, so the worker that recovers a partition
    /// knows which events its state already reflects (see
    /// [`TableManager::source_position`]).
    pub fn flush(
        &self,
        kafka: &Kafka,
        producer: &TrackedProducer,
        positions: &BTreeMap<(String, i32), i64>,
    ) -> anyhow::Result<CommitStats> {
        let started = Instant::now();
        let mut stats = CommitStats::default();
        let mut pending: Vec<(
            &Arc<Table>,
            Partition,
            Vec<ChangelogRecord>,
            Vec<SourcePosition>,
        )> = Vec::new();
        for table in self.tables.values() {
            for (partition, records) in table.take_dirty() {
                let table_positions: Vec<SourcePosition> = self
                    .sources_by_table
                    .get(table.name())
                    .into_iter()
                    .flatten()
                    .filter_map(|topic| {
                        let next = positions.get(&(topic.clone(), partition as i32))?;
                        Some((topic.clone(), *next))
                    })
                    .collect();
                changelog::send(
                    kafka,
                    producer,
                    table.changelog_topic(),
                    partition,
                    &records,
                    &table_positions,
                )?;
                stats.changelog_records += records.len() as u64;
                pending.push((table, partition, records, table_positions));
            }
        }

        let acknowledged = producer
            .flush(FLUSH_TIMEOUT)
            .context("commit: records were not acknowledged")?;

        let mut global_targets = Vec::new();
        for (table, partition, records, positions) in &pending {
            let next = changelog::next_offset(&acknowledged, table.changelog_topic(), *partition)?;
            if matches!(table.kind(), TableKind::Global { .. }) {
                global_targets.push((table.changelog_topic().to_owned(), *partition, next));
            } else {
                table
                    .store()
                    .apply_changelog(*partition, records, next, positions)?;
            }
        }
        if !global_targets.is_empty() {
            self.follower
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
                .context("commit: global tables are written but not followed")?
                .catch_up(&global_targets, FLUSH_TIMEOUT)
                .context("commit: global tables did not receive this worker's records")?;
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
        let error = manager
            .flush(&kafka, &producer, &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("embedded cluster: topic app-t-changelog partition 0 would hold "),
            "{error}"
        );
        assert!(
            error.ends_with(
                "Run against a real broker (set `brokers` in the config) for data of this size"
            ),
            "{error}"
        );
        assert_eq!(kafka.watermarks("app-t-changelog", 0).unwrap(), (0, 0));
    }
}
