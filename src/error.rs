//! The crate's one error type.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::{Layout, LockKind};

/// Everything that can go wrong opening or using a cache. Every variant names the file.
///
/// A miss, or a store refused by the modseq rules, is an ordinary return value, not an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on the cache file failed.
    #[error("{path}: {op} failed: {source}")]
    Io {
        /// The cache file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The directory the cache file should live in does not exist.
    #[error("{path}: directory {} does not exist", dir.display())]
    MissingDirectory {
        /// The cache file.
        path: PathBuf,
        /// The missing directory.
        dir: PathBuf,
    },

    /// The operating system refused access to the cache file or its directory.
    #[error("{path}: permission denied ({op}): {source}")]
    PermissionDenied {
        /// The cache file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The options given to the builder are unusable.
    #[error("{path}: invalid options: {reason}")]
    InvalidOptions {
        /// The cache file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// The file's geometry differs from the one explicitly asked for.
    #[error("{path}: the file has {field} {found}, but {requested} was asked for")]
    GeometryMismatch {
        /// The cache file.
        path: PathBuf,
        /// `num_pages`, `page_size` or `start_slots`.
        field: &'static str,
        /// What the builder asked for.
        requested: u64,
        /// What the file has.
        found: u64,
    },

    /// The file is of the other layout (or of none this crate knows).
    #[error("{path}: expected a {expected} file, found {found}")]
    WrongLayout {
        /// The cache file.
        path: PathBuf,
        /// The layout asked for.
        expected: Layout,
        /// What the file looks like.
        found: &'static str,
    },

    /// The native file header is damaged or from an unsupported format version.
    #[error("{path}: bad file header: {reason}")]
    BadHeader {
        /// The cache file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The file's size does not match its geometry (short, truncated or grown).
    #[error("{path}: file is {found} bytes, its geometry needs exactly {expected}")]
    WrongSize {
        /// The cache file.
        path: PathBuf,
        /// The size the geometry needs.
        expected: u64,
        /// The size found.
        found: u64,
    },

    /// The file was created for another lock kind; mixed kinds would not exclude each other.
    #[error("{path}: the file uses {found} page locks, but {requested} locks were asked for")]
    LockKindMismatch {
        /// The cache file.
        path: PathBuf,
        /// The kind asked for.
        requested: LockKind,
        /// The kind recorded in the file.
        found: LockKind,
    },

    /// The key and value cannot fit in an empty page. Nothing was changed.
    #[error("{path}: entry of {needed} bytes cannot fit in a page (at most {max})")]
    TooLarge {
        /// The cache file.
        path: PathBuf,
        /// Bytes the entry needs (header, key, value, padding).
        needed: usize,
        /// The largest entry an empty page holds.
        max: usize,
    },

    /// The value is larger than the file's overflow area takes (its `max_value_size`).
    /// Nothing was changed.
    #[error(
        "{path}: a value of {len} bytes is larger than the cache's max_value_size ({max} bytes)"
    )]
    ValueTooLarge {
        /// The cache file.
        path: PathBuf,
        /// Bytes of the value.
        len: usize,
        /// The largest value the file's overflow area takes.
        max: usize,
    },

    /// The overflow area has no room for a large value, even after evicting other large
    /// values it could. Nothing was changed.
    #[error(
        "{path}: the overflow area has no room for a value of {needed} blocks ({free} free \
         after evicting what could be evicted)"
    )]
    OverflowFull {
        /// The cache file.
        path: PathBuf,
        /// Blocks the value needs.
        needed: u32,
        /// Free blocks found.
        free: u32,
    },

    /// Code running under one of this cache's page locks called back into the same cache.
    #[error("{path}: re-entrant call: this thread already holds a page lock of this cache")]
    Reentrant {
        /// The cache file.
        path: PathBuf,
    },

    /// A lock could not be taken within the configured `lock_timeout`.
    #[error("{path}: timed out after {timeout:?} waiting for the {lock} of page {page}")]
    LockTimeout {
        /// The cache file.
        path: PathBuf,
        /// The page.
        page: u32,
        /// Which of the page's locks was waited for.
        lock: LockRole,
        /// The configured timeout.
        timeout: Duration,
    },

    /// Opening a file with robust locks waits for the file's openers lock while another
    /// process holds it exclusively: one opening the file first, which reinitialises every
    /// lock, or one stopped (or hostile) while holding it. This is that wait running past
    /// the handle's `lock_timeout`. Nothing was opened.
    #[error(
        "{path}: timed out after {timeout:?} waiting for the file's openers lock (another process \
         holds it: one opening the file first, or stopped while doing so)"
    )]
    OpenersLockTimeout {
        /// The cache file.
        path: PathBuf,
        /// The configured timeout.
        timeout: Duration,
    },

    /// A page was damaged while in use and could not be repaired by resetting it.
    #[error("{path}: page {page} is damaged: {reason}")]
    PageCorrupt {
        /// The cache file.
        path: PathBuf,
        /// The page.
        page: u32,
        /// What was wrong.
        reason: &'static str,
    },

    /// Taking or releasing a lock failed.
    #[error("{path}: taking the {lock} of page {page} failed: {source}")]
    Lock {
        /// The cache file.
        path: PathBuf,
        /// The page.
        page: u32,
        /// Which of the page's locks.
        lock: LockRole,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The filesystem has no room for a new cache file. Nothing is left behind.
    #[error("{path}: no room on the filesystem for a new cache file of {needed} bytes: {source}")]
    NoSpace {
        /// The cache file.
        path: PathBuf,
        /// The file's size.
        needed: u64,
        /// The operating system's error (out of space, or over a quota).
        #[source]
        source: io::Error,
    },

    /// The file belongs to another user, who could read or change everything in it. See
    /// [`CacheBuilder::allow_owner`](crate::CacheBuilder::allow_owner).
    #[error(
        "{path}: owned by uid {owner}, not by this user (uid {user}) or root: refused, since its \
         owner controls everything read from it (CacheBuilder::allow_owner trusts an owner)"
    )]
    ForeignOwner {
        /// The cache file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective user id.
        user: u32,
    },

    /// The path is a symbolic link, which is not followed unless
    /// [`CacheBuilder::follow_symlinks`](crate::CacheBuilder::follow_symlinks) allows it, or a
    /// link whose target does not exist.
    #[error(
        "{path}: {}",
        if *.dangling {
            "a dangling symbolic link: its target does not exist (create the cache at the \
             target's path, or remove the link)"
        } else {
            "a symbolic link, which is not followed (CacheBuilder::follow_symlinks allows it)"
        }
    )]
    Symlink {
        /// The cache file's path.
        path: PathBuf,
        /// Whether the link's target is missing.
        dangling: bool,
    },

    /// The directory for the default cache file (no [`CacheBuilder::path`](crate::CacheBuilder::path)
    /// given) is not private to this user: another user may have created it first, or it is
    /// open to others. Nothing was created in it.
    #[error(
        "{dir}: {reason}: refused as the directory of the default cache file; remove it (or \
         make it a directory of this user's with mode 0700), or give the cache a path \
         (CacheBuilder::path)"
    )]
    UnsafeDirectory {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The file is not a cache file: it is left untouched. For a Cache::FastMmap-layout file
    /// (which has no header), page 0 is neither a valid page nor empty;
    /// [`CacheBuilder::reset`](crate::CacheBuilder::reset) or
    /// [`CacheBuilder::verify`](crate::CacheBuilder::verify) declare the file a cache and
    /// overwrite what they cannot read.
    #[error(
        "{path}: not a cache file: {}; it was left untouched",
        match page {
            Some(page) => format!(
                "page {page} is neither a Cache::FastMmap page nor empty ({reason}); \
                 CacheBuilder::reset or verify, or `fastmmap check --repair`, overwrite it"
            ),
            None => reason.clone(),
        }
    )]
    NotACache {
        /// The file.
        path: PathBuf,
        /// The page that gave it away, if one did.
        page: Option<u32>,
        /// What was found.
        reason: String,
    },

    /// A change was asked of a cache opened read-only.
    #[error("{path}: the cache was opened read-only")]
    ReadOnly {
        /// The cache file.
        path: PathBuf,
    },

    /// The value cannot be stored as given: for example the `undef` flag
    /// ([`EntryFlags::UNDEF`](crate::EntryFlags::UNDEF)) together with value bytes, which Perl
    /// would read as `undef`, losing the bytes. Nothing was changed.
    #[error("{path}: invalid value: {reason}")]
    InvalidValue {
        /// The cache file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// The backing store failed (see [`Backing`](crate::Backing)). A failed write-through
    /// `set` left the cache as it was; a dirty entry that could not be written back is still
    /// in the cache, still dirty.
    #[error(
        "{path}: backing store {op}{} failed: {source}",
        key.as_deref().map(|k| format!(" of key {}", show_key(k))).unwrap_or_default()
    )]
    Backing {
        /// The cache file.
        path: PathBuf,
        /// `load`, `store` or `delete`.
        op: &'static str,
        /// The key the store was called for, if one.
        key: Option<Vec<u8>>,
        /// What the store returned.
        #[source]
        source: crate::BackingError,
    },

    /// A stored value could not be decoded: it does not decompress, or a typed codec cannot
    /// read it as the type asked for. Nothing was changed.
    #[error("{path}: the value of key {} does not decode: {source}", show_key(key))]
    Decode {
        /// The cache file.
        path: PathBuf,
        /// The key.
        key: Vec<u8>,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// A value could not be encoded by a typed codec. Nothing was changed.
    #[error(
        "{path}: the value for key {} does not encode: {source}",
        show_key(key)
    )]
    Encode {
        /// The cache file.
        path: PathBuf,
        /// The key.
        key: Vec<u8>,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// Another process or thread is resizing this cache (see [`Cache::resize`](crate::Cache::resize));
    /// nothing was changed.
    #[error("{path}: a resize is already in progress{}", pid.map(|p| format!(" (by process {p})")).unwrap_or_default())]
    ResizeInProgress {
        /// The cache file.
        path: PathBuf,
        /// The resizing process, if the system said.
        pid: Option<i32>,
    },

    /// A resize could not be done, or the file a resize moved the cache to could not be
    /// followed; `reason` says why.
    #[error("{path}: resize: {reason}")]
    Resize {
        /// The cache file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Which of a page's locks an [`Error::LockTimeout`] or [`Error::Lock`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LockRole {
    /// The page lock, which every operation on the page holds while it reads or changes it.
    Page,
    /// The page's write-back lock, which a cache with a backing store holds around its calls
    /// of the store for keys of the page (see [`Backing`](crate::Backing)), so that they
    /// reach the store in order.
    WriteBack,
}

impl std::fmt::Display for LockRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LockRole::Page => "page lock",
            LockRole::WriteBack => "write-back lock",
        })
    }
}

