//! The command line: options, commands and their help texts.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use fastmmap::{Layout, LockKind};

const ABOUT: &str = "Inspect and repair a fastmmap cache file from a shell";

const LONG_ABOUT: &str = "\
Inspect and repair a fastmmap cache file from a shell, as mdb_stat and mdb_dump do for LMDB.

Works on both file layouts: `native` (with a header that records the geometry) and `fastmmap`
(byte-compatible with Perl's Cache::FastMmap, no header), with either kind of page lock
(`fcntl` or `robust`). Other processes may use the file at the same time: every command locks
one page at a time, as the library does.";

const AFTER_LONG_HELP: &str = "\
FILES
    Only `create` creates a cache file, and it refuses a FILE that already exists. Every other
    command, `set` and `load` included, needs FILE to exist and exits 2 if it does not.

GEOMETRY
    A native file records its geometry: --num-pages and --page-size may be left out (given,
    they must agree with the header). A fastmmap-layout file records nothing: give the values
    it was created with, unless they are the defaults (89 pages of 65536 bytes).

LOCKS
    A native file records the kind of its page locks, chosen by `create --lock` (default
    robust on Linux with glibc, else fcntl): `fcntl` (as Cache::FastMmap takes them) or
    `robust` (a process-shared robust mutex per page; native layout on Linux with glibc
    only). Every other command opens a file with the kind it records; --lock, if given, must
    match it (else exit 2). A fastmmap-layout file always uses fcntl locks.

    A command waits for a page lock as long as another process holds it. With --lock-timeout
    SECONDS (fractions allowed: 0.5) it gives up after that long and exits 2.

KEYS AND VALUES
    KEY and VALUE are taken byte for byte from the command line. With --escaped they are read
    in the escaped form that `keys` prints, so that any key can be named: `\\\\` is a
    backslash, `\\xNN` is the byte with hex value NN; any other backslash is an error. Start a
    KEY that begins with `-` after `--`.

    `keys` prints one key per line. Printable ASCII and printable UTF-8 characters stand for
    themselves, a backslash is printed as `\\\\`, and every other byte (control characters,
    whitespace other than the space, invisible format characters such as bidirectional
    overrides and zero-width spaces, bytes that are not valid UTF-8) as `\\xNN`.

TRUST
    A FILE owned by another user (root aside), or a symbolic link at FILE, is refused (exit
    2); so is a FIFO, socket or device at FILE, at once, without waiting on it (`check`
    exits 3). New files are created with mode 0600. A fastmmap-layout FILE whose page 0 is neither a cache page nor empty is not taken for
    a cache: every command refuses it without writing (`check` exits 3), and only
    `check --repair` overwrites it.

    `get`, `keys`, `stats`, `dump` and `check` only read: on a FILE you may read but not
    write, they open it read-only, with shared record locks, and change nothing (a file with
    robust locks cannot be opened that way: its locks live in the file).

REPAIR
    `check` changes nothing. Every other command resets a page whose header it finds damaged
    when it locks the page (its entries are lost: it is a cache); `check --repair` resets
    every page that fails validation; `clear` empties every page.

EXIT STATUS
    0  success
    1  the key was not found (get, remove), or a store was refused by a tombstone or a newer
       modseq (set, load)
    2  usage error, an error opening, reading or writing a file, or a page lock not taken
       within --lock-timeout (message on stderr)
    3  `check` found damaged pages, a native file header that is damaged, or an empty FILE

EXAMPLES
    fastmmap create --num-pages 11 --page-size 16384 app.cache
    fastmmap create --lock robust busy.cache
    fastmmap set app.cache greeting hello --expire 3600
    fastmmap get app.cache greeting
    fastmmap stats --json app.cache
    fastmmap get --lock-timeout 0.5 app.cache greeting
    fastmmap dump app.cache > app.jsonl && fastmmap create new.cache && fastmmap load new.cache < app.jsonl
    fastmmap keys --layout fastmmap --num-pages 89 /tmp/perl.cache | head";

const DUMP_HELP: &str = "\
Every live entry, one JSON object per line, page by page:

    {\"key\":\"user:1\",\"value\":\"Ada\",\"expire_on\":null,\"last_access\":1700000000,\"flags\":0}

  key / key_base64      the key: `key` as a string when the bytes are valid UTF-8,
                        otherwise `key_base64` (standard base64, padded)
  value / value_base64  the value, in the same way
  expire_on             Unix seconds at which the entry expires, or null for never
  last_access           Unix seconds of its last read or store
  flags                 the entry's flag bits as a number (0x80000000 value is UTF-8,
                        0x40000000 key is UTF-8, 0x20000000 value is undef, 0x08000000 the
                        entry carries a modseq, 0x00000001 dirty)
  modseq                only on entries stored by `set_if_newer`: their modseq

Expired entries and tombstones are not dumped. Pages are read one at a time while others may
use the file, so a dump of a busy cache is not a snapshot of one instant. Reading entries does
not count as reads in the statistics or change their last access.";

const LOAD_HELP: &str = "\
Reads `dump` output from stdin and stores every record (see `fastmmap dump --help` for the
format). `key`/`key_base64` and `value`/`value_base64` are required (one of each pair); the
other fields are optional: no `expire_on` (or null) means never, no `flags` means 0. Unknown
fields are an error. Blank lines are skipped.

