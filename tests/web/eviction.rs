//! Sessions against one-hit traffic (issue 21): in the demo, users who came back once stay
//! logged in through a flood of cookieless requests (each a new session nobody uses again)
//! and of logins with 60 KB user names, each of which fills a page.
//!
//! CI mode floods a session file of 8 pages (512 KiB) with 15,000 cookieless requests and 100
//! big logins (about four times what the file holds, and every page taken by a big login a
//! dozen times); `FASTMMAP_STRESS=long` runs issue 21's counts, 75,000 and 400, against the
//! default file (89 pages).

use fastmmap::Cache;

use crate::common::{scaled, serial, temp_dir};
use crate::server::{Client, Server};
use crate::web_app;

#[test]
fn users_who_came_back_stay_logged_in_through_a_flood_of_one_hit_sessions() {
    let _serial = serial();
    let dir = temp_dir();
    let path = Server::session_file(&dir);
    let (pages, flood, big_logins) = (scaled(8, 89), scaled(15_000, 75_000), scaled(100, 400));
    // The session file, made smaller than the default for CI; the workers open it as it is.
    drop(
        Cache::builder()
            .path(&path)
            .num_pages(pages as u32)
            .open()
            .expect("session file"),
    );
    let server = Server::start(2, dir, move |addr| {
        let store = web_app::store(&path, &format!("http://{addr}/"), false).expect("store");
        web_app::app(store)
    });

    // 50 users, each logging in and coming back once.
    let mut users: Vec<Client> = Vec::new();
    for i in 0..50 {
        let mut client = Client::new(server.addr);
        assert_eq!(client.post("/login", &format!("user=u{i}")).status, 303);
        assert_eq!(client.get("/whoami").body, format!("user=u{i}"));
        users.push(client);
    }

    let mut anonymous = Client::without_cookies(server.addr);
    let big_user = "x".repeat(60 * 1024);
    let every = flood / big_logins;
    for n in 0..flood {
        let r = anonymous.get("/count");
        assert_eq!(r.status, 200, "cookieless request {n}");
        if n % every == 0 {
            let r = anonymous.post("/login", &format!("user={big_user}"));
            assert_eq!(r.status, 303, "login {} with a 60 KB name", n / every);
        }
    }

    let lost: Vec<usize> = users
        .iter_mut()
        .enumerate()
        .filter_map(|(i, c)| (c.get("/whoami").body != format!("user=u{i}")).then_some(i))
        .collect();
    assert!(
        lost.is_empty(),
        "logged out by {flood} cookieless requests and {big_logins} big logins: users {lost:?}"
    );
}
