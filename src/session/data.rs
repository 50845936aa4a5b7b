//! `Session`: one request's view of a session — its id, typed values, flash values, and a
//! record of what changed, so that an unchanged session is not written back.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::session::error::{Error, Result};
use crate::session::id::{InvalidId, SessionId};
use crate::session::record::{Binding, MAX_TIME, Map, Record, Times};

/// Where a [`Session`] came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Loaded from the cache under the id the client presented.
    Loaded,
    /// A new session with a new id; the reason says why no stored session was used.
    New(NewReason),
}

/// Why a [`Session`] is new. Whatever id the client presented is never reused: a new session
/// always gets a new id (the defence against session fixation).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NewReason {
    /// The application asked for one ([`SessionStore::create`](crate::session::SessionStore::create)).
    Created,
    /// The client presented no id.
    NoId,
    /// The client presented something that is not a well-formed id; it was not looked up.
    Malformed(InvalidId),
    /// The client presented a well-formed id that has no session: never issued, deleted,
    /// moved by [`change_id`](crate::session::SessionStore::change_id), or expired (the
    /// cache stops showing a session's entry the moment the session expires, and the load
    /// removes what is left of it).
    Unknown,
    /// The session was found expired (its entry was still visible, at the turn of a second);
    /// it was deleted. An expired session usually reads as [`Unknown`](Self::Unknown).
    Expired,
    /// The session is bound to another client address; it was deleted.
    AddressChanged,
    /// The session is bound to another user agent; it was deleted.
    UserAgentChanged,
}

impl NewReason {
    /// The reason Catalyst::Plugin::Session gives (its `session_delete_reason`) when it
    /// deletes a session for this reason: `"session expired"`, `"address mismatch"`,
    /// `"user agent mismatch"`; `None` for reasons that delete nothing. (A logout is the
    /// application's own [`Session::invalidate`]; Catalyst applications pass their own words,
    /// often `"logout"`, to `delete_session`.)
    pub fn catalyst_reason(&self) -> Option<&'static str> {
        match self {
            NewReason::Expired => Some("session expired"),
            NewReason::AddressChanged => Some("address mismatch"),
            NewReason::UserAgentChanged => Some("user agent mismatch"),
            _ => None,
        }
    }
}

/// Whether the session exists in the cache (as far as this request knows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Not yet written.
    New,
    /// Read from the cache, or written by this request.
    Stored,
}

/// One request's view of a session.
///
/// Values are typed through serde and stored as JSON. Reading never writes; changing a value
/// is remembered, and [`SessionStore::save`](crate::session::SessionStore::save) writes only
/// the keys that changed (see there for what happens when two requests change one session at
/// once). Flash values set during one request are delivered by the next load only.
#[derive(Clone, Debug)]
pub struct Session {
    pub(crate) id: SessionId,
    pub(crate) origin: Origin,
    pub(crate) state: State,
    pub(crate) times: Times,
    pub(crate) data: Map,
    /// Keys changed since the load: `Some` set, `None` removed.
    pub(crate) changes: BTreeMap<String, Option<Value>>,
    /// Every key was removed (keys set after that are in `changes`).
    pub(crate) cleared: bool,
    /// Flash values this load delivered (already removed from the cache).
    pub(crate) flash_in: Map,
    /// The stored record holds flash values this session has not taken yet (a load that
    /// left them for [`SessionStore::take_flash`](crate::session::SessionStore::take_flash)).
    pub(crate) flash_pending: bool,
    /// Flash values for the next load.
    pub(crate) flash_out: Map,
    pub(crate) binding: Binding,
    /// This request's load moved the idle deadline.
    pub(crate) extended: bool,
    /// Delete at the next save.
    pub(crate) invalidated: bool,
    /// Store even if empty (made by `create`).
    pub(crate) persist: bool,
}

pub(crate) use crate::unix_secs;

/// `secs` as a `SystemTime`, clamped to [`MAX_TIME`] (a `SystemTime` cannot hold every `u64`
/// of seconds; record times are checked to be in range, so the clamp is only a backstop).
pub(crate) fn from_unix_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.min(MAX_TIME))
}

