//! [`Session`]: a handler's handle on its request's session (an axum extractor), and the
//! responses for session errors.

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
/// never uses it costs nothing. Each method is a short synchronous call (see
/// [`SessionLayer`](crate::web::SessionLayer) on calling the cache from async code); changes
/// are saved by the layer when the response goes out. Flash values are consumed when read
/// ([`get_flash`](Self::get_flash)), as in Catalyst.
///
/// Without the layer, the extractor fails with a `500` ([`MissingSessionLayer`]).
#[derive(Clone)]
pub struct Session {
    visit: Arc<Mutex<Visit>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("loaded", &self.is_loaded())
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn from_visit(visit: Arc<Mutex<Visit>>) -> Session {
        Session { visit }
    }

    fn visit(&self) -> MutexGuard<'_, Visit> {
        self.visit.lock().unwrap_or_else(|p| p.into_inner())
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
        Ok(f(visit.session()?))
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
        self.visit().update(f)
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
        self.visit().get_flash(key)
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
        self.visit().change_id()
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

/// The rejection of the [`Session`] extractor when no
/// [`SessionLayer`](crate::web::SessionLayer) is around the handler: a `500`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingSessionLayer;

impl std::fmt::Display for MissingSessionLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the Session extractor needs a SessionLayer around the handler")
    }
}

impl std::error::Error for MissingSessionLayer {}

impl IntoResponse for MissingSessionLayer {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = MissingSessionLayer;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(MissingSessionLayer)
    }
}

/// A session error as a response: `500 Internal Server Error` with the error's message
/// (which never holds a session id or anything the client sent), so that handlers can
/// return `Result<_, fastmmap::session::Error>`.
impl IntoResponse for session::Error {
    fn into_response(self) -> Response {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("session error: {self}\n"),
        )
            .into_response()
    }
}
