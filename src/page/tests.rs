//! Page operations on plain buffers: unit tests and a property test against a `HashMap` model.

use std::collections::HashMap;

use proptest::prelude::*;

use super::consts::*;
use super::header::{get_u32, put_u32};
use super::*;

const NOW: u32 = 1_700_000_000;

fn slot_hash(key: &[u8]) -> u32 {
    crate::store::fastmmap_hash(key) / 7
}

fn store<'k>(key: &'k [u8], value: &'k [u8], expire_on: u32) -> NewEntry<'k> {
    NewEntry {
        slot_hash: slot_hash(key),
        key,
        value,
        expire_on,
        flags: 0,
        modseq: None,
    }
}

fn fresh(size: usize) -> Vec<u8> {
    fresh_as(size, false)
}

/// An empty page, its slot words tagged or not (`PAGE_MAGIC_TAGGED`).
fn fresh_as(size: usize, tagged: bool) -> Vec<u8> {
    let mut buf = vec![0u8; size];
    PageMut::init_as(&mut buf, MIN_SLOTS, tagged);
    buf
}

fn get(buf: &mut [u8], key: &[u8], now: u32) -> Option<Vec<u8>> {
    get_p(buf, key, now, false)
}

/// [`get`], with the native eviction policy on or off.
fn get_p(buf: &mut [u8], key: &[u8], now: u32, policy: bool) -> Option<Vec<u8>> {
    PageMut::open(buf, MIN_SLOTS)
        .unwrap()
        .with_policy(policy)
        .get(slot_hash(key), key, now, true)
        .unwrap()
        .map(|e| e.value.to_vec())
}

fn put(buf: &mut [u8], key: &[u8], value: &[u8], expire_on: u32, now: u32) -> StoreOutcome {
    PageMut::open(buf, MIN_SLOTS)
        .unwrap()
        .store(&store(key, value, expire_on), now, MIN_SLOTS)
        .unwrap()
}

fn put_with(
    buf: &mut [u8],
    key: &[u8],
    value: &[u8],
    expire_on: u32,
    now: u32,
    in_place: bool,
) -> StoreOutcome {
    put_with_p(buf, key, value, expire_on, now, in_place, false)
}

/// [`put_with`], with the native eviction policy on or off.
fn put_with_p(
    buf: &mut [u8],
    key: &[u8],
    value: &[u8],
    expire_on: u32,
    now: u32,
    in_place: bool,
    policy: bool,
) -> StoreOutcome {
    PageMut::open(buf, MIN_SLOTS)
        .unwrap()
        .with_policy(policy)
        .store_with(&store(key, value, expire_on), now, MIN_SLOTS, in_place)
        .unwrap()
}

#[test]
fn same_size_overwrite_in_place_keeps_the_entry_where_it_is() {
    let mut buf = fresh(4096);
    put(&mut buf, b"k", b"value1", 0, NOW);
    let free = PageHeader::read(&buf).free_data;
    // Same padded size (24 + 1 + 6 and 24 + 1 + 7 bytes both take 32): rewritten where it is.
    assert_eq!(
        put_with(&mut buf, b"k", b"value-2", NOW + 9, NOW, true),
        StoreOutcome::Stored
    );
    assert_eq!(PageHeader::read(&buf).free_data, free);
    assert_eq!(get(&mut buf, b"k", NOW), Some(b"value-2".to_vec()));
    let page = PageMut::open(&mut buf, MIN_SLOTS).unwrap();
    let expire_on = page
        .peek(slot_hash(b"k"), b"k", NOW)
        .unwrap()
        .unwrap()
        .expire_on;
    assert_eq!(expire_on, NOW + 9);
    // Without `in_place`, or with another size, the new entry is appended.
    put_with(&mut buf, b"k", b"value-3", 0, NOW, false);
    assert!(PageHeader::read(&buf).free_data > free);
    let free = PageHeader::read(&buf).free_data;
    put_with(&mut buf, b"k", b"a longer value", 0, NOW, true);
    assert!(PageHeader::read(&buf).free_data > free);
    assert_eq!(get(&mut buf, b"k", NOW), Some(b"a longer value".to_vec()));
    checked(&buf);
}

fn checked(buf: &[u8]) {
    check_page(buf, MIN_SLOTS, Some(&slot_hash)).unwrap();
}

#[test]
fn set_get_remove() {
    let mut buf = fresh(4096);
    assert_eq!(put(&mut buf, b"k", b"v1", 0, NOW), StoreOutcome::Stored);
    assert_eq!(get(&mut buf, b"k", NOW), Some(b"v1".to_vec()));
    assert_eq!(
        put(&mut buf, b"k", b"value two", 0, NOW),
        StoreOutcome::Stored
    );
    assert_eq!(get(&mut buf, b"k", NOW), Some(b"value two".to_vec()));
    assert_eq!(get(&mut buf, b"other", NOW), None);
    checked(&buf);
    let mut page = PageMut::open(&mut buf, MIN_SLOTS).unwrap();
    assert_eq!(
        page.remove(slot_hash(b"k"), b"k", NOW)
            .unwrap()
            .map(|r| r.was_live),
        Some(true)
    );
    assert_eq!(page.remove(slot_hash(b"k"), b"k", NOW).unwrap(), None);
    checked(&buf);
    assert_eq!(get(&mut buf, b"k", NOW), None);
    let h = PageHeader::read(&buf);
    assert_eq!((h.n_reads, h.n_read_hits), (4, 2));
}

#[test]
fn expiry_is_now_at_or_after_expire_on() {
    let mut buf = fresh(4096);
    put(&mut buf, b"k", b"v", NOW + 10, NOW);
    assert!(get(&mut buf, b"k", NOW + 9).is_some());
    assert!(get(&mut buf, b"k", NOW + 10).is_none());
    let mut page = PageMut::open(&mut buf, MIN_SLOTS).unwrap();
    assert_eq!(page.evict(Evict::Expired, NOW + 10, MIN_SLOTS).unwrap(), 1);
    assert_eq!(page.header().free_slots, MIN_SLOTS);
}

#[test]
fn deleted_slots_are_reused() {
    let mut buf = fresh(4096);
    for round in 0..200u32 {
        let key = format!("key{round}");
        put(&mut buf, key.as_bytes(), b"x", 0, NOW);
        let mut page = PageMut::open(&mut buf, MIN_SLOTS).unwrap();
        page.remove(slot_hash(key.as_bytes()), key.as_bytes(), NOW)
            .unwrap();
    }
    checked(&buf);
    // Churn never grew the table: deleted slots were reused or compacted away.
    assert_eq!(PageHeader::read(&buf).num_slots, MIN_SLOTS);
}

#[test]
fn eviction_keeps_most_recently_used() {
    let mut buf = fresh(16384);
    let value = [7u8; 200];
    for i in 0..40u32 {
        put(&mut buf, format!("k{i}").as_bytes(), &value, 0, NOW + i);
    }
    // Touch the oldest keys so they become the most recent.
    for i in 0..5u32 {
        if get(&mut buf, format!("k{i}").as_bytes(), NOW + 100).is_none() {
            put(&mut buf, format!("k{i}").as_bytes(), &value, 0, NOW + 100);
        }
    }
    for i in 40..200u32 {
        put(
            &mut buf,
            format!("k{i}").as_bytes(),
            &value,
            0,
            NOW + 100 + i,
        );
    }
    checked(&buf);
    // The newest entries survive; the ones in between were evicted first.
    assert!(get(&mut buf, b"k199", NOW + 400).is_some());
    assert!(get(&mut buf, b"k198", NOW + 400).is_some());
    assert!(get(&mut buf, b"k41", NOW + 400).is_none());
}

