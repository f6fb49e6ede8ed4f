//! Per-request records: `records.jsonl`, one JSON line per request attempt (failed, retried and
//! cancelled ones included), and AIPerf's `profile_export.jsonl` made from it after the run.
//!
//! The hot path stays cheap and lock-free: at a request's end its core formats the line straight
//! into its own buffer (integers with `itoa`, no `serde_json::Value`, no allocation), and hands a
//! full buffer ([`BUFFER_BYTES`]) to one writer thread through a bounded crossbeam channel. The
//! writer writes whole buffers, so lines never interleave, and sends the emptied buffers back for
//! reuse. Memory is bounded whatever the run length: one buffer per core, at most
//! [`QUEUE_BUFFERS`] queued, one being written and [`QUEUE_BUFFERS`] spare. When the disk falls so
//! far behind that the queue is full, the core waits for it (its sends are then late, which
//! send lag shows) rather than dropping records or growing without bound.
//!
//! Each core flushes its last partial buffer when its share of the run ends — also after a
//! signal, since an interrupted run drains and ends normally — so everything measured is
//! written. Field definitions: `docs/metrics.md`, "Per-request records".

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam::channel::{Receiver, Sender};

use crate::chunk::Usage;
use crate::client::{FailureKind, TurnTiming};

/// A core hands its buffer to the writer once it holds this many bytes.
pub const BUFFER_BYTES: usize = 256 << 10;
/// Room above [`BUFFER_BYTES`] for the line that crosses it, so a buffer never reallocates:
/// a line is ≈ 500 bytes plus its URL and a failure message (at most
/// [`crate::metrics::MESSAGE_MAX_CHARS`] characters, ≤ 6 bytes each once escaped).
const LINE_HEADROOM: usize = 4 << 10;
/// Full buffers queued for the writer, and empty ones kept for reuse.
pub const QUEUE_BUFFERS: usize = 8;

/// The file name in the run directory.
pub const RECORDS_FILE: &str = "records.jsonl";
/// AIPerf's per-request file, written from [`RECORDS_FILE`] at the end of the run.
pub const AIPERF_RECORDS_FILE: &str = "profile_export.jsonl";

/// The ends of the writer's channels that cores hold (cheap to clone: one per core).
#[derive(Clone)]
pub struct RecordsChannel {
    full: Sender<Vec<u8>>,
    empty: Receiver<Vec<u8>>,
    /// `urls[i]`: the `--url` of endpoint `i`, credentials masked, as a JSON string literal.
    urls: Arc<[String]>,
}

impl RecordsChannel {
    /// The sink a core formats its records into.
    pub fn sink(&self, core: usize) -> CoreRecords {
        CoreRecords {
            buf: Vec::with_capacity(BUFFER_BYTES + LINE_HEADROOM),
            channel: self.clone(),
            core,
            buffers_allocated: 1,
        }
    }
}

