//! `LockKind::Robust`: one process-shared robust pthread mutex per page, in the lock area of
//! the page's row of the native header, another per page in the write-back lock table (the
//! write-back locks, see `write_back_lock.rs`), and the openers lock that tells a first opener it
//! is alone.
//!
//! - **Exclusion.** The mutex is process-shared, so it excludes every thread of every process
//!   by itself: there is no in-process mutex in front of it.
//! - **Owner death.** The mutex is robust: when its owner dies, the kernel marks it and the
//!   next locker gets `EOWNERDEAD`. That locker owns the lock; it marks the mutex consistent
//!   and goes on, and the page's busy marker (set around every structural change) tells the
//!   caller whether the page must be reset.
//! - **Stale lock words.** Robustness only covers owners the kernel saw die. Lock words left in
//!   a file by processes of an earlier boot, or copied with the file, name owners the kernel
//!   knows nothing of and would block forever. So every opener holds a shared fcntl lock on the
//!   header's openers byte for as long as it has the file open; an opener that can take that
//!   byte exclusively is alone, reinitialises every lock word, and then downgrades to shared.
//!   Later openers wait on their shared lock until the reinitialisation is done.
//! - **Fork.** A child shares the lock words but inherits no fcntl lock, so before its first
//!   lock it takes its own shared openers lock (a fork generation, bumped by a
//!   `pthread_atfork` child handler, tells it to). A child never owns a mutex its parent held:
//!   the owner recorded in the word is the parent's thread.
//! - **Trust.** glibc keeps the owner's robust-list links inside the mutex and follows them at
//!   unlock. The owner's copy of the mutex is taken when it locks, and any difference is put
//!   back before it unlocks, so lock words damaged while the lock is held cannot redirect those
//!   writes. (A process that ignores the protocol and rewrites a held lock word at the same
//!   instant is beyond what any shared-memory lock can defend against; the fcntl kind keeps its
//!   state in the kernel and does not have this exposure.)

#![allow(unsafe_code)]

pub(crate) use imp::{AVAILABLE, RobustHeld, RobustLocks, init_lock_words};

/// Which of a page's two robust locks a [`RobustLocks`] takes: one file's page locks and
/// write-back locks are one set ([`RobustLocks::write_back`]) with two areas, which join the
/// openers lock and check the lock words' settings as one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
pub(crate) enum Area {
    /// The page lock, in the page's row of the page table.
    Page,
    /// The write-back lock, in the page's row of the write-back lock table.
    WriteBack,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use std::cell::UnsafeCell;
    use std::io;
    use std::marker::PhantomData;
    use std::mem::{align_of, size_of};
    use std::os::fd::RawFd;
    use std::ptr::NonNull;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use memmap2::MmapRaw;

    use super::super::fcntl::{LockFailure, fcntl, fcntl_lock, fcntl_wait};
    use super::super::fork;
    use super::super::header::{
        self, OPENERS_LOCK_OFFSET, ROW_LOCK_OFFSET, ROW_LOCK_SIZE, WRITE_BACK_LOCK_OFFSET,
        WRITE_BACK_LOCK_SIZE, WRITE_BACK_ROW_SIZE,
    };
    use super::Area;

    /// Robust locks can be used on this platform.
    pub(crate) const AVAILABLE: bool = true;

    const MUTEX_SIZE: usize = size_of::<libc::pthread_mutex_t>();
    /// The futex word, which waiters change, is the mutex's first `int`; everything after it
    /// belongs to the owner while it holds the lock: the `u32` after the futex word, then
    /// `OWNER_WORDS` aligned `u64`s.
    const OWNER_WORDS: usize = MUTEX_SIZE / 8 - 1;

    const _: () = assert!(MUTEX_SIZE.is_multiple_of(8) && MUTEX_SIZE >= 16);

