//! Command-line flags. This layer only parses and range-checks; [`crate::plan`] turns the flags
//! into a validated plan and builds the run's resources.
//!
//! Flags accept both evalscope spellings (`--parallel`, `--number`, …) and AIPerf spellings
//! (`--concurrency`, `--conversation-num`, …) as aliases of one another.

use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::engine::EndpointKind;
use crate::sim::SimArgs;
use crate::workload::sampling::SamplingStrategy;
use crate::workload::{self, ContextMode};

#[derive(Debug, Parser)]
#[command(
    name = "parley",
    version,
    about = "Thread-per-core multi-turn load engine for OpenAI-compatible LLM servers",
    long_about = "parley benchmarks OpenAI-compatible serving endpoints (vLLM, SGLang, TensorRT-LLM, \
llama.cpp, cloud APIs) with realistic multi-turn conversations: every turn sends the whole history \
including the model's real replies, so prompts grow and prefix caches are exercised.\n\n\
Without --url, `parley bench` starts the built-in simulated server (`parley sim`) and benchmarks it.",
    after_help = "Examples:\n  parley bench\n  parley bench --url http://127.0.0.1:8000 --model Qwen/Qwen3-8B \\\n      --dataset random_multi_turn --min-turns 2 --max-turns 5 --parallel 16 --number 200\n  parley sim --port 8000 --itl-ms 10"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a benchmark (against the built-in sim when no --url is given). `parley perf` and
    /// `parley profile` are the same command, so `evalscope perf ARGS` and `aiperf profile ARGS`
    /// run as `parley perf ARGS` and `parley profile ARGS`.
    #[command(visible_aliases = ["perf", "profile"])]
    Bench(Box<BenchArgs>),
    /// Run the built-in simulated OpenAI-compatible server.
    Sim(SimArgs),
    /// Dataset tools: build a dataset file once, reuse it in many runs.
    Dataset(DatasetArgs),
    /// Check this host's settings for benchmarking (fd limits, ports, TIME_WAIT reuse,
    /// somaxconn, CPU governor and idle states, cpu_dma_latency, IRQ affinity, isolcpus) and
    /// print what to change. Exits 0 with warnings: they are advice.
    Doctor(DoctorArgs),
    /// Rebuild a run directory's report.html from its files (summary.json,
    /// workload_timeline.json), as the run wrote it.
    Report(ReportArgs),
    /// Set runs side by side: headline figures (req/s, output tok/s, TTFT, ITL and latency
    /// p50/p99, error rate, cache hit) with deltas against the first run, and a comparison page.
    Compare(CompareArgs),
}

/// The `parley` command with what derive cannot write: `--dataset`'s long help generated from
/// the source registry ([`workload::SOURCES`]), so a new source is listed without editing help
/// text.
pub fn command() -> clap::Command {
    Cli::command().mut_subcommand("bench", |bench| {
        bench.mut_arg("dataset", |arg| arg.long_help(dataset_help()))
    })
}

/// Parses the process's arguments with [`command`]; prints help or the error and exits like
/// `Cli::parse`.
pub fn parse() -> Cli {
    try_parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
}

/// [`parse`] over given arguments (the first is the program name).
pub fn try_parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut cmd = command();
    let matches = cmd.try_get_matches_from_mut(args)?;
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

/// `--dataset`'s long help: every source's names, description and the flags it reads.
fn dataset_help() -> String {
    let mut out = String::from(
        "Conversation source (default random_multi_turn; synthetic when an AIPerf synthetic flag \
         is given and no --dataset). A dataset-shaping flag the chosen source does not read is \
         an error. Every source, its format and flags: docs/datasets.md.\n",
    );
    for s in workload::SOURCES {
        let file = match s.path_use() {
            workload::PathUse::None => "",
            workload::PathUse::Required => " [--dataset-path]",
            workload::PathUse::Optional => " [--dataset-path, optional]",
        };
        out.push_str(&format!(
            "\n{}{file}\n    {}\n    reads: {}\n",
            s.names().join(", "),
            s.describe(),
            workload::flag_list(s.flags()),
        ));
    }
    out
}

/// `parley dataset …`.
#[derive(Debug, Args)]
pub struct DatasetArgs {
    #[command(subcommand)]
    pub command: DatasetCommand,
}

#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Build a dataset file from raw input.
    Build(DatasetBuildArgs),
}

#[derive(Debug, Args)]
pub struct DatasetBuildArgs {
    #[command(subcommand)]
    pub source: DatasetBuildSource,
}

#[derive(Debug, Subcommand)]
pub enum DatasetBuildSource {
    /// Build swe_smith conversations from a SWE-smith trajectories JSONL and write them as a
    /// pre-built agentic_dataset.json (evalscope's format); `parley bench --dataset swe_smith
    /// --dataset-path FILE` then runs exactly the conversations a live build with the same
    /// arguments would.
    #[command(
        name = "swe-smith",
        visible_alias = "swe_smith",
        after_help = "Example:\n  parley dataset build swe-smith --dataset-path trajectories.jsonl \\\n      --dataset-args '{\"first_turn_length\": 8192, \"subsequent_turn_length\": [512, 1024]}' \\\n      --min-turns 3 --max-turns 8 --number 128 --seed 42 --output agentic_dataset.json"
    )]
    SweSmith(SweSmithBuildArgs),
}

