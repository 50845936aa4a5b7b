//! How a command ends when it does not succeed: the exit status and the message on stderr.

use std::fmt::Display;
use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

/// Why a command did not succeed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Exit 1, silently: the key is absent (`get`, `remove`).
    NotFound,
    /// Exit 1: stores refused by a tombstone or a newer modseq (already reported).
    Refused,
    /// Exit 2: usage, input or I/O error; the message follows `fastmmap: `.
    Error(String),
    /// Exit 3: `check` found damage (reported on stdout), or with a message on stderr.
    CheckFailed(Option<String>),
    /// Exit 0, silently: whoever reads stdout stopped reading (`fastmmap keys f | head -1`).
    BrokenPipe,
}

impl Failure {
    /// An error about `path`: `fastmmap: PATH: MESSAGE`.
    pub(crate) fn at(path: &Path, message: impl Display) -> Failure {
        Failure::Error(format!("{}: {message}", path.display()))
    }

    /// A failed write to stdout.
    pub(crate) fn stdout(e: io::Error) -> Failure {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Failure::BrokenPipe
        } else {
            Failure::Error(format!("writing to stdout: {e}"))
        }
    }

    /// Reports the failure on stderr and gives the exit status.
    pub(crate) fn exit(self) -> ExitCode {
        let (code, message) = match self {
            Failure::NotFound | Failure::Refused => (1, None),
            Failure::Error(m) => (2, Some(m)),
            Failure::CheckFailed(m) => (3, m),
            Failure::BrokenPipe => (0, None),
        };
        if let Some(m) = message {
            // Nothing better to do if stderr is gone too.
            let _ = writeln!(io::stderr().lock(), "fastmmap: {m}");
        }
        ExitCode::from(code)
    }
}

/// Library errors name the file first: `fastmmap: FILE: MESSAGE`.
impl From<fastmmap::Error> for Failure {
    fn from(e: fastmmap::Error) -> Failure {
        Failure::Error(empty_file(&e).unwrap_or_else(|| e.to_string()))
    }
}

/// The message for a FILE of 0 bytes. The library reports it as a size mismatch
/// (`WrongSize`: "file is 0 bytes, its geometry needs exactly 128"), which reads as if a
/// geometry option were wrong; no geometry of either layout has 0 bytes.
pub(crate) fn empty_file(e: &fastmmap::Error) -> Option<String> {
    match e {
        fastmmap::Error::WrongSize { path, found: 0, .. } => Some(format!(
            "{}: is empty (0 bytes): not a cache file; a cache file is created by \
             `fastmmap create`, which refuses an existing FILE (remove this empty one first)",
            path.display()
        )),
        _ => None,
    }
}

/// A warning that does not stop the command: `fastmmap: MESSAGE` on stderr.
pub(crate) fn warn(message: impl Display) {
    let _ = writeln!(io::stderr().lock(), "fastmmap: {message}");
}
