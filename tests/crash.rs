//! Processes SIGKILLed at random instants while they write, and while they hold a page lock:
//! nobody else is harmed, every value read afterwards is intact, and the cache stays usable.
//!
//! `FASTMMAP_STRESS=long` runs ten times as many kills. How a compaction is compiled matters
//! here (a store the optimiser may drop is no protection against SIGKILL), so also run the
//! long mode against an optimised build, e.g.
//! `CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_LTO=fat FASTMMAP_STRESS=long
//! cargo test --release --test crash`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fastmmap::{Cache, Error, Expiry, Update};

const KEYS: usize = 200;

/// Geometry and value sizes of one run.
#[derive(Clone, Copy, Debug)]
struct Shape {
    num_pages: u32,
    page_size: u32,
    /// Largest value a writer stores.
    max_len: usize,
}

/// 32 KiB in small pages: evictions and compactions all the time, lock contention.
const SMALL: Shape = Shape {
    num_pages: 8,
    page_size: 4096,
    max_len: 1500,
};
/// Two 1 MiB pages with values up to 120 KiB: compactions copy hundreds of KiB, so kills
/// often land in the middle of one (a torn compaction is what the busy marker and the
/// cleared magic guard against).
const BIG: Shape = Shape {
    num_pages: 2,
    page_size: 1 << 20,
    max_len: 120_000,
};

fn key_name(i: usize) -> Vec<u8> {
    format!("crash-{i:04}").into_bytes()
}

fn key_index(k: &[u8]) -> Option<usize> {
    let i = std::str::from_utf8(k)
        .ok()?
        .strip_prefix("crash-")?
        .parse::<usize>()
        .ok()?;
    (i < KEYS && key_name(i) == k).then_some(i)
}

fn open(path: &std::path::Path, kind: Kind, shape: Shape, verify: bool) -> Cache {
    Cache::builder()
        .path(path)
        .layout(kind.layout)
        .lock_kind(kind.lock)
        .num_pages(shape.num_pages)
        .page_size(shape.page_size)
        .verify(verify)
        // A lock a dead process kept would show up as a failure rather than a hang.
        .lock_timeout(Duration::from_secs(10))
        .open()
        .expect("open cache")
}

/// What a writer does until it is killed: every kind of change, values of varied lengths
/// (eviction and compaction all the time on a 32 KiB cache), every value it reads checked.
fn writer(cache: &Cache, seed: u64, max_len: usize) -> ChildResult {
    let mut rng = Rng::new(seed);
    let err = |op: &str, e: Error| format!("{op}: {e}");
    loop {
        let key = key_name(rng.range(0, KEYS));
        match rng.below(100) {
            0..50 => {
                let v = make_value(&key, rng.next_u64(), rng.range(0, max_len));
                cache.set(&key, &v).map_err(|e| err("set", e))?;
            }
            50..60 => {
                let v = make_value(&key, rng.next_u64(), rng.range(0, max_len / 5));
                cache
                    .set_with(&key, &v, Expiry::After(Duration::from_secs(3600)))
                    .map_err(|e| err("set_with", e))?;
            }
            60..75 => {
                // Half the time a value as long as the old one: the native layout rewrites
                // such an entry in place, under the busy marker.
                let same_size = rng.chance(50);
                let (seq, len) = (rng.next_u64(), rng.range(0, max_len / 2));
                let mut seen = Ok(());
                cache
                    .update(&key, |old| {
                        let len = match old {
                            Some(old) => {
                                seen = check_value(&key, old).map(|_| ());
                                if same_size { old.len() } else { len }
                            }
                            None => len,
                        };
                        Update::Set(make_value(&key, seq, len))
                    })
                    .map_err(|e| err("update", e))?;
                seen?;
            }
            75..90 => {
                if let Some(v) = cache.get(&key).map_err(|e| err("get", e))? {
                    check_value(&key, &v)?;
                }
            }
            90..95 => {
                if let Some(v) = cache.take(&key).map_err(|e| err("take", e))? {
                    check_value(&key, &v)?;
                }
            }
            95..99 => {
                cache.remove(&key).map_err(|e| err("remove", e))?;
            }
            _ => {
                cache.purge().map_err(|e| err("purge", e))?;
            }
        }
    }
}

