//! The overflow area: where a native file keeps values too large for their page.
//!
//! The area is `blocks` blocks of `block_size` bytes after the last page. A large value keeps
//! its entry (key, metadata) in its page, flagged `FLAG_OVERFLOW`, whose value bytes are a
//! reference: first block, block count, length and an xxh3 checksum of the value. Its blocks
//! form a chain through the block rows of the overflow table (in the header, after the
//! write-back lock table): each row names the page that owns the block and the next block.
//!
//! # Ownership instead of an allocator lock
//!
//! A block is claimed by compare-and-swap of its owner word from 0 (free) to `page + 1`, and
//! only by a holder of that page's lock; it is freed (owner back to 0) only by a holder of the
//! owner page's lock. So the blocks of a page, and the words of their rows, change only under
//! that page's lock, like the page's own bytes, and there is no allocator lock and no lock
//! order to keep: claims by different pages race only on free words, which the swap settles.
//!
//! # Kill safety
//!
//! Claiming, writing, linking the entry and freeing replaced blocks all happen inside the
//! page's structural change, under its busy marker. A process killed anywhere in it leaves the
//! marker set; the next locker resets the page, and a reset frees every block the page owns.
//! A journaled change (`journal.rs`) claims and writes its blocks before it sets any marker:
//! killed then, it leaves them owned by the page and referenced by nothing, with the page's
//! owned word raised before the claims, so the page's next settle sweeps them. Blocks left
//! owned but unreferenced for any other reason (a damaged file) are found by
//! [`SharedFile::overflow_sweep`], which `check` runs on every page.
//!
//! # Readers
//!
//! Large values are read under their page lock (an optimistic read that finds the overflow
//! flag takes the lock): the blocks cannot be freed or reused while it is held. Every
//! reference and row is checked before use (block numbers in range, every block owned by the
//! page, the chain as long as the reference says, the checksum of the bytes); a failed check
//! is damage, and the page is reset.

#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use super::checksum::{CopySum, checksum};
use super::header::{
    self, BLOCK_NEXT_OFFSET, BLOCK_OWNER_OFFSET, BLOCK_ROW_SIZE, OWNED_SIZE, OverflowGeometry,
};
use super::shared::SharedFile;
use crate::page::consts::{
    FLAG_OVERFLOW, OVERFLOW_REF_SIZE, REF_BLOCKS_OFFSET, REF_CHECKSUM_OFFSET,
    REF_FIRST_BLOCK_OFFSET, REF_LEN_OFFSET, max_entry_size,
};
use crate::page::{Corrupt, NewEntry, PageView};

/// Where a file's overflow area and table are, in bytes from the start of the mapping.
pub(crate) struct Area {
    pub(crate) geometry: OverflowGeometry,
    owned_offset: usize,
    rows_offset: usize,
    data_offset: usize,
    /// Where this process starts looking for free blocks (a hint, any value is safe).
    hand: AtomicU32,
}

impl Area {
    /// The area of a file with this geometry, header size and page bytes (`None`: no area).
    pub(super) fn new(
        geometry: OverflowGeometry,
        num_pages: u32,
        header_size: usize,
        pages_bytes: u64,
    ) -> Option<Area> {
        (geometry.blocks != 0).then(|| Area {
            geometry,
            owned_offset: header::overflow_table_offset(num_pages),
            rows_offset: header::block_rows_offset(num_pages),
            data_offset: header_size + pages_bytes as usize,
            hand: AtomicU32::new(0),
        })
    }

    fn blocks_for(&self, len: usize) -> usize {
        len.div_ceil(self.geometry.block_size as usize).max(1)
    }
}

/// A reference to a value in the overflow area, as the page keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reference {
    pub(crate) first: u32,
    pub(crate) blocks: u32,
    pub(crate) len: u64,
    pub(crate) checksum: u64,
}

