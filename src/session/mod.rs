//! Web sessions over a [`Cache`](crate::Cache): ids, expiry, flash values, cookies and
//! session ids in URLs — for every worker process of a web server sharing one cache file.
//!
//! This is what Perl's Catalyst::Plugin::Session::FastMmap did for Catalyst, without a
//! framework: strings and bytes in (a request path, a `Cookie` header), strings and bytes
//! out (a `Set-Cookie` value, a `Location`, an HTML body). It uses only the public cache
//! API.
//!
//! ```
//! use fastmmap::session::{Request, Response, SessionStore};
//!
//! let dir = tempfile::tempdir()?;
//! let store = SessionStore::builder().path(dir.path().join("sessions")).build()?;
//!
//! // A first request, without a cookie.
//! let mut visit = store.begin(&Request::new("/cart"));
//! visit.session()?.insert("items", &vec![42])?;
//! let mut response = Response::html("<p>added</p>");
//! store.finish(&mut visit, &mut response)?;
//! let set_cookie = response.set_cookie.expect("a new session sets its cookie");
//! assert_eq!(set_cookie.name(), "session");
//! assert!(set_cookie.to_string().contains("; HttpOnly; SameSite=Lax"));
//!
//! // The browser sends the cookie back (this could be another worker process).
//! let cookie = set_cookie.stripped().to_string();
//! let mut visit = store.begin(&Request::new("/checkout").cookie(&cookie));
//! assert_eq!(visit.session()?.get::<Vec<u32>>("items")?, Some(vec![42]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Ids
//!
//! A [`SessionId`] is 192 bits from the operating system's random number generator, written
//! as 32 characters of URL-safe base64 (`A–Z a–z 0–9 - _`). (The original made ids from an
//! MD5 of the time, a random number and the process id; predictable ids of that kind were
//! later a CVE in its successor.) An id from a client is parsed strictly: anything but
//! exactly 32 characters of that alphabet is no id — it is never looked up, and never
//! written back into a response.
//!
//! # Fixation
//!
//! A client presenting a well-formed id that has no live session gets a new session with a
//! **new** id, never the one it presented ([`NewReason::Unknown`]). When a user logs in,
//! call [`SessionStore::change_id`]: the data moves to a new id and the old one is deleted,
//! so an id known to someone else before the login is worthless after it.
//!
//! # Expiry
//!
//! Each session has an absolute lifetime ([`SessionStoreBuilder::lifetime`], default one day
//! as in the original) and, optionally, an idle timeout
//! ([`SessionStoreBuilder::idle_timeout`]): it ends at whichever comes first. The cache
//! entry expires with the session, so the cache reclaims it; an expired session is never
//! returned, and a load that finds one deletes it. To keep a session that is only read from
//! being rewritten on every request, the idle deadline moves only when the last move is at
//! least [`SessionStoreBuilder::extend_threshold`] old (default a tenth of the idle
//! timeout). Times come from the cache's [`Clock`](crate::Clock), so tests can use a
//! [`ManualClock`](crate::ManualClock).
//!
//! # Values, saving and concurrency
//!
//! Values are typed through serde ([`Session::get`], [`Session::insert`],
//! [`Session::remove`]) and stored as JSON. A session remembers what changed; an unchanged
//! session is not written back, and a new session is stored only once it holds something.
//! A save writes a whole record atomically — concurrent saves from two processes never
//! leave a torn record — and merges by key: the last save wins for each key it changed,
//! other keys keep what other requests wrote. [`SessionStore::update`] is an atomic
//! read-modify-write under the cache's page lock, for counters and the like.
//!
//! # Flash values
//!
//! [`Session::flash`] stores a value for the next load only (a message shown after a
//! redirect). [`SessionStore::load`] delivers it ([`Session::get_flash`]) and removes it from
//! the cache at once, so exactly one load sees it; [`Session::keep_flash`] carries it one
//! load further. The request cycle goes further, as Catalyst did: it leaves flash values in
//! the store until the request reads one ([`Visit::get_flash`]), so only a request that
//! reads the flash consumes it — still exactly one.
//!
//! # Binding
//!
//! Off by default: [`SessionStoreBuilder::bind_address`] and
//! [`SessionStoreBuilder::bind_user_agent`] tie a new session to the client's address or
//! user agent. A request from another one deletes the session and gets a new one, with the
//! reason in its origin ([`NewReason::AddressChanged`], [`NewReason::UserAgentChanged`]).
//!
//! # Cookies and URLs
//!
//! [`CookieConfig`] makes the cookies through the `cookie` crate (HttpOnly and SameSite=Lax
//! by default; Secure always or only over HTTPS, Partitioned, persistent or for the browser
//! session, on request) and finds the id in a `Cookie` header, parsed strictly. For clients without cookies,
//! [`UrlRewriter`] carries the id in URLs, in the original's path style (`/cart/-/ID`) or as
//! a query parameter (`?sid=ID`): it takes the id out of incoming URLs, and adds it to
//! redirects and to the links of HTML pages (with an HTML rewriter, only for links under the
//! application's base URL, never to other sites or binary assets, never twice). Links are
//! resolved as browsers resolve them, against the page's first `<base href>` even when it
//! comes after them, and a link that carries the id is written so that it reaches the
//! application whichever base a browser settles on. A client
//! that sends the session cookie gets no ids in URLs. Ids in URLs leak through `Referer`
//! headers, logs and shared links; prefer cookies, and bind such sessions to the client.
//!
//! # The request cycle
//!
//! [`SessionStore::begin`] and [`SessionStore::finish`] do all of the above around a
//! request, as the original's `prepare_action` and `finalize` did; a framework integration
//! copies headers in and out (`fastmmap::web::SessionLayer`, feature `axum`, is one). The
//! session is loaded lazily, when the request first uses it ([`Visit::session`]): a request
//! that never does (a static asset) touches nothing.
//!
//! # Record format
//!
//! A stored session is a record with a fixed header — a magic number, a format version
//! ([`RECORD_VERSION`]), the creation, update, activity and expiry times, and section
//! lengths — followed by the data and flash values as JSON and the binding. A record of
//! another version is reported ([`Error::UnsupportedVersion`]) and left alone, never
//! overwritten.
//!
//! Every byte of a record is checked before use: the cache file is shared, and whatever it
//! holds never makes the store panic. A damaged record — wrong magic, a section that does
//! not fit, JSON that is not an object, or a time past early 2106 (the last second a cache
//! entry can expire; no session this crate writes goes beyond it) — is
//! [`Error::BadRecord`] for [`SessionStore::load`], [`SessionStore::begin`],
//! [`SessionStore::save`], [`SessionStore::update`] and [`SessionStore::change_id`], and is
//! left as it was (it may be another program's value under a colliding key);
//! [`SessionStore::delete`] removes it.

