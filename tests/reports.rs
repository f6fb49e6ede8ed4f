//! The multi-turn reports — per trace, per turn, workload throughput and its timeline, min and
//! std — held against the sim's record (the server's own times and token counts, on the same
//! monotonic clock as the client's).

mod common;

use std::collections::BTreeMap;

use common::{by_conversation, f, turn_of, u, Sim};
use serde_json::Value;

/// A few seconds of traffic: 12 conversations of 3 turns, 4 at a time, 10 ms per token.
fn run() -> (common::Bench, Vec<Value>) {
    let sim = Sim::start(&[
        "--ttft-base-ms",
        "20",
        "--ttft-per-uncached-token-us",
        "0",
        "--itl-ms",
        "10",
    ]);
    let run = sim.bench(&[
        "--number",
        "12",
        "--parallel",
        "4",
        "--min-turns",
        "3",
        "--max-turns",
        "3",
        "--min-prompt-length",
        "32",
        "--max-prompt-length",
        "64",
        "--max-tokens",
        "8",
        "--extra-args",
        r#"{"ignore_eos": true}"#,
    ]);
    let records = sim.stop();
    (run, records)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn row<'a>(file: &'a Value, metric: &str) -> &'a Value {
    file["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["metric"] == metric)
        .unwrap_or_else(|| panic!("no row {metric}"))
}

/// Client times include loopback and wake-ups on either side of the server's: a busy-host bound.
const SLACK_S: f64 = 0.010;

