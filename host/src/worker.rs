//! The worker: the loop that moves records from Kafka through the agents
//! into the tables.
//!
//! One thread runs the loop. It polls the consumer, groups records into
//! batches per source partition, hands each batch to every agent that
//! consumes the topic, produces the agents' outputs and dead letters, and
//! commits every `commit_interval_ms` (see [`crate::manager`] for the
//! commit order). Rebalance callbacks run on the same thread, inside
//! `poll`: a revoked partition is committed before it is released, and an
//! assigned partition's tables are recovered before `poll` returns, so no
//! record of it reaches an agent earlier.
//!
//! The loop ends in three ways. [`Shutdown::request`] drains it with a final
//! commit, and [`Shutdown::abort`] stops it without one, as a crash would.
//! With `stop_at_end`, it also ends once every source partition reaches its
//! end offset.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::agent::{
    Agent, AgentGrants, AgentRuntime, AgentVersion, BatchOutcome, BatchTimes, Event, Header,
    TableTimes,
};
use crate::config::Config;
use crate::control::{Command, Control};
use crate::kafka::embedded::{record_footprint, EARLY_COMMIT_BYTES, EARLY_COMMIT_RECORDS};
use crate::kafka::partitioner::partition_for_key;
use crate::kafka::producer::{OutHeader, TrackedProducer};
use crate::kafka::{Kafka, TopicKind};
use crate::manager::TableManager;
use crate::recovery::RecoveryReport;
use crate::store::Partition;
use crate::table::Table;

/// A stop request for a running worker.
#[derive(Debug, Default)]
pub struct Shutdown(AtomicU8);

const RUNNING: u8 = 0;
const DRAIN: u8 = 1;
const ABORT: u8 = 2;

impl Shutdown {
    /// Asks the worker to finish the batch in hand, commit and stop.
    pub fn request(&self) {
        let _ = self
            .0
            .compare_exchange(RUNNING, DRAIN, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Asks the worker to stop at once without committing, as a crash
    /// would. Everything since the last commit is handled again on the
    /// next start.
    pub fn abort(&self) {
        self.0.store(ABORT, Ordering::SeqCst);
    }

    /// Returns whether a stop was requested or forced.
    pub fn is_requested(&self) -> bool {
        self.state() != RUNNING
    }

    fn state(&self) -> u8 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The offset a consumer must reach in each source topic and partition.
pub type EndOffsets = HashMap<(String, i32), i64>;

/// End offsets that another thread sets once they are known.
pub type SharedEndOffsets = Arc<Mutex<Option<EndOffsets>>>;

/// Options of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop once every source partition is consumed up to its end offset:
    /// the high watermark at start, or the offsets in `end_offsets` once
    /// they are set.
    pub stop_at_end: bool,
    /// End offsets per source topic and partition, set by an in-process
    /// loader when it finishes. While `stop_at_end` is set and this is
    /// `None`, the worker keeps running.
    pub end_offsets: Option<SharedEndOffsets>,
    /// Updated with the number of events handled after every batch, for
    /// callers that show or wait for progress.
    pub events_handled: Option<Arc<AtomicU64>>,
    /// Deployment commands, taken between batches, and the notices and
    /// counters of the agents.
    pub control: Option<Arc<Control>>,
    /// The agent runtime to use, so versions prepared outside the worker
    /// can be swapped in; by default the worker creates its own.
    pub runtime: Option<Arc<AgentRuntime>>,
    /// Versions prepared from `runtime` per agent name, used instead of
    /// the agent's `component` file: agents deployed through the admin API
    /// have no file.
    pub prepared: Option<HashMap<String, Arc<AgentVersion>>>,
    /// The consumer group; by default the config's `app_id`.
    pub group_id: Option<String>,
}

/// Counters of one run.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Events handed to agents (an event consumed by two agents counts once).
    pub events: u64,
    /// Records the agents sent to output topics.
    pub outputs: u64,
    /// Events sent to dead-letter topics.
    pub dead_letters: u64,
    /// Commits made.
    pub commits: u64,
    /// Changelog records written.
    pub changelog_records: u64,
    /// Windows of windowed tables that closed.
    pub windows_closed: u64,
    /// One report per recovered table partition.
    pub recoveries: Vec<RecoveryReport>,
    /// Seconds spent in recovery.
    pub recovery_seconds: f64,
    /// Seconds spent handling events, from the first event to the end.
    pub processing_seconds: f64,
}

/// Everything the loop and the rebalance callbacks share.
struct Processor {
    kafka: Arc<Kafka>,
    manager: TableManager,
    producer: TrackedProducer,
    agents: Vec<Agent>,
    /// Agent positions in `agents`, per source topic.
    agents_by_topic: HashMap<String, Vec<usize>>,
    /// Partition counts of output and dead-letter topics.
    topic_partitions: HashMap<String, u32>,
    /// Next offset to commit per source partition.
    positions: BTreeMap<(String, i32), i64>,
    /// Bytes and records consumed since the last commit, per source
    /// partition, released from the embedded cluster's ledger at commit.
    consumed: HashMap<(String, i32), (u64, u64)>,
    /// Partitions assigned to this worker.
    assigned: std::collections::BTreeSet<(String, i32)>,
    summary: RunSummary,
    aborting: bool,
    /// A commit or recovery that failed inside a rebalance callback, where
    /// it cannot be returned; the loop stops with it after `poll` returns.
    rebalance_failure: Option<String>,
    app_id: String,
}

struct WorkerContext {
    processor: Arc<Mutex<Processor>>,
}

fn lock(processor: &Mutex<Processor>) -> MutexGuard<'_, Processor> {
    // Every mutation of the processor either completes or fails the run, so
    // a poisoned lock only occurs on a path that is already stopping.
    processor.lock().unwrap_or_else(|p| p.into_inner())
}

