//! Unit tests of the store: expiry, flash, binding, merging saves, ids, updates.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use super::native::{Found, Native};
use super::*;
use crate::session::data::{NewReason, Session, State, unix_secs};
use crate::session::error::Error;
use crate::session::{CookieConfig, Origin};
use crate::{Cache, ManualClock, Update};

const T0: u64 = 1_700_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    clock: ManualClock,
    store: SessionStore,
}

fn fixture(configure: impl FnOnce(SessionStoreBuilder) -> SessionStoreBuilder) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions");
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(T0));
    let cache = Cache::builder()
        .path(&path)
        .clock(clock.clone())
        .open()
        .unwrap();
    let store = configure(SessionStore::builder().cache(cache))
        .build()
        .unwrap();
    Fixture {
        _dir: dir,
        path,
        clock,
        store,
    }
}

impl Fixture {
    fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }

    /// A handle on the same file whose clock stays at T0: it sees entries that are
    /// expired for the store but still physically there.
    fn raw_view(&self) -> Cache {
        Cache::builder()
            .path(&self.path)
            .clock(ManualClock::new(UNIX_EPOCH + Duration::from_secs(T0)))
            .open()
            .unwrap()
    }

    fn stored_session(&self, key: &str, value: u64) -> SessionId {
        let mut s = self.store.load(None, &Client::new()).unwrap();
        s.insert(key, &value).unwrap();
        assert_eq!(self.store.save(&mut s).unwrap(), Saved::Written);
        *s.id()
    }
}

fn secs(t: std::time::SystemTime) -> u64 {
    unix_secs(t)
}

/// The native way of a store built without Catalyst mode.
fn native(store: &SessionStore) -> &Native {
    match &store.inner.mode {
        Mode::Native(native) => native,
        #[cfg(feature = "perl")]
        Mode::Catalyst(_) => panic!("a native store"),
    }
}

#[test]
fn defaults_and_the_cache_entry_expire_with_the_session() {
    let f = fixture(|b| b);
    let id = f.stored_session("n", 1);
    let s = f.store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(s.origin(), &Origin::Loaded);
    assert_eq!(secs(s.created_at()), T0);
    assert_eq!(secs(s.expires_at()), T0 + 86_400);
    let entry = f.store.cache().entry(&f.store.key(&id)).unwrap().unwrap();
    assert_eq!(entry.expires_at, Some(s.expires_at()));
    assert!(entry.value.starts_with(b"FMSR"));
}

#[test]
fn new_sessions_are_stored_only_with_content() {
    let f = fixture(|b| b);
    let mut s = f.store.load(None, &Client::new()).unwrap();
    assert_eq!(s.origin(), &Origin::New(NewReason::NoId));
    assert_eq!(f.store.save(&mut s).unwrap(), Saved::Unchanged);
    assert!(s.is_new());
    assert!(!f.store.cache().contains_key(&f.store.key(s.id())).unwrap());
    let mut created = f.store.create(&Client::new()).unwrap();
    assert_eq!(created.origin(), &Origin::New(NewReason::Created));
    assert_eq!(f.store.save(&mut created).unwrap(), Saved::Written);
    assert!(!created.is_new());
    assert_eq!(f.store.save(&mut created).unwrap(), Saved::Unchanged);
    let again = f.store.load(Some(created.id()), &Client::new()).unwrap();
    assert_eq!(again.origin(), &Origin::Loaded);
}

#[test]
fn an_unknown_id_gets_a_new_one() {
    let f = fixture(|b| b);
    let planted = SessionId::generate().unwrap();
    let mut s = f.store.load(Some(&planted), &Client::new()).unwrap();
    assert_eq!(s.origin(), &Origin::New(NewReason::Unknown));
    assert_ne!(s.id(), &planted);
    s.insert("k", "v").unwrap();
    f.store.save(&mut s).unwrap();
    assert_ne!(s.id(), &planted);
    assert!(
        !f.store
            .cache()
            .contains_key(&f.store.key(&planted))
            .unwrap()
    );
    let malformed = f.store.load_str(Some("not-an-id"), &Client::new()).unwrap();
    assert_eq!(
        malformed.origin(),
        &Origin::New(NewReason::Malformed(crate::session::InvalidId::Length {
            found: 9
        }))
    );
}

