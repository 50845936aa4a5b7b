//! Codecs: how a typed value becomes the bytes of an entry and back.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A codec's error; it reaches the caller as [`Error::Encode`](crate::Error::Encode) or
/// [`Error::Decode`](crate::Error::Decode), naming the key.
pub type CodecError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Turns values of type `V` into bytes and back. Decoding reads bytes from a file that other
/// processes write: it must fail, never panic, on bytes it cannot read.
pub trait Codec<V>: Send + Sync {
    /// The bytes to store for `value`.
    ///
    /// # Errors
    /// A value the format cannot represent.
    fn encode(&self, value: &V) -> Result<Vec<u8>, CodecError>;

    /// The value `bytes` hold.
    ///
    /// # Errors
    /// Bytes that are not an encoding of a `V`.
    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError>;
}

/// The compact binary codec: [postcard](https://docs.rs/postcard)'s format (varint integers,
/// no field names; its wire format is stable since 1.0). Not self-describing: types that
/// need `deserialize_any` (`serde_json::Value`, untagged enums, `#[serde(flatten)]`) need
/// [`Json`]. Bytes left over after the value are an error, and so is a value nested more
/// than 128 containers deep (postcard has no limit of its own: decoding a recursive type
/// from bytes another process planted would otherwise run out of stack).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Postcard;

impl<V: Serialize + DeserializeOwned> Codec<V> for Postcard {
    fn encode(&self, value: &V) -> Result<Vec<u8>, CodecError> {
        Ok(postcard::to_allocvec(value)?)
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError> {
        let mut de = postcard::Deserializer::from_bytes(bytes);
        let (value, too_deep) =
            super::depth::watch(|| V::deserialize(super::depth::Limited::new(&mut de)));
        let value = match value {
            Ok(value) => value,
            // postcard reports every error of the value's own as one message.
            Err(_) if too_deep => return Err(super::depth::too_deep().into()),
            Err(e) => return Err(e.into()),
        };
        let rest = de.finalize()?;
        if !rest.is_empty() {
            return Err(format!("{} bytes after the value", rest.len()).into());
        }
        Ok(value)
    }
}

/// JSON (serde_json): UTF-8 bytes, as Perl's Cache::FastMmap stores values with
/// `serializer => 'json'` (`JSON->new->utf8->allow_nonref`), so Perl and Rust read each
/// other's values. Self-describing, readable, larger and slower than [`Postcard`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Json;

impl<V: Serialize + DeserializeOwned> Codec<V> for Json {
    fn encode(&self, value: &V) -> Result<Vec<u8>, CodecError> {
        Ok(serde_json::to_vec(value)?)
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// Perl's values (feature `perl`): what Cache::FastMmap stores with its default serializer
/// and no compressor, a Storable image of a reference to the value (`freeze(\$value)`), so a
/// [`TypedCache`](super::TypedCache) reads and writes a default Perl cache's values. Other
/// Perl serializers and compressors: [`PerlFormat`](crate::perl::PerlFormat), which this
/// codec wraps with its defaults.
#[cfg(feature = "perl")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Storable(pub crate::perl::PerlFormat);

#[cfg(feature = "perl")]
impl<V: Serialize + DeserializeOwned> Codec<V> for Storable {
    fn encode(&self, value: &V) -> Result<Vec<u8>, CodecError> {
        Ok(self.0.encode(value)?)
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError> {
        Ok(self.0.decode(bytes)?)
    }
}
