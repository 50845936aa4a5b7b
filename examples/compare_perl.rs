//! The Rust half of `benches/compare_perl.sh`: fastmmap on the workload that
//! `benches/compare_perl.pl` runs through Perl's Cache::FastMmap. Keep the two workload
//! definitions identical.
//!
//! ```text
//! cargo run --release --example compare_perl -- --file PATH [--layout fastmmap|native]
//!     [--lock fcntl|robust] [--keys N] [--ops N] [--runs N]
//! ```
//!
//! The layout is `fastmmap` (Cache::FastMmap's file format, hash and locks: the same work Perl
//! does) unless `--layout native` is given; the page locks are fcntl locks (as Perl's) unless
//! `--lock robust` is given (native layout only). `PATH` must not exist: the cache is created fresh,
//! with the default geometry (89 pages × 64 KiB, as Perl's). Prints, one per line:
//!
//! ```text
//! geometry NUM_PAGES PAGE_SIZE
//! workload KEYS OPS SEQUENCE_SUM      (the script checks both halves agree)
//! result WORKLOAD BEST_NS_PER_OP MEDIAN_NS_PER_OP
//! ```

use std::error::Error;
use std::hint::black_box;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use fastmmap::{Cache, Layout, LockKind};

struct Options {
    file: PathBuf,
    layout: Layout,
    lock: LockKind,
    keys: usize,
    ops: usize,
    runs: usize,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        file: PathBuf::new(),
        layout: Layout::FastMmap,
        lock: LockKind::Fcntl,
        keys: 10_000,
        ops: 100_000,
        runs: 5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--file" => o.file = PathBuf::from(&value),
            "--layout" => {
                o.layout = match value.as_str() {
                    "fastmmap" => Layout::FastMmap,
                    "native" => Layout::Native,
                    _ => return Err(format!("--layout: fastmmap or native, not {value}")),
                }
            }
            "--lock" => {
                o.lock = match value.as_str() {
                    "fcntl" => LockKind::Fcntl,
                    "robust" => LockKind::Robust,
                    _ => return Err(format!("--lock: fcntl or robust, not {value}")),
                }
            }
            "--keys" => o.keys = number()?,
            "--ops" => o.ops = number()?,
            "--runs" => o.runs = number()?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if o.file.as_os_str().is_empty() {
        return Err("--file is required".into());
    }
    if o.keys == 0 || o.ops == 0 || o.runs == 0 {
        return Err("--keys, --ops and --runs must be positive".into());
    }
    Ok(o)
}

/// The workload (the same in compare_perl.pl). Keys: `k` and nine digits (10 bytes); misses:
/// `m` and nine digits, never stored. Values: 100 bytes, byte `j` of key `i`'s value is
/// `(31 i + j) mod 256`. Operation `k` uses key index `idx[k]` from the LCG
/// `x = (1103515245 x + 12345) mod 2^31`, `x0 = 1`, `idx = x mod keys`. `get_half_miss`
/// alternates: even `k` hits, odd `k` misses.
struct Workload {
    keys: Vec<Vec<u8>>,
    values: Vec<Vec<u8>>,
    hit_keys: Vec<usize>,
    half_keys: Vec<Vec<u8>>,
    sequence_sum: u64,
}

impl Workload {
    fn new(n_keys: usize, ops: usize) -> Workload {
        let keys: Vec<Vec<u8>> = (0..n_keys)
            .map(|i| format!("k{i:09}").into_bytes())
            .collect();
        let values = (0..n_keys)
            .map(|i| (0..100).map(|j| ((31 * i + j) % 256) as u8).collect())
            .collect();
        let mut x: u64 = 1;
        let hit_keys: Vec<usize> = (0..ops)
            .map(|_| {
                x = (x * 1_103_515_245 + 12_345) % (1 << 31);
                (x % n_keys as u64) as usize
            })
            .collect();
        let half_keys = hit_keys
            .iter()
            .enumerate()
            .map(|(k, &i)| match k % 2 {
                0 => keys[i].clone(),
                _ => format!("m{i:09}").into_bytes(),
            })
            .collect();
        let sequence_sum = hit_keys.iter().map(|&i| i as u64).sum();
        Workload {
            keys,
            values,
            hit_keys,
            half_keys,
            sequence_sum,
        }
    }

    /// Runs one workload; returns how many operations found (or stored) something.
    fn run(&self, cache: &Cache, which: &str) -> Result<usize, fastmmap::Error> {
        let mut n = 0;
        match which {
            "get_hit" => {
                for &i in &self.hit_keys {
                    n += usize::from(black_box(cache.get(&self.keys[i])?).is_some());
                }
            }
            "get_half_miss" => {
                for key in &self.half_keys {
                    n += usize::from(black_box(cache.get(key)?).is_some());
                }
            }
            "set_overwrite" => {
                for &i in &self.hit_keys {
                    n += usize::from(cache.set(&self.keys[i], &self.values[i])?);
                }
            }
            _ => unreachable!("unknown workload {which}"),
        }
        Ok(n)
    }
}

const ORDER: [&str; 3] = ["get_hit", "get_half_miss", "set_overwrite"];

fn bench(o: &Options) -> Result<(), Box<dyn Error>> {
    if o.file.exists() {
        return Err(format!("{} exists; give a fresh path", o.file.display()).into());
    }
    let w = Workload::new(o.keys, o.ops);
    let cache = Cache::builder()
        .path(&o.file)
        .layout(o.layout)
        .lock_kind(o.lock)
        .open()?;
    println!("geometry {} {}", cache.num_pages(), cache.page_size());
    println!("workload {} {} {}", o.keys, o.ops, w.sequence_sum);
    for (key, value) in w.keys.iter().zip(&w.values) {
        if !cache.set(key, value)? {
            return Err("prefill: store refused".into());
        }
    }
    // Warm-up (and a check that the workload does what it says), then the runs, interleaved.
    for which in ORDER {
        let expect = if which == "get_half_miss" {
            o.ops.div_ceil(2)
        } else {
            o.ops
        };
        let n = w.run(&cache, which)?;
        if n != expect {
            return Err(format!(
                "{which}: {n} of {} operations hit, expected {expect}",
                o.ops
            )
            .into());
        }
    }
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); ORDER.len()];
    for _ in 0..o.runs {
        for (which, times) in ORDER.iter().zip(&mut ns) {
            let t0 = Instant::now();
            w.run(&cache, which)?;
            times.push(t0.elapsed().as_nanos() as f64 / o.ops as f64);
        }
    }
    for (which, mut times) in ORDER.iter().zip(ns) {
        times.sort_by(f64::total_cmp);
        println!(
            "result {which} {:.0} {:.0}",
            times[0],
            times[(times.len() - 1) / 2]
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let result = parse_args().map_err(Into::into).and_then(|o| bench(&o));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare_perl: {e}");
            ExitCode::FAILURE
        }
    }
}