#[test]
fn absolute_lifetime_ends_the_session_and_deletes_it_on_sight() {
    let f = fixture(|b| b.lifetime(Duration::from_secs(100)));
    let id = f.stored_session("n", 1);
    f.advance(99);
    // Reading does not extend an absolute lifetime, nor write anything.
    let s = f.store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(secs(s.expires_at()), T0 + 100);
    assert!(!s.was_extended());
    f.advance(1);
    assert!(
        f.raw_view().contains_key(&f.store.key(&id)).unwrap(),
        "expired, but still in the page"
    );
    let s = f.store.load(Some(&id), &Client::new()).unwrap();
    // The cache hides the entry from the second the session ends.
    assert_eq!(s.origin(), &Origin::New(NewReason::Unknown));
    assert_ne!(s.id(), &id);
    assert!(
        !f.raw_view().contains_key(&f.store.key(&id)).unwrap(),
        "deleted on sight"
    );
}

#[test]
fn a_record_seen_expired_is_reported_and_removed() {
    let f = fixture(|b| b.lifetime(Duration::from_secs(100)));
    let id = f.stored_session("n", 1);
    let bytes = f.store.cache().get(&f.store.key(&id)).unwrap().unwrap();
    let (found, update) = native(&f.store).inspect(&bytes, T0 + 100, &Client::new(), true);
    assert!(matches!(found, Found::Dropped(NewReason::Expired)));
    assert_eq!(update, Update::Remove);
    let (found, update) = native(&f.store).inspect(&bytes, T0 + 99, &Client::new(), true);
    assert!(matches!(found, Found::Live { extended: None, .. }));
    assert_eq!(update, Update::Keep);
    let (found, _) = native(&f.store).inspect(b"junk", T0, &Client::new(), true);
    assert!(matches!(found, Found::Unreadable(Error::BadRecord { .. })));
}

#[test]
fn sliding_expiry_with_a_threshold() {
    let f = fixture(|b| {
        b.lifetime(Duration::from_secs(10_000))
            .idle_timeout(Duration::from_secs(600))
            .extend_threshold(Duration::from_secs(60))
    });
    let id = f.stored_session("n", 1);
    let key = f.store.key(&id);
    let before = f.store.cache().entry(&key).unwrap().unwrap();
    assert_eq!(before.expires_at.map(secs), Some(T0 + 600));
    // Within the threshold: read only, not rewritten.
    f.advance(59);
    let s = f.store.load(Some(&id), &Client::new()).unwrap();
    assert!(!s.was_extended());
    let same = f.store.cache().entry(&key).unwrap().unwrap();
    assert_eq!(
        (same.value, same.expires_at),
        (before.value.clone(), before.expires_at)
    );
    // Past it: the deadline moves, in the record and in the cache entry.
    f.advance(1);
    let s = f.store.load(Some(&id), &Client::new()).unwrap();
    assert!(s.was_extended());
    assert_eq!(secs(s.expires_at()), T0 + 60 + 600);
    let moved = f.store.cache().entry(&key).unwrap().unwrap();
    assert_eq!(moved.expires_at.map(secs), Some(T0 + 660));
    assert_eq!(
        f.store
            .load(Some(&id), &Client::new())
            .unwrap()
            .get::<u64>("n")
            .unwrap(),
        Some(1)
    );
    // Idle for the whole timeout: gone.
    f.advance(660);
    let s = f.store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(s.origin(), &Origin::New(NewReason::Unknown));
    assert!(!f.raw_view().contains_key(&key).unwrap());
}

#[test]
fn sliding_expiry_stops_at_the_lifetime() {
    let f = fixture(|b| {
        b.lifetime(Duration::from_secs(1000))
            .idle_timeout(Duration::from_secs(600))
    });
    let id = f.stored_session("n", 1);
    for _ in 0..3 {
        f.advance(300);
        let s = f.store.load(Some(&id), &Client::new()).unwrap();
        assert_eq!(s.origin(), &Origin::Loaded);
        assert!(secs(s.expires_at()) <= T0 + 1000);
    }
    f.advance(100);
    let s = f.store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(s.origin(), &Origin::New(NewReason::Unknown));
}

