//! The cache handle: what it holds, what it is (its geometry, layout, clock), the steps every
//! operation is made of (locate a key, lock its page, read, store), and the check of every page
//! on open. The operations themselves are in `read.rs`, `write.rs`, `update.rs`, `batch.rs`,
//! `iter.rs` and `maintenance.rs`; how they go for the handle's mode, in `mode.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::builder::CacheBuilder;
use super::expiry::Expiry;
use super::mode::Layer;
use crate::clock::{Clock, from_unix_secs};
use crate::page::consts::{
    FLAG_COMPRESSION, FLAG_DIRTY, FLAG_HAS_MODSEQ, FLAG_OVERFLOW, FLAG_TOMBSTONE, FLAG_UNDEF,
    FLAG_UTF8_KEY, FLAG_UTF8_VALUE, max_entry_size,
};
use crate::page::{Copied, Corrupt, EntryRef, NewEntry, StoreOutcome, check_page};
use crate::store::{
    Access, Current, Geometry, KeyHash, Layout, LockError, MAX_FOLLOWS, PageGuard, ReadGuard,
    ReadOutcome, Reader, Route, SharedFile,
};
use crate::{Error, LockRole, Result};

/// A cache in one memory-mapped file, shared by every thread and process that opens it.
///
/// Cloning is cheap and shares the handle. See the [crate documentation](crate) for the model.
#[derive(Clone)]
pub struct Cache {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The file this handle uses now: the one it opened, or the one a resize moved it to.
    pub(crate) file: Current,
    pub(crate) hash: KeyHash,
    pub(crate) default_expiry: Option<u32>,
    pub(crate) clock: Clock,
    pub(crate) stats: bool,
    /// Opened with `read_only`: every change is refused, reads change nothing.
    pub(crate) read_only: bool,
    pub(crate) lock_timeout: Option<Duration>,
    /// A backing store and/or compression between callers and the pages (`None`: values are
    /// stored and returned as they are, and nothing else is called).
    pub(crate) layer: Option<Layer>,
    /// Held only for its `Drop`.
    pub(crate) _unlink: Option<UnlinkOnDrop>,
}

/// Removes the file when the last handle of one `open` goes, in the opening process only.
pub(crate) struct UnlinkOnDrop {
    path: PathBuf,
    pid: u32,
}

impl UnlinkOnDrop {
    pub(crate) fn new(path: PathBuf) -> UnlinkOnDrop {
        UnlinkOnDrop {
            path,
            pid: std::process::id(),
        }
    }
}

