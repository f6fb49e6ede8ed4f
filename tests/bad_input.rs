//! Bad dataset files, for every file format: a line that is not UTF-8 stops the run naming file
//! and line, and `--skip-invalid` leaves it out and counts it; a byte-order mark at the start is
//! accepted; an empty file is an error naming it; a line longer than `--max-line-bytes` (and
//! `/dev/zero`) is an error naming file and line, not an out-of-memory abort. Every run uses the
//! built-in sim (nothing leaves 127.0.0.1).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// One file format: its `--dataset` name, two valid lines (JSONL) and the flags it needs.
struct Format {
    dataset: &'static str,
    valid: [String; 2],
    args: &'static [&'static str],
}

const SWE_ARGS: &str =
    r#"{"first_turn_length": [5, 10], "subsequent_turn_length": [2, 4], "chars_per_token": 1}"#;

fn formats() -> Vec<Format> {
    let trie = |n: u64| {
        json!({"input_prompt_length": 20 + n, "num_turns": 1, "assistant_response_length": [3],
               "tool_call_output_length": [7], "tool_call_latency": [0.0],
               "final_assistant_response_length": 2})
        .to_string()
    };
    let swe = |i: u64| {
        json!({"instance_id": format!("r{i}"), "messages": [
            {"role": "system", "content": "agent"},
            {"role": "user", "content": "fix the bug in the parser please, it breaks on input"},
            {"role": "assistant", "content": "ok"},
            {"role": "tool", "content": "tool output that is long enough to cut turns from"},
        ]})
        .to_string()
    };
    vec![
        Format {
            dataset: "custom_multi_turn",
            valid: [
                json!([{"role": "user", "content": "first"}]).to_string(),
                json!({"messages": [{"role": "user", "content": "second"}]}).to_string(),
            ],
            args: &[],
        },
        Format {
            dataset: "share_gpt_en_multi_turn",
            valid: [
                json!({"conversation": [{"human": "hello", "assistant": "hi"}]}).to_string(),
                json!({"conversations": [{"from": "human", "value": "hey"}]}).to_string(),
            ],
            args: &[],
        },
        Format {
            dataset: "multi_turn",
            valid: [
                json!({"session_id": "a", "turns": [{"text": "one"}, {"text": "two"}]}).to_string(),
                json!({"session_id": "b", "turns": [{"text": "three"}]}).to_string(),
            ],
            args: &[],
        },
        Format {
            dataset: "single_turn",
            valid: [
                json!({"text": "one", "output_length": 2}).to_string(),
                json!({"text": "two"}).to_string(),
            ],
            args: &[],
        },
        Format {
            dataset: "mooncake_trace",
            valid: [
                json!({"input_length": 40, "hash_ids": [1], "output_length": 2}).to_string(),
                json!({"text_input": "hello", "output_length": 2}).to_string(),
            ],
            args: &["--isl-block-size", "32"],
        },
        Format {
            dataset: "bailian_trace",
            valid: [
                json!({"chat_id": 1, "parent_chat_id": -1, "timestamp": 0.0, "input_length": 20,
                       "output_length": 2, "turn": 1, "hash_ids": [1, 2]})
                .to_string(),
                json!({"chat_id": 2, "parent_chat_id": -1, "timestamp": 0.1, "input_length": 12,
                       "output_length": 2, "turn": 1, "hash_ids": [3]})
                .to_string(),
            ],
            args: &[],
        },
        Format {
            dataset: "trie_code_qa",
            valid: [trie(0), trie(5)],
            args: &[],
        },
        Format {
            dataset: "swe_smith",
            valid: [swe(0), swe(1)],
            args: &[
                "--dataset-args",
                SWE_ARGS,
                "--min-turns",
                "1",
                "--max-turns",
                "1",
            ],
        },
    ]
}

fn args<'a>(f: &'a Format, path: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--dataset", f.dataset, "--dataset-path", path];
    a.extend_from_slice(f.args);
    a.extend_from_slice(&["--max-tokens", "2", "--parallel", "1"]);
    a.extend_from_slice(extra);
    a
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A BOM, valid line, a line with invalid UTF-8, valid line: without --skip-invalid the run stops
/// naming file and line 2; with it both valid lines run (so the BOM line was read as JSON) and
/// the report counts one skipped entry.
fn non_utf8_is_named_and_skippable(f: &Format) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{}.jsonl", f.dataset));
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend_from_slice(f.valid[0].as_bytes());
    bytes.extend_from_slice(b"\n{\"text\": \"caf\xE9\"}\n");
    bytes.extend_from_slice(f.valid[1].as_bytes());
    bytes.push(b'\n');
    std::fs::write(&path, bytes).unwrap();

    let err = bench_err(&args(f, p(&path), &["--number", "2"]));
    assert!(
        err.contains(&format!("{}: 1 invalid entry", p(&path))),
        "{}: {err}",
        f.dataset
    );
    assert!(
        err.contains(&format!("{}: line 2: not UTF-8", p(&path))),
        "{}: {err}",
        f.dataset
    );

    let run = bench(&args(f, p(&path), &["--number", "2", "--skip-invalid"]));
    let s = &run.summary;
    assert_eq!(u(&s["config"]["skipped_invalid"]), 1, "{}", f.dataset);
    assert_eq!(u(&s["conversations"]["completed"]), 2, "{}", f.dataset);
    assert_eq!(u(&s["requests"]["failed"]), 0, "{}", f.dataset);
}

