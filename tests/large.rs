//! Values larger than a page, kept in the file's overflow area (issue 24): every size from one
//! byte to the maximum, replacement, expiry and removal giving the space back, forked writers
//! and readers, writers SIGKILLed mid-write, and damaged references and blocks.
//!
//! `FASTMMAP_STRESS=long` runs more rounds and kills.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

use common::*;
use fastmmap::{Cache, CacheBuilder, Error, Expiry, Layout, ManualClock, Update};

const NUM_PAGES: u32 = 4;
const PAGE_SIZE: u32 = 16 * 1024;
const AREA: u64 = 4 << 20;
const MAX_VALUE: u32 = 1 << 20;
const BLOCK: u64 = 4096;

fn large(kind: Kind, path: &Path) -> CacheBuilder {
    kind.builder()
        .path(path)
        .num_pages(NUM_PAGES)
        .page_size(PAGE_SIZE)
        .overflow_size(AREA)
        .max_value_size(MAX_VALUE)
        .lock_timeout(Duration::from_secs(30))
}

/// Whether a value of `len` bytes under `key` goes to the overflow area.
fn overflows(cache: &Cache, key: &[u8], len: usize) -> bool {
    (24 + key.len() + len).next_multiple_of(4) > cache.max_entry_size()
}

/// Bytes of the overflow area the live large values of `cache` should hold.
fn expected_use(cache: &Cache) -> u64 {
    cache
        .iter()
        .map(|r| r.expect("entry"))
        .filter(|(k, e)| overflows(cache, k, e.value.len()))
        .map(|(_, e)| (e.value.len() as u64).div_ceil(BLOCK) * BLOCK)
        .sum()
}

fn used(cache: &Cache) -> u64 {
    cache.stats().expect("stats").overflow_used_bytes
}

#[test]
fn every_size_from_one_byte_to_the_maximum_and_one_over() {
    let _serial = serial();
    for kind in [NATIVE, ROBUST] {
        let dir = temp_dir();
        let cache = large(kind, &dir.path().join("c")).open().expect("open");
        assert_eq!(cache.max_value_size(), MAX_VALUE as usize);
        let key = b"sized";
        let page_max = cache.max_entry_size() - 24 - key.len();
        let mut sizes = vec![1, 100, 4095, 4096, 4097, 8192, 100_000, 500_001];
        sizes.extend(page_max - 4..=page_max + 5);
        sizes.push(MAX_VALUE as usize - 1);
        sizes.push(MAX_VALUE as usize);
        for (seq, &len) in sizes.iter().enumerate() {
            let value = make_value(key, seq as u64, len);
            assert!(cache.set(key, &value).expect("set"), "{kind:?} {len}");
            assert_eq!(
                cache.get(key).expect("get").as_deref(),
                Some(&value[..]),
                "{len}"
            );
            assert_eq!(
                cache.get_with(key, |v| v.len()).expect("get_with"),
                Some(value.len())
            );
            let entry = cache.entry(key).expect("entry").expect("present");
            assert_eq!(entry.value, value);
            assert!(!entry.flags.is_compressed() && entry.modseq.is_none());
            assert!(cache.contains_key(key).expect("contains"));
            // Only what the one live value needs is held: replaced values gave theirs back.
            assert_eq!(used(&cache), expected_use(&cache), "{kind:?} {len}");
        }
        // A read-only handle (shared locks; fcntl files only) reads large values too.
        if kind == NATIVE {
            let reader = large(kind, &dir.path().join("c"))
                .read_only(true)
                .open()
                .expect("open read-only");
            let v = reader.get(key).expect("get").expect("present");
            check_value(key, &v).expect("whole");
        }
        // One byte over: a clear error, and the old value stays.
        let over = vec![0u8; MAX_VALUE as usize + 1];
        match cache.set(key, &over) {
            Err(e @ Error::ValueTooLarge { len, max, .. }) => {
                assert_eq!((len, max), (MAX_VALUE as usize + 1, MAX_VALUE as usize));
                assert!(e.to_string().contains("max_value_size"), "{e}");
            }
            other => panic!("{kind:?}: expected ValueTooLarge, got {other:?}"),
        }
        let kept = cache.get(key).expect("get").expect("kept");
        check_value(key, &kept).expect("the old value");
        assert_eq!(kept.len(), MAX_VALUE as usize);
        assert!(cache.remove(key).expect("remove"));
        assert_eq!(cache.get(key).expect("get"), None);
        assert_eq!(used(&cache), 0, "{kind:?}: removal frees the blocks");
        let stats = cache.stats().expect("stats");
        assert_eq!(stats.overflow_bytes, AREA);
        assert_eq!(stats.overflow_free_runs, 1);
        assert_eq!(stats.overflow_largest_free_run, AREA);
        assert_eq!(stats.resets, 0);
    }
}

