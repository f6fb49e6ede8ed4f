//! Tokens and requests over time: the Workload Throughput table (Overall / Last 30 s / Steady),
//! `workload_throughput.json` and `workload_timeline.json`.
//!
//! Each core counts into fixed-width time buckets measured from the phase start, which every
//! core shares. When a run outlasts [`MAX_BUCKETS`] buckets, neighbours are added pairwise and
//! the width doubles, so memory stays bounded (≤ 4,096 buckets, 160 KiB) however long the run;
//! cores' timelines are brought to the same width and added at the end. Definitions:
//! `docs/metrics.md`, "Workload throughput".

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The first bucket width: 100 ms, so the 30 s window and the 20 % cut of a run shorter than
/// ~7 minutes fall within 0.1 s of where they should.
pub(crate) const START_WIDTH_NS: u64 = 100_000_000;
pub(crate) const MAX_BUCKETS: usize = 4096;

/// Seconds at the end of a run over which "Last 30 s" is taken.
pub const LAST_WINDOW_S: f64 = 30.0;
/// The share of wall time "Steady" leaves out at the start.
pub const WARMUP_FRAC: f64 = 0.2;

/// What ended within one bucket: requests by outcome and successful requests' tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub completion_tokens: u64,
    /// Prompt tokens the server did not report as cached: `max(prompt − cached, 0)`.
    pub new_prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
}

impl Bucket {
    fn add(&mut self, o: &Bucket) {
        self.requests_ok += o.requests_ok;
        self.requests_failed += o.requests_failed;
        self.completion_tokens += o.completion_tokens;
        self.new_prompt_tokens += o.new_prompt_tokens;
        self.cached_prompt_tokens += o.cached_prompt_tokens;
    }
}

/// One core's (then the run's) buckets.
#[derive(Clone, Debug)]
pub struct Timeline {
    /// The phase start on the run clock (ns); bucket i covers [i·width, (i+1)·width) after it.
    pub origin_ns: u64,
    pub width_ns: u64,
    pub buckets: Vec<Bucket>,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline {
            origin_ns: 0,
            width_ns: START_WIDTH_NS,
            buckets: Vec::new(),
        }
    }
}

impl Timeline {
    pub(crate) fn set_origin(&mut self, origin_ns: u64) {
        self.origin_ns = origin_ns;
    }

    #[inline]
    fn bucket_at(&mut self, at_ns: u64) -> &mut Bucket {
        let t_ns = at_ns.saturating_sub(self.origin_ns);
        while t_ns / self.width_ns >= MAX_BUCKETS as u64 {
            self.coarsen();
        }
        let i = (t_ns / self.width_ns) as usize;
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, Bucket::default());
        }
        &mut self.buckets[i]
    }

    /// A successful request that ended at `end_ns`.
    #[inline]
    pub(crate) fn record_success(
        &mut self,
        end_ns: u64,
        prompt: u64,
        cached: u64,
        completion: u64,
    ) {
        let b = self.bucket_at(end_ns);
        b.requests_ok += 1;
        b.completion_tokens += completion;
        b.new_prompt_tokens += prompt.saturating_sub(cached);
        b.cached_prompt_tokens += cached.min(prompt);
    }

    pub(crate) fn record_failure(&mut self, end_ns: u64) {
        self.bucket_at(end_ns).requests_failed += 1;
    }

    /// Doubles the width, adding neighbours pairwise.
    fn coarsen(&mut self) {
        let merged = self
            .buckets
            .chunks(2)
            .map(|pair| {
                let mut b = pair[0];
                if let Some(o) = pair.get(1) {
                    b.add(o);
                }
                b
            })
            .collect();
        self.buckets = merged;
        self.width_ns *= 2;
    }

    pub(crate) fn merge(&mut self, other: &Timeline) {
        if self.buckets.is_empty() && self.origin_ns != other.origin_ns {
            // A fresh recorder merging its first core's figures takes that core's clock.
            *self = other.clone();
            return;
        }
        let mut other = other.clone();
        while self.width_ns < other.width_ns {
            self.coarsen();
        }
        while other.width_ns < self.width_ns {
            other.coarsen();
        }
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), Bucket::default());
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            a.add(b);
        }
    }

    /// Cumulative counts at each bucket boundary inside the run and at `end_ns` (the run's
    /// last response), from the origin.
    pub fn points(&self, end_ns: u64) -> Vec<Point> {
        let t_end_s = end_ns.saturating_sub(self.origin_ns) as f64 / 1e9;
        let mut cum = Bucket::default();
        let mut out = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            cum.add(b);
            let boundary_s = (i as u64 + 1) as f64 * self.width_ns as f64 / 1e9;
            let last = i + 1 == self.buckets.len();
            if last || boundary_s >= t_end_s {
                out.push(Point::at(t_end_s, &cum));
                break;
            }
            out.push(Point::at(boundary_s, &cum));
        }
        out
    }
}

