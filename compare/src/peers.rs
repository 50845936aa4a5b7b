//! The `peers` speed benchmark's inputs: keys, values and access orders shared by every store,
//! the fastmmap geometry for each value size, and a private `redis-server` on loopback.
//!
//! Every store in a case sees the same key bytes, the same values and the same order of
//! access, so the ratios between them within one run mean something.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::traces::Rng;

/// One value size of the benchmark and how many keys it is run with.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    /// Short name used in bench ids: `16B`, `4KiB`, …
    pub name: &'static str,
    /// Bytes in every value.
    pub value_len: usize,
    /// Distinct keys: fewer for large values so each store holds about 20 MiB at most.
    pub keys: usize,
}

/// The value sizes compared, with their key counts: 20,000 keys of 16 bytes, and about
/// 20 MiB of values per store for the larger sizes.
pub const SIZES: [Size; 4] = [
    Size {
        name: "16B",
        value_len: 16,
        keys: 20_000,
    },
    Size {
        name: "4KiB",
        value_len: 4 << 10,
        keys: 5_000,
    },
    Size {
        name: "64KiB",
        value_len: 64 << 10,
        keys: 320,
    },
    Size {
        name: "1MiB",
        value_len: 1 << 20,
        keys: 20,
    },
];

/// The key `i`: `k` and `i` in decimal, padded with letters to a length of 10 to 16 bytes
/// drawn from `rng`. Distinct for distinct `i`.
fn key(i: usize, rng: &mut Rng) -> Vec<u8> {
    let len = 10 + rng.below(7) as usize;
    let mut k = format!("k{i}:").into_bytes();
    while k.len() < len {
        k.push(b'a' + rng.below(26) as u8);
    }
    k
}

/// A value of `len` bytes that differs from key to key (`seed`) and is not all one byte.
fn value(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(131).wrapping_add(i.wrapping_mul(7)) >> 1) as u8)
        .collect()
}

/// The data of one value size: keys, values, and the two access orders.
#[derive(Debug)]
pub struct Workload {
    /// The size this workload is for.
    pub size: Size,
    /// Key `i`, allocated in index order (so neighbouring keys are neighbours in memory).
    pub keys: Vec<Vec<u8>>,
    /// Value `i`, stored under key `i`.
    pub values: Vec<Vec<u8>>,
    /// A second value per key, of the same size, written by the overwrite benches.
    pub other_values: Vec<Vec<u8>>,
    /// The same key bytes again, each allocated separately in a shuffled order, so that
    /// visiting them through [`Workload::permutation`] touches memory at random.
    pub scattered_keys: Vec<Vec<u8>>,
    /// The random visiting order of the `random` cases.
    pub permutation: Vec<usize>,
}

/// How the keys are visited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Keys laid out in memory in the order they are visited: 0, 1, 2, …
    Visiting,
    /// Keys allocated separately in a shuffled order and visited through a random permutation:
    /// each key's bytes are a cache miss too, as in a server looking up keys it just parsed.
    Random,
}

impl Order {
    /// Both orders.
    pub const ALL: [Order; 2] = [Order::Visiting, Order::Random];

    /// Short name used in bench ids.
    pub fn name(self) -> &'static str {
        match self {
            Order::Visiting => "visit",
            Order::Random => "random",
        }
    }
}

impl Workload {
    /// The workload of `size`, the same on every run.
    pub fn new(size: Size) -> Workload {
        let mut rng = Rng::new(0x5eed_0000 ^ size.value_len as u64);
        let keys: Vec<Vec<u8>> = (0..size.keys).map(|i| key(i, &mut rng)).collect();
        let values = (0..size.keys).map(|i| value(size.value_len, i)).collect();
        let other_values = (0..size.keys)
            .map(|i| value(size.value_len, i + size.keys))
            .collect();
        let mut slots: Vec<Option<Vec<u8>>> = vec![None; size.keys];
        for i in rng.permutation(size.keys) {
            slots[i] = Some(keys[i].clone());
        }
        let scattered_keys = slots.into_iter().map(|k| k.expect("every slot")).collect();
        let permutation = rng.permutation(size.keys);
        Workload {
            size,
            keys,
            values,
            other_values,
            scattered_keys,
            permutation,
        }
    }

