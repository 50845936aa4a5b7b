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
    /// A [`resize`](Self::resize) finished while iterating sends the iterator on to the new
    /// file (whether or not this handle has followed it yet), where it skips the keys whose
    /// pages it had already visited (a key stored with [`multi_set`](Self::multi_set) by the
    /// page of its page key), so that each key comes once.
    pub fn iter(&self) -> Iter {
        Iter {
            cache: self.clone(),
            file: self.inner.file.arc(),
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

    /// The live entries of page `page` of `file`, copied out under its lock, each with what
    /// placed it ([`home`](Self::home)); `None` if a resize moved the page (the walk goes on
    /// in `file`'s successor).
    fn page_entries(&self, file: &SharedFile, page: u32) -> Result<Option<Vec<(Loc, KeyEntry)>>> {
        let now = self.now();
        let num_pages = file.geometry().num_pages;
        let Some(mut reader) = self.read_page_at(file, page)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        let mut homes = Vec::new();
        // A key whose bytes were damaged no longer hashes to the slot hash stored with it
        // (lookups never match it); here it would come out as a key that was never stored.
        let mut damaged = false;
        let walked =
            reader.for_each_entry(|e| match self.home(e.key, page, num_pages, e.slot_hash) {
                None => damaged = true,
                Some(home)
                    if !crate::page::consts::is_expired(e.expire_on, now)
                        && e.flags & FLAG_TOMBSTONE == 0 =>
                {
                    homes.push(home);
                    out.push((e.key.to_vec(), Entry::from_ref(e)));
                }
                Some(_) => {}
            });
        if walked.is_err() || damaged {
            reader.reset();
            out.clear();
            homes.clear();
        }
        drop(reader);
        self.way().decode_entries(&mut out)?;
        Ok(Some(homes.into_iter().zip(out).collect()))
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
    /// Files walked before a resize moved them: (pages, pages visited). Keys of visited pages
    /// are not returned again from a later file.
    visited: Vec<(u32, u32)>,
    buffered: Vec<KeyEntry>,
}

impl Iter {
    /// The walk found its page moved: go on in the successor of the file walked. A resize
    /// that kept the page count (another page size) put every key on the page of the same
    /// number, so the walk goes on at the page it was at (every page before it holds only
    /// keys already visited); otherwise from page 0, skipping the keys of visited pages.
    fn step_to_successor(&mut self) -> Result<()> {
        if self.visited.len() >= MAX_FOLLOWS {
            return Err(self.cache.too_many_moves());
        }
        let num_pages = self.file.geometry().num_pages;
        let next = self.file.successor_arc()?;
        self.visited.push((num_pages, self.next_page));
        if next.geometry().num_pages != num_pages {
            self.next_page = 0;
        }
        self.file = next;
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
            if self.next_page >= num_pages {
                return None;
            }
            let page = self.next_page;
            let step = match self.cache.page_entries(&self.file, page) {
                Ok(Some(mut entries)) => {
                    self.next_page += 1;
                    let visited = &self.visited;
                    entries
                        .retain(|(home, _)| visited.iter().all(|&(n, done)| home.page(n) >= done));
                    self.buffered = entries.into_iter().rev().map(|(_, e)| e).collect();
                    Ok(())
                }
                Ok(None) => self.step_to_successor(),
                Err(e) => Err(e),
            };
            if let Err(e) = step {
                self.next_page = u32::MAX;
                return Some(Err(e));
            }
        }
    }
}
