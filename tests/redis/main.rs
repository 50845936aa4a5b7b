//! Redis behind the cache (feature `redis`), against a real `redis-server` started by each
//! test on a free loopback port (`server.rs`). Two hosts are two cache files in one test, each
//! with its own [`Listener`]; the multi-process tests fork workers on both.
//!
//! Every test takes `common::serial()` first: forking tests need no other test thread inside
//! a cache, and the timing of the invalidation tests is clearer alone.

#[path = "../common/mod.rs"]
mod common;
mod faults;
mod server;
#[cfg(feature = "session")]
mod sessions;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fastmmap::redis::{Listener, ListenerStatus, RedisBacking, RedisError, RedisOptions};
use fastmmap::{Cache, Error};
use redis::Commands;

use common::{Children, serial, temp_dir};
use server::RedisServer;

/// What the tests hold a host to: a write elsewhere is seen within this long. (The measured
/// bound is far lower — see `examples/redis_staleness.rs`; this one leaves room for a loaded
/// CI machine.)
const BOUND: Duration = Duration::from_millis(500);
/// How long a test waits for something that must happen but whose timing is not what it
/// tests (a listener counting an invalidation, a read-through copy settling): generous, for a
/// loaded machine.
const SETTLE: Duration = Duration::from_secs(10);
const NAMESPACE: &str = "t:";

/// One host: a cache file with Redis behind it, and its listener.
struct Host {
    path: PathBuf,
    cache: Cache,
    listener: Listener,
}

fn options(server: &RedisServer) -> RedisOptions {
    RedisOptions::new(&server.url())
        .expect("a valid URL")
        .namespace(NAMESPACE)
        .timeout(Duration::from_millis(500))
}

fn open_host(dir: &Path, name: &str, server: &RedisServer) -> Host {
    let path = dir.join(format!("{name}.cache"));
    let cache = Cache::builder()
        .path(&path)
        .num_pages(17)
        .page_size(16 * 1024)
        .backing(RedisBacking::new(options(server), &path))
        .open()
        .expect("open the cache");
    let listener = Listener::start(options(server), &cache).expect("start the listener");
    assert!(
        listener.wait_trusted(Duration::from_secs(5)),
        "{name}: listener not trusted: {:?}",
        listener.status()
    );
    Host {
        path,
        cache,
        listener,
    }
}

/// The value the host's file holds for `key`, without asking Redis.
fn local(host: &Host, key: &[u8]) -> Option<Vec<u8>> {
    host.cache.entry(key).expect("entry").map(|e| e.value)
}

/// Waits until `f` holds, at most `within`; whether it did.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > within {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn redis_error(e: &Error) -> &RedisError {
    match e {
        Error::Backing { source, .. } => source
            .downcast_ref::<RedisError>()
            .unwrap_or_else(|| panic!("not a Redis error: {e}")),
        _ => panic!("not a backing error: {e}"),
    }
}

#[test]
fn read_through_write_through_and_delete() {
    let _serial = serial();
    let Some(server) = RedisServer::start("read_through_write_through_and_delete") else {
        return;
    };
    let dir = temp_dir();
    let a = open_host(dir.path(), "a", &server);
    let mut r = server.conn();

    // Write-through: in Redis under the namespace, and in the file.
    assert!(a.cache.set(b"k", b"v1").unwrap());
    let v: Option<Vec<u8>> = r.get("t:k").unwrap();
    assert_eq!(v.as_deref(), Some(&b"v1"[..]));

    // Read-through: a key only Redis has.
    let _: () = r.set("t:only-in-redis", "r").unwrap();
    assert_eq!(
        a.cache.get(b"only-in-redis").unwrap().as_deref(),
        Some(&b"r"[..])
    );
    // Kept in the file (once the invalidation of that SET has come and gone).
    assert!(eventually(BOUND, || {
        a.cache.get(b"only-in-redis").unwrap();
        local(&a, b"only-in-redis").as_deref() == Some(&b"r"[..])
    }));

    // A miss everywhere.
    assert_eq!(a.cache.get(b"nowhere").unwrap(), None);

    // Delete: from Redis and from the file.
    assert!(a.cache.remove(b"k").unwrap() || local(&a, b"k").is_none());
    let v: Option<Vec<u8>> = r.get("t:k").unwrap();
    assert_eq!(v, None);
    assert_eq!(a.cache.get(b"k").unwrap(), None);

    // An expiry reaches Redis.
    a.cache
        .set_with(
            b"e",
            b"x",
            fastmmap::Expiry::After(Duration::from_secs(100)),
        )
        .unwrap();
    let ttl: i64 = r.pttl("t:e").unwrap();
    assert!((90_000..=100_000).contains(&ttl), "PTTL {ttl}");
    drop(a.listener);
}

