//! Deterministic request traces for the hit-ratio bench: a trace is a sequence of key ids, the
//! same for every policy, generated from a seed.
//!
//! Key ids are plain `u64`s. Hot or reused keys are small numbers; keys that are requested
//! once (scan and flood keys, a block trace's cold reads) start at [`ONE_HIT_BASE`] and are
//! never reused, so the two families never collide.

/// First id of the keys that a trace requests only once.
pub const ONE_HIT_BASE: u64 = 1 << 40;

/// A small, fast, seedable generator (SplitMix64): good enough for workloads, and the same
/// on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `0..n` (`n > 0`; the bias of the multiply-shift is below 2⁻³²
    /// for the sizes used here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// `0..n` in a pseudo-random order (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, self.below(i as u64 + 1) as usize);
        }
        order
    }
}

/// Zipf's law over the ranks `1..=n` with exponent `s > 0`: P(k) ∝ k^-s. An exact sampler by
/// rejection-inversion (W. Hörmann and G. Derflinger, "Rejection-inversion to generate
/// variates from monotone discrete distributions", 1996), as Apache Commons RNG has it:
/// O(1) time per sample and memory, whatever `n`.
#[derive(Clone, Debug)]
pub struct Zipf {
    n: u64,
    s: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    squeeze: f64,
}

impl Zipf {
    /// Zipf over `1..=n` with exponent `s`.
    ///
    /// # Panics
    /// If `n` is 0 or `s` is not a positive finite number.
    pub fn new(n: u64, s: f64) -> Zipf {
        assert!(n > 0, "Zipf over no keys");
        assert!(
            s.is_finite() && s > 0.0,
            "Zipf exponent {s} is not positive"
        );
        let mut z = Zipf {
            n,
            s,
            h_integral_x1: 0.0,
            h_integral_n: 0.0,
            squeeze: 0.0,
        };
        z.h_integral_x1 = z.h_integral(1.5) - 1.0;
        z.h_integral_n = z.h_integral(n as f64 + 0.5);
        z.squeeze = 2.0 - z.h_integral_inverse(z.h_integral(2.5) - z.h(2.0));
        z
    }

    /// One rank in `1..=n`; rank 1 is the most frequent.
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        loop {
            let u = self.h_integral_n + rng.next_f64() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let k = ((x + 0.5) as u64).clamp(1, self.n);
            let kf = k as f64;
            if kf - x <= self.squeeze || u >= self.h_integral(kf + 0.5) - self.h(kf) {
                return k;
            }
        }
    }

    /// The probability of rank `k`, computed exactly (O(n); for tests).
    pub fn probability(&self, k: u64) -> f64 {
        let norm: f64 = (1..=self.n).map(|i| (i as f64).powf(-self.s)).sum();
        (k as f64).powf(-self.s) / norm
    }

    fn h(&self, x: f64) -> f64 {
        (-self.s * x.ln()).exp()
    }

    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        helper2((1.0 - self.s) * log_x) * log_x
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.s)).max(-1.0);
        (helper1(t) * x).exp()
    }
}

/// `ln(1 + x) / x`, accurate near 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// `(e^x - 1) / x`, accurate near 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x))
    }
}

/// A trace: the keys in request order, and the keys whose survival is reported at the end
/// (the sessions of [`flood`]; empty for the other traces).
#[derive(Clone, Debug)]
pub struct Trace {
    /// Key ids in request order.
    pub keys: Vec<u64>,
    /// Keys to look for in each cache once the trace is over.
    pub watched: Vec<u64>,
    /// Whether requests for one-hit keys (ids from [`ONE_HIT_BASE`]) count in the hit ratio.
    /// `false` for the scans and the flood: those keys can never hit, so the ratio is that
    /// of the reused keys (the Zipf requests, the sessions), as issue 21 measured it.
    pub count_one_hit: bool,
}

impl Trace {
    /// Whether a request for `key` counts in the hit ratio.
    pub fn counts(&self, key: u64) -> bool {
        self.count_one_hit || key < ONE_HIT_BASE
    }
}

/// `len` requests drawn from Zipf(`s`) over `n` keys (ids `0..n`, id 0 the hottest).
pub fn zipf(n: u64, s: f64, len: usize, seed: u64) -> Trace {
    let z = Zipf::new(n, s);
    let mut rng = Rng::new(seed);
    Trace {
        keys: (0..len).map(|_| z.sample(&mut rng) - 1).collect(),
        watched: Vec::new(),
        count_one_hit: true,
    }
}

