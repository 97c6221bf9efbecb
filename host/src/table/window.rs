//! Time windows of windowed tables: which windows an instant belongs to,
//! how a window's entry is keyed in the store, and when a window closes.
//!
//! A windowed table stores one entry per key and window under the key
//! `len(key) as u32 BE | key | start`, where `start` is the window start
//! with its sign bit flipped, big-endian, so the windows of one key are
//! adjacent and sorted by start. Windows of one table all have the same
//! size, so the start determines the window.
//!
//! Each partition also stores its *stream time*, the largest event time
//! seen, under [`STREAM_TIME_KEY`]. No table key encodes to that key,
//! because keys are limited far below 4 GiB. Being an ordinary entry, the
//! stream time goes to the changelog with the windows, so a recovered
//! partition closes windows exactly where the lost one would have.

use crate::config::{WindowConfig, WindowKind};

/// The largest event time accepted, in milliseconds either side of the
/// epoch. Event times beyond it are rejected, so window arithmetic on them
/// stays far inside `i64`; times a guest passes in saturate instead.
pub const MAX_EVENT_TIME: i64 = 1 << 53;

/// The store key of a partition's stream time.
pub const STREAM_TIME_KEY: &[u8] = &[0xff, 0xff, 0xff, 0xff];

/// A window: `start` inclusive, `end` exclusive, in milliseconds since the
/// Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    /// The first instant inside the window.
    pub start: i64,
    /// The first instant after the window.
    pub end: i64,
}

/// The windows of one table, from its `[tables.window]` config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    kind: WindowKind,
    size: i64,
    step: i64,
    expires: i64,
    time_field: Option<String>,
}

impl WindowSpec {
    /// Creates the spec of a validated window config.
    pub fn new(config: &WindowConfig) -> Self {
        let step = match config.kind {
            WindowKind::Tumbling => config.size_ms,
            WindowKind::Hopping => config.step_ms.unwrap_or(config.size_ms),
            WindowKind::Sliding => 1,
        };
        Self {
            kind: config.kind,
            size: config.size_ms,
            step,
            expires: config.expires_ms,
            time_field: config.time_field.clone(),
        }
    }

    /// Returns the window size in milliseconds.
    pub fn size(&self) -> i64 {
        self.size
    }

    /// Returns every window that covers `time`, by ascending start.
    pub fn windows_covering(&self, time: i64) -> Vec<Window> {
        if self.kind == WindowKind::Sliding {
            return vec![self.window_at(time)];
        }
        let last = self.window_at(time).start;
        let mut windows = Vec::new();
        let mut start = last;
        // A window covers `time` when start <= time < start + size.
        while start > time.saturating_sub(self.size) {
            windows.push(Window {
                start,
                end: start.saturating_add(self.size),
            });
            start = start.saturating_sub(self.step);
        }
        windows.reverse();
        windows
    }

    /// Returns the window that covers `time` and starts last.
    pub fn window_at(&self, time: i64) -> Window {
        let start = match self.kind {
            WindowKind::Sliding => time.saturating_sub(self.size - 1),
            WindowKind::Tumbling | WindowKind::Hopping => {
                time.saturating_sub(time.rem_euclid(self.step))
            }
        };
        Window {
            start,
            end: start.saturating_add(self.size),
        }
    }

    /// Returns whether `window` is one of this table's windows.
    pub fn is_valid(&self, window: Window) -> bool {
        window.end.checked_sub(window.start) == Some(self.size)
            && window.start.rem_euclid(self.step) == 0
    }

    /// Returns whether `window` has closed at `stream_time`: its end plus
    /// the table's `expires` is not after the stream time.
    pub fn is_closed(&self, window: Window, stream_time: Option<i64>) -> bool {
        stream_time.is_some_and(|now| window.end.saturating_add(self.expires) <= now)
    }

    /// Returns the stream time at which `window` closes.
    pub fn closes_at(&self, window: Window) -> i64 {
        window.end.saturating_add(self.expires)
    }

    /// Returns the event time of a record: the field named in the config
    /// of its JSON value, or else its timestamp.
    ///
    /// # Errors
    ///
    /// Returns what is missing or malformed, for the guest and the log.
    pub fn event_time(
        &self,
        timestamp_ms: Option<i64>,
        value: Option<&[u8]>,
    ) -> Result<i64, String> {
        let time = self.raw_event_time(timestamp_ms, value)?;
        if !(-MAX_EVENT_TIME..=MAX_EVENT_TIME).contains(&time) {
            return Err(format!(
                "the event time {time} is outside the supported range of ±{MAX_EVENT_TIME} ms \
                 (about ±285,000 years) around the Unix epoch"
            ));
        }
        Ok(time)
    }

