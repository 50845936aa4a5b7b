//! The clock reads of the hot path: the system clock's only system call, and this module's
//! only `unsafe` code.

#![allow(unsafe_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch from the coarse real-time clock: a read of the kernel's last
/// tick, far cheaper than a precise clock read, and off by at most a tick (a few
/// milliseconds).
fn coarse_since_epoch() -> Duration {
    // SAFETY: `timespec` is plain data; zeroed is a valid value.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    match (u64::try_from(ts.tv_sec), u32::try_from(ts.tv_nsec)) {
        (Ok(secs), Ok(nanos)) if rc == 0 && nanos < 1_000_000_000 => Duration::new(secs, nanos),
        _ => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    }
}

/// The current Unix time in whole seconds, from the coarse clock (whole seconds do not
/// notice its tick).
pub(crate) fn unix_now_coarse() -> u32 {
    coarse_since_epoch().as_secs().min(u64::from(u32::MAX)) as u32
}

/// The current Unix time in milliseconds, from the coarse clock (off by at most a tick).
pub(crate) fn unix_millis_coarse() -> u64 {
    u64::try_from(coarse_since_epoch().as_millis()).unwrap_or(u64::MAX)
}
