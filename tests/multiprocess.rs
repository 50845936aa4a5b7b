//! Real processes sharing one cache file: exact counters under contention, self-checking values
//! under eviction, threads and processes together, two handles on one file in one process,
//! race-free creation, re-entrancy, and panics inside closures.
//!
//! Every test takes `common::serial()` first: forking while another test thread of this binary
//! is inside the cache would hand the child a locked mutex.

mod common;

use std::os::unix::fs::MetadataExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use fastmmap::{Cache, Error, Layout, Update};

/// Adds one to the 8-byte counter under `key`; returns the new count.
fn incr(cache: &Cache, key: &[u8]) -> Result<u64, String> {
    let mut bad = None;
    let out = cache
        .update(key, |old| match counter_value(old) {
            Ok(n) => Update::Set((n + 1).to_le_bytes().to_vec()),
            Err(e) => {
                bad = Some(e);
                Update::Keep
            }
        })
        .map_err(|e| format!("update {:?}: {e}", String::from_utf8_lossy(key)))?;
    if let Some(e) = bad {
        return Err(e);
    }
    counter_value(out.as_deref())
}

fn read_counter(cache: &Cache, key: &[u8]) -> u64 {
    counter_value(cache.get(key).expect("get counter").as_deref()).expect("counter value")
}

fn small_cache(path: &std::path::Path, kind: Kind, num_pages: u32, page_size: u32) -> Cache {
    Cache::builder()
        .path(path)
        .layout(kind.layout)
        .lock_kind(kind.lock)
        .num_pages(num_pages)
        .page_size(page_size)
        // Turns a lock that is never released into a test failure instead of a hang.
        .lock_timeout(Duration::from_secs(20))
        .open()
        .expect("open cache")
}

// ---------------------------------------------------------------------------------------------
// (a) exact counters

fn counters_are_exact(kind: Kind) {
    const PROCS: usize = 4;
    const INCREMENTS: usize = 10_000;
    const COUNTERS: [&[u8]; 4] = [b"counter-a", b"counter-b", b"counter-c", b"counter-d"];
    let dir = temp_dir();
    // Few small pages: several counters share a page and every process contends on them.
    let cache = small_cache(&dir.path().join("counters"), kind, 3, 4096);
    let start = Pipe::new();
    let mut kids = Children::new();
    for p in 0..PROCS {
        let cache = cache.clone();
        let start = &start;
        kids.spawn(move || {
            start.wait();
            for i in 0..INCREMENTS {
                incr(&cache, COUNTERS[(i + p) % COUNTERS.len()])?;
            }
            Ok(())
        });
    }
    start.release(PROCS);
    kids.wait_all_ok();
    let per_counter: Vec<u64> = COUNTERS.iter().map(|k| read_counter(&cache, k)).collect();
    let expected = (PROCS * INCREMENTS / COUNTERS.len()) as u64;
    assert_eq!(
        per_counter,
        vec![expected; COUNTERS.len()],
        "{kind:?}: lost or doubled increments"
    );
    assert_eq!(per_counter.iter().sum::<u64>(), (PROCS * INCREMENTS) as u64);
}

#[test]
fn four_processes_increment_counters_exactly_native() {
    let _serial = serial();
    counters_are_exact(NATIVE);
}

#[test]
fn four_processes_increment_counters_exactly_robust() {
    let _serial = serial();
    counters_are_exact(ROBUST);
}

#[test]
fn four_processes_increment_counters_exactly_fastmmap() {
    let _serial = serial();
    counters_are_exact(FASTMMAP);
}

// ---------------------------------------------------------------------------------------------
// (b) self-checking values under eviction

fn key_name(i: usize) -> Vec<u8> {
    format!("key-{i:05}").into_bytes()
}

