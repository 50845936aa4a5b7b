//! Journaled changes killed at every step (real forked processes, both lock kinds), their
//! re-application killed in turn, hostile journals, and the header's `journal_size`.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use xxhash_rust::xxh3::xxh3_64;

use super::*;
use crate::page::consts::FLAG_OVERFLOW;
use crate::page::{NewEntry, PageView};
use crate::store::{LockKind, OpenRequest, OverflowRequest, lock_kinds, open_shared};

const PAGES: u32 = 4;
const PAGE_SIZE: u32 = 65536;
/// The page the changes under test make.
const P: u32 = 1;
/// Another page, which nothing here may write.
const Q: u32 = 2;
const NOW: u32 = 1_000;
const TIMEOUT: Option<Duration> = Some(Duration::from_secs(10));
/// A forked child that has not ended by then is killed, and the test fails.
const CHILD_DEADLINE: Duration = Duration::from_secs(60);

fn request(path: &Path, kind: LockKind, journal: bool) -> OpenRequest {
    OpenRequest {
        overflow: OverflowRequest {
            size: Some(64 * 4096),
            max_value_size: Some(131_072),
        },
        journal,
        ..OpenRequest::native(path, kind, PAGES, PAGE_SIZE)
    }
}

fn open(dir: &tempfile::TempDir, name: &str, kind: LockKind) -> Arc<SharedFile> {
    open_shared(&request(&dir.path().join(name), kind, true)).expect("open")
}

fn hash(key: &[u8]) -> u32 {
    (xxh3_64(key) >> 32) as u32
}

fn entry<'k>(key: &'k [u8], value: &'k [u8], flags: u32) -> NewEntry<'k> {
    NewEntry {
        slot_hash: hash(key),
        key,
        value,
        expire_on: 0,
        flags,
        modseq: None,
    }
}

fn user_value(i: usize) -> Vec<u8> {
    format!("user-{i}-").repeat(20).into_bytes()
}

fn large(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Stores `value` in the overflow area for `place`'s page, and its entry in `p`.
fn store_large(p: &mut PageMut<'_>, place: Place<'_>, key: &[u8], value: &[u8]) {
    let r = place
        .file
        .overflow_write(place.page, value)
        .expect("room in the area");
    let slots = place.file.geometry().start_slots;
    p.store(&entry(key, &r.encode(), FLAG_OVERFLOW), NOW, slots)
        .expect("store");
}

/// Page `P` as the users left it: 40 small entries and one large value.
fn users_write(file: &SharedFile) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut g = file.lock(P, TIMEOUT).expect("lock");
    let slots = file.geometry().start_slots;
    let mut want = BTreeMap::new();
    g.change(|p| {
        for i in 0..40 {
            let key = format!("u{i}").into_bytes();
            p.store(&entry(&key, &user_value(i), 0), NOW, slots)?;
            want.insert(key, user_value(i));
        }
        Ok(())
    })
    .expect("users' writes");
    let big = large(1, 100_000);
    let req = entry(b"big-old", &big, 0);
    g.store_overflow(&req, NOW, false)
        .expect("no damage")
        .expect("room");
    want.insert(b"big-old".to_vec(), big);
    want
}

/// The change under test: evicts five users' entries and the large value, adds twenty small
/// entries and two large values.
fn the_change(p: &mut PageMut<'_>, place: Place<'_>) -> Result<(), Corrupt> {
    for i in 0..5 {
        let key = format!("u{i}").into_bytes();
        p.remove(hash(&key), &key, NOW)?;
    }
    p.remove(hash(b"big-old"), b"big-old", NOW)?;
    let slots = place.file.geometry().start_slots;
    for i in 0..20 {
        let key = format!("n{i}").into_bytes();
        p.store(&entry(&key, format!("new-{i}").as_bytes(), 0), NOW, slots)?;
    }
    store_large(p, place, b"big-a", &large(2, 70_000));
    store_large(p, place, b"big-b", &large(3, 9_000));
    Ok(())
}

