//! A prefork server in miniature: the parent opens one cache file, forks workers, and every
//! worker uses the cache it inherited, at the same time as all the others.
//!
//! Each worker runs a fixed number of operations on shared keys:
//!
//! - a quarter are atomic increments of a few shared counters ([`Cache::update`]): if any
//!   increment were lost or applied twice, the final sum would be off;
//! - a quarter store self-checking values under shared keys (each value names its key and
//!   ends with a checksum of the rest);
//! - half read those keys back and check every value found.
//!
//! The parent waits for the workers, prints their throughput, then checks the counters and
//! every value left in the cache. It exits nonzero if anything is wrong.
//!
//! ```text
//! cargo run --release --example prefork [--fcntl | --robust] [WORKERS] [OPS_PER_WORKER]
//! ```
//!
//! `--fcntl` and `--robust` choose the page lock kind; without either, the library's default
//! ([`LockKind::Robust`] on Linux with glibc).

#![warn(clippy::undocumented_unsafe_blocks)]

use std::error::Error;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fastmmap::{Cache, Expiry, LockKind, Update};

const DEFAULT_WORKERS: u32 = 4;
const DEFAULT_OPS: u64 = 100_000;
/// Shared counters; every fourth operation of every worker increments one of them.
const COUNTERS: u64 = 16;
/// Shared keys for self-checking values.
const VALUE_KEYS: u64 = 2_000;

/// Child exit codes.
const EXIT_OK: i32 = 0;
const EXIT_BAD_VALUES: i32 = 1;
const EXIT_ERROR: i32 = 2;
const EXIT_PANIC: i32 = 3;

fn main() -> ExitCode {
    let (workers, ops, lock) = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => return ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("prefork: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(workers, ops, lock) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("prefork: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: prefork [--fcntl | --robust] [WORKERS] [OPS_PER_WORKER]   \
     (defaults: the library's default lock kind, 4 workers, 100000 ops each)";

/// `(workers, ops per worker, lock kind)`, or `None` when only help was asked for.
fn parse_args() -> Result<Option<(u32, u64, LockKind)>, String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(None);
    }
    let lock = if args.iter().any(|a| a == "--fcntl") {
        LockKind::Fcntl
    } else if args.iter().any(|a| a == "--robust") {
        LockKind::Robust
    } else {
        LockKind::default()
    };
    args.retain(|a| a != "--fcntl" && a != "--robust");
    if let Some(flag) = args.iter().find(|a| a.starts_with("--")) {
        return Err(format!("unknown option {flag}"));
    }
    if args.len() > 2 {
        return Err(format!(
            "expected at most two arguments, got {}",
            args.len()
        ));
    }
    let workers = match args.first() {
        None => DEFAULT_WORKERS,
        Some(a) => a
            .parse()
            .ok()
            .filter(|n| (1..=256).contains(n))
            .ok_or_else(|| format!("WORKERS must be a number from 1 to 256, not {a:?}"))?,
    };
    let ops = match args.get(1) {
        None => DEFAULT_OPS,
        Some(a) => a
            .parse()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| format!("OPS_PER_WORKER must be a positive number, not {a:?}"))?,
    };
    Ok(Some((workers, ops, lock)))
}

