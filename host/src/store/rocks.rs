//! A RocksDB store on local disk: one database per table.
//!
//! Layout: the `default` column family contains the data, each key prefixed by
//! its partition as 4 big-endian bytes, so one partition is one contiguous
//! key range and dropping a partition is one range delete. The
//! `changelog_offsets` column family maps the same 4-byte partition to the
//! partition's next changelog offset as 8 big-endian bytes. Because
//! [`Store::apply_changelog`] puts data and offset into one `WriteBatch`,
//! RocksDB's atomic batch commit keeps them consistent across a crash.

use std::ops::Bound;
use std::path::{Path, PathBuf};

use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, WriteBatch, DB,
};
use serde::Deserialize;

use super::{in_range, ChangelogRecord, EntryIter, Partition, SourcePosition, Store, StoreError};

const OFFSETS_CF: &str = "changelog_offsets";

/// RocksDB tuning for one table, from the table's `[tables.rocksdb]`
/// config section.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RocksOptions {
    /// Size of one memtable in MiB. Default 64.
    pub write_buffer_mib: usize,
    /// Maximum number of open files, or -1 for no limit. Default 512.
    pub max_open_files: i32,
    /// Whether to compress SST files with LZ4. Default true.
    pub compression: bool,
}

impl Default for RocksOptions {
    fn default() -> Self {
        Self {
            write_buffer_mib: 64,
            max_open_files: 512,
            compression: true,
        }
    }
}

/// A [`Store`] backed by RocksDB.
pub struct RocksStore {
    table: String,
    path: PathBuf,
    db: DB,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("table", &self.table)
            .field("path", &self.path)
            .finish()
    }
}

impl RocksStore {
    /// Opens or creates the database of `table` in the directory `path`.
    ///
    /// # Errors
    ///
    /// Fails when the directory cannot be created or RocksDB cannot open
    /// it, for example because another process holds its lock.
    pub fn open(table: &str, path: &Path, options: &RocksOptions) -> Result<Self, StoreError> {
        let open_error = |message: String| StoreError::Open {
            table: table.to_owned(),
            path: path.display().to_string(),
            message,
        };
        std::fs::create_dir_all(path).map_err(|e| open_error(e.to_string()))?;

        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_max_open_files(options.max_open_files);
        db_options.set_write_buffer_size(options.write_buffer_mib * 1024 * 1024);
        db_options.set_compression_type(if options.compression {
            rocksdb::DBCompressionType::Lz4
        } else {
            rocksdb::DBCompressionType::None
        });
        let families = vec![
            ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, db_options.clone()),
            ColumnFamilyDescriptor::new(OFFSETS_CF, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&db_options, path, families).map_err(|e| {
            let mut message = e.to_string();
            // RocksDB reports a held lock as "IO error: lock ... : Resource temporarily unavailable".
            if message.contains("lock") {
                message.push_str("; another tablehost process may be using this state directory");
            }
            open_error(message)
        })?;
        tracing::debug!(table, path = %path.display(), "store.open: rocksdb opened");
        Ok(Self {
            table: table.to_owned(),
            path: path.to_owned(),
            db,
        })
    }

    /// Returns the directory of the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn offsets_cf(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(OFFSETS_CF)
            .expect("the offsets column family is created at open")
    }

    fn backend_error(
        &self,
        operation: &'static str,
        partition: Partition,
        e: rocksdb::Error,
    ) -> StoreError {
        StoreError::Backend {
            table: self.table.clone(),
            operation,
            partition,
            message: e.to_string(),
        }
    }
}

/// Returns the key, in the offsets column family, of the source position
/// of `topic` for `partition`: the partition, a `/` and the topic name.
/// Changelog offsets use the bare 4-byte partition, so the two never meet.
fn position_key(partition: Partition, topic: &str) -> Vec<u8> {
    let mut key = partition.to_be_bytes().to_vec();
    key.push(b'/');
    key.extend_from_slice(topic.as_bytes());
    key
}

fn data_key(partition: Partition, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + key.len());
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(key);
    out
}

impl Store for RocksStore {
    fn get(&self, partition: Partition, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get(data_key(partition, key))
            .map_err(|e| self.backend_error("get", partition, e))
    }

    fn set(&self, partition: Partition, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.db
            .put(data_key(partition, key), value)
            .map_err(|e| self.backend_error("set", partition, e))
    }

    fn delete(&self, partition: Partition, key: &[u8]) -> Result<(), StoreError> {
        self.db
            .delete(data_key(partition, key))
            .map_err(|e| self.backend_error("delete", partition, e))
    }

