//! Unit tests of the store in Catalyst mode: the keys and values it writes, Catalyst's
//! expiry and threshold, verification, damaged records, id shapes, moves, flash, updates,
//! Perl objects kept through each of them.

use std::net::IpAddr;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use super::*;
use crate::perl::PerlFormat;
use crate::session::catalyst_record::CatalystConfig;
use crate::session::data::{NewReason, unix_secs};
use crate::session::error::Error;
use crate::session::id::{CATALYST_ID_LEN, IdFormat, InvalidId};
use crate::session::{CookieConfig, Origin};
use crate::{Cache, Expiry, Layout, ManualClock};

const T0: u64 = 1_700_000_000;
/// Catalyst's default `expires`.
const EXPIRES: u64 = 7200;

struct Fixture {
    _dir: tempfile::TempDir,
    clock: ManualClock,
    store: SessionStore,
}

fn fixture(config: CatalystConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(T0));
    let cache = Cache::builder()
        .path(dir.path().join("session_data"))
        .layout(Layout::FastMmap)
        .num_pages(89)
        .page_size(64 * 1024)
        .clock(clock.clone())
        .open()
        .unwrap();
    let store = SessionStore::builder()
        .cache(cache)
        .catalyst(config)
        .build()
        .unwrap();
    Fixture {
        _dir: dir,
        clock,
        store,
    }
}

impl Fixture {
    fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }

    fn stored(&self, key: &str, value: u64) -> SessionId {
        let mut s = self.store.load(None, &Client::new()).unwrap();
        s.insert(key, &value).unwrap();
        assert_eq!(self.store.save(&mut s).unwrap(), Saved::Written);
        *s.id()
    }

    fn raw(&self, kind: &str, id: &SessionId) -> Option<Vec<u8>> {
        self.store
            .cache()
            .get(format!("{kind}:{id}").as_bytes())
            .unwrap()
    }

    /// `session:SID` as Perl thaws it.
    fn hash(&self, id: &SessionId) -> serde_json::Map<String, Value> {
        PerlFormat::default()
            .decode(&self.raw("session", id).expect("session:SID"))
            .unwrap()
    }

    /// `expires:SID` as Perl thaws it.
    fn expires(&self, id: &SessionId) -> Option<u64> {
        self.raw("expires", id)
            .map(|b| PerlFormat::default().decode(&b).unwrap())
    }
}

#[test]
fn a_new_session_is_written_as_catalyst_writes_it() {
    let f = fixture(CatalystConfig::new());
    let id = f.stored("count", 1);
    assert_eq!(id.as_str().len(), CATALYST_ID_LEN);
    assert_eq!(id.format(), IdFormat::Catalyst);
    let hash = f.hash(&id);
    assert_eq!(hash["count"], json!(1));
    assert_eq!(hash["__created"], json!(T0));
    assert_eq!(hash["__updated"], json!(T0));
    assert!(!hash.contains_key("__flash") && !hash.contains_key("__address"));
    assert_eq!(f.expires(&id), Some(T0 + EXPIRES));
    assert_eq!(f.raw("flash", &id), None);
    // No cache expiry: Store::FastMmap sets none, the session's end is expires:SID.
    for kind in ["session", "expires"] {
        let key = format!("{kind}:{id}");
        let entry = f.store.cache().entry(key.as_bytes()).unwrap().unwrap();
        assert_eq!(entry.expires_at, None, "{kind}");
    }
    let s = f.store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(s.origin(), &Origin::Loaded);
    assert_eq!(s.get::<u64>("count").unwrap(), Some(1));
    assert_eq!(unix_secs(s.created_at()), T0);
    assert_eq!(unix_secs(s.expires_at()), T0 + EXPIRES);
}

