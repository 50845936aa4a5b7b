//! Eviction policies: which entries a rebuild drops, and what a page remembers for that.
//!
//! [`Policy`] is the one seam: each page operation calls its hooks (on a read hit, on a
//! store, to make room, on eviction), and each hook has one `match` between Cache::FastMmap's
//! rule (the FastMmap layout, which Perl shares) and the native layout's (probation and
//! protection, a read count and a ghost record of recently evicted keys: see the policy
//! constants in `consts` and docs/format.md §4.1).
//!
//! Everything here is a hint to eviction: a damaged protected bit or ghost record can make the
//! page keep the wrong entries, never read or write outside it.

use super::Corrupt;
use super::consts::*;
use super::entry::EntryLoc;
use super::evict::{Survivors, data_capacity};
use super::header::{PageHeader, get_u32, put_u32};
use super::view::Probe;

/// The eviction rule a page follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Cache::FastMmap's (docs/format.md §4): least recently used first, until the data area
    /// is under 60% full; no policy bits, no ghost record. Pages Perl shares must keep it:
    /// Perl knows neither.
    #[default]
    Perl,
    /// The native layout's (docs/format.md §4.1).
    Native,
}

impl Policy {
    /// Bytes at the end of a page of `page_size` bytes that stores leave free (the ghost
    /// record).
    #[inline]
    pub(super) fn reserve(self, page_size: usize) -> usize {
        match self {
            Policy::Perl => 0,
            Policy::Native => ghost_size(page_size),
        }
    }

    /// On a read hit: the flags of an entry with `flags`, last read or stored in second
    /// `last_access`, after a hit at `now` (see [`on_hit`]).
    #[inline]
    pub(super) fn on_hit(self, flags: u32, last_access: u32, now: u32) -> u32 {
        match self {
            Policy::Perl => flags,
            Policy::Native => on_hit(flags, last_access, now),
        }
    }

    /// On a store: the policy bits (`POLICY_FLAGS`) of the entry a store writes for a key
    /// that `probe` found, or did not. A key stored again while it is in the page is treated
    /// as a read hit would be, keeping its count; a new key the ghost record remembers is
    /// protected; any other new key starts on probation.
    pub(super) fn on_store(
        self,
        buf: &[u8],
        hdr: &PageHeader,
        probe: &Probe,
        slot_hash: u32,
        now: u32,
    ) -> u32 {
        match (self, probe) {
            (Policy::Perl, _) => 0,
            (Policy::Native, Probe::Hit { loc, .. }) => {
                on_hit(loc.flags, loc.last_access, now) & POLICY_FLAGS
            }
            (Policy::Native, Probe::Miss { .. }) => match is_ghost(buf, hdr, slot_hash) {
                true => FLAG_PROTECTED,
                false => 0,
            },
        }
    }

    /// Just before a store appends its entry with policy bits `extra` (from
    /// [`on_store`](Self::on_store), `probe` taken on the page as it is now): a new key
    /// admitted protected because the ghost record remembers it is taken out of the record
    /// (see [`forget_ghost`]).
    pub(super) fn on_admit(
        self,
        buf: &mut [u8],
        hdr: &PageHeader,
        probe: &Probe,
        slot_hash: u32,
        extra: u32,
    ) -> Result<(), Corrupt> {
        match (self, probe) {
            (Policy::Native, Probe::Miss { .. }) if extra & FLAG_PROTECTED != 0 => {
                forget_ghost(buf, hdr, slot_hash)
            }
            _ => Ok(()),
        }
    }

    /// To make room for an entry of `len` bytes in a rebuild: drops victims from `room.keep`
    /// (least recently used first) and may change the survivors' policy bits and the slot
    /// count (`start_slots` is the file's). The page's bytes are not changed.
    pub(super) fn make_room(
        self,
        room: &mut Survivors,
        len: usize,
        page_size: usize,
        start_slots: u32,
    ) {
        match self {
            Policy::Perl => perl_make_room(room, len, page_size, start_slots),
            Policy::Native => native_make_room(room, len, page_size, start_slots),
        }
    }

    /// Before a rebuild: what the page remembers of earlier evictions (how many fingerprints
    /// its ghost record holds, if it is sound), for [`on_evict`](Self::on_evict). The rebuild
    /// leaves the record's bytes as they are unless its entries reach into them, and then
    /// nothing is written to the record.
    pub(super) fn memory(self, buf: &[u8], hdr: &PageHeader) -> Memory {
        match self {
            Policy::Perl => Memory::None,
            Policy::Native => match ghosts(buf, hdr) {
                Some(g) => Memory::Ghosts(g.len() / GHOST_PRINT_SIZE),
                None => Memory::Lost,
            },
        }
    }