/// The writer thread of one run (one load point).
pub struct RecordsWriter {
    path: PathBuf,
    channel: Option<RecordsChannel>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl RecordsWriter {
    /// Creates `dir/records.jsonl` (now, so an unwritable directory fails before any traffic)
    /// and starts its writer thread. `urls`: the endpoints' `--url`s, in endpoint order.
    pub fn start(dir: &Path, urls: &[String]) -> std::io::Result<RecordsWriter> {
        let path = dir.join(RECORDS_FILE);
        let mut file = File::create(&path)?;
        let (full_tx, full_rx) = crossbeam::channel::bounded::<Vec<u8>>(QUEUE_BUFFERS);
        let (empty_tx, empty_rx) = crossbeam::channel::bounded::<Vec<u8>>(QUEUE_BUFFERS);
        let thread = std::thread::Builder::new()
            .name("parley-records".into())
            .spawn(move || {
                let mut result = Ok(());
                // Until every core has dropped its sender: after a write error, keep draining
                // (and recycling) so no core waits on a writer that has given up.
                for mut buf in full_rx {
                    if result.is_ok() {
                        result = file.write_all(&buf);
                    }
                    buf.clear();
                    // Full: enough spares already; this one is freed.
                    let _ = empty_tx.try_send(buf);
                }
                result.and_then(|()| file.sync_data())
            })?;
        let urls = urls
            .iter()
            .map(|u| {
                serde_json::to_string(&crate::plan::redact_url(u)).expect("a string serialises")
            })
            .collect();
        Ok(RecordsWriter {
            path,
            channel: Some(RecordsChannel {
                full: full_tx,
                empty: empty_rx,
                urls,
            }),
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the engine's cores share.
    pub fn channel(&self) -> RecordsChannel {
        self.channel.clone().expect("not finished")
    }

    /// Waits for the writer to write everything handed to it (every core's sink must have been
    /// flushed and dropped: the engine has returned) and syncs the file.
    pub fn finish(mut self) -> std::io::Result<PathBuf> {
        self.channel = None;
        let thread = self.thread.take().expect("finished once");
        thread
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the records writer panicked")))?;
        Ok(self.path.clone())
    }
}

impl Drop for RecordsWriter {
    fn drop(&mut self) {
        // An engine error: let the thread end with the channel (it never blocks on its own).
        self.channel = None;
    }
}

/// How a request attempt ended.
#[derive(Clone, Copy, Debug)]
pub enum Status<'a> {
    Ok,
    /// Failed, and the conversation was abandoned: counted in `requests.failures`.
    Failed {
        kind: FailureKind,
        message: Option<&'a str>,
    },
    /// Failed and sent again (`--retry-429`, or a keep-alive connection closed under it):
    /// counted in `requests.retried`, not as a failure.
    Retried {
        kind: FailureKind,
        message: Option<&'a str>,
    },
    /// In flight when the run's hard end or a signal's grace cut it off.
    Cancelled,
}

/// Token counts of a request (`None`: unknown).
#[derive(Clone, Copy, Debug, Default)]
pub struct Tokens {
    pub prompt: Option<u64>,
    pub cached: Option<u64>,
    pub output: Option<u64>,
    pub from_usage: bool,
}

impl Tokens {
    /// A failed request's counts: the server's `usage` if it sent one, else the client's
    /// prompt estimate and one output token per output event received; cached only from usage.
    pub fn of_failure(usage: Option<Usage>, estimated_prompt: u64, output_events: u32) -> Tokens {
        match usage {
            Some(u) => Tokens {
                prompt: Some(u.prompt_tokens),
                cached: u.cached_tokens,
                output: Some(u.completion_tokens),
                from_usage: true,
            },
            None => Tokens {
                prompt: Some(estimated_prompt),
                cached: None,
                output: Some(output_events as u64),
                from_usage: false,
            },
        }
    }
}

/// Which request an attempt is.
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    pub measured: bool,
    pub conversation: u64,
    pub pool_index: usize,
    pub turn: u32,
    /// 0 for the first send of a turn, 1, 2, … for retries.
    pub attempt: u32,
    pub url: usize,
    pub intended_ns: u64,
}

impl Attempt {
    /// The record of an attempt that ran (to its end or to a failure) with `timing`.
    pub fn timed<'a>(
        self,
        timing: &TurnTiming,
        itl_ns: &'a mut [u64],
        tokens: Tokens,
        status: Status<'a>,
    ) -> Request<'a> {
        Request {
            at: self,
            start_ns: Some(timing.start_ns),
            send_ns: timing.first_write_ns,
            first_token_ns: timing.first_output_ns,
            end_ns: timing.end_ns,
            itl_ns,
            tokens,
            status,
        }
    }
}