impl Reference {
    pub(crate) fn encode(&self) -> [u8; OVERFLOW_REF_SIZE] {
        let mut out = [0u8; OVERFLOW_REF_SIZE];
        out[REF_FIRST_BLOCK_OFFSET..REF_FIRST_BLOCK_OFFSET + 4]
            .copy_from_slice(&self.first.to_ne_bytes());
        out[REF_BLOCKS_OFFSET..REF_BLOCKS_OFFSET + 4].copy_from_slice(&self.blocks.to_ne_bytes());
        out[REF_LEN_OFFSET..REF_LEN_OFFSET + 8].copy_from_slice(&self.len.to_ne_bytes());
        out[REF_CHECKSUM_OFFSET..REF_CHECKSUM_OFFSET + 8]
            .copy_from_slice(&self.checksum.to_ne_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Reference, Corrupt> {
        let bytes: &[u8; OVERFLOW_REF_SIZE] = bytes
            .try_into()
            .map_err(|_| Corrupt("overflow reference of the wrong size"))?;
        let u32_at =
            |o: usize| u32::from_ne_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[o..o + 8]);
            u64::from_ne_bytes(w)
        };
        Ok(Reference {
            first: u32_at(REF_FIRST_BLOCK_OFFSET),
            blocks: u32_at(REF_BLOCKS_OFFSET),
            len: u64_at(REF_LEN_OFFSET),
            checksum: u64_at(REF_CHECKSUM_OFFSET),
        })
    }
}

/// Why a value could not be written to the overflow area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Full {
    /// Blocks the value needs.
    pub(crate) needed: u32,
    /// Free blocks found.
    pub(crate) free: u32,
}

/// The use of the overflow area, from one pass over its block rows (without locks: a
/// snapshot that may be a little off while others write).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) blocks: u32,
    pub(crate) block_size: u32,
    pub(crate) used: u32,
    /// Runs of consecutive free blocks.
    pub(crate) free_runs: u32,
    /// The longest run of free blocks.
    pub(crate) largest_free_run: u32,
}

/// Where a store puts an entry: the one decision every writer of this file makes the same
/// way (plain and layered stores, batches' size checks, a resize copying entries over).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// The entry fits an empty page: it is stored there, value and all.
    Page,
    /// It does not, and its value fits the overflow area (`max_value_size`): the value goes
    /// to the area and the page keeps a reference.
    Overflow,
    /// Neither: the store is refused before anything changes (`Error::ValueTooLarge` in a file
    /// with an area, `Error::TooLarge` without one).
    TooLarge,
}

impl SharedFile {
    /// Where `req` goes in this file (see [`Route`]).
    #[inline]
    pub(crate) fn route(&self, req: &NewEntry<'_>) -> Route {
        let g = &self.geometry;
        let max_entry = max_entry_size(g.page_size as usize, g.start_slots);
        if req.entry_size().is_some_and(|n| n <= max_entry) {
            return Route::Page;
        }
        let max_value = self.max_value_size();
        if max_value != 0 && req.value.len() <= max_value {
            Route::Overflow
        } else {
            Route::TooLarge
        }
    }

    /// The overflow area, if the file has one.
    pub(crate) fn overflow(&self) -> Option<&Area> {
        self.overflow.as_ref()
    }

    /// The largest value the overflow area takes (0: no area).
    pub(crate) fn max_value_size(&self) -> usize {
        self.overflow
            .as_ref()
            .map_or(0, |a| a.geometry.max_value_size as usize)
    }

    /// A word of the overflow table, as an atomic (read-write mappings only).
    fn table_word(&self, offset: usize) -> Option<&AtomicU32> {
        if self.read_only {
            return None;
        }
        // SAFETY: `offset` is inside the overflow table, which lies inside the header (its size
        // was checked against the header size on open), inside the writable mapping; it is a
        // multiple of 4 from the page-aligned base; these words are only ever accessed
        // atomically (or read volatile through a read-only mapping), and the mapping lives as
        // long as `self`.
        Some(unsafe { AtomicU32::from_ptr(self.map.as_mut_ptr().add(offset).cast()) })
    }

    /// A word of the overflow table, read without writing.
    fn load_word(&self, offset: usize) -> u32 {
        match self.table_word(offset) {
            Some(word) => word.load(Ordering::Acquire),
            // SAFETY: as in `table_word`; a volatile read, since other processes write it.
            None => unsafe { self.map.as_ptr().add(offset).cast::<u32>().read_volatile() },
        }
    }

    fn owned_offset(area: &Area, page: u32) -> usize {
        area.owned_offset + page as usize * OWNED_SIZE
    }

    fn row_offset(area: &Area, block: u32) -> usize {
        area.rows_offset + block as usize * BLOCK_ROW_SIZE
    }

