//! Optimistic reads of native pages (either lock kind): a read that takes no lock.
//!
//! Every holder of a page lock (robust or fcntl) makes the page's sequence word (`ROW_SEQ_OFFSET`)
//! odd as soon as it has the lock and bumps it to the next even value just before it lets go, so
//! the word moves whenever the page may have changed. A reader loads the word (even: no holder is
//! inside), looks the key up with atomic loads only, copying out what it returns, and loads the
//! word again: unchanged, nothing it copied can have been torn. Otherwise, or when the word is odd,
//! the busy marker set, the page fails a check, or the hit would have to refresh the entry's access
//! time (it is stored in whole seconds, so within one second a hot key's reads need no write), the
//! reader takes the lock as before.
//!
//! The loads race with the lock holder's plain writes. That is the seqlock pattern, which
//! Rust's memory model does not yet give a data-race-free form to (an "atomic memcpy"): every
//! load here is an atomic load, so none is duplicated, merged or elided, every offset is
//! checked against the page before use, and nothing read is trusted before the sequence check
//! passes. A process that writes the file without the protocol can make us return garbage, as
//! it can under a lock.
//!
//! Reads counted by optimistic reads cannot be added to the page header without a write: each
//! process keeps them per page and adds them when it next locks the page (as `stats` does for
//! every page), or closes the file. Threads count in separate arrays of counters, on cache lines
//! of their own, so reads of one page by two threads do not contend on one counter.

#![allow(unsafe_code)]

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
use std::time::Duration;

use super::fork;
use super::lock::Reentry;
use super::shared::SharedFile;
use crate::page::consts::{MAGIC_OFFSET, NUM_SLOTS_OFFSET, SLOT_SIZE, SLOTS_OFFSET};
use crate::page::{Copied, PageBytes, find_copy};

/// How many times a read whose page changed under it is tried again before taking the lock.
const RETRIES: usize = 2;

/// The line size prefetches step by.
const CACHE_LINE: usize = 64;

/// Per-file state of optimistic reads in this process.
pub(crate) struct Optimistic {
    /// Reads (low half) and hits (high half) counted by optimistic reads and not yet added to
    /// the page headers: `STRIPES` arrays of one counter per page, each array on cache lines
    /// of its own. A thread counts in one array only, so threads counting reads of the same
    /// page do not pass that counter's line between their cores on every read.
    pending: Box<[Line]>,
    /// Lines per array.
    lines: usize,
    /// The fork generation the pending counts belong to: a child starts with none.
    generation: AtomicU32,
    /// Each page's slot count as this process last saw it (0: not seen yet), so that a read
    /// can fetch the line of its key's first slot at once, instead of after the page header's
    /// cache miss. A hint: a wrong one costs a useless prefetch, and nothing read depends on it.
    num_slots: Box<[AtomicU32]>,
}

/// One cache line of counters.
#[repr(align(64))]
struct Line([AtomicU64; COUNTERS_PER_LINE]);

const COUNTERS_PER_LINE: usize = CACHE_LINE / 8;

/// How many counter arrays each file has: threads beyond this many share arrays (still
/// exact, as every count is an atomic add).
const STRIPES: usize = 4;

/// The counter array this thread counts in.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        let mut stripe = s.get();
        if stripe == usize::MAX {
            stripe = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(stripe);
        }
        stripe
    })
}

/// What an optimistic read is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// A look that changes nothing (`contains_key`, read-only handles).
    Look,
    /// A read: a hit must carry this second's access time, else the lock refreshes it.
    Read,
    /// A read that also counts in the page's statistics.
    CountedRead,
}

/// What an optimistic read found.
pub(crate) enum Outcome {
    /// A live entry, copied out.
    Hit,
    /// No live entry.
    Miss,
    /// Nothing usable: take the lock.
    Locked,
}

const HIT: u64 = 1 << 32;

