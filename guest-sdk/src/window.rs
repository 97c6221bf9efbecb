//! Time windows of windowed tables and the windows the host reports closed.
//!
//! [`Window`] is the SDK's copy of the WIT `window` record, with the
//! comparison and formatting traits that the generated type lacks.
//! [`ClosedWindow`] is the argument of
//! [`Agent::on_window_close`](crate::Agent::on_window_close).

use std::fmt;

use serde::de::DeserializeOwned;

use crate::bindings::tablehost::agent::tables as wit;
use crate::{Codec, CodecError, Error, Json};

/// A time window of a [`WindowedTable`](crate::WindowedTable), in
/// milliseconds since the Unix epoch.
///
/// `start` lies inside the window and `end` does not, so adjacent windows
/// never share an instant. Windows order by `start`, then by `end`. The
/// `Display` form is the half-open interval, such as `[60000, 120000)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    /// The first instant inside the window.
    pub start: i64,
    /// The first instant after the window.
    pub end: i64,
}

impl Window {
    /// Creates the window from `start` (inside) to `end` (outside).
    ///
    /// The host accepts only the windows of the table's configuration, so
    /// take windows from [`WindowedTable`](crate::WindowedTable) methods
    /// rather than building them.
    pub const fn new(start: i64, end: i64) -> Self {
        Self { start, end }
    }

    /// Returns whether the instant `time` lies inside the window.
    pub const fn contains(&self, time: i64) -> bool {
        self.start <= time && time < self.end
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

impl From<wit::Window> for Window {
    fn from(window: wit::Window) -> Self {
        Self::new(window.start, window.end)
    }
}

impl From<Window> for wit::Window {
    fn from(window: Window) -> Self {
        Self {
            start: window.start,
            end: window.end,
        }
    }
}

/// A window of a windowed table that has closed, with its final value.
///
/// The host passes one to [`Agent::on_window_close`](crate::Agent::on_window_close)
/// once per key and window, before it deletes the window. The key and value
/// are the bytes the agent stored. Decode the value with the table's codec,
/// such as [`ClosedWindow::value_json`] for the default [`Json`].
///
/// The fields are public, so an agent's unit tests can build one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedWindow {
    /// The windowed table's name.
    pub table: String,
    /// The key as the agent wrote it, encoded by [`Key`](crate::Key).
    pub key: Vec<u8>,
    /// The window that closed.
    pub window: Window,
    /// The window's final value, encoded by the table's codec.
    pub value: Vec<u8>,
}

impl ClosedWindow {
    /// Returns the key as UTF-8 text, which is how `str` and `String` keys
    /// are encoded.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKeyUtf8`] when the key is not UTF-8.
    pub fn key_str(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.key).map_err(|source| Error::InvalidKeyUtf8 {
            table: self.table.clone(),
            key: self.key.escape_ascii().to_string(),
            source,
        })
    }

    /// Decodes the value as JSON into `V`, for a table with the default
    /// [`Json`] codec.
    ///
    /// # Errors
    ///
    /// [`Error::DecodeWindow`] when the value is not JSON or does not match
    /// `V`.
    pub fn value_json<V: DeserializeOwned>(&self) -> Result<V, Error> {
        // Not `decode_value::<Json, V>`: the `Json` codec also requires
        // `V: Serialize`, which reading a value does not need.
        serde_json::from_slice(&self.value).map_err(|source| {
            decode_error(
                &self.table,
                &self.key,
                self.window,
                <Json as Codec<serde_json::Value>>::NAME,
                CodecError::new(source),
            )
        })
    }

    /// Decodes the value with the codec `C`, such as
    /// `closed.decode_value::<Postcard, Stats>()`.
    ///
    /// # Errors
    ///
    /// [`Error::DecodeWindow`] when the codec rejects the bytes.
    pub fn decode_value<C: Codec<V>, V>(&self) -> Result<V, Error> {
        decode_window_value::<V, C>(&self.table, &self.key, self.window, &self.value)
    }
}

/// Decodes the value stored for `key` in `window` of `table`.
pub(crate) fn decode_window_value<V, C: Codec<V>>(
    table: &str,
    key: &[u8],
    window: Window,
    bytes: &[u8],
) -> Result<V, Error> {
    C::decode(bytes).map_err(|source| decode_error(table, key, window, C::NAME, source))
}