    const _: () = assert!(MUTEX_SIZE <= ROW_LOCK_SIZE);
    const _: () = assert!(MUTEX_SIZE <= WRITE_BACK_LOCK_SIZE);
    const _: () = assert!((header::PAGE_TABLE_OFFSET + WRITE_BACK_LOCK_OFFSET).is_multiple_of(8));
    const _: () = assert!(WRITE_BACK_ROW_SIZE.is_multiple_of(8));
    const _: () = assert!(align_of::<libc::pthread_mutex_t>() <= 8);
    const _: () = assert!((header::PAGE_TABLE_OFFSET + ROW_LOCK_OFFSET).is_multiple_of(8));
    const _: () = assert!(header::ROW_SIZE.is_multiple_of(8));

    /// The locks of one area (page or write-back locks) of one robust-locked file, in this
    /// process.
    pub(crate) struct RobustLocks {
        /// First byte of the file's mapping.
        base: NonNull<u8>,
        num_pages: u32,
        /// Which lock of each page these are.
        area: Area,
        /// What the file's two areas share.
        set: Arc<Set>,
        /// Per page, the owner's part of its mutex as this process's holder found it on
        /// taking it: kept here, in the process's own memory, rather than in the returned
        /// [`RobustHeld`], so the guard stays small and the snapshot is not copied along the
        /// lock's return path. Slot `p` is written and read only by the thread holding page
        /// `p`'s mutex, which orders every holder's use after the previous one's.
        owners: Box<[OwnerSlot]>,
    }

    /// One page's [`RobustLocks::owners`] slot.
    struct OwnerSlot(UnsafeCell<OwnerPart>);

    impl OwnerSlot {
        fn new() -> OwnerSlot {
            OwnerSlot(UnsafeCell::new(OwnerPart {
                word: 0,
                words: [0; OWNER_WORDS],
            }))
        }
    }

    /// Slots for `num_pages` pages.
    fn owner_slots(num_pages: u32) -> Box<[OwnerSlot]> {
        (0..num_pages).map(|_| OwnerSlot::new()).collect()
    }

    /// What the page locks and the write-back locks of one file share: they join the openers
    /// lock once, and check one template.
    struct Set {
        /// The fork generation in which this process took its shared openers lock.
        joined: AtomicU32,
        /// See [`settings_words`].
        settings: Box<[(usize, u32)]>,
    }

    // SAFETY: `base` addresses the mapping owned by the same `SharedFile` as this value, which
    // outlives it; the only things reached through it are process-shared mutexes, built to be
    // used from any thread of any process.
    unsafe impl Send for RobustLocks {}
    // SAFETY: as for `Send`; `joined` is atomic, and each `owners` slot is touched only by
    // the thread holding its page's mutex (see `owners`).
    unsafe impl Sync for RobustLocks {}

    /// A held robust page lock (the owner's part of the mutex as it was when the lock was
    /// taken is in [`RobustLocks::owners`]). Not `Send`: a pthread mutex must be unlocked by
    /// the thread that locked it.
    pub(crate) struct RobustHeld {
        /// The fork generation it was taken in: in a child forked while it was held, the lock
        /// belongs to the parent's thread, and the child's copy of the guard lets go of nothing.
        generation: u32,
        _not_send: PhantomData<*const ()>,
    }

    impl RobustHeld {
        /// The fork generation the lock was taken in.
        #[inline]
        pub(crate) fn generation(&self) -> u32 {
            self.generation
        }
    }

    /// The owner's part of a mutex (see `OWNER_WORDS`).
    #[derive(Clone, Copy, PartialEq, Eq)]
    struct OwnerPart {
        word: u32,
        words: [u64; OWNER_WORDS],
    }

    impl OwnerPart {
        /// # Safety
        /// `m` must be a mutex in the live mapping that this thread holds.
        #[inline]
        unsafe fn read(m: *mut libc::pthread_mutex_t) -> OwnerPart {
            let base = m.cast::<u8>();
            // SAFETY: (caller) `m` is 8-aligned and MUTEX_SIZE bytes long, so both reads are in
            // bounds and aligned; the owner writes these bytes and nobody else does, and the
            // futex word before them is not read.
            unsafe {
                OwnerPart {
                    word: base.add(4).cast::<u32>().read(),
                    words: base.add(8).cast::<[u64; OWNER_WORDS]>().read(),
                }
            }
        }

