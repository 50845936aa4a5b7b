//! Eviction on small caches: least recently used goes first, big values survive churn, and in
//! the native layout entries read since they were stored outlive scans (issue 21).

use std::time::{Duration, UNIX_EPOCH};

use fastmmap::{Cache, Layout, ManualClock};

fn one_page(layout: Layout, page_size: u32) -> (tempfile::TempDir, Cache, ManualClock) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let cache = Cache::builder()
        .path(dir.path().join("one"))
        .layout(layout)
        .num_pages(1)
        .page_size(page_size)
        .clock(clock.clone())
        .open()
        .unwrap();
    (dir, cache, clock)
}

#[test]
fn most_recently_used_entries_survive() {
    for layout in [Layout::Native, Layout::FastMmap] {
        let (_d, cache, clock) = one_page(layout, 16384);
        let value = [1u8; 200];
        let hot: Vec<String> = (0..5).map(|i| format!("hot{i}")).collect();
        for k in &hot {
            cache.set(k.as_bytes(), &value).unwrap();
        }
        for i in 0..500u32 {
            clock.advance(Duration::from_secs(1));
            for k in &hot {
                assert!(
                    cache.get(k.as_bytes()).unwrap().is_some(),
                    "{k} evicted at round {i}"
                );
            }
            cache.set(format!("cold{i}").as_bytes(), &value).unwrap();
        }
        let cold_left = (0..500u32)
            .filter(|i| cache.contains_key(format!("cold{i}").as_bytes()).unwrap())
            .count();
        assert!(
            cold_left < 80,
            "{cold_left} cold entries left in a 16 KiB page"
        );
        assert!(
            cache.contains_key(b"cold499").unwrap(),
            "the newest entry is kept"
        );
    }
}

#[test]
fn large_values_survive_heavy_churn_of_small_keys() {
    for layout in [Layout::Native, Layout::FastMmap] {
        let (_d, cache, clock) = one_page(layout, 65536);
        let big = vec![0x5au8; 25_000];
        cache.set(b"big", &big).unwrap();
        for round in 0..50_000u32 {
            let key = format!("small{}", round % 64);
            cache.set(key.as_bytes(), b"tiny value").unwrap();
            if round % 64 == 63 {
                cache.remove(key.as_bytes()).unwrap();
            }
            if round % 1000 == 0 {
                clock.advance(Duration::from_secs(1));
                assert_eq!(
                    cache.get(b"big").unwrap().as_deref(),
                    Some(&big[..]),
                    "round {round}"
                );
            }
        }
        let s = cache.stats().unwrap();
        assert!(
            s.pages[0].slots < 1000,
            "deleted slots are reused, the table does not balloon: {s:?}"
        );
        assert_eq!(s.resets, 0);
    }
}

#[test]
fn a_value_as_large_as_a_page_allows_always_fits() {
    let (_d, cache, _clock) = one_page(Layout::Native, 8192);
    for i in 0..2000u32 {
        cache.set(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    // The slot table has grown; the largest entry still fits (the table shrinks for it).
    assert!(cache.stats().unwrap().pages[0].slots > 89);
    let biggest = vec![7u8; cache.max_entry_size() - 24 - 3];
    assert!(cache.set(b"big", &biggest).unwrap());
    assert_eq!(cache.get(b"big").unwrap(), Some(biggest));
}

/// Keys `0..n` stored in order within one second (the clock never moves), with a `purge`
/// (a rebuild that evicts nothing live) every `purge_every` stores if given. Returns which
/// keys are still present.
fn churn_within_one_second(cache: &Cache, n: usize, purge_every: Option<usize>) -> Vec<bool> {
    let key = |i: usize| format!("same-second-{i}");
    for i in 0..n {
        assert!(cache.set(key(i).as_bytes(), &[i as u8; 200]).unwrap());
        if purge_every.is_some_and(|every| i % every == every - 1) {
            assert_eq!(cache.purge().unwrap(), 0);
        }
    }
    (0..n)
        .map(|i| cache.contains_key(key(i).as_bytes()).unwrap())
        .collect()
}

#[test]
fn within_one_second_the_oldest_writes_go_first() {
    for layout in [Layout::Native, Layout::FastMmap] {
        for purge_every in [None, Some(37)] {
            let (_d, cache, _clock) = one_page(layout, 16384);
            let n = 400;
            let present = churn_within_one_second(&cache, n, purge_every);
            // Every entry has the same last access second: the write order decides, so what is
            // left is exactly the most recent writes.
            let first_kept = present.iter().position(|&p| p).expect("something kept");
            let case = format!("{layout:?}, purge every {purge_every:?}: present {present:?}");
            assert!(
                present[first_kept..].iter().all(|&p| p),
                "an entry written later than a survivor was evicted: {case}"
            );
            assert!(first_kept > 0, "nothing was evicted: {case}");
            assert!(
                n - first_kept >= 20,
                "only {} entries kept in a 16 KiB page: {case}",
                n - first_kept
            );
        }
    }
}

/// Issue 21: in the native layout an entry read since it was stored outlives a scan of keys
/// used once (the first read, lock-free otherwise, takes the lock to protect the entry); the
/// FastMmap layout keeps Cache::FastMmap's rule, under which the scan flushes it.
#[test]
fn entries_read_once_outlive_a_scan_in_the_native_layout_only() {
    for layout in [Layout::Native, Layout::FastMmap] {
        let (_d, cache, clock) = one_page(layout, 65536);
        let value = [7u8; 100];
        for i in 0..100 {
            cache.set(format!("hot{i}").as_bytes(), &value).unwrap();
        }
        clock.advance(Duration::from_secs(1));
        for i in 0..100 {
            assert!(cache.get(format!("hot{i}").as_bytes()).unwrap().is_some());
        }
        // The scan comes later than the reads: recency alone keeps the scan.
        clock.advance(Duration::from_secs(1));
        for i in 0..5_000 {
            cache.set(format!("scan{i}").as_bytes(), &value).unwrap();
        }
        let kept = (0..100)
            .filter(|i| cache.contains_key(format!("hot{i}").as_bytes()).unwrap())
            .count();
        match layout {
            Layout::Native => assert_eq!(kept, 100, "native: hot entries kept"),
            _ => assert_eq!(
                kept, 0,
                "FastMmap layout: Perl's rule, the scan flushes them"
            ),
        }
        assert_eq!(cache.stats().unwrap().resets, 0);
    }
}