fn after_change(before: &BTreeMap<Vec<u8>, Vec<u8>>) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut after = before.clone();
    for i in 0..5 {
        after.remove(format!("u{i}").as_bytes());
    }
    after.remove(&b"big-old"[..]);
    for i in 0..20 {
        after.insert(
            format!("n{i}").into_bytes(),
            format!("new-{i}").into_bytes(),
        );
    }
    after.insert(b"big-a".to_vec(), large(2, 70_000));
    after.insert(b"big-b".to_vec(), large(3, 9_000));
    after
}

/// Every entry of `page` (large values read from the area), locked as any user locks it.
fn contents(file: &SharedFile, page: u32) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut g = file.lock(page, TIMEOUT).expect("lock");
    entries_of(file, page, g.bytes())
}

fn entries_of(file: &SharedFile, page: u32, bytes: &[u8]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut found = BTreeMap::new();
    PageView::new(bytes)
        .for_each_entry(|e| {
            let value = if e.flags & FLAG_OVERFLOW != 0 {
                file.overflow_read(page, e.value)
                    .expect("large value intact")
            } else {
                e.value.to_vec()
            };
            found.insert(e.key.to_vec(), value);
        })
        .expect("page intact");
    found
}

/// Blocks the entries of `page` reference.
fn referenced(file: &SharedFile, page: u32) -> u32 {
    let mut g = file.lock(page, TIMEOUT).expect("lock");
    let mut blocks = 0;
    PageView::new(g.bytes())
        .for_each_entry(|e| {
            if e.flags & FLAG_OVERFLOW != 0 {
                blocks += crate::store::OverflowReference::decode(e.value)
                    .expect("reference")
                    .blocks;
            }
        })
        .expect("page intact");
    blocks
}

/// The overflow area's books agree with the pages: no block owned and unreferenced, no block
/// owned by no page, each page's owned word its references' blocks.
fn assert_area_clean(file: &SharedFile) {
    let mut used = 0;
    for page in 0..PAGES {
        let refs = referenced(file, page);
        let mut g = file.lock(page, TIMEOUT).expect("lock");
        assert_eq!(
            file.overflow_sweep(page, g.bytes(), true),
            Ok(0),
            "page {page} owns unreferenced blocks"
        );
        assert_eq!(file.overflow_owned(page), refs, "page {page}'s owned word");
        used += refs;
    }
    assert_eq!(file.overflow_free_unowned(true), 0);
    assert_eq!(file.overflow_usage().expect("area").used, used);
}

fn writer_word(file: &SharedFile) -> u32 {
    file.journal_writer()
        .expect("journal")
        .load(Ordering::Acquire)
}