/// Reads every key and walks every page: each value is intact and stored for its key.
fn check_everything(cache: &Cache, what: &str) -> usize {
    for i in 0..KEYS {
        let key = key_name(i);
        if let Some(v) = cache
            .get(&key)
            .unwrap_or_else(|e| panic!("{what}: get: {e}"))
        {
            check_value(&key, &v).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
    }
    let mut live = 0;
    for item in cache.iter() {
        let (k, e) = item.unwrap_or_else(|e| panic!("{what}: iter: {e}"));
        assert!(
            key_index(&k).is_some(),
            "{what}: iter yielded a key never stored: {k:?}"
        );
        check_value(&k, &e.value).unwrap_or_else(|e| panic!("{what}: iter: {e}"));
        live += 1;
    }
    let keys = cache.keys().count();
    assert!(keys <= KEYS, "{what}: {keys} keys");
    cache
        .stats()
        .unwrap_or_else(|e| panic!("{what}: stats: {e}"));
    live
}

fn random_kills(kind: Kind, shape: Shape, kills: usize) {
    let seed = seed(&format!("random_kills_{kind:?}_{shape:?}"));
    let mut rng = Rng::new(seed);
    let dir = temp_dir();
    let path = dir.path().join("crash");
    let cache = open(&path, kind, shape, false);
    let mut kids = Children::new();
    let mut killed_while_running = 0;
    let mut round = 0;
    while round < kills {
        // Two writers at a time, so that kills also land while another process waits for the
        // same page lock; each is killed 0-3 ms after it was started.
        let a = kids.spawn({
            let (cache, s) = (cache.clone(), rng.next_u64());
            move || writer(&cache, s, shape.max_len)
        });
        let b = kids.spawn({
            let (cache, s) = (cache.clone(), rng.next_u64());
            move || writer(&cache, s, shape.max_len)
        });
        // Staggered kills: the survivor keeps writing, and meets whatever the victim left.
        // Together: both die back to back and the parent looks first, so that a page left
        // half-changed cannot be cleaned up by the other writer before anyone reads it.
        let together = rng.chance(50);
        let mut victims = vec![a, b];
        while !victims.is_empty() {
            // The parent keeps reading while it waits, so it too shares pages with the victims.
            let deadline = Instant::now() + Duration::from_micros(rng.below(3000));
            while Instant::now() < deadline {
                let key = key_name(rng.range(0, KEYS));
                if let Some(v) = cache.get(&key).expect("parent get") {
                    check_value(&key, &v)
                        .unwrap_or_else(|e| panic!("{kind:?}: parent read during kills: {e}"));
                }
            }
            let now: Vec<libc::pid_t> = if together {
                std::mem::take(&mut victims)
            } else {
                vec![victims.remove(0)]
            };
            for &pid in &now {
                kill9(pid);
            }
            for pid in now {
                match kids.wait(pid) {
                    Exit::Signal(libc::SIGKILL) => killed_while_running += 1,
                    other => panic!(
                        "{kind:?}: writer {pid} ended with {other:?} before it was killed (details on stderr)"
                    ),
                }
                round += 1;
            }
            // Right after the kill: every key reads as absent or intact. (In a random order:
            // the first read of a damaged entry resets its page, so the order decides which
            // entry gets looked at.)
            let mut order: Vec<usize> = (0..KEYS).collect();
            for i in (1..KEYS).rev() {
                order.swap(i, rng.range(0, i + 1));
            }
            for i in order {
                let key = key_name(i);
                if let Some(v) = cache.get(&key).expect("parent get") {
                    check_value(&key, &v).unwrap_or_else(|e| {
                        panic!("{kind:?}: parent read right after kill {round}: {e}")
                    });
                }
            }
        }
        if round % 20 < 2 {
            check_everything(&cache, &format!("{kind:?} after {round} kills"));
        }
    }
    assert_eq!(killed_while_running, round);
    let resets_seen = cache.stats().expect("stats").resets;

    // Reopen with full validation of every page (the pages a dead writer left half-changed
    // are reset), then check everything through the API.
    let verified = open(&path, kind, shape, true);
    let live = check_everything(&verified, &format!("{kind:?} after reopening with verify"));
    eprintln!("{kind:?}: {round} kills, {resets_seen} page resets, {live} live entries at the end");

    // Fully usable: every key can be stored and read back, by this process and by another.
    for i in 0..KEYS {
        let key = key_name(i);
        let v = make_value(&key, 1_000_000 + i as u64, 40);
        assert!(verified.set(&key, &v).expect("set"));
        assert_eq!(
            verified.get(&key).expect("get"),
            Some(v),
            "{kind:?}: read back {i}"
        );
    }
    verified.clear().expect("clear");
    assert_eq!(verified.keys().count(), 0);
    kids.spawn({
        let cache = verified.clone();
        move || {
            for i in 0..KEYS {
                let key = key_name(i);
                cache
                    .set(&key, &make_value(&key, i as u64, 30))
                    .map_err(|e| format!("set: {e}"))?;
            }
            Ok(())
        }
    });
    kids.wait_all_ok();
    check_everything(&verified, &format!("{kind:?} after a clean writer"));
    let reachable = (0..KEYS)
        .filter(|&i| verified.get(&key_name(i)).expect("get").is_some())
        .count();
    assert!(
        reachable > KEYS / 2,
        "{kind:?}: only {reachable} of {KEYS} small values survived a clean run"
    );
}

#[test]
fn random_sigkills_while_writing_native() {
    let _serial = serial();
    random_kills(NATIVE, SMALL, scaled(100, 1000));
}

#[test]
fn random_sigkills_while_writing_fastmmap() {
    let _serial = serial();
    random_kills(FASTMMAP, SMALL, scaled(100, 1000));
}

#[test]
fn random_sigkills_while_writing_robust() {
    let _serial = serial();
    random_kills(ROBUST, SMALL, scaled(100, 1000));
}

#[test]
fn random_sigkills_during_big_compactions_native() {
    let _serial = serial();
    random_kills(NATIVE, BIG, scaled(100, 1000));
}

#[test]
fn random_sigkills_during_big_compactions_fastmmap() {
    let _serial = serial();
    random_kills(FASTMMAP, BIG, scaled(100, 1000));
}

#[test]
fn random_sigkills_during_big_compactions_robust() {
    let _serial = serial();
    random_kills(ROBUST, BIG, scaled(100, 1000));
}

/// A child dies (SIGKILL) while inside a `get_with` closure, that is while holding the page
/// lock: the kernel drops its fcntl lock (or marks its robust mutex as owner-dead), and the
/// parent can lock the page again.
fn killed_lock_holder(kind: Kind) {
    let dir = temp_dir();
    let path = dir.path().join("holder");
    let cache = open(&path, kind, SMALL, false);
    let key: &[u8] = b"held-key";
    let value = make_value(key, 42, 300);
    cache.set(key, &value).expect("set");
    let impatient = Cache::builder()
        .path(&path)
        .layout(kind.layout)
        .lock_kind(kind.lock)
        .num_pages(SMALL.num_pages)
        .page_size(SMALL.page_size)
        .lock_timeout(Duration::from_millis(200))
        .open()
        .expect("second handle");

    let holding = Pipe::new();
    let mut kids = Children::new();
    let pid = kids.spawn({
        let cache = cache.clone();
        let holding = &holding;
        move || {
            cache
                .get_with(key, |_| {
                    holding.release(1);
                    std::thread::sleep(Duration::from_secs(3600));
                })
                .map_err(|e| format!("get_with: {e}"))?;
            Err("the sleep inside the lock ended".into())
        }
    });
    assert!(
        holding.wait_timeout(Duration::from_secs(20)),
        "{kind:?}: the child never took the lock"
    );
    // The child really holds it: this process cannot get the page.
    assert!(
        matches!(impatient.get(key), Err(Error::LockTimeout { .. })),
        "{kind:?}: the page lock was available while the child held it"
    );
    assert_eq!(kids.kill(pid), Exit::Signal(libc::SIGKILL));

    // The dead child's lock is free again (released, or handed over as owner-dead): reads and
    // writes work at once.
    assert_eq!(
        impatient.get(key).expect("get after the holder died"),
        Some(value.clone())
    );
    let newer = make_value(key, 43, 500);
    assert!(
        impatient
            .set(key, &newer)
            .expect("set after the holder died")
    );
    assert_eq!(cache.get(key).expect("get"), Some(newer));
    // And another process can use the page too.
    kids.spawn({
        let cache = impatient.clone();
        move || {
            let v = make_value(key, 44, 100);
            cache.set(key, &v).map_err(|e| format!("set: {e}"))?;
            match cache.get(key).map_err(|e| format!("get: {e}"))? {
                Some(got) if got == v => Ok(()),
                other => Err(format!("read back {other:?}")),
            }
        }
    });
    kids.wait_all_ok();
    assert_eq!(
        cache.stats().expect("stats").resets,
        0,
        "{kind:?}: a read-only holder's death needs no reset"
    );
}

#[test]
fn killed_lock_holder_releases_the_page_native() {
    let _serial = serial();
    killed_lock_holder(NATIVE);
}

#[test]
fn killed_lock_holder_releases_the_page_robust() {
    let _serial = serial();
    killed_lock_holder(ROBUST);
}

#[test]
fn killed_lock_holder_releases_the_page_fastmmap() {
    let _serial = serial();
    killed_lock_holder(FASTMMAP);
}