/// One point of `workload_timeline.json`: totals up to `t` seconds after the start.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Point {
    pub t: f64,
    pub cum_completion: u64,
    pub cum_new_prompt: u64,
    pub cum_cached_prompt: u64,
    pub cum_requests: u64,
    pub cum_failed: u64,
}

impl Point {
    fn at(t: f64, b: &Bucket) -> Point {
        Point {
            t,
            cum_completion: b.completion_tokens,
            cum_new_prompt: b.new_prompt_tokens,
            cum_cached_prompt: b.cached_prompt_tokens,
            cum_requests: b.requests_ok,
            cum_failed: b.requests_failed,
        }
    }

    const ORIGIN: Point = Point {
        t: 0.0,
        cum_completion: 0,
        cum_new_prompt: 0,
        cum_cached_prompt: 0,
        cum_requests: 0,
        cum_failed: 0,
    };
}

/// One row of the Workload Throughput table, tokens/s.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ThroughputRow {
    pub metric: &'static str,
    pub overall: Option<f64>,
    pub last_window: Option<f64>,
    pub steady_state: Option<f64>,
}

/// `workload_throughput.json` and `summary.json`'s `workload_throughput`, in evalscope's layout.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadThroughput {
    /// Successful requests.
    pub n_samples: u64,
    /// From the phase start to the last response.
    pub wall_time_s: f64,
    pub last_window_s: f64,
    pub warmup_frac: f64,
    pub rows: Vec<ThroughputRow>,
}

impl WorkloadThroughput {
    pub fn of(points: &[Point]) -> WorkloadThroughput {
        let last = points.last().copied().unwrap_or(Point::ORIGIN);
        let wall_s = last.t;
        // The latest point at or before `t` (the origin if none).
        let anchor = |t: f64| {
            points
                .iter()
                .rev()
                .find(|p| p.t <= t)
                .copied()
                .unwrap_or(Point::ORIGIN)
        };
        let overall = Point::ORIGIN;
        let last_window = if wall_s <= LAST_WINDOW_S {
            overall
        } else {
            anchor(wall_s - LAST_WINDOW_S)
        };
        let steady = match anchor(WARMUP_FRAC * wall_s) {
            p if p.t >= wall_s => overall,
            p => p,
        };
        let rate = |from: &Point, f: fn(&Point) -> u64| {
            let dt = last.t - from.t;
            (dt > 0.0).then(|| (f(&last) - f(from)) as f64 / dt)
        };
        let row = |metric, f: fn(&Point) -> u64| ThroughputRow {
            metric,
            overall: rate(&overall, f),
            last_window: rate(&last_window, f),
            steady_state: rate(&steady, f),
        };
        WorkloadThroughput {
            n_samples: last.cum_requests,
            wall_time_s: wall_s,
            last_window_s: LAST_WINDOW_S,
            warmup_frac: WARMUP_FRAC,
            rows: vec![
                row("Total Prompt (tok/s)", |p| {
                    p.cum_new_prompt + p.cum_cached_prompt
                }),
                row("New Prompt (tok/s)", |p| p.cum_new_prompt),
                row("Cached Prompt (tok/s)", |p| p.cum_cached_prompt),
                row("Completion (tok/s)", |p| p.cum_completion),
            ],
        }
    }

    pub fn write(&self, dir: &Path) -> std::io::Result<PathBuf> {
        crate::report::write_json(dir, "workload_throughput.json", self)
    }

