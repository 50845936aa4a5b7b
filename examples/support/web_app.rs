//! The demo web application of `examples/web.rs`, shared with `tests/web/` (which serve it
//! in forked workers of their own): a few routes over a `SessionLayer`.
//!
//! Every response carries `X-Worker: PID`. Routes (GET and POST alike):
//!
//! - `/count`: increments a per-session counter (atomically: concurrent requests of one
//!   session in any worker never lose an increment) and answers
//!   `<p>count=N pid=PID</p><a href="/count">again</a>`.
//! - `/login` (form field `user`): moves the session to a new id, stores the user, and
//!   redirects (303) to `/whoami`; without a user, a login form.
//! - `/whoami`: `user=NAME` (`user=` when anonymous).
//! - `/flash`: with a field `msg`, stores a flash message and redirects (303) to `/flash`;
//!   without, answers `flash=MSG` once and `flash=` after.
//! - `/logout`: deletes the session and redirects (303) to `/whoami`.
//! - `/`: a page of links and forms to all of the above (for a browser).
//! - `/static/app.css`: a static asset that never touches the session.

use axum::Router;
use axum::extract::{Form, rejection::FormRejection};
use axum::http::{HeaderValue, header};
use axum::middleware::map_response;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::any;
use fastmmap::session::{Error as SessionError, SessionStore, UrlRewriter};
use fastmmap::web::{SessionHandle, SessionLayer};
use serde::Deserialize;
use tower_layer::Layer;

/// The session store of the demo: sessions in the file at `path`, cookies, and with
/// `url_sessions` ids in URLs (path style, `/count/-/ID`) for clients that send no cookie,
/// under `base` (the server's own URL, `http://127.0.0.1:8080/`).
pub fn store(
    path: &std::path::Path,
    base: &str,
    url_sessions: bool,
) -> Result<SessionStore, SessionError> {
    let mut builder = SessionStore::builder().path(path);
    if url_sessions {
        builder = builder.urls(UrlRewriter::new(base)?);
    }
    builder.build()
}

/// The demo's routes over `store`.
pub fn app(store: SessionStore) -> Router {
    let routes = Router::new()
        .route("/", any(home))
        .route("/count", any(count))
        .route("/login", any(login))
        .route("/whoami", any(whoami))
        .route("/flash", any(flash))
        .route("/logout", any(logout))
        .route("/static/app.css", any(stylesheet));
    // The session layer goes around the whole router, not through `Router::layer` (which
    // runs after routing): it takes ids out of paths, so it must see them first.
    Router::new()
        .fallback_service(SessionLayer::new(store).layer(routes))
        .layer(map_response(worker_header))
}

async fn worker_header(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert("x-worker", HeaderValue::from(std::process::id()));
    response
}

/// `&`, `<`, `>` and `"` as entities.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Adds one to the session's counter `key`, atomically; returns the new count.
fn increment(session: &SessionHandle, key: &str) -> Result<u64, SessionError> {
    session.update(|s| {
        let n = s.get::<u64>(key)?.unwrap_or(0) + 1;
        s.insert(key, &n)?;
        Ok(n)
    })?
}

async fn home(session: SessionHandle) -> Result<Html<String>, SessionError> {
    let visits = increment(&session, "visits")?;
    let user: String = session.get("user")?.unwrap_or_default();
    Ok(Html(format!(
        r#"<!doctype html>
<html><head><title>fastmmap sessions</title><link rel="stylesheet" href="/static/app.css"></head>
<body>
<p id="state">visits={visits} user={user}</p>
<p><a id="home" href="/">home</a> <a id="count" href="/count">count</a> <a id="whoami" href="/whoami">whoami</a> <a id="show-flash" href="/flash">flash</a></p>
<form id="login" method="post" action="/login"><input name="user" value=""><button>log in</button></form>
<form id="flash" method="post" action="/flash"><input name="msg" value=""><button>flash</button></form>
<form id="logout" method="post" action="/logout"><button>log out</button></form>
</body></html>
"#,
        user = escape(&user),
    )))
}

async fn count(session: SessionHandle) -> Result<Html<String>, SessionError> {
    let n = increment(&session, "count")?;
    Ok(Html(format!(
        r#"<p>count={n} pid={}</p><a href="/count">again</a>"#,
        std::process::id()
    )))
}

#[derive(Deserialize)]
struct LoginForm {
    user: Option<String>,
}

async fn login(
    session: SessionHandle,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Result<Response, SessionError> {
    let user = form
        .ok()
        .and_then(|Form(f)| f.user)
        .filter(|u| !u.is_empty());
    let Some(user) = user else {
        return Ok(Html(
            r#"<form method="post" action="/login"><input name="user"><button>log in</button></form>"#,
        )
        .into_response());
    };
    session.change_id()?;
    session.insert("user", &user)?;
    Ok(Redirect::to("/whoami").into_response())
}

async fn whoami(session: SessionHandle) -> Result<Response, SessionError> {
    let user: String = session.get("user")?.unwrap_or_default();
    Ok(text(format!("user={user}")))
}

#[derive(Deserialize)]
struct FlashForm {
    msg: Option<String>,
}

async fn flash(
    session: SessionHandle,
    form: Result<Form<FlashForm>, FormRejection>,
) -> Result<Response, SessionError> {
    if let Some(msg) = form.ok().and_then(|Form(f)| f.msg) {
        session.flash("msg", &msg)?;
        return Ok(Redirect::to("/flash").into_response());
    }
    let msg: String = session.get_flash("msg")?.unwrap_or_default();
    Ok(text(format!("flash={msg}")))
}

async fn logout(session: SessionHandle) -> Result<Redirect, SessionError> {
    session.invalidate()?;
    Ok(Redirect::to("/whoami"))
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css")],
        "body { font-family: sans-serif }\n",
    )
        .into_response()
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}
