//! Resizing a live cache (`Cache::resize`, `fastmmap resize`): entries keep their values and
//! metadata; other handles and forked workers follow the move by themselves, with exact
//! counters and intact values; a resizer SIGKILLed at any instant leaves a usable cache; two
//! resizes at once do not both run.
//!
//! Every test takes `common::serial()` first: forking while another test thread of this binary
//! is inside the cache would hand the child a locked mutex.

mod common;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use fastmmap::{Cache, Error, Expiry, Layout, Update};

const SMALL: u32 = 89;
const LARGE: u32 = 997;
const PAGE: u32 = 16384;

/// Adds one to the 8-byte counter under `key`; returns the new count.
fn incr(cache: &Cache, key: &[u8]) -> Result<u64, String> {
    cache
        .update_with(key, |old| match counter_value(old.map(|e| e.value)) {
            Ok(n) => (Update::Set((n + 1).to_le_bytes().to_vec()), Ok(n + 1)),
            Err(e) => (Update::Keep, Err(e)),
        })
        .map_err(|e| format!("update {:?}: {e}", String::from_utf8_lossy(key)))?
}

fn open(kind: Kind, path: &Path, pages: u32) -> Cache {
    kind.builder()
        .path(path)
        .num_pages(pages)
        .page_size(PAGE)
        .open()
        .expect("open")
}

/// Files of a resize left in `dir` (`<name>.resize-<nonce>`).
fn key(i: usize) -> Vec<u8> {
    format!("key-{i}").into_bytes()
}

#[test]
fn grow_and_shrink_keep_entries_and_their_metadata() {
    let _s = serial();
    for kind in [NATIVE, ROBUST] {
        let dir = temp_dir();
        let path = dir.path().join("cache");
        let cache = open(kind, &path, SMALL);
        // A second handle of this process, opened on its own: it follows by itself.
        let other = Cache::builder().path(&path).open().expect("second handle");
        for i in 0..500 {
            let v = make_value(&key(i), i as u64, 40 + i % 300);
            cache.set(&key(i), &v).expect("set");
        }
        cache
            .set_with(
                b"expiring",
                b"soon",
                Expiry::After(Duration::from_secs(3600)),
            )
            .expect("set with expiry");
        assert!(
            cache
                .set_if_newer(b"versioned", b"v7", 7)
                .expect("set_if_newer")
        );
        let before = cache.entry(b"expiring").expect("entry").expect("present");

        let grown = cache.resize(LARGE, PAGE * 2).expect("grow");
        assert_eq!(grown.old_num_pages, SMALL);
        assert_eq!(grown.dropped, 0, "{grown:?}");
        assert_eq!(grown.copied, 502, "{grown:?}");
        assert_eq!((cache.num_pages(), cache.page_size()), (LARGE, PAGE * 2));
        for handle in [&cache, &other] {
            for i in 0..500 {
                let v = handle.get(&key(i)).expect("get").expect("kept");
                assert_eq!(check_value(&key(i), &v).expect("intact"), i as u64);
            }
        }
        assert_eq!(other.num_pages(), LARGE, "the second handle followed");
        let after = cache.entry(b"expiring").expect("entry").expect("kept");
        assert_eq!(after.expires_at, before.expires_at);
        assert_eq!(after.value, b"soon");
        // The modseq came along: an older version is still refused.
        assert!(
            !cache
                .set_if_newer(b"versioned", b"v6", 6)
                .expect("older refused")
        );
        assert_eq!(
            cache
                .entry(b"versioned")
                .expect("entry")
                .expect("kept")
                .modseq,
            Some(7)
        );

        // A fresh open finds the new file under the old name, whatever geometry it asks for.
        let fresh = open(kind, &path, SMALL);
        assert_eq!(fresh.num_pages(), LARGE);
        drop(fresh);

        let shrunk = other.resize(SMALL, PAGE).expect("shrink");
        assert_eq!(shrunk.old_num_pages, LARGE);
        assert_eq!(shrunk.copied + shrunk.dropped, 502, "{shrunk:?}");
        assert_eq!(cache.num_pages(), SMALL);
        let mut kept = 0;
        for i in 0..500 {
            if let Some(v) = cache.get(&key(i)).expect("get") {
                assert_eq!(check_value(&key(i), &v).expect("intact"), i as u64);
                kept += 1;
            }
        }
        assert!(kept + 2 >= shrunk.copied, "{kept} of {shrunk:?}");
        assert_eq!(cache.validate().expect("validate"), vec![]);
        assert_no_resize_files(dir.path());
    }
}

#[test]
fn shrinking_below_what_is_stored_evicts_and_counts() {
    let _s = serial();
    let dir = temp_dir();
    let path = dir.path().join("cache");
    let cache = open(NATIVE, &path, LARGE);
    for i in 0..3000 {
        cache
            .set(&key(i), &make_value(&key(i), 1, 500))
            .expect("set");
    }
    let report = cache.resize(8, 4096).expect("shrink");
    assert!(report.dropped > 0, "{report:?}");
    assert_eq!(report.copied + report.dropped, 3000, "{report:?}");
    let stats = cache.stats().expect("stats");
    assert_eq!(stats.entries, report.copied);
    for i in 0..3000 {
        if let Some(v) = cache.get(&key(i)).expect("get") {
            check_value(&key(i), &v).expect("intact");
        }
    }
}

#[test]
fn refuses_what_it_cannot_do() {
    let _s = serial();
    let dir = temp_dir();
    let path = dir.path().join("cache");
    let perl = FASTMMAP
        .builder()
        .path(dir.path().join("perl"))
        .num_pages(7)
        .open()
        .expect("open");
    assert!(
        matches!(perl.resize(17, 65536), Err(Error::Resize { .. })),
        "a Cache::FastMmap file has no header to record a move in"
    );
    let cache = open(NATIVE, &path, SMALL);
    cache.set(b"k", b"v").expect("set");
    assert!(matches!(
        cache.resize(0, PAGE),
        Err(Error::InvalidOptions { .. })
    ));
    assert!(matches!(
        cache.resize(10, 5000),
        Err(Error::InvalidOptions { .. })
    ));
    assert_eq!(cache.num_pages(), SMALL);
    assert_eq!(cache.get(b"k").expect("get"), Some(b"v".to_vec()));
    let ro = Cache::builder()
        .path(&path)
        .read_only(true)
        .open()
        .expect("read-only");
    assert!(matches!(ro.resize(100, PAGE), Err(Error::ReadOnly { .. })));
    assert_no_resize_files(dir.path());
}

/// What one worker did: increments per counter, its longest operation, how many operations.
struct Tally {
    counts: Vec<u64>,
    longest: Duration,
    ops: u64,
}

const COUNTERS: usize = 32;
const WORKERS: usize = 4;

/// A worker: two threads, one incrementing counters, one storing and reading back
/// self-checking values, until `stop` exists (or a minute passes). Sends its tally on `out`.
fn worker(cache: Cache, id: usize, stop: PathBuf, ready: &Pipe, out: &Pipe) -> ChildResult {
    let result = work(cache, id, &stop, ready);
    // Always answer, so that the parent never waits for a worker that failed.
    let tally = result.as_ref().ok();
    out.send_u64(u64::from(tally.is_some()));
    for c in 0..COUNTERS {
        out.send_u64(tally.map_or(0, |t| t.counts[c]));
    }
    out.send_u64(tally.map_or(0, |t| t.longest.as_micros() as u64));
    out.send_u64(tally.map_or(0, |t| t.ops));
    result.map(|_| ())
}

