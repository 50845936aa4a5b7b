//! The request cycle: what a web framework does around each request.
//! [`SessionStore::begin`] finds the id (cookie first, then URL) and takes it out of the URL,
//! without touching the cache; the session is loaded when the request first uses it
//! ([`Visit::session`]), and its flash values are taken when first read
//! ([`Visit::get_flash`]). [`SessionStore::finish`] saves it, sets or deletes the cookie,
//! and — for a client that sent no cookie, when URL ids are on — puts the id into the
//! redirect target and the links of an HTML body. It speaks `http` types
//! ([`SessionStore::begin_http`], [`SessionStore::finish_http`]: a URI and headers in,
//! headers out), as the tower layer in `fastmmap::web` uses it; [`Request`] and [`Response`]
//! are a thin string adapter for frameworks without `http`.

use std::net::IpAddr;

use cookie::Cookie;
use http::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE, USER_AGENT};
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use url::Url;

use crate::session::data::Session;
use crate::session::data::{NewReason, State, from_unix_secs};
use crate::session::error::{Error, Result};
use crate::session::html::PageRewrite;
use crate::session::id::{InvalidId, SessionId};
use crate::session::sessions::{Client, Saved, SessionStore};
use crate::session::uri::UrlStyle;

/// The parts of an incoming request the session layer needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Request<'a> {
    /// The path, as received (percent-encoded).
    pub path: &'a str,
    /// The query (after `?`), as received.
    pub query: Option<&'a str>,
    /// The `Cookie` header (several joined with `"; "`).
    pub cookie: Option<&'a str>,
    /// The client, for binding.
    pub client: Client<'a>,
    /// Whether the request came over HTTPS (for [`Secure::IfHttps`](crate::session::Secure)).
    pub https: bool,
}

impl<'a> Request<'a> {
    /// A request for `target`, the path and query as in the request line (`/a/b?x=1`).
    pub fn new(target: &'a str) -> Request<'a> {
        let target = target.split_once('#').map_or(target, |(t, _)| t);
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        Request {
            path,
            query,
            cookie: None,
            client: Client::default(),
            https: false,
        }
    }

    /// With a `Cookie` header.
    pub fn cookie(mut self, header: &'a str) -> Self {
        self.cookie = Some(header);
        self
    }

    /// With the client's address and user agent.
    pub fn client(mut self, client: Client<'a>) -> Self {
        self.client = client;
        self
    }

    /// Whether it came over HTTPS (default no).
    pub fn https(mut self, yes: bool) -> Self {
        self.https = yes;
        self
    }
}

/// Where the id of a request came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdSource {
    /// The request carried no id.
    None,
    /// The session cookie.
    Cookie,
    /// The URL path (`/-/ID`).
    Path,
    /// The URL query (`sid=ID`).
    Query,
}

/// One request's session, loaded when first used, with what [`SessionStore::finish`] needs
/// to know about the request.
///
/// A request that never calls [`session`](Self::session) (or the methods that use it) never
/// touches the cache: it loads nothing, writes nothing and consumes no flash value.
#[derive(Clone, Debug)]
pub struct Visit {
    store: SessionStore,
    session: Option<Session>,
    presented: Option<std::result::Result<SessionId, InvalidId>>,
    address: Option<IpAddr>,
    user_agent: Option<String>,
    path: String,
    query: Option<String>,
    source: IdSource,
    cookie_id: Option<SessionId>,
    cookie_sent: bool,
    https: bool,
    document: Option<Url>,
    expires_at_start: u64,
}

impl Visit {
    /// The path without any session id: what the application should route on.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The request query without any session id parameter.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// Where the id came from (whether or not it names a live session).
    pub fn source(&self) -> IdSource {
        self.source
    }

    /// Whether the client sent the session cookie (any value). Such a client gets no ids in
    /// URLs.
    pub fn cookie_sent(&self) -> bool {
        self.cookie_sent
    }

    /// Whether the request came over HTTPS.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// Whether the session has been loaded.
    pub fn is_loaded(&self) -> bool {
        self.session.is_some()
    }