impl Optimistic {
    pub(super) fn new(num_pages: u32) -> Optimistic {
        let lines = (num_pages as usize).div_ceil(COUNTERS_PER_LINE);
        Optimistic {
            pending: (0..lines * STRIPES)
                .map(|_| Line(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
            lines,
            generation: AtomicU32::new(fork::generation()),
            num_slots: (0..num_pages).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// The slot count `page` had when last seen, else `start_slots`.
    #[inline]
    fn num_slots_hint(&self, page: u32, start_slots: u32) -> u32 {
        match self.num_slots.get(page as usize) {
            Some(n) => match n.load(Ordering::Relaxed) {
                0 => start_slots,
                n => n,
            },
            None => start_slots,
        }
    }

    /// Asks for the lines a lookup of `slot_hash` in `page` (seen through `bytes`) starts
    /// with: the page header and, by the slot count hint, the key's first slot.
    #[inline]
    fn prefetch_start(&self, bytes: &AtomicPage, page: u32, slot_hash: u32, start_slots: u32) {
        let num_slots = self.num_slots_hint(page, start_slots).max(1);
        bytes.prefetch(MAGIC_OFFSET);
        bytes.prefetch(SLOTS_OFFSET + (slot_hash % num_slots) as usize * SLOT_SIZE);
    }

    /// Records the slot count just read from `page`'s header (written only when it changed,
    /// so readers of a page do not pass the hint's line between their cores).
    #[inline]
    fn saw_num_slots(&self, page: u32, num_slots: u32) {
        if let Some(n) = self.num_slots.get(page as usize)
            && n.load(Ordering::Relaxed) != num_slots
        {
            n.store(num_slots, Ordering::Relaxed);
        }
    }

    /// Every counter, emptied first if they were inherited through a fork.
    #[inline]
    fn lines(&self) -> &[Line] {
        let generation = fork::generation();
        if self.generation.load(Ordering::Relaxed) != generation {
            for c in self.pending.iter().flat_map(|line| &line.0) {
                c.store(0, Ordering::Relaxed);
            }
            self.generation.store(generation, Ordering::Relaxed);
        }
        &self.pending
    }

    /// `page`'s counter in array `stripe` of `lines` (what [`Optimistic::lines`] returned).
    #[inline]
    fn counter<'l>(&self, lines: &'l [Line], stripe: usize, page: u32) -> Option<&'l AtomicU64> {
        let page = page as usize;
        let line = lines.get(stripe * self.lines + page / COUNTERS_PER_LINE)?;
        // Past the last page of a stripe's last line: no page.
        (page < self.lines * COUNTERS_PER_LINE).then(|| &line.0[page % COUNTERS_PER_LINE])
    }

    #[inline]
    fn count(&self, page: u32, hit: bool) {
        if let Some(c) = self.counter(self.lines(), stripe(), page) {
            c.fetch_add(1 + if hit { HIT } else { 0 }, Ordering::Relaxed);
        }
    }

    /// Takes the reads and hits counted for `page` since the last call, by every thread.
    #[inline]
    pub(super) fn take(&self, page: u32) -> (u32, u32) {
        let (mut reads, mut hits) = (0u32, 0u32);
        let lines = self.lines();
        for stripe in 0..STRIPES {
            let Some(c) = self.counter(lines, stripe, page) else {
                return (0, 0);
            };
            if c.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let n = c.swap(0, Ordering::Relaxed);
            reads = reads.saturating_add(n as u32);
            hits = hits.saturating_add((n >> 32) as u32);
        }
        (reads, hits)
    }

    fn any_pending(&self) -> impl Iterator<Item = u32> + '_ {
        let per_stripe = self.lines * COUNTERS_PER_LINE;
        let lines = self.lines();
        (0..per_stripe as u32).filter(move |&page| {
            (0..STRIPES).any(|stripe| {
                self.counter(lines, stripe, page)
                    .is_some_and(|c| c.load(Ordering::Relaxed) != 0)
            })
        })
    }
}

/// A page's bytes read with atomic loads.
struct AtomicPage {
    base: *const u8,
    len: usize,
}

impl AtomicPage {
    /// # Safety
    /// `base..base + len` must lie inside a live, writable mapping for as long as the value is
    /// used, with `base` 8-byte aligned.
    unsafe fn new(base: *const u8, len: usize) -> AtomicPage {
        AtomicPage { base, len }
    }

    #[inline]
    fn byte(&self, off: usize) -> u8 {
        debug_assert!(off < self.len);
        // SAFETY: (new) callers check `off < len`, so the byte lies inside the writable
        // mapping, which outlives `self`.
        unsafe { AtomicU8::from_ptr(self.base.add(off).cast_mut()) }.load(Ordering::Relaxed)
    }

