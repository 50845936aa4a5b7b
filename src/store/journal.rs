//! The redo journal: structural changes of a page that a process killed anywhere in them
//! cannot half-make (docs/format.md §5.5).
//!
//! A native file created with a journal (`OpenRequest::journal`) ends with one region of
//! `journal_size` bytes (the page size + `JOURNAL_ROOM`), after its pages and overflow area. A
//! journaled change ([`PageGuard::change_journaled`]) runs on a private copy of the page, writes
//! the extents of the copy that differ from the page (64-byte chunks) to the journal with a
//! checksum, sets the page's busy marker to [`BUSY_REDO`], copies the extents in, frees the
//! overflow blocks the page no longer references, clears the marker and gives the journal up.
//!
//! A process killed before the marker takes the journal's value leaves the page untouched (the
//! overflow blocks it claimed are owned by the page and referenced by nothing: the page's next
//! settle, or [`PageGuard::sweep_overflow`], frees them). Killed after, it leaves a complete
//! record: the next locker of the page copies the extents in again, which is idempotent, and
//! ends the change as the writer would have ([`SharedFile::journal_redo`]), instead of
//! resetting the page.
//!
//! # Who may touch the journal
//!
//! Its `writer` word holds `page + 1` of the change that owns it (0: free). Only a holder of
//! that page's lock claims it (compare-and-swap from 0) or gives it up, after the record is
//! spent. So a writer word naming a page whose lock can be taken belongs to a process that
//! died: a claimant takes that page's lock without waiting (it holds its own page's lock, and
//! waiting could deadlock), completes the page's change if its marker says so, and frees the
//! word. The record is read and written only by a holder of the lock of the page the writer
//! word names, so no two cooperating processes touch it at once. Every field read from it is
//! checked (checksum, page, every extent inside the page and the record) before anything is
//! copied, and copies go through checked slices: hostile bytes can cause a reset, never a
//! write outside the named page.

#![allow(unsafe_code)]

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::xxh3_64;

use super::guard::{PageGuard, Place};
use super::header;
use super::shared::SharedFile;
use crate::page::{Corrupt, PageHeader, PageMut};

/// The busy marker of a page during an ordinary structural change: found set, the page is
/// reset.
pub(crate) const BUSY_CHANGE: u32 = 1;
/// The busy marker of a page whose journaled change is recorded in the journal: found set, the
/// change is completed from the journal (or, the record failing its checks, the page reset).
pub(crate) const BUSY_REDO: u32 = 2;

// Journal region, at the end of the file, `journal_size` bytes:
// | writer u32 (page + 1; 0 free) | reserved u32 | record … |
// Record (its offsets below are from the record's start):
// | checksum u64 (xxh3 of bytes RECORD_MAGIC_OFFSET..RECORD_EXTENTS_OFFSET + bytes) |
// | magic u32 | page u32 | bytes u32 (of the extents) | extents u32 |
// | extent: offset u32 | len u32 | len bytes (the page's new bytes at offset) | …
pub(crate) const JOURNAL_WRITER_OFFSET: usize = 0;
pub(crate) const JOURNAL_RECORD_OFFSET: usize = JOURNAL_WRITER_OFFSET + 8;
pub(crate) const RECORD_CHECKSUM_OFFSET: usize = 0;
pub(crate) const RECORD_MAGIC_OFFSET: usize = RECORD_CHECKSUM_OFFSET + 8;
pub(crate) const RECORD_PAGE_OFFSET: usize = RECORD_MAGIC_OFFSET + 4;
pub(crate) const RECORD_BYTES_OFFSET: usize = RECORD_PAGE_OFFSET + 4;
pub(crate) const RECORD_COUNT_OFFSET: usize = RECORD_BYTES_OFFSET + 4;
pub(crate) const RECORD_EXTENTS_OFFSET: usize = RECORD_COUNT_OFFSET + 4;
pub(crate) const EXTENT_OFFSET_OFFSET: usize = 0;
pub(crate) const EXTENT_LEN_OFFSET: usize = EXTENT_OFFSET_OFFSET + 4;
pub(crate) const EXTENT_HEADER_SIZE: usize = EXTENT_LEN_OFFSET + 4;
/// A live record's magic ("JRNL"); 0 once the record is spent.
pub(crate) const JOURNAL_MAGIC: u32 = u32::from_be_bytes(*b"JRNL");
/// The page and its copy are compared in chunks of this many bytes: a chunk that differs is
/// journaled whole, and neighbouring ones make one extent.
pub(crate) const CHUNK: usize = 64;
/// Unchanged bytes are skipped this many at a time before chunks are compared.
const SPAN: usize = 16 * CHUNK;
/// How long a change waits by default for the journal while other pages' changes hold it
/// (each holds it for one page copy): past it, the change is refused and nothing changes.
/// [`SharedFile::set_journal_wait`] sets another.
pub(crate) const JOURNAL_WAIT: Duration = Duration::from_secs(10);

