//! What a bench run concludes: each point's `--slo` thresholds checked against its summary, and
//! the run's [`Outcome`] mapped to the process exit code a CI job gates on (README, "Exit
//! codes"). Pure: the binary only calls [`Outcome::exit_code`].

use serde::Serialize;

use crate::plan::{Figure, LatencyMetric, Stat, Threshold};
use crate::report::{Stats, Summary};

/// Exit code: completed, every threshold met.
pub const EXIT_OK: i32 = 0;
/// Exit code: completed, a threshold breached.
pub const EXIT_THRESHOLD: i32 = 1;
/// Exit code: usage or input error, nothing sent (also clap's own usage errors).
pub const EXIT_USAGE: i32 = 2;
/// Exit code: nothing measurable (no request succeeded).
pub const EXIT_NOTHING_MEASURED: i32 = 3;

/// One threshold checked against one point's summary.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ThresholdResult {
    /// Canonical name (`ttft_p99_ms`, `error_rate`, …).
    pub name: String,
    /// `"max"`: the figure must be at or below `limit`; `"min"`: at or above it.
    pub bound: &'static str,
    pub limit: f64,
    /// The figure in this point's summary (`null`: no request contributed, which counts as a
    /// breach).
    pub value: Option<f64>,
    pub met: bool,
}

impl ThresholdResult {
    /// A console line: `ttft_p99_ms = 612.40, above the maximum 500 by 112.40 (+22.5 %)`.
    pub fn describe(&self) -> String {
        let Some(v) = self.value else {
            return format!(
                "{} has no value (no request contributed); {} {}",
                self.name, self.bound, self.limit
            );
        };
        let (word, diff) = if self.bound == "max" {
            ("above the maximum", v - self.limit)
        } else {
            ("below the minimum", self.limit - v)
        };
        if self.met {
            return format!(
                "{} = {} (limit {} {})",
                self.name,
                num(v),
                self.bound,
                num(self.limit)
            );
        }
        let pct = if self.limit != 0.0 {
            format!(" ({:+.1} %)", 100.0 * (v - self.limit) / self.limit)
        } else {
            String::new()
        };
        format!(
            "{} = {}, {word} {} by {}{pct}",
            self.name,
            num(v),
            num(self.limit),
            num(diff)
        )
    }
}

/// A number as the threshold lines print it: up to 4 decimals, no trailing zeros.
fn num(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.into()
    }
}

fn stat(s: &Stats, which: Stat) -> Option<f64> {
    match which {
        Stat::Mean => s.mean,
        Stat::P50 => s.p50,
        Stat::P90 => s.p90,
        Stat::P95 => s.p95,
        Stat::P99 => s.p99,
        Stat::Max => s.max,
    }
}

/// The value of `figure` in `summary` (`None` when nothing contributed to it).
pub fn value_of(summary: &Summary, figure: Figure) -> Option<f64> {
    let answered = summary.requests.succeeded + summary.requests.failed;
    match figure {
        Figure::Latency(metric, which) => {
            let dist = match metric {
                LatencyMetric::Ttft => &summary.ttft_ms,
                LatencyMetric::Tpot => &summary.tpot_ms,
                LatencyMetric::Itl => &summary.itl_ms,
                LatencyMetric::Latency => &summary.latency_ms,
            };
            stat(dist, which)
        }
        Figure::ErrorRate => summary.requests.error_rate,
        Figure::GoodputShare => summary.goodput.as_ref().and_then(|g| g.share),
        Figure::RequestsPerS => (answered > 0).then_some(summary.throughput.requests_per_s),
        Figure::OutputTokensPerS => {
            (answered > 0).then_some(summary.throughput.output_tokens_per_s)
        }
    }
}

/// Checks every threshold against one point's summary.
pub fn evaluate(thresholds: &[Threshold], summary: &Summary) -> Vec<ThresholdResult> {
    thresholds
        .iter()
        .map(|t| {
            let value = value_of(summary, t.figure);
            let maximum = t.figure.is_maximum();
            let met = value.is_some_and(|v| if maximum { v <= t.limit } else { v >= t.limit });
            ThresholdResult {
                name: t.name.clone(),
                bound: if maximum { "max" } else { "min" },
                limit: t.limit,
                value,
                met,
            }
        })
        .collect()
}

