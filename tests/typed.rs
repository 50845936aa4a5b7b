//! Typed values (feature `serde`): both codecs, decode errors that name the key, atomic
//! updates, and JSON values shared with Perl's `serializer => 'json'`.
#![cfg(feature = "serde")]

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use fastmmap::Update;
use fastmmap::typed::{Codec, Json, Postcard, TypedCache};
use fastmmap::{Cache, Error, Layout};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Cart {
    user: String,
    items: Vec<(u32, String)>,
    total_cents: u64,
    note: Option<String>,
}

fn cart(n: u32) -> Cart {
    Cart {
        user: format!("user-{n}"),
        items: (0..n).map(|i| (i, format!("item {i} ✓"))).collect(),
        total_cents: u64::from(n) * 1999,
        note: n.is_multiple_of(2).then(|| "gift".into()),
    }
}

fn typed<C: Codec<Cart>>(dir: &tempfile::TempDir, codec: C) -> TypedCache<str, Cart, C> {
    TypedCache::new(Cache::open(dir.path().join("typed")).unwrap(), codec)
}

fn round_trips<C: Codec<Cart>>(codec: C) {
    let dir = tempfile::tempdir().unwrap();
    let carts = typed(&dir, codec);
    for n in 0..20 {
        carts.set(&format!("cart:{n}"), &cart(n)).unwrap();
    }
    for n in 0..20 {
        assert_eq!(carts.get(&format!("cart:{n}")).unwrap(), Some(cart(n)));
    }
    assert_eq!(carts.get("cart:none").unwrap(), None);
    assert_eq!(carts.take("cart:3").unwrap(), Some(cart(3)));
    assert_eq!(carts.get("cart:3").unwrap(), None);
    assert!(carts.remove("cart:4").unwrap());
    let made = carts.get_or_insert_with("cart:new", || cart(7)).unwrap();
    assert_eq!(made, cart(7));
    assert_eq!(
        carts.get_or_insert_with("cart:new", || cart(8)).unwrap(),
        cart(7)
    );

    carts
        .update("cart:5", |c| {
            let mut c = c.unwrap();
            c.items.push((99, "more".into()));
            Update::Set(c)
        })
        .unwrap();
    assert_eq!(carts.get("cart:5").unwrap().unwrap().items.len(), 6);
    let items = carts
        .update_with("cart:5", |c| (Update::Keep, c.map(|c| c.items.len())))
        .unwrap();
    assert_eq!(items, Some(6));
    carts.update("cart:5", |_| Update::Remove).unwrap();
    assert_eq!(carts.get("cart:5").unwrap(), None);
}

#[test]
fn postcard_round_trips() {
    round_trips(Postcard);
}

#[test]
fn json_round_trips() {
    round_trips(Json);
}

#[test]
fn postcard_is_smaller_than_json() {
    let c = cart(5);
    let p = Codec::<Cart>::encode(&Postcard, &c).unwrap();
    let j = Codec::<Cart>::encode(&Json, &c).unwrap();
    assert!(p.len() * 2 < j.len(), "{} vs {}", p.len(), j.len());
}

/// A value that does not decode is an error that names the key, never a panic, and an update
/// of it changes nothing.
#[test]
fn bad_values_are_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let carts = typed(&dir, Postcard);
    let raw = carts.cache();
    for garbage in [
        &b""[..],
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        b"\x05ab",
    ] {
        raw.set(b"cart:bad", garbage).unwrap();
        match carts.get("cart:bad") {
            Err(Error::Decode { key, .. }) => assert_eq!(key, b"cart:bad"),
            other => panic!("{other:?}"),
        }
        let called = std::cell::Cell::new(false);
        let err = carts
            .update("cart:bad", |_| {
                called.set(true);
                Update::Remove
            })
            .unwrap_err();
        assert!(err.to_string().contains("cart:bad"), "{err}");
        assert!(!called.get());
        assert_eq!(
            raw.get(b"cart:bad").unwrap().as_deref(),
            Some(garbage),
            "unchanged"
        );
    }
    // Trailing bytes after a valid value are refused too.
    let mut bytes = Codec::<Cart>::encode(&Postcard, &cart(1)).unwrap();
    bytes.push(0);
    raw.set(b"cart:long", &bytes).unwrap();
    assert!(matches!(carts.get("cart:long"), Err(Error::Decode { .. })));

    let json = typed(&dir, Json);
    raw.set(b"cart:notjson", b"{\"user\": ").unwrap();
    let err = json.get("cart:notjson").unwrap_err();
    assert!(err.to_string().contains("\"cart:notjson\""), "{err}");
}

/// A recursive type, as a comment thread.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Thread {
    text: String,
    replies: Vec<Thread>,
}

/// `n` replies, each to the one before.
fn thread(n: usize) -> Thread {
    (0..n).fold(
        Thread {
            text: "last".into(),
            replies: Vec::new(),
        },
        |inner, i| Thread {
            text: format!("reply {i}"),
            replies: vec![inner],
        },
    )
}