#[test]
fn traces_turns_and_timeline_match_the_record() {
    let (run, records) = run();
    let s = &run.summary;
    assert_eq!(records.len(), 36);
    let convs = by_conversation(&records);
    assert_eq!(convs.len(), 12);

    // Per trace, from the record: every conversation completed, so each is a trace.
    let traces = &s["traces"];
    assert_eq!(u(&traces["n_traces"]), 12);
    assert_eq!(u(&traces["n_traces"]), u(&s["conversations"]["completed"]));
    let ns = |r: &Value, k: &str| u(&r[k]) as f64 / 1e9;
    let mut latency = Vec::new();
    let mut ttfat = Vec::new();
    let mut first_ttft = Vec::new();
    let mut hit = Vec::new();
    let mut eligible = Vec::new();
    let mut decode = Vec::new();
    for turns in convs.values() {
        let (first, last) = (&turns[0], &turns[turns.len() - 1]);
        latency.push(ns(last, "end_ns") - ns(first, "arrival_ns"));
        ttfat.push(ns(last, "first_token_ns") - ns(first, "arrival_ns"));
        first_ttft.push(ns(first, "first_token_ns") - ns(first, "arrival_ns"));
        let (p, c): (u64, u64) = turns.iter().fold((0, 0), |(p, c), r| {
            (p + u(&r["prompt_tokens"]), c + u(&r["cached_tokens"]))
        });
        // The same rounding as the client's histograms (hundredths of a percent), so the means
        // compare exactly.
        hit.push((c as f64 * 1e4 / p as f64).round() / 100.0);
        let (mut el, mut el_cached) = (0, 0);
        for w in turns.windows(2) {
            el += u(&w[0]["prompt_tokens"]) + u(&w[0]["completion_tokens"]);
            el_cached += u(&w[1]["cached_tokens"]);
        }
        eligible.push((el_cached as f64 * 1e4 / el as f64).round() / 100.0);
        let tps: Vec<f64> = turns
            .iter()
            .map(|r| {
                let c = u(&r["completion_tokens"]) as f64;
                (c - 1.0) / (ns(r, "end_ns") - ns(r, "first_token_ns"))
            })
            .collect();
        decode.push(mean(&tps));
    }
    let close = |got: f64, want: f64, tol: f64, what: &str| {
        assert!(
            (got - want).abs() <= tol,
            "{what}: client {got} vs record {want}"
        );
    };
    close(
        f(&traces["latency_s"]["mean"]),
        mean(&latency),
        SLACK_S,
        "trace latency",
    );
    close(
        f(&traces["ttfat_s"]["mean"]),
        mean(&ttfat),
        SLACK_S,
        "TTFAT",
    );
    close(
        f(&traces["first_turn_ttft_s"]["mean"]),
        mean(&first_ttft),
        SLACK_S,
        "first-turn TTFT",
    );
    // Token counts come from the server's usage: exact.
    close(
        f(&traces["cache_hit_pct"]["mean"]),
        mean(&hit),
        1e-9,
        "cache hit",
    );
    close(
        f(&traces["eligible_cache_hit_pct"]["mean"]),
        mean(&eligible),
        1e-9,
        "eligible cache hit",
    );
    assert!(
        mean(&eligible) > 0.0,
        "later turns hit the sim's prefix cache"
    );
    // Decode: 7 tokens over ~70 ms per turn; wake-ups move a turn's ends by a few ms.
    let decode_mean = f(&traces["decode_tps"]["mean"]);
    close(
        decode_mean,
        mean(&decode),
        0.15 * mean(&decode),
        "decode TPS",
    );
    let max_latency = latency.iter().cloned().fold(0.0, f64::max);
    close(
        f(&traces["latency_s"]["max"]),
        max_latency,
        SLACK_S,
        "trace latency max",
    );

    // trace_summary.json: evalscope's layout, the same figures.
    let file = run.json("trace_summary.json");
    assert_eq!(u(&file["n_traces"]), 12);
    let names: Vec<&str> = file["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metric"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Latency (s)",
            "First-Turn TTFT (s)",
            "TTFAT (s)",
            "Decode TPS",
            "Cache Hit Rate (%)",
            "Eligible Cache Hit Rate (%)"
        ]
    );
    for r in file["rows"].as_array().unwrap() {
        for k in ["mean", "min", "p50", "p90", "p95", "p99", "max"] {
            assert!(r[k].is_number(), "{}: {k}", r["metric"]);
        }
    }
    assert_eq!(row(&file, "TTFAT (s)")["mean"], traces["ttfat_s"]["mean"]);

    // Per turn: counts and tokens exact, TTFT against the record.
    let by_turn = s["by_turn"].as_array().unwrap();
    assert_eq!(by_turn.len(), 3);
    let mut per_turn: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
    for r in &records {
        per_turn.entry(turn_of(r)).or_default().push(r);
    }
    for (k, row) in by_turn.iter().enumerate() {
        let truth = &per_turn[&(k as u64)];
        assert_eq!(u(&row["turn"]), k as u64 + 1);
        assert_eq!(u(&row["requests"]), truth.len() as u64);
        let prompt: u64 = truth.iter().map(|r| u(&r["prompt_tokens"])).sum();
        let cached: u64 = truth.iter().map(|r| u(&r["cached_tokens"])).sum();
        close(
            f(&row["input_tokens_mean"]),
            prompt as f64 / truth.len() as f64,
            1e-9,
            "input tokens by turn",
        );
        close(
            f(&row["cache_hit_rate"]),
            cached as f64 / prompt as f64,
            1e-12,
            "cache hit by turn",
        );
        let ttft: Vec<f64> = truth
            .iter()
            .map(|r| (ns(r, "first_token_ns") - ns(r, "arrival_ns")) * 1e3)
            .collect();
        close(
            f(&row["ttft_ms"]["mean"]),
            mean(&ttft),
            SLACK_S * 1e3,
            "TTFT by turn",
        );
    }
    assert_eq!(by_turn[0]["cache_hit_rate"], 0.0);
    assert!(run.stdout.contains("Per Turn"), "{}", run.stdout);
    assert!(run.stdout.contains("Per-Trace Metrics"), "{}", run.stdout);
    assert!(run.stdout.contains("Workload Throughput"), "{}", run.stdout);

    // Timeline: totals exact; each point counts what the record ended by then.
    let timeline = run.json("workload_timeline.json");
    let origin_ns = u(&timeline["start_monotonic_ns"]);
    let points = timeline["points"].as_array().unwrap();
    let last = points.last().unwrap();
    let sum = |k: &str| records.iter().map(|r| u(&r[k])).sum::<u64>();
    assert_eq!(u(&last["cum_completion"]), sum("completion_tokens"));
    assert_eq!(u(&last["cum_cached_prompt"]), sum("cached_tokens"));
    assert_eq!(
        u(&last["cum_new_prompt"]),
        sum("prompt_tokens") - sum("cached_tokens")
    );
    assert_eq!(u(&last["cum_requests"]), 36);
    let ends: Vec<f64> = records
        .iter()
        .map(|r| (u(&r["end_ns"]) as f64 - origin_ns as f64) / 1e9)
        .collect();
    for p in points {
        let t = f(&p["t"]);
        // The client sees an end a little after the server sent it.
        let surely = ends.iter().filter(|e| **e <= t - SLACK_S).count() as u64;
        let maybe = ends.iter().filter(|e| **e <= t).count() as u64;
        let got = u(&p["cum_requests"]);
        assert!(
            (surely..=maybe).contains(&got),
            "at {t}: {got} not in {surely}..={maybe}"
        );
    }
    assert!(
        (f(&timeline["bucket_s"]) - 0.1).abs() < 1e-12,
        "a short run keeps 100 ms buckets"
    );

    // Workload throughput: the rates follow from the points as defined.
    let wt = run.json("workload_throughput.json");
    assert_eq!(u(&wt["n_samples"]), 36);
    let wall = f(&wt["wall_time_s"]);
    assert_eq!(wall, f(&last["t"]));
    let completion = row(&wt, "Completion (tok/s)");
    close(
        f(&completion["overall"]),
        sum("completion_tokens") as f64 / wall,
        1e-6,
        "overall completion rate",
    );
    // Shorter than 30 s: the last window is the whole run.
    assert_eq!(completion["last_window"], completion["overall"]);
    let anchor = points
        .iter()
        .rev()
        .find(|p| f(&p["t"]) <= 0.2 * wall)
        .map_or((0.0, 0), |p| (f(&p["t"]), u(&p["cum_completion"])));
    close(
        f(&completion["steady_state"]),
        (sum("completion_tokens") - anchor.1) as f64 / (wall - anchor.0),
        1e-6,
        "steady completion rate",
    );
    let total = row(&wt, "Total Prompt (tok/s)");
    close(
        f(&total["overall"]),
        sum("prompt_tokens") as f64 / wall,
        1e-6,
        "overall prompt rate",
    );
    assert_eq!(s["workload_throughput"]["rows"], wt["rows"]);

    // min and std of the per-request TTFT against the record's.
    let ttft: Vec<f64> = records
        .iter()
        .map(|r| (ns(r, "first_token_ns") - ns(r, "arrival_ns")) * 1e3)
        .collect();
    let m = mean(&ttft);
    let std = (ttft.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / ttft.len() as f64).sqrt();
    let min = ttft.iter().cloned().fold(f64::INFINITY, f64::min);
    close(f(&s["ttft_ms"]["std"]), std, SLACK_S * 1e3, "TTFT std");
    close(f(&s["ttft_ms"]["min"]), min, SLACK_S * 1e3, "TTFT min");
    assert!(f(&s["ttft_ms"]["min"]) <= f(&s["ttft_ms"]["p50"]));
    assert!(run.stdout.contains("std"), "{}", run.stdout);
}

