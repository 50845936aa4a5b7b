//! `CacheBuilder`: where a cache's file, geometry and behaviour are chosen.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::compression::Compression;
use super::expiry::ceil_secs;
use super::handle::{Cache, Inner, UnlinkOnDrop};
use super::mode::Layer;
use crate::backing::{Backing, WriteMode};
use crate::clock::Clock;
use crate::page::consts::MIN_PAGE_SIZE;
use crate::store::KeyHash;
use crate::store::untrusted::DirProblem;
use crate::store::{
    self, DEFAULT_NUM_PAGES, DEFAULT_PAGE_SIZE, MAX_NUM_PAGES, OpenRequest, Requested, untrusted,
};
use crate::store::{Layout, LockKind};
use crate::{Error, Result};

/// Mode of a new file unless [`CacheBuilder::permissions`] says otherwise: the owner's only.
const DEFAULT_PERMISSIONS: u32 = 0o600;

/// Options for opening a cache; see [`Cache::builder`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `open` is called"]
pub struct CacheBuilder {
    path: Option<PathBuf>,
    layout: Layout,
    lock_kind: Option<LockKind>,
    num_pages: Option<u32>,
    page_size: Option<u32>,
    cache_size: Option<u64>,
    start_slots: Option<u32>,
    expire_after: Option<Duration>,
    permissions: Option<u32>,
    reset: bool,
    verify: bool,
    unlink_on_drop: bool,
    lock_timeout: Option<Duration>,
    clock: Clock,
    enable_stats: bool,
    allowed_owners: Vec<u32>,
    follow_symlinks: bool,
    read_only: bool,
    backing: Option<BackingHandle>,
    write_mode: WriteMode,
    cache_not_found: bool,
    compression: Option<Compression>,
    overflow: crate::store::OverflowRequest,
}

/// The backing store as the builder keeps it (a `dyn Backing` has no `Debug`).
#[derive(Clone)]
struct BackingHandle(Arc<dyn Backing>);

impl std::fmt::Debug for BackingHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Backing")
    }
}

impl Default for CacheBuilder {
    fn default() -> Self {
        CacheBuilder {
            path: None,
            layout: Layout::Native,
            lock_kind: None,
            num_pages: None,
            page_size: None,
            cache_size: None,
            start_slots: None,
            expire_after: None,
            permissions: None,
            reset: false,
            verify: false,
            unlink_on_drop: false,
            lock_timeout: None,
            clock: Clock::system(),
            enable_stats: true,
            allowed_owners: Vec::new(),
            follow_symlinks: false,
            read_only: false,
            backing: None,
            write_mode: WriteMode::Through,
            cache_not_found: false,
            compression: None,
            overflow: Default::default(),
        }
    }
}

impl CacheBuilder {
    /// The cache file. Default: `fastmmap.cache` in a directory only this user can reach —
    /// `$XDG_RUNTIME_DIR` if it is set to a directory of this user's with mode 0700 or
    /// stricter, else `fastmmap-<uid>/` in the temp directory, created with mode 0700. A
    /// default directory that is not this user's or is open to others is refused with
    /// [`Error::UnsafeDirectory`], naming it.
    ///
    /// Put an explicit path in a directory only this user can write to, too: in a directory
    /// every user shares, such as `/tmp` or `/dev/shm`, another user can create the name
    /// first. Such a file (or a FIFO, socket or device planted there) is refused (see
    /// [`allow_owner`](Self::allow_owner)), but the cache is then unusable until it is removed.
    pub fn path(mut self, path: impl AsRef<Path>) -> Self {
        self.path = Some(path.as_ref().to_path_buf());
        self
    }

    /// The file layout (default [`Layout::Native`]).
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// The page lock kind. It is recorded in a native file's header: left unset, an existing
    /// native file is opened with the kind it records, and a new native file gets
    /// [`LockKind::default`] ([`LockKind::Robust`] on Linux with glibc, else
    /// [`LockKind::Fcntl`]); set, it must match the file's kind, or the open is an error.
    /// [`LockKind::Robust`] needs the native layout; the FastMmap layout always uses
    /// [`LockKind::Fcntl`], as Perl does.
    pub fn lock_kind(mut self, kind: LockKind) -> Self {
        self.lock_kind = Some(kind);
        self
    }

    /// Number of pages (default 89). A native file that exists keeps its own; asking for a
    /// different number is an error.
    pub fn num_pages(mut self, n: u32) -> Self {
        self.num_pages = Some(n);
        self
    }

