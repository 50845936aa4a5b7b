//! Web sessions over a [`Cache`](crate::Cache): ids, expiry, flash values, cookies and
//! session ids in URLs — for every worker process of a web server sharing one cache file.
//!
//! This is what Perl's Catalyst::Plugin::Session::FastMmap did for Catalyst, without a
//! framework: `http` types in (a URI, the `Cookie` headers) and out (`Set-Cookie`, a
//! `Location`, a rewriter for an HTML body) — or, for frameworks without `http`, strings and
//! bytes ([`Request`], [`Response`]). It uses only the public cache API.
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
//! A store in [Catalyst mode](#catalyst-mode) makes and accepts Catalyst's ids instead: 160
//! bits written as 40 lowercase hex digits ([`IdFormat::Catalyst`]). Each store parses ids of
//! its own shape only ([`SessionStore::id_format`]).
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
//! session, on request) and finds the id in a `Cookie` header, parsed strictly. For clients
//! without cookies, [`UrlRewriter`] carries the id in URLs, in the original's path style
//! (`/cart/-/ID`) or as a query parameter (`?sid=ID`): it takes the id out of incoming URLs,
//! and adds it to redirects and to the links of HTML pages (with an HTML rewriter, only for
//! links under the application's base URL, never to other sites or binary assets, never
//! twice). Links are resolved as browsers resolve them, against the page's first
//! `<base href>` even when it comes after them, and a link that carries the id is written so
//! that it reaches the application whichever base a browser settles on. A client
//! that sends the session cookie gets no ids in URLs. Ids in URLs leak through `Referer`
//! headers, logs and shared links; prefer cookies, and bind such sessions to the client.
//!
//! # The request cycle
//!
//! [`SessionStore::begin_http`] and [`SessionStore::finish_http`] do all of the above around
//! a request, as the original's `prepare_action` and `finalize` did, on its `http` head
//! (`fastmmap::web::SessionLayer`, feature `axum`, is built on them);
//! [`SessionStore::begin`] and [`SessionStore::finish`] do the same with strings and bytes. The
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
//!
//! # Catalyst mode
//!
//! With the feature `perl`, [`SessionStoreBuilder::catalyst`] keeps sessions exactly as a
//! Perl Catalyst application with Catalyst::Plugin::Session 0.43, Session::Store::FastMmap
//! and Session::State::Cookie keeps them, so that Perl and Rust workers serve the same users
//! from one session file. The application's API does not change: [`Session`],
//! [`SessionStore`] and the web layer work as above, and values go through Perl's Storable
//! (numbers stay numbers for Perl, strings stay strings).
//!
//! The file is the one Store::FastMmap opens (its `storage`): a Cache::FastMmap file
//! ([`Layout::FastMmap`](crate::Layout::FastMmap)) of the same geometry — by default
//! Cache::FastMmap's 89 pages of 64 KiB ([`CatalystConfig::geometry`] otherwise). Each
//! session is three keys, Storable values with no cache expiry, as Store::FastMmap writes
//! them:
//!
//! | key | value |
//! |---|---|
//! | `session:SID` | a hash: `__created`, `__updated`, `__address` / `__user_agent` (when verified), `__flash` (pending flash values) and the application's keys |
//! | `expires:SID` | when the session ends, Unix seconds |
//! | `flash:SID` | written by older Catalysts only; deleted with the session |
//!
//! What Catalyst does, this store does:
//!
//! - **Ids**: new ids are 40 lowercase hex digits from the OS CSPRNG (Catalyst makes the
//!   same shape from a SHA-1 of the time, a counter and `rand`). Catalyst accepts any
//!   non-empty hex string; this store accepts exactly 40 lowercase digits — the only ids
//!   Catalyst makes — and never looks anything else up.
//! - **Expiry**: a session ends at `expires:SID` (inclusive, as in Catalyst); a request
//!   that loads it moves that to now + `expires` (default 7200 s, [`CatalystConfig::expires`]),
//!   or, with an `expiry_threshold`, only once the end is that close or when the request
//!   changed the session. A session found past its end, or without an `expires:SID`, is
//!   deleted ([`NewReason::Expired`], Catalyst's "session expired").
//! - **Verification**: with `verify_address` / `verify_user_agent`, a new session records
//!   the client's address / user agent, and a request from another one deletes it
//!   ([`NewReason::AddressChanged`] / [`NewReason::UserAgentChanged`], "address mismatch" /
//!   "user agent mismatch": [`NewReason::catalyst_reason`]). A logout
//!   ([`Session::invalidate`], Catalyst's `delete_session`) deletes all three keys.
//! - **`change_id`** is Catalyst's `change_session_id`: the data (with this request's
//!   changes) moves to a new id, and the old id's keys are deleted.
//! - **Flash** values live in the session hash under `__flash` until a request reads them;
//!   reading takes them all, atomically, so exactly one request sees them.
//! - **[`SessionStore::update`]** is Catalyst's `get_and_set_session_data`: a
//!   read-modify-write of `session:SID` under the page lock.
//! - **Cookies** are the application's [`CookieConfig`]: give it Catalyst's cookie name
//!   (`<app>_session` unless configured) and make it persistent, as State::Cookie's are
//!   (they end with the session).
//!
//! Where Catalyst's format makes a difference:
//!
//! - **Three keys, not one record.** Each key changes atomically on its own, never the three
//!   together. The writes are ordered so that no reader — Rust, or Perl in another worker —
//!   finds a session without its expiry: a new session writes `expires:SID` before
//!   `session:SID`; a deletion removes `session:SID` first; an extension only moves an
//!   `expires:SID` that is still there. A crash between two writes leaves at worst an
//!   `expires:SID` without a session (which reads as no session).
//! - **Saves merge by key** (a compare-and-swap on `session:SID`), as in native mode; a Perl
//!   worker writes the whole hash it loaded, so between a Perl and a Rust request of one
//!   session at the same moment the last writer wins, as between two Perl workers.
//! - **Expired sessions are not reclaimed by the cache**: Store::FastMmap sets no cache
//!   expiry (and Catalyst does not purge this store), so an abandoned session stays until it
//!   is loaded (then deleted) or evicted from its page by newer entries.
//! - **The expiry moves on every request that sends the session cookie**, as in Catalyst:
//!   in this mode [`SessionStore::finish`] loads a session the request never used (with
//!   `expiry_threshold`, only one near its end is rewritten).
//! - **Perl objects are kept.** A blessed value reads as its data; an object frozen by its
//!   class's `STORABLE_freeze` hook (DateTime, DBIx::Class rows) as `{"class", "frozen"}`. A
//!   save rewrites only the keys the Rust side changed; the others keep their Perl values,
//!   objects included, byte for byte. A key the Rust side sets is plain data. Catalyst's other `__` keys (`__expire_keys`, an authentication plugin's `__user`) are
//!   kept as they are and show among the session's keys; the Rust side does not drop the
//!   keys that `__expire_keys` (Catalyst's `session_expire_key`) says have expired — the next
//!   Perl request that loads the session does. Whatever else Perl cannot have
//!   written — bytes that are not Storable, a session that is not a hash, a time that is not a
//!   number — is [`Error::BadRecord`], never a panic.
//! - Catalyst's absolute `lifetime`, `idle_timeout`, `bind_*` and `key_prefix` options do not
//!   apply: [`CatalystConfig`] has Catalyst's own, and setting the native ones is an error.
//! - **Let the file exist before Perl workers start.** Cache::FastMmap processes that race
//!   to create a missing file (Starman's workers each open it at startup) can end up on
//!   different files; a file this store creates is built aside and linked into place, so
//!   opening the store once first is enough.

