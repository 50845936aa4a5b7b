//! Cache::FastMmap's compressors, byte for byte as its Perl modules write them.

use std::fmt;
use std::io::Read;

use crate::perl::{Error, Result};

/// Compress::LZ4 puts the uncompressed length before the LZ4 block: a little-endian u32.
const LZ4_LEN_SIZE: usize = 4;
/// An LZ4 block decompresses to at most about 255 times its size; larger claims are refused
/// before anything is allocated.
const LZ4_MAX_RATIO: usize = 255;
/// Snappy: a copy of up to 64 bytes takes at least 2 bytes.
const SNAPPY_MAX_RATIO: usize = 32;
/// Deflate decompresses to at most 1032 times its size.
const DEFLATE_MAX_RATIO: usize = 1032;
/// The most any value decompresses to, whatever its compressed size: 16 MiB, as a native
/// file's compressed values of 64 KiB pages. The ratios above bound what a format can make of
/// its input, but a full 64 KiB gzip entry in a Perl page may still claim 66 MB, and decoding
/// Storable data costs tens of bytes per byte of image: planted there, one value would take
/// gigabytes of every process that reads it.
pub const MAX_DECOMPRESSED: usize = 16 << 20;

/// A Cache::FastMmap `compressor` (the `compress` option of older versions meant `Zlib`).
///
/// | variant | Perl | bytes stored |
/// |---|---|---|
/// | `None` | no `compressor` | the serialized value |
/// | `Zlib` | `compressor => 'zlib'` | gzip (RFC 1952), as `Compress::Zlib::memGzip` writes it |
/// | `Lz4` | `compressor => 'lz4'` | `Compress::LZ4::compress`: the uncompressed length as a little-endian u32, then an LZ4 block; nothing at all for an empty value |
/// | `Snappy` | `compressor => 'snappy'` | `Compress::Snappy::compress`: raw Snappy (length varint, then the block; not the framed format); nothing at all for an empty value |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Compressor {
    /// No compression (Cache::FastMmap's default).
    #[default]
    None,
    /// `Compress::Zlib`'s `memGzip` / `memGunzip`.
    Zlib,
    /// `Compress::LZ4`'s `compress` / `uncompress`.
    Lz4,
    /// `Compress::Snappy`'s `compress` / `uncompress`.
    Snappy,
}

impl fmt::Display for Compressor {
    /// The name Cache::FastMmap's `compressor` option uses (`none` for none).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compressor::None => "none",
            Compressor::Zlib => "zlib",
            Compressor::Lz4 => "lz4",
            Compressor::Snappy => "snappy",
        })
    }
}

impl Compressor {
    /// `data` compressed as the Perl module compresses it.
    ///
    /// # Errors
    /// [`Error::Data`] for 4 GiB or more with `Lz4` or `Snappy`, whose formats cannot hold it.
    pub fn compress(self, data: &[u8]) -> Result<Vec<u8>> {
        let too_large = || Error::Data(format!("{self} cannot compress {} bytes", data.len()));
        Ok(match self {
            Compressor::None => data.to_vec(),
            Compressor::Zlib => {
                let mut gz = flate2::write::GzEncoder::new(
                    Vec::with_capacity(data.len() / 2 + 32),
                    flate2::Compression::default(),
                );
                std::io::Write::write_all(&mut gz, data).expect("writing to a Vec cannot fail");
                gz.finish().expect("writing to a Vec cannot fail")
            }
            // Compress::LZ4 and Compress::Snappy return an empty string for an empty input.
            Compressor::Lz4 | Compressor::Snappy if data.is_empty() => Vec::new(),
            Compressor::Lz4 => {
                let len = u32::try_from(data.len()).map_err(|_| too_large())?;
                let mut out = len.to_le_bytes().to_vec();
                out.extend_from_slice(&lz4_flex::block::compress(data));
                out
            }
            Compressor::Snappy => snap::raw::Encoder::new()
                .compress_vec(data)
                .map_err(|_| too_large())?,
        })
    }

