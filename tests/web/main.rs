#![cfg(all(feature = "axum", feature = "tower-sessions", target_os = "linux"))]
//! Sessions over real HTTP: the demo application of `examples/web.rs` (and a tower-sessions
//! application) served by forked workers ([`fastmmap::web::Prefork`]) on 127.0.0.1, driven by
//! a real HTTP client — and by a real browser (`browser.rs`). The store semantics of the
//! tower-sessions store are in `tower_sessions.rs`; the server's timeouts and limits under
//! hostile clients (slowloris, floods, huge bodies, stalled readers) in `limits.rs`.
//!
//! Every test that forks takes `common::serial()` first, so no other test thread of this
//! binary is inside a cache when it does.

#[path = "../common/mod.rs"]
mod common;
#[cfg(feature = "redis")]
#[path = "../redis/server.rs"]
#[allow(dead_code)]
mod redis_server;
#[path = "../../examples/support/web_app.rs"]
mod web_app;

mod browser;
mod eviction;
mod example;
#[cfg(any(feature = "perl", feature = "redis"))]
mod faults;
mod layer;
mod leak;
mod limits;
mod server;
mod tower_sessions;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::any;
use fastmmap::Cache;
use fastmmap::session::{Client as SessionClient, SessionId, SessionStore};
use fastmmap::web::{SessionHandle, SessionLayer};

use common::{serial, temp_dir};
use server::{Client, Server};

/// The demo server with `workers` workers, ids in URLs on or off.
fn demo(workers: usize, url_sessions: bool) -> Server {
    let dir = temp_dir();
    let path = Server::session_file(&dir);
    Server::start(workers, dir, move |addr: SocketAddr| {
        let store =
            web_app::store(&path, &format!("http://{addr}/"), url_sessions).expect("session store");
        web_app::app(store)
    })
}

/// The demo server with ids in URLs on.
fn demo_url_server(workers: usize) -> Server {
    demo(workers, true)
}

/// `count=N` of a `/count` page.
fn count_of(body: &str) -> u64 {
    body.strip_prefix("<p>count=")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a count page: {body:?}"))
}

/// The `href` of the first link of a page.
fn first_link(body: &str) -> String {
    let start = body.find("href=\"").expect("a link") + "href=\"".len();
    let end = body[start..].find('"').expect("a closed href") + start;
    body[start..end].replace("&amp;", "&")
}

fn session_store_of(server: &Server) -> SessionStore {
    SessionStore::builder()
        .path(Server::session_file(&server.dir))
        .build()
        .unwrap()
}

#[test]
fn a_cookie_session_spread_over_workers_keeps_every_count() {
    let _serial = serial();
    let server = demo(4, false);
    let mut client = Client::new(server.addr);
    let mut workers = HashSet::new();
    let mut n = 0;
    // Every request on a new connection: the kernel hands them to whichever worker accepts.
    while n < 40 || (workers.len() < 2 && n < 400) {
        n += 1;
        let r = client.get("/count");
        assert_eq!(r.status, 200);
        assert_eq!(count_of(&r.body), n, "request {n}");
        assert!(
            r.body.ends_with(r#"<a href="/count">again</a>"#),
            "{}",
            r.body
        );
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        workers.insert(r.worker());
        assert_eq!(
            r.body,
            format!(
                r#"<p>count={n} pid={}</p><a href="/count">again</a>"#,
                r.worker()
            )
        );
        if n == 1 {
            assert!(client.cookie.is_some(), "the first answer sets the cookie");
        } else {
            assert_eq!(r.set_cookie(), None, "an unchanged id is not sent again");
        }
    }
    assert!(
        workers.len() >= 2,
        "one session, several workers: {workers:?}"
    );
}

#[test]
fn eight_clients_incrementing_one_session_lose_no_update() {
    let _serial = serial();
    let server = demo(4, false);
    let mut first = Client::new(server.addr);
    assert_eq!(count_of(&first.get("/count").body), 1);
    let cookie = first.cookie.clone().expect("a cookie");
    const CLIENTS: u64 = 8;
    const EACH: u64 = 25;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (addr, cookie) = (server.addr, cookie.clone());
            std::thread::spawn(move || {
                let mut client = Client::new(addr);
                client.cookie = Some(cookie);
                let mut seen = HashSet::new();
                for _ in 0..EACH {
                    let r = client.get("/count");
                    assert_eq!(r.status, 200, "{}", r.body);
                    seen.insert(count_of(&r.body));
                }
                seen
            })
        })
        .collect();
    let mut all = HashSet::new();
    for t in threads {
        for n in t.join().expect("client thread") {
            assert!(all.insert(n), "count {n} was handed out twice");
        }
    }
    let last = count_of(&first.get("/count").body);
    assert_eq!(last, 1 + CLIENTS * EACH + 1, "no increment lost");
    assert_eq!(
        all,
        (2..=1 + CLIENTS * EACH).collect(),
        "every count seen once"
    );
}