        /// [`read`](Self::read), right after this thread locked `m`: glibc has just written
        /// some of these bytes (the count, owner and user count as `u32`s, the robust-list links
        /// as `u64`s), and a load that spans several such fresh stores waits for them to reach
        /// the cache, where a load of exactly one takes its value from the store at once. So
        /// each word is loaded at the width it was written (volatile, so the loads are not
        /// merged into wider ones).
        ///
        /// # Safety
        /// As for [`read`](Self::read).
        #[inline]
        unsafe fn read_fresh(m: *mut libc::pthread_mutex_t) -> OwnerPart {
            let base = m.cast::<u8>();
            // SAFETY: as in `read`: every load is in bounds and aligned to its width (the mutex
            // is 8-aligned), of bytes only the owner writes.
            unsafe {
                let half = |at: usize| base.add(at).cast::<u32>().read_volatile();
                let low = half(8).to_ne_bytes();
                let high = half(12).to_ne_bytes();
                let mut first = [0u8; 8];
                first[..4].copy_from_slice(&low);
                first[4..].copy_from_slice(&high);
                let mut words = [0u64; OWNER_WORDS];
                words[0] = u64::from_ne_bytes(first);
                for (i, w) in words.iter_mut().enumerate().skip(1) {
                    *w = base.add(8 + 8 * i).cast::<u64>().read_volatile();
                }
                OwnerPart {
                    word: half(4),
                    words,
                }
            }
        }

        /// # Safety
        /// As for [`read`](Self::read).
        #[inline]
        unsafe fn write(self, m: *mut libc::pthread_mutex_t) {
            let base = m.cast::<u8>();
            // SAFETY: as in `read`; the owner may write its own part.
            unsafe {
                base.add(4).cast::<u32>().write(self.word);
                base.add(8).cast::<[u64; OWNER_WORDS]>().write(self.words);
            }
        }
    }

    impl RobustLocks {
        /// The page locks: takes this process's shared openers lock on the file `fd` (mapped
        /// as `map`), reinitialising every lock word (page and write-back locks) first if no
        /// other process has the file open.
        pub(crate) fn open(
            fd: RawFd,
            map: &MmapRaw,
            num_pages: u32,
            deadline: Option<Instant>,
        ) -> Result<RobustLocks, LockFailure> {
            if map.len() < header::header_size(num_pages, 0) {
                return Err(LockFailure::Os(io::Error::other(
                    "the mapping is shorter than its header",
                )));
            }
            let base = NonNull::new(map.as_mut_ptr())
                .ok_or_else(|| LockFailure::Os(io::Error::other("null map")))?;
            let locks = RobustLocks {
                base,
                num_pages,
                area: Area::Page,
                set: Arc::new(Set {
                    joined: AtomicU32::new(u32::MAX),
                    settings: settings_words().map_err(LockFailure::Os)?,
                }),
                owners: owner_slots(num_pages),
            };
            locks.join(fd, true, deadline)?;
            Ok(locks)
        }

        /// The write-back locks of the same file: the other area of this set, which shares
        /// its openers lock (joined once per fork generation, whichever area locks first)
        /// and its settings.
        pub(crate) fn write_back(&self) -> RobustLocks {
            RobustLocks {
                base: self.base,
                num_pages: self.num_pages,
                area: Area::WriteBack,
                set: Arc::clone(&self.set),
                owners: owner_slots(self.num_pages),
            }
        }

