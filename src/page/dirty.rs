//! Write-back support: finding, copying out and cleaning the entries flagged dirty
//! (`FLAG_DIRTY`, Cache::FastMmap's `FC_ISDIRTY`: stored by a write-back `set`, not yet written
//! to the backing store).
//!
//! The page layer never writes anything back itself: an operation that would drop dirty
//! entries copies them into a `Vec` its caller owns, and either drops them (the caller writes
//! the copies back after unlocking) or, when asked to refuse, leaves the page unchanged so that
//! the caller can write them back first, mark them clean and try again.

use super::Corrupt;
use super::consts::*;
use super::entry::EntryLoc;
use super::header::{PageHeader, get_u32};
use super::view::{PageMut, PageView, Probe};

/// A dirty entry copied out of a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyCopy {
    pub slot_hash: u32,
    pub key: Vec<u8>,
    /// The stored value bytes (without any modseq prefix; compressed if its flags say so). As
    /// the page layer copies a large value out, its overflow reference (`FLAG_OVERFLOW` in
    /// `flags`); the cache layer then reads the value's bytes into it under the page lock,
    /// before the blocks can be freed, and keeps the reference in `reference`.
    pub value: Vec<u8>,
    pub expire_on: u32,
    pub flags: u32,
    /// For a large value whose bytes `value` holds: the overflow reference the page held, which
    /// [`PageMut::mark_clean`] compares instead of the bytes.
    pub reference: Option<Vec<u8>>,
}

impl DirtyCopy {
    fn of(buf: &[u8], loc: &EntryLoc) -> DirtyCopy {
        let e = loc.view(buf);
        DirtyCopy {
            slot_hash: e.slot_hash,
            key: e.key.to_vec(),
            value: e.value.to_vec(),
            expire_on: e.expire_on,
            flags: e.flags,
            reference: None,
        }
    }
}

/// What a store or an eviction does with the dirty entries it would drop. Without one, they
/// are dropped like any other entry.
#[derive(Debug)]
pub struct Dirty<'o> {
    /// Copies of the dirty entries dropped (or, with `refuse`, that would have been).
    pub out: &'o mut Vec<DirtyCopy>,
    /// Drop nothing dirty: copy the dirty entries out and leave the page unchanged.
    pub refuse: bool,
    /// A store that replaces its own key's dirty entry drops it too (a clean store that does
    /// not supersede it, such as a read-through of a key whose dirty entry expired). Otherwise
    /// the new entry supersedes the old one, which is not written back, with one exception:
    /// when asked to `refuse`, an eviction that would drop the old entry before the new one
    /// is in the page copies it out and refuses like for any other dirty entry. Between that
    /// rebuild and the new entry's commit the key has neither entry, and a writer killed
    /// there would lose the old value, which a caller has been told is stored; written back
    /// first, it is in the backing store.
    pub replacing_drops: bool,
    /// Write nothing at all: refuse as `refuse` does, and stop before the first write of a store
    /// that could go ahead. A caller whose changes run under a busy marker (the native layout)
    /// asks this first, without the marker, so that a process killed while it only looks
    /// leaves no marker that would reset the page and lose its dirty entries.
    pub dry: bool,
    /// Set by a dry run that stopped before overwriting the key's entry in place: the one
    /// write of a store that a process killed part way leaves torn, undetectably without the
    /// busy marker.
    pub(super) in_place: bool,
    /// The page offset of the entry the current store supersedes (set by the store).
    pub(super) superseded: Option<usize>,
}

