//! The seed documents' command lines run as written. Every `evalscope perf …` and
//! `aiperf profile …` command of the two seed documents (vendored in `tests/data/seeds/`) runs
//! as `parley perf …` / `parley profile …` against `parley sim`, with only these changes:
//!
//! - the target: `--url` → the sim (a scheme-less `host:port` stays scheme-less, an endpoint
//!   path is kept), `--model` → the sim's, `--api-key` → a test key;
//! - `--tokenizer-path` → `builtin`; dataset paths → small fixtures generated here (a
//!   command without one, which evalscope would download for, gets one);
//! - `--number`/`--conversation-num` divided by [`SCALE`] (rounded up), `--duration` by 20, and
//!   AIPerf think times scaled by `--conversation-turn-delay-ratio 0.01`, so the file runs in
//!   seconds; `--outputs-dir` a temporary directory;
//! - evalscope's elided example `evalscope perf ... --dataset trie_office_work …`: the `...`
//!   (the reader's usual flags) becomes the sim's `--url` and `--model`.
//!
//! Each must exit 0, and each run's `summary.json` (each point's for a sweep, plus
//! `sweep_summary.json`) must report the conversations and turns the command asks for: the
//! scaled conversation count completed, and exactly the turns of the conversations planned
//! from the same flags (rebuilt here through the library), checked against the sim's record and
//! against what each command states (turn bounds, fixed turn counts, fixture lengths).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use common::*;
use parley::cli::{Cli, Command};
use parley::plan::Plan;
use parley::resources::Resources;
use serde_json::{json, Value};

const EVALSCOPE: &str = include_str!("data/seeds/000_00406d4363284dca.txt");
const AIPERF: &str = include_str!("data/seeds/001_07eb1a7b2e387b79.txt");

/// Conversation counts are divided by this (rounded up).
const SCALE: u64 = 5;

// ----- extracting the commands -----

