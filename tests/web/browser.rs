//! A real browser against the demo: Debian's `chromium`, headless, with cookies blocked,
//! driven over the DevTools protocol (a websocket, `tungstenite`). It opens the demo, clicks
//! links and submits a form, and must stay in one session through ids in URLs.
//!
//! Skipped (loudly) when chromium is missing, unless `FASTMMAP_REQUIRE_BROWSER=1` (CI sets
//! it; `.ci/run` installs `chromium`). Everything is bounded: loopback addresses only, a
//! timeout on every wait, and the browser's whole process group is killed at the end.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use crate::common::{serial, temp_dir};
use crate::{demo_url_server, server::Server};

/// How long any one step may take.
const STEP: Duration = Duration::from_secs(30);

/// The chromium binary, if there is one.
fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// The chromium binary for `test`; without one, says loudly that `test` is skipped, or fails
/// under `FASTMMAP_REQUIRE_BROWSER=1`.
pub(crate) fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    let binary = chromium();
    if binary.is_none() {
        assert!(
            !crate::common::required("FASTMMAP_REQUIRE_BROWSER"),
            "FASTMMAP_REQUIRE_BROWSER=1 but chromium is not installed (apt-get install chromium)"
        );
        eprintln!(
            "\n==================================================================\n\
             SKIPPED: {test} needs chromium (apt-get install chromium);\n\
             set FASTMMAP_REQUIRE_BROWSER=1 to make its absence a failure.\n\
             ==================================================================\n"
        );
    }
    binary
}

/// A headless chromium with a fresh profile that blocks every cookie, killed (with its
/// whole process group) on drop.
pub(crate) struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: WebSocket<TcpStream>,
    next_id: u64,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kills the process group of the browser we started (its own group).
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A profile whose preferences block cookies for every site (`cookies: 2`, "block"), as a
/// user who refuses cookies would set it.
fn profile_blocking_cookies() -> tempfile::TempDir {
    let dir = temp_dir();
    let default = dir.path().join("Default");
    std::fs::create_dir_all(&default).unwrap();
    let prefs = json!({
        "profile": {
            "default_content_setting_values": { "cookies": 2 },
            "block_third_party_cookies": true
        }
    });
    std::fs::write(default.join("Preferences"), prefs.to_string()).unwrap();
    dir
}

impl Browser {
    pub(crate) fn launch(binary: &Path) -> Browser {
        let profile = profile_blocking_cookies();
        let mut child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start chromium");
        // Chromium prints "DevTools listening on ws://…" on stderr; read it in a thread (the
        // rest of stderr is drained there too, so the browser never blocks on it).
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = match rx.recv_timeout(STEP) {
            Ok(url) => url,
            Err(_) => {
                // SAFETY: as in Drop.
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                let _ = child.wait();
                panic!("chromium printed no DevTools URL within {STEP:?}");
            }
        };
        let host_port = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .expect("a ws:// URL");
        let addr: SocketAddr = host_port.parse().expect("a loopback address");
        assert!(addr.ip().is_loopback(), "{addr}");
        let stream = TcpStream::connect_timeout(&addr, STEP).expect("connect to DevTools");
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        stream.set_write_timeout(Some(STEP)).unwrap();
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("DevTools websocket");
        Browser {
            child,
            _profile: profile,
            ws,
            next_id: 0,
        }
    }

    /// Sends a DevTools command (to a page when `session` is given) and waits for its result,
    /// or the error DevTools answers with.
    fn try_call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .expect("send a DevTools command");
        let deadline = Instant::now() + STEP;
        loop {
            assert!(Instant::now() < deadline, "no answer to {method}");
            let text = match self.ws.read() {
                Ok(Message::Text(t)) => t,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => panic!("DevTools connection: {e}"),
            };
            let reply: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if reply["id"] == json!(id) {
                return match reply.get("error") {
                    Some(error) => Err(error.clone()),
                    None => Ok(reply["result"].clone()),
                };
            }
        }
    }

    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.try_call(session, method, params)
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }
}

/// A page (tab) of the browser.
pub(crate) struct Page<'b> {
    browser: &'b mut Browser,
    session: String,
}

