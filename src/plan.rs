//! Stage 1 of a bench run: validated flags become a [`Plan`], a pure value holding everything
//! the flags alone decide — the targets as parsed (not resolved) URLs, the request body pieces,
//! the load points and shape, the dataset to build and how, the cores asked for, the timeouts
//! and where the files go.
//!
//! [`Plan::from_args`] does no I/O at all: no file is read, no host resolved, no tokenizer
//! loaded, no clock or CPU affinity read; so every flag error comes before any work and the
//! plan is unit-tested from flag lists. Stage 2, [`crate::resources::Resources`], does the I/O
//! the plan asks for; stage 3, [`crate::run`], runs it. Every error names the flag at fault.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::cli::BenchArgs;
use crate::engine::{ArrivalMode, BodyShape, EndpointKind, RampStrategy};
use crate::metrics::GoodputLimits;
use crate::workload::fixed::FixedOptions;
use crate::workload::sampling::SamplingStrategy;
use crate::workload::{self, ContextMode, DatasetError, DatasetFlag, DatasetParams, Selection};

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
    Dataset(#[from] DatasetError),
}

/// Where requests go, as the flags say it (a host name is resolved by
/// [`crate::resources::Resources::build`]). The run config records its label and path.
#[derive(Clone, Debug)]
pub enum Target {
    /// A server given by `--url`.
    Url {
        /// `--url` as given.
        url: String,
        /// The host to resolve (IPv6 without brackets); with `tls`, also the name verified.
        host: String,
        port: u16,
        /// `Host` header value.
        host_header: HeaderValue,
        /// Request path.
        path: hyper::Uri,
        /// `https://`: requests go over TLS.
        tls: bool,
    },
    /// The built-in sim, started by [`crate::resources::Resources::build`]; requests go to
    /// `path`.
    BuiltinSim { path: hyper::Uri },
}

impl Target {
    /// `https://`.
    pub fn tls(&self) -> bool {
        matches!(self, Target::Url { tls: true, .. })
    }

    /// The request path.
    pub fn path(&self) -> &hyper::Uri {
        match self {
            Target::Url { path, .. } | Target::BuiltinSim { path } => path,
        }
    }

    /// How reports name it: the `--url`, or `builtin-sim`.
    pub fn label(&self) -> &str {
        match self {
            Target::Url { url, .. } => url,
            Target::BuiltinSim { .. } => "builtin-sim",
        }
    }
}

impl serde::Serialize for Target {
    /// `{"url": label, "path": request path}`: the URL as given (credentials already masked by
    /// [`parse_url`]); the parts derived from it (host, port, `Host` header) add nothing.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Target", 2)?;
        st.serialize_field("url", self.label())?;
        st.serialize_field("path", self.path().path())?;
        st.end()
    }
}

/// Settings echoed into the report so a summary says what produced it: the plan's, and the
/// facts the resources add (pool size, skipped, tokenizer, cores).
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunConfig {
    /// This process's command line, secrets masked ([`crate::report::cli_command`]).
    pub command_line: String,
    /// When this point's run started (wall clock), RFC 3339 in UTC and as unix seconds; set
    /// by [`crate::run::run_point`] (the build time of the resources until then).
    pub start_time: String,
    pub start_unix_s: f64,
    /// Every resolved flag: the [`Plan`] after validation, secrets masked
    /// ([`Plan::config_view`]).
    pub flags: Value,
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

/// One point of the load: what varies across a sweep, with its conversation count final.
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

/// A point as the flags give it. Its conversation count is final only with the conversations:
/// `--request-count` and `--fixed-schedule` set it then ([`crate::resources::Resources`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PointSpec {
    pub parallel: Option<u32>,
    pub rate_per_s: Option<f64>,
    /// `--number` (or its default); `None` with `--duration` or `--request-count` alone.
    pub number: Option<u64>,
}

/// The load settings shared by every point.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LoadConfig {
    pub request_rate_mode: ArrivalMode,
    pub burstiness: f64,
    pub duration_s: Option<f64>,
    pub duration_grace_s: Option<f64>,
    /// `--grace`: how long requests in flight may finish after a signal before being cancelled.
    pub grace_s: f64,
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

/// The conversations to build and how (built by [`crate::resources::Resources::build`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct DatasetPlan {
    /// `--dataset`, or the one the flags imply.
    pub name: String,
    #[serde(rename = "dataset_path")]
    pub path: Option<PathBuf>,
    pub params: DatasetParams,
    /// Offset, shard and how many to build.
    pub selection: Selection,
    /// `--shard` as given.
    pub shard: Option<(u64, u64)>,
    pub skip_invalid: bool,
    /// `--max-line-bytes`: the longest dataset line (or JSON array item) read.
    pub max_line_bytes: usize,
    pub context_mode: Option<ContextMode>,
    /// `--num-dataset-entries`, the sampling strategy and the fixed schedule's options.
    pub pool: PoolConfig,
    /// With `--fixed-schedule`: the largest `--number` given, which keeps only the earliest.
    pub fixed_number: Option<u64>,
    /// `--tokenizer-path` (`None` or `builtin`: the builtin tokenizer).
    pub tokenizer_path: Option<PathBuf>,
}

