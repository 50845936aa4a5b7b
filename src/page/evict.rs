//! Eviction and compaction: Cache::FastMmap's expunge, rebuilding the page in place.

use super::Corrupt;
use super::consts::*;
use super::dirty::Dirty;
use super::entry::EntryLoc;
use super::header::PageHeader;
use super::view::PageMut;

/// Which entries a rebuild drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evict {
    /// Only expired entries (`purge`).
    Expired,
    /// Everything (`clear`).
    All,
    /// Make room for an entry of this many bytes: nothing happens while more than 30% of the
    /// slots are truly free and the entry fits; otherwise expired entries go, the slot table
    /// may grow, and least recently used entries go (of one second, the earliest written
    /// first) until the data area is under 60% full and the entry fits.
    MakeRoom(usize),
}

/// Entries a rebuild keeps whatever its mode says, asked of each it would drop by mode
/// (`Expired`, `All`) with the entry's key and slot hash: a walk's stale copies of a move under
/// way (docs/format.md §2.5), which neither exist nor may be dropped.
pub type Spare<'s> = Option<&'s dyn Fn(&[u8], u32) -> bool>;

/// Whether a page with header `hdr` takes an entry of `len` bytes without eviction: more than
/// 30% of its slots truly free (neither used nor deleted), and room for the entry.
pub(super) fn has_room(hdr: &PageHeader, len: usize) -> bool {
    let truly_free = hdr.free_slots.saturating_sub(hdr.old_slots);
    hdr.num_slots > 0
        && f64::from(truly_free) / f64::from(hdr.num_slots) > SLOT_FILL_LIMIT
        && hdr.free_bytes as usize >= len
}

/// Bytes available to entries in a page with `num_slots` slots.
pub(super) fn data_capacity(page_size: usize, num_slots: u32) -> Option<usize> {
    page_size.checked_sub(slots_end(num_slots)?)
}

/// What a rebuild keeps, as the policy's `make_room` hook sees and changes it.
pub(super) struct Survivors {
    /// The entries kept so far, least recently used first (see `evict`); the policy drops
    /// its victims from here and may change the policy bits of the others.
    pub keep: Vec<EntryLoc>,
    /// Bytes `keep` occupies.
    pub used: usize,
    /// Slots of the rebuilt page.
    pub num_slots: u32,
    /// Entries dropped so far (expired ones, then the policy's victims).
    pub dropped: usize,
    /// The dropped entries, when the caller watches for dirty ones.
    pub gone: Option<Vec<EntryLoc>>,
    /// Slot hashes of the victims the policy remembers (its ghost record).
    pub ghosts: Vec<u32>,
}

impl Survivors {
    /// Counts `keep[i]` as dropped (and watched, if it is); the caller takes it out of `keep`.
    pub(super) fn drop_entry(&mut self, i: usize) {
        self.dropped += 1;
        if let Some(gone) = self.gone.as_mut() {
            gone.push(self.keep[i]);
        }
    }

    /// Takes the entries marked in `dead` out of `keep`.
    pub(super) fn retain_live(&mut self, dead: &[bool]) {
        let mut i = 0;
        self.keep.retain(|_| {
            i += 1;
            !dead[i - 1]
        });
    }
}

