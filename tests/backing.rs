//! A backing store behind the cache: read-through, write-through, write-back, cache_not_found,
//! empty. The behaviours of Cache::FastMmap's t/4, t/5, t/7, t/10 and t/22, ported (our own
//! tests, on our own API), plus what the port adds: failing stores, callbacks that use the
//! cache, dirty entries lost in page resets, `update_entry` / `update_with`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fastmmap::{
    Backing, BackingError, Cache, CacheBuilder, EntryFlags, Error, Expiry, Layout, ManualClock,
    Update, WriteMode,
};

/// What happens elsewhere while a call of the store is on its way.
type Hook = Box<dyn FnOnce() + Send>;

/// A backing store in memory: a map, call counters, and switches to fail or to refuse loads.
#[derive(Default)]
struct Mem {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    loads: AtomicUsize,
    stores: AtomicUsize,
    deletes: AtomicUsize,
    failing: AtomicBool,
    /// Perl's tests without a `read_cb`: loads find nothing.
    write_only: bool,
    /// Set: `store` reads this cache (a callback that uses the cache).
    reader: OnceLock<Cache>,
    /// Set: `store` pauses a little before it stores, as a real store's round trip does,
    /// which widens every race between writers of one key.
    slow: AtomicBool,
    /// Run once by the next `delete`, before it does anything: what happens elsewhere while a
    /// delete is on its way.
    on_delete: Mutex<Option<Hook>>,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mem>);

impl Shared {
    fn with(pairs: &[(&str, &str)]) -> Shared {
        let s = Shared::default();
        for (k, v) in pairs {
            s.put(k, v);
        }
        s
    }
    fn put(&self, k: &str, v: &str) {
        self.0
            .map
            .lock()
            .unwrap()
            .insert(k.as_bytes().to_vec(), v.as_bytes().to_vec());
    }
    fn snapshot(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.0.map.lock().unwrap().clone()
    }
    fn wipe(&self) {
        self.0.map.lock().unwrap().clear();
    }
    fn len(&self) -> usize {
        self.0.map.lock().unwrap().len()
    }
    fn check(&self) -> Result<(), BackingError> {
        if self.0.failing.load(Ordering::SeqCst) {
            Err("the database is down".into())
        } else {
            Ok(())
        }
    }
}

impl Backing for Shared {
    fn load(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackingError> {
        self.check()?;
        self.0.loads.fetch_add(1, Ordering::SeqCst);
        if self.0.write_only {
            return Ok(None);
        }
        Ok(self.0.map.lock().unwrap().get(key).cloned())
    }
    fn store(
        &self,
        key: &[u8],
        value: &[u8],
        _expires_at: Option<SystemTime>,
    ) -> Result<(), BackingError> {
        self.check()?;
        if let Some(cache) = self.0.reader.get() {
            // Callbacks run without a page lock: using the cache here is no Reentrant error.
            cache.get(b"some other key")?;
        }
        if self.0.slow.load(Ordering::Relaxed) {
            pause();
        }
        self.0.stores.fetch_add(1, Ordering::SeqCst);
        self.0
            .map
            .lock()
            .unwrap()
            .insert(key.to_vec(), value.to_vec());
        Ok(())
    }
    fn delete(&self, key: &[u8]) -> Result<(), BackingError> {
        let hook = self.0.on_delete.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        self.check()?;
        self.0.deletes.fetch_add(1, Ordering::SeqCst);
        self.0.map.lock().unwrap().remove(key);
        Ok(())
    }
}

/// A pause of 0 to about 100 µs, different on every call.
fn pause() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    let micros = (n.wrapping_mul(2_654_435_761) >> 7) % 100;
    if micros < 20 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(micros as u64));
    }
}

fn builder(dir: &tempfile::TempDir, store: &Shared, mode: WriteMode) -> CacheBuilder {
    Cache::builder()
        .path(dir.path().join("c"))
        .backing(store.clone())
        .write_mode(mode)
}

/// `n` random pairs from a seeded generator: 10-byte keys, values of `len` letters.
fn pairs(seed: u64, n: usize, len: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut rng = common::Rng::new(seed);
    let mut word = |n: usize| -> Vec<u8> { (0..n).map(|_| b'a' + rng.below(26) as u8).collect() };
    (0..n).map(|_| (word(10), word(len))).collect()
}

/// Sets `n` pairs (of seed 6543, values of 100 bytes) in `cache`; returns what `store` held
/// before with those pairs added: what the store and the cache must hold between them.
fn set_pairs(cache: &Cache, store: &Shared, n: usize) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut written = store.snapshot();
    for (k, v) in pairs(6543, n, 100) {
        cache.set(&k, &v).unwrap();
        written.insert(k, v);
    }
    written
}

fn cached(cache: &Cache) -> BTreeMap<Vec<u8>, Vec<u8>> {
    cache
        .iter()
        .map(|r| r.map(|(k, e)| (k, e.value)).unwrap())
        .collect()
}

