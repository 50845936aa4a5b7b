//! `SessionStore`: sessions kept in a [`Cache`] — create, load, save, delete, change the id,
//! and update atomically.
//!
//! A session lives under the key `prefix + id` with a cache expiry equal to its own, so the
//! cache reclaims it when it ends. Loading runs in one [`Cache::update`]: under the page lock
//! it reads only the record header, deletes an expired or wrongly bound session, and rewrites
//! the record only to deliver flash values or to move the idle deadline (at most once per
//! extension threshold). Saving writes only the keys a request changed, with a
//! compare-and-swap on the stored bytes so that the JSON work happens outside the lock.
//!
//! The type and its shared state are here; `builder` makes one, `client` binds sessions to
//! clients, `load` reads sessions and `save` writes, moves and deletes them.

use std::sync::Arc;
use std::time::Duration;

use crate::Cache;
use crate::session::cookie::CookieConfig;
use crate::session::data::unix_secs;
use crate::session::error::Result;
use crate::session::id::{IdFormat, SessionId};
use crate::session::record::MAX_TIME;
use crate::session::uri::UrlRewriter;

mod builder;
#[cfg(feature = "perl")]
mod catalyst;
#[cfg(all(test, feature = "perl"))]
mod catalyst_tests;
mod client;
mod load;
mod save;
#[cfg(test)]
mod tests;
mod tier;

pub use builder::SessionStoreBuilder;
pub use client::Client;
pub use save::Saved;
use tier::Records;

/// The default absolute lifetime of a session: one day, as in the original plugin.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(86_400);
/// The default key prefix of session records in the cache.
pub const DEFAULT_KEY_PREFIX: &str = "session:";
/// Mode of a cache file the store creates: session ids are secrets, for its owner only.
const SESSION_FILE_MODE: u32 = 0o600;

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
    records: Records,
    mode: Mode,
    lifetime: u64,
    idle: Option<u64>,
    threshold: u64,
    bind_address: bool,
    bind_user_agent: bool,
    prefix: Vec<u8>,
    pub(crate) cookie: CookieConfig,
    pub(crate) urls: Option<UrlRewriter>,
}

/// How a store keeps its sessions.
#[derive(Clone, Debug)]
pub(crate) enum Mode {
    /// This crate's own record format, one cache entry per session.
    Native,
    /// As Catalyst::Plugin::Session with Store::FastMmap (three keys per session).
    #[cfg(feature = "perl")]
    Catalyst(crate::session::catalyst_record::CatalystConfig),
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.inner;
        f.debug_struct("SessionStore")
            .field("cache", i.records.cache())
            .field("mode", &i.mode)
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
        self.inner.records.cache()
    }

    /// The shape of this store's session ids: [`IdFormat::Catalyst`] in Catalyst mode, else
    /// [`IdFormat::Native`]. Ids of another shape are never looked up.
    pub fn id_format(&self) -> IdFormat {
        match self.inner.mode {
            Mode::Native => IdFormat::Native,
            #[cfg(feature = "perl")]
            Mode::Catalyst(_) => IdFormat::Catalyst,
        }
    }

    /// Whether the store keeps sessions as Catalyst does
    /// ([`SessionStoreBuilder::catalyst`]).
    pub fn is_catalyst(&self) -> bool {
        !matches!(self.inner.mode, Mode::Native)
    }

    /// Whether a call of this store may wait on the network (a Redis tier, or a backing
    /// store behind its cache) rather than take a page lock for microseconds: the web layer
    /// then makes its calls on tokio's blocking pool.
    pub(crate) fn may_block(&self) -> bool {
        self.inner.records.may_block()
    }

    /// A new id of this store's shape.
    pub(crate) fn new_id(&self) -> Result<SessionId> {
        self.id_format().generate()
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
        unix_secs(self.inner.records.now()).min(MAX_TIME)
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
}
