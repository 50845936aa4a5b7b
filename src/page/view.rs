//! Operations on one locked page: lookup, store, remove.
//!
//! Writes are ordered so that a process killed between any two of them leaves a page the next
//! locker can use: space is reserved in the header first, the entry bytes are written next,
//! and the slot word that makes the entry reachable is stored last (the commit point). Slot
//! counters are adjusted after that; they are advisory and recounted by every rebuild.

use super::Corrupt;
use super::consts::*;
use super::dirty::Dirty;
use super::entry::{EntryLoc, EntryRef};
use super::evict::has_room;
use super::header::{PageHeader, get_u32, put_u32};
use super::policy::Policy;

/// A page's bytes, borrowed mutably for the duration of one locked operation.
pub struct PageMut<'a> {
    pub(super) buf: &'a mut [u8],
    /// The fewest slots a sound header may have (see [`PageView::checked_header`]).
    min_slots: u32,
    /// The eviction policy (see [`with_policy`](PageMut::with_policy)).
    pub(super) policy: Policy,
}

/// A page's bytes, borrowed for reading.
#[derive(Clone, Copy)]
pub struct PageView<'a> {
    pub(super) buf: &'a [u8],
    min_slots: u32,
}

impl<'a> PageView<'a> {
    /// Wraps any bytes; every read is bounds-checked, so no check is needed first.
    pub fn new(buf: &'a [u8]) -> PageView<'a> {
        PageView { buf, min_slots: 1 }
    }

    /// As [`new`](Self::new), for a page whose header must also have at least `min_slots`
    /// slots (the file's start slot count) to count as sound.
    pub fn with_min_slots(buf: &'a [u8], min_slots: u32) -> PageView<'a> {
        PageView { buf, min_slots }
    }

    pub fn header(&self) -> PageHeader {
        PageHeader::read(self.buf)
    }

    /// The header, checked to be sound: structurally, and with at least the slots the view
    /// was made with. Every operation starts here, once: this is the page's one header check
    /// per operation, and a page that fails it is reset by the caller.
    pub fn checked_header(&self) -> Result<PageHeader, Corrupt> {
        let hdr = self.header();
        hdr.check(self.buf.len(), self.min_slots)?;
        Ok(hdr)
    }

    fn word(&self, off: usize) -> Result<u32, Corrupt> {
        get_u32(self.buf, off).ok_or(Corrupt("offset outside the page"))
    }

    pub(super) fn slot(&self, slot: u32) -> Result<u32, Corrupt> {
        self.word(PageMut::slot_off(slot))
    }

    /// The part of the page entries may occupy: end of the slot table to `free_data`.
    pub(super) fn data_bounds(&self, hdr: &PageHeader) -> (usize, usize) {
        (hdr.slots_end(), hdr.free_data as usize)
    }

    /// Finds `key`, following the probe chain from `slot_hash % num_slots`. Always inlined
    /// (see `probe_in`).
    #[inline(always)]
    pub(super) fn probe(
        &self,
        hdr: &PageHeader,
        slot_hash: u32,
        key: &[u8],
    ) -> Result<Probe, Corrupt> {
        super::lookup::probe_in(self.buf, hdr, slot_hash, key)
    }

    /// Looks `key` up without touching access times or statistics. Expired entries and
    /// tombstones read as absent.
    pub fn peek(
        &self,
        slot_hash: u32,
        key: &[u8],
        now: u32,
    ) -> Result<Option<EntryRef<'a>>, Corrupt> {
        let hdr = self.checked_header()?;
        match self.probe(&hdr, slot_hash, key)? {
            Probe::Hit { loc, .. } if !is_expired(loc.expire_on, now) && !loc.is_tombstone() => {
                Ok(Some(loc.view(self.buf)))
            }
            _ => Ok(None),
        }
    }

    /// Calls `f` for every entry in slot order (expired entries and tombstones included).
    pub fn for_each_entry(&self, mut f: impl FnMut(EntryRef<'a>)) -> Result<(), Corrupt> {
        self.for_each_entry_protected(|e, _| f(e))
    }

    /// As [`for_each_entry`](Self::for_each_entry), with whether each entry is in the page's
    /// protected part (`FLAG_PROTECTED`, which the entry's flags never show): a resize carries
    /// it to the entry's new page.
    pub fn for_each_entry_protected(
        &self,
        mut f: impl FnMut(EntryRef<'a>, bool),
    ) -> Result<(), Corrupt> {
        let hdr = self.checked_header()?;
        let (data_start, data_end) = self.data_bounds(&hdr);
        let words = hdr.slot_words(self.buf.len());
        for slot in 0..hdr.num_slots {
            if let Some(off) = words.entry(self.slot(slot)?) {
                let loc = EntryLoc::read(self.buf, off, data_start, data_end)?;
                f(loc.view(self.buf), loc.flags & FLAG_PROTECTED != 0);
            }
        }
        Ok(())
    }
}

/// What a lookup found.
#[derive(Clone, Copy, Debug)]
pub(super) enum Probe {
    /// The key's entry, in slot `slot`.
    Hit { slot: u32, loc: EntryLoc },
    /// The key is absent; `vacant` is the slot a store should use (`None`: table full).
    Miss { vacant: Option<u32> },
}

/// A store request: everything written into the entry.
#[derive(Clone, Copy, Debug)]
pub struct NewEntry<'k> {
    pub slot_hash: u32,
    pub key: &'k [u8],
    pub value: &'k [u8],
    pub expire_on: u32,
    /// Flag bits; `FLAG_HAS_MODSEQ` is derived from `modseq`, not taken from here.
    pub flags: u32,
    pub modseq: Option<u64>,
}

impl NewEntry<'_> {
    /// Bytes the entry will occupy in the page; `None` if it cannot be represented.
    pub fn entry_size(&self) -> Option<usize> {
        let val_len = self
            .value
            .len()
            .checked_add(self.modseq.map_or(0, |_| MODSEQ_SIZE))?;
        if u32::try_from(self.key.len()).is_err() || u32::try_from(val_len).is_err() {
            return None;
        }
        entry_size(self.key.len(), val_len)
    }

    /// The flags to store: `FLAG_HAS_MODSEQ` as `modseq` says, never the policy's bit, which
    /// only the page sets, and `FLAG_OVERFLOW` only on a value of a reference's size (the
    /// page never writes an entry its own check would call damaged).
    fn stored_flags(&self) -> u32 {
        let mut flags = self.flags & !POLICY_FLAGS;
        if self.value.len() != OVERFLOW_REF_SIZE {
            flags &= !FLAG_OVERFLOW;
        }
        match self.modseq {
            Some(_) => flags | FLAG_HAS_MODSEQ,
            None => flags & !FLAG_HAS_MODSEQ,
        }
    }
}

/// Result of [`PageMut::store`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOutcome {
    /// The entry was written.
    Stored,
    /// The conditional-store rules refused it (a newer modseq or a live tombstone holds the
    /// key); the page is unchanged.
    Refused,
    /// A tombstone store found something at least as new already there; nothing changed,
    /// and nothing needed to.
    AlreadyNewer,
    /// The entry cannot fit even an empty page; the page is unchanged.
    TooLarge,
}

