#![cfg(feature = "perl")]
//! Perl's values against real Perl (5.36's Storable 3.26, Cache::FastMmap 1.57, JSON::PP,
//! Compress::Zlib, Compress::LZ4, Compress::Snappy): `fastmmap::perl` reads what Perl writes
//! and Perl reads what it writes.
//!
//! The Perl half is `tests/perl/values.pl`. Both sides print a Perl data structure as the same
//! canonical text (types, bytes, classes, weak references, and which places share one value;
//! see the script's header), so "equal" means equal to Perl, sharing included.
//!
//! - **Perl → Rust → Perl** ([`perl_images_thaw_in_rust_and_freeze_back`]): random nested data
//!   made by Perl (seeded) with `freeze` and `nfreeze`; Rust thaws both (same canonical text),
//!   freezes them again byte for byte identical, and also `nfreeze`s the native data, which
//!   Perl thaws to what its own `nfreeze` gave (so the Rust side converts numbers as Perl
//!   does).
//! - **Rust → Perl → Rust** ([`rust_images_thaw_in_perl_and_freeze_back`]): random data made
//!   in Rust (seeded); Perl thaws both images to the same text, and its own `freeze` and
//!   `nfreeze` of them thaw in Rust to the same data.
//! - **Sharing, cycles and objects** ([`shared_references_cycles_and_objects_survive_both_ways`]):
//!   named Perl structures (shared arrays, a cycle, weak parent links, objects of several
//!   classes with Storable's class table, overloaded objects, JSON::PP booleans, an aliased
//!   element, 200 levels of nesting, UTF-8 and Latin-1 keys, extreme numbers, long strings,
//!   references to references) both ways, and a structure built in Rust.
//! - **Hook objects** ([`hook_objects_survive_both_ways_byte_for_byte`]): objects frozen by
//!   `STORABLE_freeze` hooks in every form Perl writes are read, written back byte for byte,
//!   and thawed by Perl's `STORABLE_thaw` into the same objects.
//! - **Refused** ([`what_perl_freezes_but_rust_refuses_is_an_error`]): code references, tied
//!   hashes (with or without a hook), regexps, v-strings and restricted hashes as Perl freezes
//!   them are errors.
//! - **Through a cache file** ([`perl_caches_and_rust_share_typed_values`]): for each of
//!   Cache::FastMmap's serializers (storable, json, raw) with each compressor (none, zlib,
//!   lz4, snappy), Perl stores records with `set` and Rust reads them typed with
//!   `PerlFormat::get`; Rust stores them with `PerlFormat::set` and Perl's `get` reads the
//!   same values.
//!
//! Without `perl` or one of those modules every test prints a banner straight to the terminal
//! and passes without running; with `FASTMMAP_REQUIRE_PERL=1` (set by CI) it fails instead.
//! `FASTMMAP_SEED` replays a seed; `FASTMMAP_STRESS=long` runs ten times the samples.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::*;
use fastmmap::perl::storable::{freeze, nfreeze, thaw};
use fastmmap::perl::{
    Compressor, Error, HashKey, PerlData, PerlFormat, PerlRef, PerlValue, Serializer, Sv, SvId,
};
use fastmmap::{Cache, Layout};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// Is Perl here?

/// The modules the tests need (Storable and JSON::PP come with perl itself).
const MODULES: &[&str] = &[
    "Storable",
    "JSON::PP",
    "Cache::FastMmap",
    "JSON",
    "Compress::Zlib",
    "Compress::LZ4",
    "Compress::Snappy",
];

