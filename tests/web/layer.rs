//! `SessionLayer` in process, through `tower::ServiceExt::oneshot`: what it does to
//! requests and responses that the demo does not show — streamed HTML bodies, compressed
//! ones, `Secure` behind a proxy, a save that fails, a missing layer.

use std::convert::Infallible;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use fastmmap::session::{CookieConfig, Secure, SessionStore, UrlRewriter};
use fastmmap::web::{SessionHandle, SessionLayer};
use http_body_util::BodyExt;
use tower::{Layer, ServiceExt};

use crate::common::{serial, temp_dir};

const BASE: &str = "http://app.test/";

fn store(dir: &tempfile::TempDir, urls: bool, cookie: CookieConfig) -> SessionStore {
    let mut b = SessionStore::builder()
        .path(dir.path().join("s.cache"))
        .cookie(cookie);
    if urls {
        b = b.urls(UrlRewriter::new(BASE).unwrap());
    }
    b.build().unwrap()
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

/// Sends `req` through `layer` around `routes` (the whole router, as URL ids need).
fn send(layer: &SessionLayer, routes: Router, req: Request) -> (StatusCode, HeaderMap, String) {
    let app = layer.clone().layer(routes);
    run(async move {
        let r = app.oneshot(req).await.unwrap();
        let (parts, body) = r.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(bytes.to_vec()).unwrap(),
        )
    })
}

fn get_req(path: &str) -> Request {
    Request::builder().uri(path).body(Body::empty()).unwrap()
}

const PAGE: &str =
    r#"<a href="/a">a</a><a href="b">b</a><img src="/logo.png"><a href="https://x.example/">x</a>"#;

async fn page(session: SessionHandle) -> Html<&'static str> {
    session.insert("seen", &true).unwrap();
    Html(PAGE)
}

/// A body in chunks, of unknown total size.
struct Chunks(std::collections::VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|c| Ok(http_body::Frame::data(c))))
    }
}

/// The same page in chunks of 5 bytes.
async fn streamed(session: SessionHandle) -> Response {
    session.insert("seen", &true).unwrap();
    let chunks = PAGE
        .as_bytes()
        .chunks(5)
        .map(Bytes::copy_from_slice)
        .collect();
    (
        [(header::CONTENT_TYPE, "text/html")],
        Body::new(Chunks(chunks)),
    )
        .into_response()
}

#[test]
fn a_streamed_page_is_rewritten_as_it_streams() {
    let _serial = serial();
    let dir = temp_dir();
    let layer = SessionLayer::new(store(&dir, true, CookieConfig::new()));
    let routes = Router::new()
        .route("/page", get(page))
        .route("/streamed", get(streamed));
    let (status, headers, body) = send(&layer, routes.clone(), get_req("/page"));
    assert_eq!(status, 200);
    let cookie = headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    let id = cookie["session=".len()..32 + "session=".len()].to_owned();
    // Whole: links keep their form; Content-Length is the rewritten length.
    assert_eq!(
        body,
        format!(
            r#"<a href="/a/-/{id}">a</a><a href="/b/-/{id}">b</a><img src="/logo.png"><a href="https://x.example/">x</a>"#
        )
    );
    assert_eq!(headers[header::CONTENT_LENGTH], body.len().to_string());
    // Streamed: links with the id are absolute; no Content-Length.
    let (status, headers, body) = send(&layer, routes, get_req(&format!("/streamed/-/{id}")));
    assert_eq!(status, 200);
    assert!(headers.get(header::CONTENT_LENGTH).is_none());
    assert_eq!(
        body,
        format!(
            r#"<a href="http://app.test/a/-/{id}">a</a><a href="http://app.test/b/-/{id}">b</a><img src="/logo.png"><a href="https://x.example/">x</a>"#
        )
    );
    assert!(
        headers.get(header::SET_COOKIE).is_some(),
        "came by URL: the cookie is offered"
    );
}

