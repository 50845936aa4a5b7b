//! `SessionStore`: sessions kept in a [`Cache`] — create, load, save, delete, change the id,
//! and update atomically.
//!
//! A session lives under the key `prefix + id` with a cache expiry equal to its own, so the
//! cache reclaims it when it ends. Loading runs in one [`Cache::update`]: under the page lock
//! it reads only the record header, deletes an expired or wrongly bound session, and rewrites
//! the record only to deliver flash values or to move the idle deadline (at most once per
//! extension threshold). Saving writes only the keys a request changed, with a
//! compare-and-swap on the stored bytes so that the JSON work happens outside the lock.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::session::cookie::CookieConfig;
use crate::session::data::{NewReason, Session, State, from_unix_secs, unix_secs};
use crate::session::error::{Error, Result};
use crate::session::id::SessionId;
use crate::session::record::{
    Binding, MAX_BOUND_USER_AGENT, MAX_TIME, Map, Record, RecordView, Times, truncate_at_char,
};
use crate::session::uri::UrlRewriter;
use crate::{Cache, Expiry, Update};

/// The default absolute lifetime of a session: one day, as in the original plugin.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(86_400);
/// The default key prefix of session records in the cache.
pub const DEFAULT_KEY_PREFIX: &str = "session:";
/// Mode of a cache file the store creates: session ids are secrets, for its owner only.
const SESSION_FILE_MODE: u32 = 0o600;
/// Optimistic save attempts before a save decides under the page lock instead.
const CAS_ROUNDS: usize = 8;
/// New ids tried when a generated id is already taken (which a working random number
/// generator never does).
const ID_ATTEMPTS: usize = 4;

/// What the server knows about the client making a request, for binding sessions to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Client<'a> {
    /// The client's address (as the server or a trusted proxy saw it).
    pub address: Option<IpAddr>,
    /// The `User-Agent` request header.
    pub user_agent: Option<&'a str>,
}

impl<'a> Client<'a> {
    /// A client with neither address nor user agent known.
    pub fn new() -> Client<'a> {
        Client::default()
    }

    /// With the client address.
    pub fn address(mut self, address: IpAddr) -> Self {
        self.address = Some(address);
        self
    }

    /// With the user agent.
    pub fn user_agent(mut self, user_agent: &'a str) -> Self {
        self.user_agent = Some(user_agent);
        self
    }

    /// The address as bound: IPv4-mapped IPv6 addresses as IPv4; empty if unknown.
    fn address_text(&self) -> String {
        self.address
            .map(|a| a.to_canonical().to_string())
            .unwrap_or_default()
    }

    fn user_agent_text(&self) -> &'a str {
        truncate_at_char(self.user_agent.unwrap_or(""), MAX_BOUND_USER_AGENT)
    }
}

/// What [`SessionStore::save`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Saved {
    /// Nothing to write.
    Unchanged,
    /// The session was written.
    Written,
    /// The session had been [invalidated](Session::invalidate) and was removed.
    Deleted,
    /// The stored session had been deleted, had expired, or had moved to a new id meanwhile;
    /// it was not recreated, and the session now counts as invalidated.
    Gone,
}

/// Options for a [`SessionStore`]; see [`SessionStore::builder`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct SessionStoreBuilder {
    cache: Option<Cache>,
    path: Option<PathBuf>,
    lifetime: Duration,
    idle_timeout: Option<Duration>,
    extend_threshold: Option<Duration>,
    bind_address: bool,
    bind_user_agent: bool,
    key_prefix: String,
    cookie: CookieConfig,
    urls: Option<UrlRewriter>,
}

impl Default for SessionStoreBuilder {
    fn default() -> Self {
        SessionStoreBuilder {
            cache: None,
            path: None,
            lifetime: DEFAULT_LIFETIME,
            idle_timeout: None,
            extend_threshold: None,
            bind_address: false,
            bind_user_agent: false,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            cookie: CookieConfig::default(),
            urls: None,
        }
    }
}

/// Whole seconds in `d`, rounded up (saturating).
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

