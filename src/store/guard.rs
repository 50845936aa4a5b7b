//! Held page locks. A page's bytes are reachable only through a guard, for as long as it
//! holds the page's lock.

#![allow(unsafe_code)]

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use super::header;
use super::lock::{Held, Reentry};
use super::overflow::Full as OverflowFull;
use super::shared::SharedFile;
use crate::page::consts::{FLAG_OVERFLOW, MAGIC_OFFSET, PAGE_MAGIC_TAGGED};
use crate::page::{NewEntry, PageBytes, PageHeader, PageMut, PageView, StoreOutcome};

/// Why a Cache::FastMmap-layout page with a native page's magic is reset.
pub(super) const FOREIGN_MAGIC: crate::page::Corrupt = crate::page::Corrupt(
    "a native page's magic (tagged slot words) in a file of Cache::FastMmap's layout",
);

/// A held page lock, of either mode; released when dropped.
pub(super) struct Locked<'a> {
    pub(super) file: &'a SharedFile,
    pub(super) page: u32,
    pub(super) held: Held,
    /// Taken to change the page (a [`PageGuard`]): marked in the page's sequence word.
    pub(super) change: bool,
    pub(super) _reentry: Reentry,
}

impl Locked<'_> {
    /// The page's bytes, for reading.
    #[inline]
    fn view(&self) -> &[u8] {
        let (offset, len) = self.file.page_range(self.page);
        // SAFETY: `offset + len` lies inside the mapping (page < num_pages and the file size
        // was checked against the geometry on open); this lock excludes every cooperating
        // writer of the page, and the borrow of `self` keeps the slice from outliving it.
        unsafe {
            std::slice::from_raw_parts(self.file.map.as_ptr().add(offset as usize), len as usize)
        }
    }

    /// Whether the page's busy marker is set: a process died changing it (native layout).
    #[inline]
    fn busy(&self) -> bool {
        self.file
            .row_word(self.page, header::ROW_BUSY_OFFSET)
            .is_some_and(|busy| busy != 0)
    }

    /// Whether the page carries the magic of a native page with tagged slot words in a file of
    /// Cache::FastMmap's layout, where Perl reads every slot word as an offset: such a page is
    /// damage there, never written by this crate (see [`SharedFile::lock`]).
    #[inline]
    pub(super) fn foreign_magic(&self) -> bool {
        self.file.layout() != crate::Layout::Native
            && self.view().u32_at(MAGIC_OFFSET) == Some(PAGE_MAGIC_TAGGED)
    }

    /// Why the page is unusable as it is, if it is: its busy marker is set, or its header fails
    /// the check (for validation; operations check the header themselves, once).
    fn problem(&self) -> Option<crate::page::Corrupt> {
        if self.foreign_magic() {
            return Some(FOREIGN_MAGIC);
        }
        match self
            .file
            .row_word(self.page, header::ROW_BUSY_OFFSET)
            .unwrap_or(0)
        {
            0 => {}
            super::journal::BUSY_REDO => {
                return Some(crate::page::Corrupt(
                    "busy marker at the journal's value: a journaled change waits for a writer \
                     to complete it",
                ));
            }
            _ => {
                return Some(crate::page::Corrupt(
                    "busy marker set: a process died changing the page",
                ));
            }
        }
        let g = self.file.geometry;
        PageHeader::read(self.view())
            .check(g.page_size as usize, g.start_slots)
            .err()
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // A lock taken before a fork is the parent's: the child's copy changes nothing.
        if self.change && self.held.generation() == super::fork::generation() {
            self.file.end_change(self.page);
        }
        self.file.locks.release(
            self.file.file.as_raw_fd(),
            self.page,
            self.file.page_range(self.page),
            &self.held,
        );
    }
}

/// A page locked for reading: its bytes can be read, never written (in a file opened
/// read-only they are mapped read-only).
pub(crate) struct ReadGuard<'a>(pub(super) Locked<'a>);

