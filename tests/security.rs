//! Hostile users, files and filesystems: a full filesystem is an error (never SIGBUS), files
//! planted by another user or behind a symbolic link are refused, a file that is not a cache
//! is never written, and a file the user may only read can still be inspected.
//!
//! Some checks need root (to mount a small tmpfs in a private mount namespace, to give a file
//! to another user, to run as `nobody`). Without root they skip loudly; CI runs as root and
//! sets `FASTMMAP_REQUIRE_ROOT=1`, which turns a skip into a failure.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use fastmmap::{Cache, Error, Layout, LockKind, Update};

const NOBODY: u32 = 65534;

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Runs this test binary's test `test` again in a fresh process with `env` set, optionally in
/// a private mount namespace and as another user; returns whether it passed.
fn rerun(test: &str, env: &[(&str, &Path)], private_mounts: bool, uid: Option<u32>) -> bool {
    // The checkout may sit where another user cannot reach: run a copy from a public place.
    let public = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(public.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let exe = public.path().join("security-test");
    fs::copy(std::env::current_exe().expect("exe"), &exe).expect("copy");
    let mut cmd = Command::new(&exe);
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    if private_mounts {
        // SAFETY: runs in the forked child before exec, which is single-threaded; unshare and
        // mount are plain system calls with valid, NUL-terminated arguments.
        unsafe {
            cmd.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Keep the child's mounts from propagating back to the machine.
                let root = c"/";
                let rc = libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                );
                if rc != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    // Another test thread forking while the copy was open for writing hands its child the
    // descriptor until that child execs: "text file busy" for a moment.
    for _ in 0..200 {
        match cmd.status() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(10));
            }
            status => return status.expect("run test binary").success(),
        }
    }
    panic!("{}: still busy", exe.display())
}

/// `FASTMMAP_REQUIRE_ROOT` asks for root only when it is `1`, as the other `FASTMMAP_REQUIRE_*`
/// variables do: run as `nobody`, a root-only check skips under `0` or an empty value and
/// fails under `1`.
#[test]
fn require_root_is_set_by_1_only() {
    if !root_or_skip("require_root_is_set_by_1_only") {
        return;
    }
    let as_nobody = |value: &str| {
        let env = [
            ("FASTMMAP_REQUIRE_ROOT", Path::new(value)),
            ("FASTMMAP_ROOT_PROBE", Path::new("1")),
        ];
        rerun("root_or_skip_as_another_user", &env, false, Some(NOBODY))
    };
    assert!(as_nobody("0"), "FASTMMAP_REQUIRE_ROOT=0 skips");
    assert!(as_nobody(""), "an empty FASTMMAP_REQUIRE_ROOT skips");
    // Straight to the terminal, like the run's own output.
    raw_eprint(
        "require_root_is_set_by_1_only: the run under FASTMMAP_REQUIRE_ROOT=1 that follows must \
         fail; its panic and FAILED lines are expected\n",
    );
    assert!(
        !as_nobody("1"),
        "FASTMMAP_REQUIRE_ROOT=1 fails without root"
    );
}

/// A root-only check, for `require_root_is_set_by_1_only` to run as another user. Runs only when
/// re-executed by that test.
#[test]
fn root_or_skip_as_another_user() {
    if std::env::var_os("FASTMMAP_ROOT_PROBE").is_none() {
        return;
    }
    assert!(!root_or_skip("root_or_skip_as_another_user"), "not root");
}

// ---------------------------------------------------------------------------------------------
// A full filesystem

#[test]
fn a_full_filesystem_is_an_error_not_sigbus() {
    if !root_or_skip("a_full_filesystem_is_an_error_not_sigbus") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(
        rerun(
            "full_filesystem_in_a_private_tmpfs",
            &[("FASTMMAP_TMPFS_DIR", dir.path())],
            true,
            None
        ),
        "the checks on a small tmpfs failed (details above); a SIGBUS shows as a signal"
    );
}