#[test]
fn each_load_moves_the_expiry_and_a_past_expiry_ends_the_session() {
    let f = fixture(CatalystConfig::new());
    let id = f.stored("n", 1);
    f.advance(100);
    let s = f.store.load(Some(&id), &Client::new()).unwrap();
    assert!(s.was_extended());
    assert_eq!(f.expires(&id), Some(T0 + 100 + EXPIRES));
    assert_eq!(unix_secs(s.expires_at()), T0 + 100 + EXPIRES);
    // Catalyst's end is inclusive: a session is live at its expiry second.
    f.advance(EXPIRES);
    assert_eq!(
        f.store.load(Some(&id), &Client::new()).unwrap().origin(),
        &Origin::Loaded
    );
    f.advance(EXPIRES + 1);
    let s = f.store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(s.origin(), &Origin::New(NewReason::Expired));
    assert_eq!(
        NewReason::Expired.catalyst_reason(),
        Some("session expired")
    );
    assert_ne!(s.id(), &id);
    assert_eq!(f.raw("session", &id), None);
    assert_eq!(f.raw("expires", &id), None);
}

/// As in Catalyst, a request that sends the session cookie extends the session even if it
/// never uses it, and a persistent cookie is sent again with the new expiry.
#[test]
fn every_request_with_the_cookie_extends_the_session() {
    use crate::session::{Request, Response};
    let f = fixture(CatalystConfig::new());
    let store = SessionStore::builder()
        .cache(f.store.cache().clone())
        .catalyst(CatalystConfig::new())
        .cookie(
            CookieConfig::new()
                .name("myapp_session")
                .unwrap()
                .persistent(true),
        )
        .build()
        .unwrap();
    let id = f.stored("n", 1);
    f.advance(100);
    let cookie = format!("myapp_session={id}");
    let mut visit = store.begin(&Request::new("/static/app.css").cookie(&cookie));
    let mut response = Response::new(200);
    store.finish(&mut visit, &mut response).unwrap();
    assert_eq!(f.expires(&id), Some(T0 + 100 + EXPIRES));
    let set = response
        .set_cookie
        .expect("the cookie, with its new expiry");
    assert_eq!(set.value(), id.as_str());
    assert_eq!(
        set.expires_datetime().map(|t| t.unix_timestamp()),
        Some((T0 + 100 + EXPIRES) as i64)
    );
    // The flash stays for the request that reads it.
    let mut s = store.load(Some(&id), &Client::new()).unwrap();
    s.flash("note", "hi").unwrap();
    store.save(&mut s).unwrap();
    let mut visit = store.begin(&Request::new("/static/app.css").cookie(&cookie));
    store.finish(&mut visit, &mut Response::new(200)).unwrap();
    let mut visit = store.begin(&Request::new("/").cookie(&cookie));
    assert_eq!(
        visit.get_flash::<String>("note").unwrap().as_deref(),
        Some("hi")
    );
}

#[test]
fn a_session_without_its_expiry_is_deleted_as_expired() {
    let f = fixture(CatalystConfig::new());
    let id = f.stored("n", 1);
    f.store
        .cache()
        .remove(format!("expires:{id}").as_bytes())
        .unwrap();
    let s = f.store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(s.origin(), &Origin::New(NewReason::Expired));
    assert_eq!(f.raw("session", &id), None);
}

#[test]
fn the_threshold_saves_rewrites_of_the_expiry() {
    let f = fixture(CatalystConfig::new().expiry_threshold(Duration::from_secs(600)));
    let id = f.stored("n", 1);
    f.advance(EXPIRES - 601);
    let s = f.store.load(Some(&id), &Client::new()).unwrap();
    assert!(!s.was_extended());
    assert_eq!(f.expires(&id), Some(T0 + EXPIRES));
    f.advance(1);
    let s = f.store.load(Some(&id), &Client::new()).unwrap();
    assert!(s.was_extended());
    assert_eq!(f.expires(&id), Some(T0 + EXPIRES - 600 + EXPIRES));
    // A change always moves it (Catalyst extends an updated session).
    f.advance(10);
    let mut s = f.store.load(Some(&id), &Client::new()).unwrap();
    s.insert("n", &2).unwrap();
    f.store.save(&mut s).unwrap();
    assert_eq!(f.expires(&id), Some(T0 + EXPIRES - 590 + EXPIRES));
    assert_eq!(f.hash(&id)["__updated"], json!(T0 + EXPIRES - 590));
}

