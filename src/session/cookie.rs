//! The session cookie: `Set-Cookie` values to set and to delete it, and finding the id in a
//! `Cookie` request header.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::session::error::{Error, Result};
use crate::session::id::{InvalidId, SessionId};

/// The default cookie name (the name the original plugin used).
pub const DEFAULT_COOKIE_NAME: &str = "session";

/// The `SameSite` attribute of the cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SameSite {
    /// Sent only with requests from the application's own site.
    Strict,
    /// Also sent on top-level navigation from other sites (the default).
    Lax,
    /// Sent with every request; browsers require `Secure` with it.
    None,
}

impl SameSite {
    fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

/// How the session cookie is written.
///
/// Defaults: name `session`, `Path=/`, no `Domain`, `HttpOnly`, `SameSite=Lax`, not `Secure`
/// (turn it on for HTTPS with [`secure`](Self::secure)), and persistent: `Max-Age` and
/// `Expires` say when the session expires. Without persistence the cookie lasts until the
/// browser closes (or the session expires, whichever is first).
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
///     cookie.set_cookie(&id, Some(now + Duration::from_secs(3600)), now),
///     "sid=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA; Path=/; Max-Age=3600; \
///      Expires=Tue, 14 Nov 2023 23:13:20 GMT; Secure; HttpOnly; SameSite=Lax"
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
    secure: bool,
    http_only: bool,
    same_site: Option<SameSite>,
    persistent: bool,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: DEFAULT_COOKIE_NAME.to_owned(),
            path: "/".to_owned(),
            domain: None,
            secure: false,
            http_only: true,
            same_site: Some(SameSite::Lax),
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

    /// Whether to add `Secure` (default off; turn on when the site is served over HTTPS).
    pub fn secure(mut self, yes: bool) -> Self {
        self.secure = yes;
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

    /// Checks the combination of options: browsers silently drop a cookie that breaks one of
    /// these rules, and then no session ever sticks.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`], naming the rule, for `SameSite=None` without `Secure`; a
    /// name starting with `__Secure-` without `Secure`; a name starting with `__Host-`
    /// without `Secure`, with a `Domain`, or with a `Path` other than `/`. Prefixes are
    /// matched in any case (`__host-` counts), as browsers match them.
    pub fn validate(&self) -> Result<()> {
        if self.same_site == Some(SameSite::None) && !self.secure {
            return Err(invalid(
                "SameSite=None needs Secure (browsers reject the cookie otherwise)".to_owned(),
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
        if !self.secure {
            return Err(rule("needs Secure"));
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

    fn attributes(&self, out: &mut String) {
        out.push_str("; Path=");
        out.push_str(&self.path);
        if let Some(domain) = &self.domain {
            out.push_str("; Domain=");
            out.push_str(domain);
        }
    }

    fn flags(&self, out: &mut String) {
        if self.secure {
            out.push_str("; Secure");
        }
        if self.http_only {
            out.push_str("; HttpOnly");
        }
        if let Some(s) = self.same_site {
            out.push_str("; SameSite=");
            out.push_str(s.as_str());
        }
    }

    /// A `Set-Cookie` value carrying `id`. When the cookie is persistent and `expires` is
    /// given, `Max-Age` counts the whole seconds from `now` to `expires` (at least 0) and
    /// `Expires` names the same instant.
    pub fn set_cookie(
        &self,
        id: &SessionId,
        expires: Option<SystemTime>,
        now: SystemTime,
    ) -> String {
        let mut out = format!("{}={}", self.name, id);
        self.attributes(&mut out);
        if self.persistent
            && let Some(expires) = expires
        {
            let max_age = expires.duration_since(now).map_or(0, |d| d.as_secs());
            let at = expires
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            out.push_str(&format!("; Max-Age={max_age}; Expires={}", http_date(at)));
        }
        self.flags(&mut out);
        out
    }

    /// A `Set-Cookie` value that deletes the cookie (empty value, `Max-Age=0`, `Expires` in
    /// 1970), with the same `Path` and `Domain` so that it replaces the one that was set.
    pub fn removal(&self) -> String {
        let mut out = format!("{}=", self.name);
        self.attributes(&mut out);
        out.push_str("; Max-Age=0; Expires=");
        out.push_str(&http_date(0));
        self.flags(&mut out);
        out
    }

    /// The session id in a `Cookie` request header (join several such headers with `"; "`):
    /// `None` if no cookie has this name; otherwise the first well-formed id among the
    /// cookies of this name, or, if none is well formed, why the first is not. A value in
    /// double quotes is unquoted; nothing else is decoded.
    pub fn find_id(&self, cookie_header: &str) -> Option<Result<SessionId, InvalidId>> {
        let mut first_error = None;
        for pair in cookie_header.split(';') {
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            if name.trim_matches([' ', '\t']) != self.name {
                continue;
            }
            let value = value.trim_matches([' ', '\t']);
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            match SessionId::parse(value) {
                Ok(id) => return Some(Ok(id)),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map(Err)
    }
}

/// An IMF-fixdate (RFC 9110), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`, for Unix seconds.
pub(crate) fn http_date(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// (year, month 1–12, day 1–31) of the day `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const ID: &str = "abcdefghijklmnopqrstuvwxyz012345";

    fn id() -> SessionId {
        SessionId::parse(ID).unwrap()
    }

    #[test]
    fn http_dates() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(4_102_444_799), "Thu, 31 Dec 2099 23:59:59 GMT");
        // 2100 is not a leap year.
        assert_eq!(http_date(4_107_542_400), "Mon, 01 Mar 2100 00:00:00 GMT");
    }

    #[test]
    fn defaults_are_http_only_and_lax() {
        let c = CookieConfig::new();
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            c.set_cookie(&id(), Some(now + Duration::from_secs(86_400)), now),
            format!(
                "session={ID}; Path=/; Max-Age=86400; Expires=Mon, 07 Nov 1994 08:49:37 GMT; HttpOnly; SameSite=Lax"
            )
        );
        assert_eq!(
            c.set_cookie(&id(), None, now),
            format!("session={ID}; Path=/; HttpOnly; SameSite=Lax")
        );
        // An expiry already past gives Max-Age=0, never a negative number.
        assert!(
            c.set_cookie(&id(), Some(now - Duration::from_secs(5)), now)
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
            .persistent(false);
        let now = UNIX_EPOCH;
        assert_eq!(
            c.set_cookie(&id(), Some(now + Duration::from_secs(60)), now),
            format!("__Host-sid={ID}; Path=/app; Domain=example.org; Secure; SameSite=Strict")
        );
        assert_eq!(
            c.removal(),
            "__Host-sid=; Path=/app; Domain=example.org; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Secure; SameSite=Strict"
        );
        let none = CookieConfig::new().same_site(None);
        assert!(!none.set_cookie(&id(), None, now).contains("SameSite"));
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
