//! Helpers shared by the multi-process, crash and corruption tests: forking children that
//! run a closure, reaping them, pipe gates, a self-checking value encoding, a seeded random
//! number generator, temporary directories and the file geometry of both layouts.
//!
//! Fork discipline: every test of a file takes [`serial`] first, so no other test thread of
//! the same binary is inside the cache (or holds any lock) when a test forks. A child runs its
//! closure under `catch_unwind` and leaves with `libc::_exit`, never returning into the test
//! harness; it reports failures through its exit status and raw writes to fd 2 (the harness
//! captures `eprintln!` in memory, which a child cannot hand back).

#![allow(dead_code)] // each test binary uses its own subset

use std::fs::{File, OpenOptions};
use std::os::fd::RawFd;
use std::os::unix::fs::FileExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fastmmap::{Cache, CacheBuilder, Layout, LockKind};

// ---------------------------------------------------------------------------------------------
// Serialisation and modes

/// Serialises the tests of one test binary (each binary compiles its own copy of this static).
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `FASTMMAP_STRESS=long` asks for the long stress runs; the default is the short CI mode.
pub fn long_mode() -> bool {
    std::env::var("FASTMMAP_STRESS").is_ok_and(|v| v == "long")
}

/// `short` in CI mode, `long` under `FASTMMAP_STRESS=long`.
pub fn scaled(short: usize, long: usize) -> usize {
    if long_mode() { long } else { short }
}

/// Whether the `FASTMMAP_REQUIRE_*` variable `var` is set to `1` (CI sets them): a test
/// whose component is missing then fails instead of skipping. Any other value, or none, asks
/// for nothing.
pub fn required(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| v == "1")
}

/// Whether a root-only check can run here (this process is root: it may mount a tmpfs, chown
/// a file or run a command as another user). Without root, says that `test` is skipped, or
/// fails under `FASTMMAP_REQUIRE_ROOT=1`.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        !required("FASTMMAP_REQUIRE_ROOT"),
        "{test}: needs root, and FASTMMAP_REQUIRE_ROOT=1"
    );
    eprintln!(
        "SKIPPED {test}: needs root (to mount a tmpfs, chown a file or run as another user); \
         FASTMMAP_REQUIRE_ROOT=1 makes this a failure"
    );
    false
}

/// The seed for a randomised test: `FASTMMAP_SEED` if set, else from the clock. Printed so a
/// failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("FASTMMAP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
        });
    eprintln!("{test}: FASTMMAP_SEED={seed}");
    seed
}

/// A temporary directory, on tmpfs when `/dev/shm` is usable (as a real deployment would be).
pub fn temp_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new()
            .prefix("fastmmap-test-")
            .tempdir_in(shm)
    {
        return dir;
    }
    tempfile::Builder::new()
        .prefix("fastmmap-test-")
        .tempdir()
        .expect("temp dir")
}

// ---------------------------------------------------------------------------------------------
// Children

/// What a child's closure returns: `Err` carries a message for the parent's terminal.
pub type ChildResult = Result<(), String>;

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `_exit(code)`.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

/// Exit status of a child whose closure returned `Err`.
pub const CHILD_FAILED: i32 = 1;
/// Exit status of a child whose closure panicked.
pub const CHILD_PANICKED: i32 = 2;

/// Writes `msg` straight to fd 2, bypassing the harness's output capture.
pub fn raw_eprint(msg: &str) {
    let bytes = msg.as_bytes();
    let mut done = 0;
    while done < bytes.len() {
        // SAFETY: the pointer and length describe the live, initialised `bytes[done..]`.
        let n = unsafe { libc::write(2, bytes[done..].as_ptr().cast(), bytes.len() - done) };
        if n <= 0 {
            break;
        }
        done += n as usize;
    }
}

