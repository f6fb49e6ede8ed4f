//! Stage 2 of a bench run: everything a [`Plan`] needs from the outside, built in one place
//! before any executor starts — the tokenizer; the conversations (read or synthesised, then
//! converted for `--context-mode`, the fixed schedule and the endpoint, with per-turn body
//! openings), their sampler and the points' final conversation counts; the targets' socket
//! addresses and request headers; the CPUs to pin to; the run directory, stamped with the time
//! now; and, without `--url`, the built-in sim.
//!
//! All tokenizer and synthesis work happens here, so the hot path never tokenizes. Every error
//! names the flag (or file) at fault.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::client::Endpoint;
use crate::engine::{convert_to_completions, EndpointKind};
use crate::plan::{Plan, Point, PointSpec, RunConfig, Target};
use crate::sim;
use crate::tokenizer::{Tokenizer, TokenizerError};
use crate::workload::fixed::{self, FixedError, FixedOptions, FixedSchedule};
use crate::workload::sampling::Sampler;
use crate::workload::{self, ContextMode, Conversation, DatasetError};

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("--url {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("--{flag}: {reason}")]
    Flag { flag: &'static str, reason: String },
    #[error("{0}")]
    Endpoint(String),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("--dataset {dataset}: {source}")]
    Fixed { dataset: String, source: FixedError },
    #[error("starting the built-in sim: {0}")]
    Sim(#[from] sim::SimError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("--outputs-dir: {}: {reason}", path.display())]
    Outputs { path: PathBuf, reason: String },
    #[error(
        "--parallel {parallel} needs about {needed} file descriptors ({connections} connections \
         + {open} open now + {margin} for the executors), but this process may open only \
         {limit} (its hard limit, RLIMIT_NOFILE). Raise it and run again: `ulimit -n {needed}` \
         (as root, or after raising nofile in /etc/security/limits.conf), or lower --parallel. \
         `parley doctor --parallel {parallel}` checks the host."
    )]
    FdLimit {
        parallel: u64,
        connections: u64,
        open: u64,
        margin: u64,
        needed: u64,
        limit: u64,
    },
}

/// What a run needs beyond its plan. Call [`Resources::shutdown`] when done (it stops the
/// built-in sim).
pub struct Resources {
    pub tokenizer: Arc<Tokenizer>,
    /// The run's pool; claims cycle through it.
    pub conversations: Arc<Vec<Conversation>>,
    /// Which pool entry claim k runs (`--dataset-sampling-strategy`); each core clones it.
    pub sampling: Sampler,
    /// `--fixed-schedule`: when each conversation's first turn is sent. Then every entry of
    /// `conversations` is scheduled exactly once and `number` is the schedule's length.
    pub fixed: Option<FixedSchedule>,
    /// The plan's points with their conversation counts final (`--request-count`,
    /// `--fixed-schedule`) and their labels.
    pub points: Vec<Point>,
    /// CPU ids to pin one executor each to.
    pub cpus: Vec<usize>,
    /// One per target, addresses resolved (the built-in sim's when it runs).
    pub endpoints: Vec<Endpoint>,
    /// `<outputs_dir>/<timestamp>/<name>`.
    pub run_dir: PathBuf,
    /// The summary's config echo (its `point` is the first point's).
    pub config: RunConfig,
    /// `--server-metrics`: the `/metrics` endpoints to scrape around each point (empty: off).
    pub metrics_sources: Vec<crate::server_metrics::Source>,
    sim: Option<sim::SimHandle>,
}

/// The conversations as built, with what was left out.
struct Pool {
    conversations: Vec<Conversation>,
    fixed: Option<FixedSchedule>,
    skipped_invalid: u64,
    filtered: u64,
}