/// What a bench run ended with, for the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every point completed with at least one success and met every threshold.
    Passed,
    /// Some point breached a threshold.
    ThresholdBreached,
    /// Some point had no successful request: its figures are empty.
    NothingMeasured,
    /// Stopped by this signal; the report was written.
    Interrupted(i32),
}

impl Verdict {
    /// The process exit code. A signal wins (the figures are partial anyway), then nothing
    /// measured (thresholds on empty figures say nothing more), then a breach.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Passed => EXIT_OK,
            Verdict::ThresholdBreached => EXIT_THRESHOLD,
            Verdict::NothingMeasured => EXIT_NOTHING_MEASURED,
            Verdict::Interrupted(signal) => 128 + signal,
        }
    }
}

/// The result of a bench run: every point's summary, and the signal that stopped it, if any.
#[derive(Debug)]
pub struct Outcome {
    pub summaries: Vec<Summary>,
    /// The signal number that interrupted the run (SIGINT 2, SIGTERM 15, SIGHUP 1).
    pub signal: Option<i32>,
}

impl Outcome {
    pub fn verdict(&self) -> Verdict {
        if let Some(sig) = self.signal {
            return Verdict::Interrupted(sig);
        }
        if self.summaries.is_empty() || self.summaries.iter().any(|s| s.requests.succeeded == 0) {
            return Verdict::NothingMeasured;
        }
        if self
            .summaries
            .iter()
            .any(|s| s.thresholds.iter().any(|t| !t.met))
        {
            return Verdict::ThresholdBreached;
        }
        Verdict::Passed
    }

    pub fn exit_code(&self) -> i32 {
        self.verdict().exit_code()
    }

    /// A line for stderr explaining a non-zero exit code (`None` for 0).
    pub fn explain(&self) -> Option<String> {
        let code = self.exit_code();
        let why = match self.verdict() {
            Verdict::Passed => return None,
            Verdict::ThresholdBreached => {
                let breached: Vec<&str> = self
                    .summaries
                    .iter()
                    .flat_map(|s| s.thresholds.iter().filter(|t| !t.met))
                    .map(|t| t.name.as_str())
                    .collect();
                format!("threshold breached: {}", breached.join(", "))
            }
            Verdict::NothingMeasured => {
                "nothing measurable: no request succeeded (see the failures above)".to_string()
            }
            Verdict::Interrupted(sig) => format!("interrupted by signal {sig}; report written"),
        };
        Some(format!("parley: exit {code}: {why}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_documented_table() {
        assert_eq!(Verdict::Passed.exit_code(), 0);
        assert_eq!(Verdict::ThresholdBreached.exit_code(), 1);
        assert_eq!(Verdict::NothingMeasured.exit_code(), 3);
        assert_eq!(Verdict::Interrupted(libc::SIGINT).exit_code(), 130);
        assert_eq!(Verdict::Interrupted(libc::SIGTERM).exit_code(), 143);
        assert_eq!(Verdict::Interrupted(libc::SIGHUP).exit_code(), 129);
        let empty = Outcome {
            summaries: Vec::new(),
            signal: None,
        };
        assert_eq!(empty.exit_code(), EXIT_NOTHING_MEASURED);
        let stopped = Outcome {
            summaries: Vec::new(),
            signal: Some(libc::SIGTERM),
        };
        assert_eq!(stopped.exit_code(), 143);
    }

    #[test]
    fn threshold_lines_say_by_how_much() {
        let r = ThresholdResult {
            name: "ttft_p99_ms".into(),
            bound: "max",
            limit: 500.0,
            value: Some(612.4),
            met: false,
        };
        assert_eq!(
            r.describe(),
            "ttft_p99_ms = 612.4, above the maximum 500 by 112.4 (+22.5 %)"
        );
        let r = ThresholdResult {
            name: "goodput_share".into(),
            bound: "min",
            limit: 0.9,
            value: Some(0.75),
            met: false,
        };
        assert_eq!(
            r.describe(),
            "goodput_share = 0.75, below the minimum 0.9 by 0.15 (-16.7 %)"
        );
        let r = ThresholdResult { value: None, ..r };
        assert!(r.describe().contains("has no value"), "{}", r.describe());
    }
}
