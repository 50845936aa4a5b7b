//! The page format as constants: one block per structure, each offset built from the previous
//! one. `docs/format.md` draws the same layout; keep the two in step.

/// Magic number at the start of every page (Cache::FastMmap's, so both layouts share pages).
pub const PAGE_MAGIC: u32 = 0x92f7_e3b1;

/// Magic number of a native page whose slot words carry tags: the bits of a slot word above
/// those an offset in the page needs ([`offset_mask`]) hold the same bits of the entry's slot
/// hash, so a lookup passes over the slots of other keys without reading their entries.
/// Cache::FastMmap's pages never have it (Perl reads slot words as plain offsets).
/// Far from `PAGE_MAGIC` (17 bits differ), so that a damaged magic word does not turn one into
/// the other.
pub const PAGE_MAGIC_TAGGED: u32 = 0x5a3c_96e7;

/// The bits of a slot word that hold an entry's offset in a page of `page_len` bytes: as many
/// as `page_len - 1` needs (16 for 64 KiB). The rest are a tagged page's tag.
pub const fn offset_mask(page_len: usize) -> u32 {
    let top = page_len.saturating_sub(1) as u64;
    let bits = u64::BITS - top.leading_zeros();
    if bits >= u32::BITS {
        u32::MAX
    } else {
        (1u32 << bits) - 1
    }
}

/// While a page is rebuilt, its magic word holds this tag in its upper half and, in its lower
/// half (`REBUILD_COUNT_MASK`), how many dirty entries the rebuild moves or drops: a process
/// killed part way leaves a page that fails its check (the word is never `PAGE_MAGIC`) and
/// whose reset counts those entries as lost, although the half-copied page no longer shows
/// them.
pub const REBUILD_TAG: u32 = 0x5242_0000;
pub const REBUILD_COUNT_MASK: u32 = 0xffff;

// Page header: eight native-endian u32.
// | magic | num_slots | free_slots | old_slots | free_data | free_bytes | n_reads | n_read_hits |
pub const MAGIC_OFFSET: usize = 0;
pub const NUM_SLOTS_OFFSET: usize = MAGIC_OFFSET + 4;
pub const FREE_SLOTS_OFFSET: usize = NUM_SLOTS_OFFSET + 4;
pub const OLD_SLOTS_OFFSET: usize = FREE_SLOTS_OFFSET + 4;
pub const FREE_DATA_OFFSET: usize = OLD_SLOTS_OFFSET + 4;
pub const FREE_BYTES_OFFSET: usize = FREE_DATA_OFFSET + 4;
pub const N_READS_OFFSET: usize = FREE_BYTES_OFFSET + 4;
pub const N_READ_HITS_OFFSET: usize = N_READS_OFFSET + 4;
pub const PAGE_HEADER_SIZE: usize = N_READ_HITS_OFFSET + 4;

// Slot table: `num_slots` u32 words right after the header. A word is SLOT_EMPTY (end of a
// probe chain), SLOT_DELETED (keep probing; reusable) or the page offset of an entry.
pub const SLOTS_OFFSET: usize = PAGE_HEADER_SIZE;
pub const SLOT_SIZE: usize = 4;
pub const SLOT_EMPTY: u32 = 0;
pub const SLOT_DELETED: u32 = 1;

// Entry: six u32, then the key bytes, then the value bytes, padded to ENTRY_ALIGN.
// | last_access | expire_on | slot_hash | flags | key_len | val_len | key … | value … | pad |
pub const LAST_ACCESS_OFFSET: usize = 0;
pub const EXPIRE_ON_OFFSET: usize = LAST_ACCESS_OFFSET + 4;
pub const SLOT_HASH_OFFSET: usize = EXPIRE_ON_OFFSET + 4;
pub const FLAGS_OFFSET: usize = SLOT_HASH_OFFSET + 4;
pub const KEY_LEN_OFFSET: usize = FLAGS_OFFSET + 4;
pub const VAL_LEN_OFFSET: usize = KEY_LEN_OFFSET + 4;
pub const ENTRY_HEADER_SIZE: usize = VAL_LEN_OFFSET + 4;
pub const ENTRY_ALIGN: usize = 4;
/// Size of the modseq prefix a value carries when `FLAG_HAS_MODSEQ` is set.
pub const MODSEQ_SIZE: usize = 8;