impl Error {
    /// This error with no key in it: for callers whose keys are secrets (a session's key
    /// holds its id) and for log events. The key's length stays in a `Decode`/`Encode`
    /// message as `<N-byte key>`.
    #[cfg_attr(not(feature = "session"), allow(dead_code))]
    pub(crate) fn without_key(self) -> Error {
        let hidden = |key: &[u8]| format!("<{}-byte key>", key.len()).into_bytes();
        match self {
            Error::Backing {
                path, op, source, ..
            } => Error::Backing {
                path,
                op,
                key: None,
                source,
            },
            Error::Decode { path, key, source } => Error::Decode {
                path,
                key: hidden(&key),
                source,
            },
            Error::Encode { path, key, source } => Error::Encode {
                path,
                key: hidden(&key),
                source,
            },
            other => other,
        }
    }
}

/// `error`'s message without its key (for log events: keys may be secrets, as a session's
/// holds its id): a key's length stands in for it.
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) struct KeyHidden<'e>(pub(crate) &'e Error);

impl std::fmt::Display for KeyHidden<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Error::Backing {
                path,
                op,
                key: Some(key),
                source,
            } => write!(
                f,
                "{}: backing store {op} of a {}-byte key failed: {source}",
                path.display(),
                key.len()
            ),
            Error::Decode { path, key, source } => write!(
                f,
                "{}: the value of a {}-byte key does not decode: {source}",
                path.display(),
                key.len()
            ),
            Error::Encode { path, key, source } => write!(
                f,
                "{}: the value for a {}-byte key does not encode: {source}",
                path.display(),
                key.len()
            ),
            other => other.fmt(f),
        }
    }
}

