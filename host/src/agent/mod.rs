//! The agent runtime: WebAssembly components run by wasmtime.
//!
//! [`AgentRuntime`] owns the wasmtime `Engine`, the on-disk cache of compiled
//! components and the epoch ticker that bounds CPU time. [`Agent`] is one
//! configured agent: its pre-instantiated component and its current
//! instance.
//!
//! [`AgentRuntime::prepare`] compiles and links one version of an agent
//! from a component or a wit-bindgen core module; [`Agent::swap`] puts a
//! prepared version in place between two batches. A swapped-in version is
//! on probation for its first events ([`Rollout`]): a trap or an error
//! sends the event to the previous version, and too many roll the agent
//! back.
//!
//! A batch of events goes into the component in one call. If the call
//! traps or returns an error, the batch's effects are discarded. A trapped
//! instance is thrown away and never entered again. The batch's events are
//! then handled one by one on fresh instances, and each event that still
//! fails becomes a [`DeadLetter`]. Limits per instance: linear memory
//! (`memory_mib`) through a `StoreLimits` limiter, and CPU time through an
//! epoch deadline of `cpu_ms_per_event` one-millisecond ticks per event.

mod cache;
mod host;
mod version;
mod wasi;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, Store, StoreLimitsBuilder};

pub use crate::config::Rollout;
use host::HostState;
pub use host::{
    AgentGrants, BatchEffects, BatchTimes, OutputRecord, TableHandle, TableTimes,
    WindowedTableHandle,
};
pub use version::{check_component, AgentVersion, CheckedComponent};

pub use crate::config::WasiGrants;
use crate::config::{AgentConfig, Limits};
use crate::store::Partition;
use crate::table::{ClosedWindow, Table};

/// Bindings generated from `wit/agent.wit`; the WIT file documents them.
///
/// They are generated for the `windowed-agent` world, the larger of the
/// two, and the host looks up the `window-close` export separately, so a
/// component of the plain `agent` world loads as well.
#[allow(missing_docs, reason = "generated code; the WIT file carries the docs")]
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "windowed-agent",
        path: "../wit",
        // Open tables live in the store's resource table as handles.
        with: {
            "tablehost:agent/tables.table": super::TableHandle,
            "tablehost:agent/tables.windowed-table": super::WindowedTableHandle,
        },
        // Every import may trap: a handle missing from the resource table is
        // a host invariant broken, not something the guest can handle.
        imports: { default: trappable },
    });
}

use bindings::exports::tablehost::agent::{handler, window_close};

pub use bindings::tablehost::agent::types::{Event, Header};

/// Length of one epoch tick; CPU limits are counted in ticks.
const TICK: Duration = Duration::from_millis(1);

/// The wasmtime engine, the linker, the compiled-component cache and the
/// epoch ticker. One runtime serves every agent of a process, so a version
/// compiled by the admin API can be handed to a running worker.
pub struct AgentRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: std::path::PathBuf,
    ticker_stop: Arc<AtomicBool>,
}

