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
use crate::records::{self, RecordsWriter};
use crate::report::{Summary, SweepRow};
use crate::resources::Resources;
use crate::server_metrics;
use crate::signal;
use crate::verdict::{self, Outcome};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    /// `--wait-for-model-timeout` ran out.
    #[error("{0}")]
    TargetNotReady(String),
    #[error(transparent)]
    Html(#[from] crate::html::HtmlError),
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
        retry_429: plan.retry_429,
        max_consecutive_connect_failures: plan.max_consecutive_connect_failures,
        interrupt_grace_ns: (plan.load.grace_s * 1e9) as u64,
        goodput: plan.goodput,
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
    let mut shared = Shared::new(
        res.endpoints.clone(),
        plan.body.clone(),
        res.conversations.clone(),
        res.sampling.clone(),
        engine_config(plan, res, point),
    );
    let records = if plan.records {
        let dir = point_dir(res, point);
        let writer = std::fs::create_dir_all(&dir)
            .and_then(|()| RecordsWriter::start(&dir, &res.config.urls))
            .map_err(|source| RunError::Write {
                path: dir.join(records::RECORDS_FILE),
                source,
            })?;
        shared = shared.with_records(writer.channel());
        Some(writer)
    } else {
        None
    };
    let started = crate::plan::WallTime::now();
    // Its first scrape is taken here, before any request; the engine's cores never see it.
    let scraper = (!res.metrics_sources.is_empty()).then(|| {
        server_metrics::Scraper::start(res.metrics_sources.clone(), server_metrics::SCRAPE_INTERVAL)
    });
    let cpu_before_ns = metrics::process_cpu_ns();
    let measured = engine::run(shared, on_tick)?;
    let scraped = scraper.map(server_metrics::Scraper::finish);
    if let Some(why) = &measured.halted {
        stderr(&format!("parley: {why}\n"));
    }
    // The records' last writes count in the client's CPU; AIPerf's copy, made after, does not.
    let records = records.map(RecordsWriter::finish);
    let cpu_ns = metrics::process_cpu_ns() - cpu_before_ns;
    match records {
        Some(Ok(path)) => {
            if let Err(e) = records::write_aiperf_jsonl(&path) {
                stderr(&format!("parley: {}: {e}\n", records::AIPERF_RECORDS_FILE));
            }
        }
        // The summary is still worth writing.
        Some(Err(e)) => stderr(&format!(
            "parley: writing {}: {e}; the summary is unaffected\n",
            records::RECORDS_FILE
        )),
        None => {}
    }
    let mut config = res.config.clone();
    config.point = point.clone();
    config.start_time = started.rfc3339();
    config.start_unix_s = started.unix_s;
    let mut summary = Summary::new(
        config,
        &measured.recorder,
        measured.warmup.as_ref(),
        signal::interrupted(),
        cpu_ns,
        res.with_sim(),
    );
    summary.interrupted_by = signal::received_name();
    summary.server_metrics = scraped.map(|series| {
        server_metrics::ServerMetrics::of(
            series,
            server_metrics::ClientTotals::of(&measured.recorder),
            measured.warmup.is_some(),
        )
    });
    summary.thresholds = verdict::evaluate(&plan.thresholds, &summary);
    Ok(summary)
}

/// Console behaviour of [`bench()`].
#[derive(Clone, Copy, Debug)]
pub struct Console {
    /// No progress lines.
    pub quiet: bool,
}

/// Runs every point (`res.points`), printing each point's tables and writing its files; a sweep
/// also gets a table and `sweep_summary.json`. Returns the summaries in point order, with the
/// signal that stopped the run if one did: the [`Outcome`] the binary turns into its exit code.
pub fn bench(plan: &Plan, res: &Resources, console: Console) -> Result<Outcome, RunError> {
    signal::arm();
    if let Some(timeout) = plan.wait_for_model {
        crate::preflight::wait_for_model(&res.endpoints, timeout)
            .map_err(RunError::TargetNotReady)?;
    }
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
            stderr(&format!("parley: {}\n", describe(plan, res, point)));
        }
        let mut view = ProgressView::new(console, point, plan.load.duration_s);
        let summary = run_point(plan, res, point, |p| view.tick(p))?;
        view.finish();
        // Files first: a closed stdout or a signal while printing must not lose them.
        let dir = point_dir(res, point);
        let mut paths = write(&dir, |d| summary.write_all(d))?;
        // From the files just written, as `parley report` rebuilds it: the page is a function
        // of them alone.
        paths.push(crate::html::write_report(&dir)?);
        paths.extend(
            [records::RECORDS_FILE, records::AIPERF_RECORDS_FILE]
                .map(|name| dir.join(name))
                .into_iter()
                .filter(|p| plan.records && p.is_file()),
        );
        let mut text = summary.render();
        text.push('\n');
        for path in paths {
            text.push_str(&format!("wrote {}\n", path.display()));
        }
        stdout(&text);
        summaries.push(summary);
    }
    if sweep {
        let rows: Vec<SweepRow> = summaries.iter().map(SweepRow::of).collect();
        let path = write(&res.run_dir, |d| crate::report::write_sweep(d, &rows))?;
        stdout(&format!(
            "\nSweep\n{}sweep summary: {}\n",
            crate::report::sweep_table(&rows),
            path.display()
        ));
    }
    // The first signal received decides the exit code (130 SIGINT, 143 SIGTERM, 129 SIGHUP).
    let signal = signal::received();
    Ok(Outcome { summaries, signal })
}

