//! Reference images made by Perl 5.36's Storable 3.26 (the Perl expression that made each is
//! beside it), property tests of the codec and the serde bridge, and hostile input.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use crate::perl::number::{nv_as_iv, nv_to_string};
use crate::perl::storable::{self, freeze, from_slice, nfreeze, thaw, to_vec, to_vec_network};
use crate::perl::{
    Compressor, Error, HashKey, Hook, HookKind, PerlData, PerlFormat, PerlRef, PerlValue,
    Serializer, Sv, SvId,
};

fn unhex(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

/// The native header of a 64-bit little-endian Perl (x86_64).
const NATIVE: &str = "040b0831323334353637380408080808";
/// The header of `nfreeze`.
const NET: &str = "050b";

fn native(body: &str) -> Vec<u8> {
    unhex(&format!("{}{body}", &NATIVE[..NATIVE.len() - 2]))
}

fn net(body: &str) -> Vec<u8> {
    unhex(&format!("{NET}{body}"))
}

fn root(data: &PerlData) -> &PerlValue {
    &data[data.root()].value
}

/// The value a reference (or chain of them) at `id` leads to.
fn target(data: &PerlData, id: SvId) -> &Sv {
    &data[data.deref(id).unwrap()]
}

// ---------------------------------------------------------------------------------------------
// What Perl writes

/// (Perl expression, image): scalars, as `freeze(\$x)` / `nfreeze(\$x)` write them.
fn perl_scalars() -> Vec<(&'static str, Vec<u8>, PerlValue)> {
    vec![
        ("freeze(\\undef)", native("0e"), PerlValue::Undef),
        ("my $u; freeze(\\$u)", native("05"), PerlValue::Undef),
        ("freeze(\\42)", native("08aa"), PerlValue::Int(42)),
        (
            "freeze(\\1000)",
            native("06e803000000000000"),
            PerlValue::Int(1000),
        ),
        ("nfreeze(\\1000)", net("09000003e8"), PerlValue::Int(1000)),
        ("nfreeze(\\-5000)", net("09ffffec78"), PerlValue::Int(-5000)),
        (
            "nfreeze(\\(2**40))",
            net("0a0d31303939353131363237373736"),
            PerlValue::Bytes(b"1099511627776".to_vec()),
        ),
        (
            "freeze(\\18446744073709551615)",
            native("0a143138343436373434303733373039353531363135"),
            PerlValue::Bytes(b"18446744073709551615".to_vec()),
        ),
        ("freeze(\\!!1)", native("0f"), PerlValue::Bool(true)),
        (
            "freeze(\\1.5)",
            native("07000000000000f83f"),
            PerlValue::Num(1.5),
        ),
        (
            "nfreeze(\\1.5)",
            net("0a03312e35"),
            PerlValue::Bytes(b"1.5".to_vec()),
        ),
        ("nfreeze(\\2.0)", net("0882"), PerlValue::Int(2)),
        (
            "freeze(\\\"abc\")",
            native("0a03616263"),
            PerlValue::Bytes(b"abc".to_vec()),
        ),
        (
            "freeze(\\\"\\x{263a}\")",
            native("1703e298ba"),
            PerlValue::Str("\u{263a}".into()),
        ),
    ]
}

#[test]
fn reads_perls_scalars_and_writes_them_back_byte_for_byte() {
    for (perl, image, expected) in perl_scalars() {
        let data = thaw(&image).unwrap_or_else(|e| panic!("{perl}: {e}"));
        assert_eq!(root(&data), &expected, "{perl}");
        let again = if image[0] == 5 {
            nfreeze(&data)
        } else {
            freeze(&data)
        }
        .unwrap();
        // Perl's immortal undef is written back as a plain undef.
        if perl != "freeze(\\undef)" {
            assert_eq!(again, image, "{perl}");
        }
    }
}

/// Hostile images of containers nested six bytes a level, each declaring about the rest of
/// the image as its count (which each passes alone): decoding fails at the end, as it must,
/// without first reserving room for every declared count at every level (memory quadratic in
/// the image: a 1 MiB image asked for terabytes, and the allocation failure aborted the
/// process).
#[test]
fn nested_declared_counts_reserve_no_more_than_the_image_holds() {
    let nested = |tag: u8, per_item: usize| {
        let total = 1 << 20;
        let mut image = vec![0x05, 0x0b];
        while image.len() + 5 + 6 + 8 <= total {
            let n = (total - image.len() - 5) / per_item;
            image.push(tag);
            image.extend_from_slice(&(n as u32).to_be_bytes());
            image.push(4); // SX_REF: the first item is a reference to the next level.
        }
        image.resize(total, 0x0e); // SX_SV_UNDEF
        image
    };
    for (what, image) in [("hashes", nested(3, 5)), ("arrays", nested(2, 1))] {
        assert!(thaw(&image).is_err(), "{what}: a malformed image decoded");
    }
}

#[test]
fn reads_perls_containers() {
    // freeze({ a => 1 })
    let image = native("030100000008810100000061");
    let data = thaw(&image).unwrap();
    let PerlValue::Hash(entries) = root(&data) else {
        panic!("{data:?}")
    };
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, HashKey::Bytes(b"a".to_vec()));
    assert_eq!(data[entries[0].1].value, PerlValue::Int(1));
    assert_eq!(freeze(&data).unwrap(), image);

    // freeze(\{ a => 1 }): Cache::FastMmap's form, a reference at the root.
    let image = native("04030100000008810100000061");
    let data = thaw(&image).unwrap();
    assert!(matches!(root(&data), PerlValue::Ref(_)));
    assert_eq!(
        storable::from_slice::<HashMap<String, i32>>(&image).unwrap()["a"],
        1
    );

    // freeze({ "\x{263a}" => 1, "\x{e9}" => 2 }): a flagged hash, a byte key and a UTF-8 key.
    let image = native("19000200000008820001000000e908810103000000e298ba");
    let data = thaw(&image).unwrap();
    let PerlValue::Hash(entries) = root(&data) else {
        panic!()
    };
    assert_eq!(entries[0].0, HashKey::Bytes(vec![0xe9]));
    assert_eq!(entries[1].0, HashKey::Str("\u{263a}".into()));
    assert_eq!(freeze(&data).unwrap(), image);

    // my $k = "\x{e9}"; utf8::upgrade($k); freeze({ $k => 1 }): stored as Latin-1, WASUTF8.
    let image = native("19000100000008810201000000e9");
    let data = thaw(&image).unwrap();
    let PerlValue::Hash(entries) = root(&data) else {
        panic!()
    };
    assert_eq!(entries[0].0, HashKey::Str("é".into()));
    assert_eq!(freeze(&data).unwrap(), image);

    // my %h; my $k = ""; utf8::upgrade($k); $h{$k} = 1; $h{""} = 2; freeze(\%h): Perl keeps
    // the hash flagged after the key was stored again as bytes. Written back unflagged: the
    // same hash to Perl.
    let image = native("19000100000008820000000000");
    let data = thaw(&image).unwrap();
    let PerlValue::Hash(entries) = root(&data) else {
        panic!()
    };
    assert_eq!(entries[0].0, HashKey::Bytes(vec![]));
    assert_eq!(freeze(&data).unwrap(), native("0301000000088200000000"));

    // freeze([!!1, !!0]): copies of Perl's booleans are the strings "1" and "".
    let data = thaw(&native("02020000000a01310a00")).unwrap();
    assert_eq!(
        storable::from_data::<Vec<bool>>(&data).unwrap(),
        [true, false]
    );
}