/// Flags of `parley dataset build swe-smith`: the same names and meanings as `parley bench`'s.
#[derive(Debug, Clone, Args)]
pub struct SweSmithBuildArgs {
    /// SWE-smith trajectories: JSONL, one `{"messages": …}` object per line (`messages` an
    /// OpenAI messages array or a JSON string of one).
    #[arg(long, visible_alias = "input-file")]
    pub dataset_path: PathBuf,

    /// Where to write the pre-built agentic_dataset.json.
    #[arg(long, short = 'o', visible_alias = "output-path")]
    pub output: PathBuf,

    /// JSON object: first_turn_length and subsequent_turn_length (tokens: an integer or
    /// [min, max]; defaults 65000 and 500), chars_per_token (pre-filter, default 3.0), workers
    /// (threads, default every core).
    #[arg(long, visible_alias = "multi-turn-args")]
    pub dataset_args: Option<String>,

    /// Fewest turns per conversation (default 1); each conversation's count is uniform in
    /// [min, max].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub min_turns: Option<u32>,

    /// Most turns per conversation (default: --min-turns).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_turns: Option<u32>,

    /// Conversations to write.
    #[arg(long, short = 'n', visible_alias = "num-conversations", default_value_t = crate::workload::swe_smith::DEFAULT_BUILD_CONVERSATIONS, value_parser = clap::value_parser!(u64).range(1..))]
    pub number: u64,

    /// Random seed (same seed and arguments, same conversations; `parley bench` defaults to 0
    /// too).
    #[arg(long, visible_alias = "random-seed", default_value_t = 0)]
    pub seed: u64,

    /// Tokenizer the lengths are counted with: a tokenizer.json, a local HF model directory, or
    /// `builtin`. Use the one the benchmark runs with.
    #[arg(long, visible_alias = "tokenizer")]
    pub tokenizer_path: Option<PathBuf>,

    /// Leave out invalid trajectories (and say how many) instead of stopping with a list.
    #[arg(long)]
    pub skip_invalid: bool,

    /// Longest line of the trajectories file read, in bytes; a longer one stops the build.
    #[arg(long, default_value_t = crate::workload::input::DEFAULT_MAX_LINE_BYTES, value_parser = parse_max_line_bytes)]
    pub max_line_bytes: usize,
}

/// Flags of `parley doctor`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:\n  parley doctor\n  parley doctor --cpus 2-3 --parallel 10000")]
pub struct DoctorArgs {
    /// CPUs the benchmark will pin executors to (`parley bench --cpus`), as a kernel-style list
    /// (2-9,12). A CPU that does not exist or that this process may not use is an error.
    /// Default: every CPU this process may use. `--cores` is the older spelling.
    #[arg(long, visible_alias = "cores")]
    pub cpus: Option<String>,

    /// The --parallel the benchmark will use (sizes the fd, port and backlog checks).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub parallel: u64,
}

/// Flags of `parley report`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Example:\n  parley report outputs/20250101_120000/parley")]
pub struct ReportArgs {
    /// A run directory (the one holding summary.json; for a sweep, one point's directory).
    pub run_dir: PathBuf,
}

/// Flags of `parley compare`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Example:\n  parley compare outputs/20250101_120000/parley outputs/20250102_090000/parley \\\n      --output vllm-vs-sglang.html"
)]
pub struct CompareArgs {
    /// Run directories (or their summary.json files); the first is the baseline every delta is
    /// taken against.
    #[arg(required = true, num_args = 2..)]
    pub runs: Vec<PathBuf>,

    /// Where to write the comparison page.
    #[arg(long, short = 'o', default_value = "compare.html")]
    pub output: PathBuf,
}

/// `parley bench`'s exit codes (README "Exit codes").
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0    completed, and every --slo / --max-error-rate threshold met
  1    completed, but a threshold was breached (the console says which, by how much)
  2    usage or input error (bad flag, dataset, URL): nothing was sent
  3    nothing measurable: no request succeeded (e.g. target unreachable, every request failed)
  130  interrupted by SIGINT (143: SIGTERM, 129: SIGHUP); the report was written";

