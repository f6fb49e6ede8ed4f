//! `--dataset swe_smith` end to end: live construction from a trajectories JSONL and the
//! pre-built file `parley dataset build swe-smith` writes, checked against `parley sim`'s record.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

const ARGS: &str = r#"{"first_turn_length": 200, "subsequent_turn_length": [20, 50]}"#;

/// A SWE-smith-like trajectories file: system prompt, an issue as content parts, then
/// assistant tool calls and tool outputs (every other line with `messages` as a JSON string,
/// as the Hugging Face export has it). Each has far more user/tool text than the turns need.
fn trajectories(dir: &Path, n: usize) -> PathBuf {
    const WORDS: [&str; 14] = [
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
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut text = |words: usize| -> String {
        (0..words)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                WORDS[(state % WORDS.len() as u64) as usize]
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut lines = String::new();
    for i in 0..n {
        let mut msgs = vec![
            json!({"role": "system", "content": "You are a software engineering agent."}),
            json!({"role": "user", "content": [{"type": "text", "text": text(120)}]}),
        ];
        for k in 0..12 {
            msgs.push(json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": format!("c{k}"), "type": "function",
                 "function": {"name": "bash", "arguments": "{\"cmd\": \"ls\"}"}}]}));
            msgs.push(json!({"role": "tool", "tool_call_id": format!("c{k}"),
                             "content": text(20 + (i * 7 + k * 13) % 60)}));
        }
        let messages = if i % 2 == 0 {
            Value::Array(msgs)
        } else {
            Value::String(Value::Array(msgs).to_string())
        };
        lines.push_str(
            &json!({"instance_id": format!("repo__{i}"), "messages": messages}).to_string(),
        );
        lines.push('\n');
    }
    let path = dir.join("trajectories.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}

/// One request as the sim saw it: message roles and content hashes.
type Sent = (Vec<String>, Vec<String>);

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|h| {
            h.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| h.to_string())
        })
        .collect()
}

/// Bare tokens of the turn's new messages: those after the last assistant message.
fn delta_tokens(r: &Value) -> (usize, u64) {
    let roles = strs(&r["message_roles"]);
    let tokens: Vec<u64> = r["message_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(u)
        .collect();
    let start = roles
        .iter()
        .rposition(|r| r == "assistant")
        .map_or(0, |i| i + 1);
    assert!(roles[start..].iter().all(|r| r == "user"), "{roles:?}");
    (roles.len() - start, tokens[start..].iter().sum())
}

fn sim() -> Sim {
    Sim::start(&["--ttft-base-ms", "1", "--itl-ms", "0", "--seed", "3"])
}

fn run_args<'a>(path: &'a str, number: &'a str) -> Vec<&'a str> {
    vec![
        "--dataset",
        "swe_smith",
        "--dataset-path",
        path,
        "--dataset-args",
        ARGS,
        "--min-turns",
        "2",
        "--max-turns",
        "4",
        "--seed",
        "11",
        "--number",
        number,
        "--parallel",
        "3",
        "--max-tokens",
        "8",
        "--extra-args",
        r#"{"ignore_eos": true}"#,
    ]
}

/// Live construction: turns per conversation within [min, max]; turn 1 is exactly
/// first_turn_length tokens and every later turn exactly the conversation's one
/// subsequent_turn_length (sampled in [20, 50]); the history is resent so the sim's prefix
/// cache holds all of the previous turn; the user messages are the library's own build.
#[test]
fn live_construction_turns_and_exact_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let traj = trajectories(dir.path(), 20);
    let sim = sim();
    let run = sim.bench(&run_args(traj.to_str().unwrap(), "8"));
    let records = sim.stop();
    assert_eq!(u(&run.summary["requests"]["failed"]), 0);
    let convs = by_conversation(&records);
    assert_eq!(convs.len(), 8);
    let mut subsequent_seen = std::collections::BTreeSet::new();
    for (c, turns) in &convs {
        assert!(
            (2..=4).contains(&turns.len()),
            "conversation {c}: {} turns",
            turns.len()
        );
        let mut subsequent = None;
        for (k, r) in turns.iter().enumerate() {
            assert_eq!(turn_of(r), k as u64);
            assert_eq!(u(&r["max_tokens"]), 8);
            assert_eq!(u(&r["completion_tokens"]), 8);
            let (messages, tokens) = delta_tokens(r);
            assert!(messages >= 1);
            if k == 0 {
                assert_eq!(tokens, 200, "conversation {c} turn 1");
            } else {
                let s = *subsequent.get_or_insert(tokens);
                assert_eq!(
                    tokens, s,
                    "conversation {c} turn {k}: one length per conversation"
                );
                assert!(
                    (20..=50).contains(&tokens),
                    "conversation {c} turn {k}: {tokens}"
                );
                // Everything before this turn's messages (previous prompt + its reply, but the
                // reply's last token, whose KV a server has not computed) is a cached prefix, in
                // whole 16-token blocks.
                let prev = &turns[k - 1];
                let history = u(&prev["prompt_tokens"]) + u(&prev["completion_tokens"]) - 1;
                let cached = u(&r["cached_tokens"]);
                assert!(
                    cached == history / 16 * 16,
                    "conversation {c} turn {k}: cached {cached}, history {history}"
                );
            }
        }
        subsequent_seen.extend(subsequent);
    }
    assert!(
        subsequent_seen.len() > 2,
        "subsequent lengths vary: {subsequent_seen:?}"
    );

    // The same conversations, built in-process by the library, message for message.
    let tokenizer = parley::tokenizer::Tokenizer::builtin().unwrap();
    let params =
        parley::workload::swe_smith::dataset_params(Some(2), Some(4), 11, Some(ARGS)).unwrap();
    let selection = parley::workload::Selection {
        limit: 8,
        ..Default::default()
    };
    let (built, _) = parley::workload::build(
        "swe_smith",
        Some(&traj),
        &tokenizer,
        &params,
        selection,
        false,
        parley::workload::input::DEFAULT_MAX_LINE_BYTES,
    )
    .unwrap();
    for (c, turns) in &convs {
        let planned = &built.conversations[*c as usize].turns;
        assert_eq!(turns.len(), planned.len());
        let last = turns.last().unwrap();
        let hashes = strs(&last["message_hashes"]);
        let roles = strs(&last["message_roles"]);
        let sent: Vec<&String> = hashes
            .iter()
            .zip(&roles)
            .filter(|(_, r)| *r == "user")
            .map(|(h, _)| h)
            .collect();
        let expected: Vec<String> = planned
            .iter()
            .flat_map(|t| {
                let arr: Vec<Value> =
                    serde_json::from_slice(&[b"[".as_slice(), &t.delta_bytes(), b"]"].concat())
                        .unwrap();
                arr.into_iter().map(|m| {
                    parley::sim::record::hash_hex(parley::sim::record::content_hash(
                        m["content"].as_str().unwrap(),
                    ))
                })
            })
            .collect();
        assert_eq!(sent.len(), expected.len(), "conversation {c}");
        assert!(
            sent.iter().zip(&expected).all(|(a, b)| *a == b),
            "conversation {c}"
        );
    }
}

