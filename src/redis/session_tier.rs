//! Session records in Redis, the source of truth; the host's cache file is the near cache of
//! reads (feature `session`). Used by the session store's Redis tier when built with
//! `SessionStoreBuilder::redis`.
//!
//! In Redis a record is `version (8 bytes, big-endian) + record bytes`, expiring with the
//! session (`PXAT`). An update takes the record's lock in Redis (`SET lock token NX PX lease`,
//! with the read of the record in the same round trip), runs the caller's closure once on
//! what Redis holds, and commits with one script that checks the lock is still its own and
//! the version unchanged before it writes the next version (or deletes) and releases the
//! lock. An update that changes nothing (most session loads) releases the lock without
//! waiting for the reply, so it costs one round trip. The closure runs exactly once (it is an
//! `FnOnce`), so no retry loop re-runs it: the lock makes the script's check a formality
//! unless the lease lapsed, and then the update fails without writing.
//!
//! After a write the host drops its local copy; the next read on any host fetches the
//! record from Redis. A read serves the local copy only while the host trusts its file (see
//! the [module docs](super)).

use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::RedisError;
use super::conn::Pool;
use super::options::RedisOptions;
use super::state::StateReader;
use crate::{Cache, Clock, Expiry, Update, unix_secs};

/// Length of the version in front of a record in Redis.
const VERSION_SIZE: usize = 8;
/// Prefix of the lock keys (outside the namespace, so that taking a lock is no change the
/// listeners hear about).
const LOCK_PREFIX: &[u8] = b"fastmmap-lock:";

/// KEYS[1] record: its value and `PEXPIRETIME`, or `false`. One reply (a pipeline's replies
/// would each wait the whole socket timeout when Redis hangs).
const READ: &str = "local v = redis.call('GET', KEYS[1]) \
if not v then return false end \
return {v, redis.call('PEXPIRETIME', KEYS[1])}";

/// KEYS[1] record, KEYS[2] lock; ARGV[1] token, ARGV[2] lease in ms. Takes the lock if it is
/// free (`SET NX PX`) and returns {1, record, PEXPIRETIME} ({1} if there is no record), or
/// {0} if another holds the lock.
const LOCK_AND_READ: &str = "if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) \
then return {0} end \
local v = redis.call('GET', KEYS[1]) \
if not v then return {1} end \
return {1, v, redis.call('PEXPIRETIME', KEYS[1])}";

/// KEYS[1] record, KEYS[2] lock; ARGV[1] token, ARGV[2] version seen ("" if none),
/// ARGV[3] "set" / "del", ARGV[4] new value, ARGV[5] expiry in Unix ms ("" never).
/// Returns 1 when done, -1 when the lock is no longer ours, -2 when the version moved.
const COMMIT: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
local cur = redis.call('GET', KEYS[1])
local ver = ''
if cur then ver = string.sub(cur, 1, 8) end
if ver ~= ARGV[2] then
  redis.call('DEL', KEYS[2])
  return -2
end
if ARGV[3] == 'set' then
  if ARGV[5] == '' then
    redis.call('SET', KEYS[1], ARGV[4])
  else
    redis.call('SET', KEYS[1], ARGV[4], 'PXAT', ARGV[5])
  end
elseif ARGV[3] == 'del' then
  redis.call('DEL', KEYS[1])
end
redis.call('DEL', KEYS[2])
return 1
";

/// The Redis tier of a session store.
pub(crate) struct SessionTier {
    pool: Pool,
    state: StateReader,
}

