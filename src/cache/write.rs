//! Writes of one key: `set` and its variants, `remove`, `take`, and the conditional stores
//! with a modseq.

use super::expiry::Expiry;
use super::handle::{Cache, EntryFlags, RESERVED_FLAGS};
use crate::page::StoreOutcome;
use crate::page::consts::FLAG_TOMBSTONE;
use crate::{Error, Result};

impl Cache {
    /// Stores `value` under `key` with the default expiry.
    ///
    /// Returns `false` only when a live tombstone left by [`remove_with_modseq`](Self::remove_with_modseq)
    /// refuses the store. Storing may evict other entries of the same page (least recently
    /// used first).
    ///
    /// With a backing store: [`WriteMode::Through`](crate::WriteMode::Through) stores in it
    /// first and leaves the cache as it was if that fails; [`WriteMode::Back`](crate::WriteMode::Back)
    /// marks the entry dirty. Dirty entries the store must evict are written back first.
    ///
    /// # Errors
    /// [`Error::TooLarge`] if the entry cannot fit in an empty page (the old value stays);
    /// lock errors.
    /// With a [`Backing`](crate::Backing) store: [`Error::Backing`] (nothing was evicted); a
    /// dirty value to write back that does not decompress: [`Error::Decode`].
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<bool> {
        self.set_with(key, value, Expiry::Default)
    }

    /// Stores `value` under `key` with the given expiry. See [`set`](Self::set).
    ///
    /// # Errors
    /// As [`set`](Self::set).
    /// With a [`Backing`](crate::Backing) store: [`Error::Backing`]; a stored value that does not
    /// decompress: [`Error::Decode`].
    pub fn set_with(&self, key: &[u8], value: &[u8], expiry: Expiry) -> Result<bool> {
        self.way().set(key, value, expiry, 0)
    }

    /// Stores `value` under `key` with explicit flag bits (for example the UTF-8 flags Perl
    /// reads). Tombstone, modseq, dirty and compression bits are not accepted here and are
    /// cleared.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] if `flags` has [`EntryFlags::UNDEF`] and `value` is not empty
    /// (Perl would read `undef` and lose the bytes; store undef with an empty value), before
    /// anything is changed; otherwise as [`set`](Self::set).
    pub fn set_with_flags(
        &self,
        key: &[u8],
        value: &[u8],
        expiry: Expiry,
        flags: EntryFlags,
    ) -> Result<bool> {
        if flags.is_undef() && !value.is_empty() {
            return Err(Error::InvalidValue {
                path: self.path().to_path_buf(),
                reason: format!(
                    "the undef flag (0x20000000) with a value of {} bytes: Perl would read \
                     undef and lose them (store undef with an empty value)",
                    value.len()
                ),
            });
        }
        let flags = flags.0 & !RESERVED_FLAGS;
        self.way().set(key, value, expiry, flags)
    }

    /// Removes `key`. Returns whether it held a live value. With a backing store, the key is
    /// deleted from the store too, and the cache is left as it was if that fails: a cached
    /// copy is taken out first and put back then (a dirty one, a write the store has not seen,
    /// stays until the store has deleted the key), so the cache never keeps a value the store
    /// has deleted.
    ///
    /// # Errors
    /// Lock errors.
    /// With a [`Backing`](crate::Backing) store: [`Error::Backing`]; a stored value that does not
    /// decompress: [`Error::Decode`].
    pub fn remove(&self, key: &[u8]) -> Result<bool> {
        self.way().remove(key)
    }

    /// Removes `key` and returns its value (Cache::FastMmap's `get_and_remove`).
    ///
    /// # Errors
    /// Lock errors.
    /// With a [`Backing`](crate::Backing) store: [`Error::Backing`]; a stored value that does not
    /// decompress: [`Error::Decode`].
    pub fn take(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.way().take(key)
    }

    /// Stores `value` carrying `modseq`, unless the key holds a live value or tombstone with a
    /// newer modseq (a stale write-back must not overwrite a newer value). Returns whether it
    /// was stored.
    ///
    /// Entries stored this way carry an 8-byte prefix that Cache::FastMmap 1.57 does not
    /// understand: Perl would read it as part of the value.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn set_if_newer(&self, key: &[u8], value: &[u8], modseq: u64) -> Result<bool> {
        let now = self.now();
        let (page, mut req) = self.request(key, value, Expiry::Default, now);
        req.modseq = Some(modseq);
        Ok(self.store(&req, page, now)? != StoreOutcome::Refused)
    }

    /// Removes `key`, leaving a tombstone with `modseq` (expiring like an entry) that refuses
    /// later stores of older modseqs and plain stores. A tombstone reads as a miss. A newer
    /// value or tombstone already there is left alone.
    ///
    /// # Errors
    /// Lock errors.
    pub fn remove_with_modseq(&self, key: &[u8], modseq: u64) -> Result<()> {
        let now = self.now();
        let (page, mut req) = self.request(key, &[], Expiry::Default, now);
        req.flags = FLAG_TOMBSTONE;
        req.modseq = Some(modseq);
        self.store(&req, page, now).map(|_| ())
    }
}
