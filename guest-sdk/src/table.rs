//! Typed tables over the host's key/value `table` resource.
//!
//! A [`Table`] pairs a host table handle with a key type and a value codec.
//! Handles are cached per name for the life of the component instance,
//! because the WIT contract allows keeping them and each open is a call
//! into the host.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::rc::Rc;

use crate::bindings::tablehost::agent::tables as wit;
use crate::{Codec, Error, Json, Key, Window};

/// The host's reason for rejecting a table operation, which had no effect.
///
/// This mirrors the WIT `table-error` variant. Its `Debug` text is stable
/// and names the case and payload, such as `Undeclared("not-declared")`,
/// `ValueTooLarge(2097152)` or `WindowClosed(Window { start: 0, end: 60000 })`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// The agent's configuration does not declare a table of this name.
    /// Add it to the agent's `tables` list.
    #[error("table {0:?} is not declared in the agent's tables list")]
    Undeclared(String),

    /// The key is larger than the agent's `max_key_bytes` limit. The
    /// payload is the key's size in bytes.
    #[error("key is {0} bytes, larger than the agent's max_key_bytes limit")]
    KeyTooLarge(u64),

    /// The value is larger than the agent's `max_value_bytes` limit. The
    /// payload is the value's size in bytes.
    #[error("value is {0} bytes, larger than the agent's max_value_bytes limit")]
    ValueTooLarge(u64),

    /// The host's store failed. Retrying in the same call is unlikely to
    /// help, so return the error from [`Agent::handle`](crate::Agent::handle).
    #[error("storage failed: {0}")]
    Storage(String),

    /// The table is of another kind than the type that opened it. Either a
    /// windowed table was opened with [`Table`] or
    /// [`SetTable`](crate::SetTable), or another table with
    /// [`WindowedTable`](crate::WindowedTable). The payload is the host's
    /// text, which names the table's kind.
    #[error(
        "table kind {0:?} does not match the type that opened it, so open windowed tables with WindowedTable and others with Table or SetTable, or change the table's kind in the host config"
    )]
    WrongKind(String),

    /// The offset names no event of the batch being handled. Window
    /// operations that take an [`Event`](crate::Event) work only inside
    /// [`Agent::handle`](crate::Agent::handle), with the event it received.
    #[error(
        "no event at offset {0} in the batch being handled, so call this only from Agent::handle with its event"
    )]
    UnknownEvent(i64),

    /// The event has no usable event time. Either the table reads the time
    /// from a field of the JSON value and the value has no integer in that
    /// field, or the table uses record timestamps and the record has none.
    /// The payload is the host's description of what is wrong.
    #[error("event has no usable event time, so it belongs to no window: {0}")]
    NoEventTime(String),

    /// The window is not one of the table's windows, because its start is
    /// not on the table's step or its length is not the table's size. Use
    /// windows returned by [`WindowedTable`](crate::WindowedTable) methods.
    #[error(
        "window {0} is not a window of this table (wrong start or length), so use one returned by windows, window_at or range"
    )]
    InvalidWindow(Window),

    /// The window has closed, because its end plus the table's `expires` is
    /// not after the partition's stream time. A closed window is deleted
    /// and never written again.
    #[error("window {0} has closed, so it can no longer be written")]
    WindowClosed(Window),
}

impl From<wit::TableError> for TableError {
    fn from(error: wit::TableError) -> Self {
        match error {
            wit::TableError::Undeclared(name) => Self::Undeclared(name),
            wit::TableError::KeyTooLarge(size) => Self::KeyTooLarge(size),
            wit::TableError::ValueTooLarge(size) => Self::ValueTooLarge(size),
            wit::TableError::Storage(message) => Self::Storage(message),
            wit::TableError::WrongKind(kind) => Self::WrongKind(kind),
            wit::TableError::UnknownEvent(offset) => Self::UnknownEvent(offset),
            wit::TableError::NoEventTime(reason) => Self::NoEventTime(reason),
            wit::TableError::InvalidWindow(window) => Self::InvalidWindow(window.into()),
            wit::TableError::WindowClosed(window) => Self::WindowClosed(window.into()),
        }
    }
}

/// A host table handle and the name it was opened with.
struct OpenTable {
    name: String,
    handle: wit::Table,
}

