//! The Redis tier on loopback: a near-cache hit against a Redis `GET` round trip, a read
//! through a miss, a write-through, a session load; and (printed once) the hit ratio of a
//! two-host workload. Needs `redis-server` on the PATH (it starts its own on a free port);
//! without one it says so and measures nothing.
//!
//! ```text
//! cargo bench --features redis,session --bench redis
//! ```

use std::hint::black_box;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use fastmmap::Cache;
use fastmmap::redis::{Listener, RedisBacking, RedisOptions};
use fastmmap::session::{Client, SessionStore};
use tempfile::TempDir;

const KEYS: usize = 1000;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<(String, Server)> {
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = match Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => Server(child),
        Err(e) => {
            eprintln!("SKIPPED benches/redis.rs: cannot start redis-server: {e}");
            return None;
        }
    };
    let url = format!("redis://127.0.0.1:{port}/");
    let client = redis::Client::open(url.as_str()).ok()?;
    let start = Instant::now();
    while client.get_connection().is_err() {
        if start.elapsed() > Duration::from_secs(5) {
            eprintln!("SKIPPED benches/redis.rs: redis-server did not come up");
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some((url, child))
}

fn dir() -> TempDir {
    if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").expect("temp dir")
    } else {
        tempfile::tempdir().expect("temp dir")
    }
}

/// A host: a cache file with Redis behind it and its listener.
fn host(dir: &TempDir, name: &str, options: &RedisOptions) -> (Cache, Listener) {
    let path = dir.path().join(name);
    let cache = Cache::builder()
        .path(&path)
        .enable_stats(true)
        .backing(RedisBacking::new(options.clone(), &path))
        .open()
        .expect("open");
    let listener = Listener::start(options.clone(), &cache).expect("listener");
    assert!(listener.wait_trusted(Duration::from_secs(5)));
    (cache, listener)
}

/// A small deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("key:{i:06}").into_bytes()
}

/// Two hosts behind a round-robin balancer, 95% reads and 5% writes over KEYS keys with a
/// skew (half of the requests go to a tenth of the keys): the share of reads each host
/// serves from its file.
fn two_host_hit_ratio(a: &Cache, b: &Cache) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    a.reset_stats().unwrap();
    b.reset_stats().unwrap();
    let requests = 50_000;
    let start = Instant::now();
    for r in 0..requests {
        let host = if r % 2 == 0 { a } else { b };
        let k = if rng.below(2) == 0 {
            rng.below(KEYS / 10)
        } else {
            rng.below(KEYS)
        };
        if rng.below(100) < 5 {
            host.set(&key(k), format!("v{r}").as_bytes()).unwrap();
        } else {
            black_box(host.get(&key(k)).unwrap());
        }
    }
    let took = start.elapsed();
    let (sa, sb) = (a.stats().unwrap(), b.stats().unwrap());
    let (reads, hits) = (sa.reads + sb.reads, sa.hits + sb.hits);
    println!(
        "two hosts, 95% reads / 5% writes, {KEYS} skewed keys, {requests} requests: \
         {:.1}% of reads served from the host's file; {:.1} µs per request",
        100.0 * hits as f64 / reads as f64,
        took.as_secs_f64() * 1e6 / requests as f64
    );
}

