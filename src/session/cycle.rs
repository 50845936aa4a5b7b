//! The request cycle: what a web framework does around each request, in two calls.
//! [`SessionStore::begin`] finds the id (cookie first, then URL), takes it out of the URL and
//! loads the session; [`SessionStore::finish`] saves it, sets or deletes the cookie, and —
//! for a client that sent no cookie, when URL ids are on — puts the id into the redirect
//! target and the links of an HTML body. Strings and bytes in, strings and bytes out: a
//! framework integration only copies headers.

use url::Url;

use crate::session::data::Session;
use crate::session::data::{NewReason, State, from_unix_secs};
use crate::session::error::{Error, Result};
use crate::session::id::{InvalidId, SessionId};
use crate::session::store::{Client, Saved, SessionStore};
use crate::session::uri::UrlStyle;

/// The parts of an incoming request the session layer needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request<'a> {
    /// The path, as received (percent-encoded).
    pub path: &'a str,
    /// The query (after `?`), as received.
    pub query: Option<&'a str>,
    /// The `Cookie` header (several joined with `"; "`).
    pub cookie: Option<&'a str>,
    /// The client, for binding.
    pub client: Client<'a>,
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

/// One request's session, with what [`SessionStore::finish`] needs to know about the request.
#[derive(Clone, Debug)]
pub struct Visit {
    /// The session: read and change it while handling the request.
    pub session: Session,
    path: String,
    query: Option<String>,
    source: IdSource,
    cookie_id: Option<SessionId>,
    cookie_sent: bool,
    document: Option<Url>,
    expires_at_start: u64,
}

impl Visit {
    /// The request path without any session id: what the application should route on.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The request query without any session id parameter.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// Where the id came from (whether or not it named a live session).
    pub fn source(&self) -> IdSource {
        self.source
    }

    /// Whether the client sent the session cookie (any value). Such a client gets no ids in
    /// URLs.
    pub fn cookie_sent(&self) -> bool {
        self.cookie_sent
    }
}

/// The parts of a response the session layer reads and changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Location` header; [`SessionStore::finish`] may add the id.
    pub location: Option<String>,
    /// The `Content-Type` header: bodies of `text/html` and `application/xhtml+xml` get
    /// their links rewritten.
    pub content_type: Option<String>,
    /// The body.
    pub body: Vec<u8>,
    /// Set by [`SessionStore::finish`]: a `Set-Cookie` header value to send, if any.
    pub set_cookie: Option<String>,
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

    fn is_html(&self) -> bool {
        self.content_type.as_deref().is_some_and(|ct| {
            let mime = ct.split(';').next().unwrap_or("").trim();
            mime.eq_ignore_ascii_case("text/html")
                || mime.eq_ignore_ascii_case("application/xhtml+xml")
        })
    }
}

/// What [`SessionStore::finish`] did.
#[derive(Debug)]
#[non_exhaustive]
pub struct Finished {
    /// What saving the session did.
    pub saved: Saved,
    /// Why the HTML body could not be rewritten, if it could not (it was sent as it was).
    pub body_error: Option<Error>,
}

