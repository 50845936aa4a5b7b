//! The caches a trace is replayed against, behind one small trait: fastmmap through its public
//! API, an exact global LRU, moka, quick_cache, and Bélády's offline optimum.
//!
//! Every policy sees the same protocol: a `get`, and on a miss an insert of the key.

use std::collections::{BTreeSet, HashMap};
use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use fastmmap::{Cache, Layout, LockKind, ManualClock};

use crate::traces::Trace;

/// A cache under test: one request at a time, in trace order.
pub trait Policy {
    /// The column name in the results.
    fn name(&self) -> &str;
    /// Looks `key` up; on a miss, inserts it (a policy may decline to keep it). Returns
    /// whether it was a hit.
    fn access(&mut self, key: u64) -> bool;
    /// Whether `key` is cached now, without counting as an access where the policy allows.
    fn contains(&self, key: u64) -> bool;
}

/// Bytes of every value fastmmap stores.
pub const VALUE_SIZE: usize = 100;
/// The value fastmmap stores for every key.
const VALUE: [u8; VALUE_SIZE] = [0x5a; VALUE_SIZE];
/// Bytes of every fastmmap key: the 8-byte id, then padding.
pub const KEY_SIZE: usize = 16;
/// Bytes one entry takes in a fastmmap page: its 24-byte header, the key and the value.
pub const ENTRY_SIZE: usize = 24 + KEY_SIZE + VALUE_SIZE;

/// The fastmmap key of id `id`: its 8 bytes, then padding to [`KEY_SIZE`].
pub fn fastmmap_key(id: u64) -> [u8; KEY_SIZE] {
    let mut key = *b"........key-pad.";
    key[..8].copy_from_slice(&id.to_le_bytes());
    key
}

/// How a fastmmap cache for a replay is made.
#[derive(Clone, Copy, Debug)]
pub struct FastMmapConfig {
    /// Pages in the file.
    pub pages: u32,
    /// Bytes per page.
    pub page_size: u32,
    /// The lock kind (the hit ratio does not depend on it).
    pub lock_kind: LockKind,
    /// Requests per second of the replay: fastmmap evicts by last access in whole seconds, so
    /// its manual clock moves one second after this many requests.
    pub requests_per_second: u64,
}

/// A private directory for the bench's cache files: on `/dev/shm` where there is one, mode
/// 0700, removed when dropped.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// A new, empty directory only this user can reach.
    ///
    /// # Panics
    /// If it cannot be created (the message names it).
    pub fn new() -> ScratchDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let shm = PathBuf::from("/dev/shm");
        let base = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        let path = base.join(format!(
            "fastmmap-hit-ratio-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .unwrap_or_else(|e| panic!("cannot create scratch directory {}: {e}", path.display()));
        ScratchDir(path)
    }

    /// A path inside the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Default for ScratchDir {
    fn default() -> Self {
        ScratchDir::new()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// fastmmap through its public API: a fresh file of the given geometry (native layout, no
/// expiry), a manual clock, a `get` (`get_with`, which reads in place: the same lookup without
/// the copy) and on a miss a `set` of a 100-byte value.
pub struct FastMmap {
    cache: Cache,
    clock: ManualClock,
    config: FastMmapConfig,
    requests: u64,
    path: PathBuf,
    // Last: the file is unlinked before its directory goes.
    _dir: ScratchDir,
}

impl FastMmap {
    /// A new, empty cache file.
    ///
    /// # Panics
    /// If the cache cannot be opened (the message names the file and the error).
    pub fn new(config: FastMmapConfig) -> FastMmap {
        let dir = ScratchDir::new();
        let path = dir.file("cache");
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let cache = Cache::builder()
            .path(&path)
            .layout(Layout::Native)
            .num_pages(config.pages)
            .page_size(config.page_size)
            // No overflow area: every value here fits a page, and the area's bytes would
            // count in the bytes of file per entry that size the other caches.
            .overflow_size(0)
            .lock_kind(config.lock_kind)
            .clock(clock.clone())
            .unlink_on_drop(true)
            .open()
            .unwrap_or_else(|e| panic!("cannot open fastmmap cache {}: {e}", path.display()));
        FastMmap {
            cache,
            clock,
            config,
            requests: 0,
            path,
            _dir: dir,
        }
    }

    /// The cache, for its statistics.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Bytes of the cache file (pages and the native header).
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path)
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", self.path.display()))
            .len()
    }

    fn tick(&mut self) {
        self.requests += 1;
        if self
            .requests
            .is_multiple_of(self.config.requests_per_second.max(1))
        {
            self.clock.advance(Duration::from_secs(1));
        }
    }

    /// Stores `id` without reading it first (for filling).
    pub fn insert(&mut self, id: u64) {
        self.tick();
        self.cache
            .set(&fastmmap_key(id), &VALUE)
            .unwrap_or_else(|e| panic!("fastmmap set of key {id} failed: {e}"));
    }
}

