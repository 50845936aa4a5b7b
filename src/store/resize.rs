//! Resizing a live file: moving every entry to a file of another geometry while other threads
//! and processes keep using it, and every user following the move by itself.
//!
//! # Protocol (first step: the move holds every page)
//!
//! 1. The resizer takes the **resize lock**, an exclusive fcntl lock on header byte
//!    [`RESIZE_LOCK_OFFSET`](header::RESIZE_LOCK_OFFSET) of the old file (plus an in-process
//!    mutex, since fcntl locks do not exclude threads). The kernel drops it if the resizer
//!    dies. A second resizer gets [`Error::ResizeInProgress`].
//! 2. It records a random nonce and the state *building* in the old header, and creates the
//!    successor `<path>.resize-<nonce>` through the ordinary safe create path (`O_EXCL`,
//!    the requested mode, a temporary name linked into place, owner checks on open), with the
//!    lineage of the old file and the next generation in its header.
//! 3. It takes every write-back lock, then every page lock of the old file, in page order
//!    (the order every other locker follows: write-back lock before page lock, one page at a
//!    time), copies every live entry (value, expiry, flags with the dirty bit, modseq, access
//!    time, the policy's protected bit; a large value's bytes read and checked from the old
//!    overflow area and written to blocks of the new one, whose area has the old one's size
//!    and `max_value_size`) into the successor's page for its key, marks every old page
//!    *moved* in its row and the old header *moved* (still holding the locks, so lock-free
//!    readers see the mark in the same sequence window as the copy), renames the successor
//!    over the path, and lets go.
//! 4. Every locker checks its page's moved word right after taking the lock (one load of the
//!    row it already touched); found set, it lets go and follows: it opens the successor
//!    (by its temporary name, else by the path), checks that it is of the same lineage and a
//!    later generation, swaps the handle to it, and redoes its step there. Optimistic readers
//!    check the word inside their sequence window and fall back to the lock.
//!
//! A resizer killed before step 3 marks anything leaves the old file in use, unchanged, and a
//! successor in state *building* that the next resize removes. Killed after the marks but
//! before the rename, it leaves a complete successor under its temporary name, which every
//! user follows, and which the first follower renames over the path.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::fcntl::{LockFailure, fcntl, lock_owner};
use super::geometry::Geometry;
use super::header;
use super::layout::{KeyHash, Layout};
use super::lock::{Held, Reentry};
use super::registry::{Entry, lock_registry, open_registered};
use super::shared::SharedFile;
use super::{OpenRequest, OverflowRequest, Requested, Route};
use crate::page::consts::{FLAG_DIRTY, FLAG_OVERFLOW, is_expired};
use crate::page::{Dirty, DirtyCopy, NewEntry, PageView, StoreOutcome};
use crate::{Error, Result};

/// Most moves one operation follows before it gives up (each is a whole resize finished while
/// the operation ran).
pub(crate) const MAX_FOLLOWS: usize = 64;

