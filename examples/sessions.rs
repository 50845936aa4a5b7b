//! The session request cycle, printed step by step: a shop with a cart, a flash message, a
//! login and a logout, for a browser with cookies and for one without.
//!
//! Each request goes through [`SessionStore::begin`] (cookie or URL in, session loaded) and
//! [`SessionStore::finish`] (session saved; `Set-Cookie`, `Location` and HTML body out). One
//! request is handled by another process — this program run again as a worker — which
//! opens the same cache file, as a worker of a prefork server would.
//!
//! ```text
//! cargo run --release --example sessions --features session
//! ```
//!
//! Exits nonzero if any step does not behave as described.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use fastmmap::Cache;
use fastmmap::session::{NewReason, Origin, Request, Response, SessionStore, UrlRewriter, Visit};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const BASE: &str = "http://localhost:3000/";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.as_slice() {
        [mode, path, cookie] if mode == "--worker" => worker(Path::new(path), cookie),
        [] => run(),
        _ => Err("usage: sessions   (the --worker mode is for the program's own use)".into()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessions: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(ok: bool, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {what}").into())
    }
}

/// The store every process builds over the shared file: cookies, plus ids in URLs (path
/// style) for browsers that refuse cookies.
fn store(path: &Path) -> Result<SessionStore> {
    Ok(SessionStore::builder()
        .path(path)
        .urls(UrlRewriter::new(BASE)?)
        .build()?)
}

fn show_request(n: u32, req: &Request<'_>) {
    println!("── request {n} (pid {}) ──", std::process::id());
    let query = req.query.map(|q| format!("?{q}")).unwrap_or_default();
    println!("> GET {}{query}", req.path);
    if let Some(cookie) = req.cookie {
        println!("> Cookie: {cookie}");
    }
}

fn show_response(visit: &Visit, r: &Response) {
    match visit.loaded() {
        Some(session) => {
            let origin = match session.origin() {
                Origin::Loaded => "loaded".to_owned(),
                Origin::New(reason) => format!("new ({reason:?})"),
            };
            println!("  session {} — {origin}", session.id());
        }
        None => println!("  session not used"),
    }
    let reason = match r.status {
        200 => " OK",
        302 => " Found",
        303 => " See Other",
        _ => "",
    };
    println!("< {}{reason}", r.status);
    if let Some(location) = &r.location {
        println!("< Location: {location}");
    }
    if let Some(cookie) = &r.set_cookie {
        println!("< Set-Cookie: {cookie}");
    }
    if !r.body.is_empty() {
        for line in String::from_utf8_lossy(&r.body).lines() {
            println!("<   {line}");
        }
    }
    println!();
}

/// `name=value` of a `Set-Cookie`: what the browser sends back.
fn cookie_of(r: &Response) -> Result<String> {
    let set = r.set_cookie.as_ref().ok_or("expected a Set-Cookie")?;
    Ok(set.stripped().to_string())
}

fn run() -> Result<()> {
    let dir =
        std::env::temp_dir().join(format!("fastmmap-sessions-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("sessions.cache");
    let result = shop(&path);
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    println!("all steps behaved as described");
    Ok(())
}

fn shop(path: &PathBuf) -> Result<()> {
    let store = store(path)?;

    // 1. A first visit: no cookie, so a new session. The handler puts an item in the cart,
    //    leaves a flash message and redirects.
    let req = Request::new("/cart/add?item=42");
    show_request(1, &req);
    let mut visit = store.begin(&req);
    check(
        visit.session()?.origin() == &Origin::New(NewReason::NoId),
        "a first visit has no session",
    )?;
    visit.session()?.insert("cart", &vec![42])?;
    visit
        .session()?
        .flash("notice", "Item 42 is in your cart")?;
    let mut r = Response::redirect(303, "/cart");
    store.finish(&mut visit, &mut r)?;
    show_response(&visit, &r);
    let cookie = cookie_of(&r)?;
    // The server cannot know yet whether this browser keeps cookies, so the redirect carries
    // the id as well; once the browser sends the cookie, URLs are left alone.
    check(
        r.location.as_deref() == Some(&*format!("/cart/-/{}", visit.session()?.id())),
        "a first visit's redirect carries the id",
    )?;
    check(
        cookie_of(&r)?.ends_with(visit.session()?.id().as_str()),
        "and the cookie is set",
    )?;

    // 2. The browser follows the redirect with its cookie, and another process serves it.
    let status = Command::new(std::env::current_exe()?)
        .args(["--worker", &path.to_string_lossy(), &cookie])
        .status()?;
    check(status.success(), "the worker process served request 2")?;

    // 3. The user logs in: the session moves to a new id, so an id known before is useless.
    let req = Request::new("/login").cookie(&cookie);
    show_request(3, &req);
    let mut visit = store.begin(&req);
    let old = visit.change_id()?;
    visit.session()?.insert("user", "ada")?;
    let mut r = Response::redirect(302, "/");
    store.finish(&mut visit, &mut r)?;
    show_response(&visit, &r);
    let logged_in = cookie_of(&r)?;
    check(logged_in != cookie, "logging in changes the id")?;
    let mut stale = store.begin(&Request::new("/").cookie(&format!("session={old}")));
    check(
        stale.session()?.origin() == &Origin::New(NewReason::Unknown),
        "the old id no longer works",
    )?;

    // 4. A forged cookie: a malformed id is never looked up, and never echoed back.
    let req = Request::new("/").cookie("session=<script>alert(1)</script>");
    show_request(4, &req);
    let mut visit = store.begin(&req);
    let mut r = Response::html("<p>Welcome</p>");
    store.finish(&mut visit, &mut r)?;
    show_response(&visit, &r);
    check(
        matches!(
            visit.session()?.origin(),
            Origin::New(NewReason::Malformed(_))
        ),
        "a malformed id gives no session",
    )?;
    check(
        r.set_cookie
            .as_ref()
            .map(ToString::to_string)
            .is_some_and(|c| c.contains("Max-Age=0") && !c.contains("script")),
        "the forged cookie is deleted, not echoed",
    )?;

    // 5. A browser without cookies: the id travels in the links of the page.
    let req = Request::new("/");
    show_request(5, &req);
    let mut visit = store.begin(&req);
    visit.session()?.insert("cart", &vec![7])?;
    let mut r = Response::html(
        "<a href=\"/cart\">Cart</a> <img src=\"/logo.png\"> <a href=\"https://elsewhere.example/\">Elsewhere</a>",
    );
    store.finish(&mut visit, &mut r)?;
    show_response(&visit, &r);
    let id = *visit.session()?.id();
    let page = String::from_utf8(r.body.clone())?;
    check(
        page.contains(&format!("href=\"/cart/-/{id}\"")),
        "internal links carry the id",
    )?;
    check(page.contains("src=\"/logo.png\""), "images do not")?;
    check(
        page.contains("href=\"https://elsewhere.example/\""),
        "external links do not",
    )?;

    // 6. ... and comes back through such a link.
    let target = format!("/cart/-/{id}");
    let req = Request::new(&target);
    show_request(6, &req);
    let mut visit = store.begin(&req);
    check(visit.path() == "/cart", "the id is taken out of the path")?;
    check(
        visit.session()?.get::<Vec<u32>>("cart")? == Some(vec![7]),
        "the session is found",
    )?;
    let mut r = Response::redirect(303, "/checkout");
    store.finish(&mut visit, &mut r)?;
    show_response(&visit, &r);
    check(
        r.location.as_deref() == Some(&*format!("/checkout/-/{id}")),
        "the redirect carries the id",
    )?;

    // 7. Logout: the session and the cookie are deleted.
    let req = Request::new("/logout").cookie(&logged_in);
    show_request(7, &req);
    let mut visit = store.begin(&req);
    check(
        visit.session()?.get::<String>("user")?.as_deref() == Some("ada"),
        "still logged in",
    )?;
    visit.session()?.invalidate();
    let mut r = Response::redirect(303, "/");
    store.finish(&mut visit, &mut r)?;
    show_response(&visit, &r);
    check(
        r.set_cookie
            .as_ref()
            .map(ToString::to_string)
            .is_some_and(|c| c.contains("Max-Age=0")),
        "logout deletes the cookie",
    )?;
    check(
        !store
            .cache()
            .contains_key(&store.key(visit.session()?.id()))?,
        "logout deletes the session",
    )?;
    check(Cache::open(path)?.stats()?.resets == 0, "no damaged pages")?;
    Ok(())
}

/// Request 2, in its own process.
fn worker(path: &Path, cookie: &str) -> Result<()> {
    let store = store(path)?;
    let req = Request::new("/cart").cookie(cookie);
    show_request(2, &req);
    let mut visit = store.begin(&req);
    check(
        visit.session()?.origin() == &Origin::Loaded,
        "the session made by the parent is here",
    )?;
    let notice: Option<String> = visit.get_flash("notice")?;
    let cart: Vec<u32> = visit.session()?.get("cart")?.unwrap_or_default();
    check(
        notice.is_some() && cart == [42],
        "the cart and the flash message arrived",
    )?;
    let mut r = Response::html(format!(
        "<p class=\"flash\">{}</p>\n<p>Cart: {cart:?}</p>",
        notice.unwrap_or_default()
    ));
    store.finish(&mut visit, &mut r)?;
    show_response(&visit, &r);
    check(r.set_cookie.is_none(), "nothing changed: no Set-Cookie")?;
    check(
        !String::from_utf8_lossy(&r.body).contains("/-/"),
        "a browser that sent the cookie gets no ids in URLs",
    )?;
    let mut again = store.begin(&req);
    check(
        again.get_flash::<String>("notice")?.is_none(),
        "a flash message is shown once",
    )?;
    Ok(())
}