impl Policy for FastMmap {
    fn name(&self) -> &str {
        "fastmmap"
    }

    fn access(&mut self, key: u64) -> bool {
        self.tick();
        let hit = self
            .cache
            .get_with(&fastmmap_key(key), |_| ())
            .unwrap_or_else(|e| panic!("fastmmap get of key {key} failed: {e}"))
            .is_some();
        if !hit {
            self.cache
                .set(&fastmmap_key(key), &VALUE)
                .unwrap_or_else(|e| panic!("fastmmap set of key {key} failed: {e}"));
        }
        hit
    }

    fn contains(&self, key: u64) -> bool {
        self.cache
            .contains_key(&fastmmap_key(key))
            .unwrap_or_else(|e| panic!("fastmmap contains_key of key {key} failed: {e}"))
    }
}

const NIL: usize = usize::MAX;

/// An exact LRU over the whole cache (one recency list, not per page): the reference that
/// fastmmap's per-page, per-second eviction approximates.
#[derive(Debug)]
pub struct Lru {
    capacity: usize,
    index: HashMap<u64, usize>,
    nodes: Vec<Node>,
    head: usize, // most recent
    tail: usize, // least recent
}

#[derive(Debug, Clone, Copy)]
struct Node {
    key: u64,
    prev: usize,
    next: usize,
}

impl Lru {
    /// An empty LRU holding at most `capacity` keys (at least 1).
    pub fn new(capacity: usize) -> Lru {
        let capacity = capacity.max(1);
        Lru {
            capacity,
            index: HashMap::with_capacity(capacity),
            nodes: Vec::with_capacity(capacity),
            head: NIL,
            tail: NIL,
        }
    }

    fn unlink(&mut self, i: usize) {
        let Node { prev, next, .. } = self.nodes[i];
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next].prev = prev;
        }
    }

    fn push_front(&mut self, i: usize) {
        self.nodes[i].prev = NIL;
        self.nodes[i].next = self.head;
        if self.head != NIL {
            self.nodes[self.head].prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }
}

impl Policy for Lru {
    fn name(&self) -> &str {
        "exact LRU"
    }

    fn access(&mut self, key: u64) -> bool {
        if let Some(&i) = self.index.get(&key) {
            self.unlink(i);
            self.push_front(i);
            return true;
        }
        let i = if self.nodes.len() < self.capacity {
            self.nodes.push(Node {
                key,
                prev: NIL,
                next: NIL,
            });
            self.nodes.len() - 1
        } else {
            let victim = self.tail;
            self.unlink(victim);
            self.index.remove(&self.nodes[victim].key);
            self.nodes[victim].key = key;
            victim
        };
        self.index.insert(key, i);
        self.push_front(i);
        false
    }

    fn contains(&self, key: u64) -> bool {
        self.index.contains_key(&key)
    }
}

/// A peer cache crate, as the replay uses it: bounded in entries, keys only (the value is
/// `()`), a get, an insert and a look that changes nothing where the crate allows.
pub trait PeerCache {
    /// The column name in the results.
    const NAME: &'static str;
    /// An empty cache of `capacity` entries.
    fn with_capacity(capacity: usize) -> Self;
    /// Looks `key` up as a read: whether it was cached.
    fn get(&mut self, key: u64) -> bool;
    /// Inserts `key` (the cache may decline to keep it).
    fn insert(&mut self, key: u64);
    /// Whether `key` is cached now.
    fn holds(&self, key: u64) -> bool;
}

/// A [`PeerCache`] as a [`Policy`]: a get, and on a miss an insert.
pub struct Peer<C>(C);

impl<C: PeerCache> Peer<C> {
    /// An empty cache of `capacity` entries.
    pub fn new(capacity: usize) -> Peer<C> {
        Peer(C::with_capacity(capacity))
    }
}

impl<C: PeerCache> Policy for Peer<C> {
    fn name(&self) -> &str {
        C::NAME
    }

    fn access(&mut self, key: u64) -> bool {
        let hit = self.0.get(key);
        if !hit {
            self.0.insert(key);
        }
        hit
    }

    fn contains(&self, key: u64) -> bool {
        self.0.holds(key)
    }
}

/// moka's `sync::Cache` (W-TinyLFU), bounded in entries.
pub type Moka = Peer<moka::sync::Cache<u64, ()>>;

impl PeerCache for moka::sync::Cache<u64, ()> {
    const NAME: &'static str = "moka";