impl AgentRuntime {
    /// Creates the engine; compiled components are cached in `cache_dir`.
    ///
    /// # Errors
    ///
    /// Fails when wasmtime rejects the engine configuration.
    pub fn new(cache_dir: &Path) -> anyhow::Result<Self> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config)
            .map_err(|e| anyhow!("agent: failed to create the wasmtime engine: {e}"))?;

        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasi::add_to_linker(&mut linker)?;
        bindings::WindowedAgent::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(|e| anyhow!("agent: failed to link the tablehost imports: {e}"))?;

        // One thread advances the epoch every tick for every store of this
        // engine; stores trap when their deadline, counted in ticks, passes.
        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = ticker_stop.clone();
            std::thread::Builder::new()
                .name("tablehost-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                })
                .context("agent: failed to start the epoch thread")?;
        }
        Ok(Self {
            engine,
            linker,
            cache_dir: cache_dir.to_owned(),
            ticker_stop,
        })
    }

    /// Loads the component of `config`, from the compiled cache when it is
    /// there, and links it against the host.
    ///
    /// # Errors
    ///
    /// Fails when the file cannot be read, is not a valid component, or
    /// imports something the host does not provide.
    pub fn load(&self, config: &AgentConfig, tables: Vec<Arc<Table>>) -> anyhow::Result<Agent> {
        self.load_with_stats(config, tables, Stats::default())
    }

    /// Like [`AgentRuntime::load`], counting into `stats`.
    ///
    /// # Errors
    ///
    /// As [`AgentRuntime::load`].
    pub fn load_with_stats(
        &self,
        config: &AgentConfig,
        tables: Vec<Arc<Table>>,
        stats: Stats,
    ) -> anyhow::Result<Agent> {
        let bytes = std::fs::read(&config.component).with_context(|| {
            format!(
                "agent {}: cannot read component {}",
                config.name,
                config.component.display()
            )
        })?;
        let version = self
            .prepare(&config.name, "config", &bytes)
            .with_context(|| {
                format!(
                    "agent {}: failed to load component {}",
                    config.name,
                    config.component.display()
                )
            })?;
        let grants = AgentGrants::new(config, tables);
        Ok(self.agent(grants, version, stats))
    }

    /// Compiles (or finds in the cache) and links one version of agent
    /// `agent`, labelled `label`. `bytes` is a component, or a core module
    /// built with wit-bindgen, which is wrapped into a component first.
    ///
    /// # Errors
    ///
    /// Fails when the bytes are neither, when the component imports an
    /// interface the host does not grant, or when it does not export the
    /// handler; the message names the interface.
    pub fn prepare(
        &self,
        agent: &str,
        label: &str,
        bytes: &[u8],
    ) -> anyhow::Result<Arc<AgentVersion>> {
        version::prepare(self, agent, label, bytes).map(Arc::new)
    }

    /// Creates agent `grants.name` running `version`, counting into `stats`.
    pub fn agent(&self, grants: AgentGrants, version: Arc<AgentVersion>, stats: Stats) -> Agent {
        let grants = Arc::new(grants);
        Agent {
            engine: self.engine.clone(),
            current: Slot::new(version, grants.clone()),
            grants,
            probation: None,
            stats,
            notices: Vec::new(),
            traps: 0,
        }
    }
}

impl std::fmt::Debug for AgentRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRuntime")
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

impl Drop for AgentRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// An event that failed on its own and goes to the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The event.
    pub event: Event,
    /// Why it failed: the trap or the agent's error message.
    pub error: String,
}

/// The result of handling a batch.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Records to produce, in order.
    pub outputs: Vec<OutputRecord>,
    /// Events that failed alone.
    pub dead_letters: Vec<DeadLetter>,
}

/// Something an agent did on its own that its owner should record.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentNotice {
    /// A swap took effect: `to` handles the next events.
    Swapped {
        /// The agent.
        agent: String,
        /// The version that handled the events before.
        from: String,
        /// The version that handles them now.
        to: String,
        /// How long the swap held up the agent's partitions: creating the
        /// new version's instance.
        pause: Duration,
    },
    /// A new version was abandoned and `to` handles the events again.
    RolledBack {
        /// The agent.
        agent: String,
        /// The abandoned version.
        from: String,
        /// The version restored.
        to: String,
        /// Why: the instantiation error or the trap count.
        reason: String,
    },
}

/// Counters of one agent version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct VersionStats {
    /// Events the version handled without failing.
    pub events: u64,
    /// Traps, including batches retried event by event.
    pub traps: u64,
    /// Events the version failed that went to the dead-letter topic.
    pub dead_letters: u64,
    /// Table and topic accesses the host refused: undeclared names and
    /// keys or values over the limits.
    pub refused: u64,
}

/// Counters per agent and version label, shared with the admin API.
/// Nested maps, so the per-batch update looks up borrowed names and
/// allocates only for a version's first count.
#[derive(Debug, Clone, Default)]
pub struct Stats(Arc<std::sync::Mutex<StatsMap>>);

type StatsMap = BTreeMap<String, BTreeMap<String, VersionStats>>;

impl Stats {
    /// Returns the counters of `agent` at version `label`.
    pub fn get(&self, agent: &str, label: &str) -> VersionStats {
        self.lock()
            .get(agent)
            .and_then(|versions| versions.get(label))
            .copied()
            .unwrap_or_default()
    }

    /// Returns the counters of every agent for which `include` returns
    /// true, added up over their versions.
    pub fn sum(&self, include: impl Fn(&str) -> bool) -> VersionStats {
        let mut total = VersionStats::default();
        let map = self.lock();
        let included = map.iter().filter(|(agent, _)| include(agent));
        for stats in included.flat_map(|(_, versions)| versions.values()) {
            total.events += stats.events;
            total.traps += stats.traps;
            total.dead_letters += stats.dead_letters;
            total.refused += stats.refused;
        }
        total
    }

