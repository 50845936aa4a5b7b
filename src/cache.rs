//! The public cache API: joins the key hash, the page locks and the page operations.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::builder::CacheBuilder;
use crate::clock::{Clock, from_unix_secs};
use crate::expiry::Expiry;
use crate::layout::KeyHash;
use crate::page::format::{
    FLAG_COMPRESSION, FLAG_DIRTY, FLAG_HAS_MODSEQ, FLAG_TOMBSTONE, FLAG_UNDEF, FLAG_UTF8_KEY,
    FLAG_UTF8_VALUE, max_entry_size,
};
use crate::page::{
    Copied, Corrupt, EntryRef, Evict, NewEntry, PageHeader, StoreOutcome, check_page,
};
use crate::stats::{PageStats, Stats};
use crate::store::{Access, Geometry, PageGuard, ReadGuard, ReadOutcome, SharedFile};
use crate::{Error, Layout, LockRole, Result};

/// A cache in one memory-mapped file, shared by every thread and process that opens it.
///
/// Cloning is cheap and shares the handle. See the [crate documentation](crate) for the model.
#[derive(Clone)]
pub struct Cache {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) file: Arc<SharedFile>,
    pub(crate) geometry: Geometry,
    pub(crate) hash: KeyHash,
    pub(crate) default_expiry: Option<u32>,
    pub(crate) clock: Clock,
    pub(crate) stats: bool,
    /// Opened with `read_only`: every change is refused, reads change nothing.
    pub(crate) read_only: bool,
    pub(crate) lock_timeout: Option<Duration>,
    /// A backing store and/or compression between callers and the pages (`None`: values are
    /// stored and returned as they are, and nothing else is called).
    pub(crate) layer: Option<crate::backing::Layer>,
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

