//! Resizing a live file: moving every entry to a file of another geometry while other threads
//! and processes keep using it, and every user following the move by itself.
//!
//! # Protocol (one old page at a time; docs/format.md §2.5 has the whole of it)
//!
//! 1. The resizer takes the **resize lock**, an exclusive fcntl lock on header byte
//!    [`RESIZE_LOCK_OFFSET`](header::RESIZE_LOCK_OFFSET) of the old file (plus an in-process
//!    claim, since fcntl locks do not exclude threads). The kernel drops it if the resizer
//!    dies. A second resizer gets [`Error::ResizeInProgress`].
//! 2. It records a random nonce and the state *building* in the old header, and creates the
//!    successor `<path>.resize-<nonce>` through the ordinary safe create path (`O_EXCL`,
//!    the requested mode, a temporary name linked into place, owner checks on open), with the
//!    lineage of the old file and the next generation in its header; then the state
//!    *migrating*: from here on the successor is in use.
//! 3. One **step** per old page, in page order: old write-back lock, old page lock (as a
//!    change, so lock-free readers see the mark in the same window), copy the live entries
//!    out, store them into their new pages (each under its write-back lock and page lock,
//!    through [`journaled`], dirty victims written back first when there is a backing store),
//!    mark the old page's row moved (the commit point of the page), let go.
//! 4. Rename the successor over the old file's name, then the state *moved*.
//!
//! Every locker checks its page's moved word right after taking the lock (one load of the
//! row it already touched); found set, it lets go and does its step in the successor (opened
//! once per process: by its temporary name, else by the path, checked to be of the same
//! lineage and a later generation). Its handle moves over only once the file is *moved*.
//! Optimistic readers check the word inside their sequence window and fall back to the lock.
//!
//! Between a step's stores and its mark, the successor holds *stale copies* of the page's
//! entries: an entry of the successor whose old page is not marked does not exist
//! ([`SharedFile::stale_in_successor`]). A step stopped by a backing store's error takes them
//! out again; a killed resizer leaves them, and the next resize (a *resume*) removes them
//! before it goes on from the first page not marked.
//!
//! A resizer killed before the state *migrating* leaves the old file in use, unchanged, and a
//! successor in state *building* that the next resize removes.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::fcntl::{fcntl, lock_owner};
use super::geometry::Geometry;
use super::guard::{PageGuard, Place};
use super::header;
use super::layout::{KeyHash, Layout};
use super::registry::{Entry, lock_registry, open_registered};
use super::shared::SharedFile;
use super::{OpenRequest, OverflowRequest, Requested, Route};
use crate::page::consts::{FLAG_DIRTY, FLAG_OVERFLOW, is_expired};
use crate::page::{Corrupt, Dirty, DirtyCopy, NewEntry, PageMut, StoreOutcome};
use crate::{Error, Result};

/// Most moves one operation follows before it gives up (each is a whole resize finished while
/// the operation ran).
pub(crate) const MAX_FOLLOWS: usize = 64;

/// What one resize did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Moved {
    /// The old page locks' hold times added up (each step holds one old page).
    pub held: Duration,
    /// The longest one step held an old page lock: the longest any user of the old file can
    /// have waited for this move.
    pub longest_step: Duration,
    /// Old pages moved by this call.
    pub pages_moved: u32,
    /// Every page is moved and the successor published (false: stopped by `Stop`).
    pub finished: bool,
    /// Entries copied to the new file and kept there.
    pub copied: u64,
    /// Entries that did not fit their new page (evicted by its policy, or larger than a new
    /// page can hold), the resizer's copies or entries users had stored there.
    pub dropped: u64,
    /// Dirty (write-back) entries among `dropped` that no backing store took: lost.
    pub dirty_dropped: u64,
    /// Dirty entries among `dropped` handed to the caller's write-back (in the backing store
    /// before they were dropped).
    pub written_back: u64,
    /// Old pages found damaged (a process died changing them), whose entries were not copied.
    pub damaged_pages: u64,
}

impl SharedFile {
    /// Whether `page`'s entries live in the file this one was resized into.
    #[inline]
    pub(super) fn moved(&self, page: u32) -> bool {
        self.row_word(page, header::ROW_MOVED_OFFSET)
            .is_some_and(|w| w != 0)
    }

    /// `page`'s moved word is set, and this thread holds the page's lock: whether the move
    /// is real. Marks in a file that is neither *migrating* nor *moved* are damage (no resizer
    /// marks a page before the state says *migrating*): cleared.
    #[cold]
    pub(super) fn moved_under_lock(&self, page: u32) -> bool {
        if self.in_move() {
            return true;
        }
        if let Some(row) = self.row(page) {
            row.moved.store(0, Ordering::Release);
        }
        false
    }

    /// A word of the header's resize area (native layout; 0 otherwise).
    fn resize_word(&self, offset: usize) -> u64 {
        if self.layout != Layout::Native {
            return 0;
        }
        // SAFETY: the resize words lie inside the fixed part of the header, inside the mapping
        // (checked on open); `offset` is one of the aligned constants of `header` (8-byte words
        // at multiples of 8, 4-byte words at multiples of 4); volatile reads, since other
        // processes write them, and the mapping lives as long as `self`.
        unsafe {
            let p = self.map.as_ptr().add(offset);
            match offset {
                header::LINEAGE_OFFSET | header::SUCCESSOR_OFFSET => {
                    p.cast::<u64>().read_volatile()
                }
                _ => u64::from(p.cast::<u32>().read_volatile()),
            }
        }
    }

