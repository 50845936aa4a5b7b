//! Target `page_model`: operation sequences on a fresh page against a `HashMap` model.
//!
//! After every operation the page's entries (read with `for_each_entry`) are compared with the
//! model. The only freedom the page has is eviction, and only where the design allows it:
//! - a key the model holds may be missing only after a store or an eviction, and then only
//!   if it had expired, or was least recently used (no survivor was accessed less recently,
//!   and none accessed in the same second was written earlier), or was cleared by
//!   `Evict::All`; a store that found more than 30% of the slots truly free
//!   and room for the entry evicts nothing; a rebuild leaves no expired entry; after LRU
//!   eviction the survivors fill less than 60% of the data area;
//! - every entry in the page is in the model with exactly the model's key, value, flags,
//!   expiry, modseq and last access time (a present key never has a wrong value; removed,
//!   cleared and expired keys never come back);
//! - `get`/`peek` return exactly the model's live entry or a miss; store outcomes follow
//!   the conditional-store rules of DESIGN.md §3 (computed here independently); a refused
//!   store changes no byte; `remove` reports the model's entry; `evict` reports how many it
//!   dropped; read statistics count as the model does;
//! - `check_page` (with the slot hash recomputed) passes after every operation.
//!
//! Every input runs twice: with Cache::FastMmap's rule (above), and with the native layout's
//! eviction policy (`PageMut::with_policy`, docs/format.md §4.1). The policy chooses its
//! victims by its own bits, so the second run checks, instead of the LRU order and the 60%
//! fill, the policy's state in the entries' raw flags words:
//! - without the policy no entry ever carries a policy bit;
//! - a read hit sets exactly the bits of the rule (first hit: protected with a count of one;
//!   a hit in a later second: one more, up to three; within the same second: nothing), and
//!   no operation but a rebuild changes another entry's bits;
//! - a store of a key the page holds gives it the bits a read hit would; a new key is stored
//!   on probation or protected without a count (when the ghost record remembers it);
//! - a rebuild never raises a count, leaves a protected entry it moves back marked as moved
//!   back, and leaves protected survivors within `PROTECTED_SHARE` of the data area.
//!
//! Write order is modelled as a rank per key: a store ranks its key after every other, and a
//! rebuild re-ranks the survivors by (last access, rank), the order it compacts them in. The
//! page breaks ties of `last_access` by data offset, which follows the same order (this
//! target's stores always append; a same-size overwrite in place would keep its offset).

use std::collections::HashMap;

use arbitrary::{Arbitrary, Unstructured};
use fastmmap::page::consts::*;
use fastmmap::page::{
    EntryRef, Evict, NewEntry, PageHeader, PageMut, PageView, Removed, StoreOutcome, check_page,
};

use crate::common::events::{Event, note};
use crate::common::*;

const MAX_OPS: usize = 320;
/// Start of time (any value works; a realistic one).
const T0: u32 = 1_700_000_000;

