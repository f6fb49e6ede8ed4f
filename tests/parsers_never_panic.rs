//! Property tests: the parsers that read bytes from outside never panic.
//!
//! - the SSE framer: a stream split at arbitrary points gives the same events as the stream fed
//!   whole (valid streams of data/comment/field lines with mixed line ends, and arbitrary bytes);
//! - the chunk parser: arbitrary bytes, arbitrary JSON and chunk-shaped JSON with arbitrary
//!   values in every key it reads;
//! - every dataset format: files of valid lines mutated at random, arbitrary JSON and arbitrary
//!   bytes, with and without `--skip-invalid`, under a small and the default `--max-line-bytes`.
//!
//! Bounded (case counts below) so the set runs in seconds in CI; `scripts/fuzz.sh` runs the same
//! parsers under cargo-fuzz for as long as you like. Numbers in generated JSON are kept small:
//! a valid line asking for a billion-token prompt is a real (if absurd) request, not a parser
//! bug, and would only measure memory.

use std::path::Path;

use parley::chunk::ChunkParser;
use parley::sse::{SseError, SseFramer};
use parley::tokenizer::Tokenizer;
use parley::workload::{self, DatasetParams, Selection};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// `n`, or `PROPTEST_CASES` when set (a longer local run: `PROPTEST_CASES=20000 cargo test
/// --test parsers_never_panic`).
fn cases(n: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(n)
}

// ---------- SSE framer ----------

/// One line of an event stream, before its terminator.
fn sse_line() -> impl Strategy<Value = Vec<u8>> {
    let text = proptest::collection::vec(
        prop_oneof![
            Just(b'a'),
            Just(b' '),
            Just(b':'),
            Just(b'{'),
            Just(b'"'),
            any::<u8>()
        ],
        0..24,
    )
    .prop_map(|v| {
        v.into_iter()
            .filter(|&b| b != b'\n' && b != b'\r')
            .collect::<Vec<u8>>()
    });
    (0u8..6, text).prop_map(|(kind, t)| match kind {
        0 | 1 => [b"data: ".as_slice(), &t].concat(),
        2 => [b"data:".as_slice(), &t].concat(),
        3 => [b": ".as_slice(), &t].concat(),
        4 => [b"event: ".as_slice(), &t].concat(),
        _ => Vec::new(), // a blank line ends the event
    })
}

/// A stream: lines with `\n`, `\r\n` or `\r` ends, maybe a BOM first, maybe no final end.
fn sse_stream() -> impl Strategy<Value = Vec<u8>> {
    let valid = (
        any::<bool>(),
        proptest::collection::vec((sse_line(), 0u8..3), 0..20),
        any::<bool>(),
    )
        .prop_map(|(bom, lines, cut_end)| {
            let mut out = Vec::new();
            if bom {
                out.extend_from_slice(b"\xEF\xBB\xBF");
            }
            for (line, end) in lines {
                out.extend_from_slice(&line);
                out.extend_from_slice(match end {
                    0 => b"\n".as_slice(),
                    1 => b"\r\n",
                    _ => b"\r",
                });
            }
            if cut_end {
                out.pop();
            }
            out
        });
    prop_oneof![
        3 => valid,
        1 => proptest::collection::vec(any::<u8>(), 0..200),
    ]
}

/// Feeds `pieces` then finishes: the events and whether the framer reported an error.
fn frame(framer: &mut SseFramer, pieces: &[&[u8]]) -> (Vec<Vec<u8>>, bool) {
    let mut events = Vec::new();
    let mut on = |d: &mut [u8]| -> Result<(), SseError> {
        events.push(d.to_vec());
        Ok(())
    };
    for p in pieces {
        if framer.feed(p, &mut on).is_err() {
            framer.reset();
            return (events, true);
        }
    }
    let err = framer.finish(&mut on).is_err();
    (events, err)
}

