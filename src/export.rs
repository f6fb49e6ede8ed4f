//! Files other tools read, written beside `summary.json`: AIPerf's `profile_export_aiperf.json`
//! and `profile_export_aiperf.csv`, and evalscope's `benchmark_summary.json` and
//! `benchmark_percentile.json`, with those tools' names, keys and units, so dashboards and
//! scripts built on them read parley's runs unchanged. Built from the merged recorder at the
//! end of the run; mapping and differences: `docs/metrics.md`, "Exports".

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::metrics::{Dist, Recorder};
use crate::plan::RunConfig;
use crate::report::write_json;

/// AIPerf's schema version of `profile_export_aiperf.json` that these files follow.
pub const AIPERF_SCHEMA_VERSION: &str = "1.5";

/// A record metric's block: `{unit, avg, min, max, p1…p99, std, count, sum}` in display units.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AiperfBlock {
    pub unit: &'static str,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    pub p1: f64,
    pub p5: f64,
    pub p10: f64,
    pub p25: f64,
    pub p50: f64,
    pub p75: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub std: f64,
    pub count: u64,
    pub sum: f64,
}

impl AiperfBlock {
    /// `None` when nothing was recorded (AIPerf omits the metric then).
    fn of(d: &Dist, scale: f64, unit: &'static str) -> Option<AiperfBlock> {
        let q = |p: f64| d.quantile(p).map_or(0.0, |v| v as f64 * scale);
        (d.count() > 0).then(|| AiperfBlock {
            unit,
            avg: d.mean().unwrap_or(0.0) * scale,
            min: d.min().unwrap_or(0) as f64 * scale,
            max: d.max().unwrap_or(0) as f64 * scale,
            p1: q(0.01),
            p5: q(0.05),
            p10: q(0.10),
            p25: q(0.25),
            p50: q(0.50),
            p75: q(0.75),
            p90: q(0.90),
            p95: q(0.95),
            p99: q(0.99),
            std: d.std().unwrap_or(0.0) * scale,
            count: d.count(),
            sum: d.sum as f64 * scale,
        })
    }
}

/// A derived or aggregate metric: `{unit, avg}` only.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AiperfScalar {
    pub unit: &'static str,
    pub avg: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct AiperfRunInfo {
    pub benchmark_id: String,
    pub sweep_id: Option<String>,
    pub random_seed: u64,
    pub trial: u32,
    pub run_label: String,
    pub variation_label: String,
    pub variation_index: u32,
    pub variation_values: serde_json::Map<String, serde_json::Value>,
    pub cli_command: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AiperfErrorDetails {
    pub code: Option<u16>,
    #[serde(rename = "type")]
    pub kind: String,
    pub message: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AiperfError {
    pub error_details: AiperfErrorDetails,
    pub count: u64,
}

/// `profile_export_aiperf.json`.
#[derive(Clone, Debug, Serialize)]
pub struct AiperfExport {
    pub schema_version: &'static str,
    /// "parley <version>": the producer, in the field readers look at for it.
    pub aiperf_version: String,
    pub benchmark_id: String,
    pub start_time: String,
    pub end_time: String,
    pub was_cancelled: bool,
    pub input_config: RunConfig,
    pub run_info: AiperfRunInfo,
    pub error_summary: Vec<AiperfError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_to_first_token: Option<AiperfBlock>,
    /// AIPerf's per-request (latency − TTFT) / (OSL − 1): parley's TPOT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inter_token_latency: Option<AiperfBlock>,
    /// Gaps between content chunks: parley's ITL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inter_chunk_latency: Option<AiperfBlock>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_latency: Option<AiperfBlock>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_sequence_length: Option<AiperfBlock>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_sequence_length: Option<AiperfBlock>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_token_throughput_per_user: Option<AiperfBlock>,
    pub request_throughput: AiperfScalar,
    pub output_token_throughput: AiperfScalar,
    pub total_token_throughput: AiperfScalar,
    pub request_count: AiperfScalar,
    pub error_request_count: AiperfScalar,
    pub benchmark_duration: AiperfScalar,
}

/// evalscope's `benchmark_summary.json`, keys in its order.
#[derive(Clone, Debug, Serialize)]
pub struct EvalscopeSummary {
    #[serde(rename = "Test Duration (s)")]
    pub duration_s: f64,
    #[serde(rename = "Concurrency")]
    pub concurrency: i64,
    #[serde(rename = "Request Rate (req/s)")]
    pub rate: f64,
    #[serde(rename = "Total Requests")]
    pub total: u64,
    #[serde(rename = "Success Requests")]
    pub success: u64,
    #[serde(rename = "Failed Requests")]
    pub failed: u64,
    #[serde(rename = "Stream Requests")]
    pub stream: u64,
    #[serde(rename = "Non-Stream Requests")]
    pub non_stream: u64,
    #[serde(rename = "Req Throughput (req/s)")]
    pub req_throughput: f64,
    #[serde(rename = "Avg Latency (s)")]
    pub avg_latency_s: f64,
    #[serde(rename = "Avg Input Tokens")]
    pub avg_input_tokens: f64,
    #[serde(rename = "Output Throughput (tok/s)")]
    pub output_throughput: f64,
    #[serde(rename = "Total Throughput (tok/s)")]
    pub total_throughput: f64,
    #[serde(rename = "TTFT (ms)")]
    pub ttft_ms: f64,
    #[serde(rename = "TPOT (ms)")]
    pub tpot_ms: f64,
    #[serde(rename = "ITL (ms)")]
    pub itl_ms: f64,
    #[serde(rename = "Avg Output Tokens")]
    pub avg_output_tokens: f64,
    #[serde(rename = "Avg Turns/Request", skip_serializing_if = "Option::is_none")]
    pub avg_turns: Option<f64>,
    #[serde(
        rename = "KV Cache Hit Rate (%)",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_hit_pct: Option<f64>,
    #[serde(
        rename = "First-Turn TTFT (ms)",
        skip_serializing_if = "Option::is_none"
    )]
    pub first_turn_ttft_ms: Option<f64>,
    #[serde(
        rename = "Subsequent-Turn TTFT (ms)",
        skip_serializing_if = "Option::is_none"
    )]
    pub subsequent_turn_ttft_ms: Option<f64>,
}

