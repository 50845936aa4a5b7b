//! How a [`Prefork`](super::Prefork) worker serves its connections, with a deadline and a
//! budget for each: hyper's HTTP/1 connection with a real timer (so its header read timeout
//! is on), tower-http's body limit and request timeout around the application, and around
//! each connection a small driver that closes it when it stays idle too long, when a newer
//! connection needs its place, or when the worker stops.
//!
//! Every connection of the worker is in the [`Tracker`], oldest first, with a [`ConnState`]
//! that says whether a request is in flight (from hyper's call of the service until the
//! response body is dropped, which hyper does once it has written it). A connection with no
//! request in flight is *idle*: one that waits for its first head (the slowloris case), or
//! for the next one on a kept-alive connection. Idle connections are the ones given up first.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, Sleep};
use tower_http::limit::{RequestBodyLimit, ResponseBody};
use tower_http::timeout::Timeout;
use tower_service::Service;

/// The largest request head: a longer one, finished or not, is answered `431` and closed
/// (hyper's default would let each connection buffer about 400 KiB of an unfinished head).
const MAX_HEAD: usize = 64 * 1024;
/// Descriptors a worker keeps for everything but client connections (the listener, cache
/// files, the application's own files and sockets) when it caps its connections below its
/// `RLIMIT_NOFILE`.
const FD_RESERVE: u64 = 64;
/// The first and the longest pause after `accept` failed for want of a resource (`EMFILE`,
/// `ENFILE`, `ENOBUFS`, `ENOMEM`).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// What a connection over the cap hears when every other connection has a request in
/// flight, written without waiting before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\
    connection: close\r\nretry-after: 1\r\n\r\n";

/// The limits of one worker (set through `Prefork`'s builder methods).
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) keep_alive_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) body_limit: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) send_timeout: Duration,
    pub(crate) stop_timeout: Duration,
}

/// The longest timeout taken as given; longer ones are cut to it (a deadline that far is as
/// good as none, and adding more to a clock reading could overflow).
const LONGEST_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

impl Limits {
    /// Refuses settings that would stop the server from serving anyone, and cuts timeouts
    /// to [`LONGEST_TIMEOUT`].
    pub(crate) fn check(&mut self) -> io::Result<()> {
        for d in [
            &mut self.header_read_timeout,
            &mut self.keep_alive_timeout,
            &mut self.request_timeout,
            &mut self.send_timeout,
            &mut self.stop_timeout,
        ] {
            *d = (*d).min(LONGEST_TIMEOUT);
        }
        let bad = |what: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, what.to_owned()));
        if self.header_read_timeout.is_zero() {
            return bad("Prefork::header_read_timeout must be more than zero");
        }
        if self.request_timeout.is_zero() {
            return bad("Prefork::request_timeout must be more than zero");
        }
        if self.send_timeout.is_zero() {
            return bad("Prefork::send_timeout must be more than zero");
        }
        if self.max_connections == 0 {
            return bad("Prefork::max_connections must be at least 1");
        }
        Ok(())
    }

    /// `max_connections`, lowered to leave [`FD_RESERVE`] descriptors free under the
    /// process's soft `RLIMIT_NOFILE`.
    fn connection_cap(&self) -> usize {
        let cap = match super::process::open_files_limit() {
            Some(limit) => {
                let room = usize::try_from(limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
                self.max_connections.min(room)
            }
            None => self.max_connections,
        };
        cap.max(1)
    }
}

/// The application as each connection calls it: the body limit (`413` for a declared length
/// over it, and for a streamed body once it passes it), then the request timeout (`503`),
/// then the router, whose own extractor limit is set to the same value.
type App = RequestBodyLimit<Timeout<Router>>;

fn stack(app: Router, limits: &Limits) -> App {
    let app = app.layer(DefaultBodyLimit::max(limits.body_limit));
    let app =
        Timeout::with_status_code(app, StatusCode::SERVICE_UNAVAILABLE, limits.request_timeout);
    RequestBodyLimit::new(app, limits.body_limit)
}

/// Serves `app` on `listener` until `stop` completes; then stops accepting, closes the idle
/// connections, lets those with a request in flight finish it (for the stop timeout at
/// most) and returns.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
) {
    let app = stack(app, &limits);
    let limits = Arc::new(limits);
    let cap = limits.connection_cap();
    let tracker = Arc::new(Tracker::default());
    // Every connection holds a receiver: `closed` resolves when the last one has finished.
    let (stopping, _) = watch::channel(false);
    let mut stop = std::pin::pin!(stop);
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::ZERO;
                if tracker.len() >= cap && !tracker.evict_oldest_idle() {
                    refuse(&stream);
                    continue;
                }
                let (id, state) = tracker.register();
                let registration = Registration {
                    tracker: Arc::clone(&tracker),
                    id,
                };
                let conn = Connection {
                    app: app.clone(),
                    limits: Arc::clone(&limits),
                    state,
                    peer,
                    stopping: stopping.subscribe(),
                    _registration: registration,
                };
                tokio::spawn(conn.run(stream));
            }
            // The client gave up before we took its connection: nothing to wait for.
            Err(e) if is_connection_error(&e) => {}
            // Out of descriptors (or memory): the connection waits in the backlog. Free one
            // by closing the oldest idle connection, and pause (doubling, up to a second)
            // rather than spin on a listener that stays readable; the other connections are
            // served meanwhile.
            Err(_) => {
                tracker.evict_oldest_idle();
                backoff = (backoff * 2).clamp(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX);
                tokio::select! {
                    biased;
                    () = &mut stop => break,
                    () = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
    drop(listener);
    let _ = stopping.send(true);
    let _ = tokio::time::timeout(limits.stop_timeout, stopping.closed()).await;
}

/// Errors of `accept` that concern one connection only, which are not worth a pause.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || e.raw_os_error() == Some(libc::EPROTO)
}

