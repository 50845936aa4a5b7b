//! Adding the session id to the links of an HTML page, with a streaming HTML rewriter
//! (lol_html), not a regular expression: only real attributes of real tags are touched, never
//! text, comments or script bodies that merely look like links.

use std::borrow::Cow;

use lol_html::html_content::{ContentType, Element};
use lol_html::{HandlerResult, HtmlRewriter, MemorySettings, Settings, element};
use url::{Position, Url};

use crate::session::error::{Error, Result};
use crate::session::id::SessionId;
use crate::session::uri::{UrlRewriter, UrlStyle};

/// The elements and attributes whose URLs get the id, plus `<base href>`, which changes how
/// relative links resolve. `form` is matched with or without `action`: a form without one
/// submits to the page itself.
const SELECTOR: &str = "a[href], link[href], form, img[src], script[src], base[href]";

/// The most memory the HTML parser may use for buffering (a single tag cut across input
/// chunks). A body is handed over in one piece, so this bounds hostile input only.
pub const HTML_MEMORY_LIMIT: usize = 8 << 20;

/// HTML character references decoded in attribute values. A URL with any other reference is
/// left alone rather than guessed at.
const KNOWN_REFERENCES: &[(&str, char)] = &[
    ("amp", '&'),
    ("lt", '<'),
    ("gt", '>'),
    ("quot", '"'),
    ("apos", '\''),
];

/// Named references that HTML also decodes without a trailing `;` (its legacy list), where
/// that makes a difference in an attribute: a link holding one of them unterminated is left
/// alone, since whether the browser decodes it depends on what follows.
const LEGACY_REFERENCES: &[&str] = &[
    "AElig", "AMP", "Aacute", "Acirc", "Agrave", "Aring", "Atilde", "Auml", "COPY", "Ccedil",
    "ETH", "Eacute", "Ecirc", "Egrave", "Euml", "GT", "Iacute", "Icirc", "Igrave", "Iuml", "LT",
    "Ntilde", "Oacute", "Ocirc", "Ograve", "Oslash", "Otilde", "Ouml", "QUOT", "REG", "THORN",
    "Uacute", "Ucirc", "Ugrave", "Uuml", "Yacute", "aacute", "acirc", "acute", "aelig", "agrave",
    "amp", "aring", "atilde", "auml", "brvbar", "ccedil", "cedil", "cent", "copy", "curren", "deg",
    "divide", "eacute", "ecirc", "egrave", "eth", "euml", "frac12", "frac14", "frac34", "gt",
    "iacute", "icirc", "iexcl", "igrave", "iquest", "iuml", "laquo", "lt", "macr", "micro",
    "middot", "nbsp", "not", "ntilde", "oacute", "ocirc", "ograve", "ordf", "ordm", "oslash",
    "otilde", "ouml", "para", "plusmn", "pound", "quot", "raquo", "reg", "sect", "shy", "sup1",
    "sup2", "sup3", "szlig", "thorn", "times", "uacute", "ucirc", "ugrave", "uml", "uuml",
    "yacute", "yen", "yuml",
];

/// The value of an attribute as the browser sees it, or `None` if it holds a character
/// reference this function does not decode with certainty.
fn decode_attribute(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.contains('&') {
        return Some(Cow::Borrowed(raw));
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp + 1..];
        if let Some(num) = rest.strip_prefix('#') {
            let (digits, radix, skip) = match num.strip_prefix(['x', 'X']) {
                Some(hex) => (hex, 16, 2),
                None => (num, 10, 1),
            };
            let len = digits
                .bytes()
                .take_while(|b| (*b as char).is_digit(radix))
                .count();
            if len == 0 {
                out.push('&');
                continue;
            }
            let c = u32::from_str_radix(&digits[..len], radix)
                .ok()
                .and_then(char::from_u32)
                .filter(|&c| c != '\0')?;
            out.push(c);
            rest = &rest[skip + len..];
            rest = rest.strip_prefix(';').unwrap_or(rest);
            continue;
        }
        let len = rest.bytes().take_while(u8::is_ascii_alphanumeric).count();
        let name = &rest[..len];
        let after = &rest[len..];
        if len == 0 {
            out.push('&');
        } else if let Some(after_semicolon) = after.strip_prefix(';') {
            let (_, c) = KNOWN_REFERENCES.iter().find(|(n, _)| *n == name)?;
            out.push(*c);
            rest = after_semicolon;
        } else if !after.starts_with('=') && LEGACY_REFERENCES.contains(&name) {
            // `&copy` not followed by `=` is decoded by browsers: do not guess.
            return None;
        } else {
            out.push('&');
        }
    }
    out.push_str(rest);
    Some(Cow::Owned(out))
}

/// A URL written into an attribute: `&` becomes `&amp;` (the rewriter quotes the value and
/// escapes `"`; a serialised URL holds no `<`, `>` or `"`).
fn encode_attribute(url: &str) -> Cow<'_, str> {
    if url.contains('&') {
        Cow::Owned(url.replace('&', "&amp;"))
    } else {
        Cow::Borrowed(url)
    }
}

