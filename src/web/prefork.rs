//! [`Prefork`]: an axum application served by forked worker processes, as Starman or a
//! prefork Apache serves a Perl one, so that sessions (and any other cache) are shared
//! through one mapped file.
//!
//! The parent binds the listener, forks the workers and supervises them: each worker has
//! its own single-threaded tokio runtime and accepts on the inherited listener; a worker
//! that dies is replaced; `SIGTERM` or `SIGINT` stops them all — each worker stops
//! accepting and finishes the requests it is serving, within the stop timeout.
//!
//! How a worker serves its connections, with their timeouts and limits, is in `serve.rs`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use axum::Router;
use tokio::io::unix::AsyncFd;

use super::serve::{self, Limits};

// The libc calls (fork, waitpid, kill, the signal mask, sigtimedwait, signalfd, poll), behind
// safe wrappers in web/process.rs.
use super::process::{self, Pid, SIGCHLD, SIGINT, SIGTERM, SignalSet};

/// How long the parent waits for its first workers to accept, at most.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// A worker that dies sooner than this after it started is replaced only after this long
/// (a crashing worker must not turn the parent into a fork loop).
const MIN_WORKER_LIFE: Duration = Duration::from_secs(1);
/// How often the parent looks for dead workers when no signal arrives.
const TICK: Duration = Duration::from_millis(500);

/// Exit status of a worker whose runtime or listener failed, or that panicked.
const WORKER_FAILED: i32 = 70;

/// Default of [`Prefork::header_read_timeout`].
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`Prefork::keep_alive_timeout`].
pub const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of [`Prefork::max_connections`] (per worker).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default of [`Prefork::body_limit`]: 2 MiB, axum's own default for its extractors.
pub const DEFAULT_BODY_LIMIT: usize = 2 * 1024 * 1024;
/// Default of [`Prefork::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of [`Prefork::send_timeout`].
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`Prefork::stop_timeout`].
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

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
///
/// # Limits
///
/// Every connection is served by hyper's HTTP/1 server with a timer, under limits that keep
/// a worker serving while clients misbehave (slowloris, floods of idle connections, huge
/// bodies, handlers that hang). Each has a builder method and a safe default:
///
/// | method | default | defends against |
/// |---|---|---|
/// | [`header_read_timeout`](Self::header_read_timeout) | 10 s | a client that opens a connection and sends its request head slowly or never (slowloris) |
/// | [`keep_alive_timeout`](Self::keep_alive_timeout) | 5 s | kept-alive connections that sit idle between requests |
/// | [`max_connections`](Self::max_connections) | 1,024 per worker | running out of descriptors: beyond the cap the oldest idle connection is closed, or the newcomer refused with a `503` |
/// | [`body_limit`](Self::body_limit) | 2 MiB | request bodies that would fill memory: `413` |
/// | [`request_timeout`](Self::request_timeout) | 60 s | a handler that never finishes: `503` |
/// | [`send_timeout`](Self::send_timeout) | 30 s | a client that stops reading its response (the connection is closed when its socket has taken nothing for this long) |
/// | [`stop_timeout`](Self::stop_timeout) | 10 s | a stop that never ends: requests still running then are cut |
///
/// A worker that runs out of descriptors anyway (`accept` fails with `EMFILE`) closes its
/// oldest idle connection and pauses accepting (10 ms, doubling up to 1 s) rather than spin;
/// the connections it has are served meanwhile. Request heads are limited to 64 KiB
/// (larger ones get `431`).
///
/// What these do not cover: a client that reads its response slowly but steadily (a few
/// bytes within every send timeout) holds its connection, and a place under the cap, until
/// it has read it all; the request timeout ends when the handler has returned its response,
/// not when a streamed body has been sent.
#[derive(Clone, Debug)]
#[must_use = "a Prefork does nothing until `run` is called"]
pub struct Prefork {
    workers: usize,
    limits: Limits,
}

/// A started worker.
struct Worker {
    pid: Pid,
    started: Instant,
}

/// The signals the parent waits for instead of handling them.
fn parent_signals() -> SignalSet {
    SignalSet::of(&[SIGCHLD, SIGTERM, SIGINT])
}

