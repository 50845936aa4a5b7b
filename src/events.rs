//! Faults made visible: one function per kind of fault the library recovers from by itself
//! (a page reset, dirty entries lost, a failing backing store, a value or record that cannot
//! be decoded, a lock timeout, a lost Redis connection, a refused state file, a response left
//! unrewritten), called in one line where the fault is found.
//!
//! With the `tracing` feature each emits one `tracing` event (targets `fastmmap::…`, levels
//! as an operator would want them, fields naming the file, page, server or key *kind*).
//! Without it they compile to nothing but the counting. Events never carry a session id, a
//! key's or a value's bytes, or anything a client sent: keys are given by their length.
//!
//! The counters of [`Faults`] are incremented by the same functions that emit the events, so
//! `Stats` and the events always agree. Page resets and lost dirty entries keep the counters
//! they had (in the file header and in the store); their event is emitted where they count.

// Without the feature the events are empty and their arguments unused.
#![cfg_attr(not(feature = "tracing"), allow(unused_variables))]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{Error, LockRole, Stats};

/// Targets of the crate's events, for filters (`RUST_LOG=fastmmap::page=warn`).
#[cfg(feature = "tracing")]
pub(crate) mod target {
    /// Page resets (warn).
    pub(crate) const PAGE: &str = "fastmmap::page";
    /// Dirty (write-back) entries lost with a reset page (error).
    pub(crate) const WRITE_BACK: &str = "fastmmap::write_back";
    /// A backing store's call failing (error).
    pub(crate) const BACKING: &str = "fastmmap::backing";
    /// A page or write-back lock not taken in time (warn).
    pub(crate) const LOCK: &str = "fastmmap::lock";
    /// A stored value that cannot be decoded (warn).
    pub(crate) const DECODE: &str = "fastmmap::decode";
    /// A session record that cannot be read (warn), a session not saved (error).
    #[cfg(feature = "session")]
    pub(crate) const SESSION: &str = "fastmmap::session";
    /// The Redis listener: connection lost (warn), regained (info), a refused state file.
    #[cfg(feature = "redis")]
    pub(crate) const REDIS: &str = "fastmmap::redis";
    /// The web layer: a response body left unrewritten (info).
    #[cfg(feature = "axum")]
    pub(crate) const WEB: &str = "fastmmap::web";
}

/// Fault counters of one open file, in this process (reported in [`Stats`]).
#[derive(Debug, Default)]
pub(crate) struct Faults {
    backing_errors: AtomicU64,
    decode_errors: AtomicU64,
    lock_timeouts: AtomicU64,
}

impl Faults {
    /// Copies the counters into `stats`.
    pub(crate) fn report(&self, stats: &mut Stats) {
        stats.backing_errors = self.backing_errors.load(Ordering::Relaxed);
        stats.decode_errors = self.decode_errors.load(Ordering::Relaxed);
        stats.lock_timeouts = self.lock_timeouts.load(Ordering::Relaxed);
    }

    /// Zeroes the counters (`reset_stats`).
    pub(crate) fn clear(&self) {
        self.backing_errors.store(0, Ordering::Relaxed);
        self.decode_errors.store(0, Ordering::Relaxed);
        self.lock_timeouts.store(0, Ordering::Relaxed);
    }
}

/// A page of `path` was reset because it failed validation (`reason`; counted in the page's
/// reset counter by the caller): its entries are gone, `lost` of them dirty — writes that
/// never reached the backing store (counted in `Stats::dirty_lost` by the caller).
#[cold]
pub(crate) fn page_reset(path: &Path, page: u32, reason: Option<&str>, lost: u32) {
    #[cfg(feature = "tracing")]
    {
        let reason = reason.unwrap_or("an operation found its entries damaged");
        tracing::warn!(
            target: target::PAGE,
            path = %path.display(),
            page,
            reason,
            dirty_lost = lost,
            "cache page reset: it failed validation and its entries were dropped"
        );
        if lost > 0 {
            tracing::error!(
                target: target::WRITE_BACK,
                path = %path.display(),
                page,
                count = lost,
                "dirty entries lost: their page was reset before they reached the backing store"
            );
        }
    }
}

/// A backing store call failed (`error` is the [`Error::Backing`] returned to the caller).
/// Counted in `Stats::backing_errors`.
#[cold]
pub(crate) fn backing_failed(faults: &Faults, error: &Error) {
    faults.backing_errors.fetch_add(1, Ordering::Relaxed);
    #[cfg(feature = "tracing")]
    if let Error::Backing {
        path,
        op,
        key,
        source,
    } = error
    {
        tracing::error!(
            target: target::BACKING,
            path = %path.display(),
            op,
            key_len = key.as_ref().map(Vec::len),
            error = %source,
            "backing store failed"
        );
    }
}

/// A stored value did not decode (`error` is the [`Error::Decode`] returned to the caller).
/// Counted in `Stats::decode_errors`.
#[cold]
pub(crate) fn decode_failed(faults: &Faults, error: &Error) {
    faults.decode_errors.fetch_add(1, Ordering::Relaxed);
    #[cfg(feature = "tracing")]
    // The decoder's message is left out: serde's quote the value they could not read.
    if let Error::Decode { path, key, .. } = error {
        tracing::warn!(
            target: target::DECODE,
            path = %path.display(),
            key_len = key.len(),
            "stored value cannot be decoded: the caller gets Error::Decode"
        );
    }
}

