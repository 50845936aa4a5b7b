//! fastmmap beside the stores a user would pick instead, in one run, on the same keys, values
//! and access order for every store (see `fastmmap_compare::peers` for the inputs).
//!
//! Group `peers`: `{size}/{get_hit|set_overwrite}/{visit|random}/{store}` for values of 16 B
//! (20,000 keys), 4 KiB (5,000), 64 KiB (320) and 1 MiB (20), keys of 10 to 16 bytes visited in
//! their memory order or, each allocated on its own, through a random permutation. Stores:
//! - `fastmmap`: defaults (robust lock where available, statistics on), in `/dev/shm`;
//!   `fastmmap_fcntl`: the `fcntl` lock kind. Values of 1 MiB do not fit a page: they go to
//!   the file's overflow area (default 64 KiB pages, an area holding every value twice;
//!   `fastmmap_compare::peers::overflow_size`).
//! - `map`: `Mutex<HashMap<Vec<u8>, Vec<u8>>>`, a get clones the value out.
//! - `moka_vec` / `moka_arc`: `moka::sync::Cache` with `Vec<u8>` or `Arc<[u8]>` values.
//! - `lmdb_txn` (a read transaction per get) and `lmdb_reused` (one read transaction for the
//!   whole bench), through heed, copying the value out; a write transaction per set, with
//!   `NO_SYNC` (a cache does not fsync; the environment is in `/dev/shm` anyway).
//! - `redis`: a `redis-server` of our own on loopback, one connection, `GET`/`SET`; skipped with
//!   a note when `redis-server` is not on the PATH (a failure with `FASTMMAP_REQUIRE_REDIS=1`).
//! - `memcpy`: copying the value into a new `Vec` — the floor of any get that returns an
//!   owned value.
//!
//! Group `peers_threads` (16 B values, keys in visiting order): get hits from 1 and 2 threads,
//! fastmmap with statistics on and off and the map; 1 and 2 processes (a forked child) on one
//! fastmmap file. Reported as wall time per get across all threads or processes (total wall
//! time / total gets), so perfect scaling halves the figure.
//!
//! Timed on the wall clock; with `PEERS_CLOCK=cpu`, the in-process stores are timed on the
//! benchmarking thread's CPU clock instead, which leaves out the time other work on a shared
//! machine holds the core (Redis, threads and processes stay on the wall clock).
//!
//! ```text
//! cargo bench --manifest-path compare/Cargo.toml --bench peers
//! PEERS_CLOCK=cpu cargo bench --manifest-path compare/Cargo.toml --bench peers
//! ```

#![warn(clippy::undocumented_unsafe_blocks)]

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Bencher, Criterion, Throughput, criterion_group, criterion_main};
use fastmmap::{Cache, LockKind};
use fastmmap_compare::peers::{Order, RedisServer, SIZES, Workload, geometry, overflow_size};
use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions};
use tempfile::TempDir;

/// The fork harness, shared with `benches/cache.rs`.
#[path = "../../benches/support/fork.rs"]
mod fork;

/// The clock of the `peers` group: wall time (the default), or with `PEERS_CLOCK=cpu` the
/// CPU time of the benchmarking thread, which leaves out the time other processes hold the
/// core — for a machine shared with other work. Redis round trips, threads and processes are
/// timed on the wall clock either way (`iter_custom`).
struct PeersClock {
    id: libc::clockid_t,
}

impl PeersClock {
    fn from_env() -> PeersClock {
        let cpu = std::env::var("PEERS_CLOCK").is_ok_and(|v| v == "cpu");
        if cpu {
            eprintln!("peers: timing on this thread's CPU clock (PEERS_CLOCK=cpu)");
        }
        PeersClock {
            id: if cpu {
                libc::CLOCK_THREAD_CPUTIME_ID
            } else {
                libc::CLOCK_MONOTONIC
            },
        }
    }

    fn now(&self) -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec and `self.id` a clock every Linux has.
        let rc = unsafe { libc::clock_gettime(self.id, &raw mut ts) };
        assert_eq!(rc, 0, "clock_gettime: {}", std::io::Error::last_os_error());
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
}

