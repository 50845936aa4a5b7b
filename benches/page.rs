//! The floor: page operations on a plain 64 KiB `Vec<u8>` initialised with `PageMut::init`,
//! with no file, no lock, no clock and no key hash (slot hashes are computed up front).
//! 10-byte keys, 100-byte values, 89 starting slots. Needs `--features internals`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use fastmmap::page::consts::MIN_SLOTS;
use fastmmap::page::{NewEntry, PageMut};

const PAGE_SIZE: usize = 65536;
/// Entries per page in the cache benches (10,000 keys over 89 pages).
const HOT_KEYS: usize = 112;
/// Distinct keys for the eviction bench: far more than a page holds (about 480).
const EVICTION_KEYS: usize = 10_000;
const NOW: u32 = 1_700_000_000;

struct Key {
    bytes: [u8; 10],
    slot_hash: u32,
}

fn keys(prefix: u8, n: usize) -> Vec<Key> {
    (0..n)
        .map(|i| {
            let mut bytes = [b'0'; 10];
            bytes[0] = prefix;
            let mut n = i;
            for b in bytes[1..].iter_mut().rev() {
                *b = b'0' + (n % 10) as u8;
                n /= 10;
            }
            let slot_hash = (xxhash_rust::xxh3::xxh3_64(&bytes) >> 32) as u32;
            Key { bytes, slot_hash }
        })
        .collect()
}

fn req<'k>(k: &'k Key, value: &'k [u8]) -> NewEntry<'k> {
    NewEntry {
        slot_hash: k.slot_hash,
        key: &k.bytes,
        value,
        expire_on: 0,
        flags: 0,
        modseq: None,
    }
}

/// Cycles through a slice forever.
struct Rotor<'a, T> {
    items: &'a [T],
    next: usize,
}

impl<'a, T> Rotor<'a, T> {
    fn new(items: &'a [T]) -> Self {
        Rotor { items, next: 0 }
    }

    #[inline]
    fn next(&mut self) -> &'a T {
        let item = &self.items[self.next];
        self.next += 1;
        if self.next == self.items.len() {
            self.next = 0;
        }
        item
    }
}

fn page_benches(c: &mut Criterion) {
    let value = [0x5au8; 100];
    let hot = keys(b'k', HOT_KEYS);
    let absent = keys(b'm', HOT_KEYS);
    let mut buf = vec![0u8; PAGE_SIZE];
    let mut page = PageMut::init(&mut buf, MIN_SLOTS);
    for k in &hot {
        page.store(&req(k, &value), NOW, MIN_SLOTS).expect("store");
    }
    for k in &hot {
        assert!(
            page.get(k.slot_hash, &k.bytes, NOW, true)
                .expect("get")
                .is_some()
        );
    }

    let mut g = c.benchmark_group("page");
    g.bench_function("get_hit", |b| {
        let mut keys = Rotor::new(&hot);
        b.iter(|| {
            let k = keys.next();
            page.get(k.slot_hash, black_box(&k.bytes), NOW, true)
                .unwrap()
                .map(|e| e.value.len())
        });
    });
    g.bench_function("get_hit_copy", |b| {
        let mut keys = Rotor::new(&hot);
        b.iter(|| {
            let k = keys.next();
            page.get(k.slot_hash, black_box(&k.bytes), NOW, true)
                .unwrap()
                .map(|e| e.value.to_vec())
        });
    });
    g.bench_function("get_miss", |b| {
        let mut keys = Rotor::new(&absent);
        b.iter(|| {
            let k = keys.next();
            page.get(k.slot_hash, black_box(&k.bytes), NOW, true)
                .unwrap()
                .map(|e| e.value.len())
        });
    });
    // Each overwrite appends; a full page is compacted now and then, as in the cache.
    g.bench_function("store_overwrite", |b| {
        let mut keys = Rotor::new(&hot);
        b.iter(|| {
            page.store(&req(keys.next(), black_box(&value)), NOW, MIN_SLOTS)
                .unwrap()
        });
    });

    let many = keys(b'e', EVICTION_KEYS);
    let mut buf = vec![0u8; PAGE_SIZE];
    let mut page = PageMut::init(&mut buf, MIN_SLOTS);
    for k in &many {
        page.store(&req(k, &value), NOW, MIN_SLOTS).expect("store");
    }
    g.bench_function("store_evicting", |b| {
        let mut keys = Rotor::new(&many);
        b.iter(|| {
            page.store(&req(keys.next(), black_box(&value)), NOW, MIN_SLOTS)
                .unwrap()
        });
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = page_benches
}
criterion_main!(benches);