/// Flags of `parley bench`.
#[derive(Debug, Clone, Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct BenchArgs {
    // ----- target -----
    /// Server URL: a base (`http://host:port`, `https://host:port` or `host:port`; the
    /// endpoint's path is appended, `/v1/chat/completions` by default) or the full endpoint URL
    /// (`…/v1/chat/completions` or `…/v1/completions`, which also picks the body form). Repeat
    /// it to spread the load over several servers: conversation i goes to URL i mod N with every
    /// one of its turns. Without it, parley starts its built-in simulated server on 127.0.0.1
    /// and benchmarks that. https:// is verified against the bundled Mozilla roots and
    /// --ca-cert.
    #[arg(long, short = 'u', help_heading = "Target")]
    pub url: Vec<String>,

    /// Which endpoint, and so which body (AIPerf): `chat` (`/v1/chat/completions`, a `messages`
    /// array) or `completions` (`/v1/completions`, the history rendered as one ChatML text
    /// `prompt`). Default: the endpoint the --url or --endpoint path names, else chat. A path
    /// that names the other endpoint is an error.
    #[arg(long, value_name = "TYPE", value_parser = parse_endpoint_type, help_heading = "Target")]
    pub endpoint_type: Option<EndpointKind>,

    /// Request path instead of the endpoint's own (AIPerf), e.g. `/v1/chat/completions`, or a
    /// gateway's path. A --url that already names an endpoint path must name this one.
    #[arg(long, value_name = "PATH", help_heading = "Target")]
    pub endpoint: Option<String>,

    /// evalscope's API plugin. parley implements `openai` (OpenAI-compatible chat and
    /// completions endpoints), its default; any other plugin is an error.
    #[arg(long, value_name = "API", value_parser = parse_api, help_heading = "Target")]
    pub api: Option<String>,

    /// Model name sent in every request body. Required with --url; defaults to the sim's model
    /// otherwise.
    #[arg(long, short = 'm', help_heading = "Target")]
    pub model: Option<String>,

    /// API key, sent as `Authorization: Bearer KEY`.
    #[arg(
        long,
        env = "PARLEY_API_KEY",
        hide_env_values = true,
        help_heading = "Target"
    )]
    pub api_key: Option<String>,

    /// Extra request header `NAME: VALUE` (or `NAME:VALUE`), repeatable (AIPerf `-H`).
    #[arg(long, short = 'H', help_heading = "Target")]
    pub header: Vec<String>,

    /// Header that carries each conversation's id, e.g. `X-Session-ID` for a session-affinity
    /// router (default `x-parley-conversation`).
    #[arg(long, help_heading = "Target")]
    pub session_header: Option<String>,

    /// Seconds allowed for a TCP connect before the request counts as failed (`connect`); an
    /// https:// target's TLS handshake gets as long again (`tls`).
    #[arg(long, default_value_t = 10.0, value_parser = positive_f64, help_heading = "Target")]
    pub connect_timeout: f64,

    /// PEM file of one or more CA certificates that https:// targets are verified against,
    /// beside the bundled Mozilla roots: a private CA, or a self-signed server certificate. A
    /// file that cannot be read or holds no usable certificate stops the run before any traffic.
    #[arg(long, value_name = "FILE", help_heading = "Target")]
    pub ca_cert: Option<PathBuf>,

    /// Do not verify https:// targets' certificates or host names (a warning says so). For test
    /// servers only: anyone on the path can then read and change the traffic.
    #[arg(long, conflicts_with = "ca_cert", help_heading = "Target")]
    pub insecure: bool,

    /// Seconds without a single byte from the server before a request counts as failed
    /// (`read_timeout`).
    #[arg(long, default_value_t = 600.0, value_parser = positive_f64, help_heading = "Target")]
    pub read_timeout: f64,

    /// Seconds a whole request may take, from sending it to the last byte of the reply, before
    /// it counts as failed (`request_timeout`); catches servers that keep a stream alive with
    /// comments or tiny events but never finish. Default: no limit.
    #[arg(long, value_parser = positive_f64, help_heading = "Target")]
    pub request_timeout: Option<f64>,

    /// Retry a request answered with HTTP 429 after its `Retry-After` (seconds, at most 60;
    /// 1 s without one), up to 3 times, counting each retry in `requests.retried`. Off by
    /// default: a 429 is a failure.
    #[arg(long, help_heading = "Target")]
    pub retry_429: bool,

    /// Stop the run when this many connection attempts in a row fail on one engine core (the
    /// target is down or unreachable), instead of failing every conversation of the dataset.
    /// Default: 100, or the core's share of --parallel when larger (a burst of that many
    /// connects may fail together on a loaded server). 0 = never stop.
    #[arg(long, value_name = "N", help_heading = "Target")]
    pub max_consecutive_connect_failures: Option<u64>,

    /// Before the run, wait up to this many seconds for the target to answer `GET /v1/models`
    /// (any status below 500), polling twice a second, as while a server loads its model; fail
    /// with a clear message if it never does. 0 = no wait (AIPerf `--wait-for-model-timeout`).
    #[arg(long, default_value_t = 0.0, value_name = "S", help_heading = "Target")]
    pub wait_for_model_timeout: f64,

    // ----- load -----
    /// Conversations in flight at once (closed loop; default 10); each runs turn by turn. With
    /// --request-rate it is a cap instead: arrivals that find it full wait for a slot. A list
    /// (`5 10` or `5,10`) sweeps: one run per value, paired with --number / --request-rate.
    #[arg(long, visible_alias = "concurrency", num_args = 1.., value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..), help_heading = "Load")]
    pub parallel: Vec<u32>,

    /// Conversations to run in total (default 100; with --duration, no limit unless given).
    /// Conversations are taken from the dataset in order, cycling when it holds fewer. A list
    /// sweeps, paired with --parallel.
    #[arg(long, short = 'n', visible_aliases = ["conversation-num", "num-conversations", "num-sessions"], num_args = 1.., value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..), help_heading = "Load")]
    pub number: Vec<u64>,

    /// Requests to run in total (AIPerf): whole conversations are started until their turns
    /// reach this count. For single-turn data it is the conversation count.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "number", help_heading = "Load")]
    pub request_count: Option<u64>,

    /// Open loop: new conversations per second (later turns follow their previous turn plus
    /// think time). -1 = no rate (evalscope). A list sweeps.
    #[arg(long, visible_alias = "rate", num_args = 1.., value_delimiter = ',', allow_negative_numbers = true, help_heading = "Load")]
    pub request_rate: Vec<f64>,

    /// How arrivals are spaced: poisson (default), constant, or gamma (shape --burstiness).
    #[arg(
        long,
        visible_alias = "arrival-pattern",
        value_enum,
        help_heading = "Load"
    )]
    pub request_rate_mode: Option<crate::engine::ArrivalMode>,

    /// Gamma shape of the arrival gaps (vLLM's --burstiness): 1 = Poisson, below 1 burstier,
    /// above 1 more regular. Implies --request-rate-mode gamma.
    #[arg(long, visible_alias = "arrival-smoothness", help_heading = "Load")]
    pub burstiness: Option<f64>,

    /// Seconds after which no new conversation starts; conversations in flight run every
    /// remaining turn (evalscope's soft exit). With --number, whichever comes first.
    #[arg(long, visible_alias = "benchmark-duration", value_parser = positive_f64, help_heading = "Load")]
    pub duration: Option<f64>,

    /// Seconds after --duration at which requests still in flight are cancelled and counted as
    /// `cancelled` (AIPerf --benchmark-grace-period). Default: no limit.
    #[arg(long, visible_alias = "benchmark-grace-period", value_parser = non_negative_f64, requires = "duration", help_heading = "Load")]
    pub duration_grace: Option<f64>,

    /// Seconds requests in flight get to finish after SIGINT, SIGTERM or SIGHUP before they are
    /// cancelled and counted as `cancelled` (a second Ctrl-C cancels at once). The signal itself
    /// stops new conversations and turns at once, and the report is always written. Not to be
    /// confused with --duration-grace (AIPerf --benchmark-grace-period), which applies after
    /// --duration ends.
    #[arg(long, visible_alias = "interrupt-grace", value_name = "S", default_value_t = 5.0, value_parser = non_negative_f64, help_heading = "Load")]
    pub grace: f64,

    /// Conversations to run first, with the same load, excluded from every figure (the report
    /// counts them). A fraction 0 < x < 1 means x · --number (evalscope --warmup-num).
    #[arg(long, visible_aliases = ["warmup-num", "warmup-request-count", "num-warmup-sessions"], value_parser = non_negative_f64, help_heading = "Load")]
    pub warmup_conversations: Option<f64>,

    /// Seconds of warmup (soft end, like --duration), excluded from every figure.
    #[arg(long, value_parser = positive_f64, help_heading = "Load")]
    pub warmup_duration: Option<f64>,

    /// Do not open every slot's connection before the measured start (first turns then include
    /// the connect).
    #[arg(long, help_heading = "Load")]
    pub no_preconnect: bool,

    /// Closed loop: start the --parallel slots evenly over this many seconds. With a rate and
    /// --ramp-up-strategy: the time the rate takes to reach its target.
    #[arg(long, value_parser = positive_f64, help_heading = "Load")]
    pub ramp_up_duration: Option<f64>,

    /// Ramp the arrival rate from --ramp-up-start-rate to --request-rate (vLLM), over
    /// --ramp-up-duration or else over the run's conversations.
    #[arg(
        long,
        value_enum,
        requires = "ramp_up_start_rate",
        help_heading = "Load"
    )]
    pub ramp_up_strategy: Option<crate::engine::RampStrategy>,

    /// Rate (conversations/s) the ramp starts from.
    #[arg(long, requires = "ramp_up_strategy", help_heading = "Load")]
    pub ramp_up_start_rate: Option<f64>,

    /// Seconds to wait between the points of a sweep (evalscope --sleep-interval).
    #[arg(long, visible_alias = "sleep-interval", default_value_t = 0.0, value_parser = non_negative_f64, help_heading = "Load")]
    pub sweep_pause: f64,

    /// Cores to run executors on: one pinned executor each, on the first N CPUs this process
    /// may use. Default: all of them.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Load", conflicts_with = "cpus")]
    pub cores: Option<u32>,

    /// Exact CPUs to run executors on, one pinned executor each, as a kernel-style list (2-9,12),
    /// e.g. the CPUs a host isolates with isolcpus=. Every CPU must be online and in this
    /// process's affinity mask.
    #[arg(long, value_name = "LIST", help_heading = "Load")]
    pub cpus: Option<String>,

    /// Keep every executor spinning instead of parking (sleeping in the kernel) when it has
    /// nothing to do; it parks only after 10 ms with no work at all. Wake-ups then cost no
    /// scheduler or idle-state exit latency, so timestamps and send times are tighter, at the
    /// price of each engine core at 100 % CPU while the run is busy. With --spin, client.cpu_s
    /// counts the spinning; client.cores[i].busy_pct counts only the executor's own work (tasks
    /// and I/O polling). Use on a dedicated benchmark host when timing accuracy matters more than
    /// CPU.
    #[arg(long, help_heading = "Load")]
    pub spin: bool,

    // ----- workload -----
    /// Conversation source: random_multi_turn (default), synthetic (chosen when an AIPerf
    /// synthetic flag is given), or a file format; --help lists every source and the flags it
    /// reads (docs/datasets.md).
    #[arg(long, visible_alias = "custom-dataset-type", help_heading = "Workload")]
    pub dataset: Option<String>,

    /// Dataset file, for file-based sources.
    #[arg(long, visible_alias = "input-file", help_heading = "Workload")]
    pub dataset_path: Option<PathBuf>,

    /// Skip the first N conversations of the dataset (synthetic sources: of the sequence the
    /// seed defines), e.g. to split one dataset over several client boxes.
    #[arg(long, default_value_t = 0, help_heading = "Workload")]
    pub dataset_offset: u64,

    /// `I/N`: keep every N-th conversation starting at I (0-based), after --dataset-offset, so
    /// N boxes running I = 0..N-1 split one dataset without overlap.
    #[arg(long, value_parser = parse_shard, help_heading = "Workload")]
    pub shard: Option<(u64, u64)>,

    /// Leave out invalid dataset entries (the report counts them) instead of stopping before
    /// the run with a list of them.
    #[arg(long, help_heading = "Workload")]
    pub skip_invalid: bool,

    /// Longest dataset line (or item of a JSON array file) read, in bytes (default 64 MiB). A
    /// longer one stops before the run, naming file and line, so a wrong file (binary,
    /// /dev/zero) is an error rather than an out-of-memory abort; --skip-invalid does not skip it.
    #[arg(long, default_value_t = crate::workload::input::DEFAULT_MAX_LINE_BYTES, value_parser = parse_max_line_bytes, help_heading = "Workload")]
    pub max_line_bytes: usize,

    /// How history is built: live = earlier turns plus the model's real replies (default);
    /// canned = the dataset's recorded replies instead; verbatim = the dataset's message arrays
    /// sent as they are. Default: what the dataset implies (live for deltas).
    #[arg(long, value_enum, help_heading = "Workload")]
    pub context_mode: Option<ContextMode>,

    /// Source-specific options as a JSON object (evalscope), e.g. swe_smith's
    /// '{"first_turn_length": 8192, "subsequent_turn_length": 1024}'.
    #[arg(long, visible_alias = "multi-turn-args", help_heading = "Workload")]
    pub dataset_args: Option<String>,

    /// Tokenizer for synthesis: a tokenizer.json, a local HF model directory, or `builtin`
    /// (Qwen2's BPE, shipped in the binary). A directory's chat template (chat_template.jinja,
    /// or tokenizer_config.json's chat_template) renders the prompts the client counts when the
    /// server sends no usage (docs/metrics.md).
    #[arg(long, visible_alias = "tokenizer", help_heading = "Workload")]
    pub tokenizer_path: Option<PathBuf>,

    /// Fewest user turns per conversation (random_multi_turn and swe_smith: uniform in
    /// [min, max], default 1; custom_multi_turn and share_gpt: shorter conversations are
    /// filtered out).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Workload")]
    pub min_turns: Option<u32>,

    /// Most user turns per conversation (random_multi_turn default 4); file datasets are
    /// truncated to it when given.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Workload")]
    pub max_turns: Option<u32>,

    /// Fewest tokens per synthetic user turn (random_multi_turn, default 64); for share_gpt and
    /// custom_multi_turn, the first user message's lower length bound.
    #[arg(long, help_heading = "Workload")]
    pub min_prompt_length: Option<u32>,

    /// Most tokens per synthetic user turn (random_multi_turn, default 256); for share_gpt and
    /// custom_multi_turn, the first user message's upper length bound.
    #[arg(long, help_heading = "Workload")]
    pub max_prompt_length: Option<u32>,

    /// Random seed for synthesis (same seed, same conversations).
    #[arg(
        long,
        visible_alias = "random-seed",
        default_value_t = 0,
        help_heading = "Workload"
    )]
    pub seed: u64,

    /// Tokens of each shared prefix put at the start of a conversation's first user turn
    /// (synthetic, random_multi_turn); the turn's own length comes on top.
    #[arg(
        long,
        visible_alias = "prefix-prompt-length",
        help_heading = "Workload"
    )]
    pub prefix_length: Option<u32>,

    /// Distinct shared prefixes; conversation i gets prefix i mod count.
    #[arg(long, visible_alias = "num-prefix-prompts", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Workload")]
    pub prefix_count: Option<u32>,

    /// Tokens of one system prompt shared by every conversation (synthetic, random_multi_turn).
    #[arg(long, help_heading = "Workload")]
    pub shared_system_prompt_length: Option<u32>,

    /// Tokens per hash_id block (mooncake_trace default 512, bailian_trace 16).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Workload")]
    pub isl_block_size: Option<u32>,

    /// Unique conversations in the run's pool (AIPerf): synthetic sources generate this many,
    /// file sources keep at most this many. Default: --number (at most 100000). Claims beyond the
    /// pool reuse it as --dataset-sampling-strategy says.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=crate::plan::MAX_POOL), help_heading = "Workload")]
    pub num_dataset_entries: Option<u64>,

    /// Which pool entry the k-th claimed conversation runs: sequential = k mod pool size, in
    /// order (default); random = uniform with replacement; shuffle = a fresh permutation of the
    /// pool for every pass. random and shuffle are seeded by --seed.
    #[arg(
        long,
        value_enum,
        default_value_t = SamplingStrategy::Sequential,
        conflicts_with = "fixed_schedule",
        help_heading = "Workload"
    )]
    pub dataset_sampling_strategy: SamplingStrategy,

    /// Replay the dataset's recorded send times: each conversation's first turn is sent at its
    /// `timestamp` (after the schedule origin), later turns at the later of their own timestamp
    /// and the previous reply's end (or their delay after it). Every conversation of the file
    /// runs once, in time order (--number, when given and smaller, keeps the earliest). Needs a
    /// source with timestamps: mooncake_trace, bailian_trace, multi_turn, single_turn.
    #[arg(long, help_heading = "Fixed schedule")]
    pub fixed_schedule: bool,

    /// Start the schedule at the earliest first-turn timestamp instead of at 0 on the trace's
    /// clock (no idle wait before the first request).
    #[arg(
        long,
        requires = "fixed_schedule",
        conflicts_with = "fixed_schedule_start_offset",
        help_heading = "Fixed schedule"
    )]
    pub fixed_schedule_auto_offset: bool,

    /// Milliseconds on the trace's clock: conversations whose first turn is earlier are left
    /// out, and the schedule starts here.
    #[arg(
        long,
        value_name = "MS",
        requires = "fixed_schedule",
        help_heading = "Fixed schedule"
    )]
    pub fixed_schedule_start_offset: Option<u64>,

    /// Milliseconds on the trace's clock: conversations whose first turn is later are left out.
    #[arg(
        long,
        value_name = "MS",
        requires = "fixed_schedule",
        help_heading = "Fixed schedule"
    )]
    pub fixed_schedule_end_offset: Option<u64>,

    // ----- AIPerf synthetic -----
    /// Mean turns per conversation: max(1, ceil(N(mean, stddev))).
    #[arg(
        long,
        visible_alias = "session-turns-mean",
        help_heading = "AIPerf synthetic"
    )]
    pub conversation_turn_mean: Option<f64>,

    /// Standard deviation of turns per conversation.
    #[arg(
        long,
        visible_alias = "session-turns-stddev",
        help_heading = "AIPerf synthetic"
    )]
    pub conversation_turn_stddev: Option<f64>,

    /// Mean user tokens per turn.
    #[arg(long, visible_alias = "isl", help_heading = "AIPerf synthetic")]
    pub synthetic_input_tokens_mean: Option<f64>,

    /// Standard deviation of user tokens per turn.
    #[arg(long, visible_alias = "isl-stddev", help_heading = "AIPerf synthetic")]
    pub synthetic_input_tokens_stddev: Option<f64>,

    /// Mean per-turn max_tokens.
    #[arg(long, visible_alias = "osl", help_heading = "AIPerf synthetic")]
    pub output_tokens_mean: Option<f64>,

    /// Standard deviation of per-turn max_tokens.
    #[arg(long, visible_alias = "osl-stddev", help_heading = "AIPerf synthetic")]
    pub output_tokens_stddev: Option<f64>,

    /// Mean think time before turns 2.. in milliseconds.
    #[arg(
        long,
        visible_alias = "session-turn-delay-mean",
        help_heading = "AIPerf synthetic"
    )]
    pub conversation_turn_delay_mean: Option<f64>,

    /// Standard deviation of think time in milliseconds.
    #[arg(
        long,
        visible_alias = "session-turn-delay-stddev",
        help_heading = "AIPerf synthetic"
    )]
    pub conversation_turn_delay_stddev: Option<f64>,

    /// Factor applied to every think time (default 1.0).
    #[arg(long, help_heading = "AIPerf synthetic")]
    pub conversation_turn_delay_ratio: Option<f64>,

    // ----- request -----
    /// `max_tokens` sent with every request (a dataset's per-turn value wins).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Request")]
    pub max_tokens: u32,

    /// `min_tokens` sent with every request, when set.
    #[arg(long, help_heading = "Request")]
    pub min_tokens: Option<u32>,

    /// JSON object merged into every request body, e.g. '{"ignore_eos": true}'. Its keys win
    /// over parley's own (except `messages`).
    #[arg(long, help_heading = "Request")]
    pub extra_args: Option<String>,

    /// Stream responses (default; AIPerf spells it --streaming). Usage is always requested
    /// (`stream_options.include_usage`).
    #[arg(
        long,
        visible_alias = "streaming",
        overrides_with = "no_stream",
        help_heading = "Request"
    )]
    pub stream: bool,

    /// Ask for whole (non-streamed) responses; TTFT then equals latency.
    #[arg(long, overrides_with = "stream", help_heading = "Request")]
    pub no_stream: bool,

    /// evalscope's switch into multi-turn mode: accepted and changes nothing, since every parley
    /// run is multi-turn (a single-turn dataset is conversations of one turn).
    #[arg(long, help_heading = "Request")]
    pub multi_turn: bool,

    /// evalscope's "send token ids to /v1/completions": ignored with a note on stderr, as
    /// evalscope ignores it in multi-turn mode. Turns carry their history as text (messages, or
    /// a text prompt with --endpoint-type completions), which the server tokenizes.
    #[arg(long, help_heading = "Request")]
    pub tokenize_prompt: bool,

    // ----- thresholds -----
    /// Per-request limits in milliseconds that make a successful request "good": `ttft`, `tpot`,
    /// `itl` (the request's mean gap between output events), `e2el` (latency); vLLM's
    /// `ttft:200 tpot:50 e2el:5000` and AIPerf's `"time_to_first_token:200
    /// inter_token_latency:50 request_latency:5000"` spellings work too. A request is good when
    /// it meets every limit; the report adds goodput (good requests/s) and its share.
    #[arg(long, num_args = 1.., value_name = "NAME:MS", help_heading = "Thresholds")]
    pub goodput: Vec<String>,

    /// Thresholds on each point's summary, comma-separated or repeated: `ttft_p99_ms=500`,
    /// `itl_p99_ms=50`, `{ttft,tpot,itl,latency}_{mean,p50,p90,p95,p99,max}_ms` (maxima),
    /// `error_rate=0.01` (maximum), `goodput_share=0.9`, `requests_per_s=…`,
    /// `output_tokens_per_s=…` (minima). A breach makes the run exit 1 and the console says
    /// which threshold failed by how much.
    #[arg(long, value_name = "NAME=LIMIT,...", help_heading = "Thresholds")]
    pub slo: Vec<String>,

    /// Shorthand for `--slo error_rate=R`: exit 1 when more than this fraction of requests
    /// failed (0.01 = 1 %).
    #[arg(long, value_name = "R", help_heading = "Thresholds")]
    pub max_error_rate: Option<f64>,

    // ----- output -----
    /// Scrape the server's Prometheus metrics before, every 2 s during, and after each run, and
    /// report its own prompt/generation token counts and prefix-cache hit rate beside the
    /// client's (vLLM and SGLang names; `server_metrics` in summary.json). Without a URL: each
    /// target's `/metrics`. Repeatable or comma-separated. An endpoint that cannot be scraped
    /// is a note in the report, never a failure.
    #[arg(long, value_name = "URL", num_args = 0..=1, value_delimiter = ',', help_heading = "Output")]
    pub server_metrics: Option<Vec<String>>,

    /// Directory under which each run writes `<timestamp>/<name>/summary.json`.
    #[arg(long, default_value = "outputs", help_heading = "Output")]
    pub outputs_dir: PathBuf,

    /// Run name (the output subdirectory). Default: the model name's last path component.
    #[arg(long, help_heading = "Output")]
    pub name: Option<String>,

    /// No progress line on stderr.
    #[arg(long, short = 'q', help_heading = "Output")]
    pub quiet: bool,

    /// Do not write `records.jsonl` and `profile_export.jsonl` (one line per request, written
    /// by default; docs/metrics.md, "Per-request records"). Same as `--export-level summary`.
    #[arg(long, help_heading = "Output")]
    pub no_records: bool,

    /// AIPerf's export level: `records` (default) writes the per-request files, `summary` only
    /// the summaries (like --no-records); `raw` (AIPerf's full request/response dump) is not
    /// implemented.
    #[arg(
        long,
        value_enum,
        value_name = "LEVEL",
        conflicts_with = "no_records",
        help_heading = "Output"
    )]
    pub export_level: Option<ExportLevel>,
}