/// Runs `f` in a forked child and returns its exit status (a panic exits 101). A child that
/// outlives [`CHILD_DEADLINE`] is killed and the test fails.
fn in_child(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child runs only `f` (this crate's code, which is fork-safe: see `fork.rs`) and
    // then `_exit`s, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: ends the child at once, without running the parent's exit handlers.
        unsafe { libc::_exit(code) }
    }
    let start = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        assert!(r == 0, "waitpid: {}", std::io::Error::last_os_error());
        if start.elapsed() > CHILD_DEADLINE {
            // SAFETY: `pid` is our child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the child did not end within {CHILD_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    libc::WEXITSTATUS(status)
}

/// In a child: the change under test, killed at `step` (0: not killed).
fn change_killed_at(file: &SharedFile, step: u32) -> i32 {
    in_child(|| {
        crash::DIE_AT.store(step, Ordering::Relaxed);
        let Ok(mut g) = file.lock(P, TIMEOUT) else {
            return 3;
        };
        match g.change_journaled(the_change) {
            Ok(()) => 0,
            Err(_) => 4,
        }
    })
}

/// In a child: locks page `P` (which re-applies its journal), killed at `step`.
fn redo_killed_at(file: &SharedFile, step: u32) -> i32 {
    in_child(|| {
        crash::DIE_AT.store(step, Ordering::Relaxed);
        match file.lock(P, TIMEOUT) {
            Ok(_) => 0,
            Err(_) => 3,
        }
    })
}

const STEPS: [u32; 10] = [
    crash::CHANGED,
    crash::CLAIMED,
    crash::MID_JOURNAL,
    crash::JOURNALED,
    crash::MARKED,
    crash::MID_COPY,
    crash::COPIED,
    crash::SETTLED,
    crash::CLEARED,
    crash::INVALIDATED,
];

/// After a change of `P` killed somewhere: nothing reset, the page as before (the change not
/// made: `made == false`) or as after, the area clean once the page is swept, and the journal
/// usable by another page's change.
fn assert_outcome(file: &SharedFile, before: &BTreeMap<Vec<u8>, Vec<u8>>, made: bool, what: &str) {
    let found = contents(file, P);
    let want = if made {
        after_change(before)
    } else {
        before.clone()
    };
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: keys"
    );
    assert!(found == want, "{what}: values");
    assert_eq!(file.resets(P), 0, "{what}: page reset");
    // Blocks claimed by a change killed before its marker: owned by the page, freed by the
    // documented sweep.
    file.lock(P, TIMEOUT).expect("lock").sweep_overflow();
    assert_area_clean(file);
    // Another page's journaled change takes the journal over from a dead change.
    let mut g = file.lock(Q, TIMEOUT).expect("lock");
    let slots = file.geometry().start_slots;
    g.change_journaled(|p, _| p.store(&entry(b"q", b"on q", 0), NOW, slots).map(drop))
        .unwrap_or_else(|c| panic!("{what}: another page's journaled change: {c}"));
    drop(g);
    assert_eq!(writer_word(file), 0, "{what}: journal left claimed");
    assert_eq!(
        contents(file, Q).get(&b"q"[..]).map(Vec::as_slice),
        Some(&b"on q"[..])
    );
}

#[test]
fn a_change_killed_at_any_step_is_undone_or_completed_never_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    for kind in lock_kinds() {
        for (n, &step) in [0].iter().chain(&STEPS).enumerate() {
            let what = format!("{kind:?}, killed at step {step}");
            let file = open(&dir, &format!("kill-{kind:?}-{n}"), kind);
            let before = users_write(&file);
            let status = change_killed_at(&file, step);
            let want = if step == 0 { 0 } else { crash::STATUS };
            assert_eq!(status, want, "{what}: child's status");
            assert_outcome(&file, &before, step == 0 || step >= crash::MARKED, &what);
        }
    }
}

#[test]
fn a_re_application_killed_at_any_step_is_completed_by_the_next_locker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redo_steps = [
        crash::MID_COPY,
        crash::COPIED,
        crash::SETTLED,
        crash::CLEARED,
        crash::INVALIDATED,
    ];
    for kind in lock_kinds() {
        for &step in &redo_steps {
            let what = format!("{kind:?}, re-application killed at step {step}");
            let file = open(&dir, &format!("redo-{kind:?}-{step}"), kind);
            let before = users_write(&file);
            assert_eq!(change_killed_at(&file, crash::MID_COPY), crash::STATUS);
            // Killed while re-applying, and again (unless the marker was cleared already): the
            // next locker (this process) completes it.
            assert_eq!(redo_killed_at(&file, step), crash::STATUS, "{what}");
            let again = if step < crash::CLEARED {
                crash::STATUS
            } else {
                0
            };
            assert_eq!(redo_killed_at(&file, crash::MID_COPY), again, "{what}");
            assert_outcome(&file, &before, true, &what);
        }
    }
}