    fn update(&self, agent: &str, label: &str, change: impl FnOnce(&mut VersionStats)) {
        let mut map = self.lock();
        if !map.contains_key(agent) {
            map.insert(agent.to_owned(), BTreeMap::new());
        }
        let versions = map.get_mut(agent).expect("inserted above");
        if !versions.contains_key(label) {
            versions.insert(label.to_owned(), VersionStats::default());
        }
        change(versions.get_mut(label).expect("inserted above"));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatsMap> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Instance {
    store: Store<HostState>,
    handler: handler::Guest,
    window_close: Option<window_close::Guest>,
}

/// A version, the grants its instances get (limits change with a swap)
/// and its instance, created on first use and after a trap.
struct Slot {
    version: Arc<AgentVersion>,
    grants: Arc<AgentGrants>,
    instance: Option<Instance>,
}

impl Slot {
    fn new(version: Arc<AgentVersion>, grants: Arc<AgentGrants>) -> Self {
        Self {
            version,
            grants,
            instance: None,
        }
    }
}

/// The state of a new version on probation.
struct Probation {
    /// The version the agent returns to on rollback.
    previous: Slot,
    /// Events the new version has been given so far.
    events: u64,
    /// Traps and errors of the new version so far.
    traps: u64,
    rollout: Rollout,
}

/// The version a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Current,
    Previous,
}

/// One configured agent, its current version and instance, and during a
/// probation the version before it.
pub struct Agent {
    engine: Engine,
    grants: Arc<AgentGrants>,
    current: Slot,
    probation: Option<Probation>,
    stats: Stats,
    notices: Vec<AgentNotice>,
    traps: u64,
}

enum CallError {
    /// The guest trapped; the instance is unusable.
    Trap(String),
    /// The guest returned an error; the instance may be reused.
    Failed(String),
}

impl Agent {
    /// Returns the agent name.
    pub fn name(&self) -> &str {
        &self.grants.name
    }

    /// Returns the label of the version that handles the next event.
    pub fn version(&self) -> &str {
        &self.current.version.label
    }

    /// Returns whether the agent declares table `table`.
    pub fn declares(&self, table: &str) -> bool {
        self.grants.tables.iter().any(|t| t.name() == table)
    }

    /// Returns how many traps this agent has caused.
    pub fn traps(&self) -> u64 {
        self.traps
    }

    /// Returns whether the current version is still on probation.
    pub fn on_probation(&self) -> bool {
        self.probation.is_some()
    }

    /// Takes the swaps and rollbacks that happened since the last call.
    pub fn take_notices(&mut self) -> Vec<AgentNotice> {
        std::mem::take(&mut self.notices)
    }

    /// Replaces the current version with `version`, whose instances get
    /// `limits`, between two batches. The new version is instantiated at
    /// once; when that fails the agent stays on the current version and
    /// limits, and a rollback notice gives the reason. With
    /// `rollout.probation_events` above zero the current version is kept
    /// for a rollback until the new one has handled that many events.
    pub fn swap(&mut self, version: Arc<AgentVersion>, rollout: Rollout, limits: Limits) {
        let started = std::time::Instant::now();
        let from = self.current.version.label.clone();
        let to = version.label.clone();
        let grants = if self.current.grants.limits == limits {
            self.current.grants.clone()
        } else {
            let mut grants = (*self.current.grants).clone();
            grants.limits = limits;
            Arc::new(grants)
        };
        match instantiate(&self.engine, &grants, &version) {
            Ok(instance) => {
                let previous = std::mem::replace(
                    &mut self.current,
                    Slot {
                        version,
                        grants,
                        instance: Some(instance),
                    },
                );
                self.probation = (rollout.probation_events > 0).then_some(Probation {
                    previous,
                    events: 0,
                    traps: 0,
                    rollout,
                });
                let pause = started.elapsed();
                tracing::info!(agent = %self.grants.name, from = %from, to = %to, pause_us = pause.as_micros() as u64, probation_events = rollout.probation_events, "agent.swap: new version handles the next events");
                self.notices.push(AgentNotice::Swapped {
                    agent: self.grants.name.clone(),
                    from,
                    to,
                    pause,
                });
            }
            Err(error) => {
                let reason = format!("{error:#}");
                tracing::error!(agent = %self.grants.name, version = %to, kept = %from, error = %reason, "agent.swap: new version failed to instantiate; keeping the current version");
                self.notices.push(AgentNotice::RolledBack {
                    agent: self.grants.name.clone(),
                    from: to,
                    to: from,
                    reason,
                });
            }
        }
    }

