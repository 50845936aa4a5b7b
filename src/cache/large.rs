//! Values larger than a page (native files with an overflow area; see `store/overflow.rs`):
//! storing one (plain, or through a layer: a backing store's write modes keep the same
//! one-change rule), reading the bytes of dirty large values for write-back, making room in
//! the area when it is full (never by dropping a dirty value), and reclaiming blocks nothing
//! references (`check`).

use super::handle::{Cache, PageProblem};
use crate::Result;
use crate::page::consts::{FLAG_DIRTY, FLAG_OVERFLOW, OVERFLOW_REF_SIZE, is_expired};
use crate::page::{Corrupt, Dirty, DirtyCopy, NewEntry, PageView, StoreOutcome};
use crate::store::{
    OverflowFull, OverflowReference, PageGuard, Place, Reader, SharedFile, overflow_checksum,
    owned_value,
};

/// A large value that may be evicted to make room in the overflow area.
struct Victim {
    slot_hash: u32,
    key: Vec<u8>,
    expired: bool,
    last_access: u32,
}

impl Cache {
    /// The value bytes and flags of an entry of the page `at` as the page holds them: a large
    /// value's bytes are read from the overflow area (the page's lock held), its flags lose
    /// `FLAG_OVERFLOW`. A reference that fails its checks is damage: the caller resets the page.
    pub(super) fn resolve(
        &self,
        at: Place<'_>,
        value: &[u8],
        flags: u32,
    ) -> std::result::Result<(Vec<u8>, u32), Corrupt> {
        owned_value(at.file, at.page, value, flags)
    }

    /// Reads the bytes of the large values among dirty entries copied out of `page`, its lock
    /// held and before the change that dropped them frees their blocks; each keeps its
    /// reference for `mark_clean`.
    pub(super) fn resolve_copies(
        &self,
        at: Place<'_>,
        copies: &mut [DirtyCopy],
    ) -> std::result::Result<(), Corrupt> {
        for copy in copies.iter_mut().filter(|c| c.flags & FLAG_OVERFLOW != 0) {
            let bytes = at.file.overflow_read(at.page, &copy.value)?;
            copy.reference = Some(std::mem::replace(&mut copy.value, bytes));
            copy.flags &= !FLAG_OVERFLOW;
        }
        Ok(())
    }

    /// For `mark_clean`: a copy made from a request (write-through) knows the value's bytes
    /// but not the reference it was stored under. The reference of the key's large entry in
    /// the page, if that entry holds these bytes (its length and checksum match).
    pub(super) fn reference_of(
        &self,
        guard: &mut PageGuard<'_>,
        copy: &DirtyCopy,
    ) -> Option<Vec<u8>> {
        let found = guard
            .page()
            .view()
            .find(copy.slot_hash, &copy.key)
            .ok()
            .flatten()
            .filter(|e| e.flags & FLAG_OVERFLOW != 0)
            .map(|e| e.value.to_vec());
        let raw = found?;
        let r = OverflowReference::decode(&raw).ok()?;
        (r.len == copy.value.len() as u64 && r.checksum == overflow_checksum(&copy.value))
            .then_some(raw)
    }

