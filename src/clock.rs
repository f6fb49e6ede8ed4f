//! The one monotonic clock every timestamp in a run is taken from.
//!
//! Timestamps are integer nanoseconds of `CLOCK_MONOTONIC`, the clock `std::time::Instant` reads on
//! Linux. Using its raw value (not "time since our start") makes timestamps from the client and
//! from a `parley sim` in another process on the same host directly comparable, which is how the
//! tests hold the client's figures against the sim's record.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Nanoseconds of `CLOCK_MONOTONIC` (≈ 36 ns through the vDSO).
#[inline]
pub fn now_ns() -> u64 {
    read_ns(libc::CLOCK_MONOTONIC)
}

/// Nanoseconds of `CLOCK_REALTIME`: only to place the kernel's socket receive timestamps (which
/// are wall-clock) on [`now_ns`]'s clock, never as a timestamp of its own.
#[inline]
pub fn realtime_ns() -> u64 {
    read_ns(libc::CLOCK_REALTIME)
}

/// CPU time the calling thread has used so far (user + system), in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    read_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

#[inline]
fn read_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; both clocks used here always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A pair of readings of `Instant` and [`now_ns`] taken together, to convert between them.
fn anchor() -> (Instant, u64) {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    *ANCHOR.get_or_init(|| (Instant::now(), now_ns()))
}

/// The `Instant` for timestamp `ns` (for absolute-deadline timers).
#[inline]
pub fn instant_at(ns: u64) -> Instant {
    let (at, at_ns) = anchor();
    if ns >= at_ns {
        at + Duration::from_nanos(ns - at_ns)
    } else {
        at.checked_sub(Duration::from_nanos(at_ns - ns))
            .unwrap_or(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_matches_instant() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
        // Instant and now_ns read the same clock: converting "now" lands within a millisecond.
        let target = now_ns() + 5_000_000;
        let at = instant_at(target);
        let diff = at.saturating_duration_since(Instant::now());
        assert!(
            diff <= Duration::from_millis(6) && diff >= Duration::from_millis(4),
            "{diff:?}"
        );
    }
}
