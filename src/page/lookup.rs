//! Finding a key through any [`PageBytes`]: the probe chain shared by every lookup, and the
//! copying lookup of an optimistic read.

use super::Corrupt;
use super::bytes::PageBytes;
use super::consts::*;
use super::entry::EntryLoc;
use super::header::PageHeader;
use super::view::Probe;

/// Follows `key`'s probe chain from `slot_hash % num_slots` in a page whose header `hdr` has
/// been checked. Always inlined, as [`EntryLoc::read`] is: a `Result<Probe, _>` returned
/// through memory is read back wider than it was written, stalling store-to-load forwarding.
#[inline(always)]
pub(super) fn probe_in<B: PageBytes + ?Sized>(
    b: &B,
    hdr: &PageHeader,
    slot_hash: u32,
    key: &[u8],
) -> Result<Probe, Corrupt> {
    let n = hdr.num_slots;
    if n == 0 {
        return Err(Corrupt("page has no slots"));
    }
    let (data_start, data_end) = (hdr.slots_end(), hdr.free_data as usize);
    let words = hdr.slot_words(b.page_len());
    let mut slot = slot_hash % n;
    let mut first_deleted = None;
    for _ in 0..n {
        let word = b
            .u32_at(SLOTS_OFFSET + slot as usize * SLOT_SIZE)
            .ok_or(Corrupt("offset outside the page"))?;
        match word {
            SLOT_EMPTY => {
                return Ok(Probe::Miss {
                    vacant: first_deleted.or(Some(slot)),
                });
            }
            SLOT_DELETED => {
                first_deleted.get_or_insert(slot);
            }
            // Another key's entry, told by its tag without reading it.
            word if words.other_hash(word, slot_hash) => {}
            word => {
                let loc = EntryLoc::read(b, words.offset(word), data_start, data_end)?;
                if loc.slot_hash == slot_hash
                    && loc.key_len == key.len()
                    && b.eq_at(loc.key_range().start, key) == Some(true)
                {
                    return Ok(Probe::Hit { slot, loc });
                }
            }
        }
        slot += 1;
        if slot == n {
            slot = 0;
        }
    }
    Ok(Probe::Miss {
        vacant: first_deleted,
    })
}

/// What a copying lookup took out of a page: a live entry's value (without any modseq prefix)
/// and its words.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub value: Vec<u8>,
    pub modseq: Option<u64>,
    pub last_access: u32,
    pub expire_on: u32,
    pub slot_hash: u32,
    /// The entry's flags, without the eviction policy's bit.
    pub flags: u32,
    /// The entry is in the page's protected part (`FLAG_PROTECTED`): a locked read would not
    /// change its flags.
    pub protected: bool,
}

/// Looks `key` up through `b` without writing anything, and copies out its live entry into
/// `out` (reusing its allocation): `Ok(false)` for a miss (absent, expired or a tombstone).
/// The page header must pass the check with `min_slots`. For an optimistic read, whatever
/// this returns is only good if the page did not change meanwhile, which the caller checks.
pub fn find_copy<B: PageBytes + ?Sized>(
    b: &B,
    min_slots: u32,
    slot_hash: u32,
    key: &[u8],
    now: u32,
    out: &mut Copied,
) -> Result<bool, Corrupt> {
    let hdr = PageHeader::load(b);
    hdr.check(b.page_len(), min_slots)?;
    let loc = match probe_in(b, &hdr, slot_hash, key)? {
        Probe::Hit { loc, .. } if !is_expired(loc.expire_on, now) && !loc.is_tombstone() => loc,
        _ => return Ok(false),
    };
    let stored = loc.stored_value_range();
    let mut value_start = stored.start;
    out.modseq = None;
    if loc.flags & FLAG_HAS_MODSEQ != 0 {
        out.value.clear();
        b.copy_to(stored.start, MODSEQ_SIZE, &mut out.value)
            .ok_or(Corrupt("entry outside the page"))?;
        let word: [u8; MODSEQ_SIZE] = out.value[..]
            .try_into()
            .map_err(|_| Corrupt("modseq outside the page"))?;
        out.modseq = Some(u64::from_ne_bytes(word));
        value_start += MODSEQ_SIZE;
    }
    out.value.clear();
    b.copy_to(value_start, stored.end - value_start, &mut out.value)
        .ok_or(Corrupt("entry outside the page"))?;
    out.last_access = loc.last_access;
    out.expire_on = loc.expire_on;
    out.slot_hash = loc.slot_hash;
    out.flags = loc.flags & !POLICY_FLAGS;
    out.protected = loc.flags & FLAG_PROTECTED != 0;
    Ok(true)
}
