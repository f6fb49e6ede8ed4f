//! The rest of the hot path besides SSE parsing (which `sse_chunk` covers):
//! - building a turn's request body for a 32k-token history (`engine::assemble_body` over the
//!   history's segments) and walking it the way hyper does (`poll_frame` until the end), i.e.
//!   the client's CPU for a request above the socket write itself — next to a plain memcpy of
//!   the same bytes into one buffer, the cost a serialise-per-turn client would pay at least;
//! - per-core recording: `Recorder::record_success` for a 256-event streamed request (per
//!   request and per event), and `record_send_lag`;
//! - a per-request record (`records.jsonl`): formatting the line of a 256-event request into the
//!   core's buffer, and the same with the writer thread writing it to a file, as process CPU per
//!   record (both threads).
//!
//! Run: `cargo bench --bench turn_and_record --profile bench-fast`

use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Body;

use parley::client::TurnTiming;
use parley::engine::{assemble_body, BodyShape, EndpointKind};
use parley::metrics::{CacheSource, Recorder, Success};
use parley::records::{Attempt, RecordsWriter, Status, Tokens};
use parley::workload::{message_json, COMMA};

const ROUNDS: usize = 7;

/// Best and median of `ROUNDS` timed rounds of `n` ops each, in ns per op.
fn measure(name: &str, n: usize, mut run: impl FnMut(usize) -> u64) {
    black_box(run(n / 10 + 1));
    let mut all: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            black_box(run(n));
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    all.sort_by(f64::total_cmp);
    println!(
        "{name:<60} {:>10.1} ns/op (median {:>10.1})",
        all[0],
        all[ROUNDS / 2]
    );
}

/// A 32k-token conversation history: 16 user/assistant exchanges of ~1,000 tokens each way,
/// ≈ 4 bytes per token of English-like text, as the engine keeps it (one `Bytes` per message,
/// commas between).
fn history_32k() -> Vec<Bytes> {
    let words = "the quick brown fox jumps over a lazy dog while parley measures every token ";
    let text: String = words.repeat(4_000 / words.len() + 1)[..4_000].to_string();
    let mut history = Vec::new();
    for i in 0..32 {
        if i > 0 {
            history.push(COMMA);
        }
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        history.push(Bytes::from(message_json(role, &text)));
    }
    history
}

fn drain(mut body: impl Body<Data = Bytes> + Unpin) -> u64 {
    let mut cx = Context::from_waker(Waker::noop());
    let mut bytes = 0u64;
    while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
        if let Ok(data) = frame.into_data() {
            bytes += black_box(data).len() as u64;
        }
    }
    bytes
}