fn as_map(items: &[(&str, &str)]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    items
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// t/4: write-back writes accumulate in the cache and reach the store only on eviction or
/// `empty`; read-through refills the cache from the store.
#[test]
fn write_back_reaches_the_store_on_empty_and_reads_come_back_through() {
    for layout in [Layout::Native, Layout::FastMmap] {
        let dir = tempfile::tempdir().unwrap();
        let store = Shared::with(&[("foo", "123abc"), ("bar", "456def")]);
        let cache = builder(&dir, &store, WriteMode::Back)
            .layout(layout)
            .num_pages(3)
            .page_size(32768)
            .open()
            .unwrap();
        let written = set_pairs(&cache, &store, 100);
        assert_eq!(store.len(), 2, "{layout:?}: nothing written back yet");
        assert!(
            cache
                .entry(&written.keys().nth(3).unwrap().clone())
                .unwrap()
                .is_some()
        );

        cache.empty().unwrap();
        assert!(cached(&cache).is_empty());
        assert_eq!(
            store.snapshot(),
            written,
            "{layout:?}: empty wrote everything back"
        );

        for (k, v) in &written {
            assert_eq!(cache.get(k).unwrap().as_ref(), Some(v), "read through");
        }
        store.wipe();
        for (k, v) in &written {
            assert_eq!(
                cache.get(k).unwrap().as_ref(),
                Some(v),
                "cached by the read-through"
            );
        }
        // Read-through values are clean: clearing writes nothing back.
        cache.clear().unwrap();
        assert!(cached(&cache).is_empty());
        assert_eq!(store.len(), 0);
    }
}

/// t/5: write-through keeps the store complete whatever the cache evicts.
#[test]
fn write_through_keeps_the_store_complete_through_evictions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Shared::with(&[("foo", "123abc"), ("bar", "456def")]);
    let cache = builder(&dir, &store, WriteMode::Through)
        .num_pages(13)
        .page_size(4096)
        .open()
        .unwrap();
    let written = set_pairs(&cache, &store, 3000);
    let in_cache = cached(&cache);
    assert_eq!(store.snapshot(), written);
    assert!(
        in_cache.len() > 100 && in_cache.len() < 1000,
        "{}",
        in_cache.len()
    );
    assert_eq!(cache.get(b"foo").unwrap(), Some(b"123abc".to_vec()));
    assert_eq!(cache.get(b"bar").unwrap(), Some(b"456def".to_vec()));
    for (k, v) in written.iter().chain(written.iter().rev()) {
        assert_eq!(cache.get(k).unwrap().as_ref(), Some(v));
    }
    assert_eq!(store.snapshot(), written);
    assert!(cache.iter().all(|r| !r.unwrap().1.flags.is_dirty()));
}

/// t/7: write-back through heavy eviction: the store and the cache together always hold every
/// write; removes delete from both; `empty` leaves everything in the store.
#[test]
fn write_back_through_evictions_loses_nothing_and_removes_delete() {
    for layout in [Layout::Native, Layout::FastMmap] {
        let dir = tempfile::tempdir().unwrap();
        let store = Shared::with(&[("foo", "123abc"), ("bar", "456def")]);
        let cache = builder(&dir, &store, WriteMode::Back)
            .layout(layout)
            .num_pages(23)
            .page_size(4096)
            .open()
            .unwrap();
        let mut written = set_pairs(&cache, &store, 3000);
        let in_cache = cached(&cache);
        assert!(
            store.len() < 2700,
            "{layout:?}: {} in the store",
            store.len()
        );
        assert!(
            in_cache.len() > 100,
            "{layout:?}: {} cached",
            in_cache.len()
        );
        let mut all = store.snapshot();
        all.extend(in_cache);
        assert_eq!(all, written, "{layout:?}: store + cache hold every write");

        assert_eq!(cache.get(b"foo").unwrap(), Some(b"123abc".to_vec()));
        for (k, v) in written.iter().chain(written.iter().rev()) {
            assert_eq!(cache.get(k).unwrap().as_ref(), Some(v), "{layout:?}");
        }
        let removed: Vec<Vec<u8>> = written.keys().take(301).cloned().collect();
        for k in &removed {
            cache.remove(k).unwrap();
            written.remove(k);
        }
        let mut all = store.snapshot();
        all.extend(cached(&cache));
        assert_eq!(all, written, "{layout:?}: removes reached both");
        for (k, v) in &written {
            assert_eq!(cache.get(k).unwrap().as_ref(), Some(v));
        }
        for k in &removed {
            assert_eq!(cache.get(k).unwrap(), None);
        }
        cache.empty().unwrap();
        assert_eq!(
            store.snapshot(),
            written,
            "{layout:?}: empty wrote back the rest"
        );
        assert_eq!(cache.keys().count(), 0);
    }
}

