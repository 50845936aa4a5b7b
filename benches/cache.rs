//! Benchmarks of the public `Cache` API: one mmap'ed file, default geometry (89 pages × 64 KiB)
//! unless a bench says otherwise, 10-byte keys and 100-byte values. Every bench runs once per
//! lock kind, side by side: `fcntl/...` (the default) and `robust/...`.
//!
//! The file lives in `/dev/shm` when that exists (as a prefork server would put it), else in
//! the temp dir; the choice is printed once.
//!
//! Concurrency benches use `iter_custom` and report the wall time per operation across all
//! threads or processes (total wall time / total operations), so a perfectly scaling run on
//! two cores halves the figure, and contention raises it.

#![warn(clippy::undocumented_unsafe_blocks)]

use std::hint::black_box;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fastmmap::{Cache, LockKind, Update};
use tempfile::TempDir;

#[path = "support/fork.rs"]
mod fork;

/// Keys pre-filled for the hit benches: about 112 per page, well within capacity.
const HOT_KEYS: usize = 10_000;
/// Distinct keys for the eviction bench: about five times what the cache holds.
const EVICTION_KEYS: usize = 200_000;
/// Keys per `get_many` call.
const MANY: usize = 16;
const VALUE_LEN: usize = 100;

type Key = [u8; 10];

/// A 10-byte key: a one-letter prefix and nine decimal digits.
fn key(prefix: u8, i: usize) -> Key {
    let mut k = [b'0'; 10];
    k[0] = prefix;
    let mut n = i;
    for b in k[1..].iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
    k
}

fn keys(prefix: u8, n: usize) -> Vec<Key> {
    (0..n).map(|i| key(prefix, i)).collect()
}

fn value(seed: usize) -> [u8; VALUE_LEN] {
    let mut v = [0u8; VALUE_LEN];
    for (i, b) in v.iter_mut().enumerate() {
        *b = (seed.wrapping_mul(31).wrapping_add(i)) as u8;
    }
    v
}

/// A fresh directory for cache files: `/dev/shm` if present, else the temp dir.
fn bench_dir() -> TempDir {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("fastmmap-bench")
            .tempdir_in(shm)
    } else {
        tempfile::Builder::new().prefix("fastmmap-bench").tempdir()
    }
    .expect("create a temp dir");
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        eprintln!(
            "fastmmap bench files in {}",
            dir.path().parent().unwrap_or(dir.path()).display()
        )
    });
    dir
}

/// The lock kinds compared, with their bench-name prefixes.
const KINDS: [(LockKind, &str); 2] = [(LockKind::Fcntl, "fcntl"), (LockKind::Robust, "robust")];

/// A cache with default geometry and lock kind `kind`.
fn open_cache(dir: &TempDir, name: &str, kind: LockKind) -> Cache {
    Cache::builder()
        .path(dir.path().join(name))
        .lock_kind(kind)
        .open()
        .expect("open cache")
}

/// A cache with default geometry holding `HOT_KEYS` entries.
fn hot_cache(dir: &TempDir, name: &str, kind: LockKind) -> (Cache, Vec<Key>) {
    let cache = Cache::builder()
        .path(dir.path().join(name))
        .lock_kind(kind)
        .open()
        .expect("open cache");
    let keys = keys(b'k', HOT_KEYS);
    for (i, k) in keys.iter().enumerate() {
        cache.set(k, &value(i)).expect("set");
    }
    for k in &keys {
        assert!(
            cache.get(k).expect("get").is_some(),
            "pre-filled key missing: the cache is too small"
        );
    }
    (cache, keys)
}

/// Cycles through a slice forever.
struct Rotor<'a, T> {
    items: &'a [T],
    next: usize,
}

impl<'a, T> Rotor<'a, T> {
    fn new(items: &'a [T], start: usize) -> Self {
        Rotor {
            items,
            next: start % items.len(),
        }
    }

