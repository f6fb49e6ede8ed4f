//! Incremental Server-Sent Events framing over arbitrary body frames. (Owned by the SSE work.)
//!
//! Bytes arrive split and coalesced at any boundary; events end at a blank line. Lines end with
//! `\n`, `\r\n` or a lone `\r` (per the SSE spec), mixed freely, and a `\r\n` may itself be split
//! across two frames. Only `data:` lines matter; comments (`:`), `event:`, `id:` and `retry:`
//! lines (and any other field) are dropped. One buffer per connection, reused for the whole run.
//!
//! Deviations from the WHATWG event-stream algorithm, on purpose:
//! - an event whose joined data is empty (`data:` with nothing after it) is not emitted: it
//!   carries nothing a chunk parser could use;
//! - [`SseFramer::finish`] emits a trailing event that lacks its final blank line (evalscope does
//!   this; the spec discards it).
//!
//! Hot path: lines are found with a SIMD search for `\n`/`\r` (AVX2 when the CPU has it, else
//! SSE2, which is part of the x86_64 baseline; a word-at-a-time fallback on other targets). This
//! is `memchr2`; the `memchr` crate is only a transitive dependency here. A complete line's data
//! value is copied once into the event buffer, which the callback receives mutably (so simd-json
//! can parse it in place): the input is `&[u8]`, so that one copy is the minimum. Nothing is
//! allocated per event once the buffer has grown to the largest event.

use std::mem;

/// Default bound on one event's data payload (and on one buffered line).
pub const DEFAULT_MAX_EVENT: usize = 16 << 20;

/// Capacity kept across [`SseFramer::reset`]; larger buffers (left by a huge event) are shrunk
/// so thousands of connections do not each pin megabytes.
const KEEP_CAPACITY: usize = 64 << 10;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A buffered line may exceed `max_event` by this much (field name, `: `, BOM), so an event of
/// exactly `max_event` bytes frames the same whether or not its line is split across feeds.
const LINE_SLACK: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("SSE event larger than {limit} bytes")]
    EventTooLarge { limit: usize },
}

/// Per-connection SSE framer.
///
/// After an error (from the framer or from the callback) the rest of that feed is dropped; the
/// response should be abandoned and [`reset`](Self::reset) called before the next one.
pub struct SseFramer {
    /// Data of the event being assembled (`data:` values joined with `\n`).
    data: Vec<u8>,
    /// At least one `data` line was seen in the current event.
    has_data: bool,
    /// A line left incomplete at the end of the previous feed.
    line: Vec<u8>,
    /// The previous feed ended with `\r`: a `\n` opening the next one belongs to it.
    skip_lf: bool,
    /// No line completed yet in this stream (a leading UTF-8 BOM is stripped).
    at_start: bool,
    max_event: usize,
}

impl Default for SseFramer {
    fn default() -> Self {
        Self::new()
    }
}

impl SseFramer {
    pub fn new() -> Self {
        Self::with_max_event(DEFAULT_MAX_EVENT)
    }

    /// A framer whose events (joined data) may not exceed `max_event` bytes; a line held over
    /// between feeds may not exceed it by more than a few bytes.
    pub fn with_max_event(max_event: usize) -> Self {
        Self {
            // Grown on the first event to the size of the largest one: a slot that never
            // streams holds nothing, and one that does holds one event's worth, not 1 KiB.
            data: Vec::new(),
            has_data: false,
            line: Vec::new(),
            skip_lf: false,
            at_start: true,
            max_event,
        }
    }

    /// The configured bound.
    pub fn max_event(&self) -> usize {
        self.max_event
    }

    /// Forgets any partial event (call between responses).
    pub fn reset(&mut self) {
        self.data.clear();
        self.data.shrink_to(KEEP_CAPACITY);
        self.line.clear();
        self.line.shrink_to(KEEP_CAPACITY);
        self.has_data = false;
        self.skip_lf = false;
        self.at_start = true;
    }

