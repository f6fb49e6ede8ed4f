//! The run's report: `summary.json` and the console tables, both built from one [`Summary`].
//!
//! Every figure here is defined in `docs/metrics.md`; keep the two in step.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::metrics::{Dist, Recorder};
use crate::plan::RunConfig;

/// `{mean, p50, p90, p99, max}` of one distribution, in the unit its key names; `null` when no
/// request contributed.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Stats {
    pub count: u64,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Stats {
    /// `scale` converts the recorded unit to the reported one (e.g. 1e-3 for µs → ms).
    fn of(d: &Dist, scale: f64) -> Stats {
        let q = |p: f64| d.quantile(p).map(|v| v as f64 * scale);
        Stats {
            count: d.count(),
            mean: d.mean().map(|m| m * scale),
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            max: d.max().map(|v| v as f64 * scale),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Requests {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Failed requests by cause (`http_500`, `io`, `read_timeout`, …).
    pub failures: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Conversations {
    pub completed: u64,
    pub abandoned: u64,
    pub interrupted: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub requests_per_s: f64,
    pub input_tokens_per_s: f64,
    pub output_tokens_per_s: f64,
    pub total_tokens_per_s: f64,
}

/// What the run cost the client process itself.
#[derive(Clone, Debug, Serialize)]
pub struct ClientCost {
    /// User + system CPU of the parley process while the engine ran.
    pub cpu_s: f64,
    pub cpu_us_per_request: Option<f64>,
    /// Per output-bearing SSE event received.
    pub cpu_us_per_event: Option<f64>,
    pub output_events: u64,
    /// True when the built-in sim ran inside this process, so `cpu_s` includes the server's work.
    pub includes_builtin_sim: bool,
    /// Per engine core: its executor thread's CPU time and wall time over the run.
    pub cores: Vec<CoreCost>,
    /// Per request, from when its slot was ready to send it to when its first bytes were
    /// written to the socket, in µs (`docs/metrics.md`).
    pub send_lag_us: Stats,
    /// Some engine core was busy ≥ 90 % of its run, or send lag p99 exceeded 1 ms: the client
    /// may have been the bottleneck, and its latency figures may include time responses waited
    /// for it.
    pub saturated: bool,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct CoreCost {
    /// User + system CPU of the core's executor thread.
    pub cpu_s: f64,
    /// Wall time from the executor's start to its last slot finishing.
    pub wall_s: f64,
    /// `100 · cpu_s / wall_s`.
    pub busy_pct: f64,
}

/// Busy share of a core's wall time at or above which the client counts as saturated.
pub const SATURATED_BUSY_FRACTION: f64 = 0.9;

/// Send lag p99 above which the client counts as saturated: a healthy client sends within tens
/// of microseconds of the slot being ready; a millisecond means requests queued behind its own
/// work.
pub const SATURATED_SEND_LAG_P99_US: f64 = 1_000.0;

/// Everything a run reports.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub parley_version: &'static str,
    pub config: RunConfig,
    pub interrupted: bool,
    pub duration_s: f64,
    pub requests: Requests,
    pub conversations: Conversations,
    pub throughput: Throughput,
    pub ttft_ms: Stats,
    pub itl_ms: Stats,
    pub tpot_ms: Stats,
    pub latency_ms: Stats,
    pub input_tokens: Stats,
    pub output_tokens: Stats,
    pub first_turn_ttft_ms: Stats,
    pub subsequent_turn_ttft_ms: Stats,
    pub turns_per_request_mean: Option<f64>,
    pub cache_hit_rate: Option<f64>,
    /// `"server"` when every request carried `cached_tokens`, else `"estimated"`.
    pub cache_hit_source: &'static str,
    /// `"server"` when every request carried `usage`, else `"estimated"` (output tokens counted
    /// as output-bearing chunks).
    pub token_source: &'static str,
    pub client: ClientCost,
}

impl Summary {
    /// `cpu_ns`: the client process's CPU time over the run; `with_sim`: the sim ran in-process.
    pub fn new(
        config: RunConfig,
        rec: &Recorder,
        interrupted: bool,
        cpu_ns: u64,
        with_sim: bool,
    ) -> Summary {
        let requests = rec.requests_succeeded + rec.requests_failed;
        let per = |n: u64| (n > 0).then(|| cpu_ns as f64 / 1e3 / n as f64);
        let duration_s = rec.duration_s();
        let per_s = |x: f64| {
            if duration_s > 0.0 {
                x / duration_s
            } else {
                0.0
            }
        };
        let input_sum = rec.input_tokens.sum as f64;
        let output_sum = rec.output_tokens.sum as f64;
        let ok = rec.requests_succeeded;
        let send_lag_us = Stats::of(&rec.send_lag_ns, 1e-3);
        let busy = rec
            .core_loads
            .iter()
            .any(|c| c.busy_fraction() >= SATURATED_BUSY_FRACTION);
        let lagging = send_lag_us
            .p99
            .is_some_and(|p99| p99 > SATURATED_SEND_LAG_P99_US);
        Summary {
            parley_version: env!("CARGO_PKG_VERSION"),
            config,
            interrupted,
            duration_s,
            requests: Requests {
                total: ok + rec.requests_failed,
                succeeded: ok,
                failed: rec.requests_failed,
                failures: rec.failures.iter().map(|(k, v)| (k.label(), *v)).collect(),
            },
            conversations: Conversations {
                completed: rec.conversations_completed,
                abandoned: rec.conversations_abandoned,
                interrupted: rec.conversations_interrupted,
            },
            throughput: Throughput {
                requests_per_s: per_s(ok as f64),
                input_tokens_per_s: per_s(input_sum),
                output_tokens_per_s: per_s(output_sum),
                total_tokens_per_s: per_s(input_sum + output_sum),
            },
            ttft_ms: Stats::of(&rec.ttft_us, 1e-3),
            itl_ms: Stats::of(&rec.itl_us, 1e-3),
            tpot_ms: Stats::of(&rec.tpot_us, 1e-3),
            latency_ms: Stats::of(&rec.latency_us, 1e-3),
            input_tokens: Stats::of(&rec.input_tokens, 1.0),
            output_tokens: Stats::of(&rec.output_tokens, 1.0),
            first_turn_ttft_ms: Stats::of(&rec.first_turn_ttft_us, 1e-3),
            subsequent_turn_ttft_ms: Stats::of(&rec.subsequent_turn_ttft_us, 1e-3),
            turns_per_request_mean: (ok > 0).then(|| rec.turn_depth_sum as f64 / ok as f64),
            cache_hit_rate: (rec.cache_prompt_tokens > 0)
                .then(|| rec.cache_cached_tokens as f64 / rec.cache_prompt_tokens as f64),
            cache_hit_source: if rec.cache_estimated == 0 {
                "server"
            } else {
                "estimated"
            },
            token_source: if rec.tokens_estimated == 0 {
                "server"
            } else {
                "estimated"
            },
            client: ClientCost {
                cpu_s: cpu_ns as f64 / 1e9,
                cpu_us_per_request: per(requests),
                cpu_us_per_event: per(rec.output_events),
                output_events: rec.output_events,
                includes_builtin_sim: with_sim,
                cores: rec
                    .core_loads
                    .iter()
                    .map(|c| CoreCost {
                        cpu_s: c.cpu_ns as f64 / 1e9,
                        wall_s: c.wall_ns as f64 / 1e9,
                        busy_pct: 100.0 * c.busy_fraction(),
                    })
                    .collect(),
                send_lag_us,
                saturated: busy || lagging,
            },
        }
    }

    /// Writes `summary.json` into `dir` (created if needed).
    pub fn write(&self, dir: &Path) -> std::io::Result<std::path::PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("summary.json");
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&path, json)?;
        Ok(path)
    }

    /// The console tables.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let conc = self.config.parallel.to_string();
        let success_pct = if self.requests.total > 0 {
            100.0 * self.requests.succeeded as f64 / self.requests.total as f64
        } else {
            0.0
        };
        out.push_str("Performance Overview\n");
        out.push_str(&table(
            &[
                "Conc.",
                "Num requests",
                "Conversations",
                "RPS",
                "Gen/s",
                "Success",
            ],
            &[vec![
                conc.clone(),
                self.requests.total.to_string(),
                self.conversations.completed.to_string(),
                format!("{:.2}", self.throughput.requests_per_s),
                format!("{:.2}", self.throughput.output_tokens_per_s),
                format!("{success_pct:.1}%"),
            ]],
        ));
        out.push('\n');

        let row = |name: &str, s: &Stats, scale: f64, prec: usize| -> Vec<String> {
            let f =
                |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.*}", prec, v * scale));
            vec![
                name.to_string(),
                f(s.mean),
                f(s.p50),
                f(s.p90),
                f(s.p99),
                f(s.max),
            ]
        };
        let est = |src: &str| if src == "server" { "" } else { " (est.)" };
        let mut rows = vec![
            row("Latency (s)", &self.latency_ms, 1e-3, 3),
            row("TTFT (ms)", &self.ttft_ms, 1.0, 2),
            row("TPOT (ms)", &self.tpot_ms, 1.0, 2),
            row("ITL (ms)", &self.itl_ms, 1.0, 2),
            row(
                &format!("Input Tokens{}", est(self.token_source)),
                &self.input_tokens,
                1.0,
                1,
            ),
            row(
                &format!("Output Tokens{}", est(self.token_source)),
                &self.output_tokens,
                1.0,
                1,
            ),
        ];
        let avg_only =
            |name: String, v: String| vec![name, v, "-".into(), "-".into(), "-".into(), "-".into()];
        rows.push(avg_only(
            "Turns/Req".into(),
            self.turns_per_request_mean
                .map_or("-".into(), |v| format!("{v:.2}")),
        ));
        rows.push(avg_only(
            format!("Cache Hit (%){}", est(self.cache_hit_source)),
            self.cache_hit_rate
                .map_or("-".into(), |v| format!("{:.1}%", v * 100.0)),
        ));
        rows.push(row(
            "First-turn TTFT (ms)",
            &self.first_turn_ttft_ms,
            1.0,
            2,
        ));
        rows.push(row(
            "Subsequent-turn TTFT (ms)",
            &self.subsequent_turn_ttft_ms,
            1.0,
            2,
        ));
        out.push_str("Per-Request Metrics\n");
        out.push_str(&table(
            &["Metric", "avg", "p50", "p90", "p99", "max"],
            &rows,
        ));

        let _ = writeln!(
            out,
            "Client CPU: {:.3} s, {} µs per request, {} µs per output event, cores busy {}{}",
            self.client.cpu_s,
            self.client
                .cpu_us_per_request
                .map_or("-".into(), |v| format!("{v:.1}")),
            self.client
                .cpu_us_per_event
                .map_or("-".into(), |v| format!("{v:.2}")),
            self.client
                .cores
                .iter()
                .map(|c| format!("{:.0}%", c.busy_pct))
                .collect::<Vec<_>>()
                .join(" "),
            if self.client.includes_builtin_sim {
                " (includes the built-in sim's work)"
            } else {
                ""
            }
        );
        let lag = &self.client.send_lag_us;
        if lag.count > 0 {
            let us = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
            let _ = writeln!(
                out,
                "Send lag (slot ready → first write): p50 {} µs, p99 {} µs, max {} µs",
                us(lag.p50),
                us(lag.p99),
                us(lag.max)
            );
        }
        if self.client.saturated {
            let busiest = self
                .client
                .cores
                .iter()
                .map(|c| c.busy_pct)
                .fold(0.0, f64::max);
            let mut causes = Vec::new();
            if busiest >= 100.0 * SATURATED_BUSY_FRACTION {
                causes.push(format!("a client core was busy {busiest:.0}% of the run"));
            }
            if let Some(p99) = lag.p99.filter(|p| *p > SATURATED_SEND_LAG_P99_US) {
                causes.push(format!(
                    "send lag p99 was {:.1} ms (> {:.0} ms)",
                    p99 / 1e3,
                    SATURATED_SEND_LAG_P99_US / 1e3
                ));
            }
            let _ = writeln!(
                out,
                "WARNING: {}: parley itself may have been the bottleneck, and TTFT/ITL/latency \
                 may include time responses waited for it. Add --cores or lower the load.",
                causes.join(" and ")
            );
        }
        if self.config.skipped_invalid > 0 || self.config.filtered > 0 {
            let _ = writeln!(
                out,
                "Dataset: {} invalid entries skipped (--skip-invalid), {} conversations filtered \
                 out, {} in the pool",
                self.config.skipped_invalid, self.config.filtered, self.config.pool
            );
        }
        if self.requests.failed > 0 {
            let mut line = format!("\nFailed requests: {}", self.requests.failed);
            for (k, v) in &self.requests.failures {
                let _ = write!(line, "  {k}={v}");
            }
            out.push_str(&line);
            out.push('\n');
        }
        if self.conversations.abandoned > 0 {
            let _ = writeln!(
                out,
                "Abandoned conversations (a turn failed): {}",
                self.conversations.abandoned
            );
        }
        if self.interrupted {
            let _ = writeln!(
                out,
                "Interrupted: figures cover what was measured before Ctrl-C ({} conversations cut short).",
                self.conversations.interrupted
            );
        }
        out
    }
}

