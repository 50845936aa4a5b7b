//! Reads under a page lock: [`Reader`] is either guard a read may hold (the ordinary lock, or
//! a read-only handle's shared one) and reads through both alike; a page found damaged is reset
//! where the guard allows.

use super::guard::{PageGuard, ReadGuard};
use super::shared::SharedFile;
use crate::page::consts::FLAG_OVERFLOW;
use crate::page::{Corrupt, EntryRef, PageHeader, PageView};

/// Hands `f` the entry, its value from the overflow area if it lives there (lent in place when
/// its blocks are one run, else copied; the page's lock held). A reference that fails its
/// checks is damage.
fn resolved<R>(
    file: &SharedFile,
    page: u32,
    e: &EntryRef<'_>,
    f: impl FnOnce(&EntryRef<'_>) -> R,
) -> Result<R, Corrupt> {
    if e.flags & FLAG_OVERFLOW == 0 {
        return Ok(f(e));
    }
    file.overflow_lend(page, e.value, |value| {
        f(&EntryRef {
            value,
            flags: e.flags & !FLAG_OVERFLOW,
            ..*e
        })
    })
}

/// An entry's value (`value`, stored with `flags`) as an owned copy, with the value's flags
/// (without `FLAG_OVERFLOW`): a large value is copied out of the overflow area and checked in
/// the same pass (`checksum.rs`), rather than checked where it lies, then copied. The page's
/// lock must be held; a reference that fails its checks is damage.
pub(crate) fn owned_value(
    file: &SharedFile,
    page: u32,
    value: &[u8],
    flags: u32,
) -> Result<(Vec<u8>, u32), Corrupt> {
    if flags & FLAG_OVERFLOW == 0 {
        return Ok((value.to_vec(), flags));
    }
    Ok((file.overflow_read(page, value)?, flags & !FLAG_OVERFLOW))
}

/// The entry's value as an owned copy ([`owned_value`]).
fn owned(file: &SharedFile, page: u32, e: &EntryRef<'_>) -> Result<Vec<u8>, Corrupt> {
    owned_value(file, page, e.value, e.flags).map(|(value, _)| value)
}

/// Hands `f` the entry's value as an owned copy ([`owned_value`]) and the entry's other
/// fields: an [`EntryRef`] whose `value` is empty (the bytes are in the copy) and whose flags
/// are those of the value, without the overflow bit.
fn owned_with<R>(
    file: &SharedFile,
    page: u32,
    e: &EntryRef<'_>,
    f: impl FnOnce(Vec<u8>, &EntryRef<'_>) -> R,
) -> Result<R, Corrupt> {
    let (value, flags) = owned_value(file, page, e.value, e.flags)?;
    Ok(f(
        value,
        &EntryRef {
            value: &[],
            flags,
            ..*e
        },
    ))
}

/// A page locked for reading. Through the ordinary lock, reads refresh access times and count
/// (when statistics are on), and a damaged page is reset. Through a read-only handle's shared
/// lock, reads change nothing, and a damaged page reads as empty (it cannot be repaired).
pub(crate) enum Reader<'a> {
    Write(PageGuard<'a>),
    Shared(ReadGuard<'a>),
}

impl Reader<'_> {
    /// `key`'s live entry handed to `f`, as a read.
    pub(crate) fn get<R>(
        &mut self,
        slot_hash: u32,
        key: &[u8],
        now: u32,
        stats: bool,
        f: impl FnOnce(&EntryRef<'_>) -> R,
    ) -> Option<R> {
        self.get_as(slot_hash, key, now, stats, |file, page, e| {
            resolved(file, page, e, f)
        })
    }

    /// `key`'s live value copied out, handed to `f` with the entry's other fields (see
    /// [`owned_with`]), as a read.
    pub(crate) fn get_owned<R>(
        &mut self,
        slot_hash: u32,
        key: &[u8],
        now: u32,
        stats: bool,
        f: impl FnOnce(Vec<u8>, &EntryRef<'_>) -> R,
    ) -> Option<R> {
        self.get_as(slot_hash, key, now, stats, |file, page, e| {
            owned_with(file, page, e, f)
        })
    }

    fn get_as<R>(
        &mut self,
        slot_hash: u32,
        key: &[u8],
        now: u32,
        stats: bool,
        resolve: impl FnOnce(&SharedFile, u32, &EntryRef<'_>) -> Result<R, Corrupt>,
    ) -> Option<R> {
        match self {
            Reader::Write(guard) => read_locked_as(guard, slot_hash, key, now, stats, resolve),
            Reader::Shared(_) => self.peek_as(slot_hash, key, now, resolve),
        }
    }

    /// `key`'s live entry handed to `f`, without counting a read or refreshing the entry.
    pub(crate) fn peek<R>(
        &mut self,
        slot_hash: u32,
        key: &[u8],
        now: u32,
        f: impl FnOnce(&EntryRef<'_>) -> R,
    ) -> Option<R> {
        self.peek_as(slot_hash, key, now, |file, page, e| {
            resolved(file, page, e, f)
        })
    }

    fn peek_as<R>(
        &mut self,
        slot_hash: u32,
        key: &[u8],
        now: u32,
        resolve: impl FnOnce(&SharedFile, u32, &EntryRef<'_>) -> Result<R, Corrupt>,
    ) -> Option<R> {
        let found = match self {
            Reader::Write(guard) => {
                let (file, page) = (guard.0.file, guard.0.page);
                guard
                    .page()
                    .peek(slot_hash, key, now)
                    .and_then(|e| e.map(|e| resolve(file, page, &e)).transpose())
            }
            Reader::Shared(guard) => {
                let (file, index) = (guard.0.file, guard.0.page);
                match guard.page() {
                    Some(page) => page
                        .peek(slot_hash, key, now)
                        .and_then(|e| e.map(|e| resolve(file, index, &e)).transpose()),
                    None => Ok(None),
                }
            }
        };
        found.unwrap_or_else(|_| {
            self.reset();
            None
        })
    }

    /// The page header, for statistics: a damaged page is reset first where it can be, and
    /// otherwise read as it is (statistics use saturating arithmetic).
    pub(crate) fn header(&mut self) -> PageHeader {
        match self {
            Reader::Write(guard) => match guard.page().checked_header() {
                Ok(hdr) => hdr,
                Err(_) => {
                    guard.reset();
                    guard.page().header()
                }
            },
            Reader::Shared(guard) => PageHeader::read(guard.as_is().0),
        }
    }

    /// Calls `f` for every entry (see [`PageView::for_each_entry`](PageView)), with large
    /// values read from the overflow area.
    pub(crate) fn for_each_entry(
        &mut self,
        mut f: impl FnMut(&EntryRef<'_>),
    ) -> std::result::Result<(), Corrupt> {
        let mut bad = None;
        let (file, index) = match self {
            Reader::Write(guard) => (guard.0.file, guard.0.page),
            Reader::Shared(guard) => (guard.0.file, guard.0.page),
        };
        let mut each = |e: EntryRef<'_>| {
            if let Err(c) = resolved(file, index, &e, &mut f) {
                bad = Some(c);
            }
        };
        match self {
            Reader::Write(guard) => PageView::new(guard.bytes()).for_each_entry(&mut each)?,
            Reader::Shared(guard) => {
                if let Some(page) = guard.page() {
                    page.for_each_entry(&mut each)?;
                }
            }
        }
        bad.map_or(Ok(()), Err)
    }

    /// Overflow blocks the page owns that none of its entries references (its references
    /// checked on the way; a failed check is the error), counted without freeing them.
    pub(crate) fn overflow_unreferenced(&mut self) -> std::result::Result<u32, Corrupt> {
        match self {
            Reader::Write(guard) => {
                let (file, page) = (guard.0.file, guard.0.page);
                file.overflow_sweep(page, guard.bytes(), true)
            }
            Reader::Shared(guard) => {
                let (file, page) = (guard.0.file, guard.0.page);
                file.overflow_sweep(page, guard.as_is().0, true)
            }
        }
    }

    /// Resets a page found damaged, where it can be (not through a shared lock).
    pub(crate) fn reset(&mut self) {
        if let Reader::Write(guard) = self {
            guard.reset();
        }
    }
}

/// A read under a held lock; a damaged page is reset and reads as a miss.
pub(crate) fn read_locked<R>(
    guard: &mut PageGuard<'_>,
    slot_hash: u32,
    key: &[u8],
    now: u32,
    stats: bool,
    f: impl FnOnce(&EntryRef<'_>) -> R,
) -> Option<R> {
    read_locked_as(guard, slot_hash, key, now, stats, |file, page, e| {
        resolved(file, page, e, f)
    })
}

/// As [`read_locked`], the live value copied out.
pub(crate) fn read_locked_value(
    guard: &mut PageGuard<'_>,
    slot_hash: u32,
    key: &[u8],
    now: u32,
    stats: bool,
) -> Option<Vec<u8>> {
    read_locked_as(guard, slot_hash, key, now, stats, owned)
}

fn read_locked_as<R>(
    guard: &mut PageGuard<'_>,
    slot_hash: u32,
    key: &[u8],
    now: u32,
    stats: bool,
    resolve: impl FnOnce(&SharedFile, u32, &EntryRef<'_>) -> Result<R, Corrupt>,
) -> Option<R> {
    let (file, page) = (guard.0.file, guard.0.page);
    let result = guard
        .page()
        .get(slot_hash, key, now, stats)
        .and_then(|e| e.map(|e| resolve(file, page, &e)).transpose());
    result.unwrap_or_else(|_| {
        guard.reset();
        None
    })
}

/// The current value under a held lock, without counting a read.
pub(crate) fn peek_locked(
    guard: &mut PageGuard<'_>,
    slot_hash: u32,
    key: &[u8],
    now: u32,
) -> Option<Vec<u8>> {
    let (file, page) = (guard.0.file, guard.0.page);
    let result = guard
        .page()
        .peek(slot_hash, key, now)
        .and_then(|e| e.map(|e| owned(file, page, &e)).transpose());
    result.unwrap_or_else(|_| {
        guard.reset();
        None
    })
}
