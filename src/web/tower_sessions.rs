//! [`FastMmapStore`]: a `tower_sessions::SessionStore` over a [`Cache`], so that
//! tower-sessions (and axum-login) keep sessions in one file shared by forked workers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{self, ExpiredDeletion, SessionStore};

use crate::{Cache, Expiry, Update};

/// The default key prefix of tower-sessions records in the cache.
pub const DEFAULT_PREFIX: &str = "tower-sessions:";
/// New ids tried by `create` when an id is taken (as `MemoryStore` does, but bounded).
const ID_ATTEMPTS: usize = 8;

/// A [`tower_sessions::SessionStore`](SessionStore) that keeps each session record in a
/// [`Cache`]: every worker process that opens (or inherits) the file sees the same sessions,
/// with no server to run.
///
/// A record is stored as JSON under `prefix + id`, with the cache entry expiring at the
/// record's `expiry_date` (rounded up to the second): the cache reclaims it, and a load
/// after that instant finds nothing. `create` never overwrites: an id already in use is
/// replaced by a fresh random one (as tower-sessions asks of stores). Each operation is one
/// short cache call (see [`web`](crate::web) on async code and page locks); over a cache
/// with a backing store (Redis behind it, where a call waits for a round trip, or for
/// [`RedisOptions::timeout`](crate::redis::RedisOptions::timeout) when Redis hangs), each
/// runs on tokio's blocking pool instead, so that it holds up only its own request. A record larger
/// than the cache's `max_value_size` is an error from `save`/`create`
/// ([`Error::ValueTooLarge`](crate::Error::ValueTooLarge); on a cache without an overflow
/// area, one that does not fit a page is [`Error::TooLarge`](crate::Error::TooLarge)).
///
/// ```no_run
/// use fastmmap::Cache;
/// use fastmmap::web::FastMmapStore;
/// use tower_sessions::SessionManagerLayer;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = Cache::builder()
///     .path("/run/user/1000/sessions.cache")
///     .permissions(0o600)
///     .open()?;
/// let layer = SessionManagerLayer::new(FastMmapStore::new(cache));
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct FastMmapStore {
    cache: Cache,
    prefix: String,
}

fn backend(e: crate::Error) -> session_store::Error {
    // No key: a record's key holds its session id, which tower-sessions logs with the error.
    session_store::Error::Backend(e.without_key().to_string())
}

/// `t` as a `SystemTime` (1970 for earlier instants), rounded up to the whole second so that
/// the cache never expires an entry before the record does.
fn to_system_time(t: OffsetDateTime) -> SystemTime {
    let secs = t.unix_timestamp() + i64::from(t.nanosecond() > 0);
    u64::try_from(secs).map_or(UNIX_EPOCH, |s| UNIX_EPOCH + Duration::from_secs(s))
}

impl FastMmapStore {
    /// A store in `cache`, with keys under [`TOWER_SESSIONS_PREFIX`](crate::web::TOWER_SESSIONS_PREFIX).
    pub fn new(cache: Cache) -> FastMmapStore {
        FastMmapStore {
            cache,
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }

    /// Keys start with `prefix` (so that one cache can hold sessions and other entries).
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_owned();
        self
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The cache key of a session.
    pub fn key(&self, id: &Id) -> Vec<u8> {
        format!("{}{id}", self.prefix).into_bytes()
    }

    fn now(&self) -> OffsetDateTime {
        let since = self
            .cache
            .clock()
            .now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        OffsetDateTime::UNIX_EPOCH + since
    }

    fn encode(record: &Record) -> session_store::Result<Vec<u8>> {
        serde_json::to_vec(record).map_err(|e| session_store::Error::Encode(e.to_string()))
    }
}

impl FastMmapStore {
    /// Runs `f` on a clone of this store: on tokio's blocking pool if the cache has a backing
    /// store (Redis behind it: a call may wait for the network), else right here (a page
    /// lock for microseconds).
    async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&FastMmapStore) -> R + Send + 'static,
    ) -> R {
        if !self.cache.has_backing() {
            return f(self);
        }
        let store = self.clone();
        super::blocking::blocking(move || f(&store)).await
    }

    fn create_now(&self, record: &mut Record) -> session_store::Result<()> {
        let expiry = Expiry::At(to_system_time(record.expiry_date));
        for _ in 0..ID_ATTEMPTS {
            // The record holds its id: encode it with the id it is stored under.
            let bytes = Self::encode(record)?;
            let taken = self
                .cache
                .update_with(&self.key(&record.id), |old| match old {
                    Some(_) => (Update::Keep, true),
                    None => (Update::SetWith(bytes, expiry), false),
                })
                .map_err(backend)?;
            if !taken {
                return Ok(());
            }
            record.id = Id::default();
        }
        Err(session_store::Error::Backend(
            "every new session id tried was taken".to_owned(),
        ))
    }

    fn save_now(&self, record: &Record) -> session_store::Result<()> {
        let key = self.key(&record.id);
        if record.expiry_date <= self.now() {
            self.cache.remove(&key).map_err(backend)?;
            return Ok(());
        }
        let bytes = Self::encode(record)?;
        let stored = self
            .cache
            .set_with(&key, &bytes, Expiry::At(to_system_time(record.expiry_date)))
            .map_err(backend)?;
        if stored {
            Ok(())
        } else {
            // Only a tombstone left by a conditional remove refuses a plain store.
            Err(session_store::Error::Backend(
                "the cache refused the session record (a tombstone holds its key)".to_owned(),
            ))
        }
    }

    fn load_now(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let Some(bytes) = self.cache.get(&self.key(id)).map_err(backend)? else {
            return Ok(None);
        };
        let record: Record = serde_json::from_slice(&bytes)
            .map_err(|e| session_store::Error::Decode(e.to_string()))?;
        // The key names the record; a record claiming another id is not this session.
        if record.id != *id || record.expiry_date <= self.now() {
            return Ok(None);
        }
        Ok(Some(record))
    }
}

#[async_trait]
impl SessionStore for FastMmapStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let mut owned = record.clone();
        let (result, owned) = self.run(move |s| (s.create_now(&mut owned), owned)).await;
        // `create` may have moved the record to a fresh id.
        *record = owned;
        result
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let record = record.clone();
        self.run(move |s| s.save_now(&record)).await
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let id = *id;
        self.run(move |s| s.load_now(&id)).await
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        let key = self.key(id);
        self.run(move |s| s.cache.remove(&key).map(drop).map_err(backend))
            .await
    }
}

#[async_trait]
impl ExpiredDeletion for FastMmapStore {
    /// Purges expired entries from the whole cache ([`Cache::purge`]); the cache also drops
    /// them by itself when it needs the room.
    async fn delete_expired(&self) -> session_store::Result<()> {
        self.run(|s| s.cache.purge().map(drop).map_err(backend))
            .await
    }
}
