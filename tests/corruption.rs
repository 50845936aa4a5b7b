//! On-disk damage: random bytes over whole pages, page headers, slot words and entry fields,
//! the native busy markers and file header, truncated and grown files. Nothing may panic,
//! damaged pages are reset (and counted), values in other pages keep their data, no value is
//! returned that was not stored for its key, and a bad file header is a clear error that
//! leaves the file untouched.
//!
//! The file geometry constants come from `common` (copied from src/store/header.rs and
//! src/page/format.rs).

mod common;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use common::*;
use fastmmap::{Cache, Error, Layout};

const NUM_PAGES: u32 = 8;
const PAGE_SIZE: u32 = 16384;
const KEYS: usize = 80;

fn key_name(i: usize) -> Vec<u8> {
    format!("corrupt-{i:04}").into_bytes()
}

fn builder(path: &Path, layout: Layout) -> fastmmap::CacheBuilder {
    Cache::builder()
        .path(path)
        .layout(layout)
        .num_pages(NUM_PAGES)
        .page_size(PAGE_SIZE)
}

fn word(buf: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        buf.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// A live entry of a page, as parsed from the file by the test itself.
#[derive(Debug)]
struct Live {
    slot: usize,
    off: usize,
    key: Vec<u8>,
    key_len: usize,
    val_len: usize,
}

/// The reachable entries of a (valid) page image.
fn parse_live(page: &[u8]) -> Vec<Live> {
    let num_slots = word(page, 4).unwrap_or(0) as usize;
    let free_data = word(page, 16).unwrap_or(0) as usize;
    let mut out = Vec::new();
    for slot in 0..num_slots {
        let Some(w) = word(page, PAGE_HEADER_SIZE + 4 * slot) else {
            break;
        };
        if w <= 1 {
            continue;
        }
        let off = slot_offset(page, w);
        let (Some(key_len), Some(val_len)) = (word(page, off + 16), word(page, off + 20)) else {
            continue;
        };
        let (key_len, val_len) = (key_len as usize, val_len as usize);
        if off + ENTRY_HEADER_SIZE + key_len + val_len > free_data {
            continue;
        }
        let key = page[off + ENTRY_HEADER_SIZE..off + ENTRY_HEADER_SIZE + key_len].to_vec();
        out.push(Live {
            slot,
            off,
            key,
            key_len,
            val_len,
        });
    }
    out
}

/// Keys whose stored value a write of page bytes `lo..hi` changed: the value bytes themselves,
/// or the flags and val_len words that say how to read them. Nothing in the format can tell
/// such a value from the original, so the test does not ask the crate to.
fn tainted_by(live: &[Live], lo: usize, hi: usize) -> HashSet<Vec<u8>> {
    let overlaps = |a: usize, b: usize| lo < b && a < hi;
    live.iter()
        .filter(|e| {
            let value = e.off + ENTRY_HEADER_SIZE + e.key_len;
            overlaps(e.off + 12, e.off + 16)
                || overlaps(e.off + 20, e.off + 24)
                || overlaps(value, value + e.val_len)
        })
        .map(|e| e.key.clone())
        .collect()
}

/// One cache with known contents, and a raw descriptor to damage its file with.
struct Fixture {
    layout: Layout,
    path: PathBuf,
    cache: Cache,
    raw: File,
    /// The value each key holds.
    values: HashMap<Vec<u8>, Vec<u8>>,
    /// The page each key lives in.
    page_of: HashMap<Vec<u8>, u32>,
    seq: u64,
    _dir: tempfile::TempDir,
}

/// What a damage did, and what the checks may then expect.
struct Damage {
    page: u32,
    what: String,
    /// Keys whose value bytes (or value length / flags) were overwritten.
    tainted: HashSet<Vec<u8>>,
    /// The page header cannot pass validation any more: the page must be reset.
    must_reset: bool,
}

impl Fixture {
    /// Cache::FastMmap's format has no checksums, and its hash moves little when one bit of a
    /// key changes: a flipped key bit can leave an entry consistent with its page (as a
    /// `multi_set` page-key entry: a prefix before a '-' that hashes to this page) and with its
    /// slot hash. Nothing can tell that from a stored key. Allowed for exactly that: a key
    /// one bit away from a stored key of the damaged page, in that layout (with `v`, its
    /// value as iterated).
    fn undetectable_key(&self, k: &[u8], v: Option<&[u8]>, in_page: &HashSet<Vec<u8>>) -> bool {
        let one_bit_off = |s: &Vec<u8>| {
            s.len() == k.len()
                && s.iter()
                    .zip(k)
                    .map(|(a, b)| (a ^ b).count_ones())
                    .sum::<u32>()
                    == 1
        };
        // The flipped key may even be another stored key (of another page): then the value
        // still names the key it was stored for, the one of this page.
        self.layout == Layout::FastMmap
            && in_page.iter().any(|s| {
                one_bit_off(s)
                    && (!self.values.contains_key(k)
                        || v.is_some_and(|v| check_value(s, v).is_ok()))
            })
    }

    fn new(layout: Layout) -> Fixture {
        let dir = temp_dir();
        let path = dir.path().join("corrupt");
        let cache = builder(&path, layout).open().expect("open");
        let raw = raw_file(&path);
        let page_of = (0..KEYS)
            .map(|i| (key_name(i), key_page(layout, &key_name(i), NUM_PAGES)))
            .collect();
        Fixture {
            layout,
            path,
            cache,
            raw,
            values: HashMap::new(),
            page_of,
            seq: 0,
            _dir: dir,
        }
    }

    /// Whether `magic` is a page's in this fixture's layout: Cache::FastMmap's pages carry
    /// only Perl's magic; native pages either.
    fn is_magic(&self, magic: u32) -> bool {
        match self.layout {
            Layout::Native => is_page_magic(magic),
            _ => magic == PAGE_MAGIC,
        }
    }

    fn page_off(&self, page: u32) -> u64 {
        page_offset(self.layout, NUM_PAGES, PAGE_SIZE, page)
    }

    fn page_bytes(&self, page: u32) -> Vec<u8> {
        read_at(&self.raw, self.page_off(page), PAGE_SIZE as usize)
    }

    /// Empties the cache and stores a fresh value of random length under every key.
    fn populate(&mut self, rng: &mut Rng) {
        self.cache.clear().expect("clear");
        self.values.clear();
        for i in 0..KEYS {
            let key = key_name(i);
            self.seq += 1;
            let v = make_value(&key, self.seq, rng.range(0, 240));
            assert!(self.cache.set(&key, &v).expect("set"));
            self.values.insert(key, v);
        }
        // The test's idea of where keys live must be the crate's: count entries per page.
        let stats = self.cache.stats().expect("stats");
        for page in 0..NUM_PAGES {
            let expected = self.page_of.values().filter(|&&p| p == page).count() as u32;
            assert_eq!(
                stats.pages[page as usize].entries, expected,
                "{:?}: keys in page {page}",
                self.layout
            );
        }
        for (k, v) in &self.values {
            assert_eq!(
                self.cache.get(k).expect("get").as_ref(),
                Some(v),
                "populate: no eviction expected"
            );
        }
    }

    fn keys_in(&self, page: u32) -> Vec<Vec<u8>> {
        let mut keys: Vec<_> = self
            .page_of
            .iter()
            .filter(|&(_, &p)| p == page)
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    /// Damages one page in a random way (see the match arms), through the file.
    fn damage(&self, rng: &mut Rng) -> Damage {
        let page = rng.below(u64::from(NUM_PAGES)) as u32;
        let base = self.page_off(page);
        let image = self.page_bytes(page);
        let live = parse_live(&image);
        let num_slots = word(&image, 4).unwrap_or(89) as usize;
        let free_data = word(&image, 16).unwrap_or(PAGE_SIZE) as usize;
        let ps = PAGE_SIZE as usize;
        let mut tainted = HashSet::new();
        let mut must_reset = false;
        let kinds = if self.layout == Layout::Native { 9 } else { 7 };
        let what = match rng.below(kinds) {
            0 => {
                let mut bytes = rng.bytes(ps);
                if word(&bytes, 0).is_some_and(is_page_magic) {
                    bytes[0] ^= 1;
                }
                write_at(&self.raw, base, &bytes);
                must_reset = true;
                "random bytes over the whole page".to_string()
            }
            1 => {
                let mut bytes = rng.bytes(PAGE_HEADER_SIZE);
                if word(&bytes, 0).is_some_and(is_page_magic) {
                    bytes[0] ^= 1;
                }
                write_at(&self.raw, base, &bytes);
                must_reset = true;
                "random bytes over the page header".to_string()
            }
            2 => {
                // One header word: magic, slot counts, free_data / free_bytes, statistics.
                let w = rng.below(8) as usize;
                let old = word(&image, 4 * w).unwrap_or(0);
                let new = match rng.below(4) {
                    0 => rng.next_u32(),
                    1 => old.wrapping_add(rng.range(1, 9) as u32),
                    2 => old.wrapping_sub(rng.range(1, 9) as u32),
                    _ => [0, 1, u32::MAX, PAGE_SIZE][rng.range(0, 4)],
                };
                write_u32(&self.raw, base + 4 * w as u64, new);
                must_reset = w == 0 && !self.is_magic(new);
                format!("header word {w}: {old:#x} -> {new:#x}")
            }
            3 => {
                // One slot word: empty, deleted, a random offset, a plausible offset into the
                // data area, another slot's entry, or a neighbour of its own entry.
                let slot = rng.range(0, num_slots.max(1));
                let off = PAGE_HEADER_SIZE + 4 * slot;
                let old = word(&image, off).unwrap_or(0);
                let other = live
                    .get(rng.range(0, live.len().max(1)))
                    .map_or(0, |e| e.off as u32);
                let new = match rng.below(7) {
                    0 => 0,
                    1 => 1,
                    2 => rng.next_u32(),
                    3 => {
                        (rng.range(
                            free_data.min(PAGE_HEADER_SIZE + 4 * num_slots),
                            free_data.max(1),
                        ) & !3) as u32
                    }
                    4 => other,
                    5 => old.wrapping_add(4 * rng.range(1, 8) as u32),
                    _ => old.wrapping_sub(4 * rng.range(1, 8) as u32),
                };
                write_u32(&self.raw, base + off as u64, new);
                format!("slot {slot}: {old:#x} -> {new:#x}")
            }
            4 if !live.is_empty() => {
                // One word of an entry header.
                let e = &live[rng.range(0, live.len())];
                let field = rng.below(6) as usize;
                let old = word(&image, e.off + 4 * field).unwrap_or(0);
                let new = match rng.below(4) {
                    0 => rng.next_u32(),
                    1 => old.wrapping_add(rng.range(1, 9) as u32),
                    2 => old.wrapping_sub(rng.range(1, 9) as u32),
                    _ => [0, 1, u32::MAX, 0x0800_0000, 0x1000_0000][rng.range(0, 5)],
                };
                write_u32(&self.raw, base + (e.off + 4 * field) as u64, new);
                tainted = tainted_by(&live, e.off + 4 * field, e.off + 4 * field + 4);
                let names = [
                    "last_access",
                    "expire_on",
                    "slot_hash",
                    "flags",
                    "key_len",
                    "val_len",
                ];
                format!(
                    "{} of {:?} (slot {}): {old:#x} -> {new:#x}",
                    names[field],
                    String::from_utf8_lossy(&e.key),
                    e.slot
                )
            }
            5 | 4 => {
                // A run of random bytes, usually inside the used part of the page.
                let lo = if rng.chance(70) {
                    rng.range(0, free_data.max(1))
                } else {
                    rng.range(0, ps)
                };
                let hi = (lo + rng.range(1, 65)).min(ps);
                let bytes = rng.bytes(hi - lo);
                write_at(&self.raw, base + lo as u64, &bytes);
                tainted = tainted_by(&live, lo, hi);
                must_reset =
                    lo < 4 && !word(&self.page_bytes(page), 0).is_some_and(|m| self.is_magic(m));
                format!("random bytes at {lo}..{hi}")
            }
            6 => {
                let at = if rng.chance(70) {
                    rng.range(0, free_data.max(1))
                } else {
                    rng.range(0, ps)
                };
                let bit = rng.below(8) as u8;
                let mut b = read_at(&self.raw, base + at as u64, 1);
                b[0] ^= 1 << bit;
                write_at(&self.raw, base + at as u64, &b);
                tainted = tainted_by(&live, at, at + 1);
                must_reset = at < 4;
                format!("bit {bit} of byte {at}")
            }
            7 => {
                // Native: a busy marker left set, as by a process killed mid-change.
                let v = if rng.chance(50) {
                    1
                } else {
                    rng.next_u32() | 1
                };
                write_u32(&self.raw, busy_marker_offset(page), v);
                must_reset = true;
                format!("busy marker := {v:#x}")
            }
            _ => {
                // Native: garbage in the reset counter (statistics only).
                let v = rng.next_u32();
                write_u32(&self.raw, reset_counter_offset(page), v);
                format!("reset counter := {v:#x}")
            }
        };
        Damage {
            page,
            what,
            tainted,
            must_reset,
        }
    }

    /// Everything a user can do still works and tells the truth after `d`.
    fn check_after(&mut self, d: &Damage, resets_before: &[u64], rng: &mut Rng) {
        let ctx = format!("{:?}, page {}, {}", self.layout, d.page, d.what);
        let in_page: HashSet<Vec<u8>> = self.keys_in(d.page).into_iter().collect();
        let check_read = |k: &[u8], got: Option<&[u8]>, via: &str| {
            let want = &self.values[k];
            match got {
                Some(v) if v == &want[..] => {
                    assert!(
                        !(d.must_reset && in_page.contains(k)),
                        "{ctx}: {via}: {k:?} survived a reset"
                    );
                }
                Some(v) => {
                    assert!(
                        in_page.contains(k) && d.tainted.contains(k),
                        "{ctx}: {via}: wrong value for {:?}: {}",
                        String::from_utf8_lossy(k),
                        check_value(k, v)
                            .err()
                            .unwrap_or_else(|| "a value stored earlier".into())
                    );
                }
                None => assert!(
                    in_page.contains(k),
                    "{ctx}: {via}: {:?} in an undamaged page vanished",
                    String::from_utf8_lossy(k)
                ),
            }
        };

        // Reads, key by key, in a random order (so that the first touch of the damaged page
        // is sometimes a read, sometimes something else below).
        let mut keys: Vec<Vec<u8>> = self.values.keys().cloned().collect();
        keys.sort();
        if rng.chance(50) {
            let s = self
                .cache
                .stats()
                .unwrap_or_else(|e| panic!("{ctx}: stats: {e}"));
            assert_eq!(s.pages.len(), NUM_PAGES as usize);
        }
        for k in &keys {
            let got = self
                .cache
                .get(k)
                .unwrap_or_else(|e| panic!("{ctx}: get: {e}"));
            check_read(k, got.as_deref(), "get");
            let got = self
                .cache
                .get_with(k, |v| v.to_vec())
                .unwrap_or_else(|e| panic!("{ctx}: get_with: {e}"));
            check_read(k, got.as_deref(), "get_with");
            let e = self
                .cache
                .entry(k)
                .unwrap_or_else(|e| panic!("{ctx}: entry: {e}"));
            check_read(k, e.as_ref().map(|e| &e.value[..]), "entry");
            if !in_page.contains(k) {
                assert!(
                    self.cache
                        .contains_key(k)
                        .unwrap_or_else(|e| panic!("{ctx}: contains_key: {e}"))
                );
            }
        }

        // Iteration never yields a key that was not stored, and yields every other page's keys.
        let mut seen_elsewhere = HashSet::new();
        for item in self.cache.iter() {
            let (k, e) = item.unwrap_or_else(|e| panic!("{ctx}: iter: {e}"));
            // Cache::FastMmap's format has no checksums, and its hash moves little when one
            // bit of a key changes: a flipped key bit can leave an entry that is consistent
            // with its page (as a `multi_set` page-key entry: a prefix before a '-' that hashes
            // to this page) and its slot hash. Nothing can tell that from a stored key; it is
            // allowed only for exactly that: one bit of one stored key of the damaged page.
            if self.undetectable_key(&k, Some(&e.value), &in_page) {
                continue;
            }
            assert!(
                self.values.contains_key(&k),
                "{ctx}: iter yielded a key that was never stored: {:?} ({} value bytes)",
                String::from_utf8_lossy(&k),
                e.value.len()
            );
            check_read(&k, Some(&e.value), "iter");
            if !in_page.contains(&k) {
                assert!(
                    seen_elsewhere.insert(k.clone()),
                    "{ctx}: iter yielded {k:?} twice"
                );
            }
        }
        let elsewhere = keys.iter().filter(|k| !in_page.contains(*k)).count();
        assert_eq!(
            seen_elsewhere.len(),
            elsewhere,
            "{ctx}: iter missed keys of undamaged pages"
        );
        for k in self.cache.keys() {
            let k = k.unwrap_or_else(|e| panic!("{ctx}: keys: {e}"));
            assert!(
                self.values.contains_key(&k) || self.undetectable_key(&k, None, &in_page),
                "{ctx}: keys() yielded a key never stored: {k:?}"
            );
        }

        // Resets are counted for the damaged page, and only there.
        let stats = self
            .cache
            .stats()
            .unwrap_or_else(|e| panic!("{ctx}: stats: {e}"));
        for (p, ps) in stats.pages.iter().enumerate() {
            if p as u32 == d.page {
                if d.what.starts_with("reset counter") {
                    assert_eq!(
                        ps.resets,
                        u64::from(read_u32(&self.raw, reset_counter_offset(d.page)))
                    );
                    continue;
                }
                assert!(
                    ps.resets >= resets_before[p],
                    "{ctx}: reset counter went down"
                );
                if d.must_reset {
                    assert!(
                        ps.resets > resets_before[p],
                        "{ctx}: the damaged page was not reset (or not counted)"
                    );
                }
                if d.what.starts_with("busy marker") {
                    assert_eq!(
                        ps.resets,
                        resets_before[p] + 1,
                        "{ctx}: one busy marker, one reset"
                    );
                }
            } else {
                assert_eq!(
                    ps.resets, resets_before[p],
                    "{ctx}: undamaged page {p} was reset"
                );
            }
        }
        self.cache
            .purge()
            .unwrap_or_else(|e| panic!("{ctx}: purge: {e}"));

        // The damaged page takes new values and returns exactly them.
        let mut probes = self.keys_in(d.page);
        probes.truncate(4);
        for k in probes {
            self.seq += 1;
            let v = make_value(&k, self.seq, rng.range(0, 400));
            if !self
                .cache
                .set(&k, &v)
                .unwrap_or_else(|e| panic!("{ctx}: set: {e}"))
            {
                // Damaged flags can read as a tombstone (with a garbage modseq), which refuses
                // plain stores by design: then the key reads as absent, and removing the
                // tombstone makes it writable again.
                assert!(d.tainted.contains(&k), "{ctx}: set of {k:?} refused");
                assert_eq!(
                    self.cache.get(&k).expect("get"),
                    None,
                    "{ctx}: refused by a tombstone yet readable"
                );
                self.cache
                    .remove(&k)
                    .unwrap_or_else(|e| panic!("{ctx}: remove: {e}"));
                assert!(
                    self.cache.set(&k, &v).expect("set"),
                    "{ctx}: set of {k:?} refused after remove"
                );
            }
            assert_eq!(
                self.cache
                    .get(&k)
                    .unwrap_or_else(|e| panic!("{ctx}: get: {e}")),
                Some(v.clone()),
                "{ctx}: read back"
            );
            self.values.insert(k, v);
        }
        if let Some(k) = self.keys_in(d.page).into_iter().nth(4) {
            let _ = self
                .cache
                .take(&k)
                .unwrap_or_else(|e| panic!("{ctx}: take: {e}"));
            let _ = self
                .cache
                .remove(&k)
                .unwrap_or_else(|e| panic!("{ctx}: remove: {e}"));
            assert_eq!(
                self.cache.get(&k).expect("get"),
                None,
                "{ctx}: removed key still there"
            );
        }
        if d.what.starts_with("reset counter") {
            self.cache
                .reset_stats()
                .unwrap_or_else(|e| panic!("{ctx}: reset_stats: {e}"));
            assert_eq!(
                self.cache.stats().expect("stats").resets,
                0,
                "{ctx}: reset_stats"
            );
        }
        // Other pages are untouched by all that.
        for k in keys.iter().filter(|k| !in_page.contains(*k)) {
            assert_eq!(
                self.cache.get(k).expect("get").as_ref(),
                Some(&self.values[k]),
                "{ctx}: after writes"
            );
        }
    }

    fn resets(&self) -> Vec<u64> {
        self.cache
            .stats()
            .expect("stats")
            .pages
            .iter()
            .map(|p| p.resets)
            .collect()
    }
}

fn random_page_damage(layout: Layout) {
    let rounds = scaled(800, 5000);
    let seed = seed(&format!("random_page_damage_{layout:?}"));
    let mut rng = Rng::new(seed);
    let mut f = Fixture::new(layout);
    for round in 0..rounds {
        f.populate(&mut rng);
        let before = f.resets();
        let d = f.damage(&mut rng);
        f.check_after(&d, &before, &mut rng);
        if round % 25 == 0 {
            // A second handle that validates every page on open: the damaged page is either
            // clean by now or reset; everything else is intact.
            let verified = builder(&f.path, layout)
                .verify(true)
                .open()
                .expect("open with verify");
            for (k, v) in &f.values {
                if f.page_of[k] != d.page {
                    assert_eq!(
                        verified.get(k).expect("get").as_ref(),
                        Some(v),
                        "{layout:?}: after verify"
                    );
                }
            }
        }
    }
}

#[test]
fn random_page_damage_native() {
    let _serial = serial();
    random_page_damage(Layout::Native);
}

#[test]
fn random_page_damage_fastmmap() {
    let _serial = serial();
    random_page_damage(Layout::FastMmap);
}

/// Every page of one targeted kind, one after the other, on both layouts: whole pages and page
/// headers of random bytes reset exactly that page; keys elsewhere keep their values.
#[test]
fn each_page_destroyed_in_turn() {
    let _serial = serial();
    let mut rng = Rng::new(seed("each_page_destroyed_in_turn"));
    for layout in [Layout::Native, Layout::FastMmap] {
        let mut f = Fixture::new(layout);
        for page in 0..NUM_PAGES {
            for header_only in [false, true] {
                f.populate(&mut rng);
                let before = f.resets();
                let mut bytes = rng.bytes(if header_only {
                    PAGE_HEADER_SIZE
                } else {
                    PAGE_SIZE as usize
                });
                bytes[..4].copy_from_slice(&0xdead_beefu32.to_ne_bytes());
                write_at(&f.raw, f.page_off(page), &bytes);
                let what = if header_only {
                    "random page header"
                } else {
                    "random page"
                };
                let d = Damage {
                    page,
                    what: what.to_string(),
                    tainted: HashSet::new(),
                    must_reset: true,
                };
                f.check_after(&d, &before, &mut rng);
                for k in f.keys_in(page).iter().skip(4) {
                    assert_eq!(
                        f.cache.get(k).expect("get"),
                        None,
                        "{layout:?}: {k:?} survived its page's reset"
                    );
                }
            }
        }
    }
}

/// Damaged key bytes must not make `iter` pair a key with another key's value, nor invent
/// keys: `get` cannot be fooled (it compares the slot hash and the key), and `iter` must not be
/// either. Deterministic versions of what `random_page_damage_*` finds by chance.
#[test]
fn iter_never_yields_a_damaged_key() {
    let _serial = serial();
    let mut rng = Rng::new(seed("iter_never_yields_a_damaged_key"));
    for layout in [Layout::Native, Layout::FastMmap] {
        for damage in [
            "rename to another stored key",
            "shorten key_len",
            "lengthen key_len",
        ] {
            let mut f = Fixture::new(layout);
            f.populate(&mut rng);
            // An entry whose key "corrupt-00ab" can be renamed to another stored key by
            // changing its last digit.
            let (page, e) = (0..NUM_PAGES)
                .flat_map(|p| {
                    parse_live(&f.page_bytes(p))
                        .into_iter()
                        .map(move |e| (p, e))
                })
                .find(|(_, e)| e.key.ends_with(b"1"))
                .expect("a key ending in 1");
            let base = f.page_off(page) + e.off as u64;
            let renamed = {
                let mut k = e.key.clone();
                *k.last_mut().expect("key") = b'2';
                k
            };
            let shown = match damage {
                "rename to another stored key" => {
                    write_at(
                        &f.raw,
                        base + (ENTRY_HEADER_SIZE + e.key_len - 1) as u64,
                        b"2",
                    );
                    renamed.clone()
                }
                "shorten key_len" => {
                    write_u32(&f.raw, base + 16, e.key_len as u32 - 1);
                    e.key[..e.key_len - 1].to_vec()
                }
                _ => {
                    write_u32(&f.raw, base + 16, e.key_len as u32 + 4);
                    read_at(&f.raw, base + ENTRY_HEADER_SIZE as u64, e.key_len + 4)
                }
            };
            let ctx = format!(
                "{layout:?}, {damage}: {:?} -> {:?}",
                String::from_utf8_lossy(&e.key),
                String::from_utf8_lossy(&shown)
            );
            // get is not fooled.
            assert_eq!(
                f.cache.get(&renamed).expect("get").as_ref(),
                Some(&f.values[&renamed]),
                "{ctx}: get"
            );
            assert_eq!(
                f.cache.get(&shown).expect("get").as_ref(),
                f.values.get(&shown).filter(|_| shown == renamed),
                "{ctx}: get"
            );
            // Neither may iter be.
            for item in f.cache.iter() {
                let (k, entry) = item.expect("iter");
                assert!(
                    f.values.contains_key(&k),
                    "{ctx}: iter yielded a key never stored: {:?}",
                    String::from_utf8_lossy(&k)
                );
                assert_eq!(
                    entry.value,
                    f.values[&k],
                    "{ctx}: iter paired {:?} with another key's value",
                    String::from_utf8_lossy(&k)
                );
            }
            for k in f.cache.keys() {
                let k = k.expect("keys");
                assert!(
                    f.values.contains_key(&k),
                    "{ctx}: keys() yielded a key never stored: {:?}",
                    String::from_utf8_lossy(&k)
                );
            }
        }
    }
}

/// A writer that ignores the locks can change a page after the crate validated it on locking.
/// This test plays that writer from inside `update` / `get_with` closures (the page lock is
/// held and the header already checked): the crate may reset the page or report it corrupt,
/// but must not panic, and the cache stays usable.
#[test]
fn bytes_changed_under_the_lock_cause_no_panic() {
    let _serial = serial();
    let mut rng = Rng::new(seed("bytes_changed_under_the_lock_cause_no_panic"));
    for layout in [Layout::Native, Layout::FastMmap] {
        let dir = temp_dir();
        let path = dir.path().join("under-lock");
        let cache = Cache::builder()
            .path(&path)
            .layout(layout)
            .num_pages(1)
            .page_size(4096)
            .open()
            .expect("open");
        let raw = raw_file(&path);
        let base = page_offset(layout, 1, 4096, 0);

        // First a fixed case: a page whose only entry was removed (a deleted slot, its bytes
        // still in use), then, under the lock, free_data moved into the slot table and
        // free_bytes zeroed, so that the store has to evict.
        cache
            .set(b"gone", &make_value(b"gone", 0, 300))
            .expect("set");
        assert!(cache.remove(b"gone").expect("remove"));
        let fixed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cache.update(b"new", |_| {
                write_u32(&raw, base + 16, 100); // free_data, inside the 89-slot table
                write_u32(&raw, base + 20, 0); // free_bytes
                fastmmap::Update::Set(b"value".to_vec())
            })
        }));
        match fixed {
            Err(_) => panic!(
                "{layout:?}: the crate panicked on a header changed under its lock (message above)"
            ),
            Ok(Ok(_) | Err(Error::PageCorrupt { .. })) => {}
            Ok(Err(e)) => panic!("{layout:?}: unexpected error {e:?}"),
        }
        assert!(cache.set(b"new", b"again").expect("set"));
        assert_eq!(cache.get(b"new").expect("get"), Some(b"again".to_vec()));

        for round in 0..scaled(1500, 15000) {
            for _ in 0..rng.range(0, 12) {
                let k = key_name(rng.range(0, 40));
                if rng.chance(30) {
                    cache.remove(&k).expect("remove");
                } else {
                    cache
                        .set(&k, &make_value(&k, 0, rng.range(0, 400)))
                        .expect("set");
                }
            }
            // What to write: one header word (often a value just past a bound), one slot
            // word, or a run of random bytes in the header and slot table.
            let (at, bytes) = match rng.below(3) {
                0 => {
                    // Header words 1..6 (num_slots, free_slots, old_slots, free_data,
                    // free_bytes), one or several of them.
                    let mut words = read_at(&raw, base, PAGE_HEADER_SIZE);
                    for _ in 0..rng.range(1, 4) {
                        let w = rng.range(1, 6);
                        let old = word(&words, 4 * w).expect("header word");
                        let v = match rng.below(5) {
                            0 => rng.next_u32(),
                            1 => old.wrapping_add(rng.range(1, 9) as u32),
                            2 => old.wrapping_sub(rng.range(1, 9) as u32),
                            3 => rng.range(0, 400) as u32,
                            _ => [0, 1, 88, 89, 90, 179, 4096, u32::MAX][rng.range(0, 8)],
                        };
                        words[4 * w..4 * w + 4].copy_from_slice(&v.to_ne_bytes());
                    }
                    (4, words[4..24].to_vec())
                }
                1 => {
                    let slot = rng.range(0, 89) as u64;
                    let v = if rng.chance(50) {
                        rng.next_u32()
                    } else {
                        (rng.range(0, 4096) & !3) as u32
                    };
                    (PAGE_HEADER_SIZE as u64 + 4 * slot, v.to_ne_bytes().to_vec())
                }
                _ => {
                    let lo = rng.range(4, 400) as u64;
                    let len = rng.range(1, 24);
                    (lo, rng.bytes(len))
                }
            };
            let damage = || write_at(&raw, base + at, &bytes);
            let key = key_name(rng.range(0, 40));
            let value = make_value(&key, round as u64, rng.range(0, 3500));
            let op = rng.below(3);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match op {
                0 => cache
                    .update(&key, |_| {
                        damage();
                        fastmmap::Update::Set(value.clone())
                    })
                    .map(|_| ()),
                1 => cache
                    .update(&key, |_| {
                        damage();
                        fastmmap::Update::Remove
                    })
                    .map(|_| ()),
                _ => cache.get_with(&key, |_| damage()).map(|_| ()),
            }));
            let what = format!(
                "{layout:?}, round {round}, op {op}: {:?} written at page offset {at}",
                bytes
            );
            match outcome {
                Err(_) => panic!("{what}: the crate panicked (message above)"),
                Ok(Ok(()) | Err(Error::PageCorrupt { .. })) => {}
                Ok(Err(e)) => panic!("{what}: unexpected error {e:?}"),
            }
            // Usable afterwards: a store reads back exactly.
            let v = make_value(&key, round as u64 + 1, rng.range(0, 500));
            assert!(
                cache
                    .set(&key, &v)
                    .unwrap_or_else(|e| panic!("{what}: set: {e}")),
                "{what}: set refused"
            );
            assert_eq!(
                cache
                    .get(&key)
                    .unwrap_or_else(|e| panic!("{what}: get: {e}")),
                Some(v),
                "{what}: read back"
            );
            cache
                .stats()
                .unwrap_or_else(|e| panic!("{what}: stats: {e}"));
            cache
                .purge()
                .unwrap_or_else(|e| panic!("{what}: purge: {e}"));
        }
    }
}

