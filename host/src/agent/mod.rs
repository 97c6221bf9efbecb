//! The agent runtime: WebAssembly components run by wasmtime.
//!
//! [`AgentRuntime`] owns the wasmtime `Engine`, the on-disk cache of compiled
//! components and the epoch ticker that bounds CPU time. [`Agent`] is one
//! configured agent: its pre-instantiated component and its current
//! instance.
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

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, Store, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use host::HostState;
pub use host::{
    AgentGrants, BatchEffects, BatchTimes, OutputRecord, TableHandle, TableTimes,
    WindowedTableHandle,
};

use crate::config::AgentConfig;
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
/// Bytes of guest stderr kept per instance, shown when the instance traps.
const STDERR_CAPACITY: usize = 16 * 1024;

/// The wasmtime engine, the compiled-component cache and the epoch ticker.
pub struct AgentRuntime {
    engine: Engine,
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
        let component = cache::load_component(&self.engine, &config.component, &self.cache_dir)
            .with_context(|| {
                format!(
                    "agent {}: failed to load component {}",
                    config.name,
                    config.component.display()
                )
            })?;

        let mut linker: Linker<HostState> = Linker::new(&self.engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| anyhow!("agent {}: failed to link WASI: {e}", config.name))?;
        bindings::WindowedAgent::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(|e| {
                anyhow!(
                    "agent {}: failed to link the tablehost imports: {e}",
                    config.name
                )
            })?;
        let pre = linker.instantiate_pre(&component).map_err(|e| {
            anyhow!("agent {}: component {} cannot be linked: {e}; it may import interfaces outside the tablehost:agent world", config.name, config.component.display())
        })?;
        let handler = handler::GuestIndices::new(&pre).map_err(|e| {
            anyhow!(
                "agent {}: component does not export tablehost:agent/handler: {e}",
                config.name
            )
        })?;
        // The close handler is optional; a component that exports the
        // interface with the wrong functions is refused.
        let window_close = if pre
            .component()
            .get_export_index(None, "tablehost:agent/window-close@0.1.0")
            .is_some()
        {
            Some(window_close::GuestIndices::new(&pre).map_err(|e| {
                anyhow!(
                    "agent {}: component's tablehost:agent/window-close export is malformed: {e}",
                    config.name
                )
            })?)
        } else {
            None
        };

        let table_index = config
            .tables
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), i))
            .collect();
        let grants = Arc::new(AgentGrants {
            name: config.name.clone(),
            tables,
            table_index,
            outputs: config.outputs.clone(),
            limits: config.limits.clone(),
        });
        Ok(Agent {
            engine: self.engine.clone(),
            pre,
            handler,
            window_close,
            grants,
            instance: None,
            traps: 0,
        })
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

struct Instance {
    store: Store<HostState>,
    handler: handler::Guest,
    window_close: Option<window_close::Guest>,
}

/// One configured agent and its current instance.
pub struct Agent {
    engine: Engine,
    pre: wasmtime::component::InstancePre<HostState>,
    handler: handler::GuestIndices,
    window_close: Option<window_close::GuestIndices>,
    grants: Arc<AgentGrants>,
    instance: Option<Instance>,
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

    /// Returns whether the agent declares table `table`.
    pub fn declares(&self, table: &str) -> bool {
        self.grants.table_index.contains_key(table)
    }

    /// Returns how many traps this agent has caused.
    pub fn traps(&self) -> u64 {
        self.traps
    }

