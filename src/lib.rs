#![doc = include_str!("lib.md")]
#![deny(unsafe_code, missing_docs)]
#![warn(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod backing;
mod cache;
mod clock;
mod error;
mod events;
pub mod fs;
#[cfg(not(any(fuzzing, feature = "internals")))]
mod page;
#[cfg(any(fuzzing, feature = "internals"))]
#[doc(hidden)]
#[allow(missing_docs)]
pub mod page;
#[cfg(feature = "perl")]
pub mod perl;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "session")]
pub mod session;
mod store;
#[cfg(feature = "serde")]
pub mod typed;
#[cfg(any(feature = "axum", feature = "tower-sessions"))]
pub mod web;

pub use backing::{Backing, BackingError, WriteMode};
pub use cache::{
    Cache, CacheBuilder, Compression, Entry, EntryFlags, Existing, Expiry, Iter, PageProblem,
    PageStats, Stats, Update,
};
pub use cache::{DEFAULT_RESIZE_LOCK_WAIT, ResizeReport};
pub use clock::{Clock, ManualClock, unix_secs};
pub use error::{Error, LockRole, Result};
pub use store::{Layout, LockKind};
#[cfg(feature = "serde")]
pub use typed::TypedCache;
