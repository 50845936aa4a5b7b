//! The file, its mapping, the process-wide registry and the page locks: the only place with
//! `unsafe` code.
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

#![allow(unsafe_code)]

mod file;
mod fork;
pub(crate) mod header;
mod lock;
mod registry;
mod robust;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapRaw;

pub(crate) use file::{OpenRequest, current_uid};
use lock::{Held, LockFailure, PageLocks, Reentry};
pub(crate) use registry::open_shared;
/// Whether [`LockKind::Robust`] can be used on this platform.
pub(crate) const ROBUST_LOCKS_AVAILABLE: bool = robust::AVAILABLE;

use crate::page::format::{MAX_PAGE_SIZE, MIN_PAGE_SIZE, MIN_SLOTS};
use crate::page::{PageHeader, PageMut};
use crate::{Error, Layout, LockKind, Result};

/// Default geometry (Cache::FastMmap's).
pub(crate) const DEFAULT_NUM_PAGES: u32 = 89;
pub(crate) const DEFAULT_PAGE_SIZE: u32 = 65536;
/// Most pages a file may have.
pub(crate) const MAX_NUM_PAGES: u32 = 1 << 20;
/// Largest file the crate creates.
pub(crate) const MAX_FILE_SIZE: u64 = 1 << 40;

/// The current Unix time in whole seconds, from the coarse real-time clock: a read of the
/// kernel's last tick, far cheaper than a precise clock read, and off by at most a tick
/// (a few milliseconds), which whole seconds do not notice.
pub(crate) fn unix_now_coarse() -> u32 {
    // SAFETY: `timespec` is plain data; zeroed is a valid value.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    if rc != 0 || ts.tv_sec < 0 {
        return crate::clock::unix_secs(std::time::SystemTime::now());
    }
    (ts.tv_sec as u64).min(u64::from(u32::MAX)) as u32
}

/// Pages, page size and starting slot count of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub num_pages: u32,
    pub page_size: u32,
    pub start_slots: u32,
}

impl Geometry {
    /// Checks the geometry is one the crate can use; the error is the reason.
    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        let ps = self.page_size as usize;
        if !self.page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&ps) {
            return Err(format!(
                "page_size {} must be a power of two from {MIN_PAGE_SIZE} to {MAX_PAGE_SIZE}",
                self.page_size
            ));
        }
        if self.num_pages == 0 || self.num_pages > MAX_NUM_PAGES {
            return Err(format!(
                "num_pages {} must be from 1 to {MAX_NUM_PAGES}",
                self.num_pages
            ));
        }
        let total = u64::from(self.num_pages) * u64::from(self.page_size);
        if total > MAX_FILE_SIZE {
            return Err(format!(
                "{total} bytes of pages is more than the {MAX_FILE_SIZE} allowed"
            ));
        }
        if self.start_slots < MIN_SLOTS {
            return Err(format!(
                "start_slots {} must be at least {MIN_SLOTS}",
                self.start_slots
            ));
        }
        let table = crate::page::format::slots_end(self.start_slots).unwrap_or(usize::MAX);
        if table > ps / 2 {
            return Err(format!(
                "a slot table of {} slots ({table} bytes with the page header) must fit in half a page ({} bytes)",
                self.start_slots,
                ps / 2
            ));
        }
        Ok(())
    }
}

/// Geometry fields the builder set explicitly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Requested {
    pub num_pages: Option<u32>,
    pub page_size: Option<u32>,
    pub start_slots: Option<u32>,
}

impl Requested {
    pub(crate) fn or_defaults(&self) -> Geometry {
        Geometry {
            num_pages: self.num_pages.unwrap_or(DEFAULT_NUM_PAGES),
            page_size: self.page_size.unwrap_or(DEFAULT_PAGE_SIZE),
            start_slots: self.start_slots.unwrap_or(MIN_SLOTS),
        }
    }