/// Splits a shell command line into words, as a POSIX shell would without expansions: single
/// quotes keep everything (newlines too), double quotes keep all but `\"`, `\\`, `\$`, `` \` ``
/// and a backslash-newline, a backslash outside quotes escapes the next character (a
/// backslash-newline continues the line), and `#` at the start of a word comments out the rest
/// of the line. `$VAR` stays as written. An unterminated quote or a trailing backslash is an
/// error (the command continues on the next line).
fn shell_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => word.push(x),
                        None => return Err("unterminated '".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('\n') => {}
                            Some(x @ ('"' | '\\' | '$' | '`')) => word.push(x),
                            Some(x) => {
                                word.push('\\');
                                word.push(x);
                            }
                            None => return Err("unterminated \"".into()),
                        },
                        Some(x) => word.push(x),
                        None => return Err("unterminated \"".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(x) => {
                    in_word = true;
                    word.push(x);
                }
                None => return Err("trailing \\".into()),
            },
            '#' if !in_word => {
                while chars.peek().is_some_and(|&x| x != '\n') {
                    chars.next();
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Every command in `text` whose line starts with `prefix` (`evalscope perf`), with its
/// continuation lines (a trailing backslash, or a quote still open), as words.
fn commands(text: &str, prefix: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if !lines[i].trim_start().starts_with(prefix) {
            i += 1;
            continue;
        }
        let mut command = lines[i].to_string();
        i += 1;
        loop {
            match shell_words(&command) {
                Ok(words) => {
                    out.push(words);
                    break;
                }
                Err(e) => {
                    assert!(
                        i < lines.len(),
                        "{prefix} command never ends ({e}): {command}"
                    );
                    command.push('\n');
                    command.push_str(lines[i]);
                    i += 1;
                }
            }
        }
    }
    out
}

fn seed(doc: &str, prefix: &str, index: usize) -> Vec<String> {
    commands(doc, prefix)
        .into_iter()
        .nth(index)
        .unwrap_or_else(|| panic!("no {prefix} command {index}"))
}

#[test]
fn shell_words_split_like_a_shell() {
    let w = |s: &str| shell_words(s).unwrap();
    assert_eq!(w("a  b\tc"), ["a", "b", "c"]);
    assert_eq!(w("a \\\n  b"), ["a", "b"]);
    assert_eq!(
        w("--x '{\n  \"k\": 1\n}' y"),
        ["--x", "{\n  \"k\": 1\n}", "y"]
    );
    assert_eq!(
        w(r#""a \"q\" \$HOME \n" b\ c"#),
        ["a \"q\" $HOME \\n", "b c"]
    );
    assert_eq!(w("--api-key $KEY # a comment"), ["--api-key", "$KEY"]);
    assert_eq!(w("a#b ''"), ["a#b", ""]);
    assert!(shell_words("a '{").is_err());
    assert!(shell_words("a \"b").is_err());
    assert!(shell_words("a \\").is_err());
}

/// Both documents are found whole: six evalscope commands (one an elided `evalscope perf ...`
/// example) and eight AIPerf ones, each with its continuation lines, the multi-line JSON
/// argument in one word. Each has a test below.
#[test]
fn every_seed_command_is_extracted() {
    let e = commands(EVALSCOPE, "evalscope perf");
    let a = commands(AIPERF, "aiperf profile");
    assert_eq!(e.len(), 6);
    assert_eq!(a.len(), 8);
    for c in &e {
        assert_eq!(&c[..2], ["evalscope", "perf"]);
    }
    for c in &a {
        assert_eq!(&c[..2], ["aiperf", "profile"]);
        assert!(
            c.iter().any(|w| w == "--random-seed"),
            "whole command: {c:?}"
        );
    }
    let live = &e[3];
    let args = &live[live.iter().position(|w| w == "--multi-turn-args").unwrap() + 1];
    let v: Value = serde_json::from_str(args).unwrap();
    assert_eq!(v["first_turn_length"], 8192);
    assert_eq!(live.last().unwrap(), r#"{"ignore_eos": true}"#);
}

/// The vendored copies are the shared seeds, when those are beside the repository (CI has them).
#[test]
fn vendored_seeds_equal_the_shared_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/seeds");
    if !shared.is_dir() {
        eprintln!(
            "note: {} not found; vendored seeds not compared",
            shared.display()
        );
        return;
    }
    let names = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".txt"))
            .collect();
        v.sort();
        v
    };
    let vendored = root.join("tests/data/seeds");
    assert_eq!(names(&shared), names(&vendored));
    for name in names(&shared) {
        assert!(
            std::fs::read(shared.join(&name)).unwrap()
                == std::fs::read(vendored.join(&name)).unwrap(),
            "tests/data/seeds/{name} differs from the shared seed: copy it again"
        );
    }
}

// ----- fixtures -----

