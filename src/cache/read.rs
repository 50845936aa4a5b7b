//! Reads of one key: `get`, `get_with`, `entry`, `contains_key`, and `get_or_insert_with`
//! (a read that stores on a miss).

use super::handle::{Cache, Entry};
#[cfg(doc)]
use crate::Error;
use crate::Result;
use crate::page::Copied;
use crate::page::consts::FLAG_UNDEF;

impl Cache {
    /// The value stored under `key`, if it is present and not expired.
    ///
    /// # Errors
    /// Lock errors.
    /// With a [`Backing`](crate::Backing) store: [`Error::Backing`]; a stored value that does not
    /// decompress: [`Error::Decode`].
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.way().get(key)
    }

    /// Calls `f` with the value in place, under the page lock, without copying it.
    ///
    /// `f` must not call back into this cache (that returns [`Error::Reentrant`]); keep it
    /// short, since it holds up every other user of the page.
    ///
    /// # Errors
    /// Lock errors.
    /// With a [`Backing`](crate::Backing) store: [`Error::Backing`]; a stored value that does not
    /// decompress: [`Error::Decode`].
    pub fn get_with<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>> {
        self.way().get_with(key, f)
    }

    /// The value with its expiry time, last access time, modseq and flags.
    ///
    /// # Errors
    /// Lock errors.
    /// With a [`Backing`](crate::Backing) store: [`Error::Backing`]; a stored value that does not
    /// decompress: [`Error::Decode`].
    pub fn entry(&self, key: &[u8]) -> Result<Option<Entry>> {
        self.way().entry(key)
    }

    /// Whether `key` holds a live value. Does not count as a read or refresh the entry.
    ///
    /// # Errors
    /// Lock errors.
    pub fn contains_key(&self, key: &[u8]) -> Result<bool> {
        let (page, slot_hash) = self.locate(key);
        let now = self.now();
        // With a backing store, a key cached as absent (`cache_not_found`) is not there.
        let negative = self.has_backing();
        let mut copied = Copied::default();
        if let Some(found) = self.read_unlocked(page, slot_hash, key, now, false, &mut copied) {
            return Ok(found && !(negative && copied.flags & FLAG_UNDEF != 0));
        }
        let mut reader = self.read_page(page)?;
        Ok(reader
            .peek(slot_hash, key, now, |e| {
                !(negative && e.flags & FLAG_UNDEF != 0)
            })
            .unwrap_or(false))
    }

    /// Read-through: the value under `key`, or else `f()` computed outside the lock and stored.
    /// If another writer stored the key meanwhile, its value wins and is returned.
    ///
    /// # Errors
    /// [`Error::TooLarge`] if the computed value cannot fit; [`Error::ReadOnly`] on a miss
    /// through a read-only handle; lock errors.
    pub fn get_or_insert_with(&self, key: &[u8], f: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>> {
        self.way().get_or_insert(key, f)
    }
}
