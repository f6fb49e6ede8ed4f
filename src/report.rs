//! The run's report: `summary.json` and the console tables, both built from one [`Summary`].
//!
//! Every figure here is defined in `docs/metrics.md`; keep the two in step.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::metrics::{Dist, Recorder};
use crate::plan::RunConfig;
use crate::timeline::{TimelineFile, WorkloadThroughput};
use crate::trace::TraceSummary;
use crate::turns::TurnSummary;

/// `{count, mean, std, min, p50, p90, p95, p99, max}` of one distribution, in the unit its key
/// names; `null` when no request contributed.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    pub count: u64,
    pub mean: Option<f64>,
    pub std: Option<f64>,
    pub min: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Stats {
    /// `scale` converts the recorded unit to the reported one (e.g. 1e-3 for µs → ms).
    pub(crate) fn of(d: &Dist, scale: f64) -> Stats {
        let q = |p: f64| d.quantile(p).map(|v| v as f64 * scale);
        Stats {
            count: d.count(),
            mean: d.mean().map(|m| m * scale),
            std: d.std().map(|v| v * scale),
            min: d.min().map(|v| v as f64 * scale),
            p50: q(0.50),
            p90: q(0.90),
            p95: q(0.95),
            p99: q(0.99),
            max: d.max().map(|v| v as f64 * scale),
        }
    }
}

/// Quantile levels of [`Quantiles`]: 0.5 %, 1 %, … 100 % (200 levels).
pub const QUANTILE_LEVELS: usize = 200;

/// `summary.json`'s `quantiles`: the value at each level of [`QUANTILE_LEVELS`] for the main
/// distributions, from the same merged histograms as their [`Stats`] — enough for a CDF (the
/// HTML report's) while the file stays bounded whatever the run's length. A column is empty
/// when no request (or trace) contributed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Quantiles {
    /// The levels, in (0, 1], shared by every column.
    pub q: Vec<f64>,
    pub ttft_ms: Vec<f64>,
    pub itl_ms: Vec<f64>,
    pub latency_ms: Vec<f64>,
    /// Per completed conversation (`traces.latency_s`).
    pub trace_latency_s: Vec<f64>,
}

