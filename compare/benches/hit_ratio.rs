//! Hit ratio of fastmmap beside an exact LRU, moka, quick_cache and Bélády's optimum, on the
//! same traces (see `compare/README.md`, "Hit ratio").
//!
//! `cargo bench --manifest-path compare/Cargo.toml --bench hit_ratio` replays the full-size
//! traces and prints markdown tables; without `--bench` (`cargo test --benches`) it replays
//! small versions in seconds and checks that every result is sane.

use std::collections::BTreeMap;
use std::time::Instant;

use fastmmap::LockKind;
use fastmmap_compare::policies::{
    Belady, ENTRY_SIZE, FastMmap, FastMmapConfig, Lru, Moka, Policy, QuickCache, Replay, replay,
};
use fastmmap_compare::traces::{self, Trace};

/// Share of each trace replayed before hits are counted.
const WARMUP: f64 = 0.2;
/// Requests per second of fastmmap's clock, unless `HIT_RATIO_RPS` says otherwise.
const DEFAULT_RPS: u64 = 1_000;

/// One row of the results: a trace, the capacity the filer of issue 21 gave every cache, and
/// the fastmmap geometry (derived from that capacity unless given).
struct Case {
    name: String,
    trace: Trace,
    nominal: usize,
    pages: Option<u32>,
}

/// How full fastmmap's file gets, from a fill with keys never seen before.
#[derive(Clone, Copy, Debug)]
struct Fill {
    file_bytes: u64,
    /// Entries held, averaged over the second half of the fill (pages fill up and are rebuilt
    /// in turn, so the count moves between the two).
    held_mean: f64,
    held_max: u64,
    /// Share of a page's data area in use right after it was rebuilt to make room.
    rebuild_fill_mean: f64,
    rebuild_fill_min: f64,
    rebuilds: usize,
}

fn measure_fill(config: FastMmapConfig) -> Fill {
    let mut cache = FastMmap::new(config);
    let raw = config.pages as usize * config.page_size as usize / ENTRY_SIZE;
    let inserts = 4 * raw;
    let every = (config.pages as usize / 4).max(1);
    let mut prev: Vec<u32> = vec![0; config.pages as usize];
    let (mut held_sum, mut held_n, mut held_max) = (0.0, 0u64, 0u64);
    let mut rebuild_fills = Vec::new();
    for i in 0..inserts {
        cache.insert(traces::ONE_HIT_BASE + i as u64);
        if !i.is_multiple_of(every) {
            continue;
        }
        let stats = cache.cache().stats().expect("fastmmap stats of the fill");
        for (page, before) in stats.pages.iter().zip(prev.iter_mut()) {
            if page.entries < *before {
                let area = u64::from(page.used_bytes) + u64::from(page.free_bytes);
                rebuild_fills.push(f64::from(page.used_bytes) / area as f64);
            }
            *before = page.entries;
        }
        if i >= inserts / 2 {
            held_sum += stats.entries as f64;
            held_n += 1;
            held_max = held_max.max(stats.entries);
        }
    }
    let n = rebuild_fills.len().max(1) as f64;
    Fill {
        file_bytes: cache.file_bytes(),
        held_mean: held_sum / held_n.max(1) as f64,
        held_max,
        rebuild_fill_mean: rebuild_fills.iter().sum::<f64>() / n,
        rebuild_fill_min: rebuild_fills.iter().copied().fold(1.0, f64::min),
        rebuilds: rebuild_fills.len(),
    }
}

