//! The layered way of a handle (see `mode.rs`): read-through, write-through and write-back
//! through a backing store, compressed values. The public methods in `handle.rs` document
//! these.

use std::time::SystemTime;

use super::compression::{decompress, is_compressed, max_plain_len};
use super::expiry::Expiry;
use super::handle::{Cache, Entry, Loc, Update};
use super::mode::Layer;
use super::update::{Existing, is_negative};
use super::write_back::{Kept, Seen, TryWriteBack};
use crate::Result;
use crate::WriteMode;
use crate::clock::from_unix_secs;
use crate::page::consts::{FLAG_DIRTY, FLAG_UNDEF};
use crate::page::{Copied, DirtyCopy, NewEntry, StoreOutcome};
use crate::{Backing, Clock, EntryFlags};

/// What a look into the cache found, for read-through.
enum Look {
    /// A live value (stored bytes, flags).
    Hit(Vec<u8>, u32),
    /// The key is cached as absent.
    Negative,
    /// Nothing live; the key's expired dirty entry, if it has one.
    Miss(Option<DirtyCopy>),
}

/// A value read through the backing store: what the store returned (decompressed), with the
/// store's expiry for it when the store gave one. Whether the file kept a copy is the file's
/// business: `update` hands it to its closure either way.
struct Loaded {
    value: Vec<u8>,
    expires_at: Option<SystemTime>,
}

/// An entry read under its page lock by `take`, `remove` or an update's `Remove`: its stored
/// bytes (a large value's whole), flags (without the policy's bits) and expiry.
struct Taken {
    stored: Vec<u8>,
    flags: u32,
    expire_on: u32,
}

impl Cache {
    /// The value stored as `stored` with `flags`, decompressed.
    pub(crate) fn decode_value(&self, key: &[u8], stored: Vec<u8>, flags: u32) -> Result<Vec<u8>> {
        decompress(stored, flags, self.plain_limit()).map_err(|e| self.decode_error(key, e))
    }

    /// Decompresses an entry copied out of the cache.
    pub(crate) fn decode_entry(&self, key: &[u8], entry: &mut Entry) -> Result<()> {
        if is_compressed(entry.flags.0) {
            let stored = std::mem::take(&mut entry.value);
            entry.value = self.decode_value(key, stored, entry.flags.0)?;
        }
        Ok(())
    }

    /// The longest value compression takes, and decompression gives back: many pages' worth,
    /// or the overflow area's `max_value_size` if larger.
    pub(crate) fn plain_limit(&self) -> usize {
        max_plain_len(self.page_size()).max(self.max_value_size())
    }

    /// The bytes and flags to store for `value`: compressed first, so that a large value that
    /// fits its page once compressed stays in the page.
    fn encode_value(&self, layer: &Layer, value: &[u8]) -> (Option<Vec<u8>>, u32) {
        match layer
            .compression
            .as_ref()
            .and_then(|c| c.compress(value, self.plain_limit()))
        {
            Some((packed, flag)) => (Some(packed), flag),
            None => (None, 0),
        }
    }

    fn look(&self, layer: &Layer, key: &[u8], page: Loc, slot_hash: u32, now: u32) -> Result<Look> {
        let mut guard = self.lock_for_change(page)?;
        let at = guard.place();
        let found = guard
            .page()
            .get(slot_hash, key, now, self.inner.stats)
            .and_then(|e| e.map(|e| self.resolve(at, e.value, e.flags)).transpose());
        Ok(match found {
            Ok(Some((_, flags))) if is_negative(flags) && layer.backing.is_some() => Look::Negative,
            Ok(Some((value, flags))) => Look::Hit(value, flags),
            Ok(None) if layer.backing.is_some() => {
                // An expired dirty entry is written back before the store is read.
                let found = guard.page().view().find(slot_hash, key).map(|e| {
                    e.filter(|e| e.flags & FLAG_DIRTY != 0).map(|e| DirtyCopy {
                        slot_hash,
                        key: key.to_vec(),
                        value: e.value.to_vec(),
                        expire_on: e.expire_on,
                        flags: e.flags,
                        reference: None,
                    })
                });
                match found {
                    Ok(Some(copy)) => {
                        let mut copy = [copy];
                        if let Err(c) = self.resolve_copies(at, &mut copy) {
                            guard.reset_for(c);
                            return Ok(Look::Miss(None));
                        }
                        let [copy] = copy;
                        Look::Miss(Some(copy))
                    }
                    _ => Look::Miss(None),
                }
            }
            Ok(None) => Look::Miss(None),
            Err(c) => {
                guard.reset_for(c);
                Look::Miss(None)
            }
        })
    }

