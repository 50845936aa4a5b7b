//! Sharing one cache file with Perl's Cache::FastMmap 1.57 (`Layout::FastMmap`, Perl with
//! `serializer => ''`), with Perl and Rust processes running at the same time.
//!
//! The Perl half is `tests/perl/peer.pl`, run with `perl`; strings cross the pipe hex-encoded
//! and tagged as bytes, UTF-8 characters or undef, so binary and UTF-8 are unambiguous. The
//! Perl side always passes `serializer => ''`, `init_file => 0`, `unlink_on_exit => 0` and the
//! Rust side's geometry, and refuses to open a file of the wrong size (Perl would delete and
//! recreate it); the Rust side creates every file except the one Perl creates on purpose.
//!
//! Covered:
//!
//! - **Perl writes, Rust reads** ([`perl_writes_rust_reads`]): ASCII, UTF-8 (keys and values,
//!   including flagged pure-ASCII strings), Latin-1 bytes, binary with NUL bytes (in keys
//!   too), empty values, `undef`, a large value, an overwrite, `multi_set`; expiry from the
//!   constructor's `expire_time`, `never`, relative seconds, an absolute `expire_on`, and
//!   already expired entries. Rust reads the same bytes, the same flag word and the same
//!   expiry second, and its `iter` equals Perl's own `get_keys(2)`.
//! - **Rust writes, Perl reads** ([`rust_writes_perl_reads`]): the same kinds of data through
//!   `set_with_flags`, `set`, `set_with`, `update`, `set_many`, `multi_set`,
//!   `get_or_insert_with`, `remove` and `take`; Perl reads the same bytes, UTF-8 flags, undef
//!   and expiry, Perl's `get_keys(2)` equals Rust's `iter`, and Perl's own page check passes.
//! - **Grown slot tables, removes, purge and clear**
//!   ([`grown_slot_tables_removes_and_clears_cross_over`]): pages whose slot tables Perl grew
//!   and that hold Perl's deleted slots are read and grown further by Rust, and the other way
//!   round; a `clear` or `purge` by either side leaves pages the other uses as they are.
//! - **The exception** ([`modseq_entries_are_the_documented_exception`]): entries written by
//!   `set_if_newer` and `remove_with_modseq` carry a modseq prefix that Perl 1.57 reads as part
//!   of the value (documented in the README and the crate docs); the page stays valid to Perl.
//! - **Locks exclude each other** ([`perl_and_rust_processes_increment_counters_exactly`]): 2
//!   Perl processes (`get_and_set`) and 2 forked Rust processes (`update`) increment the same
//!   counters at once; every process keeps going until it has seen all four start, so they
//!   provably overlap, and the totals are exact.
//! - **Far past capacity** ([`perl_and_rust_write_far_past_capacity_together`]): 2 Perl and 2
//!   Rust processes store, read and remove self-checking values (some undef, some expiring)
//!   in a 7 × 8 KiB file, over a hundred times its capacity; each side checks every value it
//!   reads, including those the other side wrote. Afterwards `Cache::validate` and Perl's own
//!   page check pass on every page and both sides read back only correct values.
//! - **Geometry** ([`rust_opens_a_perl_file_and_refuses_the_wrong_geometry`]): Rust opens a
//!   file Perl created when given its page size and page count (or the same `cache_size`); a
//!   wrong page size, page count or layout, and a grown or truncated file, are clear errors
//!   that leave the file alone.
//! - **The Perl page check itself** ([`perl_page_check_detects_a_damaged_page`]): the check
//!   used above (Perl's `test_file => 1` on a copy, which re-initialises every page that fails
//!   Perl's `_mmc_test_page`, so a changed copy names the bad pages) does catch damage.
//!
//! - **Write-back's dirty flag both ways** ([`perl_dirty_entries_are_flushed_by_rust`],
//!   [`rust_dirty_entries_are_written_back_by_perl`], with `tests/perl/write_back.pl`): entries
//!   Perl stores in `write_action => 'write_back'` mode carry the dirty flag that a Rust
//!   write-back handle writes to its backing store (and clears, so Perl's `empty` then writes
//!   nothing); entries a Rust write-back handle stores are written back by Perl's `empty`.
//!
//! If `perl` or Cache::FastMmap is missing, every test prints a banner straight to the terminal
//! and passes without running; with `FASTMMAP_REQUIRE_PERL=1` (set by CI) it fails instead.
//! The whole file takes about a second; `FASTMMAP_STRESS=long` runs the two concurrent tests
//! ten times longer.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::ops::RangeInclusive;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use fastmmap::{Cache, CacheBuilder, Entry, EntryFlags, Error, Expiry, Layout, Update};

// ---------------------------------------------------------------------------------------------
// Is Perl here?