/// One process's share of random traffic: every value it sees must be intact and stored for
/// the key it asked for. Returns (reads, hits).
fn random_traffic(
    cache: &Cache,
    seed: u64,
    ops: usize,
    keys: usize,
    max_len: usize,
) -> Result<(u64, u64), String> {
    let mut rng = Rng::new(seed);
    let (mut reads, mut hits) = (0u64, 0u64);
    let err = |op: &str, e: Error| format!("{op}: {e}");
    for _ in 0..ops {
        let key = key_name(rng.range(0, keys));
        let roll = rng.below(100);
        if roll < 40 {
            reads += 1;
            if let Some(v) = cache.get(&key).map_err(|e| err("get", e))? {
                check_value(&key, &v)?;
                hits += 1;
            }
        } else if roll < 50 {
            reads += 1;
            if let Some(r) = cache
                .get_with(&key, |v| check_value(&key, v))
                .map_err(|e| err("get_with", e))?
            {
                r?;
                hits += 1;
            }
        } else if roll < 85 {
            let v = make_value(&key, rng.next_u64(), rng.range(0, max_len));
            if !cache.set(&key, &v).map_err(|e| err("set", e))? {
                return Err("set refused without any tombstone".into());
            }
        } else if roll < 92 {
            let new = make_value(&key, rng.next_u64(), rng.range(0, max_len));
            let mut seen = Ok(());
            let out = cache
                .update(&key, |old| {
                    if let Some(old) = old {
                        seen = check_value(&key, old).map(|_| ());
                    }
                    Update::Set(new.clone())
                })
                .map_err(|e| err("update", e))?;
            seen?;
            if out.as_deref() != Some(&new[..]) {
                return Err("update did not return the value it stored".into());
            }
        } else if roll < 96 {
            if let Some(v) = cache.take(&key).map_err(|e| err("take", e))? {
                check_value(&key, &v)?;
            }
        } else {
            cache.remove(&key).map_err(|e| err("remove", e))?;
        }
    }
    Ok((reads, hits))
}

/// Every entry `iter` yields is a key of ours with an intact value.
fn check_all_entries(cache: &Cache, keys: usize) -> Result<usize, String> {
    let mut n = 0;
    for item in cache.iter() {
        let (k, e) = item.map_err(|e| format!("iter: {e}"))?;
        let known = std::str::from_utf8(&k)
            .ok()
            .and_then(|s| s.strip_prefix("key-"))
            .and_then(|s| s.parse::<usize>().ok())
            .is_some_and(|i| i < keys && key_name(i) == k);
        if !known {
            return Err(format!("iter yielded a key that was never stored: {k:?}"));
        }
        check_value(&k, &e.value)?;
        n += 1;
    }
    Ok(n)
}

