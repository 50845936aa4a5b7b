//! Write-back without losing writes: a dirty entry is written to the backing store *before*
//! it leaves the cache.
//!
//! An operation that would drop dirty entries (a store or an `update` that must evict, a
//! purge, a clear) first runs with [`Dirty::refuse`]: the page copies the dirty entries out and changes
//! nothing. The cache unlocks, writes the copies to the backing store, locks again, marks
//! them clean (if no one changed them meanwhile) and tries again; by then the entries it
//! drops are clean. So a process killed at any instant loses no dirty entry: until the
//! backing store has it, it is still in the cache, still dirty, for the next `flush` or
//! eviction. One exception, documented: a page reset (its dirty entries are lost and counted
//! in `Stats::dirty_lost`). An `update` unlocks between its closure and its store only when
//! dirty entries are in the way, and looks at its key again (see [`Cache::store_updated`]).
//!
//! If other processes keep dirtying the page, so that `ROUNDS - 1` such attempts each find
//! dirty entries in the way again, the last attempt does not unlock: it writes the copies
//! back *holding the page lock* (and the write-back lock), marks them clean, and only then
//! drops them. So no dirty entry ever leaves the page before the backing store has it, and a
//! process killed during that call leaves them in the page, dirty (the page is not marked
//! busy while the store is called, so it is not reset). The price, only in that last round:
//! every process that reads or writes that one page waits for those calls of the backing
//! store, each at most its `lock_timeout` (then [`Error::LockTimeout`], counted in
//! `Stats::lock_timeouts`); other pages are not held up. A backing store whose callback uses
//! the same cache gets [`Error::Reentrant`] there (the thread holds a page lock), never a
//! deadlock.
//!
//! Writes reach the backing store after the page is unlocked, so two writers of one key could
//! reach it in the wrong order. Every operation of a backed cache that writes to the backing
//! store (or copies entries out to write them back, or loads a value to cache it) therefore
//! holds the page's write-back lock ([`Cache::write_back_lock`]) around both its page change
//! and its calls of the store: a page's write-backs happen one at a time, in the order of its
//! changes. Plain hits take only the page lock.
//!
//! A dirty large value (in the overflow area) is copied out with its bytes, read from its
//! blocks under the page lock before the change that drops it frees them; it is marked clean
//! only while its page still holds the same reference. The area's eviction never takes a
//! dirty value: a store that finds the area full of them writes them back first (see
//! `large.rs`).

use super::compression::decompress_borrowed;
use super::handle::{Cache, Loc, Walked};
use super::update::is_negative;
use crate::clock::from_unix_secs;
use crate::page::consts::{FLAG_DIRTY, FLAG_OVERFLOW, FLAG_UNDEF};
use crate::page::{Corrupt, Dirty, DirtyCopy, Evict, NewEntry, PageMut, Spare, StoreOutcome};
use crate::store::{
    LockError, OverflowFull, PageGuard, Place, Route, SharedFile, WriteBackGuard, WriteBackWait,
};
use crate::{Error, LockRole, Result};
use std::time::Duration;

/// Attempts at a change that must drop dirty entries: each but the last unlocks the page to
/// write them back; the last writes them back holding the page lock (see the module docs).
const ROUNDS: usize = 4;

/// A page lock with the page's write-back lock, if one is needed (see
/// `Cache::lock_with_write_back`).
type WithWriteBack<'s> = (Option<WriteBackGuard<'s>>, PageGuard<'s>);

/// What [`Cache::try_write_back_lock`] got.
pub(crate) enum TryWriteBack<'a> {
    /// The lock (`None` where none is needed, as in `write_back_lock`).
    Taken(Option<WriteBackGuard<'a>>),
    /// Someone else holds it.
    Busy,
}

/// How [`Cache::attempt_store`] makes a store.
enum Plan {
    /// Under the busy marker (native layout), as every structural change by default.
    Marked,
    /// Without it: a dry run found the store to be an append (with or without a rebuild).
    Unmarked,
}

/// Why an attempt at a store changed nothing, when it is not dirty entries in the way.
pub(crate) enum Failed {
    /// The page was damaged, and has been reset.
    Reset(Corrupt),
    /// A large value found no room in the overflow area, even after this page's clean large
    /// values were evicted.
    Full(OverflowFull),
}

/// An entry as an `update`'s closure saw it: its stored bytes, flags and expiry.
pub(crate) struct Seen {
    pub(crate) value: Vec<u8>,
    pub(crate) flags: u32,
    pub(crate) expire_on: u32,
}

