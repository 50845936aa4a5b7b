//! [`Prefork`]: an axum application served by forked worker processes, as Starman or a
//! prefork Apache serves a Perl one, so that sessions (and any other cache) are shared
//! through one mapped file.
//!
//! The parent binds the listener, forks the workers and supervises them: each worker has
//! its own single-threaded tokio runtime and accepts on the inherited listener; a worker
//! that dies is replaced; `SIGTERM` or `SIGINT` stops them all — each worker stops
//! accepting and finishes the requests it is serving, within the stop timeout.

// fork, waitpid, kill, sigprocmask, sigtimedwait and prctl are libc calls.
#![allow(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use std::os::fd::{FromRawFd, OwnedFd};

use axum::Router;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// How long the parent waits for its first workers to accept, at most.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// A worker that dies sooner than this after it started is replaced only after this long
/// (a crashing worker must not turn the parent into a fork loop).
const MIN_WORKER_LIFE: Duration = Duration::from_secs(1);
/// How often the parent looks for dead workers when no signal arrives.
const TICK: Duration = Duration::from_millis(500);

/// Exit status of a worker whose runtime or listener failed, or that panicked.
const WORKER_FAILED: i32 = 70;

/// An axum application in forked worker processes.
///
/// ```no_run
/// use std::net::TcpListener;
/// use axum::{Router, routing::get};
/// use fastmmap::web::Prefork;
///
/// # fn main() -> std::io::Result<()> {
/// let listener = TcpListener::bind("127.0.0.1:8080")?;
/// let addr = listener.local_addr()?;
/// Prefork::new(4).run(
///     listener,
///     || Router::new().route("/", get(|| async { "hello" })),
///     || println!("listening on http://{addr}"),
/// )?;
/// # Ok(()) }
/// ```
///
/// Open caches (and session stores) before `run` or in the `app` closure: a cache opened in
/// the parent is inherited by every worker, and one opened in a worker maps the same file.
/// Call `run` from a process that has no other threads (the start of `main`): forking a
/// process whose other threads hold locks leaves those locks held in the child.
#[derive(Clone, Debug)]
#[must_use = "a Prefork does nothing until `run` is called"]
pub struct Prefork {
    workers: usize,
    stop_timeout: Duration,
}

/// A started worker.
struct Worker {
    pid: libc::pid_t,
    started: Instant,
}

fn os_error<T>(result: libc::c_int, value: T) -> io::Result<T> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

/// The signals the parent waits for instead of handling them.
fn parent_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset and sigaddset initialise and fill a sigset_t we own; a zeroed
    // sigset_t is a valid argument to sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

impl Prefork {
    /// `workers` worker processes (at least one).
    pub fn new(workers: usize) -> Prefork {
        Prefork {
            workers: workers.max(1),
            stop_timeout: Duration::from_secs(10),
        }
    }

    /// How long workers get to finish the requests they are serving after `SIGTERM` when the
    /// server stops, before they are killed (default 10 s).
    pub fn stop_timeout(mut self, d: Duration) -> Self {
        self.stop_timeout = d;
        self
    }

    /// Forks the workers, each serving `app()` on `listener` (with the client's address as
    /// [`ConnectInfo`](axum::extract::ConnectInfo)), calls `ready` once they all accept
    /// connections, and supervises them: a worker that exits or is killed is replaced. Returns
    /// when the process gets `SIGTERM` or `SIGINT`, after stopping the workers.
    ///
    /// A worker dies with the parent (`PR_SET_PDEATHSIG`), so none outlives it.
    ///
    /// # Errors
    /// The I/O error of making the listener non-blocking, a pipe, or the first `fork`; a
    /// worker that fails later is only replaced.
    pub fn run<F, R>(self, listener: TcpListener, app: F, ready: R) -> io::Result<()>
    where
        F: Fn() -> Router,
        R: FnOnce(),
    {
        listener.set_nonblocking(true)?;
        let signals = parent_signals();
        // SAFETY: a zeroed sigset_t is valid to be overwritten by sigprocmask.
        let mut old_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: both sets are valid sigset_t values we own.
        let r = unsafe { libc::sigprocmask(libc::SIG_BLOCK, &signals, &mut old_mask) };
        os_error(r, ())?;
        let result = self.supervise(&listener, &app, ready, &signals, &old_mask);
        // SAFETY: restores the mask saved above.
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut()) };
        result
    }

    fn supervise<F: Fn() -> Router>(
        &self,
        listener: &TcpListener,
        app: &F,
        ready: impl FnOnce(),
        signals: &libc::sigset_t,
        old_mask: &libc::sigset_t,
    ) -> io::Result<()> {
        let mut workers = Vec::with_capacity(self.workers);
        {
            let (mut ready_in, ready_out) = io::pipe()?;
            for _ in 0..self.workers {
                match spawn(listener, app, Some(&ready_out), old_mask) {
                    Ok(w) => workers.push(w),
                    Err(e) => {
                        stop(&mut workers, self.stop_timeout);
                        return Err(e);
                    }
                }
            }
            drop(ready_out);
            wait_ready(&mut ready_in, self.workers);
        }
        ready();
        loop {
            if let Some(signal) = wait_signal(signals, TICK)
                && (signal == libc::SIGTERM || signal == libc::SIGINT)
            {
                break;
            }
            reap_and_replace(&mut workers, listener, app, old_mask);
        }
        stop(&mut workers, self.stop_timeout);
        Ok(())
    }
}

/// Waits until `n` workers said they accept (or gave up: a worker that died before, or the
/// timeout).
fn wait_ready(pipe: &mut io::PipeReader, n: usize) {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut seen = 0;
    let mut buf = [0u8; 64];
    while seen < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let mut pfd = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
            continue;
        }
        match pipe.read(&mut buf) {
            Ok(0) | Err(_) => return, // every writer is gone
            Ok(k) => seen += k,
        }
    }
}