#![forbid(unsafe_code)]
// The Catalyst mode's items exist with the feature `perl` only; without it, the links to them
// in these docs have nothing to point at (docs.rs builds with every feature).
#![cfg_attr(not(feature = "perl"), allow(rustdoc::broken_intra_doc_links))]

#[cfg(feature = "perl")]
mod catalyst_record;
mod cookie;
mod cycle;
mod data;
mod error;
mod events;
mod html;
mod id;
mod record;
mod sessions;
mod uri;

pub use self::cookie::{CookieConfig, DEFAULT_COOKIE_NAME, SameSite, Secure};
#[cfg(feature = "perl")]
pub use catalyst_record::{
    CATALYST_DEFAULT_EXPIRES, CATALYST_DEFAULT_NUM_PAGES, CATALYST_DEFAULT_PAGE_SIZE,
    CatalystConfig,
};
pub use cycle::{Finished, IdSource, Request, Response, ResponseHead, Visit};
pub use data::{NewReason, Origin, Session};
pub use error::{Error, Result};
pub use html::{HTML_MEMORY_LIMIT, PageRewrite, PageStream};
pub use id::{
    CATALYST_ID_BYTES, CATALYST_ID_LEN, ID_BYTES, ID_LEN, IdFormat, InvalidId, SessionId,
};
pub use record::{MAX_BOUND_USER_AGENT, RECORD_VERSION};
pub use sessions::{
    Client, DEFAULT_KEY_PREFIX, DEFAULT_LIFETIME, Saved, SessionStore, SessionStoreBuilder,
};
pub use uri::{
    DEFAULT_PARAM, DEFAULT_SKIP_EXTENSIONS, Extracted, PATH_MARKER, UrlRewriter, UrlStyle,
};
