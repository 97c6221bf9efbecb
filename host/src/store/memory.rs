//! An in-process store: a sorted map per partition, lost when the process
//! exits. Recovery rebuilds it from the changelog on every start.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::RwLock;

use super::{ChangelogRecord, EntryIter, Partition, SourcePosition, Store, StoreError};

/// A [`Store`] that keeps everything in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    data: BTreeMap<Partition, BTreeMap<Vec<u8>, Vec<u8>>>,
    offsets: BTreeMap<Partition, i64>,
    positions: BTreeMap<Partition, BTreeMap<String, i64>>,
}

impl MemoryStore {
    /// Creates an empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a map half-updated,
        // because every write is a single map operation, so a poisoned lock
        // still holds consistent data.
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store for MemoryStore {
    fn get(&self, partition: Partition, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .read()
            .data
            .get(&partition)
            .and_then(|p| p.get(key))
            .cloned())
    }

    fn set(&self, partition: Partition, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.write()
            .data
            .entry(partition)
            .or_default()
            .insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&self, partition: Partition, key: &[u8]) -> Result<(), StoreError> {
        if let Some(p) = self.write().data.get_mut(&partition) {
            p.remove(key);
        }
        Ok(())
    }

    fn range(
        &self,
        partition: Partition,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
    ) -> Result<EntryIter<'_>, StoreError> {
        // The entries are copied so the iterator holds no lock while the
        // caller consumes it.
        let entries: Vec<_> = match self.read().data.get(&partition) {
            Some(p) => p
                .range::<[u8], _>((start, end))
                .map(|(k, v)| Ok((k.clone(), v.clone())))
                .collect(),
            None => Vec::new(),
        };
        Ok(Box::new(entries.into_iter()))
    }

    fn apply_changelog(
        &self,
        partition: Partition,
        records: &[ChangelogRecord],
        next_offset: i64,
        positions: &[SourcePosition],
    ) -> Result<(), StoreError> {
        let mut inner = self.write();
        let data = inner.data.entry(partition).or_default();
        for record in records {
            match &record.value {
                Some(value) => data.insert(record.key.clone(), value.clone()),
                None => data.remove(&record.key),
            };
        }
        inner.offsets.insert(partition, next_offset);
        let recorded = inner.positions.entry(partition).or_default();
        for (topic, offset) in positions {
            recorded.insert(topic.clone(), *offset);
        }
        Ok(())
    }

    fn source_positions(&self, partition: Partition) -> Result<Vec<SourcePosition>, StoreError> {
        Ok(self
            .read()
            .positions
            .get(&partition)
            .map(|p| p.iter().map(|(t, o)| (t.clone(), *o)).collect())
            .unwrap_or_default())
    }

    fn changelog_offset(&self, partition: Partition) -> Result<Option<i64>, StoreError> {
        Ok(self.read().offsets.get(&partition).copied())
    }

    fn drop_partition(&self, partition: Partition) -> Result<(), StoreError> {
        let mut inner = self.write();
        inner.data.remove(&partition);
        inner.offsets.remove(&partition);
        inner.positions.remove(&partition);
        Ok(())
    }

    fn partitions(&self) -> Result<Vec<Partition>, StoreError> {
        let inner = self.read();
        let set: BTreeSet<Partition> = inner
            .data
            .iter()
            .filter(|(_, p)| !p.is_empty())
            .map(|(p, _)| *p)
            .chain(inner.offsets.keys().copied())
            .collect();
        Ok(set.into_iter().collect())
    }

    fn persist(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_contract() {
        super::super::contract::check_all(&MemoryStore::new());
    }
}