#[test]
fn login_changes_the_id_and_the_old_one_is_dead() {
    let _serial = serial();
    let server = demo(2, false);
    let mut client = Client::new(server.addr);
    assert_eq!(client.get("/whoami").body, "user=");
    client.get("/count");
    let before = client.cookie.clone().unwrap();
    let r = client.post("/login", "user=ada");
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/whoami"));
    let after = client.cookie.clone().unwrap();
    assert_ne!(after, before, "login moves the session to a new id");
    assert_eq!(client.get("/whoami").body, "user=ada");
    assert_eq!(
        count_of(&client.get("/count").body),
        2,
        "the data moved along"
    );

    let mut old = Client::new(server.addr);
    old.cookie = Some(before);
    let r = old.get("/whoami");
    assert_eq!(r.body, "user=");
    assert!(
        r.set_cookie().is_some_and(|c| c.contains("Max-Age=0")),
        "the dead id's cookie is deleted: {:?}",
        r.set_cookie()
    );
    // GET works as well as POST.
    let mut other = Client::new(server.addr);
    assert_eq!(other.get("/login?user=bob").status, 303);
    assert_eq!(other.get("/whoami").body, "user=bob");
}

#[test]
fn a_flash_shows_exactly_once() {
    let _serial = serial();
    let server = demo(3, false);
    let mut client = Client::new(server.addr);
    let r = client.post("/flash", "msg=saved%21");
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/flash"));
    // Requests that do not read the flash leave it: a static asset, a page using the session.
    assert_eq!(client.get("/static/app.css").set_cookie(), None);
    assert_eq!(client.get("/whoami").body, "user=");
    assert_eq!(client.get("/flash").body, "flash=saved!");
    assert_eq!(client.get("/flash").body, "flash=");
    // And again, across workers, several times.
    for i in 0..5 {
        client.post("/flash", &format!("msg=m{i}"));
        assert_eq!(client.get("/flash").body, format!("flash=m{i}"));
        assert_eq!(client.get("/flash").body, "flash=");
    }
}

#[test]
fn logout_ends_the_session() {
    let _serial = serial();
    let server = demo(2, false);
    let mut client = Client::new(server.addr);
    client.post("/login", "user=ada");
    let cookie = client.cookie.clone().unwrap();
    assert_eq!(client.get("/whoami").body, "user=ada");
    let r = client.post("/logout", "");
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/whoami"));
    assert!(
        r.set_cookie().unwrap().contains("Max-Age=0"),
        "{:?}",
        r.set_cookie()
    );
    assert_eq!(client.cookie, None);
    assert_eq!(client.get("/whoami").body, "user=");
    let id: SessionId = cookie["session=".len()..].parse().unwrap();
    let store = session_store_of(&server);
    assert!(!store.cache().contains_key(&store.key(&id)).unwrap());
    let mut replay = Client::new(server.addr);
    replay.cookie = Some(cookie);
    assert_eq!(replay.get("/whoami").body, "user=");
}