impl Measurement for PeersClock {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        self.now()
    }
    fn end(&self, start: Duration) -> Duration {
        self.now().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &Nanos
    }
}

/// Formats nanoseconds as criterion's wall clock does (throughput is not used here).
struct Nanos;

impl ValueFormatter for Nanos {
    fn scale_values(&self, ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = match ns {
            ns if ns < 1e3 => (1.0, "ns"),
            ns if ns < 1e6 => (1e-3, "µs"),
            ns if ns < 1e9 => (1e-6, "ms"),
            _ => (1e-9, "s"),
        };
        for v in values {
            *v *= factor;
        }
        unit
    }
    fn scale_throughputs(
        &self,
        _typical: f64,
        _t: &Throughput,
        _values: &mut [f64],
    ) -> &'static str {
        "op/s"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

/// A fresh directory: `/dev/shm` if present (where a prefork server would put a cache file),
/// else the temp dir.
fn bench_dir() -> TempDir {
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix("fastmmap-peers");
        b
    };
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        builder.tempdir_in(shm)
    } else {
        builder.tempdir()
    }
    .expect("create a temp dir")
}

type Visits<'w> = [(&'w [u8], usize)];

/// Runs `op` on the visits in turn, over and over, one call per criterion iteration.
fn cycle<R>(
    b: &mut Bencher<'_, PeersClock>,
    visits: &Visits<'_>,
    mut op: impl FnMut(&[u8], usize) -> R,
) {
    let mut next = 0;
    b.iter(|| {
        let (k, i) = visits[next];
        next += 1;
        if next == visits.len() {
            next = 0;
        }
        op(black_box(k), i)
    });
}

/// As [`cycle`], timed on the wall clock whatever the group's clock: for round trips to
/// another process, whose work the CPU clock of this thread would not see.
fn wall(b: &mut Bencher<'_, PeersClock>, visits: &Visits<'_>, mut op: impl FnMut(&[u8], usize)) {
    let mut next = 0;
    b.iter_custom(|iters| {
        let start = Instant::now();
        for _ in 0..iters {
            let (k, i) = visits[next];
            next += 1;
            if next == visits.len() {
                next = 0;
            }
            op(black_box(k), i);
        }
        start.elapsed()
    });
}

/// A fastmmap cache sized for `w` holding all its values, or `None` (with the reason printed)
/// when they cannot be stored.
fn fastmmap_store(
    dir: &TempDir,
    w: &Workload,
    name: &str,
    kind: Option<LockKind>,
) -> Option<Cache> {
    let (page_size, pages) = geometry(w.size);
    let mut builder = Cache::builder()
        .path(dir.path().join(format!("{}-{name}", w.size.name)))
        .page_size(page_size)
        .num_pages(pages);
    if let Some(kind) = kind {
        builder = builder.lock_kind(kind);
    }
    if let Some(bytes) = overflow_size(w.size) {
        builder = builder
            .overflow_size(bytes)
            .max_value_size(w.size.value_len as u32);
    }
    let cache = builder.open().expect("open a fastmmap cache");
    for (k, v) in w.keys.iter().zip(&w.values) {
        if let Err(e) = cache.set(k, v) {
            // Only a value too large for the cache is expected; anything else is a fault the
            // bench must not hide.
            assert!(
                matches!(
                    e,
                    fastmmap::Error::TooLarge { .. } | fastmmap::Error::ValueTooLarge { .. }
                ),
                "peers/{}/*/{name}: set failed: {e}",
                w.size.name
            );
            eprintln!(
                "peers/{}/*/{name}: not storable ({} pages of {} KiB): {e}",
                w.size.name,
                pages,
                page_size >> 10
            );
            return None;
        }
    }
    for k in &w.keys {
        assert!(
            cache.get(k).expect("get").is_some(),
            "{}: key {} was evicted while filling: give the cache more pages",
            w.size.name,
            String::from_utf8_lossy(k)
        );
    }
    Some(cache)
}

