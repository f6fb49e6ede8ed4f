//! ns per SSE event: framing alone, and framing + chunk parse + reply append, for a realistic
//! ~240-byte vLLM chunk, fed one event per feed and 64 coalesced events per feed.
//! Also parse-only numbers for the tape parser and two simd-json alternatives (borrowed value,
//! typed serde) it was measured against.
//!
//! Run: `cargo bench --bench sse_chunk --profile bench-fast`
//! (`PARLEY_BENCH_EVENTS=<n>` changes the events per timed round; default 2,000,000.)

use std::hint::black_box;
use std::time::Instant;

use parley::chunk::ChunkParser;
use parley::sse::{SseError, SseFramer};

/// A vLLM 0.x content chunk (Qwen model id, one-token delta, `stop_reason`/`token_ids` extras).
const CHUNK: &str = r#"{"id":"chatcmpl-8c1f0e2a9b7d4c3e8f6a5b4c3d","object":"chat.completion.chunk","created":1733312345,"model":"Qwen/Qwen2.5-7B-Instruct","choices":[{"index":0,"delta":{"content":" the"},"logprobs":null,"finish_reason":null,"stop_reason":null}]}"#;

const ROUNDS: usize = 7;

fn events_per_round() -> usize {
    std::env::var("PARLEY_BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000)
}

/// Best-of-`ROUNDS` ns per event; `run` processes `n` events and returns how many it saw.
/// `PARLEY_BENCH_ONLY=<substring>` runs only the matching cases (for profiling).
fn measure(name: &str, n: usize, mut run: impl FnMut(usize) -> usize) {
    if let Ok(only) = std::env::var("PARLEY_BENCH_ONLY") {
        if !name.contains(only.as_str()) {
            return;
        }
    }
    let seen = run(n / 10); // warm-up (buffers grow, caches fill)
    assert!(seen > 0, "{name}: no events");
    let mut best = f64::INFINITY;
    let mut all = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let seen = run(n);
        let ns = t.elapsed().as_nanos() as f64 / seen as f64;
        best = best.min(ns);
        all.push(ns);
    }
    all.sort_by(f64::total_cmp);
    println!(
        "{name:<52} {best:>7.1} ns/event (median {:>7.1})",
        all[ROUNDS / 2]
    );
}

#[derive(Debug)]
struct Err;
impl From<SseError> for Err {
    fn from(_: SseError) -> Self {
        Err
    }
}

/// Feeds `buf` (holding `per_feed` events) until `n` events were framed.
fn frame_only(framer: &mut SseFramer, buf: &[u8], per_feed: usize, n: usize) -> usize {
    let mut seen = 0;
    for _ in 0..n.div_ceil(per_feed) {
        framer
            .feed(black_box(buf), |d: &mut [u8]| {
                black_box(&*d);
                seen += 1;
                Ok::<_, Err>(())
            })
            .unwrap();
    }
    seen
}

fn frame_and_parse(
    framer: &mut SseFramer,
    parser: &mut ChunkParser,
    reply: &mut String,
    buf: &[u8],
    per_feed: usize,
    n: usize,
) -> usize {
    let mut seen = 0;
    let mut outputs = 0;
    for _ in 0..n.div_ceil(per_feed) {
        framer
            .feed(black_box(buf), |d: &mut [u8]| {
                seen += 1;
                if ChunkParser::is_done(d) {
                    return Ok(());
                }
                let info = parser.parse_chunk(d, reply).map_err(|_| Err)?;
                outputs += usize::from(info.output);
                Ok::<_, Err>(())
            })
            .unwrap();
        // One reply per ~1k events, as if a response ended.
        if reply.len() > 4096 {
            reply.clear();
        }
    }
    assert_eq!(outputs, seen);
    seen
}

mod alt {
    //! The alternatives the tape walk was measured against (parse + the same extraction).
    use serde::Deserialize;
    use simd_json::prelude::*;
    use simd_json::Buffers;

    pub fn borrowed_value(input: &mut [u8], buffers: &mut Buffers, reply: &mut String) -> bool {
        let Ok(v) = simd_json::to_borrowed_value_with_buffers(input, buffers) else {
            return false;
        };
        let Some(delta) = v
            .get("choices")
            .and_then(|c| c.get_idx(0))
            .and_then(|c| c.get("delta"))
        else {
            return false;
        };
        let _usage = v.get("usage").and_then(|u| u.get_u64("prompt_tokens"));
        match delta.get_str("content") {
            Some(s) if !s.is_empty() => {
                reply.push_str(s);
                true
            }
            _ => false,
        }
    }

