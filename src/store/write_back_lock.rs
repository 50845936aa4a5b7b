//! Write-back locks: one per page, so that the dirty entries of a page reach a backing store
//! in the order they were written to the page.
//!
//! Values are written to a backing store after the page lock is released (a slow store must
//! not stall every reader of the page). Without more, two writers could race there: one
//! copies `k = 1` out of the page and unlocks; another stores `k = 2`, copies it and writes it
//! back first; the first then writes `1` over it, and the store is left behind the cache. So
//! whoever copies entries out of a page to write them back holds the page's write-back lock
//! from *before* it takes the copies until the store has them: write-backs of one page happen
//! one at a time, in the order of their copies.
//!
//! The lock order is always write-back lock, then page lock; nobody waits for a write-back
//! lock while holding a page lock, so holding one across a call of the backing store never
//! stalls a page lock. A read-through miss that finds the write-back lock held by someone else
//! does not wait for it either (see `Cache::get_layered`).
//!
//! The lock is of the file's lock kind:
//!
//! - **Robust files**: a process-shared robust mutex per page in the write-back lock table of
//!   the native header, with the page locks' owner-death recovery (a lock whose owner died is
//!   taken over and marked consistent; it guards no bytes, so nothing needs repair). It lives
//!   in the shared mapping, which a process that can only read the file cannot change: no
//!   reader can block a writer.
//! - **fcntl files** (the only kind of the FastMmap layout): an in-process mutex (which
//!   excludes threads) and an fcntl record lock one byte long past the end of the file, at
//!   `file length + page` (which excludes processes, and which the kernel drops if its owner
//!   dies). Cache::FastMmap never locks there. fcntl locks need only read access, so anyone
//!   who may read such a file can block its writers, through this lock as through the page
//!   locks (as with Perl's Cache::FastMmap): such a file must not be readable by anyone not
//!   trusted to write it.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::fcntl::LockFailure;
use super::lock::{Held, PageLocks, Reentry};
use super::shared::{LockError, SharedFile};

/// A held write-back lock of one page; released when dropped.
pub(crate) struct WriteBackGuard<'a> {
    file: &'a SharedFile,
    page: u32,
    held: Held,
    _reentry: Reentry,
}

/// How long [`SharedFile::lock_write_back`] waits.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    /// Up to the timeout (`None`: for as long as it takes).
    Up(Option<Duration>),
    /// Not at all: a lock held by anyone else is [`LockError::TimedOut`] at once.
    No,
}

impl SharedFile {
    /// The byte that stands for `page`'s write-back lock of the fcntl kind: past the end of
    /// the file.
    pub(super) fn write_back_range(&self, page: u32) -> (u64, u64) {
        let end = self.header_size as u64
            + u64::from(self.geometry.num_pages) * u64::from(self.geometry.page_size)
            + self.overflow.as_ref().map_or(0, |a| a.geometry.area_size());
        (end + u64::from(page), 1)
    }

    /// The reentry id of this file's write-back locks. Files are at least 8-byte aligned, so
    /// `+ 1` names no file's page locks.
    fn write_back_id(&self) -> usize {
        self as *const SharedFile as usize + 1
    }

    /// Whether this thread holds a write-back lock of this file, or of a file it was resized
    /// into (it is in a backing store's callback: during a move its lock may be the new
    /// file's, and taking another there would be refused as re-entrant).
    pub(crate) fn holds_write_back(&self) -> bool {
        let mut file = self;
        for _ in 0..=super::MAX_FOLLOWS {
            if Reentry::held(file.write_back_id()) {
                return true;
            }
            match file.successor.get() {
                Some(next) => file = next,
                None => return false,
            }
        }
        false
    }

    /// Takes `page`'s write-back lock, waiting as `wait` says. Take it before the page's own
    /// lock, never while holding that.
    ///
    /// A thread that holds a write-back lock of this file cannot take another
    /// ([`LockError::Reentrant`]): it could wait for itself, or for a thread waiting for it.
    pub(crate) fn lock_write_back(
        &self,
        page: u32,
        wait: Wait,
    ) -> Result<WriteBackGuard<'_>, LockError> {
        if self.read_only {
            return Err(LockError::ReadOnly);
        }
        let Some(reentry) = Reentry::enter(self.write_back_id()) else {
            return Err(LockError::Reentrant);
        };
        let deadline = match wait {
            Wait::Up(timeout) => timeout.and_then(|t| Instant::now().checked_add(t)),
            Wait::No => Some(Instant::now()),
        };
        let held = self
            .write_back_locks
            .acquire(
                self.file.as_raw_fd(),
                page,
                self.write_back_range(page),
                deadline,
                false,
            )
            .map_err(|e| match e {
                LockFailure::TimedOut => LockError::TimedOut,
                LockFailure::Os(e) => LockError::Os(e),
            })?;
        // A resizer holds a page's write-back lock while it moves the page: taken before the
        // move, the page cannot move while this is held; taken after, the mark shows.
        if self.moved(page) && self.in_move() {
            self.write_back_locks.release(
                self.file.as_raw_fd(),
                page,
                self.write_back_range(page),
                &held,
            );
            return Err(LockError::Moved);
        }
        Ok(WriteBackGuard {
            file: self,
            page,
            held,
            _reentry: reentry,
        })
    }
}

impl Drop for WriteBackGuard<'_> {
    fn drop(&mut self) {
        self.file.write_back_locks.release(
            self.file.file.as_raw_fd(),
            self.page,
            self.file.write_back_range(self.page),
            &self.held,
        );
    }
}

/// The write-back locks of a file of `num_pages` pages whose page locks are `page_locks`:
/// for a robust file, the other area of the same set (which has joined the openers lock and
/// readied the lock words).
pub(super) fn write_back_locks(page_locks: &PageLocks, num_pages: u32) -> PageLocks {
    match page_locks {
        PageLocks::Robust(locks) => PageLocks::Robust(locks.write_back()),
        PageLocks::Fcntl { .. } => PageLocks::fcntl(num_pages),
    }
}
