//! Measures the staleness bound of the Redis tier: how long after a write on host A returned
//! host B's cache file still holds the old value.
//!
//! Two hosts are two cache files here, each with its own listener, on one Redis server:
//! `REDIS_URL` if set, else a `redis-server` this program starts on a free loopback port.
//! Each round: B reads the key (so its file holds it), A writes a new value, and B's file
//! is polled until the key is gone. Prints percentiles of (write returned → gone from B's
//! file) and of (write started → gone).
//!
//! ```text
//! cargo run --release --features redis --example redis_staleness [ROUNDS]
//! ```

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fastmmap::Cache;
use fastmmap::redis::{Listener, RedisBacking, RedisOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2000);
    let (url, _server) = match std::env::var("REDIS_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let (url, child) = start_redis()?;
            (url, Some(Server(child)))
        }
    };
    let dir = tempfile::tempdir_in(if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    })?;
    let options = RedisOptions::new(&url)?.namespace("staleness:");
    let host = |name: &str| -> Result<(Cache, Listener), Box<dyn std::error::Error>> {
        let path = dir.path().join(name);
        let cache = Cache::builder()
            .path(&path)
            .backing(RedisBacking::new(options.clone(), &path))
            .open()?;
        let listener = Listener::start(options.clone(), &cache)?;
        if !listener.wait_trusted(Duration::from_secs(5)) {
            return Err(format!("listener not up: {:?}", listener.status()).into());
        }
        Ok((cache, listener))
    };
    let (a, _la) = host("a.cache")?;
    let (b, _lb) = host("b.cache")?;

    a.set(b"staleness-key", b"initial")?;
    let mut after_ack = Vec::with_capacity(rounds);
    let mut after_start = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let key = b"staleness-key";
        // B holds the current value in its file (A's own write's invalidation may take it
        // away once more: read until it stays).
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.entry(key)?.is_none() {
            b.get(key)?;
            if Instant::now() > deadline {
                return Err("B never kept the key".into());
            }
        }
        let value = round.to_string();
        let started = Instant::now();
        a.set(key, value.as_bytes())?;
        let acked = Instant::now();
        let deadline = acked + Duration::from_secs(5);
        while b.entry(key)?.is_some_and(|e| e.value != value.as_bytes()) {
            if Instant::now() > deadline {
                return Err("B kept the old value for 5 s".into());
            }
            std::hint::spin_loop();
        }
        let gone = Instant::now();
        after_ack.push(gone - acked);
        after_start.push(gone - started);
    }
    println!("{rounds} rounds on {url}");
    report("write returned -> gone from B's file", &mut after_ack);
    report("write started  -> gone from B's file", &mut after_start);
    Ok(())
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what}: p50 {:?}  p99 {:?}  p99.9 {:?}  max {:?}",
        at(0.5),
        at(0.99),
        at(0.999),
        samples[samples.len() - 1]
    );
}

/// The `redis-server` this program started: killed when done, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `redis-server` on a free loopback port, without persistence.
fn start_redis() -> Result<(String, Child), Box<dyn std::error::Error>> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start redis-server (set REDIS_URL instead): {e}"))?;
    let url = format!("redis://127.0.0.1:{port}/");
    let client = redis::Client::open(url.as_str())?;
    let start = Instant::now();
    while client.get_connection().is_err() {
        if start.elapsed() > Duration::from_secs(5) {
            return Err("redis-server did not come up".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((url, child))
}
