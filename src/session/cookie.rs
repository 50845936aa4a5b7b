//! The session cookie, through the `cookie` crate (as tower-cookies, tower-sessions and
//! axum-login use it): the `Set-Cookie` values that set and delete it, and the id in a
//! `Cookie` request header, parsed strictly.

use std::time::{SystemTime, UNIX_EPOCH};

pub use cookie::SameSite;
use cookie::time::{Duration as CookieDuration, OffsetDateTime};
use cookie::{Cookie, Expiration};

use crate::session::error::{Error, Result};
use crate::session::id::{IdFormat, InvalidId, SessionId};

/// The default cookie name (the name the original plugin used).
pub const DEFAULT_COOKIE_NAME: &str = "session";

/// When the cookie carries the `Secure` attribute (browsers then send it over HTTPS only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Secure {
    /// Never (the default: a plain-HTTP site, or a test server).
    #[default]
    Never,
    /// Always: the site is served over HTTPS only.
    Always,
    /// Only on responses to requests that came over HTTPS (Catalyst's `cookie_secure => 2`),
    /// for a site served both ways. Whether a request came over HTTPS is up to the caller
    /// ([`Request::https`](crate::session::Request::https)); the tower layer reads the
    /// request URI's scheme and, when told to trust it, `X-Forwarded-Proto`.
    IfHttps,
}

/// How the session cookie is written.
///
/// Defaults: name `session`, `Path=/`, no `Domain`, `HttpOnly`, `SameSite=Lax`, not `Secure`
/// (turn it on for HTTPS with [`secure`](Self::secure), or [`Secure::IfHttps`] with
/// [`secure_when`](Self::secure_when) for a site served both ways), not `Partitioned`, and
/// persistent: `Max-Age` and `Expires` say when the session expires. Without persistence it
/// is a browser-session cookie: it lasts until the browser closes (or the session expires,
/// whichever is first).
///
/// A `__Host-` name (`Secure`, `Path=/`, no `Domain`) is the strongest choice over HTTPS:
/// browsers then accept that cookie only from this very host, over HTTPS, so a sibling
/// subdomain or a plain-HTTP page cannot plant or overwrite it. Combinations that browsers
/// refuse are refused by [`validate`](Self::validate), which the store builder calls.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use fastmmap::session::{CookieConfig, SessionId};
///
/// let cookie = CookieConfig::new().name("sid")?.secure(true);
/// let id: SessionId = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".parse()?;
/// let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
/// assert_eq!(
///     cookie.cookie(&id, Some(now + Duration::from_secs(3600)), now, false).to_string(),
///     "sid=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA; HttpOnly; SameSite=Lax; Secure; Path=/; \
///      Max-Age=3600; Expires=Tue, 14 Nov 2023 23:13:20 GMT"
/// );
/// assert_eq!(
///     cookie.find_id("theme=dark; sid=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
///     Some(Ok(id))
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieConfig {
    name: String,
    path: String,
    domain: Option<String>,
    secure: Secure,
    http_only: bool,
    same_site: Option<SameSite>,
    partitioned: bool,
    persistent: bool,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: DEFAULT_COOKIE_NAME.to_owned(),
            path: "/".to_owned(),
            domain: None,
            secure: Secure::Never,
            http_only: true,
            same_site: Some(SameSite::Lax),
            partitioned: false,
            persistent: true,
        }
    }
}

/// Cookie name prefixes that browsers tie to attributes (RFC 6265bis, "Cookie Name
/// Prefixes").
const SECURE_PREFIX: &str = "__Secure-";
const HOST_PREFIX: &str = "__Host-";