impl<'a> PageMut<'a> {
    #[allow(dead_code)] // used by tests and fuzz targets
    /// Wraps a page whose header passes [`PageHeader::check`].
    pub fn open(buf: &'a mut [u8], min_slots: u32) -> Result<PageMut<'a>, Corrupt> {
        PageHeader::read(buf).check(buf.len(), min_slots)?;
        Ok(PageMut {
            buf,
            min_slots,
            policy: Policy::Perl,
        })
    }

    /// Wraps any bytes without checking them first: every operation checks what it reads.
    #[cfg_attr(not(any(test, fuzzing, feature = "internals")), allow(dead_code))] // tests, fuzz
    pub fn wrap(buf: &'a mut [u8]) -> PageMut<'a> {
        PageMut {
            buf,
            min_slots: 1,
            policy: Policy::Perl,
        }
    }

    /// As [`wrap`](Self::wrap), for a page whose header must also have at least `min_slots`
    /// slots to count as sound (see [`PageView::with_min_slots`]).
    pub fn with_min_slots(buf: &'a mut [u8], min_slots: u32) -> PageMut<'a> {
        PageMut {
            buf,
            min_slots,
            policy: Policy::Perl,
        }
    }

    /// Turns the native layout's eviction policy on or off (off by default: Cache::FastMmap's
    /// rule). With it, a read hit moves an entry to the page's protected part, a store of a
    /// key remembered as recently evicted is protected at once, and eviction drops
    /// probationary entries first (see the policy constants in `format`). Pages Perl shares
    /// must keep it off: Perl knows neither the flag nor the ghost record.
    pub fn with_policy(mut self, on: bool) -> PageMut<'a> {
        self.policy = match on {
            true => Policy::Native,
            false => Policy::Perl,
        };
        self
    }

    /// Bytes at the end of the page that stores leave to the policy (the ghost record).
    pub(super) fn ghost_reserve(&self) -> usize {
        self.policy.reserve(self.buf.len())
    }

    /// Writes an empty page with `start_slots` slots over whatever `buf` held, with untagged
    /// slot words (Cache::FastMmap's page).
    #[cfg_attr(not(any(test, fuzzing, feature = "internals")), allow(dead_code))] // tests, fuzz
    pub fn init(buf: &'a mut [u8], start_slots: u32) -> PageMut<'a> {
        Self::init_as(buf, start_slots, false)
    }

    /// As [`init`](Self::init), a native page whose slot words carry tags when `tagged`
    /// (`PAGE_MAGIC_TAGGED`).
    pub fn init_as(buf: &'a mut [u8], start_slots: u32, tagged: bool) -> PageMut<'a> {
        let hdr = PageHeader::empty(buf.len(), start_slots, tagged);
        let end = hdr.slots_end().min(buf.len());
        buf[..end].fill(0);
        // Cannot fail: a page is always larger than its header.
        let _ = hdr.write(buf);
        PageMut {
            buf,
            min_slots: start_slots,
            policy: Policy::Perl,
        }
    }

    pub fn header(&self) -> PageHeader {
        PageHeader::read(self.buf)
    }

    /// See [`PageView::checked_header`].
    pub fn checked_header(&self) -> Result<PageHeader, Corrupt> {
        self.view().checked_header()
    }

    fn set_word(&mut self, off: usize, v: u32) -> Result<(), Corrupt> {
        put_u32(self.buf, off, v)
    }

    /// A read-only view of the page.
    pub fn view(&self) -> PageView<'_> {
        PageView {
            buf: self.buf,
            min_slots: self.min_slots,
        }
    }

    pub(super) fn slot(&self, slot: u32) -> Result<u32, Corrupt> {
        self.view().slot(slot)
    }

    pub(super) fn data_bounds(&self, hdr: &PageHeader) -> (usize, usize) {
        self.view().data_bounds(hdr)
    }

    #[inline(always)]
    pub(super) fn probe(
        &self,
        hdr: &PageHeader,
        slot_hash: u32,
        key: &[u8],
    ) -> Result<Probe, Corrupt> {
        self.view().probe(hdr, slot_hash, key)
    }

    /// Looks `key` up without touching access times or statistics (see [`PageView::peek`]).
    pub fn peek(
        &self,
        slot_hash: u32,
        key: &[u8],
        now: u32,
    ) -> Result<Option<EntryRef<'_>>, Corrupt> {
        self.view().peek(slot_hash, key, now)
    }

    pub(super) fn slot_off(slot: u32) -> usize {
        SLOTS_OFFSET + slot as usize * SLOT_SIZE
    }

    /// Looks `key` up as a read: counts it in the page statistics (when `stats`) and, on a
    /// hit, records `now` as the entry's last access.
    pub fn get(
        &mut self,
        slot_hash: u32,
        key: &[u8],
        now: u32,
        stats: bool,
    ) -> Result<Option<EntryRef<'_>>, Corrupt> {
        let hdr = self.checked_header()?;
        if stats {
            self.set_word(N_READS_OFFSET, hdr.n_reads.wrapping_add(1))?;
        }
        let loc = match self.probe(&hdr, slot_hash, key)? {
            Probe::Hit { loc, .. } if !is_expired(loc.expire_on, now) && !loc.is_tombstone() => loc,
            _ => return Ok(None),
        };
        // Written only when it changes: a hot entry's line stays clean within one second.
        if loc.last_access != now {
            self.set_word(loc.off + LAST_ACCESS_OFFSET, now)?;
        }
        // The policy's hook: in the native layout the first hit moves the entry to the
        // protected part, and later ones (that took the lock) count towards its second chances.
        let flags = self.policy.on_hit(loc.flags, loc.last_access, now);
        if flags != loc.flags {
            self.set_word(loc.off + FLAGS_OFFSET, flags)?;
        }
        if stats {
            self.set_word(N_READ_HITS_OFFSET, hdr.n_read_hits.wrapping_add(1))?;
        }
        Ok(Some(
            EntryLoc {
                last_access: now,
                ..loc
            }
            .view(self.buf),
        ))
    }

    /// Applies the conditional-store rules against the entry currently holding the key.
    fn conditional(&self, existing: &EntryLoc, req: &NewEntry, now: u32) -> Option<StoreOutcome> {
        if is_expired(existing.expire_on, now) {
            return None;
        }
        let old = existing.modseq(self.buf)?;
        let tombstoning = req.flags & FLAG_TOMBSTONE != 0;
        if existing.is_tombstone() {
            if tombstoning {
                // Never lower a tombstone's modseq.
                return (req.modseq.unwrap_or(0) <= old).then_some(StoreOutcome::AlreadyNewer);
            }
            return match req.modseq {
                Some(m) if m >= old => None,
                _ => Some(StoreOutcome::Refused),
            };
        }
        if tombstoning {
            // A stale invalidation: the live value is already newer.
            return (req.modseq.unwrap_or(0) <= old).then_some(StoreOutcome::AlreadyNewer);
        }
        match req.modseq {
            Some(m) if m < old => Some(StoreOutcome::Refused),
            _ => None,
        }
    }

    /// Stores an entry, evicting as Cache::FastMmap does when the page is short of slots or
    /// space. An entry that cannot fit an empty page is [`StoreOutcome::TooLarge`]; any other
    /// store succeeds unless the conditional-store rules refuse it, and a refused store
    /// changes nothing.
    #[cfg_attr(not(any(test, fuzzing, feature = "internals")), allow(dead_code))] // tests, bench, fuzz
    pub fn store(
        &mut self,
        req: &NewEntry,
        now: u32,
        start_slots: u32,
    ) -> Result<StoreOutcome, Corrupt> {
        self.store_with(req, now, start_slots, false)
    }

    /// As [`store`](Self::store); with `in_place`, a live or dead entry of the same key that
    /// occupies exactly as many bytes as the new one is rewritten where it is, instead of the
    /// new entry being appended (and the page compacted sooner). Only for pages whose changes
    /// run under a busy marker (the native layout): an entry rewritten in place is torn if its
    /// writer dies part way, and only the marker tells the next locker to reset the page.
    pub fn store_with(
        &mut self,
        req: &NewEntry,
        now: u32,
        start_slots: u32,
        in_place: bool,
    ) -> Result<StoreOutcome, Corrupt> {
        // Without `Dirty`, nothing is refused.
        self.store_checked(req, now, start_slots, in_place, None)
            .map(|outcome| outcome.unwrap_or(StoreOutcome::Stored))
    }

    /// As [`store_with`](Self::store_with), doing with the dirty (write-back) entries the store
    /// would drop — evicted, or its own key's entry replaced when `dirty.replacing_drops` —
    /// what `dirty` says. `None`: `dirty` refused to drop the dirty entries it copied out,
    /// or it asked for a dry run ([`Dirty::dry`]); nothing changed.
    pub fn store_dirty(
        &mut self,
        req: &NewEntry,
        now: u32,
        start_slots: u32,
        in_place: bool,
        dirty: &mut Dirty<'_>,
    ) -> Result<Option<StoreOutcome>, Corrupt> {
        self.store_checked(req, now, start_slots, in_place, Some(dirty))
    }

    fn store_checked(
        &mut self,
        req: &NewEntry,
        now: u32,
        start_slots: u32,
        in_place: bool,
        mut dirty: Option<&mut Dirty<'_>>,
    ) -> Result<Option<StoreOutcome>, Corrupt> {
        if let Some(dirty) = dirty.as_deref_mut() {
            dirty.superseded = None;
            dirty.in_place = false;
        }
        let max = max_entry_size(self.buf.len(), start_slots);
        let Some(size) = req.entry_size().filter(|&size| size <= max) else {
            return Ok(Some(StoreOutcome::TooLarge));
        };
        // `checked_header`, without moving the header through a `Result` on the stack.
        let hdr = self.header();
        hdr.check(self.buf.len(), self.min_slots)?;
        let probe = self.probe(&hdr, req.slot_hash, req.key)?;
        // The policy's bits for the new entry (`Policy::on_store`).
        let extra = self
            .policy
            .on_store(self.buf, &hdr, &probe, req.slot_hash, now);
        if let Probe::Hit { loc, .. } = &probe {
            if let Some(outcome) = self.conditional(loc, req, now) {
                return Ok(Some(outcome));
            }
            if let Some(dirty) = dirty.as_deref_mut() {
                if dirty.replacing_drops {
                    if !dirty.take(self.buf, std::slice::from_ref(loc)) {
                        return Ok(None);
                    }
                } else {
                    // Superseded by the new entry: never a victim of the eviction below.
                    dirty.superseded = Some(loc.off);
                }
            }
            if in_place && loc.size() == size {
                if let Some(dirty) = dirty.as_deref_mut().filter(|d| d.dry) {
                    dirty.in_place = true;
                    return Ok(None);
                }
                // The entry keeps its offset, so within one second eviction still ranks it by
                // when it was appended (see the tie-break in `evict`). Its key bytes, just
                // compared equal, stay as they are.
                self.write_entry(loc.off, req, size, now, false, extra)?;
                return Ok(Some(StoreOutcome::Stored));
            }
        }
        let appended = if has_room(&hdr, size.saturating_add(self.ghost_reserve())) {
            if Dirty::stops(&dirty) {
                return Ok(None);
            }
            self.policy
                .on_admit(self.buf, &hdr, &probe, req.slot_hash, extra)?;
            // Eviction would change nothing: the header and the probe still hold.
            self.append_probed(req, size, now, &hdr, probe, extra)?
        } else {
            let evicted = self.evict_checked(
                hdr,
                super::Evict::MakeRoom(size),
                now,
                start_slots,
                None,
                dirty,
            )?;
            let Some((_, hdr)) = evicted else {
                return Ok(None);
            };
            let probe = self.probe(&hdr, req.slot_hash, req.key)?;
            self.policy
                .on_admit(self.buf, &hdr, &probe, req.slot_hash, extra)?;
            self.append_probed(req, size, now, &hdr, probe, extra)?
        };
        if appended {
            return Ok(Some(StoreOutcome::Stored));
        }
        // Eviction guarantees room and a free slot; a page that still has neither is damaged
        // in a way the header check cannot see. Start it afresh rather than fail the store.
        let hdr = self.header();
        let slots = hdr.num_slots.max(start_slots);
        let slots = if max_entry_size(self.buf.len(), slots) >= size {
            slots
        } else {
            start_slots
        };
        // The page keeps its kind, as a rebuild does (`hdr` passed the header check).
        PageMut::init_as(self.buf, slots, hdr.tagged());
        if self.append(req, size, now, extra)? {
            Ok(Some(StoreOutcome::Stored))
        } else {
            Err(Corrupt("no room in an empty page"))
        }
    }

    /// Appends the entry at `free_data` and points the key's slot at it, replacing any old
    /// entry. Returns false (changing nothing) when there is no slot or no room.
    fn append(
        &mut self,
        req: &NewEntry,
        size: usize,
        now: u32,
        extra: u32,
    ) -> Result<bool, Corrupt> {
        let hdr = self.checked_header()?;
        let probe = self.probe(&hdr, req.slot_hash, req.key)?;
        self.append_probed(req, size, now, &hdr, probe, extra)
    }

    /// [`append`](Self::append) with the page's current header and the key's probe result.
    fn append_probed(
        &mut self,
        req: &NewEntry,
        size: usize,
        now: u32,
        hdr: &PageHeader,
        probe: Probe,
        extra: u32,
    ) -> Result<bool, Corrupt> {
        if (hdr.free_bytes as usize) < size {
            return Ok(false);
        }
        let (slot, replaced) = match probe {
            Probe::Hit { slot, .. } => (slot, true),
            Probe::Miss { vacant: Some(slot) } => (slot, false),
            Probe::Miss { vacant: None } => return Ok(false),
        };
        let reused_deleted = !replaced && self.slot(slot)? == SLOT_DELETED;
        let off = hdr.free_data as usize;

        // 1. Reserve the space.
        self.set_word(FREE_DATA_OFFSET, (off + size) as u32)?;
        self.set_word(FREE_BYTES_OFFSET, hdr.free_bytes - size as u32)?;
        super::evict::publish_order(self.buf);
        // 2. Write the entry.
        self.write_entry(off, req, size, now, true, extra)?;
        super::evict::publish_order(self.buf);
        // 3. Commit: make it reachable (with its tag, in a tagged page).
        let word = hdr
            .slot_words(self.buf.len())
            .word(off as u32, req.slot_hash);
        self.set_word(Self::slot_off(slot), word)?;
        // 4. Counters.
        if !replaced {
            let hdr = self.header();
            self.set_word(FREE_SLOTS_OFFSET, hdr.free_slots.saturating_sub(1))?;
            if reused_deleted {
                self.set_word(OLD_SLOTS_OFFSET, hdr.old_slots.saturating_sub(1))?;
            }
        }
        Ok(true)
    }

    /// Writes the entry for `req` (`size` bytes, padding included) at `off`; without
    /// `with_key`, over an entry of the same key and size, whose key bytes are left as they are.
    /// `extra` holds the policy's flag bits (`POLICY_FLAGS`).
    fn write_entry(
        &mut self,
        off: usize,
        req: &NewEntry,
        size: usize,
        now: u32,
        with_key: bool,
        extra: u32,
    ) -> Result<(), Corrupt> {
        let val_len = size_without_padding(req) - ENTRY_HEADER_SIZE - req.key.len();
        let entry = self
            .buf
            .get_mut(off..off + size)
            .ok_or(Corrupt("entry outside the page"))?;
        // The padding (under 4 bytes) is zeroed with the whole last word, which everything
        // else is then written over: one store rather than a call. (`size` is a multiple of 4
        // of at least the entry header.)
        if let Some(last) = entry
            .len()
            .checked_sub(4)
            .and_then(|at| entry.get_mut(at..))
        {
            last.copy_from_slice(&[0; 4]);
        }
        entry[LAST_ACCESS_OFFSET..][..4].copy_from_slice(&now.to_ne_bytes());
        entry[EXPIRE_ON_OFFSET..][..4].copy_from_slice(&req.expire_on.to_ne_bytes());
        entry[SLOT_HASH_OFFSET..][..4].copy_from_slice(&req.slot_hash.to_ne_bytes());
        let flags = req.stored_flags() | extra;
        entry[FLAGS_OFFSET..][..4].copy_from_slice(&flags.to_ne_bytes());
        entry[KEY_LEN_OFFSET..][..4].copy_from_slice(&(req.key.len() as u32).to_ne_bytes());
        entry[VAL_LEN_OFFSET..][..4].copy_from_slice(&(val_len as u32).to_ne_bytes());
        let mut at = ENTRY_HEADER_SIZE;
        // The zeroed last word may have held the tail of the key (a short value).
        if with_key || size.saturating_sub(4) < at + req.key.len() {
            entry[at..at + req.key.len()].copy_from_slice(req.key);
        }
        at += req.key.len();
        if let Some(m) = req.modseq {
            entry[at..at + MODSEQ_SIZE].copy_from_slice(&m.to_ne_bytes());
            at += MODSEQ_SIZE;
        }
        entry[at..at + req.value.len()].copy_from_slice(req.value);
        Ok(())
    }

    /// Removes `key`'s entry (live, expired or tombstone). Returns the removed entry's flags
    /// and whether it held a live value at `now`.
    pub fn remove(
        &mut self,
        slot_hash: u32,
        key: &[u8],
        now: u32,
    ) -> Result<Option<Removed>, Corrupt> {
        let hdr = self.checked_header()?;
        let Probe::Hit { slot, loc } = self.probe(&hdr, slot_hash, key)? else {
            return Ok(None);
        };
        self.set_word(Self::slot_off(slot), SLOT_DELETED)?;
        let hdr = self.header();
        self.set_word(
            FREE_SLOTS_OFFSET,
            hdr.free_slots.saturating_add(1).min(hdr.num_slots),
        )?;
        self.set_word(
            OLD_SLOTS_OFFSET,
            hdr.old_slots.saturating_add(1).min(hdr.num_slots),
        )?;
        Ok(Some(Removed {
            flags: loc.flags & !POLICY_FLAGS,
            was_live: !is_expired(loc.expire_on, now) && !loc.is_tombstone(),
        }))
    }

    /// Zeroes the page's read statistics.
    pub fn reset_stats(&mut self) -> Result<(), Corrupt> {
        self.set_word(N_READS_OFFSET, 0)?;
        self.set_word(N_READ_HITS_OFFSET, 0)
    }
}

fn size_without_padding(req: &NewEntry) -> usize {
    ENTRY_HEADER_SIZE + req.key.len() + req.value.len() + req.modseq.map_or(0, |_| MODSEQ_SIZE)
}

/// What [`PageMut::remove`] removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Removed {
    pub flags: u32,
    /// The entry held a value that had not expired (and was not a tombstone).
    pub was_live: bool,
}
