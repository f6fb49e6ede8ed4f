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
use crate::engine::{
    convert_to_completions, ArrivalMode, BodyShape, EndpointKind, Load, RampStrategy, RateRamp,
    RateSpec, Shape,
};
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
    #[error("{0}")]
    Endpoint(String),
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
    /// The built-in sim, started in-process by the bench command; requests go to `path`.
    BuiltinSim { path: String },
}

/// Settings echoed into the report so a summary says what produced it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunConfig {
    /// The first target (`builtin-sim` without --url); `urls` lists them all.
    pub url: String,
    pub urls: Vec<String>,
    /// `chat` or `completions`: the endpoint and so the body form.
    pub endpoint: EndpointKind,
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
    /// This run's load (one point of a sweep).
    pub point: Point,
    /// Everything else about the load, as resolved.
    pub load: LoadConfig,
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

/// One point of the load: what varies across a sweep.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Point {
    /// Run directory name inside a sweep (`parallel_5_number_10`, `rate_2_number_20`, …).
    pub label: String,
    /// Closed loop: conversations in flight; with a rate: the cap, if any.
    pub parallel: Option<u32>,
    /// Open loop: new conversations per second.
    pub rate_per_s: Option<f64>,
    /// Conversations to run (`None`: until --duration).
    pub number: Option<u64>,
}

/// The load settings shared by every point.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LoadConfig {
    pub request_rate_mode: ArrivalMode,
    pub burstiness: f64,
    pub duration_s: Option<f64>,
    pub duration_grace_s: Option<f64>,
    /// Warmup conversations (a count), if any.
    pub warmup_conversations: Option<u64>,
    pub warmup_duration_s: Option<f64>,
    pub preconnect: bool,
    /// Closed loop: slot starts spread over this many seconds; with a rate ramp: its length.
    pub ramp_up_duration_s: Option<f64>,
    pub ramp_up_strategy: Option<RampStrategy>,
    pub ramp_up_start_rate: Option<f64>,
    pub sweep_pause_s: f64,
    /// `--request-count` as given (the conversations it came to are each point's `number`).
    pub request_count: Option<u64>,
}

/// A validated, ready-to-run benchmark.
pub struct BenchPlan {
    /// One per `--url` (the built-in sim when none).
    pub targets: Vec<Target>,
    pub model: String,
    pub authorization: Option<String>,
    /// `--header` lines as (name, value).
    pub headers: Vec<(String, String)>,
    pub session_header: String,
    pub stream: bool,
    /// Chat or completions (every target gets the same body form).
    pub endpoint: EndpointKind,
    pub body: BodyShape,
    pub conversations: Arc<Vec<Conversation>>,
    /// The run's load points: one, or one per value of a sweep.
    pub points: Vec<Point>,
    pub load: LoadConfig,
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
    /// One-line notes for stderr about flags accepted but without effect (e.g.
    /// `--tokenize-prompt`).
    pub notes: Vec<String>,
}