#[test]
fn unchanged_sessions_are_not_written() {
    let f = fixture(|b| b);
    let id = f.stored_session("n", 1);
    let key = f.store.key(&id);
    let before = f.store.cache().entry(&key).unwrap().unwrap();
    f.advance(5);
    let mut s = f.store.load(Some(&id), &Client::new()).unwrap();
    s.insert("n", &1u64).unwrap();
    assert_eq!(f.store.save(&mut s).unwrap(), Saved::Unchanged);
    assert_eq!(
        f.store.cache().entry(&key).unwrap().unwrap().value,
        before.value
    );
    s.insert("n", &2u64).unwrap();
    assert_eq!(f.store.save(&mut s).unwrap(), Saved::Written);
    assert_eq!(secs(s.updated_at()), T0 + 5);
}

#[test]
fn flash_survives_exactly_one_load() {
    let f = fixture(|b| b);
    let mut s = f.store.create(&Client::new()).unwrap();
    s.flash("notice", "saved").unwrap();
    f.store.save(&mut s).unwrap();
    let id = *s.id();
    // The request that set it does not see it.
    assert_eq!(s.get_flash::<String>("notice").unwrap(), None);
    let mut next = f.store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(
        next.get_flash::<String>("notice").unwrap().as_deref(),
        Some("saved")
    );
    assert!(next.keep_flash("notice"));
    f.store.save(&mut next).unwrap();
    let third = f.store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(
        third.get_flash::<String>("notice").unwrap().as_deref(),
        Some("saved")
    );
    let fourth = f.store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(fourth.get_flash::<String>("notice").unwrap(), None);
    assert_eq!(fourth.flash_keys().count(), 0);
}

#[test]
fn binding_mismatch_deletes_with_a_reason() {
    let f = fixture(|b| b.bind_address(true).bind_user_agent(true));
    let home: IpAddr = "192.0.2.1".parse().unwrap();
    let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
    let client = Client::new().address(home).user_agent("Firefox");
    let mut s = f.store.create(&client).unwrap();
    f.store.save(&mut s).unwrap();
    let id = *s.id();
    let same = Client::new().address(mapped).user_agent("Firefox");
    assert_eq!(
        f.store.load(Some(&id), &same).unwrap().origin(),
        &Origin::Loaded
    );
    let other_ua = Client::new().address(home).user_agent("curl");
    let s = f.store.load(Some(&id), &other_ua).unwrap();
    assert_eq!(s.origin(), &Origin::New(NewReason::UserAgentChanged));
    assert!(!f.raw_view().contains_key(&f.store.key(&id)).unwrap());

    let mut s = f.store.create(&client).unwrap();
    f.store.save(&mut s).unwrap();
    let other_ip = Client::new()
        .address("198.51.100.9".parse().unwrap())
        .user_agent("Firefox");
    let again = f.store.load(Some(s.id()), &other_ip).unwrap();
    assert_eq!(again.origin(), &Origin::New(NewReason::AddressChanged));
    let no_address = f
        .store
        .load(Some(s.id()), &Client::new().user_agent("Firefox"))
        .unwrap();
    assert_eq!(no_address.origin(), &Origin::New(NewReason::Unknown));
}

#[test]
fn binding_is_off_by_default() {
    let f = fixture(|b| b);
    let mut s = f
        .store
        .create(&Client::new().user_agent("Firefox"))
        .unwrap();
    f.store.save(&mut s).unwrap();
    let s2 = f
        .store
        .load(Some(s.id()), &Client::new().user_agent("curl"))
        .unwrap();
    assert_eq!(s2.origin(), &Origin::Loaded);
}

#[test]
fn saves_merge_by_key_and_last_writer_wins() {
    let f = fixture(|b| b);
    let id = f.stored_session("shared", 0);
    let mut a = f.store.load(Some(&id), &Client::new()).unwrap();
    let mut b = f.store.load(Some(&id), &Client::new()).unwrap();
    a.insert("from_a", &1).unwrap();
    a.insert("shared", &1).unwrap();
    b.insert("from_b", &2).unwrap();
    b.insert("shared", &2).unwrap();
    b.flash("msg", "from b").unwrap();
    f.store.save(&mut a).unwrap();
    f.store.save(&mut b).unwrap();
    let s = f.store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(s.get::<u32>("from_a").unwrap(), Some(1));
    assert_eq!(s.get::<u32>("from_b").unwrap(), Some(2));
    assert_eq!(s.get::<u32>("shared").unwrap(), Some(2));
    assert_eq!(
        s.get_flash::<String>("msg").unwrap().as_deref(),
        Some("from b")
    );
    // b's in-memory view was updated with the merge.
    assert_eq!(b.get::<u32>("from_a").unwrap(), Some(1));
}

