//! `--dataset synthetic` (AIPerf-style) and the shared system prompt / prefixes, end to end
//! against `parley sim`, checked from the sim's record.

mod common;

use common::*;
use parley::workload::synth::Synth;
use parley::workload::synthetic::Synthetic;
use parley::workload::DatasetParams;
use serde_json::Value;

fn tokens(r: &Value) -> Vec<u64> {
    r["message_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(u)
        .collect()
}

fn roles(r: &Value) -> Vec<String> {
    r["message_roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// The sim renders ChatML: `<|im_start|>ROLE\n` (3 tokens) + content + `<|im_end|>\n` (2) per
/// message, then `<|im_start|>assistant\n` (3). Checked on every record, since the expected
/// cached-token counts below are built from it.
fn assert_chatml_overhead(r: &Value) {
    let t = tokens(r);
    assert_eq!(
        u(&r["prompt_tokens"]),
        t.iter().sum::<u64>() + 5 * t.len() as u64 + 3,
        "template overhead"
    );
}

/// Turn counts, per-turn user lengths, per-turn max_tokens and think times all drawn from
/// normals: the sim sees exactly the planned conversations (the plan rebuilt here through the
/// library with the same flags), and waits are honoured.
#[test]
fn synthetic_turns_lengths_max_tokens_and_waits() {
    let sim = Sim::start(&["--ttft-base-ms", "1", "--itl-ms", "0"]);
    let run = sim.bench(&[
        "--number",
        "8",
        "--parallel",
        "4",
        "--conversation-turn-mean",
        "3",
        "--conversation-turn-stddev",
        "1.5",
        "--isl",
        "40",
        "--isl-stddev",
        "15",
        "--osl",
        "12",
        "--osl-stddev",
        "5",
        "--conversation-turn-delay-mean",
        "60",
        "--conversation-turn-delay-stddev",
        "20",
        "--conversation-turn-delay-ratio",
        "0.5",
        "--seed",
        "11",
    ]);
    let records = sim.stop();
    let s = &run.summary;
    assert_eq!(s["config"]["dataset"], "synthetic", "chosen by the flags");
    assert_eq!(u(&s["requests"]["failed"]), 0);
    assert_eq!(u(&s["conversations"]["completed"]), 8);

    let params = DatasetParams {
        seed: 11,
        turn_mean: Some(3.0),
        turn_stddev: Some(1.5),
        isl_mean: Some(40.0),
        isl_stddev: Some(15.0),
        osl_mean: Some(12.0),
        osl_stddev: Some(5.0),
        turn_delay_mean_ms: Some(60.0),
        turn_delay_stddev_ms: Some(20.0),
        turn_delay_ratio: Some(0.5),
        ..DatasetParams::default()
    };
    let tokenizer = parley::tokenizer::Tokenizer::builtin().unwrap();
    let plan = Synthetic::from_params(&params)
        .unwrap()
        .build(Synth::new(&tokenizer).unwrap(), &(0..8).collect::<Vec<_>>())
        .unwrap();

    let convs = by_conversation(&records);
    assert_eq!(convs.len(), 8);
    let (mut turn_counts, mut lengths, mut caps) = (vec![], vec![], vec![]);
    for (conv, turns) in &convs {
        let planned = &plan[*conv as usize].turns;
        assert_eq!(turns.len(), planned.len(), "conversation {conv}");
        turn_counts.push(turns.len());
        for (k, r) in turns.iter().enumerate() {
            assert_eq!(turn_of(r), k as u64);
            assert_chatml_overhead(r);
            let t = tokens(r);
            assert_eq!(t.len(), 2 * k + 1, "history u1 a1 … uk");
            let want = planned[k].delta_tokens.unwrap() as u64;
            assert_eq!(t[2 * k], want, "conv {conv} turn {k}: user tokens");
            assert!(want >= 1);
            lengths.push(want);
            let cap = u(&r["max_tokens"]);
            assert_eq!(cap, planned[k].max_tokens.unwrap() as u64);
            assert!(cap >= 1);
            caps.push(cap);
            if k > 0 {
                let delay_ns = planned[k].delay_ns;
                // Whole milliseconds ≥ 1, times the ratio.
                assert!(
                    delay_ns >= 500_000 && delay_ns.is_multiple_of(500_000),
                    "{delay_ns}"
                );
                let gap = u(&r["arrival_ns"]) - u(&turns[k - 1]["end_ns"]);
                assert!(
                    gap >= delay_ns,
                    "conv {conv} turn {k}: sent {gap} ns after the reply, think time {delay_ns}"
                );
            } else {
                assert_eq!(planned[k].delay_ns, 0);
            }
        }
    }
    // The draws really vary.
    turn_counts.sort();
    lengths.sort();
    caps.sort();
    assert_ne!(turn_counts.first(), turn_counts.last(), "{turn_counts:?}");
    assert_ne!(lengths.first(), lengths.last(), "{lengths:?}");
    assert_ne!(caps.first(), caps.last(), "{caps:?}");
}

/// Zero stddevs give exact values: 2 turns of 40 user tokens, max_tokens 9, 100 ms think time
/// (200 ms × ratio 0.5).
#[test]
fn synthetic_fixed_values() {
    let sim = Sim::start(&["--ttft-base-ms", "1", "--itl-ms", "0"]);
    sim.bench(&[
        "--number",
        "3",
        "--parallel",
        "3",
        "--conversation-turn-mean",
        "2",
        "--synthetic-input-tokens-mean",
        "40",
        "--output-tokens-mean",
        "9",
        "--conversation-turn-delay-mean",
        "200",
        "--conversation-turn-delay-ratio",
        "0.5",
    ]);
    let records = sim.stop();
    let convs = by_conversation(&records);
    assert_eq!(convs.len(), 3);
    for turns in convs.values() {
        assert_eq!(turns.len(), 2);
        for (k, r) in turns.iter().enumerate() {
            assert_eq!(tokens(r)[2 * k], 40);
            assert_eq!(u(&r["max_tokens"]), 9);
        }
        let gap = u(&turns[1]["arrival_ns"]) - u(&turns[0]["end_ns"]);
        assert!(gap >= 100_000_000, "{gap}");
        assert!(gap < 2_000_000_000, "{gap}");
    }
}

/// Without --osl the run's --max-tokens is sent; AIPerf's default ISL is 550.
#[test]
fn synthetic_defaults() {
    let sim = Sim::start(&["--ttft-base-ms", "1", "--itl-ms", "0"]);
    sim.bench(&[
        "--dataset",
        "synthetic",
        "--number",
        "2",
        "--max-tokens",
        "7",
    ]);
    let records = sim.stop();
    assert_eq!(records.len(), 2, "one turn per conversation");
    for r in &records {
        assert_eq!(tokens(r), [550]);
        assert_eq!(u(&r["max_tokens"]), 7);
    }
}

/// A shared system prompt and 2 prefixes, with lengths chosen so the sim's prefix cache (16-token
/// blocks, one conversation at a time) reports an exact count on each first turn:
/// - system message = 3 + 40 + 2 tokens, user header = 3: 48 tokens = 3 blocks, shared by all;
/// - + prefix of 48 tokens: 96 = 6 blocks, shared by conversations i and i + 2.
///
/// The token after them is the random start of the user's own text, so no further block hits.
#[test]
fn shared_system_prompt_and_prefixes_give_exact_cache_hits() {
    let sim = Sim::start(&["--ttft-base-ms", "1", "--itl-ms", "0", "--block-size", "16"]);
    sim.bench(&[
        "--number",
        "6",
        "--parallel",
        "1",
        "--conversation-turn-mean",
        "2",
        "--isl",
        "40",
        "--osl",
        "4",
        "--shared-system-prompt-length",
        "40",
        "--prefix-length",
        "48",
        "--prefix-count",
        "2",
    ]);
    let records = sim.stop();
    let convs = by_conversation(&records);
    assert_eq!(convs.len(), 6);
    let system_hash = &convs[&0][0]["message_hashes"][0];
    for (conv, turns) in &convs {
        assert_eq!(turns.len(), 2);
        let first = &turns[0];
        assert_chatml_overhead(first);
        assert_eq!(roles(first), ["system", "user"]);
        assert_eq!(tokens(first), [40, 48 + 40], "system; prefix + ISL");
        assert_eq!(
            &first["message_hashes"][0], system_hash,
            "one system prompt"
        );
        let expected = match conv {
            0 => 0,
            1 => 48,
            _ => 96,
        };
        assert_eq!(
            u(&first["cached_tokens"]),
            expected,
            "conversation {conv} first turn"
        );
        // The second turn sends the history again (system, user, reply) and one new message.
        assert_eq!(roles(&turns[1]), ["system", "user", "assistant", "user"]);
        assert_eq!(tokens(&turns[1])[3], 40);
    }
}

/// random_multi_turn takes the same shared system prompt and prefix flags.
#[test]
fn random_multi_turn_takes_shared_prefixes() {
    let sim = Sim::start(&["--ttft-base-ms", "1", "--itl-ms", "0", "--block-size", "16"]);
    sim.bench(&[
        "--dataset",
        "random_multi_turn",
        "--number",
        "3",
        "--parallel",
        "1",
        "--min-turns",
        "1",
        "--max-turns",
        "2",
        "--min-prompt-length",
        "20",
        "--max-prompt-length",
        "30",
        "--max-tokens",
        "4",
        "--shared-system-prompt-length",
        "40",
        "--prefix-length",
        "48",
    ]);
    let records = sim.stop();
    let convs = by_conversation(&records);
    assert_eq!(convs.len(), 3);
    for (conv, turns) in &convs {
        let first = &turns[0];
        assert_eq!(roles(first), ["system", "user"]);
        let t = tokens(first);
        assert_eq!(t[0], 40);
        assert!((48 + 20..=48 + 30).contains(&t[1]), "{t:?}");
        let expected = if *conv == 0 { 0 } else { 96 };
        assert_eq!(u(&first["cached_tokens"]), expected, "conversation {conv}");
    }
}

#[test]
fn bad_synthetic_flags_name_the_flag() {
    let e = bench_err(&["--isl=-5"]);
    assert!(e.contains("--synthetic-input-tokens-mean"), "{e}");
    let e = bench_err(&["--conversation-turn-stddev=-1"]);
    assert!(e.contains("--conversation-turn-stddev"), "{e}");
    let e = bench_err(&["--osl-stddev", "4"]);
    assert!(e.contains("--output-tokens-stddev"), "{e}");
    let e = bench_err(&["--isl", "100", "--max-turns", "3"]);
    assert!(e.contains("--max-turns"), "{e}");
    let e = bench_err(&["--conversation-turn-delay-stddev", "50"]);
    assert!(e.contains("--conversation-turn-delay-mean"), "{e}");
    let e = bench_err(&["--dataset", "random_multi_turn", "--prefix-count", "2"]);
    assert!(
        e.contains("--prefix-count") && e.contains("--prefix-length"),
        "{e}"
    );
    let e = bench_err(&["--dataset", "random_multi_turn", "--isl", "20"]);
    assert!(e.contains("--synthetic-input-tokens-mean"), "{e}");
}
