//! Test harness: runs the real `parley` binary — `parley sim` as a server process and
//! `parley bench` as the client — over TCP on 127.0.0.1, and reads back the sim's record and the
//! bench's summary.json.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn parley() -> Command {
    Command::new(env!("CARGO_BIN_EXE_parley"))
}

/// A `parley sim` child process on a free port, recording every request.
pub struct Sim {
    child: Child,
    pub port: u16,
    pub record: PathBuf,
    /// `https` when started with `--tls-cert`, else `http` (as the sim announces itself).
    pub scheme: &'static str,
    _dir: tempfile::TempDir,
}

impl Sim {
    pub fn start(extra: &[&str]) -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("record.jsonl");
        let mut child = parley()
            .args(["sim", "--port", "0", "--record"])
            .arg(&record)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn parley sim");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut reader = BufReader::new(stdout);
        while !line.contains("listening on") {
            line.clear();
            assert!(Instant::now() < deadline, "sim did not start");
            if reader.read_line(&mut line).unwrap() == 0 {
                panic!("sim exited before listening: {:?}", child.wait());
            }
        }
        let port: u16 = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        let scheme = if line.contains("https://") {
            "https"
        } else {
            "http"
        };
        Sim {
            child,
            port,
            record,
            scheme,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// `parley bench` against this sim on one engine core, plus `args`.
    pub fn bench(&self, args: &[&str]) -> Bench {
        let url = self.url();
        let mut full = vec!["--url", &url, "--model", "parley-sim", "--cores", "1"];
        full.extend_from_slice(args);
        bench(&full)
    }

    /// Stops the sim (SIGTERM, so it flushes its record) and returns the recorded requests.
    pub fn stop(mut self) -> Vec<Value> {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "sim exited with {status}");
                break;
            }
            assert!(Instant::now() < deadline, "sim did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = std::fs::read_to_string(&self.record).expect("record file");
        text.lines()
            .map(|l| serde_json::from_str(l).expect("record line is JSON"))
            .collect()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The result of one `parley bench` run.
pub struct Bench {
    pub output: Output,
    pub summary: Value,
    pub stdout: String,
    _dir: tempfile::TempDir,
}

impl Bench {
    /// The run's outputs directory.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// The run's JSON file `name` (the only one of that name in its outputs).
    pub fn json(&self, name: &str) -> Value {
        let paths = find_all(self._dir.path(), name);
        assert_eq!(paths.len(), 1, "{name}: {paths:?}");
        serde_json::from_slice(&std::fs::read(&paths[0]).unwrap()).unwrap()
    }
}

/// Runs `parley bench ARGS` with its outputs in a temporary directory; asserts it succeeded.
pub fn bench(args: &[&str]) -> Bench {
    let (output, dir) = bench_in_dir(args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let summary_path = find_summary(dir.path()).expect("summary.json written");
    let summary = serde_json::from_slice(&std::fs::read(summary_path).unwrap()).unwrap();
    Bench {
        output,
        summary,
        stdout,
        _dir: dir,
    }
}

/// Runs `parley bench ARGS` expecting failure; returns stderr.
pub fn bench_err(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = parley()
        .arg("bench")
        .args(args)
        .args(["--quiet", "--outputs-dir"])
        .arg(dir.path())
        .output()
        .expect("run parley bench");
    assert!(!output.status.success(), "expected failure for {args:?}");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "panic instead of an error: {stderr}"
    );
    stderr
}

fn find_summary(dir: &Path) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.is_dir() {
            if let Some(p) = find_summary(&path) {
                return Some(p);
            }
        } else if path.file_name().is_some_and(|n| n == "summary.json") {
            return Some(path);
        }
    }
    None
}

/// Records grouped by conversation (the `x-parley-conversation` header), each sorted by turn.
pub fn by_conversation(records: &[Value]) -> BTreeMap<u64, Vec<Value>> {
    let mut map: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for r in records {
        let conv = r["conversation"]
            .as_u64()
            .or_else(|| r["conversation"].as_str().and_then(|s| s.parse().ok()))
            .expect("record has a conversation");
        map.entry(conv).or_default().push(r.clone());
    }
    for turns in map.values_mut() {
        turns.sort_by_key(turn_of);
    }
    map
}

