//! `Cache::resize`: moving a live cache to a file of another geometry (see `store/resize.rs`
//! for the protocol every process follows).

use std::time::Duration;

use super::handle::Cache;
use crate::page::DirtyCopy;
use crate::store::{self, Geometry};
use crate::{Error, Result};

/// How long [`Cache::resize`] waits for each lock when the handle has no
/// [`lock_timeout`](crate::CacheBuilder::lock_timeout).
pub const DEFAULT_RESIZE_LOCK_WAIT: Duration = Duration::from_secs(10);

/// What [`Cache::resize`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResizeReport {
    /// Pages before.
    pub old_num_pages: u32,
    /// Page size before.
    pub old_page_size: u32,
    /// Entries now in the new file.
    pub copied: u64,
    /// Live entries that did not fit their new page (evicted by its policy, or larger than a
    /// new page holds).
    pub dropped: u64,
    /// Dirty (write-back) entries among `dropped` that are lost: only on a handle without a
    /// backing store (it has nowhere to write them), or whose large value was found damaged.
    /// Also counted in [`Stats::dirty_lost`](crate::Stats::dirty_lost) of the resizing
    /// process. Resize through a handle with the backing store, or flush first
    /// ([`Cache::flush`]), to have none.
    pub dirty_dropped: u64,
    /// Dirty entries among `dropped` that a handle with a backing store wrote to it before the
    /// move was published: in the store, not lost.
    pub written_back: u64,
    /// Pages found damaged (a process died changing them), whose entries were not copied.
    pub damaged_pages: u64,
    /// How long the resize held locks of the old file, from the first taken to the last let
    /// go: the longest any operation can have waited for this move (see "Resizing a live
    /// cache" in the README).
    pub locks_held: Duration,
}

impl Cache {
    /// Moves the cache, while every thread and process keeps using it, to a new file of
    /// `num_pages` pages of `page_size` bytes (the slots each page starts with stay as they
    /// are), which takes the old file's path.
    ///
    /// Every live entry that fits keeps its value, expiry, flags (the dirty flag too), modseq
    /// and access time; when shrinking, what does not fit is evicted by the new page's policy
    /// and counted in the report; on a handle with a [`backing`](crate::CacheBuilder::backing)
    /// store, the dirty entries among them are written to it first (see below). A file with an overflow area keeps one of the same size and
    /// [`max_value_size`](Self::max_value_size): each large value is read and checked from
    /// the old area and written to the new one, or stored in its page if the new page size
    /// holds it (and a value a smaller page no longer holds goes to the area; with no room
    /// anywhere it is dropped and counted). Entries the eviction policy had protected stay
    /// protected. Every handle, in this process and others, follows the move by itself at its
    /// next operation; the old file's space is freed once no process maps it (a handle keeps
    /// each file it followed mapped until it is dropped).
    ///
    /// This first version holds every page lock of the old file while it copies, so each
    /// operation of every user waits at most for one whole move: the report's
    /// [`locks_held`](ResizeReport::locks_held) says how long that was (see the README,
    /// "Resizing a live cache", for measured times). Each lock is waited for at most the handle's
    /// [`lock_timeout`](crate::CacheBuilder::lock_timeout), or [`DEFAULT_RESIZE_LOCK_WAIT`].
    ///
    /// # Dirty entries that do not fit
    /// On a handle with a backing store, the dirty entries that do not fit the new file are
    /// written to the store after the new file is built and before any user is moved to it,
    /// while the resize still holds every lock of the old file (so every user waits for those
    /// calls too, each at most its `lock_timeout`; the store's callback cannot use this cache:
    /// [`Error::Reentrant`]). If the store fails, the resize is rolled back: the error is
    /// returned, the old file stays in use with those entries still in it and still dirty,
    /// and the new file is removed; written ones are in the store, which is harmless. Without
    /// a backing store they are dropped and counted in [`ResizeReport::dirty_dropped`].
    ///
    /// # Errors
    /// [`Error::ResizeInProgress`] if another thread or process is resizing the file;
    /// [`Error::Resize`] for a Cache::FastMmap-layout file; [`Error::InvalidOptions`] for a
    /// geometry the crate cannot use; [`Error::ReadOnly`]; lock timeouts, I/O errors
    /// ([`Error::NoSpace`]); [`Error::Backing`] from the backing store (rolled back, see above).
    /// A failed resize leaves the cache as it was.
    pub fn resize(&self, num_pages: u32, page_size: u32) -> Result<ResizeReport> {
        if self.inner.read_only {
            return Err(Error::ReadOnly {
                path: self.path().to_path_buf(),
            });
        }
        let wait = self.inner.lock_timeout.unwrap_or(DEFAULT_RESIZE_LOCK_WAIT);
        self.follow_moves(&self.inner.file, |file| {
            let old = file.geometry();
            let to = Geometry {
                num_pages,
                page_size,
                start_slots: old.start_slots,
            };
            let mut write_back = |copies: &[DirtyCopy]| self.write_back(copies);
            let write_back: Option<store::WriteBack<'_>> =
                self.has_backing().then_some(&mut write_back);
            match store::resize(file, to, self.now(), wait, write_back) {
                Ok(moved) => {
                    self.follow(file)?;
                    Ok(Some(ResizeReport {
                        old_num_pages: old.num_pages,
                        old_page_size: old.page_size,
                        copied: moved.copied,
                        dropped: moved.dropped,
                        dirty_dropped: moved.dirty_dropped,
                        written_back: moved.written_back,
                        damaged_pages: moved.damaged_pages,
                        locks_held: moved.held,
                    }))
                }
                // Moved by another resize before this one took the lock: resize the new file.
                Err(Error::Resize { .. }) if file.is_moved() => self.follow(file).map(|()| None),
                Err(e) => Err(e),
            }
        })
    }
}
