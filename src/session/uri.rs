//! Session ids in URLs, for clients without cookies: adding an id to a URL, finding it in an
//! incoming path or query, and rewriting redirect targets and links.
//!
//! Two styles. **Path** (as the original plugin did): the id is the last path segment after a
//! `-` segment, `/shop/cart` → `/shop/cart/-/ID`, `/shop/` → `/shop/-/ID`, `/` → `/-/ID`.
//! **Query**: `?sid=ID`, appended after any existing parameters.
//!
//! Only URLs under the application's base URL get an id: same scheme, host, port and
//! user-info, and a path at or below the base path. External URLs never do. Where a URL
//! goes is decided as a browser decides it (WHATWG URL parsing, by the `url` crate), and
//! the text written into a page or a `Location` is checked to go there too.

use std::borrow::Cow;

use url::{Position, Url};

use crate::session::error::{Error, Result};
use crate::session::id::{IdFormat, InvalidId, SessionId};

/// The path segment before the id in path style.
pub const PATH_MARKER: &str = "-";
/// The default query parameter in query style.
pub const DEFAULT_PARAM: &str = "sid";

/// File extensions of binary assets (images, fonts, audio, video, archives, documents,
/// executables) whose URLs never get an id: a browser fetches them without a session.
pub const DEFAULT_SKIP_EXTENSIONS: &[&str] = &[
    "7z", "apk", "avi", "avif", "bin", "bmp", "bz2", "dmg", "doc", "docx", "eot", "exe", "flac",
    "gif", "gz", "ico", "iso", "jpeg", "jpg", "m4a", "m4v", "mkv", "mov", "mp3", "mp4", "odt",
    "oga", "ogg", "ogv", "otf", "pdf", "png", "ppt", "pptx", "rar", "svg", "tar", "tgz", "tif",
    "tiff", "ttf", "wasm", "wav", "webm", "webp", "woff", "woff2", "xls", "xlsx", "xz", "zip",
    "zst",
];

/// Where the id goes in a URL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum UrlStyle {
    /// `/path/-/ID`, as the original plugin did (the default).
    #[default]
    Path,
    /// `?sid=ID` (the parameter name is configurable).
    Query,
}

/// An incoming request path and query with any session id taken out.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Extracted {
    /// The path without the id (what the application routes on).
    pub path: String,
    /// The query without the id parameter (`None` if nothing is left).
    pub query: Option<String>,
    /// The id found: `None` if the URL carries none, otherwise the id or why what was in
    /// its place is not one.
    pub id: Option<std::result::Result<SessionId, InvalidId>>,
}

/// A rewritten link.
pub(crate) struct Rewritten {
    /// The link to write.
    pub(crate) text: String,
    /// Whether it carries the id (otherwise it was only made absolute).
    pub(crate) with_id: bool,
}

/// How a link was written, so that a rewritten link keeps its form. Only the form: where a
/// link goes is decided by the `url` crate, and the text written is checked to go there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RefKind {
    /// `scheme:…`
    Absolute,
    /// `//host/…`
    SchemeRelative,
    /// `/path…`
    PathAbsolute,
    /// `path`, `../path`, `?query`
    Relative,
}

