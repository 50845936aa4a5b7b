//! Sessions across hosts: a `SessionStore` per host over its own cache file, all in one Redis
//! (the source of truth), each host with its listener.

use std::time::Duration;

use fastmmap::Cache;
use fastmmap::redis::Listener;
use fastmmap::session::{Client, NewReason, Origin, SessionStore};

use super::common::{Children, serial, temp_dir};
use super::server::RedisServer;
use super::{BOUND, SETTLE, eventually, options};

struct SessionHost {
    store: SessionStore,
    listener: Listener,
}

fn session_host(dir: &std::path::Path, name: &str, server: &RedisServer) -> SessionHost {
    let cache = Cache::builder()
        .path(dir.join(format!("{name}.sessions")))
        .open()
        .expect("open the session cache");
    let options = options(server).namespace("s:");
    let listener = Listener::start(options.clone(), &cache).expect("start the listener");
    assert!(listener.wait_trusted(Duration::from_secs(5)));
    let store = SessionStore::builder()
        .cache(cache)
        .redis(options)
        .build()
        .expect("build the store");
    SessionHost { store, listener }
}

#[test]
fn a_session_follows_the_user_from_host_to_host() {
    let _serial = serial();
    let Some(server) = RedisServer::start("a_session_follows_the_user") else {
        return;
    };
    let dir = temp_dir();
    let a = session_host(dir.path(), "a", &server);
    let b = session_host(dir.path(), "b", &server);
    let client = Client::new();

    // Logged in on A.
    let mut s = a.store.load(None, &client).unwrap();
    s.insert("user", "ada").unwrap();
    a.store.save(&mut s).unwrap();
    let id = *s.id();

    // The next request lands on B: the same session.
    let s = b.store.load(Some(&id), &client).unwrap();
    assert_eq!(s.origin(), &Origin::Loaded);
    assert_eq!(s.get::<String>("user").unwrap().as_deref(), Some("ada"));

    // A change on B is what A loads next.
    let mut s = b.store.load(Some(&id), &client).unwrap();
    s.insert("cart", &3).unwrap();
    b.store.save(&mut s).unwrap();
    let s = a.store.load(Some(&id), &client).unwrap();
    assert_eq!(s.get::<u32>("cart").unwrap(), Some(3));

    // Logout on A ends the session on B too.
    let heard = b.listener.invalidations();
    assert!(a.store.delete(&id).unwrap());
    assert!(eventually(BOUND, || {
        let s = b.store.load(Some(&id), &client).unwrap();
        s.origin() == &Origin::New(NewReason::Unknown)
    }));
    // B held no copy (its own save dropped it), so its load asked Redis and the wait above
    // may end before B's listener has read the invalidation of the delete, which it counts
    // on its own thread: waited for, not assumed (under load it came after the load).
    assert!(
        eventually(SETTLE, || b.listener.invalidations() > heard),
        "B's listener never counted an invalidation after the logout"
    );
}

/// The Redis tier writes the records itself: a cache that has a backing store of its own
/// is refused, with a reason, rather than writing every record twice.
#[test]
fn a_cache_with_a_backing_store_is_refused_under_a_redis_tier() {
    let dir = temp_dir();
    let path = dir.path().join("backed.sessions");
    let options = fastmmap::redis::RedisOptions::new("redis://127.0.0.1:1/").unwrap();
    let cache = Cache::builder()
        .path(&path)
        .backing(fastmmap::redis::RedisBacking::new(options.clone(), &path))
        .open()
        .unwrap();
    assert!(cache.has_backing());
    let e = SessionStore::builder()
        .cache(cache)
        .redis(options)
        .build()
        .unwrap_err();
    assert!(
        matches!(e, fastmmap::session::Error::InvalidOptions { .. })
            && e.to_string().contains("backing"),
        "{e}"
    );
}