impl Session {
    /// A session that is not stored yet.
    pub(crate) fn new(id: SessionId, reason: NewReason, times: Times, binding: Binding) -> Session {
        let persist = reason == NewReason::Created;
        Session {
            id,
            origin: Origin::New(reason),
            state: State::New,
            times,
            data: Map::new(),
            changes: BTreeMap::new(),
            cleared: false,
            flash_in: Map::new(),
            flash_pending: false,
            flash_out: Map::new(),
            binding,
            extended: false,
            invalidated: false,
            persist,
        }
    }

    /// A session read from the cache. Its stored flash values are delivered to this request.
    pub(crate) fn loaded(id: SessionId, record: Record, extended: bool) -> Session {
        Session {
            id,
            origin: Origin::Loaded,
            state: State::Stored,
            times: record.times,
            data: record.data,
            changes: BTreeMap::new(),
            cleared: false,
            flash_in: record.flash,
            flash_pending: false,
            flash_out: Map::new(),
            binding: record.binding,
            extended,
            invalidated: false,
            persist: false,
        }
    }

    /// The session id.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// Where the session came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Whether this session is not (yet) in the cache: it was just made and has not been
    /// saved. A new session is written by the first save that has something to store.
    pub fn is_new(&self) -> bool {
        self.state == State::New
    }

    /// When the session was created (whole seconds).
    pub fn created_at(&self) -> SystemTime {
        from_unix_secs(self.times.created)
    }

    /// When its values were last written (whole seconds); for a new session, its creation.
    pub fn updated_at(&self) -> SystemTime {
        from_unix_secs(self.times.updated)
    }

    /// When it expires, as far as this request knows (whole seconds).
    pub fn expires_at(&self) -> SystemTime {
        from_unix_secs(self.times.expires)
    }