fn decode_error(
    table: &str,
    key: &[u8],
    window: Window,
    codec: &'static str,
    source: CodecError,
) -> Error {
    Error::DecodeWindow {
        table: table.to_string(),
        key: key.escape_ascii().to_string(),
        window,
        codec,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Postcard;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Stats {
        views: u64,
        last_page: String,
    }

    fn closed(key: &[u8], value: &[u8]) -> ClosedWindow {
        ClosedWindow {
            table: "views".to_string(),
            key: key.to_vec(),
            window: Window::new(60_000, 120_000),
            value: value.to_vec(),
        }
    }

    #[test]
    fn window_contains_start_not_end() {
        let window = Window::new(60_000, 120_000);

        assert!(!window.contains(59_999));
        assert!(window.contains(60_000));
        assert!(window.contains(119_999));
        assert!(!window.contains(120_000));
    }

    #[test]
    fn window_contains_negative_times() {
        let window = Window::new(-1_000, 0);

        assert!(window.contains(-1_000));
        assert!(window.contains(-1));
        assert!(!window.contains(0));
    }

    #[test]
    fn window_display_is_half_open_interval() {
        assert_eq!(Window::new(60_000, 120_000).to_string(), "[60000, 120000)");
        assert_eq!(Window::new(-5, 5).to_string(), "[-5, 5)");
    }

    #[test]
    fn windows_order_by_start_then_end() {
        let mut windows = vec![Window::new(10, 30), Window::new(0, 20), Window::new(10, 20)];

        windows.sort();

        assert_eq!(
            windows,
            vec![Window::new(0, 20), Window::new(10, 20), Window::new(10, 30)]
        );
    }

    #[test]
    fn window_converts_to_and_from_wit() {
        let wit_window = wit::Window::from(Window::new(5_000, 15_000));

        assert_eq!(wit_window.start, 5_000);
        assert_eq!(wit_window.end, 15_000);
        assert_eq!(Window::from(wit_window), Window::new(5_000, 15_000));
    }

    #[test]
    fn closed_key_str_returns_text() {
        assert_eq!(closed(b"home", b"3").key_str().unwrap(), "home");
        assert_eq!(closed(b"", b"3").key_str().unwrap(), "");
    }

    #[test]
    fn closed_key_str_rejects_invalid_utf8() {
        let error = closed(b"a\xffb", b"3").key_str().unwrap_err();

        assert!(matches!(error, Error::InvalidKeyUtf8 { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            "table \"views\": key \"a\\xffb\" is not valid UTF-8: \
             invalid utf-8 sequence of 1 bytes from index 1"
        );
    }

    #[test]
    fn closed_value_json_decodes_count() {
        assert_eq!(closed(b"home", b"42").value_json::<u64>().unwrap(), 42);
    }

    #[test]
    fn closed_value_json_decodes_struct() {
        let value = br#"{"views":7,"last_page":"/about"}"#;

        let stats: Stats = closed(b"home", value).value_json().unwrap();

        assert_eq!(
            stats,
            Stats {
                views: 7,
                last_page: "/about".to_string()
            }
        );
    }

    #[test]
    fn closed_value_json_error_names_key_and_window() {
        let error = closed(b"home", b"\"seven\"")
            .value_json::<u64>()
            .unwrap_err();

        assert!(
            matches!(error, Error::DecodeWindow { codec: "json", .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "table \"views\": failed to decode value of key \"home\" in window \
             [60000, 120000) with json: invalid type: string \"seven\", expected u64 \
             at line 1 column 7"
        );
    }

    #[test]
    fn closed_decode_value_with_postcard() {
        let stats = Stats {
            views: 300,
            last_page: "/".to_string(),
        };
        let bytes = <Postcard as Codec<Stats>>::encode(&stats).unwrap();

        let decoded = closed(b"home", &bytes)
            .decode_value::<Postcard, Stats>()
            .unwrap();

        assert_eq!(decoded, stats);
    }

    #[test]
    fn closed_decode_value_rejects_trailing_bytes() {
        let mut bytes = <Postcard as Codec<u64>>::encode(&7).unwrap();
        bytes.push(0);

        let error = closed(b"k", &bytes)
            .decode_value::<Postcard, u64>()
            .unwrap_err();

        assert_eq!(
            error.to_string(),
            "table \"views\": failed to decode value of key \"k\" in window \
             [60000, 120000) with postcard: 1 trailing bytes after the postcard value"
        );
    }

    #[test]
    fn window_value_roundtrips_json() {
        let stats = Stats {
            views: 12,
            last_page: "/pricing".to_string(),
        };
        let bytes = <Json as Codec<Stats>>::encode(&stats).unwrap();

        let decoded =
            decode_window_value::<Stats, Json>("views", b"home", Window::new(0, 10), &bytes)
                .unwrap();

        assert_eq!(bytes, br#"{"views":12,"last_page":"/pricing"}"#);
        assert_eq!(decoded, stats);
    }

    #[test]
    fn window_value_decode_error_escapes_key() {
        let error = decode_window_value::<u64, Json>("views", b"\x00k", Window::new(0, 10), b"x")
            .unwrap_err();

        assert_eq!(
            error.to_string(),
            "table \"views\": failed to decode value of key \"\\x00k\" in window [0, 10) \
             with json: expected value at line 1 column 1"
        );
    }
}