fn run(workers: u32, ops: u64, lock: LockKind) -> Result<bool, Box<dyn Error>> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
    // A private directory when there is one (see the README's Security section); this demo's
    // file has a fresh name and goes when it ends, so the shared temp dir also does.
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!(
        "fastmmap-prefork-{}-{nanos}.cache",
        std::process::id()
    ));
    // The parent opens the file before forking; the workers inherit the mapping. The file goes
    // when the parent drops its handle (forked children never remove it).
    let cache = Cache::builder()
        .path(&path)
        .lock_kind(lock)
        .unlink_on_drop(true)
        .open()?;
    println!(
        "prefork: {workers} workers x {ops} ops on {} ({} pages x {} bytes, {lock} locks)",
        path.display(),
        cache.num_pages(),
        cache.page_size()
    );

    let started = Instant::now();
    let mut children = Vec::new();
    let mut fork_error = None;
    for w in 0..workers {
        // SAFETY: the demo never starts a thread, so at this point the process is
        // single-threaded and no lock (the allocator's, the cache's page mutexes, its registry)
        // is held by a thread that would be missing in the child. The child runs only `worker`
        // and leaves through `_exit`, never returning into the parent's code.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => {
                fork_error = Some(io::Error::last_os_error());
                break;
            }
            0 => {
                let code = panic::catch_unwind(AssertUnwindSafe(|| worker(&cache, w, ops)))
                    .unwrap_or(EXIT_PANIC);
                // SAFETY: `_exit` ends the child at once, without running destructors or exit
                // handlers that belong to the parent's copy of this state.
                unsafe { libc::_exit(code) }
            }
            pid => children.push((w, pid)),
        }
    }

    let mut ok = true;
    for &(w, pid) in &children {
        match wait_for(pid)? {
            Exit::Code(EXIT_OK) => {}
            Exit::Code(EXIT_BAD_VALUES) => {
                println!("worker {w}: read bad values");
                ok = false;
            }
            Exit::Code(code) => {
                println!("worker {w}: failed (exit code {code})");
                ok = false;
            }
            Exit::Signal(sig) => {
                println!("worker {w}: killed by signal {sig}");
                ok = false;
            }
        }
    }
    let wall = started.elapsed();
    if let Some(e) = fork_error {
        return Err(format!("fork failed after {} workers: {e}", children.len()).into());
    }

    // Throughput, from what each worker recorded in the cache.
    let mut bad = 0u64;
    for w in 0..workers {
        match cache
            .get(result_key(w).as_bytes())?
            .as_deref()
            .and_then(WorkerReport::decode)
        {
            Some(r) => {
                bad += r.bad;
                let secs = r.elapsed.as_secs_f64();
                println!(
                    "worker {w}: {} ops in {secs:.3} s = {:.0} ops/s ({} reads: {} hits, {} misses)",
                    r.ops,
                    r.ops as f64 / secs,
                    r.hits + r.misses,
                    r.hits,
                    r.misses
                );
            }
            None => {
                println!("worker {w}: no report");
                ok = false;
            }
        }
    }
    let total_ops = u64::from(workers) * ops;
    println!(
        "total: {total_ops} ops in {:.3} s = {:.0} ops/s",
        wall.as_secs_f64(),
        total_ops as f64 / wall.as_secs_f64()
    );

    // Verification: no increment lost, no value damaged, no page reset.
    let expected = u64::from(workers) * counter_ops(ops);
    let mut counted = 0u64;
    for c in 0..COUNTERS {
        match cache.get(counter_key(c).as_bytes())? {
            None => {}
            Some(v) => match <[u8; 8]>::try_from(v.as_slice()) {
                Ok(bytes) => counted += u64::from_le_bytes(bytes),
                Err(_) => bad += 1,
            },
        }
    }
    for k in 0..VALUE_KEYS {
        let key = value_key(k);
        if let Some(v) = cache.get(key.as_bytes())?
            && !value_is_good(&key, &v)
        {
            bad += 1;
        }
    }
    let resets = cache.stats()?.resets;
    let counters_ok = counted == expected;
    println!(
        "verify: counters {counted}/{expected} {}, {bad} bad values, {resets} page resets",
        if counters_ok { "ok" } else { "WRONG" }
    );
    ok &= counters_ok && bad == 0 && resets == 0;
    println!("{}", if ok { "OK" } else { "FAILED" });
    Ok(ok)
}

/// How a child ended.
enum Exit {
    Code(i32),
    Signal(i32),
}

fn wait_for(pid: libc::pid_t) -> io::Result<Exit> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `pid` is a child of this process that has not been reaped yet, and `status`
        // is a valid place for the kernel to write the exit status to.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    if libc::WIFEXITED(status) {
        Ok(Exit::Code(libc::WEXITSTATUS(status)))
    } else {
        Ok(Exit::Signal(libc::WTERMSIG(status)))
    }
}

/// Counter increments each worker makes: operations 0, 4, 8, …
fn counter_ops(ops: u64) -> u64 {
    ops.div_ceil(4)
}

fn counter_key(c: u64) -> String {
    format!("counter:{c}")
}

fn value_key(k: u64) -> String {
    format!("value:{k}")
}

