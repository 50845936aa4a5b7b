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
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().contains(".resize-"))
        .collect()
}

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
        assert!(
            leftovers(dir.path()).is_empty(),
            "{:?}",
            leftovers(dir.path())
        );
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
    assert!(leftovers(dir.path()).is_empty());
    let _ = Layout::Native;
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
    for _ in 0..cycles {
        for pages in [LARGE, SMALL] {
            std::thread::sleep(Duration::from_millis(150));
            let t = Instant::now();
            let report = cache.resize(pages, PAGE).expect("resize under load");
            moves.push(t.elapsed());
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
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
    let ops: u64 = tallies.iter().map(|t| t.ops).sum();
    let longest = tallies.iter().map(|t| t.longest).max().unwrap_or_default();
    eprintln!(
        "{kind:?}: {} moves between {SMALL} and {LARGE} pages of {PAGE} bytes, each {:?} at \
         most; {WORKERS} workers x 2 threads: {ops} operations in {elapsed:?} ({:.0}/s), the \
         longest {longest:?}",
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
        assert!(
            leftovers(dir.path()).is_empty(),
            "{:?}",
            leftovers(dir.path())
        );
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
    assert!(leftovers(dir.path()).is_empty());
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
    assert!(leftovers(dir.path()).is_empty());
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

/// A write-back cache resized while threads keep writing: dirty entries move dirty, and once
/// flushed the store holds every acknowledged write.
#[test]
fn write_back_entries_stay_dirty_across_moves() {
    let _s = serial();
    for kind in [NATIVE, ROBUST] {
        let dir = temp_dir();
        let path = dir.path().join("cache");
        let store = Mem::default();
        let cache = kind
            .builder()
            .path(&path)
            .num_pages(SMALL)
            .page_size(PAGE)
            .backing(store.clone())
            .write_mode(fastmmap::WriteMode::Back)
            .open()
            .expect("open");
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
