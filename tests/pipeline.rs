//! Issue 9 §1, the pipeline in-process: flags → `Plan` (pure) → `Resources` (tokenizer,
//! conversations, CPUs, the built-in sim) → `run::run_point` → `Summary`, without spawning the
//! binary.

use parley::cli::{try_parse_from, BenchArgs, Command};
use parley::plan::Plan;
use parley::resources::Resources;
use parley::run;

fn args(flags: &[&str]) -> BenchArgs {
    // Resources::build creates its run directory: keep it out of the working tree.
    let outputs = std::env::temp_dir().join(format!("parley-pipeline-{}", std::process::id()));
    let outputs = outputs.display().to_string();
    let mut full = vec!["parley", "bench", "--outputs-dir", &outputs];
    full.extend_from_slice(flags);
    match try_parse_from(full).unwrap().command {
        Command::Bench(b) => *b,
        _ => unreachable!(),
    }
}

#[test]
fn plan_resources_run_point_on_the_builtin_sim() {
    let plan = Plan::from_args(&args(&[
        "--dataset",
        "random_multi_turn",
        "--number",
        "6",
        "--parallel",
        "2",
        "--min-turns",
        "2",
        "--max-turns",
        "3",
        "--min-prompt-length",
        "8",
        "--max-prompt-length",
        "32",
        "--max-tokens",
        "4",
        "--tokenizer-path",
        "builtin",
        "--cores",
        "1",
    ]))
    .unwrap();
    assert_eq!(plan.points.len(), 1);
    let res = Resources::build(&plan).unwrap();
    assert!(res.with_sim(), "no --url: the built-in sim");
    assert_eq!(res.cpus.len(), 1);
    assert_eq!(res.conversations.len(), 6, "the pool is the number run");
    let turns: u64 = res.conversations.iter().map(|c| c.turns.len() as u64).sum();
    assert!((12..=18).contains(&turns), "{turns}");

    let point = res.points[0].clone();
    assert_eq!(point.number, Some(6));
    let summary = run::run_point(&plan, &res, &point, |_| {});
    res.shutdown();
    let summary = summary.unwrap();

    assert!(!summary.interrupted);
    assert_eq!(summary.conversations.started, 6);
    assert_eq!(summary.conversations.completed, 6);
    assert_eq!(summary.conversations.abandoned, 0);
    assert_eq!(summary.requests.total, turns, "one request per turn");
    assert_eq!(summary.requests.succeeded, turns);
    assert_eq!(summary.requests.failed, 0);
    assert_eq!(summary.config.point, point);
    assert_eq!(summary.config.pool, 6);
    assert_eq!(summary.config.cores, 1);
    assert_eq!(summary.config.url, "builtin-sim");
    assert_eq!(summary.config.tokenizer, "builtin:qwen2");
    assert!(summary.client.includes_builtin_sim);
}