    /// Writes a word of the header's resize area (native layout, opened read-write).
    fn set_resize_word(&self, offset: usize, value: u64) {
        if !self.rows {
            return;
        }
        // SAFETY: as in `resize_word`; the mapping is writable (`rows`: native, read-write),
        // and the words are only written as atomics, by a resizer holding the resize lock.
        unsafe {
            let p = self.map.as_mut_ptr().add(offset);
            match offset {
                header::LINEAGE_OFFSET | header::SUCCESSOR_OFFSET => {
                    AtomicU64::from_ptr(p.cast()).store(value, Ordering::Release)
                }
                _ => AtomicU32::from_ptr(p.cast()).store(value as u32, Ordering::Release),
            }
        }
    }

    /// Whether the whole file was moved to a successor.
    pub(crate) fn is_moved(&self) -> bool {
        self.resize_word(header::STATE_OFFSET) == u64::from(header::STATE_MOVED)
    }

    /// Whether `page`'s entries live in the successor (its row is marked moved).
    pub(crate) fn page_moved(&self, page: u32) -> bool {
        self.moved(page)
    }

    /// Whether a move one page at a time is under way (or was stopped part way): the pages
    /// whose rows are marked live in the successor, the others here.
    pub(crate) fn is_migrating(&self) -> bool {
        self.resize_word(header::STATE_OFFSET) == u64::from(header::STATE_MIGRATING)
    }

    /// Whether this file's entries live in a successor, some (*migrating*) or all (*moved*).
    /// The state word is read once: a move goes from the one to the other, and two reads (is
    /// it moved? is it migrating?) could see neither, and a page's mark taken for damage.
    pub(crate) fn in_move(&self) -> bool {
        matches!(
            self.resize_word(header::STATE_OFFSET) as u32,
            header::STATE_MIGRATING | header::STATE_MOVED
        )
    }

    /// How many resizes lie between this file and the first of its lineage.
    pub(crate) fn generation(&self) -> u32 {
        self.resize_word(header::GENERATION_OFFSET) as u32
    }