    /// Page size in bytes: a power of two from 4 KiB to 1 GiB (default 64 KiB). The largest
    /// entry a cache holds is a little under one page.
    pub fn page_size(mut self, bytes: u32) -> Self {
        self.page_size = Some(bytes);
        self
    }

    /// Total size; the geometry is derived as Cache::FastMmap does. With `num_pages`, the page
    /// size is `cache_size / num_pages` rounded down to a power of two (at least 4 KiB);
    /// otherwise the page size (given or 64 KiB) is kept and the page count is the first of
    /// 89, 179, 359, … (`2n + 1`) whose total exceeds `cache_size` — or, for a small
    /// `cache_size`, the smallest such count that still exceeds it.
    pub fn cache_size(mut self, bytes: u64) -> Self {
        self.cache_size = Some(bytes);
        self
    }

    /// Slots each page starts with (default and minimum 89). The slot table grows as a page
    /// fills.
    pub fn start_slots(mut self, n: u32) -> Self {
        self.start_slots = Some(n);
        self
    }

    /// Default lifetime of entries stored with [`Expiry::Default`](crate::Expiry::Default)
    /// (default: never expire). Rounded up to whole seconds.
    pub fn expire_after(mut self, d: Duration) -> Self {
        self.expire_after = Some(d);
        self
    }

    /// Mode of a newly created file, applied exactly (not masked by the umask). Default
    /// `0o600`: the owner only.
    ///
    /// To share a file with a group, give it that group (a set-group-id directory, or
    /// `chown`) and `0o640` (the group reads) or `0o660` (the group writes too). Whoever may
    /// read the file reads every entry; with [`LockKind::Fcntl`] locks a reader can also hold
    /// shared record locks on pages, which stall the owner's writers for as long as it
    /// holds them. A file with [`LockKind::Robust`] locks cannot be opened read-only at all.
    pub fn permissions(mut self, mode: u32) -> Self {
        self.permissions = Some(mode);
        self
    }

    /// Empty every page on open, each under its lock (the file is never unlinked: others may
    /// have it open).
    pub fn reset(mut self, yes: bool) -> Self {
        self.reset = yes;
        self
    }

    /// Validate every page on open and reset those that fail.
    pub fn verify(mut self, yes: bool) -> Self {
        self.verify = yes;
        self
    }

    /// Remove the file when the last handle from this `open` is dropped, in the process that
    /// opened it (forked children never remove it).
    pub fn unlink_on_drop(mut self, yes: bool) -> Self {
        self.unlink_on_drop = yes;
        self
    }

    /// Gives a new native file an overflow area of `bytes` (rounded up to 4 KiB blocks) after
    /// its pages, where values too large for their page are kept: the entry (key and
    /// metadata) stays in its page with a reference, and its bytes go to the area. Default:
    /// an eighth of the pages' bytes, rounded up to whole blocks, so that the pages, where
    /// every small value lives, keep eight ninths of pages and area together while a value far
    /// larger than a page still fits (a default file of 89 pages of 64 KiB gets 712 KiB, and
    /// takes values up to half that: see [`max_value_size`](Self::max_value_size)).
    /// `overflow_size(0)`: no area, and a value that does not fit its page is
    /// [`Error::TooLarge`], as before there were areas. Opening an existing file without
    /// this option uses the file's own area (or none); with a different size it is
    /// [`Error::GeometryMismatch`] (the area is part of the file's geometry, recorded in its
    /// header). The Cache::FastMmap layout has no area (asking for one is
    /// [`Error::InvalidOptions`]). Large values work with a
    /// [`backing`](Self::backing) store in every [`write_mode`](Self::write_mode) and with
    /// [`compression`](Self::compression), which runs first.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let cache = fastmmap::Cache::builder()
    ///     .path(dir.path().join("c"))
    ///     .num_pages(8)
    ///     .page_size(16 * 1024)
    ///     .overflow_size(4 << 20)
    ///     .max_value_size(1 << 20)
    ///     .open()?;
    /// let big = vec![7u8; 1 << 20];
    /// cache.set(b"big", &big)?;
    /// assert_eq!(cache.get(b"big")?, Some(big));
    /// # Ok::<(), fastmmap::Error>(())
    /// ```
    pub fn overflow_size(mut self, bytes: u64) -> Self {
        self.overflow.size = Some(bytes);
        self
    }

