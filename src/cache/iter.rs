//! Every live entry, page by page: `iter` and `keys`.

use std::sync::Arc;

use super::handle::{Cache, Entry, Loc};
use crate::Result;
use crate::page::consts::FLAG_TOMBSTONE;
use crate::store::{MAX_FOLLOWS, SharedFile};

impl Cache {
    /// Every live entry, page by page: each page is locked only while its entries are copied
    /// out, so the iterator holds no lock between calls and the cache may change under it.
    ///
    /// A [`resize`](Self::resize) met while iterating (pages found moved) sends the iterator,
    /// once past the old file's last page, on to the new file (whether or not this handle has
    /// followed it yet), where it skips the keys whose old pages it visited (a key stored with
    /// [`multi_set`](Self::multi_set) by the page of its page key) and the stale copies of a
    /// move under way, so that each key comes once.
    pub fn iter(&self) -> Iter {
        let file = self.inner.file.arc();
        Iter {
            cache: self.clone(),
            visiting: vec![false; file.geometry().num_pages as usize],
            file,
            next_page: 0,
            visited: Vec::new(),
            buffered: Vec::new(),
        }
    }

    /// Every live key, page by page (see [`iter`](Self::iter)).
    pub fn keys(&self) -> impl Iterator<Item = Result<Vec<u8>>> + use<> {
        self.iter().map(|r| r.map(|(k, _)| k))
    }

    /// What placed an entry found in `page` (of a file of `num_pages`) with this stored slot
    /// hash, if it could have been stored under `key`: the key itself (`set`: the key hashes to
    /// both), or its page key (`multi_set`: the key is `page_key-…` for a page key of this
    /// page). A resize places an entry by the same bytes, so it is where the entry lives in any
    /// file.
    fn home(&self, key: &[u8], page: u32, num_pages: u32, slot_hash: u32) -> Option<Loc> {
        // The slot hash of the walked file, which need not be the handle's (a FastMmap hash
        // splits by the page count).
        let (key_loc, key_slot_hash) = self.locate_in(key, num_pages);
        if key_slot_hash != slot_hash {
            return None;
        }
        if key_loc.page(num_pages) == page {
            return Some(key_loc);
        }
        key.iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'-')
            .map(|(i, _)| self.locate(&key[..i]).0)
            .find(|loc| loc.page(num_pages) == page)
    }

    /// The live entries of page `page` of `file` that `keep` keeps (by key and slot hash),
    /// copied out under its lock; `None` if a resize moved the page (the walk goes on in
    /// `file`'s successor).
    fn page_entries(
        &self,
        file: &SharedFile,
        page: u32,
        keep: impl Fn(&[u8], u32) -> bool,
    ) -> Result<Option<Vec<KeyEntry>>> {
        let now = self.now();
        let num_pages = file.geometry().num_pages;
        let Some(mut reader) = self.read_page_at(file, page)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        // A key whose bytes were damaged no longer hashes to the slot hash stored with it
        // (lookups never match it); here it would come out as a key that was never stored.
        let mut damaged = false;
        let walked =
            reader.for_each_entry(|e| match self.home(e.key, page, num_pages, e.slot_hash) {
                None => damaged = true,
                Some(_)
                    if !crate::page::consts::is_expired(e.expire_on, now)
                        && e.flags & FLAG_TOMBSTONE == 0
                        && keep(e.key, e.slot_hash) =>
                {
                    out.push((e.key.to_vec(), Entry::from_ref(e)));
                }
                Some(_) => {}
            });
        if walked.is_err() || damaged {
            reader.reset();
            out.clear();
        }
        drop(reader);
        self.way().decode_entries(&mut out)?;
        Ok(Some(out))
    }
}

/// A key and its entry, as [`Iter`] returns them.
type KeyEntry = (Vec<u8>, Entry);

/// Iterator over a cache's live entries; see [`Cache::iter`].
pub struct Iter {
    cache: Cache,
    /// The file being walked: the handle's when the walk began, then the successor of each
    /// file a resize moved under the walk. The walk's own cursor, as every operation has (see
    /// `Cache::follow_moves`): it goes on whether or not the handle has followed. Each file
    /// keeps its successor alive, and this `Arc` keeps the file.
    file: Arc<SharedFile>,
    next_page: u32,
    /// The pages of `file` visited (the others were found moved).
    visiting: Vec<bool>,
    /// Files walked before, each with the pages visited there: an entry of a later file is
    /// returned only if its page in each of them was not visited and is marked moved (see
    /// `Walked::counts`, which walks over every page share).
    visited: Vec<(Arc<SharedFile>, Vec<bool>)>,
    buffered: Vec<KeyEntry>,
}

impl Iter {
    /// The walk is past the last page of its file, some of which were found moved: go on
    /// from page 0 of the file's successor.
    fn step_to_successor(&mut self) -> Result<()> {
        if self.visited.len() >= MAX_FOLLOWS {
            return Err(self.cache.too_many_moves());
        }
        let next = self.file.successor_arc()?;
        let pages = next.geometry().num_pages as usize;
        let visiting = std::mem::replace(&mut self.visiting, vec![false; pages]);
        let file = std::mem::replace(&mut self.file, next);
        // A file found moved before any of its pages was visited adds nothing to the filter.
        if visiting.iter().any(|&v| v) {
            self.visited.push((file, visiting));
        }
        self.next_page = 0;
        Ok(())
    }
}

impl Iterator for Iter {
    type Item = Result<(Vec<u8>, Entry)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.buffered.pop() {
                return Some(Ok(item));
            }
            let num_pages = self.file.geometry().num_pages;
            let step = if self.next_page >= num_pages {
                if self.next_page == u32::MAX || self.visiting.iter().all(|&v| v) {
                    return None;
                }
                self.step_to_successor()
            } else {
                let page = self.next_page;
                let visited = &self.visited;
                let keep = |key: &[u8], slot_hash: u32| {
                    visited.iter().all(|(f, seen)| {
                        crate::store::old_page_of(f, num_pages, page, key, slot_hash)
                            .is_some_and(|p| !seen[p as usize] && f.page_moved(p))
                    })
                };
                match self.cache.page_entries(&self.file, page, keep) {
                    Ok(found) => {
                        self.next_page += 1;
                        if let Some(entries) = found {
                            self.visiting[page as usize] = true;
                            self.buffered = entries.into_iter().rev().collect();
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            };
            if let Err(e) = step {
                self.next_page = u32::MAX;
                return Some(Err(e));
            }
        }
    }
}