/// One row of evalscope's `benchmark_percentile.json` (a list of these, `min`, `1%` … `99%`,
/// `max`). A column with no value is `NaN` in evalscope's file; here it is `null`, which JSON
/// readers accept (evalscope's bare `NaN` is not JSON).
#[derive(Clone, Debug, Serialize)]
pub struct EvalscopePercentileRow {
    #[serde(rename = "Percentiles")]
    pub label: String,
    #[serde(rename = "TTFT (ms)")]
    pub ttft_ms: Option<f64>,
    #[serde(rename = "ITL (ms)")]
    pub itl_ms: Option<f64>,
    #[serde(rename = "TPOT (ms)")]
    pub tpot_ms: Option<f64>,
    #[serde(rename = "Latency (s)")]
    pub latency_s: Option<f64>,
    #[serde(rename = "Input tokens")]
    pub input_tokens: Option<f64>,
    #[serde(rename = "Output tokens")]
    pub output_tokens: Option<f64>,
    #[serde(rename = "Output (tok/s)")]
    pub output_tps: Option<f64>,
    #[serde(rename = "Total (tok/s)")]
    pub total_tps: Option<f64>,
    #[serde(rename = "Decode (tok/s)")]
    pub decode_tps: Option<f64>,
}

/// evalscope's percentiles (nearest rank, like parley's histograms).
const EVALSCOPE_PERCENTILES: [(&str, f64); 11] = [
    ("min", 0.0),
    ("1%", 0.01),
    ("5%", 0.05),
    ("10%", 0.10),
    ("25%", 0.25),
    ("50%", 0.50),
    ("75%", 0.75),
    ("90%", 0.90),
    ("95%", 0.95),
    ("99%", 0.99),
    ("max", 1.0),
];

/// Every export of one run.
#[derive(Clone, Debug)]
pub struct Exports {
    pub aiperf: AiperfExport,
    pub evalscope_summary: EvalscopeSummary,
    pub evalscope_percentiles: Vec<EvalscopePercentileRow>,
}

/// What the exports need beyond the recorder.
pub struct RunFacts<'a> {
    pub config: &'a RunConfig,
    pub run_id: String,
    pub duration_s: f64,
    pub interrupted: bool,
    /// The run's wall-clock start and end (Unix seconds).
    pub start_unix_s: f64,
    pub end_unix_s: f64,
    pub cli_command: Option<String>,
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

