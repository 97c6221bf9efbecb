//! Counts records per key and time window, and reports each window when it
//! closes.
//!
//! The windowed table `window-counts` is keyed by the record key as raw
//! bytes, so empty and non-UTF-8 keys work, and a record without a key
//! counts under the empty key. Each record adds one to every open window
//! that covers its event time, so with hopping windows each window keeps
//! its own count. The value is the count as a JSON integer. A record too
//! late for any open window is not counted.
//!
//! A record whose key is `report:` followed by a key is not counted. The
//! agent instead sends one record to `window-reports`, keyed by that key,
//! whose value is the JSON object
//! `{"key":"<key>","time":<ms>,"current":<n>,"delta":<n>,"now":<n>,"range":[[<start>,<end>,<n>],...]}`.
//! `time` is the report's event time. `current`, `delta` and `now` are the
//! key's counts in the window of that time, in the window 10 s earlier and
//! in the window of the wall-clock time, or `null` where there is none.
//! `range` lists every window of the key that starts in the minute up to
//! the event time.
//!
//! When a window closes, the agent sends one record to `window-closes`,
//! keyed by the table key, whose value is the JSON object
//! `{"key":"<key>","start":<ms>,"end":<ms>,"count":<n>}` with the fields in
//! that order. `key` is the key as UTF-8, with invalid bytes replaced by
//! U+FFFD, and `start` and `end` are the window's bounds in milliseconds
//! since the Unix epoch.

use std::borrow::Cow;

use serde::Serialize;
use tablehost_guest::{
    export_agent, output, Agent, ClosedWindow, Error, Event, Window, WindowedTable,
};

/// The windowed table that stores the counts.
const COUNTS_TABLE: &str = "window-counts";

/// The output topic that receives one record per closed window.
const CLOSES_TOPIC: &str = "window-closes";

/// The output topic that receives the reports.
const REPORTS_TOPIC: &str = "window-reports";

/// The key prefix of a record that requests a report.
const REPORT_PREFIX: &[u8] = b"report:";

struct WindowedCounter;

impl Agent for WindowedCounter {
    fn handle(event: &Event) -> Result<(), Error> {
        let counts: WindowedTable<Vec<u8>, u64> = WindowedTable::open(COUNTS_TABLE)?;
        let key = event.key_bytes();

        if let Some(reported) = key.strip_prefix(REPORT_PREFIX) {
            let time = counts.event_time(event)?;
            let range = counts
                .range(reported, time - 60_000, time)?
                .into_iter()
                .map(|(window, count)| (window.start, window.end, count))
                .collect();
            let report = Report {
                key: String::from_utf8_lossy(reported),
                time,
                current: counts.current(event, reported)?,
                delta: counts.delta(event, reported, 10_000)?,
                now: counts.now(reported)?,
                range,
            };
            return output::send_json(REPORTS_TOPIC, Some(reported), &report);
        }

        counts.update_or_default(event, key, |count| count + 1)?;
        Ok(())
    }

    fn on_window_close(closed: &ClosedWindow) -> Result<(), Error> {
        let count: u64 = closed.value_json()?;
        let record = WindowClose::new(&closed.key, closed.window, count);

        output::send_json(CLOSES_TOPIC, Some(&closed.key), &record)
    }
}

export_agent!(WindowedCounter);

/// The value of a record sent to `window-reports`, fields in this order.
#[derive(Debug, Serialize)]
struct Report<'a> {
    key: Cow<'a, str>,
    time: i64,
    current: Option<u64>,
    delta: Option<u64>,
    now: Option<u64>,
    range: Vec<(i64, i64, u64)>,
}

/// The value of a record sent to `window-closes`. Serde writes the fields
/// in declaration order.
#[derive(Debug, Serialize)]
struct WindowClose<'a> {
    key: Cow<'a, str>,
    start: i64,
    end: i64,
    count: u64,
}

impl<'a> WindowClose<'a> {
    fn new(key: &'a [u8], window: Window, count: u64) -> Self {
        Self {
            key: String::from_utf8_lossy(key),
            start: window.start,
            end: window.end,
            count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(key: &[u8], window: Window, count: u64) -> String {
        serde_json::to_string(&WindowClose::new(key, window, count)).unwrap()
    }

    #[test]
    fn close_record_has_fields_in_order() {
        assert_eq!(
            json(b"home", Window::new(60_000, 120_000), 3),
            r#"{"key":"home","start":60000,"end":120000,"count":3}"#
        );
    }

    #[test]
    fn close_record_of_empty_key() {
        assert_eq!(
            json(b"", Window::new(0, 10_000), 1),
            r#"{"key":"","start":0,"end":10000,"count":1}"#
        );
    }

    #[test]
    fn close_record_replaces_invalid_utf8() {
        assert_eq!(
            json(b"a\xffb", Window::new(-10_000, 0), 12),
            "{\"key\":\"a\u{fffd}b\",\"start\":-10000,\"end\":0,\"count\":12}"
        );
    }

    #[test]
    fn close_record_escapes_json_characters() {
        assert_eq!(
            json(b"say \"hi\"\n", Window::new(5_000, 15_000), 2),
            r#"{"key":"say \"hi\"\n","start":5000,"end":15000,"count":2}"#
        );
    }
}