/// A validated benchmark: everything the flags decide, and nothing read from the outside.
///
/// Its `Serialize` is the run config's record of every resolved flag (`summary.json`
/// `config.flags`, see [`Plan::config_view`]): derived, so a new field is recorded without
/// further work (or fails to compile until its type says how), and secrets are masked by the
/// `serialize_with` functions below.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    /// One per `--url` (the built-in sim when none).
    pub targets: Vec<Target>,
    pub model: String,
    /// `Authorization` header value (`Bearer <--api-key>`); recorded as `"***"` when set.
    #[serde(rename = "api_key", serialize_with = "masked_secret")]
    pub authorization: Option<HeaderValue>,
    /// `--header` lines; values of secret-bearing headers recorded as `***`.
    #[serde(serialize_with = "masked_headers")]
    pub headers: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "header_name")]
    pub session_header: HeaderName,
    pub stream: bool,
    /// Chat or completions (every target gets the same body form).
    pub endpoint: EndpointKind,
    /// Built from `model`, `stream`, `max_tokens`, `min_tokens` and `extra_args`, all recorded.
    #[serde(skip)]
    pub body: BodyShape,
    /// The body fields a turn's own fields are merged over (its own opening).
    pub max_tokens: u32,
    pub min_tokens: Option<u32>,
    pub extra_args: Map<String, Value>,
    /// The run's load points: one, or one per value of a sweep.
    pub points: Vec<PointSpec>,
    pub load: LoadConfig,
    pub dataset: DatasetPlan,
    /// `--cores`: how many of the CPUs this process may use (`None`: all).
    pub cores: Option<u32>,
    /// `--cpus`: exactly these CPUs (parsed here; checked against the host by the resources).
    pub cpus: Option<Vec<usize>>,
    pub spin: bool,
    pub seed: u64,
    #[serde(rename = "connect_timeout_s", serialize_with = "seconds")]
    pub connect_timeout: Duration,
    #[serde(rename = "read_timeout_s", serialize_with = "seconds")]
    pub read_timeout: Duration,
    /// `--request-timeout` (`None`: no limit).
    #[serde(rename = "request_timeout_s", serialize_with = "opt_seconds")]
    pub request_timeout: Option<Duration>,
    /// `--retry-429`.
    pub retry_429: bool,
    /// `--max-consecutive-connect-failures` (0: never stop; `None`: the default, see
    /// [`crate::engine::EngineConfig::max_consecutive_connect_failures`]).
    pub max_consecutive_connect_failures: Option<u64>,
    /// `--wait-for-model-timeout` (`None`: no pre-flight wait).
    #[serde(rename = "wait_for_model_timeout_s", serialize_with = "opt_seconds")]
    pub wait_for_model: Option<Duration>,
    /// Run directories go in `<outputs_dir>/<timestamp>/<name>`.
    pub outputs_dir: PathBuf,
    /// Write `records.jsonl` and `profile_export.jsonl` (off: `--no-records`, `--export-level
    /// summary`).
    pub records: bool,
    /// The run's name (`--name`, else the model's last path part), safe as a directory name.
    pub name: String,
    /// One-line notes for stderr about flags accepted but without effect (e.g.
    /// `--tokenize-prompt`).
    pub notes: Vec<String>,
    /// `--goodput`: per-request limits for the goodput figures.
    pub goodput: Option<GoodputLimits>,
    /// `--slo` and `--max-error-rate`: thresholds on each point's summary; a breach makes the
    /// run exit 1.
    pub thresholds: Vec<Threshold>,
    /// `--server-metrics`: `None` off; an empty list scrapes each target's `/metrics`. URLs
    /// are checked here and recorded with credentials masked.
    #[serde(serialize_with = "masked_urls")]
    pub server_metrics: Option<Vec<String>>,
    /// `--ca-cert`: PEM certificates https targets are verified against, beside the bundled
    /// roots (read by the resources).
    pub ca_cert: Option<PathBuf>,
    /// `--insecure`: https targets' certificates are not verified.
    pub insecure: bool,
}

/// A secret header value, recorded as `"***"` (or `null` when absent).
fn masked_secret<S: serde::Serializer>(v: &Option<HeaderValue>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str(MASK),
        None => s.serialize_none(),
    }
}

/// `--header` lines as `NAME: VALUE`, the value masked when the name bears a secret.
fn masked_headers<S: serde::Serializer>(
    v: &[(HeaderName, HeaderValue)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|(name, value)| {
        let value = if is_secret_header(name.as_str()) {
            MASK
        } else {
            value.to_str().unwrap_or("<not UTF-8>")
        };
        format!("{name}: {value}")
    }))
}

fn masked_urls<S: serde::Serializer>(v: &Option<Vec<String>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(urls) => s.collect_seq(urls.iter().map(|u| redact_url(u))),
        None => s.serialize_none(),
    }
}

fn header_name<S: serde::Serializer>(v: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.as_str())
}

fn seconds<S: serde::Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(v.as_secs_f64())
}

fn opt_seconds<S: serde::Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// What a masked secret is written as.
pub(crate) const MASK: &str = "***";

/// Whether a header's value is a secret that reports must not show: credentials
/// (`Authorization`, `Proxy-Authorization`, `Cookie`) and any name that says key, token,
/// secret or password (`X-API-Key`, `api-key`, `X-Auth-Token`, …).
pub(crate) fn is_secret_header(name: &str) -> bool {
    let n = name.trim().to_ascii_lowercase();
    n.contains("auth")
        || n.contains("cookie")
        || n.contains("key")
        || n.contains("token")
        || n.contains("secret")
        || n.contains("password")
}

/// A wall-clock instant as the run config records it.
#[derive(Clone, Copy, Debug)]
pub struct WallTime {
    pub unix_s: f64,
}

impl WallTime {
    pub fn now() -> WallTime {
        let unix_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        WallTime { unix_s }
    }

    /// RFC 3339 in UTC with milliseconds: `2025-01-31T12:34:56.789Z`.
    pub fn rfc3339(&self) -> String {
        let ms_total = (self.unix_s * 1e3).floor() as i64;
        let (secs, ms) = (ms_total.div_euclid(1000), ms_total.rem_euclid(1000));
        let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            sod / 3600,
            sod % 3600 / 60,
            sod % 60
        )
    }
}