    fn raw_event_time(
        &self,
        timestamp_ms: Option<i64>,
        value: Option<&[u8]>,
    ) -> Result<i64, String> {
        let Some(field) = &self.time_field else {
            return timestamp_ms.ok_or_else(|| {
                "the record has no timestamp; produce records with timestamps or set \
                 window.time_field"
                    .to_owned()
            });
        };
        let Some(value) = value else {
            return Err(format!(
                "the record has no value to read field {field:?} from"
            ));
        };
        let json: serde_json::Value = serde_json::from_slice(value).map_err(|e| {
            format!("the record value is not JSON ({e}), so field {field:?} cannot be read")
        })?;
        match json.get(field) {
            Some(serde_json::Value::String(text)) => parse_utc(text).ok_or_else(|| {
                format!(
                    "field {field:?} is {text:?}, not a time of the form \"YYYY-MM-DD HH:MM:SS\" \
                     (UTC, optional fraction, 'T' or space) or an integer of milliseconds"
                )
            }),
            Some(time) => time.as_i64().ok_or_else(|| {
                format!("field {field:?} is {time}, not an integer of milliseconds")
            }),
            None => Err(format!("the record value has no field {field:?}")),
        }
    }

    /// Returns the store key of `key` in the window that starts at `start`.
    pub fn store_key(key: &[u8], start: i64) -> Vec<u8> {
        let mut out = Vec::with_capacity(key.len() + 12);
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&((start as u64) ^ (1 << 63)).to_be_bytes());
        out
    }

    /// Returns the prefix shared by the store keys of `key`'s windows.
    pub fn key_prefix(key: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(key.len() + 4);
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
        out
    }

    /// Splits a store key into the table key and the window it belongs to,
    /// or returns `None` for the stream-time key or a key of another shape.
    pub fn parse_store_key(&self, stored: &[u8]) -> Option<(Vec<u8>, Window)> {
        let len = u32::from_be_bytes(stored.get(..4)?.try_into().ok()?) as usize;
        if stored.len() != 4 + len + 8 {
            return None;
        }
        let key = stored[4..4 + len].to_vec();
        let start = (u64::from_be_bytes(stored[4 + len..].try_into().ok()?) ^ (1 << 63)) as i64;
        Some((
            key,
            Window {
                start,
                end: start.saturating_add(self.size),
            },
        ))
    }
}

/// Parses a UTC time such as `2001-01-14 21:55:00`, `2001-01-14T21:55:00.250`
/// or `2001-01-14T21:55:00Z` into milliseconds since the Unix epoch. This
/// is the form `tablehost load` writes Parquet timestamps in.
fn parse_utc(text: &str) -> Option<i64> {
    let text = text.strip_suffix('Z').unwrap_or(text);
    let bytes = text.as_bytes();
    if bytes.len() < 19
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b' ' | b'T')
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let millis = match &text[19..] {
        "" => 0,
        fraction => {
            let digits = fraction.strip_prefix('.')?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Milliseconds: the first three digits, padded.
            let mut first = digits
                .bytes()
                .take(3)
                .map(|b| i64::from(b - b'0'))
                .collect::<Vec<_>>();
            first.resize(3, 0);
            first[0] * 100 + first[1] * 10 + first[2]
        }
    };
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