/// Forks a child that runs `f` and leaves with `_exit`: 0 when `f` returns `Ok`,
/// [`CHILD_FAILED`] when it returns `Err`, [`CHILD_PANICKED`] when it panics. Returns the
/// child's pid to the parent. Prefer [`Children::spawn`], which also reaps on failure.
pub fn fork_child(f: impl FnOnce() -> ChildResult) -> libc::pid_t {
    // SAFETY: fork has no memory-safety preconditions. The tests of a binary are serialised
    // (see `serial`), so no other test thread holds a lock the child could need; glibc makes
    // malloc usable in the child. The child only runs `f` and then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid != 0 {
        return pid;
    }
    // The harness captures the default hook's output in memory; report panics (with their
    // location) straight to fd 2 instead.
    std::panic::set_hook(Box::new(|info| {
        raw_eprint(&format!("child {} panicked: {info}\n", std::process::id()));
        if std::env::var_os("RUST_BACKTRACE").is_some() {
            raw_eprint(&format!("{}\n", std::backtrace::Backtrace::force_capture()));
        }
    }));
    let code = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(msg)) => {
            raw_eprint(&format!("child {}: {msg}\n", std::process::id()));
            CHILD_FAILED
        }
        Err(_) => CHILD_PANICKED,
    };
    // SAFETY: `_exit` ends the child at once, without running destructors or atexit handlers
    // that belong to the parent's copy of the state (the temp dir, the harness).
    unsafe { libc::_exit(code) }
}

/// Waits for `pid` (retrying on EINTR) and decodes its status.
pub fn wait_pid(pid: libc::pid_t) -> Exit {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer; `pid` is a child of this process.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::Interrupted,
            "waitpid({pid}) failed: {err}"
        );
    }
    if libc::WIFEXITED(status) {
        Exit::Code(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        panic!("unexpected wait status {status:#x} for {pid}")
    }
}

/// `waitpid(WNOHANG)`: `None` while the child runs.
pub fn try_wait_pid(pid: libc::pid_t) -> Option<Exit> {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer; `pid` is a child of this process.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if rc == 0 || rc == -1 {
        return None;
    }
    if libc::WIFEXITED(status) {
        Some(Exit::Code(libc::WEXITSTATUS(status)))
    } else {
        Some(Exit::Signal(libc::WTERMSIG(status)))
    }
}

