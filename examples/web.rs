//! Sessions behind a real HTTP server with forked workers: an axum application under
//! `fastmmap::web::SessionLayer`, served by `fastmmap::web::Prefork`.
//!
//! ```text
//! cargo run --release --features axum --example web -- --listen 127.0.0.1:8080 --workers 4 \
//!     --session-file PATH [--url-sessions] [--base-url URL]
//! ```
//!
//! The parent binds the listener, opens the session file, forks the workers (each with its
//! own single-threaded tokio runtime) and supervises them: a worker that dies is replaced.
//! It prints `listening on http://ADDR` once the workers accept requests; `SIGTERM` (or
//! Ctrl-C) stops everything. The routes are in `examples/support/web_app.rs`; every
//! response carries `X-Worker: PID`.
//!
//! `--url-sessions` puts session ids into URLs (`/count/-/ID`) for clients that send no
//! cookie; links are rewritten only under the server's own URL, `http://ADDR/` (or
//! `--base-url`, for a server reached under another name).
//!
//! ```text
//! curl -si -c jar -b jar http://127.0.0.1:8080/count
//! curl -si -d user=ada http://127.0.0.1:8080/login
//! ```

#[path = "support/web_app.rs"]
mod web_app;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;

use fastmmap::web::Prefork;

const USAGE: &str = "usage: web --listen ADDR --workers N --session-file PATH [--url-sessions] \
                     [--base-url URL]";

struct Args {
    listen: String,
    workers: usize,
    session_file: PathBuf,
    url_sessions: bool,
    base_url: Option<String>,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut listen = None;
    let mut workers = None;
    let mut session_file = None;
    let mut url_sessions = false;
    let mut base_url = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => listen = Some(value("--listen")?),
            "--workers" => {
                let v = value("--workers")?;
                let n = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or(format!(
                        "--workers must be a number from 1 to 256, not {v:?}"
                    ))?;
                workers = Some(n);
            }
            "--session-file" => session_file = Some(PathBuf::from(value("--session-file")?)),
            "--url-sessions" => url_sessions = true,
            "--base-url" => base_url = Some(value("--base-url")?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(Args {
        listen: listen.ok_or("--listen is required")?,
        workers: workers.unwrap_or(4),
        session_file: session_file.ok_or("--session-file is required")?,
        url_sessions,
        base_url,
    }))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("web: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("web: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(&args.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    let base = args.base_url.unwrap_or_else(|| format!("http://{addr}/"));
    // Opened before the fork: every worker inherits the mapping of the session file.
    let store = web_app::store(&args.session_file, &base, args.url_sessions)?;
    Prefork::new(args.workers).run(
        listener,
        || web_app::app(store.clone()),
        || {
            use std::io::Write;
            println!("listening on http://{addr}");
            let _ = std::io::stdout().flush();
        },
    )?;
    Ok(())
}
