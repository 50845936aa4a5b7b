//! `LockKind::Robust`: what only the robust kind has to get right. The scenarios both kinds
//! share (exact counters across processes, threads with processes, random SIGKILLs, a killed
//! lock holder, racing creators, reads without the lock) run for both kinds in
//! tests/multiprocess.rs, tests/crash.rs and tests/lock_free.rs.
//!
//! Here: the shared mutex alone excludes threads; lock timeouts and re-entrancy; waiters
//! already blocked when the holder dies; a holder killed in the middle of a change; a forked
//! child and its parent's lock; the openers lock; stale lock words after every user is gone
//! (page and write-back locks); a damaged lock word; and opening with the wrong kind.
//!
//! Every test takes `common::serial()` first (see tests/common/mod.rs on forking).

#![cfg(all(target_os = "linux", target_env = "gnu"))]

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use common::*;
use fastmmap::{Cache, CacheBuilder, Error, Layout, LockKind, Update};

const PAGES: u32 = 4;
const PAGE_SIZE: u32 = 4096;

/// A robust cache of four small pages; `timeout` bounds every lock wait, so that a lock that
/// is never released fails the test instead of hanging it.
fn robust(path: &Path, timeout: Duration) -> Cache {
    robust_builder(path, timeout)
        .open()
        .expect("open robust cache")
}

/// The options of [`robust`], not opened yet.
fn robust_builder(path: &Path, timeout: Duration) -> CacheBuilder {
    ROBUST
        .builder()
        .path(path)
        .num_pages(PAGES)
        .page_size(PAGE_SIZE)
        .lock_timeout(timeout)
}

const PATIENT: Duration = Duration::from_secs(20);
const IMPATIENT: Duration = Duration::from_millis(200);

/// File offset of the lock area of native page `page`'s row.
fn lock_area_offset(page: u32) -> u64 {
    NATIVE_PAGE_TABLE_OFFSET + u64::from(page) * NATIVE_ROW_SIZE
}
const LOCK_AREA_SIZE: usize = 48;
/// `OPENERS_LOCK_OFFSET`: every opener holds a shared fcntl lock on this header byte.
const OPENERS_BYTE: i64 = 64;

/// A key living in `page`, and a key living in another page.
fn keys_on(page: u32) -> (Vec<u8>, Vec<u8>) {
    let mut on = None;
    let mut off = None;
    for i in 0..10_000 {
        let k = format!("key-{i}").into_bytes();
        if key_page(Layout::Native, &k, PAGES) == page {
            on.get_or_insert(k);
        } else {
            off.get_or_insert(k);
        }
        if on.is_some() && off.is_some() {
            break;
        }
    }
    (
        on.expect("a key on the page"),
        off.expect("a key elsewhere"),
    )
}

/// Forks a child that takes the page lock of `key` (inside `update`) and then sleeps inside
/// the lock until it is killed or `go` lets it finish; returns once the child holds the lock.
fn hold_lock(kids: &mut Children, cache: &Cache, key: &'static [u8], go: &Pipe) -> libc::pid_t {
    let holding = Pipe::new();
    let pid = kids.spawn({
        let (cache, holding) = (cache.clone(), &holding);
        move || {
            cache
                .update(key, |_| {
                    holding.release(1);
                    go.wait();
                    Update::Keep
                })
                .map_err(|e| format!("update: {e}"))?;
            Ok(())
        }
    });
    assert!(
        holding.wait_timeout(PATIENT),
        "the child never took the lock"
    );
    pid
}

/// A copy of the lock word at `offset` in `raw`, taken while a forked child holds `key`'s
/// page lock (inside `update` of `cache`); the child then finishes normally, so the copy shows
/// a lock held by a thread that no longer exists.
fn copy_while_held(cache: &Cache, key: &'static [u8], raw: &File, offset: u64) -> Vec<u8> {
    let go = Pipe::new();
    let mut kids = Children::new();
    let pid = hold_lock(&mut kids, cache, key, &go);
    let copy = read_at(raw, offset, LOCK_AREA_SIZE);
    go.release(1);
    assert_eq!(kids.wait(pid), Exit::Code(0));
    copy
}