impl ReadGuard<'_> {
    /// The page, unless a process died changing it (a damaged page cannot be repaired here;
    /// operations on the page check its header).
    #[inline]
    pub(crate) fn page(&self) -> Option<PageView<'_>> {
        if self.0.busy() || self.0.foreign_magic() {
            return None;
        }
        Some(PageView::with_min_slots(
            self.0.view(),
            self.0.file.geometry.start_slots,
        ))
    }

    /// The page's bytes, however damaged, and why it is damaged if it is.
    pub(crate) fn as_is(&self) -> (&[u8], Option<crate::page::Corrupt>) {
        (self.0.view(), self.0.problem())
    }
}

/// A page locked for a change; the page's bytes are reachable only through it.
pub(crate) struct PageGuard<'a>(pub(super) Locked<'a>);

/// The file and page a [`PageGuard`] holds: where the large values of its entries are read
/// from while the guard lives (after a resize, the handle's current file may be another).
#[derive(Clone, Copy)]
pub(crate) struct Place<'a> {
    pub(crate) file: &'a SharedFile,
    pub(crate) page: u32,
}

impl<'a> PageGuard<'a> {
    /// The file and page this guard holds.
    pub(crate) fn place(&self) -> Place<'a> {
        Place {
            file: self.0.file,
            page: self.0.page,
        }
    }
}