    fn resize_error(&self, reason: impl Into<String>) -> Error {
        Error::Resize {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// The file this one was moved to, opened (once per process) and checked: same lineage,
    /// later generation, and the owner and link rules of any open. Kept in `self.successor`,
    /// which is set once, under the registry's lock `reg`, and never cleared: the successor
    /// lives as long as this file.
    fn successor_in(&self, reg: &mut Vec<Entry>) -> Result<&SharedFile> {
        if let Some(next) = self.successor.get() {
            return Ok(next);
        }
        if !self.in_move() {
            return Err(self.resize_error("followed a file that was not moved"));
        }
        let nonce = self.resize_word(header::SUCCESSOR_OFFSET);
        let temp = successor_path(&self.path, nonce);
        let mut last = None;
        // The temporary name, the cache's path, and the name this file was opened by (a
        // successor resized before its own move finished hands its name on: see `resize`).
        let opened_as = (self.request.path != self.path).then_some((&self.request.path, false));
        let candidates = [Some((&temp, true)), Some((&self.path, false)), opened_as];
        for (candidate, by_temp) in candidates.into_iter().flatten() {
            let req = OpenRequest {
                path: candidate.clone(),
                lock_kind: Some(self.lock_kind),
                requested: Requested::default(),
                // The temporary name is ours: a link there is planted.
                follow_symlinks: self.request.follow_symlinks && !by_temp,
                must_exist: true,
                trust_contents: false,
                ..self.request.clone()
            };
            let next = match open_registered(reg, &req, &self.path) {
                Ok(next) => next,
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    continue;
                }
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            if std::ptr::eq(Arc::as_ptr(&next), self) {
                // The path still names this file, and the successor is gone from its
                // temporary name: someone removed it.
                continue;
            }
            let lineage = self.resize_word(header::LINEAGE_OFFSET);
            if next.resize_word(header::LINEAGE_OFFSET) != lineage
                || next.generation() <= self.generation()
            {
                last = Some(self.resize_error(format!(
                    "{} is not a later generation of this cache (lineage {:016x}, generation {})",
                    candidate.display(),
                    lineage,
                    self.generation()
                )));
                continue;
            }
            // While *migrating* the path names this file; the rename is the finish's.
            if by_temp && self.is_moved() {
                finish_rename(&temp, self, &next);
            }
            return Ok(self.successor.get_or_init(|| next));
        }
        Err(last.unwrap_or_else(|| {
            self.resize_error(format!(
                "the cache was moved, but neither {} nor the path holds its successor",
                temp.display()
            ))
        }))
    }

    /// The file this one was moved to (see `successor_in`): where an operation that found a
    /// page of this file moved goes on, whether or not its handle has followed yet.
    ///
    /// # Errors
    /// [`Error::Resize`] if this file was not moved, or its successor cannot be opened or is
    /// not a later generation of the same cache.
    pub(crate) fn successor(&self) -> Result<&SharedFile> {
        match self.successor.get() {
            Some(next) => Ok(next),
            None => self.successor_in(&mut lock_registry()),
        }
    }

    /// [`successor`](Self::successor), shared: for a cursor that outlives any borrow of the
    /// handle (`Cache::iter`'s).
    ///
    /// # Errors
    /// As [`successor`](Self::successor).
    pub(crate) fn successor_arc(&self) -> Result<Arc<SharedFile>> {
        self.successor()?;
        self.successor
            .get()
            .cloned()
            .ok_or_else(|| self.resize_error("the successor was opened but not kept"))
    }
}

/// The name `file` goes by now: the cache's path, or, for the successor of a move that was
/// itself resized before that move finished, the temporary name it was opened by (see
/// `resize`'s resume). `None` if neither names it (a later resize published a newer file).
fn name_of(file: &SharedFile) -> Option<&Path> {
    [&file.path, &file.request.path]
        .into_iter()
        .find(|p| names(p, file))
        .map(|p| p.as_path())
}

/// Whether `path` itself (not a link there) is `file`.
fn names(path: &Path, file: &SharedFile) -> bool {
    let (Ok(md), Ok(at)) = (file.file.metadata(), std::fs::symlink_metadata(path)) else {
        return false;
    };
    at.dev() == md.dev() && at.ino() == md.ino()
}

/// A resizer died between marking the old file moved and renaming the successor `next` over
/// the old file's name: rename it now, if that name still names the old file and the
/// temporary name still names `next` (in a shared directory another user may have put
/// something else there since: it is never renamed over the cache's name).
fn finish_rename(temp: &Path, old: &SharedFile, next: &SharedFile) {
    if let Some(name) = name_of(old)
        && names(temp, next)
    {
        let _ = std::fs::rename(temp, name);
    }
}

/// Removes a successor that was never published, and the temporary file its creation may
/// have left (`.<successor name>.<pid>.<n>.<nanos>.tmp`, see `file.rs`): both are named by the
/// nonce, so nothing else matches.
fn remove_successor(successor: &Path) {
    let _ = std::fs::remove_file(successor);
    let (Some(dir), Some(name)) = (successor.parent(), successor.file_name()) else {
        return;
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if file_name.starts_with(&prefix) && file_name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The temporary name of the successor with nonce `nonce` of the file at `path`.
pub(crate) fn successor_path(path: &Path, nonce: u64) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
    name.push(format!(".resize-{nonce:016x}"));
    path.with_file_name(name)
}

/// The file a handle uses now: the one it opened, or the last one it followed a resize to.
///
/// Reading it is one atomic load. Each file keeps the file it was resized into alive
/// (`SharedFile::successor`, set once and never cleared), so a handle keeps every file it has
/// followed mapped until it is dropped (an operation may still be using the old one):
/// following costs the old file's mapping for the handle's life.
pub(crate) struct Current {
    now: AtomicPtr<SharedFile>,
    /// The file this handle opened: the first of the chain of
    /// successors `now` points into.
    first: Arc<SharedFile>,
}

impl Current {
    pub(crate) fn new(file: Arc<SharedFile>) -> Current {
        Current {
            now: AtomicPtr::new(Arc::as_ptr(&file).cast_mut()),
            first: file,
        }
    }

    /// Moves this handle from `from` (a file found moved) to its successor, unless another
    /// thread already has. A file still *migrating* is not left: only the operation that found
    /// its page moved goes on in the successor (`Cache::follow_moves`).
    pub(crate) fn follow(&self, from: &SharedFile) -> Result<()> {
        if !std::ptr::eq(self.now.load(Ordering::Acquire), from) || !from.is_moved() {
            return Ok(());
        }
        let next = from.successor()?;
        // Opened while the file was still *migrating*: the rename a dead resizer left undone.
        finish_rename(
            &successor_path(&from.path, from.resize_word(header::SUCCESSOR_OFFSET)),
            from,
            next,
        );
        // Another thread following the same move stores the same pointer, or has gone on.
        let _ = self.now.compare_exchange(
            std::ptr::from_ref(from).cast_mut(),
            std::ptr::from_ref(next).cast_mut(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        Ok(())
    }

    /// The file this handle uses now, shared: for a cursor that outlives any borrow of the
    /// handle (`Cache::iter`'s). Found from the first file down its chain of successors, where
    /// `follow` put it.
    pub(crate) fn arc(&self) -> Arc<SharedFile> {
        let now = self.now.load(Ordering::Acquire);
        let mut file = &self.first;
        while !std::ptr::eq(Arc::as_ptr(file), now) {
            match file.successor.get() {
                Some(next) => file = next,
                // Not reached: `now` is `first` or a successor `follow` set before storing it.
                None => break,
            }
        }
        Arc::clone(file)
    }
}

impl Deref for Current {
    type Target = SharedFile;

    #[inline]
    fn deref(&self) -> &SharedFile {
        // SAFETY: the pointer is `first`'s, or (by `follow`) the successor of a file it
        // pointed to; each file holds its successor's `Arc` for as long as it lives and never
        // lets go of it, so by induction from `first`, which lives as long as `self`, the file
        // outlives the borrow of `self`.
        unsafe { &*self.now.load(Ordering::Acquire) }
    }
}

/// Random 64 bits, never 0 (the nonce of a successor, the lineage of a file).
fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish().max(1)
}

/// An entry copied out of an old page, on its way to its new page.
struct Moving {
    key: Vec<u8>,
    value: Vec<u8>,
    slot_hash: u32,
    expire_on: u32,
    flags: u32,
    modseq: Option<u64>,
    last_access: u32,
    /// In the old page's protected part (the eviction policy's bit, §4.1 of docs/format.md).
    protected: bool,
}

impl Moving {
    /// The store request that puts this entry in its new page.
    fn request(&self) -> NewEntry<'_> {
        NewEntry {
            slot_hash: self.slot_hash,
            key: &self.key,
            value: &self.value,
            expire_on: self.expire_on,
            flags: self.flags,
            modseq: self.modseq,
        }
    }

    /// A copy of this entry to write back: its value's bytes as stored (compressed if its flags
    /// say), never an overflow reference.
    fn dirty_copy(&self) -> DirtyCopy {
        DirtyCopy {
            slot_hash: self.slot_hash,
            key: self.key.clone(),
            value: self.value.clone(),
            expire_on: self.expire_on,
            flags: self.flags & !FLAG_OVERFLOW,
            reference: None,
        }
    }
}

/// The bytes whose hash chose `page` (of `num_pages`) for an entry: its key, or for
/// Cache::FastMmap's page-key form (`multi_set`) the page key before a `-`. `None`: the key
/// does not belong there (damaged bytes).
fn home(key: &[u8], slot_hash: u32, page: u32, num_pages: u32) -> Option<&[u8]> {
    let (p, s) = KeyHash::Xxh3.locate(key, num_pages);
    if s != slot_hash {
        return None;
    }
    if p == page {
        return Some(key);
    }
    key.iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'-')
        .map(|(i, _)| &key[..i])
        .find(|prefix| KeyHash::Xxh3.locate(prefix, num_pages).0 == page)
}

/// The in-process and fcntl resize locks of a file; let go when dropped.
struct ResizeLock<'a> {
    file: &'a SharedFile,
    _local: LocalResize<'a>,
}

/// This process's claim on resizing a file (`SharedFile::resizing`); let go when dropped.
struct LocalResize<'a>(&'a AtomicU32);