impl Drop for UnlinkOnDrop {
    fn drop(&mut self) {
        if std::process::id() == self.pid {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// How [`Cache::each_page`] locks each page: `None` when a resize moved the page (and the
/// handle follows the move).
pub(crate) type TakePage<'s, G> = fn(&'s Cache, &'s SharedFile, u32) -> Result<Option<G>>;

/// The files a walk over every page visited before the one it is on, each with the pages it
/// visited there (the others were found moved): see [`Cache::each_page`].
#[derive(Default)]
pub(crate) struct Walked<'s> {
    pub(crate) files: Vec<(&'s SharedFile, Vec<bool>)>,
}

impl Walked<'_> {
    /// Whether the walk is on the first file it visited (every entry counts).
    pub(crate) fn first(&self) -> bool {
        self.files.is_empty()
    }

    /// Whether an entry found on page `page` of `file` (of `num_pages` pages, the file the walk
    /// is on), stored under `key` with `slot_hash`, is one the walk has not met yet: its page
    /// in each file visited before was found moved (so it was not visited there), and is
    /// still marked moved (an entry whose old page is not marked is a stale copy and does not
    /// exist). Entries only move from a file to its successor, and marks stay, so every entry
    /// counts once.
    pub(crate) fn counts(&self, num_pages: u32, page: u32, key: &[u8], slot_hash: u32) -> bool {
        self.files.iter().all(|(f, visited)| {
            crate::store::old_page_of(f, num_pages, page, key, slot_hash)
                .is_some_and(|p| !visited[p as usize] && f.page_moved(p))
        })
    }

    /// Whether an entry found on page `page` of the file the walk is on is a stale copy (see
    /// [`counts`](Self::counts)): never written back, never dropped by a walk that keeps
    /// dirty entries.
    pub(crate) fn stale(&self, num_pages: u32, page: u32, key: &[u8], slot_hash: u32) -> bool {
        self.files
            .iter()
            .any(|(f, _)| f.stale_in_successor(num_pages, page, key, slot_hash))
    }
}

/// Where a key lives: its whole hash, from which each file picks the key's page (a resize
/// changes the number of pages, so the page is picked when the page is locked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc(u64);

impl Loc {
    /// The key's page in a file of `num_pages` pages.
    #[inline]
    pub(crate) fn page(self, num_pages: u32) -> u32 {
        (self.0 % u64::from(num_pages)) as u32
    }
}

/// What [`Cache::update`] should do with the key, decided from its current value.
///
/// `V` is the value: bytes for a [`Cache`], a typed value for a
/// [`TypedCache`](crate::typed::TypedCache) (feature `serde`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update<V = Vec<u8>> {
    /// Leave the entry as it is.
    Keep,
    /// Store this value, with the default expiry.
    Set(V),
    /// Store this value with this expiry.
    SetWith(V, Expiry),
    /// Remove the entry.
    Remove,
}

/// Flag bits stored with an entry (shared with Cache::FastMmap). Combine them with `|`:
/// `EntryFlags::UTF8_KEY | EntryFlags::UTF8_VALUE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EntryFlags(pub u32);

impl std::ops::BitOr for EntryFlags {
    type Output = EntryFlags;

    fn bitor(self, other: EntryFlags) -> EntryFlags {
        EntryFlags(self.0 | other.0)
    }
}

/// Flag bits a caller may not set: they describe how the crate stored the entry.
pub(super) const RESERVED_FLAGS: u32 =
    FLAG_TOMBSTONE | FLAG_HAS_MODSEQ | FLAG_DIRTY | FLAG_COMPRESSION | FLAG_OVERFLOW;

impl EntryFlags {
    /// No flags: a byte string, as every plain store writes.
    pub const NONE: EntryFlags = EntryFlags(0);
    /// The value is a character string (its bytes are UTF-8), as Perl marks one.
    pub const UTF8_VALUE: EntryFlags = EntryFlags(FLAG_UTF8_VALUE);
    /// The key is a character string (its bytes are UTF-8), as Perl marks one.
    pub const UTF8_KEY: EntryFlags = EntryFlags(FLAG_UTF8_KEY);
    /// The value is Perl's `undef` (store it with an empty value).
    pub const UNDEF: EntryFlags = EntryFlags(FLAG_UNDEF);

    /// Perl stored the value as a UTF-8 string.
    pub fn value_is_utf8(self) -> bool {
        self.0 & FLAG_UTF8_VALUE != 0
    }
    /// Perl stored the key as a UTF-8 string.
    pub fn key_is_utf8(self) -> bool {
        self.0 & FLAG_UTF8_KEY != 0
    }
    /// Perl stored `undef` (the value bytes are empty). With a backing store and
    /// `cache_not_found`, a key the store does not have is cached this way.
    pub fn is_undef(self) -> bool {
        self.0 & FLAG_UNDEF != 0
    }
    /// Written by a write-back `set` and not yet written to the backing store
    /// (Cache::FastMmap's dirty flag).
    pub fn is_dirty(self) -> bool {
        self.0 & FLAG_DIRTY != 0
    }
    /// Stored compressed (see [`Compression`](crate::Compression)); the value an [`Entry`]
    /// carries is already decompressed.
    pub fn is_compressed(self) -> bool {
        self.0 & FLAG_COMPRESSION != 0
    }
}

/// A value with its metadata, as returned by [`Cache::entry`] and [`Cache::iter`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// The value bytes.
    pub value: Vec<u8>,
    /// When it expires (`None`: never).
    pub expires_at: Option<SystemTime>,
    /// When it was last read or written (whole seconds).
    pub last_access: SystemTime,
    /// The modseq it was stored with by [`Cache::set_if_newer`], if any.
    pub modseq: Option<u64>,
    /// Its flag bits.
    pub flags: EntryFlags,
}

