//! A backing store behind the cache (Cache::FastMmap's `read_cb`, `write_cb`, `delete_cb`):
//! read-through, write-through and write-back.
//!
//! [`Backing`] is the store (a database, another cache tier); [`WriteMode`] says when a `set`
//! reaches it. The cache calls the store only with no page lock held: entries that must be
//! written back are copied out under the lock and written after it is released.

mod interface;

pub use interface::{Backing, BackingError, WriteMode};
