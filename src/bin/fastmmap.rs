//! The `fastmmap` command: inspect and repair a cache file from a shell, as `mdb_stat` and
//! `mdb_dump` do for LMDB. Built with the `cli` feature; it uses only the crate's public API.
//!
//! ```text
//! fastmmap <COMMAND> [OPTIONS] <FILE> [ARGS]
//!   options: --layout native|fastmmap (default native)
//!            --num-pages N --page-size BYTES
//!            --lock fcntl|robust   (default: the file's kind; fcntl for a new file)
//!            --lock-timeout SECONDS (default: wait forever; fractions allowed)
//!   create  <FILE>                 create a new file with the given layout, geometry and
//!                                  lock kind
//!   get     <FILE> <KEY>           value bytes to stdout, nothing added; exit 1 if absent
//!   set     <FILE> <KEY> <VALUE>   [--expire SECONDS]; VALUE "-" reads the value from stdin
//!   remove  <FILE> <KEY>           exit 1 if absent
//!   keys    <FILE>                 one key per line (non-printable bytes escaped)
//!   stats   <FILE> [--json]        layout, lock kind, geometry; totals and per page:
//!                                  entries, slots, used/free bytes, reads, hits, resets
//!   check   <FILE> [--repair]      validate every page without changing anything; exit 0 if
//!                                  all valid, 3 otherwise, with a line per bad page
//!   purge   <FILE>                 drop expired entries
//!   clear   <FILE>                 drop everything
//!   dump    <FILE>                 JSON lines: key, value, expire_on, last_access, flags
//!   load    <FILE>                 read `dump` output from stdin
//! exit codes: 0 ok, 1 not found (or a store refused), 2 usage, I/O or lock timeout error,
//!             3 check failed
//! ```
//!
//! The options may come before or after the command name. `get`, `set` and `remove` also take
//! `--escaped`.
//!
//! # Decisions
//!
//! - **Only `create` creates a file**, and only a new one: it refuses an existing FILE. Every
//!   other command — `set` and `load` too — exits 2 on a missing FILE with a message pointing
//!   at `create`, so a mistyped path never leaves a fresh empty cache behind.
//! - **Geometry.** A native file's geometry comes from its header; `--num-pages` and
//!   `--page-size`, if given, must agree with it. A fastmmap-layout file has no header: give
//!   the values it was made with, unless they are the defaults (89 × 65536).
//! - **Lock kind.** `create --lock robust` makes a native file with `LockKind::Robust`; without
//!   `--lock` a new file gets `LockKind::Fcntl`, as the library gives it. Every other command
//!   leaves the kind unset, so it works on files of either kind: the library opens a native
//!   file with the kind its header records (a fastmmap-layout file is always fcntl). `--lock`
//!   given to them must match the file, else the library's `LockKindMismatch` exits 2;
//!   `--layout fastmmap --lock robust` is the library's `InvalidOptions`, exit 2, and nothing
//!   is created. `stats` shows the kind.
//! - **Lock timeout.** By default a command waits for a page lock as long as another process
//!   holds it, as the library does. `--lock-timeout SECONDS` (`CacheBuilder::lock_timeout`;
//!   a decimal number such as `0.5`, at most `u32::MAX` so that no deadline overflows) turns
//!   that wait into the library's `LockTimeout` error, exit 2.
//! - **Keys and values are bytes.** KEY and VALUE are the bytes of the command-line argument
//!   (`OsStrExt::as_bytes`). With `--escaped` they are read in the escaped form `keys` prints,
//!   which can name any key, including one with a NUL byte. `set --expire SECONDS` stores with
//!   `Expiry::After`; without it the entry never expires. A store refused by a live tombstone
//!   exits 1 with a message.
//! - **`keys` escaping** ([`escape`]): printable ASCII and printable UTF-8 characters stand
//!   for themselves, a backslash is `\\`, every other byte (control characters, whitespace
//!   other than the space, invalid UTF-8) is `\xNN`. One key per line, losslessly.
//! - **`check`** opens the file and runs `Cache::validate`, which locks each page in turn and
//!   writes nothing. It prints `page N: REASON` per damaged page and a summary line, and
//!   exits 3 if any page is damaged — or if a native header is damaged or disagrees with the
//!   file's size, or if FILE is empty (0 bytes, in either layout: no geometry is that small,
//!   so it is no cache file whatever the options; `--repair` does not write to it either).
//!   `check --repair` then resets the damaged pages (`CacheBuilder::verify`) and
//!   exits 0 once every page is valid. Every other command resets a page whose header it
//!   finds damaged when it locks the page, as the library always does.
//! - **`dump`** ([`record`]): one JSON object per line, in page order: `key` and `value` as
//!   strings when they are valid UTF-8, otherwise `key_base64` / `value_base64` (standard,
//!   padded); `expire_on` (Unix seconds, or null for never); `last_access` (Unix seconds);
//!   `flags` (the `EntryFlags` bits); and `modseq`, present only on entries stored by
//!   `set_if_newer`. Expired entries and tombstones are not dumped. Pages are read one at a
//!   time, so the dump of a busy cache is not a snapshot of one instant.
//! - **`load`** reads and checks the whole input before it stores anything: a malformed line,
//!   flags that cannot be stored (the tombstone bit; the undef bit on a non-empty value, which
//!   Perl would read as undef and `Cache::set_with_flags` refuses) or an entry too large for
//!   FILE's pages exits 2 as `stdin:LINE: REASON` and stores nothing (an error while
//!   storing, such as a failing lock, leaves the earlier records stored). Records keep their
//!   flags (`set_with_flags`) and expiry (`Expiry::At`); records already expired are skipped;
//!   records with a modseq are stored with `set_if_newer`, with their expiry. `last_access`
//!   cannot be restored: loaded entries are accessed at load time. A record refused by a
//!   tombstone or a newer modseq is named on stderr and makes the exit status 1. A summary
//!   line goes to stdout.
//! - **An empty FILE** (0 bytes), which the library reports as a size mismatch, is named as
//!   such by every command: `FILE: is empty (0 bytes): not a cache file`, pointing at
//!   `create`. Nothing writes to it.
//! - **Errors** from the library print as `fastmmap: FILE: MESSAGE` on stderr and exit 2;
//!   clap's usage errors exit 2 as well. A closed stdout (`fastmmap keys f | head -1`) ends
//!   the command quietly with status 0.

use std::process::ExitCode;

use clap::Parser;

#[path = "fastmmap/args.rs"]
mod args;
#[path = "fastmmap/commands.rs"]
mod commands;
#[path = "fastmmap/escape.rs"]
mod escape;
#[path = "fastmmap/failure.rs"]
mod failure;
#[path = "fastmmap/input.rs"]
mod input;
#[path = "fastmmap/record.rs"]
mod record;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    match commands::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.exit(),
    }
}
