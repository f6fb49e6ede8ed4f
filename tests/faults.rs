//! The fault matrix: `parley sim --fault KIND` against the real `parley bench`, one test per
//! fault. Each checks the client's failure class, that a faulted conversation is abandoned (no
//! later turn of it reaches the server), the exit code where this branch decides it, and that
//! nothing measured is lost: the client's successes equal the sim record's completed requests.
//!
//! The runs are small and serial (`--parallel 1`) so the request order — and so which request
//! each `every=N` fault hits — is the same on every run; timeouts are short so each test takes
//! about a second.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{by_conversation, parley, turn_of, u, Sim};
use serde_json::Value;

/// Sim timing: fast, so each test is about its fault.
const SIM_FAST: [&str; 4] = ["--ttft-base-ms", "1", "--itl-ms", "1"];

/// Three conversations of two turns, one at a time, 8 output tokens each.
const SERIAL: [&str; 10] = [
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

/// Three conversations of two turns with think time: AIPerf's synthetic conversations, `ms`
/// between a reply and the next turn, `parallel` at a time.
fn with_think_time(ms: &'static str, parallel: &'static str) -> Vec<&'static str> {
    vec![
        "--number",
        "3",
        "--parallel",
        parallel,
        "--conversation-turn-mean",
        "2",
        "--conversation-turn-stddev",
        "0",
        "--max-tokens",
        "8",
        "--conversation-turn-delay-mean",
        ms,
        "--conversation-turn-delay-stddev",
        "0",
    ]
}

/// One `parley bench` run that may fail: its exit status, stderr and summary (if written).
struct Run {
    output: Output,
    stderr: String,
    summary: Option<Value>,
    elapsed: Duration,
    _dir: tempfile::TempDir,
}

impl Run {
    fn summary(&self) -> &Value {
        self.summary
            .as_ref()
            .unwrap_or_else(|| panic!("no summary.json; stderr:\n{}", self.stderr))
    }

    fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    fn failures(&self, class: &str) -> u64 {
        self.summary()["requests"]["failures"][class]
            .as_u64()
            .unwrap_or(0)
    }
}

fn find_summary(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    common::find_all(dir, "summary.json").into_iter().next()
}

/// `parley bench ARGS` on one core, exit status not asserted.
fn run(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let output = parley()
        .arg("bench")
        .args(["--cores", "1", "--quiet", "--name", "t", "--outputs-dir"])
        .arg(dir.path())
        .args(args)
        .output()
        .expect("run parley bench");
    let elapsed = start.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let summary = find_summary(dir.path())
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap());
    Run {
        output,
        stderr,
        summary,
        elapsed,
        _dir: dir,
    }
}

/// `run` against `sim` with the model flags.
fn run_on(sim: &Sim, args: &[&str]) -> Run {
    let url = sim.url();
    let mut full = vec!["--url", url.as_str(), "--model", "parley-sim"];
    full.extend_from_slice(args);
    run(&full)
}

fn faulted<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["fault"] == kind).collect()
}

fn completed(records: &[Value]) -> u64 {
    records.iter().filter(|r| r["completed"] == true).count() as u64
}

/// Nothing measured is lost: every request the client counts as a success is one the sim
/// completed, and the other way round.
fn assert_nothing_lost(r: &Run, records: &[Value]) {
    let s = r.summary();
    assert_eq!(
        u(&s["requests"]["succeeded"]),
        completed(records),
        "client successes vs the sim's completed requests; summary {}",
        s["requests"]
    );
}

/// No conversation sent a later turn after a turn that failed with `kind` (a retry of the same
/// turn may follow).
fn assert_abandoned_after(records: &[Value], kind: &str) {
    for (conv, turns) in by_conversation(records) {
        let last_turn = turns.iter().map(turn_of).max().unwrap();
        let failed_turn = turns
            .iter()
            .filter(|r| r["fault"] == kind)
            .map(turn_of)
            .max();
        if let Some(t) = failed_turn {
            assert_eq!(
                t, last_turn,
                "conversation {conv} sent a turn after its {kind} fault"
            );
        }
    }
}

