//! Loads from a page's bytes, through one small interface: the plain bytes of a page whose lock
//! is held, or atomic loads from a page that others may be changing (an optimistic read, which
//! the store layer validates afterwards). Every load is bounds-checked and returns `None`
//! outside the page.

use super::consts::ENTRY_HEADER_SIZE;
use super::header::get_u32;

/// A page's bytes, as the page code reads them.
pub trait PageBytes {
    /// The page size.
    fn page_len(&self) -> usize;

    /// The native-endian `u32` at `off` (a multiple of 4 wherever the format puts one).
    fn u32_at(&self, off: usize) -> Option<u32>;

    /// The `N` words from `off` on: the page header, or an entry header.
    fn words<const N: usize>(&self, off: usize) -> Option<[u32; N]> {
        let mut words = [0u32; N];
        for (i, w) in words.iter_mut().enumerate() {
            *w = self.u32_at(off.checked_add(i * 4)?)?;
        }
        Some(words)
    }

    /// The six words of the entry header at `off`.
    #[inline]
    fn entry_words(&self, off: usize) -> Option<[u32; ENTRY_HEADER_SIZE / 4]> {
        self.words(off)
    }

    /// Whether the bytes at `off` are exactly `expected`.
    fn eq_at(&self, off: usize, expected: &[u8]) -> Option<bool>;

    /// Appends the `len` bytes at `off` to `out`.
    fn copy_to(&self, off: usize, len: usize, out: &mut Vec<u8>) -> Option<()>;
}

impl PageBytes for [u8] {
    #[inline]
    fn page_len(&self) -> usize {
        self.len()
    }

    #[inline]
    fn u32_at(&self, off: usize) -> Option<u32> {
        get_u32(self, off)
    }

    #[inline]
    fn words<const N: usize>(&self, off: usize) -> Option<[u32; N]> {
        let bytes = self.get(off..)?.get(..N * 4)?;
        // One bounds check above; `chunks_exact(4)` yields exactly N pieces of 4.
        let mut words = [0u32; N];
        for (w, b) in words.iter_mut().zip(bytes.chunks_exact(4)) {
            *w = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
        }
        Some(words)
    }

    #[inline]
    fn eq_at(&self, off: usize, expected: &[u8]) -> Option<bool> {
        let end = off.checked_add(expected.len())?;
        Some(self.get(off..end)? == expected)
    }

    #[inline]
    fn copy_to(&self, off: usize, len: usize, out: &mut Vec<u8>) -> Option<()> {
        let end = off.checked_add(len)?;
        out.extend_from_slice(self.get(off..end)?);
        Some(())
    }
}
