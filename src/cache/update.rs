//! Atomic read-modify-write that sees the whole entry: `update_entry` and `update_with`.

use std::time::SystemTime;

use super::expiry::Expiry;
use super::handle::{Cache, EntryFlags, Update};
use crate::clock::from_unix_secs;
use crate::page::EntryRef;
use crate::page::consts::FLAG_UNDEF;
use crate::{Error, Result};

/// The entry an update's closure sees: the value with its expiry, last access and flags
/// (Perl's `get_and_set` hands its closure the value and the entry's `expire_on`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Existing<'a> {
    /// The value (decompressed if it was stored compressed).
    pub value: &'a [u8],
    /// When it expires (`None`: never).
    pub expires_at: Option<SystemTime>,
    /// When it was last read or written (whole seconds).
    pub last_access: SystemTime,
    /// Its flag bits.
    pub flags: EntryFlags,
}

impl Existing<'_> {
    /// The entry's expiry as an [`Expiry`]: store with it to keep the expiry the entry has
    /// (`Update::SetWith(v, existing.expiry())`), as Perl's
    /// `get_and_set($k, sub { ($_[1] + 1, { expire_on => $_[2]{expire_on} }) })` does.
    pub fn expiry(&self) -> Expiry {
        match self.expires_at {
            Some(at) => Expiry::At(at),
            None => Expiry::Never,
        }
    }

    pub(crate) fn of<'a>(e: &EntryRef<'_>, value: &'a [u8]) -> Existing<'a> {
        Existing {
            value,
            expires_at: (e.expire_on != 0).then(|| from_unix_secs(e.expire_on)),
            last_access: from_unix_secs(e.last_access),
            flags: EntryFlags(e.flags),
        }
    }
}

impl Cache {
    /// Atomic read-modify-write (Cache::FastMmap's `get_and_set`): `f` sees the current value
    /// (or `None`) under the page lock and decides what happens to it. Returns the value the
    /// key holds afterwards.
    ///
    /// `f` must not call back into this cache ([`Error::Reentrant`]).
    ///
    /// With a write-back store, a new value that needs room taken from dirty entries waits
    /// until they are written back (the page is unlocked meanwhile, never while `f` runs). If
    /// a write-back `set` of the key from elsewhere lands in that moment, the update counts as
    /// made just before it: it returns its value, and the `set`'s value replaces it.
    ///
    /// # Errors
    /// [`Error::TooLarge`] if `f` asks to store a value that cannot fit (nothing changes);
    /// [`Error::Backing`] if dirty entries in the way cannot be written back (nothing is
    /// stored); lock errors.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = fastmmap::Cache::open(dir.path().join("c")).unwrap();
    /// use fastmmap::Update;
    /// for _ in 0..3 {
    ///     cache.update(b"hits", |old| {
    ///         let n = old.map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap()));
    ///         Update::Set((n + 1).to_le_bytes().to_vec())
    ///     })?;
    /// }
    /// assert_eq!(cache.get(b"hits")?, Some(3u64.to_le_bytes().to_vec()));
    /// # Ok::<(), fastmmap::Error>(())
    /// ```
    pub fn update(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> Update,
    ) -> Result<Option<Vec<u8>>> {
        self.update_inner(key, |e| (f(e.map(|e| e.value)), ()))
            .map(|(value, ())| value)
    }

    /// As [`update`](Self::update), with the closure seeing the whole entry: value, expiry,
    /// last access and flags. Returns the value the key holds afterwards.
    ///
    /// # Errors
    /// As [`update`](Self::update).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = fastmmap::Cache::open(dir.path().join("c")).unwrap();
    /// use std::time::Duration;
    /// use fastmmap::{Expiry, Update};
    /// cache.set_with(b"n", b"1", Expiry::After(Duration::from_secs(60)))?;
    /// // Increment, keeping the expiry the entry has.
    /// cache.update_entry(b"n", |e| match e {
    ///     Some(e) => {
    ///         let n: u64 = std::str::from_utf8(e.value).unwrap().parse().unwrap();
    ///         Update::SetWith((n + 1).to_string().into_bytes(), e.expiry())
    ///     }
    ///     None => Update::Set(b"1".to_vec()),
    /// })?;
    /// assert_eq!(cache.get(b"n")?, Some(b"2".to_vec()));
    /// # Ok::<(), fastmmap::Error>(())
    /// ```
    pub fn update_entry(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<Existing<'_>>) -> Update,
    ) -> Result<Option<Vec<u8>>> {
        self.update_inner(key, |e| (f(e), ()))
            .map(|(value, ())| value)
    }

    /// As [`update_entry`](Self::update_entry), with the closure also computing a result under
    /// the lock, which is returned: no need to carry it out through a captured variable.
    ///
    /// # Errors
    /// As [`update`](Self::update).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cache = fastmmap::Cache::open(dir.path().join("c")).unwrap();
    /// use fastmmap::Update;
    /// // Take a ticket: the number handed out is the one this caller stored.
    /// let ticket = cache.update_with(b"next-ticket", |e| {
    ///     let n = e.map_or(0, |e| u64::from_le_bytes(e.value.try_into().unwrap()));
    ///     (Update::Set((n + 1).to_le_bytes().to_vec()), n)
    /// })?;
    /// assert_eq!(ticket, 0);
    /// # Ok::<(), fastmmap::Error>(())
    /// ```
    pub fn update_with<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<Existing<'_>>) -> (Update, R),
    ) -> Result<R> {
        self.update_inner(key, f).map(|(_, r)| r)
    }

    /// Every update: the value afterwards, and what the closure computed.
    pub(crate) fn update_inner<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<Existing<'_>>) -> (Update, R),
    ) -> Result<(Option<Vec<u8>>, R)> {
        self.way().update(key, f)
    }

    /// `Error::Decode` for `key`.
    pub(crate) fn decode_error(
        &self,
        key: &[u8],
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        let error = Error::Decode {
            path: self.path().to_path_buf(),
            key: key.to_vec(),
            source: source.into(),
        };
        crate::events::decode_failed(&self.inner.file.faults, &error);
        error
    }
}

/// Whether an entry with these flags is a key cached as absent (Perl's `undef`).
#[inline]
pub(crate) fn is_negative(flags: u32) -> bool {
    flags & FLAG_UNDEF != 0
}