/// Tells a connection over the cap why it is closed, if its socket takes the bytes at once.
fn refuse(stream: &TcpStream) {
    let _ = stream.try_write(REFUSED);
}

/// The connections of one worker, by age.
#[derive(Default)]
struct Tracker {
    conns: Mutex<Conns>,
}

#[derive(Default)]
struct Conns {
    next_id: u64,
    by_age: BTreeMap<u64, Arc<ConnState>>,
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        // Nothing panics while holding it; a poisoned map is still a valid map.
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn len(&self) -> usize {
        self.lock().by_age.len()
    }

    fn register(&self) -> (u64, Arc<ConnState>) {
        let mut conns = self.lock();
        let id = conns.next_id;
        conns.next_id += 1;
        let state = Arc::new(ConnState::new());
        conns.by_age.insert(id, Arc::clone(&state));
        (id, state)
    }

    /// Asks the oldest idle connection to close, and forgets it; whether there was one.
    fn evict_oldest_idle(&self) -> bool {
        let mut conns = self.lock();
        let Some(id) = conns
            .by_age
            .iter()
            .find(|(_, c)| c.in_flight() == 0)
            .map(|(id, _)| *id)
        else {
            return false;
        };
        if let Some(state) = conns.by_age.remove(&id) {
            state.evict.notify_one();
        }
        true
    }
}

/// Removes a connection from the tracker when its task ends.
struct Registration {
    tracker: Arc<Tracker>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.tracker.lock().by_age.remove(&self.id);
    }
}

/// What the driver of a connection and the rest of the worker know about it.
struct ConnState {
    /// Requests begun and not yet answered in full.
    in_flight: AtomicUsize,
    /// Requests begun.
    requests: AtomicU64,
    /// When the last request ended (meaningful once one has).
    idle_since: Mutex<Instant>,
    /// Rung when a request begins or ends.
    changed: Notify,
    /// Rung when the connection should close to make room.
    evict: Notify,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since: Mutex::new(Instant::now()),
            changed: Notify::new(),
            evict: Notify::new(),
        }
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// No request has begun on it: dropping it loses nothing that was asked.
    fn untouched(&self) -> bool {
        self.requests.load(Ordering::Acquire) == 0
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
        InFlight(Arc::clone(self))
    }

    /// When an idle kept-alive connection is due to close: `None` while a request is in
    /// flight, before the first request, or with keep-alive off.
    fn idle_deadline(&self, keep_alive: Duration) -> Option<Instant> {
        if keep_alive.is_zero() || self.untouched() || self.in_flight() > 0 {
            return None;
        }
        let since = *self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Some(since + keep_alive)
    }
}

/// One request in flight on a connection, until its response body is dropped.
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self
            .0
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

pin_project_lite::pin_project! {
    /// A response body that marks its request finished when hyper drops it.
    struct TrackedBody<B> {
        #[pin]
        inner: B,
        in_flight: InFlight,
    }
}

impl<B: http_body::Body> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

type Body = TrackedBody<ResponseBody<axum::body::Body>>;

/// The application as hyper calls it on one connection: gives each request the client's
/// address (axum's [`ConnectInfo`]) and counts it in flight until its body is sent.
#[derive(Clone)]
struct ConnService {
    app: App,
    state: Arc<ConnState>,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let in_flight = self.state.begin();
        let mut app = self.app.clone();
        Box::pin(async move {
            poll_fn(|cx| Service::<Request<Incoming>>::poll_ready(&mut app, cx)).await?;
            let response = app.call(req).await?;
            Ok(response.map(|inner| TrackedBody { inner, in_flight }))
        })
    }
}

/// One accepted connection and what its driver needs.
struct Connection {
    app: App,
    limits: Arc<Limits>,
    state: Arc<ConnState>,
    peer: SocketAddr,
    stopping: watch::Receiver<bool>,
    _registration: Registration,
}