thread_local! {
    /// Host handles opened by this instance, by table name. A component
    /// instance runs on one thread, so a thread-local is instance-wide. A
    /// `BTreeMap`, unlike a `HashMap`, needs no random seed, which would
    /// add a `wasi:random` import to every agent.
    static OPEN_TABLES: RefCell<BTreeMap<String, Rc<OpenTable>>> =
        const { RefCell::new(BTreeMap::new()) };
}

/// A host table with keys of type `K` and values of type `V` encoded by the
/// codec `C`.
///
/// Methods take the key in any borrowed form of `K`, like
/// [`HashMap`](std::collections::HashMap): a `Table<String, V>` accepts
/// `&str`, and a `Table<Vec<u8>, V>` accepts `&[u8]`. Every operation
/// applies to the partition of the event being handled. Writes become
/// durable when the host commits the batch, and are discarded if the batch
/// fails.
///
/// ```no_run
/// use tablehost_guest::{Postcard, Table};
///
/// # fn example() -> Result<(), tablehost_guest::Error> {
/// // JSON values, the default codec.
/// let totals: Table<String, i64> = Table::open("totals")?;
/// totals.set("LAS", &12)?;
/// assert_eq!(totals.get("LAS")?, Some(12));
///
/// // Compact binary values under integer keys.
/// let readings: Table<u64, (f64, f64), Postcard> = Table::open("readings")?;
/// readings.set(&1_700_000_000, &(20.5, 0.4))?;
/// # Ok(())
/// # }
/// ```
pub struct Table<K: ?Sized, V, C = Json> {
    open: Rc<OpenTable>,
    // The table stores no `K`, `V` or `C` value. The raw pointer allows an
    // unsized `K`. It adds no restriction, because `Rc` already makes a
    // table neither `Send` nor `Sync`.
    types: PhantomData<(*const K, V, C)>,
}

impl<K: ?Sized, V, C: Codec<V>> Table<K, V, C> {
    /// Opens the table `name`.
    ///
    /// The first successful open of a name calls the host, later ones reuse
    /// its handle, so opening a table in every
    /// [`Agent::handle`](crate::Agent::handle) call is cheap. Failures are
    /// not cached.
    ///
    /// # Errors
    ///
    /// [`Error::Table`] with [`TableError::Undeclared`] when the agent's
    /// configuration does not declare the table, and with
    /// [`TableError::WrongKind`] when the table is windowed.
    pub fn open(name: &str) -> Result<Self, Error> {
        let cached = OPEN_TABLES.with(|tables| tables.borrow().get(name).cloned());
        let open = match cached {
            Some(open) => open,
            None => {
                let handle =
                    wit::Table::open(name).map_err(|source| table_error(name, "open", source))?;
                let open = Rc::new(OpenTable {
                    name: name.to_string(),
                    handle,
                });
                OPEN_TABLES.with(|tables| {
                    tables
                        .borrow_mut()
                        .insert(name.to_string(), Rc::clone(&open))
                });
                open
            }
        };

        Ok(Self {
            open,
            types: PhantomData,
        })
    }

    /// Returns the table's name.
    pub fn name(&self) -> &str {
        &self.open.name
    }

    /// Returns the value stored under `key`, or `None` when the key is
    /// missing.
    ///
    /// # Errors
    ///
    /// [`Error::Table`] when the host rejects the read, and
    /// [`Error::Decode`] when the stored bytes are not a valid `C` encoding
    /// of `V`.
    pub fn get<Q>(&self, key: &Q) -> Result<Option<V>, Error>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        let key = key.encode_key();
        let bytes = self
            .open
            .handle
            .get(&key)
            .map_err(|source| table_error(self.name(), "get", source))?;

