//! [`SessionLayer`]: the request cycle of [`fastmmap::session`](crate::session) around any
//! tower service, over `http` types — what Catalyst's session plugin did around each request.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::ConnectInfo;
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

use crate::session::{ResponseHead, SessionStore};
use crate::web::blocking::blocking;
use crate::web::body::{BoxError, SessionBody};
use crate::web::extract::{SessionHandle, Shared};

/// HTML bodies of known size up to this many bytes are rewritten whole, by default; larger
/// ones, and bodies of unknown size, are rewritten as they stream.
pub const DEFAULT_BUFFER_LIMIT: usize = 256 * 1024;

/// A tower [`Layer`] that gives every request a lazily loaded session from a
/// [`SessionStore`], as Catalyst's session plugin did around each request:
///
/// 1. It finds the id: the session cookie first, then (with URL ids on,
///    [`SessionStoreBuilder::urls`](crate::session::SessionStoreBuilder::urls)) the URL.
/// 2. It takes the id out of the URL, so the inner service routes on the path without it,
///    and puts a [`SessionHandle`] into the request's extensions (the axum extractor).
///    Nothing is read from the cache until a handler uses the session: a static asset
///    neither loads the session nor consumes its flash values. (With a store that may wait
///    on the network, extracting [`SessionHandle`] counts as using it: the extractor loads the
///    session off the worker's thread, see below.)
/// 3. When the inner service has answered, it saves the session (if it was used), adds
///    `Set-Cookie` (a new or changed id, a moved expiry, or a deletion), and for a client
///    that sent no session cookie puts the id into the `Location` of a redirect and the links
///    of a `text/html` body. A body of known size up to the
///    [`buffer_limit`](Self::buffer_limit) is rewritten whole (with its `Content-Length`
///    set); a larger body, or one of unknown size, is rewritten as it streams through the
///    HTML rewriter, never held whole (see
///    [`PageRewrite`](crate::session::PageRewrite) for what changes). A body with a
///    `Content-Encoding` is left alone: put compression outside this layer.
///
/// If the save fails (the record does not fit in a cache page, a lock timeout, Redis down),
/// the response becomes a `500`: the application's changes would otherwise be lost without a
/// word.
///
/// A session that cannot be *loaded* (Redis unreachable or hung, a record this version
/// cannot read) breaks only the handlers that use it: they get the error (a response that
/// says "the session could not be loaded" and why, if they return it). Every other request
/// — a static asset, a page that never touches the session — is answered as the handler made
/// it, also when the layer itself would have loaded the session (Catalyst mode extends a
/// session on every request that sends its cookie; a client that came by a URL id is checked
/// before its links get the id). Such a response carries no `Set-Cookie` at all: the
/// session is neither deleted (Redis down must not log everyone out) nor extended, and stays
/// as it is in the store for the next request.
///
/// # Where it goes
///
/// `Router::layer` runs a layer after routing, which is enough for cookies. With ids in
/// URLs the layer must see the path before the router does (`/cart/-/ID` routes as
/// `/cart`), so wrap the whole router instead — serve `layer.layer(router)`, or keep a
/// `Router` with `Router::new().fallback_service(layer.layer(router))`:
///
/// ```no_run
/// # use axum::{Router, routing::get};
/// # use fastmmap::session::{SessionStore, UrlRewriter};
/// # use fastmmap::web::SessionLayer;
/// use tower_layer::Layer; // or tower::Layer
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = SessionStore::builder()
///     .path("/run/user/1000/sessions.cache")
///     .urls(UrlRewriter::new("https://shop.example/")?)
///     .build()?;
/// let routes: Router = Router::new().route("/cart", get(|| async { "cart" }));
/// let app: Router = Router::new().fallback_service(SessionLayer::new(store).layer(routes));
/// # let _ = app; Ok(()) }
/// ```
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use fastmmap::session::SessionStore;
/// use fastmmap::web::{SessionHandle, SessionLayer};
///
/// async fn count(session: SessionHandle) -> Result<String, fastmmap::session::Error> {
///     // An atomic increment under the cache's page lock: concurrent requests in any
///     // worker process never lose one.
///     let n = session.update(|s| {
///         let n = s.get::<u64>("count").ok().flatten().unwrap_or(0) + 1;
///         s.insert("count", &n).map(|()| n)
///     })??;
///     Ok(format!("count={n}"))
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = SessionStore::builder().path("/run/user/1000/sessions.cache").build()?;
/// let app: Router = Router::new()
///     .route("/count", get(count))
///     .layer(SessionLayer::new(store));
/// # Ok(()) }
/// ```
///
/// # Async handlers and the cache
///
/// With a session store over a cache file alone, every session call is a synchronous call
/// into the cache, made from the handler's task: it locks one page of the file for a few
/// microseconds (a lookup, a copy, at most a rewrite of that page) and returns. No lock is
/// ever held across an `.await`, by this layer or by the cache, so it costs an async runtime
/// no more than any short computation and needs no `spawn_blocking`. A page lock can only be
/// held longer by a process that stops while holding it (a debugger, `SIGSTOP`) — a process
/// that dies releases it. To turn such a wait into an error rather than a stalled worker,
/// open the cache with [`CacheBuilder::lock_timeout`](crate::CacheBuilder::lock_timeout) and
/// give it to the store with [`SessionStoreBuilder::cache`](crate::session::SessionStoreBuilder::cache).
///
/// A store whose calls may wait on the network — a Redis tier
/// ([`SessionStoreBuilder::redis`](crate::session::SessionStoreBuilder::redis)), or a cache
/// with a backing store — costs a round trip per load and two per save that writes (tens of
/// microseconds on a quiet LAN, up to [`RedisOptions::timeout`](crate::redis::RedisOptions::timeout)
/// when Redis hangs). The layer then makes those calls on tokio's blocking pool
/// (`spawn_blocking`, which works in the prefork workers' current-thread runtimes too): the
/// [`SessionHandle`] extractor loads the session there, and the save after the response runs
/// there, so a slow or hung Redis holds up the requests that need their session, never the
/// worker's other requests. The calls a handler makes after the load that reach Redis
/// ([`SessionHandle::update`], [`SessionHandle::get_flash`], [`SessionHandle::change_id`]) belong in
/// [`SessionHandle::run_blocking`]. Each hop to the blocking pool is a hand-off between threads
/// (16–110 µs measured on the 2-core development VM, about a Redis round trip there), which
/// is why a file-only store does not take it, nor does a request that never used its session
/// (a static asset; [`Visit::needs_store`](crate::session::Visit::needs_store)).
#[derive(Clone, Debug)]
pub struct SessionLayer {
    config: Arc<Config>,
}