impl ClientContext for WorkerContext {}

impl ConsumerContext for WorkerContext {
    // The default implementation calls `pre_rebalance`, assigns the
    // partitions as they are and calls `post_rebalance`. This one recovers
    // new partitions first and may start them at a later offset than the
    // group's, so it does the assignment itself.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(consumer, partitions);
                if cooperative {
                    consumer.incremental_assign(partitions).map(|_| ())
                } else {
                    consumer.assign(partitions)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoke(consumer, partitions);
                if cooperative {
                    consumer.incremental_unassign(partitions).map(|_| ())
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "worker.rebalance: rebalance failed");
                Ok(())
            }
        };
        if let Err(error) = result {
            let message = format!("failed to apply the assignment: {error}");
            tracing::error!(error = %message, "worker.rebalance: stopping");
            lock(&self.processor).rebalance_failure = Some(message);
        }
    }
}

impl WorkerContext {
    /// Commits and releases revoked partitions.
    fn revoke(&self, consumer: &BaseConsumer<Self>, partitions: &TopicPartitionList) {
        let mut processor = lock(&self.processor);
        if processor.aborting {
            return;
        }
        tracing::info!(
            partitions = partitions.count(),
            "worker.rebalance: partitions revoked; committing them"
        );
        if let Err(error) = processor.commit(consumer) {
            // The write caches are drained, so this worker must stop; the
            // next owner handles the uncommitted events again.
            let message = format!("{error:#}");
            tracing::error!(error = %message, "worker.rebalance: commit before revocation failed; stopping");
            processor.rebalance_failure =
                Some(format!("commit before revocation failed: {message}"));
        }
        for element in partitions.elements() {
            let key = (element.topic().to_owned(), element.partition());
            processor.manager.release(&key.0, key.1 as u32);
            processor.positions.remove(&key);
            processor.assigned.remove(&key);
        }
        processor.refresh_standbys();
    }