impl Quantiles {
    pub(crate) fn of(rec: &Recorder) -> Quantiles {
        let q: Vec<f64> = (1..=QUANTILE_LEVELS)
            .map(|i| i as f64 / QUANTILE_LEVELS as f64)
            .collect();
        let column = |d: &Dist, scale: f64| -> Vec<f64> {
            q.iter()
                .filter_map(|&level| d.quantile(level).map(|v| v as f64 * scale))
                .collect()
        };
        Quantiles {
            ttft_ms: column(&rec.ttft_us, 1e-3),
            itl_ms: column(&rec.itl_us, 1e-3),
            latency_ms: column(&rec.latency_us, 1e-3),
            trace_latency_s: column(&rec.traces.latency_us, 1e-6),
            q,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Requests {
    /// Requests sent: succeeded + failed + cancelled.
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// In flight at the hard end of the run (`--duration-grace`); not failures.
    pub cancelled: u64,
    /// Requests sent again (see `docs/metrics.md`); each counts once in `total` all the same.
    pub retried: u64,
    /// Failed requests by cause (`http_500`, `io`, `read_timeout`, `aborted`, …).
    pub failures: BTreeMap<String, u64>,
    /// Per cause, the first few distinct messages the server or connection gave (an error
    /// status's body, an in-band error's message, …), cleaned and cut (`docs/metrics.md`).
    pub failure_messages: BTreeMap<String, Vec<String>>,
    /// failed / (succeeded + failed); `null` when no request was answered.
    pub error_rate: Option<f64>,
}

/// `--goodput`: the limits and how many successful requests met them all.
#[derive(Clone, Debug, Serialize)]
pub struct Goodput {
    /// The limits, in ms (`null`: not limited).
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub itl_ms: Option<f64>,
    pub e2el_ms: Option<f64>,
    /// Successful requests that met every limit.
    pub good_requests: u64,
    /// good_requests / `duration_s`.
    pub requests_per_s: f64,
    /// good_requests / (succeeded + failed); `null` when no request was answered.
    pub share: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Conversations {
    pub started: u64,
    pub completed: u64,
    pub abandoned: u64,
    pub interrupted: u64,
    /// Cut off at the hard end of the run (`--duration` + `--duration-grace`).
    pub cancelled: u64,
}

/// The schedule: when requests were meant to start against when they did (see
/// `docs/metrics.md`, "Schedule").
#[derive(Clone, Debug, Serialize)]
pub struct Schedule {
    /// Open loop: the arrival rate asked for (conversations/s).
    pub offered_rate_per_s: Option<f64>,
    /// Conversations started per second, first start to last.
    pub achieved_rate_per_s: Option<f64>,
    /// Per request: start − intended start.
    pub schedule_lag_ms: Stats,
    /// TTFT and latency from the intended start (coordinated-omission free).
    pub ttft_from_schedule_ms: Stats,
    pub latency_from_schedule_ms: Stats,
    /// Open loop with a cap: per conversation, the wait of its arrival for a free slot.
    pub cap_wait_ms: Stats,
}

/// The warmup phase, excluded from every other figure.
#[derive(Clone, Debug, Serialize)]
pub struct Warmup {
    pub conversations_started: u64,
    pub conversations_completed: u64,
    pub requests_succeeded: u64,
    pub requests_failed: u64,
}

/// One endpoint's share of a run with several `--url`s.
#[derive(Clone, Debug, Serialize)]
pub struct UrlSummary {
    pub url: String,
    pub requests_succeeded: u64,
    pub requests_failed: u64,
    pub output_tokens: u64,
    pub ttft_ms: Stats,
    pub latency_ms: Stats,
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
    /// `bottleneck` is set: the client may have been the bottleneck, and its latency figures
    /// may include time responses waited for it.
    pub saturated: bool,
    /// Why, when it may have been (never on a run of fewer than [`MIN_REQUESTS_TO_WARN`]
    /// requests): `"client_saturated"` (some engine core was busy ≥ 90 % of its run) or
    /// `"host_busy"` (send lag p99 above 1 ms while no engine core was that busy: the executor
    /// threads waited for a CPU other processes held).
    pub bottleneck: Option<&'static str>,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct CoreCost {
    /// The CPU the executor was pinned to (`--cpus`, or the first `--cores` allowed CPUs).
    pub cpu: usize,
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

/// Fewest requests a run needs before the bottleneck warning may fire: below this a p99 is one
/// or two samples, so one late wake-up on a shared host would "show" a bottleneck.
pub const MIN_REQUESTS_TO_WARN: u64 = 100;

/// Everything a run reports.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub parley_version: &'static str,
    pub config: RunConfig,
    pub interrupted: bool,
    /// The signal that stopped the run (`SIGINT`, `SIGTERM`, `SIGHUP`), if one did.
    pub interrupted_by: Option<&'static str>,
    pub duration_s: f64,
    pub requests: Requests,
    pub conversations: Conversations,
    pub warmup: Option<Warmup>,
    pub throughput: Throughput,
    pub schedule: Schedule,
    /// Per endpoint, when the run had several `--url`s.
    pub by_url: Vec<UrlSummary>,
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
    /// `--goodput`, when given.
    pub goodput: Option<Goodput>,
    /// `--slo` / `--max-error-rate`, each checked against this summary (filled by
    /// [`crate::run`]; empty without thresholds).
    pub thresholds: Vec<crate::verdict::ThresholdResult>,
    /// Per completed conversation (`trace_summary.json` too).
    pub traces: TraceSummary,
    /// Tokens/s over the whole run, its last 30 s and its steady part
    /// (`workload_throughput.json` too).
    pub workload_throughput: WorkloadThroughput,
    /// By turn index, turn 1 first.
    pub by_turn: Vec<TurnSummary>,
    /// Value at 0.5 %, 1 %, … 100 % of TTFT, ITL, latency and trace latency (for CDFs).
    pub quantiles: Quantiles,
    pub client: ClientCost,
    /// `--server-metrics`: the server's own counters beside the client's (`null` without it).
    pub server_metrics: Option<crate::server_metrics::ServerMetrics>,
    /// Written as `workload_timeline.json`, not into `summary.json`.
    #[serde(skip)]
    pub timeline: TimelineFile,
    /// AIPerf's and evalscope's files (`export.rs`), not in `summary.json`.
    #[serde(skip)]
    pub exports: crate::export::Exports,
}

impl Summary {
    /// `cpu_ns`: the client process's CPU time over the run; `with_sim`: the sim ran in-process;
    /// `warmup`: the warmup phase's recorder, if one ran.
    pub fn new(
        config: RunConfig,
        rec: &Recorder,
        warmup: Option<&Recorder>,
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
        // Our own cores busy explain a send lag; a lag with idle cores is the host's doing.
        let bottleneck = if requests < MIN_REQUESTS_TO_WARN {
            None
        } else if busy {
            Some("client_saturated")
        } else if lagging {
            Some("host_busy")
        } else {
            None
        };
        let answered = ok + rec.requests_failed;
        let share_of = |n: u64| (answered > 0).then(|| n as f64 / answered as f64);
        let ms = |ns: Option<u64>| ns.map(|v| v as f64 / 1e6);
        let goodput = rec.goodput.map(|g| Goodput {
            ttft_ms: ms(g.ttft_ns),
            tpot_ms: ms(g.tpot_ns),
            itl_ms: ms(g.itl_ns),
            e2el_ms: ms(g.e2el_ns),
            good_requests: rec.requests_good,
            requests_per_s: per_s(rec.requests_good as f64),
            share: share_of(rec.requests_good),
        });
        let by_url = rec
            .by_url
            .iter()
            .zip(&config.urls)
            .map(|(u, url)| UrlSummary {
                url: url.clone(),
                requests_succeeded: u.requests_succeeded,
                requests_failed: u.requests_failed,
                output_tokens: u.output_tokens,
                ttft_ms: Stats::of(&u.ttft_us, 1e-3),
                latency_ms: Stats::of(&u.latency_us, 1e-3),
            })
            .collect();
        let start_unix_s = unix_s_at(rec.first_start_ns.min(rec.last_end_ns));
        let exports = crate::export::Exports::of(
            rec,
            crate::export::RunFacts {
                config: &config,
                run_id: format!("parley-{:.0}", start_unix_s * 1e6),
                duration_s,
                interrupted,
                start_unix_s,
                end_unix_s: unix_s_at(rec.last_end_ns),
                cli_command: Some(cli_command()),
            },
        );
        let points = rec.timeline.points(rec.last_end_ns);
        let timeline = TimelineFile {
            wall_start: unix_s_at(rec.timeline.origin_ns),
            start_monotonic_ns: rec.timeline.origin_ns,
            bucket_s: rec.timeline.width_ns as f64 / 1e9,
            points,
        };
        let schedule = Schedule {
            offered_rate_per_s: config.point.rate_per_s,
            achieved_rate_per_s: rec.conversation_start_rate_per_s(),
            schedule_lag_ms: Stats::of(&rec.schedule_lag_us, 1e-3),
            ttft_from_schedule_ms: Stats::of(&rec.ttft_from_schedule_us, 1e-3),
            latency_from_schedule_ms: Stats::of(&rec.latency_from_schedule_us, 1e-3),
            cap_wait_ms: Stats::of(&rec.cap_wait_us, 1e-3),
        };
        Summary {
            parley_version: env!("CARGO_PKG_VERSION"),
            config,
            interrupted,
            interrupted_by: None,
            duration_s,
            warmup: warmup.map(|w| Warmup {
                conversations_started: w.conversations_started,
                conversations_completed: w.conversations_completed,
                requests_succeeded: w.requests_succeeded,
                requests_failed: w.requests_failed,
            }),
            schedule,
            by_url,
            requests: Requests {
                total: ok + rec.requests_failed + rec.requests_cancelled,
                succeeded: ok,
                failed: rec.requests_failed,
                cancelled: rec.requests_cancelled,
                retried: rec.requests_retried,
                failures: rec.failures.iter().map(|(k, v)| (k.label(), *v)).collect(),
                failure_messages: rec
                    .failure_messages
                    .iter()
                    .filter(|(_, m)| !m.is_empty())
                    .map(|(k, m)| (k.label(), m.clone()))
                    .collect(),
                error_rate: share_of(rec.requests_failed),
            },
            conversations: Conversations {
                started: rec.conversations_started,
                completed: rec.conversations_completed,
                abandoned: rec.conversations_abandoned,
                interrupted: rec.conversations_interrupted,
                cancelled: rec.conversations_cancelled,
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
            goodput,
            thresholds: Vec::new(),
            traces: TraceSummary::of(&rec.traces),
            workload_throughput: WorkloadThroughput::of(&timeline.points),
            by_turn: rec.by_turn.summary(),
            quantiles: Quantiles::of(rec),
            timeline,
            exports,
            server_metrics: None,
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
                        cpu: c.cpu,
                        cpu_s: c.cpu_ns as f64 / 1e9,
                        wall_s: c.wall_ns as f64 / 1e9,
                        busy_pct: 100.0 * c.busy_fraction(),
                    })
                    .collect(),
                send_lag_us,
                saturated: bottleneck.is_some(),
                bottleneck,
            },
        }
    }

    /// Writes `summary.json` into `dir` (created if needed).
    pub fn write(&self, dir: &Path) -> std::io::Result<std::path::PathBuf> {
        write_json(dir, "summary.json", self)
    }

    /// Writes every file of the run into `dir`: `summary.json`, `trace_summary.json`,
    /// `workload_throughput.json`, `workload_timeline.json`. Returns their paths.
    pub fn write_all(&self, dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
        Ok([
            self.write(dir)?,
            self.traces.write(dir)?,
            self.workload_throughput.write(dir)?,
            self.timeline.write(dir)?,
        ]
        .into_iter()
        .chain(self.exports.write(dir)?)
        .collect())
    }

    /// The console tables.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let conc = self
            .config
            .point
            .parallel
            .map_or("-".to_string(), |p| p.to_string());
        let rate = self
            .config
            .point
            .rate_per_s
            .map_or("-".to_string(), |r| format!("{r}"));
        let success_pct = if self.requests.total > 0 {
            100.0 * self.requests.succeeded as f64 / self.requests.total as f64
        } else {
            0.0
        };
        out.push_str("Performance Overview\n");
        out.push_str(&table(
            &[
                "Conc.",
                "Rate",
                "Num requests",
                "Conversations",
                "RPS",
                "Gen/s",
                "Success",
            ],
            &[vec![
                conc.clone(),
                rate,
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
                f(s.std),
                f(s.min),
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
        let avg_only = |name: String, v: String| {
            let mut r = vec![name, v];
            r.resize(8, "-".into());
            r
        };
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
            &["Metric", "avg", "std", "min", "p50", "p90", "p99", "max"],
            &rows,
        ));
        if self.traces.n_traces > 0 {
            out.push_str(&self.traces.render());
        }
        if self.workload_throughput.n_samples > 0 {
            out.push_str(&self.workload_throughput.render());
        }
        out.push_str(&crate::turns::render(&self.by_turn));

        let sched = &self.schedule;
        if let Some(offered) = sched.offered_rate_per_s {
            let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
            let _ = writeln!(
                out,
                "Schedule: offered {offered} conversations/s, achieved {}; schedule lag p50 {} ms, \
                 p99 {} ms; TTFT from schedule p50 {} ms, p99 {} ms; latency from schedule p99 {} ms",
                sched
                    .achieved_rate_per_s
                    .map_or("-".into(), |v| format!("{v:.2}/s")),
                ms(sched.schedule_lag_ms.p50),
                ms(sched.schedule_lag_ms.p99),
                ms(sched.ttft_from_schedule_ms.p50),
                ms(sched.ttft_from_schedule_ms.p99),
                ms(sched.latency_from_schedule_ms.p99),
            );
            if sched.cap_wait_ms.count > 0 {
                let _ = writeln!(
                    out,
                    "Cap wait (arrival → free slot): mean {} ms, p99 {} ms, max {} ms",
                    ms(sched.cap_wait_ms.mean),
                    ms(sched.cap_wait_ms.p99),
                    ms(sched.cap_wait_ms.max)
                );
            }
        }
        if let Some(w) = &self.warmup {
            let _ = writeln!(
                out,
                "Warmup (excluded from every figure): {} conversations, {} requests ok, {} failed",
                w.conversations_started, w.requests_succeeded, w.requests_failed
            );
        }
        if !self.by_url.is_empty() {
            let rows: Vec<Vec<String>> = self
                .by_url
                .iter()
                .map(|u| {
                    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
                    vec![
                        u.url.clone(),
                        u.requests_succeeded.to_string(),
                        u.requests_failed.to_string(),
                        f(u.ttft_ms.p50),
                        f(u.ttft_ms.p99),
                        f(u.latency_ms.p50.map(|v| v / 1e3)),
                    ]
                })
                .collect();
            out.push_str("Per URL\n");
            out.push_str(&table(
                &[
                    "URL",
                    "ok",
                    "failed",
                    "TTFT p50 (ms)",
                    "TTFT p99 (ms)",
                    "Latency p50 (s)",
                ],
                &rows,
            ));
        }
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
        let busiest = self
            .client
            .cores
            .iter()
            .map(|c| c.busy_pct)
            .fold(0.0, f64::max);
        match self.client.bottleneck {
            Some("client_saturated") => {
                let _ = writeln!(
                    out,
                    "WARNING: client saturated: a client core was busy {busiest:.0}% of the run, \
                     so TTFT/ITL/latency may include time responses waited for parley itself. \
                     Add --cores or lower the load."
                );
            }
            Some(_) => {
                let _ = writeln!(
                    out,
                    "WARNING: host busy: send lag p99 was {:.1} ms (> {:.0} ms) while parley's \
                     busiest core was only {busiest:.0}% busy, so its threads waited for a CPU \
                     other processes held; TTFT/ITL/latency may include that wait. Run on a \
                     quieter host or give parley dedicated CPUs (`parley doctor`).",
                    lag.p99.unwrap_or(0.0) / 1e3,
                    SATURATED_SEND_LAG_P99_US / 1e3
                );
            }
            None => {}
        }
        if let Some(server) = &self.server_metrics {
            out.push_str(&server.render());
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
            for (k, messages) in &self.requests.failure_messages {
                for m in messages {
                    let _ = writeln!(out, "  {k}: {m}");
                }
            }
        }
        if self.requests.retried > 0 {
            let _ = writeln!(
                out,
                "Retried requests: {} (a reused connection closed before any byte of the \
                 response, or a 429 with --retry-429)",
                self.requests.retried
            );
        }
        if self.requests.cancelled > 0 || self.conversations.cancelled > 0 {
            let _ = writeln!(
                out,
                "Cancelled ({}): {} requests, {} conversations",
                if self.interrupted {
                    "in flight when --grace ran out after the signal"
                } else {
                    "at --duration + --duration-grace"
                },
                self.requests.cancelled,
                self.conversations.cancelled
            );
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
                "Interrupted by {}: figures cover what was measured before it ({} conversations cut \
                 short).",
                self.interrupted_by.unwrap_or("a signal"),
                self.conversations.interrupted
            );
        }
        if let Some(g) = &self.goodput {
            let limits: Vec<String> = [
                ("ttft", g.ttft_ms),
                ("tpot", g.tpot_ms),
                ("itl", g.itl_ms),
                ("e2el", g.e2el_ms),
            ]
            .iter()
            .filter_map(|(n, v)| v.map(|v| format!("{n} ≤ {v} ms")))
            .collect();
            let _ = writeln!(
                out,
                "Goodput ({}): {} good requests, {:.2} req/s, {} of requests",
                limits.join(", "),
                g.good_requests,
                g.requests_per_s,
                g.share.map_or("-".into(), |v| format!("{:.1}%", v * 100.0))
            );
        }
        if !self.thresholds.is_empty() {
            let failed = self.thresholds.iter().filter(|t| !t.met).count();
            if failed == 0 {
                let _ = writeln!(out, "Thresholds: all {} met", self.thresholds.len());
            } else {
                let _ = writeln!(
                    out,
                    "Thresholds: {failed} of {} FAILED",
                    self.thresholds.len()
                );
            }
            for t in &self.thresholds {
                let _ = writeln!(
                    out,
                    "  {} {}",
                    if t.met { "ok    " } else { "FAILED" },
                    t.describe()
                );
            }
        }
        out
    }
}

/// One point's headline figures in a sweep.
#[derive(Clone, Debug, Serialize)]
pub struct SweepRow {
    pub label: String,
    pub parallel: Option<u32>,
    pub rate_per_s: Option<f64>,
    pub number: Option<u64>,
    pub requests_succeeded: u64,
    pub requests_failed: u64,
    pub conversations_completed: u64,
    pub duration_s: f64,
    pub requests_per_s: f64,
    pub output_tokens_per_s: f64,
    pub ttft_ms_p50: Option<f64>,
    pub ttft_ms_p99: Option<f64>,
    pub itl_ms_p50: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    pub cache_hit_rate: Option<f64>,
}

impl SweepRow {
    pub fn of(s: &Summary) -> SweepRow {
        SweepRow {
            label: s.config.point.label.clone(),
            parallel: s.config.point.parallel,
            rate_per_s: s.config.point.rate_per_s,
            number: s.config.point.number,
            requests_succeeded: s.requests.succeeded,
            requests_failed: s.requests.failed,
            conversations_completed: s.conversations.completed,
            duration_s: s.duration_s,
            requests_per_s: s.throughput.requests_per_s,
            output_tokens_per_s: s.throughput.output_tokens_per_s,
            ttft_ms_p50: s.ttft_ms.p50,
            ttft_ms_p99: s.ttft_ms.p99,
            itl_ms_p50: s.itl_ms.p50,
            latency_ms_p99: s.latency_ms.p99,
            cache_hit_rate: s.cache_hit_rate,
        }
    }
}

/// The sweep table: one row per point.
pub fn sweep_table(rows: &[SweepRow]) -> String {
    let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.parallel.map_or("-".into(), |p| p.to_string()),
                r.rate_per_s.map_or("-".into(), |v| v.to_string()),
                r.number.map_or("-".into(), |n| n.to_string()),
                format!("{:.2}", r.requests_per_s),
                format!("{:.2}", r.output_tokens_per_s),
                f(r.ttft_ms_p50, 2),
                f(r.ttft_ms_p99, 2),
                f(r.itl_ms_p50, 2),
                f(r.latency_ms_p99.map(|v| v / 1e3), 3),
                r.requests_failed.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "Conc.",
            "Rate",
            "Number",
            "RPS",
            "Gen/s",
            "TTFT p50 (ms)",
            "TTFT p99 (ms)",
            "ITL p50 (ms)",
            "Latency p99 (s)",
            "Failed",
        ],
        &body,
    )
}