/// t/10: with `cache_not_found`, a key the store lacks is cached as absent and the store is
/// asked once; a dirty undef (Perl's `set($k, undef)`) is written back as a delete.
#[test]
fn cache_not_found_asks_the_store_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Shared::with(&[("foo", "123abc")]);
    let cache = builder(&dir, &store, WriteMode::Back)
        .cache_not_found(true)
        .num_pages(89)
        .page_size(4096)
        .open()
        .unwrap();
    assert_eq!(cache.get(b"foo").unwrap(), Some(b"123abc".to_vec()));
    assert_eq!(cache.get(b"bar").unwrap(), None);
    assert_eq!(store.0.loads.load(Ordering::SeqCst), 2);
    assert_eq!(cache.get(b"foo").unwrap(), Some(b"123abc".to_vec()));
    assert_eq!(cache.get(b"bar").unwrap(), None);
    assert!(!cache.contains_key(b"bar").unwrap());
    assert_eq!(
        cache.get_many(&[b"bar", b"foo"]).unwrap(),
        vec![None, Some(b"123abc".to_vec())]
    );
    assert_eq!(
        store.0.loads.load(Ordering::SeqCst),
        2,
        "cached, absent or not"
    );
    let negative = cache.entry(b"bar").unwrap().unwrap();
    assert!(negative.flags.is_undef() && !negative.flags.is_dirty());

    cache.set(b"foo", b"123abc").unwrap();
    cache
        .set_with_flags(b"bar", b"", Expiry::Default, EntryFlags::UNDEF)
        .unwrap();
    store.put("bar", "stale");
    store.wipe();
    store.put("bar", "stale");
    cache.empty().unwrap();
    assert_eq!(store.snapshot(), as_map(&[("foo", "123abc")]));
}

/// Without `cache_not_found`, every miss asks the store again.
#[test]
fn misses_ask_the_store_each_time_without_cache_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = Shared::default();
    let cache = builder(&dir, &store, WriteMode::Through).open().unwrap();
    for _ in 0..3 {
        assert_eq!(cache.get(b"nothing").unwrap(), None);
    }
    assert_eq!(store.0.loads.load(Ordering::SeqCst), 3);
    assert_eq!(cache.keys().count(), 0);
}

/// t/22: dirty entries that expire are still written back: by a purge (Perl's `empty(1)`), by
/// an explicit `evict` (Perl's `expire`); `remove` deletes from the store.
#[test]
fn expired_dirty_entries_are_written_back() {
    let dir = tempfile::tempdir().unwrap();
    let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let clock = ManualClock::new(start);
    let store = Shared(Arc::new(Mem {
        write_only: true,
        ..Mem::default()
    }));
    let cache = builder(&dir, &store, WriteMode::Back)
        .num_pages(1)
        .page_size(8192)
        .clock(clock.clone())
        .open()
        .unwrap();
    let secs = Duration::from_secs;
    assert!(
        cache
            .set_with(b"foo", b"123abc", Expiry::After(secs(1)))
            .unwrap()
    );
    assert!(
        cache
            .set_with(b"bar", b"456def", Expiry::After(secs(2)))
            .unwrap()
    );
    assert!(
        cache
            .set_with(b"baz", b"789ghi", Expiry::After(secs(3)))
            .unwrap()
    );
    assert_eq!(cache.get(b"foo").unwrap(), Some(b"123abc".to_vec()));
    assert_eq!(cache.get(b"bar").unwrap(), Some(b"456def".to_vec()));
    assert_eq!(cache.get(b"baz").unwrap(), Some(b"789ghi".to_vec()));

    clock.advance(secs(1));
    assert_eq!(cache.get(b"foo").unwrap(), None, "expired");
    assert_eq!(cache.get(b"bar").unwrap(), Some(b"456def".to_vec()));
    assert_eq!(
        store.len(),
        1,
        "the read-through of an expired dirty entry wrote it first"
    );
    cache.purge().unwrap();
    assert_eq!(store.snapshot(), as_map(&[("foo", "123abc")]));

    assert!(cache.evict(b"baz").unwrap());
    assert!(!cache.evict(b"dummy").unwrap());
    assert_eq!(
        store.snapshot(),
        as_map(&[("foo", "123abc"), ("baz", "789ghi")])
    );
    assert_eq!(
        cache.get(b"baz").unwrap(),
        None,
        "the store has no read_cb here"
    );

    clock.advance(secs(1));
    for k in [&b"foo"[..], b"bar", b"baz"] {
        assert_eq!(cache.get(k).unwrap(), None);
    }
    cache.purge().unwrap();
    assert_eq!(
        store.snapshot(),
        as_map(&[("foo", "123abc"), ("bar", "456def"), ("baz", "789ghi")])
    );
    cache.remove(b"foo").unwrap();
    assert_eq!(
        store.snapshot(),
        as_map(&[("bar", "456def"), ("baz", "789ghi")])
    );
}

/// Write-through: if the store fails, the cache keeps what it had and the caller gets
/// `Error::Backing` carrying the store's error.
#[test]
fn a_failed_write_through_leaves_the_cache_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let store = Shared::default();
    let cache = builder(&dir, &store, WriteMode::Through).open().unwrap();
    cache.set(b"k", b"old").unwrap();
    store.0.failing.store(true, Ordering::SeqCst);
    let err = cache.set(b"k", b"new").unwrap_err();
    match &err {
        Error::Backing {
            op, key, source, ..
        } => {
            assert_eq!(*op, "store");
            assert_eq!(key.as_deref(), Some(&b"k"[..]));
            assert_eq!(source.to_string(), "the database is down");
        }
        other => panic!("{other}"),
    }
    assert!(std::error::Error::source(&err).is_some());
    assert_eq!(cache.get(b"k").unwrap(), Some(b"old".to_vec()));
    assert!(matches!(cache.remove(b"k"), Err(Error::Backing { .. })));
    assert_eq!(
        cache.get(b"k").unwrap(),
        Some(b"old".to_vec()),
        "remove changed nothing"
    );
    assert!(matches!(
        cache.get(b"other"),
        Err(Error::Backing { op: "load", .. })
    ));
    store.0.failing.store(false, Ordering::SeqCst);
    assert!(cache.remove(b"k").unwrap());
    assert!(store.snapshot().is_empty());
}

