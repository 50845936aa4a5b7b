//! [`RedisBacking`]: Redis as the backing store of a cache file.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::conn::Pool;
use super::options::RedisOptions;
use super::state::StateReader;
use crate::{Backing, BackingError};

/// The value of KEYS[1] and its time to live in milliseconds (-1: none), read atomically in
/// one round trip with one reply; `false` if there is no value.
const GET_WITH_TTL: &str = "local v = redis.call('GET', KEYS[1]) \
if not v then return false end \
return {v, redis.call('PTTL', KEYS[1])}";

/// Redis behind a cache file: read-through on a miss, write-through, delete. See the
/// [module docs](crate::redis) for how hosts keep each other's files fresh.
///
/// ```no_run
/// use fastmmap::Cache;
/// use fastmmap::redis::{Listener, RedisBacking, RedisOptions};
///
/// let path = "/dev/shm/myapp.cache";
/// let redis = RedisOptions::new("redis://10.0.0.5:6379/")?.namespace("myapp:");
/// let cache = Cache::builder()
///     .path(path)
///     .backing(RedisBacking::new(redis.clone(), path))
///     .open()?;
/// // Once per host, in the process that outlives the workers:
/// let listener = Listener::start(redis, &cache)?;
///
/// cache.set(b"greeting", b"hello")?; // in Redis first, then in the file
/// assert_eq!(cache.get(b"greeting")?.as_deref(), Some(&b"hello"[..]));
/// # drop(listener);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Use it with [`WriteMode::Through`](crate::WriteMode::Through) (the default): the listener
/// removes changed keys from the file whether they are dirty or not, so a write-back value
/// could be lost. An expiry given to `set` is given to Redis too (`PXAT`, the same whole
/// second the file keeps), and a read-through copy keeps the time to live the key has in
/// Redis (read in the same round trip as the value, rounded down to the second): no host
/// serves a value after Redis has expired it, whether or not Redis has sent the
/// invalidation of that expiry yet (it sends it only when it evicts the key). The calls that
/// act on the file only, with any backing store — `multi_set`, `set_if_newer`,
/// `remove_with_modseq`, `evict` — do not reach Redis: their values stay on this host (until
/// an invalidation of the key removes them); use `set`, `set_many` and `remove` for shared
/// keys.
///
/// Errors are [`RedisError`](super::RedisError)s, the `source` of
/// [`Error::Backing`](crate::Error::Backing): a `set` or `remove` while Redis is unreachable
/// fails and changes nothing in the file; a `get` that misses fails (a hit is served while
/// the host still trusts its file; the listener clears the file as soon as it loses its
/// connection).
pub struct RedisBacking {
    pool: Pool,
    state: StateReader,
}

impl std::fmt::Debug for RedisBacking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBacking")
            .field("options", &self.pool.options)
            .finish_non_exhaustive()
    }
}

impl RedisBacking {
    /// A backing store for the cache file at `cache_path` (the path given to the
    /// [`CacheBuilder`](crate::CacheBuilder)): the fences read that file's state file, which
    /// the host's [`Listener`](super::Listener) keeps.
    pub fn new(options: RedisOptions, cache_path: impl AsRef<Path>) -> RedisBacking {
        RedisBacking {
            state: StateReader::new(cache_path.as_ref()),
            pool: Pool::new(options),
        }
    }

    /// The options.
    pub fn options(&self) -> &RedisOptions {
        &self.pool.options
    }
}

impl Backing for RedisBacking {
    fn load(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackingError> {
        let rkey = self.pool.options.redis_key(key);
        Ok(self
            .pool
            .with("GET", |c| redis::cmd("GET").arg(&rkey).query(c))?)
    }

    #[allow(clippy::type_complexity)]
    fn load_with_expiry(
        &self,
        key: &[u8],
    ) -> Result<Option<(Vec<u8>, Option<SystemTime>)>, BackingError> {
        let rkey = self.pool.options.redis_key(key);
        // The time to live counts from a moment after this one: an expiry reckoned from
        // here is never later than Redis's.
        let asked = SystemTime::now();
        let found: Option<(Vec<u8>, i64)> = self.pool.with("GET", |c| {
            redis::cmd("EVAL")
                .arg(GET_WITH_TTL)
                .arg(1)
                .arg(&rkey)
                .query(c)
        })?;
        Ok(found.map(|(value, ttl_ms)| {
            let at = u64::try_from(ttl_ms)
                .ok()
                .map(|ms| asked + Duration::from_millis(ms));
            (value, at)
        }))
    }

    fn store(
        &self,
        key: &[u8],
        value: &[u8],
        expires_at: Option<SystemTime>,
    ) -> Result<(), BackingError> {
        let rkey = self.pool.options.redis_key(key);
        let mut cmd = redis::cmd("SET");
        cmd.arg(&rkey).arg(value);
        if let Some(at) = expires_at {
            let ms = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_millis().max(1));
            cmd.arg("PXAT").arg(u64::try_from(ms).unwrap_or(u64::MAX));
        }
        Ok(self.pool.with("SET", |c| cmd.query::<()>(c))?)
    }

    fn delete(&self, key: &[u8]) -> Result<(), BackingError> {
        let rkey = self.pool.options.redis_key(key);
        Ok(self
            .pool
            .with("DEL", |c| redis::cmd("DEL").arg(&rkey).query::<()>(c))?)
    }

    fn fence(&self, key: &[u8]) -> Option<u64> {
        self.state.fence(key)
    }

    fn trusts_cached(&self) -> bool {
        self.state.trusted()
    }
}