impl Resources {
    /// Does the I/O `plan` asks for. The built-in sim, when there is no `--url`, starts last,
    /// so an error before it leaves nothing running.
    pub fn build(plan: &Plan) -> Result<Resources, ResourceError> {
        let addrs = plan
            .targets
            .iter()
            .map(|t| match t {
                Target::Url {
                    url, host, port, ..
                } => resolve(url, host, *port).map(Some),
                Target::BuiltinSim { .. } => Ok(None),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cpus = pick_cpus(plan.cores, plan.cpus.as_deref())?;
        check_fd_limit(plan, cpus.len())?;
        // Before anything slow: a bad --ca-cert is found now, and before any traffic.
        let tls = tls_client(plan)?;
        // Before the (possibly long) dataset build: an unusable --outputs-dir is found now.
        check_outputs_dir(&plan.outputs_dir)?;
        let tokenizer = Arc::new(Tokenizer::load(plan.dataset.tokenizer_path.as_deref())?);
        let pool = build_pool(plan, &tokenizer)?;
        let points = resolve_points(plan, &pool);
        // Created (exclusively) before any traffic, so the report always has a place to go.
        let run_dir = create_run_dir(&plan.outputs_dir.join(local_timestamp()), &plan.name)?;
        let urls: Vec<String> = plan.targets.iter().map(|t| t.label().to_string()).collect();
        let d = &plan.dataset;
        let started = crate::plan::WallTime::now();
        let config = RunConfig {
            command_line: crate::report::cli_command(),
            start_time: started.rfc3339(),
            start_unix_s: started.unix_s,
            flags: plan.config_view(),
            url: urls[0].clone(),
            urls,
            endpoint: plan.endpoint,
            model: plan.model.clone(),
            dataset: d.name.clone(),
            dataset_path: d.path.clone(),
            dataset_offset: d.selection.offset,
            shard: d.shard.map(|(i, n)| format!("{i}/{n}")),
            context_mode: d.context_mode.map(ContextMode::as_str),
            skipped_invalid: pool.skipped_invalid,
            filtered: pool.filtered,
            pool: pool.conversations.len(),
            point: points[0].clone(),
            load: plan.load.clone(),
            cores: cpus.len(),
            spin: plan.spin,
            stream: plan.stream,
            tokenizer: tokenizer.name().to_string(),
            seed: plan.seed,
            min_turns: d.params.min_turns,
            max_turns: d.params.max_turns,
            min_prompt_length: d.params.min_prompt_length,
            max_prompt_length: d.params.max_prompt_length,
            max_tokens: plan.max_tokens,
            extra_args: Value::Object(plan.extra_args.clone()),
            pool_config: d.pool.clone(),
        };
        let sampling = Sampler::new(
            d.pool.dataset_sampling_strategy,
            plan.seed,
            pool.conversations.len(),
        );

        let mut sim_handle = None;
        let mut endpoints = Vec::with_capacity(plan.targets.len());
        for (target, addr) in plan.targets.iter().zip(addrs) {
            let tls_target = match (target, &tls) {
                (Target::Url { host, url, .. }, Some(client)) if target.tls() => Some(
                    crate::tls::TlsTarget::new(client.clone(), host).map_err(|reason| {
                        ResourceError::Url {
                            url: url.clone(),
                            reason,
                        }
                    })?,
                ),
                _ => None,
            };
            let (addr, host) = match (target, addr) {
                (Target::Url { host_header, .. }, Some(addr)) => (addr, host_header.clone()),
                _ => {
                    let sim_args = sim::SimArgs {
                        port: 0,
                        ..Default::default()
                    };
                    let handle = sim::spawn(&sim_args, tokenizer.clone())?;
                    let addr = handle.addr;
                    sim_handle = Some(handle);
                    let host = addr
                        .to_string()
                        .parse()
                        .expect("a socket address is a valid header value");
                    (addr, host)
                }
            };
            endpoints.push(Endpoint {
                addr,
                host,
                path: target.path().clone(),
                authorization: plan.authorization.clone(),
                headers: plan.headers.clone(),
                session_header: plan.session_header.clone(),
                stream: plan.stream,
                connect_timeout: plan.connect_timeout,
                read_timeout: plan.read_timeout,
                request_timeout: plan.request_timeout,
                tls: tls_target,
            });
        }
        let metrics_sources = match &plan.server_metrics {
            None => Vec::new(),
            Some(urls) if urls.is_empty() => {
                // Each target's own /metrics, once per server.
                let mut sources: Vec<crate::server_metrics::Source> = Vec::new();
                for e in &endpoints {
                    if sources
                        .iter()
                        .all(|s| s.addr.as_ref().ok() != Some(&e.addr))
                    {
                        let host = e.host.to_str().unwrap_or_default().to_string();
                        sources.push(crate::server_metrics::Source::default_for(
                            e.addr,
                            &host,
                            e.tls.clone(),
                        ));
                    }
                }
                sources
            }
            Some(urls) => urls
                .iter()
                .map(|u| crate::server_metrics::Source::from_url(u, tls.as_ref()))
                .collect(),
        };
        Ok(Resources {
            metrics_sources,
            tokenizer,
            conversations: Arc::new(pool.conversations),
            sampling,
            fixed: pool.fixed,
            points,
            cpus,
            endpoints,
            run_dir,
            config,
            sim: sim_handle,
        })
    }

    /// The built-in sim runs in this process (its work is in the client's CPU figures).
    pub fn with_sim(&self) -> bool {
        self.sim.is_some()
    }

    /// Stops the built-in sim, if one runs.
    pub fn shutdown(self) {
        if let Some(h) = self.sim {
            h.shutdown();
        }
    }
}

/// The run's TLS client when any target or `--server-metrics` URL is https (`--ca-cert` read
/// here), else `None`.
fn tls_client(plan: &Plan) -> Result<Option<Arc<crate::tls::TlsClient>>, ResourceError> {
    let https_metrics = plan
        .server_metrics
        .iter()
        .flatten()
        .any(|u| u.starts_with("https://"));
    if !plan.targets.iter().any(Target::tls) && !https_metrics {
        return Ok(None);
    }
    let client = crate::tls::TlsClient::load(plan.ca_cert.as_deref(), plan.insecure)?;
    Ok(Some(Arc::new(client)))
}

/// A `--url`'s socket address (the first the host resolves to).
fn resolve(url: &str, host: &str, port: u16) -> Result<SocketAddr, ResourceError> {
    let err = |reason: String| ResourceError::Url {
        url: url.to_string(),
        reason,
    };
    (host, port)
        .to_socket_addrs()
        .map_err(|e| err(format!("cannot resolve host: {e}")))?
        .next()
        .ok_or_else(|| err("host resolves to no address".into()))
}

/// The run's conversations: the source's, then `--context-mode`, the fixed schedule's pool, the
/// completions form and per-turn body openings.
fn build_pool(plan: &Plan, tokenizer: &Tokenizer) -> Result<Pool, ResourceError> {
    let d = &plan.dataset;
    let dataset = &d.name;
    let (built, mut skipped_invalid) = workload::build(
        dataset,
        d.path.as_deref(),
        tokenizer,
        &d.params,
        d.selection,
        d.skip_invalid,
        d.max_line_bytes,
    )?;
    let mut conversations = built.conversations;
    if let Some(mode) = d.context_mode {
        let mut kept = Vec::with_capacity(conversations.len());
        for (i, mut c) in conversations.into_iter().enumerate() {
            match c.convert(mode, |reply| Some(message_tokens(tokenizer, reply))) {
                Ok(()) => kept.push(c),
                // A conversation that cannot be sent this way is bad input like any other:
                // --skip-invalid leaves it out and counts it.
                Err(_) if d.skip_invalid => skipped_invalid += 1,
                Err(reason) => {
                    return Err(ResourceError::Flag {
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
            return Err(ResourceError::Flag {
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
    if let Some(opts) = &d.pool.fixed_schedule {
        let (pool, schedule, skipped) =
            fixed_pool(conversations, opts, d.fixed_number, d.skip_invalid).map_err(|source| {
                ResourceError::Fixed {
                    dataset: dataset.clone(),
                    source,
                }
            })?;
        conversations = pool;
        skipped_invalid += skipped;
        fixed = Some(schedule);
    }
    if let (EndpointKind::Chat, Some(template)) = (plan.endpoint, tokenizer.chat_template()) {
        // The client's prompt estimate (servers without usage) counts what the server will
        // tokenize: the messages rendered with the model's chat template.
        for (i, c) in conversations.iter_mut().enumerate() {
            crate::template::template_delta_tokens(c, tokenizer, template).map_err(|reason| {
                ResourceError::Flag {
                    flag: "tokenizer-path",
                    reason: format!(
                        "{}: conversation {i} of --dataset {dataset}, {reason} (point \
                         --tokenizer-path at the tokenizer.json file to count prompts without \
                         the template)",
                        template.path().display()
                    ),
                }
            })?;
        }
    }
    if plan.endpoint == EndpointKind::Completions {
        // Sources build chat messages; /v1/completions gets them rendered as text, once.
        for (i, c) in conversations.iter_mut().enumerate() {
            convert_to_completions(c).map_err(|reason| {
                ResourceError::Endpoint(format!(
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
                t.open = Some(plan.turn_open(t.max_tokens, turn_extra));
            }
        }
    }
    Ok(Pool {
        conversations,
        fixed,
        skipped_invalid,
        filtered: built.filtered,
    })
}

/// The plan's points made final: `--request-count` becomes each point's conversation count
/// (whole conversations, in sequence order, until their turns reach it); a fixed schedule runs
/// its conversations once each; then the labels.
fn resolve_points(plan: &Plan, pool: &Pool) -> Vec<Point> {
    plan.points
        .iter()
        .map(|p: &PointSpec| {
            let number = match (&pool.fixed, plan.load.request_count) {
                (Some(schedule), _) => Some(schedule.len() as u64),
                (None, Some(requests)) => {
                    Some(conversations_for_requests(requests, &pool.conversations))
                }
                (None, None) => p.number,
            };
            let label = if pool.fixed.is_some() {
                match p.parallel {
                    Some(c) => format!("fixed_schedule_parallel_{c}"),
                    None => "fixed_schedule".into(),
                }
            } else {
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
                label.join("_")
            };
            Point {
                label,
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

/// `--cpus` as given, once the host has them; else the first `cores` CPUs this process may run
/// on (all without `--cores`).
fn pick_cpus(cores: Option<u32>, cpus: Option<&[usize]>) -> Result<Vec<usize>, ResourceError> {
    let allowed = crate::cpus::allowed();
    if let Some(cpus) = cpus {
        crate::cpus::check(cpus, &crate::cpus::online(), &allowed).map_err(|reason| {
            ResourceError::Flag {
                flag: "cpus",
                reason,
            }
        })?;
        return Ok(cpus.to_vec());
    }
    match cores {
        None => Ok(allowed),
        Some(n) if n as usize <= allowed.len() => Ok(allowed[..n as usize].to_vec()),
        Some(n) => Err(ResourceError::Flag {
            flag: "cores",
            reason: format!(
                "{n} requested but only {} are available (CPUs {}); --cpus LIST picks exact ones",
                allowed.len(),
                crate::cpus::format_list(&allowed)
            ),
        }),
    }
}

/// `YYYYMMDD_HHMMSS` in local time.
/// Descriptors per executor beyond its connections (io_uring rings, eventfds, timers), and a
/// process-wide reserve (record and output files, the tokenizer, stdio).
const FDS_PER_EXECUTOR: u64 = 16;
const FDS_RESERVE: u64 = 64;

/// Raises the soft fd limit to the hard one, then checks the connections the plan can open fit:
/// `--parallel` × URLs (each slot may keep an idle connection to every URL), twice that with the
/// built-in sim in this process (it holds the other end). Unbounded open-loop points cannot be
/// sized; running out mid-run is then counted as `too_many_open_files`.
fn check_fd_limit(plan: &Plan, cores: usize) -> Result<(), ResourceError> {
    let Some(limit) = crate::host::raise_fd_limit() else {
        return Ok(());
    };
    let Some(parallel) = plan
        .points
        .iter()
        .map(|p| p.parallel.map(u64::from))
        .collect::<Option<Vec<u64>>>()
        .and_then(|v| v.into_iter().max())
    else {
        return Ok(());
    };
    let builtin = plan
        .targets
        .iter()
        .any(|t| matches!(t, Target::BuiltinSim { .. }));
    let sides = if builtin { 2 } else { 1 };
    let connections = parallel * plan.targets.len() as u64 * sides;
    let open = crate::host::open_fds().unwrap_or(0);
    let margin = FDS_RESERVE + FDS_PER_EXECUTOR * cores as u64 * sides;
    let needed = connections + open + margin;
    if needed > limit {
        return Err(ResourceError::FdLimit {
            parallel,
            connections,
            open,
            margin,
            needed,
            limit,
        });
    }
    Ok(())
}

/// Creates `dir` if needed and checks a file can be created in it.
fn check_outputs_dir(dir: &Path) -> Result<(), ResourceError> {
    let err = |e: std::io::Error| ResourceError::Outputs {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let probe = dir.join(format!(".parley-write-test-{}", std::process::id()));
    std::fs::File::create(&probe).map_err(err)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Creates `<parent>/<name>`, or `<name>_2`, `<name>_3`, … when another run (same name, same
/// second) already has it: `create_dir` is exclusive, so two runs never share a directory.
pub(crate) fn create_run_dir(parent: &Path, name: &str) -> Result<PathBuf, ResourceError> {
    let err = |path: &Path, e: std::io::Error| ResourceError::Outputs {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(parent).map_err(|e| err(parent, e))?;
    for n in 1u32..10_000 {
        let dir = if n == 1 {
            parent.join(name)
        } else {
            parent.join(format!("{name}_{n}"))
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(err(&dir, e)),
        }
    }
    Err(err(
        parent,
        std::io::Error::other(format!("{name}_2 … {name}_9999 all exist")),
    ))
}

pub(crate) fn local_timestamp() -> String {
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
    use crate::cli::BenchArgs;
    use crate::workload::sampling::SamplingStrategy;

    fn args(flags: &[&str]) -> BenchArgs {
        let mut full = vec!["parley", "bench"];
        full.extend_from_slice(flags);
        match crate::cli::try_parse_from(full).unwrap().command {
            crate::cli::Command::Bench(b) => *b,
            _ => unreachable!(),
        }
    }

    /// Plan and resources of `flags` (with a `--url`, so no sim starts).
    fn build(flags: &[&str]) -> Result<Resources, String> {
        let outputs = std::env::temp_dir().join(format!("parley-res-{}", std::process::id()));
        let outputs = outputs.display().to_string();
        let mut full = vec!["--url", "127.0.0.1:1", "--model", "m"];
        // The run directory is created: in a temporary directory unless the test names one.
        if !flags.contains(&"--outputs-dir") {
            full.extend(["--outputs-dir", &outputs]);
        }
        full.extend_from_slice(flags);
        let plan = Plan::from_args(&args(&full)).map_err(|e| e.to_string())?;
        Resources::build(&plan).map_err(|e| e.to_string())
    }

    fn build_err(flags: &[&str]) -> String {
        match build(flags) {
            Ok(_) => panic!("expected an error for {flags:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn run_directories_never_collide() {
        let parent = tempfile::tempdir().unwrap();
        let a = create_run_dir(parent.path(), "n").unwrap();
        let b = create_run_dir(parent.path(), "n").unwrap();
        let c = create_run_dir(parent.path(), "n").unwrap();
        assert_eq!(a, parent.path().join("n"));
        assert_eq!(b, parent.path().join("n_2"));
        assert_eq!(c, parent.path().join("n_3"));
        let file = parent.path().join("f");
        std::fs::write(&file, "").unwrap();
        let e = check_outputs_dir(&file.join("out"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--outputs-dir: "), "{e}");
        assert!(e.contains("f/out"), "{e}");
    }

    #[test]
    fn resources_find_what_the_plan_does_not_read() {
        let e = build_err(&["--cores", "100000"]);
        assert!(e.starts_with("--cores: 100000 requested but only "), "{e}");
        let e = build_err(&["--tokenizer-path", "/nonexistent/tokenizer.json"]);
        assert!(e.contains("/nonexistent/tokenizer.json"), "{e}");
        let e = build_err(&[
            "--dataset",
            "mooncake_trace",
            "--dataset-path",
            "/nonexistent/trace.jsonl",
        ]);
        assert!(e.starts_with("/nonexistent/trace.jsonl: "), "{e}");
        let plan = Plan::from_args(&args(&[
            "--url",
            "no-such-host.invalid:1",
            "--model",
            "m",
            "--outputs-dir",
            "/nonexistent/parley-outputs",
        ]))
        .unwrap();
        let e = Resources::build(&plan).err().unwrap().to_string();
        assert!(
            e.starts_with("--url no-such-host.invalid:1: cannot resolve host"),
            "{e}"
        );
    }

    #[test]
    fn resources_echo_the_plan_and_their_facts() {
        let out = tempfile::tempdir().unwrap();
        let out_dir = out.path().join("out");
        let res = build(&[
            "--number",
            "3",
            "--max-turns",
            "2",
            "--min-prompt-length",
            "4",
            "--max-prompt-length",
            "8",
            "--cores",
            "1",
            "--outputs-dir",
            out_dir.to_str().unwrap(),
            "--name",
            "a b",
        ])
        .unwrap();
        assert_eq!(res.conversations.len(), 3);
        assert_eq!(res.cpus.len(), 1);
        assert_eq!(res.points[0].label, "parallel_10_number_3");
        assert_eq!(res.endpoints[0].addr, "127.0.0.1:1".parse().unwrap());
        assert_eq!(res.endpoints[0].path, "/v1/chat/completions");
        assert!(!res.with_sim());
        assert!(res.run_dir.starts_with(&out_dir) && res.run_dir.ends_with("a_b"));
        assert!(res.run_dir.is_dir(), "created before any traffic");
        let c = &res.config;
        assert_eq!((c.pool, c.cores, c.max_turns), (3, 1, Some(2)));
        assert_eq!(c.tokenizer, res.tokenizer.name());
        assert_eq!(c.url, "127.0.0.1:1");
        assert_eq!(c.point, res.points[0]);
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
        let res = build(&base).unwrap();
        assert_eq!(
            (res.points[0].number, res.conversations.len()),
            (Some(3), 3)
        );
        let fixed = res.fixed.as_ref().unwrap();
        let firsts: Vec<u64> = fixed
            .entries
            .iter()
            .map(|e| e.offset_ns / 1_000_000)
            .collect();
        assert_eq!(firsts, [1000, 2000, 3000]);
        let session = &res.conversations[fixed.entries[1].conversation];
        assert_eq!(fixed.turn_offset_ns(&session.turns[1]), Some(2_600_000_000));
        assert_eq!(session.turns[1].delay_ns, 600_000_000, "delays are kept");
        assert_eq!(res.config.point.number, Some(3));
        assert!(res.config.pool_config.fixed_schedule.is_some());

        // A given, smaller --number keeps the earliest; a window drops the rest from the pool.
        let mut flags = base.to_vec();
        flags.extend(["--number", "2", "--fixed-schedule-start-offset", "1500"]);
        let res = build(&flags).unwrap();
        let fixed = res.fixed.as_ref().unwrap();
        assert_eq!(
            (res.points[0].number, res.conversations.len()),
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
        let e = build_err(&flags);
        assert!(
            e.starts_with("--dataset multi_turn: --fixed-schedule: conversation 1 "),
            "{e}"
        );
        let mut skip = flags.to_vec();
        skip.push("--skip-invalid");
        let res = build(&skip).unwrap();
        assert_eq!(res.conversations.len(), 1);
        assert_eq!(res.config.skipped_invalid, 1);
    }

    #[test]
    fn sampling_strategy_reaches_the_plan_and_the_summary() {
        let res = build(&[
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
        ])
        .unwrap();
        assert_eq!(res.conversations.len(), 3);
        assert_eq!(
            res.points[0].number,
            Some(100),
            "claims cycle through the pool"
        );
        assert_eq!(res.sampling.len(), 3);
        assert_eq!(res.sampling.strategy(), SamplingStrategy::Shuffle);
        assert!(res.fixed.is_none());
        let v = serde_json::to_value(&res.config).unwrap();
        assert_eq!(v["dataset_sampling_strategy"], "shuffle");
        assert_eq!(v["num_dataset_entries"], 3);
        assert_eq!(v["fixed_schedule"], Value::Null);
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
}