/// What one resize did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Moved {
    /// From the first lock of the old file taken to the last let go: the longest any user of
    /// the old file can have waited for this move.
    pub held: Duration,
    /// Entries copied to the new file.
    pub copied: u64,
    /// Entries that did not fit their new page (evicted by its policy, or larger than a new
    /// page can hold).
    pub dropped: u64,
    /// Dirty (write-back) entries among `dropped` that no backing store took: lost.
    pub dirty_dropped: u64,
    /// Dirty entries among `dropped` handed to the caller's write-back (in the backing store
    /// before the move was published).
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
    /// is real. Marks in a file that is not *moved* are damage, or the marks of a resizer that
    /// died before it finished marking (the old file is still the one in use): cleared.
    #[cold]
    pub(super) fn moved_under_lock(&self, page: u32) -> bool {
        if self.is_moved() {
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
        if self.resize_word(header::STATE_OFFSET) != u64::from(header::STATE_MOVED) {
            return Err(self.resize_error("followed a file that was not moved"));
        }
        let nonce = self.resize_word(header::SUCCESSOR_OFFSET);
        let temp = successor_path(&self.path, nonce);
        let mut last = None;
        for (candidate, by_temp) in [(&temp, true), (&self.path, false)] {
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
            if by_temp {
                finish_rename(&temp, &self.path, self);
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

/// A resizer died between marking the old file moved and renaming the successor over the
/// path: rename it now, if the path still names the old file (a later resize may have
/// published a newer one).
fn finish_rename(temp: &Path, path: &Path, old: &SharedFile) {
    let Ok(old_md) = old.file.metadata() else {
        return;
    };
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.dev() == old_md.dev() && md.ino() == old_md.ino() => {
            let _ = std::fs::rename(temp, path);
        }
        _ => {}
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
    /// thread already has.
    pub(crate) fn follow(&self, from: &SharedFile) -> Result<()> {
        if !std::ptr::eq(self.now.load(Ordering::Acquire), from) {
            return Ok(());
        }
        let next = from.successor()?;
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

/// Every lock of the old file, held by the resizer; let go (page locks first) when dropped.
struct AllHeld<'a> {
    file: &'a SharedFile,
    write_back: Vec<Held>,
    pages: Vec<Held>,
    _reentry: Reentry,
    _wb_reentry: Reentry,
}

impl Drop for AllHeld<'_> {
    fn drop(&mut self) {
        let f = self.file;
        let fd = f.file.as_raw_fd();
        for (page, held) in self.pages.iter().enumerate().rev() {
            let page = page as u32;
            if held.generation() == super::fork::generation() {
                f.end_change(page);
            }
            f.locks.release(fd, page, f.page_range(page), held);
        }
        for (page, held) in self.write_back.iter().enumerate().rev() {
            let page = page as u32;
            f.write_back_locks
                .release(fd, page, f.write_back_range(page), held);
        }
    }
}

/// Takes every write-back lock, then every page lock, of `f`, each waiting until `deadline`.
fn lock_all(f: &SharedFile, deadline: Instant) -> Result<AllHeld<'_>> {
    let id = f as *const SharedFile as usize;
    let (Some(reentry), Some(wb_reentry)) = (Reentry::enter(id), Reentry::enter(id + 1)) else {
        return Err(Error::Reentrant {
            path: f.path.clone(),
        });
    };
    let mut all = AllHeld {
        file: f,
        write_back: Vec::with_capacity(f.geometry.num_pages as usize),
        pages: Vec::with_capacity(f.geometry.num_pages as usize),
        _reentry: reentry,
        _wb_reentry: wb_reentry,
    };
    let fd = f.file.as_raw_fd();
    let failed = |page: u32, lock: crate::LockRole, e: LockFailure| {
        let timeout = deadline.saturating_duration_since(Instant::now());
        let e = match e {
            LockFailure::TimedOut => super::LockError::TimedOut,
            LockFailure::Os(e) => super::LockError::Os(e),
        };
        f.lock_error(e, lock, page, Some(timeout))
    };
    for page in 0..f.geometry.num_pages {
        let held = f
            .write_back_locks
            .acquire(fd, page, f.write_back_range(page), Some(deadline), false)
            .map_err(|e| failed(page, crate::LockRole::WriteBack, e))?;
        all.write_back.push(held);
    }
    for page in 0..f.geometry.num_pages {
        let held = f
            .locks
            .acquire(fd, page, f.page_range(page), Some(deadline), false)
            .map_err(|e| failed(page, crate::LockRole::Page, e))?;
        f.begin_change(page);
        all.pages.push(held);
    }
    Ok(all)
}

/// The in-process and fcntl resize locks of a file; let go when dropped.
struct ResizeLock<'a> {
    file: &'a SharedFile,
    _local: LocalResize<'a>,
}

/// This process's claim on resizing a file (`SharedFile::resizing`); let go when dropped.
struct LocalResize<'a>(&'a AtomicU32);

impl<'a> LocalResize<'a> {
    /// Claims `word` unless a thread of this process, since its last fork, holds it: a claim
    /// made in another fork generation belongs to a thread that does not exist here (a fork
    /// from another thread mid-resize), so it counts as free.
    fn claim(word: &'a AtomicU32) -> Option<LocalResize<'a>> {
        let mine = super::fork::generation().wrapping_add(1).max(1);
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

/// Writes dirty entries a resize could not place to a backing store (see [`resize`]).
pub(crate) type WriteBack<'w> = &'w mut dyn FnMut(&[DirtyCopy]) -> Result<()>;

/// Moves every entry of `old` to a new file of geometry `to` and publishes it at `old`'s path.
/// `now` is the time of the cache's clock (expired entries are not copied); each lock is
/// waited for at most `wait`.
///
/// With `write_back`, the dirty entries that do not fit the new file (evicted by a new page's
/// policy, too large for it, or with no room in the new overflow area) are copied out with
/// their bytes (a large value's read from the old area, compressed as stored) and handed to it
/// once, after the new file is built and *before* anything is marked moved, while every
/// write-back lock and every page lock of the old file is still held (the exception to the
/// rule that no store is called under a page lock, as in write-back's last round: the store
/// must have them before the old file, their only other home, stops being used, and nobody
/// else may change or write back the old file meanwhile). If it fails, the resize rolls back:
/// nothing is marked, the successor is removed, and the old file stays in use with every entry
/// dirty as it was. Without `write_back` they are dropped and counted in `dirty_dropped` (and
/// the new file's `dirty_lost`).
pub(crate) fn resize(
    old: &SharedFile,
    to: Geometry,
    now: u32,
    wait: Duration,
    write_back: Option<WriteBack<'_>>,
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
    match old.resize_word(header::STATE_OFFSET) as u32 {
        header::STATE_MOVED => {
            return Err(old.resize_error("the file was moved already: follow it first"));
        }
        header::STATE_BUILDING => {
            // A resizer died building a successor nobody uses.
            let nonce = old.resize_word(header::SUCCESSOR_OFFSET);
            remove_successor(&successor_path(&old.path, nonce));
        }
        _ => {}
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
    let building = RemoveUnlessPublished {
        path: &temp,
        published: false,
    };
    let new = {
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
            ..old.request.clone()
        };
        open_registered(&mut reg, &req, &old.path)?
    };
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

    let locking = Instant::now();
    let deadline = locking + wait;
    let all = lock_all(old, deadline)?;
    let mut moved = Moved::default();
    // Dirty entries that do not fit, copied out for `write_back`.
    let mut unplaced: Vec<DirtyCopy> = Vec::new();
    let mut buckets: Vec<Vec<Moving>> = (0..to.num_pages).map(|_| Vec::new()).collect();
    let g = old.geometry;
    for page in 0..g.num_pages {
        if old
            .row(page)
            .is_some_and(|r| r.busy.load(Ordering::Acquire) != 0)
        {
            moved.damaged_pages += 1;
            continue;
        }
        let (offset, len) = old.page_range(page);
        // SAFETY: the page lies inside the mapping (page < num_pages, file size checked on
        // open); `all` holds its lock, so no cooperating writer changes it while this shared
        // slice lives, and it does not outlive this iteration.
        let bytes = unsafe {
            std::slice::from_raw_parts(old.map.as_ptr().add(offset as usize), len as usize)
        };
        let view = PageView::with_min_slots(bytes, g.start_slots);
        let walked = view.for_each_entry_protected(|e, protected| {
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
            buckets[dest as usize].push(Moving {
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
    for (dest, bucket) in (0u32..).zip(&mut buckets) {
        if bucket.is_empty() {
            continue;
        }
        // The most recently used last, so that a page too small keeps them.
        bucket.sort_by_key(|m| m.last_access);
        let mut guard = new
            .lock(dest, None)
            .map_err(|e| new.lock_error(e, crate::LockRole::Page, dest, None))?;
        let mut lost = Vec::new();
        for m in bucket.iter() {
            let req = NewEntry {
                slot_hash: m.slot_hash,
                key: &m.key,
                value: &m.value,
                expire_on: m.expire_on,
                flags: m.flags,
                modseq: m.modseq,
            };
            let at = m.last_access.max(1);
            // As any store: in the page if the entry fits an empty one, else in the overflow
            // area if the value fits it (a page size change can move a value either way). Dirty
            // entries the page's policy evicts to make room are copied into `lost`.
            let mut dirty = Dirty::collect(&mut lost);
            let stored = if new.route(&req) == Route::Overflow {
                // A full area: the value is dropped, nothing stored.
                guard
                    .store_overflow_with(&req, |p, entry| {
                        p.store_dirty(entry, at, to.start_slots, false, &mut dirty)
                    })
                    .map(|stored| stored.unwrap_or(None))
            } else {
                guard.change(|p| p.store_dirty(&req, at, to.start_slots, false, &mut dirty))
            };
            let stored = matches!(stored, Ok(Some(StoreOutcome::Stored)));
            // The policy's protected bit is set by the page on a hit, never taken from a
            // caller: a read at the entry's own access time sets it, changing nothing else.
            if m.protected && stored {
                let _ = guard.change(|p| p.get(req.slot_hash, req.key, at, false).map(|_| ()));
            }
            if !stored && m.flags & FLAG_DIRTY != 0 {
                unplaced.push(m.dirty_copy());
            }
        }
        // The entries the page's policy evicted, copied from what was moved (their bytes, not
        // a reference into the new area).
        if !lost.is_empty() {
            let dirty: HashMap<&[u8], &Moving> = bucket
                .iter()
                .filter(|m| m.flags & FLAG_DIRTY != 0)
                .map(|m| (&m.key[..], m))
                .collect();
            unplaced.extend(
                lost.iter()
                    .filter_map(|copy| dirty.get(&copy.key[..]))
                    .map(|m| m.dirty_copy()),
            );
        }
        let mut kept = 0u64;
        let _ = guard.page().view().for_each_entry(|_| kept += 1);
        moved.copied += kept;
        moved.dropped += (bucket.len() as u64).saturating_sub(kept);
    }
    if !unplaced.is_empty() {
        match write_back {
            // On an error `all`, then `building` (which removes the successor), are dropped
            // before anything is marked: the old file stays the one in use.
            Some(write_back) => {
                write_back(&unplaced)?;
                moved.written_back += unplaced.len() as u64;
            }
            None => moved.dirty_dropped += unplaced.len() as u64,
        }
    }
    if moved.dirty_dropped > 0 {
        new.dirty_lost
            .fetch_add(moved.dirty_dropped, Ordering::Relaxed);
    }
    // The marks, under every lock, then the new name.
    for page in 0..g.num_pages {
        if let Some(row) = old.row(page) {
            row.moved.store(1, Ordering::Release);
        }
    }
    old.set_resize_word(header::STATE_OFFSET, u64::from(header::STATE_MOVED));
    // This process follows to the file just built (the registry keeps only weak references:
    // without this, `new`, and its count of lost dirty entries, would be dropped on return).
    // A follower of this process may have set it already, to the same file.
    {
        let _reg = lock_registry();
        let _ = old.successor.set(Arc::clone(&new));
    }
    let renamed = std::fs::rename(&temp, &old.path);
    let mut building = building;
    building.published = true;
    drop(all);
    moved.held = locking.elapsed();
    renamed.map_err(|source| Error::Io {
        path: old.path.clone(),
        op: "rename the resized file over the path (the cache was moved; its users follow it \
             under its temporary name until the next resize or follower renames it)",
        source,
    })?;
    Ok(moved)
}

/// Removes a successor that was not published (a resize that failed before its marks).
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
