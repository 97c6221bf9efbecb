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
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::tablehost::agent::{log, output, tables, types};
use crate::config::Limits;
use crate::store::Partition;
use crate::table::Table;

/// A guest's open table: an index into the agent's declared tables.
#[derive(Debug, Clone, Copy)]
pub struct TableHandle {
    index: usize,
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
#[derive(Debug)]
pub struct AgentGrants {
    /// The agent name, for logs.
    pub name: String,
    /// Declared tables, by position.
    pub tables: Vec<Arc<Table>>,
    /// Declared table names, mapped to positions in `tables`.
    pub table_index: HashMap<String, usize>,
    /// Declared output topics.
    pub outputs: Vec<String>,
    /// Limits on key and value sizes.
    pub limits: Limits,
}

/// Table writes and output records of the batch in progress.
#[derive(Debug, Default)]
pub struct BatchEffects {
    /// The partition every table operation of the batch applies to.
    pub partition: Partition,
    /// The newest value per declared table and key; `None` is a delete.
    pub writes: HashMap<(usize, Vec<u8>), Option<Vec<u8>>>,
    /// Records sent, in order.
    pub outputs: Vec<OutputRecord>,
}

/// The data of one agent instance's store.
pub struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) resources: ResourceTable,
    pub(super) limits: StoreLimits,
    pub(super) stderr: MemoryOutputPipe,
    pub(super) grants: Arc<AgentGrants>,
    pub(super) effects: BatchEffects,
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
        (len > self.grants.limits.max_key_bytes).then_some(len)
    }

    fn check_value(&self, value: &[u8]) -> Option<u64> {
        let len = value.len() as u64;
        (len > self.grants.limits.max_value_bytes).then_some(len)
    }

    fn handle(&self, resource: &Resource<TableHandle>) -> wasmtime::Result<TableHandle> {
        Ok(*self.resources.get(resource)?)
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
        let Some(&index) = self.grants.table_index.get(&name) else {
            tracing::warn!(agent = %self.grants.name, table = %name, "agent.table_open: rejected undeclared table");
            return Ok(Err(tables::TableError::Undeclared(name)));
        };
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
        self.effects.writes.insert((handle.index, key), Some(value));
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
        self.effects.writes.insert((handle.index, key), None);
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

        // The batch's own writes to this table, for the table to merge.
        let newer: BTreeMap<Vec<u8>, Option<Vec<u8>>> = self
            .effects
            .writes
            .iter()
            .filter(|((index, _), _)| *index == handle.index)
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect();
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

impl output::Host for HostState {
    fn send(
        &mut self,
        topic: String,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        headers: Vec<types::Header>,
    ) -> wasmtime::Result<Result<(), output::SendError>> {
        if !self.grants.outputs.contains(&topic) {
            tracing::warn!(agent = %self.grants.name, topic = %topic, "agent.send: rejected undeclared output topic");
            return Ok(Err(output::SendError::UndeclaredTopic(topic)));
        }
        if let Some(len) = key.as_deref().and_then(|k| self.check_key(k)) {
            return Ok(Err(output::SendError::KeyTooLarge(len)));
        }
        if let Some(len) = value.as_deref().and_then(|v| self.check_value(v)) {
            return Ok(Err(output::SendError::ValueTooLarge(len)));
        }
        let headers = headers.into_iter().map(|h| (h.key, h.value)).collect();
        self.effects.outputs.push(OutputRecord {
            topic,
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
