//! Target `page_bytes`: arbitrary bytes as a page, then a sequence of page operations.
//!
//! Properties checked:
//! - nothing panics, whatever the page holds;
//! - a store of an entry too large for an empty page fails and leaves the page unchanged;
//! - a `Refused` / `AlreadyNewer` store leaves the page unchanged;
//! - after a `Stored` store, `peek` and `get` of the key return exactly what was stored (or a
//!   miss when it is expired or a tombstone), even on a damaged page;
//! - on a page that passes `check_page`, every operation succeeds and the page still passes
//!   afterwards (pokes excepted); `MakeRoom(len)` leaves room and a free slot for `len`;
//!   `All` empties the page; `Expired` leaves no expired entry;
//! - a page built only through the API from `PageMut::init_as` (tagged or not) passes
//!   `check_page` with the slot hash recomputed, after every operation;
//! - `FLAG_OVERFLOW` (a large value's reference) is kept only on a value of exactly
//!   `OVERFLOW_REF_SIZE` bytes, and every entry handed out with it has such a value: the
//!   store layer can rely on the page for the reference's size, and checks the rest.
//!
//! Inputs with an odd `now` run with the native eviction policy on (`PageMut::with_policy`:
//! the protected flag and the ghost record at the end of the page, whatever bytes it holds),
//! those with an even one with Cache::FastMmap's rule.

use arbitrary::{Arbitrary, Unstructured};
use fastmmap::page::consts::*;
use fastmmap::page::{
    Copied, Corrupt, Evict, NewEntry, PageHeader, PageMut, PageView, StoreOutcome, check_page,
    find_copy,
};

use crate::common::events::{Event, note};
use crate::common::*;

/// Operations per run at most (keeps executions fast).
const MAX_OPS: usize = 320;

#[derive(Arbitrary, Debug)]
pub struct Input {
    page_size: u8,
    start_slots: u8,
    hash: HashMode,
    now: u32,
    start: Start,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Start {
    /// An empty page from `PageMut::init_as`, its slot words tagged or not.
    Init { tagged: bool },
    /// Bytes from the input (at an offset, optionally repeated over the page; the rest zero),
    /// optionally with a header that passes the O(1) header check.
    Raw {
        fill: Vec<u8>,
        at: u16,
        tile: bool,
        header: Option<HeaderPatch>,
    },
}

#[derive(Arbitrary, Debug)]
struct HeaderPatch {
    num_slots: u16,
    free_slots: u16,
    old_slots: u16,
    free_data: u16,
    /// Count free and deleted slots from the slot table instead.
    recount: bool,
    /// Make every non-free slot word point into the data area, 4-aligned.
    fix_slots: bool,
    /// The tagged page magic (`PAGE_MAGIC_TAGGED`) instead of Cache::FastMmap's.
    tagged: bool,
}

#[derive(Arbitrary, Clone, Debug)]
enum Op {
    Get {
        key: KeySel,
        stats: bool,
    },
    Peek {
        key: KeySel,
    },
    NewEntry {
        key: KeySel,
        value: ValSel,
        expire: ExpireSel,
        flags: FlagSel,
        modseq: ModseqSel,
    },
    /// A store of an entry that cannot fit an empty page.
    StoreTooBig {
        key: KeySel,
        extra: u16,
        modseq: ModseqSel,
    },
    Remove {
        key: KeySel,
    },
    Evict(EvictSel),
    ForEach,
    Check,
    Open,
    ResetStats,
    Advance(u16),
    /// `count` stores of pool keys `base..`, values of `len` bytes (fills the page fast).
    Fill {
        base: u8,
        count: u8,
        len: u8,
        expire: ExpireSel,
    },
    /// Damage: write a word (at a 4-aligned offset when `aligned`).
    Poke {
        at: u16,
        word: u32,
        aligned: bool,
    },
}

pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let ps = page_size(input.page_size);
    let slots = start_slots(input.start_slots, ps);
    let mut buf = vec![0u8; ps];
    let mut pristine = match &input.start {
        Start::Init { tagged } => {
            PageMut::init_as(&mut buf, slots, *tagged);
            true
        }
        Start::Raw {
            fill,
            at,
            tile,
            header,
        } => {
            fill_page(&mut buf, fill, usize::from(*at), *tile);
            if let Some(h) = header {
                patch_header(&mut buf, h, slots);
            }
            false
        }
    };
    let hash_mode = input.hash;
    let hash = move |k: &[u8]| hash_mode.slot_hash(k);
    let mut now = input.now;
    let policy = input.now & 1 == 1;
    let mut valid = check_page(&buf, slots, None).is_ok();
    if pristine {
        check_page(&buf, slots, Some(&hash)).expect("a fresh page fails check_page");
    }

