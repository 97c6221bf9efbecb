//! Typed windowed tables over the host's `windowed-table` resource.
//!
//! A [`WindowedTable`] stores a value per key and time [`Window`]. The
//! table's host config chooses the windows (tumbling, hopping or sliding)
//! and where the event time comes from (the record timestamp or a field of
//! the JSON value). Methods that take an [`Event`] name it to the host by
//! its offset, and the host looks up its time in the batch being handled.
//! Handles are cached per name for the instance's life, as for
//! [`Table`](crate::Table).

use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::rc::Rc;

use crate::bindings::tablehost::agent::tables as wit;
use crate::table::table_error;
use crate::window::decode_window_value;
use crate::{Codec, Error, Event, Json, Key, Window};

/// A host windowed-table handle and the name it was opened with.
struct OpenWindowedTable {
    name: String,
    handle: wit::WindowedTable,
}

thread_local! {
    /// Windowed-table handles opened by this instance, by table name. See
    /// the plain tables' cache in `table.rs` for why this is a thread-local
    /// `BTreeMap`.
    static OPEN_WINDOWED_TABLES: RefCell<BTreeMap<String, Rc<OpenWindowedTable>>> =
        const { RefCell::new(BTreeMap::new()) };
}

/// A host windowed table with keys of type `K` and values of type `V`
/// encoded by the codec `C`, one value per key and [`Window`].
///
/// Keys are taken in any borrowed form of `K`, as for
/// [`Table`](crate::Table). Every operation applies to the partition of the
/// event being handled. Writes become durable when the host commits the
/// batch, and are discarded if the batch fails.
///
/// Counting goes through [`WindowedTable::update`], which writes to every
/// open window that covers the event. A hopping table with windows of 10
/// seconds every 5 seconds places each event in two windows, and each
/// window keeps its own count. When a window closes, the host passes its
/// final value to [`Agent::on_window_close`](crate::Agent::on_window_close)
/// and deletes it.
///
/// ```no_run
/// use tablehost_guest::{Event, WindowedTable};
///
/// # fn example(event: &Event) -> Result<(), tablehost_guest::Error> {
/// let clicks: WindowedTable<str, u64> = WindowedTable::open("clicks-per-minute")?;
///
/// // Add one click to every open window of the event's time.
/// clicks.update_or_default(event, "home", |count| count + 1)?;
///
/// // The count of the window that contains the event, and of the one a
/// // minute earlier.
/// let now = clicks.current(event, "home")?.unwrap_or(0);
/// let before = clicks.delta(event, "home", 60_000)?.unwrap_or(0);
/// # let _ = (now, before);
/// # Ok(())
/// # }
/// ```
pub struct WindowedTable<K: ?Sized, V, C = Json> {
    open: Rc<OpenWindowedTable>,
    // As in `Table`: no `K`, `V` or `C` is stored, and the raw pointer
    // allows an unsized `K`.
    types: PhantomData<(*const K, V, C)>,
}

