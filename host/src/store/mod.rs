//! Key/value stores that hold table state, one logical keyspace per source
//! partition.
//!
//! A [`Store`] keeps the data of one table. Every operation names the
//! partition it applies to, because a table is partitioned exactly like the
//! source topic its agents consume: partition 3 of the table contains the state
//! built from partition 3 of the source, and it is recovered from partition 3
//! of the table's changelog topic.
//!
//! Next to the data, a store keeps the *changelog offset* of each partition:
//! the offset of the next changelog record that has not yet been applied.
//! [`Store::apply_changelog`] writes records and that offset together, so
//! after a crash the store never claims to hold records it does not hold.
//!
//! Implementations: [`MemoryStore`] (in process, lost on exit) and
//! [`RocksStore`] (RocksDB on local disk).
//!
//! Architecture invariant: this module and its implementations know nothing
//! of Kafka or WebAssembly. They see partitions as integers and offsets as
//! `i64` values supplied by the caller.

mod memory;
mod rocks;

use std::ops::Bound;

pub use memory::MemoryStore;
pub use rocks::{RocksOptions, RocksStore};

/// A source or changelog partition number.
pub type Partition = u32;

/// One entry of a changelog: a key with its new value, or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogRecord {
    /// The table key.
    pub key: Vec<u8>,
    /// The new value, or `None` when the key was deleted.
    pub value: Option<Vec<u8>>,
}

/// A key/value pair read from a store.
pub type Entry = (Vec<u8>, Vec<u8>);

/// A source topic and the offset of the next record of it to handle in
/// the same partition number: the point up to which a table partition's
/// state reflects that source partition.
pub type SourcePosition = (String, i64);

/// An iterator over the entries of one partition, in ascending key order.
pub type EntryIter<'a> = Box<dyn Iterator<Item = Result<Entry, StoreError>> + 'a>;

/// Storage for one table.
///
/// Implementations are safe to share between threads. Calls may block on
/// disk I/O: callers on an async runtime run them on a blocking thread.
pub trait Store: Send + Sync {
    /// Returns the value stored under `key` in `partition`, or `None` when
    /// the key is missing.
    fn get(&self, partition: Partition, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stores `value` under `key`, replacing any earlier value. The
    /// partition's changelog offset does not change.
    fn set(&self, partition: Partition, key: &[u8], value: &[u8]) -> Result<(), StoreError>;

    /// Removes `key`; removing a missing key succeeds.
    fn delete(&self, partition: Partition, key: &[u8]) -> Result<(), StoreError>;

    /// Iterates over the entries of `partition` whose keys lie within
    /// `start..end`, in ascending key order.
    fn range(
        &self,
        partition: Partition,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
    ) -> Result<EntryIter<'_>, StoreError>;

    /// Iterates over every entry of `partition` in ascending key order.
    fn iter(&self, partition: Partition) -> Result<EntryIter<'_>, StoreError> {
        self.range(partition, Bound::Unbounded, Bound::Unbounded)
    }

    /// Applies changelog records in order and records `next_offset` as the
    /// partition's changelog offset, and each of `positions` as the source
    /// position of its topic, atomically: after a crash either all of it is
    /// visible or none of it.
    fn apply_changelog(
        &self,
        partition: Partition,
        records: &[ChangelogRecord],
        next_offset: i64,
        positions: &[SourcePosition],
    ) -> Result<(), StoreError>;

    /// Returns the source positions recorded for `partition`, by topic.
    fn source_positions(&self, partition: Partition) -> Result<Vec<SourcePosition>, StoreError>;

    /// Returns the offset of the next changelog record to apply to
    /// `partition`, or `None` when the partition has never been written
    /// through [`Store::apply_changelog`].
    fn changelog_offset(&self, partition: Partition) -> Result<Option<i64>, StoreError>;

    /// Removes every entry of `partition`, its changelog offset and its
    /// source positions.
    fn drop_partition(&self, partition: Partition) -> Result<(), StoreError>;

    /// Returns the partitions that hold data or a changelog offset, in
    /// ascending order.
    fn partitions(&self) -> Result<Vec<Partition>, StoreError>;

    /// Makes every write so far durable. Stores without durability return
    /// immediately.
    fn persist(&self) -> Result<(), StoreError>;
}

/// An error from a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be opened.
    #[error("store {table}: failed to open {path}: {message}")]
    Open {
        /// The table the store belongs to.
        table: String,
        /// The store's directory or other location.
        path: String,
        /// The backend's message, with the remedy where one is known.
        message: String,
    },
    /// A read or write failed in the backend.
    #[error("store {table}: {operation} on partition {partition} failed: {message}")]
    Backend {
        /// The table the store belongs to.
        table: String,
        /// The operation, such as `get` or `apply changelog`.
        operation: &'static str,
        /// The partition the operation applied to.
        partition: Partition,
        /// The backend's message.
        message: String,
    },
    /// The stored changelog offset of a partition is not an 8-byte integer.
    #[error("store {table}: changelog offset of partition {partition} is corrupt ({length} bytes instead of 8); delete the table's state directory to rebuild it from the changelog")]
    CorruptOffset {
        /// The table the store belongs to.
        table: String,
        /// The partition whose offset is corrupt.
        partition: Partition,
        /// The length of the stored value.
        length: usize,
    },
}