/// One request attempt, as its core knows it at its end.
pub struct Request<'a> {
    pub at: Attempt,
    pub start_ns: Option<u64>,
    pub send_ns: Option<u64>,
    pub first_token_ns: Option<u64>,
    pub end_ns: u64,
    /// The gaps between output events (reordered here: the p50 is selected in place).
    pub itl_ns: &'a mut [u64],
    pub tokens: Tokens,
    pub status: Status<'a>,
}

/// One core's record buffer. Only its own core touches it.
pub struct CoreRecords {
    buf: Vec<u8>,
    channel: RecordsChannel,
    core: usize,
    /// Buffers this sink has allocated (reused ones not counted): bounded, whatever the run
    /// length, when the writer keeps up.
    buffers_allocated: u64,
}

impl CoreRecords {
    /// Appends `r`'s line; hands the buffer to the writer once it is full.
    pub fn push(&mut self, r: Request<'_>) {
        write_line(&mut self.buf, self.core, &self.channel.urls, r);
        if self.buf.len() >= BUFFER_BYTES {
            self.hand_off();
        }
    }

    /// Hands what is buffered to the writer (at the end of the core's run).
    pub fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.hand_off();
        }
    }

    fn hand_off(&mut self) {
        let next = self.channel.empty.try_recv().unwrap_or_else(|_| {
            self.buffers_allocated += 1;
            Vec::with_capacity(BUFFER_BYTES + LINE_HEADROOM)
        });
        let full = std::mem::replace(&mut self.buf, next);
        // Blocks only when QUEUE_BUFFERS buffers wait already (the disk is behind); fails only
        // when the writer is gone, and then there is nowhere to write.
        let _ = self.channel.full.send(full);
    }
}