    /// Returns to the previous version during a probation.
    fn roll_back(&mut self, reason: String) {
        let Some(probation) = self.probation.take() else {
            return;
        };
        let abandoned = std::mem::replace(&mut self.current, probation.previous);
        tracing::error!(agent = %self.grants.name, from = %abandoned.version.label, to = %self.current.version.label, reason = %reason, "agent.rollback: new version abandoned; the previous version handles the events again");
        self.notices.push(AgentNotice::RolledBack {
            agent: self.grants.name.clone(),
            from: abandoned.version.label.clone(),
            to: self.current.version.label.clone(),
            reason,
        });
    }

    /// Counts `events` given to the version on probation and ends the
    /// probation once it has seen enough.
    fn probation_progress(&mut self, events: u64) {
        if let Some(probation) = &mut self.probation {
            probation.events += events;
            if probation.events >= probation.rollout.probation_events {
                tracing::info!(agent = %self.grants.name, version = %self.current.version.label, events = probation.events, traps = probation.traps, "agent.swap: new version passed probation; the previous one is unloaded");
                self.probation = None;
            }
        }
    }

    /// Returns whether the components export the window-close handler.
    pub fn handles_window_close(&self) -> bool {
        self.current.version.window_close.is_some()
    }

    fn call(
        &mut self,
        which: Which,
        events: &[Event],
        partition: Partition,
        times: &Arc<BatchTimes>,
    ) -> anyhow::Result<Result<BatchEffects, CallError>> {
        self.enter(which, events.len() as u64, partition, times, |instance| {
            instance.handler.call_handle(&mut instance.store, events)
        })
    }

    /// Runs `call` on the instance of version `which`, or a fresh one,
    /// with a CPU budget of `events` events and fresh batch effects, and
    /// returns the effects when the call succeeds. A version on probation
    /// whose fresh instance fails is rolled back, and the call goes to the
    /// previous version.
    fn enter(
        &mut self,
        which: Which,
        events: u64,
        partition: Partition,
        times: &Arc<BatchTimes>,
        call: impl FnOnce(&mut Instance) -> wasmtime::Result<Result<(), String>>,
    ) -> anyhow::Result<Result<BatchEffects, CallError>> {
        if which == Which::Current && self.current.instance.is_none() {
            match instantiate(&self.engine, &self.current.grants, &self.current.version) {
                Ok(instance) => self.current.instance = Some(instance),
                Err(error) if self.probation.is_some() => {
                    self.roll_back(format!("a fresh instance failed: {error:#}"));
                }
                Err(error) => return Err(error),
            }
        }
        let slot = match which {
            Which::Current => &mut self.current,
            Which::Previous => match &mut self.probation {
                Some(probation) => &mut probation.previous,
                None => &mut self.current,
            },
        };
        if slot.instance.is_none() {
            slot.instance = Some(instantiate(&self.engine, &slot.grants, &slot.version)?);
        }
        let version = slot.version.clone();
        let instance = slot.instance.as_mut().expect("instance was just created");
        let ticks = slot
            .grants
            .limits
            .cpu_ms_per_event
            .saturating_mul(events)
            .max(1);
        instance.store.set_epoch_deadline(ticks);
        instance.store.data_mut().effects = BatchEffects {
            partition,
            times: times.clone(),
            ..Default::default()
        };

        let result = call(instance);
        let effects = std::mem::take(&mut instance.store.data_mut().effects);
        // A failed batch is retried event by event, which refuses the same
        // accesses again; those count once, in the retry.
        let refused = instance.store.data().refused.take();
        if refused > 0 && (events == 1 || matches!(result, Ok(Ok(())))) {
            self.stats
                .update(&self.grants.name, &version.label, |s| s.refused += refused);
        }
        match result {
            Ok(Ok(())) => Ok(Ok(effects)),
            Ok(Err(message)) => Ok(Err(CallError::Failed(message))),
            Err(trap) => {
                let mut text = match trap.downcast_ref::<wasmtime::Trap>() {
                    Some(wasm_trap) => format!("trap: {wasm_trap}"),
                    // Limiter and host-call failures wrap their cause in a
                    // backtrace context; the root cause is the useful part.
                    None => format!("trap: {}", trap.root_cause()),
                };
                if let Some(line) = instance.store.data().output.last_stderr_line() {
                    text = format!("{text}; agent stderr: {line}");
                }
                slot.instance = None;
                self.traps += 1;
                self.stats
                    .update(&self.grants.name, &version.label, |s| s.traps += 1);
                Ok(Err(CallError::Trap(text)))
            }
        }
    }

