//! The per-event entry point, the window-close handler, and the loops that
//! drive them from the component's exports.

#[cfg(any(target_arch = "wasm32", test))]
use std::panic::Location;

use crate::bindings::tablehost::agent::tables as wit;
use crate::{ClosedWindow, Error, Event, Window};

/// An agent's handling of one event, and of a window that closes.
///
/// The host hands events over in batches of one source partition, in
/// offset order. [`export_agent!`](crate::export_agent) turns an `Agent`
/// into the component's `handler` export, which calls [`Agent::handle`] for
/// each event of a batch in turn, and its `window-close` export, which
/// calls [`Agent::on_window_close`].
///
/// Returning `Err` (or panicking, which traps) discards every table write
/// and output record of the whole batch, not only those of this event. The
/// host then replays the batch one event at a time and sends each event
/// that fails again to the agent's dead-letter topic. A panic's location
/// and message go to stderr as one line, which the host quotes in its trap
/// report.
pub trait Agent {
    /// Handles one event. Table reads and writes made here apply to the
    /// event's partition of each table.
    ///
    /// # Errors
    ///
    /// The error's text reaches the host and the dead-letter topic, prefixed
    /// with the event's topic, partition and offset.
    fn handle(event: &Event) -> Result<(), Error>;

    /// Handles a window of a [`WindowedTable`](crate::WindowedTable) that
    /// has closed, once per key and window, with its final value. The
    /// default does nothing, so an agent without windowed tables need not
    /// implement it.
    ///
    /// Table operations and sends work as in [`Agent::handle`] and apply to
    /// the window's partition. Operations that take an [`Event`] fail with
    /// [`TableError::UnknownEvent`](crate::TableError::UnknownEvent).
    ///
    /// # Errors
    ///
    /// Returning `Err`, like a panic, discards this call's table writes and
    /// output records. The host logs the error text, which the SDK
    /// prefixes with the window, key and table, and deletes the window all
    /// the same.
    fn on_window_close(closed: &ClosedWindow) -> Result<(), Error> {
        let _ = closed;
        Ok(())
    }
}

/// Calls `A::handle` for each event in order and stops at the first error.
///
/// The `Err` text names the failed event's topic, partition and offset, so
/// that the host's log and dead-letter header point at the record.
pub fn handle_batch<A: Agent + ?Sized>(events: Vec<Event>) -> Result<(), String> {
    // Only inside a component: on the build machine the hook would change
    // the panic output of every test in the process.
    #[cfg(target_arch = "wasm32")]
    install_panic_hook();

    for event in &events {
        if let Err(error) = A::handle(event) {
            return Err(format!(
                "failed to handle event at topic {:?} partition {} offset {}: {error}",
                event.topic, event.partition, event.offset
            ));
        }
    }
    Ok(())
}

/// Calls `A::on_window_close` for the window that the host reports closed.
///
/// The `Err` text names the table, key and window, so that the host's log
/// points at the window.
pub fn close_window<A: Agent + ?Sized>(
    table: String,
    key: Vec<u8>,
    window: wit::Window,
    value: Vec<u8>,
) -> Result<(), String> {
    #[cfg(target_arch = "wasm32")]
    install_panic_hook();

    let closed = ClosedWindow {
        table,
        key,
        window: Window::from(window),
        value,
    };
    A::on_window_close(&closed).map_err(|error| {
        format!(
            "failed to handle close of window {} of key \"{}\" in table {:?}: {error}",
            closed.window,
            closed.key.escape_ascii(),
            closed.table
        )
    })
}

/// Installs, once per instance, a panic hook that writes the panic to
/// stderr as one line.
///
/// The default hook writes the location, the message and a note about
/// `RUST_BACKTRACE` on separate lines. The host's trap report quotes the
/// last line of the agent's stderr, which would be that note.
#[cfg(target_arch = "wasm32")]
fn install_panic_hook() {
    static INSTALL: std::sync::Once = std::sync::Once::new();

    INSTALL.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            eprintln!("{}", panic_line(info.location(), info.payload_as_str()));
        }));
    });
}