#[test]
fn processes_never_see_a_wrong_value_under_eviction() {
    let _serial = serial();
    const PROCS: usize = 4;
    const KEYS: usize = 300;
    let ops = scaled(4000, 40_000);
    let seed = seed("processes_never_see_a_wrong_value_under_eviction");
    for kind in ALL_KINDS {
        let dir = temp_dir();
        // 32 KiB in all, for ~300 keys of up to 1.5 KiB: pages are evicted all the time.
        let cache = small_cache(&dir.path().join("values"), kind, 8, 4096);
        let start = Pipe::new();
        let mut kids = Children::new();
        for p in 0..PROCS {
            let cache = cache.clone();
            let start = &start;
            kids.spawn(move || {
                start.wait();
                let (reads, hits) = random_traffic(
                    &cache,
                    seed ^ ((p as u64 + 1) * 0x1234_5678),
                    ops,
                    KEYS,
                    1500,
                )?;
                if hits == 0 || hits == reads {
                    return Err(format!("implausible traffic: {hits} hits of {reads} reads"));
                }
                check_all_entries(&cache, KEYS)?;
                Ok(())
            });
        }
        start.release(PROCS);
        // The parent reads alongside the children.
        let mut rng = Rng::new(seed);
        for _ in 0..ops / 2 {
            let key = key_name(rng.range(0, KEYS));
            if let Some(v) = cache.get(&key).expect("parent get") {
                check_value(&key, &v).unwrap_or_else(|e| panic!("{kind:?}: parent read {e}"));
            }
        }
        kids.wait_all_ok();
        let live = check_all_entries(&cache, KEYS).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert!(
            live < KEYS,
            "{kind:?}: expected eviction, yet all {KEYS} keys are live"
        );
        assert!(live > 0, "{kind:?}: the cache ended up empty");
        let stats = cache.stats().expect("stats");
        assert_eq!(
            stats.resets, 0,
            "{kind:?}: pages were reset although nobody crashed"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (c) threads and processes together

#[test]
fn threads_in_several_processes_keep_totals_exact() {
    let _serial = serial();
    const PROCS: usize = 3;
    const THREADS: usize = 3;
    let iters = scaled(2000, 20_000);
    const SHARED: [&[u8]; 3] = [b"shared-0", b"shared-1", b"shared-2"];
    let seed = seed("threads_in_several_processes_keep_totals_exact");
    for kind in ALL_KINDS {
        let dir = temp_dir();
        // Roomy enough that no counter is ever evicted; still few pages, so threads collide.
        let cache = small_cache(&dir.path().join("mixed"), kind, 5, 65536);
        let start = Pipe::new();
        let mut kids = Children::new();
        for p in 0..PROCS {
            let cache = cache.clone();
            let start = &start;
            kids.spawn(move || {
                start.wait();
                let handles: Vec<_> = (0..THREADS)
                    .map(|t| {
                        let cache = cache.clone();
                        std::thread::spawn(move || -> Result<(), String> {
                            let mut rng = Rng::new(
                                seed ^ ((p * THREADS + t) as u64 + 1).wrapping_mul(0x9e37),
                            );
                            let own = format!("own-{p}-{t}").into_bytes();
                            for i in 0..iters {
                                incr(&cache, SHARED[(i + t) % SHARED.len()])?;
                                incr(&cache, &own)?;
                                let key = format!("val-{}", rng.below(64)).into_bytes();
                                if rng.chance(50) {
                                    cache
                                        .set(
                                            &key,
                                            &make_value(&key, rng.next_u64(), rng.range(0, 200)),
                                        )
                                        .map_err(|e| format!("set: {e}"))?;
                                } else if let Some(v) =
                                    cache.get(&key).map_err(|e| format!("get: {e}"))?
                                {
                                    check_value(&key, &v)?;
                                }
                            }
                            Ok(())
                        })
                    })
                    .collect();
                for h in handles {
                    h.join().map_err(|_| "a thread panicked".to_string())??;
                }
                Ok(())
            });
        }
        start.release(PROCS);
        kids.wait_all_ok();
        let total: u64 = SHARED.iter().map(|k| read_counter(&cache, k)).sum();
        assert_eq!(
            total,
            (PROCS * THREADS * iters) as u64,
            "{kind:?}: shared counters lost increments"
        );
        for p in 0..PROCS {
            for t in 0..THREADS {
                let own = format!("own-{p}-{t}").into_bytes();
                assert_eq!(
                    read_counter(&cache, &own),
                    iters as u64,
                    "{kind:?}: counter own-{p}-{t}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (d) two handles opened separately in one process

#[test]
fn separately_opened_handles_exclude_each_other_and_keep_their_locks() {
    let _serial = serial();
    let dir = temp_dir();
    let path = dir.path().join("two-handles");
    let a = small_cache(&path, NATIVE, 2, 4096);
    let b = Cache::builder()
        .path(&path)
        .open()
        .expect("second open of the same file");

    // Threads on both handles increment the same counters: exclusion must span the handles.
    const PER_THREAD: usize = 5000;
    let handles: Vec<_> = [&a, &a, &b, &b]
        .into_iter()
        .enumerate()
        .map(|(t, c)| {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let key: &[u8] = if (i + t) % 2 == 0 { b"even" } else { b"odd" };
                    incr(&c, key).expect("incr");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    assert_eq!(
        read_counter(&a, b"even") + read_counter(&b, b"odd"),
        4 * PER_THREAD as u64
    );
    assert_eq!(read_counter(&b, b"even"), 2 * PER_THREAD as u64);

    // A third handle, with a short lock timeout, for probing.
    let probe = Cache::builder()
        .path(&path)
        .lock_timeout(Duration::from_millis(300))
        .open()
        .expect("third open of the same file");
    let key: &[u8] = b"held";
    let value = make_value(key, 7, 100);
    a.set(key, &value).expect("set");

    // Fork the prober now, while no thread exists and no lock is held, so the child starts
    // with clean in-process locks: what it then waits for is the parent's fcntl lock.
    let probe_now = Pipe::new();
    let report = Pipe::new();
    let mut kids = Children::new();
    kids.spawn(|| {
        probe_now.wait();
        let first = match probe.get(key) {
            Err(Error::LockTimeout { .. }) => 1u8,
            Ok(_) => 2,
            Err(_) => 3,
        };
        report.send(&[first]);
        probe_now.wait();
        let second = match probe.get(key) {
            Ok(Some(v)) if check_value(key, &v).is_ok() => 1u8,
            Ok(_) => 2,
            Err(_) => 3,
        };
        report.send(&[second]);
        Ok(())
    });

    // Thread T holds the page lock through handle `a` inside a get_with closure.
    let holding = Arc::new(Pipe::new());
    let let_go = Arc::new(Pipe::new());
    let holder = {
        let (a, holding, let_go) = (a.clone(), holding.clone(), let_go.clone());
        std::thread::spawn(move || {
            a.get_with(b"held", |v| {
                holding.release(1);
                let_go.wait();
                v.len()
            })
        })
    };
    holding.wait();

    // Threads of this process are excluded through any handle.
    assert!(
        matches!(probe.get(key), Err(Error::LockTimeout { .. })),
        "another handle's thread got the page lock a thread of this process holds"
    );
    // Dropping a separately opened handle must not drop this process's fcntl locks.
    drop(b);
    probe_now.release(1);
    let mut r = [0u8];
    report.recv(&mut r);
    assert_eq!(
        r[0], 1,
        "while the lock is held, another process got it (2) or failed otherwise (3)"
    );

    let_go.release(1);
    assert_eq!(
        holder.join().expect("holder thread").expect("get_with"),
        Some(value.len())
    );
    probe_now.release(1);
    report.recv(&mut r);
    assert_eq!(
        r[0], 1,
        "after release, the other process could not read the value"
    );
    kids.wait_all_ok();
    assert_eq!(a.get(key).expect("get"), Some(value));
}

// ---------------------------------------------------------------------------------------------
// (e) race-free creation

#[test]
fn concurrent_creators_end_up_on_one_file() {
    let _serial = serial();
    const PROCS: usize = 8;
    let rounds = scaled(10, 100);
    for round in 0..rounds {
        let kind = ALL_KINDS[round % ALL_KINDS.len()];
        let dir = temp_dir();
        let path = dir.path().join("created");
        let start = Pipe::new();
        let written = Pipe::new();
        let read_all = Pipe::new();
        let inodes = Pipe::new();
        let mut kids = Children::new();
        for p in 0..PROCS {
            let (path, start, written, read_all, inodes) =
                (&path, &start, &written, &read_all, &inodes);
            kids.spawn(move || {
                start.wait();
                let cache = Cache::builder()
                    .path(path)
                    .layout(kind.layout)
                    .lock_kind(kind.lock)
                    // 4 MiB in 1024 pages: building the file takes long enough that
                    // the openers really race (with 4 small pages one finishes before
                    // the others look, and even a `rename` publication would pass).
                    .num_pages(1024)
                    .page_size(4096)
                    .open()
                    .map_err(|e| format!("open: {e}"))?;
                let key = format!("creator-{p}").into_bytes();
                cache
                    .set(&key, &make_value(&key, p as u64, 64))
                    .map_err(|e| format!("set: {e}"))?;
                let ino = std::fs::metadata(path)
                    .map_err(|e| format!("stat: {e}"))?
                    .ino();
                inodes.send_u64(ino);
                written.release(1);
                read_all.wait();
                for q in 0..PROCS {
                    let key = format!("creator-{q}").into_bytes();
                    match cache.get(&key).map_err(|e| format!("get: {e}"))? {
                        Some(v) if check_value(&key, &v) == Ok(q as u64) => {}
                        other => {
                            return Err(format!(
                                "creator {p} does not see creator {q}'s value: {other:?}"
                            ));
                        }
                    }
                }
                Ok(())
            });
        }
        start.release(PROCS);
        for _ in 0..PROCS {
            written.wait();
        }
        read_all.release(PROCS);
        kids.wait_all_ok();
        let seen: Vec<u64> = (0..PROCS).map(|_| inodes.recv_u64()).collect();
        let ino = std::fs::metadata(&path).expect("stat").ino();
        assert!(
            seen.iter().all(|&i| i == ino),
            "{kind:?}: creators saw different files: {seen:?} vs {ino}"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("dir entry").file_name())
            .filter(|n| n != "created")
            .collect();
        assert!(
            leftovers.is_empty(),
            "{kind:?}: temporary files left behind: {leftovers:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (f) re-entrancy

#[test]
fn calls_from_inside_closures_are_reentrant_errors_not_deadlocks() {
    let _serial = serial();
    let dir = temp_dir();
    let path = dir.path().join("reentrant");
    let cache = small_cache(&path, NATIVE, 4, 4096);
    let same_file = Cache::builder().path(&path).open().expect("second handle");
    let unrelated = small_cache(&dir.path().join("other"), NATIVE, 1, 4096);
    cache.set(b"k", b"v").expect("set");
    // A key on a different page of the same file: re-entrancy is per file, not per page.
    let far = (0..1000)
        .map(|i| format!("far-{i}").into_bytes())
        .find(|k| key_page(Layout::Native, k, 4) != key_page(Layout::Native, b"k", 4))
        .expect("a key on another page");

    let inner_results = with_deadline(Duration::from_secs(20), "re-entrant calls", move || {
        let reentrant = |r: Result<(), Error>| matches!(r, Err(Error::Reentrant { .. }));
        let mut got = Vec::new();
        let outer = cache.get_with(b"k", |_| {
            got.push(("get same key", reentrant(cache.get(b"k").map(|_| ()))));
            got.push(("get other page", reentrant(cache.get(&far).map(|_| ()))));
            got.push(("set", reentrant(cache.set(b"x", b"y").map(|_| ()))));
            got.push((
                "clone.remove",
                reentrant(cache.clone().remove(b"k").map(|_| ())),
            ));
            got.push(("other handle", reentrant(same_file.get(b"k").map(|_| ()))));
            got.push(("stats", reentrant(cache.stats().map(|_| ()))));
            got.push((
                "iter",
                matches!(cache.iter().next(), Some(Err(Error::Reentrant { .. }))),
            ));
            got.push(("unrelated file works", unrelated.set(b"u", b"1").is_ok()));
        });
        assert!(matches!(outer, Ok(Some(()))), "outer get_with: {outer:?}");
        let outer = cache.update(b"k", |old| {
            got.push(("update sees value", old == Some(&b"v"[..])));
            got.push((
                "update→update",
                reentrant(cache.update(b"k", |_| Update::Keep).map(|_| ())),
            ));
            got.push(("update→take", reentrant(cache.take(b"k").map(|_| ()))));
            Update::Set(b"w".to_vec())
        });
        assert_eq!(outer.expect("outer update"), Some(b"w".to_vec()));
        // Afterwards, everything works again from this thread.
        got.push((
            "usable afterwards",
            cache.get(b"k").ok() == Some(Some(b"w".to_vec())),
        ));
        got.push(("other handle afterwards", same_file.set(b"x", b"y").is_ok()));
        got
    });
    let failed: Vec<_> = inner_results
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(what, _)| *what)
        .collect();
    assert!(failed.is_empty(), "re-entrancy checks failed: {failed:?}");
}

// ---------------------------------------------------------------------------------------------
// (g) a panic inside a closure releases the lock

#[test]
fn panic_inside_closure_releases_the_page_lock() {
    let _serial = serial();
    for kind in ALL_KINDS {
        let dir = temp_dir();
        let cache = Cache::builder()
            .path(dir.path().join("panics"))
            .layout(kind.layout)
            .lock_kind(kind.lock)
            .num_pages(2)
            .page_size(4096)
            .lock_timeout(Duration::from_secs(5))
            .open()
            .expect("open");
        let key: &[u8] = b"count";
        incr(&cache, key).expect("incr");

        let quiet = Arc::new(AtomicBool::new(true));
        let previous = std::panic::take_hook();
        {
            let quiet = quiet.clone();
            std::panic::set_hook(Box::new(move |info| {
                if !quiet.load(Ordering::Relaxed) {
                    eprintln!("{info}");
                }
            }));
        }
        let r1 = catch_unwind(AssertUnwindSafe(|| {
            cache.update(key, |_| -> Update { panic!("boom in update") })
        }));
        let r2 = catch_unwind(AssertUnwindSafe(|| {
            cache.get_with(key, |_| -> usize { panic!("boom in get_with") })
        }));
        quiet.store(false, Ordering::Relaxed);
        let _ = std::panic::take_hook();
        std::panic::set_hook(previous);
        assert!(
            r1.is_err() && r2.is_err(),
            "the closures' panics should propagate"
        );

        // The same thread is not left "inside" the cache, and the value is unchanged.
        assert_eq!(read_counter(&cache, key), 1, "{kind:?}: after the panics");
        // Another thread can take the lock (the in-process mutex is not left locked).
        let c2 = cache.clone();
        std::thread::spawn(move || incr(&c2, b"count").expect("incr from a thread"))
            .join()
            .expect("thread");
        // Another process can take the lock (the fcntl lock was released).
        let mut kids = Children::new();
        {
            let cache = cache.clone();
            kids.spawn(move || {
                for _ in 0..100 {
                    incr(&cache, key)?;
                }
                Ok(())
            });
        }
        kids.wait_all_ok();
        assert_eq!(
            read_counter(&cache, key),
            102,
            "{kind:?}: increments after the panics"
        );
    }
}