#[test]
fn verification_deletes_a_session_used_by_another_client() {
    let home: IpAddr = "192.0.2.1".parse().unwrap();
    let away: IpAddr = "198.51.100.9".parse().unwrap();
    let f = fixture(
        CatalystConfig::new()
            .verify_address(true)
            .verify_user_agent(true),
    );
    let client = Client::new().address(home).user_agent("Firefox");
    let mut s = f.store.load(None, &client).unwrap();
    s.insert("n", &1).unwrap();
    f.store.save(&mut s).unwrap();
    let id = *s.id();
    let hash = f.hash(&id);
    assert_eq!(hash["__address"], json!("192.0.2.1"));
    assert_eq!(hash["__user_agent"], json!("Firefox"));
    assert_eq!(
        f.store.load(Some(&id), &client).unwrap().origin(),
        &Origin::Loaded
    );
    let s = f
        .store
        .load(Some(&id), &Client::new().address(home).user_agent("curl"))
        .unwrap();
    assert_eq!(s.origin(), &Origin::New(NewReason::UserAgentChanged));
    assert_eq!(f.raw("session", &id), None);

    let mut s = f.store.load(None, &client).unwrap();
    s.insert("n", &1).unwrap();
    f.store.save(&mut s).unwrap();
    let id = *s.id();
    let s = f
        .store
        .load(
            Some(&id),
            &Client::new().address(away).user_agent("Firefox"),
        )
        .unwrap();
    assert_eq!(s.origin(), &Origin::New(NewReason::AddressChanged));
    assert_eq!(
        NewReason::AddressChanged.catalyst_reason(),
        Some("address mismatch")
    );
    assert_eq!(f.raw("expires", &id), None);
}

#[test]
fn what_perl_cannot_have_written_is_a_bad_record_and_left_alone() {
    let f = fixture(CatalystConfig::new());
    let id = f.stored("n", 1);
    let key = format!("session:{id}");
    f.store
        .cache()
        .set_with(key.as_bytes(), b"garbage", Expiry::Never)
        .unwrap();
    assert!(matches!(
        f.store.load(Some(&id), &Client::new()),
        Err(Error::BadRecord { .. })
    ));
    assert!(matches!(
        f.store.update(&id, |_| ()),
        Err(Error::BadRecord { .. })
    ));
    // The Storable decoder's own account of what it found comes along as the source.
    let e = f.store.load(Some(&id), &Client::new()).unwrap_err();
    assert!(std::error::Error::source(&e).is_some(), "{e:?}");
    assert_eq!(f.raw("session", &id).as_deref(), Some(&b"garbage"[..]));
    f.store
        .cache()
        .set_with(format!("expires:{id}").as_bytes(), b"\x04", Expiry::Never)
        .unwrap();
    assert!(matches!(
        f.store.load(Some(&id), &Client::new()),
        Err(Error::BadRecord { .. })
    ));
    assert!(f.store.delete(&id).unwrap());
    assert_eq!(f.raw("session", &id), None);
    assert_eq!(f.raw("expires", &id), None);
}

