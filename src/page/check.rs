//! Full page validation: every slot, every entry, every counter (`verify`, `fastmmap check`).

use super::Corrupt;
use super::consts::*;
use super::entry::EntryLoc;
use super::header::{PageHeader, get_u32};
use super::view::{PageView, Probe};

/// Recomputes a key's slot hash.
pub type SlotHashFn = dyn Fn(&[u8]) -> u32;

/// Validates a whole page held in `buf` without changing it.
///
/// `slot_hash_of`, when given, recomputes each key's slot hash so that entries whose key bytes
/// were damaged are caught too. (Entries stored with the page-key form of `multi_set` hash
/// their full key the same way, so this holds for them as well.)
pub fn check_page(
    buf: &[u8],
    min_slots: u32,
    slot_hash_of: Option<&SlotHashFn>,
) -> Result<(), Corrupt> {
    let hdr = PageHeader::read(buf);
    hdr.check(buf.len(), min_slots)?;
    let page = PageView::new(buf);
    let (data_start, data_end) = page.data_bounds(&hdr);
    let words = hdr.slot_words(buf.len());
    let mut free = 0u32;
    let mut old = 0u32;
    let mut extents = Vec::new();
    for slot in 0..hdr.num_slots {
        let word = get_u32(buf, SLOTS_OFFSET + slot as usize * SLOT_SIZE)
            .ok_or(Corrupt("slot outside the page"))?;
        match word {
            SLOT_EMPTY => free += 1,
            SLOT_DELETED => {
                free += 1;
                old += 1;
            }
            _ => {
                let loc = EntryLoc::read(buf, words.offset(word), data_start, data_end)?;
                if words.other_hash(word, loc.slot_hash) {
                    return Err(Corrupt("a slot's tag differs from its entry's slot hash"));
                }
                if let Some(f) = slot_hash_of {
                    let key = &buf[loc.key_range()];
                    if f(key) != loc.slot_hash {
                        return Err(Corrupt("an entry's slot hash does not match its key"));
                    }
                }
                let key = &buf[loc.key_range()];
                match page.probe(&hdr, loc.slot_hash, key)? {
                    Probe::Hit { slot: found, .. } if found == slot => {}
                    _ => return Err(Corrupt("an entry is unreachable from its slot hash")),
                }
                extents.push((loc.off, loc.off + loc.size()));
            }
        }
    }
    if free != hdr.free_slots {
        return Err(Corrupt("free slot count differs from the slot table"));
    }
    if old != hdr.old_slots {
        return Err(Corrupt("deleted slot count differs from the slot table"));
    }
    extents.sort_unstable();
    if extents.windows(2).any(|w| w[0].1 > w[1].0) {
        return Err(Corrupt("entries overlap"));
    }
    if extents.last().is_some_and(|&(_, end)| end > data_end) {
        return Err(Corrupt("an entry extends beyond free_data"));
    }
    Ok(())
}