/// A lock of `page` of `path` was not taken within `timeout`. Counted in
/// `Stats::lock_timeouts`.
#[cold]
pub(crate) fn lock_timeout(
    faults: &Faults,
    path: &Path,
    page: u32,
    lock: LockRole,
    timeout: Option<Duration>,
) {
    faults.lock_timeouts.fetch_add(1, Ordering::Relaxed);
    #[cfg(feature = "tracing")]
    tracing::warn!(
        target: target::LOCK,
        path = %path.display(),
        page,
        lock = %lock,
        timeout_ms = timeout.unwrap_or_default().as_millis() as u64,
        "lock timed out"
    );
}

/// A session load from `path` failed with `error`, returned as it is: if it says a stored
/// record could not be read (damaged, or of an unknown format; other errors are not this
/// fault), an event. `kind` is the record's kind (`session`, `catalyst`), never its id.
#[cfg(feature = "session")]
#[cold]
pub(crate) fn session_unreadable(
    path: &Path,
    kind: &'static str,
    error: crate::session::Error,
) -> crate::session::Error {
    #[cfg(feature = "tracing")]
    if matches!(
        error,
        crate::session::Error::BadRecord { .. } | crate::session::Error::UnsupportedVersion { .. }
    ) {
        // The message names the reason only (never the id); the decoder's own account, which
        // may quote the record, is left out.
        tracing::warn!(
            target: target::SESSION,
            path = %path.display(),
            kind,
            error = %error,
            "session record cannot be read: the request gets an error, the record is left alone"
        );
    }
    error
}

/// The web layer could not save (or load, to extend) a session of `path` after the handler
/// ran.
/// `answered` says whether the client got an error response (else its response went out
/// without a session cookie).
#[cfg(feature = "axum")]
#[cold]
pub(crate) fn session_not_saved(path: &Path, error: &crate::session::Error, answered: bool) {
    #[cfg(feature = "tracing")]
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
#[cfg(feature = "axum")]
#[cold]
pub(crate) fn rewrite_refused(path: &Path, error: &crate::session::Error) {
    #[cfg(feature = "tracing")]
    tracing::info!(
        target: target::WEB,
        path = %path.display(),
        error = %error,
        "response body not rewritten: its URLs do not carry the session id"
    );
}

/// The Redis listener of `path` is not subscribed: its connection to `server` failed or was
/// lost (`error`), and the host distrusts its file until it is back. `again` says this is one
/// more failed attempt to reconnect, reported quietly.
#[cfg(feature = "redis")]
#[cold]
pub(crate) fn redis_down(path: &Path, server: &str, error: Option<&str>, again: bool) {
    #[cfg(feature = "tracing")]
    {
        if again {
            tracing::debug!(
                target: target::REDIS,
                path = %path.display(),
                server,
                error,
                "Redis still unreachable: the cache file stays distrusted"
            );
        } else {
            tracing::warn!(
                target: target::REDIS,
                path = %path.display(),
                server,
                error,
                "Redis connection lost: the cache file is distrusted and cleared until it is back"
            );
        }
    }
}

/// The Redis listener of `path` subscribed to `server` (for the `connections`-th time): the
/// host trusts its file again.
#[cfg(feature = "redis")]
#[cold]
pub(crate) fn redis_trusted(path: &Path, server: &str, connections: u64) {
    #[cfg(feature = "tracing")]
    tracing::info!(
        target: target::REDIS,
        path = %path.display(),
        server,
        connections,
        "Redis connection established: the cache file is trusted"
    );
}

/// The Redis listener of `path` could not mark its host distrusted or clear its file
/// (`error`); it retries.
#[cfg(feature = "redis")]
#[cold]
pub(crate) fn redis_distrust_failed(path: &Path, error: Option<&str>) {
    #[cfg(feature = "tracing")]
    tracing::error!(
        target: target::REDIS,
        path = %path.display(),
        error,
        "cannot distrust or clear the cache file after losing Redis: retrying"
    );
}

/// The Redis state file `path` was not opened (`error`): the host is treated as distrusted.
/// A missing file (no listener yet) is not a fault; a refused one (another owner, a link, not
/// a regular file) is, reported at most once every ten seconds in this process.
#[cfg(feature = "redis")]
#[cold]
pub(crate) fn state_file_refused(path: &Path, error: &std::io::Error) {
    #[cfg(feature = "tracing")]
    if error.kind() != std::io::ErrorKind::NotFound && throttle(&STATE_FILE_REPORTED) {
        tracing::warn!(
            target: target::REDIS,
            path = %path.display(),
            error = %error,
            "Redis state file refused: the cache file is not trusted"
        );
    }
}

#[cfg(all(feature = "redis", feature = "tracing"))]
static STATE_FILE_REPORTED: AtomicU64 = AtomicU64::new(0);

/// Whether a fault reported through `last` (Unix seconds of its last report) may be reported
/// now: at most once every ten seconds.
#[cfg(all(feature = "redis", feature = "tracing"))]
fn throttle(last: &AtomicU64) -> bool {
    const EVERY_SECS: u64 = 10;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let seen = last.load(Ordering::Relaxed);
    (seen == 0 || now.saturating_sub(seen) >= EVERY_SECS)
        && last
            .compare_exchange(seen, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}