    /// One attempt at a layered store of `req`, whose value goes to the overflow area, under
    /// `guard`, keeping the kill-safety argument of `overflow.rs`: claiming the blocks, writing
    /// them, linking the entry and freeing what it replaces or evicts make one structural
    /// change under the busy marker. With `refuse`, a dry run first looks (writing nothing)
    /// for dirty entries in the way: found, they are copied out (their large values read) and
    /// nothing changes (`Ok(None)`). Dirty entries the store drops are copied out, their large
    /// values read before their blocks are freed. When the area is full, this page's clean
    /// large values are evicted once and the store tried again; `Err(Ok(full))` if it still
    /// has no room. `Err(Err(c))`: the page was damaged and has been reset.
    #[cold]
    pub(super) fn attempt_store_large(
        &self,
        guard: &mut PageGuard<'_>,
        req: &NewEntry<'_>,
        now: u32,
        dirty_rules: (bool, bool),
        copies: &mut Vec<DirtyCopy>,
    ) -> std::result::Result<Option<StoreOutcome>, std::result::Result<OverflowFull, Corrupt>> {
        let (refuse, replacing_drops) = dirty_rules;
        let at = guard.place();
        let slots = at.file.geometry().start_slots;
        if refuse {
            // The entry the page will hold is a reference: a stand-in of its size decides.
            let stand_in = [0u8; OVERFLOW_REF_SIZE];
            let entry = NewEntry {
                value: &stand_in,
                flags: req.flags | FLAG_OVERFLOW,
                ..*req
            };
            copies.clear();
            let mut dry = Dirty::dry(copies);
            dry.replacing_drops = replacing_drops;
            let looked = guard.page().store_dirty(&entry, now, slots, true, &mut dry);
            if let Err(c) = looked.and_then(|_| self.resolve_copies(at, copies)) {
                guard.reset_for(c);
                return Err(Err(c));
            }
            if !copies.is_empty() {
                return Ok(None);
            }
        }
        let mut evicted = false;
        loop {
            copies.clear();
            let mut dirty = super::write_back::dirty_rules(copies, refuse, replacing_drops);
            let changed = guard.store_overflow_with(req, |p, entry| {
                let stored = p.store_dirty(entry, now, slots, true, &mut dirty)?;
                // Before the change ends and frees the blocks of what it dropped (or, refused,
                // the blocks just written).
                self.resolve_copies(at, dirty.out)?;
                Ok(stored)
            });
            match changed {
                Ok(Ok(stored)) => return Ok(stored),
                Ok(Err(full)) if !evicted => {
                    evicted = true;
                    self.evict_large_locked(guard, Some(req.key), full.needed, now, false);
                }
                Ok(Err(full)) => return Err(Ok(full)),
                Err(c) => return Err(Err(c)),
            }
        }
    }

    /// Stores `req`, which goes to the overflow area
    /// ([`Route::Overflow`](crate::store::Route::Overflow)), with its value there. When the
    /// area is full, this page's other large values go first (expired ones, then the least
    /// recently used); what other pages must give up is the caller's to ask for (`store` lets
    /// go of this page's lock first).
    #[cold]
    pub(super) fn store_large(
        &self,
        guard: &mut PageGuard<'_>,
        req: &NewEntry<'_>,
        now: u32,
        in_place: bool,
    ) -> Result<StoreOutcome> {
        let page = guard.page_index();
        let mut evicted = false;
        loop {
            // A page found damaged is reset by the change; the store is tried once more on
            // the fresh page.
            let outcome = match guard.store_overflow(req, now, in_place) {
                Ok(outcome) => outcome,
                Err(_) => guard
                    .store_overflow(req, now, in_place)
                    .map_err(|c| self.corrupt(page, c))?,
            };
            match outcome {
                Ok(StoreOutcome::TooLarge) => {
                    return Err(self.too_large_in(guard.place().file, req));
                }
                Ok(outcome) => return Ok(outcome),
                Err(full) if !evicted => {
                    evicted = true;
                    self.evict_large_locked(guard, Some(req.key), full.needed, now, false);
                }
                Err(full) => return Err(self.overflow_full(full)),
            }
        }
    }

    /// Makes room for `needed` blocks in the overflow area (what the store that found it full
    /// needs: [`OverflowFull::needed`]) from pages other than `page` (whose lock the caller
    /// does not hold): expired large values first, then the least recently used of each page
    /// in turn, one page locked at a time, until enough blocks are free or every page was
    /// visited twice.
    ///
    /// `at` is the file and page of the store (during a resize, the new file's, whose area is
    /// its own): the pages walked are that file's, a page of it found moved is skipped.
    pub(super) fn evict_overflow_elsewhere(
        &self,
        at: Place<'_>,
        needed: u32,
        now: u32,
    ) -> Result<()> {
        let (file, page) = (at.file, at.page);
        if file.overflow().is_none() {
            return Ok(());
        }
        let pages = file.geometry().num_pages;
        for expired_only in [true, false] {
            for i in 1..pages {
                if free_blocks(file) >= needed {
                    return Ok(());
                }
                let other = (page + i) % pages;
                if let Some(mut guard) = self.lock_page_at(file, other)? {
                    self.evict_large_locked(&mut guard, None, needed, now, expired_only);
                }
            }
        }
        Ok(())
    }

