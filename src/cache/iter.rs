//! Every live entry, page by page: `iter` and `keys`.

use super::handle::{Cache, Entry, Loc};
use crate::Result;
use crate::page::consts::FLAG_TOMBSTONE;
use crate::store::{MAX_FOLLOWS, SharedFile};

impl Cache {
    /// Every live entry, page by page: each page is locked only while its entries are copied
    /// out, so the iterator holds no lock between calls and the cache may change under it.
    ///
    /// A [`resize`](Self::resize) finished while iterating sends the iterator on to the new
    /// file, where it skips the keys whose pages it had already visited (a key stored with
    /// [`multi_set`](Self::multi_set) by the page of its page key), so that each key comes
    /// once.
    pub fn iter(&self) -> Iter {
        Iter {
            cache: self.clone(),
            next_page: 0,
            num_pages: self.num_pages(),
            visited: Vec::new(),
            buffered: Vec::new(),
        }
    }

    /// Every live key, page by page (see [`iter`](Self::iter)).
    pub fn keys(&self) -> impl Iterator<Item = Result<Vec<u8>>> + use<> {
        self.iter().map(|r| r.map(|(k, _)| k))
    }

    /// What placed an entry found in `page` (of `num_pages`) with this stored slot hash, if it
    /// could have been stored under `key`: the key itself (`set`: the key hashes to both), or
    /// its page key (`multi_set`: the key is `page_key-…` for a page key of this page). A
    /// resize places an entry by the same bytes, so it is where the entry lives in any file.
    fn home(&self, key: &[u8], page: u32, num_pages: u32, slot_hash: u32) -> Option<Loc> {
        let (key_loc, key_slot_hash) = self.locate(key);
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

    /// The live entries of page `page` of a file of `num_pages` pages, copied out under its
    /// lock, each with what placed it ([`home`](Self::home)); `None` if the handle's file is no
    /// longer of that many pages (a resize moved it).
    fn page_entries(&self, page: u32, num_pages: u32) -> Result<Option<Vec<(Loc, KeyEntry)>>> {
        let now = self.now();
        let file: &SharedFile = &self.inner.file;
        if file.geometry().num_pages != num_pages {
            return Ok(None);
        }
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
    next_page: u32,
    /// Pages of the file being walked.
    num_pages: u32,
    /// Files walked before a resize moved them: (pages, pages visited). Keys of visited pages
    /// are not returned again from the new file.
    visited: Vec<(u32, u32)>,
    buffered: Vec<KeyEntry>,
}

impl Iterator for Iter {
    type Item = Result<(Vec<u8>, Entry)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.buffered.pop() {
                return Some(Ok(item));
            }
            if self.next_page >= self.num_pages {
                return None;
            }
            let page = self.next_page;
            match self.cache.page_entries(page, self.num_pages) {
                Ok(Some(mut entries)) => {
                    self.next_page += 1;
                    let visited = &self.visited;
                    entries
                        .retain(|(home, _)| visited.iter().all(|&(n, done)| home.page(n) >= done));
                    self.buffered = entries.into_iter().rev().map(|(_, e)| e).collect();
                }
                Ok(None) => {
                    if self.visited.len() >= MAX_FOLLOWS {
                        self.next_page = self.num_pages;
                        return Some(Err(self.cache.too_many_moves()));
                    }
                    self.visited.push((self.num_pages, self.next_page));
                    self.num_pages = self.cache.num_pages();
                    self.next_page = 0;
                }
                Err(e) => {
                    self.next_page = self.num_pages;
                    return Some(Err(e));
                }
            }
        }
    }
}