fn work(cache: Cache, id: usize, stop: &Path, ready: &Pipe) -> Result<Tally, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let values = {
        let cache = cache.clone();
        let stop = stop.to_path_buf();
        std::thread::spawn(move || -> Result<(Duration, u64), String> {
            let mut rng = Rng::new(id as u64 * 7919 + 1);
            let (mut longest, mut ops, mut seq) = (Duration::ZERO, 0u64, 0u64);
            while !ops.is_multiple_of(64) || (!stop.exists() && Instant::now() < deadline) {
                let k = format!("w{id}-v{}", rng.below(200)).into_bytes();
                let t = Instant::now();
                if rng.chance(50) {
                    seq += 1;
                    let v = make_value(&k, seq, rng.range(60, 600));
                    cache.set(&k, &v).map_err(|e| format!("set: {e}"))?;
                } else if let Some(v) = cache.get(&k).map_err(|e| format!("get: {e}"))? {
                    check_value(&k, &v)?;
                }
                longest = longest.max(t.elapsed());
                ops += 1;
            }
            Ok((longest, ops))
        })
    };
    // Released even if this thread fails, so that the parent goes on (and then sees it).
    ready.release(1);
    let mut rng = Rng::new(id as u64);
    let mut tally = Tally {
        counts: vec![0; COUNTERS],
        longest: Duration::ZERO,
        ops: 0,
    };
    while !tally.ops.is_multiple_of(64) || (!stop.exists() && Instant::now() < deadline) {
        let c = rng.below(COUNTERS as u64) as usize;
        let t = Instant::now();
        incr(&cache, format!("counter-{c}").as_bytes())?;
        tally.longest = tally.longest.max(t.elapsed());
        tally.counts[c] += 1;
        tally.ops += 1;
    }
    let (longest, ops) = values
        .join()
        .map_err(|_| "the value thread panicked".to_string())??;
    tally.longest = tally.longest.max(longest);
    tally.ops += ops;
    Ok(tally)
}

fn workers_follow_resizes(kind: Kind) {
    let _s = serial();
    let dir = temp_dir();
    let path = dir.path().join("cache");
    let stop = dir.path().join("stop");
    let cache = open(kind, &path, SMALL);
    let ready = Pipe::new();
    let mut children = Children::new();
    let mut outs = Vec::new();
    for _ in 0..WORKERS {
        let out = Pipe::new();
        outs.push(out);
    }
    for (id, out) in outs.iter().enumerate() {
        let (cache, stop, ready) = (cache.clone(), stop.clone(), &ready);
        children.spawn(move || worker(cache, id, stop, ready, out));
    }
    for _ in 0..WORKERS {
        ready.wait();
    }
    let started = Instant::now();
    let cycles = scaled(3, 30);
    let mut moves = Vec::new();
    let mut held = Duration::ZERO;
    let mut step = Duration::ZERO;
    for _ in 0..cycles {
        for pages in [LARGE, SMALL] {
            std::thread::sleep(Duration::from_millis(150));
            let t = Instant::now();
            let report = cache.resize(pages, PAGE).expect("resize under load");
            moves.push(t.elapsed());
            assert!(
                report.locks_held > Duration::ZERO && report.locks_held <= t.elapsed(),
                "the locks are held for part of the move: {report:?}"
            );
            held = held.max(report.locks_held);
            step = step.max(report.longest_step);
            assert_eq!(
                report.dropped, 0,
                "nothing is evicted at this load: {report:?}"
            );
        }
    }
    std::thread::sleep(Duration::from_millis(150));
    std::fs::write(&stop, b"").expect("stop file");
    let mut tallies = Vec::new();
    for out in &outs {
        let ok = out.recv_u64() == 1;
        let counts = (0..COUNTERS).map(|_| out.recv_u64()).collect();
        let longest = Duration::from_micros(out.recv_u64());
        let ops = out.recv_u64();
        if ok {
            tallies.push(Tally {
                counts,
                longest,
                ops,
            });
        }
    }
    children.wait_all_ok();
    let elapsed = started.elapsed();
    for c in 0..COUNTERS {
        let expected: u64 = tallies.iter().map(|t| t.counts[c]).sum();
        let found = counter_value(
            cache
                .get(format!("counter-{c}").as_bytes())
                .expect("get")
                .as_deref(),
        )
        .expect("counter");
        assert_eq!(found, expected, "counter-{c}");
    }
    assert_eq!(cache.num_pages(), SMALL);
    assert_no_resize_files(dir.path());
    let ops: u64 = tallies.iter().map(|t| t.ops).sum();
    let longest = tallies.iter().map(|t| t.longest).max().unwrap_or_default();
    eprintln!(
        "{kind:?}: {} moves between {SMALL} and {LARGE} pages of {PAGE} bytes, each {:?} at \
         most, one step holding an old page {step:?} at most (the old file's page locks \
         {held:?} in all per move at most); {WORKERS} workers x 2 threads: {ops} \
         operations in {elapsed:?} ({:.0}/s), the longest {longest:?}",
        moves.len(),
        moves.iter().max().copied().unwrap_or_default(),
        ops as f64 / elapsed.as_secs_f64()
    );
}

#[test]
fn forked_workers_follow_resizes_fcntl() {
    workers_follow_resizes(NATIVE);
}

#[test]
fn forked_workers_follow_resizes_robust() {
    workers_follow_resizes(ROBUST);
}

/// The resizer is SIGKILLed at a random instant, again and again: the cache stays usable by a
/// handle opened before, nothing stored is lost, and a later resize goes through.
#[test]
fn a_killed_resizer_loses_nothing() {
    let _s = serial();
    let mut rng = Rng::new(seed("a_killed_resizer_loses_nothing"));
    for kind in [NATIVE, ROBUST] {
        let dir = temp_dir();
        let path = dir.path().join("cache");
        let cache = open(kind, &path, SMALL);
        for i in 0..300 {
            cache
                .set(&key(i), &make_value(&key(i), i as u64, 200))
                .expect("set");
        }
        let mut children = Children::new();
        let rounds = scaled(8, 200);
        for round in 0..rounds {
            let pages = if round % 2 == 0 { LARGE } else { SMALL };
            let child_path = path.clone();
            let pid = children.spawn(move || {
                let cache = Cache::builder()
                    .path(&child_path)
                    .open()
                    .map_err(|e| e.to_string())?;
                match cache.resize(pages, PAGE) {
                    Ok(_) => Ok(()),
                    Err(e) => Err(format!("resize: {e}")),
                }
            });
            std::thread::sleep(Duration::from_micros(rng.below(60_000)));
            children.kill(pid);
            assert_eq!(
                incr(&cache, b"counter").expect("incr after a kill"),
                round as u64 + 1
            );
            for i in 0..300 {
                let v = cache.get(&key(i)).expect("get").expect("still there");
                assert_eq!(check_value(&key(i), &v).expect("intact"), i as u64);
            }
        }
        cache
            .resize(SMALL + 1, PAGE)
            .expect("a resize after the kills");
        assert_eq!(incr(&cache, b"counter").expect("incr"), rounds as u64 + 1);
        for i in 0..300 {
            let v = cache.get(&key(i)).expect("get").expect("still there");
            assert_eq!(check_value(&key(i), &v).expect("intact"), i as u64);
        }
        assert_no_resize_files(dir.path());
        assert_eq!(Cache::open(&path).expect("reopen").num_pages(), SMALL + 1);
    }
}

/// Another process holds the resize lock: a resize is refused, naming that process.
#[test]
fn a_resize_in_progress_refuses_another() {
    let _s = serial();
    let dir = temp_dir();
    let path = dir.path().join("cache");
    let cache = open(NATIVE, &path, SMALL);
    cache.set(b"k", b"v").expect("set");
    let held = Pipe::new();
    let done = Pipe::new();
    let mut children = Children::new();
    let (child_path, h, d) = (path.clone(), &held, &done);
    let pid = children.spawn(move || {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&child_path)
            .map_err(|e| e.to_string())?;
        // The resize lock: byte 72 of the header (docs/format.md).
        // SAFETY: flock is plain data; the descriptor stays open across the call.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = 72;
        fl.l_len = 1;
        // SAFETY: as above.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) } != 0 {
            return Err("could not take the resize lock".into());
        }
        h.release(1);
        d.wait();
        Ok(())
    });
    held.wait();
    match cache.resize(LARGE, PAGE) {
        Err(Error::ResizeInProgress { pid: found, .. }) => assert_eq!(found, Some(pid)),
        other => panic!("expected ResizeInProgress, got {other:?}"),
    }
    done.release(1);
    children.wait_all_ok();
    assert_eq!(cache.num_pages(), SMALL);
    cache.resize(LARGE, PAGE).expect("the lock is free again");
    assert_eq!(cache.get(b"k").expect("get"), Some(b"v".to_vec()));
    assert_no_resize_files(dir.path());
}