fn main() {
    let shape = BodyShape {
        open: Bytes::from_static(
            b"{\"model\":\"Qwen/Qwen3-8B\",\"stream\":true,\"max_tokens\":256,\"messages\":[",
        ),
        open_without_max: Bytes::from_static(
            b"\"model\":\"Qwen/Qwen3-8B\",\"stream\":true,\"messages\":[",
        ),
        max_tokens_field: "max_tokens",
        kind: EndpointKind::Chat,
    };
    let history = history_32k();
    let body_bytes = assemble_body(&shape, None, &history).len();
    println!(
        "-- request body: {} segments, {} bytes (≈ 32k tokens)",
        history.len() + 2,
        body_bytes
    );
    measure("assemble_body (32k-token history)", 200_000, |n| {
        (0..n)
            .map(|_| assemble_body(&shape, None, black_box(&history)).len())
            .sum()
    });
    measure(
        "assemble_body + walk frames as hyper does + drop",
        200_000,
        |n| {
            (0..n)
                .map(|_| drain(assemble_body(&shape, None, black_box(&history))))
                .sum()
        },
    );
    measure(
        "assemble_body with per-turn max_tokens + walk",
        200_000,
        |n| {
            (0..n)
                .map(|_| drain(assemble_body(&shape, Some(300), black_box(&history))))
                .sum()
        },
    );
    let mut flat = Vec::with_capacity(body_bytes as usize);
    measure(
        "baseline: memcpy the same bytes into one buffer",
        20_000,
        |n| {
            (0..n)
                .map(|_| {
                    flat.clear();
                    for s in black_box(&history) {
                        flat.extend_from_slice(s);
                    }
                    flat.len() as u64
                })
                .sum()
        },
    );

    println!("-- per-core recording");
    let itl_ns: Vec<u64> = (0..255).map(|i| 9_000_000 + (i % 7) * 500_000).collect();
    let timing = TurnTiming {
        start_ns: 1_000_000_000,
        first_write_ns: Some(1_000_020_000),
        first_output_ns: Some(1_030_000_000),
        end_ns: 3_600_000_000,
        output_chunks: 256,
        usage: None,
    };
    let mut rec = Recorder::new();
    let n_requests = 20_000;
    measure(
        "record_success, 256-event request (per request)",
        n_requests,
        |n| {
            for _ in 0..n {
                rec.record_success(Success {
                    timing: black_box(&timing),
                    intended_ns: 0,
                    url: 0,
                    itl_ns: black_box(&itl_ns),
                    turn: 1,
                    prompt_tokens: 32_000,
                    completion_tokens: 256,
                    tokens_from_usage: true,
                    cached_tokens: 31_000,
                    cache_source: CacheSource::Server,
                });
            }
            rec.requests_succeeded
        },
    );
    measure(
        "record_success, 256-event request (per event: ÷ 256)",
        n_requests * 256,
        |n| {
            for _ in 0..n / 256 {
                rec.record_success(Success {
                    timing: black_box(&timing),
                    intended_ns: 0,
                    url: 0,
                    itl_ns: black_box(&itl_ns),
                    turn: 1,
                    prompt_tokens: 32_000,
                    completion_tokens: 256,
                    tokens_from_usage: true,
                    cached_tokens: 31_000,
                    cache_source: CacheSource::Server,
                });
            }
            rec.requests_succeeded
        },
    );
    measure("record_send_lag (per request)", 10_000_000, |n| {
        for i in 0..n as u64 {
            rec.record_send_lag(black_box(1_000), black_box(21_000 + (i & 1023) * 100));
        }
        rec.send_lag_ns.count()
    });
    println!("-- per-request records");
    let attempt = Attempt {
        measured: true,
        conversation: 123_456,
        pool_index: 789,
        turn: 3,
        attempt: 0,
        url: 0,
        intended_ns: timing.start_ns - 5_000,
    };
    let tokens = Tokens {
        prompt: Some(32_000),
        cached: Some(31_000),
        output: Some(256),
        from_usage: true,
    };
    let dir = tempfile::tempdir().unwrap();
    let writer = RecordsWriter::start(dir.path(), &["http://127.0.0.1:8000".into()]).unwrap();
    let mut sink = writer.channel().sink(0);
    let mut gaps = itl_ns.clone();
    let mut pushed = 0u64;
    let cpu_ns = parley::metrics::process_cpu_ns;
    let cpu_before_ns = cpu_ns();
    let wall = Instant::now();
    measure(
        "record line + writer, 256-event request (wall, per request)",
        20_000,
        |n| {
            for _ in 0..n {
                sink.push(attempt.timed(black_box(&timing), &mut gaps, tokens, Status::Ok));
            }
            pushed += n as u64;
            pushed
        },
    );
    drop(sink);
    let path = writer.finish().unwrap();
    let (cpu, wall_ns) = (cpu_ns() - cpu_before_ns, wall.elapsed().as_nanos());
    println!(
        "{:<60} {:>10.1} ns/op (process CPU, both threads; {:.0} % of wall; {} MiB written)",
        "  the same, CPU per record",
        cpu as f64 / pushed as f64,
        100.0 * cpu as f64 / wall_ns as f64,
        std::fs::metadata(path).unwrap().len() >> 20
    );
    let other = rec.clone();
    measure("Recorder::merge (once per core at the end)", 200, |n| {
        for _ in 0..n {
            rec.merge(black_box(&other));
        }
        rec.requests_succeeded
    });
}
