//! Sessions behind a real HTTP server with forked workers: an axum application under
//! `fastmmap::web::SessionLayer`, served by `fastmmap::web::Prefork`.
//!
//! ```text
//! cargo run --release --features axum --example web -- --listen 127.0.0.1:8080 --workers 4 \
//!     --session-file PATH [--url-sessions] [--base-url URL] [--catalyst --cookie-name NAME] \
//!     [--header-timeout SECS] [--keep-alive SECS] [--max-connections N] [--body-limit BYTES] \
//!     [--request-timeout SECS] [--send-timeout SECS]
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
//! The limits each worker keeps (see `Prefork`; defaults in brackets): `--header-timeout`
//! for a whole request head [10 s], `--keep-alive` for an idle kept-alive connection [5 s;
//! 0 turns keep-alive off], `--max-connections` per worker [1024], `--body-limit` for a
//! request body [2 MiB], `--request-timeout` for a handler [60 s], `--send-timeout` for a
//! client that stops reading [30 s]. Seconds may have a fraction (`0.5`).
//!
//! `--catalyst` (features `axum,perl`) keeps the sessions as a Catalyst application with
//! Catalyst::Plugin::Session and Session::Store::FastMmap keeps them, in its session file
//! (Catalyst's `storage`, a Cache::FastMmap file of the default geometry), under the cookie
//! `--cookie-name` (Catalyst's is `<app>_session`, the default here `session`): Perl and Rust
//! workers then serve the same sessions. See the README, "Moving a Catalyst application to
//! Rust, one worker at a time".
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
use std::time::Duration;

use fastmmap::web::Prefork;

const USAGE: &str = "usage: web --listen ADDR --workers N --session-file PATH [--url-sessions] \
                     [--base-url URL] [--catalyst --cookie-name NAME] [--header-timeout SECS] \
                     [--keep-alive SECS] [--max-connections N] [--body-limit BYTES] \
                     [--request-timeout SECS] [--send-timeout SECS]";

struct Args {
    listen: String,
    workers: usize,
    session_file: PathBuf,
    url_sessions: bool,
    base_url: Option<String>,
    catalyst: bool,
    cookie_name: Option<String>,
    limits: Limits,
}

/// The limits given on the command line; the others keep `Prefork`'s defaults.
#[derive(Default)]
struct Limits {
    header_timeout: Option<Duration>,
    keep_alive: Option<Duration>,
    max_connections: Option<usize>,
    body_limit: Option<usize>,
    request_timeout: Option<Duration>,
    send_timeout: Option<Duration>,
}

impl Limits {
    fn apply(&self, mut prefork: Prefork) -> Prefork {
        if let Some(d) = self.header_timeout {
            prefork = prefork.header_read_timeout(d);
        }
        if let Some(d) = self.keep_alive {
            prefork = prefork.keep_alive_timeout(d);
        }
        if let Some(n) = self.max_connections {
            prefork = prefork.max_connections(n);
        }
        if let Some(n) = self.body_limit {
            prefork = prefork.body_limit(n);
        }
        if let Some(d) = self.request_timeout {
            prefork = prefork.request_timeout(d);
        }
        if let Some(d) = self.send_timeout {
            prefork = prefork.send_timeout(d);
        }
        prefork
    }
}

/// `value` as seconds (a fraction allowed): more than zero unless `zero_ok`, at most a day.
fn seconds(name: &str, value: &str, zero_ok: bool) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && (*s > 0.0 || (zero_ok && *s == 0.0)) && *s <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or(format!(
            "{name} must be a number of seconds {} to 86400, not {value:?}",
            if zero_ok { "from 0" } else { "above 0 and up" }
        ))
}

/// `value` as a whole number from `min` to `max`.
fn number(name: &str, value: &str, min: usize, max: usize) -> Result<usize, String> {
    value
        .parse()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or(format!(
            "{name} must be a number from {min} to {max}, not {value:?}"
        ))
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut listen = None;
    let mut workers = None;
    let mut session_file = None;
    let mut url_sessions = false;
    let mut base_url = None;
    let mut catalyst = false;
    let mut cookie_name = None;
    let mut limits = Limits::default();
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
            "--catalyst" => catalyst = true,
            "--cookie-name" => cookie_name = Some(value("--cookie-name")?),
            "--header-timeout" => {
                let v = value("--header-timeout")?;
                limits.header_timeout = Some(seconds("--header-timeout", &v, false)?);
            }
            "--keep-alive" => {
                let v = value("--keep-alive")?;
                limits.keep_alive = Some(seconds("--keep-alive", &v, true)?);
            }
            "--max-connections" => {
                let v = value("--max-connections")?;
                limits.max_connections = Some(number("--max-connections", &v, 1, 1 << 20)?);
            }
            "--body-limit" => {
                let v = value("--body-limit")?;
                limits.body_limit = Some(number("--body-limit", &v, 0, 1 << 30)?);
            }
            "--request-timeout" => {
                let v = value("--request-timeout")?;
                limits.request_timeout = Some(seconds("--request-timeout", &v, false)?);
            }
            "--send-timeout" => {
                let v = value("--send-timeout")?;
                limits.send_timeout = Some(seconds("--send-timeout", &v, false)?);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if cookie_name.is_some() && !catalyst {
        return Err("--cookie-name goes with --catalyst".to_owned());
    }
    if catalyst && url_sessions {
        return Err(
            "--url-sessions cannot be combined with --catalyst (Catalyst's sessions \
                    here come by cookie)"
                .to_owned(),
        );
    }
    Ok(Some(Args {
        listen: listen.ok_or("--listen is required")?,
        workers: workers.unwrap_or(4),
        session_file: session_file.ok_or("--session-file is required")?,
        url_sessions,
        base_url,
        catalyst,
        cookie_name,
        limits,
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

/// The session store in Catalyst mode: sessions kept in the session file exactly as a
/// Catalyst application with Catalyst::Plugin::Session and Session::Store::FastMmap (default
/// options) keeps them, under its cookie name, in a persistent cookie that ends with the
/// session as Catalyst's does.
#[cfg(feature = "perl")]
fn catalyst_store(
    args: &Args,
) -> Result<fastmmap::session::SessionStore, Box<dyn std::error::Error>> {
    use fastmmap::session::{CatalystConfig, CookieConfig, SessionStore};
    let name = args.cookie_name.as_deref().unwrap_or("session");
    Ok(SessionStore::builder()
        .path(&args.session_file)
        .catalyst(CatalystConfig::new())
        .cookie(CookieConfig::new().name(name)?.persistent(true))
        .build()?)
}

#[cfg(not(feature = "perl"))]
fn catalyst_store(
    args: &Args,
) -> Result<fastmmap::session::SessionStore, Box<dyn std::error::Error>> {
    let _ = (&args.cookie_name, &args.session_file);
    Err("--catalyst needs the demo built with the features axum,perl".into())
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(&args.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    let base = args
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}/"));
    // Opened before the fork: every worker inherits the mapping of the session file.
    let store = if args.catalyst {
        catalyst_store(&args)?
    } else {
        web_app::store(&args.session_file, &base, args.url_sessions)?
    };
    args.limits.apply(Prefork::new(args.workers)).run(
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