#[derive(Arbitrary, Debug)]
pub struct Input {
    page_size: u8,
    start_slots: u8,
    hash: HashMode,
    ops: Vec<Op>,
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
    /// A plain store (no modseq; the flags of `Cache::set_with_flags`).
    Set {
        key: KeySel,
        value: ValSel,
        expire: ExpireSel,
        utf8: u8,
    },
    /// `set_if_newer`.
    SetIfNewer {
        key: KeySel,
        value: ValSel,
        expire: ExpireSel,
        modseq: ModseqSel,
    },
    /// `remove_with_modseq`: a tombstone.
    Tombstone {
        key: KeySel,
        expire: ExpireSel,
        modseq: ModseqSel,
    },
    /// Any store the page API accepts.
    NewEntry {
        key: KeySel,
        value: ValSel,
        expire: ExpireSel,
        flags: FlagSel,
        modseq: ModseqSel,
    },
    Remove {
        key: KeySel,
    },
    Evict(EvictSel),
    ResetStats,
    Advance(u8),
    /// `count` plain stores of pool keys `base..`, values of `len` bytes (fills the page fast).
    Fill {
        base: u8,
        count: u8,
        len: u8,
        expire: ExpireSel,
    },
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
            } => out.extend((0..*count).map(|i| Op::Set {
                key: KeySel::Pool(base.wrapping_add(i)),
                value: ValSel::Small(*len, i),
                expire: *expire,
                utf8: 0,
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

/// What the model knows about one stored key.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    value: Vec<u8>,
    flags: u32,
    expire_on: u32,
    modseq: Option<u64>,
    last_access: u32,
}

impl Entry {
    fn of(e: &EntryRef<'_>) -> Entry {
        Entry {
            value: e.value.to_vec(),
            flags: e.flags,
            expire_on: e.expire_on,
            modseq: e.modseq,
            last_access: e.last_access,
        }
    }

    fn matches(&self, e: &EntryRef<'_>) -> bool {
        self.value == e.value
            && self.flags == e.flags
            && self.expire_on == e.expire_on
            && self.modseq == e.modseq
            && self.last_access == e.last_access
    }

    fn live(&self, now: u32) -> bool {
        !is_expired(self.expire_on, now) && self.flags & FLAG_TOMBSTONE == 0
    }

    fn size(&self, key: &[u8]) -> usize {
        entry_size(
            key.len(),
            self.value.len() + self.modseq.map_or(0, |_| MODSEQ_SIZE),
        )
        .unwrap()
    }
}

/// The conditional-store rules of DESIGN.md §3, written from the text: a store with a modseq
/// is refused by a live tombstone or value with a newer modseq; a store without one is
/// refused by a live tombstone; a tombstone never replaces something at least as new.
/// (Entries without a modseq never refuse anything: the cache writes every tombstone with
/// one.)
fn expected_outcome(existing: Option<&Entry>, req: &NewEntry<'_>, now: u32) -> StoreOutcome {
    let Some(e) = existing else {
        return StoreOutcome::Stored;
    };
    if is_expired(e.expire_on, now) {
        return StoreOutcome::Stored;
    }
    let Some(old) = e.modseq else {
        return StoreOutcome::Stored;
    };
    let held_tombstone = e.flags & FLAG_TOMBSTONE != 0;
    if req.flags & FLAG_TOMBSTONE != 0 {
        return if req.modseq.unwrap_or(0) <= old {
            StoreOutcome::AlreadyNewer
        } else {
            StoreOutcome::Stored
        };
    }
    match (held_tombstone, req.modseq) {
        (true, Some(m)) if m >= old => StoreOutcome::Stored,
        (true, _) => StoreOutcome::Refused,
        (false, Some(m)) if m < old => StoreOutcome::Refused,
        (false, _) => StoreOutcome::Stored,
    }
}

struct Run {
    buf: Vec<u8>,
    start_slots: u32,
    hash: HashMode,
    now: u32,
    model: HashMap<Vec<u8>, Entry>,
    n_reads: u32,
    n_read_hits: u32,
    /// Write order of the keys the page holds (see the module docs); higher is later.
    ranks: HashMap<Vec<u8>, u64>,
    next_rank: u64,
    /// The native eviction policy is on.
    policy: bool,
    /// Each key's policy bits (`POLICY_FLAGS` of its raw flags word) after the last operation.
    bits: HashMap<Vec<u8>, u32>,
}

/// How an operation may have dropped entries the model holds.
enum Drops {
    None,
    /// A store or `MakeRoom` eviction: `new_key` (if any) is the key just stored;
    /// `triggered` is false when the page had room and slots to spare (nothing may go).
    MakeRoom {
        len: usize,
        new_key: Option<Vec<u8>>,
        triggered: bool,
        reported: Option<usize>,
    },
    Expired(usize),
    All(usize),
}

pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let ops = expand(&input.ops);
    for policy in [false, true] {
        run_with(&input, &ops, policy);
    }
}

fn run_with(input: &Input, ops: &[Op], policy: bool) {
    let ps = page_size(input.page_size);
    let start_slots = start_slots(input.start_slots, ps);
    let mut buf = vec![0u8; ps];
    // A native page is tagged, as the crate makes them (docs/format.md §3.2).
    PageMut::init_as(&mut buf, start_slots, policy);
    let mut r = Run {
        buf,
        start_slots,
        hash: input.hash,
        now: T0,
        model: HashMap::new(),
        n_reads: 0,
        n_read_hits: 0,
        ranks: HashMap::new(),
        next_rank: 0,
        policy,
        bits: HashMap::new(),
    };
    r.check_page(&"init");
    for op in ops {
        let before = r.model.clone();
        let drops = r.apply(op);
        r.check_policy(&drops, op, &before);
        r.sync(drops, op);
    }
}

/// Every entry's key and raw flags word, read from the page's bytes (the page API hides the
/// policy's bits). The page passed `check_page`, so every offset is sound.
fn raw_flags(buf: &[u8]) -> HashMap<Vec<u8>, u32> {
    let word = |at: usize| u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap());
    let h = PageHeader::read(buf);
    let mut out = HashMap::new();
    for slot in 0..h.num_slots as usize {
        let slot_word = word(SLOTS_OFFSET + slot * SLOT_SIZE);
        if slot_word <= SLOT_DELETED {
            continue;
        }
        // Without its tag, in a tagged page.
        let off = h.slot_words(buf.len()).offset(slot_word) as usize;
        let key_len = word(off + KEY_LEN_OFFSET) as usize;
        let key = buf[off + ENTRY_HEADER_SIZE..off + ENTRY_HEADER_SIZE + key_len].to_vec();
        out.insert(key, word(off + FLAGS_OFFSET));
    }
    out
}