impl Entry {
    pub(super) fn from_copied(c: Copied) -> Entry {
        Entry {
            expires_at: (c.expire_on != 0).then(|| from_unix_secs(c.expire_on)),
            last_access: from_unix_secs(c.last_access),
            modseq: c.modseq,
            flags: EntryFlags(c.flags),
            value: c.value,
        }
    }

    pub(crate) fn from_ref(e: &EntryRef<'_>) -> Entry {
        Entry::with_value(e.value.to_vec(), e)
    }

    /// The entry `e` describes, with `value` for its value (a copy already made).
    pub(crate) fn with_value(value: Vec<u8>, e: &EntryRef<'_>) -> Entry {
        Entry {
            value,
            expires_at: (e.expire_on != 0).then(|| from_unix_secs(e.expire_on)),
            last_access: from_unix_secs(e.last_access),
            modseq: e.modseq,
            flags: EntryFlags(e.flags),
        }
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("path", &self.path())
            .field("layout", &self.layout())
            .field("num_pages", &self.num_pages())
            .field("page_size", &self.page_size())
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// Options for opening a cache.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    /// Opens (or creates) a native cache at `path` with default options.
    ///
    /// # Errors
    /// As [`CacheBuilder::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<Cache> {
        Cache::builder().path(path).open()
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        self.inner.file.path()
    }

    /// The file layout.
    pub fn layout(&self) -> Layout {
        self.inner.file.layout()
    }

    /// The page lock kind.
    pub fn lock_kind(&self) -> crate::store::LockKind {
        self.inner.file.lock_kind()
    }

    /// Number of pages (of the file the cache was last moved to, if it was
    /// [resized](Self::resize)).
    pub fn num_pages(&self) -> u32 {
        self.followed().num_pages
    }

    /// Page size in bytes (as [`num_pages`](Self::num_pages)).
    pub fn page_size(&self) -> u32 {
        self.followed().page_size
    }

    /// The geometry after following any finished resize (for the accessors, which take no
    /// lock; operations follow when they lock a moved page).
    fn followed(&self) -> Geometry {
        for _ in 0..MAX_FOLLOWS {
            let file: &SharedFile = &self.inner.file;
            if !file.is_moved() || self.follow(file).is_err() {
                break;
            }
        }
        self.geometry()
    }

    /// Slots each page starts with.
    pub fn start_slots(&self) -> u32 {
        self.geometry().start_slots
    }

    /// The largest entry (24-byte header, key, value, padded to 4 bytes) a page holds.
    pub fn max_entry_size(&self) -> usize {
        max_entry_size(self.page_size() as usize, self.geometry().start_slots)
    }

    /// The largest value this cache stores: a value whose entry does not fit a page goes to
    /// the file's overflow area, up to this size (see
    /// [`CacheBuilder::overflow_size`](crate::CacheBuilder::overflow_size)). Without an area,
    /// 0: every entry must fit a page ([`max_entry_size`](Self::max_entry_size)).
    pub fn max_value_size(&self) -> usize {
        self.inner.file.max_value_size()
    }

    /// The clock this cache reads.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// The geometry of the file this handle uses now.
    #[inline]
    pub(crate) fn geometry(&self) -> Geometry {
        self.inner.file.geometry()
    }

    /// Where `key` lives (its page is picked when its file is locked, since a resize can
    /// change the number of pages) and its slot hash.
    #[inline]
    pub(crate) fn locate(&self, key: &[u8]) -> (Loc, u32) {
        let hash = self.inner.hash;
        let h = hash.hash(key);
        (Loc(h), hash.split(h, self.geometry().num_pages).1)
    }

