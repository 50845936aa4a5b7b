//! Cache statistics.

/// Figures for the whole cache, with the per-page figures they sum.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Reads (`get` and friends) counted since the last `reset_stats`.
    pub reads: u64,
    /// Reads that found a live value.
    pub hits: u64,
    /// Entries stored, including expired ones and tombstones not yet evicted.
    pub entries: u64,
    /// Bytes of the pages' data areas in use (entries, and dead entries until compaction).
    pub used_bytes: u64,
    /// Bytes free for new entries without compaction.
    pub free_bytes: u64,
    /// Pages reset because they failed validation (crash or corruption).
    pub resets: u64,
    /// Dirty entries (write-back values not yet in the backing store) that were lost because
    /// their page was reset, as counted by this process: the dirty entries found in every page
    /// it reset, whichever operation found the page damaged, counted from the page's bytes
    /// before they are wiped (a page whose rebuild was killed part way carries the number of
    /// dirty entries it was moving). A best effort: what can still be read of a damaged page.
    pub dirty_lost: u64,
    /// Calls of the backing store that failed, as counted by this process (each one an error
    /// returned to the caller, and an event under the `tracing` feature).
    pub backing_errors: u64,
    /// Stored values that could not be decoded (decompressed, or, for a `TypedCache`,
    /// deserialised), as counted by this process.
    pub decode_errors: u64,
    /// Page or write-back locks not taken within the lock timeout, as counted by this
    /// process.
    pub lock_timeouts: u64,
    /// Bytes of the overflow area, where values larger than a page live (0: the file has
    /// none).
    pub overflow_bytes: u64,
    /// Bytes of the overflow area held by large values (whole blocks: a value's last block
    /// is partly empty).
    pub overflow_used_bytes: u64,
    /// Runs of consecutive free blocks in the overflow area: how fragmented its free space is
    /// (1 when all of it is in one run). A value's blocks need not be consecutive, so
    /// fragmentation costs reads a little locality, never room.
    pub overflow_free_runs: u64,
    /// Bytes of the longest run of free blocks in the overflow area.
    pub overflow_largest_free_run: u64,
    /// The same figures page by page.
    pub pages: Vec<PageStats>,
}

/// Figures for one page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PageStats {
    /// Entries stored, including expired ones and tombstones not yet evicted.
    pub entries: u32,
    /// Size of the page's slot table.
    pub slots: u32,
    /// Bytes of the data area in use.
    pub used_bytes: u32,
    /// Bytes free for new entries.
    pub free_bytes: u32,
    /// Reads of this page.
    pub reads: u32,
    /// Reads that found a live value.
    pub hits: u32,
    /// Times this page was reset.
    pub resets: u64,
}

impl Stats {
    pub(crate) fn add(&mut self, page: PageStats) {
        self.reads += u64::from(page.reads);
        self.hits += u64::from(page.hits);
        self.entries += u64::from(page.entries);
        self.used_bytes += u64::from(page.used_bytes);
        self.free_bytes += u64::from(page.free_bytes);
        self.resets += page.resets;
        self.pages.push(page);
    }
}