#[test]
fn large_values_survive_small_key_churn() {
    let mut buf = fresh(65536);
    let big = vec![0xabu8; 30000];
    put(&mut buf, b"big", &big, 0, NOW);
    for i in 0..20000u32 {
        let key = format!("small{}", i % 50);
        put(&mut buf, key.as_bytes(), b"tiny", 0, NOW);
        if i % 100 == 0 {
            // Reading keeps it the most recently used.
            assert_eq!(
                get(&mut buf, b"big", NOW).as_deref(),
                Some(&big[..]),
                "round {i}"
            );
        }
    }
    checked(&buf);
}

#[test]
fn biggest_entry_always_fits_and_oversized_is_refused() {
    let mut buf = fresh(4096);
    for i in 0..50u32 {
        put(&mut buf, format!("k{i}").as_bytes(), b"some value", 0, NOW);
    }
    let max = max_entry_size(4096, MIN_SLOTS);
    let big = vec![1u8; max - ENTRY_HEADER_SIZE - 3];
    assert_eq!(put(&mut buf, b"big", &big, 0, NOW), StoreOutcome::Stored);
    assert_eq!(get(&mut buf, b"big", NOW).as_deref(), Some(&big[..]));
    checked(&buf);
    let too_big = vec![1u8; max];
    let req = store(b"big", &too_big, 0);
    assert_eq!(
        PageMut::open(&mut buf, MIN_SLOTS)
            .unwrap()
            .store(&req, NOW, MIN_SLOTS),
        Ok(StoreOutcome::TooLarge)
    );
    assert_eq!(
        get(&mut buf, b"big", NOW).as_deref(),
        Some(&big[..]),
        "old value kept"
    );
}

#[test]
fn make_room_for_more_than_a_page_holds_empties_it_without_overflow() {
    for len in [usize::MAX, usize::MAX - 3, 1 << 40] {
        let mut buf = fresh(4096);
        for i in 0..60u32 {
            put(&mut buf, format!("k{i}").as_bytes(), b"some value", 0, NOW);
        }
        let mut page = PageMut::open(&mut buf, MIN_SLOTS).unwrap();
        assert_eq!(page.evict(Evict::MakeRoom(len), NOW, MIN_SLOTS), Ok(60));
        checked(&buf);
        assert_eq!(
            PageHeader::read(&buf),
            PageHeader::empty(4096, MIN_SLOTS, false)
        );
    }
}

#[test]
fn tombstones_and_modseqs() {
    let mut buf = fresh(4096);
    let mut page = PageMut::open(&mut buf, MIN_SLOTS).unwrap();
    let with = |value: &'static [u8], modseq: u64, flags: u32| NewEntry {
        modseq: Some(modseq),
        flags,
        ..store(b"k", value, 0)
    };
    assert_eq!(
        page.store(&with(b"v5", 5, 0), NOW, MIN_SLOTS).unwrap(),
        StoreOutcome::Stored
    );
    assert_eq!(
        page.store(&with(b"v4", 4, 0), NOW, MIN_SLOTS).unwrap(),
        StoreOutcome::Refused
    );
    let e = page
        .get(slot_hash(b"k"), b"k", NOW, false)
        .unwrap()
        .unwrap();
    assert_eq!((e.value, e.modseq), (&b"v5"[..], Some(5)));
    // A tombstone older than the value changes nothing.
    assert_eq!(
        page.store(&with(b"", 3, FLAG_TOMBSTONE), NOW, MIN_SLOTS)
            .unwrap(),
        StoreOutcome::AlreadyNewer
    );
    assert_eq!(
        page.store(&with(b"", 7, FLAG_TOMBSTONE), NOW, MIN_SLOTS)
            .unwrap(),
        StoreOutcome::Stored
    );
    assert!(
        page.get(slot_hash(b"k"), b"k", NOW, false)
            .unwrap()
            .is_none(),
        "tombstone reads as a miss"
    );
    assert_eq!(
        page.store(&store(b"k", b"plain", 0), NOW, MIN_SLOTS)
            .unwrap(),
        StoreOutcome::Refused
    );
    assert_eq!(
        page.store(&with(b"v6", 6, 0), NOW, MIN_SLOTS).unwrap(),
        StoreOutcome::Refused
    );
    assert_eq!(
        page.store(&with(b"v8", 8, 0), NOW, MIN_SLOTS).unwrap(),
        StoreOutcome::Stored
    );
    assert_eq!(
        page.get(slot_hash(b"k"), b"k", NOW, false)
            .unwrap()
            .unwrap()
            .value,
        b"v8"
    );
    checked(&buf);
}

#[test]
fn slot_table_grows() {
    let mut buf = fresh(65536);
    for i in 0..1000u32 {
        put(&mut buf, format!("key{i}").as_bytes(), b"v", 0, NOW);
    }
    let h = PageHeader::read(&buf);
    assert!(h.num_slots > MIN_SLOTS, "{h:?}");
    checked(&buf);
    for i in 0..1000u32 {
        assert_eq!(
            get(&mut buf, format!("key{i}").as_bytes(), NOW).as_deref(),
            Some(&b"v"[..])
        );
    }
}

#[test]
fn clear_and_purge() {
    let mut buf = fresh(8192);
    put(&mut buf, b"a", b"1", NOW + 5, NOW);
    put(&mut buf, b"b", b"2", 0, NOW);
    let mut page = PageMut::open(&mut buf, MIN_SLOTS).unwrap();
    assert_eq!(page.evict(Evict::Expired, NOW + 5, MIN_SLOTS).unwrap(), 1);
    assert!(page.peek(slot_hash(b"b"), b"b", NOW).unwrap().is_some());
    assert_eq!(page.evict(Evict::All, NOW, MIN_SLOTS).unwrap(), 1);
    assert!(page.peek(slot_hash(b"b"), b"b", NOW).unwrap().is_none());
    checked(&buf);
}

#[test]
fn killed_compaction_fails_the_header_check() {
    let mut buf = fresh(4096);
    put(&mut buf, b"a", b"1", 0, NOW);
    // What a process killed between the two magic writes of a rebuild leaves.
    buf[..4].copy_from_slice(&0u32.to_ne_bytes());
    assert!(PageMut::open(&mut buf, MIN_SLOTS).is_err());
}