impl RefKind {
    fn of(reference: &str) -> RefKind {
        let b = reference.as_bytes();
        let is_slash = |c: Option<&u8>| matches!(c, Some(b'/' | b'\\'));
        let scheme_len = b
            .iter()
            .position(|&c| !(c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.')));
        match scheme_len {
            Some(n)
                if b.first().is_some_and(u8::is_ascii_alphabetic) && b.get(n) == Some(&b':') =>
            {
                RefKind::Absolute
            }
            _ if is_slash(b.first()) && is_slash(b.get(1)) => RefKind::SchemeRelative,
            _ if is_slash(b.first()) => RefKind::PathAbsolute,
            _ => RefKind::Relative,
        }
    }

    /// `url` written in this form (a relative one as an absolute path).
    fn write(self, url: &Url) -> String {
        match self {
            RefKind::Absolute => url.as_str().to_owned(),
            RefKind::SchemeRelative => url[Position::AfterScheme..]
                .trim_start_matches(':')
                .to_owned(),
            RefKind::PathAbsolute | RefKind::Relative => url[Position::BeforePath..].to_owned(),
        }
    }
}

/// Puts session ids into URLs and takes them out again, for clients without cookies.
///
/// Two styles ([`UrlStyle`]). **Path**, as the original plugin did: the id is the last path
/// segment, after a `-` segment — `/shop/cart` → `/shop/cart/-/ID`, `/shop/` →
/// `/shop/-/ID` (the slash is not doubled), `/` → `/-/ID`. **Query**: `?sid=ID`, appended
/// after any existing parameters.
///
/// When rewriting redirects and pages, only URLs under the application's base URL get an id:
/// same scheme, host (compared in its ASCII form, so IDNs match their punycode) and port, no
/// user-info, and a path at or below the base path, without encoded slashes or backslashes.
/// External URLs, URLs of binary assets (by extension, [`DEFAULT_SKIP_EXTENSIONS`]) and URLs
/// that already carry an id are left alone. URLs are resolved as browsers resolve them
/// (see [`rewrite_html`](Self::rewrite_html) for pages and their `<base>`). In path style,
/// relative links in a page are written as absolute paths (with or without an id), because
/// the browser resolves them against an address that has the extra `/-/ID` segments in it;
/// a link with the id is written as an absolute URL wherever a path alone could be read
/// differently (a `<base>` of doubtful origin, a page path starting with `//`).
///
/// ```
/// use fastmmap::session::{SessionId, UrlRewriter, UrlStyle};
///
/// let id: SessionId = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".parse()?;
/// let urls = UrlRewriter::new("https://shop.example/app/")?;
/// assert_eq!(
///     urls.add_id("https://shop.example/app/cart?x=1#top", &id)?,
///     "https://shop.example/app/cart/-/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA?x=1#top"
/// );
/// let incoming = urls.extract("/app/cart/-/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", None);
/// assert_eq!(incoming.path, "/app/cart");
/// assert_eq!(incoming.id, Some(Ok(id)));
///
/// let urls = urls.style(UrlStyle::Query);
/// assert_eq!(
///     urls.add_id("/app/cart?x=1", &id)?,
///     "/app/cart?x=1&sid=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlRewriter {
    base: Url,
    style: UrlStyle,
    param: String,
    skip_extensions: Vec<String>,
}

fn bad_url(reason: String) -> Error {
    Error::InvalidUrl { reason }
}

/// The unreserved characters of RFC 3986: safe in a query without encoding.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Splits `/…/-/ID` into the path before it and the id text, if the path ends that way.
fn split_path_id(path: &str) -> Option<(&str, &str)> {
    let (head, last) = path.rsplit_once('/')?;
    let before = head.strip_suffix(PATH_MARKER)?.strip_suffix('/')?;
    Some((before, last))
}

impl UrlRewriter {
    /// A rewriter for the application at `base` (an absolute `http`/`https` URL; its path is
    /// taken as a directory: `https://h/app` and `https://h/app/` both mean everything under
    /// `/app/`). Path style, parameter `sid`, [`DEFAULT_SKIP_EXTENSIONS`].
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] if `base` does not parse, is not http(s), or has user-info, a
    /// query or a fragment.
    pub fn new(base: &str) -> Result<UrlRewriter> {
        let mut base =
            Url::parse(base).map_err(|e| bad_url(format!("base URL does not parse: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(bad_url("the base URL must be an http or https URL".into()));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(bad_url("the base URL must not carry user-info".into()));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(bad_url(
                "the base URL must not have a query or fragment".into(),
            ));
        }
        if !base.path().ends_with('/') {
            let dir = format!("{}/", base.path());
            base.set_path(&dir);
        }
        Ok(UrlRewriter {
            base,
            style: UrlStyle::Path,
            param: DEFAULT_PARAM.to_owned(),
            skip_extensions: DEFAULT_SKIP_EXTENSIONS
                .iter()
                .map(|e| (*e).to_owned())
                .collect(),
        })
    }

    /// Path or query style.
    pub fn style(mut self, style: UrlStyle) -> Self {
        self.style = style;
        self
    }

