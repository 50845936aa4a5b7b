//! Sessions in a tower / axum stack, and a cache-backed store for tower-sessions.
//!
//! - [`SessionLayer`] (feature `axum`): the request cycle of
//!   [`fastmmap::session`](crate::session) around any tower service over `http` types —
//!   the id from the cookie or the URL, the session loaded when a handler first uses it,
//!   saved with its cookie afterwards, and ids put into redirects and HTML links for clients
//!   without cookies. [`SessionHandle`] is its axum extractor.
//! - [`Prefork`] (feature `axum`, Linux): an axum application in forked worker processes
//!   that share caches and sessions through one file, every connection under a deadline and
//!   a budget (header, keep-alive, request and send timeouts, a connection cap, a body
//!   limit).
//! - [`FastMmapStore`] (feature `tower-sessions`): a `tower_sessions::SessionStore` over a
//!   [`Cache`](crate::Cache), for tower-sessions and axum-login users whose workers are
//!   forked processes.
//!
//! This module uses only the crate's public API — what it does, an application could do —
//! apart from [`Prefork`]'s process control (fork, wait, signals), whose libc calls are safe
//! wrappers in `process.rs`, the only file here allowed `unsafe` code.
//!
//! # Async code and page locks
//!
//! The cache is synchronous: each call locks one page of the file for a few microseconds
//! and returns. Calling it from an async handler is fine — it costs no more than any short
//! computation, and nothing here holds a page lock (or any lock) across an `.await`. Set
//! [`CacheBuilder::lock_timeout`](crate::CacheBuilder::lock_timeout) if a process that is
//! stopped while it holds a page lock (a debugger, `SIGSTOP`) should turn into errors
//! rather than waiting workers; a process that dies releases its locks.
//!
//! That holds for a cache file alone. A cache or session store with a backing store behind
//! it (Redis, a database) makes network round trips, which may hang: [`SessionLayer`] and
//! [`FastMmapStore`] then run their calls on tokio's blocking pool, and a handler's own
//! calls on such a store belong there too ([`SessionHandle::run_blocking`]), so that a hung
//! server stalls only the requests that need it.

// Each item exists with its own feature only; the overview above links to all of them
// (docs.rs builds with every feature).
#![cfg_attr(
    not(all(feature = "axum", feature = "tower-sessions")),
    allow(rustdoc::broken_intra_doc_links)
)]

#[cfg(any(feature = "axum", feature = "tower-sessions"))]
mod blocking;
#[cfg(feature = "axum")]
mod body;
#[cfg(feature = "axum")]
mod events;
#[cfg(feature = "axum")]
mod extract;
#[cfg(feature = "axum")]
mod layer;
#[cfg(all(feature = "axum", target_os = "linux"))]
mod prefork;
#[cfg(all(feature = "axum", target_os = "linux"))]
mod process;
#[cfg(all(feature = "axum", target_os = "linux"))]
mod serve;
#[cfg(feature = "tower-sessions")]
mod tower_sessions;

#[cfg(feature = "axum")]
pub use body::{BoxError, SessionBody};
#[cfg(feature = "axum")]
pub use extract::{MissingSessionLayer, SessionHandle};
#[cfg(feature = "axum")]
pub use layer::{DEFAULT_BUFFER_LIMIT, ResponseFuture, SessionLayer, SessionService};
#[cfg(all(feature = "axum", target_os = "linux"))]
pub use prefork::{
    DEFAULT_BODY_LIMIT, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_KEEP_ALIVE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_REQUEST_TIMEOUT, DEFAULT_SEND_TIMEOUT, DEFAULT_STOP_TIMEOUT,
    Prefork,
};
#[cfg(feature = "tower-sessions")]
pub use tower_sessions::{DEFAULT_PREFIX as TOWER_SESSIONS_PREFIX, FastMmapStore};