/// `bytes` cut at the given points (taken modulo its length, sorted).
fn split<'b>(bytes: &'b [u8], cuts: &[usize]) -> Vec<&'b [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for c in at {
        pieces.push(&bytes[start..c]);
        start = c;
    }
    pieces.push(&bytes[start..]);
    pieces
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(512), ..ProptestConfig::default() })]

    /// With the default bound nothing here is too large: split and whole give the same events,
    /// and a framer reused after `finish` frames the next stream the same again.
    #[test]
    fn sse_split_anywhere_gives_the_same_events(
        stream in sse_stream(),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut framer = SseFramer::new();
        let whole = frame(&mut framer, &[&stream]);
        prop_assert!(!whole.1);
        let pieces = split(&stream, &cuts);
        let parts = frame(&mut framer, &pieces);
        prop_assert_eq!(&parts, &whole);
        // One byte at a time.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        prop_assert_eq!(&frame(&mut framer, &bytes), &whole);
    }

    /// With a small bound, errors happen; the framer never panics, and when the split stream
    /// frames without error the whole one does too, with the same events.
    #[test]
    fn sse_small_bound_never_panics(
        stream in sse_stream(),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
        max in 0usize..40,
    ) {
        let mut framer = SseFramer::with_max_event(max);
        let whole = frame(&mut framer, &[&stream]);
        let parts = frame(&mut framer, &split(&stream, &cuts));
        if !parts.1 {
            prop_assert_eq!(&parts, &whole);
        }
    }
}

// ---------- chunk parser ----------

/// Arbitrary JSON with small numbers and short strings.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-5i64..300).prop_map(|n| json!(n)),
        (-1.0e3f64..1.0e3).prop_map(|f| json!(f)),
        any::<u64>().prop_map(|n| json!(n)),
        short_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((key(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn short_string() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just('a'),
            Just(' '),
            Just('"'),
            Just('\\'),
            Just('\n'),
            Just('é'),
            Just('\u{feff}'),
            any::<char>()
        ],
        0..12,
    )
    .prop_map(|c| c.into_iter().collect())
}

/// Object keys: the ones the parsers look for, and others.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("choices".to_string()),
        Just("delta".to_string()),
        Just("message".to_string()),
        Just("content".to_string()),
        Just("text".to_string()),
        Just("usage".to_string()),
        Just("error".to_string()),
        Just("finish_reason".to_string()),
        Just("role".to_string()),
        Just("messages".to_string()),
        Just("turns".to_string()),
        short_string(),
    ]
}

/// A chunk of the shape servers send, with arbitrary values where the parser looks.
fn chunk_shaped() -> impl Strategy<Value = Value> {
    (
        json_value(),
        json_value(),
        json_value(),
        json_value(),
        json_value(),
        json_value(),
    )
        .prop_map(|(content, reasoning, tools, finish, usage, object)| {
            json!({
                "id": "x", "object": object,
                "choices": [{"index": 0, "delta": {"content": content,
                    "reasoning_content": reasoning, "tool_calls": tools},
                    "message": {"content": content}, "text": content,
                    "finish_reason": finish}],
                "usage": usage,
            })
        })
}

fn parse_both(bytes: &[u8]) {
    let mut parser = ChunkParser::new();
    let mut reply = String::from("earlier ");
    let mut a = bytes.to_vec();
    let _ = parser.parse_chunk(&mut a, &mut reply);
    assert!(reply.starts_with("earlier "), "only appends");
    let mut b = bytes.to_vec();
    let _ = parser.parse_response(&mut b, &mut reply);
    let _ = ChunkParser::is_done(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1024), ..ProptestConfig::default() })]

    #[test]
    fn chunk_parser_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        parse_both(&bytes);
    }

    #[test]
    fn chunk_parser_never_panics_on_json(v in prop_oneof![json_value(), chunk_shaped()]) {
        parse_both(v.to_string().as_bytes());
    }
}

// ---------- dataset line parsers ----------

fn tok() -> &'static Tokenizer {
    static T: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
    T.get_or_init(|| Tokenizer::builtin().unwrap())
}

