//! The host side of the WIT world: what an agent's imports do.
//!
//! [`HostState`] is the data of one wasmtime `Store`: the WASI context, the
//! resource table that contains open table handles, the memory limiter and the
//! effects of the batch in progress. Table writes and output records of a
//! batch are collected in [`BatchEffects`] and applied only when the whole
//! batch returns without a trap or error, so a failed batch leaves no trace.
//!
//! Errors the guest can act on (an undeclared table, an oversized value)
//! are returned as WIT variants; a broken host invariant, such as a handle
//! that is not in the resource table, is a trap. Store failures are logged
//! with their details and reach the guest only as a generic message.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use wasmtime::component::{Resource, ResourceTable};
use wasmtime::StoreLimits;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::tablehost::agent::{log, output, tables, types};
use crate::config::{AgentConfig, Limits, WasiGrants};
use crate::store::Partition;
use crate::table::window::{Window, WindowSpec};
use crate::table::{Table, Usage};

/// A guest's open table: an index into the agent's declared tables.
#[derive(Debug, Clone, Copy)]
pub struct TableHandle {
    index: usize,
}

/// A guest's open windowed table: an index into the agent's declared
/// tables.
#[derive(Debug, Clone, Copy)]
pub struct WindowedTableHandle {
    index: usize,
}

/// The event times of one batch for each windowed table of its source
/// partition, computed once by the worker and shared by every agent.
#[derive(Debug, Default)]
pub struct BatchTimes {
    /// The offsets of the batch's events, ascending.
    pub offsets: Vec<i64>,
    /// Per windowed table name, the times of the events in `offsets` order.
    pub tables: HashMap<String, TableTimes>,
}

/// The event times of one batch for one windowed table.
#[derive(Debug, Default)]
pub struct TableTimes {
    /// Each event's time, or why it has none.
    pub times: Vec<Result<i64, String>>,
    /// The partition's stream time once each event is seen: the largest
    /// of the stream time before the batch and the times so far.
    pub stream: Vec<Option<i64>>,
}

impl BatchTimes {
    /// Returns the position of the event at `offset`.
    fn position(&self, offset: i64) -> Option<usize> {
        self.offsets.binary_search(&offset).ok()
    }
}

/// A record an agent sent, produced after its batch succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    /// The output topic.
    pub topic: String,
    /// The record key.
    pub key: Option<Vec<u8>>,
    /// The record value.
    pub value: Option<Vec<u8>>,
    /// The record headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// The agent's declared tables and output topics, fixed for the agent's
/// life.
#[derive(Debug, Clone)]
pub struct AgentGrants {
    /// The agent name, for logs.
    pub name: String,
    /// Declared tables, by position.
    pub tables: Vec<Arc<Table>>,
    /// Declared table names, as the agent uses them, mapped to positions
    /// in `tables`.
    pub table_index: HashMap<String, usize>,
    /// Declared output topics: the name the agent uses, mapped to the
    /// topic in Kafka. They differ for a tenant's agent.
    pub outputs: HashMap<String, String>,
    /// Limits on key and value sizes.
    pub limits: Limits,
    /// WASI capabilities beyond the minimum.
    pub wasi: WasiGrants,
    /// The owning tenant, for logs; `None` for agents of the config file.
    pub tenant: Option<String>,
}

impl AgentGrants {
    /// Returns the grants of `config`, whose declared tables are `tables`
    /// in the order of `config.tables`. A tenant's agent uses its tables
    /// and topics without the `<tenant>.` prefix they carry in Kafka.
    pub fn new(config: &AgentConfig, tables: Vec<Arc<Table>>) -> Self {
        let local = |name: &str| -> String {
            match &config.tenant {
                Some(tenant) => name
                    .strip_prefix(tenant.as_str())
                    .and_then(|rest| rest.strip_prefix('.'))
                    .unwrap_or(name)
                    .to_owned(),
                None => name.to_owned(),
            }
        };
        Self {
            name: config.name.clone(),
            table_index: config
                .tables
                .iter()
                .enumerate()
                .map(|(i, name)| (local(name), i))
                .collect(),
            tables,
            outputs: config
                .outputs
                .iter()
                .map(|topic| (local(topic), topic.clone()))
                .collect(),
            limits: config.limits.clone(),
            wasi: config.wasi,
            tenant: config.tenant.clone(),
        }
    }
}

