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
    /// Entries this call copied to the new file that are still there at the end of their step.
    pub copied: u64,
    /// Entries that did not fit their new page (evicted by its policy, or larger than a new
    /// page holds): copies, or entries users had stored in the new file since their pages
    /// moved.
    pub dropped: u64,
    /// Dirty (write-back) entries among `dropped` that are lost: only on a handle without a
    /// backing store (it has nowhere to write them), or whose large value was found damaged.
    /// Also counted in [`Stats::dirty_lost`](crate::Stats::dirty_lost) of the resizing
    /// process. Resize through a handle with the backing store, or flush first
    /// ([`Cache::flush`]), to have none.
    pub dirty_dropped: u64,
    /// Dirty entries among `dropped` that a handle with a backing store wrote to it before
    /// they were dropped: in the store, not lost.
    pub written_back: u64,
    /// Pages found damaged (a process died changing them), whose entries were not copied.
    pub damaged_pages: u64,
    /// The old file's page locks' hold times added up: the move holds one old page at a
    /// time (each step: copy its entries out, store them in their new pages, mark it moved),
    /// so this is the time the move kept some page of the old file from its users, spread
    /// over as many steps as there are pages.
    pub locks_held: Duration,
    /// The longest one step held an old page's lock: the longest any operation waited for
    /// this move (see "Resizing a live cache" in the README).
    pub longest_step: Duration,
    /// Old pages moved by this call (a call that finished a stopped move counts only those
    /// it moved).
    pub pages_moved: u32,
}

impl ResizeReport {
    /// Adds what a second move of the same call did (a stopped move finished, then the
    /// file resized again).
    fn add(&mut self, m: &store::Moved) {
        self.copied += m.copied;
        self.dropped += m.dropped;
        self.dirty_dropped += m.dirty_dropped;
        self.written_back += m.written_back;
        self.damaged_pages += m.damaged_pages;
        self.locks_held += m.held;
        self.longest_step = self.longest_step.max(m.longest_step);
        self.pages_moved += m.pages_moved;
    }
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
    /// The move goes one old page at a time: a step locks one page of the old file, copies
    /// its entries out, stores them in their new pages (each locked in turn) and marks the old
    /// page moved; from then on every operation on its keys goes to the new file. So an
    /// operation waits at most for one step — about one page's entries copied and stored —
    /// never for the whole move: the report's [`longest_step`](ResizeReport::longest_step)
    /// says how long that was (see the README, "Resizing a live cache", for measured times).
    /// Large values are copied one old page at a time, so the move needs memory for one
    /// page's entries and their large values. Each lock is waited for at most the handle's
    /// [`lock_timeout`](crate::CacheBuilder::lock_timeout), or [`DEFAULT_RESIZE_LOCK_WAIT`].
    ///
    /// # A move that stops part way
    /// A resizer killed part way, or a move stopped by a backing store's error (below), leaves
    /// the cache in use and nothing lost: the keys of the pages already moved are served from
    /// the new file, the others from the old one, by every handle. The next `resize` (of any
    /// geometry) resumes it: it removes the copies a killed resizer left of the page it had
    /// not marked, resizes the stopped move's new file first if the geometry asked for is
    /// another, and moves the remaining old pages into the file of that geometry. The
    /// resizer's changes of the new file's pages (which users write into meanwhile) go
    /// through that file's journal, so a kill never costs users' writes there.
    ///
    /// # Dirty entries that do not fit
    /// On a handle with a backing store, the dirty entries a new page's store would evict (the
    /// moved ones, or entries users stored in the new file meanwhile) and those that fit no
    /// new page are written to the store first, while the step holds its locks (so the users
    /// of those pages wait for those calls too, each at most its `lock_timeout`; the store's
    /// callback cannot use this cache: [`Error::Reentrant`]). If the store fails, the move
    /// stops at that page: its copies are taken out of the new file, the error is returned,
    /// the page and those after it stay in the old file with their entries still dirty, and
    /// the next `resize` finishes the move. (With the `tracing` feature, a warning on target
    /// `fastmmap::resize` names the page of the old file the move stopped at, and how many
    /// it has.) Without a backing store they are dropped and
    /// counted in [`ResizeReport::dirty_dropped`].
    ///
    /// # Errors
    /// [`Error::ResizeInProgress`] if another thread or process is resizing the file;
    /// [`Error::Resize`] for a Cache::FastMmap-layout file; [`Error::InvalidOptions`] for a
    /// geometry the crate cannot use; [`Error::ReadOnly`]; lock timeouts, I/O errors
    /// ([`Error::NoSpace`]); [`Error::Backing`] from the backing store (the move stops, see
    /// above). A failed resize loses nothing: the cache stays in use, as it was or with part
    /// of its pages moved.
    pub fn resize(&self, num_pages: u32, page_size: u32) -> Result<ResizeReport> {
        self.resize_with(num_pages, page_size, None)
    }

    /// [`resize`](Self::resize) that stops once `pages` old pages are moved, leaving the move
    /// part way (for tests of a stopped move; the next `resize` finishes it).
    ///
    /// # Errors
    /// As [`resize`](Self::resize).
    #[doc(hidden)]
    pub fn resize_stopping_after(
        &self,
        num_pages: u32,
        page_size: u32,
        pages: u32,
    ) -> Result<ResizeReport> {
        self.resize_with(num_pages, page_size, Some(store::Stop::After(pages)))
    }

    /// [`resize`](Self::resize) that moves `pages` old pages, then stores the next page's
    /// entries in the first of their new pages and stops there without marking it or taking
    /// them out again: what a resizer killed in that page leaves (for tests of stale copies).
    ///
    /// # Errors
    /// As [`resize`](Self::resize).
    #[doc(hidden)]
    pub fn resize_abandoning_page(
        &self,
        num_pages: u32,
        page_size: u32,
        pages: u32,
    ) -> Result<ResizeReport> {
        self.resize_with(num_pages, page_size, Some(store::Stop::Abandoning(pages)))
    }

    fn resize_with(
        &self,
        num_pages: u32,
        page_size: u32,
        stop: Option<store::Stop>,
    ) -> Result<ResizeReport> {
        if self.inner.read_only {
            return Err(Error::ReadOnly {
                path: self.path().to_path_buf(),
            });
        }
        let wait = self.inner.lock_timeout.unwrap_or(DEFAULT_RESIZE_LOCK_WAIT);
        let mut report: Option<ResizeReport> = None;
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
            let moved = match store::resize(file, to, self.now(), wait, write_back, stop) {
                Ok(moved) => moved,
                // Moved by another resize before this one took the lock: resize the new file.
                Err(Error::Resize { .. }) if file.is_moved() => {
                    return self.follow(file).map(|()| None);
                }
                Err(e) => return Err(e),
            };
            let r = report.get_or_insert(ResizeReport {
                old_num_pages: old.num_pages,
                old_page_size: old.page_size,
                ..ResizeReport::default()
            });
            r.add(&moved);
            if !moved.finished {
                return Ok(Some(*r));
            }
            // The move ends in a file of the geometry asked for (a stopped move resumed is
            // taken there too).
            self.follow(file)?;
            Ok(Some(*r))
        })
    }
}
