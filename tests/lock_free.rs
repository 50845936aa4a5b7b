//! Reads without the lock (`get`, `entry`, `contains_key` on native files of either lock
//! kind, docs/format.md §5.3): never a torn or mixed value while writers in other threads and
//! processes rewrite it, and every such read counted in the statistics.
//!
//! Every test takes `common::serial()` first (see tests/common/mod.rs on forking).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use fastmmap::Cache;

/// How long a lock may be waited for before the test fails instead of hanging.
const PATIENT: Duration = Duration::from_secs(20);

/// The native lock kinds this platform has: fcntl, and robust where glibc provides it.
fn kinds() -> Vec<Kind> {
    let mut kinds = vec![NATIVE];
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        kinds.push(ROBUST);
    }
    kinds
}

/// Readers in threads and processes read keys that writers in other processes overwrite all
/// the time (in place, same size, and with other sizes that move entries and rebuild pages):
/// every value a read returns is intact and stored for its key.
#[test]
fn reads_without_the_lock_never_return_a_torn_value() {
    let _serial = serial();
    for kind in kinds() {
        torn_under_readers(kind);
    }
}

fn torn_under_readers(kind: Kind) {
    const KEYS: usize = 40;
    let dir = temp_dir();
    let path = dir.path().join("torn");
    let cache = kind
        .builder()
        .path(&path)
        .num_pages(3)
        .page_size(8192)
        .lock_timeout(PATIENT)
        .open()
        .expect("open");
    let key = |i: usize| format!("key-{i:03}").into_bytes();
    for i in 0..KEYS {
        cache
            .set(&key(i), &make_value(&key(i), 0, 200))
            .expect("set");
    }
    let run_for = Duration::from_millis(scaled(1500, 20_000) as u64);
    let seed = seed("reads_without_the_lock_never_return_a_torn_value");
    let start = Pipe::new();
    let mut kids = Children::new();
    for w in 0..2u64 {
        let (cache, start) = (cache.clone(), &start);
        kids.spawn(move || {
            start.wait();
            let mut rng = Rng::new(seed ^ w);
            let end = Instant::now() + run_for;
            while Instant::now() < end {
                let i = rng.range(0, KEYS);
                // Mostly the same size (rewritten in place), sometimes another.
                let len = if rng.chance(80) {
                    200
                } else {
                    rng.range(30, 700)
                };
                let v = make_value(&key(i), rng.next_u64(), len);
                cache.set(&key(i), &v).map_err(|e| format!("set: {e}"))?;
            }
            Ok(())
        });
    }
    let read_loop = |cache: &Cache, seed: u64| -> Result<u64, String> {
        let mut rng = Rng::new(seed);
        let end = Instant::now() + run_for;
        let mut reads = 0;
        while Instant::now() < end {
            let k = key(rng.range(0, KEYS));
            match rng.below(3) {
                0 => {
                    if let Some(v) = cache.get(&k).map_err(|e| format!("get: {e}"))? {
                        check_value(&k, &v)?;
                    }
                }
                1 => {
                    if let Some(e) = cache.entry(&k).map_err(|e| format!("entry: {e}"))? {
                        check_value(&k, &e.value)?;
                    }
                }
                _ => {
                    cache
                        .contains_key(&k)
                        .map_err(|e| format!("contains_key: {e}"))?;
                }
            }
            reads += 1;
        }
        Ok(reads)
    };
    for r in 0..2u64 {
        let (cache, start) = (cache.clone(), &start);
        kids.spawn(move || {
            start.wait();
            read_loop(&cache, seed ^ (r + 10)).map(drop)
        });
    }
    start.release(4);
    let reads = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2u64)
            .map(|t| {
                let cache = &cache;
                s.spawn(move || read_loop(cache, seed ^ (t + 20)))
            })
            .collect();
        total_reads(handles)
    });
    kids.wait_all_ok();
    assert!(reads > 1000, "only {reads} reads in {run_for:?}");
    assert_eq!(cache.stats().expect("stats").resets, 0);
}