/// The cases, full-size or scaled down by `scale` (keys, lengths and capacities).
fn cases(scale: usize) -> Vec<Case> {
    let s = |n: usize| (n / scale).max(1);
    let keys = s(1_000_000) as u64;
    let len = s(2_000_000);
    vec![
        Case {
            name: format!("Zipf 0.8, {keys} keys, cache 1%"),
            trace: traces::zipf(keys, 0.8, len, 1),
            nominal: s(10_000),
            pages: None,
        },
        Case {
            name: format!("Zipf 0.99, {keys} keys, cache 1%"),
            trace: traces::zipf(keys, 0.99, len, 2),
            nominal: s(10_000),
            pages: None,
        },
        Case {
            name: if scale == 1 {
                format!("Zipf 0.99, {keys} keys, 89 × 64 KiB")
            } else {
                format!("Zipf 0.99, {keys} keys, cache 3.2%")
            },
            trace: traces::zipf(keys, 0.99, len, 3),
            nominal: s(32_000),
            pages: (scale == 1).then_some(89),
        },
        Case {
            name: format!(
                "Zipf 0.99, {keys} keys, cache 10%, a {}-key scan every {} requests",
                s(50_000),
                s(100_000)
            ),
            trace: traces::zipf_with_scans(keys, 0.99, len, s(100_000), s(50_000), 4),
            nominal: s(100_000),
            pages: None,
        },
        Case {
            name: format!(
                "Flood: {} sessions among 10× as many one-hit keys, cache {}",
                s(1_000),
                s(2_000)
            ),
            trace: traces::flood(s(1_000) as u64, 10, s(550_000), 5),
            nominal: s(2_000),
            pages: None,
        },
        Case {
            name: format!("Loop over {} keys, cache {}", s(15_000), s(10_000)),
            trace: traces::loop_trace(s(15_000) as u64, s(600_000)),
            nominal: s(10_000),
            pages: None,
        },
        Case {
            name: format!("Loop over {} keys, cache {}", s(30_000), s(10_000)),
            trace: traces::loop_trace(s(30_000) as u64, s(600_000)),
            nominal: s(10_000),
            pages: None,
        },
        Case {
            name: format!("Block I/O (synthetic), cache {}", s(10_000)),
            trace: traces::block_io(len, 7),
            nominal: s(10_000),
            pages: None,
        },
    ]
    .into_iter()
    .chain(recorded_case(s(10_000)))
    .collect()
}

/// Where the recorded block trace is looked for when `HIT_RATIO_TRACE` names no file:
/// libCacheSim's `data/cloudPhysicsIO.txt`, copied here (not shipped; see
/// `compare/README.md`).
const DEFAULT_TRACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/cloudPhysicsIO.txt");

/// The recorded block trace (issue 21's cloudPhysicsIO row), replayed whole at every scale,
/// if its file is there; a note on stderr if not. A file named by `HIT_RATIO_TRACE` that
/// cannot be read or parsed is an error, not a skip.
fn recorded_case(nominal: usize) -> Option<Case> {
    let named = std::env::var_os("HIT_RATIO_TRACE");
    let path = named
        .clone()
        .map_or_else(|| DEFAULT_TRACE.into(), std::path::PathBuf::from);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if named.is_none() && e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "hit_ratio: SKIPPED the recorded block trace: no {} (HIT_RATIO_TRACE names \
                 another file; compare/README.md says where to get it)",
                path.display()
            );
            return None;
        }
        Err(e) => panic!("HIT_RATIO_TRACE: cannot read {}: {e}", path.display()),
    };
    let trace = traces::recorded(&text)
        .unwrap_or_else(|e| panic!("HIT_RATIO_TRACE: {}: {e}", path.display()));
    let file = path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    Some(Case {
        name: format!("Block I/O, recorded ({file}), cache {nominal}"),
        trace,
        nominal,
        pages: None,
    })
}

/// Results of one case: fastmmap once, each other policy at both capacities.
struct Row {
    name: String,
    pages: u32,
    nominal: usize,
    fill: Fill,
    held: usize,
    fastmmap: Replay,
    at_held: Vec<(String, Replay)>,
    at_nominal: Vec<(String, Replay)>,
    watched: usize,
}

fn peers(capacity: usize, keys: &[u64]) -> Vec<Box<dyn Policy>> {
    vec![
        Box::new(Lru::new(capacity)),
        Box::new(Moka::new(capacity)),
        Box::new(QuickCache::new(capacity)),
        Box::new(Belady::new(capacity, keys)),
    ]
}