/// An LMDB environment in `dir` holding all of `w`'s values.
fn lmdb_store(dir: &TempDir, w: &Workload) -> (Env, Database<'static, Bytes, Bytes>) {
    let path = dir.path().join(format!("{}-lmdb", w.size.name));
    std::fs::create_dir(&path).expect("create the LMDB directory");
    let mut options = EnvOpenOptions::new();
    options.map_size(1 << 30);
    // SAFETY: NO_SYNC only gives up durability across a system crash, which a cache (and this
    // benchmark, whose files are deleted at the end) does not need.
    unsafe { options.flags(EnvFlags::NO_SYNC) };
    // SAFETY: the directory is new and private to this process, so no other environment has it
    // open and nothing else writes to its files.
    let env = unsafe { options.open(&path) }.expect("open the LMDB environment");
    let db = env
        .create_databases_and_commit(
            env.write_txn().expect("LMDB write transaction"),
            |opener, wtxn| {
                opener
                    .create_database::<Bytes, Bytes>(wtxn, None)
                    .map(CommitOrAbort::<_, ()>::Commit)
            },
        )
        .expect("create the LMDB database")
        .unwrap_commit();
    let mut wtxn = env.write_txn().expect("LMDB write transaction");
    for (k, v) in w.keys.iter().zip(&w.values) {
        db.put(&mut wtxn, k, v).expect("LMDB put");
    }
    wtxn.commit().expect("LMDB commit");
    (env, db)
}

/// A connection to our own `redis-server`, emptied and holding all of `w`'s values.
fn redis_fill(con: &mut redis::Connection, w: &Workload) {
    redis::cmd("FLUSHALL")
        .query::<()>(con)
        .expect("redis FLUSHALL");
    for (keys, values) in w.keys.chunks(256).zip(w.values.chunks(256)) {
        let mut pipe = redis::pipe();
        for (k, v) in keys.iter().zip(values) {
            pipe.cmd("SET").arg(&k[..]).arg(&v[..]).ignore();
        }
        pipe.query::<()>(con).expect("redis SET pipeline");
    }
}

fn redis_get(con: &mut redis::Connection, k: &[u8]) -> Vec<u8> {
    redis::cmd("GET")
        .arg(k)
        .query::<Option<Vec<u8>>>(con)
        .expect("redis GET")
        .expect("hit")
}

fn redis_set(con: &mut redis::Connection, k: &[u8], v: &[u8]) {
    redis::cmd("SET")
        .arg(k)
        .arg(v)
        .query::<()>(con)
        .expect("redis SET");
}

/// Our own `redis-server` and a connection to it, or `None` with a note printed.
fn redis_peer(dir: &TempDir) -> Option<(RedisServer, redis::Connection)> {
    let server = match RedisServer::start(dir.path(), Duration::from_secs(5)) {
        Ok(server) => server,
        Err(e) if std::env::var("FASTMMAP_REQUIRE_REDIS").is_ok_and(|v| v == "1") => {
            panic!("peers/*/*/*/redis: {e}, and FASTMMAP_REQUIRE_REDIS=1")
        }
        Err(e) => {
            eprintln!(
                "peers/*/*/*/redis SKIPPED: {e} (FASTMMAP_REQUIRE_REDIS=1 makes this a failure)"
            );
            return None;
        }
    };
    let con = match redis::Client::open(server.url.as_str())
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
    {
        Ok(con) => con,
        Err(e) if std::env::var("FASTMMAP_REQUIRE_REDIS").is_ok_and(|v| v == "1") => {
            panic!(
                "peers/*/*/*/redis: connecting to {}: {e}, and FASTMMAP_REQUIRE_REDIS=1",
                server.url
            )
        }
        Err(e) => {
            eprintln!(
                "peers/*/*/*/redis SKIPPED: connecting to {}: {e}",
                server.url
            );
            return None;
        }
    };
    Some((server, con))
}