/// Returns the number of days from 1970-01-01 to the given date of the
/// proleptic Gregorian calendar.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Count from 0000-03-01, so the leap day ends a year.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: WindowKind, size: i64, step: Option<i64>, expires: i64) -> WindowSpec {
        WindowSpec::new(&WindowConfig {
            kind,
            size_ms: size,
            step_ms: step,
            expires_ms: expires,
            time_field: None,
        })
    }

    fn w(start: i64, end: i64) -> Window {
        Window { start, end }
    }

    #[test]
    fn window_tumbling_covers_one_window() {
        let tumbling = spec(WindowKind::Tumbling, 10, None, 0);
        assert_eq!(tumbling.windows_covering(0), vec![w(0, 10)]);
        assert_eq!(tumbling.windows_covering(9), vec![w(0, 10)]);
        assert_eq!(tumbling.windows_covering(10), vec![w(10, 20)]);
        assert_eq!(tumbling.windows_covering(-1), vec![w(-10, 0)]);
        assert_eq!(tumbling.window_at(25), w(20, 30));
        // A guest may ask for any time; the extremes saturate, not panic.
        assert_eq!(tumbling.window_at(i64::MIN).start, i64::MIN);
        assert_eq!(tumbling.windows_covering(i64::MAX).len(), 1);
    }

    #[test]
    fn window_hopping_end_is_exclusive() {
        let hopping = spec(WindowKind::Hopping, 10_000, Some(5_000), 0);
        assert_eq!(
            hopping.windows_covering(10_000),
            vec![w(5_000, 15_000), w(10_000, 20_000)]
        );
        assert_eq!(
            hopping.windows_covering(4_999),
            vec![w(-5_000, 5_000), w(0, 10_000)]
        );
        assert_eq!(hopping.window_at(12_000), w(10_000, 20_000));
        // Events every 2 s: window [0, 10 s) contains 0, 2, 4, 6 and 8 s.
        let in_first = (0..20)
            .map(|i| i * 2_000)
            .filter(|t| hopping.windows_covering(*t).contains(&w(0, 10_000)))
            .count();
        assert_eq!(in_first, 5);
    }

    #[test]
    fn window_sliding_ends_with_the_event() {
        let sliding = spec(WindowKind::Sliding, 1_000, None, 0);
        assert_eq!(sliding.windows_covering(5_000), vec![w(4_001, 5_001)]);
        assert!(sliding.is_valid(w(4_001, 5_001)));
        assert!(!sliding.is_valid(w(4_001, 5_000)));
    }

    #[test]
    fn window_validity_and_closing() {
        let hopping = spec(WindowKind::Hopping, 10, Some(5), 3);
        assert!(hopping.is_valid(w(5, 15)));
        assert!(!hopping.is_valid(w(6, 16)));
        assert!(!hopping.is_valid(w(5, 16)));
        assert!(!hopping.is_closed(w(0, 10), None));
        assert!(!hopping.is_closed(w(0, 10), Some(12)));
        assert!(hopping.is_closed(w(0, 10), Some(13)));
        assert_eq!(hopping.closes_at(w(0, 10)), 13);
    }

    #[test]
    fn window_store_keys_sort_by_key_then_start() {
        let tumbling = spec(WindowKind::Tumbling, 10, None, 0);
        let keys = [
            WindowSpec::store_key(b"a", -10),
            WindowSpec::store_key(b"a", 0),
            WindowSpec::store_key(b"a", 10),
            WindowSpec::store_key(b"b", -20),
        ];
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
        assert_eq!(
            tumbling.parse_store_key(&keys[0]),
            Some((b"a".to_vec(), w(-10, 0)))
        );
        assert!(keys[0].starts_with(&WindowSpec::key_prefix(b"a")));
        assert_eq!(tumbling.parse_store_key(STREAM_TIME_KEY), None);
    }

    #[test]
    fn window_event_time_from_field_or_timestamp() {
        let mut config = WindowConfig {
            kind: WindowKind::Tumbling,
            size_ms: 10,
            step_ms: None,
            expires_ms: 0,
            time_field: None,
        };
        let by_timestamp = WindowSpec::new(&config);
        assert_eq!(by_timestamp.event_time(Some(7), None), Ok(7));
        assert_eq!(
            by_timestamp.event_time(None, None),
            Err("the record has no timestamp; produce records with timestamps or set window.time_field".into())
        );
        config.time_field = Some("ts".into());
        let by_field = WindowSpec::new(&config);
        assert_eq!(by_field.event_time(Some(7), Some(br#"{"ts": 42}"#)), Ok(42));
        assert_eq!(
            by_field.event_time(Some(7), Some(br#"{"ts": 1.5}"#)),
            Err("field \"ts\" is 1.5, not an integer of milliseconds".into())
        );
        assert_eq!(
            by_field.event_time(None, Some(br#"{"ts": "1970-01-02 00:00:01.5"}"#)),
            Ok(86_401_500)
        );
        assert_eq!(
            by_field.event_time(None, Some(br#"{"ts": "2001-01-14T21:55:00Z"}"#)),
            Ok(979_509_300_000)
        );
        assert_eq!(
            by_field.event_time(None, Some(br#"{"ts": "2000-02-29 00:00:00"}"#)),
            Ok(951_782_400_000)
        );
        assert_eq!(
            by_field.event_time(None, Some(br#"{"ts": "2001-13-01 00:00:00"}"#)),
            Err("field \"ts\" is \"2001-13-01 00:00:00\", not a time of the form \"YYYY-MM-DD HH:MM:SS\" (UTC, optional fraction, 'T' or space) or an integer of milliseconds".into())
        );
        assert_eq!(
            by_field.event_time(None, Some(br#"{"ts": -9223372036854775000}"#)),
            Err("the event time -9223372036854775000 is outside the supported range of ±9007199254740992 ms (about ±285,000 years) around the Unix epoch".into())
        );
        assert_eq!(
            by_field.event_time(Some(7), Some(br#"{"at": 1}"#)),
            Err("the record value has no field \"ts\"".into())
        );
    }
}