/// Returns whether `key` lies within the bounds `start..end`.
pub(crate) fn in_range(key: &[u8], start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    let after_start = match start {
        Bound::Included(s) => key >= s,
        Bound::Excluded(s) => key > s,
        Bound::Unbounded => true,
    };
    let before_end = match end {
        Bound::Included(e) => key <= e,
        Bound::Excluded(e) => key < e,
        Bound::Unbounded => true,
    };
    after_start && before_end
}

#[cfg(test)]
pub(crate) mod contract {
    //! Behaviour every [`Store`] implementation must show, run by each
    //! implementation's tests against a real instance.

    use super::*;

    pub(crate) fn check_all(store: &dyn Store) {
        get_set_delete(store);
        partitions_are_separate(store);
        apply_changelog_sets_offset(store);
        range_is_ordered(store);
        drop_partition_removes_all(store);
    }

    fn get_set_delete(store: &dyn Store) {
        assert_eq!(store.get(0, b"a").unwrap(), None);
        store.set(0, b"a", b"1").unwrap();
        assert_eq!(store.get(0, b"a").unwrap(), Some(b"1".to_vec()));
        store.set(0, b"", b"").unwrap();
        assert_eq!(store.get(0, b"").unwrap(), Some(Vec::new()));
        store.delete(0, b"a").unwrap();
        assert_eq!(store.get(0, b"a").unwrap(), None);
        store.delete(0, b"never-set").unwrap();
        store.delete(0, b"").unwrap();
    }

    fn partitions_are_separate(store: &dyn Store) {
        store.set(1, b"k", b"one").unwrap();
        store.set(2, b"k", b"two").unwrap();
        assert_eq!(store.get(1, b"k").unwrap(), Some(b"one".to_vec()));
        assert_eq!(store.get(2, b"k").unwrap(), Some(b"two".to_vec()));
        assert_eq!(store.get(3, b"k").unwrap(), None);
    }

    fn apply_changelog_sets_offset(store: &dyn Store) {
        assert_eq!(store.changelog_offset(4).unwrap(), None);
        let records = vec![
            ChangelogRecord {
                key: b"x".to_vec(),
                value: Some(b"1".to_vec()),
            },
            ChangelogRecord {
                key: vec![0xff, 0x00],
                value: Some(b"2".to_vec()),
            },
            ChangelogRecord {
                key: b"x".to_vec(),
                value: None,
            },
        ];
        store.apply_changelog(4, &records, 3, &[]).unwrap();
        assert_eq!(store.changelog_offset(4).unwrap(), Some(3));
        assert_eq!(store.get(4, b"x").unwrap(), None);
        assert_eq!(store.get(4, &[0xff, 0x00]).unwrap(), Some(b"2".to_vec()));
        store.apply_changelog(4, &[], 10, &[]).unwrap();
        assert_eq!(store.changelog_offset(4).unwrap(), Some(10));
        store.persist().unwrap();

        // Source positions are kept per topic; a later one replaces an
        // earlier one of the same topic, and other partitions have none.
        assert_eq!(store.source_positions(4).unwrap(), vec![]);
        let positions = [("b-topic".to_owned(), 7), ("a-topic".to_owned(), 5)];
        store.apply_changelog(4, &[], 11, &positions).unwrap();
        store
            .apply_changelog(4, &[], 12, &[("b-topic".to_owned(), 9)])
            .unwrap();
        assert_eq!(
            store.source_positions(4).unwrap(),
            vec![("a-topic".to_owned(), 5), ("b-topic".to_owned(), 9)]
        );
        assert_eq!(store.source_positions(5).unwrap(), vec![]);
        assert!(!store.partitions().unwrap().contains(&5));
    }

    fn range_is_ordered(store: &dyn Store) {
        for key in [b"c".as_slice(), b"a", b"b", b"d"] {
            store.set(5, key, key).unwrap();
        }
        let all: Vec<Vec<u8>> = store.iter(5).unwrap().map(|e| e.unwrap().0).collect();
        assert_eq!(
            all,
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]
        );
        let middle: Vec<Vec<u8>> = store
            .range(5, Bound::Included(b"b"), Bound::Excluded(b"d"))
            .unwrap()
            .map(|e| e.unwrap().0)
            .collect();
        assert_eq!(middle, vec![b"b".to_vec(), b"c".to_vec()]);
    }

    fn drop_partition_removes_all(store: &dyn Store) {
        store
            .apply_changelog(
                6,
                &[ChangelogRecord {
                    key: b"k".to_vec(),
                    value: Some(b"v".to_vec()),
                }],
                1,
                &[("in".to_owned(), 4)],
            )
            .unwrap();
        assert!(store.partitions().unwrap().contains(&6));
        store.drop_partition(6).unwrap();
        assert_eq!(store.get(6, b"k").unwrap(), None);
        assert_eq!(store.changelog_offset(6).unwrap(), None);
        assert_eq!(store.source_positions(6).unwrap(), vec![]);
        assert!(!store.partitions().unwrap().contains(&6));
    }
}