/// Mounts a small tmpfs (in the private mount namespace `a_full_filesystem_is_an_error_not_sigbus`
/// gives it) and fills it. Runs only when re-executed by that test.
#[test]
fn full_filesystem_in_a_private_tmpfs() {
    let Some(dir) = std::env::var_os("FASTMMAP_TMPFS_DIR") else {
        return;
    };
    let mount = |dir: &Path, size: &str| {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(
            status.success(),
            "mount a {size} tmpfs on {}",
            dir.display()
        );
    };
    let dir = PathBuf::from(dir);

    // 256 KiB: not even the default cache's header and first pages fit.
    let tiny = dir.join("tiny");
    fs::create_dir(&tiny).expect("mkdir");
    mount(&tiny, "256k");
    match Cache::open(tiny.join("c")) {
        Err(Error::NoSpace { needed, .. }) => assert!(needed > 256 * 1024),
        other => panic!("256 KiB tmpfs: expected NoSpace, got {other:?}"),
    }
    assert!(
        names_in(&tiny).is_empty(),
        "left behind: {:?}",
        names_in(&tiny)
    );

    // 1 MiB: a 5.8 MB cache used to open (sparse) and die at its first stores.
    let small = dir.join("small");
    fs::create_dir(&small).expect("mkdir");
    mount(&small, "1m");
    for layout in [Layout::Native, Layout::FastMmap] {
        match Cache::builder()
            .path(small.join("big"))
            .layout(layout)
            .open()
        {
            Err(e @ Error::NoSpace { .. }) => {
                assert!(e.to_string().contains("no room"), "{e}");
            }
            other => panic!("1 MiB tmpfs, {layout:?}: expected NoSpace, got {other:?}"),
        }
        assert!(
            names_in(&small).is_empty(),
            "left behind: {:?}",
            names_in(&small)
        );
    }

    // A cache that fits keeps working after the filesystem fills up: its blocks are its own.
    let cache = Cache::builder()
        .path(small.join("fits"))
        .num_pages(16)
        .page_size(16 * 1024)
        .open()
        .expect("a cache that fits");
    let filler = small.join("filler");
    let chunk = vec![0x5au8; 64 * 1024];
    let mut f = fs::File::create(&filler).expect("filler");
    loop {
        use std::io::Write;
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    drop(f);
    for i in 0..5_000u32 {
        let key = format!("key-{i}");
        let value = vec![(i % 251) as u8; 100 + (i as usize % 700)];
        cache
            .set(key.as_bytes(), &value)
            .expect("set on a full filesystem");
        assert_eq!(cache.get(key.as_bytes()).expect("get"), Some(value));
    }
    assert_eq!(cache.stats().expect("stats").resets, 0);
}

// ---------------------------------------------------------------------------------------------
// Whose file

#[test]
fn a_file_owned_by_another_user_is_refused_unless_allowed() {
    if !root_or_skip("a_file_owned_by_another_user_is_refused_unless_allowed") {
        return;
    }
    let dir = temp_dir();
    let path = dir.path().join("planted");
    // Another user's cache, as if they had created the name first.
    drop(Cache::open(&path).expect("create"));
    std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).expect("chown");
    let before = fs::read(&path).expect("read");

    for attempt in [
        Cache::builder().path(&path),
        Cache::builder().path(&path).verify(true),
        Cache::builder().path(&path).reset(true),
        Cache::builder().path(&path).read_only(true),
    ] {
        match attempt.open() {
            Err(e @ Error::ForeignOwner { owner: NOBODY, .. }) => {
                assert!(e.to_string().contains("allow_owner"), "{e}");
            }
            other => panic!("expected ForeignOwner, got {other:?}"),
        }
    }
    assert!(
        fs::read(&path).expect("read") == before,
        "the file was changed"
    );

    // Deliberate sharing between users: the owner is named.
    let shared = Cache::builder()
        .path(&path)
        .allow_owner(NOBODY)
        .open()
        .expect("allowed owner");
    shared.set(b"k", b"v").expect("set");
    // A second open in this process (the registry) is checked too.
    assert!(matches!(
        Cache::open(&path),
        Err(Error::ForeignOwner { .. })
    ));
    assert!(
        Cache::builder()
            .path(&path)
            .allow_owner(NOBODY)
            .open()
            .is_ok()
    );
}