#[test]
fn compressed_bodies_and_clients_with_the_cookie_are_left_alone() {
    let _serial = serial();
    let dir = temp_dir();
    let layer = SessionLayer::new(store(&dir, true, CookieConfig::new()));
    async fn gzipped(session: SessionHandle) -> Response {
        session.insert("seen", &true).unwrap();
        (
            [
                (header::CONTENT_TYPE, "text/html"),
                (header::CONTENT_ENCODING, "gzip"),
            ],
            PAGE,
        )
            .into_response()
    }
    let routes = Router::new()
        .route("/gz", get(gzipped))
        .route("/page", get(page));
    let (_, _, body) = send(&layer, routes.clone(), get_req("/gz"));
    assert_eq!(body, PAGE);
    let (_, headers, _) = send(&layer, routes.clone(), get_req("/page"));
    let cookie = headers[header::SET_COOKIE].to_str().unwrap();
    let pair = cookie.split(';').next().unwrap().to_owned();
    let req = Request::builder()
        .uri("/page")
        .header(header::COOKIE, format!("theme=dark; {pair}"))
        .body(Body::empty())
        .unwrap();
    let (_, headers, body) = send(&layer, routes, req);
    assert_eq!(body, PAGE);
    assert!(headers.get(header::SET_COOKIE).is_none());
}

#[test]
fn secure_only_over_https_and_a_trusted_proxy() {
    let _serial = serial();
    let dir = temp_dir();
    let cookie = CookieConfig::new().secure_when(Secure::IfHttps);
    let routes = Router::new().route("/page", get(page));
    let forwarded = || {
        Request::builder()
            .uri("/page")
            .header("x-forwarded-proto", "https")
            .body(Body::empty())
            .unwrap()
    };
    let secure = |headers: &HeaderMap| {
        headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("; Secure")
    };
    let layer = SessionLayer::new(store(&dir, false, cookie));
    let (_, h, _) = send(&layer, routes.clone(), get_req("/page"));
    assert!(!secure(&h));
    let (_, h, _) = send(&layer, routes.clone(), forwarded());
    assert!(!secure(&h), "X-Forwarded-Proto is not trusted by default");
    let https = Request::builder()
        .uri("https://app.test/page")
        .body(Body::empty())
        .unwrap();
    let (_, h, _) = send(&layer, routes.clone(), https);
    assert!(secure(&h), "an https URI");
    let trusting = layer.trust_forwarded_proto(true);
    let (_, h, _) = send(&trusting, routes, forwarded());
    assert!(secure(&h));
}

#[test]
fn a_failed_save_is_a_500_and_a_missing_layer_too() {
    let _serial = serial();
    let dir = temp_dir();
    let s = store(&dir, false, CookieConfig::new());
    // A session larger than the cache's largest value (its overflow area's max_value_size)
    // cannot be saved; one larger than a page but within it can.
    let (huge, big) = (
        s.cache().max_value_size() + 1,
        s.cache().max_entry_size() + 1000,
    );
    assert!(big < huge);
    let layer = SessionLayer::new(s);
    let sized = |n: usize| {
        get(move |session: SessionHandle| async move {
            session.insert("data", &"x".repeat(n)).unwrap();
            "ok"
        })
    };
    let routes = Router::new()
        .route("/huge", sized(huge))
        .route("/big", sized(big));
    let (status, headers, body) = send(&layer, routes.clone(), get_req("/huge"));
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(headers.get(header::SET_COOKIE).is_none());
    assert!(body.contains("session could not be saved"), "{body}");
    let (status, headers, body) = send(&layer, routes, get_req("/big"));
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(headers.get(header::SET_COOKIE).is_some());

    let bare = Router::new().route("/page", get(page));
    let r = run(bare.oneshot(get_req("/page"))).unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[test]
fn a_handler_that_never_uses_the_session_leaves_no_trace() {
    let _serial = serial();
    let dir = temp_dir();
    let s = store(&dir, true, CookieConfig::new());
    let layer = SessionLayer::new(s.clone());
    async fn plain(session: SessionHandle) -> Html<&'static str> {
        assert!(!session.is_loaded());
        Html(PAGE)
    }
    let routes = Router::new().route("/plain", get(plain));
    let (_, headers, body) = send(&layer, routes, get_req("/plain"));
    assert_eq!(body, PAGE, "no session: no ids in links");
    assert!(headers.get(header::SET_COOKIE).is_none());
    assert_eq!(s.cache().keys().count(), 0);
}