/// Forks a child that opens the file at `path` and keeps it open until `go` lets it finish
/// (so that no other opener is alone); returns once the child has opened it.
fn hold_open(kids: &mut Children, path: &Path, go: &Pipe) {
    let opened = Pipe::new();
    kids.spawn({
        let opened = &opened;
        move || {
            let _cache = ROBUST
                .builder()
                .path(path)
                .open()
                .map_err(|e| format!("open: {e}"))?;
            opened.release(1);
            go.wait();
            Ok(())
        }
    });
    assert!(
        opened.wait_timeout(PATIENT),
        "the child never opened the file"
    );
}

/// Who holds a conflicting fcntl lock on the openers byte, as seen from this process
/// (`F_GETLK` ignores this process's own locks): `None` if nobody else holds one.
fn openers_lock_holder(file: &File, exclusive: bool) -> Option<libc::pid_t> {
    // SAFETY: `flock` is plain data; zeroed is a valid value for every field.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if exclusive {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = OPENERS_BYTE;
    fl.l_len = 1;
    // SAFETY: the descriptor is open for the duration of the call and `fl` is a valid flock.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) };
    assert_eq!(rc, 0, "F_GETLK: {}", std::io::Error::last_os_error());
    (fl.l_type != libc::F_UNLCK as libc::c_short).then_some(fl.l_pid)
}

// ---------------------------------------------------------------------------------------------
// Threads

#[test]
fn the_shared_mutex_alone_excludes_threads() {
    let _serial = serial();
    let dir = temp_dir();
    let path = dir.path().join("threads");
    let cache = robust(&path, PATIENT);

    // Exact totals from threads of one process: there is no in-process mutex in front of the
    // robust one, so this is the shared mutex excluding threads by itself.
    const THREADS: usize = 4;
    const INCREMENTS: u64 = 5_000;
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..INCREMENTS {
                    cache
                        .update(b"counter", |old| {
                            let n = counter_value(old).expect("counter");
                            Update::Set((n + 1).to_le_bytes().to_vec())
                        })
                        .expect("update");
                }
            });
        }
    });
    let total = counter_value(cache.get(b"counter").expect("get").as_deref()).expect("counter");
    assert_eq!(total, THREADS as u64 * INCREMENTS);

    // A thread holding the page lock keeps another thread of the same process out until it
    // lets go.
    let impatient = robust(&path, IMPATIENT);
    let cache = &cache;
    std::thread::scope(|s| {
        let go_tx = hold_in_thread(s, cache, b"counter", |old| {
            Update::Set(old.expect("value").to_vec())
        });
        assert!(
            matches!(impatient.get(b"counter"), Err(Error::LockTimeout { .. })),
            "another thread got the page while it was held"
        );
        go_tx.send(()).expect("send");
    });
    assert!(
        impatient
            .get(b"counter")
            .expect("get after release")
            .is_some()
    );
}

// ---------------------------------------------------------------------------------------------
// Timeouts and re-entrancy

