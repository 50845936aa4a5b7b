//! Arbitrary bytes over a native file's overflow table, its overflow area and the large
//! values' references in the pages, then every cache operation: nothing may panic, every
//! value returned is one that was stored under its key, and once `reclaim_overflow` has run
//! the blocks held are exactly those the live large values need.
//!
//! The file is built through the public API (small geometry: a few 4 KiB pages and an area of
//! 16 or 24 blocks) in `/dev/shm` (or the temporary directory) and damaged through a second
//! handle on the file, as another process could; the cache's mapping sees the bytes at once.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};

use crate::common::events::{Event, note};
use fastmmap::page::PageView;
use fastmmap::page::consts::{FLAG_OVERFLOW, OVERFLOW_REF_SIZE};
use fastmmap::{Cache, LockKind, Update};

const PAGE_SIZE: u32 = 4096;
const BLOCK: u64 = 4096;
const MAX_VALUE: u32 = 32 * 1024;
/// docs/format.md: the page table starts at 128, one 64-byte row a page, then the write-back
/// lock table (64 bytes a page), then the overflow table: the pages' owned words (padded to
/// 64 bytes) and an 8-byte row a block.
const PAGE_TABLE_OFFSET: u64 = 128;
const ROW_SIZE: u64 = 64;
const WRITE_BACK_ROW_SIZE: u64 = 64;
const BLOCK_ROW_SIZE: u64 = 8;

const KEYS: u8 = 6;
const MAX_SETUP: usize = 12;
const MAX_DAMAGE: usize = 16;
const MAX_OPS: usize = 40;

/// A value: small (in its page) or large (in the area; sometimes over the maximum).
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum ValSel {
    Small(u16),
    Large(u16),
}

impl ValSel {
    fn len(self) -> usize {
        match self {
            ValSel::Small(n) => usize::from(n) % 3000,
            ValSel::Large(n) => 3000 + usize::from(n) % (MAX_VALUE as usize + 1000 - 3000),
        }
    }
}

/// A 32-bit word chosen to be plausible where it lands (a page number, a block number, a
/// small count) or anything.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum WordSel {
    Zero,
    Page(u8),
    Block(u8),
    Any(u32),
}

impl WordSel {
    fn word(self, num_pages: u32, blocks: u32) -> u32 {
        match self {
            WordSel::Zero => 0,
            WordSel::Page(n) => u32::from(n) % (num_pages + 3),
            WordSel::Block(n) => u32::from(n) % (blocks + 3),
            WordSel::Any(w) => w,
        }
    }
}

/// One change to the file's bytes.
#[derive(Arbitrary, Clone, Debug)]
pub enum Damage {
    /// A word of the overflow table (owned words and block rows), by word index.
    TableWord(u16, WordSel),
    /// A byte of the overflow table.
    TableByte(u16, u8),
    /// A run of bytes in the area, at a byte offset.
    Area(u32, Vec<u8>),
    /// A word of the `n`th large value's reference (in page order): first block, block count,
    /// length (two words) or checksum (two words).
    RefWord(u8, u8, WordSel),
    /// A byte of the `n`th large value's reference.
    RefByte(u8, u8, u8),
    /// The `n`th large value's reference made to name another's blocks (its first block and
    /// count), keeping its own length and checksum.
    RefBlocksOf(u8, u8),
}

/// One cache operation.
#[derive(Arbitrary, Clone, Debug)]
pub enum Op {
    Get(u8),
    GetWith(u8),
    Set(u8, ValSel),
    Remove(u8),
    /// Update to a new value, keep, or remove (`which % 3`).
    Update(u8, u8, ValSel),
    Iter,
    Check,
    Reclaim,
    Stats,
    Damage(Damage),
}

/// A whole run.
#[derive(Debug)]
pub struct Input {
    pub robust: bool,
    pub num_pages: u32,
    pub blocks: u32,
    pub setup: Vec<(u8, ValSel)>,
    pub damage: Vec<Damage>,
    pub ops: Vec<Op>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let robust = bool::arbitrary(u)?;
        let num_pages = 1 + u32::from(u8::arbitrary(u)? % 3);
        let blocks = if bool::arbitrary(u)? { 16 } else { 24 };
        let mut setup = Vec::new();
        for _ in 0..u.int_in_range(0..=MAX_SETUP)? {
            setup.push(<(u8, ValSel)>::arbitrary(u)?);
        }
        let mut damage = Vec::new();
        for _ in 0..u.int_in_range(0..=MAX_DAMAGE)? {
            damage.push(Damage::arbitrary(u)?);
        }
        let mut ops = Vec::new();
        while ops.len() < MAX_OPS && !u.is_empty() {
            ops.push(Op::arbitrary(u)?);
        }
        Ok(Input {
            robust,
            num_pages,
            blocks,
            setup,
            damage,
            ops,
        })
    }
}