    /// Handles `events`, all from source partition `partition`, and applies
    /// their table writes to the tables' write caches.
    ///
    /// # Errors
    ///
    /// Fails only when an instance cannot be created, which no event can
    /// fix; failures of single events become dead letters instead.
    pub fn handle(
        &mut self,
        events: &[Event],
        partition: Partition,
        times: &Arc<BatchTimes>,
    ) -> anyhow::Result<BatchOutcome> {
        let mut outcome = BatchOutcome::default();
        match self.call(Which::Current, events, partition, times)? {
            Ok(effects) => {
                self.counted(events.len() as u64);
                self.apply(effects, &mut outcome);
            }
            Err(error) => {
                let (kind, message) = match &error {
                    CallError::Trap(m) => ("trapped", m),
                    CallError::Failed(m) => ("returned an error", m),
                };
                if events.len() > 1 {
                    tracing::warn!(agent = %self.grants.name, version = %self.current.version.label, partition, events = events.len(), error = %message, "agent.handle: batch {kind}; retrying its events one at a time");
                    for event in events {
                        self.handle_one(event, partition, times, &mut outcome)?;
                    }
                } else {
                    self.failed(&events[0], error, partition, times, &mut outcome)?;
                }
            }
        }
        Ok(outcome)
    }

    fn handle_one(
        &mut self,
        event: &Event,
        partition: Partition,
        times: &Arc<BatchTimes>,
        outcome: &mut BatchOutcome,
    ) -> anyhow::Result<()> {
        match self.call(
            Which::Current,
            std::slice::from_ref(event),
            partition,
            times,
        )? {
            Ok(effects) => {
                self.counted(1);
                self.apply(effects, outcome);
                Ok(())
            }
            Err(error) => self.failed(event, error, partition, times, outcome),
        }
    }

    /// Counts events the current version handled.
    fn counted(&mut self, events: u64) {
        self.stats
            .update(&self.grants.name, &self.current.version.label, |s| {
                s.events += events
            });
        self.probation_progress(events);
    }

    /// Deals with `event`, which failed alone on the current version. On
    /// probation, a trap or an error counts against the new version, which
    /// is rolled back once its failures exceed their share, and the event
    /// goes to the previous version. Otherwise the event is a dead letter.
    fn failed(
        &mut self,
        event: &Event,
        error: CallError,
        partition: Partition,
        times: &Arc<BatchTimes>,
        outcome: &mut BatchOutcome,
    ) -> anyhow::Result<()> {
        let message = match error {
            CallError::Trap(message) | CallError::Failed(message) if self.probation.is_some() => {
                message
            }
            CallError::Trap(message) | CallError::Failed(message) => {
                self.stats
                    .update(&self.grants.name, &self.current.version.label, |s| {
                        s.dead_letters += 1
                    });
                self.probation_progress(1);
                self.dead_letter(event, message, outcome);
                return Ok(());
            }
        };
        let probation = self.probation.as_mut().expect("checked above");
        probation.traps += 1;
        probation.events += 1;
        if probation.traps > probation.rollout.trap_budget() {
            let reason = format!(
                "{} of its first {} events failed, more than the allowed share {}; last: {message}",
                probation.traps, probation.events, probation.rollout.max_trap_share
            );
            self.roll_back(reason);
        } else {
            tracing::warn!(agent = %self.grants.name, version = %self.current.version.label, offset = event.offset, error = %message, "agent.handle: version on probation failed; the previous version handles the event");
        }
        let which = if self.probation.is_some() {
            Which::Previous
        } else {
            Which::Current
        };
        match self.call(which, std::slice::from_ref(event), partition, times)? {
            Ok(effects) => {
                let label = match (&self.probation, which) {
                    (Some(p), Which::Previous) => &p.previous.version.label,
                    _ => &self.current.version.label,
                };
                self.stats
                    .update(&self.grants.name, label, |s| s.events += 1);
                self.apply(effects, outcome);
            }
            Err(CallError::Trap(message) | CallError::Failed(message)) => {
                self.dead_letter(event, message, outcome);
            }
        }
        if let Some(probation) = &self.probation {
            if probation.events >= probation.rollout.probation_events {
                self.probation_progress(0);
            }
        }
        Ok(())
    }

