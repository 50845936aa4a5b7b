//! The host's state file: whether the host trusts its cache file, and which keys changed.
//!
//! Layout (native-endian `u64`s; only the listener writes, everyone reads with `pread`):
//!
//! ```text
//! offset 0   TRUST      even: trusted; odd: distrusted. Bumped at every change of trust
//!                       and at every "flush everything" invalidation.
//! offset 8   HEARTBEAT  the listener's clock, Unix milliseconds, written every 100 ms
//! offset 16  COUNTERS   NUM_COUNTERS counters; an invalidation of a key bumps the one its
//!                       hash picks before the key is removed from the cache file
//! ```
//!
//! A torn read (a read racing the listener's write of the same word) can only make a fence
//! differ, which drops a value from the cache: never the reverse.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Clock;

const TRUST_OFFSET: u64 = 0;
const HEARTBEAT_OFFSET: u64 = TRUST_OFFSET + 8;
const COUNTERS_OFFSET: u64 = HEARTBEAT_OFFSET + 8;
const NUM_COUNTERS: u64 = 4096;
const STATE_SIZE: u64 = COUNTERS_OFFSET + 8 * NUM_COUNTERS;

/// A heartbeat older than this means the listener is gone: nothing new is kept, and hits are
/// not served from the file.
pub(crate) const HEARTBEAT_STALE: Duration = Duration::from_secs(2);
/// How old a reading of the trust word a `get` hit may rely on.
pub(crate) const TRUST_RECHECK: Duration = Duration::from_millis(20);

/// The state file of the cache file at `cache_path`.
pub(crate) fn state_path(cache_path: &Path) -> PathBuf {
    let mut p = cache_path.as_os_str().to_owned();
    p.push(".redis");
    PathBuf::from(p)
}