    /// Blocks `page` owns, as its owned word counts them (0 without an area).
    #[inline]
    pub(crate) fn overflow_owned(&self, page: u32) -> u32 {
        match &self.overflow {
            Some(area) if page < self.geometry.num_pages => {
                self.load_word(Self::owned_offset(area, page))
            }
            _ => 0,
        }
    }

    fn set_owned(&self, area: &Area, page: u32, n: u32) {
        if let Some(w) = self.table_word(Self::owned_offset(area, page)) {
            w.store(n, Ordering::Release);
        }
    }

    /// Writes `value` to newly claimed blocks owned by `page` and returns its reference.
    /// Call it holding `page`'s lock, inside a structural change (busy marker set): a process
    /// killed here leaves the page to be reset, which frees the blocks. Or inside a journaled
    /// change's closure (marker clear): killed there, the blocks stay owned and unreferenced,
    /// with the owned word counting them, and the page's next settle or sweep frees them.
    pub(crate) fn overflow_write(&self, page: u32, value: &[u8]) -> Result<Reference, Full> {
        let Some(area) = &self.overflow else {
            return Err(Full { needed: 1, free: 0 });
        };
        let total = area.geometry.blocks;
        let needed = area.blocks_for(value.len());
        let owner = page + 1;
        // Counted before the claims, so that a process killed among them leaves the owned word
        // too high, never too low: the page's next settle then sweeps (a journaled change's
        // claims are made with the busy marker clear, and no reset frees them).
        let owned = self.overflow_owned(page);
        self.set_owned(area, page, owned.saturating_add(needed as u32));
        let mut claimed: Vec<u32> = Vec::with_capacity(needed);
        let start = area.hand.load(Ordering::Relaxed) % total;
        for i in 0..total {
            if claimed.len() == needed {
                break;
            }
            let block = (start + i) % total;
            let Some(word) = self.table_word(Self::row_offset(area, block) + BLOCK_OWNER_OFFSET)
            else {
                break;
            };
            if word.load(Ordering::Relaxed) == 0
                && word
                    .compare_exchange(0, owner, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                claimed.push(block);
            }
        }
        if claimed.len() < needed {
            for &block in &claimed {
                self.free_block(area, block);
            }
            self.set_owned(area, page, owned);
            return Err(Full {
                needed: needed as u32,
                free: claimed.len() as u32,
            });
        }
        let bs = area.geometry.block_size as usize;
        // The checksum is taken as each block is copied, in the same pass (`checksum.rs`).
        let mut sum = CopySum::new(value.len());
        for (i, &block) in claimed.iter().enumerate() {
            let next = claimed.get(i + 1).map_or(0, |&b| b + 1);
            if let Some(w) = self.table_word(Self::row_offset(area, block) + BLOCK_NEXT_OFFSET) {
                w.store(next, Ordering::Relaxed);
            }
            let chunk = &value[(i * bs).min(value.len())..((i + 1) * bs).min(value.len())];
            // SAFETY: `block < blocks`, so its `bs` bytes lie inside the area, inside the
            // writable mapping (the file size was checked on open to cover the area); the
            // block was just claimed for `page`, whose lock we hold, so no cooperating thread or
            // process reads or writes it; `chunk` is at most `bs` bytes and is our own memory.
            unsafe {
                let dst = self
                    .map
                    .as_mut_ptr()
                    .add(area.data_offset + block as usize * bs);
                sum.copy(chunk, dst);
            }
        }
        let last = *claimed.last().expect("at least one block");
        area.hand
            .store(last.wrapping_add(1) % total, Ordering::Relaxed);
        Ok(Reference {
            first: claimed[0],
            blocks: needed as u32,
            len: value.len() as u64,
            checksum: sum.finish(),
        })
    }

    fn free_block(&self, area: &Area, block: u32) {
        if let Some(w) = self.table_word(Self::row_offset(area, block) + BLOCK_OWNER_OFFSET) {
            w.store(0, Ordering::Release);
        }
    }

