//! Faults of the Redis tier: expiry kept by the near cache while Redis is slow to evict,
//! and a hung (SIGSTOPped) server that must fail each call on time, saying so.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fastmmap::{Cache, Expiry};
use redis::Commands;

use super::common::{serial, temp_dir};
use super::server::RedisServer;
use super::{NAMESPACE, eventually, open_host, options, redis_error};

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// 100,000 keys outside the namespace, each with a time to live of ten minutes, so that
/// Redis's active expiry samples them rather than the test's keys; one script, bounded.
fn crowd_with_ttl_keys(server: &RedisServer) {
    let mut r = server.conn();
    let start = Instant::now();
    let n: i64 = redis::cmd("EVAL")
        .arg(
            "for i = 1, tonumber(ARGV[1]) do \
             redis.call('SET', 'crowd:' .. i, 'x', 'PX', 600000) end \
             return redis.call('DBSIZE')",
        )
        .arg(0)
        .arg(100_000)
        .query(&mut r)
        .expect("fill Redis");
    assert!(n >= 100_000, "only {n} keys");
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "filling took {:?}",
        start.elapsed()
    );
}

#[test]
fn no_host_serves_a_value_after_redis_expired_it() {
    let _serial = serial();
    let Some(server) = RedisServer::start("no_host_serves_a_value_after_redis_expired_it") else {
        return;
    };
    crowd_with_ttl_keys(&server);
    let dir = temp_dir();
    let a = open_host(dir.path(), "a", &server);
    let b = open_host(dir.path(), "b", &server);
    let mut r = server.conn();

    // A write with an expiry on A, and a key given a time to live in Redis directly.
    assert!(
        a.cache
            .set_with(b"short", b"v", Expiry::After(Duration::from_secs(3)))
            .unwrap()
    );
    let _: () = redis::cmd("SET")
        .arg(format!("{NAMESPACE}direct"))
        .arg("d")
        .arg("PX")
        .arg(3500)
        .query(&mut r)
        .unwrap();
    let mut redis_expiry = Vec::new();
    for (key, value) in [(&b"short"[..], &b"v"[..]), (b"direct", b"d")] {
        let at: i64 = redis::cmd("PEXPIRETIME")
            .arg([NAMESPACE.as_bytes(), key].concat())
            .query(&mut r)
            .unwrap();
        assert!(at > 0, "Redis keeps an expiry for {key:?}");
        if key == b"short" {
            assert_eq!(
                at % 1000,
                0,
                "a write's expiry is the whole second the file keeps"
            );
        }
        // Both hosts hold a read-through copy (once the invalidation of the write is past).
        // The listener may still drop a copy made before it read that invalidation, so the
        // copy checked is the one the wait found, not a second look (which found none under
        // load); the wait ends at the latest when Redis expires the key.
        for host in [&a, &b] {
            let mut copy = None;
            let left = (at - unix_ms(SystemTime::now())).max(0) as u64;
            assert!(
                eventually(Duration::from_millis(left), || {
                    host.cache.get(key).unwrap();
                    copy = host.cache.entry(key).unwrap().filter(|e| e.value == value);
                    copy.is_some()
                }),
                "no local copy of {key:?} before Redis expired it"
            );
            let copy = copy.expect("the copy the wait found");
            let copy_at = unix_ms(copy.expires_at.expect("the copy expires"));
            assert!(
                copy_at <= at,
                "{key:?}: the copy expires at {copy_at} ms, after Redis's {at} ms"
            );
        }
        redis_expiry.push((key, value, at));
    }
    // Until Redis's expiry a host may serve the value; from then on, never (whether or not
    // Redis has evicted the key and said so).
    let last = redis_expiry.iter().map(|e| e.2).max().unwrap();
    let mut served_after = Vec::new();
    let mut checks = 0;
    while unix_ms(SystemTime::now()) < last + 2000 {
        for &(key, value, at) in &redis_expiry {
            for (name, host) in [("a", &a), ("b", &b)] {
                let before = unix_ms(SystemTime::now());
                let got = host.cache.get(key).unwrap();
                // Redis's own rule: expired once its clock is past the expiry.
                if before > at {
                    checks += 1;
                    if got.as_deref() == Some(value) {
                        served_after.push((name, key, before - at));
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(checks > 0);
    assert!(
        served_after.is_empty(),
        "values served after Redis expired them (host, key, ms late): {served_after:?}"
    );
    let _: () = r.del("crowd:1").unwrap();
}

#[test]
fn a_hung_redis_fails_each_call_on_time_and_says_it_timed_out() {
    let _serial = serial();
    let Some(server) = RedisServer::start("a_hung_redis_fails_each_call_on_time") else {
        return;
    };
    let timeout = Duration::from_secs(1);
    let redis = options(&server).timeout(timeout);
    let dir = temp_dir();
    let path = dir.path().join("fresh.cache");
    let cache = Cache::builder()
        .path(&path)
        .backing(fastmmap::redis::RedisBacking::new(redis.clone(), &path))
        .open()
        .unwrap();
    // A pooled connection too: one call before the server hangs.
    assert_eq!(cache.get(b"warm").unwrap(), None);

    server.pause();
    let upper = timeout.mul_f64(1.1) + Duration::from_millis(200);
    let check = |what: &str, op: &str, call: &dyn Fn() -> fastmmap::Error| {
        let start = Instant::now();
        let e = call();
        let took = start.elapsed();
        eprintln!("{what}: failed after {took:?} (timeout {timeout:?})");
        assert!(
            took >= timeout && took <= upper,
            "{what}: failed after {took:?}, not within [{timeout:?}, {upper:?}]: {e}"
        );
        let text = e.to_string();
        assert!(redis_error(&e).is_timeout(), "{what}: {text}");
        assert!(text.contains("timed out"), "{what}: {text}");
        assert!(text.contains(redis.server()), "{what}: {text}");
        assert!(text.contains(op), "{what}: {text}");
        assert!(!text.contains("os error"), "{what}: {text}");
    };
    // On the pooled connection, and on fresh ones (connecting included in the deadline).
    check("get, pooled", "GET", &|| cache.get(b"k1").unwrap_err());
    check("get, fresh", "GET", &|| cache.get(b"k2").unwrap_err());
    check("set", "SET", &|| cache.set(b"k3", b"v").unwrap_err());
    check("remove", "DEL", &|| cache.remove(b"k4").unwrap_err());
    let other = dir.path().join("other.cache");
    let fresh = Cache::builder()
        .path(&other)
        .backing(fastmmap::redis::RedisBacking::new(
            redis.clone().namespace("x:"),
            &other,
        ))
        .open()
        .unwrap();
    check("a fresh cache's get", "GET", &|| {
        fresh.get(b"k").unwrap_err()
    });

    #[cfg(feature = "session")]
    {
        use fastmmap::session::{Client, SessionStore};
        let store = SessionStore::builder()
            .path(dir.path().join("sessions.cache"))
            .redis(redis.clone().namespace("s:"))
            .build()
            .unwrap();
        let id = store.id_format().generate().unwrap();
        let start = Instant::now();
        let e = store.load(Some(&id), &Client::new()).unwrap_err();
        let took = start.elapsed();
        assert!(
            took >= timeout && took <= upper,
            "session load: failed after {took:?}, not within [{timeout:?}, {upper:?}]: {e}"
        );
        let text = e.to_string();
        assert!(text.contains("timed out"), "{text}");
        assert!(text.contains(redis.server()), "{text}");
        assert!(!text.contains(id.as_str()), "{text}");
    }

    server.resume();
    assert!(
        eventually(Duration::from_secs(5), || cache.get(b"k1").is_ok()),
        "Redis answers again"
    );
    cache.set(b"k1", b"after").unwrap();
    assert_eq!(cache.get(b"k1").unwrap().as_deref(), Some(&b"after"[..]));
}