        /// Takes the shared openers lock. With `may_reinit`, first tries to take it
        /// exclusively; holding it exclusively means no other process has the file open, so
        /// no lock word can be held by anyone alive, and every word is reinitialised.
        ///
        /// A process that already holds the shared lock would be granted the exclusive one
        /// even with others present (fcntl locks convert within a process), so `may_reinit`
        /// is only for the first join of a `SharedFile` (the registry makes that the only
        /// one in the process), never for a rejoin after fork. Waits for the shared lock until
        /// `deadline` at most (a first opener holds the byte while it reinitialises; so may
        /// a process stopped there, or a hostile one).
        fn join(
            &self,
            fd: RawFd,
            may_reinit: bool,
            deadline: Option<Instant>,
        ) -> Result<(), LockFailure> {
            let generation = fork::generation();
            let byte = (OPENERS_LOCK_OFFSET as u64, 1);
            if may_reinit {
                match fcntl(fd, libc::F_SETLK, libc::F_WRLCK as libc::c_short, byte) {
                    Ok(()) => {
                        let reinit = self.reinit_all();
                        // Converting our write lock to a read lock is atomic and never waits.
                        let shared = fcntl_wait(fd, libc::F_RDLCK as libc::c_short, byte);
                        reinit.map_err(LockFailure::Os)?;
                        shared.map_err(LockFailure::Os)?;
                        self.set.joined.store(generation, Ordering::Relaxed);
                        return Ok(());
                    }
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {}
                    Err(e) => return Err(LockFailure::Os(e)),
                }
            }
            // Waits while a first opener holds the byte exclusively to reinitialise.
            fcntl_lock(fd, libc::F_RDLCK as libc::c_short, byte, deadline)?;
            self.set.joined.store(generation, Ordering::Relaxed);
            Ok(())
        }

        fn reinit_all(&self) -> io::Result<()> {
            // SAFETY: the mapping holds the whole header (checked in `open`), and this process
            // holds the openers byte exclusively: no other process has the file open, and the
            // registry has not published this `SharedFile` yet, so no thread locks these words.
            unsafe { init_lock_words(self.base.as_ptr(), self.num_pages) }
        }

        #[inline]
        fn mutex(&self, page: u32) -> *mut libc::pthread_mutex_t {
            assert!(page < self.num_pages, "page {page} out of range");
            let offset = lock_offset(self.num_pages, page, self.area);
            // SAFETY: page < num_pages and the mapping holds the whole header (checked in
            // `new`), so the row's lock area is inside the mapping; rows are 8-byte aligned.
            unsafe { self.base.as_ptr().add(offset).cast() }
        }

        /// Locks `page`, waiting until `deadline` at most. If the previous owner died holding
        /// it, the lock is made consistent again; whether the page needs a reset is the busy
        /// marker's to say, which every locker checks anyway.
        #[inline(always)]
        pub(crate) fn acquire(
            &self,
            fd: RawFd,
            page: u32,
            deadline: Option<Instant>,
        ) -> Result<RobustHeld, LockFailure> {
            let generation = fork::generation();
            if self.set.joined.load(Ordering::Relaxed) != generation {
                self.join(fd, false, deadline)?;
            }
            let m = self.mutex(page);
            for &(word, value) in &self.set.settings {
                // SAFETY: `word` indexes a u32 inside the mutex (from a MUTEX_SIZE template),
                // which is 8-aligned inside the live mapping; a volatile read, as another
                // process that ignores the protocol may be writing it.
                let found = unsafe { m.cast::<u32>().add(word).read_volatile() };
                if found != value {
                    return Err(LockFailure::Os(io::Error::other(
                        "the lock word is damaged; it is reinitialised when every process has \
                         closed the file and one reopens it",
                    )));
                }
            }
            let rc = match deadline {
                // SAFETY: `m` is an initialised process-shared mutex inside the live mapping
                // (initialised at creation, or by the first opener).
                None => unsafe { libc::pthread_mutex_lock(m) },
                Some(deadline) => timed_lock(m, deadline),
            };
            match rc {
                0 => {}
                libc::EOWNERDEAD => {
                    // SAFETY: we own `m` (EOWNERDEAD means the lock was acquired).
                    let rc = unsafe { libc::pthread_mutex_consistent(m) };
                    if rc != 0 {
                        // SAFETY: we own `m`; unlocking without marking it consistent leaves it
                        // unrecoverable, which later lockers report as an error.
                        unsafe { libc::pthread_mutex_unlock(m) };
                        return Err(LockFailure::Os(io::Error::from_raw_os_error(rc)));
                    }
                }
                libc::ETIMEDOUT => return Err(LockFailure::TimedOut),
                libc::ENOTRECOVERABLE => {
                    return Err(LockFailure::Os(io::Error::other(
                        "the lock is unrecoverable (its owner died and it was released without \
                         being repaired); it is reinitialised when every process has closed the \
                         file and one reopens it",
                    )));
                }
                e => return Err(LockFailure::Os(io::Error::from_raw_os_error(e))),
            }
            // SAFETY: we hold `m`, a mutex in the live mapping; the slot of `page` (in range:
            // `mutex` checked it) is touched only by the thread holding `m`, this one now.
            unsafe {
                *self.owners[page as usize].0.get() = OwnerPart::read_fresh(m);
            }
            Ok(RobustHeld {
                generation,
                _not_send: PhantomData,
            })
        }