    #[inline]
    fn next(&mut self) -> &'a T {
        let item = &self.items[self.next];
        self.next += 1;
        if self.next == self.items.len() {
            self.next = 0;
        }
        item
    }
}

/// `iters` get hits over `keys`, starting at `start`; panics on a miss.
#[inline]
fn get_loop(cache: &Cache, keys: &[Key], start: usize, iters: u64) -> Result<(), fastmmap::Error> {
    let mut rotor = Rotor::new(keys, start);
    for _ in 0..iters {
        let v = cache.get(rotor.next())?;
        black_box(v);
    }
    Ok(())
}

fn single(c: &mut Criterion) {
    for (kind, name) in KINDS {
        single_kind(c, kind, name);
    }
}

fn single_kind(c: &mut Criterion, kind: LockKind, name: &str) {
    let dir = bench_dir();
    let (cache, hot) = hot_cache(&dir, "single", kind);
    let mut g = c.benchmark_group(name);

    g.bench_function("get_hit", |b| {
        let mut keys = Rotor::new(&hot, 0);
        b.iter(|| {
            let v = cache.get(keys.next()).unwrap();
            debug_assert!(v.is_some());
            v
        });
    });

    let absent = keys(b'm', HOT_KEYS);
    g.bench_function("get_miss", |b| {
        let mut keys = Rotor::new(&absent, 0);
        b.iter(|| {
            let v = cache.get(keys.next()).unwrap();
            debug_assert!(v.is_none());
            v
        });
    });

    g.bench_function("get_with_len", |b| {
        let mut keys = Rotor::new(&hot, 0);
        b.iter(|| cache.get_with(keys.next(), |v: &[u8]| v.len()).unwrap());
    });

    g.bench_function("set_overwrite", |b| {
        let val = value(7);
        let mut keys = Rotor::new(&hot, 0);
        b.iter(|| cache.set(keys.next(), black_box(&val)).unwrap());
    });

    g.bench_function("update_counter", |b| {
        let mut keys = Rotor::new(&hot, 0);
        b.iter(|| {
            cache
                .update(keys.next(), |old| {
                    let mut v = old.map_or_else(|| vec![0; VALUE_LEN], <[u8]>::to_vec);
                    let n = u64::from_le_bytes(v[..8].try_into().expect("8 bytes")).wrapping_add(1);
                    v[..8].copy_from_slice(&n.to_le_bytes());
                    Update::Set(v)
                })
                .unwrap()
        });
    });

    // One call fetching MANY keys; criterion's time is per call, its throughput per key.
    let windows: Vec<&[Key]> = hot.chunks_exact(MANY).collect();
    g.throughput(Throughput::Elements(MANY as u64));
    g.bench_function(format!("get_many_{MANY}"), |b| {
        let mut calls = Rotor::new(&windows, 0);
        b.iter(|| cache.get_many(calls.next()).unwrap());
    });
    g.finish();
    drop(cache);

    // Many more distinct keys than fit: almost every store is a new key into a full page.
    let cache = open_cache(&dir, "evict", kind);
    let many = keys(b'e', EVICTION_KEYS);
    let val = value(3);
    for k in &many {
        cache.set(k, &val).unwrap();
    }
    let mut g = c.benchmark_group(name);
    g.bench_function("set_evicting", |b| {
        let mut keys = Rotor::new(&many, 0);
        b.iter(|| cache.set(keys.next(), black_box(&val)).unwrap());
    });
    g.finish();
}

/// Get hits from 1, 2 and 4 threads sharing one `Cache`: wall time per get across all threads.
fn threads(c: &mut Criterion) {
    for (kind, name) in KINDS {
        threads_kind(c, kind, name);
    }
}