impl BenchPlan {
    pub fn build(args: &BenchArgs) -> Result<BenchPlan, PlanError> {
        let (targets, endpoint) =
            resolve_targets(&args.url, args.endpoint_type, args.endpoint.as_deref())?;
        let target = &targets[0];
        let model = match (&args.model, target) {
            (Some(m), _) => m.clone(),
            (None, Target::BuiltinSim { .. }) => SIM_MODEL.to_string(),
            (None, Target::Url { .. }) => return Err(PlanError::ModelRequired),
        };
        let mut notes = Vec::new();
        if args.tokenize_prompt {
            notes.push(
                "note: --tokenize-prompt is ignored: multi-turn requests carry the history as \
                 text (messages, or the rendered prompt on /v1/completions), as evalscope ignores \
                 it in multi-turn mode"
                    .to_string(),
            );
        }
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
        let headers = parse_headers(&args.header)?;
        let session_header = match &args.session_header {
            Some(name) => {
                check_header_name(name)?;
                name.to_ascii_lowercase()
            }
            None => crate::client::SESSION_HEADER.to_string(),
        };
        let (point_specs, mut load) = load_config(args)?;
        let params = dataset_params(args)?;
        let dataset = dataset_name(args, &params);
        // Before the tokenizer loads or a file is read: flags the source would ignore, and a
        // fixed schedule over a format that records no send times.
        let source = workload::check_flags(&dataset, &params)?;
        let fixed_options = fixed_options(args)?;
        if fixed_options.is_some() {
            for (given, flag) in [
                (!args.request_rate.is_empty(), "request-rate"),
                (args.warmup_conversations.is_some(), "warmup-conversations"),
                (args.warmup_duration.is_some(), "warmup-duration"),
                (args.ramp_up_duration.is_some(), "ramp-up-duration"),
            ] {
                if given {
                    return Err(flag_err(
                        flag,
                        "does not apply with --fixed-schedule (the trace's times are the load)",
                    ));
                }
            }
        }
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
        let body = body_shape(
            endpoint,
            &model,
            stream,
            args.max_tokens,
            args.min_tokens,
            &extra,
        );

        let tokenizer = Arc::new(Tokenizer::load(args.tokenizer_path.as_deref())?);
        let (shard_index, shard_count) = args.shard.unwrap_or((0, 1));
        let selection = Selection {
            offset: args.dataset_offset,
            shard_index,
            shard_count,
            limit: pool_limit(
                args.num_dataset_entries,
                &point_specs,
                &load,
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
        let mut fixed = None;
        if let Some(opts) = &fixed_options {
            let (pool, schedule, skipped) = fixed_pool(
                conversations,
                opts,
                args.number.iter().copied().max(),
                args.skip_invalid,
            )
            .map_err(|source| PlanError::Fixed {
                dataset: dataset.clone(),
                source,
            })?;
            conversations = pool;
            skipped_invalid += skipped;
            fixed = Some(schedule);
        }
        if endpoint == EndpointKind::Completions {
            // Sources build chat messages; /v1/completions gets them rendered as text, once.
            for (i, c) in conversations.iter_mut().enumerate() {
                convert_to_completions(c).map_err(|reason| {
                    PlanError::Endpoint(format!(
                        "conversation {i} of --dataset {dataset} cannot be sent to \
                         /v1/completions: {reason}"
                    ))
                })?;
            }
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
                    t.open = Some(
                        body_shape(endpoint, &model, stream, max, args.min_tokens, &merged).open,
                    );
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
        let url_labels: Vec<String> = targets
            .iter()
            .map(|t| match t {
                Target::Url { url, .. } => url.clone(),
                Target::BuiltinSim { .. } => "builtin-sim".to_string(),
            })
            .collect();
        // --request-count: whole conversations, in sequence order, until their turns reach it.
        let mut points = resolve_points(point_specs, &load, &conversations);
        if let Some(schedule) = &fixed {
            // A fixed schedule runs its conversations once each, at their times; --parallel,
            // when given, caps them.
            for p in &mut points {
                p.number = Some(schedule.len() as u64);
                if args.parallel.is_empty() {
                    p.parallel = None;
                }
                p.label = match p.parallel {
                    Some(c) => format!("fixed_schedule_parallel_{c}"),
                    None => "fixed_schedule".into(),
                };
            }
        }
        if let Some(w) = load.warmup_fraction.take() {
            let number = points.iter().filter_map(|p| p.number).max().unwrap_or(0);
            load.config.warmup_conversations = Some(((w * number as f64) as u64).max(1));
        }
        let load = load.config;
        let config = RunConfig {
            url: url_labels[0].clone(),
            urls: url_labels,
            endpoint,
            model: model.clone(),
            dataset: dataset.clone(),
            dataset_path: args.dataset_path.clone(),
            dataset_offset: args.dataset_offset,
            shard: args.shard.map(|(i, n)| format!("{i}/{n}")),
            context_mode: args.context_mode.map(ContextMode::as_str),
            skipped_invalid,
            filtered: built.filtered,
            pool: conversations.len(),
            point: points[0].clone(),
            load: load.clone(),
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
            targets,
            model,
            authorization: args.api_key.as_ref().map(|k| format!("Bearer {k}")),
            headers,
            session_header,
            stream,
            endpoint,
            body,
            conversations: Arc::new(conversations),
            points,
            load,
            cpus,
            connect_timeout: Duration::from_secs_f64(args.connect_timeout),
            read_timeout: Duration::from_secs_f64(args.read_timeout),
            run_dir,
            config,
            tokenizer,
            sampling,
            fixed,
            notes,
        })
    }
}

/// Default conversations per point: `--number`'s default.
pub const DEFAULT_NUMBER: u64 = 100;

/// Default closed-loop concurrency: `--parallel`'s default.
pub const DEFAULT_PARALLEL: u32 = 10;

/// Pool size of a run limited only by `--duration`: the run cycles through it.
pub const DURATION_POOL: u64 = 1_000;

/// A point before `--request-count` is resolved against the conversations.
#[derive(Clone, Debug)]
struct PointSpec {
    parallel: Option<u32>,
    rate_per_s: Option<f64>,
    number: Option<u64>,
}

/// The load flags, validated.
#[derive(Debug)]
struct LoadFlags {
    config: LoadConfig,
    /// evalscope's fractional `--warmup-num`: resolved against `--number`.
    warmup_fraction: Option<f64>,
}

fn flag_err(flag: &'static str, reason: impl Into<String>) -> PlanError {
    PlanError::Flag {
        flag,
        reason: reason.into(),
    }
}

/// Validates the load flags and expands sweep lists into points (zipped: every list has one
/// value or the same number of values, as evalscope pairs `--parallel` with `--number`).
fn load_config(args: &BenchArgs) -> Result<(Vec<PointSpec>, LoadFlags), PlanError> {
    let rates: Vec<f64> = match args.request_rate.as_slice() {
        // evalscope's -1: no rate.
        [r] if *r == -1.0 => Vec::new(),
        rates => rates.to_vec(),
    };
    for &r in &rates {
        if !r.is_finite() || r <= 0.0 {
            return Err(flag_err(
                "request-rate",
                format!("{r} must be a positive rate (conversations/s), or -1 for none"),
            ));
        }
    }
    let n = [args.parallel.len(), args.number.len(), rates.len()]
        .into_iter()
        .max()
        .unwrap_or(0)
        .max(1);
    for (flag, len) in [
        ("parallel", args.parallel.len()),
        ("number", args.number.len()),
        ("request-rate", rates.len()),
    ] {
        if len > 1 && len != n {
            return Err(flag_err(
                flag,
                format!(
                    "a sweep pairs its lists value by value: {len} values here, {n} in another list"
                ),
            ));
        }
    }
    let pick = |v: &[u64], i: usize| v.get(if v.len() == 1 { 0 } else { i }).copied();
    let parallel: Vec<u64> = args.parallel.iter().map(|&p| p as u64).collect();
    let rate_at = |i: usize| rates.get(if rates.len() == 1 { 0 } else { i }).copied();
    let points: Vec<PointSpec> = (0..n)
        .map(|i| {
            let rate_per_s = rate_at(i);
            let parallel = pick(&parallel, i)
                .map(|p| p as u32)
                .or((rate_per_s.is_none()).then_some(DEFAULT_PARALLEL));
            let number = pick(&args.number, i).or_else(|| {
                if args.duration.is_some() || args.request_count.is_some() {
                    None
                } else {
                    Some(DEFAULT_NUMBER)
                }
            });
            PointSpec {
                parallel,
                rate_per_s,
                number,
            }
        })
        .collect();

    let has_rate = !rates.is_empty();
    let mode = match (args.request_rate_mode, args.burstiness) {
        (Some(m), _) if !has_rate => {
            return Err(flag_err(
                "request-rate-mode",
                format!("{m:?} spaces arrivals of --request-rate, which is not given"),
            ))
        }
        (None, Some(_)) | (Some(ArrivalMode::Gamma), _) => ArrivalMode::Gamma,
        (Some(m), Some(_)) => {
            return Err(flag_err(
                "burstiness",
                format!("is the gamma shape; it does not apply to --request-rate-mode {m:?}"),
            ))
        }
        (Some(m), None) => m,
        (None, None) => ArrivalMode::Poisson,
    };
    let burstiness = args.burstiness.unwrap_or(1.0);
    if !burstiness.is_finite() || burstiness <= 0.0 {
        return Err(flag_err(
            "burstiness",
            format!("{burstiness} must be positive"),
        ));
    }
    if args.burstiness.is_some() && !has_rate {
        return Err(flag_err(
            "burstiness",
            "applies to --request-rate, which is not given",
        ));
    }
    if let Some(strategy) = args.ramp_up_strategy {
        if !has_rate {
            return Err(flag_err(
                "ramp-up-strategy",
                "ramps --request-rate, which is not given (a closed loop ramps its slots with                  --ramp-up-duration alone)",
            ));
        }
        let start = args.ramp_up_start_rate.unwrap_or(0.0);
        let positive = if strategy == RampStrategy::Exponential {
            start > 0.0
        } else {
            start >= 0.0
        };
        if !start.is_finite() || !positive {
            return Err(flag_err(
                "ramp-up-start-rate",
                format!("{start} must be a rate above 0 (at least 0 for a linear ramp)"),
            ));
        }
    } else if has_rate && args.ramp_up_duration.is_some() {
        return Err(flag_err(
            "ramp-up-duration",
            "with --request-rate, a ramp needs --ramp-up-strategy and --ramp-up-start-rate",
        ));
    }
    let (warmup_conversations, warmup_fraction) = match args.warmup_conversations {
        None => (None, None),
        Some(0.0) => (None, None),
        Some(w) if w < 1.0 => (None, Some(w)),
        Some(w) if w.fract() == 0.0 => (Some(w as u64), None),
        Some(w) => {
            return Err(flag_err(
                "warmup-conversations",
                format!("{w}: a whole count, or a fraction below 1 of --number"),
            ))
        }
    };
    if warmup_fraction.is_some() && points.iter().all(|p| p.number.is_none()) {
        return Err(flag_err(
            "warmup-conversations",
            "a fraction needs --number to be a fraction of",
        ));
    }
    let config = LoadConfig {
        request_rate_mode: mode,
        burstiness,
        duration_s: args.duration,
        duration_grace_s: args.duration_grace,
        warmup_conversations,
        warmup_duration_s: args.warmup_duration,
        preconnect: !args.no_preconnect,
        ramp_up_duration_s: args.ramp_up_duration,
        ramp_up_strategy: args.ramp_up_strategy,
        ramp_up_start_rate: args.ramp_up_start_rate,
        sweep_pause_s: args.sweep_pause,
        request_count: args.request_count,
    };
    Ok((
        points,
        LoadFlags {
            config,
            warmup_fraction,
        },
    ))
}

/// Conversations a run builds (`Selection::limit`): `--num-dataset-entries` when given; else,
/// for a fixed schedule, the whole file (it runs once, no cycling); else only as many as will be
/// claimed — the most any point runs plus the warmup's, at most [`MAX_POOL`] (the pool cycles
/// when smaller).
fn pool_limit(
    num_dataset_entries: Option<u64>,
    points: &[PointSpec],
    load: &LoadFlags,
    fixed: bool,
) -> usize {
    if let Some(n) = num_dataset_entries {
        return n.min(MAX_POOL) as usize;
    }
    if fixed {
        return usize::MAX;
    }
    let measured = points
        .iter()
        .map(|p| p.number.unwrap_or(DURATION_POOL))
        .max()
        .unwrap_or(DEFAULT_NUMBER);
    let warmup = match (load.config.warmup_conversations, load.warmup_fraction) {
        (Some(w), _) => w,
        (None, Some(f)) => (f * measured as f64) as u64 + 1,
        _ => 0,
    };
    let wanted = match load.config.request_count {
        // Unknown until the conversations exist: as many as a single-turn run could need.
        Some(requests) => requests,
        None => measured,
    };
    wanted.saturating_add(warmup).min(MAX_POOL) as usize
}

/// Final points: `--request-count` becomes each point's conversation count, and labels.
fn resolve_points(specs: Vec<PointSpec>, load: &LoadFlags, pool: &[Conversation]) -> Vec<Point> {
    specs
        .into_iter()
        .map(|p| {
            let number = match load.config.request_count {
                Some(requests) => Some(conversations_for_requests(requests, pool)),
                None => p.number,
            };
            let mut label = Vec::new();
            if let Some(r) = p.rate_per_s {
                label.push(format!("rate_{r}"));
            }
            if let Some(c) = p.parallel {
                label.push(format!("parallel_{c}"));
            }
            if let Some(n) = number {
                label.push(format!("number_{n}"));
            }
            Point {
                label: label.join("_"),
                parallel: p.parallel,
                rate_per_s: p.rate_per_s,
                number,
            }
        })
        .collect()
}

/// Conversations, taken in sequence order from `pool` (cycling), whose turns first reach
/// `requests`.
fn conversations_for_requests(requests: u64, pool: &[Conversation]) -> u64 {
    let mut turns = 0u64;
    let mut n = 0u64;
    while turns < requests {
        turns += pool[(n % pool.len() as u64) as usize].turns.len().max(1) as u64;
        n += 1;
    }
    n
}

/// `--header NAME: VALUE` lines.
fn parse_headers(lines: &[String]) -> Result<Vec<(String, String)>, PlanError> {
    lines
        .iter()
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| flag_err("header", format!("`{line}` is not NAME: VALUE")))?;
            let (name, value) = (name.trim(), value.trim());
            check_header_name(name)?;
            if hyper::header::HeaderValue::from_str(value).is_err() {
                return Err(flag_err(
                    "header",
                    format!("`{line}`: the value is not a valid header value"),
                ));
            }
            Ok((name.to_ascii_lowercase(), value.to_string()))
        })
        .collect()
}

