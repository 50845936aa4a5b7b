//! [`PerlFormat`]: how a Perl Cache::FastMmap turns values into the bytes of its entries
//! (its `serializer` and `compressor` options), in both directions.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::perl::number::nv_to_string;
use crate::perl::value::{PerlData, PerlValue};
use crate::perl::{Compressor, Error, Result, de, ser, storable};
use crate::{Cache, EntryFlags, Expiry};

/// A Cache::FastMmap `serializer`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Serializer {
    /// `serializer => 'storable'`, Cache::FastMmap's default: `Storable::freeze(\$value)`
    /// (native byte order), read back with `${ Storable::thaw($bytes) }`.
    #[default]
    Storable,
    /// `serializer => 'json'`: `JSON->new->utf8->allow_nonref->encode($value)`, UTF-8 JSON
    /// of the value itself.
    Json,
    /// `serializer => ''` (or `raw_values => 1`): the value is a Perl string stored as is;
    /// only scalars can be stored. Without a compressor the entry's flags say whether Perl
    /// stored a character string or `undef`.
    Raw,
}

/// How a Perl Cache::FastMmap stores values: its `serializer` and `compressor` options.
///
/// The default, `PerlFormat::default()`, is what `Cache::FastMmap->new` uses without options:
/// Storable, no compression. [`get`](Self::get) reads a value such a cache wrote into a Rust
/// type in one call, and [`set`](Self::set) stores one that it reads:
///
/// ```
/// use fastmmap::{Cache, Layout};
/// use fastmmap::perl::{Compressor, PerlFormat, Serializer};
///
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct User { id: u64, name: String, roles: Vec<String> }
///
/// let dir = tempfile::tempdir()?;
/// // The geometry Perl's cache was created with (here Cache::FastMmap's defaults).
/// let cache = Cache::builder()
///     .path(dir.path().join("perl.cache"))
///     .layout(Layout::FastMmap)
///     .num_pages(89)
///     .page_size(64 * 1024)
///     .open()?;
///
/// let perl = PerlFormat::default(); // Cache::FastMmap->new(share_file => ...)
/// let ada = User { id: 42, name: "Ada".into(), roles: vec!["admin".into()] };
/// perl.set(&cache, b"user:42", &ada)?;  // Perl: $cache->get("user:42")->{name} eq "Ada"
/// assert_eq!(perl.get::<User>(&cache, b"user:42")?, Some(ada));
///
/// // Cache::FastMmap->new(..., serializer => 'json', compressor => 'lz4')
/// let json_lz4 = PerlFormat::new(Serializer::Json, Compressor::Lz4);
/// json_lz4.set(&cache, b"n", &1.5)?;
/// assert_eq!(json_lz4.get::<f64>(&cache, b"n")?, Some(1.5));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct PerlFormat {
    /// Cache::FastMmap's `serializer` option.
    pub serializer: Serializer,
    /// Cache::FastMmap's `compressor` option.
    pub compressor: Compressor,
}

impl PerlFormat {
    /// The format of a cache created with these `serializer` and `compressor` options.
    pub const fn new(serializer: Serializer, compressor: Compressor) -> PerlFormat {
        PerlFormat {
            serializer,
            compressor,
        }
    }

    /// Reads the value stored under `key` as a `T`, as Perl's `$cache->get($key)` would read
    /// it. `Ok(None)` when the key is missing or expired; a stored Perl `undef` is
    /// `Some(None)` for an `Option<_>` and an error for other types.
    ///
    /// # Errors
    /// The cache's errors ([`Error::Cache`]), and those of [`decode`](Self::decode).
    pub fn get<T: DeserializeOwned>(&self, cache: &Cache, key: &[u8]) -> Result<Option<T>> {
        if self.serializer == Serializer::Raw {
            return match cache.entry(key)? {
                Some(entry) => self.decode_raw(&entry.value, entry.flags).map(Some),
                None => Ok(None),
            };
        }
        match cache.get(key)? {
            Some(stored) => self.decode(&stored).map(Some),
            None => Ok(None),
        }
    }

    /// Stores `value` under `key` (with the cache's default expiry) as Perl's
    /// `$cache->set($key, $value)` would. Returns what [`Cache::set`] returns.
    ///
    /// # Errors
    /// Those of [`encode`](Self::encode), and the cache's ([`Error::Cache`]: for example a
    /// value too large for a page).
    pub fn set<T: Serialize + ?Sized>(&self, cache: &Cache, key: &[u8], value: &T) -> Result<bool> {
        self.set_with(cache, key, value, Expiry::Default)
    }

