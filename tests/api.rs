//! The public API on one process: every operation, on both layouts.

use std::time::{Duration, UNIX_EPOCH};

use fastmmap::{Cache, Entry, EntryFlags, Error, Expiry, Layout, ManualClock, Update};

fn clock() -> ManualClock {
    ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
}

fn open(dir: &tempfile::TempDir, layout: Layout) -> Cache {
    Cache::builder()
        .path(dir.path().join("api.cache"))
        .layout(layout)
        .num_pages(7)
        .page_size(8192)
        .clock(clock())
        .open()
        .unwrap()
}

fn each_layout(test: impl Fn(Cache)) {
    for layout in [Layout::Native, Layout::FastMmap] {
        let dir = tempfile::tempdir().unwrap();
        test(open(&dir, layout));
    }
}

#[test]
fn cache_is_send_sync_clone() {
    fn assert_bounds<T: Send + Sync + Clone + 'static>() {}
    assert_bounds::<Cache>();
}

#[test]
fn set_get_remove_take() {
    each_layout(|cache| {
        assert!(cache.set(b"k", b"v").unwrap());
        assert_eq!(cache.get(b"k").unwrap(), Some(b"v".to_vec()));
        assert!(cache.contains_key(b"k").unwrap());
        assert_eq!(cache.get_with(b"k", |v| v.len()).unwrap(), Some(1));
        assert!(cache.set(b"k", b"").unwrap());
        assert_eq!(
            cache.get(b"k").unwrap(),
            Some(vec![]),
            "empty values are values"
        );
        assert!(cache.remove(b"k").unwrap());
        assert!(!cache.remove(b"k").unwrap());
        assert_eq!(cache.get(b"k").unwrap(), None);
        assert!(!cache.contains_key(b"k").unwrap());
        cache.set(b"t", b"taken").unwrap();
        assert_eq!(cache.take(b"t").unwrap(), Some(b"taken".to_vec()));
        assert_eq!(cache.take(b"t").unwrap(), None);
        assert!(cache.set(b"", b"empty key").unwrap());
        assert_eq!(cache.get(b"").unwrap(), Some(b"empty key".to_vec()));
        let binary: Vec<u8> = (0..=255).collect();
        cache.set(&binary, &binary).unwrap();
        assert_eq!(cache.get(&binary).unwrap(), Some(binary.clone()));
    });
}

#[test]
fn entry_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let cache = Cache::builder()
        .path(dir.path().join("c"))
        .clock(clock.clone())
        .open()
        .unwrap();
    cache
        .set_with(b"k", b"v", Expiry::After(Duration::from_secs(60)))
        .unwrap();
    clock.advance(Duration::from_secs(5));
    let e: Entry = cache.entry(b"k").unwrap().unwrap();
    assert_eq!(e.value, b"v");
    assert_eq!(
        e.expires_at,
        Some(UNIX_EPOCH + Duration::from_secs(1_700_000_060))
    );
    assert_eq!(
        e.last_access,
        UNIX_EPOCH + Duration::from_secs(1_700_000_005),
        "a read refreshes last access"
    );
    assert_eq!(e.modseq, None);
    cache.set_with(b"n", b"v", Expiry::Never).unwrap();
    assert_eq!(cache.entry(b"n").unwrap().unwrap().expires_at, None);
}

#[test]
fn update_is_read_modify_write() {
    each_layout(|cache| {
        let incr = |old: Option<&[u8]>| {
            let n = old.map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap()));
            Update::Set((n + 1).to_le_bytes().to_vec())
        };
        for i in 1..=10u64 {
            assert_eq!(
                cache.update(b"n", incr).unwrap(),
                Some(i.to_le_bytes().to_vec())
            );
        }
        assert_eq!(
            cache.update(b"n", |_| Update::Keep).unwrap(),
            Some(10u64.to_le_bytes().to_vec())
        );
        assert_eq!(cache.update(b"absent", |_| Update::Keep).unwrap(), None);
        assert_eq!(cache.update(b"n", |_| Update::Remove).unwrap(), None);
        assert_eq!(cache.get(b"n").unwrap(), None);
        let v = cache
            .update(b"e", |_| Update::SetWith(b"x".to_vec(), Expiry::Never))
            .unwrap();
        assert_eq!(v, Some(b"x".to_vec()));
    });
}