impl<'o> Dirty<'o> {
    /// Copy dirty entries out into `out`, and drop them.
    pub fn collect(out: &'o mut Vec<DirtyCopy>) -> Dirty<'o> {
        Dirty {
            out,
            refuse: false,
            dry: false,
            in_place: false,
            replacing_drops: false,
            superseded: None,
        }
    }

    /// Copy dirty entries out into `out`, and drop nothing if there are any.
    pub fn refuse(out: &'o mut Vec<DirtyCopy>) -> Dirty<'o> {
        Dirty {
            refuse: true,
            ..Dirty::collect(out)
        }
    }

    /// Copy dirty entries out into `out`, and write nothing (see [`dry`](Self::dry)). The store
    /// or eviction returns `None` either way; it would have gone ahead if `out` is empty.
    pub fn dry(out: &'o mut Vec<DirtyCopy>) -> Dirty<'o> {
        Dirty {
            dry: true,
            ..Dirty::refuse(out)
        }
    }

    /// After a dry run that found nothing in the way: whether the store would overwrite the
    /// key's entry in place (which must run under the busy marker).
    pub fn would_write_in_place(&self) -> bool {
        self.in_place
    }

    /// Copies the dirty entries of `gone` out. Returns whether they may be dropped.
    pub(super) fn take(&mut self, buf: &[u8], gone: &[EntryLoc]) -> bool {
        let before = self.out.len();
        for loc in gone {
            if loc.flags & FLAG_DIRTY != 0
                && !loc.is_tombstone()
                && (self.refuse || Some(loc.off) != self.superseded)
            {
                self.out.push(DirtyCopy::of(buf, loc));
            }
        }
        !(self.refuse && self.out.len() > before)
    }

    /// Whether a store must stop before its first write (a dry run).
    pub(super) fn stops(dirty: &Option<&mut Dirty<'_>>) -> bool {
        dirty.as_ref().is_some_and(|d| d.dry)
    }
}

impl PageView<'_> {
    /// Copies of every dirty entry of the page, expired ones included.
    pub fn dirty_entries(&self) -> Result<Vec<DirtyCopy>, Corrupt> {
        let hdr = self.checked_header()?;
        let (data_start, data_end) = self.data_bounds(&hdr);
        let words = hdr.slot_words(self.buf.len());
        let mut out = Vec::new();
        for slot in 0..hdr.num_slots {
            if let Some(off) = words.entry(self.slot(slot)?) {
                let loc = EntryLoc::read(self.buf, off, data_start, data_end)?;
                if loc.flags & FLAG_DIRTY != 0 && !loc.is_tombstone() {
                    out.push(DirtyCopy::of(self.buf, &loc));
                }
            }
        }
        Ok(out)
    }

    /// `key`'s entry in whatever state (expired, tombstone), without touching anything.
    pub fn find(&self, slot_hash: u32, key: &[u8]) -> Result<Option<super::EntryRef<'_>>, Corrupt> {
        let hdr = self.checked_header()?;
        Ok(match self.probe(&hdr, slot_hash, key)? {
            Probe::Hit { loc, .. } => Some(loc.view(self.buf)),
            Probe::Miss { .. } => None,
        })
    }
}

impl PageMut<'_> {
    /// Clears the dirty flag of `copy`'s key if its entry is still dirty with the same value
    /// bytes (it has been written back) — for a large value, the same overflow reference
    /// `reference` (new bytes always get a new reference: its blocks and checksum). The
    /// reference is `copy.reference`, or one the caller found for a copy made from a request.
    /// Returns whether it did. A single flag word changes: no structural change.
    pub fn mark_clean(
        &mut self,
        copy: &DirtyCopy,
        reference: Option<&[u8]>,
    ) -> Result<bool, Corrupt> {
        let hdr = self.checked_header()?;
        let Probe::Hit { loc, .. } = self.probe(&hdr, copy.slot_hash, &copy.key)? else {
            return Ok(false);
        };
        let stored = reference.unwrap_or(&copy.value);
        let same = loc.flags & FLAG_DIRTY != 0
            && !loc.is_tombstone()
            && (loc.flags & FLAG_OVERFLOW != 0) == reference.is_some()
            && loc.view(self.buf).value == stored;
        if same {
            super::header::put_u32(self.buf, loc.off + FLAGS_OFFSET, loc.flags & !FLAG_DIRTY)?;
        }
        Ok(same)
    }
}

/// Counts the dirty entries that can still be found in a damaged page (one about to be reset):
/// every slot word that points at an entry header inside the page whose flags say dirty
/// (read without any tag bits, whatever the damaged magic says), each offset counted once;
/// or, for a page whose rebuild was killed, the count the rebuild left in its magic word
/// ([`REBUILD_TAG`]). Nothing is trusted; the count is a best effort.
pub fn count_dirty(buf: &[u8]) -> u32 {
    let hdr = PageHeader::read(buf);
    if hdr.magic & !REBUILD_COUNT_MASK == REBUILD_TAG {
        // A rebuild was killed part way: it said how many dirty entries it was moving, which
        // the half-copied page may no longer show.
        // (No more than entries the page could hold: the word may be garbage.)
        let most = (buf.len() / ENTRY_HEADER_SIZE) as u32;
        return (hdr.magic & REBUILD_COUNT_MASK).min(most);
    }
    let Some(table_end) = slots_end(hdr.num_slots).filter(|&end| end <= buf.len()) else {
        return 0;
    };
    let mut seen = Vec::new();
    for slot in 0..hdr.num_slots as usize {
        let Some(word) = get_u32(buf, SLOTS_OFFSET + slot * SLOT_SIZE) else {
            break;
        };
        // Not through `SlotWords`: the magic that says whether the words carry tags may be the
        // damage, so any tag bits are stripped (an untagged offset never has them).
        let word_off = word & offset_mask(buf.len());
        let off = word_off as usize;
        if word <= SLOT_DELETED || off < table_end || !off.is_multiple_of(ENTRY_ALIGN) {
            continue;
        }
        if let Ok(loc) = EntryLoc::read(buf, word_off, table_end, buf.len())
            && loc.flags & FLAG_DIRTY != 0
            && !loc.is_tombstone()
        {
            seen.push(off);
        }
    }
    seen.sort_unstable();
    seen.dedup();
    seen.len() as u32
}