    /// The query parameter for query style (default `sid`).
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] unless it is non-empty and made of `A–Z a–z 0–9 - . _ ~`.
    pub fn param(mut self, name: &str) -> Result<Self> {
        if name.is_empty() || !name.bytes().all(is_unreserved) {
            return Err(Error::InvalidOptions {
                reason: format!("query parameter {name:?} must be non-empty A-Z a-z 0-9 - . _ ~"),
            });
        }
        self.param = name.to_owned();
        Ok(self)
    }

    /// File extensions (without the dot, any case) whose URLs never get an id; replaces
    /// [`DEFAULT_SKIP_EXTENSIONS`].
    pub fn skip_extensions<I, S>(mut self, extensions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.skip_extensions = extensions
            .into_iter()
            .map(|e| e.as_ref().trim_start_matches('.').to_ascii_lowercase())
            .collect();
        self
    }

    /// The application's base URL (its path ends with `/`).
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The style in use.
    pub fn url_style(&self) -> UrlStyle {
        self.style
    }

    /// The query parameter of query style.
    pub fn param_name(&self) -> &str {
        &self.param
    }

    /// Adds `id` to `url` in place, whatever its host (the caller decided it should carry
    /// one).
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] for a URL without a path (`mailto:`, `data:` …).
    pub fn add_id_to_url(&self, url: &mut Url, id: &SessionId) -> Result<()> {
        if url.cannot_be_a_base() {
            return Err(bad_url(format!(
                "a {}: URL cannot carry a session id",
                url.scheme()
            )));
        }
        match self.style {
            UrlStyle::Path => {
                let path = url.path();
                let sep = if path.ends_with('/') { "" } else { "/" };
                let new = format!("{path}{sep}{PATH_MARKER}/{id}");
                url.set_path(&new);
            }
            UrlStyle::Query => {
                let new = match url.query() {
                    Some(q) if !q.is_empty() => format!("{q}&{}={id}", self.param),
                    _ => format!("{}={id}", self.param),
                };
                url.set_query(Some(&new));
            }
        }
        Ok(())
    }

    /// Adds `id` to a URL given as text (absolute, or relative to the base URL), keeping its
    /// form: an absolute URL stays absolute, `//host/…` stays scheme-relative, and a path
    /// stays a path (a relative path comes back as an absolute path). Like the original
    /// plugin's `uri`, this does not check that the URL is under the base.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] if `url` does not parse or cannot carry an id.
    pub fn add_id(&self, url: &str, id: &SessionId) -> Result<String> {
        let kind = RefKind::of(url);
        let mut parsed = self
            .base
            .join(url)
            .map_err(|e| bad_url(format!("URL does not parse: {e}")))?;
        self.add_id_to_url(&mut parsed, id)?;
        Ok(kind.write(&parsed))
    }

    /// Takes the id out of an incoming request's path (path style) or query (query style).
    /// `path` is the full path as received, percent-encoding and all; `query` is the text
    /// after `?`.
    ///
    /// In path style a path ending in `/-/X` is always split: if `X` is not a well-formed id,
    /// `id` says why (such a request has no session). The path without the id has no
    /// trailing slash (`/shop/-/ID` gives `/shop`), except the root (`/-/ID` gives `/`).
    pub fn extract(&self, path: &str, query: Option<&str>) -> Extracted {
        self.extract_as(path, query, IdFormat::Native)
    }

    /// [`extract`](Self::extract) for ids of the shape `format`.
    pub(crate) fn extract_as(
        &self,
        path: &str,
        query: Option<&str>,
        format: IdFormat,
    ) -> Extracted {
        match self.style {
            UrlStyle::Path => match split_path_id(path) {
                Some((before, text)) => Extracted {
                    path: if before.is_empty() { "/" } else { before }.to_owned(),
                    query: query.map(str::to_owned),
                    id: Some(format.parse(text)),
                },
                None => Extracted {
                    path: path.to_owned(),
                    query: query.map(str::to_owned),
                    id: None,
                },
            },
            UrlStyle::Query => {
                let (query, id) = match query {
                    Some(q) => self.extract_from_query(q, format),
                    None => (None, None),
                };
                Extracted {
                    path: path.to_owned(),
                    query,
                    id,
                }
            }
        }
    }

    /// Takes every parameter named like the id parameter out of `query`; the id is the first
    /// one's value, which must be an id exactly as written (no percent-decoding). The other
    /// parameters are kept as they were written.
    #[allow(clippy::type_complexity)]
    fn extract_from_query(
        &self,
        query: &str,
        format: IdFormat,
    ) -> (
        Option<String>,
        Option<std::result::Result<SessionId, InvalidId>>,
    ) {
        let mut id = None;
        let mut rest: Vec<&str> = Vec::new();
        for piece in query.split('&') {
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            if name == self.param {
                id.get_or_insert_with(|| format.parse(value));
            } else {
                rest.push(piece);
            }
        }
        match id {
            None => (Some(query.to_owned()), None),
            Some(id) => {
                let rest = rest.join("&");
                ((!rest.is_empty()).then_some(rest), Some(id))
            }
        }
    }

    /// The URL of the page being answered, without any id: the base URL's origin with the
    /// request's (extracted) path and query. Relative links in the page resolve against it.
    pub fn document_url(&self, path: &str, query: Option<&str>) -> Url {
        let mut url = self.base.clone();
        url.set_path(path);
        url.set_query(query);
        url
    }

    /// Whether `url` is under the base URL: same scheme, host, port and user-info (none), and
    /// a path at or below the base path. A path with an encoded slash or backslash (`%2F`,
    /// `%5C`) is not, since servers differ in whether they decode it before routing.
    pub fn is_under_base(&self, url: &Url) -> bool {
        let base = &self.base;
        let dir = base.path();
        let path = url.path();
        let encoded_separator = path.as_bytes().windows(3).any(|w| {
            w[0] == b'%'
                && (w[1..].eq_ignore_ascii_case(b"2f") || w[1..].eq_ignore_ascii_case(b"5c"))
        });
        url.scheme() == base.scheme()
            && url.host_str() == base.host_str()
            && url.port_or_known_default() == base.port_or_known_default()
            && url.username().is_empty()
            && url.password().is_none()
            && (path.starts_with(dir) || path == dir.trim_end_matches('/'))
            && !encoded_separator
    }

    /// Whether `url`'s last path segment ends in one of the skipped extensions.
    fn is_skipped_asset(&self, url: &Url) -> bool {
        let last = url.path().rsplit('/').next().unwrap_or("");
        match last.rsplit_once('.') {
            Some((_, ext)) if !ext.is_empty() => self
                .skip_extensions
                .iter()
                .any(|s| s.eq_ignore_ascii_case(ext)),
            _ => false,
        }
    }

    /// Whether `url` already carries an id (or something in its place), in this style.
    fn has_id(&self, url: &Url) -> bool {
        match self.style {
            UrlStyle::Path => split_path_id(url.path()).is_some(),
            UrlStyle::Query => url.query().is_some_and(|q| {
                q.split('&')
                    .any(|p| p.split_once('=').map_or(p, |(n, _)| n) == self.param)
            }),
        }
    }

    /// Whether a link to `url` gets the id: under the base, not a skipped asset, no id yet.
    fn takes_id(&self, url: &Url) -> bool {
        self.is_under_base(url) && !self.is_skipped_asset(url) && !self.has_id(url)
    }

    /// The rewritten form of one link (already entity-decoded) in a response to `document`
    /// (the request's URL without the id) that has no `<base>`: a redirect's `Location`.
    /// `None` to leave it as it is.
    pub(crate) fn rewrite_reference(
        &self,
        reference: &str,
        document: &Url,
        id: &SessionId,
    ) -> Option<String> {
        let bases = Bases::new(self, document, id, &[], false);
        self.rewrite_link(reference, &bases, id).map(|l| l.text)
    }

    /// The rewritten form of a link as written in a page (entity-decoded), or `None` to leave
    /// it alone. It gets the id if it goes under the base (see [`UrlRewriter`]); written in
    /// its own form when every base a browser might use sends that form to the same URL,
    /// else as an absolute URL. A link that gets no id is rewritten only when the id in the
    /// page's address would send it somewhere else than the author meant (a relative link in
    /// path style): then as an absolute path.
    pub(crate) fn rewrite_link(
        &self,
        reference: &str,
        bases: &Bases,
        id: &SessionId,
    ) -> Option<Rewritten> {
        let reference = browser_trim(reference);
        if reference.is_empty() || reference.starts_with('#') {
            return None;
        }
        let target = bases.intended.join(&reference).ok()?;
        if self.takes_id(&target) {
            return self.with_id(RefKind::of(&reference), target, bases, id);
        }
        let browser_agrees = bases
            .actual
            .iter()
            .all(|base| base.join(&reference).ok().as_ref() == Some(&target));
        if browser_agrees {
            return None;
        }
        let text = written(RefKind::of(&reference), &target, &bases.actual)?;
        Some(Rewritten {
            text,
            with_id: false,
        })
    }

    /// `target` with the id, written so that every base a browser might use sends it there;
    /// `None` if `target` does not take the id.
    pub(crate) fn rewrite_target(
        &self,
        target: &Url,
        bases: &Bases,
        id: &SessionId,
    ) -> Option<Rewritten> {
        if !self.takes_id(target) {
            return None;
        }
        self.with_id(RefKind::PathAbsolute, target.clone(), bases, id)
    }

    fn with_id(
        &self,
        kind: RefKind,
        mut target: Url,
        bases: &Bases,
        id: &SessionId,
    ) -> Option<Rewritten> {
        self.add_id_to_url(&mut target, id).ok()?;
        let text = written(kind, &target, &bases.possible)?;
        Some(Rewritten {
            text,
            with_id: true,
        })
    }

    /// Whether a browser sends `reference` (entity-decoded, as an attribute holds it) under
    /// the base, whichever base it uses.
    pub(crate) fn always_under_base(&self, reference: &str, bases: &Bases) -> bool {
        let reference = browser_trim(reference);
        bases.possible.iter().all(|base| {
            base.join(&reference)
                .is_ok_and(|url| self.is_under_base(&url))
        })
    }

    /// The `Location` of a redirect with `id` added, or `None` to leave it as it is: only for
    /// 3xx statuses, and only under the base URL (see [`UrlRewriter`] for the rules). A
    /// relative `location` resolves against `document`; it comes back as an absolute path.
    pub fn rewrite_location(
        &self,
        status: u16,
        location: &str,
        document: &Url,
        id: &SessionId,
    ) -> Option<String> {
        if !(300..400).contains(&status) {
            return None;
        }
        self.rewrite_reference(location, document, id)
    }
}

