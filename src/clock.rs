//! The one monotonic clock every timestamp in a run is taken from.
//!
//! All timestamps are integer nanoseconds since a process-wide epoch fixed at first use, so values
//! taken on different cores compare directly and fit in a `u64` for centuries.

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The process epoch; call once early (e.g. in `main`) so it predates every measurement.
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
#[inline]
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// The `Instant` that corresponds to `ns` since the epoch (for absolute-deadline timers).
#[inline]
pub fn instant_at(ns: u64) -> Instant {
    epoch() + std::time::Duration::from_nanos(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_round_trips() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
        let at = instant_at(b);
        assert_eq!((at - epoch()).as_nanos() as u64, b);
    }
}