pub fn turn_of(r: &Value) -> u64 {
    r["turn"]
        .as_u64()
        .or_else(|| r["turn"].as_str().and_then(|s| s.parse().ok()))
        .expect("record has a turn")
}

/// Holds a PM-QoS request of 0 µs on /dev/cpu_dma_latency while alive, so idle vCPUs poll
/// instead of sleeping and timer wake-ups are prompt (see the machine facts). Best effort: without
/// permission the timing tests still run, with the VM's noisier timers.
pub struct CpuDmaLatency(Option<std::fs::File>);

impl CpuDmaLatency {
    pub fn hold() -> CpuDmaLatency {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/cpu_dma_latency")
            .and_then(|mut f| f.write_all(&0i32.to_ne_bytes()).map(|_| f));
        match file {
            Ok(f) => CpuDmaLatency(Some(f)),
            Err(e) => {
                eprintln!("note: cannot hold /dev/cpu_dma_latency ({e}); timers may be late");
                CpuDmaLatency(None)
            }
        }
    }

    pub fn held(&self) -> bool {
        self.0.is_some()
    }
}

pub fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

pub fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

/// Runs `parley bench ARGS` (asserting success) and returns its output and outputs directory,
/// for runs that write more than one summary (sweeps).
pub fn bench_in_dir(args: &[&str]) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let output = parley()
        .arg("bench")
        .args(args)
        .args(["--quiet", "--name", "t", "--outputs-dir"])
        .arg(dir.path())
        .output()
        .expect("run parley bench");
    assert!(
        output.status.success(),
        "parley bench failed: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, dir)
}

/// Every file named `name` below `dir`, sorted.
pub fn find_all(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == name) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The first-turn record of each conversation, sorted by arrival.
pub fn first_turns(records: &[Value]) -> Vec<Value> {
    let mut firsts: Vec<Value> = by_conversation(records)
        .into_values()
        .map(|turns| turns[0].clone())
        .collect();
    firsts.sort_by_key(|r| u(&r["arrival_ns"]));
    firsts
}

/// A certificate authority for the TLS tests, made on the spot (rcgen), and server certificates
/// it signs.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA's certificate (PEM): what `--ca-cert` trusts.
    pub pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "parley test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses) and its key, both PEM.
    pub fn server(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "parley test server");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// `ca.pem`, `server.pem` and `server.key` (for `names`) written into `dir`; returns their
    /// paths in that order.
    pub fn write(&self, dir: &Path, names: &[&str]) -> [PathBuf; 3] {
        let (cert, key) = self.server(names);
        let paths = [
            dir.join("ca.pem"),
            dir.join("server.pem"),
            dir.join("server.key"),
        ];
        for (path, text) in paths.iter().zip([&self.pem, &cert, &key]) {
            std::fs::write(path, text).unwrap();
        }
        paths
    }
}

/// The `p`-quantile (0–1] of `v`, nearest rank.
pub fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 * p).ceil() as usize).max(1) - 1]
}

/// The sim's recorded TTFT of each request, ms: its first token's write − the request's arrival.
pub fn sim_ttft_ms(records: &[Value]) -> Vec<f64> {
    records
        .iter()
        .map(|r| (u(&r["first_token_ns"]) - u(&r["arrival_ns"])) as f64 / 1e6)
        .collect()
}

/// The sim's recorded gaps between content chunks of each request, ms.
pub fn sim_itl_ms(records: &[Value]) -> Vec<f64> {
    records
        .iter()
        .flat_map(|r| {
            let c: Vec<u64> = r["chunk_ns"].as_array().unwrap().iter().map(u).collect();
            c.windows(2)
                .map(|w| (w[1] - w[0]) as f64 / 1e6)
                .collect::<Vec<_>>()
        })
        .collect()
}
