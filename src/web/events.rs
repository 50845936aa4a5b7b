//! The web layer's faults, in the manner of the core's (`events.rs`): a session not saved, a
//! response left unrewritten. Events never carry a session id.

use std::path::Path;

/// The targets of the web layer's events, for filters.
mod target {
    /// A session not saved (error) or not loaded to be extended (warn).
    pub(super) const SESSION: &str = "fastmmap::session";
    /// A response body left unrewritten (info).
    pub(super) const WEB: &str = "fastmmap::web";
}

/// The web layer could not save (or load, to extend) a session of `path` after the handler
/// ran.
/// `answered` says whether the client got an error response (else its response went out
/// without a session cookie).
#[cold]
pub(crate) fn session_not_saved(path: &Path, error: &crate::session::Error, answered: bool) {
    if answered {
        tracing::error!(
            target: target::SESSION,
            path = %path.display(),
            error = %error,
            "session not saved: the request was answered 500"
        );
    } else {
        tracing::warn!(
            target: target::SESSION,
            path = %path.display(),
            error = %error,
            "session not loaded to be extended: the response went out without a cookie"
        );
    }
}

/// The web layer left a response body unrewritten (session ids not added to its URLs), for
/// sessions kept in `path`: `error` says why.
#[cold]
pub(crate) fn rewrite_refused(path: &Path, error: &crate::session::Error) {
    tracing::info!(
        target: target::WEB,
        path = %path.display(),
        error = %error,
        "response body not rewritten: its URLs do not carry the session id"
    );
}
