//! Every dataset file format: the first byte picks the format, the rest is the file. Building
//! must give conversations or a clear error, never panic (`--skip-invalid` on and off, a small
//! and the default `--max-line-bytes`).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use parley::tokenizer::Tokenizer;
use parley::workload::{self, DatasetParams, Selection};
use serde_json::json;

fn tok() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::builtin().expect("builtin tokenizer"))
}

/// One file per process, rewritten for every input.
fn file() -> &'static PathBuf {
    static F: OnceLock<PathBuf> = OnceLock::new();
    F.get_or_init(|| std::env::temp_dir().join(format!("parley-fuzz-{}.jsonl", std::process::id())))
}

fn format(k: u8) -> (&'static str, DatasetParams) {
    let none = DatasetParams::default;
    match k % 9 {
        0 => ("custom_multi_turn", none()),
        1 => ("share_gpt_en_multi_turn", none()),
        2 => ("multi_turn", none()),
        3 => ("single_turn", none()),
        4 => (
            "mooncake_trace",
            DatasetParams {
                isl_block_size: Some(32),
                ..none()
            },
        ),
        5 => (
            "bailian_trace",
            DatasetParams {
                isl_block_size: Some(16),
                ..none()
            },
        ),
        6 => ("trie_code_qa", none()),
        7 => ("trie_agentic_coding", none()),
        _ => (
            "swe_smith",
            DatasetParams {
                dataset_args: json!({"first_turn_length": [5, 10],
                                     "subsequent_turn_length": [2, 4], "chars_per_token": 1})
                .as_object()
                .cloned(),
                min_turns: Some(1),
                max_turns: Some(2),
                ..none()
            },
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&k, body)) = data.split_first() else {
        return;
    };
    let (name, params) = format(k);
    std::fs::write(file(), body).expect("write the fuzz input file");
    let selection = Selection {
        limit: 8,
        ..Selection::default()
    };
    for (skip, max_line) in [(true, 64 << 20), (false, 64 << 20), (true, 128)] {
        let _ = workload::build(
            name,
            Some(file()),
            tok(),
            &params,
            selection,
            skip,
            max_line,
        );
    }
});