    /// After a rebuild whose entries end at `free_data`: remembers `evicted` (the slot hashes
    /// that [`make_room`](Self::make_room) chose to remember) beside `memory`, rewriting the
    /// ghost record when anything was evicted or the record was not sound.
    pub(super) fn on_evict(
        self,
        buf: &mut [u8],
        free_data: usize,
        memory: Memory,
        evicted: &[u32],
    ) -> Result<(), Corrupt> {
        match memory {
            Memory::None => Ok(()),
            Memory::Ghosts(_) if evicted.is_empty() => Ok(()),
            Memory::Ghosts(old) => write_ghosts(buf, free_data, old, evicted),
            Memory::Lost => write_ghosts(buf, free_data, 0, evicted),
        }
    }
}

/// What a page remembers of earlier evictions, read before a rebuild.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Memory {
    /// Nothing: the policy keeps no record.
    None,
    /// The ghost record was sound, with this many fingerprints.
    Ghosts(usize),
    /// The policy keeps a record, but the page's was not sound (or there was none yet).
    Lost,
}

/// Cache::FastMmap's rule (docs/format.md §4, step 4): the least recently used go until the
/// data area is under `DATA_FILL_TARGET` full, then until the new entry fits.
fn perl_make_room(room: &mut Survivors, len: usize, page_size: usize, start_slots: u32) {
    let capacity = data_capacity(page_size, room.num_slots).unwrap_or(0);
    let threshold = (DATA_FILL_TARGET * capacity as f64) as usize;
    let mut cut = 0;
    while cut < room.keep.len() && room.used >= threshold {
        room.used -= room.keep[cut].size();
        cut += 1;
    }
    // Beyond Cache::FastMmap: keep going until the new entry fits, so that a store of an
    // entry that fits an empty page always succeeds.
    while cut < room.keep.len() && room.used.saturating_add(len) > capacity {
        room.used -= room.keep[cut].size();
        cut += 1;
    }
    for i in 0..cut {
        room.drop_entry(i);
    }
    room.keep.drain(..cut);
    if room.keep.is_empty() && len > capacity {
        // Only a slot table grown past what this entry allows stands in the way.
        room.num_slots = start_slots;
    }
}

/// The native rule (docs/format.md §4.1): victims from [`choose_victims`], the ghost record
/// left free unless only it stands between the new entry and the page, or between a large
/// entry and the page's protected entries, and a slot table grown for many small entries
/// shrunk back for a large one, rather than every entry going first (a table grown again
/// later costs a rebuild, not the page's data).
fn native_make_room(room: &mut Survivors, len: usize, page_size: usize, start_slots: u32) {
    let used = room.used;
    let capacity_with = |n: u32, reserve: usize| {
        let full = data_capacity(page_size, n).unwrap_or(0);
        match len.saturating_add(reserve) <= full {
            true => full - reserve,
            false => full,
        }
    };
    let drops_protected = |keep: &[EntryLoc], capacity: usize| {
        choose_victims(&mut keep.to_vec(), used, len, capacity)
            .iter()
            .any(|&i| keep[i].flags & FLAG_PROTECTED != 0)
    };
    // A large entry (an eighth of the page or more) is the only kind whose room may cost
    // protected entries. Only for one are victims chosen on a copy first: every other rebuild
    // chooses once, below.
    let large = len.saturating_mul(8) >= page_size;
    // The ghost record is a hint and protected entries are not: a large entry that would push
    // some out to keep the record's bytes free takes those bytes instead (the record is lost).
    let reserve = match large
        && drops_protected(
            &room.keep,
            capacity_with(room.num_slots, ghost_size(page_size)),
        ) {
        true => 0,
        false => ghost_size(page_size),
    };
    let capacity_with = |n: u32| capacity_with(n, reserve);
    // A large entry that would still push out protected entries gets a smaller table instead,
    // if one holds the survivors within the growth limit.
    if room.num_slots > start_slots
        && large
        && drops_protected(&room.keep, capacity_with(room.num_slots))
    {
        let mut n = start_slots;
        while n < room.num_slots {
            let cut = choose_victims(&mut room.keep.clone(), used, len, capacity_with(n));
            let left = room.keep.len() - cut.len();
            if f64::from(left as u32) <= f64::from(n) * SLOT_FILL_LIMIT {
                room.num_slots = n;
                break;
            }
            n = n.saturating_mul(2).saturating_add(1);
        }
    }
    let full = data_capacity(page_size, room.num_slots).unwrap_or(0);
    let victims = choose_victims(&mut room.keep, used, len, capacity_with(room.num_slots));
    let mut dead = vec![false; room.keep.len()];
    for &i in &victims {
        dead[i] = true;
        if remembered(room.keep[i].flags) {
            room.ghosts.push(room.keep[i].slot_hash);
        }
        room.drop_entry(i);
    }
    // A shrunk table must still have a slot to spare: the oldest go (probation first).
    let mut left = room.keep.len() - victims.len();
    for pass_protected in [false, true] {
        for (i, dead) in dead.iter_mut().enumerate() {
            if left < room.num_slots as usize {
                break;
            }
            let protected = room.keep[i].flags & FLAG_PROTECTED != 0;
            if !*dead && protected == pass_protected {
                *dead = true;
                left -= 1;
                room.drop_entry(i);
            }
        }
    }
    room.retain_live(&dead);
    if room.keep.is_empty() && len > full {
        room.num_slots = start_slots;
    }
}