/// A key for a message: printable ASCII as it is, anything else as `\xNN`, at most 100 bytes.
fn show_key(key: &[u8]) -> String {
    let mut out = String::from("\"");
    for &b in key.iter().take(100) {
        match b {
            b'\\' | b'"' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    if key.len() > 100 {
        out.push('…');
    }
    out.push('"');
    out
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_send_sync_static() {
        fn assert_bounds<T: Send + Sync + 'static + std::error::Error>() {}
        assert_bounds::<Error>();
    }

    #[test]
    fn messages_name_the_file() {
        let e = Error::TooLarge {
            path: "/tmp/x.cache".into(),
            needed: 70000,
            max: 65148,
        };
        assert!(e.to_string().contains("/tmp/x.cache"), "{e}");
    }

    #[test]
    fn keys_can_be_hidden() {
        let with_key = || Error::Backing {
            path: "/tmp/x.cache".into(),
            op: "store",
            key: Some(b"session:SECRETID".to_vec()),
            source: "database is locked".into(),
        };
        let hidden = KeyHidden(&with_key()).to_string();
        assert_eq!(
            hidden,
            "/tmp/x.cache: backing store store of a 16-byte key failed: database is locked"
        );
        let without = with_key().without_key().to_string();
        assert!(!without.contains("SECRET"), "{without}");
        let decode = Error::Decode {
            path: "/tmp/x.cache".into(),
            key: b"session:SECRETID".to_vec(),
            source: "bad frame".into(),
        };
        assert!(!KeyHidden(&decode).to_string().contains("SECRET"));
        assert!(!decode.without_key().to_string().contains("SECRET"));
    }

    #[test]
    fn keys_are_shown_escaped() {
        let e = Error::Backing {
            path: "/tmp/x.cache".into(),
            op: "store",
            key: Some(b"a\"b\xff".to_vec()),
            source: "database is locked".into(),
        };
        assert_eq!(
            e.to_string(),
            "/tmp/x.cache: backing store store of key \"a\\\"b\\xff\" failed: database is locked"
        );
        assert!(std::error::Error::source(&e).is_some());
    }
}