/// Writes `sweep_summary.json` (`{"points": [SweepRow…]}`) into `dir`.
pub fn write_sweep(dir: &Path, rows: &[SweepRow]) -> std::io::Result<std::path::PathBuf> {
    write_json(
        dir,
        "sweep_summary.json",
        &serde_json::json!({ "points": rows }),
    )
}

/// Writes `value` as pretty JSON to `dir/name` (the directory created if needed): to a
/// temporary name first, then renamed, so a reader never sees half a file.
pub(crate) fn write_json(
    dir: &Path,
    name: &str,
    value: &impl Serialize,
) -> std::io::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    let json = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    write_atomically(&path, &json)?;
    Ok(path)
}

/// Writes `bytes` to a temporary name beside `path`, syncs it and renames it over `path`: a
/// reader (or a run killed mid-write) sees the old file or the whole new one, never a part.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// This process's command line, with the values of secret-bearing flags (`--api-key`, a
/// `--header`/`-H` whose name bears a secret, such as `Authorization` or `X-API-Key`) and URL
/// credentials replaced by `***`.
pub(crate) fn cli_command() -> String {
    mask_command(std::env::args())
}

/// [`cli_command`] of given arguments.
fn mask_command(args: impl IntoIterator<Item = String>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut mask_next = false;
    for a in args {
        if mask_next {
            mask_next = false;
            out.push("***".into());
            continue;
        }
        let lower = a.to_ascii_lowercase();
        if lower == "--api-key" || lower == "--api_key" {
            mask_next = true;
            out.push(a);
        } else if lower.starts_with("--api-key=") || lower.starts_with("--api_key=") {
            out.push(format!("{}=***", &a[..a.find('=').unwrap_or(a.len())]));
        } else if let Some(masked) = mask_header_arg(&a) {
            out.push(masked);
        } else if a.contains("://") {
            out.push(crate::plan::redact_url(&a));
        } else {
            out.push(a);
        }
    }
    out.join(" ")
}

