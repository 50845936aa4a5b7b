//! Every live entry, page by page: `iter` and `keys`.

use super::handle::{Cache, Entry};
use crate::Result;
use crate::page::consts::FLAG_TOMBSTONE;

impl Cache {
    /// Every live entry, page by page: each page is locked only while its entries are copied
    /// out, so the iterator holds no lock between calls and the cache may change under it.
    pub fn iter(&self) -> Iter {
        Iter {
            cache: self.clone(),
            next_page: 0,
            buffered: Vec::new(),
        }
    }

    /// Every live key, page by page (see [`iter`](Self::iter)).
    pub fn keys(&self) -> impl Iterator<Item = Result<Vec<u8>>> + use<> {
        self.iter().map(|r| r.map(|(k, _)| k))
    }

    /// Whether an entry found in `page` with this stored slot hash could have been stored
    /// under `key`: by `set` (the key hashes to both), or by `multi_set` (the key is
    /// `page_key-…` for a page key of this page).
    fn belongs(&self, key: &[u8], page: u32, slot_hash: u32) -> bool {
        let (key_page, key_slot_hash) = self.locate(key);
        key_slot_hash == slot_hash
            && (key_page == page
                || key
                    .iter()
                    .enumerate()
                    .any(|(i, &b)| b == b'-' && self.locate(&key[..i]).0 == page))
    }

    /// The live entries of one page, copied out under its lock.
    fn page_entries(&self, page: u32) -> Result<Vec<(Vec<u8>, Entry)>> {
        let now = self.now();
        let mut reader = self.read_page(page)?;
        let mut out = Vec::new();
        // A key whose bytes were damaged no longer hashes to the slot hash stored with it
        // (lookups never match it); here it would come out as a key that was never stored.
        let mut damaged = false;
        let walked = reader.for_each_entry(|e| {
            if !self.belongs(e.key, page, e.slot_hash) {
                damaged = true;
            } else if !crate::page::consts::is_expired(e.expire_on, now)
                && e.flags & FLAG_TOMBSTONE == 0
            {
                out.push((e.key.to_vec(), Entry::from_ref(e)));
            }
        });
        if walked.is_err() || damaged {
            reader.reset();
            out.clear();
        }
        drop(reader);
        self.way().decode_entries(&mut out)?;
        Ok(out)
    }
}

/// Iterator over a cache's live entries; see [`Cache::iter`].
pub struct Iter {
    cache: Cache,
    next_page: u32,
    buffered: Vec<(Vec<u8>, Entry)>,
}

impl Iterator for Iter {
    type Item = Result<(Vec<u8>, Entry)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.buffered.pop() {
                return Some(Ok(item));
            }
            if self.next_page >= self.cache.num_pages() {
                return None;
            }
            let page = self.next_page;
            self.next_page += 1;
            match self.cache.page_entries(page) {
                Ok(mut entries) => {
                    entries.reverse();
                    self.buffered = entries;
                }
                Err(e) => {
                    self.next_page = self.cache.num_pages();
                    return Some(Err(e));
                }
            }
        }
    }
}
