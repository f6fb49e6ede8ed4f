//! The `parley` binary: parse flags, dispatch, turn library errors into messages.

use anyhow::{Context, Result};
use mimalloc::MiMalloc;

use parley::cli::{
    BenchArgs, Command, CompareArgs, DatasetArgs, DatasetBuildSource, DatasetCommand, DoctorArgs,
    ReportArgs,
};
use parley::plan::Plan;
use parley::resources::Resources;
use parley::tokenizer::Tokenizer;
use parley::verdict::{EXIT_OK, EXIT_USAGE};
use parley::workload::swe_smith;
use parley::{doctor, run, signal, sim};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    // Before the executors allocate: huge-page faults would stall them mid-run.
    parley::host::disable_transparent_huge_pages();
    let cli = parley::cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench(&args),
        Command::Sim(args) => sim::run(&args).context("parley sim").map(|()| EXIT_OK),
        Command::Dataset(args) => dataset(&args).map(|()| EXIT_OK),
        Command::Doctor(args) => run_doctor(&args).map(|()| EXIT_OK),
        Command::Report(args) => report(&args).map(|()| EXIT_OK),
        Command::Compare(args) => compare(&args).map(|()| EXIT_OK),
    };
    match result {
        Ok(EXIT_OK) => {}
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {}", message(&e));
            std::process::exit(EXIT_USAGE);
        }
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
        max_line_bytes: a.max_line_bytes,
    })?;
    println!("{}", report.render(&a.output));
    Ok(())
}

fn run_doctor(args: &DoctorArgs) -> Result<()> {
    let cpus = match &args.cpus {
        Some(list) => doctor::resolve_cpu_list(list)?,
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

fn report(args: &ReportArgs) -> Result<()> {
    let path = parley::html::write_report(&args.run_dir)?;
    println!("wrote {}", path.display());
    Ok(())
}

fn compare(args: &CompareArgs) -> Result<()> {
    print!("{}", parley::html::compare(&args.runs, &args.output)?);
    Ok(())
}

/// The pipeline: flags → [`Plan`] (pure) → [`Resources`] (the I/O) → [`run::bench`] (each
/// point run, reported and written) → shutdown; returns the exit code the outcome calls for.
fn bench(args: &BenchArgs) -> Result<i32> {
    signal::install();
    let plan = Plan::from_args(args)?;
    for note in &plan.notes {
        eprintln!("{note}");
    }
    let resources = Resources::build(&plan)?;
    let result = run::bench(&plan, &resources, run::Console { quiet: args.quiet });
    resources.shutdown();
    let outcome = result?;
    if let Some(line) = outcome.explain() {
        eprintln!("{line}");
    }
    Ok(outcome.exit_code())
}