    /// The session if it has been loaded, without loading it.
    pub fn loaded(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// Whether [`SessionStore::finish_http`], given a response with these `headers`, would
    /// reach the store: the session was loaded (it is saved), or `finish` loads it (an id
    /// that came in the URL, checked before it goes into an HTML page's links or a
    /// `Location`; a Catalyst session, extended whenever its cookie comes). When it says
    /// no, `finish_http` touches nothing but `headers` and cannot block, so an integration
    /// that moves store calls off its async threads may call it in place (a static asset).
    pub fn needs_store(&self, headers: &HeaderMap) -> bool {
        self.needs_store_for(&ResponseHead::read(headers))
    }

    /// [`needs_store`](Self::needs_store), for a response head already read (an integration
    /// that then finishes with [`SessionStore::finish_http_with`] reads it once).
    pub fn needs_store_for(&self, head: &ResponseHead) -> bool {
        self.is_loaded() || self.must_load(head.html, head.location.is_some())
    }

    /// Whether `finish` loads a session that was never loaded, for a response that is
    /// (`html`) a page whose links get ids, or that has a `location`.
    fn must_load(&self, html: bool, location: bool) -> bool {
        if self.is_loaded() {
            return false;
        }
        let came_by_url = matches!(self.source, IdSource::Path | IdSource::Query)
            && matches!(self.presented, Some(Ok(_)));
        // Catalyst extends a session on every request that sends its cookie, used or not
        // (and sends the cookie again with the new expiry): so does its mode here.
        (came_by_url && !self.cookie_sent && (html || location))
            || (self.cookie_id.is_some() && self.store.is_catalyst())
    }

    /// The session, loaded on first use: the one the presented id names, or a new one (see
    /// [`SessionStore::load`]). Its flash values stay in the store until read with
    /// [`get_flash`](Self::get_flash) ([`SessionStore::load_leaving_flash`]).
    ///
    /// # Errors
    /// As [`SessionStore::load`]; the next call tries again.
    pub fn session(&mut self) -> Result<&mut Session> {
        let session = match self.session.take() {
            Some(session) => session,
            None => {
                let client = Client {
                    address: self.address,
                    user_agent: self.user_agent.as_deref(),
                };
                let session = match &self.presented {
                    None => self.store.load_leaving_flash(None, &client)?,
                    Some(Err(e)) => self.store.fresh(NewReason::Malformed(*e), &client)?,
                    Some(Ok(id)) => self.store.load_leaving_flash(Some(id), &client)?,
                };
                self.expires_at_start = session.times.expires;
                session
            }
        };
        Ok(self.session.insert(session))
    }

    /// The flash value under `key` that this session received: the first call takes all of
    /// the session's flash values out of the store at once ([`SessionStore::take_flash`]),
    /// so they are consumed by the request that reads them, and only by it (as in Catalyst).
    /// [`Session::keep_flash`] passes one on to the next request.
    ///
    /// # Errors
    /// As [`session`](Self::session) and [`SessionStore::take_flash`];
    /// [`Error::Deserialize`] if the value is not a `T`.
    pub fn get_flash<T: serde::de::DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>> {
        let store = self.store.clone();
        let session = self.session()?;
        store.take_flash(session)?;
        session.get_flash(key)
    }

    /// An atomic read-modify-write of the stored session ([`SessionStore::update`]): `f`
    /// runs under the cache's page lock on the session as stored now, so concurrent
    /// requests in any process never lose each other's changes (a counter). This request's
    /// view of the session then shows the result (its own unsaved changes stay on top).
    ///
    /// A session not stored yet has no concurrent users: `f` runs on it directly, and the
    /// save at [`finish`](SessionStore::finish) writes it. A session that was deleted
    /// meanwhile (a logout in another request) is replaced by a new one, as a load would
    /// have, and `f` runs on that.
    ///
    /// # Errors
    /// As [`SessionStore::update`]; on an error nothing was written.
    pub fn update<R>(&mut self, f: impl FnOnce(&mut Session) -> R) -> Result<R> {
        let store = self.store.clone();
        let client_address = self.address;
        let client_agent = self.user_agent.clone();
        let session = self.session()?;
        if session.is_new() || session.is_invalidated() {
            return Ok(f(session));
        }
        // `f` runs in one of two places: under the lock if the session is stored, or on a new
        // session if it is gone; the Option hands the FnOnce to whichever runs.
        let mut f = Some(f);
        let id = session.id;
        let outcome = store.update(&id, |stored| {
            let f = f.take().expect("update calls its closure once");
            let result = f(stored);
            (
                result,
                stored.data.clone(),
                stored.times,
                stored.invalidated,
            )
        })?;
        match outcome {
            Some((result, data, times, invalidated)) => {
                if !session.cleared {
                    let ours = &session.changes;
                    session
                        .data
                        .retain(|k, _| ours.contains_key(k) || data.contains_key(k));
                    for (k, v) in data {
                        if !ours.contains_key(&k) {
                            session.data.insert(k, v);
                        }
                    }
                }
                session.times.updated = times.updated;
                if invalidated {
                    session.invalidated = true;
                }
                Ok(result)
            }
            None => {
                let client = Client {
                    address: client_address,
                    user_agent: client_agent.as_deref(),
                };
                *session = store.fresh(NewReason::Unknown, &client)?;
                let f = f.take().expect("a gone session never ran the closure");
                Ok(f(session))
            }
        }
    }

    /// Moves the session to a new id ([`SessionStore::change_id`]; do it at login). Returns
    /// the old id.
    ///
    /// # Errors
    /// As [`SessionStore::change_id`].
    pub fn change_id(&mut self) -> Result<SessionId> {
        let store = self.store.clone();
        store.change_id(self.session()?)
    }
}

/// What the end of a request reads from a response's `http` head: whether its body is a
/// page whose links get the id (its `Content-Type`), and its `Location`. Read once
/// ([`ResponseHead::read`]) for both [`Visit::needs_store_for`] and
/// [`SessionStore::finish_http_with`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResponseHead {
    /// `text/html`, with no charset or a UTF-8 one ([`Response::is_html`]).
    pub html: bool,
    /// The `Location` header, if it is text.
    pub location: Option<String>,
}

