//! Typed values (feature `serde`): [`TypedCache`] stores serde types through a [`Codec`].
//!
//! Two codecs come with the crate: [`Postcard`], compact and fast (the `postcard` crate's
//! stable binary format), and [`Json`], which is what Perl's Cache::FastMmap reads and writes
//! with `serializer => 'json'`. Any other format is a [`Codec`] implementation away.

mod codec;
mod depth;
mod typed_cache;

#[cfg(feature = "perl")]
pub use codec::Storable;
pub use codec::{Codec, CodecError, Json, Postcard};
pub use typed_cache::TypedCache;