/// Puts Perl objects into the stored hash of `id`, as a Catalyst application would: a
/// blessed user, an object frozen by its `STORABLE_freeze` hook (referring to another
/// object), and a flash value waiting.
fn add_perl_objects(f: &Fixture, id: &SessionId) {
    use crate::perl::{Hook, HookKind, PerlRef, PerlValue, Sv, storable};
    let mut data = storable::thaw(&f.raw("session", id).unwrap()).unwrap();
    let hash = data.deref(data.root()).unwrap();
    let name = data.push(PerlValue::string("ada"));
    let user = data.push(Sv::blessed(
        PerlValue::Hash(vec![("name".into(), name)]),
        "MyApp::User",
    ));
    let user_ref = data.push(PerlValue::Ref(PerlRef::to(user)));
    let zone = data.push(Sv::blessed(PerlValue::Hash(vec![]), "MyApp::Zone"));
    let stamp = data.push(Sv::blessed(
        PerlValue::Hook(Hook::new(HookKind::Hash, b"epoch=1".to_vec(), vec![zone])),
        "MyApp::Stamp",
    ));
    let stamp_ref = data.push(PerlValue::Ref(PerlRef::to(stamp)));
    let msg = data.push(PerlValue::string("hi"));
    let flash = data.push(PerlValue::Hash(vec![("msg".into(), msg)]));
    let flash_ref = data.push(PerlValue::Ref(PerlRef::to(flash)));
    let Some(PerlValue::Hash(entries)) = data.get_mut(hash).map(|sv| &mut sv.value) else {
        panic!("session:SID is a hash");
    };
    entries.push(("user".into(), user_ref));
    entries.push(("stamp".into(), stamp_ref));
    entries.push(("__flash".into(), flash_ref));
    let bytes = storable::freeze(&data).unwrap();
    f.store
        .cache()
        .set_with(format!("session:{id}").as_bytes(), &bytes, Expiry::Never)
        .unwrap();
}

/// Whether the objects of [`add_perl_objects`] are in the stored hash of `id`, classes and
/// hook and all.
#[track_caller]
fn assert_perl_objects(f: &Fixture, id: &SessionId) {
    use crate::perl::{PerlValue, storable};
    let data = storable::thaw(&f.raw("session", id).expect("session:SID")).unwrap();
    let hash = data.deref(data.root()).unwrap();
    let user = data.deref(data.hash_get(hash, "user").unwrap()).unwrap();
    assert_eq!(data[user].class.as_deref(), Some("MyApp::User"));
    let stamp = data.deref(data.hash_get(hash, "stamp").unwrap()).unwrap();
    assert_eq!(data[stamp].class.as_deref(), Some("MyApp::Stamp"));
    let PerlValue::Hook(hook) = &data[stamp].value else {
        panic!("{:?}", data[stamp]);
    };
    assert_eq!(hook.frozen, b"epoch=1");
    assert_eq!(data[hook.refs[0]].class.as_deref(), Some("MyApp::Zone"));
}

#[test]
fn perl_objects_survive_every_write() {
    let f = fixture(CatalystConfig::new());
    let id = f.stored("n", 1);
    add_perl_objects(&f, &id);
    // Taking the flash rewrites the hash.
    let mut s = f.store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(s.get_flash::<String>("msg").unwrap().as_deref(), Some("hi"));
    assert_eq!(s.get_value("user"), Some(&json!({"name": "ada"})));
    assert_eq!(
        s.get_value("stamp"),
        Some(&json!({"class": "MyApp::Stamp", "frozen": "epoch=1"}))
    );
    assert!(!f.hash(&id).contains_key("__flash"));
    assert_perl_objects(&f, &id);
    // A save of another key.
    s.insert("n", &2).unwrap();
    f.store.save(&mut s).unwrap();
    assert_perl_objects(&f, &id);
    // An update, with a flash value of its own.
    f.store
        .update(&id, |s| {
            s.insert("n", &3).unwrap();
            s.flash("next", "x").unwrap();
        })
        .unwrap();
    assert_perl_objects(&f, &id);
    // A move to a new id.
    let mut s = f.store.load(Some(&id), &Client::new()).unwrap();
    s.insert("n", &4).unwrap();
    f.store.change_id(&mut s).unwrap();
    let new = *s.id();
    assert_perl_objects(&f, &new);
    assert_eq!(f.hash(&new)["n"], json!(4));
    // The application replacing an object writes plain data in its place.
    s.insert("user", &json!({"name": "bob"})).unwrap();
    f.store.save(&mut s).unwrap();
    assert_eq!(f.hash(&new)["user"], json!({"name": "bob"}));
}

