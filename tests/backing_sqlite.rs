//! A real database behind a write-back cache: a SQLite file (rusqlite) shared by forked
//! workers that set and read through a small cache (so it evicts all the time), one of them
//! killed with SIGKILL part way. After a final `flush`, the database holds every write any
//! worker had acknowledged (a `set` that returned), or a later one of the same key.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fastmmap::{Backing, BackingError, Cache, Layout, WriteMode};
use rusqlite::{Connection, OptionalExtension, params};

use common::{Children, Exit, PerProcessConnection, Rng};

/// The database as a backing store. A connection is opened lazily in each process (a SQLite
/// connection must not cross a fork). A store overwrites what the row holds, and the row
/// remembers the highest round it ever held (`top`): the cache must write a page's values
/// back in order, so a row never ends below its `top`.
struct Sql(PerProcessConnection);

impl Sql {
    fn new(path: &Path) -> Sql {
        Sql(PerProcessConnection::create(
            path,
            "CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL, round INTEGER NOT NULL,
                              top INTEGER NOT NULL);",
        ))
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, BackingError> {
        self.0.with(f)
    }
}

impl Backing for Sql {
    fn load(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackingError> {
        self.with(|c| {
            c.query_row("SELECT v FROM kv WHERE k = ?1", params![key], |r| r.get(0))
                .optional()
        })
    }

    fn store(&self, key: &[u8], value: &[u8], _: Option<SystemTime>) -> Result<(), BackingError> {
        let round = parse(key, value).map_err(BackingError::from)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO kv (k, v, round, top) VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT (k) DO UPDATE SET v = excluded.v, round = excluded.round,
                     top = max(kv.top, excluded.round)",
                params![key, value, round],
            )
        })?;
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<(), BackingError> {
        self.with(|c| c.execute("DELETE FROM kv WHERE k = ?1", params![key]))?;
        Ok(())
    }
}

const WORKERS: u64 = 3;
const KEYS: u64 = 150;

fn key(worker: u64, i: u64) -> Vec<u8> {
    format!("w{worker}:k{i:04}").into_bytes()
}

/// `KEY round PAD`: the round, and a pad that varies the size (so stores append and evict).
/// `large`: every third round's pad is larger than a page (the value goes to the overflow
/// area).
fn value(key: &[u8], round: u64, large: bool) -> Vec<u8> {
    let len = (round as usize * 37 + key.len() * 11) % 120;
    let len = if large && round.is_multiple_of(3) {
        4096 + len * 300
    } else {
        len
    };
    let pad = "#".repeat(len);
    format!("{} {round} {pad}", String::from_utf8_lossy(key)).into_bytes()
}

fn parse(key: &[u8], v: &[u8]) -> Result<i64, String> {
    let text = std::str::from_utf8(v).map_err(|e| e.to_string())?;
    let mut parts = text.split(' ');
    let (k, round) = (parts.next(), parts.next());
    if k != Some(&*String::from_utf8_lossy(key)) {
        return Err(format!(
            "value {text:?} stored under {:?}",
            String::from_utf8_lossy(key)
        ));
    }
    round
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| format!("value {text:?} has no round"))
}

