//! Tables: a store plus a write cache, partitioned like the source topic.
//!
//! Agents never write to a store directly. A write first lands in the
//! table's *write cache*: the newest value (or a tombstone) per key and
//! partition since the last commit. Reads look in the cache, then in the
//! store. At commit the table manager drains the cache, sends one changelog
//! record per dirty key, and only after the cluster has acknowledged them
//! applies the same records to the store together with their changelog
//! offset. Like the record cache of Kafka Streams, this coalesces many
//! writes of one key into one changelog record per commit, which keeps the
//! changelog small and the commit cheap.
//!
//! Invariant: a key present in the cache shadows the store, so a delete
//! that is not yet committed hides the stored value.
//!
//! # Kinds
//!
//! - A plain table keeps the state of source partition `p` in table
//!   partition `p`; a worker owns the partitions it is assigned.
//! - A global table keeps each key in the partition that Kafka's murmur2
//!   partitioner chooses for it, whichever source partition wrote it, and
//!   every worker holds every partition (see [`crate::follower`]).
//! - A windowed table keeps one entry per key and time window (see
//!   [`window`]) and tracks, per partition, the stream time and the open
//!   windows ordered by the stream time at which they close.

pub mod window;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::kafka::partitioner::partition_for_key;
use crate::store::{ChangelogRecord, Entry, Partition, Store, StoreError};
use window::{Window, WindowSpec, STREAM_TIME_KEY};

type Dirty = HashMap<Partition, HashMap<Vec<u8>, Option<Vec<u8>>>>;

/// The kind of a [`Table`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableKind {
    /// Partitioned like the source topic.
    Plain,
    /// Held whole by every worker; keys are placed by hash.
    Global {
        /// The number of changelog partitions.
        partitions: u32,
    },
    /// One value per key and time window.
    Windowed(WindowSpec),
}

impl TableKind {
    /// Returns the kind's name as the config spells it, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            TableKind::Plain => "table",
            TableKind::Global { .. } => "global",
            TableKind::Windowed(_) => "windowed",
        }
    }
}

/// The window bookkeeping of one partition of a windowed table.
#[derive(Debug, Default)]
struct WindowState {
    /// The largest event time seen in the partition.
    stream_time: Option<i64>,
    /// Store keys of windows that hold a value, by the stream time at which
    /// they close.
    open: BTreeSet<(i64, Vec<u8>)>,
}

/// A window that closed, with its final value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedWindow {
    /// The key as the agent wrote it.
    pub key: Vec<u8>,
    /// The window.
    pub window: Window,
    /// The window's final value.
    pub value: Vec<u8>,
}

/// One table: its name, changelog topic, store and write cache.
pub struct Table {
    name: String,
    changelog_topic: String,
    store: Arc<dyn Store>,
    kind: TableKind,
    dirty: Mutex<Dirty>,
    active: Mutex<BTreeSet<Partition>>,
    windows: Mutex<HashMap<Partition, WindowState>>,
    /// Live keys and bytes per partition, for tables under a size limit;
    /// counted on first use and kept current by [`Table::put`].
    usage: Mutex<HashMap<Partition, Usage>>,
}

/// The live keys of a table partition and their bytes (keys plus values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Keys that hold a value.
    pub keys: u64,
    /// Bytes of those keys and their values.
    pub bytes: u64,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("name", &self.name)
            .field("changelog_topic", &self.changelog_topic)
            .finish()
    }
}

impl Table {
    /// Creates a table over `store`, mirrored to `changelog_topic`.
    pub fn new(name: &str, changelog_topic: &str, store: Arc<dyn Store>) -> Self {
        Self::with_kind(name, changelog_topic, store, TableKind::Plain)
    }

    /// Creates a table of `kind` over `store`, mirrored to
    /// `changelog_topic`.
    pub fn with_kind(
        name: &str,
        changelog_topic: &str,
        store: Arc<dyn Store>,
        kind: TableKind,
    ) -> Self {
        Self {
            name: name.to_owned(),
            changelog_topic: changelog_topic.to_owned(),
            store,
            kind,
            dirty: Mutex::default(),
            active: Mutex::default(),
            windows: Mutex::default(),
            usage: Mutex::default(),
        }
    }