impl<'a> LocalResize<'a> {
    /// The claim word's value while a thread of this process, since its last fork, resizes.
    fn mine() -> u32 {
        super::fork::generation().wrapping_add(1).max(1)
    }

    /// Claims `word` unless a thread of this process, since its last fork, holds it: a claim
    /// made in another fork generation belongs to a thread that does not exist here (a fork
    /// from another thread mid-resize), so it counts as free.
    fn claim(word: &'a AtomicU32) -> Option<LocalResize<'a>> {
        let mine = Self::mine();
        let held = word.load(Ordering::Acquire);
        if held == mine {
            return None;
        }
        word.compare_exchange(held, mine, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| LocalResize(word))
    }
}

impl Drop for LocalResize<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

impl Drop for ResizeLock<'_> {
    fn drop(&mut self) {
        let _ = fcntl(
            self.file.file.as_raw_fd(),
            libc::F_SETLK,
            libc::F_UNLCK as libc::c_short,
            (header::RESIZE_LOCK_OFFSET as u64, 1),
        );
    }
}

fn resize_lock(f: &SharedFile) -> Result<ResizeLock<'_>> {
    let in_progress = |pid| Error::ResizeInProgress {
        path: f.path.clone(),
        pid,
    };
    let Some(local) = LocalResize::claim(&f.resizing) else {
        return Err(in_progress(Some(std::process::id() as i32)));
    };
    let range = (header::RESIZE_LOCK_OFFSET as u64, 1);
    let fd = f.file.as_raw_fd();
    match fcntl(fd, libc::F_SETLK, libc::F_WRLCK as libc::c_short, range) {
        Ok(()) => Ok(ResizeLock {
            file: f,
            _local: local,
        }),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {
            Err(in_progress(lock_owner(fd, range)))
        }
        Err(source) => Err(Error::Io {
            path: f.path.clone(),
            op: "take the resize lock",
            source,
        }),
    }
}

/// Where a resize stops early, for tests of a move stopped part way.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stop {
    /// Once this many pages were moved: cleanly, between two pages.
    After(u32),
    /// Once this many pages were moved, in the middle of the next one: its entries stored
    /// in the first of their new pages, the page not marked, nothing cleaned up (as a
    /// resizer killed there leaves it).
    Abandoning(u32),
}

/// Writes dirty entries a resize could not place to a backing store (see [`resize`]).
pub(crate) type WriteBack<'w> = &'w mut dyn FnMut(&[DirtyCopy]) -> Result<()>;

/// Most rounds of written-back victims one new page's store of one old page's entries takes
/// (each round writes back at least one dirty entry of the page, so the bound is only a
/// guard against damage).
const MAX_ROUNDS: usize = 100_000;

/// A change of a successor page that a resizer makes while users may hold entries there:
/// [`PageGuard::change_journaled`], whose change a SIGKILLed resizer cannot leave half made
/// (the next locker completes it from the successor's journal, docs/format.md §5.5).
///
/// `f` runs on a private copy of the page and may claim overflow blocks for it
/// (`place.file.overflow_write(place.page, …)`); on `Ok` the changed bytes are installed and
/// the blocks the page no longer references are freed. On `Err` nothing is changed (a page
/// whose header is damaged is reset first, and counted, as any change resets it), and the
/// step that asked fails with the page named.
fn journaled<T>(
    guard: &mut PageGuard<'_>,
    f: impl FnOnce(&mut PageMut<'_>, Place<'_>) -> Result<T, Corrupt>,
) -> Result<T, Corrupt> {
    guard.change_journaled(f)
}

/// The page of `old` that placed an entry found on page `page` of its successor (of
/// `new_pages` pages), stored under `key` with `slot_hash`: the page, under `old`'s geometry,
/// of the bytes that placed it (its key, or a `multi_set` entry's page key). `None`: the key
/// does not belong on that page (damaged bytes).
pub(crate) fn old_page_of(
    old: &SharedFile,
    new_pages: u32,
    page: u32,
    key: &[u8],
    slot_hash: u32,
) -> Option<u32> {
    let home = home(key, slot_hash, page, new_pages)?;
    Some(KeyHash::Xxh3.locate(home, old.geometry.num_pages).0)
}

impl SharedFile {
    /// Whether a resize of this file is running now, in this process (a thread holding the
    /// in-process claim since the last fork) or in another (holding the resize lock's fcntl
    /// lock, which the kernel lets go of when it dies). One system call: for the rare case of
    /// a copy whose old page is not marked (see [`dead_copy_in_successor`]).
    ///
    /// [`dead_copy_in_successor`]: Self::dead_copy_in_successor
    pub(crate) fn resize_running(&self) -> bool {
        self.resizing.load(Ordering::Acquire) == LocalResize::mine()
            || lock_owner(
                self.file.as_raw_fd(),
                (header::RESIZE_LOCK_OFFSET as u64, 1),
            )
            .is_some()
    }