    /// Feeds `bytes`; calls `on_data` with the data payload of every event completed by them
    /// (several `data:` lines of one event joined with `\n`). Events without data are skipped.
    /// The payload is mutable so it can be parsed in place (simd-json).
    pub fn feed<E>(
        &mut self,
        bytes: &[u8],
        mut on_data: impl FnMut(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<SseError>,
    {
        let mut rest = bytes;
        if self.skip_lf {
            match rest.first() {
                None => return Ok(()),
                Some(b'\n') => rest = &rest[1..],
                Some(_) => {}
            }
            self.skip_lf = false;
        }

        // Finish a line left over from the previous feed.
        if !self.line.is_empty() {
            let Some(i) = find_eol(rest) else {
                return self.stash(rest);
            };
            self.stash(&rest[..i])?;
            rest = self.after_eol(rest, i);
            let line = mem::take(&mut self.line);
            let r = self.on_line(&line, &mut on_data);
            self.line = line;
            self.line.clear();
            r?;
        }

        // Complete lines straight out of the input.
        loop {
            let Some(i) = find_eol(rest) else {
                return self.stash(rest);
            };
            let line = &rest[..i];
            rest = self.after_eol(rest, i);
            self.on_line(line, &mut on_data)?;
        }
    }

    /// At end of stream: emits a final event left without its blank line, if any.
    /// Leaves the framer reset for the next response.
    pub fn finish<E>(
        &mut self,
        mut on_data: impl FnMut(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<SseError>,
    {
        let mut r = Ok(());
        if !self.line.is_empty() {
            let line = mem::take(&mut self.line);
            r = self.on_line(&line, &mut on_data);
            self.line = line;
        }
        if r.is_ok() {
            r = self.dispatch(&mut on_data);
        }
        self.reset();
        r
    }

    /// Consumes the terminator at `rest[i]` (and the `\n` of a `\r\n`), returning what follows.
    #[inline(always)]
    fn after_eol<'a>(&mut self, rest: &'a [u8], i: usize) -> &'a [u8] {
        let cr = rest[i] == b'\r';
        let mut next = &rest[i + 1..];
        if cr {
            match next.first() {
                Some(b'\n') => next = &next[1..],
                Some(_) => {}
                None => self.skip_lf = true,
            }
        }
        next
    }

    /// Keeps an incomplete line for the next feed, within the bound.
    #[inline]
    fn stash<E: From<SseError>>(&mut self, part: &[u8]) -> Result<(), E> {
        if part.is_empty() {
            return Ok(());
        }
        if self.line.len() + part.len() > self.max_event.saturating_add(LINE_SLACK) {
            return Err(self.too_large());
        }
        self.line.extend_from_slice(part);
        Ok(())
    }

    #[cold]
    fn too_large<E: From<SseError>>(&mut self) -> E {
        self.reset();
        E::from(SseError::EventTooLarge {
            limit: self.max_event,
        })
    }

    /// Handles one complete line (without its terminator).
    #[inline(always)]
    fn on_line<E: From<SseError>>(
        &mut self,
        mut line: &[u8],
        on_data: &mut impl FnMut(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.at_start {
            self.at_start = false;
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        if line.is_empty() {
            return self.dispatch(on_data);
        }
        let Some(value) = line.strip_prefix(b"data") else {
            return Ok(()); // comment, event:, id:, retry:, unknown field
        };
        let value = match value.split_first() {
            None => value, // "data" alone: field with an empty value
            Some((b':', v)) => v.strip_prefix(b" ").unwrap_or(v),
            Some(_) => return Ok(()), // "dataX:": another field
        };
        let sep = usize::from(self.has_data);
        if self.data.len() + sep + value.len() > self.max_event {
            return Err(self.too_large());
        }
        if self.has_data {
            self.data.push(b'\n');
        }
        self.data.extend_from_slice(value);
        self.has_data = true;
        Ok(())
    }

    /// Blank line: hands over the event's data, if any, and starts a new event.
    #[inline(always)]
    fn dispatch<E>(
        &mut self,
        on_data: &mut impl FnMut(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if !self.has_data {
            return Ok(());
        }
        self.has_data = false;
        let r = if self.data.is_empty() {
            Ok(())
        } else {
            on_data(&mut self.data)
        };
        self.data.clear();
        r
    }
}

/// Index of the first `\n` or `\r` in `hay`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn find_eol(hay: &[u8]) -> Option<usize> {
    match hay.first() {
        None => return None,
        // A blank line right after the previous line's end: the end of every event.
        Some(b'\n' | b'\r') => return Some(0),
        Some(_) => {}
    }
    if hay.len() >= 64 && has_avx2() {
        // SAFETY: AVX2 support was checked at run time.
        unsafe { find_eol_avx2(hay) }
    } else {
        find_eol_sse2(hay)
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_avx2() -> bool {
    // Compiled away when the build targets AVX2; otherwise a cached atomic load.
    cfg!(target_feature = "avx2") || std::is_x86_feature_detected!("avx2")
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn find_eol_sse2(hay: &[u8]) -> Option<usize> {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    let len = hay.len();
    if len < 16 {
        return find_eol_scalar(hay);
    }
    let ptr = hay.as_ptr();
    // SAFETY: SSE2 is part of the x86_64 baseline. Every load reads 16 bytes starting at an
    // offset `i` with `i + 16 <= len`, so it stays inside `hay`; loads are unaligned.
    unsafe {
        let nl = _mm_set1_epi8(b'\n' as i8);
        let cr = _mm_set1_epi8(b'\r' as i8);
        let mask_at = |i: usize| -> u32 {
            let v = _mm_loadu_si128(ptr.add(i).cast::<__m128i>());
            let m = _mm_or_si128(_mm_cmpeq_epi8(v, nl), _mm_cmpeq_epi8(v, cr));
            _mm_movemask_epi8(m) as u32
        };
        let mut i = 0;
        // Two blocks per step, one branch: lines of a few hundred bytes are the common case.
        while i + 32 <= len {
            let m = mask_at(i) | (mask_at(i + 16) << 16);
            if m != 0 {
                return Some(i + m.trailing_zeros() as usize);
            }
            i += 32;
        }
        while i + 16 <= len {
            let m = mask_at(i);
            if m != 0 {
                return Some(i + m.trailing_zeros() as usize);
            }
            i += 16;
        }
        if i < len {
            // Overlapping last block; bytes before `i` are known not to match.
            let start = len - 16;
            let m = mask_at(start) >> (i - start);
            if m != 0 {
                return Some(i + m.trailing_zeros() as usize);
            }
        }
    }
    None
}

/// AVX2 search, 64 bytes per step.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn find_eol_avx2(hay: &[u8]) -> Option<usize> {
    use std::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256,
        _mm256_set1_epi8,
    };
    let len = hay.len();
    if len < 32 {
        return find_eol_scalar(hay);
    }
    let ptr = hay.as_ptr();
    let nl = _mm256_set1_epi8(b'\n' as i8);
    let cr = _mm256_set1_epi8(b'\r' as i8);
    // Not a closure: closures do not inherit `target_feature` on every supported toolchain.
    macro_rules! mask_at {
        ($i:expr) => {{
            // SAFETY: callers keep `$i + 32 <= len`, so the unaligned load stays inside `hay`.
            let v = unsafe { _mm256_loadu_si256(ptr.add($i).cast::<__m256i>()) };
            _mm256_movemask_epi8(_mm256_or_si256(
                _mm256_cmpeq_epi8(v, nl),
                _mm256_cmpeq_epi8(v, cr),
            )) as u32
        }};
    }
    let mut i = 0;
    while i + 64 <= len {
        let m = u64::from(mask_at!(i)) | (u64::from(mask_at!(i + 32)) << 32);
        if m != 0 {
            return Some(i + m.trailing_zeros() as usize);
        }
        i += 64;
    }
    while i + 32 <= len {
        let m = mask_at!(i);
        if m != 0 {
            return Some(i + m.trailing_zeros() as usize);
        }
        i += 32;
    }
    if i < len {
        // Overlapping last block; bytes before `i` are known not to match.
        let start = len - 32;
        let m = mask_at!(start) >> (i - start);
        if m != 0 {
            return Some(i + m.trailing_zeros() as usize);
        }
    }
    None
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn find_eol(hay: &[u8]) -> Option<usize> {
    find_eol_swar(hay)
}

#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline]
fn find_eol_scalar(hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == b'\n' || b == b'\r')
}

/// Word-at-a-time search (portable fallback).
#[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
fn find_eol_swar(hay: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut chunks = hay.chunks_exact(8);
    let mut base = 0;
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let w = u64::from_le_bytes(w);
        let a = w ^ (LO * u64::from(b'\n'));
        let b = w ^ (LO * u64::from(b'\r'));
        // Exact for the lowest zero byte (false positives only above a true one).
        let z = (a.wrapping_sub(LO) & !a & HI) | (b.wrapping_sub(LO) & !b & HI);
        if z != 0 {
            return Some(base + (z.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    find_eol_scalar(chunks.remainder()).map(|p| base + p)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum TestErr {
        Sse(SseError),
        Stop,
    }
    impl From<SseError> for TestErr {
        fn from(e: SseError) -> Self {
            TestErr::Sse(e)
        }
    }

    fn frame_pieces(pieces: &[&[u8]]) -> Result<Vec<Vec<u8>>, TestErr> {
        let mut f = SseFramer::new();
        frame_with(&mut f, pieces)
    }

    fn frame_with(f: &mut SseFramer, pieces: &[&[u8]]) -> Result<Vec<Vec<u8>>, TestErr> {
        let mut out = Vec::new();
        for p in pieces {
            f.feed(p, |d: &mut [u8]| {
                out.push(d.to_vec());
                Ok::<_, TestErr>(())
            })?;
        }
        f.finish(|d: &mut [u8]| {
            out.push(d.to_vec());
            Ok::<_, TestErr>(())
        })?;
        Ok(out)
    }

    fn whole(s: &[u8]) -> Vec<Vec<u8>> {
        frame_pieces(&[s]).unwrap()
    }

    fn strs(v: &[Vec<u8>]) -> Vec<String> {
        v.iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    const PRELUDE: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"prompt_token_ids":null}"#;
    const C1: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null,"token_ids":null}]}"#;
    const C2: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":" world\n\nwith \"escapes\" \u00e9"},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}"#;
    const USAGE: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":18,"total_tokens":21,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":0}}}"#;

