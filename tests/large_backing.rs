//! Values larger than a page behind a backing store and with compression (issue 24's second
//! step): read-through, write-through and write-back of large values, dirty large values
//! written back with their bytes exactly once and never lost to eviction, replacement,
//! `flush` or `clear`; compression first (a value that fits its page once compressed stays in
//! it); forked write-back writers over a shared store, one of them SIGKILLed, with no
//! acknowledged write lost beyond the reset rule and no block leaked after `check`.
//!
//! `FASTMMAP_STRESS=long` runs more operations and kills.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use fastmmap::{
    Backing, BackingError, Cache, CacheBuilder, Error, Expiry, ManualClock, Update, WriteMode,
};

const NUM_PAGES: u32 = 4;
const PAGE_SIZE: u32 = 16 * 1024;
const AREA: u64 = 4 << 20;
const MAX_VALUE: u32 = 1 << 20;
const BLOCK: u64 = 4096;

/// A key and a value.
type Pair = (Vec<u8>, Vec<u8>);

/// A backing store in memory that counts how often each (key, value) reached it.
#[derive(Default)]
struct Mem {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    writes: Mutex<HashMap<Pair, usize>>,
    loads: AtomicUsize,
    stores: AtomicUsize,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mem>);

impl Shared {
    fn put(&self, k: &[u8], v: &[u8]) {
        self.0.map.lock().unwrap().insert(k.to_vec(), v.to_vec());
    }
    fn value(&self, k: &[u8]) -> Option<Vec<u8>> {
        self.0.map.lock().unwrap().get(k).cloned()
    }
    fn stores(&self) -> usize {
        self.0.stores.load(Ordering::SeqCst)
    }
    fn loads(&self) -> usize {
        self.0.loads.load(Ordering::SeqCst)
    }
    /// The (key, value) pairs that reached the store more than once.
    fn written_twice(&self) -> Vec<String> {
        self.0
            .writes
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|((k, v), n)| format!("{} ({} bytes) x{n}", String::from_utf8_lossy(k), v.len()))
            .collect()
    }
}

