//! Target `storable`: arbitrary bytes as a Storable image, and as compressed Cache::FastMmap
//! values (`fastmmap::perl`).
//!
//! The input is decoded four ways: as it is, after a native (`freeze`) header, after a network
//! (`nfreeze`) header, and decompressed by each compressor. Properties checked:
//! - nothing panics, whatever the bytes (no panic, no overflow, no unbounded allocation);
//! - what thaws freezes, and the image thaws back to equal data (sharing included) that
//!   freezes to the same bytes; the same for `nfreeze` (whose number conversions are applied
//!   once: its image is stable from then on);
//! - deserializing the data into `serde_json::Value` and into a typed struct never panics,
//!   and a value that deserializes serializes again;
//! - the compressors either decode or refuse, and what they decode compresses and decodes back.

use fastmmap::perl::storable::{freeze, from_data, nfreeze, thaw, to_vec};
use fastmmap::perl::{Compressor, Error, PerlData};

use crate::common::events::{Event, note};

/// The header of `freeze` on a 64-bit little-endian Perl, and of `nfreeze`.
const NATIVE_HEADER: &[u8] = b"\x04\x0b\x0812345678\x04\x08\x08\x08";
const NETWORK_HEADER: &[u8] = b"\x05\x0b";

const COMPRESSORS: [Compressor; 3] = [Compressor::Zlib, Compressor::Lz4, Compressor::Snappy];

/// A typed target for the serde bridge.
#[derive(serde::Deserialize, serde::Serialize, Debug)]
struct Typed {
    id: Option<u64>,
    name: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    nested: Option<Box<Typed>>,
}

pub fn run(data: &[u8]) {
    check_image(data);
    check_image(&[NATIVE_HEADER, data].concat());
    check_image(&[NETWORK_HEADER, data].concat());
    for c in COMPRESSORS {
        if let Ok(plain) = c.decompress(data) {
            note(Event::decompressed);
            let again = c.compress(&plain).expect("what decompressed compresses");
            assert_eq!(
                c.decompress(&again).expect("own output decompresses"),
                plain
            );
            check_image(&plain);
        }
    }
}

fn check_image(image: &[u8]) {
    let data = match thaw(image) {
        Ok(data) => data,
        Err(Error::Malformed { .. }) => return note(Event::thaw_malformed),
        Err(Error::Unsupported { .. }) => return note(Event::thaw_unsupported),
        Err(e) => panic!("thaw can only fail as malformed or unsupported: {e:?}"),
    };
    note(Event::thaw_ok);
    let frozen = freeze(&data).expect("thawed data freezes");
    let again = thaw(&frozen).expect("a frozen image thaws");
    assert!(again == data, "freeze then thaw changed the data");
    assert_eq!(freeze(&again).unwrap(), frozen, "freezing is not stable");

    let net = nfreeze(&data).expect("thawed data nfreezes");
    let net_data = thaw(&net).expect("an nfrozen image thaws");
    assert_eq!(nfreeze(&net_data).unwrap(), net, "nfreezing is not stable");

    check_serde(&data);
}

fn check_serde(data: &PerlData) {
    match from_data::<serde_json::Value>(data) {
        Ok(value) => {
            note(Event::deserialized);
            to_vec(&value).expect("a deserialized value serializes");
        }
        Err(_) => note(Event::deserialize_refused),
    }
    if let Ok(typed) = from_data::<Typed>(data) {
        note(Event::deserialized_typed);
        to_vec(&typed).expect("a deserialized value serializes");
    }
}

pub fn describe(data: &[u8]) -> String {
    let mut out = format!("{} bytes\n", data.len());
    for (name, image) in [
        ("as is", data.to_vec()),
        ("after a native header", [NATIVE_HEADER, data].concat()),
        ("after a network header", [NETWORK_HEADER, data].concat()),
    ] {
        match thaw(&image) {
            Ok(d) => out.push_str(&format!("{name}: {d:?}\n")),
            Err(e) => out.push_str(&format!("{name}: {e}\n")),
        }
    }
    for c in COMPRESSORS {
        match c.decompress(data) {
            Ok(plain) => out.push_str(&format!("{c}: {} bytes\n", plain.len())),
            Err(e) => out.push_str(&format!("{c}: {e}\n")),
        }
    }
    out
}
