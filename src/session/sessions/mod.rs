//! `SessionStore`: sessions kept in a [`Cache`] — create, load, save, delete, change the id,
//! and update atomically.
//!
//! Two seams, each chosen once by the builder: the record format ([`mode`]: `native` or
//! `catalyst`) and the tier that holds the records ([`tier`]: the cache file, or Redis with
//! the file as the near cache). Each public method has one body (in `load` and `save`); what
//! a format does differently lives in its own file, and no format knows which tier it uses.
//! `builder` makes a store and `client` describes the client a session may be bound to.

use std::sync::Arc;
use std::time::Duration;

use crate::Cache;
use crate::session::cookie::CookieConfig;
use crate::session::error::Result;
use crate::session::id::{IdFormat, SessionId};
use crate::session::uri::UrlRewriter;

mod builder;
#[cfg(feature = "perl")]
mod catalyst;
#[cfg(all(test, feature = "perl"))]
mod catalyst_tests;
mod client;
mod load;
mod mode;
mod native;
mod save;
#[cfg(test)]
mod tests;
mod tier;

pub use builder::SessionStoreBuilder;
pub use client::Client;
use mode::Mode;
pub use save::Saved;
use tier::Tier;

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
    tier: Tier,
    mode: Mode,
    pub(crate) cookie: CookieConfig,
    pub(crate) urls: Option<UrlRewriter>,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.inner;
        f.debug_struct("SessionStore")
            .field("cache", i.tier.cache())
            .field("mode", &i.mode)
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
        self.inner.tier.cache()
    }

    /// The shape of this store's session ids: [`IdFormat::Catalyst`] in Catalyst mode, else
    /// [`IdFormat::Native`]. Ids of another shape are never looked up.
    pub fn id_format(&self) -> IdFormat {
        self.inner.mode.id_format()
    }

    /// Whether the store keeps sessions as Catalyst does
    /// ([`SessionStoreBuilder::catalyst`]).
    pub fn is_catalyst(&self) -> bool {
        !matches!(self.inner.mode, Mode::Native(_))
    }

    /// Whether a call of this store may wait on the network (a Redis tier, or a backing
    /// store behind its cache) rather than take a page lock for microseconds: the web layer
    /// then makes its calls on tokio's blocking pool.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn may_block(&self) -> bool {
        self.inner.tier.may_block()
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
        self.inner.mode.key(id)
    }

    /// Now, in Unix seconds, by the cache's clock.
    pub(crate) fn now(&self) -> u64 {
        self.inner.tier.now()
    }
}

/// The cache key of a session: `prefix` then the id's text.
fn key(prefix: &[u8], id: &SessionId) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + id.as_str().len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(id.as_str().as_bytes());
    key
}
