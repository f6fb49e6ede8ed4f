//! AIPerf dataset formats (multi_turn, single_turn, mooncake_trace, bailian_trace) end to end:
//! `parley bench` reads a small generated file and runs it against `parley sim`; every check is
//! against the sim's own record of what arrived.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use parley::sim::record::{content_hash, hash_hex};
use parley::tokenizer::Tokenizer;
use serde_json::Value;

/// Fast replies: the tests measure what was sent, not the timing model.
const SIM: &[&str] = &["--ttft-base-ms", "1", "--itl-ms", "0", "--seed", "3"];

fn tok() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::builtin().expect("builtin loads"))
}

fn write(dir: &Path, name: &str, lines: &[Value]) -> PathBuf {
    let path = dir.join(name);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
        .collect()
}

fn tokens(r: &Value) -> Vec<u64> {
    r["message_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(u)
        .collect()
}

/// The sim saw turn `k` arrive at least `delay_ms` after turn `k-1` ended.
fn assert_waited(turns: &[Value], k: usize, delay_ms: u64) {
    let gap_ns = u(&turns[k]["arrival_ns"]) - u(&turns[k - 1]["end_ns"]);
    assert!(
        gap_ns >= delay_ms * 1_000_000,
        "turn {k}: {gap_ns} ns after the previous reply, expected at least {delay_ms} ms"
    );
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn multi_turn_turns_lengths_max_tokens_delays_and_extra() {
    let dir = tempfile::tempdir().unwrap();
    let texts = [
        "The quick brown fox jumps over the lazy dog.",
        "Tell me more about foxes, please.",
        "And dogs?",
        "A single question in its own session.",
        "First of two.",
        "Second of two, sent after a recorded timestamp gap.",
    ];
    let path = write(
        dir.path(),
        "multi.jsonl",
        &[
            serde_json::json!({"session_id": "a", "turns": [
                {"text": texts[0], "output_length": 5},
                {"text": texts[1], "delay": 150, "output_length": 7,
                 "extra": {"ignore_eos": true, "min_tokens": 2}},
                {"text": texts[2], "delay": 20},
            ]}),
            serde_json::json!({"session_id": "b", "turns": [{"text": texts[3]}]}),
            serde_json::json!({"session_id": "c", "turns": [
                {"text": texts[4], "timestamp": 1000},
                {"text": texts[5], "timestamp": 1120, "output_length": 3},
            ]}),
        ],
    );
    let sim = Sim::start(SIM);
    let run = sim.bench(&[
        "--dataset",
        "multi_turn",
        "--dataset-path",
        path_str(&path),
        "--number",
        "3",
        "--parallel",
        "3",
        "--max-tokens",
        "9",
    ]);
    let records = sim.stop();
    assert_eq!(u(&run.summary["requests"]["failed"]), 0);
    let convs = by_conversation(&records);
    let counts: Vec<usize> = convs.values().map(Vec::len).collect();
    assert_eq!(counts, [3, 1, 2]);

    // Live history: turn k sends 2k+1 messages; user messages are the file's texts, exact.
    let user_texts = [&texts[0..3], &texts[3..4], &texts[4..6]];
    for (c, turns) in convs.values().enumerate() {
        for (k, r) in turns.iter().enumerate() {
            let hashes = strings(&r["message_hashes"]);
            assert_eq!(hashes.len(), 2 * k + 1);
            let text = user_texts[c][k];
            assert_eq!(hashes[2 * k], hash_hex(content_hash(text)));
            assert_eq!(tokens(r)[2 * k], tok().count(text) as u64);
        }
    }
    let max: Vec<Vec<u64>> = convs
        .values()
        .map(|t| t.iter().map(|r| u(&r["max_tokens"])).collect())
        .collect();
    assert_eq!(max, [vec![5, 7, 9], vec![9], vec![9, 3]]);
    let a = &convs[&0];
    assert_waited(a, 1, 150);
    assert_waited(a, 2, 20);
    assert_waited(&convs[&2], 1, 120);
    // `extra` reached this turn's body only.
    assert_eq!(a[1]["ignore_eos"], true);
    assert_eq!(u(&a[1]["min_tokens"]), 2);
    assert_eq!(
        u(&a[1]["completion_tokens"]),
        7,
        "ignore_eos: exactly max_tokens"
    );
    assert_eq!(a[0]["ignore_eos"], false);
    assert_eq!(a[2]["min_tokens"], Value::Null);
}

#[test]
fn single_turn_sessions_run_in_order_without_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "single.jsonl",
        &[
            serde_json::json!({"text": "s one", "session_id": "s", "output_length": 4}),
            serde_json::json!({"text": "alone"}),
            serde_json::json!({"text": "s two", "session_id": "s", "delay": 120}),
            serde_json::json!({"texts": ["t one", "more"], "session_id": 9, "timestamp": 5000}),
            serde_json::json!({"text": "t two", "session_id": 9, "timestamp": 5100, "role": "user"}),
        ],
    );
    let sim = Sim::start(SIM);
    sim.bench(&[
        "--dataset",
        "single_turn",
        "--dataset-path",
        path_str(&path),
        "--number",
        "3",
        "--parallel",
        "3",
        "--max-tokens",
        "6",
    ]);
    let records = sim.stop();
    let convs = by_conversation(&records);
    let counts: Vec<usize> = convs.values().map(Vec::len).collect();
    assert_eq!(counts, [2, 1, 2]);
    // Every request carries only its own message.
    let sent: Vec<Vec<String>> = convs
        .values()
        .map(|t| {
            t.iter()
                .map(|r| {
                    let h = strings(&r["message_hashes"]);
                    assert_eq!(h.len(), 1, "no history in single_turn sessions");
                    h[0].clone()
                })
                .collect()
        })
        .collect();
    let h = |s: &str| hash_hex(content_hash(s));
    assert_eq!(
        sent,
        [
            vec![h("s one"), h("s two")],
            vec![h("alone")],
            // Several texts are text parts of one message; the sim joins parts with \n.
            vec![h("t one\nmore"), h("t two")],
        ]
    );
    assert_eq!(u(&convs[&0][0]["max_tokens"]), 4);
    assert_eq!(u(&convs[&0][1]["max_tokens"]), 6);
    assert_waited(&convs[&0], 1, 120);
    assert_waited(&convs[&2], 1, 100);
}