#[test]
fn the_save_under_the_lock_merges_too() {
    let f = fixture(|b| b);
    let id = f.stored_session("shared", 0);
    let mut a = f.store.load(Some(&id), &Client::new()).unwrap();
    let mut b = f.store.load(Some(&id), &Client::new()).unwrap();
    a.insert("from_a", &1).unwrap();
    b.insert("from_b", &2).unwrap();
    let now = f.store.now();
    assert_eq!(
        native(&f.store)
            .save_stored(&f.store.inner.tier, &mut a, now, 0)
            .unwrap(),
        Saved::Written
    );
    assert_eq!(
        native(&f.store)
            .save_stored(&f.store.inner.tier, &mut b, now, 0)
            .unwrap(),
        Saved::Written
    );
    let s = f.store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(s.get::<u32>("from_a").unwrap(), Some(1));
    assert_eq!(s.get::<u32>("from_b").unwrap(), Some(2));
    f.store.delete(&id).unwrap();
    b.insert("from_b", &3).unwrap();
    assert_eq!(
        native(&f.store)
            .save_stored(&f.store.inner.tier, &mut b, now, 0)
            .unwrap(),
        Saved::Gone
    );
    let key = f.store.key(&id);
    f.store.cache().set(&key, b"junk").unwrap();
    let mut c = f
        .store
        .load(Some(&SessionId::generate().unwrap()), &Client::new())
        .unwrap();
    c.id = id;
    c.state = State::Stored;
    c.insert("x", &1).unwrap();
    assert!(matches!(
        native(&f.store).save_stored(&f.store.inner.tier, &mut c, now, 0),
        Err(Error::BadRecord { .. })
    ));
    assert_eq!(f.store.cache().get(&key).unwrap().unwrap(), b"junk");
}

#[test]
fn a_deleted_session_is_not_brought_back() {
    let f = fixture(|b| b);
    let id = f.stored_session("n", 1);
    let mut stale = f.store.load(Some(&id), &Client::new()).unwrap();
    let mut logout = f.store.load(Some(&id), &Client::new()).unwrap();
    logout.invalidate();
    assert_eq!(f.store.save(&mut logout).unwrap(), Saved::Deleted);
    stale.insert("n", &2).unwrap();
    assert_eq!(f.store.save(&mut stale).unwrap(), Saved::Gone);
    assert!(stale.is_invalidated());
    assert_eq!(f.store.save(&mut stale).unwrap(), Saved::Deleted);
    assert!(!f.store.cache().contains_key(&f.store.key(&id)).unwrap());
}

#[test]
fn change_id_moves_the_data_and_kills_the_old_id() {
    let f = fixture(|b| b);
    let id = f.stored_session("user", 7);
    let mut s = f.store.load(Some(&id), &Client::new()).unwrap();
    s.insert("role", "admin").unwrap();
    let old = f.store.change_id(&mut s).unwrap();
    assert_eq!(old, id);
    assert_ne!(s.id(), &id);
    assert!(!s.is_modified());
    let moved = f.store.load(Some(s.id()), &Client::new()).unwrap();
    assert_eq!(moved.get::<u64>("user").unwrap(), Some(7));
    assert_eq!(
        moved.get::<String>("role").unwrap().as_deref(),
        Some("admin")
    );
    assert_eq!(
        secs(moved.created_at()),
        T0,
        "creation time moves with the data"
    );
    let by_old = f.store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(by_old.origin(), &Origin::New(NewReason::Unknown));
    // A session not stored yet only changes its id.
    let mut fresh = f.store.load(None, &Client::new()).unwrap();
    let before = *fresh.id();
    assert_eq!(f.store.change_id(&mut fresh).unwrap(), before);
    assert_ne!(fresh.id(), &before);
    assert!(fresh.is_new());
}

#[test]
fn change_id_failure_keeps_the_old_session() {
    let f = fixture(|b| b);
    let id = f.stored_session("user", 7);
    let mut s = f.store.load(Some(&id), &Client::new()).unwrap();
    // Larger than the cache's largest value (its overflow area's max_value_size).
    let huge = "x".repeat(f.store.cache().max_value_size() + 1);
    s.insert("huge", &huge).unwrap();
    let e = f.store.change_id(&mut s).unwrap_err();
    assert!(
        matches!(e, Error::Cache(crate::Error::ValueTooLarge { .. })),
        "{e}"
    );
    assert_eq!(s.id(), &id);
    let back = f.store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(back.get::<u64>("user").unwrap(), Some(7));
}