impl SessionStoreBuilder {
    /// Keep sessions in this cache (for example one opened with a
    /// [`ManualClock`](crate::ManualClock) in tests). The store reads the time from the
    /// cache's clock.
    pub fn cache(mut self, cache: Cache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Keep sessions in a cache at this path, opened with default options, except that a
    /// file the store creates gets mode `0600` (session ids are secrets). Without `cache` or
    /// `path`, the cache's default file is used — a per-user file in the temp directory
    /// (see [`CacheBuilder::path`](crate::CacheBuilder::path)) — also created with mode
    /// `0600`.
    ///
    /// An existing file keeps its mode, and a cache given with [`cache`](Self::cache) is used
    /// as it was opened: check their permissions yourself. Anyone who can read the file can
    /// read every session and its id.
    pub fn path(mut self, path: impl AsRef<Path>) -> Self {
        self.path = Some(path.as_ref().to_path_buf());
        self
    }

    /// The absolute lifetime: a session ends this long after it was created, however active
    /// (default [`DEFAULT_LIFETIME`], one day). Whole seconds, rounded up. No session outlives
    /// early 2106, when the cache's expiry times end.
    pub fn lifetime(mut self, d: Duration) -> Self {
        self.lifetime = d;
        self
    }

    /// Sliding expiry: a session also ends after this long without a request (default: off).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = Some(d);
        self
    }

    /// With an idle timeout, how long after the last extension a load moves the idle
    /// deadline again (default: a tenth of the idle timeout). A session that is only read is
    /// rewritten at most this often, so it may end up to this much earlier than a strict
    /// sliding expiry would end it.
    pub fn extend_threshold(mut self, d: Duration) -> Self {
        self.extend_threshold = Some(d);
        self
    }

    /// Bind new sessions to the client address: a later request from another address
    /// deletes the session (default off; clients behind changing proxies or on mobile
    /// networks change address).
    pub fn bind_address(mut self, yes: bool) -> Self {
        self.bind_address = yes;
        self
    }

    /// Bind new sessions to the user agent: a later request with another `User-Agent`
    /// deletes the session (default off).
    pub fn bind_user_agent(mut self, yes: bool) -> Self {
        self.bind_user_agent = yes;
        self
    }

    /// The prefix of session keys in the cache (default [`DEFAULT_KEY_PREFIX`]), so that a
    /// cache can hold sessions and other entries.
    pub fn key_prefix(mut self, prefix: &str) -> Self {
        self.key_prefix = prefix.to_owned();
        self
    }

    /// How the session cookie is written and read (default [`CookieConfig::default`]).
    pub fn cookie(mut self, cookie: CookieConfig) -> Self {
        self.cookie = cookie;
        self
    }

    /// Also carry ids in URLs for clients that send no session cookie (default off): the
    /// request cycle ([`SessionStore::begin`], [`SessionStore::finish`]) then takes ids out
    /// of incoming URLs and puts them into redirects and HTML links.
    pub fn urls(mut self, urls: UrlRewriter) -> Self {
        self.urls = Some(urls);
        self
    }