        /// Unlocks what [`acquire`](Self::acquire) locked, first putting back the owner's part
        /// of the mutex if anything changed it. Called once per `held`, by the drop of the
        /// guard that owns it.
        #[inline]
        pub(crate) fn release(&self, page: u32, held: &RobustHeld) {
            if held.generation != fork::generation() {
                return;
            }
            let m = self.mutex(page);
            // SAFETY: we hold `m` (RobustHeld is not Send, and only the drop of the guard that
            // owns it releases it, once), so the slot of `page`, which only the holder of `m`
            // touches, holds what `acquire` found.
            unsafe {
                let owner_part = *self.owners[page as usize].0.get();
                if OwnerPart::read(m) != owner_part {
                    owner_part.write(m);
                }
            }
            // SAFETY: this thread locked `m` in `acquire` (RobustHeld is not Send) and has not
            // unlocked it; the owner part is as glibc left it.
            let rc = unsafe { libc::pthread_mutex_unlock(m) };
            debug_assert_eq!(rc, 0, "pthread_mutex_unlock");
        }
    }

    /// `pthread_mutex_timedlock` against a monotonic deadline: its own deadline is on the
    /// real-time clock, so a clock step back or forward is corrected by retrying.
    fn timed_lock(m: *mut libc::pthread_mutex_t, deadline: Instant) -> libc::c_int {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let at = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .saturating_add(left);
            let ts = libc::timespec {
                tv_sec: libc::time_t::try_from(at.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: libc::c_long::from(at.subsec_nanos() as i32),
            };
            // SAFETY: `m` is an initialised process-shared mutex in the live mapping and `ts`
            // is a valid timespec that outlives the call.
            let rc = unsafe { libc::pthread_mutex_timedlock(m, &ts) };
            if rc == libc::ETIMEDOUT && Instant::now() < deadline {
                // The real-time clock moved; wait out the rest.
                std::thread::sleep(Duration::from_micros(10).min(left));
                continue;
            }
            return rc;
        }
    }

    /// Where page `page`'s lock of kind `area` lies in a native header of `num_pages` pages.
    fn lock_offset(num_pages: u32, page: u32, area: Area) -> usize {
        match area {
            Area::Page => header::row_offset(page) + ROW_LOCK_OFFSET,
            Area::WriteBack => {
                header::write_back_table_offset(num_pages)
                    + page as usize * WRITE_BACK_ROW_SIZE
                    + WRITE_BACK_LOCK_OFFSET
            }
        }
    }

    /// Initialises every lock word of a native header at `base` (each page's page lock and
    /// write-back lock) as an unlocked process-shared robust mutex.
    ///
    /// # Safety
    /// `base` must address a writable mapping holding `header_size(num_pages)` bytes, and no
    /// thread of any process may be using the lock words.
    pub(crate) unsafe fn init_lock_words(base: *mut u8, num_pages: u32) -> io::Result<()> {
        let areas = [
            (Area::Page, ROW_LOCK_SIZE),
            (Area::WriteBack, WRITE_BACK_LOCK_SIZE),
        ];
        let mutexes = areas.into_iter().flat_map(|(area, size)| {
            (0..num_pages).map(move |page| {
                // SAFETY: (caller) the header, and so every row's lock area, is inside the
                // mapping; nobody uses the words.
                unsafe {
                    let at = base.add(lock_offset(num_pages, page, area));
                    // Start from zeroes, so bytes of the area past the mutex are defined.
                    std::ptr::write_bytes(at, 0, size);
                    at.cast::<libc::pthread_mutex_t>()
                }
            })
        });
        // SAFETY: (caller) each pointer is an 8-aligned, writable, unused lock area.
        unsafe { init_mutexes(mutexes) }
    }