impl ResponseHead {
    /// Reads `Content-Type` and `Location` from `headers`.
    pub fn read(headers: &HeaderMap) -> ResponseHead {
        ResponseHead {
            html: is_html_head(headers),
            location: headers
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }
    }
}

/// The parts of a response the session layer reads and changes.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Location` header; [`SessionStore::finish`] may add the id.
    pub location: Option<String>,
    /// The `Content-Type` header: bodies of `text/html` (in UTF-8, or with no charset) get
    /// their links rewritten ([`is_html`](Self::is_html) says why no other type does).
    pub content_type: Option<String>,
    /// The body.
    pub body: Vec<u8>,
    /// Set by [`SessionStore::finish`]: a `Set-Cookie` header to send, if any (its
    /// `Display` is the header value).
    pub set_cookie: Option<Cookie<'static>>,
}

impl Response {
    /// A response with this status and nothing else.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            ..Response::default()
        }
    }

    /// A `200` HTML page.
    pub fn html(body: impl Into<Vec<u8>>) -> Response {
        Response {
            status: 200,
            content_type: Some("text/html; charset=utf-8".to_owned()),
            body: body.into(),
            ..Response::default()
        }
    }

    /// A redirect (`status` should be 3xx) to `location`.
    pub fn redirect(status: u16, location: &str) -> Response {
        Response {
            status,
            location: Some(location.to_owned()),
            ..Response::default()
        }
    }

    /// With a `Content-Type`.
    pub fn content_type(mut self, content_type: &str) -> Self {
        self.content_type = Some(content_type.to_owned());
        self
    }

    /// Whether the body is an HTML page whose links get ids: `text/html`, in UTF-8 or with
    /// no charset named.
    ///
    /// Not `application/xhtml+xml`: browsers parse it as XML, where the contents of `<style>`,
    /// `<textarea>` or `<script>` are markup and CDATA sections are text anywhere — an HTML
    /// parser reads such a page otherwise (a `<base>` it takes for text sends the links
    /// elsewhere), so it is left alone. Nor a page in another charset (`utf-16`, `iso-2022-jp`
    /// …), which a browser may decode into other tags than the UTF-8 rewriter sees.
    pub fn is_html(&self) -> bool {
        self.content_type
            .as_deref()
            .is_some_and(rewritable_content_type)
    }
}