    /// Returns the table's kind.
    pub fn kind(&self) -> &TableKind {
        &self.kind
    }

    /// Returns the window spec of a windowed table.
    pub fn window_spec(&self) -> Option<&WindowSpec> {
        match &self.kind {
            TableKind::Windowed(spec) => Some(spec),
            _ => None,
        }
    }

    /// Returns the partition that contains `key` when it is written while
    /// handling an event of source partition `partition`: the same
    /// partition, except in a global table, where the key's hash decides.
    pub fn home(&self, partition: Partition, key: &[u8]) -> Partition {
        match self.kind {
            TableKind::Global { partitions } => partition_for_key(key, partitions),
            _ => partition,
        }
    }

    /// Returns the table name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the changelog topic.
    pub fn changelog_topic(&self) -> &str {
        &self.changelog_topic
    }

    /// Returns the store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn dirty(&self) -> MutexGuard<'_, Dirty> {
        // The cache is a map of owned values; a panic cannot leave it torn.
        self.dirty.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns the value of `key` in `partition`, looking in the write cache
    /// first.
    ///
    /// # Errors
    ///
    /// Fails when the store fails.
    pub fn get(&self, partition: Partition, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let partition = self.home(partition, key);
        if let Some(cached) = self.dirty().get(&partition).and_then(|p| p.get(key)) {
            return Ok(cached.clone());
        }
        self.store.get(partition, key)
    }

