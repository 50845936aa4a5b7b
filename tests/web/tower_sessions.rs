//! `FastMmapStore`, the tower-sessions store, against the semantics tower-sessions documents
//! for `SessionStore` (an id collision on `create` gets a new id; `save` creates or
//! replaces; `load` of a missing or expired record is `None`; `delete`), across forked
//! processes, and behind tower-sessions' own `SessionManagerLayer` over real HTTP.

use std::collections::HashSet;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::routing::any;
use fastmmap::web::{FastMmapStore, TOWER_SESSIONS_PREFIX};
use fastmmap::{Cache, ManualClock};
use time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::ExpiredDeletion;
use tower_sessions::{Expiry, SessionManagerLayer, SessionStore};

use crate::common::{Children, serial, temp_dir};
use crate::server::{Client, Server};

const T0: u64 = 1_700_000_000;

fn at(secs: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs as i64).unwrap()
}

fn record(id: i128, expires: u64, value: &str) -> Record {
    let mut data = std::collections::HashMap::new();
    data.insert("v".to_owned(), serde_json::json!(value));
    Record {
        id: Id(id),
        data,
        expiry_date: at(expires),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    clock: ManualClock,
    store: FastMmapStore,
}

fn fixture() -> Fixture {
    let dir = temp_dir();
    let path = dir.path().join("tower.cache");
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(T0));
    let cache = Cache::builder()
        .path(&path)
        .clock(clock.clone())
        .open()
        .unwrap();
    Fixture {
        _dir: dir,
        path,
        clock,
        store: FastMmapStore::new(cache),
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn create_never_overwrites_a_taken_id() {
    let _serial = serial();
    let f = fixture();
    block_on(async {
        let mut first = record(42, T0 + 60, "first");
        f.store.create(&mut first).await.unwrap();
        assert_eq!(first.id, Id(42));
        let mut second = record(42, T0 + 60, "second");
        f.store.create(&mut second).await.unwrap();
        assert_ne!(second.id, Id(42), "a colliding id is replaced");
        assert_eq!(f.store.load(&Id(42)).await.unwrap(), Some(first));
        assert_eq!(f.store.load(&second.id).await.unwrap(), Some(second));
    });
}

#[test]
fn save_load_and_delete() {
    let _serial = serial();
    let f = fixture();
    block_on(async {
        assert_eq!(f.store.load(&Id(7)).await.unwrap(), None);
        let r = record(7, T0 + 60, "a");
        f.store.save(&r).await.unwrap();
        assert_eq!(f.store.load(&Id(7)).await.unwrap(), Some(r));
        let changed = record(7, T0 + 120, "b");
        f.store.save(&changed).await.unwrap();
        assert_eq!(f.store.load(&Id(7)).await.unwrap(), Some(changed));
        let key = f.store.key(&Id(7));
        assert!(key.starts_with(TOWER_SESSIONS_PREFIX.as_bytes()));
        f.store.delete(&Id(7)).await.unwrap();
        assert_eq!(f.store.load(&Id(7)).await.unwrap(), None);
        assert!(!f.store.cache().contains_key(&key).unwrap());
        // Deleting what is not there is fine.
        f.store.delete(&Id(7)).await.unwrap();
        // A value that is not a record is an error, not a session.
        f.store.cache().set(&f.store.key(&Id(8)), b"junk").unwrap();
        assert!(f.store.load(&Id(8)).await.is_err());
    });
}

#[test]
fn records_expire_at_their_expiry_date() {
    let _serial = serial();
    let f = fixture();
    block_on(async {
        let r = record(1, T0 + 10, "x");
        f.store.save(&r).await.unwrap();
        f.clock.advance(Duration::from_secs(9));
        assert_eq!(f.store.load(&Id(1)).await.unwrap(), Some(r.clone()));
        f.clock.advance(Duration::from_secs(1));
        assert_eq!(f.store.load(&Id(1)).await.unwrap(), None);
        // The cache entry expires with the record.
        assert!(!f.store.cache().contains_key(&f.store.key(&Id(1))).unwrap());
        // Saving a record already expired removes it.
        let live = record(2, T0 + 100, "y");
        f.store.save(&live).await.unwrap();
        f.store.save(&record(2, T0, "y")).await.unwrap();
        assert_eq!(f.store.load(&Id(2)).await.unwrap(), None);
        // A sub-second expiry is kept to the instant: the entry is not dropped early.
        let mut precise = record(3, T0 + 20, "z");
        precise.expiry_date += time::Duration::milliseconds(500);
        f.store.save(&precise).await.unwrap();
        f.clock.advance(Duration::from_secs(10));
        assert_eq!(f.store.load(&Id(3)).await.unwrap(), Some(precise));
        // delete_expired purges what has expired.
        f.store.save(&record(4, T0 + 25, "w")).await.unwrap();
        f.clock.advance(Duration::from_secs(10));
        f.store.delete_expired().await.unwrap();
        let raw = Cache::builder()
            .path(&f.path)
            .clock(ManualClock::new(UNIX_EPOCH + Duration::from_secs(T0)))
            .open()
            .unwrap();
        assert!(!raw.contains_key(&f.store.key(&Id(4))).unwrap());
    });
}

#[test]
fn a_session_created_in_one_process_is_loaded_in_another() {
    let _serial = serial();
    let f = fixture();
    let mut r = record(99, T0 + 60, "shared");
    block_on(f.store.create(&mut r)).unwrap();
    let mut kids = Children::new();
    let store = f.store.clone();
    kids.spawn(move || {
        let loaded = block_on(store.load(&Id(99))).map_err(|e| e.to_string())?;
        if loaded.as_ref().and_then(|r| r.data.get("v")) != Some(&serde_json::json!("shared")) {
            return Err(format!("child loaded {loaded:?}"));
        }
        let mut mine = record(99, T0 + 60, "child");
        block_on(store.create(&mut mine)).map_err(|e| e.to_string())?;
        if mine.id == Id(99) {
            return Err("create reused a taken id".into());
        }
        block_on(store.save(&record(100, T0 + 60, "from the child"))).map_err(|e| e.to_string())
    });
    kids.wait_all_ok();
    let back = block_on(f.store.load(&Id(100))).unwrap().unwrap();
    assert_eq!(back.data["v"], serde_json::json!("from the child"));
}

#[test]
fn tower_sessions_over_http_in_forked_workers() {
    let _serial = serial();
    let dir = temp_dir();
    let path = dir.path().join("tower.cache");
    let server = Server::start(3, dir, move |_addr| {
        let cache = Cache::builder().path(&path).open().unwrap();
        async fn count(session: tower_sessions::Session) -> String {
            let n: u64 = session.get("n").await.unwrap().unwrap_or(0) + 1;
            session.insert("n", n).await.unwrap();
            format!("n={n}")
        }
        async fn stylesheet() -> &'static str {
            "body {}"
        }
        Router::new()
            .route("/count", any(count))
            .layer(
                SessionManagerLayer::new(FastMmapStore::new(cache))
                    .with_secure(false)
                    .with_expiry(Expiry::OnInactivity(time::Duration::hours(1))),
            )
            .route("/static/app.css", any(stylesheet))
            .layer(axum::middleware::map_response(
                |mut r: axum::response::Response| async move {
                    r.headers_mut()
                        .insert("x-worker", std::process::id().into());
                    r
                },
            ))
    });
    let mut client = Client::new(server.addr);
    let mut workers = HashSet::new();
    let mut n = 0;
    // Every request on a new connection, which the kernel hands to whichever worker accepts:
    // on until a second worker has answered (as `a_cookie_session_spread_over_workers_…`),
    // since one worker may take the first 30 while the others start.
    while n < 30 || (workers.len() < 2 && n < 400) {
        n += 1;
        let r = client.get("/count");
        assert_eq!(r.body, format!("n={n}"));
        workers.insert(r.worker());
    }
    assert!(
        client
            .cookie
            .as_deref()
            .is_some_and(|c| c.starts_with("id="))
    );
    assert!(workers.len() >= 2, "{workers:?}");
}