/// `--export-level` (AIPerf's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportLevel {
    Summary,
    Records,
    Raw,
}

impl BenchArgs {
    pub fn streaming(&self) -> bool {
        !self.no_stream
    }
}

/// `--api`: only the plugin parley implements.
fn parse_api(s: &str) -> Result<String, String> {
    match s {
        "openai" => Ok(s.to_string()),
        other => Err(format!(
            "parley implements the `openai` API (OpenAI-compatible /v1/chat/completions and \
             /v1/completions), not `{other}`"
        )),
    }
}

/// `--endpoint-type`: the endpoints parley implements.
fn parse_endpoint_type(s: &str) -> Result<EndpointKind, String> {
    match s {
        "chat" => Ok(EndpointKind::Chat),
        "completions" => Ok(EndpointKind::Completions),
        other => Err(format!(
            "parley implements the `chat` and `completions` endpoint types, not `{other}`"
        )),
    }
}

/// `I/N` with I < N.
/// `--max-line-bytes`: a byte count, optionally with a binary suffix (`64MiB`, `512KiB`, `1G`).
fn parse_max_line_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => {
            return Err(format!(
                "`{s}`: expected bytes, e.g. 65536, 512KiB, 64MiB or 1GiB"
            ))
        }
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("`{s}`: expected bytes, e.g. 65536, 512KiB, 64MiB or 1GiB"))?;
    let bytes = n
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))?;
    if bytes == 0 {
        return Err("must be at least 1 byte".into());
    }
    Ok(bytes)
}