/// Zipf(`s`) over `n` keys, interrupted after every `period` Zipf requests by a scan of
/// `scan_len` keys never seen before nor after (a backup, a crawler, a report). `len` Zipf
/// requests in all, plus the scans.
pub fn zipf_with_scans(
    n: u64,
    s: f64,
    len: usize,
    period: usize,
    scan_len: usize,
    seed: u64,
) -> Trace {
    let z = Zipf::new(n, s);
    let mut rng = Rng::new(seed);
    let mut keys = Vec::with_capacity(len + len / period.max(1) * scan_len);
    let mut next_one_hit = ONE_HIT_BASE;
    for i in 0..len {
        if i > 0 && i % period.max(1) == 0 {
            keys.extend(next_one_hit..next_one_hit + scan_len as u64);
            next_one_hit += scan_len as u64;
        }
        keys.push(z.sample(&mut rng) - 1);
    }
    Trace {
        keys,
        watched: Vec::new(),
        count_one_hit: false,
    }
}

/// Sessions in a flood: `sessions` session keys (ids `0..sessions`) revisited at random
/// among `flood_per_visit` times as many one-hit keys (anonymous visitors, bots). Each request
/// is a session (chosen uniformly) with probability `1 / (1 + flood_per_visit)`, else a new
/// one-hit key. The sessions are the trace's watched keys.
pub fn flood(sessions: u64, flood_per_visit: u64, len: usize, seed: u64) -> Trace {
    let mut rng = Rng::new(seed);
    let mut next_one_hit = ONE_HIT_BASE;
    let keys = (0..len)
        .map(|_| {
            if rng.below(1 + flood_per_visit) == 0 {
                rng.below(sessions)
            } else {
                next_one_hit += 1;
                next_one_hit - 1
            }
        })
        .collect();
    Trace {
        keys,
        watched: (0..sessions).collect(),
        count_one_hit: false,
    }
}

/// A loop: keys `0..loop_len` requested in order, over and over, `len` requests in all (a
/// job that walks a table a little larger than the cache).
pub fn loop_trace(loop_len: u64, len: usize) -> Trace {
    Trace {
        keys: (0..len as u64).map(|i| i % loop_len.max(1)).collect(),
        watched: Vec::new(),
        count_one_hit: true,
    }
}

/// A synthetic block-I/O trace, built to look like a virtual disk's (keys are block numbers):
/// a mixture of events, each chosen at random —
/// - 96%: one read of a hot block, Zipf(0.9) over 200,000 blocks (a database's index and
///   hot rows);
/// - 2.5%: a sequential run of 8–64 consecutive blocks starting anywhere on a cold area of
///   2⁴⁰ blocks (a file copied or read once: one-hit);
/// - 1.5%: the next 64 blocks of one of 16 files of 2,000 blocks each, read in order and
///   wrapping around (loops: a table scanned again and again).
///
/// By requests that is about a third each: hot reads, one-hit runs and loops. Not a recorded
/// trace: the recorded one is replayed through [`recorded`] when its file is there (see
/// compare/README.md).
pub fn block_io(len: usize, seed: u64) -> Trace {
    const HOT_BLOCKS: u64 = 200_000;
    const FILES: u64 = 16;
    const FILE_BLOCKS: u64 = 2_000;
    const FILE_CHUNK: u64 = 64;
    const FILES_BASE: u64 = 1 << 30;
    let hot = Zipf::new(HOT_BLOCKS, 0.9);
    let mut rng = Rng::new(seed);
    let mut cursors = [0u64; FILES as usize];
    let mut keys = Vec::with_capacity(len);
    while keys.len() < len {
        let event = rng.next_f64();
        if event < 0.96 {
            keys.push(hot.sample(&mut rng) - 1);
        } else if event < 0.985 {
            let start = ONE_HIT_BASE + rng.below(ONE_HIT_BASE);
            let run = 8 + rng.below(57);
            keys.extend(start..start + run);
        } else {
            let file = rng.below(FILES);
            let cursor = &mut cursors[file as usize];
            for _ in 0..FILE_CHUNK {
                keys.push(FILES_BASE + file * FILE_BLOCKS + *cursor);
                *cursor = (*cursor + 1) % FILE_BLOCKS;
            }
        }
    }
    keys.truncate(len);
    Trace {
        keys,
        watched: Vec::new(),
        count_one_hit: true,
    }
}

