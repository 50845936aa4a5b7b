//! The native file header: geometry, hash and lock kind, then one 64-byte row per page, then
//! one 64-byte write-back lock row per page, then (files with an overflow area) the overflow
//! table: a word per page and a row per block (see `overflow.rs`).
//! Pure encode/decode; the mapping code reads and writes it through these functions.

use xxhash_rust::xxh3::xxh3_64;

use crate::page::consts::{MIN_PAGE_SIZE, PAGE_MAGIC};

/// First eight bytes of a native file.
pub const FILE_MAGIC: [u8; 8] = *b"fastmmap";
/// Format version written by this crate. Version 8 keeps a tag of each key's slot hash in the
/// slot words of native pages (`PAGE_MAGIC_TAGGED`, docs/format.md §3.2); version 7 files are
/// refused like older ones (a version 7 process would take a tagged page for damage). Version
/// 7 gave the checksummed word at byte 52 to `journal_size` (the redo journal of crash-atomic
/// page changes, after everything else in the file; see `journal.rs`), the busy marker its
/// journal value, `BUSY_REDO`, and the resize state *migrating* (a successor in use while the
/// old file's pages are moved one at a time). Version 5 added the overflow area for values larger
/// than a page (its geometry in the fixed part, its table after the write-back lock table,
/// the `FLAG_OVERFLOW` entry bit), the resize words (bytes 72..128 of the fixed part and
/// the moved word of each page row), the read count in the entry flags and a ghost record of
/// 16-bit fingerprints; version 4 added the pages' eviction policy state (the
/// protected flag and the ghost record); version 3 the write-back lock table. Older files are
/// refused with a clear error: they are caches, to be recreated.
pub const FORMAT_VERSION: u32 = 8;
/// Written native-endian; reads back differently on a machine of the other byte order.
pub const BYTE_ORDER_MARK: u32 = 0x0102_0304;

// Fixed part, native-endian:
// | magic [8] | version | header_size | page_size | num_pages | start_slots | hash_kind |
// | lock_kind | byte_order | overflow_blocks | block_size | max_value_size | journal_size |
// | checksum u64 (xxh3 of bytes 0..56) |
// | openers byte (shared fcntl lock of every opener) | reserved … up to PAGE_TABLE_OFFSET |
pub const FILE_MAGIC_OFFSET: usize = 0;
pub const VERSION_OFFSET: usize = FILE_MAGIC_OFFSET + 8;
pub const HEADER_SIZE_OFFSET: usize = VERSION_OFFSET + 4;
pub const PAGE_SIZE_OFFSET: usize = HEADER_SIZE_OFFSET + 4;
pub const NUM_PAGES_OFFSET: usize = PAGE_SIZE_OFFSET + 4;
pub const START_SLOTS_OFFSET: usize = NUM_PAGES_OFFSET + 4;
pub const HASH_KIND_OFFSET: usize = START_SLOTS_OFFSET + 4;
pub const LOCK_KIND_OFFSET: usize = HASH_KIND_OFFSET + 4;
pub const BYTE_ORDER_OFFSET: usize = LOCK_KIND_OFFSET + 4;
/// Blocks of the overflow area (0: none; every value must then fit its page).
pub const OVERFLOW_BLOCKS_OFFSET: usize = BYTE_ORDER_OFFSET + 4;
/// Bytes per overflow block (0 when there is no area).
pub const BLOCK_SIZE_OFFSET: usize = OVERFLOW_BLOCKS_OFFSET + 4;
/// The largest value stored in the overflow area (0 when there is no area).
pub const MAX_VALUE_SIZE_OFFSET: usize = BLOCK_SIZE_OFFSET + 4;
/// Bytes of the journal region after the overflow area (0: no journal; otherwise exactly
/// [`journal_size`] of the page size).
pub const JOURNAL_SIZE_OFFSET: usize = MAX_VALUE_SIZE_OFFSET + 4;
pub const CHECKSUM_OFFSET: usize = JOURNAL_SIZE_OFFSET + 4;
/// Every opener of a robust-locked file holds a shared fcntl lock on this byte.
pub const OPENERS_LOCK_OFFSET: usize = CHECKSUM_OFFSET + 8;
// Resize words, after the openers byte and reserved bytes 65..72; not checksummed, changed
// only by a resizer holding the resize lock (see `store/resize.rs` and docs/format.md):
// | lineage u64 | generation u32 | state u32 | successor nonce u64 | reserved … up to 128 |
/// A resizer holds an exclusive fcntl lock on this byte for as long as it works.
pub const RESIZE_LOCK_OFFSET: usize = 72;
/// Random id shared by a file and every file it was resized into (0: never resized).
pub const LINEAGE_OFFSET: usize = RESIZE_LOCK_OFFSET;
/// How many resizes lie between this file and the first of its lineage.
pub const GENERATION_OFFSET: usize = LINEAGE_OFFSET + 8;
/// 0 (in use, no successor), [`STATE_BUILDING`], [`STATE_MIGRATING`] or [`STATE_MOVED`].
pub const STATE_OFFSET: usize = GENERATION_OFFSET + 4;
/// The nonce naming the successor file (`<path>.resize-<nonce as 16 hex digits>`).
pub const SUCCESSOR_OFFSET: usize = STATE_OFFSET + 4;
#[cfg(test)]
pub const RESIZE_WORDS_END: usize = SUCCESSOR_OFFSET + 8;
/// A resizer is building the successor named by the nonce (or died doing so): the successor
/// is not in use, and the next resizer removes it.
pub const STATE_BUILDING: u32 = 1;
/// Every entry is in the successor named by the nonce: every user goes there.
pub const STATE_MOVED: u32 = 2;
/// The successor named by the nonce is in use: the entries of each page whose row is marked
/// moved live there, the others here (a resizer moves one page at a time, or died doing so
/// and the next resize goes on). The successor is never removed.
pub const STATE_MIGRATING: u32 = 3;