impl Drop for CoreRecords {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Appends `,"key":`.
fn key(buf: &mut Vec<u8>, key: &str) {
    buf.extend_from_slice(b",\"");
    buf.extend_from_slice(key.as_bytes());
    buf.extend_from_slice(b"\":");
}

fn uint(buf: &mut Vec<u8>, name: &str, v: u64) {
    key(buf, name);
    buf.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn opt_uint(buf: &mut Vec<u8>, name: &str, v: Option<u64>) {
    match v {
        Some(v) => uint(buf, name, v),
        None => {
            key(buf, name);
            buf.extend_from_slice(b"null");
        }
    }
}

/// The ITL summary of one request: count, mean, p50 (nearest rank, like every parley
/// percentile), max, in ns.
fn itl_summary(itl_ns: &mut [u64]) -> (u64, Option<u64>, Option<u64>, Option<u64>) {
    let n = itl_ns.len();
    if n == 0 {
        return (0, None, None, None);
    }
    let sum: u64 = itl_ns.iter().sum();
    let max = itl_ns.iter().copied().max();
    let rank = n.div_ceil(2) - 1;
    let (_, p50, _) = itl_ns.select_nth_unstable(rank);
    (n as u64, Some(sum / n as u64), Some(*p50), max)
}

/// One record as a JSON line (keys in the order `docs/metrics.md` lists them).
fn write_line(buf: &mut Vec<u8>, core: usize, urls: &[String], r: Request<'_>) {
    let at = r.at;
    buf.extend_from_slice(if at.measured {
        b"{\"phase\":\"measured\""
    } else {
        b"{\"phase\":\"warmup\""
    });
    uint(buf, "core", core as u64);
    uint(buf, "conversation", at.conversation);
    uint(buf, "pool_index", at.pool_index as u64);
    uint(buf, "turn", at.turn as u64);
    uint(buf, "attempt", at.attempt as u64);
    key(buf, "url");
    match urls.get(at.url) {
        Some(u) => buf.extend_from_slice(u.as_bytes()),
        None => buf.extend_from_slice(b"null"),
    }
    uint(buf, "intended_ns", at.intended_ns);
    opt_uint(buf, "start_ns", r.start_ns);
    opt_uint(buf, "send_ns", r.send_ns);
    opt_uint(buf, "first_token_ns", r.first_token_ns);
    uint(buf, "end_ns", r.end_ns);
    let ttft_ns = r
        .first_token_ns
        .zip(r.start_ns)
        .map(|(f, s)| f.saturating_sub(s));
    opt_uint(buf, "ttft_ns", ttft_ns);
    opt_uint(
        buf,
        "latency_ns",
        r.start_ns.map(|s| r.end_ns.saturating_sub(s)),
    );
    let (count, mean, p50, max) = itl_summary(r.itl_ns);
    uint(buf, "itl_count", count);
    opt_uint(buf, "itl_mean_ns", mean);
    opt_uint(buf, "itl_p50_ns", p50);
    opt_uint(buf, "itl_max_ns", max);
    opt_uint(buf, "prompt_tokens", r.tokens.prompt);
    opt_uint(buf, "cached_tokens", r.tokens.cached);
    opt_uint(buf, "output_tokens", r.tokens.output);
    key(buf, "tokens_from_usage");
    buf.extend_from_slice(if r.tokens.from_usage {
        b"true"
    } else {
        b"false"
    });
    let (status, failure) = match r.status {
        Status::Ok => ("ok", None),
        Status::Failed { kind, message } => ("failed", Some((kind, message))),
        Status::Retried { kind, message } => ("retried", Some((kind, message))),
        Status::Cancelled => ("cancelled", None),
    };
    key(buf, "status");
    buf.push(b'"');
    buf.extend_from_slice(status.as_bytes());
    buf.push(b'"');
    match failure {
        None => {
            buf.extend_from_slice(b",\"failure\":null,\"http_status\":null,\"message\":null}\n")
        }
        // Off the success path: the failure's label and message may allocate.
        Some((kind, message)) => {
            key(buf, "failure");
            // Labels are [a-z0-9_]: no escaping needed.
            buf.push(b'"');
            buf.extend_from_slice(kind.label().as_bytes());
            buf.push(b'"');
            let code = match kind {
                FailureKind::HttpStatus(code) => Some(code as u64),
                _ => None,
            };
            opt_uint(buf, "http_status", code);
            key(buf, "message");
            match message {
                Some(m) => {
                    let cleaned = crate::metrics::clean_message(m);
                    serde_json::to_writer(&mut *buf, &cleaned).expect("writing to a Vec");
                }
                None => buf.extend_from_slice(b"null"),
            }
            buf.extend_from_slice(b"}\n");
        }
    }
}

// ----- AIPerf's profile_export.jsonl -----

/// A `records.jsonl` line, as the AIPerf conversion reads it.
#[derive(serde::Deserialize)]
struct Line<'a> {
    phase: &'a str,
    core: u64,
    conversation: u64,
    pool_index: u64,
    turn: u64,
    attempt: u64,
    intended_ns: u64,
    start_ns: Option<u64>,
    end_ns: u64,
    ttft_ns: Option<u64>,
    latency_ns: Option<u64>,
    prompt_tokens: Option<u64>,
    output_tokens: Option<u64>,
    status: &'a str,
    failure: Option<&'a str>,
    http_status: Option<u16>,
    message: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}, line {line}: {reason}", path.display())]
    Line {
        path: PathBuf,
        line: u64,
        reason: String,
    },
}