#[test]
fn lock_timeout_and_reentrancy_behave_as_with_fcntl() {
    let _serial = serial();
    let dir = temp_dir();
    let path = dir.path().join("timeout");
    let cache = robust(&path, PATIENT);
    let impatient = robust(&path, IMPATIENT);
    cache.set(b"held", b"v").expect("set");

    let go = Pipe::new();
    let mut kids = Children::new();
    let pid = hold_lock(&mut kids, &cache, b"held", &go);
    let started = std::time::Instant::now();
    match impatient.get(b"held") {
        Err(Error::LockTimeout { timeout, .. }) => assert_eq!(timeout, IMPATIENT),
        other => panic!("expected a lock timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= IMPATIENT, "gave up early");
    go.release(1);
    assert_eq!(kids.wait(pid), Exit::Code(0));
    assert_eq!(impatient.get(b"held").expect("get"), Some(b"v".to_vec()));

    // A timeout too long to turn into a deadline means waiting as long as it takes.
    for kind in [ROBUST, NATIVE] {
        let forever = kind
            .builder()
            .path(dir.path().join(format!("forever-{:?}", kind.lock)))
            .lock_timeout(Duration::MAX)
            .open()
            .expect("open");
        forever
            .set(b"k", b"v")
            .expect("set with an endless timeout");
        assert_eq!(forever.get(b"k").expect("get"), Some(b"v".to_vec()));
    }

    // A call into the same file from inside a closure is an error, not a self-deadlock.
    let inner = cache
        .get_with(b"held", |_| cache.get(b"held"))
        .expect("outer get");
    assert!(
        matches!(inner, Some(Err(Error::Reentrant { .. }))),
        "{inner:?}"
    );
    let inner = cache
        .update(b"held", |_| {
            assert!(matches!(
                cache.set(b"x", b"y"),
                Err(Error::Reentrant { .. })
            ));
            Update::Keep
        })
        .expect("outer update");
    assert_eq!(inner, Some(b"v".to_vec()));
}

// ---------------------------------------------------------------------------------------------
// Owner death

#[test]
fn waiters_proceed_when_the_holder_dies() {
    let _serial = serial();
    let dir = temp_dir();
    let path = dir.path().join("waiters");
    let cache = robust(&path, PATIENT);
    cache.set(b"held", b"value").expect("set");

    let (go, waiting) = (Pipe::new(), Pipe::new());
    let mut kids = Children::new();
    let holder = hold_lock(&mut kids, &cache, b"held", &go);
    // Two waiters block on the page lock before the holder dies.
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let cache = cache.clone();
            let waiting = &waiting;
            kids.spawn(move || {
                waiting.release(1);
                match cache.get(b"held").map_err(|e| format!("get: {e}"))? {
                    Some(v) if v == b"value" => {}
                    other => return Err(format!("read {other:?}")),
                }
                cache
                    .set(b"after", b"ok")
                    .map_err(|e| format!("set: {e}"))?;
                Ok(())
            })
        })
        .collect();
    for _ in &waiters {
        assert!(waiting.wait_timeout(PATIENT), "a waiter never started");
    }
    std::thread::sleep(Duration::from_millis(100));
    for &w in &waiters {
        assert_eq!(
            try_wait_pid(w),
            None,
            "a waiter got the lock from a live holder"
        );
    }
    assert_eq!(kids.kill(holder), Exit::Signal(libc::SIGKILL));
    kids.wait_all_ok();
    assert_eq!(cache.get(b"after").expect("get"), Some(b"ok".to_vec()));
    // The holder was not changing the page: nothing to reset.
    assert_eq!(cache.stats().expect("stats").resets, 0);
    assert!(cache.validate().expect("validate").is_empty());
}

#[test]
fn a_holder_killed_in_the_middle_of_a_change_has_its_page_reset() {
    let _serial = serial();
    let dir = temp_dir();
    let path = dir.path().join("mid-change");
    let (on, off) = keys_on(1);
    let raw = raw_file_for(&path);
    let cache = robust(&path, PATIENT);
    cache.set(&on, b"on the page").expect("set");
    cache.set(&off, b"elsewhere").expect("set");
    let on: &'static [u8] = on.leak();

    let go = Pipe::new();
    let mut kids = Children::new();
    let holder = hold_lock(&mut kids, &cache, on, &go);
    // As if the holder had started a structural change: its busy marker is set.
    write_at(&raw, busy_marker_offset(1), &1u32.to_ne_bytes());
    assert_eq!(kids.kill(holder), Exit::Signal(libc::SIGKILL));

    // The next locker is told the owner died, sees the busy marker, and resets the page.
    assert_eq!(cache.get(on).expect("get after the death"), None);
    let stats = cache.stats().expect("stats");
    assert_eq!(stats.resets, 1);
    assert_eq!(stats.pages[1].resets, 1);
    assert_eq!(read_u32(&raw, busy_marker_offset(1)), 0);
    assert_eq!(cache.get(&off).expect("get"), Some(b"elsewhere".to_vec()));
    assert!(cache.validate().expect("validate").is_empty());
    // The lock was made consistent: it works for everyone, again and again.
    for i in 0..100u32 {
        cache.set(on, &i.to_le_bytes()).expect("set");
    }
    kids.spawn({
        let cache = cache.clone();
        move || match cache.get(on).map_err(|e| e.to_string())? {
            Some(v) if v == 99u32.to_le_bytes() => Ok(()),
            other => Err(format!("read {other:?}")),
        }
    });
    kids.wait_all_ok();
    drop(cache);
    drop(raw);
}

/// Opens the cache file's path for raw access once the cache has created it. Keep it open
/// until the caches are dropped: closing any descriptor of the file drops every fcntl lock
/// this process holds on it, the openers lock included.
fn raw_file_for(path: &Path) -> File {
    drop(robust(path, PATIENT));
    raw_file(path)
}

// ---------------------------------------------------------------------------------------------
// Fork

