//! The `fcntl` record-lock calls: page locks of the fcntl kind, and the openers lock of the
//! robust kind.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Why a lock was not taken.
pub(crate) enum LockFailure {
    TimedOut,
    Os(io::Error),
}

/// Backoff between polls while waiting with a deadline.
fn backoff(step: &mut Duration, deadline: Instant) -> bool {
    let now = Instant::now();
    if now >= deadline {
        return false;
    }
    std::thread::sleep((*step).min(deadline - now));
    *step = (*step * 2).min(Duration::from_millis(5));
    true
}

/// One `fcntl` record-lock call on `(start, len)` of `fd`, with the `flock` it was given
/// (`F_GETLK` writes the conflicting lock into it).
fn fcntl_call(
    fd: RawFd,
    cmd: libc::c_int,
    kind: libc::c_short,
    (start, len): (u64, u64),
) -> io::Result<libc::flock> {
    // SAFETY: `flock` is plain data; zeroed is a valid value for every field.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start as libc::off_t;
    fl.l_len = len as libc::off_t;
    // SAFETY: `fd` is an open descriptor owned by the caller's `File` for the duration of the
    // call, and `fl` is a valid, initialised flock structure that outlives the call.
    let rc = unsafe { libc::fcntl(fd, cmd, &mut fl) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fl)
    }
}

/// One `fcntl` record-lock call on `(start, len)` of `fd`.
pub(super) fn fcntl(
    fd: RawFd,
    cmd: libc::c_int,
    kind: libc::c_short,
    range: (u64, u64),
) -> io::Result<()> {
    fcntl_call(fd, cmd, kind, range).map(|_| ())
}

/// The process holding a lock on `range` of `fd` that a write lock would conflict with, if
/// the system says (`F_GETLK`).
pub(super) fn lock_owner(fd: RawFd, range: (u64, u64)) -> Option<i32> {
    let fl = fcntl_call(fd, libc::F_GETLK, libc::F_WRLCK as libc::c_short, range).ok()?;
    (fl.l_type != libc::F_UNLCK as libc::c_short).then_some(fl.l_pid)
}

/// Takes a `kind` record lock on `range`, waiting as long as it takes (retried on EINTR).
///
/// `EDEADLK` is retried too, after a short sleep: the kernel's deadlock detection sees
/// processes, not threads, so two processes whose threads each hold one page and wait for
/// another page look deadlocked while no thread waits for itself (no thread of this crate
/// waits for a page lock while holding another: see `store/lock.rs`; a resizer, which holds
/// many, never waits in the kernel).
pub(super) fn fcntl_wait(fd: RawFd, kind: libc::c_short, range: (u64, u64)) -> io::Result<()> {
    loop {
        match fcntl(fd, libc::F_SETLKW, kind, range) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EDEADLK) => {
                std::thread::sleep(Duration::from_micros(200));
            }
            other => return other,
        }
    }
}

pub(super) fn fcntl_lock(
    fd: RawFd,
    kind: libc::c_short,
    range: (u64, u64),
    deadline: Option<Instant>,
) -> Result<(), LockFailure> {
    let Some(deadline) = deadline else {
        return fcntl_wait(fd, kind, range).map_err(LockFailure::Os);
    };
    let mut step = Duration::from_micros(20);
    loop {
        match fcntl(fd, libc::F_SETLK, kind, range) {
            Ok(()) => return Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EAGAIN | libc::EACCES | libc::EINTR)
                ) =>
            {
                if !backoff(&mut step, deadline) {
                    return Err(LockFailure::TimedOut);
                }
            }
            Err(e) => return Err(LockFailure::Os(e)),
        }
    }
}