/// Write-back: a store that needs to evict dirty entries while the backing store is down fails
/// and evicts nothing; once the store is back, everything reaches it.
#[test]
fn write_back_never_drops_what_the_store_has_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let store = Shared::default();
    let cache = builder(&dir, &store, WriteMode::Back)
        .num_pages(1)
        .page_size(4096)
        .open()
        .unwrap();
    let mut written = BTreeMap::new();
    let mut refused = 0;
    for (i, (k, v)) in pairs(7, 200, 50).into_iter().enumerate() {
        if i == 20 {
            store.0.failing.store(true, Ordering::SeqCst);
        }
        match cache.set(&k, &v) {
            Ok(_) => {
                written.insert(k, v);
            }
            Err(Error::Backing { .. }) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused > 0, "the page filled up");
    assert!(store.snapshot().len() <= 20);
    let mut all = store.snapshot();
    all.extend(cached(&cache));
    assert_eq!(all, written, "nothing acknowledged was dropped");
    assert!(matches!(cache.flush(), Err(Error::Backing { .. })));
    store.0.failing.store(false, Ordering::SeqCst);
    let flushed = cache.flush().unwrap();
    assert!(flushed > 0);
    assert_eq!(store.snapshot(), written);
    assert!(
        cache.iter().all(|r| !r.unwrap().1.flags.is_dirty()),
        "flush marks clean"
    );
    assert_eq!(cache.flush().unwrap(), 0, "nothing left to write");
    assert_eq!(cached(&cache).len(), flushed, "flush keeps the entries");
}

/// Callbacks run without a page lock: a store that reads the cache gets no `Reentrant`.
#[test]
fn callbacks_may_use_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let store = Shared::default();
    let cache = builder(&dir, &store, WriteMode::Back)
        .num_pages(1)
        .page_size(4096)
        .open()
        .unwrap();
    store.0.reader.set(cache.clone()).ok().unwrap();
    for (k, v) in pairs(3, 300, 40) {
        cache.set(&k, &v).unwrap();
    }
    cache.flush().unwrap();
    assert!(store.0.stores.load(Ordering::SeqCst) >= 300);
}

/// `take` returns the value and deletes it from both; `get_or_insert_with` and `update` read
/// through first, and write through.
#[test]
fn take_insert_and_update_go_through_the_store() {
    for mode in [WriteMode::Through, WriteMode::Back] {
        let dir = tempfile::tempdir().unwrap();
        let store = Shared::with(&[("in-store", "s"), ("counter", "41")]);
        let cache = builder(&dir, &store, mode).open().unwrap();
        assert_eq!(cache.take(b"in-store").unwrap(), Some(b"s".to_vec()));
        assert_eq!(store.snapshot().get(&b"in-store"[..]), None);
        cache.set(b"cached", b"c").unwrap();
        assert_eq!(cache.take(b"cached").unwrap(), Some(b"c".to_vec()));
        assert_eq!(cache.get(b"cached").unwrap(), None);
        assert_eq!(store.snapshot().get(&b"cached"[..]), None);

        let computed = cache
            .get_or_insert_with(b"lazy", || b"made".to_vec())
            .unwrap();
        assert_eq!(computed, b"made");
        let seen = cache
            .update_with(b"counter", |e| {
                let n: u64 = std::str::from_utf8(e.unwrap().value)
                    .unwrap()
                    .parse()
                    .unwrap();
                (Update::Set((n + 1).to_string().into_bytes()), n)
            })
            .unwrap();
        assert_eq!(
            seen, 41,
            "{mode:?}: the update read the store's value through"
        );
        if mode == WriteMode::Back {
            assert!(cache.entry(b"counter").unwrap().unwrap().flags.is_dirty());
            cache.flush().unwrap();
        }
        assert_eq!(store.snapshot().get(&b"counter"[..]).unwrap(), b"42");
        assert_eq!(store.snapshot().get(&b"lazy"[..]).unwrap(), b"made");
        assert!(!cache.entry(b"counter").unwrap().unwrap().flags.is_dirty());
        cache.update(b"counter", |_| Update::Remove).unwrap();
        assert_eq!(store.snapshot().get(&b"counter"[..]), None, "{mode:?}");
        assert_eq!(cache.get(b"counter").unwrap(), None);
    }
}