        match bytes {
            None => Ok(None),
            Some(bytes) => C::decode(&bytes).map(Some).map_err(|source| Error::Decode {
                table: self.name().to_string(),
                key: key.escape_ascii().to_string(),
                codec: C::NAME,
                source,
            }),
        }
    }

    /// Returns the value stored under `key`, or `V::default()` when the key
    /// is missing. Nothing is written for a missing key.
    ///
    /// # Errors
    ///
    /// As for [`Table::get`].
    pub fn get_or_default<Q>(&self, key: &Q) -> Result<V, Error>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
        V: Default,
    {
        Ok(self.get(key)?.unwrap_or_default())
    }

    /// Stores `value` under `key`, replacing any earlier value.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] when the codec rejects the value, and
    /// [`Error::Table`] when the host rejects the write, such as
    /// [`TableError::ValueTooLarge`]. Nothing is written in either case.
    pub fn set<Q>(&self, key: &Q, value: &V) -> Result<(), Error>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        let bytes = C::encode(value).map_err(|source| Error::Encode {
            table: self.name().to_string(),
            codec: C::NAME,
            source,
        })?;

        self.open
            .handle
            .set(&key.encode_key(), &bytes)
            .map_err(|source| table_error(self.name(), "set", source))
    }

    /// Removes `key`. Deleting a missing key succeeds and does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Table`] when the host rejects the delete.
    pub fn delete<Q>(&self, key: &Q) -> Result<(), Error>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        self.open
            .handle
            .delete(&key.encode_key())
            .map_err(|source| table_error(self.name(), "delete", source))
    }

    /// Returns whether `key` is present, without reading its value.
    ///
    /// # Errors
    ///
    /// [`Error::Table`] when the host rejects the check.
    pub fn contains<Q>(&self, key: &Q) -> Result<bool, Error>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        self.open
            .handle
            .contains(&key.encode_key())
            .map_err(|source| table_error(self.name(), "contains", source))
    }
}

impl<K: ?Sized, V, C: Codec<V>> Table<K, V, C> {
    /// Iterates over every entry of the event's partition, in ascending
    /// byte order of the encoded keys.
    ///
    /// The iterator includes writes made earlier in the same batch and skips
    /// deleted keys. It fetches entries from the host in pages, so a large
    /// partition is never copied into the instance at once. Keys are
    /// returned as their encoded bytes, because [`Key`] only encodes.
    pub fn entries(&self) -> Entries<'_, K, V, C> {
        Entries::new(self, Vec::new(), None)
    }

    /// Iterates over the entries whose encoded keys are at least `start`
    /// and, when `end` is given, below `end`. See [`Table::entries`].
    pub fn range<Q>(&self, start: &Q, end: Option<&Q>) -> Entries<'_, K, V, C>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        Entries::new(
            self,
            start.encode_key().into_owned(),
            end.map(|e| e.encode_key().into_owned()),
        )
    }

    /// Iterates over the entries whose encoded keys start with the encoded
    /// `prefix`. See [`Table::entries`].
    pub fn prefix<Q>(&self, prefix: &Q) -> Entries<'_, K, V, C>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        let start = prefix.encode_key().into_owned();
        let end = prefix_end(&start);
        Entries::new(self, start, end)
    }
}

/// Returns the smallest key above every key that starts with `prefix`, or
/// `None` when no such key exists (an empty prefix, or one of only `0xff`
/// bytes).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Entries fetched per host call by [`Entries`].
const PAGE_ENTRIES: u32 = 256;

/// An iterator over table entries as `(encoded key, value)` pairs, created
/// by [`Table::entries`], [`Table::range`] and [`Table::prefix`].
pub struct Entries<'t, K: ?Sized, V, C> {
    table: &'t Table<K, V, C>,
    /// The start of the next page, or `None` once the range is exhausted.
    next_start: Option<Vec<u8>>,
    end: Option<Vec<u8>>,
    page: std::vec::IntoIter<wit::Entry>,
}

impl<'t, K: ?Sized, V, C: Codec<V>> Entries<'t, K, V, C> {
    fn new(table: &'t Table<K, V, C>, start: Vec<u8>, end: Option<Vec<u8>>) -> Self {
        Self {
            table,
            next_start: Some(start),
            end,
            page: Vec::new().into_iter(),
        }
    }
}

impl<K: ?Sized, V, C: Codec<V>> Iterator for Entries<'_, K, V, C> {
    type Item = Result<(Vec<u8>, V), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.page.len() == 0 {
            let start = self.next_start.take()?;
            let page = match self
                .table
                .open
                .handle
                .scan(&start, self.end.as_deref(), PAGE_ENTRIES)
            {
                Ok(page) => page,
                Err(source) => return Some(Err(table_error(self.table.name(), "scan", source))),
            };
            // The host returns at least one entry while any is left, so an
            // empty page ends the range. Otherwise the next page starts just
            // after the last key of this one.
            if let Some(last) = page.last() {
                let mut after = last.key.clone();
                after.push(0);
                self.next_start = Some(after);
            }
            self.page = page.into_iter();
        }

        let entry = self.page.next()?;
        Some(
            C::decode(&entry.value)
                .map(|value| (entry.key.clone(), value))
                .map_err(|source| Error::Decode {
                    table: self.table.name().to_string(),
                    key: entry.key.escape_ascii().to_string(),
                    codec: C::NAME,
                    source,
                }),
        )
    }
}