/// A `NAME: VALUE` header argument (alone, after `-H`, or as `--header=…`/`-H…`) whose name
/// bears a secret ([`crate::plan::is_secret_header`]), with its value masked; `None` for any
/// other argument.
fn mask_header_arg(arg: &str) -> Option<String> {
    let (prefix, line) = ["--header=", "-H"]
        .iter()
        .find_map(|p| arg.strip_prefix(p).map(|rest| (*p, rest)))
        .unwrap_or(("", arg));
    let (name, _) = line.split_once(':')?;
    let token = !name.is_empty()
        && name
            .trim()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (token && crate::plan::is_secret_header(name))
        .then(|| format!("{prefix}{}: {}", name.trim(), crate::plan::MASK))
}

/// Unix time (s) of a point on the run clock.
fn unix_s_at(run_clock_ns: u64) -> f64 {
    let now_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let ago_ns = crate::clock::now_ns().saturating_sub(run_clock_ns);
    now_unix_s - ago_ns as f64 / 1e9
}

/// A box-drawn table; the first column is left-aligned, the rest right-aligned.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
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

    #[test]
    fn command_line_masks_every_secret() {
        let args = [
            "parley",
            "bench",
            "--api-key",
            "sk-one",
            "--api-key=sk-two",
            "-H",
            "Authorization: Bearer sk-three",
            "--header=X-API-Key:sk-four",
            "-Hx-auth-token: sk-five",
            "--header",
            "X-Trace: visible",
            "--url",
            "http://user:sk-six@host:8000/v1",
        ];
        let line = mask_command(args.iter().map(|s| s.to_string()));
        for secret in [
            "sk-one", "sk-two", "sk-three", "sk-four", "sk-five", "sk-six",
        ] {
            assert!(!line.contains(secret), "{secret} shown in {line}");
        }
        assert!(line.contains("X-Trace: visible"), "{line}");
        assert!(line.contains("--header=X-API-Key: ***"), "{line}");
        assert!(line.contains("http://***@host:8000/v1"), "{line}");
    }

    fn config() -> RunConfig {
        RunConfig {
            command_line: "parley bench".into(),
            start_time: "1970-01-01T00:00:00.000Z".into(),
            start_unix_s: 0.0,
            flags: serde_json::Value::Null,
            url: "u".into(),
            urls: vec!["u".into()],
            endpoint: Default::default(),
            model: "m".into(),
            dataset: "d".into(),
            dataset_path: None,
            dataset_offset: 0,
            shard: None,
            context_mode: None,
            skipped_invalid: 0,
            filtered: 0,
            pool: 1,
            point: crate::plan::Point {
                label: "p".into(),
                parallel: Some(1),
                rate_per_s: None,
                number: Some(1),
            },
            load: crate::plan::LoadConfig {
                request_rate_mode: crate::engine::ArrivalMode::Poisson,
                burstiness: 1.0,
                duration_s: None,
                duration_grace_s: None,
                grace_s: 5.0,
                warmup_conversations: None,
                warmup_duration_s: None,
                preconnect: true,
                ramp_up_duration_s: None,
                ramp_up_strategy: None,
                ramp_up_start_rate: None,
                sweep_pause_s: 0.0,
                request_count: None,
            },
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
                cpu: 0,
                cpu_ns: 300,
                wall_ns: 1_000,
            },
            CoreLoad {
                cpu: 0,
                cpu_ns: 890,
                wall_ns: 1_000,
            },
        ];
        rec.requests_succeeded = MIN_REQUESTS_TO_WARN;
        let s = Summary::new(config(), &rec, None, false, 0, false);
        assert!(!s.client.saturated);
        assert_eq!(s.client.cores[1].busy_pct, 89.0);
        assert!(!s.render().contains("WARNING"));
        rec.core_loads[0].cpu_ns = 950;
        let s = Summary::new(config(), &rec, None, false, 0, false);
        assert!(s.client.saturated);
        assert_eq!(s.client.bottleneck, Some("client_saturated"));
        let text = s.render();
        assert!(
            text.contains("WARNING: client saturated: a client core was busy 95%")
                && text.contains("Add --cores"),
            "{text}"
        );
        // A busy core explains a send lag too: still "client saturated", not "host busy".
        for _ in 0..10 {
            rec.record_send_lag(0, 5_000_000);
        }
        let s = Summary::new(config(), &rec, None, false, 0, false);
        assert_eq!(s.client.bottleneck, Some("client_saturated"));
    }

    /// Issue 11: the warning fired in small runs on a shared host; a run too small for a p99
    /// never warns.
    #[test]
    fn no_bottleneck_warning_on_a_small_run() {
        let mut rec = Recorder::new();
        rec.core_loads = vec![CoreLoad {
            cpu: 0,
            cpu_ns: 990,
            wall_ns: 1_000,
        }];
        for _ in 0..20 {
            rec.record_send_lag(0, 5_000_000);
        }
        rec.requests_succeeded = 60;
        rec.requests_failed = MIN_REQUESTS_TO_WARN - 61;
        let s = Summary::new(config(), &rec, None, false, 0, false);
        assert_eq!((s.client.saturated, s.client.bottleneck), (false, None));
        assert!(!s.render().contains("WARNING"), "{}", s.render());
        rec.requests_failed += 1;
        let s = Summary::new(config(), &rec, None, false, 0, false);
        assert_eq!(s.client.bottleneck, Some("client_saturated"));
    }

    #[test]
    fn saturation_is_flagged_from_send_lag_p99() {
        let mut rec = Recorder::new();
        rec.core_loads = vec![CoreLoad {
            cpu: 0,
            cpu_ns: 100,
            wall_ns: 1_000,
        }];
        for _ in 0..99 {
            rec.record_send_lag(0, 40_000); // 40 µs
        }
        rec.record_send_lag(0, 900_000); // 0.9 ms: p99 still ≤ 1 ms
        rec.requests_succeeded = 105;
        let s = Summary::new(config(), &rec, None, false, 0, false);
        assert_eq!(s.client.send_lag_us.count, 100);
        assert!(!s.client.saturated);
        let text = s.render();
        assert!(text.contains("Send lag"), "{text}");
        assert!(!text.contains("WARNING"), "{text}");
        for _ in 0..5 {
            rec.record_send_lag(0, 5_000_000); // 5 ms
        }
        let s = Summary::new(config(), &rec, None, false, 0, false);
        assert!(s.client.saturated);
        assert_eq!(s.client.bottleneck, Some("host_busy"));
        let text = s.render();
        assert!(
            text.contains(
                "WARNING: host busy: send lag p99 was 5.0 ms (> 1 ms) while parley's busiest \
                 core was only 10% busy"
            ) && text.contains("quieter host"),
            "{text}"
        );
        assert!(!text.contains("core was busy"), "{text}");
    }

    #[test]
    fn failure_messages_error_rate_and_goodput_are_reported() {
        use crate::client::FailureKind;
        let mut rec = Recorder::new();
        rec.goodput = Some(crate::metrics::GoodputLimits {
            ttft_ns: Some(200_000_000),
            ..Default::default()
        });
        rec.requests_succeeded = 3;
        rec.requests_good = 2;
        rec.first_start_ns = 0;
        rec.last_end_ns = 2_000_000_000;
        let t = crate::client::TurnTiming::default();
        rec.record_failure(&t, FailureKind::HttpStatus(400), 0);
        rec.record_failure_message(
            FailureKind::HttpStatus(400),
            "This model's maximum context length is 4096 tokens.",
        );
        let s = Summary::new(config(), &rec, None, false, 0, false);
        assert_eq!(s.requests.error_rate, Some(0.25));
        assert_eq!(
            s.requests.failure_messages["http_400"],
            ["This model's maximum context length is 4096 tokens."]
        );
        let g = s.goodput.as_ref().unwrap();
        assert_eq!(
            (g.ttft_ms, g.e2el_ms, g.good_requests),
            (Some(200.0), None, 2)
        );
        assert_eq!((g.requests_per_s, g.share), (1.0, Some(0.5)));
        let text = s.render();
        assert!(
            text.contains("  http_400: This model's maximum context length is 4096 tokens."),
            "{text}"
        );
        assert!(
            text.contains(
                "Goodput (ttft ≤ 200 ms): 2 good requests, 1.00 req/s, 50.0% of requests"
            ),
            "{text}"
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["goodput"]["share"], 0.5);
        assert_eq!(
            json["requests"]["failure_messages"]["http_400"][0],
            "This model's maximum context length is 4096 tokens."
        );
        // No --goodput: no section.
        rec.goodput = None;
        let s = Summary::new(config(), &rec, None, false, 0, false);
        assert!(s.goodput.is_none() && !s.render().contains("Goodput"));
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
