//! The harness for a real HTTP server: an axum application in forked workers
//! ([`fastmmap::web::Prefork`]) on an ephemeral port of 127.0.0.1, run by a supervisor
//! process the test forks, stopped (`SIGTERM`, then `SIGKILL`) when the [`Server`] drops;
//! and a small HTTP client over reqwest that handles cookies by hand.

use std::net::{SocketAddr, TcpListener};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::Router;
use fastmmap::web::Prefork;

/// How long a server gets to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A running server: a supervisor process and its workers.
pub struct Server {
    pid: libc::pid_t,
    pub addr: SocketAddr,
    /// Holds the session file.
    pub dir: tempfile::TempDir,
}

impl Server {
    /// The session file's path in the server's directory.
    pub fn session_file(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("sessions.cache")
    }

    /// Binds 127.0.0.1:0, then forks a supervisor that serves `app(addr)` in `workers`
    /// forked workers; returns once the server answers. `dir` is kept for the test.
    pub fn start<F>(workers: usize, dir: tempfile::TempDir, app: F) -> Server
    where
        F: Fn(SocketAddr) -> Router,
    {
        let prefork = Prefork::new(workers).stop_timeout(Duration::from_secs(3));
        Server::start_with(prefork, dir, app)
    }

    /// As [`Server::start`], with the workers and limits of `prefork`.
    pub fn start_with<F>(prefork: Prefork, dir: tempfile::TempDir, app: F) -> Server
    where
        F: Fn(SocketAddr) -> Router,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        // SAFETY: the tests of this binary run one at a time (`common::serial`), so no other
        // thread of ours is inside a cache when we fork; the child runs the supervisor only
        // and leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: the supervisor dies with the test thread that started it.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
            let code = catch_unwind(AssertUnwindSafe(|| {
                prefork.run(listener, || app(addr), || {}).map_or(1, |()| 0)
            }))
            .unwrap_or(2);
            // SAFETY: leaves the child without running the test harness's exit code.
            unsafe { libc::_exit(code) }
        }
        drop(listener);
        let server = Server { pid, addr, dir };
        let client = Client::new(addr);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if client.get_status("/static/app.css").is_ok() {
                return server;
            }
            assert!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signals and reaps our own child.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut status = 0;
            // SAFETY: as above.
            let done = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if done != 0 {
                return;
            }
            if Instant::now() >= deadline {
                // SAFETY: as above; its workers die with it (PR_SET_PDEATHSIG).
                unsafe {
                    libc::kill(self.pid, libc::SIGKILL);
                    libc::waitpid(self.pid, &mut status, 0);
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The worker that answered.
    pub fn worker(&self) -> u32 {
        self.header("x-worker")
            .and_then(|v| v.parse().ok())
            .expect("every response names its worker")
    }

    /// The `Set-Cookie` value, if any.
    pub fn set_cookie(&self) -> Option<&str> {
        self.header("set-cookie")
    }

    /// `name=value` of the `Set-Cookie`, if it sets a value (not a deletion).
    pub fn cookie(&self) -> Option<String> {
        let pair = self.set_cookie()?.split(';').next()?.trim();
        (!pair.ends_with('=')).then(|| pair.to_owned())
    }
}

/// A client with a cookie jar of one cookie, or none; a new connection for every request
/// (so requests spread over the workers), no automatic redirects.
pub struct Client {
    http: reqwest::blocking::Client,
    base: String,
    pub cookie: Option<String>,
    pub keeps_cookies: bool,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            http: crate::common::http_client(REQUEST_TIMEOUT),
            base: format!("http://{addr}"),
            cookie: None,
            keeps_cookies: true,
        }
    }

    /// A client that never sends a cookie (a browser that refuses them).
    pub fn without_cookies(addr: SocketAddr) -> Client {
        Client {
            keeps_cookies: false,
            ..Client::new(addr)
        }
    }

    fn send(&mut self, req: reqwest::blocking::RequestBuilder) -> reqwest::Result<Answer> {
        let req = match (&self.cookie, self.keeps_cookies) {
            (Some(c), true) => req.header("cookie", c),
            _ => req,
        };
        let r = req.send()?;
        let answer = Answer {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.text()?,
        };
        if self.keeps_cookies
            && let Some(set) = answer.set_cookie()
        {
            self.cookie = answer.cookie();
            if set.contains("Max-Age=0") {
                self.cookie = None;
            }
        }
        Ok(answer)
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    pub fn try_get(&mut self, path: &str) -> reqwest::Result<Answer> {
        let req = self.http.get(self.url(path));
        self.send(req)
    }

    pub fn get(&mut self, path: &str) -> Answer {
        self.try_get(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub fn get_status(&self, path: &str) -> reqwest::Result<u16> {
        Ok(self.http.get(self.url(path)).send()?.status().as_u16())
    }

    /// A form POST (`application/x-www-form-urlencoded`; `form` is already encoded).
    pub fn post(&mut self, path: &str, form: &str) -> Answer {
        let req = self
            .http
            .post(self.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned());
        self.send(req)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }
}
