//! From validated flags to a run plan: a plain value holding the target, the load shape, the
//! request body pieces and the synthesized conversations.
//!
//! All tokenizer and synthesis work happens here, before any I/O executor starts, so the hot
//! path never tokenizes. Every error names the flag (or file) at fault.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::cli::BenchArgs;
use crate::engine::BodyShape;
use crate::tokenizer::{Tokenizer, TokenizerError};
use crate::workload::fixed::{self, FixedError, FixedOptions, FixedSchedule};
use crate::workload::sampling::{Sampler, SamplingStrategy};
use crate::workload::{
    self, ContextMode, Conversation, DatasetError, DatasetFlag, DatasetParams, Selection,
};

/// Model name the built-in sim serves when `parley bench` starts it.
pub const SIM_MODEL: &str = "parley-sim";

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("--url {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("--model is required with --url (the model name the server serves)")]
    ModelRequired,
    #[error("--extra-args: {0}")]
    ExtraArgs(String),
    #[error("--{flag}: {reason}")]
    Flag { flag: &'static str, reason: String },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("--dataset {dataset}: {source}")]
    Fixed { dataset: String, source: FixedError },
}

/// Where requests go.
#[derive(Clone, Debug)]
pub enum Target {
    /// A server given by `--url`.
    Url {
        url: String,
        addr: SocketAddr,
        host: String,
        path: String,
    },
    /// The built-in sim, started in-process by the bench command.
    BuiltinSim,
}

/// Settings echoed into the report so a summary says what produced it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunConfig {
    pub url: String,
    pub model: String,
    pub dataset: String,
    pub dataset_path: Option<PathBuf>,
    pub dataset_offset: u64,
    pub shard: Option<String>,
    pub context_mode: Option<&'static str>,
    /// Dataset entries left out by --skip-invalid.
    pub skipped_invalid: u64,
    /// Conversations a source's own documented rule left out (e.g. a length filter).
    pub filtered: u64,
    /// Conversations in the run's pool (the run cycles through them).
    pub pool: usize,
    pub parallel: u32,
    pub number: u64,
    pub cores: usize,
    /// `--spin`: executors poll instead of parking while there is work (they park after 10 ms idle).
    pub spin: bool,
    pub stream: bool,
    pub tokenizer: String,
    pub seed: u64,
    pub min_turns: Option<u32>,
    pub max_turns: Option<u32>,
    pub min_prompt_length: Option<u32>,
    pub max_prompt_length: Option<u32>,
    pub max_tokens: u32,
    pub extra_args: Value,
    /// How the pool is built and used (flattened: its keys sit beside the others).
    #[serde(flatten)]
    pub pool_config: PoolConfig,
}

/// The run's pool settings, as summary.json records them.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PoolConfig {
    /// `--num-dataset-entries`, when given.
    pub num_dataset_entries: Option<u64>,
    /// `--dataset-sampling-strategy`.
    pub dataset_sampling_strategy: SamplingStrategy,
    /// `--fixed-schedule` and its offsets, when on.
    pub fixed_schedule: Option<FixedOptions>,
}

/// A validated, ready-to-run benchmark.
pub struct BenchPlan {
    pub target: Target,
    pub model: String,
    pub authorization: Option<String>,
    pub stream: bool,
    pub body: BodyShape,
    pub conversations: Arc<Vec<Conversation>>,
    pub number: u64,
    pub concurrency: usize,
    pub cpus: Vec<usize>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub run_dir: PathBuf,
    pub config: RunConfig,
    pub tokenizer: Arc<Tokenizer>,
    /// Which pool entry claim k runs (`--dataset-sampling-strategy`); each core clones it.
    pub sampling: Sampler,
    /// `--fixed-schedule`: when each conversation's first turn is sent. Then every entry of
    /// `conversations` is scheduled exactly once and `number` is the schedule's length.
    pub fixed: Option<FixedSchedule>,
}

