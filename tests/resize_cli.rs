#![cfg(feature = "cli")]
//! `fastmmap resize`, run as a user runs it: the built binary in a child process, on a file a
//! handle of this process keeps using, which follows the move by itself.

use std::process::Command;

use fastmmap::Cache;

const BIN: &str = env!("CARGO_BIN_EXE_fastmmap");

fn run(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run fastmmap");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn resize_moves_a_cache_in_use() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("app.cache");
    let cache = Cache::builder()
        .path(&path)
        .num_pages(5)
        .page_size(8192)
        .open()
        .expect("open");
    for i in 0..100 {
        cache
            .set(format!("k{i}").as_bytes(), format!("v{i}").as_bytes())
            .expect("set");
    }
    let (code, stdout, stderr) = run(&[
        "resize".as_ref(),
        path.as_os_str(),
        "--pages".as_ref(),
        "40".as_ref(),
        "--page-size".as_ref(),
        "16384".as_ref(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout
            .contains("from 5 pages of 8192 bytes to 40 pages of 16384 bytes: 100 entries copied"),
        "{stdout}"
    );
    // The handle follows at its next use.
    assert_eq!(cache.get(b"k7").expect("get"), Some(b"v7".to_vec()));
    assert_eq!((cache.num_pages(), cache.page_size()), (40, 16384));

    // Without --page-size, the page size stays.
    let (code, stdout, stderr) = run(&[
        "resize".as_ref(),
        path.as_os_str(),
        "--pages".as_ref(),
        "3".as_ref(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("to 3 pages of 16384 bytes"), "{stdout}");
    assert_eq!(cache.num_pages(), 3);
    assert_eq!(cache.get(b"k99").expect("get"), Some(b"v99".to_vec()));

    // A geometry the crate cannot use is an error that changes nothing.
    let (code, _, stderr) = run(&[
        "resize".as_ref(),
        path.as_os_str(),
        "--pages".as_ref(),
        "0".as_ref(),
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("num_pages 0"), "{stderr}");
    assert_eq!(cache.num_pages(), 3);

    // A Cache::FastMmap file cannot be resized.
    let perl = dir.path().join("perl.cache");
    Cache::builder()
        .path(&perl)
        .layout(fastmmap::Layout::FastMmap)
        .num_pages(3)
        .open()
        .expect("open perl file");
    let (code, _, stderr) = run(&[
        "resize".as_ref(),
        "--layout".as_ref(),
        "fastmmap".as_ref(),
        "--num-pages".as_ref(),
        "3".as_ref(),
        perl.as_os_str(),
        "--pages".as_ref(),
        "9".as_ref(),
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("only native files can be resized"),
        "{stderr}"
    );
}
