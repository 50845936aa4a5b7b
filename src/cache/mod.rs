//! The cache layer: the whole public face of [`Cache`], joining the page format (`page`) to
//! the file and its locks (`store`).
//!
//! `handle` holds the handle and its plain reads and writes, `builder` opens one, `update`
//! the read-modify-write under a page lock, `layered` the paths through a backing store and
//! `write_back` the dirty entries on their way to it; `compression`, `expiry` and `stats` are
//! the value types these speak.

mod builder;
mod compression;
mod expiry;
mod handle;
mod layered;
mod stats;
mod update;
mod write_back;

pub use builder::CacheBuilder;
pub use compression::Compression;
pub use expiry::Expiry;
pub use handle::{Cache, Entry, EntryFlags, Iter, PageProblem, Update};
pub use stats::{PageStats, Stats};
pub use update::Existing;

#[cfg(all(feature = "redis", feature = "session"))]
pub(crate) use layered::STORE_EXPIRY_MARGIN;