    #[inline]
    fn word(&self, off: usize) -> u64 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= self.len);
        // SAFETY: (new) callers check the word lies inside the page, and 8-aligned offsets
        // from an 8-aligned base are aligned; the mapping is writable and outlives `self`.
        unsafe { AtomicU64::from_ptr(self.base.add(off).cast_mut().cast()) }.load(Ordering::Relaxed)
    }

    /// Asks the processor to start loading the line holding byte `off` (a hint: it reads
    /// nothing into the program, and does nothing off x86-64).
    #[inline]
    fn prefetch(&self, off: usize) {
        if off >= self.len {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `off < len`, so the address lies inside the mapping (new); a prefetch never
        // faults, writes or makes a value visible to the program, whatever the address.
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            _mm_prefetch::<_MM_HINT_T0>(self.base.add(off).cast());
        }
    }

    /// Asks for the first line of every 4 KiB memory page that `off..off + len` enters after
    /// its first, so that the address translations (a walk of the page tables each, when the
    /// run is cold) and the first line misses of every page run together, ahead of a copy that
    /// would otherwise meet them one after another: the processor's own prefetchers stop at a
    /// 4 KiB boundary. A hint: it reads nothing into the program. Only ahead of the vector
    /// loop (runs shorter than [`REP_MOVSB`], so at most four or five pages): in runs of
    /// `peers`, asking ahead of a 64 KiB `rep movsb` made it no faster and perhaps slower.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn prefetch_memory_pages(&self, off: usize, len: usize) {
        const MEMORY_PAGE: usize = 4096;
        let start = self.base as usize + off;
        let mut at = (start | (MEMORY_PAGE - 1)) + 1 - self.base as usize;
        let end = off + len;
        while at < end {
            self.prefetch(at);
            at += MEMORY_PAGE;
        }
    }

    /// Fills every byte of `dst` with the bytes at `off`; `None` (and `dst` untouched) if
    /// they do not lie inside the page. Long runs are copied wide (see [`wide_copy`]), short
    /// ones with aligned atomic word loads.
    #[inline]
    fn load_uninit(&self, off: usize, dst: &mut [MaybeUninit<u8>]) -> Option<()> {
        off.checked_add(dst.len()).filter(|&end| end <= self.len)?;
        #[cfg(target_arch = "x86_64")]
        if dst.len() >= WIDE_COPY {
            if dst.len() < REP_MOVSB {
                self.prefetch_memory_pages(off, dst.len());
            }
            // SAFETY: `off..off + dst.len()` was checked just above to lie inside the page,
            // which lies inside the live mapping (new).
            unsafe { wide_copy(self.base.add(off), dst) };
            return Some(());
        }
        #[cfg(target_arch = "x86_64")]
        if dst.len() >= 4 {
            // SAFETY: `off..off + dst.len()` was checked just above to lie inside the page,
            // which lies inside the live mapping (new); `4 <= dst.len() < WIDE_COPY`.
            unsafe { short_copy(self.base.add(off), dst) };
            return Some(());
        }
        let head = (off.next_multiple_of(8) - off).min(dst.len());
        let (first, rest) = dst.split_at_mut(head);
        for (i, b) in first.iter_mut().enumerate() {
            b.write(self.byte(off + i));
        }
        let mut at = off + head;
        let mut words = rest.chunks_exact_mut(8);
        for chunk in &mut words {
            for (b, v) in chunk.iter_mut().zip(self.word(at).to_ne_bytes()) {
                b.write(v);
            }
            at += 8;
        }
        for (i, b) in words.into_remainder().iter_mut().enumerate() {
            b.write(self.byte(at + i));
        }
        Some(())
    }
}

/// Copies `dst.len()` bytes (4 up to [`WIDE_COPY`]) from `src` with a few unaligned loads that
/// overlap rather than a loop of bytes and words: 16-byte SSE2 loads from 16 bytes on (blocks
/// from the start, then the 16 bytes ending at the end), else two 8-byte or two 4-byte loads
/// (the first and the last of the run). Keys and short values, the common case, are copied
/// and compared in a handful of instructions.
///
/// Sound while a lock holder may be writing the same bytes for the reason given at
/// [`wide_copy`]: each is one processor load in inline assembly, which reads every byte in
/// one access that cannot tear, so its effect is that of relaxed atomic byte loads; the
/// caller trusts nothing copied until the page's sequence word is found unchanged.
///
/// # Safety
/// `src..src + dst.len()` must lie inside a live mapping, and `4 <= dst.len() < WIDE_COPY`.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn short_copy(src: *const u8, dst: &mut [MaybeUninit<u8>]) {
    let len = dst.len();
    debug_assert!((4..WIDE_COPY).contains(&len));
    let out = dst.as_mut_ptr().cast::<u8>();
    if len >= 16 {
        let mut at = 0;
        while at + 16 < len {
            // SAFETY: `at + 16 < len`: the 16 bytes at `at` lie inside both ranges (the
            // caller's contract for `src`; `dst` is ours); SSE2 is part of x86-64.
            unsafe { copy_16(src.add(at), out.add(at)) };
            at += 16;
        }
        // SAFETY: `len >= 16`, so the last 16 bytes of both ranges lie inside them.
        unsafe { copy_16(src.add(len - 16), out.add(len - 16)) };
    } else if len >= 8 {
        // SAFETY: `8 <= len < 16`: the first and the last 8 bytes lie inside both ranges.
        unsafe {
            out.cast::<u64>().write_unaligned(load_8(src));
            out.add(len - 8)
                .cast::<u64>()
                .write_unaligned(load_8(src.add(len - 8)));
        }
    } else {
        // SAFETY: `4 <= len < 8`: the first and the last 4 bytes lie inside both ranges.
        unsafe {
            out.cast::<u32>().write_unaligned(load_4(src));
            out.add(len - 4)
                .cast::<u32>()
                .write_unaligned(load_4(src.add(len - 4)));
        }
    }
}

