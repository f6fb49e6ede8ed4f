//! `trie_agentic_coding`, `trie_code_qa`, `trie_office_work`: replay of production agentic
//! traces (applied-compute/trie, re-hosted by evalscope as `evalscope/trie-workloads`).
//!
//! A trace records token lengths and tool waits, no text. One JSONL line is one trace:
//!
//! ```json
//! {"input_prompt_length": 8000, "num_turns": 2,
//!  "assistant_response_length": [120, 80], "tool_call_output_length": [900, 40],
//!  "tool_call_latency": [1.5, 0.2], "final_assistant_response_length": 300}
//! ```
//!
//! As evalscope (`plugin/datasets/trie.py`) it becomes `num_turns + 1` turns:
//! - turn 0: a user prompt of `input_prompt_length` tokens, `max_tokens =
//!   assistant_response_length[0]` (the final length when `num_turns` is 0);
//! - turn i ≥ 1: after waiting `tool_call_latency[i-1]` seconds, a tool output of
//!   `tool_call_output_length[i-1]` tokens sent as a **user** message (a `tool` message would need
//!   the assistant's `tool_calls`, which live replies to synthetic text do not have), `max_tokens =
//!   assistant_response_length[i]`, the final length for the last turn.
//!
//! Every array must have exactly `num_turns` items. Lengths of 0 become 1 (as evalscope: some
//! chat templates reject empty content, and servers reject `max_tokens` 0). `--max-turns`
//! truncates a trace (evalscope enforces it in its worker). Text is synthesized token-exact with
//! the run's tokenizer from `item_rng(seed, i)`, i = the trace's index among the file's valid
//! traces, so a trace's text is the same whatever else is selected.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::workload::input::{self, as_array, as_count, as_nonneg_f64, as_object, to_u32};
use crate::workload::input::{FieldError, Loc};
use crate::workload::synth::{self, Synth, SynthesisError};
use crate::workload::{
    BuildContext, Built, Conversation, DatasetError, DatasetFlag, PathUse, Source, Turn,
};

/// The registered source (one for all three names; they differ only in the file evalscope
/// downloads).
pub struct TrieSource;

/// `--dataset` name → the file evalscope downloads under that name; a `--dataset-path` that is a
/// directory (e.g. a ModelScope snapshot of `evalscope/trie-workloads`) is searched for it.
pub const FILES: [(&str, &str); 3] = [
    ("trie_agentic_coding", "agentic_coding_8k.jsonl"),
    ("trie_code_qa", "code_qa_8k.jsonl"),
    ("trie_office_work", "office_work_8k.jsonl"),
];

/// Longest tool wait a trace may give (one day), so a corrupt value cannot park a slot forever.
pub const MAX_LATENCY_S: f64 = 86_400.0;

/// One validated trace.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    pub input_prompt_length: u32,
    pub assistant_response_length: Vec<u32>,
    pub tool_call_output_length: Vec<u32>,
    pub tool_call_latency_s: Vec<f64>,
    pub final_assistant_response_length: u32,
}

