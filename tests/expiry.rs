//! Expiry with a manual clock: no sleeping.

use std::time::{Duration, UNIX_EPOCH};

use fastmmap::{Cache, Expiry, Layout, ManualClock, Update};

const START: u64 = 1_700_000_000;

fn setup(layout: Layout, expire_after: Option<u64>) -> (tempfile::TempDir, Cache, ManualClock) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(START));
    let mut b = Cache::builder()
        .path(dir.path().join("e"))
        .layout(layout)
        .num_pages(3)
        .page_size(8192)
        .clock(clock.clone());
    if let Some(secs) = expire_after {
        b = b.expire_after(Duration::from_secs(secs));
    }
    (dir, b.open().unwrap(), clock)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn default_expiry_from_the_builder() {
    for layout in [Layout::Native, Layout::FastMmap] {
        let (_d, cache, clock) = setup(layout, Some(10));
        cache.set(b"k", b"v").unwrap();
        assert_eq!(
            cache.entry(b"k").unwrap().unwrap().expires_at,
            Some(UNIX_EPOCH + secs(START + 10))
        );
        clock.advance(secs(9));
        assert_eq!(cache.get(b"k").unwrap(), Some(b"v".to_vec()));
        clock.advance(secs(1));
        assert_eq!(
            cache.get(b"k").unwrap(),
            None,
            "expired when now reaches expire_on"
        );
        assert!(!cache.contains_key(b"k").unwrap());
        assert!(
            !cache.remove(b"k").unwrap(),
            "an expired entry is not a live value"
        );
    }
}

#[test]
fn no_default_means_never() {
    let (_d, cache, clock) = setup(Layout::Native, None);
    cache.set(b"k", b"v").unwrap();
    clock.advance(secs(100 * 365 * 86400 / 10));
    assert_eq!(cache.get(b"k").unwrap(), Some(b"v".to_vec()));
}

#[test]
fn explicit_expiries() {
    let (_d, cache, clock) = setup(Layout::Native, Some(5));
    cache.set_with(b"never", b"v", Expiry::Never).unwrap();
    cache
        .set_with(b"after", b"v", Expiry::After(Duration::from_millis(2500)))
        .unwrap();
    cache
        .set_with(b"at", b"v", Expiry::At(UNIX_EPOCH + secs(START + 4)))
        .unwrap();
    cache
        .set_with(b"past", b"v", Expiry::At(UNIX_EPOCH + secs(START - 1)))
        .unwrap();
    cache
        .set_with(b"zero", b"v", Expiry::After(Duration::ZERO))
        .unwrap();
    assert_eq!(cache.get(b"past").unwrap(), None);
    assert_eq!(
        cache.get(b"zero").unwrap(),
        None,
        "expires the second it is stored"
    );
    clock.advance(secs(2));
    assert!(
        cache.get(b"after").unwrap().is_some(),
        "2.5 s rounds up to 3 s, never early"
    );
    clock.advance(secs(1));
    assert!(cache.get(b"after").unwrap().is_none());
    assert!(cache.get(b"at").unwrap().is_some());
    clock.advance(secs(1));
    assert!(cache.get(b"at").unwrap().is_none());
    clock.advance(secs(1_000_000));
    assert!(cache.get(b"never").unwrap().is_some());
}

#[test]
fn expired_entries_are_invisible_everywhere() {
    let (_d, cache, clock) = setup(Layout::Native, Some(10));
    for i in 0..20u32 {
        cache.set(&i.to_le_bytes(), b"short").unwrap();
        cache
            .set_with(&(100 + i).to_le_bytes(), b"long", Expiry::Never)
            .unwrap();
    }
    clock.advance(secs(10));
    assert_eq!(cache.keys().count(), 20);
    assert!(cache.iter().all(|r| r.unwrap().1.value == b"long"));
    let got = cache
        .get_many(&[0u32.to_le_bytes(), 100u32.to_le_bytes()])
        .unwrap();
    assert_eq!(got, vec![None, Some(b"long".to_vec())]);
    assert_eq!(
        cache
            .update(&0u32.to_le_bytes(), |old| {
                assert!(old.is_none(), "update sees an expired entry as absent");
                Update::Keep
            })
            .unwrap(),
        None
    );
    assert_eq!(
        cache.stats().unwrap().entries,
        40,
        "still stored until purged"
    );
    assert_eq!(cache.purge().unwrap(), 20);
    assert_eq!(cache.stats().unwrap().entries, 20);
}

#[test]
fn expired_entries_are_evicted_before_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(UNIX_EPOCH + secs(START));
    let cache = Cache::builder()
        .path(dir.path().join("c"))
        .num_pages(1)
        .page_size(8192)
        .clock(clock.clone())
        .open()
        .unwrap();
    let value = [9u8; 100];
    for i in 0..40u32 {
        cache
            .set_with(format!("old{i}").as_bytes(), &value, Expiry::After(secs(1)))
            .unwrap();
    }
    clock.advance(secs(1));
    // Recently stored but expired entries go before the least recently used live ones. 25
    // live entries stay under the 60% fill target; 40 expired ones on top overflow the page.
    for i in 0..25u32 {
        cache.set(format!("live{i}").as_bytes(), &value).unwrap();
        clock.advance(secs(1));
    }
    for i in 0..25u32 {
        assert!(
            cache.get(format!("live{i}").as_bytes()).unwrap().is_some(),
            "live{i} evicted"
        );
    }
    assert_eq!(
        cache.stats().unwrap().entries,
        25,
        "the expired entries were evicted"
    );
}

#[test]
fn tombstones_expire_like_entries() {
    let (_d, cache, clock) = setup(Layout::Native, Some(30));
    cache.set_if_newer(b"k", b"v1", 1).unwrap();
    cache.remove_with_modseq(b"k", 2).unwrap();
    assert!(!cache.set(b"k", b"plain").unwrap());
    clock.advance(secs(30));
    assert!(
        cache.set(b"k", b"plain").unwrap(),
        "an expired tombstone refuses nothing"
    );
    assert_eq!(cache.get(b"k").unwrap(), Some(b"plain".to_vec()));
}