/// Every file format: its name, valid lines to mutate, and the parameters it needs.
fn formats() -> Vec<(&'static str, Vec<Value>, DatasetParams)> {
    let none = DatasetParams::default;
    let swe_args = json!({"first_turn_length": [5, 10], "subsequent_turn_length": [2, 4],
                          "chars_per_token": 1});
    vec![
        (
            "custom_multi_turn",
            vec![
                json!([{"role": "system", "content": "s"}, {"role": "user", "content": "u", "max_tokens": 3},
                       {"role": "assistant", "content": "a"}, {"role": "user", "content": [{"type": "text", "text": "p"}]}]),
                json!({"messages": [{"role": "user", "content": "x"}]}),
            ],
            none(),
        ),
        (
            "share_gpt_en_multi_turn",
            vec![
                json!({"conversation": [{"human": "h", "assistant": "a"}, {"human": "h2"}]}),
                json!({"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "v"},
                                         {"from": "gpt", "value": "g"}]}),
            ],
            none(),
        ),
        (
            "multi_turn",
            vec![
                json!({"session_id": "a", "turns": [{"text": "t", "delay": 5, "output_length": 3},
                       {"texts": ["a", "b"], "timestamp": 10, "max_tokens": 2, "extra": {"k": 1}}]}),
                json!({"session_id": 7, "turns": [{"text": "m", "role": "user"}]}),
            ],
            none(),
        ),
        (
            "single_turn",
            vec![
                json!({"text": "one", "output_length": 2, "timestamp": 0, "session_id": "s"}),
                json!({"texts": ["two"], "delay": 3, "session_id": "s"}),
            ],
            none(),
        ),
        (
            "mooncake_trace",
            vec![
                json!({"input_length": 40, "hash_ids": [1, 2], "output_length": 2, "timestamp": 0, "session_id": "a"}),
                json!({"text_input": "hello", "output_length": 2, "delay": 4, "session_id": "a"}),
                json!({"messages": [{"role": "user", "content": "m"}], "output_length": 1}),
                json!({"payload": {"messages": [{"role": "user", "content": "p"}], "max_tokens": 2}}),
            ],
            DatasetParams {
                isl_block_size: Some(32),
                ..none()
            },
        ),
        (
            "bailian_trace",
            vec![
                json!({"chat_id": 1, "parent_chat_id": -1, "timestamp": 0.0, "input_length": 32,
                       "output_length": 2, "turn": 1, "hash_ids": [1, 2]}),
                json!({"chat_id": 2, "parent_chat_id": 1, "timestamp": 0.5, "input_length": 40,
                       "output_length": 2, "turn": 2, "hash_ids": [1, 2, 3]}),
            ],
            DatasetParams {
                isl_block_size: Some(16),
                ..none()
            },
        ),
        (
            "trie_code_qa",
            vec![
                json!({"input_prompt_length": 20, "num_turns": 2, "assistant_response_length": [3, 1],
                       "tool_call_output_length": [7, 0], "tool_call_latency": [0.0, 0.01],
                       "final_assistant_response_length": 2}),
            ],
            none(),
        ),
        (
            "swe_smith",
            vec![
                json!({"instance_id": "r", "messages": [
                    {"role": "system", "content": "agent"},
                    {"role": "user", "content": [{"type": "text", "text": "fix the parser bug now"}]},
                    {"role": "assistant", "content": null, "tool_calls": []},
                    {"role": "tool", "content": "output long enough to cut turns from"}]}),
                json!({"messages": "[{\"role\": \"user\", \"content\": \"a JSON string of messages\"}]"}),
            ],
            DatasetParams {
                dataset_args: Some(swe_args.as_object().unwrap().clone()),
                min_turns: Some(1),
                max_turns: Some(2),
                ..none()
            },
        ),
    ]
}