/// Year, month, day of a count of days since 1970-01-01 (proleptic Gregorian; Howard
/// Hinnant's `civil_from_days`), so no date crate is needed for one timestamp.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl Plan {
    /// The run config's record of every resolved flag: the plan serialized, secrets masked.
    pub fn config_view(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|e| {
            // Every field serializes to JSON (strings, numbers, maps); keep the report anyway.
            Value::String(format!("unserializable plan: {e}"))
        })
    }

    /// Validates the flags into a plan. Pure: reads nothing but `args`.
    pub fn from_args(args: &BenchArgs) -> Result<Plan, PlanError> {
        let (targets, endpoint) =
            parse_targets(&args.url, args.endpoint_type, args.endpoint.as_deref())?;
        let model = match (&args.model, &targets[0]) {
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
            Some(name) => check_header_name(name)?,
            None => HeaderName::from_static(crate::client::SESSION_HEADER),
        };
        let authorization = args
            .api_key
            .as_ref()
            .map(|k| header_value("api-key", &format!("Bearer {k}")))
            .transpose()?;
        let (mut points, mut load) = load_config(args)?;
        let params = dataset_params(args)?;
        let dataset = dataset_name(args, &params);
        // Flags the source would ignore, and a fixed schedule over a format that records no
        // send times.
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
        let stream = args.streaming();
        let body = body_shape(
            endpoint,
            &model,
            stream,
            args.max_tokens,
            args.min_tokens,
            &extra,
        );
        let (shard_index, shard_count) = args.shard.unwrap_or((0, 1));
        let selection = Selection {
            offset: args.dataset_offset,
            shard_index,
            shard_count,
            limit: pool_limit(
                args.num_dataset_entries,
                &points,
                &load,
                fixed_options.is_some(),
            ),
        };
        if fixed_options.is_some() && args.parallel.is_empty() {
            // A fixed schedule runs its conversations once each, at their times; --parallel,
            // when given, caps them.
            for p in &mut points {
                p.parallel = None;
            }
        }
        if let Some(w) = load.warmup_fraction.take() {
            // The fraction needs --number (checked above), which is then each point's count:
            // --request-count conflicts with --number, --fixed-schedule with any warmup.
            let number = points.iter().filter_map(|p| p.number).max().unwrap_or(0);
            load.config.warmup_conversations = Some(((w * number as f64) as u64).max(1));
        }

        let server_metrics = match &args.server_metrics {
            None => None,
            Some(urls) => {
                let urls: Vec<String> = urls
                    .iter()
                    .map(|u| u.trim().to_string())
                    .filter(|u| !u.is_empty())
                    .collect();
                for u in &urls {
                    crate::server_metrics::parse_url(u).map_err(|reason| {
                        flag_err("server-metrics", format!("{}: {reason}", redact_url(u)))
                    })?;
                }
                Some(urls)
            }
        };
        check_tls_flags(args, &targets, server_metrics.as_deref(), &mut notes)?;
        let goodput = parse_goodput(&args.goodput)?;
        let thresholds = parse_thresholds(&args.slo, args.max_error_rate, goodput.is_some())?;
        let name = args.name.clone().unwrap_or_else(|| {
            model
                .rsplit('/')
                .find(|s| !s.is_empty())
                .unwrap_or("run")
                .to_string()
        });
        Ok(Plan {
            targets,
            model,
            authorization,
            headers,
            session_header,
            stream,
            endpoint,
            body,
            max_tokens: args.max_tokens,
            min_tokens: args.min_tokens,
            extra_args: extra,
            points,
            load: load.config,
            dataset: DatasetPlan {
                name: dataset,
                path: args.dataset_path.clone(),
                params,
                selection,
                shard: args.shard,
                skip_invalid: args.skip_invalid,
                max_line_bytes: args.max_line_bytes,
                context_mode: args.context_mode,
                pool: PoolConfig {
                    num_dataset_entries: args.num_dataset_entries,
                    dataset_sampling_strategy: args.dataset_sampling_strategy,
                    fixed_schedule: fixed_options,
                },
                fixed_number: args.number.iter().copied().max(),
                tokenizer_path: args.tokenizer_path.clone(),
            },
            cores: args.cores,
            cpus: args
                .cpus
                .as_deref()
                .map(|list| {
                    crate::cpus::parse_list(list).ok_or_else(|| PlanError::Flag {
                        flag: "cpus",
                        reason: format!(
                            "{list:?} is not a CPU list such as 2-9,12 (CPUs and inclusive ranges)"
                        ),
                    })
                })
                .transpose()?,
            spin: args.spin,
            seed: args.seed,
            connect_timeout: timeout("connect-timeout", args.connect_timeout)?,
            read_timeout: timeout("read-timeout", args.read_timeout)?,
            request_timeout: args
                .request_timeout
                .map(|s| timeout("request-timeout", s))
                .transpose()?,
            retry_429: args.retry_429,
            max_consecutive_connect_failures: args.max_consecutive_connect_failures,
            wait_for_model: if args.wait_for_model_timeout == 0.0 {
                None
            } else {
                Some(timeout(
                    "wait-for-model-timeout",
                    args.wait_for_model_timeout,
                )?)
            },
            outputs_dir: args.outputs_dir.clone(),
            records: records_enabled(args)?,
            name: sanitize(&name),
            notes,
            goodput,
            thresholds,
            server_metrics,
            ca_cert: args.ca_cert.clone(),
            insecure: args.insecure,
        })
    }

    /// `--fixed-schedule` is on.
    pub fn fixed_schedule(&self) -> bool {
        self.dataset.pool.fixed_schedule.is_some()
    }

    /// The request body opening of a turn with its own body fields (`max_tokens` and extra
    /// fields from the dataset), merged over the run's.
    pub(crate) fn turn_open(
        &self,
        max_tokens: Option<u32>,
        turn_extra: &Map<String, Value>,
    ) -> Bytes {
        let mut merged = self.extra_args.clone();
        for (k, v) in turn_extra.iter() {
            merged.insert(k.clone(), v.clone());
        }
        let max = max_tokens.unwrap_or(self.max_tokens);
        body_shape(
            self.endpoint,
            &self.model,
            self.stream,
            max,
            self.min_tokens,
            &merged,
        )
        .open
    }
}

/// Default conversations per point: `--number`'s default.
pub const DEFAULT_NUMBER: u64 = 100;

/// Default closed-loop concurrency: `--parallel`'s default.
pub const DEFAULT_PARALLEL: u32 = 10;

/// Pool size of a run limited only by `--duration`: the run cycles through it.
pub const DURATION_POOL: u64 = 1_000;

/// The load flags, validated.
#[derive(Debug)]
struct LoadFlags {
    config: LoadConfig,
    /// evalscope's fractional `--warmup-num`: resolved against `--number`.
    warmup_fraction: Option<f64>,
}

/// Longest timeout accepted, in seconds (30 days): beyond it a timeout is a mistake, and far
/// beyond it (`1e300`) not even a `Duration`.
pub const MAX_TIMEOUT_S: f64 = 30.0 * 86_400.0;

/// A timeout flag in seconds, range-checked: positive, finite, at most [`MAX_TIMEOUT_S`].
fn timeout(flag: &'static str, s: f64) -> Result<Duration, PlanError> {
    if !(s.is_finite() && s > 0.0) {
        return Err(flag_err(
            flag,
            format!("must be a positive number of seconds, got {s}"),
        ));
    }
    if s > MAX_TIMEOUT_S {
        return Err(flag_err(
            flag,
            format!("{s} s is longer than the {MAX_TIMEOUT_S} s (30 days) allowed"),
        ));
    }
    Ok(Duration::from_secs_f64(s))
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
        grace_s: args.grace,
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

/// `--header NAME: VALUE` lines (names lowercased).
fn parse_headers(lines: &[String]) -> Result<Vec<(HeaderName, HeaderValue)>, PlanError> {
    lines
        .iter()
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| flag_err("header", format!("`{line}` is not NAME: VALUE")))?;
            let (name, value) = (name.trim(), value.trim());
            let name = check_header_name(name)?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                flag_err(
                    "header",
                    format!("`{line}`: the value is not a valid header value"),
                )
            })?;
            Ok((name, value))
        })
        .collect()
}