/// The common case: a fault on every second request (serial, so turn 2 of each conversation)
/// that the client must count under `class`, abandoning the conversation. Some requests
/// succeed, so the run exits 0 (no threshold is set).
fn check_failing_fault(fault: &str, class: &str, bench_extra: &[&str]) -> (Run, Vec<Value>) {
    let kind = fault.split(':').next().unwrap();
    let spec = format!("{fault}:every=2");
    let mut sim_args = SIM_FAST.to_vec();
    sim_args.extend(["--fault", &spec]);
    let sim = Sim::start(&sim_args);
    let mut args = SERIAL.to_vec();
    args.extend_from_slice(bench_extra);
    let r = run_on(&sim, &args);
    let records = sim.stop();
    let hit = faulted(&records, kind);
    assert_eq!(hit.len(), 3, "turn 2 of each conversation is faulted");
    assert!(hit.iter().all(|h| h["completed"] == false));
    assert_eq!(
        r.failures(class),
        3,
        "{kind}: failures {}",
        r.summary()["requests"]["failures"]
    );
    assert_eq!(u(&r.summary()["requests"]["failed"]), 3);
    assert_eq!(u(&r.summary()["conversations"]["abandoned"]), 3);
    assert_eq!(
        u(&r.summary()["requests"]["retried"]),
        0,
        "no retry after a response byte"
    );
    assert_abandoned_after(&records, kind);
    assert_nothing_lost(&r, &records);
    assert_eq!(u(&r.summary()["requests"]["succeeded"]), 3);
    assert_eq!(r.code(), Some(0), "some requests succeeded: {}", r.stderr);
    (r, records)
}

#[test]
fn http_500() {
    check_failing_fault("http_500", "http_500", &[]);
}

#[test]
fn http_503() {
    check_failing_fault("http_503", "http_503", &[]);
}

#[test]
fn http_429_is_a_failure_unless_retry_is_asked() {
    let (_, records) = check_failing_fault("http_429", "http_429", &[]);
    assert!(faulted(&records, "http_429")
        .iter()
        .all(|r| r["status"] == 429));
}

/// With --retry-429 the request is sent again after Retry-After (1 s here) and succeeds.
#[test]
fn http_429_retried_after_retry_after_when_asked() {
    let sim = Sim::start(&[&SIM_FAST[..], &["--fault", "http_429:every=2"]].concat());
    let r = run_on(
        &sim,
        &[
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
        ],
    );
    let records = sim.stop();
    let s = r.summary();
    assert_eq!(u(&s["requests"]["failed"]), 0, "{}", s["requests"]);
    assert_eq!(u(&s["requests"]["succeeded"]), 2);
    assert_eq!(u(&s["requests"]["retried"]), 1);
    assert_eq!(faulted(&records, "http_429").len(), 1);
    assert_nothing_lost(&r, &records);
    // The retry waited for Retry-After: 1 s.
    let by = by_conversation(&records);
    let turns = by.values().next().unwrap();
    let (a, b) = (&turns[1], &turns[2]);
    assert_eq!(a["status"], 429);
    assert!(
        u(&b["arrival_ns"]) - u(&a["end_ns"]) >= 900_000_000,
        "retried before Retry-After"
    );
    assert_eq!(r.code(), Some(0));
}

#[test]
fn reset_mid_stream() {
    check_failing_fault("reset_mid_stream", "io", &[]);
}

#[test]
fn truncated_chunked_body() {
    check_failing_fault("truncated_chunked_body", "io", &[]);
}

#[test]
fn malformed_json_event() {
    check_failing_fault("malformed_json_event", "malformed_sse", &[]);
}

#[test]
fn in_band_error_event() {
    check_failing_fault("in_band_error_event", "server_error", &[]);
}

#[test]
fn stall_before_headers() {
    let (r, _) = check_failing_fault(
        "stall_before_headers",
        "read_timeout",
        &["--read-timeout", "0.3"],
    );
    assert!(r.elapsed < Duration::from_secs(20));
}

#[test]
fn stall_mid_stream() {
    check_failing_fault(
        "stall_mid_stream",
        "read_timeout",
        &["--read-timeout", "0.3"],
    );
}

/// `: ping` comments keep the read timeout from ever firing; only the whole-request timeout
/// ends such a request.
#[test]
fn ping_forever_ends_at_the_request_timeout() {
    let (r, records) = check_failing_fault(
        "ping_forever:after=20",
        "request_timeout",
        &["--request-timeout", "0.4", "--read-timeout", "5"],
    );
    assert_eq!(r.failures("read_timeout"), 0);
    for rec in faulted(&records, "ping_forever") {
        let held_ns = u(&rec["end_ns"]) - u(&rec["arrival_ns"]);
        assert!(
            (350_000_000..3_000_000_000).contains(&held_ns),
            "held {held_ns} ns for a 0.4 s request timeout"
        );
    }
}