impl BenchPlan {
    pub fn build(args: &BenchArgs) -> Result<BenchPlan, PlanError> {
        let target = match &args.url {
            Some(url) => parse_url(url)?,
            None => Target::BuiltinSim,
        };
        let model = match (&args.model, &target) {
            (Some(m), _) => m.clone(),
            (None, Target::BuiltinSim) => SIM_MODEL.to_string(),
            (None, Target::Url { .. }) => return Err(PlanError::ModelRequired),
        };
        if let (Some(min), Some(max)) = (args.min_turns, args.max_turns) {
            if min > max {
                return Err(PlanError::Flag {
                    flag: "min-turns",
                    reason: format!("{min} is above --max-turns {max}"),
                });
            }
        }
        if let (Some(min), Some(max)) = (args.min_prompt_length, args.max_prompt_length) {
            if min > max {
                return Err(PlanError::Flag {
                    flag: "min-prompt-length",
                    reason: format!("{min} is above --max-prompt-length {max}"),
                });
            }
        }
        if let Some(min) = args.min_tokens {
            if min > args.max_tokens {
                return Err(PlanError::Flag {
                    flag: "min-tokens",
                    reason: format!("{min} is above --max-tokens {}", args.max_tokens),
                });
            }
        }
        let extra = parse_extra_args(args.extra_args.as_deref())?;
        let params = dataset_params(args)?;
        let dataset = dataset_name(args, &params);
        // Before the tokenizer loads or a file is read: flags the source would ignore, and a
        // fixed schedule over a format that records no send times.
        let source = workload::check_flags(&dataset, &params)?;
        let fixed_options = fixed_options(args)?;
        if fixed_options.is_some() && !source.has_timestamps() {
            return Err(PlanError::Flag {
                flag: "fixed-schedule",
                reason: format!(
                    "--dataset {dataset} has no recorded send times to replay (sources with \
                     timestamps: {})",
                    timestamped_sources().join(", ")
                ),
            });
        }
        let cpus = pick_cpus(args.cores)?;
        let stream = args.streaming();
        let body = body_shape(&model, stream, args.max_tokens, args.min_tokens, &extra);

        let tokenizer = Arc::new(Tokenizer::load(args.tokenizer_path.as_deref())?);
        let (shard_index, shard_count) = args.shard.unwrap_or((0, 1));
        let selection = Selection {
            offset: args.dataset_offset,
            shard_index,
            shard_count,
            limit: pool_limit(
                args.num_dataset_entries,
                args.number,
                fixed_options.is_some(),
            ),
        };
        let (built, skipped_invalid) = workload::build(
            &dataset,
            args.dataset_path.as_deref(),
            &tokenizer,
            &params,
            selection,
            args.skip_invalid,
        )?;
        let mut conversations = built.conversations;
        let mut skipped_invalid = skipped_invalid;
        if let Some(mode) = args.context_mode {
            let mut kept = Vec::with_capacity(conversations.len());
            for (i, mut c) in conversations.into_iter().enumerate() {
                match c.convert(mode, |reply| Some(message_tokens(&tokenizer, reply))) {
                    Ok(()) => kept.push(c),
                    // A conversation that cannot be sent this way is bad input like any other:
                    // --skip-invalid leaves it out and counts it.
                    Err(_) if args.skip_invalid => skipped_invalid += 1,
                    Err(reason) => {
                        return Err(PlanError::Flag {
                            flag: "context-mode",
                            reason: format!(
                                "conversation {i} of --dataset {dataset}: {reason} \
                                 (--skip-invalid leaves such conversations out)"
                            ),
                        })
                    }
                }
            }
            if kept.is_empty() {
                return Err(PlanError::Flag {
                    flag: "context-mode",
                    reason: format!(
                        "no conversation of --dataset {dataset} can be sent as {}",
                        mode.as_str()
                    ),
                });
            }
            conversations = kept;
        }
        let mut number = args.number;
        let mut fixed = None;
        if let Some(opts) = &fixed_options {
            let (pool, schedule, skipped) = fixed_pool(
                conversations,
                opts,
                args.number_given.then_some(args.number),
                args.skip_invalid,
            )
            .map_err(|source| PlanError::Fixed {
                dataset: dataset.clone(),
                source,
            })?;
            conversations = pool;
            skipped_invalid += skipped;
            number = schedule.len() as u64;
            fixed = Some(schedule);
        }
        // Turns with their own body fields get their own opening, built once here.
        for c in &mut conversations {
            for t in &mut c.turns {
                if let Some(turn_extra) = &t.extra {
                    let mut merged = extra.clone();
                    for (k, v) in turn_extra.iter() {
                        merged.insert(k.clone(), v.clone());
                    }
                    let max = t.max_tokens.unwrap_or(args.max_tokens);
                    t.open = Some(body_shape(&model, stream, max, args.min_tokens, &merged).open);
                }
            }
        }

        let name = args.name.clone().unwrap_or_else(|| {
            model
                .rsplit('/')
                .find(|s| !s.is_empty())
                .unwrap_or("run")
                .to_string()
        });
        let run_dir = args
            .outputs_dir
            .join(local_timestamp())
            .join(sanitize(&name));
        let url_label = match &target {
            Target::Url { url, .. } => url.clone(),
            Target::BuiltinSim => "builtin-sim".to_string(),
        };
        let config = RunConfig {
            url: url_label,
            model: model.clone(),
            dataset: dataset.clone(),
            dataset_path: args.dataset_path.clone(),
            dataset_offset: args.dataset_offset,
            shard: args.shard.map(|(i, n)| format!("{i}/{n}")),
            context_mode: args.context_mode.map(ContextMode::as_str),
            skipped_invalid,
            filtered: built.filtered,
            pool: conversations.len(),
            parallel: args.parallel,
            number,
            cores: cpus.len(),
            spin: args.spin,
            stream,
            tokenizer: tokenizer.name().to_string(),
            seed: args.seed,
            min_turns: args.min_turns,
            max_turns: args.max_turns,
            min_prompt_length: args.min_prompt_length,
            max_prompt_length: args.max_prompt_length,
            max_tokens: args.max_tokens,
            extra_args: Value::Object(extra),
            pool_config: PoolConfig {
                num_dataset_entries: args.num_dataset_entries,
                dataset_sampling_strategy: args.dataset_sampling_strategy,
                fixed_schedule: fixed_options,
            },
        };
        let sampling = Sampler::new(
            args.dataset_sampling_strategy,
            args.seed,
            conversations.len(),
        );
        Ok(BenchPlan {
            target,
            model,
            authorization: args.api_key.as_ref().map(|k| format!("Bearer {k}")),
            stream,
            body,
            conversations: Arc::new(conversations),
            number,
            concurrency: args.parallel as usize,
            cpus,
            connect_timeout: Duration::from_secs_f64(args.connect_timeout),
            read_timeout: Duration::from_secs_f64(args.read_timeout),
            run_dir,
            config,
            tokenizer,
            sampling,
            fixed,
        })
    }
}