/// Copies 16 bytes from `src` (in the mapping) to `dst` (our memory) with one SSE2 load and
/// store (see [`short_copy`] for why the load is sound against concurrent writers).
///
/// # Safety
/// Both ranges of 16 bytes must be valid, `src` for reads and `dst` for writes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn copy_16(src: *const u8, dst: *mut u8) {
    // SAFETY: the caller's contract; the clobbered register is declared.
    unsafe {
        std::arch::asm!(
            "movdqu xmm0, [{s}]",
            "movdqu [{d}], xmm0",
            s = in(reg) src,
            d = in(reg) dst,
            out("xmm0") _,
            options(nostack, preserves_flags)
        );
    }
}

/// Loads 8 bytes at `src` (any alignment) with one processor load (see [`short_copy`]).
///
/// # Safety
/// `src..src + 8` must lie inside a live mapping.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load_8(src: *const u8) -> u64 {
    let v: u64;
    // SAFETY: the caller's contract: the 8 bytes are readable.
    unsafe {
        std::arch::asm!(
            "mov {v}, qword ptr [{s}]",
            s = in(reg) src,
            v = out(reg) v,
            options(nostack, preserves_flags)
        );
    }
    v
}

/// Loads 4 bytes at `src` (any alignment) with one processor load (see [`short_copy`]).
///
/// # Safety
/// `src..src + 4` must lie inside a live mapping.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load_4(src: *const u8) -> u32 {
    let v: u32;
    // SAFETY: the caller's contract: the 4 bytes are readable.
    unsafe {
        std::arch::asm!(
            "mov {v:e}, dword ptr [{s}]",
            s = in(reg) src,
            v = out(reg) v,
            options(nostack, preserves_flags)
        );
    }
    v
}

/// From this many bytes on, a copy out of the page is a wide copy (see [`wide_copy`]).
#[cfg(target_arch = "x86_64")]
const WIDE_COPY: usize = 64;

/// From this many bytes on, the wide copy is one `rep movsb` (fast-string microcode: as fast
/// as `memcpy` for long runs, but slow to start, and slow at a few KiB on some processors).
#[cfg(target_arch = "x86_64")]
const REP_MOVSB: usize = 16 << 10;