fn run_peers(capacity: usize, case: &Case, warmup: usize) -> Vec<(String, Replay)> {
    peers(capacity, &case.trace.keys)
        .into_iter()
        .map(|mut p| {
            let r = replay(p.as_mut(), &case.trace, warmup);
            (p.name().to_owned(), r)
        })
        .collect()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rps = std::env::var("HIT_RATIO_RPS")
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("HIT_RATIO_RPS={v:?} is not a whole number"))
        })
        .unwrap_or(DEFAULT_RPS);
    let (scale, page_size) = if full { (1, 64 * 1024) } else { (50, 4096) };
    let config = |pages| FastMmapConfig {
        pages,
        page_size,
        lock_kind: LockKind::default(),
        requests_per_second: rps,
    };
    let started = Instant::now();

    // Bytes of file per entry, from a fill of the filer's 89-page file (scaled), sizes the
    // files of the cases that give only a capacity in entries.
    let reference_pages = (89 * 64 * 1024 / page_size / scale as u32).max(1);
    let reference = measure_fill(config(reference_pages));
    let bytes_per_entry = reference.file_bytes as f64 / reference.held_mean;

    // `HIT_RATIO_CASES=loop,block` replays only the cases whose names contain one of those
    // words (case-insensitive); `HIT_RATIO_PEERS=0` replays fastmmap alone (its column only
    // is meaningful then): both for trying a policy change quickly.
    let only: Vec<String> = std::env::var("HIT_RATIO_CASES")
        .map(|v| v.split(',').map(str::to_lowercase).collect())
        .unwrap_or_default();
    let with_peers = std::env::var("HIT_RATIO_PEERS").map_or(true, |v| v != "0");
    let mut fills: BTreeMap<u32, Fill> = BTreeMap::new();
    let mut rows = Vec::new();
    for case in cases(scale) {
        let lower = case.name.to_lowercase();
        if !only.is_empty() && !only.iter().any(|w| lower.contains(w.as_str())) {
            continue;
        }
        let t = Instant::now();
        let pages = case.pages.unwrap_or_else(|| {
            ((case.nominal as f64 * bytes_per_entry / f64::from(page_size)).round() as u32).max(1)
        });
        let fill = *fills
            .entry(pages)
            .or_insert_with(|| measure_fill(config(pages)));
        let held = fill.held_mean.round() as usize;
        let warmup = (case.trace.keys.len() as f64 * WARMUP) as usize;
        let mut fm = FastMmap::new(config(pages));
        let fastmmap = replay(&mut fm, &case.trace, warmup);
        drop(fm);
        let (at_held, at_nominal) = match with_peers {
            true => (
                run_peers(held, &case, warmup),
                run_peers(case.nominal, &case, warmup),
            ),
            false => (Vec::new(), Vec::new()),
        };
        eprintln!(
            "{}: {} requests, {pages} pages, {:.1?}",
            case.name,
            case.trace.keys.len(),
            t.elapsed()
        );
        if !full && with_peers {
            check(&case, &fill, fastmmap, &at_held, warmup);
        }
        rows.push(Row {
            name: case.name,
            pages,
            nominal: case.nominal,
            fill,
            held,
            fastmmap,
            at_held,
            at_nominal,
            watched: case.trace.watched.len(),
        });
    }
    print_tables(&rows, page_size, rps, &reference, bytes_per_entry);
    eprintln!("hit_ratio: all cases in {:.1?}", started.elapsed());
}

/// The smoke test's checks: ratios are ratios, the optimum is optimal, and fastmmap hits what
/// a cache of its size can.
fn check(case: &Case, fill: &Fill, fastmmap: Replay, at_held: &[(String, Replay)], warmup: usize) {
    let all: Vec<(&str, Replay)> = std::iter::once(("fastmmap", fastmmap))
        .chain(at_held.iter().map(|(n, r)| (n.as_str(), *r)))
        .collect();
    for (name, r) in &all {
        assert!(
            (0.0..=1.0).contains(&r.hit_ratio()) && r.counted > 0,
            "{}: {name} hit ratio {} of {} requests",
            case.name,
            r.hit_ratio(),
            r.counted
        );
        assert!(r.watched_cached <= case.trace.watched.len());
    }
    let opt = at_held.last().expect("Bélády ran").1;
    for (name, r) in &all[1..all.len() - 1] {
        assert!(
            opt.hits >= r.hits,
            "{}: {name} hit {} times, more than Bélády's {}",
            case.name,
            r.hits,
            opt.hits
        );
    }
    // fastmmap may briefly hold more than its average: compare it with the optimum at the
    // most it ever held.
    let mut opt_max = Belady::new(fill.held_max as usize, &case.trace.keys);
    let opt_max = replay(&mut opt_max, &case.trace, warmup);
    assert!(
        opt_max.hits >= fastmmap.hits,
        "{}: fastmmap hit {} times, more than Bélády's {} at {} entries",
        case.name,
        fastmmap.hits,
        opt_max.hits,
        fill.held_max
    );
    // A cache that holds anything hits a Zipf trace's hottest keys.
    if case.name.starts_with("Zipf") {
        assert!(
            all.iter().all(|(_, r)| r.hits > 0),
            "{}: no hits",
            case.name
        );
    }
}

fn pct(r: &Replay) -> String {
    format!("{:.1}", 100.0 * r.hit_ratio())
}

