//! File datasets (custom_multi_turn, share_gpt_*_multi_turn) end to end: `parley bench` against
//! `parley sim` over TCP, each request checked against the file it came from via the sim's
//! record (roles, content hashes, bare token counts, max_tokens, prompt and cached tokens).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use parley::sim::record::{content_hash, hash_hex};
use parley::tokenizer::{render_chat, Tokenizer};
use serde_json::{json, Value};

fn tok() -> &'static Tokenizer {
    static T: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
    T.get_or_init(|| Tokenizer::builtin().unwrap())
}

fn h(text: &str) -> String {
    hash_hex(content_hash(text))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// One message the file defines.
#[derive(Clone)]
struct Msg {
    role: &'static str,
    text: String,
}

fn m(role: &'static str, text: &str) -> Msg {
    Msg {
        role,
        text: text.to_string(),
    }
}

/// One turn as the file defines it: its new messages, its max_tokens, its recorded reply.
struct Expect {
    delta: Vec<Msg>,
    max_tokens: u64,
    reply: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum History {
    /// Replies in the history are the sim's own live replies.
    Live,
    /// Replies are the file's recorded ones (canned and verbatim send the same arrays).
    Recorded,
}

/// Checks every request against `expected` (conversation c of the record = `expected[c]`):
/// turn k sends turns 0..k's messages with a reply after each earlier turn, then turn k's.
fn check(records: &[Value], expected: &[Vec<Expect>], history: History) {
    let convs = by_conversation(records);
    assert_eq!(convs.len(), expected.len(), "conversations");
    for (c, turns) in &convs {
        let exp = &expected[*c as usize];
        assert_eq!(turns.len(), exp.len(), "conversation {c}: turns");
        for (k, r) in turns.iter().enumerate() {
            let mut roles = Vec::new();
            let mut hashes = Vec::new();
            let mut tokens = Vec::new();
            let mut texts: Vec<(&str, String)> = Vec::new();
            for (j, t) in exp[..=k].iter().enumerate() {
                for msg in &t.delta {
                    roles.push(msg.role.to_string());
                    hashes.push(h(&msg.text));
                    tokens.push(Some(tok().count(&msg.text) as u64));
                    texts.push((msg.role, msg.text.clone()));
                }
                if j < k {
                    roles.push("assistant".to_string());
                    tokens.push(None);
                    match history {
                        History::Live => hashes.push(r_reply_hash(&turns[j])),
                        History::Recorded => {
                            let reply = t.reply.as_deref().expect("recorded reply");
                            hashes.push(h(reply));
                            texts.push(("assistant", reply.to_string()));
                        }
                    }
                }
            }
            let ctx = format!("conversation {c} turn {k}");
            assert_eq!(strings(&r["message_roles"]), roles, "{ctx}: roles");
            assert_eq!(strings(&r["message_hashes"]), hashes, "{ctx}: contents");
            let got_tokens = r["message_tokens"].as_array().unwrap();
            for (i, want) in tokens.iter().enumerate() {
                if let Some(want) = want {
                    assert_eq!(u(&got_tokens[i]), *want, "{ctx}: message {i} tokens");
                }
            }
            assert_eq!(u(&r["max_tokens"]), exp[k].max_tokens, "{ctx}: max_tokens");
            if history == History::Recorded {
                // Every text is known: the prompt is exactly the rendered messages.
                let mut rendered = String::new();
                render_chat(texts.iter().map(|(r, t)| (*r, t.as_str())), &mut rendered);
                assert_eq!(
                    u(&r["prompt_tokens"]),
                    tok().encode(&rendered).len() as u64,
                    "{ctx}: prompt tokens"
                );
            }
        }
    }
}

fn r_reply_hash(r: &Value) -> String {
    r["reply_hash"].as_str().unwrap().to_string()
}

fn write(dir: &Path, name: &str, lines: &[Value]) -> PathBuf {
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    let path = dir.join(name);
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
    path
}

const FAST_SIM: [&str; 4] = ["--ttft-base-ms", "1", "--itl-ms", "1"];

/// The custom file of the live, canned and verbatim tests, and what each turn must send.
fn custom_file(dir: &Path) -> (PathBuf, Vec<Vec<Expect>>) {
    let lines = [
        json!([
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Which river is the longest?"},
            {"role": "assistant", "content": "The Nile, by most counts."},
            {"role": "user", "content": "And the widest?", "max_tokens": 5},
            {"role": "assistant", "content": "The Amazon."},
            {"role": "tool", "content": "{\"depth_m\": 100}", "tool_call_id": "c1", "max_tokens": 7},
            {"role": "user", "content": "How deep is it, then?"},
        ]),
        json!({"id": "b", "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Part one of a question."},
                {"type": "text", "text": "Part two."},
            ]},
            {"role": "assistant", "content": "Answered in two parts."},
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Second question"},
        ]}),
        json!([
            {"role": "user", "content": "A single question", "max_tokens": 9},
            {"role": "assistant", "content": "A recorded answer nobody resends."},
        ]),
    ];
    let path = write(dir, "custom.jsonl", &lines);
    let expected = vec![
        vec![
            Expect {
                delta: vec![
                    m("system", "You are terse."),
                    m("user", "Which river is the longest?"),
                ],
                max_tokens: 12,
                reply: Some("The Nile, by most counts.".into()),
            },
            Expect {
                delta: vec![m("user", "And the widest?")],
                max_tokens: 5,
                reply: Some("The Amazon.".into()),
            },
            Expect {
                delta: vec![
                    m("tool", "{\"depth_m\": 100}"),
                    m("user", "How deep is it, then?"),
                ],
                max_tokens: 7,
                reply: None,
            },
        ],
        vec![
            Expect {
                // Text parts are one message; the sim joins them with a newline.
                delta: vec![m("user", "Part one of a question.\nPart two.")],
                max_tokens: 12,
                reply: Some("Answered in two parts.".into()),
            },
            Expect {
                delta: vec![m("developer", "Be brief."), m("user", "Second question")],
                max_tokens: 12,
                reply: None,
            },
        ],
        vec![Expect {
            delta: vec![m("user", "A single question")],
            max_tokens: 9,
            reply: Some("A recorded answer nobody resends.".into()),
        }],
    ];
    (path, expected)
}