/// Checks once for `perl` with [`MODULES`]. When one is missing: a banner on the terminal and
/// `false`, or a panic under `FASTMMAP_REQUIRE_PERL=1`.
fn perl_available(test: &str) -> bool {
    static PROBE: Mutex<Option<Result<(), String>>> = Mutex::new(None);
    let mut probe = PROBE.lock().unwrap_or_else(|p| p.into_inner());
    let probe = probe.get_or_insert_with(|| {
        for module in MODULES {
            match Command::new("perl")
                .args([&format!("-M{module}"), "-e1"])
                .output()
            {
                Err(e) => return Err(format!("cannot run perl: {e}")),
                Ok(out) if !out.status.success() => {
                    return Err(format!("perl cannot load {module}"));
                }
                Ok(_) => {}
            }
        }
        Ok(())
    });
    match probe {
        Ok(()) => true,
        Err(why) if required("FASTMMAP_REQUIRE_PERL") => {
            panic!("FASTMMAP_REQUIRE_PERL=1 but {why}")
        }
        Err(why) => {
            raw_eprint(&format!(
                "\n*** perl_values: SKIPPED {test}: {why}\n\
                 *** Install perl, libcache-fastmmap-perl, libjson-perl, libcompress-lz4-perl and\n\
                 *** libcompress-snappy-perl to run the Perl value tests.\n\n"
            ));
            false
        }
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/perl/values.pl")
}

/// Runs `perl values.pl ARGS` with `input` on its stdin; its stdout lines. Panics with its
/// stderr if it fails.
fn perl(args: &[&str], input: &str) -> Vec<String> {
    run_to_completion(
        Command::new("perl").arg(script()).args(args),
        input,
        &format!("perl values.pl {args:?}"),
    )
}

/// The fields of a line from values.pl after its tag.
fn fields<'a>(line: &'a str, tag: &str) -> Vec<&'a str> {
    let rest = line
        .strip_prefix(tag)
        .and_then(|r| r.strip_prefix(' '))
        .unwrap_or_else(|| panic!("expected `{tag} ...` from perl, got {:.200}", line));
    rest.split(' ').collect()
}

// ---------------------------------------------------------------------------------------------
// The canonical text of Perl data (the same as values.pl's `canonical`)

fn key_token(key: &HashKey) -> String {
    match key {
        HashKey::Bytes(b) => format!("b{}", hex(b)),
        HashKey::Str(s) => format!("s{}", hex(s.as_bytes())),
    }
}

/// The children of a value in dump order.
fn children(data: &PerlData, id: SvId) -> Vec<SvId> {
    match &data[id].value {
        PerlValue::Array(items) => items.clone(),
        PerlValue::Hash(entries) => {
            let mut sorted: Vec<(String, SvId)> =
                entries.iter().map(|(k, v)| (key_token(k), *v)).collect();
            sorted.sort();
            sorted.into_iter().map(|(_, v)| v).collect()
        }
        PerlValue::Ref(r) => vec![r.target],
        _ => vec![],
    }
}

/// Perl's immortal true and false have no identity of their own on the Perl side.
fn immortal(data: &PerlData, id: SvId) -> Option<&'static str> {
    match data[id].value {
        PerlValue::Bool(true) => Some("T"),
        PerlValue::Bool(false) => Some("F"),
        _ => None,
    }
}

fn count_visits(data: &PerlData, id: SvId, count: &mut HashMap<SvId, u32>) {
    if immortal(data, id).is_some() {
        return;
    }
    let n = count.entry(id).or_default();
    *n += 1;
    if *n > 1 {
        return;
    }
    for child in children(data, id) {
        count_visits(data, child, count);
    }
}

struct DumpState {
    count: HashMap<SvId, u32>,
    label: HashMap<SvId, u32>,
    next: u32,
}

fn dump_sv(data: &PerlData, id: SvId, st: &mut DumpState, out: &mut String) {
    if let Some(token) = immortal(data, id) {
        out.push_str(token);
        return;
    }
    if st.count[&id] > 1 {
        if let Some(label) = st.label.get(&id) {
            let _ = write!(out, "@{label}");
            return;
        }
        st.label.insert(id, st.next);
        let _ = write!(out, "#{}=", st.next);
        st.next += 1;
    }
    let sv = &data[id];
    if let Some(class) = &sv.class {
        let _ = write!(out, "<{class}>");
    }
    match &sv.value {
        PerlValue::Undef => out.push('u'),
        PerlValue::Int(n) => {
            let _ = write!(out, "i{n}");
        }
        PerlValue::Num(x) => {
            let _ = write!(out, "n{:016x}", x.to_bits());
        }
        PerlValue::Bytes(b) => {
            let _ = write!(out, "b{}", hex(b));
        }
        // Perl thaws an empty UTF-8 string without its flag (Storable's get_lstring returns
        // early for length 0), so to Perl it is an empty byte string.
        PerlValue::Str(s) if s.is_empty() => out.push('b'),
        PerlValue::Str(s) => {
            let _ = write!(out, "s{}", hex(s.as_bytes()));
        }
        PerlValue::Array(_) => {
            out.push('[');
            for (i, child) in children(data, id).into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                dump_sv(data, child, st, out);
            }
            out.push(']');
        }
        PerlValue::Hash(entries) => {
            let mut sorted: Vec<(String, SvId)> =
                entries.iter().map(|(k, v)| (key_token(k), *v)).collect();
            sorted.sort();
            out.push('{');
            for (i, (key, child)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&key);
                out.push('=');
                dump_sv(data, child, st, out);
            }
            out.push('}');
        }
        PerlValue::Ref(r) => {
            out.push('\\');
            if r.weak {
                out.push('w');
            }
            dump_sv(data, r.target, st, out);
        }
        other => panic!("no canonical text for {other:?}"),
    }
}