/// vLLM ends the streams it aborts with finish_reason "abort", a usage chunk and [DONE]; such a
/// truncated reply is not a success.
#[test]
fn abort_mid_stream() {
    let sim = Sim::start(&[&SIM_FAST[..], &["--fault", "abort_mid_stream:every=2"]].concat());
    let r = run_on(&sim, &SERIAL);
    let records = sim.stop();
    let hit = faulted(&records, "abort_mid_stream");
    assert_eq!(hit.len(), 3);
    assert!(hit.iter().all(|h| h["finish_reason"] == "abort"));
    assert_eq!(r.failures("aborted"), 3, "{}", r.summary()["requests"]);
    assert_abandoned_after(&records, "abort_mid_stream");
    assert_nothing_lost(&r, &records);
    assert_eq!(r.code(), Some(0));
}

/// The sim marks an aborted stream as not completed, whatever the client makes of it.
#[test]
fn abort_mid_stream_is_not_completed_in_the_record() {
    let sim = Sim::start(&[&SIM_FAST[..], &["--fault", "abort_mid_stream:every=2"]].concat());
    let _ = run_on(&sim, &SERIAL);
    let records = sim.stop();
    let hit = faulted(&records, "abort_mid_stream");
    assert_eq!(hit.len(), 3);
    for h in hit {
        assert_eq!(h["finish_reason"], "abort");
        assert_eq!(h["completed"], false);
        assert!(u(&h["completion_tokens"]) < u(&h["planned_tokens"]));
    }
}

/// Headers late: the request still succeeds, with the delay in its TTFT.
#[test]
fn slow_headers_succeed_late() {
    let sim = Sim::start(
        &[
            &SIM_FAST[..],
            &["--fault", "slow_headers:every=2:after=300"],
        ]
        .concat(),
    );
    let r = run_on(&sim, &SERIAL);
    let records = sim.stop();
    let s = r.summary();
    assert_eq!(u(&s["requests"]["failed"]), 0, "{}", s["requests"]);
    assert_eq!(u(&s["requests"]["succeeded"]), 6);
    assert_eq!(faulted(&records, "slow_headers").len(), 3);
    assert_nothing_lost(&r, &records);
    let ttft_max = s["ttft_ms"]["max"].as_f64().unwrap();
    assert!(
        ttft_max >= 290.0,
        "TTFT max {ttft_max} ms with headers 300 ms late"
    );
    assert_eq!(r.code(), Some(0));
}

/// The server resets a reused connection when the request arrives (before any response byte):
/// the client retries once on a fresh connection, so every conversation completes. A request
/// that finds the reset on a fresh connection, or a second time, is a real `io` failure.
#[test]
fn reset_before_headers_on_a_reused_connection_is_retried() {
    let sim = Sim::start(&[&SIM_FAST[..], &["--fault", "reset_before_headers:every=2"]].concat());
    let r = run_on(&sim, &SERIAL);
    let records = sim.stop();
    let s = r.summary();
    let hit = faulted(&records, "reset_before_headers").len() as u64;
    assert!(hit >= 3, "{hit}");
    assert_eq!(u(&s["requests"]["failed"]), 0, "{}", s["requests"]);
    assert_eq!(u(&s["requests"]["succeeded"]), 6);
    assert_eq!(u(&s["requests"]["retried"]), hit);
    assert_nothing_lost(&r, &records);
    assert_eq!(r.code(), Some(0));
}

#[test]
fn reset_before_headers_on_every_request_fails_as_io() {
    let sim = Sim::start(&[&SIM_FAST[..], &["--fault", "reset_before_headers"]].concat());
    let r = run_on(&sim, &SERIAL);
    let records = sim.stop();
    let s = r.summary();
    // Each reset kills its connection, so later requests go out on fresh ones and are not
    // retried; only the first, on the connection opened before the run, may be (and its retry
    // is reset too).
    assert_eq!(r.failures("io"), 3, "{}", s["requests"]);
    let retried = u(&s["requests"]["retried"]);
    assert!(retried <= 1, "{retried}");
    assert_eq!(records.len() as u64, 3 + retried);
    assert_eq!(u(&s["conversations"]["abandoned"]), 3);
    assert_abandoned_after(&records, "reset_before_headers");
    assert_nothing_lost(&r, &records);
    // No request succeeded: main exits 0, the verdicts branch 3; never a usage error.
    assert!(matches!(r.code(), Some(0 | 3)), "{:?}", r.code());
}