    /// Recovers newly assigned partitions and sets the offset each starts
    /// at when its tables already reflect events past the group's
    /// committed offset.
    ///
    /// Recovering here, before the assignment takes effect, means no record
    /// of a new partition reaches the application before its tables are
    /// current. Pausing the partitions and recovering after `poll` returned
    /// instead raced with the assignment in librdkafka and could leave a
    /// partition paused for good.
    fn assign(&self, consumer: &BaseConsumer<Self>, partitions: &mut TopicPartitionList) {
        tracing::info!(
            partitions = partitions.count(),
            "worker.rebalance: partitions assigned"
        );
        let mut processor = lock(&self.processor);
        let started = Instant::now();
        let mut resume: Vec<(String, i32, i64)> = Vec::new();
        for element in partitions.elements() {
            let key = (element.topic().to_owned(), element.partition());
            let recovered = processor
                .manager
                .assign(&processor.kafka, &key.0, key.1 as u32)
                .and_then(|reports| {
                    let position = processor.manager.source_position(&key.0, key.1 as u32)?;
                    Ok((reports, position))
                });
            match recovered {
                Ok((reports, position)) => {
                    processor.summary.recoveries.extend(reports);
                    if let Some(position) = position {
                        resume.push((key.0.clone(), key.1, position));
                    }
                }
                Err(error) => {
                    let message = format!("{error:#}");
                    tracing::error!(topic = %key.0, partition = key.1, error = %message, "worker.rebalance: recovery failed; stopping");
                    processor.rebalance_failure = Some(message);
                    break;
                }
            }
            processor.assigned.insert(key);
        }
        processor.summary.recovery_seconds += started.elapsed().as_secs_f64();
        processor.refresh_standbys();
        drop(processor);

        if resume.is_empty() {
            return;
        }
        let mut requested = TopicPartitionList::new();
        for (topic, partition, _) in &resume {
            requested.add_partition(topic, *partition);
        }
        let committed = match consumer.committed_offsets(requested, Duration::from_secs(30)) {
            Ok(committed) => committed,
            Err(error) => {
                let message =
                    format!("failed to read the committed offsets of new partitions: {error}");
                tracing::error!(error = %message, "worker.rebalance: stopping");
                lock(&self.processor).rebalance_failure = Some(message);
                return;
            }
        };
        for (topic, partition, position) in resume {
            let committed_next = match committed
                .find_partition(&topic, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(next)) => next,
                _ => 0,
            };
            if position > committed_next {
                tracing::info!(topic = %topic, partition, committed = committed_next, position, "worker.rebalance: the tables already reflect events past the committed offset; starting after them");
                if let Err(error) =
                    partitions.set_partition_offset(&topic, partition, Offset::Offset(position))
                {
                    tracing::error!(%error, "worker.rebalance: failed to set the start offset");
                }
            }
        }
    }
}