/// `get_with` hands the closure a large value whole, both when its blocks are one run (lent in
/// place) and when a value is split over runs around a hole (copied out first), and the same
/// value as `get`.
#[test]
fn get_with_sees_whole_values_in_one_run_and_split_over_runs() {
    for kind in [NATIVE, ROBUST] {
        let dir = tempfile::tempdir().expect("tempdir");
        // A 16-block area: three 4-block values, the middle one removed, and then a 6-block
        // value, which has only the 4-block tail and the 4-block hole to go to.
        let cache = kind
            .builder()
            .path(dir.path().join("c"))
            .num_pages(NUM_PAGES)
            .page_size(PAGE_SIZE)
            .overflow_size(16 * BLOCK)
            .max_value_size(8 * BLOCK as u32)
            .open()
            .expect("open");
        let four = 4 * BLOCK as usize - 100;
        for (i, key) in [&b"a"[..], b"b", b"c"].into_iter().enumerate() {
            assert!(
                cache
                    .set(key, &make_value(key, i as u64, four))
                    .expect("set")
            );
        }
        assert!(cache.remove(b"b").expect("remove"));
        let six = make_value(b"d", 9, 6 * BLOCK as usize - 100);
        assert!(cache.set(b"d", &six).expect("set d"));
        for (key, seq, len) in [(&b"a"[..], 0, four), (b"c", 2, four), (b"d", 9, six.len())] {
            let want = make_value(key, seq, len);
            let seen = cache
                .get_with(key, |v| (check_value(key, v), v.to_vec()))
                .expect("get_with")
                .expect("present");
            assert_eq!(seen.0, Ok(seq), "{kind:?} {key:?}");
            assert_eq!(seen.1, want, "{kind:?} {key:?}");
            assert_eq!(cache.get(key).expect("get"), Some(want), "{kind:?} {key:?}");
        }
        let (problems, unreferenced) = cache.check_overflow().expect("check");
        assert!(problems.is_empty() && unreferenced == 0, "{kind:?}");
    }
}