/// A backing store in memory whose `store` can be made to fail.
#[derive(Default)]
pub(super) struct FailingStores {
    map: std::sync::Mutex<std::collections::HashMap<Vec<u8>, Vec<u8>>>,
    pub(super) failing: std::sync::atomic::AtomicBool,
    /// Run by the next `store`, before it stores: what happens elsewhere meanwhile.
    on_store: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl crate::Backing for FailingStores {
    fn load(&self, key: &[u8]) -> std::result::Result<Option<Vec<u8>>, crate::BackingError> {
        Ok(self.map.lock().unwrap().get(key).cloned())
    }
    fn store(
        &self,
        key: &[u8],
        value: &[u8],
        _: Option<std::time::SystemTime>,
    ) -> std::result::Result<(), crate::BackingError> {
        let hook = self.on_store.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("the database is down".into());
        }
        self.map
            .lock()
            .unwrap()
            .insert(key.to_vec(), value.to_vec());
        Ok(())
    }
    fn delete(&self, key: &[u8]) -> std::result::Result<(), crate::BackingError> {
        self.map.lock().unwrap().remove(key);
        Ok(())
    }
}

/// A native store over the cache file `s` in `dir` with `backing` behind it, write-through.
fn backed_store(dir: &std::path::Path, backing: &std::sync::Arc<FailingStores>) -> SessionStore {
    let cache = Cache::builder()
        .path(dir.join("s"))
        .clock(ManualClock::new(UNIX_EPOCH + Duration::from_secs(T0)))
        .backing_arc(backing.clone())
        .open()
        .unwrap();
    SessionStore::builder().cache(cache).build().unwrap()
}

/// `change_id` over a cache whose backing store stops taking writes: the move fails, and the
/// session stays whole under its old id. (The old record used to be taken first and put back
/// after the failed write; the put-back failed too, and the session was lost.)
#[test]
fn change_id_keeps_the_session_when_the_store_stops_taking_writes() {
    let dir = tempfile::tempdir().unwrap();
    let backing = std::sync::Arc::new(FailingStores::default());
    let store = backed_store(dir.path(), &backing);
    let mut s = store.load(None, &Client::new()).unwrap();
    s.insert("user", &7u64).unwrap();
    store.save(&mut s).unwrap();
    let id = *s.id();
    let mut s = store.load(Some(&id), &Client::new()).unwrap();
    backing
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let e = store.change_id(&mut s).unwrap_err();
    assert!(
        matches!(e, Error::Cache(crate::Error::Backing { op: "store", .. })),
        "{e}"
    );
    assert_eq!(s.id(), &id, "the session keeps its id");
    // A session's key holds its id, which no message may show (the web layer logs them).
    let mut save = store.load(Some(&id), &Client::new()).unwrap();
    save.insert("n", &1u32).unwrap();
    for e in [e, store.save(&mut save).unwrap_err()] {
        let message = e.to_string();
        assert!(message.contains("database is down"), "{message}");
        assert!(!message.contains(id.as_str()), "the id in {message}");
    }
    let back = store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(
        back.get::<u64>("user").unwrap(),
        Some(7),
        "the session was lost"
    );
    backing
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(store.change_id(&mut s).unwrap(), id);
    let moved = store.load(Some(s.id()), &Client::new()).unwrap();
    assert_eq!(moved.get::<u64>("user").unwrap(), Some(7));
    let by_old = store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(by_old.origin(), &Origin::New(NewReason::Unknown));
}

/// A save to the old id that lands while `change_id` writes the new record is carried over:
/// the old record is deleted only as it was read, so the move goes round again.
#[test]
fn change_id_carries_over_a_save_that_lands_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let backing = std::sync::Arc::new(FailingStores::default());
    let (store, other) = (
        backed_store(dir.path(), &backing),
        backed_store(dir.path(), &backing),
    );
    let mut s = store.load(None, &Client::new()).unwrap();
    s.insert("user", &7u64).unwrap();
    store.save(&mut s).unwrap();
    let id = *s.id();
    let mut s = store.load(Some(&id), &Client::new()).unwrap();
    s.insert("role", "admin").unwrap();
    // While the move writes the new record, another request saves to the old id.
    *backing.on_store.lock().unwrap() = Some(Box::new(move || {
        let mut elsewhere = other.load(Some(&id), &Client::new()).unwrap();
        elsewhere.insert("cart", &3u64).unwrap();
        assert_eq!(other.save(&mut elsewhere).unwrap(), Saved::Written);
    }));
    assert_eq!(store.change_id(&mut s).unwrap(), id);
    let moved = store.load(Some(s.id()), &Client::new()).unwrap();
    assert_eq!(moved.get::<u64>("user").unwrap(), Some(7));
    assert_eq!(
        moved.get::<String>("role").unwrap().as_deref(),
        Some("admin")
    );
    assert_eq!(
        moved.get::<u64>("cart").unwrap(),
        Some(3),
        "the other save was lost"
    );
    let by_old = store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(by_old.origin(), &Origin::New(NewReason::Unknown));
}

