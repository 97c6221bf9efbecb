//! The SDK's error type.

use std::str::Utf8Error;

use crate::{CodecError, SendError, TableError, Window};

/// An error from an SDK call or from an agent's handling of an event.
///
/// Each variant names the table, topic or event part involved. Its
/// `Display` text is what the host logs when
/// [`Agent::handle`](crate::Agent::handle) returns it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The host rejected a table operation, which had no effect.
    #[error("table {table:?}: {operation} failed: {source}")]
    Table {
        /// The table's name.
        table: String,
        /// The WIT operation, such as `open`, `get`, `set`, `scan` or
        /// `windows`.
        operation: &'static str,
        /// The host's error.
        #[source]
        source: TableError,
    },

    /// A value could not be encoded for a table, so nothing was written.
    #[error("table {table:?}: failed to encode value with {codec}: {source}")]
    Encode {
        /// The table's name.
        table: String,
        /// The codec's [`NAME`](crate::Codec::NAME).
        codec: &'static str,
        /// The codec's error.
        #[source]
        source: CodecError,
    },

    /// A stored value could not be decoded, which usually means it was
    /// written with another codec or value type.
    #[error("table {table:?}: failed to decode value of key \"{key}\" with {codec}: {source}")]
    Decode {
        /// The table's name.
        table: String,
        /// The key, with bytes outside printable ASCII escaped as `\xNN`.
        key: String,
        /// The codec's [`NAME`](crate::Codec::NAME).
        codec: &'static str,
        /// The codec's error.
        #[source]
        source: CodecError,
    },

    /// A stored value of a windowed table could not be decoded, which
    /// usually means it was written with another codec or value type.
    #[error(
        "table {table:?}: failed to decode value of key \"{key}\" in window {window} with {codec}: {source}"
    )]
    DecodeWindow {
        /// The table's name.
        table: String,
        /// The key, with bytes outside printable ASCII escaped as `\xNN`.
        key: String,
        /// The window whose value failed to decode.
        window: Window,
        /// The codec's [`NAME`](crate::Codec::NAME).
        codec: &'static str,
        /// The codec's error.
        #[source]
        source: CodecError,
    },

    /// A table key that the agent requested as text is not valid UTF-8.
    #[error("table {table:?}: key \"{key}\" is not valid UTF-8: {source}")]
    InvalidKeyUtf8 {
        /// The table's name.
        table: String,
        /// The key, with bytes outside printable ASCII escaped as `\xNN`.
        key: String,
        /// The position of the invalid bytes.
        #[source]
        source: Utf8Error,
    },

    /// The host rejected an output record, which was not sent.
    #[error("send to topic {topic:?} failed: {source}")]
    Send {
        /// The output topic.
        topic: String,
        /// The host's error.
        #[source]
        source: SendError,
    },

    /// An output record value could not be encoded, so nothing was sent.
    #[error("failed to encode value for topic {topic:?} with {codec}: {source}")]
    EncodeOutput {
        /// The output topic.
        topic: String,
        /// The codec's [`NAME`](crate::Codec::NAME).
        codec: &'static str,
        /// The codec's error.
        #[source]
        source: CodecError,
    },

    /// The event has no key, but the agent requested one.
    #[error("event has no key")]
    MissingKey,

    /// The event is a tombstone, but the agent requested its value.
    #[error("event has no value (it is a tombstone)")]
    MissingValue,

    /// The event's key or value is not valid UTF-8.
    #[error("event {part} is not valid UTF-8: {source}")]
    InvalidUtf8 {
        /// `key` or `value`.
        part: &'static str,
        /// The position of the invalid bytes.
        #[source]
        source: Utf8Error,
    },

    /// The event's value could not be decoded into the requested type.
    #[error("invalid event value: failed to decode with {codec}: {source}")]
    InvalidValue {
        /// The codec's [`NAME`](crate::Codec::NAME).
        codec: &'static str,
        /// The codec's error, which for JSON names a missing field and the
        /// position of a syntax or type error.
        #[source]
        source: CodecError,
    },

    /// An error raised by the agent's own code.
    #[error("{0}")]
    Message(String),
}

impl Error {
    /// Creates an [`Error::Message`] from any displayable value.
    pub fn msg(message: impl std::fmt::Display) -> Self {
        Self::Message(message.to_string())
    }

    /// Returns the host's table error, if this error is one.
    pub fn table_error(&self) -> Option<&TableError> {
        match self {
            Self::Table { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Returns the host's send error, if this error is one.
    pub fn send_error(&self) -> Option<&SendError> {
        match self {
            Self::Send { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self::Message(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Self::Message(message.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_error_display_names_table_and_operation() {
        let error = Error::Table {
            table: "counts".to_string(),
            operation: "set",
            source: TableError::ValueTooLarge(2_097_152),
        };

        assert_eq!(
            error.to_string(),
            "table \"counts\": set failed: value is 2097152 bytes, larger than the agent's max_value_bytes limit"
        );
    }

    #[test]
    fn window_closed_display_names_table_and_window() {
        let error = Error::Table {
            table: "clicks".to_string(),
            operation: "set",
            source: TableError::WindowClosed(Window::new(0, 60_000)),
        };

        assert_eq!(
            error.to_string(),
            "table \"clicks\": set failed: window [0, 60000) has closed, so it can no longer be written"
        );
    }

    #[test]
    fn unknown_event_display_names_offset() {
        let error = Error::Table {
            table: "clicks".to_string(),
            operation: "windows",
            source: TableError::UnknownEvent(42),
        };

        assert_eq!(
            error.to_string(),
            "table \"clicks\": windows failed: no event at offset 42 in the batch being handled, \
             so call this only from Agent::handle with its event"
        );
    }

    #[test]
    fn table_error_accessor() {
        let error = Error::Table {
            table: "t".to_string(),
            operation: "open",
            source: TableError::Undeclared("t".to_string()),
        };

        assert_eq!(
            error.table_error(),
            Some(&TableError::Undeclared("t".to_string()))
        );
        assert_eq!(error.send_error(), None);
    }

    #[test]
    fn send_error_display_names_topic() {
        let error = Error::Send {
            topic: "alerts".to_string(),
            source: SendError::UndeclaredTopic("alerts".to_string()),
        };

        assert_eq!(
            error.to_string(),
            "send to topic \"alerts\" failed: topic \"alerts\" is not declared in the agent's outputs list"
        );
        assert_eq!(
            error.send_error(),
            Some(&SendError::UndeclaredTopic("alerts".to_string()))
        );
    }

    #[test]
    fn decode_error_display_names_key_and_codec() {
        let error = Error::Decode {
            table: "counts".to_string(),
            key: "a\\x00b".to_string(),
            codec: "json",
            source: CodecError::new("expected value at line 1 column 1"),
        };

        assert_eq!(
            error.to_string(),
            "table \"counts\": failed to decode value of key \"a\\x00b\" with json: \
             expected value at line 1 column 1"
        );
    }

    #[test]
    fn message_error_from_string() {
        assert_eq!(Error::from("plain").to_string(), "plain");
        assert_eq!(Error::from("owned".to_string()).to_string(), "owned");
        assert_eq!(Error::msg(format_args!("n = {}", 3)).to_string(), "n = 3");
    }
}
