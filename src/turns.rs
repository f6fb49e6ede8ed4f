//! Figures by turn index (turn 1, 2, …): how TTFT, latency, prompt size and cache hits move as
//! a conversation's history grows. Definitions: `docs/metrics.md`, "Per turn".
//!
//! Kept per core like every other figure. A turn index gets its histograms when it is first
//! seen, at 2 significant digits (≈ 25 KiB each rather than ≈ 180 KiB), and indices past
//! [`MAX_TURN_ROWS`] share the last row, so memory is bounded by the dataset's longest
//! conversation and at most ≈ 13 MiB per core.

use serde::{Deserialize, Serialize};

use crate::metrics::Dist;
use crate::report::Stats;

/// Turn indices 1..MAX_TURN_ROWS − 1 get a row each; later turns are pooled in the last.
pub const MAX_TURN_ROWS: usize = 256;
const MAX_US: u64 = 3_600_000_000;

#[derive(Clone, Debug)]
pub struct TurnStats {
    pub ttft_us: Dist,
    pub latency_us: Dist,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub output_tokens: u64,
}

impl TurnStats {
    fn new() -> TurnStats {
        TurnStats {
            ttft_us: Dist::with_sigfig(MAX_US, 2),
            latency_us: Dist::with_sigfig(MAX_US, 2),
            requests: 0,
            prompt_tokens: 0,
            cached_tokens: 0,
            output_tokens: 0,
        }
    }

    fn merge(&mut self, o: &TurnStats) {
        self.ttft_us.merge(&o.ttft_us);
        self.latency_us.merge(&o.latency_us);
        self.requests += o.requests;
        self.prompt_tokens += o.prompt_tokens;
        self.cached_tokens += o.cached_tokens;
        self.output_tokens += o.output_tokens;
    }
}

/// One successful request, by its 0-based turn index.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TurnSample {
    pub turn: u32,
    pub ttft_ns: Option<u64>,
    pub latency_ns: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub output_tokens: u64,
}

#[derive(Clone, Debug, Default)]
pub struct ByTurn {
    pub rows: Vec<TurnStats>,
}

impl ByTurn {
    #[inline]
    pub(crate) fn record(&mut self, s: TurnSample) {
        let i = (s.turn as usize).min(MAX_TURN_ROWS - 1);
        while self.rows.len() <= i {
            self.rows.push(TurnStats::new());
        }
        let row = &mut self.rows[i];
        row.requests += 1;
        if let Some(ttft_ns) = s.ttft_ns {
            row.ttft_us.record(ttft_ns / 1_000);
        }
        row.latency_us.record(s.latency_ns / 1_000);
        row.prompt_tokens += s.prompt_tokens;
        row.cached_tokens += s.cached_tokens.min(s.prompt_tokens);
        row.output_tokens += s.output_tokens;
    }

    pub(crate) fn merge(&mut self, other: &ByTurn) {
        while self.rows.len() < other.rows.len() {
            self.rows.push(TurnStats::new());
        }
        for (a, b) in self.rows.iter_mut().zip(&other.rows) {
            a.merge(b);
        }
    }

    pub fn summary(&self) -> Vec<TurnSummary> {
        self.rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.requests > 0)
            .map(|(i, r)| {
                let n = r.requests as f64;
                TurnSummary {
                    turn: i as u32 + 1,
                    and_later: i + 1 == MAX_TURN_ROWS,
                    requests: r.requests,
                    ttft_ms: Stats::of(&r.ttft_us, 1e-3),
                    latency_ms: Stats::of(&r.latency_us, 1e-3),
                    input_tokens_mean: r.prompt_tokens as f64 / n,
                    output_tokens_mean: r.output_tokens as f64 / n,
                    cache_hit_rate: (r.prompt_tokens > 0)
                        .then(|| r.cached_tokens as f64 / r.prompt_tokens as f64),
                }
            })
            .collect()
    }
}

