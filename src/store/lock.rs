//! Page locks. One small interface (`PageLocks::acquire` / `release`) over the two kinds, so
//! page and cache code never see which is in use.
//!
//! `Fcntl`: an in-process mutex per page (fcntl record locks belong to the process, so they do
//! not exclude threads), then `fcntl(F_SETLKW, F_WRLCK)` on the page's byte range, retried on
//! EINTR. The kernel drops the record lock when its owner dies.
//!
//! `Robust`: a process-shared robust mutex per page in the file header; see [`super::robust`].

#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::time::Instant;

use super::fcntl::{LockFailure, fcntl, fcntl_lock};
use super::fork::{self, LocalLock};
use super::robust::{RobustHeld, RobustLocks};

/// The locks of every page of one file, in this process.
pub(crate) enum PageLocks {
    Fcntl { mutexes: Box<[LocalLock]> },
    Robust(RobustLocks),
}

impl Held {
    /// The fork generation the lock was taken in.
    #[inline]
    pub(crate) fn generation(&self) -> u32 {
        match self {
            Held::Fcntl { generation } => *generation,
            Held::Robust(held) => held.generation(),
        }
    }
}

/// A held lock: what [`PageLocks::release`] needs to let it go.
pub(crate) enum Held {
    /// The in-process lock, taken in this fork generation; the byte-range lock is released by
    /// `release`.
    Fcntl {
        generation: u32,
    },
    Robust(RobustHeld),
}

impl PageLocks {
    /// Fcntl locks for a file of `num_pages` pages.
    pub(crate) fn fcntl(num_pages: u32) -> PageLocks {
        PageLocks::Fcntl {
            mutexes: (0..num_pages).map(|_| LocalLock::new()).collect(),
        }
    }

    /// Takes page `page`'s lock, whose byte range is `range` of the file `fd`: with `shared`,
    /// a read record lock (fcntl kind; a robust lock has one mode).
    #[inline(always)]
    pub(crate) fn acquire(
        &self,
        fd: RawFd,
        page: u32,
        range: (u64, u64),
        deadline: Option<Instant>,
        shared: bool,
    ) -> Result<Held, LockFailure> {
        match self {
            PageLocks::Fcntl { mutexes } => {
                let mutex = &mutexes[page as usize];
                let generation = mutex.lock(deadline).map_err(|_| LockFailure::TimedOut)?;
                let kind = if shared { libc::F_RDLCK } else { libc::F_WRLCK };
                if let Err(e) = fcntl_lock(fd, kind as libc::c_short, range, deadline) {
                    mutex.unlock(generation);
                    return Err(e);
                }
                Ok(Held::Fcntl { generation })
            }
            PageLocks::Robust(locks) => Ok(Held::Robust(locks.acquire(fd, page, deadline)?)),
        }
    }

    /// Releases what [`acquire`](Self::acquire) took (for fcntl, the byte range first), once:
    /// only the drop of the guard that owns `held` calls this. A lock taken before a fork is
    /// not the child's: the child releases nothing.
    #[inline]
    pub(crate) fn release(&self, fd: RawFd, page: u32, range: (u64, u64), held: &Held) {
        match (self, held) {
            (PageLocks::Robust(locks), Held::Robust(held)) => locks.release(page, held),
            (PageLocks::Fcntl { mutexes }, &Held::Fcntl { generation }) => {
                if generation == fork::generation() {
                    // Unlocking a range we hold cannot fail on a valid descriptor; if it did,
                    // the lock would go with the descriptor anyway.
                    let _ = fcntl(fd, libc::F_SETLK, libc::F_UNLCK as libc::c_short, range);
                }
                mutexes[page as usize].unlock(generation);
            }
            _ => unreachable!("a held lock of the other kind"),
        }
    }
}

thread_local! {
    /// The file (by the address of its shared state) whose page lock this thread holds, or 0:
    /// the common case of one lock at a time, kept in plain cells.
    static FIRST: Cell<usize> = const { Cell::new(0) };
    /// How many entries `MORE` has.
    static NESTED: Cell<usize> = const { Cell::new(0) };
    /// Further files locked at the same time (a closure of one cache using another).
    static MORE: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Marks this thread as holding a lock of file `id` until dropped; `None` if it already does.
pub(crate) struct Reentry {
    id: usize,
    first: bool,
}

impl Reentry {
    /// Whether this thread holds a lock of file `id`.
    #[inline]
    pub(crate) fn held(id: usize) -> bool {
        FIRST.with(Cell::get) == id
            || (NESTED.with(Cell::get) != 0 && MORE.with(|more| more.borrow().contains(&id)))
    }

    #[inline]
    pub(crate) fn enter(id: usize) -> Option<Reentry> {
        debug_assert_ne!(id, 0);
        let first = FIRST.with(Cell::get);
        if first == id {
            return None;
        }
        if first == 0 && NESTED.with(Cell::get) == 0 {
            FIRST.with(|f| f.set(id));
            return Some(Reentry { id, first: true });
        }
        MORE.with(|more| {
            let mut more = more.borrow_mut();
            if more.contains(&id) {
                return None;
            }
            more.push(id);
            NESTED.with(|n| n.set(more.len()));
            Some(Reentry { id, first: false })
        })
    }
}

impl Drop for Reentry {
    #[inline]
    fn drop(&mut self) {
        if self.first {
            FIRST.with(|f| f.set(0));
            return;
        }
        MORE.with(|more| {
            let mut more = more.borrow_mut();
            if let Some(pos) = more.iter().rposition(|&id| id == self.id) {
                more.swap_remove(pos);
            }
            NESTED.with(|n| n.set(more.len()));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::Reentry;

    #[test]
    fn reentry_is_per_file_in_any_drop_order() {
        let a = Reentry::enter(1).expect("first");
        assert!(Reentry::enter(1).is_none());
        let b = Reentry::enter(2).expect("nested");
        assert!(Reentry::enter(2).is_none());
        let c = Reentry::enter(3).expect("nested twice");
        // Released out of order: the first, while others are still held.
        drop(a);
        assert!(Reentry::enter(2).is_none());
        assert!(Reentry::enter(3).is_none());
        let a2 = Reentry::enter(1).expect("free again");
        drop(c);
        drop(b);
        assert!(Reentry::enter(1).is_none());
        let b2 = Reentry::enter(2).expect("free again");
        drop(a2);
        drop(b2);
        let all = [1, 2, 3].map(|id| Reentry::enter(id).expect("all free"));
        drop(all);
        assert!(Reentry::enter(3).is_some());
    }
}
