//! Per-conversation ("per-trace") figures: evalscope's Per-Trace Metrics table and
//! `trace_summary.json`.
//!
//! A [`TraceAcc`] follows one conversation on its core, fed by each successful turn; when the
//! conversation completes, its figures go into that core's [`TraceStats`] histograms, which are
//! merged with the other cores' at the end like every other figure. Nothing here grows with the
//! number of conversations. Definitions: `docs/metrics.md`, "Per-trace metrics".

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::metrics::Dist;
use crate::report::Stats;

/// Histogram ranges: durations 1 µs–1 h; decode rates in milli-tokens/s up to 10⁹ tok/s; hit
/// rates in hundredths of a percent (the eligible rate is not clamped at 100 %, as evalscope's).
const MAX_US: u64 = 3_600_000_000;
const MAX_MILLI_TPS: u64 = 1_000_000_000_000;
const MAX_CENTI_PCT: u64 = 1_000_000_000;

/// One conversation's running figures, on the core that runs it.
#[derive(Clone, Debug, Default)]
pub(crate) struct TraceAcc {
    first_start_ns: Option<u64>,
    first_turn_ttft_ns: Option<u64>,
    /// The latest successful turn's first output token and end.
    last_first_token_ns: Option<u64>,
    last_end_ns: u64,
    decode_tps_sum: f64,
    decode_turns: u32,
    prompt_tokens: u64,
    cached_tokens: u64,
    /// Σ over later turns of the previous turn's prompt + completion (the cacheable prefix),
    /// and Σ cached over those turns.
    eligible_tokens: u64,
    eligible_cached_tokens: u64,
    /// The previous successful turn's prompt + completion.
    prev_context_tokens: u64,
}

/// What one successful turn adds to its conversation's figures.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TurnFacts {
    pub start_ns: u64,
    pub first_output_ns: Option<u64>,
    pub end_ns: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
}

impl TraceAcc {
    pub(crate) fn on_turn(&mut self, t: TurnFacts) {
        let first_turn = self.first_start_ns.is_none();
        if first_turn {
            self.first_start_ns = Some(t.start_ns);
            self.first_turn_ttft_ns = t.first_output_ns.map(|f| f.saturating_sub(t.start_ns));
        }
        self.last_first_token_ns = t.first_output_ns;
        self.last_end_ns = t.end_ns;
        if let Some(first) = t.first_output_ns {
            let decode_ns = t.end_ns.saturating_sub(first);
            if t.completion_tokens > 1 && decode_ns > 0 {
                self.decode_tps_sum += (t.completion_tokens - 1) as f64 / (decode_ns as f64 / 1e9);
                self.decode_turns += 1;
            }
        }
        self.prompt_tokens += t.prompt_tokens;
        self.cached_tokens += t.cached_tokens;
        if !first_turn && self.prev_context_tokens > 0 {
            self.eligible_tokens += self.prev_context_tokens;
            self.eligible_cached_tokens += t.cached_tokens;
        }
        self.prev_context_tokens = t.prompt_tokens + t.completion_tokens;
    }
}

/// Per-trace histograms of one core (then of the run, once merged).
#[derive(Clone, Debug)]
pub struct TraceStats {
    pub latency_us: Dist,
    pub first_turn_ttft_us: Dist,
    pub ttfat_us: Dist,
    pub decode_milli_tps: Dist,
    pub cache_hit_centi_pct: Dist,
    pub eligible_cache_hit_centi_pct: Dist,
}

impl Default for TraceStats {
    fn default() -> Self {
        TraceStats {
            latency_us: Dist::new(MAX_US),
            first_turn_ttft_us: Dist::new(MAX_US),
            ttfat_us: Dist::new(MAX_US),
            decode_milli_tps: Dist::new(MAX_MILLI_TPS),
            cache_hit_centi_pct: Dist::new(MAX_CENTI_PCT),
            eligible_cache_hit_centi_pct: Dist::new(MAX_CENTI_PCT),
        }
    }
}