#[test]
fn get_or_insert_with_computes_once() {
    each_layout(|cache| {
        let mut calls = 0;
        let v = cache
            .get_or_insert_with(b"k", || {
                calls += 1;
                b"computed".to_vec()
            })
            .unwrap();
        assert_eq!(v, b"computed");
        let v = cache
            .get_or_insert_with(b"k", || {
                calls += 1;
                b"again".to_vec()
            })
            .unwrap();
        assert_eq!(v, b"computed");
        assert_eq!(calls, 1);
    });
}

#[test]
fn many_and_multi() {
    each_layout(|cache| {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..50u32)
            .map(|i| {
                (
                    format!("key{i}").into_bytes(),
                    format!("value{i}").into_bytes(),
                )
            })
            .collect();
        assert_eq!(cache.set_many(&pairs).unwrap(), 50);
        let mut keys: Vec<Vec<u8>> = pairs.iter().map(|(k, _)| k.clone()).collect();
        keys.push(b"missing".to_vec());
        let got = cache.get_many(&keys).unwrap();
        for (i, (_, v)) in pairs.iter().enumerate() {
            assert_eq!(got[i].as_ref(), Some(v));
        }
        assert_eq!(got[50], None);

        assert_eq!(
            cache
                .multi_set(b"user:7", &[(b"name", b"ann"), (b"mail", b"a@x")])
                .unwrap(),
            2
        );
        let got = cache
            .multi_get(b"user:7", &[&b"mail"[..], b"name", b"nope"])
            .unwrap();
        assert_eq!(
            got,
            vec![Some(b"a@x".to_vec()), Some(b"ann".to_vec()), None]
        );
        // Stored under the joined key, as Cache::FastMmap does.
        assert!(
            cache
                .keys()
                .map(Result::unwrap)
                .any(|k| k == b"user:7-name")
        );
    });
}

#[test]
fn modseq_and_tombstones() {
    each_layout(|cache| {
        assert!(cache.set_if_newer(b"k", b"v5", 5).unwrap());
        assert!(
            !cache.set_if_newer(b"k", b"v4", 4).unwrap(),
            "older modseq refused"
        );
        let e = cache.entry(b"k").unwrap().unwrap();
        assert_eq!((e.value.as_slice(), e.modseq), (&b"v5"[..], Some(5)));
        cache.remove_with_modseq(b"k", 6).unwrap();
        assert_eq!(
            cache.get(b"k").unwrap(),
            None,
            "a tombstone reads as a miss"
        );
        assert!(
            !cache.set(b"k", b"plain").unwrap(),
            "a live tombstone refuses a plain store"
        );
        assert!(!cache.set_if_newer(b"k", b"v5again", 5).unwrap());
        assert!(cache.set_if_newer(b"k", b"v7", 7).unwrap());
        assert_eq!(cache.get(b"k").unwrap(), Some(b"v7".to_vec()));
        assert_eq!(
            cache.keys().map(Result::unwrap).collect::<Vec<_>>(),
            vec![b"k".to_vec()]
        );
    });
}

#[test]
fn iter_keys_purge_clear_stats() {
    each_layout(|cache| {
        for i in 0..100u32 {
            cache
                .set(format!("k{i}").as_bytes(), &i.to_le_bytes())
                .unwrap();
        }
        let mut keys: Vec<Vec<u8>> = cache.keys().map(Result::unwrap).collect();
        keys.sort();
        assert_eq!(keys.len(), 100);
        for (k, e) in cache.iter().map(Result::unwrap) {
            let i: u32 = std::str::from_utf8(&k[1..]).unwrap().parse().unwrap();
            assert_eq!(e.value, i.to_le_bytes());
        }
        cache.reset_stats().unwrap();
        cache.get(b"k1").unwrap();
        cache.get(b"nope").unwrap();
        let s = cache.stats().unwrap();
        assert_eq!((s.reads, s.hits, s.entries, s.resets), (2, 1, 100, 0));
        assert_eq!(s.pages.len(), 7);
        assert!(s.used_bytes > 100 * 24 && s.free_bytes > 0);
        assert_eq!(cache.purge().unwrap(), 0);
        cache.clear().unwrap();
        assert_eq!(cache.keys().count(), 0);
        assert_eq!(cache.stats().unwrap().entries, 0);
    });
}

