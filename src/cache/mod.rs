//! The cache layer: the whole public face of [`Cache`], joining the page format (`page`) to
//! the file and its locks (`store`).
//!
//! `handle` holds the handle and every public method, `builder` opens one, `update` the
//! read-modify-write under a page lock. `mode` decides once, when a handle is built, which way
//! its operations go: `plain` (values to the pages as they are) or `layered` (through a
//! backing store, compression), with `write_back` the dirty entries on their way to the store; `compression`, `expiry` and `stats` are
//! the value types these speak.

mod builder;
mod compression;
mod expiry;
mod handle;
mod layered;
mod mode;
mod plain;
mod stats;
mod update;
mod write_back;

pub use builder::CacheBuilder;
pub use compression::Compression;
pub use expiry::Expiry;
pub use handle::{Cache, Entry, EntryFlags, Iter, PageProblem, Update};
pub use stats::{PageStats, Stats};
pub use update::Existing;
