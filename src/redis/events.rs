//! The Redis tier's faults, in the manner of the core's (`events.rs`): a lost connection, a
//! regained one, a failed distrust, a refused state file.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::RedisError;

/// The target of the Redis tier's events, for filters: the listener's connection lost (warn),
/// regained (info), a refused state file (warn).
const TARGET: &str = "fastmmap::redis";

/// The Redis listener of `path` is not subscribed: its connection to `server` failed or was
/// lost (`error`), and the host distrusts its file until it is back. `again` says this is one
/// more failed attempt to reconnect, reported quietly.
#[cold]
pub(crate) fn redis_down(path: &Path, server: &str, error: Option<&RedisError>, again: bool) {
    let error = error.map(tracing::field::display);
    if again {
        tracing::debug!(
            target: TARGET,
            path = %path.display(),
            server,
            error,
            "Redis still unreachable: the cache file stays distrusted"
        );
    } else {
        tracing::warn!(
            target: TARGET,
            path = %path.display(),
            server,
            error,
            "Redis connection lost: the cache file is distrusted and cleared until it is back"
        );
    }
}

/// The Redis listener of `path` subscribed to `server` (for the `connections`-th time): the
/// host trusts its file again.
#[cold]
pub(crate) fn redis_trusted(path: &Path, server: &str, connections: u64) {
    tracing::info!(
        target: TARGET,
        path = %path.display(),
        server,
        connections,
        "Redis connection established: the cache file is trusted"
    );
}

/// The Redis listener of `path` could not mark its host distrusted or clear its file
/// (`error`); it retries.
#[cold]
pub(crate) fn redis_distrust_failed(path: &Path, error: Option<&RedisError>) {
    let error = error.map(tracing::field::display);
    tracing::error!(
        target: TARGET,
        path = %path.display(),
        error,
        "cannot distrust or clear the cache file after losing Redis: retrying"
    );
}

/// The Redis state file `path` was not opened (`error`): the host is treated as distrusted.
/// A missing file (no listener yet) is not a fault; a refused one (another owner, a link, not
/// a regular file) is, reported at most once every ten seconds in this process.
#[cold]
pub(crate) fn state_file_refused(path: &Path, error: &std::io::Error) {
    if error.kind() != std::io::ErrorKind::NotFound && throttle(&STATE_FILE_REPORTED) {
        tracing::warn!(
            target: TARGET,
            path = %path.display(),
            error = %error,
            "Redis state file refused: the cache file is not trusted"
        );
    }
}

static STATE_FILE_REPORTED: AtomicU64 = AtomicU64::new(0);

/// Whether a fault reported through `last` (Unix seconds of its last report) may be reported
/// now: at most once every ten seconds.
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