    /// The value under `key`, deserialised as `T`; `None` if there is none.
    ///
    /// # Errors
    /// [`Error::Deserialize`] if the stored value is not a `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.data.get(key).map(|v| decode(key, v)).transpose()
    }

    /// The value under `key` as JSON.
    pub fn get_value(&self, key: &str) -> Option<&Value> {
        self.data.get(key)
    }

    /// Stores `value` under `key`. Storing a value equal to the one already there is not a
    /// change.
    ///
    /// # Errors
    /// [`Error::Serialize`] if `value` has no JSON form; the session is unchanged.
    pub fn insert<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        let value = encode(key, value)?;
        if self.data.get(key) != Some(&value) {
            self.data.insert(key.to_owned(), value.clone());
            self.changes.insert(key.to_owned(), Some(value));
        }
        Ok(())
    }

    /// Removes `key`; returns whether it held a value.
    pub fn remove(&mut self, key: &str) -> bool {
        let had = self.data.remove(key).is_some();
        if had {
            self.changes.insert(key.to_owned(), None);
        }
        had
    }

    /// Whether `key` holds a value.
    pub fn contains_key(&self, key: &str) -> bool {
        self.data.contains_key(key)
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.data.keys().map(String::as_str)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the session holds no values (flash values aside).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Removes every value. At save, keys that another request added meanwhile go too.
    pub fn clear(&mut self) {
        if !self.data.is_empty() || !self.changes.is_empty() {
            self.data.clear();
            self.changes.clear();
            self.cleared = true;
        }
    }

    /// Sets a flash value: delivered by the next load of this session only (see
    /// [`keep_flash`](Self::keep_flash) to carry one further).
    ///
    /// # Errors
    /// [`Error::Serialize`] if `value` has no JSON form.
    pub fn flash<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        let value = encode(key, value)?;
        self.flash_out.insert(key.to_owned(), value);
        Ok(())
    }

    /// The flash value this request received under `key` (set during the previous request
    /// that saved the session).
    ///
    /// A session loaded by [`SessionStore::load`](crate::session::SessionStore::load) has
    /// received its flash values. One loaded lazily (a [`Visit`](crate::session::Visit), the
    /// tower layer) takes them from the store when they are first read:
    /// [`Visit::get_flash`](crate::session::Visit::get_flash), or
    /// [`SessionStore::take_flash`](crate::session::SessionStore::take_flash) first.
    ///
    /// # Errors
    /// [`Error::Deserialize`] if it is not a `T`; [`Error::FlashNotTaken`] if the stored
    /// flash values have not been taken yet (rather than a silent `None`).
    pub fn get_flash<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        if self.flash_pending {
            return Err(Error::FlashNotTaken);
        }
        self.flash_in.get(key).map(|v| decode(key, v)).transpose()
    }

    /// Whether the stored session holds flash values this session has not taken yet (see
    /// [`get_flash`](Self::get_flash)).
    pub fn has_pending_flash(&self) -> bool {
        self.flash_pending
    }

    /// The keys of the flash values this request received.
    pub fn flash_keys(&self) -> impl Iterator<Item = &str> {
        self.flash_in.keys().map(String::as_str)
    }

    /// Delivers the received flash value under `key` once more, to the next load (unless a
    /// new flash value is set under that key). Returns whether there was one.
    pub fn keep_flash(&mut self, key: &str) -> bool {
        match self.flash_in.get(key) {
            Some(v) => {
                self.flash_out
                    .entry(key.to_owned())
                    .or_insert_with(|| v.clone());
                true
            }
            None => false,
        }
    }

    /// [`keep_flash`](Self::keep_flash) for every flash value received.
    pub fn keep_all_flash(&mut self) {
        for (k, v) in &self.flash_in {
            self.flash_out.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }

    /// Marks the session for deletion: the next save removes it from the cache (log-out).
    pub fn invalidate(&mut self) {
        self.invalidated = true;
    }

    /// Whether [`invalidate`](Self::invalidate) was called.
    pub fn is_invalidated(&self) -> bool {
        self.invalidated
    }

    /// Whether a save has something to write: changed values, flash values for the next
    /// load, or (for a new session) any value at all or an explicit
    /// [`create`](crate::session::SessionStore::create).
    pub fn is_modified(&self) -> bool {
        match self.state {
            State::New => self.persist || !self.data.is_empty() || !self.flash_out.is_empty(),
            State::Stored => self.cleared || !self.changes.is_empty() || !self.flash_out.is_empty(),
        }
    }

    /// Whether this request's load moved the idle deadline (the stored record was extended).
    pub fn was_extended(&self) -> bool {
        self.extended
    }

    /// Applies this session's changes to `base` (the values stored now, if any): last writer
    /// wins for each key this session changed; other keys keep the stored values.
    pub(crate) fn merged_data(&self, base: Option<&Map>) -> Map {
        let mut data = match base {
            Some(stored) if !self.cleared && self.state == State::Stored => stored.clone(),
            _ if self.state == State::New => return self.data.clone(),
            _ => Map::new(),
        };
        for (k, change) in &self.changes {
            match change {
                Some(v) => data.insert(k.clone(), v.clone()),
                None => data.remove(k),
            };
        }
        data
    }

    /// Marks the session as written with this data, these times and this binding.
    pub(crate) fn mark_stored(&mut self, data: Map, times: Times) {
        self.data = data;
        self.times = times;
        self.changes.clear();
        self.cleared = false;
        self.flash_out.clear();
        self.state = State::Stored;
        self.persist = false;
    }
}

fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Value> {
    serde_json::to_value(value).map_err(|source| Error::Serialize {
        key: key.to_owned(),
        source,
    })
}