fn key(n: u8) -> Vec<u8> {
    format!("key-{}", n % KEYS).into_bytes()
}

/// A value that names its key and write: `seq` (8 bytes), then a pattern of both.
fn value(key: &[u8], seq: u64, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = seq
        .to_le_bytes()
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect();
    let salt = key.iter().fold(seq as u8, |a, &b| a.wrapping_mul(31) ^ b);
    for (i, b) in v.iter_mut().enumerate().skip(8) {
        *b = (i as u8).wrapping_mul(13) ^ salt;
    }
    v
}

/// The file and the offsets the damage needs.
struct Target {
    cache: Cache,
    raw: File,
    path: PathBuf,
    num_pages: u32,
    blocks: u32,
    table: u64,
    table_len: u64,
    pages: u64,
    area: u64,
    /// Every value ever stored (or tried) under each key.
    stored: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
    seq: u64,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn file_path() -> PathBuf {
    let dir = PathBuf::from("/dev/shm");
    let dir = if dir.is_dir() {
        dir
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("fastmmap-fuzz-overflow-{}", std::process::id()))
}

impl Target {
    fn new(input: &Input) -> Target {
        let path = file_path();
        let _ = std::fs::remove_file(&path);
        let area_bytes = u64::from(input.blocks) * BLOCK;
        let cache = Cache::builder()
            .path(&path)
            .lock_kind(if input.robust {
                LockKind::Robust
            } else {
                LockKind::Fcntl
            })
            .num_pages(input.num_pages)
            .page_size(PAGE_SIZE)
            .overflow_size(area_bytes)
            .max_value_size(MAX_VALUE)
            .lock_timeout(Duration::from_secs(10))
            .open()
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let raw = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open the file raw");
        let len = raw.metadata().expect("stat").len();
        let np = u64::from(input.num_pages);
        let area = len - area_bytes;
        let pages = area - np * u64::from(PAGE_SIZE);
        let table = PAGE_TABLE_OFFSET + np * (ROW_SIZE + WRITE_BACK_ROW_SIZE);
        let rows = table + (np * 4).next_multiple_of(64);
        let table_len = rows + u64::from(input.blocks) * BLOCK_ROW_SIZE - table;
        assert!(
            table + table_len <= pages,
            "overflow table inside the header"
        );
        Target {
            cache,
            raw,
            path,
            num_pages: input.num_pages,
            blocks: input.blocks,
            table,
            table_len,
            pages,
            area,
            stored: HashMap::new(),
            seq: 0,
        }
    }

    fn new_value(&mut self, key: &[u8], sel: ValSel) -> Vec<u8> {
        self.seq += 1;
        let v = value(key, self.seq, sel.len());
        self.stored
            .entry(key.to_vec())
            .or_default()
            .insert(v.clone());
        v
    }

    fn assert_stored(&self, key: &[u8], v: &[u8], what: &str) {
        if v.len() > PAGE_SIZE as usize {
            note(Event::overflow_large_read);
        }
        assert!(
            self.stored.get(key).is_some_and(|s| s.contains(v)),
            "{what}: key {:?} gave a value of {} bytes never stored under it",
            String::from_utf8_lossy(key),
            v.len()
        );
    }