#[test]
fn a_write_on_one_host_reaches_the_other_within_the_bound() {
    let _serial = serial();
    let Some(server) = RedisServer::start("a_write_on_one_host_reaches_the_other") else {
        return;
    };
    let dir = temp_dir();
    let a = open_host(dir.path(), "a", &server);
    let b = open_host(dir.path(), "b", &server);

    a.cache.set(b"user:1", b"ada").unwrap();
    // B reads it through, and serves it from its file from then on (once A's own
    // invalidation has come and gone).
    assert!(eventually(BOUND, || {
        b.cache.get(b"user:1").unwrap().as_deref() == Some(&b"ada"[..])
            && local(&b, b"user:1").as_deref() == Some(&b"ada"[..])
    }));

    a.cache.set(b"user:1", b"grace").unwrap();
    assert!(
        eventually(BOUND, || local(&b, b"user:1").is_none()),
        "B still holds the old value after {BOUND:?}"
    );
    assert_eq!(
        b.cache.get(b"user:1").unwrap().as_deref(),
        Some(&b"grace"[..])
    );

    // A change made behind both caches' backs (another application) is seen too.
    let _: () = server.conn().set("t:user:1", "hopper").unwrap();
    assert!(eventually(BOUND, || b
        .cache
        .get(b"user:1")
        .unwrap()
        .as_deref()
        == Some(&b"hopper"[..])));
    assert!(eventually(BOUND, || a
        .cache
        .get(b"user:1")
        .unwrap()
        .as_deref()
        == Some(&b"hopper"[..])));

    // A delete on one host ends the key on the other.
    b.cache.get(b"user:1").unwrap();
    a.cache.remove(b"user:1").unwrap();
    assert!(eventually(BOUND, || b
        .cache
        .get(b"user:1")
        .unwrap()
        .is_none()));

    // FLUSHALL in Redis empties both files.
    a.cache.set(b"x", b"1").unwrap();
    b.cache.get(b"x").unwrap();
    let _: () = redis::cmd("FLUSHALL").query(&mut server.conn()).unwrap();
    assert!(eventually(BOUND, || local(&b, b"x").is_none()
        && local(&a, b"x").is_none()));
    assert!(b.listener.invalidations() > 0);
}