fn print_tables(rows: &[Row], page_size: u32, rps: u64, reference: &Fill, bytes_per_entry: f64) {
    if rows.is_empty() {
        return;
    }
    let names: Vec<&str> = rows[0].at_held.iter().map(|(n, _)| n.as_str()).collect();
    let header = |first: &str| {
        println!("| {first} | fastmmap | {} |", names.join(" | "));
        println!("|---|---:|{}", "---:|".repeat(names.len()));
    };

    println!("\n### Hit %, same bytes: each peer holds as many entries as fastmmap's file does\n");
    header("trace (entries)");
    for row in rows {
        let peers: Vec<String> = row.at_held.iter().map(|(_, r)| pct(r)).collect();
        println!(
            "| {} ({}) | {} | {} |",
            row.name,
            row.held,
            pct(&row.fastmmap),
            peers.join(" | ")
        );
    }

    println!(
        "\nFor the scans and the flood, hit % of the requests for keys used again (the Zipf \
         requests, the sessions): their one-hit keys can never hit and are left out."
    );

    println!(
        "\n### Issue 21's target, same bytes: fastmmap at or above the better of moka and \
         quick_cache; ≥ 99% of the flood's sessions kept\n"
    );
    println!("| trace | fastmmap | better of moka and quick_cache | met |");
    println!("|---|---:|---:|---|");
    for row in rows {
        let best = row
            .at_held
            .iter()
            .filter(|(n, _)| n == "moka" || n == "quick_cache")
            .map(|(_, r)| r.hit_ratio())
            .fold(0.0, f64::max);
        let fm = row.fastmmap.hit_ratio();
        let met = if fm >= best { "yes" } else { "no" };
        println!(
            "| {} | {:.1} | {:.1} | {met} ({:+.1}) |",
            row.name,
            100.0 * fm,
            100.0 * best,
            100.0 * (fm - best)
        );
        if row.watched > 0 {
            let kept = row.fastmmap.watched_cached as f64 / row.watched as f64;
            let met = if kept >= 0.99 { "yes" } else { "no" };
            println!(
                "| {}: sessions kept | {:.0}% | ≥ 99% | {met} |",
                row.name,
                100.0 * kept
            );
        }
    }

    println!("\n### Hit %, same entries: each peer holds the nominal capacity (issue 21's rule)\n");
    header("trace (entries)");
    for row in rows {
        let peers: Vec<String> = row.at_nominal.iter().map(|(_, r)| pct(r)).collect();
        println!(
            "| {} ({}) | {} | {} |",
            row.name,
            row.nominal,
            pct(&row.fastmmap),
            peers.join(" | ")
        );
    }

    for row in rows.iter().filter(|r| r.watched > 0) {
        let share = |r: &Replay| {
            format!(
                "{:.0}%",
                100.0 * r.watched_cached as f64 / row.watched as f64
            )
        };
        println!("\n### {}: sessions still cached at the end\n", row.name);
        header("capacity rule");
        for (rule, peers) in [
            ("same bytes", &row.at_held),
            ("same entries", &row.at_nominal),
        ] {
            let p: Vec<String> = peers.iter().map(|(_, r)| share(r)).collect();
            println!("| {rule} | {} | {} |", share(&row.fastmmap), p.join(" | "));
        }
    }

    println!(
        "\n### fastmmap's fill ({} KiB pages, clock at {rps} requests per second)\n",
        page_size / 1024
    );
    println!(
        "| pages | file bytes | entries held (mean / max) | bytes of file per entry | page fill after a rebuild (mean / min, rebuilds seen) |"
    );
    println!("|---:|---:|---:|---:|---:|");
    let mut seen = BTreeMap::new();
    for row in rows {
        seen.insert(row.pages, row.fill);
    }
    for (pages, f) in &seen {
        println!(
            "| {pages} | {} | {:.0} / {} | {:.0} | {:.1}% / {:.1}% ({}) |",
            f.file_bytes,
            f.held_mean,
            f.held_max,
            f.file_bytes as f64 / f.held_mean,
            100.0 * f.rebuild_fill_mean,
            100.0 * f.rebuild_fill_min,
            f.rebuilds
        );
    }
    println!(
        "\nEntry: {ENTRY_SIZE} B in the page (24 B header, 16 B key, 100 B value). Files sized \
         from {bytes_per_entry:.0} B of file per entry, measured on the reference fill \
         ({} B file, {:.0} entries held).",
        reference.file_bytes, reference.held_mean
    );
}