#[test]
fn a_cookieless_client_following_rewritten_links_stays_in_one_session() {
    let _serial = serial();
    let server = demo(3, true);
    let mut client = Client::without_cookies(server.addr);
    let r = client.get("/count");
    assert_eq!(count_of(&r.body), 1);
    let mut link = first_link(&r.body);
    let id = link
        .strip_prefix("/count/-/")
        .expect("the link carries the id")
        .to_owned();
    let mut workers = HashSet::new();
    for n in 2..=12 {
        let r = client.get(&link);
        assert_eq!(r.status, 200, "{link}: {r:?}");
        assert_eq!(count_of(&r.body), n, "{link}");
        workers.insert(r.worker());
        link = first_link(&r.body);
        assert_eq!(
            link,
            format!("/count/-/{id}"),
            "the same session throughout"
        );
    }
    // A form and a redirect: login through the URL, and the redirect keeps the new id.
    let r = client.post(&format!("/login/-/{id}"), "user=ada");
    assert_eq!(r.status, 303);
    let location = r.header("location").unwrap().to_owned();
    let new_id = location
        .strip_prefix("/whoami/-/")
        .expect("the redirect carries the id");
    assert_ne!(new_id, id);
    assert_eq!(client.get(&location).body, "user=ada");
    assert_eq!(
        count_of(&client.get(&format!("/count/-/{new_id}")).body),
        13
    );
    // The old id is dead, and never written back.
    let r = client.get(&format!("/count/-/{id}"));
    assert_eq!(count_of(&r.body), 1);
    assert!(!r.body.contains(&id));
    // A client that sends the cookie gets no ids in links.
    let mut with_cookie = Client::new(server.addr);
    with_cookie.get("/count");
    let r = with_cookie.get("/count");
    assert_eq!(
        r.body,
        format!(
            r#"<p>count=2 pid={}</p><a href="/count">again</a>"#,
            r.worker()
        )
    );
    // The home page: every link and form under the base gets the id (binary assets would
    // not; a stylesheet may be generated, so it does), and such links work.
    let r = client.get(&format!("/-/{new_id}"));
    assert!(
        r.body.contains(&format!(r#"action="/login/-/{new_id}""#)),
        "{}",
        r.body
    );
    assert!(
        r.body.contains(&format!(r#"href="/count/-/{new_id}""#)),
        "{}",
        r.body
    );
    let css = format!("/static/app.css/-/{new_id}");
    assert!(r.body.contains(&format!(r#"href="{css}""#)), "{}", r.body);
    assert_eq!(client.get(&css).header("content-type"), Some("text/css"));
}

/// The demo's routes plus `/slow`, which increments the count, says which worker it is in
/// (in the cache, under `slow-pid`) and then takes 30 s to answer, and `/pause`, which
/// answers after 0.8 s.
fn slow_app(path: std::path::PathBuf, addr: SocketAddr) -> Router {
    let store = web_app::store(&path, &format!("http://{addr}/"), false).unwrap();
    async fn slow(session: SessionHandle, cache: axum::extract::State<Cache>) -> String {
        session
            .update(|s| {
                let n = s.get::<u64>("count").unwrap().unwrap_or(0) + 1;
                s.insert("count", &n).unwrap();
            })
            .unwrap();
        cache
            .set(b"slow-pid", std::process::id().to_string().as_bytes())
            .unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        "slow".to_owned()
    }
    async fn pause() -> &'static str {
        tokio::time::sleep(Duration::from_millis(800)).await;
        "paused"
    }
    let slow_routes = Router::new()
        .route("/slow", any(slow))
        .route("/pause", any(pause))
        .with_state(store.cache().clone())
        .layer(SessionLayer::new(store.clone()));
    web_app::app(store).merge(slow_routes)
}

#[test]
fn a_worker_killed_mid_request_is_replaced_and_no_session_is_torn() {
    let _serial = serial();
    let dir = temp_dir();
    let path = Server::session_file(&dir);
    let app_path = path.clone();
    let server = Server::start(2, dir, move |addr| slow_app(app_path.clone(), addr));
    let mut client = Client::new(server.addr);
    let mut before = HashSet::new();
    for n in 1..=10 {
        let r = client.get("/count");
        assert_eq!(count_of(&r.body), n);
        before.insert(r.worker());
    }
    let cache = Cache::open(&path).unwrap();
    let cookie = client.cookie.clone().unwrap();
    // Other sessions busy at the same time, in both workers.
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut c = Client::new(addr);
                let mut ok = 0;
                for _ in 0..60 {
                    if c.try_get("/count").is_ok_and(|r| r.status == 200) {
                        ok += 1;
                    }
                }
                let last = c.try_get("/count").map(|r| count_of(&r.body)).unwrap_or(0);
                (ok, last)
            })
        })
        .collect();
    let slow = {
        let addr = server.addr;
        std::thread::spawn(move || {
            let mut c = Client::new(addr);
            c.cookie = Some(cookie);
            c.try_get("/slow").map(|r| r.body)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let victim: libc::pid_t = loop {
        if let Some(pid) = cache.get(b"slow-pid").unwrap() {
            break String::from_utf8(pid).unwrap().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "/slow never started");
        std::thread::sleep(Duration::from_millis(10));
    };
    // SAFETY: the victim is a worker of our server, in the middle of /slow.
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
    assert!(
        slow.join().unwrap().is_err(),
        "the request died with its worker"
    );
    for t in busy {
        let (ok, last) = t.join().unwrap();
        assert!(
            last as usize >= ok,
            "a busy session lost counts: {ok} answered, at {last}"
        );
    }
    // The session is whole: the increment /slow made before it died is there.
    assert_eq!(count_of(&client.get("/count").body), 12);
    // A replacement serves requests.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = HashSet::new();
    while seen.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no replacement for {victim}: {seen:?}"
        );
        let r = client.get("/static/app.css");
        seen.insert(r.worker());
    }
    assert!(!seen.contains(&(victim as u32)), "{seen:?}");
    assert!(
        seen.len() == 2 && !seen.is_subset(&before),
        "{seen:?} {before:?}"
    );
    assert_eq!(cache.stats().unwrap().resets, 0, "no page was damaged");
    let store = session_store_of(&server);
    let id: SessionId = client.cookie.as_deref().unwrap()["session=".len()..]
        .parse()
        .unwrap();
    let session = store.load(Some(&id), &SessionClient::new()).unwrap();
    assert_eq!(session.get::<u64>("count").unwrap(), Some(12));
}

#[test]
fn a_static_asset_neither_loads_nor_sets_anything() {
    let _serial = serial();
    let server = demo(2, true);
    let mut client = Client::new(server.addr);
    let r = client.get("/static/app.css");
    assert_eq!(r.status, 200);
    assert_eq!(r.set_cookie(), None);
    let store = session_store_of(&server);
    assert_eq!(store.cache().keys().count(), 0, "nothing stored");
    let mut cookieless = Client::without_cookies(server.addr);
    let r = cookieless.get("/whoami");
    assert_eq!(
        (r.body.as_str(), r.set_cookie()),
        ("user=", None),
        "an empty session is not stored"
    );
}

#[test]
fn sigterm_lets_requests_in_flight_finish() {
    let _serial = serial();
    let dir = temp_dir();
    let path = Server::session_file(&dir);
    let server = Server::start(2, dir, move |addr| slow_app(path.clone(), addr));
    let addr = server.addr;
    let paused = std::thread::spawn(move || Client::new(addr).try_get("/pause").map(|r| r.body));
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    drop(server); // SIGTERM to the parent, which passes it on and waits for its workers
    assert_eq!(paused.join().unwrap().expect("answered"), "paused");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(Client::new(addr).try_get("/count").is_err(), "stopped");
}