The whole input is read and checked before anything is stored: a malformed line, flags that
cannot be stored (the tombstone bit, or the undef bit 0x20000000 on a non-empty value, which
Perl would read as undef), or an entry too large for FILE's pages whose value is also over
the largest value FILE's overflow area takes, stops the load with exit 2 and a message naming
the line (`stdin:LINE: ...`), and nothing is stored. An error while storing (a failing
lock) stops it part way, and the records before it stay stored.

Memory holds one line at a time, whatever the size of the input: the checked records wait in
an unnamed temporary file in $TMPDIR (readable by you only, about as large as the input, gone
when `load` ends) until the last line has passed. A line longer than six times the largest
entry of FILE (plus the largest value its overflow area takes) plus 1 KiB cannot hold a record
that fits (a byte takes at most six characters of JSON): it stops the load as soon as that
much of it is read.

Each record keeps its expiry time and flags, except the dirty bit (FILE has no backing store
to write it to). A record whose flags say the value is compressed (an entry of a handle with
compression, dumped as it is stored) stops the load: its bytes would be stored as the value.
A record whose expiry time has passed is skipped.
A record with a modseq is stored as `set_if_newer` stores it, and is refused if FILE holds a
newer modseq for the key; a record without one is refused by a live tombstone. Refused records
are named on stderr and make the exit status 1; the others are stored all the same. The last
access time of every loaded entry is the time of the load (`last_access` is not restored).
Entries already in FILE under other keys stay; loading into a cache smaller than the dumped
one evicts entries as any store does.

Prints one summary line: entries loaded, expired records skipped, records refused.";

const STATS_HELP: &str = "\
The file's layout, page lock kind and geometry, then totals for the whole cache, then one row
per page: entries (including expired entries and
tombstones not yet evicted), slots (size of the slot table), used and free bytes of the data
area, reads and hits counted since the statistics were last reset, and resets (times the page
was found damaged and emptied). In the fastmmap layout the file has nowhere to keep a reset
count, so `resets` counts only the resets made by this command.

Then the faults this command itself met while reading the file (each run starts from zero):
dirty lost (write-back values not yet in their backing store, lost with a damaged page this
command reset), backing errors and decode errors (always 0 here: the command has no backing
store and decodes nothing) and lock timeouts.

With --json, one JSON object: file, layout, lock_kind (fcntl or robust), num_pages, page_size,
the totals (entries, slots,
used_bytes, free_bytes, reads, hits, resets), the fault counters (dirty_lost, backing_errors,
decode_errors, lock_timeouts) and `pages`, an array of objects with page,
entries, slots, used_bytes, free_bytes, reads, hits and resets.";

