//! One function per command, over the crate's public API only.

use std::ffi::OsStr;
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fastmmap::{Cache, CacheBuilder, EntryFlags, Error, Expiry, Layout, ManualClock, Stats};
use serde::Serialize;

use crate::args::{Cli, Command, FileOptions, KeyArgs};
use crate::escape::{escape, unescape};
use crate::failure::{Failure, empty_file, warn};
use crate::input::{Line, Spool, read_at_most, read_line};
use crate::record::{Item, Record, file_secs, max_line_size, max_value_size};

type Out<'a> = BufWriter<io::StdoutLock<'a>>;

/// Runs the command; whatever it wrote to stdout is flushed before it returns.
pub(crate) fn run(cli: &Cli) -> Result<(), Failure> {
    let opts = &cli.file;
    let mut out = BufWriter::new(io::stdout().lock());
    let result = match &cli.command {
        Command::Create(f) => create(opts, &f.file),
        Command::Get(k) => get(opts, k, &mut out),
        Command::Set { key, value, expire } => set(opts, key, value, *expire),
        Command::Remove(k) => remove(opts, k),
        Command::Keys(f) => keys(opts, &f.file, &mut out),
        Command::Stats { file, json } => stats(opts, &file.file, *json, &mut out),
        Command::Check { file, repair } => check(opts, &file.file, *repair, &mut out),
        Command::Purge(f) => purge(opts, &f.file, &mut out),
        Command::Clear(f) => Ok(open(opts, &f.file)?.clear()?),
        Command::Dump(f) => dump(opts, &f.file, &mut out),
        Command::Load(f) => load(opts, &f.file, &mut out),
        Command::Resize { file, pages } => resize(opts, &file.file, *pages, &mut out),
    };
    let flushed = out.flush().map_err(Failure::stdout);
    result.and(flushed)
}

/// The builder for FILE with the layout, geometry, lock kind and lock timeout given on the
/// command line. Without `--lock`, an existing file is opened with the kind it records.
fn builder(opts: &FileOptions, path: &Path) -> CacheBuilder {
    let mut b = Cache::builder().path(path).layout(opts.layout.layout());
    if let Some(n) = opts.num_pages {
        b = b.num_pages(n);
    }
    if let Some(bytes) = opts.page_size {
        b = b.page_size(bytes);
    }
    if let Some(lock) = opts.lock {
        b = b.lock_kind(lock.lock_kind());
    }
    if let Some(timeout) = opts.lock_timeout {
        b = b.lock_timeout(timeout);
    }
    if let Some(bytes) = opts.overflow_size {
        b = b.overflow_size(bytes);
    }
    if let Some(bytes) = opts.max_value_size {
        b = b.max_value_size(bytes);
    }
    b
}

/// Only `create` makes files: every other command needs FILE to exist.
fn must_exist(path: &Path) -> Result<(), Failure> {
    match path.metadata() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Failure::at(
            path,
            "no such cache file (only `fastmmap create` creates one)",
        )),
        // Anything else is for the library to report, with the file's name.
        _ => Ok(()),
    }
}

/// Opens an existing FILE.
fn open(opts: &FileOptions, path: &Path) -> Result<Cache, Failure> {
    must_exist(path)?;
    Ok(builder(opts, path).open()?)
}

/// Opens an existing FILE for a command that only reads it: read-write if the file allows,
/// else read-only (shared read locks, nothing written), for users who may only read it.
fn open_to_read(opts: &FileOptions, path: &Path) -> Result<Cache, Failure> {
    must_exist(path)?;
    Ok(open_to_read_with(builder(opts, path))?)
}

fn open_to_read_with(b: CacheBuilder) -> fastmmap::Result<Cache> {
    match b.clone().open() {
        Err(Error::PermissionDenied { .. }) => b.read_only(true).open(),
        other => other,
    }
}