/// Writes AIPerf's `profile_export.jsonl` beside `records` (a `records.jsonl`), one line per
/// record, streaming: memory does not grow with the number of records. Times become Unix epoch
/// ns (AIPerf's clock) by one offset between the monotonic clock and the wall clock taken now.
/// Returns the path written.
pub fn write_aiperf_jsonl(records: &Path) -> Result<PathBuf, ExportError> {
    let out_path = records.with_file_name(AIPERF_RECORDS_FILE);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExportError::Io { path, source }
    };
    let reader = BufReader::new(File::open(records).map_err(io(records))?);
    let mut out = BufWriter::new(File::create(&out_path).map_err(io(&out_path))?);
    let offset = epoch_offset_ns();
    let mut line_buf = String::new();
    let mut json = Vec::with_capacity(1024);
    let mut reader = reader;
    let mut line_no = 0u64;
    loop {
        line_buf.clear();
        if reader.read_line(&mut line_buf).map_err(io(records))? == 0 {
            break;
        }
        line_no += 1;
        let text = line_buf.trim_end();
        if text.is_empty() {
            continue;
        }
        let line: Line<'_> = serde_json::from_str(text).map_err(|e| ExportError::Line {
            path: records.to_path_buf(),
            line: line_no,
            reason: e.to_string(),
        })?;
        json.clear();
        aiperf_line(&line, offset, &mut json);
        out.write_all(&json).map_err(io(&out_path))?;
    }
    out.flush().map_err(io(&out_path))?;
    out.get_ref().sync_data().map_err(io(&out_path))?;
    Ok(out_path)
}

/// Unix epoch ns minus monotonic ns, now.
fn epoch_offset_ns() -> i128 {
    let mono = crate::clock::now_ns() as i128;
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    wall - mono
}

#[derive(serde::Serialize)]
struct AiperfMetadata {
    session_num: u64,
    x_request_id: String,
    x_correlation_id: String,
    conversation_id: String,
    turn_index: u64,
    credit_issued_ns: u64,
    request_start_ns: Option<u64>,
    request_ack_ns: Option<u64>,
    request_end_ns: u64,
    worker_id: String,
    record_processor_id: &'static str,
    benchmark_phase: &'static str,
    was_cancelled: bool,
    cancellation_time_ns: Option<u64>,
}

#[derive(serde::Serialize)]
struct AiperfValue<T> {
    value: T,
    unit: &'static str,
}

/// AIPerf's per-request metric tags (those parley can give per request), in AIPerf's units.
#[derive(serde::Serialize, Default)]
struct AiperfMetrics {
    #[serde(skip_serializing_if = "Option::is_none")]
    input_sequence_length: Option<AiperfValue<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_to_first_token: Option<AiperfValue<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_latency: Option<AiperfValue<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_sequence_length: Option<AiperfValue<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inter_token_latency: Option<AiperfValue<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_token_throughput_per_user: Option<AiperfValue<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_isl: Option<AiperfValue<u64>>,
}

#[derive(serde::Serialize)]
struct AiperfErrorRecord<'a> {
    code: Option<u16>,
    #[serde(rename = "type")]
    kind: &'a str,
    message: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct AiperfRecord<'a> {
    metadata: AiperfMetadata,
    metrics: AiperfMetrics,
    error: Option<AiperfErrorRecord<'a>>,
}