/// The page table starts on the first row boundary after the fixed part.
pub const PAGE_TABLE_OFFSET: usize = (OPENERS_LOCK_OFFSET + 1).next_multiple_of(ROW_SIZE);

// Per-page row, one cache line each:
// | lock area [48] (robust mutex) | busy u32 | resets u32 | seq u32 | moved u32 |
pub const ROW_LOCK_OFFSET: usize = 0;
pub const ROW_LOCK_SIZE: usize = 48;
pub const ROW_BUSY_OFFSET: usize = ROW_LOCK_OFFSET + ROW_LOCK_SIZE;
pub const ROW_RESETS_OFFSET: usize = ROW_BUSY_OFFSET + 4;
/// Robust-locked files: odd while a lock holder may be changing the page, bumped to the next
/// even value when it lets go; optimistic readers check that it did not move.
pub const ROW_SEQ_OFFSET: usize = ROW_RESETS_OFFSET + 4;
/// Non-zero once the page's entries live in the successor file: set under the page lock by a
/// resizer, read by every locker after taking the lock and by optimistic readers.
pub const ROW_MOVED_OFFSET: usize = ROW_SEQ_OFFSET + 4;
pub const ROW_SIZE: usize = 64;

// Write-back lock table, after the page table: one row per page, one cache line each, so
// that a page's write-back lock shares no line with its hot page lock.
// | write-back lock area [48] (robust mutex) | reserved [16] |
pub const WRITE_BACK_LOCK_OFFSET: usize = 0;
pub const WRITE_BACK_LOCK_SIZE: usize = ROW_LOCK_SIZE;
pub const WRITE_BACK_ROW_SIZE: usize = 64;

/// Pages start on a boundary of this many bytes: the smallest page size (and the memory
/// page size of common machines).
pub const HEADER_ALIGN: usize = MIN_PAGE_SIZE;

