//! What the live progress line reads while a run is hot: per-core counters that only their own
//! core writes (one relaxed add per request, never per event) and the console thread sums
//! about every 200 ms. Nothing here is on the per-event path.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::client::FailureKind;

/// TTFT buckets: four per octave of microseconds (each ≈ 19 % wide), 1 µs to ≈ 1.2 h.
pub const TTFT_BUCKETS: usize = 128;

/// Failure classes the progress line names; later classes count as `other`.
pub const FAILURE_SLOTS: [&str; 8] = [
    "connect",
    "http",
    "io",
    "read_timeout",
    "malformed_sse",
    "server_error",
    "incomplete",
    "other",
];

#[inline]
pub(crate) fn failure_slot(kind: FailureKind) -> usize {
    match kind {
        FailureKind::Connect => 0,
        FailureKind::HttpStatus(_) => 1,
        FailureKind::Io => 2,
        FailureKind::ReadTimeout => 3,
        FailureKind::MalformedSse => 4,
        FailureKind::ServerError => 5,
        FailureKind::Incomplete => 6,
        #[allow(unreachable_patterns)]
        _ => 7,
    }
}

#[inline]
pub(crate) fn ttft_bucket(ttft_us: u64) -> usize {
    let us = ttft_us.max(1) as f64;
    ((us.log2() * 4.0) as usize).min(TTFT_BUCKETS - 1)
}

/// The geometric middle of a bucket, µs.
pub(crate) fn bucket_mid_us(i: usize) -> f64 {
    2f64.powf((i as f64 + 0.5) / 4.0)
}

/// Per-core counters of the live view, beside the phase counters in `CoreProgress`.
pub(crate) struct LiveCounters {
    pub output_tokens: AtomicU64,
    pub failures: [AtomicU64; FAILURE_SLOTS.len()],
    pub ttft: [AtomicU64; TTFT_BUCKETS],
}

impl Default for LiveCounters {
    fn default() -> Self {
        LiveCounters {
            output_tokens: AtomicU64::new(0),
            failures: std::array::from_fn(|_| AtomicU64::new(0)),
            ttft: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl LiveCounters {
    #[inline]
    pub(crate) fn on_success(&self, ttft_us: Option<u64>, output_tokens: u64) {
        self.output_tokens
            .fetch_add(output_tokens, Ordering::Relaxed);
        if let Some(us) = ttft_us {
            self.ttft[ttft_bucket(us)].fetch_add(1, Ordering::Relaxed);
        }
    }

    #[inline]
    pub(crate) fn on_failure(&self, kind: FailureKind) {
        self.failures[failure_slot(kind)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_to(&self, p: &mut super::Progress) {
        p.output_tokens += self.output_tokens.load(Ordering::Relaxed);
        for (a, b) in p.failures.iter_mut().zip(&self.failures) {
            *a += b.load(Ordering::Relaxed);
        }
        for (a, b) in p.ttft.iter_mut().zip(&self.ttft) {
            *a += b.load(Ordering::Relaxed);
        }
    }
}

/// The median of the TTFTs counted between two snapshots (`None` if none), µs.
pub fn ttft_p50_between_us(
    before: &[u64; TTFT_BUCKETS],
    after: &[u64; TTFT_BUCKETS],
) -> Option<f64> {
    let delta: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let n: u64 = delta.iter().sum();
    if n == 0 {
        return None;
    }
    let mut seen = 0;
    for (i, d) in delta.iter().enumerate() {
        seen += d;
        if seen * 2 >= n {
            return Some(bucket_mid_us(i));
        }
    }
    None
}

/// The failure class with the most failures so far, with its count.
pub fn leading_failure(failures: &[u64; FAILURE_SLOTS.len()]) -> Option<(&'static str, u64)> {
    failures
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .max_by_key(|(_, n)| **n)
        .map(|(i, n)| (FAILURE_SLOTS[i], *n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_place_ttft_within_a_fifth() {
        for us in [1u64, 900, 25_000, 1_500_000] {
            let mid = bucket_mid_us(ttft_bucket(us));
            assert!((mid / us as f64 - 1.0).abs() < 0.2, "{us} → {mid}");
        }
        let mut before = [0u64; TTFT_BUCKETS];
        let mut after = [0u64; TTFT_BUCKETS];
        before[ttft_bucket(1_000)] = 5;
        after[ttft_bucket(1_000)] = 5;
        after[ttft_bucket(20_000)] = 3;
        after[ttft_bucket(90_000)] = 1;
        let p50 = ttft_p50_between_us(&before, &after).unwrap();
        assert!((p50 / 20_000.0 - 1.0).abs() < 0.2, "{p50}");
        assert_eq!(ttft_p50_between_us(&after, &after), None);
    }

    #[test]
    fn the_leading_failure_is_the_most_counted() {
        let mut f = [0u64; FAILURE_SLOTS.len()];
        assert_eq!(leading_failure(&f), None);
        f[failure_slot(FailureKind::Io)] = 2;
        f[failure_slot(FailureKind::HttpStatus(503))] = 7;
        assert_eq!(leading_failure(&f), Some(("http", 7)));
    }
}
