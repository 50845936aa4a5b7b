//! The session module's error type.

use crate::session::id::InvalidId;

/// Everything that can go wrong in [`session`](crate::session).
///
/// A session that is missing, expired or bound to another client is not an error: loading
/// gives a fresh session and says why (see [`NewReason`](crate::session::NewReason)).
/// Messages never contain a session id or anything else the client sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The cache underneath failed (see [`fastmmap::Error`](crate::Error)). A record too large
    /// for the cache is [`crate::Error::ValueTooLarge`] (larger than its overflow area's
    /// `max_value_size`) or, on a cache without an area, [`crate::Error::TooLarge`]; either
    /// way nothing was changed.
    #[error("session cache: {0}")]
    Cache(#[from] crate::Error),

    /// The operating system's random number generator could not produce an id.
    #[error("cannot generate a session id: the system's random number generator failed: {0}")]
    Random(#[source] getrandom::Error),

    /// [`SessionStore::change_id`](crate::session::SessionStore::change_id) found the
    /// session changed by other requests every time it was about to delete the old id (a
    /// handful of times in a row). Nothing changed: the session keeps its old id; try again.
    #[error("the session kept changing while its id was being changed; it keeps its old id")]
    Contended,

    /// Every freshly generated id was already in use: the random number generator is not
    /// random. Nothing was written.
    #[error(
        "generated session ids keep colliding with stored sessions: the random number generator is broken"
    )]
    IdCollision,

    /// A value given to [`Session::insert`](crate::session::Session::insert) or
    /// [`Session::flash`](crate::session::Session::flash) cannot be serialised to JSON (for
    /// example a map with non-string keys). The session is unchanged.
    #[error("session value {key:?} cannot be serialised: {source}")]
    Serialize {
        /// The session key.
        key: String,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },

    /// A stored value does not deserialise as the type asked for. The value stays stored.
    #[error("session value {key:?} does not deserialise as the requested type: {source}")]
    Deserialize {
        /// The session key.
        key: String,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },

    /// The cache holds a value under a session's key that is not a readable session record
    /// (damaged, or written by something else). It was left as it was.
    #[error("stored session record is unreadable: {reason}")]
    BadRecord {
        /// What is wrong with it.
        reason: &'static str,
        /// The decoder's own account, where one decoder read it (Perl's Storable, in
        /// Catalyst mode: where in the image, and what).
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },

    /// The stored record was written in a record format this version does not know (for
    /// example by a newer release sharing the cache file). It was left as it was.
    #[error("stored session record has format version {found}; this version reads {supported}")]
    UnsupportedVersion {
        /// The version found in the record.
        found: u16,
        /// The version this crate reads and writes.
        supported: u16,
    },

    /// The options given to a builder are unusable.
    #[error("invalid session options: {reason}")]
    InvalidOptions {
        /// Why.
        reason: String,
    },

    /// A URL given to the URL helpers cannot be parsed or cannot carry a session id.
    #[error("invalid URL: {reason}")]
    InvalidUrl {
        /// Why.
        reason: String,
    },

    /// A session id given by the application (not by a client) is not well formed.
    #[error("invalid session id: {0}")]
    InvalidId(#[from] InvalidId),

    /// [`Session::get_flash`](crate::session::Session::get_flash) was called on a session
    /// loaded lazily whose stored flash values have not been taken yet: use
    /// [`Visit::get_flash`](crate::session::Visit::get_flash) or
    /// [`SessionStore::take_flash`](crate::session::SessionStore::take_flash).
    #[error("the session's flash values have not been taken from the store yet")]
    FlashNotTaken,

    /// A failed load of a request's session, kept and shared by every call of that request
    /// that needs the session: with a store whose calls may wait on the network, the web
    /// layer's [`SessionHandle`](crate::web::SessionHandle) tries the load once per request.
    /// It reads as the failure itself (its message and its `source`).
    #[error(transparent)]
    LoadFailed(std::sync::Arc<Error>),

    /// An HTML body could not be rewritten (for instance a single tag larger than the
    /// rewriter's memory limit). The body was left as it was.
    #[error("HTML body not rewritten: {reason}")]
    Html {
        /// What the HTML rewriter reported.
        reason: String,
    },
}

/// `Result` with the session module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_send_sync_static() {
        fn assert_bounds<T: Send + Sync + 'static + std::error::Error>() {}
        assert_bounds::<Error>();
    }

    #[test]
    fn wraps_cache_errors_with_their_source() {
        let inner = crate::Error::Reentrant {
            path: "/tmp/s.cache".into(),
        };
        let e = Error::from(inner);
        assert!(e.to_string().contains("/tmp/s.cache"), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }
}