#[test]
fn a_head_request_keeps_its_length() {
    let _serial = serial();
    let dir = temp_dir();
    let layer = SessionLayer::new(store(&dir, true, CookieConfig::new()));
    let routes = Router::new().route("/page", get(page));
    let req = Request::builder()
        .method("HEAD")
        .uri("/page")
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = send(&layer, routes, req);
    assert_eq!(status, 200);
    assert_eq!(body, "");
    assert_eq!(headers[header::CONTENT_LENGTH], PAGE.len().to_string());
}

#[test]
fn with_cookies_only_router_layer_is_enough() {
    let _serial = serial();
    let dir = temp_dir();
    let app = Router::new()
        .route("/page", get(page))
        .layer(SessionLayer::new(store(&dir, false, CookieConfig::new())));
    let r = run(app.clone().oneshot(get_req("/page"))).unwrap();
    let cookie = r.headers()[header::SET_COOKIE].to_str().unwrap();
    let pair = cookie.split(';').next().unwrap().to_owned();
    async fn seen(session: SessionHandle) -> String {
        format!("{:?}", session.get::<bool>("seen").unwrap())
    }
    let app = Router::new()
        .route("/seen", get(seen))
        .layer(SessionLayer::new(store(&dir, false, CookieConfig::new())));
    let req = Request::builder()
        .uri("/seen")
        .header(header::COOKIE, pair)
        .body(Body::empty())
        .unwrap();
    let r = run(app.oneshot(req)).unwrap();
    let body = run(r.into_body().collect()).unwrap().to_bytes();
    assert_eq!(&body[..], b"Some(true)");
}

#[test]
fn an_unreadable_record_fails_only_the_handlers_that_use_it() {
    let _serial = serial();
    let dir = temp_dir();
    let s = store(&dir, true, CookieConfig::new());
    let layer = SessionLayer::new(s.clone());
    let id = fastmmap::session::SessionId::generate().unwrap();
    let garbage = b"not a session record".to_vec();
    s.cache().set(&s.key(&id), &garbage).unwrap();
    async fn whoami(session: SessionHandle) -> Result<String, fastmmap::session::Error> {
        Ok(session.get::<String>("user")?.unwrap_or_default())
    }
    async fn retried(session: SessionHandle) -> &'static str {
        // A handler that shrugs the failure off: the layer must not try again either.
        assert!(session.get::<String>("user").is_err());
        assert!(session.insert("user", "eve").is_err());
        "fine"
    }
    let routes = || {
        Router::new()
            .route("/static", get(|| async { Html(PAGE) }))
            .route("/whoami", get(whoami))
            .route("/retried", get(retried))
    };
    let with_cookie = |path: &str| {
        Request::builder()
            .uri(path)
            .header(header::COOKIE, format!("session={id}"))
            .body(Body::empty())
            .unwrap()
    };
    // By cookie, and by an id in the URL (whose links the layer would check the id for).
    for req in [with_cookie("/static"), get_req(&format!("/static/-/{id}"))] {
        let (status, headers, body) = send(&layer, routes(), req);
        assert_eq!(status, StatusCode::OK);
        assert!(headers.get(header::SET_COOKIE).is_none(), "{headers:?}");
        assert_eq!(
            body, PAGE,
            "the id is not put into links it could not check"
        );
    }
    let (status, headers, body) = send(&layer, routes(), with_cookie("/whoami"));
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body.starts_with("the session could not be loaded: ") && body.contains("unreadable"),
        "{body}"
    );
    assert!(!body.contains(id.as_str()), "{body}");
    assert!(headers.get(header::SET_COOKIE).is_none(), "{headers:?}");
    let (status, headers, body) = send(&layer, routes(), with_cookie("/retried"));
    assert_eq!((status, body.as_str()), (StatusCode::OK, "fine"));
    assert!(headers.get(header::SET_COOKIE).is_none(), "{headers:?}");
    assert_eq!(
        s.cache().get(&s.key(&id)).unwrap(),
        Some(garbage),
        "left alone"
    );
}