impl Exports {
    pub fn of(rec: &Recorder, facts: RunFacts<'_>) -> Exports {
        let config = facts.config;
        let ok = rec.requests_succeeded;
        let total = ok + rec.requests_failed;
        let per_s = |x: f64| {
            if facts.duration_s > 0.0 {
                x / facts.duration_s
            } else {
                0.0
            }
        };
        let input_sum = rec.input_tokens.sum as f64;
        let output_sum = rec.output_tokens.sum as f64;
        let scalar = |unit, avg| AiperfScalar { unit, avg };
        let aiperf = AiperfExport {
            schema_version: AIPERF_SCHEMA_VERSION,
            aiperf_version: format!("parley {}", env!("CARGO_PKG_VERSION")),
            benchmark_id: facts.run_id.clone(),
            start_time: iso_utc(facts.start_unix_s),
            end_time: iso_utc(facts.end_unix_s),
            was_cancelled: facts.interrupted,
            input_config: config.clone(),
            run_info: AiperfRunInfo {
                benchmark_id: facts.run_id.clone(),
                sweep_id: None,
                random_seed: config.seed,
                trial: 0,
                run_label: config.point.label.clone(),
                variation_label: config.point.label.clone(),
                variation_index: 0,
                variation_values: serde_json::Map::new(),
                cli_command: facts.cli_command.clone(),
            },
            error_summary: rec
                .failures
                .iter()
                .map(|(kind, count)| AiperfError {
                    error_details: AiperfErrorDetails {
                        code: match kind {
                            crate::client::FailureKind::HttpStatus(code) => Some(*code),
                            _ => None,
                        },
                        kind: kind.label(),
                        message: None,
                    },
                    count: *count,
                })
                .collect(),
            time_to_first_token: AiperfBlock::of(&rec.ttft_us, 1e-3, "ms"),
            inter_token_latency: AiperfBlock::of(&rec.tpot_us, 1e-3, "ms"),
            inter_chunk_latency: AiperfBlock::of(&rec.itl_us, 1e-3, "ms"),
            request_latency: AiperfBlock::of(&rec.latency_us, 1e-3, "ms"),
            input_sequence_length: AiperfBlock::of(&rec.input_tokens, 1.0, "tokens"),
            output_sequence_length: AiperfBlock::of(&rec.output_tokens, 1.0, "tokens"),
            output_token_throughput_per_user: AiperfBlock::of(
                &rec.decode_milli_tps,
                1e-3,
                "tokens/sec/user",
            ),
            request_throughput: scalar("requests/sec", per_s(ok as f64)),
            output_token_throughput: scalar("tokens/sec", per_s(output_sum)),
            total_token_throughput: scalar("tokens/sec", per_s(input_sum + output_sum)),
            request_count: scalar("requests", ok as f64),
            error_request_count: scalar("requests", rec.requests_failed as f64),
            benchmark_duration: scalar("sec", facts.duration_s),
        };
        let mean = |d: &Dist, scale: f64| d.mean().map_or(-1.0, |m| m * scale);
        let positive = |d: &Dist, scale: f64, digits| d.mean().map(|m| round(m * scale, digits));
        let evalscope_summary = EvalscopeSummary {
            duration_s: round(facts.duration_s, 4),
            concurrency: config.point.parallel.map_or(-1, |p| p as i64),
            rate: config.point.rate_per_s.unwrap_or(-1.0),
            total,
            success: ok,
            failed: rec.requests_failed,
            stream: if config.stream { total } else { 0 },
            non_stream: if config.stream { 0 } else { total },
            req_throughput: round(per_s(ok as f64), 4),
            avg_latency_s: round(mean(&rec.latency_us, 1e-6), 4),
            avg_input_tokens: round(mean(&rec.input_tokens, 1.0), 4),
            output_throughput: round(per_s(output_sum), 4),
            total_throughput: round(per_s(input_sum + output_sum), 4),
            ttft_ms: round(mean(&rec.ttft_us, 1e-3), 2),
            tpot_ms: round(mean(&rec.tpot_us, 1e-3), 2),
            itl_ms: round(mean(&rec.itl_us, 1e-3), 2),
            avg_output_tokens: round(mean(&rec.output_tokens, 1.0), 4),
            avg_turns: (ok > 0).then(|| round(rec.turn_depth_sum as f64 / ok as f64, 4)),
            cache_hit_pct: (rec.cache_prompt_tokens > 0).then(|| {
                round(
                    100.0 * rec.cache_cached_tokens as f64 / rec.cache_prompt_tokens as f64,
                    4,
                )
            }),
            first_turn_ttft_ms: positive(&rec.first_turn_ttft_us, 1e-3, 2),
            subsequent_turn_ttft_ms: positive(&rec.subsequent_turn_ttft_us, 1e-3, 2),
        };
        let at = |d: &Dist, q: f64, scale: f64| d.quantile(q).map(|v| round(v as f64 * scale, 2));
        let evalscope_percentiles = EVALSCOPE_PERCENTILES
            .iter()
            .map(|&(label, q)| EvalscopePercentileRow {
                label: label.to_string(),
                ttft_ms: at(&rec.ttft_us, q, 1e-3),
                itl_ms: at(&rec.itl_us, q, 1e-3),
                tpot_ms: at(&rec.tpot_us, q, 1e-3),
                latency_s: at(&rec.latency_us, q, 1e-6),
                input_tokens: at(&rec.input_tokens, q, 1.0),
                output_tokens: at(&rec.output_tokens, q, 1.0),
                output_tps: at(&rec.output_milli_tps, q, 1e-3),
                total_tps: at(&rec.total_milli_tps, q, 1e-3),
                decode_tps: at(&rec.decode_milli_tps, q, 1e-3),
            })
            .collect();
        Exports {
            aiperf,
            evalscope_summary,
            evalscope_percentiles,
        }
    }