/// Copies `dst.len()` (at least [`WIDE_COPY`]) bytes from `src`: 64 bytes at a time with
/// unaligned 16-byte SSE2 loads and stores, the last 64 bytes copied again to cover the
/// remainder; or, for long runs, with one `rep movsb`.
///
/// Why this is sound while a lock holder may be writing the same bytes: the copy is inline
/// assembly, whose memory accesses are not Rust loads but the processor's, and on x86-64 each
/// byte these instructions read is read in one access that cannot tear (a 16-byte load may
/// mix old and new bytes, but never half a byte; TSO orders the rest). Its effect is therefore
/// exactly that of a sequence of `AtomicU8::load(Relaxed)` of the source bytes, each stored
/// to `dst` — an operation Rust's memory model defines, with no data race, as the word loop's
/// atomic loads are. The bytes may mix old and new values; as for every optimistic load, the
/// caller trusts none of them until the page's sequence word is found unchanged after the
/// copy (the `Acquire` fence in `read_optimistic` orders the asm's loads before that second
/// look: asm without `nomem` is a compiler barrier for memory, and x86 does not reorder loads
/// with loads). A torn copy is discarded by the caller, as any other.
///
/// # Safety
/// `src..src + dst.len()` must lie inside a live mapping, and `dst.len() >= WIDE_COPY`.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn wide_copy(src: *const u8, dst: &mut [MaybeUninit<u8>]) {
    let len = dst.len();
    debug_assert!(len >= WIDE_COPY);
    let out = dst.as_mut_ptr();
    if len >= REP_MOVSB {
        // SAFETY: the source range is readable (the caller's contract); the destination is
        // `dst`, writable for `len` bytes and apart from the mapping (our own memory); the
        // direction flag is clear on entry to asm, as the ABI requires, so the copy runs
        // forwards over exactly these ranges; it uses no stack and changes no flags.
        unsafe {
            std::arch::asm!(
                "rep movsb",
                inout("rcx") len => _,
                inout("rsi") src => _,
                inout("rdi") out => _,
                options(nostack, preserves_flags)
            );
        }
        return;
    }
    // SAFETY: as above for the ranges: the loop copies blocks `0..len / 64` (each of 64
    // bytes, inside both ranges), then the block ending at `len` (inside both, as
    // `len >= 64`); SSE2 is part of x86-64; the clobbered vector registers are declared.
    unsafe {
        std::arch::asm!(
            "2:",
            "movdqu xmm0, [{s}]",
            "movdqu xmm1, [{s} + 16]",
            "movdqu xmm2, [{s} + 32]",
            "movdqu xmm3, [{s} + 48]",
            "movdqu [{d}], xmm0",
            "movdqu [{d} + 16], xmm1",
            "movdqu [{d} + 32], xmm2",
            "movdqu [{d} + 48], xmm3",
            "add {s}, 64",
            "add {d}, 64",
            "dec {n}",
            "jnz 2b",
            "movdqu xmm0, [{ls}]",
            "movdqu xmm1, [{ls} + 16]",
            "movdqu xmm2, [{ls} + 32]",
            "movdqu xmm3, [{ls} + 48]",
            "movdqu [{ld}], xmm0",
            "movdqu [{ld} + 16], xmm1",
            "movdqu [{ld} + 32], xmm2",
            "movdqu [{ld} + 48], xmm3",
            s = inout(reg) src => _,
            d = inout(reg) out => _,
            n = inout(reg) len / 64 => _,
            ls = in(reg) src.add(len - 64),
            ld = in(reg) out.add(len - 64),
            out("xmm0") _,
            out("xmm1") _,
            out("xmm2") _,
            out("xmm3") _,
            options(nostack)
        );
    }
}

impl PageBytes for AtomicPage {
    #[inline]
    fn page_len(&self) -> usize {
        self.len
    }

    #[inline]
    fn u32_at(&self, off: usize) -> Option<u32> {
        if !off.is_multiple_of(4) || off.checked_add(4)? > self.len {
            return None;
        }
        // SAFETY: checked just above to lie inside the page, 4-aligned from an 8-aligned
        // base; the mapping is writable and outlives `self`.
        let word = unsafe { AtomicU32::from_ptr(self.base.add(off).cast_mut().cast()) };
        Some(word.load(Ordering::Relaxed))
    }

    #[inline]
    fn words<const N: usize>(&self, off: usize) -> Option<[u32; N]> {
        if !off.is_multiple_of(4) || off.checked_add(N * 4)? > self.len {
            return None;
        }
        Some(std::array::from_fn(|i| {
            // SAFETY: the N words were checked just above to lie inside the page, 4-aligned
            // from an 8-aligned base; the mapping is writable and outlives `self`.
            let word = unsafe { AtomicU32::from_ptr(self.base.add(off + i * 4).cast_mut().cast()) };
            word.load(Ordering::Relaxed)
        }))
    }

    #[inline]
    fn eq_at(&self, off: usize, expected: &[u8]) -> Option<bool> {
        off.checked_add(expected.len())
            .filter(|&end| end <= self.len)?;
        // Compared where they lie, with the loads a copy would make, but no copy and no call:
        // keys are short, and this runs on every probe of a lock-free read. Stops at the first
        // difference.
        #[cfg(target_arch = "x86_64")]
        if expected.len() >= 8 {
            let n = expected.len();
            let word = |i: usize| {
                let mut want = [0u8; 8];
                want.copy_from_slice(&expected[i..i + 8]);
                // SAFETY: `i + 8 <= n` and `off + n <= len` (checked above): the 8 bytes at
                // `off + i` lie inside the page, inside the live mapping (new); a load as
                // `short_copy`'s.
                unsafe { load_8(self.base.add(off + i)) == u64::from_ne_bytes(want) }
            };
            let mut at = 0;
            while at + 8 < n {
                if !word(at) {
                    return Some(false);
                }
                at += 8;
            }
            return Some(word(n - 8));
        }
        let head = (off.next_multiple_of(8) - off).min(expected.len());
        let (first, rest) = expected.split_at(head);
        let mut at = off;
        for &b in first {
            if self.byte(at) != b {
                return Some(false);
            }
            at += 1;
        }
        let mut words = rest.chunks_exact(8);
        for chunk in &mut words {
            let mut want = [0u8; 8];
            want.copy_from_slice(chunk);
            if self.word(at) != u64::from_ne_bytes(want) {
                return Some(false);
            }
            at += 8;
        }
        for &b in words.remainder() {
            if self.byte(at) != b {
                return Some(false);
            }
            at += 1;
        }
        Some(true)
    }