#[test]
fn ids_are_parsed_in_the_stores_shape_only() {
    let f = fixture(CatalystConfig::new());
    let native = SessionId::generate().unwrap();
    let s = f
        .store
        .load_str(Some(native.as_str()), &Client::new())
        .unwrap();
    assert!(matches!(
        s.origin(),
        Origin::New(NewReason::Malformed(InvalidId::HexCharacter { .. }))
            | Origin::New(NewReason::Malformed(InvalidId::HexLength { .. }))
    ));
    let id = f.stored("n", 1);
    let s = f.store.load_str(Some(id.as_str()), &Client::new()).unwrap();
    assert_eq!(s.origin(), &Origin::Loaded);
    let upper = id.as_str().to_uppercase();
    let s = f.store.load_str(Some(&upper), &Client::new()).unwrap();
    assert!(matches!(s.origin(), Origin::New(NewReason::Malformed(_))));
    // The request cycle reads the cookie in the store's shape.
    let cookie = format!("session={id}");
    let mut visit = f
        .store
        .begin(&crate::session::Request::new("/").cookie(&cookie));
    assert_eq!(visit.session().unwrap().origin(), &Origin::Loaded);
}

#[test]
fn change_id_moves_the_session_and_kills_the_old_keys() {
    let f = fixture(CatalystConfig::new());
    let id = f.stored("n", 1);
    f.advance(5);
    let mut s = f.store.load(Some(&id), &Client::new()).unwrap();
    s.insert("user", "ada").unwrap();
    let old = f.store.change_id(&mut s).unwrap();
    assert_eq!(old, id);
    let new = *s.id();
    assert_ne!(new, id);
    assert_eq!(new.format(), IdFormat::Catalyst);
    for kind in ["session", "expires", "flash"] {
        assert_eq!(f.raw(kind, &id), None, "{kind}:OLD");
    }
    let hash = f.hash(&new);
    assert_eq!(hash["user"], json!("ada"));
    assert_eq!(hash["n"], json!(1));
    assert_eq!(hash["__created"], json!(T0));
    assert_eq!(f.expires(&new), Some(T0 + 5 + EXPIRES));
    let s = f.store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(s.origin(), &Origin::New(NewReason::Unknown));
}

/// Catalyst mode's `change_id` over a cache whose backing store stops taking writes: the move
/// fails and the session stays whole under its old id (see the native mode's test).
#[test]
fn change_id_keeps_the_session_when_the_store_stops_taking_writes() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let backing = std::sync::Arc::new(super::tests::FailingStores::default());
    let cache = Cache::builder()
        .path(dir.path().join("session_data"))
        .layout(Layout::FastMmap)
        .num_pages(89)
        .page_size(64 * 1024)
        .clock(ManualClock::new(UNIX_EPOCH + Duration::from_secs(T0)))
        .backing_arc(backing.clone())
        .open()
        .unwrap();
    let store = SessionStore::builder()
        .cache(cache)
        .catalyst(CatalystConfig::new())
        .build()
        .unwrap();
    let mut s = store.load(None, &Client::new()).unwrap();
    s.insert("user", "ada").unwrap();
    store.save(&mut s).unwrap();
    let id = *s.id();
    let mut s = store.load(Some(&id), &Client::new()).unwrap();
    backing.failing.store(true, Ordering::SeqCst);
    let e = store.change_id(&mut s).unwrap_err();
    assert!(
        matches!(e, Error::Cache(crate::Error::Backing { op: "store", .. })),
        "{e}"
    );
    assert_eq!(s.id(), &id, "the session keeps its id");
    let back = store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(
        back.get::<String>("user").unwrap().as_deref(),
        Some("ada"),
        "the session was lost"
    );
    backing.failing.store(false, Ordering::SeqCst);
    assert_eq!(store.change_id(&mut s).unwrap(), id);
    let moved = store.load(Some(s.id()), &Client::new()).unwrap();
    assert_eq!(moved.get::<String>("user").unwrap().as_deref(), Some("ada"));
    let by_old = store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(by_old.origin(), &Origin::New(NewReason::Unknown));
}