    /// AIPerf's CSV: the record metrics with their statistics, a blank line, then the scalars.
    pub fn aiperf_csv(&self) -> String {
        let a = &self.aiperf;
        let mut out =
            String::from("Metric,avg,min,max,sum,p1,p5,p10,p25,p50,p75,p90,p95,p99,std\n");
        let records = [
            ("Time to First Token", &a.time_to_first_token),
            ("Inter Token Latency", &a.inter_token_latency),
            ("Inter Chunk Latency", &a.inter_chunk_latency),
            ("Request Latency", &a.request_latency),
            ("Input Sequence Length", &a.input_sequence_length),
            ("Output Sequence Length", &a.output_sequence_length),
            (
                "Output Token Throughput Per User",
                &a.output_token_throughput_per_user,
            ),
        ];
        for (name, block) in records {
            if let Some(b) = block {
                let _ = writeln!(
                    out,
                    "{name} ({}),{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2}",
                    b.unit, b.avg, b.min, b.max, b.sum, b.p1, b.p5, b.p10, b.p25, b.p50, b.p75,
                    b.p90, b.p95, b.p99, b.std
                );
            }
        }
        out.push_str("\nMetric,Value\n");
        for (name, s) in [
            ("Request Throughput", &a.request_throughput),
            ("Output Token Throughput", &a.output_token_throughput),
            ("Total Token Throughput", &a.total_token_throughput),
            ("Request Count", &a.request_count),
            ("Error Request Count", &a.error_request_count),
            ("Benchmark Duration", &a.benchmark_duration),
        ] {
            let _ = writeln!(out, "{name} ({}),{:.2}", s.unit, s.avg);
        }
        out
    }

    /// Writes the four files into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        let csv = dir.join("profile_export_aiperf.csv");
        crate::report::write_atomically(&csv, self.aiperf_csv().as_bytes())?;
        Ok(vec![
            write_json(dir, "profile_export_aiperf.json", &self.aiperf)?,
            csv,
            write_json(dir, "benchmark_summary.json", &self.evalscope_summary)?,
            write_json(
                dir,
                "benchmark_percentile.json",
                &self.evalscope_percentiles,
            )?,
        ])
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for Unix seconds (UTC; the civil-from-days algorithm).
pub(crate) fn iso_utc(unix_s: f64) -> String {
    let secs = unix_s.max(0.0).floor() as i64;
    let micros = ((unix_s.max(0.0) - secs as f64) * 1e6)
        .round()
        .min(999_999.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_times_are_utc_calendar_dates() {
        assert_eq!(iso_utc(0.0), "1970-01-01T00:00:00.000000Z");
        // 2026-12-03 07:50:00.5 UTC.
        assert_eq!(iso_utc(1_796_284_200.5), "2026-12-03T07:50:00.500000Z");
        // A leap day.
        assert_eq!(iso_utc(1_709_164_800.0), "2024-02-29T00:00:00.000000Z");
    }

    #[test]
    fn blocks_carry_aiperf_stats_in_display_units() {
        let mut d = Dist::new(3_600_000_000);
        for us in [10_000u64, 20_000, 30_000, 40_000] {
            d.record(us);
        }
        let b = AiperfBlock::of(&d, 1e-3, "ms").unwrap();
        assert_eq!(b.count, 4);
        assert_eq!(b.avg, 25.0);
        assert_eq!(b.sum, 100.0);
        assert!((b.std - 125f64.sqrt()).abs() < 1e-9);
        assert!((b.min - 10.0).abs() < 0.02 && (b.max - 40.0).abs() < 0.05);
        assert!(AiperfBlock::of(&Dist::new(10), 1.0, "ms").is_none());
    }
}
