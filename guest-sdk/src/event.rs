//! Source records and helpers to read their key and value.
//!
//! [`Event`] and [`Header`] are the types generated from the WIT `types`
//! interface, so a batch reaches [`Agent::handle`](crate::Agent::handle)
//! without copying. This module adds inherent methods to them.

use serde::de::DeserializeOwned;

use crate::{Codec, CodecError, Error, Json};

pub use crate::bindings::tablehost::agent::types::{Event, Header};

impl Event {
    /// Returns the key bytes, or an empty slice for a record without a key.
    ///
    /// Use the `key` field to tell a missing key from an empty one.
    pub fn key_bytes(&self) -> &[u8] {
        self.key.as_deref().unwrap_or_default()
    }

    /// Returns the key as UTF-8 text.
    ///
    /// # Errors
    ///
    /// [`Error::MissingKey`] for a record without a key, and
    /// [`Error::InvalidUtf8`] when the key is not UTF-8.
    pub fn key_str(&self) -> Result<&str, Error> {
        let key = self.key.as_deref().ok_or(Error::MissingKey)?;
        std::str::from_utf8(key).map_err(|source| Error::InvalidUtf8 {
            part: "key",
            source,
        })
    }

    /// Returns the value as UTF-8 text.
    ///
    /// # Errors
    ///
    /// [`Error::MissingValue`] for a tombstone, and [`Error::InvalidUtf8`]
    /// when the value is not UTF-8.
    pub fn value_str(&self) -> Result<&str, Error> {
        let value = self.value.as_deref().ok_or(Error::MissingValue)?;
        std::str::from_utf8(value).map_err(|source| Error::InvalidUtf8 {
            part: "value",
            source,
        })
    }

    /// Decodes the value as JSON into `T`.
    ///
    /// # Errors
    ///
    /// [`Error::MissingValue`] for a tombstone, and [`Error::InvalidValue`]
    /// when the value is not JSON or does not match `T`. For a missing
    /// field the message names the field, such as ``missing field `delay` ``.
    pub fn value_json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        // Not `decode_value::<Json, T>`: the `Json` codec also requires
        // `T: Serialize`, which reading a value does not need.
        let value = self.value.as_deref().ok_or(Error::MissingValue)?;
        serde_json::from_slice(value).map_err(|source| Error::InvalidValue {
            codec: <Json as Codec<serde_json::Value>>::NAME,
            source: CodecError::new(source),
        })
    }

    /// Decodes the value with the codec `C`, such as
    /// `event.decode_value::<Postcard, Reading>()`.
    ///
    /// # Errors
    ///
    /// [`Error::MissingValue`] for a tombstone, and [`Error::InvalidValue`]
    /// when the codec rejects the bytes.
    pub fn decode_value<C: Codec<T>, T>(&self) -> Result<T, Error> {
        let value = self.value.as_deref().ok_or(Error::MissingValue)?;
        C::decode(value).map_err(|source| Error::InvalidValue {
            codec: C::NAME,
            source,
        })
    }

    /// Returns the value of the first header named `name`, if any.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|header| header.key == name)
            .map(|header| header.value.as_slice())
    }
}

impl Header {
    /// Creates a header, for use with
    /// [`output::send_with_headers`](crate::output::send_with_headers).
    pub fn new(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Postcard;
    use serde::Deserialize;

    fn event(key: Option<&[u8]>, value: Option<&[u8]>) -> Event {
        Event {
            topic: "flights".to_string(),
            partition: 0,
            offset: 42,
            timestamp_ms: Some(978_307_260_000),
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers: vec![
                Header::new("trace", "abc"),
                Header::new("empty", Vec::new()),
                Header::new("trace", "second"),
            ],
        }
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Flight {
        origin: String,
        delay: i64,
    }

    #[test]
    fn key_bytes_of_missing_key_is_empty() {
        assert_eq!(event(None, None).key_bytes(), b"");
        assert_eq!(event(Some(b""), None).key_bytes(), b"");
        assert_eq!(event(Some(b"\xff\x00"), None).key_bytes(), b"\xff\x00");
    }

    #[test]
    fn key_str_returns_text() {
        assert_eq!(event(Some(b"LAS"), None).key_str().unwrap(), "LAS");
        assert_eq!(event(Some(b""), None).key_str().unwrap(), "");
    }

    #[test]
    fn key_str_rejects_missing_key() {
        let error = event(None, None).key_str().unwrap_err();

        assert!(matches!(error, Error::MissingKey), "{error:?}");
    }

    #[test]
    fn key_str_rejects_invalid_utf8() {
        let error = event(Some(b"a\xffb"), None).key_str().unwrap_err();

        assert!(
            matches!(error, Error::InvalidUtf8 { part: "key", .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "event key is not valid UTF-8: invalid utf-8 sequence of 1 bytes from index 1"
        );
    }

    #[test]
    fn value_str_rejects_tombstone() {
        let error = event(None, None).value_str().unwrap_err();

        assert!(matches!(error, Error::MissingValue), "{error:?}");
    }

    #[test]
    fn value_json_decodes_struct() {
        let value = br#"{"origin":"LAS","delay":-3,"distance":2176}"#;

        let flight: Flight = event(None, Some(value)).value_json().unwrap();

        assert_eq!(
            flight,
            Flight {
                origin: "LAS".to_string(),
                delay: -3
            }
        );
    }

    #[test]
    fn value_json_names_missing_field() {
        let error = event(None, Some(br#"{"origin":"LAS"}"#))
            .value_json::<Flight>()
            .unwrap_err();

        assert_eq!(
            error.to_string(),
            "invalid event value: failed to decode with json: missing field `delay` at line 1 column 16"
        );
    }

    #[test]
    fn value_json_rejects_invalid_json() {
        let error = event(None, Some(b"not json"))
            .value_json::<Flight>()
            .unwrap_err();

        assert!(
            matches!(error, Error::InvalidValue { codec: "json", .. }),
            "{error:?}"
        );
    }

    #[test]
    fn value_json_rejects_tombstone() {
        let error = event(None, None).value_json::<Flight>().unwrap_err();

        assert!(matches!(error, Error::MissingValue), "{error:?}");
    }

    #[test]
    fn decode_value_with_postcard() {
        let bytes = <Postcard as Codec<(u32, String)>>::encode(&(7, "x".to_string())).unwrap();

        let decoded = event(None, Some(&bytes))
            .decode_value::<Postcard, (u32, String)>()
            .unwrap();

        assert_eq!(decoded, (7, "x".to_string()));
    }

    #[test]
    fn header_returns_first_match() {
        let event = event(None, None);

        assert_eq!(event.header("trace"), Some(&b"abc"[..]));
        assert_eq!(event.header("empty"), Some(&b""[..]));
        assert_eq!(event.header("missing"), None);
    }
}