/// The fixed fields of a native header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileHeader {
    pub header_size: u32,
    pub page_size: u32,
    pub num_pages: u32,
    pub start_slots: u32,
    pub hash_kind: u32,
    pub lock_kind: u32,
    /// The overflow area: blocks, bytes per block, largest value (all 0: no area).
    pub overflow: OverflowGeometry,
    /// Bytes of the journal region (0: none).
    pub journal_size: u32,
}

/// The overflow area of a native file: values too large for their page live here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverflowGeometry {
    pub blocks: u32,
    pub block_size: u32,
    pub max_value_size: u32,
}

/// Bytes per overflow block of the files this crate creates.
pub const OVERFLOW_BLOCK_SIZE: u32 = 4096;

// Overflow table, after the write-back lock table (files with an overflow area only):
// | owned u32 per page (blocks the page holds) | padded to OVERFLOW_ROW_SIZE |
// | block row per block: owner u32 (page + 1; 0 free) | next u32 (block + 1; 0 last) |
pub const OWNED_SIZE: usize = 4;
pub const BLOCK_OWNER_OFFSET: usize = 0;
pub const BLOCK_NEXT_OFFSET: usize = BLOCK_OWNER_OFFSET + 4;
pub const BLOCK_ROW_SIZE: usize = BLOCK_NEXT_OFFSET + 4;

impl OverflowGeometry {
    /// Bytes of the overflow area.
    pub fn area_size(&self) -> u64 {
        u64::from(self.blocks) * u64::from(self.block_size)
    }

    /// Checks the fields agree with each other; the error is the reason.
    pub fn validate(&self) -> Result<(), String> {
        if self.blocks == 0 {
            if self.block_size != 0 || self.max_value_size != 0 {
                return Err("an overflow block size or value size without an area".into());
            }
            return Ok(());
        }
        if self.block_size != OVERFLOW_BLOCK_SIZE {
            return Err(format!(
                "overflow block size {} (this build uses {OVERFLOW_BLOCK_SIZE})",
                self.block_size
            ));
        }
        if self.blocks > MAX_OVERFLOW_BLOCKS {
            return Err(format!(
                "{} overflow blocks is more than the {MAX_OVERFLOW_BLOCKS} allowed",
                self.blocks
            ));
        }
        if self.max_value_size == 0 || u64::from(self.max_value_size) > self.area_size() {
            return Err(format!(
                "max_value_size {} must be from 1 to the overflow area's {} bytes",
                self.max_value_size,
                self.area_size()
            ));
        }
        Ok(())
    }
}

/// Room of a journal region beyond one page's bytes: the record's header and its extents'
/// headers (at most one per two 64-byte chunks of the page), rounded up to keep the region's
/// end on a 4096-byte boundary.
pub const JOURNAL_ROOM: u32 = 4096;

/// The `journal_size` of a file of `page_size` pages that has a journal (`None`: no such
/// size, a page size no file can have).
pub fn journal_size(page_size: u32) -> Option<u32> {
    page_size.checked_add(JOURNAL_ROOM)
}

/// Most overflow blocks a file may have (1 TiB of 4 KiB blocks).
pub const MAX_OVERFLOW_BLOCKS: u32 = 1 << 28;

/// Size of the header (fixed part, page table, write-back lock table and overflow table,
/// rounded up) for `num_pages` pages and `blocks` overflow blocks.
pub fn header_size(num_pages: u32, blocks: u32) -> usize {
    let raw = overflow_table_offset(num_pages) + overflow_table_size(num_pages, blocks);
    raw.div_ceil(HEADER_ALIGN) * HEADER_ALIGN
}

/// Offset of the overflow table: right after the write-back lock table.
pub fn overflow_table_offset(num_pages: u32) -> usize {
    write_back_table_offset(num_pages) + num_pages as usize * WRITE_BACK_ROW_SIZE
}

/// Offset of the block rows inside the overflow table (after the pages' owned words, padded
/// to a row).
pub fn block_rows_offset(num_pages: u32) -> usize {
    overflow_table_offset(num_pages) + (num_pages as usize * OWNED_SIZE).next_multiple_of(ROW_SIZE)
}