/// Live: turn k = earlier deltas + the sim's own replies + turn k's delta; per-turn max_tokens
/// reach the server, the run's --max-tokens elsewhere.
#[test]
fn custom_multi_turn_live_sends_deltas_and_live_replies() {
    let dir = tempfile::tempdir().unwrap();
    let (path, expected) = custom_file(dir.path());
    let sim = Sim::start(&FAST_SIM);
    let run = sim.bench(&[
        "--dataset",
        "custom_multi_turn",
        "--dataset-path",
        path.to_str().unwrap(),
        "--number",
        "3",
        "--parallel",
        "2",
        "--max-tokens",
        "12",
    ]);
    let records = sim.stop();
    assert_eq!(records.len(), 6);
    assert_eq!(u(&run.summary["requests"]["failed"]), 0);
    assert_eq!(u(&run.summary["config"]["pool"]), 3);
    assert_eq!(u(&run.summary["config"]["filtered"]), 0);
    check(&records, &expected, History::Live);
}

/// Canned and verbatim send the file's recorded replies as history (the same arrays), and with
/// a 1-token block and one conversation at a time the sim's cached tokens are exactly the longest
/// prefix any earlier prompt shares.
#[test]
fn custom_multi_turn_canned_and_verbatim_send_recorded_replies() {
    let dir = tempfile::tempdir().unwrap();
    let (path, expected) = custom_file(dir.path());
    for mode in ["canned", "verbatim"] {
        let sim = Sim::start(&[
            "--ttft-base-ms",
            "1",
            "--itl-ms",
            "1",
            "--block-size",
            "1",
            "--no-cache-output-tokens",
        ]);
        let run = sim.bench(&[
            "--dataset",
            "custom_multi_turn",
            "--dataset-path",
            path.to_str().unwrap(),
            "--context-mode",
            mode,
            "--number",
            "3",
            "--parallel",
            "1",
            "--max-tokens",
            "12",
        ]);
        let mut records = sim.stop();
        assert_eq!(run.summary["config"]["context_mode"], mode);
        assert_eq!(records.len(), 6, "{mode}");
        check(&records, &expected, History::Recorded);

        records.sort_by_key(|r| u(&r["request_id"]));
        let mut earlier: Vec<Vec<u32>> = Vec::new();
        let mut prompt_len_of = std::collections::HashMap::new();
        for r in &records {
            let c = u(&r["conversation"]) as usize;
            let k = u(&r["turn"]) as usize;
            let mut texts: Vec<(&str, &str)> = Vec::new();
            for (j, t) in expected[c][..=k].iter().enumerate() {
                texts.extend(t.delta.iter().map(|m| (m.role, m.text.as_str())));
                if j < k {
                    texts.push(("assistant", t.reply.as_deref().unwrap()));
                }
            }
            let mut rendered = String::new();
            render_chat(texts, &mut rendered);
            let ids = tok().encode(&rendered);
            let shared = earlier
                .iter()
                .map(|e| e.iter().zip(&ids).take_while(|(a, b)| a == b).count())
                .max()
                .unwrap_or(0);
            let want = shared.min(ids.len() - 1) as u64;
            assert_eq!(u(&r["cached_tokens"]), want, "{mode}: conv {c} turn {k}");
            if k > 0 {
                // The previous turn's whole prompt (ending in the assistant generation prompt)
                // is a prefix of this one: the history is sent unchanged.
                let prev = &prompt_len_of[&(c, k - 1)];
                assert!(
                    want >= *prev as u64,
                    "{mode}: conv {c} turn {k}: {want} < {prev}"
                );
            }
            prompt_len_of.insert((c, k), ids.len());
            earlier.push(ids);
        }
    }
}