    for op in &expand(&input.ops) {
        let was_valid = valid;
        note(if was_valid {
            Event::op_on_valid_page
        } else {
            Event::op_on_invalid_page
        });
        match op {
            Op::Get { key, stats } => {
                let key = key.bytes();
                let mut page = PageMut::wrap(&mut buf).with_policy(policy);
                match page.get(hash(&key), &key, now, *stats) {
                    Ok(Some(e)) => assert_eq!(e.key, &key[..], "get returned another key"),
                    Ok(None) => {}
                    Err(c) => fails_only_if_invalid(was_valid, "get", c),
                }
            }
            Op::Peek { key } => {
                let key = key.bytes();
                let peeked = PageView::new(&buf).peek(hash(&key), &key, now);
                match peeked {
                    Ok(Some(e)) => {
                        assert_eq!(e.key, &key[..], "peek returned another key");
                        assert!(
                            e.flags & FLAG_OVERFLOW == 0 || e.value.len() == OVERFLOW_REF_SIZE,
                            "an overflow reference of {} bytes was handed out",
                            e.value.len()
                        );
                    }
                    Ok(None) => {}
                    Err(c) => fails_only_if_invalid(was_valid, "peek", c),
                }
                // The copying lookup of optimistic reads finds exactly what peek finds.
                let mut copied = Copied::default();
                let found = find_copy(&buf[..], 1, hash(&key), &key, now, &mut copied);
                let peeked = peeked.map(|e| e.map(|e| (e.value.to_vec(), e.modseq, e.flags)));
                let found =
                    found.map(|hit| hit.then_some((copied.value, copied.modseq, copied.flags)));
                assert_eq!(found, peeked, "find_copy and peek disagree");
            }
            Op::NewEntry {
                key,
                value,
                expire,
                flags,
                modseq,
            } => {
                let key = key.bytes();
                let value = value.bytes(ps);
                let req = NewEntry {
                    slot_hash: hash(&key),
                    key: &key,
                    value: &value,
                    expire_on: expire.expire_on(now),
                    flags: flags.flags(),
                    modseq: modseq.modseq(),
                };
                do_store(&mut buf, &req, now, slots, was_valid, policy);
            }
            Op::StoreTooBig { key, extra, modseq } => {
                let key = key.bytes();
                let max = max_entry_size(ps, slots);
                let modseq = modseq.modseq();
                let overhead = ENTRY_HEADER_SIZE + key.len() + modseq.map_or(0, |_| MODSEQ_SIZE);
                let len = (max + 1 + usize::from(*extra)).saturating_sub(overhead);
                let value = vec![0xa5; len];
                let req = NewEntry {
                    slot_hash: hash(&key),
                    key: &key,
                    value: &value,
                    expire_on: 0,
                    flags: 0,
                    modseq,
                };
                assert!(req.entry_size().is_none_or(|s| s > max));
                do_store(&mut buf, &req, now, slots, was_valid, policy);
            }
            Op::Remove { key } => {
                let key = key.bytes();
                let sh = hash(&key);
                let mut page = PageMut::wrap(&mut buf).with_policy(policy);
                match page.remove(sh, &key, now) {
                    Ok(_) => {
                        if was_valid {
                            // Keys are unique in a valid page: the key is gone now.
                            let after = page.peek(sh, &key, now);
                            assert!(
                                matches!(after, Ok(None)),
                                "key still readable after remove: {after:?}"
                            );
                        }
                    }
                    Err(c) => fails_only_if_invalid(was_valid, "remove", c),
                }
            }
            Op::Evict(sel) => {
                let mode = match *sel {
                    EvictSel::Expired => Evict::Expired,
                    EvictSel::All => Evict::All,
                    EvictSel::MakeRoom(len) => Evict::MakeRoom(usize::from(len) % (ps + 16)),
                };
                let res = PageMut::wrap(&mut buf)
                    .with_policy(policy)
                    .evict(mode, now, slots);
                match res {
                    Ok(_) if was_valid => check_after_evict(&buf, mode, now, slots, ps),
                    Ok(_) => {}
                    Err(c) => fails_only_if_invalid(was_valid, &format!("evict({mode:?})"), c),
                }
            }
            Op::ForEach => {
                let mut n = 0u32;
                let res = PageView::new(&buf).for_each_entry(|e| {
                    assert!(e.key.len() + e.value.len() <= ps);
                    n += 1;
                });
                match res {
                    Ok(()) if was_valid => {
                        let h = PageHeader::read(&buf);
                        assert_eq!(n, h.num_slots - h.free_slots, "for_each_entry count");
                    }
                    Ok(()) => {}
                    Err(c) => fails_only_if_invalid(was_valid, "for_each_entry", c),
                }
            }
            Op::Check => {
                let _ = check_page(&buf, slots, Some(&hash));
            }
            Op::Open => {
                let res = PageMut::open(&mut buf, slots).map(|_| ());
                assert!(res.is_ok() || !was_valid, "open failed on a valid page");
            }
            Op::ResetStats => {
                let res = PageMut::wrap(&mut buf).with_policy(policy).reset_stats();
                assert!(res.is_ok(), "reset_stats failed: {res:?}");
            }
            Op::Advance(d) => now = now.saturating_add(u32::from(*d)),
            Op::Fill { .. } => unreachable!("expanded before running"),
            Op::Poke { at, word, aligned } => {
                let mut at = usize::from(*at) % ps;
                if *aligned {
                    at &= !3;
                }
                let end = (at + 4).min(ps);
                let bytes = word.to_ne_bytes();
                if buf[at..end] != bytes[..end - at] {
                    buf[at..end].copy_from_slice(&bytes[..end - at]);
                    pristine = false;
                }
            }
        }
        valid = check_page(&buf, slots, None).is_ok();
        if valid && !was_valid {
            note(Event::invalid_page_became_valid);
        }
        if was_valid && !matches!(op, Op::Poke { .. }) {
            let why = check_page(&buf, slots, None).err();
            assert!(valid, "{op:?} broke a valid page: {why:?}");
        }
        if pristine && let Err(c) = check_page(&buf, slots, Some(&hash)) {
            panic!("page built through the API fails check_page after {op:?}: {c}");
        }
    }
}

