//! Issue 10 §2, chat templates: with `--tokenizer-path DIR` whose directory has a chat template,
//! `parley sim` counts prompts with it, and the client's estimate (the server sends no usage:
//! `--usage none`) counts the same tokens. Fixtures: tests/data/templates (see its README).

mod common;

use std::path::{Path, PathBuf};

use common::{f, u, Sim};
use serde_json::{json, Value};

const FAST_SIM: [&str; 4] = ["--ttft-base-ms", "1", "--itl-ms", "1"];

/// A copy of `tests/data/templates/NAME` with a `tokenizer.json`: the builtin tokenizer's, plus
/// the special tokens the fixture's `added_tokens_decoder` lists.
fn fixture(name: &str) -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/templates")
        .join(name);
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let config: Value =
        serde_json::from_slice(&std::fs::read(src.join("tokenizer_config.json")).unwrap()).unwrap();
    let builtin = parley::tokenizer::Tokenizer::builtin().unwrap();
    let mut t: Value = serde_json::from_str(&builtin.hf().to_string(false).unwrap()).unwrap();
    if let Some(added) = config["added_tokens_decoder"].as_object() {
        for (id, a) in added {
            let mut a = a.clone();
            a["id"] = json!(id.parse::<u32>().unwrap());
            t["added_tokens"].as_array_mut().unwrap().push(a);
        }
    }
    std::fs::write(dir.path().join("tokenizer.json"), t.to_string()).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A synthetic multi-turn run (live replies) counted with `tokenizer`, against a sim that
/// counts with `sim_tokenizer` and sends no usage. Returns the summary and the sim's record.
fn live_run(sim_tokenizer: &Path, tokenizer: &Path) -> (Value, Vec<Value>) {
    let mut flags = FAST_SIM.to_vec();
    flags.extend(["--usage", "none", "--record-prompts", "--tokenizer-path"]);
    flags.push(s(sim_tokenizer));
    let sim = Sim::start(&flags);
    let run = sim.bench(&[
        "--tokenizer-path",
        s(tokenizer),
        "--number",
        "4",
        "--parallel",
        "2",
        "--min-turns",
        "3",
        "--max-turns",
        "3",
        "--min-prompt-length",
        "10",
        "--max-prompt-length",
        "30",
        "--max-tokens",
        "12",
        "--extra-args",
        r#"{"ignore_eos": true}"#,
    ]);
    let records = sim.stop();
    assert_eq!(records.len(), 12, "4 conversations of 3 turns");
    assert_eq!(run.summary["token_source"], "estimated");
    (run.summary, records)
}

fn mean(records: &[Value], of: impl Fn(&Value) -> u64) -> f64 {
    records.iter().map(of).sum::<u64>() as f64 / records.len() as f64
}

fn bare(r: &Value) -> u64 {
    r["message_tokens"].as_array().unwrap().iter().map(u).sum()
}

/// ChatML (Qwen 2.5's template, with its default system prompt): the sim counts the rendered
/// prompt; the client's estimate with the template equals it exactly, turn by turn (mean and
/// extremes); without it (the tokenizer.json file alone) the estimate is the bare messages',
/// lower by the template's overhead.
#[test]
fn chatml_estimate_equals_the_sims_count() {
    let dir = fixture("chatml");
    let (summary, records) = live_run(dir.path(), dir.path());
    for r in &records {
        let text = r["prompt_text"].as_str().unwrap();
        assert!(
            text.starts_with("<|im_start|>system\nYou are Qwen")
                && text.ends_with("<|im_start|>assistant\n"),
            "the sim renders with the directory's template: {text:?}"
        );
    }
    let input = &summary["input_tokens"];
    assert_eq!(u(&input["count"]), 12);
    let sim_mean = mean(&records, |r| u(&r["prompt_tokens"]));
    assert!(
        (f(&input["mean"]) - sim_mean).abs() < 1e-9,
        "client estimate {} vs the sim's prompt tokens {sim_mean}",
        input["mean"]
    );
    let prompts: Vec<u64> = records.iter().map(|r| u(&r["prompt_tokens"])).collect();
    assert_eq!(f(&input["min"]), *prompts.iter().min().unwrap() as f64);
    assert_eq!(f(&input["max"]), *prompts.iter().max().unwrap() as f64);

    let file = dir.path().join("tokenizer.json");
    let (plain, plain_records) = live_run(dir.path(), &file);
    let overhead = mean(&plain_records, |r| u(&r["prompt_tokens"]) - bare(r));
    assert!(overhead > 20.0, "system prompt and markers: {overhead}");
    let plain_mean = f(&plain["input_tokens"]["mean"]);
    assert!(
        (plain_mean - mean(&plain_records, bare)).abs() < 1e-9,
        "without the template the estimate is the bare messages' tokens"
    );
    assert!(
        (mean(&plain_records, |r| u(&r["prompt_tokens"])) - plain_mean - overhead).abs() < 1e-9,
        "lower by the template overhead"
    );
}