/// Whether `name` starts with `prefix`, ignoring ASCII case (as browsers compare them).
fn has_prefix(name: &str, prefix: &str) -> bool {
    name.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// RFC 6265 `token` characters (a cookie name).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Characters allowed in a `Path` attribute: visible ASCII except `;`.
fn is_path_byte(b: u8) -> bool {
    (0x21..0x7f).contains(&b) && b != b';'
}

fn invalid(reason: String) -> Error {
    Error::InvalidOptions { reason }
}

/// Unix seconds as a cookie date (clamped to what `time` holds; record times end in 2106).
fn cookie_date(unix_secs: u64) -> OffsetDateTime {
    i64::try_from(unix_secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl CookieConfig {
    /// The defaults (see the type's documentation).
    pub fn new() -> CookieConfig {
        CookieConfig::default()
    }

    /// The cookie name.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] unless it is a non-empty RFC 6265 token.
    pub fn name(mut self, name: &str) -> Result<Self> {
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(invalid(format!(
                "cookie name {name:?} is not a non-empty token (letters, digits, !#$%&'*+-.^_`|~)"
            )));
        }
        self.name = name.to_owned();
        Ok(self)
    }

    /// The `Path` attribute (default `/`).
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] unless it starts with `/` and holds only visible ASCII
    /// other than `;`.
    pub fn path(mut self, path: &str) -> Result<Self> {
        if !path.starts_with('/') || !path.bytes().all(is_path_byte) {
            return Err(invalid(format!(
                "cookie path {path:?} must start with / and hold only visible ASCII other than ;"
            )));
        }
        self.path = path.to_owned();
        Ok(self)
    }

    /// The `Domain` attribute (default none: the cookie goes back to the host that set it
    /// only).
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] unless it is a host name of letters, digits, `-` and `.`.
    pub fn domain(mut self, domain: &str) -> Result<Self> {
        let host = domain.strip_prefix('.').unwrap_or(domain);
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(invalid(format!(
                "cookie domain {domain:?} is not a host name (letters, digits, - and .; use the punycode form of an IDN)"
            )));
        }
        self.domain = Some(domain.to_owned());
        Ok(self)
    }

    /// `Secure` always (`true`) or never (`false`, the default); see
    /// [`secure_when`](Self::secure_when) for HTTPS requests only.
    pub fn secure(self, yes: bool) -> Self {
        self.secure_when(if yes { Secure::Always } else { Secure::Never })
    }

    /// When to add `Secure`: never (the default), always, or on responses to HTTPS requests
    /// only ([`Secure::IfHttps`], Catalyst's `cookie_secure => 2`).
    pub fn secure_when(mut self, when: Secure) -> Self {
        self.secure = when;
        self
    }

    /// Whether to add `HttpOnly` (default on: scripts cannot read the id).
    pub fn http_only(mut self, yes: bool) -> Self {
        self.http_only = yes;
        self
    }

    /// The `SameSite` attribute, or `None` to leave it out (default `Lax`).
    pub fn same_site(mut self, same_site: Option<SameSite>) -> Self {
        self.same_site = same_site;
        self
    }

    /// Whether to add `Partitioned` (CHIPS: a browser keeps a separate cookie for each
    /// top-level site the application is embedded in; default off). Browsers require
    /// `Secure` with it: with [`Secure::IfHttps`] it is added to HTTPS responses only.
    pub fn partitioned(mut self, yes: bool) -> Self {
        self.partitioned = yes;
        self
    }

    /// Whether the cookie carries `Max-Age` and `Expires` (default on); without them it is a
    /// browser-session cookie.
    pub fn persistent(mut self, yes: bool) -> Self {
        self.persistent = yes;
        self
    }

    /// The cookie name.
    pub fn cookie_name(&self) -> &str {
        &self.name
    }

    /// Whether the cookie carries `Max-Age` and `Expires`.
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// When the cookie carries `Secure`.
    pub fn secure_mode(&self) -> Secure {
        self.secure
    }

    /// Checks the combination of options: browsers silently drop a cookie that breaks one of
    /// these rules, and then no session ever sticks.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`], naming the rule, for `SameSite=None` or `Partitioned`
    /// without `Secure`; a name starting with `__Secure-` without `Secure`; a name starting
    /// with `__Host-` without `Secure`, with a `Domain`, or with a `Path` other than `/`.
    /// `Secure` here means [`Secure::Always`], except for `Partitioned`, which
    /// [`Secure::IfHttps`] also satisfies (it is only added with `Secure`). Prefixes are
    /// matched in any case (`__host-` counts), as browsers match them.
    pub fn validate(&self) -> Result<()> {
        let always = self.secure == Secure::Always;
        if self.same_site == Some(SameSite::None) && !always {
            return Err(invalid(
                "SameSite=None needs Secure always (browsers reject the cookie otherwise)"
                    .to_owned(),
            ));
        }
        if self.partitioned && self.secure == Secure::Never {
            return Err(invalid(
                "Partitioned needs Secure (browsers reject the cookie otherwise)".to_owned(),
            ));
        }
        let prefix = [SECURE_PREFIX, HOST_PREFIX]
            .into_iter()
            .find(|p| has_prefix(&self.name, p));
        let Some(prefix) = prefix else {
            return Ok(());
        };
        let rule = |what: &str| {
            invalid(format!(
                "a cookie name starting with {prefix} (in any case) {what} (browsers reject the \
                 cookie otherwise)"
            ))
        };
        if !always {
            return Err(rule("needs Secure always"));
        }
        if prefix == HOST_PREFIX {
            if self.domain.is_some() {
                return Err(rule("must not have a Domain"));
            }
            if self.path != "/" {
                return Err(rule("needs Path=/"));
            }
        }
        Ok(())
    }

    /// A cookie named and scoped as configured, with `value`, for a request over HTTPS or
    /// not.
    fn base(&self, value: String, https: bool) -> Cookie<'static> {
        let secure = match self.secure {
            Secure::Never => false,
            Secure::Always => true,
            Secure::IfHttps => https,
        };
        let mut c = Cookie::new(self.name.clone(), value);
        c.set_path(self.path.clone());
        if let Some(domain) = &self.domain {
            c.set_domain(domain.clone());
        }
        c.set_secure(secure);
        if self.http_only {
            c.set_http_only(true);
        }
        c.set_same_site(self.same_site);
        if self.partitioned && secure {
            c.set_partitioned(true);
        }
        c
    }

    /// The cookie carrying `id`, for a response to a request over HTTPS (`https`) or not.
    /// When the cookie is persistent and `expires` is given, `Max-Age` counts the whole
    /// seconds from `now` to `expires` (at least 0) and `Expires` names the same instant.
    /// Its `Display` is the `Set-Cookie` value.
    pub fn cookie(
        &self,
        id: &SessionId,
        expires: Option<SystemTime>,
        now: SystemTime,
        https: bool,
    ) -> Cookie<'static> {
        let mut c = self.base(id.to_string(), https);
        if self.persistent
            && let Some(expires) = expires
        {
            let max_age = expires.duration_since(now).map_or(0, |d| d.as_secs());
            let at = expires
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            c.set_max_age(CookieDuration::seconds(
                i64::try_from(max_age).unwrap_or(i64::MAX),
            ));
            c.set_expires(Expiration::DateTime(cookie_date(at)));
        }
        c
    }

    /// The cookie that deletes the session cookie (empty value, `Max-Age=0`, `Expires` in
    /// 1970), with the same `Path` and `Domain` so that it replaces the one that was set.
    pub fn removal(&self, https: bool) -> Cookie<'static> {
        let mut c = self.base(String::new(), https);
        c.set_max_age(CookieDuration::ZERO);
        c.set_expires(Expiration::DateTime(OffsetDateTime::UNIX_EPOCH));
        c
    }

    /// The session id in a `Cookie` request header (join several such headers with `"; "`):
    /// `None` if no cookie has this name; otherwise the first well-formed id among the
    /// cookies of this name, or, if none is well formed, why the first is not. A value in
    /// double quotes is unquoted; nothing else is decoded, and the id is parsed strictly
    /// ([`SessionId::parse`]).
    pub fn find_id(&self, cookie_header: &str) -> Option<Result<SessionId, InvalidId>> {
        self.find_id_as([cookie_header], IdFormat::Native)
    }

    /// [`find_id`](Self::find_id) for ids of the shape `format`, in the `Cookie` headers
    /// `headers` (each one as received, not joined).
    pub(crate) fn find_id_as<'h>(
        &self,
        headers: impl IntoIterator<Item = &'h str>,
        format: IdFormat,
    ) -> Option<Result<SessionId, InvalidId>> {
        let mut first_error = None;
        for cookie in headers.into_iter().flat_map(Cookie::split_parse).flatten() {
            if cookie.name() != self.name {
                continue;
            }
            match format.parse(cookie.value_trimmed()) {
                Ok(id) => return Some(Ok(id)),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map(Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const ID: &str = "abcdefghijklmnopqrstuvwxyz012345";

    fn id() -> SessionId {
        SessionId::parse(ID).unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn dates_are_imf_fixdates() {
        let c = CookieConfig::new();
        for (secs, date) in [
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (4_102_444_799, "Thu, 31 Dec 2099 23:59:59 GMT"),
            // 2100 is not a leap year.
            (4_107_542_400, "Mon, 01 Mar 2100 00:00:00 GMT"),
        ] {
            let set = c.cookie(&id(), Some(at(secs)), at(0), false).to_string();
            assert!(set.ends_with(&format!("; Expires={date}")), "{set}");
        }
        assert!(
            c.removal(false)
                .to_string()
                .ends_with("; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT")
        );
    }

    #[test]
    fn defaults_are_http_only_and_lax() {
        let c = CookieConfig::new();
        let now = at(784_111_777);
        assert_eq!(
            c.cookie(&id(), Some(now + Duration::from_secs(86_400)), now, false)
                .to_string(),
            format!(
                "session={ID}; HttpOnly; SameSite=Lax; Path=/; Max-Age=86400; Expires=Mon, 07 Nov 1994 08:49:37 GMT"
            )
        );
        assert_eq!(
            c.cookie(&id(), None, now, true).to_string(),
            format!("session={ID}; HttpOnly; SameSite=Lax; Path=/")
        );
        // An expiry already past gives Max-Age=0, never a negative number.
        assert!(
            c.cookie(&id(), Some(now - Duration::from_secs(5)), now, false)
                .to_string()
                .contains("Max-Age=0;")
        );
        c.validate().unwrap();
    }

    #[test]
    fn every_option_shows() {
        let c = CookieConfig::new()
            .name("__Host-sid")
            .unwrap()
            .path("/app")
            .unwrap()
            .domain("example.org")
            .unwrap()
            .secure(true)
            .http_only(false)
            .same_site(Some(SameSite::Strict))
            .partitioned(true)
            .persistent(false);
        let now = UNIX_EPOCH;
        assert_eq!(
            c.cookie(&id(), Some(now + Duration::from_secs(60)), now, false)
                .to_string(),
            format!(
                "__Host-sid={ID}; SameSite=Strict; Partitioned; Secure; Path=/app; Domain=example.org"
            )
        );
        assert_eq!(
            c.removal(false).to_string(),
            "__Host-sid=; SameSite=Strict; Partitioned; Secure; Path=/app; Domain=example.org; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"
        );
        let none = CookieConfig::new().same_site(None);
        assert!(
            !none
                .cookie(&id(), None, now, false)
                .to_string()
                .contains("SameSite")
        );
    }

    #[test]
    fn secure_only_over_https() {
        let c = CookieConfig::new()
            .secure_when(Secure::IfHttps)
            .partitioned(true);
        c.validate().unwrap();
        let now = UNIX_EPOCH;
        let plain = c.cookie(&id(), None, now, false).to_string();
        assert_eq!(
            plain,
            format!("session={ID}; HttpOnly; SameSite=Lax; Path=/")
        );
        let tls = c.cookie(&id(), None, now, true).to_string();
        assert_eq!(
            tls,
            format!("session={ID}; HttpOnly; SameSite=Lax; Partitioned; Secure; Path=/")
        );
        assert!(c.removal(true).to_string().contains("; Secure"));
        assert!(!c.removal(false).to_string().contains("Secure"));
        // Never and Always ignore the request.
        let never = CookieConfig::new();
        assert!(
            !never
                .cookie(&id(), None, now, true)
                .to_string()
                .contains("Secure")
        );
        let always = CookieConfig::new().secure(true);
        assert!(
            always
                .cookie(&id(), None, now, false)
                .to_string()
                .contains("Secure")
        );
        assert_eq!(always.secure_mode(), Secure::Always);
    }

    #[test]
    fn bad_options_are_refused() {
        for name in ["", "a b", "a;b", "a=b", "é", "a\"b", "a,b"] {
            assert!(CookieConfig::new().name(name).is_err(), "{name:?}");
        }
        for path in ["", "app", "/a;b", "/a b", "/a\nb"] {
            assert!(CookieConfig::new().path(path).is_err(), "{path:?}");
        }
        for domain in [
            "",
            ".",
            "a b",
            "a;b",
            "bücher.example",
            "x\r\nSet-Cookie: y",
        ] {
            assert!(CookieConfig::new().domain(domain).is_err(), "{domain:?}");
        }
        assert!(CookieConfig::new().domain(".example.org").is_ok());
        let e = CookieConfig::new()
            .same_site(Some(SameSite::None))
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("Secure"), "{e}");
        CookieConfig::new()
            .same_site(Some(SameSite::None))
            .secure(true)
            .validate()
            .unwrap();
        assert!(
            CookieConfig::new()
                .same_site(Some(SameSite::None))
                .secure_when(Secure::IfHttps)
                .validate()
                .is_err()
        );
        let e = CookieConfig::new()
            .partitioned(true)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("Partitioned"), "{e}");
    }

    #[test]
    fn prefixed_names_need_what_browsers_require() {
        let named = |name: &str| CookieConfig::new().name(name).unwrap();
        let refused = |c: CookieConfig, rule: &str| match c.validate() {
            Err(Error::InvalidOptions { reason }) => {
                assert!(reason.contains(rule), "{reason:?} should name {rule:?}")
            }
            other => panic!("{c:?} should be refused for {rule:?}, got {other:?}"),
        };
        for prefix in [
            "__Secure-",
            "__secure-",
            "__SECURE-",
            "__Host-",
            "__host-",
            "__HOST-",
        ] {
            let name = format!("{prefix}sid");
            refused(named(&name), "Secure");
            refused(named(&name).secure_when(Secure::IfHttps), "Secure always");
            named(&name)
                .secure(true)
                .path("/")
                .unwrap()
                .validate()
                .unwrap();
        }
        for prefix in ["__Host-", "__hOsT-"] {
            let name = format!("{prefix}sid");
            refused(
                named(&name).secure(true).domain("example.org").unwrap(),
                "Domain",
            );
            refused(named(&name).secure(true).path("/app").unwrap(), "Path=/");
            refused(named(&name).secure(true).path("/app/").unwrap(), "Path=/");
        }
        // __Secure- allows a Domain and any Path.
        named("__Secure-sid")
            .secure(true)
            .domain("example.org")
            .unwrap()
            .path("/app")
            .unwrap()
            .validate()
            .unwrap();
        // Not a prefix: anything else that merely looks similar.
        for name in [
            "_Host-sid",
            "__Hostsid",
            "x__Host-sid",
            "__Secure",
            "Host-sid",
        ] {
            named(name).validate().unwrap();
        }
    }

    #[test]
    fn finds_the_id_in_a_cookie_header() {
        let c = CookieConfig::new();
        assert_eq!(c.find_id(""), None);
        assert_eq!(c.find_id("other=1; sessions=2"), None);
        assert_eq!(c.find_id(&format!("session={ID}")), Some(Ok(id())));
        assert_eq!(
            c.find_id(&format!("a=1;session={ID} ; b=2")),
            Some(Ok(id()))
        );
        assert_eq!(c.find_id(&format!("session=\"{ID}\"")), Some(Ok(id())));
        // Names are case-sensitive.
        assert_eq!(c.find_id(&format!("Session={ID}")), None);
        // The first well-formed one wins over a malformed one before it.
        assert_eq!(
            c.find_id(&format!("session=junk; session={ID}")),
            Some(Ok(id()))
        );
        assert_eq!(c.find_id("session="), Some(Err(InvalidId::Empty)));
        assert_eq!(
            c.find_id("session=short; session=<x>"),
            Some(Err(InvalidId::Length { found: 5 }))
        );
        assert!(matches!(
            c.find_id(&format!("session={ID}x")),
            Some(Err(InvalidId::Length { found: 33 }))
        ));
        assert!(matches!(
            c.find_id(&format!("session=%{}", &ID[1..])),
            Some(Err(InvalidId::Character { position: 0 }))
        ));
    }
}