#[test]
fn reads_shared_references_and_writes_them_shared() {
    // my $a = [1]; freeze([$a, $a])
    let image = native("02020000000402010000000881040000000002");
    let data = thaw(&image).unwrap();
    let PerlValue::Array(items) = root(&data) else {
        panic!()
    };
    let (PerlValue::Ref(x), PerlValue::Ref(y)) = (&data[items[0]].value, &data[items[1]].value)
    else {
        panic!("{data:?}")
    };
    assert_eq!(x.target, y.target, "both refer to the one array");
    assert_eq!(freeze(&data).unwrap(), image);

    // my @a = (1); freeze([\$a[0], \@a]): an element that is also referred to.
    let image = native("02020000000408810402010000000000000002");
    let data = thaw(&image).unwrap();
    let PerlValue::Array(items) = root(&data) else {
        panic!()
    };
    let PerlValue::Ref(scalar_ref) = data[items[0]].value else {
        panic!()
    };
    let PerlValue::Array(inner) = &target(&data, items[1]).value else {
        panic!()
    };
    assert_eq!(
        inner[0], scalar_ref.target,
        "the element is the scalar referred to"
    );
    assert_eq!(freeze(&data).unwrap(), image);
}

#[test]
fn reads_cycles_and_weak_references() {
    // my $p = { name => 'p' }; my $c = { parent => $p }; $p->{child} = $c;
    // weaken($c->{parent}); freeze($c)
    let image = native(concat!(
        "03010000001b03020000000400000000",
        "00050000006368696c640a0170040000",
        "006e616d6506000000706172656e74"
    ));
    let data = thaw(&image).unwrap();
    let parent = data.hash_get(data.root(), "parent").unwrap();
    let PerlValue::Ref(weak) = data[parent].value else {
        panic!()
    };
    assert!(weak.weak);
    let child = data.hash_get(weak.target, "child").unwrap();
    let PerlValue::Ref(back) = data[child].value else {
        panic!()
    };
    assert_eq!(
        back.target,
        data.root(),
        "the child refers back to the root"
    );
    assert_eq!(freeze(&data).unwrap(), image);
    assert!(matches!(
        storable::from_data::<serde_json::Value>(&data),
        Err(Error::Cyclic)
    ));
}

#[test]
fn reads_blessed_values_and_the_class_table() {
    // freeze([bless({}, 'Foo'), bless([], 'Foo')])
    let image = native("0202000000041103466f6f03000000000412000200000000");
    let data = thaw(&image).unwrap();
    let PerlValue::Array(items) = root(&data) else {
        panic!()
    };
    for &item in items {
        assert_eq!(target(&data, item).class.as_deref(), Some("Foo"));
    }
    assert_eq!(freeze(&data).unwrap(), image, "the second Foo by index");

    // freeze([JSON::PP::true]): an object of a class with overloading.
    let image = native("02010000001411114a534f4e3a3a50503a3a426f6f6c65616e0881");
    let data = thaw(&image).unwrap();
    let PerlValue::Array(items) = root(&data) else {
        panic!()
    };
    let PerlValue::Ref(r) = data[items[0]].value else {
        panic!()
    };
    assert!(r.overloaded);
    assert_eq!(data[r.target].class.as_deref(), Some("JSON::PP::Boolean"));
    assert_eq!(freeze(&data).unwrap(), image);
    assert_eq!(storable::from_data::<Vec<bool>>(&data).unwrap(), [true]);
}

