#![cfg(feature = "cli")]
//! The `fastmmap` command, driven as a user drives it: the built binary in a child process,
//! on real files, for both layouts — every command and exit status, `check` on damaged files
//! (which it must leave byte for byte as they were), and `dump | load` through a real pipe.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fastmmap::{Cache, CacheBuilder, EntryFlags, Expiry, Layout, LockKind, Update};
use serde_json::Value;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_fastmmap");
const NUM_PAGES: u32 = 5;
const PAGE_SIZE: u32 = 8192;
/// Offset of the magic word in a page header (docs/format.md).
const PAGE_MAGIC_OFFSET: usize = 0;

/// What a run of the binary left behind.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl From<std::process::Output> for Run {
    fn from(output: std::process::Output) -> Run {
        Run {
            code: output.status.code().expect("exited, not killed"),
            stdout: output.stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    fn text(&self) -> String {
        String::from_utf8(self.stdout.clone()).expect("stdout is UTF-8")
    }

    fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }

    #[track_caller]
    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success: {self:?}");
        self
    }
}

/// Runs the binary with `args`, feeding it `stdin`.
fn run<I, S>(args: I, stdin: &[u8]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    // A command that does not read stdin may exit first: a failed write is not an error here.
    let (output, _written) = common::output_with_stdin(Command::new(BIN).args(args), stdin);
    Run::from(output)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Native,
    FastMmap,
}

const BOTH: [Kind; 2] = [Kind::Native, Kind::FastMmap];

/// A cache file in its own temporary directory.
struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    kind: Kind,
}

impl Fixture {
    /// A path where no file exists yet.
    fn new(kind: Kind) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("test.cache");
        Fixture {
            _dir: dir,
            path,
            kind,
        }
    }

    /// A freshly created file (made by `fastmmap create`).
    fn created(kind: Kind) -> Fixture {
        let f = Fixture::new(kind);
        f.create().ok();
        f
    }

    /// The options that open this file: a native file knows its geometry; a fastmmap-layout
    /// one must be told.
    fn options(&self) -> Vec<String> {
        match self.kind {
            Kind::Native => vec![],
            Kind::FastMmap => geometry("fastmmap"),
        }
    }

    fn create(&self) -> Run {
        let layout = match self.kind {
            Kind::Native => "native",
            Kind::FastMmap => "fastmmap",
        };
        let mut args: Vec<Vec<u8>> = vec![b"create".to_vec()];
        args.extend(geometry(layout).into_iter().map(String::into_bytes));
        args.push(self.path.as_os_str().as_bytes().to_vec());
        run(args.iter().map(|a| OsStr::from_bytes(a)), b"")
    }

    /// `fastmmap COMMAND [options] FILE ARGS…` with `stdin`.
    fn run_with(&self, command: &str, args: &[&[u8]], stdin: &[u8]) -> Run {
        let mut all: Vec<Vec<u8>> = vec![command.as_bytes().to_vec()];
        all.extend(self.options().into_iter().map(String::into_bytes));
        all.push(self.path.as_os_str().as_bytes().to_vec());
        all.extend(args.iter().map(|a| a.to_vec()));
        run(all.iter().map(|a| OsStr::from_bytes(a)), stdin)
    }

    fn run(&self, command: &str, args: &[&[u8]]) -> Run {
        self.run_with(command, args, b"")
    }

    /// The same file through the library, in this process.
    fn builder(&self) -> CacheBuilder {
        let b = Cache::builder().path(&self.path);
        match self.kind {
            Kind::Native => b,
            Kind::FastMmap => b
                .layout(Layout::FastMmap)
                .num_pages(NUM_PAGES)
                .page_size(PAGE_SIZE),
        }
    }

    fn cache(&self) -> Cache {
        self.builder().open().expect("open through the library")
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).expect("read the cache file")
    }

    /// File offset of page `page`: a native file's pages follow its 4096-aligned header, and
    /// its default overflow area follows them; a fastmmap-layout file is its pages.
    fn page_offset(&self, page: u32) -> usize {
        let pages = (NUM_PAGES * PAGE_SIZE) as usize;
        let area = match self.kind {
            Kind::Native => common::native_default_area(NUM_PAGES, PAGE_SIZE) as usize,
            Kind::FastMmap => 0,
        };
        let header = self.bytes().len() - pages - area;
        header + (page * PAGE_SIZE) as usize
    }

    /// Overwrites bytes of the file, as a stray writer would.
    fn damage(&self, offset: usize, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .expect("open for damage");
        file.write_all_at(bytes, offset as u64).expect("damage");
    }

    /// `dump` output as JSON objects, without `last_access`, sorted.
    fn dump(&self) -> Vec<Value> {
        let out = self.run("dump", &[]).ok();
        let mut records: Vec<Value> = out
            .lines()
            .iter()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).expect("dump line is JSON");
                v.as_object_mut().expect("object").remove("last_access");
                v
            })
            .collect();
        records.sort_by_key(|v| v.to_string());
        records
    }
}