/// Conversations a run builds (`Selection::limit`): `--num-dataset-entries` when given; else,
/// for a fixed schedule, the whole file (it runs once, no cycling); else only as many as will
/// be claimed (`--number`, at most [`MAX_POOL`]: the pool cycles when smaller).
fn pool_limit(num_dataset_entries: Option<u64>, number: u64, fixed: bool) -> usize {
    match num_dataset_entries {
        Some(n) => n.min(MAX_POOL) as usize,
        None if fixed => usize::MAX,
        None => number.min(MAX_POOL) as usize,
    }
}

/// `--fixed-schedule` and its offsets, when on. A start offset after the end offset is caught
/// here, before the dataset is read ([`fixed::fixed_schedule`] checks it again).
fn fixed_options(args: &BenchArgs) -> Result<Option<FixedOptions>, PlanError> {
    if let (Some(start), Some(end)) = (
        args.fixed_schedule_start_offset,
        args.fixed_schedule_end_offset,
    ) {
        if start > end {
            return Err(PlanError::Flag {
                flag: "fixed-schedule-start-offset",
                reason: format!("{start} is after --fixed-schedule-end-offset {end}"),
            });
        }
    }
    Ok(args.fixed_schedule.then_some(FixedOptions {
        auto_offset: args.fixed_schedule_auto_offset,
        start_offset_ms: args.fixed_schedule_start_offset,
        end_offset_ms: args.fixed_schedule_end_offset,
    }))
}