/// The labels of UTF-8 (WHATWG Encoding), as a `charset` parameter may name it.
const UTF8_LABELS: &[&str] = &[
    "unicode-1-1-utf-8",
    "unicode11utf8",
    "unicode20utf8",
    "utf-8",
    "utf8",
    "x-unicode20utf8",
];

/// `text/html`, with no `charset` parameter or a UTF-8 one.
/// `text` as a header value, or why it cannot be one.
fn header_value(text: &str) -> std::result::Result<HeaderValue, &'static str> {
    HeaderValue::from_str(text)
        .map_err(|_| "not a valid header value (it holds a control character)")
}

/// Whether a response with these `headers` is a page whose links get ids.
fn is_html_head(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(rewritable_content_type)
}

fn rewritable_content_type(content_type: &str) -> bool {
    let mut parts = content_type.split(';');
    let mime = parts.next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("text/html")
        && parts.all(|param| {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            if !name.trim().eq_ignore_ascii_case("charset") {
                return true;
            }
            let value = value.trim().trim_matches('"').trim();
            UTF8_LABELS.iter().any(|l| l.eq_ignore_ascii_case(value))
        })
}

/// What [`SessionStore::finish`] did.
#[derive(Debug)]
#[non_exhaustive]
pub struct Finished {
    /// What saving the session did ([`Saved::Unchanged`] if it was never loaded).
    pub saved: Saved,
    /// Why the HTML body was not rewritten, if it was not: it was left as it was, without
    /// ids — also on purpose, for a page a browser may read otherwise than the rewriter
    /// ([`UrlRewriter::rewrite_html`](crate::session::UrlRewriter::rewrite_html) says when).
    pub body_error: Option<Error>,
    /// For an HTML response whose links get the id: how to rewrite them. `finish` has
    /// rewritten [`Response::body`] with it; an integration that streams the body instead
    /// (and handed `finish` an empty one) rewrites the real body with it.
    pub page: Option<PageRewrite>,
}

impl SessionStore {
    /// Starts a request: finds the session id — a well-formed id in the cookie first, else
    /// one in the URL (when URL ids are on) — and takes it out of the URL. Touches nothing:
    /// the session is loaded when the request first uses it ([`Visit::session`]). A
    /// malformed id is never looked up; an id with no live session gives a new session with a
    /// new id (see [`Session::origin`]).
    ///
    /// This is the string adapter, for frameworks without `http` types;
    /// [`begin_http`](Self::begin_http) takes a request's `http` head.
    pub fn begin(&self, request: &Request<'_>) -> Visit {
        let cookie = request
            .cookie
            .and_then(|h| self.inner.cookie.find_id_as([h], self.id_format()));
        self.start(
            request.path,
            request.query,
            cookie,
            &request.client,
            request.https,
        )
    }

