//! Pieces shared by the targets: key hashing, and how keys, values, expiry times and flags
//! are decoded from the fuzzer's input.

use arbitrary::Arbitrary;
use fastmmap::page::consts::*;

/// Cache::FastMmap's key hash: `h = 0x92f7e3b1; h = (h << 4) + (h >> 28) + byte`, wrapping.
pub fn fastmmap_hash(key: &[u8]) -> u32 {
    key.iter().fold(PAGE_MAGIC, |h, &b| {
        (h << 4).wrapping_add(h >> 28).wrapping_add(u32::from(b))
    })
}

/// How a run derives slot hashes from keys. Fixed for the whole run (it must be consistent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashMode {
    /// The FastMmap hash divided by a page count, as the FastMmap layout does.
    FastMmap,
    /// Few distinct values: clustered probe chains, equal slot hashes for different keys.
    Weak,
    /// Every key has the same slot hash (quadratic probing cost: chosen rarely).
    Constant,
}

impl<'a> Arbitrary<'a> for HashMode {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u8::arbitrary(u)? % 8 {
            0..=4 => HashMode::FastMmap,
            5 | 6 => HashMode::Weak,
            _ => HashMode::Constant,
        })
    }
}

impl HashMode {
    pub fn slot_hash(self, key: &[u8]) -> u32 {
        match self {
            HashMode::FastMmap => fastmmap_hash(key) / 89,
            HashMode::Weak => fastmmap_hash(key) % 251,
            HashMode::Constant => 7,
        }
    }
}

/// A key: mostly one of a pool of short keys (so keys repeat), sometimes arbitrary bytes.
#[derive(Arbitrary, Clone, Debug)]
pub enum KeySel {
    Pool(u8),
    Raw(Vec<u8>),
}

impl KeySel {
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            // Keys of different lengths (1..=3 bytes) so that equal-length compares matter.
            KeySel::Pool(n) => match n % 3 {
                0 => vec![*n],
                1 => vec![b'k', *n],
                _ => vec![b'k', b'-', *n],
            },
            KeySel::Raw(v) => v.clone(),
        }
    }
}

/// A value: a length (up to a little over a page) with a pattern, or arbitrary bytes.
#[derive(Arbitrary, Clone, Debug)]
pub enum ValSel {
    Small(u8, u8),
    Sized(u16, u8),
    Raw(Vec<u8>),
}

impl ValSel {
    /// The value bytes; `page_size` bounds the sized form so most values fit a page.
    pub fn bytes(&self, page_size: usize) -> Vec<u8> {
        match self {
            ValSel::Small(len, seed) => pattern(usize::from(*len), *seed),
            ValSel::Sized(len, seed) => pattern(usize::from(*len) % (page_size + 64), *seed),
            ValSel::Raw(v) => v.clone(),
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// An expiry time relative to the current time, or absolute.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum ExpireSel {
    Never,
    /// `now + n` (`n == 0`: expired at once).
    In(u8),
    /// `now - n` (saturating; 0 means never).
    Ago(u8),
    At(u32),
}

impl ExpireSel {
    pub fn expire_on(self, now: u32) -> u32 {
        match self {
            ExpireSel::Never => 0,
            ExpireSel::In(n) => now.saturating_add(u32::from(n)),
            ExpireSel::Ago(n) => now.saturating_sub(u32::from(n)),
            ExpireSel::At(t) => t,
        }
    }
}

/// Entry flags: the named bits, or any word.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum FlagSel {
    Bits(u8),
    Raw(u32),
}

impl FlagSel {
    pub fn flags(self) -> u32 {
        match self {
            FlagSel::Bits(b) => {
                let mut f = 0;
                for (bit, flag) in [
                    FLAG_UTF8_VALUE,
                    FLAG_UTF8_KEY,
                    FLAG_UNDEF,
                    FLAG_TOMBSTONE,
                    FLAG_HAS_MODSEQ,
                    FLAG_DIRTY,
                ]
                .into_iter()
                .enumerate()
                {
                    if b & (1 << bit) != 0 {
                        f |= flag;
                    }
                }
                f
            }
            FlagSel::Raw(w) => w,
        }
    }
}

/// A modseq: small values (so comparisons tie and cross) or any u64.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum ModseqSel {
    None,
    Small(u8),
    Any(u64),
}

