//! One open file, its mapping and its page locks, shared by every handle in this process.

#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapRaw;

use super::fcntl::LockFailure;
use super::geometry::Geometry;
use super::guard::{Locked, PageGuard, ReadGuard};
use super::header;
use super::layout::{Layout, LockKind};
use super::lock::{PageLocks, Reentry};
use crate::{Error, LockRole};

/// Why a page lock was not taken; [`SharedFile::lock_error`] makes it an [`Error`].
#[derive(Debug)]
pub(crate) enum LockError {
    /// This thread already holds a lock of this file.
    Reentrant,
    /// A change was asked of a file opened read-only.
    ReadOnly,
    /// The lock timeout ran out.
    TimedOut,
    /// The operating system refused.
    Os(std::io::Error),
    /// The page's entries live in the file this one was resized into: the lock was let go,
    /// and the caller follows the move (see `store/resize.rs`).
    Moved,
}

/// The words of a page's row in the native header that this crate changes, as atomics.
pub(super) struct Row<'a> {
    /// Set around structural changes (`BUSY_CHANGE`, or `BUSY_REDO` for a journaled one);
    /// found set, the page is reset, or its journaled change completed.
    pub(super) busy: &'a AtomicU32,
    /// Resets of the page.
    pub(super) resets: &'a AtomicU32,
    /// Robust-locked files: the sequence word of optimistic reads (odd while locked).
    pub(super) seq: &'a AtomicU32,
    /// Non-zero once the page's entries live in the successor file (see `store/resize.rs`).
    pub(super) moved: &'a AtomicU32,
}

/// One open file, shared by every `Cache` handle on it in this process.
pub(crate) struct SharedFile {
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) map: MmapRaw,
    pub(super) geometry: Geometry,
    pub(super) layout: Layout,
    pub(super) lock_kind: LockKind,
    pub(super) header_size: usize,
    /// The file's owner, checked again by every later open in this process.
    pub(super) owner: u32,
    /// Opened and mapped for reading only: pages are locked with shared (read) locks and
    /// never written.
    pub(super) read_only: bool,
    /// The per-page rows of the native header can be written (native layout, read-write).
    pub(super) rows: bool,
    pub(super) locks: PageLocks,
    /// One write-back lock per page (see `write_back_lock.rs`), of the file's lock kind. Made at
    /// open even for handles without a backing store (fcntl kind: 4 bytes a page; robust:
    /// the lock words are in the file): made lazily, a fork from another thread
    /// could copy its initialisation half done, and the child would wait for it forever.
    pub(super) write_back_locks: PageLocks,
    /// Resets per page, for the FastMmap layout (which has no header to count them in).
    pub(super) local_resets: Box<[AtomicU64]>,
    /// Dirty entries found in pages this process reset (their writes are lost).
    pub(super) dirty_lost: AtomicU64,
    /// Backing store failures, undecodable values and lock timeouts in this process.
    pub(crate) faults: crate::events::Faults,
    /// Descriptors of this file opened by racing openers: never closed while the file is in
    /// use, since closing any descriptor drops all of this process's fcntl locks on it.
    pub(super) spare_fds: Mutex<Vec<File>>,
    /// Optimistic reads (native files opened read-write, either lock kind): see `optimistic.rs`.
    pub(super) optimistic: Option<super::optimistic::Optimistic>,
    /// How this file was opened, to open the file it is resized into the same way.
    pub(super) request: super::OpenRequest,
    /// The file this one was resized into, once some handle of this process followed it (set
    /// once, under the registry's lock, and never cleared: see `store/resize.rs`).
    pub(super) successor: std::sync::OnceLock<std::sync::Arc<SharedFile>>,
    /// Non-zero while a thread of this process resizes the file (fcntl locks do not exclude
    /// threads of one process): the fork generation of that process plus one, so that a
    /// child forked mid-resize, whose generation is another, finds it free (see
    /// `resize::resize_lock`).
    pub(super) resizing: std::sync::atomic::AtomicU32,
    /// The overflow area for values larger than a page (native files that have one).
    pub(super) overflow: Option<super::overflow::Area>,
    /// The redo journal of crash-atomic page changes (native files created with one).
    pub(super) journal: Option<super::journal::Journal>,
}

impl SharedFile {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn geometry(&self) -> Geometry {
        self.geometry
    }

    pub(crate) fn layout(&self) -> Layout {
        self.layout
    }

    pub(crate) fn lock_kind(&self) -> LockKind {
        self.lock_kind
    }

    #[inline]
    pub(super) fn page_range(&self, page: u32) -> (u64, u64) {
        let size = u64::from(self.geometry.page_size);
        (self.header_size as u64 + u64::from(page) * size, size)
    }

