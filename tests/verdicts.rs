//! Issue 11: verdicts a CI job can trust. The real binary against `parley sim` (and, for replies
//! the sim never sends, a canned server on 127.0.0.1): success rules, the server's error text,
//! exit codes, goodput and thresholds, and a sim that refuses a port already served.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{f, parley, u, Sim};
use serde_json::Value;

/// `parley bench ARGS` (quiet, outputs in a temporary directory) whatever its exit code: the
/// output and summary.json, if one was written.
fn run_bench(args: &[&str]) -> (Output, Option<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let output = parley()
        .arg("bench")
        .args(args)
        .args(["--quiet", "--name", "t", "--outputs-dir"])
        .arg(dir.path())
        .output()
        .expect("run parley bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (output, find_summary(dir.path()))
}

fn find_summary(dir: &Path) -> Option<Value> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(v) = find_summary(&path) {
                return Some(v);
            }
        } else if path.file_name().is_some_and(|n| n == "summary.json") {
            return Some(serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap());
        }
    }
    None
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn sim_args(sim: &Sim, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["--url", &sim.url(), "--model", "parley-sim", "--cores", "1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Exit 3 when no request succeeds, and the server's messages reach summary.json and the
/// console: the first three distinct ones of the class.
#[test]
fn nothing_measured_exits_3_with_the_server_messages() {
    let sim = Sim::start(&["--ttft-base-ms", "1", "--itl-ms", "1", "--fail-every", "1"]);
    let args = sim_args(
        &sim,
        &["--number", "5", "--parallel", "1", "--max-turns", "1"],
    );
    let (out, summary) = run_bench(&refs(&args));
    let records = sim.stop();
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("parley: exit 3: nothing measurable"),
        "{}",
        stderr(&out)
    );
    let s = summary.expect("summary written");
    assert_eq!(
        u(&s["requests"]["failures"]["http_500"]),
        records.len() as u64
    );
    assert_eq!(f(&s["requests"]["error_rate"]), 1.0);
    let messages: Vec<&str> = s["requests"]["failure_messages"]["http_500"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    // The sim's own error text, one per request it failed; only the first three are kept.
    let mut sent: Vec<String> = records
        .iter()
        .map(|r| r["error"].as_str().unwrap().to_string())
        .collect();
    sent.sort();
    assert_eq!(messages.len(), 3, "{messages:?}");
    for m in &messages {
        assert!(
            m.starts_with("injected failure: request ") && sent.iter().any(|s| s == m),
            "{m} not among {sent:?}"
        );
    }
    assert!(
        stdout(&out).contains(&format!("  http_500: {}", messages[0])),
        "{}",
        stdout(&out)
    );
}

/// Exit 3 when the target is unreachable (today: exit 0).
#[test]
fn unreachable_target_exits_3() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let (out, summary) = run_bench(&[
        "--url",
        &url,
        "--model",
        "m",
        "--cores",
        "1",
        "--number",
        "3",
        "--parallel",
        "1",
    ]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let s = summary.expect("summary written");
    assert_eq!(u(&s["requests"]["succeeded"]), 0);
    assert_eq!(u(&s["requests"]["failures"]["connect"]), 3);
}

/// Exit 1 when a threshold is breached, saying which and by how much; 0 when all are met.
/// Goodput counts the successes that meet every per-request limit.
#[test]
fn thresholds_decide_exit_1_and_goodput_is_reported() {
    let sim = Sim::start(&["--ttft-base-ms", "20", "--itl-ms", "1", "--fail-every", "4"]);
    let base = [
        "--number",
        "8",
        "--parallel",
        "2",
        "--max-turns",
        "1",
        "--max-tokens",
        "4",
    ];
    // 8 requests, every 4th fails: error rate 0.25.
    let args = sim_args(&sim, &[&base[..], &["--max-error-rate", "0.1"]].concat());
    let (out, summary) = run_bench(&refs(&args));
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("Thresholds: 1 of 1 FAILED")
            && text.contains("FAILED error_rate = 0.25, above the maximum 0.1 by 0.15 (+150.0 %)"),
        "{text}"
    );
    assert!(stderr(&out).contains("parley: exit 1: threshold breached: error_rate"));
    let s = summary.unwrap();
    assert_eq!(s["thresholds"][0]["met"], false);
    assert_eq!(f(&s["thresholds"][0]["value"]), 0.25);

    // TTFT ≥ 20 ms at the sim: a 1 ms p99 cannot be met, a minute can.
    let args = sim_args(
        &sim,
        &[
            &base[..],
            &["--slo", "ttft_p99_ms=1", "--goodput", "ttft:1"],
        ]
        .concat(),
    );
    let (out, summary) = run_bench(&refs(&args));
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("FAILED ttft_p99_ms = ")
            && stdout(&out).contains("above the maximum 1 by"),
        "{}",
        stdout(&out)
    );
    assert_eq!(u(&summary.unwrap()["goodput"]["good_requests"]), 0);

    let args = sim_args(
        &sim,
        &[
            &base[..],
            &[
                "--slo",
                "ttft_p99_ms=60000,error_rate=0.5",
                "--goodput",
                "ttft:60000",
                "e2el:60000",
            ],
        ]
        .concat(),
    );
    let (out, summary) = run_bench(&refs(&args));
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("Thresholds: all 2 met"),
        "{}",
        stdout(&out)
    );
    let s = summary.unwrap();
    let ok = u(&s["requests"]["succeeded"]);
    assert_eq!(ok, 6);
    assert_eq!(u(&s["goodput"]["good_requests"]), ok);
    assert_eq!(f(&s["goodput"]["share"]), 0.75);
    sim.stop();
}