#[derive(Clone, Debug)]
enum Op {
    /// Key, value, expiry (0: never, else seconds from now), in place allowed.
    Set(u8, Vec<u8>, u8, bool),
    /// Overwrite a key with a value as long as its current one (filled with the byte): the
    /// case an in-place store rewrites where it is.
    Overwrite(u8, u8, bool),
    Get(u8),
    Remove(u8),
    Tick(u8),
    Purge,
    Clear,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..600), 0u8..4, any::<bool>())
            .prop_map(|(k, v, e, p)| Op::Set(k, v, e, p)),
        3 => (any::<u8>(), any::<u8>(), any::<bool>()).prop_map(|(k, b, p)| Op::Overwrite(k, b, p)),
        4 => any::<u8>().prop_map(Op::Get),
        2 => any::<u8>().prop_map(Op::Remove),
        1 => any::<u8>().prop_map(Op::Tick),
        1 => Just(Op::Purge),
        1 => Just(Op::Clear),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// An evicted key may be missing; a present key never has a wrong value; a key that was
    /// removed, cleared or expired is never present.
    #[test]
    fn page_matches_model(
        ops in proptest::collection::vec(op(), 1..300),
        policy in any::<bool>(),
        tagged in any::<bool>(),
    ) {
        let mut buf = fresh_as(8192, tagged);
        let mut model: HashMap<Vec<u8>, (Vec<u8>, u32)> = HashMap::new();
        let mut now = NOW;
        for op in ops {
            match op {
                Op::Set(k, v, e, in_place) => {
                    let key = format!("key-{k}").into_bytes();
                    let expire_on = if e == 0 { 0 } else { now + u32::from(e) };
                    prop_assert_eq!(put_with_p(&mut buf, &key, &v, expire_on, now, in_place, policy), StoreOutcome::Stored);
                    prop_assert_eq!(get_p(&mut buf, &key, now, policy), Some(v.clone()), "just stored");
                    model.insert(key, (v, expire_on));
                }
                Op::Overwrite(k, b, in_place) => {
                    let key = format!("key-{k}").into_bytes();
                    let len = model.get(&key).map_or(10, |(v, _)| v.len());
                    let v = vec![b; len];
                    prop_assert_eq!(put_with_p(&mut buf, &key, &v, 0, now, in_place, policy), StoreOutcome::Stored);
                    prop_assert_eq!(get_p(&mut buf, &key, now, policy), Some(v.clone()), "just overwritten");
                    model.insert(key, (v, 0));
                }
                Op::Get(k) => {
                    let key = format!("key-{k}").into_bytes();
                    let got = get_p(&mut buf, &key, now, policy);
                    match model.get(&key) {
                        Some((v, e)) if !is_expired(*e, now) => {
                            if let Some(got) = got { prop_assert_eq!(&got, v); }
                        }
                        _ => prop_assert_eq!(got, None),
                    }
                }
                Op::Remove(k) => {
                    let key = format!("key-{k}").into_bytes();
                    PageMut::open(&mut buf, MIN_SLOTS).unwrap().remove(slot_hash(&key), &key, now).unwrap();
                    model.remove(&key);
                }
                Op::Tick(s) => now += u32::from(s % 3),
                Op::Purge => { PageMut::open(&mut buf, MIN_SLOTS).unwrap().with_policy(policy).evict(Evict::Expired, now, MIN_SLOTS).unwrap(); }
                Op::Clear => {
                    PageMut::open(&mut buf, MIN_SLOTS).unwrap().with_policy(policy).evict(Evict::All, now, MIN_SLOTS).unwrap();
                    model.clear();
                }
            }
            check_page(&buf, MIN_SLOTS, Some(&slot_hash)).map_err(|c| TestCaseError::fail(c.0))?;
        }
    }

    /// Whatever bytes a page holds, operations return values or `Corrupt`, never panic.
    #[test]
    fn arbitrary_bytes_never_panic(
        mut bytes in proptest::collection::vec(any::<u8>(), 4096..=4096),
        header in proptest::array::uniform8(0u32..5000),
        ops in proptest::collection::vec(op(), 1..20),
        policy in any::<bool>(),
    ) {
        // Half the time give it a plausible header so the operations get past the check.
        if header[0] % 2 == 0 {
            let magic = if header[5] % 2 == 0 { PAGE_MAGIC } else { PAGE_MAGIC_TAGGED };
            let h = PageHeader { magic, num_slots: MIN_SLOTS + header[1] % 100, free_slots: header[2] % 150,
                old_slots: header[3] % 150, free_data: (header[4] & !3) % 4096, free_bytes: 0, n_reads: 0, n_read_hits: 0 };
            let h = PageHeader { free_bytes: 4096 - h.free_data, ..h };
            h.write(&mut bytes).unwrap();
        }
        let _ = check_page(&bytes, MIN_SLOTS, Some(&slot_hash));
        for op in ops {
            let mut page = PageMut::wrap(&mut bytes).with_policy(policy);
            let _ = match op {
                Op::Set(k, v, _, in_place) => page
                    .store_with(&store(&[k], &v[..v.len().min(1000)], 0), NOW, MIN_SLOTS, in_place)
                    .map(|_| ()),
                Op::Overwrite(k, b, in_place) => page
                    .store_with(&store(&[k], &[b; 40], 0), NOW, MIN_SLOTS, in_place)
                    .map(|_| ()),
                Op::Get(k) => page.get(slot_hash(&[k]), &[k], NOW, true).map(|_| ()),
                Op::Remove(k) => page.remove(slot_hash(&[k]), &[k], NOW).map(|_| ()),
                Op::Tick(_) => page.for_each_entry_len().map(|_| ()),
                Op::Purge => page.evict(Evict::Expired, NOW, MIN_SLOTS).map(|_| ()),
                Op::Clear => page.evict(Evict::All, NOW, MIN_SLOTS).map(|_| ()),
            };
        }
    }
}

impl PageMut<'_> {
    fn for_each_entry_len(&self) -> Result<usize, Corrupt> {
        let mut n = 0;
        self.view().for_each_entry(|_| n += 1)?;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------------
// Write-back: dirty entries are copied out before they are dropped

fn dirty_store<'k>(key: &'k [u8], value: &'k [u8]) -> NewEntry<'k> {
    NewEntry {
        flags: FLAG_DIRTY,
        ..store(key, value, 0)
    }
}

fn dirty_keys(buf: &[u8]) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = PageView::new(buf)
        .dirty_entries()
        .unwrap()
        .into_iter()
        .map(|c| c.key)
        .collect();
    keys.sort();
    keys
}

#[test]
fn refusing_stores_change_nothing_and_report_the_dirty_entries_in_the_way() {
    let mut buf = fresh(4096);
    for i in 0..30u8 {
        let key = [b'd', i];
        let mut page = PageMut::open(&mut buf, MIN_SLOTS).unwrap();
        let mut out = Vec::new();
        let outcome = page
            .store_dirty(
                &dirty_store(&key, &[i; 100]),
                NOW,
                MIN_SLOTS,
                false,
                &mut Dirty::refuse(&mut out),
            )
            .unwrap();
        if outcome.is_none() {
            // The page is full of dirty entries: nothing changed, the victims were reported.
            let before = buf.clone();
            assert!(!out.is_empty());
            let mut page = PageMut::open(&mut buf, MIN_SLOTS).unwrap();
            let mut again = Vec::new();
            assert_eq!(
                page.store_dirty(
                    &dirty_store(&key, &[i; 100]),
                    NOW,
                    MIN_SLOTS,
                    false,
                    &mut Dirty::refuse(&mut again)
                )
                .unwrap(),
                None
            );
            assert_eq!(buf, before, "a refused store changes nothing");
            // Written back: mark them clean, and the store goes through, dropping them.
            let mut page = PageMut::open(&mut buf, MIN_SLOTS).unwrap();
            for copy in &out {
                assert!(page.mark_clean(copy, copy.reference.as_deref()).unwrap());
                assert!(
                    !page.mark_clean(copy, copy.reference.as_deref()).unwrap(),
                    "already clean"
                );
            }
            let mut more = Vec::new();
            let stored = page
                .store_dirty(
                    &dirty_store(&key, &[i; 100]),
                    NOW,
                    MIN_SLOTS,
                    false,
                    &mut Dirty::refuse(&mut more),
                )
                .unwrap();
            assert_eq!(stored, Some(StoreOutcome::Stored));
            assert!(more.is_empty());
            for copy in &out {
                assert_eq!(
                    get(&mut buf, &copy.key, NOW),
                    None,
                    "the clean victims went"
                );
            }
            return;
        }
        assert!(out.is_empty());
    }
    panic!("a 4 KiB page never filled with 30 entries of 100 bytes");
}