/// Runs the application until `shutdown` is requested or, with
/// `options.stop_at_end`, until the sources are consumed.
///
/// # Errors
///
/// Fails when setup fails (topics, stores, components), when recovery or a
/// commit fails, or when an agent cannot be instantiated.
pub fn run(
    config: &Config,
    kafka: Arc<Kafka>,
    shutdown: Arc<Shutdown>,
    options: RunOptions,
) -> anyhow::Result<RunSummary> {
    let state_dir = config.state_dir();
    tracing::info!(app = %config.app_id, bootstrap = kafka.bootstrap_servers(), embedded = kafka.embedded_cluster().is_some(), state_dir = %state_dir.display(), "worker: starting");

    for topic in &config.topics {
        kafka.ensure_topic(&topic.name, topic.partitions, TopicKind::Plain)?;
    }
    let mut source_partitions = HashMap::new();
    for source in config.agents.iter().flat_map(|a| &a.sources) {
        let Some(count) = kafka.partition_count(source)? else {
            bail!("worker: source topic {source} does not exist; create it, load data into it with `tablehost load`, or add it under [[topics]]");
        };
        source_partitions.insert(source.clone(), count);
    }

    let manager = TableManager::open(config, &kafka, &source_partitions)?;
    let runtime = match &options.runtime {
        Some(runtime) => runtime.clone(),
        None => Arc::new(AgentRuntime::new(&state_dir.join("compiled"))?),
    };
    let stats = options
        .control
        .as_ref()
        .map(|control| control.stats.clone())
        .unwrap_or_default();
    let mut agents = Vec::new();
    let mut agents_by_topic: HashMap<String, Vec<usize>> = HashMap::new();
    let mut topic_partitions = HashMap::new();
    for agent_config in &config.agents {
        let partitions = source_partitions[&agent_config.sources[0]];
        let dead_letters = config.dead_letter_topic(&agent_config.name);
        for topic in agent_config
            .outputs
            .iter()
            .chain(std::iter::once(&dead_letters))
        {
            if !topic_partitions.contains_key(topic) {
                let count = match kafka.partition_count(topic)? {
                    Some(count) => count,
                    None => {
                        kafka.ensure_topic(topic, partitions, TopicKind::Plain)?;
                        partitions
                    }
                };
                topic_partitions.insert(topic.clone(), count);
            }
        }
        let tables = crate::agent::grants_tables(agent_config, manager.tables());
        let agent = match options
            .prepared
            .as_ref()
            .and_then(|prepared| prepared.get(&agent_config.name))
        {
            Some(version) => runtime.agent(
                AgentGrants::new(agent_config, tables),
                version.clone(),
                stats.clone(),
            ),
            None => runtime.load_with_stats(agent_config, tables, stats.clone())?,
        };
        for source in &agent_config.sources {
            agents_by_topic
                .entry(source.clone())
                .or_default()
                .push(agents.len());
        }
        tracing::info!(agent = %agent_config.name, version = agent.version(), component = %agent_config.component.display(), sources = ?agent_config.sources, "worker: agent loaded");
        agents.push(agent);
    }

    let global_started = Instant::now();
    let global_recoveries = manager.start_global(&kafka)?;
    let global_seconds = global_started.elapsed().as_secs_f64();

    let processor = Arc::new(Mutex::new(Processor {
        producer: TrackedProducer::new(&kafka)?,
        kafka: kafka.clone(),
        manager,
        agents,
        agents_by_topic,
        topic_partitions,
        positions: BTreeMap::new(),
        consumed: HashMap::new(),
        assigned: Default::default(),
        summary: RunSummary {
            recoveries: global_recoveries,
            recovery_seconds: global_seconds,
            ..Default::default()
        },
        aborting: false,
        rebalance_failure: None,
        app_id: config.app_id.clone(),
    }));

    let mut consumer_config = kafka.client_config();
    if config.standby_replicas > 0 && !config.kafka.contains_key("partition.assignment.strategy") {
        // Standby placement relies on consecutive partitions going to
        // different members; see `TableManager::update_standbys`.
        consumer_config.set("partition.assignment.strategy", "roundrobin");
    }
    if kafka.embedded_cluster().is_some() && !config.kafka.contains_key("session.timeout.ms") {
        // The embedded cluster keeps a member that left in the group until
        // its session times out, so with the default of 45 s a restarted
        // worker waits that long for its partitions.
        consumer_config
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500");
    }
    let consumer: BaseConsumer<WorkerContext> = consumer_config
        .set(
            "group.id",
            options.group_id.as_deref().unwrap_or(&config.app_id),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create_with_context(WorkerContext {
            processor: processor.clone(),
        })
        .context("worker: failed to create the consumer; check the [kafka] properties")?;
    let sources: Vec<&str> = source_partitions.keys().map(String::as_str).collect();
    consumer
        .subscribe(&sources)
        .context("worker: failed to subscribe to the source topics")?;

    let mut end_offsets: Option<EndOffsets> = None;
    if options.stop_at_end && options.end_offsets.is_none() {
        let mut ends = HashMap::new();
        for (topic, count) in &source_partitions {
            for partition in 0..*count {
                ends.insert(
                    (topic.clone(), partition as i32),
                    kafka.watermarks(topic, partition)?.1,
                );
            }
        }
        end_offsets = Some(ends);
    }

    let result = run_loop(
        config,
        &consumer,
        &processor,
        &shutdown,
        &options,
        &mut end_offsets,
    );
    let outcome = if result.is_err() || shutdown.state() == ABORT {
        // Leaving the group must not commit what was never flushed.
        lock(&processor).aborting = true;
        result
    } else {
        let processor = &mut *lock(&processor);
        processor.commit(&consumer).and_then(|()| {
            // Records other workers committed last reach this worker's
            // copies of the global tables before it stops.
            processor.manager.catch_up_global(&processor.kafka)
        })
    };
    // Closing the consumer revokes its partitions, which commits once more
    // unless the run is aborting; that commit finds nothing new.
    drop(consumer);
    outcome?;
    let summary = lock(&processor).summary.clone();
    tracing::info!(
        events = summary.events,
        outputs = summary.outputs,
        dead_letters = summary.dead_letters,
        commits = summary.commits,
        "worker: stopped"
    );
    Ok(summary)
}

fn run_loop(
    config: &Config,
    consumer: &BaseConsumer<WorkerContext>,
    processor: &Mutex<Processor>,
    shutdown: &Shutdown,
    options: &RunOptions,
    end_offsets: &mut Option<EndOffsets>,
) -> anyhow::Result<()> {
    let commit_interval = Duration::from_millis(config.commit_interval_ms);
    let mut last_commit = Instant::now();
    let mut last_progress = Instant::now();
    let mut first_event: Option<Instant> = None;
    let mut batch: Vec<Event> = Vec::with_capacity(config.batch_size);

    while shutdown.state() == RUNNING {
        // Collect up to one batch: wait briefly for the first record, then
        // take what is already fetched.
        batch.clear();
        let mut timeout = Duration::from_millis(100);
        while batch.len() < config.batch_size {
            match consumer.poll(timeout) {
                Some(Ok(message)) => batch.push(to_event(&message)),
                Some(Err(error)) => tracing::warn!(%error, "worker.poll: consumer error; retrying"),
                None => break,
            }
            timeout = Duration::ZERO;
        }

        if let Some(message) = lock(processor).rebalance_failure.take() {
            bail!("worker: {message}");
        }

        if let Some(control) = &options.control {
            lock(processor).obey(control);
        }
        if !batch.is_empty() {
            first_event.get_or_insert_with(Instant::now);
            let mut processor = lock(processor);
            processor.handle(std::mem::take(&mut batch))?;
            if let Some(counter) = &options.events_handled {
                counter.store(processor.summary.events, Ordering::SeqCst);
            }
        }

        let mut processor_guard = lock(processor);
        processor_guard.manager.follow()?;
        if last_commit.elapsed() >= commit_interval || processor_guard.embedded_backlog_full() {
            processor_guard.commit(consumer)?;
            last_commit = Instant::now();
        }
        drop(processor_guard);
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            let processor = lock(processor);
            tracing::info!(
                events = processor.summary.events,
                commits = processor.summary.commits,
                assigned = processor.assigned.len(),
                "worker: progress"
            );
        }
        if let Some(first) = first_event {
            lock(processor).summary.processing_seconds = first.elapsed().as_secs_f64();
        }

        if options.stop_at_end {
            if end_offsets.is_none() {
                if let Some(shared) = &options.end_offsets {
                    *end_offsets = shared.lock().unwrap_or_else(|p| p.into_inner()).clone();
                }
            }
            if let Some(ends) = end_offsets.as_ref() {
                if reached_end(consumer, processor, ends) {
                    tracing::info!(
                        "worker: every source partition is consumed to its end offset; stopping"
                    );
                    break;
                }
            }
        }
    }
    Ok(())
}