#[derive(Debug)]
struct Config {
    store: SessionStore,
    trust_forwarded_proto: bool,
    buffer_limit: usize,
}

impl SessionLayer {
    /// A layer over `store`, with its cookie and URL settings.
    pub fn new(store: SessionStore) -> SessionLayer {
        SessionLayer {
            config: Arc::new(Config {
                store,
                trust_forwarded_proto: false,
                buffer_limit: DEFAULT_BUFFER_LIMIT,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config {
            store: self.config.store.clone(),
            trust_forwarded_proto: self.config.trust_forwarded_proto,
            buffer_limit: self.config.buffer_limit,
        };
        f(&mut config);
        self.config = Arc::new(config);
        self
    }

    /// Whether to believe an `X-Forwarded-Proto: https` request header (default no). A
    /// request counts as HTTPS for [`Secure::IfHttps`](crate::session::Secure) when its URI
    /// says `https` (HTTP/2 and absolute-form requests carry a scheme) or, with this on,
    /// when that header says so. Turn it on only behind a reverse proxy that sets the header
    /// itself and strips it from clients' requests.
    pub fn trust_forwarded_proto(self, yes: bool) -> Self {
        self.edit(|c| c.trust_forwarded_proto = yes)
    }

    /// HTML bodies of known size up to `bytes` are rewritten whole; larger ones and bodies of
    /// unknown size are rewritten as they stream (default [`DEFAULT_BUFFER_LIMIT`]). `0`
    /// streams everything.
    pub fn buffer_limit(self, bytes: usize) -> Self {
        self.edit(|c| c.buffer_limit = bytes)
    }

    /// The store.
    pub fn store(&self) -> &SessionStore {
        &self.config.store
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> SessionService<S> {
        SessionService {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

/// The service [`SessionLayer`] wraps around an inner service.
#[derive(Clone, Debug)]
pub struct SessionService<S> {
    inner: S,
    config: Arc<Config>,
}

/// The future of a [`SessionService`] call.
pub type ResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<http::Response<SessionBody<B>>, E>> + Send>>;

fn is_https(uri: &Uri, headers: &HeaderMap, trust_forwarded: bool) -> bool {
    if uri.scheme_str() == Some("https") {
        return true;
    }
    trust_forwarded
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// The request's URI with `path` and `query` in place of its own.
fn with_path(uri: &Uri, path: &str, query: Option<&str>) -> Option<Uri> {
    let pq = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().ok()?);
    Uri::from_parts(parts).ok()
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for SessionService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = http::Response<SessionBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let config = Arc::clone(&self.config);
        let address = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip());
        let https = is_https(req.uri(), req.headers(), config.trust_forwarded_proto);
        let visit = config
            .store
            .begin_http(req.uri(), req.headers(), address, https);
        let changed = visit.path() != req.uri().path() || visit.query() != req.uri().query();
        if changed && let Some(uri) = with_path(req.uri(), visit.path(), visit.query()) {
            *req.uri_mut() = uri;
        }
        let head = req.method() == http::Method::HEAD;
        let shared = Arc::new(Shared::new(visit, config.store.may_block()));
        req.extensions_mut()
            .insert(SessionHandle::from_shared(Arc::clone(&shared)));
        let future = self.inner.call(req);
        Box::pin(async move {
            let response = future.await?;
            Ok(finish(config, shared, response, head).await)
        })
    }
}

/// A plain-text response of `status`.
fn plain<B>(status: StatusCode, text: &'static str) -> http::Response<SessionBody<B>> {
    let mut r = http::Response::new(SessionBody::full(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Saves the session and fills in the response: cookie, location, body.
async fn finish<B>(
    config: Arc<Config>,
    shared: Arc<Shared>,
    response: http::Response<B>,
    head: bool,
) -> http::Response<SessionBody<B>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = response.into_parts();
    if shared.load_failed() {
        // The handler was told; the session and its cookie stay as they were.
        return http::Response::from_parts(parts, SessionBody::plain(body));
    }
    let status = parts.status;
    let mut headers = std::mem::take(&mut parts.headers);
    // Read once, for the question below and for the finish.
    let read = ResponseHead::read(&headers);
    // A request that never used the session (a static asset) skips the blocking pool:
    // `finish_http` then reaches no store.
    let (was_loaded, hop) = {
        let visit = shared.visit();
        (
            visit.is_loaded(),
            shared.may_block && visit.needs_store_for(&read),
        )
    };
    let store_finish = {
        let shared = Arc::clone(&shared);
        move || {
            let finished =
                config
                    .store
                    .finish_http_with(&mut shared.visit(), status, read, &mut headers);
            (finished, headers, config)
        }
    };
    let (finished, headers, config) = if hop {
        blocking(store_finish).await
    } else {
        store_finish()
    };
    parts.headers = headers;
    let finished = match finished {
        Ok(finished) => finished,
        Err(e) if !was_loaded && !shared.visit().is_loaded() => {
            super::events::session_not_saved(config.store.cache().path(), &e, false);
            // A session the handler never used, loaded by `finish` only to extend it (as
            // Catalyst does) or to check an id from the URL, could not be loaded: the
            // response goes out as the handler made it, with no cookie — the session is
            // neither deleted (Redis down must not log everyone out) nor extended.
            return http::Response::from_parts(parts, SessionBody::plain(body));
        }
        Err(e) => {
            super::events::session_not_saved(config.store.cache().path(), &e, true);
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the session could not be saved\n",
            );
        }
    };
    // A HEAD response has no body to rewrite, and keeps the length GET would have.
    let Some(page) = finished.page.filter(|_| !head) else {
        return http::Response::from_parts(parts, SessionBody::plain(body));
    };
    if parts
        .headers
        .get(CONTENT_ENCODING)
        .is_some_and(|e| e.as_bytes() != b"identity")
    {
        return http::Response::from_parts(parts, SessionBody::plain(body));
    }
    let small = body
        .size_hint()
        .exact()
        .is_some_and(|n| n <= config.buffer_limit as u64);
    if !small {
        parts.headers.remove(CONTENT_LENGTH);
        return http::Response::from_parts(parts, SessionBody::rewriting(body, page.stream()));
    }
    match collect(body).await {
        Ok(bytes) => {
            let out = page
                .rewrite(&bytes)
                .map_err(|e| super::events::rewrite_refused(config.store.cache().path(), &e))
                .map_or(bytes, Bytes::from);
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
            http::Response::from_parts(parts, SessionBody::full(out))
        }
        Err(e) => http::Response::from_parts(parts, SessionBody::failed(e)),
    }
}

/// The whole of a (small) body.
async fn collect<B>(body: B) -> Result<Bytes, BoxError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut out = BytesMut::new();
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        if let Ok(data) = frame.map_err(Into::into)?.into_data() {
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}
