//! `parley bench` against `parley sim` over TCP, checked against the sim's own record.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

/// The timing test runs alone: the tests of one file run in parallel threads, and on a 2-core
/// machine their traffic is its jitter (its client ITL p99 once read 2.6 ms above the sim's
/// beside them). Every other test holds the lock shared.
static TIMING: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared_lock() -> std::sync::RwLockReadGuard<'static, ()> {
    TIMING.read().unwrap_or_else(|e| e.into_inner())
}

fn hashes(r: &Value) -> Vec<String> {
    r["message_hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            h.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| h.to_string())
        })
        .collect()
}

fn reply_hash(r: &Value) -> String {
    let h = &r["reply_hash"];
    h.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| h.to_string())
}

/// Turn k carries exactly [u1, a1_live, …, uk]: every assistant message is the sim's own reply
/// to the earlier turn of the same conversation, user turns are exact in length, and the
/// client's token and cache figures equal the sim's.
#[test]
fn multi_turn_history_lengths_and_cache_match_the_sim() {
    let _shared = shared_lock();
    let sim = Sim::start(&["--ttft-base-ms", "1", "--itl-ms", "1", "--seed", "7"]);
    let run = sim.bench(&[
        "--dataset",
        "random_multi_turn",
        "--number",
        "12",
        "--parallel",
        "4",
        "--min-turns",
        "2",
        "--max-turns",
        "4",
        "--min-prompt-length",
        "20",
        "--max-prompt-length",
        "40",
        "--max-tokens",
        "16",
        "--extra-args",
        r#"{"ignore_eos": true}"#,
        "--seed",
        "7",
    ]);
    let records = sim.stop();
    let s = &run.summary;

    assert_eq!(u(&s["requests"]["failed"]), 0);
    assert_eq!(u(&s["requests"]["succeeded"]), records.len() as u64);
    assert_eq!(u(&s["conversations"]["completed"]), 12);

    let convs = by_conversation(&records);
    assert_eq!(convs.len(), 12, "exactly --number conversations claimed");
    let mut user_lengths = BTreeSet::new();
    for (conv, turns) in &convs {
        assert!(
            (2..=4).contains(&turns.len()),
            "conversation {conv}: {} turns",
            turns.len()
        );
        for (k, r) in turns.iter().enumerate() {
            assert_eq!(
                turn_of(r),
                k as u64,
                "conversation {conv}: turns 0..n in order"
            );
            let h = hashes(r);
            let roles: Vec<&str> = r["message_roles"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap())
                .collect();
            assert_eq!(
                h.len(),
                2 * k + 1,
                "turn {k} of conversation {conv} sends 2k+1 messages"
            );
            for (i, role) in roles.iter().enumerate() {
                assert_eq!(*role, if i % 2 == 0 { "user" } else { "assistant" });
            }
            for i in 0..k {
                assert_eq!(
                    h[2 * i + 1],
                    reply_hash(&turns[i]),
                    "conv {conv} turn {k}: message {} is the live reply of turn {i}",
                    2 * i + 1
                );
                assert_eq!(
                    h[2 * i],
                    hashes(&turns[i])[2 * i],
                    "conv {conv}: user turn {i} is resent unchanged"
                );
            }
            let tokens: Vec<u64> = r["message_tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(u)
                .collect();
            for (i, t) in tokens.iter().enumerate() {
                if i % 2 == 0 {
                    assert!((20..=40).contains(t), "user message of {t} tokens");
                    user_lengths.insert(*t);
                } else {
                    assert_eq!(*t, 16, "a replayed reply keeps its 16 tokens");
                }
            }
            assert_eq!(u(&r["completion_tokens"]), 16);
        }
    }
    assert!(
        user_lengths.len() > 5,
        "lengths vary over [min, max]: {user_lengths:?}"
    );

    // The user turns are exactly the synthesized ones for this seed, in claim order: same text
    // (hash) and same exact token count, conversation c being pool entry c.
    let tokenizer = parley::tokenizer::Tokenizer::builtin().unwrap();
    let pool = parley::workload::random_multi_turn::RandomMultiTurn {
        conversations: 12,
        min_turns: 2,
        max_turns: 4,
        min_prompt_tokens: 20,
        max_prompt_tokens: 40,
        seed: 7,
    }
    .build(&tokenizer)
    .unwrap();
    for (conv, turns) in &convs {
        let planned = &pool[*conv as usize].turns;
        assert_eq!(turns.len(), planned.len(), "conversation {conv}");
        let last = turns.last().unwrap();
        let tokens: Vec<u64> = last["message_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(u)
            .collect();
        for (i, turn) in planned.iter().enumerate() {
            let msg: Value = serde_json::from_slice(&turn.delta_bytes()).unwrap();
            let text = msg["content"].as_str().unwrap();
            let hash = parley::sim::record::hash_hex(parley::sim::record::content_hash(text));
            assert_eq!(
                hashes(last)[2 * i],
                hash,
                "conversation {conv} user turn {i}"
            );
            assert_eq!(tokens[2 * i], turn.delta_tokens.unwrap() as u64);
        }
    }

    // Token and cache figures equal the sim's truth.
    let prompt_sum: u64 = records.iter().map(|r| u(&r["prompt_tokens"])).sum();
    let cached_sum: u64 = records.iter().map(|r| u(&r["cached_tokens"])).sum();
    let n = records.len() as f64;
    assert!((f(&s["input_tokens"]["mean"]) - prompt_sum as f64 / n).abs() < 1e-9);
    assert_eq!(f(&s["output_tokens"]["mean"]), 16.0);
    assert_eq!(s["cache_hit_source"], "server");
    let expected_rate = cached_sum as f64 / prompt_sum as f64;
    assert!((f(&s["cache_hit_rate"]) - expected_rate).abs() < 1e-12);
    assert!(
        expected_rate > 0.2,
        "later turns hit the prefix cache: {expected_rate}"
    );
    // Every content chunk the sim sent was seen as one output-bearing event.
    let chunks: u64 = records
        .iter()
        .map(|r| r["chunk_ns"].as_array().unwrap().len() as u64)
        .sum();
    assert_eq!(u(&s["client"]["output_events"]), chunks);
    let cpu_s = f(&s["client"]["cpu_s"]);
    assert!(cpu_s > 0.0);
    assert!((f(&s["client"]["cpu_us_per_event"]) - cpu_s * 1e6 / chunks as f64).abs() < 1e-6);
    assert_eq!(s["client"]["includes_builtin_sim"], false);
    // One engine core (--cores 1): its thread's CPU is part of the process's, and it ran for
    // the whole measured span.
    let cores = s["client"]["cores"].as_array().unwrap();
    assert_eq!(cores.len(), 1);
    let core_cpu_s = f(&cores[0]["cpu_s"]);
    assert!(
        core_cpu_s > 0.0 && core_cpu_s <= cpu_s + 0.01,
        "{core_cpu_s} vs {cpu_s}"
    );
    assert!(f(&cores[0]["wall_s"]) >= f(&s["duration_s"]) * 0.99);
    let busy = f(&cores[0]["busy_pct"]);
    assert!((busy - 100.0 * core_cpu_s / f(&cores[0]["wall_s"])).abs() < 1e-6);
    // Turns/Req is the mean 1-based turn index.
    let depth: u64 = records.iter().map(|r| turn_of(r) + 1).sum();
    assert!((f(&s["turns_per_request_mean"]) - depth as f64 / n).abs() < 1e-9);
}

/// TTFT and ITL as the client reports them stay within a stated tolerance of the sim's
/// configured model and of the sim's recorded send times.
#[test]
fn ttft_and_itl_match_the_configured_model() {
    let _alone = TIMING.write().unwrap_or_else(|e| e.into_inner());
    let dma = CpuDmaLatency::hold();
    let sim = Sim::start(&[
        "--ttft-base-ms",
        "30",
        "--ttft-per-uncached-token-us",
        "0",
        "--itl-ms",
        "10",
    ]);
    let run = sim.bench(&[
        "--number",
        "16",
        "--parallel",
        "8",
        "--min-turns",
        "2",
        "--max-turns",
        "2",
        "--min-prompt-length",
        "16",
        "--max-prompt-length",
        "16",
        "--max-tokens",
        "20",
        "--extra-args",
        r#"{"ignore_eos": true}"#,
    ]);
    let records = sim.stop();
    let s = &run.summary;
    assert_eq!(u(&s["requests"]["succeeded"]), 32);
    // 8 streams at 10 ms per token keep a core far from busy. (Send lag is wall time, so on a
    // loaded CI box the other saturation cause may fire; it is checked for shape below.)
    assert!(f(&s["client"]["cores"][0]["busy_pct"]) < 90.0);
    assert!(!run.stdout.contains("core was busy"));
    // Send lag: one sample per request, ordered stats, none longer than the run itself.
    let lag = &s["client"]["send_lag_us"];
    assert_eq!(u(&lag["count"]), 32);
    let (p50, p99, max) = (f(&lag["p50"]), f(&lag["p99"]), f(&lag["max"]));
    assert!(0.0 <= p50 && p50 <= p99 && p99 <= max, "{p50} {p99} {max}");
    assert!(max <= f(&s["duration_s"]) * 1e6, "{max} µs");
    assert!(run.stdout.contains("Send lag"), "{}", run.stdout);

    // Against the model: TTFT = 30 ms, ITL = 10 ms. Loopback and wake-up jitter only add time.
    // The bounds hold on a shared 2-core host with both cores kept busy by other processes
    // (a late wake-up there costs up to a scheduler slice, ≈ 3 ms) and still catch a figure
    // taken at the wrong event (one chunk off is 10 ms). Strict timing is the benchmark
    // scripts' job.
    let slack = if dma.held() { 1.0 } else { 3.0 };
    let ttft_p50 = f(&s["ttft_ms"]["p50"]);
    assert!(
        (29.9..36.0 * slack).contains(&ttft_p50),
        "TTFT p50 {ttft_p50} ms vs model 30 ms"
    );
    let itl_p50 = f(&s["itl_ms"]["p50"]);
    assert!(
        (7.0..13.0 * slack).contains(&itl_p50),
        "ITL p50 {itl_p50} ms vs model 10 ms"
    );
    let tpot_mean = f(&s["tpot_ms"]["mean"]);
    assert!(
        (9.0..11.5 * slack).contains(&tpot_mean),
        "TPOT {tpot_mean} ms vs model 10 ms"
    );

    // Against the sim's record: the client's figures track the server's send times.
    let truth_ttft = sim_ttft_ms(&records);
    let truth_itl = sim_itl_ms(&records);
    let truth_ttft_p50 = percentile(truth_ttft, 0.5);
    let truth_itl_mean = truth_itl.iter().sum::<f64>() / truth_itl.len() as f64;
    assert_eq!(
        truth_itl.len() as u64,
        u(&s["itl_ms"]["count"]),
        "one ITL per gap between content chunks"
    );
    assert!(
        (ttft_p50 - truth_ttft_p50).abs() < 5.0 * slack,
        "client TTFT p50 {ttft_p50} vs sim {truth_ttft_p50}"
    );
    // The mean ITL telescopes: per request, the client's gaps sum to its last chunk's time
    // minus its first, so a late wake-up between them moves no total and the mean holds on a
    // busy machine. A tail (p99) moves with one late wake-up of this shared core: it is
    // measured by scripts/bench-client.sh, not asserted here (it failed in CI beside a build).
    let itl_mean = f(&s["itl_ms"]["mean"]);
    // A late wake-up at a reply's first chunk (when the client has slept through the TTFT)
    // and none at its last shortens the client's sum by that delay: with the whole machine
    // loaded (load average 13 on 2 cores) it read 0.5 ms low per gap.
    assert!(
        (itl_mean - truth_itl_mean).abs() < 1.5 * slack,
        "client ITL mean {itl_mean} vs sim {truth_itl_mean}"
    );
}

/// A turn the sim fails is counted, its conversation is abandoned (no later turn is sent), and
/// the slot moves on to the next conversation.
#[test]
fn failed_turns_abandon_their_conversation() {
    let _shared = shared_lock();
    let sim = Sim::start(&["--ttft-base-ms", "1", "--itl-ms", "1", "--fail-every", "4"]);
    let run = sim.bench(&[
        "--number",
        "10",
        "--parallel",
        "2",
        "--min-turns",
        "3",
        "--max-turns",
        "3",
        "--max-tokens",
        "4",
    ]);
    let records = sim.stop();
    let s = &run.summary;
    let failed: Vec<&Value> = records.iter().filter(|r| r["failed"] == true).collect();
    assert!(!failed.is_empty());
    assert_eq!(u(&s["requests"]["failed"]), failed.len() as u64);
    assert_eq!(
        u(&s["requests"]["failures"]["http_500"]),
        failed.len() as u64
    );
    assert_eq!(u(&s["requests"]["total"]), records.len() as u64);
    assert_eq!(u(&s["conversations"]["abandoned"]), failed.len() as u64);
    assert_eq!(
        u(&s["conversations"]["completed"]) + u(&s["conversations"]["abandoned"]),
        10
    );
    for (conv, turns) in by_conversation(&records) {
        if let Some(pos) = turns.iter().position(|r| r["failed"] == true) {
            assert_eq!(
                pos + 1,
                turns.len(),
                "conversation {conv} sent a turn after its failure"
            );
        } else {
            assert_eq!(turns.len(), 3);
        }
    }
    assert!(
        run.stdout.contains("http_500="),
        "console names the failure cause"
    );
}

/// Without --url, bench starts the built-in sim and writes a complete summary.json.
#[test]
fn default_run_uses_builtin_sim_and_writes_every_key() {
    let _shared = shared_lock();
    let run = bench(&[
        "--number",
        "4",
        "--parallel",
        "2",
        "--max-turns",
        "2",
        "--max-tokens",
        "8",
    ]);
    let s = &run.summary;
    for key in [
        "requests",
        "conversations",
        "duration_s",
        "throughput",
        "turns_per_request_mean",
        "cache_hit_rate",
        "cache_hit_source",
    ] {
        assert!(!s[key].is_null(), "summary.json lacks {key}");
    }
    for key in ["total", "succeeded", "failed"] {
        assert!(s["requests"][key].is_u64(), "requests.{key}");
    }
    for key in ["completed", "abandoned"] {
        assert!(s["conversations"][key].is_u64(), "conversations.{key}");
    }
    for key in [
        "requests_per_s",
        "output_tokens_per_s",
        "total_tokens_per_s",
    ] {
        assert!(f(&s["throughput"][key]) > 0.0, "throughput.{key}");
    }
    for dist in [
        "ttft_ms",
        "itl_ms",
        "tpot_ms",
        "latency_ms",
        "input_tokens",
        "output_tokens",
        "first_turn_ttft_ms",
        "subsequent_turn_ttft_ms",
    ] {
        for stat in ["mean", "p50", "p90", "p99", "max"] {
            assert!(s[dist][stat].is_number(), "{dist}.{stat}");
        }
    }
    assert_eq!(u(&s["conversations"]["completed"]), 4);
    let rate = f(&s["cache_hit_rate"]);
    assert!((0.0..=1.0).contains(&rate));
    for heading in [
        "Performance Overview",
        "Per-Request Metrics",
        "TTFT (ms)",
        "Cache Hit (%)",
        "Subsequent-turn TTFT (ms)",
    ] {
        assert!(
            run.stdout.contains(heading),
            "console lacks {heading}:\n{}",
            run.stdout
        );
    }
}

/// --spin: executors never park; the run completes and summary.json records the choice.
#[test]
fn spin_runs_and_is_recorded() {
    let _shared = shared_lock();
    let sim = Sim::start(&["--ttft-base-ms", "1", "--itl-ms", "1"]);
    let run = sim.bench(&[
        "--number",
        "4",
        "--parallel",
        "2",
        "--max-tokens",
        "8",
        "--spin",
    ]);
    sim.stop();
    let s = &run.summary;
    assert_eq!(s["config"]["spin"], true);
    assert_eq!(u(&s["conversations"]["completed"]), 4);
    // Busy share under --spin is glommio's own run time, not the spinning thread's CPU.
    let busy = f(&s["client"]["cores"][0]["busy_pct"]);
    assert!((0.0..=100.0).contains(&busy), "{busy}");
}

/// --no-stream: one response per turn, TTFT equals latency, tokens from usage.
#[test]
fn non_streaming_turns_work() {
    let _shared = shared_lock();
    let sim = Sim::start(&["--ttft-base-ms", "2", "--itl-ms", "1"]);
    let run = sim.bench(&[
        "--number",
        "3",
        "--parallel",
        "3",
        "--min-turns",
        "2",
        "--max-turns",
        "2",
        "--max-tokens",
        "5",
        "--no-stream",
        "--extra-args",
        r#"{"ignore_eos": true}"#,
    ]);
    let records = sim.stop();
    let s = &run.summary;
    assert_eq!(u(&s["requests"]["succeeded"]), 6);
    assert!(records.iter().all(|r| r["stream"] == false));
    assert_eq!(f(&s["output_tokens"]["mean"]), 5.0);
    assert!((f(&s["ttft_ms"]["mean"]) - f(&s["latency_ms"]["mean"])).abs() < 0.01);
    assert_eq!(u(&s["itl_ms"]["count"]), 0);
}

#[test]
fn bad_flags_are_clear_errors() {
    let _shared = shared_lock();
    let e = bench_err(&["--min-turns", "5", "--max-turns", "2"]);
    assert!(e.contains("--min-turns"), "{e}");
    let e = bench_err(&["--extra-args", "{"]);
    assert!(e.contains("--extra-args"), "{e}");
    let e = bench_err(&["--url", "ftp://127.0.0.1:1", "--model", "m"]);
    assert!(e.contains("https://"), "{e}");
    let e = bench_err(&["--url", "http://127.0.0.1:1"]);
    assert!(e.contains("--model"), "{e}");
    let e = bench_err(&["--dataset", "nope"]);
    assert!(e.contains("nope"), "{e}");
}

/// A server that reports no `cached_tokens`: the cache-hit rate is evalscope's estimate (previous
/// prompt + previous completion of the same conversation) and says so.
#[test]
fn cache_hit_rate_is_estimated_without_cached_tokens() {
    let _shared = shared_lock();
    let sim = Sim::start(&[
        "--ttft-base-ms",
        "1",
        "--itl-ms",
        "1",
        "--usage",
        "no-cached",
    ]);
    let run = sim.bench(&[
        "--number",
        "6",
        "--parallel",
        "3",
        "--min-turns",
        "2",
        "--max-turns",
        "3",
        "--max-tokens",
        "8",
        "--extra-args",
        r#"{"ignore_eos": true}"#,
    ]);
    let records = sim.stop();
    let s = &run.summary;
    assert_eq!(s["cache_hit_source"], "estimated");
    assert_eq!(s["token_source"], "server");
    let (mut cached, mut prompt) = (0u64, 0u64);
    for turns in by_conversation(&records).values() {
        for (k, r) in turns.iter().enumerate() {
            prompt += u(&r["prompt_tokens"]);
            if k > 0 {
                cached += u(&turns[k - 1]["prompt_tokens"]) + u(&turns[k - 1]["completion_tokens"]);
            }
        }
    }
    assert!((f(&s["cache_hit_rate"]) - cached as f64 / prompt as f64).abs() < 1e-12);
    assert!(
        run.stdout.contains("Cache Hit (%) (est.)"),
        "{}",
        run.stdout
    );
}

/// A server that sends no usage at all: output tokens are the output-bearing chunks, input tokens
/// the bare tokens of the messages sent, and both are labelled estimated.
#[test]
fn token_counts_are_estimated_without_usage() {
    let _shared = shared_lock();
    let sim = Sim::start(&[
        "--ttft-base-ms",
        "1",
        "--itl-ms",
        "1",
        "--usage",
        "none",
        "--tokens-per-chunk",
        "2",
    ]);
    let run = sim.bench(&[
        "--number",
        "4",
        "--parallel",
        "2",
        "--min-turns",
        "2",
        "--max-turns",
        "2",
        "--min-prompt-length",
        "10",
        "--max-prompt-length",
        "30",
        "--max-tokens",
        "12",
        "--extra-args",
        r#"{"ignore_eos": true}"#,
    ]);
    let records = sim.stop();
    let s = &run.summary;
    assert_eq!(s["token_source"], "estimated");
    assert_eq!(u(&s["requests"]["succeeded"]), 8);
    let chunks = |r: &Value| r["chunk_ns"].as_array().unwrap().len() as u64;
    // 12 tokens in chunks of 2: 6 output-bearing events per request.
    assert_eq!(f(&s["output_tokens"]["mean"]), 6.0);
    let mut input = 0u64;
    for turns in by_conversation(&records).values() {
        for (k, r) in turns.iter().enumerate() {
            let tokens: Vec<u64> = r["message_tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(u)
                .collect();
            input += tokens.iter().step_by(2).sum::<u64>();
            input += turns[..k].iter().map(chunks).sum::<u64>();
        }
    }
    assert!((f(&s["input_tokens"]["mean"]) - input as f64 / 8.0).abs() < 1e-9);
    assert!(
        run.stdout.contains("Output Tokens (est.)"),
        "{}",
        run.stdout
    );
}

/// Ctrl-C stops claiming conversations, lets in-flight turns finish and still writes the report
/// for what was measured.
#[test]
fn interrupt_still_writes_the_report() {
    let _shared = shared_lock();
    let sim = Sim::start(&["--ttft-base-ms", "5", "--itl-ms", "5"]);
    let url = sim.url();
    let dir = tempfile::tempdir().unwrap();
    let mut child = parley()
        .args([
            "bench",
            "--url",
            &url,
            "--model",
            "parley-sim",
            "--number",
            "1000",
            "--parallel",
            "2",
            "--cores",
            "1",
            "--min-turns",
            "3",
            "--max-turns",
            "3",
            "--max-tokens",
            "20",
            "--extra-args",
            r#"{"ignore_eos": true}"#,
            "--quiet",
            "--name",
            "t",
            "--outputs-dir",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the sim has answered a few turns (8 over 2 slots: at least one
    // conversation has completed), however long a busy machine takes to get there.
    let seen = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_to_string(&sim.record).map_or(0, |t| t.lines().count()) < 8 {
        assert!(std::time::Instant::now() < seen, "the sim saw no traffic");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bench did not stop after SIGINT"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // Interrupted, report written: 128 + SIGINT (README, "Exit codes").
    assert_eq!(status.code(), Some(130), "{status}");
    let records = sim.stop();
    let path = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("t/summary.json");
    let s: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(s["interrupted"], true);
    let completed = u(&s["conversations"]["completed"]);
    assert!(completed > 0 && completed < 1000, "{completed}");
    // Every request the sim saw is accounted for, none failed: in-flight turns finished.
    assert_eq!(u(&s["requests"]["total"]), records.len() as u64);
    assert_eq!(u(&s["requests"]["failed"]), 0);
    assert_eq!(u(&s["requests"]["succeeded"]), records.len() as u64);
    // Completed conversations sent all 3 turns; interrupted ones (at most one per slot) fewer.
    let by_conv = by_conversation(&records);
    let full = by_conv.values().filter(|t| t.len() == 3).count() as u64;
    assert_eq!(full, completed);
    assert_eq!(
        by_conv.len() as u64,
        completed + u(&s["conversations"]["interrupted"])
    );
    assert!(u(&s["conversations"]["interrupted"]) <= 2);
}
