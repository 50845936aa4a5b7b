//! Where the cache gets the time: the system clock, or a manual one for tests.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod coarse;

/// The time source of a cache. Times in the file are whole Unix seconds.
#[derive(Clone, Default)]
pub struct Clock(Source);

#[derive(Clone, Default)]
enum Source {
    #[default]
    System,
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The system's real-time clock (the default).
    pub fn system() -> Clock {
        Clock(Source::System)
    }

    /// The current time as whole Unix seconds, as stored in the file (saturating at the
    /// range of `u32`, which lasts until 2106).
    #[inline]
    pub(crate) fn now_secs(&self) -> u32 {
        match &self.0 {
            Source::System => coarse::unix_now_coarse(),
            Source::Manual(secs) => secs.load(Ordering::Relaxed).min(u64::from(u32::MAX)) as u32,
        }
    }

    /// How far the system clock's cheap reading may lag the precise time, with room to spare
    /// (50 ms): a copy of a value that a store expires by itself should expire in the cache at
    /// least this much earlier (in the file's whole seconds, rounded down), so that it is never
    /// served after the store dropped the value.
    pub const COARSE_MARGIN: Duration = Duration::from_millis(50);

    /// The expiry, in the file's whole Unix seconds, of a cache's copy of a value that a store
    /// (a backing store, Redis) expires by itself at `store_expiry`: the last whole second at
    /// least [`COARSE_MARGIN`](Self::COARSE_MARGIN) before it, so that the copy, whose expiry
    /// is checked against the coarse clock, is never served after the store dropped the
    /// value. 0 for a time before the epoch.
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use fastmmap::Clock;
    ///
    /// let at = |ms| Clock::copy_expiry_secs(UNIX_EPOCH + Duration::from_millis(ms));
    /// assert_eq!(at(10_999), 10);
    /// assert_eq!(at(11_049), 10);
    /// assert_eq!(at(11_050), 11);
    /// ```
    pub fn copy_expiry_secs(store_expiry: SystemTime) -> u64 {
        store_expiry
            .checked_sub(Self::COARSE_MARGIN)
            .map_or(0, unix_secs)
    }

    /// The current time of this clock in Unix milliseconds. For the system clock this is a
    /// read of the kernel's coarse clock: far cheaper than [`SystemTime::now`], and behind it
    /// by at most a tick (a few milliseconds, well within [`COARSE_MARGIN`](Self::COARSE_MARGIN)).
    #[inline]
    pub fn now_millis(&self) -> u64 {
        match &self.0 {
            Source::System => coarse::unix_millis_coarse(),
            Source::Manual(secs) => secs.load(Ordering::Relaxed).saturating_mul(1000),
        }
    }

    /// The current time of this clock.
    pub fn now(&self) -> SystemTime {
        match &self.0 {
            Source::System => SystemTime::now(),
            Source::Manual(secs) => UNIX_EPOCH + Duration::from_secs(secs.load(Ordering::Relaxed)),
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::System => f.write_str("Clock::System"),
            Source::Manual(secs) => write!(f, "Clock::Manual({})", secs.load(Ordering::Relaxed)),
        }
    }
}

/// A clock that moves only when told to: expiry can be tested without sleeping.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use fastmmap::ManualClock;
///
/// let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
/// clock.advance(Duration::from_secs(60));
/// assert_eq!(clock.now(), UNIX_EPOCH + Duration::from_secs(1_700_000_060));
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock standing at `start` (whole seconds; a fraction is dropped).
    pub fn new(start: SystemTime) -> ManualClock {
        ManualClock(Arc::new(AtomicU64::new(unix_secs(start))))
    }

    /// Moves the clock to `time`.
    pub fn set(&self, time: SystemTime) {
        self.0.store(unix_secs(time), Ordering::Relaxed);
    }

    /// Moves the clock forward by `by` (whole seconds; a fraction is dropped).
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_secs(), Ordering::Relaxed);
    }

    /// The time the clock stands at.
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.0.load(Ordering::Relaxed))
    }
}

impl From<ManualClock> for Clock {
    fn from(m: ManualClock) -> Clock {
        Clock(Source::Manual(m.0))
    }
}

/// `t` as whole seconds since the Unix epoch (a fraction is dropped; a time before the epoch
/// is 0), the unit of every time in a cache file.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Seconds stored in the file back to a time.
pub(crate) fn from_unix_secs(secs: u32) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::from(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_agrees_with_system_time() {
        let before = unix_secs(SystemTime::now()) as u32;
        let now = Clock::system().now_secs();
        let after = unix_secs(SystemTime::now()) as u32;
        // The coarse clock may lag the precise one by a tick.
        assert!(now + 1 >= before && now <= after, "{before} {now} {after}");
    }

    #[test]
    fn manual_clock_moves_when_told() {
        let m = ManualClock::new(UNIX_EPOCH + Duration::from_secs(100));
        let clock = Clock::from(m.clone());
        assert_eq!(clock.now_secs(), 100);
        m.advance(Duration::from_millis(2500));
        assert_eq!(clock.now_secs(), 102);
        m.set(UNIX_EPOCH + Duration::from_secs(7));
        assert_eq!(clock.now(), UNIX_EPOCH + Duration::from_secs(7));
        assert_eq!(clock.now_millis(), 7000);
    }

    #[test]
    fn system_millis_agree_with_system_time() {
        let before = SystemTime::now();
        let now = Clock::system().now_millis();
        let after = SystemTime::now();
        let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        // The coarse clock lags the precise one by at most a tick.
        let margin = Clock::COARSE_MARGIN.as_millis() as u64;
        assert!(
            now + margin >= ms(before) && now <= ms(after),
            "{before:?} {now} {after:?}"
        );
    }
}