    /// Checks `r` as a reference of `page` and calls `f` with each of its blocks and the number
    /// of the value's bytes in it.
    fn walk(
        &self,
        area: &Area,
        page: u32,
        r: &Reference,
        mut f: impl FnMut(u32, usize),
    ) -> Result<(), Corrupt> {
        let g = &area.geometry;
        if r.len > u64::from(g.max_value_size) {
            return Err(Corrupt("overflow reference longer than max_value_size"));
        }
        if r.blocks as usize != area.blocks_for(r.len as usize) {
            return Err(Corrupt(
                "overflow reference's block count does not fit its length",
            ));
        }
        let bs = g.block_size as usize;
        let mut left = r.len as usize;
        let mut block = r.first;
        for i in 0..r.blocks {
            if block >= g.blocks {
                return Err(Corrupt("overflow block number out of range"));
            }
            let row = Self::row_offset(area, block);
            if self.load_word(row + BLOCK_OWNER_OFFSET) != page + 1 {
                return Err(Corrupt("overflow block not owned by the entry's page"));
            }
            let n = left.min(bs);
            f(block, n);
            left -= n;
            let next = self.load_word(row + BLOCK_NEXT_OFFSET);
            match (i + 1 == r.blocks, next) {
                (true, 0) => {}
                (true, _) => return Err(Corrupt("overflow chain longer than its reference")),
                (false, 0) => return Err(Corrupt("overflow chain shorter than its reference")),
                (false, next) => block = next - 1,
            }
        }
        Ok(())
    }

    /// The value the reference `bytes` of an entry of `page` stands for. Call it holding
    /// `page`'s lock. A reference or chain that fails a check, or bytes whose checksum does
    /// not match, are damage: the caller resets the page.
    pub(crate) fn overflow_read(&self, page: u32, bytes: &[u8]) -> Result<Vec<u8>, Corrupt> {
        let area = self.overflow.as_ref().ok_or(Corrupt(
            "overflow reference in a file without an overflow area",
        ))?;
        let r = Reference::decode(bytes)?;
        let mut out: Vec<u8> =
            Vec::with_capacity(r.len.min(u64::from(area.geometry.max_value_size)) as usize);
        let bs = area.geometry.block_size as usize;
        let base = self.map.as_ptr();
        // Summed as each block is copied, in the same pass (see `overflow_write`).
        let mut sum = CopySum::new(r.len as usize);
        self.walk(area, page, &r, |block, n| {
            // SAFETY: `block < blocks` (checked by `walk`), so its first `n <= bs` bytes lie
            // inside the area, inside the mapping; the block is owned by `page`, whose lock the
            // caller holds, so no cooperating writer changes it while it is copied.
            let src = unsafe {
                std::slice::from_raw_parts(base.add(area.data_offset + block as usize * bs), n)
            };
            sum.append(&mut out, src);
        })?;
        if sum.finish() != r.checksum {
            return Err(Corrupt("overflow value does not match its checksum"));
        }
        Ok(out)
    }

