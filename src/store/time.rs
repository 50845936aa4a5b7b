//! The clock read of the hot path.

#![allow(unsafe_code)]

/// The current Unix time in whole seconds, from the coarse real-time clock: a read of the
/// kernel's last tick, far cheaper than a precise clock read, and off by at most a tick
/// (a few milliseconds), which whole seconds do not notice.
pub(crate) fn unix_now_coarse() -> u32 {
    // SAFETY: `timespec` is plain data; zeroed is a valid value.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    if rc != 0 || ts.tv_sec < 0 {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return since_epoch.as_secs().min(u64::from(u32::MAX)) as u32;
    }
    (ts.tv_sec as u64).min(u64::from(u32::MAX)) as u32
}