#[test]
fn a_forked_child_never_owns_a_lock_its_parent_holds() {
    let _serial = serial();
    let dir = temp_dir();
    let path = dir.path().join("fork");
    let cache = robust(&path, PATIENT);
    cache.set(b"k", b"parent").expect("set");

    let mut kids = Children::new();
    std::thread::scope(|s| {
        // A thread of the parent holds the page lock while the main thread forks.
        let cache = &cache;
        let go_tx = hold_in_thread(s, cache, b"k", |_| Update::Set(b"released".to_vec()));
        let child = kids.spawn({
            let cache = cache.clone();
            move || {
                // The mutex names the parent's thread as its owner: the child waits for it.
                match cache.get(b"k").map_err(|e| format!("get: {e}"))? {
                    Some(v) if v == b"released" => {}
                    other => return Err(format!("read {other:?} before the parent let go")),
                }
                cache.set(b"k", b"child").map_err(|e| format!("set: {e}"))?;
                Ok(())
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            try_wait_pid(child),
            None,
            "the child got a lock the parent held"
        );
        go_tx.send(()).expect("send");
    });
    kids.wait_all_ok();
    assert_eq!(cache.get(b"k").expect("get"), Some(b"child".to_vec()));
}

#[test]
fn a_forked_child_takes_its_own_openers_lock() {
    let _serial = serial();
    let dir = temp_dir();
    let path = dir.path().join("openers");
    let raw = raw_file_for(&path);
    assert_eq!(openers_lock_holder(&raw, true), None, "nobody has it open");

    let (used, parent_closed, done) = (Pipe::new(), Pipe::new(), Pipe::new());
    let mut kids = Children::new();
    let child = {
        let cache = robust(&path, PATIENT);
        let child = kids.spawn({
            let cache = cache.clone();
            let (used, parent_closed, done) = (&used, &parent_closed, &done);
            move || {
                cache.set(b"k", b"child").map_err(|e| format!("set: {e}"))?;
                used.release(1);
                parent_closed.wait();
                // Still usable after the opener that forked us has closed the file.
                cache.get(b"k").map_err(|e| format!("get: {e}"))?;
                done.wait();
                Ok(())
            }
        });
        assert!(used.wait_timeout(PATIENT), "the child never used the cache");
        child
        // The parent's cache is dropped here: its openers lock goes with its descriptor.
    };
    // The child took its own shared openers lock on first use, so a new opener is not alone
    // and must not reinitialise the lock words.
    assert_eq!(openers_lock_holder(&raw, true), Some(child));
    assert_eq!(openers_lock_holder(&raw, false), None, "the lock is shared");
    parent_closed.release(1);
    done.release(1);
    kids.wait_all_ok();
    assert_eq!(
        openers_lock_holder(&raw, true),
        None,
        "the child's lock went with it"
    );
}

/// Opening a file while another process holds its openers lock exclusively (a first opener
/// reinitialising the locks and stopped there, or a hostile writer) waits no longer than the
/// handle's lock timeout: `Error::OpenersLockTimeout`, and nothing opened. It used to wait as
/// long as the byte was held, whatever the timeout, with this process's registry of open
/// files locked all the while (so its other opens and its forks waited too).
#[test]
fn an_open_waits_for_the_openers_lock_no_longer_than_the_lock_timeout() {
    let _serial = serial();
    let dir = temp_dir();
    let path = dir.path().join("held");
    robust(&path, PATIENT).set(b"k", b"v").expect("set");
    let (held, go) = (Pipe::new(), Pipe::new());
    let mut kids = Children::new();
    kids.spawn({
        let (held, go, path) = (&held, &go, &path);
        move || {
            let file = raw_file_for(path);
            // SAFETY: `flock` is plain data; zeroed is a valid value for every field.
            let mut fl: libc::flock = unsafe { std::mem::zeroed() };
            fl.l_type = libc::F_WRLCK as libc::c_short;
            fl.l_whence = libc::SEEK_SET as libc::c_short;
            fl.l_start = OPENERS_BYTE;
            fl.l_len = 1;
            // SAFETY: the descriptor is open for the duration of the call; `fl` is valid.
            let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) };
            if rc != 0 {
                return Err(format!("F_SETLK: {}", std::io::Error::last_os_error()));
            }
            held.release(1);
            go.wait();
            Ok(())
        }
    });
    assert!(held.wait_timeout(PATIENT), "the child never took the byte");
    let opened = robust_builder(&path, IMPATIENT).open();
    assert!(
        matches!(opened, Err(Error::OpenersLockTimeout { timeout, .. }) if timeout == IMPATIENT),
        "{:?}",
        opened.map(|_| ())
    );
    // Another file of this process opens meanwhile.
    robust(&dir.path().join("other"), PATIENT);
    go.release(1);
    kids.wait_all_ok();
    let cache = robust(&path, PATIENT);
    assert_eq!(cache.get(b"k").expect("get"), Some(b"v".to_vec()));
}

