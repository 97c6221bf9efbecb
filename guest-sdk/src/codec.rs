//! Value codecs: how a [`Table`](crate::Table) turns values into bytes.
//!
//! A codec is a type that implements [`Codec<V>`] for the value types it
//! supports. [`Json`] and [`Postcard`] cover every serde type, and [`Raw`]
//! stores `Vec<u8>` values as they are. Readers of a table's changelog topic
//! must use the same codec as the agent that wrote it.

use std::error::Error as StdError;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Encoding and decoding of table values of type `V`.
///
/// Implement it to store values in a format of your own. `decode` must
/// accept every byte string that `encode` returns and give back an equal
/// value.
pub trait Codec<V> {
    /// The codec's name in error messages, such as `json`.
    const NAME: &'static str;

    /// Encodes `value` into the bytes stored in the table.
    ///
    /// # Errors
    ///
    /// Returns an error when the value cannot be represented, such as a map
    /// with non-string keys in JSON.
    fn encode(value: &V) -> Result<Vec<u8>, CodecError>;

    /// Decodes bytes read from the table.
    ///
    /// # Errors
    ///
    /// Returns an error when the bytes are not a valid encoding of `V`.
    fn decode(bytes: &[u8]) -> Result<V, CodecError>;
}

/// The error of a [`Codec`], wrapping the format library's own error.
pub struct CodecError(Box<dyn StdError + Send + Sync + 'static>);

impl CodecError {
    /// Wraps an error or message from a codec implementation.
    pub fn new(error: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> Self {
        Self(error.into())
    }
}

impl fmt::Debug for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl StdError for CodecError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

/// JSON through `serde_json`: readable in the changelog topic by any tool.
///
/// This is the default codec of [`Table`](crate::Table).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl<V: Serialize + DeserializeOwned> Codec<V> for Json {
    const NAME: &'static str = "json";

    fn encode(value: &V) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(value).map_err(CodecError::new)
    }

    fn decode(bytes: &[u8]) -> Result<V, CodecError> {
        serde_json::from_slice(bytes).map_err(CodecError::new)
    }
}

/// Postcard: a compact binary format, smaller and faster than JSON.
///
/// The encoding carries no field names or types, so decoding with a type
/// other than the one that was encoded may succeed and give wrong values.
/// Change the value type of a table only together with its name or data.
/// Bytes left over after the value are rejected, which catches some such
/// mismatches.
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

impl<V: Serialize + DeserializeOwned> Codec<V> for Postcard {
    const NAME: &'static str = "postcard";

    fn encode(value: &V) -> Result<Vec<u8>, CodecError> {
        postcard::to_allocvec(value).map_err(CodecError::new)
    }

    fn decode(bytes: &[u8]) -> Result<V, CodecError> {
        let (value, rest) = postcard::take_from_bytes(bytes).map_err(CodecError::new)?;
        if !rest.is_empty() {
            return Err(CodecError::new(format!(
                "{} trailing bytes after the postcard value",
                rest.len()
            )));
        }
        Ok(value)
    }
}

/// Bytes stored as they are, for `Vec<u8>` values.
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

impl Codec<Vec<u8>> for Raw {
    const NAME: &'static str = "raw";

    fn encode(value: &Vec<u8>) -> Result<Vec<u8>, CodecError> {
        Ok(value.clone())
    }

    fn decode(bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
        Ok(bytes.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Stats {
        flights: u64,
        delay_total: i64,
        delay_max: i64,
        origin: String,
    }

    fn stats() -> Stats {
        Stats {
            flights: 3,
            delay_total: -12,
            delay_max: 181,
            origin: "LAS".to_string(),
        }
    }

    #[test]
    fn json_roundtrips_struct() {
        let bytes = <Json as Codec<Stats>>::encode(&stats()).unwrap();
        let decoded: Stats = Json::decode(&bytes).unwrap();

        assert_eq!(decoded, stats());
    }

    #[test]
    fn json_encodes_readable_text() {
        let bytes = Json::encode(&stats()).unwrap();

        assert_eq!(
            bytes,
            br#"{"flights":3,"delay_total":-12,"delay_max":181,"origin":"LAS"}"#
        );
    }

    #[test]
    fn json_encodes_integer_as_number() {
        assert_eq!(<Json as Codec<u64>>::encode(&42).unwrap(), b"42");
        assert_eq!(<Json as Codec<u64>>::decode(b"42").unwrap(), 42);
    }

    #[test]
    fn json_rejects_invalid_bytes() {
        let error = <Json as Codec<u64>>::decode(b"forty-two").unwrap_err();

        assert!(error.to_string().contains("expected"), "{error}");
    }

    #[test]
    fn json_rejects_wrong_type() {
        let error = <Json as Codec<u64>>::decode(br#""42""#).unwrap_err();

        assert!(error.to_string().contains("invalid type"), "{error}");
    }

    #[test]
    fn json_names_missing_field() {
        let error = <Json as Codec<Stats>>::decode(br#"{"flights":1}"#).unwrap_err();

        assert!(
            error.to_string().contains("missing field `delay_total`"),
            "{error}"
        );
    }

    #[test]
    fn json_rejects_trailing_data() {
        assert!(<Json as Codec<u64>>::decode(b"42 43").is_err());
    }

    #[test]
    fn postcard_roundtrips_struct() {
        let bytes = <Postcard as Codec<Stats>>::encode(&stats()).unwrap();
        let decoded: Stats = Postcard::decode(&bytes).unwrap();

        assert_eq!(decoded, stats());
    }

    #[test]
    fn postcard_is_smaller_than_json() {
        let json = <Json as Codec<Stats>>::encode(&stats()).unwrap();
        let postcard = <Postcard as Codec<Stats>>::encode(&stats()).unwrap();

        assert!(
            postcard.len() < json.len(),
            "{} >= {}",
            postcard.len(),
            json.len()
        );
    }

    #[test]
    fn postcard_encodes_varint() {
        // Postcard writes unsigned integers as LEB128 varints.
        assert_eq!(<Postcard as Codec<u64>>::encode(&1).unwrap(), [1]);
        assert_eq!(
            <Postcard as Codec<u64>>::encode(&300).unwrap(),
            [0xac, 0x02]
        );
    }

    #[test]
    fn postcard_rejects_truncated_bytes() {
        let bytes = <Postcard as Codec<Stats>>::encode(&stats()).unwrap();

        let result = <Postcard as Codec<Stats>>::decode(&bytes[..bytes.len() - 1]);

        assert!(result.is_err());
    }

    #[test]
    fn postcard_rejects_trailing_bytes() {
        let mut bytes = <Postcard as Codec<u64>>::encode(&7).unwrap();
        bytes.push(0);

        let error = <Postcard as Codec<u64>>::decode(&bytes).unwrap_err();

        assert_eq!(
            error.to_string(),
            "1 trailing bytes after the postcard value"
        );
    }

    #[test]
    fn raw_keeps_bytes_unchanged() {
        let value = vec![0, 159, 146, 150, 255];

        assert_eq!(Raw::encode(&value).unwrap(), value);
        assert_eq!(Raw::decode(&value).unwrap(), value);
    }

    #[test]
    fn raw_keeps_empty_value() {
        assert_eq!(Raw::encode(&Vec::new()).unwrap(), Vec::<u8>::new());
        assert_eq!(Raw::decode(&[]).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn codec_names() {
        assert_eq!(<Json as Codec<u64>>::NAME, "json");
        assert_eq!(<Postcard as Codec<u64>>::NAME, "postcard");
        assert_eq!(<Raw as Codec<Vec<u8>>>::NAME, "raw");
    }
}