fn result_key(w: u32) -> String {
    format!("result:{w}")
}

/// One worker's run; returns its exit code.
fn worker(cache: &Cache, w: u32, ops: u64) -> i32 {
    match work(cache, w, ops) {
        Ok(report) => {
            let bad = report.bad;
            if let Err(e) =
                cache.set_with(result_key(w).as_bytes(), &report.encode(), Expiry::Never)
            {
                eprintln!("worker {w}: {e}");
                return EXIT_ERROR;
            }
            if bad == 0 { EXIT_OK } else { EXIT_BAD_VALUES }
        }
        Err(e) => {
            eprintln!("worker {w}: {e}");
            EXIT_ERROR
        }
    }
}

fn work(cache: &Cache, w: u32, ops: u64) -> fastmmap::Result<WorkerReport> {
    let mut rng = XorShift::new(u64::from(w) + 1);
    let mut report = WorkerReport::default();
    let start = Instant::now();
    for i in 0..ops {
        match i % 4 {
            0 => {
                let key = counter_key(rng.below(COUNTERS));
                cache.update(key.as_bytes(), |old| {
                    let n = match old.map(<[u8; 8]>::try_from) {
                        None => 0,
                        Some(Ok(bytes)) => u64::from_le_bytes(bytes),
                        Some(Err(_)) => {
                            report.bad += 1;
                            0
                        }
                    };
                    Update::Set((n + 1).to_le_bytes().to_vec())
                })?;
            }
            1 => {
                let key = value_key(rng.below(VALUE_KEYS));
                cache.set(key.as_bytes(), &make_value(&key, w, i))?;
            }
            _ => {
                let key = value_key(rng.below(VALUE_KEYS));
                match cache.get_with(key.as_bytes(), |v| value_is_good(&key, v))? {
                    Some(true) => report.hits += 1,
                    Some(false) => {
                        report.hits += 1;
                        report.bad += 1;
                    }
                    None => report.misses += 1,
                }
            }
        }
    }
    report.elapsed = start.elapsed();
    report.ops = ops;
    Ok(report)
}

/// `key#worker#seq#` then filler of varying length, then a checksum of everything before it.
fn make_value(key: &str, w: u32, seq: u64) -> Vec<u8> {
    let mut v = format!("{key}#{w}#{seq}#").into_bytes();
    let filler = 16 + (seq * 37 % 400) as usize;
    v.extend((0..filler).map(|j| (seq as usize + j) as u8));
    let sum = fnv1a(&v);
    v.extend_from_slice(&sum.to_le_bytes());
    v
}

/// A value is good when its checksum holds and it names the key it was read under.
fn value_is_good(key: &str, v: &[u8]) -> bool {
    let Some(split) = v.len().checked_sub(8) else {
        return false;
    };
    let (body, sum) = v.split_at(split);
    let sum_ok = sum
        .try_into()
        .is_ok_and(|s| u64::from_le_bytes(s) == fnv1a(body));
    sum_ok
        && body
            .strip_prefix(key.as_bytes())
            .is_some_and(|rest| rest.first() == Some(&b'#'))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What a worker did, stored in the cache for the parent to read.
#[derive(Default)]
struct WorkerReport {
    ops: u64,
    elapsed: Duration,
    hits: u64,
    misses: u64,
    bad: u64,
}

impl WorkerReport {
    fn encode(&self) -> Vec<u8> {
        [
            self.ops,
            self.elapsed.as_nanos() as u64,
            self.hits,
            self.misses,
            self.bad,
        ]
        .iter()
        .flat_map(|n| n.to_le_bytes())
        .collect()
    }

    fn decode(bytes: &[u8]) -> Option<WorkerReport> {
        let words: Vec<u64> = bytes
            .chunks(8)
            .map(|c| c.try_into().map_or(u64::MAX, u64::from_le_bytes))
            .collect();
        let &[ops, nanos, hits, misses, bad] = words.as_slice() else {
            return None;
        };
        (bytes.len() == 40).then_some(WorkerReport {
            ops,
            elapsed: Duration::from_nanos(nanos),
            hits,
            misses,
            bad,
        })
    }
}

/// A small deterministic generator: each worker picks keys in its own order.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