/// A header name, lowercased.
fn check_header_name(name: &str) -> Result<HeaderName, PlanError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| flag_err("header", format!("`{name}` is not a valid header name")))
}

/// A header value `flag` gives.
fn header_value(flag: &'static str, v: &str) -> Result<HeaderValue, PlanError> {
    v.parse()
        .map_err(|_| flag_err(flag, format!("`{v}` is not a valid header value")))
}

/// `--fixed-schedule` and its offsets, when on. A start offset after the end offset is caught
/// here, before the dataset is read ([`crate::workload::fixed::fixed_schedule`] checks it again).
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
    /// The host to resolve (IPv6 without brackets).
    host: String,
    port: u16,
    host_header: HeaderValue,
    path: UrlPath,
    tls: bool,
}

/// The targets of `--url` (the built-in sim without one) and the endpoint every request goes
/// to: `--endpoint-type`, else the endpoint the `--endpoint` path or the URLs name, else chat.
/// A URL or `--endpoint` that names another endpoint than the one chosen is an error, as is a
/// URL path that disagrees with `--endpoint`. Host names are not resolved here.
pub(crate) fn parse_targets(
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
        let path = path.parse().map_err(|_| PlanError::Flag {
            flag: "url",
            reason: format!("`{path}` is not a valid path"),
        })?;
        targets.push(Target::Url {
            url: p.url,
            host: p.host,
            port: p.port,
            host_header: p.host_header,
            path,
            tls: p.tls,
        });
    }
    if targets.is_empty() {
        let path = endpoint.unwrap_or(kind.default_path());
        targets.push(Target::BuiltinSim {
            path: path.parse().map_err(|_| PlanError::Flag {
                flag: "url",
                reason: format!("`{path}` is not a valid path"),
            })?,
        });
    }
    Ok((targets, kind))
}

/// Parses one `--url`: http or https, `host:port` without a scheme means http. Without
/// `--endpoint` (`any_base`), its path must be empty, `…/v1`, or an endpoint path.
fn parse_url(url: &str, any_base: bool) -> Result<ParsedUrl, PlanError> {
    // Everything downstream (errors, console, summary.json) sees the URL with its credentials
    // masked; the raw text is parsed here and then dropped.
    let shown = redact_url(url);
    let err = |reason: &str| PlanError::Url {
        url: shown.clone(),
        reason: reason.to_string(),
    };
    // AIPerf's `localhost:8000`: no scheme means http.
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let uri: hyper::Uri = with_scheme.parse().map_err(|_| err("not a valid URL"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(err(
                "must be http://host[:port][/path], https://host[:port][/path] or host:port",
            ))
        }
    };
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
        None if tls => 443,
        None => 80,
    };
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
        url: shown,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
        host_header: header_value("url", &host_header)?,
        path,
        tls,
    })
}

/// `--ca-cert` and `--insecure` apply to https:// targets (and https `--server-metrics` URLs):
/// given without one, they are a mistake (most likely an `http://` meant as `https://`).
/// `--insecure` adds its warning to `notes`.
fn check_tls_flags(
    args: &BenchArgs,
    targets: &[Target],
    server_metrics: Option<&[String]>,
    notes: &mut Vec<String>,
) -> Result<(), PlanError> {
    let any_https = targets.iter().any(Target::tls)
        || server_metrics
            .unwrap_or_default()
            .iter()
            .any(|u| u.starts_with("https://"));
    for (given, flag) in [
        (args.ca_cert.is_some(), "ca-cert"),
        (args.insecure, "insecure"),
    ] {
        if given && !any_https {
            return Err(flag_err(
                flag,
                "applies to https:// targets, and no --url (or --server-metrics URL) is https://",
            ));
        }
    }
    if args.insecure {
        notes.push(
            "warning: --insecure: https certificates and host names are not verified; anyone on \
             the path could read and change the traffic"
                .to_string(),
        );
    }
    Ok(())
}

/// `--no-records` / `--export-level`: whether the per-request files are written.
fn records_enabled(args: &BenchArgs) -> Result<bool, PlanError> {
    use crate::cli::ExportLevel;
    match args.export_level {
        Some(ExportLevel::Raw) => Err(PlanError::Flag {
            flag: "export-level",
            reason: "`raw` (every request and response in full) is not implemented; `records` \
                     (the default) writes records.jsonl and profile_export.jsonl"
                .into(),
        }),
        Some(ExportLevel::Summary) => Ok(false),
        Some(ExportLevel::Records) => Ok(true),
        None => Ok(!args.no_records),
    }
}

/// `url` with any `user:password@` in its authority replaced by `***@`, so credentials given in
/// a `--url` are never printed or written.
pub(crate) fn redact_url(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    match url[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]),
        None => url.to_string(),
    }
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

/// `--goodput`'s names, in parley's, vLLM's and AIPerf's spellings, and the limit each sets.
const GOODPUT_NAMES: &[(&str, GoodputFigure)] = &[
    ("ttft", GoodputFigure::Ttft),
    ("time_to_first_token", GoodputFigure::Ttft),
    ("tpot", GoodputFigure::Tpot),
    // AIPerf's inter_token_latency is per request (latency − TTFT) / (OSL − 1): a TPOT.
    ("inter_token_latency", GoodputFigure::Tpot),
    ("itl", GoodputFigure::Itl),
    ("e2el", GoodputFigure::E2el),
    ("request_latency", GoodputFigure::E2el),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GoodputFigure {
    Ttft,
    Tpot,
    Itl,
    E2el,
}

/// `--goodput NAME:MS …` (one value per limit, or AIPerf's one value of space-separated
/// limits) into per-request limits; `None` when not given.
pub(crate) fn parse_goodput(values: &[String]) -> Result<Option<GoodputLimits>, PlanError> {
    let err = |reason: String| flag_err("goodput", reason);
    let mut limits = GoodputLimits::default();
    let mut any = false;
    for item in values
        .iter()
        .flat_map(|v| v.split(|c: char| c.is_whitespace() || c == ','))
        .filter(|s| !s.is_empty())
    {
        let (name, value) = item
            .split_once([':', '='])
            .ok_or_else(|| err(format!("`{item}` is not NAME:MS (e.g. ttft:200)")))?;
        let name = name.trim().to_ascii_lowercase();
        let figure = GOODPUT_NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                let known: Vec<&str> = GOODPUT_NAMES.iter().map(|(n, _)| *n).collect();
                err(format!(
                    "unknown metric `{name}` in `{item}` (known: {})",
                    known.join(", ")
                ))
            })?;
        let ms: f64 = value
            .trim()
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v > 0.0 && *v <= 3.6e6)
            .ok_or_else(|| {
                err(format!(
                    "`{item}`: the limit must be a positive number of milliseconds, at most an hour"
                ))
            })?;
        let ns = Some((ms * 1e6).round() as u64);
        let slot = match figure {
            GoodputFigure::Ttft => &mut limits.ttft_ns,
            GoodputFigure::Tpot => &mut limits.tpot_ns,
            GoodputFigure::Itl => &mut limits.itl_ns,
            GoodputFigure::E2el => &mut limits.e2el_ns,
        };
        if slot.is_some() {
            return Err(err(format!("`{item}`: {figure:?} is limited twice")));
        }
        *slot = ns;
        any = true;
    }
    if !values.is_empty() && !any {
        return Err(err(
            "no limit given (e.g. --goodput ttft:200 e2el:5000)".into()
        ));
    }
    Ok(any.then_some(limits))
}