/// Two processes resize at the same instant: each succeeds or is told another resize is in
/// progress; at least one succeeds; nothing stored is lost.
#[test]
fn two_resizes_at_once() {
    let _s = serial();
    let dir = temp_dir();
    let path = dir.path().join("cache");
    let cache = open(ROBUST, &path, SMALL);
    for i in 0..200 {
        cache
            .set(&key(i), &make_value(&key(i), 3, 300))
            .expect("set");
    }
    for round in 0..scaled(4, 40) {
        let go = Pipe::new();
        let mut children = Children::new();
        let mut pids = Vec::new();
        for pages in [400 + round as u32, 600 + round as u32] {
            let (child_path, go) = (path.clone(), &go);
            pids.push(children.spawn(move || {
                let cache = Cache::builder()
                    .path(&child_path)
                    .open()
                    .map_err(|e| e.to_string())?;
                go.wait();
                match cache.resize(pages, PAGE) {
                    Ok(_) => Ok(()),
                    Err(Error::ResizeInProgress { .. }) => Err("in progress".into()),
                    Err(e) => Err(format!("unexpected: {e}")),
                }
            }));
        }
        go.release(2);
        let exits: Vec<Exit> = pids.iter().map(|&p| children.wait(p)).collect();
        assert!(
            exits.contains(&Exit::Code(0)),
            "at least one resize goes through: {exits:?}"
        );
        assert!(
            exits
                .iter()
                .all(|e| matches!(e, Exit::Code(0) | Exit::Code(CHILD_FAILED))),
            "{exits:?}"
        );
        let pages = cache.num_pages();
        assert!(
            [400 + round as u32, 600 + round as u32].contains(&pages),
            "{pages}"
        );
        for i in 0..200 {
            let v = cache.get(&key(i)).expect("get").expect("kept");
            check_value(&key(i), &v).expect("intact");
        }
    }
    assert_no_resize_files(dir.path());
}

/// A backing store in memory, for the write-back case.
#[derive(Clone, Default)]
struct Mem(std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<Vec<u8>, Vec<u8>>>>);

impl fastmmap::Backing for Mem {
    fn load(&self, key: &[u8]) -> Result<Option<Vec<u8>>, fastmmap::BackingError> {
        Ok(self.0.lock().unwrap().get(key).cloned())
    }
    fn store(
        &self,
        key: &[u8],
        value: &[u8],
        _expires_at: Option<std::time::SystemTime>,
    ) -> Result<(), fastmmap::BackingError> {
        self.0.lock().unwrap().insert(key.to_vec(), value.to_vec());
        Ok(())
    }
    fn delete(&self, key: &[u8]) -> Result<(), fastmmap::BackingError> {
        self.0.lock().unwrap().remove(key);
        Ok(())
    }
}

/// The options of a cache of `SMALL` pages at `path` over `backing`, written `mode`.
fn backed(
    kind: Kind,
    path: &Path,
    backing: impl fastmmap::Backing + 'static,
    mode: fastmmap::WriteMode,
) -> fastmmap::CacheBuilder {
    kind.builder()
        .path(path)
        .num_pages(SMALL)
        .page_size(PAGE)
        .backing(backing)
        .write_mode(mode)
}

/// A write-back cache of `SMALL` pages at `path` over `store`.
fn write_back_over(kind: Kind, path: &Path, store: &Mem) -> Cache {
    backed(kind, path, store.clone(), fastmmap::WriteMode::Back)
        .open()
        .expect("open")
}