    /// [`locate`](Self::locate) with the slot hash of a file of `num_pages` pages (a walk's
    /// own file, which need not be the one the handle uses now).
    pub(crate) fn locate_in(&self, key: &[u8], num_pages: u32) -> (Loc, u32) {
        let hash = self.inner.hash;
        let h = hash.hash(key);
        (Loc(h), hash.split(h, num_pages).1)
    }

    /// Follows the resize that moved `from` (see `store/resize.rs`).
    #[cold]
    pub(crate) fn follow(&self, from: &SharedFile) -> Result<()> {
        self.inner.file.follow(from)
    }

    #[cold]
    pub(crate) fn too_many_moves(&self) -> Error {
        Error::Resize {
            path: self.path().to_path_buf(),
            reason: format!("the file moved more than {MAX_FOLLOWS} times during one operation"),
        }
    }

    /// Runs `step` on `from` (the file this handle uses now, or the file a walk is on) and,
    /// each time `step` finds its page moved by a resize (answers `None`), on the file the
    /// move went to: a cursor of this operation's own, so that it goes on whether or not the
    /// handle has followed the move (the steps that find a move also follow it, as before).
    /// At most `MAX_FOLLOWS` moves, then [`too_many_moves`](Self::too_many_moves).
    ///
    /// Every operation that locks a page of a key, or walks the pages, follows moves this way.
    #[inline(always)]
    pub(crate) fn follow_moves<'s, R>(
        &'s self,
        from: &'s SharedFile,
        mut step: impl FnMut(&'s SharedFile) -> Result<Option<R>>,
    ) -> Result<R> {
        let mut file = from;
        for _ in 0..MAX_FOLLOWS {
            if let Some(done) = step(file)? {
                return Ok(done);
            }
            file = file.successor()?;
        }
        Err(self.too_many_moves())
    }