/// Postcard has no nesting limit of its own: a recursive type decoded from bytes another
/// process planted (one byte a level: 20,000 bytes) overflowed the stack and aborted the
/// process. Values nested more than 128 containers deep are now `Error::Decode`, in a thread
/// with a small stack too; ordinary nesting decodes as before.
#[test]
fn deeply_nested_values_are_errors_not_stack_overflows() {
    let decoded = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(|| {
            let dir = tempfile::tempdir().unwrap();
            let threads: TypedCache<str, Thread, Postcard> =
                TypedCache::new(Cache::open(dir.path().join("t")).unwrap(), Postcard);
            // A text of length 0, then one reply, over and over: each level two containers
            // (the struct and its list of replies).
            let mut planted = [0u8, 1].repeat(20_000);
            planted.extend_from_slice(&[0, 0]);
            threads.cache().set(b"planted", &planted).unwrap();
            let planted = threads.get("planted");
            threads.set("shallow", &thread(40)).unwrap();
            let shallow = threads.get("shallow").unwrap();
            threads.set("deep", &thread(100)).unwrap();
            let deep = threads.get("deep");
            (
                planted.map(|_| ()).map_err(|e| e.to_string()),
                shallow,
                deep.map(|_| ()).map_err(|e| e.to_string()),
            )
        })
        .unwrap()
        .join()
        .expect("the decoding thread died");
    let (planted, shallow, deep) = decoded;
    for (what, result) in [("planted", planted), ("deep", deep)] {
        match result {
            Err(e) => assert!(e.contains("nested more than 128"), "{what}: {e}"),
            Ok(()) => panic!("{what}: decoded"),
        }
    }
    assert_eq!(shallow, Some(thread(40)));
}

/// A map with non-string keys does not encode as JSON: an error, nothing stored.
#[test]
fn values_that_do_not_encode_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("e")).unwrap();
    let maps: TypedCache<[u8], BTreeMap<(u8, u8), u8>, Json> = TypedCache::new(cache, Json);
    let value = BTreeMap::from([((1, 2), 3)]);
    assert!(matches!(maps.set(b"m", &value), Err(Error::Encode { .. })));
    assert_eq!(maps.cache().get(b"m").unwrap(), None);
}

fn perl_json_available() -> bool {
    let ok = Command::new("perl")
        .args(["-MCache::FastMmap", "-MJSON", "-e", "1"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !common::required("FASTMMAP_REQUIRE_PERL"),
            "FASTMMAP_REQUIRE_PERL=1 but perl with Cache::FastMmap and JSON is missing"
        );
        common::raw_eprint("\n*** typed: SKIPPED the Perl JSON test (no perl/JSON)\n\n");
    }
    ok
}

/// A Rust `TypedCache` with `codec` and a Perl Cache::FastMmap with `perl_options` read each
/// other's values in one file.
fn values_cross_over_with_perl<C: Codec<Cart>>(codec: C, perl_options: &str) {
    if !perl_json_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crossover.cache");
    let cache = Cache::builder()
        .path(&path)
        .layout(Layout::FastMmap)
        .num_pages(3)
        .page_size(16384)
        .open()
        .unwrap();
    let carts: TypedCache<str, Cart, C> = TypedCache::new(cache, codec);
    carts.set("from-rust", &cart(3)).unwrap();
    let script = format!(
        r#"
        use strict; use warnings; use Cache::FastMmap;
        my $c = Cache::FastMmap->new(share_file => $ARGV[0], num_pages => 3, page_size => 16384,
            {perl_options} init_file => 0, unlink_on_exit => 0);
        my $r = $c->get('from-rust') or die "no from-rust\n";
        die "bad total\n" unless $r->{{total_cents}} == 3 * 1999;
        die "bad items\n" unless $r->{{items}}[2][1] eq "item 2 \x{{2713}}";
        die "bad note\n" if defined $r->{{note}};
        $c->set('from-perl', {{ user => "perl \x{{e9}}", items => [[1, "one"]], total_cents => 5,
            note => "hi" }});
        print "ok\n";
    "#
    );
    let out = Command::new("perl")
        .args(["-e", &script])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout == b"ok\n",
        "perl: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        carts.get("from-perl").unwrap(),
        Some(Cart {
            user: "perl é".into(),
            items: vec![(1, "one".into())],
            total_cents: 5,
            note: Some("hi".into()),
        })
    );
}

/// Perl's `serializer => 'json'` and the `Json` codec read each other's values in one file.
#[test]
fn json_values_cross_over_with_perl() {
    values_cross_over_with_perl(Json, "serializer => 'json',");
}

#[cfg(feature = "perl")]
#[test]
fn storable_round_trips() {
    round_trips(fastmmap::typed::Storable::default());
}

/// A default Perl cache (Storable, `freeze(\$value)`) and the `Storable` codec read each
/// other's values in one file.
#[cfg(feature = "perl")]
#[test]
fn storable_values_cross_over_with_perl() {
    values_cross_over_with_perl(fastmmap::typed::Storable::default(), "");
}
