//! Perl's Storable: read and write the images of `Storable::freeze` (native byte order) and
//! `Storable::nfreeze` (network order), as Perl values ([`PerlData`]) or as Rust types
//! through serde.
//!
//! ```
//! use std::collections::BTreeMap;
//! use fastmmap::perl::{PerlValue, storable};
//!
//! // What Perl's `freeze({ name => ["Ada"], langs => ["Perl", "Rust"] })` writes.
//! let image = storable::to_vec(&BTreeMap::from([
//!     ("name", vec!["Ada"]),
//!     ("langs", vec!["Perl", "Rust"]),
//! ]))?;
//! let back: BTreeMap<String, Vec<String>> = storable::from_slice(&image)?;
//! assert_eq!(back["langs"], ["Perl", "Rust"]);
//!
//! // The Perl value itself: a hash whose values are array references.
//! let data = storable::thaw(&image)?;
//! let langs = data.hash_get(data.root(), "langs").unwrap();
//! assert!(matches!(data[langs].value, PerlValue::Ref(_)));
//! # Ok::<(), fastmmap::perl::Error>(())
//! ```
//!
//! # Rust types as Perl data
//!
//! | Rust (serde) | Perl |
//! |---|---|
//! | integers | an integer (IV); a `u64` above `i64::MAX` as its decimal string, as Storable stores such a UV |
//! | `f32`, `f64` | a number (NV) |
//! | `bool` | 1 or 0 |
//! | `str`, `char` | a string: a byte string when ASCII, else a character (UTF-8) string |
//! | bytes (`serde_bytes`) | a byte string |
//! | `None`, `()`, unit structs | `undef` |
//! | `Some(x)`, newtype structs | `x` |
//! | sequences, tuples | an array reference |
//! | maps, structs | a hash reference (keys: strings, or integers as decimal strings) |
//! | unit variant | its name |
//! | other variants | `{ Variant => value }` |
//!
//! Reading is lenient the way Perl is: references are followed (a hash reference, a blessed
//! hash and `\\%h` all read as a map or struct), a string holding a number reads as that
//! number — `nfreeze` stores doubles and integers beyond 32 bits as strings — and `bool`
//! follows Perl's truth. Byte strings read as `String` are taken as UTF-8 when they are
//! valid UTF-8 (as Perl programs often keep text undecoded), else as Latin-1, which is what
//! the bytes mean to Perl.
//!
//! # The root
//!
//! `freeze` takes a reference and freezes what it refers to: `freeze(\%h)` has the hash as
//! its root, and `thaw` returns a reference to it. [`to_vec`] does the same with a Rust
//! value: the root of a struct's image is the hash, so Perl's `thaw` returns the hash
//! reference. Cache::FastMmap instead freezes a reference to the scalar it caches,
//! `freeze(\$value)`, so a cached struct has a reference to the hash as its root;
//! [`to_scalar_data`] builds that (and [`PerlFormat`](crate::perl::PerlFormat) uses it).
//! [`from_slice`] reads both, since references are followed.
//!
//! # What is read, and what is refused
//!
//! Read and written back unchanged: `undef`, integers (`SX_BYTE`, native `SX_INTEGER` of 8
//! or 4 bytes in either byte order, `SX_NETINT`), doubles, byte and UTF-8 strings (short,
//! long and over 2 GiB), arrays, hashes (with byte keys and with UTF-8 keys, Storable's
//! flagged hashes), references (weak ones and references to objects of classes with
//! overloading too), blessed values (class names, with Storable's class table on repeats),
//! objects frozen by their class's `STORABLE_freeze` hook (kept as
//! [`PerlValue::Hook`](crate::perl::PerlValue::Hook), in every form Perl writes), shared values and cycles (Storable's back-references), Perl's immortal `undef`, true and
//! false, and Storable 3.32's booleans. Perl's own images are written back byte for byte,
//! with two exceptions that change nothing Perl code can see: `undef` is always written as a
//! fresh `undef` (not Perl's read-only immortal one), and a hash Perl still marks as having
//! UTF-8 keys when none is left (a key stored again as bytes) is written as a plain hash.
//!
//! Refused with [`Error::Unsupported`](crate::perl::Error::Unsupported): code references,
//! tied variables (with or without a hook), regular expressions,
//! v-strings, restricted hashes, images of a Perl with long doubles and images older than
//! Storable 0.7. Anything not well formed, including bytes after the image, is
//! [`Error::Malformed`](crate::perl::Error::Malformed) — so are strings and keys marked UTF-8
//! that are not strict UTF-8 (Perl's own encoding also allows surrogates and code points
//! beyond U+10FFFF, which a Rust `String` cannot hold).
//!
//! # Hostile input
//!
//! Decoding never panics. Nothing is allocated for a length in the image before it is
//! checked against the bytes that remain, so memory is proportional to the image, and the
//! decoder does not recurse, so any depth is safe. Deserializing into Rust types recurses:
//! it refuses data nested more than 128 levels deep ([`Error::TooDeep`]), cycles
//! ([`Error::Cyclic`]), and shared values that would be copied into more than 2²⁰ values
//! plus 16 per value of the data, or 16 MiB of strings and keys plus 16 times those of the
//! data ([`Error::TooLarge`]).
//!
//! [`Error::TooDeep`]: crate::perl::Error::TooDeep
//! [`Error::Cyclic`]: crate::perl::Error::Cyclic
//! [`Error::TooLarge`]: crate::perl::Error::TooLarge