    /// Whether an entry found on page `page` of this file's successor (of `new_pages` pages),
    /// stored under `key` with `slot_hash`, is a copy a *dead* resizer left of a page it never
    /// marked: its old page is not marked and no resize runs. Such a copy may be older than
    /// its real entry (rewritten in this file since, and written back), so it is never written
    /// back. A copy whose old page a running resizer has not marked yet is exact (the resizer
    /// holds that page's lock until it marks it), and is written back as any entry.
    pub(crate) fn dead_copy_in_successor(
        &self,
        new_pages: u32,
        page: u32,
        key: &[u8],
        slot_hash: u32,
    ) -> bool {
        // No resize running first, then the mark: a running resizer may mark the page
        // between the two looks (it let the copy's new page go before it marks the old one),
        // and its copy is then the real entry. With none running the marks cannot change
        // while the caller holds the copy's page: a resume removes stale copies, page by
        // page, before it marks anything.
        self.is_migrating()
            && !self.resize_running()
            && self.stale_in_successor(new_pages, page, key, slot_hash)
    }

    /// Whether an entry found on page `page` of this file's successor (of `new_pages` pages)
    /// is a stale copy: its old page is not marked moved, so it does not exist (the entry of
    /// that page of this file is the real one; see docs/format.md §2.5). Damaged keys count as
    /// stale.
    pub(crate) fn stale_in_successor(
        &self,
        new_pages: u32,
        page: u32,
        key: &[u8],
        slot_hash: u32,
    ) -> bool {
        old_page_of(self, new_pages, page, key, slot_hash).is_none_or(|p| !self.moved(p))
    }
}

