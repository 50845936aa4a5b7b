#![cfg(all(feature = "axum", feature = "perl", target_os = "linux"))]
//! A real Catalyst application and the Rust demo serving the same users from one session
//! file: the Catalyst twin of the demo (`tests/catalyst/app`, Catalyst::Plugin::Session with
//! Store::FastMmap and State::Cookie) runs under Starman with two workers, the Rust demo
//! (`examples/web --catalyst`) with two workers on the same file and cookie name, and one
//! client with one cookie jar goes back and forth between them.
//!
//! Without Catalyst or Starman the test skips with a banner, unless
//! `FASTMMAP_REQUIRE_CATALYST=1` (as in CI) makes that a failure.

#[path = "catalyst/harness.rs"]
mod harness;

use fastmmap::perl::PerlFormat;
use fastmmap::session::{CATALYST_ID_LEN, IdFormat};
use fastmmap::{Cache, Layout};
use harness::{Browser, Server, count_of};

/// The cookie name both sides use (Catalyst's default would be `demoapp_session`).
const COOKIE: &str = "demo_session";

fn skip(reason: &str) {
    assert!(
        std::env::var_os("FASTMMAP_REQUIRE_CATALYST").is_none_or(|v| v != "1"),
        "FASTMMAP_REQUIRE_CATALYST=1 but {reason}"
    );
    eprintln!(
        "\n==================================================================\n\
         SKIPPED tests/catalyst.rs: {reason}\n\
         (install libcatalyst-perl, libcatalyst-plugin-session-perl,\n\
         libcatalyst-plugin-session-store-fastmmap-perl,\n\
         libcatalyst-plugin-session-state-cookie-perl and starman)\n\
         ==================================================================\n"
    );
}

/// The servers and the client of one test, on a fresh session file.
struct Setup {
    _dir: tempfile::TempDir,
    file: std::path::PathBuf,
    perl: Server,
    rust: Server,
    browser: Browser,
}

fn setup() -> Option<Setup> {
    if let Some(reason) = harness::missing() {
        skip(&reason);
        return None;
    }
    let Some(binary) = harness::demo_binary() else {
        skip("examples/web was not built (cargo test builds it; --test catalyst alone does not)");
        return None;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("session_data");
    // Catalyst first, as in a running deployment: it creates the session file; the Rust
    // demo joins it.
    let perl = Server::catalyst(&file, COOKIE);
    let rust = Server::rust(&binary, &file, COOKIE);
    Some(Setup {
        _dir: dir,
        file,
        perl,
        rust,
        browser: Browser::new(),
    })
}

impl Setup {
    fn sid(&self) -> String {
        self.browser
            .cookie(COOKIE)
            .unwrap_or_else(|| panic!("the jar should hold {COOKIE}"))
            .to_owned()
    }

    /// The session file as the Rust crate sees it (Catalyst's geometry).
    fn cache(&self) -> Cache {
        Cache::builder()
            .path(&self.file)
            .layout(Layout::FastMmap)
            .num_pages(89)
            .page_size(64 * 1024)
            .open()
            .expect("open the session file")
    }
}

#[test]
fn perl_and_rust_workers_share_catalyst_sessions() {
    let Some(mut s) = setup() else { return };
    let (perl, rust) = (&s.perl, &s.rust);

    // Counts continue across Perl and Rust, starting on either side.
    for (first, second) in [(perl, rust), (rust, perl)] {
        s.browser.clear();
        for n in 1..=6 {
            let server = if n % 2 == 1 { first } else { second };
            let page = s.browser.get(server, "/count");
            assert_eq!(page.status, 200, "{}: {}", server.name, page.body);
            assert_eq!(count_of(&page.body), n, "request {n} on {}", server.name);
        }
        let sid = s.sid();
        assert_eq!(sid.len(), CATALYST_ID_LEN);
        assert!(IdFormat::Catalyst.parse(&sid).is_ok(), "{sid}");
    }

    // What the file holds is Catalyst's: a Storable hash under session:SID, a number under
    // expires:SID.
    let sid = s.sid();
    let cache = s.cache();
    let perl_format = PerlFormat::default();
    let hash: serde_json::Map<String, serde_json::Value> = perl_format
        .get(&cache, format!("session:{sid}").as_bytes())
        .unwrap()
        .expect("session:SID");
    assert_eq!(hash["count"], serde_json::json!(6));
    assert!(
        hash["__created"].is_u64() && hash["__updated"].is_u64(),
        "{hash:?}"
    );
    let expires: u64 = perl_format
        .get(&cache, format!("expires:{sid}").as_bytes())
        .unwrap()
        .expect("expires:SID");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 7000..=now + 7300).contains(&expires),
        "{expires} vs {now}"
    );

    // A login on either side is seen by the other, under a new id; the data moves along.
    for (login_on, other, user) in [(rust, perl, "ada"), (perl, rust, "bob")] {
        let before = s.sid();
        let count = count_of(&s.browser.get(other, "/count").body);
        let page = s.browser.post(login_on, "/login", &format!("user={user}"));
        assert_eq!(
            page.body,
            format!("user={user}"),
            "login on {}",
            login_on.name
        );
        let after = s.sid();
        assert_ne!(
            before, after,
            "a login on {} moves the session",
            login_on.name
        );
        assert_eq!(s.browser.get(other, "/whoami").body, format!("user={user}"));
        assert_eq!(
            s.browser.get(login_on, "/whoami").body,
            format!("user={user}")
        );
        assert_eq!(count_of(&s.browser.get(other, "/count").body), count + 1);
        // The id from before the login is worthless on both sides.
        let old = format!("{COOKIE}={before}");
        for server in [perl, rust] {
            let page = s.browser.get_with_cookie(server, "/whoami", &old);
            assert_eq!(page.body, "user=", "old id on {}", server.name);
        }
    }

    // A flash set on one side is shown once, on the other.
    for (set_on, shown_on, msg) in [(perl, rust, "from-perl"), (rust, perl, "from-rust")] {
        let set = s.browser.post_only(set_on, "/flash", &format!("msg={msg}"));
        assert_eq!(set.status, 303, "{}: {}", set_on.name, set.body);
        assert_eq!(
            s.browser.get(shown_on, "/flash").body,
            format!("flash={msg}")
        );
        assert_eq!(s.browser.get(shown_on, "/flash").body, "flash=");
        assert_eq!(s.browser.get(set_on, "/flash").body, "flash=");
    }
    assert_eq!(s.browser.get(perl, "/whoami").body, "user=bob");

    // A logout on either side ends the session on both (not just the cookie).
    for (logout_on, other) in [(rust, perl), (perl, rust)] {
        s.browser.post(logout_on, "/login", "user=carol");
        let sid = s.sid();
        assert_eq!(s.browser.get(other, "/whoami").body, "user=carol");
        let page = s.browser.post(logout_on, "/logout", "");
        assert_eq!(page.body, "user=", "after logout on {}", logout_on.name);
        assert_eq!(s.browser.cookie(COOKIE), None, "the cookie is deleted");
        let old = format!("{COOKIE}={sid}");
        for server in [perl, rust] {
            let page = s.browser.get_with_cookie(server, "/whoami", &old);
            assert_eq!(page.body, "user=", "logged-out id on {}", server.name);
        }
        for key in ["session", "expires", "flash"] {
            let key = format!("{key}:{sid}");
            assert!(
                !s.cache().contains_key(key.as_bytes()).unwrap(),
                "{key} remains"
            );
        }
        assert_eq!(s.browser.get(other, "/whoami").body, "user=");
    }
}