impl SessionStore {
    /// Starts a request: finds the session id — a well-formed id in the cookie first, else
    /// one in the URL (when URL ids are on) — takes it out of the URL, and
    /// [`load`](Self::load)s the session. A malformed id is never looked up; an id with no
    /// live session gives a new session with a new id (see [`Session::origin`]).
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn begin(&self, request: &Request<'_>) -> Result<Visit> {
        let cookie = request.cookie.and_then(|h| self.inner.cookie.find_id(h));
        let cookie_sent = cookie.is_some();
        let (path, query, from_url, url_source, document) = match &self.inner.urls {
            Some(urls) => {
                let e = urls.extract(request.path, request.query);
                let document = urls.document_url(&e.path, e.query.as_deref());
                let source = match urls.url_style() {
                    UrlStyle::Path => IdSource::Path,
                    UrlStyle::Query => IdSource::Query,
                };
                (e.path, e.query, e.id, source, Some(document))
            }
            None => (
                request.path.to_owned(),
                request.query.map(str::to_owned),
                None,
                IdSource::None,
                None,
            ),
        };
        let cookie_id = match cookie {
            Some(Ok(id)) => Some(id),
            _ => None,
        };
        let (presented, source): (Option<std::result::Result<SessionId, InvalidId>>, IdSource) =
            match (cookie, from_url) {
                (Some(Ok(id)), _) => (Some(Ok(id)), IdSource::Cookie),
                (_, Some(Ok(id))) => (Some(Ok(id)), url_source),
                (Some(Err(e)), _) => (Some(Err(e)), IdSource::Cookie),
                (None, Some(Err(e))) => (Some(Err(e)), url_source),
                (None, None) => (None, IdSource::None),
            };
        let session = match presented {
            None => self.load(None, &request.client)?,
            Some(Err(e)) => self.fresh(NewReason::Malformed(e), &request.client)?,
            Some(Ok(id)) => self.load(Some(&id), &request.client)?,
        };
        Ok(Visit {
            expires_at_start: session.times.expires,
            session,
            path,
            query,
            source,
            cookie_id,
            cookie_sent,
            document,
        })
    }

    /// Ends a request: [`save`](Self::save)s the session, then fills in `response`:
    ///
    /// - `set_cookie`: the cookie, when the client does not have it with this id (a new
    ///   session, a [changed id](Self::change_id), a client that came by URL) or, for a
    ///   persistent cookie, when the session's expiry moved; a deletion cookie when the
    ///   client sent a session cookie but has no stored session (invalidated, expired,
    ///   unknown, or not stored because it held nothing).
    /// - with URL ids on, for a client that sent no session cookie and has a stored
    ///   session: the id goes into `location` (3xx only) and into the links of an HTML body
    ///   (see [`UrlRewriter`](crate::session::UrlRewriter)).
    ///
    /// An HTML body that cannot be rewritten is left as it was; [`Finished::body_error`]
    /// says why.
    ///
    /// # Errors
    /// As [`save`](Self::save); the response is then left untouched.
    pub fn finish(&self, visit: &mut Visit, response: &mut Response) -> Result<Finished> {
        let saved = self.save(&mut visit.session)?;
        let session = &visit.session;
        let live = session.state == State::Stored && !session.invalidated;
        let cookie = &self.inner.cookie;
        response.set_cookie = if live {
            let moved = cookie.is_persistent()
                && (session.extended || session.times.expires != visit.expires_at_start);
            (visit.cookie_id != Some(session.id) || moved).then(|| {
                // Whole seconds, like the session's own times.
                cookie.set_cookie(
                    &session.id,
                    Some(session.expires_at()),
                    from_unix_secs(self.now()),
                )
            })
        } else if visit.cookie_sent {
            Some(cookie.removal())
        } else {
            None
        };
        let mut body_error = None;
        if live
            && !visit.cookie_sent
            && let (Some(urls), Some(document)) = (&self.inner.urls, &visit.document)
        {
            if let Some(location) = response.location.as_deref()
                && let Some(new) =
                    urls.rewrite_location(response.status, location, document, &session.id)
            {
                response.location = Some(new);
            }
            if response.is_html() {
                match urls.rewrite_html(&response.body, document, &session.id) {
                    Ok(body) => response.body = body,
                    Err(e) => body_error = Some(e),
                }
            }
        }
        Ok(Finished { saved, body_error })
    }
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

    #[test]
    fn html_content_types() {
        let mut r = Response::html("x");
        assert!(r.is_html());
        r.content_type = Some("Application/XHTML+xml".into());
        assert!(r.is_html());
        r.content_type = Some("text/htmlx".into());
        assert!(!r.is_html());
        r.content_type = Some("application/json".into());
        assert!(!r.is_html());
        r.content_type = None;
        assert!(!r.is_html());
    }
}