fn parse_shard(s: &str) -> Result<(u64, u64), String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not I/N (e.g. 0/4)"))?;
    let i: u64 = i
        .trim()
        .parse()
        .map_err(|_| format!("`{i}` is not a number"))?;
    let n: u64 = n
        .trim()
        .parse()
        .map_err(|_| format!("`{n}` is not a number"))?;
    if n == 0 || i >= n {
        return Err(format!("`{s}`: need 0 <= I < N"));
    }
    Ok((i, n))
}

fn non_negative_f64(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("`{s}` must be a non-negative number"))
    }
}

fn positive_f64(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("`{s}` must be a positive number of seconds"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bench(args: &[&str]) -> BenchArgs {
        let mut full = vec!["parley", "bench"];
        full.extend_from_slice(args);
        match try_parse_from(full).unwrap().command {
            Command::Bench(b) => *b,
            _ => unreachable!(),
        }
    }

    #[test]
    fn server_metrics_takes_no_url_one_or_several() {
        assert_eq!(bench(&[]).server_metrics, None);
        assert_eq!(bench(&["--server-metrics"]).server_metrics, Some(vec![]));
        assert_eq!(
            bench(&["--server-metrics", "--parallel", "2"]).server_metrics,
            Some(vec![])
        );
        assert_eq!(
            bench(&["--server-metrics", "h:1/metrics,h:2"]).server_metrics,
            Some(vec!["h:1/metrics".to_string(), "h:2".to_string()])
        );
        assert_eq!(
            bench(&["--server-metrics", "h:1", "--server-metrics", "h:2"]).server_metrics,
            Some(vec!["h:1".to_string(), "h:2".to_string()])
        );
    }

    #[test]
    fn both_dialects_parse_to_the_same_fields() {
        let e = bench(&["--parallel", "7", "--number", "30"]);
        let a = bench(&["--concurrency", "7", "--conversation-num", "30"]);
        assert_eq!((e.parallel, e.number), (vec![7], vec![30]));
        assert_eq!((a.parallel, a.number), (vec![7], vec![30]));
    }

    #[test]
    fn sweep_lists_take_both_spellings() {
        let e = bench(&["--parallel", "5", "10", "--number", "10", "20"]);
        assert_eq!((e.parallel, e.number), (vec![5, 10], vec![10, 20]));
        let a = bench(&["--concurrency", "2,4,8", "--request-rate", "1,2.5"]);
        assert_eq!(a.parallel, vec![2, 4, 8]);
        assert_eq!(a.request_rate, vec![1.0, 2.5]);
        assert_eq!(bench(&["--rate", "-1"]).request_rate, vec![-1.0]);
        let u = bench(&["--url", "http://a:1", "-u", "http://b:2", "-H", "X-A: 1"]);
        assert_eq!(u.url.len(), 2);
        assert_eq!(u.header, vec!["X-A: 1".to_string()]);
    }

    #[test]
    fn stream_is_default_and_can_be_turned_off() {
        assert!(bench(&[]).streaming());
        assert!(!bench(&["--no-stream"]).streaming());
        assert!(bench(&["--no-stream", "--stream"]).streaming());
    }

    #[test]
    fn shard_parses_and_checks_range() {
        assert_eq!(bench(&["--shard", "1/4"]).shard, Some((1, 4)));
        assert!(Cli::try_parse_from(["parley", "bench", "--shard", "4/4"]).is_err());
        assert!(Cli::try_parse_from(["parley", "bench", "--shard", "x"]).is_err());
        let a = bench(&["--isl", "200", "--osl", "50", "--input-file", "f.jsonl"]);
        assert_eq!(a.synthetic_input_tokens_mean, Some(200.0));
        assert_eq!(a.output_tokens_mean, Some(50.0));
        assert_eq!(
            a.dataset_path.as_deref(),
            Some(std::path::Path::new("f.jsonl"))
        );
    }

    #[test]
    fn dataset_help_lists_every_registered_source() {
        let mut cmd = command();
        let help = cmd
            .find_subcommand_mut("bench")
            .unwrap()
            .render_long_help()
            .to_string();
        for name in workload::known_names() {
            assert!(help.contains(name), "--help does not list {name}");
        }
        assert!(help.contains("reads: --isl-block-size"), "{help}");
        // The source's own description, not a hand-written copy.
        assert!(help.contains(workload::SOURCES[0].describe()), "{help}");
    }

    #[test]
    fn pool_and_fixed_schedule_flags() {
        let a = bench(&[
            "--num-dataset-entries",
            "7",
            "--dataset-sampling-strategy",
            "shuffle",
        ]);
        assert_eq!(a.num_dataset_entries, Some(7));
        assert_eq!(a.dataset_sampling_strategy, SamplingStrategy::Shuffle);
        assert_eq!(
            bench(&[]).dataset_sampling_strategy,
            SamplingStrategy::Sequential
        );
        let parse = |args: &[&str]| {
            let mut full = vec!["parley", "bench"];
            full.extend_from_slice(args);
            try_parse_from(full)
        };
        assert!(parse(&["--num-dataset-entries", "0"]).is_err());
        assert!(parse(&["--num-dataset-entries", "100001"]).is_err());
        // The offsets need --fixed-schedule; auto-offset and a start offset exclude each other;
        // a fixed schedule has no sampling strategy (it runs the file once, in time order).
        assert!(parse(&["--fixed-schedule-auto-offset"]).is_err());
        assert!(parse(&["--fixed-schedule-end-offset", "5"]).is_err());
        assert!(parse(&[
            "--fixed-schedule",
            "--fixed-schedule-auto-offset",
            "--fixed-schedule-start-offset",
            "5"
        ])
        .is_err());
        assert!(parse(&["--fixed-schedule", "--dataset-sampling-strategy", "random"]).is_err());
        let f = bench(&[
            "--fixed-schedule",
            "--fixed-schedule-start-offset",
            "100",
            "--fixed-schedule-end-offset",
            "900",
        ]);
        assert!(f.fixed_schedule);
        assert_eq!(
            (f.fixed_schedule_start_offset, f.fixed_schedule_end_offset),
            (Some(100), Some(900))
        );
    }

    #[test]
    fn rejects_zero_concurrency_and_bad_timeouts() {
        assert!(Cli::try_parse_from(["parley", "bench", "--parallel", "0"]).is_err());
        assert!(Cli::try_parse_from(["parley", "bench", "--read-timeout", "-1"]).is_err());
    }

    #[test]
    fn seed_dialect_flags_parse() {
        let e = bench(&["--api", "openai", "--multi-turn", "--tokenize-prompt"]);
        assert_eq!(e.api.as_deref(), Some("openai"));
        assert!(e.multi_turn && e.tokenize_prompt);
        let a = bench(&[
            "--endpoint-type",
            "completions",
            "--endpoint",
            "/v1/completions",
            "--streaming",
        ]);
        assert_eq!(a.endpoint_type, Some(EndpointKind::Completions));
        assert_eq!(a.endpoint.as_deref(), Some("/v1/completions"));
        assert!(a.streaming());
        let err = |args: &[&str]| {
            let mut full = vec!["parley", "bench"];
            full.extend_from_slice(args);
            Cli::try_parse_from(full).unwrap_err().to_string()
        };
        let api = err(&["--api", "dashscope"]);
        assert!(
            api.contains("`openai`") && api.contains("dashscope"),
            "{api}"
        );
        let kind = err(&["--endpoint-type", "embeddings"]);
        assert!(kind.contains("`chat` and `completions`"), "{kind}");
    }

    #[test]
    fn perf_and_profile_are_bench() {
        for name in ["perf", "profile", "bench"] {
            let cli = Cli::try_parse_from(["parley", name, "--parallel", "3"]).unwrap();
            let Command::Bench(b) = cli.command else {
                panic!("{name} is not bench")
            };
            assert_eq!(b.parallel, vec![3]);
        }
    }
}