#[test]
fn too_large_saves_change_nothing() {
    let f = fixture(|b| b);
    let id = f.stored_session("n", 1);
    let mut s = f.store.load(Some(&id), &Client::new()).unwrap();
    // Larger than the cache's largest value (its overflow area's max_value_size).
    let huge = "x".repeat(f.store.cache().max_value_size() + 1);
    s.insert("huge", &huge).unwrap();
    let r = f.store.save(&mut s);
    assert!(
        matches!(r, Err(Error::Cache(crate::Error::ValueTooLarge { .. }))),
        "{r:?}"
    );
    assert!(
        s.is_modified(),
        "the changes are still there to retry or drop"
    );
    let back = f.store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(back.get::<u64>("n").unwrap(), Some(1));
    assert!(!back.contains_key("huge"));
}

/// A session larger than a cache page (a cart, a rendered form) goes to the cache's default
/// overflow area and comes back whole.
#[test]
fn a_session_larger_than_a_page_is_saved() {
    let f = fixture(|b| b);
    let big = "y".repeat(f.store.cache().max_entry_size() + 1000);
    assert!(big.len() < f.store.cache().max_value_size());
    let mut s = f.store.load(None, &Client::new()).unwrap();
    s.insert("big", &big).unwrap();
    f.store.save(&mut s).unwrap();
    let back = f.store.load(Some(s.id()), &Client::new()).unwrap();
    assert_eq!(back.get::<String>("big").unwrap(), Some(big));
}

#[test]
fn unreadable_records_are_errors_and_left_alone() {
    let f = fixture(|b| b);
    let id = SessionId::generate().unwrap();
    let key = f.store.key(&id);
    f.store.cache().set(&key, b"something else").unwrap();
    assert!(matches!(
        f.store.load(Some(&id), &Client::new()),
        Err(Error::BadRecord { .. })
    ));
    assert_eq!(
        f.store.cache().get(&key).unwrap().unwrap(),
        b"something else"
    );
    let mut future = b"FMSR".to_vec();
    future.extend_from_slice(&2u16.to_le_bytes());
    future.extend_from_slice(&[0; 100]);
    f.store.cache().set(&key, &future).unwrap();
    assert!(matches!(
        f.store.load(Some(&id), &Client::new()),
        Err(Error::UnsupportedVersion {
            found: 2,
            supported: 1
        })
    ));
    assert!(matches!(
        f.store.update(&id, |_| ()),
        Err(Error::UnsupportedVersion { .. })
    ));
    assert_eq!(f.store.cache().get(&key).unwrap().unwrap(), future);
}

