#![doc = include_str!("lib.md")]
#![deny(unsafe_code, missing_docs)]
#![warn(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod backing;
mod builder;
mod cache;
mod clock;
mod compress;
mod error;
mod events;
mod expiry;
mod layout;
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
mod stats;
mod store;
#[cfg(feature = "serde")]
pub mod typed;
mod update;
#[cfg(any(feature = "axum", feature = "tower-sessions"))]
pub mod web;

pub use backing::{Backing, BackingError, WriteMode};
pub use builder::CacheBuilder;
pub use cache::{Cache, Entry, EntryFlags, Iter, PageProblem, Update};
pub use clock::{Clock, ManualClock};
pub use compress::Compression;
pub use error::{Error, LockRole, Result};
pub use expiry::Expiry;
pub use layout::{Layout, LockKind};
pub use stats::{PageStats, Stats};
#[cfg(feature = "serde")]
pub use typed::TypedCache;
pub use update::Existing;