    /// Returns the entries of `partition` whose keys lie in `start..end`
    /// (`end` of `None` is unbounded), in ascending key order, as the agent
    /// reads them: `newer` writes (the batch in progress) shadow the write
    /// cache, which shadows the store, and deleted keys are left out.
    ///
    /// Returns at most `limit` entries. It also stops before an entry that
    /// would take the keys and values returned past `max_bytes`, except that
    /// the first entry is always returned.
    ///
    /// A global table is scanned across all its partitions.
    ///
    /// # Errors
    ///
    /// Fails when the store fails.
    pub fn scan(
        &self,
        partition: Partition,
        start: &[u8],
        end: Option<&[u8]>,
        newer: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let TableKind::Global { partitions } = self.kind else {
            return self.scan_partition(partition, start, end, newer, limit, max_bytes);
        };
        // Every key lives in one partition, so the partitions' entries are
        // disjoint. Merging them and cutting to the limits gives the scan of
        // the whole table.
        let mut all = Vec::new();
        for home in 0..partitions {
            let newer: BTreeMap<Vec<u8>, Option<Vec<u8>>> = newer
                .iter()
                .filter(|(key, _)| partition_for_key(key, partitions) == home)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            all.extend(self.scan_partition(home, start, end, &newer, limit, max_bytes)?);
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let mut bytes = 0;
        let mut out = Vec::new();
        for entry in all.into_iter().take(limit) {
            if !push_within(&mut out, &mut bytes, entry, max_bytes) {
                break;
            }
        }
        Ok(out)
    }

    fn scan_partition(
        &self,
        partition: Partition,
        start: &[u8],
        end: Option<&[u8]>,
        newer: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let in_range = |key: &[u8]| key >= start && end.is_none_or(|end| key < end);

        // The writes not yet in the store, newest layer last.
        let mut pending: BTreeMap<Vec<u8>, Option<Vec<u8>>> = self
            .dirty()
            .get(&partition)
            .map(|cached| {
                cached
                    .iter()
                    .filter(|(k, _)| in_range(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (key, value) in newer.range(start.to_vec()..) {
            if !in_range(key) {
                break;
            }
            pending.insert(key.clone(), value.clone());
        }

        let end_bound = end.map_or(Bound::Unbounded, Bound::Excluded);
        let mut stored = self
            .store
            .range(partition, Bound::Included(start), end_bound)?
            .peekable();
        let mut pending = pending.into_iter().peekable();
        let mut out: Vec<Entry> = Vec::new();
        let mut bytes = 0;
        while out.len() < limit {
            // Take the smaller key of the two sources; on a tie the pending
            // write wins and the stored entry is skipped.
            let stored_key = match stored.peek() {
                Some(Ok((key, _))) => Some(key.clone()),
                Some(Err(_)) => {
                    return Err(stored.next().expect("peeked").expect_err("peeked an error"))
                }
                None => None,
            };
            let (key, value) = match (stored_key, pending.peek()) {
                (None, None) => break,
                (Some(stored_key), Some((pending_key, _))) if *pending_key <= stored_key => {
                    if *pending_key == stored_key {
                        stored.next();
                    }
                    pending.next().expect("peeked")
                }
                (Some(_), _) => {
                    let (key, value) = stored
                        .next()
                        .expect("peeked")
                        .expect("checked for an error");
                    (key, Some(value))
                }
                (None, Some(_)) => pending.next().expect("peeked"),
            };
            let Some(value) = value else { continue };
            if !push_within(&mut out, &mut bytes, (key, value), max_bytes) {
                break;
            }
        }
        Ok(out)
    }

    /// Writes `value` (or a tombstone for `None`) to the write cache. In a
    /// windowed table, `key` is a store key (see [`WindowSpec::store_key`])
    /// and a written window is tracked until it closes.
    pub fn put(&self, partition: Partition, key: Vec<u8>, value: Option<Vec<u8>>) {
        let partition = self.home(partition, &key);
        if self.lock_usage().contains_key(&partition) {
            // A failed read leaves the count stale until the partition is
            // counted again; the store error itself surfaces elsewhere.
            let old = self.get(partition, &key).ok().flatten();
            if let Some(usage) = self.lock_usage().get_mut(&partition) {
                *usage = usage.after(&key, old.as_deref(), value.as_deref());
            }
        }
        if let (TableKind::Windowed(spec), Some(_)) = (&self.kind, &value) {
            if let Some((_, window)) = spec.parse_store_key(&key) {
                self.window_state()
                    .entry(partition)
                    .or_default()
                    .open
                    .insert((spec.closes_at(window), key.clone()));
            }
        }
        self.dirty()
            .entry(partition)
            .or_default()
            .insert(key, value);
    }

    fn window_state(&self) -> MutexGuard<'_, HashMap<Partition, WindowState>> {
        // A map of owned values; a panic cannot leave it torn.
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns the stream time of `partition` of a windowed table: the
    /// largest event time seen, or `None` before the first event.
    pub fn stream_time(&self, partition: Partition) -> Option<i64> {
        self.window_state()
            .get(&partition)
            .and_then(|state| state.stream_time)
    }

    /// Moves the stream time of `partition` forward to `time`; an earlier
    /// time changes nothing. The new stream time is written like an entry,
    /// so it reaches the changelog.
    pub fn advance_stream_time(&self, partition: Partition, time: i64) {
        let mut states = self.window_state();
        let state = states.entry(partition).or_default();
        if state.stream_time.is_some_and(|now| now >= time) {
            return;
        }
        state.stream_time = Some(time);
        drop(states);
        self.dirty()
            .entry(partition)
            .or_default()
            .insert(STREAM_TIME_KEY.to_vec(), Some(time.to_be_bytes().to_vec()));
    }

    /// Removes the windows of `partition` that have closed at its stream
    /// time, writing a tombstone for each, and returns them with their
    /// final values, oldest first.
    ///
    /// # Errors
    ///
    /// Fails when the store fails; the windows not yet returned stay open.
    pub fn take_closed(&self, partition: Partition) -> Result<Vec<ClosedWindow>, StoreError> {
        let Some(spec) = self.window_spec() else {
            return Ok(Vec::new());
        };
        let mut closed = Vec::new();
        loop {
            let next = {
                let mut states = self.window_state();
                let Some(state) = states.get_mut(&partition) else {
                    break;
                };
                let Some(now) = state.stream_time else { break };
                match state.open.first() {
                    Some((closes_at, _)) if *closes_at <= now => state.open.pop_first(),
                    _ => None,
                }
            };
            let Some((_, stored)) = next else { break };
            let Some((key, window)) = spec.parse_store_key(&stored) else {
                continue;
            };
            // A window deleted by the agent has no final value.
            if let Some(value) = self.get(partition, &stored)? {
                closed.push(ClosedWindow { key, window, value });
            }
            self.dirty()
                .entry(partition)
                .or_default()
                .insert(stored, None);
        }
        Ok(closed)
    }

    /// Rebuilds the stream time and the open windows of `partition` from
    /// the store, after the partition was recovered from its changelog.
    ///
    /// # Errors
    ///
    /// Fails when the store fails.
    pub fn rebuild_windows(&self, partition: Partition) -> Result<(), StoreError> {
        let Some(spec) = self.window_spec() else {
            return Ok(());
        };
        let mut state = WindowState::default();
        for entry in self.store.iter(partition)? {
            let (key, value) = entry?;
            if key == STREAM_TIME_KEY {
                if let Ok(bytes) = <[u8; 8]>::try_from(value.as_slice()) {
                    state.stream_time = Some(i64::from_be_bytes(bytes));
                }
            } else if let Some((_, window)) = spec.parse_store_key(&key) {
                state.open.insert((spec.closes_at(window), key));
            }
        }
        tracing::debug!(table = %self.name, partition, open_windows = state.open.len(), stream_time = ?state.stream_time, "table: window tracking rebuilt");
        self.window_state().insert(partition, state);
        Ok(())
    }

    /// Forgets the window tracking of `partition`, when it is released.
    pub fn forget_windows(&self, partition: Partition) {
        self.window_state().remove(&partition);
    }

    /// Returns the number of dirty keys across partitions.
    pub fn dirty_len(&self) -> usize {
        self.dirty().values().map(HashMap::len).sum()
    }

    /// Drains the write cache into changelog records per partition, keys in
    /// ascending order so a changelog is reproducible.
    pub fn take_dirty(&self) -> Vec<(Partition, Vec<ChangelogRecord>)> {
        let drained = std::mem::take(&mut *self.dirty());
        let mut out: Vec<_> = drained
            .into_iter()
            .map(|(partition, entries)| {
                let mut records: Vec<_> = entries
                    .into_iter()
                    .map(|(key, value)| ChangelogRecord { key, value })
                    .collect();
                records.sort_by(|a, b| a.key.cmp(&b.key));
                (partition, records)
            })
            .collect();
        out.sort_by_key(|(p, _)| *p);
        out
    }

    /// Drops the write cache of `partition` without writing it, as when a
    /// partition is revoked after a failed commit.
    pub fn discard_dirty(&self, partition: Partition) {
        self.dirty().remove(&partition);
    }

    /// Marks `partition` as recovered and owned by this worker.
    pub fn activate(&self, partition: Partition) {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(partition);
    }

    /// Returns the live keys and bytes of `partition`, counting them with
    /// a scan of the partition on the first call.
    ///
    /// # Errors
    ///
    /// Fails when the store fails.
    pub fn usage(&self, partition: Partition) -> Result<Usage, StoreError> {
        if let Some(usage) = self.lock_usage().get(&partition) {
            return Ok(*usage);
        }
        let entries = self.scan_partition(
            partition,
            &[],
            None,
            &BTreeMap::new(),
            usize::MAX,
            usize::MAX,
        )?;
        let usage = Usage {
            keys: entries.len() as u64,
            bytes: entries
                .iter()
                .map(|(k, v)| (k.len() + v.len()) as u64)
                .sum(),
        };
        self.lock_usage().insert(partition, usage);
        Ok(usage)
    }

    fn lock_usage(&self) -> MutexGuard<'_, HashMap<Partition, Usage>> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `partition` as no longer owned by this worker.
    pub fn deactivate(&self, partition: Partition) {
        self.lock_usage().remove(&partition);
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&partition);
    }

    /// Returns whether `partition` is owned by this worker.
    pub fn is_active(&self, partition: Partition) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&partition)
    }
}

impl Usage {
    /// Returns the usage once `key` changes from `old` to `new` (`None`
    /// for no value).
    pub fn after(self, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) -> Usage {
        let size = |value: Option<&[u8]>| value.map_or(0, |v| (key.len() + v.len()) as u64);
        Usage {
            keys: (self.keys + u64::from(new.is_some())).saturating_sub(u64::from(old.is_some())),
            bytes: (self.bytes + size(new)).saturating_sub(size(old)),
        }
    }
}

/// Appends `entry` to `out` and adds its size to `bytes`, unless that would
/// take `bytes` past `max_bytes`. The first entry is always appended, so a
/// scan makes progress. Returns whether the entry was appended.
fn push_within(out: &mut Vec<Entry>, bytes: &mut usize, entry: Entry, max_bytes: usize) -> bool {
    let size = entry.0.len() + entry.1.len();
    if !out.is_empty() && *bytes + size > max_bytes {
        return false;
    }
    *bytes += size;
    out.push(entry);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn table_cache_shadows_store() {
        let store = Arc::new(MemoryStore::new());
        store.set(0, b"k", b"stored").unwrap();
        let table = Table::new("t", "app-t-changelog", store);
        assert_eq!(table.get(0, b"k").unwrap(), Some(b"stored".to_vec()));
        table.put(0, b"k".to_vec(), None);
        assert_eq!(table.get(0, b"k").unwrap(), None);
        table.put(0, b"k".to_vec(), Some(b"new".to_vec()));
        assert_eq!(table.get(0, b"k").unwrap(), Some(b"new".to_vec()));
    }

    #[test]
    fn table_scan_merges_layers_in_key_order() {
        let store = Arc::new(MemoryStore::new());
        for key in [b"a".as_slice(), b"b", b"c", b"d", b"e"] {
            store.set(0, key, b"stored").unwrap();
        }
        store.set(1, b"b", b"other partition").unwrap();
        let table = Table::new("t", "app-t-changelog", store);
        table.put(0, b"b".to_vec(), None);
        table.put(0, b"c".to_vec(), Some(b"cached".to_vec()));
        table.put(0, b"bb".to_vec(), Some(b"cached".to_vec()));
        let newer: BTreeMap<Vec<u8>, Option<Vec<u8>>> = [
            (b"c".to_vec(), Some(b"newer".to_vec())),
            (b"d".to_vec(), None),
            (b"f".to_vec(), Some(b"newer".to_vec())),
        ]
        .into_iter()
        .collect();

        let all = table.scan(0, b"", None, &newer, 100, usize::MAX).unwrap();
        let expected: Vec<Entry> = vec![
            (b"a".to_vec(), b"stored".to_vec()),
            (b"bb".to_vec(), b"cached".to_vec()),
            (b"c".to_vec(), b"newer".to_vec()),
            (b"e".to_vec(), b"stored".to_vec()),
            (b"f".to_vec(), b"newer".to_vec()),
        ];
        assert_eq!(all, expected);

        let bounded = table
            .scan(0, b"b", Some(b"e"), &newer, 100, usize::MAX)
            .unwrap();
        assert_eq!(bounded, expected[1..3].to_vec());
        let limited = table.scan(0, b"", None, &newer, 2, usize::MAX).unwrap();
        assert_eq!(limited, expected[..2].to_vec());
        let first_only = table.scan(0, b"", None, &newer, 100, 1).unwrap();
        assert_eq!(first_only, expected[..1].to_vec());
        let nothing = table.scan(0, b"", None, &newer, 0, usize::MAX).unwrap();
        assert_eq!(nothing, Vec::<Entry>::new());
    }

    #[test]
    fn table_take_dirty_coalesces_per_key() {
        let table = Table::new("t", "app-t-changelog", Arc::new(MemoryStore::new()));
        table.put(1, b"b".to_vec(), Some(b"1".to_vec()));
        table.put(1, b"a".to_vec(), Some(b"1".to_vec()));
        table.put(1, b"b".to_vec(), Some(b"2".to_vec()));
        table.put(0, b"z".to_vec(), None);
        assert_eq!(table.dirty_len(), 3);
        let drained = table.take_dirty();
        assert_eq!(drained.len(), 2);
        assert_eq!(
            drained[0],
            (
                0,
                vec![ChangelogRecord {
                    key: b"z".to_vec(),
                    value: None
                }]
            )
        );
        assert_eq!(
            drained[1],
            (
                1,
                vec![
                    ChangelogRecord {
                        key: b"a".to_vec(),
                        value: Some(b"1".to_vec())
                    },
                    ChangelogRecord {
                        key: b"b".to_vec(),
                        value: Some(b"2".to_vec())
                    },
                ]
            )
        );
        assert_eq!(table.dirty_len(), 0);
    }
}
