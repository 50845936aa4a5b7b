//! Resizing a write-back cache over a backing store (issue 23): a dirty entry that does not fit
//! the new file is written to the store before the step that would drop it, never dropped; a
//! store that fails during a resize stops the move where it is with nothing lost, and the next
//! resize finishes it; a handle without a backing store still drops and counts them.
//!
//! Every test takes `common::serial()` first: forking while another test thread of this binary
//! is inside the cache would hand the child a locked mutex.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use fastmmap::{Backing, BackingError, Cache, Error, WriteMode};

const PAGE: u32 = 4096;
const BIG: u32 = 64;
const SMALL: u32 = 8;

/// A backing store shared by forked processes: one file per key (hex name) in a directory,
/// each written to a temporary name and renamed into place.
#[derive(Clone)]
struct Dir(PathBuf);

impl Dir {
    fn file(&self, key: &[u8]) -> PathBuf {
        let name: String = key.iter().map(|b| format!("{b:02x}")).collect();
        self.0.join(name)
    }
}

impl Backing for Dir {
    fn load(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackingError> {
        match std::fs::read(self.file(key)) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn store(&self, key: &[u8], value: &[u8], _: Option<SystemTime>) -> Result<(), BackingError> {
        static N: AtomicU64 = AtomicU64::new(0);
        let temp = self.0.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&temp, value)?;
        std::fs::rename(&temp, self.file(key))?;
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<(), BackingError> {
        match std::fs::remove_file(self.file(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// SQLite (rusqlite) as a backing store shared by forked processes: a connection is opened
/// lazily in each process (one must not cross a fork), as in `tests/backing_sqlite.rs`.
#[derive(Clone)]
struct Sql(Arc<PerProcessConnection>);

impl Sql {
    fn new(path: &Path) -> Sql {
        Sql(Arc::new(PerProcessConnection::create(
            path,
            "CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL);",
        )))
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T, BackingError> {
        self.0.with(f)
    }
}

impl Backing for Sql {
    fn load(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackingError> {
        use rusqlite::OptionalExtension;
        self.with(|c| {
            c.query_row("SELECT v FROM kv WHERE k = ?1", [key], |r| r.get(0))
                .optional()
        })
    }

    fn store(&self, key: &[u8], value: &[u8], _: Option<SystemTime>) -> Result<(), BackingError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO kv (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                [key, value],
            )
        })?;
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<(), BackingError> {
        self.with(|c| c.execute("DELETE FROM kv WHERE k = ?1", [key]))?;
        Ok(())
    }
}

fn open(kind: Kind, path: &Path, pages: u32, store: impl Backing + 'static) -> Cache {
    kind.builder()
        .path(path)
        .num_pages(pages)
        .page_size(PAGE)
        .backing(store)
        .write_mode(WriteMode::Back)
        .open()
        .expect("open")
}

const WORKERS: usize = 3;
const KEYS: usize = 120;

fn wkey(w: usize, i: usize) -> Vec<u8> {
    format!("w{w}-k{i:03}").into_bytes()
}

/// A forked writer: sets its own keys (self-checking values with a rising sequence) until
/// `stop` exists, at most a minute; sends, per key, the sequence of its last acknowledged set
/// (0: none), after a first word saying whether it ran without error.
fn writer(cache: &Cache, w: usize, stop: &Path, ready: &Pipe, out: &Pipe) -> ChildResult {
    let mut last = vec![0u64; KEYS];
    let mut rng = Rng::new(w as u64 * 31 + 7);
    let deadline = Instant::now() + Duration::from_secs(60);
    ready.release(1);
    let mut result = Ok(());
    let mut n = 0u64;
    while n < 200 || (!stop.exists() && Instant::now() < deadline) {
        let i = rng.below(KEYS as u64) as usize;
        let k = wkey(w, i);
        let seq = last[i] + 1;
        if let Err(e) = cache.set(&k, &make_value(&k, seq, rng.range(60, 300))) {
            result = Err(format!("set {:?}: {e}", String::from_utf8_lossy(&k)));
            break;
        }
        last[i] = seq;
        n += 1;
    }
    out.send_u64(u64::from(result.is_ok()));
    for s in &last {
        out.send_u64(*s);
    }
    result
}

/// Forked writers keep setting while the cache is shrunk below what it holds, grown and shrunk
/// again: no resize drops a dirty entry, and after `flush` the store holds every key's last
/// acknowledged value.
fn shrink_under_forked_writers<B: Backing + Clone + 'static>(
    kind: Kind,
    make: impl Fn(&Path) -> B,
) {
    let _s = serial();
    let dir = temp_dir();
    let path = dir.path().join("cache");
    let stop = dir.path().join("stop");
    let store = make(dir.path());
    let cache = open(kind, &path, BIG, store.clone());
    // Fill the big file with dirty entries that the small one cannot hold.
    for i in 0..600 {
        let k = format!("pre-{i}").into_bytes();
        cache.set(&k, &make_value(&k, 1, 200)).expect("set");
    }
    let ready = Pipe::new();
    let outs: Vec<Pipe> = (0..WORKERS).map(|_| Pipe::new()).collect();
    let mut children = Children::new();
    for (w, out) in outs.iter().enumerate() {
        let (cache, stop, ready) = (cache.clone(), stop.clone(), &ready);
        children.spawn(move || writer(&cache, w, &stop, ready, out));
    }
    for _ in 0..WORKERS {
        ready.wait();
    }
    let mut written_back = 0;
    for pages in [SMALL, BIG, SMALL, BIG, SMALL] {
        std::thread::sleep(Duration::from_millis(100));
        let report = cache.resize(pages, PAGE).expect("resize under load");
        assert_eq!(report.dirty_dropped, 0, "{report:?}");
        written_back += report.written_back;
    }
    std::fs::write(&stop, b"").expect("stop file");
    let mut last = Vec::new();
    for out in &outs {
        let ok = out.recv_u64() == 1;
        let seqs: Vec<u64> = (0..KEYS).map(|_| out.recv_u64()).collect();
        assert!(ok, "a writer failed (its error is above)");
        last.push(seqs);
    }
    children.wait_all_ok();
    assert!(
        written_back > 0,
        "the first shrink had dirty entries to write back"
    );
    assert_eq!(cache.stats().expect("stats").dirty_lost, 0);
    cache.flush().expect("flush");
    for i in 0..600 {
        let k = format!("pre-{i}").into_bytes();
        let v = store.load(&k).expect("load").expect("in the store");
        assert_eq!(check_value(&k, &v), Ok(1));
    }
    let mut checked = 0;
    for (w, seqs) in last.iter().enumerate() {
        for (i, &seq) in seqs.iter().enumerate() {
            if seq == 0 {
                continue;
            }
            let k = wkey(w, i);
            let v = store.load(&k).expect("load").unwrap_or_else(|| {
                panic!(
                    "{:?} acknowledged, not in the store",
                    String::from_utf8_lossy(&k)
                )
            });
            assert_eq!(
                check_value(&k, &v),
                Ok(seq),
                "{:?}: the store has another write than the last acknowledged one",
                String::from_utf8_lossy(&k)
            );
            checked += 1;
        }
    }
    eprintln!(
        "{kind:?}: {written_back} dirty entries written back by resizes; {checked} keys checked"
    );
}

fn dir_store(dir: &Path) -> Dir {
    let store = Dir(dir.join("store"));
    std::fs::create_dir(&store.0).expect("store dir");
    store
}

#[test]
fn shrinking_under_forked_writers_writes_back_what_does_not_fit_fcntl() {
    shrink_under_forked_writers(NATIVE, dir_store);
}

#[test]
fn shrinking_under_forked_writers_writes_back_what_does_not_fit_robust() {
    shrink_under_forked_writers(ROBUST, dir_store);
}

/// The same over a real database: SQLite, shared by the forked writers.
#[test]
fn shrinking_a_write_back_cache_over_sqlite_under_forked_writers_loses_nothing() {
    shrink_under_forked_writers(NATIVE, |dir| Sql::new(&dir.join("db.sqlite")));
}

/// An in-memory store that fails every write while `fail` is set.
#[derive(Clone, Default)]
struct Flaky {
    fail: Arc<AtomicBool>,
    map: Arc<std::sync::Mutex<std::collections::BTreeMap<Vec<u8>, Vec<u8>>>>,
}

impl Backing for Flaky {
    fn load(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackingError> {
        Ok(self.map.lock().unwrap().get(key).cloned())
    }
    fn store(&self, key: &[u8], value: &[u8], _: Option<SystemTime>) -> Result<(), BackingError> {
        if self.fail.load(Ordering::Relaxed) {
            return Err("the store is down".into());
        }
        self.map
            .lock()
            .unwrap()
            .insert(key.to_vec(), value.to_vec());
        Ok(())
    }
    fn delete(&self, key: &[u8]) -> Result<(), BackingError> {
        self.map.lock().unwrap().remove(key);
        Ok(())
    }
}

/// A store that fails during a shrink: the move stops at the page it was on (the old file stays
/// the handles' file, every entry not moved still dirty in it, the new file beside it); once
/// the store is back, the same shrink resumes the move, writes back what does not fit, loses
/// nothing and leaves no file behind.
#[test]
fn a_failing_store_during_a_resize_loses_nothing() {
    let _s = serial();
    for kind in [NATIVE, ROBUST] {
        let dir = temp_dir();
        let path = dir.path().join("cache");
        let store = Flaky::default();
        let cache = open(kind, &path, BIG, store.clone());
        let keys: Vec<Vec<u8>> = (0..300).map(|i| format!("k{i}").into_bytes()).collect();
        for k in &keys {
            cache.set(k, &make_value(k, 1, 200)).expect("set");
        }
        assert!(
            store.map.lock().unwrap().is_empty(),
            "all fit: nothing written yet"
        );
        store.fail.store(true, Ordering::Relaxed);
        match cache.resize(SMALL, PAGE) {
            Err(Error::Backing { op: "store", .. }) => {}
            other => panic!("a failing store should fail the resize: {other:?}"),
        }
        // The move stops at the page whose store failed (no rollback since pages move one at
        // a time): the old file stays the one handles use, its path unchanged, and the stopped
        // move's new file stays beside it until a resize finishes the move.
        assert_eq!(
            cache.num_pages(),
            BIG,
            "stopped part way: the old file is in use"
        );
        assert_eq!(
            resize_files(dir.path()).len(),
            1,
            "the stopped move's new file"
        );
        let other = open(kind, &path, BIG, store.clone());
        assert_eq!(other.num_pages(), BIG);
        for k in &keys {
            let e = other.entry(k).expect("entry").expect("still cached");
            assert!(e.flags.is_dirty(), "still dirty");
            assert_eq!(check_value(k, &e.value), Ok(1));
        }
        store.fail.store(false, Ordering::Relaxed);
        let report = cache.resize(SMALL, PAGE).expect("resize");
        assert_eq!(report.dirty_dropped, 0, "{report:?}");
        assert!(report.written_back > 0, "{report:?}");
        assert_eq!(report.written_back, report.dropped, "{report:?}");
        assert_eq!(other.num_pages(), SMALL, "the other handle follows");
        cache.flush().expect("flush");
        let map = store.map.lock().unwrap();
        for k in &keys {
            let v = map.get(k).expect("in the store");
            assert_eq!(check_value(k, v), Ok(1));
        }
        assert_eq!(cache.stats().expect("stats").dirty_lost, 0);
        assert_no_resize_files(dir.path());
    }
}

/// A handle without a backing store has nowhere to write dirty entries that do not fit: it
/// drops and counts them, as before.
#[test]
fn without_a_backing_store_dirty_entries_are_dropped_and_counted() {
    let _s = serial();
    let dir = temp_dir();
    let path = dir.path().join("cache");
    let store = Flaky::default();
    let backed = open(NATIVE, &path, BIG, store);
    for i in 0..600 {
        let k = format!("k{i}").into_bytes();
        backed.set(&k, &make_value(&k, 1, 200)).expect("set");
    }
    let plain = NATIVE
        .builder()
        .path(&path)
        .open()
        .expect("open without a backing store");
    let report = plain.resize(SMALL, PAGE).expect("resize");
    assert!(report.dirty_dropped > 0, "{report:?}");
    assert_eq!(report.written_back, 0, "{report:?}");
    assert_eq!(
        plain.stats().expect("stats").dirty_lost,
        report.dirty_dropped
    );
}

/// A page size shrink, with no overflow area: dirty values a new page cannot hold at all are
/// written back with their whole bytes, and the store has them after the move.
#[test]
fn dirty_values_too_large_for_the_new_pages_are_written_back_whole() {
    let _s = serial();
    let dir = temp_dir();
    let path = dir.path().join("cache");
    let store = Flaky::default();
    let cache = NATIVE
        .builder()
        .path(&path)
        .num_pages(SMALL)
        .page_size(4 * PAGE)
        .overflow_size(0)
        .backing(store.clone())
        .write_mode(WriteMode::Back)
        .open()
        .expect("open");
    let keys: Vec<Vec<u8>> = (0..6).map(|i| format!("big-{i}").into_bytes()).collect();
    for k in &keys {
        cache.set(k, &make_value(k, 3, 6000)).expect("set");
    }
    let report = cache.resize(SMALL, PAGE).expect("resize");
    assert_eq!(report.dirty_dropped, 0, "{report:?}");
    assert_eq!(report.written_back, keys.len() as u64, "{report:?}");
    let map = store.map.lock().unwrap();
    for k in &keys {
        let v = map.get(k).expect("written back by the resize");
        assert_eq!(v.len(), 6000);
        assert_eq!(check_value(k, v), Ok(3));
    }
}

/// A store that says when it is called, waits to be told to go on, then fails: a resize that
/// writes back through it stays inside the call, holding the resize lock and the locks of its
/// step (an old page and a new page, each with its write-back lock), until the test lets it go.
#[derive(Clone)]
struct Gate {
    entered: Arc<Pipe>,
    go: Arc<Pipe>,
}

impl Backing for Gate {
    fn load(&self, _: &[u8]) -> Result<Option<Vec<u8>>, BackingError> {
        Ok(None)
    }
    fn store(&self, _: &[u8], _: &[u8], _: Option<SystemTime>) -> Result<(), BackingError> {
        self.entered.release(1);
        if !self.go.wait_timeout(Duration::from_secs(60)) {
            return Err("the test never let the store go on".into());
        }
        Err("the store is down".into())
    }
    fn delete(&self, _: &[u8]) -> Result<(), BackingError> {
        Ok(())
    }
}

/// A process forked by another thread while this one resizes inherits the resize claim as the
/// resizing thread left it: the child is refused only while the parent really resizes (by the
/// parent's file lock, naming the parent), and once the parent's resize is over (here stopped
/// part way by a failing store) the child resizes the file itself, resuming that move.
#[test]
fn a_child_forked_from_another_thread_mid_resize_can_resize() {
    let _s = serial();
    for kind in [NATIVE, ROBUST] {
        let dir = temp_dir();
        let path = dir.path().join("cache");
        let gate = Gate {
            entered: Arc::new(Pipe::new()),
            go: Arc::new(Pipe::new()),
        };
        let cache = open(kind, &path, BIG, gate.clone());
        let keys: Vec<Vec<u8>> = (0..300).map(|i| format!("k{i}").into_bytes()).collect();
        for k in &keys {
            cache.set(k, &make_value(k, 1, 200)).expect("set");
        }
        let resizer = {
            let cache = cache.clone();
            std::thread::spawn(move || cache.resize(SMALL, PAGE))
        };
        assert!(
            gate.entered.wait_timeout(Duration::from_secs(60)),
            "the shrink writes back through the store"
        );
        let (tried, over) = (Pipe::new(), Pipe::new());
        let parent = std::process::id() as i32;
        let mut children = Children::new();
        let (child_path, t, o) = (path.clone(), &tried, &over);
        children.spawn(move || {
            let cache = Cache::builder()
                .path(&child_path)
                .open()
                .map_err(|e| e.to_string())?;
            match cache.resize(BIG + 1, PAGE) {
                Err(Error::ResizeInProgress { pid, .. }) if pid == Some(parent) => {}
                other => return Err(format!("during the parent's resize: {other:?}")),
            }
            t.release(1);
            if !o.wait_timeout(Duration::from_secs(60)) {
                return Err("no word from the parent".into());
            }
            let report = cache
                .resize(BIG + 1, PAGE)
                .map_err(|e| format!("after the parent's resize: {e}"))?;
            if report.copied != 300 {
                return Err(format!("every entry is carried: {report:?}"));
            }
            Ok(())
        });
        assert!(
            tried.wait_timeout(Duration::from_secs(60)),
            "the child tried"
        );
        gate.go.release(1);
        match resizer.join().expect("the resizing thread") {
            Err(Error::Backing { op: "store", .. }) => {}
            other => panic!("the failing store stops the parent's resize: {other:?}"),
        }
        over.release(1);
        children.wait_all_ok();
        assert_eq!(
            cache.num_pages(),
            BIG + 1,
            "the parent follows the child's move"
        );
        for k in &keys {
            let e = cache.entry(k).expect("entry").expect("still cached");
            assert!(e.flags.is_dirty(), "still dirty");
            assert_eq!(check_value(k, &e.value), Ok(1));
        }
        assert_no_resize_files(dir.path());
    }
}

/// The resizer is SIGKILLed at the worst moment for its locks: inside a backing store's call,
/// holding the resize lock and its step's page and write-back locks of both files. The kernel
/// (fcntl) or the robust mutexes' owner-died recovery hands them back; no page is reset, every
/// entry is still there and still dirty, and the next resize, through a handle with a working
/// store, resumes the stopped move, writes back what does not fit, and loses nothing.
#[test]
fn a_resizer_killed_inside_a_store_call_loses_nothing() {
    let _s = serial();
    for kind in [NATIVE, ROBUST] {
        let dir = temp_dir();
        let path = dir.path().join("cache");
        let store = Flaky::default();
        let cache = open(kind, &path, BIG, store.clone());
        let keys: Vec<Vec<u8>> = (0..300).map(|i| format!("k{i}").into_bytes()).collect();
        for k in &keys {
            cache.set(k, &make_value(k, 1, 200)).expect("set");
        }
        let gate = Gate {
            entered: Arc::new(Pipe::new()),
            go: Arc::new(Pipe::new()),
        };
        let mut children = Children::new();
        let (child_path, child_gate) = (path.clone(), gate.clone());
        let pid = children.spawn(move || {
            let cache = kind
                .builder()
                .path(&child_path)
                .backing(child_gate)
                .write_mode(WriteMode::Back)
                .open()
                .map_err(|e| e.to_string())?;
            // Stops inside the store's call until it is killed.
            cache.resize(SMALL, PAGE).map_err(|e| e.to_string())?;
            Err("the resize came back from a store that never answers".into())
        });
        assert!(
            gate.entered.wait_timeout(Duration::from_secs(60)),
            "the child's shrink writes back through the store"
        );
        children.kill(pid);
        assert_eq!(
            cache.num_pages(),
            BIG,
            "the old file is still the one in use"
        );
        for k in &keys {
            let e = cache.entry(k).expect("entry").expect("still cached");
            assert!(e.flags.is_dirty(), "still dirty");
            assert_eq!(check_value(k, &e.value), Ok(1));
        }
        cache
            .set(b"after", b"the kill")
            .expect("a store after the kill");
        let stats = cache.stats().expect("stats");
        assert_eq!((stats.resets, stats.dirty_lost), (0, 0), "{stats:?}");
        let report = cache.resize(SMALL, PAGE).expect("the next resize");
        assert_eq!(report.dirty_dropped, 0, "{report:?}");
        assert_eq!(report.written_back, report.dropped, "{report:?}");
        cache.flush().expect("flush");
        let map = store.map.lock().unwrap();
        for k in &keys {
            let v = map.get(k).expect("in the store");
            assert_eq!(check_value(k, v), Ok(1));
        }
        assert_no_resize_files(dir.path());
    }
}