#[test]
fn superseding_a_dirty_entry_is_no_drop_but_a_read_through_replacing_one_is() {
    let mut buf = fresh(4096);
    let mut page = PageMut::open(&mut buf, MIN_SLOTS).unwrap();
    page.store(
        &NewEntry {
            expire_on: NOW + 1,
            ..dirty_store(b"k", b"old")
        },
        NOW,
        MIN_SLOTS,
    )
    .unwrap();
    let mut out = Vec::new();
    let mut dirty = Dirty::refuse(&mut out);
    assert_eq!(
        page.store_dirty(
            &dirty_store(b"k", b"new"),
            NOW + 5,
            MIN_SLOTS,
            true,
            &mut dirty
        )
        .unwrap(),
        Some(StoreOutcome::Stored)
    );
    assert!(out.is_empty(), "a newer value of the key is no loss");

    let mut page = PageMut::open(&mut buf, MIN_SLOTS).unwrap();
    page.store(
        &NewEntry {
            expire_on: NOW + 1,
            ..dirty_store(b"k", b"dirty")
        },
        NOW,
        MIN_SLOTS,
    )
    .unwrap();
    let mut dirty = Dirty::refuse(&mut out);
    dirty.replacing_drops = true;
    assert_eq!(
        page.store_dirty(
            &store(b"k", b"loaded", 0),
            NOW + 5,
            MIN_SLOTS,
            false,
            &mut dirty
        )
        .unwrap(),
        None,
        "an expired dirty value must be written back before a read-through replaces it"
    );
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].key.as_slice(), out[0].value.as_slice()),
        (&b"k"[..], &b"dirty"[..])
    );
    assert_eq!(out[0].expire_on, NOW + 1);
}

#[test]
fn counting_the_dirty_entries_of_a_damaged_page() {
    let mut buf = fresh(8192);
    let mut page = PageMut::open(&mut buf, MIN_SLOTS).unwrap();
    for i in 0..10u8 {
        let key = [i];
        let req = if i % 3 == 0 {
            store(&key, b"clean", 0)
        } else {
            dirty_store(&key, b"dirty")
        };
        page.store(&req, NOW, MIN_SLOTS).unwrap();
    }
    assert_eq!(count_dirty(&buf), 6);
    assert_eq!(dirty_keys(&buf).len(), 6);
    // Damage the header the way a killed rebuild does: the count still reads the slots.
    buf[MAGIC_OFFSET..MAGIC_OFFSET + 4].fill(0);
    assert_eq!(count_dirty(&buf), 6);
    // Garbage counts nothing, and never panics.
    assert_eq!(count_dirty(&[0xff; 4096]), 0);
    assert_eq!(count_dirty(&[]), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// Under `Dirty::collect`, a dirty value never leaves the page without a copy: every dirty
    /// key the model holds is, after each operation, still dirty in the page with its value,
    /// or superseded by a later store of its key, or among the copies.
    #[test]
    fn dirty_values_never_vanish(ops in proptest::collection::vec(
        (0u8..40, 0usize..300, any::<bool>(), 0u8..4, 0u8..8), 1..250)
    ) {
        let mut buf = fresh(4096);
        let mut dirty: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let mut now = NOW;
        for (k, len, is_dirty, expiry, what) in ops {
            let key = vec![b'k', k];
            let value = vec![k ^ len as u8; len];
            let mut out = Vec::new();
            let mut page = PageMut::open(&mut buf, MIN_SLOTS).unwrap();
            match what {
                0 => { page.evict_dirty(Evict::Expired, now, MIN_SLOTS, None, &mut Dirty::collect(&mut out)).unwrap(); }
                1 => now += u32::from(expiry),
                _ => {
                    let req = NewEntry {
                        flags: if is_dirty { FLAG_DIRTY } else { 0 },
                        expire_on: if expiry == 0 { 0 } else { now + u32::from(expiry) },
                        ..store(&key, &value, 0)
                    };
                    page.store_dirty(&req, now, MIN_SLOTS, false, &mut Dirty::collect(&mut out)).unwrap();
                    // The new store supersedes the key's old value either way.
                    dirty.remove(&key);
                    if is_dirty {
                        dirty.insert(key.clone(), value.clone());
                    }
                }
            }
            for copy in out {
                prop_assert_eq!(dirty.remove(&copy.key), Some(copy.value), "copied out once, as stored");
            }
            let still: HashMap<Vec<u8>, Vec<u8>> = PageView::new(&buf)
                .dirty_entries()
                .unwrap()
                .into_iter()
                .map(|c| (c.key, c.value))
                .collect();
            prop_assert_eq!(&still, &dirty, "every dirty value is in the page or was copied");
        }
    }
}

/// In a tagged page each slot word holds its entry's offset below `offset_mask` and the
/// same bits of the entry's slot hash above it; rebuilds keep the page tagged; a lookup
/// passes over a slot whose tag is not its key's (the key reads as absent, never as another's
/// value), and `check_page` calls such a slot damage.
#[test]
fn a_tagged_page_keeps_each_keys_tag_in_its_slot() {
    let mut buf = fresh_as(4096, true);
    let mask = offset_mask(4096);
    assert_eq!(mask, 0xfff);
    let keys: Vec<Vec<u8>> = (0..60).map(|i| format!("key-{i}").into_bytes()).collect();
    for key in &keys {
        put(&mut buf, key, &[7; 20], 0, NOW);
    }
    let slots_of = |buf: &[u8]| -> Vec<(usize, u32)> {
        let hdr = PageHeader::read(buf);
        (0..hdr.num_slots as usize)
            .map(|s| (s, get_u32(buf, SLOTS_OFFSET + s * SLOT_SIZE).unwrap()))
            .filter(|&(_, w)| w > SLOT_DELETED)
            .collect()
    };
    let check_tags = |buf: &[u8]| {
        assert!(PageHeader::read(buf).tagged());
        let slots = slots_of(buf);
        assert!(!slots.is_empty());
        for (_, word) in slots {
            let off = (word & mask) as usize;
            let hash = get_u32(buf, off + SLOT_HASH_OFFSET).unwrap();
            assert_eq!(word & !mask, hash & !mask, "slot word {word:#x}");
        }
        check_page(buf, MIN_SLOTS, Some(&slot_hash)).unwrap();
    };
    check_tags(&buf);
    for key in &keys {
        assert_eq!(get(&mut buf, key, NOW), Some(vec![7; 20]));
    }
    // A rebuild (`Evict::All` rewrites the page empty) keeps the page tagged.
    PageMut::open(&mut buf, MIN_SLOTS)
        .unwrap()
        .evict(Evict::All, NOW, MIN_SLOTS)
        .unwrap();
    for key in &keys[..30] {
        put(&mut buf, key, &[8; 20], 0, NOW);
    }
    check_tags(&buf);

    // One slot's tag changed: its key is no longer found, and the page fails its check.
    let (slot, word) = slots_of(&buf)[0];
    let off = (word & mask) as usize;
    let key_len = get_u32(&buf, off + KEY_LEN_OFFSET).unwrap() as usize;
    let key = buf[off + ENTRY_HEADER_SIZE..off + ENTRY_HEADER_SIZE + key_len].to_vec();
    put_u32(&mut buf, SLOTS_OFFSET + slot * SLOT_SIZE, word ^ (1 << 20)).unwrap();
    assert_eq!(get(&mut buf, &key, NOW), None);
    assert!(check_page(&buf, MIN_SLOTS, Some(&slot_hash)).is_err());
}

#[test]
fn an_in_place_overwrite_keeps_a_key_that_reaches_the_padding() {
    // 24 + 10 key bytes + 0..=2 value bytes: the last word holds the key's tail.
    let mut buf = fresh(4096);
    let key = b"abcdefghij";
    for value in [&b""[..], b"x", b"yz", b"", b"q"] {
        assert_eq!(
            put_with(&mut buf, key, value, 0, NOW, true),
            StoreOutcome::Stored
        );
        assert_eq!(get(&mut buf, key, NOW), Some(value.to_vec()));
    }
    check_page(&buf, MIN_SLOTS, Some(&slot_hash)).unwrap();
}

#[test]
fn an_overwrite_that_must_evict_its_own_dirty_entry_refuses_until_it_is_written_back() {
    // Two values of the key do not fit the page together: the rebuild that makes room drops
    // the old entry before the new one is written. Until the old one is in the backing store,
    // a refusing store copies it out and changes nothing.
    let mut buf = fresh(8192);
    let (old, new) = (vec![1u8; 4500], vec![2u8; 4400]);
    let mut page = PageMut::open(&mut buf, MIN_SLOTS).unwrap();
    page.store(&dirty_store(b"k", &old), NOW, MIN_SLOTS)
        .unwrap();
    let mut out = Vec::new();
    let refused = page
        .store_dirty(
            &dirty_store(b"k", &new),
            NOW,
            MIN_SLOTS,
            false,
            &mut Dirty::refuse(&mut out),
        )
        .unwrap();
    assert_eq!(refused, None);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].key.as_slice(), &out[0].value), (&b"k"[..], &old));
    assert_eq!(get(&mut buf, b"k", NOW), Some(old.clone()));
    // Written back and marked clean, the store goes ahead.
    let mut page = PageMut::open(&mut buf, MIN_SLOTS).unwrap();
    assert!(page.mark_clean(&out[0], None).unwrap());
    let mut again = Vec::new();
    let stored = page
        .store_dirty(
            &dirty_store(b"k", &new),
            NOW,
            MIN_SLOTS,
            false,
            &mut Dirty::refuse(&mut again),
        )
        .unwrap();
    assert_eq!(stored, Some(StoreOutcome::Stored));
    assert!(again.is_empty());
    assert_eq!(get(&mut buf, b"k", NOW), Some(new.clone()));
    // An overwrite with room for both never copies the old value: the new entry's commit
    // replaces it in one step.
    let small = vec![3u8; 100];
    let mut page = PageMut::open(&mut buf, MIN_SLOTS).unwrap();
    let mut none = Vec::new();
    page.store(&dirty_store(b"j", &small), NOW, MIN_SLOTS)
        .unwrap();
    let stored = page
        .store_dirty(
            &dirty_store(b"j", &[4u8; 100]),
            NOW,
            MIN_SLOTS,
            false,
            &mut Dirty::refuse(&mut none),
        )
        .unwrap();
    assert_eq!(stored, Some(StoreOutcome::Stored));
    assert!(none.is_empty());
}