    /// As [`overflow_read`](Self::overflow_read), but hands `f` the value where it lies in the
    /// area, without a copy, when its blocks are one run of consecutive blocks (as the claim's
    /// hand usually leaves them); a value split over several runs is copied out. The chain is
    /// walked once: nothing is copied while it stays one run, and at the first break the run
    /// so far is copied, then every block after it. The same checks, the checksum included,
    /// come before `f` sees a byte. Call it holding `page`'s lock, which must outlive `f`.
    pub(crate) fn overflow_lend<R>(
        &self,
        page: u32,
        bytes: &[u8],
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, Corrupt> {
        let area = self.overflow.as_ref().ok_or(Corrupt(
            "overflow reference in a file without an overflow area",
        ))?;
        let r = Reference::decode(bytes)?;
        let bs = area.geometry.block_size as usize;
        let base = self.map.as_ptr();
        // `n` value bytes from the start of `block`, over consecutive blocks.
        // SAFETY: called only below, on blocks `walk` has checked (each `< blocks` and owned
        // by `page`), for a run of `k` consecutive such blocks and `n <= k * bs` bytes: they
        // lie inside the area, inside the mapping, which lives as long as `self`. The caller
        // holds `page`'s lock for as long as the bytes are used (copied here, or lent to `f`),
        // so no cooperating writer changes or frees them meanwhile.
        let span = |block: u32, n: usize| unsafe {
            std::slice::from_raw_parts(base.add(area.data_offset + block as usize * bs), n)
        };
        let mut next = r.first;
        let mut run = 0usize;
        let mut split: Option<(Vec<u8>, CopySum)> = None;
        self.walk(area, page, &r, |block, n| match &mut split {
            None if block == next => {
                run += n;
                next = block.wrapping_add(1);
            }
            None => {
                let mut out =
                    Vec::with_capacity(r.len.min(u64::from(area.geometry.max_value_size)) as usize);
                let mut sum = CopySum::new(r.len as usize);
                for part in [span(r.first, run), span(block, n)] {
                    sum.append(&mut out, part);
                }
                split = Some((out, sum));
            }
            Some((out, sum)) => sum.append(out, span(block, n)),
        })?;
        match split {
            None => {
                let value = span(r.first, run);
                if checksum(value) != r.checksum {
                    return Err(Corrupt("overflow value does not match its checksum"));
                }
                Ok(f(value))
            }
            Some((value, sum)) => {
                if sum.finish() != r.checksum {
                    return Err(Corrupt("overflow value does not match its checksum"));
                }
                Ok(f(&value))
            }
        }
    }

    /// The overflow references of `page`'s entries, taken before a structural change (the
    /// page's lock held) so that [`overflow_settle`](Self::overflow_settle) can free what the
    /// change drops without a sweep of the area. `None` when the page owns no blocks, or its
    /// entries cannot be walked (the change finds out).
    pub(super) fn overflow_refs(&self, page: u32, bytes: &[u8]) -> Option<Vec<Reference>> {
        if self.overflow_owned(page) == 0 {
            return None;
        }
        references(bytes).ok()
    }

    /// After a structural change of `page` (its lock held, busy marker set): frees the blocks
    /// it owns that no entry references any more (a replaced, removed, evicted or refused large
    /// value). Cheap when nothing was dropped: the page's references are counted against its
    /// owned word. The chains of the references `before` held that are gone are freed; only
    /// when the count still disagrees (a refused store, damage) are the block rows swept.
    pub(super) fn overflow_settle(
        &self,
        page: u32,
        bytes: &[u8],
        before: Option<Vec<Reference>>,
    ) -> Result<(), Corrupt> {
        let Some(area) = &self.overflow else {
            return Ok(());
        };
        let refs = references(bytes)?;
        let referenced: u64 = refs.iter().map(|r| u64::from(r.blocks)).sum();
        let owned = self.overflow_owned(page);
        if referenced == u64::from(owned) {
            return Ok(());
        }
        if let Some(before) = before {
            let mut freed = 0u32;
            let mut clean = true;
            let mut chain = Vec::new();
            for gone in before.iter().filter(|r| !refs.contains(r)) {
                chain.clear();
                if self
                    .walk(area, page, gone, |block, _| chain.push(block))
                    .is_err()
                {
                    clean = false;
                    continue;
                }
                for &block in &chain {
                    self.free_block(area, block);
                }
                freed = freed.saturating_add(chain.len() as u32);
            }
            let owned = owned.saturating_sub(freed);
            self.set_owned(area, page, owned);
            if clean && referenced == u64::from(owned) {
                return Ok(());
            }
        }
        self.sweep(area, page, &refs).map(|_| ())
    }

    /// Frees every block `page` owns that its entries do not reference, checking every
    /// reference (for `check`; the page's lock held). Returns the blocks freed; `dry`: only
    /// counts them.
    pub(crate) fn overflow_sweep(
        &self,
        page: u32,
        bytes: &[u8],
        dry: bool,
    ) -> Result<u32, Corrupt> {
        let Some(area) = &self.overflow else {
            return Ok(0);
        };
        let refs = references(bytes)?;
        if dry {
            return self.mark(area, page, &refs).map(|(marked, _)| {
                (0..area.geometry.blocks)
                    .filter(|&b| {
                        !marked[b as usize]
                            && self.load_word(Self::row_offset(area, b) + BLOCK_OWNER_OFFSET)
                                == page + 1
                    })
                    .count() as u32
            });
        }
        self.sweep(area, page, &refs)
    }

    /// Walks every reference of `page`: which blocks they hold, and how many.
    fn mark(
        &self,
        area: &Area,
        page: u32,
        refs: &[Reference],
    ) -> Result<(Vec<bool>, u32), Corrupt> {
        let mut marked = vec![false; area.geometry.blocks as usize];
        let mut kept = 0u32;
        for r in refs {
            let mut shared = false;
            self.walk(area, page, r, |block, _| {
                shared |= std::mem::replace(&mut marked[block as usize], true);
                kept += 1;
            })?;
            if shared {
                return Err(Corrupt("two overflow references share a block"));
            }
        }
        Ok((marked, kept))
    }

    fn sweep(&self, area: &Area, page: u32, refs: &[Reference]) -> Result<u32, Corrupt> {
        let (marked, kept) = self.mark(area, page, refs)?;
        let mut freed = 0;
        for (block, &mark) in marked.iter().enumerate() {
            let row = Self::row_offset(area, block as u32);
            if !mark && self.load_word(row + BLOCK_OWNER_OFFSET) == page + 1 {
                self.free_block(area, block as u32);
                freed += 1;
            }
        }
        self.set_owned(area, page, kept);
        Ok(freed)
    }

    /// Frees every block `page` owns (a reset or a wipe of the page; its lock held). `all`:
    /// scan even if the owned word says none (the page is damaged and its word may be too).
    pub(super) fn overflow_free_all(&self, page: u32, all: bool) {
        let Some(area) = &self.overflow else {
            return;
        };
        if page >= self.geometry.num_pages || (!all && self.overflow_owned(page) == 0) {
            return;
        }
        for block in 0..area.geometry.blocks {
            let row = Self::row_offset(area, block);
            if self.load_word(row + BLOCK_OWNER_OFFSET) == page + 1 {
                self.free_block(area, block);
            }
        }
        self.set_owned(area, page, 0);
    }

    /// Frees blocks whose owner word names no page (damage; no lock guards them, as no page
    /// can). Returns how many; `dry`: only counts them.
    pub(crate) fn overflow_free_unowned(&self, dry: bool) -> u32 {
        let Some(area) = &self.overflow else {
            return 0;
        };
        let mut freed = 0;
        for block in 0..area.geometry.blocks {
            let row = Self::row_offset(area, block);
            if self.load_word(row + BLOCK_OWNER_OFFSET) > self.geometry.num_pages {
                if !dry {
                    self.free_block(area, block);
                }
                freed += 1;
            }
        }
        freed
    }

    /// Which pages own overflow blocks, by their owner words (a snapshot without locks; all
    /// false without an area).
    pub(crate) fn overflow_owners(&self) -> Vec<bool> {
        let mut owners = vec![false; self.geometry.num_pages as usize];
        if let Some(area) = &self.overflow {
            for block in 0..area.geometry.blocks {
                let owner = self.load_word(Self::row_offset(area, block) + BLOCK_OWNER_OFFSET);
                if let Some(o) = (owner as usize)
                    .checked_sub(1)
                    .and_then(|p| owners.get_mut(p))
                {
                    *o = true;
                }
            }
        }
        owners
    }

    /// The area's use (`None`: no area).
    pub(crate) fn overflow_usage(&self) -> Option<Usage> {
        let area = self.overflow.as_ref()?;
        let mut u = Usage {
            blocks: area.geometry.blocks,
            block_size: area.geometry.block_size,
            ..Usage::default()
        };
        let mut run = 0u32;
        for block in 0..area.geometry.blocks {
            let owner = self.load_word(Self::row_offset(area, block) + BLOCK_OWNER_OFFSET);
            if owner != 0 {
                u.used += 1;
                run = 0;
            } else {
                if run == 0 {
                    u.free_runs += 1;
                }
                run += 1;
                u.largest_free_run = u.largest_free_run.max(run);
            }
        }
        Some(u)
    }
}

/// The overflow references of a page's entries (expired ones included: their blocks are in
/// use until the entry goes).
fn references(bytes: &[u8]) -> Result<Vec<Reference>, Corrupt> {
    let mut refs = Vec::new();
    let mut bad = None;
    PageView::new(bytes).for_each_entry(|e| {
        if e.flags & FLAG_OVERFLOW != 0 {
            match Reference::decode(e.value) {
                Ok(r) => refs.push(r),
                Err(c) => bad = Some(c),
            }
        }
    })?;
    match bad {
        Some(c) => Err(c),
        None => Ok(refs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_round_trip() {
        let r = Reference {
            first: 7,
            blocks: 3,
            len: 10_000,
            checksum: 0xdead_beef_0123_4567,
        };
        assert_eq!(Reference::decode(&r.encode()), Ok(r));
        assert!(Reference::decode(&r.encode()[..10]).is_err());
    }
}
