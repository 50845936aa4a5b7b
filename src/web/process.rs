//! Process control for the prefork server (`web::Prefork`): safe wrappers over `fork`,
//! `waitpid`, `kill`, the signal mask, `sigtimedwait`, `signalfd`, `poll` and `getrlimit`: the
//! one file of the web layer allowed `unsafe` code, so that the rest of it has none.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A process id.
pub(crate) type Pid = libc::pid_t;

pub(crate) use libc::{SIGCHLD, SIGINT, SIGTERM};

/// The size of what a `signalfd` yields per signal.
pub(crate) const SIGNAL_INFO_SIZE: usize = std::mem::size_of::<libc::signalfd_siginfo>();

fn os_result(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A set of signals (a `sigset_t`), also used as a saved signal mask.
#[derive(Clone, Copy)]
pub(crate) struct SignalSet(libc::sigset_t);

impl SignalSet {
    /// The set of exactly `signals`.
    pub(crate) fn of(signals: &[libc::c_int]) -> SignalSet {
        // SAFETY: a zeroed sigset_t is a valid argument to sigemptyset, which initialises it;
        // sigaddset adds members to the set we own (an invalid signal number only fails).
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &signal in signals {
                libc::sigaddset(&mut set, signal);
            }
            SignalSet(set)
        }
    }

    /// This set without `signal`.
    pub(crate) fn without(mut self, signal: libc::c_int) -> SignalSet {
        // SAFETY: removes a member from an initialised sigset_t we own.
        unsafe { libc::sigdelset(&mut self.0, signal) };
        self
    }

    /// Blocks these signals for the calling thread; returns the mask it had before.
    pub(crate) fn block(&self) -> io::Result<SignalSet> {
        // SAFETY: a zeroed sigset_t is a valid out-parameter for sigprocmask, which overwrites
        // it; the set to block is initialised.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: both sets are valid sigset_t values we own.
        os_result(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &self.0, &mut old) })?;
        Ok(SignalSet(old))
    }

    /// Makes this set the calling thread's signal mask (a mask saved by [`block`](Self::block)).
    pub(crate) fn set_mask(&self) {
        // SAFETY: the set is an initialised sigset_t; no old mask is asked for. Setting a mask
        // cannot fail with a valid `how` and set.
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }

    /// The next of these signals (blocked by the caller) to arrive within `timeout`, if any.
    pub(crate) fn wait(&self, timeout: Duration) -> Option<libc::c_int> {
        let ts = libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: a zeroed siginfo_t is a valid out-parameter; the set and timespec are valid
        // and outlive the call.
        let signal = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::sigtimedwait(&self.0, &mut info, &ts)
        };
        (signal > 0).then_some(signal)
    }

    /// Blocks these signals and returns a new non-blocking, close-on-exec `signalfd` that
    /// yields them, [`SIGNAL_INFO_SIZE`] bytes each.
    pub(crate) fn signal_fd(&self) -> io::Result<File> {
        self.block()?;
        // SAFETY: -1 asks for a new descriptor; the set is an initialised sigset_t.
        let fd = os_result(unsafe {
            libc::signalfd(-1, &self.0, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC)
        })?;
        // SAFETY: `fd` is a new open descriptor that nothing else owns.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

/// Registers `file` with the current tokio runtime, to wait until it is readable.
///
/// # Panics
/// Outside a tokio runtime with I/O enabled.
pub(crate) fn async_readable(file: File) -> io::Result<AsyncFd<File>> {
    // SAFETY: the `File` owns its descriptor, which stays open and names the same file
    // description for as long as the `AsyncFd` owns the `File`, and `as_raw_fd` always
    // returns it.
    unsafe { AsyncFd::register_with_interest(file, Interest::READABLE) }.map_err(io::Error::from)
}

/// Waits until `fd` is readable, for `timeout` at most; whether it is.
pub(crate) fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, naming a descriptor the borrow keeps open.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

/// The soft limit on this process's open descriptors (`RLIMIT_NOFILE`), or `None` if there
/// is none (or it cannot be read).
pub(crate) fn open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Reaps one child that has exited, without waiting: its pid, or `None` if none has.
pub(crate) fn reap_any() -> Option<Pid> {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG writes the status of one exited child, if any, into a
    // valid int.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    (pid > 0).then_some(pid)
}

/// Whether child `pid` is still running: reaps it, without waiting, if it has exited (and
/// says `false` for a pid that is no child of ours).
pub(crate) fn still_running(pid: Pid) -> bool {
    let mut status = 0;
    // SAFETY: waitpid on one pid, without blocking, writing into a valid int.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) == 0 }
}

/// Sends `SIGTERM` to `pid`.
pub(crate) fn terminate(pid: Pid) {
    // SAFETY: kill has no memory effects in this process; the caller names its own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
}

/// Sends `SIGKILL` to child `pid` and reaps it, waiting (SIGKILL cannot be caught).
pub(crate) fn kill_and_reap(pid: Pid) {
    // SAFETY: as in `terminate`; waitpid may be given a null status pointer.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// Forks a child that restores the signal mask `mask`, asks to be killed when this process
/// dies (`PR_SET_PDEATHSIG`; it exits at once if this process died before it asked), runs
/// `child` and exits with what it returns — `on_panic` if it panics — without returning
/// into this process's code or running its exit handlers. Returns the child's pid.
///
/// For a process without other threads (`Prefork::run` documents it): a thread missing in
/// the child could have left a lock held there.
pub(crate) fn fork_child(
    mask: &SignalSet,
    child: impl FnOnce() -> i32,
    on_panic: i32,
) -> io::Result<Pid> {
    let parent = std::process::id();
    // SAFETY: the caller's process has no other threads (see above), so no lock is held by a
    // thread missing in the child; the crate's at-fork handlers give the child fresh cache
    // locks; the child never returns from this function: it leaves through `_exit`.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            mask.set_mask();
            // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and touches no memory;
            // getppid has no preconditions; _exit ends the child without returning.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    libc::_exit(0);
                }
            }
            let code = catch_unwind(AssertUnwindSafe(child)).unwrap_or(on_panic);
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        pid => Ok(pid),
    }
}