#[test]
fn too_large_is_refused_and_old_value_kept() {
    // Without an overflow area (the FastMmap layout, or a native file asked for none) an
    // entry larger than a page is refused.
    let dir = tempfile::tempdir().unwrap();
    let no_area = Cache::builder()
        .path(dir.path().join("api.cache"))
        .num_pages(7)
        .page_size(8192)
        .overflow_size(0)
        .clock(clock())
        .open()
        .unwrap();
    assert_eq!(no_area.max_value_size(), 0);
    let dir = tempfile::tempdir().unwrap();
    for cache in [no_area, open(&dir, Layout::FastMmap)] {
        cache.set(b"k", b"old").unwrap();
        let max = cache.max_entry_size();
        let huge = vec![0u8; max];
        match cache.set(b"k", &huge) {
            Err(Error::TooLarge {
                needed,
                max: m,
                path,
            }) => {
                assert!(needed > m);
                assert_eq!(m, max);
                assert!(path.ends_with("api.cache"));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(cache.get(b"k").unwrap(), Some(b"old".to_vec()));
        assert!(matches!(
            cache.update(b"k", |_| Update::Set(huge.clone())),
            Err(Error::TooLarge { .. })
        ));
        assert_eq!(cache.get(b"k").unwrap(), Some(b"old".to_vec()));
        assert!(matches!(
            cache.set_many(&[(&b"a"[..], &b"1"[..]), (b"k", &huge)]),
            Err(Error::TooLarge { .. })
        ));
        assert_eq!(
            cache.get(b"a").unwrap(),
            None,
            "nothing stored when one pair is too large"
        );
        // The largest entry that fits does fit.
        let fits = vec![1u8; max - 24 - 1];
        assert!(cache.set(b"k", &fits).unwrap());
        assert_eq!(cache.get(b"k").unwrap(), Some(fits));
    }
}

/// A native file has an overflow area by default: a value larger than a page is stored, and
/// one byte more than `max_value_size` is refused with the old value kept.
#[test]
fn values_over_max_value_size_are_refused_and_old_value_kept() {
    let dir = tempfile::tempdir().unwrap();
    // 16 pages of 8 KiB: a default area of 16 KiB, and values up to half of it.
    let cache = Cache::builder()
        .path(dir.path().join("api.cache"))
        .num_pages(16)
        .page_size(8192)
        .clock(clock())
        .open()
        .unwrap();
    let max = cache.max_value_size();
    assert_eq!(max, 8192, "half the default area");
    assert!(
        max > cache.max_entry_size(),
        "the default area takes more than a page"
    );
    cache.set(b"k", b"old").unwrap();
    let huge = vec![0u8; max + 1];
    match cache.set(b"k", &huge) {
        Err(Error::ValueTooLarge { len, max: m, path }) => {
            assert_eq!((len, m), (max + 1, max));
            assert!(path.ends_with("api.cache"));
        }
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    assert_eq!(cache.get(b"k").unwrap(), Some(b"old".to_vec()));
    assert!(matches!(
        cache.update(b"k", |_| Update::Set(huge.clone())),
        Err(Error::ValueTooLarge { .. })
    ));
    assert_eq!(cache.get(b"k").unwrap(), Some(b"old".to_vec()));
    assert!(matches!(
        cache.set_many(&[(&b"a"[..], &b"1"[..]), (b"k", &huge)]),
        Err(Error::ValueTooLarge { .. })
    ));
    assert_eq!(cache.get(b"a").unwrap(), None, "nothing stored");
    // A value larger than a page, up to the limit, is stored; and since the default limit is
    // half the area, a value of the largest size replaces another of that size in place of
    // it (a replacement claims its blocks before it frees the old ones).
    let big = vec![2u8; cache.max_entry_size()];
    assert!(cache.set(b"k", &big).unwrap());
    assert_eq!(cache.get(b"k").unwrap(), Some(big));
    for fill in 3..6u8 {
        let largest = vec![fill; max];
        assert!(cache.set(b"l", &largest).unwrap(), "replace {fill}");
        assert_eq!(cache.get(b"l").unwrap(), Some(largest));
    }
}

#[test]
fn reentrant_calls_are_refused() {
    each_layout(|cache| {
        cache.set(b"k", b"v").unwrap();
        let inner = cache.get_with(b"k", |_| cache.get(b"k")).unwrap().unwrap();
        assert!(matches!(inner, Err(Error::Reentrant { .. })));
        let mut seen = None;
        cache
            .update(b"k", |_| {
                seen = Some(cache.set(b"other", b"x"));
                Update::Keep
            })
            .unwrap();
        assert!(matches!(seen, Some(Err(Error::Reentrant { .. }))));
        // After the closures, the cache works normally.
        assert!(cache.set(b"other", b"x").unwrap());
    });
}

#[test]
fn panic_in_closure_releases_the_lock() {
    each_layout(|cache| {
        cache.set(b"k", b"v").unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cache.get_with(b"k", |_| panic!("boom")).unwrap();
        }));
        assert!(caught.is_err());
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cache.update(b"k", |_| panic!("boom")).unwrap();
        }));
        assert!(caught.is_err());
        assert_eq!(cache.get(b"k").unwrap(), Some(b"v".to_vec()));
        let c2 = cache.clone();
        std::thread::spawn(move || c2.set(b"k", b"w").unwrap())
            .join()
            .unwrap();
        assert_eq!(cache.get(b"k").unwrap(), Some(b"w".to_vec()));
    });
}