// ---------------------------------------------------------------------------------------------
// Stale lock words

#[test]
fn stale_lock_words_are_reinitialised_by_the_first_opener_only() {
    let _serial = serial();
    let dir = temp_dir();
    let path = dir.path().join("stale");
    let (on, off) = keys_on(2);
    let raw = raw_file_for(&path);
    {
        let cache = robust(&path, PATIENT);
        cache.set(&on, b"kept").expect("set");
        cache.set(&off, b"kept too").expect("set");
    }
    let on: &'static [u8] = on.leak();

    // A child locks the page; a copy of the lock word is taken while it holds it; the child
    // finishes normally. Writing the copy back leaves a word held by a thread that no longer
    // exists and that the kernel never saw die holding it: the state after a reboot with the
    // file on disk.
    let stale = copy_while_held(&robust(&path, PATIENT), on, &raw, lock_area_offset(2));
    // While another process has the file open, an opener is not alone: it must leave the lock
    // words as they are (it cannot know that nobody holds them), so the stale word blocks it.
    // (The other process opens first: had it opened after the word was written, it would have
    // been alone, and would itself have reinitialised the words.)
    {
        let go = Pipe::new();
        let mut kids = Children::new();
        hold_open(&mut kids, &path, &go);
        write_at(&raw, lock_area_offset(2), &stale);
        let cache = robust(&path, IMPATIENT);
        // A locked read (plain gets may be answered without the lock).
        assert!(
            matches!(
                cache.update(on, |_| Update::Keep),
                Err(Error::LockTimeout { .. })
            ),
            "an opener that was not alone reinitialised the lock words"
        );
        assert_eq!(
            cache.get(&off).expect("other pages work"),
            Some(b"kept too".to_vec())
        );
        drop(cache);
        go.release(1);
        kids.wait_all_ok();
    }
    // Still the stale owner (a waiter may have added its waiters bit to the futex word).
    let now = read_at(&raw, lock_area_offset(2), LOCK_AREA_SIZE);
    assert_eq!(now[4..], stale[4..]);

    // Alone, the first opener reinitialises every lock word before anyone locks: the page is
    // usable again, and its data were never touched.
    let cache = robust(&path, PATIENT);
    assert_eq!(cache.get(on).expect("get"), Some(b"kept".to_vec()));
    cache.set(on, b"new").expect("set");
    assert_eq!(cache.get(on).expect("get"), Some(b"new".to_vec()));
    assert_eq!(cache.stats().expect("stats").resets, 0);
    drop(cache);
    drop(raw);
}

#[test]
fn every_user_killed_then_the_file_reopened() {
    let _serial = serial();
    let dir = temp_dir();
    let path = dir.path().join("all-killed");
    let raw = raw_file_for(&path);
    let keys: Vec<&'static [u8]> = (0..PAGES).map(|p| &*keys_on(p).0.leak()).collect();

    // Every page locked by a process, all of them killed at once, nobody else left.
    let mut kids = Children::new();
    let go = Pipe::new();
    let mut pids = Vec::new();
    {
        let cache = robust(&path, PATIENT);
        for &k in &keys {
            cache.set(k, b"before").expect("set");
        }
        for &k in &keys {
            pids.push(hold_lock(&mut kids, &cache, k, &go));
        }
    }
    assert!(openers_lock_holder(&raw, true).is_some());
    for pid in pids {
        assert_eq!(kids.kill(pid), Exit::Signal(libc::SIGKILL));
    }
    assert_eq!(openers_lock_holder(&raw, true), None);

    let cache = robust(&path, PATIENT);
    for &k in &keys {
        assert_eq!(cache.get(k).expect("get"), Some(b"before".to_vec()));
        cache.set(k, b"after").expect("set");
    }
    assert!(cache.validate().expect("validate").is_empty());
    drop(cache);
    drop(raw);
}

