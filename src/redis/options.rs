//! [`RedisOptions`]: where Redis is and how the keys are named there.

use std::time::{Duration, Instant};

use super::RedisError;
use super::error::TimedOut;

/// Where the Redis server is, the namespace of this application's keys in it, and timeouts.
/// Cloning is cheap; give the same options to the backing (or the session store) and to the
/// listener of each host.
#[derive(Clone)]
pub struct RedisOptions {
    /// The server without credentials (`host:port/db`), for messages.
    pub(crate) server: String,
    /// The client, with database 0 and no `CLIENT SETINFO`: connecting sends at most one
    /// command (`AUTH`, or `HELLO` for RESP3), so that the redis crate's setup, whose every
    /// reply waits the whole socket timeout, cannot wait twice.
    pub(crate) client: redis::Client,
    /// The database, selected by [`connect`](super::conn::connect) within the deadline.
    pub(crate) db: i64,
    pub(crate) namespace: Vec<u8>,
    pub(crate) timeout: Duration,
    pub(crate) lock_lease: Duration,
}

/// The default namespace: every key is stored in Redis under this prefix.
pub const DEFAULT_NAMESPACE: &str = "fastmmap:";

impl RedisOptions {
    /// A server, as a `redis://host:port/db` URL (or `redis+unix:///path`). Nothing is
    /// connected yet: connections are opened when first used, in each process.
    ///
    /// # Errors
    /// [`RedisError`] if the URL cannot be parsed.
    pub fn new(url: &str) -> Result<RedisOptions, RedisError> {
        let client = redis::Client::open(url).map_err(|e| RedisError {
            // The URL may hold a password: not in messages.
            server: "(unparsable URL)".to_owned(),
            op: "parse URL",
            source: Box::new(e),
        })?;
        let info = client.get_connection_info().clone();
        let db = info.redis_settings().db();
        let settings = info
            .redis_settings()
            .clone()
            .set_db(0)
            .set_skip_set_lib_name();
        let server = format!("{}/{db}", info.addr());
        let client =
            redis::Client::open(info.set_redis_settings(settings)).map_err(|e| RedisError {
                server: server.clone(),
                op: "parse URL",
                source: Box::new(e),
            })?;
        Ok(RedisOptions {
            server,
            client,
            db,
            namespace: DEFAULT_NAMESPACE.as_bytes().to_vec(),
            timeout: Duration::from_secs(1),
            lock_lease: Duration::from_secs(10),
        })
    }

    /// The prefix of this application's keys in Redis (default [`DEFAULT_NAMESPACE`]): a cache
    /// key `k` is the Redis key `namespace + k`, and the listener tracks exactly this prefix.
    /// Give each cache file sharing one server its own namespace, none a prefix of another.
    pub fn namespace(mut self, namespace: &str) -> RedisOptions {
        self.namespace = namespace.as_bytes().to_vec();
        self
    }

    /// How long one round trip to Redis may take before it fails (default one second): a
    /// cache `get` that has to connect first fails once connecting and the command together
    /// took this long, with an error that says it timed out
    /// ([`RedisError::is_timeout`]). A session update makes two round trips (lock and read,
    /// then commit), each with this timeout. A write that times out fails: whether it
    /// reached Redis is then unknown.
    pub fn timeout(mut self, d: Duration) -> RedisOptions {
        self.timeout = d.max(Duration::from_millis(1));
        self
    }

    /// Sessions: how long one host may hold a session's lock in Redis for an atomic update
    /// before it lapses (default ten seconds; a host that dies holding it blocks that
    /// session's writers this long). An update whose lock lapsed fails instead of writing.
    pub fn lock_lease(mut self, d: Duration) -> RedisOptions {
        self.lock_lease = d.max(Duration::from_millis(10));
        self
    }

    /// The server, without credentials: `host:port/db` (or `path/db` for a Unix socket).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The Redis key of the cache key `key`.
    pub(crate) fn redis_key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.namespace.len() + key.len());
        k.extend_from_slice(&self.namespace);
        k.extend_from_slice(key);
        k
    }

    /// A deadline of one round trip starting now.
    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// The time left before `deadline`, or a timeout error of `op`.
    pub(crate) fn remaining(
        &self,
        op: &'static str,
        deadline: Instant,
    ) -> Result<Duration, RedisError> {
        match deadline.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Ok(left),
            _ => Err(self.timed_out(op)),
        }
    }

    /// The error of `op` when the server did not answer within the timeout.
    pub(crate) fn timed_out(&self, op: &'static str) -> RedisError {
        self.error(
            op,
            TimedOut {
                timeout: self.timeout,
            },
        )
    }

    /// The error of `op` for a failure of the redis crate: a timeout (which the crate
    /// reports as the socket's "would block") says so.
    pub(crate) fn failed(&self, op: &'static str, e: redis::RedisError) -> RedisError {
        if e.is_timeout() {
            self.timed_out(op)
        } else {
            self.error(op, e)
        }
    }

    /// An error of `op` on this server.
    pub(crate) fn error(
        &self,
        op: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> RedisError {
        RedisError {
            server: self.server.clone(),
            op,
            source: source.into(),
        }
    }
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("server", &self.server)
            .field("namespace", &String::from_utf8_lossy(&self.namespace))
            .field("timeout", &self.timeout)
            .field("lock_lease", &self.lock_lease)
            .finish_non_exhaustive()
    }
}
