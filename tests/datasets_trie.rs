//! `--dataset trie_*` trace replay end to end against `parley sim`, checked from the sim's
//! record; and bad traces.

mod common;

use common::*;
use serde_json::{json, Value};

fn tokens(r: &Value) -> Vec<u64> {
    r["message_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(u)
        .collect()
}

fn write_lines(path: &std::path::Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Small traces in the trie schema (lengths in tokens, latencies in seconds).
fn traces() -> Vec<Value> {
    vec![
        json!({"input_prompt_length": 120, "num_turns": 2,
               "assistant_response_length": [5, 8], "tool_call_output_length": [30, 17],
               "tool_call_latency": [0.08, 0.03], "final_assistant_response_length": 11}),
        json!({"input_prompt_length": 64, "num_turns": 0,
               "assistant_response_length": [], "tool_call_output_length": [],
               "tool_call_latency": [], "final_assistant_response_length": 6}),
        json!({"input_prompt_length": 90, "num_turns": 3,
               "assistant_response_length": [3, 4, 0], "tool_call_output_length": [12, 0, 25],
               "tool_call_latency": [0, 0.05, 0.12], "final_assistant_response_length": 9,
               "extra_metadata": "ignored"}),
    ]
}

/// Each trace runs as num_turns + 1 turns: the first user prompt and each tool output exactly as
/// long as recorded (0 → 1), max_tokens the recorded response length (the final one last), and
/// each tool output sent no sooner than its recorded tool latency after the previous reply.
/// The file is given as a directory holding it under its real name.
#[test]
fn trie_traces_replay_lengths_caps_and_tool_waits() {
    let dir = tempfile::tempdir().unwrap();
    let ts = traces();
    write_lines(
        &dir.path().join("office_work_8k.jsonl"),
        &ts.iter().map(Value::to_string).collect::<Vec<_>>(),
    );
    let sim = Sim::start(&["--ttft-base-ms", "1", "--itl-ms", "0"]);
    let run = sim.bench(&[
        "--dataset",
        "trie_office_work",
        "--dataset-path",
        dir.path().to_str().unwrap(),
        "--number",
        "3",
        "--parallel",
        "3",
        "--extra-args",
        r#"{"ignore_eos": true}"#,
    ]);
    let records = sim.stop();
    let s = &run.summary;
    assert_eq!(u(&s["requests"]["failed"]), 0);
    assert_eq!(u(&s["conversations"]["completed"]), 3);
    let convs = by_conversation(&records);
    assert_eq!(convs.len(), 3);
    for (conv, turns) in &convs {
        let t = &ts[*conv as usize];
        let n = t["num_turns"].as_u64().unwrap() as usize;
        assert_eq!(turns.len(), n + 1, "trace {conv}: num_turns + 1 requests");
        for (k, r) in turns.iter().enumerate() {
            let roles: Vec<&str> = r["message_roles"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap())
                .collect();
            assert_eq!(roles.len(), 2 * k + 1);
            assert!(roles.iter().step_by(2).all(|&x| x == "user"));
            let want_tokens = if k == 0 {
                t["input_prompt_length"].as_u64().unwrap()
            } else {
                t["tool_call_output_length"][k - 1].as_u64().unwrap()
            };
            assert_eq!(
                tokens(r)[2 * k],
                want_tokens.max(1),
                "trace {conv} turn {k}: prompt tokens"
            );
            let want_cap = if k < n {
                t["assistant_response_length"][k].as_u64().unwrap()
            } else {
                t["final_assistant_response_length"].as_u64().unwrap()
            };
            assert_eq!(
                u(&r["max_tokens"]),
                want_cap.max(1),
                "trace {conv} turn {k}"
            );
            assert_eq!(u(&r["completion_tokens"]), want_cap.max(1), "ignore_eos");
            if k > 0 {
                let wait_ns = (t["tool_call_latency"][k - 1].as_f64().unwrap() * 1e9) as u64;
                let gap = u(&r["arrival_ns"]) - u(&turns[k - 1]["end_ns"]);
                assert!(
                    gap >= wait_ns,
                    "trace {conv} turn {k}: sent {gap} ns after the reply, tool latency {wait_ns}"
                );
            }
        }
    }
}

/// Bad traces stop the run before anything is sent, naming line and field; --skip-invalid
/// leaves them out and the report counts them.
#[test]
fn bad_traces_are_named_and_skippable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agentic_coding_8k.jsonl");
    let ts = traces();
    let mut short = ts[0].clone();
    short["tool_call_latency"] = json!([0.1]);
    let mut negative = ts[0].clone();
    negative["tool_call_output_length"][1] = json!(-3);
    let mut wrong_type = ts[2].clone();
    wrong_type["num_turns"] = json!("3");
    write_lines(
        &path,
        &[
            ts[0].to_string(),
            short.to_string(),
            negative.to_string(),
            "{\"input_prompt_length\": 5,".to_string(),
            wrong_type.to_string(),
            ts[1].to_string(),
        ],
    );
    let p = path.to_str().unwrap();
    let e = bench_err(&["--dataset", "trie_agentic_coding", "--dataset-path", p]);
    assert!(e.contains("4 invalid entries; nothing was sent"), "{e}");
    assert!(
        e.contains("line 2, field `tool_call_latency`: has 1 items, expected num_turns = 2"),
        "{e}"
    );
    assert!(
        e.contains("line 3, field `tool_call_output_length[1]`: must not be negative"),
        "{e}"
    );
    assert!(e.contains("line 4: invalid JSON"), "{e}");
    assert!(
        e.contains("line 5, field `num_turns`: expected a non-negative integer"),
        "{e}"
    );

    let sim = Sim::start(&["--ttft-base-ms", "1", "--itl-ms", "0"]);
    let run = sim.bench(&[
        "--dataset",
        "trie_agentic_coding",
        "--dataset-path",
        p,
        "--skip-invalid",
        "--number",
        "2",
        "--max-turns",
        "2",
    ]);
    let records = sim.stop();
    assert_eq!(u(&run.summary["config"]["skipped_invalid"]), 4);
    let convs = by_conversation(&records);
    // The valid traces, in file order: lines 1 and 6; --max-turns 2 truncates the first.
    assert_eq!(convs.len(), 2);
    assert_eq!(convs[&0].len(), 2);
    assert_eq!(tokens(&convs[&0][0]), [120]);
    assert_eq!(convs[&1].len(), 1);
    assert_eq!(tokens(&convs[&1][0]), [64]);

    let e = bench_err(&[
        "--dataset",
        "trie_code_qa",
        "--dataset-path",
        p,
        "--prefix-length",
        "10",
    ]);
    assert!(e.contains("--prefix-length"), "{e}");
    let e = bench_err(&["--dataset", "trie_code_qa"]);
    assert!(e.contains("--dataset-path"), "{e}");
}