fn single_turn_file(dir: &Path, n: usize) -> (PathBuf, Vec<String>) {
    let texts: Vec<String> = (0..n)
        .map(|i| format!("Question number {i} of the file"))
        .collect();
    let lines: Vec<Value> = texts
        .iter()
        .map(|t| json!([{"role": "user", "content": t}]))
        .collect();
    (write(dir, "singles.jsonl", &lines), texts)
}

/// Conversation c of a run is the c-th of the selection: skip --dataset-offset, then every N-th
/// from I.
#[test]
fn dataset_offset_and_shard_pick_file_conversations() {
    let dir = tempfile::tempdir().unwrap();
    let (path, texts) = single_turn_file(dir.path(), 7);
    for (shard, want) in [("1/2", [2, 4, 6]), ("0/2", [1, 3, 5])] {
        let sim = Sim::start(&FAST_SIM);
        sim.bench(&[
            "--dataset",
            "custom_multi_turn",
            "--dataset-path",
            path.to_str().unwrap(),
            "--dataset-offset",
            "1",
            "--shard",
            shard,
            "--number",
            "3",
            "--parallel",
            "1",
            "--max-tokens",
            "4",
        ]);
        let records = sim.stop();
        let convs = by_conversation(&records);
        assert_eq!(convs.len(), 3);
        for (c, turns) in &convs {
            assert_eq!(turns.len(), 1);
            assert_eq!(
                strings(&turns[0]["message_hashes"]),
                [h(&texts[want[*c as usize]])],
                "shard {shard}: conversation {c}"
            );
        }
    }
}