    /// Locks page `page` of `file` (a file this handle used) for a change: `None` if a resize
    /// moved it, and this handle now follows the move (the caller goes on on `file`'s
    /// successor: [`follow_moves`](Self::follow_moves)).
    pub(crate) fn lock_page_at<'s>(
        &'s self,
        file: &'s SharedFile,
        page: u32,
    ) -> Result<Option<PageGuard<'s>>> {
        if self.inner.read_only {
            return Err(Error::ReadOnly {
                path: self.path().to_path_buf(),
            });
        }
        let timeout = self.inner.lock_timeout;
        match file.lock(page, timeout) {
            Ok(guard) => Ok(Some(guard)),
            Err(LockError::Moved) => {
                self.follow(file)?;
                Ok(None)
            }
            Err(e) => Err(file.lock_error(e, LockRole::Page, page, timeout)),
        }
    }

    /// Locks page `page` of `file` for reading (see [`read_page`](Self::read_page)): `None`
    /// if a resize moved it, as [`lock_page_at`](Self::lock_page_at).
    pub(crate) fn read_page_at<'s>(
        &'s self,
        file: &'s SharedFile,
        page: u32,
    ) -> Result<Option<Reader<'s>>> {
        if !self.inner.read_only {
            return Ok(self.lock_page_at(file, page)?.map(Reader::Write));
        }
        Ok(self.shared_page_at(file, page)?.map(Reader::Shared))
    }

    /// Takes page `page` of `file` shared, for a read that changes nothing (`validate`, the
    /// overflow check): `None` if a resize moved it, as [`lock_page_at`](Self::lock_page_at).
    pub(crate) fn shared_page_at<'s>(
        &'s self,
        file: &'s SharedFile,
        page: u32,
    ) -> Result<Option<ReadGuard<'s>>> {
        let timeout = self.inner.lock_timeout;
        match file.lock_shared(page, timeout) {
            Ok(guard) => Ok(Some(guard)),
            Err(LockError::Moved) => {
                self.follow(file)?;
                Ok(None)
            }
            Err(e) => Err(file.lock_error(e, LockRole::Page, page, timeout)),
        }
    }

    /// Visits every page of the file this handle uses, one page locked at a time by `take`
    /// ([`lock_page_at`](Self::lock_page_at), [`read_page_at`](Self::read_page_at) or
    /// [`shared_page_at`](Self::shared_page_at)), handing `visit` the state, the file, the
    /// page, its lock and what the walk visited before this file. `start` is called with the
    /// state before the walk over each file. Returns the state and the file the walk ended on.
    ///
    /// A resize met on the way (pages found moved: a move under way, stopped part way, or
    /// finished) does not start the walk over: the pages found moved are skipped, and the
    /// walk then visits every page of the successor, where [`Walked::counts`] says which
    /// entries it has not met yet (docs/format.md §2.5, "Walks").
    pub(crate) fn each_page<'s, G, S>(
        &'s self,
        take: TakePage<'s, G>,
        mut state: S,
        mut start: impl FnMut(&mut S, &'s SharedFile),
        mut visit: impl FnMut(&mut S, &'s SharedFile, u32, G, &Walked<'s>) -> Result<()>,
    ) -> Result<(S, &'s SharedFile)> {
        let mut walked = Walked::default();
        let mut file: &'s SharedFile = &self.inner.file;
        for _ in 0..MAX_FOLLOWS {
            if file.is_moved() {
                // Every page is in the successor: nothing here to visit.
                self.follow(file)?;
                file = file.successor()?;
                continue;
            }
            start(&mut state, file);
            let pages = file.geometry().num_pages;
            let mut visited = vec![false; pages as usize];
            for page in 0..pages {
                if let Some(guard) = take(self, file, page)? {
                    visited[page as usize] = true;
                    visit(&mut state, file, page, guard, &walked)?;
                }
            }
            if visited.iter().all(|&v| v) {
                return Ok((state, file));
            }
            walked.files.push((file, visited));
            file = file.successor()?;
        }
        Err(self.too_many_moves())
    }

    #[inline]
    pub(crate) fn now(&self) -> u32 {
        self.inner.clock.now_secs()
    }

    /// Locks the page of `loc` for a change (or a read that refreshes access times and
    /// counts), in the file this handle uses now, following any resize that moved it.
    #[inline(always)]
    pub(crate) fn lock_page(&self, loc: Loc) -> Result<PageGuard<'_>> {
        let file: &SharedFile = &self.inner.file;
        match self.try_lock_page(file, loc) {
            Ok(guard) => Ok(guard),
            Err(e) => self.lock_page_failed(file, loc, e),
        }
    }

    /// [`lock_page`](Self::lock_page)'s common case, a page of the handle's file taken at
    /// once: the guard as the lock built it, or the store's small error for
    /// [`lock_page_failed`](Self::lock_page_failed) to act on (a move to follow, a read-only
    /// handle, an error to build). A hot path (`store`) matches on this itself, so the guard
    /// goes from the lock to its frame without passing through a `Result` with the crate's
    /// large `Error`, whose copy (a struct just written field by field, read back in wide
    /// loads that wait for those writes) was a hot spot of a `set`.
    #[inline(always)]
    fn try_lock_page<'s>(
        &'s self,
        file: &'s SharedFile,
        loc: Loc,
    ) -> std::result::Result<PageGuard<'s>, LockError> {
        if self.inner.read_only {
            return Err(LockError::ReadOnly);
        }
        file.lock(loc.page(file.geometry().num_pages), self.inner.lock_timeout)
    }

    /// [`lock_page`](Self::lock_page)'s way on when its first try on `file` failed with `e`.
    #[cold]
    #[inline(never)]
    fn lock_page_failed<'s>(
        &'s self,
        file: &'s SharedFile,
        loc: Loc,
        e: LockError,
    ) -> Result<PageGuard<'s>> {
        let page = loc.page(file.geometry().num_pages);
        match e {
            LockError::Moved => {
                self.follow(file)?;
                self.lock_page_from(file.successor()?, loc)
            }
            e => Err(file.lock_error(e, LockRole::Page, page, self.inner.lock_timeout)),
        }
    }

    /// [`lock_page`](Self::lock_page) starting at `from` (a file this handle used), following
    /// any resize that moved it.
    #[inline(always)]
    pub(crate) fn lock_page_from<'s>(
        &'s self,
        from: &'s SharedFile,
        loc: Loc,
    ) -> Result<PageGuard<'s>> {
        self.follow_moves(from, |file| {
            self.lock_page_at(file, loc.page(file.geometry().num_pages))
        })
    }

    pub(crate) fn corrupt(&self, page: u32, c: Corrupt) -> Error {
        Error::PageCorrupt {
            path: self.path().to_path_buf(),
            page,
            reason: c.0,
        }
    }

    // --- Routing: page or overflow area (one decision, `SharedFile::route`) ---

    /// For the batch stores, which refuse the batch before storing any of it: each entry must
    /// fit an empty page or the overflow area (single stores learn this as they store).
    pub(crate) fn check_size(&self, req: &NewEntry<'_>) -> Result<()> {
        self.check_size_in(&self.inner.file, req)
    }

    /// [`check_size`](Self::check_size) against `file`, the file a batch is about to store in
    /// (past a resize, not necessarily the handle's when the batch began).
    pub(super) fn check_size_in(&self, file: &SharedFile, req: &NewEntry<'_>) -> Result<()> {
        match file.route(req) {
            Route::Page | Route::Overflow => Ok(()),
            Route::TooLarge => Err(self.refused_in(file, req)),
        }
    }

    /// The error for `req`, which neither a page nor the overflow area takes
    /// ([`Route::TooLarge`]): over `max_value_size` in a file with an area, else over a page.
    pub(super) fn refused(&self, req: &NewEntry<'_>) -> Error {
        self.refused_in(&self.inner.file, req)
    }

    /// [`refused`](Self::refused) with `file`'s limits: the file the store was routed in.
    pub(super) fn refused_in(&self, file: &SharedFile, req: &NewEntry<'_>) -> Error {
        if file.overflow().is_some() {
            Error::ValueTooLarge {
                path: self.path().to_path_buf(),
                len: req.value.len(),
                max: file.max_value_size(),
            }
        } else {
            self.too_large_in(file, req)
        }
    }

    /// The error for `req`, whose entry does not fit an empty page of `file` (the file of the
    /// page that refused it).
    pub(super) fn too_large_in(&self, file: &SharedFile, req: &NewEntry<'_>) -> Error {
        let g = file.geometry();
        Error::TooLarge {
            path: self.path().to_path_buf(),
            needed: req.entry_size().unwrap_or(usize::MAX),
            max: max_entry_size(g.page_size as usize, g.start_slots),
        }
    }

    // --- end of routing ---

    /// Reads `key` under its page lock and hands the entry to `f`. A page found damaged is
    /// reset and the key reads as absent.
    pub(crate) fn read<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(&EntryRef<'_>) -> R,
    ) -> Result<Option<R>> {
        let (page, slot_hash) = self.locate(key);
        let now = self.now();
        self.read_at(page, slot_hash, key, now, f)
    }

    /// As [`read_at`](Self::read_at), the live value copied out (a large value checked as it
    /// is copied, in one pass) and handed to `f` with the entry's other fields (its `value`
    /// empty, its flags without the overflow bit).
    pub(super) fn read_owned_at<R>(
        &self,
        page: Loc,
        slot_hash: u32,
        key: &[u8],
        now: u32,
        f: impl FnOnce(Vec<u8>, &EntryRef<'_>) -> R,
    ) -> Result<Option<R>> {
        let mut reader = self.read_page(page)?;
        Ok(reader.get_owned(slot_hash, key, now, self.inner.stats, f))
    }

    /// [`read_owned_at`](Self::read_owned_at) for `key`, located here.
    pub(crate) fn read_owned<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(Vec<u8>, &EntryRef<'_>) -> R,
    ) -> Result<Option<R>> {
        let (page, slot_hash) = self.locate(key);
        let now = self.now();
        self.read_owned_at(page, slot_hash, key, now, f)
    }

    pub(super) fn read_at<R>(
        &self,
        page: Loc,
        slot_hash: u32,
        key: &[u8],
        now: u32,
        f: impl FnOnce(&EntryRef<'_>) -> R,
    ) -> Result<Option<R>> {
        let mut reader = self.read_page(page)?;
        Ok(reader.get(slot_hash, key, now, self.inner.stats, f))
    }

    /// Reads `key` without a lock where the file allows (robust locks: see the store's
    /// optimistic reads), copying its live entry into `out`: `Some(found)`, or `None` when
    /// only the lock can answer. As a `read`, it counts in the statistics and refreshes the
    /// entry's access time, as a locked read does (a read-only handle only looks).
    #[inline]
    pub(super) fn read_unlocked(
        &self,
        loc: Loc,
        slot_hash: u32,
        key: &[u8],
        now: u32,
        read: bool,
        out: &mut Copied,
    ) -> Option<bool> {
        let access = match (read && !self.inner.read_only, self.inner.stats) {
            (false, _) => Access::Look,
            (true, false) => Access::Read,
            (true, true) => Access::CountedRead,
        };
        let file: &SharedFile = &self.inner.file;
        let page = loc.page(file.geometry().num_pages);
        match file.read_optimistic(page, slot_hash, key, now, access, out) {
            ReadOutcome::Hit => Some(true),
            ReadOutcome::Miss => Some(false),
            ReadOutcome::Locked => None,
        }
    }

    /// Locks the page of `loc` for reading: the ordinary lock, or a shared one for a
    /// read-only handle, following any resize that moved it.
    pub(super) fn read_page(&self, loc: Loc) -> Result<Reader<'_>> {
        self.follow_moves(&self.inner.file, |file| {
            self.read_page_at(file, loc.page(file.geometry().num_pages))
        })
    }

    /// Stores under a held lock. A page found damaged is reset and the store retried once on
    /// the fresh page.
    pub(crate) fn store_locked(
        &self,
        guard: &mut PageGuard<'_>,
        req: &NewEntry<'_>,
        now: u32,
    ) -> Result<StoreOutcome> {
        // The page's own file (past a resize, not necessarily the handle's) decides.
        let file = guard.place().file;
        let slots = file.geometry().start_slots;
        // Native pages change under a busy marker, so an overwrite of the same size may be
        // made in place (see `PageMut::store_with`); Cache::FastMmap's pages have no marker.
        let in_place = file.layout() == Layout::Native;
        match file.route(req) {
            Route::Page => {}
            Route::Overflow => return self.store_large(guard, req, now, in_place),
            Route::TooLarge => return Err(self.refused_in(file, req)),
        }
        let outcome = match guard.change(|p| p.store_with(req, now, slots, in_place)) {
            Ok(outcome) => outcome,
            Err(_) => guard
                .change(|p| p.store_with(req, now, slots, in_place))
                .map_err(|c| self.corrupt(guard.page_index(), c))?,
        };
        if outcome == StoreOutcome::TooLarge {
            return Err(self.too_large_in(file, req));
        }
        Ok(outcome)
    }

    pub(crate) fn store(&self, req: &NewEntry<'_>, loc: Loc, now: u32) -> Result<StoreOutcome> {
        let file: &SharedFile = &self.inner.file;
        // The page's lock row, header and the key's first slot are on their way while the lock
        // is taken (a hint only; see `prefetch_page`).
        file.prefetch_page(loc.page(file.geometry().num_pages), req.slot_hash);
        let mut guard = match self.try_lock_page(file, loc) {
            Ok(guard) => guard,
            Err(e) => self.lock_page_failed(file, loc, e)?,
        };
        // Rebuilt rather than passed on whole: `Ok` is a tag and a byte, where moving the
        // `Result` copies the room its large `Error` takes, just written, in wide loads that
        // wait for the writes.
        match self.store_locked(&mut guard, req, now) {
            Ok(outcome) => Ok(outcome),
            Err(Error::OverflowFull { needed, .. }) => {
                self.store_after_overflow_full(guard, req, loc, now, needed)
            }
            Err(e) => Err(e),
        }
    }

    /// [`store`](Self::store)'s way on when the overflow area had no room for `req`'s value:
    /// room is made in other pages with this one let go (a page lock is never waited for while
    /// another is held), then the store is tried once more.
    #[cold]
    #[inline(never)]
    fn store_after_overflow_full(
        &self,
        guard: PageGuard<'_>,
        req: &NewEntry<'_>,
        loc: Loc,
        now: u32,
        needed: u32,
    ) -> Result<StoreOutcome> {
        let at = guard.place();
        drop(guard);
        self.evict_overflow_elsewhere(at, needed, now)?;
        let mut guard = self.lock_page(loc)?;
        self.store_locked(&mut guard, req, now)
    }

    pub(crate) fn request<'k>(
        &self,
        key: &'k [u8],
        value: &'k [u8],
        expiry: Expiry,
        now: u32,
    ) -> (Loc, NewEntry<'k>) {
        let (page, slot_hash) = self.locate(key);
        let expire_on = expiry.expire_on(now, self.inner.default_expiry);
        (
            page,
            NewEntry {
                slot_hash,
                key,
                value,
                expire_on,
                flags: 0,
                modseq: None,
            },
        )
    }
}