    pub fn render(&self) -> String {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.metric.to_string(),
                    f(r.overall),
                    f(r.last_window),
                    f(r.steady_state),
                ]
            })
            .collect();
        format!(
            "Workload Throughput\n{}",
            crate::report::table(
                &["Metric", "Overall", "Last 30s", "Steady (drop 20%)"],
                &rows
            )
        )
    }
}

/// `workload_timeline.json`: `wall_start` (Unix seconds of the phase start), the bucket width,
/// and the points (`pandas.DataFrame(json["points"])` loads them as they are).
#[derive(Clone, Debug, Serialize)]
pub struct TimelineFile {
    pub wall_start: f64,
    /// The phase start on `CLOCK_MONOTONIC` (ns), to line the points up with other records
    /// taken on the same host (a `parley sim --record`, a server's own trace).
    pub start_monotonic_ns: u64,
    pub bucket_s: f64,
    pub points: Vec<Point>,
}

impl TimelineFile {
    pub fn write(&self, dir: &Path) -> std::io::Result<PathBuf> {
        crate::report::write_json(dir, "workload_timeline.json", self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn buckets_coarsen_and_keep_every_count() {
        let mut t = Timeline::default();
        t.set_origin(1_000 * MS);
        // One request per second for 500 s: 5,000 buckets of 100 ms would exceed the bound.
        for s in 0..500u64 {
            t.record_success(1_000 * MS + s * 1_000 * MS + 50 * MS, 10, 4, 2);
        }
        assert!(t.buckets.len() <= MAX_BUCKETS);
        assert_eq!(t.width_ns, 2 * START_WIDTH_NS);
        let total: u64 = t.buckets.iter().map(|b| b.requests_ok).sum();
        assert_eq!(total, 500);
        let pts = t.points(1_000 * MS + 499_050 * MS);
        let last = pts.last().unwrap();
        assert_eq!(last.cum_requests, 500);
        assert_eq!(last.cum_new_prompt, 3_000);
        assert_eq!(last.cum_cached_prompt, 2_000);
        assert!((last.t - 499.05).abs() < 1e-9);
    }

    #[test]
    fn cores_merge_at_the_coarser_width() {
        let mut a = Timeline::default();
        let mut b = Timeline::default();
        a.set_origin(0);
        b.set_origin(0);
        a.record_success(150 * MS, 1, 0, 1);
        // b runs long enough to coarsen once.
        b.record_success(500_000 * MS, 1, 0, 1);
        b.record_failure(50 * MS);
        let mut run = Timeline::default();
        run.merge(&a);
        run.merge(&b);
        assert_eq!(run.width_ns, b.width_ns);
        assert_eq!(run.buckets[0].requests_ok, 1);
        assert_eq!(run.buckets[0].requests_failed, 1);
        assert_eq!(run.buckets.iter().map(|b| b.requests_ok).sum::<u64>(), 2);
    }

    #[test]
    fn windows_anchor_where_evalscope_does() {
        // 100 s; 10 tokens per 100 ms bucket for the first 20 s, 20 after.
        let mut t = Timeline::default();
        for i in 0..1_000u64 {
            let c = if i < 200 { 10 } else { 20 };
            t.record_success(i * 100 * MS + 50 * MS, 0, 0, c);
        }
        let pts = t.points(100_000 * MS);
        let w = WorkloadThroughput::of(&pts);
        let completion = &w.rows[3];
        assert_eq!(w.n_samples, 1_000);
        assert!((w.wall_time_s - 100.0).abs() < 1e-9);
        // Overall: (2,000 + 16,000) / 100 s.
        assert!((completion.overall.unwrap() - 180.0).abs() < 1e-6);
        // Steady drops the first 20 s: 16,000 / 80 s; the last 30 s: 6,000 / 30 s.
        assert!((completion.steady_state.unwrap() - 200.0).abs() < 1e-6);
        assert!((completion.last_window.unwrap() - 200.0).abs() < 1e-6);
        // A run shorter than the window: Last 30 s is Overall.
        let short = WorkloadThroughput::of(&t.points(10_000 * MS)[..]);
        assert_eq!(short.rows[3].last_window, short.rows[3].overall);
    }
}