/// Bad lines stop the run before anything is sent, each named by line and field; with
/// --skip-invalid the rest run and the report counts the skipped ones.
#[test]
fn bad_lines_are_listed_and_skippable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    let lines = [
        r#"[{"role":"user","content":"good one"}]"#,
        r#"[{"role":"user","content":"x"},{"role":"bot","content":"y"}]"#,
        r#"[{"role":"user","content":"unterminated"#,
        r#"[{"role":"user","content":"good two"},{"role":"assistant","content":"r"},{"role":"user","content":"more"}]"#,
        r#"[{"role":"user","content":7}]"#,
        r#"[{"role":"user","content":"x","max_tokens":-1}]"#,
        r#"[{"role":"system","content":"no user here"}]"#,
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    let p = path.to_str().unwrap();

    let sim = Sim::start(&FAST_SIM);
    let url = sim.url();
    let err = bench_err(&[
        "--url",
        &url,
        "--model",
        "parley-sim",
        "--dataset",
        "custom_multi_turn",
        "--dataset-path",
        p,
        "--number",
        "2",
    ]);
    assert!(sim.stop().is_empty(), "nothing was sent");
    assert!(err.contains(&format!("{p}: 5 invalid entries")), "{err}");
    for want in [
        "line 2, field `[1].role`: unknown role \"bot\" (expected system, user, assistant, tool, developer)",
        "line 3: invalid JSON",
        "line 5, field `[0].content`: expected a string or an array of content parts, got a number",
        "line 6, field `[0].max_tokens`: must not be negative, got -1",
        "line 7: no user message",
    ] {
        assert!(err.contains(&format!("{p}: {want}")), "missing {want:?} in:\n{err}");
    }

    let sim = Sim::start(&FAST_SIM);
    let run = sim.bench(&[
        "--dataset",
        "custom_multi_turn",
        "--dataset-path",
        p,
        "--skip-invalid",
        "--number",
        "2",
        "--parallel",
        "1",
    ]);
    let records = sim.stop();
    assert_eq!(u(&run.summary["config"]["skipped_invalid"]), 5);
    let convs = by_conversation(&records);
    assert_eq!(convs.len(), 2);
    assert_eq!(strings(&convs[&0][0]["message_hashes"]), [h("good one")]);
    assert_eq!(convs[&1].len(), 2);
    assert_eq!(strings(&convs[&1][0]["message_hashes"]), [h("good two")]);
}

/// The ShareGPT conversations of both layouts: `texts[c]` = (human, gpt) pairs.
fn share_gpt_conversations() -> Vec<Vec<(String, String)>> {
    let long = "many words ".repeat(20); // 40 tokens: over --max-prompt-length 30
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    vec![
        pairs(&[
            ("What is Rust?", "A systems language."),
            ("Is it fast?", "Yes, as fast as C."),
            ("Third turn, cut by --max-turns", "unused"),
        ]),
        pairs(&[(long.as_str(), "filtered out"), ("second", "x")]),
        pairs(&[
            ("  Padded question  ", "  Padded answer  "),
            ("", "skipped with its empty human"),
            ("Follow-up", "Done."),
        ]),
        pairs(&[("", "no human text at all")]),
    ]
}

/// Both layouts: --max-turns truncates, the first-user-message length filter and conversations
/// with no human text count as filtered, texts are trimmed, gpt replies replay in canned mode.
#[test]
fn share_gpt_both_layouts_truncate_and_filter() {
    let dir = tempfile::tempdir().unwrap();
    let convs = share_gpt_conversations();
    let evalscope: Vec<Value> = convs
        .iter()
        .map(|c| {
            json!({"conversation_id": "x", "conversation": c.iter()
                .map(|(q, a)| json!({"human": q, "assistant": a}))
                .collect::<Vec<_>>()})
        })
        .collect();
    let original: Vec<Value> = convs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut msgs = Vec::new();
            for (q, a) in c {
                msgs.push(json!({"from": "human", "value": q}));
                msgs.push(json!({"from": "gpt", "value": a}));
            }
            json!({"id": i.to_string(), "conversations": msgs})
        })
        .collect();
    let jsonl = write(dir.path(), "common_en.jsonl", &evalscope);
    let array = dir.path().join("sharegpt.json");
    std::fs::write(&array, Value::Array(original).to_string()).unwrap();

    // Conversations 0 and 2 remain, two turns each.
    let user = |s: &str| m("user", s);
    let expected = || {
        vec![
            vec![
                Expect {
                    delta: vec![user("What is Rust?")],
                    max_tokens: 6,
                    reply: Some("A systems language.".into()),
                },
                Expect {
                    delta: vec![user("Is it fast?")],
                    max_tokens: 6,
                    reply: Some("Yes, as fast as C.".into()),
                },
            ],
            vec![
                Expect {
                    delta: vec![user("Padded question")],
                    max_tokens: 6,
                    reply: Some("Padded answer".into()),
                },
                Expect {
                    delta: vec![user("Follow-up")],
                    max_tokens: 6,
                    reply: Some("Done.".into()),
                },
            ],
        ]
    };
    // The evalscope layout drops the empty human with its answer; the original layout keeps
    // "skipped with its empty human" as a second gpt message of turn 1, which canned mode
    // replays — so canned is checked on the evalscope layout.
    for (name, path, mode) in [
        ("share_gpt_en_multi_turn", &jsonl, "live"),
        ("share_gpt_zh_multi_turn", &array, "live"),
        ("share_gpt_en_multi_turn", &jsonl, "canned"),
    ] {
        let sim = Sim::start(&FAST_SIM);
        let run = sim.bench(&[
            "--dataset",
            name,
            "--dataset-path",
            path.to_str().unwrap(),
            "--max-turns",
            "2",
            "--max-prompt-length",
            "30",
            "--number",
            "2",
            "--parallel",
            "2",
            "--max-tokens",
            "6",
            "--context-mode",
            mode,
        ]);
        let records = sim.stop();
        let s = &run.summary["config"];
        assert_eq!(
            u(&s["filtered"]),
            2,
            "{name} {mode}: length filter + no human"
        );
        assert_eq!(u(&s["pool"]), 2);
        assert_eq!(records.len(), 4);
        let history = if mode == "live" {
            History::Live
        } else {
            History::Recorded
        };
        check(&records, &expected(), history);
    }
}