#[test]
fn a_dry_run_writes_nothing_and_says_what_the_store_would_do() {
    let mut buf = fresh(8192);
    let mut page = PageMut::open(&mut buf, MIN_SLOTS).unwrap();
    page.store(&dirty_store(b"k", &[1u8; 100]), NOW, MIN_SLOTS)
        .unwrap();
    let before = buf.clone();
    let mut page = PageMut::open(&mut buf, MIN_SLOTS).unwrap();
    // An append (room to spare): nothing in the way, not in place.
    let mut out = Vec::new();
    let mut dry = Dirty::dry(&mut out);
    let looked = page
        .store_dirty(
            &dirty_store(b"j", &[2u8; 50]),
            NOW,
            MIN_SLOTS,
            true,
            &mut dry,
        )
        .unwrap();
    assert_eq!(looked, None);
    assert!(!dry.would_write_in_place());
    assert!(out.is_empty());
    // The same size over the key's entry: in place.
    let mut dry = Dirty::dry(&mut out);
    page.store_dirty(
        &dirty_store(b"k", &[3u8; 100]),
        NOW,
        MIN_SLOTS,
        true,
        &mut dry,
    )
    .unwrap();
    assert!(dry.would_write_in_place());
    // Too big to keep the old value: the old dirty value is in the way.
    let mut dry = Dirty::dry(&mut out);
    page.store_dirty(
        &dirty_store(b"k", &[4u8; 7700]),
        NOW,
        MIN_SLOTS,
        true,
        &mut dry,
    )
    .unwrap();
    assert!(!dry.would_write_in_place());
    assert_eq!(out.len(), 1);
    assert_eq!(buf, before, "a dry run writes nothing");
}

#[test]
fn a_killed_rebuild_leaves_its_dirty_count_for_the_reset() {
    let mut buf = fresh(8192);
    let mut page = PageMut::open(&mut buf, MIN_SLOTS).unwrap();
    for i in 0..5u8 {
        page.store(&dirty_store(&[i], &[i; 1000]), NOW, MIN_SLOTS)
            .unwrap();
    }
    assert_eq!(count_dirty(&buf), 5);
    // What a rebuild killed part way leaves: the tag and its count in the magic word, and a
    // half-copied page whose slots may no longer show the entries.
    buf[MAGIC_OFFSET..MAGIC_OFFSET + 4].copy_from_slice(&(REBUILD_TAG | 5).to_ne_bytes());
    buf[SLOTS_OFFSET..SLOTS_OFFSET + 4 * MIN_SLOTS as usize].fill(0);
    assert_eq!(count_dirty(&buf), 5);
    assert!(
        PageMut::open(&mut buf, MIN_SLOTS).is_err(),
        "fails its check"
    );
}

// ---------------------------------------------------------------------------------------------
// The native eviction policy: probation, protection on the first hit, the ghost record

/// A 64 KiB page with `n` keys `prefix-i` of 100-byte values stored at `now` under the policy.
fn fill_p(buf: &mut [u8], prefix: &str, range: std::ops::Range<usize>, now: u32) {
    for i in range {
        let key = format!("{prefix}-{i}");
        put_with_p(buf, key.as_bytes(), &[7; 100], 0, now, true, true);
    }
}

fn present(buf: &mut [u8], key: &str) -> bool {
    PageMut::open(buf, MIN_SLOTS)
        .unwrap()
        .peek(slot_hash(key.as_bytes()), key.as_bytes(), NOW + 1000)
        .unwrap()
        .is_some()
}

/// The entry's raw flags word, the policy's bit included.
fn raw_flags(buf: &[u8], key: &str) -> Option<u32> {
    let mut flags = None;
    let view = PageView::new(buf);
    let hdr = view.checked_header().unwrap();
    if let view::Probe::Hit { loc, .. } = view
        .probe(&hdr, slot_hash(key.as_bytes()), key.as_bytes())
        .unwrap()
    {
        flags = Some(loc.flags);
    }
    flags
}

#[test]
fn a_scan_of_new_keys_never_pushes_out_entries_read_since_they_were_stored() {
    let mut buf = fresh(65536);
    // 150 hot keys, each read once (protected), written before the scan and in the same
    // second as it: recency alone would evict them first.
    fill_p(&mut buf, "hot", 0..150, NOW);
    for i in 0..150 {
        assert!(get_p(&mut buf, format!("hot-{i}").as_bytes(), NOW, true).is_some());
    }
    fill_p(&mut buf, "scan", 0..5000, NOW);
    check_page(&buf, MIN_SLOTS, Some(&slot_hash)).unwrap();
    let kept = (0..150)
        .filter(|i| present(&mut buf, &format!("hot-{i}")))
        .count();
    assert_eq!(
        kept, 150,
        "hot entries kept through a scan of 5,000 new keys"
    );
    // Without the policy (Cache::FastMmap's rule), the same scan flushes them all.
    let mut plain = fresh(65536);
    for i in 0..150 {
        put(&mut plain, format!("hot-{i}").as_bytes(), &[7; 100], 0, NOW);
        get(&mut plain, format!("hot-{i}").as_bytes(), NOW);
    }
    for i in 0..5000 {
        put(
            &mut plain,
            format!("scan-{i}").as_bytes(),
            &[7; 100],
            0,
            NOW,
        );
    }
    assert_eq!(
        (0..150)
            .filter(|i| present(&mut plain, &format!("hot-{i}")))
            .count(),
        0
    );
}

