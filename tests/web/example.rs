//! The demo binary itself, `examples/web.rs`, through its command line: `--listen`,
//! `--workers`, `--session-file`, `--url-sessions`; `listening on http://ADDR` once it
//! accepts; `SIGTERM` stops the parent and every worker.
//!
//! `cargo test` builds the examples before it runs the tests; run alone (`--test web`), the
//! binary may be missing, and then this test skips with a banner.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{required, serial, temp_dir};
use crate::count_of;
use crate::server::Client;

#[test]
fn the_demo_binary_serves_and_stops_on_sigterm() {
    let _serial = serial();
    let exe = std::env::current_exe().unwrap();
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join("web"))
        .filter(|p| p.is_file());
    let Some(binary) = binary else {
        // CI runs the README's `cargo test`, which builds the example: there it must exist.
        assert!(
            std::env::var_os("CI").is_none() && !required("FASTMMAP_REQUIRE_EXAMPLES"),
            "examples/web was not built, though CI runs `cargo test --all-features` \
             (FASTMMAP_REQUIRE_EXAMPLES=1)"
        );
        eprintln!(
            "\n==================================================================\n\
             SKIPPED: examples/web was not built (cargo test builds it; --test web\n\
             alone does not)\n\
             ==================================================================\n"
        );
        return;
    };
    let dir = temp_dir();
    let mut child = Command::new(&binary)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--url-sessions",
        ])
        .arg("--session-file")
        .arg(dir.path().join("demo.cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start examples/web");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(30));
    let addr: Option<SocketAddr> = line
        .as_deref()
        .ok()
        .and_then(|l| l.strip_prefix("listening on http://"))
        .and_then(|a| a.parse().ok());
    let Some(addr) = addr else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("expected `listening on http://ADDR`, got {line:?}");
    };
    let mut client = Client::new(addr);
    let mut workers = std::collections::HashSet::new();
    for n in 1..=20 {
        let r = client.get("/count");
        assert_eq!(count_of(&r.body), n);
        workers.insert(r.worker());
    }
    let mut cookieless = Client::without_cookies(addr);
    let r = cookieless.get("/count");
    assert!(r.body.contains("/count/-/"), "--url-sessions: {}", r.body);

    // SAFETY: signals the demo we started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the demo did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    for pid in workers {
        // SAFETY: signal 0 only asks whether the process exists.
        let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
        assert!(!alive, "worker {pid} outlived the demo");
    }
    assert!(
        client.try_get("/count").is_err(),
        "nothing listens any more"
    );
}