impl UrlRewriter {
    /// Adds `id` to the links of an HTML page: `a` and `link` `href`, `form` `action`, `img`
    /// and `script` `src` — each only if it points under the base URL, is not a skipped asset
    /// and does not carry an id already (see
    /// [`rewrite_location`](Self::rewrite_location) for the rules). `document` is the page's
    /// own URL without the id ([`document_url`](Self::document_url)); a `<base href>` in
    /// the page is honoured. In query style a `GET` form under the base also gets a hidden
    /// field with the id, because browsers drop the query of a `GET` form's action.
    ///
    /// The body is read as UTF-8 (bytes that are not pass through untouched). Everything
    /// other than the rewritten attributes is copied as it was.
    ///
    /// # Errors
    /// [`Error::Html`] if the parser gives up (markup it cannot parse unambiguously, or a tag
    /// beyond [`HTML_MEMORY_LIMIT`]); the caller still has the body as it was.
    pub fn rewrite_html(&self, body: &[u8], document: &Url, id: &SessionId) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(body.len() + body.len() / 8);
        // The first <base href> (browsers ignore the rest): `None` until one is seen; then
        // the URL it sets, or `None` inside if it does not parse (then the page address
        // counts, as in browsers).
        let mut base_element: Option<Option<Url>> = None;
        let handler = element!(SELECTOR, |el| {
            let tag = el.tag_name();
            let attr = match tag.as_str() {
                "form" => "action",
                "img" | "script" => "src",
                _ => "href",
            };
            let raw = el.get_attribute(attr);
            if tag == "base" {
                if base_element.is_none() {
                    let href = raw.as_deref().and_then(decode_attribute);
                    base_element = Some(href.and_then(|h| document.join(h.trim()).ok()));
                }
                return Ok(());
            }
            let (against, against_address) = match &base_element {
                Some(Some(base)) => (base, false),
                _ => (document, true),
            };
            let Some(value) = raw
                .as_deref()
                .map_or(Some(Cow::Borrowed("")), decode_attribute)
            else {
                return Ok(());
            };
            if tag == "form" {
                self.rewrite_form(el, &value, document, id)?;
                return Ok(());
            }
            if let Some(link) = self.rewrite_link(&value, against, against_address, id) {
                el.set_attribute(attr, &encode_attribute(&link.text))?;
            }
            Ok(())
        });
        let settings = Settings::new()
            .append_element_content_handler(handler)
            .with_memory_settings(
                MemorySettings::new().with_max_allowed_memory_usage(HTML_MEMORY_LIMIT),
            );
        let mut rewriter = HtmlRewriter::new(settings, |chunk: &[u8]| out.extend_from_slice(chunk));
        let html_error = |e: lol_html::errors::RewritingError| Error::Html {
            reason: e.to_string(),
        };
        rewriter.write(body).map_err(html_error)?;
        rewriter.end().map_err(html_error)?;
        Ok(out)
    }

    /// A form submits to its `action`, or to the page itself when it has none (whatever
    /// `<base href>` says).
    fn rewrite_form(
        &self,
        el: &mut Element<'_, '_>,
        action: &str,
        document: &Url,
        id: &SessionId,
    ) -> HandlerResult {
        let target = if action.trim().is_empty() {
            &document[Position::BeforePath..]
        } else {
            action
        };
        let Some(link) = self.rewrite_link(target, document, true, id) else {
            return Ok(());
        };
        el.set_attribute("action", &encode_attribute(&link.text))?;
        let method = el.get_attribute("method").unwrap_or_default();
        let method = method.trim();
        if link.with_id
            && self.url_style() == UrlStyle::Query
            && !method.eq_ignore_ascii_case("post")
            && !method.eq_ignore_ascii_case("dialog")
        {
            el.prepend(
                &format!(
                    r#"<input type="hidden" name="{}" value="{id}">"#,
                    self.param_name()
                ),
                ContentType::Html,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    fn id() -> SessionId {
        SessionId::parse(ID).unwrap()
    }

    fn rewrite(rw: &UrlRewriter, html: &str) -> String {
        let doc = rw.document_url("/app/page", None);
        String::from_utf8(rw.rewrite_html(html.as_bytes(), &doc, &id()).unwrap()).unwrap()
    }

    fn path_rw() -> UrlRewriter {
        UrlRewriter::new("http://localhost:3000/app/").unwrap()
    }

    #[test]
    fn decodes_only_what_it_is_sure_of() {
        assert_eq!(decode_attribute("/a?x=1").as_deref(), Some("/a?x=1"));
        assert_eq!(
            decode_attribute("/a?x=1&amp;y=2").as_deref(),
            Some("/a?x=1&y=2")
        );
        assert_eq!(
            decode_attribute("/a?x=1&y=2").as_deref(),
            Some("/a?x=1&y=2")
        );
        assert_eq!(
            decode_attribute("/a?x=&#38;&#x26;&#X26").as_deref(),
            Some("/a?x=&&&")
        );
        assert_eq!(
            decode_attribute("&quot;&lt;&gt;&apos;").as_deref(),
            Some("\"<>'")
        );
        assert_eq!(
            decode_attribute("a & b &#; &").as_deref(),
            Some("a & b &#; &")
        );
        assert_eq!(
            decode_attribute("/a?copy=1&not=2").as_deref(),
            Some("/a?copy=1&not=2")
        );
        assert_eq!(
            decode_attribute("/a?x=1&notit").as_deref(),
            Some("/a?x=1&notit")
        );
        // Unknown or undecidable references: give up.
        assert_eq!(decode_attribute("/a?x=&eacute;"), None);
        assert_eq!(decode_attribute("/a?x=1&copy"), None);
        assert_eq!(decode_attribute("/a?x=&#0;"), None);
        assert_eq!(decode_attribute("/a?x=&#xD800;"), None);
        assert_eq!(decode_attribute("/a?x=&#99999999999;"), None);
    }

    #[test]
    fn rewrites_the_listed_elements() {
        let html = r#"<html><head><link rel="stylesheet" href="/app/site.css"><script src="/app/app.js"></script></head>
<body><a href="/app/a">a</a><A HREF='/app/b'>b</A><a href=/app/c>c</a>
<img src="/app/captcha"><img src="/app/logo.png"><form action="/app/post" method="post"></form>
<iframe src="/app/frame"></iframe><a name="x">no href</a></body></html>"#;
        let out = rewrite(&path_rw(), html);
        for want in [
            format!(r#"href="/app/site.css/-/{ID}""#),
            format!(r#"src="/app/app.js/-/{ID}""#),
            format!(r#"href="/app/a/-/{ID}""#),
            format!(r#"HREF="/app/b/-/{ID}""#),
            format!(r#"href="/app/c/-/{ID}""#),
            format!(r#"src="/app/captcha/-/{ID}""#),
            format!(r#"action="/app/post/-/{ID}""#),
        ] {
            assert!(out.contains(&want), "missing {want} in {out}");
        }
        assert!(out.contains(r#"<img src="/app/logo.png">"#), "{out}");
        assert!(out.contains(r#"<iframe src="/app/frame">"#), "{out}");
        assert!(out.contains(r#"<a name="x">no href</a>"#), "{out}");
    }

    #[test]
    fn leaves_text_comments_and_scripts_alone() {
        let html = r#"<p>see href="/app/x"</p><!-- <a href="/app/y"> --><script>var s = '<a href="/app/z">';</script><textarea><a href="/app/t"></textarea>"#;
        assert_eq!(rewrite(&path_rw(), html), html);
    }

    #[test]
    fn base_href_changes_resolution() {
        let html =
            r#"<base href="/app/sub/"><a href="x">x</a><base href="/other/"><a href="y">y</a>"#;
        let out = rewrite(&path_rw(), html);
        assert!(
            out.contains(&format!(r#"href="/app/sub/x/-/{ID}""#)),
            "{out}"
        );
        assert!(
            out.contains(&format!(r#"href="/app/sub/y/-/{ID}""#)),
            "{out}"
        );
        let external = r#"<base href="https://cdn.example/"><a href="x">x</a><img src="y.png">"#;
        assert_eq!(rewrite(&path_rw(), external), external);
        // Under a <base href>, relative links resolve against it, not against the address:
        // they need no rewriting to an absolute path.
        let same_site = r#"<base href="/app/"><img src="logo.png">"#;
        assert_eq!(rewrite(&path_rw(), same_site), same_site);
        // A <base href> that does not parse is ignored, as browsers do.
        let broken = r#"<base href="http://[::1"><img src="logo.png">"#;
        assert_eq!(
            rewrite(&path_rw(), broken),
            r#"<base href="http://[::1"><img src="/app/logo.png">"#
        );
    }

    #[test]
    fn query_strings_are_entity_encoded() {
        let rw = path_rw().style(UrlStyle::Query);
        let out = rewrite(
            &rw,
            r#"<a href="/app/a?x=1&amp;y=2">a</a><a href="/app/b?&eacute;=1">b</a>"#,
        );
        assert!(
            out.contains(&format!(r#"href="/app/a?x=1&amp;y=2&amp;sid={ID}""#)),
            "{out}"
        );
        assert!(out.contains(r#"href="/app/b?&eacute;=1""#), "{out}");
    }

    #[test]
    fn get_forms_get_a_hidden_field_in_query_style() {
        let rw = path_rw().style(UrlStyle::Query);
        let out = rewrite(
            &rw,
            r#"<form action="/app/search"><input name="q"></form><form method="POST" action="/app/p"></form><form action="https://elsewhere.example/"></form><form></form>"#,
        );
        let hidden = format!(r#"<input type="hidden" name="sid" value="{ID}">"#);
        assert!(
            out.contains(&format!(
                r#"<form action="/app/search?sid={ID}">{hidden}<input name="q">"#
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                r#"<form method="POST" action="/app/p?sid={ID}"></form>"#
            )),
            "{out}"
        );
        assert!(
            out.contains(r#"<form action="https://elsewhere.example/"></form>"#),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                r#"<form action="/app/page?sid={ID}">{hidden}</form>"#
            )),
            "{out}"
        );
    }
}