/// KEY or VALUE from the command line: its bytes, or what they stand for with `--escaped`.
fn arg_bytes(arg: &OsStr, escaped: bool) -> Result<Vec<u8>, Failure> {
    if escaped {
        unescape(arg.as_bytes()).map_err(Failure::Error)
    } else {
        Ok(arg.as_bytes().to_vec())
    }
}

fn create(opts: &FileOptions, path: &Path) -> Result<(), Failure> {
    // `symlink_metadata`: a dangling link counts as an existing name too.
    if path.symlink_metadata().is_ok() {
        return Err(Failure::at(
            path,
            "already exists (`create` only makes new files)",
        ));
    }
    builder(opts, path).open()?;
    Ok(())
}

fn get(opts: &FileOptions, k: &KeyArgs, out: &mut Out<'_>) -> Result<(), Failure> {
    let key = arg_bytes(&k.key, k.escaped)?;
    let cache = open_to_read(opts, &k.file)?;
    let value = cache.get(&key)?.ok_or(Failure::NotFound)?;
    out.write_all(&value).map_err(Failure::stdout)
}

fn set(opts: &FileOptions, k: &KeyArgs, value: &OsStr, expire: Option<u64>) -> Result<(), Failure> {
    let key = arg_bytes(&k.key, k.escaped)?;
    // Read stdin only once FILE is known to open.
    let given = if value == "-" {
        None
    } else {
        Some(arg_bytes(value, k.escaped)?)
    };
    let cache = open(opts, &k.file)?;
    let value = match given {
        Some(value) => value,
        None => value_from_stdin(&cache, &k.file, &key)?,
    };
    let expiry = expire.map_or(Expiry::Never, |secs| {
        Expiry::After(Duration::from_secs(secs))
    });
    if cache.set_with(&key, &value, expiry)? {
        Ok(())
    } else {
        warn(format_args!(
            "{}: key {}: not stored: a tombstone refuses plain stores of this key until it expires",
            k.file.display(),
            escape(&key)
        ));
        Err(Failure::Refused)
    }
}

/// The value of `set KEY -`: stdin, read only up to the largest value FILE takes for KEY
/// (what fits a page with KEY, or the overflow area's `max_value_size` if that is more; one
/// byte more tells that it is too large).
fn value_from_stdin(cache: &Cache, path: &Path, key: &[u8]) -> Result<Vec<u8>, Failure> {
    let max = cache.max_entry_size();
    let too_large = |what: String| {
        Failure::at(
            path,
            format_args!(
                "key {}: too large for a page (entries of at most {max} bytes): {what}; \
                 nothing stored",
                escape(key)
            ),
        )
    };
    let Some(limit) = max_value_size(max, key.len()) else {
        return Err(too_large(format!(
            "the key alone ({} bytes) leaves no room for a value",
            key.len()
        )));
    };
    // A file with an overflow area takes values up to its max_value_size.
    let limit = limit.max(cache.max_value_size());
    read_at_most(io::stdin().lock(), limit)
        .map_err(|e| Failure::Error(format!("reading stdin: {e}")))?
        .ok_or_else(|| {
            too_large(format!(
                "the value on stdin is longer than the {limit} bytes that fit with this key \
                 or in the overflow area (stopped reading after {} bytes)",
                limit + 1
            ))
        })
}

fn remove(opts: &FileOptions, k: &KeyArgs) -> Result<(), Failure> {
    let key = arg_bytes(&k.key, k.escaped)?;
    if open(opts, &k.file)?.remove(&key)? {
        Ok(())
    } else {
        Err(Failure::NotFound)
    }
}

fn keys(opts: &FileOptions, path: &Path, out: &mut Out<'_>) -> Result<(), Failure> {
    for key in open_to_read(opts, path)?.keys() {
        writeln!(out, "{}", escape(&key?)).map_err(Failure::stdout)?;
    }
    Ok(())
}

fn layout_name(layout: Layout) -> &'static str {
    match layout {
        Layout::Native => "native",
        Layout::FastMmap => "fastmmap",
        _ => "unknown",
    }
}

