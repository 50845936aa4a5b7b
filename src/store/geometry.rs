//! A file's geometry: how many pages, how large, how many slots each starts with.

use std::path::Path;

use crate::page::consts::{MAX_PAGE_SIZE, MIN_PAGE_SIZE, MIN_SLOTS};
use crate::{Error, Result};

/// Default geometry (Cache::FastMmap's).
pub(crate) const DEFAULT_NUM_PAGES: u32 = 89;
pub(crate) const DEFAULT_PAGE_SIZE: u32 = 65536;
/// Most pages a file may have.
pub(crate) const MAX_NUM_PAGES: u32 = 1 << 20;
/// Largest file the crate creates.
pub(crate) const MAX_FILE_SIZE: u64 = 1 << 40;

/// Pages, page size and starting slot count of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub num_pages: u32,
    pub page_size: u32,
    pub start_slots: u32,
}

impl Geometry {
    /// Checks the geometry is one the crate can use; the error is the reason.
    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        let ps = self.page_size as usize;
        if !self.page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&ps) {
            return Err(format!(
                "page_size {} must be a power of two from {MIN_PAGE_SIZE} to {MAX_PAGE_SIZE}",
                self.page_size
            ));
        }
        if self.num_pages == 0 || self.num_pages > MAX_NUM_PAGES {
            return Err(format!(
                "num_pages {} must be from 1 to {MAX_NUM_PAGES}",
                self.num_pages
            ));
        }
        let total = u64::from(self.num_pages) * u64::from(self.page_size);
        if total > MAX_FILE_SIZE {
            return Err(format!(
                "{total} bytes of pages is more than the {MAX_FILE_SIZE} allowed"
            ));
        }
        if self.start_slots < MIN_SLOTS {
            return Err(format!(
                "start_slots {} must be at least {MIN_SLOTS}",
                self.start_slots
            ));
        }
        let table = crate::page::consts::slots_end(self.start_slots).unwrap_or(usize::MAX);
        if table > ps / 2 {
            return Err(format!(
                "a slot table of {} slots ({table} bytes with the page header) must fit in half a page ({} bytes)",
                self.start_slots,
                ps / 2
            ));
        }
        Ok(())
    }
}

/// Geometry fields the builder set explicitly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Requested {
    pub num_pages: Option<u32>,
    pub page_size: Option<u32>,
    pub start_slots: Option<u32>,
}

impl Requested {
    pub(crate) fn or_defaults(&self) -> Geometry {
        Geometry {
            num_pages: self.num_pages.unwrap_or(DEFAULT_NUM_PAGES),
            page_size: self.page_size.unwrap_or(DEFAULT_PAGE_SIZE),
            start_slots: self.start_slots.unwrap_or(MIN_SLOTS),
        }
    }

    /// Fails if an explicitly requested field differs from the file's.
    pub(crate) fn check_against(&self, found: &Geometry, path: &Path) -> Result<()> {
        let fields = [
            ("num_pages", self.num_pages, found.num_pages),
            ("page_size", self.page_size, found.page_size),
            ("start_slots", self.start_slots, found.start_slots),
        ];
        for (field, requested, found) in fields {
            if let Some(requested) = requested
                && requested != found
            {
                return Err(Error::GeometryMismatch {
                    path: path.to_path_buf(),
                    field,
                    requested: u64::from(requested),
                    found: u64::from(found),
                });
            }
        }
        Ok(())
    }
}