/// One row of `summary.json`'s `by_turn`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TurnSummary {
    /// 1-based turn index.
    pub turn: u32,
    /// The row also holds every later turn (only the last row, at `MAX_TURN_ROWS`).
    pub and_later: bool,
    pub requests: u64,
    pub ttft_ms: Stats,
    pub latency_ms: Stats,
    pub input_tokens_mean: f64,
    pub output_tokens_mean: f64,
    pub cache_hit_rate: Option<f64>,
}

/// Console rows: every turn when there are at most `MAX_CONSOLE_ROWS`, else the first ten, a
/// marker, and the last five (`summary.json` keeps them all).
const MAX_CONSOLE_ROWS: usize = 20;

/// One turn's table row, as the console and report.html show it.
pub(crate) fn row(r: &TurnSummary) -> Vec<String> {
    let f = |v: Option<f64>, scale: f64, prec: usize| {
        v.map_or("-".to_string(), |v| format!("{:.*}", prec, v * scale))
    };
    vec![
        format!("{}{}", r.turn, if r.and_later { "+" } else { "" }),
        r.requests.to_string(),
        f(r.ttft_ms.mean, 1.0, 2),
        f(r.ttft_ms.p50, 1.0, 2),
        f(r.ttft_ms.p99, 1.0, 2),
        f(r.latency_ms.p50, 1e-3, 3),
        format!("{:.1}", r.input_tokens_mean),
        f(r.cache_hit_rate, 100.0, 1),
    ]
}

pub fn render(rows: &[TurnSummary]) -> String {
    if rows.len() < 2 {
        return String::new();
    }
    let line = row;
    let mut table_rows: Vec<Vec<String>> = Vec::new();
    if rows.len() <= MAX_CONSOLE_ROWS {
        table_rows.extend(rows.iter().map(line));
    } else {
        table_rows.extend(rows[..10].iter().map(line));
        table_rows.push(vec!["…".into(); 8]);
        table_rows.extend(rows[rows.len() - 5..].iter().map(line));
    }
    format!(
        "Per Turn\n{}",
        crate::report::table(
            &[
                "Turn",
                "Requests",
                "TTFT avg (ms)",
                "TTFT p50 (ms)",
                "TTFT p99 (ms)",
                "Latency p50 (s)",
                "Input tok (avg)",
                "Cache Hit (%)",
            ],
            &table_rows
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(turn: u32, ttft_ms: u64, prompt: u64, cached: u64) -> TurnSample {
        TurnSample {
            turn,
            ttft_ns: Some(ttft_ms * 1_000_000),
            latency_ns: 4 * ttft_ms * 1_000_000,
            prompt_tokens: prompt,
            cached_tokens: cached,
            output_tokens: 7,
        }
    }

    #[test]
    fn rows_by_turn_merge_across_cores() {
        let mut a = ByTurn::default();
        a.record(sample(0, 10, 100, 0));
        a.record(sample(1, 20, 200, 150));
        let mut b = ByTurn::default();
        b.record(sample(1, 40, 300, 250));
        b.record(sample(2, 50, 400, 390));
        let mut run = ByTurn::default();
        run.merge(&a);
        run.merge(&b);
        let s = run.summary();
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].turn, 2);
        assert_eq!(s[1].requests, 2);
        assert_eq!(s[1].ttft_ms.mean, Some(30.0));
        assert_eq!(s[1].input_tokens_mean, 250.0);
        assert_eq!(s[1].cache_hit_rate, Some(0.8));
        assert_eq!(s[0].cache_hit_rate, Some(0.0));
        assert!(render(&s).contains("Per Turn"));
    }

    #[test]
    fn turns_past_the_bound_share_the_last_row() {
        let mut t = ByTurn::default();
        t.record(sample(MAX_TURN_ROWS as u32 + 40, 10, 1, 0));
        t.record(sample(MAX_TURN_ROWS as u32 - 1, 10, 1, 0));
        assert_eq!(t.rows.len(), MAX_TURN_ROWS);
        let s = t.summary();
        assert_eq!(s.len(), 1);
        assert!(s[0].and_later);
        assert_eq!(s[0].requests, 2);
    }
}