/// AIPerf's and evalscope's files: the names, keys and units their readers use, holding the
/// same figures as summary.json and the record.
#[test]
fn peer_exports_carry_the_keys_their_readers_use() {
    let (run, records) = run();
    let s = &run.summary;
    let sum = |k: &str| records.iter().map(|r| u(&r[k])).sum::<u64>();

    // evalscope benchmark_summary.json.
    let es = run.json("benchmark_summary.json");
    assert_eq!(u(&es["Total Requests"]), 36);
    assert_eq!(u(&es["Success Requests"]), 36);
    assert_eq!(u(&es["Failed Requests"]), 0);
    assert_eq!(u(&es["Concurrency"]), 4);
    assert_eq!(f(&es["Request Rate (req/s)"]), -1.0);
    let cache_pct = 100.0 * sum("cached_tokens") as f64 / sum("prompt_tokens") as f64;
    assert!((f(&es["KV Cache Hit Rate (%)"]) - cache_pct).abs() < 1e-4);
    assert!(
        (f(&es["TTFT (ms)"]) - f(&s["ttft_ms"]["mean"])).abs() <= 0.006,
        "2-decimal rounding"
    );
    assert!((f(&es["Avg Latency (s)"]) - f(&s["latency_ms"]["mean"]) / 1e3).abs() <= 6e-5);
    assert!((f(&es["Avg Output Tokens"]) - sum("completion_tokens") as f64 / 36.0).abs() <= 6e-5);
    assert!(
        (f(&es["Output Throughput (tok/s)"]) - f(&s["throughput"]["output_tokens_per_s"])).abs()
            <= 5e-4
    );
    assert!((f(&es["Avg Turns/Request"]) - 2.0).abs() < 1e-9);
    for k in [
        "Test Duration (s)",
        "Req Throughput (req/s)",
        "Total Throughput (tok/s)",
        "TPOT (ms)",
        "ITL (ms)",
        "Avg Input Tokens",
        "First-Turn TTFT (ms)",
        "Subsequent-Turn TTFT (ms)",
    ] {
        assert!(es[k].is_number(), "{k}");
    }

    // evalscope benchmark_percentile.json: 11 rows, min … max, nearest rank.
    let ep = run.json("benchmark_percentile.json");
    let rows = ep.as_array().unwrap();
    let labels: Vec<&str> = rows
        .iter()
        .map(|r| r["Percentiles"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        ["min", "1%", "5%", "10%", "25%", "50%", "75%", "90%", "95%", "99%", "max"]
    );
    let p50 = &rows[5];
    assert!(
        (f(&p50["TTFT (ms)"]) - f(&s["ttft_ms"]["p50"])).abs() <= 0.006,
        "2-decimal rounding"
    );
    assert_eq!(f(&rows[10]["Output tokens"]), 8.0);
    for k in [
        "ITL (ms)",
        "TPOT (ms)",
        "Latency (s)",
        "Input tokens",
        "Output (tok/s)",
        "Total (tok/s)",
        "Decode (tok/s)",
    ] {
        assert!(p50[k].is_number(), "{k}");
    }
    // Decode (tok/s) = 1 / TPOT, per request: about 100 tok/s at 10 ms per token.
    let decode = f(&p50["Decode (tok/s)"]);
    assert!((70.0..=110.0).contains(&decode), "{decode}");

    // AIPerf profile_export_aiperf.json.
    let ai = run.json("profile_export_aiperf.json");
    assert_eq!(ai["schema_version"], "1.5");
    let ttft = &ai["time_to_first_token"];
    assert_eq!(ttft["unit"], "ms");
    assert_eq!(u(&ttft["count"]), 36);
    assert!((f(&ttft["avg"]) - f(&s["ttft_ms"]["mean"])).abs() < 1e-9);
    for k in [
        "avg", "min", "max", "p1", "p5", "p10", "p25", "p50", "p75", "p90", "p95", "p99", "std",
        "count", "sum",
    ] {
        assert!(ttft[k].is_number(), "time_to_first_token.{k}");
    }
    let osl = &ai["output_sequence_length"];
    assert_eq!(osl["unit"], "tokens");
    assert_eq!(f(&osl["sum"]), sum("completion_tokens") as f64);
    assert_eq!(f(&ai["request_count"]["avg"]), 36.0);
    assert!(
        ai["request_count"].get("count").is_none(),
        "scalars carry unit and avg only"
    );
    assert_eq!(ai["request_throughput"]["unit"], "requests/sec");
    assert!(
        (f(&ai["output_token_throughput"]["avg"]) - f(&s["throughput"]["output_tokens_per_s"]))
            .abs()
            < 1e-9
    );
    // AIPerf's inter_token_latency is the per-request TPOT; its chunk gaps are ICL.
    assert!((f(&ai["inter_token_latency"]["avg"]) - f(&s["tpot_ms"]["mean"])).abs() < 1e-9);
    assert_eq!(
        u(&ai["inter_chunk_latency"]["count"]),
        u(&s["itl_ms"]["count"])
    );
    assert_eq!(ai["was_cancelled"], false);
    assert!(ai["run_info"]["cli_command"]
        .as_str()
        .unwrap()
        .contains("--number 12"));
    assert_eq!(ai["input_config"]["model"], "parley-sim");

    // profile_export_aiperf.csv: AIPerf's header, then the scalar block.
    let csv_path = common::find_all(&run_dir(&run), "profile_export_aiperf.csv");
    let csv = std::fs::read_to_string(&csv_path[0]).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("Metric,avg,min,max,sum,p1,p5,p10,p25,p50,p75,p90,p95,p99,std")
    );
    assert!(csv.contains("\n\nMetric,Value\n"), "{csv}");
    let ttft_row = csv
        .lines()
        .find(|l| l.starts_with("Time to First Token (ms),"))
        .expect("TTFT row");
    assert_eq!(ttft_row.split(',').count(), 15);
    assert!(csv.contains("Request Count (requests),36.00"), "{csv}");
    for name in [
        "profile_export_aiperf.json",
        "profile_export_aiperf.csv",
        "benchmark_summary.json",
        "benchmark_percentile.json",
    ] {
        assert!(run.stdout.contains(name), "the console names {name}");
    }
}