/// A `--slo` threshold: one figure of a point's summary and the bound it must keep.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Threshold {
    /// Its canonical name (`ttft_p99_ms`, `error_rate`, …), as reports print it.
    pub name: String,
    #[serde(skip)]
    pub figure: Figure,
    /// The bound: a maximum for latencies and `error_rate`, a minimum for throughputs and
    /// `goodput_share`.
    pub limit: f64,
}

/// A summary figure a threshold can bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Figure {
    /// A statistic of a per-request latency distribution, in ms.
    Latency(LatencyMetric, Stat),
    /// failed / (succeeded + failed).
    ErrorRate,
    /// good / (succeeded + failed) (needs `--goodput`).
    GoodputShare,
    /// Successful requests per second.
    RequestsPerS,
    /// Output tokens per second.
    OutputTokensPerS,
}

impl Figure {
    /// `true`: the figure must stay at or below the limit; `false`: at or above it.
    pub fn is_maximum(self) -> bool {
        matches!(self, Figure::Latency(..) | Figure::ErrorRate)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatencyMetric {
    Ttft,
    Tpot,
    Itl,
    Latency,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    Mean,
    P50,
    P90,
    P95,
    P99,
    Max,
}

/// Every `--slo` name pattern, for error messages.
const SLO_NAMES: &str = "{ttft,tpot,itl,latency,e2el}_{mean,p50,p90,p95,p99,max}_ms, error_rate, \
                         goodput_share, requests_per_s, output_tokens_per_s";

fn parse_figure(name: &str) -> Option<(Figure, String)> {
    let simple = match name {
        "error_rate" => Some(Figure::ErrorRate),
        "goodput_share" => Some(Figure::GoodputShare),
        "requests_per_s" => Some(Figure::RequestsPerS),
        "output_tokens_per_s" => Some(Figure::OutputTokensPerS),
        _ => None,
    };
    if let Some(f) = simple {
        return Some((f, name.to_string()));
    }
    let rest = name.strip_suffix("_ms")?;
    let (metric, stat) = rest.rsplit_once('_')?;
    let metric = match metric {
        "ttft" => LatencyMetric::Ttft,
        "tpot" => LatencyMetric::Tpot,
        "itl" => LatencyMetric::Itl,
        "latency" | "e2el" => LatencyMetric::Latency,
        _ => return None,
    };
    let stat = match stat {
        "mean" | "avg" => Stat::Mean,
        "p50" => Stat::P50,
        "p90" => Stat::P90,
        "p95" => Stat::P95,
        "p99" => Stat::P99,
        "max" => Stat::Max,
        _ => return None,
    };
    let canonical = format!(
        "{}_{}_ms",
        match metric {
            LatencyMetric::Ttft => "ttft",
            LatencyMetric::Tpot => "tpot",
            LatencyMetric::Itl => "itl",
            LatencyMetric::Latency => "latency",
        },
        match stat {
            Stat::Mean => "mean",
            Stat::P50 => "p50",
            Stat::P90 => "p90",
            Stat::P95 => "p95",
            Stat::P99 => "p99",
            Stat::Max => "max",
        }
    );
    Some((Figure::Latency(metric, stat), canonical))
}

/// `--slo NAME=LIMIT,…` (repeatable) and `--max-error-rate R` into thresholds.
pub(crate) fn parse_thresholds(
    values: &[String],
    max_error_rate: Option<f64>,
    goodput: bool,
) -> Result<Vec<Threshold>, PlanError> {
    let err = |reason: String| flag_err("slo", reason);
    let mut out: Vec<Threshold> = Vec::new();
    let mut add = |t: Threshold, flag: &'static str| {
        if out.iter().any(|o| o.figure == t.figure) {
            return Err(flag_err(flag, format!("{} is given twice", t.name)));
        }
        out.push(t);
        Ok(())
    };
    for item in values
        .iter()
        .flat_map(|v| v.split(|c: char| c.is_whitespace() || c == ','))
        .filter(|s| !s.is_empty())
    {
        let (name, value) = item
            .split_once('=')
            .ok_or_else(|| err(format!("`{item}` is not NAME=LIMIT (e.g. ttft_p99_ms=500)")))?;
        let name = name.trim().to_ascii_lowercase();
        let (figure, name) = parse_figure(&name).ok_or_else(|| {
            err(format!(
                "unknown figure `{name}` in `{item}` (known: {SLO_NAMES})"
            ))
        })?;
        let limit: f64 = value
            .trim()
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| err(format!("`{item}`: the limit must be a non-negative number")))?;
        if matches!(figure, Figure::ErrorRate | Figure::GoodputShare) && limit > 1.0 {
            return Err(err(format!(
                "`{item}`: {name} is a fraction in [0, 1] (0.01 = 1 %)"
            )));
        }
        if figure == Figure::GoodputShare && !goodput {
            return Err(err(format!(
                "`{item}`: goodput_share needs --goodput (the per-request limits)"
            )));
        }
        add(
            Threshold {
                name,
                figure,
                limit,
            },
            "slo",
        )?;
    }
    if let Some(rate) = max_error_rate {
        if !(rate.is_finite() && (0.0..=1.0).contains(&rate)) {
            return Err(flag_err(
                "max-error-rate",
                format!("{rate} is not a fraction in [0, 1] (0.01 = 1 %)"),
            ));
        }
        add(
            Threshold {
                name: "error_rate".into(),
                figure: Figure::ErrorRate,
                limit: rate,
            },
            "max-error-rate",
        )?;
    }
    Ok(out)
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

