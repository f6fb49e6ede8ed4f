//! The SSE framer: the input split at fuzzer-chosen points frames to the same events as the input
//! fed whole (default bound), and never panics under a small bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parley::sse::{SseError, SseFramer};

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

fuzz_target!(|data: &[u8]| {
    // First byte: how many cuts (0..8); the next that many bytes: where (scaled to the stream).
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 8).min(rest.len());
    let (cuts, stream) = rest.split_at(n);
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|&c| usize::from(c) * (stream.len() + 1) / 256)
        .collect();
    at.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for c in at {
        pieces.push(&stream[start..c]);
        start = c;
    }
    pieces.push(&stream[start..]);

    let mut framer = SseFramer::new();
    let whole = frame(&mut framer, &[stream]);
    let parts = frame(&mut framer, &pieces);
    assert_eq!(parts, whole, "split and whole framing differ");

    let mut small = SseFramer::with_max_event(16);
    let whole = frame(&mut small, &[stream]);
    let parts = frame(&mut small, &pieces);
    if !parts.1 {
        assert_eq!(parts, whole, "split and whole framing differ (small bound)");
    }
});