/// hash_ids become token blocks: every prompt is exactly input_length tokens, and a session that
/// shares leading hash_ids with an earlier one finds exactly those blocks in the sim's prefix
/// cache. Sizes are chosen so the expectation is exact: the sim caches 16-token blocks of the
/// rendered prompt, which starts with 3 template tokens (`<|im_start|>user\n`); hash blocks of 32
/// tokens make a shared prefix of 3 + 32k tokens, whose whole 16-token blocks are exactly 32k.
#[test]
fn mooncake_hash_ids_give_exact_prompts_and_shared_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "mooncake.jsonl",
        &[
            // 32+32+32+4 tokens.
            serde_json::json!({"input_length": 100, "hash_ids": [1, 2, 3, 4], "output_length": 4}),
            // Shares blocks 1 and 2 (64 tokens), then its own 26-token block.
            serde_json::json!({"input_length": 90, "hash_ids": [1, 2, 5], "output_length": 4}),
            // Two rows of one session: blocks and then padding only.
            serde_json::json!({"session_id": "s", "input_length": 75, "hash_ids": [10, 11], "output_length": 3}),
            serde_json::json!({"session_id": "s", "input_length": 20, "delay": 100, "output_length": 5}),
            // Whole blocks plus 10 fresh tokens; shares block 1 (32 tokens).
            serde_json::json!({"input_length": 42, "hash_ids": [1], "timestamp": 3}),
        ],
    );
    let sim = Sim::start(SIM);
    sim.bench(&[
        "--dataset",
        "mooncake_trace",
        "--dataset-path",
        path_str(&path),
        "--isl-block-size",
        "32",
        "--number",
        "4",
        // One at a time, so each session finds the earlier ones' blocks cached.
        "--parallel",
        "1",
        "--max-tokens",
        "8",
    ]);
    let records = sim.stop();
    let convs = by_conversation(&records);
    let counts: Vec<usize> = convs.values().map(Vec::len).collect();
    assert_eq!(counts, [1, 1, 2, 1]);
    let first_user = |c: u64| tokens(&convs[&c][0])[0];
    assert_eq!(
        [first_user(0), first_user(1), first_user(2), first_user(3)],
        [100, 90, 75, 42]
    );
    let s = &convs[&2];
    assert_eq!(tokens(&s[1]).len(), 3, "live history: u1, reply, u2");
    assert_eq!(tokens(&s[1])[2], 20);
    assert_eq!(tokens(&s[1])[1], 3, "the live reply of output_length 3");
    assert_waited(s, 1, 100);
    let max: Vec<u64> = records.iter().map(|r| u(&r["max_tokens"])).collect();
    assert_eq!(max, [4, 4, 3, 5, 8]);
    // Prefix cache: the first request shares nothing; the second finds blocks 1 and 2.
    assert_eq!(u(&convs[&0][0]["cached_tokens"]), 0);
    assert_eq!(u(&convs[&1][0]["cached_tokens"]), 64);
    assert_eq!(u(&convs[&2][0]["cached_tokens"]), 0);
    assert_eq!(u(&convs[&3][0]["cached_tokens"]), 32);
}

