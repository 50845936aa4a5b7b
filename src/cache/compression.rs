//! Value compression (features `lz4` and `zstd`): per value, above a size threshold, and
//! flagged in the entry, so that compressed and plain entries live side by side in one file.
//!
//! The flag (two bits of the entry's flag word, see `docs/format.md`) names the compressor, so
//! any handle built with the feature reads any compressed entry, whatever compression it was
//! opened with; a value that did not shrink is stored plain. Perl's Cache::FastMmap compresses
//! every value and flags none: its entries read as plain bytes here, for a Perl-aware codec
//! (feature `perl`) to decompress.

use crate::page::consts::{FLAG_COMPRESSION, FLAG_LZ4, FLAG_ZSTD};

/// How a cache compresses the values it stores; see `CacheBuilder::compression` (features
/// `lz4`, `zstd`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compression {
    algo: Algo,
    min_size: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Algo {
    #[cfg(feature = "lz4")]
    Lz4,
    #[cfg(feature = "zstd")]
    Zstd(i32),
}

/// Values shorter than this are stored as they are by default: compressing them saves little.
#[cfg_attr(not(any(feature = "lz4", feature = "zstd")), allow(dead_code))]
pub(crate) const DEFAULT_MIN_SIZE: usize = 256;

/// A compressed value never expands to more than this many times a page: a bound against
/// hostile entries (a value this large is never compressed into a page in the first place).
const MAX_EXPANSION_PAGES: usize = 256;

impl Compression {
    /// LZ4 (the `lz4_flex` crate, block format with a 4-byte little-endian length prefix — the
    /// format of Perl's Compress::LZ4). Fast; a modest ratio.
    #[cfg(feature = "lz4")]
    pub fn lz4() -> Compression {
        Compression {
            algo: Algo::Lz4,
            min_size: DEFAULT_MIN_SIZE,
        }
    }

    /// Zstandard at `level` (1–22; 3 is zstd's default). A better ratio than LZ4, slower.
    #[cfg(feature = "zstd")]
    pub fn zstd(level: i32) -> Compression {
        Compression {
            algo: Algo::Zstd(level),
            min_size: DEFAULT_MIN_SIZE,
        }
    }

    /// Compress only values of at least `bytes` bytes (default 256).
    pub fn min_size(mut self, bytes: usize) -> Compression {
        self.min_size = bytes;
        self
    }

    /// The bytes to store for `value` and the flag bits that say how: compressed when it is
    /// long enough and shrinks, else `None` (store it as it is).
    /// `max_plain`: the longest value compressed ([`Cache::plain_limit`]).
    ///
    /// [`Cache::plain_limit`]: crate::Cache
    pub(crate) fn compress(&self, value: &[u8], max_plain: usize) -> Option<(Vec<u8>, u32)> {
        if value.len() < self.min_size || value.len() > max_plain {
            return None;
        }
        let (packed, flag): (Vec<u8>, u32) = self.algo.compress(value)?;
        (packed.len() < value.len()).then_some((packed, flag))
    }
}

impl Algo {
    #[cfg_attr(not(any(feature = "lz4", feature = "zstd")), allow(unused_variables))]
    fn compress(self, value: &[u8]) -> Option<(Vec<u8>, u32)> {
        match self {
            #[cfg(feature = "lz4")]
            Algo::Lz4 => Some((lz4_flex::compress_prepend_size(value), FLAG_LZ4)),
            #[cfg(feature = "zstd")]
            Algo::Zstd(level) => Some((zstd::bulk::compress(value, level).ok()?, FLAG_ZSTD)),
        }
    }
}

/// The longest value compression takes for a page of `page_size` (a file with an overflow
/// area takes its `max_value_size` too).
pub(crate) fn max_plain_len(page_size: u32) -> usize {
    (page_size as usize).saturating_mul(MAX_EXPANSION_PAGES)
}

/// Why a stored value could not be decompressed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct DecompressError(String);

/// Whether an entry with these flags holds a compressed value.
#[inline]
pub(crate) fn is_compressed(flags: u32) -> bool {
    flags & FLAG_COMPRESSION != 0
}

/// The value of an entry stored with `flags`: `stored` itself unless the flags say it was
/// compressed.
pub(crate) fn decompress(
    stored: Vec<u8>,
    flags: u32,
    max: usize,
) -> Result<Vec<u8>, DecompressError> {
    if !is_compressed(flags) {
        return Ok(stored);
    }
    unpack(&stored, flags, max)
}

/// As [`decompress`], for bytes the caller keeps: borrowed back unless the flags say they
/// were compressed (no copy of a plain value).
pub(crate) fn decompress_borrowed(
    stored: &[u8],
    flags: u32,
    max: usize,
) -> Result<std::borrow::Cow<'_, [u8]>, DecompressError> {
    if !is_compressed(flags) {
        return Ok(std::borrow::Cow::Borrowed(stored));
    }
    unpack(stored, flags, max).map(std::borrow::Cow::Owned)
}