#[test]
fn a_root_owned_file_is_trusted_and_readable_by_a_user_who_may_only_read() {
    if !root_or_skip("a_root_owned_file_is_trusted_and_readable_by_a_user_who_may_only_read") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    for (name, layout) in [("native", Layout::Native), ("fastmmap", Layout::FastMmap)] {
        let path = dir.path().join(name);
        // Read-only users need fcntl locks: a robust lock lives in the file.
        let cache = Cache::builder()
            .path(&path)
            .layout(layout)
            .lock_kind(LockKind::Fcntl)
            .permissions(0o644)
            .open()
            .expect("create");
        cache.set(b"visible", b"to readers").expect("set");
        drop(cache);
    }
    assert!(rerun(
        "read_only_as_nobody",
        &[("FASTMMAP_READ_ONLY_DIR", dir.path())],
        false,
        Some(NOBODY)
    ));
}

/// Runs only when re-executed by the test above, as `nobody`, on root's files of mode 0644.
#[test]
fn read_only_as_nobody() {
    let Some(dir) = std::env::var_os("FASTMMAP_READ_ONLY_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    for (name, layout) in [("native", Layout::Native), ("fastmmap", Layout::FastMmap)] {
        let path = dir.join(name);
        // Read-write is denied by the file's mode...
        assert!(matches!(
            Cache::builder().path(&path).layout(layout).open(),
            Err(Error::PermissionDenied { .. })
        ));
        // ...read-only works (root's file is trusted), and changes nothing.
        let cache = Cache::builder()
            .path(&path)
            .layout(layout)
            .read_only(true)
            .open()
            .expect("read-only open");
        assert_eq!(
            cache.get(b"visible").expect("get"),
            Some(b"to readers".to_vec())
        );
        assert!(cache.validate().expect("validate").is_empty());
        assert_eq!(cache.stats().expect("stats").entries, 1);
        assert_eq!(cache.keys().count(), 1);
        assert!(matches!(cache.set(b"k", b"v"), Err(Error::ReadOnly { .. })));
    }
}

// ---------------------------------------------------------------------------------------------
// Symbolic links

#[test]
fn a_symlink_at_the_path_is_refused_unless_allowed() {
    let dir = temp_dir();
    let target = dir.path().join("target");
    let link = dir.path().join("link");
    Cache::open(&target)
        .expect("create")
        .set(b"k", b"target")
        .expect("set");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let before = fs::read(&target).expect("read");

    match Cache::open(&link) {
        Err(
            e @ Error::Symlink {
                dangling: false, ..
            },
        ) => assert!(e.to_string().contains("follow_symlinks"), "{e}"),
        other => panic!("expected Symlink, got {other:?}"),
    }
    assert!(matches!(
        Cache::builder().path(&link).read_only(true).open(),
        Err(Error::Symlink { .. })
    ));
    assert!(fs::read(&target).expect("read") == before);

    let followed = Cache::builder()
        .path(&link)
        .follow_symlinks(true)
        .open()
        .expect("allowed to follow");
    assert_eq!(followed.get(b"k").expect("get"), Some(b"target".to_vec()));
    drop(followed);
    // The target, reached by its own name while the link's open is gone, is the same cache.
    assert_eq!(
        Cache::open(&target).expect("open").get(b"k").expect("get"),
        Some(b"target".to_vec())
    );
}

