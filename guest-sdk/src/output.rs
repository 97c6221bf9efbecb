//! Records sent to the agent's output topics.
//!
//! A sent record is produced when its batch finishes without an error or a
//! trap, before the host commits the batch's source offsets. A record is
//! therefore never lost, but may be sent again after a crash. The host
//! picks the partition from the key with Kafka's default (murmur2)
//! partitioner, and a record without a key goes to a random partition.

use serde::Serialize;

use crate::bindings::tablehost::agent::output as wit;
use crate::{CodecError, Error, Header};

/// The host's reason for rejecting an output record, which was not sent.
///
/// This mirrors the WIT `send-error` variant. Its `Debug` text is stable
/// and names the case and payload, such as `UndeclaredTopic("audit")`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The agent's configuration does not declare this output topic. Add
    /// it to the agent's `outputs` list.
    #[error("topic {0:?} is not declared in the agent's outputs list")]
    UndeclaredTopic(String),

    /// The key is larger than the agent's `max_key_bytes` limit. The
    /// payload is the key's size in bytes.
    #[error("key is {0} bytes, larger than the agent's max_key_bytes limit")]
    KeyTooLarge(u64),

    /// The value is larger than the agent's `max_value_bytes` limit. The
    /// payload is the value's size in bytes.
    #[error("value is {0} bytes, larger than the agent's max_value_bytes limit")]
    ValueTooLarge(u64),
}

impl From<wit::SendError> for SendError {
    fn from(error: wit::SendError) -> Self {
        match error {
            wit::SendError::UndeclaredTopic(topic) => Self::UndeclaredTopic(topic),
            wit::SendError::KeyTooLarge(size) => Self::KeyTooLarge(size),
            wit::SendError::ValueTooLarge(size) => Self::ValueTooLarge(size),
        }
    }
}

/// Sends a record without headers to `topic`.
///
/// `None` as the value sends a tombstone.
///
/// # Errors
///
/// [`Error::Send`] when the host rejects the record, such as
/// [`SendError::UndeclaredTopic`].
pub fn send(topic: &str, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<(), Error> {
    send_with_headers(topic, key, value, &[])
}

/// Sends a record with `headers` to `topic`, in the order given.
///
/// # Errors
///
/// As for [`send`].
pub fn send_with_headers(
    topic: &str,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[Header],
) -> Result<(), Error> {
    wit::send(topic, key, value, headers).map_err(|source| Error::Send {
        topic: topic.to_string(),
        source: source.into(),
    })
}

/// Sends a record whose value is `value` encoded as JSON.
///
/// # Errors
///
/// [`Error::EncodeOutput`] when the value cannot be encoded, and
/// [`Error::Send`] when the host rejects the record.
pub fn send_json<T: Serialize + ?Sized>(
    topic: &str,
    key: Option<&[u8]>,
    value: &T,
) -> Result<(), Error> {
    let bytes = serde_json::to_vec(value).map_err(|source| Error::EncodeOutput {
        topic: topic.to_string(),
        codec: "json",
        source: CodecError::new(source),
    })?;

    send(topic, key, Some(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_errors_map_to_same_case() {
        let cases = [
            (
                wit::SendError::UndeclaredTopic("t".to_string()),
                SendError::UndeclaredTopic("t".to_string()),
            ),
            (wit::SendError::KeyTooLarge(5), SendError::KeyTooLarge(5)),
            (
                wit::SendError::ValueTooLarge(9),
                SendError::ValueTooLarge(9),
            ),
        ];

        for (wit_error, expected) in cases {
            assert_eq!(SendError::from(wit_error), expected);
        }
    }

    #[test]
    fn send_error_debug_text() {
        assert_eq!(
            format!(
                "{:?}",
                SendError::UndeclaredTopic("not-declared".to_string())
            ),
            "UndeclaredTopic(\"not-declared\")"
        );
    }
}