impl Backing for Shared {
    fn load(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackingError> {
        self.0.loads.fetch_add(1, Ordering::SeqCst);
        Ok(self.value(key))
    }
    fn store(&self, key: &[u8], value: &[u8], _: Option<SystemTime>) -> Result<(), BackingError> {
        self.0.stores.fetch_add(1, Ordering::SeqCst);
        *self
            .0
            .writes
            .lock()
            .unwrap()
            .entry((key.to_vec(), value.to_vec()))
            .or_default() += 1;
        self.put(key, value);
        Ok(())
    }
    fn delete(&self, key: &[u8]) -> Result<(), BackingError> {
        self.0.map.lock().unwrap().remove(key);
        Ok(())
    }
}

fn large(path: &Path) -> CacheBuilder {
    large_with(Cache::builder(), path)
}

/// `builder` for a file at `path` with this test's geometry and overflow area.
fn large_with(builder: CacheBuilder, path: &Path) -> CacheBuilder {
    builder
        .path(path)
        .num_pages(NUM_PAGES)
        .page_size(PAGE_SIZE)
        .overflow_size(AREA)
        .max_value_size(MAX_VALUE)
        .lock_timeout(Duration::from_secs(30))
}

fn backed(path: &Path, store: &Shared, mode: WriteMode) -> Cache {
    large(path)
        .backing(store.clone())
        .write_mode(mode)
        .open()
        .expect("open")
}

/// Asserts that the store holds `want` under `key` (without printing megabytes on failure).
fn assert_stored(store: &Shared, key: &[u8], want: &[u8]) {
    let got = store.value(key);
    assert!(
        got.as_deref() == Some(want),
        "{:?}: the store holds {:?} bytes ({:?}), expected {} ({:?})",
        String::from_utf8_lossy(key),
        got.as_ref().map(Vec::len),
        got.as_ref().map(|v| check_value(key, v)),
        want.len(),
        check_value(key, want)
    );
}

fn used(cache: &Cache) -> u64 {
    cache.stats().expect("stats").overflow_used_bytes
}

/// Bytes of the overflow area the live uncompressed large values of `cache` should hold.
fn expected_use(cache: &Cache) -> u64 {
    let max = cache.max_entry_size();
    cache
        .iter()
        .map(|r| r.expect("entry"))
        .filter(|(k, e)| (24 + k.len() + e.value.len()).next_multiple_of(4) > max)
        .map(|(_, e)| (e.value.len() as u64).div_ceil(BLOCK) * BLOCK)
        .sum()
}

#[test]
fn read_through_caches_a_large_value_and_serves_it_from_the_file() {
    let dir = temp_dir();
    let store = Shared::default();
    let value = make_value(b"big", 1, 300_000);
    store.put(b"big", &value);
    let cache = backed(&dir.path().join("c"), &store, WriteMode::Through);
    assert_eq!(cache.get(b"big").unwrap().as_deref(), Some(&value[..]));
    assert_eq!(store.loads(), 1);
    // Cached in the overflow area: the next reads do not go to the store.
    assert_eq!(used(&cache), 300_000u64.div_ceil(BLOCK) * BLOCK);
    assert_eq!(cache.get(b"big").unwrap().as_deref(), Some(&value[..]));
    assert_eq!(
        cache.get_with(b"big", |v| v.len()).unwrap(),
        Some(value.len())
    );
    assert_eq!(store.loads(), 1);
    let entry = cache.entry(b"big").unwrap().expect("cached");
    assert_eq!(entry.value, value);
    assert!(!entry.flags.is_dirty());
    // Evicted from the cache only: read through again, whole.
    assert!(cache.evict(b"big").unwrap());
    assert_eq!(used(&cache), 0);
    assert_eq!(cache.get(b"big").unwrap().as_deref(), Some(&value[..]));
    assert_eq!(store.loads(), 2);
    // A value over max_value_size is handed over but not cached.
    let huge = make_value(b"huge", 1, MAX_VALUE as usize + 1);
    store.put(b"huge", &huge);
    assert_eq!(cache.get(b"huge").unwrap().as_deref(), Some(&huge[..]));
    assert_eq!(cache.entry(b"huge").unwrap(), None);
}

#[test]
fn write_through_stores_large_values_in_the_store_and_the_file() {
    let dir = temp_dir();
    let store = Shared::default();
    let cache = backed(&dir.path().join("c"), &store, WriteMode::Through);
    for seq in 0..6u64 {
        let v = make_value(b"big", seq, 100_000 + seq as usize * 50_000);
        assert!(cache.set(b"big", &v).unwrap());
        assert_stored(&store, b"big", &v.clone());
        let entry = cache.entry(b"big").unwrap().expect("cached");
        assert_eq!(entry.value, v);
        assert!(!entry.flags.is_dirty(), "marked clean once stored");
        assert_eq!(used(&cache), expected_use(&cache), "replaced blocks freed");
    }
    assert_eq!(store.loads(), 0);
    // update and get_or_insert_with see and store whole large values.
    let now = cache
        .update(b"big", |old| {
            // The closure sees the whole large value.
            assert_eq!(old.map(|v| check_value(b"big", v).unwrap()), Some(5));
            Update::Set(make_value(b"big", 100, 200_000))
        })
        .unwrap();
    assert_eq!(now, Some(make_value(b"big", 100, 200_000)));
    assert_stored(&store, b"big", &make_value(b"big", 100, 200_000));
    assert!(!cache.entry(b"big").unwrap().unwrap().flags.is_dirty());
    let made = cache
        .get_or_insert_with(b"other", || make_value(b"other", 1, 250_000))
        .unwrap();
    assert_stored(&store, b"other", &made);
    // take gives the value back and deletes it everywhere; remove too.
    let taken = cache.take(b"big").unwrap().expect("taken");
    assert_eq!(check_value(b"big", &taken), Ok(100));
    assert_eq!(store.value(b"big"), None);
    assert!(cache.remove(b"other").unwrap());
    assert_eq!(store.value(b"other"), None);
    assert_eq!(used(&cache), 0);
    assert_eq!(store.written_twice(), Vec::<String>::new());
}

#[test]
fn write_back_writes_dirty_large_values_once_and_never_loses_them() {
    let dir = temp_dir();
    let store = Shared::default();
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let cache = large(&dir.path().join("c"))
        .clock(clock.clone())
        .backing(store.clone())
        .write_mode(WriteMode::Back)
        .open()
        .expect("open");
    let key = |i: u64| format!("key{i}").into_bytes();
    // Dirty and only in the file until flushed.
    for i in 0..4 {
        let v = make_value(&key(i), 1, 200_000 + i as usize * 1000);
        assert!(cache.set(&key(i), &v).unwrap());
        assert!(cache.entry(&key(i)).unwrap().unwrap().flags.is_dirty());
    }
    assert_eq!(store.stores(), 0);
    assert_eq!(cache.flush().unwrap(), 4);
    for i in 0..4 {
        assert_stored(
            &store,
            &key(i),
            &make_value(&key(i), 1, 200_000 + i as usize * 1000),
        );
        assert!(!cache.entry(&key(i)).unwrap().unwrap().flags.is_dirty());
    }
    assert_eq!(cache.flush().unwrap(), 0, "clean now");
    assert_eq!(store.stores(), 4);
    // Replacing a dirty large value by another supersedes it; a dirty large value replaced
    // by a small one (which fits its page) too; the store gets the last of each.
    cache
        .set(&key(0), &make_value(&key(0), 2, 300_000))
        .unwrap();
    cache
        .set(&key(0), &make_value(&key(0), 3, 310_000))
        .unwrap();
    cache
        .set(&key(1), &make_value(&key(1), 2, 300_000))
        .unwrap();
    cache.set(&key(1), &make_value(&key(1), 3, 100)).unwrap();
    assert_eq!(used(&cache), expected_use(&cache));
    assert_eq!(cache.flush().unwrap(), 2);
    assert_stored(&store, &key(0), &make_value(&key(0), 3, 310_000));
    assert_stored(&store, &key(1), &make_value(&key(1), 3, 100));
    // Far more dirty large values than the area holds: each set succeeds, and what makes
    // room writes dirty values back before it evicts them.
    let many = 40u64;
    for i in 0..many {
        let v = make_value(&key(i), 10, 250_000);
        assert!(cache.set(&key(i), &v).unwrap(), "set {i}");
    }
    assert!(used(&cache) <= AREA);
    cache.flush().unwrap();
    for i in 0..many {
        assert_stored(&store, &key(i), &make_value(&key(i), 10, 250_000));
    }
    // Dirty values dropped by clear (Perl's empty) are written back first.
    for i in 0..4 {
        cache
            .set(&key(i), &make_value(&key(i), 20, 150_000))
            .unwrap();
    }
    cache.clear().unwrap();
    assert_eq!(used(&cache), 0);
    for i in 0..4 {
        assert_stored(&store, &key(i), &make_value(&key(i), 20, 150_000));
    }
    // evict(key) writes a dirty large value back before it drops it.
    cache
        .set(&key(7), &make_value(&key(7), 30, 150_000))
        .unwrap();
    assert!(cache.evict(&key(7)).unwrap());
    assert_stored(&store, &key(7), &make_value(&key(7), 30, 150_000));
    // An expired dirty large value that `purge` drops is written back first, with its bytes.
    let victim = key(50);
    cache
        .set_with(
            &victim,
            &make_value(&victim, 40, 150_000),
            Expiry::After(Duration::from_secs(10)),
        )
        .unwrap();
    clock.advance(Duration::from_secs(100));
    assert!(cache.purge().unwrap() >= 1);
    assert_eq!(cache.entry(&victim).unwrap(), None);
    assert_stored(&store, &victim, &make_value(&victim, 40, 150_000));
    assert_eq!(store.written_twice(), Vec::<String>::new(), "written once");
    assert_eq!(cache.check_overflow().unwrap(), (Vec::new(), 0));
}

#[cfg(feature = "lz4")]
#[test]
fn compression_comes_first_and_large_values_compress_too() {
    let dir = temp_dir();
    let store = Shared::default();
    let cache = large(&dir.path().join("c"))
        .compression(fastmmap::Compression::lz4())
        .backing(store.clone())
        .write_mode(WriteMode::Back)
        .open()
        .expect("open");
    // Larger than a page, but it fits once compressed: it stays in the page.
    let text: Vec<u8> = b"a value that compresses well "
        .iter()
        .copied()
        .cycle()
        .take(200_000)
        .collect();
    cache.set(b"text", &text).unwrap();
    assert_eq!(used(&cache), 0);
    let entry = cache.entry(b"text").unwrap().unwrap();
    assert_eq!(entry.value, text);
    assert!(entry.flags.is_compressed());
    // Incompressible: stored as it is, in the overflow area.
    let noise = make_value(b"noise", 1, 300_000);
    cache.set(b"noise", &noise).unwrap();
    assert_eq!(used(&cache), 300_000u64.div_ceil(BLOCK) * BLOCK);
    assert_eq!(cache.get(b"noise").unwrap().as_deref(), Some(&noise[..]));
    assert!(
        !cache
            .entry(b"noise")
            .unwrap()
            .unwrap()
            .flags
            .is_compressed()
    );
    // Compressed yet still too large for a page: compressed, in the overflow area.
    let mut rng = Rng::new(7);
    let half: Vec<u8> = (0..900_000).map(|_| b'a' + rng.below(4) as u8).collect();
    cache.set(b"half", &half).unwrap();
    let entry = cache.entry(b"half").unwrap().unwrap();
    assert!(entry.flags.is_compressed());
    assert_eq!(entry.value, half);
    assert!(used(&cache) > 300_000u64.div_ceil(BLOCK) * BLOCK);
    assert_eq!(cache.get(b"half").unwrap().as_deref(), Some(&half[..]));
    // Written back decompressed.
    assert_eq!(cache.flush().unwrap(), 3);
    assert_stored(&store, b"text", &text);
    assert_stored(&store, b"noise", &noise);
    assert_stored(&store, b"half", &half.clone());
    // Read through compressed.
    cache.clear().unwrap();
    assert_eq!(used(&cache), 0);
    assert_eq!(cache.get(b"half").unwrap().as_deref(), Some(&half[..]));
    assert!(cache.entry(b"half").unwrap().unwrap().flags.is_compressed());
    assert_eq!(cache.check_overflow().unwrap(), (Vec::new(), 0));
}

/// A backing store of files in a directory, one per key, shared by forked processes: a store
/// writes a temporary file and renames it over the key's, so that a reader sees one whole
/// value. Each store also appends `key seq` to a log, for the final check that the store's
/// writes of a key came in order.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn path(&self, key: &[u8]) -> PathBuf {
        self.dir.join(common::hex(key))
    }
}

