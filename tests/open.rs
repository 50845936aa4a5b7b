//! Opening files: geometry, layouts, options, and every bad input as a distinct error that
//! leaves the file untouched.

#![allow(unsafe_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fastmmap::{Cache, CacheBuilder, Error, Layout};

fn bytes(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap()
}

/// Options for a small cache at `path`: two pages of 4 KiB.
fn two_pages(path: &Path) -> CacheBuilder {
    Cache::builder().path(path).num_pages(2).page_size(4096)
}

#[test]
fn defaults_and_adopted_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let cache = Cache::open(&path).unwrap();
    assert_eq!(
        (cache.num_pages(), cache.page_size(), cache.start_slots()),
        (89, 65536, 89)
    );
    assert_eq!(cache.layout(), Layout::Native);
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    drop(cache);

    let path = dir.path().join("small");
    Cache::builder()
        .path(&path)
        .num_pages(3)
        .page_size(4096)
        .start_slots(101)
        .open()
        .unwrap();
    let reopened = Cache::open(&path).unwrap();
    assert_eq!(
        (
            reopened.num_pages(),
            reopened.page_size(),
            reopened.start_slots()
        ),
        (3, 4096, 101)
    );
    // Same geometry asked explicitly: fine.
    Cache::builder()
        .path(&path)
        .num_pages(3)
        .page_size(4096)
        .open()
        .unwrap();
}

#[test]
fn cache_size_derives_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::builder()
        .path(dir.path().join("c"))
        .cache_size(1 << 20)
        .open()
        .unwrap();
    assert_eq!((cache.num_pages(), cache.page_size()), (21, 65536));
    let cache = Cache::builder()
        .path(dir.path().join("d"))
        .cache_size(1 << 20)
        .num_pages(64)
        .open()
        .unwrap();
    assert_eq!((cache.num_pages(), cache.page_size()), (64, 16384));
}

#[test]
fn permissions_are_applied_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    Cache::builder()
        .path(&path)
        .permissions(0o666)
        .open()
        .unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o666
    );
}

#[test]
fn invalid_options_name_the_reason_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let cases: Vec<(fastmmap::CacheBuilder, &str)> = vec![
        (Cache::builder().page_size(5000), "power of two"),
        (Cache::builder().page_size(2048), "power of two"),
        (Cache::builder().page_size(1 << 31), "power of two"),
        (Cache::builder().num_pages(0), "num_pages"),
        (Cache::builder().num_pages(u32::MAX), "num_pages"),
        (
            Cache::builder().num_pages(1 << 20).page_size(1 << 30),
            "allowed",
        ),
        (Cache::builder().start_slots(10), "start_slots"),
        (
            Cache::builder().page_size(4096).start_slots(1000),
            "slot table",
        ),
        (Cache::builder().cache_size(0), "cache_size"),
        (
            Cache::builder()
                .cache_size(1 << 20)
                .num_pages(16)
                .page_size(4096),
            "conflicts",
        ),
    ];
    for (builder, needle) in cases {
        match builder.path(&path).open() {
            Err(e @ Error::InvalidOptions { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(needle) && msg.contains(path.to_str().unwrap()),
                    "{msg}"
                );
            }
            other => panic!("expected InvalidOptions ({needle}), got {other:?}"),
        }
        assert!(!path.exists(), "nothing created for invalid options");
    }
}

