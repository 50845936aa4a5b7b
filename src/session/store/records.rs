//! Where session records are kept: every read and write of a stored record goes through
//! [`Records`], so the rest of the store does not care what holds them.
//!
//! Today that is one [`Cache`]; a second tier (a server shared by several hosts) plugs in
//! here without touching how sessions are loaded, saved or moved.

use std::time::SystemTime;

use crate::{Cache, Expiry, Result, Update};

/// The stored records of a [`SessionStore`](super::SessionStore): get, atomic
/// read-modify-write, remove.
pub(crate) struct Records {
    cache: Cache,
}

impl Records {
    pub(crate) fn new(cache: Cache) -> Records {
        Records { cache }
    }

    /// The local cache file.
    pub(crate) fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Now, by the cache's clock.
    pub(crate) fn now(&self) -> SystemTime {
        self.cache.clock().now()
    }

    /// The record under `key`, if any.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.cache.get(key)
    }

    /// An atomic read-modify-write of the record under `key` (see [`Cache::update`]).
    pub(crate) fn update(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> Update,
    ) -> Result<Option<Vec<u8>>> {
        self.cache.update(key, f)
    }

    /// Stores `value` under `key` until `expiry`; whether it was stored (see [`Cache::set_with`]).
    pub(crate) fn set_with(&self, key: &[u8], value: &[u8], expiry: Expiry) -> Result<bool> {
        self.cache.set_with(key, value, expiry)
    }

    /// Removes the record under `key`; whether one was there.
    pub(crate) fn remove(&self, key: &[u8]) -> Result<bool> {
        self.cache.remove(key)
    }
}