/// An empty file, and one of blank lines, are errors naming the file.
fn empty_file_is_named(f: &Format) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [("empty.jsonl", ""), ("blank.jsonl", "\n  \n\r\n")] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let err = bench_err(&args(f, p(&path), &["--skip-invalid"]));
        assert!(
            err.contains(&format!("{}: the file is empty", p(&path))),
            "{}: {err}",
            f.dataset
        );
    }
}

/// A line over --max-line-bytes stops the run naming file and line, --skip-invalid or not; one
/// at the limit is read.
fn oversized_line_is_an_error(f: &Format) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.jsonl");
    let long = format!("{{\"pad\": \"{}\"}}", "x".repeat(3000));
    std::fs::write(&path, format!("{}\n{long}\n{}\n", f.valid[0], f.valid[1])).unwrap();
    for extra in [
        &["--max-line-bytes", "2KiB"][..],
        &["--max-line-bytes", "2048", "--skip-invalid"],
    ] {
        let err = bench_err(&args(f, p(&path), extra));
        assert!(
            err.contains(&format!(
                "{}: line 2: longer than --max-line-bytes (2048 bytes)",
                p(&path)
            )),
            "{}: {err}",
            f.dataset
        );
    }
    // The same file with a limit above the line: the long line is an ordinary bad entry.
    let run = bench(&args(
        f,
        p(&path),
        &[
            "--max-line-bytes",
            "4096",
            "--skip-invalid",
            "--number",
            "2",
        ],
    ));
    assert_eq!(
        u(&run.summary["config"]["skipped_invalid"]),
        1,
        "{}",
        f.dataset
    );
}

/// `/dev/zero` is one endless line: an error within seconds, not an out-of-memory abort.
fn dev_zero_is_an_error(f: &Format) {
    if !Path::new("/dev/zero").exists() {
        return;
    }
    let start = Instant::now();
    let err = bench_err(&args(f, "/dev/zero", &["--skip-invalid"]));
    assert!(
        err.contains("/dev/zero: line 1: longer than --max-line-bytes (67108864 bytes)"),
        "{}: {err}",
        f.dataset
    );
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{}: took {:?}",
        f.dataset,
        start.elapsed()
    );
}

fn all_cases(dataset: &str) {
    let f = formats()
        .into_iter()
        .find(|f| f.dataset == dataset)
        .unwrap();
    non_utf8_is_named_and_skippable(&f);
    empty_file_is_named(&f);
    oversized_line_is_an_error(&f);
    dev_zero_is_an_error(&f);
}

#[test]
fn custom_multi_turn_bad_input() {
    all_cases("custom_multi_turn");
}

#[test]
fn share_gpt_jsonl_bad_input() {
    all_cases("share_gpt_en_multi_turn");
}

#[test]
fn aiperf_multi_turn_bad_input() {
    all_cases("multi_turn");
}

#[test]
fn aiperf_single_turn_bad_input() {
    all_cases("single_turn");
}

#[test]
fn mooncake_bad_input() {
    all_cases("mooncake_trace");
}

#[test]
fn bailian_bad_input() {
    all_cases("bailian_trace");
}

#[test]
fn trie_bad_input() {
    all_cases("trie_code_qa");
}

#[test]
fn swe_smith_trajectories_bad_input() {
    all_cases("swe_smith");
}

/// The original ShareGPT dump is one JSON array: a BOM before it is accepted; bytes that are not
/// UTF-8 inside it name the line; an item over --max-line-bytes names the item (the dump may be
/// one line, so the limit bounds items here).
#[test]
fn share_gpt_json_array_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let item = |s: &str| json!({"conversations": [{"from": "human", "value": s}]}).to_string();
    let path = dir.path().join("dump.json");
    std::fs::write(
        &path,
        format!("\u{feff}[\n{},\n{}\n]\n", item("one"), item("two")),
    )
    .unwrap();
    let args = |path: &Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "--dataset",
            "share_gpt_en_multi_turn",
            "--dataset-path",
            p(path),
            "--max-tokens",
            "2",
            "--number",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = bench(&strs(&args(&path, &[])));
    assert_eq!(u(&run.summary["conversations"]["completed"]), 2);

    let bad = dir.path().join("bad.json");
    let mut bytes = format!("[\n{},\n", item("one")).into_bytes();
    bytes.extend_from_slice(
        b"{\"conversations\": [{\"from\": \"human\", \"value\": \"caf\xE9\"}]}\n]\n",
    );
    std::fs::write(&bad, bytes).unwrap();
    let err = bench_err(&strs(&args(&bad, &[])));
    assert!(
        err.contains(&format!("{}: line 3: invalid JSON", p(&bad))),
        "{err}"
    );

    let err = bench_err(&strs(&args(&path, &["--max-line-bytes", "40"])));
    assert!(
        err.contains(&format!(
            "{}: item 0: longer than --max-line-bytes (40 bytes)",
            p(&path)
        )),
        "{err}"
    );
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `--max-line-bytes` takes binary suffixes and refuses 0.
#[test]
fn max_line_bytes_flag_parses_sizes() {
    let out = parley()
        .args(["bench", "--max-line-bytes", "0", "--dataset", "synthetic"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--max-line-bytes"), "{err}");
    let out = parley()
        .args(["bench", "--max-line-bytes", "12 parsecs"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expected bytes"),
        "{out:?}"
    );
}