impl PageGuard<'_> {
    pub(crate) fn page_index(&self) -> u32 {
        self.0.page
    }

    /// The page's bytes.
    #[inline]
    pub(crate) fn bytes(&mut self) -> &mut [u8] {
        let (offset, len) = self.0.file.page_range(self.0.page);
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

    /// Adds reads and hits counted without the lock (optimistic reads) to the page's
    /// statistics.
    pub(crate) fn add_read_counts(&mut self, reads: u32, hits: u32) {
        let hdr = self.page().header();
        let bytes = self.bytes();
        let mut add = |off: usize, to: u32, n: u32| {
            if let Some(word) = bytes.get_mut(off..off + 4) {
                word.copy_from_slice(&to.wrapping_add(n).to_ne_bytes());
            }
        };
        add(crate::page::consts::N_READS_OFFSET, hdr.n_reads, reads);
        add(
            crate::page::consts::N_READ_HITS_OFFSET,
            hdr.n_read_hits,
            hits,
        );
    }

    /// Whether a process died changing the page (its busy marker is set).
    #[inline]
    pub(crate) fn busy(&self) -> bool {
        self.0.busy()
    }

    /// The page, for reading or for changes that do not restructure it (access times,
    /// statistics).
    #[inline]
    pub(crate) fn page(&mut self) -> PageMut<'_> {
        let min_slots = self.0.file.geometry.start_slots;
        // The eviction policy is the native layout's; Perl's pages keep Perl's rule.
        let policy = self.0.file.layout() == crate::Layout::Native;
        PageMut::with_min_slots(self.bytes(), min_slots).with_policy(policy)
    }

    /// Runs a structural change with the busy marker set, so that a process killed part way
    /// leaves the page to be reset by the next locker. A change that finds the page damaged
    /// resets it and returns the error.
    pub(crate) fn change<T>(
        &mut self,
        f: impl FnOnce(&mut PageMut<'_>) -> std::result::Result<T, crate::page::Corrupt>,
    ) -> std::result::Result<T, crate::page::Corrupt> {
        let row = self.0.file.row(self.0.page);
        if let Some(row) = &row {
            row.busy
                .store(super::journal::BUSY_CHANGE, Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::Release);
        }
        // Blocks of large values the change drops are freed before the busy marker is cleared
        // (see `overflow.rs`); without an overflow area this is a branch before and after.
        let (file, page) = (self.0.file, self.0.page);
        let before = match file.overflow() {
            Some(_) => file.overflow_refs(page, self.bytes()),
            None => None,
        };
        let mut result = f(&mut self.page());
        if result.is_ok()
            && file.overflow_owned(page) != 0
            && let Err(c) = file.overflow_settle(page, self.bytes(), before)
        {
            result = Err(c);
        }
        match result {
            Ok(value) => {
                if let Some(row) = row {
                    row.busy.store(0, Ordering::Release);
                }
                Ok(value)
            }
            Err(corrupt) => {
                self.reset_because(Some(corrupt.0));
                Err(corrupt)
            }
        }
    }

    /// Stores `req`, whose value goes to the overflow area, as one structural change: the
    /// value is written to blocks claimed for this page, then the entry with its reference is
    /// stored (replacing any old one, whose blocks the change then frees). `Ok(Err(full))`:
    /// no room in the area, nothing changed.
    pub(crate) fn store_overflow(
        &mut self,
        req: &NewEntry<'_>,
        now: u32,
        in_place: bool,
    ) -> Result<Result<StoreOutcome, OverflowFull>, crate::page::Corrupt> {
        let slots = self.0.file.geometry.start_slots;
        self.store_overflow_with(req, |p, entry| p.store_with(entry, now, slots, in_place))
    }

    /// The overflow store every writer of a large value shares: one structural change (busy
    /// marker set) that writes `req.value` to blocks claimed for this page, then hands `store`
    /// the entry to keep in the page instead — `req` with the value's reference and
    /// `FLAG_OVERFLOW` — to store as it must (plainly, keeping dirty entries, …). Whatever the
    /// change drops or refuses (the old value, evicted ones, the blocks just written if the
    /// store refused) is freed as the change ends, so `store` does any reading of dropped
    /// large values before it returns. `Ok(Err(full))`: no room in the area, nothing changed.
    pub(crate) fn store_overflow_with<T>(
        &mut self,
        req: &NewEntry<'_>,
        store: impl FnOnce(&mut PageMut<'_>, &NewEntry<'_>) -> Result<T, crate::page::Corrupt>,
    ) -> Result<Result<T, OverflowFull>, crate::page::Corrupt> {
        let (file, page) = (self.0.file, self.0.page);
        self.change(|p| {
            let reference = match file.overflow_write(page, req.value) {
                Ok(r) => r.encode(),
                Err(full) => return Ok(Err(full)),
            };
            let entry = NewEntry {
                value: &reference,
                flags: req.flags | FLAG_OVERFLOW,
                ..*req
            };
            store(p, &entry).map(Ok)
        })
    }

    /// Frees the overflow blocks this page owns that none of its entries references; a page
    /// whose references fail their checks is reset (which frees all its blocks). Returns the
    /// blocks freed.
    pub(crate) fn sweep_overflow(&mut self) -> u32 {
        let (file, page) = (self.0.file, self.0.page);
        if file.overflow().is_none() {
            return 0;
        }
        let before = file.overflow_owned(page);
        match file.overflow_sweep(page, self.bytes(), false) {
            Ok(freed) => freed,
            Err(c) => {
                self.reset_because(Some(c.0));
                before
            }
        }
    }

    /// Resets a page that failed validation, and counts it, with the dirty (write-back)
    /// entries that can still be found in it, which are lost.
    pub(crate) fn reset(&mut self) {
        let reason = self.0.problem().map(|c| c.0);
        self.reset_because(reason);
    }

    /// [`reset`](Self::reset), for the damage `c` a caller found (a check deeper than the
    /// page header's: an entry, a chain, an overflow reference), which the event names.
    pub(crate) fn reset_for(&mut self, c: crate::page::Corrupt) {
        self.reset_because(Some(c.0));
    }

    /// [`reset`](Self::reset), for the fault `reason` (if known), which the event names.
    pub(super) fn reset_because(&mut self, reason: Option<&'static str>) {
        let lost = crate::page::count_dirty(self.bytes());
        crate::events::page_reset(&self.0.file.path, self.0.page, reason, lost);
        if lost > 0 {
            self.0
                .file
                .dirty_lost
                .fetch_add(u64::from(lost), Ordering::Relaxed);
        }
        let (file, page) = (self.0.file, self.0.page);
        file.overflow_free_all(page, true);
        // A journal claimed for this page by a change that died is this lock holder's to give up.
        file.journal_give_up(page);
        match file.row(page) {
            Some(row) => {
                row.resets.fetch_add(1, Ordering::Relaxed);
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
        self.0.file.overflow_free_all(self.0.page, false);
        let tagged = self.0.file.layout() == crate::Layout::Native;
        PageMut::init_as(self.bytes(), slots, tagged);
        if let Some(row) = self.0.file.row(self.0.page) {
            row.busy.store(0, Ordering::Release);
        }
    }
}
