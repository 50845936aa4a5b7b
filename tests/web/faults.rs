//! The session layer when a session cannot be loaded — a record this version cannot read, or
//! a hung (SIGSTOPped) Redis — over a real server (forked workers, `server.rs`) and a real
//! HTTP client: routes that do not use the session answer as usual and promptly, with no
//! cookie change; a route that uses it gets an error that says the load failed; nothing is
//! deleted.

#[cfg(feature = "redis")]
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use fastmmap::session::{self, SessionStore};
use fastmmap::web::{SessionHandle, SessionLayer};
use tower::Layer;

use crate::server::Client;

/// A static route that never uses the session, a login and a page that reads the session.
fn app(store: SessionStore) -> Router {
    app_with(store, Router::new())
}

/// [`app`]'s routes and `more`.
fn app_with(store: SessionStore, more: Router) -> Router {
    let routes = Router::new()
        .route("/static/app.css", get(|| async { "body {}" }))
        .route(
            "/login",
            get(|s: SessionHandle| async move {
                s.insert("user", "ada")?;
                Ok::<_, session::Error>("in")
            }),
        )
        .route(
            "/whoami",
            get(|s: SessionHandle| async move {
                Ok::<_, session::Error>(s.get::<String>("user")?.unwrap_or_default())
            }),
        )
        .merge(more);
    Router::new().fallback_service(SessionLayer::new(store).layer(routes))
}

/// The session id of a client's cookie (`name=ID`).
#[cfg(feature = "perl")]
fn cookie_id(client: &Client) -> String {
    let cookie = client.cookie.as_deref().expect("a session cookie");
    cookie.split_once('=').expect("name=value").1.to_owned()
}

#[cfg(feature = "perl")]
#[test]
fn an_unreadable_catalyst_record_breaks_only_the_routes_that_use_it() {
    use fastmmap::session::CatalystConfig;

    use crate::common::{serial, temp_dir};
    use crate::server::Server;

    let _serial = serial();
    let dir = temp_dir();
    let path = Server::session_file(&dir);
    let catalyst = |path: &std::path::Path| {
        SessionStore::builder()
            .path(path)
            .catalyst(CatalystConfig::new())
            .build()
            .expect("a Catalyst-mode store")
    };
    let store = catalyst(&path);
    let server_path = path.clone();
    let server = Server::start(2, dir, move |_| app(catalyst(&server_path)));
    let mut client = Client::new(server.addr);
    assert_eq!(client.get("/login").status, 200);
    assert_eq!(client.get("/whoami").body, "ada");
    let sid = cookie_id(&client);
    let key = format!("session:{sid}");
    let garbage = b"\x00\x01 not a Storable image".to_vec();
    store.cache().set(key.as_bytes(), &garbage).unwrap();

    for _ in 0..4 {
        let a = client.get("/static/app.css");
        assert_eq!((a.status, a.body.as_str()), (200, "body {}"), "{a:?}");
        assert_eq!(a.set_cookie(), None, "neither deleted nor extended: {a:?}");
    }
    let a = client.get("/whoami");
    assert_eq!(a.status, 500, "{a:?}");
    assert!(
        a.body.starts_with("the session could not be loaded: ") && a.body.contains("Storable"),
        "{a:?}"
    );
    assert!(
        !a.body.contains(&sid),
        "the id stays out of messages: {a:?}"
    );
    assert_eq!(a.set_cookie(), None, "{a:?}");
    assert_eq!(
        store.cache().get(key.as_bytes()).unwrap(),
        Some(garbage),
        "the unreadable record is left alone"
    );
}