    /// Initialises each mutex as an unlocked process-shared robust mutex.
    ///
    /// # Safety
    /// Each pointer must address writable, 8-aligned storage for a `pthread_mutex_t` that no
    /// thread of any process is using.
    unsafe fn init_mutexes(
        mutexes: impl IntoIterator<Item = *mut libc::pthread_mutex_t>,
    ) -> io::Result<()> {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: `attr` is valid storage for an attribute object; it is initialised by
        // pthread_mutexattr_init before any other use and destroyed before returning; the
        // mutexes are as the caller promised.
        unsafe {
            check(libc::pthread_mutexattr_init(attr.as_mut_ptr()))?;
            let a = attr.as_mut_ptr();
            let mut result = check(libc::pthread_mutexattr_setpshared(
                a,
                libc::PTHREAD_PROCESS_SHARED,
            ))
            .and_then(|()| {
                check(libc::pthread_mutexattr_setrobust(
                    a,
                    libc::PTHREAD_MUTEX_ROBUST,
                ))
            });
            if result.is_ok() {
                for m in mutexes {
                    if let Err(e) = check(libc::pthread_mutex_init(m, a)) {
                        result = Err(e);
                        break;
                    }
                }
            }
            libc::pthread_mutexattr_destroy(a);
            result
        }
    }

    /// The `u32` words of a freshly initialised lock that are not zero, other than the futex
    /// word: its settings (in glibc, the `__kind` word saying robust, process-shared, normal),
    /// which no lock or unlock changes. A lock word whose settings differ is damaged, and
    /// glibc must not be handed it: with other settings it may wait past any deadline, or
    /// fail an assertion and abort the process.
    pub(super) fn settings_words() -> io::Result<Box<[(usize, u32)]>> {
        #[repr(C, align(8))]
        struct Template([u32; MUTEX_SIZE / 4]);
        let mut template = Template([0; MUTEX_SIZE / 4]);
        // SAFETY: `template` is writable, 8-aligned, MUTEX_SIZE bytes, and private.
        unsafe { init_mutexes([(&raw mut template).cast::<libc::pthread_mutex_t>()])? };
        Ok(template
            .0
            .iter()
            .copied()
            .enumerate()
            .skip(1)
            .filter(|&(_, w)| w != 0)
            .collect())
    }