/// What [`Cache::update`] should do with the key, decided from its current value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// Leave the entry as it is.
    Keep,
    /// NewEntry this value, with the default expiry.
    Set(Vec<u8>),
    /// NewEntry this value with this expiry.
    SetWith(Vec<u8>, Expiry),
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
const RESERVED_FLAGS: u32 = FLAG_TOMBSTONE | FLAG_HAS_MODSEQ | FLAG_DIRTY | FLAG_COMPRESSION;

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
    fn from_copied(c: Copied) -> Entry {
        Entry {
            expires_at: (c.expire_on != 0).then(|| from_unix_secs(c.expire_on)),
            last_access: from_unix_secs(c.last_access),
            modseq: c.modseq,
            flags: EntryFlags(c.flags),
            value: c.value,
        }
    }

    pub(crate) fn from_ref(e: &EntryRef<'_>) -> Entry {
        Entry {
            value: e.value.to_vec(),
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
    pub fn lock_kind(&self) -> crate::LockKind {
        self.inner.file.lock_kind()
    }

    /// Number of pages.
    pub fn num_pages(&self) -> u32 {
        self.inner.geometry.num_pages
    }

    /// Page size in bytes.
    pub fn page_size(&self) -> u32 {
        self.inner.geometry.page_size
    }

    /// Slots each page starts with.
    pub fn start_slots(&self) -> u32 {
        self.inner.geometry.start_slots
    }

    /// The largest entry (24-byte header, key, value, padded to 4 bytes) a page holds.
    pub fn max_entry_size(&self) -> usize {
        max_entry_size(
            self.inner.geometry.page_size as usize,
            self.inner.geometry.start_slots,
        )
    }

    /// The clock this cache reads.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    #[inline]
    pub(crate) fn locate(&self, key: &[u8]) -> (u32, u32) {
        self.inner.hash.locate(key, self.inner.geometry.num_pages)
    }

    #[inline]
    pub(crate) fn now(&self) -> u32 {
        self.inner.clock.now_secs()
    }

    /// Locks `page` for a change (or a read that refreshes access times and counts).
    #[inline(always)]
    pub(crate) fn lock_page(&self, page: u32) -> Result<PageGuard<'_>> {
        if self.inner.read_only {
            return Err(Error::ReadOnly {
                path: self.path().to_path_buf(),
            });
        }
        let timeout = self.inner.lock_timeout;
        self.inner
            .file
            .lock(page, timeout)
            .map_err(|e| self.inner.file.lock_error(e, LockRole::Page, page, timeout))
    }

    pub(crate) fn corrupt(&self, page: u32, c: Corrupt) -> Error {
        Error::PageCorrupt {
            path: self.path().to_path_buf(),
            page,
            reason: c.0,
        }
    }

    /// For the batch stores, which refuse the batch before storing any of it: each entry must
    /// fit an empty page (single stores learn this from the page).
    pub(crate) fn check_size(&self, req: &NewEntry<'_>) -> Result<()> {
        match req.entry_size() {
            Some(needed) if needed <= self.max_entry_size() => Ok(()),
            _ => Err(self.too_large(req)),
        }
    }

    pub(crate) fn too_large(&self, req: &NewEntry<'_>) -> Error {
        Error::TooLarge {
            path: self.path().to_path_buf(),
            needed: req.entry_size().unwrap_or(usize::MAX),
            max: self.max_entry_size(),
        }
    }

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

    fn read_at<R>(
        &self,
        page: u32,
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
    fn read_unlocked(
        &self,
        page: u32,
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
        match self
            .inner
            .file
            .read_optimistic(page, slot_hash, key, now, access, out)
        {
            ReadOutcome::Hit => Some(true),
            ReadOutcome::Miss => Some(false),
            ReadOutcome::Locked => None,
        }
    }

    /// Locks `page` for reading: the ordinary lock, or a shared one for a read-only handle.
    fn read_page(&self, page: u32) -> Result<Reader<'_>> {
        if self.inner.read_only {
            let timeout = self.inner.lock_timeout;
            match self.inner.file.lock_shared(page, timeout) {
                Ok(guard) => Ok(Reader::Shared(guard)),
                Err(e) => Err(self.inner.file.lock_error(e, LockRole::Page, page, timeout)),
            }
        } else {
            Ok(Reader::Write(self.lock_page(page)?))
        }
    }

    /// Stores under a held lock. A page found damaged is reset and the store retried once on
    /// the fresh page.
    pub(crate) fn store_locked(
        &self,
        guard: &mut PageGuard<'_>,
        req: &NewEntry<'_>,
        now: u32,
    ) -> Result<StoreOutcome> {
        let slots = self.inner.geometry.start_slots;
        // Native pages change under a busy marker, so an overwrite of the same size may be
        // made in place (see `PageMut::store_with`); Cache::FastMmap's pages have no marker.
        let in_place = self.inner.file.layout() == Layout::Native;
        let outcome = match guard.change(|p| p.store_with(req, now, slots, in_place)) {
            Ok(outcome) => outcome,
            Err(_) => guard
                .change(|p| p.store_with(req, now, slots, in_place))
                .map_err(|c| self.corrupt(guard.page_index(), c))?,
        };
        if outcome == StoreOutcome::TooLarge {
            return Err(self.too_large(req));
        }
        Ok(outcome)
    }

    pub(crate) fn store(&self, req: &NewEntry<'_>, page: u32, now: u32) -> Result<StoreOutcome> {
        if let Some(size) = req.entry_size() {
            self.inner
                .file
                .prefetch_for_store(page, req.slot_hash, size);
        }
        let mut guard = self.lock_page(page)?;
        self.store_locked(&mut guard, req, now)
    }

    pub(crate) fn request<'k>(
        &self,
        key: &'k [u8],
        value: &'k [u8],
        expiry: Expiry,
        now: u32,
    ) -> (u32, NewEntry<'k>) {
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

    /// Stores `value` under `key` with the default expiry.
    ///
    /// Returns `false` only when a live tombstone left by [`remove_with_modseq`](Self::remove_with_modseq)
    /// refuses the store. Storing may evict other entries of the same page (least recently
    /// used first).
    ///
    /// With a backing store: [`WriteMode::Through`](crate::WriteMode::Through) stores in it
    /// first and leaves the cache as it was if that fails; [`WriteMode::Back`](crate::WriteMode::Back)
    /// marks the entry dirty. Dirty entries the store must evict are written back first.
    ///
    /// # Errors
    /// [`Error::TooLarge`] if the entry cannot fit in an empty page (the old value stays);
    /// lock errors.
    /// With a [`Backing`](crate::Backing) store: [`Error::Backing`] (nothing was evicted); a
    /// dirty value to write back that does not decompress: [`Error::Decode`].
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<bool> {
        self.set_with(key, value, Expiry::Default)
    }

    /// Stores `value` under `key` with the given expiry. See [`set`](Self::set).
    ///
    /// # Errors
    /// As [`set`](Self::set).
    /// With a [`Backing`](crate::Backing) store: [`Error::Backing`]; a stored value that does not
    /// decompress: [`Error::Decode`].
    pub fn set_with(&self, key: &[u8], value: &[u8], expiry: Expiry) -> Result<bool> {
        if let Some(layer) = &self.inner.layer {
            return self.set_layered(layer, key, value, expiry, 0);
        }
        let now = self.now();
        let (page, req) = self.request(key, value, expiry, now);
        Ok(self.store(&req, page, now)? != StoreOutcome::Refused)
    }

    /// Stores `value` under `key` with explicit flag bits (for example the UTF-8 flags Perl
    /// reads). Tombstone, modseq, dirty and compression bits are not accepted here and are
    /// cleared.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] if `flags` has [`EntryFlags::UNDEF`] and `value` is not empty
    /// (Perl would read `undef` and lose the bytes; store undef with an empty value), before
    /// anything is changed; otherwise as [`set`](Self::set).
    pub fn set_with_flags(
        &self,
        key: &[u8],
        value: &[u8],
        expiry: Expiry,
        flags: EntryFlags,
    ) -> Result<bool> {
        if flags.is_undef() && !value.is_empty() {
            return Err(Error::InvalidValue {
                path: self.path().to_path_buf(),
                reason: format!(
                    "the undef flag (0x20000000) with a value of {} bytes: Perl would read \
                     undef and lose them (store undef with an empty value)",
                    value.len()
                ),
            });
        }
        let flags = flags.0 & !RESERVED_FLAGS;
        if let Some(layer) = &self.inner.layer {
            return self.set_layered(layer, key, value, expiry, flags);
        }
        let now = self.now();
        let (page, mut req) = self.request(key, value, expiry, now);
        req.flags = flags;
        Ok(self.store(&req, page, now)? != StoreOutcome::Refused)
    }

    /// The value stored under `key`, if it is present and not expired.
    ///
    /// # Errors
    /// Lock errors.
    /// With a [`Backing`](crate::Backing) store: [`Error::Backing`]; a stored value that does not
    /// decompress: [`Error::Decode`].
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(layer) = &self.inner.layer {
            return self.get_layered(layer, key);
        }
        let (page, slot_hash) = self.locate(key);
        let now = self.now();
        let mut copied = Copied::default();
        if let Some(hit) = self.read_unlocked(page, slot_hash, key, now, true, &mut copied) {
            return Ok(hit.then_some(copied.value));
        }
        self.read_at(page, slot_hash, key, now, |e| e.value.to_vec())
    }

    /// Calls `f` with the value in place, under the page lock, without copying it.
    ///
    /// `f` must not call back into this cache (that returns [`Error::Reentrant`]); keep it
    /// short, since it holds up every other user of the page.
    ///
    /// # Errors
    /// Lock errors.
    /// With a [`Backing`](crate::Backing) store: [`Error::Backing`]; a stored value that does not
    /// decompress: [`Error::Decode`].
    pub fn get_with<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>> {
        if let Some(layer) = &self.inner.layer {
            return Ok(self.get_layered(layer, key)?.map(|v| f(&v)));
        }
        self.read(key, |e| f(e.value))
    }

    /// The value with its expiry time, last access time, modseq and flags.
    ///
    /// # Errors
    /// Lock errors.
    /// With a [`Backing`](crate::Backing) store: [`Error::Backing`]; a stored value that does not
    /// decompress: [`Error::Decode`].
    pub fn entry(&self, key: &[u8]) -> Result<Option<Entry>> {
        if self.inner.layer.is_some() {
            return self.entry_layered(key);
        }
        let (page, slot_hash) = self.locate(key);
        let now = self.now();
        let mut copied = Copied::default();
        if let Some(hit) = self.read_unlocked(page, slot_hash, key, now, true, &mut copied) {
            return Ok(hit.then(|| Entry::from_copied(copied)));
        }
        self.read_at(page, slot_hash, key, now, Entry::from_ref)
    }

    /// Whether `key` holds a live value. Does not count as a read or refresh the entry.
    ///
    /// # Errors
    /// Lock errors.
    pub fn contains_key(&self, key: &[u8]) -> Result<bool> {
        let (page, slot_hash) = self.locate(key);
        let now = self.now();
        // With a backing store, a key cached as absent (`cache_not_found`) is not there.
        let negative = self
            .inner
            .layer
            .as_ref()
            .is_some_and(|l| l.backing.is_some());
        let mut copied = Copied::default();
        if let Some(found) = self.read_unlocked(page, slot_hash, key, now, false, &mut copied) {
            return Ok(found && !(negative && copied.flags & FLAG_UNDEF != 0));
        }
        let mut reader = self.read_page(page)?;
        Ok(reader
            .peek(slot_hash, key, now, |e| {
                !(negative && e.flags & FLAG_UNDEF != 0)
            })
            .unwrap_or(false))
    }

    /// Removes `key`. Returns whether it held a live value. With a backing store, the key is
    /// deleted from the store first, and the cache is left as it was if that fails.
    ///
    /// # Errors
    /// Lock errors.
    /// With a [`Backing`](crate::Backing) store: [`Error::Backing`]; a stored value that does not
    /// decompress: [`Error::Decode`].
    pub fn remove(&self, key: &[u8]) -> Result<bool> {
        if let Some(layer) = &self.inner.layer {
            return self.remove_layered(layer, key);
        }
        let (page, slot_hash) = self.locate(key);
        let now = self.now();
        let mut guard = self.lock_page(page)?;
        Ok(guard
            .change(|p| p.remove(slot_hash, key, now))
            .ok()
            .flatten()
            .is_some_and(|r| r.was_live))
    }

    /// Removes `key` and returns its value (Cache::FastMmap's `get_and_remove`).
    ///
    /// # Errors
    /// Lock errors.
    /// With a [`Backing`](crate::Backing) store: [`Error::Backing`]; a stored value that does not
    /// decompress: [`Error::Decode`].
    pub fn take(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(layer) = &self.inner.layer {
            return self.take_layered(layer, key);
        }
        let (page, slot_hash) = self.locate(key);
        let now = self.now();
        let mut guard = self.lock_page(page)?;
        let value = read_locked(&mut guard, slot_hash, key, now, self.inner.stats, |e| {
            e.value.to_vec()
        });
        if value.is_some() {
            let _ = guard.change(|p| p.remove(slot_hash, key, now));
        }
        Ok(value)
    }

    /// Atomic read-modify-write (Cache::FastMmap's `get_and_set`): `f` sees the current value
    /// (or `None`) under the page lock and decides what happens to it. Returns the value the
    /// key holds afterwards.
    ///
    /// `f` must not call back into this cache ([`Error::Reentrant`]).
    ///
    /// With a write-back store, a new value that needs room taken from dirty entries waits
    /// until they are written back (the page is unlocked meanwhile, never while `f` runs). If
    /// a write-back `set` of the key from elsewhere lands in that moment, the update counts as
    /// made just before it: it returns its value, and the `set`'s value replaces it.
    ///
    /// # Errors
    /// [`Error::TooLarge`] if `f` asks to store a value that cannot fit (nothing changes);
    /// [`Error::Backing`] if dirty entries in the way cannot be written back (nothing is
    /// stored); lock errors.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = fastmmap::Cache::open(dir.path().join("c")).unwrap();
    /// use fastmmap::Update;
    /// for _ in 0..3 {
    ///     cache.update(b"hits", |old| {
    ///         let n = old.map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap()));
    ///         Update::Set((n + 1).to_le_bytes().to_vec())
    ///     })?;
    /// }
    /// assert_eq!(cache.get(b"hits")?, Some(3u64.to_le_bytes().to_vec()));
    /// # Ok::<(), fastmmap::Error>(())
    /// ```
    pub fn update(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> Update,
    ) -> Result<Option<Vec<u8>>> {
        self.update_inner(key, |e| (f(e.map(|e| e.value)), ()))
            .map(|(value, ())| value)
    }

    /// Read-through: the value under `key`, or else `f()` computed outside the lock and stored.
    /// If another writer stored the key meanwhile, its value wins and is returned.
    ///
    /// # Errors
    /// [`Error::TooLarge`] if the computed value cannot fit; [`Error::ReadOnly`] on a miss
    /// through a read-only handle; lock errors.
    pub fn get_or_insert_with(&self, key: &[u8], f: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>> {
        if let Some(layer) = &self.inner.layer {
            return self.get_or_insert_layered(layer, key, f);
        }
        if let Some(v) = self.get(key)? {
            return Ok(v);
        }
        if self.inner.read_only {
            // Refused before `f` does work whose result could not be stored.
            return Err(Error::ReadOnly {
                path: self.path().to_path_buf(),
            });
        }
        let value = f();
        let now = self.now();
        let (page, req) = self.request(key, &value, Expiry::Default, now);
        let mut guard = self.lock_page(page)?;
        if let Some(existing) = read_locked(&mut guard, req.slot_hash, key, now, false, |e| {
            e.value.to_vec()
        }) {
            return Ok(existing);
        }
        self.store_locked(&mut guard, &req, now)?;
        Ok(value)
    }

    /// Values of many keys, in the order given, locking each page touched once.
    ///
    /// # Errors
    /// Lock errors.
    /// With a [`Backing`](crate::Backing) store: [`Error::Backing`]; a stored value that does not
    /// decompress: [`Error::Decode`].
    pub fn get_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>> {
        if let Some(layer) = &self.inner.layer {
            return keys
                .iter()
                .map(|k| self.get_layered(layer, k.as_ref()))
                .collect();
        }
        let mut out = vec![None; keys.len()];
        let now = self.now();
        for (page, group) in self.group_by_page(keys.iter().map(AsRef::as_ref)) {
            let mut reader = self.read_page(page)?;
            for (i, slot_hash) in group {
                out[i] = reader.get(slot_hash, keys[i].as_ref(), now, self.inner.stats, |e| {
                    e.value.to_vec()
                });
            }
        }
        Ok(out)
    }

    /// Stores many pairs with the default expiry, locking each page touched once. Returns how
    /// many were stored (fewer than given only when tombstones refuse some).
    ///
    /// # Errors
    /// [`Error::TooLarge`] if any pair cannot fit, before anything is stored; lock errors.
    /// With a [`Backing`](crate::Backing) store: [`Error::Backing`]; a stored value that does not
    /// decompress: [`Error::Decode`].
    pub fn set_many<K: AsRef<[u8]>, V: AsRef<[u8]>>(&self, pairs: &[(K, V)]) -> Result<usize> {
        if let Some(layer) = &self.inner.layer {
            return self.set_many_layered(layer, pairs);
        }
        let now = self.now();
        let reqs: Vec<(u32, NewEntry<'_>)> = pairs
            .iter()
            .map(|(k, v)| self.request(k.as_ref(), v.as_ref(), Expiry::Default, now))
            .collect();
        for (_, req) in &reqs {
            self.check_size(req)?;
        }
        let mut stored = 0;
        for (page, group) in self.group_by_page(pairs.iter().map(|(k, _)| k.as_ref())) {
            let mut guard = self.lock_page(page)?;
            for (i, _) in group {
                if self.store_locked(&mut guard, &reqs[i].1, now)? != StoreOutcome::Refused {
                    stored += 1;
                }
            }
        }
        Ok(stored)
    }

    /// Groups key indexes by page, pages in ascending order.
    fn group_by_page<'k>(
        &self,
        keys: impl Iterator<Item = &'k [u8]>,
    ) -> Vec<(u32, Vec<(usize, u32)>)> {
        let mut located: Vec<(u32, usize, u32)> = keys
            .enumerate()
            .map(|(i, k)| {
                let (p, s) = self.locate(k);
                (p, i, s)
            })
            .collect();
        located.sort_unstable_by_key(|&(p, i, _)| (p, i));
        let mut groups: Vec<(u32, Vec<(usize, u32)>)> = Vec::new();
        for (page, i, slot_hash) in located {
            match groups.last_mut() {
                Some((p, g)) if *p == page => g.push((i, slot_hash)),
                _ => groups.push((page, vec![(i, slot_hash)])),
            }
        }
        groups
    }

    /// The page-key form of Cache::FastMmap: `page_key` picks one page, and each key is stored
    /// there as `page_key-key`. Values come back in the order of `keys`.
    ///
    /// Such entries live in `page_key`'s page, not in the page their joined key hashes to, so
    /// reach them only through `multi_get`/`multi_set` (or `iter`), never `get`/`set`.
    ///
    /// # Errors
    /// Lock errors.
    pub fn multi_get<K: AsRef<[u8]>>(
        &self,
        page_key: &[u8],
        keys: &[K],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let (page, _) = self.locate(page_key);
        let now = self.now();
        let mut reader = self.read_page(page)?;
        Ok(keys
            .iter()
            .map(|k| {
                let full = joined_key(page_key, k.as_ref());
                let (_, slot_hash) = self.locate(&full);
                reader.get(slot_hash, &full, now, self.inner.stats, |e| {
                    e.value.to_vec()
                })
            })
            .collect())
    }

    /// Stores pairs in the page chosen by `page_key` (see [`multi_get`](Self::multi_get)), with
    /// the default expiry, under one lock. Returns how many were stored.
    ///
    /// # Errors
    /// [`Error::TooLarge`] if any pair cannot fit, before anything is stored; lock errors.
    pub fn multi_set<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        page_key: &[u8],
        pairs: &[(K, V)],
    ) -> Result<usize> {
        let (page, _) = self.locate(page_key);
        let now = self.now();
        let keys: Vec<Vec<u8>> = pairs
            .iter()
            .map(|(k, _)| joined_key(page_key, k.as_ref()))
            .collect();
        let reqs: Vec<NewEntry<'_>> = keys
            .iter()
            .zip(pairs)
            .map(|(full, (_, v))| self.request(full, v.as_ref(), Expiry::Default, now).1)
            .collect();
        for req in &reqs {
            self.check_size(req)?;
        }
        let mut guard = self.lock_page(page)?;
        let mut stored = 0;
        for req in &reqs {
            if self.store_locked(&mut guard, req, now)? != StoreOutcome::Refused {
                stored += 1;
            }
        }
        Ok(stored)
    }

    /// Stores `value` carrying `modseq`, unless the key holds a live value or tombstone with a
    /// newer modseq (a stale write-back must not overwrite a newer value). Returns whether it
    /// was stored.
    ///
    /// Entries stored this way carry an 8-byte prefix that Cache::FastMmap 1.57 does not
    /// understand: Perl would read it as part of the value.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn set_if_newer(&self, key: &[u8], value: &[u8], modseq: u64) -> Result<bool> {
        let now = self.now();
        let (page, mut req) = self.request(key, value, Expiry::Default, now);
        req.modseq = Some(modseq);
        Ok(self.store(&req, page, now)? != StoreOutcome::Refused)
    }

    /// Removes `key`, leaving a tombstone with `modseq` (expiring like an entry) that refuses
    /// later stores of older modseqs and plain stores. A tombstone reads as a miss. A newer
    /// value or tombstone already there is left alone.
    ///
    /// # Errors
    /// Lock errors.
    pub fn remove_with_modseq(&self, key: &[u8], modseq: u64) -> Result<()> {
        let now = self.now();
        let (page, mut req) = self.request(key, &[], Expiry::Default, now);
        req.flags = FLAG_TOMBSTONE;
        req.modseq = Some(modseq);
        self.store(&req, page, now).map(|_| ())
    }

    /// Drops expired entries from every page (one page locked at a time). Returns how many.
    /// With a backing store, expired dirty entries are written back first (Perl's
    /// `empty(1)`; Perl's `purge` drops them).
    ///
    /// # Errors
    /// Lock errors.
    /// With a [`Backing`](crate::Backing) store: [`Error::Backing`]; a stored value that does not
    /// decompress: [`Error::Decode`].
    pub fn purge(&self) -> Result<usize> {
        if self.has_backing() {
            return self.evict_all_keeping_dirty(Evict::Expired);
        }
        self.evict_all(Evict::Expired)
    }

    /// Drops every entry (one page locked at a time). With a backing store, dirty entries are
    /// written back first, as [`empty`](Self::empty) does (Perl's `clear` drops them).
    ///
    /// # Errors
    /// Lock errors.
    /// With a [`Backing`](crate::Backing) store: [`Error::Backing`]; a stored value that does not
    /// decompress: [`Error::Decode`].
    pub fn clear(&self) -> Result<()> {
        if self.has_backing() {
            return self.evict_all_keeping_dirty(Evict::All).map(|_| ());
        }
        self.evict_all(Evict::All).map(|_| ())
    }

    fn evict_all(&self, mode: Evict) -> Result<usize> {
        let now = self.now();
        let slots = self.inner.geometry.start_slots;
        let mut total = 0;
        for page in 0..self.num_pages() {
            let mut guard = self.lock_page(page)?;
            total += self
                .change_counting(&mut guard, |p| p.evict(mode, now, slots))
                .unwrap_or(0);
        }
        Ok(total)
    }

    /// Statistics for the whole cache and each page (one page locked at a time).
    ///
    /// # Errors
    /// Lock errors.
    pub fn stats(&self) -> Result<Stats> {
        let mut stats = Stats::default();
        for page in 0..self.num_pages() {
            let h = self.read_page(page)?.header();
            stats.add(PageStats {
                entries: h.num_slots.saturating_sub(h.free_slots),
                slots: h.num_slots,
                used_bytes: h.used_bytes(),
                free_bytes: h.free_bytes,
                reads: h.n_reads,
                hits: h.n_read_hits,
                resets: self.inner.file.resets(page),
            });
        }
        stats.dirty_lost = self.inner.file.dirty_lost(false);
        self.inner.file.faults.report(&mut stats);
        Ok(stats)
    }

    /// Zeroes the read, hit and reset counters, and this process's fault counters.
    ///
    /// # Errors
    /// Lock errors.
    pub fn reset_stats(&self) -> Result<()> {
        for page in 0..self.num_pages() {
            let mut guard = self.lock_page(page)?;
            let _ = guard.page().reset_stats();
            self.inner.file.clear_resets(page);
        }
        self.inner.file.dirty_lost(true);
        self.inner.file.faults.clear();
        Ok(())
    }

    /// Every live entry, page by page: each page is locked only while its entries are copied
    /// out, so the iterator holds no lock between calls and the cache may change under it.
    pub fn iter(&self) -> Iter {
        Iter {
            cache: self.clone(),
            next_page: 0,
            buffered: Vec::new(),
        }
    }

    /// Every live key, page by page (see [`iter`](Self::iter)).
    pub fn keys(&self) -> impl Iterator<Item = Result<Vec<u8>>> + use<> {
        self.iter().map(|r| r.map(|(k, _)| k))
    }

    /// Whether an entry found in `page` with this stored slot hash could have been stored
    /// under `key`: by `set` (the key hashes to both), or by `multi_set` (the key is
    /// `page_key-…` for a page key of this page).
    fn belongs(&self, key: &[u8], page: u32, slot_hash: u32) -> bool {
        let (key_page, key_slot_hash) = self.locate(key);
        key_slot_hash == slot_hash
            && (key_page == page
                || key
                    .iter()
                    .enumerate()
                    .any(|(i, &b)| b == b'-' && self.locate(&key[..i]).0 == page))
    }

    /// The live entries of one page, copied out under its lock.
    fn page_entries(&self, page: u32) -> Result<Vec<(Vec<u8>, Entry)>> {
        let now = self.now();
        let mut reader = self.read_page(page)?;
        let mut out = Vec::new();
        // A key whose bytes were damaged no longer hashes to the slot hash stored with it
        // (lookups never match it); here it would come out as a key that was never stored.
        let mut damaged = false;
        let walked = reader.for_each_entry(|e| {
            if !self.belongs(e.key, page, e.slot_hash) {
                damaged = true;
            } else if !crate::page::format::is_expired(e.expire_on, now)
                && e.flags & FLAG_TOMBSTONE == 0
            {
                out.push((e.key.to_vec(), Entry::from_ref(&e)));
            }
        });
        if walked.is_err() || damaged {
            reader.reset();
            out.clear();
        }
        drop(reader);
        if self.inner.layer.is_some() {
            for (key, entry) in &mut out {
                self.decode_entry(key, entry)?;
            }
        }
        Ok(out)
    }
}