    /// `data` decompressed as the Perl module decompresses it.
    ///
    /// # Errors
    /// [`Error::Decompress`] when the bytes are not in the compressor's format, their check
    /// sum does not match, or they claim to decompress to more than the format could make of
    /// them (output is never larger than a fixed multiple of the input) or to more than
    /// [`MAX_DECOMPRESSED`] bytes, before that is allocated.
    pub fn decompress(self, data: &[u8]) -> Result<Vec<u8>> {
        let corrupt = |reason: String| Error::Decompress {
            compressor: self,
            reason,
        };
        let over_max = |len: usize| {
            (len > MAX_DECOMPRESSED).then(|| {
                corrupt(format!(
                    "decompresses to {len} bytes, more than the {MAX_DECOMPRESSED} allowed"
                ))
            })
        };
        match self {
            Compressor::None => Ok(data.to_vec()),
            Compressor::Zlib => {
                let ratio = data.len().saturating_mul(DEFLATE_MAX_RATIO);
                let limit = ratio.min(MAX_DECOMPRESSED) as u64;
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(data)
                    .take(limit + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| corrupt(e.to_string()))?;
                if out.len() as u64 > limit {
                    return Err(over_max(out.len()).unwrap_or_else(|| {
                        corrupt("decompresses to more than deflate can".into())
                    }));
                }
                Ok(out)
            }
            Compressor::Lz4 | Compressor::Snappy if data.is_empty() => Ok(Vec::new()),
            Compressor::Lz4 => {
                let (len, block) = data
                    .split_first_chunk::<LZ4_LEN_SIZE>()
                    .ok_or_else(|| corrupt("shorter than its length header".into()))?;
                let len = u32::from_le_bytes(*len) as usize;
                if let Some(e) = over_max(len) {
                    return Err(e);
                }
                if len > block.len().saturating_mul(LZ4_MAX_RATIO) {
                    return Err(corrupt(format!(
                        "claims {len} bytes from a block of {}",
                        block.len()
                    )));
                }
                let mut out = vec![0; len];
                let n = lz4_flex::block::decompress_into(block, &mut out)
                    .map_err(|e| corrupt(e.to_string()))?;
                if n != len {
                    return Err(corrupt(format!("{n} bytes, but the header says {len}")));
                }
                Ok(out)
            }
            Compressor::Snappy => {
                let len = snap::raw::decompress_len(data).map_err(|e| corrupt(e.to_string()))?;
                if let Some(e) = over_max(len) {
                    return Err(e);
                }
                if len > data.len().saturating_mul(SNAPPY_MAX_RATIO) {
                    return Err(corrupt(format!(
                        "claims {len} bytes from {} bytes",
                        data.len()
                    )));
                }
                snap::raw::Decoder::new()
                    .decompress_vec(data)
                    .map_err(|e| corrupt(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(h: &str) -> Vec<u8> {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Made by Perl 5.36 from "hello hello hello hello hello" (29 bytes).
    const HELLO: &[u8] = b"hello hello hello hello hello";
    const PERL_LZ4: &str = "1d0000006e68656c6c6f2006005068656c6c6f";
    const PERL_SNAPPY: &str = "1d1468656c6c6f205a0600";
    const PERL_GZIP: &str = "1f8b08000000000000ffcb48cdc9c957c8c04e0200f6d253381d000000";

    #[test]
    fn reads_what_perl_modules_write() {
        assert_eq!(Compressor::Lz4.decompress(&unhex(PERL_LZ4)).unwrap(), HELLO);
        assert_eq!(
            Compressor::Snappy.decompress(&unhex(PERL_SNAPPY)).unwrap(),
            HELLO
        );
        assert_eq!(
            Compressor::Zlib.decompress(&unhex(PERL_GZIP)).unwrap(),
            HELLO
        );
    }

    #[test]
    fn writes_the_same_framing() {
        let lz4 = Compressor::Lz4.compress(HELLO).unwrap();
        assert_eq!(&lz4[..4], &29u32.to_le_bytes());
        let gz = Compressor::Zlib.compress(HELLO).unwrap();
        assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(Compressor::Snappy.compress(HELLO).unwrap()[0], 29);
        assert!(Compressor::Lz4.compress(b"").unwrap().is_empty());
        assert!(Compressor::Snappy.compress(b"").unwrap().is_empty());
    }

    #[test]
    fn round_trips() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for c in [
            Compressor::None,
            Compressor::Zlib,
            Compressor::Lz4,
            Compressor::Snappy,
        ] {
            for d in [&data[..], b"", b"x"] {
                assert_eq!(c.decompress(&c.compress(d).unwrap()).unwrap(), d, "{c}");
            }
        }
    }

    #[test]
    fn refuses_bombs_and_garbage() {
        // An LZ4 header claiming 4 GiB from 3 bytes is refused before allocating.
        let bomb = [0xff, 0xff, 0xff, 0xff, 0, 1, 2];
        assert!(matches!(
            Compressor::Lz4.decompress(&bomb),
            Err(Error::Decompress { .. })
        ));
        // Snappy: a length varint of 4 GiB.
        let bomb = [0xff, 0xff, 0xff, 0xff, 0x0f, 0];
        assert!(Compressor::Snappy.decompress(&bomb).is_err());
        for c in [Compressor::Zlib, Compressor::Lz4, Compressor::Snappy] {
            assert!(c.decompress(b"garbage!").is_err(), "{c}");
        }
        // A damaged gzip check sum.
        let mut gz = unhex(PERL_GZIP);
        let n = gz.len();
        gz[n - 5] ^= 1;
        assert!(Compressor::Zlib.decompress(&gz).is_err());
    }

    /// Whatever a format's ratio allows, no value decompresses to more than
    /// `MAX_DECOMPRESSED` bytes: a run of zeros one byte longer (about 16 KB of gzip, which a Perl
    /// page holds easily) is refused by that ceiling, not by the ratio; 16 MiB is not.
    #[test]
    fn no_value_decompresses_past_the_ceiling() {
        for c in [Compressor::Zlib, Compressor::Lz4, Compressor::Snappy] {
            let over = c.compress(&vec![0u8; MAX_DECOMPRESSED + 1]).unwrap();
            match c.decompress(&over) {
                Err(Error::Decompress { reason, .. }) => {
                    assert!(reason.contains("more than the"), "{c}: {reason}");
                }
                other => panic!("{c}: {:?}", other.map(|v| v.len())),
            }
            let at = c.compress(&vec![0u8; MAX_DECOMPRESSED]).unwrap();
            assert_eq!(c.decompress(&at).unwrap().len(), MAX_DECOMPRESSED, "{c}");
        }
    }
}