/// Table writes and output records of the batch in progress.
#[derive(Debug, Default)]
pub struct BatchEffects {
    /// The partition every table operation of the batch applies to.
    pub partition: Partition,
    /// The newest value per declared table and key; `None` is a delete.
    /// Keys of windowed tables are store keys.
    pub writes: HashMap<(usize, Vec<u8>), Option<Vec<u8>>>,
    /// Records sent, in order.
    pub outputs: Vec<OutputRecord>,
    /// The event times of the batch, for windowed tables.
    pub times: Arc<BatchTimes>,
    /// The usage each written table partition will have once the batch's
    /// writes apply, for tables under a size limit.
    pub usage: HashMap<(usize, Partition), Usage>,
}

/// The data of one agent instance's store.
pub struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) resources: ResourceTable,
    pub(super) limits: StoreLimits,
    pub(super) output: super::wasi::AgentOutput,
    pub(super) grants: Arc<AgentGrants>,
    pub(super) effects: BatchEffects,
    /// Accesses refused in the call in progress: undeclared tables and
    /// topics, oversized keys and values.
    pub(super) refused: std::cell::Cell<u64>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.resources,
        }
    }
}

impl HostState {
    fn check_key(&self, key: &[u8]) -> Option<u64> {
        let len = key.len() as u64;
        let over = len > self.grants.limits.max_key_bytes;
        self.refused.set(self.refused.get() + u64::from(over));
        over.then_some(len)
    }

    fn check_value(&self, value: &[u8]) -> Option<u64> {
        let len = value.len() as u64;
        let over = len > self.grants.limits.max_value_bytes;
        self.refused.set(self.refused.get() + u64::from(over));
        over.then_some(len)
    }

    fn handle(&self, resource: &Resource<TableHandle>) -> wasmtime::Result<TableHandle> {
        Ok(*self.resources.get(resource)?)
    }

    /// Returns the position of declared table `name`, or `undeclared`.
    fn declared(&self, name: String) -> Result<usize, tables::TableError> {
        match self.grants.table_index.get(&name) {
            Some(&index) => Ok(index),
            None => {
                self.refused.set(self.refused.get() + 1);
                tracing::warn!(agent = %self.grants.name, tenant = self.grants.tenant.as_deref().unwrap_or(""), table = %name, "agent.table_open: rejected undeclared table");
                Err(tables::TableError::Undeclared(name))
            }
        }
    }

    /// Records a write of the batch to table `index`. Under a table size
    /// limit, a write that would take the table partition over it traps
    /// the instance with a message that names the table and the limit; a
    /// write that does not grow the partition always passes.
    fn write(
        &mut self,
        index: usize,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    ) -> wasmtime::Result<()> {
        let limits = &self.grants.limits;
        let (max_keys, max_bytes) = (limits.max_table_keys, limits.max_table_bytes);
        if max_keys.is_some() || max_bytes.is_some() {
            let table = self.grants.tables[index].clone();
            let home = table.home(self.effects.partition, &key);
            let store_failed = |error: crate::store::StoreError| {
                wasmtime::Error::msg(format!(
                    "table {}: the host's store failed: {error}",
                    table.name()
                ))
            };
            let old = match self.effects.writes.get(&(index, key.clone())) {
                Some(written) => written.clone(),
                None => table.get(home, &key).map_err(store_failed)?,
            };
            let current = match self.effects.usage.get(&(index, home)) {
                Some(usage) => *usage,
                None => table.usage(home).map_err(store_failed)?,
            };
            let next = current.after(&key, old.as_deref(), value.as_deref());
            let over =
                |limit: Option<u64>, now: u64, then: u64| limit.filter(|&l| then > l && then > now);
            let problem = if let Some(limit) = over(max_keys, current.keys, next.keys) {
                Some(format!(
                    "would hold {} keys, above the limit of {limit} (max_table_keys)",
                    next.keys
                ))
            } else {
                over(max_bytes, current.bytes, next.bytes).map(|limit| {
                    format!(
                        "would hold {} bytes, above the limit of {limit} (max_table_bytes)",
                        next.bytes
                    )
                })
            };
            if let Some(problem) = problem {
                self.refused.set(self.refused.get() + 1);
                tracing::warn!(agent = %self.grants.name, tenant = self.grants.tenant.as_deref().unwrap_or(""), table = table.name(), partition = home, %problem, "agent.table_set: table size limit reached");
                return Err(wasmtime::Error::msg(format!(
                    "table {} partition {home} {problem}; delete keys, or raise the limit",
                    table.name()
                )));
            }
            self.effects.usage.insert((index, home), next);
        }
        self.effects.writes.insert((index, key), value);
        Ok(())
    }