/// The rule for a read hit (docs/format.md §4.1), written from the text.
fn bits_after_hit(bits: u32, last_access: u32, now: u32) -> u32 {
    let count = (bits & FLAG_FREQ) / FREQ_ONE;
    if bits & FLAG_PROTECTED == 0 {
        FLAG_PROTECTED | FREQ_ONE
    } else if last_access != now {
        FLAG_PROTECTED | ((count + 1).min(3) * FREQ_ONE)
    } else {
        bits
    }
}

impl Run {
    fn slot_hash(&self, key: &[u8]) -> u32 {
        self.hash.slot_hash(key)
    }

    fn max_entry(&self) -> usize {
        max_entry_size(self.buf.len(), self.start_slots)
    }

    /// True when `MakeRoom(len)` would return at once (Cache::FastMmap's 30% rule).
    fn has_room(&self, len: usize) -> bool {
        let h = PageHeader::read(&self.buf);
        let truly_free = h.free_slots.saturating_sub(h.old_slots);
        let reserve = if self.policy {
            ghost_size(self.buf.len())
        } else {
            0
        };
        f64::from(truly_free) / f64::from(h.num_slots) > SLOT_FILL_LIMIT
            && h.free_bytes as usize >= len.saturating_add(reserve)
    }

    /// The page, with the policy on or off as this run has it.
    fn page(&mut self) -> PageMut<'_> {
        PageMut::wrap(&mut self.buf).with_policy(self.policy)
    }

    /// Checks the policy bits after `op` (see the module docs); `before` is the model before it.
    fn check_policy(&mut self, drops: &Drops, op: &Op, before: &HashMap<Vec<u8>, Entry>) {
        let now = self.now;
        let raw = raw_flags(&self.buf);
        let got: HashMap<Vec<u8>, u32> = raw
            .iter()
            .map(|(k, f)| (k.clone(), f & POLICY_FLAGS))
            .collect();
        if !self.policy {
            for (k, b) in &got {
                assert_eq!(
                    *b, 0,
                    "policy bits on {k:?} without the policy, after {op:?}"
                );
            }
            return;
        }
        let rebuilt = match drops {
            Drops::None => false,
            Drops::Expired(_) | Drops::All(_) => true,
            Drops::MakeRoom { triggered, .. } => *triggered,
        };
        let new_key = match drops {
            Drops::MakeRoom { new_key, .. } => new_key.clone(),
            _ => None,
        };
        let get_hit = match op {
            Op::Get { key, .. } => {
                let key = key.bytes();
                before
                    .get(&key)
                    .filter(|e| e.live(now))
                    .map(|e| (key, e.last_access))
            }
            _ => None,
        };
        let mut protected = 0usize;
        for (k, &b) in &got {
            let old = self.bits.get(k).copied();
            if Some(k) == new_key.as_ref() {
                // The stored key: as a read hit would have it if the page held it (the rebuild
                // may have changed its bits before), else on probation or returning.
                if old.is_none() || !before.contains_key(k) {
                    assert!(
                        b == 0 || b == FLAG_PROTECTED,
                        "new key {k:?} stored with policy bits {b:#x} after {op:?}"
                    );
                } else if !rebuilt {
                    let want = bits_after_hit(old.unwrap_or(0), before[k].last_access, now);
                    assert_eq!(b, want, "bits of {k:?} stored again, after {op:?}");
                }
                continue;
            }
            let old = old.unwrap_or(0);
            if let Some((key, last)) = &get_hit
                && key == k
            {
                assert_eq!(
                    b,
                    bits_after_hit(old, *last, now),
                    "bits of {k:?} after {op:?}"
                );
                continue;
            }
            if !rebuilt {
                assert_eq!(b, old, "bits of {k:?} changed by {op:?}");
                continue;
            }
            note(Event::policy_rebuilt);
            let count = |bits: u32| (bits & FLAG_FREQ) / FREQ_ONE;
            if old & FLAG_PROTECTED != 0 && b & FLAG_PROTECTED != 0 {
                assert!(
                    count(b) <= count(old),
                    "a rebuild raised {k:?}'s count by {op:?}"
                );
            }
            if old & FLAG_PROTECTED != 0 && b & FLAG_PROTECTED == 0 {
                assert_eq!(b, FREQ_ONE, "{k:?} moved back unmarked by {op:?}");
                note(Event::policy_demoted);
            }
            if old & FLAG_PROTECTED == 0 {
                assert_eq!(b & FLAG_PROTECTED, 0, "a rebuild protected {k:?} by {op:?}");
            }
            if b & FLAG_PROTECTED != 0 {
                protected += self.model.get(k).map_or(0, |e| e.size(k));
            }
        }
        if rebuilt && matches!(drops, Drops::MakeRoom { .. }) {
            let h = PageHeader::read(&self.buf);
            let cap = self.buf.len() - h.slots_end();
            assert!(
                protected <= (PROTECTED_SHARE * cap as f64) as usize,
                "protected survivors use {protected} of {cap} bytes after {op:?}"
            );
        }
        self.bits = got;
    }

    fn apply(&mut self, op: &Op) -> Drops {
        let now = self.now;
        match op {
            Op::Get { key, stats } => {
                let key = key.bytes();
                let sh = self.slot_hash(&key);
                let want = self.model.get(&key).filter(|e| e.live(now)).cloned();
                let got = self
                    .page()
                    .get(sh, &key, now, *stats)
                    .expect("get failed on a valid page")
                    .map(|e| Entry::of(&e));
                let want = want.map(|e| Entry {
                    last_access: now,
                    ..e
                });
                assert_eq!(got, want, "get {key:?}");
                note(if want.is_some() {
                    Event::get_hit
                } else {
                    Event::get_miss
                });
                if *stats {
                    self.n_reads = self.n_reads.wrapping_add(1);
                    if want.is_some() {
                        self.n_read_hits = self.n_read_hits.wrapping_add(1);
                    }
                }
                if let Some(e) = want {
                    self.model.insert(key, e);
                }
                Drops::None
            }
            Op::Peek { key } => {
                let key = key.bytes();
                let want = self.model.get(&key).filter(|e| e.live(now)).cloned();
                let got = PageView::new(&self.buf)
                    .peek(self.slot_hash(&key), &key, now)
                    .expect("peek failed on a valid page")
                    .map(|e| Entry::of(&e));
                assert_eq!(got, want, "peek {key:?}");
                Drops::None
            }
            Op::Set {
                key,
                value,
                expire,
                utf8,
            } => {
                let bit = |n: u8, flag: u32| if utf8 & (1 << n) != 0 { flag } else { 0 };
                let flags = bit(0, FLAG_UTF8_VALUE) | bit(1, FLAG_UTF8_KEY) | bit(2, FLAG_UNDEF);
                self.store(key, value, *expire, flags, None)
            }
            Op::SetIfNewer {
                key,
                value,
                expire,
                modseq,
            } => self.store(key, value, *expire, 0, Some(modseq.modseq().unwrap_or(0))),
            Op::Tombstone {
                key,
                expire,
                modseq,
            } => self.store(
                key,
                &ValSel::Raw(Vec::new()),
                *expire,
                FLAG_TOMBSTONE,
                Some(modseq.modseq().unwrap_or(0)),
            ),
            Op::NewEntry {
                key,
                value,
                expire,
                flags,
                modseq,
            } => self.store(key, value, *expire, flags.flags(), modseq.modseq()),
            Op::Remove { key } => {
                let key = key.bytes();
                let sh = self.slot_hash(&key);
                let got = self
                    .page()
                    .remove(sh, &key, now)
                    .expect("remove failed on a valid page");
                self.ranks.remove(&key);
                let want = self.model.remove(&key).map(|e| Removed {
                    flags: e.flags,
                    was_live: e.live(now),
                });
                assert_eq!(got, want, "remove {key:?}");
                if want.is_some() {
                    note(Event::remove_hit);
                }
                Drops::None
            }
            Op::Evict(sel) => {
                let mode = match *sel {
                    EvictSel::Expired => Evict::Expired,
                    EvictSel::All => Evict::All,
                    EvictSel::MakeRoom(len) => {
                        Evict::MakeRoom(usize::from(len) % (self.buf.len() + 16))
                    }
                };
                let triggered = match mode {
                    Evict::MakeRoom(len) => !self.has_room(len),
                    _ => true,
                };
                let start_slots = self.start_slots;
                let n = self
                    .page()
                    .evict(mode, now, start_slots)
                    .unwrap_or_else(|c| panic!("evict({mode:?}) failed on a valid page: {c}"));
                note(match mode {
                    Evict::Expired => Event::evict_expired,
                    Evict::All => Event::evict_all,
                    Evict::MakeRoom(_) => Event::evict_make_room,
                });
                match mode {
                    Evict::Expired => Drops::Expired(n),
                    Evict::All => Drops::All(n),
                    Evict::MakeRoom(len) => Drops::MakeRoom {
                        len,
                        new_key: None,
                        triggered,
                        reported: Some(n),
                    },
                }
            }
            Op::ResetStats => {
                self.page().reset_stats().expect("reset_stats");
                self.n_reads = 0;
                self.n_read_hits = 0;
                Drops::None
            }
            Op::Advance(d) => {
                self.now = self.now.saturating_add(u32::from(*d));
                Drops::None
            }
            Op::Fill { .. } => unreachable!("expanded before running"),
        }
    }

    fn store(
        &mut self,
        key: &KeySel,
        value: &ValSel,
        expire: ExpireSel,
        flags: u32,
        modseq: Option<u64>,
    ) -> Drops {
        let now = self.now;
        let key = key.bytes();
        let value = value.bytes(self.buf.len());
        let req = NewEntry {
            slot_hash: self.slot_hash(&key),
            key: &key,
            value: &value,
            expire_on: expire.expire_on(now),
            flags,
            modseq,
        };
        let size = req.entry_size();
        let fits = size.is_some_and(|s| s <= self.max_entry());
        let before = self.buf.clone();
        let triggered = !self.has_room(size.unwrap_or(usize::MAX));
        let expire_on = req.expire_on;
        let start_slots = self.start_slots;
        let got = self.page().store(&req, now, start_slots);
        if !fits {
            note(Event::store_too_big);
            assert_eq!(got, Ok(StoreOutcome::TooLarge), "a too-large entry");
            assert!(self.buf == before, "a too-large store changed the page");
            return Drops::None;
        }
        let got = got.unwrap_or_else(|c| panic!("store failed on a valid page: {c}"));
        let want = expected_outcome(self.model.get(&key), &req, now);
        assert_eq!(
            got,
            want,
            "store outcome for {key:?} over {:?}",
            self.model.get(&key)
        );
        note(match got {
            StoreOutcome::Stored => Event::store_stored,
            StoreOutcome::Refused => Event::store_refused,
            StoreOutcome::AlreadyNewer => Event::store_already_newer,
            StoreOutcome::TooLarge => panic!("an entry that fits was refused as too large"),
        });
        if got != StoreOutcome::Stored {
            assert!(self.buf == before, "a {got:?} store changed the page");
            return Drops::None;
        }
        self.model.insert(
            key.clone(),
            Entry {
                flags: stored_flags_for(flags, modseq, value.len()),
                value,
                expire_on,
                modseq,
                last_access: now,
            },
        );
        Drops::MakeRoom {
            len: size.unwrap(),
            new_key: Some(key),
            triggered,
            reported: None,
        }
    }

    fn check_page(&self, after: &dyn std::fmt::Debug) {
        let hash = self.hash;
        let f = move |k: &[u8]| hash.slot_hash(k);
        if let Err(c) = check_page(&self.buf, self.start_slots, Some(&f)) {
            panic!("check_page failed after {after:?}: {c}");
        }
    }

    /// Compares the page with the model, applying the drops the operation was allowed.
    fn sync(&mut self, drops: Drops, op: &Op) {
        let now = self.now;
        self.check_page(op);
        let h = PageHeader::read(&self.buf);
        assert_eq!(
            (h.n_reads, h.n_read_hits),
            (self.n_reads, self.n_read_hits),
            "read statistics after {op:?}"
        );
        assert!(h.num_slots >= self.start_slots);
        if h.num_slots > self.start_slots {
            note(Event::slots_grown);
        }

        // One pass over the page: every entry must be the model's. (Keys are unique in the
        // page: check_page found every entry at the end of its own probe chain.)
        let new_key_owned = match &drops {
            Drops::MakeRoom { new_key, .. } => new_key.clone(),
            _ => None,
        };
        let new_key = new_key_owned.as_deref();
        let mut in_page = 0usize;
        // Over the entries other than the one just stored:
        // (last access, rank) of the least recently used survivor.
        let mut oldest_kept = (u32::MAX, u64::MAX);
        let mut expired_kept = 0usize;
        let mut used_kept = 0usize;
        let model = &self.model;
        let ranks = &self.ranks;
        PageView::new(&self.buf)
            .for_each_entry(|e| {
                in_page += 1;
                let Some(m) = model.get(e.key) else {
                    panic!(
                        "page holds {:?} => {e:?}, absent from the model, after {op:?}",
                        e.key
                    );
                };
                if !m.matches(&e) {
                    panic!("entry {e:?} differs from the model's {m:?} after {op:?}");
                }
                if Some(e.key) != new_key {
                    let rank = *ranks.get(e.key).expect("every stored key is ranked");
                    oldest_kept = oldest_kept.min((e.last_access, rank));
                    expired_kept += usize::from(is_expired(e.expire_on, now));
                    used_kept += m.size(e.key);
                }
            })
            .expect("for_each_entry failed on a valid page");

        let dropped: Vec<Vec<u8>> = if in_page == self.model.len() {
            Vec::new()
        } else {
            let mut present = std::collections::HashSet::new();
            PageView::new(&self.buf)
                .for_each_entry(|e| {
                    present.insert(e.key);
                })
                .expect("for_each_entry failed on a valid page");
            self.model
                .keys()
                .filter(|k| !present.contains(&k[..]))
                .cloned()
                .collect()
        };
        assert_eq!(
            in_page + dropped.len(),
            self.model.len(),
            "entries lost track of"
        );
        let n_dropped = dropped.len();
        for k in &dropped {
            note(if is_expired(self.model[k].expire_on, now) {
                Event::dropped_expired
            } else {
                Event::dropped_lru
            });
        }
        match &drops {
            Drops::None => assert!(dropped.is_empty(), "{op:?} lost {dropped:?}"),
            Drops::All(n) => {
                assert_eq!(in_page, 0, "entries left after Evict::All");
                assert_eq!(*n, n_dropped, "Evict::All count");
            }
            Drops::Expired(n) => {
                assert_eq!(*n, n_dropped, "Evict::Expired count");
                for k in &dropped {
                    assert!(
                        is_expired(self.model[k].expire_on, now),
                        "Evict::Expired dropped live {k:?}"
                    );
                }
                assert_eq!(expired_kept, 0, "expired entries survived a purge");
            }
            Drops::MakeRoom {
                len,
                new_key,
                triggered,
                reported,
            } => {
                if let Some(n) = reported {
                    assert_eq!(*n, n_dropped, "MakeRoom count");
                }
                if !triggered {
                    assert!(
                        dropped.is_empty(),
                        "{op:?} evicted {dropped:?} from a roomy page"
                    );
                }
                if !dropped.is_empty() {
                    // The page was rebuilt: nothing expired survives, and whatever live entry
                    // went was accessed less recently than any survivor, or in the same second
                    // and written earlier.
                    assert_eq!(expired_kept, 0, "expired entries survived eviction");
                    let newest_dropped = dropped
                        .iter()
                        .filter(|k| !is_expired(self.model[*k].expire_on, now))
                        .map(|k| (self.model[k].last_access, self.ranks[k]))
                        .max();
                    // (The policy chooses by its own bits: see `check_policy`.)
                    if let Some(d) = newest_dropped.filter(|_| !self.policy) {
                        assert!(
                            d < oldest_kept,
                            "LRU evicted an entry (last access, write rank) {d:?} but kept one \
                             at {oldest_kept:?}"
                        );
                        // LRU eviction ran: the survivors fill less than DATA_FILL_TARGET.
                        let cap = self.buf.len() - h.slots_end();
                        let target = (DATA_FILL_TARGET * cap as f64) as usize;
                        assert!(
                            used_kept < target || used_kept == 0,
                            "after LRU eviction survivors use {used_kept} of {cap} bytes"
                        );
                    }
                }
                if new_key.is_none() && *len <= self.max_entry() {
                    assert!(
                        h.free_bytes as usize >= *len,
                        "MakeRoom({len}) left too little room"
                    );
                    assert!(h.free_slots > 0, "MakeRoom({len}) left no free slot");
                }
            }
        }
        for k in dropped {
            self.model.remove(&k);
            self.ranks.remove(&k);
        }
        let rebuilt = match &drops {
            Drops::None => false,
            Drops::Expired(_) | Drops::All(_) => true,
            Drops::MakeRoom { triggered, .. } => *triggered,
        };
        if rebuilt {
            // The rebuild compacted the survivors least recently used first, ties by rank.
            let mut survivors: Vec<(u32, u64, Vec<u8>)> = self
                .model
                .iter()
                .filter(|(k, _)| Some(k.as_slice()) != new_key)
                .map(|(k, e)| (e.last_access, self.ranks[k], k.clone()))
                .collect();
            survivors.sort_unstable();
            for (_, _, k) in survivors {
                self.ranks.insert(k, self.next_rank);
                self.next_rank += 1;
            }
        }
        // A stored entry is appended after the survivors of any rebuild its store made.
        if let Some(k) = new_key_owned {
            self.ranks.insert(k, self.next_rank);
            self.next_rank += 1;
        }
    }
}

/// The decoded operation sequence of an input, for reading a crash report.
pub fn describe(data: &[u8]) -> String {
    match Input::arbitrary_take_rest(Unstructured::new(data)) {
        Ok(input) => format!("{input:#?}"),
        Err(e) => format!("undecodable input: {e}"),
    }
}