// Entry flag bits.
pub const FLAG_UTF8_VALUE: u32 = 0x8000_0000;
pub const FLAG_UTF8_KEY: u32 = 0x4000_0000;
pub const FLAG_UNDEF: u32 = 0x2000_0000;
pub const FLAG_TOMBSTONE: u32 = 0x1000_0000;
pub const FLAG_HAS_MODSEQ: u32 = 0x0800_0000;
/// Write-back: not yet written to the backing store (Cache::FastMmap's `FC_ISDIRTY`).
pub const FLAG_DIRTY: u32 = 0x0000_0001;
/// The value is compressed (fastmmap only; Perl does not know these bits): the two bits
/// name the compressor. Perl's own compressors leave no flag.
pub const FLAG_COMPRESSION: u32 = 0x0600_0000;
/// `FLAG_COMPRESSION` value: LZ4 block with a little-endian u32 length prefix (lz4_flex).
pub const FLAG_LZ4: u32 = 0x0200_0000;
/// `FLAG_COMPRESSION` value: one zstd frame.
pub const FLAG_ZSTD: u32 = 0x0400_0000;
/// The entry is in the page's protected part, evicted after the probationary entries: it has
/// been read since it was stored, or came back while its key was remembered as recently
/// evicted. Native layout only
/// (see the eviction policy below); never handed to callers.
pub const FLAG_PROTECTED: u32 = 0x0100_0000;
/// On a protected entry, a 2-bit saturating count of the seconds it was read in since it was
/// protected (the first hit counts one; hits within the second of the last access are served
/// lock-free and count nothing). A rebuild moves protected entries with a count back to
/// probation only after those without, and takes one off every count when none is left
/// without. On a probationary entry, `FREQ_ONE` marks one moved back from the protected part,
/// which is not remembered when evicted. Native layout only; never handed to callers.
pub const FLAG_FREQ: u32 = 0x0030_0000;
/// One step of `FLAG_FREQ`.
pub const FREQ_ONE: u32 = 0x0010_0000;
/// The largest count `FLAG_FREQ` holds.
pub const FREQ_MAX: u32 = FLAG_FREQ / FREQ_ONE;
/// Every flag bit of the eviction policy: the page's own business, never handed to callers
/// nor taken from them.
pub const POLICY_FLAGS: u32 = FLAG_PROTECTED | FLAG_FREQ;

/// The value lives in the file's overflow area (native layout only): the entry's value bytes
/// (after any modseq prefix) are a reference of `OVERFLOW_REF_SIZE` bytes, which the store
/// layer reads and checks. Never handed to callers.
pub const FLAG_OVERFLOW: u32 = 0x0080_0000;

// Overflow reference: the value bytes of an entry with FLAG_OVERFLOW, native-endian.
// | first_block u32 | blocks u32 | len u64 | checksum u64 (xxh3-64 of the value) |
pub const REF_FIRST_BLOCK_OFFSET: usize = 0;
pub const REF_BLOCKS_OFFSET: usize = REF_FIRST_BLOCK_OFFSET + 4;
pub const REF_LEN_OFFSET: usize = REF_BLOCKS_OFFSET + 4;
pub const REF_CHECKSUM_OFFSET: usize = REF_LEN_OFFSET + 8;
pub const OVERFLOW_REF_SIZE: usize = REF_CHECKSUM_OFFSET + 8;

/// Fewest slots a page may have (Cache::FastMmap's default and floor).
pub const MIN_SLOTS: u32 = 89;
/// Smallest and largest page sizes the crate accepts.
pub const MIN_PAGE_SIZE: usize = 4096;
pub const MAX_PAGE_SIZE: usize = 1 << 30;

