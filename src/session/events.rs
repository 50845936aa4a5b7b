//! The session layer's faults, in the manner of the core's (`events.rs`): a stored record
//! that cannot be read. Events never carry a session id.

// Without the feature the events are empty and their arguments unused.
#![cfg_attr(not(feature = "tracing"), allow(unused_variables))]

use std::path::Path;

/// The target of the session layer's events, for filters.
#[cfg(feature = "tracing")]
pub(crate) const TARGET: &str = "fastmmap::session";

/// A session load from `path` failed with `error`, returned as it is: if it says a stored
/// record could not be read (damaged, or of an unknown format; other errors are not this
/// fault), an event. `kind` is the record's kind (`session`, `catalyst`), never its id.
#[cold]
pub(crate) fn session_unreadable(
    path: &Path,
    kind: &'static str,
    error: super::Error,
) -> super::Error {
    #[cfg(feature = "tracing")]
    if matches!(
        error,
        super::Error::BadRecord { .. } | super::Error::UnsupportedVersion { .. }
    ) {
        // The message names the reason only (never the id); the decoder's own account, which
        // may quote the record, is left out.
        tracing::warn!(
            target: TARGET,
            path = %path.display(),
            kind,
            error = %error,
            "session record cannot be read: the request gets an error, the record is left alone"
        );
    }
    error
}
