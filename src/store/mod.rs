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
use crate::page::{PageHeader, PageMut, PageView};
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
    /// The file's owner, checked again by every later open in this process.
    owner: u32,
    /// Opened and mapped for reading only: pages are locked with shared (read) locks and
    /// never written.
    read_only: bool,
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

    /// The busy marker and reset counter of `page` (native layout, opened read-write).
    fn row(&self, page: u32) -> Option<(&AtomicU32, &AtomicU32)> {
        if self.layout != Layout::Native || self.read_only || page >= self.geometry.num_pages {
            return None;
        }
        let row = header::row_offset(page);
        // SAFETY: the row lies inside the header, which is inside the mapping (checked on open:
        // header_size covers every row), and the mapping is writable (not read-only); the
        // offsets are multiples of 4 from a page-aligned base, so the words are aligned; they
        // are only ever accessed atomically, and the mapping lives as long as `self`.
        unsafe {
            let base = self.map.as_mut_ptr().add(row);
            Some((
                AtomicU32::from_ptr(base.add(header::ROW_BUSY_OFFSET).cast()),
                AtomicU32::from_ptr(base.add(header::ROW_RESETS_OFFSET).cast()),
            ))
        }
    }

    /// One word of `page`'s row read without writing (native layout): read-only mappings
    /// cannot be handed out as atomics, which promise writability.
    fn row_word(&self, page: u32, offset: usize) -> Option<u32> {
        if self.layout != Layout::Native || page >= self.geometry.num_pages {
            return None;
        }
        if let Some((busy, resets)) = self.row(page) {
            let word = if offset == header::ROW_BUSY_OFFSET {
                busy
            } else {
                resets
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
            Some((_, resets)) => resets.store(0, Ordering::Relaxed),
            None => {
                if let Some(r) = self.local_resets.get(page as usize) {
                    r.store(0, Ordering::Relaxed);
                }
            }
        }
    }

    /// Locks `page` for a change, waiting at most `timeout`. The page returned passes the
    /// header check: one left half-changed by a dead process (busy marker set) or failing the
    /// check is reset first, and the reset counted.
    #[inline]
    pub(crate) fn lock(&self, page: u32, timeout: Option<Duration>) -> Result<PageGuard<'_>> {
        let mut guard = self.lock_as_is(page, timeout)?;
        if guard.problem().is_some() {
            guard.reset();
        }
        Ok(guard)
    }

    /// Locks `page` for a change and leaves it as it is, however damaged (for checks and
    /// repairs).
    #[inline]
    pub(crate) fn lock_as_is(&self, page: u32, timeout: Option<Duration>) -> Result<PageGuard<'_>> {
        if self.read_only {
            return Err(Error::ReadOnly {
                path: self.path.clone(),
            });
        }
        Ok(PageGuard(self.acquire(page, timeout, false)?))
    }

    /// Locks `page` for reading, as it is: a read (shared) record lock in a file opened
    /// read-only, so that other readers go on at the same time; otherwise the page's ordinary
    /// lock.
    #[inline]
    pub(crate) fn lock_shared(
        &self,
        page: u32,
        timeout: Option<Duration>,
    ) -> Result<ReadGuard<'_>> {
        Ok(ReadGuard(self.acquire(page, timeout, self.read_only)?))
    }

    #[inline]
    fn acquire(&self, page: u32, timeout: Option<Duration>, shared: bool) -> Result<Locked<'_>> {
        let id = self as *const SharedFile as usize;
        let reentry = Reentry::enter(id).ok_or_else(|| Error::Reentrant {
            path: self.path.clone(),
        })?;
        let range = self.page_range(page);
        // A timeout too long to represent as an instant is as good as none.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let held = self
            .locks
            .acquire(self.file.as_raw_fd(), page, range, deadline, shared)
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
        Ok(Locked {
            file: self,
            page,
            range,
            held: Some(held),
            _reentry: reentry,
        })
    }
}