#[test]
fn threads_share_one_cache() {
    each_layout(|cache| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        cache
                            .update(b"counter", |old| {
                                let n =
                                    old.map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap()));
                                Update::Set((n + 1).to_le_bytes().to_vec())
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            cache.get(b"counter").unwrap(),
            Some(8000u64.to_le_bytes().to_vec())
        );
    });
}

#[test]
fn lock_timeout_reports_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.cache");
    let cache = Cache::builder().path(&path).num_pages(1).open().unwrap();
    let waiter = Cache::builder()
        .path(&path)
        .lock_timeout(Duration::from_millis(50))
        .open()
        .unwrap();
    cache.set(b"k", b"v").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        cache
            .get_with(b"k", |_| {
                tx.send(()).unwrap();
                done_rx.recv().unwrap();
            })
            .unwrap();
    });
    rx.recv().unwrap();
    match waiter.get(b"k") {
        Err(Error::LockTimeout {
            page: 0, timeout, ..
        }) => assert_eq!(timeout, Duration::from_millis(50)),
        other => panic!("expected LockTimeout, got {other:?}"),
    }
    done_tx.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(waiter.get(b"k").unwrap(), Some(b"v".to_vec()));
}

#[test]
fn unlink_on_drop_removes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.cache");
    let cache = Cache::builder()
        .path(&path)
        .unlink_on_drop(true)
        .open()
        .unwrap();
    let clone = cache.clone();
    drop(cache);
    assert!(path.exists(), "a clone still uses it");
    drop(clone);
    assert!(!path.exists());
}