#[cfg(feature = "redis")]
#[test]
fn a_hung_redis_stalls_only_the_requests_that_use_the_session() {
    use fastmmap::redis::RedisOptions;

    use crate::common::{serial, temp_dir};
    use crate::redis_server::RedisServer;
    use crate::server::Server;

    let _serial = serial();
    let Some(redis) = RedisServer::start("a_hung_redis_stalls_only_the_requests_that_use_it")
    else {
        return;
    };
    // Long enough that a worker blocked by the stuck request would be plain to see.
    let timeout = Duration::from_secs(4);
    let options = RedisOptions::new(&redis.url())
        .unwrap()
        .namespace("web:")
        .timeout(timeout);
    let dir = temp_dir();
    let path = Server::session_file(&dir);
    // One worker: one current-thread runtime serves every request.
    let server = Server::start(1, dir, move |_| {
        app(SessionStore::builder()
            .path(&path)
            .redis(options.clone())
            .build()
            .expect("a store with a Redis tier"))
    });
    let mut client = Client::new(server.addr);
    assert_eq!(client.get("/login").status, 200);
    assert_eq!(client.get("/whoami").body, "ada");
    let cookie = client.cookie.clone();

    redis.pause();
    let stuck = std::thread::spawn({
        let mut c = Client::new(server.addr);
        c.cookie = cookie.clone();
        move || {
            let start = Instant::now();
            let a = c.get("/whoami");
            (a, start.elapsed())
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut anonymous = Client::new(server.addr);
    for c in [&mut client, &mut anonymous] {
        for _ in 0..3 {
            let start = Instant::now();
            let a = c.get("/static/app.css");
            let took = start.elapsed();
            assert_eq!((a.status, a.body.as_str()), (200, "body {}"), "{a:?}");
            assert_eq!(a.set_cookie(), None, "{a:?}");
            assert!(
                took < timeout / 2,
                "a request that does not use the session took {took:?} while Redis hangs"
            );
        }
    }
    assert!(!stuck.is_finished(), "the session request waits for Redis");
    let (a, took) = stuck.join().unwrap();
    assert_eq!(a.status, 500, "{a:?}");
    assert!(
        a.body.starts_with("the session could not be loaded: ") && a.body.contains("timed out"),
        "{a:?}"
    );
    assert!(took >= timeout, "answered after {took:?}");
    assert_eq!(a.set_cookie(), None, "not logged out: {a:?}");

    redis.resume();
    assert_eq!(client.cookie, cookie);
    assert_eq!(client.get("/whoami").body, "ada", "the session survived");
}

#[cfg(feature = "redis")]
#[test]
fn tower_sessions_over_a_hung_redis_leave_the_runtime_free() {
    use fastmmap::Cache;
    use fastmmap::redis::{RedisBacking, RedisOptions};
    use fastmmap::web::FastMmapStore;
    use tower_sessions::SessionStore as _;
    use tower_sessions::session::Id;

    use crate::common::{serial, temp_dir};
    use crate::redis_server::RedisServer;

    let _serial = serial();
    let Some(redis) = RedisServer::start("tower_sessions_over_a_hung_redis") else {
        return;
    };
    let timeout = Duration::from_secs(3);
    let options = RedisOptions::new(&redis.url())
        .unwrap()
        .namespace("ts:")
        .timeout(timeout);
    let dir = temp_dir();
    let path = dir.path().join("ts.cache");
    let cache = Cache::builder()
        .path(&path)
        .backing(RedisBacking::new(options, &path))
        .open()
        .unwrap();
    let store = FastMmapStore::new(cache);

    redis.pause();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let loading = store.clone();
        let stuck = tokio::spawn(async move {
            let start = Instant::now();
            let r = loading.load(&Id::default()).await;
            (r, start.elapsed())
        });
        // The load starts at this yield; the runtime's one thread must stay free for this
        // task's timer meanwhile.
        let start = Instant::now();
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ticked = start.elapsed();
        assert!(
            ticked < timeout / 2,
            "a 100 ms timer took {ticked:?} beside a load from a hung Redis"
        );
        let (r, took) = stuck.await.unwrap();
        let e = r.unwrap_err().to_string();
        assert!(e.contains("timed out"), "{e}");
        assert!(took >= timeout, "failed after {took:?}");
    });
    redis.resume();
}

/// With a store that may block (a Redis tier), a request that never uses the session is
/// finished in place: it needs neither the store nor tokio's blocking pool. Here the pool's
/// one thread is held and Redis is stopped, and the static route still answers, without a
/// cookie change and without a read or write of the cache file.
#[cfg(feature = "redis")]
#[test]
fn a_request_that_never_uses_the_session_skips_the_store_and_the_blocking_pool() {
    use std::sync::mpsc;

    use crate::redis_server::RedisServer;

    let Some(redis) = RedisServer::start("a_request_that_never_uses_the_session_skips") else {
        return;
    };
    let (_dir, store) = redis_store(&redis, "static:");
    let app = app(store.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .max_blocking_threads(1)
        .build()
        .unwrap();
    runtime.block_on(async {
        let cookie = login(&app).await;
        assert_eq!(oneshot(&app, "/whoami", Some(&cookie)).await.1, "ada");

        redis.pause();
        // The blocking pool's one thread is taken until this test lets it go.
        let (held_tx, held) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let holder = tokio::task::spawn_blocking(move || {
            held_tx.send(()).unwrap();
            let _ = release_rx.recv_timeout(Duration::from_secs(60));
        });
        held.recv_timeout(Duration::from_secs(30))
            .expect("the blocking pool's thread is taken");
        let counters = |s: fastmmap::Stats| (s.reads, s.hits, s.entries, s.used_bytes);
        let before = counters(store.cache().stats().unwrap());
        for cookie in [Some(cookie.as_str()), None] {
            let (status, body, set_cookie) = oneshot(&app, "/static/app.css", cookie).await;
            assert_eq!((status, body.as_str()), (200, "body {}"), "{cookie:?}");
            assert_eq!(set_cookie, None, "{cookie:?}");
        }
        let after = counters(store.cache().stats().unwrap());
        assert_eq!(before, after, "the cache file was not touched");
        release.send(()).unwrap();
        holder.await.unwrap();
    });
    redis.resume();
}

/// A temporary directory and a session store in it with a Redis tier on `redis` under
/// `namespace` (a 1 s timeout).
#[cfg(feature = "redis")]
fn redis_store(
    redis: &crate::redis_server::RedisServer,
    namespace: &str,
) -> (tempfile::TempDir, SessionStore) {
    let options = fastmmap::redis::RedisOptions::new(&redis.url())
        .unwrap()
        .namespace(namespace)
        .timeout(Duration::from_secs(1));
    let dir = crate::common::temp_dir();
    let store = SessionStore::builder()
        .path(dir.path().join("s.cache"))
        .redis(options)
        .build()
        .expect("a store with a Redis tier");
    (dir, store)
}

/// Logs in through `app`'s `/login`: the session cookie (`name=ID`).
#[cfg(feature = "redis")]
async fn login(app: &Router) -> String {
    let (status, _, set_cookie) = oneshot(app, "/login", None).await;
    assert_eq!(status, 200);
    let cookie = set_cookie.expect("a session cookie");
    cookie.split(';').next().unwrap().to_owned()
}

/// Sends a GET of `path` (with a `Cookie` header, if any) through `app` in process, waiting
/// at most 30 s for the answer: its status, body and `Set-Cookie`.
#[cfg(feature = "redis")]
async fn oneshot(
    app: &Router,
    path: &'static str,
    cookie: Option<&str>,
) -> (u16, String, Option<String>) {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let mut req = http::Request::builder().uri(path);
    if let Some(c) = cookie {
        req = req.header(http::header::COOKIE, c);
    }
    let req = req.body(Body::empty()).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(30), app.clone().oneshot(req))
        .await
        .unwrap_or_else(|_| panic!("{path} not answered within 30 s"))
        .unwrap();
    let set_cookie = r
        .headers()
        .get(http::header::SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_owned());
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        String::from_utf8_lossy(&body).into_owned(),
        set_cookie,
    )
}