    #[inline]
    fn copy_to(&self, off: usize, len: usize, out: &mut Vec<u8>) -> Option<()> {
        off.checked_add(len).filter(|&end| end <= self.len)?;
        // Into the spare capacity, with no zero-fill first. A get starts with an empty `Vec`:
        // allocated at once at the exact size, rather than through `reserve`'s growth path.
        if out.capacity() == 0 {
            *out = Vec::with_capacity(len);
        } else {
            out.reserve(len);
        }
        self.load_uninit(off, &mut out.spare_capacity_mut()[..len])?;
        // SAFETY: `load_uninit` returned `Some`, so it initialised all `len` bytes after the
        // old length, within the capacity reserved above.
        unsafe { out.set_len(out.len() + len) };
        Some(())
    }
}

impl SharedFile {
    /// Marks `page` as possibly changing: right after its lock is taken.
    #[inline]
    pub(super) fn begin_change(&self, page: u32) {
        if self.optimistic.is_none() {
            return;
        }
        if let Some(row) = self.row(page) {
            let seq = row.seq.load(Ordering::Relaxed);
            if seq & 1 == 0 {
                row.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
            }
            // The odd word is seen before any change to the page.
            fence(Ordering::Release);
        }
    }

    /// Marks the end of a change to `page`: just before its lock is released.
    #[inline]
    pub(super) fn end_change(&self, page: u32) {
        if self.optimistic.is_none() {
            return;
        }
        if let Some(row) = self.row(page) {
            let seq = row.seq.load(Ordering::Relaxed);
            row.seq.store((seq | 1).wrapping_add(1), Ordering::Release);
        }
    }

    /// Looks `key` up in `page` without a lock, copying its live entry into `out`, for
    /// `access`. See the module docs for when it gives up ([`Outcome::Locked`]).
    #[inline]
    pub(crate) fn read_optimistic(
        &self,
        page: u32,
        slot_hash: u32,
        key: &[u8],
        now: u32,
        access: Access,
        out: &mut Copied,
    ) -> Outcome {
        let Some(optimistic) = &self.optimistic else {
            return Outcome::Locked;
        };
        // Inside a closure that holds one of this file's locks: the lock path reports it.
        if Reentry::held(self as *const SharedFile as usize) {
            return Outcome::Locked;
        }
        let Some(row) = self.row(page) else {
            return Outcome::Locked;
        };
        let (offset, len) = self.page_range(page);
        // SAFETY: the page lies inside the mapping (page < num_pages, checked by `row`, and the
        // file size was checked against the geometry on open), which is writable (optimistic
        // reads are only set up for files opened read-write) and lives as long as `self`;
        // pages start at multiples of 4096 from the page-aligned mapping.
        let bytes =
            unsafe { AtomicPage::new(self.map.as_ptr().add(offset as usize), len as usize) };
        // The page header and the key's first slot are fetched together, while the row's
        // sequence word is loaded, rather than one after the other.
        optimistic.prefetch_start(&bytes, page, slot_hash, self.geometry.start_slots);
        for _ in 0..RETRIES {
            let before = row.seq.load(Ordering::Acquire);
            if before & 1 != 0
                || row.busy.load(Ordering::Relaxed) != 0
                || row.moved.load(Ordering::Relaxed) != 0
            {
                return Outcome::Locked;
            }
            let found = find_copy(&bytes, self.geometry.start_slots, slot_hash, key, now, out);
            // Every load above happens before the second look at the word.
            fence(Ordering::Acquire);
            if row.seq.load(Ordering::Relaxed) != before {
                continue;
            }
            if let Some(n) = bytes.u32_at(NUM_SLOTS_OFFSET) {
                optimistic.saw_num_slots(page, n);
            }
            let hit = match found {
                // A page that fails a check, or a hit whose access time must be refreshed or
                // that moves the entry to its page's protected part (its first hit).
                Err(_) => return Outcome::Locked,
                Ok(true)
                    if access != Access::Look && (out.last_access != now || !out.protected) =>
                {
                    return Outcome::Locked;
                }
                // A large value is read under the lock (see `overflow.rs`).
                Ok(true) if out.flags & crate::page::consts::FLAG_OVERFLOW != 0 => {
                    return Outcome::Locked;
                }
                Ok(hit) => hit,
            };
            if access == Access::CountedRead {
                optimistic.count(page, hit);
            }
            return if hit { Outcome::Hit } else { Outcome::Miss };
        }
        Outcome::Locked
    }

