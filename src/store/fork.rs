//! Fork from any thread at any time.
//!
//! A child of `fork` has one thread, the one that forked, and a copy of every lock word of
//! the parent's memory, including words held by threads that do not exist in the child. So:
//!
//! - the **registry** (a short critical section, never held across user code) is locked by a
//!   `pthread_atfork` prepare handler and unlocked after the fork in parent and child, so the
//!   child gets it unlocked and consistent;
//! - **in-process page locks** (fcntl kind) record the fork generation they were taken in; a
//!   word of an earlier generation names a thread that does not exist here and counts as free
//!   (see [`LocalLock`]). Nothing else is needed: the child holds no fcntl record lock, and the
//!   kernel still keeps it off a page that the parent's thread has until that thread lets go;
//! - **robust locks** rejoin the openers lock in a new generation (see `robust.rs`); their
//!   words name the parent's thread as owner, so the child waits for it like any process.
//!
//! Re-entrancy marks are thread-local and so belong to the forking thread alone. A lock that
//! the forking thread itself holds (a fork from inside a closure that runs under a page lock)
//! is not the child's: the child's copy of that guard releases nothing.

#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Bumped in every child right after `fork`.
static GENERATION: AtomicU32 = AtomicU32::new(0);

/// The fork generation of this process: how many forks separate it from the process that
/// first opened a cache (only counted once [`install`] has run).
#[inline]
pub(crate) fn generation() -> u32 {
    GENERATION.load(Ordering::Relaxed)
}

extern "C" fn prepare() {
    super::registry::lock_for_fork();
}

extern "C" fn in_parent() {
    super::registry::unlock_after_fork();
}

extern "C" fn in_child() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
    super::registry::unlock_after_fork();
}

/// [`install`]'s progress: not yet, under way (in one thread), done.
static INSTALL: AtomicU8 = AtomicU8::new(NOT_INSTALLED);
const NOT_INSTALLED: u8 = 0;
const INSTALLING: u8 = 1;
const INSTALLED: u8 = 2;
/// How long a thread waits for another thread's install before going on without it: only a
/// child forked in the middle of one waits that long (its installing thread is gone).
const INSTALL_WAIT: Duration = Duration::from_millis(10);

/// Installs the fork handlers, once per process, before the first cache is opened.
///
/// Not a `std::sync::Once`: a fork from another thread in the middle of `call_once` would
/// leave the child's copy running forever, and its first open would wait for it forever.
pub(crate) fn install() {
    if INSTALL.load(Ordering::Acquire) == INSTALLED {
        return;
    }
    if INSTALL
        .compare_exchange(
            NOT_INSTALLED,
            INSTALLING,
            Ordering::Acquire,
            Ordering::Acquire,
        )
        .is_err()
    {
        let deadline = Instant::now() + INSTALL_WAIT;
        while INSTALL.load(Ordering::Acquire) == INSTALLING && Instant::now() < deadline {
            std::thread::yield_now();
        }
        return;
    }
    // SAFETY: the handlers are plain functions. The prepare handler takes the registry
    // lock (held only briefly, never across user code, and never by a thread that forks,
    // since nothing under it forks); the others release it and bump an atomic, which is
    // all a child may safely do before it is running normally.
    let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(in_parent), Some(in_child)) };
    // pthread_atfork fails only with ENOMEM, at start-up; forks are then not protected.
    debug_assert_eq!(rc, 0, "pthread_atfork");
    INSTALL.store(INSTALLED, Ordering::Release);
}

/// Tag of a lock held in fork generation `generation`: never 0 (free) and never has
/// [`WAITERS`] set.
#[inline]
fn tag(generation: u32) -> u32 {
    generation % (WAITERS - 1) + 1
}

/// Set in a held lock's word while a thread may be waiting for it.
const WAITERS: u32 = 1 << 31;

/// An in-process mutex that a fork cannot leave held: its word is 0 when free, else the tag of
/// the fork generation it was taken in (plus [`WAITERS`]). A word tagged with another
/// generation was taken by a thread of an ancestor process, which does not exist here, so it
/// counts as free. Waiting is a futex wait on the word.
pub(crate) struct LocalLock(AtomicU32);

/// Why [`LocalLock::lock`] returned without the lock.
pub(crate) struct TimedOut;

impl LocalLock {
    pub(crate) const fn new() -> LocalLock {
        LocalLock(AtomicU32::new(0))
    }