impl Connection {
    /// Serves the connection until it ends, and closes it early when it is idle and the
    /// keep-alive timeout passes, the worker needs its place, or the worker stops.
    ///
    /// Closing asks hyper for a graceful shutdown, which closes an idle connection at once
    /// and lets a request in flight finish first (with `Connection: close`). A connection on
    /// which no request has begun is dropped instead: hyper would wait for the rest of a
    /// half-sent head, and there is nothing of the client's to finish. (hyper-util's
    /// `GracefulShutdown` only knows the worker-wide signal; this driver needs the other two,
    /// so it calls `graceful_shutdown` itself.)
    async fn run(mut self, stream: TcpStream) {
        let service = ConnService {
            app: self.app.clone(),
            state: Arc::clone(&self.state),
            peer: self.peer,
        };
        let keep_alive = self.limits.keep_alive_timeout;
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .keep_alive(!keep_alive.is_zero())
            .max_header_size(MAX_HEAD);
        let stream = SendDeadline::new(stream, self.limits.send_timeout);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let mut conn = std::pin::pin!(conn);
        let mut closing = false;
        loop {
            let idle_deadline = if closing {
                None
            } else {
                self.state.idle_deadline(keep_alive)
            };
            let idle_timeout = async {
                match idle_deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            let close = tokio::select! {
                biased;
                _ = conn.as_mut() => return,
                _ = self.stopping.changed(), if !closing => true,
                () = self.state.evict.notified(), if !closing => true,
                () = idle_timeout => self
                    .state
                    .idle_deadline(keep_alive)
                    .is_some_and(|deadline| deadline <= Instant::now()),
                () = self.state.changed.notified() => false,
            };
            if close {
                if self.state.untouched() {
                    return;
                }
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A client's socket whose writes fail with `TimedOut` once the socket has taken no byte
    /// for the send timeout (the client stopped reading), so that hyper closes the
    /// connection. The clock runs only while a write waits: a response that has nothing to
    /// send (a quiet stream) is not timed.
    struct SendDeadline {
        #[pin]
        stream: TcpStream,
        timeout: Duration,
        stalled: Option<Pin<Box<Sleep>>>,
    }
}

impl SendDeadline {
    fn new(stream: TcpStream, timeout: Duration) -> SendDeadline {
        SendDeadline {
            stream,
            timeout,
            stalled: None,
        }
    }
}

/// What a write that waits returns: `Pending` until the stall has lasted the timeout, then
/// `TimedOut`.
fn stall<T>(
    stalled: &mut Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    cx: &mut Context<'_>,
) -> Poll<io::Result<T>> {
    let sleep = stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
    match sleep.as_mut().poll(cx) {
        Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client read nothing for {timeout:?}"),
        ))),
        Poll::Pending => Poll::Pending,
    }
}

impl AsyncRead for SendDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().stream.poll_read(cx, buf)
    }
}

impl AsyncWrite for SendDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        match this.stream.poll_write(cx, buf) {
            Poll::Pending => stall(this.stalled, *this.timeout, cx),
            done => {
                *this.stalled = None;
                done
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        match this.stream.poll_write_vectored(cx, bufs) {
            Poll::Pending => stall(this.stalled, *this.timeout, cx),
            done => {
                *this.stalled = None;
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            max_connections: 1024,
            body_limit: 1024,
            request_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_limit_that_would_serve_nobody_is_refused_by_name() {
        type Spoil = fn(&mut Limits);
        let cases: [(Spoil, &str); 4] = [
            (
                |l| l.header_read_timeout = Duration::ZERO,
                "header_read_timeout",
            ),
            (|l| l.request_timeout = Duration::ZERO, "request_timeout"),
            (|l| l.send_timeout = Duration::ZERO, "send_timeout"),
            (|l| l.max_connections = 0, "max_connections"),
        ];
        for (spoil, name) in cases {
            let mut l = limits();
            spoil(&mut l);
            let e = l.check().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(e.to_string().contains(name), "{e}");
        }
        let mut l = limits();
        l.keep_alive_timeout = Duration::ZERO;
        l.body_limit = 0;
        l.check().expect("keep-alive off and no body are fine");
    }

    #[test]
    fn endless_timeouts_are_cut_to_a_year() {
        let mut l = limits();
        l.header_read_timeout = Duration::MAX;
        l.stop_timeout = Duration::MAX;
        l.check().unwrap();
        assert_eq!(l.header_read_timeout, LONGEST_TIMEOUT);
        assert_eq!(l.stop_timeout, LONGEST_TIMEOUT);
        assert_eq!(l.request_timeout, Duration::from_secs(60));
        // A clock reading plus the longest timeout does not overflow.
        let _ = std::time::Instant::now() + LONGEST_TIMEOUT;
    }

    #[test]
    fn the_cap_leaves_descriptors_under_the_limit() {
        let mut l = limits();
        l.max_connections = usize::MAX;
        let cap = l.connection_cap();
        if let Some(limit) = crate::web::process::open_files_limit() {
            assert_eq!(cap as u64, limit.saturating_sub(FD_RESERVE).max(1));
        }
        l.max_connections = 3;
        assert_eq!(l.connection_cap(), 3);
    }
}