    /// Opens the cache if needed and builds the store.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] for unusable options (a zero lifetime or idle timeout, a
    /// threshold not below the idle timeout or without one, an empty key prefix, both
    /// `cache` and `path`, an invalid cookie); [`Error::Cache`] if the cache cannot be
    /// opened.
    pub fn build(self) -> Result<SessionStore> {
        let invalid = |reason: &str| Error::InvalidOptions {
            reason: reason.to_owned(),
        };
        let lifetime = ceil_secs(self.lifetime);
        if lifetime == 0 {
            return Err(invalid("lifetime must be at least one second"));
        }
        let idle = self.idle_timeout.map(ceil_secs);
        if idle == Some(0) {
            return Err(invalid("idle_timeout must be at least one second"));
        }
        let threshold = match (idle, self.extend_threshold) {
            (None, Some(_)) => return Err(invalid("extend_threshold needs an idle_timeout")),
            (None, None) => 0,
            (Some(idle), None) => idle / 10,
            (Some(idle), Some(t)) => {
                let t = ceil_secs(t);
                if t >= idle {
                    return Err(invalid("extend_threshold must be below idle_timeout"));
                }
                t
            }
        };
        if self.key_prefix.is_empty() {
            return Err(invalid("key_prefix must not be empty"));
        }
        self.cookie.validate()?;
        let cache = match (self.cache, self.path) {
            (Some(_), Some(_)) => return Err(invalid("give either a cache or a path, not both")),
            (Some(cache), None) => cache,
            (None, Some(path)) => Cache::builder()
                .path(path)
                .permissions(SESSION_FILE_MODE)
                .open()?,
            (None, None) => Cache::builder().permissions(SESSION_FILE_MODE).open()?,
        };
        Ok(SessionStore {
            inner: Arc::new(Inner {
                cache,
                lifetime,
                idle,
                threshold,
                bind_address: self.bind_address,
                bind_user_agent: self.bind_user_agent,
                prefix: self.key_prefix.into_bytes(),
                cookie: self.cookie,
                urls: self.urls,
            }),
        })
    }
}

/// Sessions kept in a [`Cache`], shared by every thread and process that opens the file.
/// Cloning is cheap and shares the store.
///
/// ```
/// use fastmmap::session::{Client, NewReason, Origin, SessionStore};
///
/// let dir = tempfile::tempdir()?;
/// let store = SessionStore::builder().path(dir.path().join("sessions")).build()?;
///
/// // First request: no id, so a new session; it is stored once it holds something.
/// let mut session = store.load(None, &Client::new())?;
/// assert_eq!(session.origin(), &Origin::New(NewReason::NoId));
/// session.insert("user", "ada")?;
/// store.save(&mut session)?;
/// let id = *session.id();
///
/// // Next request, in any process: the same session.
/// let session = store.load(Some(&id), &Client::new())?;
/// assert_eq!(session.get::<String>("user")?.as_deref(), Some("ada"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct SessionStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    cache: Cache,
    lifetime: u64,
    idle: Option<u64>,
    threshold: u64,
    bind_address: bool,
    bind_user_agent: bool,
    prefix: Vec<u8>,
    pub(crate) cookie: CookieConfig,
    pub(crate) urls: Option<UrlRewriter>,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.inner;
        f.debug_struct("SessionStore")
            .field("cache", &i.cache)
            .field("lifetime", &i.lifetime)
            .field("idle", &i.idle)
            .field("threshold", &i.threshold)
            .field("bind_address", &i.bind_address)
            .field("bind_user_agent", &i.bind_user_agent)
            .field("cookie", &i.cookie)
            .field("urls", &i.urls)
            .finish_non_exhaustive()
    }
}

/// What a load found under the presented id, decided under the page lock.
enum Found {
    Missing,
    Unreadable(Error),
    Dropped(NewReason),
    Live {
        bytes: Vec<u8>,
        extended: Option<u64>,
    },
}

/// What a save does to the stored record.
enum Plan {
    /// The stored session is gone (`remove`: it is there but expired, so remove it).
    Gone { remove: bool },
    Write {
        bytes: Vec<u8>,
        times: Times,
        data: Map,
    },
}

impl Plan {
    fn update(&self) -> Update {
        match self {
            Plan::Gone { remove: false } => Update::Keep,
            Plan::Gone { remove: true } => Update::Remove,
            Plan::Write { bytes, times, .. } => {
                Update::SetWith(bytes.clone(), Expiry::At(from_unix_secs(times.expires)))
            }
        }
    }
}

impl SessionStore {
    /// Options for a store.
    pub fn builder() -> SessionStoreBuilder {
        SessionStoreBuilder::default()
    }

    /// A store over `cache` with default options.
    pub fn new(cache: Cache) -> SessionStore {
        SessionStore::builder()
            .cache(cache)
            .build()
            .expect("the default options are valid")
    }

    /// The cache the sessions live in.
    pub fn cache(&self) -> &Cache {
        &self.inner.cache
    }