    fn check(rc: libc::c_int) -> io::Result<()> {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc))
        }
    }

    #[cfg(test)]
    mod tests {
        use std::os::fd::AsRawFd;

        use super::*;

        /// A header of `num_pages` pages in an unnamed file, mapped, and its two lock areas
        /// (the file and mapping are returned to keep them alive).
        fn locks(num_pages: u32) -> (std::fs::File, memmap2::MmapRaw, RobustLocks, RobustLocks) {
            let file = tempfile::tempfile().unwrap();
            file.set_len(header::header_size(num_pages, 0) as u64)
                .unwrap();
            let map = memmap2::MmapOptions::new().map_raw(&file).unwrap();
            let Ok(pages) = RobustLocks::open(file.as_raw_fd(), &map, num_pages, None) else {
                panic!("open the robust locks");
            };
            let write_back = pages.write_back();
            (file, map, pages, write_back)
        }

        #[test]
        fn page_and_write_back_locks_are_one_set_with_two_areas() {
            let (file, _map, pages, write_back) = locks(3);
            let fd = file.as_raw_fd();
            // Joined once, by the opener, for both areas; one template of settings.
            assert!(Arc::ptr_eq(&pages.set, &write_back.set));
            assert_eq!(
                write_back.set.joined.load(Ordering::Relaxed),
                fork::generation()
            );
            // Two areas: a page's two locks are two mutexes, held at once.
            for page in 0..pages.num_pages {
                assert_ne!(pages.mutex(page), write_back.mutex(page));
                let Ok(a) = pages.acquire(fd, page, None) else {
                    panic!("page lock {page}");
                };
                let Ok(b) = write_back.acquire(fd, page, Some(Instant::now())) else {
                    panic!("write-back lock {page} beside its page lock");
                };
                write_back.release(page, &b);
                pages.release(page, &a);
            }
        }

        #[test]
        fn a_fresh_read_of_the_owner_part_is_the_plain_read() {
            let (file, _map, pages, _write_back) = locks(2);
            let Ok(held) = pages.acquire(file.as_raw_fd(), 1, None) else {
                panic!("page lock");
            };
            let m = pages.mutex(1);
            // SAFETY: this thread holds `m`, a mutex in the live mapping.
            let (fresh, plain) = unsafe { (OwnerPart::read_fresh(m), OwnerPart::read(m)) };
            assert!(fresh == plain);
            // glibc's owner word (bytes 8..12) names this thread, as written at lock time.
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            assert_eq!(plain.words[0].to_ne_bytes()[..4], tid.to_ne_bytes());
            pages.release(1, &held);
        }

        #[test]
        fn owner_words_damaged_while_held_are_put_back_before_unlocking() {
            let (file, _map, pages, write_back) = locks(2);
            let fd = file.as_raw_fd();
            for round in 0..3u8 {
                // Both areas held at once, so each one's robust-list links name the other.
                let Ok(a) = pages.acquire(fd, 1, None) else {
                    panic!("page lock, round {round}");
                };
                let Ok(b) = write_back.acquire(fd, 1, None) else {
                    panic!("write-back lock, round {round}");
                };
                for m in [pages.mutex(1), write_back.mutex(1)] {
                    let base = m.cast::<u8>();
                    // SAFETY: this thread holds `m`, MUTEX_SIZE bytes in the live mapping; the
                    // owner's part (after the futex word) is scribbled over, as a hostile
                    // process might.
                    unsafe { std::ptr::write_bytes(base.add(4), 0xa5 ^ round, MUTEX_SIZE - 4) };
                }
                write_back.release(1, &b);
                pages.release(1, &a);
                // Unlocked, and the settings intact: taken again at once, without waiting.
                let Ok(a) = pages.acquire(fd, 1, Some(Instant::now())) else {
                    panic!("page lock not released whole, round {round}");
                };
                let Ok(b) = write_back.acquire(fd, 1, Some(Instant::now())) else {
                    panic!("write-back lock not released whole, round {round}");
                };
                write_back.release(1, &b);
                pages.release(1, &a);
            }
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    //! Platforms without robust process-shared mutexes: asking for them is refused when the
    //! cache is opened, so nothing here is ever reached.

    use std::io;
    use std::os::fd::RawFd;
    use std::time::Instant;

    use memmap2::MmapRaw;

    use super::super::fcntl::LockFailure;

    /// Robust locks cannot be used on this platform.
    pub(crate) const AVAILABLE: bool = false;

    fn unsupported() -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "robust page locks need Linux with glibc",
        )
    }

    /// Never constructed on this platform.
    pub(crate) enum RobustLocks {}

    /// Never constructed on this platform.
    pub(crate) enum RobustHeld {}

    impl RobustHeld {
        pub(crate) fn generation(&self) -> u32 {
            match *self {}
        }
    }

    impl RobustLocks {
        pub(crate) fn open(
            _: RawFd,
            _: &MmapRaw,
            _: u32,
            _: Option<Instant>,
        ) -> Result<RobustLocks, LockFailure> {
            Err(LockFailure::Os(unsupported()))
        }

        pub(crate) fn write_back(&self) -> RobustLocks {
            match *self {}
        }

        pub(crate) fn acquire(
            &self,
            _: RawFd,
            _: u32,
            _: Option<Instant>,
        ) -> Result<RobustHeld, LockFailure> {
            match *self {}
        }

        pub(crate) fn release(&self, page: u32, held: &RobustHeld) {
            match *held {}
        }
    }

    /// # Safety
    /// Never unsafe here: it only fails.
    pub(crate) unsafe fn init_lock_words(_: *mut u8, _: u32) -> io::Result<()> {
        Err(unsupported())
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn a_fresh_lock_has_settings_to_check() {
        // glibc records robust + process-shared in a word of its own; if a future glibc did
        // not, the damaged-word check would silently check nothing.
        let words = super::imp::settings_words().expect("template");
        assert!(!words.is_empty());
    }
}
