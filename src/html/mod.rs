//! `report.html` (one run) and `compare.html` (several runs): self-contained pages — inline CSS,
//! inline SVG charts built in [`chart`], one small inline script — that work offline.
//!
//! A page is a pure function of the run directory's files (`summary.json`,
//! `workload_timeline.json`): a run writes its `report.html` through [`write_report`] after its
//! JSON files, exactly as `parley report RUN_DIR` rebuilds it, so both give the same bytes.
//! The figures are those of the console (`docs/metrics.md`); the charts read
//! `summary.json`'s `quantiles` and `by_turn` and the timeline's cumulative counts.

pub(crate) mod chart;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::report::{Quantiles, Stats};
use crate::timeline::Point;
use crate::trace::TraceSummary;
use crate::turns::TurnSummary;
use chart::{Chart, Series};

/// The report's file name inside a run directory.
pub const REPORT_FILE: &str = "report.html";

/// Most time bins a chart over time shows (the timeline's buckets are merged to fit).
const MAX_TIME_BINS: usize = 60;
/// A bin spans at least this long (requests end in bursts, so 100 ms bins of a closed loop
/// alternate between bursts and zeros) …
const MIN_TIME_BIN_S: f64 = 1.0;
/// … unless the run is too short to give this many bins of that width.
const MIN_TIME_BINS: usize = 10;
/// Bars of the per-trace latency distribution.
const TRACE_LATENCY_BINS: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum HtmlError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not JSON, or not the layout parley writes (serde names the field, line and column).
    #[error("{}: not a parley run file: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: no summary.json here; this looks like a sweep: its points are in {}", dir.display(), points.join(", "))]
    Sweep { dir: PathBuf, points: Vec<String> },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the pages read from `summary.json`: the figures the console shows. Unknown fields are