/// Every `--dataset` name whose format records send times.
fn timestamped_sources() -> Vec<&'static str> {
    workload::SOURCES
        .iter()
        .filter(|s| s.has_timestamps())
        .flat_map(|s| s.names().iter().copied())
        .collect()
}

/// The pool of a fixed-schedule run and its schedule: with `skip_invalid`, conversations whose
/// first turn has no timestamp are left out (and counted, third value) instead of an error; at
/// most `number` conversations (the earliest) when given; the pool keeps only those scheduled.
fn fixed_pool(
    pool: Vec<Conversation>,
    opts: &FixedOptions,
    number: Option<u64>,
    skip_invalid: bool,
) -> Result<(Vec<Conversation>, FixedSchedule, u64), FixedError> {
    let before = pool.len();
    let pool: Vec<Conversation> = if skip_invalid {
        pool.into_iter()
            .filter(|c| c.turns.first().is_some_and(|t| t.timestamp_ns.is_some()))
            .collect()
    } else {
        pool
    };
    let skipped = (before - pool.len()) as u64;
    let mut schedule = fixed::fixed_schedule(&pool, opts)?;
    if let Some(n) = number {
        schedule.truncate(usize::try_from(n).unwrap_or(usize::MAX));
    }
    let (pool, schedule) = schedule.compact(pool);
    Ok((pool, schedule, skipped))
}

/// Bare tokens of a serialised message's content (a string, or the text of its parts); 0 when it
/// has none. Runs before the benchmark, for the client-side prompt estimate only.
fn message_tokens(tokenizer: &Tokenizer, message: &[u8]) -> u32 {
    let Ok(v) = serde_json::from_slice::<Value>(message) else {
        return 0;
    };
    let count = |s: &str| tokenizer.count(s) as u32;
    match &v["content"] {
        Value::String(s) => count(s),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .map(count)
            .sum(),
        _ => 0,
    }
}

/// Largest conversation pool a run builds; `--number` above it cycles the pool.
pub const MAX_POOL: u64 = 100_000;

/// The dataset to run: `--dataset`, else `synthetic` when AIPerf synthetic flags are given,
/// else `random_multi_turn`. AIPerf synthetic flags with another dataset are rejected by
/// [`workload::check_flags`] (that source does not read them).
fn dataset_name(args: &BenchArgs, params: &DatasetParams) -> String {
    match &args.dataset {
        Some(d) => d.clone(),
        None if DatasetFlag::AIPERF_SYNTHETIC
            .iter()
            .any(|f| f.given(params)) =>
        {
            "synthetic".to_string()
        }
        None => "random_multi_turn".to_string(),
    }
}