#[test]
fn the_protected_part_is_capped_and_its_least_recently_used_go_back_to_probation() {
    let mut buf = fresh(65536);
    // More read entries than half the page holds: the oldest of them must make way.
    for round in 0..4u32 {
        let base = round as usize * 150;
        fill_p(&mut buf, "k", base..base + 150, NOW + round);
        for i in base..base + 150 {
            get_p(&mut buf, format!("k-{i}").as_bytes(), NOW + round, true);
        }
    }
    fill_p(&mut buf, "new", 0..2000, NOW + 10);
    check_page(&buf, MIN_SLOTS, Some(&slot_hash)).unwrap();
    let hdr = PageHeader::read(&buf);
    let capacity = 65536 - hdr.slots_end() - ghost_size(65536);
    let protected: usize = (0..600)
        .filter_map(|i| raw_flags(&buf, &format!("k-{i}")))
        .filter(|f| f & FLAG_PROTECTED != 0)
        .count()
        * entry_size(5, 100).unwrap();
    assert!(
        protected <= (PROTECTED_SHARE * capacity as f64) as usize + 200,
        "{protected} of {capacity}"
    );
    // The most recently read ones are the ones kept.
    assert!(present(&mut buf, "k-599"));
    assert!(!present(&mut buf, "k-0"));
}

#[test]
fn a_key_evicted_from_probation_and_stored_again_comes_back_protected() {
    let mut buf = fresh(65536);
    fill_p(&mut buf, "once", 0..100, NOW);
    // Enough to evict it, not so much that the record (1,020 keys in 64 KiB) forgets it.
    fill_p(&mut buf, "flood", 0..400, NOW + 1);
    assert!(!present(&mut buf, "once-0"), "evicted by the flood");
    put_with_p(&mut buf, b"once-0", &[7; 100], 0, NOW + 2, true, true);
    assert_eq!(
        raw_flags(&buf, "once-0").unwrap() & FLAG_PROTECTED,
        FLAG_PROTECTED
    );
    // A key never seen starts on probation.
    put_with_p(&mut buf, b"never-seen", &[7; 100], 0, NOW + 2, true, true);
    assert_eq!(raw_flags(&buf, "never-seen").unwrap() & FLAG_PROTECTED, 0);
}

#[test]
fn sessions_read_twice_survive_a_flood_of_one_hit_keys() {
    let mut buf = fresh(65536);
    for i in 0..50 {
        let key = format!("session-{i}");
        put_with_p(&mut buf, key.as_bytes(), &[1; 200], 0, NOW, true, true);
        get_p(&mut buf, key.as_bytes(), NOW + 1, true);
    }
    for i in 0..20_000 {
        let key = format!("anon-{i}");
        put_with_p(
            &mut buf,
            key.as_bytes(),
            &[2; 100],
            0,
            NOW + 2 + i / 1000,
            true,
            true,
        );
    }
    check_page(&buf, MIN_SLOTS, Some(&slot_hash)).unwrap();
    let kept = (0..50)
        .filter(|i| present(&mut buf, &format!("session-{i}")))
        .count();
    assert_eq!(kept, 50);
}

#[test]
fn the_policy_bit_is_the_pages_own() {
    let mut buf = fresh(4096);
    let mut req = store(b"k", b"v", 0);
    req.flags = FLAG_PROTECTED | FLAG_FREQ | FLAG_UTF8_VALUE;
    PageMut::open(&mut buf, MIN_SLOTS)
        .unwrap()
        .store(&req, NOW, MIN_SLOTS)
        .unwrap();
    // Never taken from a caller, not even without the policy.
    assert_eq!(raw_flags(&buf, "k"), Some(FLAG_UTF8_VALUE));
    let mut page = PageMut::open(&mut buf, MIN_SLOTS)
        .unwrap()
        .with_policy(true);
    let flags = page
        .get(slot_hash(b"k"), b"k", NOW, false)
        .unwrap()
        .unwrap()
        .flags;
    assert_eq!(flags, FLAG_UTF8_VALUE, "set in the page, never shown");
    assert_eq!(
        raw_flags(&buf, "k"),
        Some(FLAG_UTF8_VALUE | FLAG_PROTECTED | FREQ_ONE)
    );
    let mut out = Copied::default();
    assert!(find_copy(&buf[..], MIN_SLOTS, slot_hash(b"k"), b"k", NOW, &mut out).unwrap());
    assert_eq!((out.flags, out.protected), (FLAG_UTF8_VALUE, true));
}

#[test]
fn reads_that_take_the_lock_count_up_to_the_most_the_bits_hold() {
    let mut buf = fresh(4096);
    put_with_p(&mut buf, b"k", b"v", 0, NOW, true, true);
    assert_eq!(raw_flags(&buf, "k").unwrap() & POLICY_FLAGS, 0);
    // One a second: a read within the second of the last one changes nothing in the page
    // (it is the read a lock-free reader serves without the lock).
    for (second, count) in [(0, 1), (0, 1), (1, 2), (2, 3), (3, 3), (9, 3)] {
        get_p(&mut buf, b"k", NOW + second, true);
        let flags = raw_flags(&buf, "k").unwrap();
        assert_eq!(flags & FLAG_PROTECTED, FLAG_PROTECTED);
        assert_eq!(
            (flags & FLAG_FREQ) / FREQ_ONE,
            count,
            "after the read at {second}"
        );
    }
    // Stored again, the entry keeps its place and its count.
    put_with_p(&mut buf, b"k", b"w", 0, NOW + 10, true, true);
    assert_eq!(
        raw_flags(&buf, "k").unwrap() & POLICY_FLAGS,
        FLAG_PROTECTED | FLAG_FREQ
    );
}

#[test]
fn protected_entries_read_again_outlast_keys_that_only_came_back() {
    let mut buf = fresh(65536);
    // 200 entries read in three seconds (count 3), then more keys that come back from the
    // ghost record protected (count 0) than the protected part holds beside them.
    fill_p(&mut buf, "hot", 0..200, NOW);
    for s in 0..3 {
        for i in 0..200 {
            get_p(&mut buf, format!("hot-{i}").as_bytes(), NOW + s, true);
        }
    }
    for round in 0..6u32 {
        fill_p(&mut buf, "back", 0..300, NOW + 10 + 2 * round);
        fill_p(&mut buf, "new", 0..300, NOW + 11 + 2 * round);
    }
    check_page(&buf, MIN_SLOTS, Some(&slot_hash)).unwrap();
    let kept = (0..200)
        .filter(|i| present(&mut buf, &format!("hot-{i}")))
        .count();
    let back = (0..300)
        .filter(|i| present(&mut buf, &format!("back-{i}")))
        .count();
    assert_eq!(
        kept, 200,
        "entries read again kept ahead of returning keys ({back} back)"
    );
    // Protected entries without a count went first, so no count was spent; the returning
    // keys had the rest of the protected part.
    let counts: u32 = (0..200)
        .map(|i| (raw_flags(&buf, &format!("hot-{i}")).unwrap() & FLAG_FREQ) / FREQ_ONE)
        .sum();
    assert_eq!(counts, 3 * 200);
    let returned_protected = (0..300)
        .flat_map(|i| [format!("back-{i}"), format!("new-{i}")])
        .filter_map(|k| raw_flags(&buf, &k))
        .filter(|f| f & FLAG_PROTECTED != 0)
        .count();
    assert!(returned_protected > 0);
}

