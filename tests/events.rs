//! Faults are visible: each fault the library recovers from by itself emits its `tracing`
//! event, with the file, page or server named, and the matching `Stats` counter moves with it.
//!
//! A small subscriber of our own, installed once for the whole binary, captures every
//! `fastmmap::…` event; each test picks out the events that name its own file. Events emitted
//! in a forked child stay in the child, so a fault made by a child is observed in the parent,
//! when the next user finds it.

mod common;
#[cfg(feature = "redis")]
#[path = "redis/server.rs"]
#[allow(dead_code)] // the harness of the Redis tests; this file uses a part
mod server;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, Once};
use std::time::{Duration, SystemTime};

use common::*;
use fastmmap::{Backing, BackingError, Cache, Error, Layout, WriteMode};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber, span};

/// One event as captured: its target, level and fields (the message under `message`).
#[derive(Clone, Debug)]
struct Captured {
    target: String,
    level: Level,
    fields: BTreeMap<String, String>,
}

impl Captured {
    fn field(&self, name: &str) -> &str {
        match self.fields.get(name) {
            Some(value) => value,
            None => panic!("event without field {name}: {self:?}"),
        }
    }
}

static EVENTS: Mutex<Vec<Captured>> = Mutex::new(Vec::new());

/// Keeps every event of the crate in [`EVENTS`].
struct Capture;

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl Subscriber for Capture {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target().starts_with("fastmmap")
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let captured = Captured {
            target: event.metadata().target().to_owned(),
            level: *event.metadata().level(),
            fields,
        };
        EVENTS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(captured);
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tracing::subscriber::set_global_default(Capture).expect("the only global subscriber");
    });
}

/// The events captured so far whose `path` is `path`, of `target`.
fn events(path: &Path, target: &str) -> Vec<Captured> {
    let path = path.display().to_string();
    EVENTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|e| e.target == target && e.fields.get("path") == Some(&path))
        .cloned()
        .collect()
}

/// The one event of `target` for `path`.
fn one_event(path: &Path, target: &str) -> Captured {
    let found = events(path, target);
    assert_eq!(
        found.len(),
        1,
        "one {target} event for {path:?}: {found:#?}"
    );
    found.into_iter().next().expect("one")
}

/// A backing store in memory that fails every call when told to.
#[derive(Clone, Default)]
struct Store {
    map: std::sync::Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Store {
    fn check(&self) -> Result<(), BackingError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            Err("the database is down".into())
        } else {
            Ok(())
        }
    }
}