fn dataset_params(args: &BenchArgs) -> Result<DatasetParams, PlanError> {
    let dataset_args = match &args.dataset_args {
        None => None,
        Some(raw) => match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(m)) => Some(m),
            Ok(_) => {
                return Err(PlanError::Flag {
                    flag: "dataset-args",
                    reason: "must be a JSON object".into(),
                })
            }
            Err(e) => {
                return Err(PlanError::Flag {
                    flag: "dataset-args",
                    reason: format!("not valid JSON ({e})"),
                })
            }
        },
    };
    let finite = |flag: &'static str, v: Option<f64>| -> Result<Option<f64>, PlanError> {
        match v {
            Some(x) if !x.is_finite() || x < 0.0 => Err(PlanError::Flag {
                flag,
                reason: format!("{x} must be a non-negative number"),
            }),
            other => Ok(other),
        }
    };
    Ok(DatasetParams {
        min_turns: args.min_turns,
        max_turns: args.max_turns,
        min_prompt_length: args.min_prompt_length,
        max_prompt_length: args.max_prompt_length,
        seed: args.seed,
        turn_mean: finite("conversation-turn-mean", args.conversation_turn_mean)?,
        turn_stddev: finite("conversation-turn-stddev", args.conversation_turn_stddev)?,
        isl_mean: finite(
            "synthetic-input-tokens-mean",
            args.synthetic_input_tokens_mean,
        )?,
        isl_stddev: finite(
            "synthetic-input-tokens-stddev",
            args.synthetic_input_tokens_stddev,
        )?,
        osl_mean: finite("output-tokens-mean", args.output_tokens_mean)?,
        osl_stddev: finite("output-tokens-stddev", args.output_tokens_stddev)?,
        turn_delay_mean_ms: finite(
            "conversation-turn-delay-mean",
            args.conversation_turn_delay_mean,
        )?,
        turn_delay_stddev_ms: finite(
            "conversation-turn-delay-stddev",
            args.conversation_turn_delay_stddev,
        )?,
        turn_delay_ratio: finite(
            "conversation-turn-delay-ratio",
            args.conversation_turn_delay_ratio,
        )?,
        prefix_length: args.prefix_length,
        prefix_count: args.prefix_count,
        shared_system_prompt_length: args.shared_system_prompt_length,
        isl_block_size: args.isl_block_size,
        dataset_args,
    })
}