    fn instantiate(&self) -> anyhow::Result<Instance> {
        let limits = &self.grants.limits;
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        // The agent gets no files, network, environment or arguments; only
        // stderr is captured, so a panic message can be logged.
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .build();
        let state = HostState {
            wasi,
            resources: Default::default(),
            limits: StoreLimitsBuilder::new()
                .memory_size((limits.memory_mib * 1024 * 1024) as usize)
                .trap_on_grow_failure(true)
                .build(),
            stderr,
            grants: self.grants.clone(),
            effects: BatchEffects::default(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(u64::MAX / 2);
        store.epoch_deadline_trap();
        let failed = |e: wasmtime::Error| {
            anyhow!("agent {}: failed to instantiate: {e:?}", self.grants.name)
        };
        let instance = self.pre.instantiate(&mut store).map_err(failed)?;
        let handler = self.handler.load(&mut store, &instance).map_err(failed)?;
        let window_close = match &self.window_close {
            Some(indices) => Some(indices.load(&mut store, &instance).map_err(failed)?),
            None => None,
        };
        Ok(Instance {
            store,
            handler,
            window_close,
        })
    }

    /// Returns whether the component exports the window-close handler.
    pub fn handles_window_close(&self) -> bool {
        self.window_close.is_some()
    }

    fn call(
        &mut self,
        events: &[Event],
        partition: Partition,
        times: &Arc<BatchTimes>,
    ) -> anyhow::Result<Result<BatchEffects, CallError>> {
        self.enter(events.len() as u64, partition, times, |instance| {
            instance.handler.call_handle(&mut instance.store, events)
        })
    }

    /// Runs `call` on the current instance, or a fresh one, with a CPU
    /// budget of `events` events and fresh batch effects, and returns the
    /// effects when the call succeeds.
    fn enter(
        &mut self,
        events: u64,
        partition: Partition,
        times: &Arc<BatchTimes>,
        call: impl FnOnce(&mut Instance) -> wasmtime::Result<Result<(), String>>,
    ) -> anyhow::Result<Result<BatchEffects, CallError>> {
        if self.instance.is_none() {
            self.instance = Some(self.instantiate()?);
        }
        let instance = self.instance.as_mut().expect("instance was just created");
        let ticks = self
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
        match result {
            Ok(Ok(())) => Ok(Ok(effects)),
            Ok(Err(message)) => Ok(Err(CallError::Failed(message))),
            Err(trap) => {
                let stderr =
                    String::from_utf8_lossy(&instance.store.data().stderr.contents()).into_owned();
                let mut text = match trap.downcast_ref::<wasmtime::Trap>() {
                    Some(wasm_trap) => format!("trap: {wasm_trap}"),
                    // Limiter and host-call failures wrap their cause in a
                    // backtrace context; the root cause is the useful part.
                    None => format!("trap: {}", trap.root_cause()),
                };
                // A Rust guest's panic prints its message, then a hint about
                // RUST_BACKTRACE; the message is the last line that is not a hint.
                if let Some(line) = stderr
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty() && !l.starts_with("note:"))
                {
                    text = format!("{text}; agent stderr: {}", line.trim());
                }
                self.instance = None;
                self.traps += 1;
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
        match self.call(events, partition, times)? {
            Ok(effects) => self.apply(effects, &mut outcome),
            Err(error) => {
                let (kind, message) = match &error {
                    CallError::Trap(m) => ("trapped", m),
                    CallError::Failed(m) => ("returned an error", m),
                };
                if events.len() > 1 {
                    tracing::warn!(agent = %self.grants.name, partition, events = events.len(), error = %message, "agent.handle: batch {kind}; retrying its events one at a time");
                    for event in events {
                        self.handle_one(event, partition, times, &mut outcome)?;
                    }
                } else {
                    self.dead_letter(&events[0], message.clone(), &mut outcome);
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
        match self.call(std::slice::from_ref(event), partition, times)? {
            Ok(effects) => self.apply(effects, outcome),
            Err(CallError::Trap(message) | CallError::Failed(message)) => {
                self.dead_letter(event, message, outcome)
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
        if self.window_close.is_none() {
            return Ok(outcome);
        }
        let no_events = Arc::new(BatchTimes::default());
        for window in closed {
            let wit_window = bindings::tablehost::agent::tables::Window {
                start: window.window.start,
                end: window.window.end,
            };
            let result = self.enter(1, partition, &no_events, |instance| {
                instance
                    .window_close
                    .as_ref()
                    .expect("the export was found at load")
                    .call_closed(
                        &mut instance.store,
                        table,
                        &window.key,
                        wit_window,
                        &window.value,
                    )
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