/// Where a file's journal region is.
pub(crate) struct Journal {
    offset: usize,
    size: usize,
    /// How long a change waits for the journal, in milliseconds (this process's setting).
    wait_ms: std::sync::atomic::AtomicU64,
}

impl Journal {
    /// The journal of `size` bytes at `offset` (`None`: the file has none).
    pub(super) fn new(size: u32, offset: u64) -> Option<Journal> {
        (size != 0).then_some(Journal {
            offset: offset as usize,
            size: size as usize,
            wait_ms: std::sync::atomic::AtomicU64::new(JOURNAL_WAIT.as_millis() as u64),
        })
    }
}

fn word(bytes: &[u8], at: usize) -> Option<u32> {
    bytes
        .get(at..at.checked_add(4)?)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn put(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

/// Checks a record as the one of `page` (of `page_size` bytes): magic, page, length inside the
/// region, checksum, and every extent inside both the record and the page.
fn check_record(rec: &[u8], page: u32, page_size: usize) -> Result<(), Corrupt> {
    if word(rec, RECORD_MAGIC_OFFSET) != Some(JOURNAL_MAGIC) {
        return Err(Corrupt("no journal record"));
    }
    if word(rec, RECORD_PAGE_OFFSET) != Some(page) {
        return Err(Corrupt("the journal record names another page"));
    }
    let bytes = word(rec, RECORD_BYTES_OFFSET).unwrap_or(u32::MAX) as usize;
    let end = RECORD_EXTENTS_OFFSET
        .checked_add(bytes)
        .filter(|&end| end <= rec.len())
        .ok_or(Corrupt("journal record longer than the journal"))?;
    let sum = rec
        .get(RECORD_CHECKSUM_OFFSET..RECORD_CHECKSUM_OFFSET + 8)
        .map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes")));
    if sum != Some(xxh3_64(&rec[RECORD_MAGIC_OFFSET..end])) {
        return Err(Corrupt("journal record does not match its checksum"));
    }
    let count = word(rec, RECORD_COUNT_OFFSET).unwrap_or(u32::MAX);
    let mut at = RECORD_EXTENTS_OFFSET;
    for _ in 0..count {
        let (offset, len) = extent_at(rec, at, end)?;
        if offset.checked_add(len).is_none_or(|e| e > page_size) {
            return Err(Corrupt("journal extent outside the page"));
        }
        at += EXTENT_HEADER_SIZE + len;
    }
    if at != end {
        return Err(Corrupt("journal extents do not fill the record"));
    }
    Ok(())
}

/// The page offset and length of the extent whose header is at `at`, its bytes inside
/// `rec[..end]`.
fn extent_at(rec: &[u8], at: usize, end: usize) -> Result<(usize, usize), Corrupt> {
    let bad = Corrupt("journal extent outside the record");
    let offset = word(rec, at + EXTENT_OFFSET_OFFSET).ok_or(bad)? as usize;
    let len = word(rec, at + EXTENT_LEN_OFFSET).ok_or(bad)? as usize;
    let stop = (at + EXTENT_HEADER_SIZE).checked_add(len).ok_or(bad)?;
    if stop > end {
        return Err(bad);
    }
    Ok((offset, len))
}

/// Copies a checked record's extents into `page`. Every slice is taken checked again, so a
/// record changed since its check (by a process that ignores the locks) makes an error, not a
/// write outside `page`.
fn apply(rec: &[u8], page: &mut [u8]) -> Result<(), Corrupt> {
    let bad = Corrupt("journal record changed while it was applied");
    let bytes = word(rec, RECORD_BYTES_OFFSET).ok_or(bad)? as usize;
    let end = RECORD_EXTENTS_OFFSET.saturating_add(bytes).min(rec.len());
    let count = word(rec, RECORD_COUNT_OFFSET).ok_or(bad)?;
    let mut at = RECORD_EXTENTS_OFFSET;
    for i in 0..count {
        let (offset, len) = extent_at(rec, at, end)?;
        let src = &rec[at + EXTENT_HEADER_SIZE..at + EXTENT_HEADER_SIZE + len];
        let dst = page
            .get_mut(offset..offset.checked_add(len).ok_or(bad)?)
            .ok_or(bad)?;
        if i == 0 {
            // Half, then (in tests) a kill, then the rest: the copy is seen torn.
            let half = len / 2;
            dst[..half].copy_from_slice(&src[..half]);
            crash::point(crash::MID_COPY);
            dst[half..].copy_from_slice(&src[half..]);
        } else {
            dst.copy_from_slice(src);
        }
        at += EXTENT_HEADER_SIZE + len;
    }
    Ok(())
}

/// Writes the record of `page`'s change from `old` to `new` into `rec`: the runs of 64-byte
/// chunks that differ. Returns how many extents it holds (0: nothing changed, and nothing was
/// written). An extent run is separated from the next by an unchanged chunk, so the record
/// (at most the page + 8 bytes) always fits a journal of `journal_size`; `Err` if it did not.
fn write_record(rec: &mut [u8], page: u32, old: &[u8], new: &[u8]) -> Result<u32, Corrupt> {
    let full = Corrupt("journal too small for the change");
    let same = |i: usize| old[i..i + CHUNK] == new[i..i + CHUNK];
    let (size, mut i, mut at, mut count) = (old.len().min(new.len()), 0, RECORD_EXTENTS_OFFSET, 0);
    while i + CHUNK <= size {
        // Most of a page is unchanged: whole spans are compared first, chunks only inside a
        // span that differs.
        if i % SPAN == 0 && i + SPAN <= size && old[i..i + SPAN] == new[i..i + SPAN] {
            i += SPAN;
            continue;
        }
        if same(i) {
            i += CHUNK;
            continue;
        }
        let start = i;
        while i + CHUNK <= size && !same(i) {
            i += CHUNK;
        }
        let len = i - start;
        let stop = at + EXTENT_HEADER_SIZE + len;
        let extent = rec.get_mut(at..stop).ok_or(full)?;
        put(extent, EXTENT_OFFSET_OFFSET, start as u32);
        put(extent, EXTENT_LEN_OFFSET, len as u32);
        extent[EXTENT_HEADER_SIZE..].copy_from_slice(&new[start..i]);
        at = stop;
        count += 1;
        if count == 1 {
            crash::point(crash::MID_JOURNAL);
        }
    }
    if count == 0 {
        return Ok(0);
    }
    let head = rec.get_mut(..RECORD_EXTENTS_OFFSET).ok_or(full)?;
    put(head, RECORD_MAGIC_OFFSET, JOURNAL_MAGIC);
    put(head, RECORD_PAGE_OFFSET, page);
    put(
        head,
        RECORD_BYTES_OFFSET,
        (at - RECORD_EXTENTS_OFFSET) as u32,
    );
    put(head, RECORD_COUNT_OFFSET, count);
    // The checksum last: until it is written, the record fails its check.
    let sum = xxh3_64(&rec[RECORD_MAGIC_OFFSET..at]);
    rec[RECORD_CHECKSUM_OFFSET..RECORD_CHECKSUM_OFFSET + 8].copy_from_slice(&sum.to_ne_bytes());
    Ok(count)
}

/// Marks a record spent.
fn invalidate(rec: &mut [u8]) {
    if let Some(magic) = rec.get_mut(RECORD_MAGIC_OFFSET..RECORD_MAGIC_OFFSET + 4) {
        magic.fill(0);
    }
}

thread_local! {
    /// The private copy of a page for journaled changes, kept between calls (one per thread):
    /// taken out while in use, so a nested change on another file gets a buffer of its own.
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl SharedFile {
    /// Whether the file has a journal region (`PageGuard::change_journaled` works on it).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn has_journal(&self) -> bool {
        self.journal.is_some()
    }

    /// Sets how long a journaled change of this file, in this process, waits for the journal
    /// while changes of other pages hold it ([`JOURNAL_WAIT`] until set; a resizer may pass
    /// its lock timeout). No journal: nothing to set.
    pub(crate) fn set_journal_wait(&self, wait: Duration) {
        if let Some(j) = &self.journal {
            let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            j.wait_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// The journal's writer word (`None`: no journal, or mapped read-only).
    fn journal_writer(&self) -> Option<&AtomicU32> {
        let j = self.journal.as_ref()?;
        if self.read_only {
            return None;
        }
        // SAFETY: the region lies inside the writable mapping (the file size, checked on open,
        // covers `journal_size` bytes after the overflow area); its start is a multiple of 4096
        // from the page-aligned base, so the word is aligned; the word is only ever accessed
        // atomically, and the mapping lives as long as `self`.
        Some(unsafe {
            AtomicU32::from_ptr(
                self.map
                    .as_mut_ptr()
                    .add(j.offset + JOURNAL_WRITER_OFFSET)
                    .cast(),
            )
        })
    }

    /// The journal's record bytes.
    ///
    /// # Safety
    /// The caller holds the lock of the page the writer word names (so no cooperating thread
    /// or process touches the record: see the module docs), the file is mapped read-write, and
    /// no other reference to the record lives while the returned one does.
    #[allow(clippy::mut_from_ref)]
    unsafe fn journal_record(&self, j: &Journal) -> &mut [u8] {
        // SAFETY: the record lies inside the writable mapping (file size checked on open) and
        // after the writer word, which it does not overlap; exclusivity is the caller's promise.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.map.as_mut_ptr().add(j.offset + JOURNAL_RECORD_OFFSET),
                j.size - JOURNAL_RECORD_OFFSET,
            )
        }
    }

    /// `page`'s bytes, for a journal's re-application.
    ///
    /// # Safety
    /// The caller holds `page`'s lock in a read-write mapping, and no other reference to the
    /// page's bytes lives while the returned one does.
    #[allow(clippy::mut_from_ref)]
    unsafe fn page_bytes(&self, page: u32) -> &mut [u8] {
        let (offset, len) = self.page_range(page);
        // SAFETY: `page < num_pages` (the caller holds its lock), so the range lies inside the
        // writable mapping; exclusivity is the caller's promise.
        unsafe {
            std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(offset as usize), len as usize)
        }
    }

    /// Completes the journaled change of `page` that a dead process left: its busy marker at
    /// [`BUSY_REDO`], the journal's writer word naming the page, and a record of the page that
    /// passes every check. Copies the record's extents in (again: idempotent), frees the
    /// overflow blocks the page no longer references, clears the marker and gives the journal
    /// up. Call it holding `page`'s lock, in a read-write mapping, with the page's change
    /// begun (`begin_change`). `false`: nothing to complete, and the caller resets the page as
    /// for any marker found set.
    pub(super) fn journal_redo(&self, page: u32) -> bool {
        let (Some(j), Some(row), Some(writer)) =
            (&self.journal, self.row(page), self.journal_writer())
        else {
            return false;
        };
        if row.busy.load(Ordering::Acquire) != BUSY_REDO
            || writer.load(Ordering::Acquire) != page.wrapping_add(1)
        {
            return false;
        }
        // SAFETY: the caller holds `page`'s lock in a read-write mapping and the writer word
        // names `page`: the record is ours alone; the page's bytes are disjoint from it, and
        // neither slice outlives this call.
        let (rec, bytes) = unsafe { (self.journal_record(j), self.page_bytes(page)) };
        let done = check_record(rec, page, bytes.len())
            .and_then(|()| apply(rec, bytes))
            .and_then(|()| {
                crash::point(crash::COPIED);
                self.overflow_settle(page, bytes, None)
            });
        crash::point(crash::SETTLED);
        let redone = done.is_ok();
        if redone {
            row.busy.store(0, Ordering::Release);
            crash::point(crash::CLEARED);
        }
        invalidate(rec);
        crash::point(crash::INVALIDATED);
        writer.store(0, Ordering::Release);
        if redone {
            crate::events::journal_reapplied(&self.path, page);
        }
        redone
    }

    /// Gives up the journal if its writer word names `page` (whose lock the caller holds: the
    /// claim is a dead change's, or the caller's own).
    pub(super) fn journal_give_up(&self, page: u32) {
        if let Some(writer) = self.journal_writer() {
            let _ = writer.compare_exchange(
                page.wrapping_add(1),
                0,
                Ordering::Release,
                Ordering::Relaxed,
            );
        }
    }

    /// Claims the journal for a change of `page` (whose lock the caller holds), waiting at
    /// most the journal's wait ([`JOURNAL_WAIT`] unless set) for the changes of other pages
    /// that hold it, and taking it from dead ones.
    fn journal_claim(&self, page: u32) -> Result<(), Corrupt> {
        let (Some(j), Some(writer)) = (&self.journal, self.journal_writer()) else {
            return Err(Corrupt(
                "a journaled change asked of a file without a journal",
            ));
        };
        let mine = page + 1;
        let wait = Duration::from_millis(j.wait_ms.load(Ordering::Relaxed));
        // A wait too long to represent is as good as none.
        let deadline = Instant::now().checked_add(wait);
        let mut pause = Duration::from_micros(20);
        loop {
            let held = match writer.compare_exchange(0, mine, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(held) => held,
            };
            // Named for this page, whose lock we hold: a change of it died holding the journal.
            if held == mine {
                return Ok(());
            }
            match held.checked_sub(1).filter(|&q| q < self.geometry.num_pages) {
                // A word naming no page: damage, and no lock guards it.
                None => {
                    if writer
                        .compare_exchange(held, mine, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        return Ok(());
                    }
                }
                Some(q) => self.journal_take_over(q),
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Corrupt(
                    "the file's journal stayed held by another page's change",
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    /// Frees the journal from the change of page `q` if that change's process is dead: takes
    /// `q`'s lock without waiting (a live change holds it), completes `q`'s change if its
    /// marker is the journal's, and gives the journal up. The page's own lock is held by this
    /// thread, so `q`'s lock is taken below the re-entry guard, as the resizer takes many.
    fn journal_take_over(&self, q: u32) {
        let fd = self.file.as_raw_fd();
        let range = self.page_range(q);
        let Ok(held) = self
            .locks
            .acquire(fd, q, range, Some(Instant::now()), false)
        else {
            return;
        };
        self.begin_change(q);
        if self.row_word(q, header::ROW_BUSY_OFFSET) == Some(BUSY_REDO) {
            // A record that fails its checks leaves the marker for `q`'s next locker to reset.
            self.journal_redo(q);
        }
        self.journal_give_up(q);
        self.end_change(q);
        self.locks.release(fd, q, range, &held);
    }
}

impl PageGuard<'_> {
    /// A structural change that a process killed anywhere in it cannot half-make: `f` runs on a
    /// private copy of the page (it may claim overflow blocks for this page through
    /// `place.file.overflow_write(place.page, ..)`), the changed bytes are written to the
    /// file's journal, the page's busy marker is set to the journal's value, the bytes are
    /// copied in, blocks the page no longer references are freed, and the marker cleared.
    ///
    /// `f` returning `Err` changes nothing in the page (the blocks it claimed are freed) and
    /// the error is returned; a page found damaged before the copy is reset, as
    /// [`change`](Self::change) does. A file without a journal refuses (`Err`, `f` not run):
    /// falling back to an ordinary change would lose what the caller asked for silently. So
    /// does a journal that other pages' changes hold past its wait
    /// ([`SharedFile::set_journal_wait`], [`JOURNAL_WAIT`] by default). Blocks claimed by
    /// a change killed before its marker was set are freed by the page's next structural
    /// change (its settle) or by [`sweep_overflow`](Self::sweep_overflow).
    pub(crate) fn change_journaled<T>(
        &mut self,
        f: impl FnOnce(&mut PageMut<'_>, Place<'_>) -> Result<T, crate::page::Corrupt>,
    ) -> Result<T, crate::page::Corrupt> {
        let (file, page) = (self.0.file, self.0.page);
        let (Some(journal), Some(row)) = (&file.journal, file.row(page)) else {
            return Err(Corrupt(
                "a journaled change asked of a file without a journal",
            ));
        };
        let g = file.geometry;
        if let Err(c) = PageHeader::read(self.bytes()).check(g.page_size as usize, g.start_slots) {
            self.reset_because(Some(c.0));
            return Err(c);
        }
        let before = match file.overflow() {
            Some(_) => file.overflow_refs(page, self.bytes()),
            None => None,
        };
        let mut copy = SCRATCH.with(std::cell::Cell::take);
        copy.clear();
        copy.extend_from_slice(self.bytes());
        let result = f(
            &mut PageMut::with_min_slots(&mut copy, g.start_slots).with_policy(true),
            self.place(),
        );
        crash::point(crash::CHANGED);
        let outcome = result.and_then(|value| {
            file.journal_claim(page)?;
            crash::point(crash::CLAIMED);
            // SAFETY: this guard holds `page`'s lock in a read-write mapping (a `PageGuard`),
            // and the writer word names `page` (just claimed): the record is ours alone, and
            // it lives only in this closure, beside the page's bytes it does not overlap.
            let rec = unsafe { file.journal_record(journal) };
            let settled = match write_record(rec, page, self.bytes(), &copy) {
                Ok(0) => false,
                Ok(_) => {
                    crash::point(crash::JOURNALED);
                    // The record is complete before the marker names it.
                    fence(Ordering::Release);
                    row.busy.store(BUSY_REDO, Ordering::Release);
                    crash::point(crash::MARKED);
                    let applied = apply(rec, self.bytes());
                    crash::point(crash::COPIED);
                    if let Err(c) = applied
                        .and_then(|()| file.overflow_settle(page, self.bytes(), before.clone()))
                    {
                        self.reset_because(Some(c.0));
                        return Err(c);
                    }
                    crash::point(crash::SETTLED);
                    row.busy.store(0, Ordering::Release);
                    crash::point(crash::CLEARED);
                    invalidate(rec);
                    crash::point(crash::INVALIDATED);
                    true
                }
                Err(c) => {
                    file.journal_give_up(page);
                    return Err(c);
                }
            };
            file.journal_give_up(page);
            Ok((value, settled))
        });
        SCRATCH.with(|s| s.set(copy));
        match outcome {
            Ok((value, true)) => Ok(value),
            Ok((value, false)) => {
                // Blocks `f` claimed for a change that changed no byte are freed; without an
                // area this is one branch.
                if file.overflow_owned(page) != 0
                    && let Err(c) = file.overflow_settle(page, self.bytes(), before)
                {
                    self.reset_because(Some(c.0));
                    return Err(c);
                }
                Ok(value)
            }
            Err(c) => {
                if file.overflow_owned(page) != 0
                    && let Err(damage) = file.overflow_settle(page, self.bytes(), before)
                {
                    self.reset_because(Some(damage.0));
                }
                Err(c)
            }
        }
    }
}

/// Where a test kills a journaled change (or its re-application): `_exit` at the point whose
/// number [`DIE_AT`](crash::DIE_AT) holds. Compiled only in tests.
pub(crate) mod crash {
    pub(crate) const CHANGED: u32 = 1;
    pub(crate) const CLAIMED: u32 = 2;
    pub(crate) const MID_JOURNAL: u32 = 3;
    pub(crate) const JOURNALED: u32 = 4;
    pub(crate) const MARKED: u32 = 5;
    pub(crate) const MID_COPY: u32 = 6;
    pub(crate) const COPIED: u32 = 7;
    pub(crate) const SETTLED: u32 = 8;
    pub(crate) const CLEARED: u32 = 9;
    pub(crate) const INVALIDATED: u32 = 10;

    /// The point to die at (0: none); set only in a forked child.
    #[cfg(test)]
    pub(crate) static DIE_AT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    /// The exit status of a child killed at a point.
    #[cfg(test)]
    pub(crate) const STATUS: i32 = 77;

    #[cfg(test)]
    #[inline]
    pub(crate) fn point(at: u32) {
        if DIE_AT.load(std::sync::atomic::Ordering::Relaxed) == at {
            // SAFETY: `_exit` ends the process at once, as a kill would; it has no
            // preconditions.
            unsafe { libc::_exit(STATUS) }
        }
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub(crate) fn point(_at: u32) {}
}

#[cfg(test)]
mod tests;