#[test]
fn reads_hook_objects_and_writes_them_back_byte_for_byte() {
    // package Hooked::Refs { sub STORABLE_freeze { ("n", $_[0]{list}, \\$_[0]{count}, $_[0]) } }
    // my $shared = [1];
    // nfreeze([$shared, bless({ list => $shared, count => 5 }, 'Hooked::Refs'),
    //          bless({ list => $shared, count => 6 }, 'Hooked::Refs')])
    let image = unhex(concat!(
        "050b0200000003",
        "0402000000010881",
        // SX_REF, SX_HOOK, flags NEED_RECURSE | hash, the count (not stored yet), then flags
        // HAS_LIST | hash, the class, the string, and object numbers 2 (the shared array),
        // 6 (the count) and 5 (the object itself).
        "0413420885",
        "820c486f6f6b65643a3a52656673016e03000000020000000600000005",
        // The second object: its class by index (IDX_CLASSNAME).
        "0413420886a200016e03000000020000000900000008",
    ));
    let data = thaw(&image).unwrap();
    let PerlValue::Array(items) = root(&data) else {
        panic!("{data:?}")
    };
    let shared = target(&data, items[0]);
    assert_eq!(
        shared.value,
        PerlValue::Array(vec![SvId::from_index(3).unwrap()])
    );
    for (item, count) in [(items[1], 5), (items[2], 6)] {
        let PerlValue::Ref(r) = data[item].value else {
            panic!()
        };
        let object = &data[r.target];
        assert_eq!(object.class.as_deref(), Some("Hooked::Refs"));
        let PerlValue::Hook(hook) = &object.value else {
            panic!("{object:?}")
        };
        assert_eq!((hook.kind, &hook.frozen[..]), (HookKind::Hash, &b"n"[..]));
        assert_eq!(
            hook.refs[0],
            SvId::from_index(2).unwrap(),
            "the shared array"
        );
        assert_eq!(data[hook.refs[1]].value, PerlValue::Int(count));
        assert_eq!(hook.refs[2], r.target, "the object itself");
    }
    assert_eq!(nfreeze(&data).unwrap(), image);
    // Natively frozen and read again: the same data.
    assert_eq!(thaw(&freeze(&data).unwrap()).unwrap(), data);
    // Through serde: the class and the string.
    let json: serde_json::Value = storable::from_data(&data).unwrap();
    assert_eq!(
        json[1],
        serde_json::json!({"class": "Hooked::Refs", "frozen": "n"})
    );

    // A hash, an array and a scalar object whose hook returns only a string:
    // nfreeze([bless({}, 'Hooked'), bless([], 'Hooked'), bless(\\(my $s = 1), 'Hooked')])
    let image = unhex("050b020000000304130206486f6f6b65640178041321000178041320000178");
    let data = thaw(&image).unwrap();
    let PerlValue::Array(items) = root(&data) else {
        panic!()
    };
    let kinds: Vec<HookKind> = items
        .iter()
        .map(|&i| match &target(&data, i).value {
            PerlValue::Hook(h) => h.kind,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, [HookKind::Hash, HookKind::Array, HookKind::Scalar]);
    assert_eq!(nfreeze(&data).unwrap(), image);
}

#[test]
fn reads_the_hook_forms_for_huge_objects() {
    // 64-bit object numbers (a negative list count): an object whose list names itself.
    let image = net("139201460178ffffffff0000000000000000");
    let data = thaw(&image).unwrap();
    let PerlValue::Hook(hook) = &data[data.root()].value else {
        panic!("{data:?}")
    };
    assert_eq!(hook.refs, [data.root()]);
    assert_eq!(data[data.root()].class.as_deref(), Some("F"));
    // Written back with 32-bit numbers, as Perl writes them below 2^32 values.
    assert_eq!(nfreeze(&data).unwrap(), net("1382014601780100000000"));
    // A frozen string with a 64-bit length (SX_LOBJECT before SX_HOOK).
    let data = thaw(&net("2113020146000000000000000178")).unwrap();
    let PerlValue::Hook(hook) = &data[data.root()].value else {
        panic!("{data:?}")
    };
    assert_eq!((hook.kind, &hook.frozen[..]), (HookKind::Hash, &b"x"[..]));
    assert_eq!(nfreeze(&data).unwrap(), net("130201460178"));
}

#[test]
fn hook_objects_built_in_rust_are_checked_when_frozen() {
    let mut data = PerlData::new(PerlValue::Hook(Hook::new(HookKind::Hash, vec![], vec![])));
    assert!(
        matches!(freeze(&data), Err(Error::InvalidData(_))),
        "no class"
    );
    data.get_mut(data.root()).unwrap().class = Some("Foo".into());
    let image = freeze(&data).unwrap();
    assert_eq!(thaw(&image).unwrap(), data);
    data.get_mut(data.root()).unwrap().value = PerlValue::Hook(Hook::new(
        HookKind::Hash,
        vec![],
        vec![SvId::from_index(7).unwrap()],
    ));
    assert!(
        matches!(freeze(&data), Err(Error::InvalidData(_))),
        "a referred value that is not there"
    );
}

#[test]
fn reads_images_of_other_byte_orders_and_integer_sizes() {
    // A big-endian 64-bit Perl: freeze([1000, 1.5]).
    let be64 = unhex(concat!(
        "040b08383736353433323104080808",
        "0200000002",
        "0600000000000003e8",
        "073ff8000000000000"
    ));
    let data = thaw(&be64).unwrap();
    assert_eq!(
        storable::from_data::<(i64, f64)>(&data).unwrap(),
        (1000, 1.5)
    );
    // A 32-bit little-endian Perl with 32-bit IVs: freeze([-1000]).
    let le32 = unhex("040b04313233340404040802010000000618fcffff");
    assert_eq!(storable::from_slice::<Vec<i64>>(&le32).unwrap(), [-1000]);
    // Written back, they are native images of this machine, with the same data.
    assert_eq!(thaw(&freeze(&data).unwrap()).unwrap(), data);
}

#[test]
fn refuses_what_it_does_not_read() {
    for (perl, image) in [
        ("freeze(\\v1.2.3)", native("1d0676312e322e330a03010203")),
        (
            "freeze(bless \\%tied, 'Hooked') with STORABLE_freeze",
            native("130306"),
        ),
        ("a code reference", native("1a0a0373756200")),
        ("a tied hash", native("0c0300000000")),
        ("a restricted hash", native("19010000000000")),
        ("long doubles", unhex("040b083132333435363738040808100a00")),
        ("binary major 1", unhex("020b0a00")),
    ] {
        match thaw(&image) {
            Err(Error::Unsupported { .. }) => {}
            other => panic!("{perl}: {other:?}"),
        }
    }
}

#[test]
fn refuses_malformed_images() {
    for (what, image) in [
        ("empty", vec![]),
        ("header only", unhex("050b")),
        ("truncated string", net("0a0561")),
        ("array longer than the image", net("02ffffff00")),
        ("negative length", net("01ffffffff")),
        ("back-reference forward", net("020100000000000005")),
        ("back-reference as root", net("0000000000")),
        ("bad UTF-8", net("1702c328")),
        ("unknown marker", net("63")),
        ("bytes after the end", net("088000")),
        ("a key twice", net("03020000000880000000016108810000000161")),
        ("array inside array", net("02010000000200000000")),
        ("class index never named", net("12050880")),
        ("bless of a back-reference", net("041101410000000000")),
        ("hook class index never named", net("1322050178")),
        (
            "hook list naming a value not read",
            net("1382014601780100000009"),
        ),
        ("hook after a bless marker", net("110146130201460178")),
        (
            "hook array stored as an element",
            net("0201000000130101460178"),
        ),
        ("hook cut short in its recursion", net("1342")),
        (
            "hook list longer than the image",
            net("1392014601787fffffff"),
        ),
    ] {
        match thaw(&image) {
            Err(Error::Malformed { .. }) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn a_deep_image_costs_no_stack() {
    // 1_000_000 nested array references: \[\[\[...]]]
    let depth = 1_000_000;
    let mut image = unhex(NET);
    for _ in 0..depth {
        image.extend_from_slice(&unhex("040200000001"));
    }
    image.extend_from_slice(&unhex("05"));
    let data = std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || {
            let data = thaw(&image).unwrap();
            assert_eq!(nfreeze(&data).unwrap(), image);
            assert!(data == data.clone());
            data
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(matches!(
        storable::from_data::<serde_json::Value>(&data),
        Err(Error::TooDeep { .. })
    ));
}

#[test]
fn deserializing_nests_to_the_limit_within_a_small_stack() {
    // MAX_DEPTH (128) nested arrays into serde_json::Value in a debug build, on a 1 MiB stack.
    let mut v = serde_json::Value::Null;
    for _ in 0..crate::perl::de::MAX_DEPTH {
        v = serde_json::Value::Array(vec![v]);
    }
    let image = to_vec(&v).unwrap();
    std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(move || {
            let back: serde_json::Value = from_slice(&image).unwrap();
            assert_eq!(back, v);
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn shared_values_expanding_exponentially_are_refused() {
    // Each level is an array holding two references to the level below: 2^40 leaves.
    let mut data = PerlData::new(PerlValue::Int(1));
    let mut below = data.root();
    for _ in 0..40 {
        let r = data.push(PerlValue::Ref(PerlRef::to(below)));
        below = data.push(PerlValue::Array(vec![r, r]));
    }
    data.set_root(below);
    let image = freeze(&data).unwrap();
    assert!(image.len() < 1000);
    assert!(matches!(
        from_slice::<serde_json::Value>(&image),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn a_large_string_shared_exponentially_is_refused_before_it_is_copied() {
    // A 60 KB string behind 30 levels of doubling: 2^30 copies, 64 TB as a tree.
    let mut data = PerlData::new(PerlValue::Bytes(vec![b'x'; 60_000]));
    let mut below = data.root();
    for _ in 0..30 {
        let r = data.push(PerlValue::Ref(PerlRef::to(below)));
        below = data.push(PerlValue::Array(vec![r, r]));
    }
    data.set_root(below);
    let image = freeze(&data).unwrap();
    assert!(matches!(
        from_slice::<serde_json::Value>(&image),
        Err(Error::TooLarge {
            unit: "bytes of strings",
            ..
        })
    ));
    // Hash keys count too: one hash with a 60 KB key, shared the same way.
    let mut data = PerlData::new(PerlValue::Undef);
    let key = HashKey::Bytes(vec![b'k'; 60_000]);
    let mut below = data.push(PerlValue::Hash(vec![(key, data.root())]));
    for _ in 0..30 {
        let r = data.push(PerlValue::Ref(PerlRef::to(below)));
        below = data.push(PerlValue::Array(vec![r, r]));
    }
    data.set_root(below);
    assert!(matches!(
        storable::from_data::<serde_json::Value>(&data),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn many_uses_of_a_long_reference_chain_are_charged() {
    // \\\...\1 (300_000 references), used by 300_000 elements: 9e10 steps to follow.
    let mut data = PerlData::new(PerlValue::Int(1));
    let mut head = data.root();
    for _ in 0..300_000 {
        head = data.push(PerlValue::Ref(PerlRef::to(head)));
    }
    let array = data.push(PerlValue::Array(vec![head; 300_000]));
    data.set_root(array);
    let started = std::time::Instant::now();
    assert!(matches!(
        storable::from_data::<Vec<i32>>(&data),
        Err(Error::TooLarge { unit: "values", .. })
    ));
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // A reference to itself ($x = \$x) is a cycle.
    let mut data = PerlData::new(PerlValue::Undef);
    let me = data.root();
    data.get_mut(me).unwrap().value = PerlValue::Ref(PerlRef::to(me));
    assert!(matches!(
        storable::from_data::<Option<u8>>(&data),
        Err(Error::Cyclic)
    ));
}

#[test]
fn invalid_data_is_refused_when_frozen() {
    let mut data = PerlData::new(PerlValue::Undef);
    let inner = data.push(PerlValue::Array(vec![]));
    let outer = data.push(PerlValue::Array(vec![inner]));
    data.set_root(outer);
    assert!(matches!(freeze(&data), Err(Error::InvalidData(_))));

    // An id from another PerlData.
    let mut other = PerlData::new(PerlValue::Undef);
    let elsewhere = (0..5).map(|_| other.push(PerlValue::Undef)).last().unwrap();
    let mut data = PerlData::new(PerlValue::Undef);
    let dangling = data.push(PerlValue::Ref(PerlRef::to(elsewhere)));
    data.set_root(dangling);
    assert!(matches!(freeze(&data), Err(Error::InvalidData(_))));

    let mut data = PerlData::new(PerlValue::Undef);
    let v = data.root();
    let h = data.push(PerlValue::Hash(vec![
        (HashKey::Bytes(vec![0xe9]), v),
        (HashKey::Str("é".into()), v),
    ]));
    data.set_root(h);
    assert!(matches!(nfreeze(&data), Err(Error::InvalidData(_))));
}

// ---------------------------------------------------------------------------------------------
// Random Perl data

/// A small deterministic generator (xorshift64*), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random Perl data from `seed`: every kind of scalar, nested arrays and hashes, blessed
/// values, hook objects, weak and overloaded references, shared values, aliased elements and
/// cycles.
pub(crate) fn random_data(seed: u64) -> PerlData {
    let mut g = Gen {
        rng: Rng(seed | 1),
        data: PerlData::new(PerlValue::Undef),
        containers: Vec::new(),
        scalars: Vec::new(),
        budget: 200,
    };
    let root = if g.rng.below(3) == 0 {
        g.container(0)
    } else {
        g.scalar(0)
    };
    g.data.set_root(root);
    g.data
}

struct Gen {
    rng: Rng,
    data: PerlData,
    containers: Vec<SvId>,
    scalars: Vec<SvId>,
    budget: usize,
}

impl Gen {
    fn class(&mut self) -> Option<std::sync::Arc<str>> {
        match self.rng.below(8) {
            0 => Some("Foo".into()),
            1 => Some("Bar::Baz".into()),
            2 => Some("L".repeat(200).into()),
            _ => None,
        }
    }

    fn bytes(&mut self) -> Vec<u8> {
        let len = match self.rng.below(10) {
            0 => 256 + self.rng.below(300) as usize,
            _ => self.rng.below(12) as usize,
        };
        (0..len).map(|_| self.rng.next() as u8).collect()
    }

    fn string(&mut self) -> String {
        let len = match self.rng.below(10) {
            0 => 100 + self.rng.below(100) as usize,
            _ => self.rng.below(8) as usize,
        };
        (0..len)
            .map(|_| match self.rng.below(4) {
                0 => char::from(self.rng.below(128) as u8),
                1 => char::from(self.rng.below(256) as u8),
                2 => char::from_u32(0x100 + self.rng.below(0xd000) as u32).unwrap_or('x'),
                _ => char::from_u32(0x1f600 + self.rng.below(80) as u32).unwrap_or('y'),
            })
            .collect()
    }

    fn key(&mut self) -> HashKey {
        match self.rng.below(3) {
            0 => HashKey::Str(self.string()),
            _ => HashKey::Bytes(self.bytes()),
        }
    }

    fn push(&mut self, value: PerlValue) -> SvId {
        let class = self.class();
        self.data.push(Sv { value, class })
    }

    /// A scalar: a new one, an existing one (aliasing), or a reference.
    fn scalar(&mut self, depth: usize) -> SvId {
        self.budget = self.budget.saturating_sub(1);
        let choice = self
            .rng
            .below(if self.budget == 0 || depth > 6 { 7 } else { 12 });
        let value = match choice {
            0 => PerlValue::Undef,
            1 => PerlValue::Bool(self.rng.below(2) == 0),
            2 => PerlValue::Int(match self.rng.below(4) {
                0 => self.rng.below(256) as i64 - 128,
                1 => self.rng.next() as i32 as i64,
                2 => [i64::MIN, i64::MAX, 128, -129, 1 << 53][self.rng.below(5) as usize],
                _ => self.rng.next() as i64,
            }),
            3 => PerlValue::Num(match self.rng.below(4) {
                0 => f64::from_bits(self.rng.next()),
                1 => [f64::NAN, f64::INFINITY, -0.0, 2.0, 1e300][self.rng.below(5) as usize],
                _ => (self.rng.next() as i64) as f64 / 1e6,
            }),
            4 => PerlValue::Bytes(self.bytes()),
            5 => PerlValue::Str(self.string()),
            6 if !self.scalars.is_empty() => {
                let i = self.rng.below(self.scalars.len() as u64) as usize;
                return self.scalars[i];
            }
            6 => PerlValue::Undef,
            _ => {
                let target = match self.rng.below(5) {
                    0 if !self.containers.is_empty() => {
                        let i = self.rng.below(self.containers.len() as u64) as usize;
                        self.containers[i]
                    }
                    1 => self.scalar(depth + 1),
                    2 => self.hook(depth + 1),
                    _ => self.container(depth + 1),
                };
                let r = PerlRef {
                    target,
                    weak: self.rng.below(10) == 0,
                    overloaded: self.rng.below(10) == 0,
                };
                PerlValue::Ref(r)
            }
        };
        let id = self.push(value);
        self.scalars.push(id);
        id
    }

    /// An object frozen by a hook: its string, and references to new values, to values
    /// made before (ancestors too: cycles) and to itself; now and then over 255 of them.
    fn hook(&mut self, depth: usize) -> SvId {
        let kind = [HookKind::Scalar, HookKind::Array, HookKind::Hash][self.rng.below(3) as usize];
        let class: std::sync::Arc<str> = match self.rng.below(4) {
            0 => "Foo".into(),
            1 => "K".repeat(300).into(),
            _ => "Hooked".into(),
        };
        let empty = Hook::new(kind, Vec::new(), Vec::new());
        let id = self.data.push(Sv::blessed(PerlValue::Hook(empty), class));
        if kind != HookKind::Scalar {
            self.containers.push(id);
        }
        let frozen = self.bytes();
        let n = match self.rng.below(30) {
            0 => 256 + self.rng.below(20) as usize,
            _ => self.rng.below(4) as usize,
        };
        let refs = (0..n)
            .map(|_| match self.rng.below(6) {
                0 => id,
                1 if !self.containers.is_empty() => {
                    self.containers[self.rng.below(self.containers.len() as u64) as usize]
                }
                2 if !self.scalars.is_empty() => {
                    self.scalars[self.rng.below(self.scalars.len() as u64) as usize]
                }
                3 if depth < 6 && self.budget > 0 => self.container(depth + 1),
                _ if depth < 6 && self.budget > 0 => self.scalar(depth + 1),
                _ => self.data.push(PerlValue::Int(n as i64)),
            })
            .collect();
        self.data.get_mut(id).unwrap().value = PerlValue::Hook(Hook::new(kind, frozen, refs));
        id
    }

    /// A new array or hash; its elements are scalars.
    fn container(&mut self, depth: usize) -> SvId {
        let is_hash = self.rng.below(2) == 0;
        let id = self.push(if is_hash {
            PerlValue::Hash(vec![])
        } else {
            PerlValue::Array(vec![])
        });
        self.containers.push(id);
        let n = self.rng.below(6) as usize;
        let items: Vec<SvId> = (0..n).map(|_| self.scalar(depth + 1)).collect();
        let value = if is_hash {
            let mut entries: Vec<(HashKey, SvId)> = Vec::new();
            for item in items {
                let key = self.key();
                if !entries
                    .iter()
                    .any(|(k, _)| k.perl_identity() == key.perl_identity())
                {
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

/// What `nfreeze` then `thaw` gives for `data`: doubles that are integers below 2⁵³ become
/// integers, other doubles their strings, integers beyond 32 bits their strings.
fn as_network(data: &PerlData) -> PerlData {
    let mut out = data.clone();
    let ids: Vec<SvId> = out.svs().map(|(id, _)| id).collect();
    for id in ids {
        let sv = out.get_mut(id).unwrap();
        if let PerlValue::Num(x) = sv.value {
            sv.value = match nv_as_iv(x) {
                Some(n) => PerlValue::Int(n),
                None => PerlValue::Bytes(nv_to_string(x).into_bytes()),
            };
        }
        if let PerlValue::Int(n) = sv.value
            && i32::try_from(n).is_err()
        {
            sv.value = PerlValue::Bytes(n.to_string().into_bytes());
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_data_round_trips(seed in any::<u64>()) {
        let data = random_data(seed);
        let image = freeze(&data).unwrap();
        prop_assert_eq!(&thaw(&image).unwrap(), &data);
        // Frozen again, the image is the same bytes.
        prop_assert_eq!(freeze(&thaw(&image).unwrap()).unwrap(), image);
        let image = nfreeze(&data).unwrap();
        prop_assert_eq!(thaw(&image).unwrap(), as_network(&data));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_decoder(&bytes);
        let mut with_header = unhex(NATIVE);
        with_header.pop();
        with_header.extend_from_slice(&bytes);
        check_decoder(&with_header);
        let mut with_header = unhex(NET);
        with_header.extend_from_slice(&bytes);
        check_decoder(&with_header);
    }

    #[test]
    fn damaged_images_never_panic(seed in any::<u64>(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut image = freeze(&random_data(seed)).unwrap();
        for (at, byte) in flips {
            let n = image.len();
            image[at % n] = byte;
        }
        check_decoder(&image);
    }
}

/// What the fuzz target checks: no panic; what decodes re-encodes and decodes the same.
fn check_decoder(bytes: &[u8]) {
    if let Ok(data) = thaw(bytes) {
        let again = thaw(&freeze(&data).unwrap()).unwrap();
        assert_eq!(again, data);
        let _ = storable::from_data::<serde_json::Value>(&data);
    }
    for c in [Compressor::Zlib, Compressor::Lz4, Compressor::Snappy] {
        let _ = c.decompress(bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Rust types

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Order {
    id: u64,
    customer: String,
    total: f64,
    paid: bool,
    note: Option<String>,
    lines: Vec<Line>,
    tags: BTreeMap<String, i32>,
    by_number: BTreeMap<u32, String>,
    status: Status,
    raw: serde_bytes_like::Bytes,
    pair: (i8, char),
    nothing: (),
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Line {
    sku: String,
    qty: u16,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Status {
    Open,
    Shipped { carrier: String },
    Returned(u32),
    Split(u8, u8),
}

/// A byte buffer serialized with `serialize_bytes` (what serde_bytes does), without the crate.
mod serde_bytes_like {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Debug, PartialEq, Clone)]
    pub struct Bytes(pub Vec<u8>);

    impl Serialize for Bytes {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for Bytes {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Bytes;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                    Ok(Bytes(v.to_vec()))
                }
                // JSON has no bytes: serde_json writes them as an array of numbers.
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<Bytes, A::Error> {
                    let mut out = Vec::new();
                    while let Some(b) = seq.next_element()? {
                        out.push(b);
                    }
                    Ok(Bytes(out))
                }
            }
            d.deserialize_bytes(V)
        }
    }
}

fn status() -> impl Strategy<Value = Status> {
    prop_oneof![
        Just(Status::Open),
        ".{0,12}".prop_map(|carrier| Status::Shipped { carrier }),
        any::<u32>().prop_map(Status::Returned),
        (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Status::Split(a, b)),
    ]
}

prop_compose! {
    fn order()(
        id in any::<u64>(),
        customer in ".{0,20}",
        total in any::<f64>().prop_filter("NaN is not equal to itself", |x| !x.is_nan()),
        paid in any::<bool>(),
        note in proptest::option::of(".{0,10}"),
        lines in proptest::collection::vec((".{0,8}", any::<u16>()), 0..4),
        tags in proptest::collection::btree_map(".{0,6}", any::<i32>(), 0..4),
        by_number in proptest::collection::btree_map(any::<u32>(), ".{0,6}", 0..4),
        status in status(),
        raw in proptest::collection::vec(any::<u8>(), 0..300),
        pair in (any::<i8>(), any::<char>()),
    ) -> Order {
        Order {
            id, customer, total, paid, note,
            lines: lines.into_iter().map(|(sku, qty)| Line { sku, qty }).collect(),
            tags, by_number, status,
            raw: serde_bytes_like::Bytes(raw),
            pair,
            nothing: (),
        }
    }
}

const FORMATS: [PerlFormat; 8] = [
    PerlFormat::new(Serializer::Storable, Compressor::None),
    PerlFormat::new(Serializer::Storable, Compressor::Zlib),
    PerlFormat::new(Serializer::Storable, Compressor::Lz4),
    PerlFormat::new(Serializer::Storable, Compressor::Snappy),
    PerlFormat::new(Serializer::Json, Compressor::None),
    PerlFormat::new(Serializer::Json, Compressor::Zlib),
    PerlFormat::new(Serializer::Json, Compressor::Lz4),
    PerlFormat::new(Serializer::Json, Compressor::Snappy),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn rust_values_round_trip(order in order()) {
        prop_assert_eq!(&from_slice::<Order>(&to_vec(&order).unwrap()).unwrap(), &order);
        // nfreeze writes big numbers as strings; they read back as the same numbers, except
        // doubles, which keep Perl's 15 significant digits.
        let net: Order = from_slice(&to_vec_network(&order).unwrap()).unwrap();
        // (A double that is an integer below 2^53 is written as that integer, exactly.)
        let parsed: f64 = match nv_as_iv(order.total) {
            Some(n) => n as f64,
            None => nv_to_string(order.total).parse().unwrap(),
        };
        prop_assert_eq!(net.total.to_bits(), parsed.to_bits());
        prop_assert_eq!(&Order { total: order.total, ..net }, &order);
        for format in FORMATS {
            if format.serializer == Serializer::Json && !order.total.is_finite() {
                continue; // JSON has no infinities
            }
            let stored = format.encode(&order).unwrap();
            let mut back: Order = format.decode(&stored).unwrap();
            if format.serializer == Serializer::Json {
                // serde_json parses floats closely, not always exactly (no float_roundtrip).
                let error = (back.total - order.total).abs();
                prop_assert!(error <= order.total.abs() * 1e-12 + 1e-300, "{} vs {}", back.total, order.total);
                back.total = order.total;
            }
            prop_assert_eq!(&back, &order, "{:?}", format);
        }
    }

    #[test]
    fn numbers_in_strings_read_as_numbers(n in any::<i64>(), u in any::<u64>(), x in any::<f64>()) {
        let data = PerlData::new(PerlValue::Bytes(n.to_string().into_bytes()));
        prop_assert_eq!(storable::from_data::<i64>(&data).unwrap(), n);
        let data = PerlData::new(PerlValue::Bytes(u.to_string().into_bytes()));
        prop_assert_eq!(storable::from_data::<u64>(&data).unwrap(), u);
        let data = PerlData::new(PerlValue::Bytes(nv_to_string(x).into_bytes()));
        let back = storable::from_data::<f64>(&data).unwrap();
        prop_assert!(back.is_nan() == x.is_nan());
        let data = PerlData::new(PerlValue::Num(x));
        prop_assert_eq!(storable::from_data::<String>(&data).unwrap(), nv_to_string(x));
    }
}

#[test]
fn perl_values_read_into_rust_types_as_perl_sees_them() {
    let one = |v: PerlValue| PerlData::new(v);
    // Truth.
    for (v, truth) in [
        (PerlValue::Undef, false),
        (PerlValue::Bytes(b"0".to_vec()), false),
        (PerlValue::Bytes(vec![]), false),
        (PerlValue::Bytes(b"0.0".to_vec()), true),
        (PerlValue::Int(0), false),
        (PerlValue::Num(0.5), true),
        (PerlValue::Str("x".into()), true),
    ] {
        assert_eq!(
            storable::from_data::<bool>(&one(v.clone())).unwrap(),
            truth,
            "{v:?}"
        );
    }
    // Latin-1 bytes that are not UTF-8 read as Latin-1 text; UTF-8 bytes as UTF-8.
    assert_eq!(
        storable::from_data::<String>(&one(PerlValue::Bytes(vec![0x63, 0x61, 0x66, 0xe9])))
            .unwrap(),
        "café"
    );
    assert_eq!(
        storable::from_data::<String>(&one(PerlValue::Bytes("café".as_bytes().to_vec()))).unwrap(),
        "café"
    );
    // Integral doubles read as integers; others do not.
    assert_eq!(
        storable::from_data::<u8>(&one(PerlValue::Num(3.0))).unwrap(),
        3
    );
    assert!(storable::from_data::<u8>(&one(PerlValue::Num(3.5))).is_err());
    assert!(storable::from_data::<i64>(&one(PerlValue::Bytes(b"12abc".to_vec()))).is_err());
    // undef is None, and an error for a plain type.
    assert_eq!(
        storable::from_data::<Option<u8>>(&one(PerlValue::Undef)).unwrap(),
        None
    );
    assert!(matches!(
        storable::from_data::<u8>(&one(PerlValue::Undef)),
        Err(Error::Data(_))
    ));
    // Leftover elements are an error, as serde_json makes them one.
    let image = to_vec(&[1, 2, 3]).unwrap();
    assert!(from_slice::<(i32, i32)>(&image).is_err());
    // A blessed hash reads as a struct; the class is not part of the Rust value.
    let mut data = PerlData::new(PerlValue::Undef);
    let sku = data.push(PerlValue::string("A-1"));
    let qty = data.push(PerlValue::Int(2));
    let obj = data.push(Sv::blessed(
        PerlValue::Hash(vec![("sku".into(), sku), ("qty".into(), qty)]),
        "Shop::Line",
    ));
    let r = data.push(PerlValue::Ref(PerlRef::to(obj)));
    data.set_root(r);
    let line: Line = storable::from_data(&data).unwrap();
    assert_eq!(
        line,
        Line {
            sku: "A-1".into(),
            qty: 2
        }
    );
}

#[test]
fn rust_values_are_written_as_perl_would_hold_them() {
    let data = storable::to_data(&Line {
        sku: "né".into(),
        qty: 5,
    })
    .unwrap();
    let PerlValue::Hash(entries) = root(&data) else {
        panic!("a struct is a hash at the root: {data:?}")
    };
    assert_eq!(entries[0].0, HashKey::Bytes(b"sku".to_vec()));
    assert_eq!(data[entries[0].1].value, PerlValue::Str("né".into()));
    assert_eq!(data[entries[1].1].value, PerlValue::Int(5));
    // Cache::FastMmap's form: a reference to the hash at the root.
    let data = storable::to_scalar_data(&Line {
        sku: "a".into(),
        qty: 1,
    })
    .unwrap();
    assert!(matches!(root(&data), PerlValue::Ref(_)));
    // Scalars: the same either way; bools are 1 and 0; big u64 a decimal string.
    assert_eq!(root(&storable::to_data(&true).unwrap()), &PerlValue::Int(1));
    assert_eq!(
        root(&storable::to_data(&u64::MAX).unwrap()),
        &PerlValue::Bytes(b"18446744073709551615".to_vec())
    );
    assert_eq!(
        root(&storable::to_data(&None::<u8>).unwrap()),
        &PerlValue::Undef
    );
    assert_eq!(
        to_vec(&42u8).unwrap(),
        native("08aa"),
        "as Perl's freeze(\\42)"
    );
    // Map keys must be strings or integers.
    assert!(matches!(
        to_vec(&HashMap::from([((1, 2), 3)])),
        Err(Error::Data(_))
    ));
}

#[test]
fn raw_values_are_scalars() {
    let raw = PerlFormat::new(Serializer::Raw, Compressor::None);
    assert_eq!(raw.encode("abc").unwrap(), b"abc");
    assert_eq!(raw.encode(&12).unwrap(), b"12");
    assert_eq!(raw.encode(&0.5).unwrap(), b"0.5");
    assert_eq!(raw.decode::<u32>(b"12").unwrap(), 12);
    assert!(matches!(raw.encode(&vec![1]), Err(Error::Data(_))));
    let raw_lz4 = PerlFormat::new(Serializer::Raw, Compressor::Lz4);
    assert_eq!(
        raw_lz4
            .decode::<String>(&raw_lz4.encode("héllo").unwrap())
            .unwrap(),
        "héllo"
    );
}