impl TraceStats {
    /// A completed conversation's figures.
    pub(crate) fn record(&mut self, acc: &TraceAcc) {
        let Some(start_ns) = acc.first_start_ns else {
            return;
        };
        self.latency_us
            .record(acc.last_end_ns.saturating_sub(start_ns) / 1_000);
        if let Some(ttft_ns) = acc.first_turn_ttft_ns {
            self.first_turn_ttft_us.record(ttft_ns / 1_000);
        }
        if let Some(first_ns) = acc.last_first_token_ns {
            self.ttfat_us
                .record(first_ns.saturating_sub(start_ns) / 1_000);
        }
        if acc.decode_turns > 0 {
            let tps = acc.decode_tps_sum / acc.decode_turns as f64;
            self.decode_milli_tps.record((tps * 1e3).round() as u64);
        }
        let centi_pct = |num: u64, den: u64| (num as f64 * 1e4 / den as f64).round() as u64;
        if acc.prompt_tokens > 0 {
            self.cache_hit_centi_pct
                .record_zero_ok(centi_pct(acc.cached_tokens, acc.prompt_tokens));
        }
        if acc.eligible_tokens > 0 {
            self.eligible_cache_hit_centi_pct
                .record_zero_ok(centi_pct(acc.eligible_cached_tokens, acc.eligible_tokens));
        }
    }

    pub(crate) fn merge(&mut self, other: &TraceStats) {
        self.latency_us.merge(&other.latency_us);
        self.first_turn_ttft_us.merge(&other.first_turn_ttft_us);
        self.ttfat_us.merge(&other.ttfat_us);
        self.decode_milli_tps.merge(&other.decode_milli_tps);
        self.cache_hit_centi_pct.merge(&other.cache_hit_centi_pct);
        self.eligible_cache_hit_centi_pct
            .merge(&other.eligible_cache_hit_centi_pct);
    }
}

/// The per-trace figures of a run, in `summary.json` (`traces`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TraceSummary {
    /// Completed conversations.
    pub n_traces: u64,
    pub latency_s: Stats,
    pub first_turn_ttft_s: Stats,
    pub ttfat_s: Stats,
    pub decode_tps: Stats,
    pub cache_hit_pct: Stats,
    pub eligible_cache_hit_pct: Stats,
}

impl TraceSummary {
    pub(crate) fn of(t: &TraceStats) -> TraceSummary {
        TraceSummary {
            n_traces: t.latency_us.count(),
            latency_s: Stats::of(&t.latency_us, 1e-6),
            first_turn_ttft_s: Stats::of(&t.first_turn_ttft_us, 1e-6),
            ttfat_s: Stats::of(&t.ttfat_us, 1e-6),
            decode_tps: Stats::of(&t.decode_milli_tps, 1e-3),
            cache_hit_pct: Stats::of(&t.cache_hit_centi_pct, 1e-2),
            eligible_cache_hit_pct: Stats::of(&t.eligible_cache_hit_centi_pct, 1e-2),
        }
    }