#[test]
fn conflicting_geometry_is_an_error_and_the_file_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let cache = Cache::builder()
        .path(&path)
        .num_pages(5)
        .page_size(8192)
        .open()
        .unwrap();
    cache.set(b"k", b"v").unwrap();
    drop(cache);
    let before = bytes(&path);
    for (builder, field) in [
        (Cache::builder().num_pages(6), "num_pages"),
        (Cache::builder().page_size(16384), "page_size"),
        (Cache::builder().start_slots(97), "start_slots"),
    ] {
        match builder.path(&path).open() {
            Err(Error::GeometryMismatch { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected GeometryMismatch, got {other:?}"),
        }
    }
    assert_eq!(bytes(&path), before);
    assert_eq!(
        Cache::open(&path).unwrap().get(b"k").unwrap(),
        Some(b"v".to_vec())
    );
}

#[test]
fn wrong_layout_either_way() {
    let dir = tempfile::tempdir().unwrap();
    let native = dir.path().join("native");
    let perl = dir.path().join("perl");
    two_pages(&native).open().unwrap().set(b"k", b"v").unwrap();
    two_pages(&perl).layout(Layout::FastMmap).open().unwrap();
    let (nb, pb) = (bytes(&native), bytes(&perl));
    // Dropped handles: the registry must not short-circuit these checks.
    let e = two_pages(&native).layout(Layout::FastMmap).open();
    assert!(
        matches!(
            e,
            Err(Error::WrongLayout {
                expected: Layout::FastMmap,
                ..
            })
        ),
        "{e:?}"
    );
    let e = Cache::builder().path(&perl).open();
    assert!(
        matches!(
            e,
            Err(Error::WrongLayout {
                expected: Layout::Native,
                ..
            })
        ),
        "{e:?}"
    );
    let junk = dir.path().join("junk");
    fs::write(&junk, vec![b'x'; 100_000]).unwrap();
    assert!(matches!(Cache::open(&junk), Err(Error::WrongLayout { .. })));
    assert_eq!((bytes(&native), bytes(&perl)), (nb, pb));
    assert_eq!(bytes(&junk), vec![b'x'; 100_000]);
}

#[test]
fn wrong_layout_while_open_in_this_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let _held = two_pages(&path).open().unwrap();
    let e = two_pages(&path).layout(Layout::FastMmap).open();
    assert!(matches!(e, Err(Error::WrongLayout { .. })), "{e:?}");
    let e = Cache::builder().path(&path).num_pages(3).open();
    assert!(
        matches!(
            e,
            Err(Error::GeometryMismatch {
                field: "num_pages",
                ..
            })
        ),
        "{e:?}"
    );
}

#[test]
fn truncated_short_and_grown_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    two_pages(&path).open().unwrap();
    let full = bytes(&path);
    for len in [0usize, 10, 100, 4096, full.len() - 1] {
        fs::write(&path, &full[..len]).unwrap();
        let e = Cache::open(&path);
        assert!(
            matches!(
                e,
                Err(Error::WrongSize { .. }) | Err(Error::BadHeader { .. })
            ),
            "len {len}: {e:?}"
        );
        assert_eq!(bytes(&path), &full[..len], "file untouched");
    }
    let mut grown = full.clone();
    grown.extend_from_slice(&[0; 4096]);
    fs::write(&path, &grown).unwrap();
    let e = Cache::open(&path);
    assert!(
        matches!(e, Err(Error::WrongSize { found, .. }) if found == grown.len() as u64),
        "{e:?}"
    );

    let perl = dir.path().join("perl");
    Cache::builder()
        .path(&perl)
        .layout(Layout::FastMmap)
        .num_pages(3)
        .page_size(4096)
        .open()
        .unwrap();
    let e = Cache::builder()
        .path(&perl)
        .layout(Layout::FastMmap)
        .num_pages(4)
        .page_size(4096)
        .open();
    assert!(
        matches!(
            e,
            Err(Error::WrongSize {
                expected: 16384,
                found: 12288,
                ..
            })
        ),
        "{e:?}"
    );
    let e = Cache::builder()
        .path(&perl)
        .layout(Layout::FastMmap)
        .num_pages(6)
        .page_size(2048 * 4)
        .open();
    assert!(
        matches!(
            e,
            Err(Error::GeometryMismatch {
                field: "page_size",
                found: 4096,
                ..
            })
        ),
        "{e:?}"
    );
}

#[test]
fn bad_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    two_pages(&path).open().unwrap();
    let good = bytes(&path);
    for (offset, what) in [
        (8usize, "version"),
        (16, "checksum"),
        (20, "checksum"),
        (36, "byte order"),
        (56, "checksum"),
    ] {
        let mut bad = good.clone();
        bad[offset] ^= 0x40;
        fs::write(&path, &bad).unwrap();
        match Cache::open(&path) {
            Err(e @ Error::BadHeader { .. }) => assert!(e.to_string().contains(what), "{e}"),
            other => panic!("offset {offset}: expected BadHeader, got {other:?}"),
        }
        assert_eq!(bytes(&path), bad);
    }
}

#[test]
fn missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/c");
    match Cache::open(&path) {
        Err(e @ Error::MissingDirectory { .. }) => {
            assert!(e.to_string().contains("no/such/dir"), "{e}")
        }
        other => panic!("expected MissingDirectory, got {other:?}"),
    }
}