#[test]
fn a_dangling_symlink_says_so() {
    let dir = temp_dir();
    let link = dir.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).expect("symlink");
    for follow in [false, true] {
        match Cache::builder().path(&link).follow_symlinks(follow).open() {
            Err(e @ Error::Symlink { dangling: true, .. }) => {
                assert!(e.to_string().contains("dangling"), "{e}");
            }
            other => panic!("follow {follow}: expected a dangling Symlink error, got {other:?}"),
        }
    }
    assert_eq!(
        names_in(dir.path()),
        ["dangling"],
        "nothing created or left behind"
    );
}

// ---------------------------------------------------------------------------------------------
// Things planted at a name: FIFOs, sockets, devices, links

/// How long a call that must not block may take before the test calls it hung: far beyond
/// what an open takes on a loaded machine.
const HANG: Duration = Duration::from_secs(20);

/// Runs `f` on its own thread and returns its result; fails the test if it has not returned
/// within [`HANG`] (an open blocked on a planted FIFO never would). A hung thread is left
/// blocked: the test fails either way.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(HANG)
        .unwrap_or_else(|_| panic!("{what}: still blocked after {HANG:?}"))
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: `c` is a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

/// What another user might leave at a name.
#[derive(Clone, Copy, Debug)]
enum Planted {
    Fifo,
    Socket,
    /// A link to a FIFO (refused as a link unless links are followed).
    LinkToFifo,
    /// A link to /dev/null (a character device), followed.
    LinkToDevice,
}

const PLANTED: [Planted; 4] = [
    Planted::Fifo,
    Planted::Socket,
    Planted::LinkToFifo,
    Planted::LinkToDevice,
];

impl Planted {
    /// Puts it at `path`; returns what an open should call it.
    fn plant(self, path: &Path) -> &'static str {
        match self {
            Planted::Fifo => {
                mkfifo(path);
                "FIFO"
            }
            Planted::Socket => {
                drop(std::os::unix::net::UnixListener::bind(path).expect("bind"));
                "socket"
            }
            Planted::LinkToFifo => {
                let target = path.with_extension("fifo-target");
                mkfifo(&target);
                std::os::unix::fs::symlink(&target, path).expect("symlink");
                "FIFO"
            }
            Planted::LinkToDevice => {
                std::os::unix::fs::symlink("/dev/null", path).expect("symlink");
                "character device"
            }
        }
    }

    fn is_link(self) -> bool {
        matches!(self, Planted::LinkToFifo | Planted::LinkToDevice)
    }
}

#[test]
fn a_fifo_socket_device_or_link_at_the_cache_path_is_refused_at_once() {
    let dir = temp_dir();
    for planted in PLANTED {
        let path = dir.path().join(format!("{planted:?}"));
        let what = planted.plant(&path);
        let builders = [
            Cache::builder(),
            Cache::builder().read_only(true),
            Cache::builder().reset(true),
            Cache::builder().layout(Layout::FastMmap),
            Cache::builder().layout(Layout::FastMmap).read_only(true),
        ];
        for (i, builder) in builders.into_iter().enumerate() {
            let p = path.clone();
            let b = builder.clone().path(&p);
            let result = within(&format!("{planted:?} open {i}"), move || b.open());
            match result {
                Err(Error::Symlink { .. }) if planted.is_link() => {}
                Err(e @ Error::NotACache { page: None, .. }) if !planted.is_link() => {
                    let text = e.to_string();
                    assert!(text.contains(what), "{planted:?} {i}: {text}");
                    assert!(text.contains(&*path.to_string_lossy()), "{text}");
                }
                other => panic!("{planted:?} open {i}: expected a refusal, got {other:?}"),
            }
            if planted.is_link() {
                // Followed, the link leads to something that is not a file either.
                let b = builder.path(&p).follow_symlinks(true);
                match within(&format!("{planted:?} followed {i}"), move || b.open()) {
                    Err(e @ Error::NotACache { page: None, .. }) => {
                        assert!(e.to_string().contains(what), "{planted:?} {i}: {e}");
                    }
                    other => panic!("{planted:?} followed {i}: expected NotACache, got {other:?}"),
                }
            }
        }
    }
}

