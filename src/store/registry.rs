//! The process-wide registry: one descriptor, one mapping and one set of page mutexes per file
//! per process, keyed by (device, inode). Two handles opened separately on one file would not
//! exclude each other's threads, and closing either descriptor would drop the other's fcntl
//! locks.

use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::fcntl::LockFailure;
use super::file::{self, OpenRequest};
use super::layout::{Layout, LockKind};
use super::lock::PageLocks;
use super::optimistic::Optimistic;
use super::robust::RobustLocks;
use super::{Requested, SharedFile};
use crate::{Error, Result};

pub(super) type Entry = ((u64, u64), Weak<SharedFile>);

static REGISTRY: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

fn registry() -> MutexGuard<'static, Vec<Entry>> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    /// The registry, held by the forking thread from the prepare handler of a fork until the
    /// fork is done (see `super::fork`).
    static HELD_FOR_FORK: RefCell<Option<MutexGuard<'static, Vec<Entry>>>> =
        const { RefCell::new(None) };
}

/// Takes the registry for the duration of a fork, so that the child's copy is unlocked and
/// consistent (no other thread is half way through changing it).
pub(super) fn lock_for_fork() {
    let guard = registry();
    // A thread being torn down cannot fork; should it, the registry is simply not held.
    let _ = HELD_FOR_FORK.try_with(|held| *held.borrow_mut() = Some(guard));
}

/// Lets go of what [`lock_for_fork`] took, in the parent and in the child.
pub(super) fn unlock_after_fork() {
    let _ = HELD_FOR_FORK.try_with(|held| drop(held.borrow_mut().take()));
}

/// Opens (or joins this process's existing use of) the file `req` names.
pub(crate) fn open_shared(req: &OpenRequest) -> Result<Arc<SharedFile>> {
    super::fork::install();
    let mut reg = registry();
    open_registered(&mut reg, req, &req.path)
}

/// The registry, for a resize's follow step, which opens the successor of a file and swaps a
/// handle to it under this one lock (held across a fork by the forking thread, so a child never
/// inherits it half way).
pub(super) fn lock_registry() -> MutexGuard<'static, Vec<Entry>> {
    super::fork::install();
    registry()
}

/// [`open_shared`] under the registry's lock `reg`; the file is known by `path` (a
/// resized file is opened under its temporary name but known by the cache's path).
pub(super) fn open_registered(
    reg: &mut Vec<Entry>,
    req: &OpenRequest,
    path: &std::path::Path,
) -> Result<Arc<SharedFile>> {
    reg.retain(|(_, weak)| weak.strong_count() > 0);
    let md = if req.follow_symlinks {
        std::fs::metadata(&req.path)
    } else {
        std::fs::symlink_metadata(&req.path)
    };
    if let Ok(md) = md
        && let Some(shared) = lookup(reg, (md.dev(), md.ino()))
    {
        check_compatible(req, &shared)?;
        return Ok(shared);
    }
    let opened = file::open(req)?;
    if let Some(shared) = lookup(reg, opened.id) {
        // The name was replaced by a file we already have open between our stat and open.
        // Keep the new descriptor alive instead of closing it (see `SharedFile::spare_fds`).
        shared
            .spare_fds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(opened.file);
        check_compatible(req, &shared)?;
        return Ok(shared);
    }
    let num_pages = opened.geometry.num_pages;
    let locks = match opened.lock_kind {
        LockKind::Fcntl => PageLocks::fcntl(num_pages),
        LockKind::Robust => {
            let deadline = req
                .lock_timeout
                .and_then(|t| std::time::Instant::now().checked_add(t));
            let robust =
                RobustLocks::open(opened.file.as_raw_fd(), &opened.map, num_pages, deadline)
                    .map_err(|failure| match failure {
                        LockFailure::TimedOut => Error::OpenersLockTimeout {
                            path: req.path.clone(),
                            timeout: req.lock_timeout.unwrap_or_default(),
                        },
                        LockFailure::Os(source) => Error::Io {
                            path: req.path.clone(),
                            op: "take the openers lock",
                            source,
                        },
                    })?;
            PageLocks::Robust(robust)
        }
    };
    let write_back_locks = super::write_back_lock::write_back_locks(&locks, num_pages);
    let shared = Arc::new(SharedFile {
        path: path.to_path_buf(),
        file: opened.file,
        map: opened.map,
        geometry: opened.geometry,
        layout: req.layout,
        lock_kind: opened.lock_kind,
        header_size: opened.header_size,
        owner: opened.owner,
        read_only: req.read_only,
        rows: req.layout == Layout::Native && !req.read_only,
        locks,
        write_back_locks,
        local_resets: (0..num_pages).map(|_| AtomicU64::new(0)).collect(),
        dirty_lost: AtomicU64::new(0),
        faults: Default::default(),
        optimistic: (req.layout == Layout::Native && !req.read_only)
            .then(|| Optimistic::new(num_pages)),
        spare_fds: Mutex::new(Vec::new()),
        request: OpenRequest {
            path: path.to_path_buf(),
            ..req.clone()
        },
        successor: std::sync::OnceLock::new(),
        resizing: std::sync::atomic::AtomicU32::new(0),
        overflow: super::overflow::Area::new(
            opened.overflow,
            num_pages,
            opened.header_size,
            u64::from(num_pages) * u64::from(opened.geometry.page_size),
        ),
        journal: super::journal::Journal::new(
            opened.journal_size,
            opened.header_size as u64
                + u64::from(num_pages) * u64::from(opened.geometry.page_size)
                + opened.overflow.area_size(),
        ),
    });
    reg.push((opened.id, Arc::downgrade(&shared)));
    Ok(shared)
}

fn lookup(reg: &[Entry], id: (u64, u64)) -> Option<Arc<SharedFile>> {
    reg.iter()
        .find(|(k, _)| *k == id)
        .and_then(|(_, w)| w.upgrade())
}

/// A second open of a file this process has open must ask for what the file is, and trust its
/// owner.
fn check_compatible(req: &OpenRequest, shared: &SharedFile) -> Result<()> {
    file::check_owner(req, shared.owner)?;
    if shared.read_only && !req.read_only {
        return Err(Error::ReadOnly {
            path: req.path.clone(),
        });
    }
    if req.layout != shared.layout {
        return Err(Error::WrongLayout {
            path: req.path.clone(),
            expected: req.layout,
            found: match shared.layout {
                Layout::Native => "a native fastmmap file (already open in this process)",
                Layout::FastMmap => "a Cache::FastMmap file (already open in this process)",
            },
        });
    }
    if let Some(requested) = req.lock_kind
        && requested != shared.lock_kind
    {
        return Err(Error::LockKindMismatch {
            path: req.path.clone(),
            requested,
            found: shared.lock_kind,
        });
    }
    let requested = match req.layout {
        Layout::Native => req.requested,
        // The FastMmap layout has no header: its geometry is always the requested one.
        Layout::FastMmap => {
            let g = req.requested.or_defaults();
            Requested {
                num_pages: Some(g.num_pages),
                page_size: Some(g.page_size),
                start_slots: Some(g.start_slots),
            }
        }
    };
    if shared.generation() != 0 {
        // Resized: the geometry is the resizer's (see `file::check_native`).
        return Ok(());
    }
    requested.check_against(&shared.geometry, &req.path)?;
    let found = shared
        .overflow
        .as_ref()
        .map(|a| a.geometry)
        .unwrap_or_default();
    req.overflow.check_against(&found, &req.path)
}
