//! Operations over every page, one page locked at a time: `purge`, `clear`, `stats`,
//! `reset_stats`.

use super::handle::Cache;
use super::stats::{PageStats, Stats};
#[cfg(doc)]
use crate::Error;
use crate::Result;
use crate::page::Evict;

impl Cache {
    /// Drops expired entries from every page (one page locked at a time). Returns how many.
    /// With a backing store, expired dirty entries are written back first (Perl's
    /// `empty(1)`; Perl's `purge` drops them).
    ///
    /// # Errors
    /// Lock errors.
    /// With a [`Backing`](crate::Backing) store: [`Error::Backing`]; a stored value that does not
    /// decompress: [`Error::Decode`].
    pub fn purge(&self) -> Result<usize> {
        self.way().evict(Evict::Expired)
    }

    /// Drops every entry (one page locked at a time). With a backing store, dirty entries are
    /// written back first, as [`empty`](Self::empty) does (Perl's `clear` drops them).
    ///
    /// # Errors
    /// Lock errors.
    /// With a [`Backing`](crate::Backing) store: [`Error::Backing`]; a stored value that does not
    /// decompress: [`Error::Decode`].
    pub fn clear(&self) -> Result<()> {
        self.way().evict(Evict::All).map(|_| ())
    }

    pub(super) fn evict_all(&self, mode: Evict) -> Result<usize> {
        let now = self.now();
        // Past a resize met part way, every entry of the new file is dropped too (stale
        // copies with the rest: `clear` may drop more than it met).
        let (total, _) = self.each_page(
            Cache::lock_page_at,
            0,
            |_, _| {},
            |total, file, _, mut guard, _| {
                let slots = file.geometry().start_slots;
                *total += guard.change(|p| p.evict(mode, now, slots)).unwrap_or(0);
                Ok(())
            },
        )?;
        Ok(total)
    }

    /// Statistics for the whole cache and each page (one page locked at a time).
    ///
    /// # Errors
    /// Lock errors.
    pub fn stats(&self) -> Result<Stats> {
        let (mut stats, file) = self.each_page(
            Cache::read_page_at,
            Stats::default(),
            |_, _| {},
            |stats, file, page, mut reader, walked| {
                let h = reader.header();
                // Past a resize met on the way, only the entries the walk has not met count
                // (never a stale copy, never one counted in the old file).
                let entries = if walked.first() {
                    h.num_slots.saturating_sub(h.free_slots)
                } else {
                    let n = file.geometry().num_pages;
                    let mut entries = 0;
                    let _ = reader.for_each_entry(|e| {
                        if walked.counts(n, page, e.key, e.slot_hash) {
                            entries += 1;
                        }
                    });
                    entries
                };
                stats.add(PageStats {
                    entries,
                    slots: h.num_slots,
                    used_bytes: h.used_bytes(),
                    free_bytes: h.free_bytes,
                    reads: h.n_reads,
                    hits: h.n_read_hits,
                    resets: file.resets(page),
                });
                Ok(())
            },
        )?;
        if let Some(u) = file.overflow_usage() {
            let bs = u64::from(u.block_size);
            stats.overflow_bytes = u64::from(u.blocks) * bs;
            stats.overflow_used_bytes = u64::from(u.used) * bs;
            stats.overflow_free_runs = u64::from(u.free_runs);
            stats.overflow_largest_free_run = u64::from(u.largest_free_run) * bs;
        }
        stats.dirty_lost = file.dirty_lost(false);
        file.faults.report(&mut stats);
        Ok(stats)
    }

    /// Zeroes the read, hit and reset counters, and this process's fault counters.
    ///
    /// # Errors
    /// Lock errors.
    pub fn reset_stats(&self) -> Result<()> {
        let (_, file) = self.each_page(
            Cache::lock_page_at,
            (),
            |_, _| {},
            |_, file, page, mut guard, _| {
                let _ = guard.page().reset_stats();
                file.clear_resets(page);
                Ok(())
            },
        )?;
        file.dirty_lost(true);
        file.faults.clear();
        Ok(())
    }
}