fn canonical(data: &PerlData) -> String {
    let mut count = HashMap::new();
    count_visits(data, data.root(), &mut count);
    let mut st = DumpState {
        count,
        label: HashMap::new(),
        next: 0,
    };
    let mut out = String::new();
    dump_sv(data, data.root(), &mut st, &mut out);
    out
}

/// Asserts two long texts (canonical texts, hex images) equal, showing where they differ.
#[track_caller]
fn assert_same(got: &str, want: &str, what: std::fmt::Arguments<'_>) {
    if got == want {
        return;
    }
    let at = got
        .bytes()
        .zip(want.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let from = at.saturating_sub(120);
    let context = |s: &str| {
        s.get(from..(at + 120).min(s.len()))
            .unwrap_or("")
            .to_owned()
    };
    panic!(
        "{what}: differs at byte {at} of {} / {}\n  got: ...{}...\n want: ...{}...",
        got.len(),
        want.len(),
        context(got),
        context(want)
    );
}

// ---------------------------------------------------------------------------------------------
// Perl → Rust → Perl

#[test]
fn perl_images_thaw_in_rust_and_freeze_back() {
    if !perl_available("perl_images_thaw_in_rust_and_freeze_back") {
        return;
    }
    let seed = seed("perl_images_thaw_in_rust_and_freeze_back") as u32;
    let count = scaled(300, 3000);
    let samples = perl(&["gen", &seed.to_string(), &count.to_string()], "");
    assert_eq!(samples.len(), count);
    let mut back = String::new();
    let mut expected = Vec::new();
    for (i, line) in samples.iter().enumerate() {
        let f = fields(line, "sample");
        let (native, network) = (unhex(f[0]), unhex(f[1]));
        let (perl_dump, perl_ndump) = (f[2], f[3]);
        let data = thaw(&native).unwrap_or_else(|e| panic!("sample {i}: thaw freeze: {e}"));
        let ndata = thaw(&network).unwrap_or_else(|e| panic!("sample {i}: thaw nfreeze: {e}"));
        assert_same(
            &canonical(&data),
            perl_dump,
            format_args!("sample {i}: freeze read"),
        );
        assert_same(
            &canonical(&ndata),
            perl_ndump,
            format_args!("sample {i}: nfreeze read"),
        );
        // Written back byte for byte as Perl wrote them.
        let again = hex(&freeze(&data).unwrap());
        assert_same(&again, f[0], format_args!("sample {i}: freeze again"));
        let again = hex(&nfreeze(&ndata).unwrap());
        assert_same(&again, f[1], format_args!("sample {i}: nfreeze again"));
        // The native data in network order: numbers converted as Perl's nfreeze does.
        let converted = nfreeze(&data).unwrap();
        for image in [freeze(&data).unwrap(), nfreeze(&ndata).unwrap(), converted] {
            let _ = writeln!(back, "{}", hex(&image));
        }
        expected.extend([perl_dump, perl_ndump, perl_ndump]);
    }
    let thawed = perl(&["thaw"], &back);
    assert_eq!(thawed.len(), expected.len());
    for (i, (line, want)) in thawed.iter().zip(expected).enumerate() {
        let f = fields(line, "thawed");
        let kind = ["freeze", "nfreeze", "nfreeze of freeze's data"][i % 3];
        assert_same(
            f[0],
            want,
            format_args!("sample {}: Perl reads Rust's {kind}", i / 3),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Rust → Perl → Rust

/// Random Perl data that Perl freezes back unchanged: no weak references (Perl would free a
/// target nothing else holds), no doubles that are integers (Perl freezes those as integers),
/// no blessed booleans (Perl's immortals cannot be blessed), and references to objects of
/// class `Ov` (which overloads operators in values.pl) marked overloaded, as Perl marks them.
struct Gen {
    rng: Rng,
    data: PerlData,
    containers: Vec<SvId>,
    scalars: Vec<SvId>,
    budget: usize,
}

impl Gen {
    fn class(&mut self) -> Option<Arc<str>> {
        match self.rng.below(10) {
            0 => Some("Foo".into()),
            1 => Some("Bar::Baz".into()),
            2 => Some("L".repeat(200).into()),
            3 => Some("Ov".into()),
            _ => None,
        }
    }

    fn bytes(&mut self) -> Vec<u8> {
        let n = if self.rng.chance(10) {
            self.rng.range(256, 600)
        } else {
            self.rng.range(0, 12)
        };
        self.rng.bytes(n)
    }

    fn string(&mut self) -> String {
        let n = if self.rng.chance(10) {
            self.rng.range(100, 200)
        } else {
            self.rng.range(0, 8)
        };
        (0..n)
            .map(|_| match self.rng.below(4) {
                0 => char::from(self.rng.below(128) as u8),
                1 => char::from(self.rng.below(256) as u8),
                2 => char::from_u32(0x100 + self.rng.below(0xd000) as u32).unwrap(),
                _ => char::from_u32(0x1f600 + self.rng.below(80) as u32).unwrap(),
            })
            .collect()
    }

    fn push(&mut self, value: PerlValue, blessable: bool) -> SvId {
        let class = if blessable { self.class() } else { None };
        self.data.push(match class {
            Some(class) => Sv::blessed(value, class),
            None => Sv::new(value),
        })
    }

    fn scalar(&mut self, depth: usize) -> SvId {
        self.budget = self.budget.saturating_sub(1);
        let k = self
            .rng
            .below(if self.budget == 0 || depth > 5 { 7 } else { 11 });
        let value = match k {
            0 => PerlValue::Undef,
            1 => {
                let b = self.rng.chance(50);
                let id = self.push(PerlValue::Bool(b), false);
                self.scalars.push(id);
                return id;
            }
            2 => PerlValue::Int(match self.rng.below(4) {
                0 => self.rng.below(256) as i64 - 128,
                1 => self.rng.next_u32() as i32 as i64,
                2 => [i64::MIN, i64::MAX, 128, -129, 1 << 53][self.rng.below(5) as usize],
                _ => self.rng.next_u64() as i64,
            }),
            3 => {
                let mut x = match self.rng.below(6) {
                    0 => [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300, 5e-324]
                        [self.rng.below(5) as usize],
                    1 => f64::from_bits(self.rng.next_u64()),
                    _ => {
                        (self.rng.next_u64() as i64 as f64)
                            / 10f64.powi(self.rng.range(0, 30) as i32)
                    }
                };
                if x.is_nan() {
                    x = f64::NAN; // one NaN: Perl keeps the bits, but keep it simple
                }
                if x.is_finite() && x.fract() == 0.0 && x.abs() < 9007199254740992.0 {
                    x = 0.25 + x.abs() % 1000.0;
                }
                PerlValue::Num(x)
            }
            4 => PerlValue::Bytes(self.bytes()),
            5 => PerlValue::Str(self.string()),
            6 if !self.scalars.is_empty() => {
                return self.scalars[self.rng.below(self.scalars.len() as u64) as usize];
            }
            6 => PerlValue::Undef,
            _ => {
                let target = match self.rng.below(4) {
                    0 if !self.containers.is_empty() => {
                        self.containers[self.rng.below(self.containers.len() as u64) as usize]
                    }
                    1 => self.scalar(depth + 1),
                    _ => self.container(depth + 1),
                };
                let overloaded = self.data[target].class.as_deref() == Some("Ov");
                let mut r = PerlRef::to(target);
                r.overloaded = overloaded;
                PerlValue::Ref(r)
            }
        };
        let id = self.push(value, true);
        self.scalars.push(id);
        id
    }

    fn container(&mut self, depth: usize) -> SvId {
        let is_hash = self.rng.chance(50);
        let empty = if is_hash {
            PerlValue::Hash(vec![])
        } else {
            PerlValue::Array(vec![])
        };
        let id = self.push(empty, true);
        self.containers.push(id);
        let n = self.rng.range(0, 7);
        let items: Vec<SvId> = (0..n).map(|_| self.scalar(depth + 1)).collect();
        let value = if is_hash {
            let mut entries: Vec<(HashKey, SvId)> = Vec::new();
            let mut keys = std::collections::HashSet::new();
            for item in items {
                let key = if self.rng.chance(30) {
                    HashKey::Str(self.string())
                } else {
                    HashKey::Bytes(self.bytes())
                };
                // Perl's identity of a key: its characters.
                let chars: Vec<u32> = match &key {
                    HashKey::Bytes(b) => b.iter().map(|&c| u32::from(c)).collect(),
                    HashKey::Str(s) => s.chars().map(u32::from).collect(),
                };
                if keys.insert(chars) {
                    entries.push((key, item));
                }
            }
            PerlValue::Hash(entries)
        } else {
            PerlValue::Array(items)
        };
        self.data.get_mut(id).unwrap().value = value;
        id
    }
}

fn random_data(rng: Rng) -> PerlData {
    let mut g = Gen {
        rng,
        data: PerlData::new(PerlValue::Undef),
        containers: Vec::new(),
        scalars: Vec::new(),
        budget: 150,
    };
    let root = if g.rng.chance(75) {
        g.container(0)
    } else {
        g.scalar(0)
    };
    g.data.set_root(root);
    g.data
}

#[test]
fn rust_images_thaw_in_perl_and_freeze_back() {
    if !perl_available("rust_images_thaw_in_perl_and_freeze_back") {
        return;
    }
    let mut rng = Rng::new(seed("rust_images_thaw_in_perl_and_freeze_back"));
    let count = scaled(300, 3000);
    let mut input = String::new();
    let mut datas = Vec::new();
    for _ in 0..count {
        let data = random_data(Rng::new(rng.next_u64()));
        let _ = writeln!(input, "{}", hex(&freeze(&data).unwrap()));
        let _ = writeln!(input, "{}", hex(&nfreeze(&data).unwrap()));
        datas.push(data);
    }
    let thawed = perl(&["thaw"], &input);
    assert_eq!(thawed.len(), 2 * count);
    for (i, data) in datas.iter().enumerate() {
        let want = canonical(data);
        // Perl reads the native image as the data, and its own freeze of it reads back so.
        let f = fields(&thawed[2 * i], "thawed");
        assert_same(f[0], &want, format_args!("sample {i}: Perl reads freeze"));
        let again = thaw(&unhex(f[1])).unwrap_or_else(|e| panic!("sample {i}: {e}"));
        let again = canonical(&again);
        assert_same(
            &again,
            &want,
            format_args!("sample {i}: Perl's freeze of it"),
        );
        // The network image: Perl and Rust read it the same, and so Perl's nfreeze of it.
        let net = thaw(&nfreeze(data).unwrap()).unwrap();
        let want = canonical(&net);
        let f = fields(&thawed[2 * i + 1], "thawed");
        assert_same(f[0], &want, format_args!("sample {i}: Perl reads nfreeze"));
        let again = thaw(&unhex(f[2])).unwrap_or_else(|e| panic!("sample {i}: {e}"));
        let again = canonical(&again);
        assert_same(
            &again,
            &want,
            format_args!("sample {i}: Perl's nfreeze of it"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Sharing, cycles and objects

#[test]
fn shared_references_cycles_and_objects_survive_both_ways() {
    if !perl_available("shared_references_cycles_and_objects_survive_both_ways") {
        return;
    }
    let cases = perl(&["cases"], "");
    let mut names = Vec::new();
    let mut back = String::new();
    let mut expected = Vec::new();
    for line in &cases {
        let f = fields(line, "case");
        let name = f[0];
        names.push(name.to_owned());
        let data = thaw(&unhex(f[1])).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ndata = thaw(&unhex(f[2])).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_same(&canonical(&data), f[3], format_args!("{name}: freeze read"));
        assert_same(
            &canonical(&ndata),
            f[4],
            format_args!("{name}: nfreeze read"),
        );
        // Byte for byte, but for Perl's immortal undef, which is written as a plain undef.
        if name != "scalar_refs" {
            let again = hex(&freeze(&data).unwrap());
            assert_same(&again, f[1], format_args!("{name}: freeze again"));
            let again = hex(&nfreeze(&ndata).unwrap());
            assert_same(&again, f[2], format_args!("{name}: nfreeze again"));
        }
        let _ = writeln!(back, "{}", hex(&freeze(&data).unwrap()));
        let _ = writeln!(back, "{}", hex(&nfreeze(&data).unwrap()));
        expected.extend([f[3].to_owned(), f[4].to_owned()]);
    }
    for name in [
        "aliased_element",
        "blessed",
        "cycle",
        "deep",
        "keys",
        "numbers",
        "overloaded",
        "scalar_refs",
        "shared_array",
        "strings",
        "weak_cycle",
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "values.pl has no case {name}"
        );
    }
    let thawed = perl(&["thaw"], &back);
    for (i, (line, want)) in thawed.iter().zip(&expected).enumerate() {
        let f = fields(line, "thawed");
        let name = &names[i / 2];
        assert_same(f[0], want, format_args!("{name}: Perl reads Rust's image"));
    }

    // A structure built in Rust: two objects of one class sharing a hash, and a cycle.
    let mut data = PerlData::new(PerlValue::Undef);
    let config = data.push(PerlValue::Hash(vec![]));
    let name = data.push(PerlValue::string("shared config"));
    let users: Vec<SvId> = (0..2)
        .map(|i| {
            let id = data.push(PerlValue::Int(i));
            let cfg = data.push(PerlValue::Ref(PerlRef::to(config)));
            let obj = data.push(Sv::blessed(
                PerlValue::Hash(vec![("id".into(), id), ("config".into(), cfg)]),
                "My::User",
            ));
            data.push(PerlValue::Ref(PerlRef::to(obj)))
        })
        .collect();
    let list = data.push(PerlValue::Array(users));
    let list_ref = data.push(PerlValue::Ref(PerlRef::to(list)));
    data.get_mut(config).unwrap().value =
        PerlValue::Hash(vec![("name".into(), name), ("users".into(), list_ref)]);
    data.set_root(list);
    let want = "#0=[\\<My::User>{b636f6e666967=\\#1={b6e616d65=b73686172656420636f6e666967,\
                b7573657273=\\@0},b6964=i0},\\<My::User>{b636f6e666967=\\@1,b6964=i1}]";
    assert_eq!(canonical(&data), want);
    let thawed = perl(&["thaw"], &format!("{}\n", hex(&freeze(&data).unwrap())));
    let f = fields(&thawed[0], "thawed");
    assert_eq!(f[0], want, "Perl reads the Rust structure");
    assert_eq!(
        thaw(&unhex(f[1])).unwrap(),
        data,
        "and freezes it back unchanged"
    );
}

/// Objects frozen by `STORABLE_freeze` hooks, in every form Perl writes them (a string only,
/// references to further values — shared, nested, the object itself — blessed arrays and
/// scalars, overloading, strings and lists over 255, class names and class indexes over 255):
/// Rust reads them, writes them back byte for byte, converts them between byte orders, and
/// Perl's `STORABLE_thaw` rebuilds the same objects from Rust's images.
#[test]
fn hook_objects_survive_both_ways_byte_for_byte() {
    if !perl_available("hook_objects_survive_both_ways_byte_for_byte") {
        return;
    }
    let cases = perl(&["hooks"], "");
    let mut names = Vec::new();
    let mut back = String::new();
    let mut expected = Vec::new();
    for line in &cases {
        let f = fields(line, "hook");
        let name = f[0];
        names.push(name.to_owned());
        let data = thaw(&unhex(f[1])).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ndata = thaw(&unhex(f[2])).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_same(
            &hex(&freeze(&data).unwrap()),
            f[1],
            format_args!("{name}: freeze again"),
        );
        assert_same(
            &hex(&nfreeze(&ndata).unwrap()),
            f[2],
            format_args!("{name}: nfreeze again"),
        );
        assert_eq!(data, ndata, "{name}: both byte orders read the same");
        let _ = writeln!(back, "{}", hex(&freeze(&data).unwrap()));
        let _ = writeln!(back, "{}", hex(&nfreeze(&data).unwrap()));
        expected.extend([f[3].to_owned(), f[4].to_owned()]);
        if name == "refs" {
            check_refs_case(&data);
        }
    }
    assert_eq!(
        names,
        ["classes", "kinds", "large", "nested", "refs", "simple"]
    );
    let thawed = perl(&["thaw"], &back);
    assert_eq!(thawed.len(), expected.len());
    for (i, (line, want)) in thawed.iter().zip(&expected).enumerate() {
        let f = fields(line, "thawed");
        let name = &names[i / 2];
        assert_same(f[0], want, format_args!("{name}: Perl thaws Rust's image"));
    }
}

/// The `refs` case as Rust sees it: `one`'s hook referred to the array shared with `before`
/// and `after`, to the hash `two` shares, to the scalar 5 and to itself.
fn check_refs_case(data: &PerlData) {
    use fastmmap::perl::HookKind;
    let root = data.deref(data.root()).unwrap();
    let object = |key: &str| data.deref(data.hash_get(root, key).unwrap()).unwrap();
    let (one, two) = (object("one"), object("two"));
    assert_eq!(data[one].class.as_deref(), Some("Hooked::Refs"));
    let (PerlValue::Hook(h1), PerlValue::Hook(h2)) = (&data[one].value, &data[two].value) else {
        panic!("not hook objects: {:?} {:?}", data[one], data[two]);
    };
    assert_eq!(h1.kind, HookKind::Hash);
    assert_eq!(h1.frozen, b"name=one");
    assert_eq!(h1.refs.len(), 4);
    assert_eq!(h1.refs[0], object("before"), "the shared array");
    assert_eq!(h1.refs[0], object("after"));
    assert_eq!(h1.refs[1], h2.refs[1], "the shared hash");
    assert_eq!(data[h1.refs[2]].value, PerlValue::Int(5));
    assert_eq!(h1.refs[3], one, "the object itself");
    assert_eq!(data[object("user")].class.as_deref(), Some("My::User"));
    // Through serde: the class and the hook's string.
    let json: serde_json::Value = fastmmap::perl::storable::from_data(&{
        let mut d = data.clone();
        d.set_root(two);
        d
    })
    .unwrap();
    assert_eq!(
        json,
        serde_json::json!({"class": "Hooked::Refs", "frozen": "name=two"})
    );
}

#[test]
fn what_perl_freezes_but_rust_refuses_is_an_error() {
    if !perl_available("what_perl_freezes_but_rust_refuses_is_an_error") {
        return;
    }
    let refused = perl(&["refused"], "");
    let mut names = Vec::new();
    for line in &refused {
        let f = fields(line, "refused");
        names.push(f[0]);
        match thaw(&unhex(f[1])) {
            Err(Error::Unsupported { what, .. }) => eprintln!("{}: {what}", f[0]),
            other => panic!("{}: {other:?}", f[0]),
        }
    }
    assert_eq!(
        names,
        [
            "code",
            "regexp",
            "restricted",
            "tied",
            "tied_hook",
            "vstring"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Through a cache file

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Order {
    id: u64,
    customer: String,
    total: f64,
    paid: bool,
    note: Option<String>,
    lines: Vec<Line>,
    tags: BTreeMap<String, i64>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Line {
    sku: String,
    qty: u32,
    price: f64,
}

/// The order values.pl stores (`records`).
fn order() -> Order {
    Order {
        id: 1042,
        customer: "Zoë ☺".into(),
        total: 31.25,
        paid: true,
        note: None,
        lines: vec![
            Line {
                sku: "A-1".into(),
                qty: 2,
                price: 9.5,
            },
            Line {
                sku: "B-22".into(),
                qty: 1,
                price: 12.25,
            },
        ],
        tags: BTreeMap::from([("gift".into(), 1), ("priority".into(), -3)]),
    }
}

/// `value` as values.pl prints Perl's reading of it: canonical JSON, booleans as 1 and 0.
fn perl_json<T: Serialize>(value: &T) -> String {
    fn normalise(v: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::Bool(b) => Value::from(u8::from(b)),
            Value::Array(items) => Value::Array(items.into_iter().map(normalise).collect()),
            Value::Object(map) => {
                let sorted: BTreeMap<String, Value> =
                    map.into_iter().map(|(k, v)| (k, normalise(v))).collect();
                Value::Object(sorted.into_iter().collect())
            }
            other => other,
        }
    }
    normalise(serde_json::to_value(value).unwrap()).to_string()
}

const GEOMETRY: (u32, u32) = (7, 32 * 1024);

fn open_cache(path: &Path) -> Cache {
    Cache::builder()
        .path(path)
        .layout(Layout::FastMmap)
        .num_pages(GEOMETRY.0)
        .page_size(GEOMETRY.1)
        .open()
        .expect("open the cache")
}

#[test]
fn perl_caches_and_rust_share_typed_values() {
    if !perl_available("perl_caches_and_rust_share_typed_values") {
        return;
    }
    let dir = temp_dir();
    let serializers = [
        (Serializer::Storable, "storable"),
        (Serializer::Json, "json"),
        (Serializer::Raw, "raw"),
    ];
    let compressors = [
        (Compressor::None, "none"),
        (Compressor::Zlib, "zlib"),
        (Compressor::Lz4, "lz4"),
        (Compressor::Snappy, "snappy"),
    ];
    for (serializer, s_name) in serializers {
        for (compressor, c_name) in compressors {
            let what = format!("serializer => '{s_name}', compressor => '{c_name}'");
            let format = PerlFormat::new(serializer, compressor);
            let path = dir.path().join(format!("{s_name}-{c_name}.cache"));
            let cache = open_cache(&path);
            let geometry = [
                path.to_str().unwrap(),
                &GEOMETRY.0.to_string(),
                &GEOMETRY.1.to_string(),
                s_name,
                c_name,
            ]
            .map(str::to_owned);
            let args = |command: &str, keys: &[&str]| -> Vec<String> {
                let mut args = vec![command.to_owned()];
                args.extend(geometry.iter().cloned());
                args.extend(keys.iter().map(|k| k.to_string()));
                args
            };
            let run = |args: Vec<String>| {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                perl(&args, "")
            };

            // Perl writes, Rust reads typed.
            assert_eq!(run(args("cache-write", &[])), ["ok"], "{what}");
            let mut rust_keys: Vec<(&str, String)> = Vec::new();
            if serializer == Serializer::Raw {
                let get_str = format.get::<String>(&cache, b"plain");
                assert_eq!(
                    get_str.unwrap().as_deref(),
                    Some("plain ascii text"),
                    "{what}"
                );
                assert_eq!(
                    format.get::<i64>(&cache, b"number").unwrap(),
                    Some(42),
                    "{what}"
                );
                assert!(format.set(&cache, b"rust:plain", "from rust").unwrap());
                assert!(format.set(&cache, b"rust:number", &42).unwrap());
                rust_keys.push(("rust:plain", perl_json(&"from rust")));
                rust_keys.push(("rust:number", perl_json(&"42")));
                if compressor == Compressor::None {
                    // Without a compressor, the entry's flags carry characters and undef.
                    assert!(format.set(&cache, b"rust:chars", "héllo ☺").unwrap());
                    assert!(format.set(&cache, b"rust:undef", &None::<String>).unwrap());
                    rust_keys.push(("rust:chars", perl_json(&"héllo ☺")));
                    rust_keys.push(("rust:undef", "null".into()));
                    assert_eq!(
                        format.get::<Option<String>>(&cache, b"rust:undef").unwrap(),
                        Some(None)
                    );
                }
            } else {
                assert_eq!(
                    format.get::<Order>(&cache, b"order").unwrap(),
                    Some(order()),
                    "{what}"
                );
                assert_eq!(
                    format.get::<i64>(&cache, b"count").unwrap(),
                    Some(7),
                    "{what}"
                );
                assert_eq!(
                    format.get::<f64>(&cache, b"ratio").unwrap(),
                    Some(0.375),
                    "{what}"
                );
                // A Perl byte string "na\xefve": Latin-1 to Perl, and so to Rust.
                let name = format.get::<String>(&cache, b"name").unwrap();
                assert_eq!(name.as_deref(), Some("naïve"), "{what}");
                let nothing = format.get::<Option<String>>(&cache, b"nothing").unwrap();
                assert_eq!(nothing, Some(None), "{what}: a stored undef");
                let list = format.get::<Vec<i32>>(&cache, b"list").unwrap();
                assert_eq!(list, Some(vec![1, 2, 3]), "{what}");
                assert_eq!(
                    format.get::<i64>(&cache, b"absent").unwrap(),
                    None,
                    "{what}"
                );
                if serializer == Serializer::Storable {
                    // The value as Perl data: a reference to a hash whose `paid` is a JSON::PP
                    // boolean (an object of a class with overloading).
                    let bytes = cache.get(b"order").unwrap().unwrap();
                    let data = thaw(&compressor.decompress(&bytes).unwrap()).unwrap();
                    let paid = data.hash_get(data.root(), "paid").unwrap();
                    let PerlValue::Ref(r) = data[paid].value else {
                        panic!("{what}: paid is {:?}", data[paid])
                    };
                    assert!(r.overloaded);
                    assert_eq!(data[r.target].class.as_deref(), Some("JSON::PP::Boolean"));
                }

                // Rust writes.
                assert!(format.set(&cache, b"rust:order", &order()).unwrap());
                assert!(format.set(&cache, b"rust:count", &7).unwrap());
                assert!(format.set(&cache, b"rust:ratio", &0.375).unwrap());
                assert!(format.set(&cache, b"rust:name", "naïve").unwrap());
                assert!(
                    format
                        .set(&cache, b"rust:nothing", &None::<String>)
                        .unwrap()
                );
                assert!(format.set(&cache, b"rust:list", &[1, 2, 3]).unwrap());
                rust_keys.extend([
                    ("rust:order", perl_json(&order())),
                    ("rust:count", "7".into()),
                    ("rust:ratio", "0.375".into()),
                    ("rust:name", perl_json(&"naïve")),
                    ("rust:nothing", "null".into()),
                    ("rust:list", "[1,2,3]".into()),
                ]);
                // Perl reads its own records as Rust expects them too.
                rust_keys.extend([
                    ("order", perl_json(&order())),
                    ("count", "7".into()),
                    ("list", "[1,2,3]".into()),
                ]);
            }
            // Perl reads.
            let keys: Vec<&str> = rust_keys.iter().map(|(k, _)| *k).collect();
            let read = run(args("cache-read", &keys));
            assert_eq!(read.len(), keys.len(), "{what}");
            for ((key, want), line) in rust_keys.iter().zip(&read) {
                assert_eq!(line, &format!("value {key} {want}"), "{what}");
            }
            drop(cache);
        }
    }
}