// ---------------------------------------------------------------------------------------------
// Opening with the wrong kind

#[test]
fn opening_with_the_other_kind_is_an_error_and_changes_nothing() {
    let _serial = serial();
    let dir = temp_dir();
    for (made, asked) in [
        (LockKind::Robust, LockKind::Fcntl),
        (LockKind::Fcntl, LockKind::Robust),
    ] {
        let path = dir.path().join(format!("{made:?}"));
        {
            let cache = Cache::builder()
                .path(&path)
                .lock_kind(made)
                .open()
                .expect("create");
            cache.set(b"k", b"v").expect("set");
        }
        let before = std::fs::read(&path).expect("read");
        match Cache::builder().path(&path).lock_kind(asked).open() {
            Err(Error::LockKindMismatch {
                requested, found, ..
            }) => assert_eq!((requested, found), (asked, made)),
            other => panic!("opened a {made:?} file as {asked:?}: {other:?}"),
        }
        assert_eq!(std::fs::read(&path).expect("read"), before);
        // The same mistake while the file is open in this process.
        let open = Cache::builder()
            .path(&path)
            .lock_kind(made)
            .open()
            .expect("open");
        assert!(matches!(
            Cache::builder().path(&path).lock_kind(asked).open(),
            Err(Error::LockKindMismatch { .. })
        ));
        assert_eq!(open.lock_kind(), made);
        // Not asking for a kind opens the file with the kind it records.
        let unasked = Cache::builder().path(&path).open().expect("open");
        assert_eq!(unasked.lock_kind(), made);
    }
    drop(dir);
    let dir = temp_dir();
    let fresh = Cache::builder()
        .path(dir.path().join("fresh"))
        .open()
        .expect("create");
    assert_eq!(
        fresh.lock_kind(),
        LockKind::Robust,
        "the default for a new native file on Linux with glibc"
    );
    assert_eq!(LockKind::default(), LockKind::Robust);
    let fastmmap = Cache::builder()
        .path(dir.path().join("fresh-fastmmap"))
        .layout(Layout::FastMmap)
        .open()
        .expect("create");
    assert_eq!(fastmmap.lock_kind(), LockKind::Fcntl, "as Perl locks");
    // ... and in another process, which finds the kind in the header.
    let path = dir.path().join("robust-unasked");
    drop(
        Cache::builder()
            .path(&path)
            .lock_kind(LockKind::Robust)
            .open()
            .expect("create"),
    );
    let mut kids = Children::new();
    kids.spawn(move || {
        let cache = Cache::builder()
            .path(&path)
            .open()
            .map_err(|e| e.to_string())?;
        match cache.lock_kind() {
            LockKind::Robust => Ok(()),
            other => Err(format!("opened as {other:?}")),
        }
    });
    kids.wait_all_ok();

    // Cache::FastMmap's layout has nowhere to keep robust locks.
    let path = dir.path().join("fastmmap");
    match Cache::builder()
        .path(&path)
        .layout(Layout::FastMmap)
        .lock_kind(LockKind::Robust)
        .open()
    {
        Err(Error::InvalidOptions { reason, .. }) => {
            assert!(reason.contains("native layout"), "{reason}");
        }
        other => panic!("robust locks on a FastMmap file: {other:?}"),
    }
    assert!(!path.exists(), "a refused open created the file");
}

// ---------------------------------------------------------------------------------------------
// Damaged lock words

