//! Where session records are kept: every read and write of a stored record goes through
//! [`Records`], so the rest of the store does not care what holds them.
//!
//! That is one [`Cache`], or (feature `redis`, with
//! [`SessionStoreBuilder::redis`](super::SessionStoreBuilder::redis)) Redis as the source of
//! truth with the cache file as the near cache of reads: a read serves the local copy while
//! the host's listener is subscribed, else Redis's; every write is an atomic update in Redis
//! (the closure runs once, under the record's lock in Redis) after which the local copy is
//! dropped. See [`crate::redis`].

use std::time::SystemTime;

use crate::{Cache, Expiry, Result, Update};

/// The stored records of a [`SessionStore`](super::SessionStore): get, atomic
/// read-modify-write, remove.
pub(crate) struct Records {
    cache: Cache,
    #[cfg(feature = "redis")]
    redis: Option<crate::redis::session_tier::RecordTier>,
}

impl Records {
    pub(crate) fn new(cache: Cache) -> Records {
        Records {
            cache,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }

    /// Records kept in Redis, with `cache` as the near cache.
    #[cfg(feature = "redis")]
    pub(crate) fn with_redis(cache: Cache, options: crate::redis::RedisOptions) -> Records {
        let tier = crate::redis::session_tier::RecordTier::new(options, cache.path());
        Records {
            cache,
            redis: Some(tier),
        }
    }

    /// The local cache file.
    pub(crate) fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Whether a call may wait on the network: a Redis tier, or a backing store behind the
    /// cache.
    pub(crate) fn may_block(&self) -> bool {
        #[cfg(feature = "redis")]
        if self.redis.is_some() {
            return true;
        }
        self.cache.has_backing()
    }

    /// Now, by the cache's clock.
    pub(crate) fn now(&self) -> SystemTime {
        self.cache.clock().now()
    }

    /// The record under `key`, if any.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            return redis.get(&self.cache, key);
        }
        self.cache.get(key)
    }

    /// An atomic read-modify-write of the record under `key` (see [`Cache::update`]).
    pub(crate) fn update(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> Update,
    ) -> Result<Option<Vec<u8>>> {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            return redis.update(&self.cache, key, f).map(|(_, now)| now);
        }
        self.cache.update(key, f)
    }

    /// Stores `value` under `key` until `expiry` only if the key holds nothing, atomically;
    /// whether it did (a new session's id must be free).
    pub(crate) fn insert(&self, key: &[u8], value: &[u8], expiry: Expiry) -> Result<bool> {
        // `update` hands back only the value after it, which cannot tell an insert from a
        // record already holding the same bytes: the decision leaves through `free`.
        let mut free = false;
        self.update(key, |old| {
            if old.is_some() {
                return Update::Keep;
            }
            free = true;
            Update::SetWith(value.to_vec(), expiry)
        })?;
        Ok(free)
    }

    /// Stores `value` under `key` until `expiry`; whether it was stored (see [`Cache::set_with`]).
    pub(crate) fn set_with(&self, key: &[u8], value: &[u8], expiry: Expiry) -> Result<bool> {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            let set = Update::SetWith(value.to_vec(), expiry);
            return redis.update(&self.cache, key, |_| set).map(|_| true);
        }
        self.cache.set_with(key, value, expiry)
    }

    /// Removes the record under `key`; whether one was there.
    pub(crate) fn remove(&self, key: &[u8]) -> Result<bool> {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            return redis
                .update(&self.cache, key, |_| Update::Remove)
                .map(|(was_there, _)| was_there);
        }
        self.cache.remove(key)
    }
}