#[test]
fn mooncake_messages_rows_are_sent_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let first = serde_json::json!([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a prime."},
    ]);
    let second = serde_json::json!([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven."},
        {"role": "user", "content": "Another one?"},
    ]);
    let path = write(
        dir.path(),
        "messages.jsonl",
        &[
            serde_json::json!({"session_id": "m", "messages": first, "output_length": 3}),
            serde_json::json!({"session_id": "m", "messages": second, "delay": 80,
                               "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}),
            serde_json::json!({"payload": {"model": "ignored", "messages": [{"role": "user", "content": "From a payload."}], "max_tokens": 2, "ignore_eos": true}}),
        ],
    );
    let sim = Sim::start(SIM);
    sim.bench(&[
        "--dataset",
        "mooncake_trace",
        "--dataset-path",
        path_str(&path),
        "--number",
        "2",
        "--parallel",
        "1",
    ]);
    let records = sim.stop();
    let convs = by_conversation(&records);
    let m = &convs[&0];
    assert_eq!(m.len(), 2);
    for (r, arr) in m.iter().zip([&first, &second]) {
        let want: Vec<String> = arr
            .as_array()
            .unwrap()
            .iter()
            .map(|x| hash_hex(content_hash(x["content"].as_str().unwrap())))
            .collect();
        assert_eq!(
            strings(&r["message_hashes"]),
            want,
            "the file's array, as it is"
        );
        let roles: Vec<String> = arr
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["role"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(strings(&r["message_roles"]), roles);
    }
    assert_eq!(u(&m[0]["max_tokens"]), 3);
    assert_waited(m, 1, 80);
    // The payload's body fields reach the request; its model does not replace --model.
    let p = &convs[&1][0];
    assert_eq!(u(&p["max_tokens"]), 2);
    assert_eq!(p["ignore_eos"], true);
    assert_eq!(u(&p["completion_tokens"]), 2);
}

/// Bailian rows chain through parent_chat_id; each request is its whole prompt (input_length,
/// from hash_ids of 16 tokens), so the child finds its parent's blocks cached.
#[test]
fn bailian_trace_chains_sessions_and_shares_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bailian.jsonl",
        &[
            serde_json::json!({"chat_id": 11, "parent_chat_id": -1, "timestamp": 10.0, "input_length": 48, "output_length": 4, "turn": 1, "hash_ids": [1, 2, 3]}),
            serde_json::json!({"chat_id": 12, "parent_chat_id": -1, "timestamp": 10.1, "input_length": 20, "output_length": 2, "turn": 1, "hash_ids": [7, 8]}),
            serde_json::json!({"chat_id": 13, "parent_chat_id": 11, "timestamp": 10.25, "input_length": 70, "output_length": 5, "turn": 2, "hash_ids": [1, 2, 3, 4, 5]}),
        ],
    );
    let sim = Sim::start(SIM);
    sim.bench(&[
        "--dataset",
        "bailian_trace",
        "--dataset-path",
        path_str(&path),
        "--number",
        "2",
        "--parallel",
        "1",
    ]);
    let records = sim.stop();
    let convs = by_conversation(&records);
    let counts: Vec<usize> = convs.values().map(Vec::len).collect();
    assert_eq!(counts, [2, 1]);
    let a = &convs[&0];
    assert_eq!(tokens(&a[0]), [48]);
    assert_eq!(tokens(&a[1]), [70], "the whole prompt, one message");
    assert_eq!(tokens(&convs[&1][0]), [20]);
    assert_eq!(u(&a[0]["max_tokens"]), 4);
    assert_eq!(u(&a[1]["max_tokens"]), 5);
    assert_waited(a, 1, 250);
    // 3 template tokens + 48 shared: three whole 16-token blocks.
    assert_eq!(u(&a[0]["cached_tokens"]), 0);
    assert_eq!(u(&a[1]["cached_tokens"]), 48);
}