/// Moves every entry of `old` to a new file of geometry `to` and publishes it at `old`'s path,
/// one old page at a time. `now` is the time of the cache's clock (expired entries are not
/// copied); each lock is waited for at most `wait`.
///
/// A file found *migrating* (a move stopped part way, with no resizer left) is **resumed**:
/// the stale copies the stopped move left in its successor are removed; if `to` is another
/// geometry than the successor's (or the successor's own move was stopped too), the successor
/// is resized to `to` first; then the pages not marked yet are moved into the file that ends
/// up with geometry `to`.
///
/// Each step holds one old page's write-back lock and page lock, and, in turn, the write-back
/// lock and page lock of each new page its entries go to. With `write_back`, the dirty entries
/// a new page's store would evict (users' entries already there, or copies) are written to it
/// while the step holds its locks, before the store that evicts them; the entries that fit no
/// new page likewise. If it fails, the step's copies are removed from the new pages, the old
/// page stays unmarked, and the error is returned: the move stops there, the file stays
/// *migrating* and in use, and the next resize finishes it. Without `write_back` they are
/// dropped and counted in `dirty_dropped` (and the new file's `dirty_lost`).
///
/// `stop` (tests): stop early, leaving the file *migrating* (see [`Stop`]); the result says
/// `finished: false`.
pub(crate) fn resize(
    old: &SharedFile,
    to: Geometry,
    now: u32,
    wait: Duration,
    mut write_back: Option<WriteBack<'_>>,
    stop: Option<Stop>,
) -> Result<Moved> {
    if old.layout != Layout::Native {
        return Err(old.resize_error(
            "only native files can be resized (the Cache::FastMmap layout has no header to \
             record a move in)",
        ));
    }
    if old.read_only {
        return Err(Error::ReadOnly {
            path: old.path.clone(),
        });
    }
    to.validate().map_err(|reason| Error::InvalidOptions {
        path: old.path.clone(),
        reason,
    })?;
    let _resize_lock = resize_lock(old)?;
    let mut moved = Moved::default();
    let new = match old.resize_word(header::STATE_OFFSET) as u32 {
        header::STATE_MOVED => {
            return Err(old.resize_error("the file was moved already: follow it first"));
        }
        header::STATE_MIGRATING => {
            // A move stopped part way: its successor is in use (and may have been moved on
            // by an earlier resume), and the move goes on into it.
            let mut next = old.successor_arc()?;
            for _ in 0..MAX_FOLLOWS {
                if !next.is_moved() {
                    break;
                }
                next = next.successor_arc()?;
            }
            if next.resize_word(header::STATE_OFFSET) == u64::from(header::STATE_BUILDING) {
                // A resume killed while it built a successor for `next` (below): nobody uses
                // that one, and nothing else would remove it if `next` is not resized again.
                let nonce = next.resize_word(header::SUCCESSOR_OFFSET);
                remove_successor(&successor_path(&next.path, nonce));
                next.set_resize_word(header::STATE_OFFSET, 0);
            }
            remove_stale(old, &next, now, wait)?;
            if next.is_migrating() || next.geometry != to {
                // Another geometry is asked for, or the successor's own move to another was
                // stopped too: the successor, holding only the moved pages' entries, is
                // resized to it first (a move of its own, resumed as any), and the pages left
                // here then go straight to the file it was moved to. A user of a moved page of
                // this file follows both moves; one of a page not moved yet stays here. So the
                // stopped move never has to be finished at a geometry nobody asks for.
                let first = resize(
                    &next,
                    to,
                    now,
                    wait,
                    write_back.as_mut().map(|w| &mut **w as WriteBack<'_>),
                    None,
                )?;
                moved.absorb(&first);
                for _ in 0..MAX_FOLLOWS {
                    if !next.is_moved() {
                        break;
                    }
                    next = next.successor_arc()?;
                }
            }
            next
        }
        state => {
            if state == header::STATE_BUILDING {
                // A resizer died building a successor nobody uses.
                let nonce = old.resize_word(header::SUCCESSOR_OFFSET);
                remove_successor(&successor_path(&old.path, nonce));
            }
            build_successor(old, to)?
        }
    };
    // A journaled change of a successor page waits for the journal at most as long as for a
    // lock (only a dead resizer's claim can hold it: resizes of one file are one at a time).
    new.set_journal_wait(wait);
    migrate(old, &new, now, wait, &mut write_back, stop, &mut moved)?;
    if moved.dirty_dropped > 0 {
        new.dirty_lost
            .fetch_add(moved.dirty_dropped, Ordering::Relaxed);
    }
    if !moved.finished {
        return Ok(moved);
    }
    // Every row is marked: every user already goes to the successor, which now takes the old
    // file's name (the cache's path, or the temporary name of a stopped move's successor
    // resized by a resume, which that move renames over the path at its end), before the
    // state says *moved* (from then on handles move over, and the first renames it if this
    // resizer died first). A resume that finds the successor renamed already has none to do.
    let temp = successor_path(&old.path, old.resize_word(header::SUCCESSOR_OFFSET));
    let renamed = match name_of(old) {
        Some(name) => std::fs::rename(&temp, name),
        None => Ok(()),
    };
    old.set_resize_word(header::STATE_OFFSET, u64::from(header::STATE_MOVED));
    renamed.map_err(|source| Error::Io {
        path: old.path.clone(),
        op: "rename the resized file over the path (the cache was moved; its users follow it \
             under its temporary name until the next resize or follower renames it)",
        source,
    })?;
    Ok(moved)
}

impl Moved {
    /// Adds what another move of the same call did.
    fn absorb(&mut self, other: &Moved) {
        self.held += other.held;
        self.longest_step = self.longest_step.max(other.longest_step);
        self.pages_moved += other.pages_moved;
        self.copied += other.copied;
        self.dropped += other.dropped;
        self.dirty_dropped += other.dirty_dropped;
        self.written_back += other.written_back;
        self.damaged_pages += other.damaged_pages;
    }
}

/// Creates the successor of `old` of geometry `to` (state *building* meanwhile), and puts
/// `old` in state *migrating*: from then on the successor is in use and never removed.
fn build_successor(old: &SharedFile, to: Geometry) -> Result<Arc<SharedFile>> {
    // The successor takes the old file's place, so it gets its mode and group (and, made by
    // root, its owner). Made by another user it would be that user's, which the owner's
    // processes refuse to follow (`ForeignOwner`): only the owner or root may resize.
    let md = old.file.metadata().map_err(|e| Error::Io {
        path: old.path.clone(),
        op: "stat",
        source: e,
    })?;
    let me = super::file::effective_uid();
    if me != 0 && me != md.uid() {
        return Err(old.resize_error(format!(
            "only the file's owner (uid {}) or root may resize it: the new file would belong to \
             uid {me}, whom the owner's processes do not trust",
            md.uid()
        )));
    }
    let mut lineage = old.resize_word(header::LINEAGE_OFFSET);
    if lineage == 0 {
        lineage = random_u64();
        old.set_resize_word(header::LINEAGE_OFFSET, lineage);
    }
    let nonce = random_u64();
    old.set_resize_word(header::SUCCESSOR_OFFSET, nonce);
    old.set_resize_word(header::STATE_OFFSET, u64::from(header::STATE_BUILDING));
    let temp = successor_path(&old.path, nonce);
    let mut building = RemoveUnlessPublished {
        path: &temp,
        published: false,
    };
    let mut reg = lock_registry();
    let req = OpenRequest {
        path: temp.clone(),
        lock_kind: Some(old.lock_kind),
        requested: Requested {
            num_pages: Some(to.num_pages),
            page_size: Some(to.page_size),
            start_slots: Some(to.start_slots),
        },
        follow_symlinks: false,
        must_exist: false,
        trust_contents: false,
        read_only: false,
        // The old file's overflow area, as it is: its size and largest value do not depend
        // on the pages, and the values it holds then fit the new one.
        overflow: OverflowRequest {
            size: Some(old.overflow().map_or(0, |a| a.geometry.area_size())),
            max_value_size: old.overflow().map(|a| a.geometry.max_value_size),
        },
        // Users write into the successor while pages are still moved into it: the resizer's
        // changes of its pages go through its journal (§5.5).
        journal: true,
        permissions: md.mode() & 0o777,
        owner: Some((md.uid(), md.gid())),
        ..old.request.clone()
    };
    let new = open_registered(&mut reg, &req, &old.path)?;
    if new.resize_word(header::LINEAGE_OFFSET) != 0
        || new.geometry != to
        || new.overflow().map(|a| a.geometry) != old.overflow().map(|a| a.geometry)
    {
        return Err(old.resize_error(format!(
            "{} existed already and is not a fresh file: not used",
            temp.display()
        )));
    }
    new.set_resize_word(header::LINEAGE_OFFSET, lineage);
    // The generation word is outside the header's checksum: any value may be there.
    let Some(generation) = old.generation().checked_add(1) else {
        return Err(old.resize_error("the file's resize generation is at its maximum"));
    };
    new.set_resize_word(header::GENERATION_OFFSET, u64::from(generation));
    // This process's users find the successor here (the registry keeps only weak references:
    // without this, `new`, and its count of lost dirty entries, would be dropped on return).
    let _ = old.successor.set(Arc::clone(&new));
    drop(reg);
    old.set_resize_word(header::STATE_OFFSET, u64::from(header::STATE_MIGRATING));
    building.published = true;
    Ok(new)
}

/// Moves every page of `old` not marked yet, in page order (see [`move_page`]).
fn migrate(
    old: &SharedFile,
    new: &SharedFile,
    now: u32,
    wait: Duration,
    write_back: &mut Option<WriteBack<'_>>,
    stop: Option<Stop>,
    moved: &mut Moved,
) -> Result<()> {
    let pages = old.geometry.num_pages;
    for page in 0..pages {
        if old.moved(page) {
            continue;
        }
        let mut abandon = false;
        match stop {
            Some(Stop::After(n)) if moved.pages_moved >= n => return Ok(()),
            Some(Stop::Abandoning(n)) if moved.pages_moved >= n => abandon = true,
            _ => {}
        }
        let files = Files {
            old,
            new,
            now,
            wait,
        };
        let held = move_page(&files, page, write_back, abandon, moved).inspect_err(|e| {
            crate::events::resize_stopped(&old.path, page, pages, e);
        })?;
        if abandon {
            return Ok(());
        }
        moved.held += held;
        moved.longest_step = moved.longest_step.max(held);
        moved.pages_moved += 1;
    }
    moved.finished = true;
    Ok(())
}

/// The two files of a move, the cache's time (expired entries are left behind) and how long
/// each lock is waited for.
struct Files<'f> {
    old: &'f SharedFile,
    new: &'f SharedFile,
    now: u32,
    wait: Duration,
}