/// ignored, so files with more fields (a newer parley's) still load.
#[derive(Clone, Debug, Deserialize)]
pub struct RunSummary {
    pub parley_version: String,
    /// The config echo, shown as is (only a few fields, each optional).
    #[serde(default)]
    pub config: serde_json::Value,
    pub interrupted: bool,
    #[serde(default)]
    pub interrupted_by: Option<String>,
    pub duration_s: f64,
    pub requests: RequestsIn,
    pub conversations: ConversationsIn,
    pub throughput: ThroughputIn,
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
    pub cache_hit_source: String,
    pub token_source: String,
    pub traces: TraceSummary,
    pub workload_throughput: WorkloadIn,
    pub by_turn: Vec<TurnSummary>,
    /// Missing in files from before it existed: those charts say "no data".
    #[serde(default)]
    pub quantiles: Quantiles,
    #[serde(default)]
    pub client: serde_json::Value,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RequestsIn {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    #[serde(default)]
    pub retried: u64,
    pub failures: BTreeMap<String, u64>,
    #[serde(default)]
    pub failure_messages: BTreeMap<String, Vec<String>>,
    pub error_rate: Option<f64>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ConversationsIn {
    pub started: u64,
    pub completed: u64,
    pub abandoned: u64,
    pub interrupted: u64,
    pub cancelled: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ThroughputIn {
    pub requests_per_s: f64,
    pub input_tokens_per_s: f64,
    pub output_tokens_per_s: f64,
    pub total_tokens_per_s: f64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct WorkloadIn {
    pub rows: Vec<WorkloadRowIn>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct WorkloadRowIn {
    pub metric: String,
    pub overall: Option<f64>,
    pub last_window: Option<f64>,
    pub steady_state: Option<f64>,
}

/// `workload_timeline.json`'s bucket width and cumulative points.
#[derive(Clone, Debug, Deserialize)]
pub struct TimelineIn {
    pub bucket_s: f64,
    pub points: Vec<Point>,
}

/// One run directory's files, as the pages read them.
#[derive(Clone, Debug)]
pub struct RunFiles {
    pub summary: RunSummary,
    pub timeline: TimelineIn,
}

impl RunFiles {
    /// Reads `dir/summary.json` and `dir/workload_timeline.json`.
    pub fn load(dir: &Path) -> Result<RunFiles, HtmlError> {
        Ok(RunFiles {
            summary: load_summary(dir)?,
            timeline: read_json(&dir.join("workload_timeline.json"))?,
        })
    }
}

/// Reads `summary.json` from `path`: a run directory, or the file itself.
pub fn load_summary(path: &Path) -> Result<RunSummary, HtmlError> {
    // Anything but an existing file is taken as a directory, so a wrong path's error names the
    // summary.json that was looked for.
    if !path.is_file() {
        let file = path.join("summary.json");
        if !file.exists() {
            let points = sweep_points(path);
            if !points.is_empty() {
                return Err(HtmlError::Sweep {
                    dir: path.to_path_buf(),
                    points,
                });
            }
        }
        read_json(&file)
    } else {
        read_json(path)
    }
}

/// Subdirectories of `dir` that hold a `summary.json` (a sweep's points), by name.
fn sweep_points(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("summary.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, HtmlError> {
    let bytes = std::fs::read(path).map_err(|source| HtmlError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| HtmlError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Builds `dir/report.html` from `dir`'s files; returns its path. The end of a run and
/// `parley report` both come here.
pub fn write_report(dir: &Path) -> Result<PathBuf, HtmlError> {
    let run = RunFiles::load(dir)?;
    let path = dir.join(REPORT_FILE);
    crate::report::write_atomically(&path, report_html(&run).as_bytes()).map_err(|source| {
        HtmlError::Write {
            path: path.clone(),
            source,
        }
    })?;
    Ok(path)
}

/// Escapes text for HTML content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1360px;padding:0 16px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.facts{color:#555;margin:0 0 12px}.facts b{color:#222}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:16px}
svg.chart{width:100%;height:auto;background:#fff;border:1px solid #e4e4e4;border-radius:4px}
svg .title{font-weight:600;font-size:13px}svg .tick,svg .legend{font-size:11px;fill:#555}svg .axis{font-size:12px;fill:#333}
svg .nodata{font-size:15px;fill:#999}svg .grid{stroke:#eee}svg .frame{fill:none;stroke:#bbb}
svg .line{fill:none;stroke-width:1.8}svg .dot{fill-opacity:0;stroke:none}svg .dot:hover{fill-opacity:1}
svg .bar{fill-opacity:.8}svg .bar:hover{fill-opacity:1}
table{border-collapse:collapse;margin:6px 0 14px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
.note{color:#555}.warn{color:#a40000}code{background:#f4f4f4;padding:0 3px}
";

/// Counts script errors from the start of the page (the Chromium check reads `data-errors`).
const HEAD_SCRIPT: &str = "window.__errors=0;window.addEventListener('error',function(){\
window.__errors++;document.documentElement.setAttribute('data-errors',String(window.__errors));});";

/// After the charts: checks each chart drew marks with finite, non-empty boxes and records it
/// (`data-drawn` marks per chart, `data-bad` if any was not finite), then marks the page done.
const CHECK_SCRIPT: &str = "(function(){var charts=document.querySelectorAll('svg.chart');\
for(var i=0;i<charts.length;i++){var svg=charts[i],n=0,bad=0,m=svg.querySelectorAll('.mark');\
for(var j=0;j<m.length;j++){var b=m[j].getBBox();\
if(isFinite(b.x)&&isFinite(b.y)&&isFinite(b.width)&&isFinite(b.height)&&(b.width>0||b.height>0))n++;else bad++;}\
svg.setAttribute('data-drawn',String(n));if(bad)svg.setAttribute('data-bad',String(bad));}\
document.documentElement.setAttribute('data-report','drawn');})();";

/// The page around `body`.
fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{}</title><style>{STYLE}</style><script>{HEAD_SCRIPT}</script></head>\n<body>\n{body}\n<script>{CHECK_SCRIPT}</script>\n</body></html>\n",
        esc(title)
    )
}

/// An HTML table; the first column left-aligned (CSS), cells escaped.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table><thead><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            let _ = write!(out, "<td>{}</td>", esc(c));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>\n");
    out
}

fn opt(v: Option<f64>, scale: f64, prec: usize) -> String {
    v.map_or("-".to_string(), |v| format!("{:.*}", prec, v * scale))
}

/// A config field as text (`-` when absent).
fn config_text(config: &serde_json::Value, pointer: &str) -> String {
    match config.pointer(pointer) {
        None | Some(serde_json::Value::Null) => "-".into(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// The value at each quantile level as CDF points (value, %).
fn cdf(q: &[f64], values: &[f64]) -> Vec<(f64, f64)> {
    values.iter().zip(q).map(|(v, q)| (*v, q * 100.0)).collect()
}

fn cdf_chart(id: &str, title: &str, x_label: &str, series: Vec<Series>) -> Chart {
    let mut c = Chart::new(id, title, x_label, "requests at or below (%)");
    c.series = series;
    c.y_range = Some((0.0, 100.0));
    c
}

/// One bin of the timeline: what ended between `t0_s` and `t1_s`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct TimeBin {
    pub t0_s: f64,
    pub t1_s: f64,
    pub ok: u64,
    pub failed: u64,
    pub completion_tokens: u64,
    pub new_prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
}

impl TimeBin {
    fn mid_s(&self) -> f64 {
        (self.t0_s + self.t1_s) / 2.0
    }

    fn per_s(&self, n: u64) -> f64 {
        let dt = self.t1_s - self.t0_s;
        if dt > 0.0 {
            n as f64 / dt
        } else {
            f64::NAN
        }
    }
}

/// The timeline's cumulative points (one per `bucket_s` bucket) as bins of whole buckets
/// (differences of the cumulative counts): at most [`MAX_TIME_BINS`], at least
/// [`MIN_TIME_BIN_S`] wide unless that would leave fewer than [`MIN_TIME_BINS`], so a long run's
/// chart stays small and a short one's is not all bursts and gaps.
pub(crate) fn time_bins(points: &[Point], bucket_s: f64) -> Vec<TimeBin> {
    let n = points.len();
    let by_width = if bucket_s > 0.0 && bucket_s.is_finite() {
        (MIN_TIME_BIN_S / bucket_s).ceil() as usize
    } else {
        1
    };
    let stride = n
        .div_ceil(MAX_TIME_BINS)
        .max(by_width.min(n.div_ceil(MIN_TIME_BINS)))
        .max(1);
    let mut out = Vec::new();
    let zero = Point {
        t: 0.0,
        cum_completion: 0,
        cum_new_prompt: 0,
        cum_cached_prompt: 0,
        cum_requests: 0,
        cum_failed: 0,
    };
    let mut prev = zero;
    let mut i = stride;
    while !points.is_empty() {
        let at = i.min(points.len());
        let p = points[at - 1];
        out.push(TimeBin {
            t0_s: prev.t,
            t1_s: p.t,
            ok: p.cum_requests.saturating_sub(prev.cum_requests),
            failed: p.cum_failed.saturating_sub(prev.cum_failed),
            completion_tokens: p.cum_completion.saturating_sub(prev.cum_completion),
            new_prompt_tokens: p.cum_new_prompt.saturating_sub(prev.cum_new_prompt),
            cached_prompt_tokens: p.cum_cached_prompt.saturating_sub(prev.cum_cached_prompt),
        });
        prev = p;
        if at == points.len() {
            break;
        }
        i += stride;
    }
    out
}

/// Bars of the share of values (each quantile level is an equal share) in equal-width bins
/// between the smallest and the largest.
pub(crate) fn distribution(values: &[f64], bins: usize) -> (f64, Vec<(f64, f64)>) {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let (Some(lo), Some(hi)) = (
        finite.iter().copied().reduce(f64::min),
        finite.iter().copied().reduce(f64::max),
    ) else {
        return (0.0, Vec::new());
    };
    let share = 100.0 / finite.len() as f64;
    if hi - lo <= 1e-12 * hi.abs().max(1.0) {
        let width = if lo == 0.0 { 1.0 } else { lo.abs() * 0.05 };
        return (width, vec![(lo - width / 2.0, 100.0)]);
    }
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0usize; bins];
    for v in finite {
        let i = (((v - lo) / width) as usize).min(bins - 1);
        counts[i] += 1;
    }
    let bars = counts
        .iter()
        .enumerate()
        .map(|(i, n)| (lo + i as f64 * width, *n as f64 * share))
        .collect();
    (width, bars)
}

/// Every chart of one run's report.
pub(crate) fn report_charts(run: &RunFiles) -> Vec<Chart> {
    let s = &run.summary;
    let q = &s.quantiles;
    let mut charts = vec![
        cdf_chart(
            "ttft_cdf",
            "TTFT CDF",
            "TTFT (ms)",
            vec![Series::line("TTFT", cdf(&q.q, &q.ttft_ms))],
        ),
        cdf_chart(
            "itl_cdf",
            "ITL CDF",
            "inter-token latency (ms)",
            vec![Series::line("ITL", cdf(&q.q, &q.itl_ms))],
        ),
    ];
    let by_turn = |f: fn(&TurnSummary) -> Option<f64>| -> Vec<(f64, f64)> {
        s.by_turn
            .iter()
            .filter_map(|r| f(r).map(|v| (r.turn as f64, v)))
            .collect()
    };
    let mut ttft_turn = Chart::new("ttft_by_turn", "TTFT by turn", "turn", "TTFT (ms)")
        .with(Series::line("p50", by_turn(|r| r.ttft_ms.p50)))
        .with(Series::line("p90", by_turn(|r| r.ttft_ms.p90)))
        .with(Series::line("p99", by_turn(|r| r.ttft_ms.p99)));
    let mut latency_turn = Chart::new("latency_by_turn", "Latency by turn", "turn", "latency (s)")
        .with(Series::line(
            "p50",
            by_turn(|r| r.latency_ms.p50.map(|v| v / 1e3)),
        ))
        .with(Series::line(
            "p90",
            by_turn(|r| r.latency_ms.p90.map(|v| v / 1e3)),
        ))
        .with(Series::line(
            "p99",
            by_turn(|r| r.latency_ms.p99.map(|v| v / 1e3)),
        ));
    for c in [&mut ttft_turn, &mut latency_turn] {
        c.x_integer = true;
        c.x_from_zero = false;
    }
    charts.push(ttft_turn);
    charts.push(latency_turn);

    let bins = time_bins(&run.timeline.points, run.timeline.bucket_s);
    let rate = |f: fn(&TimeBin) -> u64| -> Vec<(f64, f64)> {
        bins.iter().map(|b| (b.mid_s(), b.per_s(f(b)))).collect()
    };
    charts.push(
        Chart::new(
            "throughput_over_time",
            "Throughput over time",
            "time since start (s)",
            "tokens/s",
        )
        .with(Series::line("completion", rate(|b| b.completion_tokens)))
        .with(Series::line("new prompt", rate(|b| b.new_prompt_tokens)))
        .with(Series::line(
            "cached prompt",
            rate(|b| b.cached_prompt_tokens),
        )),
    );
    charts.push(
        Chart::new(
            "requests_over_time",
            "Requests over time",
            "time since start (s)",
            "requests/s",
        )
        .with(Series::line("succeeded", rate(|b| b.ok)))
        .with(Series::line("failed", rate(|b| b.failed))),
    );
    let bin_s = bins.first().map_or(0.0, |b| b.t1_s - b.t0_s);
    charts.push(
        Chart::new(
            "failures_over_time",
            "Failures over time",
            "time since start (s)",
            &format!("failed requests per {} s", chart::short(bin_s)),
        )
        .with(Series::bars(
            "failed",
            bin_s,
            bins.iter().map(|b| (b.t0_s, b.failed as f64)).collect(),
        )),
    );
    let (width, bars) = distribution(&q.trace_latency_s, TRACE_LATENCY_BINS);
    let mut traces = Chart::new(
        "trace_latency",
        "Per-trace latency distribution",
        "conversation latency (s)",
        "conversations (%)",
    )
    .with(Series::bars("traces", width, bars));
    traces.x_from_zero = false;
    charts.push(traces);
    charts
}

/// The console's Per-Request Metrics rows.
fn per_request_rows(s: &RunSummary) -> Vec<Vec<String>> {
    let row = |name: &str, st: &Stats, scale: f64, prec: usize| {
        vec![
            name.to_string(),
            opt(st.mean, scale, prec),
            opt(st.std, scale, prec),
            opt(st.min, scale, prec),
            opt(st.p50, scale, prec),
            opt(st.p90, scale, prec),
            opt(st.p99, scale, prec),
            opt(st.max, scale, prec),
        ]
    };
    let est = |src: &str| if src == "server" { "" } else { " (est.)" };
    let avg_only = |name: String, v: String| {
        let mut r = vec![name, v];
        r.resize(8, "-".into());
        r
    };
    vec![
        row("Latency (s)", &s.latency_ms, 1e-3, 3),
        row("TTFT (ms)", &s.ttft_ms, 1.0, 2),
        row("TPOT (ms)", &s.tpot_ms, 1.0, 2),
        row("ITL (ms)", &s.itl_ms, 1.0, 2),
        row(
            &format!("Input Tokens{}", est(&s.token_source)),
            &s.input_tokens,
            1.0,
            1,
        ),
        row(
            &format!("Output Tokens{}", est(&s.token_source)),
            &s.output_tokens,
            1.0,
            1,
        ),
        avg_only("Turns/Req".into(), opt(s.turns_per_request_mean, 1.0, 2)),
        avg_only(
            format!("Cache Hit (%){}", est(&s.cache_hit_source)),
            s.cache_hit_rate
                .map_or("-".into(), |v| format!("{:.1}%", v * 100.0)),
        ),
        row("First-turn TTFT (ms)", &s.first_turn_ttft_ms, 1.0, 2),
        row(
            "Subsequent-turn TTFT (ms)",
            &s.subsequent_turn_ttft_ms,
            1.0,
            2,
        ),
    ]
}

/// The tables: the console's figures.
fn report_tables(s: &RunSummary) -> String {
    let mut out = String::new();
    let success_pct = if s.requests.total > 0 {
        100.0 * s.requests.succeeded as f64 / s.requests.total as f64
    } else {
        0.0
    };
    out.push_str("<h2>Performance Overview</h2>\n");
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
            config_text(&s.config, "/point/parallel"),
            config_text(&s.config, "/point/rate_per_s"),
            s.requests.total.to_string(),
            s.conversations.completed.to_string(),
            format!("{:.2}", s.throughput.requests_per_s),
            format!("{:.2}", s.throughput.output_tokens_per_s),
            format!("{success_pct:.1}%"),
        ]],
    ));
    let stat_header = ["Metric", "avg", "std", "min", "p50", "p90", "p99", "max"];
    out.push_str("<h2>Per-Request Metrics</h2>\n");
    out.push_str(&table(&stat_header, &per_request_rows(s)));
    if s.traces.n_traces > 0 {
        let rows: Vec<Vec<String>> = s
            .traces
            .rows()
            .into_iter()
            .map(|(name, st)| {
                let f = |v| opt(v, 1.0, 3);
                vec![
                    name.to_string(),
                    f(st.mean),
                    f(st.std),
                    f(st.min),
                    f(st.p50),
                    f(st.p90),
                    f(st.p99),
                    f(st.max),
                ]
            })
            .collect();
        let _ = writeln!(
            out,
            "<h2>Per-Trace Metrics ({} conversations)</h2>",
            s.traces.n_traces
        );
        out.push_str(&table(&stat_header, &rows));
    }
    if !s.workload_throughput.rows.is_empty() {
        let rows: Vec<Vec<String>> = s
            .workload_throughput
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.metric.clone(),
                    opt(r.overall, 1.0, 1),
                    opt(r.last_window, 1.0, 1),
                    opt(r.steady_state, 1.0, 1),
                ]
            })
            .collect();
        out.push_str("<h2>Workload Throughput</h2>\n");
        out.push_str(&table(
            &["Metric", "Overall", "Last 30s", "Steady (drop 20%)"],
            &rows,
        ));
    }
    if !s.by_turn.is_empty() {
        let rows: Vec<Vec<String>> = s.by_turn.iter().map(crate::turns::row).collect();
        out.push_str("<h2>Per Turn</h2>\n");
        out.push_str(&table(
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
            &rows,
        ));
    }
    let r = &s.requests;
    out.push_str("<h2>Requests and conversations</h2>\n");
    out.push_str(&table(
        &[
            "Requests",
            "total",
            "succeeded",
            "failed",
            "cancelled",
            "retried",
            "error rate",
        ],
        &[vec![
            String::new(),
            r.total.to_string(),
            r.succeeded.to_string(),
            r.failed.to_string(),
            r.cancelled.to_string(),
            r.retried.to_string(),
            r.error_rate
                .map_or("-".into(), |v| format!("{:.2}%", v * 100.0)),
        ]],
    ));
    let c = &s.conversations;
    out.push_str(&table(
        &[
            "Conversations",
            "started",
            "completed",
            "abandoned",
            "interrupted",
            "cancelled",
        ],
        &[vec![
            String::new(),
            c.started.to_string(),
            c.completed.to_string(),
            c.abandoned.to_string(),
            c.interrupted.to_string(),
            c.cancelled.to_string(),
        ]],
    ));
    if !r.failures.is_empty() {
        let rows: Vec<Vec<String>> = r
            .failures
            .iter()
            .map(|(class, n)| {
                vec![
                    class.clone(),
                    n.to_string(),
                    r.failure_messages
                        .get(class)
                        .map_or(String::new(), |m| m.join(" | ")),
                ]
            })
            .collect();
        out.push_str("<h2>Failures</h2>\n");
        out.push_str(&table(
            &["Class", "Requests", "Messages (first few)"],
            &rows,
        ));
    }
    let client = &s.client;
    if let Some(cpu_s) = client.get("cpu_s").and_then(|v| v.as_f64()) {
        let num = |k: &str, prec: usize| {
            client
                .get(k)
                .and_then(|v| v.as_f64())
                .map_or("-".into(), |v| format!("{v:.prec$}"))
        };
        let _ = writeln!(
            out,
            "<p class=\"note\">Client CPU: {cpu_s:.3} s, {} µs per request, {} µs per output \
             event{}.</p>",
            num("cpu_us_per_request", 1),
            num("cpu_us_per_event", 2),
            if client.get("includes_builtin_sim") == Some(&serde_json::Value::Bool(true)) {
                " (includes the built-in sim's work)"
            } else {
                ""
            }
        );
        if let Some(b) = client.get("bottleneck").and_then(|v| v.as_str()) {
            let _ = writeln!(
                out,
                "<p class=\"warn\">WARNING: {} — TTFT/ITL/latency may include time responses \
                 waited for the client (see the console and docs/metrics.md).</p>",
                esc(&b.replace('_', " "))
            );
        }
    }
    out
}

/// `report.html` for one run: facts, charts, tables.
pub fn report_html(run: &RunFiles) -> String {
    let s = &run.summary;
    let label = config_text(&s.config, "/point/label");
    let mut body = String::new();
    let _ = writeln!(body, "<h1>parley report: {}</h1>", esc(&label));
    let _ = writeln!(
        body,
        "<p class=\"facts\"><b>{}</b> at <b>{}</b>, dataset <b>{}</b> · {:.2} s · {} requests, {} \
         conversations completed · parley {}</p>",
        esc(&config_text(&s.config, "/model")),
        esc(&config_text(&s.config, "/url")),
        esc(&config_text(&s.config, "/dataset")),
        s.duration_s,
        s.requests.total,
        s.conversations.completed,
        esc(&s.parley_version)
    );
    if s.interrupted {
        let _ = writeln!(
            body,
            "<p class=\"warn\">Interrupted by {}: figures cover what was measured before it.</p>",
            esc(s.interrupted_by.as_deref().unwrap_or("a signal"))
        );
    }
    body.push_str("<h2>Charts</h2>\n<div class=\"charts\">\n");
    for c in report_charts(run) {
        body.push_str(&c.svg());
        body.push('\n');
    }
    body.push_str("</div>\n");
    body.push_str(&report_tables(s));
    body.push_str(
        "<p class=\"note\">Every figure is defined in parley's docs/metrics.md. Hover a point \
         or bar for its value.</p>",
    );
    page(&format!("parley report: {label}"), &body)
}

/// One headline figure of `parley compare`.
pub struct Headline {
    pub metric: &'static str,
    /// Decimals shown.
    pub precision: usize,
    pub value: fn(&RunSummary) -> Option<f64>,
}

/// The figures `parley compare` sets side by side.
pub const HEADLINES: [Headline; 10] = [
    Headline {
        metric: "Requests/s",
        precision: 2,
        value: |s| Some(s.throughput.requests_per_s),
    },
    Headline {
        metric: "Output tok/s",
        precision: 1,
        value: |s| Some(s.throughput.output_tokens_per_s),
    },
    Headline {
        metric: "TTFT p50 (ms)",
        precision: 2,
        value: |s| s.ttft_ms.p50,
    },
    Headline {
        metric: "TTFT p99 (ms)",
        precision: 2,
        value: |s| s.ttft_ms.p99,
    },
    Headline {
        metric: "ITL p50 (ms)",
        precision: 2,
        value: |s| s.itl_ms.p50,
    },
    Headline {
        metric: "ITL p99 (ms)",
        precision: 2,
        value: |s| s.itl_ms.p99,
    },
    Headline {
        metric: "Latency p50 (s)",
        precision: 3,
        value: |s| s.latency_ms.p50.map(|v| v / 1e3),
    },
    Headline {
        metric: "Latency p99 (s)",
        precision: 3,
        value: |s| s.latency_ms.p99.map(|v| v / 1e3),
    },
    Headline {
        metric: "Error rate (%)",
        precision: 2,
        value: |s| s.requests.error_rate.map(|v| v * 100.0),
    },
    Headline {
        metric: "Cache hit (%)",
        precision: 1,
        value: |s| s.cache_hit_rate.map(|v| v * 100.0),
    },
];

/// `b − a` and `100 · (b − a) / a` (no percentage when `a` is 0).
pub fn delta(a: Option<f64>, b: Option<f64>) -> (Option<f64>, Option<f64>) {
    match (a, b) {
        (Some(a), Some(b)) => (Some(b - a), (a != 0.0).then(|| 100.0 * (b - a) / a)),
        _ => (None, None),
    }
}

/// Column letter of the i-th run (A, B, …, Z, then A27, …).
fn letter(i: usize) -> String {
    if i < 26 {
        char::from(b'A' + i as u8).to_string()
    } else {
        format!("A{}", i + 1)
    }
}

/// The comparison's rows: per headline, each run's value, then for every run after the first
/// its value, Δ and Δ % against the first.
fn compare_rows(runs: &[(String, RunSummary)]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut header = vec!["Metric".to_string(), letter(0)];
    for i in 1..runs.len() {
        let l = letter(i);
        header.push(l.clone());
        header.push(format!("{l} − A"));
        header.push(format!("{l} vs A"));
    }
    let rows = HEADLINES
        .iter()
        .map(|h| {
            let p = h.precision;
            let base = (h.value)(&runs[0].1);
            let mut row = vec![h.metric.to_string(), opt(base, 1.0, p)];
            for (_, s) in &runs[1..] {
                let v = (h.value)(s);
                let (abs, pct) = delta(base, v);
                row.push(opt(v, 1.0, p));
                row.push(abs.map_or("-".into(), |d| format!("{d:+.p$}")));
                row.push(pct.map_or("-".into(), |d| format!("{d:+.1}%")));
            }
            row
        })
        .collect();
    (header, rows)
}

/// The console's comparison: which run each letter is, then the table.
pub fn compare_text(runs: &[(String, RunSummary)]) -> String {
    let mut out = String::new();
    for (i, (label, _)) in runs.iter().enumerate() {
        let _ = writeln!(out, "{}: {label}", letter(i));
    }
    let (header, rows) = compare_rows(runs);
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    out.push_str(&crate::report::table(&header, &rows));
    out
}

/// Every chart of the comparison page: each run a series.
pub(crate) fn compare_charts(runs: &[(String, RunSummary)]) -> Vec<Chart> {
    let series = |f: &dyn Fn(&RunSummary) -> Vec<(f64, f64)>| -> Vec<Series> {
        runs.iter()
            .enumerate()
            .map(|(i, (_, s))| Series::line(letter(i), f(s)))
            .collect()
    };
    let mut charts = vec![
        cdf_chart(
            "ttft_cdf",
            "TTFT CDF",
            "TTFT (ms)",
            series(&|s| cdf(&s.quantiles.q, &s.quantiles.ttft_ms)),
        ),
        cdf_chart(
            "itl_cdf",
            "ITL CDF",
            "inter-token latency (ms)",
            series(&|s| cdf(&s.quantiles.q, &s.quantiles.itl_ms)),
        ),
        cdf_chart(
            "latency_cdf",
            "Latency CDF",
            "latency (ms)",
            series(&|s| cdf(&s.quantiles.q, &s.quantiles.latency_ms)),
        ),
    ];
    let mut by_turn = Chart::new("ttft_by_turn", "TTFT p50 by turn", "turn", "TTFT (ms)");
    by_turn.series = series(&|s| {
        s.by_turn
            .iter()
            .filter_map(|r| r.ttft_ms.p50.map(|v| (r.turn as f64, v)))
            .collect()
    });
    by_turn.x_integer = true;
    by_turn.x_from_zero = false;
    charts.push(by_turn);
    charts
}

/// `compare.html`: the runs, the headline table with deltas, overlaid CDFs.
pub fn compare_html(runs: &[(String, RunSummary)]) -> String {
    let mut body = String::from("<h1>parley compare</h1>\n");
    let rows: Vec<Vec<String>> = runs
        .iter()
        .enumerate()
        .map(|(i, (label, s))| {
            vec![
                letter(i),
                label.clone(),
                config_text(&s.config, "/model"),
                config_text(&s.config, "/url"),
                config_text(&s.config, "/point/label"),
                format!("{:.2}", s.duration_s),
                s.requests.total.to_string(),
                s.parley_version.clone(),
            ]
        })
        .collect();
    body.push_str(&table(
        &[
            "Run",
            "Path",
            "Model",
            "URL",
            "Point",
            "Duration (s)",
            "Requests",
            "parley",
        ],
        &rows,
    ));
    let (header, rows) = compare_rows(runs);
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    body.push_str("<h2>Headline figures (deltas against A)</h2>\n");
    body.push_str(&table(&header, &rows));
    body.push_str("<h2>Charts</h2>\n<div class=\"charts\">\n");
    for c in compare_charts(runs) {
        body.push_str(&c.svg());
        body.push('\n');
    }
    body.push_str("</div>\n");
    page("parley compare", &body)
}

/// `parley compare`: loads each run's `summary.json`, writes `output`, returns the console text
/// (ending with where the page went).
pub fn compare(paths: &[PathBuf], output: &Path) -> Result<String, HtmlError> {
    let runs = paths
        .iter()
        .map(|p| Ok((p.display().to_string(), load_summary(p)?)))
        .collect::<Result<Vec<_>, HtmlError>>()?;
    let html = compare_html(&runs);
    crate::report::write_atomically(output, html.as_bytes()).map_err(|source| {
        HtmlError::Write {
            path: output.to_path_buf(),
            source,
        }
    })?;
    let mut text = compare_text(&runs);
    let _ = writeln!(text, "wrote {}", output.display());
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: f64, ok: u64, failed: u64, completion: u64) -> Point {
        Point {
            t,
            cum_completion: completion,
            cum_new_prompt: 2 * completion,
            cum_cached_prompt: 0,
            cum_requests: ok,
            cum_failed: failed,
        }
    }

    #[test]
    fn time_bins_difference_the_cumulative_counts() {
        // 100 s of 100 ms buckets, the last one cut at 99.95 s.
        let mut pts: Vec<Point> = (1..=1000)
            .map(|i| point(i as f64 * 0.1, i, i / 5, 10 * i))
            .collect();
        pts.last_mut().unwrap().t = 99.95;
        // 1,000 buckets into at most 60 bins: strides of 17, the last bin shorter.
        let bins = time_bins(&pts, 0.1);
        assert_eq!(bins.len(), 59);
        assert_eq!(bins.iter().map(|b| b.ok).sum::<u64>(), 1000);
        assert_eq!(bins.iter().map(|b| b.failed).sum::<u64>(), 200);
        assert_eq!(bins[0].ok, 17);
        assert_eq!(bins[0].completion_tokens, 170);
        assert_eq!(bins[0].new_prompt_tokens, 340);
        assert!((bins[0].t0_s - 0.0).abs() < 1e-12 && (bins[0].t1_s - 1.7).abs() < 1e-9);
        assert!((bins[58].t0_s - 98.6).abs() < 1e-9 && (bins[58].t1_s - 99.95).abs() < 1e-9);
        assert!((bins[0].per_s(bins[0].ok) - 10.0).abs() < 1e-9);
        for w in bins.windows(2) {
            assert_eq!(w[0].t1_s, w[1].t0_s);
        }
        // 20 s: 1 s bins (10 buckets each), not 100 ms ones.
        assert_eq!(time_bins(&pts[..200], 0.1).len(), 20);
        // 3 s: still 10 bins, of 0.3 s.
        assert_eq!(time_bins(&pts[..30], 0.1).len(), 10);
        // Fewer buckets than that: one bin each.
        assert_eq!(time_bins(&pts[..3], 0.1).len(), 3);
        assert!(time_bins(&[], 0.1).is_empty());
    }

    #[test]
    fn distribution_shares_add_to_100() {
        let values: Vec<f64> = (0..200).map(|i| 1.0 + i as f64 / 100.0).collect();
        let (width, bars) = distribution(&values, 20);
        assert_eq!(bars.len(), 20);
        assert!((width - 1.99 / 20.0).abs() < 1e-12);
        let total: f64 = bars.iter().map(|b| b.1).sum();
        assert!((total - 100.0).abs() < 1e-9);
        // One value repeated (every trace alike): one bar of 100 %.
        let (w, bars) = distribution(&[2.0; 200], 20);
        assert_eq!(bars.len(), 1);
        assert!(w > 0.0 && bars[0].1 == 100.0);
        assert!(distribution(&[], 20).1.is_empty());
    }

    #[test]
    fn deltas_and_letters() {
        assert_eq!(delta(Some(200.0), Some(150.0)), (Some(-50.0), Some(-25.0)));
        assert_eq!(delta(Some(0.0), Some(1.0)), (Some(1.0), None));
        assert_eq!(delta(None, Some(1.0)), (None, None));
        assert_eq!(letter(0), "A");
        assert_eq!(letter(25), "Z");
        assert_eq!(letter(26), "A27");
    }

    #[test]
    fn escaping() {
        assert_eq!(
            esc(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