    /// [`begin`](Self::begin) for a request's `http` head: its URI, and its headers — every
    /// `Cookie` header as received (none is joined or re-split), and the `User-Agent`. The
    /// client's `address` (for [binding](crate::session::SessionStoreBuilder::bind_address))
    /// and whether the request came over HTTPS are the server's to say. Header bytes that
    /// are not UTF-8 read as U+FFFD: a cookie whose value is not ASCII (browsers send such
    /// values raw) leaves the session cookie beside it in the same header readable, as it is
    /// to Catalyst, which splits the header on `;` as bytes.
    pub fn begin_http(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        address: Option<IpAddr>,
        https: bool,
    ) -> Visit {
        // Borrowed unless a header holds bytes that are not UTF-8: no copy on the common path.
        fn text(v: &HeaderValue) -> std::borrow::Cow<'_, str> {
            String::from_utf8_lossy(v.as_bytes())
        }
        let cookies: Vec<_> = headers.get_all(COOKIE).iter().map(text).collect();
        let cookie = self
            .inner
            .cookie
            .find_id_as(cookies.iter().map(|c| c.as_ref()), self.id_format());
        let user_agent = headers.get(USER_AGENT).map(text);
        let client = Client {
            address,
            user_agent: user_agent.as_deref(),
        };
        let (path, query) = uri
            .path_and_query()
            .map_or(("/", None), |pq| (pq.path(), pq.query()));
        self.start(path, query, cookie, &client, https)
    }

    /// Starts a request for `path` and `query` with the id found in its cookie, if any.
    fn start(
        &self,
        path: &str,
        query: Option<&str>,
        cookie: Option<std::result::Result<SessionId, InvalidId>>,
        client: &Client<'_>,
        https: bool,
    ) -> Visit {
        let format = self.id_format();
        let cookie_sent = cookie.is_some();
        let (path, query, from_url, url_source, document) = match &self.inner.urls {
            Some(urls) => {
                let e = urls.extract_as(path, query, format);
                let document = urls.document_url(&e.path, e.query.as_deref());
                let source = match urls.url_style() {
                    UrlStyle::Path => IdSource::Path,
                    UrlStyle::Query => IdSource::Query,
                };
                (e.path, e.query, e.id, source, Some(document))
            }
            None => (
                path.to_owned(),
                query.map(str::to_owned),
                None,
                IdSource::None,
                None,
            ),
        };
        let cookie_id = match cookie {
            Some(Ok(id)) => Some(id),
            _ => None,
        };
        let (presented, source) = match (cookie, from_url) {
            (Some(Ok(id)), _) => (Some(Ok(id)), IdSource::Cookie),
            (_, Some(Ok(id))) => (Some(Ok(id)), url_source),
            (Some(Err(e)), _) => (Some(Err(e)), IdSource::Cookie),
            (None, Some(Err(e))) => (Some(Err(e)), url_source),
            (None, None) => (None, IdSource::None),
        };
        Visit {
            store: self.clone(),
            session: None,
            presented,
            address: client.address,
            user_agent: client.user_agent.map(str::to_owned),
            path,
            query,
            source,
            cookie_id,
            cookie_sent,
            https,
            document,
            expires_at_start: 0,
        }
    }

    /// Ends a request: [`save`](Self::save)s the session if it was loaded, then fills in
    /// `response`:
    ///
    /// - `set_cookie`: the cookie, when the client does not have it with this id (a new
    ///   session, a [changed id](Self::change_id), a client that came by URL) or, for a
    ///   persistent cookie, when the session's expiry moved; a deletion cookie when the
    ///   client sent a session cookie but has no stored session (invalidated, expired,
    ///   unknown, or not stored because it held nothing). For a session never loaded,
    ///   nothing, except the deletion cookie for a cookie that holds no well-formed id. (In
    ///   Catalyst mode a request that sends a well-formed session cookie always loads the
    ///   session here, as Catalyst extends it on every such request.)
    /// - with URL ids on, for a client that sent no session cookie and has a stored
    ///   session: the id goes into `location` (3xx only) and into the links of an HTML body
    ///   (see [`UrlRewriter`](crate::session::UrlRewriter)). A client that came by a URL id
    ///   to a page that never used the session keeps it in its links too: the id is checked
    ///   (loaded, flash values left alone) before it is written into them.
    ///
    /// An HTML body that cannot be rewritten, or that a browser may read otherwise than the
    /// rewriter, is left as it was, without ids; [`Finished::body_error`] says why.
    ///
    /// This is the string adapter, for frameworks without `http` types;
    /// [`finish_http`](Self::finish_http) works on a response's `http` head.
    ///
    /// # Errors
    /// As [`save`](Self::save); the response is then left untouched.
    pub fn finish(&self, visit: &mut Visit, response: &mut Response) -> Result<Finished> {
        let mut head = Head {
            status: response.status,
            location: response.location.clone(),
            html: response.is_html(),
            body: &mut response.body,
            set_cookie: None,
        };
        let finished = self.conclude(visit, &mut head)?;
        let Head {
            location,
            set_cookie,
            ..
        } = head;
        response.location = location;
        response.set_cookie = set_cookie;
        Ok(finished)
    }

    /// [`finish`](Self::finish) for a response's `http` head: reads its `status`, `Location`
    /// and `Content-Type`, and fills in `headers` — a new `Location` (the id added), a
    /// `Set-Cookie` appended. The body is the caller's: for an HTML body whose links get the
    /// id, [`Finished::page`] rewrites it, whole or as it streams (the tower layer in
    /// `fastmmap::web` does both).
    ///
    /// # Errors
    /// As [`save`](Self::save); `headers` are then left untouched. After a save,
    /// [`Error::InvalidUrl`] if the `Location` with the id, or [`Error::InvalidOptions`] if
    /// the cookie, cannot be written as a header value (neither happens with the options the
    /// builders accept); `headers` are then left untouched too.
    pub fn finish_http(
        &self,
        visit: &mut Visit,
        status: StatusCode,
        headers: &mut HeaderMap,
    ) -> Result<Finished> {
        let read = ResponseHead::read(headers);
        self.finish_http_with(visit, status, read, headers)
    }

    /// [`finish_http`](Self::finish_http), with `Content-Type` and `Location` already read
    /// from `headers` as `read` (by [`ResponseHead::read`], for
    /// [`Visit::needs_store_for`]).
    ///
    /// # Errors
    /// As [`finish_http`](Self::finish_http).
    pub fn finish_http_with(
        &self,
        visit: &mut Visit,
        status: StatusCode,
        read: ResponseHead,
        headers: &mut HeaderMap,
    ) -> Result<Finished> {
        let mut body = Vec::new();
        let mut head = Head {
            status: status.as_u16(),
            location: read.location,
            html: read.html,
            body: &mut body,
            set_cookie: None,
        };
        let location = head.location.clone();
        let finished = self.conclude(visit, &mut head)?;
        let new_location = match head.location.as_deref() {
            Some(new) if head.location != location => {
                Some(header_value(new).map_err(|e| Error::InvalidUrl {
                    reason: format!("the Location with the session id is {e}"),
                })?)
            }
            _ => None,
        };
        let cookie = match &head.set_cookie {
            Some(cookie) => {
                Some(
                    header_value(&cookie.to_string()).map_err(|e| Error::InvalidOptions {
                        reason: format!("the session cookie is {e}"),
                    })?,
                )
            }
            None => None,
        };
        if let Some(new) = new_location {
            headers.insert(LOCATION, new);
        }
        if let Some(value) = cookie {
            headers.append(SET_COOKIE, value);
        }
        Ok(finished)
    }

    /// What [`finish`](Self::finish) and [`finish_http`](Self::finish_http) do, on the
    /// response head as the cycle sees it.
    fn conclude(&self, visit: &mut Visit, head: &mut Head<'_>) -> Result<Finished> {
        if visit.must_load(head.html, head.location.is_some()) {
            visit.session()?;
        }
        let expires_at_start = visit.expires_at_start;
        let https = visit.https;
        let Some(session) = visit.session.as_mut() else {
            // A cookie that holds no well-formed id is known dead without a load.
            if visit.cookie_sent && visit.cookie_id.is_none() {
                head.set_cookie = Some(self.inner.cookie.removal(https));
            }
            return Ok(Finished {
                saved: Saved::Unchanged,
                body_error: None,
                page: None,
            });
        };
        let saved = self.save(session)?;
        let session = &*session;
        let live = session.state == State::Stored && !session.invalidated;
        let cookie = &self.inner.cookie;
        head.set_cookie = if live {
            let moved = cookie.is_persistent()
                && (session.extended || session.times.expires != expires_at_start);
            (visit.cookie_id != Some(session.id) || moved).then(|| {
                // Whole seconds, like the session's own times.
                cookie.cookie(
                    &session.id,
                    Some(session.expires_at()),
                    from_unix_secs(self.now()),
                    https,
                )
            })
        } else if visit.cookie_sent {
            Some(cookie.removal(https))
        } else {
            None
        };
        let mut body_error = None;
        let mut page = None;
        if live
            && !visit.cookie_sent
            && let (Some(urls), Some(document)) = (&self.inner.urls, &visit.document)
        {
            if let Some(location) = head.location.as_deref()
                && let Some(new) =
                    urls.rewrite_location(head.status, location, document, &session.id)
            {
                head.location = Some(new);
            }
            if head.html {
                let rewrite = PageRewrite::new(urls.clone(), document.clone(), session.id);
                if !head.body.is_empty() {
                    match rewrite.rewrite(head.body) {
                        Ok(body) => *head.body = body,
                        Err(e) => body_error = Some(e),
                    }
                }
                page = Some(rewrite);
            }
        }
        Ok(Finished {
            saved,
            body_error,
            page,
        })
    }
}