#[test]
fn expiry_update_take_clear_and_batches_handle_large_values() {
    let _serial = serial();
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let dir = temp_dir();
    let cache = large(ROBUST, &dir.path().join("c"))
        .clock(clock.clone())
        .open()
        .expect("open");
    let big = |seq: u64| make_value(b"k", seq, 200_000);
    cache
        .set_with(b"k", &big(1), Expiry::After(Duration::from_secs(10)))
        .expect("set");
    clock.advance(Duration::from_secs(11));
    assert_eq!(cache.get(b"k").expect("get"), None, "expired");
    cache.purge().expect("purge");
    assert_eq!(used(&cache), 0, "a purged large value frees its blocks");

    // update: the closure sees the large value whole, and may store a larger one.
    cache.set(b"k", &big(2)).expect("set");
    let seen = cache
        .update_with(b"k", |old| {
            let seen = old.map(|e| check_value(b"k", e.value).expect("whole"));
            (Update::Set(make_value(b"k", 3, 300_000)), seen)
        })
        .expect("update");
    assert_eq!(seen, Some(2));
    let after = cache.get(b"k").expect("get").expect("stored");
    assert_eq!(check_value(b"k", &after), Ok(3));
    assert_eq!(used(&cache), expected_use(&cache));

    // take returns it and frees it; get_or_insert_with stores one.
    let taken = cache.take(b"k").expect("take").expect("present");
    assert_eq!(check_value(b"k", &taken), Ok(3));
    assert_eq!(used(&cache), 0);
    let made = cache
        .get_or_insert_with(b"k", || big(4))
        .expect("get_or_insert");
    assert_eq!(cache.get(b"k").expect("get"), Some(made));

    // Batches: sizes are checked before anything is stored.
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..5u64)
        .map(|i| {
            let k = format!("b{i}").into_bytes();
            let v = make_value(&k, i, 50_000 * (i as usize + 1));
            (k, v)
        })
        .collect();
    assert_eq!(cache.set_many(&pairs).expect("set_many"), 5);
    let keys: Vec<&[u8]> = pairs.iter().map(|(k, _)| &k[..]).collect();
    for ((_, v), got) in pairs.iter().zip(cache.get_many(&keys).expect("get_many")) {
        assert_eq!(got.as_ref(), Some(v));
    }
    let too_big = [(b"x".to_vec(), vec![0u8; MAX_VALUE as usize + 1])];
    assert!(matches!(
        cache.set_many(&too_big),
        Err(Error::ValueTooLarge { .. })
    ));
    assert_eq!(used(&cache), expected_use(&cache));
    cache.clear().expect("clear");
    assert_eq!(used(&cache), 0, "clear frees every block");
}

#[test]
fn a_full_area_evicts_large_values_of_any_page() {
    let _serial = serial();
    for kind in [NATIVE, ROBUST] {
        let dir = temp_dir();
        let cache = large(kind, &dir.path().join("c")).open().expect("open");
        // 40 values of 600 KB (24 MB) through a 4 MiB area: older ones make room.
        for i in 0..40u64 {
            let k = format!("big{i}").into_bytes();
            let v = make_value(&k, i, 600_000);
            cache
                .set(&k, &v)
                .unwrap_or_else(|e| panic!("{kind:?} set {i}: {e}"));
            assert_eq!(cache.get(&k).expect("get"), Some(v), "{kind:?} {i}");
        }
        let left: Vec<_> = cache.iter().map(|r| r.expect("entry")).collect();
        assert!(!left.is_empty() && left.len() < 40, "{}", left.len());
        for (k, e) in &left {
            check_value(k, &e.value).expect("intact");
        }
        assert!(used(&cache) <= AREA);
        assert_eq!(
            used(&cache),
            expected_use(&cache),
            "{kind:?}: nothing leaked"
        );
    }
}