#[test]
fn busy_marker_resets_exactly_that_page() {
    let _serial = serial();
    let mut rng = Rng::new(seed("busy_marker_resets_exactly_that_page"));
    let mut f = Fixture::new(Layout::Native);
    for page in 0..NUM_PAGES {
        f.populate(&mut rng);
        let before = f.resets();
        write_u32(&f.raw, busy_marker_offset(page), 1);
        let d = Damage {
            page,
            what: "busy marker := 1".into(),
            tainted: HashSet::new(),
            must_reset: true,
        };
        f.check_after(&d, &before, &mut rng);
        assert_eq!(
            read_u32(&f.raw, busy_marker_offset(page)),
            0,
            "the marker is cleared by the reset"
        );
        assert_eq!(f.resets()[page as usize], before[page as usize] + 1);
    }
    // Another process sees the same reset counters: they live in the file.
    let total: u64 = f.resets().iter().sum();
    assert!(total >= u64::from(NUM_PAGES));
    let mut kids = Children::new();
    {
        let cache = f.cache.clone();
        kids.spawn(move || {
            let s = cache.stats().map_err(|e| format!("stats: {e}"))?;
            if s.resets == total {
                Ok(())
            } else {
                Err(format!("child sees {} resets, parent {total}", s.resets))
            }
        });
    }
    kids.wait_all_ok();
    f.cache.reset_stats().expect("reset_stats");
    assert_eq!(f.cache.stats().expect("stats").resets, 0);
}