/// One AIPerf record: `metadata{…}`, `metrics{tag: {value, unit}}`, `error{code, type, message}`
/// or null. Metric tags and units as AIPerf's (`docs/metrics.md`, "Per-request records").
fn aiperf_line(l: &Line<'_>, offset_ns: i128, out: &mut Vec<u8>) {
    let epoch = |ns: u64| (ns as i128 + offset_ns).max(0) as u64;
    let ms = |ns: u64| AiperfValue {
        value: ns as f64 / 1e6,
        unit: "ms",
    };
    let tokens = |n: u64| AiperfValue {
        value: n,
        unit: "tokens",
    };
    let cancelled = l.status == "cancelled";
    let metadata = AiperfMetadata {
        session_num: l.conversation,
        x_request_id: format!("{}-{}-{}", l.conversation, l.turn, l.attempt),
        x_correlation_id: l.conversation.to_string(),
        conversation_id: l.pool_index.to_string(),
        turn_index: l.turn,
        credit_issued_ns: epoch(l.intended_ns),
        request_start_ns: l.start_ns.map(epoch),
        request_ack_ns: None,
        request_end_ns: epoch(l.end_ns),
        worker_id: format!("core_{}", l.core),
        record_processor_id: "parley",
        benchmark_phase: if l.phase == "warmup" {
            "warmup"
        } else {
            "profiling"
        },
        was_cancelled: cancelled,
        cancellation_time_ns: cancelled.then(|| epoch(l.end_ns)),
    };
    let mut metrics = AiperfMetrics::default();
    let error = if l.status == "ok" {
        metrics.input_sequence_length = l.prompt_tokens.map(tokens);
        metrics.time_to_first_token = l.ttft_ns.map(ms);
        metrics.request_latency = l.latency_ns.map(ms);
        metrics.output_sequence_length = l.output_tokens.map(tokens);
        // AIPerf's ITL: (latency − TTFT) / (OSL − 1), one value per request, OSL ≥ 2.
        if let (Some(ttft), Some(latency), Some(osl)) = (l.ttft_ns, l.latency_ns, l.output_tokens) {
            if osl >= 2 {
                let itl_ns = latency.saturating_sub(ttft) as f64 / (osl - 1) as f64;
                metrics.inter_token_latency = Some(AiperfValue {
                    value: itl_ns / 1e6,
                    unit: "ms",
                });
                if itl_ns > 0.0 {
                    metrics.output_token_throughput_per_user = Some(AiperfValue {
                        value: 1e9 / itl_ns,
                        unit: "tokens/sec/user",
                    });
                }
            }
        }
        None
    } else {
        metrics.error_isl = l.prompt_tokens.map(tokens);
        Some(if cancelled {
            // AIPerf's cancellation: 499.
            AiperfErrorRecord {
                code: Some(499),
                kind: "cancelled",
                message: None,
            }
        } else {
            AiperfErrorRecord {
                code: l.http_status,
                kind: l.failure.unwrap_or("unknown"),
                message: l.message.as_deref(),
            }
        })
    };
    let record = AiperfRecord {
        metadata,
        metrics,
        error,
    };
    serde_json::to_writer(&mut *out, &record).expect("writing to a Vec");
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(itl_ns: &'a mut [u64], status: Status<'static>) -> Request<'a> {
        Request {
            at: Attempt {
                measured: true,
                conversation: 7,
                pool_index: 3,
                turn: 1,
                attempt: 0,
                url: 0,
                intended_ns: 100,
            },
            start_ns: Some(110),
            send_ns: Some(111),
            first_token_ns: Some(150),
            end_ns: 300,
            itl_ns,
            tokens: Tokens {
                prompt: Some(40),
                cached: Some(20),
                output: Some(4),
                from_usage: true,
            },
            status,
        }
    }

    fn channel() -> RecordsChannel {
        let (full, _) = crossbeam::channel::bounded(1);
        let (_, empty) = crossbeam::channel::bounded(1);
        RecordsChannel {
            full,
            empty,
            urls: vec![r#""http://***@h:1/v1""#.to_string()].into(),
        }
    }

    #[test]
    fn a_line_is_json_with_every_field() {
        let ch = channel();
        let mut buf = Vec::new();
        let mut itl = [30, 10, 20, 100];
        write_line(&mut buf, 2, &ch.urls, request(&mut itl, Status::Ok));
        let text = String::from_utf8(buf).unwrap();
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["phase"], "measured");
        assert_eq!(v["core"], 2);
        assert_eq!(v["url"], "http://***@h:1/v1");
        assert_eq!(v["ttft_ns"], 40);
        assert_eq!(v["latency_ns"], 190);
        assert_eq!(v["itl_count"], 4);
        assert_eq!(v["itl_mean_ns"], 40);
        // Nearest rank: the 2nd of 4 sorted gaps.
        assert_eq!(v["itl_p50_ns"], 20);
        assert_eq!(v["itl_max_ns"], 100);
        assert_eq!(v["status"], "ok");
        assert!(v["failure"].is_null() && v["message"].is_null());
        assert_eq!(v.as_object().unwrap().len(), 26);
    }

    #[test]
    fn a_failure_line_carries_its_class_and_escaped_message() {
        let ch = channel();
        let mut buf = Vec::new();
        let status = Status::Failed {
            kind: FailureKind::HttpStatus(500),
            message: Some("bad \"thing\"\n\tand\u{1}more"),
        };
        write_line(&mut buf, 0, &ch.urls, request(&mut [], status));
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["status"], "failed");
        assert_eq!(v["failure"], "http_500");
        assert_eq!(v["http_status"], 500);
        assert_eq!(v["message"], "bad \"thing\" and\u{1}more");
        assert_eq!(v["itl_count"], 0);
        assert!(v["itl_p50_ns"].is_null());
    }

    /// Many more records than fit in memory's bound go through one sink: every line arrives,
    /// whole and in order, and the sink's buffers stay as many as the queue allows and never
    /// grow, whatever the number of records.
    #[test]
    fn the_writer_keeps_every_line_in_bounded_memory() {
        let dir = tempfile::tempdir().unwrap();
        let writer = RecordsWriter::start(dir.path(), &["http://h:1".into()]).unwrap();
        let mut sink = writer.channel().sink(0);
        let n = 60_000u64;
        for i in 0..n {
            let mut itl = [1, 2, 3];
            let mut r = request(&mut itl, Status::Ok);
            r.at.conversation = i;
            sink.push(r);
            assert!(sink.buf.capacity() <= BUFFER_BYTES + LINE_HEADROOM);
        }
        assert!(
            sink.buffers_allocated <= 2 * QUEUE_BUFFERS as u64 + 2,
            "{} buffers allocated",
            sink.buffers_allocated
        );
        drop(sink);
        let path = writer.finish().unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.len() > 50 * BUFFER_BYTES,
            "many buffers' worth went through"
        );
        let mut count = 0;
        for (i, line) in text.lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["conversation"], i as u64);
            count += 1;
        }
        assert_eq!(count, n);
    }

    #[test]
    fn the_aiperf_file_has_aiperfs_layout() {
        let dir = tempfile::tempdir().unwrap();
        let writer = RecordsWriter::start(dir.path(), &["http://h:1".into()]).unwrap();
        let mut sink = writer.channel().sink(1);
        sink.push(request(&mut [10, 10, 10], Status::Ok));
        let mut failed = request(
            &mut [],
            Status::Failed {
                kind: FailureKind::HttpStatus(503),
                message: Some("busy"),
            },
        );
        failed.first_token_ns = None;
        failed.tokens.output = None;
        sink.push(failed);
        drop(sink);
        let path = writer.finish().unwrap();
        let out = write_aiperf_jsonl(&path).unwrap();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        let ok = &lines[0];
        assert_eq!(ok["metadata"]["turn_index"], 1);
        assert_eq!(ok["metadata"]["benchmark_phase"], "profiling");
        assert_eq!(ok["metrics"]["time_to_first_token"]["unit"], "ms");
        assert_eq!(ok["metrics"]["time_to_first_token"]["value"], 40e-6);
        assert_eq!(ok["metrics"]["request_latency"]["value"], 190e-6);
        assert_eq!(ok["metrics"]["output_sequence_length"]["value"], 4);
        // (190 − 40) / (4 − 1) ns.
        assert_eq!(ok["metrics"]["inter_token_latency"]["value"], 50e-6);
        assert!(ok["error"].is_null());
        let start = ok["metadata"]["request_start_ns"].as_u64().unwrap();
        let end = ok["metadata"]["request_end_ns"].as_u64().unwrap();
        assert_eq!(end - start, 190, "one offset for every time");
        let bad = &lines[1];
        assert_eq!(bad["error"]["code"], 503);
        assert_eq!(bad["error"]["type"], "http_503");
        assert_eq!(bad["error"]["message"], "busy");
        assert_eq!(bad["metrics"]["error_isl"]["value"], 40);
    }
}