#[test]
fn options_are_checked_against_the_file() {
    let _serial = serial();
    let dir = temp_dir();
    let path = dir.path().join("c");
    drop(large(NATIVE, &path).open().expect("create"));
    match large(NATIVE, &path).overflow_size(AREA * 2).open() {
        Err(Error::GeometryMismatch { field, .. }) => assert_eq!(field, "overflow_size"),
        other => panic!("expected a mismatch, got {other:?}"),
    }
    match large(NATIVE, &path).max_value_size(4096).open() {
        Err(Error::GeometryMismatch { field, .. }) => assert_eq!(field, "max_value_size"),
        other => panic!("expected a mismatch, got {other:?}"),
    }
    // Opened without the options, the file's own area is used.
    let cache = Cache::builder().path(&path).open().expect("reopen");
    assert_eq!(cache.max_value_size(), MAX_VALUE as usize);
    drop(cache);
    let fm = Cache::builder()
        .path(dir.path().join("fm"))
        .layout(Layout::FastMmap)
        .overflow_size(AREA)
        .open();
    assert!(matches!(fm, Err(Error::InvalidOptions { .. })), "{fm:?}");
    // Compression (and a backing store: tests/large_backing.rs) work with an area.
    #[cfg(feature = "lz4")]
    {
        let compressed = Cache::builder()
            .path(&path)
            .compression(fastmmap::Compression::lz4())
            .open()
            .expect("compression with an overflow area");
        let v = make_value(b"packed", 1, 200_000);
        compressed.set(b"packed", &v).expect("set");
        assert_eq!(compressed.get(b"packed").expect("get"), Some(v));
    }
    // Without an area (overflow_size(0)), a value too large for its page is TooLarge, as it
    // always was.
    let plain = Cache::builder()
        .path(dir.path().join("plain"))
        .num_pages(2)
        .page_size(4096)
        .overflow_size(0)
        .open()
        .expect("open");
    assert_eq!(plain.max_value_size(), 0);
    assert!(matches!(
        plain.set(b"k", &[0u8; 5000]),
        Err(Error::TooLarge { .. })
    ));
    drop(plain);
    let reopened = Cache::builder()
        .path(dir.path().join("plain"))
        .open()
        .expect("a file without an area opens without options");
    assert_eq!(reopened.max_value_size(), 0, "and keeps having none");
    drop(reopened);
    // By default a native file has an area of an eighth of its pages' bytes (rounded up to
    // 4 KiB blocks) taking values up to half the area: 32 pages of 4 KiB, 4 blocks.
    let default = Cache::builder()
        .path(dir.path().join("default"))
        .num_pages(32)
        .page_size(4096)
        .open()
        .expect("open");
    assert_eq!(default.max_value_size(), 8192);
    let v = make_value(b"k", 1, 5000);
    assert!(default.set(b"k", &v).expect("a value larger than a page"));
    assert_eq!(default.get(b"k").expect("get"), Some(v.clone()));
    assert!(matches!(
        default.set(b"k", &[0u8; 8193]),
        Err(Error::ValueTooLarge {
            len: 8193,
            max: 8192,
            ..
        })
    ));
    assert_eq!(default.get(b"k").expect("get"), Some(v), "kept");
}

/// Forked writers store self-checking values of random sizes (most of them larger than a
/// page) on a few keys while forked readers check every value they read.
#[test]
fn forked_writers_and_readers_see_whole_values() {
    let _serial = serial();
    let seed = seed("forked_writers_and_readers_see_whole_values");
    let rounds = scaled(150, 3000);
    for kind in [NATIVE, ROBUST] {
        let dir = temp_dir();
        let path = dir.path().join("c");
        drop(large(kind, &path).open().expect("create"));
        let mut children = Children::new();
        for w in 0..2u64 {
            let path = path.clone();
            children.spawn(move || {
                let cache = large(kind, &path).open().map_err(|e| e.to_string())?;
                let mut rng = Rng::new(seed ^ w);
                for i in 0..rounds as u64 {
                    let k = format!("k{}", rng.below(6)).into_bytes();
                    let len = rng.range(1, 300_000);
                    let v = make_value(&k, (w << 32) | i, len);
                    match cache.set(&k, &v) {
                        Ok(_) | Err(Error::OverflowFull { .. }) => {}
                        Err(e) => return Err(format!("set: {e}")),
                    }
                    if rng.chance(10) {
                        cache.remove(&k).map_err(|e| e.to_string())?;
                    }
                }
                Ok(())
            });
        }
        for r in 0..2u64 {
            let path = path.clone();
            children.spawn(move || {
                let cache = large(kind, &path).open().map_err(|e| e.to_string())?;
                let mut rng = Rng::new(seed ^ (r + 100));
                for _ in 0..rounds * 2 {
                    let k = format!("k{}", rng.below(6)).into_bytes();
                    if let Some(v) = cache.get(&k).map_err(|e| e.to_string())? {
                        check_value(&k, &v)?;
                    }
                    if let Some(n) = cache
                        .get_with(&k, |v| check_value(&k, v).map(|_| v.len()))
                        .map_err(|e| e.to_string())?
                    {
                        n?;
                    }
                }
                Ok(())
            });
        }
        children.wait_all_ok();
        let cache = large(kind, &path).open().expect("open");
        for item in cache.iter() {
            let (k, e) = item.expect("entry");
            check_value(&k, &e.value).expect("intact");
        }
        assert_eq!(cache.stats().expect("stats").resets, 0, "{kind:?}");
        assert_eq!(
            used(&cache),
            expected_use(&cache),
            "{kind:?}: nothing leaked"
        );
    }
}