    /// The largest value a new file's overflow area takes (default: an eighth of the file,
    /// pages and area together, and no more than half the area in whole blocks, so that a
    /// value of that size and its replacement fit at once: a replace writes its new blocks
    /// before it frees the old ones). Set higher by hand, replacing a value of more than half
    /// the area can fail with [`Error::OverflowFull`], which changes nothing. A value larger
    /// than this is [`Error::ValueTooLarge`], and nothing is changed; a value whose entry fits
    /// a page is stored there whatever this says. Recorded in the file's header: opening an
    /// existing file with a different one is [`Error::GeometryMismatch`]. Needs an area: with
    /// [`overflow_size(0)`](Self::overflow_size) it is [`Error::InvalidOptions`].
    pub fn max_value_size(mut self, bytes: u32) -> Self {
        self.overflow.max_value_size = Some(bytes);
        self
    }

    /// Give up waiting for a page lock after this long, with [`Error::LockTimeout`]
    /// (default: wait as long as it takes).
    pub fn lock_timeout(mut self, d: Duration) -> Self {
        self.lock_timeout = Some(d);
        self
    }

    /// The time source (default [`Clock::system`]); tests pass a [`ManualClock`](crate::ManualClock).
    pub fn clock(mut self, clock: impl Into<Clock>) -> Self {
        self.clock = clock.into();
        self
    }

    /// Trusts files owned by user `uid` too (call once per owner), for caches deliberately
    /// shared between users. By default a file owned by anyone but this process's effective
    /// user or root is refused with [`Error::ForeignOwner`]: its owner controls every value
    /// read from it, can hold page locks to stall every user, and can plant entries.
    pub fn allow_owner(mut self, uid: u32) -> Self {
        self.allowed_owners.push(uid);
        self
    }

    /// Follows a symbolic link at the file's own name (default: refused with
    /// [`Error::Symlink`], so that a link planted at the path cannot point the cache at
    /// another file). Links in the directories above it are always followed.
    pub fn follow_symlinks(mut self, yes: bool) -> Self {
        self.follow_symlinks = yes;
        self
    }

    /// Opens an existing file for reading only (default off), for users who may only read
    /// it. Pages are locked with shared (read) record locks, entries are read without
    /// refreshing their access time or counting the read, and damaged pages read as empty
    /// (they cannot be repaired). Every change returns [`Error::ReadOnly`]. The file is never
    /// created. Files with [`LockKind::Robust`] locks cannot be opened read-only: their locks
    /// live in the file.
    pub fn read_only(mut self, yes: bool) -> Self {
        self.read_only = yes;
        self
    }

    /// A backing store behind the cache (Cache::FastMmap's `read_cb`, `write_cb` and
    /// `delete_cb`): misses are read through it, stores reach it as
    /// [`write_mode`](Self::write_mode) says, and removes delete from it. See [`Backing`].
    ///
    /// Give every handle of the file the same store and mode: a handle without one drops the
    /// dirty entries it evicts without writing them back (as a Perl process without
    /// `write_cb` does).
    pub fn backing(mut self, backing: impl Backing) -> Self {
        self.backing = Some(BackingHandle(Arc::new(backing)));
        self
    }

    /// As [`backing`](Self::backing), for a store already shared behind an `Arc`.
    pub fn backing_arc(mut self, backing: Arc<dyn Backing>) -> Self {
        self.backing = Some(BackingHandle(backing));
        self
    }

    /// When stores reach the backing store (default [`WriteMode::Through`]; Perl's
    /// `write_action`).
    pub fn write_mode(mut self, mode: WriteMode) -> Self {
        self.write_mode = mode;
        self
    }

    /// Cache a key the backing store does not have as absent, so that the store is asked once
    /// (default off; Perl's `cache_not_found`). Such an entry is Perl's `undef`: Perl reads it
    /// as `undef` without calling its `read_cb` either. It expires like any entry.
    pub fn cache_not_found(mut self, yes: bool) -> Self {
        self.cache_not_found = yes;
        self
    }