/// A box-drawn table; the first column is left-aligned, the rest right-aligned.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |l: &str, m: &str, r: &str| {
        let mut s = String::from(l);
        for (i, w) in width.iter().enumerate() {
            s.push_str(&"─".repeat(w + 2));
            s.push_str(if i + 1 < cols { m } else { r });
        }
        s.push('\n');
        s
    };
    let cells = |vals: &[String]| {
        let mut s = String::from("│");
        for (i, v) in vals.iter().enumerate() {
            let pad = width[i] - v.chars().count();
            if i == 0 {
                let _ = write!(s, " {v}{} │", " ".repeat(pad));
            } else {
                let _ = write!(s, " {}{v} │", " ".repeat(pad));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line("┌", "┬", "┐");
    out.push_str(&cells(
        &header.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    ));
    out.push_str(&line("├", "┼", "┤"));
    for r in rows {
        out.push_str(&cells(r));
    }
    out.push_str(&line("└", "┴", "┘"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::CoreLoad;

    fn config() -> RunConfig {
        RunConfig {
            url: "u".into(),
            model: "m".into(),
            dataset: "d".into(),
            dataset_path: None,
            dataset_offset: 0,
            shard: None,
            context_mode: None,
            skipped_invalid: 0,
            filtered: 0,
            pool: 1,
            parallel: 1,
            number: 1,
            cores: 2,
            spin: false,
            stream: true,
            tokenizer: "t".into(),
            seed: 0,
            min_turns: Some(1),
            max_turns: Some(1),
            min_prompt_length: Some(1),
            max_prompt_length: Some(1),
            max_tokens: 1,
            extra_args: serde_json::Value::Null,
            pool_config: Default::default(),
        }
    }

    #[test]
    fn saturation_is_flagged_from_core_busy_share() {
        let mut rec = Recorder::new();
        rec.core_loads = vec![
            CoreLoad {
                cpu_ns: 300,
                wall_ns: 1_000,
            },
            CoreLoad {
                cpu_ns: 890,
                wall_ns: 1_000,
            },
        ];
        let s = Summary::new(config(), &rec, false, 0, false);
        assert!(!s.client.saturated);
        assert_eq!(s.client.cores[1].busy_pct, 89.0);
        assert!(!s.render().contains("WARNING"));
        rec.core_loads[0].cpu_ns = 950;
        let s = Summary::new(config(), &rec, false, 0, false);
        assert!(s.client.saturated);
        assert!(
            s.render().contains("WARNING: a client core was busy 95%"),
            "{}",
            s.render()
        );
    }

    #[test]
    fn saturation_is_flagged_from_send_lag_p99() {
        let mut rec = Recorder::new();
        rec.core_loads = vec![CoreLoad {
            cpu_ns: 100,
            wall_ns: 1_000,
        }];
        for _ in 0..99 {
            rec.record_send_lag(0, 40_000); // 40 µs
        }
        rec.record_send_lag(0, 900_000); // 0.9 ms: p99 still ≤ 1 ms
        let s = Summary::new(config(), &rec, false, 0, false);
        assert_eq!(s.client.send_lag_us.count, 100);
        assert!(!s.client.saturated);
        let text = s.render();
        assert!(text.contains("Send lag"), "{text}");
        assert!(!text.contains("WARNING"), "{text}");
        for _ in 0..5 {
            rec.record_send_lag(0, 5_000_000); // 5 ms
        }
        let s = Summary::new(config(), &rec, false, 0, false);
        assert!(s.client.saturated);
        let text = s.render();
        assert!(text.contains("WARNING: send lag p99 was 5.0 ms"), "{text}");
        assert!(!text.contains("core was busy"), "{text}");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["A", "bb"],
            &[
                vec!["x".into(), "1".into()],
                vec!["long".into(), "22".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 6);
        let widths: Vec<usize> = lines.iter().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "{t}");
        assert!(lines[3].contains("│ x    │  1 │"), "{t}");
    }
}