    /// File offsets of the large values' references, in page order.
    fn references(&self) -> Vec<u64> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; PAGE_SIZE as usize];
        for page in 0..u64::from(self.num_pages) {
            let at = self.pages + page * u64::from(PAGE_SIZE);
            if self.raw.read_exact_at(&mut buf, at).is_err() {
                continue;
            }
            let _ = PageView::new(&buf).for_each_entry(|e| {
                if e.flags & FLAG_OVERFLOW != 0 && e.value.len() == OVERFLOW_REF_SIZE {
                    let off = e.value.as_ptr() as usize - buf.as_ptr() as usize;
                    out.push(at + off as u64);
                }
            });
        }
        out
    }

    fn damage(&self, d: &Damage) {
        let (np, nb) = (self.num_pages, self.blocks);
        let put = |at: u64, bytes: &[u8]| self.raw.write_all_at(bytes, at).expect("write");
        match d {
            Damage::TableWord(i, w) => {
                let at = self.table + (u64::from(*i) * 4) % self.table_len;
                put(at, &w.word(np, nb).to_ne_bytes());
            }
            Damage::TableByte(i, b) => put(self.table + u64::from(*i) % self.table_len, &[*b]),
            Damage::Area(at, bytes) => {
                let area_len = u64::from(nb) * BLOCK;
                let at = u64::from(*at) % area_len;
                let n = bytes.len().min((area_len - at) as usize).min(256);
                put(self.area + at, &bytes[..n]);
            }
            Damage::RefWord(n, i, w) => {
                let refs = self.references();
                if !refs.is_empty() {
                    note(Event::overflow_ref_damaged);
                    let at = refs[usize::from(*n) % refs.len()] + u64::from(i % 6) * 4;
                    put(at, &w.word(np, nb).to_ne_bytes());
                }
            }
            Damage::RefByte(n, i, b) => {
                let refs = self.references();
                if !refs.is_empty() {
                    note(Event::overflow_ref_damaged);
                    let at = refs[usize::from(*n) % refs.len()] + u64::from(*i) % 24;
                    put(at, &[*b]);
                }
            }
            Damage::RefBlocksOf(to, from) => {
                let refs = self.references();
                if !refs.is_empty() {
                    note(Event::overflow_ref_damaged);
                    let from = refs[usize::from(*from) % refs.len()];
                    let to = refs[usize::from(*to) % refs.len()];
                    let mut blocks = [0u8; 8];
                    self.raw.read_exact_at(&mut blocks, from).expect("read");
                    put(to, &blocks);
                }
            }
        }
    }

    fn op(&mut self, op: &Op) {
        match op {
            Op::Get(k) => {
                let k = key(*k);
                if let Ok(Some(v)) = self.cache.get(&k) {
                    self.assert_stored(&k, &v, "get");
                }
            }
            Op::GetWith(k) => {
                let k = key(*k);
                if let Ok(Some(v)) = self.cache.get_with(&k, |v| v.to_vec()) {
                    self.assert_stored(&k, &v, "get_with");
                }
            }
            Op::Set(k, sel) => {
                let k = key(*k);
                let v = self.new_value(&k, *sel);
                let _ = self.cache.set(&k, &v);
            }
            Op::Remove(k) => {
                let _ = self.cache.remove(&key(*k));
            }
            Op::Update(k, which, sel) => {
                let k = key(*k);
                let new = self.new_value(&k, *sel);
                let mut seen = None;
                let got = self.cache.update(&k, |old| {
                    seen = old.map(<[u8]>::to_vec);
                    match which % 3 {
                        0 => Update::Set(new),
                        1 => Update::Keep,
                        _ => Update::Remove,
                    }
                });
                if let Some(old) = seen {
                    self.assert_stored(&k, &old, "update's closure");
                }
                if let Ok(Some(v)) = got {
                    self.assert_stored(&k, &v, "update");
                }
            }
            Op::Iter => {
                for (k, e) in self.cache.iter().flatten() {
                    self.assert_stored(&k, &e.value, "iter");
                }
            }
            Op::Check => {
                let _ = self.cache.check_overflow();
            }
            Op::Reclaim => self.reclaim_and_account(),
            Op::Stats => {
                if let Ok(s) = self.cache.stats() {
                    assert!(s.overflow_used_bytes <= s.overflow_bytes, "{s:?}");
                    assert_eq!(s.overflow_bytes, u64::from(self.blocks) * BLOCK, "{s:?}");
                }
            }
            Op::Damage(d) => self.damage(d),
        }
    }

    /// `reclaim_overflow`, then: `check_overflow` finds nothing, every entry reads whole and
    /// was stored under its key, and the blocks held are what the live large values need.
    fn reclaim_and_account(&self) {
        if self.cache.reclaim_overflow().expect("reclaim_overflow") > 0 {
            note(Event::overflow_reclaimed);
        }
        let (problems, unreferenced) = self.cache.check_overflow().expect("check_overflow");
        assert!(
            problems.is_empty() && unreferenced == 0,
            "after reclaim_overflow: {problems:?}, {unreferenced} blocks unreferenced"
        );
        let max_entry = self.cache.max_entry_size();
        let mut need = 0;
        for item in self.cache.iter() {
            let (k, e) = item.expect("an entry after reclaim_overflow");
            self.assert_stored(&k, &e.value, "iter after reclaim_overflow");
            if (24 + k.len() + e.value.len()).next_multiple_of(4) > max_entry {
                need += (e.value.len() as u64).div_ceil(BLOCK) * BLOCK;
                note(Event::overflow_final_large_entries);
            }
        }
        let used = self.cache.stats().expect("stats").overflow_used_bytes;
        assert_eq!(used, need, "after reclaim_overflow: held vs needed bytes");
    }
}

/// Decodes and runs one input.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mut t = Target::new(&input);
    for (k, sel) in &input.setup {
        let k = key(*k);
        let v = t.new_value(&k, *sel);
        let _ = t.cache.set(&k, &v);
    }
    for d in &input.damage {
        t.damage(d);
    }
    for op in &input.ops {
        t.op(op);
    }
    t.reclaim_and_account();
}

/// The decoded input, for `examples/replay.rs`.
pub fn describe(data: &[u8]) -> String {
    match Input::arbitrary_take_rest(Unstructured::new(data)) {
        Ok(input) => format!("{input:#?}"),
        Err(e) => format!("undecodable ({e}): nothing runs"),
    }
}