impl<K: ?Sized, V, C: Codec<V>> WindowedTable<K, V, C> {
    /// Opens the windowed table `name`.
    ///
    /// The first successful open of a name calls the host, later ones reuse
    /// its handle. Failures are not cached.
    ///
    /// # Errors
    ///
    /// [`Error::Table`] with [`TableError::Undeclared`](crate::TableError::Undeclared)
    /// when the agent's configuration does not declare the table, and with
    /// [`TableError::WrongKind`](crate::TableError::WrongKind) when the
    /// table is not windowed.
    pub fn open(name: &str) -> Result<Self, Error> {
        let cached = OPEN_WINDOWED_TABLES.with(|tables| tables.borrow().get(name).cloned());
        let open = match cached {
            Some(open) => open,
            None => {
                let handle = wit::WindowedTable::open(name)
                    .map_err(|source| table_error(name, "open", source))?;
                let open = Rc::new(OpenWindowedTable {
                    name: name.to_string(),
                    handle,
                });
                OPEN_WINDOWED_TABLES.with(|tables| {
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

    /// Returns the event time of `event` in milliseconds since the Unix
    /// epoch, as the table's config defines it.
    ///
    /// # Errors
    ///
    /// [`Error::Table`] with [`TableError::NoEventTime`](crate::TableError::NoEventTime)
    /// when the event has no usable time, and with
    /// [`TableError::UnknownEvent`](crate::TableError::UnknownEvent) when
    /// `event` is not of the batch being handled.
    pub fn event_time(&self, event: &Event) -> Result<i64, Error> {
        self.open
            .handle
            .event_time(event.offset)
            .map_err(|source| table_error(self.name(), "event-time", source))
    }

    /// Returns the open windows that cover the event time of `event`, by
    /// ascending start.
    ///
    /// A tumbling or sliding table returns at most one window, a hopping
    /// table at most its size divided by its step. Windows that have closed
    /// are left out, so a late event can get an empty list.
    ///
    /// # Errors
    ///
    /// As for [`WindowedTable::event_time`].
    pub fn windows(&self, event: &Event) -> Result<Vec<Window>, Error> {
        let windows = self
            .open
            .handle
            .windows(event.offset)
            .map_err(|source| table_error(self.name(), "windows", source))?;
        Ok(windows.into_iter().map(Window::from).collect())
    }

    /// Returns the window that covers `time` and starts last. For a
    /// tumbling table this is the only window that covers `time`. The
    /// window may have closed.
    pub fn window_at(&self, time: i64) -> Window {
        self.open.handle.window_at(time).into()
    }

    /// Returns the host's wall-clock time in milliseconds since the Unix
    /// epoch.
    pub fn now_ms(&self) -> i64 {
        self.open.handle.now()
    }

    /// Returns the value of `key` in `window`, or `None` when it has none.
    /// A closed window has been deleted, so it has no values.
    ///
    /// # Errors
    ///
    /// [`Error::Table`] when the host rejects the read, such as
    /// [`TableError::InvalidWindow`](crate::TableError::InvalidWindow), and
    /// [`Error::DecodeWindow`] when the stored bytes are not a valid `C`
    /// encoding of `V`.
    pub fn get<Q>(&self, key: &Q, window: Window) -> Result<Option<V>, Error>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        self.get_encoded(&key.encode_key(), window)
    }

    /// Stores `value` for `key` in `window`, replacing any earlier value.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] when the codec rejects the value, and
    /// [`Error::Table`] when the host rejects the write, such as
    /// [`TableError::WindowClosed`](crate::TableError::WindowClosed).
    /// Nothing is written in either case.
    pub fn set<Q>(&self, key: &Q, window: Window, value: &V) -> Result<(), Error>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        self.set_encoded(&key.encode_key(), window, value)
    }

    /// Removes `key` from `window`. Removing a missing entry succeeds and
    /// does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Table`] when the host rejects the delete.
    pub fn delete<Q>(&self, key: &Q, window: Window) -> Result<(), Error>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        self.open
            .handle
            .delete(&key.encode_key(), window.into())
            .map_err(|source| table_error(self.name(), "delete", source))
    }

    /// Replaces the value of `key` in every open window that covers the
    /// event's time with `f` of the old value (`None` when the window has
    /// none), and returns those windows with their new values, by ascending
    /// start.
    ///
    /// `f` runs once per window, so in a hopping table each window keeps its
    /// own value. An event too late for any open window writes nothing and
    /// returns an empty list.
    ///
    /// # Errors
    ///
    /// As for [`WindowedTable::windows`], [`WindowedTable::get`] and
    /// [`WindowedTable::set`]. Windows before the failed one stay written
    /// until the batch fails, which discards them.
    pub fn update<Q, F>(&self, event: &Event, key: &Q, f: F) -> Result<Vec<(Window, V)>, Error>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
        F: FnMut(Option<V>) -> V,
    {
        let key = key.encode_key();
        let windows = self.windows(event)?;

        update_windows(
            windows,
            |window| self.get_encoded(&key, window),
            |window, value| self.set_encoded(&key, window, value),
            f,
        )
    }

    /// Like [`WindowedTable::update`], with `V::default()` as the old value
    /// of a window that has none.
    ///
    /// # Errors
    ///
    /// As for [`WindowedTable::update`].
    pub fn update_or_default<Q, F>(
        &self,
        event: &Event,
        key: &Q,
        mut f: F,
    ) -> Result<Vec<(Window, V)>, Error>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
        F: FnMut(V) -> V,
        V: Default,
    {
        self.update(event, key, |old| f(old.unwrap_or_default()))
    }

    /// Returns the value of `key` in the window at the event's time, the
    /// one [`WindowedTable::window_at`] returns for it.
    ///
    /// # Errors
    ///
    /// As for [`WindowedTable::event_time`] and [`WindowedTable::get`].
    pub fn current<Q>(&self, event: &Event, key: &Q) -> Result<Option<V>, Error>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        let time = self.event_time(event)?;
        self.get(key, self.window_at(time))
    }

    /// Returns the value of `key` in the window at `ms` milliseconds before
    /// the event's time, such as the previous tumbling window when `ms` is
    /// the window size. That window may have closed, and then has no
    /// value.
    ///
    /// # Errors
    ///
    /// As for [`WindowedTable::current`].
    pub fn delta<Q>(&self, event: &Event, key: &Q, ms: i64) -> Result<Option<V>, Error>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        let time = self.event_time(event)?;
        self.get(key, self.window_at(time.saturating_sub(ms)))
    }

