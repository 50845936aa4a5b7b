//! The Redis tier's faults, in the manner of the core's (`events.rs`): a lost connection, a
//! regained one, a failed distrust, a refused state file.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, TryLockError};
use std::time::SystemTime;

use super::RedisError;
use crate::unix_secs;

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
/// a regular file) is, reported at most once every ten seconds per file in this process.
#[cold]
pub(crate) fn state_file_refused(path: &Path, error: &std::io::Error) {
    if error.kind() != std::io::ErrorKind::NotFound && throttle(path) {
        tracing::warn!(
            target: TARGET,
            path = %path.display(),
            error = %error,
            "Redis state file refused: the cache file is not trusted"
        );
    }
}

/// How often one state file's refusal is reported, at most.
const REPORT_EVERY_SECS: u64 = 10;
/// How many state files' last reports are remembered; past that the oldest is forgotten (and
/// that file may be reported again early).
const REPORTED_FILES: usize = 64;

/// The state files whose refusal was reported, with when (Unix seconds).
static REPORTED: Mutex<Vec<(PathBuf, u64)>> = Mutex::new(Vec::new());

/// Whether a refusal of the state file `path` may be reported now: not within
/// [`REPORT_EVERY_SECS`] of its last report.
fn throttle(path: &Path) -> bool {
    let now = unix_secs(SystemTime::now());
    // Never waited for: a fork may have copied the lock held. Unsure, report.
    let mut reported = match REPORTED.try_lock() {
        Ok(reported) => reported,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return true,
    };
    if let Some((_, last)) = reported.iter_mut().find(|(p, _)| p == path) {
        if now.saturating_sub(*last) < REPORT_EVERY_SECS {
            return false;
        }
        *last = now;
        return true;
    }
    if reported.len() >= REPORTED_FILES
        && let Some(oldest) = (0..reported.len()).min_by_key(|&i| reported[i].1)
    {
        reported.swap_remove(oldest);
    }
    reported.push((path.to_path_buf(), now));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_file_is_throttled_on_its_own_and_memory_is_bounded() {
        let dir = Path::new("/nonexistent/fastmmap-throttle-test");
        let a = dir.join("a.redis");
        let b = dir.join("b.redis");
        assert!(throttle(&a), "the first refusal of a file is reported");
        assert!(!throttle(&a), "again within the period: not reported");
        assert!(throttle(&b), "another file is reported on its own");
        for i in 0..REPORTED_FILES * 2 {
            throttle(&dir.join(format!("{i}.redis")));
        }
        let held = REPORTED.lock().unwrap_or_else(|p| p.into_inner()).len();
        assert!(held <= REPORTED_FILES, "{held} files remembered");
    }
}