    /// Takes the lock, waiting until `deadline` at most. Returns the generation it was taken
    /// in, which [`unlock`](Self::unlock) needs.
    #[inline]
    pub(crate) fn lock(&self, deadline: Option<std::time::Instant>) -> Result<u32, TimedOut> {
        let generation = generation();
        let mine = tag(generation);
        if self
            .0
            .compare_exchange(0, mine, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return Ok(generation);
        }
        self.lock_slow(mine, deadline).map(|()| generation)
    }

    #[cold]
    fn lock_slow(&self, mine: u32, deadline: Option<std::time::Instant>) -> Result<(), TimedOut> {
        // After a wait, other waiters may remain: take the lock with the waiters bit, so that
        // its release wakes the next one.
        let mut take_as = mine;
        let mut word = self.0.load(Ordering::Relaxed);
        loop {
            if word == 0 || word & !WAITERS != mine {
                // Free, or held by a thread of an ancestor process.
                match self
                    .0
                    .compare_exchange(word, take_as, Ordering::Acquire, Ordering::Relaxed)
                {
                    Ok(_) => return Ok(()),
                    Err(found) => {
                        word = found;
                        continue;
                    }
                }
            }
            if word & WAITERS == 0 {
                if let Err(found) = self.0.compare_exchange(
                    word,
                    word | WAITERS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    word = found;
                    continue;
                }
                word |= WAITERS;
            }
            let timeout = match deadline {
                None => None,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Err(TimedOut);
                    }
                    Some(left)
                }
            };
            wait(&self.0, word, timeout);
            take_as = mine | WAITERS;
            word = self.0.load(Ordering::Relaxed);
        }
    }

    /// Releases a lock taken by [`lock`](Self::lock) in `generation`. In a child forked while
    /// it was held, the lock is not the child's, and nothing is done.
    #[inline]
    pub(crate) fn unlock(&self, generation: u32) {
        if generation != self::generation() {
            return;
        }
        if self.0.swap(0, Ordering::Release) & WAITERS != 0 {
            wake_one(&self.0);
        }
    }
}

/// Sleeps while `word` holds `expected`, for `timeout` at most; may return early.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn wait(word: &AtomicU32, expected: u32, timeout: Option<std::time::Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |ts| ts as *const libc::timespec);
    // SAFETY: `word` is a live, aligned u32 for the duration of the call; `ts_ptr` is null or
    // points to a timespec that outlives the call. A spurious or interrupted return is fine:
    // the caller re-reads the word.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ts_ptr,
        );
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn wake_one(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned u32; waking has no other precondition.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        );
    }
}

/// Without futexes: a short sleep, re-checked by the caller.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn wait(word: &AtomicU32, expected: u32, timeout: Option<std::time::Duration>) {
    if word.load(Ordering::Relaxed) == expected {
        let nap = std::time::Duration::from_micros(50);
        std::thread::sleep(timeout.map_or(nap, |t| t.min(nap)));
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn wake_one(_: &AtomicU32) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn excludes_threads_and_times_out() {
        let lock = Arc::new(LocalLock::new());
        let counter = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (lock, counter) = (lock.clone(), counter.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let g = lock.lock(None).ok().expect("no deadline");
                        // A non-atomic increment in two steps: lost updates show a failure.
                        let v = counter.load(Ordering::Relaxed);
                        counter.store(v + 1, Ordering::Relaxed);
                        lock.unlock(g);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.load(Ordering::Relaxed), 80_000);

        let g = lock.lock(None).ok().expect("free");
        let start = Instant::now();
        let lock2 = lock.clone();
        let timed_out = std::thread::spawn(move || {
            lock2
                .lock(Some(Instant::now() + Duration::from_millis(30)))
                .is_err()
        })
        .join()
        .unwrap();
        assert!(timed_out && start.elapsed() >= Duration::from_millis(30));
        lock.unlock(g);
        assert!(lock.lock(Some(Instant::now())).is_ok());
    }

    #[test]
    fn a_word_of_another_generation_is_free() {
        let lock = LocalLock::new();
        // As a child finds a lock that a thread of its parent held at the fork.
        lock.0.store(
            tag(generation().wrapping_sub(1)) | WAITERS,
            Ordering::Relaxed,
        );
        let g = lock
            .lock(Some(Instant::now() + Duration::from_millis(10)))
            .ok()
            .expect("taken");
        assert_eq!(lock.0.load(Ordering::Relaxed), tag(generation()));
        lock.unlock(g);
        assert_eq!(lock.0.load(Ordering::Relaxed), 0);
    }
}