    fn expected() -> Vec<String> {
        [PRELUDE, C1, C2, USAGE, "[DONE]"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// A vLLM-like stream using `eol` as the line ending everywhere.
    fn stream(eol: &str) -> String {
        let mut s = String::new();
        for p in [PRELUDE, C1, C2, USAGE, "[DONE]"] {
            s.push_str(&format!("data: {p}{eol}{eol}"));
        }
        s
    }

    /// Same payloads, with comments, keep-alives, other fields, mixed endings and a
    /// multi-line data event.
    fn messy_stream() -> (String, Vec<String>) {
        let s = format!(
            ": keep-alive\r\n\r\n\
             event: message\nid: 1\r\nretry: 1000\ndata: {PRELUDE}\r\n\r\n\
             :ping\r\r\
             data:{C1}\n: comment inside event\n\n\
             data: {{\"a\":\r\ndata:  1}}\r\rid: 7\n\n\
             data: {C2}\r\n\n\
             data\ndata: x\n\n\
             dataX: ignored\ndata: \n\n\
             event: only\nid: 2\n\n\
             data: {USAGE}\n\r\
             data: [DONE]\r\n\r\n"
        );
        let want = vec![
            PRELUDE.to_string(),
            C1.to_string(),
            "{\"a\":\n 1}".to_string(),
            C2.to_string(),
            "\nx".to_string(),
            USAGE.to_string(),
            "[DONE]".to_string(),
        ];
        (s, want)
    }

    fn check_all_splits(s: &[u8], want: &[String]) {
        assert_eq!(strs(&whole(s)), want, "whole-buffer framing");
        for i in 0..=s.len() {
            let got = frame_pieces(&[&s[..i], &s[i..]]).unwrap();
            assert_eq!(strs(&got), want, "split at {i}");
        }
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(strs(&frame_pieces(&bytes).unwrap()), want, "byte by byte");
    }

    fn check_all_triples(s: &[u8], want: &[String]) {
        for i in 0..=s.len() {
            for j in i..=s.len() {
                let got = frame_pieces(&[&s[..i], &s[i..j], &s[j..]]).unwrap();
                assert_eq!(strs(&got), want, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn lf_stream_every_split() {
        check_all_splits(stream("\n").as_bytes(), &expected());
    }

    #[test]
    fn crlf_stream_every_split() {
        check_all_splits(stream("\r\n").as_bytes(), &expected());
    }

    #[test]
    fn cr_stream_every_split() {
        check_all_splits(stream("\r").as_bytes(), &expected());
    }

    #[test]
    fn messy_stream_every_split() {
        let (s, want) = messy_stream();
        check_all_splits(s.as_bytes(), &want);
    }

    #[test]
    fn short_stream_three_pieces() {
        let s =
            b": hi\r\n\r\ndata: {\"a\":1}\r\n\r\ndata:x\r\ndata: y\rid: 3\n\ndata: [DONE]\r\n\r\n";
        let want: Vec<String> = ["{\"a\":1}", "x\ny", "[DONE]"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        check_all_splits(s, &want);
        check_all_triples(s, &want);
    }

    #[test]
    fn messy_stream_three_pieces_sampled() {
        // Every pair of boundaries for a long stream is ~10^6 framings; take a stride.
        let (s, want) = messy_stream();
        let s = s.as_bytes();
        for i in (0..=s.len()).step_by(7) {
            for j in (i..=s.len()).step_by(5) {
                let got = frame_pieces(&[&s[..i], &s[i..j], &s[j..]]).unwrap();
                assert_eq!(strs(&got), want, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn coalesced_many_events_one_feed() {
        let s = stream("\n").repeat(100);
        let got = whole(s.as_bytes());
        assert_eq!(got.len(), 500);
        assert_eq!(strs(&got[..5]), expected());
    }

    #[test]
    fn trailing_event_without_blank_line_is_emitted_by_finish() {
        assert_eq!(strs(&whole(b"data: a\n\ndata: b")), ["a", "b"]);
        assert_eq!(strs(&whole(b"data: a\n\ndata: b\n")), ["a", "b"]);
        assert_eq!(strs(&whole(b"data: a\n\ndata: b\r")), ["a", "b"]);
        assert_eq!(strs(&whole(b"data: a\n\n: comment")), ["a"]);
        // Not emitted before finish.
        let mut f = SseFramer::new();
        let mut n = 0;
        f.feed(b"data: b\n", |_: &mut [u8]| {
            n += 1;
            Ok::<_, SseError>(())
        })
        .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn no_data_events_and_empty_data_are_skipped() {
        assert!(whole(b": a\n\nevent: x\nid: 1\nretry: 5\n\n\n\n\r\n").is_empty());
        assert!(whole(b"data:\n\ndata: \n\ndata\n\n").is_empty());
        assert!(whole(b"").is_empty());
    }

    #[test]
    fn field_parsing_edge_cases() {
        assert_eq!(strs(&whole(b"data:a\n\n")), ["a"]);
        assert_eq!(strs(&whole(b"data:  a\n\n")), [" a"]);
        assert_eq!(strs(&whole(b"data: a \n\n")), ["a "]);
        assert_eq!(strs(&whole(b"data: a:b: c\n\n")), ["a:b: c"]);
        assert!(whole(b"Data: a\n\nDATA: b\n\n data: c\n\n").is_empty());
        assert!(whole(b"datum: a\n\ndata-x: b\n\n").is_empty());
        assert_eq!(strs(&whole(b"data: a\ndata\ndata: b\n\n")), ["a\n\nb"]);
    }

    #[test]
    fn leading_bom_is_stripped_only_at_stream_start() {
        let s = b"\xEF\xBB\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\ndata: c\n\n";
        let want = ["a", "c"];
        for i in 0..=s.len() {
            let got = frame_pieces(&[&s[..i], &s[i..]]).unwrap();
            assert_eq!(strs(&got), want, "split at {i}");
        }
    }

    #[test]
    fn reset_forgets_partial_state() {
        let mut f = SseFramer::new();
        let got = frame_with(&mut f, &[b"data: a\n\n"]).unwrap();
        assert_eq!(strs(&got), ["a"]);
        let mut out = Vec::new();
        let mut push = |d: &mut [u8]| {
            out.push(d.to_vec());
            Ok::<_, SseError>(())
        };
        f.feed(b"data: partial\r", &mut push).unwrap();
        f.reset();
        f.feed(b"\ndata: next\n\n", &mut push).unwrap();
        // After reset the "\n" is an (empty) blank line, not the end of a CRLF.
        assert_eq!(strs(&out), ["next"]);
    }

    #[test]
    fn payload_is_mutable_in_place() {
        let mut f = SseFramer::new();
        let mut seen = Vec::new();
        f.feed(b"data: abc\n\ndata: def\n\n", |d: &mut [u8]| {
            d.make_ascii_uppercase();
            seen.push(d.to_vec());
            Ok::<_, SseError>(())
        })
        .unwrap();
        assert_eq!(strs(&seen), ["ABC", "DEF"]);
    }

    #[test]
    fn callback_error_stops_feed() {
        let mut f = SseFramer::new();
        let mut n = 0;
        let r = f.feed(b"data: a\n\ndata: b\n\ndata: c\n\n", |_: &mut [u8]| {
            n += 1;
            if n == 2 {
                Err(TestErr::Stop)
            } else {
                Ok(())
            }
        });
        assert_eq!(r, Err(TestErr::Stop));
        assert_eq!(n, 2);
    }

    #[test]
    fn event_too_large_whole_and_split() {
        let limit = 32;
        let ok = format!("data: {}\n\n", "x".repeat(limit));
        let big = format!("data: {}\n\n", "x".repeat(limit + 1));
        let multi = format!("data: {}\ndata: {}\n\n", "x".repeat(16), "y".repeat(16));
        let long_comment = format!(": {}", "c".repeat(limit * 4));
        let mut f = SseFramer::with_max_event(limit);
        assert_eq!(f.max_event(), limit);
        let s = ok.as_bytes();
        for i in 0..=s.len() {
            let got = frame_with(&mut f, &[&s[..i], &s[i..]]).unwrap();
            assert_eq!(got, [vec![b'x'; limit]], "split at {i}");
        }
        for s in [&big, &multi] {
            let s = s.as_bytes();
            for i in 0..=s.len() {
                let mut f = SseFramer::with_max_event(limit);
                let r = frame_with(&mut f, &[&s[..i], &s[i..]]);
                assert_eq!(
                    r,
                    Err(TestErr::Sse(SseError::EventTooLarge { limit })),
                    "split at {i}"
                );
                // Usable again after the error.
                f.reset();
                assert_eq!(
                    strs(&frame_with(&mut f, &[b"data: ok\n\n"]).unwrap()),
                    ["ok"]
                );
            }
        }
        // A line that never ends cannot grow the buffer without bound either.
        let mut f = SseFramer::with_max_event(limit);
        let pieces: Vec<&[u8]> = long_comment.as_bytes().chunks(5).collect();
        assert!(matches!(
            frame_with(&mut f, &pieces),
            Err(TestErr::Sse(SseError::EventTooLarge { .. }))
        ));
        assert!(f.line.is_empty() && f.data.is_empty());
    }

    #[test]
    fn find_eol_matches_scalar() {
        let mut hay = vec![b'a'; 200];
        for len in 0..200 {
            for pos in 0..=len {
                for t in [b'\n', b'\r'] {
                    let mut h = hay[..len].to_vec();
                    if pos < len {
                        h[pos] = t;
                    }
                    let want = find_eol_scalar(&h);
                    assert_eq!(find_eol(&h), want, "len {len} pos {pos}");
                    #[cfg(target_arch = "x86_64")]
                    {
                        assert_eq!(find_eol_sse2(&h), want, "sse2 len {len} pos {pos}");
                        if has_avx2() {
                            // SAFETY: checked just above.
                            let got = unsafe { find_eol_avx2(&h) };
                            assert_eq!(got, want, "avx2 len {len} pos {pos}");
                        }
                    }
                    assert_eq!(find_eol_swar(&h), want, "swar len {len} pos {pos}");
                }
            }
        }
        // Bytes that differ from the targets by one bit must not match.
        hay.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = [0x0b, 0x0c, 0x8a, 0x8d, 0x09, 0x0e][i % 6]);
        assert_eq!(find_eol(&hay), None);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(find_eol_sse2(&hay), None);
        assert_eq!(find_eol_swar(&hay), None);
    }

    /// xorshift64*: deterministic and dependency-free (shared with the chunk parser's tests).
    pub(crate) struct Rng(pub(crate) u64);
    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn fuzz_random_bytes_and_splits_agree() {
        // Random streams over a small, SSE-heavy alphabet; any split must frame identically,
        // and nothing may panic.
        let alphabet: &[&[u8]] = &[
            b"data:",
            b"data: ",
            b"data",
            b":",
            b"\n",
            b"\r",
            b"\r\n",
            b"x",
            b"{}",
            b" ",
            b"id:",
            b"\xEF\xBB\xBF",
            b"\xff",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..3000 {
            let mut s = Vec::new();
            for _ in 0..rng.below(40) {
                s.extend_from_slice(alphabet[rng.below(alphabet.len())]);
            }
            let want = frame_pieces(&[&s]).unwrap();
            let i = rng.below(s.len() + 1);
            let j = i + rng.below(s.len() - i + 1);
            assert_eq!(frame_pieces(&[&s[..i], &s[i..j], &s[j..]]).unwrap(), want);
            let bytes: Vec<&[u8]> = s.chunks(1).collect();
            assert_eq!(frame_pieces(&bytes).unwrap(), want);
        }
        // Fully random bytes with a small limit.
        for _ in 0..3000 {
            let s: Vec<u8> = (0..rng.below(300)).map(|_| rng.next() as u8).collect();
            let mut f = SseFramer::with_max_event(64);
            let cut = rng.below(s.len() + 1);
            let _ = frame_with(&mut f, &[&s[..cut], &s[cut..]]);
        }
    }
}