/// The reads counted by reader threads, each joined; a reader's error fails the test.
fn total_reads(readers: Vec<std::thread::ScopedJoinHandle<'_, Result<u64, String>>>) -> u64 {
    readers
        .into_iter()
        .map(|h| {
            h.join()
                .expect("reader thread")
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .sum()
}

/// A value long enough to be copied wide out of the page, flipped by writers in another
/// process and thread between two contents that each check themselves (every byte the same,
/// same length, so it is rewritten in place under readers' feet): a read returns one of the
/// two whole, never a mix.
/// Both ways of a wide copy: 4 KiB (vector loads) and 40 KiB (one string copy).
#[test]
fn wide_reads_without_the_lock_never_mix_two_values() {
    let _serial = serial();
    for kind in kinds() {
        for len in [4096, 40 * 1024] {
            flip_under_readers(kind, len);
        }
    }
}

fn flip_under_readers(kind: Kind, len: usize) {
    let dir = temp_dir();
    let cache = kind
        .builder()
        .path(dir.path().join("wide"))
        .num_pages(1)
        .page_size(128 * 1024)
        .lock_timeout(PATIENT)
        .open()
        .expect("open");
    let key = b"wide";
    let contents = [vec![b'A'; len], vec![b'B'; len]];
    cache.set(key, &contents[0]).expect("set");
    let run_for = Duration::from_millis(scaled(1500, 20_000) as u64);
    let check = |v: &[u8]| -> Result<(), String> {
        if v.len() != len || v.iter().any(|&b| b != v[0]) || !(v[0] == b'A' || v[0] == b'B') {
            let first = v.iter().position(|&b| b != v[0]);
            return Err(format!(
                "mixed value: {} bytes, starts {:?}, first other byte at {first:?}",
                v.len(),
                v.first().copied().map(char::from)
            ));
        }
        Ok(())
    };
    let write_loop = |cache: &Cache| -> Result<(), String> {
        let end = Instant::now() + run_for;
        let mut i = 0;
        while Instant::now() < end {
            i += 1;
            cache
                .set(key, &contents[i % 2])
                .map_err(|e| format!("set: {e}"))?;
        }
        Ok(())
    };
    let read_loop = |cache: &Cache| -> Result<u64, String> {
        let end = Instant::now() + run_for;
        let mut reads = 0;
        while Instant::now() < end {
            let v = cache.get(key).map_err(|e| format!("get: {e}"))?;
            check(&v.ok_or("the key vanished")?)?;
            reads += 1;
        }
        Ok(reads)
    };
    let start = Pipe::new();
    let mut kids = Children::new();
    {
        let (cache, start) = (cache.clone(), &start);
        kids.spawn(move || {
            start.wait();
            write_loop(&cache)
        });
    }
    {
        let (cache, start) = (cache.clone(), &start);
        kids.spawn(move || {
            start.wait();
            read_loop(&cache).map(drop)
        });
    }
    start.release(2);
    let reads = std::thread::scope(|s| {
        let writer = s.spawn(|| write_loop(&cache));
        let readers: Vec<_> = (0..2).map(|_| s.spawn(|| read_loop(&cache))).collect();
        writer
            .join()
            .expect("writer thread")
            .unwrap_or_else(|e| panic!("{e}"));
        total_reads(readers)
    });
    kids.wait_all_ok();
    assert!(reads > 100, "only {reads} reads in {run_for:?}");
    assert_eq!(cache.stats().expect("stats").resets, 0);
}

/// A cache of `kind` of `pages` pages holding `here` (= `v`), its statistics just reset.
fn counting_cache(kind: Kind, path: &Path, pages: u32) -> Cache {
    let cache = kind
        .builder()
        .path(path)
        .num_pages(pages)
        .page_size(8192)
        .open()
        .expect("open");
    cache.set(b"here", b"v").expect("set");
    cache.reset_stats().expect("reset_stats");
    cache
}

/// Reads without the lock from many threads at once are each counted: the threads count in
/// separate counters, all of which `stats` adds up.
#[test]
fn reads_without_the_lock_from_many_threads_are_all_counted() {
    let _serial = serial();
    for kind in kinds() {
        let dir = temp_dir();
        let cache = counting_cache(kind, &dir.path().join("counted-threads"), 3);
        std::thread::scope(|s| {
            for _ in 0..7 {
                s.spawn(|| {
                    for _ in 0..200 {
                        assert_eq!(cache.get(b"here").expect("get"), Some(b"v".to_vec()));
                        assert_eq!(cache.get(b"absent").expect("get"), None);
                    }
                });
            }
        });
        let stats = cache.stats().expect("stats");
        assert_eq!((stats.reads, stats.hits), (7 * 400, 7 * 200), "{kind:?}");
    }
}

/// Reads answered without the lock count in the statistics like locked ones: this process's
/// counts reach the file when it next locks the page (here: `stats` itself).
#[test]
fn reads_without_the_lock_are_counted() {
    let _serial = serial();
    for kind in kinds() {
        let dir = temp_dir();
        let cache = counting_cache(kind, &dir.path().join("counted"), 1);
        for _ in 0..10 {
            assert_eq!(cache.get(b"here").expect("get"), Some(b"v".to_vec()));
            assert!(cache.entry(b"here").expect("entry").is_some());
            assert_eq!(cache.get(b"absent").expect("get"), None);
        }
        // A look is not a read.
        assert!(cache.contains_key(b"here").expect("contains_key"));
        let stats = cache.stats().expect("stats");
        assert_eq!((stats.reads, stats.hits), (30, 20), "{kind:?}");
    }
}

/// With fcntl locks too, a get of a native file takes no lock: while another process holds
/// the page's fcntl lock (as a holder that changes nothing leaves it: the sequence word even),
/// a get of a key read before in the same second returns at once, while a set waits until its
/// lock timeout.
#[test]
fn an_fcntl_file_is_read_without_its_lock() {
    let _serial = serial();
    const PAGE_SIZE: u32 = 8192;
    let dir = temp_dir();
    let path = dir.path().join("held");
    let clock =
        fastmmap::ManualClock::new(std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let cache = NATIVE
        .builder()
        .path(&path)
        .num_pages(1)
        .page_size(PAGE_SIZE)
        .clock(clock.clone())
        .lock_timeout(Duration::from_millis(300))
        .open()
        .expect("open");
    cache.set(b"key", b"value").expect("set");
    // The first hit protects the entry and its access second is now: later hits in the same
    // second need no write.
    assert_eq!(cache.get(b"key").expect("get"), Some(b"value".to_vec()));
    let (held, go) = (Pipe::new(), Pipe::new());
    let mut children = Children::new();
    {
        let (path, held, go) = (path.clone(), &held, &go);
        children.spawn(move || {
            use std::os::fd::AsRawFd;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| format!("open: {e}"))?;
            // SAFETY: `flock` is plain data; zeroed is a valid value for every field.
            let mut fl: libc::flock = unsafe { std::mem::zeroed() };
            fl.l_type = libc::F_WRLCK as libc::c_short;
            fl.l_whence = libc::SEEK_SET as libc::c_short;
            fl.l_start = page_offset(fastmmap::Layout::Native, 1, PAGE_SIZE, 0) as libc::off_t;
            fl.l_len = libc::off_t::from(PAGE_SIZE);
            // SAFETY: the descriptor is open and `fl` is a valid flock.
            if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &mut fl) } != 0 {
                let e = std::io::Error::last_os_error();
                held.release(1);
                return Err(format!("F_WRLCK: {e}"));
            }
            held.release(1);
            go.wait();
            drop(file);
            Ok(())
        });
    }
    held.wait();
    for _ in 0..100 {
        assert_eq!(
            cache
                .get(b"key")
                .expect("a get while the page's lock is held"),
            Some(b"value".to_vec())
        );
    }
    assert!(
        matches!(
            cache.set(b"key", b"other"),
            Err(fastmmap::Error::LockTimeout { .. })
        ),
        "a set waits for the page's lock"
    );
    go.release(1);
    children.wait_all_ok();
    assert!(
        cache
            .set(b"key", b"other")
            .expect("set once the lock is free")
    );
}