impl Trace {
    /// Validates one line, naming the first bad field.
    pub fn parse(v: &Value) -> Result<Trace, FieldError> {
        let obj = as_object(v, "")?;
        let count = |key: &str| -> Result<u32, FieldError> {
            let n = input::req_count(obj, key, "")?;
            to_u32(n, key)
        };
        let input_prompt_length = count("input_prompt_length")?;
        let num_turns = input::req_count(obj, "num_turns", "")?;
        let final_assistant_response_length = count("final_assistant_response_length")?;
        let array = |key: &str| -> Result<&Vec<Value>, FieldError> {
            let a = as_array(input::required(obj, key, "")?, key)?;
            if a.len() as u64 != num_turns {
                return Err(FieldError::new(
                    key,
                    format!("has {} items, expected num_turns = {num_turns}", a.len()),
                ));
            }
            Ok(a)
        };
        let lengths = |key: &str| -> Result<Vec<u32>, FieldError> {
            array(key)?
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    let path = input::index(key, i);
                    to_u32(as_count(x, &path)?, &path)
                })
                .collect()
        };
        let assistant_response_length = lengths("assistant_response_length")?;
        let tool_call_output_length = lengths("tool_call_output_length")?;
        let tool_call_latency_s = array("tool_call_latency")?
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let path = input::index("tool_call_latency", i);
                let s = as_nonneg_f64(x, &path)?;
                if s > MAX_LATENCY_S {
                    return Err(FieldError::new(
                        path,
                        format!("{s} s is above the limit of one day"),
                    ));
                }
                Ok(s)
            })
            .collect::<Result<Vec<f64>, FieldError>>()?;
        Ok(Trace {
            input_prompt_length,
            assistant_response_length,
            tool_call_output_length,
            tool_call_latency_s,
            final_assistant_response_length,
        })
    }

    /// Requests this trace makes: `num_turns + 1`.
    pub fn turns(&self) -> usize {
        self.tool_call_output_length.len() + 1
    }

    /// The trace's turns, at most `max_turns`, with text from `rng`.
    pub fn conversation(
        &self,
        synth: Synth<'_>,
        seed: u64,
        index: u64,
        max_turns: usize,
    ) -> Result<Conversation, SynthesisError> {
        let mut rng = synth::item_rng(seed, index);
        let n = self.turns().min(max_turns);
        let mut conv = Conversation::live(Vec::with_capacity(n));
        for k in 0..n {
            let (tokens, delay_s) = if k == 0 {
                (self.input_prompt_length, 0.0)
            } else {
                (
                    self.tool_call_output_length[k - 1],
                    self.tool_call_latency_s[k - 1],
                )
            };
            let max_tokens = self
                .assistant_response_length
                .get(k)
                .copied()
                .unwrap_or(self.final_assistant_response_length);
            let tokens = tokens.max(1);
            let text = synth.text(tokens, &mut rng)?;
            let mut turn = Turn::user(&text, Some(tokens));
            turn.max_tokens = Some(max_tokens.max(1));
            turn.delay_ns = (delay_s * 1e9).round() as u64;
            conv.turns.push(turn);
        }
        Ok(conv)
    }
}

/// The file to read: `path`, or the dataset's own file name inside `path` when it is a directory.
pub fn resolve(name: &str, path: &Path) -> PathBuf {
    if path.is_dir() {
        if let Some((_, file)) = FILES.iter().find(|(n, _)| *n == name) {
            return path.join(file);
        }
    }
    path.to_path_buf()
}

/// Every valid trace of `path` in file order; bad lines go to `problems`, in line order.
pub fn load(path: &Path, problems: &mut input::Problems) -> Result<Vec<Trace>, DatasetError> {
    let mut traces = Vec::new();
    input::each_jsonl(path, problems, |loc, v, problems| {
        parse_line(loc, &v, &mut traces, problems)
    })?;
    Ok(traces)
}

/// [`load`] over text already read.
#[cfg(test)]
pub fn parse_lines(text: &str, problems: &mut input::Problems) -> Vec<Trace> {
    let mut traces = Vec::new();
    let _ = input::each_jsonl_in(
        text.as_bytes(),
        Path::new("text"),
        problems,
        |loc, v, problems| parse_line(loc, &v, &mut traces, problems),
    );
    traces
}

fn parse_line(loc: Loc, v: &Value, traces: &mut Vec<Trace>, problems: &mut input::Problems) {
    match Trace::parse(v) {
        Ok(t) => traces.push(t),
        Err(e) => problems.report(loc, e),
    }
}

fn param(flag: &str, reason: &str) -> DatasetError {
    DatasetError::Param {
        flag: flag.to_string(),
        reason: reason.to_string(),
    }
}

