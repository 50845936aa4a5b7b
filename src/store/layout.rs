//! The two file layouts, the page lock kinds, and how keys are hashed in each.

use std::fmt;

use xxhash_rust::xxh3::xxh3_64;

use crate::page::consts::PAGE_MAGIC;

/// How the cache file is laid out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Layout {
    /// A file header records the geometry, hash and lock kind, with a per-page table of
    /// crash markers; keys are hashed with xxh3. The default.
    #[default]
    Native,
    /// Byte-compatible with Perl's Cache::FastMmap: no header, its key hash, its lock ranges.
    /// The geometry must be given (or be the defaults), as in Perl.
    FastMmap,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Native => "native fastmmap",
            Layout::FastMmap => "Cache::FastMmap",
        })
    }
}

/// How page locks are taken.
///
/// A new native file gets [`LockKind::default`]: `Robust` where the platform has robust
/// mutexes (Linux with glibc), else `Fcntl`. A Cache::FastMmap-layout file always uses
/// `Fcntl`, as Perl does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LockKind {
    /// An in-process mutex per page, then an `fcntl` write lock on the page's byte range, as
    /// Cache::FastMmap does. The kernel releases it when its owner dies. The lock state lives
    /// in the kernel, out of reach of a process that writes the file without the protocol.
    Fcntl,
    /// A process-shared robust mutex per page, kept in the native header's page table: one
    /// lock excludes threads and processes alike, and costs tens of nanoseconds instead of
    /// a system call. When a process dies holding it, the next locker is told, resets the
    /// page if the dead process was changing it, and carries on. Native layout only, and
    /// only where the platform has robust mutexes (Linux with glibc); elsewhere asking for it
    /// is an [`Error::InvalidOptions`](crate::Error::InvalidOptions).
    Robust,
}

impl Default for LockKind {
    /// `Robust` where available (Linux with glibc), else `Fcntl`.
    fn default() -> Self {
        if super::ROBUST_LOCKS_AVAILABLE {
            LockKind::Robust
        } else {
            LockKind::Fcntl
        }
    }
}

impl fmt::Display for LockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockKind::Fcntl => "fcntl",
            LockKind::Robust => "robust",
        })
    }
}

impl LockKind {
    /// The value recorded in the native header.
    pub(crate) fn code(self) -> u32 {
        match self {
            LockKind::Fcntl => 1,
            LockKind::Robust => 2,
        }
    }

    pub(crate) fn from_code(code: u32) -> Option<LockKind> {
        match code {
            1 => Some(LockKind::Fcntl),
            2 => Some(LockKind::Robust),
            _ => None,
        }
    }
}

/// The key hash of a layout: which page a key lives in, and where its probe chain starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyHash {
    Xxh3,
    FastMmap,
}

/// Header code of [`KeyHash::Xxh3`].
pub(crate) const HASH_XXH3: u32 = 1;

impl KeyHash {
    pub(crate) fn of(layout: Layout) -> KeyHash {
        match layout {
            Layout::Native => KeyHash::Xxh3,
            Layout::FastMmap => KeyHash::FastMmap,
        }
    }

    /// The key's whole hash: its page in a file of `n` pages is the hash modulo `n`.
    #[inline]
    pub(crate) fn hash(self, key: &[u8]) -> u64 {
        match self {
            KeyHash::Xxh3 => xxh3_64(key),
            KeyHash::FastMmap => u64::from(fastmmap_hash(key)),
        }
    }

    /// `(page, slot_hash)` for `key` in a file of `num_pages` pages.
    #[inline]
    pub(crate) fn locate(self, key: &[u8], num_pages: u32) -> (u32, u32) {
        self.split(self.hash(key), num_pages)
    }

    /// `(page, slot_hash)` of a key whose [`hash`](Self::hash) is `h`, in a file of
    /// `num_pages` pages.
    #[inline]
    pub(crate) fn split(self, h: u64, num_pages: u32) -> (u32, u32) {
        match self {
            KeyHash::Xxh3 => ((h % u64::from(num_pages)) as u32, (h >> 32) as u32),
            KeyHash::FastMmap => {
                let h = h as u32;
                (h % num_pages, h / num_pages)
            }
        }
    }
}

/// Cache::FastMmap's key hash.
#[inline]
pub(crate) fn fastmmap_hash(key: &[u8]) -> u32 {
    key.iter().fold(PAGE_MAGIC, |h, &b| {
        (h << 4).wrapping_add(h >> 28).wrapping_add(u32::from(b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fastmmap_hash_matches_the_c_loop() {
        // h = 0x92f7e3b1; h = (h << 4) + (h >> 28) + byte, in wrapping u32 arithmetic.
        let mut h: u32 = 0x92f7_e3b1;
        for &b in b"hello world" {
            h = (h << 4).wrapping_add(h >> 28).wrapping_add(u32::from(b));
        }
        assert_eq!(fastmmap_hash(b"hello world"), h);
        assert_eq!(fastmmap_hash(b""), 0x92f7_e3b1);
        let (page, slot) = KeyHash::FastMmap.locate(b"hello world", 89);
        assert_eq!((page, slot), (h % 89, h / 89));
    }

    #[test]
    fn xxh3_pages_in_range() {
        for i in 0..1000u32 {
            let (page, _) = KeyHash::Xxh3.locate(&i.to_le_bytes(), 7);
            assert!(page < 7);
        }
    }
}
