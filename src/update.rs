//! Atomic read-modify-write that sees the whole entry: `update_entry` and `update_with`.

use std::time::SystemTime;

use crate::cache::{Cache, EntryFlags, Update, peek_locked};
use crate::clock::from_unix_secs;
use crate::expiry::Expiry;
use crate::page::format::FLAG_UNDEF;
use crate::page::{EntryRef, NewEntry, StoreOutcome};
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
        if let Some(layer) = &self.inner.layer {
            return self.update_layered(layer, key, f);
        }
        let (page, slot_hash) = self.locate(key);
        let now = self.now();
        let mut guard = self.lock_page(page)?;
        let stats = self.inner.stats;
        // `f` is called from one of two places: with the entry when there is one, else after.
        let mut f = Some(f);
        let decided = match guard.page().get(slot_hash, key, now, stats) {
            Ok(Some(e)) => {
                let (decision, r) =
                    (f.take().expect("called once"))(Some(Existing::of(&e, e.value)));
                // What `Keep` returns is the value just read: copied now, not probed for again.
                let kept = matches!(decision, Update::Keep).then(|| e.value.to_vec());
                Some((decision, r, kept))
            }
            Ok(None) => None,
            Err(_) => {
                guard.reset();
                None
            }
        };
        let (decision, r, kept) = match decided {
            Some(decided) => decided,
            None => {
                let (decision, r) = (f.take().expect("not called yet"))(None);
                (decision, r, None)
            }
        };
        let (value, expiry) = match decision {
            Update::Keep => return Ok((kept, r)),
            Update::Remove => {
                let _ = guard.change(|p| p.remove(slot_hash, key, now));
                return Ok((None, r));
            }
            Update::Set(v) => (v, Expiry::Default),
            Update::SetWith(v, e) => (v, e),
        };
        let req = NewEntry {
            slot_hash,
            key,
            value: &value,
            expire_on: expiry.expire_on(now, self.inner.default_expiry),
            flags: 0,
            modseq: None,
        };
        match self.store_locked(&mut guard, &req, now)? {
            StoreOutcome::Refused => Ok((peek_locked(&mut guard, slot_hash, key, now), r)),
            _ => Ok((Some(value), r)),
        }
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