impl Cache {
    /// `reset`: wipe every page; otherwise (`verify`) validate every page and reset bad ones.
    pub(crate) fn prepare(&self, wipe: bool) -> Result<()> {
        let hash = self.inner.hash;
        let (_, file) = self.each_page(
            Cache::lock_page_at,
            Vec::new(),
            // Pages holding overflow blocks have them checked, and those no entry references
            // freed (a wipe frees them all: no scan of the block rows then).
            |owners, file| {
                *owners = if wipe {
                    Vec::new()
                } else {
                    file.overflow_owners()
                }
            },
            |owners, file, page, mut guard, _| {
                let g = file.geometry();
                let slot_hash = move |key: &[u8]| hash.locate(key, g.num_pages).1;
                if wipe {
                    guard.wipe();
                } else if let Err(c) = check_page(guard.bytes(), g.start_slots, Some(&slot_hash)) {
                    guard.reset_for(c);
                }
                if owners.get(page as usize) == Some(&true) {
                    guard.sweep_overflow();
                }
                Ok(())
            },
        )?;
        file.overflow_free_unowned(false);
        Ok(())
    }

    /// Validates every page fully, one locked at a time, without repairing anything: the
    /// problems found, one per bad page. (Normal operations reset a page whose header is
    /// damaged when they lock it; opening with [`CacheBuilder::verify`] resets every bad page.)
    ///
    /// # Errors
    /// Lock errors.
    pub fn validate(&self) -> Result<Vec<PageProblem>> {
        let hash = self.inner.hash;
        let (problems, _) = self.each_page(
            // A shared lock: validating reads the page and changes nothing.
            Cache::shared_page_at,
            Vec::new(),
            |_, _| {},
            |problems, file, page, guard, _| {
                let g = file.geometry();
                let slot_hash = move |key: &[u8]| hash.locate(key, g.num_pages).1;
                let problem = match guard.as_is() {
                    (_, Some(p)) => Some(p),
                    (bytes, None) => check_page(bytes, g.start_slots, Some(&slot_hash)).err(),
                };
                if let Some(reason) = problem {
                    problems.push(PageProblem {
                        page,
                        reason: reason.0,
                    });
                }
                Ok(())
            },
        )?;
        Ok(problems)
    }
}

/// A page that failed [`Cache::validate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PageProblem {
    /// The page.
    pub page: u32,
    /// What is wrong with it.
    pub reason: &'static str,
}
