//! Table key encoding.
//!
//! The host stores keys as bytes in RocksDB and in the changelog topic, so
//! the encoding is part of a table's format: other readers of the changelog
//! must decode keys the same way.

use std::borrow::Cow;

/// A value that can be a table key.
///
/// The encodings provided here are:
///
/// - `str` and `String`: the UTF-8 bytes, without a length or terminator.
/// - `[u8]`, `Vec<u8>` and `[u8; N]`: the bytes as they are.
/// - Unsigned integers: big-endian, fixed width (`u32` is 4 bytes), so the
///   byte order of two keys equals their numeric order.
/// - Signed integers: big-endian two's complement with the sign bit
///   flipped, fixed width. Flipping the sign bit puts negative numbers
///   before positive ones in byte order, so byte order equals numeric order
///   here too. `-1i32` is `7f ff ff ff` and `1i32` is `80 00 00 01`.
///
/// `usize` and `isize` have no implementation, because their width differs
/// between WebAssembly (4 bytes) and most build machines (8 bytes).
///
/// A type that implements `Borrow<Q>` for a key type `Q` (as `String` does
/// for `str`) must encode equal to the borrowed form, because
/// [`Table`](crate::Table) looks keys up through the borrowed form.
pub trait Key {
    /// Returns the bytes stored for this key.
    fn encode_key(&self) -> Cow<'_, [u8]>;
}

impl Key for str {
    fn encode_key(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
}

impl Key for String {
    fn encode_key(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
}

impl Key for [u8] {
    fn encode_key(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self)
    }
}

impl Key for Vec<u8> {
    fn encode_key(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_slice())
    }
}

impl<const N: usize> Key for [u8; N] {
    fn encode_key(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_slice())
    }
}

impl<T: Key + ?Sized> Key for &T {
    fn encode_key(&self) -> Cow<'_, [u8]> {
        (**self).encode_key()
    }
}

macro_rules! unsigned_keys {
    ($($int:ty),*) => {$(
        impl Key for $int {
            fn encode_key(&self) -> Cow<'_, [u8]> {
                Cow::Owned(self.to_be_bytes().to_vec())
            }
        }
    )*};
}

macro_rules! signed_keys {
    ($($int:ty => $unsigned:ty),*) => {$(
        impl Key for $int {
            fn encode_key(&self) -> Cow<'_, [u8]> {
                // Reinterpreting as unsigned and flipping the top bit maps
                // MIN..=MAX onto 0..=unsigned MAX in order.
                let flipped = (*self as $unsigned) ^ (1 << (<$unsigned>::BITS - 1));
                Cow::Owned(flipped.to_be_bytes().to_vec())
            }
        }
    )*};
}

unsigned_keys!(u8, u16, u32, u64, u128);
signed_keys!(i8 => u8, i16 => u16, i32 => u32, i64 => u64, i128 => u128);

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded<K: Key + ?Sized>(key: &K) -> Vec<u8> {
        key.encode_key().into_owned()
    }

    #[test]
    fn str_key_is_utf8_bytes() {
        assert_eq!(encoded("LAS"), b"LAS");
        assert_eq!(encoded("Zürich"), "Zürich".as_bytes());
        assert_eq!(encoded(""), b"");
    }

    #[test]
    fn string_key_equals_str_key() {
        assert_eq!(encoded(&"PHL".to_string()), encoded("PHL"));
    }

    #[test]
    fn byte_keys_are_unchanged() {
        let bytes: &[u8] = &[0xff, 0x00, 0xfe];

        assert_eq!(encoded(bytes), bytes);
        assert_eq!(encoded(&bytes.to_vec()), bytes);
        assert_eq!(encoded(&[0xffu8, 0x00, 0xfe]), bytes);
        assert_eq!(encoded(&Vec::<u8>::new()), b"");
    }

    #[test]
    fn reference_key_equals_referent() {
        let key = "SFO";

        assert_eq!(encoded(&&key), encoded(key));
    }

    #[test]
    fn unsigned_keys_are_big_endian() {
        assert_eq!(encoded(&7u8), [7]);
        assert_eq!(encoded(&0x0102u16), [1, 2]);
        assert_eq!(encoded(&0x0102_0304u32), [1, 2, 3, 4]);
        assert_eq!(encoded(&1u64), [0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(encoded(&u128::MAX), [0xff; 16]);
    }

    #[test]
    fn signed_keys_flip_sign_bit() {
        assert_eq!(encoded(&0i8), [0x80]);
        assert_eq!(encoded(&-1i8), [0x7f]);
        assert_eq!(encoded(&i8::MIN), [0x00]);
        assert_eq!(encoded(&i8::MAX), [0xff]);
        assert_eq!(encoded(&1i32), [0x80, 0, 0, 1]);
        assert_eq!(encoded(&-1i32), [0x7f, 0xff, 0xff, 0xff]);
        assert_eq!(encoded(&i64::MIN), [0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn integer_keys_have_fixed_width() {
        assert_eq!(encoded(&0u16).len(), 2);
        assert_eq!(encoded(&0i32).len(), 4);
        assert_eq!(encoded(&0u64).len(), 8);
        assert_eq!(encoded(&0i128).len(), 16);
    }

    #[test]
    fn unsigned_byte_order_is_numeric_order() {
        let numbers = [0u64, 1, 255, 256, 65_535, 1 << 32, u64::MAX - 1, u64::MAX];

        for pair in numbers.windows(2) {
            assert!(
                encoded(&pair[0]) < encoded(&pair[1]),
                "{} should encode before {}",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn signed_byte_order_is_numeric_order() {
        let numbers = [
            i64::MIN,
            i64::MIN + 1,
            -65_536,
            -256,
            -1,
            0,
            1,
            255,
            256,
            i64::MAX,
        ];

        for pair in numbers.windows(2) {
            assert!(
                encoded(&pair[0]) < encoded(&pair[1]),
                "{} should encode before {}",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn signed_byte_order_covers_all_i8() {
        let keys: Vec<Vec<u8>> = (i8::MIN..=i8::MAX).map(|n| encoded(&n)).collect();

        let mut sorted = keys.clone();
        sorted.sort();

        assert_eq!(keys, sorted);
    }

    #[test]
    fn signed_byte_order_covers_i16_range() {
        let keys: Vec<Vec<u8>> = (i16::MIN..=i16::MAX).map(|n| encoded(&n)).collect();

        assert!(keys.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