/// A session update whose closure uses the store again gets `Reentrant` at once, as with a
/// local store, instead of waiting for the session's lock in Redis until its lease runs out.
#[test]
fn a_reentrant_update_is_an_error_not_a_wait() {
    let _serial = serial();
    let Some(server) = RedisServer::start("a_reentrant_update") else {
        return;
    };
    let dir = temp_dir();
    let a = session_host(dir.path(), "a", &server);
    let client = Client::new();
    let mut s = a.store.load(None, &client).unwrap();
    s.insert("n", &1).unwrap();
    a.store.save(&mut s).unwrap();
    let id = *s.id();
    let inner = a
        .store
        .update(&id, |s| {
            s.insert("n", &2).unwrap();
            a.store.update(&id, |_| ()).map(|_| ())
        })
        .unwrap()
        .expect("a live session");
    match inner {
        Err(fastmmap::session::Error::Cache(fastmmap::Error::Reentrant { .. })) => {}
        other => panic!("expected Reentrant, got {other:?}"),
    }
    // The outer update went through.
    let s = a.store.load(Some(&id), &client).unwrap();
    assert_eq!(s.get::<u32>("n").unwrap(), Some(2));
}

/// Forked workers on two hosts increment one session counter with `SessionStore::update`:
/// no increment is lost (each is atomic in Redis).
#[test]
fn concurrent_updates_from_two_hosts_lose_nothing() {
    let _serial = serial();
    let Some(server) = RedisServer::start("concurrent_updates_from_two_hosts") else {
        return;
    };
    let dir = temp_dir();
    let a = session_host(dir.path(), "a", &server);
    let b = session_host(dir.path(), "b", &server);
    let mut s = a.store.load(None, &Client::new()).unwrap();
    s.insert("n", &0u64).unwrap();
    a.store.save(&mut s).unwrap();
    let id = *s.id();
    let per_worker = super::common::scaled(50, 1000) as u64;
    let mut children = Children::new();
    for w in 0..4 {
        let store = if w % 2 == 0 {
            a.store.clone()
        } else {
            b.store.clone()
        };
        children.spawn(move || {
            for _ in 0..per_worker {
                let done = store
                    .update(&id, |s| {
                        let n = s.get::<u64>("n").ok().flatten().unwrap_or(0);
                        s.insert("n", &(n + 1)).map(|_| ())
                    })
                    .map_err(|e| e.to_string())?;
                done.ok_or("session vanished")?.map_err(|e| e.to_string())?;
            }
            Ok(())
        });
    }
    children.wait_all_ok();
    for host in [&a, &b] {
        let s = host.store.load(Some(&id), &Client::new()).unwrap();
        assert_eq!(s.get::<u64>("n").unwrap(), Some(4 * per_worker));
    }
}

/// Redis down: saves fail with a clear error that does not show the session id; loads of a
/// session fail rather than invent an empty one; back up, everything saved is there.
#[test]
fn sessions_while_redis_is_down() {
    let _serial = serial();
    let Some(mut server) = RedisServer::start_durable("sessions_while_redis_is_down") else {
        return;
    };
    let dir = temp_dir();
    let a = session_host(dir.path(), "a", &server);
    let client = Client::new();
    let mut s = a.store.load(None, &client).unwrap();
    s.insert("user", "ada").unwrap();
    a.store.save(&mut s).unwrap();
    let id = *s.id();

    server.kill();
    assert!(eventually(Duration::from_secs(3), || !a
        .listener
        .status()
        .is_trusted()));
    let mut s2 = a.store.load(None, &client).unwrap();
    s2.insert("user", "grace").unwrap();
    let e = a.store.save(&mut s2).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("redis 127.0.0.1:"), "{msg}");
    assert!(!msg.contains(s2.id().as_str()), "the id leaked: {msg}");
    let e = a.store.load(Some(&id), &client).unwrap_err();
    assert!(!e.to_string().contains(id.as_str()));

    server.restart();
    assert!(a.listener.wait_trusted(Duration::from_secs(5)));
    let s = a.store.load(Some(&id), &client).unwrap();
    assert_eq!(s.get::<String>("user").unwrap().as_deref(), Some("ada"));
}