    /// Starts fetching `page`'s header line, the line of `slot_hash`'s first slot, and the
    /// page's lock row: for an optimistic read soon after (a batch asks for every key's page
    /// first, so that their cache misses overlap instead of following one another), and for a
    /// store about to lock the page. A hint only: nothing is read into the program, so nothing
    /// waits on it. (A store once also read the key's slot word here, to fetch the entry it
    /// points at: that load, and the branches on it, cost a store whose lines were already in
    /// the processor's caches more than the early entry fetch saved one whose lines were not.)
    #[inline]
    pub(crate) fn prefetch_page(&self, page: u32, slot_hash: u32) {
        let Some(optimistic) = &self.optimistic else {
            return;
        };
        if page >= self.geometry.num_pages {
            return;
        }
        let (offset, len) = self.page_range(page);
        // SAFETY: the page lies inside the mapping (page < num_pages, and the file size was
        // checked against the geometry on open), which is writable (optimistic reads are only
        // set up for files opened read-write) and lives as long as `self`; pages start at
        // multiples of 4096 from the page-aligned mapping.
        let bytes =
            unsafe { AtomicPage::new(self.map.as_ptr().add(offset as usize), len as usize) };
        optimistic.prefetch_start(&bytes, page, slot_hash, self.geometry.start_slots);
        #[cfg(target_arch = "x86_64")]
        if let Some(row) = self.row(page) {
            // SAFETY: a prefetch never faults, writes or makes a value visible to the
            // program, whatever the address; this one is the row's word in the mapping.
            unsafe {
                use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                _mm_prefetch::<_MM_HINT_T0>(row.seq.as_ptr().cast_const().cast());
            }
        }
    }

    /// Adds the reads counted by this process's optimistic reads of every page to the file,
    /// each page under its lock (waiting a moment at most: these are statistics).
    pub(super) fn flush_read_counts(&self) {
        let Some(optimistic) = &self.optimistic else {
            return;
        };
        let pages: Vec<u32> = optimistic.any_pending().collect();
        for page in pages {
            // `lock` adds the page's pending counts.
            let _ = self.lock(page, Some(Duration::from_millis(100)));
        }
    }
}