/// Exit 2 on a usage error, before anything is sent.
#[test]
fn bad_threshold_exits_2_and_sends_nothing() {
    let sim = Sim::start(&[]);
    for extra in [
        &["--slo", "ttft_p97_ms=5"][..],
        &["--goodput", "ttfb:5"],
        &["--max-error-rate", "2"],
    ] {
        let args = sim_args(&sim, extra);
        let (out, summary) = run_bench(&refs(&args));
        assert_eq!(code(&out), 2, "{extra:?}: {}", stderr(&out));
        assert!(stderr(&out).starts_with("error: --"), "{}", stderr(&out));
        assert!(summary.is_none());
    }
    assert!(sim.stop().is_empty(), "a request was sent");
}

/// A server that answers every request with `body` (an SSE stream, close-delimited), as a
/// server the sim does not imitate would; returns its port.
fn canned_server(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut request = vec![0; length];
            let _ = reader.read_exact(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{body}"
            );
        }
    });
    port
}

/// Issue 11: vLLM's aborted streams (finish_reason "abort", usage, [DONE]) and role-only
/// streams counted as successes; they fail now, by class, and exit 3.
#[test]
fn aborted_and_empty_streams_fail_by_class() {
    let abort = canned_server(concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"abort\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\n\n",
        "data: [DONE]\n\n",
    ));
    let prelude_only = canned_server(concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
        "data: [DONE]\n\n",
    ));
    for (port, class) in [(abort, "aborted"), (prelude_only, "no_finish_reason")] {
        let url = format!("http://127.0.0.1:{port}");
        let (out, summary) = run_bench(&[
            "--url",
            &url,
            "--model",
            "m",
            "--cores",
            "1",
            "--number",
            "3",
            "--parallel",
            "1",
            "--no-preconnect",
        ]);
        assert_eq!(code(&out), 3, "{class}: {}", stderr(&out));
        let s = summary.unwrap();
        assert_eq!(u(&s["requests"]["failures"][class]), 3, "{s}");
        assert_eq!(u(&s["requests"]["succeeded"]), 0);
        // Nothing of theirs enters the figures.
        assert_eq!(u(&s["ttft_ms"]["count"]), 0);
        assert_eq!(u(&s["output_tokens"]["count"]), 0);
    }
}

/// Issue 11: a second `parley sim` on a port another one serves split the traffic silently
/// (SO_REUSEPORT); it refuses to start now.
#[test]
fn second_sim_on_a_served_port_refuses_to_start() {
    let sim = Sim::start(&[]);
    let port = sim.port.to_string();
    let mut child = parley()
        .args(["sim", "--port", &port])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the second sim started on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("already listens on this port"), "{err}");
    sim.stop();
}

/// The exit codes are in `parley bench --help`.
#[test]
fn exit_codes_are_in_bench_help() {
    let out = parley().args(["bench", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = stdout(&out);
    for line in [
        "Exit codes:",
        "0    completed, and every --slo / --max-error-rate threshold met",
        "1    completed, but a threshold was breached",
        "2    usage or input error",
        "3    nothing measurable",
        "130  interrupted by SIGINT (143: SIGTERM, 129: SIGHUP)",
        "--goodput <NAME:MS>...",
        "--slo <NAME=LIMIT,...>",
        "--max-error-rate <R>",
    ] {
        assert!(help.contains(line), "missing {line:?} in\n{help}");
    }
}