fn reached_end(
    consumer: &BaseConsumer<WorkerContext>,
    processor: &Mutex<Processor>,
    ends: &EndOffsets,
) -> bool {
    let processor = lock(processor);
    // Until the group has assigned every partition with data, this worker
    // cannot know it has consumed them all.
    if ends
        .iter()
        .any(|(key, end)| *end > 0 && !processor.assigned.contains(key))
    {
        return false;
    }
    // Partitions this run has handled nothing of may already be committed
    // up to their end by an earlier run; ask the group for those.
    let mut unknown = TopicPartitionList::new();
    for ((topic, partition), end) in ends {
        if *end > 0
            && !processor
                .positions
                .contains_key(&(topic.clone(), *partition))
        {
            unknown.add_partition(topic, *partition);
        }
    }
    let committed = if unknown.count() > 0 {
        match consumer.committed_offsets(unknown, Duration::from_secs(10)) {
            Ok(committed) => Some(committed),
            Err(error) => {
                tracing::warn!(%error, "worker: failed to read committed offsets; checking again later");
                return false;
            }
        }
    } else {
        None
    };
    ends.iter().all(|((topic, partition), end)| {
        if *end == 0 {
            return true;
        }
        if let Some(next) = processor.positions.get(&(topic.clone(), *partition)) {
            return next >= end;
        }
        match committed
            .as_ref()
            .and_then(|c| c.find_partition(topic, *partition))
            .map(|e| e.offset())
        {
            Some(Offset::Offset(next)) => next >= *end,
            _ => false,
        }
    })
}

