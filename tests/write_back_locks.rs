//! Write-back against killed writers, slow stores and hostile readers, with real forked
//! processes and a backing store that other processes see (a directory of files):
//!
//! - a writer SIGKILLed at a random instant while it overwrites one key of a one-page cache in
//!   write-back mode never loses the last value it was told was stored: that value (or a later
//!   one) is in the cache or in the backing store, or the loss is counted in `dirty_lost`;
//! - a writer kept from its store by another process dirtying the page, round after round,
//!   writes its victims back holding the page in the last round, so a SIGKILL during that call
//!   loses nothing acknowledged; a store's callback that uses the cache there gets `Reentrant`;
//! - a reader does not wait behind another process's slow call of the backing store;
//! - a process that can only read a robust file cannot block its writers; on an fcntl file it
//!   can (as with Perl), and the error names the lock it waited for.

mod common;

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use fastmmap::{Backing, BackingError, Error, LockKind, LockRole, Update, WriteMode};

use common::{
    ALL_KINDS, Children, Exit, FASTMMAP, Kind, NATIVE, ROBUST, Rng, scaled, seed, serial, temp_dir,
};

const PAGE_SIZE: u32 = 64 * 1024;

/// A backing store of one file per key in a directory: every process sees every write. A
/// store writes a temporary file and renames it over the key's, so a writer killed part way
/// leaves the old value or the new one, never half of one.
struct Files {
    dir: PathBuf,
    /// `store` of this key waits (see [`Files::slow`]).
    slow_key: Option<Vec<u8>>,
    /// `store` of this key in a process other than this one waits (see [`Files::gated`]).
    gated: Option<(Vec<u8>, u32)>,
    /// Calls of `store` of the gated key so far, in this process.
    gated_calls: AtomicUsize,
}

impl Files {
    fn new(dir: &Path) -> Files {
        std::fs::create_dir_all(dir).expect("store dir");
        Files {
            dir: dir.to_path_buf(),
            slow_key: None,
            gated: None,
            gated_calls: AtomicUsize::new(0),
        }
    }

    /// A store whose `store` of `key`, in any process but this one (a forked child), signals
    /// `entered-N` (N counting such calls from 1), then waits for `release-N` to appear (at most
    /// 60 s) before storing.
    fn gated(dir: &Path, key: &[u8]) -> Files {
        Files {
            gated: Some((key.to_vec(), std::process::id())),
            ..Files::new(dir)
        }
    }

    /// A store whose `store` of `key` signals `entered`, then waits for `release` to appear
    /// (at most 60 s), then stores and signals `returned`.
    fn slow(dir: &Path, key: &[u8]) -> Files {
        Files {
            slow_key: Some(key.to_vec()),
            ..Files::new(dir)
        }
    }

    fn path(&self, key: &[u8]) -> PathBuf {
        self.dir.join(format!("k-{}", common::hex(key)))
    }

    fn flag(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, key: &[u8]) -> Option<Vec<u8>> {
        common::read_if_present(&self.path(key)).unwrap_or_else(|e| panic!("read the store: {e}"))
    }
}

