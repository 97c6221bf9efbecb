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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::store::{ChangelogRecord, Entry, Partition, Store, StoreError};

type Dirty = HashMap<Partition, HashMap<Vec<u8>, Option<Vec<u8>>>>;

/// One table: its name, changelog topic, store and write cache.
pub struct Table {
    name: String,
    changelog_topic: String,
    store: Arc<dyn Store>,
    dirty: Mutex<Dirty>,
    active: Mutex<BTreeSet<Partition>>,
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
        Self {
            name: name.to_owned(),
            changelog_topic: changelog_topic.to_owned(),
            store,
            dirty: Mutex::default(),
            active: Mutex::default(),
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
            let size = key.len() + value.len();
            if !out.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            out.push((key, value));
        }
        Ok(out)
    }

    /// Writes `value` (or a tombstone for `None`) to the write cache.
    pub fn put(&self, partition: Partition, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.dirty()
            .entry(partition)
            .or_default()
            .insert(key, value);
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

    /// Marks `partition` as no longer owned by this worker.
    pub fn deactivate(&self, partition: Partition) {
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