impl PageMut<'_> {
    /// Evicts per `mode` and compacts the survivors. Returns how many entries were dropped.
    pub fn evict(&mut self, mode: Evict, now: u32, start_slots: u32) -> Result<usize, Corrupt> {
        let hdr = self.checked_header()?;
        self.evict_checked(hdr, mode, now, start_slots, None, None)
            .map(|done| done.map_or(0, |(dropped, _)| dropped))
    }

    /// [`evict`](Self::evict), doing with the dirty (write-back) entries it drops what `dirty`
    /// says (see [`Dirty`]). Returns how many entries were dropped, or `None` when `dirty`
    /// refuses to drop the dirty entries it copied out (the page is then unchanged). The
    /// entries `spare` names stay, neither dropped nor handed to `dirty`.
    pub fn evict_dirty(
        &mut self,
        mode: Evict,
        now: u32,
        start_slots: u32,
        spare: Spare<'_>,
        dirty: &mut Dirty<'_>,
    ) -> Result<Option<usize>, Corrupt> {
        let hdr = self.checked_header()?;
        self.evict_checked(hdr, mode, now, start_slots, spare, Some(dirty))
            .map(|done| done.map(|(dropped, _)| dropped))
    }

    /// [`evict`](Self::evict) on a page whose header `hdr` the caller has just checked.
    /// Returns how many entries were dropped and the page's header afterwards, or `None` when
    /// `dirty` refused to let dirty entries go (nothing changed).
    pub(super) fn evict_checked(
        &mut self,
        hdr: PageHeader,
        mode: Evict,
        now: u32,
        start_slots: u32,
        spare: Spare<'_>,
        dirty: Option<&mut Dirty<'_>>,
    ) -> Result<Option<(usize, PageHeader)>, Corrupt> {
        let n = hdr.num_slots;
        if n == 0 {
            return Err(Corrupt("page has no slots"));
        }
        if let Evict::MakeRoom(len) = mode
            && has_room(&hdr, len.saturating_add(self.ghost_reserve()))
        {
            return Ok(Some((0, hdr)));
        }
        // Dirty entries among the dropped ones are only looked for when someone asks.
        let mut gone: Vec<EntryLoc> = Vec::new();
        let watch = dirty.is_some();

        let page_size = self.buf.len();
        let (data_start, data_end) = self.data_bounds(&hdr);
        let words = hdr.slot_words(page_size);
        let mut keep: Vec<EntryLoc> = Vec::new();
        let mut dropped = 0usize;
        let mut used = 0usize;
        // The entries are read in page order, not slot order: their headers then come in
        // address order, which the processor's prefetchers follow (in slot order they are
        // scattered over the page, a cache miss each).
        let mut offsets = Vec::with_capacity((n - hdr.free_slots.min(n)) as usize);
        for slot in 0..n {
            if let Some(off) = words.entry(self.slot(slot)?) {
                offsets.push(off);
            }
        }
        offsets.sort_unstable();
        for off in offsets {
            let loc = EntryLoc::read(self.buf, off, data_start, data_end)?;
            if (mode == Evict::All || is_expired(loc.expire_on, now))
                && !spare.is_some_and(|spare| {
                    let key = loc.off + ENTRY_HEADER_SIZE;
                    self.buf
                        .get(key..key + loc.key_len)
                        .is_some_and(|key| spare(key, loc.slot_hash))
                })
            {
                dropped += 1;
                if watch {
                    gone.push(loc);
                }
                continue;
            }
            // Entries that fit the data area only together with others overlap them (many
            // slots may point at one entry); the check also keeps the sum from overflowing.
            used = used
                .checked_add(loc.size())
                .filter(|&u| u <= data_end - data_start)
                .ok_or(Corrupt("entries overlap"))?;
            keep.push(loc);
        }
        // Least recently used first. `last_access` has whole seconds, so ties are common in a
        // busy page; they are broken by the data offset, which orders entries by when they
        // were written: entries are appended at `free_data`, and a rebuild (below) writes the
        // survivors in this same order, so the order holds across rebuilds. Two exceptions,
        // both within one second only: a read hit sets `last_access` without moving the entry,
        // and a same-size overwrite in place (native layout, `PageMut::store_with`) keeps the
        // old entry's offset; such an entry ranks among those of its second by when it was
        // appended, so it may go before an entry appended later but last touched earlier in
        // that second. Acceptable: the tie-break is a heuristic within one second
        // (Cache::FastMmap has none), and from the next second on `last_access` orders them
        // again.
        // As one integer (`off` lies inside a page, whose size is a u32), which sorts faster
        // than the pair.
        keep.sort_unstable_by_key(|loc| (u64::from(loc.last_access) << 32) | loc.off as u64);

        // Grow the slot table when the survivors would fill more than 30% of it.
        let mut new_n = n;
        if f64::from(keep.len() as u32) / f64::from(n) > SLOT_FILL_LIMIT {
            let grown = n.checked_mul(2).and_then(|x| x.checked_add(1));
            if let Some(grown) = grown {
                let room_now = data_capacity(page_size, n)
                    .unwrap_or(0)
                    .saturating_sub(used);
                let fits = data_capacity(page_size, grown).is_some_and(|cap| cap >= used);
                let wanted =
                    matches!(mode, Evict::MakeRoom(_)) || room_now > (n as usize + 1) * SLOT_SIZE;
                if fits && wanted {
                    new_n = grown;
                }
            }
        }

        let mut room = Survivors {
            keep,
            used,
            num_slots: new_n,
            dropped,
            gone: watch.then_some(gone),
            ghosts: Vec::new(),
        };
        if let Evict::MakeRoom(len) = mode {
            self.policy
                .make_room(&mut room, len, page_size, start_slots);
        }
        let Survivors {
            keep,
            num_slots: new_n,
            dropped,
            gone,
            ghosts: evicted_ghosts,
            ..
        } = room;
        let gone = gone.unwrap_or_default();
        if keep.len() >= new_n as usize {
            return Err(Corrupt("more entries than slots"));
        }
        if let Some(dirty) = dirty
            && (!dirty.take(self.buf, &gone) || dirty.dry)
        {
            return Ok(None);
        }
        // Dirty entries the rebuild moves (and, with a `Dirty`, the dirty ones it drops, which
        // reach the store only after the lock is released): lost if it is killed part way.
        let dirty_moved = keep
            .iter()
            .chain(&gone)
            .filter(|loc| loc.flags & FLAG_DIRTY != 0 && !loc.is_tombstone())
            .count();
        // The ghost record as it was, read before the rebuild may write over it.
        let memory = self.policy.memory(self.buf, &hdr);
        let hdr = self.rebuild(new_n, &keep, dirty_moved)?;
        self.policy
            .on_evict(self.buf, hdr.free_data as usize, memory, &evicted_ghosts)?;
        Ok(Some((dropped, hdr)))
    }

    /// Rewrites the page with `num_slots` slots holding exactly `keep`, compacted in the order
    /// given (least recently used first: see `evict`), and returns its new header. The magic is
    /// cleared while the page is rewritten, so a process killed part way leaves a page that
    /// fails the header check (in either layout) instead of one with torn entries; it is
    /// replaced by [`REBUILD_TAG`] with the count `dirty_moved`, so that the reset of such a
    /// page counts the dirty entries it loses.
    fn rebuild(
        &mut self,
        num_slots: u32,
        keep: &[EntryLoc],
        dirty_moved: usize,
    ) -> Result<PageHeader, Corrupt> {
        let page_size = self.buf.len();
        let table_end = slots_end(num_slots).ok_or(Corrupt("slot count overflows"))?;
        let needed: usize = keep.iter().map(EntryLoc::size).sum();
        let free_data = table_end
            .checked_add(needed)
            .filter(|&end| end <= page_size)
            .ok_or(Corrupt("survivors do not fit the page"))?;

        // The page keeps its kind: tagged slot words or plain offsets.
        let old = self.header();
        let words = old.slot_words(page_size);
        // The header and an empty slot table, zeroed; then each survivor appended with its
        // padding zeroed, so no byte of the image is written twice (a zeroed image of the whole
        // page cost a pass over it per rebuild).
        const _: () = assert!(SLOT_EMPTY == 0);
        let mut image = Vec::with_capacity(free_data);
        image.resize(table_end, 0u8);
        for loc in keep {
            let mut slot = loc.slot_hash % num_slots;
            while super::header::get_u32(&image, SLOTS_OFFSET + slot as usize * SLOT_SIZE)
                != Some(SLOT_EMPTY)
            {
                slot = (slot + 1) % num_slots;
            }
            let src = self
                .buf
                .get(loc.off..loc.off + loc.raw_size())
                .ok_or(Corrupt("entry outside the page"))?;
            let off = image.len();
            image.extend_from_slice(src);
            image.resize(off + loc.size(), 0);
            // The policy may have moved the entry back to probation (`policy::choose_victims`).
            super::header::put_u32(&mut image, off + FLAGS_OFFSET, loc.flags)?;
            super::header::put_u32(
                &mut image,
                SLOTS_OFFSET + slot as usize * SLOT_SIZE,
                words.word(off as u32, loc.slot_hash),
            )?;
        }
        debug_assert_eq!(image.len(), free_data);
        let magic = if old.tagged() {
            PAGE_MAGIC_TAGGED
        } else {
            PAGE_MAGIC
        };
        let hdr = PageHeader {
            magic,
            num_slots,
            free_slots: num_slots - keep.len() as u32,
            old_slots: 0,
            free_data: free_data as u32,
            free_bytes: (page_size - free_data) as u32,
            n_reads: old.n_reads,
            n_read_hits: old.n_read_hits,
        };
        hdr.write(&mut image)?;

        // The page is shared memory that a process killed mid-way leaves behind, so these three
        // steps must reach it in this order; nothing in this thread reads the cleared magic, so
        // without the fences the compiler may drop or move the first store.
        let tag = REBUILD_TAG | dirty_moved.min(REBUILD_COUNT_MASK as usize) as u32;
        super::header::put_u32(self.buf, MAGIC_OFFSET, tag)?;
        publish_order(self.buf);
        self.buf[MAGIC_OFFSET + 4..free_data].copy_from_slice(&image[MAGIC_OFFSET + 4..]);
        publish_order(self.buf);
        super::header::put_u32(self.buf, MAGIC_OFFSET, magic)?;
        Ok(hdr)
    }
}

/// Makes the stores to `buf` made so far happen before any made after: the steps of a
/// crash-ordered write. (`black_box` makes the bytes count as observed, so earlier stores are
/// not eliminated as dead; the fence keeps later stores from moving before them.)
#[inline]
pub(super) fn publish_order(buf: &[u8]) {
    std::hint::black_box(buf);
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}