/// Sends SIGKILL to one child by pid.
pub fn kill9(pid: libc::pid_t) {
    // SAFETY: kill has no memory-safety preconditions; `pid` is a child we forked and have
    // not reaped, so the pid cannot have been reused.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// The children of one test. Dropping it (for instance when an assertion fails) SIGKILLs and
/// reaps every child not yet reaped, so no child outlives its test.
#[derive(Default)]
pub struct Children {
    pids: Vec<libc::pid_t>,
}

impl Children {
    pub fn new() -> Children {
        Children::default()
    }

    /// Forks a child running `f` (see [`fork_child`]).
    pub fn spawn(&mut self, f: impl FnOnce() -> ChildResult) -> libc::pid_t {
        let pid = fork_child(f);
        self.pids.push(pid);
        pid
    }

    /// Waits for one child and forgets it.
    pub fn wait(&mut self, pid: libc::pid_t) -> Exit {
        let exit = wait_pid(pid);
        self.pids.retain(|&p| p != pid);
        exit
    }

    /// SIGKILLs one child and reaps it.
    pub fn kill(&mut self, pid: libc::pid_t) -> Exit {
        kill9(pid);
        self.wait(pid)
    }

    /// Waits for every child and asserts each exited with status 0.
    pub fn wait_all_ok(&mut self) {
        let pids = std::mem::take(&mut self.pids);
        let exits: Vec<(libc::pid_t, Exit)> =
            pids.iter().map(|&pid| (pid, wait_pid(pid))).collect();
        for (pid, exit) in exits {
            assert_eq!(
                exit,
                Exit::Code(0),
                "child {pid} did not exit cleanly (details on stderr)"
            );
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for &pid in &self.pids {
            kill9(pid);
        }
        for &pid in &self.pids {
            let _ = wait_pid(pid);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pipes

/// A pipe used as a one-way signal or byte channel between parent and children: one side
/// `send`s bytes, the other `recv`s them. Each `wait` consumes exactly one `release`d byte, so
/// N waiters are released by `release(N)` regardless of which processes keep which ends open.
pub struct Pipe {
    r: RawFd,
    w: RawFd,
}

impl Pipe {
    pub fn new() -> Pipe {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
        Pipe {
            r: fds[0],
            w: fds[1],
        }
    }

    /// Writes all of `bytes` (pipes write up to PIPE_BUF bytes atomically).
    pub fn send(&self, bytes: &[u8]) {
        let mut done = 0;
        while done < bytes.len() {
            // SAFETY: the pointer and length describe the live, initialised `bytes[done..]`.
            let n =
                unsafe { libc::write(self.w, bytes[done..].as_ptr().cast(), bytes.len() - done) };
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            assert!(n > 0, "pipe write: {}", std::io::Error::last_os_error());
            done += n as usize;
        }
    }

    /// Reads exactly `buf.len()` bytes, blocking.
    pub fn recv(&self, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            // SAFETY: the pointer and length describe the live, writable `buf[done..]`.
            let n =
                unsafe { libc::read(self.r, buf[done..].as_mut_ptr().cast(), buf.len() - done) };
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            assert!(n > 0, "pipe read: {}", std::io::Error::last_os_error());
            done += n as usize;
        }
    }

    /// Lets `n` waiters through.
    pub fn release(&self, n: usize) {
        self.send(&vec![1u8; n]);
    }

    /// Blocks until one byte arrives.
    pub fn wait(&self) {
        let mut b = [0u8; 1];
        self.recv(&mut b);
    }

    /// Waits for one byte at most `timeout`; false on timeout.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.r,
            events: libc::POLLIN,
            revents: 0,
        };
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // SAFETY: `pfd` is one valid pollfd.
            let rc =
                unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
            if rc > 0 {
                self.wait();
                return true;
            }
            if rc == 0 {
                return false;
            }
            assert_eq!(
                std::io::Error::last_os_error().kind(),
                std::io::ErrorKind::Interrupted
            );
        }
    }

    pub fn send_u64(&self, v: u64) {
        self.send(&v.to_le_bytes());
    }

    pub fn recv_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        self.recv(&mut b);
        u64::from_le_bytes(b)
    }
}

impl Default for Pipe {
    fn default() -> Self {
        Pipe::new()
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // SAFETY: both descriptors were returned by pipe2 and are owned by this value only.
        unsafe {
            libc::close(self.r);
            libc::close(self.w);
        }
    }
}

