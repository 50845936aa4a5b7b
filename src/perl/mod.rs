//! Perl's values (feature `perl`): read and write what a Perl Cache::FastMmap stores.
//!
//! A Perl cache does not hold raw bytes: by default Cache::FastMmap freezes every value with
//! Storable, and it can use JSON instead and compress with zlib, LZ4 or Snappy. This module
//! speaks all of them, so a Rust process can read and write the values Perl processes share
//! through one cache file ([`Layout::FastMmap`](crate::Layout::FastMmap), same geometry):
//!
//! - [`PerlFormat`]: a cache's `serializer` and `compressor` options;
//!   [`PerlFormat::get`] reads a value into a Rust type, [`PerlFormat::set`] stores one that
//!   Perl reads. `PerlFormat::default()` is Cache::FastMmap's default (Storable, no
//!   compression).
//! - [`storable`]: Storable's `freeze` / `nfreeze` images, to and from Rust types (serde) or
//!   [`PerlData`].
//! - [`PerlData`]: a Perl data structure as Perl holds it — scalars, arrays, hashes,
//!   references, blessed objects (and objects frozen by `STORABLE_freeze` hooks, [`Hook`]),
//!   shared values and cycles — for values that no Rust type
//!   describes, or that must be written back exactly as they were.
//! - [`Compressor`]: the compressors' byte formats.
//!
//! ```
//! use fastmmap::perl::{PerlFormat, storable};
//!
//! #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
//! struct Session { user_id: u32, cart: Vec<String> }
//!
//! let s = Session { user_id: 7, cart: vec!["book".into()] };
//! // The bytes `$cache->set($key, { user_id => 7, cart => ["book"] })` stores.
//! let stored = PerlFormat::default().encode(&s)?;
//! assert_eq!(PerlFormat::default().decode::<Session>(&stored)?, s);
//! // A Storable image as `freeze(\%session)` writes it.
//! assert_eq!(storable::from_slice::<Session>(&storable::to_vec(&s)?)?, s);
//! # Ok::<(), fastmmap::perl::Error>(())
//! ```
//!
//! Everything here uses only the crate's public cache API. Decoders treat their input as
//! hostile: they never panic, and allocate only in proportion to it (see [`storable`]).

mod compressor;
mod de;
mod error;
mod number;
mod perl_format;
mod ser;
pub mod storable;
#[cfg(test)]
pub(crate) mod tests;
mod value;

pub use compressor::{Compressor, MAX_DECOMPRESSED};
pub use error::{Error, Result};
pub use perl_format::{PerlFormat, Serializer};
pub use value::{HashKey, Hook, HookKind, PerlData, PerlRef, PerlValue, Sv, SvId};
