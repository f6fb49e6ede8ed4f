//! https: `parley bench` against `parley sim --tls-cert/--tls-key` over 127.0.0.1, with
//! certificates made here (a CA and server certificates signed by it; see `common::TestCa`).
//! Each test checks the client's figures against the sim's record, and every failure's class.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{find_all, parley, u, Sim, TestCa};
use serde_json::Value;

/// A sim serving https with a certificate for `names`; the files stay in the returned dir.
fn tls_sim(ca: &TestCa, names: &[&str], extra: &[&str]) -> (Sim, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let [ca_path, cert, key] = ca.write(dir.path(), names);
    let mut args = vec![
        "--tls-cert".to_string(),
        cert.display().to_string(),
        "--tls-key".to_string(),
        key.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sim = Sim::start(&args);
    assert_eq!(sim.scheme, "https");
    (sim, dir, ca_path)
}

/// One `parley bench` run whose exit status is not asserted.
struct Run {
    output: Output,
    stderr: String,
    summary: Option<Value>,
    _dir: tempfile::TempDir,
}

impl Run {
    fn summary(&self) -> &Value {
        self.summary
            .as_ref()
            .unwrap_or_else(|| panic!("no summary.json; stderr:\n{}", self.stderr))
    }

    fn failures(&self, class: &str) -> u64 {
        self.summary()["requests"]["failures"][class]
            .as_u64()
            .unwrap_or(0)
    }
}

fn run(url: &str, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let output = parley()
        .arg("bench")
        .args(["--url", url, "--model", "parley-sim", "--cores", "1"])
        .args(["--quiet", "--name", "t", "--outputs-dir"])
        .arg(dir.path())
        .args(args)
        .output()
        .expect("run parley bench");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let summary = find_all(dir.path(), "summary.json")
        .first()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap());
    Run {
        output,
        stderr,
        summary,
        _dir: dir,
    }
}

/// Four conversations of two turns, two at a time, 12 output tokens each.
const LOAD: [&str; 12] = [
    "--number",
    "4",
    "--parallel",
    "2",
    "--min-turns",
    "2",
    "--max-turns",
    "2",
    "--max-tokens",
    "12",
    "--extra-args",
    r#"{"ignore_eos": true}"#,
];

fn arg(p: &Path) -> String {
    p.display().to_string()
}

/// (a) With the CA trusted, every request succeeds over TLS, the client's counts equal the
/// sim's record, and its TTFT tracks the sim's recorded send times (the stamps are still the
/// socket's, under TLS).
#[test]
fn https_with_ca_cert_matches_the_sim_record() {
    let ca = TestCa::new();
    let (sim, _certs, ca_path) = tls_sim(
        &ca,
        &["localhost", "127.0.0.1"],
        &["--ttft-base-ms", "20", "--itl-ms", "2"],
    );
    let r = run(
        &sim.url(),
        &[&LOAD[..], &["--ca-cert", &arg(&ca_path)]].concat(),
    );
    let records = sim.stop();
    assert_eq!(r.output.status.code(), Some(0), "{}", r.stderr);
    let s = r.summary();
    assert_eq!(u(&s["requests"]["succeeded"]), 8, "{}", s["requests"]);
    assert_eq!(u(&s["requests"]["failed"]), 0);
    assert_eq!(records.len(), 8);
    assert!(records.iter().all(|r| r["completed"] == true));
    // Every request came over TLS, the sim says.
    assert!(records.iter().all(|r| r["tls"].is_string()), "{records:?}");
    let sim_tokens: u64 = records.iter().map(|r| u(&r["completion_tokens"])).sum();
    assert_eq!(sim_tokens, 8 * 12);
    let client_tokens = common::f(&s["output_tokens"]["mean"]) * 8.0;
    assert!(
        (client_tokens - sim_tokens as f64).abs() < 1e-6,
        "{client_tokens}"
    );
    let sim_prompt: u64 = records.iter().map(|r| u(&r["prompt_tokens"])).sum();
    let client_prompt = common::f(&s["input_tokens"]["mean"]) * 8.0;
    assert!((client_prompt - sim_prompt as f64).abs() < 1e-6);
    assert_eq!(s["config"]["flags"]["ca_cert"], arg(&ca_path));
    assert_eq!(s["config"]["flags"]["insecure"], false);
    // TTFT: the client's p50 against the sim's own, generously (a busy 2-core host); one
    // misread chunk would be 2 ms per token off, a TLS read stamped late far more.
    let truth = common::sim_ttft_ms(&records);
    let (client, truth) = (
        common::f(&s["ttft_ms"]["p50"]),
        common::percentile(truth, 0.5),
    );
    assert!(
        (client - truth).abs() < 15.0,
        "client TTFT p50 {client} ms vs the sim's {truth} ms"
    );
    assert!(
        client >= 19.0,
        "TTFT {client} ms below the sim's 20 ms base"
    );
}

