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
use crate::workload::{self, ContextMode, Conversation, DatasetError, DatasetParams, Selection};

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
        let dataset = dataset_name(args)?;
        let params = dataset_params(args)?;
        let cpus = pick_cpus(args.cores)?;
        let stream = args.streaming();
        let body = body_shape(&model, stream, args.max_tokens, args.min_tokens, &extra);

        let tokenizer = Arc::new(Tokenizer::load(args.tokenizer_path.as_deref())?);
        let (shard_index, shard_count) = args.shard.unwrap_or((0, 1));
        let selection = Selection {
            offset: args.dataset_offset,
            shard_index,
            shard_count,
            // Only as many conversations as will be claimed: the pool cycles when smaller.
            limit: args.number.min(MAX_POOL) as usize,
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
            number: args.number,
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
        };
        Ok(BenchPlan {
            target,
            model,
            authorization: args.api_key.as_ref().map(|k| format!("Bearer {k}")),
            stream,
            body,
            conversations: Arc::new(conversations),
            number: args.number,
            concurrency: args.parallel as usize,
            cpus,
            connect_timeout: Duration::from_secs_f64(args.connect_timeout),
            read_timeout: Duration::from_secs_f64(args.read_timeout),
            run_dir,
            config,
            tokenizer,
        })
    }
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

/// AIPerf synthetic flags that select `--dataset synthetic` when no dataset is named.
fn aiperf_synthetic_flags(args: &BenchArgs) -> Vec<&'static str> {
    let mut given = Vec::new();
    let flags: [(&'static str, bool); 9] = [
        (
            "conversation-turn-mean",
            args.conversation_turn_mean.is_some(),
        ),
        (
            "conversation-turn-stddev",
            args.conversation_turn_stddev.is_some(),
        ),
        (
            "synthetic-input-tokens-mean",
            args.synthetic_input_tokens_mean.is_some(),
        ),
        (
            "synthetic-input-tokens-stddev",
            args.synthetic_input_tokens_stddev.is_some(),
        ),
        ("output-tokens-mean", args.output_tokens_mean.is_some()),
        ("output-tokens-stddev", args.output_tokens_stddev.is_some()),
        (
            "conversation-turn-delay-mean",
            args.conversation_turn_delay_mean.is_some(),
        ),
        (
            "conversation-turn-delay-stddev",
            args.conversation_turn_delay_stddev.is_some(),
        ),
        (
            "conversation-turn-delay-ratio",
            args.conversation_turn_delay_ratio.is_some(),
        ),
    ];
    for (name, set) in flags {
        if set {
            given.push(name);
        }
    }
    given
}

/// The dataset to run: `--dataset`, else `synthetic` when AIPerf synthetic flags are given,
/// else `random_multi_turn`. AIPerf synthetic flags with another dataset are an error rather
/// than silently ignored.
fn dataset_name(args: &BenchArgs) -> Result<String, PlanError> {
    let aiperf = aiperf_synthetic_flags(args);
    match &args.dataset {
        None if !aiperf.is_empty() => Ok("synthetic".to_string()),
        None => Ok("random_multi_turn".to_string()),
        Some(d) if d != "synthetic" && !aiperf.is_empty() => Err(PlanError::Flag {
            flag: aiperf[0],
            reason: format!("applies to --dataset synthetic, not --dataset {d}"),
        }),
        Some(d) => Ok(d.clone()),
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