/// Formats a panic as one line, such as
/// `agent panicked at src/lib.rs:12:5: index out of bounds`.
#[cfg(any(target_arch = "wasm32", test))]
fn panic_line(location: Option<&Location<'_>>, message: Option<&str>) -> String {
    let location = match location {
        Some(location) => location.to_string(),
        None => "an unknown location".to_string(),
    };
    // A payload that is not a string, from `std::panic::panic_any`, has no
    // text to show.
    let message = message.unwrap_or("non-string panic payload");

    format!(
        "agent panicked at {location}: {}",
        message.replace('\n', " ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(offset: i64, value: &str) -> Event {
        Event {
            topic: "flights".to_string(),
            partition: 3,
            offset,
            timestamp_ms: None,
            key: None,
            value: Some(value.as_bytes().to_vec()),
            headers: Vec::new(),
        }
    }

    /// Fails on the value `bad`, succeeds on anything else.
    struct FailOnBad;

    impl Agent for FailOnBad {
        fn handle(event: &Event) -> Result<(), Error> {
            match event.value_str()? {
                "bad" => Err(Error::msg("value is bad")),
                _ => Ok(()),
            }
        }
    }

    /// Implements only `handle`, so it has the default close handler.
    struct NoCloseHandler;

    impl Agent for NoCloseHandler {
        fn handle(_event: &Event) -> Result<(), Error> {
            Ok(())
        }
    }

    /// Fails to close windows whose value is not a JSON count.
    struct DecodeOnClose;

    impl Agent for DecodeOnClose {
        fn handle(_event: &Event) -> Result<(), Error> {
            Ok(())
        }

        fn on_window_close(closed: &ClosedWindow) -> Result<(), Error> {
            closed.value_json::<u64>().map(drop)
        }
    }

    fn wit_window(start: i64, end: i64) -> wit::Window {
        wit::Window { start, end }
    }

    #[test]
    fn default_close_handler_succeeds() {
        let result = close_window::<NoCloseHandler>(
            "clicks".to_string(),
            b"home".to_vec(),
            wit_window(0, 60_000),
            b"not even json".to_vec(),
        );

        assert_eq!(result, Ok(()));
    }

    #[test]
    fn close_handler_receives_window() {
        let result = close_window::<DecodeOnClose>(
            "clicks".to_string(),
            b"home".to_vec(),
            wit_window(0, 60_000),
            b"3".to_vec(),
        );

        assert_eq!(result, Ok(()));
    }

    #[test]
    fn close_error_names_table_key_and_window() {
        let message = close_window::<DecodeOnClose>(
            "clicks".to_string(),
            b"home\n".to_vec(),
            wit_window(60_000, 120_000),
            b"-1".to_vec(),
        )
        .unwrap_err();

        assert_eq!(
            message,
            "failed to handle close of window [60000, 120000) of key \"home\\n\" in table \"clicks\": \
             table \"clicks\": failed to decode value of key \"home\\n\" in window [60000, 120000) \
             with json: invalid value: integer `-1`, expected u64 at line 1 column 2"
        );
    }

    #[test]
    fn batch_without_errors_succeeds() {
        let events = vec![event(10, "good"), event(11, "good")];

        assert_eq!(handle_batch::<FailOnBad>(events), Ok(()));
    }

    #[test]
    fn empty_batch_succeeds() {
        assert_eq!(handle_batch::<FailOnBad>(Vec::new()), Ok(()));
    }

    #[test]
    fn batch_error_names_first_failed_event() {
        let events = vec![event(10, "good"), event(11, "bad"), event(12, "bad")];

        let message = handle_batch::<FailOnBad>(events).unwrap_err();

        assert_eq!(
            message,
            "failed to handle event at topic \"flights\" partition 3 offset 11: value is bad"
        );
    }

    #[test]
    fn panic_line_joins_location_and_message() {
        let location = Location::caller();

        let line = panic_line(Some(location), Some("index out of bounds"));

        assert_eq!(
            line,
            format!("agent panicked at {location}: index out of bounds")
        );
    }

    #[test]
    fn panic_line_is_one_line() {
        let line = panic_line(None, Some("first\nsecond"));

        assert_eq!(line, "agent panicked at an unknown location: first second");
    }

    #[test]
    fn panic_line_without_string_payload() {
        let line = panic_line(None, None);

        assert_eq!(
            line,
            "agent panicked at an unknown location: non-string panic payload"
        );
    }

    #[test]
    fn batch_error_includes_sdk_error_text() {
        let mut tombstone = event(7, "");
        tombstone.value = None;

        let message = handle_batch::<FailOnBad>(vec![tombstone]).unwrap_err();

        assert_eq!(
            message,
            "failed to handle event at topic \"flights\" partition 3 offset 7: \
             event has no value (it is a tombstone)"
        );
    }
}