#[test]
fn a_fifo_planted_by_another_user_is_refused_at_once() {
    if !root_or_skip("a_fifo_planted_by_another_user_is_refused_at_once") {
        return;
    }
    let dir = temp_dir();
    let path = dir.path().join("planted");
    mkfifo(&path);
    std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).expect("chown");
    for read_only in [false, true] {
        let b = Cache::builder().path(&path).read_only(read_only);
        match within("foreign FIFO", move || b.open()) {
            Err(e @ Error::NotACache { .. }) => assert!(e.to_string().contains("FIFO"), "{e}"),
            other => panic!("expected NotACache, got {other:?}"),
        }
    }
}

/// Things planted at `<cache>.redis`, the Redis tier's state file: a `get` neither hangs nor
/// trusts them, and a listener refuses to start on them.
#[cfg(feature = "redis")]
#[test]
fn a_planted_redis_state_file_hangs_nothing_and_is_not_trusted() {
    use fastmmap::redis::{Listener, RedisBacking, RedisOptions};

    let dir = temp_dir();
    let path = dir.path().join("c");
    let state = dir.path().join("c.redis");
    // Nothing listens on port 1 of the loopback address: every Redis call fails at once.
    let options = RedisOptions::new("redis://127.0.0.1:1/").expect("options");
    let plain = Cache::open(&path).expect("create");
    let cache = Cache::builder()
        .path(&path)
        .backing(RedisBacking::new(options.clone(), &path))
        .open()
        .expect("open with the Redis tier");
    type Plant = Box<dyn Fn(&Path) -> &'static str>;
    // A link is refused as a link: the state file's name is never followed.
    let mut plants: Vec<Plant> = PLANTED
        .into_iter()
        .map(|p| {
            Box::new(move |s: &Path| {
                let what = p.plant(s);
                if p.is_link() { "symbolic link" } else { what }
            }) as Plant
        })
        .collect();
    if root_or_skip("a planted redis state file owned by another user") {
        // Another user's state file claiming a trusted host with a fresh heartbeat.
        plants.push(Box::new(|s: &Path| {
            let mut bytes = vec![0u8; 16 + 8 * 4096];
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_millis() as u64;
            bytes[8..16].copy_from_slice(&now.to_ne_bytes());
            fs::write(s, &bytes).expect("write");
            std::os::unix::fs::chown(s, Some(NOBODY), Some(NOBODY)).expect("chown");
            "uid 65534"
        }));
    }
    for (i, plant) in plants.iter().enumerate() {
        let what = plant(&state);
        plain.set(b"k", b"local").expect("set");
        let c = cache.clone();
        let got = within(&format!("get with planted state file {i}"), move || {
            c.get(b"k")
        });
        assert!(
            got.is_err(),
            "{i}: a value was served on the word of a planted state file: {got:?}"
        );
        let (c, o) = (cache.clone(), options.clone());
        match within(&format!("Listener::start {i}"), move || {
            Listener::start(o, &c)
        }) {
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains("c.redis"), "{i}: {text}");
                assert!(text.contains(what), "{i}: {text}");
            }
            Ok(_) => panic!("{i}: a listener started on a planted state file"),
        }
        for p in [state.clone(), state.with_extension("fifo-target")] {
            let _ = fs::remove_file(p);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Files that are not caches

#[test]
fn a_file_that_is_not_a_cache_is_never_written() {
    let dir = temp_dir();
    let path = dir.path().join("notes.txt");
    let mut text = b"Dear diary, today I wrote exactly one page of notes. ".repeat(80);
    text.truncate(4096);
    fs::write(&path, &text).expect("write");
    let fastmmap = || {
        Cache::builder()
            .path(&path)
            .layout(Layout::FastMmap)
            .num_pages(1)
            .page_size(4096)
    };
    for b in [fastmmap(), fastmmap().read_only(true)] {
        match b.open() {
            Err(e @ Error::NotACache { page: Some(0), .. }) => {
                assert!(e.to_string().contains("page 0"), "{e}")
            }
            other => panic!("expected NotACache naming page 0, got {other:?}"),
        }
    }
    assert_eq!(fs::read(&path).expect("read"), text, "the file was written");

    // Zeroes are a fresh page (as a new, never-used Cache::FastMmap file may hold).
    fs::write(&path, vec![0u8; 4096]).expect("write");
    fastmmap()
        .open()
        .expect("zeroed file")
        .set(b"k", b"v")
        .expect("set");

    // `reset` is the explicit way to overwrite.
    fs::write(&path, &text).expect("write");
    let cache = fastmmap().reset(true).open().expect("reset overwrites");
    assert_eq!(cache.get(b"k").expect("get"), None);
    cache.set(b"k", b"v").expect("set");

    // Not a regular file at all: a FIFO (which opens without blocking for reading and
    // writing) is refused before anything reads from it.
    let fifo = dir.path().join("fifo");
    let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("name");
    // SAFETY: `name` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    assert!(matches!(
        Cache::open(&fifo),
        Err(Error::NotACache { page: None, .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Read-only use

#[test]
fn read_only_handles_read_everything_and_change_nothing() {
    let _serial = serial();
    let dir = temp_dir();
    for kind in [NATIVE, FASTMMAP] {
        let path = dir.path().join(format!("ro-{:?}", kind.layout));
        let writer = kind
            .builder()
            .path(&path)
            .num_pages(7)
            .page_size(4096)
            .open()
            .expect("create");
        for i in 0..50u32 {
            writer
                .set(format!("k{i}").as_bytes(), format!("v{i}").as_bytes())
                .expect("set");
        }
        writer
            .multi_set(b"grp", &[(b"a", b"1"), (b"b", b"2")])
            .expect("multi_set");
        drop(writer);
        let before = fs::read(&path).expect("read");

        let ro = kind
            .builder()
            .path(&path)
            .num_pages(7)
            .page_size(4096)
            .read_only(true)
            .open()
            .expect("read-only");
        assert_eq!(ro.get(b"k7").expect("get"), Some(b"v7".to_vec()));
        assert_eq!(ro.get(b"missing").expect("get"), None);
        assert_eq!(ro.get_with(b"k8", |v| v.len()).expect("get_with"), Some(2));
        assert!(ro.entry(b"k9").expect("entry").is_some());
        assert!(ro.contains_key(b"k10").expect("contains_key"));
        assert_eq!(
            ro.get_many(&[&b"k1"[..], b"nope", b"k2"])
                .expect("get_many"),
            vec![Some(b"v1".to_vec()), None, Some(b"v2".to_vec())]
        );
        assert_eq!(
            ro.multi_get(b"grp", &[&b"a"[..], b"b"]).expect("multi_get"),
            vec![Some(b"1".to_vec()), Some(b"2".to_vec())]
        );
        assert_eq!(ro.keys().count(), 52);
        assert_eq!(ro.stats().expect("stats").entries, 52);
        assert!(ro.validate().expect("validate").is_empty());

        let refused = |what: &str, r: Result<(), Error>| match r {
            Err(Error::ReadOnly { .. }) => {}
            other => panic!("{kind:?} {what}: expected ReadOnly, got {other:?}"),
        };
        refused("set", ro.set(b"k", b"v").map(drop));
        refused("remove", ro.remove(b"k1").map(drop));
        refused("take", ro.take(b"k1").map(drop));
        refused("update", ro.update(b"k1", |_| Update::Keep).map(drop));
        refused(
            "get_or_insert_with",
            ro.get_or_insert_with(b"absent", || panic!("computed for nothing"))
                .map(drop),
        );
        refused("set_many", ro.set_many(&[(b"a", b"b")]).map(drop));
        refused("clear", ro.clear());
        refused("purge", ro.purge().map(drop));
        refused("reset_stats", ro.reset_stats());
        drop(ro);
        assert!(
            fs::read(&path).expect("read") == before,
            "{kind:?}: reads through a read-only handle changed the file"
        );
    }
    assert!(matches!(
        Cache::builder()
            .path(dir.path().join("absent"))
            .read_only(true)
            .open(),
        Err(Error::Io { .. })
    ));
    assert!(
        !dir.path().join("absent").exists(),
        "read-only created a file"
    );
    let robust = dir.path().join("robust");
    drop(
        Cache::builder()
            .path(&robust)
            .lock_kind(LockKind::Robust)
            .open()
            .expect("robust"),
    );
    assert!(matches!(
        Cache::builder().path(&robust).read_only(true).open(),
        Err(Error::InvalidOptions { .. })
    ));
    assert!(matches!(
        Cache::builder()
            .path(&robust)
            .read_only(true)
            .reset(true)
            .open(),
        Err(Error::InvalidOptions { .. })
    ));
}

#[test]
fn a_read_only_reader_waits_for_a_writer_in_another_process() {
    let _serial = serial();
    let dir = temp_dir();
    let path = dir.path().join("shared");
    drop(
        Cache::builder()
            .path(&path)
            .lock_kind(LockKind::Fcntl)
            .open()
            .expect("create"),
    );
    let holding = Pipe::new();
    let release = Pipe::new();
    let mut kids = Children::new();
    kids.spawn({
        let path = path.clone();
        let (holding, release) = (&holding, &release);
        move || {
            let cache = Cache::open(&path).map_err(|e| e.to_string())?;
            cache
                .update(b"k", |_| {
                    holding.release(1);
                    release.wait();
                    Update::Set(b"written".to_vec())
                })
                .map_err(|e| e.to_string())?;
            Ok(())
        }
    });
    holding.wait();
    let ro = Cache::builder()
        .path(&path)
        .read_only(true)
        .lock_timeout(Duration::from_millis(50))
        .open()
        .expect("read-only");
    assert!(matches!(ro.get(b"k"), Err(Error::LockTimeout { .. })));
    release.release(1);
    kids.wait_all_ok();
    assert_eq!(ro.get(b"k").expect("get"), Some(b"written".to_vec()));
}

/// The default file's directory when no `$XDG_RUNTIME_DIR` is usable: per user, in `tmp`.
fn default_dir_in(tmp: &Path) -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    tmp.join(format!("fastmmap-{}", unsafe { libc::geteuid() }))
}

/// Runs `default_file_in_tmpdir` in a fresh process with TMPDIR `tmp` and XDG_RUNTIME_DIR
/// `xdg` (empty: unset), expecting `expect` (see there).
fn default_file_case(tmp: &Path, xdg: &Path, expect: &str) {
    let expect = PathBuf::from(expect);
    assert!(
        rerun(
            "default_file_in_tmpdir",
            &[
                ("TMPDIR", tmp),
                ("XDG_RUNTIME_DIR", xdg),
                ("FASTMMAP_DEFAULT_FILE_TEST", &expect),
            ],
            false,
            None
        ),
        "default file with TMPDIR {} and XDG_RUNTIME_DIR {:?}: expected {} (details above)",
        tmp.display(),
        xdg,
        expect.display()
    );
}

#[test]
fn the_default_per_user_file_is_private() {
    let none = Path::new("");
    // A fresh temp dir: a private directory is made in it, and the file in that.
    let tmp = tempfile::tempdir().expect("tempdir");
    let private = default_dir_in(tmp.path());
    default_file_case(tmp.path(), none, &format!("ok:{}", private.display()));
    let md = fs::symlink_metadata(&private).expect("stat");
    assert!(md.is_dir());
    assert_eq!(md.permissions().mode() & 0o7777, 0o700);
    // Again, into the directory it made before.
    default_file_case(tmp.path(), none, &format!("ok:{}", private.display()));

    // $XDG_RUNTIME_DIR, when it is a private directory of ours, is used as it is.
    let xdg = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(xdg.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
    default_file_case(
        tmp.path(),
        xdg.path(),
        &format!("ok:{}", xdg.path().display()),
    );
    // One that others may enter is passed over for the temp dir.
    fs::set_permissions(xdg.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    default_file_case(tmp.path(), xdg.path(), &format!("ok:{}", private.display()));

    // The private directory opened to others, replaced by a link or by a file: refused,
    // naming the directory, and nothing is created.
    fs::set_permissions(&private, fs::Permissions::from_mode(0o755)).expect("chmod");
    default_file_case(tmp.path(), none, "unsafe:mode 0755");
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).expect("chmod");
    let moved = tmp.path().join("moved");
    fs::rename(&private, &moved).expect("rename");
    std::os::unix::fs::symlink(&moved, &private).expect("symlink");
    default_file_case(tmp.path(), none, "unsafe:a symbolic link");
    fs::remove_file(&private).expect("unlink");
    fs::write(&private, b"").expect("write");
    default_file_case(tmp.path(), none, "unsafe:a regular file, not a directory");
    fs::remove_file(&private).expect("unlink");
    mkfifo(&private);
    default_file_case(tmp.path(), none, "unsafe:FIFO");
    fs::remove_file(&private).expect("unlink");

    // Another user who made the directory first (mode 0700, so that it looks private).
    if !root_or_skip("the_default_per_user_file_is_private (another user's directory)") {
        return;
    }
    fs::create_dir(&private).expect("mkdir");
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::chown(&private, Some(NOBODY), Some(NOBODY)).expect("chown");
    default_file_case(tmp.path(), none, "unsafe:owned by uid 65534");
    assert_eq!(
        names_in(&private),
        Vec::<String>::new(),
        "nothing created in it"
    );
}

/// Runs only when re-executed by the test above, with TMPDIR and XDG_RUNTIME_DIR set.
/// `FASTMMAP_DEFAULT_FILE_TEST` is `ok:DIR` (the default cache and session files open, in
/// DIR, with mode 0600) or `unsafe:TEXT` (both are refused with `Error::UnsafeDirectory`, whose
/// message contains TEXT and says what to do).
#[test]
fn default_file_in_tmpdir() {
    let Some(expect) = std::env::var_os("FASTMMAP_DEFAULT_FILE_TEST") else {
        return;
    };
    let expect = expect.into_string().expect("UTF-8");
    if let Some(dir) = expect.strip_prefix("ok:") {
        let cache = Cache::builder().open().expect("default file");
        assert_eq!(cache.path(), Path::new(dir).join("fastmmap.cache"));
        let mode = fs::metadata(cache.path())
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "the default per-user file is created private");
        #[cfg(feature = "session")]
        fastmmap::session::SessionStore::builder()
            .build()
            .expect("session store on the default file");
        return;
    }
    let text = expect.strip_prefix("unsafe:").expect("ok: or unsafe:");
    let check = |e: Error| match e {
        Error::UnsafeDirectory {
            ref dir,
            ref reason,
        } => {
            let message = e.to_string();
            assert!(reason.contains(text), "{message}");
            assert!(dir.starts_with(std::env::temp_dir()), "{}", dir.display());
            assert!(message.contains(&*dir.to_string_lossy()), "{message}");
            assert!(message.contains("remove it"), "{message}");
            assert!(message.contains("CacheBuilder::path"), "{message}");
        }
        other => panic!("expected UnsafeDirectory, got {other:?}"),
    };
    check(Cache::builder().open().expect_err("refused"));
    #[cfg(feature = "session")]
    match fastmmap::session::SessionStore::builder().build() {
        Err(fastmmap::session::Error::Cache(e)) => check(e),
        other => panic!("session store: expected a refusal, got {:?}", other.err()),
    }
}
