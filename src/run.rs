//! The bench pipeline after the plan: the run's resources built in one place ([`Resources`]),
//! then each load point run through the engine into a [`Summary`] ([`run_point`]), then the
//! files written and, for a sweep, the sweep table ([`bench`]). Tests call these in-process.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::client::Endpoint;
use crate::engine::{self, EngineConfig, Progress, Shared};
use crate::metrics;
use crate::plan::{BenchPlan, Point, Target};
use crate::report::{Summary, SweepRow};
use crate::signal;
use crate::sim;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("starting the built-in sim: {0}")]
    Sim(#[from] sim::SimError),
    #[error("--{flag}: {reason}")]
    Flag { flag: &'static str, reason: String },
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a run needs beyond its plan: the endpoints (with the built-in sim started when there is
/// no `--url`).
pub struct Resources {
    pub endpoints: Vec<Endpoint>,
    sim: Option<sim::SimHandle>,
}

impl Resources {
    pub fn build(plan: &BenchPlan) -> Result<Resources, RunError> {
        let mut sim_handle = None;
        let mut endpoints = Vec::with_capacity(plan.targets.len());
        let header = |flag: &'static str, v: &str| {
            v.parse::<hyper::header::HeaderValue>()
                .map_err(|_| RunError::Flag {
                    flag,
                    reason: format!("`{v}` is not a valid header value"),
                })
        };
        let headers = plan
            .headers
            .iter()
            .map(|(n, v)| {
                Ok((
                    n.parse::<hyper::header::HeaderName>()
                        .map_err(|_| RunError::Flag {
                            flag: "header",
                            reason: format!("`{n}` is not a valid header name"),
                        })?,
                    header("header", v)?,
                ))
            })
            .collect::<Result<Vec<_>, RunError>>()?;
        let session_header: hyper::header::HeaderName =
            plan.session_header.parse().map_err(|_| RunError::Flag {
                flag: "session-header",
                reason: format!("`{}` is not a valid header name", plan.session_header),
            })?;
        for target in &plan.targets {
            let (addr, host, path) = match target {
                Target::Url {
                    addr, host, path, ..
                } => (*addr, host.clone(), path.clone()),
                Target::BuiltinSim { path } => {
                    let sim_args = sim::SimArgs {
                        port: 0,
                        ..Default::default()
                    };
                    let handle = sim::spawn(&sim_args, plan.tokenizer.clone())?;
                    let addr = handle.addr;
                    sim_handle = Some(handle);
                    (addr, addr.to_string(), path.clone())
                }
            };
            endpoints.push(Endpoint {
                addr,
                host: header("url", &host)?,
                path: path.parse().map_err(|_| RunError::Flag {
                    flag: "url",
                    reason: format!("`{path}` is not a valid path"),
                })?,
                authorization: plan
                    .authorization
                    .as_deref()
                    .map(|a| header("api-key", a))
                    .transpose()?,
                headers: headers.clone(),
                session_header: session_header.clone(),
                stream: plan.stream,
                connect_timeout: plan.connect_timeout,
                read_timeout: plan.read_timeout,
            });
        }
        Ok(Resources {
            endpoints,
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

/// The engine configuration of one point.
pub fn engine_config(plan: &BenchPlan, point: &Point) -> EngineConfig {
    let (warmup, load) = plan.engine_load(point);
    EngineConfig {
        cpus: plan.cpus.clone(),
        spin: plan.config.spin,
        warmup,
        load,
        preconnect: plan.load.preconnect,
        seed: plan.config.seed,
    }
}

/// Runs one load point and summarises it. `on_tick` sees progress about every 200 ms.
pub fn run_point(
    plan: &BenchPlan,
    res: &Resources,
    point: &Point,
    on_tick: impl FnMut(Progress),
) -> Result<Summary, RunError> {
    let shared = Shared::new(
        res.endpoints.clone(),
        plan.body.clone(),
        plan.conversations.clone(),
        plan.sampling.clone(),
        engine_config(plan, point),
    );
    let cpu_before_ns = metrics::process_cpu_ns();
    let measured = engine::run(shared, on_tick)?;
    let cpu_ns = metrics::process_cpu_ns() - cpu_before_ns;
    let mut config = plan.config.clone();
    config.point = point.clone();
    Ok(Summary::new(
        config,
        &measured.recorder,
        measured.warmup.as_ref(),
        signal::interrupted(),
        cpu_ns,
        res.with_sim(),
    ))
}

/// Console behaviour of [`bench`].
#[derive(Clone, Copy, Debug)]
pub struct Console {
    /// No progress lines.
    pub quiet: bool,
}

/// Runs every point of the plan, printing each point's tables and writing its files; a sweep
/// also gets a table and `sweep_summary.json`. Returns the summaries in point order.
pub fn bench(
    plan: &BenchPlan,
    res: &Resources,
    console: Console,
) -> Result<Vec<Summary>, RunError> {
    let sweep = plan.points.len() > 1;
    let mut summaries = Vec::new();
    for (i, point) in plan.points.iter().enumerate() {
        if i > 0 {
            if signal::interrupted() {
                break;
            }
            std::thread::sleep(Duration::from_secs_f64(plan.load.sweep_pause_s));
        }
        if !console.quiet {
            eprintln!("parley: {}", describe(plan, point));
        }
        let summary = run_point(plan, res, point, progress_printer(console, point))?;
        if !console.quiet && std::io::stderr().is_terminal() {
            eprintln!();
        }
        print!("{}", summary.render());
        let dir = if sweep {
            plan.run_dir.join(&point.label)
        } else {
            plan.run_dir.clone()
        };
        let path = write(&dir, |d| summary.write(d))?;
        println!("\nsummary: {}", path.display());
        summaries.push(summary);
    }
    if sweep {
        let rows: Vec<SweepRow> = summaries.iter().map(SweepRow::of).collect();
        print!("\nSweep\n{}", crate::report::sweep_table(&rows));
        let path = write(&plan.run_dir, |d| crate::report::write_sweep(d, &rows))?;
        println!("sweep summary: {}", path.display());
    }
    Ok(summaries)
}

fn write(
    dir: &Path,
    f: impl FnOnce(&Path) -> std::io::Result<PathBuf>,
) -> Result<PathBuf, RunError> {
    f(dir).map_err(|source| RunError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

/// One line saying what a point runs.
fn describe(plan: &BenchPlan, point: &Point) -> String {
    let load = match (point.rate_per_s, point.parallel) {
        (None, p) => format!("{} in flight", p.unwrap_or(crate::plan::DEFAULT_PARALLEL)),
        (Some(r), None) => format!("{r}/s {:?} arrivals", plan.load.request_rate_mode),
        (Some(r), Some(cap)) => format!(
            "{r}/s {:?} arrivals, at most {cap} in flight",
            plan.load.request_rate_mode
        ),
    };
    let count = match (point.number, plan.load.duration_s) {
        (Some(n), Some(d)) => format!("{n} conversations or {d} s"),
        (Some(n), None) => format!("{n} conversations"),
        (None, Some(d)) => format!("{d} s"),
        (None, None) => "no limit".into(),
    };
    format!(
        "{count}, {load}, {} cores -> {}",
        plan.cpus.len(),
        plan.config.urls.join(", ")
    )
}

/// The progress callback: a live line on a terminal, a plain line every 10 s otherwise.
fn progress_printer(console: Console, point: &Point) -> impl FnMut(Progress) {
    let live = !console.quiet && std::io::stderr().is_terminal();
    let periodic = !console.quiet && !live;
    let started = Instant::now();
    let mut next_line_s = 10.0;
    let limit = point.number;
    move |p: Progress| {
        let elapsed_s = started.elapsed().as_secs_f64();
        let of = limit.map_or(String::new(), |n| format!("/{n}"));
        let line = if p.warming_up {
            format!("{elapsed_s:>7.1}s  warming up")
        } else {
            format!(
                "{elapsed_s:>7.1}s  conversations {}{of} started, {} done, {} in flight  requests ok {}  failed {}",
                p.started, p.completed, p.in_flight, p.succeeded, p.failed
            )
        };
        if live {
            eprint!("\r{line}   ");
            let _ = std::io::stderr().flush();
        } else if periodic && elapsed_s >= next_line_s {
            eprintln!("{line}");
            next_line_s += 10.0;
        }
    }
}