/// Writers SIGKILLed at random instants while they store and replace large values: every
/// value read afterwards is one that was stored for its key, whole, and once `check` has
/// swept the file no block is held that no entry references.
#[test]
fn sigkill_during_large_writes_leaves_no_wrong_value_and_no_leak() {
    let _serial = serial();
    let seed = seed("sigkill_during_large_writes_leaves_no_wrong_value_and_no_leak");
    let kills = scaled(12, 150);
    let mut rng = Rng::new(seed);
    for kind in [NATIVE, ROBUST] {
        let dir = temp_dir();
        let path = dir.path().join("c");
        drop(large(kind, &path).open().expect("create"));
        let deadline = Instant::now() + Duration::from_secs(scaled(120, 900) as u64);
        for round in 0..kills {
            assert!(
                Instant::now() < deadline,
                "{kind:?}: kill loop ran out of time"
            );
            let child_seed = rng.next_u64();
            let mut children = Children::new();
            let path2 = path.clone();
            let ready = Pipe::new();
            let ready_child = &ready;
            let pid = children.spawn(move || {
                let cache = large(kind, &path2).open().map_err(|e| e.to_string())?;
                let mut rng = Rng::new(child_seed);
                ready_child.release(1);
                // Bounded: the parent kills it long before this ends.
                for i in 0..100_000u64 {
                    let k = format!("k{}", rng.below(8)).into_bytes();
                    let v = make_value(&k, i, rng.range(10_000, 400_000));
                    match cache.set(&k, &v) {
                        Ok(_) | Err(Error::OverflowFull { .. }) => {}
                        Err(e) => return Err(format!("set: {e}")),
                    }
                }
                Ok(())
            });
            assert!(
                ready.wait_timeout(Duration::from_secs(30)),
                "child did not start"
            );
            std::thread::sleep(Duration::from_millis(rng.below(40) + 1));
            children.kill(pid);
            let cache = large(kind, &path).open().expect("open after kill");
            for k in 0..8 {
                let k = format!("k{k}").into_bytes();
                if let Some(v) = cache.get(&k).expect("get") {
                    check_value(&k, &v).unwrap_or_else(|e| panic!("{kind:?} round {round}: {e}"));
                }
            }
        }
        let cache = large(kind, &path).open().expect("open");
        let freed = cache.reclaim_overflow().expect("check");
        let stats = cache.stats().expect("stats");
        eprintln!(
            "{kind:?}: {kills} kills, {} page resets, {freed} blocks reclaimed by check",
            stats.resets
        );
        assert_eq!(
            used(&cache),
            expected_use(&cache),
            "{kind:?}: blocks leaked"
        );
        cache.clear().expect("clear");
        assert_eq!(used(&cache), 0, "{kind:?}");
    }
}