/// `reference` as the URL parser reads it: without leading and trailing C0 controls and
/// spaces, and without tabs and newlines anywhere (WHATWG URL, basic URL parser). The `url`
/// crate does the same when it parses; this is for looking at the text before that.
fn browser_trim(reference: &str) -> Cow<'_, str> {
    let trimmed = reference.trim_matches(|c: char| c <= ' ');
    if trimmed.contains(['\t', '\n', '\r']) {
        Cow::Owned(trimmed.replace(['\t', '\n', '\r'], ""))
    } else {
        Cow::Borrowed(trimmed)
    }
}

/// `url` written in `kind`'s form if every one of `bases` resolves that text to `url`, else as
/// an absolute URL if they all resolve that to it (a serialised http(s) URL always does).
fn written(kind: RefKind, url: &Url, bases: &[Url]) -> Option<String> {
    [kind.write(url), url.as_str().to_owned()]
        .into_iter()
        .find(|text| {
            bases
                .iter()
                .all(|base| base.join(text).ok().as_ref() == Some(url))
        })
}

/// A `<base href>` as the page has it.
#[derive(Clone, Debug)]
pub(crate) struct BaseHref {
    /// The entity-decoded `href`; `None` if it holds a reference the decoder is unsure of.
    pub(crate) href: Option<String>,
    /// Whether browsers certainly do not take it as the document's base (it is inside a
    /// `<template>`, or not in the HTML namespace), as far as the HTML parser can tell.
    pub(crate) inert: bool,
}