/// Checks once for `perl` with Cache::FastMmap. When missing: a banner on the terminal and
/// `false`, or a panic under `FASTMMAP_REQUIRE_PERL=1`.
fn perl_available(test: &str) -> bool {
    static PROBE: OnceLock<Result<String, String>> = OnceLock::new();
    let probe = PROBE.get_or_init(|| {
        match Command::new("perl")
            .args(["-MCache::FastMmap", "-e", "print $Cache::FastMmap::VERSION"])
            .output()
        {
            Err(e) => Err(format!("cannot run perl: {e}")),
            Ok(out) if !out.status.success() => Err(format!(
                "perl cannot load Cache::FastMmap: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Ok(out) => {
                let version = String::from_utf8_lossy(&out.stdout).into_owned();
                if version != "1.57" {
                    raw_eprint(&format!(
                        "compat_perl: testing against Cache::FastMmap {version}, not 1.57\n"
                    ));
                }
                Ok(version)
            }
        }
    });
    match probe {
        Ok(_) => true,
        Err(why) if required("FASTMMAP_REQUIRE_PERL") => {
            panic!("FASTMMAP_REQUIRE_PERL=1 but {why}")
        }
        Err(why) => {
            raw_eprint(&format!(
                "\n*** compat_perl: SKIPPED {test}: {why}\n\
                 *** Install perl and libcache-fastmmap-perl to run the Perl interop tests.\n\n"
            ));
            false
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Perl's view of strings, and its flag bits

/// Cache::FastMmap 1.57's flag bits (FastMmap.xs; docs/format.md §3.4).
const UTF8_VALUE: u32 = 0x8000_0000;
const UTF8_KEY: u32 = 0x4000_0000;
const UNDEF: u32 = 0x2000_0000;
/// This crate's own bits, which Perl 1.57 does not know.
const TOMBSTONE: u32 = 0x1000_0000;
const HAS_MODSEQ: u32 = 0x0800_0000;

/// A Perl scalar as it crosses the pipe to `peer.pl`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PerlStr {
    /// A byte string (UTF-8 flag off).
    Bytes(Vec<u8>),
    /// A character string (UTF-8 flag on); the file holds its UTF-8 encoding.
    Chars(String),
    Undef,
}

use PerlStr::{Chars, Undef};

fn b(bytes: impl AsRef<[u8]>) -> PerlStr {
    PerlStr::Bytes(bytes.as_ref().to_vec())
}

fn u(s: &str) -> PerlStr {
    Chars(s.to_owned())
}

impl PerlStr {
    /// The bytes stored in the file.
    fn bytes(&self) -> &[u8] {
        match self {
            PerlStr::Bytes(v) => v,
            Chars(s) => s.as_bytes(),
            Undef => &[],
        }
    }

    fn token(&self) -> String {
        match self {
            PerlStr::Bytes(v) => format!("b:{}", hex(v)),
            Chars(s) => format!("u:{}", hex(s.as_bytes())),
            Undef => "undef".into(),
        }
    }

    fn parse(token: &str) -> PerlStr {
        match token.split_once(':') {
            _ if token == "undef" => Undef,
            Some(("b", h)) => PerlStr::Bytes(unhex(h)),
            Some(("u", h)) => Chars(String::from_utf8(unhex(h)).expect("peer sent bad UTF-8")),
            _ => panic!("bad token from peer: {token:?}"),
        }
    }
}

/// The flag word Perl 1.57 stores for `set($key, $value)`. Its XS records the key's UTF-8
/// flag only in the branch for a defined value, so an undef value never carries it.
fn perl_flags(key: &PerlStr, value: &PerlStr) -> u32 {
    let key_flag = if matches!(key, Chars(_)) { UTF8_KEY } else { 0 };
    match value {
        Undef => UNDEF,
        Chars(_) => UTF8_VALUE | key_flag,
        PerlStr::Bytes(_) => key_flag,
    }
}

/// The flags Rust passes to `set_with_flags` to store what Perl would see as `key => value`.
fn rust_flags(key: &PerlStr, value: &PerlStr) -> EntryFlags {
    let mut f = if matches!(key, Chars(_)) { UTF8_KEY } else { 0 };
    f |= match value {
        Undef => UNDEF,
        Chars(_) => UTF8_VALUE,
        PerlStr::Bytes(_) => 0,
    };
    EntryFlags(f)
}

// ---------------------------------------------------------------------------------------------
// Running the Perl peer

#[derive(Clone, Copy, Debug)]
struct Geometry {
    num_pages: u32,
    page_size: u32,
}

impl Geometry {
    /// Options for a FastMmap-layout cache of this geometry. No lock timeout: page locks are
    /// waited for in the kernel, as in production and as Perl does; a forked Rust child that
    /// hangs is ended by [`die_if_stuck`] instead.
    fn builder(self, path: &Path) -> CacheBuilder {
        Cache::builder()
            .path(path)
            .layout(Layout::FastMmap)
            .num_pages(self.num_pages)
            .page_size(self.page_size)
    }

    fn file_size(self) -> u64 {
        u64::from(self.num_pages) * u64::from(self.page_size)
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/perl/peer.pl")
}

/// `perl peer.pl COMMAND PATH NUM_PAGES PAGE_SIZE OPTIONS...`
fn peer(path: &Path, geo: Geometry, command: &str, opts: &[String]) -> Command {
    let mut cmd = Command::new("perl");
    cmd.arg(script())
        .arg(command)
        .arg(path)
        .arg(geo.num_pages.to_string())
        .arg(geo.page_size.to_string())
        .args(opts);
    cmd
}

/// Runs the peer to completion with `input` on its stdin; its stdout lines. Panics with its
/// stderr if it fails.
fn run_peer(
    path: &Path,
    geo: Geometry,
    command: &str,
    opts: &[String],
    input: &str,
) -> Vec<String> {
    run_to_completion(
        &mut peer(path, geo, command, opts),
        input,
        &format!("perl peer.pl {command}"),
    )
}

/// A peer started ahead of time: it has opened the cache and waits for [`Gated::go`].
struct Gated {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: PathBuf,
    finished: bool,
}

impl Gated {
    fn start(path: &Path, geo: Geometry, command: &str, opts: &[String], stderr: PathBuf) -> Gated {
        let mut child = peer(path, geo, command, opts)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn perl");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut gated = Gated {
            child,
            stdin,
            stdout,
            stderr,
            finished: false,
        };
        let ready = gated.line();
        assert_eq!(ready, "ready", "perl {command} did not start");
        gated
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read from perl");
        if line.is_empty() {
            let status = self.child.wait().expect("wait for perl");
            self.finished = true;
            panic!(
                "perl peer exited early ({status}):\n{}",
                fs::read_to_string(&self.stderr).unwrap_or_default()
            );
        }
        line.trim_end().to_owned()
    }

    fn go(&mut self) {
        self.stdin.write_all(b"go\n").expect("release perl");
        self.stdin.flush().expect("release perl");
    }

    /// Waits for the peer's last line and its clean exit.
    fn finish(mut self) -> String {
        let last = self.line();
        let status = self.child.wait().expect("wait for perl");
        self.finished = true;
        assert!(
            status.success(),
            "perl peer failed ({status}):\n{}",
            fs::read_to_string(&self.stderr).unwrap_or_default()
        );
        last
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Makes a forked child die (SIGALRM) if it is still running after two minutes, so a lock that
/// is never released fails the test instead of hanging it. (peer.pl does the same.)
fn die_if_stuck() {
    // SAFETY: alarm has no memory-safety preconditions; this child installs no SIGALRM
    // handler, so the default action ends it.
    unsafe { libc::alarm(120) };
}

fn numbers(line: &str, tag: &str) -> Vec<u64> {
    let rest = line
        .strip_prefix(tag)
        .unwrap_or_else(|| panic!("expected `{tag} ...` from perl, got {line:?}"));
    rest.split_whitespace()
        .map(|n| n.parse().expect("a number from perl"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Both views of a whole cache

/// One entry as stored: value bytes, raw flag word, expiry second (0 = never).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stored {
    value: Vec<u8>,
    flags: u32,
    expire_on: u64,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

fn unix_now() -> u64 {
    unix(SystemTime::now())
}

/// The earliest second the crate's clock can read now: it reads the coarse real-time clock,
/// which may lag the precise one by a tick.
fn coarse_lower_bound() -> u64 {
    unix_now() - 1
}

fn expire_on(e: &Entry) -> u64 {
    e.expires_at.map_or(0, unix)
}

/// Every live entry, as Rust's `iter` sees them.
fn rust_view(cache: &Cache) -> BTreeMap<Vec<u8>, Stored> {
    cache
        .iter()
        .map(|item| {
            let (k, e) = item.expect("iter");
            let stored = Stored {
                value: e.value.clone(),
                flags: e.flags.0,
                expire_on: expire_on(&e),
            };
            (k, stored)
        })
        .collect()
}

/// One `entry` line of the peer's `dump`.
#[derive(Debug)]
struct PerlEntry {
    key: PerlStr,
    value: PerlStr,
    expire_on: u64,
    flags: u32,
}

/// Parses the peer's `dump` answer (`entry ...` lines up to `end`) from `lines`.
fn parse_dump(lines: &mut impl Iterator<Item = String>) -> Vec<PerlEntry> {
    let mut out = Vec::new();
    for line in lines.by_ref() {
        if line == "end" {
            return out;
        }
        let f: Vec<&str> = line.split(' ').collect();
        assert!(f.len() == 6 && f[0] == "entry", "bad dump line {line:?}");
        out.push(PerlEntry {
            key: PerlStr::parse(f[1]),
            value: PerlStr::parse(f[2]),
            expire_on: f[3].parse().expect("expire_on"),
            flags: f[5].parse().expect("flags"),
        });
    }
    panic!("dump did not end");
}

fn perl_view(dump: &[PerlEntry]) -> BTreeMap<Vec<u8>, Stored> {
    dump.iter()
        .map(|e| {
            let stored = Stored {
                value: e.value.bytes().to_vec(),
                flags: e.flags,
                expire_on: e.expire_on,
            };
            (e.key.bytes().to_vec(), stored)
        })
        .collect()
}

/// Perl's own check of every page: a copy of the file is opened with `test_file => 1`, which
/// re-initialises each page failing Perl's `_mmc_test_page`. Returns the pages that changed.
/// Call it only while nobody writes to the file.
fn perl_page_check(path: &Path, geo: Geometry) -> Vec<u32> {
    let copy = path.with_extension("perl-check");
    fs::copy(path, &copy).expect("copy the cache file");
    let before = fs::read(&copy).expect("read copy");
    let out = run_peer(&copy, geo, "open", &["test_file=1".into()], "");
    assert_eq!(out, ["opened"]);
    let after = fs::read(&copy).expect("read copy");
    fs::remove_file(&copy).expect("remove copy");
    assert_eq!(after.len(), before.len(), "Perl resized the copy");
    before
        .chunks(geo.page_size as usize)
        .zip(after.chunks(geo.page_size as usize))
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i as u32)
        .collect()
}

fn assert_valid_both_ways(cache: &Cache, path: &Path, geo: Geometry) {
    let problems = cache.validate().expect("validate");
    assert!(problems.is_empty(), "Rust finds bad pages: {problems:?}");
    let bad = perl_page_check(path, geo);
    assert!(bad.is_empty(), "Perl's page check fails pages {bad:?}");
}

// ---------------------------------------------------------------------------------------------
// Perl writes, Rust reads

const SMALL: Geometry = Geometry {
    num_pages: 13,
    page_size: 8192,
};

/// The expiry second `spec` (the peer's syntax) gives a store made between `before` and
/// `after`, with the constructor's `expire_time` `default`; `None` if it is expired at once.
fn perl_expiry(spec: &str, before: u64, after: u64, default: u64) -> Option<RangeInclusive<u64>> {
    let relative = |secs: u64| Some(before + secs..=after + secs);
    match spec {
        "default" => relative(default),
        "never" => Some(0..=0),
        "now" => None,
        _ => match (spec.strip_prefix('+'), spec.strip_prefix('@')) {
            (Some(secs), _) => relative(secs.parse().expect("seconds")),
            (_, Some(at)) => {
                let at: u64 = at.parse().expect("unix time");
                (at > after).then_some(at..=at)
            }
            _ => panic!("bad expiry spec {spec}"),
        },
    }
}

#[test]
fn perl_writes_rust_reads() {
    let _serial = serial();
    if !perl_available("perl_writes_rust_reads") {
        return;
    }
    let dir = temp_dir();
    let path = dir.path().join("perl-writes");
    let cache = SMALL.builder(&path).open().expect("open");
    let now = unix_now();
    let all_bytes: Vec<u8> = (0..=255u8).chain([0, 0, 0]).collect();
    let big: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    let month = format!("@{}", now + 30 * 86_400);
    let past = format!("@{}", now - 100);
    let cases: Vec<(PerlStr, PerlStr, &str)> = vec![
        (b("ascii-key"), b("plain ascii value"), "default"),
        (u("ключ-🔑"), u("значение ✓"), "never"),
        (
            b("flagged-ascii-value"),
            u("only ascii, but flagged"),
            "+3600",
        ),
        (u("flagged-ascii-key"), b("bytes"), &month),
        (b("latin1"), b(b"caf\xe9 cr\xe8me"), "never"),
        (b("binary"), b(&all_bytes), "+60"),
        (b(b"nul\0key\0"), b(b"\0\0\0"), "default"),
        (b("empty"), b(""), "never"),
        (b(""), b("under the empty key"), "never"),
        (b("undef"), Undef, "never"),
        (u("undef-ключ"), Undef, "+100"),
        (b("big"), b(&big), "+7200"),
        (b("overwritten"), b("first"), "never"),
        (b("overwritten"), u("second ✓"), "+500"),
        (b("expired-now"), b("gone"), "now"),
        (b("expired-past"), b("gone too"), &past),
    ];
    let mut input = String::new();
    for (k, v, exp) in &cases {
        writeln!(input, "set {} {} {exp}", k.token(), v.token()).unwrap();
    }
    writeln!(
        input,
        "mset {} {} {}",
        b("pk").token(),
        b("m1").token(),
        u("multi ✓").token()
    )
    .unwrap();
    input.push_str("dump\n");
    let out = run_peer(&path, SMALL, "ops", &["expire_time=600".into()], &input);
    let mut lines = out.into_iter();

    for (i, (key, value, spec)) in cases.iter().enumerate() {
        let answer = numbers(&lines.next().expect("set answer"), "set ");
        let [did, before, after] = answer[..] else {
            panic!("bad set answer {answer:?}")
        };
        assert_eq!(did, 1, "Perl did not store {key:?}");
        if cases[i + 1..]
            .iter()
            .any(|(k, _, _)| k.bytes() == key.bytes())
        {
            continue; // overwritten below
        }
        let what = format!("{key:?} => {value:?} ({spec})");
        let Some(expiry) = perl_expiry(spec, before, after, 600) else {
            assert_eq!(cache.entry(key.bytes()).unwrap(), None, "{what}: expired");
            assert_eq!(cache.get(key.bytes()).unwrap(), None, "{what}: expired");
            continue;
        };
        let e = cache
            .entry(key.bytes())
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: Rust does not find it"));
        assert_eq!(e.value, value.bytes(), "{what}: value");
        assert_eq!(e.flags, EntryFlags(perl_flags(key, value)), "{what}: flags");
        assert_eq!(e.flags.is_undef(), *value == Undef, "{what}: undef");
        assert_eq!(e.flags.value_is_utf8(), matches!(value, Chars(_)), "{what}");
        assert!(
            expiry.contains(&expire_on(&e)),
            "{what}: expires {:?}, not in {expiry:?}",
            e.expires_at
        );
        assert!(
            (before..=unix_now()).contains(&unix(e.last_access)),
            "{what}: last access"
        );
        assert_eq!(e.modseq, None, "{what}");
        assert_eq!(
            cache.get(key.bytes()).unwrap().as_deref(),
            Some(value.bytes()),
            "{what}"
        );
    }
    assert_eq!(lines.next().as_deref(), Some("mset ok"));
    assert_eq!(
        cache.multi_get(b"pk", &[b"m1"]).unwrap(),
        vec![Some("multi ✓".as_bytes().to_vec())]
    );

    // The whole cache: Rust's iteration and Perl's own get_keys agree entry for entry.
    let dump = parse_dump(&mut lines);
    assert_eq!(dump.len(), 14, "live entries Perl lists: {dump:?}");
    assert_eq!(rust_view(&cache), perl_view(&dump));
    assert_valid_both_ways(&cache, &path, SMALL);
}

// ---------------------------------------------------------------------------------------------
// Rust writes, Perl reads

/// What Perl should find under a key Rust wrote.
struct Expect {
    key: PerlStr,
    /// `None`: absent (expired, removed, taken).
    value: Option<PerlStr>,
    expire_on: RangeInclusive<u64>,
}

#[test]
fn rust_writes_perl_reads() {
    let _serial = serial();
    if !perl_available("rust_writes_perl_reads") {
        return;
    }
    let dir = temp_dir();
    let path = dir.path().join("rust-writes");
    let cache = SMALL
        .builder(&path)
        .expire_after(Duration::from_secs(600))
        .open()
        .expect("open");
    let mut expect: Vec<Expect> = Vec::new();
    let secs = |d: u64| Duration::from_secs(d);

    // Stores through `set_with_flags`, the flags chosen as Perl would for these scalars.
    let all_bytes: Vec<u8> = (0..=255u8).chain([0, 0, 0]).collect();
    let big: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    let month = SystemTime::now() + secs(30 * 86_400);
    let cases: Vec<(PerlStr, PerlStr, Expiry)> = vec![
        (b("ascii-key"), b("plain ascii value"), Expiry::Default),
        (u("ключ-🔑"), u("значение ✓"), Expiry::Never),
        (
            b("flagged-ascii-value"),
            u("only ascii, but flagged"),
            Expiry::After(secs(3600)),
        ),
        (u("flagged-ascii-key"), b("bytes"), Expiry::At(month)),
        (b("latin1"), b(b"caf\xe9 cr\xe8me"), Expiry::Never),
        (b("binary"), b(&all_bytes), Expiry::After(secs(60))),
        (b(b"nul\0key\0"), b(b"\0\0\0"), Expiry::Default),
        (b("empty"), b(""), Expiry::Never),
        (b(""), b("under the empty key"), Expiry::Never),
        (b("undef"), Undef, Expiry::Never),
        // Perl itself never writes this combination (see `perl_flags`), but reads it.
        (u("undef-ключ"), Undef, Expiry::After(secs(100))),
        (b("big"), b(&big), Expiry::After(secs(7200))),
        (b("overwritten"), b("first"), Expiry::Never),
        (b("overwritten"), u("second ✓"), Expiry::After(secs(500))),
        (b("expired-now"), b("gone"), Expiry::After(Duration::ZERO)),
        (
            b("expired-past"),
            b("gone too"),
            Expiry::At(SystemTime::now() - secs(100)),
        ),
    ];
    for (key, value, expiry) in cases {
        let before = coarse_lower_bound();
        let stored = cache
            .set_with_flags(key.bytes(), value.bytes(), expiry, rust_flags(&key, &value))
            .expect("set_with_flags");
        let after = unix_now();
        assert!(stored);
        let expire_on = match expiry {
            Expiry::Default => before + 600..=after + 600,
            Expiry::Never => 0..=0,
            Expiry::After(d) => before + d.as_secs()..=after + d.as_secs(),
            Expiry::At(t) => {
                // Rounded up to a whole second.
                let d = t.duration_since(UNIX_EPOCH).expect("after 1970");
                let at = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                at..=at
            }
        };
        let live = *expire_on.start() == 0 || *expire_on.start() > after;
        expect.retain(|e| e.key.bytes() != key.bytes());
        expect.push(Expect {
            key,
            value: live.then_some(value),
            expire_on,
        });
    }

    // The rest of the API stores plain bytes, flags 0.
    let plain = |expect: &mut Vec<Expect>, key: &str, value: Option<&[u8]>, before: u64| {
        expect.push(Expect {
            key: b(key),
            value: value.map(b),
            expire_on: before + 600..=unix_now() + 600,
        });
    };
    let t = coarse_lower_bound();
    cache.set(b"plain-set", b"set").unwrap();
    plain(&mut expect, "plain-set", Some(b"set"), t);
    let t = coarse_lower_bound();
    for _ in 0..2 {
        cache
            .update(b"counter", |old| {
                let n = old.map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap()));
                Update::Set((n + 1).to_le_bytes().to_vec())
            })
            .unwrap();
    }
    plain(&mut expect, "counter", Some(&2u64.to_le_bytes()), t);
    let t = coarse_lower_bound();
    cache
        .set_many(&[(b"many-1", b"one"), (b"many-2", b"two")])
        .unwrap();
    plain(&mut expect, "many-1", Some(b"one"), t);
    plain(&mut expect, "many-2", Some(b"two"), t);
    let t = coarse_lower_bound();
    cache
        .get_or_insert_with(b"computed", || b"computed value".to_vec())
        .unwrap();
    plain(&mut expect, "computed", Some(b"computed value"), t);
    cache.set(b"removed", b"x").unwrap();
    assert!(cache.remove(b"removed").unwrap());
    plain(&mut expect, "removed", None, t);
    cache.set(b"taken", b"y").unwrap();
    assert_eq!(cache.take(b"taken").unwrap(), Some(b"y".to_vec()));
    plain(&mut expect, "taken", None, t);
    cache
        .multi_set(
            b"pk",
            &[(&b"m1"[..], &b"multi one"[..]), (b"m2", b"multi two")],
        )
        .unwrap();

    let mut input = String::new();
    for e in &expect {
        writeln!(input, "get {}", e.key.token()).unwrap();
    }
    writeln!(input, "mget {} {}", b("pk").token(), b("m1").token()).unwrap();
    writeln!(input, "mget {} {}", b("pk").token(), b("m2").token()).unwrap();
    input.push_str("dump\n");
    let out = run_peer(&path, SMALL, "ops", &[], &input);
    let mut lines = out.into_iter();

    for e in &expect {
        let line = lines.next().expect("get answer");
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!((f.len(), f[0]), (4, "get"), "bad answer {line:?}");
        let what = format!("{:?} => {:?}", e.key, e.value);
        match &e.value {
            None => assert_eq!(f[1], "0", "{what}: Perl finds it: {line}"),
            Some(v) => {
                assert_eq!(f[1], "1", "{what}: Perl does not find it");
                assert_eq!(PerlStr::parse(f[2]), *v, "{what}: Perl reads another value");
                let at: u64 = f[3].parse().expect("expire_on");
                assert!(
                    e.expire_on.contains(&at),
                    "{what}: Perl's expiry {at} not in {:?}",
                    e.expire_on
                );
            }
        }
    }
    assert_eq!(
        lines.next().unwrap(),
        format!("mget {}", b("multi one").token())
    );
    assert_eq!(
        lines.next().unwrap(),
        format!("mget {}", b("multi two").token())
    );

    // Perl's get_keys(2) lists exactly what Rust's iter does, keys with the right UTF-8 flag.
    let dump = parse_dump(&mut lines);
    assert_eq!(perl_view(&dump), rust_view(&cache));
    for d in &dump {
        if let Some(e) = expect.iter().find(|e| e.key.bytes() == d.key.bytes()) {
            assert_eq!(d.key, e.key, "Perl's key string");
        }
    }
    assert_valid_both_ways(&cache, &path, SMALL);
}

#[test]
fn modseq_entries_are_the_documented_exception() {
    let _serial = serial();
    if !perl_available("modseq_entries_are_the_documented_exception") {
        return;
    }
    let dir = temp_dir();
    let path = dir.path().join("modseq");
    let cache = SMALL.builder(&path).open().expect("open");
    assert!(cache.set_if_newer(b"versioned", b"v1", 7).unwrap());
    cache.remove_with_modseq(b"deleted", 9).unwrap();
    let input = format!(
        "get {}\nget {}\ndump\n",
        b("versioned").token(),
        b("deleted").token()
    );
    let out = run_peer(&path, SMALL, "ops", &[], &input);
    let mut lines = out.into_iter();
    // Perl 1.57 reads the 8-byte modseq prefix as part of the value, and a tombstone as an
    // entry whose value is its modseq.
    let prefixed = [&7u64.to_ne_bytes()[..], b"v1"].concat();
    assert_eq!(
        lines.next().unwrap(),
        format!("get 1 {} 0", b(&prefixed).token())
    );
    assert_eq!(
        lines.next().unwrap(),
        format!("get 1 {} 0", b(9u64.to_ne_bytes()).token())
    );
    let flags: BTreeMap<Vec<u8>, u32> = parse_dump(&mut lines)
        .iter()
        .map(|e| (e.key.bytes().to_vec(), e.flags))
        .collect();
    assert_eq!(flags[&b"versioned"[..]], HAS_MODSEQ);
    assert_eq!(flags[&b"deleted"[..]], TOMBSTONE | HAS_MODSEQ);
    // The pages stay structurally valid to Perl.
    assert_valid_both_ways(&cache, &path, SMALL);
}

/// The slot count in each page's header.
fn slot_counts(path: &Path, geo: Geometry) -> Vec<u32> {
    let raw = raw_file(path);
    (0..geo.num_pages)
        .map(|p| {
            let page = page_offset(Layout::FastMmap, geo.num_pages, geo.page_size, p);
            read_u32(&raw, page + 4)
        })
        .collect()
}

#[test]
fn grown_slot_tables_removes_and_clears_cross_over() {
    let _serial = serial();
    if !perl_available("grown_slot_tables_removes_and_clears_cross_over") {
        return;
    }
    // Roomy pages, so 600 small entries grow every slot table but evict nothing.
    let geo = Geometry {
        num_pages: 3,
        page_size: 32768,
    };
    let dir = temp_dir();
    let path = dir.path().join("grown");
    let cache = geo.builder(&path).open().expect("open");
    let value = |side: &str, i: u32| format!("{side}{i:03}!").into_bytes();

    // Perl stores 300 keys and removes every seventh.
    let mut input = String::new();
    for i in 0..300 {
        let (k, v) = (format!("p{i:03}"), value("perl", i));
        writeln!(input, "set {} {} never", b(&k).token(), b(&v).token()).unwrap();
    }
    for i in (0..300).step_by(7) {
        writeln!(input, "remove {}", b(format!("p{i:03}")).token()).unwrap();
    }
    input.push_str("dump\n");
    let mut lines = run_peer(&path, geo, "ops", &[], &input).into_iter();
    assert!(lines.by_ref().take(300).all(|l| l.starts_with("set 1 ")));
    assert!(lines.by_ref().take(43).all(|l| l == "remove 1"));
    let dump = parse_dump(&mut lines);
    let grown_by_perl = slot_counts(&path, geo);
    assert!(
        grown_by_perl.iter().all(|&n| n > 89),
        "Perl did not grow the slot tables: {grown_by_perl:?}"
    );
    for i in 0..300u32 {
        let got = cache.get(format!("p{i:03}").as_bytes()).unwrap();
        assert_eq!(
            got,
            (!i.is_multiple_of(7)).then(|| value("perl", i)),
            "p{i:03}"
        );
    }
    assert_eq!(rust_view(&cache), perl_view(&dump));
    assert_eq!(dump.len(), 300 - 43);

    // Rust adds 300 more to the same pages, and removes every fifth.
    for i in 0..300 {
        assert!(
            cache
                .set(format!("r{i:03}").as_bytes(), &value("rust", i))
                .unwrap()
        );
    }
    for i in (0..300).step_by(5) {
        assert!(cache.remove(format!("r{i:03}").as_bytes()).unwrap());
    }
    let grown_by_rust = slot_counts(&path, geo);
    assert!(
        grown_by_rust.iter().zip(&grown_by_perl).all(|(r, p)| r > p),
        "Rust did not grow the slot tables further: {grown_by_perl:?} -> {grown_by_rust:?}"
    );
    let mut input = String::new();
    for i in 0..300 {
        writeln!(input, "get {}", b(format!("r{i:03}")).token()).unwrap();
    }
    input.push_str("dump\n");
    let mut lines = run_peer(&path, geo, "ops", &[], &input).into_iter();
    for i in 0..300 {
        let expected = match i % 5 {
            0 => "get 0 undef -".to_owned(),
            _ => format!("get 1 {} 0", b(value("rust", i)).token()),
        };
        assert_eq!(lines.next().unwrap(), expected, "r{i:03}");
    }
    let dump = parse_dump(&mut lines);
    assert_eq!(dump.len(), 300 - 43 + 300 - 60, "nothing was evicted");
    assert_eq!(perl_view(&dump), rust_view(&cache));
    assert_valid_both_ways(&cache, &path, geo);

    // Rust clears; Perl finds nothing, stores again, Rust reads it; Perl clears.
    cache.purge().unwrap();
    cache.clear().unwrap();
    let input = format!(
        "dump\nset {} {} never\n",
        b("after-clear").token(),
        b("perl").token()
    );
    let mut lines = run_peer(&path, geo, "ops", &[], &input).into_iter();
    assert!(parse_dump(&mut lines).is_empty());
    assert!(lines.next().unwrap().starts_with("set 1 "));
    assert_eq!(cache.get(b"after-clear").unwrap(), Some(b"perl".to_vec()));
    assert_valid_both_ways(&cache, &path, geo);
    let out = run_peer(&path, geo, "ops", &[], "purge\nclear\n");
    assert_eq!(out, ["purge ok", "clear ok"]);
    assert_eq!(rust_view(&cache), BTreeMap::new());
    assert_valid_both_ways(&cache, &path, geo);
}

// ---------------------------------------------------------------------------------------------
// Locks exclude each other

const COUNTERS: [&[u8]; 4] = [b"counter-a", b"counter-b", b"counter-c", b"counter-d"];
const STARTED: &[u8] = b"started";

/// Adds one to the 8-byte counter under `key`; returns the value it had.
fn incr(cache: &Cache, key: &[u8]) -> Result<u64, String> {
    let mut seen = Ok(0);
    cache
        .update(key, |old| {
            seen = counter_value(old);
            match &seen {
                Ok(n) => Update::Set((n + 1).to_le_bytes().to_vec()),
                Err(_) => Update::Keep,
            }
        })
        .map_err(|e| format!("update {:?}: {e}", String::from_utf8_lossy(key)))?;
    seen
}

/// The Rust twin of peer.pl's `count`: announce the start, then increment the counters
/// round-robin until all `procs` processes have started and `min` increments were made since.
/// Returns the increments per counter and how often a counter had moved since this process
/// last wrote it.
fn count(cache: &Cache, procs: u64, min: usize, offset: usize) -> Result<([u64; 4], u64), String> {
    incr(cache, STARTED)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut done, mut mine) = ([0u64; 4], [None::<u64>; 4]);
    let (mut all, mut since_all, mut jumps) = (false, 0, 0);
    let mut i = offset;
    while since_all < min {
        if !all {
            let started = cache.get(STARTED).map_err(|e| format!("get: {e}"))?;
            all = counter_value(started.as_deref())? >= procs;
            if !all && Instant::now() > deadline {
                return Err("not every process started within 60s".into());
            }
        }
        let n = i % COUNTERS.len();
        i += 1;
        let seen = incr(cache, COUNTERS[n])?;
        if mine[n].is_some_and(|m| m != seen) {
            jumps += 1;
        }
        mine[n] = Some(seen + 1);
        done[n] += 1;
        if all {
            since_all += 1;
        }
    }
    Ok((done, jumps))
}

#[test]
fn perl_and_rust_processes_increment_counters_exactly() {
    let _serial = serial();
    if !perl_available("perl_and_rust_processes_increment_counters_exactly") {
        return;
    }
    const PERL: usize = 2;
    const RUST: usize = 2;
    const PROCS: u64 = (PERL + RUST) as u64;
    let min = scaled(5000, 50_000);
    // Three small pages: the four counters share pages, so every process contends.
    let geo = Geometry {
        num_pages: 3,
        page_size: 4096,
    };
    let dir = temp_dir();
    let path = dir.path().join("counters");
    let cache = geo.builder(&path).open().expect("open");

    let keys = COUNTERS
        .iter()
        .map(|k| hex(k))
        .collect::<Vec<_>>()
        .join(",");
    let mut perls: Vec<Gated> = (0..PERL)
        .map(|p| {
            let opts = [
                format!("keys={keys}"),
                format!("started={}", hex(STARTED)),
                format!("procs={PROCS}"),
                format!("min={min}"),
                format!("offset={p}"),
            ];
            let stderr = dir.path().join(format!("perl-{p}.stderr"));
            Gated::start(&path, geo, "count", &opts, stderr)
        })
        .collect();
    let start = Pipe::new();
    let results = Pipe::new();
    let mut kids = Children::new();
    for r in 0..RUST {
        let (cache, start, results) = (cache.clone(), &start, &results);
        kids.spawn(move || {
            die_if_stuck();
            start.wait();
            let (done, jumps) = count(&cache, PROCS, min, PERL + r)?;
            let resets = cache.stats().map_err(|e| format!("stats: {e}"))?.resets;
            if resets != 0 {
                return Err(format!("{resets} pages were reset"));
            }
            let mut msg = Vec::new();
            for n in done.iter().chain([&jumps]) {
                msg.extend_from_slice(&n.to_le_bytes());
            }
            results.send(&msg); // 40 bytes: one atomic pipe write
            Ok(())
        });
    }
    for p in &mut perls {
        p.go();
    }
    start.release(RUST);

    let mut per_counter = [0u64; 4];
    let mut jumps = Vec::new();
    for p in perls {
        let n = numbers(&p.finish(), "done ");
        assert_eq!(n.len(), 5, "bad answer from perl: {n:?}");
        for (total, k) in per_counter.iter_mut().zip(&n) {
            *total += k;
        }
        jumps.push(("perl", n[4]));
    }
    kids.wait_all_ok();
    for _ in 0..RUST {
        let n: Vec<u64> = (0..5).map(|_| results.recv_u64()).collect();
        for (total, k) in per_counter.iter_mut().zip(&n) {
            *total += k;
        }
        jumps.push(("rust", n[4]));
    }

    eprintln!("counters {per_counter:?}, interleavings seen {jumps:?}");
    let read = |k: &[u8]| counter_value(cache.get(k).unwrap().as_deref()).unwrap();
    assert_eq!(read(STARTED), PROCS);
    let found: Vec<u64> = COUNTERS.iter().map(|k| read(k)).collect();
    assert_eq!(
        found, per_counter,
        "counters lost or doubled increments (interleavings seen: {jumps:?})"
    );
    assert!(
        per_counter.iter().sum::<u64>() >= PROCS * min as u64,
        "{per_counter:?}"
    );
    // Every process ran until all four had started; that others' increments landed between
    // a process's own shows the locks were really contended.
    assert!(
        jumps.iter().any(|&(_, j)| j > 0),
        "no process ever saw another's increment: {jumps:?}"
    );
    assert_valid_both_ways(&cache, &path, geo);
}

// ---------------------------------------------------------------------------------------------
// Far past capacity

/// A value naming its key, shared with peer.pl's `make_value`:
/// `KEY|WRITER|SEQ|FILL_LEN|` and then `FILL_LEN` bytes of a 20-byte block, repeated, made
/// from the FNV-1a hash of that prefix (so a value cut short, shifted or stored under another
/// key is detected on either side).
fn checked_value(key: &[u8], writer: &str, seq: u64, fill: usize) -> Vec<u8> {
    let mut v = key.to_vec();
    v.extend_from_slice(format!("|{writer}|{seq}|{fill}|").as_bytes());
    let body = filler(&v, fill);
    v.extend_from_slice(&body);
    v
}

fn fnv32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn filler(prefix: &[u8], n: usize) -> Vec<u8> {
    let h = fnv32(prefix);
    let mut block = vec![0x00, 0xff];
    for w in [h, h ^ 0xa5a5_a5a5, h.rotate_left(16), !h] {
        block.extend_from_slice(&w.to_le_bytes());
    }
    block.extend_from_slice(b"\0|");
    block.iter().copied().cycle().take(n).collect()
}

/// Checks a [`checked_value`] found under `key`; returns its writer.
fn check_checked_value(key: &[u8], v: &[u8]) -> Result<String, String> {
    let bad = |why: &str| {
        format!(
            "bad value under {:?} ({why}): {} bytes, starting {:?}",
            String::from_utf8_lossy(key),
            v.len(),
            String::from_utf8_lossy(&v[..v.len().min(40)])
        )
    };
    let mut fields = v.splitn(5, |&b| b == b'|');
    let (Some(k), Some(writer), Some(_seq), Some(fill), Some(body)) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(bad("malformed"));
    };
    if k != key {
        return Err(bad("stored for another key"));
    }
    let fill: usize = std::str::from_utf8(fill)
        .ok()
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| bad("bad length"))?;
    let prefix = &v[..v.len() - body.len()];
    if body.len() != fill || body != filler(prefix, fill) {
        return Err(bad("damaged body"));
    }
    Ok(String::from_utf8_lossy(writer).into_owned())
}

const CHURN_KEYS: u64 = 600;
const CHURN_MAX_LEN: usize = 1500;

fn churn_key(i: u64) -> Vec<u8> {
    format!("c{i:05}").into_bytes()
}

fn churn_index(key: &[u8]) -> Option<u64> {
    let i = std::str::from_utf8(key.strip_prefix(b"c")?)
        .ok()?
        .parse()
        .ok()?;
    (i < CHURN_KEYS && churn_key(i) == key).then_some(i)
}

/// Keys whose writers sometimes store undef (as peer.pl's `undef_ok`).
fn undef_ok(i: u64) -> bool {
    i.is_multiple_of(10)
}

/// Checks an entry found under churn key `i`; returns its writer (`None` for undef).
fn check_churn_entry(i: u64, e: &Entry) -> Result<Option<String>, String> {
    let key = churn_key(i);
    if e.flags.is_undef() {
        if !undef_ok(i) || !e.value.is_empty() || e.flags != EntryFlags(UNDEF) {
            return Err(format!("unexpected undef under c{i:05}: {e:?}"));
        }
        return Ok(None);
    }
    if e.flags != EntryFlags(0) {
        return Err(format!("unexpected flags under c{i:05}: {:?}", e.flags));
    }
    check_checked_value(&key, &e.value).map(Some)
}

/// The Rust twin of peer.pl's `churn`, run until it has made `min_ops` operations and a byte
/// arrives on `stop` (sent once the Perl churners are done). Returns (gets, hits, hits on
/// values Perl wrote).
fn churn(
    cache: &Cache,
    seed: u64,
    min_ops: usize,
    writer: &str,
    stop: &Pipe,
) -> Result<(u64, u64, u64), String> {
    let mut rng = Rng::new(seed);
    let err = |op: &str, e: Error| format!("{op}: {e}");
    let (mut gets, mut hits, mut foreign) = (0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    for seq in 1.. {
        if seq > min_ops && seq.is_multiple_of(64) {
            if stop.wait_timeout(Duration::ZERO) {
                break;
            }
            if Instant::now() > deadline {
                return Err("the Perl churners did not finish within 60s".into());
            }
        }
        let i = rng.below(CHURN_KEYS);
        let key = churn_key(i);
        let roll = rng.below(100);
        if roll < 60 {
            let expiry = if rng.chance(10) {
                Expiry::After(Duration::from_secs(1))
            } else {
                Expiry::Never
            };
            let stored = if undef_ok(i) && rng.chance(25) {
                cache.set_with_flags(&key, b"", expiry, EntryFlags(UNDEF))
            } else {
                let v = checked_value(&key, writer, seq as u64, rng.range(0, CHURN_MAX_LEN));
                cache.set_with(&key, &v, expiry)
            };
            if !stored.map_err(|e| err("set", e))? {
                return Err("a store was refused".into());
            }
        } else if roll < 95 {
            gets += 1;
            if let Some(e) = cache.entry(&key).map_err(|e| err("entry", e))? {
                hits += 1;
                if check_churn_entry(i, &e)?.is_some_and(|w| w.starts_with("perl")) {
                    foreign += 1;
                }
            }
        } else {
            cache.remove(&key).map_err(|e| err("remove", e))?;
        }
    }
    Ok((gets, hits, foreign))
}

#[test]
fn perl_and_rust_write_far_past_capacity_together() {
    let _serial = serial();
    if !perl_available("perl_and_rust_write_far_past_capacity_together") {
        return;
    }
    const PERL: usize = 2;
    const RUST: usize = 2;
    let perl_ops = scaled(8000, 80_000);
    let rust_min_ops = scaled(12_000, 120_000);
    let seed = seed("perl_and_rust_write_far_past_capacity_together");
    // 56 KiB in all, for 600 keys of up to 1.5 KiB: every page is rebuilt over and over.
    let geo = Geometry {
        num_pages: 7,
        page_size: 8192,
    };
    let dir = temp_dir();
    let path = dir.path().join("churn");
    let cache = geo.builder(&path).open().expect("open");

    let mut perls: Vec<Gated> = (0..PERL)
        .map(|p| {
            let opts = [
                format!(
                    "seed={}",
                    (seed >> 16).wrapping_add(p as u64) % 1_000_000_007
                ),
                format!("ops={perl_ops}"),
                format!("keys={CHURN_KEYS}"),
                format!("max_len={CHURN_MAX_LEN}"),
                format!("writer=perl-{p}"),
            ];
            let stderr = dir.path().join(format!("perl-{p}.stderr"));
            Gated::start(&path, geo, "churn", &opts, stderr)
        })
        .collect();
    let start = Pipe::new();
    let stop = Pipe::new();
    let results = Pipe::new();
    let mut kids = Children::new();
    for r in 0..RUST {
        let (cache, start, stop, results) = (cache.clone(), &start, &stop, &results);
        kids.spawn(move || {
            die_if_stuck();
            start.wait();
            let writer = format!("rust-{r}");
            let seed = seed ^ (r as u64 + 1).wrapping_mul(0x9e37_79b9);
            let (gets, hits, foreign) = churn(&cache, seed, rust_min_ops, &writer, stop)?;
            let resets = cache.stats().map_err(|e| format!("stats: {e}"))?.resets;
            if resets != 0 {
                return Err(format!("{resets} pages were reset"));
            }
            let msg = [gets, hits, foreign].map(u64::to_le_bytes).concat();
            results.send(&msg);
            Ok(())
        });
    }
    for p in &mut perls {
        p.go();
    }
    start.release(RUST);

    let mut report = Vec::new();
    for p in perls {
        let n = numbers(&p.finish(), "done ");
        assert_eq!(n.len(), 4, "bad answer from perl: {n:?}");
        report.push(("perl", n[1], n[2], n[3]));
    }
    // The Rust churners ran all along; now they may stop.
    stop.release(RUST);
    kids.wait_all_ok();
    for _ in 0..RUST {
        let (gets, hits, foreign) = (results.recv_u64(), results.recv_u64(), results.recv_u64());
        report.push(("rust", gets, hits, foreign));
    }
    // (side, gets, hits, hits on values the other language wrote)
    eprintln!("churn traffic: {report:?}");
    for &(side, gets, hits, foreign) in &report {
        assert!(
            hits > 0 && hits < gets,
            "{side}: implausible traffic {report:?}"
        );
        assert!(
            foreign > 0,
            "{side} never read a value the other side wrote: {report:?}"
        );
    }

    // Afterwards: every page valid to both, and both read back only correct values.
    assert_valid_both_ways(&cache, &path, geo);
    let rust_entries = || {
        let mut entries = 0u64;
        for item in cache.iter() {
            let (k, e) = item.expect("iter");
            let i = churn_index(&k).unwrap_or_else(|| panic!("a key nobody stored: {k:?}"));
            check_churn_entry(i, &e).unwrap_or_else(|e| panic!("{e}"));
            entries += 1;
        }
        entries
    };
    let mut hits = 0u64;
    for i in 0..CHURN_KEYS {
        if let Some(e) = cache.entry(&churn_key(i)).expect("entry") {
            check_churn_entry(i, &e).unwrap_or_else(|e| panic!("{e}"));
            hits += 1;
        }
    }
    let before = rust_entries();
    let out = run_peer(&path, geo, "verify", &[format!("keys={CHURN_KEYS}")], "");
    let after = rust_entries();
    assert!(after > 0 && before < CHURN_KEYS, "{before} entries left");
    let n = numbers(&out[0], "verified ");
    // Entries only expire meanwhile (nobody writes), so Perl's count lies between Rust's.
    assert!(
        (after..=before).contains(&n[0]),
        "Perl lists {} entries, Rust {before} before and {after} after",
        n[0]
    );
    // Perl's get of an undef value reads as a miss, so it can count fewer hits than Rust.
    assert!(
        n[1] <= hits && n[1] > 0,
        "Perl hits {} vs Rust {hits}",
        n[1]
    );
    assert_eq!(cache.stats().expect("stats").resets, 0);
}

// ---------------------------------------------------------------------------------------------
// Geometry

fn snapshot(path: &Path) -> (Vec<u8>, u64, i64, i64) {
    let md = fs::metadata(path).expect("stat");
    (
        fs::read(path).expect("read"),
        md.ino(),
        md.mtime(),
        md.mtime_nsec(),
    )
}

#[test]
fn rust_opens_a_perl_file_and_refuses_the_wrong_geometry() {
    let _serial = serial();
    if !perl_available("rust_opens_a_perl_file_and_refuses_the_wrong_geometry") {
        return;
    }
    let geo = Geometry {
        num_pages: 5,
        page_size: 16384,
    };
    let dir = temp_dir();
    let path = dir.path().join("perl-made");
    // Perl creates this one.
    let out = run_peer(
        &path,
        geo,
        "ops",
        &["create=1".into()],
        &format!("set {} {} never\n", b("made-by").token(), b("perl").token()),
    );
    assert!(out[0].starts_with("set 1 "), "{out:?}");
    assert_eq!(fs::metadata(&path).unwrap().len(), geo.file_size());
    let before = snapshot(&path);

    let shown = path.display().to_string();
    let refuse = |b: CacheBuilder, what: &str| -> Error {
        let err = b.open().expect_err(what);
        let msg = err.to_string();
        assert!(
            msg.contains(&shown),
            "{what}: the message names the file: {msg}"
        );
        assert!(snapshot(&path) == before, "{what}: the file was changed");
        err
    };
    // Defaults: 89 pages of 64 KiB.
    let err = refuse(
        Cache::builder().path(&path).layout(Layout::FastMmap),
        "default geometry",
    );
    assert!(
        matches!(
            err,
            Error::GeometryMismatch {
                field: "page_size",
                requested: 65536,
                found: 16384,
                ..
            }
        ),
        "{err:?}"
    );
    // The same total size, cut into other pages.
    let same_size = Geometry {
        num_pages: 10,
        page_size: 8192,
    };
    let err = refuse(same_size.builder(&path), "10 x 8 KiB");
    assert!(
        matches!(
            err,
            Error::GeometryMismatch {
                field: "page_size",
                requested: 8192,
                found: 16384,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("16384") && err.to_string().contains("8192"),
        "{err}"
    );
    for pages in [4, 6] {
        let wrong = Geometry {
            num_pages: pages,
            page_size: 16384,
        };
        let err = refuse(wrong.builder(&path), "wrong page count");
        assert!(
            matches!(err, Error::WrongSize { expected, found: 81920, .. } if expected == wrong.file_size()),
            "{err:?}"
        );
        assert!(err.to_string().contains("81920"), "{err}");
    }
    let err = refuse(
        Cache::builder().path(&path).num_pages(5).page_size(16384),
        "native layout",
    );
    assert!(matches!(err, Error::WrongLayout { .. }), "{err:?}");

    // The right geometry opens it and reads what Perl stored.
    {
        let cache = geo.builder(&path).open().expect("open Perl's file");
        assert_eq!(cache.get(b"made-by").unwrap(), Some(b"perl".to_vec()));
        assert!(cache.validate().unwrap().is_empty());
        cache.set(b"opened-by", b"rust").unwrap();
    }
    let out = run_peer(
        &path,
        geo,
        "ops",
        &[],
        &format!("get {}\n", b("opened-by").token()),
    );
    assert_eq!(out, [format!("get 1 {} 0", b("rust").token())]);

    // Perl's cache_size derivation is the builder's: `cache_size => '1m'` is 21 × 64 KiB.
    let sized = dir.path().join("perl-sized");
    let derived = Geometry {
        num_pages: 21,
        page_size: 65536,
    };
    let input = format!("set {} {} never\n", b("sized").token(), b("1m").token());
    let out = run_peer(
        &sized,
        derived,
        "ops",
        &["create=1".into(), "cache_size=1m".into()],
        &input,
    );
    assert!(out[0].starts_with("set 1 "), "{out:?}");
    assert_eq!(fs::metadata(&sized).unwrap().len(), derived.file_size());
    let cache = Cache::builder()
        .path(&sized)
        .layout(Layout::FastMmap)
        .cache_size(1 << 20)
        .open()
        .expect("open with cache_size");
    assert_eq!((cache.num_pages(), cache.page_size()), (21, 65536));
    assert_eq!(cache.get(b"sized").unwrap(), Some(b"1m".to_vec()));
    drop(cache);

    // A file of the wrong size, with the right geometry asked for: refused, left alone.
    for (name, len) in [
        ("grown", geo.file_size() + 4096),
        ("truncated", geo.file_size() - 4096),
    ] {
        let odd = dir.path().join(name);
        fs::copy(&path, &odd).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&odd)
            .unwrap()
            .set_len(len)
            .unwrap();
        let before = snapshot(&odd);
        let err = geo.builder(&odd).open().expect_err(name);
        assert!(
            matches!(err, Error::WrongSize { expected: 81920, found, .. } if found == len),
            "{name}: {err:?}"
        );
        assert!(
            err.to_string().contains(&odd.display().to_string()),
            "{err}"
        );
        assert!(snapshot(&odd) == before, "{name}: the file was changed");
    }
}

#[test]
fn perl_page_check_detects_a_damaged_page() {
    let _serial = serial();
    if !perl_available("perl_page_check_detects_a_damaged_page") {
        return;
    }
    let dir = temp_dir();
    let path = dir.path().join("damage");
    let cache = SMALL.builder(&path).open().expect("open");
    for i in 0..200u32 {
        cache
            .set(format!("key-{i}").as_bytes(), &[b'v'; 40])
            .unwrap();
    }
    assert_valid_both_ways(&cache, &path, SMALL);
    drop(cache);

    // Change the slot hash stored with the first entry of page 3: the page header still
    // adds up, but the entry no longer matches its key.
    let target = 3;
    let raw = raw_file(&path);
    let page = page_offset(Layout::FastMmap, SMALL.num_pages, SMALL.page_size, target);
    let first_slot = (0..read_u32(&raw, page + 4))
        .map(|s| read_u32(&raw, page + PAGE_HEADER_SIZE as u64 + 4 * u64::from(s)))
        .find(|&off| off > 1)
        .expect("page 3 holds an entry");
    let slot_hash_at = page + u64::from(first_slot) + 8;
    write_u32(&raw, slot_hash_at, read_u32(&raw, slot_hash_at) ^ 0x55);

    assert_eq!(perl_page_check(&path, SMALL), [target]);
    let damaged = SMALL.builder(&path).open().expect("open");
    let problems = damaged.validate().expect("validate");
    assert_eq!(
        problems.iter().map(|p| p.page).collect::<Vec<_>>(),
        [target]
    );
}

// ---------------------------------------------------------------------------------------------
// Write-back: the dirty flag, both ways

/// A backing store that records what reaches it.
#[derive(Clone, Default)]
struct Recorder(std::sync::Arc<std::sync::Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>);

impl fastmmap::Backing for Recorder {
    fn load(&self, _: &[u8]) -> Result<Option<Vec<u8>>, fastmmap::BackingError> {
        Ok(None)
    }
    fn store(
        &self,
        key: &[u8],
        value: &[u8],
        _: Option<SystemTime>,
    ) -> Result<(), fastmmap::BackingError> {
        self.0.lock().unwrap().insert(key.to_vec(), value.to_vec());
        Ok(())
    }
    fn delete(&self, key: &[u8]) -> Result<(), fastmmap::BackingError> {
        self.0.lock().unwrap().remove(key);
        Ok(())
    }
}

/// The geometry of the write-back tests' files (`write_back.pl` opens them with the same).
const WRITE_BACK_GEO: Geometry = Geometry {
    num_pages: 5,
    page_size: 16384,
};

/// A write-back cache at `path`, of [`WRITE_BACK_GEO`], whose backing store records what
/// reaches it.
fn write_back_cache(path: &Path) -> (Cache, Recorder) {
    let store = Recorder::default();
    let cache = WRITE_BACK_GEO
        .builder(path)
        .backing(store.clone())
        .write_mode(fastmmap::WriteMode::Back)
        .open()
        .unwrap();
    (cache, store)
}

/// Runs `tests/perl/write_back.pl COMMAND` on the file at `path` (of [`WRITE_BACK_GEO`]); the
/// `(key, value)` pairs its write callback got.
fn run_write_back_pl(path: &Path, command: &str, input: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let geo = WRITE_BACK_GEO;
    let lines = run_to_completion(
        Command::new("perl")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/perl/write_back.pl"))
            .arg(command)
            .arg(path)
            .arg(geo.num_pages.to_string())
            .arg(geo.page_size.to_string()),
        input,
        &format!("write_back.pl {command}"),
    );
    assert_eq!(lines.last().map(String::as_str), Some("done"), "{lines:?}");
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("wb "))
        .map(|l| {
            let (k, v) = l.split_once(' ').expect("wb KEY VALUE");
            (unhex(k), unhex(v))
        })
        .collect()
}

fn write_back_pairs(tag: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    (0..40u32)
        .map(|i| {
            let key = format!("{tag}:{i}").into_bytes();
            let mut value = format!("{tag} value {i} ").into_bytes();
            value.extend((0..i % 7).map(|b| b as u8 * 37)); // some binary
            (key, value)
        })
        .collect()
}

#[test]
fn perl_dirty_entries_are_flushed_by_rust() {
    if !perl_available("perl_dirty_entries_are_flushed_by_rust") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wb-perl");
    let (cache, store) = write_back_cache(&path);
    let pairs = write_back_pairs("perl");
    let input: String = pairs
        .iter()
        .map(|(k, v)| format!("{} {}\n", hex(k), hex(v)))
        .collect();
    let written = run_write_back_pl(&path, "set", &input);
    assert!(written.is_empty(), "nothing evicted: {written:?}");
    for (k, v) in &pairs {
        let e = cache.entry(k).unwrap().expect("Perl's entry");
        assert_eq!(&e.value, v);
        assert!(
            e.flags.is_dirty(),
            "Perl's write-back entries carry the dirty flag"
        );
    }
    assert_eq!(cache.flush().unwrap(), pairs.len());
    assert_eq!(
        *store.0.lock().unwrap(),
        pairs,
        "Rust wrote back what Perl stored"
    );
    assert!(cache.iter().all(|r| !r.unwrap().1.flags.is_dirty()));
    // Perl sees the entries clean: its empty() writes nothing back.
    let again = run_write_back_pl(&path, "empty", "");
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(cache.keys().count(), 0);
}

#[test]
fn rust_dirty_entries_are_written_back_by_perl() {
    if !perl_available("rust_dirty_entries_are_written_back_by_perl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wb-rust");
    let (cache, store) = write_back_cache(&path);
    let pairs = write_back_pairs("rust");
    for (k, v) in &pairs {
        cache.set(k, v).unwrap();
    }
    cache.set(b"clean", b"flushed").unwrap();
    cache.evict(b"clean").unwrap();
    cache.get(b"clean").unwrap();
    assert!(
        store.0.lock().unwrap().len() == 1,
        "only the evicted key reached Rust's store"
    );
    let written = run_write_back_pl(&path, "empty", "");
    assert_eq!(
        written, pairs,
        "Perl's empty() wrote back every dirty Rust entry"
    );
    assert_eq!(cache.keys().count(), 0);
}