/// Expands `Fill` into the stores it stands for.
fn expand(ops: &[Op]) -> Vec<Op> {
    let mut out = Vec::new();
    for op in ops {
        match op {
            Op::Fill {
                base,
                count,
                len,
                expire,
            } => out.extend((0..*count).map(|i| Op::NewEntry {
                key: KeySel::Pool(base.wrapping_add(i)),
                value: ValSel::Small(*len, i),
                expire: *expire,
                flags: FlagSel::Bits(0),
                modseq: ModseqSel::None,
            })),
            _ => out.push(op.clone()),
        }
        if out.len() >= MAX_OPS {
            break;
        }
    }
    out.truncate(MAX_OPS);
    out
}

/// An operation failed: fine on a damaged page, a bug on a valid one.
fn fails_only_if_invalid(was_valid: bool, what: &str, c: Corrupt) {
    note(Event::op_err_on_invalid_page);
    assert!(!was_valid, "{what} failed on a valid page: {c}");
}

/// Stores and checks the outcome (see the module docs).
fn do_store(buf: &mut [u8], req: &NewEntry, now: u32, slots: u32, was_valid: bool, policy: bool) {
    let ps = buf.len();
    let fits = req
        .entry_size()
        .is_some_and(|s| s <= max_entry_size(ps, slots));
    let before = buf.to_vec();
    let res = PageMut::wrap(buf)
        .with_policy(policy)
        .store(req, now, slots);
    note(match res {
        Ok(StoreOutcome::TooLarge) => Event::store_too_big,
        Err(_) => Event::store_err,
        Ok(StoreOutcome::Stored) if !was_valid => Event::stored_on_invalid_page,
        Ok(StoreOutcome::Stored) => Event::store_stored,
        Ok(StoreOutcome::Refused) => Event::store_refused,
        Ok(StoreOutcome::AlreadyNewer) => Event::store_already_newer,
    });
    match res {
        Err(c) => {
            assert!(fits, "a too-large store got {c} instead of TooLarge");
            assert!(!was_valid, "store failed on a valid page: {c}");
        }
        Ok(StoreOutcome::TooLarge) => {
            assert!(!fits, "an entry that fits was refused as too large");
            assert!(
                buf == &before[..],
                "a refused too-large store changed the page"
            );
        }
        Ok(outcome) if !fits => panic!("an entry larger than an empty page was {outcome:?}"),
        Ok(StoreOutcome::Refused | StoreOutcome::AlreadyNewer) => {
            assert!(buf == &before[..], "a {res:?} store changed the page");
        }
        Ok(StoreOutcome::Stored) => {
            let live = !is_expired(req.expire_on, now) && req.flags & FLAG_TOMBSTONE == 0;
            let flags = stored_flags_for(req.flags, req.modseq, req.value.len());
            let expect = |e: Option<fastmmap::page::EntryRef<'_>>, what: &str| match e {
                Some(e) => {
                    assert!(
                        live,
                        "{what} after store found an expired entry or tombstone"
                    );
                    assert_eq!(e.key, req.key, "{what} after store: key");
                    assert!(e.value == req.value, "{what} after store: wrong value");
                    assert_eq!(e.flags, flags, "{what} after store: flags");
                    assert_eq!(e.modseq, req.modseq, "{what} after store: modseq");
                    assert_eq!(e.expire_on, req.expire_on, "{what} after store: expire_on");
                }
                None => assert!(!live, "{what} after store: stored key missing"),
            };
            match PageView::new(buf).peek(req.slot_hash, req.key, now) {
                Ok(e) => expect(e, "peek"),
                // The probe chain the store walked is intact and the entry sits past it, so
                // even a damaged page reads it back.
                Err(c) => panic!("peek after a Stored store failed: {c}"),
            }
            match PageMut::wrap(buf)
                .with_policy(policy)
                .get(req.slot_hash, req.key, now, true)
            {
                Ok(e) => {
                    if let Some(e) = &e {
                        assert_eq!(e.last_access, now, "get after store: last_access");
                    }
                    expect(e, "get")
                }
                Err(c) => panic!("get after a Stored store failed: {c}"),
            }
        }
    }
}

