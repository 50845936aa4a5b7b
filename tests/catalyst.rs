#![cfg(all(feature = "axum", feature = "perl", target_os = "linux"))]
//! A real Catalyst application and the Rust demo serving the same users from one session
//! file: the Catalyst twin of the demo (`tests/catalyst/app`, Catalyst::Plugin::Session with
//! Store::FastMmap and State::Cookie) runs under Starman with two workers, the Rust demo
//! (`examples/web --catalyst`) with two workers on the same file and cookie name, and one
//! client with one cookie jar goes back and forth between them — also with Perl objects in
//! the session (the twin's `/stamp`), which Rust routes keep.
//!
//! A second test uses Catalyst's session store itself (Store::FastMmap, from
//! `tests/catalyst/store.pl`) on a file that a Rust store in Catalyst mode shares, and checks
//! what each side sees of the other's values — numbers as numbers, strings as strings. A
//! third stores Perl objects (blessed, and frozen by `STORABLE_freeze` hooks) in a session
//! with that store, changes another key from Rust, and checks that Perl gets its objects back
//! and that the other keys kept their bytes.
//!
//! Without Catalyst or Starman the tests skip with a banner, unless
//! `FASTMMAP_REQUIRE_CATALYST=1` (as in CI) makes that a failure.

mod common;
#[path = "catalyst/harness.rs"]
mod harness;

use fastmmap::perl::storable::{freeze, thaw};
use fastmmap::perl::{PerlFormat, PerlValue};
use fastmmap::session::{
    CATALYST_ID_LEN, CatalystConfig, Client, IdFormat, Origin, SessionId, SessionStore,
};
use fastmmap::{Cache, Layout};
use harness::{Browser, Server, count_of};

/// The cookie name both sides use (Catalyst's default would be `demoapp_session`).
const COOKIE: &str = "demo_session";