impl Backing for Store {
    fn load(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackingError> {
        self.check()?;
        Ok(self.map.lock().unwrap().get(key).cloned())
    }
    fn store(
        &self,
        key: &[u8],
        value: &[u8],
        _expires_at: Option<SystemTime>,
    ) -> Result<(), BackingError> {
        self.check()?;
        self.map
            .lock()
            .unwrap()
            .insert(key.to_vec(), value.to_vec());
        Ok(())
    }
    fn delete(&self, key: &[u8]) -> Result<(), BackingError> {
        self.check()?;
        self.map.lock().unwrap().remove(key);
        Ok(())
    }
}

const NUM_PAGES: u32 = 4;
const PAGE_SIZE: u32 = 8192;

/// A page whose header is damaged is reset by the next read: one warning naming the file, the
/// page and why, and the page's reset counter moves; on both layouts.
#[test]
fn a_damaged_page_is_reset_with_a_warning() {
    let _serial = serial();
    install();
    let dir = temp_dir();
    for layout in [Layout::Native, Layout::FastMmap] {
        let path = dir.path().join(format!("{layout:?}.cache"));
        let cache = Cache::builder()
            .path(&path)
            .layout(layout)
            .num_pages(NUM_PAGES)
            .page_size(PAGE_SIZE)
            .open()
            .expect("open");
        cache.set(b"k", b"v").expect("set");
        let page = key_page(layout, b"k", NUM_PAGES);
        let raw = raw_file(&path);
        write_u32(
            &raw,
            page_offset(layout, NUM_PAGES, PAGE_SIZE, page),
            0xdead_beef,
        );
        assert_eq!(cache.get(b"k").expect("get"), None, "{layout:?}: reset");

        let stats = cache.stats().expect("stats");
        assert_eq!(stats.resets, 1, "{layout:?}");
        assert_eq!(stats.pages[page as usize].resets, 1, "{layout:?}");
        let e = one_event(&path, "fastmmap::page");
        assert_eq!(e.level, Level::WARN, "{layout:?}");
        assert_eq!(e.field("page"), page.to_string(), "{layout:?}");
        assert_eq!(e.field("dirty_lost"), "0", "{layout:?}");
        assert!(e.field("reason").contains("magic"), "{layout:?}: {e:?}");
        assert!(events(&path, "fastmmap::write_back").is_empty());
    }
}

/// A writer killed in the middle of a change (its busy marker left set) holding dirty
/// write-back entries: the next user resets the page, and the loss is an error event naming
/// the file, the page and how many entries, counted in `Stats::dirty_lost`.
#[test]
fn dirty_entries_lost_with_a_killed_writer_are_an_error() {
    let _serial = serial();
    install();
    let dir = temp_dir();
    for kind in [NATIVE, ROBUST] {
        let path = dir.path().join(format!("{:?}.cache", kind.lock));
        let cache = kind
            .builder()
            .path(&path)
            .num_pages(1)
            .page_size(PAGE_SIZE)
            .backing(Store::default())
            .write_mode(WriteMode::Back)
            .open()
            .expect("open");
        let ready = Pipe::new();
        let mut kids = Children::new();
        let writer = {
            let cache = cache.clone();
            let path = path.clone();
            let ready = &ready;
            kids.spawn(move || {
                for i in 0..3 {
                    cache
                        .set(format!("dirty{i}").as_bytes(), b"never written back")
                        .map_err(|e| format!("set: {e}"))?;
                }
                // What a SIGKILL in the middle of a structural change leaves: the busy marker.
                write_u32(&raw_file(&path), busy_marker_offset(0), 1);
                ready.release(1);
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
        };
        ready.wait();
        kids.kill(writer);
        assert!(events(&path, "fastmmap::page").is_empty(), "nothing yet");

        assert_eq!(cache.get(b"dirty0").expect("get"), None, "{kind:?}: reset");
        let stats = cache.stats().expect("stats");
        assert_eq!((stats.resets, stats.dirty_lost), (1, 3), "{kind:?}");
        let reset = one_event(&path, "fastmmap::page");
        assert_eq!(reset.level, Level::WARN);
        assert!(reset.field("reason").contains("busy marker"), "{reset:?}");
        assert_eq!(reset.field("dirty_lost"), "3");
        let lost = one_event(&path, "fastmmap::write_back");
        assert_eq!(lost.level, Level::ERROR);
        assert_eq!((lost.field("page"), lost.field("count")), ("0", "3"));
    }
}

/// A backing store that fails a write-back (a flush, an eviction): the caller gets the error,
/// the operator an error event naming the file and the call (not the key), and
/// `Stats::backing_errors` counts it.
#[test]
fn a_failing_write_back_is_an_error_event() {
    let _serial = serial();
    install();
    let dir = temp_dir();
    let path = dir.path().join("c");
    let store = Store::default();
    let cache = Cache::builder()
        .path(&path)
        .backing(store.clone())
        .write_mode(WriteMode::Back)
        .open()
        .expect("open");
    cache.set(b"secret-key", b"v").expect("set");
    store
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    match cache.flush() {
        Err(Error::Backing { op: "store", .. }) => {}
        other => panic!("flush with the store down: {other:?}"),
    }
    assert_eq!(cache.stats().expect("stats").backing_errors, 1);
    let e = one_event(&path, "fastmmap::backing");
    assert_eq!(e.level, Level::ERROR);
    assert_eq!(e.field("op"), "store");
    assert_eq!(e.field("key_len"), "10");
    assert!(e.field("error").contains("the database is down"), "{e:?}");
    assert!(
        !format!("{e:?}").contains("secret-key"),
        "no key bytes in events: {e:?}"
    );
    // An eviction that must write dirty entries back first: refused, and said so each time.
    let small = dir.path().join("small");
    let evicting = Cache::builder()
        .path(&small)
        .num_pages(1)
        .page_size(4096)
        .backing(store.clone())
        .write_mode(WriteMode::Back)
        .open()
        .expect("open");
    store
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let mut i = 0;
    while evicting
        .set(format!("key{i}").as_bytes(), &[b'v'; 100])
        .is_ok()
    {
        i += 1;
        assert!(
            i < 1000,
            "a 4 KiB page holds fewer than 1000 values of 100 bytes"
        );
        if i == 10 {
            store
                .failing
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let refused = one_event(&small, "fastmmap::backing");
    assert_eq!(
        (refused.level, refused.field("op")),
        (Level::ERROR, "store")
    );
    assert_eq!(evicting.stats().expect("stats").backing_errors, 1);

    store
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(cache.flush().expect("flush"), 1, "still dirty, written now");
    cache.reset_stats().expect("reset_stats");
    assert_eq!(cache.stats().expect("stats").backing_errors, 0);
}

/// A page lock held by another process past the lock timeout: a warning naming the file and
/// the page, counted in `Stats::lock_timeouts`.
#[test]
fn a_lock_timeout_is_a_warning() {
    let _serial = serial();
    install();
    let dir = temp_dir();
    let path = dir.path().join("c");
    let cache = Cache::builder()
        .path(&path)
        .num_pages(1)
        .lock_timeout(Duration::from_millis(200))
        .open()
        .expect("open");
    let holding = Pipe::new();
    let mut kids = Children::new();
    let holder = {
        let cache = cache.clone();
        let holding = &holding;
        kids.spawn(move || {
            cache
                .update(b"k", |_| {
                    holding.release(1);
                    loop {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                })
                .map_err(|e| format!("update: {e}"))?;
            Ok(())
        })
    };
    holding.wait();
    match cache.get(b"k") {
        Err(Error::LockTimeout { page: 0, .. }) => {}
        other => panic!("get while another process holds the page: {other:?}"),
    }
    kids.kill(holder);
    assert_eq!(cache.stats().expect("stats").lock_timeouts, 1);
    let e = one_event(&path, "fastmmap::lock");
    assert_eq!(e.level, Level::WARN);
    assert_eq!((e.field("page"), e.field("timeout_ms")), ("0", "200"));
}

/// A session record that cannot be decoded: the load fails, and a warning names the file and
/// the record's kind, never the session id.
#[cfg(feature = "session")]
#[test]
fn an_undecodable_session_record_is_a_warning() {
    use fastmmap::session::{Client, Error as SessionError, SessionStore};

    let _serial = serial();
    install();
    let dir = temp_dir();
    let path = dir.path().join("sessions");
    let cache = Cache::builder().path(&path).open().expect("open");
    let store = SessionStore::new(cache.clone());
    let mut session = store.create(&Client::new()).expect("create");
    session.insert("n", &1).expect("insert");
    store.save(&mut session).expect("save");
    let id = *session.id();
    cache
        .set(&store.key(&id), b"not a session record")
        .expect("damage");

    match store.load(Some(&id), &Client::new()) {
        Err(SessionError::BadRecord { .. } | SessionError::UnsupportedVersion { .. }) => {}
        other => panic!("load of a damaged record: {other:?}"),
    }
    let e = one_event(&path, "fastmmap::session");
    assert_eq!(e.level, Level::WARN);
    assert_eq!(e.field("kind"), "session");
    assert!(
        !format!("{e:?}").contains(id.as_str()),
        "no session id in events: {e:?}"
    );
}

/// The Redis listener's connection: established (info), lost when its redis-server is killed
/// (a warning naming the server), established again when the server is back (info).
#[cfg(feature = "redis")]
#[test]
fn a_listener_losing_redis_warns_and_says_when_it_is_back() {
    use fastmmap::redis::{Listener, ListenerStatus, RedisOptions};

    let _serial = serial();
    install();
    let Some(mut server) =
        server::RedisServer::start("a_listener_losing_redis_warns_and_says_when_it_is_back")
    else {
        return;
    };
    let dir = temp_dir();
    let path = dir.path().join("c");
    let cache = Cache::builder().path(&path).open().expect("open");
    let options = || {
        RedisOptions::new(&server.url())
            .expect("a valid URL")
            .timeout(Duration::from_millis(500))
    };
    let listener = Listener::start(options(), &cache).expect("start the listener");
    assert!(listener.wait_trusted(Duration::from_secs(10)));
    let port = server.port.to_string();
    let up = one_event(&path, "fastmmap::redis");
    assert_eq!(up.level, Level::INFO);
    assert!(up.field("server").contains(&port), "{up:?}");
    assert_eq!(up.field("connections"), "1");

    server.kill();
    let lost = |path: &Path| {
        events(path, "fastmmap::redis")
            .into_iter()
            .filter(|e| e.level == Level::WARN)
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while lost(&path).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let warnings = lost(&path);
    assert_eq!(
        warnings.len(),
        1,
        "one warning however long it is down: {warnings:#?}"
    );
    assert!(warnings[0].field("server").contains(&port));
    assert!(matches!(listener.status(), ListenerStatus::Down(_)));
    // The status keeps the error itself, with its cause.
    let ListenerStatus::Down(Some(error)) = listener.status() else {
        panic!("down with an error: {:?}", listener.status());
    };
    assert!(error.to_string().contains(&port), "{error}");
    assert!(std::error::Error::source(&*error).is_some(), "{error:?}");

    server.restart();
    assert!(listener.wait_trusted(Duration::from_secs(20)));
    let infos: Vec<Captured> = events(&path, "fastmmap::redis")
        .into_iter()
        .filter(|e| e.level == Level::INFO)
        .collect();
    assert_eq!(infos.len(), 2, "{infos:#?}");
    assert_eq!(infos[1].field("connections"), "2");
    assert_eq!(lost(&path).len(), 1, "reconnection attempts are quiet");
}

/// A stored value that does not decode as the typed cache's type: the caller gets the error,
/// the operator a warning naming the file (not the key), and `Stats::decode_errors` counts it.
#[cfg(feature = "serde")]
#[test]
fn an_undecodable_typed_value_is_a_warning() {
    use fastmmap::typed::{Json, TypedCache};

    let _serial = serial();
    install();
    let dir = temp_dir();
    let path = dir.path().join("c");
    let cache = Cache::builder().path(&path).open().expect("open");
    let typed: TypedCache<str, u64, Json> = TypedCache::new(cache.clone(), Json);
    cache.set(b"count", b"not json").expect("set");
    match typed.get("count") {
        Err(Error::Decode { .. }) => {}
        other => panic!("get of a value that is not a u64: {other:?}"),
    }
    assert_eq!(cache.stats().expect("stats").decode_errors, 1);
    let e = one_event(&path, "fastmmap::decode");
    assert_eq!(e.level, Level::WARN);
    assert_eq!(e.field("key_len"), "5");
    assert!(
        !format!("{e:?}").contains("not json"),
        "no value bytes: {e:?}"
    );
}

/// The web layer: a session it cannot save is an error event (the client gets a 500), and a
/// page it will not rewrite (a NUL byte: UTF-16?) is an info event saying why; both name the
/// sessions' file.
#[cfg(feature = "axum")]
#[test]
fn the_web_layer_reports_an_unsaved_session_and_an_unrewritten_page() {
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::response::Html;
    use axum::routing::get;
    use fastmmap::session::{SessionStore, UrlRewriter};
    use fastmmap::web::{SessionHandle, SessionLayer};
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt};

    async fn nul(session: SessionHandle) -> Html<&'static str> {
        session.insert("seen", &true).unwrap();
        Html("<a href=\"/a\">a</a>\0")
    }

    let _serial = serial();
    install();
    let dir = temp_dir();
    let path = dir.path().join("s.cache");
    let store = SessionStore::builder()
        .path(&path)
        .urls(UrlRewriter::new("http://app.test/").unwrap())
        .build()
        .unwrap();
    // A session larger than the cache's largest value (its overflow area's max_value_size).
    let huge = store.cache().max_value_size() + 1;
    let app = SessionLayer::new(store).layer(
        Router::new()
            .route(
                "/huge",
                get(move |session: SessionHandle| async move {
                    session.insert("huge", &"x".repeat(huge)).unwrap();
                    "ok"
                }),
            )
            .route("/nul", get(nul)),
    );
    let send = |uri: &str| {
        let req = Request::builder().uri(uri).body(Body::empty()).unwrap();
        let app = app.clone();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async move {
                let r = app.oneshot(req).await.unwrap();
                let status = r.status();
                let body = r.into_body().collect().await.unwrap().to_bytes();
                (status, body)
            })
    };

    let (status, _) = send("/huge");
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let e = one_event(&path, "fastmmap::session");
    assert_eq!(e.level, Level::ERROR);
    assert!(e.field("error").contains("max_value_size"), "{e:?}");

    let (status, body) = send("/nul");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"<a href=\"/a\">a</a>\0", "left as it was");
    let e = one_event(&path, "fastmmap::web");
    assert_eq!(e.level, Level::INFO);
    assert!(e.field("error").contains("NUL"), "{e:?}");
}

/// Catalyst mode: a `session:SID` record that is not Storable fails the load with a warning
/// naming the file and the mode, never the session id.
#[cfg(all(feature = "session", feature = "perl"))]
#[test]
fn an_undecodable_catalyst_record_is_a_warning() {
    use fastmmap::session::{CatalystConfig, Client, Error as SessionError, SessionStore};

    let _serial = serial();
    install();
    let dir = temp_dir();
    let path = dir.path().join("session_data");
    let store = SessionStore::builder()
        .path(&path)
        .catalyst(CatalystConfig::new())
        .build()
        .expect("a Catalyst store");
    let mut session = store.create(&Client::new()).expect("create");
    session.insert("n", &1).expect("insert");
    store.save(&mut session).expect("save");
    let id = *session.id();
    let key = format!("session:{}", id.as_str());
    assert!(store.cache().get(key.as_bytes()).expect("get").is_some());
    store
        .cache()
        .set(key.as_bytes(), b"not Storable")
        .expect("damage");

    match store.load(Some(&id), &Client::new()) {
        Err(SessionError::BadRecord { .. }) => {}
        other => panic!("load of a damaged record: {other:?}"),
    }
    let e = one_event(&path, "fastmmap::session");
    assert_eq!((e.level, e.field("kind")), (Level::WARN, "catalyst"));
    assert!(
        !format!("{e:?}").contains(id.as_str()),
        "no session id in events: {e:?}"
    );
}

/// A Redis state file that is not what the listener writes (here a symbolic link) is refused:
/// the host does not trust its file, and a warning names the state file, once however often
/// it is read.
#[cfg(feature = "redis")]
#[test]
fn a_refused_redis_state_file_is_a_warning() {
    use fastmmap::redis::{RedisBacking, RedisOptions};

    let _serial = serial();
    install();
    let Some(server) = server::RedisServer::start("a_refused_redis_state_file_is_a_warning") else {
        return;
    };
    let dir = temp_dir();
    let path = dir.path().join("c");
    let state = dir.path().join("c.redis");
    std::fs::write(dir.path().join("elsewhere"), [0u8; 64]).expect("a file to point at");
    std::os::unix::fs::symlink(dir.path().join("elsewhere"), &state).expect("symlink");
    let options = RedisOptions::new(&server.url())
        .expect("a valid URL")
        .timeout(Duration::from_millis(500));
    let cache = Cache::builder()
        .path(&path)
        .backing(RedisBacking::new(options, &path))
        .open()
        .expect("open");
    cache.set(b"k", b"v").expect("set");
    for _ in 0..5 {
        assert_eq!(cache.get(b"k").expect("get").as_deref(), Some(&b"v"[..]));
    }
    let e = one_event(&state, "fastmmap::redis");
    assert_eq!(e.level, Level::WARN);
    assert!(e.field("error").contains("link"), "{e:?}");
}