/// Bytes of the overflow table: none without an area.
pub fn overflow_table_size(num_pages: u32, blocks: u32) -> usize {
    if blocks == 0 {
        return 0;
    }
    block_rows_offset(num_pages) - overflow_table_offset(num_pages)
        + blocks as usize * BLOCK_ROW_SIZE
}

/// Offset of page `page`'s row in the page table.
pub fn row_offset(page: u32) -> usize {
    PAGE_TABLE_OFFSET + page as usize * ROW_SIZE
}

/// Offset of the write-back lock table of a file of `num_pages` pages: right after the page
/// table.
pub fn write_back_table_offset(num_pages: u32) -> usize {
    PAGE_TABLE_OFFSET + num_pages as usize * ROW_SIZE
}

/// The generation recorded in a header's first bytes (0 if they are too short to hold it).
pub fn generation(buf: &[u8]) -> u32 {
    buf.get(GENERATION_OFFSET..GENERATION_OFFSET + 4)
        .map_or(0, |b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
}

fn word(buf: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes"))
}

/// Why a header could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// The first bytes are a Cache::FastMmap page, not a native header.
    LooksLikeFastMmap,
    /// No known magic at all.
    NotACacheFile,
    /// Recognised, but unusable; the reason says why.
    Bad(String),
}

impl FileHeader {
    /// Writes the fixed part (page table rows are left as they are: zero in a new file).
    pub fn encode(&self, buf: &mut [u8]) {
        let put = |buf: &mut [u8], off: usize, v: u32| {
            buf[off..off + 4].copy_from_slice(&v.to_ne_bytes())
        };
        buf[FILE_MAGIC_OFFSET..FILE_MAGIC_OFFSET + 8].copy_from_slice(&FILE_MAGIC);
        put(buf, VERSION_OFFSET, FORMAT_VERSION);
        put(buf, HEADER_SIZE_OFFSET, self.header_size);
        put(buf, PAGE_SIZE_OFFSET, self.page_size);
        put(buf, NUM_PAGES_OFFSET, self.num_pages);
        put(buf, START_SLOTS_OFFSET, self.start_slots);
        put(buf, HASH_KIND_OFFSET, self.hash_kind);
        put(buf, LOCK_KIND_OFFSET, self.lock_kind);
        put(buf, BYTE_ORDER_OFFSET, BYTE_ORDER_MARK);
        put(buf, OVERFLOW_BLOCKS_OFFSET, self.overflow.blocks);
        put(buf, BLOCK_SIZE_OFFSET, self.overflow.block_size);
        put(buf, MAX_VALUE_SIZE_OFFSET, self.overflow.max_value_size);
        put(buf, JOURNAL_SIZE_OFFSET, self.journal_size);
        let sum = xxh3_64(&buf[..CHECKSUM_OFFSET]);
        buf[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 8].copy_from_slice(&sum.to_ne_bytes());
    }