impl ModseqSel {
    pub fn modseq(self) -> Option<u64> {
        match self {
            ModseqSel::None => None,
            ModseqSel::Small(m) => Some(u64::from(m)),
            ModseqSel::Any(m) => Some(m),
        }
    }
}

/// Which entries an explicit eviction drops.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum EvictSel {
    Expired,
    All,
    MakeRoom(u16),
}

/// The flags a store of a value of `value_len` bytes writes: `FLAG_HAS_MODSEQ` follows the
/// modseq, whatever was asked, `POLICY_FLAGS` (the eviction policy's) are never taken from a
/// caller nor shown to one, and `FLAG_OVERFLOW` is kept only on a value of a reference's size
/// (`OVERFLOW_REF_SIZE`), which the store layer resolves.
pub fn stored_flags_for(flags: u32, modseq: Option<u64>, value_len: usize) -> u32 {
    let mut flags = flags & !POLICY_FLAGS;
    if value_len != OVERFLOW_REF_SIZE {
        flags &= !FLAG_OVERFLOW;
    }
    match modseq {
        Some(_) => flags | FLAG_HAS_MODSEQ,
        None => flags & !FLAG_HAS_MODSEQ,
    }
}

/// Page sizes the crate uses (powers of two from 4 KiB), small ones favoured for speed.
pub fn page_size(sel: u8) -> usize {
    match sel % 8 {
        0..=4 => 4096,
        5 | 6 => 8192,
        _ => 16384,
    }
}

/// A start slot count: mostly the default 89, sometimes more (always leaving data room).
pub fn start_slots(sel: u8, page_size: usize) -> u32 {
    let extra = match sel % 4 {
        0 | 1 => 0,
        2 => u32::from(sel),
        _ => u32::from(sel) * 3,
    };
    let limit = ((page_size - SLOTS_OFFSET) / SLOT_SIZE / 2) as u32;
    (MIN_SLOTS + extra).min(limit)
}

/// Counts of interesting events, to see what a corpus exercises
/// (`cargo run --example replay -- TARGET --stats DIR`).
pub mod events {
    use std::sync::atomic::{AtomicU64, Ordering};

    macro_rules! events {
        ($($name:ident),* $(,)?) => {
            #[derive(Clone, Copy, Debug)]
            #[allow(non_camel_case_types)]
            pub enum Event { $($name),* }
            const NAMES: &[&str] = &[$(stringify!($name)),*];
        };
    }
    events!(
        store_stored,
        store_refused,
        store_already_newer,
        store_too_big,
        store_err,
        get_hit,
        get_miss,
        remove_hit,
        evict_all,
        evict_expired,
        evict_make_room,
        dropped_expired,
        dropped_lru,
        slots_grown,
        policy_rebuilt,
        policy_demoted,
        op_on_valid_page,
        op_on_invalid_page,
        op_err_on_invalid_page,
        stored_on_invalid_page,
        invalid_page_became_valid,
        thaw_ok,
        thaw_malformed,
        thaw_unsupported,
        deserialized,
        deserialized_typed,
        deserialize_refused,
        decompressed,
        overflow_ref_damaged,
        overflow_large_read,
        overflow_reclaimed,
        overflow_final_large_entries,
    );

    static COUNTS: [AtomicU64; NAMES.len()] = [const { AtomicU64::new(0) }; NAMES.len()];

    #[inline]
    pub fn note(e: Event) {
        COUNTS[e as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn report() -> String {
        NAMES
            .iter()
            .zip(&COUNTS)
            .map(|(n, c)| format!("{n:>28}: {}\n", c.load(Ordering::Relaxed)))
            .collect()
    }
}