    fn with_capacity(capacity: usize) -> Self {
        moka::sync::Cache::new(capacity as u64)
    }

    fn get(&mut self, key: u64) -> bool {
        moka::sync::Cache::get(self, &key).is_some()
    }

    fn insert(&mut self, key: u64) {
        moka::sync::Cache::insert(self, key, ());
        // moka applies its bound lazily, in batches: until then it holds more than its
        // capacity, and a later get can hit what a cache of that capacity would not hold (it
        // once beat Bélády's optimum by a hit). Applying it now compares it at its capacity.
        self.run_pending_tasks();
    }

    fn holds(&self, key: u64) -> bool {
        self.contains_key(&key)
    }
}

/// quick_cache's single-threaded `unsync::Cache` (S3-FIFO-like CLOCK-Pro), bounded in
/// entries.
pub type QuickCache = Peer<quick_cache::unsync::Cache<u64, ()>>;

impl PeerCache for quick_cache::unsync::Cache<u64, ()> {
    const NAME: &'static str = "quick_cache";

    fn with_capacity(capacity: usize) -> Self {
        quick_cache::unsync::Cache::new(capacity.max(1))
    }

    fn get(&mut self, key: u64) -> bool {
        quick_cache::unsync::Cache::get(self, &key).is_some()
    }

    fn insert(&mut self, key: u64) {
        quick_cache::unsync::Cache::insert(self, key, ());
    }

    fn holds(&self, key: u64) -> bool {
        self.peek(&key).is_some()
    }
}

/// Position of a key that is never requested again.
const NEVER: usize = usize::MAX;

/// Bélády's offline optimum (MIN): knowing the whole trace, on a miss it keeps the key if some
/// cached key is next needed later than this one, evicting the one needed last; otherwise it
/// does not keep the new key at all. No policy that sees the same requests can hit more often,
/// whether or not it must keep every miss.
#[derive(Debug)]
pub struct Belady {
    capacity: usize,
    next_use: Vec<usize>,
    trace: Vec<u64>,
    pos: usize,
    cached: HashMap<u64, usize>,
    by_next_use: BTreeSet<(usize, u64)>,
}

impl Belady {
    /// The optimum for `trace`, which [`access`](Policy::access) must then replay in order.
    pub fn new(capacity: usize, trace: &[u64]) -> Belady {
        let mut next_use = vec![NEVER; trace.len()];
        let mut seen: HashMap<u64, usize> = HashMap::new();
        for (i, &key) in trace.iter().enumerate().rev() {
            if let Some(later) = seen.insert(key, i) {
                next_use[i] = later;
            }
        }
        Belady {
            capacity: capacity.max(1),
            next_use,
            trace: trace.to_vec(),
            pos: 0,
            cached: HashMap::with_capacity(capacity),
            by_next_use: BTreeSet::new(),
        }
    }
}

impl Policy for Belady {
    fn name(&self) -> &str {
        "optimal (Bélády)"
    }

    fn access(&mut self, key: u64) -> bool {
        assert_eq!(
            self.trace.get(self.pos),
            Some(&key),
            "Bélády replayed out of trace order at request {}",
            self.pos
        );
        let next = self.next_use[self.pos];
        self.pos += 1;
        if let Some(when) = self.cached.get_mut(&key) {
            self.by_next_use.remove(&(*when, key));
            self.by_next_use.insert((next, key));
            *when = next;
            return true;
        }
        if next == NEVER {
            return false;
        }
        if self.cached.len() >= self.capacity {
            let &(farthest, victim) = self.by_next_use.last().expect("a full cache has keys");
            if farthest <= next {
                return false;
            }
            self.by_next_use.remove(&(farthest, victim));
            self.cached.remove(&victim);
        }
        self.cached.insert(key, next);
        self.by_next_use.insert((next, key));
        false
    }

    fn contains(&self, key: u64) -> bool {
        self.cached.contains_key(&key)
    }
}

/// The result of replaying a trace against one policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Replay {
    /// Hits among the counted requests.
    pub hits: u64,
    /// Requests counted (those after the warm-up).
    pub counted: u64,
    /// Watched keys still cached at the end.
    pub watched_cached: usize,
}

impl Replay {
    /// Hits over counted requests, in `[0, 1]` (0 when nothing was counted).
    pub fn hit_ratio(&self) -> f64 {
        if self.counted == 0 {
            0.0
        } else {
            self.hits as f64 / self.counted as f64
        }
    }
}