/// Finds `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn damaged_blocks_and_references_read_as_misses_never_as_wrong_values() {
    let _serial = serial();
    for kind in [NATIVE, ROBUST] {
        let dir = temp_dir();
        let path = dir.path().join("c");
        let cache = large(kind, &path).open().expect("open");
        let raw = raw_file(&path);
        let len = std::fs::metadata(&path).expect("stat").len();
        let area_start = len - AREA;
        let key = b"victim-key-0123456789";

        // A flipped byte in the value's blocks, in a middle block or among its last 64 bytes
        // (which xxh3 mixes in twice): the checksum catches it, whether the value is copied
        // out (`get`, `entry`: checked in the copy's pass) or lent in place (`get_with`).
        let len = 100_000;
        for (round, flip_at) in [5_000, len - 10].into_iter().enumerate() {
            for (how, read) in ["get", "get_with", "entry"].into_iter().enumerate() {
                // A new value each time, so the stale bytes of the last one's freed blocks do
                // not match the search below.
                let value = make_value(key, 10 + 3 * round as u64 + how as u64, len);
                cache.set(key, &value).expect("set");
                // Found by the 32 bytes before it, in the same 4 KiB block.
                let bytes = read_at(&raw, area_start, AREA as usize);
                let at = find(&bytes, &value[flip_at - 32..flip_at]).expect("the value's block");
                let flip = area_start + (at + 32) as u64;
                let mut b = read_at(&raw, flip, 1);
                b[0] ^= 0x40;
                write_at(&raw, flip, &b);
                let resets = cache.stats().expect("stats").resets;
                let seen = match read {
                    "get" => cache.get(key).expect("get"),
                    "get_with" => cache.get_with(key, |v| v.to_vec()).expect("get_with"),
                    _ => cache.entry(key).expect("entry").map(|e| e.value),
                };
                assert_eq!(seen, None, "{kind:?} {round} {read}");
                let stats = cache.stats().expect("stats");
                assert!(stats.resets > resets, "{kind:?}: the page was reset");
                assert_eq!(
                    stats.overflow_used_bytes, 0,
                    "{kind:?}: and its blocks freed"
                );
            }
        }

        // A reference whose first block is out of range, or names another page's block.
        for bad_first in [u32::MAX, (AREA / BLOCK) as u32 - 1, 0] {
            let value = make_value(key, 2, 100_000);
            cache.set(key, &value).expect("set");
            // Some other page's large value, to point at.
            for i in 0..8 {
                let k = format!("other{i}").into_bytes();
                cache
                    .set(&k, &make_value(&k, 0, 30_000))
                    .expect("set other");
            }
            let header_and_pages = area_start as usize;
            let bytes = read_at(&raw, 0, header_and_pages);
            let at = find(&bytes, key).expect("the entry's key") + key.len();
            write_at(&raw, at as u64, &bad_first.to_ne_bytes());
            match cache.get(key).expect("get") {
                None => {}
                Some(v) => assert_eq!(v, value, "{kind:?}: a wrong value for {bad_first}"),
            }
            cache.reclaim_overflow().expect("check");
            assert_eq!(used(&cache), expected_use(&cache), "{kind:?} {bad_first}");
            for item in cache.iter() {
                let (k, e) = item.expect("entry");
                check_value(&k, &e.value).expect("intact");
            }
        }
        // A block row whose owner names no page: freed by check.
        cache.clear().expect("clear");
        assert_eq!(used(&cache), 0);
    }
}

/// A read-only handle with a compression layer (shared locks; fcntl files only) reads large
/// values, compressed or not, whole through `get` and `entry`, each copied out and checked in
/// one pass; a damaged block reads as a miss, never as a wrong value.
#[cfg(feature = "lz4")]
#[test]
fn a_read_only_layered_handle_reads_large_values_whole_or_not_at_all() {
    let _serial = serial();
    let dir = temp_dir();
    let path = dir.path().join("c");
    let lz4 = fastmmap::Compression::lz4;
    let writer = large(NATIVE, &path)
        .compression(lz4())
        .open()
        .expect("open");
    let noise = make_value(b"noise", 1, 300_000);
    writer.set(b"noise", &noise).expect("set");
    let text = b"compresses well, yet not into a page "
        .repeat(20_000)
        .into_iter()
        .chain(make_value(b"text", 2, 40_000))
        .collect::<Vec<u8>>();
    writer.set(b"text", &text).expect("set");
    assert!(
        used(&writer) > 300_000u64.div_ceil(BLOCK) * BLOCK,
        "both in the area"
    );
    let reader = large(NATIVE, &path)
        .compression(lz4())
        .read_only(true)
        .open()
        .expect("open read-only");
    for (key, value) in [(&b"noise"[..], &noise), (b"text", &text)] {
        assert_eq!(reader.get(key).expect("get").as_ref(), Some(value));
        let entry = reader.entry(key).expect("entry").expect("present");
        assert_eq!(&entry.value, value);
        assert_eq!(entry.flags.is_compressed(), key == b"text");
    }
    // A flipped byte in the stored (uncompressed) value's blocks.
    let raw = raw_file(&path);
    let area_start = std::fs::metadata(&path).expect("stat").len() - AREA;
    let bytes = read_at(&raw, area_start, AREA as usize);
    let at = find(&bytes, &noise[200_000..200_032]).expect("the value's block");
    let flip = area_start + at as u64;
    let mut b = read_at(&raw, flip, 1);
    b[0] ^= 0x40;
    write_at(&raw, flip, &b);
    assert_eq!(reader.get(b"noise").expect("get"), None);
    assert_eq!(reader.entry(b"noise").expect("entry"), None);
    assert_eq!(reader.get(b"text").expect("get"), Some(text));
}