    /// The cookie settings.
    pub fn cookie(&self) -> &CookieConfig {
        &self.inner.cookie
    }

    /// The URL settings, if ids are carried in URLs.
    pub fn urls(&self) -> Option<&UrlRewriter> {
        self.inner.urls.as_ref()
    }

    /// The cache key of the session `id`.
    pub fn key(&self, id: &SessionId) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.inner.prefix.len() + id.as_str().len());
        key.extend_from_slice(&self.inner.prefix);
        key.extend_from_slice(id.as_str().as_bytes());
        key
    }

    /// Now, in Unix seconds, by the cache's clock (at most [`MAX_TIME`], like every time in a
    /// record).
    pub(crate) fn now(&self) -> u64 {
        unix_secs(self.inner.cache.clock().now()).min(MAX_TIME)
    }

    /// When a session created at `created` and last active at `active` ends: at most
    /// [`MAX_TIME`], when the cache entry holding it ends anyway.
    fn deadline(&self, created: u64, active: u64) -> u64 {
        let absolute = created.saturating_add(self.inner.lifetime);
        let end = match self.inner.idle {
            Some(idle) => absolute.min(active.saturating_add(idle)),
            None => absolute,
        };
        end.min(MAX_TIME)
    }

    /// The new expiry if a load at `now` should move the idle deadline.
    fn extension(&self, times: Times, now: u64) -> Option<u64> {
        self.inner.idle?;
        if now.saturating_sub(times.active) < self.inner.threshold {
            return None;
        }
        let expires = self.deadline(times.created, now);
        (expires > times.expires).then_some(expires)
    }

    fn binding_for(&self, client: &Client<'_>) -> Binding {
        Binding {
            address: self.inner.bind_address.then(|| client.address_text()),
            user_agent: self
                .inner
                .bind_user_agent
                .then(|| client.user_agent_text().to_owned()),
        }
    }

    /// Why `view` may not be used by `client`, if it may not.
    fn binding_mismatch(&self, view: &RecordView<'_>, client: &Client<'_>) -> Option<NewReason> {
        if self.inner.bind_address
            && let Some(bound) = view.address
            && bound != client.address_text()
        {
            return Some(NewReason::AddressChanged);
        }
        if self.inner.bind_user_agent
            && let Some(bound) = view.user_agent
            && bound != client.user_agent_text()
        {
            return Some(NewReason::UserAgentChanged);
        }
        None
    }

    pub(crate) fn fresh(&self, reason: NewReason, client: &Client<'_>) -> Result<Session> {
        let now = self.now();
        let times = Times {
            created: now,
            updated: now,
            active: now,
            expires: self.deadline(now, now),
        };
        Ok(Session::new(
            SessionId::generate()?,
            reason,
            times,
            self.binding_for(client),
        ))
    }

    /// A new session with a new id, bound to `client` as configured. It is written by the
    /// first [`save`](Self::save), even if it holds nothing.
    ///
    /// # Errors
    /// [`Error::Random`] if no id can be generated.
    pub fn create(&self, client: &Client<'_>) -> Result<Session> {
        self.fresh(NewReason::Created, client)
    }

    /// The session `id` names, for a request from `client`; with no id, or one that has no
    /// live session, a new session with a **new** id — never the one presented — and the
    /// reason ([`Session::origin`]). An expired session, or one bound to another client, is
    /// deleted on sight. Flash values stored for this load are delivered and removed from the
    /// cache at once, so no other load sees them.
    ///
    /// A new session from `load` is not stored until it holds a value (or a flash value) and
    /// is saved: requests that never use their session leave nothing in the cache.
    ///
    /// # Errors
    /// [`Error::BadRecord`] or [`Error::UnsupportedVersion`] if the cache holds something
    /// under the id that this version cannot read (it is left alone); [`Error::Cache`];
    /// [`Error::Random`].
    pub fn load(&self, id: Option<&SessionId>, client: &Client<'_>) -> Result<Session> {
        let Some(id) = id else {
            return self.fresh(NewReason::NoId, client);
        };
        let now = self.now();
        let mut found = Found::Missing;
        self.inner.cache.update(&self.key(id), |old| match old {
            // An entry the cache no longer shows may still be there, expired: remove it.
            None => Update::Remove,
            Some(bytes) => {
                let (seen, update) = self.inspect(bytes, now, client);
                found = seen;
                update
            }
        })?;
        match found {
            Found::Missing => self.fresh(NewReason::Unknown, client),
            Found::Unreadable(e) => Err(e),
            Found::Dropped(reason) => self.fresh(reason, client),
            Found::Live { bytes, extended } => {
                let mut record = Record::decode(&bytes)?;
                if let Some(expires) = extended {
                    record.times.active = now;
                    record.times.expires = expires;
                }
                Ok(Session::loaded(*id, record, extended.is_some()))
            }
        }
    }

    /// What a load at `now` by `client` makes of the stored `bytes`, and what it does to
    /// them (under the page lock: only the header is parsed).
    fn inspect(&self, bytes: &[u8], now: u64, client: &Client<'_>) -> (Found, Update) {
        let view = match RecordView::parse(bytes) {
            Ok(view) => view,
            Err(e) => return (Found::Unreadable(e), Update::Keep),
        };
        let times = view.header.times;
        if now >= times.expires {
            return (Found::Dropped(NewReason::Expired), Update::Remove);
        }
        if let Some(reason) = self.binding_mismatch(&view, client) {
            return (Found::Dropped(reason), Update::Remove);
        }
        let extended = self.extension(times, now);
        let drop_flash = view.header.has_flash();
        let found = Found::Live {
            bytes: bytes.to_vec(),
            extended,
        };
        if extended.is_none() && !drop_flash {
            return (found, Update::Keep);
        }
        let (active, expires) = extended.map_or((times.active, times.expires), |e| (now, e));
        let update = Update::SetWith(
            view.patched(active, expires, drop_flash),
            Expiry::At(from_unix_secs(expires)),
        );
        (found, update)
    }

    /// [`load`](Self::load) for an id as the client sent it: one that is not well formed is
    /// never looked up, and gives a new session ([`NewReason::Malformed`]).
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn load_str(&self, presented: Option<&str>, client: &Client<'_>) -> Result<Session> {
        match presented.map(SessionId::parse) {
            None => self.fresh(NewReason::NoId, client),
            Some(Err(e)) => self.fresh(NewReason::Malformed(e), client),
            Some(Ok(id)) => self.load(Some(&id), client),
        }
    }

    /// Writes what changed in `session`: nothing if nothing did
    /// ([`Session::is_modified`]); removes it if it was
    /// [invalidated](Session::invalidate).
    ///
    /// Concurrent saves of one session (two requests, in any processes) never produce a torn
    /// record: each save replaces the record as a whole, atomically. For each key it changed,
    /// the last save wins; keys it did not change keep what other saves wrote, and flash
    /// values from other requests are kept. A session deleted, expired or moved to a new id
    /// meanwhile is not brought back ([`Saved::Gone`]). For a read-modify-write of one value
    /// (a counter) use [`update`](Self::update).
    ///
    /// Each write counts as activity: it moves the idle deadline (within the lifetime).
    ///
    /// # Errors
    /// [`Error::Cache`] — [`crate::Error::TooLarge`] if the record does not fit in a cache
    /// page (nothing is written); [`Error::BadRecord`] / [`Error::UnsupportedVersion`] if
    /// the stored record cannot be read (it is left alone).
    pub fn save(&self, session: &mut Session) -> Result<Saved> {
        if session.invalidated {
            if session.state == State::Stored {
                self.inner.cache.remove(&self.key(&session.id))?;
            }
            session.state = State::New;
            session.persist = false;
            return Ok(Saved::Deleted);
        }
        if !session.is_modified() {
            return Ok(Saved::Unchanged);
        }
        let now = self.now();
        match session.state {
            State::New => self.save_new(session, now),
            State::Stored => self.save_stored(session, now, CAS_ROUNDS),
        }
    }

    /// Writes a session that is not stored yet, under a key that must be free.
    fn save_new(&self, session: &mut Session, now: u64) -> Result<Saved> {
        let created = session.times.created;
        let times = Times {
            created,
            updated: now,
            active: now,
            expires: self.deadline(created, now),
        };
        if now >= times.expires {
            return Ok(gone(session));
        }
        let record = Record {
            times,
            data: session.data.clone(),
            flash: session.flash_out.clone(),
            binding: session.binding.clone(),
        };
        let bytes = record.encode()?;
        session.id = self.write_new(&bytes, times.expires, Some(session.id))?;
        session.mark_stored(record.data, times);
        Ok(Saved::Written)
    }

    /// Stores `bytes` under a free id (`first`, if given and free, else new ones); returns
    /// the id used.
    fn write_new(&self, bytes: &[u8], expires: u64, first: Option<SessionId>) -> Result<SessionId> {
        let mut id = match first {
            Some(id) => id,
            None => SessionId::generate()?,
        };
        for _ in 0..ID_ATTEMPTS {
            let mut taken = false;
            self.inner.cache.update(&self.key(&id), |old| {
                if old.is_some() {
                    taken = true;
                    return Update::Keep;
                }
                Update::SetWith(bytes.to_vec(), Expiry::At(from_unix_secs(expires)))
            })?;
            if !taken {
                return Ok(id);
            }
            id = SessionId::generate()?;
        }
        Err(Error::IdCollision)
    }

    /// What saving `session` over `current` (the stored bytes) does.
    fn plan(&self, session: &Session, current: Option<&[u8]>, now: u64) -> Result<Plan> {
        let Some(bytes) = current else {
            return Ok(Plan::Gone { remove: false });
        };
        let view = RecordView::parse(bytes)?;
        if now >= view.header.times.expires {
            return Ok(Plan::Gone { remove: true });
        }
        let stored = view.decode()?;
        let created = stored.times.created;
        let times = Times {
            created,
            updated: now,
            active: now,
            expires: self.deadline(created, now),
        };
        if now >= times.expires {
            return Ok(Plan::Gone { remove: true });
        }
        let mut flash = stored.flash;
        for (k, v) in &session.flash_out {
            flash.insert(k.clone(), v.clone());
        }
        let record = Record {
            times,
            data: session.merged_data(Some(&stored.data)),
            flash,
            binding: stored.binding,
        };
        Ok(Plan::Write {
            bytes: record.encode()?,
            times,
            data: record.data,
        })
    }

    /// Merges into the stored record: up to `rounds` compare-and-swap rounds with the merge
    /// done outside the lock, then (if other writers keep winning) one merge under the lock.
    fn save_stored(&self, session: &mut Session, now: u64, rounds: usize) -> Result<Saved> {
        let key = self.key(&session.id);
        let cache = &self.inner.cache;
        let mut done = None;
        for _ in 0..rounds {
            let current = cache.get(&key)?;
            let plan = self.plan(session, current.as_deref(), now)?;
            let mut swapped = false;
            cache.update(&key, |now_bytes| {
                if now_bytes != current.as_deref() {
                    return Update::Keep;
                }
                swapped = true;
                plan.update()
            })?;
            if swapped {
                done = Some(plan);
                break;
            }
        }
        let plan = match done {
            Some(plan) => plan,
            None => {
                let mut decided = None;
                cache.update(&key, |current| match self.plan(session, current, now) {
                    Ok(plan) => {
                        let update = plan.update();
                        decided = Some(Ok(plan));
                        update
                    }
                    Err(e) => {
                        decided = Some(Err(e));
                        Update::Keep
                    }
                })?;
                decided.expect("update calls its closure")?
            }
        };
        Ok(match plan {
            Plan::Gone { .. } => gone(session),
            Plan::Write { times, data, .. } => {
                session.mark_stored(data, times);
                Saved::Written
            }
        })
    }

    /// Removes the session `id`. Returns whether it was live.
    ///
    /// # Errors
    /// [`Error::Cache`].
    pub fn delete(&self, id: &SessionId) -> Result<bool> {
        Ok(self.inner.cache.remove(&self.key(id))?)
    }

    /// Moves the session to a new id (do this when a user logs in or gains privileges, so
    /// that an id known before — perhaps planted by an attacker — is worthless after): its
    /// values, including unsaved changes, are written under the new id and the old id is
    /// deleted. Returns the old id. For a session not stored yet, only the id changes.
    ///
    /// A request still using the old id afterwards gets a new, empty session. If the stored
    /// session was deleted or expired meanwhile, it is not recreated (the session counts as
    /// invalidated, as after [`Saved::Gone`]).
    ///
    /// # Errors
    /// As [`save`](Self::save); on an error the session stays under its old id.
    pub fn change_id(&self, session: &mut Session) -> Result<SessionId> {
        let old = session.id;
        if session.state == State::New || session.invalidated {
            session.id = SessionId::generate()?;
            return Ok(old);
        }
        let now = self.now();
        let old_key = self.key(&old);
        // Take the old record (if it can be read) in one step, so that no save slips in
        // between reading it and deleting it.
        let mut taken: Option<Result<Vec<u8>>> = None;
        self.inner.cache.update(&old_key, |current| match current {
            None => Update::Keep,
            Some(bytes) => match RecordView::parse(bytes) {
                Ok(_) => {
                    taken = Some(Ok(bytes.to_vec()));
                    Update::Remove
                }
                Err(e) => {
                    taken = Some(Err(e));
                    Update::Keep
                }
            },
        })?;
        let Some(stored) = taken.transpose()? else {
            gone(session);
            session.id = SessionId::generate()?;
            return Ok(old);
        };
        let restore = || {
            if let Ok(view) = RecordView::parse(&stored) {
                let until = Expiry::At(from_unix_secs(view.header.times.expires));
                let _ = self.inner.cache.set_with(&old_key, &stored, until);
            }
        };
        let written = self
            .plan(session, Some(&stored), now)
            .and_then(|plan| match plan {
                Plan::Gone { .. } => Ok(None),
                Plan::Write { bytes, times, data } => {
                    let id = self.write_new(&bytes, times.expires, None)?;
                    Ok(Some((id, times, data)))
                }
            });
        match written {
            Err(e) => {
                restore();
                Err(e)
            }
            Ok(None) => {
                gone(session);
                session.id = SessionId::generate()?;
                Ok(old)
            }
            Ok(Some((id, times, data))) => {
                session.id = id;
                session.mark_stored(data, times);
                Ok(old)
            }
        }
    }

    /// Atomic read-modify-write of the session `id`: `f` gets the stored session under the
    /// cache's page lock — no other thread or process can change the session meanwhile —
    /// and whatever it changes is written before the lock is released. `None` if there is
    /// no live session (an expired one is deleted).
    ///
    /// This is not a request: it does not deliver flash values (they stay pending, and `f`
    /// may add some with [`Session::flash`]), check the binding, or move the idle deadline.
    /// [`Session::invalidate`] in `f` deletes the session.
    ///
    /// `f` runs under the page lock: keep it short, and do not use this store's cache in it
    /// (that is [`crate::Error::Reentrant`]).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let store = fastmmap::session::SessionStore::builder().path(dir.path().join("s")).build()?;
    /// # let mut s = store.create(&Default::default())?;
    /// # store.save(&mut s)?;
    /// # let id = *s.id();
    /// let hits = store.update(&id, |session| {
    ///     let n = session.get::<u64>("hits").ok().flatten().unwrap_or(0) + 1;
    ///     session.insert("hits", &n).map(|_| n)
    /// })?;
    /// assert_eq!(hits.transpose()?, Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`save`](Self::save); if the result does not fit, nothing is written.
    pub fn update<R>(
        &self,
        id: &SessionId,
        f: impl FnOnce(&mut Session) -> R,
    ) -> Result<Option<R>> {
        let now = self.now();
        let mut outcome: Option<Result<R>> = None;
        self.inner.cache.update(&self.key(id), |current| {
            let Some(bytes) = current else {
                return Update::Keep;
            };
            let record = match Record::decode(bytes) {
                Ok(r) => r,
                Err(e) => {
                    outcome = Some(Err(e));
                    return Update::Keep;
                }
            };
            if now >= record.times.expires {
                return Update::Remove;
            }
            let pending_flash = record.flash.clone();
            let mut session = Session::loaded(*id, record, false);
            session.flash_out = std::mem::take(&mut session.flash_in);
            let result = f(&mut session);
            if session.invalidated {
                outcome = Some(Ok(result));
                return Update::Remove;
            }
            let changed = session.cleared
                || !session.changes.is_empty()
                || session.flash_out != pending_flash;
            if !changed {
                outcome = Some(Ok(result));
                return Update::Keep;
            }
            let mut times = session.times;
            times.updated = now;
            let record = Record {
                times,
                data: session.data,
                flash: session.flash_out,
                binding: session.binding,
            };
            match record.encode() {
                Ok(bytes) => {
                    outcome = Some(Ok(result));
                    Update::SetWith(bytes, Expiry::At(from_unix_secs(times.expires)))
                }
                Err(e) => {
                    outcome = Some(Err(e));
                    Update::Keep
                }
            }
        })?;
        outcome.transpose()
    }
}