/// Replays `trace` against `policy`, counting hits only after the first `warmup` requests
/// and only for the requests the trace counts, then looks up each of its watched keys.
pub fn replay(policy: &mut dyn Policy, trace: &Trace, warmup: usize) -> Replay {
    let (mut hits, mut counted) = (0, 0);
    for (i, &key) in trace.keys.iter().enumerate() {
        let hit = policy.access(key);
        if i >= warmup && trace.counts(key) {
            counted += 1;
            hits += u64::from(hit);
        }
    }
    let watched_cached = trace
        .watched
        .iter()
        .filter(|&&k| policy.contains(k))
        .count();
    Replay {
        hits,
        counted,
        watched_cached,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traces::ONE_HIT_BASE;

    fn trace(keys: &[u64], watched: &[u64]) -> Trace {
        Trace {
            keys: keys.to_vec(),
            watched: watched.to_vec(),
            count_one_hit: true,
        }
    }

    fn hits(policy: &mut dyn Policy, keys: &[u64]) -> Vec<bool> {
        keys.iter().map(|&k| policy.access(k)).collect()
    }

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let mut lru = Lru::new(2);
        // a b a c (evicts b) b (miss, evicts a) a (miss, evicts c) b
        let got = hits(&mut lru, &[1, 2, 1, 3, 2, 1, 2]);
        assert_eq!(got, [false, false, true, false, false, false, true]);
        assert!(lru.contains(1) && lru.contains(2) && !lru.contains(3));
    }

    #[test]
    fn lru_of_one_and_a_loop_larger_than_it() {
        let mut lru = Lru::new(1);
        assert_eq!(hits(&mut lru, &[5, 5, 6, 5]), [false, true, false, false]);
        let mut lru = Lru::new(3);
        let looped: Vec<u64> = (0..20).map(|i| i % 4).collect();
        assert!(hits(&mut lru, &looped).iter().all(|&h| !h));
    }

    #[test]
    fn belady_keeps_what_is_needed_soonest() {
        // Capacity 2, trace a b c a b: c is never needed again, so it is not kept and both
        // a and b hit; LRU hits neither.
        let trace = [1, 2, 3, 1, 2];
        let mut opt = Belady::new(2, &trace);
        assert_eq!(hits(&mut opt, &trace), [false, false, false, true, true]);
        let mut lru = Lru::new(2);
        assert_eq!(hits(&mut lru, &trace), [false; 5]);

        // Capacity 2, trace a b c b c a: at c, a (next needed at 5) goes rather than b (at
        // 3), so b and c hit; a is then never needed again and is not kept.
        let trace = [1, 2, 3, 2, 3, 1];
        let mut opt = Belady::new(2, &trace);
        assert_eq!(
            hits(&mut opt, &trace),
            [false, false, false, true, true, false]
        );
        assert!(opt.contains(3) && opt.contains(2) && !opt.contains(1));
    }

    #[test]
    fn belady_beats_lru_on_a_loop() {
        let looped: Vec<u64> = (0..40).map(|i| i % 4).collect();
        let mut opt = Belady::new(3, &looped);
        let got = replay(&mut opt, &trace(&looped, &[]), 0);
        // After the first pass (4 misses), one miss per pass of 4: 9 passes of 3 hits.
        assert_eq!(got.hits, 27);
    }

    #[test]
    fn replay_counts_after_the_warmup_and_checks_watched_keys() {
        let mut lru = Lru::new(2);
        let got = replay(&mut lru, &trace(&[1, 1, 1, 2, 2], &[1, 2, 3]), 2);
        assert_eq!(got.hits, 2);
        assert_eq!(got.counted, 3);
        assert_eq!(got.watched_cached, 2);
        assert!((got.hit_ratio() - 2.0 / 3.0).abs() < 1e-12);

        // One-hit keys left out of the count: 2 hits of the 2 requests for key 1 after the
        // first.
        let mut lru = Lru::new(2);
        let mut t = trace(&[1, ONE_HIT_BASE, 1, ONE_HIT_BASE + 1, 1], &[]);
        t.count_one_hit = false;
        let got = replay(&mut lru, &t, 1);
        assert_eq!((got.hits, got.counted), (2, 2));
    }

    #[test]
    fn the_peers_hit_what_they_hold() {
        let keys: Vec<u64> = (0..50).chain(0..50).collect();
        let peers: [Box<dyn Policy>; 3] = [
            Box::new(Moka::new(100)),
            Box::new(QuickCache::new(100)),
            Box::new(FastMmap::new(FastMmapConfig {
                pages: 1,
                page_size: 64 * 1024,
                lock_kind: LockKind::default(),
                requests_per_second: 10,
            })),
        ];
        for mut p in peers {
            let got = replay(p.as_mut(), &trace(&keys, &[0, 49, 1000]), 50);
            assert_eq!(got.hits, 50, "{}", p.name());
            assert_eq!(got.watched_cached, 2, "{}", p.name());
        }
    }
}