fn threads_kind(c: &mut Criterion, kind: LockKind, name: &str) {
    let dir = bench_dir();
    let (cache, hot) = hot_cache(&dir, "threads", kind);
    let hot = Arc::new(hot);
    let mut g = c.benchmark_group(format!("{name}/get_hit_threads"));
    for n in [1usize, 2, 4] {
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let barrier = Arc::new(Barrier::new(n + 1));
                let workers: Vec<_> = (0..n)
                    .map(|t| {
                        let (cache, hot, barrier) =
                            (cache.clone(), Arc::clone(&hot), Arc::clone(&barrier));
                        std::thread::spawn(move || {
                            barrier.wait();
                            get_loop(&cache, &hot, t * hot.len() / n, iters).unwrap();
                        })
                    })
                    .collect();
                barrier.wait();
                let start = Instant::now();
                for w in workers {
                    w.join().expect("worker");
                }
                start.elapsed() / n as u32
            });
        });
    }
    g.finish();
}

/// Runs `iters` gets over `parent_keys` here while a forked child runs `iters` gets over
/// `child_keys` on the same cache, both starting together. Returns the wall time from the
/// common start until both are done.
fn two_processes(cache: &Cache, parent_keys: &[Key], child_keys: &[Key], iters: u64) -> Duration {
    // SAFETY: the bench is single-threaded at this point (the thread benches joined all their
    // workers); the child only uses the inherited mapping and descriptors.
    unsafe {
        fork::two_processes(
            || get_loop(cache, parent_keys, parent_keys.len() / 2, iters).unwrap(),
            || get_loop(cache, child_keys, 0, iters).is_ok(),
        )
    }
}

/// Splits `keys` into those on pages `< num_pages / 2` and the rest, by the native layout's key
/// hash (xxh3-64 modulo the page count). The split is checked against the cache's own per-page
/// statistics; `None` if it does not match (the hash changed).
fn split_by_page(dir: &TempDir, keys: &[Key]) -> Option<(Vec<Key>, Vec<Key>)> {
    let cache = open_cache(dir, "split", LockKind::Fcntl);
    let half = u64::from(cache.num_pages() / 2);
    let (low, high): (Vec<Key>, Vec<Key>) = keys
        .iter()
        .partition(|k| xxhash_rust::xxh3::xxh3_64(&k[..]) % u64::from(cache.num_pages()) < half);
    for k in &low {
        cache.set(k, &value(0)).ok()?;
    }
    let stats = cache.stats().ok()?;
    let low_ok = stats
        .pages
        .iter()
        .enumerate()
        .all(|(p, s)| (p as u64) < half || s.entries == 0);
    let low_count: u64 = stats.pages.iter().map(|s| u64::from(s.entries)).sum();
    (low_ok && low_count == low.len() as u64).then_some((low, high))
}

/// Get hits from two processes (the parent and a forked child) on one cache file, against one
/// process doing the same loop: wall time per get across both.
fn processes(c: &mut Criterion) {
    for (kind, name) in KINDS {
        processes_kind(c, kind, name);
    }
}

fn processes_kind(c: &mut Criterion, kind: LockKind, name: &str) {
    let dir = bench_dir();
    let (cache, hot) = hot_cache(&dir, "procs", kind);
    let disjoint = split_by_page(&dir, &hot);
    if disjoint.is_none() {
        eprintln!(
            "{name}/get_hit_procs/2_disjoint_pages skipped: cannot tell keys' pages (key hash changed?)"
        );
    }
    let mut g = c.benchmark_group(format!("{name}/get_hit_procs"));
    g.bench_function("1", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            get_loop(&cache, &hot, 0, iters).unwrap();
            start.elapsed()
        });
    });
    g.bench_function("2_same_keys", |b| {
        b.iter_custom(|iters| two_processes(&cache, &hot, &hot, iters) / 2);
    });
    if let Some((low, high)) = &disjoint {
        g.bench_function("2_disjoint_pages", |b| {
            b.iter_custom(|iters| two_processes(&cache, low, high, iters) / 2);
        });
    }
    g.finish();
}

/// Keys of the side-by-side comparison with an in-process map.
const FLOOR_KEYS: usize = 20_000;