/// A recorded trace in the plain form libCacheSim's sample traces have
/// (`data/cloudPhysicsIO.txt`): one key per line, a whole number, blank lines and lines
/// starting with `#` skipped. Every request counts in the hit ratio. An error names the first
/// line that is not a key, or says the text holds none.
pub fn recorded(text: &str) -> Result<Trace, String> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line
            .parse::<u64>()
            .map_err(|e| format!("line {}: {line:?} is not a key ({e})", n + 1))?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err("no keys".to_owned());
    }
    Ok(Trace {
        keys,
        watched: Vec::new(),
        count_one_hit: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn a_recorded_trace_is_read_line_by_line() {
        let t = recorded("42932745\n# a comment\n\n  7 \n42932745\n").expect("three keys");
        assert_eq!(t.keys, [42932745, 7, 42932745]);
        assert!(t.counts(7) && t.counts(ONE_HIT_BASE) && t.watched.is_empty());
        let e = recorded("1\n2\nblock 3\n").expect_err("not a key");
        assert!(e.starts_with("line 3: \"block 3\""), "{e}");
        assert_eq!(recorded("# nothing\n").expect_err("empty"), "no keys");
    }

    #[test]
    fn rng_is_deterministic_and_uniform() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..10).map(|_| r.next_u64()).collect()
        };
        let mut r = Rng::new(7);
        assert!(a.iter().all(|&x| x == r.next_u64()));
        let mut r = Rng::new(1);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[r.below(10) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
        assert!((0..1000).all(|_| (0.0..1.0).contains(&r.next_f64())));
    }

    /// The sampled frequencies of the first ranks match the exact probabilities, for an
    /// exponent below, at and above 1 (where the sampler's helpers switch formulas).
    #[test]
    fn zipf_matches_its_distribution() {
        for s in [0.5, 0.8, 0.99, 1.0, 1.2] {
            let n = 1000;
            let z = Zipf::new(n, s);
            let mut rng = Rng::new(42);
            let draws = 400_000;
            let mut counts = vec![0u32; n as usize + 1];
            for _ in 0..draws {
                let k = z.sample(&mut rng);
                assert!((1..=n).contains(&k), "rank {k} out of 1..={n}");
                counts[k as usize] += 1;
            }
            for k in [1, 2, 3, 10, 100] {
                let expected = z.probability(k) * f64::from(draws);
                let got = f64::from(counts[k as usize]);
                // 5 standard deviations of a binomial count, plus 1% for the float sums.
                let tolerance = 5.0 * expected.sqrt() + 0.01 * expected;
                assert!(
                    (got - expected).abs() < tolerance,
                    "s={s} rank {k}: {got} draws, expected {expected:.0}"
                );
            }
        }
    }

    #[test]
    fn zipf_over_one_key_and_huge_key_spaces() {
        let mut rng = Rng::new(3);
        assert!((0..100).all(|_| Zipf::new(1, 0.99).sample(&mut rng) == 1));
        let z = Zipf::new(u64::from(u32::MAX) * 4, 0.99);
        assert!((0..1000).all(|_| (1..=u64::from(u32::MAX) * 4).contains(&z.sample(&mut rng))));
    }

    #[test]
    fn traces_are_deterministic_per_seed() {
        assert_eq!(zipf(1000, 0.99, 500, 1).keys, zipf(1000, 0.99, 500, 1).keys);
        assert_ne!(zipf(1000, 0.99, 500, 1).keys, zipf(1000, 0.99, 500, 2).keys);
        assert_eq!(block_io(5000, 9).keys, block_io(5000, 9).keys);
    }

    #[test]
    fn scans_are_one_hit_and_periodic() {
        let t = zipf_with_scans(100, 0.99, 1000, 100, 50, 5);
        assert_eq!(t.keys.len(), 1000 + 9 * 50);
        let scan: Vec<u64> = t
            .keys
            .iter()
            .copied()
            .filter(|&k| k >= ONE_HIT_BASE)
            .collect();
        assert_eq!(scan.len(), 9 * 50);
        assert_eq!(scan.iter().collect::<HashSet<_>>().len(), scan.len());
        // The first scan comes right after the first 100 Zipf requests.
        assert!(t.keys[..100].iter().all(|&k| k < 100));
        assert!(t.keys[100..150].iter().all(|&k| k >= ONE_HIT_BASE));
    }

    #[test]
    fn flood_mixes_sessions_into_one_hit_keys() {
        let t = flood(100, 10, 110_000, 8);
        let sessions = t.keys.iter().filter(|&&k| k < 100).count();
        // About 1 request in 11 is a session.
        assert!(
            (9_000..11_000).contains(&sessions),
            "{sessions} session requests"
        );
        let others: Vec<u64> = t.keys.iter().copied().filter(|&k| k >= 100).collect();
        assert_eq!(others.iter().collect::<HashSet<_>>().len(), others.len());
        assert_eq!(t.watched, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn loop_and_block_traces_have_their_shape() {
        assert_eq!(loop_trace(3, 7).keys, vec![0, 1, 2, 0, 1, 2, 0]);
        let t = block_io(200_000, 4);
        assert_eq!(t.keys.len(), 200_000);
        let hot = t.keys.iter().filter(|&&k| k < 200_000).count() as f64 / 200_000.0;
        let loops = t
            .keys
            .iter()
            .filter(|&&k| (1 << 30..ONE_HIT_BASE).contains(&k))
            .count() as f64
            / 200_000.0;
        assert!((0.2..0.4).contains(&hot), "hot share {hot}");
        assert!((0.25..0.45).contains(&loops), "loop share {loops}");
    }
}