fn run_dir(run: &common::Bench) -> std::path::PathBuf {
    run.dir().to_path_buf()
}

/// Piped (not a terminal), a run prints one plain progress line every 10 s with the counts,
/// recent rates and TTFT median; the counts in it never exceed the run's.
#[test]
fn piped_progress_prints_a_plain_line_every_10_s() {
    let sim = Sim::start(&["--ttft-base-ms", "5", "--itl-ms", "2"]);
    let url = sim.url();
    let dir = tempfile::tempdir().unwrap();
    let out = common::parley()
        .args([
            "bench",
            "--url",
            &url,
            "--model",
            "parley-sim",
            "--cores",
            "1",
            "--duration",
            "11",
            "--parallel",
            "2",
            "--min-turns",
            "2",
            "--max-turns",
            "2",
            "--max-tokens",
            "4",
            "--name",
            "t",
            "--outputs-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let records = sim.stop();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("req/s")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let line = lines[0];
    for part in [
        "conversations",
        "ok ",
        "failed 0",
        "in flight",
        "tok/s",
        "TTFT p50",
    ] {
        assert!(line.contains(part), "{part}: {line}");
    }
    let ok: u64 = line
        .split("ok ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("ok count");
    assert!(
        ok > 0 && ok <= records.len() as u64,
        "{ok} of {}",
        records.len()
    );
    // The TTFT median is of the last seconds' requests: about the sim's 5 ms.
    let ms: f64 = line
        .split("TTFT p50 ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("TTFT p50");
    assert!((4.0..=15.0).contains(&ms), "{line}");
}
