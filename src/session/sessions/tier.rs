//! Where session records are kept — the tier seam, chosen once by the builder: every read and
//! write of a stored record goes through [`Tier`], so the record formats do not care what
//! holds them.
//!
//! [`Tier::File`] is one [`Cache`]. [`Tier::Redis`] (feature `redis`, with
//! [`SessionStoreBuilder::redis`](super::SessionStoreBuilder::redis)) keeps Redis as the source
//! of truth with the cache file as the near cache of reads: a read serves the local copy while
//! the host's listener is subscribed, else Redis's; every write is an atomic update in Redis
//! (the closure runs once, under the record's lock in Redis) after which the local copy is
//! dropped. See [`crate::redis`]. Each method is one `match` over the two.

use std::time::SystemTime;

use crate::session::data::unix_secs;
use crate::session::record::MAX_TIME;
use crate::{Cache, Expiry, Update};

/// The stored records of a [`SessionStore`](super::SessionStore): get, atomic
/// read-modify-write, remove.
pub(crate) enum Tier {
    /// The records are the cache file's entries.
    File(Cache),
    /// The records are Redis's; the cache file is the near cache of reads.
    #[cfg(feature = "redis")]
    Redis {
        /// The near cache.
        cache: Cache,
        /// Redis (boxed: it is large, and every call through it waits on the network anyway).
        redis: Box<crate::redis::session_tier::SessionTier>,
    },
}

impl Tier {
    /// Records kept in Redis, with `cache` as the near cache.
    #[cfg(feature = "redis")]
    pub(crate) fn redis(cache: Cache, options: crate::redis::RedisOptions) -> Tier {
        let redis = Box::new(crate::redis::session_tier::SessionTier::new(
            options,
            cache.path(),
        ));
        Tier::Redis { cache, redis }
    }

    /// The local cache file.
    pub(crate) fn cache(&self) -> &Cache {
        match self {
            Tier::File(cache) => cache,
            #[cfg(feature = "redis")]
            Tier::Redis { cache, .. } => cache,
        }
    }

    /// Whether a call may wait on the network: a Redis tier, or a backing store behind the
    /// cache.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn may_block(&self) -> bool {
        match self {
            Tier::File(cache) => cache.has_backing(),
            #[cfg(feature = "redis")]
            Tier::Redis { .. } => true,
        }
    }

    /// Now, by the cache's clock.
    pub(crate) fn clock_now(&self) -> SystemTime {
        self.cache().clock().now()
    }

    /// Now, in Unix seconds, by the cache's clock (at most [`MAX_TIME`], like every time in a
    /// record).
    pub(crate) fn now(&self) -> u64 {
        unix_secs(self.clock_now()).min(MAX_TIME)
    }

    /// The record under `key`, if any.
    pub(crate) fn get(&self, key: &[u8]) -> crate::Result<Option<Vec<u8>>> {
        match self {
            Tier::File(cache) => cache.get(key).map_err(crate::Error::without_key),
            #[cfg(feature = "redis")]
            Tier::Redis { cache, redis } => redis.get(cache, key),
        }
    }

    /// An atomic read-modify-write of the record under `key` (see [`Cache::update_with`]):
    /// `f` decides the update and what to hand back.
    pub(crate) fn update_with<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> (Update, R),
    ) -> crate::Result<R> {
        match self {
            Tier::File(cache) => cache
                .update_with(key, |old| f(old.map(|e| e.value)))
                .map_err(crate::Error::without_key),
            #[cfg(feature = "redis")]
            Tier::Redis { cache, redis } => redis.update_with(cache, key, f),
        }
    }

    /// [`update_with`](Self::update_with) where deciding may fail (a record that does not
    /// decode, a result that does not encode): a failure changes nothing and is returned.
    /// This is the one place where an error under the lock leaves the closure.
    pub(crate) fn try_update<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> crate::session::Result<(Update, R)>,
    ) -> crate::session::Result<R> {
        self.update_with(key, |current| match f(current) {
            Ok((update, r)) => (update, Ok(r)),
            Err(e) => (Update::Keep, Err(e)),
        })?
    }

    /// Stores `value` under `key` until `expiry` only if the key holds nothing, atomically;
    /// whether it did (a new session's id must be free).
    pub(crate) fn insert(&self, key: &[u8], value: &[u8], expiry: Expiry) -> crate::Result<bool> {
        self.update_with(key, |old| match old {
            Some(_) => (Update::Keep, false),
            None => (Update::SetWith(value.to_vec(), expiry), true),
        })
    }

    /// Stores `value` under `key` until `expiry`; whether it was stored (see [`Cache::set_with`]).
    pub(crate) fn set_with(&self, key: &[u8], value: &[u8], expiry: Expiry) -> crate::Result<bool> {
        match self {
            Tier::File(cache) => cache
                .set_with(key, value, expiry)
                .map_err(crate::Error::without_key),
            #[cfg(feature = "redis")]
            Tier::Redis { cache, redis } => {
                let set = Update::SetWith(value.to_vec(), expiry);
                redis.update_with(cache, key, |_| (set, true))
            }
        }
    }

    /// Removes the record under `key`; whether one was there.
    pub(crate) fn remove(&self, key: &[u8]) -> crate::Result<bool> {
        match self {
            Tier::File(cache) => cache.remove(key).map_err(crate::Error::without_key),
            #[cfg(feature = "redis")]
            Tier::Redis { cache, redis } => {
                redis.update_with(cache, key, |old| (Update::Remove, old.is_some()))
            }
        }
    }
}