fn peers(c: &mut Criterion<PeersClock>) {
    let dir = bench_dir();
    let mut redis = redis_peer(&dir);
    let mut g = c.benchmark_group("peers");
    for size in SIZES {
        let w = Workload::new(size);
        let caches: Vec<(&str, Cache)> = [
            ("fastmmap", None),
            ("fastmmap_fcntl", Some(LockKind::Fcntl)),
        ]
        .into_iter()
        .filter_map(|(name, kind)| Some((name, fastmmap_store(&dir, &w, name, kind)?)))
        .collect();
        let map: Mutex<HashMap<Vec<u8>, Vec<u8>>> = Mutex::new(
            w.keys
                .iter()
                .cloned()
                .zip(w.values.iter().cloned())
                .collect(),
        );
        let moka_vec: moka::sync::Cache<Vec<u8>, Vec<u8>> =
            moka::sync::Cache::new(2 * size.keys as u64);
        let moka_arc: moka::sync::Cache<Vec<u8>, Arc<[u8]>> =
            moka::sync::Cache::new(2 * size.keys as u64);
        for (k, v) in w.keys.iter().zip(&w.values) {
            moka_vec.insert(k.clone(), v.clone());
            moka_arc.insert(k.clone(), Arc::from(&v[..]));
        }
        moka_vec.run_pending_tasks();
        moka_arc.run_pending_tasks();
        let (env, db) = lmdb_store(&dir, &w);
        if let Some((_, con)) = &mut redis {
            redis_fill(con, &w);
        }

        for order in Order::ALL {
            let visits = w.visits(order);
            let get = |store: &str| format!("{}/get_hit/{}/{store}", size.name, order.name());
            for (name, cache) in &caches {
                g.bench_function(get(name), |b| {
                    cycle(b, &visits, |k, _| cache.get(k).expect("get").expect("hit"))
                });
            }
            g.bench_function(get("map"), |b| {
                cycle(b, &visits, |k, _| {
                    map.lock().unwrap().get(k).cloned().expect("hit")
                })
            });
            g.bench_function(get("moka_vec"), |b| {
                cycle(b, &visits, |k, _| moka_vec.get(k).expect("hit"))
            });
            g.bench_function(get("moka_arc"), |b| {
                cycle(b, &visits, |k, _| moka_arc.get(k).expect("hit"))
            });
            g.bench_function(get("lmdb_txn"), |b| {
                cycle(b, &visits, |k, _| {
                    let rtxn = env.read_txn().expect("LMDB read transaction");
                    db.get(&rtxn, k).expect("LMDB get").expect("hit").to_vec()
                })
            });
            g.bench_function(get("lmdb_reused"), |b| {
                let rtxn = env.read_txn().expect("LMDB read transaction");
                cycle(b, &visits, |k, _| {
                    db.get(&rtxn, k).expect("LMDB get").expect("hit").to_vec()
                })
            });
            if let Some((_, con)) = &mut redis {
                g.bench_function(get("redis"), |b| {
                    wall(b, &visits, |k, _| {
                        black_box(redis_get(con, k));
                    })
                });
            }
            g.bench_function(get("memcpy"), |b| {
                cycle(b, &visits, |_, i| w.values[i].to_vec())
            });

            let set = |store: &str| format!("{}/set_overwrite/{}/{store}", size.name, order.name());
            let other = &w.other_values;
            for (name, cache) in &caches {
                g.bench_function(set(name), |b| {
                    cycle(b, &visits, |k, i| cache.set(k, &other[i]).expect("set"))
                });
            }
            g.bench_function(set("map"), |b| {
                cycle(b, &visits, |k, i| {
                    map.lock().unwrap().insert(k.to_vec(), other[i].clone())
                })
            });
            g.bench_function(set("moka_vec"), |b| {
                cycle(b, &visits, |k, i| {
                    moka_vec.insert(k.to_vec(), other[i].clone())
                })
            });
            g.bench_function(set("moka_arc"), |b| {
                cycle(b, &visits, |k, i| {
                    moka_arc.insert(k.to_vec(), Arc::from(&other[i][..]))
                })
            });
            g.bench_function(set("lmdb_txn"), |b| {
                cycle(b, &visits, |k, i| {
                    let mut wtxn = env.write_txn().expect("LMDB write transaction");
                    db.put(&mut wtxn, k, &other[i]).expect("LMDB put");
                    wtxn.commit().expect("LMDB commit")
                })
            });
            if let Some((_, con)) = &mut redis {
                g.bench_function(set("redis"), |b| {
                    wall(b, &visits, |k, i| redis_set(con, k, &other[i]))
                });
            }
        }
    }
    g.finish();
}