    /// Calls the component's window-close handler once for each window in
    /// `closed`, windows of table `table` in partition `partition`, and
    /// applies the effects of each call that succeeds. A call that fails is
    /// logged and its effects are discarded. A component without the
    /// handler is not called.
    ///
    /// # Errors
    ///
    /// Fails only when an instance cannot be created.
    pub fn close_windows(
        &mut self,
        table: &str,
        partition: Partition,
        closed: &[ClosedWindow],
    ) -> anyhow::Result<BatchOutcome> {
        let mut outcome = BatchOutcome::default();
        if !self.handles_window_close() {
            return Ok(outcome);
        }
        let no_events = Arc::new(BatchTimes::default());
        for window in closed {
            let wit_window = bindings::tablehost::agent::tables::Window {
                start: window.window.start,
                end: window.window.end,
            };
            let result = self.enter(Which::Current, 1, partition, &no_events, |instance| {
                match instance.window_close.as_ref() {
                    Some(close) => close.call_closed(
                        &mut instance.store,
                        table,
                        &window.key,
                        wit_window,
                        &window.value,
                    ),
                    // A rollback can restore a version without the export.
                    None => Ok(Ok(())),
                }
            })?;
            match result {
                Ok(effects) => self.apply(effects, &mut outcome),
                Err(CallError::Trap(message) | CallError::Failed(message)) => {
                    tracing::error!(
                        agent = %self.grants.name,
                        table,
                        partition,
                        start = window.window.start,
                        end = window.window.end,
                        error = %message,
                        "agent.window_close: handler failed; the window is deleted without its effects"
                    );
                }
            }
        }
        Ok(outcome)
    }

    fn dead_letter(&self, event: &Event, error: String, outcome: &mut BatchOutcome) {
        tracing::error!(
            agent = %self.grants.name,
            topic = %event.topic,
            partition = event.partition,
            offset = event.offset,
            error = %error,
            "agent.handle: event failed; sending it to the dead-letter topic"
        );
        outcome.dead_letters.push(DeadLetter {
            event: event.clone(),
            error,
        });
    }

    fn apply(&self, effects: BatchEffects, outcome: &mut BatchOutcome) {
        for ((index, key), value) in effects.writes {
            self.grants.tables[index].put(effects.partition, key, value);
        }
        outcome.outputs.extend(effects.outputs);
    }
}

/// Creates an instance of `version` with a fresh store: its own memory
/// limit, CPU deadline, WASI context and output streams.
fn instantiate(
    engine: &Engine,
    grants: &Arc<AgentGrants>,
    version: &AgentVersion,
) -> anyhow::Result<Instance> {
    let limits = &grants.limits;
    let output = wasi::AgentOutput::new(&grants.name);
    let state = HostState {
        wasi: wasi::context(&output, &grants.wasi),
        resources: Default::default(),
        limits: StoreLimitsBuilder::new()
            .memory_size((limits.memory_mib * 1024 * 1024) as usize)
            .trap_on_grow_failure(true)
            .build(),
        output,
        grants: grants.clone(),
        effects: BatchEffects::default(),
        refused: Default::default(),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limits);
    store.set_epoch_deadline(u64::MAX / 2);
    store.epoch_deadline_trap();
    let failed = |e: wasmtime::Error| {
        anyhow!(
            "agent {}: version {} failed to instantiate: {e:?}",
            grants.name,
            version.label
        )
    };
    let instance = version.pre.instantiate(&mut store).map_err(failed)?;
    let handler = version
        .handler
        .load(&mut store, &instance)
        .map_err(failed)?;
    let window_close = match &version.window_close {
        Some(indices) => Some(indices.load(&mut store, &instance).map_err(failed)?),
        None => None,
    };
    Ok(Instance {
        store,
        handler,
        window_close,
    })
}

/// Returns the declared tables of `config`, looked up by name.
///
/// # Panics
///
/// Panics when a declared table is missing from `tables`; config validation
/// rules that out.
pub fn grants_tables(
    config: &AgentConfig,
    tables: &BTreeMap<String, Arc<Table>>,
) -> Vec<Arc<Table>> {
    config
        .tables
        .iter()
        .map(|name| tables[name].clone())
        .collect()
}