impl Source for TrieSource {
    fn names(&self) -> &'static [&'static str] {
        &["trie_agentic_coding", "trie_code_qa", "trie_office_work"]
    }

    fn path_use(&self) -> PathUse {
        PathUse::Required
    }

    fn describe(&self) -> &'static str {
        "trie agentic trace replay: recorded prompt, tool-output and response lengths, tool waits"
    }

    fn flags(&self) -> &'static [DatasetFlag] {
        // The trace fixes every length; --max-turns truncates traces.
        &[DatasetFlag::MaxTurns]
    }

    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Built, DatasetError> {
        let p = ctx.params;
        let max_turns = match p.max_turns {
            Some(0) => return Err(param("max-turns", "must be at least 1")),
            Some(n) => n as usize,
            None => usize::MAX,
        };
        let Some(given) = ctx.path else {
            return Err(DatasetError::PathRequired {
                name: ctx.name.to_string(),
            });
        };
        let path = resolve(ctx.name, given);
        let traces = load(&path, ctx.problems)?;
        let picked = ctx.selection.pick(traces.len());
        if picked.is_empty() {
            return Ok(Built::default());
        }
        let synth = Synth::new(ctx.tokenizer)?;
        let seed = p.seed;
        let conversations = synth::par_map(picked.len(), "synthesizing traces", |k| {
            let i = picked[k];
            traces[i].conversation(synth, seed, i as u64, max_turns)
        })?;
        Ok(Built {
            conversations,
            filtered: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::workload::input::Problems;
    use serde_json::json;

    use crate::tokenizer::test_builtin as tok;

    fn trace() -> Value {
        json!({
            "input_prompt_length": 50, "num_turns": 2,
            "assistant_response_length": [7, 0], "tool_call_output_length": [0, 33],
            "tool_call_latency": [0.25, 1], "final_assistant_response_length": 19
        })
    }

    #[test]
    fn turns_lengths_waits_and_caps() {
        let t = Trace::parse(&trace()).unwrap();
        let c = t
            .conversation(Synth::new(tok()).unwrap(), 3, 0, usize::MAX)
            .unwrap();
        let got: Vec<(u32, Option<u32>, u64)> = c
            .turns
            .iter()
            .map(|t| (t.delta_tokens.unwrap(), t.max_tokens, t.delay_ns))
            .collect();
        // 0 lengths become 1, as evalscope.
        assert_eq!(
            got,
            [
                (50, Some(7), 0),
                (1, Some(1), 250_000_000),
                (33, Some(19), 1_000_000_000)
            ]
        );
        for turn in &c.turns {
            let v: Value = serde_json::from_slice(&turn.delta_bytes()).unwrap();
            assert_eq!(v["role"], "user");
            let n = tok().encode_reference(v["content"].as_str().unwrap()).len();
            assert_eq!(n as u32, turn.delta_tokens.unwrap());
        }
        let two = t.conversation(Synth::new(tok()).unwrap(), 3, 0, 2).unwrap();
        assert_eq!(two.turns.len(), 2);
        assert_eq!(two.turns[1].delta, c.turns[1].delta, "deterministic");
    }

    #[test]
    fn no_tool_calls_is_one_turn_with_the_final_cap() {
        let t = Trace::parse(&json!({
            "input_prompt_length": 5, "num_turns": 0, "assistant_response_length": [],
            "tool_call_output_length": [], "tool_call_latency": [],
            "final_assistant_response_length": 9
        }))
        .unwrap();
        let c = t
            .conversation(Synth::new(tok()).unwrap(), 1, 0, usize::MAX)
            .unwrap();
        assert_eq!(c.turns.len(), 1);
        assert_eq!(c.turns[0].max_tokens, Some(9));
    }

    #[test]
    fn bad_fields_are_named() {
        let bad = |edit: &dyn Fn(&mut Value)| {
            let mut v = trace();
            edit(&mut v);
            Trace::parse(&v).unwrap_err()
        };
        let e = bad(&|v| v["num_turns"] = json!(3));
        assert_eq!(e.field, "assistant_response_length");
        assert!(e.reason.contains("expected num_turns = 3"), "{}", e.reason);
        let e = bad(&|v| v["tool_call_output_length"][1] = json!(-4));
        assert_eq!(e.field, "tool_call_output_length[1]");
        assert!(e.reason.contains("negative"));
        let e = bad(&|v| v["tool_call_latency"][0] = json!("1s"));
        assert_eq!(e.field, "tool_call_latency[0]");
        let e = bad(&|v| {
            v.as_object_mut().unwrap().remove("input_prompt_length");
        });
        assert_eq!(e.field, "input_prompt_length");
        assert_eq!(e.reason, "missing");
        let e = bad(&|v| v["assistant_response_length"] = json!(7));
        assert_eq!(e.field, "assistant_response_length");
        assert!(e.reason.contains("expected an array"));
        let e = bad(&|v| v["final_assistant_response_length"] = json!(2.5));
        assert_eq!(e.field, "final_assistant_response_length");
        assert!(Trace::parse(&json!([1])).is_err());
    }

    #[test]
    fn load_reports_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentic_coding_8k.jsonl");
        let good = trace().to_string();
        std::fs::write(
            &path,
            format!("{good}\n{{\"num_turns\": 1}}\n\n{good}\nnot json\n"),
        )
        .unwrap();
        // A directory resolves to the dataset's own file name.
        assert_eq!(resolve("trie_agentic_coding", dir.path()), path);
        let mut p = Problems::new(Some(&path), true);
        let traces = load(&path, &mut p).unwrap();
        assert_eq!(traces.len(), 2);
        let locs: Vec<Loc> = p.listed().iter().map(|b| b.loc).collect();
        assert_eq!(locs, [Loc::Line(2), Loc::Line(5)]);
    }

    /// Peak resident set size of this process so far, in KiB.
    fn max_rss_kib() -> i64 {
        // SAFETY: getrusage only writes into the struct we pass.
        unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut ru);
            ru.ru_maxrss
        }
    }

    /// 100 traces of the real sizes (seed: ~8k-token first prompt, 25k-50k input tokens per
    /// trace; agentic_coding 8-15 turns, office_work 18-41), through the whole source (read,
    /// validate, synthesize).
    /// `cargo test --profile bench-fast --lib trie::tests::build_time -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn build_time() {
        use crate::workload::{build, DatasetParams, Selection};
        use rand::Rng;
        let dir = tempfile::tempdir().unwrap();
        let tok = tok();
        let _ = Synth::new(tok).unwrap();
        for (name, file, turns, tool_mean) in [
            (
                "trie_agentic_coding",
                "agentic_coding_8k.jsonl",
                8..=15u32,
                1500u32,
            ),
            ("trie_office_work", "office_work_8k.jsonl", 18..=41, 1400),
        ] {
            let mut rng = synth::item_rng(9, 9);
            let mut lines = String::new();
            let mut tokens = 0u64;
            for _ in 0..100 {
                let n = rng.random_range(turns.clone());
                let tool: Vec<u32> = (0..n)
                    .map(|_| rng.random_range(tool_mean / 5..=tool_mean * 9 / 5))
                    .collect();
                let resp: Vec<u32> = (0..n).map(|_| rng.random_range(50..=500)).collect();
                let lat: Vec<f64> = (0..n).map(|_| rng.random_range(0.1..3.0)).collect();
                tokens += 8000 + tool.iter().map(|&t| u64::from(t)).sum::<u64>();
                lines.push_str(
                    &json!({"input_prompt_length": 8000, "num_turns": n,
                        "assistant_response_length": resp, "tool_call_output_length": tool,
                        "tool_call_latency": lat, "final_assistant_response_length": 400})
                    .to_string(),
                );
                lines.push('\n');
            }
            let path = dir.path().join(file);
            std::fs::write(&path, lines).unwrap();
            let rss0 = max_rss_kib();
            let t0 = std::time::Instant::now();
            let (built, _) = build(
                name,
                Some(&path),
                tok,
                &DatasetParams::default(),
                Selection::default(),
                false,
                input::DEFAULT_MAX_LINE_BYTES,
            )
            .unwrap();
            let el = t0.elapsed();
            let bytes: usize = built
                .conversations
                .iter()
                .flat_map(|c| c.turns.iter().flat_map(|t| t.delta.iter().map(|b| b.len())))
                .sum();
            let turns: usize = built.conversations.iter().map(|c| c.turns.len()).sum();
            println!(
                "{name}: 100 traces, {turns} turns, {tokens} tokens ({} MB of prompts) in {el:?}; \
                 peak RSS {} MB (was {} MB before the build)",
                bytes / 1_000_000,
                max_rss_kib() / 1024,
                rss0 / 1024
            );
        }
    }
}