impl Backing for Files {
    fn load(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackingError> {
        Ok(common::read_if_present(&self.path(key))?)
    }

    fn store(&self, key: &[u8], value: &[u8], _: Option<SystemTime>) -> Result<(), BackingError> {
        if let Some((gated, parent)) = &self.gated
            && gated.as_slice() == key
            && std::process::id() != *parent
        {
            let n = self.gated_calls.fetch_add(1, Ordering::SeqCst) + 1;
            std::fs::write(self.flag(&format!("entered-{n}")), b"")?;
            let release = self.flag(&format!("release-{n}"));
            let deadline = Instant::now() + Duration::from_secs(60);
            while !release.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let slow = self.slow_key.as_deref() == Some(key);
        if slow {
            std::fs::write(self.flag("entered"), b"")?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !self.flag("release").exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let tmp = self.dir.join(format!(
            "tmp-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&tmp, value)?;
        std::fs::rename(&tmp, self.path(key))?;
        if slow {
            std::fs::write(self.flag("returned"), b"")?;
        }
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<(), BackingError> {
        match std::fs::remove_file(self.path(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// A value of `len` bytes for sequence number `seq`, cheap to make (so that the writer spends
/// its time in the cache, where the kills matter): `seq`, then a byte of `seq` repeated, then
/// `seq` again.
fn value_of(seq: u64, len: usize) -> Vec<u8> {
    let mut v = vec![seq as u8; len];
    v[..8].copy_from_slice(&seq.to_le_bytes());
    v[len - 8..].copy_from_slice(&seq.to_le_bytes());
    v
}

/// The sequence number of a value made by [`value_of`], if it is one, whole.
fn seq_of(v: &[u8]) -> Result<u64, String> {
    let bad = || {
        format!(
            "a damaged value of {} bytes: {:?}",
            v.len(),
            &v[..v.len().min(16)]
        )
    };
    if v.len() < 16 {
        return Err(bad());
    }
    let seq = u64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
    let end = v.len() - 8;
    let whole = v[end..] == seq.to_le_bytes() && v[8..end].iter().all(|&b| b == seq as u8);
    if whole { Ok(seq) } else { Err(bad()) }
}

/// Waits (at most 30 s) for `path` to exist.
fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A pipe on which a child reports the sequence numbers of the `set`s that returned.
struct Acks {
    r: RawFd,
    w: RawFd,
}

impl Acks {
    fn new() -> Acks {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
        Acks {
            r: fds[0],
            w: fds[1],
        }
    }

    /// Child: reports `seq` (8 bytes: one atomic pipe write).
    fn send(&self, seq: u64) -> Result<(), String> {
        let bytes = seq.to_le_bytes();
        loop {
            // SAFETY: the pointer and length describe the live `bytes`.
            let n = unsafe { libc::write(self.w, bytes.as_ptr().cast(), bytes.len()) };
            if n == 8 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if n < 0 && e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("ack write: {n} {e}"));
        }
    }

    /// Parent: the next report, waiting at most `timeout`.
    fn recv(&self, timeout: Duration) -> Option<u64> {
        let mut pfd = libc::pollfd {
            fd: self.r,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `pfd` is one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc <= 0 {
            return None;
        }
        let mut b = [0u8; 8];
        // SAFETY: `b` is live and writable for 8 bytes; reports are written whole (8 bytes,
        // under PIPE_BUF), so a readable pipe holds at least one.
        let n = unsafe { libc::read(self.r, b.as_mut_ptr().cast(), 8) };
        assert_eq!(n, 8, "ack read: {}", std::io::Error::last_os_error());
        Some(u64::from_le_bytes(b))
    }

    /// Parent, once the child is reaped: every report still in the pipe.
    fn drain(&self) -> Vec<u64> {
        std::iter::from_fn(|| self.recv(Duration::ZERO)).collect()
    }
}

impl Drop for Acks {
    fn drop(&mut self) {
        // SAFETY: both descriptors were returned by pipe2 and are owned by this value only.
        unsafe {
            libc::close(self.r);
            libc::close(self.w);
        }
    }
}

/// What the kill loop saw for one kind.
#[derive(Debug, Default)]
struct Tally {
    kills: usize,
    /// Checks of a key that found its last acknowledged value, or a later one.
    kept: usize,
    /// ... of which in the cache.
    in_cache: usize,
    /// Checks of a key whose acknowledged value was gone, with `dirty_lost` counting it.
    counted: usize,
    /// Acknowledged values gone with nothing counting them.
    uncounted: Vec<String>,
}

/// The writer of the kill loop: overwrites `keys` keys (one if 1) with values of `sizes`
/// bytes, in write-back mode, in a one-page cache.
#[derive(Clone, Copy)]
struct Writes {
    keys: u64,
    sizes: (usize, usize),
    /// Write with `update` (a read-modify-write) rather than `set`.
    update: bool,
}

fn key_of(index: u64) -> Vec<u8> {
    format!("key-{index}").into_bytes()
}

/// Forks a writer `kills` times and SIGKILLs it at a random instant; after each kill, checks
/// every key: its last acknowledged value (or a later one) is in the cache or in the backing
/// store, or its loss is counted in `dirty_lost`.
fn kill_loop(kind: Kind, writes: Writes, kills: usize, rng: &mut Rng) -> Tally {
    let dir = temp_dir();
    let store = Files::new(&dir.path().join("store"));
    let cache = kind
        .builder()
        .path(dir.path().join("cache"))
        .num_pages(1)
        .page_size(PAGE_SIZE)
        .backing(Files::new(&store.dir))
        .write_mode(WriteMode::Back)
        .lock_timeout(Duration::from_secs(60))
        .open()
        .expect("open");
    // The last acknowledged sequence number of each key (0: none yet).
    let mut acked = vec![0u64; writes.keys as usize];
    let mut tally = Tally::default();
    let mut children = Children::new();
    for round in 0..kills as u64 {
        let base = (round + 1) * 1_000_000;
        // Counted before the child starts: the parent's first use of the page after the kill
        // (whichever call it is, `stats` included) resets it if it must.
        let lost_before = cache.stats().expect("stats").dirty_lost;
        let acks = Acks::new();
        let child_seed = rng.next_u64();
        let writer = cache.clone();
        let pid = children.spawn(|| {
            let mut rng = Rng::new(child_seed);
            let deadline = Instant::now() + Duration::from_secs(120);
            for seq in base + 1..base + 100_000 {
                if Instant::now() > deadline {
                    break;
                }
                let index = rng.below(writes.keys);
                let value = value_of(seq, rng.range(writes.sizes.0, writes.sizes.1));
                if writes.update {
                    writer
                        .update(&key_of(index), |_| Update::Set(value))
                        .map_err(|e| format!("update {seq}: {e}"))?;
                } else {
                    writer
                        .set(&key_of(index), &value)
                        .map_err(|e| format!("set {seq}: {e}"))?;
                }
                acks.send(seq * 64 + index)?;
            }
            Err("the writer was never killed".into())
        });
        // Kill at a random instant after one to four acknowledged sets.
        let wanted = rng.range(1, 5);
        let mut reports = Vec::new();
        for _ in 0..wanted {
            match acks.recv(Duration::from_secs(60)) {
                Some(report) => reports.push(report),
                None => panic!("{kind:?}: the writer acknowledged nothing for 60 s"),
            }
        }
        let pause = rng.below(1_000);
        if pause > 0 {
            std::thread::sleep(Duration::from_micros(pause));
        }
        let exit = children.kill(pid);
        assert_eq!(
            exit,
            Exit::Signal(libc::SIGKILL),
            "{kind:?}: the writer ended before the kill (details on stderr)"
        );
        reports.extend(acks.drain());
        for report in reports {
            let (seq, index) = (report / 64, (report % 64) as usize);
            acked[index] = acked[index].max(seq);
        }
        tally.kills += 1;

        let mut gone = Vec::new();
        let mut found_now = Vec::new();
        for (index, &want) in acked.iter().enumerate() {
            let key = key_of(index as u64);
            let cached = cache
                .entry(&key)
                .expect("entry after the kill")
                .map(|e| seq_of(&e.value))
                .transpose()
                .unwrap_or_else(|e| panic!("{kind:?}: the cache holds a damaged value: {e}"));
            let stored = store
                .read(&key)
                .map(|v| seq_of(&v))
                .transpose()
                .unwrap_or_else(|e| panic!("{kind:?}: the store holds a damaged value: {e}"));
            // A live cache entry is what a `get` returns, so it must not be older than the
            // last acknowledged value, even if the store has that one.
            let found = cached.or(stored);
            if cached.is_some() {
                tally.in_cache += 1;
            }
            if found.unwrap_or(0) >= want {
                tally.kept += 1;
            } else {
                gone.push(format!(
                    "kill {round}, {}: acknowledged {want}, cache {cached:?}, store {stored:?}",
                    String::from_utf8_lossy(&key)
                ));
            }
            found_now.push(found.unwrap_or(0));
        }
        let lost = (cache.stats().expect("stats").dirty_lost - lost_before) as usize;
        if gone.len() <= lost {
            tally.counted += gone.len();
        } else {
            tally.uncounted.extend(gone);
        }
        // A loss, counted or not, is checked once: from now on the key holds what it holds.
        for (index, found) in found_now.into_iter().enumerate() {
            acked[index] = acked[index].min(found);
        }
        // The cache still works after the kill.
        cache
            .set(b"after", b"the kill")
            .expect("set after the kill");
    }
    tally
}

#[test]
fn a_killed_writer_loses_no_acknowledged_write_back_value() {
    let _serial = serial();
    let mut rng = Rng::new(seed(
        "a_killed_writer_loses_no_acknowledged_write_back_value",
    ));
    let kills = scaled(30, 300);
    // One key whose every overwrite must evict its old value: two do not fit the page.
    for (kind, update) in ALL_KINDS.iter().flat_map(|&k| [(k, false), (k, true)]) {
        let one_key = Writes {
            keys: 1,
            sizes: (38_000, 42_000),
            update,
        };
        let tally = kill_loop(kind, one_key, kills, &mut rng);
        eprintln!("{kind:?} (update: {update}): {tally:?}");
        assert_eq!(tally.kills, kills);
        assert!(
            tally.uncounted.is_empty(),
            "{kind:?}: acknowledged write-back values lost without being counted in \
             dirty_lost: {:#?}",
            tally.uncounted
        );
        // The point of the ordering: nothing is lost at all, not merely counted.
        assert_eq!(
            tally.counted, 0,
            "{kind:?}: acknowledged values lost (counted): {tally:?}"
        );
    }
}

/// As above, with several keys sharing the page, so that stores evict other keys' dirty
/// values. A native page whose writer died with its busy marker set is reset, and its dirty
/// entries are lost: each must be counted.
#[test]
fn a_killed_writer_of_many_keys_loses_nothing_uncounted() {
    let _serial = serial();
    let mut rng = Rng::new(seed("a_killed_writer_of_many_keys_loses_nothing_uncounted"));
    let kills = scaled(30, 300);
    for (kind, update) in ALL_KINDS.iter().flat_map(|&k| [(k, false), (k, true)]) {
        let many = Writes {
            keys: 6,
            sizes: (4_000, 16_000),
            update,
        };
        let tally = kill_loop(kind, many, kills, &mut rng);
        eprintln!("{kind:?} (update: {update}): {tally:?}");
        assert!(
            tally.uncounted.is_empty(),
            "{kind:?}: acknowledged write-back values lost without being counted in \
             dirty_lost: {:#?}",
            tally.uncounted
        );
    }
}

/// A writer in one process is inside a slow `store`; a reader in another process reads keys
/// of the same page (a miss read through, a miss the store lacks, a hit) and gets its answers
/// while that store is still running.
#[test]
fn a_reader_does_not_wait_behind_another_process_s_slow_store() {
    let _serial = serial();
    for kind in ALL_KINDS {
        let dir = temp_dir();
        let store_dir = dir.path().join("store");
        let store = Files::slow(&store_dir, b"slow");
        store.store(b"other", b"from the store", None).unwrap();
        let cache = kind
            .builder()
            .path(dir.path().join("cache"))
            .num_pages(1)
            .page_size(PAGE_SIZE)
            .backing(store)
            .write_mode(WriteMode::Through)
            .open()
            .expect("open");
        cache.set(b"hit", b"cached").unwrap();
        let files = Files::new(&store_dir);
        let mut children = Children::new();
        let writer = cache.clone();
        let pid = children.spawn(move || {
            writer
                .set(b"slow", b"slowly")
                .map(drop)
                .map_err(|e| format!("slow set: {e}"))
        });
        wait_for(&files.flag("entered"));

        let started = Instant::now();
        let other = cache.get(b"other");
        let absent = cache.get(b"absent");
        let hit = cache.get(b"hit");
        let took = started.elapsed();
        let still_inside = !files.flag("returned").exists();
        std::fs::write(files.flag("release"), b"").unwrap();
        assert_eq!(
            children.wait(pid),
            Exit::Code(0),
            "{kind:?}: the writer failed"
        );

        assert_eq!(other.unwrap(), Some(b"from the store".to_vec()), "{kind:?}");
        assert_eq!(absent.unwrap(), None, "{kind:?}");
        assert_eq!(hit.unwrap(), Some(b"cached".to_vec()), "{kind:?}");
        assert!(
            still_inside,
            "{kind:?}: the reader waited until the slow store returned ({took:?})"
        );
        // The writer's value arrived; the reader's misses read through as usual again.
        assert_eq!(cache.get(b"slow").unwrap(), Some(b"slowly".to_vec()));
        assert_eq!(
            cache.get(b"other").unwrap(),
            Some(b"from the store".to_vec())
        );
        assert!(
            cache.contains_key(b"other").unwrap(),
            "{kind:?}: cached now"
        );
    }
}

/// A child holding a read lock from byte `from` of the file to 4096 bytes past its end (where
/// fcntl write-back locks are taken).
fn hold_read_lock(
    children: &mut Children,
    path: &Path,
    from: u64,
    held: &common::Pipe,
    go: &common::Pipe,
) {
    let path = path.to_path_buf();
    let len = std::fs::metadata(&path).unwrap().len();
    children.spawn(move || {
        let file = std::fs::File::open(&path).map_err(|e| format!("open: {e}"))?;
        // SAFETY: `flock` is plain data; zeroed is a valid value for every field.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_RDLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = from as libc::off_t;
        fl.l_len = (len + 4096 - from) as libc::off_t;
        // SAFETY: the descriptor is open and `fl` is a valid flock.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &mut fl) };
        if rc != 0 {
            return Err(format!("F_RDLCK: {}", std::io::Error::last_os_error()));
        }
        held.release(1);
        go.wait();
        drop(file);
        Ok(())
    });
}

#[test]
fn a_process_that_may_only_read_cannot_block_a_robust_file_s_writers() {
    let _serial = serial();
    for kind in [ROBUST, NATIVE, FASTMMAP] {
        let dir = temp_dir();
        let store = Files::new(&dir.path().join("store"));
        let path = dir.path().join("cache");
        let cache = kind
            .builder()
            .path(&path)
            .num_pages(2)
            .page_size(PAGE_SIZE)
            .backing(Files::new(&store.dir))
            .write_mode(WriteMode::Through)
            .lock_timeout(Duration::from_millis(300))
            .open()
            .expect("open");
        store.store(b"stored", b"in the store", None).unwrap();
        let (held, go) = (common::Pipe::new(), common::Pipe::new());
        let mut children = Children::new();
        // A robust file: every byte (its locks are not fcntl locks). An fcntl file: the bytes
        // past its end only, so that its page locks stay free.
        let from = match kind.lock {
            LockKind::Robust => 0,
            _ => std::fs::metadata(&path).unwrap().len(),
        };
        hold_read_lock(&mut children, &path, from, &held, &go);
        assert!(
            held.wait_timeout(Duration::from_secs(30)),
            "{kind:?}: no lock"
        );

        let set = cache.set(b"k", b"v");
        // A reader's miss never waits for a write-back lock, held or not.
        assert_eq!(
            cache.get(b"stored").unwrap(),
            Some(b"in the store".to_vec()),
            "{kind:?}"
        );
        if kind.lock == LockKind::Robust {
            set.unwrap_or_else(|e| panic!("{kind:?}: a reader blocked the write: {e}"));
            assert_eq!(cache.get(b"k").unwrap(), Some(b"v".to_vec()));
        } else {
            // fcntl locks need only read access: the reader blocks the writer, which gives up
            // after its lock timeout and says which lock it waited for.
            match set {
                Err(Error::LockTimeout {
                    lock: LockRole::WriteBack,
                    timeout,
                    ..
                }) => assert_eq!(timeout, Duration::from_millis(300)),
                other => panic!("{kind:?}: expected a write-back lock timeout, got {other:?}"),
            }
            let shown = cache.set(b"k", b"v").unwrap_err().to_string();
            assert!(shown.contains("write-back lock of page"), "{shown}");
        }
        go.release(1);
        children.wait_all_ok();
        cache.set(b"k", b"v2").unwrap();
        assert_eq!(store.read(b"k"), Some(b"v2".to_vec()), "{kind:?}");
    }
}

/// A writer in another process holds a page's write-back lock (it is inside a slow `store`):
/// a write of the same page gives up after its lock timeout, naming the write-back lock and
/// the page; once that writer is killed, the lock is free again (robust: taken over from the
/// dead owner; fcntl: dropped by the kernel).
#[test]
fn a_write_back_lock_timeout_names_the_lock_and_a_dead_owner_frees_it() {
    let _serial = serial();
    for kind in ALL_KINDS {
        let dir = temp_dir();
        let store_dir = dir.path().join("store");
        let patience = Duration::from_millis(200);
        let cache = kind
            .builder()
            .path(dir.path().join("cache"))
            .num_pages(1)
            .page_size(PAGE_SIZE)
            .backing(Files::slow(&store_dir, b"slow"))
            .write_mode(WriteMode::Through)
            .lock_timeout(patience)
            .open()
            .expect("open");
        let files = Files::new(&store_dir);
        let mut children = Children::new();
        let writer = cache.clone();
        let pid = children.spawn(move || {
            writer
                .set(b"slow", b"never acknowledged")
                .map(drop)
                .map_err(|e| format!("slow set: {e}"))
        });
        wait_for(&files.flag("entered"));

        match cache.set(b"k", b"v") {
            Err(Error::LockTimeout {
                page: 0,
                lock: LockRole::WriteBack,
                timeout,
                ..
            }) => assert_eq!(timeout, patience, "{kind:?}"),
            other => panic!("{kind:?}: expected a write-back lock timeout, got {other:?}"),
        }
        // Only the write-back lock is held: the page itself is free for reads and for
        // write-back stores, which take no write-back lock unless they must evict.
        assert_eq!(cache.get(b"k").unwrap(), None, "{kind:?}");

        assert_eq!(children.kill(pid), Exit::Signal(libc::SIGKILL));
        cache
            .set(b"k", b"v")
            .unwrap_or_else(|e| panic!("{kind:?}: after the kill: {e}"));
        assert_eq!(files.read(b"k"), Some(b"v".to_vec()), "{kind:?}");
        assert_eq!(cache.get(b"k").unwrap(), Some(b"v".to_vec()), "{kind:?}");
        assert_eq!(
            files.read(b"slow"),
            None,
            "{kind:?}: the killed store never stored"
        );
    }
}

/// A page lock timeout names the page lock.
#[test]
fn a_page_lock_timeout_names_the_page_lock() {
    let _serial = serial();
    for kind in ALL_KINDS {
        let dir = temp_dir();
        let patience = Duration::from_millis(100);
        let cache = kind
            .builder()
            .path(dir.path().join("cache"))
            .num_pages(1)
            .lock_timeout(patience)
            .open()
            .expect("open");
        cache.set(b"k", b"v").unwrap();
        let (holding, go) = (common::Pipe::new(), common::Pipe::new());
        let mut children = Children::new();
        let holder = cache.clone();
        let (h, g) = (&holding, &go);
        children.spawn(move || {
            holder
                .update(b"k", |_| {
                    h.release(1);
                    g.wait();
                    Update::Keep
                })
                .map(drop)
                .map_err(|e| format!("update: {e}"))
        });
        assert!(holding.wait_timeout(Duration::from_secs(30)), "{kind:?}");
        let err = cache.set(b"k", b"w").unwrap_err();
        go.release(1);
        children.wait_all_ok();
        match &err {
            Error::LockTimeout {
                page: 0,
                lock: LockRole::Page,
                ..
            } => {}
            other => panic!("{kind:?}: expected a page lock timeout, got {other:?}"),
        }
        assert!(err.to_string().contains("page lock of page 0"), "{err}");
    }
}

/// An `update` whose store must evict dirty values writes them back first, with the page
/// unlocked meanwhile. A write-back `set` of the same key that lands then (it needs to evict
/// nothing, so it takes no write-back lock) wins: the update counts as made just before it,
/// returns its own value and stores nothing over the newer one.
#[test]
fn an_update_overtaken_while_it_writes_back_its_victims_does_not_overwrite_the_newer_value() {
    let _serial = serial();
    for kind in ALL_KINDS {
        let dir = temp_dir();
        let store_dir = dir.path().join("store");
        let cache = kind
            .builder()
            .path(dir.path().join("cache"))
            .num_pages(1)
            .page_size(PAGE_SIZE)
            .backing(Files::slow(&store_dir, b"victim-0"))
            .write_mode(WriteMode::Back)
            .lock_timeout(Duration::from_secs(60))
            .open()
            .expect("open");
        // Five dirty values fill most of the page; the oldest one's write-back is slow.
        for i in 0..5 {
            let key = format!("victim-{i}");
            cache.set(key.as_bytes(), &value_of(i, 10_000)).unwrap();
        }
        cache.set(b"k", b"v0").unwrap();
        let files = Files::new(&store_dir);
        let mut children = Children::new();
        let updater = cache.clone();
        let big = value_of(99, 20_000);
        let pid = children.spawn(move || {
            let got = updater
                .update(b"k", |old| {
                    assert_eq!(old, Some(&b"v0"[..]));
                    Update::Set(big.clone())
                })
                .map_err(|e| format!("update: {e}"))?;
            if got != Some(big) {
                return Err(format!("update returned {got:?}"));
            }
            Ok(())
        });
        wait_for(&files.flag("entered"));
        // The updater is writing back `victim-0`, with the page unlocked.
        cache.set(b"k", b"v2").unwrap();
        std::fs::write(files.flag("release"), b"").unwrap();
        assert_eq!(
            children.wait(pid),
            Exit::Code(0),
            "{kind:?}: the updater failed"
        );

        assert_eq!(cache.get(b"k").unwrap(), Some(b"v2".to_vec()), "{kind:?}");
        assert_eq!(
            files.read(b"victim-0").map(|v| seq_of(&v)),
            Some(Ok(0)),
            "{kind:?}: the victim was written back"
        );
        assert_eq!(cache.stats().unwrap().dirty_lost, 0, "{kind:?}");
    }
}

/// The rounds a store that must evict dirty entries makes before the one that writes them back
/// holding the page (`ROUNDS` in `src/cache/write_back.rs`).
const ROUNDS: usize = 4;

/// A value (8 KB) of the victim key, and one of the writer's key (58 KB) that cannot share the
/// 64 KB page with it: storing it must evict the victim.
const VICTIM_LEN: usize = 8_000;
const BIG_LEN: usize = 58_000;

/// A writer process stores a big value that must evict a dirty victim. Each time it unlocks to
/// write the victim back, this process overwrites the victim (a new dirty value, acknowledged
/// here), so the writer finds it dirty in the way again; in the last round it writes the
/// victim back holding the page (a reader of the page times out meanwhile), and is SIGKILLed
/// inside that call of the store. Every acknowledged value of the victim is still in the cache
/// or the store, and nothing is counted lost.
#[test]
fn a_writer_killed_in_its_last_round_of_write_backs_loses_nothing() {
    let _serial = serial();
    for (kind, update) in ALL_KINDS.iter().flat_map(|&k| [(k, false), (k, true)]) {
        let dir = temp_dir();
        let store_dir = dir.path().join("store");
        let path = dir.path().join("cache");
        let cache = kind
            .builder()
            .path(&path)
            .num_pages(1)
            .page_size(PAGE_SIZE)
            .backing(Files::gated(&store_dir, b"victim"))
            .write_mode(WriteMode::Back)
            .lock_timeout(Duration::from_secs(60))
            .open()
            .expect("open");
        let files = Files::new(&store_dir);
        cache.set(b"victim", &value_of(1, VICTIM_LEN)).unwrap();
        let mut acked = 1;

        let mut children = Children::new();
        let writer = cache.clone();
        let pid = children.spawn(move || {
            let big = value_of(99, BIG_LEN);
            if update {
                writer
                    .update(b"big", |_| Update::Set(big))
                    .map(drop)
                    .map_err(|e| format!("update: {e}"))?;
            } else {
                writer.set(b"big", &big).map_err(|e| format!("set: {e}"))?;
            }
            Err("the writer stored without being killed".into())
        });
        // The writer's unlocked rounds: each time, dirty the victim again meanwhile.
        for n in 1..ROUNDS {
            wait_for(&files.flag(&format!("entered-{n}")));
            acked += 1;
            cache
                .set(b"victim", &value_of(acked, VICTIM_LEN))
                .unwrap_or_else(|e| panic!("{kind:?}: set during round {n}: {e}"));
            std::fs::write(files.flag(&format!("release-{n}")), b"").unwrap();
        }
        // The last round: the writer is inside the store, holding the page.
        wait_for(&files.flag(&format!("entered-{ROUNDS}")));
        let patient = kind
            .builder()
            .path(&path)
            .num_pages(1)
            .page_size(PAGE_SIZE)
            .lock_timeout(Duration::from_millis(200))
            .open()
            .expect("open a second handle");
        let waited = patient.get(b"victim");
        let exit = children.kill(pid);
        assert_eq!(
            exit,
            Exit::Signal(libc::SIGKILL),
            "{kind:?} (update: {update}): the writer ended before the kill (details on stderr)"
        );

        let cached = cache
            .entry(b"victim")
            .expect("entry after the kill")
            .map(|e| seq_of(&e.value).expect("a whole value"));
        let stored = files
            .read(b"victim")
            .map(|v| seq_of(&v).expect("a whole value"));
        assert!(
            cached.or(stored).unwrap_or(0) >= acked,
            "{kind:?} (update: {update}): acknowledged {acked}, cache {cached:?}, store \
             {stored:?}"
        );
        assert_eq!(cache.stats().unwrap().dirty_lost, 0, "{kind:?}");
        match waited {
            Err(Error::LockTimeout {
                page: 0,
                lock: LockRole::Page,
                ..
            }) => {}
            other => panic!(
                "{kind:?} (update: {update}): a reader during the last round's write-back \
                 should wait for the page lock and time out, got {other:?}"
            ),
        }
        // The cache works on: the big value goes in, the victim written back first.
        cache.set(b"big", &value_of(100, BIG_LEN)).unwrap();
        assert_eq!(
            files.read(b"victim").map(|v| seq_of(&v).unwrap()),
            Some(acked),
            "{kind:?}"
        );
    }
}

/// A backing store whose `store` uses its own cache: while the page is unlocked (the first
/// rounds) its writes go in; in the last round, which holds the page, it gets `Reentrant` at
/// once, not a deadlock, and the store goes on.
#[test]
fn a_store_callback_using_the_cache_in_the_last_round_gets_reentrant() {
    struct Dirtying {
        files: Files,
        cache: Arc<OnceLock<fastmmap::Cache>>,
        results: std::sync::Mutex<Vec<Result<(), String>>>,
    }
    impl Backing for Dirtying {
        fn load(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackingError> {
            self.files.load(key)
        }
        fn store(
            &self,
            key: &[u8],
            value: &[u8],
            at: Option<SystemTime>,
        ) -> Result<(), BackingError> {
            if key == b"victim" {
                let cache = self.cache.get().expect("the cache is set");
                let n = self.results.lock().unwrap().len() as u64;
                let result = match cache.set(b"victim", &value_of(n + 2, VICTIM_LEN)) {
                    Ok(_) => Ok(()),
                    Err(e @ Error::Reentrant { .. }) => Err(e.to_string()),
                    Err(e) => panic!("the callback's set failed otherwise: {e}"),
                };
                self.results.lock().unwrap().push(result);
            }
            self.files.store(key, value, at)
        }
        fn delete(&self, key: &[u8]) -> Result<(), BackingError> {
            self.files.delete(key)
        }
    }

    let _serial = serial();
    for kind in ALL_KINDS {
        let dir = temp_dir();
        let store_dir = dir.path().join("store");
        let slot = Arc::new(OnceLock::new());
        let backing = Arc::new(Dirtying {
            files: Files::new(&store_dir),
            cache: slot.clone(),
            results: std::sync::Mutex::new(Vec::new()),
        });
        let cache = kind
            .builder()
            .path(dir.path().join("cache"))
            .num_pages(1)
            .page_size(PAGE_SIZE)
            .backing(SharedBacking(backing.clone()))
            .write_mode(WriteMode::Back)
            .lock_timeout(Duration::from_secs(60))
            .open()
            .expect("open");
        assert!(slot.set(cache.clone()).is_ok());
        cache.set(b"victim", &value_of(1, VICTIM_LEN)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = cache.clone();
        std::thread::spawn(move || {
            let _ = tx.send(writer.set(b"big", &value_of(99, BIG_LEN)).map(drop));
        });
        let done = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{kind:?}: the set did not return within 60 s"));
        done.unwrap_or_else(|e| panic!("{kind:?}: set: {e}"));
        let results = std::mem::take(&mut *backing.results.lock().unwrap());
        assert_eq!(results.len(), ROUNDS, "{kind:?}: {results:?}");
        assert!(
            results[..ROUNDS - 1].iter().all(Result::is_ok),
            "{kind:?}: {results:?}"
        );
        assert!(results[ROUNDS - 1].is_err(), "{kind:?}: {results:?}");
        // The last value the callback set was written back before it left the page.
        assert_eq!(
            Files::new(&store_dir)
                .read(b"victim")
                .map(|v| seq_of(&v).unwrap()),
            Some(ROUNDS as u64),
            "{kind:?}"
        );
        assert_eq!(
            cache.get(b"victim").unwrap(),
            Some(value_of(ROUNDS as u64, VICTIM_LEN))
        );
        assert_eq!(cache.stats().unwrap().dirty_lost, 0, "{kind:?}");
    }
}

/// A backing store shared with the test (through an `Arc`).
struct SharedBacking<B>(Arc<B>);

impl<B: Backing> Backing for SharedBacking<B> {
    fn load(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackingError> {
        self.0.load(key)
    }
    fn store(&self, key: &[u8], value: &[u8], at: Option<SystemTime>) -> Result<(), BackingError> {
        self.0.store(key, value, at)
    }
    fn delete(&self, key: &[u8]) -> Result<(), BackingError> {
        self.0.delete(key)
    }
}
