//! The checksum of an overflow value — xxh3-64, exactly as [`xxh3_64`] computes it — taken
//! while the value is copied into or out of its blocks.
//!
//! The value's bytes are checked on every read of a large value and summed on every write,
//! and xxhash-rust picks its vector width when it is compiled: SSE2 on a default x86-64 build,
//! where xxh3 of 1 MiB takes about as long as copying it. So on processors with AVX2 (found
//! at run time) the long-input part of xxh3 is done here with 256-bit vectors, in the same
//! pass as the copy: each 64-byte stripe is loaded once, stored to its destination and mixed
//! into the sum from the same registers. Elsewhere, and for values of at most 240 bytes (which
//! xxh3 hashes another way, and which never reach the overflow area), the copy is plain and
//! the sum is xxhash-rust's. Both give the same 64 bits; the tests check it.

#![allow(unsafe_code)]

use xxhash_rust::xxh3::{Xxh3, xxh3_64};

/// The longest input xxh3 hashes without its stripe loop.
const SHORT_MAX: usize = 240;

/// xxh3-64 of a value of a length known up front, fed in order in pieces, each piece copied
/// on the way (or only summed).
pub(crate) struct CopySum {
    inner: Inner,
}

enum Inner {
    /// xxhash-rust's own streaming state, the copy made apart.
    Plain(Box<Xxh3>),
    #[cfg(target_arch = "x86_64")]
    Wide(Box<wide::State>),
}

impl CopySum {
    /// A sum of a value of `len` bytes.
    pub(crate) fn new(len: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if wide(len) {
            return CopySum {
                inner: Inner::Wide(Box::new(wide::State::new(len))),
            };
        }
        Self::plain()
    }

    /// xxhash-rust's sum and a plain copy, whatever the processor.
    fn plain() -> Self {
        CopySum {
            inner: Inner::Plain(Box::new(Xxh3::new())),
        }
    }

    /// Copies `src` to `dst` (of the same length) and takes the bytes copied into the sum:
    /// the sum is of what `dst` received, even if `src` (shared memory) changes meanwhile.
    ///
    /// # Safety
    /// `dst` must be valid for reads and writes of `src.len()` bytes, not overlap `src`, and
    /// not be written by anyone else during the call.
    pub(crate) unsafe fn copy(&mut self, src: &[u8], dst: *mut u8) {
        match &mut self.inner {
            Inner::Plain(sum) => {
                // SAFETY: the caller's contract: `dst` takes `src.len()` bytes, apart from
                // `src`, and nobody else writes them while we read them back.
                unsafe {
                    std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len());
                    sum.update(std::slice::from_raw_parts(dst, src.len()));
                }
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Wide` exists only where AVX2 was found; the caller's contract on `dst`.
            Inner::Wide(state) => unsafe { state.feed::<true>(src, dst) },
        }
    }

    /// Appends `src` to `out` and takes the bytes copied into the sum.
    pub(crate) fn append(&mut self, out: &mut Vec<u8>, src: &[u8]) {
        let start = out.len();
        out.reserve(src.len());
        // SAFETY: after `reserve`, `out` has room for `src.len()` more bytes past its length,
        // which are ours alone and apart from `src` (a shared borrow that `out` cannot alias);
        // the length is set only once they are written.
        unsafe {
            self.copy(src, out.as_mut_ptr().add(start));
            out.set_len(start + src.len());
        }
    }

    /// Takes `bytes` into the sum.
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match &mut self.inner {
            Inner::Plain(sum) => sum.update(bytes),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Wide` exists only where AVX2 was found; nothing is written.
            Inner::Wide(state) => unsafe { state.feed::<false>(bytes, std::ptr::null_mut()) },
        }
    }