#[test]
fn permission_denied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    Cache::open(&path).unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let denied = |path: &Path| {
        let existing = matches!(Cache::open(path), Err(Error::PermissionDenied { .. }));
        let new = matches!(
            Cache::open(path.with_file_name("new")),
            Err(Error::PermissionDenied { .. })
        );
        existing && new
    };
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        fs::set_permissions(&path, fs::Permissions::from_mode(0o000)).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o500)).unwrap();
        let ok = denied(&path);
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        assert!(ok);
        return;
    }
    // As root, check from a fresh process running as `nobody`: this test binary, re-run for
    // the helper test below. (A fork of this multi-threaded harness could inherit locks that
    // other tests' threads hold.)
    use std::os::unix::process::CommandExt;
    // The checkout may sit where `nobody` cannot reach: run a copy from a public directory.
    let public = tempfile::tempdir().unwrap();
    fs::set_permissions(public.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let exe = public.path().join("open-test");
    fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    let status = std::process::Command::new(&exe)
        .args(["--exact", "permission_denied_as_nobody", "--nocapture"])
        .env("FASTMMAP_DENIED_PATH", &path)
        .uid(65534)
        .gid(65534)
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
}

/// Runs only when re-executed by `permission_denied`, as `nobody`.
#[test]
fn permission_denied_as_nobody() {
    let Some(path) = std::env::var_os("FASTMMAP_DENIED_PATH") else {
        return;
    };
    let path = Path::new(&path);
    assert!(matches!(
        Cache::open(path),
        Err(Error::PermissionDenied { .. })
    ));
    assert!(matches!(
        Cache::open(path.with_file_name("new")),
        Err(Error::PermissionDenied { .. })
    ));
}

#[test]
fn reset_and_verify_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let cache = Cache::builder()
        .path(&path)
        .num_pages(4)
        .page_size(4096)
        .open()
        .unwrap();
    for i in 0..40u32 {
        cache.set(&i.to_le_bytes(), b"value").unwrap();
    }
    let verified = Cache::builder().path(&path).verify(true).open().unwrap();
    assert_eq!(
        verified.stats().unwrap().resets,
        0,
        "a healthy file verifies clean"
    );
    assert_eq!(verified.keys().count(), 40);
    let reset = Cache::builder().path(&path).reset(true).open().unwrap();
    assert_eq!(reset.keys().count(), 0);
    assert_eq!(
        cache.keys().count(),
        0,
        "reset in place: other handles see it"
    );
    assert_eq!(
        reset.stats().unwrap().resets,
        0,
        "a requested reset is not a repair"
    );
}

#[test]
fn descriptors_are_close_on_exec() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cloexec.cache");
    let _cache = Cache::open(&path).unwrap();
    let mut found = 0;
    for entry in fs::read_dir("/proc/self/fd").unwrap() {
        let entry = entry.unwrap();
        if fs::read_link(entry.path()).is_ok_and(|t| t == path) {
            let fd: i32 = entry.file_name().to_str().unwrap().parse().unwrap();
            // SAFETY: F_GETFD only reads the descriptor's flags.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert!(flags & libc::FD_CLOEXEC != 0, "fd {fd} lacks FD_CLOEXEC");
            found += 1;
        }
    }
    assert_eq!(
        found,
        1,
        "one descriptor per file per process: {:?}",
        fs::read_dir("/proc/self/fd")
            .unwrap()
            .map(|e| fs::read_link(e.unwrap().path()))
            .collect::<Vec<_>>()
    );
    let _again = Cache::open(&path).unwrap();
    let count = fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter(|e| fs::read_link(e.as_ref().unwrap().path()).is_ok_and(|t| t == path))
        .count();
    assert_eq!(count, 1, "a second handle shares the descriptor");
}

#[test]
fn no_temp_files_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..5 {
        Cache::open(dir.path().join(format!("c{i}"))).unwrap();
    }
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 5, "{names:?}");
}

#[test]
fn validate_reports_without_repairing() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v");
    let cache = Cache::builder()
        .path(&path)
        .layout(Layout::FastMmap)
        .num_pages(4)
        .page_size(4096)
        .open()
        .unwrap();
    for i in 0..40u32 {
        cache.set(&i.to_le_bytes(), b"value").unwrap();
    }
    assert!(cache.validate().unwrap().is_empty());
    // Break page 2's header: free_bytes no longer adds up.
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&[0xff; 4], 2 * 4096 + 20)
        .unwrap();
    let before = bytes(&path);
    let problems = cache.validate().unwrap();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].page, 2);
    assert_eq!(bytes(&path), before, "validate changes nothing");
    assert_eq!(cache.stats().unwrap().resets, 1, "the next lock repairs it");
    assert!(cache.validate().unwrap().is_empty());
}
