//! The page header: reading, writing and the O(1) consistency check run on every lock.

use super::Corrupt;
use super::consts::*;

/// The eight header words of a page, as read from its bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageHeader {
    /// `PAGE_MAGIC` in a valid page, or `PAGE_MAGIC_TAGGED` in a native page whose slot words
    /// carry tags.
    pub magic: u32,
    /// Size of the slot table.
    pub num_slots: u32,
    /// Slots holding `SLOT_EMPTY` or `SLOT_DELETED`.
    pub free_slots: u32,
    /// Slots holding `SLOT_DELETED`.
    pub old_slots: u32,
    /// Page offset where the next entry is appended.
    pub free_data: u32,
    /// Bytes left after `free_data`.
    pub free_bytes: u32,
    /// Reads of this page (statistics).
    pub n_reads: u32,
    /// Reads of this page that found a live value (statistics).
    pub n_read_hits: u32,
}

/// The one reading of a page's slot words (docs/format.md §3.2): `SLOT_EMPTY`, `SLOT_DELETED`,
/// or an entry's page offset, with, in a tagged page, the bits of the entry's slot hash above
/// those an offset needs (`offset | (slot_hash & tags)`). Every walk, probe, check and rebuild
/// reads and writes slot words through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotWords {
    /// The bits of a word that are tag: none in an untagged page.
    tags: u32,
}

impl SlotWords {
    /// The page offset of the entry `word` points at; `None` for an empty or deleted slot.
    #[inline]
    pub fn entry(self, word: u32) -> Option<u32> {
        (word > SLOT_DELETED).then_some(self.offset(word))
    }

    /// The page offset held by `word`, known to be neither empty nor deleted.
    #[inline]
    pub fn offset(self, word: u32) -> u32 {
        word & !self.tags
    }

    /// Whether `word`, an entry's, is told by its tag to belong to another slot hash than
    /// `slot_hash` (never in an untagged page, whose words have no tag).
    #[inline]
    pub fn other_hash(self, word: u32, slot_hash: u32) -> bool {
        (word ^ slot_hash) & self.tags != 0
    }

    /// The word that points at an entry of slot hash `slot_hash` at page offset `off`.
    #[inline]
    pub fn word(self, off: u32, slot_hash: u32) -> u32 {
        off | (slot_hash & self.tags)
    }
}