impl Backing for Files {
    fn load(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackingError> {
        Ok(common::read_if_present(&self.path(key))?)
    }
    fn store(&self, key: &[u8], value: &[u8], _: Option<SystemTime>) -> Result<(), BackingError> {
        check_value(key, value)?;
        static N: AtomicUsize = AtomicUsize::new(0);
        let tmp = self.dir.join(format!(
            "tmp-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&tmp, value)?;
        std::fs::rename(&tmp, self.path(key))?;
        Ok(())
    }
    fn delete(&self, key: &[u8]) -> Result<(), BackingError> {
        match std::fs::remove_file(self.path(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

const KEYS: u64 = 12;

fn wb_key(worker: u64, i: u64) -> Vec<u8> {
    format!("w{worker}:k{i:02}").into_bytes()
}

/// Forked write-back writers of large and small values over one store of files, worker 0
/// SIGKILLed at a random instant (often inside a large store's structural change). After a
/// final `flush`: every write a worker had acknowledged (its `set` returned) is in the store,
/// or a later one of its key, unless the key's page was reset (the documented rule: a page a
/// process died changing is reset, and its dirty entries are lost and counted); every value
/// read is whole; and once `check` has swept the file no overflow block is held that no entry
/// references.
#[test]
fn forked_write_back_writers_one_killed_lose_no_acknowledged_large_write() {
    let _serial = serial();
    let seed = seed("forked_write_back_writers_one_killed_lose_no_acknowledged_large_write");
    let kills = scaled(6, 40);
    let mut rng = Rng::new(seed);
    for kind in [NATIVE, ROBUST] {
        let deadline = Instant::now() + Duration::from_secs(scaled(120, 900) as u64);
        for round in 0..kills {
            assert!(Instant::now() < deadline, "{kind:?}: ran out of time");
            run_killed_round(kind, rng.next_u64(), round);
        }
    }
}

fn run_killed_round(kind: Kind, seed: u64, round: usize) {
    let dir = temp_dir();
    let files = dir.path().join("store");
    std::fs::create_dir(&files).unwrap();
    let path = dir.path().join("c");
    let open = |path: &Path, files: &Path| {
        large_with(kind.builder(), path)
            .backing(Files {
                dir: files.to_path_buf(),
            })
            .write_mode(WriteMode::Back)
            .open()
    };
    drop(open(&path, &files).expect("create"));
    let workers = 3u64;
    let ops = scaled(60, 600) as u64;
    let acks: Vec<PathBuf> = (0..workers)
        .map(|w| dir.path().join(format!("acks-{w}")))
        .collect();
    let mut children = Children::new();
    let ready = Pipe::new();
    let mut pids = Vec::new();
    for w in 0..workers {
        let (path, files, acks) = (path.clone(), files.clone(), acks[w as usize].clone());
        let ready = &ready;
        pids.push(children.spawn(move || {
            use std::io::Write;
            let cache = open(&path, &files).map_err(|e| e.to_string())?;
            let mut log = std::fs::File::create(&acks).map_err(|e| e.to_string())?;
            let mut rng = Rng::new(seed ^ (w + 1));
            let mut seqs = [0u64; KEYS as usize];
            ready.release(1);
            // Worker 0 runs until it is killed (bounded all the same).
            let ops = if w == 0 { 100_000 } else { ops };
            for _ in 0..ops {
                let i = rng.below(KEYS);
                let k = wb_key(w, i);
                if rng.chance(25) {
                    if let Some(v) = cache.get(&k).map_err(|e| format!("get: {e}"))? {
                        check_value(&k, &v)?;
                    }
                    continue;
                }
                let seq = seqs[i as usize] + 1;
                let len = if rng.chance(70) {
                    rng.range(20_000, 400_000)
                } else {
                    rng.range(30, 3000)
                };
                match cache.set(&k, &make_value(&k, seq, len)) {
                    Ok(_) => {}
                    // The area full of other processes' writes in flight: not acknowledged.
                    Err(Error::OverflowFull { .. }) => continue,
                    Err(e) => return Err(format!("set: {e}")),
                }
                seqs[i as usize] = seq;
                log.write_all(&(i << 32 | seq).to_le_bytes())
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }));
    }
    assert!(
        ready.wait_timeout(Duration::from_secs(30)),
        "workers did not start"
    );
    let mut rng = Rng::new(seed);
    std::thread::sleep(Duration::from_millis(10 + rng.below(150)));
    assert_eq!(children.kill(pids[0]), Exit::Signal(libc::SIGKILL));
    for &pid in &pids[1..] {
        assert_eq!(children.wait(pid), Exit::Code(0), "{kind:?}: worker failed");
    }
    let cache = open(&path, &files).expect("open after the kill");
    cache.flush().expect("flush");
    let stats = cache.stats().expect("stats");
    let backing = Files { dir: files.clone() };
    let mut checked = 0;
    for w in 0..workers {
        let log = std::fs::read(&acks[w as usize]).unwrap_or_default();
        let mut last = [0u64; KEYS as usize];
        for ack in log.chunks_exact(8) {
            let ack = u64::from_le_bytes(ack.try_into().unwrap());
            last[(ack >> 32) as usize] = ack & 0xffff_ffff;
        }
        for (i, &seq) in last.iter().enumerate().filter(|(_, s)| **s > 0) {
            let k = wb_key(w, i as u64);
            let found = match backing.load(&k).unwrap() {
                Some(v) => check_value(&k, &v).unwrap_or_else(|e| panic!("{kind:?}: {e}")),
                None => 0,
            };
            if found < seq {
                let page = key_page(kind.layout, &k, NUM_PAGES);
                assert!(
                    stats.pages[page as usize].resets > 0,
                    "{kind:?} round {round}: {:?}: acknowledged {seq}, the store has {found} \
                     (FASTMMAP_SEED={seed})",
                    String::from_utf8_lossy(&k)
                );
            }
            // What the cache holds of the key is whole too.
            if let Some(v) = cache.get(&k).unwrap() {
                check_value(&k, &v).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            }
            checked += 1;
        }
    }
    assert!(checked > 0);
    let freed = cache.reclaim_overflow().expect("check");
    assert_eq!(cache.check_overflow().unwrap(), (Vec::new(), 0));
    assert_eq!(
        used(&cache),
        expected_use(&cache),
        "{kind:?}: blocks leaked"
    );
    eprintln!(
        "{kind:?} round {round}: {checked} acknowledged keys checked, {} page resets, {} dirty \
         lost, {freed} blocks reclaimed by check",
        stats.resets, stats.dirty_lost
    );
    cache.clear().expect("clear");
    assert_eq!(used(&cache), 0);
}

#[test]
fn write_back_update_take_and_a_full_area_under_update() {
    let dir = temp_dir();
    let store = Shared::default();
    let cache = backed(&dir.path().join("c"), &store, WriteMode::Back);
    cache.set(b"u", &make_value(b"u", 1, 200_000)).unwrap();
    // The closure sees the dirty large value whole; its result is stored dirty.
    let now = cache
        .update(b"u", |old| {
            assert_eq!(old.map(|v| check_value(b"u", v).unwrap()), Some(1));
            Update::Set(make_value(b"u", 2, 400_000))
        })
        .unwrap();
    assert_eq!(now.map(|v| v.len()), Some(400_000));
    assert!(cache.entry(b"u").unwrap().unwrap().flags.is_dirty());
    assert_eq!(store.stores(), 0);
    assert_eq!(used(&cache), expected_use(&cache));
    // A dirty large value taken is deleted from the store and handed over.
    let taken = cache.take(b"u").unwrap().expect("taken");
    assert_eq!(check_value(b"u", &taken), Ok(2));
    assert_eq!(store.value(b"u"), None);
    assert_eq!(used(&cache), 0);
    // The area full of dirty values: an update (which holds its page's write-back lock) that
    // needs room gets OverflowFull and changes nothing; the dirty values stay, and a flush
    // writes them all.
    let key = |i: u64| format!("full{i}").into_bytes();
    let mut stored = Vec::new();
    for i in 0..16u64 {
        match cache.set(&key(i), &make_value(&key(i), 1, 250_000)) {
            Ok(true) => stored.push(i),
            other => panic!("set {i}: {other:?}"),
        }
    }
    let before = store.stores();
    let big = make_value(b"late", 1, 900_000);
    let updated = cache.update(b"late", |_| Update::Set(big.clone()));
    assert!(
        matches!(updated, Err(Error::OverflowFull { .. })),
        "{:?}",
        updated.map(|v| v.map(|v| v.len()))
    );
    assert_eq!(cache.entry(b"late").unwrap(), None);
    assert_eq!(store.stores(), before, "nothing written back meanwhile");
    cache.flush().unwrap();
    for i in stored {
        assert_stored(&store, &key(i), &make_value(&key(i), 1, 250_000));
    }
    assert_eq!(store.written_twice(), Vec::<String>::new());
    assert_eq!(cache.check_overflow().unwrap(), (Vec::new(), 0));
}

/// A value over `max_value_size` is `ValueTooLarge` (the area's limit, as a plain cache says)
/// in every write mode, from `set` and from `update` alike, and changes nothing.
#[test]
fn a_value_over_max_value_size_is_value_too_large_in_every_mode() {
    for mode in [WriteMode::Through, WriteMode::Back] {
        let dir = temp_dir();
        let store = Shared::default();
        let cache = backed(&dir.path().join("c"), &store, mode);
        let old = make_value(b"k", 1, 200_000);
        cache.set(b"k", &old).unwrap();
        let over = vec![7u8; MAX_VALUE as usize + 1];
        let refused = |r: Result<(), Error>, how: &str| match r {
            Err(Error::ValueTooLarge { len, max, .. }) => {
                assert_eq!(
                    (len, max),
                    (over.len(), MAX_VALUE as usize),
                    "{mode:?} {how}"
                );
            }
            other => panic!("{mode:?} {how}: expected ValueTooLarge, got {other:?}"),
        };
        refused(cache.set(b"k", &over).map(drop), "set");
        refused(
            cache.update(b"k", |_| Update::Set(over.clone())).map(drop),
            "update",
        );
        assert_eq!(
            cache.get(b"k").unwrap().as_deref(),
            Some(&old[..]),
            "{mode:?}"
        );
    }
}

/// Write-through: once the backing store has taken a `set`'s value, a cache that cannot keep
/// the new value (here the area is full of another handle's dirty values, which a
/// write-through `set`, holding its page's write-back lock, may not write back) gets the
/// error, and keeps no copy of the key either: the old value would be stale. The next `get`
/// reads the store's value through.
#[test]
fn a_write_through_the_cache_cannot_keep_leaves_no_stale_copy() {
    let dir = temp_dir();
    let path = dir.path().join("c");
    let store = Shared::default();
    let back = backed(&path, &store, WriteMode::Back);
    let through = backed(&path, &store, WriteMode::Through);
    through.set(b"late", b"old and small").unwrap();
    assert_stored(&store, b"late", b"old and small");
    let key = |i: u64| format!("full{i}").into_bytes();
    for i in 0..16u64 {
        assert!(back.set(&key(i), &make_value(&key(i), 1, 250_000)).unwrap());
    }
    let big = make_value(b"late", 2, 900_000);
    let set = through.set(b"late", &big);
    assert!(
        matches!(set, Err(Error::OverflowFull { .. })),
        "{set:?}: expected OverflowFull"
    );
    assert_stored(&store, b"late", &big);
    assert_eq!(
        through.entry(b"late").unwrap().map(|e| e.value.len()),
        None,
        "the old value is no copy of the store's"
    );
    let got = through.get(b"late").unwrap().expect("read through");
    assert_eq!(check_value(b"late", &got), Ok(2));
    back.flush().unwrap();
    assert_eq!(store.written_twice(), Vec::<String>::new());
}
