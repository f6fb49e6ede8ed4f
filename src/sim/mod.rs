//! `parley sim`: a simulated OpenAI-compatible server — the default benchmark target and the
//! ground truth of every integration test — so it is honest, deterministic and cheap per event.
//!
//! What it models, and where:
//! - [`request`]: the request bodies it accepts (chat and completions, streaming or not) and the
//!   output-length rules (`ignore_eos`, `max_tokens`, `min_tokens`).
//! - [`prompt`]: prompt tokens as a chat server counts them (the rendering of
//!   [`crate::tokenizer::render_chat`], or of the model's chat template from `--tokenizer-path
//!   DIR`, tokenized), with per-message encodings cached for the former.
//! - [`cache`]: vLLM's automatic prefix cache (chained block hashes, LRU, one per server).
//! - [`stream`]: the timing model on absolute deadlines — first token at
//!   `t0 + ttft_base + ttft_per_uncached_token × (prompt − cached)`, token `i` at
//!   `first + i × itl` — and the vLLM-shaped SSE stream or JSON reply.
//! - [`reply`]: reply text of exactly N tokens, deterministic from the seed and the request.
//! - [`metrics`]: `GET /metrics` with vLLM's names. [`record`]: `--record`, one JSON line per
//!   request with the server's own timestamps.
//! - [`server`]: executors, listeners, connections, routing.
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`,
//! `GET /health`, `GET /metrics`.

pub mod cache;
mod config;
mod conn;
mod fault;
pub mod metrics;
pub mod pmqos;
pub mod prompt;
pub mod record;
pub mod reply;
pub mod request;
mod server;
pub mod stream;

#[cfg(test)]
mod bench;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use glommio::ExecutorJoinHandle;

use crate::tokenizer::{Tokenizer, TokenizerError};
use config::Config;
use pmqos::PmQos;
use record::RecordWriter;
use reply::ReplyWords;
use server::Shared;

/// Flags of `parley sim` (also used to start the in-process sim when `parley bench` has no URL).
#[derive(Clone, Debug, clap::Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one and prints it).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Number of executor threads, each with its own listener on the same port (SO_REUSEPORT;
    /// the kernel spreads connections over them).
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// Exact CPUs to run on, one pinned executor each (so as many executors as CPUs listed), as a
    /// kernel-style list (2-9,12). Every CPU must be online and in this process's affinity mask.
    #[arg(long, value_name = "LIST", conflicts_with_all = ["cores", "pin_cpus"])]
    pub cpus: Option<String>,
    /// Tokenizer used to count prompt tokens: a tokenizer.json, an HF model directory, or
    /// "builtin". A directory's chat template (chat_template.jinja, or tokenizer_config.json's
    /// chat_template), if it has one, renders chat requests instead of ChatML.
    #[arg(long)]
    pub tokenizer_path: Option<PathBuf>,
    /// Model name served (in /v1/models and every response's "model").
    #[arg(long, default_value = "parley-sim")]
    pub model: String,
    /// KV-cache block size in tokens: cached_tokens is always a multiple of it.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Prefix cache capacity in tokens (rounded down to whole blocks), shared by all executors;
    /// least recently used blocks are evicted first.
    #[arg(long, default_value_t = 1_000_000)]
    pub cache_capacity_tokens: u64,
    /// Time to first token for a fully cached prompt, in milliseconds (fractions allowed).
    #[arg(long, default_value_t = 20.0)]
    pub ttft_base_ms: f64,
    /// Prefill cost of each prompt token not found in the prefix cache, in microseconds; added
    /// to --ttft-base-ms.
    #[arg(long, default_value_t = 10.0)]
    pub ttft_per_uncached_token_us: f64,
    /// Time between output tokens, in milliseconds (fractions allowed; 0 = as fast as possible).
    #[arg(long, default_value_t = 10.0)]
    pub itl_ms: f64,
    /// Output tokens per content chunk, as loaded servers merge tokens. A chunk goes out at the
    /// deadline of its last token.
    #[arg(long, default_value_t = 1)]
    pub tokens_per_chunk: u32,
    /// Output length when ignore_eos is not set (the simulated model "stops" there, finish_reason
    /// "stop"), capped by max_tokens; with ignore_eos but no max_tokens, the output length too.
    #[arg(long, default_value_t = 64)]
    pub default_output_tokens: u32,
    /// Seed of the reply text: the same seed and request give the same reply.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write one JSON line per generation request with the server's own view of it (see
    /// `sim::record::Record` for the fields).
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Fail every N-th generation request with HTTP 500 and an error body, before any stream:
    /// requests are numbered 1, 2, 3… in arrival order over all executors and request k fails
    /// when k is a multiple of N (so the first failure is request N). 0 = never.
    /// Same as `--fault http_500:every=N`.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub fail_every: u64,
    /// Inject a fault into every N-th generation request (repeatable; request k gets the first
    /// listed fault whose N divides k). `every` defaults to 1 (all); `after=MS` (or a bare
    /// number) is the duration of kinds that take one. Kinds: `http_500`, `http_503`,
    /// `http_429` (Retry-After: after/1000 s, default 1 s), `reset_before_headers` (RST once
    /// the request is read), `reset_mid_stream` (RST after half the reply),
    /// `truncated_chunked_body` (FIN after half the reply, no last chunk),
    /// `malformed_json_event` (an event that is not JSON, then the rest), `in_band_error_event`
    /// (`data: {"error":…}` and [DONE] after half the reply), `abort_mid_stream`
    /// (finish_reason "abort", usage, [DONE] after half the reply, as vLLM),
    /// `stall_before_headers` (never answer), `stall_mid_stream` (half the reply, then
    /// silence), `ping_forever` (`: ping` every after ms, default 100, forever),
    /// `slow_headers` (headers after ms late, default 500, then a normal reply),
    /// `close_after_response` (full reply, then the connection is reset when the client sends
    /// its next request on it, unprocessed), `close_idle` (close connections idle for after
    /// ms, default 100; every connection). Mid-stream kinds apply to streaming requests; a
    /// non-streaming request gets a 500 instead. The record names each request's `fault` and
    /// whether it `completed`.
    #[arg(long = "fault", value_name = "KIND[:every=N][:after=MS]")]
    pub faults: Vec<String>,
    /// Serve https: the certificate chain (PEM, the server's certificate first) that --tls-key's
    /// key goes with. TLS 1.2 and 1.3, ALPN http/1.1, session resumption by tickets (the record's
    /// `tls` says whether each request's connection resumed). Every --fault kind works over TLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, RSA or EC) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Less common flags (boxed to keep `SimArgs` small).
    #[command(flatten, next_help_heading = "Advanced")]
    pub advanced: Box<SimAdvancedArgs>,
}

/// Less common flags of `parley sim`.
#[derive(Clone, Debug, clap::Args)]
pub struct SimAdvancedArgs {
    /// Pin executor i to the i-th CPU of this comma-separated list (cycling if shorter than
    /// --cores). Unpinned by default: the client pins its own cores.
    #[arg(long, value_delimiter = ',', value_name = "CPU,...")]
    pub pin_cpus: Vec<usize>,
    /// Reject requests whose "model" is not --model with a 404, as vLLM does. By default any
    /// model name is accepted.
    #[arg(long)]
    pub strict_model: bool,
    /// Do not add the blocks a reply completes to the prefix cache. By default they are added,
    /// as vLLM does, so the next turn (history + reply) hits them.
    #[arg(long)]
    pub no_cache_output_tokens: bool,
    /// Per-executor cache of message token ids, in tokens: a turn that resends a long history
    /// only tokenizes its new messages.
    #[arg(long, default_value_t = 4_000_000)]
    pub encode_cache_tokens: u64,
    /// Context length: a prompt plus max_tokens beyond it is rejected with a 400, as vLLM does.
    #[arg(long, default_value_t = 131_072)]
    pub max_model_len: u64,
    /// Largest request body accepted, in bytes (413 beyond).
    #[arg(long, default_value_t = 64 << 20)]
    pub max_body_bytes: usize,
    /// Do not hold a 0 µs PM-QoS request on /dev/cpu_dma_latency. By default the sim holds one
    /// while it runs (if permitted) so its timers fire on time on an idle machine.
    #[arg(long)]
    pub no_pm_qos: bool,
    /// What usage to report, to imitate servers that report less: `full` (with
    /// `prompt_tokens_details.cached_tokens`, as vLLM with --enable-prompt-tokens-details),
    /// `no-cached` (usage without `prompt_tokens_details`), `none` (no usage at all, even when
    /// `stream_options.include_usage` asks for it).
    #[arg(long, value_enum, default_value_t = UsageMode::Full)]
    pub usage: UsageMode,
    /// Header the record takes each request's conversation id from (the client's
    /// `--session-header`).
    #[arg(long, default_value = crate::client::SESSION_HEADER)]
    pub session_header: String,
    /// With --record: also write each request's prompt as the sim tokenized it (`prompt_text`:
    /// a completions prompt as sent, a chat request's messages rendered as it tokenized them: ChatML, or the chat template), to
    /// check what a client sent. Makes the record as large as the prompts.
    #[arg(long)]
    pub record_prompts: bool,
    /// Metric names `GET /metrics` uses: `vllm` (`vllm:prompt_tokens_total`,
    /// `vllm:prefix_cache_hits_total`, …) or `sglang` (`sglang:prompt_tokens_total`,
    /// `sglang:cached_tokens_total`, the `sglang:cache_hit_rate` gauge, …), so a client's
    /// scraping of either server can be tested.
    #[arg(long, value_enum, default_value_t = MetricsStyle::Vllm)]
    pub metrics_style: MetricsStyle,
}

/// See `--metrics-style`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsStyle {
    Vllm,
    Sglang,
}

/// See `--usage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UsageMode {
    Full,
    NoCached,
    None,
}