/// What a store that keeps dirty entries did.
pub(crate) enum Kept {
    /// It stored (or the conditional-store rules refused it).
    Stored(StoreOutcome),
    /// With `if_absent`: the key already held this live value (stored bytes, flags).
    Existing(Vec<u8>, u32),
}

impl Cache {
    /// Whether this handle has a backing store ([`CacheBuilder::backing`]).
    ///
    /// [`CacheBuilder::backing`]: crate::CacheBuilder::backing
    pub fn has_backing(&self) -> bool {
        self.inner
            .layer
            .as_ref()
            .is_some_and(|l| l.backing.is_some())
    }

    /// Takes `page`'s write-back lock if this handle has a backing store (`None` if not):
    /// held from before an operation changes the page until the backing store has what the
    /// change must write, so that writes of one page reach the store in the order they were
    /// made. Take it before the page lock.
    ///
    /// Also `None` in a backing store's callback that uses its own cache: the thread holds a
    /// write-back lock already, and could deadlock waiting for another one. What such a
    /// callback writes is not ordered against other writers of the page (the documented
    /// exception).
    ///
    /// # Errors
    /// A lock timeout; [`Error::ReadOnly`].
    pub(crate) fn write_back_lock(&self, loc: Loc) -> Result<Option<WriteBackGuard<'_>>> {
        self.write_back_lock_from(&self.inner.file, loc)
    }

    /// [`write_back_lock`](Self::write_back_lock) starting at `from` (a file this handle
    /// used), following any resize that moved it.
    fn write_back_lock_from<'s>(
        &'s self,
        from: &'s SharedFile,
        loc: Loc,
    ) -> Result<Option<WriteBackGuard<'s>>> {
        if !self.has_backing() || self.inner.file.holds_write_back() {
            return Ok(None);
        }
        let timeout = self.inner.lock_timeout;
        self.follow_moves(from, |file| {
            let page = loc.page(file.geometry().num_pages);
            match file.lock_write_back(page, WriteBackWait::Up(timeout)) {
                Ok(guard) => Ok(Some(Some(guard))),
                Err(LockError::Moved) => self.follow(file).map(|()| None),
                Err(e) => Err(file.lock_error(e, LockRole::WriteBack, page, timeout)),
            }
        })
    }

    /// [`write_back_lock`](Self::write_back_lock) without waiting: `Busy` if another thread
    /// or process holds it (it may be inside a slow call of the backing store).
    pub(crate) fn try_write_back_lock(&self, loc: Loc) -> Result<TryWriteBack<'_>> {
        if !self.has_backing() || self.inner.file.holds_write_back() {
            return Ok(TryWriteBack::Taken(None));
        }
        self.follow_moves(&self.inner.file, |file| {
            let page = loc.page(file.geometry().num_pages);
            match file.lock_write_back(page, WriteBackWait::No) {
                Ok(guard) => Ok(Some(TryWriteBack::Taken(Some(guard)))),
                Err(LockError::TimedOut) => Ok(Some(TryWriteBack::Busy)),
                Err(LockError::Moved) => self.follow(file).map(|()| None),
                Err(e) => Err(file.lock_error(e, LockRole::WriteBack, page, Some(Duration::ZERO))),
            }
        })
    }

    /// Locks `page` for a change. A page a dead process left half-changed is reset, and the
    /// dirty entries it held are counted as lost.
    pub(crate) fn lock_for_change(&self, page: Loc) -> Result<PageGuard<'_>> {
        if self.inner.read_only {
            return Err(Error::ReadOnly {
                path: self.path().to_path_buf(),
            });
        }
        self.lock_page(page)
    }

    /// Stores `req` into `page` without dropping a dirty entry that is not in the backing
    /// store. With `if_absent`, a live value (not a key cached as absent) wins and is
    /// returned, and an expired dirty entry of the key is written back before it is replaced.
    /// Dirty entries in the way are copied out and written back under `page`'s write-back
    /// lock: the caller's, or one taken here when the first of them is found (so a store that
    /// evicts nothing dirty, the common case, takes none).
    pub(crate) fn store_keeping_dirty(
        &self,
        req: &NewEntry<'_>,
        page: Loc,
        now: u32,
        if_absent: bool,
    ) -> Result<Kept> {
        let mut copies = Vec::new();
        let mut write_back = None;
        let mut guard = self.lock_for_change(page)?;
        let mut resets = 0;
        let mut made_room = 0;
        let mut round = 0;
        loop {
            if if_absent {
                // The page locked now: a round that let it go may have locked it again in the
                // file a resize moved it to, whose blocks a large value is read from.
                let at = guard.place();
                let live = guard
                    .page()
                    .peek(req.slot_hash, req.key, now)
                    .and_then(|e| e.map(|e| self.resolve(at, e.value, e.flags)).transpose());
                match live {
                    Ok(Some((value, flags))) if !is_negative(flags) => {
                        return Ok(Kept::Existing(value, flags));
                    }
                    Ok(_) => {}
                    Err(c) => guard.reset_for(c),
                }
            }
            // After a held write-back (the last round), the victims are clean: drop them.
            let refuse = round < ROUNDS;
            let stored = self.attempt_store(&mut guard, req, now, refuse, if_absent, &mut copies);
            match stored {
                Ok(Some(StoreOutcome::TooLarge)) => return Err(self.refused(req)),
                Ok(Some(outcome)) => {
                    drop(guard);
                    // Nothing dirty was dropped unless the page changed under the lock (it
                    // cannot); written back all the same if it were.
                    self.write_back(&copies)?;
                    return Ok(Kept::Stored(outcome));
                }
                Ok(None)
                    if write_back.is_none()
                        && self.has_backing()
                        && !self.inner.file.holds_write_back() =>
                {
                    // Dirty entries in the way, and copies must be taken under the write-back
                    // lock: take it (before the page lock, as always) and look again.
                    drop(guard);
                    write_back = self.write_back_lock(page)?;
                    guard = self.lock_for_change(page)?;
                }
                Ok(None) if round + 1 >= ROUNDS => {
                    // Others kept dirtying the page: the last round writes back holding it.
                    self.write_back_held(&mut guard, &copies)?;
                    round += 1;
                }
                Ok(None) => {
                    drop(guard);
                    self.write_back(&copies)?;
                    guard = self.lock_for_change(page)?;
                    self.mark_clean(&mut guard, &copies);
                    round += 1;
                }
                Err(Failed::Reset(c)) => {
                    // The page was damaged and has been reset: try once more on the fresh page.
                    resets += 1;
                    if resets > 1 {
                        return Err(self.corrupt(guard.page_index(), c));
                    }
                }
                Err(Failed::Full(full)) if made_room < 2 => {
                    // Room is made in other pages with this one let go (a page lock is never
                    // waited for while another is held), then the store is tried again. Dirty
                    // large values are never evicted before the backing store has them: if
                    // the clean ones were not enough, the second time every page's dirty large
                    // values are written back first, each under its page's write-back lock —
                    // unless the caller holds one (a thread takes one at a time).
                    made_room += 1;
                    let locked = guard.place();
                    drop(guard);
                    if made_room == 2 {
                        write_back = None;
                        if locked.file.holds_write_back() {
                            return Err(self.overflow_full(full));
                        }
                        self.write_back_large(locked.file)?;
                    }
                    self.evict_overflow_elsewhere(locked, full.needed, now)?;
                    guard = self.lock_for_change(page)?;
                }
                Err(Failed::Full(full)) => return Err(self.overflow_full(full)),
            }
        }
    }

    fn failed(&self, page: u32, f: Failed) -> Error {
        match f {
            Failed::Reset(c) => self.corrupt(page, c),
            Failed::Full(full) => self.overflow_full(full),
        }
    }

    /// `Error::OverflowFull` for a large value that found no room.
    pub(crate) fn overflow_full(&self, full: OverflowFull) -> Error {
        Error::OverflowFull {
            path: self.path().to_path_buf(),
            needed: full.needed,
            free: full.free,
        }
    }

    /// Stores what an `update`'s closure decided (`req`), under `guard`, which the caller took
    /// holding `page`'s write-back lock after the closure saw the key as `seen`. A dirty entry
    /// in the way is not dropped before the backing store has it: the page is unlocked, the
    /// dirty entries written back and marked clean, and the key looked at again. Returns the
    /// guard, the store's outcome — `None` if another writer stored the key meanwhile (the
    /// update then took effect just before that write, which replaced it, and is not stored)
    /// — and copies of dirty entries it dropped, to be written back after unlocking (none: the
    /// last of `ROUNDS` attempts writes its victims back holding the lock, then drops them
    /// clean).
    ///
    /// The write-back lock keeps every other writer that could change the key out meanwhile
    /// but one: a write-back `set` that needs to evict nothing dirty.
    pub(crate) fn store_updated<'c>(
        &'c self,
        mut guard: PageGuard<'c>,
        req: &NewEntry<'_>,
        page: Loc,
        now: u32,
        mut seen: Option<Seen>,
    ) -> Result<(PageGuard<'c>, Option<StoreOutcome>, Vec<DirtyCopy>)> {
        let mut copies = Vec::new();
        for round in 0..ROUNDS {
            let refuse = self.has_backing();
            let stored = match self.attempt_store(&mut guard, req, now, refuse, false, &mut copies)
            {
                Ok(stored) => stored,
                Err(Failed::Full(full)) => return Err(self.overflow_full(full)),
                // The page was damaged and has been reset: once more on the fresh page.
                Err(Failed::Reset(_)) => self
                    .attempt_store(&mut guard, req, now, refuse, false, &mut copies)
                    .map_err(|f| self.failed(guard.page_index(), f))?,
            };
            if let Some(outcome) = stored {
                return Ok((guard, Some(outcome), copies));
            }
            if round + 1 == ROUNDS {
                // Others kept dirtying the page: write back holding it (nothing can change the
                // key meanwhile), then store, dropping the victims clean.
                self.write_back_held(&mut guard, &copies)?;
                let stored = self
                    .attempt_store(&mut guard, req, now, false, false, &mut copies)
                    .map_err(|f| self.failed(guard.page_index(), f))?;
                return Ok((guard, stored, copies));
            }
            drop(guard);
            self.write_back(&copies)?;
            guard = self.lock_for_change(page)?;
            self.mark_clean(&mut guard, &copies);
            if let Some(seen) = &mut seen
                && copies
                    .iter()
                    .any(|c| c.key.as_slice() == req.key && c.value == seen.value)
            {
                // Its own old value, written back: clean now.
                seen.flags &= !FLAG_DIRTY;
            }
            if !self.still_as_seen(&mut guard, req, seen.as_ref(), now) {
                return Ok((guard, None, Vec::new()));
            }
        }
        unreachable!("the last round stores")
    }

    /// Whether `req`'s key holds what an `update`'s closure saw (`seen`), but for the dirty
    /// flag. A clean entry that is gone was evicted (the store has it), not replaced.
    fn still_as_seen(
        &self,
        guard: &mut PageGuard<'_>,
        req: &NewEntry<'_>,
        seen: Option<&Seen>,
        now: u32,
    ) -> bool {
        let at = guard.place();
        let found = guard
            .page()
            .peek(req.slot_hash, req.key, now)
            .ok()
            .flatten()
            // A large value is compared by its bytes, as the closure saw them.
            .map(|e| {
                self.resolve(at, e.value, e.flags)
                    .map(|(v, f)| (v, f, e.expire_on))
            });
        let found = match found {
            Some(Ok(found)) => Some(found),
            Some(Err(c)) => {
                guard.reset_for(c);
                None
            }
            None => None,
        };
        match (seen, found) {
            (Some(seen), Some((value, flags, expire_on))) => {
                value == seen.value
                    && (flags ^ seen.flags) & !FLAG_DIRTY == 0
                    && expire_on == seen.expire_on
            }
            (None, None) | (Some(_), None) => true,
            (None, Some(_)) => false,
        }
    }

    /// One attempt at storing `req` under `guard`: with `refuse`, a store that would drop dirty
    /// entries changes nothing and copies them into `copies` (`Ok(None)`); otherwise it drops
    /// them and copies them there (see [`Dirty`]). A page found damaged is reset (`Err`).
    ///
    /// Native pages change under a busy marker, and a process killed with the marker set
    /// leaves the page to be reset, with every dirty entry in it. Yet only an overwrite in
    /// place needs the marker: an append or a rebuild is ordered so that a process killed part
    /// way leaves a page that is whole or fails its header check (as in the FastMmap layout,
    /// which has no marker). So a refusing attempt first asks in a dry run (which writes
    /// nothing), without the marker, whether dirty entries are in the way and whether the
    /// store would go in place; only then is the store made, under the marker only if it must
    /// be.
    ///
    /// A dead resizer's copy among the dirty entries (one a killed resizer left in a page of
    /// the file a move goes to, whose real entry is in the old file: see
    /// [`dead_copy`](Self::dead_copy)) does not exist: it is never handed back to be written
    /// back — it may be older than its real entry, written back already — and one in the way
    /// is marked clean and the store tried again.
    fn attempt_store(
        &self,
        guard: &mut PageGuard<'_>,
        req: &NewEntry<'_>,
        now: u32,
        refuse: bool,
        replacing_drops: bool,
        copies: &mut Vec<DirtyCopy>,
    ) -> std::result::Result<Option<StoreOutcome>, Failed> {
        let at = guard.place();
        for _ in 0..2 {
            let stored =
                self.attempt_store_once(guard, req, now, refuse, replacing_drops, copies)?;
            let dead = self.take_dead_copies(at, copies);
            if stored.is_some() || dead.is_empty() {
                return Ok(stored);
            }
            // Refused: the dead copies are still in the page, clean in truth.
            self.mark_clean(guard, &dead);
            if !copies.is_empty() {
                return Ok(None);
            }
            // Refused for dead copies alone: out of the way now.
        }
        Ok(None)
    }

    /// Takes out of `copies` (dirty entries found at `at`) the dead resizer's copies among
    /// them (see [`dead_copy`](Self::dead_copy)), and returns those. Nothing to do, and no
    /// allocation, when there are none or `at` is in the file the handle uses.
    fn take_dead_copies(&self, at: Place<'_>, copies: &mut Vec<DirtyCopy>) -> Vec<DirtyCopy> {
        if copies.is_empty() || std::ptr::eq(at.file, &*self.inner.file) {
            return Vec::new();
        }
        let (dead, real) = copies.drain(..).partition(|c| self.dead_copy(at, c));
        *copies = real;
        dead
    }

    fn attempt_store_once(
        &self,
        guard: &mut PageGuard<'_>,
        req: &NewEntry<'_>,
        now: u32,
        refuse: bool,
        replacing_drops: bool,
        copies: &mut Vec<DirtyCopy>,
    ) -> std::result::Result<Option<StoreOutcome>, Failed> {
        match guard.place().file.route(req) {
            Route::Page => {}
            Route::Overflow => {
                return self
                    .attempt_store_large(guard, req, now, (refuse, replacing_drops), copies)
                    .map_err(|e| match e {
                        Ok(full) => Failed::Full(full),
                        Err(c) => Failed::Reset(c),
                    });
            }
            // Refused before the page is touched (the caller's error: `Cache::refused`).
            Route::TooLarge => return Ok(Some(StoreOutcome::TooLarge)),
        }
        // The page's own file (past a resize, not necessarily the handle's) decides.
        let page = guard.page_index();
        let at = guard.place();
        let slots = at.file.geometry().start_slots;
        let in_place = at.file.layout() == crate::store::Layout::Native;
        copies.clear();
        let mut plan = Plan::Marked;
        if refuse && in_place {
            let mut dry = Dirty::dry(copies);
            dry.replacing_drops = replacing_drops;
            let looked = guard
                .page()
                .store_dirty(req, now, slots, in_place, &mut dry);
            let marked = dry.would_write_in_place();
            // A page that holds large values changes under the marker: the change frees the
            // blocks of what it replaces or evicts (see `overflow.rs`).
            let owns_blocks = at.file.overflow_owned(page) != 0;
            plan = match looked {
                Ok(None) if !copies.is_empty() => {
                    // Large values among them are read now, while their blocks are theirs.
                    if let Err(c) = self.resolve_copies(at, copies) {
                        guard.reset_for(c);
                        return Err(Failed::Reset(c));
                    }
                    return Ok(None);
                }
                Ok(None) if !marked && !owns_blocks => Plan::Unmarked,
                _ => Plan::Marked,
            };
        }
        copies.clear();
        let mut dirty = dirty_rules(copies, refuse, replacing_drops);
        // Large values among the dirty entries copied out are read before the change ends and
        // frees their blocks.
        let mut store = |p: &mut PageMut<'_>| {
            let stored = p.store_dirty(req, now, slots, in_place, &mut dirty)?;
            self.resolve_copies(at, dirty.out)?;
            Ok(stored)
        };
        match plan {
            Plan::Unmarked => {
                let stored = store(&mut guard.page());
                if let Err(c) = stored {
                    guard.reset_for(c);
                }
                stored.map_err(Failed::Reset)
            }
            Plan::Marked => guard.change(store).map_err(Failed::Reset),
        }
    }

    /// Clears the dirty flag of each copy that is still in the page unchanged.
    ///
    /// Without the busy marker: one byte of a flag word changes per copy, so a process killed
    /// here leaves a sound page, which the marker would have had reset (with every dirty
    /// entry in it).
    pub(crate) fn mark_clean(&self, guard: &mut PageGuard<'_>, copies: &[DirtyCopy]) {
        for copy in copies {
            // A copy made from a request: the entry may hold its bytes as a large value.
            let found = match copy.reference {
                None if self.inner.file.overflow().is_some() => self.reference_of(guard, copy),
                _ => None,
            };
            let reference = copy.reference.as_deref().or(found.as_deref());
            let marked = guard.page().mark_clean(copy, reference);
            if let Err(c) = marked {
                guard.reset_for(c);
                return;
            }
        }
    }

    /// The last round's write-back: `copies` (dirty entries in the way) go to the backing store
    /// while `guard` stays held, then are marked clean, so that the change that follows drops
    /// them clean. Readers of the page wait meanwhile (each at most its `lock_timeout`); the
    /// store's callback cannot use this cache ([`Error::Reentrant`]). On an error of the store
    /// nothing is marked clean.
    fn write_back_held(&self, guard: &mut PageGuard<'_>, copies: &[DirtyCopy]) -> Result<()> {
        self.write_back(copies)?;
        self.mark_clean(guard, copies);
        Ok(())
    }

    /// Writes copies of dirty entries to the backing store: each value (decompressed), or a
    /// delete for a dirty `undef` (a key Perl set to undef, which the store cannot hold).
    pub(crate) fn write_back(&self, copies: &[DirtyCopy]) -> Result<()> {
        if copies.is_empty() {
            return Ok(());
        }
        let Some(backing) = self.inner.layer.as_ref().and_then(|l| l.backing.as_ref()) else {
            return Ok(());
        };
        for copy in copies {
            if copy.flags & FLAG_UNDEF != 0 {
                backing
                    .delete(&copy.key)
                    .map_err(|e| self.backing_error("delete", Some(&copy.key), e))?;
                continue;
            }
            let value = decompress_borrowed(&copy.value, copy.flags, self.plain_limit())
                .map_err(|e| self.decode_error(&copy.key, e))?;
            let expires_at = (copy.expire_on != 0).then(|| from_unix_secs(copy.expire_on));
            backing
                .store(&copy.key, &value, expires_at)
                .map_err(|e| self.backing_error("store", Some(&copy.key), e))?;
        }
        Ok(())
    }

    /// `Error::Backing` for a failed call of the store.
    pub(crate) fn backing_error(
        &self,
        op: &'static str,
        key: Option<&[u8]>,
        source: crate::BackingError,
    ) -> Error {
        let error = Error::Backing {
            path: self.path().to_path_buf(),
            op,
            key: key.map(<[u8]>::to_vec),
            source,
        };
        crate::events::backing_failed(&self.inner.file.faults, &error);
        error
    }

    /// Takes page `page` of `file` with its write-back lock (none without a backing store, or
    /// in a backing store's callback), for the walks that write back: `None` if a resize moved
    /// the page (see [`Cache::each_page`]).
    fn lock_with_write_back<'s>(
        &'s self,
        file: &'s SharedFile,
        page: u32,
    ) -> Result<Option<WithWriteBack<'s>>> {
        let write_back = if !self.has_backing() || file.holds_write_back() {
            None
        } else {
            let timeout = self.inner.lock_timeout;
            match file.lock_write_back(page, WriteBackWait::Up(timeout)) {
                Ok(guard) => Some(guard),
                Err(LockError::Moved) => return self.follow(file).map(|()| None),
                Err(e) => return Err(file.lock_error(e, LockRole::WriteBack, page, timeout)),
            }
        };
        Ok(self
            .lock_page_at(file, page)?
            .map(|guard| (write_back, guard)))
    }

    /// Drops what `mode` says from every page, writing back the dirty entries among them
    /// first. Returns how many entries were dropped.
    ///
    /// Past a resize met on the way, a stale copy (whose old page is not marked moved: it
    /// does not exist, §2.5 of docs/format.md) is neither written back (it may be older than
    /// its real entry, written back already) nor dropped (it becomes real if its page is
    /// moved, as a write made after the walk visited that page).
    pub(crate) fn evict_all_keeping_dirty(&self, mode: Evict) -> Result<usize> {
        let (total, _) = self.each_page(
            Cache::lock_with_write_back,
            0,
            |_, _| {},
            |total, file, page, (_write_back, guard), walked| {
                *total += self.evict_keeping_dirty(file, page, guard, mode, walked)?;
                Ok(())
            },
        )?;
        Ok(total)
    }

    /// Drops what `mode` says from page `page` of `file`, locked by `guard` (and its
    /// write-back lock held by the caller), but for the stale copies `walked` finds there:
    /// how many entries were dropped.
    fn evict_keeping_dirty<'s>(
        &'s self,
        file: &'s SharedFile,
        page: u32,
        mut guard: PageGuard<'s>,
        mode: Evict,
        walked: &Walked<'_>,
    ) -> Result<usize> {
        let now = self.now();
        let slots = file.geometry().start_slots;
        let pages = file.geometry().num_pages;
        let stale = |key: &[u8], slot_hash: u32| walked.stale(pages, page, key, slot_hash);
        let spare: Spare<'_> = (!walked.first()).then_some(&stale);
        let mut copies = Vec::new();
        let at = guard.place();
        // Rounds 0..ROUNDS refuse; the last of them writes back holding the lock, so the one
        // after drops clean entries.
        for round in 0..=ROUNDS {
            copies.clear();
            let mut dirty = if round < ROUNDS {
                Dirty::refuse(&mut copies)
            } else {
                Dirty::collect(&mut copies)
            };
            let changed = guard.change(|p| {
                let dropped = p.evict_dirty(mode, now, slots, spare, &mut dirty)?;
                // Before the change ends and frees the blocks of the large values it drops.
                self.resolve_copies(at, dirty.out)?;
                Ok(dropped)
            });
            match changed {
                Ok(Some(dropped)) => {
                    drop(guard);
                    self.write_back(&copies)?;
                    return Ok(dropped);
                }
                Ok(None) if round + 1 >= ROUNDS => self.write_back_held(&mut guard, &copies)?,
                Ok(None) => {
                    drop(guard);
                    self.write_back(&copies)?;
                    // The write-back lock keeps the page from moving meanwhile.
                    let Some(again) = self.lock_page_at(file, page)? else {
                        return Ok(0);
                    };
                    guard = again;
                    self.mark_clean(&mut guard, &copies);
                }
                // Damaged, and reset: nothing is left to drop.
                Err(_) => return Ok(0),
            }
        }
        unreachable!("the last round always returns")
    }

    /// Writes back every dirty entry of every page and marks it clean; the entries stay
    /// cached. Returns how many were written. Perl has no such call (its `empty` writes back
    /// and drops everything).
    ///
    /// Each page is locked twice (to copy its dirty entries out, then to mark them clean), and
    /// never while the backing store is called. An entry changed meanwhile stays dirty: its new
    /// value is written by a later flush or eviction. During a resize, each entry is written
    /// from where it lives (a stale copy of a move under way is never written: §2.5 of
    /// docs/format.md).
    ///
    /// # Errors
    /// [`Error::Backing`] on the first failure of the store (the entries not yet written stay
    /// dirty); lock errors. Without a backing store, there is nothing to write: `Ok(0)`.
    pub fn flush(&self) -> Result<usize> {
        if !self.has_backing() {
            return Ok(0);
        }
        let (written, _) = self.each_page(
            Cache::lock_with_write_back,
            0,
            |_, _| {},
            |written, file, page, (_write_back, guard), walked| {
                let pages = file.geometry().num_pages;
                let keep = |c: &DirtyCopy| !walked.stale(pages, page, &c.key, c.slot_hash);
                *written += self.flush_held(file, page, guard, false, keep)?;
                Ok(())
            },
        )?;
        Ok(written)
    }

    /// `flush` of page `page` of `file` (`only_large`: of its large values only; nothing if
    /// the page was found moved). Returns how many entries were written.
    pub(crate) fn flush_page_at(
        &self,
        file: &SharedFile,
        page: u32,
        only_large: bool,
    ) -> Result<usize> {
        let Some((_write_back, guard)) = self.lock_with_write_back(file, page)? else {
            return Ok(0);
        };
        let at = guard.place();
        self.flush_held(file, page, guard, only_large, |c| !self.stale(at, c))
    }

    /// Whether `c`, found at `at` (a page of the file this handle uses, or of a file a resize
    /// moved it to), is a stale copy: its page in some file between is not marked moved (see
    /// `SharedFile::stale_in_successor`), so it does not exist and is never written back.
    /// A chain that cannot be followed to `at` counts as stale (nothing is written).
    fn stale(&self, at: Place<'_>, c: &DirtyCopy) -> bool {
        let pages = at.file.geometry().num_pages;
        self.any_before(at, |f| {
            f.stale_in_successor(pages, at.page, &c.key, c.slot_hash)
        })
        .unwrap_or(true)
    }

    /// Whether `c`, found at `at` (a page of a file a resize moves the handle's file to), is a
    /// copy a dead resizer left of a page it never marked, in some file of the chain from the
    /// handle's file to `at` (see `SharedFile::dead_copy_in_successor`). `false` for a file
    /// not ahead of the handle's in that chain.
    fn dead_copy(&self, at: Place<'_>, c: &DirtyCopy) -> bool {
        let pages = at.file.geometry().num_pages;
        self.any_before(at, |f| {
            f.dead_copy_in_successor(pages, at.page, &c.key, c.slot_hash)
        })
        .unwrap_or(false)
    }

    /// Follows the chain of resizes from the file this handle uses to `at.file`, asking `test`
    /// of each file before it: `Some(true)` as soon as one answers yes, `Some(false)` at
    /// `at.file`, `None` if the chain ends (or breaks) before it.
    fn any_before(&self, at: Place<'_>, test: impl Fn(&SharedFile) -> bool) -> Option<bool> {
        let mut f: &SharedFile = &self.inner.file;
        for _ in 0..crate::store::MAX_FOLLOWS {
            if std::ptr::eq(f, at.file) {
                return Some(false);
            }
            if !f.in_move() {
                return None;
            }
            if test(f) {
                return Some(true);
            }
            f = f.successor().ok()?;
        }
        None
    }

    /// Writes back the dirty entries of page `page` of `file`, locked by `guard` (its
    /// write-back lock held by the caller), that `keep` keeps (`only_large`: its large values
    /// only), and marks them clean. Returns how many were written.
    fn flush_held<'s>(
        &'s self,
        file: &'s SharedFile,
        page: u32,
        mut guard: PageGuard<'s>,
        only_large: bool,
        keep: impl Fn(&DirtyCopy) -> bool,
    ) -> Result<usize> {
        let at = guard.place();
        let found = guard.page().view().dirty_entries().and_then(|mut copies| {
            copies.retain(|c| keep(c) && (!only_large || c.flags & FLAG_OVERFLOW != 0));
            self.resolve_copies(at, &mut copies).map(|_| copies)
        });
        let copies = match found {
            Ok(copies) => copies,
            Err(c) => {
                guard.reset_for(c);
                return Ok(0);
            }
        };
        drop(guard);
        if copies.is_empty() {
            return Ok(0);
        }
        self.write_back(&copies)?;
        // The write-back lock keeps the page from moving meanwhile; moved all the same, the
        // entries stay dirty, to be written again.
        if let Some(mut guard) = self.lock_page_at(file, page)? {
            self.mark_clean(&mut guard, &copies);
        }
        Ok(copies.len())
    }

    /// Writes back every dirty entry and drops every entry (Perl's `empty`); with a backing
    /// store this is what [`clear`](Self::clear) does too. Without one, it is `clear`.
    ///
    /// # Errors
    /// [`Error::Backing`] on the first failure of the store: that page keeps its entries
    /// (pages before it are empty); lock errors.
    pub fn empty(&self) -> Result<()> {
        self.clear()
    }

    /// Drops `key` from the cache only — the backing store keeps it — writing it back first if
    /// it is dirty (Perl's `expire`). Returns whether it held a live value. A later `get`
    /// reads it through again.
    ///
    /// # Errors
    /// [`Error::Backing`] if a dirty value cannot be written back (it stays cached, dirty);
    /// lock errors.
    pub fn evict(&self, key: &[u8]) -> Result<bool> {
        let (page, slot_hash) = self.locate(key);
        let now = self.now();
        let _write_back = self.write_back_lock(page)?;
        let mut guard = self.lock_for_change(page)?;
        let at = guard.place();
        for _ in 0..ROUNDS {
            let found = guard
                .page()
                .view()
                .find(slot_hash, key)
                .map(|e| e.map(|e| (e.flags, e.value.to_vec(), e.expire_on)));
            let (flags, value, expire_on) = match found {
                Ok(Some(found)) => found,
                Ok(None) => return Ok(false),
                Err(c) => {
                    guard.reset_for(c);
                    return Ok(false);
                }
            };
            if flags & crate::page::consts::FLAG_DIRTY != 0 && self.has_backing() {
                let mut copy = [DirtyCopy {
                    slot_hash,
                    key: key.to_vec(),
                    value,
                    expire_on,
                    flags,
                    reference: None,
                }];
                if let Err(c) = self.resolve_copies(at, &mut copy) {
                    guard.reset_for(c);
                    return Ok(false);
                }
                let [copy] = copy;
                drop(guard);
                self.write_back(std::slice::from_ref(&copy))?;
                guard = self.lock_for_change(page)?;
                self.mark_clean(&mut guard, std::slice::from_ref(&copy));
                continue;
            }
            let removed = guard.change(|p| p.remove(slot_hash, key, now));
            return Ok(removed
                .ok()
                .flatten()
                .is_some_and(|r| r.was_live && !is_negative(r.flags)));
        }
        // Rewritten by others on every round: leave it to them.
        Ok(false)
    }
}

/// The dirty-entry rules of one store: with `refuse`, a store that would drop dirty entries
/// copies them into `copies` and changes nothing; otherwise it drops them and copies them
/// there. `replacing_drops` as in [`Dirty::replacing_drops`].
pub(super) fn dirty_rules(
    copies: &mut Vec<DirtyCopy>,
    refuse: bool,
    replacing_drops: bool,
) -> Dirty<'_> {
    let mut dirty = if refuse {
        Dirty::refuse(copies)
    } else {
        Dirty::collect(copies)
    };
    dirty.replacing_drops = replacing_drops;
    dirty
}
