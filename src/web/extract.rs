//! [`SessionHandle`]: a handler's handle on its request's session (an axum extractor), and the
//! responses for session errors.

use super::blocking::blocking;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::session::{self, Result, SessionId, Visit};

/// The session of the current request, put into the request's extensions by
/// [`SessionLayer`](crate::web::SessionLayer); an axum extractor. Clones share the session.
///
/// The session is loaded on first use, by whichever method comes first; a handler that
/// never uses it costs nothing. With a store whose calls may wait on the network (a Redis
/// tier, [`SessionStoreBuilder::redis`](crate::session::SessionStoreBuilder::redis), or a
/// cache with a backing store), the extractor itself loads the session, on tokio's blocking
/// pool, so that a slow or hung Redis holds up only that request, never the worker's other
/// requests; the methods below then work on the loaded session. Each method is a short
/// synchronous call (see [`SessionLayer`](crate::web::SessionLayer) on calling the cache
/// from async code), except that with such a store [`update`](Self::update),
/// [`get_flash`](Self::get_flash) and [`change_id`](Self::change_id) make a round trip to
/// Redis: call them through [`run_blocking`](Self::run_blocking). Changes are saved by the
/// layer when the response goes out. Flash values are consumed when read
/// ([`get_flash`](Self::get_flash)), as in Catalyst.
///
/// If the session cannot be loaded (Redis unreachable, a record this version cannot read),
/// every method that needs it returns that error — with a store that may block, the one
/// failure of the request's one load, shared ([`session::Error::LoadFailed`], which reads as
/// the failure and keeps its `source`); as a response, "the session could not be loaded" and
/// why — and the layer leaves the session and its cookie as they were.
///
/// Without the layer, the extractor fails with a `500` ([`MissingSessionLayer`]).
#[derive(Clone)]
pub struct SessionHandle {
    shared: Arc<Shared>,
}

/// What the layer and the handlers of one request share.
pub(crate) struct Shared {
    visit: Mutex<Visit>,
    /// Whether a store call may wait on the network: made on the blocking pool.
    pub(crate) may_block: bool,
    /// Whether the last load of the session in this request failed.
    load_failed: AtomicBool,
    /// With a store that may block, that failure: the later calls fail at once with the same
    /// error ([`session::Error::LoadFailed`]) instead of waiting again.
    failure: Mutex<Option<Arc<session::Error>>>,
}

impl Shared {
    pub(crate) fn new(visit: Visit, may_block: bool) -> Shared {
        Shared {
            visit: Mutex::new(visit),
            may_block,
            load_failed: AtomicBool::new(false),
            failure: Mutex::new(None),
        }
    }

    pub(crate) fn visit(&self) -> MutexGuard<'_, Visit> {
        self.visit.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failure(&self) -> MutexGuard<'_, Option<Arc<session::Error>>> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a load of the session failed in this request.
    pub(crate) fn load_failed(&self) -> bool {
        self.load_failed.load(Ordering::Relaxed)
    }

    /// The session of `visit`, loaded if needed; a failed load is remembered, and with a
    /// store that may block, not tried again in this request.
    fn session<'v>(&self, visit: &'v mut Visit) -> Result<&'v mut session::Session> {
        if !visit.is_loaded()
            && self.may_block
            && let Some(failure) = self.failure().as_ref()
        {
            return Err(session::Error::LoadFailed(Arc::clone(failure)));
        }
        let was_loaded = visit.is_loaded();
        match visit.session() {
            Ok(s) => {
                if !was_loaded {
                    // Loaded after all (a retry): saved as usual at the end.
                    self.load_failed.store(false, Ordering::Relaxed);
                }
                Ok(s)
            }
            Err(e) => {
                self.load_failed.store(true, Ordering::Relaxed);
                if !self.may_block {
                    // The next call tries again.
                    return Err(e);
                }
                let e = Arc::new(e);
                *self.failure() = Some(Arc::clone(&e));
                Err(session::Error::LoadFailed(e))
            }
        }
    }
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle")
            .field("loaded", &self.is_loaded())
            .finish_non_exhaustive()
    }
}

impl SessionHandle {
    pub(crate) fn from_shared(shared: Arc<Shared>) -> SessionHandle {
        SessionHandle { shared }
    }