/// A held page lock, of either mode; released when dropped.
struct Locked<'a> {
    file: &'a SharedFile,
    page: u32,
    range: (u64, u64),
    held: Option<Held>,
    _reentry: Reentry,
}

impl Locked<'_> {
    /// The page's bytes, for reading.
    #[inline]
    fn view(&self) -> &[u8] {
        let (offset, len) = self.range;
        // SAFETY: `offset + len` lies inside the mapping (page < num_pages and the file size
        // was checked against the geometry on open); this lock excludes every cooperating
        // writer of the page, and the borrow of `self` keeps the slice from outliving it.
        unsafe {
            std::slice::from_raw_parts(self.file.map.as_ptr().add(offset as usize), len as usize)
        }
    }

    /// Why the page must be reset before use, if it must: its busy marker is set (a process
    /// died changing it) or its header fails the check.
    #[inline]
    fn problem(&self) -> Option<crate::page::Corrupt> {
        let busy = self
            .file
            .row_word(self.page, header::ROW_BUSY_OFFSET)
            .is_some_and(|busy| busy != 0);
        if busy {
            return Some(crate::page::Corrupt(
                "busy marker set: a process died changing the page",
            ));
        }
        let g = self.file.geometry;
        PageHeader::read(self.view())
            .check(g.page_size as usize, g.start_slots)
            .err()
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            self.file
                .locks
                .release(self.file.file.as_raw_fd(), self.page, self.range, held);
        }
    }
}

/// A page locked for reading: its bytes can be read, never written (in a file opened
/// read-only they are mapped read-only).
pub(crate) struct ReadGuard<'a>(Locked<'a>);

impl ReadGuard<'_> {
    /// The page, if it passes the header check (a damaged page cannot be repaired here).
    #[inline]
    pub(crate) fn page(&self) -> Option<PageView<'_>> {
        match self.0.problem() {
            None => Some(PageView::new(self.0.view())),
            Some(_) => None,
        }
    }

    /// The page's bytes, however damaged, and why it is damaged if it is.
    pub(crate) fn as_is(&self) -> (&[u8], Option<crate::page::Corrupt>) {
        (self.0.view(), self.0.problem())
    }
}

/// A page locked for a change; the page's bytes are reachable only through it.
pub(crate) struct PageGuard<'a>(Locked<'a>);

impl PageGuard<'_> {
    pub(crate) fn page_index(&self) -> u32 {
        self.0.page
    }

    /// The page's bytes.
    #[inline]
    pub(crate) fn bytes(&mut self) -> &mut [u8] {
        let (offset, len) = self.0.range;
        // SAFETY: `offset + len` lies inside the mapping (page < num_pages and the file size
        // was checked against the geometry on open), which is writable (a `PageGuard` is only
        // made for a file opened read-write); this guard holds the page's lock, so no other
        // thread or cooperating process touches these bytes, and the borrow of `self` keeps
        // the slice from outliving the lock or aliasing another `bytes()` borrow.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.0.file.map.as_mut_ptr().add(offset as usize),
                len as usize,
            )
        }
    }

    /// Why the page must be reset before use, if it must: its busy marker is set (a process
    /// died changing it) or its header fails the check.
    #[inline]
    pub(crate) fn problem(&mut self) -> Option<crate::page::Corrupt> {
        self.0.problem()
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
        let row = self.0.file.row(self.0.page);
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
        let (file, page) = (self.0.file, self.0.page);
        match file.row(page) {
            Some((_, resets)) => {
                resets.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                if let Some(r) = file.local_resets.get(page as usize) {
                    r.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.wipe();
    }

    /// Empties the page (on request, not for damage: nothing is counted).
    pub(crate) fn wipe(&mut self) {
        let slots = self.0.file.geometry.start_slots;
        PageMut::init(self.bytes(), slots);
        if let Some((busy, _)) = self.0.file.row(self.0.page) {
            busy.store(0, Ordering::Release);
        }
    }
}
