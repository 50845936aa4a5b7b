//! A `redis-server` of one test: started on a free loopback port in a temporary directory,
//! stopped (SIGKILL) and restarted on the same port, or paused (SIGSTOP) and resumed, by the
//! fault tests; killed on drop.
//!
//! Without `redis-server` on the PATH the tests skip loudly, unless `FASTMMAP_REQUIRE_REDIS=1`
//! (CI), where they fail.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    durable: bool,
}

fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

impl RedisServer {
    /// A server with no persistence, or `None` (after saying so) if there is no
    /// `redis-server` and CI does not require one.
    pub fn start(test: &str) -> Option<RedisServer> {
        RedisServer::start_with(test, false)
    }

    /// A server that writes every acknowledged write to its append-only file before
    /// replying (`appendfsync always`), so that a restart loses nothing acknowledged.
    pub fn start_durable(test: &str) -> Option<RedisServer> {
        RedisServer::start_with(test, true)
    }

    fn start_with(test: &str, durable: bool) -> Option<RedisServer> {
        if binary().is_none() {
            if super::common::required("FASTMMAP_REQUIRE_REDIS") {
                panic!("{test}: redis-server is not installed, and FASTMMAP_REQUIRE_REDIS=1");
            }
            eprintln!(
                "SKIPPED {test}: redis-server is not installed (apt-get install redis-server; \
                 FASTMMAP_REQUIRE_REDIS=1 makes this a failure)"
            );
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = RedisServer {
            port,
            dir: tempfile::tempdir().expect("a temp dir"),
            child: None,
            durable,
        };
        server.restart();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts the server again on the same port (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let mut cmd = Command::new(binary().expect("redis-server"));
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .args(["--dir", self.dir.path().to_str().expect("utf-8 temp dir")]);
        if self.durable {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        self.child = Some(cmd.spawn().expect("start redis-server"));
        let start = Instant::now();
        while !self.ping() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server on port {} did not answer PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs the server (a crash: nothing more is written).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server with SIGSTOP: it keeps its port, the kernel still accepts
    /// connections to it, and nothing answers (a hung server).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a [paused](Self::pause) server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the server is running");
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} redis-server failed");
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 64];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    /// A plain connection, for looking at (or changing) Redis behind the caches' backs.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to the test's redis-server")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