/// One step: moves the live entries of old page `page` to their new pages and marks the page
/// moved. Returns how long the old page lock was held.
fn move_page(
    files: &Files<'_>,
    page: u32,
    write_back: &mut Option<WriteBack<'_>>,
    abandon: bool,
    moved: &mut Moved,
) -> Result<Duration> {
    let &Files {
        old,
        new,
        now,
        wait,
    } = files;
    let timeout = Some(wait);
    // Taken as for a change, so that a robust page's `seq` is odd while the entries are
    // copied and the page marked: lock-free readers see the mark in the same window. As it
    // is: a busy marker is this step's to deal with (below).
    let (_write_back_lock, mut guard) = lock_both(old, page, timeout, SharedFile::lock_as_is)?;
    let locked = Instant::now();
    let mut groups: BTreeMap<u32, Vec<Moving>> = BTreeMap::new();
    // The old file may itself be a successor, whose resizer died inside a journaled change of
    // this page: completed first, as any locker completes it (never counted as damage).
    if guard.busy() {
        old.journal_redo(page);
    }
    if guard.busy() {
        moved.damaged_pages += 1;
    } else {
        let g = old.geometry;
        let to = new.geometry;
        let view = guard.page();
        let walked = view.view().for_each_entry_protected(|e, protected| {
            if is_expired(e.expire_on, now) {
                return;
            }
            let Some(home) = home(e.key, e.slot_hash, page, g.num_pages) else {
                return;
            };
            // A large value's bytes are read from the old area, checked (chain, checksum),
            // never its reference copied: the new file has blocks of its own. One that fails
            // its checks is damage, dropped as any entry of a damaged page.
            let value = if e.flags & FLAG_OVERFLOW != 0 {
                match old.overflow_read(page, e.value) {
                    Ok(value) => value,
                    Err(_) => {
                        moved.dropped += 1;
                        if e.flags & FLAG_DIRTY != 0 {
                            moved.dirty_dropped += 1;
                        }
                        return;
                    }
                }
            } else {
                e.value.to_vec()
            };
            let dest = KeyHash::Xxh3.locate(home, to.num_pages).0;
            groups.entry(dest).or_default().push(Moving {
                key: e.key.to_vec(),
                value,
                slot_hash: e.slot_hash,
                expire_on: e.expire_on,
                flags: e.flags & !FLAG_OVERFLOW,
                modseq: e.modseq,
                last_access: e.last_access,
                protected,
            });
        });
        if walked.is_err() {
            moved.damaged_pages += 1;
        }
    }
    // Ascending new pages, old lock before new ones: the order of every locker.
    let mut placed: Vec<(u32, &[Moving])> = Vec::new();
    for (&dest, group) in &mut groups {
        // The most recently used last, so that a page too small keeps them.
        group.sort_by_key(|m| m.last_access);
        placed.push((dest, group));
        if let Err(e) = place_group(new, dest, group, timeout, write_back, moved) {
            // The old page stays unmarked, so these copies do not exist (§2.5); they are
            // removed now, so that nothing but a killed resizer leaves stale copies behind.
            remove_copies(new, &placed, now, timeout);
            return Err(e);
        }
        if abandon {
            // As a resizer killed here leaves it: stale copies in the new file, the old page
            // unmarked (tests).
            return Ok(locked.elapsed());
        }
    }
    // The commit point of the page: from here on its entries live in the successor.
    if let Some(row) = old.row(page) {
        row.moved.store(1, Ordering::Release);
    }
    drop(guard);
    Ok(locked.elapsed())
}

/// Takes `page`'s write-back lock, then its page lock with `lock` (the order of every
/// locker), each waiting at most `timeout`.
fn lock_both<'f>(
    file: &'f SharedFile,
    page: u32,
    timeout: Option<Duration>,
    lock: fn(&'f SharedFile, u32, Option<Duration>) -> Result<PageGuard<'f>, super::LockError>,
) -> Result<(super::write_back_lock::WriteBackGuard<'f>, PageGuard<'f>)> {
    let write_back = file
        .lock_write_back(page, super::write_back_lock::Wait::Up(timeout))
        .map_err(|e| file.lock_error(e, crate::LockRole::WriteBack, page, timeout))?;
    let guard = lock(file, page, timeout)
        .map_err(|e| file.lock_error(e, crate::LockRole::Page, page, timeout))?;
    Ok((write_back, guard))
}