/// Parses `--url`: http only; a bare base URL gets `/v1/chat/completions`.
pub fn parse_url(url: &str) -> Result<Target, PlanError> {
    let err = |reason: &str| PlanError::Url {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let uri: hyper::Uri = url.parse().map_err(|_| err("not a valid URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(err("https is not supported yet; use http")),
        _ => return Err(err("must start with http://")),
    }
    let host = uri.host().ok_or_else(|| err("has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let addr = (host.trim_start_matches('[').trim_end_matches(']'), port)
        .to_socket_addrs()
        .map_err(|e| err(&format!("cannot resolve host: {e}")))?
        .next()
        .ok_or_else(|| err("host resolves to no address"))?;
    let path = match uri.path() {
        "" | "/" => "/v1/chat/completions".to_string(),
        p if p.ends_with("/chat/completions") || p.ends_with("/completions") => p.to_string(),
        p if p.ends_with("/v1") || p.ends_with("/v1/") => {
            format!("{}/chat/completions", p.trim_end_matches('/'))
        }
        p => {
            return Err(err(&format!(
                "path `{p}` is not a chat/completions endpoint; give the base URL or …/v1/chat/completions"
            )))
        }
    };
    let host_header = match uri.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    Ok(Target::Url {
        url: url.to_string(),
        addr,
        host: host_header,
        path,
    })
}

fn parse_extra_args(raw: Option<&str>) -> Result<Map<String, Value>, PlanError> {
    let Some(raw) = raw else {
        return Ok(Map::new());
    };
    let value: Value = serde_json::from_str(raw)
        .map_err(|e| PlanError::ExtraArgs(format!("not valid JSON ({e})")))?;
    let Value::Object(map) = value else {
        return Err(PlanError::ExtraArgs("must be a JSON object".into()));
    };
    for key in ["messages", "prompt"] {
        if map.contains_key(key) {
            return Err(PlanError::ExtraArgs(format!(
                "`{key}` is set by parley from the dataset and cannot be overridden"
            )));
        }
    }
    if map.contains_key("stream") {
        return Err(PlanError::ExtraArgs(
            "use --stream/--no-stream instead of `stream`".into(),
        ));
    }
    Ok(map)
}

/// The fixed body pieces: every field but `messages`, which the engine appends per turn.
pub fn body_shape(
    model: &str,
    stream: bool,
    max_tokens: u32,
    min_tokens: Option<u32>,
    extra: &Map<String, Value>,
) -> BodyShape {
    let mut fields = Map::new();
    fields.insert("model".into(), Value::from(model));
    fields.insert("stream".into(), Value::from(stream));
    if stream {
        fields.insert(
            "stream_options".into(),
            serde_json::json!({"include_usage": true}),
        );
    }
    fields.insert("max_tokens".into(), Value::from(max_tokens));
    if let Some(min) = min_tokens {
        fields.insert("min_tokens".into(), Value::from(min));
    }
    for (k, v) in extra {
        fields.insert(k.clone(), v.clone());
    }
    let open = open_fields(&fields, true);
    fields.remove("max_tokens");
    let open_without_max = open_fields(&fields, false);
    BodyShape {
        open: Bytes::from(open),
        open_without_max: Bytes::from(open_without_max),
        max_tokens_field: "max_tokens",
    }
}

/// `{"a":1,"b":2` → `{"a":1,"b":2,"messages":[` (with the brace) or `"a":1,"b":2,"messages":[`.
fn open_fields(fields: &Map<String, Value>, with_brace: bool) -> String {
    let full = Value::Object(fields.clone()).to_string();
    let inner = &full[1..full.len() - 1];
    let mut out = String::with_capacity(full.len() + 16);
    if with_brace {
        out.push('{');
    }
    out.push_str(inner);
    if !inner.is_empty() {
        out.push(',');
    }
    out.push_str("\"messages\":[");
    out
}

fn pick_cpus(cores: Option<u32>) -> Result<Vec<usize>, PlanError> {
    let mut online: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    if online.is_empty() {
        online = (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    }
    match cores {
        None => Ok(online),
        Some(n) if n as usize <= online.len() => Ok(online[..n as usize].to_vec()),
        Some(n) => Err(PlanError::Flag {
            flag: "cores",
            reason: format!("{n} requested but only {} are available", online.len()),
        }),
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `YYYYMMDD_HHMMSS` in local time.
pub fn local_timestamp() -> String {
    // SAFETY: time and localtime_r only write into the provided out-parameters.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        format!(
            "{:04}{:02}{:02}_{:02}{:02}{:02}",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> BenchArgs {
        let mut full = vec!["parley", "bench"];
        full.extend_from_slice(flags);
        match crate::cli::try_parse_from(full).unwrap().command {
            crate::cli::Command::Bench(b) => *b,
            _ => unreachable!(),
        }
    }

    fn plan_err(flags: &[&str]) -> String {
        match BenchPlan::build(&args(flags)) {
            Ok(_) => panic!("expected an error for {flags:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// Issue 9: these were silently ignored.
    #[test]
    fn flags_the_source_ignores_are_errors() {
        let e = plan_err(&["--isl-block-size", "64"]);
        assert!(
            e.starts_with("--isl-block-size is not read by --dataset random_multi_turn (it reads: --min-turns,"),
            "{e}"
        );
        let e = plan_err(&[
            "--dataset",
            "mooncake_trace",
            "--dataset-path",
            "/nonexistent/trace.jsonl",
            "--prefix-length",
            "100",
        ]);
        assert_eq!(
            e,
            "--prefix-length is not read by --dataset mooncake_trace (it reads: --isl-block-size)"
        );
        // AIPerf synthetic flags still pick `synthetic` when no dataset is named, and are
        // rejected with another one.
        let e = plan_err(&["--isl", "100", "--min-turns", "2"]);
        assert!(
            e.starts_with("--min-turns is not read by --dataset synthetic"),
            "{e}"
        );
        let e = plan_err(&["--dataset", "random_multi_turn", "--osl", "20"]);
        assert!(
            e.starts_with("--output-tokens-mean is not read by --dataset random_multi_turn"),
            "{e}"
        );
    }

    #[test]
    fn pool_size_follows_num_dataset_entries_number_and_fixed() {
        assert_eq!(pool_limit(None, 100, false), 100);
        assert_eq!(pool_limit(None, 10 * MAX_POOL, false), MAX_POOL as usize);
        assert_eq!(pool_limit(Some(7), 100, false), 7);
        assert_eq!(pool_limit(Some(7), 100, true), 7);
        assert_eq!(
            pool_limit(None, 100, true),
            usize::MAX,
            "fixed: the whole file"
        );
    }

    #[test]
    fn fixed_schedule_needs_a_source_with_timestamps() {
        let e = plan_err(&["--dataset", "synthetic", "--fixed-schedule"]);
        assert!(
            e.starts_with("--fixed-schedule: --dataset synthetic has no recorded send times")
                && e.contains("mooncake_trace"),
            "{e}"
        );
        let e = plan_err(&[
            "--dataset",
            "mooncake_trace",
            "--dataset-path",
            "/nonexistent/trace.jsonl",
            "--fixed-schedule",
            "--fixed-schedule-start-offset",
            "9",
            "--fixed-schedule-end-offset",
            "3",
        ]);
        assert_eq!(
            e,
            "--fixed-schedule-start-offset: 9 is after --fixed-schedule-end-offset 3"
        );
    }

    fn trace(dir: &tempfile::TempDir, lines: &[&str]) -> String {
        let path = dir.path().join("trace.jsonl");
        std::fs::write(&path, lines.join("\n")).unwrap();
        path.to_str().unwrap().to_string()
    }

    #[test]
    fn fixed_schedule_plan_runs_the_file_once_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = trace(
            &dir,
            &[
                r#"{"timestamp": 3000, "input_length": 4}"#,
                r#"{"timestamp": 1000, "input_length": 4}"#,
                r#"{"timestamp": 2000, "input_length": 4, "session_id": "s"}"#,
                r#"{"timestamp": 2600, "input_length": 4, "session_id": "s"}"#,
            ],
        );
        let base = [
            "--dataset",
            "mooncake_trace",
            "--dataset-path",
            &path,
            "--fixed-schedule",
            "--cores",
            "1",
        ];
        // --number's default (100) and a larger one do not limit; the file runs once.
        let plan = BenchPlan::build(&args(&base)).unwrap();
        assert_eq!((plan.number, plan.conversations.len()), (3, 3));
        let fixed = plan.fixed.as_ref().unwrap();
        let firsts: Vec<u64> = fixed
            .entries
            .iter()
            .map(|e| e.offset_ns / 1_000_000)
            .collect();
        assert_eq!(firsts, [1000, 2000, 3000]);
        let session = &plan.conversations[fixed.entries[1].conversation];
        assert_eq!(fixed.turn_offset_ns(&session.turns[1]), Some(2_600_000_000));
        assert_eq!(session.turns[1].delay_ns, 600_000_000, "delays are kept");
        assert_eq!(plan.config.number, 3);
        assert!(plan.config.pool_config.fixed_schedule.is_some());

        // A given, smaller --number keeps the earliest; a window drops the rest from the pool.
        let mut flags = base.to_vec();
        flags.extend(["--number", "2", "--fixed-schedule-start-offset", "1500"]);
        let plan = BenchPlan::build(&args(&flags)).unwrap();
        let fixed = plan.fixed.as_ref().unwrap();
        assert_eq!((plan.number, plan.conversations.len()), (2, 2));
        assert_eq!(fixed.origin_ns, 1_500_000_000);
        let firsts: Vec<u64> = fixed
            .entries
            .iter()
            .map(|e| e.offset_ns / 1_000_000)
            .collect();
        assert_eq!(firsts, [500, 1500]);
    }

    #[test]
    fn fixed_schedule_first_turn_without_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = trace(
            &dir,
            &[
                r#"{"turns": [{"text": "a", "timestamp": 5}]}"#,
                r#"{"turns": [{"text": "b", "delay": 5}]}"#,
            ],
        );
        let flags = [
            "--dataset",
            "multi_turn",
            "--dataset-path",
            &path,
            "--fixed-schedule",
            "--cores",
            "1",
        ];
        let e = plan_err(&flags);
        assert!(
            e.starts_with("--dataset multi_turn: --fixed-schedule: conversation 1 "),
            "{e}"
        );
        let mut skip = flags.to_vec();
        skip.push("--skip-invalid");
        let plan = BenchPlan::build(&args(&skip)).unwrap();
        assert_eq!(plan.conversations.len(), 1);
        assert_eq!(plan.config.skipped_invalid, 1);
    }

    #[test]
    fn sampling_strategy_reaches_the_plan_and_the_summary() {
        let plan = BenchPlan::build(&args(&[
            "--num-dataset-entries",
            "3",
            "--dataset-sampling-strategy",
            "shuffle",
            "--min-prompt-length",
            "1",
            "--max-prompt-length",
            "2",
            "--max-turns",
            "1",
            "--cores",
            "1",
        ]))
        .unwrap();
        assert_eq!(plan.conversations.len(), 3);
        assert_eq!(plan.number, 100, "claims cycle through the pool");
        assert_eq!(plan.sampling.len(), 3);
        assert_eq!(plan.sampling.strategy(), SamplingStrategy::Shuffle);
        assert!(plan.fixed.is_none());
        let v = serde_json::to_value(&plan.config).unwrap();
        assert_eq!(v["dataset_sampling_strategy"], "shuffle");
        assert_eq!(v["num_dataset_entries"], 3);
        assert_eq!(v["fixed_schedule"], Value::Null);
    }

    #[test]
    fn url_forms() {
        let path = |u: &str| match parse_url(u).unwrap() {
            Target::Url { path, .. } => path,
            _ => unreachable!(),
        };
        assert_eq!(path("http://127.0.0.1:8000"), "/v1/chat/completions");
        assert_eq!(path("http://127.0.0.1:8000/v1"), "/v1/chat/completions");
        assert_eq!(
            path("http://127.0.0.1:8000/v1/completions"),
            "/v1/completions"
        );
        assert!(parse_url("https://127.0.0.1").is_err());
        assert!(parse_url("127.0.0.1:8000").is_err());
        assert!(parse_url("http://127.0.0.1:8000/foo").is_err());
    }

    #[test]
    fn body_shape_merges_extra_args() {
        let extra = parse_extra_args(Some(r#"{"ignore_eos": true, "max_tokens": 7}"#)).unwrap();
        let shape = body_shape("m", true, 100, Some(3), &extra);
        let full = format!("{}]}}", std::str::from_utf8(&shape.open).unwrap());
        let v: Value = serde_json::from_str(&full).unwrap();
        assert_eq!(v["ignore_eos"], true);
        assert_eq!(v["max_tokens"], 7, "extra args win");
        assert_eq!(v["min_tokens"], 3);
        assert_eq!(v["stream_options"]["include_usage"], true);
        let no_max = format!(
            "{{\"max_tokens\":9,{}]}}",
            std::str::from_utf8(&shape.open_without_max).unwrap()
        );
        let v: Value = serde_json::from_str(&no_max).unwrap();
        assert_eq!(v["max_tokens"], 9);
    }

    #[test]
    fn extra_args_errors_are_clear() {
        assert!(parse_extra_args(Some("[1]"))
            .unwrap_err()
            .to_string()
            .contains("JSON object"));
        assert!(parse_extra_args(Some("{"))
            .unwrap_err()
            .to_string()
            .contains("not valid JSON"));
        assert!(parse_extra_args(Some(r#"{"messages":[]}"#)).is_err());
    }
}