/// Journaled changes of different pages at once, by two processes and two threads, share the
/// one journal: every change lands, and the journal ends free.
#[test]
fn changes_of_many_pages_at_once_share_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    const ROUNDS: u32 = 150;
    for kind in lock_kinds() {
        let file = open(&dir, &format!("many-{kind:?}"), kind);
        let slots = file.geometry().start_slots;
        let work = |page: u32| {
            for i in 0..ROUNDS {
                let mut g = file.lock(page, TIMEOUT).expect("lock");
                let key = format!("k{i}");
                let value = large(i as u8, 20 + 10 * (i as usize % 7));
                g.change_journaled(|p, _| {
                    p.store(&entry(key.as_bytes(), &value, 0), NOW, slots)
                        .map(drop)
                })
                .expect("journaled change");
            }
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(
                    in_child(|| {
                        work(0);
                        0
                    }),
                    0
                )
            });
            s.spawn(|| {
                assert_eq!(
                    in_child(|| {
                        work(3);
                        0
                    }),
                    0
                )
            });
            s.spawn(|| work(1));
            work(2);
        });
        for page in 0..PAGES {
            let found = contents(&file, page);
            for i in 0..ROUNDS {
                let key = format!("k{i}");
                let value = large(i as u8, 20 + 10 * (i as usize % 7));
                assert_eq!(
                    found.get(key.as_bytes()),
                    Some(&value),
                    "{kind:?} page {page} {key}"
                );
            }
            assert_eq!(file.resets(page), 0);
        }
        assert_eq!(writer_word(&file), 0);
    }
}

#[test]
fn a_shared_lock_completes_the_change_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    for kind in lock_kinds() {
        let file = open(&dir, &format!("shared-{kind:?}"), kind);
        let before = users_write(&file);
        assert_eq!(change_killed_at(&file, crash::MARKED), crash::STATUS);
        let g = file.lock_shared(P, TIMEOUT).expect("lock");
        let (bytes, problem) = g.as_is();
        assert_eq!(problem, None, "{kind:?}");
        assert!(
            entries_of(&file, P, bytes) == after_change(&before),
            "{kind:?}"
        );
        drop(g);
        assert_eq!(file.resets(P), 0);
        assert_area_clean(&file);
    }
}

#[test]
fn blocks_of_a_change_killed_before_its_marker_are_freed_by_the_next_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = open(&dir, "settle", LockKind::Fcntl);
    let before = users_write(&file);
    assert_eq!(change_killed_at(&file, crash::JOURNALED), crash::STATUS);
    let mut g = file.lock(P, TIMEOUT).expect("lock");
    let slots = file.geometry().start_slots;
    g.change(|p| p.store(&entry(b"x", b"y", 0), NOW, slots).map(drop))
        .expect("change");
    drop(g);
    let mut want = before;
    want.insert(b"x".to_vec(), b"y".to_vec());
    assert!(contents(&file, P) == want);
    assert_area_clean(&file);
}

#[test]
fn a_failing_change_changes_nothing_and_frees_its_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = open(&dir, "fails", LockKind::Fcntl);
    let before = users_write(&file);
    let mut g = file.lock(P, TIMEOUT).expect("lock");
    let r: Result<(), Corrupt> = g.change_journaled(|p, place| {
        the_change(p, place)?;
        Err(Corrupt("refused by the caller"))
    });
    assert_eq!(r, Err(Corrupt("refused by the caller")));
    drop(g);
    assert!(contents(&file, P) == before);
    assert_eq!(file.resets(P), 0);
    assert_area_clean(&file);
    assert_eq!(writer_word(&file), 0);
}

