//! Issue 10 §2, per-request records: `records.jsonl` and AIPerf's `profile_export.jsonl` held
//! against the sim's record — one line per request the server saw, the same tokens, times on
//! the same monotonic clock in causal order, failures with their class, lines present after a
//! signal, and no files with `--no-records`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{bench, bench_err, find_all, parley, u, Sim};
use serde_json::Value;

/// The run's only file `name`, one JSON value per line.
fn lines_of(dir: &Path, name: &str) -> Vec<Value> {
    let paths = find_all(dir, name);
    assert_eq!(paths.len(), 1, "{name}: {paths:?}");
    std::fs::read_to_string(&paths[0])
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {e}: {l}")))
        .collect()
}

/// Lines keyed by (conversation, turn, attempt).
fn keyed(records: &[Value]) -> BTreeMap<(u64, u64, u64), Value> {
    let mut map = BTreeMap::new();
    for r in records {
        let key = (
            u(&r["conversation"]),
            u(&r["turn"]),
            r["attempt"].as_u64().unwrap_or(0),
        );
        assert!(map.insert(key, r.clone()).is_none(), "duplicate {key:?}");
    }
    map
}

/// The sim's record keyed by (conversation, turn): one request each when nothing is retried.
fn sim_keyed(records: &[Value]) -> BTreeMap<(u64, u64), Value> {
    let mut map = BTreeMap::new();
    for r in records {
        let key = (u(&r["conversation"]), u(&r["turn"]));
        assert!(
            map.insert(key, r.clone()).is_none(),
            "sim: duplicate {key:?}"
        );
    }
    map
}

/// Client and server stamp the same event at different points (a socket read, a hand-over to
/// the connection); on a busy machine a wake-up can be this late.
const SLACK_NS: u64 = 50_000_000;