/// Pseudo-random text of `words` words from a small vocabulary (code, prose, non-ASCII).
fn text(state: &mut u64, words: usize) -> String {
    const WORDS: [&str; 16] = [
        "def",
        "parser",
        "return",
        "self.value",
        "Traceback",
        "(most",
        "recent",
        "call)",
        "über",
        "→",
        "404",
        "src/lib.rs:12",
        "assert",
        "x_y\n",
        "the",
        "configuration",
    ];
    (0..words)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            WORDS[(*state % WORDS.len() as u64) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// custom_multi_turn: five conversations, conversation i with i + 1 user turns.
fn custom_conversations(dir: &Path) -> PathBuf {
    let mut lines = Vec::new();
    for i in 0..5 {
        let mut messages = vec![json!({"role": "system", "content": "You are terse."})];
        for k in 0..=i {
            if k > 0 {
                messages.push(json!({"role": "assistant", "content": format!("reply {k}")}));
            }
            messages.push(
                json!({"role": "user", "content": format!("conversation {i}, question {k}?")}),
            );
        }
        lines.push(Value::Array(messages).to_string());
    }
    let path = dir.join("my_conversations.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// User turns of custom conversation `i` (file order).
fn custom_turns(i: usize) -> usize {
    i + 1
}

/// Turns of pre-built swe_smith conversation `i`.
fn agentic_turns(i: usize) -> usize {
    i % 3 + 1
}

/// A pre-built swe_smith `agentic_dataset.json` of 120 conversations (the seed skips 100).
fn agentic_dataset(dir: &Path) -> PathBuf {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let conversations: Vec<Value> = (0..120)
        .map(|i| {
            let turns: Vec<Value> = (0..agentic_turns(i))
                .map(|k| {
                    json!({"messages": [
                        {"role": "user", "content": format!("conversation {i} turn {k}: {}", text(&mut state, 30))}
                    ]})
                })
                .collect();
            Value::Array(turns)
        })
        .collect();
    let doc = json!({
        "metadata": {"first_turn_length": 40, "subsequent_turn_length": 40, "min_turns": 1,
                     "max_turns": 3, "num_conversations": 120},
        "conversations": conversations,
    });
    let path = dir.join("agentic_dataset.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

/// SWE-smith trajectories for live construction, each with well over the 8192 + 7 × 1024
/// tokens (and the pre-filter's 3 characters per token) the seed's longest conversation needs.
fn trajectories(dir: &Path) -> PathBuf {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut lines = String::new();
    for i in 0..8 {
        let mut messages = vec![
            json!({"role": "system", "content": "You are a software engineering agent."}),
            json!({"role": "user", "content": [{"type": "text", "text": text(&mut state, 400)}]}),
        ];
        for k in 0..40 {
            messages.push(json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": format!("c{k}"), "type": "function",
                 "function": {"name": "bash", "arguments": "{\"cmd\": \"ls\"}"}}]}));
            messages.push(json!({"role": "tool", "tool_call_id": format!("c{k}"),
                                 "content": text(&mut state, 300)}));
        }
        lines.push_str(
            &json!({"instance_id": format!("repo__{i}"), "messages": messages}).to_string(),
        );
        lines.push('\n');
    }
    let path = dir.join("trajectories.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}

/// trie traces (lengths in tokens, tool latencies in seconds): turns = num_turns + 1.
fn trie_traces() -> Vec<Value> {
    vec![
        json!({"input_prompt_length": 300, "num_turns": 3,
               "assistant_response_length": [20, 8, 12], "tool_call_output_length": [60, 5, 40],
               "tool_call_latency": [0.01, 0.0, 0.02], "final_assistant_response_length": 30}),
        json!({"input_prompt_length": 200, "num_turns": 0,
               "assistant_response_length": [], "tool_call_output_length": [],
               "tool_call_latency": [], "final_assistant_response_length": 16}),
        json!({"input_prompt_length": 250, "num_turns": 5,
               "assistant_response_length": [4, 4, 6, 8, 3], "tool_call_output_length": [30, 12, 0, 25, 9],
               "tool_call_latency": [0, 0.01, 0, 0.01, 0], "final_assistant_response_length": 24}),
    ]
}

fn trie_file(dir: &Path) -> PathBuf {
    let lines: Vec<String> = trie_traces().iter().map(Value::to_string).collect();
    let path = dir.join("office_work_8k.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn trie_turns(i: usize) -> usize {
    let traces = trie_traces();
    traces[i % traces.len()]["num_turns"].as_u64().unwrap() as usize + 1
}

// ----- running a command -----

/// A seed command rewritten for the test and run against a sim.
struct SeedRun {
    /// The flags after `parley perf` / `parley profile`.
    args: Vec<String>,
    /// Each point's summary.json, by point label (one entry without a sweep).
    summaries: BTreeMap<String, Value>,
    sweep: Option<Value>,
    /// The sim's records of every request.
    records: Vec<Value>,
    /// The resources the same flags make (built here through the library): the points and
    /// the pool.
    res: Resources,
}

/// The sim's URL in the form of the command's `--url`.
fn sim_url(original: &str, port: u16) -> String {
    let placeholder = original.chars().all(|c| c.is_ascii_uppercase() || c == '_');
    let endpoint = ["/chat/completions", "/completions"]
        .into_iter()
        .find(|p| original.trim_end_matches('/').ends_with(p))
        .map(|p| format!("/v1{p}"));
    if placeholder {
        // evalscope's OPENAI_API_COMPAT_URL: its default form.
        format!("http://127.0.0.1:{port}/v1/chat/completions")
    } else if !original.contains("://") {
        format!("127.0.0.1:{port}{}", endpoint.unwrap_or_default())
    } else {
        format!("http://127.0.0.1:{port}{}", endpoint.unwrap_or_default())
    }
}

/// Rewrites `words` (`evalscope perf …`) as described at the top of this file.
fn rewrite(words: &[String], port: u16, fixtures: &Path) -> (String, Vec<String>) {
    let sub = match words[0].as_str() {
        "evalscope" => "perf",
        "aiperf" => "profile",
        other => panic!("not a seed command: {other}"),
    };
    assert_eq!(words[1], if sub == "perf" { "perf" } else { "profile" });
    // Group the words into flags and their values.
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for w in &words[2..] {
        if w.starts_with("--") || w == "..." {
            groups.push((w.clone(), Vec::new()));
        } else {
            groups
                .last_mut()
                .unwrap_or_else(|| panic!("value {w} before any flag"))
                .1
                .push(w.clone());
        }
    }
    let dataset = groups
        .iter()
        .find(|(f, _)| f == "--dataset")
        .map(|(_, v)| v[0].clone());
    let fixture = |dataset: &str, prebuilt: bool| -> PathBuf {
        match dataset {
            "custom_multi_turn" => custom_conversations(fixtures),
            "swe_smith" if prebuilt => agentic_dataset(fixtures),
            "swe_smith" => trajectories(fixtures),
            d if d.starts_with("trie_") => trie_file(fixtures),
            d => panic!("no fixture for --dataset {d}"),
        }
    };
    let scale = |v: &str| -> String {
        let n: u64 = v.parse().unwrap();
        n.div_ceil(SCALE).to_string()
    };
    let mut args = Vec::new();
    for (flag, values) in &groups {
        let values: Vec<String> = match flag.as_str() {
            // An elided example: "..." stands for the usual flags; the target is the sim.
            "..." => {
                args.extend([
                    "--url".to_string(),
                    sim_url("OPENAI_API_COMPAT_URL", port),
                    "--model".into(),
                    "parley-sim".into(),
                ]);
                continue;
            }
            "--url" => vec![sim_url(&values[0], port)],
            "--model" => vec!["parley-sim".into()],
            "--api-key" => vec!["sk-parley-test".into()],
            "--tokenizer-path" => vec!["builtin".into()],
            "--dataset-path" => {
                let d = dataset.as_deref().expect("--dataset-path with --dataset");
                vec![fixture(d, true).to_string_lossy().into_owned()]
            }
            "--number" | "--conversation-num" => values.iter().map(|v| scale(v)).collect(),
            "--duration" => {
                let d: f64 = values[0].parse().unwrap();
                vec![(d / 20.0).to_string()]
            }
            _ => values.clone(),
        };
        args.push(flag.clone());
        args.extend(values);
    }
    let has = |flag: &str| groups.iter().any(|(f, _)| f == flag);
    if let Some(d) = &dataset {
        if (d == "swe_smith" || d.starts_with("trie_")) && !has("--dataset-path") {
            // evalscope downloads these; parley reads a local file.
            args.push("--dataset-path".into());
            args.push(fixture(d, false).to_string_lossy().into_owned());
        }
    }
    if has("--conversation-turn-delay-mean") && !has("--conversation-turn-delay-ratio") {
        args.extend(["--conversation-turn-delay-ratio".into(), "0.01".into()]);
    }
    (sub.to_string(), args)
}

fn find_files(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            find_files(&path, name, out);
        } else if path.file_name().is_some_and(|n| n == name) {
            out.push(path);
        }
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Runs seed command `words` against a fresh sim and checks what every command must satisfy:
/// exit 0, no failed request, every point's conversation count completed, and every point's
/// requests exactly the turns of the conversations planned (and the sim saw exactly those).
fn run_seed(words: &[String]) -> SeedRun {
    let fixtures = tempfile::tempdir().unwrap();
    let outputs = tempfile::tempdir().unwrap();
    let sim = Sim::start(&[
        "--ttft-base-ms",
        "1",
        "--itl-ms",
        "0",
        "--ttft-per-uncached-token-us",
        "0",
    ]);
    let (sub, args) = rewrite(words, sim.port, fixtures.path());
    let output = parley()
        .arg(&sub)
        .args(&args)
        .arg("--outputs-dir")
        .arg(outputs.path())
        .output()
        .expect("run parley");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "parley {sub} {}\nfailed: {}\nstdout:\n{}\nstderr:\n{stderr}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
    );
    let records = sim.stop();

    let mut paths = Vec::new();
    find_files(outputs.path(), "summary.json", &mut paths);
    let summaries: BTreeMap<String, Value> = paths
        .iter()
        .map(|p| {
            let s = read_json(p);
            (
                s["config"]["point"]["label"].as_str().unwrap().to_string(),
                s,
            )
        })
        .collect();
    let mut sweeps = Vec::new();
    find_files(outputs.path(), "sweep_summary.json", &mut sweeps);
    let sweep = sweeps.first().map(|p| read_json(p));

    let mut full = vec!["parley".to_string(), sub.clone()];
    full.extend(args.iter().cloned());
    // Resources::build creates its run directory: keep it out of the working tree.
    full.extend([
        "--outputs-dir".into(),
        outputs.path().join("rebuilt").display().to_string(),
    ]);
    let Command::Bench(bench_args) = Cli::try_parse_from(&full).unwrap().command else {
        unreachable!()
    };
    let res = Resources::build(&Plan::from_args(&bench_args).unwrap()).unwrap();

    // What every command must satisfy.
    assert_eq!(
        summaries.len(),
        res.points.len(),
        "one summary.json per point"
    );
    assert_eq!(
        sweep.is_some(),
        res.points.len() > 1,
        "sweep_summary.json for a sweep"
    );
    let pool = &res.conversations;
    let mut requests = 0;
    for point in &res.points {
        let s = &summaries[&point.label];
        let number = point
            .number
            .expect("every seed command has a conversation count");
        let turns: u64 = (0..number)
            .map(|j| pool[(j % pool.len() as u64) as usize].turns.len() as u64)
            .sum();
        assert_eq!(u(&s["requests"]["failed"]), 0, "{}", point.label);
        assert_eq!(u(&s["conversations"]["started"]), number, "{}", point.label);
        assert_eq!(
            u(&s["conversations"]["completed"]),
            number,
            "{}",
            point.label
        );
        assert_eq!(u(&s["requests"]["succeeded"]), turns, "{}", point.label);
        assert_eq!(s["config"]["endpoint"], "chat");
        requests += turns;
    }
    assert_eq!(
        records.len() as u64,
        requests,
        "the sim saw every request once"
    );
    assert!(records
        .iter()
        .all(|r| u(&r["status"]) == 200 && r["endpoint"] == "chat"));
    if res.points.len() == 1 {
        let s = &summaries[&res.points[0].label];
        let given = |flag: &str| {
            let i = args.iter().position(|a| a == flag)?;
            args[i + 1].parse::<f64>().ok()
        };
        let parallel = given("--parallel").or(given("--concurrency"));
        if parallel.is_some() {
            assert_eq!(s["config"]["point"]["parallel"].as_f64(), parallel);
        }
        if let Some(rate) = given("--request-rate") {
            assert_eq!(s["config"]["point"]["rate_per_s"].as_f64(), Some(rate));
        }
        // Think times and tool waits: turn k arrives no sooner than its delay after the sim
        // sent the end of turn k - 1 (the client reads that end a little later still).
        for (seq, turns) in by_conversation(&records) {
            let planned = &pool[(seq % pool.len() as u64) as usize].turns;
            assert_eq!(turns.len(), planned.len(), "conversation {seq}");
            for k in 1..turns.len() {
                let gap = u(&turns[k]["arrival_ns"]) - u(&turns[k - 1]["end_ns"]);
                assert!(
                    gap >= planned[k].delay_ns,
                    "conversation {seq} turn {k}: {gap} ns after the previous reply, \
                     planned delay {} ns",
                    planned[k].delay_ns
                );
            }
        }
    }
    SeedRun {
        args,
        summaries,
        sweep,
        records,
        res,
    }
}

impl SeedRun {
    fn flag(&self, name: &str) -> Option<&str> {
        let i = self.args.iter().position(|a| a == name)?;
        self.args.get(i + 1).map(String::as_str)
    }

    /// The one summary of a run without a sweep.
    fn summary(&self) -> &Value {
        assert_eq!(self.summaries.len(), 1);
        self.summaries.values().next().unwrap()
    }

    /// Turns per conversation, as the sim saw them (a run without a sweep: one id per
    /// conversation).
    fn sim_turns(&self) -> BTreeMap<u64, usize> {
        by_conversation(&self.records)
            .into_iter()
            .map(|(c, turns)| (c, turns.len()))
            .collect()
    }

    /// Each conversation's turn count (a run without a sweep) equals `expected(seq)`.
    fn assert_turns(&self, expected: impl Fn(u64) -> usize) {
        let number = self.res.points[0].number.unwrap();
        let turns = self.sim_turns();
        assert_eq!(turns.len() as u64, number);
        for (conv, n) in turns {
            assert_eq!(n, expected(conv), "conversation {conv}");
        }
    }
}

// ----- the evalscope document -----

const E: &str = "evalscope perf";

/// random_multi_turn: 20 → 4 conversations of 2-5 turns, each user turn 256-512 tokens.
#[test]
fn evalscope_random_multi_turn() {
    let run = run_seed(&seed(EVALSCOPE, E, 0));
    assert_eq!(run.flag("--number"), Some("4"));
    assert_eq!(u(&run.summary()["conversations"]["completed"]), 4);
    for (conv, n) in run.sim_turns() {
        assert!((2..=5).contains(&n), "conversation {conv}: {n} turns");
    }
    for r in &run.records {
        let t = r["message_tokens"].as_array().unwrap();
        for user in t.iter().step_by(2) {
            assert!((256..=512).contains(&u(user)), "{r}");
        }
    }
}

/// custom_multi_turn: 100 → 20 conversations cycling the 5 of the file, cut to 3 turns.
#[test]
fn evalscope_custom_multi_turn() {
    let run = run_seed(&seed(EVALSCOPE, E, 1));
    assert_eq!(u(&run.summary()["conversations"]["completed"]), 20);
    run.assert_turns(|seq| custom_turns(seq as usize % 5).min(3));
}

/// swe_smith pre-built: skip 100, then 200 → 40 conversations (the 20 left, twice).
#[test]
fn evalscope_swe_smith_prebuilt() {
    let run = run_seed(&seed(EVALSCOPE, E, 2));
    assert_eq!(run.flag("--dataset-offset"), Some("100"));
    assert_eq!(u(&run.summary()["conversations"]["completed"]), 40);
    run.assert_turns(|seq| agentic_turns(100 + seq as usize % 20));
}

/// swe_smith live: a sweep of (10, 20) → (2, 4) conversations at parallel 5 and 10, two run
/// directories and a sweep summary; turns 3-8, the first exactly 8192 tokens, later ones 1024
/// (the last may be shorter if a trajectory runs out), replies 512 tokens.
#[test]
fn evalscope_swe_smith_live_sweep() {
    let run = run_seed(&seed(EVALSCOPE, E, 3));
    let labels: Vec<&str> = run.summaries.keys().map(String::as_str).collect();
    assert_eq!(labels, ["parallel_10_number_4", "parallel_5_number_2"]);
    let rows = run.sweep.as_ref().unwrap()["points"].as_array().unwrap();
    let points: Vec<(u64, u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                u(&r["parallel"]),
                u(&r["number"]),
                u(&r["conversations_completed"]),
            )
        })
        .collect();
    assert_eq!(points, [(5, 2, 2), (10, 4, 4)]);
    for (label, s) in &run.summaries {
        assert_eq!(f(&s["output_tokens"]["mean"]), 512.0, "{label}");
    }
    for (seq, conv) in run.res.conversations.iter().enumerate() {
        let lengths: Vec<u32> = conv.turns.iter().map(|t| t.delta_tokens.unwrap()).collect();
        assert!((3..=8).contains(&lengths.len()), "conversation {seq}");
        assert_eq!(lengths[0], 8192, "conversation {seq}: first_turn_length");
        let last = lengths.len() - 1;
        assert!(lengths[1..last].iter().all(|&n| n == 1024), "{lengths:?}");
        assert!(lengths[last] <= 1024 && lengths[last] > 0, "{lengths:?}");
    }
    // The sim counted the first turn's messages as exactly 8192 tokens.
    for r in run.records.iter().filter(|r| turn_of(r) == 0) {
        let tokens: u64 = r["message_tokens"].as_array().unwrap().iter().map(u).sum();
        assert_eq!(tokens, 8192);
    }
    assert!(run
        .records
        .iter()
        .all(|r| u(&r["completion_tokens"]) == 512));
}

/// The elided example `evalscope perf ... --dataset trie_office_work --dataset-path …`: the
/// defaults (100 conversations) over the given traces, each num_turns + 1 requests.
#[test]
fn evalscope_trie_own_traces() {
    let words = seed(EVALSCOPE, E, 4);
    assert_eq!(words[2], "...");
    let run = run_seed(&words);
    assert_eq!(u(&run.summary()["conversations"]["completed"]), 100);
    run.assert_turns(|seq| trie_turns(seq as usize));
}

/// trie_office_work against DashScope's URL with an API key: 10 → 2 conversations (600 s →
/// 30 s never reached), num_turns + 1 requests each, streamed.
#[test]
fn evalscope_trie_office_work() {
    let run = run_seed(&seed(EVALSCOPE, E, 5));
    assert_eq!(run.flag("--duration"), Some("30"));
    let s = run.summary();
    assert_eq!(u(&s["conversations"]["completed"]), 2);
    assert_eq!(s["config"]["stream"], true);
    run.assert_turns(|seq| trie_turns(seq as usize));
}

// ----- the AIPerf document -----

const A: &str = "aiperf profile";

/// Turns per conversation exactly `--conversation-turn-mean` (stddev 0 or not given).
fn fixed_turns(index: usize, turns: usize, conversations: u64) {
    let run = run_seed(&seed(AIPERF, A, index));
    let s = run.summary();
    assert_eq!(s["config"]["stream"], true, "--streaming");
    assert_eq!(u(&s["conversations"]["completed"]), conversations);
    assert_eq!(u(&s["requests"]["succeeded"]), conversations * turns as u64);
    run.assert_turns(|_| turns);
}

/// Turns per conversation drawn from N(mean, stddev): every conversation as planned (checked in
/// [`run_seed`]), within 5 stddev of the mean, and (given enough conversations) varying.
fn variable_turns(index: usize, conversations: u64, mean: f64, stddev: f64) {
    let run = run_seed(&seed(AIPERF, A, index));
    assert_eq!(
        run.flag("--conversation-turn-mean"),
        Some(mean.to_string().as_str())
    );
    assert_eq!(
        run.flag("--conversation-turn-stddev"),
        Some(stddev.to_string().as_str())
    );
    assert_eq!(
        u(&run.summary()["conversations"]["completed"]),
        conversations
    );
    let turns = run.sim_turns();
    for (conv, &n) in &turns {
        assert!(
            n >= 1 && (n as f64) <= (mean + 5.0 * stddev).ceil(),
            "conversation {conv}: {n} turns"
        );
    }
    if let Some(mean_ms) = run.flag("--conversation-turn-delay-mean") {
        // Think times as AIPerf draws them, scaled by the ratio: 1 ms.. (mean + 6 sd) x 0.01.
        let mean_ms: f64 = mean_ms.parse().unwrap();
        let sd_ms: f64 = run
            .flag("--conversation-turn-delay-stddev")
            .unwrap()
            .parse()
            .unwrap();
        let max_ns = ((mean_ms + 6.0 * sd_ms) * 0.01 * 1e6) as u64;
        for conv in run.res.conversations.iter() {
            for t in &conv.turns[1..] {
                assert!(t.delay_ns > 0 && t.delay_ns <= max_ns, "{} ns", t.delay_ns);
            }
        }
    }
    if conversations >= 10 {
        let mut distinct: Vec<usize> = turns.values().copied().collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 1, "turn counts vary: {turns:?}");
    }
}

#[test]
fn aiperf_fixed_length() {
    fixed_turns(0, 3, 2);
}

#[test]
fn aiperf_variable_length() {
    variable_turns(1, 4, 5.0, 2.0);
}

#[test]
fn aiperf_turn_delays() {
    variable_turns(2, 3, 4.0, 1.0);
}

#[test]
fn aiperf_high_concurrency() {
    variable_turns(3, 20, 6.0, 2.0);
}

/// `--request-rate 5 --request-rate-mode poisson`: 30 → 6 conversations of 4 turns.
#[test]
fn aiperf_request_rate() {
    fixed_turns(4, 4, 6);
}

#[test]
fn aiperf_customer_support() {
    variable_turns(5, 10, 7.0, 2.0);
}

#[test]
fn aiperf_context_window() {
    variable_turns(6, 2, 15.0, 3.0);
}

#[test]
fn aiperf_burst() {
    fixed_turns(7, 3, 20);
}