#![forbid(unsafe_code)]

#[cfg(feature = "perl")]
mod catalyst;
mod cookie;
mod cycle;
mod data;
mod error;
mod html;
mod id;
mod record;
mod store;
mod uri;

pub use self::cookie::{CookieConfig, DEFAULT_COOKIE_NAME, SameSite, Secure};
#[cfg(feature = "perl")]
pub use catalyst::{
    CATALYST_DEFAULT_EXPIRES, CATALYST_DEFAULT_NUM_PAGES, CATALYST_DEFAULT_PAGE_SIZE,
    CatalystConfig,
};
pub use cycle::{Finished, IdSource, Request, Response, Visit};
pub use data::{NewReason, Origin, Session};
pub use error::{Error, Result};
pub use html::{HTML_MEMORY_LIMIT, PageRewrite, PageStream};
pub use id::{
    CATALYST_ID_BYTES, CATALYST_ID_LEN, ID_BYTES, ID_LEN, IdFormat, InvalidId, SessionId,
};
pub use record::{MAX_BOUND_USER_AGENT, RECORD_VERSION};
pub use store::{
    Client, DEFAULT_KEY_PREFIX, DEFAULT_LIFETIME, Saved, SessionStore, SessionStoreBuilder,
};
pub use uri::{
    DEFAULT_PARAM, DEFAULT_SKIP_EXTENSIONS, Extracted, PATH_MARKER, UrlRewriter, UrlStyle,
};