fn decode<T: DeserializeOwned>(key: &str, value: &Value) -> Result<T> {
    T::deserialize(value).map_err(|source| Error::Deserialize {
        key: key.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    fn times() -> Times {
        Times {
            created: 100,
            updated: 100,
            active: 100,
            expires: 200,
        }
    }

    fn fresh() -> Session {
        Session::new(
            SessionId::generate().unwrap(),
            NewReason::NoId,
            times(),
            Binding::default(),
        )
    }

    fn stored(data: Map) -> Session {
        let record = Record {
            times: times(),
            data,
            flash: Map::new(),
            binding: Binding::default(),
        };
        Session::loaded(SessionId::generate().unwrap(), record, false)
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Cart {
        items: Vec<u32>,
        note: Option<String>,
    }

    #[test]
    fn typed_values_round_trip() {
        let mut s = fresh();
        let cart = Cart {
            items: vec![1, 2],
            note: Some("gift".into()),
        };
        s.insert("cart", &cart).unwrap();
        s.insert("n", &7u64).unwrap();
        s.insert("name", "Ada").unwrap();
        assert_eq!(s.get::<Cart>("cart").unwrap(), Some(cart));
        assert_eq!(s.get::<u64>("n").unwrap(), Some(7));
        assert_eq!(s.get::<String>("name").unwrap().as_deref(), Some("Ada"));
        assert_eq!(s.get::<u64>("missing").unwrap(), None);
        assert_eq!(s.keys().collect::<Vec<_>>(), ["cart", "n", "name"]);
        assert!(
            matches!(s.get::<u64>("name"), Err(Error::Deserialize { key, .. }) if key == "name")
        );
    }

    #[test]
    fn unserialisable_values_are_errors_and_change_nothing() {
        let mut s = fresh();
        let mut bad = std::collections::HashMap::new();
        bad.insert((1, 2), 3);
        assert!(matches!(s.insert("k", &bad), Err(Error::Serialize { .. })));
        assert!(s.is_empty());
        assert!(!s.is_modified());
    }

    #[test]
    fn changes_are_tracked() {
        let mut data = Map::new();
        data.insert("a".into(), json!(1));
        let mut s = stored(data);
        assert!(!s.is_modified());
        s.insert("a", &1).unwrap();
        assert!(!s.is_modified(), "same value is not a change");
        assert!(!s.remove("missing"));
        assert!(!s.is_modified());
        let _ = s.get::<u32>("a").unwrap();
        assert!(!s.is_modified(), "reading is not a change");
        s.insert("a", &2).unwrap();
        assert!(s.is_modified());
    }

    #[test]
    fn new_sessions_are_written_only_with_content() {
        let mut s = fresh();
        assert!(!s.is_modified());
        s.flash("notice", "hi").unwrap();
        assert!(s.is_modified());
        let created = Session::new(
            SessionId::generate().unwrap(),
            NewReason::Created,
            times(),
            Binding::default(),
        );
        assert!(created.is_modified());
    }

    #[test]
    fn merge_keeps_other_writers_keys() {
        let mut mine = Map::new();
        mine.insert("a".into(), json!(1));
        mine.insert("b".into(), json!(1));
        let mut s = stored(mine);
        s.insert("a", &10).unwrap();
        s.remove("b");
        let mut now_stored = Map::new();
        now_stored.insert("a".into(), json!(5));
        now_stored.insert("b".into(), json!(5));
        now_stored.insert("c".into(), json!(5));
        let merged = s.merged_data(Some(&now_stored));
        assert_eq!(json!(merged), json!({"a": 10, "c": 5}));
        s.clear();
        s.insert("d", &1).unwrap();
        assert_eq!(json!(s.merged_data(Some(&now_stored))), json!({"d": 1}));
    }

    #[test]
    fn flash_is_kept_on_request() {
        let mut data_flash = Map::new();
        data_flash.insert("notice".into(), json!("saved"));
        data_flash.insert("other".into(), json!(1));
        let record = Record {
            times: times(),
            data: Map::new(),
            flash: data_flash,
            binding: Binding::default(),
        };
        let mut s = Session::loaded(SessionId::generate().unwrap(), record, false);
        assert_eq!(
            s.get_flash::<String>("notice").unwrap().as_deref(),
            Some("saved")
        );
        assert!(!s.is_modified(), "delivering flash needs no write at save");
        assert!(s.keep_flash("notice"));
        assert!(!s.keep_flash("missing"));
        assert!(s.is_modified());
        assert_eq!(s.flash_out.keys().collect::<Vec<_>>(), ["notice"]);
        s.flash("other", &2).unwrap();
        s.keep_all_flash();
        assert_eq!(
            s.flash_out["other"],
            json!(2),
            "a new value beats a kept one"
        );
    }
}