// Eviction thresholds, Cache::FastMmap's. A store leaves the page alone while more than
// SLOT_FILL_LIMIT of the slots are truly free and the entry fits; a rebuild grows the slot
// table when more than SLOT_FILL_LIMIT of it would be used, and evicts least recently used
// entries until the data area is less than DATA_FILL_TARGET full.
pub const SLOT_FILL_LIMIT: f64 = 0.3;
pub const DATA_FILL_TARGET: f64 = 0.6;

// The native layout's eviction policy (segmented LRU with a count of reads and a record of
// evicted keys; the FastMmap layout keeps Perl's rule above). New entries are on probation; a
// read hit moves an entry to the protected part (`FLAG_PROTECTED`) with a count of one, and
// hits in later seconds add to its count (`FLAG_FREQ`). A rebuild first moves protected
// entries without a count back to probation (least recently used first) until protected
// entries fill at most PROTECTED_SHARE of the data area, taking one off every count whenever
// none is left without; then evicts probationary entries (least recently used first), and
// protected ones (those without a count first) only when probation is empty, until the data
// area is under POLICY_FILL_TARGET full. The fingerprints of evicted probationary entries that were never
// protected are kept in the ghost record at the end of the page; a new key found there is
// stored protected, and taken out of the record. See `policy` and docs/format.md §4.1.
pub const POLICY_FILL_TARGET: f64 = 0.9;
pub const PROTECTED_SHARE: f64 = 0.9;

// Ghost record: the last page_size / GHOST_SHARE bytes of a native page, kept free of entries.
// | ghost_magic | ghost_count | fingerprint 0 (u16) | … | fingerprint count-1 | (unused) |
// A hint only: it is trusted when its magic is right, its count fits and free_data has not
// reached it; anything else reads as an empty record.
pub const GHOST_SHARE: usize = 32;
pub const GHOST_MAGIC_OFFSET: usize = 0;
pub const GHOST_COUNT_OFFSET: usize = GHOST_MAGIC_OFFSET + 4;
pub const GHOST_HASHES_OFFSET: usize = GHOST_COUNT_OFFSET + 4;
pub const GHOST_MAGIC: u32 = 0x4748_5354;
/// Bytes of one fingerprint in the ghost record (a u16, see `policy::fingerprint`).
pub const GHOST_PRINT_SIZE: usize = 2;

/// Bytes of the ghost record at the end of a native page of `page_size` bytes.
pub const fn ghost_size(page_size: usize) -> usize {
    (page_size / GHOST_SHARE) & !(ENTRY_ALIGN - 1)
}

/// Rounds `len` up to the entry alignment; `None` on overflow.
pub const fn align_len(len: usize) -> Option<usize> {
    match len.checked_add(ENTRY_ALIGN - 1) {
        Some(l) => Some(l & !(ENTRY_ALIGN - 1)),
        None => None,
    }
}

/// Bytes an entry with these key and value lengths occupies in a page (value length
/// including any modseq prefix); `None` on overflow.
pub const fn entry_size(key_len: usize, val_len: usize) -> Option<usize> {
    match ENTRY_HEADER_SIZE.checked_add(key_len) {
        Some(l) => match l.checked_add(val_len) {
            Some(l) => align_len(l),
            None => None,
        },
        None => None,
    }
}

/// Offset of the first byte after a slot table of `num_slots` slots; `None` on overflow.
pub const fn slots_end(num_slots: u32) -> Option<usize> {
    match (num_slots as usize).checked_mul(SLOT_SIZE) {
        Some(b) => SLOTS_OFFSET.checked_add(b),
        None => None,
    }
}

/// The largest entry (as counted by [`entry_size`]) that fits an empty page.
pub const fn max_entry_size(page_size: usize, start_slots: u32) -> usize {
    match slots_end(start_slots) {
        Some(end) => page_size.saturating_sub(end),
        None => 0,
    }
}

/// True when an entry with this expiry time is expired at `now` (`0` means never).
#[inline]
pub const fn is_expired(expire_on: u32, now: u32) -> bool {
    expire_on != 0 && now >= expire_on
}