/// A page of a Cache::FastMmap-layout file that carries the native magic of tagged slot words
/// (Perl would take those words for offsets) is damage: the first lock resets it, to Perl's
/// magic, and only it; a read-only handle reads it as empty and leaves it alone; `validate`
/// names it.
#[test]
fn native_page_magic_in_a_fastmmap_file_resets_that_page() {
    let _serial = serial();
    let mut rng = Rng::new(seed(
        "native_page_magic_in_a_fastmmap_file_resets_that_page",
    ));
    let mut f = Fixture::new(Layout::FastMmap);
    for page in 0..NUM_PAGES {
        f.populate(&mut rng);
        let before = f.resets();
        let keys = f.keys_in(page);
        write_u32(&f.raw, f.page_off(page), PAGE_MAGIC_TAGGED);
        let reader = builder(&f.path, Layout::FastMmap)
            .read_only(true)
            .open()
            .expect("open read-only");
        for k in &keys {
            assert_eq!(reader.get(k).expect("read-only get"), None, "page {page}");
        }
        assert_eq!(
            read_u32(&f.raw, f.page_off(page)),
            PAGE_MAGIC_TAGGED,
            "a read-only handle changes nothing"
        );
        drop(reader);
        if page % 2 == 1 {
            let report = f.cache.validate().expect("validate");
            assert!(
                format!("{report:?}").contains("Cache::FastMmap's layout"),
                "page {page}: {report:?}"
            );
        }
        let d = Damage {
            page,
            what: "native tagged magic in a Cache::FastMmap page".into(),
            tainted: HashSet::new(),
            must_reset: true,
        };
        f.check_after(&d, &before, &mut rng);
        assert_eq!(
            read_u32(&f.raw, f.page_off(page)),
            PAGE_MAGIC,
            "page {page}"
        );
        assert_eq!(f.resets()[page as usize], before[page as usize] + 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Whole files: headers, sizes, random contents

/// A native file with known contents, closed; returns its path and bytes.
fn closed_native_file(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("native");
    {
        let cache = builder(&path, Layout::Native).open().expect("create");
        for i in 0..KEYS {
            let k = key_name(i);
            cache.set(&k, &make_value(&k, i as u64, 50)).expect("set");
        }
    }
    let bytes = std::fs::read(&path).expect("read file");
    (path, bytes)
}

/// Opens `path` in several ways (plain, with `verify`, with `reset`, with and without the
/// geometry): every one must fail with an error `ok` accepts, and leave the file as it was.
fn assert_refused(path: &Path, layout: Layout, ok: impl Fn(&str, &Error) -> bool, what: &str) {
    let before = std::fs::read(path).expect("read");
    let attempts: [(&str, fastmmap::CacheBuilder); 4] = [
        ("plain", Cache::builder().path(path).layout(layout)),
        ("geometry", builder(path, layout)),
        ("verify", builder(path, layout).verify(true)),
        ("reset", builder(path, layout).reset(true)),
    ];
    for (how, b) in attempts {
        match b.open() {
            Ok(c) => panic!("{what}: {how} open of a {layout:?} file succeeded: {c:?}"),
            Err(e) => assert!(
                ok(how, &e),
                "{what}: {how} open gave an unexpected error: {e:?}"
            ),
        }
        assert!(
            std::fs::read(path).expect("read") == before,
            "{what}: {how} open changed the file"
        );
    }
}

/// Which errors an open attempt (named "plain", "geometry", "verify" or "reset") may give.
type Accept = dyn Fn(&str, &Error) -> bool;

fn bad_header(_how: &str, e: &Error) -> bool {
    matches!(e, Error::BadHeader { .. } | Error::WrongLayout { .. })
}

#[test]
fn damaged_native_file_header_is_refused_untouched() {
    let _serial = serial();
    let mut rng = Rng::new(seed("damaged_native_file_header_is_refused_untouched"));
    let dir = temp_dir();
    let (path, original) = closed_native_file(dir.path());
    // Bytes 0..64: magic, version, geometry, hash and lock kinds, byte order, reserved
    // bytes and the checksum over them.
    for _ in 0..scaled(60, 600) {
        let mut bytes = original.clone();
        for _ in 0..rng.range(1, 6) {
            let at = rng.range(0, NATIVE_CHECKSUM_OFFSET + 8);
            bytes[at] ^= rng.range(1, 256) as u8;
        }
        if bytes == original {
            // Two flips of one byte by the same mask cancel out: nothing was damaged.
            continue;
        }
        std::fs::write(&path, &bytes).expect("write");
        let what = format!("header bytes {:?}", &bytes[..64]);
        assert_refused(&path, Layout::Native, bad_header, &what);
    }
    std::fs::write(&path, &original).expect("restore");
    let cache = builder(&path, Layout::Native)
        .verify(true)
        .open()
        .expect("the restored file opens");
    let k = key_name(3);
    check_value(&k, &cache.get(&k).expect("get").expect("value")).expect("intact");
}

/// Rewrites one u32 field of the native header and recomputes the checksum, as a writer of a
/// different (or buggy) version would.
fn with_field(original: &[u8], offset: usize, value: u32) -> Vec<u8> {
    let mut bytes = original.to_vec();
    bytes[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..NATIVE_CHECKSUM_OFFSET]);
    bytes[NATIVE_CHECKSUM_OFFSET..NATIVE_CHECKSUM_OFFSET + 8].copy_from_slice(&sum.to_ne_bytes());
    bytes
}

#[test]
fn well_formed_but_wrong_native_headers_are_refused_untouched() {
    let _serial = serial();
    let dir = temp_dir();
    let (path, original) = closed_native_file(dir.path());
    // Field offsets of src/store/header.rs: version 8, header_size 12, page_size 16,
    // num_pages 20, start_slots 24, hash_kind 28, lock_kind 32, byte order 36, overflow_blocks
    // 40, block_size 44, max_value_size 48, journal_size 52.
    let is_bad = |_: &str, e: &Error| matches!(e, Error::BadHeader { .. });
    // Without a requested geometry the size is wrong; with one, the geometry is.
    let is_size = |how: &str, e: &Error| match how {
        "plain" => matches!(e, Error::WrongSize { .. }),
        _ => matches!(e, Error::GeometryMismatch { .. }),
    };
    let is_size_only = |_: &str, e: &Error| matches!(e, Error::WrongSize { .. });
    // The file has the default overflow area: an eighth of its pages' bytes.
    let blocks = (native_default_area(NUM_PAGES, PAGE_SIZE) / NATIVE_OVERFLOW_BLOCK_SIZE) as u32;
    assert!(blocks > 0);
    let area = blocks * NATIVE_OVERFLOW_BLOCK_SIZE as u32;
    let cases: [(&str, usize, u32, &Accept); 21] = [
        ("version 4", 8, 4, &is_bad),
        ("version 5", 8, 5, &is_bad),
        ("version 6", 8, 6, &is_bad),
        ("version 7", 8, 7, &is_bad),
        ("version 9", 8, 9, &is_bad),
        ("header_size 8192", 12, 8192, &is_bad),
        ("page_size 5000", 16, 5000, &is_bad),
        ("page_size 0", 16, 0, &is_bad),
        ("page_size 32768", 16, 32768, &is_size),
        ("num_pages 0", 20, 0, &is_bad),
        ("num_pages 9", 20, 9, &is_size),
        ("start_slots 10", 24, 10, &is_bad),
        ("hash_kind 9", 28, 9, &is_bad),
        ("lock_kind 0", 32, 0, &is_bad),
        ("byte order", 36, 0x0403_0201, &is_bad),
        ("overflow_blocks 0 (with a block size)", 40, 0, &is_bad),
        ("block_size 8192", 44, 8192, &is_bad),
        ("max_value_size 0", 48, 0, &is_bad),
        ("max_value_size over the area", 48, area + 1, &is_bad),
        ("journal_size not the page's", 52, 4096, &is_bad),
        // The size a journal of this page size has, in a file made without one.
        (
            "journal_size without its region",
            52,
            PAGE_SIZE + 4096,
            &is_size_only,
        ),
    ];
    for (what, offset, value, ok) in cases {
        std::fs::write(&path, with_field(&original, offset, value)).expect("write");
        assert_refused(&path, Layout::Native, ok, what);
    }
    std::fs::write(&path, &original).expect("restore");
    builder(&path, Layout::Native)
        .open()
        .expect("the restored file opens");

    // A file made without an area (overflow_size(0)): overflow fields alone are refused.
    let plain = dir.path().join("no-area");
    drop(
        builder(&plain, Layout::Native)
            .overflow_size(0)
            .open()
            .expect("create"),
    );
    let original = std::fs::read(&plain).expect("read");
    let cases: [(&str, usize, u32); 3] = [
        ("overflow_blocks 4 (no block size)", 40, 4),
        ("block_size without an area", 44, 4096),
        ("max_value_size without an area", 48, 9),
    ];
    for (what, offset, value) in cases {
        std::fs::write(&plain, with_field(&original, offset, value)).expect("write");
        assert_refused(&plain, Layout::Native, is_bad, what);
    }
}

#[test]
fn truncated_or_grown_files_are_refused_untouched() {
    let _serial = serial();
    let dir = temp_dir();
    let ps = u64::from(PAGE_SIZE);
    for layout in [Layout::Native, Layout::FastMmap] {
        let path = dir.path().join(format!("{layout:?}"));
        {
            let cache = builder(&path, layout).open().expect("create");
            cache.set(b"k", b"v").expect("set");
        }
        let original = std::fs::read(&path).expect("read");
        let full = original.len() as u64;
        let header = if layout == Layout::Native {
            native_header_size(NUM_PAGES, PAGE_SIZE)
        } else {
            0
        };
        let lengths = [
            0,
            1,
            7,
            31,
            64,
            127,
            128,
            4095,
            header + 1,
            header + ps,
            full - ps,
            full - 1,
            full + 1,
            full + ps,
        ];
        for len in lengths {
            let file = raw_file(&path);
            file.set_len(len).expect("set_len");
            if len > full {
                // Growing the file left it as it was, plus zeros.
            } else {
                assert_eq!(std::fs::metadata(&path).expect("stat").len(), len);
            }
            drop(file);
            // A native header cut inside its fixed part reads as "cut short" (BadHeader);
            // anything longer is a size mismatch.
            let ok = |how: &str, e: &Error| {
                matches!(e, Error::WrongSize { .. })
                    || (layout == Layout::Native && (8..128).contains(&len) && matches!(e, Error::BadHeader { .. }))
                    // Opened without a geometry, a FastMmap file is taken for the default
                    // 64 KiB pages, which page 0's header contradicts.
                    || (layout == Layout::FastMmap && how == "plain" && len >= 24 && matches!(e, Error::GeometryMismatch { .. }))
            };
            assert_refused(
                &path,
                layout,
                ok,
                &format!("{layout:?} file of {len} bytes (should be {full})"),
            );
            std::fs::write(&path, &original).expect("restore");
        }
        let cache = builder(&path, layout)
            .open()
            .expect("the restored file opens");
        assert_eq!(cache.get(b"k").expect("get"), Some(b"v".to_vec()));
    }
}

#[test]
fn files_of_the_other_layout_or_of_random_bytes() {
    let _serial = serial();
    let mut rng = Rng::new(seed("files_of_the_other_layout_or_of_random_bytes"));
    let dir = temp_dir();
    let native_len = native_header_size(NUM_PAGES, PAGE_SIZE)
        + u64::from(NUM_PAGES) * u64::from(PAGE_SIZE)
        + native_default_area(NUM_PAGES, PAGE_SIZE);
    let fastmmap_len = u64::from(NUM_PAGES) * u64::from(PAGE_SIZE);
    let wrong_layout = |_: &str, e: &Error| matches!(e, Error::WrongLayout { .. });

    // Each layout's file refused by the other, untouched.
    let (native_path, _) = closed_native_file(dir.path());
    assert_refused(
        &native_path,
        Layout::FastMmap,
        wrong_layout,
        "native file opened as FastMmap",
    );
    let fm_path = dir.path().join("fm");
    drop(
        builder(&fm_path, Layout::FastMmap)
            .open()
            .expect("create FastMmap"),
    );
    assert_refused(
        &fm_path,
        Layout::Native,
        wrong_layout,
        "FastMmap file opened as native",
    );

    // Random bytes of the native size: not a cache file.
    let random_path = dir.path().join("random");
    std::fs::write(&random_path, rng.bytes(native_len as usize)).expect("write");
    assert_refused(
        &random_path,
        Layout::Native,
        bad_header,
        "random bytes opened as native",
    );

    // Random bytes of the FastMmap size: a FastMmap file has no header, but a page 0 that is
    // neither a page nor empty shows it is not a cache, and it is refused untouched...
    std::fs::write(&random_path, rng.bytes(fastmmap_len as usize)).expect("write");
    let before = std::fs::read(&random_path).expect("read");
    for b in [
        builder(&random_path, Layout::FastMmap),
        builder(&random_path, Layout::FastMmap).read_only(true),
    ] {
        match b.open() {
            Err(Error::NotACache { page: Some(0), .. }) => {}
            other => panic!("random FastMmap-sized file: expected NotACache, got {other:?}"),
        }
        assert!(std::fs::read(&random_path).expect("read") == before);
    }
    // ...unless the caller declares it a cache: then every page fails validation, is reset
    // and counted.
    {
        let cache = builder(&random_path, Layout::FastMmap)
            .verify(true)
            .open()
            .expect("open random FastMmap file with verify");
        assert_usable_after_total_loss(&cache, "random FastMmap file");
    }

    // A valid native header over random pages (and a zeroed page table): same.
    let (path, original) = closed_native_file(dir.path());
    let header = native_header_size(NUM_PAGES, PAGE_SIZE) as usize;
    let mut bytes = original[..header].to_vec();
    bytes[NATIVE_PAGE_TABLE_OFFSET as usize..].fill(0);
    bytes.extend(rng.bytes(original.len() - header));
    std::fs::write(&path, &bytes).expect("write");
    {
        let cache = builder(&path, Layout::Native)
            .open()
            .expect("open native file with random pages");
        assert_usable_after_total_loss(&cache, "native file with random pages");
    }

    // And with a random page table too (busy markers and reset counters): no panic, usable.
    bytes[NATIVE_PAGE_TABLE_OFFSET as usize..header]
        .copy_from_slice(&rng.bytes(header - NATIVE_PAGE_TABLE_OFFSET as usize));
    std::fs::write(&path, &bytes).expect("write");
    let cache = builder(&path, Layout::Native)
        .verify(true)
        .open()
        .expect("open with random page table");
    for i in 0..KEYS {
        assert_eq!(cache.get(&key_name(i)).expect("get"), None);
    }
    cache.reset_stats().expect("reset_stats");
    assert_eq!(cache.stats().expect("stats").resets, 0);
    for i in 0..KEYS {
        let k = key_name(i);
        let v = make_value(&k, 9, 60);
        cache.set(&k, &v).expect("set");
        assert_eq!(cache.get(&k).expect("get"), Some(v));
    }
}

fn assert_usable_after_total_loss(cache: &Cache, what: &str) {
    let stats = cache
        .stats()
        .unwrap_or_else(|e| panic!("{what}: stats: {e}"));
    assert_eq!(
        stats.resets,
        u64::from(NUM_PAGES),
        "{what}: every page reset exactly once"
    );
    assert_eq!(stats.entries, 0, "{what}");
    assert_eq!(cache.iter().count(), 0, "{what}: iter");
    for i in 0..KEYS {
        let k = key_name(i);
        assert_eq!(cache.get(&k).expect("get"), None, "{what}");
        let v = make_value(&k, 1, 100);
        assert!(cache.set(&k, &v).expect("set"));
        assert_eq!(cache.get(&k).expect("get"), Some(v), "{what}: read back");
    }
    assert_eq!(cache.purge().expect("purge"), 0);
    assert_eq!(
        cache.stats().expect("stats").resets,
        u64::from(NUM_PAGES),
        "{what}: no further resets"
    );
}