/// A record as Redis holds it: its version and bytes, and when it expires (Unix ms).
struct Stored {
    version: [u8; VERSION_SIZE],
    record: Vec<u8>,
    expires_ms: Option<u64>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(1, |d| {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}

impl SessionTier {
    pub(crate) fn new(options: RedisOptions, cache_path: &Path) -> SessionTier {
        SessionTier {
            state: StateReader::new(cache_path),
            pool: Pool::new(options),
        }
    }

    fn error(&self, local: &Cache, op: &'static str, e: RedisError) -> crate::Error {
        // No key: a session's key holds its id, which no message may show.
        crate::Error::Backing {
            path: local.path().to_path_buf(),
            op,
            key: None,
            source: Box::new(e),
        }
    }

    /// Splits what Redis holds (`value`, `PEXPIRETIME`).
    fn parse(
        &self,
        value: Option<Vec<u8>>,
        pexpiretime: i64,
    ) -> Result<Option<Stored>, RedisError> {
        let Some(mut value) = value else {
            return Ok(None);
        };
        if value.len() < VERSION_SIZE {
            return Err(self.pool.options.error(
                "GET",
                "a session record in Redis is shorter than its version",
            ));
        }
        let record = value.split_off(VERSION_SIZE);
        let mut version = [0u8; VERSION_SIZE];
        version.copy_from_slice(&value);
        Ok(Some(Stored {
            version,
            record,
            expires_ms: u64::try_from(pexpiretime).ok().filter(|&ms| ms > 0),
        }))
    }

    /// The record under `key`: the local copy while the host trusts its file, else Redis's
    /// (kept locally when nothing changed meanwhile).
    pub(crate) fn get(&self, local: &Cache, key: &[u8]) -> crate::Result<Option<Vec<u8>>> {
        let fence = self.state.fence(key);
        if fence.is_some()
            && let Some(v) = local.get(key)?
        {
            return Ok(Some(v));
        }
        let rkey = self.pool.options.redis_key(key);
        let found: Option<(Vec<u8>, i64)> = self
            .pool
            .with("GET", |c| {
                redis::cmd("EVAL").arg(READ).arg(1).arg(&rkey).query(c)
            })
            .map_err(|e| self.error(local, "load", e))?;
        let (value, pexpiretime) = found.map_or((None, -1), |(v, at)| (Some(v), at));
        let stored = self
            .parse(value, pexpiretime)
            .map_err(|e| self.error(local, "load", e))?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        self.keep(local, key, &stored, fence)?;
        Ok(Some(stored.record))
    }

    /// Keeps a copy of `stored`, just read from Redis, in the file, unless the host's fence
    /// (taken before the read) moved or the host does not trust its file.
    fn keep(
        &self,
        local: &Cache,
        key: &[u8],
        stored: &Stored,
        fence: Option<u64>,
    ) -> crate::Result<()> {
        // A fence that moved during the read: no copy, rather than one stored and removed
        // again under a second lock, which may fail and leave it (see `read_through`'s check).
        if fence.is_none() || self.state.fence(key) != fence {
            return Ok(());
        }
        // The copy never outlives the record in Redis.
        let copy_expiry = |ms| Clock::copy_expiry_secs(UNIX_EPOCH + Duration::from_millis(ms));
        let expiry = match stored.expires_ms.map(copy_expiry) {
            Some(secs) if secs <= unix_secs(local.clock().now()) => return Ok(()),
            Some(secs) => Expiry::At(UNIX_EPOCH + Duration::from_secs(secs)),
            None => Expiry::Never,
        };
        if local.set_with(key, &stored.record, expiry).is_ok() && self.state.fence(key) != fence {
            local.remove(key)?;
        }
        Ok(())
    }

    /// An atomic read-modify-write of the record under `key` in Redis: `f` runs once, on
    /// Redis's record, under the record's lock, and decides the update and what to hand back.
    pub(crate) fn update_with<R>(
        &self,
        local: &Cache,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> (Update, R),
    ) -> crate::Result<R> {
        if InUpdate::inside() {
            // The closure of an update on this thread holds a session's lock in Redis: a
            // second update could wait for that lock until its lease ran out.
            return Err(crate::Error::Reentrant {
                path: local.path().to_path_buf(),
            });
        }
        let options = &self.pool.options;
        let rkey = options.redis_key(key);
        let mut lock = LOCK_PREFIX.to_vec();
        lock.extend_from_slice(&rkey);
        let token = token().map_err(|e| self.error(local, "store", options.error("lock", e)))?;
        let lease_ms = u64::try_from(options.lock_lease.as_millis()).unwrap_or(u64::MAX);
        let give_up = Instant::now() + options.lock_lease + options.timeout;
        let fence = self.state.fence(key);
        let mut pause = Duration::from_millis(1);
        let current = loop {
            let (taken, value, pexpiretime) = self
                .pool
                .with("lock", |c| {
                    let reply: Vec<redis::Value> = redis::cmd("EVAL")
                        .arg(LOCK_AND_READ)
                        .arg(2)
                        .arg(&rkey)
                        .arg(&lock)
                        .arg(&token)
                        .arg(lease_ms)
                        .query(c)?;
                    let mut reply = reply.into_iter();
                    let taken: i64 =
                        redis::from_redis_value(reply.next().unwrap_or(redis::Value::Nil))?;
                    let value: Option<Vec<u8>> =
                        reply.next().map(redis::from_redis_value).transpose()?;
                    let at: Option<i64> = reply.next().map(redis::from_redis_value).transpose()?;
                    Ok((taken, value, at.unwrap_or(-1)))
                })
                // This round trip reads the record: a failure is a failed load (nothing
                // was written).
                .map_err(|e| self.error(local, "load", e))?;
            if taken == 1 {
                break self
                    .parse(value, pexpiretime)
                    .map_err(|e| self.error(local, "load", e));
            }
            if Instant::now() > give_up {
                return Err(self.error(
                    local,
                    "load",
                    options.error("lock", "another host held the session's lock too long"),
                ));
            }
            sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        };
        let current = match current {
            Ok(c) => c,
            Err(e) => {
                self.release(&lock, &token);
                return Err(e);
            }
        };
        let (decision, r) = {
            let _inside = InUpdate::enter();
            f(current.as_ref().map(|s| s.record.as_slice()))
        };
        // What to write: the new record (with the next version) and its expiry, or a delete.
        let (value, expires) = match decision {
            Update::Keep => {
                // Nothing to write: release the lock without waiting for the reply (a read
                // costs one round trip). Should the release be lost, the lock lapses.
                let _ = self.pool.send("unlock", &release(&lock, &token));
                if let Some(stored) = &current {
                    // A fresh copy for the next read on this host (a save's first round).
                    self.keep(local, key, stored, fence)?;
                }
                return Ok(r);
            }
            Update::Remove => (None, None),
            Update::Set(v) => (Some(v), None),
            Update::SetWith(v, e) => {
                let at = match e {
                    Expiry::At(t) => Some(unix_ms(t)),
                    Expiry::After(d) => Some(unix_ms(SystemTime::now() + d)),
                    Expiry::Default | Expiry::Never => None,
                };
                (Some(v), at)
            }
        };
        let seen: Vec<u8> = current.as_ref().map_or(Vec::new(), |s| s.version.to_vec());
        let next_version = current
            .as_ref()
            .map_or(1, |s| u64::from_be_bytes(s.version).wrapping_add(1));
        let (op, blob) = match &value {
            Some(v) => {
                let mut blob = next_version.to_be_bytes().to_vec();
                blob.extend_from_slice(v);
                ("set", blob)
            }
            None => ("del", Vec::new()),
        };
        let expires = expires.map_or_else(String::new, |ms| ms.to_string());
        let done: i64 = self
            .pool
            .with("EVAL", |c| {
                redis::cmd("EVAL")
                    .arg(COMMIT)
                    .arg(2)
                    .arg(&rkey)
                    .arg(&lock)
                    .arg(&token)
                    .arg(&seen)
                    .arg(op)
                    .arg(&blob)
                    .arg(&expires)
                    .query(c)
            })
            .map_err(|e| self.error(local, "store", e))?;
        match done {
            1 => {}
            -1 => {
                return Err(self.error(
                    local,
                    "store",
                    options.error("commit", "the session's lock lapsed before the write"),
                ));
            }
            _ => {
                return Err(self.error(
                    local,
                    "store",
                    options.error("commit", "the session changed under an expired lock"),
                ));
            }
        }
        local.remove(key)?;
        Ok(r)
    }

    /// Releases `lock` if it is still ours (best effort: it lapses anyway).
    fn release(&self, lock: &[u8], token: &str) {
        let _ = self.pool.send("unlock", &release(lock, token));
    }
}

thread_local! {
    /// Whether this thread is running the closure of an update (holding a record's lock).
    static IN_UPDATE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this thread as inside an update's closure until dropped.
struct InUpdate;

impl InUpdate {
    fn enter() -> InUpdate {
        IN_UPDATE.with(|c| c.set(true));
        InUpdate
    }

    fn inside() -> bool {
        IN_UPDATE.with(std::cell::Cell::get)
    }
}

impl Drop for InUpdate {
    fn drop(&mut self) {
        IN_UPDATE.with(|c| c.set(false));
    }
}

/// The command that deletes `lock` if it still holds `token`.
fn release(lock: &[u8], token: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 1",
    )
    .arg(1)
    .arg(lock)
    .arg(token);
    cmd
}

/// A lock token: 128 random bits, hex.
fn token() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