fn geometry(layout: &str) -> Vec<String> {
    vec![
        "--layout".into(),
        layout.into(),
        "--num-pages".into(),
        NUM_PAGES.to_string(),
        "--page-size".into(),
        PAGE_SIZE.to_string(),
    ]
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

#[test]
fn create_makes_a_file_of_the_layout_and_geometry() {
    let pages = u64::from(NUM_PAGES * PAGE_SIZE);
    let fm = Fixture::created(Kind::FastMmap);
    assert_eq!(fm.path.metadata().unwrap().len(), pages, "no header");
    let native = Fixture::created(Kind::Native);
    let len = native.path.metadata().unwrap().len();
    assert!(len > pages && (len - pages).is_multiple_of(4096), "{len}");
    assert!(native.bytes().starts_with(b"fastmmap"));
    // A native file is then opened without geometry options: they come from its header.
    let stats: Value =
        serde_json::from_slice(&native.run("stats", &[b"--json"]).ok().stdout).unwrap();
    assert_eq!(
        (stats["num_pages"].as_u64(), stats["page_size"].as_u64()),
        (Some(u64::from(NUM_PAGES)), Some(u64::from(PAGE_SIZE)))
    );
    // The defaults are Cache::FastMmap's: 89 pages of 64 KiB.
    let default = Fixture::new(Kind::FastMmap);
    run(
        [
            OsStr::new("create"),
            OsStr::new("--layout"),
            OsStr::new("fastmmap"),
            default.path.as_os_str(),
        ],
        b"",
    )
    .ok();
    assert_eq!(default.path.metadata().unwrap().len(), 89 * 65536);
}

#[test]
fn create_refuses_an_existing_file() {
    let f = Fixture::created(Kind::Native);
    f.run("set", &[b"k", b"v"]).ok();
    let before = f.bytes();
    let again = f.create();
    assert_eq!(again.code, 2);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    assert_eq!(f.bytes(), before);
}

#[test]
fn only_create_creates_a_file() {
    let f = Fixture::new(Kind::Native);
    let commands: [(&str, &[&[u8]]); 11] = [
        ("get", &[b"k"]),
        ("set", &[b"k", b"v"]),
        ("set", &[b"k", b"-"]),
        ("remove", &[b"k"]),
        ("keys", &[]),
        ("stats", &[]),
        ("check", &[]),
        ("purge", &[]),
        ("clear", &[]),
        ("dump", &[]),
        ("load", &[]),
    ];
    for (command, args) in commands {
        let r = f.run_with(command, args, b"{\"key\":\"k\",\"value\":\"v\"}\n");
        assert_eq!(r.code, 2, "{command}: {r:?}");
        let expected = format!("fastmmap: {}: no such cache file", f.path.display());
        assert!(r.stderr.starts_with(&expected), "{command}: {}", r.stderr);
        assert!(
            r.stderr.contains("fastmmap create"),
            "{command}: {}",
            r.stderr
        );
        assert!(!f.path.exists(), "{command} created the file");
    }
}

#[test]
fn get_set_remove_on_both_layouts() {
    for kind in BOTH {
        let f = Fixture::created(kind);
        f.run("set", &[b"greeting", b"hello"]).ok();
        let got = f.run("get", &[b"greeting"]).ok();
        assert_eq!(got.stdout, b"hello", "{kind:?}: nothing added");

        let missing = f.run("get", &[b"nope"]);
        assert_eq!((missing.code, missing.stdout.len()), (1, 0), "{kind:?}");
        assert_eq!(missing.stderr, "", "a miss is not an error");

        f.run("remove", &[b"greeting"]).ok();
        assert_eq!(f.run("get", &[b"greeting"]).code, 1, "{kind:?}");
        assert_eq!(f.run("remove", &[b"greeting"]).code, 1, "{kind:?}");

        // What the command stored, the library reads, and the other way round.
        f.run("set", &[b"from-cli", b"1"]).ok();
        let cache = f.cache();
        assert_eq!(cache.get(b"from-cli").unwrap(), Some(b"1".to_vec()));
        cache.set(b"from-lib", b"2").unwrap();
        assert_eq!(f.run("get", &[b"from-lib"]).ok().stdout, b"2");
    }
}

#[test]
fn set_reads_binary_values_from_stdin() {
    for kind in BOTH {
        let f = Fixture::created(kind);
        let value: Vec<u8> = (0..=255u8).chain(*b"\n\n").collect();
        f.run_with("set", &[b"bin", b"-"], &value).ok();
        assert_eq!(f.run("get", &[b"bin"]).ok().stdout, value, "{kind:?}");
        // An argument is taken byte for byte, valid UTF-8 or not.
        f.run("set", &[b"k\xff", b"v\xfe\x01"]).ok();
        assert_eq!(
            f.cache().get(b"k\xff").unwrap(),
            Some(b"v\xfe\x01".to_vec())
        );
        // A key starting with `-` after `--`.
        let mut args: Vec<OsString> = vec!["set".into()];
        args.extend(f.options().into_iter().map(OsString::from));
        args.extend([
            f.path.clone().into_os_string(),
            "--".into(),
            "-k".into(),
            "-v".into(),
        ]);
        let dash = run(&args, b"");
        assert_eq!(dash.code, 0, "{dash:?}");
        assert_eq!(f.cache().get(b"-k").unwrap(), Some(b"-v".to_vec()));
    }
}

#[test]
fn set_expire_and_purge() {
    let f = Fixture::created(Kind::Native);
    let before = now_secs();
    f.run("set", &[b"hour", b"v", b"--expire", b"3600"]).ok();
    let expire_on = f
        .cache()
        .entry(b"hour")
        .unwrap()
        .unwrap()
        .expires_at
        .unwrap();
    let after = now_secs();
    assert!((before + 3600..=after + 3601).contains(&unix(expire_on)));

    // Zero seconds: expired at once, then dropped by `purge`.
    f.run("set", &[b"gone", b"v", b"--expire", b"0"]).ok();
    assert_eq!(f.run("get", &[b"gone"]).code, 1);
    f.run("set", &[b"forever", b"v"]).ok();
    assert_eq!(
        f.cache().entry(b"forever").unwrap().unwrap().expires_at,
        None
    );
    let entries = |f: &Fixture| -> u64 {
        let s: Value = serde_json::from_slice(&f.run("stats", &[b"--json"]).ok().stdout).unwrap();
        s["entries"].as_u64().unwrap()
    };
    assert_eq!(entries(&f), 3);
    assert_eq!(
        f.run("purge", &[]).ok().lines(),
        ["1 expired entries dropped"]
    );
    assert_eq!(entries(&f), 2);
}

#[test]
fn clear_drops_everything() {
    for kind in BOTH {
        let f = Fixture::created(kind);
        for i in 0..50 {
            f.run("set", &[format!("k{i}").as_bytes(), b"v"]).ok();
        }
        assert_eq!(f.run("keys", &[]).ok().lines().len(), 50);
        f.run("clear", &[]).ok();
        assert_eq!(f.run("keys", &[]).ok().stdout, b"");
    }
}

#[test]
fn keys_escapes_what_is_not_printable() {
    let f = Fixture::created(Kind::Native);
    let cache = f.cache();
    let keys: [(&[u8], &str); 7] = [
        (b"plain key", "plain key"),
        ("ключ→😀".as_bytes(), "ключ→😀"),
        (b"back\\slash", "back\\\\slash"),
        (b"tab\there\nnewline", "tab\\x09here\\x0anewline"),
        (b"nul\0", "nul\\x00"),
        (b"\xff\xfe not utf-8", "\\xff\\xfe not utf-8"),
        (b"\x7fdel", "\\x7fdel"),
    ];
    for (key, _) in keys {
        cache.set(key, b"v").unwrap();
    }
    let mut printed = f.run("keys", &[]).ok().lines();
    printed.sort();
    let mut expected: Vec<String> = keys.iter().map(|(_, e)| e.to_string()).collect();
    expected.sort();
    assert_eq!(printed, expected);

    // Every printed key names its entry again with --escaped, even one with a NUL byte.
    for (_, escaped) in keys {
        let got = f.run("get", &[b"--escaped", escaped.as_bytes()]).ok();
        assert_eq!(got.stdout, b"v", "{escaped}");
    }
    f.run("set", &[b"-e", b"new\\x00key", b"val\\x01"]).ok();
    assert_eq!(cache.get(b"new\0key").unwrap(), Some(b"val\x01".to_vec()));
    f.run("remove", &[b"-e", b"nul\\x00"]).ok();
    assert_eq!(cache.get(b"nul\0").unwrap(), None);
    let bad = f.run("get", &[b"-e", b"bad\\q"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("bad escape"), "{}", bad.stderr);
}

#[test]
fn stats_text_and_json() {
    for kind in BOTH {
        let f = Fixture::created(kind);
        for i in 0..20 {
            f.run("set", &[format!("key-{i}").as_bytes(), b"value"])
                .ok();
        }
        f.run("get", &[b"key-3"]).ok();
        assert_eq!(f.run("get", &[b"absent"]).code, 1);

        let json: Value =
            serde_json::from_slice(&f.run("stats", &[b"--json"]).ok().stdout).unwrap();
        let pages = json["pages"].as_array().expect("pages array");
        assert_eq!(pages.len(), NUM_PAGES as usize);
        for field in [
            "entries",
            "slots",
            "used_bytes",
            "free_bytes",
            "reads",
            "hits",
            "resets",
        ] {
            let sum: u64 = pages.iter().map(|p| p[field].as_u64().unwrap()).sum();
            assert_eq!(json[field].as_u64(), Some(sum), "{kind:?} {field}");
        }
        assert_eq!(json["entries"], 20);
        assert_eq!(
            (json["reads"].as_u64(), json["hits"].as_u64()),
            (Some(2), Some(1))
        );
        assert_eq!(json["page_size"], PAGE_SIZE);
        let layout = if kind == Kind::Native {
            "native"
        } else {
            "fastmmap"
        };
        assert_eq!(json["layout"], layout);
        // A new native file gets robust locks where the platform has them (Linux, glibc).
        let lock = if kind == Kind::Native && cfg!(all(target_os = "linux", target_env = "gnu")) {
            "robust"
        } else {
            "fcntl"
        };
        assert_eq!(json["lock_kind"], lock);
        let page_numbers: Vec<u64> = pages.iter().map(|p| p["page"].as_u64().unwrap()).collect();
        assert_eq!(page_numbers, (0..u64::from(NUM_PAGES)).collect::<Vec<_>>());

        let text = f.run("stats", &[]).ok().text();
        assert!(text.contains("entries    20"), "{text}");
        assert!(text.contains(&format!("layout     {layout}")), "{text}");
        assert!(text.contains(&format!("lock kind  {lock}")), "{text}");
        assert!(
            text.contains("page  entries    slots  used bytes  free bytes"),
            "{text}"
        );
        // The fault counters: a block of their own, each line `    NAME  COUNT`.
        assert!(text.contains("faults met by this command\n"), "{text}");
        for name in [
            "dirty lost",
            "backing errors",
            "decode errors",
            "lock timeouts",
        ] {
            assert!(
                text.contains(&format!("    {name:<15}0\n")),
                "{name}: {text}"
            );
        }
        // A native file has its default overflow area (an eighth of the pages' bytes, in
        // 4 KiB blocks), and says how it is used; a fastmmap-layout file has none.
        let area = common::native_default_area(NUM_PAGES, PAGE_SIZE);
        let overflow_lines = match kind {
            Kind::Native => {
                assert_eq!(json["overflow_bytes"], area, "{kind:?}");
                let line = format!("overflow   0 of {area} bytes used;");
                assert!(text.contains(&line), "{line:?}: {text}");
                1
            }
            Kind::FastMmap => {
                assert_eq!(json["overflow_bytes"], 0, "{kind:?}");
                assert!(!text.contains("overflow"), "{text}");
                0
            }
        };
        // Totals (and the overflow line) and a blank line (12), the fault block and a blank
        // line (6), the page table.
        assert_eq!(
            text.lines().count(),
            12 + overflow_lines + 6 + 1 + NUM_PAGES as usize,
            "{text}"
        );
        for field in [
            "dirty_lost",
            "backing_errors",
            "decode_errors",
            "lock_timeouts",
        ] {
            assert_eq!(json[field], 0, "{kind:?} {field}");
        }
    }
}

/// A backing store for a file written in write-back mode: the values stay dirty in the file,
/// and the store is never called (a call fails, loudly).
struct NeverCalled;

impl fastmmap::Backing for NeverCalled {
    fn load(&self, key: &[u8]) -> Result<Option<Vec<u8>>, fastmmap::BackingError> {
        panic!("load of {key:?}: the store should not be called")
    }
    fn store(
        &self,
        key: &[u8],
        _: &[u8],
        _: Option<SystemTime>,
    ) -> Result<(), fastmmap::BackingError> {
        panic!("store of {key:?}: the store should not be called")
    }
    fn delete(&self, key: &[u8]) -> Result<(), fastmmap::BackingError> {
        panic!("delete of {key:?}: the store should not be called")
    }
}

/// `stats` resets a page it finds damaged; the write-back values on it, never written to
/// their store, are counted in its `dirty lost` (this run only: the next run finds a sound
/// page and counts nothing).
#[test]
fn stats_counts_the_dirty_values_of_a_damaged_page_it_resets() {
    for kind in BOTH {
        let f = Fixture::created(kind);
        let dirty_on_page_2 = {
            let cache = f
                .builder()
                .backing(NeverCalled)
                .write_mode(fastmmap::WriteMode::Back)
                .open()
                .expect("open with a backing store");
            for i in 0..40 {
                cache
                    .set(format!("key-{i}").as_bytes(), b"dirty value")
                    .unwrap();
            }
            cache.stats().unwrap().pages[2].entries
        };
        assert!(dirty_on_page_2 > 0, "{kind:?}: no entries on page 2");
        f.damage(
            f.page_offset(2) + PAGE_MAGIC_OFFSET,
            &[0xde, 0xad, 0xbe, 0xef],
        );

        let json: Value =
            serde_json::from_slice(&f.run("stats", &[b"--json"]).ok().stdout).unwrap();
        assert_eq!(json["pages"][2]["resets"], 1, "{kind:?}: {json}");
        assert_eq!(
            json["dirty_lost"],
            u64::from(dirty_on_page_2),
            "{kind:?}: {json}"
        );
        let text = f.run("stats", &[]).ok().text();
        assert!(text.contains("    dirty lost     0\n"), "{kind:?}: {text}");
    }
}

#[test]
fn check_reports_a_damaged_page_and_changes_nothing() {
    for kind in BOTH {
        let f = Fixture::created(kind);
        for i in 0..40 {
            f.run("set", &[format!("key-{i}").as_bytes(), b"value"])
                .ok();
        }
        let valid = f.run("check", &[]).ok();
        assert_eq!(valid.lines(), [format!("all {NUM_PAGES} pages valid")]);

        f.damage(
            f.page_offset(2) + PAGE_MAGIC_OFFSET,
            &[0xde, 0xad, 0xbe, 0xef],
        );
        let damaged = f.bytes();
        let bad = f.run("check", &[]);
        assert_eq!(bad.code, 3, "{kind:?}: {bad:?}");
        assert_eq!(
            bad.lines(),
            [
                "page 2: bad page magic".to_string(),
                format!("1 of {NUM_PAGES} pages damaged")
            ]
        );
        assert!(f.bytes() == damaged, "{kind:?}: check changed the file");
        // Again: still damaged, still untouched.
        assert_eq!(f.run("check", &[]).code, 3);
        assert!(f.bytes() == damaged);

        let repaired = f.run("check", &[b"--repair"]).ok();
        assert_eq!(
            repaired.lines(),
            [
                "page 2: bad page magic (reset)".to_string(),
                format!("1 of {NUM_PAGES} pages damaged and reset")
            ]
        );
        f.run("check", &[]).ok();
        if kind == Kind::Native {
            // The native file keeps the count of resets.
            let json: Value =
                serde_json::from_slice(&f.run("stats", &[b"--json"]).ok().stdout).unwrap();
            assert_eq!(json["pages"][2]["resets"], 1);
        }
    }
}

#[test]
fn check_finds_damage_inside_an_entry() {
    // A damaged key leaves the page header intact, so only a full validation sees it.
    for kind in BOTH {
        let f = Fixture::created(kind);
        f.run("set", &[b"needle-in-the-page", b"value"]).ok();
        f.run("check", &[]).ok();
        let bytes = f.bytes();
        let at = bytes
            .windows(18)
            .position(|w| w == b"needle-in-the-page")
            .expect("the key is in the file");
        f.damage(at, b"N");
        let damaged = f.bytes();
        let bad = f.run("check", &[]);
        assert_eq!(bad.code, 3, "{kind:?}: {bad:?}");
        assert!(bad.lines()[0].starts_with("page "), "{bad:?}");
        assert!(f.bytes() == damaged, "{kind:?}: check changed the file");
    }
}

#[test]
fn check_fails_on_a_damaged_native_header() {
    let f = Fixture::created(Kind::Native);
    // The page count field of the header; the header checksum no longer matches.
    f.damage(20, &[0x07]);
    let damaged = f.bytes();
    let r = f.run("check", &[]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr
            .starts_with(&format!("fastmmap: {}: bad file header", f.path.display())),
        "{}",
        r.stderr
    );
    assert!(f.bytes() == damaged);
    // Other commands refuse the file as well, and leave it alone.
    assert_eq!(f.run("get", &[b"k"]).code, 2);
    assert!(f.bytes() == damaged);
}

#[test]
fn an_empty_file_is_called_empty_and_left_alone() {
    for kind in BOTH {
        let f = Fixture::new(kind);
        std::fs::File::create(&f.path).expect("create an empty file");
        let stdin = b"{\"key\":\"k\",\"value\":\"v\"}\n";
        let commands: [(&str, &[&[u8]], i32); 11] = [
            ("check", &[], 3),
            ("check", &[b"--repair"], 3),
            ("stats", &[], 2),
            ("keys", &[], 2),
            ("get", &[b"k"], 2),
            ("set", &[b"k", b"v"], 2),
            ("remove", &[b"k"], 2),
            ("dump", &[], 2),
            ("load", &[], 2),
            ("purge", &[], 2),
            ("clear", &[], 2),
        ];
        for (command, args, code) in commands {
            let r = f.run_with(command, args, stdin);
            let what = format!("{kind:?} {command} {args:?}: {r:?}");
            assert_eq!(r.code, code, "{what}");
            assert!(
                r.stderr.starts_with(&format!(
                    "fastmmap: {}: is empty (0 bytes): not a cache file",
                    f.path.display()
                )) && r.stderr.contains("`fastmmap create`"),
                "{what}"
            );
            assert_eq!(r.stdout, b"", "{what}");
            assert_eq!(f.bytes(), b"", "{what}: the empty file was written to");
        }
    }
}

#[test]
fn library_errors_name_the_file() {
    let native = Fixture::created(Kind::Native);
    let path = native.path.display().to_string();
    let as_fastmmap = run(
        [
            OsStr::new("keys"),
            OsStr::new("--layout"),
            OsStr::new("fastmmap"),
            native.path.as_os_str(),
        ],
        b"",
    );
    assert_eq!(as_fastmmap.code, 2);
    assert!(
        as_fastmmap
            .stderr
            .starts_with(&format!("fastmmap: {path}: ")),
        "{}",
        as_fastmmap.stderr
    );

    let wrong_geometry = native.run("stats", &[b"--num-pages", b"7"]);
    assert_eq!(wrong_geometry.code, 2);
    assert!(
        wrong_geometry.stderr.contains("num_pages"),
        "{}",
        wrong_geometry.stderr
    );

    let fm = Fixture::created(Kind::FastMmap);
    let wrong_size = run(
        [
            OsStr::new("keys"),
            OsStr::new("--layout"),
            OsStr::new("fastmmap"),
            fm.path.as_os_str(),
        ],
        b"",
    );
    assert_eq!(
        wrong_size.code, 2,
        "89 default pages do not fit: {wrong_size:?}"
    );

    let too_large = native.run_with("set", &[b"big", b"-"], &vec![b'x'; PAGE_SIZE as usize]);
    assert_eq!(too_large.code, 2);
    assert!(
        too_large.stderr.starts_with(&format!("fastmmap: {path}: ")),
        "{}",
        too_large.stderr
    );
}

#[test]
fn usage_errors_exit_2() {
    let f = Fixture::created(Kind::Native);
    let p = f.path.as_os_str();
    let cases: Vec<Vec<&OsStr>> = vec![
        vec![],
        vec![OsStr::new("frobnicate"), p],
        vec![OsStr::new("get"), p],
        vec![OsStr::new("set"), p, OsStr::new("k")],
        vec![OsStr::new("keys")],
        vec![
            OsStr::new("keys"),
            OsStr::new("--layout"),
            OsStr::new("perl"),
            p,
        ],
        vec![
            OsStr::new("set"),
            p,
            OsStr::new("k"),
            OsStr::new("v"),
            OsStr::new("--expire"),
            OsStr::new("soon"),
        ],
        vec![
            OsStr::new("stats"),
            p,
            OsStr::new("--num-pages"),
            OsStr::new("-3"),
        ],
    ];
    for args in cases {
        let r = run(&args, b"");
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(!r.stderr.is_empty(), "{args:?}");
    }
}

#[test]
fn help_states_the_decisions() {
    assert_help_says(
        &["--help"],
        &[
            "Only `create` creates a cache file",
            "--escaped",
            "\\xNN",
            "EXIT STATUS",
            "3  `check` found damaged pages",
            "LOCKS",
            "--lock <KIND>",
            "--lock-timeout <SECONDS>",
        ],
    );
    assert_help_says(
        &["dump", "--help"],
        &[
            "key_base64",
            "value_base64",
            "expire_on",
            "last_access",
            "modseq",
        ],
    );
    assert_help_says(
        &["load", "--help"],
        &[
            "nothing is stored",
            "expiry time has passed is skipped",
            "set_if_newer",
        ],
    );
    assert_help_says(&["check", "--help"], &["without changing a byte"]);
}

/// Asserts that what `fastmmap ARGS` prints (a help text) says every one of `needles`.
fn assert_help_says(args: &[&str], needles: &[&str]) {
    let help = run(args, b"").ok().text();
    for needle in needles {
        assert!(help.contains(needle), "{args:?} lacks {needle:?}");
    }
}

/// Entries of every kind `dump` must carry: binary and UTF-8 keys and values, flags, expiry
/// and modseqs (with and without expiry).
fn populate(f: &Fixture) {
    let cache = f.cache();
    let hour = Duration::from_secs(3600);
    cache.set(b"plain", b"text").unwrap();
    cache
        .set(b"\0\xffbinary key", b"\x80\x81\0binary value")
        .unwrap();
    cache.set(b"line\nbreak", b"\"quoted\"\n\\").unwrap();
    cache
        .set_with_flags(
            "ключ".as_bytes(),
            "значение".as_bytes(),
            Expiry::Never,
            EntryFlags(0xC000_0000),
        )
        .unwrap();
    cache
        .set_with_flags(b"undef", b"", Expiry::Never, EntryFlags(0x2000_0000))
        .unwrap();
    cache
        .set_with(b"expiring", b"soon", Expiry::After(hour))
        .unwrap();
    cache
        .set_with_flags(
            b"dirty",
            b"\xfe",
            Expiry::After(2 * hour),
            EntryFlags(0x8000_0001),
        )
        .unwrap();
    cache.set_if_newer(b"versioned", b"v7", 7).unwrap();
    let expiring = f.builder().expire_after(hour).open().unwrap();
    expiring
        .set_if_newer(b"versioned\xff", b"v9\xff", u64::MAX)
        .unwrap();
    for i in 0..30 {
        cache
            .set(format!("filler-{i}").as_bytes(), &[i as u8; 100])
            .unwrap();
    }
    // Neither dumped nor loaded: an expired entry and a tombstone.
    cache
        .set_with(b"expired", b"x", Expiry::After(Duration::ZERO))
        .unwrap();
    cache.remove_with_modseq(b"tombstone", 3).unwrap();
}

/// `dump SRC | load DST`, through a pipe between the two processes.
fn pipe_dump_into_load(src: &Fixture, dst: &Fixture) -> (i32, String) {
    let args = |f: &Fixture, command: &str| -> Vec<std::ffi::OsString> {
        let mut v = vec![command.into()];
        v.extend(f.options().into_iter().map(Into::into));
        v.push(f.path.clone().into_os_string());
        v
    };
    let mut dump = Command::new(BIN)
        .args(args(src, "dump"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let load = Command::new(BIN)
        .args(args(dst, "load"))
        .stdin(Stdio::from(dump.stdout.take().unwrap()))
        .output()
        .unwrap();
    assert!(dump.wait().unwrap().success());
    assert!(load.status.success(), "{load:?}");
    (
        load.status.code().unwrap(),
        String::from_utf8(load.stdout).unwrap(),
    )
}

/// A live entry as the library sees it: key, value, expiry, flags, modseq.
type Stored = (Vec<u8>, Vec<u8>, Option<SystemTime>, u32, Option<u64>);

/// Every live entry of a cache, through the library, sorted.
fn contents(f: &Fixture) -> Vec<Stored> {
    let mut all: Vec<_> = f
        .cache()
        .iter()
        .map(|r| {
            let (k, e) = r.unwrap();
            (k, e.value, e.expires_at, e.flags.0, e.modseq)
        })
        .collect();
    all.sort();
    all
}

#[test]
fn dump_then_load_gives_identical_contents() {
    for (from, to) in [
        (Kind::Native, Kind::Native),
        (Kind::FastMmap, Kind::FastMmap),
        (Kind::Native, Kind::FastMmap),
        (Kind::FastMmap, Kind::Native),
    ] {
        let src = Fixture::created(from);
        populate(&src);
        let dst = Fixture::created(to);
        let (_, summary) = pipe_dump_into_load(&src, &dst);
        let expected = contents(&src);
        assert_eq!(expected.len(), 39);
        assert_eq!(summary, "39 entries loaded, 0 expired skipped, 0 refused\n");
        assert_eq!(contents(&dst), expected, "{from:?} -> {to:?}");
        assert_eq!(dst.dump(), src.dump(), "{from:?} -> {to:?}");
    }
}

#[test]
fn dump_format() {
    let f = Fixture::created(Kind::Native);
    populate(&f);
    let records = f.dump();
    let find = |key: &str| -> &Value {
        records
            .iter()
            .find(|r| r["key"] == key || r["key_base64"] == key)
            .unwrap_or_else(|| panic!("no record for {key}"))
    };
    assert_eq!(
        find("plain"),
        &serde_json::json!({"key": "plain", "value": "text", "expire_on": null, "flags": 0})
    );
    // Bytes that are not UTF-8 are base64; text stays text.
    let binary = find("AP9iaW5hcnkga2V5");
    assert_eq!(binary["value_base64"], "gIEAYmluYXJ5IHZhbHVl");
    assert_eq!(find("ключ")["value"], "значение");
    assert_eq!(find("ключ")["flags"], 0xC000_0000u32);
    assert_eq!(find("line\nbreak")["value"], "\"quoted\"\n\\");
    assert!(find("expiring")["expire_on"].as_u64().unwrap() > now_secs());
    assert_eq!(find("versioned")["modseq"], 7);
    assert_eq!(find("versioned")["flags"], 0x0800_0000);
    assert!(
        find("plain").get("modseq").is_none(),
        "modseq only when set"
    );
    assert!(
        records
            .iter()
            .all(|r| r["key"] != "expired" && r["key"] != "tombstone")
    );

    // Each line is one JSON object with a last access time.
    let raw = f.run("dump", &[]).ok().lines();
    assert_eq!(raw.len(), 39);
    for line in raw {
        let v: Value = serde_json::from_str(&line).unwrap();
        assert!(v["last_access"].as_u64().unwrap() > 1_600_000_000);
    }
    // Dumping is not reading: the statistics count no reads.
    let stats: Value = serde_json::from_slice(&f.run("stats", &[b"--json"]).ok().stdout).unwrap();
    assert_eq!(stats["reads"], 0);
}

#[test]
fn dump_and_load_carry_the_last_second_a_file_can_hold() {
    let last = UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX));
    let src = Fixture::created(Kind::Native);
    src.cache().set_with(b"k", b"v", Expiry::At(last)).unwrap();
    let dumped = src.dump();
    assert_eq!(dumped.len(), 1);
    assert_eq!(dumped[0]["expire_on"], u64::from(u32::MAX));
    let dst = Fixture::created(Kind::FastMmap);
    let line = serde_json::to_vec(&dumped[0]).unwrap();
    dst.run_with("load", &[], &line).ok();
    let e = dst.cache().entry(b"k").unwrap().unwrap();
    assert_eq!((e.value, e.expires_at), (b"v".to_vec(), Some(last)));
}

#[test]
fn load_accepts_hand_written_records_and_skips_expired_ones() {
    let f = Fixture::created(Kind::FastMmap);
    let now = now_secs();
    let input = format!(
        "{{\"key\":\"a\",\"value\":\"1\"}}\n\
         \n\
         {{\"key\":\"past\",\"value\":\"x\",\"expire_on\":{}}}\n\
         {{\"key_base64\":\"AP8=\",\"value\":\"2\",\"expire_on\":{},\"flags\":2147483648}}\n\
         {{\"key\":\"m\",\"value\":\"3\",\"modseq\":5,\"expire_on\":{}}}\n",
        now - 1,
        now + 600,
        now + 900,
    );
    let r = f.run_with("load", &[], input.as_bytes()).ok();
    assert_eq!(
        r.lines(),
        ["3 entries loaded, 1 expired skipped, 0 refused"]
    );
    let cache = f.cache();
    assert_eq!(cache.get(b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(cache.get(b"past").unwrap(), None);
    let bin = cache.entry(b"\0\xff").unwrap().unwrap();
    assert_eq!(
        (unix(bin.expires_at.unwrap()), bin.flags.0),
        (now + 600, 0x8000_0000)
    );
    let m = cache.entry(b"m").unwrap().unwrap();
    assert_eq!(
        (unix(m.expires_at.unwrap()), m.modseq),
        (now + 900, Some(5))
    );
}

#[test]
fn load_checks_all_input_before_storing_anything() {
    let f = Fixture::created(Kind::Native);
    let cases: [(&str, &str); 10] = [
        (
            "{\"key\":\"a\",\"value\":\"1\"}\n{\"key\":\"b\",\"value\":\"2\"}\nnot json\n",
            "stdin:3:",
        ),
        (
            "{\"key\":\"a\",\"value\":\"1\"}\n{\"key\":\"b\"}\n",
            "stdin:2: missing field `value`",
        ),
        (
            "{\"key\":\"a\",\"value\":\"1\",\"colour\":\"red\"}\n",
            "stdin:1:",
        ),
        (
            "{\"key\":\"a\",\"value_base64\":\"***\"}\n",
            "stdin:1: value_base64 is not valid base64",
        ),
        (
            "{\"key\":\"a\",\"key_base64\":\"YQ==\",\"value\":\"1\"}\n",
            "stdin:1: both key and key_base64",
        ),
        (
            "{\"key\":\"a\",\"value\":\"1\",\"flags\":268435456}\n",
            "stdin:1: flags has the tombstone bit",
        ),
        (
            "{\"key\":\"a\",\"value\":\"1\",\"expire_on\":-4}\n",
            "stdin:1:",
        ),
        // Perl reads an undef entry as undef: its value bytes would be lost.
        (
            "{\"key\":\"a\",\"value\":\"1\"}\n{\"key\":\"u\",\"value\":\"lost\",\"flags\":536870912}\n",
            "stdin:2: flags has the undef bit (0x20000000) but the value is not empty",
        ),
        (
            "{\"key\":\"u\",\"value_base64\":\"AA==\",\"flags\":2684354560}\n",
            "stdin:1: flags has the undef bit (0x20000000) but the value is not empty",
        ),
        // A value stored compressed (LZ4's bit, as a handle with compression dumps it): stored
        // without the bit, the compressed bytes would read back as the value.
        (
            "{\"key\":\"a\",\"value\":\"1\"}\n{\"key\":\"z\",\"value\":\"x\",\"flags\":33554432}\n",
            "stdin:2: flags 0x2000000 has a compression bit",
        ),
    ];
    for (input, message) in cases {
        let r = f.run_with("load", &[], input.as_bytes());
        assert_eq!(r.code, 2, "{input}: {r:?}");
        assert!(
            r.stderr.starts_with(&format!("fastmmap: {message}")),
            "{input}: {}",
            r.stderr
        );
        assert_eq!(
            f.run("keys", &[]).ok().stdout,
            b"",
            "{input}: something was stored"
        );
    }
    let big = format!(
        "{{\"key\":\"a\",\"value\":\"1\"}}\n{{\"key\":\"big\",\"value\":\"{}\"}}\n",
        "x".repeat(PAGE_SIZE as usize)
    );
    let r = f.run_with("load", &[], big.as_bytes());
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.starts_with("fastmmap: stdin:2: key big: entry of"),
        "{}",
        r.stderr
    );
    assert_eq!(f.run("keys", &[]).ok().stdout, b"");
}

#[test]
fn refused_stores_exit_1() {
    let f = Fixture::created(Kind::Native);
    let cache = f.cache();
    cache.remove_with_modseq(b"gone", 10).unwrap();
    cache.set_if_newer(b"newer", b"kept", 10).unwrap();

    let set = f.run("set", &[b"gone", b"v"]);
    assert_eq!(set.code, 1);
    assert!(
        set.stderr.contains("key gone: not stored"),
        "{}",
        set.stderr
    );

    let input = "{\"key\":\"newer\",\"value\":\"stale\",\"modseq\":9}\n\
                 {\"key\":\"gone\",\"value\":\"stale\"}\n\
                 {\"key\":\"fresh\",\"value\":\"1\"}\n\
                 {\"key\":\"gone\",\"value\":\"newest\",\"modseq\":11}\n";
    let r = f.run_with("load", &[], input.as_bytes());
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        r.lines(),
        ["2 entries loaded, 0 expired skipped, 2 refused"]
    );
    assert!(
        r.stderr.contains("stdin:1: key newer: not stored"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("stdin:2: key gone: not stored"),
        "{}",
        r.stderr
    );
    assert_eq!(cache.get(b"newer").unwrap(), Some(b"kept".to_vec()));
    assert_eq!(cache.get(b"fresh").unwrap(), Some(b"1".to_vec()));
    assert_eq!(cache.get(b"gone").unwrap(), Some(b"newest".to_vec()));
}

#[test]
fn a_closed_stdout_ends_quietly() {
    // Default geometry (89 pages of 64 KiB), and more output than a pipe buffers.
    let f = Fixture::new(Kind::Native);
    run([OsStr::new("create"), f.path.as_os_str()], b"").ok();
    let mut input = String::new();
    for i in 0..3000 {
        input += &format!(
            "{{\"key\":\"a-rather-long-key-number-{i:06}\",\"value\":\"{}\"}}\n",
            "v".repeat(100)
        );
    }
    f.run_with("load", &[], input.as_bytes()).ok();
    for command in ["keys", "dump"] {
        let mut child = Command::new(BIN)
            .args([OsStr::new(command), f.path.as_os_str()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Read one line, as `head -1` does, then close the pipe.
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(first.contains("a-rather-long-key"), "{first}");
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{command}: {stderr}");
        assert_eq!(stderr, "", "{command}");
    }
}

#[test]
fn options_go_before_or_after_the_command() {
    let f = Fixture::created(Kind::FastMmap);
    f.run("set", &[b"k", b"v"]).ok();
    let mut args: Vec<OsString> = geometry("fastmmap")
        .into_iter()
        .map(OsString::from)
        .collect();
    args.extend(["get".into(), f.path.clone().into_os_string(), "k".into()]);
    assert_eq!(run(&args, b"").ok().stdout, b"v");
}

/// `fastmmap create --lock KIND` with the test geometry: a native file of that lock kind.
fn create_with_lock(f: &Fixture, kind: &str) -> Run {
    let mut args: Vec<OsString> = vec!["create".into(), "--lock".into(), kind.into()];
    args.extend(geometry("native").into_iter().map(OsString::from));
    args.push(f.path.clone().into_os_string());
    run(&args, b"")
}

/// `stats --json` of `f`, with `extra` options.
fn stats_json(f: &Fixture, extra: &[&[u8]]) -> Value {
    let mut args: Vec<&[u8]> = vec![b"--json"];
    args.extend_from_slice(extra);
    serde_json::from_slice(&f.run("stats", &args).ok().stdout).expect("stats --json is JSON")
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_robust_file_works_without_lock_and_refuses_fcntl() {
    let f = Fixture::new(Kind::Native);
    create_with_lock(&f, "robust").ok();
    assert_eq!(
        f.cache().lock_kind(),
        LockKind::Robust,
        "the header records it"
    );

    // Without --lock, every command opens the file with the kind it records.
    f.run("set", &[b"k", b"v"]).ok();
    f.run_with("set", &[b"bin", b"-"], b"\0\xff").ok();
    f.run("set", &[b"gone", b"x"]).ok();
    f.run("remove", &[b"gone"]).ok();
    assert_eq!(f.run("get", &[b"k"]).ok().stdout, b"v");
    let mut keys = f.run("keys", &[]).ok().lines();
    keys.sort();
    assert_eq!(keys, ["bin", "k"]);
    f.run("check", &[]).ok();
    f.run("check", &[b"--repair"]).ok();
    f.run("purge", &[]).ok();
    let json = stats_json(&f, &[]);
    assert_eq!(
        (&json["layout"], &json["lock_kind"], &json["entries"]),
        (
            &Value::from("native"),
            &Value::from("robust"),
            &Value::from(2)
        )
    );
    let text = f.run("stats", &[]).ok().text();
    assert!(text.contains("lock kind  robust"), "{text}");
    // Naming the kind the file has is fine too.
    assert_eq!(
        f.run("get", &[b"k", b"--lock", b"robust"]).ok().stdout,
        b"v"
    );

    // dump | load from a robust file into an fcntl one, and back into a new robust one.
    let fcntl = Fixture::new(Kind::Native);
    create_with_lock(&fcntl, "fcntl").ok();
    pipe_dump_into_load(&f, &fcntl);
    assert_eq!(contents(&fcntl), contents(&f));
    let robust = Fixture::new(Kind::Native);
    create_with_lock(&robust, "robust").ok();
    pipe_dump_into_load(&fcntl, &robust);
    assert_eq!(contents(&robust), contents(&f));

    // --lock fcntl: the library's LockKindMismatch, exit 2, and the file left as it was.
    let before = f.bytes();
    let commands: [(&str, &[&[u8]]); 11] = [
        ("get", &[b"k"]),
        ("set", &[b"k", b"new"]),
        ("remove", &[b"k"]),
        ("keys", &[]),
        ("stats", &[]),
        ("stats", &[b"--json"]),
        ("check", &[b"--repair"]),
        ("purge", &[]),
        ("clear", &[]),
        ("dump", &[]),
        ("load", &[]),
    ];
    let expected = format!("fastmmap: {}: ", f.path.display());
    for (command, args) in commands {
        let mut args = args.to_vec();
        args.extend([b"--lock".as_slice(), b"fcntl"]);
        let r = f.run_with(command, &args, b"{\"key\":\"k\",\"value\":\"new\"}\n");
        assert_eq!((r.code, r.stdout.len()), (2, 0), "{command}: {r:?}");
        let message = r.stderr.to_lowercase();
        assert!(
            r.stderr.starts_with(&expected) && message.contains("robust page locks"),
            "{command}: {}",
            r.stderr
        );
        assert!(
            message.contains("fcntl locks were asked for"),
            "{}",
            r.stderr
        );
    }
    assert!(f.bytes() == before, "a refused command changed the file");
    assert_eq!(f.cache().get(b"k").unwrap(), Some(b"v".to_vec()));

    // And the other way round: an fcntl file refuses --lock robust.
    let r = fcntl.run("get", &[b"k", b"--lock", b"robust"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.to_lowercase().contains("fcntl page locks"),
        "{}",
        r.stderr
    );
}

#[test]
fn robust_locks_need_the_native_layout() {
    let f = Fixture::new(Kind::FastMmap);
    let mut args: Vec<OsString> = vec!["create".into(), "--lock".into(), "robust".into()];
    args.extend(geometry("fastmmap").into_iter().map(OsString::from));
    args.push(f.path.clone().into_os_string());
    let r = run(&args, b"");
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.starts_with(&format!(
            "fastmmap: {}: invalid options: robust locks need the native layout",
            f.path.display()
        )),
        "{}",
        r.stderr
    );
    assert!(!f.path.exists(), "nothing is created");

    // A fastmmap-layout file has fcntl locks: --lock fcntl is accepted, robust refused.
    f.create().ok();
    f.run("set", &[b"k", b"v"]).ok();
    assert_eq!(stats_json(&f, &[b"--lock", b"fcntl"])["lock_kind"], "fcntl");
    let r = f.run("get", &[b"k", b"--lock", b"robust"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("invalid options"), "{}", r.stderr);

    // `create --lock fcntl` makes a native fcntl file, the default kind.
    let native = Fixture::new(Kind::Native);
    create_with_lock(&native, "fcntl").ok();
    assert_eq!(native.cache().lock_kind(), LockKind::Fcntl);
    assert_eq!(stats_json(&native, &[])["lock_kind"], "fcntl");
}

#[test]
fn lock_timeout_is_a_usage_error_unless_a_number_of_seconds() {
    let f = Fixture::created(Kind::Native);
    for bad in ["soon", "-1", "nan", "inf", "1e30", ""] {
        // `=`: clap would take a separate "-1" for an option.
        let r = f.run("get", &[b"k", format!("--lock-timeout={bad}").as_bytes()]);
        assert_eq!(r.code, 2, "{bad:?}: {r:?}");
        assert!(r.stderr.contains("--lock-timeout"), "{bad:?}: {}", r.stderr);
    }
    for good in ["0", "0.5", "3"] {
        let r = f.run("get", &[b"k", b"--lock-timeout", good.as_bytes()]);
        assert_eq!(r.code, 1, "{good:?}: a free page, an absent key: {r:?}");
    }
}

/// Longest a command may take while a test holds a page lock: past it, the command is taken
/// to be stuck waiting for the lock, and killed so that the test fails instead of hanging.
const STUCK: Duration = Duration::from_secs(20);

/// `fastmmap COMMAND [options] FILE ARGS…` for a command with little output, killed after
/// [`STUCK`].
fn run_bounded(f: &Fixture, command: &str, args: &[&[u8]]) -> Run {
    let mut all: Vec<Vec<u8>> = vec![command.as_bytes().to_vec()];
    all.extend(f.options().into_iter().map(String::into_bytes));
    all.push(f.path.as_os_str().as_bytes().to_vec());
    all.extend(args.iter().map(|a| a.to_vec()));
    let mut child = Command::new(BIN)
        .args(all.iter().map(|a| OsStr::from_bytes(a)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fastmmap");
    let start = Instant::now();
    while child.try_wait().expect("poll fastmmap").is_none() {
        if start.elapsed() > STUCK {
            let _ = child.kill();
            let _ = child.wait();
            let shown: Vec<_> = all.iter().map(|a| String::from_utf8_lossy(a)).collect();
            panic!(
                "fastmmap {}: still waiting after {STUCK:?}",
                shown.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Run::from(child.wait_with_output().expect("wait for fastmmap"))
}

/// While this process holds the page lock of a key, `get KEY --lock-timeout 0.2` from another
/// process gives up with the library's timeout error; other pages stay usable.
fn a_held_page_times_out(f: &Fixture) {
    let cache = f.cache();
    cache.set(b"held", b"v").unwrap();
    let prefix = format!("fastmmap: {}: ", f.path.display());
    cache
        .update(b"held", |_| {
            let start = Instant::now();
            let r = run_bounded(f, "get", &[b"held", b"--lock-timeout", b"0.2"]);
            let waited = start.elapsed();
            assert_eq!((r.code, r.stdout.len()), (2, 0), "{:?}: {r:?}", f.kind);
            assert!(
                r.stderr.starts_with(&prefix) && r.stderr.contains("timed out"),
                "{}",
                r.stderr
            );
            assert!(
                waited >= Duration::from_millis(200),
                "gave up after {waited:?}"
            );

            // Only that page is held: a key of another page is looked up at once.
            let elsewhere = (0..50).map(|i| format!("other-{i}")).find(|key| {
                run_bounded(f, "get", &[key.as_bytes(), b"--lock-timeout", b"0.2"]).code == 1
            });
            assert!(elsewhere.is_some(), "no other page could be locked");
            // `keys` visits every page, the held one too.
            assert_eq!(
                run_bounded(f, "keys", &[b"--lock-timeout", b"0.05"]).code,
                2
            );
            Update::Keep
        })
        .unwrap();
    let after = f.run("get", &[b"held", b"--lock-timeout", b"0.2"]).ok();
    assert_eq!(after.stdout, b"v");
}

#[test]
fn lock_timeout_on_fcntl_files() {
    for kind in BOTH {
        a_held_page_times_out(&Fixture::created(kind));
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn lock_timeout_on_a_robust_file() {
    let f = Fixture::new(Kind::Native);
    create_with_lock(&f, "robust").ok();
    a_held_page_times_out(&f);
}

#[test]
fn without_lock_timeout_a_command_waits_for_the_lock() {
    let f = Fixture::created(Kind::Native);
    let cache = f.cache();
    cache.set(b"held", b"old").unwrap();
    let mut waiting = None;
    cache
        .update(b"held", |_| {
            let mut child = Command::new(BIN)
                .args([OsStr::new("get"), f.path.as_os_str(), OsStr::new("held")])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start fastmmap");
            std::thread::sleep(Duration::from_millis(300));
            assert!(
                child.try_wait().unwrap().is_none(),
                "get did not wait for the lock"
            );
            waiting = Some(child);
            Update::Set(b"new".to_vec())
        })
        .unwrap();
    let out = waiting.unwrap().wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"new", "it read what was stored under the lock");
}

#[test]
fn a_file_that_is_not_a_cache_is_refused_and_repaired_only_on_request() {
    let f = Fixture::new(Kind::FastMmap);
    // Any file of the right size: a FastMmap-layout file has no header to tell it by.
    let junk: Vec<u8> = (0..NUM_PAGES * PAGE_SIZE)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&f.path, &junk).expect("write");
    for (command, args, code) in [
        ("get", &[&b"k"[..]][..], 2),
        ("keys", &[][..], 2),
        ("stats", &[][..], 2),
        ("dump", &[][..], 2),
        ("set", &[&b"k"[..], b"v"][..], 2),
        ("purge", &[][..], 2),
        ("check", &[][..], 3),
    ] {
        let r = f.run(command, args);
        assert_eq!(r.code, code, "{command}: {r:?}");
        assert!(
            r.stderr.contains("not a cache file") && r.stderr.contains("page 0"),
            "{command}: {r:?}"
        );
        assert!(f.bytes() == junk, "{command} wrote into the file");
    }
    let repaired = f.run("check", &[b"--repair"]).ok();
    assert_eq!(
        repaired.lines()[0],
        "page 0: not a cache page: bad page magic (reset)"
    );
    f.run("check", &[]).ok();
    f.run("set", &[b"k", b"v"]).ok();
    assert_eq!(f.run("get", &[b"k"]).ok().stdout, b"v");
}

/// As root, runs the binary as `nobody` on a root-owned file of mode 0644: the commands that
/// only read work (read-only, with shared locks), the others are refused, nothing changes.
#[test]
fn reading_commands_work_for_a_user_who_may_only_read() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !common::root_or_skip("reading_commands_work_for_a_user_who_may_only_read") {
        return;
    }
    // The binary and the file must be reachable by `nobody`.
    let public = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(public.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = public.path().join("fastmmap");
    std::fs::copy(BIN, &bin).expect("copy binary");
    for kind in BOTH {
        let path = public.path().join(format!("{kind:?}.cache"));
        // Read-only users need fcntl locks: a robust lock lives in the file (below).
        let cache = Fixture {
            _dir: tempfile::tempdir().unwrap(),
            path: path.clone(),
            kind,
        }
        .builder()
        .lock_kind(LockKind::Fcntl)
        .permissions(0o644)
        .open()
        .expect("create");
        cache.set(b"k", b"shared").expect("set");
        drop(cache);
        let before = std::fs::read(&path).unwrap();
        let as_nobody = |args: &[&str]| {
            let mut all: Vec<String> = vec![args[0].to_string()];
            if kind == Kind::FastMmap {
                all.extend(geometry("fastmmap"));
            }
            all.push(path.display().to_string());
            all.extend(args[1..].iter().map(|a| a.to_string()));
            let out = Command::new(&bin)
                .args(&all)
                .uid(65534)
                .gid(65534)
                .output()
                .expect("run as nobody");
            (
                out.status.code().expect("exited"),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        assert_eq!(as_nobody(&["get", "k"]).1, "shared", "{kind:?}");
        assert_eq!(as_nobody(&["keys"]).1, "k\n", "{kind:?}");
        assert_eq!(as_nobody(&["check"]).0, 0, "{kind:?}");
        assert_eq!(as_nobody(&["stats"]).0, 0, "{kind:?}");
        assert!(as_nobody(&["dump"]).1.contains("shared"), "{kind:?}");
        let (code, _, err) = as_nobody(&["set", "k", "v"]);
        assert_eq!(code, 2, "{kind:?}: {err}");
        assert!(err.contains("permission denied"), "{kind:?}: {err}");
        assert!(std::fs::read(&path).unwrap() == before, "{kind:?}: changed");
    }
    // A robust-locked file (the native default here) cannot be read without writing: a
    // reading command says so.
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        let path = public.path().join("robust.cache");
        Cache::builder()
            .path(&path)
            .lock_kind(LockKind::Robust)
            .permissions(0o644)
            .open()
            .expect("create robust");
        let out = Command::new(&bin)
            .args(["get".as_ref(), path.as_os_str(), "k".as_ref()])
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run as nobody");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("cannot be opened read-only"), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Planted files and large inputs

/// Runs `cmd` (stdin closed), killing it and failing the test if it has not exited within
/// [`STUCK`] (a command blocked opening a planted FIFO never would).
fn run_command_bounded(mut cmd: Command, what: &str) -> Run {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fastmmap");
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(output) = rx.recv_timeout(STUCK) else {
        // SAFETY: kill has no memory preconditions; the child is not reaped yet (its waiting
        // thread is still blocked), so the pid is still ours.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        panic!("{what}: still running after {STUCK:?}");
    };
    let output = output.expect("wait for fastmmap");
    Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn mkfifo(path: &std::path::Path, mode: libc::mode_t) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), mode) }, 0, "mkfifo");
    // mkfifo's mode is masked by the umask: set it exactly.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A FIFO, a socket or a symbolic link at FILE: every command refuses it at once. The reading
/// commands are run by a user who may not write FILE, so that they take their read-only
/// fallback (which used to block forever opening a FIFO): as `nobody` on root's files, or on
/// files of mode 0444 of one's own.
#[test]
fn a_fifo_socket_or_link_at_file_is_refused_at_once() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let public = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(public.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = public.path().join("fastmmap");
    std::fs::copy(BIN, &bin).expect("copy binary");
    let target = public.path().join("target.cache");
    Cache::builder()
        .path(&target)
        .lock_kind(LockKind::Fcntl)
        .permissions(0o444)
        .open()
        .expect("create the link's target");
    let fifo = public.path().join("fifo");
    mkfifo(&fifo, 0o444);
    let socket = public.path().join("socket");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    let link = public.path().join("link");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");

    let reading: [&[&str]; 5] = [&["get", "k"], &["keys"], &["stats"], &["dump"], &["check"]];
    let writing: [&[&str]; 4] = [&["set", "k", "v"], &["remove", "k"], &["purge"], &["clear"]];
    for (path, what) in [
        (&fifo, "FIFO"),
        (&socket, "socket"),
        (&link, "symbolic link"),
    ] {
        for (args, reads) in reading
            .iter()
            .map(|a| (a, true))
            .chain(writing.iter().map(|a| (a, false)))
        {
            let mut cmd = Command::new(&bin);
            cmd.arg(args[0]).arg(path).args(&args[1..]);
            if root {
                cmd.uid(65534).gid(65534);
            }
            let label = format!("{} {}", args.join(" "), path.display());
            let r = run_command_bounded(cmd, &label);
            assert!(r.code == 2 || r.code == 3, "{label}: {r:?}");
            assert!(
                r.stderr.contains(&*path.to_string_lossy()),
                "{label}: {}",
                r.stderr
            );
            // A writing command is refused for want of permission before it looks further.
            if reads {
                assert!(r.stderr.contains(what), "{label}: {}", r.stderr);
            }
        }
    }
}

/// What a run with a generated stdin left behind: the run, how many bytes of stdin it took
/// before it exited, and its peak resident set size in bytes.
struct Streamed {
    run: Run,
    written: u64,
    peak_rss: u64,
}

/// Runs the binary with `args`, feeding it `total` bytes from `generate` (called with the
/// offset and a buffer to fill) through a pipe, and measures the child's peak RSS with
/// `wait4`. Writing stops when the child stops reading.
fn run_streamed(
    args: &[&OsStr],
    total: u64,
    mut generate: impl FnMut(u64, &mut Vec<u8>) + Send + 'static,
) -> Streamed {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fastmmap");
    let pid = child.id() as libc::pid_t;
    let mut input = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let mut written = 0u64;
        let mut chunk = Vec::new();
        while written < total {
            chunk.clear();
            generate(written, &mut chunk);
            if input.write_all(&chunk).is_err() {
                break; // the command stopped reading (EPIPE)
            }
            written += chunk.len() as u64;
        }
        written
    });
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        stdout.read_to_end(&mut v).expect("read stdout");
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        stderr.read_to_end(&mut v).expect("read stderr");
        v
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not reaped by anyone else (`child` is never waited on);
    // `status` and `usage` are valid for writes.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
    drop(child);
    let written = writer.join().expect("writer");
    assert!(libc::WIFEXITED(status), "killed: status {status}");
    Streamed {
        run: Run {
            code: libc::WEXITSTATUS(status),
            stdout: out.join().expect("stdout"),
            stderr: String::from_utf8_lossy(&err.join().expect("stderr")).into_owned(),
        },
        written,
        // ru_maxrss is in KiB on Linux.
        peak_rss: u64::try_from(usage.ru_maxrss).expect("maxrss") * 1024,
    }
}

const MIB: u64 = 1 << 20;

/// `FASTMMAP_STRESS=long` asks for the long runs (as in the other test files).
fn long_mode() -> bool {
    std::env::var("FASTMMAP_STRESS").is_ok_and(|v| v == "long")
}

/// `set KEY -` stops reading stdin one byte past the largest value that fits with KEY: a
/// value of 300 MB is refused after a few KiB, in a few MiB of memory, and nothing is stored;
/// a value of exactly the limit is stored.
#[test]
fn set_from_stdin_reads_no_more_than_fits() {
    let f = Fixture::created(Kind::Native);
    let max = f.cache().max_entry_size();
    let key = b"big";
    // An entry is a 24-byte header, the key and the value, padded to 4 bytes.
    let limit = max / 4 * 4 - 24 - key.len();
    let total = 300 * MIB;
    let mut args: Vec<&OsStr> = vec!["set".as_ref(), f.path.as_os_str()];
    args.extend([OsStr::from_bytes(key), "-".as_ref()]);
    let s = run_streamed(&args, total, |_, chunk| chunk.resize(64 * 1024, b'v'));
    assert_eq!(s.run.code, 2, "{:?}", s.run);
    assert!(s.run.stderr.contains("too large"), "{}", s.run.stderr);
    assert!(
        s.run.stderr.contains(&format!("{limit} bytes")),
        "{}",
        s.run.stderr
    );
    // What it took: its own read of limit + 1 bytes, and what the pipe buffered.
    assert!(s.written < 16 * MIB, "read {} bytes of stdin", s.written);
    assert!(s.peak_rss < 64 * MIB, "peak RSS {} bytes", s.peak_rss);
    assert_eq!(f.cache().get(key).unwrap(), None, "something was stored");

    let value = vec![b'v'; limit];
    f.run_with("set", &[key, b"-"], &value).ok();
    assert_eq!(f.cache().get(key).unwrap(), Some(value));
}

/// `load` refuses a line longer than any record that fits, after reading about that much of
/// it: one line of 300 MB costs a few MiB, and nothing is stored.
#[test]
fn load_refuses_an_overlong_line_without_reading_it_whole() {
    let f = Fixture::created(Kind::Native);
    let total = 300 * MIB;
    let args: Vec<&OsStr> = vec!["load".as_ref(), f.path.as_os_str()];
    let s = run_streamed(&args, total, |at, chunk| {
        if at == 0 {
            chunk
                .extend_from_slice(b"{\"key\":\"a\",\"value\":\"1\"}\n{\"key\":\"k\",\"value\":\"");
        }
        chunk.resize(chunk.len() + 64 * 1024, b'x');
    });
    assert_eq!(s.run.code, 2, "{:?}", s.run);
    assert!(
        s.run
            .stderr
            .starts_with("fastmmap: stdin:2: line longer than"),
        "{}",
        s.run.stderr
    );
    assert!(s.written < 16 * MIB, "read {} bytes of stdin", s.written);
    assert!(s.peak_rss < 64 * MIB, "peak RSS {} bytes", s.peak_rss);
    assert_eq!(f.run("keys", &[]).ok().stdout, b"", "something was stored");
}

/// `load` holds one record in memory at a time: a large dump (64 MiB here, 1 GiB with
/// `FASTMMAP_STRESS=long`) of 1 KiB records loads in a small fraction of its size, every
/// record checked before any is stored.
#[test]
fn load_streams_a_large_dump_in_bounded_memory() {
    let f = Fixture::created(Kind::Native);
    let total = if long_mode() { 1024 * MIB } else { 64 * MIB };
    let value = "x".repeat(1000);
    let args: Vec<&OsStr> = vec!["load".as_ref(), f.path.as_os_str()];
    let mut n = 0u64;
    let line_value = value.clone();
    let s = run_streamed(&args, total, move |_, chunk| {
        for _ in 0..64 {
            n += 1;
            writeln!(chunk, "{{\"key\":\"k{n:09}\",\"value\":\"{line_value}\"}}").unwrap();
        }
    });
    assert_eq!(s.run.code, 0, "{:?}", s.run);
    // Every line has the same length; lines are written whole, 64 at a time.
    let line_len = format!("{{\"key\":\"k{:09}\",\"value\":\"{value}\"}}\n", 1).len() as u64;
    let records = s.written / line_len;
    assert!(s.written >= total, "wrote {}", s.written);
    assert_eq!(
        s.run.text(),
        format!("{records} entries loaded, 0 expired skipped, 0 refused\n")
    );
    eprintln!(
        "load of {} MiB: peak RSS {:.1} MiB",
        s.written / MIB,
        s.peak_rss as f64 / MIB as f64
    );
    assert!(
        s.peak_rss < total / 2 && s.peak_rss < 100 * MIB,
        "peak RSS {} bytes for {} bytes of input",
        s.peak_rss,
        s.written
    );
    // The small cache keeps the last records stored.
    let last = format!("k{records:09}");
    assert_eq!(
        f.cache().get(last.as_bytes()).unwrap(),
        Some(value.into_bytes())
    );
}

/// `create` makes a file only its owner may read or write, whatever the umask.
#[test]
fn create_makes_a_private_file() {
    use std::os::unix::fs::PermissionsExt;
    for kind in BOTH {
        let f = Fixture::created(kind);
        let mode = std::fs::metadata(&f.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{kind:?}");
    }
}