/// `update_entry` sees the expiry and can keep it; `update_with` hands back what it computed.
#[test]
fn update_sees_the_whole_entry() {
    for layout in [Layout::Native, Layout::FastMmap] {
        let dir = tempfile::tempdir().unwrap();
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let clock = ManualClock::new(start);
        let cache = Cache::builder()
            .path(dir.path().join("u"))
            .layout(layout)
            .clock(clock.clone())
            .open()
            .unwrap();
        let at = start + Duration::from_secs(100);
        cache.set_with(b"n", b"1", Expiry::At(at)).unwrap();
        clock.advance(Duration::from_secs(10));
        let after = cache
            .update_entry(b"n", |e| {
                let e = e.unwrap();
                assert_eq!(e.expires_at, Some(at));
                assert_eq!(e.last_access, start + Duration::from_secs(10), "this read");
                assert!(!e.flags.is_dirty());
                Update::SetWith(b"2".to_vec(), e.expiry())
            })
            .unwrap();
        assert_eq!(after, Some(b"2".to_vec()));
        assert_eq!(
            cache.entry(b"n").unwrap().unwrap().expires_at,
            Some(at),
            "kept"
        );
        let (old, len) = cache
            .update_with(b"n", |e| {
                let e = e.unwrap();
                ((Update::Keep), (e.value.to_vec(), e.value.len()))
            })
            .unwrap();
        assert_eq!((old, len), (b"2".to_vec(), 1));
        let none = cache
            .update_with(b"absent", |e| (Update::Keep, e.is_none()))
            .unwrap();
        assert!(none);
        let gone = cache
            .update_with(b"n", |_| (Update::Remove, "removed"))
            .unwrap();
        assert_eq!(gone, "removed");
        assert_eq!(cache.get(b"n").unwrap(), None);
    }
}

/// A page reset (here a damaged header, as a process killed mid-rebuild leaves it) loses its
/// dirty entries: they are counted in `Stats::dirty_lost`.
#[test]
fn dirty_entries_lost_in_a_page_reset_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Shared::default();
    let (num_pages, page_size) = (1, 8192);
    let cache = builder(&dir, &store, WriteMode::Back)
        .layout(Layout::FastMmap)
        .num_pages(num_pages)
        .page_size(page_size)
        .open()
        .unwrap();
    for i in 0..5 {
        cache.set(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    cache.get(b"k0").unwrap(); // read-through of nothing: still 5 dirty
    let file = common::raw_file(&dir.path().join("c"));
    let off = common::page_offset(Layout::FastMmap, num_pages, page_size, 0);
    // free_data past the page end: the header check fails; the slot table is intact.
    common::write_u32(&file, off + 16, page_size + 4);
    cache.set(b"after", b"x").unwrap();
    let stats = cache.stats().unwrap();
    assert_eq!(stats.resets, 1);
    assert_eq!(stats.dirty_lost, 5);
    assert_eq!(cache.get(b"k1").unwrap(), None, "lost");
    cache.reset_stats().unwrap();
    assert_eq!(cache.stats().unwrap().dirty_lost, 0);
}

/// A process without a backing store that shares the file reads dirty entries as plain values.
#[test]
fn handles_without_a_backing_see_plain_values() {
    let dir = tempfile::tempdir().unwrap();
    let store = Shared::default();
    let cache = builder(&dir, &store, WriteMode::Back).open().unwrap();
    cache.set(b"k", b"v").unwrap();
    let plain = Cache::open(dir.path().join("c")).unwrap();
    assert_eq!(plain.get(b"k").unwrap(), Some(b"v".to_vec()));
    assert!(plain.entry(b"k").unwrap().unwrap().flags.is_dirty());
    assert_eq!(plain.flush().unwrap(), 0, "nothing to write to");
    assert_eq!(cache.flush().unwrap(), 1);
    assert!(!plain.entry(b"k").unwrap().unwrap().flags.is_dirty());
}

#[test]
fn write_mode_without_a_backing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = Cache::builder()
        .path(dir.path().join("c"))
        .write_mode(WriteMode::Back)
        .open()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidOptions { .. }), "{err}");
}

/// Many threads setting, reading and removing through a write-back cache with small pages:
/// after a flush the store holds exactly the last write of every key.
#[test]
fn threads_writing_back_agree_with_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Shared::default();
    let cache = builder(&dir, &store, WriteMode::Back)
        .num_pages(3)
        .page_size(4096)
        .open()
        .unwrap();
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                let mut last = HashMap::new();
                for round in 0..5u32 {
                    for i in 0..150u32 {
                        let k = format!("t{t}-{i}").into_bytes();
                        let v = format!("{round}-{i}-{}", "x".repeat(i as usize % 40)).into_bytes();
                        cache.set(&k, &v).unwrap();
                        last.insert(k, v);
                    }
                }
                last
            })
        })
        .collect();
    let mut expected = BTreeMap::new();
    for t in threads {
        expected.extend(t.join().unwrap());
    }
    cache.flush().unwrap();
    assert_eq!(store.snapshot(), expected);
    assert_eq!(cache.stats().unwrap().dirty_lost, 0);
}

