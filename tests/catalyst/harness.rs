//! The programs of the Catalyst test: the Catalyst application of `tests/catalyst/app`
//! under Starman, the Rust demo (`examples/web`) in Catalyst mode, and one HTTP client with
//! one cookie jar for both.
//!
//! Both servers listen on 127.0.0.1 (on different ports); cookies belong to a host, not to a
//! port, so a browser would send the one session cookie to both, and so does [`Browser`].

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a server may take to start (Catalyst loads a few hundred modules).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to stop on SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// A cookie whose `Expires` is at most this far ahead is a deletion: Catalyst deletes its
/// cookie with `expires` set to the current second.
const EXPIRED_SLACK: Duration = Duration::from_secs(5);
/// The Perl modules the Catalyst application needs.
const PERL_MODULES: [&str; 4] = [
    "Catalyst",
    "Catalyst::Plugin::Session",
    "Catalyst::Plugin::Session::Store::FastMmap",
    "Catalyst::Plugin::Session::State::Cookie",
];

/// Why Catalyst cannot be tested here, if it cannot: Perl's modules or `starman` missing.
pub fn missing() -> Option<String> {
    if let Some(reason) = missing_modules() {
        return Some(reason);
    }
    let starman_ok = Command::new("starman")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !starman_ok {
        return Some("starman is not installed".to_owned());
    }
    None
}

/// Why Catalyst's Perl modules cannot be used here, if they cannot.
pub fn missing_modules() -> Option<String> {
    let mut perl = Command::new("perl");
    for module in PERL_MODULES {
        perl.arg(format!("-M{module}"));
    }
    let perl_ok = perl
        .args(["-e", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !perl_ok {
        return Some(format!(
            "Perl modules {} are not all installed",
            PERL_MODULES.join(", ")
        ));
    }
    None
}

/// Runs `tests/catalyst/store.pl` (Catalyst's Store::FastMmap without an application) on
/// `file`: `command` is `write`, `read` or `increment` for the session `sid`. Its output
/// lines.
pub fn store_pl(file: &Path, command: &str, sid: &str) -> Vec<String> {
    store_pl_command(file, command, sid)
        .output()
        .map(|out| checked_output(command, out))
        .expect("run perl")
}

/// The command that runs `tests/catalyst/store.pl` (see [`store_pl`]), to run or spawn.
pub fn store_pl_command(file: &Path, command: &str, sid: &str) -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/catalyst/store.pl");
    let mut perl = Command::new("perl");
    perl.arg(script)
        .arg(file)
        .args([command, sid])
        .stdin(Stdio::null());
    perl
}

/// The output lines of a `store.pl` run that must have succeeded.
pub fn checked_output(command: &str, out: std::process::Output) -> Vec<String> {
    crate::common::output_lines(&format!("store.pl {command}"), out)
}

/// The demo binary cargo built for the tests (`target/<profile>/examples/web`), if it did.
pub fn demo_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join("web"))
        .filter(|p| p.is_file())
}

/// A free port on 127.0.0.1 (free when asked; Starman binds it a moment later).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// A server process, stopped with SIGTERM (then SIGKILL) when dropped.
pub struct Server {
    pub name: &'static str,
    pub base: String,
    child: Child,
}