/// (b) A server certificate from a CA that is not trusted (not in the bundled roots, no
/// --ca-cert): every connect fails as `tls`, with the reason and the fix in its message, no
/// request reaches the server, and nothing measurable is exit code 3.
#[test]
fn untrusted_certificate_fails_as_tls() {
    let ca = TestCa::new();
    let (sim, _certs, _) = tls_sim(&ca, &["localhost", "127.0.0.1"], &[]);
    let r = run(&sim.url(), &LOAD);
    let records = sim.stop();
    assert_eq!(r.output.status.code(), Some(3), "{}", r.stderr);
    assert!(records.is_empty(), "{records:?}");
    let s = r.summary();
    assert_eq!(u(&s["requests"]["succeeded"]), 0);
    assert!(r.failures("tls") >= 1, "{}", s["requests"]);
    assert_eq!(r.failures("tls"), u(&s["requests"]["failed"]));
    let messages = &s["requests"]["failure_messages"]["tls"];
    let first = messages[0].as_str().unwrap_or_default();
    assert!(
        first.contains("UnknownIssuer") && first.contains("--ca-cert"),
        "{messages}"
    );
}

/// (c) --insecure: the same untrusted certificate is accepted, with one warning.
#[test]
fn insecure_skips_verification_and_warns_once() {
    let ca = TestCa::new();
    let (sim, _certs, _) = tls_sim(&ca, &["localhost"], &[]);
    let r = run(&sim.url(), &[&LOAD[..], &["--insecure"]].concat());
    let records = sim.stop();
    assert_eq!(r.output.status.code(), Some(0), "{}", r.stderr);
    assert_eq!(u(&r.summary()["requests"]["succeeded"]), 8);
    assert_eq!(records.len(), 8);
    assert_eq!(
        r.stderr.matches("warning: --insecure").count(),
        1,
        "{}",
        r.stderr
    );
    assert_eq!(r.summary()["config"]["flags"]["insecure"], true);
}

/// (d) A trusted certificate for another name: `https://127.0.0.1` against a certificate for
/// `localhost` only fails as `tls` (an IP literal is checked against the certificate's IP
/// addresses); `https://localhost` with the same certificate succeeds (SNI and the DNS name).
#[test]
fn wrong_host_name_fails_as_tls_and_the_right_one_succeeds() {
    let ca = TestCa::new();
    let (sim, _certs, ca_path) = tls_sim(&ca, &["localhost"], &[]);
    let ca_arg = arg(&ca_path);
    let wrong = run(&sim.url(), &[&LOAD[..], &["--ca-cert", &ca_arg]].concat());
    assert_eq!(wrong.output.status.code(), Some(3), "{}", wrong.stderr);
    assert!(wrong.failures("tls") >= 1);
    let message = wrong.summary()["requests"]["failure_messages"]["tls"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("not valid for"), "{message}");
    let by_name = format!("https://localhost:{}", sim.port);
    let right = run(&by_name, &[&LOAD[..], &["--ca-cert", &ca_arg]].concat());
    let records = sim.stop();
    assert_eq!(right.output.status.code(), Some(0), "{}", right.stderr);
    assert_eq!(u(&right.summary()["requests"]["succeeded"]), 8);
    assert_eq!(records.len(), 8, "only the second run reached the server");
}

/// (e) Session resumption: the sim closes connections idle for 30 ms and every turn waits
/// 100 ms first, so each later turn reconnects, and resumes the session its core's earlier
/// handshake got a ticket for. The sim's record says, per request, which handshake its
/// connection had (rustls's `handshake_kind()` on the server).
#[test]
fn reconnects_resume_the_tls_session() {
    let ca = TestCa::new();
    let (sim, _certs, ca_path) = tls_sim(
        &ca,
        &["127.0.0.1"],
        &[
            "--ttft-base-ms",
            "1",
            "--itl-ms",
            "1",
            "--fault",
            "close_idle:after=30",
        ],
    );
    let r = run(
        &sim.url(),
        &[
            "--ca-cert",
            &arg(&ca_path),
            "--number",
            "3",
            "--parallel",
            "1",
            "--conversation-turn-mean",
            "3",
            "--conversation-turn-stddev",
            "0",
            "--max-tokens",
            "8",
            "--conversation-turn-delay-mean",
            "100",
            "--conversation-turn-delay-stddev",
            "0",
        ],
    );
    let mut records = sim.stop();
    assert_eq!(r.output.status.code(), Some(0), "{}", r.stderr);
    assert_eq!(u(&r.summary()["requests"]["succeeded"]), 9);
    assert_eq!(records.len(), 9);
    records.sort_by_key(|r| u(&r["request_id"]));
    let kinds: Vec<&str> = records.iter().map(|r| r["tls"].as_str().unwrap()).collect();
    assert_eq!(kinds[0], "full", "{kinds:?}");
    // Six turns follow a think time longer than the idle limit: each on a new connection,
    // resumed (a first turn may reuse the previous conversation's connection, or resume too).
    let resumed = kinds.iter().filter(|k| **k == "resumed").count();
    assert!(resumed >= 6, "{kinds:?}");
}