/// Writes reach the store in the order they were made, although the store is called after
/// the page is unlocked: with a slow store, small pages (so evictions write back all the
/// time) and a thread flushing meanwhile, the store ends with every key's last value — in
/// both modes — and a write-through cache never holds a value the store has not.
#[test]
fn writes_reach_a_slow_store_in_order() {
    for mode in [WriteMode::Back, WriteMode::Through] {
        let dir = tempfile::tempdir().unwrap();
        let store = Shared::default();
        store.0.slow.store(true, Ordering::Relaxed);
        let cache = builder(&dir, &store, mode)
            .num_pages(2)
            .page_size(4096)
            .open()
            .unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let flusher = {
            let (cache, done) = (cache.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    cache.flush().unwrap();
                }
            })
        };
        let writers: Vec<_> = (0..3u8)
            .map(|t| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    let mut last = BTreeMap::new();
                    for round in 0..20u32 {
                        for i in 0..60u32 {
                            let k = format!("t{t}-{i}").into_bytes();
                            let v = format!("{round}-{}", "x".repeat(i as usize % 50));
                            cache.set(&k, v.as_bytes()).unwrap();
                            last.insert(k, v.into_bytes());
                        }
                    }
                    last
                })
            })
            .collect();
        let mut expected = BTreeMap::new();
        for w in writers {
            expected.extend(w.join().unwrap());
        }
        done.store(true, Ordering::Relaxed);
        flusher.join().unwrap();
        if mode == WriteMode::Through {
            for (k, v) in cached(&cache) {
                assert_eq!(
                    Some(&v),
                    expected.get(&k),
                    "{mode:?}: the cache holds the last value"
                );
            }
        }
        cache.flush().unwrap();
        assert_eq!(
            store.snapshot(),
            expected,
            "{mode:?}: the store has every last value"
        );
    }
}

#[cfg(feature = "lz4")]
#[test]
fn compressed_values_pass_through_the_store_plain() {
    use fastmmap::Compression;
    let dir = tempfile::tempdir().unwrap();
    let store = Shared::default();
    let cache = builder(&dir, &store, WriteMode::Back)
        .compression(Compression::lz4().min_size(64))
        .open()
        .unwrap();
    let big = b"0123456789".repeat(100);
    cache.set(b"big", &big).unwrap();
    cache.set(b"small", b"tiny").unwrap();
    let e = cache.entry(b"big").unwrap().unwrap();
    assert!(e.flags.is_compressed() && e.flags.is_dirty());
    assert_eq!(e.value, big, "entry decompresses");
    assert!(
        !cache
            .entry(b"small")
            .unwrap()
            .unwrap()
            .flags
            .is_compressed()
    );
    cache.empty().unwrap();
    assert_eq!(
        store.snapshot().get(&b"big"[..]),
        Some(&big),
        "written back plain"
    );
    assert_eq!(
        cache.get(b"big").unwrap(),
        Some(big.clone()),
        "read through"
    );
    assert!(
        cache.entry(b"big").unwrap().unwrap().flags.is_compressed(),
        "cached compressed"
    );
    let plain = Cache::open(dir.path().join("c")).unwrap();
    let raw = plain.entry(b"big").unwrap().unwrap();
    assert!(
        raw.value.len() < big.len(),
        "a handle without compression sees the stored bytes"
    );
}

#[cfg(feature = "lz4")]
#[test]
fn read_only_handles_decompress_too() {
    use fastmmap::{Compression, LockKind};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro");
    let big = b"abcdefghij".repeat(50);
    let writer = Cache::builder()
        .path(&path)
        .lock_kind(LockKind::Fcntl)
        .compression(Compression::lz4())
        .open()
        .unwrap();
    writer.set(b"big", &big).unwrap();
    let reader = Cache::builder()
        .path(&path)
        .read_only(true)
        .compression(Compression::lz4())
        .open()
        .unwrap();
    assert_eq!(reader.get(b"big").unwrap(), Some(big.clone()));
    assert_eq!(reader.entry(b"big").unwrap().unwrap().value, big);
    assert!(matches!(
        reader.set(b"x", b"y"),
        Err(Error::ReadOnly { .. })
    ));
}

/// Write-through `update`: the new value is stored dirty under the lock, then written to the
/// store; if the store fails, the caller hears of it and the value stays dirty until a flush
/// or an eviction writes it.
#[test]
fn a_failed_write_through_update_stays_dirty_until_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Shared::with(&[("n", "1")]);
    let cache = builder(&dir, &store, WriteMode::Through).open().unwrap();
    assert_eq!(cache.get(b"n").unwrap(), Some(b"1".to_vec()));
    store.0.failing.store(true, Ordering::SeqCst);
    let err = cache
        .update(b"n", |_| Update::Set(b"2".to_vec()))
        .unwrap_err();
    assert!(matches!(err, Error::Backing { op: "store", .. }), "{err}");
    let e = cache.entry(b"n").unwrap().unwrap();
    assert_eq!((e.value.as_slice(), e.flags.is_dirty()), (&b"2"[..], true));
    store.0.failing.store(false, Ordering::SeqCst);
    assert_eq!(cache.flush().unwrap(), 1);
    assert_eq!(store.snapshot(), as_map(&[("n", "2")]));
}

/// A store whose fence moves (another host changed the key while it was loaded or written)
/// when `moving` is set: the value reaches the caller and the store, but is not kept in the
/// file.
#[derive(Default)]
struct Fenced {
    inner: Shared,
    fence: AtomicUsize,
    moving: AtomicBool,
    distrust: AtomicBool,
    /// Run by the `fence` call this many calls from now (1: the next).
    on_fence: Mutex<Option<(usize, Hook)>>,
}

