//! The file, its mapping, the process-wide registry and the page locks: the only place with
//! `unsafe` code for the mapping. (The coarse clock's read, `clock/coarse.rs`, and the prefork
//! server's process control, `web/process.rs`, each have their own narrow allowance.)
//!
//! # Soundness
//!
//! The file is mapped shared and read-write. Page bytes are turned into a `&mut [u8]` only
//! through a live [`PageGuard`], which holds that page's lock: the in-process mutex excludes
//! every other thread of this process, and the fcntl record lock excludes every other process
//! that honours the same protocol (this crate, and Perl's Cache::FastMmap for the FastMmap
//! layout). Each page is a disjoint range of the mapping, so guards on different pages never
//! alias. The file is never shrunk or remapped while mapped: its size is fixed at creation and
//! checked on open. Processes that ignore the locks can make us read garbage, but not read or
//! write outside the mapping: page code checks every offset it reads from the file.
//!
//! The native header's per-page rows (busy marker, reset counter) are read and written as
//! atomics, since their words are shared memory.

mod checksum;
mod fcntl;
mod file;
mod fork;
mod geometry;
mod guard;
pub(crate) mod header;
mod journal;
mod layout;
mod lock;
mod optimistic;
mod overflow;
mod reader;
mod registry;
mod resize;
mod robust;
mod shared;
pub(crate) mod untrusted;
mod write_back_lock;

pub(crate) use checksum::checksum as overflow_checksum;
pub(crate) use file::{OpenRequest, OverflowRequest, effective_uid};
pub(crate) use geometry::{
    DEFAULT_NUM_PAGES, DEFAULT_PAGE_SIZE, Geometry, MAX_NUM_PAGES, Requested,
};
pub(crate) use guard::{PageGuard, Place, ReadGuard};
pub(crate) use layout::KeyHash;
#[cfg(test)]
pub(crate) use layout::fastmmap_hash;
pub use layout::{Layout, LockKind};
pub(crate) use optimistic::{Access, Outcome as ReadOutcome};
pub(crate) use overflow::{Full as OverflowFull, Reference as OverflowReference, Route};
pub(crate) use reader::{Reader, owned_value, peek_locked, read_locked, read_locked_value};
pub(crate) use registry::open_shared;
pub(crate) use resize::{Current, MAX_FOLLOWS, Moved, Stop, WriteBack, old_page_of, resize};
pub(crate) use shared::{LockError, SharedFile};
pub(crate) use write_back_lock::{Wait as WriteBackWait, WriteBackGuard};

/// Whether [`LockKind::Robust`] can be used on this platform.
pub(crate) const ROBUST_LOCKS_AVAILABLE: bool = robust::AVAILABLE;

/// The lock kinds this build can use (fcntl, and robust where available): store tests run
/// under each.
#[cfg(test)]
pub(crate) fn lock_kinds() -> Vec<LockKind> {
    let mut kinds = vec![LockKind::Fcntl];
    if ROBUST_LOCKS_AVAILABLE {
        kinds.push(LockKind::Robust);
    }
    kinds
}