/// `stats --json`: the totals, then one object per page.
#[derive(Serialize)]
struct StatsJson {
    file: String,
    layout: &'static str,
    lock_kind: String,
    num_pages: u32,
    page_size: u32,
    entries: u64,
    slots: u64,
    used_bytes: u64,
    free_bytes: u64,
    reads: u64,
    hits: u64,
    resets: u64,
    /// This command's own fault counters (see `Stats`): what it met while reading the file.
    dirty_lost: u64,
    backing_errors: u64,
    decode_errors: u64,
    lock_timeouts: u64,
    /// The overflow area (all 0 without one).
    overflow_bytes: u64,
    overflow_used_bytes: u64,
    overflow_free_runs: u64,
    overflow_largest_free_run: u64,
    max_value_size: u64,
    pages: Vec<PageJson>,
}

#[derive(Serialize)]
struct PageJson {
    page: u32,
    entries: u32,
    slots: u32,
    used_bytes: u32,
    free_bytes: u32,
    reads: u32,
    hits: u32,
    resets: u64,
}

impl StatsJson {
    fn of(cache: &Cache, s: &Stats) -> StatsJson {
        StatsJson {
            file: cache.path().to_string_lossy().into_owned(),
            layout: layout_name(cache.layout()),
            lock_kind: cache.lock_kind().to_string(),
            num_pages: cache.num_pages(),
            page_size: cache.page_size(),
            entries: s.entries,
            slots: s.pages.iter().map(|p| u64::from(p.slots)).sum(),
            used_bytes: s.used_bytes,
            free_bytes: s.free_bytes,
            reads: s.reads,
            hits: s.hits,
            resets: s.resets,
            dirty_lost: s.dirty_lost,
            backing_errors: s.backing_errors,
            decode_errors: s.decode_errors,
            lock_timeouts: s.lock_timeouts,
            overflow_bytes: s.overflow_bytes,
            overflow_used_bytes: s.overflow_used_bytes,
            overflow_free_runs: s.overflow_free_runs,
            overflow_largest_free_run: s.overflow_largest_free_run,
            max_value_size: cache.max_value_size() as u64,
            pages: (0..)
                .zip(&s.pages)
                .map(|(page, p)| PageJson {
                    page,
                    entries: p.entries,
                    slots: p.slots,
                    used_bytes: p.used_bytes,
                    free_bytes: p.free_bytes,
                    reads: p.reads,
                    hits: p.hits,
                    resets: p.resets,
                })
                .collect(),
        }
    }
}

fn stats(opts: &FileOptions, path: &Path, json: bool, out: &mut Out<'_>) -> Result<(), Failure> {
    let cache = open_to_read(opts, path)?;
    let s = StatsJson::of(&cache, &cache.stats()?);
    if json {
        let text =
            serde_json::to_string(&s).map_err(|e| Failure::Error(format!("encoding JSON: {e}")))?;
        return writeln!(out, "{text}").map_err(Failure::stdout);
    }
    let mut totals = vec![
        ("file", s.file.clone()),
        ("layout", s.layout.to_owned()),
        ("lock kind", s.lock_kind.clone()),
        ("pages", format!("{} × {} bytes", s.num_pages, s.page_size)),
        ("entries", s.entries.to_string()),
        ("slots", s.slots.to_string()),
        ("used bytes", s.used_bytes.to_string()),
        ("free bytes", s.free_bytes.to_string()),
        ("reads", s.reads.to_string()),
        ("hits", s.hits.to_string()),
        ("resets", s.resets.to_string()),
    ];
    // Files with an overflow area (large values) say how it is used.
    if s.overflow_bytes != 0 {
        totals.push((
            "overflow",
            format!(
                "{} of {} bytes used; free space in {} runs, the longest {} bytes; values up to \
                 {} bytes",
                s.overflow_used_bytes,
                s.overflow_bytes,
                s.overflow_free_runs,
                s.overflow_largest_free_run,
                s.max_value_size
            ),
        ));
    }
    // Counted by this process only (each run of the command starts from zero).
    let faults = [
        ("dirty lost", s.dirty_lost),
        ("backing errors", s.backing_errors),
        ("decode errors", s.decode_errors),
        ("lock timeouts", s.lock_timeouts),
    ];
    let write = || -> io::Result<()> {
        for (name, value) in totals {
            writeln!(out, "{name:<11}{value}")?;
        }
        writeln!(out)?;
        writeln!(out, "faults met by this command")?;
        for (name, value) in faults {
            writeln!(out, "    {name:<15}{value}")?;
        }
        writeln!(out)?;
        writeln!(
            out,
            "    page  entries    slots  used bytes  free bytes       reads        hits  resets"
        )?;
        for p in &s.pages {
            writeln!(
                out,
                "{:>8} {:>8} {:>8} {:>11} {:>11} {:>11} {:>11} {:>7}",
                p.page, p.entries, p.slots, p.used_bytes, p.free_bytes, p.reads, p.hits, p.resets
            )?;
        }
        Ok(())
    };
    write().map_err(Failure::stdout)
}