    /// Writes back the dirty large values of every page that owns overflow blocks and marks
    /// them clean, so that the area's eviction may take them (a write-back cache whose area
    /// is full of writes the backing store does not have yet). Each page under its write-back
    /// lock, as `flush` does; the caller holds no lock.
    ///
    /// `file` is the file whose area is full (during a resize, maybe the new one).
    pub(super) fn write_back_large(&self, file: &SharedFile) -> Result<usize> {
        let owners = file.overflow_owners();
        let mut written = 0;
        for (page, _) in owners.iter().enumerate().filter(|(_, owns)| **owns) {
            written += self.flush_page_at(file, page as u32, true)?;
        }
        Ok(written)
    }

    /// Removes clean large values of the locked page (never `keep`'s) until `needed` blocks
    /// are free: expired ones first, then (unless `expired_only`) the least recently used.
    pub(super) fn evict_large_locked(
        &self,
        guard: &mut PageGuard<'_>,
        keep: Option<&[u8]>,
        needed: u32,
        now: u32,
        expired_only: bool,
    ) {
        let mut victims = Vec::new();
        let walked = PageView::new(guard.bytes()).for_each_entry(|e| {
            // A dirty value is a write the backing store does not have yet: never evicted
            // here (a write-back, flush or eviction that writes it back first frees it).
            if e.flags & FLAG_OVERFLOW != 0 && e.flags & FLAG_DIRTY == 0 && keep != Some(e.key) {
                victims.push(Victim {
                    slot_hash: e.slot_hash,
                    key: e.key.to_vec(),
                    expired: is_expired(e.expire_on, now),
                    last_access: e.last_access,
                });
            }
        });
        if let Err(c) = walked {
            guard.reset_for(c);
            return;
        }
        victims.retain(|v| v.expired || !expired_only);
        victims.sort_by_key(|v| (!v.expired, v.last_access));
        let file = guard.place().file;
        for v in victims {
            if free_blocks(file) >= needed {
                return;
            }
            if guard
                .change(|p| p.remove(v.slot_hash, &v.key, now))
                .is_err()
            {
                return;
            }
        }
    }

    /// Frees the overflow blocks that no entry references — left by a damaged file, or by a
    /// process killed in a large write whose page nobody has locked since — checking every
    /// large value's reference and chain on the way (a page whose references fail is reset).
    /// One page locked at a time. Returns the blocks freed (0 without an overflow area).
    ///
    /// # Errors
    /// Lock errors.
    pub fn reclaim_overflow(&self) -> Result<u64> {
        if self.inner.file.overflow().is_none() {
            return Ok(0);
        }
        // A resize met part way: the walk goes on in the new file (`each_page`).
        let (freed, file) = self.each_page(
            Cache::lock_page_at,
            0u64,
            |_, _| {},
            |freed, _, _, mut guard, _| {
                *freed += u64::from(guard.sweep_overflow());
                Ok(())
            },
        )?;
        Ok(freed + u64::from(file.overflow_free_unowned(false)))
    }

    /// Checks the overflow area without changing anything: the pages whose large values'
    /// references or blocks fail their checks, and the blocks held that no entry references
    /// (which [`reclaim_overflow`](Self::reclaim_overflow) frees). One page locked at a time.
    ///
    /// # Errors
    /// Lock errors.
    pub fn check_overflow(&self) -> Result<(Vec<PageProblem>, u64)> {
        if self.inner.file.overflow().is_none() {
            return Ok((Vec::new(), 0));
        }
        // A resize met part way: the walk goes on in the new file (`each_page`).
        let ((problems, unreferenced), file) = self.each_page(
            // A shared lock, as `validate` takes: checking changes nothing.
            Cache::shared_page_at,
            (Vec::new(), 0u64),
            |_, _| {},
            |(problems, unreferenced), _, page, guard, _| {
                match Reader::Shared(guard).overflow_unreferenced() {
                    Ok(n) => *unreferenced += u64::from(n),
                    Err(c) => problems.push(PageProblem { page, reason: c.0 }),
                }
                Ok(())
            },
        )?;
        let unreferenced = unreferenced + u64::from(file.overflow_free_unowned(true));
        Ok((problems, unreferenced))
    }
}

/// Blocks free in `file`'s overflow area.
fn free_blocks(file: &SharedFile) -> u32 {
    file.overflow_usage()
        .map_or(0, |u| u.blocks.saturating_sub(u.used))
}
