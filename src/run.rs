//! Stage 3 of a bench run: each load point of a [`Plan`] run through the engine with its
//! [`Resources`] into a [`Summary`] ([`run_point`]), then the files written and, for a sweep,
//! the sweep table ([`bench()`]). Tests call these in-process; `main.rs` only chains
//! [`Plan::from_args`], [`Resources::build`] and [`bench()`].

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{self, EngineConfig, Load, Progress, RateRamp, RateSpec, Shape, Shared};
use crate::metrics;
use crate::plan::{Plan, Point, DEFAULT_PARALLEL};
use crate::report::{Summary, SweepRow};
use crate::resources::Resources;
use crate::signal;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The engine configuration of one point.
pub fn engine_config(plan: &Plan, res: &Resources, point: &Point) -> EngineConfig {
    let (warmup, load) = engine_load(plan, res, point);
    EngineConfig {
        cpus: res.cpus.clone(),
        spin: plan.spin,
        warmup,
        load,
        preconnect: plan.load.preconnect,
        seed: plan.seed,
    }
}

/// The engine's load for one point: the warmup phase, if any, and the measured one.
fn engine_load(plan: &Plan, res: &Resources, point: &Point) -> (Option<Load>, Load) {
    let s_to_ns = |s: f64| (s * 1e9) as u64;
    let l = &plan.load;
    let shape = match (&res.fixed, point.rate_per_s) {
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

/// Runs one load point and summarises it. `on_tick` sees progress about every 200 ms.
pub fn run_point(
    plan: &Plan,
    res: &Resources,
    point: &Point,
    on_tick: impl FnMut(Progress),
) -> Result<Summary, RunError> {
    let shared = Shared::new(
        res.endpoints.clone(),
        plan.body.clone(),
        res.conversations.clone(),
        res.sampling.clone(),
        engine_config(plan, res, point),
    );
    let cpu_before_ns = metrics::process_cpu_ns();
    let measured = engine::run(shared, on_tick)?;
    let cpu_ns = metrics::process_cpu_ns() - cpu_before_ns;
    let mut config = res.config.clone();
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

/// Console behaviour of [`bench()`].
#[derive(Clone, Copy, Debug)]
pub struct Console {
    /// No progress lines.
    pub quiet: bool,
}

/// Runs every point (`res.points`), printing each point's tables and writing its files; a sweep
/// also gets a table and `sweep_summary.json`. Returns the summaries in point order.
pub fn bench(plan: &Plan, res: &Resources, console: Console) -> Result<Vec<Summary>, RunError> {
    let sweep = res.points.len() > 1;
    let mut summaries = Vec::new();
    for (i, point) in res.points.iter().enumerate() {
        if i > 0 {
            if signal::interrupted() {
                break;
            }
            std::thread::sleep(Duration::from_secs_f64(plan.load.sweep_pause_s));
        }
        if !console.quiet {
            eprintln!("parley: {}", describe(plan, res, point));
        }
        let summary = run_point(plan, res, point, progress_printer(console, point))?;
        if !console.quiet && std::io::stderr().is_terminal() {
            eprintln!();
        }
        print!("{}", summary.render());
        let dir = if sweep {
            res.run_dir.join(&point.label)
        } else {
            res.run_dir.clone()
        };
        let paths = write(&dir, |d| summary.write_all(d))?;
        println!();
        for path in paths {
            println!("wrote {}", path.display());
        }
        summaries.push(summary);
    }
    if sweep {
        let rows: Vec<SweepRow> = summaries.iter().map(SweepRow::of).collect();
        print!("\nSweep\n{}", crate::report::sweep_table(&rows));
        let path = write(&res.run_dir, |d| crate::report::write_sweep(d, &rows))?;
        println!("sweep summary: {}", path.display());
    }
    Ok(summaries)
}

fn write<T>(dir: &Path, f: impl FnOnce(&Path) -> std::io::Result<T>) -> Result<T, RunError> {
    f(dir).map_err(|source| RunError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

/// One line saying what a point runs.
fn describe(plan: &Plan, res: &Resources, point: &Point) -> String {
    let load = match (point.rate_per_s, point.parallel) {
        (None, p) => format!("{} in flight", p.unwrap_or(DEFAULT_PARALLEL)),
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
        res.cpus.len(),
        res.config.urls.join(", ")
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