/// The value compressed as `stored` by the method `flags` name.
fn unpack(stored: &[u8], flags: u32, max: usize) -> Result<Vec<u8>, DecompressError> {
    match flags & FLAG_COMPRESSION {
        FLAG_LZ4 => lz4(stored, max),
        FLAG_ZSTD => zstd(stored, max),
        _ => Err(DecompressError(format!(
            "unknown compression flags {:#x}",
            flags & FLAG_COMPRESSION
        ))),
    }
}

#[cfg(feature = "lz4")]
fn lz4(stored: &[u8], max: usize) -> Result<Vec<u8>, DecompressError> {
    let (len, block) = stored
        .split_first_chunk::<4>()
        .ok_or_else(|| DecompressError("lz4 value shorter than its length prefix".into()))?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > max {
        return Err(DecompressError(format!(
            "lz4 value claims {len} bytes, more than the {max} any store writes"
        )));
    }
    let out = lz4_flex::block::decompress(block, len)
        .map_err(|e| DecompressError(format!("lz4: {e}")))?;
    if out.len() != len {
        return Err(DecompressError(
            "lz4 value shorter than its length prefix says".into(),
        ));
    }
    Ok(out)
}

#[cfg(not(feature = "lz4"))]
fn lz4(_: &[u8], _: usize) -> Result<Vec<u8>, DecompressError> {
    Err(DecompressError(
        "the value is lz4-compressed: build fastmmap with feature `lz4` to read it".into(),
    ))
}

#[cfg(feature = "zstd")]
fn zstd(stored: &[u8], max: usize) -> Result<Vec<u8>, DecompressError> {
    let len = match zstd::zstd_safe::get_frame_content_size(stored) {
        Ok(Some(len)) => len,
        _ => {
            return Err(DecompressError(
                "zstd value without a frame content size".into(),
            ));
        }
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|&len| len <= max)
        .ok_or_else(|| {
            DecompressError(format!(
                "zstd value claims {len} bytes, more than the {max} any store writes"
            ))
        })?;
    zstd::bulk::decompress(stored, len).map_err(|e| DecompressError(format!("zstd: {e}")))
}

#[cfg(not(feature = "zstd"))]
fn zstd(_: &[u8], _: usize) -> Result<Vec<u8>, DecompressError> {
    Err(DecompressError(
        "the value is zstd-compressed: build fastmmap with feature `zstd` to read it".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "lz4")]
    #[test]
    fn lz4_round_trips_and_refuses_hostile_lengths() {
        let value = b"abcdefgh".repeat(100);
        let (packed, flag) = Compression::lz4()
            .compress(&value, max_plain_len(4096))
            .unwrap();
        assert_eq!(flag, FLAG_LZ4);
        assert!(packed.len() < value.len());
        assert_eq!(
            decompress(packed.clone(), flag, max_plain_len(4096)).unwrap(),
            value
        );
        let mut huge = packed.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decompress(huge, flag, max_plain_len(4096)).is_err());
        assert!(
            decompress(
                packed[..packed.len() - 3].to_vec(),
                flag,
                max_plain_len(4096)
            )
            .is_err()
        );
        assert!(decompress(vec![1, 2], flag, max_plain_len(4096)).is_err());
        // Short or incompressible values are stored as they are.
        assert_eq!(
            Compression::lz4().compress(b"short", max_plain_len(4096)),
            None
        );
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..1000)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        assert_eq!(
            Compression::lz4()
                .min_size(10)
                .compress(&noise, max_plain_len(4096)),
            None
        );
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn zstd_round_trips_and_refuses_hostile_frames() {
        let value = b"abcdefgh".repeat(100);
        let (packed, flag) = Compression::zstd(3)
            .compress(&value, max_plain_len(4096))
            .unwrap();
        assert_eq!(flag, FLAG_ZSTD);
        assert_eq!(
            decompress(packed.clone(), flag, max_plain_len(4096)).unwrap(),
            value
        );
        assert!(
            decompress(
                packed[..packed.len() - 2].to_vec(),
                flag,
                max_plain_len(4096)
            )
            .is_err()
        );
        assert!(decompress(b"not zstd at all".to_vec(), flag, max_plain_len(4096)).is_err());
    }

    #[test]
    fn plain_and_unknown_flags() {
        assert_eq!(
            decompress(b"v".to_vec(), 0, max_plain_len(4096)).unwrap(),
            b"v"
        );
        assert!(decompress(b"v".to_vec(), FLAG_COMPRESSION, max_plain_len(4096)).is_err());
    }
}