    /// [`set`](Self::set) with an expiry (Perl's `$cache->set($key, $value, $expiry)`).
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn set_with<T: Serialize + ?Sized>(
        &self,
        cache: &Cache,
        key: &[u8],
        value: &T,
        expiry: Expiry,
    ) -> Result<bool> {
        let (bytes, flags) = self.encode_with_flags(value)?;
        Ok(cache.set_with_flags(key, &bytes, expiry, flags)?)
    }

    /// Decodes the stored bytes of an entry into a `T`: decompresses, then deserializes.
    ///
    /// With [`Serializer::Raw`] the bytes are read as a Perl byte string (the entry flags,
    /// which [`get`](Self::get) uses, are not known here).
    ///
    /// # Errors
    /// [`Error::Decompress`] for bytes the compressor cannot decode; for Storable the errors of
    /// [`storable::thaw`] and [`storable::from_data`]; for JSON [`Error::Json`].
    pub fn decode<T: DeserializeOwned>(&self, stored: &[u8]) -> Result<T> {
        self.decode_raw(stored, EntryFlags::NONE)
    }

    /// Encodes `value` as the bytes Perl's cache would store for it: serializes, then
    /// compresses. [`Serializer::Storable`] freezes `\$value` (where a struct, map or sequence
    /// is a reference to a hash or array, as in [`storable::to_scalar_data`]).
    ///
    /// # Errors
    /// [`Error::Data`] for values the serializer cannot write (with [`Serializer::Raw`]
    /// anything but a scalar); [`Error::Json`]; errors of [`Compressor::compress`].
    pub fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        self.encode_with_flags(value).map(|(bytes, _)| bytes)
    }

    fn decode_raw<T: DeserializeOwned>(&self, stored: &[u8], flags: EntryFlags) -> Result<T> {
        let bytes = self.compressor.decompress(stored)?;
        match self.serializer {
            Serializer::Storable => storable::from_slice(&bytes),
            Serializer::Json => Ok(serde_json::from_slice(&bytes)?),
            Serializer::Raw => {
                // The flags describe the stored bytes, which are the value's only without a
                // compressor.
                let compressed = self.compressor != Compressor::None;
                let value = if flags.is_undef() && !compressed {
                    PerlValue::Undef
                } else if flags.value_is_utf8() && !compressed {
                    match String::from_utf8(bytes) {
                        Ok(s) => PerlValue::Str(s),
                        Err(e) => PerlValue::Bytes(e.into_bytes()),
                    }
                } else {
                    PerlValue::Bytes(bytes)
                };
                de::from_data(&PerlData::new(value))
            }
        }
    }

    fn encode_with_flags<T: Serialize + ?Sized>(&self, value: &T) -> Result<(Vec<u8>, EntryFlags)> {
        let (bytes, flags) = match self.serializer {
            Serializer::Storable => (storable::freeze(&ser::to_scalar(value)?)?, EntryFlags::NONE),
            Serializer::Json => (serde_json::to_vec(value)?, EntryFlags::NONE),
            Serializer::Raw => raw_scalar(&ser::to_scalar(value)?)?,
        };
        let compressed = self.compressor != Compressor::None;
        if compressed {
            // Perl's compressors return byte strings: the entry has no flags.
            return Ok((self.compressor.compress(&bytes)?, EntryFlags::NONE));
        }
        Ok((bytes, flags))
    }
}

/// The bytes and flags Perl stores for a scalar with `serializer => ''`.
fn raw_scalar(data: &PerlData) -> Result<(Vec<u8>, EntryFlags)> {
    Ok(match &data[data.root()].value {
        PerlValue::Undef => (Vec::new(), EntryFlags::UNDEF),
        PerlValue::Bytes(b) => (b.clone(), EntryFlags::NONE),
        PerlValue::Str(s) => (s.as_bytes().to_vec(), EntryFlags::UTF8_VALUE),
        PerlValue::Int(n) => (n.to_string().into_bytes(), EntryFlags::NONE),
        PerlValue::Num(x) => (nv_to_string(*x).into_bytes(), EntryFlags::NONE),
        PerlValue::Bool(b) => (
            if *b { b"1".to_vec() } else { Vec::new() },
            EntryFlags::NONE,
        ),
        other => {
            return Err(Error::Data(format!(
                "serializer => '' stores only strings and numbers, not {}",
                other.kind()
            )));
        }
    })
}