/// A live change of another page holding the journal past the wait: the change is refused,
/// nothing changed, its blocks freed, and the holder keeps the journal.
#[test]
fn a_journal_held_by_a_live_change_past_the_wait_refuses_the_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = open(&dir, "held", LockKind::Fcntl);
    let before = users_write(&file);
    file.set_journal_wait(Duration::from_millis(100));
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let holder = &file;
    std::thread::scope(|s| {
        s.spawn(move || {
            let file = holder;
            // As a change of `Q` in progress: its lock held, the journal claimed for it.
            let g = file.lock(Q, TIMEOUT).expect("lock");
            file.journal_claim(Q).expect("claim");
            held_tx.send(()).expect("send");
            let _ = done_rx.recv_timeout(Duration::from_secs(30));
            file.journal_give_up(Q);
            drop(g);
        });
        held_rx.recv_timeout(Duration::from_secs(30)).expect("held");
        let start = Instant::now();
        let mut g = file.lock(P, TIMEOUT).expect("lock");
        let r = g.change_journaled(the_change);
        drop(g);
        assert!(r.is_err(), "{r:?}");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "waited past any bound"
        );
        assert_eq!(
            writer_word(&file),
            Q + 1,
            "the live holder lost the journal"
        );
        assert!(contents(&file, P) == before);
        done_tx.send(()).expect("send");
    });
    assert_eq!(writer_word(&file), 0);
    assert_area_clean(&file);
}

#[test]
fn a_page_found_damaged_before_the_copy_is_reset_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = open(&dir, "damaged", LockKind::Fcntl);
    users_write(&file);
    let mut g = file.lock(P, TIMEOUT).expect("lock");
    g.bytes()[..4].fill(0xee);
    let mut ran = false;
    let r = g.change_journaled(|_, _| {
        ran = true;
        Ok(())
    });
    assert!(r.is_err() && !ran);
    drop(g);
    assert_eq!(file.resets(P), 1);
    assert!(contents(&file, P).is_empty());
    assert_area_clean(&file);
    assert_eq!(writer_word(&file), 0);
}

#[test]
fn a_file_without_a_journal_refuses_and_runs_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file =
        open_shared(&request(&dir.path().join("plain"), LockKind::Fcntl, false)).expect("open");
    assert!(!file.has_journal());
    let mut g = file.lock(P, TIMEOUT).expect("lock");
    let mut ran = false;
    let r = g.change_journaled(|_, _| {
        ran = true;
        Ok(())
    });
    assert!(r.is_err() && !ran);
}

#[test]
fn a_change_of_no_byte_writes_no_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = open(&dir, "nothing", LockKind::Fcntl);
    let before = users_write(&file);
    let mut g = file.lock(P, TIMEOUT).expect("lock");
    g.change_journaled(|_, place| {
        // Claims blocks, then drops them: freed, and the page unchanged.
        place
            .file
            .overflow_write(place.page, &large(9, 20_000))
            .map(drop)
            .map_err(|_| Corrupt("full"))
    })
    .expect("change");
    drop(g);
    assert!(contents(&file, P) == before);
    assert_area_clean(&file);
}

/// A record as `write_record` makes it, from raw parts (which may be hostile).
fn record(page: u32, extents: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut rec = vec![0u8; RECORD_EXTENTS_OFFSET];
    for (offset, bytes) in extents {
        rec.extend_from_slice(&offset.to_ne_bytes());
        rec.extend_from_slice(&(bytes.len() as u32).to_ne_bytes());
        rec.extend_from_slice(bytes);
    }
    let len = (rec.len() - RECORD_EXTENTS_OFFSET) as u32;
    put(&mut rec, RECORD_MAGIC_OFFSET, JOURNAL_MAGIC);
    put(&mut rec, RECORD_PAGE_OFFSET, page);
    put(&mut rec, RECORD_BYTES_OFFSET, len);
    put(&mut rec, RECORD_COUNT_OFFSET, extents.len() as u32);
    seal(&mut rec);
    rec
}

/// Gives `rec` the checksum its bytes need (as far as its length field says).
fn seal(rec: &mut [u8]) {
    let len = word(rec, RECORD_BYTES_OFFSET).unwrap_or(0) as usize;
    let end = (RECORD_EXTENTS_OFFSET + len).min(rec.len());
    let sum = xxh3_64(&rec[RECORD_MAGIC_OFFSET..end]);
    rec[..8].copy_from_slice(&sum.to_ne_bytes());
}

