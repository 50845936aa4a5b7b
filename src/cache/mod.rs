//! The cache layer: the whole public face of [`Cache`], joining the page format (`page`) to
//! the file and its locks (`store`).
//!
//! `handle` holds the handle and the steps its operations are made of, `builder` opens one;
//! the public methods are in `read`, `write`, `update` (read-modify-write under a page lock),
//! `batch` (many keys, each page locked once), `iter` and `maintenance` (every page). `mode` decides once, when a handle is built, which way
//! its operations go: `plain` (values to the pages as they are) or `layered` (through a
//! backing store, compression), with `write_back` the dirty entries on their way to the store; `compression`, `expiry` and `stats` are
//! the value types these speak.

mod batch;
mod builder;
mod compression;
mod expiry;
mod handle;
mod iter;
mod large;
mod layered;
mod maintenance;
mod mode;
mod plain;
mod read;
mod resize;
mod stats;
mod update;
mod write;
mod write_back;

pub use builder::CacheBuilder;
pub use compression::Compression;
pub use expiry::Expiry;
pub use handle::{Cache, Entry, EntryFlags, PageProblem, Update};
pub use iter::Iter;
pub use resize::{DEFAULT_RESIZE_LOCK_WAIT, ResizeReport};
pub use stats::{PageStats, Stats};
pub use update::Existing;
