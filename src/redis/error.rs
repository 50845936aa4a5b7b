//! The error of every Redis operation.

/// A Redis operation failed: the server is unreachable, timed out, or refused the command.
///
/// Through a cache it reaches the caller as [`Error::Backing`](crate::Error::Backing) (this is
/// its `source`); a failed write changed nothing in the cache file.
#[derive(Debug, thiserror::Error)]
#[error("redis {server}: {op} failed: {source}")]
pub struct RedisError {
    /// The server, without credentials ([`RedisOptions::server`](super::RedisOptions::server)).
    pub server: String,
    /// The command or step that failed (`GET`, `SET`, `connect`, ...).
    pub op: &'static str,
    /// The cause: the `redis` crate's error, or a message.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync + 'static>,
}