#[test]
fn share_gpt_without_a_path_says_to_give_one() {
    let err = bench_err(&["--dataset", "share_gpt_en_multi_turn", "--number", "1"]);
    assert!(
        err.contains("--dataset-path") && err.contains("common_en_70k.jsonl"),
        "{err}"
    );
}

/// Verbatim against a server that reports no usage: the client's prompt estimate is every
/// message of the array, recorded replies included. A conversation with a turn that has no
/// recorded reply cannot be sent canned: the run stops naming it, or `--skip-invalid` leaves it
/// out and counts it.
#[test]
fn verbatim_estimates_whole_arrays_and_replyless_conversations_are_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "sg.jsonl",
        &[
            json!({"conversation": [
                {"human": "how do prefix caches work", "assistant": "they keep computed blocks"},
                {"human": "and eviction", "assistant": "least recently used first"},
                {"human": "thanks", "assistant": "you are welcome"}
            ]}),
            json!({"conversation": [
                {"human": "a question without an answer", "assistant": ""},
                {"human": "a second question", "assistant": "an answer"}
            ]}),
        ],
    );
    let path_s = path.to_str().unwrap();
    let base = [
        "--dataset",
        "share_gpt_en_multi_turn",
        "--dataset-path",
        path_s,
        "--number",
        "2",
        "--parallel",
        "1",
    ];

    let mut args = base.to_vec();
    args.extend([
        "--context-mode",
        "canned",
        "--url",
        "http://127.0.0.1:9",
        "-m",
        "m",
    ]);
    let err = bench_err(&args);
    assert!(
        err.contains("conversation 1") && err.contains("--skip-invalid"),
        "{err}"
    );

    let mut sim_flags = FAST_SIM.to_vec();
    sim_flags.extend(["--usage", "none"]);
    let sim = Sim::start(&sim_flags);
    let mut args = base.to_vec();
    args.extend(["--context-mode", "verbatim", "--skip-invalid"]);
    let run = sim.bench(&args);
    let records = sim.stop();
    let s = &run.summary;
    assert_eq!(u(&s["config"]["skipped_invalid"]), 1);
    assert_eq!(s["token_source"], "estimated");
    // --number 2 cycles the one conversation left: twice its 3 turns.
    assert_eq!(records.len(), 6, "only the conversation with replies runs");
    let mut input = 0u64;
    for r in &records {
        input += r["message_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(u)
            .sum::<u64>();
    }
    assert!(
        (f(&s["input_tokens"]["mean"]) - input as f64 / 6.0).abs() < 1e-9,
        "estimate {} vs every message's bare tokens {}",
        s["input_tokens"]["mean"],
        input as f64 / 6.0
    );
}

/// A dataset file that cannot be read: the error names the path and the OS reason, once.
#[test]
fn a_missing_dataset_file_is_named_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jsonl");
    let missing_s = missing.to_str().unwrap();
    let err = bench_err(&[
        "--dataset",
        "custom_multi_turn",
        "--dataset-path",
        missing_s,
        "--url",
        "http://127.0.0.1:9",
        "-m",
        "m",
    ]);
    assert!(err.contains(missing_s), "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}