fn to_event(message: &BorrowedMessage<'_>) -> Event {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| Header {
                    key: h.key.to_owned(),
                    value: h.value.unwrap_or_default().to_vec(),
                })
                .collect()
        })
        .unwrap_or_default();
    Event {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms: message.timestamp().to_millis(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers,
    }
}

fn event_footprint(event: &Event) -> u64 {
    let headers: usize = event
        .headers
        .iter()
        .map(|h| h.key.len() + h.value.len())
        .sum();
    record_footprint(
        event.key.as_ref().map_or(0, Vec::len),
        event.value.as_ref().map_or(0, Vec::len),
        headers,
    )
}

impl Processor {
    /// Hands a polled batch to the agents, partition by partition.
    fn handle(&mut self, batch: Vec<Event>) -> anyhow::Result<()> {
        let mut by_partition: BTreeMap<(String, i32), Vec<Event>> = BTreeMap::new();
        for event in batch {
            by_partition
                .entry((event.topic.clone(), event.partition))
                .or_default()
                .push(event);
        }
        for ((topic, partition), events) in by_partition {
            let agent_indexes = self
                .agents_by_topic
                .get(&topic)
                .cloned()
                .unwrap_or_default();
            let times = Arc::new(self.batch_times(&topic, partition as u32, &events));
            for &index in &agent_indexes {
                let outcome = self.agents[index].handle(&events, partition as u32, &times)?;
                let agent_name = self.agents[index].name().to_owned();
                self.emit(&agent_name, outcome)?;
            }
            self.close_windows(&topic, partition as u32, &times, &agent_indexes)?;
            let key = (topic, partition);
            let last = events
                .last()
                .expect("a partition group is never empty")
                .offset;
            self.positions.insert(key.clone(), last + 1);
            let consumed = self.consumed.entry(key).or_default();
            consumed.0 += events.iter().map(event_footprint).sum::<u64>();
            consumed.1 += events.len() as u64;
            self.summary.events += events.len() as u64;
        }
        Ok(())
    }