    /// Returns the value of `key` in the window at the host's wall-clock
    /// time. Unlike [`WindowedTable::current`], this works outside
    /// [`Agent::handle`](crate::Agent::handle) too.
    ///
    /// # Errors
    ///
    /// As for [`WindowedTable::get`].
    pub fn now<Q>(&self, key: &Q) -> Result<Option<V>, Error>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        self.get(key, self.window_at(self.now_ms()))
    }

    /// Returns the windows of `key` whose start lies between `from` and
    /// `to`, both included, with their values, by ascending start.
    ///
    /// The host returns at most 10,000 windows per call, so this calls it
    /// again from after the last start until a call returns none.
    ///
    /// # Errors
    ///
    /// [`Error::Table`] when the host rejects a read, and
    /// [`Error::DecodeWindow`] when a stored value is not a valid `C`
    /// encoding of `V`.
    pub fn range<Q>(&self, key: &Q, from: i64, to: i64) -> Result<Vec<(Window, V)>, Error>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        let key = key.encode_key();
        let mut entries = Vec::new();
        let mut next_from = Some(from);

        while let Some(from) = next_from.filter(|from| *from <= to) {
            let page = self
                .open
                .handle
                .range(&key, from, to)
                .map_err(|source| table_error(self.name(), "range", source))?;
            let Some(last) = page.last() else {
                break;
            };
            // Starts ascend within a page, so the next page begins just
            // after the last start. A start of `i64::MAX` ends the range.
            next_from = last.window.start.checked_add(1);

            entries.extend(decode_entries::<V, C>(self.name(), &key, page)?);
        }
        Ok(entries)
    }

    fn get_encoded(&self, key: &[u8], window: Window) -> Result<Option<V>, Error> {
        let bytes = self
            .open
            .handle
            .get(key, window.into())
            .map_err(|source| table_error(self.name(), "get", source))?;

        match bytes {
            None => Ok(None),
            Some(bytes) => decode_window_value::<V, C>(self.name(), key, window, &bytes).map(Some),
        }
    }

    fn set_encoded(&self, key: &[u8], window: Window, value: &V) -> Result<(), Error> {
        let bytes = C::encode(value).map_err(|source| Error::Encode {
            table: self.name().to_string(),
            codec: C::NAME,
            source,
        })?;

        self.open
            .handle
            .set(key, window.into(), &bytes)
            .map_err(|source| table_error(self.name(), "set", source))
    }
}

/// Writes `f(read(window))` to each of `windows` in order and returns the
/// windows with the values written. Stops at the first error.
fn update_windows<V, F>(
    windows: Vec<Window>,
    mut read: impl FnMut(Window) -> Result<Option<V>, Error>,
    mut write: impl FnMut(Window, &V) -> Result<(), Error>,
    mut f: F,
) -> Result<Vec<(Window, V)>, Error>
where
    F: FnMut(Option<V>) -> V,
{
    let mut updated = Vec::with_capacity(windows.len());
    for window in windows {
        let value = f(read(window)?);
        write(window, &value)?;
        updated.push((window, value));
    }
    Ok(updated)
}

/// Decodes one page of a `range` result for `key` of `table`.
fn decode_entries<V, C: Codec<V>>(
    table: &str,
    key: &[u8],
    page: Vec<wit::WindowedEntry>,
) -> Result<Vec<(Window, V)>, Error> {
    page.into_iter()
        .map(|entry| {
            let window = Window::from(entry.window);
            let value = decode_window_value::<V, C>(table, key, window, &entry.value)?;
            Ok((window, value))
        })
        .collect()
}

