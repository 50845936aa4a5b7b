//! [`RedisOptions`]: where Redis is and how the keys are named there.

use std::time::Duration;

use super::RedisError;

/// Where the Redis server is, the namespace of this application's keys in it, and timeouts.
/// Cloning is cheap; give the same options to the backing (or the session store) and to the
/// listener of each host.
#[derive(Clone)]
pub struct RedisOptions {
    /// The server without credentials (`host:port/db`), for messages.
    pub(crate) server: String,
    pub(crate) client: redis::Client,
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
        let info = client.get_connection_info();
        Ok(RedisOptions {
            server: format!("{}/{}", info.addr(), info.redis_settings().db()),
            client,
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

    /// How long connecting and each command may take before it fails (default one second).
    /// A write that times out fails: whether it reached Redis is then unknown.
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