/// Page offset of the ghost record of a page of `page_size` bytes.
fn ghost_start(page_size: usize) -> usize {
    page_size - ghost_size(page_size)
}

/// Most fingerprints the ghost record of a page of `page_size` bytes holds.
pub(super) fn ghost_capacity(page_size: usize) -> usize {
    ghost_size(page_size).saturating_sub(GHOST_HASHES_OFFSET) / GHOST_PRINT_SIZE
}

/// The ghost record's fingerprint of a key with `slot_hash`: the top half of the hash times
/// an odd constant, so that every bit of it counts (slot hashes of keys in one page may share
/// bits, and a weak key hash may vary few of them).
#[inline]
pub(super) fn fingerprint(slot_hash: u32) -> u16 {
    (slot_hash.wrapping_mul(0x9e37_79b1) >> 16) as u16
}

/// The fingerprints in the ghost record, oldest first, or none when the record is not
/// trustworthy: a wrong magic, a count beyond the record, or entries reaching into it.
pub(super) fn ghosts<'b>(buf: &'b [u8], hdr: &PageHeader) -> Option<&'b [u8]> {
    let start = ghost_start(buf.len());
    if hdr.free_data as usize > start {
        return None;
    }
    if get_u32(buf, start + GHOST_MAGIC_OFFSET)? != GHOST_MAGIC {
        return None;
    }
    let count = get_u32(buf, start + GHOST_COUNT_OFFSET)? as usize;
    if count > ghost_capacity(buf.len()) {
        return None;
    }
    let first = start + GHOST_HASHES_OFFSET;
    buf.get(first..first + count * GHOST_PRINT_SIZE)
}

/// Whether the key with `slot_hash` is in the page's ghost record (or another key with its
/// fingerprint: about one new key in 65,536 per remembered one is taken for a returning key).
/// Never inlined: the store path it is called from stays small, which keeps overwrites, which
/// never call it, as fast as before (inlined, a set overwrite was 3–5% slower).
#[inline(never)]
pub(super) fn is_ghost(buf: &[u8], hdr: &PageHeader, slot_hash: u32) -> bool {
    let print = fingerprint(slot_hash);
    // This runs on every store of a new key: four fingerprints at a time, as one u64 each
    // (a lane equal to the fingerprint becomes zero, which the borrow trick below finds).
    const LOW: u64 = 0x0001_0001_0001_0001;
    const HIGH: u64 = 0x8000_8000_8000_8000;
    let spread = u64::from(print) * LOW;
    let zero_lane = |w: &[u8]| {
        let x = u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) ^ spread;
        x.wrapping_sub(LOW) & !x & HIGH
    };
    ghosts(buf, hdr).is_some_and(|g| {
        // 32 bytes at a time, with no early exit, so that the loads and tests of a block
        // overlap: about twice as fast as one word at a time.
        let blocks = g.chunks_exact(32);
        let tail = blocks.remainder();
        let found = blocks.fold(0, |found, b| {
            found
                | zero_lane(&b[0..8])
                | zero_lane(&b[8..16])
                | zero_lane(&b[16..24])
                | zero_lane(&b[24..32])
        });
        let words = tail.chunks_exact(8);
        let rest = words.remainder();
        (found | words.fold(0, |found, w| found | zero_lane(w))) != 0
            || rest
                .chunks_exact(GHOST_PRINT_SIZE)
                .any(|h| u16::from_ne_bytes([h[0], h[1]]) == print)
    })
}

