//! The `Backing` trait and the per-handle settings that put a store behind a cache.

use std::time::SystemTime;

/// The error a [`Backing`] returns; it reaches the caller as
/// [`Error::Backing`](crate::Error::Backing), as its `source`.
pub type BackingError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A store behind the cache: a database, a file, another cache tier. Given to
/// [`CacheBuilder::backing`](crate::CacheBuilder::backing).
///
/// - **Read-through**: a `get` that misses calls [`load`](Self::load) and caches what it
///   returns (with [`cache_not_found`](crate::CacheBuilder::cache_not_found), a key the store
///   does not have is cached as absent too, so the store is asked once).
/// - **Writes**: with [`WriteMode::Through`] a `set` calls [`store`](Self::store) before it
///   changes the cache; with [`WriteMode::Back`] it marks the entry dirty, and whichever
///   process later drops the entry (evicts it, purges it once expired, clears the cache)
///   writes it back first; [`Cache::flush`](crate::Cache::flush) writes back every dirty
///   entry. `remove` calls [`delete`](Self::delete).
///
/// The cache never calls the store while it holds a page lock, so a store may use the cache
/// itself, and a slow store does not hold up readers. Every call may happen in any process
/// that shares the cache file, from any thread: a store opened in a parent is used by its
/// forked children, so it must open its connections lazily in each process (after the fork),
/// not share one across a fork.
///
/// Calls for keys of one cache page are ordered. An operation that writes to the store (or
/// copies dirty entries out to write them back, or loads a value to cache it) holds the
/// page's *write-back lock* — one per page, shared by every process — from before it changes
/// the page until the store has returned. So writes of one key reach the store in the order
/// they were made in the cache, an older value never lands after a newer one, and a value
/// loaded is never cached after a newer one was written. Hits take no write-back lock, and a
/// miss never waits for one: if another thread or process holds it (perhaps inside a slow
/// call of this store), the reader calls [`load`](Self::load) itself and caches nothing. (It
/// waits, up to the `lock_timeout`, only when the key's expired entry is dirty and must be
/// written back first.) The exception is what a callback does with its own cache: it cannot
/// wait for the lock its caller holds, so those operations are not ordered against other
/// writers.
///
/// With robust page locks the write-back locks are robust mutexes in the file, which a user
/// who may only read the file cannot take; with fcntl locks (every file shared with Perl)
/// they are fcntl locks past the end of the file, which anyone who may read it can hold, and
/// so block writers until their [`lock_timeout`](crate::CacheBuilder::lock_timeout) (as with
/// Perl's Cache::FastMmap).
pub trait Backing: Send + Sync + 'static {
    /// The value stored under `key`, or `None` if the store has none.
    ///
    /// # Errors
    /// Any failure of the store; the cache's call fails with `Error::Backing`.
    fn load(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackingError>;

    /// [`load`](Self::load), with when the store itself will expire the value, for stores
    /// whose values expire (as Redis's do). The copy a read-through keeps in the cache then
    /// expires at the last whole second at least 50 ms before that instant (the file counts
    /// in seconds, by a clock that may lag a few milliseconds), and no later than the
    /// cache's own [`expire_after`](crate::CacheBuilder::expire_after): it is never served
    /// after the store has dropped the value. A value whose expiry is closer than that is
    /// returned but not kept.
    ///
    /// The default calls `load` and gives no expiry: the copy gets the cache's default.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    // The pair is spelled out so that implementors need no new name to write it.
    #[allow(clippy::type_complexity)]
    fn load_with_expiry(
        &self,
        key: &[u8],
    ) -> Result<Option<(Vec<u8>, Option<SystemTime>)>, BackingError> {
        Ok(self.load(key)?.map(|v| (v, None)))
    }

    /// Stores `value` under `key`. `expires_at` is when the cache entry expires (or expired:
    /// a write-back of an expired entry says so), for stores that care; Perl's `write_cb` gets
    /// the same.
    ///
    /// # Errors
    /// Any failure of the store; the cache's call fails with `Error::Backing`, and a dirty
    /// entry that could not be written back stays in the cache, still dirty.
    fn store(
        &self,
        key: &[u8],
        value: &[u8],
        expires_at: Option<SystemTime>,
    ) -> Result<(), BackingError>;

    /// Deletes `key` from the store (absent already is not an error).
    ///
    /// # Errors
    /// Any failure of the store; the cache's call fails with `Error::Backing`.
    fn delete(&self, key: &[u8]) -> Result<(), BackingError>;

    /// A fence for caching `key` from this store, for stores shared with other hosts that
    /// tell each host when a key changed (as the Redis backing does). The cache takes a fence
    /// before it loads `key` or writes it through, and another after it has put the value in
    /// its file; unless both are `Some` and equal, it drops the value from its file again
    /// (the store keeps it), since the key may have changed elsewhere in between and the
    /// news of it may already have been handled. A read-through also takes one right after
    /// the load, and stores nothing if the fence moved already. `None` means "do not keep
    /// local copies now". Only write-through and read-through values are fenced, never dirty
    /// ones. Called with no lock held; keep it cheap.
    ///
    /// The default is `Some(0)`: every value is kept.
    fn fence(&self, key: &[u8]) -> Option<u64> {
        let _ = key;
        Some(0)
    }

    /// Whether a `get` may be served from the cache file now. A store shared with other
    /// hosts answers `false` while it cannot learn of changes made elsewhere (the Redis
    /// backing: while its host's listener is disconnected or gone); a `get` then drops the
    /// local copy and reads the store instead. Called on every `get` hit of a cache with a
    /// backing store, so it must be cheap.
    ///
    /// The default is `true`.
    fn trusts_cached(&self) -> bool {
        true
    }
}

/// When a `set` reaches the [`Backing`] store (Cache::FastMmap's `write_action`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WriteMode {
    /// Every `set` stores in the backing store first, then in the cache; if the store fails,
    /// the cache keeps what it had (Perl's `write_through`, the default). If the store takes
    /// the value and the cache then cannot (its overflow area full of other handles' dirty
    /// values, a concurrent resize to smaller pages, a damaged page), the `set` returns that
    /// error and the cache drops its clean copy of the key, which the store no longer holds:
    /// the next `get` reads the new value through. (After a lock error the copy is left, so
    /// that the caller waits no longer than its lock timeout.)
    #[default]
    Through,
    /// A `set` only marks the cache entry dirty; it is written to the store when an entry is
    /// dropped from the cache, or by [`Cache::flush`](crate::Cache::flush) (Perl's
    /// `write_back`).
    Back,
}