    /// The rows in evalscope's order and names.
    pub fn rows(&self) -> [(&'static str, &Stats); 6] {
        [
            ("Latency (s)", &self.latency_s),
            ("First-Turn TTFT (s)", &self.first_turn_ttft_s),
            ("TTFAT (s)", &self.ttfat_s),
            ("Decode TPS", &self.decode_tps),
            ("Cache Hit Rate (%)", &self.cache_hit_pct),
            ("Eligible Cache Hit Rate (%)", &self.eligible_cache_hit_pct),
        ]
    }

    /// `trace_summary.json`, in evalscope's layout (`n_traces`, `rows` of `metric`, `mean`,
    /// `min`, `p50`, `p90`, `p95`, `p99`, `max`) plus `std` and `count` per row.
    pub fn write(&self, dir: &Path) -> std::io::Result<PathBuf> {
        #[derive(Serialize)]
        struct Row<'a> {
            metric: &'a str,
            count: u64,
            mean: Option<f64>,
            std: Option<f64>,
            min: Option<f64>,
            p50: Option<f64>,
            p90: Option<f64>,
            p95: Option<f64>,
            p99: Option<f64>,
            max: Option<f64>,
        }
        #[derive(Serialize)]
        struct File<'a> {
            n_traces: u64,
            rows: Vec<Row<'a>>,
        }
        let rows = self
            .rows()
            .into_iter()
            .map(|(metric, s)| Row {
                metric,
                count: s.count,
                mean: s.mean,
                std: s.std,
                min: s.min,
                p50: s.p50,
                p90: s.p90,
                p95: s.p95,
                p99: s.p99,
                max: s.max,
            })
            .collect();
        crate::report::write_json(
            dir,
            "trace_summary.json",
            &File {
                n_traces: self.n_traces,
                rows,
            },
        )
    }

    /// The console table (evalscope's columns: mean, p50, p90, p99, max; with min and std).
    pub fn render(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .rows()
            .into_iter()
            .map(|(name, s)| {
                let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
                vec![
                    name.to_string(),
                    f(s.mean),
                    f(s.std),
                    f(s.min),
                    f(s.p50),
                    f(s.p90),
                    f(s.p99),
                    f(s.max),
                ]
            })
            .collect();
        format!(
            "Per-Trace Metrics ({} conversations)\n{}",
            self.n_traces,
            crate::report::table(
                &["Metric", "mean", "std", "min", "p50", "p90", "p99", "max"],
                &rows
            )
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(start_ms: u64, ttft_ms: u64, end_ms: u64, p: u64, c: u64, out: u64) -> TurnFacts {
        let ms = 1_000_000;
        TurnFacts {
            start_ns: start_ms * ms,
            first_output_ns: Some((start_ms + ttft_ms) * ms),
            end_ns: end_ms * ms,
            prompt_tokens: p,
            cached_tokens: c,
            completion_tokens: out,
        }
    }

    fn close(a: Option<f64>, b: f64) {
        let a = a.expect("a value");
        assert!((a - b).abs() < 1e-9 * b.abs().max(1.0), "{a} vs {b}");
    }

    #[test]
    fn a_conversation_gives_evalscopes_figures() {
        let mut acc = TraceAcc::default();
        // Turn 1: 0–100 ms, TTFT 20 ms, 100 prompt, 0 cached, 9 out → 8 tokens in 80 ms.
        acc.on_turn(turn(0, 20, 100, 100, 0, 9));
        // Turn 2 (after think time): 500–600 ms, TTFT 50 ms, 150 prompt of which 96 cached,
        // 11 out → 10 tokens in 50 ms.
        acc.on_turn(turn(500, 50, 600, 150, 96, 11));
        let mut stats = TraceStats::default();
        stats.record(&acc);
        let s = TraceSummary::of(&stats);
        assert_eq!(s.n_traces, 1);
        close(s.latency_s.mean, 0.6);
        close(s.first_turn_ttft_s.mean, 0.02);
        // TTFAT: the final reply's first token (550 ms) − the first turn's start.
        close(s.ttfat_s.mean, 0.55);
        // Decode: mean of 100 tok/s and 200 tok/s.
        close(s.decode_tps.mean, 150.0);
        // Cache: 96 / 250 overall; eligible: 96 / (100 + 9).
        close(s.cache_hit_pct.mean, 38.4);
        let eligible = (96.0f64 * 1e4 / 109.0).round() / 100.0;
        close(s.eligible_cache_hit_pct.mean, eligible);
    }

    #[test]
    fn zero_hit_rates_and_single_turns_are_recorded_as_such() {
        let mut acc = TraceAcc::default();
        acc.on_turn(turn(0, 10, 20, 50, 0, 1));
        let mut stats = TraceStats::default();
        stats.record(&acc);
        // An empty conversation adds nothing.
        stats.record(&TraceAcc::default());
        let s = TraceSummary::of(&stats);
        assert_eq!(s.n_traces, 1);
        close(s.cache_hit_pct.p50, 0.0);
        // One turn: no cacheable prefix, and one output token gives no decode rate.
        assert_eq!(s.eligible_cache_hit_pct.count, 0);
        assert_eq!(s.decode_tps.count, 0);
    }
}
