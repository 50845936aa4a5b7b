//! Fork from any thread at any time, as a prefork server with helper threads does: children
//! forked while other threads open, use and drop caches, or hold a page lock or a write-back
//! lock, must finish, and must never get a lock another process holds.
//!
//! Unlike the other process tests, these fork on purpose while other threads of the test are
//! inside the cache. A child that hangs is killed at a deadline and fails the test.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use fastmmap::{Cache, Error, LockKind, Update};

/// A child that has not finished by then is taken to hang.
const CHILD_DEADLINE: Duration = Duration::from_secs(30);

fn open(path: &Path, lock: LockKind) -> Result<Cache, Error> {
    Cache::builder()
        .path(path)
        .lock_kind(lock)
        .num_pages(13)
        .page_size(4096)
        .lock_timeout(Duration::from_secs(20))
        .open()
}

/// Waits for `pid` until `deadline`; kills it if it is still running then.
fn wait_until(pid: libc::pid_t, deadline: Instant) -> Option<Exit> {
    loop {
        if let Some(exit) = try_wait_pid(pid) {
            return Some(exit);
        }
        if Instant::now() >= deadline {
            kill9(pid);
            let _ = wait_pid(pid);
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Every page of `cache` read and written once: one key per page of a 13-page file.
fn touch_every_page(cache: &Cache, tag: &str) -> ChildResult {
    for i in 0..64u32 {
        let key = format!("child-{tag}-{i}");
        cache
            .set(key.as_bytes(), b"v")
            .map_err(|e| format!("set {key}: {e}"))?;
        if cache
            .get(key.as_bytes())
            .map_err(|e| format!("get {key}: {e}"))?
            != Some(b"v".to_vec())
        {
            return Err(format!("{key} not read back"));
        }
    }
    Ok(())
}

fn forks_while_threads_open_use_and_drop_caches(lock: LockKind) {
    let _serial = serial();
    let dir = temp_dir();
    let shared = dir.path().join("shared");
    let parent = open(&shared, lock).expect("open");
    let forks = scaled(60, 600);
    let stop = AtomicBool::new(false);
    let mut hung = Vec::new();
    let mut failed = Vec::new();
    std::thread::scope(|s| {
        for t in 0..3 {
            let stop = &stop;
            let dir = dir.path().to_path_buf();
            let shared = shared.clone();
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Opens of a file already open (the registry), of new files (creation),
                    // and page work with a closure that keeps a page locked for a moment.
                    let path: PathBuf = if n.is_multiple_of(3) {
                        dir.join(format!("t{t}-{}", n % 7))
                    } else {
                        shared.clone()
                    };
                    let cache = open(&path, lock).expect("thread open");
                    for k in 0..8 {
                        let key = format!("t{t}-{k}");
                        cache
                            .update(key.as_bytes(), |old| {
                                std::hint::black_box(old);
                                Update::Set(n.to_le_bytes().to_vec())
                            })
                            .expect("thread update");
                    }
                    drop(cache);
                    n += 1;
                }
            });
        }
        let mut kids = Vec::new();
        for i in 0..forks {
            std::thread::sleep(Duration::from_micros(300 + (i as u64 % 7) * 150));
            let parent = parent.clone();
            let shared = shared.clone();
            let new_file = dir.path().join(format!("child-{i}"));
            kids.push(fork_child(move || {
                // The cache inherited from the parent, the same file opened again (the
                // registry), and a new file (creation).
                touch_every_page(&parent, "inherited")?;
                let again = open(&shared, lock).map_err(|e| format!("reopen: {e}"))?;
                touch_every_page(&again, "reopened")?;
                let fresh = open(&new_file, lock).map_err(|e| format!("new file: {e}"))?;
                touch_every_page(&fresh, "new")
            }));
        }
        let deadline = Instant::now() + CHILD_DEADLINE;
        for (i, pid) in kids.into_iter().enumerate() {
            match wait_until(pid, deadline) {
                None => hung.push(i),
                Some(Exit::Code(0)) => {}
                Some(exit) => failed.push((i, exit)),
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(
        hung.is_empty() && failed.is_empty(),
        "{lock:?}: of {forks} children forked while threads used caches, {} hung ({hung:?}) and \
         these failed: {failed:?}",
        hung.len()
    );
}

#[test]
fn forks_while_threads_open_use_and_drop_caches_fcntl() {
    forks_while_threads_open_use_and_drop_caches(LockKind::Fcntl);
}

#[test]
fn forks_while_threads_open_use_and_drop_caches_robust() {
    forks_while_threads_open_use_and_drop_caches(LockKind::Robust);
}

/// A thread of the parent holds a page lock while the main thread forks. The child can use
/// every other page at once, waits for the held page until the parent's thread lets go (never
/// getting it earlier), and then uses it too; the same for a child whose wait times out first.
fn a_page_held_by_another_thread_at_fork(lock: LockKind) {
    let _serial = serial();
    let dir = temp_dir();
    let path = dir.path().join("held");
    let cache = open(&path, lock).expect("open");
    cache.set(b"held", b"before").expect("set");

    let mut kids = Children::new();
    let released = Pipe::new();
    std::thread::scope(|s| {
        let cache = &cache;
        let go_tx = hold_in_thread(s, cache, b"held", |_| Update::Set(b"released".to_vec()));
        let waiter = kids.spawn({
            let cache = cache.clone();
            move || {
                touch_every_page_but(&cache, b"held")?;
                match cache.get(b"held").map_err(|e| format!("get: {e}"))? {
                    Some(v) if v == b"released" => {}
                    other => return Err(format!("read {other:?} before the parent let go")),
                }
                cache
                    .set(b"held", b"child")
                    .map_err(|e| format!("set: {e}"))?;
                Ok(())
            }
        });
        let released = &released;
        let impatient = kids.spawn({
            let path = path.clone();
            move || {
                let cache = Cache::builder()
                    .path(&path)
                    .lock_kind(lock)
                    .lock_timeout(Duration::from_millis(50))
                    .open()
                    .map_err(|e| format!("open: {e}"))?;
                match cache.get(b"held") {
                    Err(Error::LockTimeout { .. }) => {}
                    other => return Err(format!("expected a lock timeout, got {other:?}")),
                }
                // Once the parent's thread lets go, the page is usable in this child.
                released.wait();
                let v = cache.get(b"held").map_err(|e| format!("get after: {e}"))?;
                if v.is_none() {
                    return Err("the held key is gone".into());
                }
                Ok(())
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            try_wait_pid(waiter),
            None,
            "{lock:?}: the child got a page lock the parent's thread held"
        );
        go_tx.send(()).expect("send");
        let _ = impatient;
    });
    released.release(1);
    kids.wait_all_ok();
    assert_eq!(cache.get(b"held").expect("get"), Some(b"child".to_vec()));
}

fn touch_every_page_but(cache: &Cache, held: &[u8]) -> ChildResult {
    let num_pages = 13;
    let held_page = key_page(fastmmap::Layout::Native, held, num_pages);
    let mut seen = std::collections::HashSet::new();
    for i in 0..10_000u32 {
        let key = format!("other-{i}");
        let page = key_page(fastmmap::Layout::Native, key.as_bytes(), num_pages);
        if page == held_page || !seen.insert(page) {
            continue;
        }
        cache
            .set(key.as_bytes(), b"x")
            .map_err(|e| format!("set {key} (page {page}): {e}"))?;
        if seen.len() == num_pages as usize - 1 {
            return Ok(());
        }
    }
    Err("could not find a key for every page".into())
}

#[test]
fn a_page_held_by_another_thread_at_fork_fcntl() {
    a_page_held_by_another_thread_at_fork(LockKind::Fcntl);
}

#[test]
fn a_page_held_by_another_thread_at_fork_robust() {
    a_page_held_by_another_thread_at_fork(LockKind::Robust);
}

/// A backing store whose `store` blocks in the process that made it until told to go on, and
/// returns at once in any other process.
struct Blocking {
    parent: u32,
    entered: std::sync::Mutex<Option<mpsc::Sender<()>>>,
    go: std::sync::Mutex<Option<mpsc::Receiver<()>>>,
}

impl fastmmap::Backing for Blocking {
    fn load(&self, _: &[u8]) -> Result<Option<Vec<u8>>, fastmmap::BackingError> {
        Ok(None)
    }
    fn store(
        &self,
        _: &[u8],
        _: &[u8],
        _: Option<std::time::SystemTime>,
    ) -> Result<(), fastmmap::BackingError> {
        if std::process::id() == self.parent {
            let entered = self.entered.lock().unwrap().take();
            if let Some(entered) = entered {
                entered.send(()).expect("send");
                let go = self.go.lock().unwrap().take().expect("one blocking store");
                go.recv().expect("recv");
            }
        }
        Ok(())
    }
    fn delete(&self, _: &[u8]) -> Result<(), fastmmap::BackingError> {
        Ok(())
    }
}

/// A thread of the parent is inside the backing store, holding a page's write-back lock, while
/// the main thread forks. The child's write-through `set` of a key on that page waits for the
/// parent's thread (the write-back lock excludes processes) and then completes: the
/// in-process half of the lock, held by a thread the child does not have, does not hang it.
fn a_write_back_held_by_another_thread_at_fork(lock: LockKind) {
    let _serial = serial();
    let dir = temp_dir();
    let (entered_tx, entered_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let cache = Cache::builder()
        .path(dir.path().join("write-back"))
        .lock_kind(lock)
        .num_pages(13)
        .page_size(4096)
        .backing(Blocking {
            parent: std::process::id(),
            entered: std::sync::Mutex::new(Some(entered_tx)),
            go: std::sync::Mutex::new(Some(go_rx)),
        })
        .open()
        .expect("open");
    std::thread::scope(|s| {
        let cache = &cache;
        s.spawn(move || cache.set(b"held", b"parent").expect("set"));
        entered_rx.recv().expect("the parent's store started");
        let child = fork_child({
            let cache = cache.clone();
            move || {
                touch_every_page_but(&cache, b"held")?;
                cache
                    .set(b"held", b"child")
                    .map_err(|e| format!("set: {e}"))?;
                Ok(())
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let early = try_wait_pid(child);
        // Let the parent's thread go before any assertion, so that a failure cannot hang.
        go_tx.send(()).expect("send");
        assert_eq!(
            early, None,
            "{lock:?}: the child wrote through while the parent's thread held the write-back lock"
        );
        assert_eq!(
            wait_until(child, Instant::now() + CHILD_DEADLINE),
            Some(Exit::Code(0)),
            "{lock:?}: the child did not finish"
        );
    });
    assert_eq!(cache.get(b"held").expect("get"), Some(b"child".to_vec()));
}

#[test]
fn a_write_back_held_by_another_thread_at_fork_fcntl() {
    a_write_back_held_by_another_thread_at_fork(LockKind::Fcntl);
}

#[test]
fn a_write_back_held_by_another_thread_at_fork_robust() {
    a_write_back_held_by_another_thread_at_fork(LockKind::Robust);
}