    /// Compress values as they are stored (features `lz4`, `zstd`): each value of at least
    /// the threshold that shrinks is stored compressed and flagged, so compressed and plain
    /// entries share one file; reads decompress. Give every handle of the file a compression
    /// (the same or another): a handle opened without one returns compressed values as they
    /// are stored (its [`entry`](crate::Cache::entry) says which). Perl cannot read these
    /// entries.
    #[cfg(any(feature = "lz4", feature = "zstd"))]
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = Some(compression);
        self
    }

    /// Count reads and hits per page in the file (default on).
    pub fn enable_stats(mut self, yes: bool) -> Self {
        self.enable_stats = yes;
        self
    }

    /// Opens the cache, creating the file if it does not exist (unless read-only).
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] for unusable options; [`Error::MissingDirectory`],
    /// [`Error::PermissionDenied`] or [`Error::Io`] when the file cannot be opened or created;
    /// [`Error::NoSpace`] when its filesystem has no room for a new file;
    /// [`Error::ForeignOwner`] or [`Error::Symlink`] for a file that is not to be trusted;
    /// [`Error::NotACache`], [`Error::WrongLayout`], [`Error::BadHeader`],
    /// [`Error::WrongSize`], [`Error::GeometryMismatch`] or [`Error::LockKindMismatch`] when an
    /// existing file is not what was asked for. The file is left untouched in every case, and
    /// no temporary file is left behind.
    pub fn open(self) -> Result<Cache> {
        let path = match &self.path {
            Some(path) => path.clone(),
            None => default_path()?,
        };
        let invalid = |reason: String| Error::InvalidOptions {
            path: path.clone(),
            reason,
        };
        if self.lock_kind == Some(LockKind::Robust) {
            if self.layout != Layout::Native {
                return Err(invalid(
                    "robust locks need the native layout: a Cache::FastMmap file has no header \
                     to keep them in, and Perl would not take them"
                        .into(),
                ));
            }
            if !store::ROBUST_LOCKS_AVAILABLE {
                return Err(invalid(
                    "robust locks are not available on this platform (they need Linux with \
                     glibc); use LockKind::Fcntl"
                        .into(),
                ));
            }
        }
        if self.read_only && (self.reset || self.verify) {
            return Err(invalid(
                "reset and verify change the file, which read_only forbids".into(),
            ));
        }
        let requested = self.requested().map_err(invalid)?;
        requested.or_defaults().validate().map_err(invalid)?;
        let default_expiry = match self.expire_after {
            None => None,
            Some(d) => Some(
                u32::try_from(ceil_secs(d))
                    .map_err(|_| invalid(format!("expire_after {d:?} is beyond the year 2106")))?,
            ),
        };
        let req = OpenRequest {
            path: path.clone(),
            layout: self.layout,
            lock_kind: self.lock_kind,
            requested,
            permissions: self.permissions.unwrap_or(DEFAULT_PERMISSIONS),
            follow_symlinks: self.follow_symlinks,
            allowed_owners: self.allowed_owners.clone(),
            read_only: self.read_only,
            trust_contents: self.reset || self.verify,
            must_exist: false,
            overflow: self.overflow,
            journal: false,
            owner: None,
            lock_timeout: self.lock_timeout,
        };
        if self.layout == Layout::FastMmap
            && (self.overflow.size.is_some_and(|s| s > 0) || self.overflow.max_value_size.is_some())
        {
            return Err(invalid(
                "the Cache::FastMmap layout has no overflow area: Perl reads every value from \
                 its page"
                    .into(),
            ));
        }
        if self.backing.is_none() && (self.cache_not_found || self.write_mode != WriteMode::Through)
        {
            return Err(invalid(
                "write_mode and cache_not_found need a backing store (CacheBuilder::backing)"
                    .into(),
            ));
        }
        let layer = (self.backing.is_some() || self.compression.is_some()).then(|| Layer {
            backing: self.backing.as_ref().map(|b| Arc::clone(&b.0)),
            mode: self.write_mode,
            cache_not_found: self.cache_not_found,
            compression: self.compression,
        });
        let file = store::open_shared(&req)?;
        let cache = Cache {
            inner: Arc::new(Inner {
                hash: KeyHash::of(self.layout),
                file: store::Current::new(file),
                default_expiry,
                clock: self.clock,
                stats: self.enable_stats,
                read_only: self.read_only,
                lock_timeout: self.lock_timeout,
                layer,
                _unlink: self.unlink_on_drop.then(|| UnlinkOnDrop::new(path)),
            }),
        };
        if self.reset || self.verify {
            cache.prepare(self.reset)?;
        }
        Ok(cache)
    }

    /// The geometry fields fixed by the options, with `cache_size` resolved.
    fn requested(&self) -> std::result::Result<Requested, String> {
        let mut r = Requested {
            num_pages: self.num_pages,
            page_size: self.page_size,
            start_slots: self.start_slots,
        };
        if let Some(size) = self.cache_size {
            let (np, ps) = derive_geometry(size, self.num_pages, self.page_size)?;
            r.num_pages = Some(np);
            r.page_size = Some(ps);
        }
        Ok(r)
    }
}