    /// Returns the batch's own writes to table `index`, for the table to
    /// merge into a scan.
    fn batch_writes(&self, index: usize) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        self.effects
            .writes
            .iter()
            .filter(|((written, _), _)| *written == index)
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect()
    }

    fn read(&self, handle: TableHandle, key: &[u8]) -> Result<Option<Vec<u8>>, tables::TableError> {
        if let Some(written) = self.effects.writes.get(&(handle.index, key.to_vec())) {
            return Ok(written.clone());
        }
        let table = &self.grants.tables[handle.index];
        table.get(self.effects.partition, key).map_err(|error| {
            tracing::error!(agent = %self.grants.name, table = table.name(), partition = self.effects.partition, %error, "agent.table_get: store failed");
            tables::TableError::Storage("the host's store failed; see the host log".into())
        })
    }
}

impl types::Host for HostState {}

impl tables::Host for HostState {}

impl tables::HostTable for HostState {
    fn open(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Resource<TableHandle>, tables::TableError>> {
        let index = match self.declared(name) {
            Ok(index) => index,
            Err(error) => return Ok(Err(error)),
        };
        let table = &self.grants.tables[index];
        if table.window_spec().is_some() {
            return Ok(Err(tables::TableError::WrongKind(
                table.kind().name().to_owned(),
            )));
        }
        Ok(Ok(self.resources.push(TableHandle { index })?))
    }

    fn get(
        &mut self,
        this: Resource<TableHandle>,
        key: Vec<u8>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, tables::TableError>> {
        let handle = self.handle(&this)?;
        if let Some(len) = self.check_key(&key) {
            return Ok(Err(tables::TableError::KeyTooLarge(len)));
        }
        Ok(self.read(handle, &key))
    }

    fn set(
        &mut self,
        this: Resource<TableHandle>,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), tables::TableError>> {
        let handle = self.handle(&this)?;
        if let Some(len) = self.check_key(&key) {
            return Ok(Err(tables::TableError::KeyTooLarge(len)));
        }
        if let Some(len) = self.check_value(&value) {
            return Ok(Err(tables::TableError::ValueTooLarge(len)));
        }
        self.write(handle.index, key, Some(value))?;
        Ok(Ok(()))
    }

    fn delete(
        &mut self,
        this: Resource<TableHandle>,
        key: Vec<u8>,
    ) -> wasmtime::Result<Result<(), tables::TableError>> {
        let handle = self.handle(&this)?;
        if let Some(len) = self.check_key(&key) {
            return Ok(Err(tables::TableError::KeyTooLarge(len)));
        }
        self.write(handle.index, key, None)?;
        Ok(Ok(()))
    }

    fn contains(
        &mut self,
        this: Resource<TableHandle>,
        key: Vec<u8>,
    ) -> wasmtime::Result<Result<bool, tables::TableError>> {
        let handle = self.handle(&this)?;
        if let Some(len) = self.check_key(&key) {
            return Ok(Err(tables::TableError::KeyTooLarge(len)));
        }
        Ok(self.read(handle, &key).map(|v| v.is_some()))
    }

    fn scan(
        &mut self,
        this: Resource<TableHandle>,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<tables::Entry>, tables::TableError>> {
        let handle = self.handle(&this)?;
        for bound in std::iter::once(&start).chain(end.as_ref()) {
            if let Some(len) = self.check_key(bound) {
                return Ok(Err(tables::TableError::KeyTooLarge(len)));
            }
        }

        let newer = self.batch_writes(handle.index);
        let table = &self.grants.tables[handle.index];
        let limit = (limit as usize).min(MAX_SCAN_ENTRIES);
        match table.scan(
            self.effects.partition,
            &start,
            end.as_deref(),
            &newer,
            limit,
            MAX_SCAN_BYTES,
        ) {
            Ok(entries) => Ok(Ok(entries
                .into_iter()
                .map(|(key, value)| tables::Entry { key, value })
                .collect())),
            Err(error) => {
                tracing::error!(agent = %self.grants.name, table = table.name(), partition = self.effects.partition, %error, "agent.table_scan: store failed");
                Ok(Err(tables::TableError::Storage(
                    "the host's store failed; see the host log".into(),
                )))
            }
        }
    }

    fn drop(&mut self, this: Resource<TableHandle>) -> wasmtime::Result<()> {
        self.resources.delete(this)?;
        Ok(())
    }
}

impl HostState {
    fn windowed(
        &self,
        resource: &Resource<WindowedTableHandle>,
    ) -> wasmtime::Result<(usize, &Arc<Table>, &WindowSpec)> {
        let index = self.resources.get(resource)?.index;
        let table = &self.grants.tables[index];
        let spec = table.window_spec().ok_or_else(|| {
            wasmtime::format_err!("a windowed-table handle names a table that is not windowed")
        })?;
        Ok((index, table, spec))
    }

    /// Returns the time of the batch's event at `offset` for `table` and the
    /// stream time once that event is seen.
    fn time_of(
        &self,
        table: &Table,
        offset: i64,
    ) -> Result<(i64, Option<i64>), tables::TableError> {
        let unknown = || tables::TableError::UnknownEvent(offset);
        let position = self.effects.times.position(offset).ok_or_else(unknown)?;
        let times = self
            .effects
            .times
            .tables
            .get(table.name())
            .ok_or_else(unknown)?;
        match &times.times[position] {
            Ok(time) => Ok((*time, times.stream[position])),
            Err(message) => Err(tables::TableError::NoEventTime(message.clone())),
        }
    }

    /// Checks a window handed in by the guest and returns its store key.
    fn window_key(
        &self,
        spec: &WindowSpec,
        key: &[u8],
        window: tables::Window,
    ) -> Result<Vec<u8>, tables::TableError> {
        if let Some(len) = self.check_key(key) {
            return Err(tables::TableError::KeyTooLarge(len));
        }
        let checked = Window {
            start: window.start,
            end: window.end,
        };
        if !spec.is_valid(checked) {
            return Err(tables::TableError::InvalidWindow(window));
        }
        Ok(WindowSpec::store_key(key, window.start))
    }

    /// Refuses a write to a window that closed before the batch began.
    fn check_open(
        &self,
        table: &Table,
        spec: &WindowSpec,
        window: tables::Window,
    ) -> Result<(), tables::TableError> {
        let checked = Window {
            start: window.start,
            end: window.end,
        };
        if spec.is_closed(checked, table.stream_time(self.effects.partition)) {
            return Err(tables::TableError::WindowClosed(window));
        }
        Ok(())
    }
}

fn to_wit(window: Window) -> tables::Window {
    tables::Window {
        start: window.start,
        end: window.end,
    }
}

impl tables::HostWindowedTable for HostState {
    fn open(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Resource<WindowedTableHandle>, tables::TableError>> {
        let index = match self.declared(name) {
            Ok(index) => index,
            Err(error) => return Ok(Err(error)),
        };
        let table = &self.grants.tables[index];
        if table.window_spec().is_none() {
            return Ok(Err(tables::TableError::WrongKind(
                table.kind().name().to_owned(),
            )));
        }
        Ok(Ok(self.resources.push(WindowedTableHandle { index })?))
    }

    fn event_time(
        &mut self,
        this: Resource<WindowedTableHandle>,
        offset: i64,
    ) -> wasmtime::Result<Result<i64, tables::TableError>> {
        let (_, table, _) = self.windowed(&this)?;
        Ok(self.time_of(table, offset).map(|(time, _)| time))
    }

    fn windows(
        &mut self,
        this: Resource<WindowedTableHandle>,
        offset: i64,
    ) -> wasmtime::Result<Result<Vec<tables::Window>, tables::TableError>> {
        let (_, table, spec) = self.windowed(&this)?;
        Ok(self.time_of(table, offset).map(|(time, stream_time)| {
            spec.windows_covering(time)
                .into_iter()
                .filter(|window| !spec.is_closed(*window, stream_time))
                .map(to_wit)
                .collect()
        }))
    }

    fn window_at(
        &mut self,
        this: Resource<WindowedTableHandle>,
        time: i64,
    ) -> wasmtime::Result<tables::Window> {
        let (_, _, spec) = self.windowed(&this)?;
        Ok(to_wit(spec.window_at(time)))
    }

    fn now(&mut self, _this: Resource<WindowedTableHandle>) -> wasmtime::Result<i64> {
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64))
    }

    fn get(
        &mut self,
        this: Resource<WindowedTableHandle>,
        key: Vec<u8>,
        window: tables::Window,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, tables::TableError>> {
        let (index, _, spec) = self.windowed(&this)?;
        let stored = match self.window_key(spec, &key, window) {
            Ok(stored) => stored,
            Err(error) => return Ok(Err(error)),
        };
        Ok(self.read(TableHandle { index }, &stored))
    }

    fn set(
        &mut self,
        this: Resource<WindowedTableHandle>,
        key: Vec<u8>,
        window: tables::Window,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), tables::TableError>> {
        let (index, table, spec) = self.windowed(&this)?;
        let checked = self
            .window_key(spec, &key, window)
            .and_then(|stored| self.check_open(table, spec, window).map(|()| stored))
            .and_then(|stored| match self.check_value(&value) {
                Some(len) => Err(tables::TableError::ValueTooLarge(len)),
                None => Ok(stored),
            });
        match checked {
            Ok(stored) => {
                self.write(index, stored, Some(value))?;
                Ok(Ok(()))
            }
            Err(error) => Ok(Err(error)),
        }
    }

    fn delete(
        &mut self,
        this: Resource<WindowedTableHandle>,
        key: Vec<u8>,
        window: tables::Window,
    ) -> wasmtime::Result<Result<(), tables::TableError>> {
        let (index, table, spec) = self.windowed(&this)?;
        let checked = self
            .window_key(spec, &key, window)
            .and_then(|stored| self.check_open(table, spec, window).map(|()| stored));
        match checked {
            Ok(stored) => {
                self.write(index, stored, None)?;
                Ok(Ok(()))
            }
            Err(error) => Ok(Err(error)),
        }
    }

    fn range(
        &mut self,
        this: Resource<WindowedTableHandle>,
        key: Vec<u8>,
        from: i64,
        to: i64,
    ) -> wasmtime::Result<Result<Vec<tables::WindowedEntry>, tables::TableError>> {
        let (index, table, spec) = self.windowed(&this)?;
        if let Some(len) = self.check_key(&key) {
            return Ok(Err(tables::TableError::KeyTooLarge(len)));
        }
        if from > to {
            return Ok(Ok(Vec::new()));
        }
        let start = WindowSpec::store_key(&key, from);
        // The smallest key after the window that starts at `to`.
        let mut end = WindowSpec::store_key(&key, to);
        end.push(0);
        let newer = self.batch_writes(index);
        match table.scan(
            self.effects.partition,
            &start,
            Some(&end),
            &newer,
            MAX_SCAN_ENTRIES,
            MAX_SCAN_BYTES,
        ) {
            Ok(entries) => Ok(Ok(entries
                .into_iter()
                .filter_map(|(stored, value)| {
                    let (_, window) = spec.parse_store_key(&stored)?;
                    Some(tables::WindowedEntry {
                        window: to_wit(window),
                        value,
                    })
                })
                .collect())),
            Err(error) => {
                tracing::error!(agent = %self.grants.name, table = table.name(), partition = self.effects.partition, %error, "agent.window_range: store failed");
                Ok(Err(tables::TableError::Storage(
                    "the host's store failed; see the host log".into(),
                )))
            }
        }
    }

    fn drop(&mut self, this: Resource<WindowedTableHandle>) -> wasmtime::Result<()> {
        self.resources.delete(this)?;
        Ok(())
    }
}

impl output::Host for HostState {
    fn send(
        &mut self,
        topic: String,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        headers: Vec<types::Header>,
    ) -> wasmtime::Result<Result<(), output::SendError>> {
        let Some(kafka_topic) = self.grants.outputs.get(&topic).cloned() else {
            self.refused.set(self.refused.get() + 1);
            tracing::warn!(agent = %self.grants.name, tenant = self.grants.tenant.as_deref().unwrap_or(""), topic = %topic, "agent.send: rejected undeclared output topic");
            return Ok(Err(output::SendError::UndeclaredTopic(topic)));
        };
        if let Some(len) = key.as_deref().and_then(|k| self.check_key(k)) {
            return Ok(Err(output::SendError::KeyTooLarge(len)));
        }
        if let Some(len) = value.as_deref().and_then(|v| self.check_value(v)) {
            return Ok(Err(output::SendError::ValueTooLarge(len)));
        }
        let headers = headers.into_iter().map(|h| (h.key, h.value)).collect();
        self.effects.outputs.push(OutputRecord {
            topic: kafka_topic,
            key,
            value,
            headers,
        });
        Ok(Ok(()))
    }
}

/// The maximum number of entries one `scan` call returns.
const MAX_SCAN_ENTRIES: usize = 10_000;
/// The maximum bytes of keys and values one `scan` call returns, unless its
/// first entry alone is larger.
const MAX_SCAN_BYTES: usize = 4 * 1024 * 1024;

/// The maximum length of an agent's log message, in bytes.
const MAX_LOG_BYTES: usize = 4096;

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, mut message: String) -> wasmtime::Result<()> {
        if message.len() > MAX_LOG_BYTES {
            let mut cut = MAX_LOG_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let agent = self.grants.name.as_str();
        match level {
            log::Level::Trace => tracing::trace!(agent, "{message}"),
            log::Level::Debug => tracing::debug!(agent, "{message}"),
            log::Level::Info => tracing::info!(agent, "{message}"),
            log::Level::Warn => tracing::warn!(agent, "{message}"),
            log::Level::Error => tracing::error!(agent, "{message}"),
        }
        Ok(())
    }
}