fn check(opts: &FileOptions, path: &Path, repair: bool, out: &mut Out<'_>) -> Result<(), Failure> {
    must_exist(path)?;
    let opened = if repair {
        builder(opts, path).open()
    } else {
        open_to_read_with(builder(opts, path))
    };
    let cache = match opened {
        Ok(cache) => cache,
        // A Cache::FastMmap file whose page 0 is not a page is not taken for a cache, unless
        // asked to repair it.
        Err(Error::NotACache {
            page: Some(page),
            reason,
            ..
        }) if repair => {
            // `verify` takes the file for a cache and resets every page that fails validation.
            let cache = builder(opts, path).verify(true).open()?;
            let n = cache.num_pages();
            writeln!(out, "page {page}: not a cache page: {reason} (reset)")
                .map_err(Failure::stdout)?;
            if !cache.validate()?.is_empty() {
                return Err(Failure::CheckFailed(None));
            }
            return writeln!(
                out,
                "file taken as a cache: every damaged page of {n} reset"
            )
            .map_err(Failure::stdout);
        }
        Err(e @ Error::NotACache { .. }) => return Err(Failure::CheckFailed(Some(e.to_string()))),
        // A native header is self-describing: if it is damaged, or disagrees with the file's
        // size, the file is. (Without a header, a wrong size may be a wrong --num-pages.)
        Err(e @ Error::BadHeader { .. }) => return Err(Failure::CheckFailed(Some(e.to_string()))),
        // No geometry of either layout has 0 bytes: not a cache file, whatever the options.
        Err(e @ Error::WrongSize { found: 0, .. }) => {
            return Err(Failure::CheckFailed(empty_file(&e)));
        }
        Err(e @ Error::WrongSize { .. }) if opts.layout.layout() == Layout::Native => {
            return Err(Failure::CheckFailed(Some(e.to_string())));
        }
        Err(e) => return Err(e.into()),
    };
    let n = cache.num_pages();
    let mut problems = cache.validate()?;
    // Large values: every reference and block chain checked, and blocks no entry holds.
    let (bad_refs, unreferenced) = cache.check_overflow()?;
    for p in bad_refs {
        if !problems.iter().any(|q| q.page == p.page) {
            problems.push(p);
        }
    }
    problems.sort_by_key(|p| p.page);
    if unreferenced > 0 {
        let done = if repair { " (freed)" } else { "" };
        writeln!(
            out,
            "overflow area: {unreferenced} blocks held by no entry{done}"
        )
        .map_err(Failure::stdout)?;
        if !repair {
            if problems.is_empty() {
                return Err(Failure::CheckFailed(None));
            }
        } else if problems.is_empty() {
            cache.reclaim_overflow()?;
        }
    }
    let done = if repair { " (reset)" } else { "" };
    for p in &problems {
        writeln!(out, "page {}: {}{done}", p.page, p.reason).map_err(Failure::stdout)?;
    }
    if problems.is_empty() {
        return writeln!(out, "all {n} pages valid").map_err(Failure::stdout);
    }
    if !repair {
        writeln!(out, "{} of {n} pages damaged", problems.len()).map_err(Failure::stdout)?;
        return Err(Failure::CheckFailed(None));
    }
    // `verify` resets every page that fails validation, each under its lock.
    builder(opts, path).verify(true).open()?;
    let left = cache.validate()?;
    for p in &left {
        writeln!(
            out,
            "page {}: still damaged after a reset: {}",
            p.page, p.reason
        )
        .map_err(Failure::stdout)?;
    }
    if left.is_empty() {
        writeln!(out, "{} of {n} pages damaged and reset", problems.len()).map_err(Failure::stdout)
    } else {
        Err(Failure::CheckFailed(None))
    }
}