impl Default for SimAdvancedArgs {
    fn default() -> Self {
        SimAdvancedArgs {
            pin_cpus: Vec::new(),
            strict_model: false,
            no_cache_output_tokens: false,
            encode_cache_tokens: 4_000_000,
            max_model_len: 131_072,
            max_body_bytes: 64 << 20,
            no_pm_qos: false,
            usage: UsageMode::Full,
            session_header: crate::client::SESSION_HEADER.into(),
            record_prompts: false,
            metrics_style: MetricsStyle::Vllm,
        }
    }
}

impl Default for SimArgs {
    /// The same values as the flags' defaults.
    fn default() -> Self {
        SimArgs {
            host: "127.0.0.1".into(),
            port: 8000,
            cores: 1,
            cpus: None,
            tokenizer_path: None,
            model: "parley-sim".into(),
            block_size: 16,
            cache_capacity_tokens: 1_000_000,
            ttft_base_ms: 20.0,
            ttft_per_uncached_token_us: 10.0,
            itl_ms: 10.0,
            tokens_per_chunk: 1,
            default_output_tokens: 64,
            seed: 0,
            record: None,
            fail_every: 0,
            faults: Vec::new(),
            tls_cert: None,
            tls_key: None,
            advanced: Box::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot resolve --host {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("invalid {flag}: {reason}")]
    InvalidArg { flag: &'static str, reason: String },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("reply words: {0}")]
    Words(String),
    #[error("record file {path}: {source}")]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sim executor: {0}")]
    Executor(String),
}

/// A running sim; dropping it does not stop it, call [`SimHandle::shutdown`].
pub struct SimHandle {
    pub addr: SocketAddr,
    /// Serving https (`--tls-cert`).
    pub tls: bool,
    stop: Arc<AtomicBool>,
    executors: Vec<ExecutorJoinHandle<()>>,
    writer: Option<RecordWriter>,
    _pm_qos: PmQos,
}

impl SimHandle {
    /// Stops the executors and flushes the record file (errors go to stderr; see
    /// [`SimHandle::stop`] to get them).
    pub fn shutdown(self) {
        if let Err(e) = self.stop() {
            eprintln!("parley sim: {e}");
        }
    }

    /// Stops the executors (in-flight replies are cut and recorded as aborted), then flushes and
    /// closes the record file.
    pub fn stop(mut self) -> Result<(), SimError> {
        self.stop.store(true, Ordering::Release);
        let mut result = Ok(());
        for ex in self.executors.drain(..) {
            if let Err(e) = ex.join() {
                result = Err(SimError::Executor(e.to_string()));
            }
        }
        if let Some(w) = self.writer.take() {
            w.finish()?;
        }
        result
    }
}

/// How long to wait for an executor to report that it listens.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts the sim on its own executor threads and returns once it is listening.
pub fn spawn(args: &SimArgs, tokenizer: Arc<Tokenizer>) -> Result<SimHandle, SimError> {
    let cfg = Config::from_args(args)?;
    let addr = (args.host.as_str(), args.port)
        .to_socket_addrs()
        .map_err(|e| SimError::Resolve {
            host: args.host.clone(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| SimError::Resolve {
            host: args.host.clone(),
            reason: "no address".into(),
        })?;
    refuse_taken_port(addr)?;
    // Before anything starts: a bad certificate or key file is the first error.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
        (None, None) => None,
        _ => {
            return Err(SimError::InvalidArg {
                flag: "--tls-cert",
                reason: "--tls-cert and --tls-key go together".into(),
            })
        }
    };
    let words = ReplyWords::new(&tokenizer)?;
    let pm_qos = if cfg.pm_qos {
        PmQos::hold()
    } else {
        PmQos::none()
    };
    let (writer, sender) = match &args.record {
        Some(path) => {
            let (w, s) = RecordWriter::start(path)?;
            (Some(w), Some(s))
        }
        None => (None, None),
    };
    let cores = cfg.cores;
    let mut shared = Shared::new(cfg, tokenizer, words, sender);
    shared.tls = tls.map(futures_rustls::TlsAcceptor::from);
    let shared = Arc::new(shared);
    let mut handle = SimHandle {
        addr,
        tls: shared.tls.is_some(),
        stop: Arc::new(AtomicBool::new(false)),
        executors: Vec::with_capacity(cores),
        writer,
        _pm_qos: pm_qos,
    };
    for i in 0..cores {
        // The first executor binds the requested port (maybe 0); the others bind the one it got.
        match start_one(i, &shared, &mut handle) {
            Ok(bound) => handle.addr = bound,
            Err(e) => {
                let _ = handle.stop();
                return Err(e);
            }
        }
    }
    Ok(handle)
}

/// Fails when another socket already listens on `addr`. The executors listen with
/// `SO_REUSEPORT`, which would let a second sim (or any server that also sets it) share the port
/// silently, each getting part of the connections and of the record; a probe bound without it
/// is refused instead. Port 0 asks the kernel for a free port, which needs no check. (A server
/// that starts between the probe and the executors' binds is not caught.)
fn refuse_taken_port(addr: SocketAddr) -> Result<(), SimError> {
    if addr.port() == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind(addr) {
        Ok(probe) => {
            drop(probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(SimError::Bind {
            addr: addr.to_string(),
            source: std::io::Error::new(
                e.kind(),
                "another process already listens on this port (pick another --port, or 0 for \
                 a free one)",
            ),
        }),
        Err(e) => Err(SimError::Bind {
            addr: addr.to_string(),
            source: e,
        }),
    }
}

fn start_one(
    i: usize,
    shared: &Arc<Shared>,
    handle: &mut SimHandle,
) -> Result<SocketAddr, SimError> {
    let (tx, rx) = mpsc::channel();
    let ex = server::start_executor(i, shared.clone(), handle.addr, handle.stop.clone(), tx)?;
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(Ok(bound)) => {
            handle.executors.push(ex);
            Ok(bound)
        }
        Ok(Err(e)) => {
            let _ = ex.join();
            Err(e)
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The executor ended without reporting: its join result says why.
            let why = match ex.join() {
                Err(e) => e.to_string(),
                Ok(()) => "it ended before listening".into(),
            };
            Err(SimError::Executor(why))
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Err(SimError::Executor(format!(
            "executor {i} did not start listening within {READY_TIMEOUT:?}"
        ))),
    }
}

/// `parley sim`: serves until SIGINT/SIGTERM, printing `parley sim listening on http://ADDR`
/// (`https://` with `--tls-cert`).
pub fn run(args: &SimArgs) -> Result<(), SimError> {
    let tokenizer = Arc::new(Tokenizer::load(args.tokenizer_path.as_deref())?);
    // Before announcing the address: a test may signal us as soon as it reads it.
    crate::signal::install();
    // Stop gracefully from the first signal on, so the record is flushed.
    crate::signal::arm();
    let handle = spawn(args, tokenizer)?;
    {
        let mut out = std::io::stdout().lock();
        let scheme = if handle.tls { "https" } else { "http" };
        let _ = writeln!(out, "parley sim listening on {scheme}://{}", handle.addr);
        let _ = out.flush();
    }
    if !handle._pm_qos.active() && !args.advanced.no_pm_qos {
        eprintln!(
            "parley sim: note: could not hold /dev/cpu_dma_latency (needs root); timers may fire \
             late on an idle machine"
        );
    }
    crate::signal::wait_for_interrupt();
    handle.stop()
}