fn check_header_name(name: &str) -> Result<(), PlanError> {
    hyper::header::HeaderName::from_bytes(name.as_bytes())
        .map(|_| ())
        .map_err(|_| flag_err("header", format!("`{name}` is not a valid header name")))
}

impl BenchPlan {
    /// The engine's load for one point.
    pub fn engine_load(&self, point: &Point) -> (Option<Load>, Load) {
        let s_to_ns = |s: f64| (s * 1e9) as u64;
        let l = &self.load;
        let shape = match (&self.fixed, point.rate_per_s) {
            (Some(schedule), _) => Shape::Fixed {
                schedule: Arc::new(schedule.clone()),
                cap: point.parallel.map(|p| p as usize),
            },
            (None, None) => Shape::Closed {
                concurrency: point.parallel.unwrap_or(DEFAULT_PARALLEL) as usize,
                ramp_up_ns: l.ramp_up_duration_s.map(s_to_ns),
            },
            (None, Some(per_s)) => Shape::Rate {
                spec: RateSpec {
                    per_s,
                    mode: l.request_rate_mode,
                    burstiness: l.burstiness,
                    ramp: l.ramp_up_strategy.map(|strategy| RateRamp {
                        strategy,
                        start_per_s: l.ramp_up_start_rate.unwrap_or(0.0),
                        duration_ns: l.ramp_up_duration_s.map(s_to_ns),
                    }),
                },
                cap: point.parallel.map(|p| p as usize),
            },
        };
        let warmup =
            (l.warmup_conversations.is_some() || l.warmup_duration_s.is_some()).then(|| Load {
                shape: shape.clone(),
                limit: l.warmup_conversations,
                duration_ns: l.warmup_duration_s.map(s_to_ns),
                grace_ns: None,
            });
        let load = Load {
            shape,
            limit: point.number,
            duration_ns: l.duration_s.map(s_to_ns),
            grace_ns: l.duration_grace_s.map(s_to_ns),
        };
        (warmup, load)
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

/// The path part of a `--url`.
#[derive(Debug, PartialEq)]
enum UrlPath {
    /// A base the endpoint's path goes under: empty (`http://host:port`), `…/v1`, or (with
    /// `--endpoint`) any other prefix.
    Base(String),
    /// A full endpoint path, and the endpoint it names.
    Endpoint(String, EndpointKind),
}

/// A parsed `--url`.
struct ParsedUrl {
    url: String,
    addr: SocketAddr,
    host: String,
    path: UrlPath,
}

/// The targets of `--url` (the built-in sim without one) and the endpoint every request goes
/// to: `--endpoint-type`, else the endpoint the `--endpoint` path or the URLs name, else chat.
/// A URL or `--endpoint` that names another endpoint than the one chosen is an error, as is a
/// URL path that disagrees with `--endpoint`.
pub fn resolve_targets(
    urls: &[String],
    endpoint_type: Option<EndpointKind>,
    endpoint: Option<&str>,
) -> Result<(Vec<Target>, EndpointKind), PlanError> {
    if let Some(p) = endpoint {
        if !p.starts_with('/') || p.parse::<hyper::Uri>().is_err() {
            return Err(PlanError::Endpoint(format!(
                "--endpoint {p}: a request path such as /v1/chat/completions"
            )));
        }
    }
    let parsed = urls
        .iter()
        .map(|u| parse_url(u, endpoint.is_some()))
        .collect::<Result<Vec<_>, _>>()?;
    let by_endpoint = endpoint.and_then(EndpointKind::named_by);
    let by_url = parsed.iter().find_map(|p| match &p.path {
        UrlPath::Endpoint(_, kind) => Some((&p.url, *kind)),
        UrlPath::Base(_) => None,
    });
    let kind = endpoint_type
        .or(by_endpoint)
        .or(by_url.map(|(_, k)| k))
        .unwrap_or_default();
    // Why this endpoint was chosen, for the messages below.
    let chosen_by = match (endpoint_type, by_endpoint, by_url) {
        (Some(k), _, _) => format!("--endpoint-type {}", k.as_str()),
        (None, Some(_), _) => format!("--endpoint {}", endpoint.unwrap_or_default()),
        (None, None, Some((url, _))) => format!("--url {url}"),
        (None, None, None) => "the default (chat)".to_string(),
    };
    if let (Some(named), Some(p)) = (by_endpoint, endpoint) {
        if named != kind {
            return Err(PlanError::Endpoint(format!(
                "--endpoint {p} is the {} endpoint, but {chosen_by} sends {} requests",
                named.as_str(),
                kind.as_str()
            )));
        }
    }
    let mut targets = Vec::with_capacity(parsed.len());
    for p in parsed {
        let path = match (&p.path, endpoint) {
            (UrlPath::Endpoint(path, named), _) if *named != kind => {
                return Err(PlanError::Url {
                    url: p.url.clone(),
                    reason: format!(
                        "names the {} endpoint ({path}), but {chosen_by} sends {} requests \
                         (to {}); give the base URL or the matching path",
                        named.as_str(),
                        kind.as_str(),
                        kind.default_path()
                    ),
                })
            }
            (UrlPath::Endpoint(path, _), Some(e)) if path != e => {
                return Err(PlanError::Url {
                    url: p.url.clone(),
                    reason: format!(
                        "names the path {path}, but --endpoint says {e}; give one of them"
                    ),
                })
            }
            (UrlPath::Endpoint(path, _), _) => path.clone(),
            (UrlPath::Base(base), Some(e)) => {
                // AIPerf's `--url host:port --endpoint /v1/…`; a base that already starts the
                // endpoint path (`…/v1` and `/v1/…`) is not repeated.
                if base.is_empty() || e.starts_with(&format!("{base}/")) {
                    e.to_string()
                } else {
                    format!("{base}{e}")
                }
            }
            (UrlPath::Base(base), None) => {
                let suffix = &kind.default_path()["/v1".len()..];
                if base.is_empty() {
                    kind.default_path().to_string()
                } else {
                    format!("{base}{suffix}")
                }
            }
        };
        targets.push(Target::Url {
            url: p.url,
            addr: p.addr,
            host: p.host,
            path,
        });
    }
    if targets.is_empty() {
        targets.push(Target::BuiltinSim {
            path: endpoint.unwrap_or(kind.default_path()).to_string(),
        });
    }
    Ok((targets, kind))
}

/// Parses one `--url`: http only, `host:port` without a scheme means http. Without
/// `--endpoint` (`any_base`), its path must be empty, `…/v1`, or an endpoint path.
fn parse_url(url: &str, any_base: bool) -> Result<ParsedUrl, PlanError> {
    let err = |reason: &str| PlanError::Url {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    // AIPerf's `localhost:8000`: no scheme means http.
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let uri: hyper::Uri = with_scheme.parse().map_err(|_| err("not a valid URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(err("https is not supported yet; use http")),
        _ => return Err(err("must be http://host[:port][/path] or host:port")),
    }
    let host = uri.host().ok_or_else(|| err("has no host"))?;
    // Read from the authority text: hyper's parsed port is silently absent when out of range.
    let authority = uri.authority().map_or("", |a| a.as_str());
    let host_end = authority.rfind(']').unwrap_or(0);
    let port = match authority[host_end..].rsplit_once(':') {
        Some((_, p)) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| err(&format!("port {p} is not 1-65535")))?,
        None => 80,
    };
    let addr = (host.trim_start_matches('[').trim_end_matches(']'), port)
        .to_socket_addrs()
        .map_err(|e| err(&format!("cannot resolve host: {e}")))?
        .next()
        .ok_or_else(|| err("host resolves to no address"))?;
    let raw = uri.path().trim_end_matches('/');
    let path = match EndpointKind::named_by(raw) {
        Some(kind) => UrlPath::Endpoint(raw.to_string(), kind),
        None if raw.is_empty() || raw.ends_with("/v1") || any_base => {
            UrlPath::Base(raw.to_string())
        }
        None => {
            return Err(err(&format!(
                "path `{raw}` is not a chat/completions endpoint; give the base URL, \
                 …/v1/chat/completions or …/v1/completions (or the path with --endpoint)"
            )))
        }
    };
    let host_header = match uri.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    Ok(ParsedUrl {
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

/// The fixed body pieces: every field but `messages` (chat) or `prompt` (completions), which
/// the engine appends per turn.
pub fn body_shape(
    kind: EndpointKind,
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
    let open = open_fields(&fields, true, kind);
    fields.remove("max_tokens");
    let open_without_max = open_fields(&fields, false, kind);
    BodyShape {
        open: Bytes::from(open),
        open_without_max: Bytes::from(open_without_max),
        max_tokens_field: "max_tokens",
        kind,
    }
}

/// `{"a":1,"b":2` → `{"a":1,"b":2,"messages":[` (with the brace) or `"a":1,"b":2,"messages":[`;
/// for completions `…,"prompt":"`.
fn open_fields(fields: &Map<String, Value>, with_brace: bool, kind: EndpointKind) -> String {
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
    out.push_str(match kind {
        EndpointKind::Chat => "\"messages\":[",
        EndpointKind::Completions => "\"prompt\":\"",
    });
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
    fn pool_size_follows_num_dataset_entries_number_warmup_and_fixed() {
        let limit = |flags: &[&str], entries: Option<u64>, fixed: bool| {
            let (points, load) = load(flags).unwrap();
            pool_limit(entries, &points, &load, fixed)
        };
        assert_eq!(limit(&[], None, false), 100);
        assert_eq!(limit(&["--number", "5", "40"], None, false), 40);
        assert_eq!(
            limit(&["--number", "40", "--warmup-num", "6"], None, false),
            46
        );
        assert_eq!(
            limit(&["--duration", "9"], None, false),
            DURATION_POOL as usize
        );
        assert_eq!(
            limit(&["--number", "1000000"], None, false),
            MAX_POOL as usize
        );
        assert_eq!(limit(&[], Some(7), false), 7);
        assert_eq!(limit(&[], Some(7), true), 7);
        assert_eq!(limit(&[], None, true), usize::MAX, "fixed: the whole file");
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
        assert_eq!(
            (plan.points[0].number, plan.conversations.len()),
            (Some(3), 3)
        );
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
        assert_eq!(plan.config.point.number, Some(3));
        assert!(plan.config.pool_config.fixed_schedule.is_some());

        // A given, smaller --number keeps the earliest; a window drops the rest from the pool.
        let mut flags = base.to_vec();
        flags.extend(["--number", "2", "--fixed-schedule-start-offset", "1500"]);
        let plan = BenchPlan::build(&args(&flags)).unwrap();
        let fixed = plan.fixed.as_ref().unwrap();
        assert_eq!(
            (plan.points[0].number, plan.conversations.len()),
            (Some(2), 2)
        );
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
        assert_eq!(
            plan.points[0].number,
            Some(100),
            "claims cycle through the pool"
        );
        assert_eq!(plan.sampling.len(), 3);
        assert_eq!(plan.sampling.strategy(), SamplingStrategy::Shuffle);
        assert!(plan.fixed.is_none());
        let v = serde_json::to_value(&plan.config).unwrap();
        assert_eq!(v["dataset_sampling_strategy"], "shuffle");
        assert_eq!(v["num_dataset_entries"], 3);
        assert_eq!(v["fixed_schedule"], Value::Null);
    }

    /// The paths and the endpoint `--url`s (with `--endpoint-type` / `--endpoint`) resolve to.
    fn resolve(
        urls: &[&str],
        kind: Option<EndpointKind>,
        endpoint: Option<&str>,
    ) -> Result<(Vec<String>, EndpointKind), String> {
        let urls: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
        let (targets, kind) = resolve_targets(&urls, kind, endpoint).map_err(|e| e.to_string())?;
        let paths = targets
            .into_iter()
            .map(|t| match t {
                Target::Url { path, .. } | Target::BuiltinSim { path } => path,
            })
            .collect();
        Ok((paths, kind))
    }

    fn path(u: &str) -> String {
        resolve(&[u], None, None).unwrap().0.remove(0)
    }

    #[test]
    fn url_forms() {
        assert_eq!(path("http://127.0.0.1:8000"), "/v1/chat/completions");
        assert_eq!(path("http://127.0.0.1:8000/v1"), "/v1/chat/completions");
        assert_eq!(path("http://127.0.0.1:8000/v1/"), "/v1/chat/completions");
        assert_eq!(
            path("http://127.0.0.1:8000/v1/completions"),
            "/v1/completions"
        );
        assert!(resolve(&["https://127.0.0.1"], None, None).is_err());
        assert_eq!(path("127.0.0.1:8000"), "/v1/chat/completions");
        assert!(resolve(&["ftp://127.0.0.1:8000"], None, None).is_err());
        assert!(resolve(&["http://127.0.0.1:99999"], None, None).is_err());
        let foo = resolve(&["http://127.0.0.1:8000/foo"], None, None).unwrap_err();
        assert!(foo.contains("--endpoint"), "{foo}");
    }

    #[test]
    fn endpoint_type_and_path() {
        use EndpointKind::{Chat, Completions};
        let ok = |urls: &[&str], kind, endpoint| resolve(urls, kind, endpoint).unwrap();
        let one = |p: &str, k| (vec![p.to_string()], k);
        // The URL's path picks the endpoint; --endpoint-type picks it for a base URL.
        assert_eq!(
            ok(&["127.0.0.1:1/v1/completions"], None, None),
            one("/v1/completions", Completions)
        );
        assert_eq!(
            ok(&["127.0.0.1:1"], Some(Completions), None),
            one("/v1/completions", Completions)
        );
        assert_eq!(
            ok(&["http://127.0.0.1:1/compat/v1"], Some(Completions), None),
            one("/compat/v1/completions", Completions)
        );
        assert_eq!(
            ok(&["127.0.0.1:1/v1/chat/completions"], Some(Chat), None),
            one("/v1/chat/completions", Chat)
        );
        // AIPerf: --url host:port --endpoint-type chat --endpoint /v1/chat/completions.
        let aiperf = ok(&["localhost:1"], Some(Chat), Some("/v1/chat/completions"));
        assert_eq!(aiperf, one("/v1/chat/completions", Chat));
        // --endpoint alone: its path, and the endpoint it names.
        assert_eq!(
            ok(&["127.0.0.1:1"], None, Some("/v1/completions")),
            one("/v1/completions", Completions)
        );
        assert_eq!(
            ok(&["127.0.0.1:1/v1"], None, Some("/v1/completions")),
            one("/v1/completions", Completions)
        );
        assert_eq!(
            ok(&["127.0.0.1:1/gw"], Some(Completions), Some("/gen")),
            one("/gw/gen", Completions)
        );
        // Without --url: the built-in sim, at the endpoint's path.
        assert_eq!(
            ok(&[], Some(Completions), None),
            one("/v1/completions", Completions)
        );
        assert_eq!(ok(&[], None, None), one("/v1/chat/completions", Chat));
        // Several URLs naming the same endpoint.
        let two = ok(&["127.0.0.1:1/v1/completions", "127.0.0.2:2"], None, None);
        assert_eq!(two.0, ["/v1/completions", "/v1/completions"]);

        let err = |urls: &[&str], kind, endpoint| resolve(urls, kind, endpoint).unwrap_err();
        let e = err(
            &["127.0.0.1:1/v1/chat/completions"],
            Some(Completions),
            None,
        );
        assert!(
            e.contains("names the chat endpoint") && e.contains("--endpoint-type completions"),
            "{e}"
        );
        let e = err(&["127.0.0.1:1/v1/completions"], Some(Chat), None);
        assert!(e.contains("names the completions endpoint"), "{e}");
        let e = err(
            &["127.0.0.1:1/v1/completions"],
            None,
            Some("/v1/chat/completions"),
        );
        assert!(e.contains("--endpoint /v1/chat/completions"), "{e}");
        let e = err(
            &["127.0.0.1:1"],
            Some(Completions),
            Some("/v1/chat/completions"),
        );
        assert!(e.contains("is the chat endpoint"), "{e}");
        let e = err(
            &[
                "127.0.0.1:1/v1/completions",
                "127.0.0.2:2/v1/chat/completions",
            ],
            None,
            None,
        );
        assert!(e.contains("127.0.0.2:2"), "{e}");
        let e = err(
            &["127.0.0.1:1/v1/x/completions"],
            None,
            Some("/v1/completions"),
        );
        assert!(e.contains("--endpoint says /v1/completions"), "{e}");
        assert!(err(&["127.0.0.1:1"], None, Some("v1/completions")).contains("request path"));
    }

    fn load(flags: &[&str]) -> Result<(Vec<PointSpec>, LoadFlags), String> {
        load_config(&args(flags)).map_err(|e| e.to_string())
    }

    #[test]
    fn sweep_lists_pair_value_by_value() {
        let (points, _) = load(&["--parallel", "5", "10", "--number", "10", "20"]).unwrap();
        let pairs: Vec<_> = points.iter().map(|p| (p.parallel, p.number)).collect();
        assert_eq!(pairs, [(Some(5), Some(10)), (Some(10), Some(20))]);
        // One --number applies to every point.
        let (points, _) = load(&["--concurrency", "2,4,8", "--number", "7"]).unwrap();
        assert!(points.iter().all(|p| p.number == Some(7)));
        assert_eq!(points.len(), 3);
        let e = load(&["--parallel", "1", "2", "3", "--number", "1", "2"]).unwrap_err();
        assert!(e.contains("--number") && e.contains("pairs"), "{e}");
        // A rate sweep: no default concurrency (no cap) unless given.
        let (points, _) = load(&["--request-rate", "1,2"]).unwrap();
        assert!(points.iter().all(|p| p.parallel.is_none()));
        assert_eq!(points[1].rate_per_s, Some(2.0));
    }

    #[test]
    fn duration_without_number_has_no_count_limit() {
        let (points, _) = load(&["--duration", "5"]).unwrap();
        assert_eq!(points[0].number, None);
        let (points, _) = load(&[]).unwrap();
        assert_eq!(points[0].number, Some(DEFAULT_NUMBER));
        assert_eq!(points[0].parallel, Some(DEFAULT_PARALLEL));
    }

    #[test]
    fn rate_flags_are_checked() {
        let (points, _) = load(&["--rate", "-1"]).unwrap();
        assert_eq!(points[0].rate_per_s, None, "evalscope's -1 is no rate");
        assert!(load(&["--rate", "0"]).unwrap_err().contains("positive"));
        let (_, l) = load(&["--rate", "3", "--burstiness", "0.5"]).unwrap();
        assert_eq!(l.config.request_rate_mode, ArrivalMode::Gamma);
        let e = load(&[
            "--rate",
            "3",
            "--request-rate-mode",
            "poisson",
            "--burstiness",
            "2",
        ]);
        assert!(e.unwrap_err().contains("gamma"));
        let e = load(&["--request-rate-mode", "constant"]).unwrap_err();
        assert!(e.contains("--request-rate"), "{e}");
        let e = load(&["--ramp-up-strategy", "linear", "--ramp-up-start-rate", "1"]);
        assert!(e.unwrap_err().contains("--request-rate"));
        let e = load(&[
            "--rate",
            "5",
            "--ramp-up-strategy",
            "exponential",
            "--ramp-up-start-rate",
            "0",
        ]);
        assert!(e.unwrap_err().contains("above 0"));
        let e = load(&["--rate", "5", "--ramp-up-duration", "3"]).unwrap_err();
        assert!(e.contains("--ramp-up-strategy"), "{e}");
    }

    #[test]
    fn warmup_count_or_fraction() {
        let (_, l) = load(&["--warmup-num", "5"]).unwrap();
        assert_eq!(l.config.warmup_conversations, Some(5));
        let (_, l) = load(&["--warmup-num", "0.2", "--number", "50"]).unwrap();
        assert_eq!(l.warmup_fraction, Some(0.2));
        assert!(load(&["--warmup-num", "2.5"]).is_err());
        assert!(load(&["--warmup-num", "0.5", "--duration", "3"]).is_err());
    }

    #[test]
    fn request_count_takes_whole_conversations() {
        let conv = |turns: usize| {
            Conversation::live(vec![crate::workload::Turn::user("x", Some(1)); turns])
        };
        let pool = vec![conv(3), conv(1), conv(2)];
        assert_eq!(conversations_for_requests(3, &pool), 1);
        assert_eq!(conversations_for_requests(4, &pool), 2);
        assert_eq!(conversations_for_requests(5, &pool), 3);
        assert_eq!(
            conversations_for_requests(7, &pool),
            4,
            "cycles through the pool"
        );
    }

    #[test]
    fn headers_parse_and_are_checked() {
        let h = parse_headers(&["X-Tenant: a b".into(), "x-k:v".into()]).unwrap();
        assert_eq!(
            h,
            [
                ("x-tenant".into(), "a b".into()),
                ("x-k".into(), "v".into())
            ]
        );
        assert!(parse_headers(&["novalue".into()]).is_err());
        assert!(parse_headers(&["bad name: v".into()]).is_err());
    }

    #[test]
    fn body_shape_merges_extra_args() {
        let extra = parse_extra_args(Some(r#"{"ignore_eos": true, "max_tokens": 7}"#)).unwrap();
        let shape = body_shape(EndpointKind::Chat, "m", true, 100, Some(3), &extra);
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
    fn completions_body_shape_opens_the_prompt() {
        let extra = parse_extra_args(Some(r#"{"ignore_eos": true}"#)).unwrap();
        let shape = body_shape(EndpointKind::Completions, "m", false, 5, None, &extra);
        assert_eq!(shape.kind, EndpointKind::Completions);
        let full = format!("{}hi\"}}", std::str::from_utf8(&shape.open).unwrap());
        let v: Value = serde_json::from_str(&full).unwrap();
        assert_eq!(v["prompt"], "hi");
        assert_eq!(v["max_tokens"], 5);
        assert_eq!(v["stream"], false);
        assert!(v.get("stream_options").is_none() && v.get("messages").is_none());
        let no_max = format!(
            "{{\"max_tokens\":9,{}x\"}}",
            std::str::from_utf8(&shape.open_without_max).unwrap()
        );
        let v: Value = serde_json::from_str(&no_max).unwrap();
        assert_eq!(
            (v["max_tokens"].as_u64(), v["prompt"].as_str()),
            (Some(9), Some("x"))
        );
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