/// Stores `group` (entries of one old page, least recently used first) into page `dest` of
/// `new` through [`journaled`] changes, under `dest`'s write-back lock and page lock.
fn place_group(
    new: &SharedFile,
    dest: u32,
    group: &[Moving],
    timeout: Option<Duration>,
    write_back: &mut Option<WriteBack<'_>>,
    moved: &mut Moved,
) -> Result<()> {
    let corrupt = |c: Corrupt| Error::PageCorrupt {
        path: new.path.clone(),
        page: dest,
        reason: c.0,
    };
    let (_write_back_lock, mut guard) = lock_both(new, dest, timeout, SharedFile::lock)?;
    let slots = new.geometry.start_slots;
    let before = entries_of(&mut guard);
    // With a backing store, a store that would drop dirty entries is refused, and they are
    // written back and marked clean first; without one they are dropped and counted.
    let refuse = write_back.is_some();
    let mut unfit: Vec<DirtyCopy> = Vec::new();
    let mut lost: Vec<DirtyCopy> = Vec::new();
    let mut next = 0;
    for _ in 0..MAX_ROUNDS {
        let mut victims: Vec<DirtyCopy> = Vec::new();
        let reached = journaled(&mut guard, |p, place| {
            let mut i = next;
            while let Some(m) = group.get(i) {
                let mut dirty = if refuse {
                    Dirty::refuse(&mut victims)
                } else {
                    Dirty::collect(&mut lost)
                };
                let req = m.request();
                let at = m.last_access.max(1);
                // As any store: in the page if the entry fits an empty one, else in the overflow
                // area if the value fits it (a page size change can move a value either way).
                let outcome = match place.file.route(&req) {
                    Route::Page => p.store_dirty(&req, at, slots, false, &mut dirty)?,
                    Route::Overflow => match place.file.overflow_write(place.page, &m.value) {
                        Ok(r) => {
                            let reference = r.encode();
                            let entry = NewEntry {
                                value: &reference,
                                flags: req.flags | FLAG_OVERFLOW,
                                ..req
                            };
                            p.store_dirty(&entry, at, slots, false, &mut dirty)?
                        }
                        // A full area: the value is dropped, nothing stored.
                        Err(_) => Some(StoreOutcome::TooLarge),
                    },
                    Route::TooLarge => Some(StoreOutcome::TooLarge),
                };
                match outcome {
                    // Dirty entries in the way: written back before this store is made.
                    None => return Ok(i),
                    // The policy's protected bit is set by the page on a hit, never taken
                    // from a caller: a read at the entry's own access time sets it.
                    Some(StoreOutcome::Stored) if m.protected => {
                        p.get(req.slot_hash, req.key, at, false)?;
                    }
                    Some(StoreOutcome::TooLarge) if m.flags & FLAG_DIRTY != 0 => {
                        unfit.push(m.dirty_copy());
                    }
                    Some(_) => {}
                }
                i += 1;
            }
            Ok(i)
        })
        .map_err(corrupt)?;
        if reached == group.len() {
            next = reached;
            break;
        }
        // A large victim's bytes, read from the new area (nothing was dropped: its blocks are
        // still the page's).
        for c in victims.iter_mut().filter(|c| c.flags & FLAG_OVERFLOW != 0) {
            let bytes = new.overflow_read(dest, &c.value).map_err(corrupt)?;
            c.reference = Some(std::mem::replace(&mut c.value, bytes));
            c.flags &= !FLAG_OVERFLOW;
        }
        if let Some(w) = write_back.as_mut() {
            w(&victims)?;
        }
        moved.written_back += victims.len() as u64;
        journaled(&mut guard, |p, _| {
            for c in &victims {
                p.mark_clean(c, c.reference.as_deref())?;
            }
            Ok(())
        })
        .map_err(corrupt)?;
        next = reached;
    }
    if next < group.len() {
        return Err(new.resize_error(format!(
            "page {dest} of the new file kept refusing the moved entries"
        )));
    }
    if !unfit.is_empty() {
        match write_back.as_mut() {
            Some(w) => {
                w(&unfit)?;
                moved.written_back += unfit.len() as u64;
            }
            None => moved.dirty_dropped += unfit.len() as u64,
        }
    }
    moved.dirty_dropped += lost.len() as u64;
    let after = entries_of(&mut guard);
    let dropped = (before + group.len() as u64).saturating_sub(after);
    moved.dropped += dropped;
    moved.copied += (group.len() as u64).saturating_sub(dropped);
    Ok(())
}

/// Entries stored in a page (0 if it is damaged).
fn entries_of(guard: &mut PageGuard<'_>) -> u64 {
    let mut n = 0;
    let _ = guard.page().view().for_each_entry(|_| n += 1);
    n
}

/// Removes the copies a failed step stored into new pages (best effort: any left are stale,
/// and do not exist; the next resize removes them).
fn remove_copies(
    new: &SharedFile,
    placed: &[(u32, &[Moving])],
    now: u32,
    timeout: Option<Duration>,
) {
    for &(dest, group) in placed {
        let Ok(mut guard) = new.lock(dest, timeout) else {
            continue;
        };
        let _ = journaled(&mut guard, |p, _| {
            for m in group {
                p.remove(m.slot_hash, &m.key, now)?;
            }
            Ok(())
        });
    }
}

/// Removes from every page of `new` the stale copies a stopped move left: entries whose old
/// page in `old` is not marked moved (their real entries are there).
fn remove_stale(old: &SharedFile, new: &SharedFile, now: u32, wait: Duration) -> Result<()> {
    let pages = new.geometry.num_pages;
    for page in 0..pages {
        let mut guard = match new.lock(page, Some(wait)) {
            Ok(guard) => guard,
            // Moved on by a resize of its own that stopped part way: that move's resume
            // removes its own stale copies, and no copy of `old`'s went there yet.
            Err(super::LockError::Moved) => continue,
            Err(e) => return Err(new.lock_error(e, crate::LockRole::Page, page, Some(wait))),
        };
        let mut stale = Vec::new();
        let _ = guard.page().view().for_each_entry(|e| {
            if old.stale_in_successor(pages, page, e.key, e.slot_hash) {
                stale.push((e.slot_hash, e.key.to_vec()));
            }
        });
        if stale.is_empty() {
            continue;
        }
        journaled(&mut guard, |p, _| {
            for (slot_hash, key) in &stale {
                p.remove(*slot_hash, key, now)?;
            }
            Ok(())
        })
        .map_err(|c| Error::PageCorrupt {
            path: new.path.clone(),
            page,
            reason: c.0,
        })?;
    }
    Ok(())
}

/// Removes a successor that was not published (a resize that failed before *migrating*).
struct RemoveUnlessPublished<'a> {
    path: &'a Path,
    published: bool,
}

impl Drop for RemoveUnlessPublished<'_> {
    fn drop(&mut self) {
        if !self.published {
            remove_successor(self.path);
        }
    }
}

#[cfg(test)]
mod tests;