impl<K: ?Sized, V, C> Clone for Table<K, V, C> {
    fn clone(&self) -> Self {
        Self {
            open: Rc::clone(&self.open),
            types: PhantomData,
        }
    }
}

impl<K: ?Sized, V, C> fmt::Debug for Table<K, V, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("name", &self.open.name)
            .finish_non_exhaustive()
    }
}

pub(crate) fn table_error(table: &str, operation: &'static str, source: wit::TableError) -> Error {
    Error::Table {
        table: table.to_string(),
        operation,
        source: source.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_errors_map_to_same_case() {
        let cases = [
            (
                wit::TableError::Undeclared("t".to_string()),
                TableError::Undeclared("t".to_string()),
            ),
            (wit::TableError::KeyTooLarge(5), TableError::KeyTooLarge(5)),
            (
                wit::TableError::ValueTooLarge(9),
                TableError::ValueTooLarge(9),
            ),
            (
                wit::TableError::Storage("disk".to_string()),
                TableError::Storage("disk".to_string()),
            ),
            (
                wit::TableError::WrongKind("windowed".to_string()),
                TableError::WrongKind("windowed".to_string()),
            ),
            (
                wit::TableError::UnknownEvent(17),
                TableError::UnknownEvent(17),
            ),
            (
                wit::TableError::NoEventTime("no field ts".to_string()),
                TableError::NoEventTime("no field ts".to_string()),
            ),
            (
                wit::TableError::InvalidWindow(wit::Window { start: 5, end: 15 }),
                TableError::InvalidWindow(Window::new(5, 15)),
            ),
            (
                wit::TableError::WindowClosed(wit::Window { start: 0, end: 10 }),
                TableError::WindowClosed(Window::new(0, 10)),
            ),
        ];

        for (wit_error, expected) in cases {
            assert_eq!(TableError::from(wit_error), expected);
        }
    }

    #[test]
    fn table_error_debug_text() {
        assert_eq!(
            format!("{:?}", TableError::Undeclared("not-declared".to_string())),
            "Undeclared(\"not-declared\")"
        );
        assert_eq!(
            format!("{:?}", TableError::ValueTooLarge(2_097_152)),
            "ValueTooLarge(2097152)"
        );
        assert_eq!(
            format!("{:?}", TableError::WindowClosed(Window::new(0, 60_000))),
            "WindowClosed(Window { start: 0, end: 60000 })"
        );
    }

    #[test]
    fn table_error_display_text() {
        assert_eq!(
            TableError::Undeclared("x".to_string()).to_string(),
            "table \"x\" is not declared in the agent's tables list"
        );
        assert_eq!(
            TableError::KeyTooLarge(300).to_string(),
            "key is 300 bytes, larger than the agent's max_key_bytes limit"
        );
        assert_eq!(
            TableError::Storage("io error".to_string()).to_string(),
            "storage failed: io error"
        );
    }

    #[test]
    fn wrong_kind_display_names_types_to_use() {
        assert_eq!(
            TableError::WrongKind("windowed".to_string()).to_string(),
            "table kind \"windowed\" does not match the type that opened it, so open windowed \
             tables with WindowedTable and others with Table or SetTable, or change the table's \
             kind in the host config"
        );
    }

    #[test]
    fn window_error_display_text() {
        assert_eq!(
            TableError::UnknownEvent(17).to_string(),
            "no event at offset 17 in the batch being handled, so call this only from \
             Agent::handle with its event"
        );
        assert_eq!(
            TableError::NoEventTime("value has no field \"ts\"".to_string()).to_string(),
            "event has no usable event time, so it belongs to no window: value has no field \"ts\""
        );
        assert_eq!(
            TableError::InvalidWindow(Window::new(5, 15)).to_string(),
            "window [5, 15) is not a window of this table (wrong start or length), so use one \
             returned by windows, window_at or range"
        );
        assert_eq!(
            TableError::WindowClosed(Window::new(0, 60_000)).to_string(),
            "window [0, 60000) has closed, so it can no longer be written"
        );
    }

    #[test]
    fn prefix_end_is_next_key_after_prefix() {
        assert_eq!(prefix_end(b"k"), Some(b"l".to_vec()));
        assert_eq!(prefix_end(&[0x61, 0xff]), Some(vec![0x62]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
