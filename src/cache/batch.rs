//! Many keys at once, each page locked once: `get_many`, `set_many`, and Cache::FastMmap's
//! page-key form `multi_get` / `multi_set`.

use super::expiry::Expiry;
use super::handle::Cache;
#[cfg(doc)]
use crate::Error;
use crate::Result;
use crate::page::{NewEntry, StoreOutcome};

impl Cache {
    /// Values of many keys, in the order given. Each key is read as [`get`](Self::get) reads
    /// it, without a lock where the file allows; the keys that need a lock have each of their
    /// pages locked once.
    ///
    /// # Errors
    /// Lock errors.
    /// With a [`Backing`](crate::Backing) store: [`Error::Backing`]; a stored value that does not
    /// decompress: [`Error::Decode`].
    pub fn get_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>> {
        self.way().get_many(keys)
    }

    /// Stores many pairs with the default expiry, locking each page touched once. Returns how
    /// many were stored (fewer than given only when tombstones refuse some).
    ///
    /// # Errors
    /// [`Error::TooLarge`] (or [`Error::ValueTooLarge`] in a file with an overflow area) if any
    /// pair cannot fit, before anything is stored; lock errors. Should another process resize
    /// the file to smaller pages while the batch is under way, the pairs stored before the move
    /// stay (as the resize left them) and the rest are checked against the new file before
    /// any of them is stored there.
    /// With a [`Backing`](crate::Backing) store: [`Error::Backing`]; a stored value that does not
    /// decompress: [`Error::Decode`].
    pub fn set_many<K: AsRef<[u8]>, V: AsRef<[u8]>>(&self, pairs: &[(K, V)]) -> Result<usize> {
        self.way().set_many(pairs)
    }

    /// Groups key indexes by page of a file of `num_pages` pages, pages in ascending order.
    pub(super) fn group_by_page<'k>(
        &self,
        num_pages: u32,
        keys: impl Iterator<Item = &'k [u8]>,
    ) -> Vec<(u32, Vec<(usize, u32)>)> {
        let mut located: Vec<(u32, usize, u32)> = keys
            .enumerate()
            .map(|(i, k)| {
                let (loc, s) = self.locate(k);
                (loc.page(num_pages), i, s)
            })
            .collect();
        located.sort_unstable_by_key(|&(p, i, _)| (p, i));
        let mut groups: Vec<(u32, Vec<(usize, u32)>)> = Vec::new();
        for (page, i, slot_hash) in located {
            match groups.last_mut() {
                Some((p, g)) if *p == page => g.push((i, slot_hash)),
                _ => groups.push((page, vec![(i, slot_hash)])),
            }
        }
        groups
    }

    /// The page-key form of Cache::FastMmap: `page_key` picks one page, and each key is stored
    /// there as `page_key-key`. Values come back in the order of `keys`.
    ///
    /// Such entries live in `page_key`'s page, not in the page their joined key hashes to, so
    /// reach them only through `multi_get`/`multi_set` (or `iter`), never `get`/`set`.
    ///
    /// # Errors
    /// Lock errors.
    pub fn multi_get<K: AsRef<[u8]>>(
        &self,
        page_key: &[u8],
        keys: &[K],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let (page, _) = self.locate(page_key);
        let now = self.now();
        let mut reader = self.read_page(page)?;
        Ok(keys
            .iter()
            .map(|k| {
                let full = joined_key(page_key, k.as_ref());
                let (_, slot_hash) = self.locate(&full);
                reader.get_owned(slot_hash, &full, now, self.inner.stats, |v, _| v)
            })
            .collect())
    }

    /// Stores pairs in the page chosen by `page_key` (see [`multi_get`](Self::multi_get)), with
    /// the default expiry, under one lock. Returns how many were stored.
    ///
    /// # Errors
    /// [`Error::TooLarge`] if any pair cannot fit, before anything is stored; lock errors.
    pub fn multi_set<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        page_key: &[u8],
        pairs: &[(K, V)],
    ) -> Result<usize> {
        let (page, _) = self.locate(page_key);
        let now = self.now();
        let keys: Vec<Vec<u8>> = pairs
            .iter()
            .map(|(k, _)| joined_key(page_key, k.as_ref()))
            .collect();
        let reqs: Vec<NewEntry<'_>> = keys
            .iter()
            .zip(pairs)
            .map(|(full, (_, v))| self.request(full, v.as_ref(), Expiry::Default, now).1)
            .collect();
        let mut guard = self.lock_page(page)?;
        // Checked against the file whose page is held (a resize may have moved the page to
        // one of smaller pages since the handle last looked), before anything is stored.
        let file = guard.place().file;
        for req in &reqs {
            self.check_size_in(file, req)?;
        }
        let mut stored = 0;
        for req in &reqs {
            if self.store_locked(&mut guard, req, now)? != StoreOutcome::Refused {
                stored += 1;
            }
        }
        Ok(stored)
    }
}

fn joined_key(page_key: &[u8], key: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(page_key.len() + 1 + key.len());
    full.extend_from_slice(page_key);
    full.push(b'-');
    full.extend_from_slice(key);
    full
}