fn skip(reason: &str) {
    assert!(
        !common::required("FASTMMAP_REQUIRE_CATALYST"),
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
    // The session file exists before Starman starts. Its workers each load the application
    // and open the file at startup (Starman preloads nothing by default), and Cache::FastMmap
    // processes racing to create a missing file can each end up with a file of their own
    // (one unlinks the other's half-made file). The Rust store creates it race-free, with
    // Catalyst's geometry, and Perl opens it as it is.
    catalyst_store(&file);
    // Catalyst first, as in a running deployment; the Rust demo joins it.
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

    /// What the file holds for the session `sid` (for failure messages).
    fn describe(&self, sid: Option<&str>) -> String {
        let Some(sid) = sid else {
            return "nothing (no cookie)".to_owned();
        };
        let cache = self.cache();
        let perl = PerlFormat::default();
        let session: Option<serde_json::Value> = perl
            .get(&cache, format!("session:{sid}").as_bytes())
            .unwrap_or(None);
        let expires: Option<serde_json::Value> = perl
            .get(&cache, format!("expires:{sid}").as_bytes())
            .unwrap_or(None);
        format!("session {session:?}, expires {expires:?}")
    }

    /// The session file as the Rust crate sees it.
    fn cache(&self) -> Cache {
        open_session_file(&self.file)
    }
}

/// A Rust store of Catalyst sessions in `file` (created, with Catalyst's geometry, if missing).
fn catalyst_store(file: &std::path::Path) -> SessionStore {
    SessionStore::builder()
        .path(file)
        .catalyst(CatalystConfig::new())
        .build()
        .expect("open the session file as a Catalyst store")
}

/// The session file at `file` opened with Catalyst's geometry.
fn open_session_file(file: &std::path::Path) -> Cache {
    Cache::builder()
        .path(file)
        .layout(Layout::FastMmap)
        .num_pages(89)
        .page_size(64 * 1024)
        .open()
        .expect("open the session file")
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
            let sent = s.browser.cookie(COOKIE).map(str::to_owned);
            let page = s.browser.get(server, "/count");
            assert_eq!(page.status, 200, "{}: {}", server.name, page.body);
            assert_eq!(
                count_of(&page.body),
                n,
                "request {n} on {} sent {sent:?}; the file holds {}",
                server.name,
                s.describe(sent.as_deref())
            );
        }
        let sid = s.sid();
        assert_eq!(sid.len(), CATALYST_ID_LEN);
        assert!(IdFormat::Catalyst.parse(&sid).is_ok(), "{sid}");
    }

    // The home page is the same page on both sides, the visit count shared.
    let perl_home = s.browser.get(perl, "/").body;
    let rust_home = s.browser.get(rust, "/").body;
    assert!(
        perl_home.contains(r#"<p id="state">visits=1 user=</p>"#),
        "{perl_home}"
    );
    assert_eq!(rust_home, perl_home.replace("visits=1", "visits=2"));

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

    // Perl objects in the session (a hook object and a blessed one sharing an object) do
    // not break the Rust side: its routes work and save, and Perl gets its objects back.
    let stamp = s.browser.post(perl, "/stamp", "epoch=1700000000");
    let want = "stamp=1700000000 zone=UTC class=DemoApp::Stamp thawed=1 member=dora shared=1";
    assert_eq!(stamp.body, want, "{}", s.describe(Some(&s.sid())));
    let count = count_of(&s.browser.get(perl, "/count").body);
    for n in 1..=2 {
        let page = s.browser.get(rust, "/count");
        assert_eq!(page.status, 200, "{}", page.body);
        assert_eq!(count_of(&page.body), count + n);
    }
    assert_eq!(s.browser.get(rust, "/whoami").body, "user=bob");
    assert_eq!(s.browser.get(rust, "/static/app.css").status, 200);
    assert_eq!(s.browser.get(perl, "/stamp").body, want);
    assert_eq!(count_of(&s.browser.get(perl, "/count").body), count + 3);

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

#[test]
fn catalysts_own_store_and_a_rust_store_share_values() {
    if let Some(reason) = harness::missing_modules() {
        skip(&reason);
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("session_data");
    let sid = "0123456789abcdef0123456789abcdef01234567";
    let id = SessionId::parse_catalyst(sid).unwrap();

    // Perl writes a session as Catalyst::Plugin::Session does, and counts once atomically.
    harness::store_pl(&file, "write", sid);
    harness::store_pl(&file, "increment", sid);

    let store = catalyst_store(&file);
    let mut session = store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(session.origin(), &Origin::Loaded);
    assert_eq!(session.get::<u64>("count").unwrap(), Some(42));
    assert_eq!(
        session.get::<String>("user").unwrap().as_deref(),
        Some("zo\u{eb}")
    );
    assert_eq!(
        session.get::<Vec<String>>("roles").unwrap(),
        Some(vec!["admin".to_owned(), "dev".to_owned()])
    );
    assert_eq!(
        session.get_value("prefs"),
        Some(&serde_json::json!({"theme": "dark", "size": 12.5}))
    );
    assert_eq!(
        session.get_flash::<String>("msg").unwrap().as_deref(),
        Some("from perl")
    );
    session.insert("rust_number", &7).unwrap();
    session.insert("rust_string", "7").unwrap();
    session.insert("rust_list", &[1.5, 2.0]).unwrap();
    store.save(&mut session).unwrap();
    let count = store
        .update(&id, |s| {
            let n = s.get::<u64>("count").unwrap().unwrap_or(0) + 1;
            s.insert("count", &n).unwrap();
            n
        })
        .unwrap();
    assert_eq!(count, Some(43));

    // What Perl sees: Rust's numbers are numbers, its strings strings; the flash was taken.
    let seen = harness::store_pl(&file, "read", sid);
    for line in [
        "count number 43",
        "rust_number number 7",
        "rust_string string 7",
        "rust_list ARRAY number:1.5,number:2",
        "user string zo\u{eb}",
        "roles ARRAY string:admin,string:dev",
        "prefs HASH size=number:12.5,theme=string:dark",
    ] {
        assert!(seen.iter().any(|l| l == line), "{line:?} not in {seen:#?}");
    }
    assert!(!seen.iter().any(|l| l.starts_with("__flash")), "{seen:#?}");
    assert!(
        seen.iter().any(|l| l.starts_with("expires number ")),
        "{seen:#?}"
    );

    // And Perl's atomic update sees Rust's count.
    harness::store_pl(&file, "increment", sid);
    let session = store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(session.get::<u64>("count").unwrap(), Some(44));

    // Catalyst's get_and_set_session_data and SessionStore::update exclude each other: Perl
    // and Rust counting at the same time lose no increment. Rust counts for as long as Perl
    // does.
    const PERL_INCREMENTS: u64 = 3000;
    let mut perl = harness::store_pl_command(&file, "increment", sid)
        .arg(PERL_INCREMENTS.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run perl");
    let mut rust_increments = 0u64;
    let mut seen_perl_count = false;
    while perl.try_wait().expect("perl's status").is_none() {
        let before = store
            .update(&id, |s| {
                let n = s.get::<u64>("count").unwrap().unwrap_or(0);
                s.insert("count", &(n + 1)).unwrap();
                n
            })
            .unwrap()
            .expect("the session is live");
        rust_increments += 1;
        seen_perl_count |= before > 44 + rust_increments;
    }
    harness::checked_output("increment", perl.wait_with_output().expect("wait for perl"));
    let session = store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(
        session.get::<u64>("count").unwrap(),
        Some(44 + PERL_INCREMENTS + rust_increments)
    );
    assert!(
        seen_perl_count,
        "Rust counted {rust_increments} times but never while Perl did"
    );
}

/// A session holding Perl objects — a blessed user, a `STORABLE_freeze` hook object that
/// refers to another object and an array, and an object the two share — written by
/// Catalyst's store, read and changed (another key) by a Rust store, and read back by Perl:
/// the objects come back the same (`is_deeply`, class, methods, sharing), and the record's
/// other keys keep their bytes.
#[test]
fn perl_objects_in_a_session_survive_a_rust_save() {
    if let Some(reason) = harness::missing_modules() {
        skip(&reason);
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("session_data");
    let sid = "89abcdef0123456789abcdef0123456789abcdef";
    let id = SessionId::parse_catalyst(sid).unwrap();
    let key = format!("session:{sid}");
    harness::store_pl(&file, "write-objects", sid);
    let cache = open_session_file(&file);
    let before = cache.get(key.as_bytes()).unwrap().expect("Perl's record");

    let store = catalyst_store(&file);
    let mut session = store.load(Some(&id), &Client::new()).unwrap();
    assert_eq!(session.origin(), &Origin::Loaded);
    assert_eq!(session.get::<u64>("count").unwrap(), Some(1));
    // A blessed hash reads as its hash; a hook object as its class and string.
    let user = session.get_value("user").expect("user").clone();
    assert_eq!(user["name"], "zo\u{eb}");
    assert_eq!(user["roles"], serde_json::json!(["admin", "dev"]));
    assert_eq!(
        session.get_value("stamp"),
        Some(&serde_json::json!({"class": "MyApp::Stamp", "frozen": "epoch=1700000000"}))
    );
    session.insert("count", &2).unwrap();
    store.save(&mut session).unwrap();

    // Byte for byte: Perl's record with the new count and save time, nothing else.
    let after = cache
        .get(key.as_bytes())
        .unwrap()
        .expect("the saved record");
    let mut expected = thaw(&before).unwrap();
    let hash = expected.deref(expected.root()).unwrap();
    for (name, value) in [("count", 2), ("__updated", -1)] {
        let at = expected.hash_get(hash, name).unwrap();
        let value = if value < 0 {
            let written = thaw(&after).unwrap();
            let h = written.deref(written.root()).unwrap();
            written[written.hash_get(h, name).unwrap()].value.clone()
        } else {
            PerlValue::Int(value)
        };
        expected.get_mut(at).unwrap().value = value;
    }
    assert_eq!(
        after,
        freeze(&expected).unwrap(),
        "only count and __updated changed"
    );

    // A key added by an atomic update, too.
    store
        .update(&id, |s| s.insert("rust", "was here").unwrap())
        .unwrap()
        .expect("the session is live");

    let seen = harness::store_pl(&file, "check-objects", sid);
    assert!(seen.iter().any(|l| l == "count 2"), "{seen:#?}");
    assert!(seen.iter().any(|l| l == "rust was here"), "{seen:#?}");
    assert!(seen.iter().any(|l| l == "1..12"), "{seen:#?}");
}