/// A write-back cache resized while threads keep writing: dirty entries move dirty, and once
/// flushed the store holds every acknowledged write. Long mode repeats it 100 times: a write
/// landing in the old file just as a move finished was lost here once in CI, and about once
/// in 100 rounds under load, before lockers read the move's state once.
#[test]
fn write_back_entries_stay_dirty_across_moves() {
    let _s = serial();
    for kind in std::iter::repeat_n([NATIVE, ROBUST], scaled(1, 100)).flatten() {
        let dir = temp_dir();
        let path = dir.path().join("cache");
        let store = Mem::default();
        let cache = write_back_over(kind, &path, &store);
        for i in 0..300 {
            cache.set(&key(i), b"first").expect("set");
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|t| {
                let (cache, stop) = (cache.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut last = std::collections::BTreeMap::new();
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 1_000_000 {
                        let k = format!("t{t}-{}", n % 97).into_bytes();
                        let v = make_value(&k, n, 64);
                        cache.set(&k, &v).expect("set during a move");
                        last.insert(k, v);
                        n += 1;
                    }
                    last
                })
            })
            .collect();
        for pages in [LARGE, SMALL, LARGE, SMALL] {
            std::thread::sleep(Duration::from_millis(50));
            let report = cache.resize(pages, PAGE).expect("resize");
            assert_eq!(report.dirty_dropped, 0, "{report:?}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut acknowledged = std::collections::BTreeMap::new();
        for w in writers {
            acknowledged.extend(w.join().expect("writer"));
        }
        for i in 0..300 {
            let e = cache.entry(&key(i)).expect("entry").expect("kept");
            assert!(e.flags.is_dirty(), "still dirty after the moves");
            assert_eq!(e.value, b"first");
        }
        cache.flush().expect("flush");
        let stored = store.0.lock().unwrap().clone();
        for i in 0..300 {
            assert_eq!(stored.get(&key(i)).map(Vec::as_slice), Some(&b"first"[..]));
        }
        for (k, v) in &acknowledged {
            assert_eq!(stored.get(k), Some(v), "{:?}", String::from_utf8_lossy(k));
        }
    }
}

// Large values (issue 24's overflow area) across moves.

const AREA: u64 = 16 << 20;
const MAX_VALUE: u32 = 256 * 1024;
const BLOCK: u64 = 4096;

fn open_large(kind: Kind, path: &Path, pages: u32) -> Cache {
    kind.builder()
        .path(path)
        .num_pages(pages)
        .page_size(PAGE)
        .overflow_size(AREA)
        .max_value_size(MAX_VALUE)
        .lock_timeout(Duration::from_secs(30))
        .open()
        .expect("open with an overflow area")
}

/// Bytes of the overflow area the live entries of `cache` should hold: the blocks of every
/// value whose entry does not fit a page.
fn expected_use(cache: &Cache) -> u64 {
    cache
        .iter()
        .map(|r| r.expect("entry"))
        .filter(|(k, e)| {
            (24 + k.len() + e.value.len()).next_multiple_of(4) > cache.max_entry_size()
        })
        .map(|(_, e)| (e.value.len() as u64).div_ceil(BLOCK) * BLOCK)
        .sum()
}

/// The area after a move: the old one's size and largest value, no damaged page, no block
/// held that no entry references, and exactly the blocks the live large values need.
fn assert_area_exact(cache: &Cache, what: &str) {
    assert_eq!(cache.max_value_size(), MAX_VALUE as usize, "{what}");
    let stats = cache.stats().expect("stats");
    assert_eq!(stats.overflow_bytes, AREA, "{what}");
    let (problems, unreferenced) = cache.check_overflow().expect("check_overflow");
    assert_eq!(problems, vec![], "{what}");
    assert_eq!(unreferenced, 0, "{what}: a block leaked");
    assert_eq!(
        stats.overflow_used_bytes,
        expected_use(cache),
        "{what}: blocks held"
    );
}

/// A write-back store of a small value over a large one, in a page a stopped move has put in
/// the new file, frees the large value's blocks: the page it changes and the blocks it owns are
/// the new file's, not those of the handle's file (the old one, until the move finishes).
#[test]
fn a_write_back_store_in_a_moved_page_frees_the_blocks_it_replaces() {
    let _s = serial();
    for kind in [NATIVE, ROBUST] {
        let dir = temp_dir();
        let store = Mem::default();
        let path = dir.path().join("cache");
        let cache = backed(kind, &path, store.clone(), fastmmap::WriteMode::Back)
            .overflow_size(AREA)
            .max_value_size(MAX_VALUE)
            .lock_timeout(Duration::from_secs(30))
            .open()
            .expect("open");
        for i in 0..40 {
            let v = make_value(&key(i), 1, 20_000);
            cache.set(&key(i), &v).expect("large value");
        }
        cache
            .resize_stopping_after(LARGE, PAGE, SMALL / 2)
            .expect("half a move");
        for i in 0..40 {
            let v = make_value(&key(i), 2, 100);
            cache.set(&key(i), &v).expect("small value");
        }
        assert_area_exact(&cache, "small values over large ones, the move stopped");
        cache.resize(LARGE, PAGE).expect("finish the move");
        assert_area_exact(&cache, "finished");
    }
}

#[test]
fn large_values_are_carried_by_grow_and_shrink() {
    let _s = serial();
    for kind in [NATIVE, ROBUST] {
        let dir = temp_dir();
        let path = dir.path().join("cache");
        let cache = open_large(kind, &path, 8);
        let other = Cache::builder().path(&path).open().expect("second handle");
        // Tiny values, values just over what a 16 KiB page holds but within what a 64 KiB one
        // holds (at most three to a page, so that no page evicts one), and larger ones up to
        // the largest value.
        let sizes = [100, 17_000, 20_000, 70_000, MAX_VALUE as usize - 1000];
        let mut n = 0;
        for (i, &len) in sizes.iter().cycle().take(40).enumerate() {
            cache
                .set(&key(i), &make_value(&key(i), i as u64, len))
                .expect("set");
            n += 1;
        }
        cache.set(b"dirty-looking", &[7; 40_000]).expect("set");
        n += 1;
        assert_eq!(cache.stats().expect("stats").entries, n, "all stored");
        assert!(cache.stats().expect("stats").overflow_used_bytes > 0);
        let check_all = |c: &Cache, what: &str| {
            for i in 0..40 {
                let v = c
                    .get(&key(i))
                    .expect("get")
                    .unwrap_or_else(|| panic!("{what}: {:?} kept", key(i)));
                assert_eq!(
                    check_value(&key(i), &v).expect("intact"),
                    i as u64,
                    "{what}"
                );
            }
            assert_eq!(
                c.get(b"dirty-looking").expect("get").as_deref(),
                Some(&[7; 40_000][..]),
                "{what}"
            );
        };
        // More pages, then larger pages (values up to 64 KiB move into their page), then
        // fewer and smaller ones again (they move back to the area).
        for (pages, page_size, what) in [
            (97, PAGE, "grown"),
            (97, PAGE * 4, "larger pages"),
            (5, PAGE, "shrunk"),
        ] {
            let report = cache.resize(pages, page_size).expect(what);
            assert_eq!(
                (report.copied, report.dropped),
                (n, 0),
                "{what}: {report:?}"
            );
            assert_eq!(report.damaged_pages, 0, "{what}");
            check_all(&cache, what);
            check_all(&other, what);
            assert_area_exact(&cache, what);
            assert_eq!(cache.validate().expect("validate"), vec![], "{what}");
        }
        assert_no_resize_files(dir.path());
        // A fresh open finds the area too.
        let fresh = Cache::builder().path(&path).open().expect("reopen");
        assert_eq!(fresh.max_value_size(), MAX_VALUE as usize);
        check_all(&fresh, "reopened");
    }
}

#[test]
fn a_large_value_too_large_for_the_new_pages_and_the_area_is_dropped_and_counted() {
    let _s = serial();
    let dir = temp_dir();
    let path = dir.path().join("cache");
    // No overflow area: a value that fits a 64 KiB page but not a 16 KiB one has nowhere to
    // go when the pages shrink.
    let cache = NATIVE
        .builder()
        .path(&path)
        .num_pages(3)
        .page_size(PAGE * 4)
        .overflow_size(0)
        .open()
        .expect("open");
    assert_eq!(cache.max_value_size(), 0);
    cache.set(b"big", &[1; 40_000]).expect("set");
    cache.set(b"small", b"kept").expect("set");
    let report = cache.resize(3, PAGE).expect("shrink");
    assert_eq!((report.copied, report.dropped), (1, 1), "{report:?}");
    assert_eq!(cache.get(b"big").expect("get"), None);
    assert_eq!(
        cache.get(b"small").expect("get").as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(cache.max_value_size(), 0, "still no area");
    assert_eq!(cache.stats().expect("stats").overflow_bytes, 0);
}

/// A worker storing and reading back large self-checking values on keys of its own until
/// `stop` exists (or a minute passes): every read of its own key must give exactly what it
/// last stored there, whatever moves happened in between.
fn large_worker(cache: &Cache, id: usize, stop: &Path, ready: &Pipe) -> ChildResult {
    // Released even if this worker fails, so that the parent goes on (and then sees it).
    ready.release(1);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rng = Rng::new(id as u64 * 104_729 + 3);
    let mut last: Vec<Option<u64>> = vec![None; 12];
    let mut seq = 0u64;
    let mut ops = 0u64;
    while !ops.is_multiple_of(16) || (!stop.exists() && Instant::now() < deadline) {
        let k = rng.below(last.len() as u64) as usize;
        let key = format!("w{id}-large-{k}").into_bytes();
        if rng.chance(40) {
            seq += 1;
            // Mostly larger than a page, some that fit one.
            let len = if rng.chance(20) {
                rng.range(40, 4000)
            } else {
                rng.range(20_000, MAX_VALUE as usize)
            };
            cache
                .set(&key, &make_value(&key, seq, len))
                .map_err(|e| format!("set {k}: {e}"))?;
            last[k] = Some(seq);
        } else {
            let got = cache.get(&key).map_err(|e| format!("get {k}: {e}"))?;
            let got = match got {
                Some(v) => Some(check_value(&key, &v)?),
                None => None,
            };
            if got != last[k] {
                return Err(format!("{k}: read {got:?}, last stored {:?}", last[k]));
            }
        }
        ops += 1;
    }
    Ok(())
}

fn large_values_survive_moves_under_load(kind: Kind) {
    let _s = serial();
    let dir = temp_dir();
    let path = dir.path().join("cache");
    let stop = dir.path().join("stop");
    let cache = open_large(kind, &path, 7);
    let ready = Pipe::new();
    let mut children = Children::new();
    for id in 0..3 {
        let (path, stop, ready) = (path.clone(), stop.clone(), &ready);
        children.spawn(move || {
            let cache = Cache::builder()
                .path(&path)
                .lock_timeout(Duration::from_secs(30))
                .open()
                .map_err(|e| format!("open: {e}"))?;
            large_worker(&cache, id, &stop, ready)
        });
    }
    for _ in 0..3 {
        ready.wait();
    }
    for _ in 0..scaled(2, 20) {
        for pages in [61, 7] {
            std::thread::sleep(Duration::from_millis(200));
            let report = cache.resize(pages, PAGE).expect("resize under load");
            assert_eq!(report.dropped, 0, "the area holds every value: {report:?}");
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(&stop, b"").expect("stop file");
    children.wait_all_ok();
    for item in cache.iter() {
        let (k, e) = item.expect("entry");
        check_value(&k, &e.value).expect("intact");
    }
    assert_area_exact(&cache, "after the moves");
    assert_no_resize_files(dir.path());
}

#[test]
fn forked_workers_keep_large_values_across_moves_fcntl() {
    large_values_survive_moves_under_load(NATIVE);
}

#[test]
fn forked_workers_keep_large_values_across_moves_robust() {
    large_values_survive_moves_under_load(ROBUST);
}

/// The eviction policy's protected part survives a move: entries read once (protected) and
/// stored long ago outlive newer entries never read (on probation) when the new pages fill.
#[test]
fn protected_entries_stay_protected_across_a_move() {
    let _s = serial();
    let clock =
        fastmmap::ManualClock::new(std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let dir = temp_dir();
    let cache = NATIVE
        .builder()
        .path(dir.path().join("cache"))
        .num_pages(1)
        .page_size(PAGE)
        .clock(clock.clone())
        .open()
        .expect("open");
    let named = |what: &str, i: usize| format!("{what}-{i}").into_bytes();
    for i in 0..10 {
        let k = named("read", i);
        cache.set(&k, &make_value(&k, 1, 500)).expect("set");
        assert!(cache.get(&k).expect("get").is_some());
    }
    clock.advance(Duration::from_secs(100));
    for i in 0..10 {
        let k = named("unread", i);
        cache.set(&k, &make_value(&k, 1, 500)).expect("set");
    }
    let report = cache.resize(2, PAGE).expect("resize");
    assert_eq!((report.copied, report.dropped), (20, 0), "{report:?}");
    clock.advance(Duration::from_secs(100));
    for i in 0..60 {
        let k = named("new", i);
        cache.set(&k, &make_value(&k, 1, 500)).expect("set");
    }
    let unread = (0..10)
        .filter(|&i| cache.get(&named("unread", i)).expect("get").is_some())
        .count();
    assert!(
        unread < 10,
        "the new pages filled: {unread} of the unread kept"
    );
    for i in 0..10 {
        assert!(
            cache.get(&named("read", i)).expect("get").is_some(),
            "read-{i}, protected before the move, was evicted before entries on probation"
        );
    }
}

/// An iteration that meets a resize goes on in the new file and yields every key once,
/// including keys stored with `multi_set` (placed by their page key, not their own hash),
/// growing and shrinking, with both lock kinds.
#[test]
fn an_iteration_across_a_resize_yields_every_key_once() {
    let _s = serial();
    for kind in [NATIVE, ROBUST] {
        for (from, to) in [(SMALL, LARGE), (LARGE, SMALL)] {
            let dir = temp_dir();
            let path = dir.path().join("cache");
            let cache = open(kind, &path, from);
            let expected = fill_for_iteration(&cache);
            let mut iter = cache.iter();
            let mut seen: Vec<Vec<u8>> = (0..200)
                .map(|_| iter.next().expect("more keys").expect("an entry").0)
                .collect();
            let report = cache.resize(to, PAGE).expect("resize");
            assert_eq!(report.dropped, 0, "{report:?}");
            seen.extend(iter.map(|item| item.expect("an entry").0));
            let yielded = seen.len();
            let seen: std::collections::BTreeSet<Vec<u8>> = seen.into_iter().collect();
            assert_eq!(
                seen.len(),
                yielded,
                "{kind:?} {from} -> {to}: a key came twice"
            );
            assert_eq!(seen, expected, "{kind:?} {from} -> {to}");
        }
    }
}

/// Two resizes in a row by another process while this handle is idle: the handle has not
/// followed either when its next call finds its page moved twice, and each call of a
/// write-back cache goes on to the newest file by itself (get, set, update, take, get_many,
/// set_many, flush, evict), with every value intact and every write in the store at the end.
#[test]
fn a_handle_behind_two_moves_keeps_working_on_every_call() {
    let _s = serial();
    for kind in [NATIVE, ROBUST] {
        let dir = temp_dir();
        let path = dir.path().join("cache");
        let store = Mem::default();
        let cache = write_back_over(kind, &path, &store);
        let value = |i: usize, round: usize| format!("value-{i}-{round}").into_bytes();
        for i in 0..40 {
            cache.set(&key(i), &value(i, 0)).expect("set");
        }
        let mut children = Children::new();
        // Another process moves the file twice (out of this handle's sight).
        let mut move_twice = |round: usize| {
            let child_path = path.clone();
            children.spawn(move || {
                let other = Cache::builder()
                    .path(&child_path)
                    .open()
                    .map_err(|e| e.to_string())?;
                for pages in [LARGE + round as u32, SMALL + round as u32] {
                    let report = other
                        .resize(pages, PAGE)
                        .map_err(|e| format!("resize to {pages} pages: {e}"))?;
                    if report.dropped != 0 {
                        return Err(format!("resize to {pages} pages dropped: {report:?}"));
                    }
                }
                Ok(())
            });
            children.wait_all_ok();
        };

        move_twice(1);
        assert_eq!(cache.get(&key(0)).expect("get"), Some(value(0, 0)));

        move_twice(2);
        cache.set(&key(1), &value(1, 2)).expect("set");
        assert_eq!(cache.get(&key(1)).expect("get"), Some(value(1, 2)));

        move_twice(3);
        let updated = cache
            .update(&key(2), |old| {
                assert_eq!(old, Some(&value(2, 0)[..]), "update saw the value");
                Update::Set(value(2, 3))
            })
            .expect("update");
        assert_eq!(updated, Some(value(2, 3)));

        move_twice(4);
        assert_eq!(cache.take(&key(3)).expect("take"), Some(value(3, 0)));
        assert_eq!(cache.get(&key(3)).expect("get"), None, "taken");

        move_twice(5);
        let got = cache
            .get_many(&[key(4), key(1), key(999)])
            .expect("get_many");
        assert_eq!(got, vec![Some(value(4, 0)), Some(value(1, 2)), None]);

        move_twice(6);
        let pairs: Vec<_> = (5..10).map(|i| (key(i), value(i, 6))).collect();
        assert_eq!(cache.set_many(&pairs).expect("set_many"), pairs.len());
        for (k, v) in &pairs {
            assert_eq!(cache.get(k).expect("get").as_ref(), Some(v));
        }

        move_twice(7);
        assert!(cache.flush().expect("flush") > 0, "dirty entries written");
        let stored = store.0.lock().unwrap().clone();
        for i in (0..40).filter(|&i| i != 3) {
            let round = match i {
                1 => 2,
                2 => 3,
                5..10 => 6,
                _ => 0,
            };
            let want = value(i, round);
            assert_eq!(stored.get(&key(i)), Some(&want), "key {i} in the store");
            let e = cache.entry(&key(i)).expect("entry").expect("cached");
            assert!(!e.flags.is_dirty(), "key {i} clean after the flush");
            assert_eq!(e.value, want);
        }
        assert_eq!(stored.get(&key(3)), None, "a taken key is not written");

        move_twice(8);
        assert!(cache.evict(&key(0)).expect("evict"), "key 0 was cached");
        assert_eq!(cache.get(&key(0)).expect("read through"), Some(value(0, 0)));
        assert_eq!(cache.num_pages(), SMALL + 8);
        assert_no_resize_files(dir.path());
    }
}

/// Fills `cache` with 300 keys of their own and 40 `multi_set` groups of 5 (placed by their
/// page key): the keys an iteration must yield.
fn fill_for_iteration(cache: &Cache) -> std::collections::BTreeSet<Vec<u8>> {
    let mut expected = std::collections::BTreeSet::new();
    for i in 0..300 {
        cache.set(&key(i), b"v").expect("set");
        expected.insert(key(i));
    }
    for p in 0..40 {
        let page_key = format!("group{p}");
        let pairs: Vec<(Vec<u8>, &[u8])> = (0..5)
            .map(|j| (format!("member{j}").into_bytes(), &b"w"[..]))
            .collect();
        cache
            .multi_set(page_key.as_bytes(), &pairs)
            .expect("multi_set");
        expected.extend((0..5).map(|j| format!("{page_key}-member{j}").into_bytes()));
    }
    expected
}

/// An iteration across resizes that keep the page count and change the page size (alone, and
/// after one that changes the page count) yields every key exactly once: the walk goes on at
/// the page it was at in the new file. The resizes are made by this handle (which follows at
/// once) or by another process (the iterator finds its page moved and goes on in the new file
/// by itself, before this handle has followed).
#[test]
fn an_iteration_across_a_resize_that_keeps_the_page_count_yields_every_key_once() {
    let _s = serial();
    let plans: [&[(u32, u32)]; 2] = [&[(SMALL, 2 * PAGE)], &[(LARGE, PAGE), (LARGE, PAGE / 2)]];
    for kind in [NATIVE, ROBUST] {
        for plan in plans {
            for by_other_process in [false, true] {
                let what =
                    format!("{kind:?} {SMALL}x{PAGE} -> {plan:?}, other: {by_other_process}");
                let dir = temp_dir();
                let path = dir.path().join("cache");
                let cache = open(kind, &path, SMALL);
                let expected = fill_for_iteration(&cache);
                let mut iter = cache.iter();
                let mut seen: Vec<Vec<u8>> = (0..200)
                    .map(|_| iter.next().expect("more keys").expect("an entry").0)
                    .collect();
                if by_other_process {
                    let child_path = path.clone();
                    let mut children = Children::new();
                    children.spawn(move || {
                        let other = Cache::builder()
                            .path(&child_path)
                            .open()
                            .map_err(|e| e.to_string())?;
                        for &(pages, page_size) in plan {
                            let report = other
                                .resize(pages, page_size)
                                .map_err(|e| format!("resize to {pages}x{page_size}: {e}"))?;
                            if report.dropped != 0 {
                                return Err(format!("resize dropped: {report:?}"));
                            }
                        }
                        Ok(())
                    });
                    children.wait_all_ok();
                } else {
                    for &(pages, page_size) in plan {
                        let report = cache.resize(pages, page_size).expect("resize");
                        assert_eq!(report.dropped, 0, "{what}: {report:?}");
                    }
                }
                seen.extend(iter.map(|item| item.expect("an entry").0));
                let yielded = seen.len();
                let seen: std::collections::BTreeSet<Vec<u8>> = seen.into_iter().collect();
                assert_eq!(seen.len(), yielded, "{what}: a key came twice");
                assert_eq!(seen, expected, "{what}");
                let &(pages, page_size) = plan.last().expect("a resize");
                assert_eq!(
                    (cache.num_pages(), cache.page_size()),
                    (pages, page_size),
                    "{what}"
                );
            }
        }
    }
}

// A move stopped part way (issue 23's page-at-a-time move): each half of the pages lives in
// its own file until a resize finishes the move.

const HALF_KEYS: usize = 400;

/// What a cache stopped half way (or finished) must show: every key with its newest value,
/// every counter exact, `iter` each key once, `stats` each entry once, and `flush` the newest
/// value of every dirty entry in the store.
fn assert_whole(cache: &Cache, store: &Mem, seq: &[u64], counters: &[u64], what: &str) {
    let mut expected = std::collections::BTreeSet::new();
    for (i, &s) in seq.iter().enumerate() {
        let v = cache
            .get(&key(i))
            .expect("get")
            .unwrap_or_else(|| panic!("{what}: key {i}"));
        assert_eq!(check_value(&key(i), &v), Ok(s), "{what}: key {i}");
        expected.insert(key(i));
    }
    for (c, &n) in counters.iter().enumerate() {
        let k = format!("counter-{c}").into_bytes();
        let found = counter_value(cache.get(&k).expect("get").as_deref()).expect("counter");
        assert_eq!(found, n, "{what}: counter-{c}");
        if n > 0 {
            expected.insert(k);
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for item in cache.iter() {
        let (k, _) = item.expect("iter");
        assert!(
            seen.insert(k.clone()),
            "{what}: iter gave {:?} twice",
            String::from_utf8_lossy(&k)
        );
    }
    let diff: Vec<_> = seen
        .symmetric_difference(&expected)
        .map(|k| String::from_utf8_lossy(k))
        .collect();
    assert!(
        diff.is_empty(),
        "{what}: iter yields every key, differs in {diff:?}"
    );
    assert_eq!(
        cache.stats().expect("stats").entries,
        expected.len() as u64,
        "{what}: stats"
    );
    cache.flush().expect("flush");
    let stored = store.0.lock().unwrap().clone();
    for (i, &s) in seq.iter().enumerate() {
        let v = stored
            .get(&key(i))
            .unwrap_or_else(|| panic!("{what}: key {i} flushed"));
        assert_eq!(
            check_value(&key(i), v),
            Ok(s),
            "{what}: key {i} flushed newest"
        );
    }
}

/// Forked workers write every key (worker `w` the keys `w, w + 4, …`) with sequence `round`
/// and add one to a counter per key; returns once all are done.
fn write_both_halves(cache: &Cache, round: u64, seq: &mut [u64], counters: &mut [u64]) {
    let mut children = Children::new();
    for w in 0..WORKERS {
        let cache = cache.clone();
        children.spawn(move || {
            for i in (w..HALF_KEYS).step_by(WORKERS) {
                let v = make_value(&key(i), round, 80 + i % 200);
                cache.set(&key(i), &v).map_err(|e| format!("set: {e}"))?;
                incr(&cache, format!("counter-{}", i % COUNTERS).as_bytes())?;
            }
            Ok(())
        });
    }
    children.wait_all_ok();
    for i in 0..HALF_KEYS {
        seq[i] = round;
        counters[i % COUNTERS] += 1;
    }
}

/// A move stopped half way serves both halves to forked workers (reads, writes, exact
/// `update` counters), and walks see each entry once; a resize then finishes it, and the same
/// holds in the new file.
#[test]
fn a_move_stopped_half_way_serves_both_halves() {
    let _s = serial();
    for kind in [NATIVE, ROBUST] {
        let dir = temp_dir();
        let path = dir.path().join("cache");
        let store = Mem::default();
        let cache = write_back_over(kind, &path, &store);
        let mut seq = vec![0u64; HALF_KEYS];
        let mut counters = vec![0u64; COUNTERS];
        for i in 0..HALF_KEYS {
            cache
                .set(&key(i), &make_value(&key(i), 0, 80 + i % 200))
                .expect("set");
        }
        let report = cache
            .resize_stopping_after(LARGE, PAGE, SMALL / 2)
            .expect("half a move");
        assert_eq!(report.pages_moved, SMALL / 2, "{report:?}");
        assert_eq!(
            cache.num_pages(),
            SMALL,
            "the old file is still the one in use"
        );
        assert_eq!(
            resize_files(dir.path()).len(),
            1,
            "the move's new file, not yet published"
        );
        assert_whole(&cache, &store, &seq, &counters, "stopped");
        write_both_halves(&cache, 1, &mut seq, &mut counters);
        assert_whole(
            &cache,
            &store,
            &seq,
            &counters,
            "stopped, written by workers",
        );
        let report = cache.resize(LARGE, PAGE).expect("finish the move");
        assert_eq!(report.pages_moved, SMALL - SMALL / 2, "{report:?}");
        assert_eq!(cache.num_pages(), LARGE);
        assert_no_resize_files(dir.path());
        assert_whole(&cache, &store, &seq, &counters, "finished");
        write_both_halves(&cache, 2, &mut seq, &mut counters);
        assert_whole(
            &cache,
            &store,
            &seq,
            &counters,
            "finished, written by workers",
        );
    }
}

/// Stores keys `0..HALF_KEYS` (sequence 1), then stops a move to 2 pages as a resizer killed
/// mid-page leaves it: old pages 0..10 moved, page 10's entries copied into the new file and
/// the page not marked (its copies are stale).
fn fill_and_abandon_page_10(cache: &Cache) {
    for i in 0..HALF_KEYS {
        cache
            .set(&key(i), &make_value(&key(i), 1, 100))
            .expect("set");
    }
    cache
        .resize_abandoning_page(2, PAGE, 10)
        .expect("stopped mid-page");
}

/// A resizer that stops in the middle of a page (as a SIGKILL there leaves it) leaves copies
/// of that page's entries in the new file while the page stays unmarked: they do not exist.
/// A key of that page deleted in the old file stays deleted when a resize finishes the move
/// (it would come back if the finish did not remove the stale copies first), and no walk sees
/// the copies meanwhile.
#[test]
fn stale_copies_of_a_stopped_page_never_come_back() {
    let _s = serial();
    for kind in [NATIVE, ROBUST] {
        let dir = temp_dir();
        let path = dir.path().join("cache");
        let cache = open(kind, &path, SMALL);
        // To 2 pages: the abandoned page's entries go to up to two new pages, the first of
        // which gets its copies.
        fill_and_abandon_page_10(&cache);
        for i in (1..HALF_KEYS).step_by(2) {
            assert!(cache.remove(&key(i)).expect("remove"), "key {i} was there");
        }
        let check = |what: &str| {
            for i in 0..HALF_KEYS {
                let v = cache.get(&key(i)).expect("get");
                if i % 2 == 1 {
                    assert_eq!(v, None, "{what}: key {i} stays deleted");
                } else {
                    let v = v.unwrap_or_else(|| panic!("{what}: key {i}"));
                    assert_eq!(check_value(&key(i), &v), Ok(1), "{what}: key {i}");
                }
            }
            let keys: Vec<Vec<u8>> = cache.keys().map(|k| k.expect("keys")).collect();
            let unique: std::collections::BTreeSet<_> = keys.iter().cloned().collect();
            assert_eq!(keys.len(), unique.len(), "{what}: each key once");
            let expected: std::collections::BTreeSet<_> =
                (0..HALF_KEYS).step_by(2).map(key).collect();
            assert_eq!(unique, expected, "{what}: iter");
            assert_eq!(
                cache.stats().expect("stats").entries,
                expected.len() as u64,
                "{what}: stats"
            );
        };
        check("stopped mid-page");
        cache.resize(4, PAGE).expect("finish, to another geometry");
        assert_eq!(cache.num_pages(), 4);
        assert_no_resize_files(dir.path());
        check("finished");
    }
}

/// A write-back cache over a fresh store, stopped mid-page as [`fill_and_abandon_page_10`]
/// leaves it, then every key rewritten (sequence 2): the stale copies of page 10 in the new
/// file hold older values than their keys' real entries in the old one.
fn rewritten_over_stale_copies(kind: Kind) -> (tempfile::TempDir, Mem, Cache) {
    let dir = temp_dir();
    let store = Mem::default();
    let cache = write_back_over(kind, &dir.path().join("cache"), &store);
    fill_and_abandon_page_10(&cache);
    for i in 0..HALF_KEYS {
        cache
            .set(&key(i), &make_value(&key(i), 2, 100))
            .expect("set again");
    }
    (dir, store, cache)
}

/// Asserts that `store` holds every key's newest value (sequence 2).
fn assert_stored_newest(store: &Mem, what: &str) {
    let stored = store.0.lock().unwrap().clone();
    for i in 0..HALF_KEYS {
        let v = stored
            .get(&key(i))
            .unwrap_or_else(|| panic!("{what}: key {i} stored"));
        assert_eq!(check_value(&key(i), v), Ok(2), "{what}: key {i} newest");
    }
}

/// `flush` during a stopped move writes each dirty entry's newest value: it walks the old
/// file's unmoved pages first, then the new file, where the stale copies of a page stopped
/// mid-way (older values of keys rewritten in the old file since) are never written back.
#[test]
fn flush_never_writes_a_stale_copy() {
    let _s = serial();
    for kind in [NATIVE, ROBUST] {
        let (_dir, store, cache) = rewritten_over_stale_copies(kind);
        assert_eq!(
            cache.flush().expect("flush"),
            HALF_KEYS,
            "each dirty entry once"
        );
        assert_stored_newest(&store, "flushed while stopped");
        cache.resize(4, PAGE).expect("finish");
        cache.flush().expect("flush");
        assert_stored_newest(&store, "finished");
    }
}

/// `clear` during a stopped move writes back each dirty entry's newest value before it drops
/// it, and leaves the stale copies of the page stopped mid-way alone (older values: written
/// back, they would overwrite the newest in the store); finishing the move then removes them,
/// and every key reads its newest value back from the store.
#[test]
fn clear_never_writes_back_a_stale_copy() {
    let _s = serial();
    for kind in [NATIVE, ROBUST] {
        let (_dir, store, cache) = rewritten_over_stale_copies(kind);
        let check = |what: &str| {
            assert_stored_newest(&store, what);
            for i in 0..HALF_KEYS {
                let v = cache
                    .get(&key(i))
                    .expect("get")
                    .unwrap_or_else(|| panic!("{what}: key {i} read"));
                assert_eq!(check_value(&key(i), &v), Ok(2), "{what}: key {i} read");
            }
        };
        cache.clear().expect("clear");
        assert_eq!(cache.stats().expect("stats").entries, 0, "cleared");
        check("cleared while stopped");
        cache.resize(4, PAGE).expect("finish");
        cache.flush().expect("flush");
        check("finished");
    }
}

/// A follower that finishes a dead resizer's rename renames only the successor it opened: a
/// file put at the successor's temporary name since (another user's, in a shared directory)
/// is never renamed over the cache's name.
#[test]
fn a_file_planted_at_the_temporary_name_is_never_renamed_over_the_cache() {
    use std::os::unix::fs::MetadataExt;
    let _s = serial();
    let dir = temp_dir();
    let path = dir.path().join("cache");
    let cache = open(NATIVE, &path, SMALL);
    cache.set(b"k", b"v").expect("set");
    // A second handle, still on the old file when the move ends.
    let other = Cache::builder().path(&path).open().expect("second handle");
    let keep = dir.path().join("old-file");
    std::fs::hard_link(&path, &keep).expect("link the old file");
    let old_ino = std::fs::metadata(&path).expect("old").ino();
    cache.resize(LARGE, PAGE).expect("resize");
    // As a resizer that died before its rename leaves it: the old file at the path, marked
    // moved; then someone puts another file at the successor's temporary name.
    std::fs::rename(&path, dir.path().join("successor-aside")).expect("move the successor aside");
    std::fs::rename(&keep, &path).expect("the old file back at the path");
    let nonce_name = {
        let header = std::fs::read(&path).expect("read the old file");
        // The successor's nonce: header bytes 88..96 (docs/format.md §2.5).
        let nonce = u64::from_ne_bytes(header[88..96].try_into().expect("8 bytes"));
        dir.path().join(format!("cache.resize-{nonce:016x}"))
    };
    std::fs::write(&nonce_name, b"planted").expect("plant");
    // The second handle follows the move (its file is marked moved) and finishes the rename
    // only if the temporary name still holds the successor: it does not.
    assert_eq!(
        other.get(b"k").expect("get through the move"),
        Some(b"v".to_vec())
    );
    assert_eq!(
        std::fs::metadata(&path).expect("path").ino(),
        old_ino,
        "the cache's name was given to the planted file"
    );
    assert_eq!(std::fs::read(&nonce_name).expect("planted"), b"planted");
}

/// A backing store whose `store` sets another key in the cache it backs (a callback that uses
/// the cache), keeping what that set returned.
#[derive(Clone, Default)]
struct Echo {
    /// The cache it backs (a cycle: taken out at the end of the test).
    cache: std::sync::Arc<std::sync::Mutex<Option<Cache>>>,
    echo_key: std::sync::Arc<std::sync::OnceLock<Vec<u8>>>,
    results: std::sync::Arc<std::sync::Mutex<Vec<Result<bool, String>>>>,
}

impl fastmmap::Backing for Echo {
    fn load(&self, _: &[u8]) -> Result<Option<Vec<u8>>, fastmmap::BackingError> {
        Ok(None)
    }
    fn store(
        &self,
        key: &[u8],
        value: &[u8],
        _: Option<std::time::SystemTime>,
    ) -> Result<(), fastmmap::BackingError> {
        let cache = self.cache.lock().unwrap().clone();
        if let (Some(cache), Some(echo)) = (cache, self.echo_key.get())
            && key != echo.as_slice()
        {
            let done = cache.set(echo, value).map_err(|e| e.to_string());
            self.results.lock().unwrap().push(done);
        }
        Ok(())
    }
    fn delete(&self, _: &[u8]) -> Result<(), fastmmap::BackingError> {
        Ok(())
    }
}

/// A store callback that uses the cache during a stopped move, for a key whose page is in the
/// new file, proceeds as it does without a move: the write-back lock its thread holds is the
/// new file's, and it takes no second one (it used to be refused as re-entrant).
#[test]
fn a_store_callback_may_use_the_cache_in_a_moved_page() {
    let _s = serial();
    for kind in [NATIVE, ROBUST] {
        let dir = temp_dir();
        let echo = Echo::default();
        let path = dir.path().join("cache");
        let cache = backed(kind, &path, echo.clone(), fastmmap::WriteMode::Through)
            .lock_timeout(Duration::from_secs(30))
            .open()
            .expect("open");
        let moved: Vec<Vec<u8>> = (0..1000)
            .map(key)
            .filter(|k| key_page(Layout::Native, k, SMALL) < SMALL / 2)
            .take(2)
            .collect();
        for k in &moved {
            cache.set(k, b"before").expect("set");
        }
        cache
            .resize_stopping_after(LARGE, PAGE, SMALL / 2)
            .expect("half a move");
        *echo.cache.lock().unwrap() = Some(cache.clone());
        echo.echo_key.set(moved[1].clone()).expect("once");
        assert!(cache.set(&moved[0], b"after").expect("set through"));
        let results = echo.results.lock().unwrap().clone();
        assert_eq!(results, vec![Ok(true)], "{kind:?}: the callback's set");
        assert_eq!(cache.get(&moved[1]).expect("get"), Some(b"after".to_vec()));
        echo.cache.lock().unwrap().take();
    }
}

/// A user's store in the new file that evicts a stale copy (a dirty copy a killed resizer
/// left of a page it never marked) never writes it back: the copy is older than its real
/// entry in the old file, which was rewritten and flushed since, and writing it would put an
/// older value in the backing store after the newer one.
#[test]
fn a_store_that_evicts_a_stale_copy_never_writes_it_back() {
    let _s = serial();
    for kind in [NATIVE, ROBUST] {
        let dir = temp_dir();
        let path = dir.path().join("cache");
        let store = Mem::default();
        let cache = write_back_over(kind, &path, &store);
        fill_and_abandon_page_10(&cache);
        let abandoned: Vec<Vec<u8>> = (0..HALF_KEYS)
            .map(key)
            .filter(|k| key_page(Layout::Native, k, SMALL) == 10)
            .collect();
        assert!(!abandoned.is_empty(), "the abandoned page held keys");
        // Rewritten in the old file (their page is not marked), then flushed: the store has
        // the newest values, and the old file's entries are clean.
        for k in &abandoned {
            cache.set(k, &make_value(k, 2, 100)).expect("set again");
        }
        cache.flush().expect("flush");
        // Keys of moved pages fill the new file's two pages many times over: every stale
        // copy there is evicted by a user's store.
        let mut filled = 0;
        for n in 0.. {
            let k = format!("fill-{n}").into_bytes();
            if key_page(Layout::Native, &k, SMALL) >= 10 {
                continue;
            }
            cache.set(&k, &make_value(&k, 1, 1000)).expect("fill");
            filled += 1;
            if filled == 200 {
                break;
            }
        }
        let stored = store.0.lock().unwrap().clone();
        for k in &abandoned {
            let v = stored.get(k).expect("in the store");
            assert_eq!(
                check_value(k, v),
                Ok(2),
                "{kind:?}: the store keeps the newest value"
            );
            let v = cache.get(k).expect("get").expect("still cached");
            assert_eq!(check_value(k, &v), Ok(2), "{kind:?}: the cache too");
        }
    }
}

/// Forked workers keep incrementing counters and storing self-checking values while resizers,
/// each in a process of its own, are SIGKILLed at random instants of page-at-a-time moves:
/// every kill leaves the keys of moved pages in the new file, where the workers write, and
/// the resizer may die inside a change of one of its pages, which the next locker completes
/// from the journal (`store/journal/tests.rs` kills a change at each of its steps). No write
/// is lost: after a last resize resumes the move, every counter is exact, every value intact,
/// and no file of a killed resizer is left behind.
/// The resize state word of a native header, and its value while pages move
/// (docs/format.md §2.1, §2.5).
const STATE_OFFSET: u64 = 84;
const STATE_MIGRATING: u32 = 3;

fn workers_keep_every_write_through_killed_resizers(kind: Kind) {
    let _s = serial();
    let mut rng = Rng::new(seed("workers_keep_every_write_through_killed_resizers"));
    let dir = temp_dir();
    let path = dir.path().join("cache");
    let stop = dir.path().join("stop");
    let cache = open(kind, &path, SMALL);
    let ready = Pipe::new();
    let mut children = Children::new();
    let outs: Vec<Pipe> = (0..WORKERS).map(|_| Pipe::new()).collect();
    for (id, out) in outs.iter().enumerate() {
        let (cache, stop, ready) = (cache.clone(), stop.clone(), &ready);
        children.spawn(move || worker(cache, id, stop, ready, out));
    }
    for _ in 0..WORKERS {
        ready.wait();
    }
    let mut resizers = Children::new();
    for round in 0..scaled(6, 60) {
        let pages = if round % 2 == 0 { LARGE } else { SMALL };
        let child_path = path.clone();
        let pid = resizers.spawn(move || {
            let cache = Cache::builder()
                .path(&child_path)
                .open()
                .map_err(|e| e.to_string())?;
            cache
                .resize(pages, PAGE)
                .map(|_| ())
                .map_err(|e| format!("resize: {e}"))
        });
        // Killed once its pages are moving (the file named by the path is the one moved
        // from: a move renames only at its end), at a random instant of its first
        // milliseconds of steps; or, one round in four, at any instant.
        let old = raw_file(&path);
        let watching = Instant::now();
        while rng.below(4) != 0
            && read_u32(&old, STATE_OFFSET) != STATE_MIGRATING
            && watching.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_micros(rng.below(8_000)));
        resizers.kill(pid);
    }
    // Resumes whatever move the last kill stopped.
    cache.resize(SMALL, PAGE).expect("a resize after the kills");
    std::thread::sleep(Duration::from_millis(100));
    std::fs::write(&stop, b"").expect("stop file");
    let mut expected = vec![0u64; COUNTERS];
    for out in &outs {
        assert_eq!(out.recv_u64(), 1, "a worker failed (its error is above)");
        for count in expected.iter_mut() {
            *count += out.recv_u64();
        }
        let _longest = out.recv_u64();
        let _ops = out.recv_u64();
    }
    children.wait_all_ok();
    for (c, &want) in expected.iter().enumerate() {
        let found = counter_value(
            cache
                .get(format!("counter-{c}").as_bytes())
                .expect("get")
                .as_deref(),
        )
        .expect("counter");
        assert_eq!(found, want, "{kind:?}: counter-{c}");
    }
    let stats = cache.stats().expect("stats");
    assert_eq!(stats.resets, 0, "{kind:?}: no page was reset: {stats:?}");
    assert_eq!(cache.num_pages(), SMALL);
    assert_no_resize_files(dir.path());
}

#[test]
fn forked_workers_keep_every_write_through_killed_resizers_fcntl() {
    workers_keep_every_write_through_killed_resizers(NATIVE);
}

#[test]
fn forked_workers_keep_every_write_through_killed_resizers_robust() {
    workers_keep_every_write_through_killed_resizers(ROBUST);
}

/// A batch checks its pairs against the file it stores in: a handle that has not yet followed
/// another's resize to smaller pages learns of it when it locks, and a pair too large for the
/// new pages refuses the batch before any of it is stored there. The errors give the new
/// pages' limit.
#[test]
fn a_batch_checks_its_pairs_against_the_file_a_resize_moved_it_to() {
    let _s = serial();
    let dir = temp_dir();
    let path = dir.path().join("cache");
    let without_area = |pages: u32| {
        NATIVE
            .builder()
            .path(&path)
            .num_pages(pages)
            .page_size(PAGE)
            .overflow_size(0)
            .open()
            .expect("open")
    };
    let stale = without_area(SMALL);
    let resizer = without_area(SMALL);
    let big = vec![b'b'; 6000];
    stale
        .set(b"fits now", &big)
        .expect("a 6000-byte value fits a 16 KiB page");
    let small_max = {
        let report = resizer.resize(SMALL, 4096).expect("shrink the pages");
        assert_eq!(report.old_page_size, PAGE);
        resizer.max_entry_size()
    };
    assert!(small_max < big.len());
    let too_large = |r: Result<usize, Error>, what: &str| match r {
        Err(Error::TooLarge { max, .. }) => assert_eq!(max, small_max, "{what}"),
        other => panic!("{what}: expected TooLarge, got {other:?}"),
    };
    let pairs = [
        (b"small".to_vec(), b"x".to_vec()),
        (b"big".to_vec(), big.clone()),
    ];
    too_large(stale.multi_set(b"pk", &pairs), "multi_set");
    assert_eq!(
        stale.multi_get(b"pk", &[b"small"]).expect("multi_get"),
        vec![None],
        "multi_set stored a pair"
    );
    too_large(stale.set_many(&pairs), "set_many");
    assert_eq!(
        stale.get(b"small").expect("get"),
        None,
        "set_many stored a pair"
    );
    too_large(stale.set(b"big", &big).map(usize::from), "set");
    assert_eq!(stale.page_size(), 4096);
    assert_eq!(stale.set_many(&pairs[..1]).expect("set_many"), 1);
    assert_eq!(stale.get(b"small").expect("get"), Some(b"x".to_vec()));
}

/// A resize keeps the file's mode and group (and its owner): the successor takes the old
/// file's place, and users who share it through them keep it. (It used to get the resizer's
/// default mode, 0600, and group, and those users lost the cache at their next operation.)
/// Run as root, the file is first given another group (1, `daemon` on Debian).
#[test]
fn a_resize_keeps_the_files_mode_and_group() {
    use std::os::unix::fs::MetadataExt;
    let _s = serial();
    let dir = temp_dir();
    let path = dir.path().join("cache");
    let cache = NATIVE
        .builder()
        .path(&path)
        .num_pages(SMALL)
        .page_size(PAGE)
        .permissions(0o640)
        .open()
        .expect("open");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&path, None, Some(1)).expect("chgrp");
    }
    let before = std::fs::metadata(&path).expect("stat");
    cache.set(b"k", b"v").expect("set");
    cache.resize(LARGE, PAGE).expect("grow");
    let after = std::fs::metadata(&path).expect("stat");
    assert_ne!(after.ino(), before.ino(), "the file was replaced");
    assert_eq!(after.mode() & 0o777, 0o640, "mode");
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
    assert_eq!(cache.get(b"k").expect("get"), Some(b"v".to_vec()));
    let other = NATIVE.builder().path(&path).open().expect("a new opener");
    assert_eq!(other.num_pages(), LARGE);
}
