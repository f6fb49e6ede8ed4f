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
use crate::workload::random_multi_turn::{RandomMultiTurn, SynthesisError};
use crate::workload::Conversation;

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
    #[error("--dataset {0}: unknown dataset (known: random_multi_turn)")]
    UnknownDataset(String),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("synthesizing random_multi_turn: {0}")]
    Synthesis(#[from] SynthesisError),
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
    pub parallel: u32,
    pub number: u64,
    pub cores: usize,
    pub stream: bool,
    pub tokenizer: String,
    pub seed: u64,
    pub min_turns: u32,
    pub max_turns: u32,
    pub min_prompt_length: u32,
    pub max_prompt_length: u32,
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
        if args.min_turns > args.max_turns {
            return Err(PlanError::Flag {
                flag: "min-turns",
                reason: format!("{} is above --max-turns {}", args.min_turns, args.max_turns),
            });
        }
        if args.min_prompt_length > args.max_prompt_length {
            return Err(PlanError::Flag {
                flag: "min-prompt-length",
                reason: format!(
                    "{} is above --max-prompt-length {}",
                    args.min_prompt_length, args.max_prompt_length
                ),
            });
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
        if args.dataset != "random_multi_turn" {
            return Err(PlanError::UnknownDataset(args.dataset.clone()));
        }
        if args.dataset_path.is_some() {
            return Err(PlanError::Flag {
                flag: "dataset-path",
                reason: "random_multi_turn is synthetic and reads no file".into(),
            });
        }
        let cpus = pick_cpus(args.cores)?;
        let stream = args.streaming();
        let body = body_shape(&model, stream, args.max_tokens, args.min_tokens, &extra);

        let tokenizer = Arc::new(Tokenizer::load(args.tokenizer_path.as_deref())?);
        // Only as many conversations as will be claimed: the pool cycles when smaller.
        let conversations = RandomMultiTurn {
            conversations: args.number.min(100_000) as usize,
            min_turns: args.min_turns,
            max_turns: args.max_turns,
            min_prompt_tokens: args.min_prompt_length,
            max_prompt_tokens: args.max_prompt_length,
            seed: args.seed,
        }
        .build(&tokenizer)?;

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
            dataset: args.dataset.clone(),
            parallel: args.parallel,
            number: args.number,
            cores: cpus.len(),
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