impl Prefork {
    /// `workers` worker processes (at least one).
    pub fn new(workers: usize) -> Prefork {
        Prefork {
            workers: workers.max(1),
            limits: Limits {
                header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
                keep_alive_timeout: DEFAULT_KEEP_ALIVE_TIMEOUT,
                max_connections: DEFAULT_MAX_CONNECTIONS,
                body_limit: DEFAULT_BODY_LIMIT,
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
                send_timeout: DEFAULT_SEND_TIMEOUT,
                stop_timeout: DEFAULT_STOP_TIMEOUT,
            },
        }
    }

    /// How long workers get to finish the requests they are serving after `SIGTERM` when the
    /// server stops, before they are killed (default 10 s). Idle connections, and those whose
    /// first request head has not arrived in full, are closed at once.
    pub fn stop_timeout(mut self, d: Duration) -> Self {
        self.limits.stop_timeout = d;
        self
    }

    /// How long a client has to send a whole request head, from the moment the worker
    /// starts waiting for it (default 10 s): a connection whose head is not complete by
    /// then is closed. This is hyper's header read timeout, and hyper also starts it when a
    /// kept-alive connection waits for its next request, so it bounds idle keep-alive time
    /// as well. Must be more than zero ([`run`](Self::run) refuses zero).
    pub fn header_read_timeout(mut self, d: Duration) -> Self {
        self.limits.header_read_timeout = d;
        self
    }

    /// How long a kept-alive connection may stay idle after a response before its next
    /// request head has arrived in full (default 5 s); then it is closed. The shorter of this
    /// and [`header_read_timeout`](Self::header_read_timeout) applies. `Duration::ZERO`
    /// turns keep-alive off: every connection closes after one response.
    pub fn keep_alive_timeout(mut self, d: Duration) -> Self {
        self.limits.keep_alive_timeout = d;
        self
    }

    /// How many connections each worker keeps open at most (default 1,024), lowered to
    /// leave 64 descriptors free under the worker's soft `RLIMIT_NOFILE`. A connection that
    /// arrives beyond the cap makes the worker close its oldest idle connection (one with no
    /// request in flight: waiting for its first head or for the next one); if every
    /// connection has a request in flight, the newcomer is answered `503` and closed at
    /// once. Must be at least 1 ([`run`](Self::run) refuses zero).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.limits.max_connections = n;
        self
    }

    /// The largest request body, in bytes (default 2 MiB): a request that declares a longer
    /// `Content-Length` gets `413 Payload Too Large` without reaching the application, and
    /// a streamed body that grows past the limit fails to read (axum's extractors answer
    /// `413`). axum's `DefaultBodyLimit` is set to the same value; a route may lower it.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.limits.body_limit = bytes;
        self
    }

    /// How long a request may take, from its head to the response the application returns,
    /// reading of the request body included (default 60 s): a request still running then is
    /// dropped and answered `503 Service Unavailable`. A response body streamed after that is
    /// not timed. Must be more than zero ([`run`](Self::run) refuses zero).
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.limits.request_timeout = d;
        self
    }

    /// How long a response may wait for the client to read (default 30 s): when the
    /// client's socket has taken no byte of it for this long, the connection is closed. The
    /// clock runs only while there is something to send, so a response that streams slowly
    /// (server-sent events) is not cut for being quiet. Must be more than zero
    /// ([`run`](Self::run) refuses zero).
    pub fn send_timeout(mut self, d: Duration) -> Self {
        self.limits.send_timeout = d;
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
    /// `InvalidInput` for a limit that would serve nobody (a zero timeout or cap, see the
    /// builder methods; timeouts over a year are cut to a year); the I/O error of making the listener non-blocking, a pipe, or the
    /// first `fork`; a worker that fails later is only replaced.
    pub fn run<F, R>(mut self, listener: TcpListener, app: F, ready: R) -> io::Result<()>
    where
        F: Fn() -> Router,
        R: FnOnce(),
    {
        self.limits.check()?;
        listener.set_nonblocking(true)?;
        let signals = parent_signals();
        let old_mask = signals.block()?;
        let result = self.supervise(&listener, &app, ready, &signals, &old_mask);
        old_mask.set_mask();
        result
    }

    fn supervise<F: Fn() -> Router>(
        &self,
        listener: &TcpListener,
        app: &F,
        ready: impl FnOnce(),
        signals: &SignalSet,
        old_mask: &SignalSet,
    ) -> io::Result<()> {
        let mut workers = Vec::with_capacity(self.workers);
        {
            let (mut ready_in, ready_out) = io::pipe()?;
            for _ in 0..self.workers {
                match spawn(listener, app, &self.limits, Some(&ready_out), old_mask) {
                    Ok(w) => workers.push(w),
                    Err(e) => {
                        stop(&mut workers, self.limits.stop_timeout);
                        return Err(e);
                    }
                }
            }
            drop(ready_out);
            wait_ready(&mut ready_in, self.workers);
        }
        ready();
        loop {
            if let Some(signal) = signals.wait(TICK)
                && (signal == SIGTERM || signal == SIGINT)
            {
                break;
            }
            reap_and_replace(&mut workers, listener, app, &self.limits, old_mask);
        }
        stop(&mut workers, self.limits.stop_timeout);
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
        if !process::poll_readable(pipe.as_fd(), left) {
            continue;
        }
        match pipe.read(&mut buf) {
            Ok(0) | Err(_) => return, // every writer is gone
            Ok(k) => seen += k,
        }
    }
}