    /// Carries out the commands queued in `control` and reports what the
    /// agents did since the last call.
    fn obey(&mut self, control: &Control) {
        for command in control.take_commands() {
            match command {
                Command::Swap {
                    agent,
                    version,
                    rollout,
                    limits,
                } => match self.agents.iter_mut().find(|a| a.name() == agent) {
                    Some(target) => target.swap(version, rollout, limits),
                    None => {
                        tracing::warn!(agent = %agent, version = version.label(), "worker: swap for an agent this worker does not run; ignored");
                    }
                },
            }
        }
        let notices = self
            .agents
            .iter_mut()
            .flat_map(|agent| agent.take_notices())
            .collect();
        control.report(notices);
    }

    /// Follows the standby partitions that go with the current assignment.
    /// A failure only costs warm copies, so it is logged, not fatal.
    fn refresh_standbys(&mut self) {
        if let Err(error) = self.manager.update_standbys(&self.kafka, &self.assigned) {
            tracing::warn!(error = %format!("{error:#}"), "worker.rebalance: failed to update standby partitions; failover will replay more");
        }
    }

    /// Computes the event times of `events` for each windowed table that
    /// follows `topic`, with the stream time after each event.
    fn batch_times(&self, topic: &str, partition: Partition, events: &[Event]) -> BatchTimes {
        let mut batch = BatchTimes::default();
        for table in self.manager.tables_of_source(topic) {
            let Some(spec) = table.window_spec() else {
                continue;
            };
            let mut stream_time = table.stream_time(partition);
            let mut times = TableTimes::default();
            for event in events {
                let time = spec.event_time(event.timestamp_ms, event.value.as_deref());
                if let Ok(time) = time {
                    stream_time = Some(stream_time.map_or(time, |now| now.max(time)));
                }
                times.times.push(time);
                times.stream.push(stream_time);
            }
            batch.tables.insert(table.name().to_owned(), times);
        }
        // Only windowed tables look events up by offset.
        if !batch.tables.is_empty() {
            batch.offsets = events.iter().map(|e| e.offset).collect();
        }
        batch
    }

    /// Moves the stream time of the windowed tables that follow `topic` to
    /// the end of the batch, and closes the windows that are now behind it.
    /// Each agent of `agent_indexes` that declares the table and exports the
    /// close handler is called once per window, then the window is deleted.
    fn close_windows(
        &mut self,
        topic: &str,
        partition: Partition,
        times: &BatchTimes,
        agent_indexes: &[usize],
    ) -> anyhow::Result<()> {
        if times.tables.is_empty() {
            return Ok(());
        }
        let tables: Vec<Arc<Table>> = self.manager.tables_of_source(topic).to_vec();
        for table in tables {
            let Some(stream_time) = times
                .tables
                .get(table.name())
                .and_then(|t| t.stream.last().copied().flatten())
            else {
                continue;
            };
            table.advance_stream_time(partition, stream_time);
            let closed = table.take_closed(partition)?;
            if closed.is_empty() {
                continue;
            }
            tracing::debug!(
                table = table.name(),
                partition,
                windows = closed.len(),
                stream_time,
                "worker: windows closed"
            );
            self.summary.windows_closed += closed.len() as u64;
            for &index in agent_indexes {
                let agent = &mut self.agents[index];
                if !agent.declares(table.name()) || !agent.handles_window_close() {
                    continue;
                }
                let outcome = agent.close_windows(table.name(), partition, &closed)?;
                let agent_name = agent.name().to_owned();
                self.emit(&agent_name, outcome)?;
            }
        }
        Ok(())
    }