fn worker(
    cache: &Cache,
    layout: Layout,
    w: u64,
    ops: u64,
    seed: u64,
    acks: &Path,
    large: bool,
) -> common::ChildResult {
    let mut log = OpenOptions::new()
        .append(true)
        .mode(0o600)
        .open(acks)
        .map_err(|e| e.to_string())?;
    let mut rng = Rng::new(seed ^ w);
    let mut round = vec![0u64; KEYS as usize];
    for _ in 0..ops {
        let i = rng.below(KEYS);
        let k = key(w, i);
        if rng.chance(30) {
            // Read through (the key may have been evicted and written back).
            if let Some(v) = cache.get(&k).map_err(|e| e.to_string())? {
                let got = parse(&k, &v)? as u64;
                // As in the final check: only a reset of the key's page (worker 0 killed while
                // changing it, the reset counted) may lose its dirty writes, and then a read
                // goes through to the older round in the database.
                let page = common::key_page(layout, &k, 5) as usize;
                let reset = || cache.stats().is_ok_and(|s| s.pages[page].resets > 0);
                if got + 1 < round[i as usize] && !reset() {
                    return Err(format!(
                        "{k:?}: read round {got}, wrote {}",
                        round[i as usize] - 1
                    ));
                }
            }
            continue;
        }
        let r = round[i as usize] + 1;
        match cache.set(&k, &value(&k, r, large)) {
            Ok(_) => {}
            // The overflow area full of other workers' large writes: not acknowledged.
            Err(fastmmap::Error::OverflowFull { .. }) => continue,
            Err(e) => return Err(e.to_string()),
        }
        round[i as usize] = r;
        // Acknowledged: the set returned. One write(2) of 8 bytes.
        log.write_all(&(i << 32 | r).to_le_bytes())
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[test]
fn sqlite_behind_a_write_back_cache_keeps_every_acknowledged_write() {
    let _serial = common::serial();
    for layout in [Layout::Native, Layout::FastMmap] {
        run(layout, false);
    }
}

/// As above, with values larger than a page among the writes (issue 24): dirty large values
/// are written back with their bytes, in order, and none acknowledged is lost.
#[test]
fn sqlite_behind_a_write_back_cache_keeps_every_acknowledged_large_write() {
    let _serial = common::serial();
    run(Layout::Native, true);
}

fn run(layout: Layout, large: bool) {
    let seed = common::seed("sqlite_write_back");
    let dir = common::temp_dir();
    let db = dir.path().join("db.sqlite");
    let builder = Cache::builder()
        .path(dir.path().join("cache"))
        .layout(layout)
        .num_pages(5)
        .page_size(4096);
    let builder = if large {
        builder.overflow_size(1 << 20)
    } else {
        builder
    };
    let cache = builder
        .backing(Sql::new(&db))
        .write_mode(WriteMode::Back)
        .open()
        .unwrap();
    let acks: Vec<PathBuf> = (0..WORKERS)
        .map(|w| {
            let p = dir.path().join(format!("acks-{w}"));
            std::fs::write(&p, b"").unwrap();
            p
        })
        .collect();
    let mut children = Children::new();
    let pids: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (cache, acks) = (cache.clone(), acks[w as usize].clone());
            // Worker 0 runs until it is killed; the others for a while.
            let ops = if w == 0 {
                u64::MAX
            } else {
                KEYS * common::scaled(30, 300) as u64
            };
            children.spawn(move || worker(&cache, layout, w, ops, seed, &acks, large))
        })
        .collect();
    // Kill worker 0 at a random moment while the others run.
    let mut rng = Rng::new(seed);
    std::thread::sleep(Duration::from_millis(20 + rng.below(200)));
    let killed = children.kill(pids[0]);
    assert_eq!(killed, Exit::Signal(libc::SIGKILL));
    for &pid in &pids[1..] {
        assert_eq!(
            children.wait(pid),
            Exit::Code(0),
            "{layout:?}: worker failed (stderr)"
        );
    }
    let flushed = cache.flush().unwrap();

    // Every acknowledged write, or a later one of the same key, is in the database.
    let stats = cache.stats().unwrap();
    let conn = Connection::open(&db).unwrap();
    let mut checked = 0;
    let mut excused = 0;
    for w in 0..WORKERS {
        let log = std::fs::read(&acks[w as usize]).unwrap();
        let mut last = vec![0u64; KEYS as usize];
        for ack in log.chunks_exact(8) {
            let ack = u64::from_le_bytes(ack.try_into().unwrap());
            last[(ack >> 32) as usize] = ack & 0xffff_ffff;
        }
        for (i, &round) in last.iter().enumerate().filter(|(_, r)| **r > 0) {
            let k = key(w, i as u64);
            let row: Option<(Vec<u8>, i64)> = conn
                .query_row("SELECT v, round FROM kv WHERE k = ?1", params![k], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
                .unwrap();
            let found = row.as_ref().map_or(0, |(_, r)| *r as u64);
            if found < round {
                // Only a page reset (a worker killed while changing a page) may lose writes,
                // and then only that page's.
                let page = common::key_page(layout, &k, 5);
                assert!(
                    stats.pages[page as usize].resets > 0,
                    "{layout:?}: {:?}: acknowledged round {round}, the database has {found} \
                     (FASTMMAP_SEED={seed})",
                    String::from_utf8_lossy(&k)
                );
                excused += 1;
            }
            if let Some((v, r)) = row {
                assert_eq!(parse(&k, &v).unwrap(), r);
            }
            checked += 1;
        }
    }
    eprintln!(
        "{layout:?}: worker 0 killed; {checked} acknowledged keys checked, {flushed} flushed, \
         {excused} lost to {} page resets",
        stats.resets
    );
    assert!(checked > 200, "{checked}");
    let behind: Vec<(Vec<u8>, i64, i64)> = conn
        .prepare("SELECT k, round, top FROM kv WHERE round < top")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert!(
        behind.is_empty(),
        "{layout:?}: an older value reached the database after a newer one (key, round, \
         highest round stored): {behind:?} (FASTMMAP_SEED={seed})"
    );
    assert_eq!(cache.flush().unwrap(), 0);
    if large {
        // No overflow block is held that no entry references once `check` has run.
        let freed = cache.reclaim_overflow().unwrap();
        assert_eq!(cache.check_overflow().unwrap(), (Vec::new(), 0));
        eprintln!(
            "{layout:?} (large values): {freed} blocks reclaimed, {} bytes of the overflow area \
             in use",
            cache.stats().unwrap().overflow_used_bytes
        );
    }
}
