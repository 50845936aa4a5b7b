//! The error of every Redis operation.

use std::time::Duration;

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

impl RedisError {
    /// Whether the operation failed because the server did not answer within
    /// [`RedisOptions::timeout`](super::RedisOptions::timeout) (connecting included).
    pub fn is_timeout(&self) -> bool {
        self.source.downcast_ref::<TimedOut>().is_some()
    }
}

/// The cause of a [`RedisError`] when the server did not answer in time: the operation's
/// whole deadline (connecting, sending, the reply) ran out.
#[derive(Debug, thiserror::Error)]
#[error("timed out: no answer within the {timeout:?} timeout")]
pub(crate) struct TimedOut {
    pub(crate) timeout: Duration,
}
