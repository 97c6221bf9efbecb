//! Following changelogs: keeping table partitions current with records
//! that other workers write.
//!
//! A [`Follower`] owns one consumer assigned to a set of changelog
//! partitions, each starting at the offset its store has applied up to. The
//! worker calls [`Follower::poll`] on every turn of its loop. Each call
//! applies what has arrived to the stores, chunk by chunk, together with
//! the next offset, so a crash never leaves a store claiming records it
//! lacks.
//!
//! Global tables use it for every partition: each worker reads the whole
//! changelog, including its own writes. A worker never applies its own
//! writes to a global table's store directly; at commit it waits with
//! [`Follower::catch_up`] until the follower has applied them. The store
//! therefore sees every record in changelog order, from one writer, and its
//! offset only moves forward.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::changelog;
use crate::kafka::Kafka;
use crate::recovery::merge_positions;
use crate::store::{ChangelogRecord, Partition, SourcePosition};
use crate::table::Table;

/// The maximum number of records one [`Follower::poll`] call applies, so a
/// worker that follows a busy changelog still returns to its own events.
const MAX_RECORDS_PER_POLL: usize = 10_000;

/// Records of one partition read by one poll, to apply together.
struct Chunk {
    records: Vec<ChangelogRecord>,
    next: i64,
    positions: Vec<SourcePosition>,
}

struct Followed {
    table: Arc<Table>,
    /// The offset of the next record to apply.
    next: i64,
}

/// A consumer that keeps table partitions current with their changelogs.
pub struct Follower {
    consumer: BaseConsumer,
    followed: BTreeMap<(String, i32), Followed>,
}

impl Follower {
    /// Creates the follower's consumer. It reads only assigned partitions
    /// and never joins a group or commits.
    ///
    /// # Errors
    ///
    /// Fails when librdkafka rejects the configuration.
    pub fn new(kafka: &Kafka) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = kafka
            .client_config()
            .set("group.id", "tablehost-follower")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            // A commit waits for the follower to see the worker's own
            // records, so fetches must not linger on idle partitions.
            .set("fetch.wait.max.ms", "10")
            .create()
            .context("follower: failed to create the changelog consumer")?;
        Ok(Self {
            consumer,
            followed: BTreeMap::new(),
        })
    }

    /// Starts following partition `partition` of `table`'s changelog from
    /// the offset its store has applied up to. Recover the partition first,
    /// so that offset is set.
    ///
    /// # Errors
    ///
    /// Fails when the store cannot be read or the consumer rejects the
    /// assignment.
    pub fn follow(&mut self, table: &Arc<Table>, partition: Partition) -> anyhow::Result<()> {
        let next = table.store().changelog_offset(partition)?.unwrap_or(0);
        self.followed.insert(
            (table.changelog_topic().to_owned(), partition as i32),
            Followed {
                table: table.clone(),
                next,
            },
        );
        tracing::debug!(
            table = table.name(),
            partition,
            from = next,
            "follower: following changelog partition"
        );
        self.reassign()
    }

    /// Stops following partition `partition` of `table`'s changelog.
    ///
    /// # Errors
    ///
    /// Fails when the consumer rejects the new assignment.
    pub fn unfollow(&mut self, table: &Table, partition: Partition) -> anyhow::Result<()> {
        let key = (table.changelog_topic().to_owned(), partition as i32);
        if self.followed.remove(&key).is_some() {
            tracing::debug!(
                table = table.name(),
                partition,
                "follower: stopped following changelog partition"
            );
            self.reassign()?;
        }
        Ok(())
    }

    /// Returns whether partition `partition` of `table` is followed.
    pub fn is_following(&self, table: &Table, partition: Partition) -> bool {
        self.followed
            .contains_key(&(table.changelog_topic().to_owned(), partition as i32))
    }

    /// Returns the followed partitions with the next offset of each.
    pub fn positions(&self) -> Vec<(Arc<Table>, Partition, i64)> {
        self.followed
            .iter()
            .map(|((_, partition), followed)| {
                (
                    followed.table.clone(),
                    *partition as Partition,
                    followed.next,
                )
            })
            .collect()
    }

    fn reassign(&self) -> anyhow::Result<()> {
        let mut assignment = TopicPartitionList::new();
        for ((topic, partition), followed) in &self.followed {
            assignment.add_partition_offset(topic, *partition, Offset::Offset(followed.next))?;
        }
        // Assigning with explicit offsets restarts every partition at the
        // next record to apply; records fetched before are dropped and read
        // again, never skipped.
        self.consumer
            .assign(&assignment)
            .context("follower: failed to assign the changelog partitions")
    }

    /// Applies the records that arrive within `wait`, or at once when some
    /// are already fetched, up to a bounded number. Returns how many were
    /// applied.
    ///
    /// # Errors
    ///
    /// Fails when the cluster cannot be read or a store cannot be written.
    pub fn poll(&mut self, wait: Duration) -> anyhow::Result<u64> {
        if self.followed.is_empty() {
            return Ok(0);
        }
        let mut chunks: HashMap<(String, i32), Chunk> = HashMap::new();
        let mut applied = 0;
        let mut timeout = wait;
        while applied < MAX_RECORDS_PER_POLL {
            let message = match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(message)) => message,
                Some(Err(error)) => bail!("follower: failed to read a changelog: {error}"),
            };
            timeout = Duration::ZERO;
            let key = (message.topic().to_owned(), message.partition());
            let Some(followed) = self.followed.get(&key) else {
                continue;
            };
            let pending = chunks.get(&key).map_or(followed.next, |chunk| chunk.next);
            // A record from before a reassignment arrives again afterwards.
            if message.offset() < pending {
                continue;
            }
            let chunk = chunks.entry(key).or_insert_with(|| Chunk {
                records: Vec::new(),
                next: pending,
                positions: Vec::new(),
            });
            chunk.records.push(ChangelogRecord {
                key: message.key().unwrap_or_default().to_vec(),
                value: message.payload().map(<[u8]>::to_vec),
            });
            merge_positions(
                &mut chunk.positions,
                changelog::positions_from_headers(&message),
            );
            chunk.next = message.offset() + 1;
            applied += 1;
        }
        for (key, chunk) in chunks {
            let followed = self
                .followed
                .get_mut(&key)
                .expect("chunks are only kept for followed partitions");
            followed.table.store().apply_changelog(
                key.1 as Partition,
                &chunk.records,
                chunk.next,
                &chunk.positions,
            )?;
            followed.next = chunk.next;
        }
        Ok(applied as u64)
    }

    /// Applies records until every `(table, partition, offset)` target has
    /// its records before `offset` applied.
    ///
    /// # Errors
    ///
    /// Fails when a target is not followed, when reading or applying
    /// fails, or when `timeout` passes first.
    pub fn catch_up(
        &mut self,
        targets: &[(String, Partition, i64)],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        for (topic, partition, _) in targets {
            if !self
                .followed
                .contains_key(&(topic.clone(), *partition as i32))
            {
                bail!("follower: changelog {topic} partition {partition} is not followed");
            }
        }
        loop {
            let behind = targets.iter().find(|(topic, partition, target)| {
                self.followed[&(topic.clone(), *partition as i32)].next < *target
            });
            let Some((topic, partition, target)) = behind else {
                return Ok(());
            };
            if started.elapsed() > timeout {
                let next = self.followed[&(topic.clone(), *partition as i32)].next;
                bail!(
                    "follower: changelog {topic} partition {partition} reached offset {next} of \
                     {target} within {timeout:?}; check that the cluster is reachable"
                );
            }
            self.poll(Duration::from_millis(50))?;
        }
    }
}