/// The keep-alive race, made deterministic: after a response the server drops the connection
/// as the client's next request on it arrives, unprocessed. Retried on a fresh connection: no
/// failure, no abandoned conversation, and the record holds exactly the requests measured.
#[test]
fn close_after_response_race_is_retried_not_failed() {
    let sim = Sim::start(&[&SIM_FAST[..], &["--fault", "close_after_response:every=2"]].concat());
    let r = run_on(&sim, &with_think_time("50", "1"));
    let records = sim.stop();
    let s = r.summary();
    assert_eq!(u(&s["requests"]["failed"]), 0, "{}", s["requests"]);
    assert_eq!(u(&s["conversations"]["abandoned"]), 0);
    assert!(u(&s["requests"]["retried"]) > 0, "{}", s["requests"]);
    assert_eq!(u(&s["requests"]["succeeded"]), 6);
    assert_eq!(
        records.len(),
        6,
        "the dropped requests were never processed"
    );
    assert_nothing_lost(&r, &records);
    assert_eq!(r.code(), Some(0));
}

/// A server that closes idle keep-alive connections, with think time longer than its idle
/// limit: nothing fails and nothing is lost.
#[test]
fn close_idle_with_think_time_loses_nothing() {
    let sim = Sim::start(&[&SIM_FAST[..], &["--fault", "close_idle:after=30"]].concat());
    let r = run_on(&sim, &with_think_time("100", "2"));
    let records = sim.stop();
    let s = r.summary();
    assert_eq!(u(&s["requests"]["failed"]), 0, "{}", s["requests"]);
    assert_eq!(u(&s["requests"]["succeeded"]), 6);
    assert_eq!(records.len(), 6);
    assert_nothing_lost(&r, &records);
    assert_eq!(r.code(), Some(0));
}

/// A port nobody listens on: the run stops after a few connect failures, with a message, instead
/// of failing every conversation of the dataset.
#[test]
fn dead_target_stops_early() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let r = run(&[
        "--url",
        &url,
        "--model",
        "m",
        "--number",
        "5000",
        "--parallel",
        "4",
        "--max-consecutive-connect-failures",
        "20",
    ]);
    assert!(r.stderr.contains("stopped early"), "{}", r.stderr);
    assert!(r.stderr.contains("--max-consecutive-connect-failures"));
    let connect = r.failures("connect");
    assert!(
        (20..=40).contains(&connect),
        "{connect} connect failures for a limit of 20"
    );
    assert!(r.elapsed < Duration::from_secs(20));

    // The default: 100 in a row (more than this core's 4 slots).
    let r = run(&[
        "--url",
        &url,
        "--model",
        "m",
        "--number",
        "5000",
        "--parallel",
        "4",
    ]);
    assert!(r.stderr.contains("stopped early"), "{}", r.stderr);
    let connect = r.failures("connect");
    assert!(
        (100..=120).contains(&connect),
        "{connect} connect failures by default"
    );
}

/// The pre-flight wait: a dead target fails after the timeout with a clear message and no
/// traffic; a live one passes.
#[test]
fn wait_for_model_timeout() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let r = run(&[
        "--url",
        &url,
        "--model",
        "m",
        "--number",
        "5",
        "--wait-for-model-timeout",
        "1",
    ]);
    assert_ne!(r.code(), Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("--wait-for-model-timeout"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("did not answer"), "{}", r.stderr);
    assert!(r.summary.is_none(), "nothing was run");
    assert!(
        r.elapsed >= Duration::from_millis(900) && r.elapsed < Duration::from_secs(60),
        "{:?}",
        r.elapsed
    );

    let sim = Sim::start(&SIM_FAST);
    let r = run_on(&sim, &["--number", "2", "--wait-for-model-timeout", "5"]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr);
    let records = sim.stop();
    assert_nothing_lost(&r, &records);
}

/// Timeouts are range-checked: no panic on a huge or non-positive value.
#[test]
fn timeouts_are_range_checked() {
    for (flag, value) in [
        ("--read-timeout", "1e300"),
        ("--connect-timeout", "1e300"),
        ("--request-timeout", "1e300"),
        ("--request-timeout", "0"),
        ("--wait-for-model-timeout", "=-1"),
        ("--wait-for-model-timeout", "1e300"),
    ] {
        let arg = match value.strip_prefix('=') {
            Some(v) => format!("{flag}={v}"),
            None => format!("{flag}={value}"),
        };
        let stderr = common::bench_err(&["--number", "1", &arg]);
        assert!(
            stderr.contains(flag.trim_start_matches('-')),
            "{flag} {value}: {stderr}"
        );
    }
}