#[test]
fn a_damaged_lock_word_is_an_error_not_an_abort() {
    let _serial = serial();
    let dir = temp_dir();
    let path = dir.path().join("damaged-word");
    let (on, off) = keys_on(3);
    let raw = raw_file_for(&path);
    {
        let cache = robust(&path, PATIENT);
        cache.set(&off, b"elsewhere").expect("set");
    }
    // Another process keeps the file open, so nobody reinitialises the words.
    let go = Pipe::new();
    let mut kids = Children::new();
    hold_open(&mut kids, &path, &go);
    // Garbage in page 3's lock word: a priority-inheritance kind whose owner "died", which
    // glibc would otherwise meet with an assertion failure.
    let mut word = read_at(&raw, lock_area_offset(3), LOCK_AREA_SIZE);
    word[..4].copy_from_slice(&0x4000_0000u32.to_ne_bytes());
    word[16..20].copy_from_slice(&0x20u32.to_ne_bytes());
    write_at(&raw, lock_area_offset(3), &word);
    let cache = robust(&path, IMPATIENT);
    // A locked read (plain gets may be answered without the lock, which is still fine).
    match cache.update(&on, |_| Update::Keep) {
        Err(Error::Lock { page: 3, .. }) => {}
        other => panic!("a damaged lock word gave {other:?}"),
    }
    match cache.set(&on, b"x") {
        Err(Error::Lock { page: 3, .. }) => {}
        other => panic!("a damaged lock word gave {other:?} to a store"),
    }
    assert_eq!(
        cache.get(&off).expect("other pages work"),
        Some(b"elsewhere".to_vec())
    );
    drop(cache);
    go.release(1);
    kids.wait_all_ok();
    // Alone, the next opener reinitialises the word.
    let cache = robust(&path, PATIENT);
    cache.set(&on, b"fine").expect("set after reinitialising");
    assert_eq!(cache.get(&on).expect("get"), Some(b"fine".to_vec()));
    drop(cache);
    drop(raw);
}

// ---------------------------------------------------------------------------------------------
// Write-back locks

/// A backing store that keeps nothing: enough to give a cache write-back locks.
struct Nowhere;

impl fastmmap::Backing for Nowhere {
    fn load(&self, _: &[u8]) -> Result<Option<Vec<u8>>, fastmmap::BackingError> {
        Ok(None)
    }

    fn store(
        &self,
        _: &[u8],
        _: &[u8],
        _: Option<std::time::SystemTime>,
    ) -> Result<(), fastmmap::BackingError> {
        Ok(())
    }

    fn delete(&self, _: &[u8]) -> Result<(), fastmmap::BackingError> {
        Ok(())
    }
}

/// A robust cache with a backing store (write-through), so that its writes take write-back
/// locks.
fn robust_backed(path: &Path, timeout: Duration) -> Cache {
    robust_builder(path, timeout)
        .backing(Nowhere)
        .open()
        .expect("open robust cache")
}

/// File offset of native page `page`'s write-back lock: in the write-back lock table, after
/// the page table.
fn write_back_lock_offset(page: u32) -> u64 {
    NATIVE_PAGE_TABLE_OFFSET
        + u64::from(PAGES) * NATIVE_ROW_SIZE
        + u64::from(page) * NATIVE_WRITE_BACK_ROW_SIZE
}

/// As `stale_lock_words_are_reinitialised_by_the_first_opener_only`, for a write-back lock: a
/// copy of it taken while a process held it blocks writers of its page while another process
/// has the file open, and the first opener that is alone reinitialises it.
#[test]
fn stale_write_back_lock_words_are_reinitialised_by_the_first_opener() {
    let _serial = serial();
    let dir = temp_dir();
    let path = dir.path().join("stale-write-back");
    let (on, off) = keys_on(1);
    let raw = raw_file_for(&path);
    let on: &'static [u8] = on.leak();
    // `update` of a backed cache holds the page's write-back lock (and its page lock).
    let stale = copy_while_held(
        &robust_backed(&path, PATIENT),
        on,
        &raw,
        write_back_lock_offset(1),
    );
    assert_ne!(
        stale,
        read_at(&raw, write_back_lock_offset(1), LOCK_AREA_SIZE),
        "the copy shows the lock held"
    );
    {
        let go = Pipe::new();
        let mut kids = Children::new();
        hold_open(&mut kids, &path, &go);
        write_at(&raw, write_back_lock_offset(1), &stale);
        let cache = robust_backed(&path, IMPATIENT);
        match cache.set(on, b"blocked") {
            Err(Error::LockTimeout {
                page: 1,
                lock: fastmmap::LockRole::WriteBack,
                ..
            }) => {}
            other => panic!("expected a write-back lock timeout, got {other:?}"),
        }
        cache.set(&off, b"other pages work").expect("set");
        drop(cache);
        go.release(1);
        kids.wait_all_ok();
    }
    let cache = robust_backed(&path, IMPATIENT);
    cache
        .set(on, b"after")
        .expect("set after the first opener's reinitialisation");
    assert_eq!(cache.get(on).expect("get"), Some(b"after".to_vec()));
    drop(cache);
    drop(raw);
}