    fn visit(&self) -> MutexGuard<'_, Visit> {
        self.shared.visit()
    }

    /// Runs `f` with this session where blocking is allowed: on tokio's blocking pool when
    /// the store's calls may wait on the network (a Redis tier, a backing store), else right
    /// here. Use it for the calls that reach Redis after the load —
    /// [`update`](Self::update), [`get_flash`](Self::get_flash),
    /// [`change_id`](Self::change_id) — so that a slow Redis holds up only this request:
    ///
    /// ```no_run
    /// # async fn handler(session: fastmmap::web::SessionHandle) -> Result<String, fastmmap::session::Error> {
    /// let n = session
    ///     .run_blocking(|s| {
    ///         s.update(|s| {
    ///             let n = s.get::<u64>("count").ok().flatten().unwrap_or(0) + 1;
    ///             s.insert("count", &n).map(|()| n)
    ///         })
    ///     })
    ///     .await??;
    /// # Ok(n.to_string()) }
    /// ```
    pub async fn run_blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&SessionHandle) -> R + Send + 'static,
    ) -> R {
        if !self.shared.may_block {
            return f(self);
        }
        let session = self.clone();
        blocking(move || f(&session)).await
    }

    /// Runs `f` on the session (loading it first if needed): for anything the other methods
    /// do not cover ([`session::Session`]'s whole API).
    ///
    /// `f` runs while this request's session is locked against its other handles: do not use
    /// the session's other handles in it.
    ///
    /// # Errors
    /// As [`Visit::session`] (the load).
    pub fn with<R>(&self, f: impl FnOnce(&mut session::Session) -> R) -> Result<R> {
        let mut visit = self.visit();
        Ok(f(self.shared.session(&mut visit)?))
    }

    /// Whether a handler has used the session yet (it is loaded on first use).
    pub fn is_loaded(&self) -> bool {
        self.visit().is_loaded()
    }

    /// The session id (a new session has one too; it is stored, and sent to the client, only
    /// once it holds something).
    ///
    /// # Errors
    /// As [`with`](Self::with).
    pub fn id(&self) -> Result<SessionId> {
        self.with(|s| *s.id())
    }

    /// The value under `key`.
    ///
    /// # Errors
    /// As [`with`](Self::with); [`session::Error::Deserialize`] if it is not a `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.with(|s| s.get(key))?
    }

    /// Stores `value` under `key` ([`session::Session::insert`]). For a read-modify-write
    /// that concurrent requests must not interleave (a counter), use
    /// [`update`](Self::update).
    ///
    /// # Errors
    /// As [`with`](Self::with); [`session::Error::Serialize`].
    pub fn insert<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<()> {
        self.with(|s| s.insert(key, value))?
    }

    /// Removes `key`; returns whether it held a value.
    ///
    /// # Errors
    /// As [`with`](Self::with).
    pub fn remove(&self, key: &str) -> Result<bool> {
        self.with(|s| s.remove(key))
    }

    /// An atomic read-modify-write of the stored session ([`Visit::update`]): `f` runs
    /// under the cache's page lock, so concurrent requests in any worker never lose each
    /// other's changes. Keep `f` short: it holds a page lock.
    ///
    /// # Errors
    /// As [`Visit::update`].
    pub fn update<R>(&self, f: impl FnOnce(&mut session::Session) -> R) -> Result<R> {
        let mut visit = self.visit();
        self.shared.session(&mut visit)?;
        visit.update(f)
    }

    /// Sets a flash value, for the next request that reads it.
    ///
    /// # Errors
    /// As [`with`](Self::with); [`session::Error::Serialize`].
    pub fn flash<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<()> {
        self.with(|s| s.flash(key, value))?
    }

    /// The flash value under `key`. The first read in a request takes the session's flash
    /// values out of the store ([`Visit::get_flash`]): they are consumed by this request,
    /// and only by it, unless kept with [`keep_flash`](Self::keep_flash).
    ///
    /// # Errors
    /// As [`Visit::get_flash`].
    pub fn get_flash<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let mut visit = self.visit();
        self.shared.session(&mut visit)?;
        visit.get_flash(key)
    }

    /// Passes the flash value under `key` (read by this request) on to the next request.
    ///
    /// # Errors
    /// As [`with`](Self::with).
    pub fn keep_flash(&self, key: &str) -> Result<bool> {
        self.with(|s| s.keep_flash(key))
    }

    /// Moves the session to a new id and deletes the old one ([`Visit::change_id`]): do it
    /// when a user logs in, so that an id known before (perhaps planted) is worthless after.
    /// The client gets the new id in the response. Returns the old id.
    ///
    /// # Errors
    /// As [`Visit::change_id`].
    pub fn change_id(&self) -> Result<SessionId> {
        let mut visit = self.visit();
        self.shared.session(&mut visit)?;
        visit.change_id()
    }

    /// Ends the session (log-out): it is deleted, and the client's cookie with it, when the
    /// response goes out.
    ///
    /// # Errors
    /// As [`with`](Self::with).
    pub fn invalidate(&self) -> Result<()> {
        self.with(session::Session::invalidate)
    }
}

/// The rejection of the [`SessionHandle`] extractor when no
/// [`SessionLayer`](crate::web::SessionLayer) is around the handler: a `500`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingSessionLayer;

impl std::fmt::Display for MissingSessionLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the SessionHandle extractor needs a SessionLayer around the handler")
    }
}

impl std::error::Error for MissingSessionLayer {}

impl IntoResponse for MissingSessionLayer {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SessionHandle {
    type Rejection = MissingSessionLayer;

    /// The request's session; with a store that may block, loaded now on the blocking pool
    /// (a failure is kept for the handler's first use of the session).
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let session = parts
            .extensions
            .get::<SessionHandle>()
            .cloned()
            .ok_or(MissingSessionLayer)?;
        if session.shared.may_block && !session.is_loaded() && !session.shared.load_failed() {
            let shared = Arc::clone(&session.shared);
            blocking(move || {
                let mut visit = shared.visit();
                // A failure is remembered by `session` and reported at the first use.
                let _ = shared.session(&mut visit);
            })
            .await;
        }
        Ok(session)
    }
}

/// Whether `e` says that the session could not be loaded: its record cannot be read, or the
/// store failed while reading it.
fn is_load_failure(e: &session::Error) -> bool {
    match e {
        session::Error::LoadFailed(e) => is_load_failure(e),
        session::Error::BadRecord { .. } | session::Error::UnsupportedVersion { .. } => true,
        session::Error::Cache(crate::Error::Backing { op, .. }) => *op == "load",
        _ => false,
    }
}

/// A session error as a response: `500 Internal Server Error` with the error's message
/// (which never holds a session id or anything the client sent), so that handlers can
/// return `Result<_, fastmmap::session::Error>`. A failed load says so: "the session could
/// not be loaded", then why.
impl IntoResponse for session::Error {
    fn into_response(self) -> Response {
        let what = if is_load_failure(&self) {
            "the session could not be loaded"
        } else {
            "session error"
        };
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{what}: {self}\n"),
        )
            .into_response()
    }
}