    /// Decodes the first `PAGE_TABLE_OFFSET` bytes of a file (fewer if the file is shorter).
    pub fn decode(buf: &[u8]) -> Result<FileHeader, HeaderError> {
        if buf.len() >= 4 && word(buf, 0) == PAGE_MAGIC {
            return Err(HeaderError::LooksLikeFastMmap);
        }
        if buf.len() < FILE_MAGIC.len() || buf[..8] != FILE_MAGIC {
            return Err(HeaderError::NotACacheFile);
        }
        if buf.len() < PAGE_TABLE_OFFSET {
            return Err(HeaderError::Bad(format!(
                "header is cut short at {} bytes",
                buf.len()
            )));
        }
        if word(buf, BYTE_ORDER_OFFSET) != BYTE_ORDER_MARK {
            return Err(HeaderError::Bad(
                "written on a machine of another byte order".into(),
            ));
        }
        let version = word(buf, VERSION_OFFSET);
        if version != FORMAT_VERSION {
            let hint = if version < FORMAT_VERSION {
                " (written by an older fastmmap; it is only a cache: once no process uses it, \
                 remove it and it is created afresh)"
            } else {
                " (written by a newer fastmmap)"
            };
            return Err(HeaderError::Bad(format!(
                "format version {version}; this build reads version {FORMAT_VERSION}{hint}"
            )));
        }
        let sum = u64::from_ne_bytes(
            buf[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 8]
                .try_into()
                .expect("8 bytes"),
        );
        if sum != xxh3_64(&buf[..CHECKSUM_OFFSET]) {
            return Err(HeaderError::Bad("checksum mismatch".into()));
        }
        let h = FileHeader {
            header_size: word(buf, HEADER_SIZE_OFFSET),
            page_size: word(buf, PAGE_SIZE_OFFSET),
            num_pages: word(buf, NUM_PAGES_OFFSET),
            start_slots: word(buf, START_SLOTS_OFFSET),
            hash_kind: word(buf, HASH_KIND_OFFSET),
            lock_kind: word(buf, LOCK_KIND_OFFSET),
            overflow: OverflowGeometry {
                blocks: word(buf, OVERFLOW_BLOCKS_OFFSET),
                block_size: word(buf, BLOCK_SIZE_OFFSET),
                max_value_size: word(buf, MAX_VALUE_SIZE_OFFSET),
            },
            journal_size: word(buf, JOURNAL_SIZE_OFFSET),
        };
        h.overflow.validate().map_err(HeaderError::Bad)?;
        if h.journal_size != 0 && Some(h.journal_size) != journal_size(h.page_size) {
            return Err(HeaderError::Bad(format!(
                "journal_size {} does not fit page size {} (a journal is the page size + {} \
                 bytes)",
                h.journal_size, h.page_size, JOURNAL_ROOM
            )));
        }
        if h.header_size as usize != header_size(h.num_pages, h.overflow.blocks) {
            return Err(HeaderError::Bad(format!(
                "header size {} does not match {} pages",
                h.header_size, h.num_pages
            )));
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> FileHeader {
        FileHeader {
            header_size: header_size(89, 0) as u32,
            page_size: 65536,
            num_pages: 89,
            start_slots: 89,
            hash_kind: 1,
            lock_kind: 1,
            overflow: OverflowGeometry::default(),
            journal_size: 0,
        }
    }

    #[test]
    fn round_trip() {
        let mut buf = vec![0u8; PAGE_TABLE_OFFSET];
        sample().encode(&mut buf);
        assert_eq!(FileHeader::decode(&buf), Ok(sample()));
        let with_area = FileHeader {
            header_size: header_size(89, 256) as u32,
            overflow: OverflowGeometry {
                blocks: 256,
                block_size: OVERFLOW_BLOCK_SIZE,
                max_value_size: 65536 * 2,
            },
            ..sample()
        };
        with_area.encode(&mut buf);
        assert_eq!(FileHeader::decode(&buf), Ok(with_area));
    }

    #[test]
    fn a_journal_size_is_the_page_size_and_its_room_or_nothing() {
        let mut buf = vec![0u8; PAGE_TABLE_OFFSET];
        let with_journal = FileHeader {
            journal_size: 65536 + JOURNAL_ROOM,
            ..sample()
        };
        with_journal.encode(&mut buf);
        assert_eq!(FileHeader::decode(&buf), Ok(with_journal));
        for bad in [1, 4096, 65536, 65536 + 2 * JOURNAL_ROOM, u32::MAX] {
            let h = FileHeader {
                journal_size: bad,
                ..sample()
            };
            h.encode(&mut buf);
            match FileHeader::decode(&buf) {
                Err(HeaderError::Bad(reason)) => {
                    assert!(reason.contains("journal_size"), "{reason}")
                }
                other => panic!("journal_size {bad}: {other:?}"),
            }
        }
        assert_eq!(journal_size(u32::MAX), None);
    }

    #[test]
    fn overflow_fields_that_disagree_are_refused() {
        let bad = [
            (0, 4096, 0),
            (0, 0, 10),
            (4, 512, 10),
            (4, 4096, 0),
            (4, 4096, 4 * 4096 + 1),
        ];
        for (blocks, block_size, max_value_size) in bad {
            let h = FileHeader {
                header_size: header_size(89, blocks) as u32,
                overflow: OverflowGeometry {
                    blocks,
                    block_size,
                    max_value_size,
                },
                ..sample()
            };
            let mut buf = vec![0u8; PAGE_TABLE_OFFSET];
            h.encode(&mut buf);
            assert!(
                matches!(FileHeader::decode(&buf), Err(HeaderError::Bad(_))),
                "{blocks} {block_size} {max_value_size}"
            );
        }
    }

    #[test]
    fn layout_constants() {
        assert_eq!(OPENERS_LOCK_OFFSET, 64);
        assert_eq!(PAGE_TABLE_OFFSET, 128);
        const { assert!(OPENERS_LOCK_OFFSET < PAGE_TABLE_OFFSET) };
        assert_eq!(ROW_MOVED_OFFSET + 4, ROW_SIZE);
        assert_eq!(RESIZE_LOCK_OFFSET, 72);
        const { assert!(RESIZE_WORDS_END <= PAGE_TABLE_OFFSET) };
        assert_eq!(JOURNAL_SIZE_OFFSET, 52);
        assert_eq!(CHECKSUM_OFFSET, 56);
        assert_eq!(header_size(1, 0), 4096);
        assert_eq!(header_size(31, 0), 4096);
        assert_eq!(header_size(32, 0), 8192);
        assert_eq!(header_size(89, 0), 12288);
        // 89 owned words padded to 384 bytes, then 8-byte block rows.
        assert_eq!(block_rows_offset(89), 128 + 89 * 128 + 384);
        assert_eq!(
            header_size(89, 100),
            (128 + 89 * 128 + 384 + 800usize).div_ceil(4096) * 4096
        );
        assert_eq!(write_back_table_offset(89), 128 + 89 * 64);
        const { assert!(WRITE_BACK_LOCK_OFFSET + WRITE_BACK_LOCK_SIZE <= WRITE_BACK_ROW_SIZE) };
    }

    #[test]
    fn recognises_other_files() {
        let mut buf = vec![0u8; PAGE_TABLE_OFFSET];
        buf[..4].copy_from_slice(&PAGE_MAGIC.to_ne_bytes());
        assert_eq!(
            FileHeader::decode(&buf),
            Err(HeaderError::LooksLikeFastMmap)
        );
        assert_eq!(
            FileHeader::decode(&[0u8; 10]),
            Err(HeaderError::NotACacheFile)
        );
        assert_eq!(
            FileHeader::decode(b"fastmm"),
            Err(HeaderError::NotACacheFile)
        );
        assert!(matches!(
            FileHeader::decode(b"fastmmap"),
            Err(HeaderError::Bad(_))
        ));
    }

    #[test]
    fn an_older_version_is_refused_with_a_hint() {
        let mut buf = vec![0u8; PAGE_TABLE_OFFSET];
        sample().encode(&mut buf);
        buf[VERSION_OFFSET..VERSION_OFFSET + 4].copy_from_slice(&2u32.to_ne_bytes());
        let sum = xxh3_64(&buf[..CHECKSUM_OFFSET]);
        buf[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 8].copy_from_slice(&sum.to_ne_bytes());
        match FileHeader::decode(&buf) {
            Err(HeaderError::Bad(reason)) => {
                assert!(reason.contains("version 2"), "{reason}");
                assert!(reason.contains("older fastmmap"), "{reason}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn any_flipped_byte_is_caught(pos in 0usize..CHECKSUM_OFFSET + 8, bit in 0u8..8) {
            let mut buf = vec![0u8; PAGE_TABLE_OFFSET];
            sample().encode(&mut buf);
            buf[pos] ^= 1 << bit;
            prop_assert!(FileHeader::decode(&buf).is_err());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = FileHeader::decode(&bytes);
        }
    }
}
