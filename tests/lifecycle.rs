//! Issue 11 §7, §9, §10: a run's lifecycle against the real binary — signals (SIGINT, SIGTERM,
//! SIGHUP: stop claiming, cut think time short, `--grace`, a second signal, exit 128 + signal,
//! the report always written), outputs that are safe (checked before traffic, never colliding,
//! a closed stdout), file-descriptor limits and URL credentials. The sim's record is the truth
//! of what was sent, and when.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// CLOCK_MONOTONIC in ns: the clock of the sim's record.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A `parley bench` child against `sim` with its outputs in `dir`, and its stderr lines.
struct Running {
    child: Child,
    stderr: mpsc::Receiver<String>,
    /// Every stderr line so far.
    seen: Vec<String>,
}

impl Running {
    fn start(sim: &Sim, dir: &Path, args: &[&str]) -> Running {
        let mut child = parley()
            .args([
                "bench",
                "--url",
                &sim.url(),
                "--model",
                "parley-sim",
                "--cores",
                "1",
            ])
            .args(args)
            .args(["--name", "t", "--outputs-dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn parley bench");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            stderr: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for the line `parley: …` that the run prints as its first point starts.
    fn wait_started(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let started = line.starts_with("parley: ");
                    self.seen.push(line);
                    if started {
                        return;
                    }
                }
                Err(e) => panic!("the run did not start ({e}): {:?}", self.seen),
            }
        }
    }

    fn kill(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits (at most `limit`) for the exit; returns the exit code and how long it took.
    fn wait(&mut self, limit: Duration) -> (i32, Duration) {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let took = t0.elapsed();
                while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                let code = status
                    .code()
                    .unwrap_or_else(|| panic!("killed by a signal: {status}: {:?}", self.seen));
                return (code, took);
            }
            if t0.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "parley bench did not exit within {limit:?}: {:?}",
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn summary_in(dir: &Path) -> Value {
    let paths = find_all(dir, "summary.json");
    assert_eq!(paths.len(), 1, "one summary.json: {paths:?}");
    serde_json::from_slice(&std::fs::read(&paths[0]).unwrap()).unwrap()
}

/// Four conversations of four turns with 4 s of think time; replies ≈ 100 ms.
const THINKING: &[&str] = &[
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

#[test]
fn each_signal_stops_at_once_writes_the_report_and_exits_128_plus_it() {
    for (sig, name, code) in [
        (libc::SIGINT, "SIGINT", 130),
        (libc::SIGTERM, "SIGTERM", 143),
        (libc::SIGHUP, "SIGHUP", 129),
    ] {
        let sim = Sim::start(&["--ttft-base-ms", "5", "--itl-ms", "10"]);
        let dir = tempfile::tempdir().unwrap();
        let mut run = Running::start(&sim, dir.path(), THINKING);
        run.wait_started();
        // Every conversation's first turn (≈ 100 ms) is done; all are thinking.
        std::thread::sleep(Duration::from_millis(1500));
        let signal_ns = mono_ns();
        run.kill(sig);
        let (exit, took) = run.wait(Duration::from_secs(20));
        let records = sim.stop();
        assert_eq!(exit, code, "{name}: {:?}", run.seen);
        // Think time is cut short: the run does not wait out the 4 s (nor the 5 s --grace,
        // with nothing in flight). It takes ≈ 0.3 s; the bound allows for a busy machine.
        assert!(took < Duration::from_millis(2500), "{name}: took {took:?}");
        let s = summary_in(dir.path());
        assert_eq!(s["interrupted"], true);
        assert_eq!(s["interrupted_by"], name);
        assert_eq!(
            u(&s["requests"]["succeeded"]),
            4,
            "{name}: {}",
            s["requests"]
        );
        assert_eq!(u(&s["requests"]["cancelled"]), 0);
        assert_eq!(u(&s["conversations"]["interrupted"]), 4);
        assert_eq!(records.len(), 4, "{name}: only the first turns were sent");
        for r in &records {
            assert!(
                u(&r["arrival_ns"]) < signal_ns,
                "{name}: a request arrived {} ms after the signal",
                (u(&r["arrival_ns"]) - signal_ns) as f64 / 1e6
            );
        }
    }
}

#[test]
fn requests_in_flight_get_grace_then_are_cancelled_and_a_second_signal_cancels_at_once() {
    // 1,000 tokens × 10 ms: each reply takes ≈ 10 s.
    let sim = Sim::start(&[
        "--ttft-base-ms",
        "5",
        "--itl-ms",
        "10",
        "--default-output-tokens",
        "1000",
    ]);
    let long = ["--parallel", "4", "--number", "8", "--min-turns", "2"];
    let long: Vec<&str> = long
        .iter()
        .copied()
        .chain(["--max-turns", "2", "--max-tokens", "1000"])
        .collect();

    // --grace 1: the replies in flight are cut off ≈ 1 s after the signal.
    let dir = tempfile::tempdir().unwrap();
    let mut args = long.clone();
    args.extend(["--grace", "1"]);
    let mut run = Running::start(&sim, dir.path(), &args);
    run.wait_started();
    std::thread::sleep(Duration::from_millis(500));
    run.kill(libc::SIGTERM);
    let (exit, took) = run.wait(Duration::from_secs(20));
    assert_eq!(exit, 143, "{:?}", run.seen);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(4000),
        "--grace 1: took {took:?}"
    );
    let s = summary_in(dir.path());
    assert_eq!(u(&s["requests"]["cancelled"]), 4, "{}", s["requests"]);
    assert_eq!(u(&s["requests"]["succeeded"]), 0);
    assert_eq!(u(&s["requests"]["failed"]), 0);
    assert_eq!(u(&s["conversations"]["cancelled"]), 4);

    // Default --grace (5 s), but a second signal cancels at once, and the report is written.
    let dir = tempfile::tempdir().unwrap();
    let mut run = Running::start(&sim, dir.path(), &long);
    run.wait_started();
    std::thread::sleep(Duration::from_millis(500));
    run.kill(libc::SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    run.kill(libc::SIGINT);
    let (exit, took) = run.wait(Duration::from_secs(20));
    assert_eq!(exit, 130, "{:?}", run.seen);
    assert!(
        took < Duration::from_millis(3000),
        "second Ctrl-C: took {took:?}"
    );
    let s = summary_in(dir.path());
    assert_eq!(s["interrupted_by"], "SIGINT");
    assert_eq!(u(&s["requests"]["cancelled"]), 4, "{}", s["requests"]);

    let records = sim.stop();
    assert_eq!(records.len(), 8, "no second turn was sent");
    for r in &records {
        assert_eq!(r["aborted"], true, "every reply was cut off: {r}");
        assert!(u(&r["completion_tokens"]) < 1000);
    }
}

#[test]
fn a_signal_while_the_dataset_is_built_exits_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    // Synthesising 200,000 conversations takes tens of seconds; nothing listens on port 1.
    let mut child = parley()
        .args([
            "bench",
            "--url",
            "127.0.0.1:1",
            "--model",
            "m",
            "--cores",
            "1",
        ])
        .args([
            "--number",
            "200000",
            "--conversation-turn-mean",
            "4",
            "--quiet",
        ])
        .arg("--outputs-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "still building");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still building 10 s after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = t0.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("nothing was sent"), "{stderr}");
}

#[test]
fn an_unusable_outputs_dir_is_an_error_before_any_traffic() {
    let sim = Sim::start(&["--ttft-base-ms", "1", "--itl-ms", "0"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let output = parley()
        .args([
            "bench",
            "--url",
            &sim.url(),
            "--model",
            "parley-sim",
            "--cores",
            "1",
        ])
        .args(["--number", "3", "--quiet", "--outputs-dir"])
        .arg(file.join("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--outputs-dir"), "{stderr}");
    assert!(stderr.contains("a-file/out"), "{stderr}");
    assert!(sim.stop().is_empty(), "nothing was sent");
}

#[test]
fn runs_with_the_same_name_at_the_same_time_never_share_a_directory() {
    let sim = Sim::start(&["--ttft-base-ms", "1", "--itl-ms", "0"]);
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<Child> = (0..3)
        .map(|_| {
            parley()
                .args(["bench", "--url", &sim.url(), "--model", "parley-sim"])
                .args(["--cores", "1", "--number", "2", "--quiet", "--name", "same"])
                .arg("--outputs-dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let summaries = find_all(dir.path(), "summary.json");
    assert_eq!(summaries.len(), 3, "{summaries:?}");
    // No temporary file is left beside them.
    let mut files = Vec::new();
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    assert!(
        files
            .iter()
            .all(|f| !f.file_name().unwrap().to_string_lossy().contains(".tmp")),
        "{files:?}"
    );
    sim.stop();
}

#[test]
fn a_closed_stdout_neither_panics_nor_loses_the_report() {
    let sim = Sim::start(&["--ttft-base-ms", "1", "--itl-ms", "0"]);
    for quiet in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = parley();
        cmd.args([
            "bench",
            "--url",
            &sim.url(),
            "--model",
            "parley-sim",
            "--cores",
            "1",
        ])
        .args(["--number", "3", "--parallel", "1,2", "--outputs-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if quiet {
            cmd.arg("--quiet");
        }
        let mut child = cmd.spawn().unwrap();
        // The reader goes away before anything is written (`… | true`); without --quiet
        // stderr goes too (`… 2>&1 | head -1`).
        drop(child.stdout.take());
        let stderr = if quiet {
            child.stderr.take()
        } else {
            drop(child.stderr.take());
            None
        };
        let status = child.wait().unwrap();
        let mut text = String::new();
        if let Some(mut e) = stderr {
            std::io::Read::read_to_string(&mut e, &mut text).unwrap();
        }
        assert!(status.success(), "quiet {quiet}: {status}: {text}");
        assert!(!text.contains("panicked"), "{text}");
        assert_eq!(
            find_all(dir.path(), "summary.json").len(),
            2,
            "quiet {quiet}"
        );
        assert_eq!(find_all(dir.path(), "sweep_summary.json").len(), 1);
    }
    sim.stop();
}

/// `parley bench` under `sh -c 'ulimit -n LIMIT; exec …'` (soft and hard limit, or with
/// `soft_only` the soft one).
fn bench_with_fd_limit(
    limit: u32,
    soft_only: bool,
    sim: &Sim,
    args: &[&str],
) -> (i32, String, Option<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_parley");
    let flag = if soft_only { "-Sn" } else { "-n" };
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit {flag} {limit} && exec \"$0\" \"$@\""))
        .arg(bin)
        .args([
            "bench",
            "--url",
            &sim.url(),
            "--model",
            "parley-sim",
            "--cores",
            "1",
        ])
        .args(args)
        .args(["--quiet", "--name", "t", "--outputs-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let code = output.status.code().unwrap();
    let summary = find_all(dir.path(), "summary.json")
        .first()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap());
    (code, stderr, summary)
}

#[test]
fn fd_limits_are_raised_checked_before_traffic_and_running_out_is_its_own_class() {
    let sim = Sim::start(&["--ttft-base-ms", "1", "--itl-ms", "20"]);
    // A soft limit below --parallel is raised to the hard one: no request fails.
    let (code, err, s) =
        bench_with_fd_limit(200, true, &sim, &["--parallel", "300", "--number", "300"]);
    assert_eq!(code, 0, "{err}");
    let s = s.expect("summary.json");
    assert_eq!(u(&s["requests"]["failed"]), 0, "{}", s["requests"]);
    let sent = sim.stop().len();
    assert!(sent >= 300, "{sent}");

    // A hard limit below --parallel: an error naming what is needed, nothing sent.
    let sim = Sim::start(&["--ttft-base-ms", "1", "--itl-ms", "20"]);
    let (code, err, _) =
        bench_with_fd_limit(256, false, &sim, &["--parallel", "300", "--number", "300"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--parallel 300 needs about"), "{err}");
    assert!(err.contains("ulimit -n"), "{err}");
    assert!(sim.stop().is_empty(), "nothing was sent");

    // Without a cap (open loop) the need is unknown beforehand; running out mid-run is
    // `too_many_open_files`, not `connect`.
    let sim = Sim::start(&[
        "--ttft-base-ms",
        "1",
        "--itl-ms",
        "20",
        "--default-output-tokens",
        "50",
    ]);
    let (code, err, s) = bench_with_fd_limit(
        128,
        false,
        &sim,
        &[
            "--request-rate",
            "2000",
            "--number",
            "300",
            "--conversation-turn-mean",
            "1",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let s = s.expect("summary.json");
    let failures = &s["requests"]["failures"];
    assert!(u(&failures["too_many_open_files"]) > 0, "{}", s["requests"]);
    assert!(failures.get("connect").is_none(), "{failures}");
    sim.stop();
}

#[test]
fn url_credentials_are_never_written_or_printed() {
    let sim = Sim::start(&["--ttft-base-ms", "1", "--itl-ms", "0"]);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://user:s3cret@127.0.0.1:{}", sim.port);
    let output = parley()
        .args([
            "bench",
            "--url",
            &url,
            "--model",
            "parley-sim",
            "--cores",
            "1",
        ])
        .args(["--number", "2", "--outputs-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success());
    let console = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!console.contains("s3cret"), "{console}");
    assert!(console.contains("http://***@127.0.0.1"), "{console}");
    let summary = std::fs::read_to_string(&find_all(dir.path(), "summary.json")[0]).unwrap();
    assert!(!summary.contains("s3cret"), "{summary}");
    assert!(!summary.contains("user:"), "{summary}");
    let s: Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(
        s["config"]["url"],
        format!("http://***@127.0.0.1:{}", sim.port)
    );
    let records = sim.stop();
    assert!(records.len() >= 2, "{}", records.len());
    assert!(!Value::from(records).to_string().contains("s3cret"));
    // A bad URL's error masks them too.
    let e = bench_err(&[
        "--url",
        "http://user:s3cret@127.0.0.1:99999",
        "--model",
        "m",
    ]);
    assert!(!e.contains("s3cret"), "{e}");
    assert!(e.contains("port 99999 is not 1-65535"), "{e}");
}