/// Llama 3 (`chat_template.jinja`, BOS from the template, content trimmed). With the dataset's
/// replies as history (canned) the estimate is exact; with live replies the trimmed reply's
/// first word may tokenize differently, so it is within a token per earlier reply.
#[test]
fn llama3_estimates_canned_exactly_and_live_closely() {
    let dir = fixture("llama3");
    let data = tempfile::tempdir().unwrap();
    let conversations = [
        json!({"conversation": [
            {"human": "how do prefix caches work", "assistant": " they keep computed blocks"},
            {"human": "  and eviction?\n", "assistant": "least recently used first"},
            {"human": "thanks", "assistant": "you are welcome"}
        ]}),
        json!({"conversation": [
            {"human": "a question", "assistant": "an answer"},
            {"human": "a second question", "assistant": "a second answer"}
        ]}),
    ];
    let path: PathBuf = data.path().join("sg.jsonl");
    let lines: Vec<String> = conversations.iter().map(Value::to_string).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let mut flags = FAST_SIM.to_vec();
    flags.extend(["--usage", "none", "--record-prompts", "--tokenizer-path"]);
    flags.push(s(dir.path()));
    let sim = Sim::start(&flags);
    let run = sim.bench(&[
        "--tokenizer-path",
        s(dir.path()),
        "--dataset",
        "share_gpt_en_multi_turn",
        "--dataset-path",
        s(&path),
        "--context-mode",
        "canned",
        "--number",
        "2",
        "--parallel",
        "1",
    ]);
    let records = sim.stop();
    assert_eq!(records.len(), 5);
    for r in &records {
        let text = r["prompt_text"].as_str().unwrap();
        assert_eq!(text.matches("<|begin_of_text|>").count(), 1, "{text:?}");
    }
    let sim_mean = mean(&records, |r| u(&r["prompt_tokens"]));
    let input = &run.summary["input_tokens"];
    assert!(
        (f(&input["mean"]) - sim_mean).abs() < 1e-9,
        "canned: client estimate {} vs the sim's {sim_mean}",
        input["mean"]
    );

    let (live, records) = live_run(dir.path(), dir.path());
    let sim_mean = mean(&records, |r| u(&r["prompt_tokens"]));
    let got = f(&live["input_tokens"]["mean"]);
    // Turns 1, 2, 3 have 0, 1, 2 earlier replies: at most 1 token off on average.
    assert!(
        (got - sim_mean).abs() <= 1.0,
        "live: client estimate {got} vs the sim's {sim_mean}"
    );
    let bare_mean = mean(&records, bare);
    assert!(
        sim_mean - bare_mean > 10.0,
        "the template adds tokens: {sim_mean} vs {bare_mean}"
    );
}

/// A template that refuses the dataset's conversations fails the run before any request,
/// naming the template file and the conversation.
#[test]
fn a_template_that_refuses_the_dataset_is_a_clear_error() {
    let dir = fixture("chatml");
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{% if messages | length > 3 %}{{ raise_exception('too many messages') }}{% endif %}\
         {% for m in messages %}{{ m.content }}{% endfor %}",
    )
    .unwrap();
    let err = common::bench_err(&[
        "--url",
        "http://127.0.0.1:9",
        "-m",
        "m",
        "--tokenizer-path",
        s(dir.path()),
        "--number",
        "1",
        "--min-turns",
        "3",
        "--max-turns",
        "3",
    ]);
    assert!(
        err.contains("chat_template.jinja")
            && err.contains("conversation 0")
            && err.contains("turn 3")
            && err.contains("too many messages"),
        "{err}"
    );
}