/// The `fastmmap` command on a file with an overflow area: `create` makes one, `set` from stdin
/// and `get` carry a large value, `stats` shows the area, `dump | load` copies large values,
/// and `check` finds blocks held by no entry (failing), which `check --repair` frees.
#[cfg(feature = "cli")]
#[test]
fn the_command_line_tool_handles_large_values() {
    use std::process::Command;

    fn run(args: &[&std::ffi::OsStr], stdin: &[u8]) -> std::process::Output {
        output_with_stdin(
            Command::new(env!("CARGO_BIN_EXE_fastmmap")).args(args),
            stdin,
        )
        .0
    }
    let os = |s: &str| std::ffi::OsString::from(s);

    let _serial = serial();
    let dir = temp_dir();
    let path = dir.path().join("c");
    let p = path.as_os_str();
    let geometry = [
        os("--num-pages"),
        os("4"),
        os("--page-size"),
        os("16384"),
        os("--overflow-size"),
        os(&AREA.to_string()),
        os("--max-value-size"),
        os(&MAX_VALUE.to_string()),
    ];
    let with = |args: &[&std::ffi::OsStr]| -> Vec<std::ffi::OsString> {
        args.iter()
            .map(|a| a.to_os_string())
            .chain(geometry.iter().cloned())
            .collect()
    };
    let call = |args: &[&std::ffi::OsStr], stdin: &[u8]| {
        let args = with(args);
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        run(&refs, stdin)
    };
    let ok = |out: std::process::Output| {
        assert!(out.status.success(), "{out:?}");
        out
    };
    ok(call(&[os("create").as_os_str(), p], b""));
    let value = make_value(b"big", 1, 700_000);
    ok(call(
        &[os("set").as_os_str(), p, &os("big"), &os("-")],
        &value,
    ));
    let got = ok(call(&[os("get").as_os_str(), p, &os("big")], b""));
    assert_eq!(got.stdout, value);
    let over = vec![b'x'; MAX_VALUE as usize + 1];
    let refused = call(&[os("set").as_os_str(), p, &os("over"), &os("-")], &over);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("overflow area"),
        "{refused:?}"
    );

    let stats = ok(call(&[os("stats").as_os_str(), p, &os("--json")], b""));
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("json");
    assert_eq!(stats["overflow_bytes"].as_u64(), Some(AREA));
    assert_eq!(
        stats["overflow_used_bytes"].as_u64(),
        Some(700_000u64.div_ceil(BLOCK) * BLOCK)
    );
    let text = String::from_utf8(ok(call(&[os("stats").as_os_str(), p], b"")).stdout).unwrap();
    assert!(text.contains("overflow"), "{text}");

    // dump | load into a second file of the same shape.
    let dump = ok(call(&[os("dump").as_os_str(), p], b""));
    let copy = dir.path().join("copy");
    ok(call(&[os("create").as_os_str(), copy.as_os_str()], b""));
    ok(call(
        &[os("load").as_os_str(), copy.as_os_str()],
        &dump.stdout,
    ));
    let got = ok(call(
        &[os("get").as_os_str(), copy.as_os_str(), &os("big")],
        b"",
    ));
    assert_eq!(got.stdout, value);

    // A block claimed for page 0 that no entry references (as a writer killed between its
    // claim and its entry would leave, if nobody had locked its page since).
    ok(call(&[os("check").as_os_str(), p], b""));
    let raw = raw_file(&path);
    write_u32(&raw, last_block_owner_offset(), 1);
    drop(raw);
    let failed = call(&[os("check").as_os_str(), p], b"");
    assert!(!failed.status.success(), "{failed:?}");
    assert!(
        String::from_utf8_lossy(&failed.stdout).contains("held by no entry"),
        "{failed:?}"
    );
    ok(call(&[os("check").as_os_str(), p, &os("--repair")], b""));
    ok(call(&[os("check").as_os_str(), p], b""));
    let got = ok(call(&[os("get").as_os_str(), p, &os("big")], b""));
    assert_eq!(got.stdout, value, "the live value survives the repair");
}