/// Two hosts serving one user's session, alternately: a load per request, a save every
/// fifth.
fn two_host_sessions(dir: &TempDir, options: &RedisOptions) -> (SessionStore, SessionStore) {
    let store = |name: &str| {
        let cache = Cache::builder()
            .path(dir.path().join(name))
            .enable_stats(true)
            .open()
            .unwrap();
        let opts = options.clone().namespace("bench-sessions:");
        let listener = Listener::start(opts.clone(), &cache).unwrap();
        assert!(listener.wait_trusted(Duration::from_secs(5)));
        std::mem::forget(listener); // lives as long as the bench
        SessionStore::builder()
            .cache(cache)
            .redis(opts)
            .build()
            .unwrap()
    };
    let (a, b) = (store("sa"), store("sb"));
    let client = Client::new();
    let mut s = a.load(None, &client).unwrap();
    s.insert("user", "ada").unwrap();
    a.save(&mut s).unwrap();
    let id = *s.id();
    a.cache().reset_stats().unwrap();
    b.cache().reset_stats().unwrap();
    let requests = 5_000;
    let start = Instant::now();
    for r in 0..requests {
        let store = if r % 2 == 0 { &a } else { &b };
        let mut s = store.load(Some(&id), &client).unwrap();
        if r % 5 == 0 {
            s.insert("n", &r).unwrap();
            store.save(&mut s).unwrap();
        }
    }
    let took = start.elapsed();
    let (sa, sb) = (a.cache().stats().unwrap(), b.cache().stats().unwrap());
    let (reads, hits) = (sa.reads + sb.reads, sa.hits + sb.hits);
    println!(
        "two hosts, one session, alternating, a save every fifth request: {:.1} µs per \
         request; record reads served from the host's file: {hits} of {reads} (a save's first read; \
         loads themselves are atomic updates in Redis)",
        took.as_secs_f64() * 1e6 / requests as f64
    );
    (a, b)
}

fn benches(c: &mut Criterion) {
    let Some((url, _server)) = start_redis() else {
        return;
    };
    let dir = dir();
    let options = RedisOptions::new(&url).unwrap().namespace("bench:");
    let (a, _la) = host(&dir, "a", &options);
    let (b, _lb) = host(&dir, "b", &options);
    for i in 0..KEYS {
        a.set(&key(i), &[b'x'; 100]).unwrap();
    }
    // Let A's own invalidations pass, then warm B's file.
    std::thread::sleep(Duration::from_millis(100));
    for i in 0..KEYS {
        b.get(&key(i)).unwrap();
    }
    two_host_hit_ratio(&a, &b);
    let (sa, _sb) = two_host_sessions(&dir, &options);

    let mut g = c.benchmark_group("redis");
    let k = key(7);
    b.get(&k).unwrap();
    g.bench_function("near_cache_hit", |bch| {
        bch.iter(|| black_box(b.get(black_box(&k)).unwrap()))
    });
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let rk = [b"bench:".as_slice(), &k].concat();
    g.bench_function("redis_get_round_trip", |bch| {
        bch.iter(|| {
            let v: Option<Vec<u8>> = redis::cmd("GET").arg(&rk).query(&mut conn).unwrap();
            black_box(v)
        })
    });
    // A plain cache file without Redis, for the miss path: read-through of a key the file
    // has just dropped.
    g.bench_function("read_through_miss", |bch| {
        bch.iter(|| {
            let _ = b.entry(&k); // keep the key in play
            // Drop B's copy locally: a remove through a plain handle.
            plain(&b).remove(&k).unwrap();
            black_box(b.get(&k).unwrap())
        })
    });
    g.bench_function("write_through_set", |bch| {
        bch.iter(|| a.set(black_box(b"bench-write"), &[b'y'; 100]).unwrap())
    });
    let client = Client::new();
    let mut s = sa.load(None, &client).unwrap();
    s.insert("user", "ada").unwrap();
    sa.save(&mut s).unwrap();
    let id = *s.id();
    g.bench_function("session_load", |bch| {
        bch.iter(|| black_box(sa.load(Some(&id), &client).unwrap()))
    });
    g.finish();
}

/// A handle on `cache`'s file without the backing store.
fn plain(cache: &Cache) -> Cache {
    thread_local! {
        static PLAIN: std::cell::OnceCell<Cache> = const { std::cell::OnceCell::new() };
    }
    PLAIN.with(|p| {
        p.get_or_init(|| Cache::builder().path(cache.path()).open().unwrap())
            .clone()
    })
}

criterion_group! {
    name = group;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(group);