/// (f) A --ca-cert that is not a certificate file: a usage error (exit 2) naming the file and
/// what is wrong, before any traffic.
#[test]
fn bad_ca_cert_file_is_a_named_usage_error() {
    let ca = TestCa::new();
    let (sim, certs, _) = tls_sim(&ca, &["127.0.0.1"], &[]);
    let bad = certs.path().join("not-a-cert.pem");
    std::fs::write(&bad, "hello\n").unwrap();
    let missing = certs.path().join("missing.pem");
    // The key file: PEM, but no certificate in it.
    let key = certs.path().join("server.key");
    for (path, says) in [
        (&bad, "no PEM certificate"),
        (&missing, "No such file"),
        (&key, "no PEM certificate"),
    ] {
        let r = run(
            &sim.url(),
            &[&LOAD[..], &["--ca-cert", &arg(path)]].concat(),
        );
        assert_eq!(r.output.status.code(), Some(2), "{}", r.stderr);
        assert!(
            r.stderr.contains(&format!("--ca-cert {}", path.display())) && r.stderr.contains(says),
            "{}",
            r.stderr
        );
        assert!(r.summary.is_none());
    }
    assert!(sim.stop().is_empty(), "nothing was sent");
}

/// The sim's own certificate and key files are checked the same way: `parley sim` refuses to
/// start, naming the file.
#[test]
fn sim_refuses_bad_certificate_files() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let [ca_path, cert, key] = ca.write(dir.path(), &["localhost"]);
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, ca.server(&["x"]).1).unwrap();
    for (cert, key, says) in [
        (&key, &key, "--tls-cert"),
        (&cert, &ca_path, "--tls-key"),
        (&cert, &other_key, "--tls-key"),
    ] {
        let out = parley()
            .args(["sim", "--port", "0", "--tls-cert"])
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
    let out = parley()
        .args(["sim", "--port", "0", "--tls-cert"])
        .arg(&cert)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
}

/// --server-metrics and --wait-for-model-timeout speak https to an https target too.
#[test]
fn server_metrics_and_the_model_wait_work_over_https() {
    let ca = TestCa::new();
    let (sim, _certs, ca_path) = tls_sim(&ca, &["127.0.0.1"], &["--ttft-base-ms", "1"]);
    let r = run(
        &sim.url(),
        &[
            &LOAD[..],
            &[
                "--ca-cert",
                &arg(&ca_path),
                "--server-metrics",
                "--wait-for-model-timeout",
                "10",
            ],
        ]
        .concat(),
    );
    let records = sim.stop();
    assert_eq!(r.output.status.code(), Some(0), "{}", r.stderr);
    let m = &r.summary()["server_metrics"];
    let endpoint = &m["endpoints"][0];
    assert!(
        endpoint["url"].as_str().unwrap().starts_with("https://"),
        "{m}"
    );
    assert!(u(&endpoint["scrapes_ok"]) >= 2, "{m}");
    assert_eq!(u(&endpoint["scrapes_failed"]), 0, "{m}");
    assert_eq!(records.len(), 8);
}

/// https:// to a server that does not speak TLS (a plain sim answers the ClientHello with an
/// HTTP 400), and to one that accepts the connection but never answers: both `tls`, with why;
/// the silent one within --connect-timeout.
#[test]
fn plain_and_silent_servers_fail_as_tls_with_a_reason() {
    let plain = Sim::start(&[]);
    let url = format!("https://127.0.0.1:{}", plain.port);
    let r = run(&url, &["--number", "2", "--parallel", "1", "--insecure"]);
    assert!(plain.stop().is_empty());
    assert_eq!(r.output.status.code(), Some(3), "{}", r.stderr);
    assert_eq!(r.failures("tls"), 2, "{}", r.summary()["requests"]);
    let message = r.summary()["requests"]["failure_messages"]["tls"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("speaking TLS"), "{message}");

    // The kernel completes the TCP handshake for the listener's backlog; nobody ever reads.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://127.0.0.1:{}", silent.local_addr().unwrap().port());
    let start = std::time::Instant::now();
    let r = run(
        &url,
        &[
            "--number",
            "2",
            "--parallel",
            "1",
            "--insecure",
            "--connect-timeout",
            "0.3",
        ],
    );
    assert_eq!(r.failures("tls"), 2, "{}", r.stderr);
    let message = r.summary()["requests"]["failure_messages"]["tls"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("not finished after 0.3 s"), "{message}");
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
    drop(silent);
}