/// Takes the fingerprint of the key with `slot_hash` out of the page's ghost record (its
/// oldest copy, if it has one): a key returns protected once per eviction, so that a key
/// moved back from the protected part and evicted again does not return protected on an
/// older memory of it.
pub(super) fn forget_ghost(
    buf: &mut [u8],
    hdr: &PageHeader,
    slot_hash: u32,
) -> Result<(), Corrupt> {
    let print = fingerprint(slot_hash).to_ne_bytes();
    let Some(at) =
        ghosts(buf, hdr).and_then(|g| g.chunks_exact(GHOST_PRINT_SIZE).position(|h| h == print))
    else {
        return Ok(());
    };
    let start = ghost_start(buf.len());
    let count = get_u32(buf, start + GHOST_COUNT_OFFSET).unwrap_or(0) as usize;
    let first = start + GHOST_HASHES_OFFSET;
    // As in `write_ghosts`: the record is invalid while it changes.
    put_u32(buf, start + GHOST_MAGIC_OFFSET, 0)?;
    super::evict::publish_order(buf);
    let end = first + count * GHOST_PRINT_SIZE;
    buf.get_mut(first + at * GHOST_PRINT_SIZE..end)
        .ok_or(Corrupt("ghost record outside the page"))?
        .copy_within(GHOST_PRINT_SIZE.., 0);
    put_u32(buf, start + GHOST_COUNT_OFFSET, (count - 1) as u32)?;
    super::evict::publish_order(buf);
    put_u32(buf, start + GHOST_MAGIC_OFFSET, GHOST_MAGIC)
}

/// Writes the ghost record of a page whose entries end at `free_data`, in place: the newest of
/// the `old` fingerprints it holds (the record as it was before the rebuild, whose bytes the
/// rebuild left alone) followed by the fingerprints of `evicted` (slot hashes), as many as
/// fit. Nothing is written when the record would overlap the entries.
pub(super) fn write_ghosts(
    buf: &mut [u8],
    free_data: usize,
    old: usize,
    evicted: &[u32],
) -> Result<(), Corrupt> {
    let start = ghost_start(buf.len());
    let cap = ghost_capacity(buf.len());
    if free_data > start || cap == 0 {
        return Ok(());
    }
    let old = old.min(cap);
    let new = evicted.len().min(cap);
    let kept_old = old.min(cap - new);
    // The magic first and last: a writer killed between leaves no record, which is a hint too.
    put_u32(buf, start + GHOST_MAGIC_OFFSET, 0)?;
    super::evict::publish_order(buf);
    let first = start + GHOST_HASHES_OFFSET;
    let prints = buf
        .get_mut(first..first + (kept_old + new) * GHOST_PRINT_SIZE)
        .ok_or(Corrupt("ghost record outside the page"))?;
    prints.copy_within(
        (old - kept_old) * GHOST_PRINT_SIZE..old * GHOST_PRINT_SIZE,
        0,
    );
    for (to, &h) in prints[kept_old * GHOST_PRINT_SIZE..]
        .chunks_exact_mut(GHOST_PRINT_SIZE)
        .zip(&evicted[evicted.len() - new..])
    {
        to.copy_from_slice(&fingerprint(h).to_ne_bytes());
    }
    put_u32(buf, start + GHOST_COUNT_OFFSET, (kept_old + new) as u32)?;
    super::evict::publish_order(buf);
    put_u32(buf, start + GHOST_MAGIC_OFFSET, GHOST_MAGIC)
}

/// The flags of an entry with `flags`, last read or stored in second `last_access`, after a
/// read hit at `now`: the first hit protects it with a count of one; later ones add one (up
/// to `FREQ_MAX`), at most one a second. A hit within the second of the last access on a
/// protected entry changes nothing, so that lock-free readers, which serve exactly those hits,
/// miss no count.
#[inline]
pub(super) fn on_hit(flags: u32, last_access: u32, now: u32) -> u32 {
    if flags & FLAG_PROTECTED == 0 {
        (flags & !FLAG_FREQ) | FLAG_PROTECTED | FREQ_ONE
    } else if last_access != now && flags & FLAG_FREQ != FLAG_FREQ {
        flags + FREQ_ONE
    } else {
        flags
    }
}