/// Plants `rec` in the journal, the writer word `writer` and `P`'s marker `busy`, as a dead
/// (or hostile) process could leave them.
fn plant(file: &SharedFile, rec: &[u8], writer: u32, busy: u32) {
    let j = file.journal.as_ref().expect("journal");
    // SAFETY: no thread holds a lock of this file (the test's own file), so no one else
    // touches the record while this slice lives.
    let region = unsafe { file.journal_record(j) };
    let n = rec.len().min(region.len());
    region[..n].copy_from_slice(&rec[..n]);
    file.journal_writer()
        .expect("journal")
        .store(writer, Ordering::Release);
    file.row(P)
        .expect("row")
        .busy
        .store(busy, Ordering::Release);
}

fn page_copy(file: &SharedFile, page: u32) -> Vec<u8> {
    file.lock(page, TIMEOUT).expect("lock").bytes().to_vec()
}

#[test]
fn a_valid_record_is_re_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = open(&dir, "valid", LockKind::Fcntl);
    users_write(&file);
    let mut want = page_copy(&file, P);
    // A record that changes statistics words in the page header: a valid page either way.
    let stats = crate::page::consts::N_READS_OFFSET;
    want[stats..stats + 4].copy_from_slice(&12345u32.to_ne_bytes());
    plant(
        &file,
        &record(P, &[(0, want[..64].to_vec())]),
        P + 1,
        BUSY_REDO,
    );
    assert_eq!(page_copy(&file, P), want);
    assert_eq!(file.resets(P), 0);
    assert_eq!(writer_word(&file), 0);
}