mod image;
mod read;
mod write;

use serde::Serialize;
use serde::de::{Deserialize, DeserializeOwned};

use crate::perl::value::PerlData;
use crate::perl::{Result, de, ser};

/// Reads a Storable image (of `freeze`, `nfreeze`, or a `Storable::store` file) as Perl
/// data: Perl's `thaw`.
///
/// # Errors
/// [`Error::Malformed`](crate::perl::Error::Malformed) for bytes that are not an image
/// (truncated, unknown markers, lengths past the end, invalid UTF-8 in a UTF-8 string,
/// back-references to values not yet read, a key twice in one hash, bytes after the end);
/// [`Error::Unsupported`](crate::perl::Error::Unsupported) for what this module does not
/// read (see the [module docs](self)).
pub fn thaw(image: &[u8]) -> Result<PerlData> {
    read::thaw(image)
}

/// Writes Perl data as `Storable::freeze` would: native byte order, readable by Perl on a
/// machine of this byte order.
///
/// # Errors
/// [`Error::InvalidData`](crate::perl::Error::InvalidData) if `data` refers to an id it does
/// not have, stores an array or hash directly in another, or has a key twice in one hash.
pub fn freeze(data: &PerlData) -> Result<Vec<u8>> {
    write::freeze(data, false)
}

/// Writes Perl data as `Storable::nfreeze` would: network order, readable by Perl anywhere.
///
/// As Perl does, it stores a double that is an integer below 2⁵³ as an integer, any other
/// double as its string (Perl's 15 significant digits), and an integer beyond 32 bits as its
/// string, so those come back as strings (which [`from_slice`] reads as numbers again).
///
/// # Errors
/// As [`freeze`].
pub fn nfreeze(data: &PerlData) -> Result<Vec<u8>> {
    write::freeze(data, true)
}

/// Deserializes a `T` from a Storable image (of `freeze` or `nfreeze`).
///
/// # Errors
/// Those of [`thaw`] and of [`from_data`].
pub fn from_slice<T: DeserializeOwned>(image: &[u8]) -> Result<T> {
    from_data(&thaw(image)?)
}

/// Deserializes a `T` from the root of Perl data (strings may be borrowed from `data`).
///
/// # Errors
/// [`Error::Data`](crate::perl::Error::Data) when the data do not fit `T`;
/// [`Error::TooDeep`](crate::perl::Error::TooDeep),
/// [`Error::Cyclic`](crate::perl::Error::Cyclic) and
/// [`Error::TooLarge`](crate::perl::Error::TooLarge) (see the [module docs](self)).
pub fn from_data<'de, T: Deserialize<'de>>(data: &'de PerlData) -> Result<T> {
    de::from_data(data)
}

/// Serializes `value` to a Storable image as Perl's `freeze` would write the corresponding
/// Perl value (a struct as `freeze(\%hash)`, a number as `freeze(\$number)`).
///
/// # Errors
/// [`Error::Data`](crate::perl::Error::Data) for values Perl data cannot hold (map keys that
/// are not strings or integers, a key twice in one map) or a `Serialize` implementation's
/// error.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    freeze(&to_data(value)?)
}

/// [`to_vec`] in network order, as Perl's `nfreeze`.
///
/// # Errors
/// As [`to_vec`].
pub fn to_vec_network<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    nfreeze(&to_data(value)?)
}

/// `value` as Perl data whose root is what a reference to it refers to: for a struct, map or
/// sequence the hash or array itself (the root of [`to_vec`]'s image), else the scalar.
///
/// # Errors
/// As [`to_vec`].
pub fn to_data<T: Serialize + ?Sized>(value: &T) -> Result<PerlData> {
    ser::to_referent(value)
}

/// `value` as Perl data whose root is the scalar holding it — for a struct, a reference to
/// a hash — as Cache::FastMmap freezes values (`freeze(\$value)`).
///
/// # Errors
/// As [`to_vec`].
pub fn to_scalar_data<T: Serialize + ?Sized>(value: &T) -> Result<PerlData> {
    ser::to_scalar(value)
}