/// Where a point's files go: the run directory, or its own subdirectory in a sweep.
fn point_dir(res: &Resources, point: &Point) -> PathBuf {
    if res.points.len() > 1 {
        res.run_dir.join(&point.label)
    } else {
        res.run_dir.clone()
    }
}

/// Writes `text` to stdout, ignoring errors: a reader that went away (`parley bench … | head
/// -1`: EPIPE, SIGPIPE being ignored by Rust's runtime) must not panic the run — its files are
/// written regardless. `print!` panics on such an error.
fn stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// [`stdout`] for stderr (`parley bench … 2>&1 | head -1` closes both).
fn stderr(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes()).and_then(|()| err.flush());
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

/// The progress display: a bar (indicatif) on a terminal, a plain line every 10 s otherwise,
/// nothing with `--quiet`. It reads the engine's per-core counters only.
struct ProgressView {
    bar: Option<indicatif::ProgressBar>,
    periodic: bool,
    started: Instant,
    next_line_s: f64,
    limit: Option<u64>,
    duration_s: Option<f64>,
    /// Recent snapshots, for rates and the TTFT median over the last few seconds.
    window: std::collections::VecDeque<(Instant, Progress)>,
}

/// Seconds over which the live rates and TTFT median are taken.
const PROGRESS_WINDOW_S: f64 = 5.0;

impl ProgressView {
    fn new(console: Console, point: &Point, duration_s: Option<f64>) -> ProgressView {
        let live = !console.quiet && std::io::stderr().is_terminal();
        let bar = live.then(|| {
            let (len, unit) = match (point.number, duration_s) {
                (Some(n), _) => (n, "conversations"),
                (None, Some(d)) => (d.ceil() as u64, "s"),
                (None, None) => (0, "conversations"),
            };
            let bar = indicatif::ProgressBar::new(len);
            let template = format!(
                "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit}, ETA {{eta}}  {{msg}}"
            );
            if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        ProgressView {
            bar,
            periodic: !console.quiet && !live,
            started: Instant::now(),
            next_line_s: 10.0,
            limit: point.number,
            duration_s,
            window: std::collections::VecDeque::new(),
        }
    }

    /// The details after the bar: outcomes, in flight, recent rates and TTFT.
    fn details(&mut self, p: &Progress) -> String {
        let now = Instant::now();
        self.window.push_back((now, *p));
        while self
            .window
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t).as_secs_f64() > PROGRESS_WINDOW_S)
        {
            self.window.pop_front();
        }
        let (t0, p0) = self.window.front().copied().expect("just pushed");
        let dt = now.duration_since(t0).as_secs_f64();
        let rate = |a: u64, b: u64| {
            if dt > 0.0 {
                format!("{:.1}", (a - b) as f64 / dt)
            } else {
                "-".into()
            }
        };
        let failed = match engine::progress::leading_failure(&p.failures) {
            Some((class, n)) if p.failed > 0 => format!("{} ({class} {n})", p.failed),
            _ => p.failed.to_string(),
        };
        let ttft = engine::progress::ttft_p50_between_us(&p0.ttft, &p.ttft)
            .map_or("-".into(), |us| format!("{:.0} ms", us / 1e3));
        format!(
            "ok {} failed {failed} | in flight {} | {} req/s, {} tok/s | TTFT p50 {ttft}",
            p.succeeded,
            p.in_flight,
            rate(p.succeeded, p0.succeeded),
            rate(p.output_tokens, p0.output_tokens),
        )
    }

    fn tick(&mut self, p: Progress) {
        let elapsed_s = self.started.elapsed().as_secs_f64();
        if p.warming_up {
            if let Some(bar) = &self.bar {
                bar.set_message("warming up");
            }
            return;
        }
        let details = self.details(&p);
        if let Some(bar) = &self.bar {
            let pos = match (self.limit, self.duration_s) {
                (Some(_), _) | (None, None) => p.completed,
                (None, Some(d)) => elapsed_s.min(d) as u64,
            };
            bar.set_position(pos);
            bar.set_message(details);
        } else if self.periodic && elapsed_s >= self.next_line_s {
            let of = self.limit.map_or(String::new(), |n| format!("/{n}"));
            stderr(&format!(
                "{elapsed_s:>7.1}s  conversations {}{of} done, {} started | {details}\n",
                p.completed, p.started
            ));
            self.next_line_s += 10.0;
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