/// Iterator over a cache's live entries; see [`Cache::iter`].
pub struct Iter {
    cache: Cache,
    next_page: u32,
    buffered: Vec<(Vec<u8>, Entry)>,
}

impl Iterator for Iter {
    type Item = Result<(Vec<u8>, Entry)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.buffered.pop() {
                return Some(Ok(item));
            }
            if self.next_page >= self.cache.num_pages() {
                return None;
            }
            let page = self.next_page;
            self.next_page += 1;
            match self.cache.page_entries(page) {
                Ok(mut entries) => {
                    entries.reverse();
                    self.buffered = entries;
                }
                Err(e) => {
                    self.next_page = self.cache.num_pages();
                    return Some(Err(e));
                }
            }
        }
    }
}

fn joined_key(page_key: &[u8], key: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(page_key.len() + 1 + key.len());
    full.extend_from_slice(page_key);
    full.push(b'-');
    full.extend_from_slice(key);
    full
}

/// A page locked for reading. Through the ordinary lock, reads refresh access times and count
/// (when statistics are on), and a damaged page is reset. Through a read-only handle's shared
/// lock, reads change nothing, and a damaged page reads as empty (it cannot be repaired).
enum Reader<'a> {
    Write(PageGuard<'a>),
    Shared(ReadGuard<'a>),
}

impl Reader<'_> {
    /// `key`'s live entry handed to `f`, as a read.
    fn get<R>(
        &mut self,
        slot_hash: u32,
        key: &[u8],
        now: u32,
        stats: bool,
        f: impl FnOnce(&EntryRef<'_>) -> R,
    ) -> Option<R> {
        match self {
            Reader::Write(guard) => read_locked(guard, slot_hash, key, now, stats, f),
            Reader::Shared(_) => self.peek(slot_hash, key, now, f),
        }
    }

    /// `key`'s live entry handed to `f`, without counting a read or refreshing the entry.
    fn peek<R>(
        &mut self,
        slot_hash: u32,
        key: &[u8],
        now: u32,
        f: impl FnOnce(&EntryRef<'_>) -> R,
    ) -> Option<R> {
        let found = match self {
            Reader::Write(guard) => guard
                .page()
                .peek(slot_hash, key, now)
                .map(|e| e.map(|e| f(&e))),
            Reader::Shared(guard) => match guard.page() {
                Some(page) => page.peek(slot_hash, key, now).map(|e| e.map(|e| f(&e))),
                None => Ok(None),
            },
        };
        found.unwrap_or_else(|_| {
            self.reset();
            None
        })
    }

    /// The page header, for statistics: a damaged page is reset first where it can be, and
    /// otherwise read as it is (statistics use saturating arithmetic).
    fn header(&mut self) -> PageHeader {
        match self {
            Reader::Write(guard) => match guard.page().checked_header() {
                Ok(hdr) => hdr,
                Err(_) => {
                    guard.reset();
                    guard.page().header()
                }
            },
            Reader::Shared(guard) => PageHeader::read(guard.as_is().0),
        }
    }

    /// Calls `f` for every entry (see [`PageView::for_each_entry`](crate::page::PageView)).
    fn for_each_entry<'p>(
        &'p mut self,
        f: impl FnMut(EntryRef<'p>),
    ) -> std::result::Result<(), Corrupt> {
        match self {
            Reader::Write(guard) => crate::page::PageView::new(guard.bytes()).for_each_entry(f),
            Reader::Shared(guard) => match guard.page() {
                Some(page) => page.for_each_entry(f),
                None => Ok(()),
            },
        }
    }

    /// Resets a page found damaged, where it can be (not through a shared lock).
    fn reset(&mut self) {
        if let Reader::Write(guard) = self {
            guard.reset();
        }
    }
}

/// A read under a held lock; a damaged page is reset and reads as a miss.
fn read_locked<R>(
    guard: &mut PageGuard<'_>,
    slot_hash: u32,
    key: &[u8],
    now: u32,
    stats: bool,
    f: impl FnOnce(&EntryRef<'_>) -> R,
) -> Option<R> {
    let result = guard
        .page()
        .get(slot_hash, key, now, stats)
        .map(|e| e.map(|e| f(&e)));
    result.unwrap_or_else(|_| {
        guard.reset();
        None
    })
}

/// The current value under a held lock, without counting a read.
pub(crate) fn peek_locked(
    guard: &mut PageGuard<'_>,
    slot_hash: u32,
    key: &[u8],
    now: u32,
) -> Option<Vec<u8>> {
    let result = guard
        .page()
        .peek(slot_hash, key, now)
        .map(|e| e.map(|e| e.value.to_vec()));
    result.unwrap_or_else(|_| {
        guard.reset();
        None
    })
}

impl Cache {
    /// `reset`: wipe every page; otherwise (`verify`) validate every page and reset bad ones.
    pub(crate) fn prepare(&self, wipe: bool) -> Result<()> {
        let g = self.inner.geometry;
        let hash = self.inner.hash;
        let slot_hash = move |key: &[u8]| hash.locate(key, g.num_pages).1;
        for page in 0..g.num_pages {
            let mut guard = self.lock_page(page)?;
            if wipe {
                guard.wipe();
            } else if check_page(guard.bytes(), g.start_slots, Some(&slot_hash)).is_err() {
                guard.reset();
            }
        }
        Ok(())
    }

    /// Validates every page fully, one locked at a time, without repairing anything: the
    /// problems found, one per bad page. (Normal operations reset a page whose header is
    /// damaged when they lock it; opening with [`CacheBuilder::verify`] resets every bad page.)
    ///
    /// # Errors
    /// Lock errors.
    pub fn validate(&self) -> Result<Vec<PageProblem>> {
        let g = self.inner.geometry;
        let hash = self.inner.hash;
        let slot_hash = move |key: &[u8]| hash.locate(key, g.num_pages).1;
        let mut problems = Vec::new();
        for page in 0..g.num_pages {
            // A shared lock: validating reads the page and changes nothing.
            let timeout = self.inner.lock_timeout;
            let guard = self
                .inner
                .file
                .lock_shared(page, timeout)
                .map_err(|e| self.inner.file.lock_error(e, LockRole::Page, page, timeout))?;
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
        }
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