    /// Every object key anywhere in `v`.
    fn keys(v: &Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    out.insert(k.clone());
                    keys(v, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
            _ => {}
        }
    }

    /// The run config records every `parley bench` flag: a flag added to the CLI but not to
    /// the plan (or skipped in its `Serialize`) fails here.
    #[test]
    fn config_view_records_every_flag() {
        let plan = Plan::from_args(&args(&[
            "--fixed-schedule",
            "--dataset",
            "multi_turn",
            "--dataset-path",
            "conversations.jsonl",
        ]))
        .unwrap();
        let mut present = std::collections::BTreeSet::new();
        keys(&plan.config_view(), &mut present);
        // Flags recorded under another key: their effect's name.
        let renamed: &[(&str, &str)] = &[
            ("endpoint_type", "endpoint"),
            ("header", "headers"),
            ("request_rate", "rate_per_s"),
            ("no_preconnect", "preconnect"),
            ("no_stream", "stream"),
            ("dataset_offset", "offset"),
            ("fixed_schedule_auto_offset", "auto_offset"),
            ("fixed_schedule_start_offset", "start_offset_ms"),
            ("fixed_schedule_end_offset", "end_offset_ms"),
            ("slo", "thresholds"),
            ("max_error_rate", "thresholds"),
            ("tokenize_prompt", "notes"),
            ("no_records", "records"),
            ("export_level", "records"),
        ];
        // Flags that change nothing a run records: console and accepted-for-compatibility.
        let not_run_settings = [
            "help",       // prints help
            "quiet",      // console only
            "api",        // only `openai` is accepted, which the endpoint records
            "multi_turn", // accepted for evalscope; every run is multi-turn
        ];
        let cmd = crate::cli::command();
        let bench = cmd.find_subcommand("bench").unwrap();
        let mut missing = Vec::new();
        for arg in bench.get_arguments() {
            let id = arg.get_id().as_str();
            if not_run_settings.contains(&id) {
                continue;
            }
            let want = renamed
                .iter()
                .find(|(f, _)| *f == id)
                .map_or(id, |(_, k)| *k);
            // A unit suffix is allowed: `--duration` is `duration_s`.
            let found = present.contains(want)
                || present.iter().any(|k| {
                    k.strip_prefix(want)
                        .is_some_and(|rest| rest.starts_with('_') && ["_s", "_ms"].contains(&rest))
                });
            if !found {
                missing.push(id.to_string());
            }
        }
        assert!(
            missing.is_empty(),
            "flags not in the run config: {missing:?}"
        );
    }