#[test]
fn bad_hash_ids_stop_the_run_naming_line_and_field_unless_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad.jsonl",
        &[
            serde_json::json!({"input_length": 40, "hash_ids": [1]}),
            // Three 32-token blocks cannot make 50 tokens: two would already hold 64.
            serde_json::json!({"input_length": 50, "hash_ids": [1, 2, 3]}),
            serde_json::json!({"input_length": 30, "output_length": -2}),
            serde_json::json!({"input_length": 12}),
        ],
    );
    let sim = Sim::start(SIM);
    let url = sim.url();
    let base = [
        "--url",
        &url,
        "--model",
        "parley-sim",
        "--cores",
        "1",
        "--dataset",
        "mooncake_trace",
        "--dataset-path",
        path_str(&path),
        "--isl-block-size",
        "32",
        "--number",
        "2",
    ];
    let err = bench_err(&base);
    assert!(err.contains("2 invalid entries"), "{err}");
    assert!(err.contains("line 2, field `hash_ids`"), "{err}");
    assert!(err.contains("input_length is 50"), "{err}");
    assert!(err.contains("line 3, field `output_length`"), "{err}");

    let mut skipping = base[6..].to_vec();
    skipping.push("--skip-invalid");
    let run = sim.bench(&skipping);
    let records = sim.stop();
    assert_eq!(records.len(), 2, "nothing was sent by the failed run");
    assert_eq!(u(&run.summary["config"]["skipped_invalid"]), 2);
    // Both valid entries were sent, each once; the two go out together on two slots, so the
    // sim may record either first.
    let mut lens: Vec<u64> = records.iter().map(|r| tokens(r)[0]).collect();
    lens.sort_unstable();
    assert_eq!(lens, [12, 40]);
}

/// Issue 9: flags a source does not read were silently ignored; now the run stops before
/// sending, naming the flag, the source and what it does read.
#[test]
fn flags_the_source_does_not_read_stop_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let trace = write(
        dir.path(),
        "t.jsonl",
        &[serde_json::json!({"input_length": 8, "hash_ids": [1]})],
    );
    let err = bench_err(&[
        "--dataset",
        "mooncake_trace",
        "--dataset-path",
        path_str(&trace),
        "--prefix-length",
        "100",
    ]);
    assert!(
        err.contains(
            "--prefix-length is not read by --dataset mooncake_trace (it reads: --isl-block-size)"
        ),
        "{err}"
    );
    let err = bench_err(&["--dataset", "random_multi_turn", "--isl-block-size", "64"]);
    assert!(
        err.contains(
            "--isl-block-size is not read by --dataset random_multi_turn (it reads: --min-turns,"
        ),
        "{err}"
    );
}