impl Fenced {
    fn step(&self) {
        if self.moving.load(Ordering::SeqCst) {
            self.fence.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Backing for Fenced {
    fn load(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackingError> {
        self.step();
        self.inner.load(key)
    }
    fn store(&self, k: &[u8], v: &[u8], e: Option<SystemTime>) -> Result<(), BackingError> {
        self.step();
        self.inner.store(k, v, e)
    }
    fn delete(&self, key: &[u8]) -> Result<(), BackingError> {
        self.inner.delete(key)
    }
    fn fence(&self, _key: &[u8]) -> Option<u64> {
        let hook = {
            let mut armed = self.on_fence.lock().unwrap();
            match armed.as_mut() {
                Some((1, _)) => armed.take().map(|(_, hook)| hook),
                Some((calls, _)) => {
                    *calls -= 1;
                    None
                }
                None => None,
            }
        };
        if let Some(hook) = hook {
            hook();
        }
        (!self.distrust.load(Ordering::SeqCst)).then(|| self.fence.load(Ordering::SeqCst) as u64)
    }
}

#[test]
fn a_moved_fence_keeps_values_out_of_the_file() {
    let dir = common::temp_dir();
    let store = Arc::new(Fenced::default());
    store.moving.store(true, Ordering::SeqCst);
    store.inner.put("a", "1");
    let cache = Cache::builder()
        .path(dir.path().join("c"))
        .backing_arc(Arc::clone(&store) as Arc<dyn Backing>)
        .open()
        .unwrap();
    // Read-through and write-through hand the value over, but do not keep it.
    assert_eq!(cache.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(cache.entry(b"a").unwrap(), None);
    assert!(cache.set(b"b", b"2").unwrap());
    assert_eq!(cache.entry(b"b").unwrap(), None);
    assert_eq!(
        store.inner.snapshot().get(&b"b"[..]).map(Vec::as_slice),
        Some(&b"2"[..])
    );
    // A `None` fence (a distrusted host) keeps nothing either, even when it does not move.
    store.moving.store(false, Ordering::SeqCst);
    store.distrust.store(true, Ordering::SeqCst);
    store.inner.put("c", "3");
    assert_eq!(cache.get(b"c").unwrap().as_deref(), Some(&b"3"[..]));
    assert_eq!(cache.entry(b"c").unwrap(), None);
    // A steady fence keeps the value.
    store.distrust.store(false, Ordering::SeqCst);
    assert_eq!(cache.get(b"c").unwrap().as_deref(), Some(&b"3"[..]));
    assert!(cache.entry(b"c").unwrap().is_some());
}

/// `update` of a key only the store holds, when the read-through cannot keep a copy in the
/// file (a moving fence, a distrusted host): the closure sees the store's value, its `Set`
/// builds on it, and its `Remove` deletes the key from the store. (It used to see `None`: a
/// counter at 41 became 1, and a removal left the store's value in place.)
#[test]
fn update_sees_the_stores_value_when_the_file_cannot_keep_it() {
    for mode in [WriteMode::Through, WriteMode::Back] {
        for distrust in [false, true] {
            let what = format!("{mode:?}, distrust {distrust}");
            let dir = common::temp_dir();
            let store = Arc::new(Fenced::default());
            store.moving.store(!distrust, Ordering::SeqCst);
            store.distrust.store(distrust, Ordering::SeqCst);
            store.inner.put("counter", "41");
            store.inner.put("gone", "x");
            let cache = Cache::builder()
                .path(dir.path().join("c"))
                .backing_arc(Arc::clone(&store) as Arc<dyn Backing>)
                .write_mode(mode)
                .open()
                .unwrap();
            let seen = cache
                .update_with(b"counter", |old| {
                    let seen = old.map(|e| e.value.to_vec());
                    let n: u64 = seen
                        .as_deref()
                        .map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
                    (Update::Set((n + 1).to_string().into_bytes()), seen)
                })
                .unwrap();
            assert_eq!(seen.as_deref(), Some(&b"41"[..]), "{what}: the closure saw");
            cache.flush().unwrap();
            assert_eq!(
                store
                    .inner
                    .snapshot()
                    .get(&b"counter"[..])
                    .map(Vec::as_slice),
                Some(&b"42"[..]),
                "{what}"
            );
            let kept = cache.update(b"gone", |old| {
                assert_eq!(old, Some(&b"x"[..]), "{what}: the closure saw");
                Update::Remove
            });
            assert_eq!(kept.unwrap(), None, "{what}");
            assert_eq!(
                store.inner.snapshot().get(&b"gone"[..]),
                None,
                "{what}: still stored"
            );
            assert_eq!(cache.get(b"gone").unwrap(), None, "{what}");
        }
    }
}

/// `take` of a dirty entry (a write the store has not seen) while the store fails: the entry
/// stays in the file until the store has deleted the key, so a failure never leaves the write
/// in neither place. Here other writers fill the page while the delete is on its way and then
/// the store goes down: the entry used to be taken out first and put back after the failed
/// delete, and the put-back, which needed the store to take the dirty entries in its way,
/// failed in silence: the write was lost, uncounted, and the store's older value read back.
#[test]
fn a_dirty_entry_taken_while_the_store_fails_is_not_lost() {
    let dir = common::temp_dir();
    let store = Shared::default();
    store.put("t", "old");
    let cache = builder(&dir, &store, WriteMode::Back)
        .num_pages(1)
        .page_size(4096)
        .open()
        .unwrap();
    let new = vec![b'N'; 2000];
    cache.set(b"t", &new).unwrap();
    // The store down: the take fails, and the dirty entry is where it was.
    store.0.failing.store(true, Ordering::SeqCst);
    assert!(matches!(
        cache.take(b"t"),
        Err(Error::Backing { op: "delete", .. })
    ));
    let entry = cache.entry(b"t").unwrap().expect("still cached");
    assert!(entry.flags.is_dirty());
    assert_eq!(entry.value, new);
    store.0.failing.store(false, Ordering::SeqCst);
    // Others fill the page during the delete, then the store goes down.
    let (filler, down) = (cache.clone(), store.clone());
    *store.0.on_delete.lock().unwrap() = Some(Box::new(move || {
        for i in 0..200u32 {
            filler
                .set(format!("fill{i}").as_bytes(), &[b'f'; 60])
                .unwrap();
        }
        down.0.failing.store(true, Ordering::SeqCst);
    }));
    assert!(matches!(
        cache.take(b"t"),
        Err(Error::Backing { op: "delete", .. })
    ));
    store.0.failing.store(false, Ordering::SeqCst);
    let got = cache.get(b"t").unwrap();
    assert!(
        got.as_ref() == Some(&new),
        "the write was lost: got {:?}",
        got.map(|v| String::from_utf8_lossy(&v[..v.len().min(8)]).into_owned())
    );
    assert_eq!(cache.stats().unwrap().dirty_lost, 0);
    // With the store up, the take takes it from both.
    assert_eq!(cache.take(b"t").unwrap(), Some(new));
    assert_eq!(store.snapshot().get(&b"t"[..]), None);
    assert_eq!(cache.entry(b"t").unwrap(), None);
    cache.flush().unwrap();
    assert_eq!(cache.entry(b"t").unwrap(), None);
    assert_eq!(store.snapshot().get(&b"t"[..]), None);
}

/// The thread a [`page_lock_holder`] started, once its hook has run.
type Holder = Arc<Mutex<Option<std::thread::JoinHandle<()>>>>;

/// A hook after which another handle on the (one-page) file at `path` holds its page's lock
/// for 600 ms, past the 200 ms timeouts of the tests that use it; join the holder after.
fn page_lock_holder(path: &std::path::Path) -> (Hook, Holder) {
    let plain = Cache::builder().path(path).open().unwrap();
    let holder: Holder = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&holder);
    let hook: Hook = Box::new(move || {
        let held = Arc::new(std::sync::Barrier::new(2));
        let in_update = Arc::clone(&held);
        let t = std::thread::spawn(move || {
            plain
                .update(b"other", |_| {
                    in_update.wait();
                    std::thread::sleep(Duration::from_millis(600));
                    Update::Keep
                })
                .unwrap();
        });
        held.wait();
        *slot.lock().unwrap() = Some(t);
    });
    (hook, holder)
}

/// `remove` while another process holds the key's page lock past the lock timeout, just as
/// the store deletes the key: the cached copy was taken out before the delete, so the cache
/// never serves the value the store no longer has. (Deleting first, the remove then timed out
/// on the page lock and left the old value cached.)
#[test]
fn a_remove_never_leaves_a_copy_the_store_has_deleted() {
    let dir = common::temp_dir();
    let store = Shared::default();
    let cache = builder(&dir, &store, WriteMode::Through)
        .num_pages(1)
        .lock_timeout(Duration::from_millis(200))
        .open()
        .unwrap();
    cache.set(b"k", b"v").unwrap();
    let (hook, holder) = page_lock_holder(&dir.path().join("c"));
    *store.0.on_delete.lock().unwrap() = Some(hook);
    let removed = cache.remove(b"k");
    holder.lock().unwrap().take().unwrap().join().unwrap();
    assert!(removed.unwrap(), "it held a live value");
    assert_eq!(store.snapshot().get(&b"k"[..]), None);
    assert_eq!(
        cache.get(b"k").unwrap(),
        None,
        "the cache kept the deleted value"
    );
}

/// A read-through whose fence moved during the load (another host changed the key) stores
/// nothing, rather than storing a copy and dropping it after: that drop needs the page lock
/// again, and when another process held it past the lock timeout the `get` failed and left the
/// copy in the file, where no news of the change would remove it.
#[test]
fn a_fence_that_moved_during_the_load_stores_no_copy_to_drop() {
    let dir = common::temp_dir();
    let store = Arc::new(Fenced::default());
    store.moving.store(true, Ordering::SeqCst);
    store.inner.put("k", "v");
    let cache = Cache::builder()
        .path(dir.path().join("c"))
        .num_pages(1)
        .lock_timeout(Duration::from_millis(200))
        .backing_arc(Arc::clone(&store) as Arc<dyn Backing>)
        .open()
        .unwrap();
    // At the fence taken after the load.
    let (hook, holder) = page_lock_holder(&dir.path().join("c"));
    *store.on_fence.lock().unwrap() = Some((2, hook));
    let got = cache.get(b"k");
    holder.lock().unwrap().take().unwrap().join().unwrap();
    assert_eq!(got.unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(cache.entry(b"k").unwrap(), None, "a copy the fence forbids");
}
