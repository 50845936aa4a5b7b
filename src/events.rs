//! Faults made visible: one function per kind of fault the core recovers from by itself (a
//! page reset, dirty entries lost, a failing backing store, a value that cannot be decoded, a
//! lock timeout), called in one line where the fault is found. The upper layers keep theirs
//! beside them, in the same manner: `session/events.rs`, `web/events.rs`, `redis/events.rs`.
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
    /// A resize stopped part way (warn).
    pub(crate) const RESIZE: &str = "fastmmap::resize";
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

/// A structural change of page `page` of `path` that a process died making was completed from
/// the file's journal (see `store/journal.rs`): nothing was lost, and the page was not reset.
#[cold]
pub(crate) fn journal_reapplied(path: &Path, page: u32) {
    #[cfg(feature = "tracing")]
    tracing::info!(
        target: target::PAGE,
        path = %path.display(),
        page,
        "journal re-applied: a change a dead process left half made was completed"
    );
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

/// A resize stopped at old page `page` of `pages` by `error` (a backing store's, a lock
/// timeout, …): the cache stays in use, that page and those after it in the old file, and the
/// next resize finishes the move.
pub(crate) fn resize_stopped(path: &Path, page: u32, pages: u32, error: &Error) {
    #[cfg(feature = "tracing")]
    tracing::warn!(
        target: target::RESIZE,
        path = %path.display(),
        page,
        pages,
        error = %crate::error::KeyHidden(error),
        "resize stopped part way: the cache stays in use, and the next resize finishes the move"
    );
}