/// A probationary entry's `FLAG_FREQ` bits when it was moved back from the protected part: it
/// is not remembered in the ghost record when evicted, so that a key cannot return protected
/// again and again without ever being read in between.
const DEMOTED: u32 = FREQ_ONE;

/// Whether an evicted entry with `flags` goes into the ghost record: one that was never
/// protected.
pub(super) fn remembered(flags: u32) -> bool {
    flags & POLICY_FLAGS == 0
}

/// Where an entry stands in the order in which a rebuild evicts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rank {
    /// On probation: goes first.
    Probation,
    /// Protected, without a count.
    Uncounted,
    /// Protected, with a count: goes last.
    Counted,
}

impl Rank {
    fn of(flags: u32) -> Rank {
        match (flags & FLAG_PROTECTED != 0, flags & FLAG_FREQ != 0) {
            (false, _) => Rank::Probation,
            (true, false) => Rank::Uncounted,
            (true, true) => Rank::Counted,
        }
    }
}

/// Chooses which of `keep` (sorted least recently used first, occupying `used` bytes) a
/// rebuild for an entry of `len` bytes drops, for a data area of `capacity` bytes (the ghost
/// record already left out). Protected entries demoted to probation get their flag cleared in
/// `keep`, and those spared a demotion lose one of their count. Returns the victims' indices
/// into `keep`: probationary ones first, least recently used first.
pub(super) fn choose_victims(
    keep: &mut [EntryLoc],
    mut used: usize,
    len: usize,
    capacity: usize,
) -> Vec<usize> {
    let threshold = (POLICY_FILL_TARGET * capacity as f64) as usize;
    let over = |used: usize| used >= threshold || used.saturating_add(len) > capacity;
    let mut victims = Vec::new();
    if !over(used) {
        return victims;
    }
    // The protected part is capped: sweeping from its least recently used entry, an entry with
    // a count loses one and stays (a second chance, as a clock hand gives), one without goes
    // back to probation. A sweep more than the largest count always ends it.
    let protected_cap = (PROTECTED_SHARE * capacity as f64) as usize;
    let mut protected: usize = keep
        .iter()
        .filter(|l| l.flags & FLAG_PROTECTED != 0)
        .map(EntryLoc::size)
        .sum();
    let mut demoted = Vec::new();
    let before: Vec<u32> = keep.iter().map(|l| l.flags).collect();
    'sweeps: for _ in 0..=FREQ_MAX {
        for (i, loc) in keep.iter_mut().enumerate() {
            if protected <= protected_cap {
                break 'sweeps;
            }
            if loc.flags & POLICY_FLAGS == FLAG_PROTECTED {
                loc.flags = (loc.flags & !POLICY_FLAGS) | DEMOTED;
                protected -= loc.size();
                demoted.push(i);
            }
        }
        if protected <= protected_cap {
            break;
        }
        for loc in keep.iter_mut() {
            if loc.flags & FLAG_PROTECTED != 0 && loc.flags & FLAG_FREQ != 0 {
                loc.flags -= FREQ_ONE;
            }
        }
    }
    // As below for victims: a large entry demoted late may leave room for smaller ones, which
    // stay as they were, count and all.
    for &i in demoted.iter().rev() {
        let size = keep[i].size();
        if protected + size <= protected_cap {
            keep[i].flags = before[i];
            protected += size;
        }
    }
    // Probation first, then (only if that was not enough) the protected entries without a
    // count, then the others.
    'passes: for pass in [Rank::Probation, Rank::Uncounted, Rank::Counted] {
        for (i, loc) in keep.iter().enumerate() {
            if !over(used) {
                break 'passes;
            }
            if Rank::of(loc.flags) == pass {
                victims.push(i);
                used -= loc.size();
            }
        }
    }
    // A large victim late in that order may have made room for some chosen before it (a big
    // new entry evicts a big old one, not every small one first): the victims that still fit,
    // the last chosen first, stay.
    let mut spared = vec![false; victims.len()];
    for (j, &i) in victims.iter().enumerate().rev() {
        let size = keep[i].size();
        if !over(used + size) {
            used += size;
            spared[j] = true;
        }
    }
    let mut j = 0;
    victims.retain(|_| {
        j += 1;
        !spared[j - 1]
    });
    victims
}
