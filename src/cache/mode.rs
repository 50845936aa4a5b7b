//! The one place a handle's mode is decided: a plain cache (`plain.rs`: values go to the
//! pages as they are) or a layered one (`layered.rs`: through a backing store, compression).
//!
//! The builder makes a [`Layer`] or none, once; every public method of [`Cache`] that the
//! two modes do differently has one body, `self.way().…`, and [`Way`] holds the one `match`
//! per operation. A new mode is a new variant here and a file of its own, not a branch in
//! every method.

use std::sync::Arc;

use super::expiry::Expiry;
use super::handle::{Cache, Entry, Update};
use super::update::Existing;
use crate::page::Evict;
use crate::{Backing, Compression, Result, WriteMode};

/// What a handle puts between its callers and the pages: a backing store, compression.
pub(crate) struct Layer {
    pub(crate) backing: Option<Arc<dyn Backing>>,
    pub(crate) mode: WriteMode,
    pub(crate) cache_not_found: bool,
    pub(crate) compression: Option<Compression>,
}

impl Layer {
    /// Whether a `get` may be served from the file ([`Backing::trusts_cached`]).
    #[inline]
    pub(crate) fn trusts_cached(&self) -> bool {
        self.backing.as_ref().is_none_or(|b| b.trusts_cached())
    }
}

impl std::fmt::Debug for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layer")
            .field("backing", &self.backing.is_some())
            .field("mode", &self.mode)
            .field("cache_not_found", &self.cache_not_found)
            .field("compression", &self.compression)
            .finish()
    }
}

/// The way an operation of a handle goes, as its builder chose it.
#[derive(Clone, Copy)]
pub(super) enum Way<'a> {
    /// Values are stored and returned as they are; nothing else is called.
    Plain(&'a Cache),
    /// Through the handle's layer.
    Layered(&'a Cache, &'a Layer),
}

impl Cache {
    /// The way this handle's operations go.
    #[inline]
    pub(super) fn way(&self) -> Way<'_> {
        match &self.inner.layer {
            None => Way::Plain(self),
            Some(layer) => Way::Layered(self, layer),
        }
    }
}

impl Way<'_> {
    #[inline]
    pub(super) fn set(self, key: &[u8], value: &[u8], expiry: Expiry, flags: u32) -> Result<bool> {
        match self {
            Way::Plain(c) => c.set_plain(key, value, expiry, flags),
            Way::Layered(c, l) => c.set_layered(l, key, value, expiry, flags),
        }
    }

    #[inline]
    pub(super) fn get(self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self {
            Way::Plain(c) => c.get_plain(key),
            Way::Layered(c, l) => c.get_layered(l, key),
        }
    }

    pub(super) fn get_with<R>(self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>> {
        match self {
            Way::Plain(c) => c.get_with_plain(key, f),
            Way::Layered(c, l) => c.get_with_layered(l, key, f),
        }
    }

    pub(super) fn entry(self, key: &[u8]) -> Result<Option<Entry>> {
        match self {
            Way::Plain(c) => c.entry_plain(key),
            Way::Layered(c, _) => c.entry_layered(key),
        }
    }

    pub(super) fn remove(self, key: &[u8]) -> Result<bool> {
        match self {
            Way::Plain(c) => c.remove_plain(key),
            Way::Layered(c, l) => c.remove_layered(l, key),
        }
    }

    pub(super) fn take(self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self {
            Way::Plain(c) => c.take_plain(key),
            Way::Layered(c, l) => c.take_layered(l, key),
        }
    }

    pub(super) fn update<R>(
        self,
        key: &[u8],
        f: impl FnOnce(Option<Existing<'_>>) -> (Update, R),
    ) -> Result<(Option<Vec<u8>>, R)> {
        match self {
            Way::Plain(c) => c.update_plain(key, f),
            Way::Layered(c, l) => c.update_layered(l, key, f),
        }
    }

    pub(super) fn get_or_insert(self, key: &[u8], f: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>> {
        match self {
            Way::Plain(c) => c.get_or_insert_plain(key, f),
            Way::Layered(c, l) => c.get_or_insert_layered(l, key, f),
        }
    }

    pub(super) fn get_many<K: AsRef<[u8]>>(self, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>> {
        match self {
            Way::Plain(c) => c.get_many_plain(keys),
            Way::Layered(c, l) => c.get_many_layered(l, keys),
        }
    }

    pub(super) fn set_many<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        self,
        pairs: &[(K, V)],
    ) -> Result<usize> {
        match self {
            Way::Plain(c) => c.set_many_plain(pairs),
            Way::Layered(c, l) => c.set_many_layered(l, pairs),
        }
    }

    /// Drops what `mode` says from every page; returns how many entries went.
    pub(super) fn evict(self, mode: Evict) -> Result<usize> {
        match self {
            Way::Plain(c) => c.evict_all(mode),
            Way::Layered(c, l) => c.evict_layered(l, mode),
        }
    }

    /// Makes entries copied out of a page what a caller reads (decompressed).
    pub(super) fn decode_entries(self, entries: &mut [(Vec<u8>, Entry)]) -> Result<()> {
        match self {
            Way::Plain(_) => Ok(()),
            Way::Layered(c, _) => entries
                .iter_mut()
                .try_for_each(|(key, entry)| c.decode_entry(key, entry)),
        }
    }
}