impl Drop for SharedFile {
    fn drop(&mut self) {
        self.flush_read_counts();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::consts::{FLAG_TOMBSTONE, MIN_SLOTS};
    use crate::page::{NewEntry, PageMut};
    use proptest::prelude::*;

    /// A page-sized buffer with the 8-byte alignment a mapped page has.
    struct Aligned(Vec<u64>);

    impl Aligned {
        fn new(len: usize) -> Aligned {
            Aligned(vec![0u64; len / 8])
        }
        fn bytes(&mut self) -> &mut [u8] {
            let len = self.0.len() * 8;
            // SAFETY: the Vec<u64> owns `len` initialised bytes; u8 has no alignment needs.
            unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), len) }
        }
        fn atomic(&mut self) -> AtomicPage {
            let len = self.0.len() * 8;
            // SAFETY: the buffer is 8-aligned, writable and outlives every use in the test.
            unsafe { AtomicPage::new(self.0.as_ptr().cast(), len) }
        }
    }

    fn hash(key: &[u8]) -> u32 {
        crate::store::fastmmap_hash(key) / 3
    }

    /// The atomic loads read exactly what plain loads read: same hits, misses and errors,
    /// same copied bytes, for every key of a page filled by real stores, and for keys that
    /// are not there.
    fn agree(page: &mut Aligned, keys: &[Vec<u8>], now: u32) {
        for key in keys {
            let mut plain = Copied::default();
            let mut atomic = Copied::default();
            let p = find_copy(&*page.bytes(), MIN_SLOTS, hash(key), key, now, &mut plain);
            let a = find_copy(&page.atomic(), MIN_SLOTS, hash(key), key, now, &mut atomic);
            assert_eq!(p, a, "key {key:?}");
            if p == Ok(true) {
                assert_eq!(plain, atomic, "key {key:?}");
            }
            // And what the locked path reads.
            let view = crate::page::PageView::with_min_slots(page.bytes(), MIN_SLOTS)
                .peek(hash(key), key, now)
                .map(|e| e.map(|e| (e.value.to_vec(), e.modseq, e.flags, e.expire_on)));
            let copied = p.map(|hit| {
                hit.then(|| {
                    (
                        plain.value.clone(),
                        plain.modseq,
                        plain.flags,
                        plain.expire_on,
                    )
                })
            });
            assert_eq!(view, copied, "key {key:?}");
        }
    }

    proptest! {
        #[test]
        fn atomic_and_plain_loads_agree_on_real_pages(
            entries in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..40),
                 proptest::collection::vec(any::<u8>(), 0..300),
                 any::<bool>(), 0u32..3, any::<bool>()),
                1..80),
            page_size in prop_oneof![Just(4096usize), Just(8192)],
        ) {
            let now = 1_700_000_000;
            let mut page = Aligned::new(page_size);
            PageMut::init(page.bytes(), MIN_SLOTS);
            let mut keys = Vec::new();
            for (key, value, modseq, expiry, tombstone) in &entries {
                let req = NewEntry {
                    slot_hash: hash(key),
                    key,
                    value,
                    expire_on: [0, now - 1, now + 10][*expiry as usize],
                    flags: if *tombstone { FLAG_TOMBSTONE } else { 0 },
                    modseq: modseq.then_some(7),
                };
                let _ = PageMut::wrap(page.bytes()).store(&req, now, MIN_SLOTS);
                keys.push(key.clone());
                keys.push([key.as_slice(), b"?"].concat());
            }
            agree(&mut page, &keys, now);
        }

        #[test]
        fn atomic_and_plain_loads_agree_on_any_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 4096..=4096),
            header in proptest::array::uniform8(0u32..4096),
            keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..12), 1..20),
        ) {
            let mut page = Aligned::new(4096);
            page.bytes().copy_from_slice(&bytes);
            // A plausible header over garbage, so lookups get past the first check.
            let words = [crate::page::consts::PAGE_MAGIC, MIN_SLOTS, header[2] % MIN_SLOTS,
                         0, 32 + 4 * MIN_SLOTS + header[4] % 2048 / 4 * 4, 0, 0, 0];
            for (i, w) in words.iter().enumerate() {
                page.bytes()[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            let free_data = words[4];
            page.bytes()[20..24].copy_from_slice(&(4096 - free_data).to_ne_bytes());
            agree(&mut page, &keys, 1_700_000_000);
        }
    }

    #[test]
    fn loads_at_every_alignment() {
        let mut page = Aligned::new(64);
        for (i, b) in page.bytes().iter_mut().enumerate() {
            *b = i as u8;
        }
        let atomic = page.atomic();
        for off in 0..64 {
            for len in 0..=64 - off {
                let mut out = Vec::new();
                atomic.copy_to(off, len, &mut out).expect("inside");
                let want: Vec<u8> = (off..off + len).map(|i| i as u8).collect();
                assert_eq!(out, want, "off {off} len {len}");
                assert_eq!(atomic.eq_at(off, &want), Some(true));
                // A difference in any byte is found (the short paths' loads overlap: each
                // byte must still be in one of them).
                for at in 0..len {
                    let mut other = want.clone();
                    other[at] ^= 1;
                    assert_eq!(
                        atomic.eq_at(off, &other),
                        Some(false),
                        "off {off} len {len}"
                    );
                }
                // After what the output already holds.
                let mut out = vec![0xAA; 3];
                atomic.copy_to(off, len, &mut out).expect("inside");
                assert_eq!(out[..3], [0xAA; 3]);
                assert_eq!(out[3..], want[..], "appended: off {off} len {len}");
            }
            assert_eq!(atomic.copy_to(off, 65 - off, &mut Vec::new()), None);
        }
        assert_eq!(atomic.u32_at(2), None, "misaligned");
        assert_eq!(atomic.u32_at(64), None, "outside");
        assert_eq!(atomic.words::<2>(60), None, "partly outside");
    }

    /// Long copies (the wide path) at every alignment of source and destination, around the
    /// length where the wide path starts, append after what the output already holds.
    #[test]
    fn wide_copies_at_every_alignment() {
        let mut page = Aligned::new(24 << 10);
        for (i, b) in page.bytes().iter_mut().enumerate() {
            *b = (i * 7 + i / 256) as u8;
        }
        let atomic = page.atomic();
        for off in 0..16 {
            for len in [63, 64, 65, 127, 128, 129, 200, 4096, 16383, 16384, 20000] {
                for prefix in [0usize, 1, 5] {
                    let mut out = vec![0xEE; prefix];
                    atomic.copy_to(off, len, &mut out).expect("inside");
                    let want: Vec<u8> = (off..off + len).map(|i| (i * 7 + i / 256) as u8).collect();
                    assert_eq!(&out[..prefix], &vec![0xEE; prefix][..]);
                    assert_eq!(&out[prefix..], &want[..], "off {off} len {len}");
                }
            }
        }
        let mut out = vec![1, 2];
        assert_eq!(atomic.copy_to(1, 24 << 10, &mut out), None, "past the end");
        assert_eq!(out, [1, 2], "untouched");
    }
}