/// Origins no application uses, standing in for a base the HTML parser cannot see.
const PROBE_BASES: [&str; 2] = ["http://probe.invalid/p/q", "https://probe.invalid/p/q"];

/// `<base href>` elements of one page that count one by one as possible bases. A page with
/// more (one is the rule) is taken as one whose base is unreadable: its links get the id only
/// as absolute URLs, which mean the same against any base, so what the others say no longer
/// matters (a streamed page stops adding ids at the first base past the cap). Without the cap
/// a page of many `<base>` tags and links cost their product in URL joins (and a streamed one
/// the square of its bases): 78 s of a worker's time for a streamed page of 355 KiB (debug).
pub(crate) const MAX_BASES: usize = 4;

/// The bases the links of one response may resolve against.
///
/// Browsers resolve every link of a page against its first `<base href>` in tree order —
/// also the links before it — or, without one, against the page's address. The rewriter
/// reads the whole body before rewriting, so it knows that base for every link. It still
/// has two kinds of doubt, and a link gets the id only in a form that reaches the same URL
/// whichever way they are settled:
///
/// - Whether the address has the id in it (a client that came by a rewritten link) or not
///   (its first visit): relative links are meant against the address without the id.
/// - Which `<base>` counts: an HTML parser that only tokenises cannot tell every context in
///   which browsers ignore one (in a `<select>`, a `<template>`, foreign content), and
///   browsers without scripts see one inside `<noscript>` that the parser reads as text.
///   So each `<base href>` seen counts as possible, and one that may be hidden adds bases of
///   foreign origins, against which only an absolute URL holds.
#[derive(Clone, Debug)]
pub(crate) struct Bases {
    /// Where the author meant links to go: the first `<base href>` that is not inert,
    /// resolved against the page's URL without the id, or that URL.
    intended: Url,
    /// What a browser resolves against when that `<base>` is the one: it resolved against the
    /// page's address with and without the id, or those addresses.
    actual: Vec<Url>,
    /// Every base a browser might resolve against.
    possible: Vec<Url>,
}

