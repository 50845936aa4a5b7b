//! [`SessionStoreBuilder`]: the options of a [`SessionStore`], checked once by `build`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::mode::Mode;
use super::native::Native;
use super::tier::Tier;
use super::{DEFAULT_KEY_PREFIX, DEFAULT_LIFETIME, Inner, SESSION_FILE_MODE, SessionStore};
use crate::Cache;
use crate::session::cookie::CookieConfig;
use crate::session::error::{Error, Result};
use crate::session::uri::UrlRewriter;

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
    #[cfg(feature = "perl")]
    catalyst: Option<crate::session::catalyst_record::CatalystConfig>,
    #[cfg(feature = "redis")]
    redis: Option<crate::redis::RedisOptions>,
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
            #[cfg(feature = "perl")]
            catalyst: None,
            #[cfg(feature = "redis")]
            redis: None,
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

    /// Keep sessions in a cache at this path, opened with default options: a file the store
    /// creates gets mode `0600` (session ids are secrets). Without `cache` or `path`, the
    /// cache's default file is used — `fastmmap.cache` in a directory only this user can
    /// reach (see [`CacheBuilder::path`](crate::CacheBuilder::path)) — also created with mode
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

    /// Catalyst mode (feature `perl`): keep sessions exactly as Catalyst::Plugin::Session
    /// 0.43 with Store::FastMmap keeps them, so that Perl and Rust workers share one session
    /// file (see the [module docs](crate::session#catalyst-mode)). Ids are 40 lowercase hex
    /// digits; a cache opened by [`path`](Self::path) uses [`Layout::FastMmap`](crate::Layout::FastMmap)
    /// with the configured geometry.
    ///
    /// Catalyst's own options replace [`lifetime`](Self::lifetime) (Catalyst has no absolute
    /// lifetime), [`idle_timeout`](Self::idle_timeout) and
    /// [`extend_threshold`](Self::extend_threshold) (its `expires` and `expiry_threshold`),
    /// [`bind_address`](Self::bind_address) and [`bind_user_agent`](Self::bind_user_agent)
    /// (its `verify_address` and `verify_user_agent`), and the key prefix (its keys are
    /// fixed): setting those too is an error at [`build`](Self::build).
    #[cfg(feature = "perl")]
    pub fn catalyst(mut self, config: crate::session::catalyst_record::CatalystConfig) -> Self {
        self.catalyst = Some(config);
        self
    }

    /// Keep sessions in Redis, the source of truth shared by several hosts, with the cache
    /// file as each host's near cache (feature `redis`). A save is atomic in Redis (the
    /// record's lock and a version compared and set in one script), a load on any host sees
    /// the latest save, and a delete (a logout) on one host ends the session everywhere.
    ///
    /// Run one [`Listener`](crate::redis::Listener) per host over the store's
    /// [`cache`](SessionStore::cache), with the same options: without it (or while it is
    /// disconnected) every read goes to Redis. The cache must have no backing store of its
    /// own. A record in Redis is the cache record with an 8-byte version in front; it
    /// expires with the session. Errors of Redis reach the caller as
    /// [`Error::Cache`] holding [`crate::Error::Backing`] (without the session's key).
    #[cfg(feature = "redis")]
    pub fn redis(mut self, options: crate::redis::RedisOptions) -> Self {
        self.redis = Some(options);
        self
    }

    /// Opens the cache if needed and builds the store.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] for unusable options (a zero lifetime or idle timeout, a
    /// threshold not below the idle timeout or without one, an empty key prefix, both
    /// `cache` and `path`, an invalid cookie, native options with Catalyst mode, Catalyst mode
    /// with a Redis tier, a Redis tier over a cache with a backing store); [`Error::Cache`]
    /// if the cache cannot be opened.
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
        let native = Native {
            lifetime,
            idle,
            threshold,
            bind_address: self.bind_address,
            bind_user_agent: self.bind_user_agent,
            prefix: self.key_prefix.clone().into_bytes(),
        };
        #[cfg(feature = "perl")]
        let mode = match self.catalyst {
            None => Mode::Native(native),
            Some(config) => {
                config.validate()?;
                #[cfg(feature = "redis")]
                if self.redis.is_some() {
                    // The Redis tier owns its cache file (its listener clears all of it);
                    // Catalyst's file is Perl's too.
                    return Err(invalid("Catalyst mode and a Redis tier cannot be combined"));
                }
                if self.lifetime != DEFAULT_LIFETIME
                    || self.idle_timeout.is_some()
                    || self.extend_threshold.is_some()
                {
                    return Err(invalid(
                        "in Catalyst mode set expires and expiry_threshold on CatalystConfig, \
                         not lifetime, idle_timeout or extend_threshold",
                    ));
                }
                if self.bind_address || self.bind_user_agent {
                    return Err(invalid(
                        "in Catalyst mode set verify_address and verify_user_agent on \
                         CatalystConfig, not bind_address or bind_user_agent",
                    ));
                }
                if self.key_prefix != DEFAULT_KEY_PREFIX {
                    return Err(invalid(
                        "Catalyst mode uses Catalyst's keys (session:, expires:, flash:); \
                         key_prefix cannot be changed",
                    ));
                }
                Mode::Catalyst(super::catalyst::Catalyst { config })
            }
        };
        #[cfg(not(feature = "perl"))]
        let mode = Mode::Native(native);
        let open = |builder: crate::CacheBuilder| -> Result<Cache> {
            let builder = builder.permissions(SESSION_FILE_MODE);
            #[cfg(feature = "perl")]
            if let Mode::Catalyst(super::catalyst::Catalyst { config }) = &mode {
                return Ok(builder
                    .layout(crate::Layout::FastMmap)
                    .num_pages(config.num_pages)
                    .page_size(config.page_size)
                    .open()?);
            }
            Ok(builder.open()?)
        };
        let cache = match (self.cache, self.path) {
            (Some(_), Some(_)) => return Err(invalid("give either a cache or a path, not both")),
            (Some(cache), None) => cache,
            (None, Some(path)) => open(Cache::builder().path(path))?,
            (None, None) => open(Cache::builder())?,
        };
        #[cfg(feature = "redis")]
        let tier = match self.redis {
            Some(_) if cache.has_backing() => {
                // The Redis tier writes the records itself; a backing store of the cache
                // would write them a second time, unordered with the tier's own writes.
                return Err(invalid(
                    "a session store with a Redis tier needs a cache without a backing store",
                ));
            }
            Some(options) => Tier::redis(cache, options),
            None => Tier::File(cache),
        };
        #[cfg(not(feature = "redis"))]
        let tier = Tier::File(cache);
        Ok(SessionStore {
            inner: Arc::new(Inner {
                tier,
                mode,
                cookie: self.cookie,
                urls: self.urls,
            }),
        })
    }
}