impl Page<'_> {
    pub(crate) fn open(browser: &mut Browser) -> Page<'_> {
        let target = browser.call(None, "Target.createTarget", json!({ "url": "about:blank" }));
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = browser.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        );
        let session = attached["sessionId"].as_str().unwrap().to_owned();
        let mut page = Page { browser, session };
        page.call("Page.enable", json!({}));
        page.call("Network.enable", json!({}));
        page
    }

    pub(crate) fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.browser.call(Some(&session), method, params)
    }

    /// The value of a JavaScript expression in the page; `None` if the page went away while
    /// it ran (a click that navigates, an evaluation during a navigation).
    fn try_eval(&mut self, expression: &str) -> Option<Value> {
        let session = self.session.clone();
        let r = self
            .browser
            .try_call(
                Some(&session),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .ok()?;
        Some(r["result"]["value"].clone())
    }

    pub(crate) fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .unwrap_or_else(|| panic!("the page went away while evaluating {expression}"))
    }

    /// Runs an action that may navigate away (a click, a form submission).
    pub(crate) fn act(&mut self, expression: &str) {
        let _ = self.try_eval(expression);
    }

    /// `(address, text)` of the page once it is loaded and `done(address, text)` holds.
    pub(crate) fn wait_for(
        &mut self,
        what: &str,
        done: impl Fn(&str, &str) -> bool,
    ) -> (String, String) {
        let deadline = Instant::now() + STEP;
        loop {
            let state = self
                .try_eval(
                    "JSON.stringify([document.readyState, location.href, \
                     document.body ? document.body.innerText : ''])",
                )
                .unwrap_or(Value::Null);
            if let Some(s) = state.as_str()
                && let Ok(Value::Array(v)) = serde_json::from_str::<Value>(s)
                && v[0] == "complete"
            {
                let (href, text) = (v[1].as_str().unwrap(), v[2].as_str().unwrap());
                if done(href, text) {
                    return (href.to_owned(), text.trim().to_owned());
                }
            }
            assert!(Instant::now() < deadline, "waiting for {what}: {state}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
    }

    /// Cookies the browser holds for the server.
    fn cookies(&mut self, server: &Server) -> Vec<Value> {
        let url = format!("http://{}/", server.addr);
        let r = self.call("Network.getCookies", json!({ "urls": [url] }));
        r["cookies"].as_array().cloned().unwrap_or_default()
    }
}

/// The session id in a path-style address (`…/-/ID`).
fn id_in(href: &str) -> &str {
    href.rsplit_once("/-/")
        .map(|(_, id)| id)
        .unwrap_or_else(|| panic!("no session id in {href}"))
}

#[test]
fn a_browser_without_cookies_stays_in_one_session_through_url_ids() {
    let _serial = serial();
    let Some(binary) = chromium_or_skip("the browser test") else {
        return;
    };
    let server = demo_url_server(2);
    let mut browser = Browser::launch(&binary);
    let mut page = Page::open(&mut browser);
    let home = format!("http://{}/", server.addr);

    // The home page: the server sets a cookie, the browser refuses it, and the page's links
    // carry the id.
    page.navigate(&home);
    let (href, text) = page.wait_for("the home page", |_, t| t.contains("visits="));
    assert_eq!(href, home);
    assert!(text.contains("visits=1 user="), "{text}");
    let link: String = page
        .eval("document.getElementById('home').getAttribute('href')")
        .as_str()
        .unwrap()
        .to_owned();
    let id = id_in(&link).to_owned();
    assert!(page.cookies(&server).is_empty(), "cookies are blocked");

    // Click the link to the home page: the same session (visits=2).
    page.act("document.getElementById('home').click()");
    let (href, text) = page.wait_for("visit 2", |_, t| t.contains("visits=2"));
    assert_eq!(id_in(&href), id, "{href}");
    assert!(text.contains("visits=2 user="), "{text}");

    // Click through to the counter and its "again" link.
    page.act("document.getElementById('count').click()");
    let (href, text) = page.wait_for("count=1", |_, t| t.starts_with("count=1 "));
    assert_eq!(id_in(&href), id);
    assert!(href.contains("/count/-/"), "{href}");
    assert!(text.starts_with("count=1 pid="), "{text}");
    page.act("document.querySelector('a').click()");
    let (href, _) = page.wait_for("count=2", |_, t| t.starts_with("count=2 "));
    assert_eq!(id_in(&href), id);

    // Back to the home page through its address with the id, and submit the login form.
    page.navigate(&format!("{home}-/{id}"));
    page.wait_for("visit 3", |_, t| t.contains("visits=3"));
    page.act(
        "document.querySelector('#login input[name=user]').value = 'ada'; \
         document.querySelector('#login button').click()",
    );
    let (href, text) = page.wait_for("whoami", |h, _| h.contains("/whoami/"));
    assert_eq!(text, "user=ada");
    let new_id = id_in(&href).to_owned();
    assert_ne!(new_id, id, "logging in changes the id");

    // The session went along with the new id; the old one is dead.
    page.navigate(&format!("{home}count/-/{new_id}"));
    let (_, text) = page.wait_for("count=3", |_, t| t.starts_with("count="));
    assert!(text.starts_with("count=3 "), "{text}");
    page.navigate(&format!("{home}whoami/-/{id}"));
    let (_, text) = page.wait_for("old id", |h, _| h.ends_with(&id));
    assert_eq!(text, "user=");
    assert!(page.cookies(&server).is_empty(), "still no cookie");
}