/// Reads the native-endian u32 at `off`, or `None` when it lies outside `buf`.
#[inline]
pub(crate) fn get_u32(buf: &[u8], off: usize) -> Option<u32> {
    let end = off.checked_add(4)?;
    let bytes = buf.get(off..end)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

/// Writes `v` at `off`; fails when `off` lies outside `buf`.
#[inline]
pub(crate) fn put_u32(buf: &mut [u8], off: usize, v: u32) -> Result<(), Corrupt> {
    let end = off.checked_add(4).ok_or(Corrupt("offset overflow"))?;
    let dst = buf
        .get_mut(off..end)
        .ok_or(Corrupt("offset outside the page"))?;
    dst.copy_from_slice(&v.to_ne_bytes());
    Ok(())
}

impl PageHeader {
    /// Reads the header words; a buffer shorter than a header reads as all zeros (invalid).
    #[inline]
    pub fn read(buf: &[u8]) -> PageHeader {
        let Some(words) = buf.first_chunk::<PAGE_HEADER_SIZE>() else {
            return PageHeader::default();
        };
        // In bounds of the fixed-size array: no check left at run time.
        let w = |off: usize| {
            u32::from_ne_bytes([words[off], words[off + 1], words[off + 2], words[off + 3]])
        };
        PageHeader {
            magic: w(MAGIC_OFFSET),
            num_slots: w(NUM_SLOTS_OFFSET),
            free_slots: w(FREE_SLOTS_OFFSET),
            old_slots: w(OLD_SLOTS_OFFSET),
            free_data: w(FREE_DATA_OFFSET),
            free_bytes: w(FREE_BYTES_OFFSET),
            n_reads: w(N_READS_OFFSET),
            n_read_hits: w(N_READ_HITS_OFFSET),
        }
    }

    /// Reads the header words through any [`PageBytes`](super::bytes::PageBytes); a page
    /// shorter than a header reads as all zeros (invalid).
    #[inline]
    pub fn load<B: super::bytes::PageBytes + ?Sized>(b: &B) -> PageHeader {
        let Some(w) = b.words::<{ PAGE_HEADER_SIZE / 4 }>(MAGIC_OFFSET) else {
            return PageHeader::default();
        };
        PageHeader {
            magic: w[MAGIC_OFFSET / 4],
            num_slots: w[NUM_SLOTS_OFFSET / 4],
            free_slots: w[FREE_SLOTS_OFFSET / 4],
            old_slots: w[OLD_SLOTS_OFFSET / 4],
            free_data: w[FREE_DATA_OFFSET / 4],
            free_bytes: w[FREE_BYTES_OFFSET / 4],
            n_reads: w[N_READS_OFFSET / 4],
            n_read_hits: w[N_READ_HITS_OFFSET / 4],
        }
    }

    /// Writes all eight words.
    pub fn write(&self, buf: &mut [u8]) -> Result<(), Corrupt> {
        put_u32(buf, MAGIC_OFFSET, self.magic)?;
        put_u32(buf, NUM_SLOTS_OFFSET, self.num_slots)?;
        put_u32(buf, FREE_SLOTS_OFFSET, self.free_slots)?;
        put_u32(buf, OLD_SLOTS_OFFSET, self.old_slots)?;
        put_u32(buf, FREE_DATA_OFFSET, self.free_data)?;
        put_u32(buf, FREE_BYTES_OFFSET, self.free_bytes)?;
        put_u32(buf, N_READS_OFFSET, self.n_reads)?;
        put_u32(buf, N_READ_HITS_OFFSET, self.n_read_hits)
    }

    /// The header of an empty page with `num_slots` slots, its slot words tagged or not.
    pub fn empty(page_size: usize, num_slots: u32, tagged: bool) -> PageHeader {
        let free_data = slots_end(num_slots).unwrap_or(usize::MAX).min(page_size);
        PageHeader {
            magic: if tagged {
                PAGE_MAGIC_TAGGED
            } else {
                PAGE_MAGIC
            },
            num_slots,
            free_slots: num_slots,
            old_slots: 0,
            free_data: free_data as u32,
            free_bytes: (page_size - free_data) as u32,
            n_reads: 0,
            n_read_hits: 0,
        }
    }

    /// Whether the page's slot words carry tags (`PAGE_MAGIC_TAGGED`).
    #[inline]
    pub fn tagged(&self) -> bool {
        self.magic == PAGE_MAGIC_TAGGED
    }

    /// How this page's slot words read (see [`SlotWords`]).
    #[inline]
    pub fn slot_words(&self, page_size: usize) -> SlotWords {
        SlotWords {
            tags: if self.tagged() {
                !offset_mask(page_size)
            } else {
                0
            },
        }
    }

    /// Offset of the first byte after the slot table (valid once [`check`](Self::check) passed).
    pub fn slots_end(&self) -> usize {
        slots_end(self.num_slots).unwrap_or(usize::MAX)
    }

    /// Bytes of the data area in use (entries, and dead entries until the next rebuild):
    /// `free_data` less the end of the slot table; 0 if the words do not make sense.
    pub fn used_bytes(&self) -> u32 {
        // In usize: the end of a slot table may lie past u32 (and `slots_end` saturates).
        let used = (self.free_data as usize).saturating_sub(self.slots_end());
        u32::try_from(used).unwrap_or(0)
    }

    /// The O(1) check run every time a page is locked: the header words agree with each
    /// other and with the page size. `min_slots` is the configured start slot count.
    pub fn check(&self, page_size: usize, min_slots: u32) -> Result<(), Corrupt> {
        if self.magic != PAGE_MAGIC && self.magic != PAGE_MAGIC_TAGGED {
            return Err(Corrupt("bad page magic"));
        }
        if self.num_slots < min_slots {
            return Err(Corrupt("fewer slots than the configured start_slots"));
        }
        let table_end = slots_end(self.num_slots).ok_or(Corrupt("slot count overflows"))?;
        if table_end > page_size {
            return Err(Corrupt("slot table larger than the page"));
        }
        if self.free_slots > self.num_slots {
            return Err(Corrupt("more free slots than slots"));
        }
        if self.old_slots > self.free_slots {
            return Err(Corrupt("more deleted slots than free slots"));
        }
        let free_data = self.free_data as usize;
        if free_data < table_end || free_data > page_size {
            return Err(Corrupt("free_data outside the data area"));
        }
        if !free_data.is_multiple_of(ENTRY_ALIGN) {
            return Err(Corrupt("free_data misaligned"));
        }
        // Checked: with a 32-bit usize the sum of two words may overflow (and wrap to a match).
        if free_data.checked_add(self.free_bytes as usize) != Some(page_size) {
            return Err(Corrupt("free_data + free_bytes differs from the page size"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn header_round_trips(words in proptest::array::uniform8(any::<u32>())) {
            let h = PageHeader {
                magic: words[0], num_slots: words[1], free_slots: words[2], old_slots: words[3],
                free_data: words[4], free_bytes: words[5], n_reads: words[6], n_read_hits: words[7],
            };
            let mut buf = vec![0u8; PAGE_HEADER_SIZE];
            h.write(&mut buf).unwrap();
            prop_assert_eq!(PageHeader::read(&buf), h);
        }

        #[test]
        fn check_never_panics(words in proptest::array::uniform8(any::<u32>()), ps in 0usize..70000) {
            let h = PageHeader {
                magic: words[0], num_slots: words[1], free_slots: words[2], old_slots: words[3],
                free_data: words[4], free_bytes: words[5], n_reads: words[6], n_read_hits: words[7],
            };
            let _ = h.check(ps, MIN_SLOTS);
        }
    }

    #[test]
    fn used_bytes_of_any_header_is_within_free_data() {
        let empty = PageHeader::empty(4096, MIN_SLOTS, false);
        assert_eq!(empty.used_bytes(), 0);
        let used = PageHeader {
            free_data: empty.free_data + 100,
            free_bytes: empty.free_bytes - 100,
            ..empty
        };
        assert_eq!(used.used_bytes(), 100);
        // Words a process ignoring the locks may write after the lock-time check: a slot table
        // ending past 4 GiB (whose end truncated to u32 would look small), or past usize.
        for num_slots in [0x4000_0000, 0x7fff_ffff, u32::MAX] {
            let h = PageHeader { num_slots, ..used };
            assert_eq!(h.used_bytes(), 0, "num_slots {num_slots:#x}");
        }
    }

    #[test]
    fn empty_header_checks() {
        let h = PageHeader::empty(4096, MIN_SLOTS, false);
        assert_eq!(
            h.free_data as usize,
            PAGE_HEADER_SIZE + 4 * MIN_SLOTS as usize
        );
        h.check(4096, MIN_SLOTS).unwrap();
        assert!(PageHeader::read(&[]).check(4096, MIN_SLOTS).is_err());
    }
}
