//! Replays every input saved under `fuzz/regressions/<target>/` and `fuzz/seeds/<target>/`
//! (and, with `FUZZ_REPLAY_CORPUS=1`, the local corpora under `fuzz/corpus/<target>/`)
//! through the targets' logic: `cargo test --manifest-path fuzz/Cargo.toml`. Runs on stable;
//! no cargo-fuzz needed.

use std::path::Path;

use fastmmap::page::consts::*;
use fastmmap::page::{Evict, NewEntry, PageMut, PageView, StoreOutcome};

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = std::env::var_os("FUZZ_REPLAY_CORPUS").is_some();
    let mut n = 0;
    let mut failed = Vec::new();
    for dir in ["regressions", "seeds", "corpus"] {
        if dir == "corpus" && !corpus {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut files: Vec<_> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
        files.sort();
        for path in files.into_iter().filter(|p| p.is_file()) {
            let data = std::fs::read(&path).unwrap();
            n += 1;
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    eprintln!("{target}: replayed {n} inputs");
    assert!(failed.is_empty(), "{target}: failing inputs: {failed:#?}");
}

#[test]
fn page_bytes() {
    replay("page_bytes", fastmmap_fuzz::page_bytes::run);
}

#[test]
fn page_model() {
    replay("page_model", fastmmap_fuzz::page_model::run);
}

#[test]
fn overflow_bytes() {
    replay("overflow_bytes", fastmmap_fuzz::overflow_bytes::run);
}

/// `seeds/storable/` holds images made by Perl 5.36 (tests/perl/values.pl `cases`, `hooks`,
/// `refused` and `gen 1 40`, and a cached value compressed by each compressor's module).
#[test]
fn storable() {
    replay("storable", fastmmap_fuzz::storable::run);
}

// Bugs the fuzzers found, written out against the page API so that they outlive changes to
// the targets' input encoding.

/// `regressions/page_bytes/evict-free-data-below-slot-table`: `evict` on a page (wrapped
/// without a check) whose `free_data` lies below the end of the slot table computed
/// `data_end - data_start` unchecked: overflow panic with overflow checks on.
#[test]
fn evict_with_free_data_below_the_slot_table() {
    for mode in [Evict::Expired, Evict::All, Evict::MakeRoom(4000)] {
        let mut buf = vec![0u8; 4096];
        PageMut::init(&mut buf, MIN_SLOTS);
        buf[FREE_DATA_OFFSET..][..4].copy_from_slice(&8u32.to_ne_bytes());
        let _ = PageMut::wrap(&mut buf).evict(mode, 0, MIN_SLOTS);
    }
    // The same through `store`, which evicts first.
    let mut buf = vec![0u8; 4096];
    PageMut::init(&mut buf, MIN_SLOTS);
    buf[FREE_DATA_OFFSET..][..4].copy_from_slice(&8u32.to_ne_bytes());
    buf[FREE_BYTES_OFFSET..][..4].copy_from_slice(&0u32.to_ne_bytes());
    let req = NewEntry {
        slot_hash: 1,
        key: b"k",
        value: b"v",
        expire_on: 0,
        flags: 0,
        modseq: None,
    };
    let _ = PageMut::wrap(&mut buf).store(&req, 0, MIN_SLOTS);
}

/// `regressions/page_bytes/store-free-data-inside-header`: `store` on a page (wrapped without
/// a check) whose `free_data` lies inside the header or slot table, or is misaligned, appended
/// the entry there anyway: it overwrote the header or slots (a slot word of 0 reads as empty)
/// and still returned `Stored`, though the entry could not be read back. A damaged page may
/// refuse the store (`Err`), but `Stored` must mean that a read returns the value.
#[test]
fn store_with_free_data_outside_the_data_area() {
    let table_end = slots_end(MIN_SLOTS).unwrap() as u32;
    for free_data in [0, 4, 100, table_end - 4, table_end + 2] {
        let mut buf = vec![0u8; 4096];
        PageMut::init(&mut buf, MIN_SLOTS);
        buf[FREE_DATA_OFFSET..][..4].copy_from_slice(&free_data.to_ne_bytes());
        let req = NewEntry {
            slot_hash: 7,
            key: b"key",
            value: b"value",
            expire_on: 0,
            flags: 0,
            modseq: None,
        };
        match PageMut::wrap(&mut buf).store(&req, 1, MIN_SLOTS) {
            Ok(StoreOutcome::Stored) => {
                let got = PageView::new(&buf).peek(7, b"key", 1);
                assert!(
                    matches!(got, Ok(Some(e)) if e.value == b"value"),
                    "free_data {free_data}: Stored, then peek gives {got:?}"
                );
            }
            Ok(other) => panic!("free_data {free_data}: {other:?}"),
            Err(_) => {}
        }
    }
}

/// `regressions/page_model/lru-ties-broken-by-slot-order` and
/// `regressions/page_model/lru-ties-after-purge-compaction`: eviction sorted entries by
/// `last_access` (whole seconds) alone, so entries of the same second went in slot (hash)
/// order: a page churned within one second evicted entries written a moment ago and kept
/// older ones. And a purge compacted the survivors in slot order, which lost the write order
/// that the data offset keeps for breaking such ties. Within one second the earliest written
/// entries must go first, purges or not.
#[test]
fn within_one_second_the_earliest_written_go_first() {
    let slot_hash = |key: &[u8]| fastmmap_fuzz::common::fastmmap_hash(key) / 7;
    for purge_every in [None, Some(13)] {
        let mut buf = vec![0u8; 8192];
        PageMut::init(&mut buf, MIN_SLOTS);
        let keys: Vec<Vec<u8>> = (0..200u32).map(|i| format!("k{i}").into_bytes()).collect();
        for (i, key) in keys.iter().enumerate() {
            let req = NewEntry {
                slot_hash: slot_hash(key),
                key,
                value: &[7; 100],
                expire_on: 0,
                flags: 0,
                modseq: None,
            };
            let stored = PageMut::wrap(&mut buf).store(&req, 1, MIN_SLOTS);
            assert_eq!(stored, Ok(StoreOutcome::Stored));
            if purge_every.is_some_and(|n| i % n == n - 1) {
                assert_eq!(
                    PageMut::wrap(&mut buf).evict(Evict::Expired, 1, MIN_SLOTS),
                    Ok(0)
                );
            }
        }
        let present: Vec<bool> = keys
            .iter()
            .map(|k| matches!(PageView::new(&buf).peek(slot_hash(k), k, 1), Ok(Some(_))))
            .collect();
        let first_kept = present.iter().position(|&p| p).unwrap();
        assert!(
            present[first_kept..].iter().all(|&p| p),
            "purge every {purge_every:?}: a later write went before an earlier one: {present:?}"
        );
        assert!(
            first_kept > 0,
            "purge every {purge_every:?}: nothing evicted"
        );
    }
}