/// File offset of the owner word of the last block row of a `large` file (free: the
/// allocator starts from the first block).
#[cfg(feature = "cli")]
fn last_block_owner_offset() -> u64 {
    // docs/format.md: the overflow table follows the write-back lock table (64 bytes a page);
    // the pages' owned words come first, padded to 64 bytes, then 8-byte block rows.
    let table = NATIVE_PAGE_TABLE_OFFSET
        + u64::from(NUM_PAGES) * (NATIVE_ROW_SIZE + NATIVE_WRITE_BACK_ROW_SIZE);
    let rows = table + (u64::from(NUM_PAGES) * 4).next_multiple_of(64);
    rows + (AREA / BLOCK - 1) * 8
}

/// Random bytes written over the overflow table (owned words and block rows) and over the
/// area, as a hostile or broken process could: no panic, no wrong value, and once `check` has
/// swept the file every block held is referenced.
#[test]
fn random_bytes_in_the_overflow_table_and_area_never_give_a_wrong_value() {
    let _serial = serial();
    let mut rng = Rng::new(seed(
        "random_bytes_in_the_overflow_table_and_area_never_give_a_wrong_value",
    ));
    let rounds = scaled(20, 400);
    let table = NATIVE_PAGE_TABLE_OFFSET
        + u64::from(NUM_PAGES) * (NATIVE_ROW_SIZE + NATIVE_WRITE_BACK_ROW_SIZE);
    let rows = table + (u64::from(NUM_PAGES) * 4).next_multiple_of(64);
    let table_len = rows + (AREA / BLOCK) * 8 - table;
    for kind in [NATIVE, ROBUST] {
        let dir = temp_dir();
        let path = dir.path().join("c");
        let cache = large(kind, &path).open().expect("open");
        let raw = raw_file(&path);
        let len = std::fs::metadata(&path).expect("stat").len();
        let area_start = len - AREA;
        for round in 0..rounds {
            let keys: Vec<Vec<u8>> = (0..6).map(|i| format!("r{i}").into_bytes()).collect();
            for (i, k) in keys.iter().enumerate() {
                let v = make_value(k, round as u64, rng.range(20_000, 250_000));
                cache.set(k, &v).unwrap_or_else(|e| panic!("set {i}: {e}"));
            }
            // Damage: a few random words of the table, or a run of random bytes in the area.
            for _ in 0..rng.range(1, 6) {
                if rng.chance(50) {
                    let at = table + rng.below(table_len / 4) * 4;
                    let word = match rng.below(4) {
                        0 => 0,
                        1 => rng.below(u64::from(NUM_PAGES) + 2) as u32,
                        2 => rng.below(AREA / BLOCK + 2) as u32,
                        _ => rng.next_u32(),
                    };
                    write_u32(&raw, at, word);
                } else {
                    let at = area_start + rng.below(AREA - 64);
                    let n = rng.range(1, 64);
                    write_at(&raw, at, &rng.bytes(n));
                }
            }
            for k in &keys {
                if let Some(v) = cache.get(k).expect("get") {
                    check_value(k, &v).unwrap_or_else(|e| panic!("{kind:?} {round}: {e}"));
                }
            }
            cache.check_overflow().expect("check");
            cache.reclaim_overflow().expect("reclaim");
            for item in cache.iter() {
                let (k, e) = item.expect("entry");
                check_value(&k, &e.value).expect("intact");
            }
            assert_eq!(used(&cache), expected_use(&cache), "{kind:?} round {round}");
        }
    }
}