    /// `get` through a layer: decompression, and read-through on a miss.
    pub(crate) fn get_layered(&self, layer: &Layer, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if self.inner.read_only {
            // Shared locks, and nothing to store a read-through in.
            let found = self.read_owned(key, |value, e| (value, e.flags))?;
            return match found {
                Some((_, flags)) if layer.backing.is_some() && is_negative(flags) => Ok(None),
                Some((stored, flags)) => self.decode_value(key, stored, flags).map(Some),
                None => Ok(None),
            };
        }
        let (page, slot_hash) = self.locate(key);
        let now = self.now();
        // A copy the cache may serve is read without the lock first, as a plain get is: a hit
        // that needs no change to the page (see `read_unlocked`) is final, and so is a miss
        // when there is no store to read through. A miss seen so is not looked for again under
        // the page lock before the write-back lock is tried: only that lock's look counts.
        let mut missed = false;
        if layer.trusts_cached() {
            let mut copied = Copied::default();
            match self.read_unlocked(page, slot_hash, key, now, true, &mut copied) {
                Some(true) if layer.backing.is_some() && is_negative(copied.flags) => {
                    return Ok(None);
                }
                Some(true) => return self.decode_value(key, copied.value, copied.flags).map(Some),
                Some(false) if layer.backing.is_none() => return Ok(None),
                Some(false) => missed = true,
                None => {}
            }
        }
        let look = if missed {
            None
        } else {
            match self.look(layer, key, page, slot_hash, now)? {
                Look::Hit(stored, flags) if layer.trusts_cached() => {
                    return self.decode_value(key, stored, flags).map(Some);
                }
                Look::Negative if layer.trusts_cached() => return Ok(None),
                Look::Miss(_) if layer.backing.is_none() => return Ok(None),
                look => Some(look),
            }
        };
        // Loaded and cached under the write-back lock, so that no write of the key reaches
        // the store between the load and the caching of what it loaded. A reader does not wait
        // behind another's call of the store, which may be slow: if the lock is held, it reads
        // the store without it and caches nothing.
        let _write_back = match self.try_write_back_lock(page)? {
            TryWriteBack::Taken(guard) => guard,
            TryWriteBack::Busy => {
                let look = match look {
                    Some(look) => look,
                    None => self.look(layer, key, page, slot_hash, now)?,
                };
                match self.load_uncached(layer, key, look)? {
                    Some(found) => return Ok(found),
                    None => self.write_back_lock(page)?,
                }
            }
        };
        Ok(self
            .get_holding_write_back(layer, key, page, slot_hash, now)?
            .map(|loaded| loaded.value))
    }

    /// What a `get` that missed (or may not trust its hit) returns when the write-back lock
    /// is held by someone else: the backing store's value, cached nowhere, so the order of
    /// the store's writes against the cache's does not matter. `None` when the answer needs
    /// the lock: the key's expired dirty entry must be written back before the store is read.
    fn load_uncached(
        &self,
        layer: &Layer,
        key: &[u8],
        look: Look,
    ) -> Result<Option<Option<Vec<u8>>>> {
        let Some(backing) = &layer.backing else {
            return Ok(Some(None));
        };
        match look {
            Look::Miss(Some(_)) => return Ok(None),
            // A dirty copy is a write the store does not have yet (as in `load_distrusting`).
            Look::Hit(stored, flags) if flags & FLAG_DIRTY != 0 => {
                return self.decode_value(key, stored, flags).map(|v| Some(Some(v)));
            }
            Look::Hit(..) | Look::Negative | Look::Miss(None) => {}
        }
        backing
            .load(key)
            .map(Some)
            .map_err(|e| self.backing_error("load", Some(key), e))
    }

