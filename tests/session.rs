#![cfg(feature = "session")]
//! Sessions end to end: simulated request cycles (request path and `Cookie` header in;
//! `Set-Cookie`, `Location` and body out) across forked processes sharing one cache file,
//! concurrent saves, URL sessions for clients without cookies, fixation, malformed ids,
//! hostile HTML and awkward URLs.
//!
//! Every test takes `common::serial()` first: forking while another test thread of this binary
//! is inside the cache (or opening one) would hand the child a locked mutex.

mod common;

use std::net::IpAddr;
use std::time::{Duration, UNIX_EPOCH};

use common::*;
use fastmmap::session::{
    Client, CookieConfig, Error as SessionError, IdSource, NewReason, Origin, Request, Response,
    Saved, Session, SessionId, SessionStore, UrlRewriter, UrlStyle, Visit,
};
use fastmmap::{Cache, ManualClock};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

const T0: u64 = 1_700_000_000;
const BASE: &str = "http://localhost:3000/app/";

struct Setup {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    clock: ManualClock,
    cache: Cache,
}

fn setup() -> Setup {
    let dir = temp_dir();
    let path = dir.path().join("sessions");
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(T0));
    let cache = Cache::builder()
        .path(&path)
        .clock(clock.clone())
        .lock_timeout(Duration::from_secs(20))
        .open()
        .expect("open cache");
    Setup {
        _dir: dir,
        path,
        clock,
        cache,
    }
}

impl Setup {
    fn store(&self) -> SessionStore {
        SessionStore::new(self.cache.clone())
    }

    fn url_store(&self, style: UrlStyle) -> SessionStore {
        SessionStore::builder()
            .cache(self.cache.clone())
            .urls(UrlRewriter::new(BASE).unwrap().style(style))
            .build()
            .unwrap()
    }

    fn at(&self, secs_after_t0: u64) {
        self.clock
            .set(UNIX_EPOCH + Duration::from_secs(T0 + secs_after_t0));
    }

    /// Whether the file still holds `key`, live or expired, as seen from T0.
    fn physically_present(&self, key: &[u8]) -> bool {
        Cache::builder()
            .path(&self.path)
            .clock(ManualClock::new(UNIX_EPOCH + Duration::from_secs(T0)))
            .open()
            .unwrap()
            .contains_key(key)
            .unwrap()
    }
}

