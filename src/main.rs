//! The `parley` binary: parse flags, dispatch, turn library errors into messages.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use mimalloc::MiMalloc;

use parley::cli::{
    BenchArgs, Cli, Command, DatasetArgs, DatasetBuildSource, DatasetCommand, DoctorArgs,
};
use parley::client::Endpoint;
use parley::engine::{self, EngineConfig, Shared};
use parley::plan::{BenchPlan, Target};
use parley::report::Summary;
use parley::tokenizer::Tokenizer;
use parley::workload::swe_smith;
use parley::{doctor, metrics, signal, sim};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    // Before the executors allocate: huge-page faults would stall them mid-run.
    parley::host::disable_transparent_huge_pages();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench(&args),
        Command::Sim(args) => sim::run(&args).context("parley sim"),
        Command::Dataset(args) => dataset(&args),
        Command::Doctor(args) => run_doctor(&args),
    };
    if let Err(e) = result {
        eprintln!("error: {}", message(&e));
        std::process::exit(2);
    }
}

/// The error and its causes, each cause only once: library errors already name their source in
/// their own message (`path: No such file…`), which `{:#}` would repeat.
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn dataset(args: &DatasetArgs) -> Result<()> {
    let DatasetCommand::Build(build) = &args.command;
    let DatasetBuildSource::SweSmith(a) = &build.source;
    let tokenizer = Tokenizer::load(a.tokenizer_path.as_deref())?;
    let params =
        swe_smith::dataset_params(a.min_turns, a.max_turns, a.seed, a.dataset_args.as_deref())?;
    let report = swe_smith::build_file(&swe_smith::FileBuild {
        trajectories: &a.dataset_path,
        output: &a.output,
        tokenizer: &tokenizer,
        params: &params,
        conversations: a.number as usize,
        skip_invalid: a.skip_invalid,
    })?;
    println!("{}", report.render(&a.output));
    Ok(())
}

fn run_doctor(args: &DoctorArgs) -> Result<()> {
    let cpus = match &args.cores {
        Some(list) => doctor::parse_cpu_list(list)?,
        None => doctor::online_cpus(),
    };
    let target = doctor::Target {
        cpus,
        parallel: args.parallel,
    };
    let facts = doctor::HostFacts::read(&target.cpus);
    print!("{}", doctor::render(&doctor::checks(&facts, &target)));
    Ok(())
}

fn bench(args: &BenchArgs) -> Result<()> {
    signal::install();
    let plan = BenchPlan::build(args)?;

    // Without --url, serve the built-in sim from this process on a free loopback port.
    let mut sim_handle = None;
    let (addr, host, path) = match &plan.target {
        Target::Url {
            addr, host, path, ..
        } => (*addr, host.clone(), path.clone()),
        Target::BuiltinSim => {
            let sim_args = sim::SimArgs {
                port: 0,
                ..Default::default()
            };
            let handle = sim::spawn(&sim_args, plan.tokenizer.clone())
                .context("starting the built-in sim")?;
            let addr = handle.addr;
            sim_handle = Some(handle);
            (addr, addr.to_string(), "/v1/chat/completions".to_string())
        }
    };
    let endpoint = Endpoint {
        addr,
        host: host
            .parse()
            .context("--url host is not a valid Host header")?,
        path: path.parse().context("--url path")?,
        authorization: match &plan.authorization {
            Some(a) => Some(a.parse().context("--api-key is not a valid header value")?),
            None => None,
        },
        stream: plan.stream,
        connect_timeout: plan.connect_timeout,
        read_timeout: plan.read_timeout,
    };
    let shared = Arc::new(Shared::new(
        endpoint,
        plan.body.clone(),
        plan.conversations.clone(),
        plan.number,
        plan.cpus.len(),
    ));
    let config = EngineConfig {
        cpus: plan.cpus.clone(),
        concurrency: plan.concurrency,
        spin: plan.config.spin,
    };
    if !args.quiet {
        eprintln!(
            "parley: {} conversations, {} in flight, {} cores -> {}",
            plan.number,
            plan.concurrency,
            plan.cpus.len(),
            plan.config.url
        );
    }
    // A live line on a terminal; otherwise (logs, CI) a plain line every 10 s.
    let live = !args.quiet && std::io::stderr().is_terminal();
    let periodic = !args.quiet && !live;
    let started = std::time::Instant::now();
    let cpu_before_ns = metrics::process_cpu_ns();
    let mut next_line_s = 10.0;
    let recorder = engine::run(&config, shared, |p| {
        let elapsed_s = started.elapsed().as_secs_f64();
        let line = format!(
            "{elapsed_s:>7.1}s  conversations {}/{}  requests ok {}  failed {}",
            p.claimed, p.number, p.succeeded, p.failed
        );
        if live {
            eprint!("\r{line}   ");
            let _ = std::io::stderr().flush();
        } else if periodic && elapsed_s >= next_line_s {
            eprintln!("{line}");
            next_line_s += 10.0;
        }
    })?;
    let cpu_ns = metrics::process_cpu_ns() - cpu_before_ns;
    if live {
        eprintln!();
    }
    let with_sim = sim_handle.is_some();
    if let Some(h) = sim_handle {
        h.shutdown();
    }
    let summary = Summary::new(
        plan.config.clone(),
        &recorder,
        signal::interrupted(),
        cpu_ns,
        with_sim,
    );
    print!("{}", summary.render());
    let path = summary
        .write(&plan.run_dir)
        .with_context(|| format!("writing {}", plan.run_dir.display()))?;
    println!("\nsummary: {}", path.display());
    Ok(())
}