    /// `get` through a layer by a caller holding `page`'s write-back lock: looked up again
    /// (another writer may have filled the key meanwhile), then read through.
    fn get_holding_write_back(
        &self,
        layer: &Layer,
        key: &[u8],
        page: Loc,
        slot_hash: u32,
        now: u32,
    ) -> Result<Option<Loaded>> {
        if !layer.trusts_cached() {
            return self.load_distrusting(layer, key, page, slot_hash, now);
        }
        match self.look(layer, key, page, slot_hash, now)? {
            Look::Hit(stored, flags) => self.in_file(key, stored, flags),
            Look::Negative => Ok(None),
            Look::Miss(expired_dirty) => self.read_through(layer, key, page, now, expired_dirty),
        }
    }

    /// A value found in the file (as `stored`, with `flags`) where a read-through was due: the
    /// file has its expiry.
    fn in_file(&self, key: &[u8], stored: Vec<u8>, flags: u32) -> Result<Option<Loaded>> {
        let value = self.decode_value(key, stored, flags)?;
        Ok(Some(Loaded {
            value,
            expires_at: None,
        }))
    }

    /// `get` while the backing store does not trust the cache's copies
    /// ([`Backing::trusts_cached`]): a clean copy of `key` is dropped from the file and the
    /// store is read (what it returns is cached only if the fence allows it, as on any
    /// read-through). A dirty copy is a write the store does not have yet: it is returned.
    fn load_distrusting(
        &self,
        layer: &Layer,
        key: &[u8],
        page: Loc,
        slot_hash: u32,
        now: u32,
    ) -> Result<Option<Loaded>> {
        let mut guard = self.lock_for_change(page)?;
        let at = guard.place();
        let found = guard
            .page()
            .peek(slot_hash, key, now)
            .and_then(|e| e.map(|e| self.resolve(at, e.value, e.flags)).transpose());
        match found {
            Ok(Some((stored, flags))) if flags & FLAG_DIRTY != 0 => {
                return self.in_file(key, stored, flags);
            }
            Ok(Some(_)) => {
                let _ = guard.change(|p| p.remove(slot_hash, key, now));
            }
            Ok(None) => {}
            Err(c) => guard.reset_for(c),
        }
        drop(guard);
        self.read_through(layer, key, page, now, None)
    }

    /// Loads `key` from the backing store and caches it (or, with `cache_not_found`, its
    /// absence). A value stored meanwhile by someone else wins and is returned.
    fn read_through(
        &self,
        layer: &Layer,
        key: &[u8],
        page: Loc,
        now: u32,
        expired_dirty: Option<DirtyCopy>,
    ) -> Result<Option<Loaded>> {
        let Some(backing) = &layer.backing else {
            return Ok(None);
        };
        if let Some(copy) = expired_dirty {
            let copies = [copy];
            self.write_back(&copies)?;
            let mut guard = self.lock_for_change(page)?;
            self.mark_clean(&mut guard, &copies);
        }
        let fence = backing.fence(key);
        let (loaded, store_expiry) = match backing
            .load_with_expiry(key)
            .map_err(|e| self.backing_error("load", Some(key), e))?
        {
            Some((v, at)) => (Some(v), at),
            None => (None, None),
        };
        let handed = |loaded: Option<Vec<u8>>| {
            loaded.map(|value| Loaded {
                value,
                expires_at: store_expiry,
            })
        };
        // A fence that moved while the store was read (or a host that keeps no copies now):
        // nothing is stored, rather than a copy stored and dropped again after, which takes
        // the page lock a second time and, should that fail, leaves a copy no news of the
        // change will remove. (The fence is checked once more after the store, for a change
        // landing meanwhile; that window is the store's, not the round trip's.)
        if fence.is_none() || backing.fence(key) != fence {
            return Ok(handed(loaded));
        }
        let (value, flags) = match &loaded {
            Some(v) => (v.as_slice(), 0),
            None if layer.cache_not_found => (&[][..], FLAG_UNDEF),
            None => return Ok(None),
        };
        let (packed, cflags) = self.encode_value(layer, value);
        let (_, mut req) = self.request(
            key,
            packed.as_deref().unwrap_or(value),
            Expiry::Default,
            now,
        );
        req.flags = flags | cflags;
        if let Some(at) = store_expiry {
            // The copy must not outlive the store's value: the whole second before it, with a
            // margin for the coarse clock that expiry is checked with.
            let at = Clock::copy_expiry_secs(at);
            let at = u32::try_from(at).unwrap_or(u32::MAX);
            if at <= now {
                return Ok(handed(loaded));
            }
            if req.expire_on == 0 || at < req.expire_on {
                req.expire_on = at;
            }
        }
        if self.check_size(&req).is_err() {
            // Too large to cache: handed over all the same.
            return Ok(handed(loaded));
        }
        match self.store_keeping_dirty(&req, page, now, true) {
            Ok(Kept::Existing(stored, flags)) => self.in_file(key, stored, flags),
            Ok(Kept::Stored(_)) => {
                self.keep_if_fenced(backing, &req, page, fence)?;
                Ok(handed(loaded))
            }
            // A large value the overflow area has no room for: handed over uncached.
            Err(crate::Error::OverflowFull { .. }) => Ok(handed(loaded)),
            Err(e) => Err(e),
        }
    }