/// `0..n` in a fixed pseudo-random order (a seeded Fisher-Yates shuffle).
fn shuffled(n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

/// The floor: the same workload on a `HashMap` behind a `Mutex` in one process, beside the
/// cache with each lock kind — 20,000 keys of 10 bytes, 100-byte values, random order: get
/// hits, overwrites, and gets of which half miss.
fn floor(c: &mut Criterion) {
    use std::collections::HashMap;
    use std::sync::Mutex;

    let present = keys(b'k', FLOOR_KEYS);
    let absent = keys(b'x', FLOOR_KEYS);
    let order = shuffled(FLOOR_KEYS);
    // Every other key of the half-miss mix is absent.
    let mixed: Vec<Key> = order
        .iter()
        .enumerate()
        .map(|(i, &k)| if i % 2 == 0 { present[k] } else { absent[k] })
        .collect();
    let hits: Vec<Key> = order.iter().map(|&k| present[k]).collect();
    let mut g = c.benchmark_group("floor");

    let map: Mutex<HashMap<Vec<u8>, Vec<u8>>> = Mutex::new(
        present
            .iter()
            .enumerate()
            .map(|(i, k)| (k.to_vec(), value(i).to_vec()))
            .collect(),
    );
    let map_get = |k: &Key| map.lock().unwrap().get(&k[..]).cloned();
    g.bench_function("hashmap/get_hit", |b| {
        let mut keys = Rotor::new(&hits, 0);
        b.iter(|| black_box(map_get(keys.next())))
    });
    g.bench_function("hashmap/get_half_miss", |b| {
        let mut keys = Rotor::new(&mixed, 0);
        b.iter(|| black_box(map_get(keys.next())))
    });
    g.bench_function("hashmap/set_overwrite", |b| {
        let mut keys = Rotor::new(&hits, 0);
        let v = value(7);
        b.iter(|| {
            let old = map.lock().unwrap().insert(keys.next().to_vec(), v.to_vec());
            black_box(old)
        })
    });

    let dir = bench_dir();
    for (kind, name) in KINDS {
        let cache = open_cache(&dir, &format!("floor-{name}"), kind);
        for (i, k) in present.iter().enumerate() {
            cache.set(k, &value(i)).expect("set");
        }
        g.bench_function(format!("{name}/get_hit"), |b| {
            let mut keys = Rotor::new(&hits, 0);
            b.iter(|| black_box(cache.get(keys.next()).unwrap()))
        });
        g.bench_function(format!("{name}/get_half_miss"), |b| {
            let mut keys = Rotor::new(&mixed, 0);
            b.iter(|| black_box(cache.get(keys.next()).unwrap()))
        });
        g.bench_function(format!("{name}/set_overwrite"), |b| {
            let mut keys = Rotor::new(&hits, 0);
            let v = value(7);
            b.iter(|| black_box(cache.set(keys.next(), &v).unwrap()))
        });
    }
    g.finish();
}

/// A backing store that does nothing: what write-back costs the cache itself.
struct NullBacking;

impl fastmmap::Backing for NullBacking {
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

/// Write-back `set` against a plain `set` (robust locks, the default): get hits, gets of
/// absent keys (a read through to the no-op store) and overwrites of hot keys, and stores of ever new keys that evict (each eviction of dirty
/// entries writes them to the no-op store first, then drops them).
fn write_back(c: &mut Criterion) {
    let dir = bench_dir();
    let mut g = c.benchmark_group("write_back");
    let hot = keys(b'k', HOT_KEYS);
    let fresh = keys(b'e', EVICTION_KEYS);
    let absent = keys(b'x', HOT_KEYS);
    for (name, backed) in [("plain", false), ("write_back", true)] {
        let mut b = Cache::builder()
            .path(dir.path().join(name))
            .lock_kind(LockKind::Robust);
        if backed {
            b = b.backing(NullBacking).write_mode(fastmmap::WriteMode::Back);
        }
        let cache = b.open().expect("open cache");
        for (i, k) in hot.iter().enumerate() {
            cache.set(k, &value(i)).expect("set");
        }
        g.bench_function(format!("{name}/get_hit"), |b| {
            let mut keys = Rotor::new(&hot, 0);
            b.iter(|| black_box(cache.get(keys.next()).unwrap()))
        });
        g.bench_function(format!("{name}/get_miss"), |b| {
            let mut keys = Rotor::new(&absent, 0);
            b.iter(|| black_box(cache.get(keys.next()).unwrap()))
        });
        g.bench_function(format!("{name}/set_overwrite"), |b| {
            let mut keys = Rotor::new(&hot, 0);
            let v = value(7);
            b.iter(|| black_box(cache.set(keys.next(), &v).unwrap()))
        });
        g.bench_function(format!("{name}/set_evicting"), |b| {
            let mut keys = Rotor::new(&fresh, 0);
            let v = value(9);
            b.iter(|| black_box(cache.set(keys.next(), &v).unwrap()))
        });
        g.bench_function(format!("{name}/update_overwrite"), |b| {
            let mut keys = Rotor::new(&hot, 0);
            let v = value(5);
            b.iter(|| {
                black_box(
                    cache
                        .update(keys.next(), |_| Update::Set(v.to_vec()))
                        .unwrap(),
                )
            })
        });
    }
    g.finish();
}

/// Typed values (feature `serde`) against raw bytes of about the same size (robust locks): a
/// struct of 5 fields, 100 bytes as JSON, 56 as postcard.
#[cfg(feature = "serde")]
fn typed(c: &mut Criterion) {
    use fastmmap::typed::{Json, Postcard, TypedCache};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Profile {
        id: u64,
        name: String,
        email: String,
        roles: Vec<String>,
        score: f64,
    }
    let profile = |i: usize| Profile {
        id: i as u64,
        name: format!("user number {i}"),
        email: format!("user{i}@example.com"),
        roles: vec!["reader".into(), "writer".into()],
        score: i as f64 / 3.0,
    };
    let dir = bench_dir();
    let cache = Cache::builder()
        .path(dir.path().join("typed"))
        .lock_kind(LockKind::Robust)
        .open()
        .expect("open cache");
    let hot = keys(b'k', HOT_KEYS);
    let mut g = c.benchmark_group("typed");
    for (i, k) in hot.iter().enumerate() {
        cache.set(k, &value(i)).expect("set");
    }
    g.bench_function("raw/get_hit", |b| {
        let mut keys = Rotor::new(&hot, 0);
        b.iter(|| black_box(cache.get(keys.next()).unwrap()))
    });
    g.bench_function("raw/set_overwrite", |b| {
        let mut keys = Rotor::new(&hot, 0);
        let v = value(7);
        b.iter(|| black_box(cache.set(keys.next(), &v).unwrap()))
    });
    macro_rules! codec {
        ($name:literal, $codec:expr) => {{
            let typed: TypedCache<[u8], Profile, _> = TypedCache::new(cache.clone(), $codec);
            for (i, k) in hot.iter().enumerate() {
                typed.set(k, &profile(i)).expect("set");
            }
            g.bench_function(concat!($name, "/get_hit"), |b| {
                let mut keys = Rotor::new(&hot, 0);
                b.iter(|| black_box(typed.get(keys.next()).unwrap()))
            });
            g.bench_function(concat!($name, "/set_overwrite"), |b| {
                let mut keys = Rotor::new(&hot, 0);
                let v = profile(7);
                b.iter(|| black_box(typed.set(keys.next(), &v).unwrap()))
            });
        }};
    }
    codec!("postcard", Postcard);
    codec!("json", Json);
    g.finish();
}

#[cfg(not(feature = "serde"))]
fn typed(_: &mut Criterion) {}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = single, threads, processes, floor, write_back, typed
}
criterion_main!(benches);