/// The stored session is gone: the in-memory one must not bring it back.
fn gone(session: &mut Session) -> Saved {
    session.state = State::New;
    session.invalidated = true;
    session.persist = false;
    Saved::Gone
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;
    use crate::session::Origin;
    use std::time::UNIX_EPOCH;

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
        let (found, update) = f.store.inspect(&bytes, T0 + 100, &Client::new());
        assert!(matches!(found, Found::Dropped(NewReason::Expired)));
        assert_eq!(update, Update::Remove);
        let (found, update) = f.store.inspect(&bytes, T0 + 99, &Client::new());
        assert!(matches!(found, Found::Live { extended: None, .. }));
        assert_eq!(update, Update::Keep);
        let (found, _) = f.store.inspect(b"junk", T0, &Client::new());
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
        assert_eq!(f.store.save_stored(&mut a, now, 0).unwrap(), Saved::Written);
        assert_eq!(f.store.save_stored(&mut b, now, 0).unwrap(), Saved::Written);
        let s = f.store.load(Some(&id), &Client::new()).unwrap();
        assert_eq!(s.get::<u32>("from_a").unwrap(), Some(1));
        assert_eq!(s.get::<u32>("from_b").unwrap(), Some(2));
        f.store.delete(&id).unwrap();
        b.insert("from_b", &3).unwrap();
        assert_eq!(f.store.save_stored(&mut b, now, 0).unwrap(), Saved::Gone);
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
            f.store.save_stored(&mut c, now, 0),
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
        s.insert("huge", &"x".repeat(100_000)).unwrap();
        let e = f.store.change_id(&mut s).unwrap_err();
        assert!(
            matches!(e, Error::Cache(crate::Error::TooLarge { .. })),
            "{e}"
        );
        assert_eq!(s.id(), &id);
        let back = f.store.load(Some(&id), &Client::new()).unwrap();
        assert_eq!(back.get::<u64>("user").unwrap(), Some(7));
    }

    #[test]
    fn too_large_saves_change_nothing() {
        let f = fixture(|b| b);
        let id = f.stored_session("n", 1);
        let mut s = f.store.load(Some(&id), &Client::new()).unwrap();
        s.insert("huge", &"x".repeat(100_000)).unwrap();
        assert!(matches!(
            f.store.save(&mut s),
            Err(Error::Cache(crate::Error::TooLarge { .. }))
        ));
        assert!(
            s.is_modified(),
            "the changes are still there to retry or drop"
        );
        let back = f.store.load(Some(&id), &Client::new()).unwrap();
        assert_eq!(back.get::<u64>("n").unwrap(), Some(1));
        assert!(!back.contains_key("huge"));
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

    #[test]
    fn update_is_atomic_across_threads() {
        let f = fixture(|b| b);
        let id = f.stored_session("hits", 0);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = f.store.clone();
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
}