    /// The sum of the bytes fed so far (of the value, once all `len` bytes are in).
    pub(crate) fn finish(self) -> u64 {
        match self.inner {
            Inner::Plain(sum) => sum.digest(),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Wide` exists only where AVX2 was found.
            Inner::Wide(state) => unsafe { state.finish() },
        }
    }
}

/// Whether a value of `len` bytes is summed with 256-bit vectors here.
fn wide(len: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return len > SHORT_MAX && std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// xxh3-64 of `bytes`, with 256-bit vectors where the processor has them.
pub(crate) fn checksum(bytes: &[u8]) -> u64 {
    if !wide(bytes.len()) {
        return xxh3_64(bytes);
    }
    let mut sum = CopySum::new(bytes.len());
    sum.update(bytes);
    sum.finish()
}

#[cfg(target_arch = "x86_64")]
mod wide {
    use std::arch::x86_64::*;

    /// xxh3's default secret (the algorithm's constant: every xxh3 without a seed uses it),
    /// as xxhash-rust has it (seed 0 gives the default secret itself).
    const SECRET: [u8; 192] = xxhash_rust::const_xxh3::const_custom_default_secret(0);

    const STRIPE: usize = 64;
    /// Stripes between two scrambles of the accumulators: (192 - 64) / 8.
    const STRIPES_PER_BLOCK: u64 = 16;
    /// The bytes of those stripes.
    const BLOCK: usize = STRIPE * STRIPES_PER_BLOCK as usize;
    /// Where the scramble's, the last stripe's and the merge's secret words start.
    const SCRAMBLE_AT: usize = SECRET.len() - STRIPE;
    const LAST_STRIPE_AT: usize = SECRET.len() - STRIPE - 7;
    const MERGE_AT: usize = 11;
    const PRIME32_1: u64 = 0x9E37_79B1;
    const PRIME32_2: u64 = 0x85EB_CA77;
    const PRIME32_3: u64 = 0xC2B2_AE3D;
    const PRIME64_1: u64 = 0x9E37_79B1_85EB_CA87;
    const PRIME64_2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    const PRIME64_3: u64 = 0x1656_67B1_9E37_79F9;
    const PRIME64_4: u64 = 0x85EB_CA77_C2B2_AE63;
    const PRIME64_5: u64 = 0x27D4_EB2F_1656_67C5;

    fn u64_at(at: usize) -> u64 {
        let mut word = [0u8; 8];
        word.copy_from_slice(&SECRET[at..at + 8]);
        u64::from_le_bytes(word)
    }

    fn avalanche(mut h: u64) -> u64 {
        h ^= h >> 37;
        h = h.wrapping_mul(0x1656_6791_9E37_79F9);
        h ^ (h >> 32)
    }

    /// xxh3's end of a long input: the eight accumulators folded into one word.
    fn merge(acc: &[u64; 8], len: u64) -> u64 {
        let mut result = len.wrapping_mul(PRIME64_1);
        for i in 0..4 {
            let a = acc[2 * i] ^ u64_at(MERGE_AT + 16 * i);
            let b = acc[2 * i + 1] ^ u64_at(MERGE_AT + 16 * i + 8);
            let product = u128::from(a) * u128::from(b);
            result = result.wrapping_add((product as u64) ^ ((product >> 64) as u64));
        }
        avalanche(result)
    }

    /// The long-input state: eight 64-bit accumulators, how many stripes have been mixed in,
    /// how many of them the input's loop mixes (`(len - 1) / 64`: the last stripe, whole or
    /// not, is mixed in at the end from the value's last 64 bytes, kept in `last`), and a
    /// stripe split between two pieces.
    pub(super) struct State {
        acc: [u64; 8],
        len: u64,
        stripes: u64,
        loop_stripes: u64,
        carry: [u8; STRIPE],
        carried: usize,
        last: [u8; STRIPE],
    }

    impl State {
        pub(super) fn new(len: usize) -> Self {
            State {
                acc: [
                    PRIME32_3, PRIME64_1, PRIME64_2, PRIME64_3, PRIME64_4, PRIME32_2, PRIME64_5,
                    PRIME32_1,
                ],
                len: len as u64,
                stripes: 0,
                loop_stripes: (len as u64).saturating_sub(1) / STRIPE as u64,
                carry: [0; STRIPE],
                carried: 0,
                last: [0; STRIPE],
            }
        }

        /// Mixes in `src`, copying it to `dst` when `COPY`. Every byte is read from `src` once:
        /// what is summed is what `dst` receives.
        ///
        /// # Safety
        /// The processor has AVX2; when `COPY`, `dst` is valid for reads and writes of
        /// `src.len()` bytes, apart from `src`, and nobody else writes them during the call.
        #[target_feature(enable = "avx2")]
        pub(super) unsafe fn feed<const COPY: bool>(&mut self, src: &[u8], dst: *mut u8) {
            let n = src.len();
            // The piece's first bytes complete a stripe carried over from the last piece; then
            // come its whole stripes, then the start of one to carry over.
            let head = if self.carried > 0 {
                (STRIPE - self.carried).min(n)
            } else {
                0
            };
            let rest = head + (n - head) / STRIPE * STRIPE;
            if COPY {
                // SAFETY: both ranges lie inside the `n` bytes of `src` and of `dst`.
                unsafe {
                    std::ptr::copy_nonoverlapping(src.as_ptr(), dst, head);
                    std::ptr::copy_nonoverlapping(src.as_ptr().add(rest), dst.add(rest), n - rest);
                }
            }
            // The bytes outside whole stripes as summed: from the copy when there is one.
            let seen = |from: usize, to: usize| -> &[u8] {
                if COPY {
                    // SAFETY: `from..to` lies inside the `n` bytes of `dst`, written above (or
                    // by the loop below, for the last 64 bytes), and nobody else writes them.
                    unsafe { std::slice::from_raw_parts(dst.add(from), to - from) }
                } else {
                    &src[from..to]
                }
            };
            // SAFETY: `self.acc` holds 64 bytes; unaligned loads.
            let mut acc = unsafe {
                [
                    _mm256_loadu_si256(self.acc.as_ptr().cast()),
                    _mm256_loadu_si256(self.acc.as_ptr().add(4).cast()),
                ]
            };
            if head > 0 {
                self.carry[self.carried..self.carried + head].copy_from_slice(seen(0, head));
                self.carried += head;
                if self.carried == STRIPE {
                    self.carried = 0;
                    // SAFETY: `carry` holds 64 bytes; unaligned loads.
                    let data = unsafe { load(self.carry.as_ptr()) };
                    self.stripe(&mut acc, data);
                }
            }
            let mut at = head;
            // Whole blocks of 16 stripes at once, where the loop's next block lies in the piece.
            while self.stripes.is_multiple_of(STRIPES_PER_BLOCK)
                && self.stripes + STRIPES_PER_BLOCK <= self.loop_stripes
                && at + BLOCK <= rest
            {
                for k in 0..STRIPES_PER_BLOCK as usize {
                    // SAFETY: `at + 64 k + 64 <= at + BLOCK <= rest <= n`, inside `src`, and
                    // when `COPY` inside the `n` bytes `dst` takes; the secret's bytes
                    // `8 k .. + 64` lie inside its 192 (`k < 16`). Unaligned loads and stores.
                    unsafe {
                        let offset = at + k * STRIPE;
                        let data = load(src.as_ptr().add(offset));
                        if COPY {
                            _mm256_storeu_si256(dst.add(offset).cast(), data[0]);
                            _mm256_storeu_si256(dst.add(offset + 32).cast(), data[1]);
                        }
                        accumulate(&mut acc, data, load(SECRET.as_ptr().add(k * 8)));
                    }
                }
                scramble(&mut acc);
                self.stripes += STRIPES_PER_BLOCK;
                at += BLOCK;
            }
            while at < rest {
                // SAFETY: `at + 64 <= rest <= n`, inside `src`, and when `COPY` inside the `n`
                // bytes `dst` takes. Unaligned loads and stores.
                let data = unsafe {
                    let data = load(src.as_ptr().add(at));
                    if COPY {
                        _mm256_storeu_si256(dst.add(at).cast(), data[0]);
                        _mm256_storeu_si256(dst.add(at + 32).cast(), data[1]);
                    }
                    data
                };
                self.stripe(&mut acc, data);
                at += STRIPE;
            }
            if rest < n {
                self.carry[..n - rest].copy_from_slice(seen(rest, n));
                self.carried = n - rest;
            }
            // The value's last 64 bytes so far.
            let kept = STRIPE.saturating_sub(n);
            self.last.copy_within(STRIPE - kept.., 0);
            self.last[kept..].copy_from_slice(seen(n - (STRIPE - kept), n));
            // SAFETY: `self.acc` holds 64 bytes; unaligned stores.
            unsafe {
                _mm256_storeu_si256(self.acc.as_mut_ptr().cast(), acc[0]);
                _mm256_storeu_si256(self.acc.as_mut_ptr().add(4).cast(), acc[1]);
            }
        }

        /// Mixes a stripe into `acc` if it is one of the loop's.
        #[inline]
        #[target_feature(enable = "avx2")]
        fn stripe(&mut self, acc: &mut [__m256i; 2], data: [__m256i; 2]) {
            if self.stripes >= self.loop_stripes {
                return;
            }
            let in_block = (self.stripes % STRIPES_PER_BLOCK) as usize;
            // SAFETY: the secret's bytes `in_block * 8 .. + 64` lie inside its 192
            // (`in_block < 16`).
            let key = unsafe { load(SECRET.as_ptr().add(in_block * 8)) };
            accumulate(acc, data, key);
            self.stripes += 1;
            if in_block as u64 == STRIPES_PER_BLOCK - 1 {
                scramble(acc);
            }
        }

        /// The sum.
        ///
        /// # Safety
        /// The processor has AVX2.
        #[target_feature(enable = "avx2")]
        pub(super) unsafe fn finish(mut self) -> u64 {
            // SAFETY: `self.acc`, `self.last` and the secret's bytes 121..185 are readable for
            // 64 bytes each; unaligned loads and stores.
            unsafe {
                let mut acc = [
                    _mm256_loadu_si256(self.acc.as_ptr().cast()),
                    _mm256_loadu_si256(self.acc.as_ptr().add(4).cast()),
                ];
                let key = load(SECRET.as_ptr().add(LAST_STRIPE_AT));
                accumulate(&mut acc, load(self.last.as_ptr()), key);
                _mm256_storeu_si256(self.acc.as_mut_ptr().cast(), acc[0]);
                _mm256_storeu_si256(self.acc.as_mut_ptr().add(4).cast(), acc[1]);
            }
            merge(&self.acc, self.len)
        }
    }

    /// The 64 bytes at `p` as two vectors.
    ///
    /// # Safety
    /// The processor has AVX2; `p` is readable for 64 bytes.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load(p: *const u8) -> [__m256i; 2] {
        // SAFETY: the caller's contract; unaligned loads.
        unsafe {
            [
                _mm256_loadu_si256(p.cast()),
                _mm256_loadu_si256(p.add(32).cast()),
            ]
        }
    }

    /// xxh3's stripe step on four lanes at a time: each lane adds its neighbour's input word
    /// and the product of the low and high halves of its input word xored with the secret.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn accumulate(acc: &mut [__m256i; 2], data: [__m256i; 2], key: [__m256i; 2]) {
        for i in 0..2 {
            let data_key = _mm256_xor_si256(data[i], key[i]);
            let high = _mm256_srli_epi64::<32>(data_key);
            let product = _mm256_mul_epu32(data_key, high);
            let swapped = _mm256_shuffle_epi32::<0b01_00_11_10>(data[i]);
            acc[i] = _mm256_add_epi64(product, _mm256_add_epi64(acc[i], swapped));
        }
    }

    /// xxh3's scramble of the accumulators, between blocks of 16 stripes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn scramble(acc: &mut [__m256i; 2]) {
        let prime = _mm256_set1_epi32(PRIME32_1 as i32);
        for (i, lane) in acc.iter_mut().enumerate() {
            // SAFETY: bytes 128 + 32 i .. + 32 of the 192-byte secret.
            let key =
                unsafe { _mm256_loadu_si256(SECRET.as_ptr().add(SCRAMBLE_AT + 32 * i).cast()) };
            let shifted = _mm256_srli_epi64::<47>(*lane);
            let mixed = _mm256_xor_si256(_mm256_xor_si256(*lane, shifted), key);
            let hi = _mm256_srli_epi64::<32>(mixed);
            let lo_product = _mm256_mul_epu32(mixed, prime);
            let hi_product = _mm256_mul_epu32(hi, prime);
            *lane = _mm256_add_epi64(lo_product, _mm256_slli_epi64::<32>(hi_product));
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Bytes that are not a repeating pattern, so a misplaced stripe changes the sum.
    fn bytes(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    /// Feeds `value` to `sum` in pieces of `piece` bytes, copying each, and checks the copy.
    fn copied_in_pieces(mut sum: CopySum, value: &[u8], piece: usize) -> u64 {
        let mut out = Vec::new();
        for chunk in value.chunks(piece) {
            sum.append(&mut out, chunk);
        }
        assert_eq!(out, value, "the copy");
        sum.finish()
    }

    #[test]
    fn the_sum_is_xxh3_64_at_every_length_and_split() {
        let all = bytes((1 << 20) + 777);
        let lengths = (0..2_100).chain([
            4_095,
            4_096,
            4_097,
            8_192,
            65_536,
            65_537,
            1 << 20,
            (1 << 20) + 777,
        ]);
        for len in lengths {
            let value = &all[..len];
            let want = xxh3_64(value);
            assert_eq!(checksum(value), want, "{len} bytes at once");
            let pieces: &[usize] = if len < 2_100 {
                &[1, 63, 64, 65, 4_096]
            } else {
                &[64, 1_000, 1_024, 4_096]
            };
            for &piece in pieces {
                assert_eq!(
                    copied_in_pieces(CopySum::new(len), value, piece),
                    want,
                    "{len} bytes in pieces of {piece}"
                );
                assert_eq!(
                    copied_in_pieces(CopySum::plain(), value, piece),
                    want,
                    "{len} bytes in pieces of {piece}, plain"
                );
                let mut sum = CopySum::new(len);
                value.chunks(piece).for_each(|c| sum.update(c));
                assert_eq!(
                    sum.finish(),
                    want,
                    "{len} bytes summed in pieces of {piece}"
                );
            }
        }
    }

    proptest! {
        /// Pieces of any sizes, copied or only summed, in any mix: the same sum as one call
        /// of xxhash-rust, and the copy exact.
        #[test]
        fn any_split_gives_xxh3_64(
            len in 0usize..20_000,
            cuts in proptest::collection::vec((1usize..5_000, any::<bool>()), 1..12),
        ) {
            let value = bytes(len);
            let mut sum = CopySum::new(len);
            let mut out = Vec::new();
            let (mut at, mut i) = (0, 0);
            while at < len {
                let (size, copy) = cuts[i % cuts.len()];
                let piece = &value[at..(at + size).min(len)];
                if copy {
                    sum.append(&mut out, piece);
                } else {
                    sum.update(piece);
                    out.extend_from_slice(piece);
                }
                at += piece.len();
                i += 1;
            }
            prop_assert_eq!(&out, &value);
            prop_assert_eq!(sum.finish(), xxh3_64(&value));
        }
    }

    #[test]
    fn the_wide_path_runs_where_the_processor_has_avx2() {
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            matches!(CopySum::new(SHORT_MAX + 1).inner, Inner::Wide(_)),
            std::arch::is_x86_feature_detected!("avx2")
        );
        assert!(matches!(CopySum::new(SHORT_MAX).inner, Inner::Plain(_)));
    }
}
