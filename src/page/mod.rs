//! The page format as pure functions over byte slices: no I/O, no clock, no locks.
//!
//! Everything read from a page is checked before use; a check that fails is a [`Corrupt`]
//! value naming what was wrong, never a panic. The caller (the cache) resets such a page.

mod bytes;
mod check;
pub mod consts;
mod dirty;
mod entry;
mod evict;
mod header;
mod lookup;
mod policy;
mod view;

pub use bytes::PageBytes;
pub use check::check_page;
#[allow(unused_imports)] // part of the page API used by tests and fuzz targets
pub use dirty::{Dirty, DirtyCopy, count_dirty};
pub use entry::EntryRef;
pub use evict::{Evict, Spare};
pub use header::PageHeader;
pub use lookup::{Copied, find_copy};
#[allow(unused_imports)] // part of the page API used by tests and fuzz targets
pub use view::{NewEntry, PageMut, PageView, Removed, StoreOutcome};

/// A page failed validation; the reason is one line of text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Corrupt(pub &'static str);

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

#[cfg(test)]
mod tests;