/// Cache::FastMmap's derivation of `(num_pages, page_size)` from a total size.
pub(crate) fn derive_geometry(
    cache_size: u64,
    num_pages: Option<u32>,
    page_size: Option<u32>,
) -> std::result::Result<(u32, u32), String> {
    if cache_size == 0 {
        return Err("cache_size must be positive".into());
    }
    if let Some(np) = num_pages {
        if np == 0 {
            return Err("num_pages must be positive".into());
        }
        let per_page = cache_size / u64::from(np);
        let ps = if per_page == 0 {
            0
        } else {
            1u64 << per_page.ilog2()
        }
        .max(MIN_PAGE_SIZE as u64);
        let ps = u32::try_from(ps)
            .map_err(|_| format!("cache_size {cache_size} gives pages larger than 1 GiB"))?;
        if let Some(given) = page_size
            && given != ps
        {
            return Err(format!(
                "page_size {given} conflicts with cache_size {cache_size} / num_pages {np} (page size {ps})"
            ));
        }
        return Ok((np, ps));
    }
    let ps = page_size
        .unwrap_or(DEFAULT_PAGE_SIZE)
        .max(MIN_PAGE_SIZE as u32);
    let fits = |np: u64| np * u64::from(ps) <= cache_size;
    let mut np = u64::from(DEFAULT_NUM_PAGES);
    if fits(np) {
        while fits(np) {
            np = np * 2 + 1;
            if np > u64::from(MAX_NUM_PAGES) {
                return Err(format!(
                    "cache_size {cache_size} needs more than {MAX_NUM_PAGES} pages"
                ));
            }
        }
    } else {
        while !fits(np) {
            np = (np.saturating_sub(1)) / 2;
        }
        np = np * 2 + 1;
    }
    Ok((np as u32, ps))
}

/// The name of the default cache file in its directory.
const DEFAULT_FILE_NAME: &str = "fastmmap.cache";

/// The default cache file, in a directory only this user can reach: `$XDG_RUNTIME_DIR` when it
/// is set to a directory of this user's with mode 0700 or stricter, else
/// `<temp dir>/fastmmap-<uid>/`, created with mode 0700 if it does not exist.
///
/// A name in a directory every user shares could be taken by anyone first; a directory of
/// one's own cannot. That directory is checked (owned by this user, a directory and not a
/// link, no permissions for group or others) and refused with what to do otherwise.
pub(crate) fn default_path() -> Result<PathBuf> {
    let user = store::effective_uid();
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        // The variable may be left over from another user (`su`): only a private directory
        // of ours is used, else the temp directory.
        if dir.is_absolute() && untrusted::check_private_dir(&dir, user, true).is_ok() {
            return Ok(dir.join(DEFAULT_FILE_NAME));
        }
    }
    let dir = std::env::temp_dir().join(format!("fastmmap-{user}"));
    match untrusted::private_dir(&dir, user) {
        Ok(()) => Ok(dir.join(DEFAULT_FILE_NAME)),
        Err(DirProblem::NotPrivate(reason)) => Err(Error::UnsafeDirectory { dir, reason }),
        Err(DirProblem::Create(source)) => Err(Error::Io {
            path: dir,
            op: "create the directory of the default cache file",
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_like_cache_fastmmap() {
        // Values computed with Cache::FastMmap 1.57's own code.
        assert_eq!(derive_geometry(1 << 20, None, None), Ok((21, 65536)));
        assert_eq!(derive_geometry(100 << 20, None, None), Ok((2879, 65536)));
        assert_eq!(derive_geometry(89 * 65536, None, None), Ok((179, 65536)));
        assert_eq!(derive_geometry(1000, None, None), Ok((1, 65536)));
        assert_eq!(derive_geometry(10 << 20, Some(100), None), Ok((100, 65536)));
        assert_eq!(derive_geometry(1 << 20, Some(1000), None), Ok((1000, 4096)));
        assert!(derive_geometry(10 << 20, Some(100), Some(4096)).is_err());
        assert!(derive_geometry(0, None, None).is_err());
        assert!(derive_geometry(u64::MAX, None, None).is_err());
    }
}
