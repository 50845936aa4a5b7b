//! When entries expire.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// When a stored entry expires. Times in the file are whole Unix seconds: durations and
/// instants are rounded up to the next whole second, so an entry never expires early; an
/// entry is expired once the clock reaches its expiry second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Expiry {
    /// The cache's `expire_after` setting (never, if it has none).
    #[default]
    Default,
    /// Never expires (it can still be evicted when its page is full).
    Never,
    /// Expires this long after the store.
    After(Duration),
    /// Expires at this instant.
    At(SystemTime),
}

/// Whole seconds in `d`, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

impl Expiry {
    /// The `expire_on` word for an entry stored at `now` (0 means never).
    pub(crate) fn expire_on(self, now: u32, default_secs: Option<u32>) -> u32 {
        let at = match self {
            Expiry::Never => return 0,
            Expiry::Default => match default_secs {
                None => return 0,
                Some(secs) => u64::from(now) + u64::from(secs),
            },
            Expiry::After(d) => u64::from(now).saturating_add(ceil_secs(d)),
            Expiry::At(t) => t.duration_since(UNIX_EPOCH).map_or(0, ceil_secs),
        };
        // 0 would read as "never"; the earliest real expiry second is 1.
        at.clamp(1, u64::from(u32::MAX)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expire_on_words() {
        let now = 1_700_000_000;
        assert_eq!(Expiry::Never.expire_on(now, Some(5)), 0);
        assert_eq!(Expiry::Default.expire_on(now, None), 0);
        assert_eq!(Expiry::Default.expire_on(now, Some(5)), now + 5);
        assert_eq!(
            Expiry::After(Duration::from_millis(1500)).expire_on(now, None),
            now + 2
        );
        assert_eq!(Expiry::After(Duration::ZERO).expire_on(now, None), now);
        assert_eq!(Expiry::At(UNIX_EPOCH).expire_on(now, None), 1);
        assert_eq!(
            Expiry::At(UNIX_EPOCH + Duration::from_secs(u64::MAX / 4)).expire_on(now, None),
            u32::MAX
        );
        // The longest durations are the far future, not a wrap to "expired at once".
        assert_eq!(Expiry::After(Duration::MAX).expire_on(now, None), u32::MAX);
        assert_eq!(ceil_secs(Duration::MAX), u64::MAX);
    }
}