#[test]
fn flash_is_kept_until_read_and_delivered_once() {
    let f = fixture(CatalystConfig::new());
    let id = f.stored("n", 1);
    let mut s = f.store.load(Some(&id), &Client::new()).unwrap();
    s.flash("msg", "saved").unwrap();
    f.store.save(&mut s).unwrap();
    assert_eq!(f.hash(&id)["__flash"], json!({"msg": "saved"}));
    // A request that does not read the flash leaves it.
    let s = f
        .store
        .load_leaving_flash(Some(&id), &Client::new())
        .unwrap();
    assert!(s.has_pending_flash());
    let mut s = f
        .store
        .load_leaving_flash(Some(&id), &Client::new())
        .unwrap();
    f.store.take_flash(&mut s).unwrap();
    assert_eq!(
        s.get_flash::<String>("msg").unwrap().as_deref(),
        Some("saved")
    );
    assert!(!f.hash(&id).contains_key("__flash"));
    let s = f.store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(s.get_flash::<String>("msg").unwrap(), None);
}

#[test]
fn update_is_atomic_across_threads() {
    let f = fixture(CatalystConfig::new());
    let id = f.stored("hits", 0);
    super::tests::add_hits_from_threads(&f.store, id);
    assert_eq!(f.hash(&id)["hits"], json!(400));
    // Invalidating in an update deletes all three keys.
    f.store.update(&id, |s| s.invalidate()).unwrap();
    assert_eq!(f.raw("session", &id), None);
    assert_eq!(f.raw("expires", &id), None);
}

#[test]
fn a_logout_deletes_every_key() {
    let f = fixture(CatalystConfig::new());
    let id = f.stored("n", 1);
    let mut s = f.store.load(Some(&id), &Client::new()).unwrap();
    s.invalidate();
    assert_eq!(f.store.save(&mut s).unwrap(), Saved::Deleted);
    for kind in ["session", "expires", "flash"] {
        assert_eq!(f.raw(kind, &id), None, "{kind}");
    }
}

#[test]
fn options_that_catalyst_mode_replaces_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let refused = [
        SessionStore::builder().idle_timeout(Duration::from_secs(60)),
        SessionStore::builder().lifetime(Duration::from_secs(60)),
        SessionStore::builder().bind_address(true),
        SessionStore::builder().key_prefix("s:"),
    ];
    for builder in refused {
        let e = builder
            .path(&path)
            .catalyst(CatalystConfig::new())
            .build()
            .unwrap_err();
        assert!(matches!(e, Error::InvalidOptions { .. }), "{e}");
    }
    #[cfg(feature = "redis")]
    {
        let redis = crate::redis::RedisOptions::new("redis://127.0.0.1:1/").unwrap();
        let e = SessionStore::builder()
            .path(&path)
            .catalyst(CatalystConfig::new())
            .redis(redis)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("Redis"), "{e}");
    }
    let e = SessionStore::builder()
        .path(&path)
        .catalyst(CatalystConfig::new().expires(Duration::ZERO))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("expires"), "{e}");
    // By path: a Cache::FastMmap file of Catalyst's default geometry, no header.
    let store = SessionStore::builder()
        .path(&path)
        .catalyst(CatalystConfig::new())
        .cookie(CookieConfig::new().name("myapp_session").unwrap())
        .build()
        .unwrap();
    assert!(store.is_catalyst());
    assert_eq!(store.id_format(), IdFormat::Catalyst);
    let len = std::fs::metadata(&path).unwrap().len();
    assert_eq!(len, 89 * 64 * 1024);
}