    /// Produces an agent's outputs and dead letters.
    fn emit(&mut self, agent: &str, outcome: BatchOutcome) -> anyhow::Result<()> {
        for record in &outcome.outputs {
            let headers: Vec<OutHeader> = record.headers.clone();
            let partition = self.choose_partition(
                &record.topic,
                record.key.as_deref(),
                record.value.as_deref(),
                &headers,
            )?;
            self.producer.send(
                &record.topic,
                Some(partition),
                record.key.as_deref(),
                record.value.as_deref(),
                &headers,
            )?;
        }
        self.summary.outputs += outcome.outputs.len() as u64;

        if !outcome.dead_letters.is_empty() {
            let topic = format!("{}-{agent}-dead-letters", self.app_id);
            for letter in &outcome.dead_letters {
                let event = &letter.event;
                let mut headers: Vec<OutHeader> = event
                    .headers
                    .iter()
                    .map(|h| (h.key.clone(), h.value.clone()))
                    .collect();
                headers.push(("tablehost-error".into(), letter.error.clone().into_bytes()));
                headers.push(("tablehost-agent".into(), agent.as_bytes().to_vec()));
                headers.push(("tablehost-topic".into(), event.topic.clone().into_bytes()));
                headers.push((
                    "tablehost-partition".into(),
                    event.partition.to_string().into_bytes(),
                ));
                headers.push((
                    "tablehost-offset".into(),
                    event.offset.to_string().into_bytes(),
                ));
                let partition = self.choose_partition(
                    &topic,
                    event.key.as_deref(),
                    event.value.as_deref(),
                    &headers,
                )?;
                self.producer.send(
                    &topic,
                    Some(partition),
                    event.key.as_deref(),
                    event.value.as_deref(),
                    &headers,
                )?;
            }
            self.summary.dead_letters += outcome.dead_letters.len() as u64;
        }
        Ok(())
    }

    /// Chooses a record's partition like Kafka's default partitioner and,
    /// on the embedded cluster, reserves room for it.
    fn choose_partition(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[OutHeader],
    ) -> anyhow::Result<i32> {
        let count = *self
            .topic_partitions
            .get(topic)
            .with_context(|| format!("worker: topic {topic} has no known partition count"))?;
        let partition = match key {
            Some(key) => partition_for_key(key, count),
            None => (self.summary.outputs + self.summary.dead_letters) as u32 % count,
        };
        if let Some(cluster) = self.kafka.embedded_cluster() {
            let header_bytes = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
            let bytes = record_footprint(
                key.map_or(0, <[u8]>::len),
                value.map_or(0, <[u8]>::len),
                header_bytes,
            );
            cluster.ledger().reserve(topic, partition, bytes, 1)?;
        }
        Ok(partition as i32)
    }

    /// Returns whether a source partition of the embedded cluster has so
    /// much uncommitted data that a loader may be waiting for room.
    fn embedded_backlog_full(&self) -> bool {
        self.kafka.embedded_cluster().is_some()
            && self.consumed.values().any(|(bytes, records)| {
                *bytes >= EARLY_COMMIT_BYTES || *records >= EARLY_COMMIT_RECORDS
            })
    }

    /// Commits: changelog and outputs acknowledged, stores durable, then
    /// source offsets.
    fn commit(&mut self, consumer: &BaseConsumer<WorkerContext>) -> anyhow::Result<()> {
        if self.consumed.is_empty() && self.manager.tables().values().all(|t| t.dirty_len() == 0) {
            return Ok(());
        }
        let stats = self
            .manager
            .flush(&self.kafka, &self.producer, &self.positions)?;
        self.summary.changelog_records += stats.changelog_records;

        if !self.positions.is_empty() {
            let mut offsets = TopicPartitionList::new();
            for ((topic, partition), next) in &self.positions {
                offsets.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
            }
            // The changelogs already record these positions, so a refused
            // commit loses nothing: the next commit, or the next owner of
            // the partition, catches up. A group in a rebalance refuses
            // commits, for one.
            if let Err(error) = consumer.commit(&offsets, CommitMode::Sync) {
                tracing::warn!(%error, "commit: failed to commit the source offsets; the changelogs keep the positions and the next commit retries");
            }
        }
        if let Some(cluster) = self.kafka.embedded_cluster() {
            for ((topic, partition), (bytes, records)) in self.consumed.drain() {
                cluster
                    .ledger()
                    .release(&topic, partition as u32, bytes, records);
            }
        }
        self.consumed.clear();
        self.summary.commits += 1;
        Ok(())
    }
}