/// What an eviction on a valid page must have left.
fn check_after_evict(buf: &[u8], mode: Evict, now: u32, slots: u32, ps: usize) {
    let h = PageHeader::read(buf);
    let mut entries = 0usize;
    let mut expired = 0usize;
    PageView::new(buf)
        .for_each_entry(|e| {
            entries += 1;
            expired += usize::from(is_expired(e.expire_on, now));
        })
        .expect("for_each_entry after evict");
    match mode {
        Evict::All => assert_eq!(entries, 0, "entries left after Evict::All"),
        Evict::Expired => assert_eq!(expired, 0, "expired entries left after Evict::Expired"),
        Evict::MakeRoom(len) => {
            if len <= max_entry_size(ps, slots) {
                assert!(
                    h.free_bytes as usize >= len,
                    "MakeRoom({len}) left {} free bytes",
                    h.free_bytes
                );
                assert!(h.free_slots > 0, "MakeRoom({len}) left no free slot");
            }
        }
    }
}

fn fill_page(buf: &mut [u8], fill: &[u8], at: usize, tile: bool) {
    if fill.is_empty() {
        return;
    }
    let ps = buf.len();
    let at = at % ps;
    if tile {
        for (i, b) in buf[at..].iter_mut().enumerate() {
            *b = fill[i % fill.len()];
        }
    } else {
        let n = fill.len().min(ps - at);
        buf[at..at + n].copy_from_slice(&fill[..n]);
    }
}