/// A failed load, replayed to a request's later calls with a store that may block, keeps its
/// cause: each call's error leads, through `source`, to the Redis timeout itself.
#[cfg(feature = "redis")]
#[test]
fn a_failed_load_keeps_its_cause_for_every_call_of_the_request() {
    use fastmmap::redis::RedisError;

    use crate::redis_server::RedisServer;

    /// Whether `e`'s chain holds a Redis timeout.
    fn timed_out(e: &session::Error) -> bool {
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            if c.downcast_ref::<RedisError>()
                .is_some_and(RedisError::is_timeout)
            {
                return true;
            }
            cause = c.source();
        }
        false
    }

    let Some(redis) = RedisServer::start("a_failed_load_keeps_its_cause") else {
        return;
    };
    let (_dir, store) = redis_store(&redis, "chain:");
    let twice = Router::new().route(
        "/twice",
        get(|s: SessionHandle| async move {
            let first = s.get::<String>("user").unwrap_err();
            let second = s.get::<String>("user").unwrap_err();
            format!("{} {} {first}", timed_out(&first), timed_out(&second))
        }),
    );
    let app = app_with(store, twice);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let cookie = login(&app).await;
        redis.pause();
        let (status, body, set_cookie) = oneshot(&app, "/twice", Some(&cookie)).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("true true "), "{body}");
        assert!(body.contains("timed out"), "{body}");
        assert_eq!(set_cookie, None, "not logged out");
    });
    redis.resume();
}
