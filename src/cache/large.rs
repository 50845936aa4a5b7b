//! Values larger than a page (native files with an overflow area; see `store/overflow.rs`):
//! storing one, making room in the area when it is full, and reclaiming blocks nothing
//! references (`check`).

use super::handle::{Cache, Loc, PageProblem};
use crate::page::consts::{FLAG_OVERFLOW, is_expired};
use crate::page::{NewEntry, PageView, StoreOutcome};
use crate::store::{LockError, MAX_FOLLOWS, PageGuard, Reader, SharedFile};
use crate::{Error, LockRole, Result};

/// A large value that may be evicted to make room in the overflow area.
struct Victim {
    slot_hash: u32,
    key: Vec<u8>,
    expired: bool,
    last_access: u32,
}

impl Cache {
    /// Stores `req`, whose entry does not fit a page, with its value in the overflow area.
    /// When the area is full, this page's other large values go first (expired ones, then
    /// the least recently used); what other pages must give up is the caller's to ask for
    /// (`store` lets go of this page's lock first).
    #[cold]
    pub(super) fn store_large(
        &self,
        guard: &mut PageGuard<'_>,
        req: &NewEntry<'_>,
        now: u32,
        in_place: bool,
    ) -> Result<StoreOutcome> {
        if !self.goes_to_overflow(req) {
            return Err(self.value_too_large(req));
        }
        let page = guard.page_index();
        let mut evicted = false;
        loop {
            // A page found damaged is reset by the change; the store is tried once more on
            // the fresh page.
            let outcome = match guard.store_overflow(req, now, in_place) {
                Ok(outcome) => outcome,
                Err(_) => guard
                    .store_overflow(req, now, in_place)
                    .map_err(|c| self.corrupt(page, c))?,
            };
            match outcome {
                Ok(StoreOutcome::TooLarge) => return Err(self.too_large(req)),
                Ok(outcome) => return Ok(outcome),
                Err(full) if !evicted => {
                    evicted = true;
                    self.evict_large_locked(guard, Some(req.key), full.needed, now, false);
                }
                Err(full) => {
                    return Err(Error::OverflowFull {
                        path: self.path().to_path_buf(),
                        needed: full.needed,
                        free: full.free,
                    });
                }
            }
        }
    }

    /// Makes room for `req` in the overflow area from pages other than `page` (whose lock
    /// the caller does not hold): expired large values first, then the least recently used
    /// of each page in turn, one page locked at a time, until enough blocks are free or
    /// every page was visited twice.
    pub(super) fn evict_overflow_elsewhere(
        &self,
        page: u32,
        req: &NewEntry<'_>,
        now: u32,
    ) -> Result<()> {
        let Some(usage) = self.inner.file.overflow_usage() else {
            return Ok(());
        };
        let needed = req
            .value
            .len()
            .div_ceil(usage.block_size.max(1) as usize)
            .max(1) as u32;
        let pages = self.num_pages();
        for expired_only in [true, false] {
            for i in 1..pages {
                if self.free_blocks() >= needed {
                    return Ok(());
                }
                let other = (page + i) % pages;
                let mut guard = self.lock_page(Loc::at(other))?;
                self.evict_large_locked(&mut guard, None, needed, now, expired_only);
            }
        }
        Ok(())
    }

    fn free_blocks(&self) -> u32 {
        self.inner
            .file
            .overflow_usage()
            .map_or(0, |u| u.blocks - u.used.min(u.blocks))
    }

    /// Removes large values of the locked page (never `keep`'s) until `needed` blocks are
    /// free: expired ones first, then (unless `expired_only`) the least recently used.
    fn evict_large_locked(
        &self,
        guard: &mut PageGuard<'_>,
        keep: Option<&[u8]>,
        needed: u32,
        now: u32,
        expired_only: bool,
    ) {
        let mut victims = Vec::new();
        let walked = PageView::new(guard.bytes()).for_each_entry(|e| {
            if e.flags & FLAG_OVERFLOW != 0 && keep != Some(e.key) {
                victims.push(Victim {
                    slot_hash: e.slot_hash,
                    key: e.key.to_vec(),
                    expired: is_expired(e.expire_on, now),
                    last_access: e.last_access,
                });
            }
        });
        if walked.is_err() {
            guard.reset();
            return;
        }
        victims.retain(|v| v.expired || !expired_only);
        victims.sort_by_key(|v| (!v.expired, v.last_access));
        for v in victims {
            if self.free_blocks() >= needed {
                return;
            }
            if guard
                .change(|p| p.remove(v.slot_hash, &v.key, now))
                .is_err()
            {
                return;
            }
        }
    }

    /// Frees the overflow blocks that no entry references — left by a damaged file, or by a
    /// process killed in a large write whose page nobody has locked since — checking every
    /// large value's reference and chain on the way (a page whose references fail is reset).
    /// One page locked at a time. Returns the blocks freed (0 without an overflow area).
    ///
    /// # Errors
    /// Lock errors.
    pub fn reclaim_overflow(&self) -> Result<u64> {
        if self.inner.file.overflow().is_none() {
            return Ok(0);
        }
        // A resize met part way: the walk starts over on the new file.
        'files: for _ in 0..MAX_FOLLOWS {
            let file: &SharedFile = &self.inner.file;
            let mut freed = 0u64;
            for page in 0..file.geometry().num_pages {
                let Some(mut guard) = self.lock_page_at(file, page)? else {
                    continue 'files;
                };
                freed += u64::from(guard.sweep_overflow());
            }
            freed += u64::from(file.overflow_free_unowned(false));
            return Ok(freed);
        }
        Err(self.too_many_moves())
    }

    /// Checks the overflow area without changing anything: the pages whose large values'
    /// references or blocks fail their checks, and the blocks held that no entry references
    /// (which [`reclaim_overflow`](Self::reclaim_overflow) frees). One page locked at a time.
    ///
    /// # Errors
    /// Lock errors.
    pub fn check_overflow(&self) -> Result<(Vec<PageProblem>, u64)> {
        if self.inner.file.overflow().is_none() {
            return Ok((Vec::new(), 0));
        }
        // A resize met part way: the walk starts over on the new file.
        'files: for _ in 0..MAX_FOLLOWS {
            let file: &SharedFile = &self.inner.file;
            let mut problems = Vec::new();
            let mut unreferenced = 0u64;
            for page in 0..file.geometry().num_pages {
                // A shared lock, as `validate` takes: checking changes nothing.
                let timeout = self.inner.lock_timeout;
                let guard = match file.lock_shared(page, timeout) {
                    Ok(guard) => guard,
                    Err(LockError::Moved) => {
                        self.follow(file)?;
                        continue 'files;
                    }
                    Err(e) => return Err(file.lock_error(e, LockRole::Page, page, timeout)),
                };
                match Reader::Shared(guard).overflow_unreferenced() {
                    Ok(n) => unreferenced += u64::from(n),
                    Err(c) => problems.push(PageProblem { page, reason: c.0 }),
                }
            }
            unreferenced += u64::from(file.overflow_free_unowned(true));
            return Ok((problems, unreferenced));
        }
        Err(self.too_many_moves())
    }
}