/// Spawns a thread in `scope` that takes `key`'s page lock inside `cache.update` and holds it
/// until the returned sender says go, then ends the update with what `then` answers; returns
/// once the thread holds the lock.
pub fn hold_in_thread<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    cache: &'scope Cache,
    key: &'static [u8],
    then: impl FnOnce(Option<&[u8]>) -> fastmmap::Update + Send + 'scope,
) -> std::sync::mpsc::Sender<()> {
    let (holding_tx, holding_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    scope.spawn(move || {
        cache
            .update(key, |old| {
                holding_tx.send(()).expect("send");
                go_rx.recv().expect("recv");
                then(old)
            })
            .expect("update");
    });
    holding_rx.recv().expect("the holder started");
    go_tx
}

// ---------------------------------------------------------------------------------------------
// Random numbers

/// splitmix64: small, seedable, good enough for test data.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo) as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Self-checking values

const VALUE_MAGIC: &[u8; 4] = b"FMv1";

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The smallest value [`make_value`] produces for `key`.
pub fn min_value_len(key: &[u8]) -> usize {
    VALUE_MAGIC.len() + 2 + key.len() + 8 + 8
}

/// A value that names its key and carries a checksum, so that a reader can tell it was stored
/// for that key and arrived intact: `magic | key_len u16 | key | seq u64 | filler | fnv64`.
/// `len` is raised to [`min_value_len`] if shorter.
pub fn make_value(key: &[u8], seq: u64, len: usize) -> Vec<u8> {
    let len = len.max(min_value_len(key));
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(VALUE_MAGIC);
    v.extend_from_slice(&(key.len() as u16).to_le_bytes());
    v.extend_from_slice(key);
    v.extend_from_slice(&seq.to_le_bytes());
    let mut filler = Rng::new(fnv1a(key) ^ seq.rotate_left(17));
    let mut fill = vec![0u8; len - v.len() - 8];
    filler.fill(&mut fill);
    v.extend_from_slice(&fill);
    let sum = fnv1a(&v);
    v.extend_from_slice(&sum.to_le_bytes());
    v
}

/// Checks a value made by [`make_value`] for `key`; returns its `seq`.
pub fn check_value(key: &[u8], v: &[u8]) -> Result<u64, String> {
    let show = |why: &str| {
        format!(
            "bad value for key {:?} ({why}): {} bytes, starts {:?}",
            String::from_utf8_lossy(key),
            v.len(),
            &v[..v.len().min(24)]
        )
    };
    if v.len() < min_value_len(key) {
        return Err(show("too short"));
    }
    let (body, sum) = v.split_at(v.len() - 8);
    if u64::from_le_bytes(sum.try_into().expect("8 bytes")) != fnv1a(body) {
        return Err(show("checksum mismatch"));
    }
    if &body[..4] != VALUE_MAGIC {
        return Err(show("bad magic"));
    }
    let klen = usize::from(u16::from_le_bytes([body[4], body[5]]));
    if klen != key.len() || &body[6..6 + klen] != key {
        return Err(show("stored for another key"));
    }
    let seq = u64::from_le_bytes(body[6 + klen..14 + klen].try_into().expect("8 bytes"));
    Ok(seq)
}

/// An 8-byte little-endian counter value, or an error naming what was found instead.
pub fn counter_value(v: Option<&[u8]>) -> Result<u64, String> {
    match v {
        None => Ok(0),
        Some(b) => b.try_into().map(u64::from_le_bytes).map_err(|_| {
            format!(
                "counter holds {} bytes, not 8: {:?}",
                b.len(),
                &b[..b.len().min(16)]
            )
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// File geometry (copied from src/store/header.rs and src/page/format.rs, so that the tests
// check the documented format rather than reuse the crate's own constants)

/// `PAGE_TABLE_OFFSET` in src/store/header.rs: the native page table starts here.
pub const NATIVE_PAGE_TABLE_OFFSET: u64 = 128;
/// `ROW_SIZE`: one 64-byte row per page.
pub const NATIVE_ROW_SIZE: u64 = 64;
/// `ROW_BUSY_OFFSET`: the busy marker (u32) inside a row.
pub const NATIVE_ROW_BUSY_OFFSET: u64 = 48;
/// `ROW_RESETS_OFFSET`: the reset counter (u32) inside a row.
pub const NATIVE_ROW_RESETS_OFFSET: u64 = 52;
/// `HEADER_ALIGN`: pages start on a 4096-byte boundary after the native header.
pub const NATIVE_HEADER_ALIGN: u64 = 4096;
/// `CHECKSUM_OFFSET`: xxh3-64 of bytes `0..56` is stored at 56.
pub const NATIVE_CHECKSUM_OFFSET: usize = 56;

/// Page header size and magic (src/page/format.rs).
pub const PAGE_HEADER_SIZE: usize = 32;
pub const PAGE_MAGIC: u32 = 0x92f7_e3b1;
/// `PAGE_MAGIC_TAGGED`: a native page whose slot words carry tags (docs/format.md §3.2).
pub const PAGE_MAGIC_TAGGED: u32 = 0x5a3c_96e7;

/// Whether `magic` is a page's: Cache::FastMmap's, or a tagged native page's.
pub fn is_page_magic(magic: u32) -> bool {
    magic == PAGE_MAGIC || magic == PAGE_MAGIC_TAGGED
}

/// The offset a slot word of the page image `page` holds: without its tag in a tagged page
/// (the bits above those an offset in the page needs).
pub fn slot_offset(page: &[u8], word: u32) -> usize {
    let tagged = page
        .get(..4)
        .map(|m| u32::from_ne_bytes(m.try_into().unwrap()))
        == Some(PAGE_MAGIC_TAGGED);
    let bits = usize::BITS - (page.len().max(1) - 1).leading_zeros();
    let mask = if tagged && bits < 32 {
        (1u32 << bits) - 1
    } else {
        u32::MAX
    };
    (word & mask) as usize
}
/// Entry header: six u32 (last_access, expire_on, slot_hash, flags, key_len, val_len).
pub const ENTRY_HEADER_SIZE: usize = 24;

/// `WRITE_BACK_ROW_SIZE`: the write-back lock table after the page table, 64 bytes a page.
pub const NATIVE_WRITE_BACK_ROW_SIZE: u64 = 64;

/// `OVERFLOW_BLOCK_SIZE`: bytes per block of the overflow area.
pub const NATIVE_OVERFLOW_BLOCK_SIZE: u64 = 4096;

/// Bytes of the overflow area a native file gets unless `overflow_size` says otherwise: an
/// eighth of its pages' bytes, rounded up to whole blocks.
pub fn native_default_area(num_pages: u32, page_size: u32) -> u64 {
    (u64::from(num_pages) * u64::from(page_size) / 8).div_ceil(NATIVE_OVERFLOW_BLOCK_SIZE)
        * NATIVE_OVERFLOW_BLOCK_SIZE
}

/// `header_size(num_pages, overflow_blocks)` of src/store/header.rs, for a file created with
/// the default overflow area (docs/format.md §1: the overflow table follows the write-back
/// lock table).
pub fn native_header_size(num_pages: u32, page_size: u32) -> u64 {
    let blocks = native_default_area(num_pages, page_size) / NATIVE_OVERFLOW_BLOCK_SIZE;
    let table = match blocks {
        0 => 0,
        _ => (4 * u64::from(num_pages)).next_multiple_of(64) + 8 * blocks,
    };
    let raw = NATIVE_PAGE_TABLE_OFFSET
        + u64::from(num_pages) * (NATIVE_ROW_SIZE + NATIVE_WRITE_BACK_ROW_SIZE)
        + table;
    raw.div_ceil(NATIVE_HEADER_ALIGN) * NATIVE_HEADER_ALIGN
}

/// File offset of page `page`.
pub fn page_offset(layout: Layout, num_pages: u32, page_size: u32, page: u32) -> u64 {
    let base = match layout {
        Layout::FastMmap => 0,
        _ => native_header_size(num_pages, page_size),
    };
    base + u64::from(page) * u64::from(page_size)
}

/// File offset of the busy marker of native page `page`.
pub fn busy_marker_offset(page: u32) -> u64 {
    NATIVE_PAGE_TABLE_OFFSET + u64::from(page) * NATIVE_ROW_SIZE + NATIVE_ROW_BUSY_OFFSET
}

/// File offset of the reset counter of native page `page`.
pub fn reset_counter_offset(page: u32) -> u64 {
    NATIVE_PAGE_TABLE_OFFSET + u64::from(page) * NATIVE_ROW_SIZE + NATIVE_ROW_RESETS_OFFSET
}

/// Cache::FastMmap's key hash (DESIGN.md §4).
pub fn fastmmap_hash(key: &[u8]) -> u32 {
    key.iter().fold(PAGE_MAGIC, |h, &b| {
        (h << 4).wrapping_add(h >> 28).wrapping_add(u32::from(b))
    })
}

/// The page `key` lives in (DESIGN.md §4: xxh3-64 % pages natively, Perl's hash otherwise).
pub fn key_page(layout: Layout, key: &[u8], num_pages: u32) -> u32 {
    match layout {
        Layout::FastMmap => fastmmap_hash(key) % num_pages,
        _ => (xxhash_rust::xxh3::xxh3_64(key) % u64::from(num_pages)) as u32,
    }
}

/// A file layout and the page lock kind it is opened with: the combinations the tests run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    pub layout: Layout,
    pub lock: LockKind,
}

/// The native layout with fcntl locks (the defaults).
pub const NATIVE: Kind = Kind {
    layout: Layout::Native,
    lock: LockKind::Fcntl,
};
/// The native layout with robust shared-memory locks.
pub const ROBUST: Kind = Kind {
    layout: Layout::Native,
    lock: LockKind::Robust,
};
/// Cache::FastMmap's layout (fcntl locks, as Perl takes them).
pub const FASTMMAP: Kind = Kind {
    layout: Layout::FastMmap,
    lock: LockKind::Fcntl,
};
/// Every combination.
pub const ALL_KINDS: [Kind; 3] = [NATIVE, ROBUST, FASTMMAP];

impl Kind {
    /// A builder for this layout and lock kind.
    pub fn builder(self) -> CacheBuilder {
        Cache::builder().layout(self.layout).lock_kind(self.lock)
    }
}

// ---------------------------------------------------------------------------------------------
// Raw file access

/// The files a resize made or left in `dir` (names holding `.resize-`: a successor under its
/// temporary name, or the temporary file of its creation).
pub fn resize_files(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().contains(".resize-"))
        .collect()
}

/// Asserts that no file of a resize (`<name>.resize-<nonce>`) is left in `dir`.
pub fn assert_no_resize_files(dir: &Path) {
    let left = resize_files(dir);
    assert!(left.is_empty(), "files of a resize left behind: {left:?}");
}

/// The bytes of the file at `path`, or `None` if there is none (how the tests' file-per-key
/// backing stores load a key).
pub fn read_if_present(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens the cache file for raw reads and writes. Keep it open for the whole test: closing
/// any descriptor of a file drops every fcntl lock this process holds on it.
pub fn raw_file(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open cache file raw")
}

pub fn read_at(file: &File, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).expect("read_at");
    buf
}

pub fn write_at(file: &File, offset: u64, bytes: &[u8]) {
    file.write_all_at(bytes, offset).expect("write_at");
}

pub fn read_u32(file: &File, offset: u64) -> u32 {
    u32::from_ne_bytes(read_at(file, offset, 4).try_into().expect("4 bytes"))
}

pub fn write_u32(file: &File, offset: u64, v: u32) {
    write_at(file, offset, &v.to_ne_bytes());
}

/// Runs `f` on a thread and fails the test if it has not finished within `limit` (a deadlock
/// shows up as a failure instead of a hung test run).
pub fn with_deadline<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            let _ = handle.join();
            v
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: still running after {limit:?} (deadlock?)")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(payload) => std::panic::resume_unwind(payload),
            Ok(()) => unreachable!("sender dropped without sending"),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Perl helpers

/// Runs `cmd` to completion with `stdin` on its stdin, its stdout and stderr captured; its
/// output, and whether all of `stdin` was written (a program that does not read it may exit
/// first: the caller decides whether that is an error).
pub fn output_with_stdin(
    cmd: &mut std::process::Command,
    stdin: &[u8],
) -> (std::process::Output, std::io::Result<()>) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {:?}: {e}", cmd.get_program()));
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    // A separate writer, so a program that answers as it reads never blocks on a full pipe.
    let writer = std::thread::spawn(move || input.write_all(&stdin));
    let out = child.wait_with_output().expect("wait for the program");
    let written = writer.join().expect("writer thread");
    (out, written)
}

/// Runs `cmd` (a Perl script) to completion with `input` on its stdin; its stdout lines.
/// Panics with its stderr, naming it `what`, if it fails.
pub fn run_to_completion(cmd: &mut std::process::Command, input: &str, what: &str) -> Vec<String> {
    let (out, written) = output_with_stdin(cmd, input.as_bytes());
    written.expect("write to perl");
    output_lines(what, out)
}

/// The stdout lines of a finished program that must have succeeded; panics with its stderr,
/// naming it `what`, if it did not.
pub fn output_lines(what: &str, out: std::process::Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("the program prints UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `bytes` in lowercase hex (as the Perl scripts exchange keys and values, and as file-per-key
/// stores name their files).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of hex text `h` from a Perl script; panics on anything else.
pub fn unhex(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex from a Perl script"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// A blocking HTTP client as the tests' clients use it: redirects are not followed (a test
/// looks at them), no idle connection is kept, and every request is bounded by `timeout`.
pub fn http_client(timeout: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .timeout(timeout)
        .build()
        .expect("http client")
}

// ---------------------------------------------------------------------------------------------
// A board of published numbers

/// Slots of (number, time) in a plain file that every process of a test reads and writes
/// (`pread`/`pwrite` of 16 bytes): which write a worker last had acknowledged, and when.
#[derive(Clone)]
pub struct Board {
    file: std::sync::Arc<File>,
}

impl Board {
    pub fn create(path: &Path, slots: usize) -> Board {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .expect("create the board");
        file.set_len(16 * slots as u64).expect("size the board");
        Board {
            file: std::sync::Arc::new(file),
        }
    }

    /// Publishes `n` in `slot`, at `at` (time since the test's start).
    pub fn publish(&self, slot: usize, n: u64, at: Duration) {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&n.to_ne_bytes());
        b[8..].copy_from_slice(&(at.as_micros() as u64).to_ne_bytes());
        self.file
            .write_all_at(&b, 16 * slot as u64)
            .expect("write the board");
    }

    /// The number in `slot` and when it was published.
    pub fn read(&self, slot: usize) -> (u64, Duration) {
        let mut b = [0u8; 16];
        self.file
            .read_exact_at(&mut b, 16 * slot as u64)
            .expect("read the board");
        let n = u64::from_ne_bytes(b[..8].try_into().unwrap());
        let at = u64::from_ne_bytes(b[8..].try_into().unwrap());
        (n, Duration::from_micros(at))
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite across forks

/// A SQLite connection opened lazily in each process that uses it: a connection must not
/// cross a fork, so one inherited from the parent is forgotten (never used, never closed)
/// and the child opens its own. Each backing store over SQLite in the tests keeps one.
pub struct PerProcessConnection {
    path: std::path::PathBuf,
    slot: Mutex<Option<(u32, rusqlite::Connection)>>,
}

impl PerProcessConnection {
    /// Creates the database at `path` with `schema` (in WAL mode), for connections opened
    /// later.
    pub fn create(path: &Path, schema: &str) -> PerProcessConnection {
        let conn = rusqlite::Connection::open(path).expect("open the database");
        conn.execute_batch(&format!("PRAGMA journal_mode = WAL; {schema}"))
            .expect("create the schema");
        PerProcessConnection {
            path: path.to_path_buf(),
            slot: Mutex::new(None),
        }
    }

    /// Runs `f` on this process's connection, opening it (with a 60 s busy timeout) if this
    /// process has none yet.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T, fastmmap::BackingError> {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        let pid = std::process::id();
        if slot.as_ref().is_none_or(|(owner, _)| *owner != pid) {
            if let Some((_, inherited)) = slot.take() {
                std::mem::forget(inherited);
            }
            let conn = rusqlite::Connection::open(&self.path)?;
            conn.busy_timeout(Duration::from_secs(60))?;
            *slot = Some((pid, conn));
        }
        Ok(f(&slot.as_ref().expect("opened").1)?)
    }
}