    fn range(
        &self,
        partition: Partition,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
    ) -> Result<EntryIter<'_>, StoreError> {
        let prefix = partition.to_be_bytes();
        let seek = match start {
            Bound::Included(s) | Bound::Excluded(s) => data_key(partition, s),
            Bound::Unbounded => prefix.to_vec(),
        };
        let mut read_options = ReadOptions::default();
        // Bounding the iterator by the next partition's prefix stops it at
        // the end of this partition without reading further.
        if let Some(next) = partition.checked_add(1) {
            read_options.set_iterate_upper_bound(next.to_be_bytes().to_vec());
        }
        // The bounds are copied so the iterator borrows only the database.
        let start = start.map(<[u8]>::to_vec);
        let end = end.map(<[u8]>::to_vec);
        let iter = self
            .db
            .iterator_opt(IteratorMode::From(&seek, Direction::Forward), read_options)
            .map(move |item| {
                item.map(|(k, v)| (k[4..].to_vec(), v.to_vec()))
                    .map_err(|e| self.backend_error("iterate", partition, e))
            })
            .filter(move |item| match item {
                Ok((k, _)) => in_range(k, start.as_ref().map(Vec::as_slice), Bound::Unbounded),
                Err(_) => true,
            })
            .take_while(move |item| match item {
                Ok((k, _)) => in_range(k, Bound::Unbounded, end.as_ref().map(Vec::as_slice)),
                Err(_) => true,
            });
        Ok(Box::new(iter))
    }

    fn apply_changelog(
        &self,
        partition: Partition,
        records: &[ChangelogRecord],
        next_offset: i64,
        positions: &[SourcePosition],
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for record in records {
            let key = data_key(partition, &record.key);
            match &record.value {
                Some(value) => batch.put(key, value),
                None => batch.delete(key),
            }
        }
        batch.put_cf(
            self.offsets_cf(),
            partition.to_be_bytes(),
            next_offset.to_be_bytes(),
        );
        for (topic, offset) in positions {
            batch.put_cf(
                self.offsets_cf(),
                position_key(partition, topic),
                offset.to_be_bytes(),
            );
        }
        self.db
            .write(batch)
            .map_err(|e| self.backend_error("apply changelog", partition, e))
    }

    fn source_positions(&self, partition: Partition) -> Result<Vec<SourcePosition>, StoreError> {
        let prefix = position_key(partition, "");
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.offsets_cf(),
            IteratorMode::From(&prefix, Direction::Forward),
        );
        for item in iter {
            let (key, value) =
                item.map_err(|e| self.backend_error("read source positions", partition, e))?;
            if !key.starts_with(&prefix) {
                break;
            }
            let array: [u8; 8] =
                value
                    .as_ref()
                    .try_into()
                    .map_err(|_| StoreError::CorruptOffset {
                        table: self.table.clone(),
                        partition,
                        length: value.len(),
                    })?;
            let topic = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            out.push((topic, i64::from_be_bytes(array)));
        }
        Ok(out)
    }

    fn changelog_offset(&self, partition: Partition) -> Result<Option<i64>, StoreError> {
        let raw = self
            .db
            .get_cf(self.offsets_cf(), partition.to_be_bytes())
            .map_err(|e| self.backend_error("read changelog offset", partition, e))?;
        match raw {
            None => Ok(None),
            Some(bytes) => {
                let array: [u8; 8] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| StoreError::CorruptOffset {
                            table: self.table.clone(),
                            partition,
                            length: bytes.len(),
                        })?;
                Ok(Some(i64::from_be_bytes(array)))
            }
        }
    }

    fn drop_partition(&self, partition: Partition) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        let start = partition.to_be_bytes().to_vec();
        match partition.checked_add(1) {
            Some(next) => batch.delete_range(start, next.to_be_bytes().to_vec()),
            // The last possible partition has no successor prefix, so its
            // range ends at the largest 5-byte key instead.
            None => batch.delete_range(start, vec![0xff; 5]),
        }
        batch.delete_cf(self.offsets_cf(), partition.to_be_bytes());
        for (topic, _) in self.source_positions(partition)? {
            batch.delete_cf(self.offsets_cf(), position_key(partition, &topic));
        }
        self.db
            .write(batch)
            .map_err(|e| self.backend_error("drop partition", partition, e))
    }

    fn partitions(&self) -> Result<Vec<Partition>, StoreError> {
        let mut found = std::collections::BTreeSet::new();
        for item in self.db.iterator_cf(self.offsets_cf(), IteratorMode::Start) {
            let (k, _) = item.map_err(|e| self.backend_error("list partitions", 0, e))?;
            if let Ok(array) = <[u8; 4]>::try_from(&k[..]) {
                found.insert(Partition::from_be_bytes(array));
            }
        }
        // Partitions written only through `set` have no offset; find them by
        // seeking from one partition prefix to the next.
        let mut seek = Vec::new();
        loop {
            let mut iter = self
                .db
                .iterator(IteratorMode::From(&seek, Direction::Forward));
            let Some(item) = iter.next() else { break };
            let (k, _) = item.map_err(|e| self.backend_error("list partitions", 0, e))?;
            let Ok(array) = <[u8; 4]>::try_from(&k[..4.min(k.len())]) else {
                break;
            };
            let partition = Partition::from_be_bytes(array);
            found.insert(partition);
            match partition.checked_add(1) {
                Some(next) => seek = next.to_be_bytes().to_vec(),
                None => break,
            }
        }
        Ok(found.into_iter().collect())
    }

    fn persist(&self) -> Result<(), StoreError> {
        self.db
            .flush_wal(true)
            .map_err(|e| self.backend_error("persist", 0, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rocks_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open("t", dir.path(), &RocksOptions::default()).unwrap();
        super::super::contract::check_all(&store);
    }

    #[test]
    fn rocks_store_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RocksStore::open("t", dir.path(), &RocksOptions::default()).unwrap();
            let records = [ChangelogRecord {
                key: vec![0x80, 0xfe],
                value: Some(b"v".to_vec()),
            }];
            store.apply_changelog(7, &records, 42, &[]).unwrap();
            store.persist().unwrap();
        }
        let store = RocksStore::open("t", dir.path(), &RocksOptions::default()).unwrap();
        assert_eq!(store.get(7, &[0x80, 0xfe]).unwrap(), Some(b"v".to_vec()));
        assert_eq!(store.changelog_offset(7).unwrap(), Some(42));
        assert_eq!(store.partitions().unwrap(), vec![7]);
    }

    #[test]
    fn rocks_store_second_open_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let _first = RocksStore::open("t", dir.path(), &RocksOptions::default()).unwrap();
        let second = RocksStore::open("t", dir.path(), &RocksOptions::default()).unwrap_err();
        assert!(
            second.to_string().contains("another tablehost process"),
            "{second}"
        );
    }
}