impl Server {
    /// The Catalyst application of `tests/catalyst/app` under `starman --workers 2`.
    pub fn catalyst(session_file: &Path, cookie_name: &str) -> Server {
        let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/catalyst/app");
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("starman")
            .args(["--workers", "2", "--listen", &addr, "-I"])
            .arg(app.join("lib"))
            .arg(app.join("app.psgi"))
            .env("DEMO_SESSION_FILE", session_file)
            .env("DEMO_COOKIE_NAME", cookie_name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start starman");
        let server = Server {
            name: "Perl",
            base: format!("http://{addr}"),
            child,
        };
        server.wait_until_serving();
        server
    }

    /// The Rust demo in Catalyst mode, with two workers.
    pub fn rust(binary: &Path, session_file: &Path, cookie_name: &str) -> Server {
        let mut child = Command::new(binary)
            .args(["--listen", "127.0.0.1:0", "--workers", "2", "--catalyst"])
            .arg("--cookie-name")
            .arg(cookie_name)
            .arg("--session-file")
            .arg(session_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start examples/web");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(START_TIMEOUT);
        let addr: Option<SocketAddr> = line
            .as_deref()
            .ok()
            .and_then(|l| l.strip_prefix("listening on http://"))
            .and_then(|a| a.parse().ok());
        let mut server = Server {
            name: "Rust",
            base: String::new(),
            child,
        };
        match addr {
            Some(addr) => server.base = format!("http://{addr}"),
            None => panic!("the Rust demo should print `listening on http://ADDR`, got {line:?}"),
        }
        server
    }

    fn wait_until_serving(&self) {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let deadline = Instant::now() + START_TIMEOUT;
        let url = format!("{}/static/app.css", self.base);
        while Instant::now() < deadline {
            if http.get(&url).send().is_ok_and(|r| r.status().is_success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{} server did not answer {url} within {START_TIMEOUT:?}",
            self.name
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signals a process this test started.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
}

/// One HTTP client with one cookie jar for every server on 127.0.0.1, as a browser keeps
/// cookies per host. Redirects are followed by hand (to the server that sent them), so that
/// cookies set on a redirect are kept.
pub struct Browser {
    http: reqwest::blocking::Client,
    jar: BTreeMap<String, String>,
}

impl Browser {
    pub fn new() -> Browser {
        Browser {
            http: crate::common::http_client(REQUEST_TIMEOUT),
            jar: BTreeMap::new(),
        }
    }

    /// The value of cookie `name` in the jar.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.jar.get(name).map(String::as_str)
    }

    /// Empties the jar (a new browser).
    pub fn clear(&mut self) {
        self.jar.clear();
    }

    fn cookie_header(&self) -> Option<String> {
        (!self.jar.is_empty()).then(|| {
            self.jar
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    fn keep_cookies(&mut self, headers: &reqwest::header::HeaderMap) {
        let now = std::time::SystemTime::now();
        for value in headers.get_all("set-cookie") {
            let Some(cookie) = value
                .to_str()
                .ok()
                .and_then(|v| cookie::Cookie::parse(v.to_owned()).ok())
            else {
                continue;
            };
            let expired_at = cookie.expires_datetime().map(|t| {
                std::time::UNIX_EPOCH + Duration::from_secs(t.unix_timestamp().max(0) as u64)
            });
            let deleted = cookie.value().is_empty()
                || cookie.max_age().is_some_and(|a| a.is_zero())
                || expired_at.is_some_and(|t| t <= now + EXPIRED_SLACK);
            if deleted {
                self.jar.remove(cookie.name());
            } else {
                self.jar
                    .insert(cookie.name().to_owned(), cookie.value().to_owned());
            }
        }
    }

    /// One request to `server`, with the jar's cookies (or exactly `cookie`, when given).
    fn send(
        &mut self,
        server: &Server,
        path: &str,
        form: Option<&str>,
        cookie: Option<&str>,
    ) -> Answer {
        let url = format!("{}{path}", server.base);
        let mut req = match form {
            Some(body) => self
                .http
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.to_owned()),
            None => self.http.get(&url),
        };
        let jar_cookie = self.cookie_header();
        if let Some(c) = cookie.map(str::to_owned).or(jar_cookie) {
            req = req.header("cookie", c);
        }
        let response = req
            .send()
            .unwrap_or_else(|e| panic!("{} {url}: {e}", server.name));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().expect("a body");
        if cookie.is_none() {
            self.keep_cookies(&headers);
        }
        Answer {
            status,
            location: headers
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body,
        }
    }

    /// GET `path` from `server`, following redirects to the same server.
    pub fn get(&mut self, server: &Server, path: &str) -> Answer {
        let answer = self.send(server, path, None, None);
        self.follow(server, answer)
    }

    /// GET `path` from `server` with exactly this `Cookie` header, keeping nothing.
    pub fn get_with_cookie(&mut self, server: &Server, path: &str, cookie: &str) -> Answer {
        self.send(server, path, None, Some(cookie))
    }

    /// POST a form to `server`, following the redirect.
    pub fn post(&mut self, server: &Server, path: &str, form: &str) -> Answer {
        let answer = self.send(server, path, Some(form), None);
        self.follow(server, answer)
    }

    /// POST a form to `server` without following the redirect.
    pub fn post_only(&mut self, server: &Server, path: &str, form: &str) -> Answer {
        self.send(server, path, Some(form), None)
    }

    fn follow(&mut self, server: &Server, mut answer: Answer) -> Answer {
        for _ in 0..5 {
            if !(300..400).contains(&answer.status) {
                return answer;
            }
            let location = answer.location.clone().expect("a redirect has a Location");
            let path = location
                .strip_prefix(&server.base)
                .unwrap_or(&location)
                .to_owned();
            assert!(
                path.starts_with('/'),
                "{} redirected to {location}",
                server.name
            );
            answer = self.send(server, &path, None, None);
        }
        panic!("{} redirects in a loop", server.name);
    }
}

/// The count in a `/count` page (`<p>count=N pid=PID</p>…`).
pub fn count_of(body: &str) -> u64 {
    body.split("count=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {body:?}"))
}