#[test]
fn perl_flags_are_stored_and_read_back() {
    each_layout(|cache| {
        let both = EntryFlags::UTF8_KEY | EntryFlags::UTF8_VALUE;
        assert!(
            cache
                .set_with_flags("clé".as_bytes(), "café".as_bytes(), Expiry::Never, both)
                .unwrap()
        );
        let e = cache.entry("clé".as_bytes()).unwrap().unwrap();
        assert_eq!(e.flags, both);
        assert!(e.flags.key_is_utf8() && e.flags.value_is_utf8() && !e.flags.is_undef());
        cache
            .set_with_flags(b"nothing", b"", Expiry::Never, EntryFlags::UNDEF)
            .unwrap();
        let e = cache.entry(b"nothing").unwrap().unwrap();
        assert!(e.flags.is_undef());
        assert_eq!(e.value, b"");
        // Plain stores write byte strings.
        cache.set(b"plain", b"bytes").unwrap();
        assert_eq!(
            cache.entry(b"plain").unwrap().unwrap().flags,
            EntryFlags::NONE
        );
    });
}

#[test]
fn undef_with_a_value_is_refused_and_stores_nothing() {
    each_layout(|cache| {
        cache.set(b"k", b"old").unwrap();
        for flags in [
            EntryFlags::UNDEF,
            EntryFlags::UNDEF | EntryFlags::UTF8_VALUE | EntryFlags::UTF8_KEY,
        ] {
            let err = cache
                .set_with_flags(b"k", b"bytes Perl would lose", Expiry::Never, flags)
                .unwrap_err();
            assert!(
                matches!(err, Error::InvalidValue { .. }),
                "{flags:?}: {err:?}"
            );
            let message = err.to_string();
            assert!(
                message.contains("api.cache") && message.contains("undef"),
                "{message}"
            );
            assert_eq!(
                cache.get(b"k").unwrap(),
                Some(b"old".to_vec()),
                "old value kept"
            );
            cache
                .set_with_flags(b"new", b"x", Expiry::Never, flags)
                .unwrap_err();
            assert_eq!(cache.get(b"new").unwrap(), None, "nothing stored");
        }
        // Undef with no value bytes is what Perl writes for undef.
        assert!(
            cache
                .set_with_flags(b"k", b"", Expiry::Never, EntryFlags::UNDEF)
                .unwrap()
        );
        assert!(cache.entry(b"k").unwrap().unwrap().flags.is_undef());
    });
}

/// The last second a file can hold (`u32::MAX`, in 2106), as an expiry and as an access time,
/// read back through `entry` and `iter` exactly: times from the file are never added to
/// unchecked.
#[test]
fn times_at_the_end_of_the_u32_range_read_back_exactly() {
    let last = UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX));
    let second = Duration::from_secs(1);
    for layout in [Layout::Native, Layout::FastMmap] {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(last - second);
        let cache = Cache::builder()
            .path(dir.path().join("late.cache"))
            .layout(layout)
            .num_pages(7)
            .page_size(8192)
            .clock(clock.clone())
            .open()
            .unwrap();
        cache.set_with(b"latest", b"v", Expiry::At(last)).unwrap();
        let far = last + Duration::from_secs(1 << 40);
        cache.set_with(b"beyond", b"w", Expiry::At(far)).unwrap();
        cache
            .set_with(b"after", b"x", Expiry::After(Duration::from_secs(u64::MAX)))
            .unwrap();
        for key in [&b"latest"[..], b"beyond", b"after"] {
            let e = cache.entry(key).unwrap().unwrap();
            assert_eq!(e.expires_at, Some(last), "{layout:?} {key:?}");
            assert_eq!(e.last_access, last - second, "{layout:?} {key:?}");
        }
        let listed: Vec<(Vec<u8>, Entry)> = cache.iter().map(Result::unwrap).collect();
        assert_eq!(listed.len(), 3);
        for (key, e) in &listed {
            assert_eq!(e.expires_at, Some(last), "{layout:?} {key:?}");
            assert_eq!(e.last_access, last - second, "{layout:?} {key:?}");
        }
        // A clock at or past the last second stores that second as the access time.
        clock.set(last + Duration::from_secs(1000));
        cache.set_with(b"never", b"n", Expiry::Never).unwrap();
        let e = cache.entry(b"never").unwrap().unwrap();
        assert_eq!((e.expires_at, e.last_access), (None, last));
        assert_eq!(
            cache.entry(b"latest").unwrap(),
            None,
            "expired at its second"
        );
    }
}