fn purge(opts: &FileOptions, path: &Path, out: &mut Out<'_>) -> Result<(), Failure> {
    let dropped = open(opts, path)?.purge()?;
    writeln!(out, "{dropped} expired entries dropped").map_err(Failure::stdout)
}

fn resize(opts: &FileOptions, path: &Path, pages: u32, out: &mut Out<'_>) -> Result<(), Failure> {
    must_exist(path)?;
    // --page-size is the new page size here, not one a native file must have (a
    // Cache::FastMmap file needs its geometry to be opened at all, and is then refused).
    let cache = if opts.layout.layout() == Layout::Native {
        let opened = FileOptions {
            num_pages: None,
            page_size: None,
            ..opts.clone()
        };
        builder(&opened, path).open()?
    } else {
        open(opts, path)?
    };
    let page_size = opts.page_size.unwrap_or(cache.page_size());
    let r = cache.resize(pages, page_size)?;
    writeln!(
        out,
        "resized from {} pages of {} bytes to {pages} pages of {page_size} bytes: {} entries \
         copied, {} dropped ({} of them dirty), {} damaged pages skipped; {} old pages moved \
         one at a time, each page's lock held at most {:.2} ms ({:.1} ms in all)",
        r.old_num_pages,
        r.old_page_size,
        r.copied,
        r.dropped,
        r.dirty_dropped,
        r.damaged_pages,
        r.pages_moved,
        r.longest_step.as_secs_f64() * 1000.0,
        r.locks_held.as_secs_f64() * 1000.0
    )
    .map_err(Failure::stdout)
}

fn dump(opts: &FileOptions, path: &Path, out: &mut Out<'_>) -> Result<(), Failure> {
    for item in open_to_read(opts, path)?.iter() {
        let (key, entry) = item?;
        let mut line = serde_json::to_vec(&Record::of(&key, &entry))
            .map_err(|e| Failure::Error(format!("encoding JSON: {e}")))?;
        line.push(b'\n');
        out.write_all(&line).map_err(Failure::stdout)?;
    }
    Ok(())
}

/// An input error: `stdin:LINE: REASON`, or `stdin:LINE:COLUMN: REASON` from the JSON parser.
fn bad_line(line: u64, reason: impl std::fmt::Display) -> Failure {
    Failure::Error(format!("stdin:{line}: {reason}"))
}

fn json_error(line: u64, e: &serde_json::Error) -> Failure {
    let text = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&position) {
        Some(reason) => Failure::Error(format!("stdin:{line}:{}: {reason}", e.column())),
        None => bad_line(line, text),
    }
}

fn load(opts: &FileOptions, path: &Path, out: &mut Out<'_>) -> Result<(), Failure> {
    let cache = open(opts, path)?;
    let spool = check_input(path, cache.max_entry_size(), cache.max_value_size())?;
    let (mut loaded, mut expired, mut refused) = (0u64, 0u64, 0u64);
    let records = spool.into_records().map_err(spool_error)?;
    for record in records {
        let (n, item) = record.map_err(spool_error)?;
        let now = file_secs(SystemTime::now());
        if item.expire_on.is_some_and(|at| at <= now) {
            expired += 1;
            continue;
        }
        let stored = store(opts, path, &cache, &item, now).map_err(|e| bad_line(n, e))?;
        if stored {
            loaded += 1;
        } else {
            refused += 1;
            warn(format_args!(
                "stdin:{n}: key {}: not stored: {} holds a tombstone or a newer modseq for it",
                escape(&item.key),
                path.display()
            ));
        }
    }
    writeln!(
        out,
        "{loaded} entries loaded, {expired} expired skipped, {refused} refused"
    )
    .map_err(Failure::stdout)?;
    if refused > 0 {
        return Err(Failure::Refused);
    }
    Ok(())
}