const CHECK_HELP: &str = "\
Validates every page completely (header, slot table, every entry), locking one page at a time,
without changing a byte of the file. Prints a line `page N: REASON` for each damaged page,
then a summary line. Exits 0 when every page is valid and 3 otherwise; a native file whose
header is damaged, or whose size disagrees with its header, also exits 3, and so does an
empty FILE (0 bytes) of either layout, which is no cache file at all (--repair leaves it
alone too: `fastmmap create` makes cache files).

With --repair, each damaged page is reset (emptied) after it is reported, and the exit status
is 0 once every page is valid again.";

/// `fastmmap <COMMAND> [OPTIONS] <FILE> [ARGS]`
#[derive(Debug, Parser)]
#[command(
    name = "fastmmap",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP,
    override_usage = "fastmmap <COMMAND> [OPTIONS] <FILE> [ARGS]",
    subcommand_required = true,
    arg_required_else_help = true
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) file: FileOptions,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How to open FILE; accepted before or after the command name.
#[derive(Clone, Debug, Args)]
pub(crate) struct FileOptions {
    /// File layout: `native` (with a header) or `fastmmap` (Perl's Cache::FastMmap file)
    #[arg(
        long,
        value_enum,
        default_value_t = LayoutArg::Native,
        global = true,
        help_heading = "Cache file options"
    )]
    pub(crate) layout: LayoutArg,
    /// Number of pages (default 89; read from the header of a native file)
    #[arg(
        long,
        value_name = "N",
        global = true,
        help_heading = "Cache file options"
    )]
    pub(crate) num_pages: Option<u32>,
    /// Page size in bytes, a power of two from 4096 (default 65536; read from the header of a
    /// native file)
    #[arg(
        long,
        value_name = "BYTES",
        global = true,
        help_heading = "Cache file options"
    )]
    pub(crate) page_size: Option<u32>,
    /// Page lock kind of a new file (`create`; default robust on Linux with glibc, else fcntl;
    /// a fastmmap-layout file always uses fcntl); for other commands, if given,
    /// it must match the kind the file records
    #[arg(
        long,
        value_enum,
        value_name = "KIND",
        global = true,
        help_heading = "Cache file options"
    )]
    pub(crate) lock: Option<LockArg>,
    /// Give up waiting for a page lock after SECONDS (fractions allowed), with exit 2
    /// (default: wait as long as it takes)
    #[arg(
        long,
        value_name = "SECONDS",
        value_parser = parse_timeout,
        global = true,
        help_heading = "Cache file options"
    )]
    pub(crate) lock_timeout: Option<Duration>,
    /// Bytes of the overflow area where values larger than a page are kept (`create`; default
    /// an eighth of the pages' bytes in 4 KiB blocks, 0 for none; read from the header of a
    /// native file, and if given it must match)
    #[arg(
        long,
        value_name = "BYTES",
        global = true,
        help_heading = "Cache file options"
    )]
    pub(crate) overflow_size: Option<u64>,
    /// The largest value the overflow area takes (`create`; default an eighth of the file and
    /// at most half the area; read from the header of a native file, and if given it must
    /// match)
    #[arg(
        long,
        value_name = "BYTES",
        global = true,
        help_heading = "Cache file options"
    )]
    pub(crate) max_value_size: Option<u32>,
}

/// The longest `--lock-timeout`: far beyond any wait worth setting, and small enough that a
/// deadline computed from it cannot overflow.
const MAX_LOCK_TIMEOUT_SECS: f64 = u32::MAX as f64;

/// `--lock-timeout`: seconds as a decimal number, such as `2` or `0.25`.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(0.0..=MAX_LOCK_TIMEOUT_SECS).contains(&secs) {
        return Err(format!(
            "must be from 0 to {MAX_LOCK_TIMEOUT_SECS} seconds (leave it out to wait forever)"
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

/// The `--layout` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LayoutArg {
    /// The native layout: a header records geometry, hash and lock kind
    Native,
    /// Byte-compatible with Perl's Cache::FastMmap (no header)
    Fastmmap,
}

impl LayoutArg {
    pub(crate) fn layout(self) -> Layout {
        match self {
            LayoutArg::Native => Layout::Native,
            LayoutArg::Fastmmap => Layout::FastMmap,
        }
    }
}

/// The `--lock` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LockArg {
    /// An fcntl lock per page, as Cache::FastMmap takes them
    Fcntl,
    /// A process-shared robust mutex per page (native layout; Linux with glibc)
    Robust,
}