    /// The busy marker and reset counter of `page` (native layout, opened read-write).
    #[inline]
    pub(super) fn row(&self, page: u32) -> Option<Row<'_>> {
        if !self.rows || page >= self.geometry.num_pages {
            return None;
        }
        let row = header::row_offset(page);
        // SAFETY: the row lies inside the header, which is inside the mapping (checked on open:
        // header_size covers every row), and the mapping is writable (not read-only); the
        // offsets are multiples of 4 from a page-aligned base, so the words are aligned; they
        // are only ever accessed atomically, and the mapping lives as long as `self`.
        unsafe {
            let base = self.map.as_mut_ptr().add(row);
            Some(Row {
                busy: AtomicU32::from_ptr(base.add(header::ROW_BUSY_OFFSET).cast()),
                resets: AtomicU32::from_ptr(base.add(header::ROW_RESETS_OFFSET).cast()),
                seq: AtomicU32::from_ptr(base.add(header::ROW_SEQ_OFFSET).cast()),
                moved: AtomicU32::from_ptr(base.add(header::ROW_MOVED_OFFSET).cast()),
            })
        }
    }

    /// One word of `page`'s row read without writing (native layout): read-only mappings
    /// cannot be handed out as atomics, which promise writability.
    pub(super) fn row_word(&self, page: u32, offset: usize) -> Option<u32> {
        if self.layout != Layout::Native || page >= self.geometry.num_pages {
            return None;
        }
        if let Some(row) = self.row(page) {
            let word = match offset {
                header::ROW_BUSY_OFFSET => row.busy,
                header::ROW_SEQ_OFFSET => row.seq,
                header::ROW_MOVED_OFFSET => row.moved,
                _ => row.resets,
            };
            return Some(word.load(Ordering::Acquire));
        }
        // SAFETY: as in `row`, the aligned word lies inside the mapping, which is readable; a
        // volatile read, since other processes write it.
        Some(unsafe {
            self.map
                .as_ptr()
                .add(header::row_offset(page) + offset)
                .cast::<u32>()
                .read_volatile()
        })
    }

    /// Dirty entries found in pages this process reset; with `clear`, zeroes the count.
    pub(crate) fn dirty_lost(&self, clear: bool) -> u64 {
        if clear {
            self.dirty_lost.swap(0, Ordering::Relaxed)
        } else {
            self.dirty_lost.load(Ordering::Relaxed)
        }
    }

    /// How many times `page` has been reset for failing validation.
    pub(crate) fn resets(&self, page: u32) -> u64 {
        match self.row_word(page, header::ROW_RESETS_OFFSET) {
            Some(resets) => u64::from(resets),
            None => self
                .local_resets
                .get(page as usize)
                .map_or(0, |r| r.load(Ordering::Relaxed)),
        }
    }

    /// Zeroes the reset counters (native: in the file; FastMmap: in this process).
    pub(crate) fn clear_resets(&self, page: u32) {
        match self.row(page) {
            Some(row) => row.resets.store(0, Ordering::Relaxed),
            None => {
                if let Some(r) = self.local_resets.get(page as usize) {
                    r.store(0, Ordering::Relaxed);
                }
            }
        }
    }

    /// Locks `page` for a change, waiting at most `timeout`. A page left half-changed by a
    /// dead process (its busy marker set) is reset first, and the reset counted, unless the
    /// marker is the journal's and the journal completes the change; the page's
    /// header is the page operation's to check.
    // Always inlined, with `lock_as_is` and the `acquire`s below it: the guard is then built
    // in the caller's frame rather than copied out through each return (`Cache::lock_page`).
    #[inline(always)]
    pub(crate) fn lock(
        &self,
        page: u32,
        timeout: Option<Duration>,
    ) -> Result<PageGuard<'_>, LockError> {
        let guard = self.lock_as_is(page, timeout)?;
        // What needs the guard by reference is decided here and done in `mend`, so that on
        // the common path the guard is never handed to a call that is not inlined (which puts
        // it in memory, to be copied out again), and goes to the caller as built.
        let busy = guard.busy();
        let foreign = guard.0.foreign_magic();
        let counts = match &self.optimistic {
            Some(optimistic) => optimistic.take(page),
            None => (0, 0),
        };
        if busy || foreign || counts != (0, 0) {
            return Ok(self.mend(guard, busy, foreign, counts));
        }
        Ok(guard)
    }

    /// [`lock`](Self::lock)'s work on a page that needs it: a busy marker, a foreign magic,
    /// or read counts of this process's lock-free reads to add to the page header.
    #[inline(never)]
    fn mend<'a>(
        &'a self,
        mut guard: PageGuard<'a>,
        busy: bool,
        foreign: bool,
        (reads, hits): (u32, u32),
    ) -> PageGuard<'a> {
        let page = guard.page_index();
        // A journaled change a dead process left is completed; any other marker is a reset.
        if busy && !self.journal_redo(page) {
            guard.reset();
        }
        // In Cache::FastMmap's layout a page may only be one Perl reads: a page with the
        // native tagged magic (damage, or planted) is reset here, before anything reads its
        // slot words with tags or writes tagged ones for Perl to take for offsets.
        if foreign && guard.0.foreign_magic() {
            guard.reset_because(Some(super::guard::FOREIGN_MAGIC.0));
        }
        if reads != 0 || hits != 0 {
            guard.add_read_counts(reads, hits);
        }
        guard
    }

    /// Locks `page` for a change and leaves it as it is, however damaged (for checks and
    /// repairs), its busy marker too (a journaled change is completed by [`lock`](Self::lock)
    /// and [`lock_shared`](Self::lock_shared), not here).
    #[inline(always)]
    pub(crate) fn lock_as_is(
        &self,
        page: u32,
        timeout: Option<Duration>,
    ) -> Result<PageGuard<'_>, LockError> {
        if self.read_only {
            return Err(LockError::ReadOnly);
        }
        Ok(PageGuard(self.acquire(page, timeout, false, true)?))
    }

    /// Locks `page` for reading, as it is: a read (shared) record lock in a file opened
    /// read-only, so that other readers go on at the same time; otherwise the page's ordinary
    /// lock.
    #[inline]
    pub(crate) fn lock_shared(
        &self,
        page: u32,
        timeout: Option<Duration>,
    ) -> Result<ReadGuard<'_>, LockError> {
        let mut locked = self.acquire(page, timeout, self.read_only, false)?;
        // This lock excludes every writer of a read-write mapping: a journaled change a dead
        // process left is completed here too (as a change, for optimistic readers), so
        // reads and `validate` see the page whole. Read-only, it waits for a writer (the page
        // reads as busy).
        if self.journal.is_some()
            && !self.read_only
            && self.row_word(page, header::ROW_BUSY_OFFSET) == Some(super::journal::BUSY_REDO)
        {
            self.begin_change(page);
            locked.change = true;
            self.journal_redo(page);
        }
        Ok(ReadGuard(locked))
    }

    #[inline(always)]
    fn acquire(
        &self,
        page: u32,
        timeout: Option<Duration>,
        shared: bool,
        change: bool,
    ) -> Result<Locked<'_>, LockError> {
        let id = self as *const SharedFile as usize;
        let Some(reentry) = Reentry::enter(id) else {
            return Err(LockError::Reentrant);
        };
        // A timeout too long to represent as an instant is as good as none.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        match self.locks.acquire(
            self.file.as_raw_fd(),
            page,
            self.page_range(page),
            deadline,
            shared,
        ) {
            Ok(held) => {
                if self.moved(page) && self.moved_under_lock(page) {
                    self.locks
                        .release(self.file.as_raw_fd(), page, self.page_range(page), &held);
                    return Err(LockError::Moved);
                }
                if change {
                    self.begin_change(page);
                }
                Ok(Locked {
                    file: self,
                    page,
                    held,
                    change,
                    _reentry: reentry,
                })
            }
            Err(LockFailure::TimedOut) => Err(LockError::TimedOut),
            Err(LockFailure::Os(e)) => Err(LockError::Os(e)),
        }
    }

    /// The crate's error for `page`'s lock `lock` that was not taken (kept off the hot path:
    /// the lock functions return the small [`LockError`]).
    #[cold]
    #[inline(never)]
    pub(crate) fn lock_error(
        &self,
        e: LockError,
        lock: LockRole,
        page: u32,
        timeout: Option<Duration>,
    ) -> Error {
        let path = self.path.clone();
        match e {
            LockError::Reentrant => Error::Reentrant { path },
            LockError::ReadOnly => Error::ReadOnly { path },
            LockError::TimedOut => {
                crate::events::lock_timeout(&self.faults, &path, page, lock, timeout);
                Error::LockTimeout {
                    path,
                    page,
                    lock,
                    timeout: timeout.unwrap_or_default(),
                }
            }
            LockError::Os(source) => Error::Lock {
                path,
                page,
                lock,
                source,
            },
            LockError::Moved => Error::Resize {
                path,
                reason: format!("page {page} moved to the resized file while being locked"),
            },
        }
    }
}