    /// `get_with` through a layer: `f` sees the value once it is read (and decompressed), with
    /// no lock held.
    pub(super) fn get_with_layered<R>(
        &self,
        layer: &Layer,
        key: &[u8],
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>> {
        Ok(self.get_layered(layer, key)?.map(|v| f(&v)))
    }

    /// `get_many` through a layer: one key at a time, each through `get`'s path.
    pub(super) fn get_many_layered<K: AsRef<[u8]>>(
        &self,
        layer: &Layer,
        keys: &[K],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter()
            .map(|k| self.get_layered(layer, k.as_ref()))
            .collect()
    }

    /// `purge` or `clear` through a layer: dirty entries are written back to the backing
    /// store before they go.
    pub(super) fn evict_layered(&self, layer: &Layer, mode: crate::page::Evict) -> Result<usize> {
        if layer.backing.is_some() {
            self.evict_all_keeping_dirty(mode)
        } else {
            self.evict_all(mode)
        }
    }

    /// The entry as the cache holds it, its value decompressed (no read-through).
    pub(crate) fn entry_layered(&self, key: &[u8]) -> Result<Option<Entry>> {
        let Some(mut entry) = self.read_owned(key, Entry::with_value)? else {
            return Ok(None);
        };
        self.decode_entry(key, &mut entry)?;
        Ok(Some(entry))
    }

    /// `set` through a layer.
    pub(crate) fn set_layered(
        &self,
        layer: &Layer,
        key: &[u8],
        value: &[u8],
        expiry: Expiry,
        flags: u32,
    ) -> Result<bool> {
        let now = self.now();
        let (packed, cflags) = self.encode_value(layer, value);
        let (page, mut req) = self.request(key, packed.as_deref().unwrap_or(value), expiry, now);
        req.flags = flags | cflags;
        let Some(backing) = &layer.backing else {
            return Ok(self.store(&req, page, now)? != StoreOutcome::Refused);
        };
        self.check_size(&req)?;
        // Write-through: the store and the page change in one order for every writer. (A
        // write-back `set` only changes the page; the write-backs its store may need take
        // the lock themselves.)
        let _write_back = match layer.mode {
            WriteMode::Through => self.write_back_lock(page)?,
            WriteMode::Back => None,
        };
        let fence = match layer.mode {
            WriteMode::Through => {
                let fence = backing.fence(key);
                let expires_at = (req.expire_on != 0).then(|| from_unix_secs(req.expire_on));
                backing
                    .store(key, value, expires_at)
                    .map_err(|e| self.backing_error("store", Some(key), e))?;
                Some(fence)
            }
            WriteMode::Back => {
                req.flags |= FLAG_DIRTY;
                None
            }
        };
        match self.store_keeping_dirty(&req, page, now, false) {
            Ok(Kept::Stored(outcome)) => {
                if let Some(fence) = fence {
                    self.keep_if_fenced(backing, &req, page, fence)?;
                }
                Ok(outcome != StoreOutcome::Refused)
            }
            Ok(Kept::Existing(..)) => unreachable!("only stores with if_absent find a value"),
            // The backing store has the new value and the cache could not take it (the
            // overflow area full of dirty values, a resize to smaller pages, a damaged page):
            // a clean copy of the key is the old value, no longer the store's, and goes. A
            // dirty one is a write of its own that the store has not seen, and stays. Not
            // after a lock error: a second wait would double the caller's deadline.
            Err(e)
                if fence.is_some()
                    && !matches!(
                        e,
                        crate::Error::LockTimeout { .. }
                            | crate::Error::Lock { .. }
                            | crate::Error::Reentrant { .. }
                    ) =>
            {
                let _ = self.drop_clean_copy(&req, page);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// `set_many` through a layer: one `set` per pair, after checking that all fit.
    pub(crate) fn set_many_layered<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        layer: &Layer,
        pairs: &[(K, V)],
    ) -> Result<usize> {
        let now = self.now();
        for (k, v) in pairs {
            let (packed, _) = self.encode_value(layer, v.as_ref());
            let value = packed.as_deref().unwrap_or(v.as_ref());
            self.check_size(&self.request(k.as_ref(), value, Expiry::Default, now).1)?;
        }
        let mut stored = 0;
        for (k, v) in pairs {
            if self.set_layered(layer, k.as_ref(), v.as_ref(), Expiry::Default, 0)? {
                stored += 1;
            }
        }
        Ok(stored)
    }

    /// `remove` through a layer. Its live entry is read first, under the lock, and dealt with
    /// as `take` deals with it (see [`delete_taken`](Self::delete_taken)): a clean one is taken
    /// out before the store deletes the key, and put back if that fails; a dirty one goes once
    /// the store has deleted it. (Deleting first and locking after could fail at the lock,
    /// leaving the cache serving a value the store no longer has.)
    pub(crate) fn remove_layered(&self, layer: &Layer, key: &[u8]) -> Result<bool> {
        let (page, slot_hash) = self.locate(key);
        let now = self.now();
        let _write_back = self.write_back_lock(page)?;
        let Some(backing) = &layer.backing else {
            let mut guard = self.lock_for_change(page)?;
            let removed = guard.change(|p| p.remove(slot_hash, key, now));
            return Ok(removed.ok().flatten().is_some_and(|r| r.was_live));
        };
        match self.take_out(layer, key, page, slot_hash, now, false)? {
            Some(taken) if !is_negative(taken.flags) => {
                self.delete_taken(backing, key, slot_hash, &taken, page, now)?;
                Ok(true)
            }
            found => {
                backing
                    .delete(key)
                    .map_err(|e| self.backing_error("delete", Some(key), e))?;
                if found.is_none() {
                    // An expired entry of the key goes too.
                    let mut guard = self.lock_for_change(page)?;
                    let _ = guard.change(|p| p.remove(slot_hash, key, now));
                }
                Ok(false)
            }
        }
    }

    /// The live entry of `key` in `page`, read under the lock, and taken out of the file
    /// unless it must stay until the backing store has deleted the key
    /// ([`leaves_after_delete`]). `count` counts the read in the statistics.
    fn take_out(
        &self,
        layer: &Layer,
        key: &[u8],
        page: Loc,
        slot_hash: u32,
        now: u32,
        count: bool,
    ) -> Result<Option<Taken>> {
        let mut guard = self.lock_for_change(page)?;
        let at = guard.place();
        let found = guard
            .page()
            .get(slot_hash, key, now, count && self.inner.stats)
            .and_then(|e| {
                e.map(|e| {
                    self.resolve(at, e.value, e.flags)
                        .map(|(stored, flags)| Taken {
                            stored,
                            flags,
                            expire_on: e.expire_on,
                        })
                })
                .transpose()
            });
        Ok(match found {
            Ok(Some(found)) => {
                if !leaves_after_delete(layer, found.flags) {
                    let _ = guard.change(|p| p.remove(slot_hash, key, now));
                }
                Some(found)
            }
            Ok(None) => None,
            Err(c) => {
                guard.reset_for(c);
                None
            }
        })
    }

    /// `take` through a layer: a clean entry is removed from the cache under its lock, then
    /// deleted from the backing store; if that fails, the entry goes back into the cache
    /// (unless the key was stored meanwhile) and the take fails. A dirty entry stays in the
    /// cache until the store has deleted the key (see [`delete_taken`](Self::delete_taken)).
    pub(crate) fn take_layered(&self, layer: &Layer, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let (page, slot_hash) = self.locate(key);
        let now = self.now();
        let _write_back = self.write_back_lock(page)?;
        let taken = self.take_out(layer, key, page, slot_hash, now, true)?;
        let Some(backing) = &layer.backing else {
            return taken
                .map(|t| self.decode_value(key, t.stored, t.flags))
                .transpose();
        };
        match taken {
            Some(taken) if is_negative(taken.flags) => Ok(None),
            Some(taken) => {
                self.delete_taken(backing, key, slot_hash, &taken, page, now)?;
                self.decode_value(key, taken.stored, taken.flags).map(Some)
            }
            None => {
                let loaded = backing
                    .load(key)
                    .map_err(|e| self.backing_error("load", Some(key), e))?;
                if loaded.is_some() {
                    backing
                        .delete(key)
                        .map_err(|e| self.backing_error("delete", Some(key), e))?;
                }
                Ok(loaded)
            }
        }
    }

    /// `get_or_insert_with` through a layer: read-through first; a computed value is stored
    /// as `set` would store it (write-through: in the cache, dirty, then in the backing store,
    /// then marked clean).
    pub(crate) fn get_or_insert_layered(
        &self,
        layer: &Layer,
        key: &[u8],
        f: impl FnOnce() -> Vec<u8>,
    ) -> Result<Vec<u8>> {
        if let Some(v) = self.get_layered(layer, key)? {
            return Ok(v);
        }
        if self.inner.read_only {
            return Err(crate::Error::ReadOnly {
                path: self.path().to_path_buf(),
            });
        }
        let value = f();
        let now = self.now();
        let (packed, cflags) = self.encode_value(layer, &value);
        let (page, mut req) = self.request(
            key,
            packed.as_deref().unwrap_or(&value),
            Expiry::Default,
            now,
        );
        req.flags = cflags
            | if layer.backing.is_some() {
                FLAG_DIRTY
            } else {
                0
            };
        let _write_back = self.write_back_lock(page)?;
        match self.store_keeping_dirty(&req, page, now, true)? {
            Kept::Existing(stored, flags) => self.decode_value(key, stored, flags),
            Kept::Stored(_) => {
                self.write_through(layer, &req, page)?;
                Ok(value)
            }
        }
    }

    /// Deletes `key`, whose entry `taken` (in `page`) `take`, `remove` or an update's `Remove`
    /// read under the lock, from the backing store, and completes its removal from the file: a
    /// clean entry was already taken out, and is put back if the delete fails (so the cache
    /// keeps what it had); a dirty one goes only once the store has deleted the key. Returns
    /// the backing store's error.
    fn delete_taken(
        &self,
        backing: &std::sync::Arc<dyn crate::Backing>,
        key: &[u8],
        slot_hash: u32,
        taken: &Taken,
        page: Loc,
        now: u32,
    ) -> Result<()> {
        let deleted = backing
            .delete(key)
            .map_err(|e| self.backing_error("delete", Some(key), e));
        if taken.flags & FLAG_DIRTY == 0 {
            // A clean entry was taken out first; put back if the store kept the key.
            if deleted.is_err() {
                let entry = NewEntry {
                    slot_hash,
                    key,
                    value: &taken.stored,
                    expire_on: taken.expire_on,
                    flags: taken.flags,
                    modseq: None,
                };
                let _ = self.store_keeping_dirty(&entry, page, now, true);
            }
            return deleted;
        }
        // A dirty entry is a write the store has not seen: it stayed in the file through the
        // delete (see `leaves_after_delete`), so that a failure leaves it there, still to be
        // written back, rather than in neither place (a restore can fail too: a full page
        // whose dirty entries the store, down, cannot take). It goes now, unless changed
        // meanwhile: a write that landed after the delete stays. Expired or not: an expired
        // dirty entry would be written back on its way out.
        deleted?;
        let mut guard = self.lock_for_change(page)?;
        let at = guard.place();
        let unchanged = guard
            .page()
            .view()
            .find(slot_hash, key)
            .ok()
            .flatten()
            .is_some_and(|e| {
                e.expire_on == taken.expire_on
                    && self
                        .resolve(at, e.value, e.flags)
                        .is_ok_and(|(v, f)| f == taken.flags && v == taken.stored)
            });
        if unchanged {
            let _ = guard.change(|p| p.remove(slot_hash, key, now));
        }
        Ok(())
    }

    /// For write-through: an entry just stored dirty goes to the backing store, then is marked
    /// clean (unless changed meanwhile). If the store fails, it stays dirty, for `flush` or the
    /// eviction that drops it.
    fn write_through(&self, layer: &Layer, req: &NewEntry<'_>, page: Loc) -> Result<()> {
        let Some(backing) = layer
            .backing
            .as_ref()
            .filter(|_| layer.mode == WriteMode::Through)
        else {
            return Ok(());
        };
        let fence = backing.fence(req.key);
        let copies = [DirtyCopy {
            slot_hash: req.slot_hash,
            key: req.key.to_vec(),
            value: req.value.to_vec(),
            expire_on: req.expire_on,
            flags: req.flags,
            reference: None,
        }];
        self.write_back(&copies)?;
        let mut guard = self.lock_for_change(page)?;
        self.mark_clean(&mut guard, &copies);
        drop(guard);
        self.keep_if_fenced(backing, req, page, fence)
    }

    /// Drops the clean entry just stored by `req` from the file unless the backing store's
    /// fence taken before (`before`) still holds (see [`Backing::fence`]): the key may have
    /// changed on another host meanwhile. A dirty entry there is a newer write and stays.
    fn keep_if_fenced(
        &self,
        backing: &std::sync::Arc<dyn Backing>,
        req: &NewEntry<'_>,
        page: Loc,
        before: Option<u64>,
    ) -> Result<()> {
        if before.is_some() && backing.fence(req.key) == before {
            return Ok(());
        }
        self.drop_clean_copy(req, page)
    }

    /// Removes the cached copy of `req`'s key if it is clean (a copy of what the backing store
    /// had); a dirty one is a write the store has not taken, and stays.
    fn drop_clean_copy(&self, req: &NewEntry<'_>, page: Loc) -> Result<()> {
        let now = self.now();
        let mut guard = self.lock_for_change(page)?;
        let clean = guard
            .page()
            .peek(req.slot_hash, req.key, now)
            .ok()
            .flatten()
            .is_some_and(|e| e.flags & FLAG_DIRTY == 0);
        if clean {
            let _ = guard.change(|p| p.remove(req.slot_hash, req.key, now));
        }
        Ok(())
    }

    /// `update` through a layer. A miss is read through first, so that the closure sees the
    /// backing store's value. The new value is stored dirty under the lock; write-through
    /// then writes it to the backing store and marks it clean. Dirty entries in the way of
    /// its store are written back first (see [`Cache::store_updated`]).
    pub(crate) fn update_layered<R>(
        &self,
        layer: &Layer,
        key: &[u8],
        f: impl FnOnce(Option<Existing<'_>>) -> (Update, R),
    ) -> Result<(Option<Vec<u8>>, R)> {
        let (page, slot_hash) = self.locate(key);
        let now = self.now();
        let backed = layer.backing.is_some();
        let _write_back = self.write_back_lock(page)?;
        let mut loaded_once = false;
        let mut loaded = None;
        let mut guard = loop {
            let mut guard = self.lock_for_change(page)?;
            let live = guard
                .page()
                .peek(slot_hash, key, now)
                .map(|e| e.map(|e| e.flags));
            let missing = match live {
                Ok(Some(_)) => false,
                Ok(None) => true,
                Err(c) => {
                    guard.reset_for(c);
                    true
                }
            };
            if !(missing && backed) || loaded_once {
                break guard;
            }
            drop(guard);
            loaded_once = true;
            loaded = self.get_holding_write_back(layer, key, page, slot_hash, now)?;
        };
        // The closure sees the value decompressed, under the lock.
        let at = guard.place();
        let current = guard
            .page()
            .get(slot_hash, key, now, self.inner.stats)
            .and_then(|e| {
                e.map(|e| {
                    // A large value: its bytes, and its flags without the overflow bit.
                    self.resolve(at, e.value, e.flags).map(|(v, f)| {
                        let mut entry = Entry::with_value(Vec::new(), &e);
                        entry.flags.0 = f;
                        (v, entry, e.expire_on)
                    })
                })
                .transpose()
            });
        // What the closure's decision rests on, as stored (see `store_updated`).
        let seen = match &current {
            Ok(Some((stored, e, expire_on))) => Some(Seen {
                value: stored.clone(),
                flags: e.flags.0,
                expire_on: *expire_on,
            }),
            _ => None,
        };
        let current = current.map(|e| e.map(|(stored, e, _)| (stored, e)));
        let current = match current {
            Ok(Some((_, e))) if backed && is_negative(e.flags.0) => None,
            Ok(Some((stored, e))) => Some((self.decode_value(key, stored, e.flags.0)?, e)),
            Ok(None) => None,
            Err(c) => {
                guard.reset_for(c);
                None
            }
        };
        // The store's value, which the read-through above could not leave in the file (its
        // fence moved or the host distrusts its copies, the store's expiry is within the
        // second, a large value found no room): the closure sees it all the same, and a
        // removal deletes it from the store. Without this the closure would see no value for
        // a key the store holds, and its decision would overwrite or keep what it never saw.
        let only_in_store = current.is_none() && loaded.is_some();
        let current = match (current, loaded) {
            (None, Some(Loaded { value, expires_at })) => Some((
                value,
                Entry {
                    value: Vec::new(),
                    expires_at,
                    last_access: from_unix_secs(now),
                    modseq: None,
                    flags: EntryFlags(0),
                },
            )),
            (current, _) => current,
        };
        let existing = current.as_ref().map(|(value, e)| Existing {
            value,
            expires_at: e.expires_at,
            last_access: e.last_access,
            flags: e.flags,
        });
        let (decision, r) = f(existing);
        let (value, expiry) = match decision {
            Update::Keep => return Ok((current.map(|(v, _)| v), r)),
            Update::Remove => {
                let old = guard
                    .page()
                    .peek(slot_hash, key, now)
                    .ok()
                    .flatten()
                    .and_then(|e| {
                        let (stored, flags) = self.resolve(at, e.value, e.flags).ok()?;
                        Some(Taken {
                            stored,
                            flags,
                            expire_on: e.expire_on,
                        })
                    });
                if !old
                    .as_ref()
                    .is_some_and(|old| leaves_after_delete(layer, old.flags))
                {
                    let _ = guard.change(|p| p.remove(slot_hash, key, now));
                }
                drop(guard);
                if let (Some(backing), true) = (&layer.backing, only_in_store) {
                    backing
                        .delete(key)
                        .map_err(|e| self.backing_error("delete", Some(key), e))?;
                } else if let (Some(backing), Some(old)) = (&layer.backing, old) {
                    self.delete_taken(backing, key, slot_hash, &old, page, now)?;
                }
                return Ok((None, r));
            }
            Update::Set(v) => (v, Expiry::Default),
            Update::SetWith(v, e) => (v, e),
        };
        let (packed, cflags) = self.encode_value(layer, &value);
        let (_, mut req) = self.request(key, packed.as_deref().unwrap_or(&value), expiry, now);
        req.flags = cflags | if backed { FLAG_DIRTY } else { 0 };
        let (mut guard, stored, evicted) = self.store_updated(guard, &req, page, now, seen)?;
        let Some(stored) = stored else {
            // Overtaken: another writer stored the key while dirty entries in the way were
            // written back. This update took effect just before that write, which replaced it.
            return Ok((Some(value), r));
        };
        let refused = match stored {
            StoreOutcome::TooLarge => return Err(self.refused(&req)),
            StoreOutcome::Refused => true,
            _ => false,
        };
        let now_held = refused.then(|| {
            guard
                .page()
                .peek(slot_hash, key, now)
                .ok()
                .flatten()
                .and_then(|e| self.resolve(at, e.value, e.flags).ok())
        });
        drop(guard);
        self.write_back(&evicted)?;
        if let Some(held) = now_held {
            return Ok((
                held.map(|(stored, flags)| self.decode_value(key, stored, flags))
                    .transpose()?,
                r,
            ));
        }
        self.write_through(layer, &req, page)?;
        Ok((Some(value), r))
    }
}

/// Whether an entry with `flags`, read by `take` or an update's `Remove`, stays in the file
/// until the backing store has deleted its key (see `Cache::delete_taken`): a dirty entry of a
/// backed handle, a write the store has not seen.
fn leaves_after_delete(layer: &Layer, flags: u32) -> bool {
    layer.backing.is_some() && flags & FLAG_DIRTY != 0 && !is_negative(flags)
}