    /// Fails if an explicitly requested field differs from the file's.
    pub(crate) fn check_against(&self, found: &Geometry, path: &Path) -> Result<()> {
        let fields = [
            ("num_pages", self.num_pages, found.num_pages),
            ("page_size", self.page_size, found.page_size),
            ("start_slots", self.start_slots, found.start_slots),
        ];
        for (field, requested, found) in fields {
            if let Some(requested) = requested
                && requested != found
            {
                return Err(Error::GeometryMismatch {
                    path: path.to_path_buf(),
                    field,
                    requested: u64::from(requested),
                    found: u64::from(found),
                });
            }
        }
        Ok(())
    }
}

/// One open file, shared by every `Cache` handle on it in this process.
pub(crate) struct SharedFile {
    path: PathBuf,
    file: File,
    map: MmapRaw,
    geometry: Geometry,
    layout: Layout,
    lock_kind: LockKind,
    header_size: usize,
    locks: PageLocks,
    /// Resets per page, for the FastMmap layout (which has no header to count them in).
    local_resets: Box<[AtomicU64]>,
    /// Descriptors of this file opened by racing openers: never closed while the file is in
    /// use, since closing any descriptor drops all of this process's fcntl locks on it.
    spare_fds: Mutex<Vec<File>>,
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

    fn page_range(&self, page: u32) -> (u64, u64) {
        let size = u64::from(self.geometry.page_size);
        (self.header_size as u64 + u64::from(page) * size, size)
    }

    /// The busy marker and reset counter of `page` (native layout only).
    fn row(&self, page: u32) -> Option<(&AtomicU32, &AtomicU32)> {
        if self.layout != Layout::Native || page >= self.geometry.num_pages {
            return None;
        }
        let row = header::row_offset(page);
        // SAFETY: the row lies inside the header, which is inside the mapping (checked on open:
        // header_size covers every row); the offsets are multiples of 4 from a page-aligned
        // base, so the words are aligned; they are only ever accessed atomically, and the
        // mapping lives as long as `self`.
        unsafe {
            let base = self.map.as_mut_ptr().add(row);
            Some((
                AtomicU32::from_ptr(base.add(header::ROW_BUSY_OFFSET).cast()),
                AtomicU32::from_ptr(base.add(header::ROW_RESETS_OFFSET).cast()),
            ))
        }
    }

    /// How many times `page` has been reset for failing validation.
    pub(crate) fn resets(&self, page: u32) -> u64 {
        match self.row(page) {
            Some((_, resets)) => u64::from(resets.load(Ordering::Relaxed)),
            None => self
                .local_resets
                .get(page as usize)
                .map_or(0, |r| r.load(Ordering::Relaxed)),
        }
    }

    /// Zeroes the reset counters (native: in the file; FastMmap: in this process).
    pub(crate) fn clear_resets(&self, page: u32) {
        match self.row(page) {
            Some((_, resets)) => resets.store(0, Ordering::Relaxed),
            None => {
                if let Some(r) = self.local_resets.get(page as usize) {
                    r.store(0, Ordering::Relaxed);
                }
            }
        }
    }

    /// Locks `page`, waiting at most `timeout`. The page returned passes the header check: one
    /// left half-changed by a dead process (busy marker set) or failing the check is reset
    /// first, and the reset counted.
    #[inline]
    pub(crate) fn lock(&self, page: u32, timeout: Option<Duration>) -> Result<PageGuard<'_>> {
        let mut guard = self.lock_as_is(page, timeout)?;
        if guard.problem().is_some() {
            guard.reset();
        }
        Ok(guard)
    }

    /// Locks `page` and leaves it as it is, however damaged (for read-only checks).
    #[inline]
    pub(crate) fn lock_as_is(&self, page: u32, timeout: Option<Duration>) -> Result<PageGuard<'_>> {
        let id = self as *const SharedFile as usize;
        let reentry = Reentry::enter(id).ok_or_else(|| Error::Reentrant {
            path: self.path.clone(),
        })?;
        let range = self.page_range(page);
        // A timeout too long to represent as an instant is as good as none.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let held = self
            .locks
            .acquire(self.file.as_raw_fd(), page, range, deadline)
            .map_err(|f| match f {
                LockFailure::TimedOut => Error::LockTimeout {
                    path: self.path.clone(),
                    page,
                    timeout: timeout.unwrap_or_default(),
                },
                LockFailure::Os(source) => Error::Lock {
                    path: self.path.clone(),
                    page,
                    source,
                },
            })?;
        Ok(PageGuard {
            file: self,
            page,
            range,
            held: Some(held),
            _reentry: reentry,
        })
    }
}