/// Four threads each add 1 to the session `id`'s `hits` 100 times, each time in an update
/// (so 400 in all when updates are atomic). Shared with the Catalyst-mode tests.
pub(super) fn add_hits_from_threads(store: &SessionStore, id: SessionId) {
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    store
                        .update(&id, |s| {
                            let n = s.get::<u64>("hits").unwrap().unwrap_or(0);
                            s.insert("hits", &(n + 1)).unwrap();
                        })
                        .unwrap()
                        .expect("session exists");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn update_is_atomic_across_threads() {
    let f = fixture(|b| b);
    let id = f.stored_session("hits", 0);
    add_hits_from_threads(&f.store, id);
    let s = f.store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(s.get::<u64>("hits").unwrap(), Some(400));
}

#[test]
fn update_keeps_flash_pending_and_can_delete() {
    let f = fixture(|b| b);
    let mut s = f.store.create(&Client::new()).unwrap();
    s.flash("a", &1).unwrap();
    f.store.save(&mut s).unwrap();
    let id = *s.id();
    let seen = f
        .store
        .update(&id, |s| s.get_flash::<u32>("a").unwrap())
        .unwrap();
    assert_eq!(seen, Some(None), "update does not deliver flash");
    f.store.update(&id, |s| s.flash("b", &2).unwrap()).unwrap();
    let loaded = f.store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(loaded.get_flash::<u32>("a").unwrap(), Some(1));
    assert_eq!(loaded.get_flash::<u32>("b").unwrap(), Some(2));
    assert_eq!(f.store.update(&id, Session::invalidate).unwrap(), Some(()));
    assert_eq!(f.store.update(&id, |_| ()).unwrap(), None);
    f.advance(1);
    assert_eq!(
        f.store
            .update(&SessionId::generate().unwrap(), |_| ())
            .unwrap(),
        None
    );
}

#[test]
fn builder_refuses_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("c")).unwrap();
    let build = |b: SessionStoreBuilder| b.cache(cache.clone()).build();
    let cases = [
        SessionStore::builder().lifetime(Duration::ZERO),
        SessionStore::builder().idle_timeout(Duration::ZERO),
        SessionStore::builder().extend_threshold(Duration::from_secs(1)),
        SessionStore::builder()
            .idle_timeout(Duration::from_secs(60))
            .extend_threshold(Duration::from_secs(60)),
        SessionStore::builder().key_prefix(""),
        SessionStore::builder().path(dir.path().join("other")),
        SessionStore::builder()
            .cookie(CookieConfig::new().same_site(Some(crate::session::SameSite::None))),
        SessionStore::builder().cookie(CookieConfig::new().name("__Host-sid").unwrap()),
        SessionStore::builder().cookie(
            CookieConfig::new()
                .name("__host-sid")
                .unwrap()
                .secure(true)
                .domain("example.org")
                .unwrap(),
        ),
        SessionStore::builder().cookie(CookieConfig::new().name("__SECURE-sid").unwrap()),
    ];
    for b in cases {
        let e = build(b).unwrap_err();
        assert!(matches!(e, Error::InvalidOptions { .. }), "{e}");
    }
    assert!(build(SessionStore::builder().lifetime(Duration::from_millis(1))).is_ok());
    let missing = SessionStore::builder()
        .path(dir.path().join("no/such/dir/c"))
        .build()
        .unwrap_err();
    assert!(
        matches!(missing, Error::Cache(crate::Error::MissingDirectory { .. })),
        "{missing}"
    );
}

#[test]
fn key_prefix_separates_sessions() {
    let f = fixture(|b| b.key_prefix("app1:"));
    let id = f.stored_session("n", 1);
    assert_eq!(f.store.key(&id), format!("app1:{id}").into_bytes());
    let other = SessionStore::builder()
        .cache(f.store.cache().clone())
        .key_prefix("app2:")
        .build()
        .unwrap();
    let s = other.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(s.origin(), &Origin::New(NewReason::Unknown));
}

#[test]
fn flash_left_in_the_store_is_taken_once() {
    let f = fixture(|b| b);
    let mut s = f.store.create(&Client::new()).unwrap();
    s.flash("notice", "saved").unwrap();
    f.store.save(&mut s).unwrap();
    let id = *s.id();
    let mut a = f
        .store
        .load_leaving_flash(Some(&id), &Client::new())
        .unwrap();
    let mut b = f
        .store
        .load_leaving_flash(Some(&id), &Client::new())
        .unwrap();
    assert!(a.has_pending_flash() && b.has_pending_flash());
    assert!(matches!(
        a.get_flash::<String>("notice"),
        Err(Error::FlashNotTaken)
    ));
    f.store.take_flash(&mut a).unwrap();
    f.store.take_flash(&mut b).unwrap();
    assert_eq!(
        a.get_flash::<String>("notice").unwrap().as_deref(),
        Some("saved")
    );
    assert_eq!(
        b.get_flash::<String>("notice").unwrap(),
        None,
        "only one takes it"
    );
    // Saving a session that never took its flash keeps the flash stored.
    let mut c = f.store.create(&Client::new()).unwrap();
    c.flash("x", &1).unwrap();
    f.store.save(&mut c).unwrap();
    let mut d = f
        .store
        .load_leaving_flash(Some(c.id()), &Client::new())
        .unwrap();
    d.insert("k", &2).unwrap();
    f.store.save(&mut d).unwrap();
    let e = f.store.load(Some(c.id()), &Client::new()).unwrap();
    assert_eq!(e.get_flash::<u32>("x").unwrap(), Some(1));
}