impl Bases {
    /// The bases of a response to `document` (the request's URL without the id) whose body has
    /// the `<base href>` elements `found`, in document order; `hidden`: a `<base>` the parser
    /// could not read may be there too.
    pub(crate) fn new(
        urls: &UrlRewriter,
        document: &Url,
        id: &SessionId,
        found: &[BaseHref],
        hidden: bool,
    ) -> Bases {
        let mut addressed = document.clone();
        let addresses = match urls.add_id_to_url(&mut addressed, id) {
            Ok(()) => vec![document.clone(), addressed],
            Err(_) => vec![document.clone()],
        };
        // A `<base href>` that does not parse, or names a data: or javascript: URL, leaves the
        // address as the base (HTML, "set the frozen base URL").
        let resolve = |href: &str, address: &Url| match address.join(href) {
            Ok(url) if !matches!(url.scheme(), "data" | "javascript") => url,
            _ => address.clone(),
        };
        let mut unreadable = hidden || found.len() > MAX_BASES;
        let mut possible = addresses.clone();
        for base in found.iter().take(MAX_BASES) {
            match &base.href {
                Some(href) => possible.extend(addresses.iter().map(|a| resolve(href, a))),
                None => unreadable = true,
            }
        }
        if unreadable {
            possible.extend(PROBE_BASES.iter().filter_map(|p| Url::parse(p).ok()));
        }
        let (intended, actual) = match found.iter().find(|b| !b.inert) {
            Some(BaseHref {
                href: Some(href), ..
            }) => (
                resolve(href, document),
                addresses.iter().map(|a| resolve(href, a)).collect(),
            ),
            _ => (document.clone(), addresses),
        };
        possible.sort();
        possible.dedup();
        Bases {
            intended,
            actual,
            possible,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    fn id() -> SessionId {
        SessionId::parse(ID).unwrap()
    }

    fn path_rw() -> UrlRewriter {
        UrlRewriter::new("http://localhost:3000/app/").unwrap()
    }

    fn query_rw() -> UrlRewriter {
        path_rw().style(UrlStyle::Query)
    }

    #[test]
    fn base_must_be_a_plain_http_url() {
        for bad in [
            "",
            "/app",
            "ftp://x/",
            "mailto:a@b",
            "http://u:p@host/",
            "http://host/?a=1",
            "http://host/#f",
        ] {
            assert!(UrlRewriter::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            UrlRewriter::new("https://host/app").unwrap().base().path(),
            "/app/"
        );
    }

    #[test]
    fn path_style_as_the_original() {
        let rw = path_rw();
        let cases = [
            (
                "http://localhost:3000/app/foo",
                format!("http://localhost:3000/app/foo/-/{ID}"),
            ),
            (
                "http://localhost:3000/app/foo/",
                format!("http://localhost:3000/app/foo/-/{ID}"),
            ),
            (
                "http://localhost:3000/",
                format!("http://localhost:3000/-/{ID}"),
            ),
            ("/", format!("/-/{ID}")),
            ("/a?x=1&y=2#frag", format!("/a/-/{ID}?x=1&y=2#frag")),
            ("//localhost:3000/a", format!("//localhost:3000/a/-/{ID}")),
            ("rel/x", format!("/app/rel/x/-/{ID}")),
        ];
        for (input, want) in cases {
            assert_eq!(rw.add_id(input, &id()).unwrap(), want, "{input}");
        }
        assert!(rw.add_id("mailto:a@example.org", &id()).is_err());
        assert!(rw.add_id("http://[::1", &id()).is_err());
    }

    #[test]
    fn query_style_appends_after_existing_parameters() {
        let rw = query_rw();
        assert_eq!(rw.add_id("/a", &id()).unwrap(), format!("/a?sid={ID}"));
        assert_eq!(rw.add_id("/a?", &id()).unwrap(), format!("/a?sid={ID}"));
        assert_eq!(
            rw.add_id("/a?x=1&y=%20#f", &id()).unwrap(),
            format!("/a?x=1&y=%20&sid={ID}#f")
        );
        let rw = rw.param("s.id").unwrap();
        assert_eq!(rw.add_id("/a", &id()).unwrap(), format!("/a?s.id={ID}"));
        assert!(query_rw().param("").is_err());
        assert!(query_rw().param("a&b").is_err());
        assert!(query_rw().param("a=b").is_err());
    }

    #[test]
    fn extract_from_path() {
        let rw = path_rw();
        let e = rw.extract(&format!("/app/cart/-/{ID}"), Some("x=1"));
        assert_eq!(e.path, "/app/cart");
        assert_eq!(e.query.as_deref(), Some("x=1"));
        assert_eq!(e.id, Some(Ok(id())));
        assert_eq!(rw.extract(&format!("/-/{ID}"), None).path, "/");
        let none = rw.extract("/app/cart", None);
        assert_eq!((none.path.as_str(), none.id), ("/app/cart", None));
        // A '-' that is not a whole segment is not the marker.
        assert_eq!(rw.extract(&format!("/app-/{ID}"), None).id, None);
        assert_eq!(rw.extract(&format!("/app/x-/{ID}"), None).id, None);
        // The id must be the last segment.
        assert_eq!(rw.extract(&format!("/-/{ID}/more"), None).id, None);
        // Malformed: split off, reported, never an id.
        for (path, want) in [
            ("/app/-/", InvalidId::Empty),
            ("/app/-/short", InvalidId::Length { found: 5 }),
            (
                &format!("/app/-/%41{}", &ID[3..]) as &str,
                InvalidId::Character { position: 0 },
            ),
        ] {
            let e = rw.extract(path, None);
            assert_eq!(e.path, "/app");
            assert_eq!(e.id, Some(Err(want)), "{path}");
        }
    }

    #[test]
    fn extract_from_query() {
        let rw = query_rw();
        let e = rw.extract("/a", Some(&format!("x=1&sid={ID}&y=2")));
        assert_eq!(e.query.as_deref(), Some("x=1&y=2"));
        assert_eq!(e.id, Some(Ok(id())));
        let e = rw.extract("/a", Some(&format!("sid={ID}")));
        assert_eq!(e.query, None);
        let e = rw.extract("/a", Some("x=%20+1&sids=2"));
        assert_eq!(e.query.as_deref(), Some("x=%20+1&sids=2"));
        assert_eq!(e.id, None);
        let e = rw.extract("/a", Some("sid=bad&sid=worse"));
        assert_eq!(e.id, Some(Err(InvalidId::Length { found: 3 })));
        assert_eq!(e.query, None);
        assert_eq!(
            rw.extract("/a", Some("sid")).id,
            Some(Err(InvalidId::Empty))
        );
        assert_eq!(rw.extract("/a", None).id, None);
        // Path style does not look at the query, and query style not at the path.
        assert_eq!(path_rw().extract("/a", Some(&format!("sid={ID}"))).id, None);
        assert_eq!(rw.extract(&format!("/-/{ID}"), None).id, None);
    }

    #[test]
    fn base_check() {
        let rw = path_rw();
        let under = |u: &str| rw.is_under_base(&Url::parse(u).unwrap());
        assert!(under("http://localhost:3000/app/"));
        assert!(under("http://localhost:3000/app"));
        assert!(under("http://LOCALHOST:3000/app/x/../y"));
        assert!(!under("http://localhost:3000/application"));
        assert!(!under("http://localhost:3000/"));
        assert!(!under("http://localhost/app/"));
        assert!(!under("https://localhost:3000/app/"));
        assert!(!under("http://localhost:3001/app/"));
        assert!(!under("http://user@localhost:3000/app/"));
        assert!(!under("http://localhost:3000@evil.example/app/"));
        assert!(!under("http://localhost:3000/app/../x"));
        let rw = UrlRewriter::new("http://example.org/").unwrap();
        assert!(rw.is_under_base(&Url::parse("http://example.org:80/x").unwrap()));
        assert!(!rw.is_under_base(&Url::parse("http://example.org.evil/x").unwrap()));
    }

    #[test]
    fn idn_hosts_compare_in_punycode() {
        let rw = UrlRewriter::new("https://bücher.example/").unwrap();
        assert_eq!(rw.base().host_str(), Some("xn--bcher-kva.example"));
        let doc = rw.document_url("/", None);
        assert_eq!(
            rw.rewrite_reference("https://BÜCHER.example/a", &doc, &id()),
            Some(format!("https://xn--bcher-kva.example/a/-/{ID}"))
        );
        assert_eq!(
            rw.rewrite_reference("https://xn--bcher-kva.example/a", &doc, &id()),
            Some(format!("https://xn--bcher-kva.example/a/-/{ID}"))
        );
        assert_eq!(
            rw.rewrite_reference("https://bucher.example/a", &doc, &id()),
            None
        );
    }

    #[test]
    fn references() {
        let rw = path_rw();
        let doc = rw.document_url("/app/items", Some("page=2"));
        let r = |s: &str| rw.rewrite_reference(s, &doc, &id());
        assert_eq!(r("/app/x"), Some(format!("/app/x/-/{ID}")));
        assert_eq!(r("  /app/x\n"), Some(format!("/app/x/-/{ID}")));
        assert_eq!(r("edit"), Some(format!("/app/edit/-/{ID}")));
        assert_eq!(r("?page=3"), Some(format!("/app/items/-/{ID}?page=3")));
        assert_eq!(
            r("http://localhost:3000/app/y#f"),
            Some(format!("http://localhost:3000/app/y/-/{ID}#f"))
        );
        // Never: fragments, other sites, other schemes, already rewritten, assets.
        assert_eq!(r("#top"), None);
        assert_eq!(r(""), None);
        assert_eq!(r("https://evil.example/app/x"), None);
        assert_eq!(r("//evil.example/app/x"), None);
        assert_eq!(r("\\\\evil.example/app/x"), None);
        assert_eq!(r("/\\evil.example/app/x"), None);
        assert_eq!(r("javascript:alert(1)"), None);
        assert_eq!(r("mailto:a@b.example"), None);
        assert_eq!(r("data:text/html,hi"), None);
        assert_eq!(r(&format!("/app/x/-/{ID}")), None);
        assert_eq!(r("/app/logo.PNG"), None);
        assert_eq!(r("/app/doc.pdf?download=1"), None);
        assert_eq!(r("/other/x"), None);
        // Relative links that get no id are still written as absolute paths in path style,
        // since the browser would resolve them against the address with /-/ID in it.
        assert_eq!(r("logo.png"), Some("/app/logo.png".to_owned()));
        assert_eq!(r("../other"), Some("/other".to_owned()));
        // ... but not in query style.
        let q = query_rw();
        assert_eq!(q.rewrite_reference("logo.png", &doc, &id()), None);
        assert_eq!(
            q.rewrite_reference("edit?a=1", &doc, &id()),
            Some(format!("/app/edit?a=1&sid={ID}"))
        );
        assert_eq!(
            q.rewrite_reference(&format!("/app/x?sid={ID}"), &doc, &id()),
            None
        );
    }

    #[test]
    fn locations_only_for_redirects() {
        let rw = path_rw();
        let doc = rw.document_url("/app/", None);
        for status in [301, 302, 303, 307, 308, 300, 399] {
            assert_eq!(
                rw.rewrite_location(status, "/app/next", &doc, &id()),
                Some(format!("/app/next/-/{ID}")),
                "{status}"
            );
        }
        for status in [200, 201, 299, 400, 404, 500] {
            assert_eq!(rw.rewrite_location(status, "/app/next", &doc, &id()), None);
        }
        assert_eq!(
            rw.rewrite_location(302, "https://elsewhere.example/", &doc, &id()),
            None
        );
        assert_eq!(
            rw.rewrite_location(303, "http://localhost:3000/app/done?ok=1", &doc, &id()),
            Some(format!("http://localhost:3000/app/done/-/{ID}?ok=1"))
        );
    }

    #[test]
    fn ports_and_user_info() {
        let rw = UrlRewriter::new("https://example.org:8443/").unwrap();
        let doc = rw.document_url("/", None);
        let r = |s: &str| rw.rewrite_reference(s, &doc, &id());
        assert_eq!(
            r("https://example.org:8443/a"),
            Some(format!("https://example.org:8443/a/-/{ID}"))
        );
        assert_eq!(r("https://example.org/a"), None);
        assert_eq!(r("https://example.org:443/a"), None);
        assert_eq!(r("https://me:pw@example.org:8443/a"), None);
        assert_eq!(r("https://example.org:8443@evil.example/a"), None);
        let default_port = UrlRewriter::new("https://example.org/").unwrap();
        let doc = default_port.document_url("/", None);
        assert_eq!(
            default_port.rewrite_reference("https://example.org:443/a", &doc, &id()),
            Some(format!("https://example.org/a/-/{ID}"))
        );
    }
}