/// A response as the request cycle reads and changes it, whatever types it came in.
struct Head<'r> {
    status: u16,
    /// Rewritten when the id goes into it.
    location: Option<String>,
    /// Whether the body is a page whose links get ids ([`Response::is_html`]).
    html: bool,
    /// Rewritten in place if not empty (an integration that streams passes an empty one).
    body: &'r mut Vec<u8>,
    /// The `Set-Cookie` to send, if any.
    set_cookie: Option<Cookie<'static>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_targets_split() {
        let r = Request::new("/a/b?x=1&y#frag");
        assert_eq!((r.path, r.query), ("/a/b", Some("x=1&y")));
        let r = Request::new("/");
        assert_eq!((r.path, r.query), ("/", None));
        let r = Request::new("/a?");
        assert_eq!((r.path, r.query), ("/a", Some("")));
    }

    /// A store in `dir`, and the `name=id` pair of the cookie a first request that stored a
    /// session (`n` = 1) was given, answered with `status` and `headers`.
    fn store_with_a_session(
        dir: &tempfile::TempDir,
        uri: &Uri,
        status: StatusCode,
        mut headers: HeaderMap,
    ) -> (SessionStore, String) {
        let store = SessionStore::builder()
            .path(dir.path().join("sessions"))
            .build()
            .unwrap();
        let mut visit = store.begin_http(uri, &HeaderMap::new(), None, false);
        visit.session().unwrap().insert("n", &1).unwrap();
        let finished = store.finish_http(&mut visit, status, &mut headers).unwrap();
        assert_eq!(finished.saved, Saved::Written);
        let set = headers[SET_COOKIE].to_str().unwrap();
        assert!(set.contains("HttpOnly"), "{set}");
        (store, set.split(';').next().unwrap().to_owned())
    }

    #[test]
    fn http_heads_in_and_out() {
        let dir = tempfile::tempdir().unwrap();
        let uri: Uri = "/cart?x=1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(LOCATION, HeaderValue::from_static("/next"));
        let (store, pair) = store_with_a_session(&dir, &uri, StatusCode::SEE_OTHER, headers);
        let visit = store.begin_http(&uri, &HeaderMap::new(), None, false);
        assert_eq!((visit.path(), visit.query()), ("/cart", Some("x=1")));

        // The cookie comes back in the second of two `Cookie` headers.
        let mut request = HeaderMap::new();
        request.append(COOKIE, HeaderValue::from_static("theme=dark"));
        request.append(COOKIE, HeaderValue::from_str(&pair).unwrap());
        request.insert(USER_AGENT, HeaderValue::from_static("test/1"));
        let mut visit = store.begin_http(&uri, &request, None, false);
        assert_eq!(visit.source(), IdSource::Cookie);
        assert!(visit.cookie_sent());
        assert_eq!(visit.session().unwrap().get::<u32>("n").unwrap(), Some(1));
        let mut headers = HeaderMap::new();
        store
            .finish_http(&mut visit, StatusCode::OK, &mut headers)
            .unwrap();
        assert!(
            headers.get(SET_COOKIE).is_none(),
            "the client has the cookie"
        );
    }

    /// A cookie with a non-ASCII value (sent raw, as browsers do) in the same header as the
    /// session cookie: the session is found all the same, and no new cookie is set.
    #[test]
    fn a_non_ascii_cookie_beside_the_session_cookie_hides_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let uri: Uri = "/".parse().unwrap();
        let (store, pair) = store_with_a_session(&dir, &uri, StatusCode::OK, HeaderMap::new());
        for raw in [
            format!("{pair}; name=Jos\u{e9}").into_bytes(),
            [
                b"name=Jos".as_slice(),
                &[0xc3, 0xa9],
                format!("; {pair}").as_bytes(),
            ]
            .concat(),
            [b"x=\xff; ".as_slice(), pair.as_bytes()].concat(),
        ] {
            let mut request = HeaderMap::new();
            request.append(COOKIE, HeaderValue::from_bytes(&raw).unwrap());
            request.insert(
                USER_AGENT,
                HeaderValue::from_bytes(b"caf\xc3\xa9/1").unwrap(),
            );
            let mut visit = store.begin_http(&uri, &request, None, false);
            assert_eq!(visit.source(), IdSource::Cookie, "{raw:?}");
            assert_eq!(
                visit.session().unwrap().get::<u32>("n").unwrap(),
                Some(1),
                "{raw:?}"
            );
            let mut headers = HeaderMap::new();
            store
                .finish_http(&mut visit, StatusCode::OK, &mut headers)
                .unwrap();
            assert!(
                headers.get(SET_COOKIE).is_none(),
                "a new cookie for {raw:?}"
            );
        }
    }

    #[test]
    fn header_values_are_checked_not_dropped() {
        assert_eq!(header_value("/next?sid=x").unwrap(), "/next?sid=x");
        let e = header_value("/next\r\nSet-Cookie: x=1").unwrap_err();
        assert!(e.contains("not a valid header value"), "{e}");
    }

    #[test]
    fn what_finish_needs_of_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::builder()
            .path(dir.path().join("sessions"))
            .urls(crate::session::UrlRewriter::new("http://app.test/").unwrap())
            .build()
            .unwrap();
        let head = |content_type: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            h
        };
        let (html, css) = (head("text/html"), head("text/css"));
        let mut visit = store.begin_http(&"/a".parse().unwrap(), &HeaderMap::new(), None, false);
        assert!(!visit.needs_store(&html), "nothing to load or save");
        visit.session().unwrap().insert("n", &1).unwrap();
        assert!(visit.needs_store(&css), "a loaded session is saved");
        store
            .finish_http(&mut visit, StatusCode::OK, &mut css.clone())
            .unwrap();
        let id = *visit.loaded().unwrap().id();

        // A client that came by a URL id: checked before it goes into a page's links or a
        // `Location`, not for a style sheet.
        let uri: Uri = format!("/a/-/{id}").parse().unwrap();
        let visit = store.begin_http(&uri, &HeaderMap::new(), None, false);
        assert_eq!(visit.source(), IdSource::Path);
        assert!(visit.needs_store(&html));
        assert!(!visit.needs_store(&css));
        let mut redirect = css.clone();
        redirect.insert(LOCATION, HeaderValue::from_static("/next"));
        assert!(visit.needs_store(&redirect));
    }

    #[test]
    fn html_content_types() {
        let mut r = Response::html("x");
        assert!(r.is_html());
        for rewritten in [
            "text/html",
            "TEXT/HTML ; Charset=\"UTF-8\"",
            "text/html; charset=utf8",
            "text/html;foo=bar",
        ] {
            r.content_type = Some(rewritten.into());
            assert!(r.is_html(), "{rewritten}");
        }
        // XHTML is XML to browsers (markup inside <style>, CDATA anywhere); other charsets
        // may put other tags where the UTF-8 rewriter sees text.
        for left_alone in [
            "application/xhtml+xml",
            "Application/XHTML+xml; charset=utf-8",
            "text/html; charset=utf-16",
            "text/html; charset=UTF-16LE",
            "text/html; charset=iso-2022-jp",
            "text/html; charset=windows-1252",
            "text/html; charset=",
        ] {
            r.content_type = Some(left_alone.into());
            assert!(!r.is_html(), "{left_alone}");
        }
        r.content_type = Some("text/html".into());
        assert!(r.is_html());
        r.content_type = Some("text/htmlx".into());
        assert!(!r.is_html());
        r.content_type = Some("application/json".into());
        assert!(!r.is_html());
        r.content_type = None;
        assert!(!r.is_html());
    }
}