impl LockArg {
    pub(crate) fn lock_kind(self) -> LockKind {
        match self {
            LockArg::Fcntl => LockKind::Fcntl,
            LockArg::Robust => LockKind::Robust,
        }
    }
}

/// A key on the command line.
#[derive(Debug, Args)]
pub(crate) struct KeyArgs {
    /// The cache file
    pub(crate) file: PathBuf,
    /// The key (bytes as given; see --escaped)
    pub(crate) key: OsString,
    /// KEY (and VALUE) are in the escaped form `keys` prints: `\\` and `\xNN`
    #[arg(long, short = 'e')]
    pub(crate) escaped: bool,
}

/// Just the cache file.
#[derive(Debug, Args)]
pub(crate) struct FileArg {
    /// The cache file
    pub(crate) file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create a new cache file with the given layout, geometry and lock kind (FILE must not
    /// exist)
    Create(FileArg),
    /// Print the value of KEY to stdout, as raw bytes with nothing added; exit 1 if absent
    Get(KeyArgs),
    /// Store VALUE under KEY ("-" reads the value from stdin); never expires unless --expire
    Set {
        #[command(flatten)]
        key: KeyArgs,
        /// The value, or "-" to read it from stdin (up to the most that fits in a page with
        /// KEY: a longer value is refused after one byte more, and nothing is stored)
        value: OsString,
        /// Expire the entry this many seconds from now
        #[arg(long, value_name = "SECONDS")]
        expire: Option<u64>,
    },
    /// Remove KEY; exit 1 if it was absent
    Remove(KeyArgs),
    /// Print every live key, one per line (non-printable bytes escaped; see --help)
    Keys(FileArg),
    /// Layout, lock kind and geometry; totals and per-page entries, bytes, reads, hits, resets
    #[command(long_about = STATS_HELP)]
    Stats {
        #[command(flatten)]
        file: FileArg,
        /// One JSON object with the totals and a `pages` array
        #[arg(long)]
        json: bool,
    },
    /// Validate every page without changing anything; exit 3 if any is damaged
    #[command(long_about = CHECK_HELP)]
    Check {
        #[command(flatten)]
        file: FileArg,
        /// Reset every damaged page (its entries are lost)
        #[arg(long)]
        repair: bool,
    },
    /// Drop expired entries
    Purge(FileArg),
    /// Drop every entry
    Clear(FileArg),
    /// Print every live entry as JSON lines (key, value, expire_on, last_access, flags)
    #[command(long_about = DUMP_HELP)]
    Dump(FileArg),
    /// Store the entries of `dump` output read from stdin (expired records are skipped)
    #[command(long_about = LOAD_HELP)]
    Load(FileArg),
    /// Move a native cache, while it is in use, to a new file of N pages (and --page-size
    /// BYTES, default: as it is) that takes FILE's name; every user follows by itself
    #[command(long_about = RESIZE_HELP)]
    Resize {
        #[command(flatten)]
        file: FileArg,
        /// Pages of the new file
        #[arg(long, value_name = "N")]
        pages: u32,
    },
}

const RESIZE_HELP: &str = "\
Move a native cache, while other threads and processes keep using it, to a new file of --pages \
N pages of --page-size BYTES (default: the page size it has), which takes FILE's name. Every \
user of the cache follows the move by itself at its next operation. Entries that do not fit \
the new geometry are evicted by their new page's policy and counted. While the entries are \
copied every page is locked: operations wait for the copy (see the README, \"Resizing a live \
cache\"). Each lock is waited for at most --lock-timeout (default 10 seconds here). Exits 2 if \
another resize of FILE is in progress.";