/// The next of `signals` to arrive within `timeout`, if any.
fn wait_signal(signals: &libc::sigset_t, timeout: Duration) -> Option<libc::c_int> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: a zeroed siginfo_t is a valid out-parameter; the set and timespec are valid.
    let signal = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::sigtimedwait(signals, &mut info, &ts)
    };
    (signal > 0).then_some(signal)
}

/// Reaps dead workers and starts one in each empty slot (a dead worker's, or one a failed
/// `fork` left empty at an earlier tick).
fn reap_and_replace<F: Fn() -> Router>(
    workers: &mut [Worker],
    listener: &TcpListener,
    app: &F,
    old_mask: &libc::sigset_t,
) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG writes the status of one exited child, if any.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
        if let Some(slot) = workers.iter_mut().find(|w| w.pid == pid) {
            slot.pid = -1;
        }
    }
    for slot in workers.iter_mut().filter(|w| w.pid == -1) {
        if slot.started.elapsed() < MIN_WORKER_LIFE {
            std::thread::sleep(MIN_WORKER_LIFE);
        }
        match spawn(listener, app, None, old_mask) {
            Ok(w) => *slot = w,
            // No process to be had now: try again at the next tick.
            Err(_) => slot.started = Instant::now(),
        }
    }
}

/// `SIGTERM` to every worker, `SIGKILL` to those still there after `timeout`; reaps them all.
fn stop(workers: &mut Vec<Worker>, timeout: Duration) {
    workers.retain(|w| w.pid > 0);
    for w in workers.iter() {
        // SAFETY: signals a child of ours.
        unsafe { libc::kill(w.pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + timeout;
    while !workers.is_empty() {
        workers.retain(|w| {
            let mut status = 0;
            // SAFETY: waitpid on a child of ours, without blocking.
            unsafe { libc::waitpid(w.pid, &mut status, libc::WNOHANG) == 0 }
        });
        if workers.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for w in workers.iter() {
                // SAFETY: as above; then wait for it, blocking: SIGKILL cannot be caught.
                unsafe {
                    libc::kill(w.pid, libc::SIGKILL);
                    libc::waitpid(w.pid, std::ptr::null_mut(), 0);
                }
            }
            workers.clear();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Forks one worker.
fn spawn<F: Fn() -> Router>(
    listener: &TcpListener,
    app: &F,
    ready: Option<&io::PipeWriter>,
    old_mask: &libc::sigset_t,
) -> io::Result<Worker> {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: `run`'s documentation asks for a parent without other threads, so no lock is
    // held by a thread missing in the child; the child runs only `worker` and leaves through
    // `_exit`, never returning into the parent's code.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // SAFETY: the child restores the signal mask the parent had before `run`, asks to
            // be killed with the parent, and checks the parent did not die before that.
            unsafe {
                libc::sigprocmask(libc::SIG_SETMASK, old_mask, std::ptr::null_mut());
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(0);
                }
            }
            let code = catch_unwind(AssertUnwindSafe(|| worker(listener, app, ready)))
                .unwrap_or(WORKER_FAILED);
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        pid => Ok(Worker {
            pid,
            started: Instant::now(),
        }),
    }
}

/// `SIGTERM` and `SIGINT`, blocked, as a `signalfd` of this process's own. Waiting on it
/// shares nothing with the parent: a signal handler installed before the fork (tokio's, by
/// any runtime with signals enabled) would share its wake-up pipe with every process forked
/// after it, and a signal to one worker could wake another.
fn stop_signals() -> io::Result<OwnedFd> {
    let mut set = parent_signals();
    // SAFETY: removes a member from a sigset_t we own.
    unsafe { libc::sigdelset(&mut set, libc::SIGCHLD) };
    // SAFETY: the worker is single-threaded here; the set is valid.
    let blocked = unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    os_error(blocked, ())?;
    // SAFETY: creates a new descriptor from a valid set.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    let fd = os_error(fd, fd)?;
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits until the signalfd from [`stop_signals`] has a signal.
async fn stopped(signals: AsyncFd<OwnedFd>) {
    let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
    loop {
        let Ok(mut guard) = signals.readable().await else {
            return;
        };
        // SAFETY: reads into a buffer of the size signalfd writes.
        let n = unsafe {
            libc::read(
                signals.get_ref().as_raw_fd(),
                info.as_mut_ptr().cast(),
                info.len(),
            )
        };
        if n > 0 {
            return;
        }
        guard.clear_ready();
    }
}

/// A worker's life: a single-threaded runtime serving `app()` on the listener until
/// `SIGTERM` (or `SIGINT`); then it finishes the requests in flight and returns.
fn worker<F: Fn() -> Router>(
    listener: &TcpListener,
    app: &F,
    ready: Option<&io::PipeWriter>,
) -> i32 {
    let Ok(signals) = stop_signals() else {
        return WORKER_FAILED;
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return WORKER_FAILED;
    };
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
        // SAFETY: the OwnedFd is the one open descriptor it names, and moves into the AsyncFd
        // for as long as it lives.
        let signals = unsafe { AsyncFd::register_with_interest(signals, Interest::READABLE) }
            .map_err(io::Error::from)?;
        if let Some(mut ready) = ready {
            let _ = ready.write_all(b"r");
        }
        let service = app().into_make_service_with_connect_info::<SocketAddr>();
        // On SIGTERM: stop accepting, finish the requests in flight, then exit (the parent
        // kills what is still there after its stop timeout).
        axum::serve(listener, service)
            .with_graceful_shutdown(stopped(signals))
            .await
    });
    match served {
        Ok(()) => 0,
        Err(_) => WORKER_FAILED,
    }
}
