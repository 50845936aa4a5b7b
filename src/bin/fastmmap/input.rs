//! Reading stdin in bounded memory: lines no longer than a limit, and the records `load` has
//! checked, kept in an unnamed temporary file until every line has passed.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, Write};

use crate::record::Item;

/// How a bounded line read ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// A line (without its `\n`) is in the buffer.
    Read,
    /// The input ended; the buffer is empty.
    End,
    /// The line is longer than the limit: the buffer holds its first `limit + 1` bytes at
    /// most, and the rest was not read.
    TooLong,
}

/// Reads the next line into `buf` (cleared first), reading at most `limit + 1` bytes of it.
///
/// # Errors
/// A failed read.
pub(crate) fn read_line(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<Line> {
    buf.clear();
    loop {
        let chunk = match input.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(if buf.is_empty() {
                Line::End
            } else {
                Line::Read
            });
        }
        let (taken, newline) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        // `buf` holds at most `limit` bytes here: take one more at most.
        let n = taken.min(limit + 1 - buf.len());
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > limit {
            input.consume(n);
            return Ok(Line::TooLong);
        }
        input.consume(taken + usize::from(newline));
        if newline {
            return Ok(Line::Read);
        }
    }
}

/// Reads all of `input` if it holds at most `limit` bytes; `None` (after reading `limit + 1`
/// bytes, no more) if it holds more.
///
/// # Errors
/// A failed read.
pub(crate) fn read_at_most(input: impl Read, limit: usize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    input
        .take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut buf)?;
    Ok((buf.len() <= limit).then_some(buf))
}

/// Records checked by `load`, waiting in an unnamed temporary file (mode 0600, gone when
/// closed) until the whole input has been checked: memory holds one record at a time.
pub(crate) struct Spool {
    out: BufWriter<File>,
    count: u64,
}

/// Tags of the optional fields in a spooled record.
const NONE: u8 = 0;
const SOME: u8 = 1;

impl Spool {
    /// An empty spool in the temp directory.
    ///
    /// # Errors
    /// The temporary file cannot be created.
    pub(crate) fn new() -> io::Result<Spool> {
        Ok(Spool {
            out: BufWriter::new(tempfile::tempfile()?),
            count: 0,
        })
    }

    /// Appends the item of input line `line`.
    ///
    /// # Errors
    /// A failed write (a full temp directory, for one).
    pub(crate) fn push(&mut self, line: u64, item: &Item) -> io::Result<()> {
        let w = &mut self.out;
        w.write_all(&line.to_ne_bytes())?;
        w.write_all(&(item.key.len() as u64).to_ne_bytes())?;
        w.write_all(&(item.value.len() as u64).to_ne_bytes())?;
        w.write_all(&item.flags.to_ne_bytes())?;
        match item.expire_on {
            Some(at) => {
                w.write_all(&[SOME])?;
                w.write_all(&at.to_ne_bytes())?;
            }
            None => w.write_all(&[NONE])?,
        }
        match item.modseq {
            Some(m) => {
                w.write_all(&[SOME])?;
                w.write_all(&m.to_ne_bytes())?;
            }
            None => w.write_all(&[NONE])?,
        }
        w.write_all(&item.key)?;
        w.write_all(&item.value)?;
        self.count += 1;
        Ok(())
    }

    /// The records, in the order they were pushed, each with its input line.
    ///
    /// # Errors
    /// The temporary file cannot be flushed or rewound.
    pub(crate) fn into_records(self) -> io::Result<Records> {
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        Ok(Records {
            input: BufReader::new(file),
            left: self.count,
        })
    }
}

/// The records of a [`Spool`], read back one at a time.
pub(crate) struct Records {
    input: BufReader<File>,
    left: u64,
}

impl Records {
    fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0; 8];
        self.input.read_exact(&mut b)?;
        Ok(u64::from_ne_bytes(b))
    }

    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0; 4];
        self.input.read_exact(&mut b)?;
        Ok(u32::from_ne_bytes(b))
    }

    fn tag(&mut self) -> io::Result<bool> {
        let mut b = [0; 1];
        self.input.read_exact(&mut b)?;
        Ok(b[0] == SOME)
    }

    fn bytes(&mut self, len: u64) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        (&mut self.input).take(len).read_to_end(&mut v)?;
        if v.len() as u64 != len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(v)
    }

    fn read(&mut self) -> io::Result<(u64, Item)> {
        let line = self.u64()?;
        let key_len = self.u64()?;
        let value_len = self.u64()?;
        let flags = self.u32()?;
        let expire_on = if self.tag()? { Some(self.u32()?) } else { None };
        let modseq = if self.tag()? { Some(self.u64()?) } else { None };
        let key = self.bytes(key_len)?;
        let value = self.bytes(value_len)?;
        Ok((
            line,
            Item {
                key,
                value,
                expire_on,
                flags,
                modseq,
            },
        ))
    }
}

impl Iterator for Records {
    type Item = io::Result<(u64, Item)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(self.read())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], limit: usize) -> Vec<(Line, Vec<u8>)> {
        // A tiny buffer, so that lines span many reads.
        let mut r = BufReader::with_capacity(3, input);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            let l = read_line(&mut r, &mut buf, limit).unwrap();
            let end = l != Line::Read;
            out.push((l, buf.clone()));
            if end {
                return out;
            }
        }
    }

    #[test]
    fn lines_up_to_the_limit() {
        let got = lines(b"ab\n\nabcd\nxyz", 4);
        assert_eq!(
            got,
            [
                (Line::Read, b"ab".to_vec()),
                (Line::Read, b"".to_vec()),
                (Line::Read, b"abcd".to_vec()),
                (Line::Read, b"xyz".to_vec()),
                (Line::End, b"".to_vec()),
            ]
        );
        let got = lines(b"ab\nabcde\nrest", 4);
        assert_eq!(got[1], (Line::TooLong, b"abcde".to_vec()));
        let got = lines(b"abcdefghijklmnop", 4);
        assert_eq!(got[0].0, Line::TooLong);
        assert!(got[0].1.len() <= 5);
        // A line of exactly the limit at the end of the input, without its newline.
        assert_eq!(lines(b"abcd", 4)[0], (Line::Read, b"abcd".to_vec()));
    }

    #[test]
    fn at_most() {
        assert_eq!(read_at_most(&b"abc"[..], 3).unwrap(), Some(b"abc".to_vec()));
        assert_eq!(read_at_most(&b"abcd"[..], 3).unwrap(), None);
        let mut r = &b"abcdefgh"[..];
        assert_eq!(read_at_most(&mut r, 3).unwrap(), None);
        assert_eq!(r, b"efgh", "read limit + 1 bytes, no more");
    }

    #[test]
    fn spool_round_trip() {
        let items = [
            Item {
                key: b"k".to_vec(),
                value: vec![0, 255],
                expire_on: Some(7),
                flags: 0x8000_0000,
                modseq: None,
            },
            Item {
                key: vec![],
                value: vec![],
                expire_on: None,
                flags: 0,
                modseq: Some(u64::MAX),
            },
        ];
        let mut spool = Spool::new().unwrap();
        for (i, item) in items.iter().enumerate() {
            spool.push(i as u64 + 10, item).unwrap();
        }
        let back: Vec<(u64, Item)> = spool
            .into_records()
            .unwrap()
            .collect::<io::Result<_>>()
            .unwrap();
        assert_eq!(back, [(10, items[0].clone()), (11, items[1].clone())]);
    }
}