/// `parley dataset build swe-smith` then running the file sends exactly what live construction
/// with the same arguments sends: same conversations, turns and message hashes.
#[test]
fn built_file_runs_identically_to_live_construction() {
    let dir = tempfile::tempdir().unwrap();
    let traj = trajectories(dir.path(), 16);
    let built = dir.path().join("agentic_dataset.json");
    let out = parley()
        .args(["dataset", "build", "swe-smith", "--dataset-path"])
        .arg(&traj)
        .args([
            "--dataset-args",
            ARGS,
            "--min-turns",
            "2",
            "--max-turns",
            "4",
            "--seed",
            "11",
        ])
        .args(["--number", "6", "--output"])
        .arg(&built)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("wrote 6 conversations"), "{stdout}");
    assert!(stdout.contains("turn 1 tokens: 200..=200"), "{stdout}");
    let doc: Value = serde_json::from_slice(&std::fs::read(&built).unwrap()).unwrap();
    assert_eq!(doc["conversations"].as_array().unwrap().len(), 6);

    let record = |path: &Path| -> BTreeMap<u64, Vec<Sent>> {
        let sim = sim();
        sim.bench(&run_args(path.to_str().unwrap(), "6"));
        by_conversation(&sim.stop())
            .into_iter()
            .map(|(c, turns)| {
                let t = turns
                    .iter()
                    .map(|r| (strs(&r["message_roles"]), strs(&r["message_hashes"])))
                    .collect();
                (c, t)
            })
            .collect()
    };
    let live = record(&traj);
    let from_file = record(&built);
    assert_eq!(live.len(), 6);
    assert_eq!(live, from_file);
}

/// Bad input stops the run before anything is sent, naming file, line and field; the builder
/// says the same.
#[test]
fn bad_input_names_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let traj = trajectories(dir.path(), 3);
    let mut text = std::fs::read_to_string(&traj).unwrap();
    text.push_str("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"bot\", \"content\": \"b\"}]}\n");
    text.push_str("{\"messages\": \"[{\\\"role\\\": \\\"user\\\", \\\"content\\\": 5}]\"}\n");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, text).unwrap();
    let p = bad.to_str().unwrap();
    let err = bench_err(&[
        "--dataset",
        "swe_smith",
        "--dataset-path",
        p,
        "--dataset-args",
        ARGS,
    ]);
    assert!(err.contains("2 invalid entries; nothing was sent"), "{err}");
    assert!(
        err.contains(&format!(
            "{p}: line 4, field `messages[1].role`: unknown role \"bot\""
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{p}: line 5, field `messages[0].content`")),
        "{err}"
    );

    let out = parley()
        .args([
            "dataset",
            "build",
            "swe-smith",
            "--dataset-path",
            p,
            "--dataset-args",
            ARGS,
            "--output",
        ])
        .arg(dir.path().join("never.json"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("line 4, field `messages[1].role`"),
        "{stderr}"
    );
    assert!(!dir.path().join("never.json").exists());

    // A pre-built file with an assistant message in a turn, and an unknown --dataset-args key.
    let pre = dir.path().join("agentic_dataset.json");
    std::fs::write(&pre, serde_json::to_string_pretty(&json!({"metadata": {}, "conversations": [
        [{"messages": [{"role": "user", "content": "hi"}]}],
        [{"messages": [{"role": "user", "content": "hi"}]}, {"messages": [{"role": "assistant", "content": "x"}]}]
    ]})).unwrap()).unwrap();
    let err = bench_err(&[
        "--dataset",
        "swe_smith",
        "--dataset-path",
        pre.to_str().unwrap(),
    ]);
    assert!(
        err.contains("item 1, field `[1].messages[0].role`"),
        "{err}"
    );
    let err = bench_err(&[
        "--dataset",
        "swe_smith",
        "--dataset-path",
        p,
        "--dataset-args",
        r#"{"first_turn": 5}"#,
    ]);
    assert!(
        err.contains("--dataset-args: first_turn: unknown key"),
        "{err}"
    );
}