#[test]
fn counts_are_spent_when_every_protected_entry_has_one() {
    let mut buf = fresh(65536);
    // The page filled with entries each read in two seconds (count 2), then new keys read
    // once each (count 1), more than the protected part holds: some must go back to
    // probation, and each rebuild that finds no entry without a count takes one from all.
    fill_p(&mut buf, "old", 0..300, NOW);
    for s in 0..2 {
        for i in 0..300 {
            get_p(&mut buf, format!("old-{i}").as_bytes(), NOW + s, true);
        }
    }
    for i in 0..600 {
        let key = format!("young-{i}");
        put_with_p(&mut buf, key.as_bytes(), &[7; 100], 0, NOW + 5, true, true);
        get_p(&mut buf, key.as_bytes(), NOW + 5, true);
    }
    check_page(&buf, MIN_SLOTS, Some(&slot_hash)).unwrap();
    let old: Vec<u32> = (0..300)
        .filter_map(|i| raw_flags(&buf, &format!("old-{i}")))
        .collect();
    assert!(old.len() < 300, "not every old entry stays for ever");
    assert!(
        old.iter().all(|f| f & FLAG_FREQ != FLAG_FREQ),
        "counts were spent"
    );
}

#[test]
fn a_loop_over_more_keys_than_fit_still_hits() {
    // Recency alone evicts each key just before it is asked for again: a cyclic scan larger
    // than the page never hits. The counts and the ghost record keep a part of it: about 420
    // entries fit, and the ghost record remembers 1,020 keys, so a loop of three times the
    // keys that fit still hits. (A loop of more keys than the two together gets nothing: its
    // keys come back after the record forgot them.)
    for (keys, least) in [(500, 50), (700, 30), (900, 20), (1_300, 20)] {
        loop_hits(keys, least);
    }
}

fn loop_hits(keys: u32, least: usize) {
    let mut buf = fresh(65536);
    let mut hits = 0;
    let mut plain = fresh(65536);
    let mut plain_hits = 0;
    for cycle in 0..12u32 {
        for i in 0..keys {
            let key = format!("loop-{i}");
            let now = NOW + cycle * 2 + (i >= keys / 2) as u32;
            let hit = get_p(&mut buf, key.as_bytes(), now, true).is_some();
            if !hit {
                put_with_p(&mut buf, key.as_bytes(), &[5; 100], 0, now, true, true);
            }
            let plain_hit = get(&mut plain, key.as_bytes(), now).is_some();
            if !plain_hit {
                put(&mut plain, key.as_bytes(), &[5; 100], 0, now);
            }
            if cycle >= 4 {
                hits += hit as usize;
                plain_hits += plain_hit as usize;
            }
        }
    }
    check_page(&buf, MIN_SLOTS, Some(&slot_hash)).unwrap();
    assert_eq!(plain_hits, 0, "Cache::FastMmap's rule");
    let requests = 8 * keys as usize;
    assert!(
        hits * 100 >= requests * least,
        "{keys} keys: {hits} hits of {requests} requests"
    );
}

/// How many times the ghost record of `buf` holds the fingerprint of `key`.
fn ghost_matches(buf: &[u8], key: &str) -> usize {
    let hdr = PageHeader::read(buf);
    let print = policy::fingerprint(slot_hash(key.as_bytes())).to_ne_bytes();
    policy::ghosts(buf, &hdr)
        .unwrap_or(&[])
        .chunks_exact(GHOST_PRINT_SIZE)
        .filter(|p| *p == print)
        .count()
}

#[test]
fn a_key_comes_back_protected_once_per_eviction() {
    let mut buf = fresh(65536);
    fill_p(&mut buf, "once", 0..100, NOW);
    fill_p(&mut buf, "flood", 0..400, NOW + 1);
    assert!(!present(&mut buf, "once-0"));
    // (The test's key hash is weak: other keys share the fingerprint.)
    let before = ghost_matches(&buf, "once-0");
    assert!(before > 0);
    put_with_p(&mut buf, b"once-0", &[7; 100], 0, NOW + 2, true, true);
    assert_ne!(raw_flags(&buf, "once-0").unwrap() & FLAG_PROTECTED, 0);
    // Taken out of the record once.
    assert_eq!(ghost_matches(&buf, "once-0"), before - 1);
    check_page(&buf, MIN_SLOTS, Some(&slot_hash)).unwrap();
}

#[test]
fn a_key_moved_back_from_the_protected_part_and_evicted_is_not_remembered() {
    let mut buf = fresh(65536);
    // Read once, then pushed out of the protected part by entries read later and more often.
    fill_p(&mut buf, "old", 0..100, NOW);
    for i in 0..100 {
        get_p(&mut buf, format!("old-{i}").as_bytes(), NOW, true);
    }
    for round in 0..4u32 {
        let base = round as usize * 150;
        fill_p(&mut buf, "k", base..base + 150, NOW + 1 + round);
        for s in 0..2 {
            for i in base..base + 150 {
                get_p(
                    &mut buf,
                    format!("k-{i}").as_bytes(),
                    NOW + 1 + round + s,
                    true,
                );
            }
        }
    }
    fill_p(&mut buf, "new", 0..200, NOW + 10);
    assert!(!present(&mut buf, "old-0"), "demoted and evicted");
    put_with_p(&mut buf, b"old-0", &[7; 100], 0, NOW + 11, true, true);
    assert_eq!(
        raw_flags(&buf, "old-0").unwrap() & FLAG_PROTECTED,
        0,
        "back on probation: it was not read while last protected"
    );
}