/// Runs `op` on `iters` visits (in turn, from `start`) in each of `threads` threads, all
/// released together; returns the wall time divided by the thread count (time per op across
/// all threads).
fn in_threads(
    threads: usize,
    iters: u64,
    visits: &Visits<'_>,
    op: &(impl Fn(&[u8]) + Sync),
) -> Duration {
    let barrier = Barrier::new(threads + 1);
    let start = std::thread::scope(|s| {
        for t in 0..threads {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                op_loop(visits, t * visits.len() / threads, iters, op);
            });
        }
        barrier.wait();
        Instant::now()
    });
    start.elapsed() / threads as u32
}

fn op_loop(visits: &Visits<'_>, start: usize, iters: u64, op: &impl Fn(&[u8])) {
    let mut next = start;
    for _ in 0..iters {
        op(black_box(visits[next].0));
        next += 1;
        if next == visits.len() {
            next = 0;
        }
    }
}

/// Runs `iters` get hits here while a forked child does the same on the same cache file, both
/// released together; returns the wall time until both are done, divided by two.
fn in_two_processes(cache: &Cache, iters: u64, visits: &Visits<'_>) -> Duration {
    let get = |k: &[u8]| {
        black_box(cache.get(k).expect("get").expect("hit"));
    };
    // SAFETY: this process is single-threaded here (the thread benches joined their workers;
    // no store in this bench runs threads of its own); the child only reads the inherited
    // mapping.
    let elapsed = unsafe {
        fork::two_processes(
            || op_loop(visits, 0, iters, &get),
            || {
                op_loop(visits, visits.len() / 2, iters, &get);
                true
            },
        )
    };
    elapsed / 2
}

fn peers_threads(c: &mut Criterion<PeersClock>) {
    let dir = bench_dir();
    let w = Workload::new(SIZES[0]);
    let visits = w.visits(Order::Visiting);
    let open = |name: &str, stats: bool| {
        let (page_size, pages) = geometry(w.size);
        let cache = Cache::builder()
            .path(dir.path().join(name))
            .page_size(page_size)
            .num_pages(pages)
            .enable_stats(stats)
            .open()
            .expect("open a fastmmap cache");
        for (k, v) in w.keys.iter().zip(&w.values) {
            cache.set(k, v).expect("set");
        }
        cache
    };
    let stats_on = open("stats-on", true);
    let stats_off = open("stats-off", false);
    let map: Mutex<HashMap<Vec<u8>, Vec<u8>>> = Mutex::new(
        w.keys
            .iter()
            .cloned()
            .zip(w.values.iter().cloned())
            .collect(),
    );

    let mut g = c.benchmark_group("peers_threads");
    // Processes first, while this process has no threads but the main one.
    g.bench_function("get_hit/fastmmap/1_process", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            op_loop(&visits, 0, iters, &|k| {
                black_box(stats_on.get(k).expect("get").expect("hit"));
            });
            start.elapsed()
        })
    });
    g.bench_function("get_hit/fastmmap/2_processes", |b| {
        b.iter_custom(|iters| in_two_processes(&stats_on, iters, &visits))
    });
    for threads in [1, 2] {
        let suffix = if threads == 1 {
            "1_thread"
        } else {
            "2_threads"
        };
        for (name, cache) in [
            ("fastmmap_stats_on", &stats_on),
            ("fastmmap_stats_off", &stats_off),
        ] {
            g.bench_function(format!("get_hit/{name}/{suffix}"), |b| {
                b.iter_custom(|iters| {
                    in_threads(threads, iters, &visits, &|k| {
                        black_box(cache.get(k).expect("get").expect("hit"));
                    })
                })
            });
        }
        g.bench_function(format!("get_hit/map/{suffix}"), |b| {
            b.iter_custom(|iters| {
                in_threads(threads, iters, &visits, &|k| {
                    black_box(map.lock().unwrap().get(k).cloned().expect("hit"));
                })
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    // About 140 benches of 2.5 s each: a full run takes 6 to 8 minutes.
    config = Criterion::default()
        .with_measurement(PeersClock::from_env())
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = peers_threads, peers
}
criterion_main!(benches);