fn spool_error(e: io::Error) -> Failure {
    Failure::Error(format!(
        "the temporary file holding the checked records failed: {e}"
    ))
}

/// Reads and checks every line of stdin before anything is stored, one line in memory at a
/// time: the checked records wait in a temporary file.
/// `big`: the largest value the file's overflow area takes (0: none).
fn check_input(path: &Path, max: usize, big: usize) -> Result<Spool, Failure> {
    let line_limit = max_line_size(max.saturating_add(big));
    let mut spool = Spool::new().map_err(|e| {
        Failure::Error(format!(
            "creating a temporary file for the checked records (in {}): {e}",
            std::env::temp_dir().display()
        ))
    })?;
    let mut input = io::stdin().lock();
    let mut line = Vec::new();
    for n in 1u64.. {
        match read_line(&mut input, &mut line, line_limit)
            .map_err(|e| Failure::Error(format!("reading stdin: {e}")))?
        {
            Line::End => break,
            Line::TooLong => {
                return Err(bad_line(
                    n,
                    format_args!(
                        "line longer than {line_limit} bytes: no record that long fits {} \
                         (entries of at most {max} bytes in a page{}); stopped reading",
                        path.display(),
                        match big {
                            0 => String::new(),
                            big => format!(", values of at most {big} bytes in its overflow area"),
                        }
                    ),
                ));
            }
            Line::Read => {}
        }
        if line.trim_ascii().is_empty() {
            continue;
        }
        let record: Record = serde_json::from_slice(&line).map_err(|e| json_error(n, &e))?;
        let item = record.into_item().map_err(|reason| bad_line(n, reason))?;
        if item.entry_size() > max && item.value.len() > big {
            return Err(bad_line(
                n,
                format_args!(
                    "key {}: entry of {} bytes cannot fit in a page of {} (at most {max}), nor \
                     its value in the overflow area (values of at most {big} bytes)",
                    escape(&item.key),
                    item.entry_size(),
                    path.display()
                ),
            ));
        }
        spool.push(n, &item).map_err(spool_error)?;
    }
    Ok(spool)
}

/// Stores a loaded record with its expiry and flags, or its modseq. Returns whether it was
/// stored (a tombstone or newer modseq may refuse it).
fn store(
    opts: &FileOptions,
    path: &Path,
    cache: &Cache,
    item: &Item,
    now: u32,
) -> fastmmap::Result<bool> {
    let Some(modseq) = item.modseq else {
        let expiry = item.expire_on.map_or(Expiry::Never, |at| {
            Expiry::At(UNIX_EPOCH + Duration::from_secs(at.into()))
        });
        return cache.set_with_flags(&item.key, &item.value, expiry, EntryFlags(item.flags));
    };
    match item.expire_on {
        // `cache` has no default expiry: `set_if_newer` stores entries that never expire.
        None => cache.set_if_newer(&item.key, &item.value, modseq),
        // `set_if_newer` takes the handle's default expiry; a handle on the same file (this
        // process shares one mapping per file) whose clock stands at `now` and whose default
        // lifetime is the time left stores exactly `expire_on`.
        Some(at) => builder(opts, path)
            .clock(ManualClock::new(
                UNIX_EPOCH + Duration::from_secs(now.into()),
            ))
            .expire_after(Duration::from_secs((at - now).into()))
            .open()?
            .set_if_newer(&item.key, &item.value, modseq),
    }
}