/// `name=value` from a `Set-Cookie` value: what the browser sends back.
/// The `Set-Cookie` value of a response, if any.
fn sc(r: &Response) -> Option<String> {
    r.set_cookie.as_ref().map(ToString::to_string)
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

fn id_of(set_cookie: &str) -> SessionId {
    cookie_pair(set_cookie)
        .split_once('=')
        .unwrap()
        .1
        .parse()
        .unwrap()
}

fn send_text(pipe: &Pipe, s: &str) {
    pipe.send_u64(s.len() as u64);
    pipe.send(s.as_bytes());
}

fn recv_text(pipe: &Pipe) -> String {
    let len = pipe.recv_u64() as usize;
    let mut buf = vec![0u8; len];
    pipe.recv(&mut buf);
    String::from_utf8(buf).unwrap()
}

fn body(r: &Response) -> &str {
    std::str::from_utf8(&r.body).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The request cycle across processes

#[test]
fn a_session_lives_across_forked_workers() {
    let _serial = serial();
    let s = setup();
    let store = s.store();
    let pipe = Pipe::new();
    let mut kids = Children::new();

    // Worker 1: a first visit, no cookie. The session gets values and a flash message.
    kids.spawn(|| {
        let mut visit = store.begin(&Request::new("/app/cart"));
        assert_eq!(
            visit.session().unwrap().origin(),
            &Origin::New(NewReason::NoId)
        );
        visit.session().unwrap().insert("cart", &vec![1]).unwrap();
        visit
            .session()
            .unwrap()
            .flash("notice", "added to cart")
            .unwrap();
        let mut response = Response::redirect(303, "/app/cart/view");
        let done = store.finish(&mut visit, &mut response).unwrap();
        assert_eq!(done.saved, Saved::Written);
        send_text(&pipe, &sc(&response).expect("a new session sets a cookie"));
        Ok(())
    });
    let set_cookie = recv_text(&pipe);
    kids.wait_all_ok();
    assert!(set_cookie.starts_with("session="), "{set_cookie}");
    assert!(
        set_cookie.ends_with(
            "; HttpOnly; SameSite=Lax; Path=/; Max-Age=86400; Expires=Wed, 15 Nov 2023 22:13:20 GMT"
        ),
        "{set_cookie}"
    );
    let cookie = cookie_pair(&set_cookie);
    let id = id_of(&set_cookie);

    // Worker 2, 100 s later: the browser follows the redirect with its cookie.
    kids.spawn(|| {
        s.at(100);
        let req = Request::new("/app/cart/view").cookie(&cookie);
        let mut visit = store.begin(&req);
        assert_eq!(visit.session().unwrap().origin(), &Origin::Loaded);
        assert_eq!(visit.source(), IdSource::Cookie);
        assert_eq!(visit.session().unwrap().id(), &id);
        assert_eq!(
            visit.get_flash::<String>("notice").unwrap().as_deref(),
            Some("added to cart")
        );
        assert_eq!(
            visit.session().unwrap().get::<Vec<u32>>("cart").unwrap(),
            Some(vec![1])
        );
        visit
            .session()
            .unwrap()
            .insert("cart", &vec![1, 2])
            .unwrap();
        let mut response = Response::html("<a href=\"/app/checkout\">checkout</a>");
        let done = store.finish(&mut visit, &mut response).unwrap();
        assert_eq!(done.saved, Saved::Written);
        // The browser has the cookie and its expiry did not move (absolute lifetime).
        assert_eq!(sc(&response), None);
        // A client with the cookie gets no ids in URLs.
        assert_eq!(body(&response), "<a href=\"/app/checkout\">checkout</a>");
        Ok(())
    });
    kids.wait_all_ok();

    // Worker 3, 200 s after the start: the change is there, the flash is gone; the user logs
    // in, so the session moves to a new id.
    kids.spawn(|| {
        s.at(200);
        let mut visit = store.begin(&Request::new("/app/login").cookie(&cookie));
        assert_eq!(visit.session().unwrap().origin(), &Origin::Loaded);
        assert_eq!(
            visit.session().unwrap().get::<Vec<u32>>("cart").unwrap(),
            Some(vec![1, 2])
        );
        assert_eq!(visit.get_flash::<String>("notice").unwrap(), None);
        assert_eq!(visit.change_id().unwrap(), id);
        visit.session().unwrap().insert("user", "ada").unwrap();
        let mut response = Response::redirect(302, "/app/");
        store.finish(&mut visit, &mut response).unwrap();
        send_text(&pipe, &sc(&response).expect("a new id sets the cookie"));
        Ok(())
    });
    let after_login = recv_text(&pipe);
    kids.wait_all_ok();
    let new_id = id_of(&after_login);
    assert_ne!(new_id, id);
    assert!(
        !s.physically_present(&store.key(&id)),
        "the old id is deleted"
    );

    // Worker 4: the old id is worthless; the new one works until the lifetime ends.
    let new_cookie = cookie_pair(&after_login);
    kids.spawn(|| {
        s.at(300);
        let mut old = store.begin(&Request::new("/app/").cookie(&cookie));
        assert_eq!(
            old.session().unwrap().origin(),
            &Origin::New(NewReason::Unknown)
        );
        assert_ne!(old.session().unwrap().id(), &id);
        let mut response = Response::html("");
        store.finish(&mut old, &mut response).unwrap();
        let removal = sc(&response).expect("a stale cookie is deleted");
        assert!(
            removal.starts_with("session=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0;"),
            "{removal}"
        );

        let mut visit = store.begin(&Request::new("/app/").cookie(&new_cookie));
        assert_eq!(visit.session().unwrap().origin(), &Origin::Loaded);
        assert_eq!(
            visit
                .session()
                .unwrap()
                .get::<String>("user")
                .unwrap()
                .as_deref(),
            Some("ada")
        );
        assert_eq!(
            visit.session().unwrap().get::<Vec<u32>>("cart").unwrap(),
            Some(vec![1, 2])
        );
        Ok(())
    });
    kids.wait_all_ok();

    // Worker 5, one second past the lifetime: the session has expired.
    kids.spawn(|| {
        s.at(86_400);
        let mut visit = store.begin(&Request::new("/app/").cookie(&new_cookie));
        assert!(
            matches!(
                visit.session().unwrap().origin(),
                Origin::New(NewReason::Unknown | NewReason::Expired)
            ),
            "{:?}",
            visit.session().unwrap().origin()
        );
        assert!(visit.session().unwrap().is_empty());
        assert_ne!(visit.session().unwrap().id(), &new_id);
        let mut response = Response::html("");
        store.finish(&mut visit, &mut response).unwrap();
        assert!(sc(&response).unwrap().contains("Max-Age=0"));
        Ok(())
    });
    kids.wait_all_ok();
    assert!(
        !s.physically_present(&store.key(&new_id)),
        "the expired session was deleted on sight"
    );
}

#[test]
fn concurrent_saves_from_processes_never_tear() {
    let _serial = serial();
    const PROCS: usize = 4;
    let rounds = scaled(100, 2_000);
    let s = setup();
    let store = s.store();
    let mut first = store.create(&Client::new()).unwrap();
    store.save(&mut first).unwrap();
    let id = *first.id();
    let start = Pipe::new();
    let mut kids = Children::new();
    for p in 0..PROCS {
        let store = store.clone();
        let start = &start;
        kids.spawn(move || {
            start.wait();
            let mine = format!("p{p}");
            for round in 0..rounds {
                let mut session = store
                    .load(Some(&id), &Client::new())
                    .map_err(|e| e.to_string())?;
                if session.origin() != &Origin::Loaded {
                    return Err(format!(
                        "round {round}: session lost: {:?}",
                        session.origin()
                    ));
                }
                // A large self-describing value: a torn record would not decode, or would mix
                // writers.
                if let Some(shared) = session
                    .get::<Vec<u64>>("shared")
                    .map_err(|e| e.to_string())?
                {
                    let writer = shared[0];
                    if shared.len() != 500 || shared.iter().any(|&v| v != writer) {
                        return Err(format!("round {round}: mixed shared value"));
                    }
                }
                session.insert(&mine, &round).map_err(|e| e.to_string())?;
                session
                    .insert("shared", &vec![p as u64; 500])
                    .map_err(|e| e.to_string())?;
                store.save(&mut session).map_err(|e| e.to_string())?;
                store
                    .update(&id, |s| {
                        let n = s.get::<u64>("count").ok().flatten().unwrap_or(0);
                        s.insert("count", &(n + 1)).map_err(|e| e.to_string())
                    })
                    .map_err(|e| e.to_string())?
                    .ok_or("session vanished")??;
            }
            Ok(())
        });
    }
    start.release(PROCS);
    kids.wait_all_ok();
    let session = store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(
        session.get::<u64>("count").unwrap(),
        Some((PROCS * rounds) as u64)
    );
    for p in 0..PROCS {
        assert_eq!(
            session.get::<usize>(&format!("p{p}")).unwrap(),
            Some(rounds - 1),
            "process {p}'s last save was lost"
        );
    }
    let shared = session.get::<Vec<u64>>("shared").unwrap().unwrap();
    assert!(shared.iter().all(|&v| v == shared[0]) && (shared[0] as usize) < PROCS);
    assert_eq!(s.cache.stats().unwrap().resets, 0);
}

// ---------------------------------------------------------------------------------------------
// URL sessions

const PAGE: &str = r##"<!doctype html>
<html><head><link rel="stylesheet" href="/app/site.css"><script src="/app/app.js"></script></head>
<body>
<a href="/app/items">items</a>
<a href="items?page=2#list">relative</a>
<a href="http://localhost:3000/app/help">absolute</a>
<a href="https://elsewhere.example/app/items">external</a>
<a href="/other">outside the base</a>
<a href="#top">fragment</a>
<img src="/app/logo.png"><img src="/app/captcha">
<form action="/app/search"><input name="q"></form>
</body></html>"##;

#[test]
fn path_style_for_clients_without_cookies() {
    let _serial = serial();
    let s = setup();
    let store = s.url_store(UrlStyle::Path);

    let mut visit = store.begin(&Request::new("/app/"));
    assert_eq!(visit.path(), "/app/");
    visit.session().unwrap().insert("lang", "en").unwrap();
    let mut page = Response::html(PAGE);
    let done = store.finish(&mut visit, &mut page).unwrap();
    assert!(done.body_error.is_none());
    let id = *visit.session().unwrap().id();
    // The cookie is offered too, in case the client takes it.
    assert_eq!(id_of(sc(&page).as_deref().unwrap()), id);
    let out = body(&page);
    for want in [
        format!(r#"href="/app/site.css/-/{id}""#),
        format!(r#"src="/app/app.js/-/{id}""#),
        format!(r#"href="/app/items/-/{id}""#),
        format!(r#"href="/app/items/-/{id}?page=2#list""#),
        format!(r#"href="http://localhost:3000/app/help/-/{id}""#),
        format!(r#"src="/app/captcha/-/{id}""#),
        format!(r#"action="/app/search/-/{id}""#),
    ] {
        assert!(out.contains(&want), "missing {want}:\n{out}");
    }
    for unchanged in [
        r#"href="https://elsewhere.example/app/items""#,
        r#"href="/other""#,
        r##"href="#top""##,
        r#"src="/app/logo.png""#,
    ] {
        assert!(out.contains(unchanged), "changed {unchanged}:\n{out}");
    }

    // The client follows a rewritten link (no cookie): the id comes out of the path.
    let target = format!("/app/items/-/{id}?page=2");
    let mut visit = store.begin(&Request::new(&target));
    assert_eq!(visit.source(), IdSource::Path);
    assert_eq!(visit.path(), "/app/items");
    assert_eq!(visit.query(), Some("page=2"));
    assert_eq!(visit.session().unwrap().origin(), &Origin::Loaded);
    assert_eq!(
        visit
            .session()
            .unwrap()
            .get::<String>("lang")
            .unwrap()
            .as_deref(),
        Some("en")
    );
    let mut redirect = Response::redirect(302, "/app/items/1");
    store.finish(&mut visit, &mut redirect).unwrap();
    assert_eq!(redirect.location, Some(format!("/app/items/1/-/{id}")));
    // Still offered the cookie, since it did not send one.
    assert_eq!(id_of(sc(&redirect).as_deref().unwrap()), id);
    let mut external = Response::redirect(302, "https://pay.example/checkout");
    let mut visit = store.begin(&Request::new(&target));
    store.finish(&mut visit, &mut external).unwrap();
    assert_eq!(
        external.location.as_deref(),
        Some("https://pay.example/checkout")
    );

    // Once it sends the cookie, nothing is rewritten and no cookie is set again.
    let cookie = format!("session={id}");
    let mut visit = store.begin(&Request::new("/app/").cookie(&cookie));
    let mut page = Response::html(PAGE);
    store.finish(&mut visit, &mut page).unwrap();
    assert_eq!(body(&page), PAGE);
    assert_eq!(sc(&page), None);
    let mut redirect = Response::redirect(302, "/app/next");
    let mut visit = store.begin(&Request::new("/app/").cookie(&cookie));
    store.finish(&mut visit, &mut redirect).unwrap();
    assert_eq!(redirect.location.as_deref(), Some("/app/next"));
}

#[test]
fn query_style_for_clients_without_cookies() {
    let _serial = serial();
    let s = setup();
    let store = s.url_store(UrlStyle::Query);
    let mut visit = store.begin(&Request::new("/app/?x=1"));
    visit.session().unwrap().insert("n", &1).unwrap();
    let mut page = Response::html(PAGE);
    store.finish(&mut visit, &mut page).unwrap();
    let id = *visit.session().unwrap().id();
    let out = body(&page);
    for want in [
        format!(r#"href="/app/items?sid={id}""#),
        format!(r#"href="/app/items?page=2&amp;sid={id}#list""#),
        format!(
            r#"<form action="/app/search?sid={id}"><input type="hidden" name="sid" value="{id}">"#
        ),
    ] {
        assert!(out.contains(&want), "missing {want}:\n{out}");
    }
    assert!(out.contains(r#"href="https://elsewhere.example/app/items""#));
    // Relative links need no absolute form in query style.
    assert!(!out.contains(r#"src="/app/logo.png?"#));

    let target = format!("/app/search?q=rust&sid={id}");
    let mut visit = store.begin(&Request::new(&target));
    assert_eq!(visit.source(), IdSource::Query);
    assert_eq!(visit.path(), "/app/search");
    assert_eq!(visit.query(), Some("q=rust"));
    assert_eq!(visit.session().unwrap().get::<u32>("n").unwrap(), Some(1));
    let mut redirect = Response::redirect(303, "/app/results?q=rust");
    store.finish(&mut visit, &mut redirect).unwrap();
    assert_eq!(
        redirect.location,
        Some(format!("/app/results?q=rust&sid={id}"))
    );
}

#[test]
fn no_url_rewriting_for_a_session_that_is_not_stored() {
    let _serial = serial();
    let s = setup();
    let store = s.url_store(UrlStyle::Path);
    let mut visit = store.begin(&Request::new("/app/"));
    let mut page = Response::html(PAGE);
    store.finish(&mut visit, &mut page).unwrap();
    assert_eq!(body(&page), PAGE);
    assert_eq!(sc(&page), None);
    assert_eq!(
        s.cache.stats().unwrap().entries,
        0,
        "nothing stored for an unused session"
    );
}

// ---------------------------------------------------------------------------------------------
// Fixation and malformed ids

#[test]
fn a_planted_id_is_never_adopted() {
    let _serial = serial();
    let s = setup();
    let store = s.url_store(UrlStyle::Path);
    let planted = SessionId::generate().unwrap();
    for request in [
        Request::new("/app/").cookie(&format!("session={planted}")),
        Request::new(&format!("/app/-/{planted}")),
    ] {
        let mut visit = store.begin(&request);
        assert_eq!(
            visit.session().unwrap().origin(),
            &Origin::New(NewReason::Unknown)
        );
        assert_ne!(visit.session().unwrap().id(), &planted);
        visit.session().unwrap().insert("user", "victim").unwrap();
        let mut page = Response::html(r#"<a href="/app/x">x</a>"#);
        store.finish(&mut visit, &mut page).unwrap();
        let fresh = *visit.session().unwrap().id();
        let set_cookie = sc(&page).unwrap();
        assert_eq!(id_of(&set_cookie), fresh);
        let everything = format!("{set_cookie} {:?} {}", page.location, body(&page));
        assert!(!everything.contains(planted.as_str()), "{everything}");
        assert!(!s.cache.contains_key(&store.key(&planted)).unwrap());
    }
}

#[test]
fn malformed_ids_are_never_looked_up_or_echoed() {
    let _serial = serial();
    let s = setup();
    let store = s.url_store(UrlStyle::Path);
    let good = SessionId::generate().unwrap();
    let malformed = [
        String::new(),
        "x".into(),
        good.as_str()[..31].to_owned(),
        format!("{good}A"),
        "A".repeat(10_000),
        format!("{}==", &good.as_str()[..30]),
        format!("{}+/", &good.as_str()[..30]),
        format!("%41{}", &good.as_str()[3..]),
        format!("<script>{}", &good.as_str()[8..]),
        format!("\"{}\"x", &good.as_str()[..29]),
        format!("é{}", &good.as_str()[2..]),
        format!("{} ", &good.as_str()[..31]),
        format!("{}\0", &good.as_str()[..31]),
    ];
    let before = s.cache.stats().unwrap().reads;
    for bad in &malformed {
        for request in [
            Request::new("/app/").cookie(&format!("session={bad}")),
            Request::new("/app/").cookie(&format!("a=1; session=\"{bad}\"")),
        ] {
            let mut visit = store.begin(&request);
            assert!(
                matches!(
                    visit.session().unwrap().origin(),
                    Origin::New(NewReason::Malformed(_))
                ),
                "{bad:?}: {:?}",
                visit.session().unwrap().origin()
            );
            let mut page = Response::html(r#"<a href="/app/x">x</a>"#);
            store.finish(&mut visit, &mut page).unwrap();
            let removal = sc(&page).unwrap();
            assert!(removal.starts_with("session=;"), "{removal}");
            assert_eq!(body(&page), r#"<a href="/app/x">x</a>"#);
        }
        if !bad.contains(['/', '?', '#', '\0']) {
            let path = format!("/app/items/-/{bad}");
            let mut visit = store.begin(&Request::new(&path));
            assert!(matches!(
                visit.session().unwrap().origin(),
                Origin::New(NewReason::Malformed(_))
            ));
            assert_eq!(visit.path(), "/app/items");
            let mut redirect = Response::redirect(302, "/app/next");
            store.finish(&mut visit, &mut redirect).unwrap();
            assert_eq!(redirect.location.as_deref(), Some("/app/next"));
            assert_eq!(sc(&redirect), None);
        }
        let by_str = store.load_str(Some(bad), &Client::new()).unwrap();
        assert!(matches!(
            by_str.origin(),
            Origin::New(NewReason::Malformed(_))
        ));
        if let Origin::New(NewReason::Malformed(why)) = by_str.origin()
            && bad.len() > 3
        {
            assert!(
                !why.to_string().contains(bad.as_str()),
                "error echoes the input"
            );
        }
    }
    assert_eq!(
        s.cache.stats().unwrap().reads,
        before,
        "a malformed id was looked up"
    );
}

// ---------------------------------------------------------------------------------------------
// Expiry, binding, cookies through the cycle

#[test]
fn sliding_expiry_resends_the_cookie_only_when_it_moves() {
    let _serial = serial();
    let s = setup();
    let store = SessionStore::builder()
        .cache(s.cache.clone())
        .lifetime(Duration::from_secs(86_400))
        .idle_timeout(Duration::from_secs(600))
        .extend_threshold(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut visit = store.begin(&Request::new("/"));
    visit.session().unwrap().insert("n", &1).unwrap();
    let mut r = Response::new(204);
    store.finish(&mut visit, &mut r).unwrap();
    assert!(sc(&r).as_deref().unwrap().contains("Max-Age=600;"));
    let cookie = cookie_pair(sc(&r).as_deref().unwrap());
    let key = store.key(visit.session().unwrap().id());
    let stored = s.cache.entry(&key).unwrap().unwrap();

    s.at(30);
    let mut visit = store.begin(&Request::new("/").cookie(&cookie));
    let mut r = Response::new(204);
    assert_eq!(
        store.finish(&mut visit, &mut r).unwrap().saved,
        Saved::Unchanged
    );
    assert_eq!(sc(&r), None);
    assert_eq!(
        s.cache.entry(&key).unwrap().unwrap().value,
        stored.value,
        "read-only: not rewritten"
    );

    s.at(61);
    let mut visit = store.begin(&Request::new("/").cookie(&cookie));
    assert!(visit.session().unwrap().was_extended());
    let mut r = Response::new(204);
    store.finish(&mut visit, &mut r).unwrap();
    assert!(
        sc(&r).as_deref().unwrap().contains("Max-Age=600;"),
        "{:?}",
        r.set_cookie
    );

    s.at(61 + 599);
    let mut visit = store.begin(&Request::new("/").cookie(&cookie));
    assert_eq!(visit.session().unwrap().origin(), &Origin::Loaded);
    s.at(61 + 599 + 600);
    let mut visit = store.begin(&Request::new("/").cookie(&cookie));
    assert_ne!(visit.session().unwrap().origin(), &Origin::Loaded);
}

#[test]
fn binding_through_the_cycle() {
    let _serial = serial();
    let s = setup();
    let store = SessionStore::builder()
        .cache(s.cache.clone())
        .bind_address(true)
        .build()
        .unwrap();
    let home: IpAddr = "203.0.113.5".parse().unwrap();
    let away: IpAddr = "2001:db8::1".parse().unwrap();
    let mut visit = store.begin(&Request::new("/").client(Client::new().address(home)));
    visit.session().unwrap().insert("user", "ada").unwrap();
    let mut r = Response::new(200);
    store.finish(&mut visit, &mut r).unwrap();
    let cookie = cookie_pair(sc(&r).as_deref().unwrap());
    let id = *visit.session().unwrap().id();

    let same = Request::new("/")
        .cookie(&cookie)
        .client(Client::new().address(home));
    assert_eq!(
        store.begin(&same).session().unwrap().origin(),
        &Origin::Loaded
    );

    let stolen = Request::new("/")
        .cookie(&cookie)
        .client(Client::new().address(away));
    let mut visit = store.begin(&stolen);
    assert_eq!(
        visit.session().unwrap().origin(),
        &Origin::New(NewReason::AddressChanged)
    );
    assert!(visit.session().unwrap().is_empty());
    let mut r = Response::new(200);
    store.finish(&mut visit, &mut r).unwrap();
    assert!(sc(&r).unwrap().contains("Max-Age=0"));
    // Deleted: the rightful owner has lost it too (that is the point of binding).
    let mut again = store.begin(&same);
    assert_eq!(
        again.session().unwrap().origin(),
        &Origin::New(NewReason::Unknown)
    );
    assert!(!s.physically_present(&store.key(&id)));
    store.finish(&mut again, &mut Response::new(200)).unwrap();
}

#[test]
fn logout_deletes_session_and_cookie() {
    let _serial = serial();
    let s = setup();
    let store = SessionStore::builder()
        .cache(s.cache.clone())
        .cookie(
            CookieConfig::new()
                .name("sid")
                .unwrap()
                .domain("example.org")
                .unwrap()
                .path("/app")
                .unwrap()
                .secure(true),
        )
        .build()
        .unwrap();
    let mut visit = store.begin(&Request::new("/app/"));
    visit.session().unwrap().insert("user", "ada").unwrap();
    let mut r = Response::new(200);
    store.finish(&mut visit, &mut r).unwrap();
    let set = sc(&r).unwrap();
    assert!(set.starts_with("sid="), "{set}");
    assert!(
        set.contains(
            "; HttpOnly; SameSite=Lax; Secure; Path=/app; Domain=example.org; Max-Age=86400;"
        ),
        "{set}"
    );
    let id = id_of(&set);

    let mut visit =
        store.begin(&Request::new("/app/logout").cookie(&format!("theme=dark; sid={id}")));
    assert_eq!(visit.session().unwrap().origin(), &Origin::Loaded);
    visit.session().unwrap().invalidate();
    let mut r = Response::redirect(303, "/app/");
    assert_eq!(
        store.finish(&mut visit, &mut r).unwrap().saved,
        Saved::Deleted
    );
    assert_eq!(
        sc(&r).as_deref(),
        Some(
            "sid=; HttpOnly; SameSite=Lax; Secure; Path=/app; Domain=example.org; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"
        )
    );
    assert!(!s.physically_present(&store.key(&id)));
}

// ---------------------------------------------------------------------------------------------
// The session file

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Session ids are secrets: a file the store creates is readable by its owner only.
#[test]
fn a_session_file_the_store_creates_is_private() {
    let _serial = serial();
    let dir = temp_dir();
    let path = dir.path().join("sessions");
    let store = SessionStore::builder().path(&path).build().unwrap();
    assert_eq!(store.cache().path(), path);
    assert_eq!(format!("{:o}", mode_of(&path)), "600");

    // The default file, in this user's private directory in the temp directory (a child sets
    // TMPDIR to a directory of its own, so the test touches no real default file).
    let tmp = temp_dir();
    let mut kids = Children::new();
    kids.spawn(|| {
        // SAFETY: the forked child has a single thread.
        unsafe {
            std::env::set_var("TMPDIR", tmp.path());
            std::env::remove_var("XDG_RUNTIME_DIR");
        }
        let store = SessionStore::builder().build().map_err(|e| e.to_string())?;
        let file = store.cache().path();
        // SAFETY: geteuid has no preconditions.
        let private = tmp
            .path()
            .join(format!("fastmmap-{}", unsafe { libc::geteuid() }));
        if file.parent() != Some(&private) {
            return Err(format!("default session file {file:?} not in {private:?}"));
        }
        match mode_of(file) {
            0o600 => Ok(()),
            mode => Err(format!("default session file {file:?} has mode {mode:o}")),
        }
    });
    kids.wait_all_ok();
}

// ---------------------------------------------------------------------------------------------
// Damaged records

/// Offsets of the created, updated, active and expires times (u64, little-endian) in a stored
/// session record (see `src/session/record.rs`).
const TIME_OFFSETS: [usize; 4] = [8, 16, 24, 32];

/// Stores that read a record's times in every way: absolute lifetime only, and sliding
/// expiry with URL ids.
fn damage_stores(s: &Setup) -> [SessionStore; 2] {
    [
        SessionStore::new(s.cache.clone()),
        SessionStore::builder()
            .cache(s.cache.clone())
            .idle_timeout(Duration::from_secs(600))
            .extend_threshold(Duration::from_secs(1))
            .urls(UrlRewriter::new(BASE).unwrap())
            .build()
            .unwrap(),
    ]
}

/// A stored session, the session as one request holds it (with an unsaved change), and a
/// visit that began before the record was damaged (also with a change).
fn stored_for_damage(store: &SessionStore) -> (SessionId, Session, Visit) {
    let mut session = store.create(&Client::new()).unwrap();
    session.insert("n", &1).unwrap();
    assert_eq!(store.save(&mut session).unwrap(), Saved::Written);
    let id = *session.id();
    session.insert("n", &2).unwrap();
    let mut visit = store.begin(&Request::new("/app/").cookie(&format!("session={id}")));
    assert_eq!(visit.session().unwrap().origin(), &Origin::Loaded);
    visit.session().unwrap().insert("n", &3).unwrap();
    (id, session, visit)
}

/// Runs every store operation on the session `id` (whose stored record was replaced behind
/// the store's back), giving `after` each result as soon as it has it. `session` and
/// `visit` are what requests held before the record was replaced.
fn every_operation(
    store: &SessionStore,
    id: SessionId,
    mut session: Session,
    mut visit: Visit,
    mut after: impl FnMut(&'static str, Result<(), SessionError>),
) {
    let cookie = format!("session={id}");
    after("load", store.load(Some(&id), &Client::new()).map(drop));
    after(
        "load_str",
        store.load_str(Some(id.as_str()), &Client::new()).map(drop),
    );
    after(
        "begin by cookie",
        store
            .begin(&Request::new("/app/").cookie(&cookie))
            .session()
            .map(drop),
    );
    if store.urls().is_some() {
        after(
            "begin by path",
            store
                .begin(&Request::new(&format!("/app/x/-/{id}")))
                .session()
                .map(drop),
        );
    }
    after(
        "update",
        store.update(&id, |s| s.insert("n", &4).unwrap()).map(drop),
    );
    after("save", store.save(&mut session.clone()).map(drop));
    after(
        "finish",
        store
            .finish(&mut visit, &mut Response::html("<a href=x>x</a>"))
            .map(drop),
    );
    let changed = store.change_id(&mut session).map(drop);
    let kept_id = session.id() == &id;
    after("change_id", changed);
    if !kept_id {
        after("change_id kept the id", Ok(()));
    }
    after("delete", store.delete(&id).map(drop));
}

/// Every operation that reads a record with an impossible time (past 2106, up to
/// `u64::MAX`) reports it as unreadable and leaves it alone; `delete` removes it.
#[test]
fn junk_times_in_a_stored_record_are_unreadable_never_a_panic() {
    let _serial = serial();
    let s = setup();
    let junk = [
        u64::MAX,
        u64::MAX - 1,
        1 << 63,
        1 << 40,
        u64::from(u32::MAX) + 1,
    ];
    for store in damage_stores(&s) {
        // Each time alone, then all four at once.
        for field in 0..=TIME_OFFSETS.len() {
            for value in junk {
                s.at(0);
                let (id, session, visit) = stored_for_damage(&store);
                let key = store.key(&id);
                let mut bytes = s.cache.get(&key).unwrap().unwrap();
                for (i, offset) in TIME_OFFSETS.iter().enumerate() {
                    if field == i || field == TIME_OFFSETS.len() {
                        bytes[*offset..*offset + 8].copy_from_slice(&value.to_le_bytes());
                    }
                }
                s.cache.set(&key, &bytes).unwrap();
                // Late enough that a load would move an idle deadline.
                s.at(5);
                let mut wrong = Vec::new();
                every_operation(&store, id, session, visit, |op, r| {
                    let unreadable = matches!(
                        r,
                        Err(SessionError::BadRecord { .. }
                            | SessionError::UnsupportedVersion { .. })
                    );
                    if op == "delete" {
                        if r.is_err() {
                            wrong.push((op, format!("{r:?}")));
                        }
                    } else if !unreadable {
                        wrong.push((op, format!("{r:?}")));
                    } else if s.cache.get(&key).unwrap().as_deref() != Some(&bytes[..]) {
                        wrong.push((op, "changed the record".to_owned()));
                    }
                });
                assert!(!s.cache.contains_key(&key).unwrap(), "delete removes it");
                assert!(
                    wrong.is_empty(),
                    "{store:?}, time {field} = {value:#x}: {wrong:?}"
                );
            }
        }
    }
}

/// Bytes for a stored record: mostly a record header (right magic, mostly the right version)
/// with any times, flags and section lengths, over JSON or junk sections; sometimes any bytes.
fn record_bytes() -> impl Strategy<Value = Vec<u8>> {
    let time = prop_oneof![
        Just(0),
        Just(u64::MAX),
        Just(u64::from(u32::MAX)),
        Just(u64::from(u32::MAX) + 1),
        T0 - 100_000..T0 + 200_000,
        any::<u64>(),
    ];
    let section = prop_oneof![
        Just(Vec::new()),
        Just(b"{}".to_vec()),
        Just(br#"{"n":1}"#.to_vec()),
        Just(b"192.0.2.1".to_vec()),
        prop::collection::vec(any::<u8>(), 0..24),
    ];
    let len =
        |real: usize| prop_oneof![3 => Just(real as u64), 1 => any::<u32>().prop_map(u64::from)];
    let header = (
        prop_oneof![4 => Just(1u16), 1 => any::<u16>()],
        prop_oneof![4 => 0u16..4, 1 => any::<u16>()],
        [time.clone(), time.clone(), time.clone(), time],
        [section.clone(), section.clone(), section.clone(), section],
    );
    let structured = header
        .prop_flat_map(move |(version, flags, times, sections)| {
            let lens: Vec<_> = sections.iter().map(|s| len(s.len())).collect();
            (Just((version, flags, times, sections)), lens, 0usize..8)
        })
        .prop_map(|((version, flags, times, sections), lens, cut)| {
            let mut b = b"FMSR".to_vec();
            b.extend_from_slice(&version.to_le_bytes());
            b.extend_from_slice(&flags.to_le_bytes());
            for t in times {
                b.extend_from_slice(&t.to_le_bytes());
            }
            b.extend_from_slice(&(lens[0] as u32).to_le_bytes());
            b.extend_from_slice(&(lens[1] as u32).to_le_bytes());
            b.extend_from_slice(&(lens[2] as u16).to_le_bytes());
            b.extend_from_slice(&(lens[3] as u16).to_le_bytes());
            for section in sections {
                b.extend_from_slice(&section);
            }
            // Sometimes cut short.
            if cut == 0 {
                b.truncate(b.len() / 2);
            }
            b
        });
    prop_oneof![4 => structured, 1 => prop::collection::vec(any::<u8>(), 0..80)]
}

/// Whatever bytes a stored record holds, no store operation panics, and none writes a
/// record that cannot be read back.
#[test]
fn arbitrary_stored_records_never_panic() {
    let _serial = serial();
    let s = setup();
    let stores = damage_stores(&s);
    let config = ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    TestRunner::new(config)
        .run(&record_bytes(), |bytes| {
            for store in &stores {
                s.at(0);
                let (id, session, visit) = stored_for_damage(store);
                let key = store.key(&id);
                s.cache.set(&key, &bytes).unwrap();
                s.at(5);
                every_operation(store, id, session, visit, |_, _| {});
                // Whatever was written under any id is readable.
                for key in s.cache.keys() {
                    let key = key.unwrap();
                    let Some(text) = key.strip_prefix(b"session:") else {
                        continue;
                    };
                    let other: SessionId = std::str::from_utf8(text).unwrap().parse().unwrap();
                    if other != id {
                        store.load(Some(&other), &Client::new()).unwrap();
                        store.delete(&other).unwrap();
                    }
                }
                store.delete(&id).unwrap();
            }
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Hostile HTML and awkward URLs

fn rewrite(store: &SessionStore, html: &[u8]) -> (Response, SessionId) {
    let mut visit = store.begin(&Request::new("/app/page"));
    visit.session().unwrap().insert("k", &1).unwrap();
    let mut r = Response::html(html.to_vec());
    let done = store.finish(&mut visit, &mut r).unwrap();
    assert!(done.body_error.is_none(), "{:?}", done.body_error);
    (r, *visit.session().unwrap().id())
}

#[test]
fn hostile_html() {
    let _serial = serial();
    let s = setup();
    let store = s.url_store(UrlStyle::Query);

    // Quotes inside attributes cannot break out of the rewritten attribute.
    let (r, id) = rewrite(
        &store,
        br#"<a href='/app/x"onmouseover="alert(1)'>q</a><a href="/app/y'z">q</a>"#,
    );
    let out = body(&r);
    assert!(
        out.contains(&format!(
            r#"href="/app/x%22onmouseover=%22alert(1)?sid={id}""#
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(r#"href="/app/y%27z?sid={id}""#))
            || out.contains(&format!(r#"href="/app/y'z?sid={id}""#)),
        "{out}"
    );
    assert!(!out.contains(r#""onmouseover"#), "{out}");

    // Unclosed and broken markup: no panic, nothing outside real attributes is touched.
    for html in [
        &b"<a href=\"/app/x"[..],
        b"<a href=/app/x",
        b"<a href",
        b"<div><div><a href=/app/x>x",
        b"<!-- <a href=/app/x>",
        b"<script>document.write('<a href=\"/app/x\">')",
        b"<a href=\"/app/x\" href=\"/app/y\">dup</a>",
        b"<<a href=/app/x>>",
        b"<a\0href=/app/x>",
        b"</a href=/app/x>",
        b"\xff\xfe<a href=/app/\xff>bin</a>\x00\x01",
    ] {
        let mut visit = store.begin(&Request::new("/app/page"));
        visit.session().unwrap().insert("k", &1).unwrap();
        let mut r = Response::html(html.to_vec());
        store.finish(&mut visit, &mut r).unwrap();
        let id = visit.session().unwrap().id().to_string();
        let out = String::from_utf8_lossy(&r.body);
        let tail_kept = html.len() >= 4 && r.body.ends_with(&html[html.len() - 4..]);
        assert!(
            tail_kept || out.contains(&id),
            "{:?} -> {out:?}",
            String::from_utf8_lossy(html)
        );
    }
    let (r, id) = rewrite(&store, b"<a href=\"/app/x\" href=\"/app/y\">dup</a>");
    assert_eq!(body(&r).matches(id.as_str()).count(), 1, "{}", body(&r));
    let (r, _) = rewrite(&store, b"<!-- <a href=/app/x> -->");
    assert_eq!(body(&r), "<!-- <a href=/app/x> -->");

    // A huge body with many links.
    let link =
        "<p><a href=\"/app/item?id=1\">item</a> <a href=\"https://cdn.example/x.js\">cdn</a></p>\n";
    let big = link.repeat(2 << 20 >> 7);
    let (r, id) = rewrite(&store, big.as_bytes());
    let out = body(&r);
    assert_eq!(
        out.matches(&format!("?id=1&amp;sid={id}")).count(),
        big.matches("?id=1").count()
    );
    assert!(!out.contains(&format!("x.js?sid={id}")));

    // A huge attribute and deep nesting.
    let long = format!("<a href=\"/app/{}\">x</a>", "a".repeat(1 << 20));
    let (r, id) = rewrite(&store, long.as_bytes());
    assert!(body(&r).ends_with(&format!("?sid={id}\">x</a>")));
    let deep = "<div>".repeat(10_000) + "<a href=/app/deep>d</a>";
    let (r, id) = rewrite(&store, deep.as_bytes());
    assert!(body(&r).ends_with(&format!("<a href=\"/app/deep?sid={id}\">d</a>")));

    // Nesting so deep that the parser would pass its memory limit: the page goes out as it
    // was, and the caller is told why.
    let deeper = "<div>".repeat(200_000) + "<a href=/app/deep>d</a>";
    let mut visit = store.begin(&Request::new("/app/page"));
    visit.session().unwrap().insert("k", &1).unwrap();
    let mut r = Response::html(deeper.clone());
    let done = store.finish(&mut visit, &mut r).unwrap();
    let e = done.body_error.expect("over the memory limit");
    assert!(e.to_string().contains("memory limit"), "{e}");
    assert_eq!(r.body, deeper.as_bytes());
    assert!(r.set_cookie.is_some());
}

/// The attribute values in `html` that carry `id`.
fn values_with_id<'a>(html: &'a str, id: &SessionId) -> Vec<&'a str> {
    html.split('"')
        .filter(|v| v.contains(id.as_str()))
        .collect()
}

#[test]
fn a_base_href_never_sends_the_id_elsewhere() {
    let _serial = serial();
    let s = setup();
    let app = "http://localhost:3000/app/";
    // Pages whose <base> (before or after the links, plain or in markup that browsers read
    // in more than one way) points elsewhere. Whatever a browser takes as the base, every
    // URL that carries the id must go to the application: each is written absolute.
    let pages = [
        r#"<a href="/app/a">a</a><form action="/app/f"><button formaction="/app/b">b</button></form><form></form><area href="x"><base href="http://evil.example/">"#,
        r#"<base href="//evil.example/app/"><form action=""><input type="image" formaction=""></form><a href="/app/a">a</a>"#,
        r#"<noscript><base href="//evil.example/"></noscript><a href="/app/a">a</a><a href="x">x</a><form></form>"#,
        r#"<template><base href="/app/"></template><noscript>&lt;<BASE href=//evil.example/></noscript><a href="/app/a">a</a>"#,
        r#"<select><base href="/app/"></select><base href="//evil.example/"><a href="/app/a">a</a><form></form>"#,
        r#"<a href="/app/a" ping="https://evil.example/ping">a</a><base href="/app/"><iframe src="/app/frame"></iframe><frameset><frame src="/app/frame"></frameset>"#,
    ];
    for style in [UrlStyle::Path, UrlStyle::Query] {
        let store = s.url_store(style);
        for page in pages {
            if page.contains("<noscript>") {
                // Markup in <noscript> is text to the HTML parser and tags to a browser
                // without scripts: such a page is served as it was, without ids.
                let mut visit = store.begin(&Request::new("/app/page"));
                visit.session().unwrap().insert("k", &1).unwrap();
                let mut r = Response::html(page.as_bytes().to_vec());
                let done = store.finish(&mut visit, &mut r).unwrap();
                assert!(done.body_error.is_some(), "{style:?}: {}", body(&r));
                assert_eq!(body(&r), page);
                continue;
            }
            let (r, id) = rewrite(&store, page.as_bytes());
            let out = body(&r);
            for value in values_with_id(out, &id) {
                // The id alone is the value of a hidden field (query style), in a form all
                // of whose submissions go to the application (checked below).
                assert!(
                    value.starts_with(app) || value == id.as_str(),
                    "{style:?}: {value} in\n{out}"
                );
            }
        }
    }
    // A form whose button may submit it to evil.example gets no hidden id field.
    let store = s.url_store(UrlStyle::Query);
    let (r, id) = rewrite(&store, pages[0].as_bytes());
    assert!(
        !body(&r).contains(&format!(r#"value="{id}""#)),
        "{}",
        body(&r)
    );
    // The plain case: the empty form posts to the page itself, the links go to evil.example
    // untouched.
    let store = s.url_store(UrlStyle::Path);
    let (r, id) = rewrite(&store, pages[0].as_bytes());
    assert_eq!(
        values_with_id(body(&r), &id),
        [format!("{app}page/-/{id}")],
        "{}",
        body(&r)
    );
    assert!(body(&r).starts_with(
        r#"<a href="/app/a">a</a><form action="/app/f"><button formaction="/app/b">"#
    ));
}

#[test]
fn a_request_path_that_looks_like_a_host_never_leaks() {
    let _serial = serial();
    let s = setup();
    let store = SessionStore::builder()
        .cache(s.cache.clone())
        .urls(UrlRewriter::new("http://localhost:3000/").unwrap())
        .build()
        .unwrap();
    // A link to `http://localhost:3000//evil.example/x` sent to a victim without cookies.
    let mut visit = store.begin(&Request::new("//evil.example/x"));
    visit.session().unwrap().insert("k", &1).unwrap();
    let mut page = Response::html(r#"<a href="y">y</a><form action="?q=1"></form><form></form>"#);
    store.finish(&mut visit, &mut page).unwrap();
    let id = *visit.session().unwrap().id();
    let out = body(&page);
    let values = values_with_id(out, &id);
    assert_eq!(values.len(), 3, "{out}");
    for value in values {
        assert!(
            value.starts_with("http://localhost:3000//evil.example/"),
            "{value} in {out}"
        );
    }
    let mut visit = store.begin(&Request::new("//evil.example/x"));
    visit.session().unwrap().insert("k", &1).unwrap();
    let mut redirect = Response::redirect(302, "next");
    store.finish(&mut visit, &mut redirect).unwrap();
    let location = redirect.location.unwrap();
    assert!(
        location.starts_with("http://localhost:3000//evil.example/next/-/"),
        "{location}"
    );
}

#[test]
fn markup_the_parser_refuses_is_sent_unchanged() {
    let _serial = serial();
    let s = setup();
    let store = s.url_store(UrlStyle::Path);
    let ambiguous = r#"<select><xmp><script>"use strict";</script></select><a href="/app/x">x</a>"#;
    let mut visit = store.begin(&Request::new("/app/"));
    visit.session().unwrap().insert("k", &1).unwrap();
    let mut r = Response::html(ambiguous);
    let done = store.finish(&mut visit, &mut r).unwrap();
    let e = done
        .body_error
        .expect("the parser gives up on ambiguous markup");
    assert!(e.to_string().contains("not rewritten"), "{e}");
    assert_eq!(body(&r), ambiguous);
    assert_eq!(done.saved, Saved::Written);
    assert!(r.set_cookie.is_some());
}

#[test]
fn fragments_ports_user_info_and_idns() {
    let _serial = serial();
    let s = setup();
    let store = SessionStore::builder()
        .cache(s.cache.clone())
        .urls(UrlRewriter::new("https://bücher.example:8443/shop/").unwrap())
        .build()
        .unwrap();
    let html = r##"<a href="https://bücher.example:8443/shop/a#sec">idn</a>
<a href="https://xn--bcher-kva.example:8443/shop/b?x=1#f">punycode</a>
<a href="https://BÜCHER.EXAMPLE:8443/shop/c">upper</a>
<a href="https://bücher.example/shop/d">default port</a>
<a href="https://bücher.example:8444/shop/e">other port</a>
<a href="https://user:pw@bücher.example:8443/shop/f">user-info</a>
<a href="https://bücher.example:8443@evil.example/shop/g">user-info trick</a>
<a href="https://bucher.example:8443/shop/h">look-alike</a>
<a href="http://bücher.example:8443/shop/i">http</a>
<a href="#only">fragment only</a>
<a href="j#frag">relative with fragment</a>"##;
    let mut visit = store.begin(&Request::new("/shop/list"));
    visit.session().unwrap().insert("k", &1).unwrap();
    let mut r = Response::html(html);
    store.finish(&mut visit, &mut r).unwrap();
    let id = visit.session().unwrap().id().to_string();
    let out = body(&r);
    let host = "https://xn--bcher-kva.example:8443";
    for want in [
        format!(r#"href="{host}/shop/a/-/{id}#sec""#),
        format!(r#"href="{host}/shop/b/-/{id}?x=1#f""#),
        format!(r#"href="{host}/shop/c/-/{id}""#),
        format!(r#"href="/shop/j/-/{id}#frag""#),
    ] {
        assert!(out.contains(&want), "missing {want}:\n{out}");
    }
    assert_eq!(out.matches(id.as_str()).count(), 4, "{out}");
    for kept in [
        r#"href="https://bücher.example/shop/d""#,
        r#"href="https://bücher.example:8444/shop/e""#,
        r#"href="https://user:pw@bücher.example:8443/shop/f""#,
        r#"href="https://bücher.example:8443@evil.example/shop/g""#,
        r#"href="https://bucher.example:8443/shop/h""#,
        r#"href="http://bücher.example:8443/shop/i""#,
        r##"href="#only""##,
    ] {
        assert!(out.contains(kept), "changed {kept}:\n{out}");
    }
    // Adding ids to URLs directly.
    let urls = store.urls().unwrap();
    let sid: SessionId = id.parse().unwrap();
    assert_eq!(
        urls.add_id("https://bücher.example:8443/shop/?q=ä#top", &sid)
            .unwrap(),
        format!("{host}/shop/-/{id}?q=%C3%A4#top")
    );
    assert_eq!(urls.add_id("/", &sid).unwrap(), format!("/-/{id}"));
}

// ---------------------------------------------------------------------------------------------
// The lazy request cycle

#[test]
fn a_request_that_never_uses_its_session_touches_nothing() {
    let _serial = serial();
    let s = setup();
    let store = s.url_store(UrlStyle::Path);
    let mut visit = store.begin(&Request::new("/app/"));
    visit.session().unwrap().insert("n", &1).unwrap();
    visit.session().unwrap().flash("notice", "saved").unwrap();
    let mut r = Response::redirect(303, "/app/next");
    store.finish(&mut visit, &mut r).unwrap();
    let cookie = cookie_pair(sc(&r).as_deref().unwrap());
    let id = *visit.session().unwrap().id();
    let before = s.cache.entry(&store.key(&id)).unwrap().unwrap();

    // A static asset, by cookie and by URL: nothing loaded, written or consumed.
    for request in [
        Request::new("/app/logo.png").cookie(&cookie),
        Request::new("/app/style.css"),
    ] {
        let mut visit = store.begin(&request);
        let mut r = Response::new(200).content_type("image/png");
        let done = store.finish(&mut visit, &mut r).unwrap();
        assert!(!visit.is_loaded());
        assert_eq!(done.saved, Saved::Unchanged);
        assert_eq!(sc(&r), None);
    }
    let after = s.cache.entry(&store.key(&id)).unwrap().unwrap();
    assert_eq!(after.value, before.value, "the record is untouched");

    // A request that uses the session but not its flash leaves the flash for later.
    let mut visit = store.begin(&Request::new("/app/count").cookie(&cookie));
    assert_eq!(visit.session().unwrap().get::<u32>("n").unwrap(), Some(1));
    assert!(visit.session().unwrap().has_pending_flash());
    assert!(matches!(
        visit.session().unwrap().get_flash::<String>("notice"),
        Err(SessionError::FlashNotTaken)
    ));
    store
        .finish(&mut visit, &mut Response::html("<p>1</p>"))
        .unwrap();

    // The request that reads it consumes it; the next one sees nothing.
    let mut visit = store.begin(&Request::new("/app/flash").cookie(&cookie));
    assert_eq!(
        visit.get_flash::<String>("notice").unwrap().as_deref(),
        Some("saved")
    );
    store.finish(&mut visit, &mut Response::new(200)).unwrap();
    let mut visit = store.begin(&Request::new("/app/flash").cookie(&cookie));
    assert_eq!(visit.get_flash::<String>("notice").unwrap(), None);
}

#[test]
fn a_url_id_stays_in_links_of_pages_that_never_use_the_session() {
    let _serial = serial();
    let s = setup();
    let store = s.url_store(UrlStyle::Path);
    let mut visit = store.begin(&Request::new("/app/"));
    visit.session().unwrap().insert("n", &1).unwrap();
    store.finish(&mut visit, &mut Response::new(200)).unwrap();
    let id = *visit.session().unwrap().id();

    let target = format!("/app/about/-/{id}");
    let mut visit = store.begin(&Request::new(&target));
    let mut page = Response::html(r#"<a href="/app/items">items</a>"#);
    let done = store.finish(&mut visit, &mut page).unwrap();
    assert_eq!(
        body(&page),
        format!(r#"<a href="/app/items/-/{id}">items</a>"#)
    );
    assert_eq!(done.page.as_ref().map(|p| *p.id()), Some(id));

    // A planted (unknown) id in the URL is checked, never written into the page.
    let planted = SessionId::generate().unwrap();
    let target = format!("/app/about/-/{planted}");
    let mut visit = store.begin(&Request::new(&target));
    let mut page = Response::html(r#"<a href="/app/items">items</a>"#);
    let done = store.finish(&mut visit, &mut page).unwrap();
    assert_eq!(body(&page), r#"<a href="/app/items">items</a>"#);
    assert!(done.page.is_none());
    assert_eq!(sc(&page), None);
}

#[test]
fn update_in_a_visit_is_atomic_across_processes() {
    let _serial = serial();
    let s = setup();
    let store = s.store();
    let mut visit = store.begin(&Request::new("/"));
    let first = visit
        .update(|s| {
            let n = s.get::<u64>("n").unwrap().unwrap_or(0) + 1;
            s.insert("n", &n).unwrap();
            n
        })
        .unwrap();
    assert_eq!(first, 1, "a new session is changed in place");
    let mut r = Response::new(200);
    store.finish(&mut visit, &mut r).unwrap();
    let cookie = cookie_pair(sc(&r).as_deref().unwrap());
    let mut kids = Children::new();
    for _ in 0..4 {
        let (store, cookie) = (store.clone(), cookie.clone());
        kids.spawn(move || {
            for _ in 0..50 {
                let mut visit = store.begin(&Request::new("/").cookie(&cookie));
                visit
                    .update(|s| {
                        let n = s.get::<u64>("n").unwrap().unwrap_or(0) + 1;
                        s.insert("n", &n).unwrap();
                    })
                    .map_err(|e| e.to_string())?;
                store
                    .finish(&mut visit, &mut Response::new(200))
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        });
    }
    kids.wait_all_ok();
    let mut visit = store.begin(&Request::new("/").cookie(&cookie));
    assert_eq!(visit.session().unwrap().get::<u64>("n").unwrap(), Some(201));
    // Another request's view follows the update, keeping its own changes.
    visit.session().unwrap().insert("mine", &true).unwrap();
    visit.update(|s| s.insert("n", &500).unwrap()).unwrap();
    let session = visit.session().unwrap();
    assert_eq!(session.get::<u64>("n").unwrap(), Some(500));
    assert_eq!(session.get::<bool>("mine").unwrap(), Some(true));
    // A session deleted meanwhile: the visit goes on with a new one.
    store.delete(visit.session().unwrap().id()).unwrap();
    let fresh = visit.update(|s| *s.id()).unwrap();
    assert_ne!(
        Some(fresh),
        SessionId::parse(&cookie["session=".len()..]).ok()
    );
    assert!(visit.session().unwrap().is_new());
}

#[test]
fn secure_only_over_https() {
    let _serial = serial();
    let s = setup();
    let store = SessionStore::builder()
        .cache(s.cache.clone())
        .cookie(CookieConfig::new().secure_when(fastmmap::session::Secure::IfHttps))
        .build()
        .unwrap();
    for https in [false, true] {
        let mut visit = store.begin(&Request::new("/").https(https));
        assert_eq!(visit.is_https(), https);
        visit.session().unwrap().insert("n", &1).unwrap();
        let mut r = Response::new(200);
        store.finish(&mut visit, &mut r).unwrap();
        assert_eq!(sc(&r).unwrap().contains("; Secure"), https);
    }
}
