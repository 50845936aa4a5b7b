//! The plain way of a handle (see `mode.rs`): values go to the pages as they are given and
//! come back as they were stored; nothing but the file is touched. The public methods in
//! `handle.rs` document these.

use super::expiry::Expiry;
use super::handle::{Cache, Entry, Loc, Update};
use super::update::Existing;
use crate::page::{Copied, NewEntry, StoreOutcome};
use crate::store::{SharedFile, peek_locked, read_locked, read_locked_value};
use crate::{Error, Result};

impl Cache {
    pub(super) fn set_plain(
        &self,
        key: &[u8],
        value: &[u8],
        expiry: Expiry,
        flags: u32,
    ) -> Result<bool> {
        let now = self.now();
        let (page, mut req) = self.request(key, value, expiry, now);
        req.flags = flags;
        Ok(self.store(&req, page, now)? != StoreOutcome::Refused)
    }

    pub(super) fn get_plain(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let (page, slot_hash) = self.locate(key);
        let now = self.now();
        let mut copied = Copied::default();
        if let Some(hit) = self.read_unlocked(page, slot_hash, key, now, true, &mut copied) {
            return Ok(hit.then_some(copied.value));
        }
        self.read_owned_at(page, slot_hash, key, now, |value, _| value)
    }

    pub(super) fn get_with_plain<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>> {
        self.read(key, |e| f(e.value))
    }

    pub(super) fn entry_plain(&self, key: &[u8]) -> Result<Option<Entry>> {
        let (page, slot_hash) = self.locate(key);
        let now = self.now();
        let mut copied = Copied::default();
        if let Some(hit) = self.read_unlocked(page, slot_hash, key, now, true, &mut copied) {
            return Ok(hit.then(|| Entry::from_copied(copied)));
        }
        self.read_owned_at(page, slot_hash, key, now, Entry::with_value)
    }

    pub(super) fn remove_plain(&self, key: &[u8]) -> Result<bool> {
        let (page, slot_hash) = self.locate(key);
        let now = self.now();
        let mut guard = self.lock_page(page)?;
        Ok(guard
            .change(|p| p.remove(slot_hash, key, now))
            .ok()
            .flatten()
            .is_some_and(|r| r.was_live))
    }

    pub(super) fn take_plain(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let (page, slot_hash) = self.locate(key);
        let now = self.now();
        let mut guard = self.lock_page(page)?;
        let value = read_locked_value(&mut guard, slot_hash, key, now, self.inner.stats);
        if value.is_some() {
            let _ = guard.change(|p| p.remove(slot_hash, key, now));
        }
        Ok(value)
    }

    pub(super) fn get_or_insert_plain(
        &self,
        key: &[u8],
        f: impl FnOnce() -> Vec<u8>,
    ) -> Result<Vec<u8>> {
        if let Some(v) = self.get_plain(key)? {
            return Ok(v);
        }
        if self.inner.read_only {
            // Refused before `f` does work whose result could not be stored.
            return Err(Error::ReadOnly {
                path: self.path().to_path_buf(),
            });
        }
        let value = f();
        let now = self.now();
        let (page, req) = self.request(key, &value, Expiry::Default, now);
        let mut guard = self.lock_page(page)?;
        if let Some(existing) = read_locked_value(&mut guard, req.slot_hash, key, now, false) {
            return Ok(existing);
        }
        self.store_locked(&mut guard, &req, now)?;
        Ok(value)
    }