/// Forked workers on two hosts: each key has one writer (on host A) publishing increasing
/// numbers; readers on host B never see a number older than the one published more than
/// [`BOUND`] ago; at the end every host reads the last number of every key.
#[test]
fn forked_workers_on_two_hosts_stay_within_the_bound() {
    let _serial = serial();
    let Some(server) = RedisServer::start("forked_workers_on_two_hosts") else {
        return;
    };
    let dir = temp_dir();
    let a = open_host(dir.path(), "a", &server);
    let b = open_host(dir.path(), "b", &server);
    let keys = 4usize;
    let writes = common::scaled(150, 3000) as u64;
    // The published numbers: key i's last acknowledged write and when (ms since start), in a
    // plain file every process reads.
    let board = common::Board::create(&dir.path().join("board"), keys);
    let start = Instant::now();
    let mut children = Children::new();
    for i in 0..keys {
        let (cache, board) = (a.cache.clone(), board.clone());
        children.spawn(move || {
            let key = format!("k{i}");
            for n in 1..=writes {
                cache
                    .set(key.as_bytes(), n.to_string().as_bytes())
                    .map_err(|e| e.to_string())?;
                board.publish(i, n, start.elapsed());
                std::thread::sleep(Duration::from_micros(500));
            }
            Ok(())
        });
    }
    for host in [&a, &b] {
        for r in 0..2 {
            let (cache, board) = (host.cache.clone(), board.clone());
            children.spawn(move || {
                let mut reads = 0u64;
                while board.read(keys - 1).0 < writes || reads < 100 {
                    let i = (reads as usize + r) % keys;
                    let (published, at) = board.read(i);
                    let now = start.elapsed();
                    let got = cache
                        .get(format!("k{i}").as_bytes())
                        .map_err(|e| e.to_string())?
                        .map(|v| String::from_utf8_lossy(&v).parse::<u64>().unwrap())
                        .unwrap_or(0);
                    if now > at + BOUND && got < published {
                        return Err(format!(
                            "k{i}: read {got}, but {published} was written {:?} before",
                            now - at
                        ));
                    }
                    reads += 1;
                }
                Ok(())
            });
        }
    }
    children.wait_all_ok();
    for host in [&a, &b] {
        for i in 0..keys {
            let key = format!("k{i}");
            assert!(
                eventually(BOUND, || host.cache.get(key.as_bytes()).unwrap()
                    == Some(writes.to_string().into_bytes())),
                "{}: {key} is not the last write",
                host.path.display()
            );
        }
    }
}

/// Redis dies in the middle of a run: writes fail with a Redis error and change nothing,
/// reads of keys not in the file fail, the files are cleared; Redis comes back: the
/// listeners resubscribe by themselves, and every acknowledged write is there.
#[test]
fn redis_down_and_back() {
    let _serial = serial();
    let Some(mut server) = RedisServer::start_durable("redis_down_and_back") else {
        return;
    };
    let dir = temp_dir();
    let a = open_host(dir.path(), "a", &server);
    let b = open_host(dir.path(), "b", &server);
    for i in 0..20 {
        a.cache.set(format!("k{i}").as_bytes(), b"before").unwrap();
    }
    assert_eq!(b.cache.get(b"k1").unwrap().as_deref(), Some(&b"before"[..]));

    server.kill();
    // The listeners notice and clear their files.
    for host in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(3), || matches!(
                host.listener.status(),
                ListenerStatus::Down(_)
            )),
            "listener still {:?}",
            host.listener.status()
        );
        assert_eq!(
            local(host, b"k1"),
            None,
            "a distrusted file must be cleared"
        );
    }
    // Writes fail clearly and leave the files alone.
    let e = a.cache.set(b"k1", b"during").unwrap_err();
    redis_error(&e);
    assert!(e.to_string().contains("redis 127.0.0.1:"), "{e}");
    assert_eq!(local(&a, b"k1"), None);
    assert!(
        redis_error(&a.cache.remove(b"k2").unwrap_err())
            .server
            .contains("127.0.0.1")
    );
    // Reads of what the file does not hold fail.
    redis_error(&b.cache.get(b"k3").unwrap_err());

    server.restart();
    for host in [&a, &b] {
        assert!(
            host.listener.wait_trusted(Duration::from_secs(5)),
            "no recovery: {:?}",
            host.listener.status()
        );
        assert!(host.listener.connections() >= 2);
    }
    // Every write that returned Ok survived; the failed ones did not happen.
    for i in 0..20 {
        assert_eq!(
            b.cache.get(format!("k{i}").as_bytes()).unwrap().as_deref(),
            Some(&b"before"[..]),
            "k{i}"
        );
    }
    // And invalidation works again.
    a.cache.set(b"k1", b"after").unwrap();
    assert!(eventually(BOUND, || b.cache.get(b"k1").unwrap().as_deref()
        == Some(&b"after"[..])));
}

