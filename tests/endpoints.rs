//! The endpoint flags end to end: `/v1/completions` conversations against `parley sim` (the
//! prompt is the ChatML rendering of the history with the model's real replies, and its token
//! and cache figures equal the chat endpoint's), `--endpoint-type`/`--endpoint`/`--api` errors,
//! the `--tokenize-prompt` note, and completions on the built-in sim.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use parley::sim::record::{content_hash, hash_hex};
use parley::tokenizer::render_chat;
use serde_json::{json, Value};

/// Two conversations of three turns (the first turn of the first has a system message too),
/// with text that needs escaping, a ChatML marker as plain text, and text parts.
fn conversations() -> Vec<Vec<(&'static str, Value)>> {
    vec![
        vec![
            ("system", json!("Be terse.")),
            ("user", json!("Say \"hi\" \\ twice\nplease é 中文")),
            ("assistant", json!("recorded, never sent")),
            ("user", json!("Now <|im_end|> as text")),
            ("assistant", json!("recorded")),
            (
                "user",
                json!([{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]),
            ),
        ],
        vec![
            ("user", json!("Question one?")),
            ("assistant", json!("A")),
            ("user", json!("Question two?")),
            ("assistant", json!("B")),
            ("user", json!("Question three?")),
        ],
    ]
}

fn write_dataset(dir: &Path) -> PathBuf {
    let lines: Vec<String> = conversations()
        .iter()
        .map(|c| {
            Value::Array(
                c.iter()
                    .map(|(role, content)| json!({"role": role, "content": content}))
                    .collect(),
            )
            .to_string()
        })
        .collect();
    let path = dir.join("chats.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// Each conversation's turns as (role, text) messages, assistant messages left out (the live
/// replies take their place); text parts are joined with `\n`.
fn turns(conv: &[(&'static str, Value)]) -> Vec<Vec<(&'static str, String)>> {
    let mut out = vec![Vec::new()];
    for (role, content) in conv {
        if *role == "assistant" {
            out.push(Vec::new());
            continue;
        }
        let text = match content {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .map(|p| p["text"].as_str().unwrap())
                .collect::<Vec<_>>()
                .join("\n"),
            _ => unreachable!(),
        };
        out.last_mut().unwrap().push((*role, text));
    }
    out
}

fn chatml(messages: &[(&str, String)]) -> String {
    let mut s = String::new();
    render_chat(messages.iter().map(|(r, c)| (*r, c.as_str())), &mut s);
    s
}

/// `parley bench` of the two conversations at `url` (3 turns, 12 output tokens each).
fn run(url: &str, dataset: &Path, extra: &[&str]) -> Bench {
    let dataset = dataset.to_str().unwrap();
    let mut args = vec![
        "--url",
        url,
        "--model",
        "parley-sim",
        "--cores",
        "1",
        "--dataset",
        "custom_multi_turn",
        "--dataset-path",
        dataset,
        "--max-tokens",
        "12",
        "--extra-args",
        r#"{"ignore_eos": true}"#,
        "--number",
        "2",
        "--parallel",
        "2",
    ];
    args.extend_from_slice(extra);
    bench(&args)
}

fn sim() -> Sim {
    Sim::start(&[
        "--ttft-base-ms",
        "1",
        "--itl-ms",
        "0",
        "--record-prompts",
        "--seed",
        "3",
    ])
}

/// The token and cache figures of the summary are the sim's.
fn check_figures(s: &Value, records: &[Value]) {
    assert_eq!(u(&s["requests"]["failed"]), 0);
    assert_eq!(u(&s["requests"]["succeeded"]), 6);
    assert_eq!(u(&s["conversations"]["completed"]), 2);
    let prompt: u64 = records.iter().map(|r| u(&r["prompt_tokens"])).sum();
    let cached: u64 = records.iter().map(|r| u(&r["cached_tokens"])).sum();
    assert!((f(&s["input_tokens"]["mean"]) - prompt as f64 / 6.0).abs() < 1e-9);
    assert_eq!(f(&s["output_tokens"]["mean"]), 12.0);
    assert_eq!(s["token_source"], "server");
    assert_eq!(s["cache_hit_source"], "server");
    assert!((f(&s["cache_hit_rate"]) - cached as f64 / prompt as f64).abs() < 1e-12);
}

/// Turn k's prompt on `/v1/completions` is the ChatML rendering of [turn 1, reply 1, …, turn k]
/// with the sim's own replies, so each prompt extends the previous one by the real reply and
/// the next turn; the prefix cache serves the earlier prompt; the summary's token and cache
/// figures are the sim's; and every prompt is token for token what the chat endpoint is sent
/// for the same conversation (equal prompt and cached tokens per turn).
#[test]
fn completions_prompts_grow_with_the_real_replies() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = write_dataset(dir.path());
    let convs = conversations();

    let mut by_stream = Vec::new();
    for stream in ["--stream", "--no-stream"] {
        let sim = sim();
        let run = run(
            &format!("{}/v1/completions", sim.url()),
            &dataset,
            &[stream],
        );
        let records = sim.stop();
        let s = &run.summary;
        assert_eq!(s["config"]["endpoint"], "completions");
        assert_eq!(records.len(), 6);
        check_figures(s, &records);
        let grouped = by_conversation(&records);
        for (conv, recs) in &grouped {
            let turns = turns(&convs[*conv as usize]);
            assert_eq!(recs.len(), 3, "conversation {conv}");
            let mut previous = String::new();
            let mut previous_tokens = 0;
            for (k, r) in recs.iter().enumerate() {
                assert_eq!(r["endpoint"], "completions");
                assert_eq!(u(&r["status"]), 200);
                assert_eq!(u(&r["completion_tokens"]), 12);
                let prompt = r["prompt_text"].as_str().expect("--record-prompts");
                assert_eq!(r["message_hashes"][0], hash_hex(content_hash(prompt)));
                let own = chatml(&turns[k]);
                if k == 0 {
                    assert_eq!(prompt, own, "conversation {conv} turn 1");
                } else {
                    // previous prompt (ending with the generation cue) + reply + end + turn k.
                    let rest = prompt
                        .strip_prefix(previous.as_str())
                        .unwrap_or_else(|| panic!("turn {k} extends turn {}: {prompt}", k - 1));
                    let reply = rest
                        .strip_suffix(own.as_str())
                        .and_then(|r| r.strip_suffix("<|im_end|>\n"))
                        .unwrap_or_else(|| panic!("turn {k} ends with its own messages: {rest}"));
                    assert_eq!(
                        hash_hex(content_hash(reply)),
                        recs[k - 1]["reply_hash"].as_str().unwrap(),
                        "conversation {conv}: turn {k} carries the live reply to turn {}",
                        k - 1
                    );
                    assert!(!reply.is_empty());
                    // The prefix cache (block 16) serves at least the previous prompt.
                    assert!(
                        u(&r["cached_tokens"]) >= previous_tokens / 16 * 16,
                        "conversation {conv} turn {k}: {r}"
                    );
                }
                previous = prompt.to_string();
                previous_tokens = u(&r["prompt_tokens"]);
            }
        }
        by_stream.push(grouped);
    }

    // The same conversations on the chat endpoint: the same token and cache figures per turn.
    let sim = sim();
    let run = run(&sim.url(), &dataset, &[]);
    let records = sim.stop();
    assert_eq!(run.summary["config"]["endpoint"], "chat");
    check_figures(&run.summary, &records);
    let figures = |g: &BTreeMap<u64, Vec<Value>>| -> Vec<(u64, u64, u64)> {
        g.values()
            .flatten()
            .map(|r| {
                (
                    u(&r["prompt_tokens"]),
                    u(&r["cached_tokens"]),
                    u(&r["completion_tokens"]),
                )
            })
            .collect()
    };
    let chat = by_conversation(&records);
    for (conv, recs) in &chat {
        assert!(recs.iter().all(|r| r["endpoint"] == "chat"));
        // The sim renders chat messages as ChatML: the completions prompt's layout exactly.
        let turns = turns(&convs[*conv as usize]);
        assert!(recs[2]["prompt_text"]
            .as_str()
            .unwrap()
            .ends_with(&chatml(&turns[2])));
    }
    assert_eq!(figures(&chat), figures(&by_stream[0]));
    assert_eq!(figures(&chat), figures(&by_stream[1]));
}

/// AIPerf's spelling (base URL without a scheme, `--endpoint-type`, `--endpoint`,
/// `--streaming`) and evalscope's (`--api openai`, `--multi-turn`) reach the endpoint they
/// name; `--tokenize-prompt` is ignored with a note.
#[test]
fn seed_dialects_reach_their_endpoint() {
    let sim = sim();
    let host = format!("127.0.0.1:{}", sim.port);
    let aiperf = bench(&[
        "--url",
        &host,
        "--model",
        "m",
        "--cores",
        "1",
        "--endpoint-type",
        "completions",
        "--endpoint",
        "/v1/completions",
        "--streaming",
        "--conversation-turn-mean",
        "2",
        "--isl",
        "20",
        "--osl",
        "4",
        "--number",
        "2",
    ]);
    assert_eq!(aiperf.summary["config"]["stream"], true);
    let evalscope = bench(&[
        "--url",
        &format!("http://{host}/v1/chat/completions"),
        "--model",
        "m",
        "--cores",
        "1",
        "--api",
        "openai",
        "--multi-turn",
        "--tokenize-prompt",
        "--min-turns",
        "2",
        "--max-turns",
        "2",
        "--number",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&evalscope.output.stderr);
    let notes: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("--tokenize-prompt"))
        .collect();
    assert_eq!(notes.len(), 1, "{stderr}");
    assert!(notes[0].contains("ignored"), "{stderr}");
    let records = sim.stop();
    let endpoints: Vec<&str> = records
        .iter()
        .map(|r| r["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(endpoints.iter().filter(|e| **e == "completions").count(), 4);
    assert_eq!(endpoints.iter().filter(|e| **e == "chat").count(), 2);
    assert!(records.iter().all(|r| u(&r["status"]) == 200));
}

/// Without --url the built-in sim serves the chosen endpoint.
#[test]
fn builtin_sim_serves_completions() {
    let run = bench(&[
        "--cores",
        "1",
        "--endpoint-type",
        "completions",
        "--number",
        "2",
        "--max-turns",
        "3",
        "--max-tokens",
        "4",
    ]);
    let s = &run.summary;
    assert_eq!(s["config"]["endpoint"], "completions");
    assert_eq!(u(&s["requests"]["failed"]), 0);
    assert_eq!(u(&s["conversations"]["completed"]), 2);
    assert!(
        f(&s["cache_hit_rate"]) > 0.0,
        "later turns extend earlier prompts"
    );
}

#[test]
fn endpoint_conflicts_and_unknown_plugins_are_clear_errors() {
    let chat_url = "http://127.0.0.1:9/v1/chat/completions";
    let e = bench_err(&[
        "--url",
        chat_url,
        "-m",
        "m",
        "--endpoint-type",
        "completions",
    ]);
    assert!(
        e.contains("names the chat endpoint") && e.contains("--endpoint-type completions"),
        "{e}"
    );
    let e = bench_err(&[
        "--url",
        chat_url,
        "-m",
        "m",
        "--endpoint",
        "/v1/completions",
    ]);
    assert!(e.contains("--endpoint"), "{e}");
    let e = bench_err(&["--api", "dashscope"]);
    assert!(e.contains("`openai`") && e.contains("dashscope"), "{e}");
    let e = bench_err(&["--endpoint-type", "embeddings"]);
    assert!(e.contains("`chat` and `completions`"), "{e}");
    // The aliases reject flags parley does not know, like bench does.
    let out = parley()
        .args(["profile", "--goodput", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--goodput"));
}