    #[derive(Deserialize)]
    pub struct Chunk<'a> {
        #[serde(borrow, default)]
        choices: Vec<Choice<'a>>,
        #[serde(default)]
        usage: Option<Usage>,
    }
    #[derive(Deserialize)]
    struct Choice<'a> {
        #[serde(borrow)]
        delta: Option<Delta<'a>>,
        #[serde(default)]
        #[allow(dead_code)]
        finish_reason: Option<&'a str>,
    }
    #[derive(Deserialize)]
    struct Delta<'a> {
        #[serde(borrow, default)]
        content: Option<std::borrow::Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Usage {
        prompt_tokens: u64,
        completion_tokens: u64,
    }

    pub fn typed_serde(input: &mut [u8], buffers: &mut Buffers, reply: &mut String) -> bool {
        let Ok(c) = simd_json::serde::from_slice_with_buffers::<Chunk>(input, buffers) else {
            return false;
        };
        let _ = c.usage.map(|u| u.prompt_tokens);
        match c
            .choices
            .first()
            .and_then(|c| c.delta.as_ref())
            .and_then(|d| d.content.as_deref())
        {
            Some(s) if !s.is_empty() => {
                reply.push_str(s);
                true
            }
            _ => false,
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let n = events_per_round();
    let event = format!("data: {CHUNK}\n\n");
    let event_crlf = format!("data: {CHUNK}\r\n\r\n");
    let coalesced = event.repeat(64);
    let coalesced_crlf = event_crlf.repeat(64);
    println!(
        "chunk JSON {} bytes, SSE event {} bytes; {n} events per round, best of {ROUNDS}",
        CHUNK.len(),
        event.len()
    );

    let mut framer = SseFramer::new();
    let mut parser = ChunkParser::new();
    let mut reply = String::with_capacity(8192);

    println!("-- framing only");
    measure("frame, 1 event per feed", n, |n| {
        frame_only(&mut framer, event.as_bytes(), 1, n)
    });
    measure("frame, 64 coalesced events per feed", n, |n| {
        frame_only(&mut framer, coalesced.as_bytes(), 64, n)
    });
    measure("frame, 64 coalesced events per feed, CRLF", n, |n| {
        frame_only(&mut framer, coalesced_crlf.as_bytes(), 64, n)
    });
    // Worst realistic split: every event cut in two mid-JSON (partial line carried over).
    let half = event.len() / 2;
    measure("frame, each event split across 2 feeds", n, |n| {
        let mut seen = 0;
        for _ in 0..n {
            for part in [&event.as_bytes()[..half], &event.as_bytes()[half..]] {
                framer
                    .feed(black_box(part), |d: &mut [u8]| {
                        black_box(&*d);
                        seen += 1;
                        Ok::<_, Err>(())
                    })
                    .unwrap();
            }
        }
        seen
    });

    println!("-- framing + chunk parse + reply append");
    measure("frame+parse, 1 event per feed", n, |n| {
        frame_and_parse(&mut framer, &mut parser, &mut reply, event.as_bytes(), 1, n)
    });
    measure("frame+parse, 64 coalesced events per feed", n, |n| {
        frame_and_parse(
            &mut framer,
            &mut parser,
            &mut reply,
            coalesced.as_bytes(),
            64,
            n,
        )
    });

    println!("-- parse only (payload copied into a scratch buffer first, as the framer does)");
    let mut scratch = CHUNK.as_bytes().to_vec();
    measure("parse: ChunkParser (tape, reused tape + Buffers)", n, |n| {
        let mut out = 0;
        for _ in 0..n {
            scratch.copy_from_slice(CHUNK.as_bytes());
            let info = parser.parse_chunk(black_box(&mut scratch), &mut reply);
            out += usize::from(info.map(|i| i.output).unwrap_or(false));
            if reply.len() > 4096 {
                reply.clear();
            }
        }
        out
    });
    let mut buffers = simd_json::Buffers::new(1024);
    measure("parse: simd-json borrowed Value (reused Buffers)", n, |n| {
        let mut out = 0;
        for _ in 0..n {
            scratch.copy_from_slice(CHUNK.as_bytes());
            out += usize::from(alt::borrowed_value(
                black_box(&mut scratch),
                &mut buffers,
                &mut reply,
            ));
            if reply.len() > 4096 {
                reply.clear();
            }
        }
        out
    });
    measure("parse: simd-json typed serde (reused Buffers)", n, |n| {
        let mut out = 0;
        for _ in 0..n {
            scratch.copy_from_slice(CHUNK.as_bytes());
            out += usize::from(alt::typed_serde(
                black_box(&mut scratch),
                &mut buffers,
                &mut reply,
            ));
            if reply.len() > 4096 {
                reply.clear();
            }
        }
        out
    });
}