/// Reaps dead workers and starts one in each empty slot (a dead worker's, or one a failed
/// `fork` left empty at an earlier tick).
fn reap_and_replace<F: Fn() -> Router>(
    workers: &mut [Worker],
    listener: &TcpListener,
    app: &F,
    limits: &Limits,
    old_mask: &SignalSet,
) {
    while let Some(pid) = process::reap_any() {
        if let Some(slot) = workers.iter_mut().find(|w| w.pid == pid) {
            slot.pid = -1;
        }
    }
    for slot in workers.iter_mut().filter(|w| w.pid == -1) {
        if slot.started.elapsed() < MIN_WORKER_LIFE {
            // Too young to replace yet: the next tick tries again (sleeping here would hold
            // up a SIGTERM, once per crashed worker).
            continue;
        }
        match spawn(listener, app, limits, None, old_mask) {
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
        process::terminate(w.pid);
    }
    let deadline = Instant::now() + timeout;
    while !workers.is_empty() {
        workers.retain(|w| process::still_running(w.pid));
        if workers.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for w in workers.iter() {
                process::kill_and_reap(w.pid);
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
    limits: &Limits,
    ready: Option<&io::PipeWriter>,
    old_mask: &SignalSet,
) -> io::Result<Worker> {
    // `run`'s documentation asks for a parent without other threads.
    let pid = process::fork_child(
        old_mask,
        || worker(listener, app, limits, ready),
        WORKER_FAILED,
    )?;
    Ok(Worker {
        pid,
        started: Instant::now(),
    })
}

/// `SIGTERM` and `SIGINT`, blocked, as a `signalfd` of this process's own. Waiting on it
/// shares nothing with the parent: a signal handler installed before the fork (tokio's, by
/// any runtime with signals enabled) would share its wake-up pipe with every process forked
/// after it, and a signal to one worker could wake another.
fn stop_signals() -> io::Result<File> {
    parent_signals().without(SIGCHLD).signal_fd()
}

/// Waits until the signalfd from [`stop_signals`] has a signal.
async fn stopped(signals: AsyncFd<File>) {
    let mut info = [0u8; process::SIGNAL_INFO_SIZE];
    loop {
        let Ok(mut guard) = signals.readable().await else {
            return;
        };
        let mut fd: &File = signals.get_ref();
        if matches!(fd.read(&mut info), Ok(n) if n > 0) {
            return;
        }
        guard.clear_ready();
    }
}

/// A worker's life: a single-threaded runtime serving `app()` on the listener under
/// `limits` until `SIGTERM` (or `SIGINT`); then it finishes the requests in flight and
/// returns.
fn worker<F: Fn() -> Router>(
    listener: &TcpListener,
    app: &F,
    limits: &Limits,
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
        let signals = process::async_readable(signals)?;
        if let Some(mut ready) = ready {
            let _ = ready.write_all(b"r");
        }
        // On SIGTERM: stop accepting, finish the requests in flight, then exit (the parent
        // kills what is still there after its stop timeout).
        serve::serve(listener, app(), limits.clone(), stopped(signals)).await;
        io::Result::Ok(())
    });
    match served {
        Ok(()) => 0,
        Err(_) => WORKER_FAILED,
    }
}