/// Workers keep writing while Redis is killed and restarted: every write that returned Ok is
/// in Redis afterwards (each worker's last acknowledged number), and the hosts recover
/// without help.
#[test]
fn no_acknowledged_write_is_lost_across_a_restart() {
    let _serial = serial();
    let Some(mut server) = RedisServer::start_durable("no_acknowledged_write_is_lost") else {
        return;
    };
    let dir = temp_dir();
    let a = open_host(dir.path(), "a", &server);
    let b = open_host(dir.path(), "b", &server);
    let workers = 4usize;
    let board = common::Board::create(&dir.path().join("board"), workers);
    let stop = common::Board::create(&dir.path().join("stop"), 1);
    let start = Instant::now();
    let mut children = Children::new();
    for w in 0..workers {
        let host = if w % 2 == 0 { &a } else { &b };
        let (cache, board, stop) = (host.cache.clone(), board.clone(), stop.clone());
        children.spawn(move || {
            let key = format!("w{w}");
            let mut n = 0u64;
            let mut failures = 0u64;
            while stop.read(0).0 == 0 {
                match cache.set(key.as_bytes(), (n + 1).to_string().as_bytes()) {
                    Ok(_) => {
                        n += 1;
                        board.publish(w, n, start.elapsed());
                    }
                    Err(e) => {
                        redis_error(&e);
                        failures += 1;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            common::raw_eprint(&format!(
                "worker {w}: {n} acknowledged, {failures} failed\n"
            ));
            Ok(())
        });
    }
    std::thread::sleep(Duration::from_millis(200));
    server.kill();
    std::thread::sleep(Duration::from_millis(300));
    server.restart();
    std::thread::sleep(Duration::from_millis(300));
    stop.publish(0, 1, start.elapsed());
    children.wait_all_ok();
    let mut r = server.conn();
    for w in 0..workers {
        let (acked, _) = board.read(w);
        assert!(acked > 0, "worker {w} never wrote");
        let v: Option<String> = r.get(format!("t:w{w}")).unwrap();
        let in_redis: u64 = v.expect("the key survived").parse().unwrap();
        // An unacknowledged write may have landed too (the reply was lost), never fewer.
        assert!(
            in_redis >= acked,
            "w{w}: Redis has {in_redis}, {acked} was acknowledged"
        );
        assert!(
            in_redis <= acked + 1,
            "w{w}: Redis has {in_redis}, only {acked} was acked"
        );
    }
    for host in [&a, &b] {
        assert!(host.listener.wait_trusted(Duration::from_secs(5)));
    }
}

#[test]
fn a_listener_in_a_forked_child_is_left_alone() {
    // A Listener value copied into a forked child must not try to stop the parent's thread.
    let _serial = serial();
    let Some(server) = RedisServer::start("a_listener_in_a_forked_child") else {
        return;
    };
    let dir = temp_dir();
    let a = open_host(dir.path(), "a", &server);
    let mut children = Children::new();
    let listener = a.listener;
    children.spawn(move || {
        // Its thread is the parent's: the child's copy reports it stopped (without the
        // status lock, which the fork may have copied held).
        if !matches!(listener.status(), ListenerStatus::Stopped) {
            return Err(format!("child sees {:?}", listener.status()));
        }
        drop(listener);
        Ok(())
    });
    children.wait_all_ok();
}

/// Redis stays up but the listener's connection is killed: the host clears its file,
/// resubscribes by itself, and a change made meanwhile is not served stale afterwards.
#[test]
fn a_killed_listener_connection_is_replaced() {
    let _serial = serial();
    let Some(server) = RedisServer::start("a_killed_listener_connection_is_replaced") else {
        return;
    };
    let dir = temp_dir();
    let a = open_host(dir.path(), "a", &server);
    let b = open_host(dir.path(), "b", &server);
    a.cache.set(b"k", b"old").unwrap();
    assert!(eventually(BOUND, || {
        b.cache.get(b"k").unwrap();
        local(&b, b"k").is_some()
    }));
    let before = b.listener.connections();
    let mut r = server.conn();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut r)
        .unwrap();
    // Changed behind B's back while its listener may be down.
    let _: () = r.set("t:k", "new").unwrap();
    assert!(eventually(Duration::from_secs(5), || b
        .listener
        .connections()
        > before));
    assert!(b.listener.wait_trusted(Duration::from_secs(5)));
    assert_eq!(b.cache.get(b"k").unwrap().as_deref(), Some(&b"new"[..]));
    assert_eq!(a.cache.get(b"k").unwrap().as_deref(), Some(&b"new"[..]));
}

/// Without a running listener a host keeps nothing in its file: every read goes to Redis,
/// so nothing can be stale. (Stopping a listener distrusts the host and clears the file; a
/// listener whose process died leaves a heartbeat that goes stale after two seconds, and
/// from then on the copies left in the file are not served.)
#[test]
fn without_a_listener_nothing_is_kept() {
    let _serial = serial();
    let Some(server) = RedisServer::start("without_a_listener_nothing_is_kept") else {
        return;
    };
    let dir = temp_dir();
    let a = open_host(dir.path(), "a", &server);
    let Host {
        cache: b, listener, ..
    } = open_host(dir.path(), "b", &server);
    a.cache.set(b"k", b"1").unwrap();
    assert!(eventually(BOUND, || {
        b.get(b"k").unwrap();
        b.entry(b"k").unwrap().is_some()
    }));
    drop(listener);
    assert_eq!(
        b.entry(b"k").unwrap(),
        None,
        "a stopped listener clears the file"
    );
    assert_eq!(b.get(b"k").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(
        b.entry(b"k").unwrap(),
        None,
        "nothing kept without a listener"
    );
    a.cache.set(b"k", b"2").unwrap();
    assert_eq!(b.get(b"k").unwrap().as_deref(), Some(&b"2"[..]));

    // A listener in a process that dies (SIGKILL): its heartbeat stops.
    let mut children = Children::new();
    let b2 = b.clone();
    let opts = options(&server);
    let pid = children.spawn(move || {
        let l = Listener::start(opts, &b2).map_err(|e| e.to_string())?;
        if !l.wait_trusted(Duration::from_secs(5)) {
            return Err("not trusted".into());
        }
        std::thread::sleep(Duration::from_secs(60));
        Ok(())
    });
    assert!(
        eventually(Duration::from_secs(5), || {
            b.get(b"k").unwrap();
            b.entry(b"k").unwrap().is_some()
        }),
        "the child's listener lets the host keep values"
    );
    assert_eq!(b.entry(b"k").unwrap().unwrap().value, b"2");
    children.kill(pid);
    // Changed while no listener of B's is there to hear of it: B's file still holds "2".
    std::thread::sleep(Duration::from_millis(200));
    a.cache.set(b"k", b"3").unwrap();
    assert_eq!(b.entry(b"k").unwrap().unwrap().value, b"2");
    std::thread::sleep(Duration::from_millis(2100));
    // Once the heartbeat is stale, B's copies are not served: the stale one is dropped and
    // Redis read instead.
    assert_eq!(b.get(b"k").unwrap().as_deref(), Some(&b"3"[..]));
    assert_eq!(
        b.entry(b"k").unwrap(),
        None,
        "the untrusted copy is dropped"
    );
    // Nothing new is kept either.
    let other = b"k-other";
    a.cache.set(other, b"x").unwrap();
    assert_eq!(b.get(other).unwrap().as_deref(), Some(&b"x"[..]));
    assert_eq!(
        b.entry(other).unwrap(),
        None,
        "a dead listener's host keeps nothing new"
    );
}

#[test]
fn a_password_in_the_url_stays_out_of_messages() {
    let o = RedisOptions::new("redis://user:s3cret@127.0.0.1:1/2")
        .unwrap()
        .timeout(Duration::from_millis(200));
    assert_eq!(o.server(), "127.0.0.1:1/2");
    assert!(!format!("{o:?}").contains("s3cret"));
    let dir = temp_dir();
    let path = dir.path().join("c");
    let cache = Cache::builder()
        .path(&path)
        .backing(RedisBacking::new(o, &path))
        .open()
        .unwrap();
    let e = cache.set(b"k", b"v").unwrap_err();
    assert!(!e.to_string().contains("s3cret"), "{e}");
    assert!(redis_error(&e).server.contains("127.0.0.1:1"));
}