/// Writes a header that passes `PageHeader::check` (and, optionally, slot words and counters
/// that make a full check more likely to pass).
fn patch_header(buf: &mut [u8], p: &HeaderPatch, min_slots: u32) {
    let ps = buf.len();
    let max_slots = ((ps - SLOTS_OFFSET) / SLOT_SIZE) as u32;
    let num_slots = min_slots + u32::from(p.num_slots) % (max_slots - min_slots + 1);
    let table_end = slots_end(num_slots).unwrap();
    let data_words = (ps - table_end) / 4;
    let free_data = table_end + 4 * (usize::from(p.free_data) % (data_words + 1));
    let word = |buf: &[u8], s: u32| {
        let o = SLOTS_OFFSET + s as usize * SLOT_SIZE;
        u32::from_ne_bytes(buf[o..o + 4].try_into().unwrap())
    };
    if p.fix_slots {
        let span = (free_data - table_end) / 4;
        for s in 0..num_slots {
            let w = word(buf, s);
            if w > SLOT_DELETED {
                // In a tagged page the word keeps its high bits, as a tag.
                let tag = if p.tagged { w & !offset_mask(ps) } else { 0 };
                let fixed = if span == 0 {
                    SLOT_EMPTY
                } else {
                    (table_end + 4 * (w as usize % span)) as u32 | tag
                };
                let o = SLOTS_OFFSET + s as usize * SLOT_SIZE;
                buf[o..o + 4].copy_from_slice(&fixed.to_ne_bytes());
            }
        }
    }
    let (free_slots, old_slots) = if p.recount {
        let mut free = 0;
        let mut old = 0;
        for s in 0..num_slots {
            match word(buf, s) {
                SLOT_EMPTY => free += 1,
                SLOT_DELETED => {
                    free += 1;
                    old += 1;
                }
                _ => {}
            }
        }
        (free, old)
    } else {
        let free = u32::from(p.free_slots) % (num_slots + 1);
        (free, u32::from(p.old_slots) % (free + 1))
    };
    let h = PageHeader {
        magic: if p.tagged {
            PAGE_MAGIC_TAGGED
        } else {
            PAGE_MAGIC
        },
        num_slots,
        free_slots,
        old_slots,
        free_data: free_data as u32,
        free_bytes: (ps - free_data) as u32,
        n_reads: 0,
        n_read_hits: 0,
    };
    h.write(buf).unwrap();
    debug_assert!(h.check(ps, min_slots).is_ok());
}

/// The decoded operation sequence of an input, for reading a crash report.
pub fn describe(data: &[u8]) -> String {
    match Input::arbitrary_take_rest(Unstructured::new(data)) {
        Ok(input) => format!("{input:#?}"),
        Err(e) => format!("undecodable input: {e}"),
    }
}