impl<K: ?Sized, V, C> Clone for WindowedTable<K, V, C> {
    fn clone(&self) -> Self {
        Self {
            open: Rc::clone(&self.open),
            types: PhantomData,
        }
    }
}

impl<K: ?Sized, V, C> fmt::Debug for WindowedTable<K, V, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WindowedTable")
            .field("name", &self.open.name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Postcard;

    /// Returns the windows of a hopping table with 10 s windows every 5 s
    /// that cover the instant 12,000 ms.
    fn hopping_windows() -> Vec<Window> {
        vec![Window::new(5_000, 15_000), Window::new(10_000, 20_000)]
    }

    /// Runs `update_windows` over `store`, adding one to each window.
    fn count_in(
        store: &RefCell<BTreeMap<Window, u64>>,
        windows: Vec<Window>,
    ) -> Vec<(Window, u64)> {
        update_windows(
            windows,
            |window| Ok(store.borrow().get(&window).copied()),
            |window, value| {
                store.borrow_mut().insert(window, *value);
                Ok(())
            },
            |old| old.unwrap_or(0) + 1,
        )
        .unwrap()
    }

    #[test]
    fn update_counts_each_hopping_window() {
        let store = RefCell::new(BTreeMap::from([(Window::new(5_000, 15_000), 4)]));

        let updated = count_in(&store, hopping_windows());

        assert_eq!(
            updated,
            vec![
                (Window::new(5_000, 15_000), 5),
                (Window::new(10_000, 20_000), 1)
            ]
        );
        assert_eq!(store.borrow().get(&Window::new(5_000, 15_000)), Some(&5));
        assert_eq!(store.borrow().get(&Window::new(10_000, 20_000)), Some(&1));
    }

    #[test]
    fn update_without_open_windows_writes_nothing() {
        let store = RefCell::new(BTreeMap::new());

        let updated = count_in(&store, Vec::new());

        assert_eq!(updated, Vec::new());
        assert!(store.borrow().is_empty());
    }

    #[test]
    fn update_stops_at_first_failed_write() {
        let written = RefCell::new(Vec::new());

        let result = update_windows(
            hopping_windows(),
            |_| Ok(None),
            |window, value: &u64| {
                if window.start == 10_000 {
                    return Err(Error::msg("window closed"));
                }
                written.borrow_mut().push((window, *value));
                Ok(())
            },
            |old| old.unwrap_or(0) + 1,
        );

        assert_eq!(result.unwrap_err().to_string(), "window closed");
        assert_eq!(*written.borrow(), vec![(Window::new(5_000, 15_000), 1)]);
    }

    #[test]
    fn decode_entries_roundtrips_json() {
        let page = vec![
            wit::WindowedEntry {
                window: wit::Window {
                    start: 0,
                    end: 60_000,
                },
                value: <Json as Codec<u64>>::encode(&3).unwrap(),
            },
            wit::WindowedEntry {
                window: wit::Window {
                    start: 60_000,
                    end: 120_000,
                },
                value: <Json as Codec<u64>>::encode(&11).unwrap(),
            },
        ];

        let entries = decode_entries::<u64, Json>("clicks", b"home", page).unwrap();

        assert_eq!(
            entries,
            vec![
                (Window::new(0, 60_000), 3),
                (Window::new(60_000, 120_000), 11)
            ]
        );
    }

    #[test]
    fn decode_entries_roundtrips_postcard() {
        let value = (12_u32, "LAS".to_string());
        let page = vec![wit::WindowedEntry {
            window: wit::Window { start: -10, end: 0 },
            value: <Postcard as Codec<(u32, String)>>::encode(&value).unwrap(),
        }];

        let entries = decode_entries::<(u32, String), Postcard>("t", b"k", page).unwrap();

        assert_eq!(entries, vec![(Window::new(-10, 0), value)]);
    }

    #[test]
    fn decode_entries_error_names_window() {
        let page = vec![
            wit::WindowedEntry {
                window: wit::Window { start: 0, end: 10 },
                value: b"1".to_vec(),
            },
            wit::WindowedEntry {
                window: wit::Window { start: 10, end: 20 },
                value: b"true".to_vec(),
            },
        ];

        let error = decode_entries::<u64, Json>("clicks", b"home", page).unwrap_err();

        assert_eq!(
            error.to_string(),
            "table \"clicks\": failed to decode value of key \"home\" in window [10, 20) \
             with json: invalid type: boolean `true`, expected u64 at line 1 column 4"
        );
    }
}