/// Every node of `v` in preorder, as a mutable pointer path: replaces node `k % count` with `new`
/// (or, for an object member, removes it when `new` is null and `drop` is set).
fn replace_node(v: &mut Value, k: usize, new: Value, drop: bool) {
    fn count(v: &Value) -> usize {
        1 + match v {
            Value::Array(a) => a.iter().map(count).sum(),
            Value::Object(o) => o.values().map(count).sum(),
            _ => 0,
        }
    }
    fn walk(v: &mut Value, k: &mut usize, new: &mut Option<Value>, drop: bool) -> bool {
        if *k == 0 {
            *v = new.take().unwrap();
            return true;
        }
        *k -= 1;
        match v {
            Value::Array(a) => a.iter_mut().any(|c| walk(c, k, new, drop)),
            Value::Object(o) => {
                let keys: Vec<String> = o.keys().cloned().collect();
                for key in keys {
                    if *k == 0 && drop {
                        o.remove(&key);
                        return true;
                    }
                    if walk(o.get_mut(&key).unwrap(), k, new, drop) {
                        return true;
                    }
                }
                false
            }
            _ => false,
        }
    }
    let mut k = k % count(v);
    walk(v, &mut k, &mut Some(new), drop);
}

/// One line of a dataset file: a valid line mutated, arbitrary JSON, or arbitrary bytes.
#[derive(Clone, Debug)]
enum LineSpec {
    Mutated {
        which: usize,
        edits: Vec<(usize, Value, bool)>,
    },
    Json(Value),
    Bytes(Vec<u8>),
}

fn line_spec() -> impl Strategy<Value = LineSpec> {
    prop_oneof![
        6 => (any::<usize>(), proptest::collection::vec((any::<usize>(), json_value(), any::<bool>()), 0..3))
            .prop_map(|(which, edits)| LineSpec::Mutated { which, edits }),
        2 => json_value().prop_map(LineSpec::Json),
        1 => proptest::collection::vec(any::<u8>(), 0..48).prop_map(LineSpec::Bytes),
    ]
}

fn render(valid: &[Value], specs: &[LineSpec], bom: bool, crlf: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if bom {
        out.extend_from_slice(b"\xEF\xBB\xBF");
    }
    for s in specs {
        match s {
            LineSpec::Mutated { which, edits } => {
                let mut v = valid[which % valid.len()].clone();
                for (k, new, drop) in edits {
                    replace_node(&mut v, *k, new.clone(), *drop);
                }
                out.extend_from_slice(v.to_string().as_bytes());
            }
            LineSpec::Json(v) => out.extend_from_slice(v.to_string().as_bytes()),
            LineSpec::Bytes(b) => out.extend_from_slice(b),
        }
        out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
    }
    out
}

fn build_file(name: &str, path: &Path, params: &DatasetParams, skip: bool, max_line: usize) {
    let selection = Selection {
        limit: 8,
        ..Selection::default()
    };
    // Ok or a clear error: either is fine; a panic fails the test.
    let _ = workload::build(name, Some(path), tok(), params, selection, skip, max_line);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(48), ..ProptestConfig::default() })]

    #[test]
    fn dataset_parsers_never_panic(
        specs in proptest::collection::vec(line_spec(), 0..6),
        bom in any::<bool>(),
        crlf in any::<bool>(),
        small_limit in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let max_line = if small_limit { 96 } else { 64 << 20 };
        for (name, valid, params) in formats() {
            std::fs::write(&path, render(&valid, &specs, bom, crlf)).unwrap();
            build_file(name, &path, &params, true, max_line);
            build_file(name, &path, &params, false, max_line);
        }
        // ShareGPT's other layout: the lines as items of one JSON array.
        let (_, valid, params) = &formats()[1];
        let items: Vec<String> = specs
            .iter()
            .map(|s| String::from_utf8_lossy(&render(valid, std::slice::from_ref(s), false, false)).trim().to_string())
            .collect();
        std::fs::write(&path, format!("[{}]", items.join(",\n"))).unwrap();
        build_file("share_gpt_en_multi_turn", &path, params, true, max_line);
    }
}

/// The lines mutated above are valid as they stand, so the mutations start from real input.
#[test]
fn dataset_templates_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.jsonl");
    for (name, valid, params) in formats() {
        let text: Vec<String> = valid.iter().map(Value::to_string).collect();
        std::fs::write(&path, text.join("\n")).unwrap();
        let (built, skipped) = workload::build(
            name,
            Some(&path),
            tok(),
            &params,
            Selection::default(),
            false,
            1 << 20,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(skipped, 0, "{name}");
        assert!(!built.conversations.is_empty(), "{name}");
    }
}