/// A held page lock; the page's bytes are reachable only through it.
pub(crate) struct PageGuard<'a> {
    file: &'a SharedFile,
    page: u32,
    range: (u64, u64),
    held: Option<Held>,
    _reentry: Reentry,
}

impl PageGuard<'_> {
    pub(crate) fn page_index(&self) -> u32 {
        self.page
    }

    /// The page's bytes.
    #[inline]
    pub(crate) fn bytes(&mut self) -> &mut [u8] {
        let (offset, len) = self.range;
        // SAFETY: `offset + len` lies inside the mapping (page < num_pages and the file size
        // was checked against the geometry on open); this guard holds the page's lock, so no
        // other thread or cooperating process touches these bytes, and the borrow of `self`
        // keeps the slice from outliving the lock or aliasing another `bytes()` borrow.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.file.map.as_mut_ptr().add(offset as usize),
                len as usize,
            )
        }
    }

    /// Why the page must be reset before use, if it must: its busy marker is set (a process
    /// died changing it) or its header fails the check.
    #[inline]
    pub(crate) fn problem(&mut self) -> Option<crate::page::Corrupt> {
        let busy = self
            .file
            .row(self.page)
            .is_some_and(|(busy, _)| busy.load(Ordering::Acquire) != 0);
        if busy {
            return Some(crate::page::Corrupt(
                "busy marker set: a process died changing the page",
            ));
        }
        let g = self.file.geometry;
        PageHeader::read(self.bytes())
            .check(g.page_size as usize, g.start_slots)
            .err()
    }

    /// The page, for reading or for changes that do not restructure it (access times,
    /// statistics).
    #[inline]
    pub(crate) fn page(&mut self) -> PageMut<'_> {
        PageMut::wrap(self.bytes())
    }

    /// Runs a structural change with the busy marker set, so that a process killed part way
    /// leaves the page to be reset by the next locker. A change that finds the page damaged
    /// resets it and returns the error.
    pub(crate) fn change<T>(
        &mut self,
        f: impl FnOnce(&mut PageMut<'_>) -> std::result::Result<T, crate::page::Corrupt>,
    ) -> std::result::Result<T, crate::page::Corrupt> {
        let row = self.file.row(self.page);
        if let Some((busy, _)) = row {
            busy.store(1, Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::Release);
        }
        let result = f(&mut self.page());
        match result {
            Ok(value) => {
                if let Some((busy, _)) = row {
                    busy.store(0, Ordering::Release);
                }
                Ok(value)
            }
            Err(corrupt) => {
                self.reset();
                Err(corrupt)
            }
        }
    }

    /// Resets a page that failed validation, and counts it.
    pub(crate) fn reset(&mut self) {
        match self.file.row(self.page) {
            Some((_, resets)) => {
                resets.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                if let Some(r) = self.file.local_resets.get(self.page as usize) {
                    r.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.wipe();
    }

    /// Empties the page (on request, not for damage: nothing is counted).
    pub(crate) fn wipe(&mut self) {
        let slots = self.file.geometry.start_slots;
        PageMut::init(self.bytes(), slots);
        if let Some((busy, _)) = self.file.row(self.page) {
            busy.store(0, Ordering::Release);
        }
    }
}

impl Drop for PageGuard<'_> {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            self.file
                .locks
                .release(self.file.file.as_raw_fd(), self.page, self.range, held);
        }
    }
}