#[test]
fn hostile_journals_reset_the_page_and_write_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = open(&dir, "hostile", LockKind::Fcntl);
    let ps = PAGE_SIZE;
    let mut noise = vec![0u8; 4096];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut count_too_high = record(P, &[(0, vec![1; 64])]);
    put(&mut count_too_high, RECORD_COUNT_OFFSET, 2);
    seal(&mut count_too_high);
    let mut bytes_too_long = record(P, &[(0, vec![1; 64])]);
    put(&mut bytes_too_long, RECORD_BYTES_OFFSET, u32::MAX);
    let mut len_past_record = record(P, &[(0, vec![1; 64])]);
    put(&mut len_past_record, RECORD_EXTENTS_OFFSET + 4, 1 << 20);
    seal(&mut len_past_record);
    let cases: Vec<(&str, Vec<u8>, u32, u32)> = vec![
        ("random bytes", noise.clone(), P + 1, BUSY_REDO),
        (
            "random bytes, sealed",
            {
                let mut r = noise.clone();
                put(&mut r, RECORD_MAGIC_OFFSET, JOURNAL_MAGIC);
                put(&mut r, RECORD_PAGE_OFFSET, P);
                seal(&mut r);
                r
            },
            P + 1,
            BUSY_REDO,
        ),
        (
            "a record of another page",
            record(Q, &[(0, vec![7; 64])]),
            P + 1,
            BUSY_REDO,
        ),
        (
            "an extent past the page",
            record(P, &[(ps - 10, vec![7; 64])]),
            P + 1,
            BUSY_REDO,
        ),
        (
            "an extent at u32::MAX",
            record(P, &[(u32::MAX, vec![7; 64])]),
            P + 1,
            BUSY_REDO,
        ),
        ("more extents than bytes", count_too_high, P + 1, BUSY_REDO),
        (
            "a length past the journal",
            bytes_too_long,
            P + 1,
            BUSY_REDO,
        ),
        (
            "an extent past the record",
            len_past_record,
            P + 1,
            BUSY_REDO,
        ),
        (
            "the journal another page's",
            record(P, &[(0, vec![7; 64])]),
            Q + 1,
            BUSY_REDO,
        ),
        (
            "the journal unclaimed",
            record(P, &[(0, vec![7; 64])]),
            0,
            BUSY_REDO,
        ),
        (
            "a writer word naming no page",
            record(P, &[(0, vec![7; 64])]),
            u32::MAX,
            BUSY_REDO,
        ),
        (
            "the ordinary marker",
            record(P, &[(0, vec![7; 64])]),
            P + 1,
            BUSY_CHANGE,
        ),
        (
            "a marker of no meaning",
            record(P, &[(0, vec![7; 64])]),
            P + 1,
            0xdead_beef,
        ),
    ];
    for (n, (what, rec, writer, busy)) in cases.into_iter().enumerate() {
        let others: Vec<Vec<u8>> = (0..PAGES)
            .filter(|&p| p != P)
            .map(|p| page_copy(&file, p))
            .collect();
        let resets = file.resets(P);
        plant(&file, &rec, writer, busy);
        let g = file.lock(P, TIMEOUT).expect("lock");
        drop(g);
        assert_eq!(file.resets(P), resets + 1, "case {n}: {what}: not reset");
        assert!(contents(&file, P).is_empty(), "{what}");
        let now: Vec<Vec<u8>> = (0..PAGES)
            .filter(|&p| p != P)
            .map(|p| page_copy(&file, p))
            .collect();
        assert!(now == others, "{what}: another page was written");
        // The journal works again for every page.
        let mut g = file.lock(Q, TIMEOUT).expect("lock");
        let slots = file.geometry().start_slots;
        g.change_journaled(|p, _| p.store(&entry(b"q", &[n as u8], 0), NOW, slots).map(drop))
            .unwrap_or_else(|c| panic!("{what}: {c}"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Any record bytes, with the journal claimed for the page and its marker at the journal's
    /// value: the locker re-applies or resets, never panics, and writes no other page.
    #[test]
    fn any_record_bytes_are_safe(
        mut rec in proptest::collection::vec(any::<u8>(), 0..600),
        named in any::<bool>(),
        sealed in any::<bool>(),
        short in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = open(&dir, "prop", LockKind::Fcntl);
        users_write(&file);
        rec.resize(rec.len().max(RECORD_EXTENTS_OFFSET), 0);
        if named {
            put(&mut rec, RECORD_MAGIC_OFFSET, JOURNAL_MAGIC);
            put(&mut rec, RECORD_PAGE_OFFSET, P);
        }
        if short {
            let n = (rec.len() - RECORD_EXTENTS_OFFSET) as u32;
            let len = word(&rec, RECORD_BYTES_OFFSET).unwrap_or(0) % (n + 1);
            put(&mut rec, RECORD_BYTES_OFFSET, len);
            let count = word(&rec, RECORD_COUNT_OFFSET).unwrap_or(0) % 4;
            put(&mut rec, RECORD_COUNT_OFFSET, count);
        }
        if sealed {
            seal(&mut rec);
        }
        let others: Vec<Vec<u8>> = (0..PAGES).filter(|&p| p != P).map(|p| page_copy(&file, p)).collect();
        plant(&file, &rec, P + 1, BUSY_REDO);
        drop(file.lock(P, TIMEOUT).expect("lock"));
        let now: Vec<Vec<u8>> = (0..PAGES).filter(|&p| p != P).map(|p| page_copy(&file, p)).collect();
        prop_assert!(now == others);
        prop_assert_eq!(writer_word(&file), 0);
        prop_assert_eq!(file.row_word(P, header::ROW_BUSY_OFFSET), Some(0));
    }
}

#[test]
fn a_journal_reopens_and_a_changed_journal_size_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("size");
    let file = open_shared(&request(&path, LockKind::Fcntl, true)).expect("create");
    let len = std::fs::metadata(&path).expect("stat").len();
    drop(file);
    // Reopened (asking for no journal: an existing file has what its header says).
    let file = open_shared(&request(&path, LockKind::Fcntl, false)).expect("reopen");
    assert!(file.has_journal());
    drop(file);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let mut head = vec![0u8; header::PAGE_TABLE_OFFSET];
    f.read_exact_at(&mut head, 0).expect("read");
    let write = |journal_size: u32, seal: bool| {
        let mut h = head.clone();
        let at = header::JOURNAL_SIZE_OFFSET;
        h[at..at + 4].copy_from_slice(&journal_size.to_ne_bytes());
        if seal {
            let sum = xxh3_64(&h[..header::CHECKSUM_OFFSET]);
            h[header::CHECKSUM_OFFSET..header::CHECKSUM_OFFSET + 8]
                .copy_from_slice(&sum.to_ne_bytes());
        }
        f.write_all_at(&h, 0).expect("write");
    };
    let cases = [
        (PAGE_SIZE + 8192, false, "checksum"),
        (PAGE_SIZE + 8192, true, "journal_size"),
        (u32::MAX, true, "journal_size"),
        (0, true, "size"),
    ];
    for (journal_size, seal, says) in cases {
        write(journal_size, seal);
        let e = match open_shared(&request(&path, LockKind::Fcntl, true)) {
            Ok(_) => panic!("journal_size {journal_size} (sealed: {seal}) opened"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains(says), "{e}");
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            len,
            "file changed"
        );
    }
    write(PAGE_SIZE + header::JOURNAL_ROOM, true);
    assert!(open_shared(&request(&path, LockKind::Fcntl, true)).is_ok());
}

/// This thread's CPU time (a loaded machine's other work does not count in it).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; the clock id is a constant Linux knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Thread CPU time of one journaled change against a plain one, adding an entry to a page that has room
/// (an append: a few chunks change) and to a full page (a rebuild: most of the page changes).
/// A figure to read, not an assertion: `cargo test --release --lib journal::tests::cost --
/// --ignored --nocapture`.
#[test]
#[ignore = "a measurement: run it in release mode with --nocapture"]
fn cost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = open(&dir, "cost", LockKind::Robust);
    let slots = file.geometry().start_slots;
    let value = [b'v'; 100];
    for (case, full) in [("room", false), ("full", true)] {
        for journaled in [false, true] {
            let rounds = 20_000u32;
            // The whole loop is timed (lock, change, unlock: a clock read per change would
            // cost as much as a plain change).
            let start = thread_cpu();
            for i in 0..rounds {
                let mut g = file.lock(P, TIMEOUT).expect("lock");
                if !full && i % 200 == 0 {
                    g.wipe();
                }
                let key = format!("key-{i}");
                let store =
                    |p: &mut PageMut<'_>| p.store(&entry(key.as_bytes(), &value, 0), NOW, slots);
                if journaled {
                    g.change_journaled(|p, _| store(p)).expect("store");
                } else {
                    g.change(store).expect("store");
                }
            }
            let total = thread_cpu() - start;
            println!(
                "{case}: {} change: {:.0} ns per locked change",
                if journaled { "journaled" } else { "plain" },
                total.as_nanos() as f64 / f64::from(rounds)
            );
        }
    }
    // The floor of a journaled change: one copy of the page and one comparison with it.
    let mut g = file.lock(P, TIMEOUT).expect("lock");
    let mut copy = Vec::with_capacity(PAGE_SIZE as usize);
    let rounds = 20_000u32;
    let start = thread_cpu();
    let mut same = 0;
    for _ in 0..rounds {
        copy.clear();
        copy.extend_from_slice(g.bytes());
        same += usize::from(std::hint::black_box(&copy[..]) == &g.bytes()[..]);
    }
    println!(
        "copying a page and comparing it: {:.0} ns ({same} equal)",
        (thread_cpu() - start).as_nanos() as f64 / f64::from(rounds)
    );
}