    pub(super) fn get_many_plain<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let now = self.now();
        // Every key's page is located and its lines asked for first, so that their cache
        // misses overlap; then each key is read without a lock where it can be, as `get`
        // reads it, and the keys left over lock their pages, each page once.
        let located: Vec<(Loc, u32)> = keys.iter().map(|k| self.locate(k.as_ref())).collect();
        {
            let file: &SharedFile = &self.inner.file;
            let num_pages = file.geometry().num_pages;
            for &(loc, slot_hash) in &located {
                file.prefetch_page(loc.page(num_pages), slot_hash);
            }
        }
        let mut out = vec![None; keys.len()];
        let mut locked = Vec::new();
        let mut copied = Copied::default();
        for (i, &(loc, slot_hash)) in located.iter().enumerate() {
            // A page a resize moved answers `None` here: its keys go to the lock, which follows.
            match self.read_unlocked(loc, slot_hash, keys[i].as_ref(), now, true, &mut copied) {
                Some(true) => out[i] = Some(std::mem::take(&mut copied.value)),
                Some(false) => {}
                None => locked.push(i),
            }
        }
        if locked.is_empty() {
            return Ok(out);
        }
        // The keys of pages a resize moved go on in the new file; the others were read here
        // (while a move is under way, an unmoved page's keys live only in the old file).
        self.follow_moves(&self.inner.file, |file| {
            let rest = locked.iter().map(|&i| keys[i].as_ref());
            let mut moved = Vec::new();
            for (page, group) in self.group_by_page(file.geometry().num_pages, rest) {
                let Some(mut reader) = self.read_page_at(file, page)? else {
                    moved.extend(group.iter().map(|&(j, _)| locked[j]));
                    continue;
                };
                for (j, slot_hash) in group {
                    let i = locked[j];
                    out[i] = reader.get_owned(
                        slot_hash,
                        keys[i].as_ref(),
                        now,
                        self.inner.stats,
                        |v, _| v,
                    );
                }
            }
            if moved.is_empty() {
                return Ok(Some(()));
            }
            locked = moved;
            Ok(None)
        })?;
        Ok(out)
    }

    pub(super) fn set_many_plain<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        pairs: &[(K, V)],
    ) -> Result<usize> {
        let now = self.now();
        let reqs: Vec<NewEntry<'_>> = pairs
            .iter()
            .map(|(k, v)| self.request(k.as_ref(), v.as_ref(), Expiry::Default, now).1)
            .collect();
        // The pairs of pages a resize moved go on in the new file; the others were stored
        // here (while a move is under way, an unmoved page's keys live only in the old file).
        let mut rest: Vec<usize> = (0..pairs.len()).collect();
        let mut stored = 0;
        self.follow_moves(&self.inner.file, |file| {
            // Every pair still to store must fit this file before any is stored in it: the
            // whole batch, in the file the handle uses; past a resize to smaller pages, the
            // pairs not yet stored (those stored before the move stay, as the resize left them).
            for &i in &rest {
                self.check_size_in(file, &reqs[i])?;
            }
            let mut moved = Vec::new();
            let groups = self.group_by_page(
                file.geometry().num_pages,
                rest.iter().map(|&i| pairs[i].0.as_ref()),
            );
            for (page, group) in groups {
                let Some(mut guard) = self.lock_page_at(file, page)? else {
                    moved.extend(group.iter().map(|&(j, _)| rest[j]));
                    continue;
                };
                for (j, _) in group {
                    if self.store_locked(&mut guard, &reqs[rest[j]], now)? != StoreOutcome::Refused
                    {
                        stored += 1;
                    }
                }
            }
            if moved.is_empty() {
                return Ok(Some(stored));
            }
            rest = moved;
            Ok(None)
        })
    }

    /// `update` in the plain way: the value afterwards, and what the closure computed.
    pub(super) fn update_plain<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<Existing<'_>>) -> (Update, R),
    ) -> Result<(Option<Vec<u8>>, R)> {
        let (page, slot_hash) = self.locate(key);
        let now = self.now();
        let mut guard = self.lock_page(page)?;
        let stats = self.inner.stats;
        // `f` is called from one of two places: with the entry when there is one, else after.
        let mut f = Some(f);
        // A damaged page is reset by the read, and the key is then absent (a large value is
        // read from the overflow area).
        let decided = read_locked(&mut guard, slot_hash, key, now, stats, |e| {
            let (decision, r) = (f.take().expect("called once"))(Some(Existing::of(e, e.value)));
            // What `Keep` returns is the value just read: copied now, not probed for again.
            let kept = matches!(decision, Update::Keep).then(|| e.value.to_vec());
            (decision, r, kept)
        });
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
}