    /// The visits of `order`: each a key's bytes and its index (to find its values).
    pub fn visits(&self, order: Order) -> Vec<(&[u8], usize)> {
        match order {
            Order::Visiting => self
                .keys
                .iter()
                .enumerate()
                .map(|(i, k)| (&k[..], i))
                .collect(),
            Order::Random => self
                .permutation
                .iter()
                .map(|&i| (&self.scattered_keys[i][..], i))
                .collect(),
        }
    }
}

/// The largest page the benchmark gives fastmmap: the page is the unit of locking and of
/// eviction, so a user would not make it much larger to fit one value.
pub const MAX_PAGE_SIZE: u32 = 1 << 20;

/// The fastmmap geometry for `size`: the default 64 KiB page where at least 8 values fit,
/// else the smallest power of two holding 8 capped at [`MAX_PAGE_SIZE`]; and enough pages
/// that they are about a quarter full (hashing fills some pages well above the mean, and a
/// full page evicts), at least the default 89. Values too large for a page of
/// [`MAX_PAGE_SIZE`] (1 MiB) get the default geometry and an overflow area
/// ([`overflow_size`]).
pub fn geometry(size: Size) -> (u32, u32) {
    if overflow_size(size).is_some() {
        return (64 << 10, 89);
    }
    let entry = 24 + 16 + size.value_len.next_multiple_of(4);
    let page_size = (8 * entry)
        .next_power_of_two()
        .clamp(64 << 10, MAX_PAGE_SIZE as usize);
    let pages = (4 * size.keys * entry).div_ceil(page_size).max(89);
    (page_size as u32, pages as u32)
}

/// The overflow area fastmmap gets for `size`, when its values do not fit a page of
/// [`MAX_PAGE_SIZE`]: room for every value twice over (a replace writes the new value before it
/// frees the old one), in 4 KiB blocks.
pub fn overflow_size(size: Size) -> Option<u64> {
    let entry = 24 + 16 + size.value_len.next_multiple_of(4);
    (entry + 32 + 4 * 89 > MAX_PAGE_SIZE as usize)
        .then(|| 2 * size.keys as u64 * size.value_len.next_multiple_of(4096) as u64)
}

/// A `redis-server` of our own on a free loopback port, with its data in a temp dir, no
/// snapshots and no append-only file. Killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    /// `redis://127.0.0.1:PORT/`
    pub url: String,
}

impl RedisServer {
    /// Starts one in `dir`, waiting up to `timeout` for it to answer. `Err` says why not
    /// (no `redis-server` on the PATH, or it did not come up).
    pub fn start(dir: &Path, timeout: Duration) -> Result<RedisServer, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free loopback port: {e}"))?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        let server = RedisServer {
            child,
            url: format!("redis://127.0.0.1:{port}/"),
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > timeout {
                return Err(format!(
                    "redis-server on port {port} did not answer within {timeout:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(server)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_and_of_10_to_16_bytes() {
        let w = Workload::new(SIZES[0]);
        let set: std::collections::HashSet<_> = w.keys.iter().collect();
        assert_eq!(set.len(), w.keys.len());
        assert!(w.keys.iter().all(|k| (10..=16).contains(&k.len())));
        assert_eq!(w.keys, w.scattered_keys);
    }

    #[test]
    fn both_orders_visit_every_key_once() {
        let w = Workload::new(SIZES[1]);
        for order in Order::ALL {
            let mut seen: Vec<usize> = w
                .visits(order)
                .iter()
                .map(|&(k, i)| {
                    assert_eq!(k, &w.keys[i][..]);
                    i
                })
                .collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..w.keys.len()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn pages_fit_all_but_the_largest_values_which_get_an_overflow_area() {
        assert_eq!(geometry(SIZES[0]), (64 << 10, 89));
        assert_eq!(geometry(SIZES[1]).0, 64 << 10);
        assert_eq!(geometry(SIZES[2]).0, MAX_PAGE_SIZE);
        assert!(SIZES[..3].iter().all(|&s| overflow_size(s).is_none()));
        // 1 MiB values: the default pages, and an area holding every value twice.
        assert_eq!(geometry(SIZES[3]), (64 << 10, 89));
        let area = overflow_size(SIZES[3]).expect("an overflow area");
        assert!(area >= 2 * SIZES[3].keys as u64 * SIZES[3].value_len as u64);
    }
}