fn counter_offset(key: &[u8]) -> u64 {
    COUNTERS_OFFSET + 8 * (xxhash_rust::xxh3::xxh3_64(key) % NUM_COUNTERS)
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn read_u64(file: &File, offset: u64) -> io::Result<u64> {
    let mut b = [0u8; 8];
    file.read_exact_at(&mut b, offset)?;
    Ok(u64::from_ne_bytes(b))
}

fn write_u64(file: &File, offset: u64, v: u64) -> io::Result<()> {
    file.write_all_at(&v.to_ne_bytes(), offset)
}

/// Opens the state file `path` (for writing: creating it, mode 0600, if the name is free) with
/// [`crate::fs::open_owned`]: it must be a regular file of `owner`, the cache file's owner
/// (which the cache checked when it opened it), or it is not trusted. Returns the file and its
/// length.
fn open_state(path: &Path, owner: u32, write: bool) -> io::Result<(File, u64)> {
    let create = write.then_some(0o600);
    let (file, md) = crate::fs::open_owned(path, owner, write, create).map_err(|e| {
        let kind = e.kind();
        match kind {
            io::ErrorKind::InvalidInput | io::ErrorKind::PermissionDenied => {
                io::Error::new(kind, Refused(e))
            }
            _ => e,
        }
    })?;
    Ok((file, md.len()))
}

/// Why a state file is not trusted: the checked open's own error, kept as the source.
#[derive(Debug, thiserror::Error)]
#[error("the state file is refused: {0}")]
struct Refused(#[source] io::Error);

/// The owner of the cache file at `cache_path`, which its state file must have.
fn cache_owner(cache_path: &Path) -> io::Result<u32> {
    Ok(std::fs::metadata(cache_path)?.uid())
}

/// A reader of the state file (the cache's fences): opened when first found.
pub(crate) struct StateReader {
    cache_path: PathBuf,
    /// The cache file's owner, looked up once it exists.
    owner: OnceLock<u32>,
    path: PathBuf,
    /// The open state file, once found. Taken with `try_lock` only: a fork from a thread
    /// holding it would leave it locked in the child, which then opens its own.
    file: Mutex<Option<Arc<File>>>,
    /// The last trust reading: Unix milliseconds `<< 1`, `| 1` if trusted.
    seen: AtomicU64,
}

impl StateReader {
    pub(crate) fn new(cache_path: &Path) -> StateReader {
        StateReader {
            cache_path: cache_path.to_path_buf(),
            owner: OnceLock::new(),
            path: state_path(cache_path),
            file: Mutex::new(None),
            seen: AtomicU64::new(0),
        }
    }

    /// The state file, if it exists and has the cache file's owner: the one kept, or one
    /// opened now (kept for next time unless another thread holds the slot).
    fn file(&self) -> Option<Arc<File>> {
        let mut slot = match self.file.try_lock() {
            Ok(slot) => Some(slot),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        if let Some(f) = slot.as_ref().and_then(|s| (**s).clone()) {
            return Some(f);
        }
        let owner = match self.owner.get() {
            Some(&owner) => owner,
            None => {
                let owner = cache_owner(&self.cache_path).ok()?;
                *self.owner.get_or_init(|| owner)
            }
        };
        let (f, _) = open_state(&self.path, owner, false)
            .map_err(|e| super::events::state_file_refused(&self.path, &e))
            .ok()?;
        let f = Arc::new(f);
        if let Some(slot) = slot.as_mut() {
            **slot = Some(Arc::clone(&f));
        }
        Some(f)
    }

    /// The trust word, if the host trusts its cache file now: `None` while distrusted, with
    /// no listener yet, or with a stale heartbeat (the listener's process is gone).
    fn trust(&self, file: &File) -> Option<u64> {
        let trust = read_u64(file, TRUST_OFFSET).ok()?;
        if !trust.is_multiple_of(2) {
            return None;
        }
        let beat = read_u64(file, HEARTBEAT_OFFSET).ok()?;
        let age = unix_millis().saturating_sub(beat);
        if u128::from(age) > HEARTBEAT_STALE.as_millis() {
            return None;
        }
        Some(trust)
    }

    /// The fence of `key`: `None` while the host does not trust its cache file.
    pub(crate) fn fence(&self, key: &[u8]) -> Option<u64> {
        let file = self.file()?;
        let trust = self.trust(&file)?;
        let counter = read_u64(&file, counter_offset(key)).ok()?;
        Some((trust << 32) ^ counter)
    }

    /// Whether the host trusts its cache file, as last seen: the state file is read again
    /// when the last reading is [`TRUST_RECHECK`] old, so a hit costs a coarse clock read,
    /// not a system call.
    pub(crate) fn trusted(&self) -> bool {
        let now = Clock::system().now_millis();
        let seen = self.seen.load(Ordering::Relaxed);
        if now.saturating_sub(seen >> 1) < TRUST_RECHECK.as_millis() as u64 {
            return seen & 1 == 1;
        }
        let trusted = self.file().and_then(|f| self.trust(&f)).is_some();
        self.seen
            .store(now << 1 | u64::from(trusted), Ordering::Relaxed);
        trusted
    }
}

/// The listener's writer of the state file.
pub(crate) struct StateWriter {
    file: File,
    trust: u64,
}

impl StateWriter {
    /// Opens (or creates, mode 0600) the state file and marks the host distrusted.
    pub(crate) fn open(cache_path: &Path) -> io::Result<StateWriter> {
        let path = state_path(cache_path);
        let (file, len) = open_state(&path, cache_owner(cache_path)?, true)?;
        if len != STATE_SIZE {
            file.set_len(STATE_SIZE)?;
        }
        let trust = read_u64(&file, TRUST_OFFSET)?;
        let mut w = StateWriter { file, trust };
        w.distrust()?;
        Ok(w)
    }

    /// Marks the host distrusted (idempotent).
    pub(crate) fn distrust(&mut self) -> io::Result<()> {
        if self.trust.is_multiple_of(2) {
            self.trust = self.trust.wrapping_add(1);
            write_u64(&self.file, TRUST_OFFSET, self.trust)?;
        }
        Ok(())
    }

    /// Marks the host trusted, with a trust word no fence taken before can hold.
    pub(crate) fn trust(&mut self) -> io::Result<()> {
        self.trust = self
            .trust
            .wrapping_add(if self.trust.is_multiple_of(2) { 2 } else { 1 });
        self.heartbeat()?;
        write_u64(&self.file, TRUST_OFFSET, self.trust)
    }

    /// Changes the trust word without changing trust: every fence taken before differs.
    pub(crate) fn bump_all(&mut self) -> io::Result<()> {
        self.trust = self.trust.wrapping_add(2);
        write_u64(&self.file, TRUST_OFFSET, self.trust)
    }

    /// Bumps the counter of `key`.
    pub(crate) fn bump(&mut self, key: &[u8]) -> io::Result<()> {
        let offset = counter_offset(key);
        let v = read_u64(&self.file, offset)?;
        write_u64(&self.file, offset, v.wrapping_add(1))
    }

    pub(crate) fn heartbeat(&self) -> io::Result<()> {
        write_u64(&self.file, HEARTBEAT_OFFSET, unix_millis())
    }
}
