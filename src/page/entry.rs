//! Entries inside a page: locating one from a slot word, and the borrowed view handed out.

use super::Corrupt;
use super::bytes::PageBytes;
use super::consts::*;

/// An entry header read from the page and checked to lie inside the data area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryLoc {
    /// Page offset of the entry.
    pub off: usize,
    pub last_access: u32,
    pub expire_on: u32,
    pub slot_hash: u32,
    pub flags: u32,
    pub key_len: usize,
    pub val_len: usize,
}

impl EntryLoc {
    /// Reads the entry a slot word points at. `data_start..data_end` is the part of the page
    /// entries may occupy (the end of the slot table to `free_data`).
    ///
    /// Always inlined: returned through memory, the `Result` is written field by field and
    /// read back in wider loads, which stalls store-to-load forwarding on every probe.
    #[inline(always)]
    pub fn read<B: PageBytes + ?Sized>(
        buf: &B,
        slot_word: u32,
        data_start: usize,
        data_end: usize,
    ) -> Result<EntryLoc, Corrupt> {
        let off = slot_word as usize;
        if off < data_start || !off.is_multiple_of(ENTRY_ALIGN) {
            return Err(Corrupt("slot points outside the data area"));
        }
        // Checked: a slot word near u32::MAX overflows a 32-bit usize (and would wrap to a
        // small offset inside the page).
        let header_end = off
            .checked_add(ENTRY_HEADER_SIZE)
            .filter(|&end| end <= data_end)
            .ok_or(Corrupt("entry header beyond free_data"))?;
        let w = buf
            .entry_words(off)
            .ok_or(Corrupt("entry outside the page"))?;
        let loc = EntryLoc {
            off,
            last_access: w[LAST_ACCESS_OFFSET / 4],
            expire_on: w[EXPIRE_ON_OFFSET / 4],
            slot_hash: w[SLOT_HASH_OFFSET / 4],
            flags: w[FLAGS_OFFSET / 4],
            key_len: w[KEY_LEN_OFFSET / 4] as usize,
            val_len: w[VAL_LEN_OFFSET / 4] as usize,
        };
        let end = header_end
            .checked_add(loc.key_len)
            .and_then(|e| e.checked_add(loc.val_len))
            .ok_or(Corrupt("entry length overflows"))?;
        if end > data_end {
            return Err(Corrupt("entry extends beyond free_data"));
        }
        if loc.flags & FLAG_HAS_MODSEQ != 0 && loc.val_len < MODSEQ_SIZE {
            return Err(Corrupt("modseq flag on a value shorter than a modseq"));
        }
        if loc.flags & FLAG_OVERFLOW != 0 && loc.value_len() != OVERFLOW_REF_SIZE {
            return Err(Corrupt("overflow flag on a value that is not a reference"));
        }
        Ok(loc)
    }

    /// Bytes of the value without any modseq prefix.
    #[inline]
    pub fn value_len(&self) -> usize {
        if self.flags & FLAG_HAS_MODSEQ != 0 {
            self.val_len.saturating_sub(MODSEQ_SIZE)
        } else {
            self.val_len
        }
    }

    /// Bytes the entry occupies, padding included.
    #[inline]
    pub fn size(&self) -> usize {
        // Cannot overflow: `read` checked that the unpadded end lies inside the page.
        entry_size(self.key_len, self.val_len).unwrap_or(usize::MAX)
    }

    /// Bytes the entry occupies without padding.
    #[inline]
    pub fn raw_size(&self) -> usize {
        ENTRY_HEADER_SIZE + self.key_len + self.val_len
    }

    #[inline]
    pub fn key_range(&self) -> std::ops::Range<usize> {
        let start = self.off + ENTRY_HEADER_SIZE;
        start..start + self.key_len
    }

    /// The stored value bytes, modseq prefix included.
    #[inline]
    pub fn stored_value_range(&self) -> std::ops::Range<usize> {
        let start = self.off + ENTRY_HEADER_SIZE + self.key_len;
        start..start + self.val_len
    }

    #[inline]
    pub fn is_tombstone(&self) -> bool {
        self.flags & FLAG_TOMBSTONE != 0
    }

    /// The entry's modseq when it carries one.
    pub fn modseq(&self, buf: &[u8]) -> Option<u64> {
        if self.flags & FLAG_HAS_MODSEQ == 0 {
            return None;
        }
        let start = self.stored_value_range().start;
        let bytes = buf.get(start..start + MODSEQ_SIZE)?;
        Some(u64::from_ne_bytes(bytes.try_into().ok()?))
    }

    /// A borrowed view of the entry.
    pub fn view<'a>(&self, buf: &'a [u8]) -> EntryRef<'a> {
        let stored = self.stored_value_range();
        let value_start = if self.flags & FLAG_HAS_MODSEQ != 0 {
            stored.start + MODSEQ_SIZE
        } else {
            stored.start
        };
        // Ranges were checked against the page by `read`.
        EntryRef {
            key: buf.get(self.key_range()).unwrap_or(&[]),
            value: buf.get(value_start..stored.end).unwrap_or(&[]),
            last_access: self.last_access,
            expire_on: self.expire_on,
            slot_hash: self.slot_hash,
            // The policy's bit is the page's own business.
            flags: self.flags & !POLICY_FLAGS,
            modseq: self.modseq(buf),
        }
    }
}

/// A borrowed view of one entry: valid while the page lock is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub key: &'a [u8],
    /// The value without any modseq prefix.
    pub value: &'a [u8],
    pub last_access: u32,
    pub expire_on: u32,
    /// The slot hash stored with the entry: it must match the key's.
    pub slot_hash: u32,
    pub flags: u32,
    pub modseq: Option<u64>,
}