#[test]
fn one_record_per_request_with_the_sims_tokens_and_times() {
    let sim = Sim::start(&[
        "--ttft-base-ms",
        "20",
        "--ttft-per-uncached-token-us",
        "0",
        "--itl-ms",
        "5",
    ]);
    let url = format!("http://user:s3cret@127.0.0.1:{}", sim.port);
    let run = bench(&[
        "--url",
        &url,
        "--model",
        "parley-sim",
        "--cores",
        "1",
        "--number",
        "10",
        "--parallel",
        "4",
        "--warmup-conversations",
        "2",
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
    let truth = sim.stop();
    let records = lines_of(run.dir(), "records.jsonl");
    let s = &run.summary;
    assert!(
        run.stdout.contains("records.jsonl") && run.stdout.contains("profile_export.jsonl"),
        "the console names the files: {}",
        run.stdout
    );

    // Every request the sim saw, once; warmup ones marked so.
    assert_eq!(records.len(), truth.len());
    assert_eq!(records.len(), 36);
    let warmup = records.iter().filter(|r| r["phase"] == "warmup").count();
    assert_eq!(warmup, 6, "2 warmup conversations × 3 turns");
    let measured: Vec<&Value> = records
        .iter()
        .filter(|r| r["phase"] == "measured")
        .collect();
    assert_eq!(measured.len() as u64, u(&s["requests"]["total"]));
    assert!(records.iter().all(|r| r["status"] == "ok"));
    let sim = sim_keyed(&truth);
    for r in &records {
        let what = format!("conversation {} turn {}", r["conversation"], r["turn"]);
        let t = &sim[&(u(&r["conversation"]), u(&r["turn"]))];
        assert_eq!(
            r["url"],
            format!("http://***@127.0.0.1:{}", common_port(&url))
        );
        assert_eq!(r["tokens_from_usage"], true);
        for (mine, theirs) in [
            ("prompt_tokens", "prompt_tokens"),
            ("cached_tokens", "cached_tokens"),
            ("output_tokens", "completion_tokens"),
        ] {
            assert_eq!(r[mine], t[theirs], "{what}: {mine}");
        }
        // Times: the client's send, the server's arrival and first token, the client's first
        // token, the server's last byte, the client's last read — in causal order.
        let (intended, start, send) = (u(&r["intended_ns"]), u(&r["start_ns"]), u(&r["send_ns"]));
        let (first, end) = (u(&r["first_token_ns"]), u(&r["end_ns"]));
        let (arrival, sim_first, sim_end) = (
            u(&t["arrival_ns"]),
            u(&t["first_token_ns"]),
            u(&t["end_ns"]),
        );
        assert!(intended <= start + SLACK_NS, "{what}: intended after start");
        assert!(
            start <= send && send <= arrival,
            "{what}: send {send} arrival {arrival}"
        );
        assert!(
            arrival <= sim_first && sim_first <= first,
            "{what}: first token"
        );
        assert!(sim_end <= end && end - sim_end < SLACK_NS, "{what}: end");
        assert_eq!(u(&r["ttft_ns"]), first - start, "{what}");
        assert_eq!(u(&r["latency_ns"]), end - start, "{what}");
        let sim_ttft = sim_first - arrival;
        assert!(
            u(&r["ttft_ns"]) >= sim_ttft && u(&r["ttft_ns"]) - sim_ttft < SLACK_NS,
            "{what}: TTFT {} vs the sim's {sim_ttft}",
            r["ttft_ns"]
        );
        // One gap between each two of the sim's chunks; 5 ms apart on the sim's side.
        let chunks = t["chunk_ns"].as_array().unwrap().len() as u64;
        assert_eq!(u(&r["itl_count"]), chunks - 1, "{what}");
        let (mean, p50, max) = (
            u(&r["itl_mean_ns"]),
            u(&r["itl_p50_ns"]),
            u(&r["itl_max_ns"]),
        );
        assert!(mean <= max && p50 <= max, "{what}");
        assert!(
            (3_000_000..5_000_000 + SLACK_NS).contains(&p50),
            "{what}: ITL p50 {p50} for 5 ms chunks"
        );
    }

    // AIPerf's file: the same requests, in the keys AIPerf's readers use.
    let aiperf = lines_of(run.dir(), "profile_export.jsonl");
    assert_eq!(aiperf.len(), records.len());
    let now_epoch_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    for (a, r) in aiperf.iter().zip(&records) {
        let m = &a["metadata"];
        for k in [
            "session_num",
            "x_request_id",
            "x_correlation_id",
            "conversation_id",
            "turn_index",
            "request_start_ns",
            "request_ack_ns",
            "request_end_ns",
            "worker_id",
            "record_processor_id",
            "benchmark_phase",
            "was_cancelled",
            "cancellation_time_ns",
        ] {
            assert!(m.get(k).is_some(), "metadata.{k}: {a}");
        }
        assert_eq!(m["session_num"], r["conversation"]);
        assert_eq!(m["turn_index"], r["turn"]);
        let phase = if r["phase"] == "warmup" {
            "warmup"
        } else {
            "profiling"
        };
        assert_eq!(m["benchmark_phase"], phase);
        // Unix epoch ns (AIPerf's clock), one offset for every time of the run.
        let (start, end) = (u(&m["request_start_ns"]), u(&m["request_end_ns"]));
        assert!(now_epoch_ns - end < 120_000_000_000, "epoch ns: {end}");
        assert_eq!(end - start, u(&r["latency_ns"]));
        let metrics = a["metrics"].as_object().unwrap();
        for (tag, v) in metrics {
            assert!(
                v["value"].is_number() && v["unit"].is_string(),
                "{tag}: {v}"
            );
        }
        let ms = |tag: &str| metrics[tag]["value"].as_f64().unwrap();
        assert_eq!(metrics["time_to_first_token"]["unit"], "ms");
        assert!((ms("time_to_first_token") - u(&r["ttft_ns"]) as f64 / 1e6).abs() < 1e-9);
        assert!((ms("request_latency") - u(&r["latency_ns"]) as f64 / 1e6).abs() < 1e-9);
        assert_eq!(
            metrics["input_sequence_length"]["value"],
            r["prompt_tokens"]
        );
        assert_eq!(
            metrics["output_sequence_length"]["value"],
            r["output_tokens"]
        );
        assert_eq!(metrics["output_sequence_length"]["unit"], "tokens");
        assert_eq!(metrics["inter_token_latency"]["unit"], "ms");
        assert!(a["error"].is_null());
    }
}

/// The port of `http://…:PORT`.
fn common_port(url: &str) -> &str {
    url.rsplit(':').next().unwrap()
}

/// Three conversations of two turns, one at a time, fast.
const SERIAL: [&str; 14] = [
    "--model",
    "parley-sim",
    "--cores",
    "1",
    "--number",
    "3",
    "--parallel",
    "1",
    "--min-turns",
    "2",
    "--max-turns",
    "2",
    "--max-tokens",
    "8",
];

#[test]
fn failed_and_retried_requests_are_recorded_with_their_class() {
    // Every third request fails with a 500: turn 2 of conversation 0, turn 1 of 2, …
    let sim = Sim::start(&[
        "--ttft-base-ms",
        "1",
        "--itl-ms",
        "1",
        "--fault",
        "http_500:every=3",
    ]);
    let url = sim.url();
    let mut args = vec!["--url", url.as_str()];
    args.extend(SERIAL);
    let run = bench(&args);
    let truth = sim.stop();
    let records = lines_of(run.dir(), "records.jsonl");
    assert_eq!(records.len(), truth.len(), "every request the sim saw");
    let sim = sim_keyed(&truth);
    let failed: Vec<&Value> = records.iter().filter(|r| r["status"] == "failed").collect();
    let faulted = truth.iter().filter(|t| t["fault"] == "http_500").count();
    assert!(faulted > 0);
    assert_eq!(failed.len(), faulted);
    assert_eq!(
        failed.len() as u64,
        u(&run.summary["requests"]["failures"]["http_500"]),
        "the summary's class count"
    );
    for r in &failed {
        let t = &sim[&(u(&r["conversation"]), u(&r["turn"]))];
        assert_eq!(t["fault"], "http_500", "{r}");
        assert_eq!(r["failure"], "http_500");
        assert_eq!(r["http_status"], 500);
        assert!(r["message"].as_str().unwrap().contains("injected"), "{r}");
        assert!(r["first_token_ns"].is_null() && r["ttft_ns"].is_null());
        assert!(u(&r["send_ns"]) <= u(&t["arrival_ns"]));
    }
    let ok = records.iter().filter(|r| r["status"] == "ok").count();
    let completed = truth.iter().filter(|t| t["completed"] == true).count();
    assert_eq!(ok, completed);
    assert_eq!(ok as u64, u(&run.summary["requests"]["succeeded"]));
    // AIPerf's error object for each failure.
    let aiperf = lines_of(run.dir(), "profile_export.jsonl");
    let errors: Vec<&Value> = aiperf.iter().filter(|a| !a["error"].is_null()).collect();
    assert_eq!(errors.len(), failed.len());
    for e in errors {
        assert_eq!(e["error"]["code"], 500);
        assert_eq!(e["error"]["type"], "http_500");
        assert!(e["error"]["message"].is_string());
        assert!(e["metrics"].get("time_to_first_token").is_none());
    }

    // A 429 retried after its Retry-After: the first attempt is a record of its own.
    let sim = Sim::start(&[
        "--ttft-base-ms",
        "1",
        "--itl-ms",
        "1",
        "--fault",
        "http_429:every=2",
    ]);
    let url = sim.url();
    let run = bench(&[
        "--url",
        &url,
        "--model",
        "parley-sim",
        "--cores",
        "1",
        "--number",
        "1",
        "--parallel",
        "1",
        "--min-turns",
        "2",
        "--max-turns",
        "2",
        "--max-tokens",
        "8",
        "--retry-429",
    ]);
    let truth = sim.stop();
    let records = keyed(&lines_of(run.dir(), "records.jsonl"));
    assert_eq!(records.len(), truth.len());
    assert_eq!(records.len(), 3);
    let retried = &records[&(0, 1, 0)];
    assert_eq!(retried["status"], "retried");
    assert_eq!(retried["failure"], "http_429");
    let again = &records[&(0, 1, 1)];
    assert_eq!(again["status"], "ok");
    assert!(u(&again["send_ns"]) >= u(&retried["end_ns"]) + 900_000_000);
    assert_eq!(u(&run.summary["requests"]["retried"]), 1);
}

/// `parley bench` in the background until a signal; `dir` gets its outputs.
fn run_until_signal(sim: &Sim, dir: &Path, args: &[&str], signals: &[(u64, libc::c_int)]) {
    let url = sim.url();
    let mut child = parley()
        .args([
            "bench",
            "--url",
            &url,
            "--model",
            "parley-sim",
            "--cores",
            "1",
        ])
        .args(args)
        .args(["--quiet", "--name", "t", "--outputs-dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for &(after_ms, sig) in signals {
        std::thread::sleep(Duration::from_millis(after_ms));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(130), "exit after SIGINT");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("parley bench did not stop after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn records_are_flushed_after_sigint_and_cancelled_requests_are_recorded() {
    // Four conversations answer their first turn (≈ 100 ms), then think for 4 s: SIGINT while
    // they think. Everything measured so far is in the file.
    let sim = Sim::start(&["--ttft-base-ms", "5", "--itl-ms", "10"]);
    let dir = tempfile::tempdir().unwrap();
    let thinking = [
        "--parallel",
        "4",
        "--number",
        "40",
        "--conversation-turn-mean",
        "4",
        "--output-tokens-mean",
        "10",
        "--conversation-turn-delay-mean",
        "4000",
    ];
    run_until_signal(&sim, dir.path(), &thinking, &[(2000, libc::SIGINT)]);
    let truth = sim.stop();
    let records = lines_of(dir.path(), "records.jsonl");
    assert!(!truth.is_empty());
    assert_eq!(records.len(), truth.len(), "every request the sim saw");
    let sim = sim_keyed(&truth);
    for r in &records {
        assert_eq!(r["status"], "ok");
        let t = &sim[&(u(&r["conversation"]), u(&r["turn"]))];
        assert_eq!(r["output_tokens"], t["completion_tokens"]);
    }
    assert_eq!(
        lines_of(dir.path(), "profile_export.jsonl").len(),
        records.len()
    );

    // Replies of 1,000 tokens × 10 ms, cut off by a second SIGINT: each is a `cancelled` record.
    let sim = Sim::start(&[
        "--ttft-base-ms",
        "5",
        "--itl-ms",
        "10",
        "--default-output-tokens",
        "1000",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let long = [
        "--parallel",
        "4",
        "--number",
        "8",
        "--min-turns",
        "2",
        "--max-turns",
        "2",
        "--max-tokens",
        "1000",
    ];
    run_until_signal(
        &sim,
        dir.path(),
        &long,
        &[(1000, libc::SIGINT), (300, libc::SIGINT)],
    );
    let truth = sim.stop();
    let records = lines_of(dir.path(), "records.jsonl");
    assert_eq!(truth.len(), 4);
    assert_eq!(records.len(), 4);
    for r in &records {
        assert_eq!(r["status"], "cancelled", "{r}");
        assert_eq!(r["turn"], 0);
        assert!(r["failure"].is_null());
    }
    let aiperf = lines_of(dir.path(), "profile_export.jsonl");
    assert!(aiperf
        .iter()
        .all(|a| a["metadata"]["was_cancelled"] == true && a["error"]["code"] == 499));
}

#[test]
fn no_records_writes_none() {
    let sim = Sim::start(&["--ttft-base-ms", "1", "--itl-ms", "1"]);
    let url = sim.url();
    for off in [&["--no-records"][..], &["--export-level", "summary"]] {
        let mut args = vec!["--url", url.as_str()];
        args.extend(SERIAL);
        args.extend(off);
        let run = bench(&args);
        assert!(find_all(run.dir(), "records.jsonl").is_empty(), "{off:?}");
        assert!(find_all(run.dir(), "profile_export.jsonl").is_empty());
        assert!(!run.stdout.contains("records.jsonl"));
        assert_eq!(u(&run.summary["requests"]["succeeded"]), 6);
    }
    let err = bench_err(&[
        "--url",
        &url,
        "--model",
        "parley-sim",
        "--export-level",
        "raw",
    ]);
    assert!(
        err.contains("--export-level") && err.contains("not implemented"),
        "{err}"
    );
    sim.stop();
}