    #[test]
    fn config_view_has_workload_values_and_masks_secrets() {
        let plan = Plan::from_args(&args(&[
            "--isl",
            "300",
            "--isl-stddev",
            "30",
            "--osl",
            "40",
            "--osl-stddev",
            "4",
            "--conversation-turn-mean",
            "3",
            "--conversation-turn-stddev",
            "1",
            "--conversation-turn-delay-mean",
            "250",
            "--prefix-length",
            "64",
            "--prefix-count",
            "2",
            "--api-key",
            "sk-secret-one",
            "-H",
            "X-Api-Key: sk-secret-two",
            "-H",
            "X-Trace: visible",
            "--url",
            "http://user:sk-secret-three@127.0.0.1:9/v1",
            "--model",
            "m",
            "--request-timeout",
            "30",
        ]))
        .unwrap();
        let v = plan.config_view();
        let p = &v["dataset"]["params"];
        assert_eq!(v["dataset"]["name"], "synthetic");
        assert_eq!(p["synthetic_input_tokens_mean"], 300.0);
        assert_eq!(p["synthetic_input_tokens_stddev"], 30.0);
        assert_eq!(p["output_tokens_mean"], 40.0);
        assert_eq!(p["output_tokens_stddev"], 4.0);
        assert_eq!(p["conversation_turn_mean"], 3.0);
        assert_eq!(p["conversation_turn_stddev"], 1.0);
        assert_eq!(p["conversation_turn_delay_mean_ms"], 250.0);
        assert_eq!(p["prefix_length"], 64);
        assert_eq!(p["prefix_count"], 2);
        assert_eq!(v["request_timeout_s"], 30.0);
        assert_eq!(v["api_key"], MASK);
        assert_eq!(v["targets"][0]["url"], "http://***@127.0.0.1:9/v1");
        assert_eq!(v["targets"][0]["path"], "/v1/chat/completions");
        let text = v.to_string();
        assert!(!text.contains("sk-secret"), "{text}");
        assert!(text.contains("x-trace: visible"), "{text}");
        assert!(text.contains("x-api-key: ***"), "{text}");
    }

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(
            WallTime { unix_s: 0.0 }.rfc3339(),
            "1970-01-01T00:00:00.000Z"
        );
        // 2000-02-29 (a leap day in a century leap year) 12:34:56.789 UTC.
        assert_eq!(
            WallTime {
                unix_s: 951_827_696.789_5
            }
            .rfc3339(),
            "2000-02-29T12:34:56.789Z"
        );
        assert_eq!(
            WallTime {
                unix_s: 1_735_689_599.0
            }
            .rfc3339(),
            "2024-12-31T23:59:59.000Z"
        );
    }

    fn plan_err(flags: &[&str]) -> String {
        match Plan::from_args(&args(flags)) {
            Ok(_) => panic!("expected an error for {flags:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn goodput_takes_parley_vllm_and_aiperf_spellings() {
        let ms = |v: u64| Some(v * 1_000_000);
        let parley = Plan::from_args(&args(&["--goodput", "ttft:200", "itl:50", "e2el:5000"]))
            .unwrap()
            .goodput
            .unwrap();
        assert_eq!(
            (
                parley.ttft_ns,
                parley.itl_ns,
                parley.e2el_ns,
                parley.tpot_ns
            ),
            (ms(200), ms(50), ms(5000), None)
        );
        let vllm = Plan::from_args(&args(&["--goodput", "ttft:200", "tpot:50", "e2el:5000"]))
            .unwrap()
            .goodput
            .unwrap();
        assert_eq!((vllm.tpot_ns, vllm.itl_ns), (ms(50), None));
        let aiperf = Plan::from_args(&args(&[
            "--goodput",
            "time_to_first_token:200 inter_token_latency:50 request_latency:5000",
        ]))
        .unwrap()
        .goodput
        .unwrap();
        assert_eq!(aiperf, vllm);
        let frac = parse_goodput(&["ttft:0.5".into()]).unwrap().unwrap();
        assert_eq!(frac.ttft_ns, Some(500_000));
        assert_eq!(Plan::from_args(&args(&[])).unwrap().goodput, None);
    }

    #[test]
    fn goodput_errors_name_the_problem() {
        let e = plan_err(&["--goodput", "ttfb:200"]);
        assert!(
            e.starts_with("--goodput: unknown metric `ttfb`") && e.contains("time_to_first_token"),
            "{e}"
        );
        for (bad, says) in [
            ("ttft", "is not NAME:MS"),
            ("ttft:-1", "positive number of milliseconds"),
            ("ttft:abc", "positive number of milliseconds"),
            ("ttft:inf", "positive number of milliseconds"),
            ("ttft:200 time_to_first_token:100", "limited twice"),
            ("", "no limit given"),
        ] {
            let e = plan_err(&["--goodput", bad]);
            assert!(
                e.starts_with("--goodput: ") && e.contains(says),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn slo_thresholds_parse_and_validate() {
        let p = Plan::from_args(&args(&[
            "--slo",
            "ttft_p99_ms=500,itl_p99_ms=50",
            "--slo",
            "E2EL_mean_ms=2000,tpot_p95_ms=20",
            "--max-error-rate",
            "0.01",
            "--goodput",
            "ttft:300",
            "--slo",
            "goodput_share=0.9,output_tokens_per_s=100",
        ]))
        .unwrap();
        let got: Vec<(&str, f64, bool)> = p
            .thresholds
            .iter()
            .map(|t| (t.name.as_str(), t.limit, t.figure.is_maximum()))
            .collect();
        assert_eq!(
            got,
            [
                ("ttft_p99_ms", 500.0, true),
                ("itl_p99_ms", 50.0, true),
                ("latency_mean_ms", 2000.0, true),
                ("tpot_p95_ms", 20.0, true),
                ("goodput_share", 0.9, false),
                ("output_tokens_per_s", 100.0, false),
                ("error_rate", 0.01, true),
            ]
        );
        assert_eq!(
            p.thresholds[0].figure,
            Figure::Latency(LatencyMetric::Ttft, Stat::P99)
        );
        for (flags, says) in [
            (
                &["--slo", "ttft_p97_ms=5"][..],
                "unknown figure `ttft_p97_ms`",
            ),
            (&["--slo", "ttfb_p99_ms=5"], "unknown figure"),
            (&["--slo", "ttft_p99_ms"], "is not NAME=LIMIT"),
            (&["--slo", "ttft_p99_ms=-3"], "non-negative number"),
            (&["--slo", "error_rate=5"], "fraction in [0, 1]"),
            (&["--slo", "goodput_share=0.5"], "needs --goodput"),
            (&["--slo", "ttft_p99_ms=1,ttft_p99_ms=2"], "given twice"),
        ] {
            let e = plan_err(flags);
            assert!(
                e.starts_with("--slo: ") && e.contains(says),
                "{flags:?}: {e}"
            );
        }
        let e = plan_err(&["--slo", "error_rate=0.1", "--max-error-rate", "0.2"]);
        assert!(
            e.starts_with("--max-error-rate: error_rate is given twice"),
            "{e}"
        );
        let e = plan_err(&["--max-error-rate", "1.5"]);
        assert!(
            e.starts_with("--max-error-rate: 1.5 is not a fraction"),
            "{e}"
        );
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

    /// Issue 9 §1: the plan reads nothing. An unresolvable host, a missing dataset file and
    /// tokenizer, more cores than the machine has: all plan; the resources find them out.
    #[test]
    fn a_plan_does_no_io() {
        let plan = Plan::from_args(&args(&[
            "--url",
            "http://no-such-host.invalid:8000/v1",
            "--model",
            "org/My Model",
            "--api-key",
            "k",
            "--header",
            "X-Tenant: a",
            "--dataset",
            "mooncake_trace",
            "--dataset-path",
            "/nonexistent/trace.jsonl",
            "--tokenizer-path",
            "/nonexistent/tokenizer.json",
            "--cores",
            "100000",
            "--fixed-schedule",
            "--outputs-dir",
            "/nonexistent/out",
        ]))
        .unwrap();
        let [Target::Url {
            host,
            port,
            host_header,
            path,
            ..
        }] = plan.targets.as_slice()
        else {
            panic!("{:?}", plan.targets)
        };
        assert_eq!(
            (host.as_str(), *port, host_header.to_str().unwrap()),
            ("no-such-host.invalid", 8000, "no-such-host.invalid:8000")
        );
        assert_eq!(path, "/v1/chat/completions");
        assert_eq!(plan.endpoint, EndpointKind::Chat);
        assert_eq!(plan.model, "org/My Model");
        assert_eq!(plan.name, "My_Model");
        assert_eq!(plan.authorization.as_ref().unwrap(), "Bearer k");
        assert_eq!(plan.headers[0].0, "x-tenant");
        assert_eq!(plan.session_header, crate::client::SESSION_HEADER);
        assert_eq!(plan.dataset.name, "mooncake_trace");
        assert_eq!(
            plan.dataset.selection.limit,
            usize::MAX,
            "fixed: the whole file"
        );
        assert!(plan.fixed_schedule());
        assert_eq!(
            plan.points,
            [PointSpec {
                parallel: None,
                rate_per_s: None,
                number: Some(DEFAULT_NUMBER)
            }],
            "a fixed schedule without --parallel has no cap"
        );
        assert_eq!(plan.cores, Some(100_000));
        assert_eq!(plan.outputs_dir, PathBuf::from("/nonexistent/out"));
    }

    #[test]
    fn records_are_on_unless_turned_off() {
        let on = |flags: &[&str]| Plan::from_args(&args(flags)).unwrap().records;
        assert!(on(&[]));
        assert!(on(&["--export-level", "records"]));
        assert!(!on(&["--no-records"]));
        assert!(!on(&["--export-level", "summary"]));
        let err = plan_err(&["--export-level", "raw"]);
        assert!(
            err.contains("--export-level") && err.contains("not implemented"),
            "{err}"
        );
        let both = [
            "parley",
            "bench",
            "--no-records",
            "--export-level",
            "records",
        ];
        assert!(crate::cli::try_parse_from(both).is_err());
    }

    #[test]
    fn plan_points_load_and_pool_from_flags() {
        let plan = Plan::from_args(&args(&[
            "--parallel",
            "2",
            "4",
            "--number",
            "10",
            "20",
            "--warmup-num",
            "0.5",
        ]))
        .unwrap();
        let pairs: Vec<_> = plan.points.iter().map(|p| (p.parallel, p.number)).collect();
        assert_eq!(pairs, [(Some(2), Some(10)), (Some(4), Some(20))]);
        assert_eq!(plan.load.warmup_conversations, Some(10), "half the largest");
        assert_eq!(plan.dataset.name, "random_multi_turn");
        assert_eq!(plan.dataset.selection.limit, 31, "20 measured + 11 warmup");
        assert!(matches!(plan.targets[..], [Target::BuiltinSim { .. }]));
        assert_eq!(plan.model, SIM_MODEL);

        let plan = Plan::from_args(&args(&["--request-count", "7"])).unwrap();
        assert_eq!(plan.points[0].number, None, "known with the conversations");
        assert_eq!(plan.load.request_count, Some(7));
        assert_eq!(plan.dataset.selection.limit, 7);

        let e = plan_err(&["--api-key", "a\nb"]);
        assert!(e.starts_with("--api-key: "), "{e}");
    }

    /// The paths and the endpoint `--url`s (with `--endpoint-type` / `--endpoint`) resolve to.
    fn resolve(
        urls: &[&str],
        kind: Option<EndpointKind>,
        endpoint: Option<&str>,
    ) -> Result<(Vec<String>, EndpointKind), String> {
        let urls: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
        let (targets, kind) = parse_targets(&urls, kind, endpoint).map_err(|e| e.to_string())?;
        let paths = targets.iter().map(|t| t.path().to_string()).collect();
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
        assert_eq!(path("https://127.0.0.1/v1"), "/v1/chat/completions");
        assert_eq!(path("127.0.0.1:8000"), "/v1/chat/completions");
        assert!(resolve(&["ftp://127.0.0.1:8000"], None, None).is_err());
        assert!(resolve(&["http://127.0.0.1:99999"], None, None).is_err());
        let foo = resolve(&["http://127.0.0.1:8000/foo"], None, None).unwrap_err();
        assert!(foo.contains("--endpoint"), "{foo}");
    }

    #[test]
    fn ports_are_range_checked() {
        for url in [
            "http://h.example:99999",
            "h.example:65536",
            "http://h.example:0",
        ] {
            let e = resolve(&[url], None, None).unwrap_err();
            assert!(e.contains("is not 1-65535"), "{url}: {e}");
        }
        let (targets, _) = parse_targets(&["http://h.example:65535".into()], None, None).unwrap();
        let Target::Url { port, .. } = &targets[0] else {
            unreachable!()
        };
        assert_eq!(*port, 65535);
    }

    #[test]
    fn https_targets_default_to_443_and_keep_the_host_to_verify() {
        let urls = [
            "https://api.example.com/v1".to_string(),
            "https://[::1]:8443".to_string(),
            "http://h.example".to_string(),
        ];
        let (targets, _) = parse_targets(&urls, None, None).unwrap();
        let facts: Vec<_> = targets
            .iter()
            .map(|t| match t {
                Target::Url {
                    host,
                    port,
                    host_header,
                    tls,
                    ..
                } => (host.as_str(), *port, host_header.to_str().unwrap(), *tls),
                Target::BuiltinSim { .. } => unreachable!(),
            })
            .collect();
        assert_eq!(
            facts,
            [
                ("api.example.com", 443, "api.example.com", true),
                ("::1", 8443, "[::1]:8443", true),
                ("h.example", 80, "h.example", false),
            ]
        );
        let e = resolve(&["ftp://h"], None, None).unwrap_err();
        assert!(e.contains("https://host"), "{e}");
    }

    #[test]
    fn tls_flags_need_an_https_target_and_insecure_warns() {
        let e = plan_err(&["--url", "http://h:1", "-m", "m", "--insecure"]);
        assert!(
            e.starts_with("--insecure: ") && e.contains("https://"),
            "{e}"
        );
        let e = plan_err(&["--ca-cert", "ca.pem"]);
        assert!(e.starts_with("--ca-cert: "), "{e}");
        // Together: clap refuses (they contradict each other).
        let both = ["parley", "bench", "--insecure", "--ca-cert", "ca.pem"];
        assert!(crate::cli::try_parse_from(both).is_err());
        let p = Plan::from_args(&args(&["--url", "https://h:1", "-m", "m", "--insecure"])).unwrap();
        assert!(p.insecure && p.notes.iter().any(|n| n.starts_with("warning: --insecure")));
        let p = Plan::from_args(&args(&[
            "--url",
            "https://h:1",
            "-m",
            "m",
            "--ca-cert",
            "ca.pem",
        ]))
        .unwrap();
        assert_eq!(p.ca_cert.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        let v = p.config_view();
        assert_eq!(
            (&v["ca_cert"], &v["insecure"]),
            (&serde_json::json!("ca.pem"), &serde_json::json!(false))
        );
        // An https --server-metrics URL is reason enough.
        let p = Plan::from_args(&args(&[
            "--url",
            "http://h:1",
            "-m",
            "m",
            "--server-metrics",
            "https://h:2/metrics",
            "--insecure",
        ]))
        .unwrap();
        assert!(p.insecure);
    }

    #[test]
    fn url_credentials_are_masked_everywhere() {
        assert_eq!(
            redact_url("http://user:s3cret@h:8000/v1?x=a@b"),
            "http://***@h:8000/v1?x=a@b"
        );
        assert_eq!(redact_url("tok:s3cret@h:8000"), "***@h:8000");
        assert_eq!(redact_url("http://h:8000/v1"), "http://h:8000/v1");
        let (targets, _) =
            parse_targets(&["http://user:s3cret@127.0.0.1:8000".into()], None, None).unwrap();
        assert_eq!(targets[0].label(), "http://***@127.0.0.1:8000");
        assert!(!format!("{:?}", targets[0]).contains("s3cret"));
        let e = resolve(&["http://user:s3cret@127.0.0.1:99999"], None, None).unwrap_err();
        assert!(e.starts_with("--url http://***@127.0.0.1:99999: "), "{e}");
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
    fn headers_parse_and_are_checked() {
        let h = parse_headers(&["X-Tenant: a b".into(), "x-k:v".into()]).unwrap();
        let h: Vec<(&str, &str)> = h
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(h, [("x-tenant", "a b"), ("x-k", "v")]);
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