#[test]
fn without_the_policy_pages_are_byte_for_byte_as_before() {
    // Cache::FastMmap's layout: reads set no bit and rebuilds write no ghost record.
    let mut buf = fresh(8192);
    for i in 0..400 {
        let key = format!("k-{i}");
        put(&mut buf, key.as_bytes(), &[3; 60], 0, NOW);
        get(&mut buf, key.as_bytes(), NOW);
    }
    let view = PageView::new(&buf);
    view.for_each_entry(|e| assert_eq!(e.flags, 0)).unwrap();
    let hdr = PageHeader::read(&buf);
    assert!(policy::ghosts(&buf, &hdr).is_none());
    let mut n = 0;
    view.for_each_entry(|_| n += 1).unwrap();
    assert!(n > 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Whatever the ghost record holds (a hint written beyond the entries), pages stay sound
    /// and hold what was stored.
    #[test]
    fn any_ghost_record_is_only_a_hint(
        garbage in proptest::collection::vec(any::<u8>(), 0..=1024),
        count in any::<u32>(),
        magic in any::<bool>(),
    ) {
        let mut buf = fresh(65536);
        let start = 65536 - ghost_size(65536);
        let end = (start + garbage.len()).min(65536);
        buf[start..end].copy_from_slice(&garbage[..end - start]);
        if magic {
            buf[start..start + 4].copy_from_slice(&GHOST_MAGIC.to_ne_bytes());
            buf[start + 4..start + 8].copy_from_slice(&(count % 600).to_ne_bytes());
        }
        for i in 0..800u32 {
            let key = format!("k-{}", i % 500);
            put_with_p(&mut buf, key.as_bytes(), &i.to_ne_bytes(), 0, NOW + i / 100, true, true);
            prop_assert_eq!(get_p(&mut buf, key.as_bytes(), NOW + i / 100, true), Some(i.to_ne_bytes().to_vec()));
        }
        check_page(&buf, MIN_SLOTS, Some(&slot_hash)).map_err(|c| TestCaseError::fail(c.0))?;
    }
}

#[test]
fn a_large_entry_takes_the_room_of_probation_and_of_a_grown_slot_table_not_of_protected_entries() {
    let mut buf = fresh(65536);
    for i in 0..6 {
        let key = format!("session-{i}");
        put_with_p(&mut buf, key.as_bytes(), &[1; 200], 0, NOW, true, true);
        get_p(&mut buf, key.as_bytes(), NOW + 1, true);
    }
    for i in 0..3000u32 {
        let key = format!("anon-{i}");
        put_with_p(
            &mut buf,
            key.as_bytes(),
            &[2; 100],
            0,
            NOW + 2 + i / 100,
            true,
            true,
        );
        if i % 700 == 699 {
            // Stored twice (protected, as a session saved twice in one request is).
            let big = format!("big-{i}");
            let grown = PageHeader::read(&buf).num_slots;
            for _ in 0..2 {
                put_with_p(
                    &mut buf,
                    big.as_bytes(),
                    &[3; 61_600],
                    0,
                    NOW + 2 + i / 100,
                    true,
                    true,
                );
            }
            assert!(grown > MIN_SLOTS, "the flood grew the slot table");
            check_page(&buf, MIN_SLOTS, Some(&slot_hash)).unwrap();
            let kept = (0..6)
                .filter(|s| present(&mut buf, &format!("session-{s}")))
                .count();
            assert_eq!(kept, 6, "after the large entry of round {i}");
        }
    }
}

#[test]
fn a_large_entry_takes_the_ghost_records_bytes_before_protected_entries() {
    // Nine protected sessions and a value that fits beside them only in the bytes the ghost
    // record keeps free: the record goes (it is a hint), the sessions stay.
    let mut buf = fresh(65536);
    for i in 0..9 {
        let key = format!("session-{i}");
        put_with_p(&mut buf, key.as_bytes(), &[1; 200], 0, NOW, true, true);
        get_p(&mut buf, key.as_bytes(), NOW + 1, true);
    }
    put_with_p(&mut buf, b"big", &[3; 62_000], 0, NOW + 2, true, true);
    check_page(&buf, MIN_SLOTS, Some(&slot_hash)).unwrap();
    assert!(present(&mut buf, "big"), "the large entry is stored");
    let kept = (0..9)
        .filter(|s| present(&mut buf, &format!("session-{s}")))
        .count();
    assert_eq!(kept, 9, "protected sessions kept beside the large entry");
}

#[test]
fn the_overflow_flag_is_kept_only_on_a_reference() {
    let mut buf = fresh(4096);
    let reference = [7u8; OVERFLOW_REF_SIZE];
    let mut req = store(b"large", &reference, 0);
    req.flags = FLAG_OVERFLOW;
    let mut page = PageMut::open(&mut buf, MIN_SLOTS).unwrap();
    page.store(&req, NOW, MIN_SLOTS).unwrap();
    let mut other = store(b"small", b"not a reference", 0);
    other.flags = FLAG_OVERFLOW;
    page.store(&other, NOW, MIN_SLOTS).unwrap();
    assert_eq!(raw_flags(&buf, "large"), Some(FLAG_OVERFLOW));
    assert_eq!(
        raw_flags(&buf, "small"),
        Some(0),
        "dropped from a value of another size"
    );
    // A reference with a modseq prefix keeps it too.
    let mut with_modseq = store(b"large2", &reference, 0);
    with_modseq.flags = FLAG_OVERFLOW;
    with_modseq.modseq = Some(9);
    let mut page = PageMut::open(&mut buf, MIN_SLOTS).unwrap();
    page.store(&with_modseq, NOW, MIN_SLOTS).unwrap();
    let e = page
        .peek(slot_hash(b"large2"), b"large2", NOW)
        .unwrap()
        .unwrap();
    assert_eq!((e.value, e.modseq), (&reference[..], Some(9)));
    assert_eq!(e.flags & FLAG_OVERFLOW, FLAG_OVERFLOW);
    // An entry whose flag and value length disagree (damage) fails the page's check.
    let mut words = buf.clone();
    let off = (0..words.len() - 5)
        .find(|&i| &words[i..i + 5] == b"small")
        .unwrap()
        - 24;
    let flags_at = off + FLAGS_OFFSET;
    words[flags_at..flags_at + 4].copy_from_slice(&FLAG_OVERFLOW.to_ne_bytes());
    assert!(check_page(&words, MIN_SLOTS, None).is_err());
}

#[test]
fn the_ghost_record_finds_every_fingerprint_it_holds_and_no_other() {
    for n in 0..12u32 {
        let mut buf = fresh(65536);
        let hashes: Vec<u32> = (0..n)
            .map(|i| i.wrapping_mul(0x01f3_5a27) ^ 0x55aa)
            .collect();
        let free_data = PageHeader::read(&buf).free_data as usize;
        policy::write_ghosts(&mut buf, free_data, 0, &hashes).unwrap();
        let hdr = PageHeader::read(&buf);
        for &h in &hashes {
            assert!(policy::is_ghost(&buf, &hdr, h), "{n} hashes: {h:#x}");
        }
        let prints: Vec<u16> = hashes.iter().map(|&h| policy::fingerprint(h)).collect();
        for probe in 0..2000u32 {
            let h = probe.wrapping_mul(0x9e37_79b9);
            let want = prints.contains(&policy::fingerprint(h));
            assert_eq!(policy::is_ghost(&buf, &hdr, h), want, "{n} hashes: {h:#x}");
        }
    }
}

#[test]
fn the_ghost_record_keeps_the_newest_fingerprints_in_order() {
    // A rebuild rewrites the record in place: the newest of what it held, then the new ones.
    let cap = policy::ghost_capacity(65536);
    let hashes: Vec<u32> = (0..6000u32)
        .map(|i| i.wrapping_mul(0x01f3_5a27) ^ 0x55aa)
        .collect();
    let mut buf = fresh(65536);
    let free_data = PageHeader::read(&buf).free_data as usize;
    let mut model: Vec<u16> = Vec::new();
    let mut at = 0;
    for step in [0usize, 7, 300, 1, 900, cap, 2 * cap, 5] {
        let batch = &hashes[at..at + step];
        at += step;
        let hdr = PageHeader::read(&buf);
        let old = policy::ghosts(&buf, &hdr).map_or(0, |g| g.len() / GHOST_PRINT_SIZE);
        policy::write_ghosts(&mut buf, free_data, old, batch).unwrap();
        model.extend(batch.iter().map(|&h| policy::fingerprint(h)));
        let drop = model.len().saturating_sub(cap);
        model.drain(..drop);
        let hdr = PageHeader::read(&buf);
        let held: Vec<u16> = policy::ghosts(&buf, &hdr)
            .unwrap()
            .chunks_exact(GHOST_PRINT_SIZE)
            .map(|p| u16::from_ne_bytes([p[0], p[1]]))
            .collect();
        assert_eq!(held, model, "after a batch of {step}");
        for (i, &h) in hashes[..at].iter().enumerate().rev().take(50) {
            let want = model.contains(&policy::fingerprint(h));
            assert_eq!(policy::is_ghost(&buf, &hdr, h), want, "key {i}");
        }
    }
}
