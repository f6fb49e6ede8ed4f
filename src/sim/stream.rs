//! Producing a reply: the token schedule, the vLLM-shaped SSE stream and the non-stream JSON.
//!
//! A [`Run`] is one admitted generation request: its schedule on absolute deadlines, its reply
//! generator, and what must happen when it ends (metrics, caching its output blocks, its record).
//! It ends exactly once: on its last byte, or when dropped early (the client went away), which
//! counts as an abort.
//!
//! [`SseBody`] is the streaming response body. Each `poll_frame` hands hyper the next event once
//! its deadline has passed, sleeping on one re-armed glommio [`Timer`] in between. Per-request
//! constant parts of each event are serialised once; a content event costs a few copies into a
//! reused buffer.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use glommio::timer::Timer;
use hyper::body::{Body, Frame, SizeHint};

use super::cache::ChainTail;
use super::record::{hash_hex, Record};
use super::reply::ReplyGen;
use super::request::{Endpoint, OutputPlan};
use super::server::Shared;
use crate::clock::now_ns;

/// Everything fixed when a request is admitted.
pub(crate) struct RunSpec {
    pub(crate) endpoint: Endpoint,
    pub(crate) request_id: u64,
    /// Unix seconds for `created`.
    pub(crate) created: u64,
    pub(crate) plan: OutputPlan,
    pub(crate) prompt_tokens: u64,
    pub(crate) cached_tokens: u64,
    /// Deadline of the first output token.
    pub(crate) first_ns: u64,
    pub(crate) itl_ns: u64,
    pub(crate) tokens_per_chunk: u32,
    pub(crate) reply: ReplyGen,
    /// Where the prompt's block chain stopped, when output blocks are to be cached.
    pub(crate) chain: Option<ChainTail>,
    pub(crate) record: Option<Box<Record>>,
    /// Report `prompt_tokens_details.cached_tokens` in usage (`--usage full`).
    pub(crate) report_cached: bool,
    /// Report usage at all (`--usage` other than `none`).
    pub(crate) report_usage: bool,
}

/// A running generation request.
pub(crate) struct Run {
    shared: Arc<Shared>,
    spec: RunSpec,
    /// Tokens handed to the connection so far.
    produced: u32,
    /// Ids of the tokens produced, when output blocks are to be cached.
    out_ids: Option<Vec<u32>>,
    ended: bool,
}

impl Run {
    pub(crate) fn new(shared: Arc<Shared>, spec: RunSpec) -> Self {
        shared
            .metrics
            .running
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out_ids = spec
            .chain
            .as_ref()
            .map(|_| Vec::with_capacity(spec.plan.tokens as usize));
        Run {
            shared,
            spec,
            produced: 0,
            out_ids,
            ended: false,
        }
    }

    /// Deadline of output token `i` (0-based).
    #[inline]
    pub(crate) fn token_deadline_ns(&self, i: u32) -> u64 {
        self.spec
            .first_ns
            .saturating_add(u64::from(i).saturating_mul(self.spec.itl_ns))
    }

    /// Deadline of the last token.
    pub(crate) fn last_deadline_ns(&self) -> u64 {
        self.token_deadline_ns(self.spec.plan.tokens - 1)
    }

    /// Appends the next `count` escaped words to `out`.
    #[inline]
    fn produce(&mut self, count: u32, out: &mut impl BufMut) {
        self.spec
            .reply
            .push_words(&self.shared.words, count, out, self.out_ids.as_mut());
        self.produced += count;
    }

    fn remaining(&self) -> u32 {
        self.spec.plan.tokens - self.produced
    }

    /// Notes that a content chunk (or the whole non-stream reply) was handed over at `at_ns`.
    #[inline]
    fn note_sent(&mut self, at_ns: u64) {
        if let Some(r) = self.spec.record.as_mut() {
            r.first_token_ns.get_or_insert(at_ns);
            r.chunk_ns.push(at_ns);
        }
    }

    /// Ends the request (once): metrics, output blocks into the prefix cache, the record.
    pub(crate) fn end(&mut self, end_ns: u64, aborted: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.ended {
            return;
        }
        self.ended = true;
        let m = &self.shared.metrics;
        m.generation_tokens
            .fetch_add(u64::from(self.produced), Relaxed);
        if aborted {
            m.aborted.fetch_add(1, Relaxed);
        } else if self.spec.plan.finish_reason == "length" {
            m.success_length.fetch_add(1, Relaxed);
        } else {
            m.success_stop.fetch_add(1, Relaxed);
        }
        m.running_done.fetch_add(1, Relaxed);
        if let (Some(tail), Some(ids)) = (self.spec.chain.take(), self.out_ids.take()) {
            // The last sampled token is never fed back, so its KV is not computed.
            let computed = &ids[..ids.len().saturating_sub(1)];
            if tail.partial.len() + computed.len() >= self.shared.block_size() {
                self.shared.lock_cache().extend(tail, computed);
            }
        }
        if let (Some(mut r), Some(tx)) = (self.spec.record.take(), self.shared.record.as_ref()) {
            r.end_ns = end_ns;
            r.completion_tokens = u64::from(self.produced);
            r.aborted = aborted;
            r.reply_hash = Some(hash_hex(self.spec.reply.hash()));
            if aborted {
                r.finish_reason = None;
            }
            tx.send(r);
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if !self.ended {
            self.end(now_ns(), true);
        }
    }
}

/// Appends the `usage` object.
fn put_usage(out: &mut BytesMut, prompt: u64, completion: u64, cached: Option<u64>) {
    use std::fmt::Write;
    // Writing into a BytesMut cannot fail.
    let _ = write!(
        out,
        "{{\"prompt_tokens\":{prompt},\"total_tokens\":{},\"completion_tokens\":{completion}",
        prompt + completion
    );
    match cached {
        Some(cached) => {
            let _ = write!(
                out,
                ",\"prompt_tokens_details\":{{\"cached_tokens\":{cached}}}}}"
            );
        }
        None => out.put_slice(b"}"),
    }
}

/// The per-request start of every event: `data: {"id":…,"object":…,"created":…,"model":…,`.
fn event_head(shared: &Shared, spec: &RunSpec) -> Box<[u8]> {
    let (prefix, object) = match spec.endpoint {
        Endpoint::Chat => ("chatcmpl", "chat.completion.chunk"),
        Endpoint::Completions => ("cmpl", "text_completion"),
    };
    format!(
        "data: {{\"id\":\"{prefix}-{}\",\"object\":\"{object}\",\"created\":{},\"model\":{},",
        spec.request_id, spec.created, shared.model_json
    )
    .into_bytes()
    .into_boxed_slice()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Prelude,
    Content,
    Usage,
    Done,
    End,
}

/// Streaming response body.
pub(crate) struct SseBody {
    run: Run,
    phase: Phase,
    head: Box<[u8]>,
    include_usage: bool,
    continuous_usage: bool,
    timer: Option<Timer>,
    /// Deadline the timer is armed for.
    armed_ns: u64,
    buf: BytesMut,
    /// Bytes one content event needs at most (to reserve once per event).
    event_bytes_max: usize,
}

const CHAT_PRELUDE: &[u8] = b"\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n";
const CHAT_OPEN: &[u8] = b"\"choices\":[{\"index\":0,\"delta\":{\"content\":\"";
const CHAT_CLOSE: &[u8] = b"\"},\"logprobs\":null,\"finish_reason\":null";
const CHAT_CLOSE_STOP: &[u8] =
    b"\"},\"logprobs\":null,\"finish_reason\":\"stop\",\"stop_reason\":null";
const CHAT_CLOSE_LENGTH: &[u8] =
    b"\"},\"logprobs\":null,\"finish_reason\":\"length\",\"stop_reason\":null";
const TEXT_OPEN: &[u8] = b"\"choices\":[{\"index\":0,\"text\":\"";
const TEXT_CLOSE: &[u8] = b"\",\"logprobs\":null,\"finish_reason\":null,\"stop_reason\":null";
const TEXT_CLOSE_STOP: &[u8] =
    b"\",\"logprobs\":null,\"finish_reason\":\"stop\",\"stop_reason\":null";
const TEXT_CLOSE_LENGTH: &[u8] =
    b"\",\"logprobs\":null,\"finish_reason\":\"length\",\"stop_reason\":null";
const EVENT_END: &[u8] = b"}]}\n\n";
const DONE: &[u8] = b"data: [DONE]\n\n";

impl SseBody {
    pub(crate) fn new(run: Run, include_usage: bool, continuous_usage: bool) -> Self {
        let head = event_head(&run.shared, &run.spec);
        let words = run.spec.tokens_per_chunk.min(run.spec.plan.tokens) as usize
            * run.shared.words.max_escaped_len();
        let event_bytes_max = head.len() + words + 256;
        let phase = match run.spec.endpoint {
            Endpoint::Chat => Phase::Prelude,
            Endpoint::Completions => Phase::Content,
        };
        SseBody {
            run,
            phase,
            head,
            include_usage,
            continuous_usage,
            timer: None,
            armed_ns: 0,
            buf: BytesMut::new(),
            event_bytes_max,
        }
    }

    #[inline]
    fn take(&mut self) -> Frame<Bytes> {
        Frame::data(self.buf.split().freeze())
    }

    /// Waits for `deadline_ns`; `Ready` once it has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>, deadline_ns: u64) -> Poll<()> {
        let now = now_ns();
        if now >= deadline_ns {
            return Poll::Ready(());
        }
        let wait = Duration::from_nanos(deadline_ns - now);
        let timer = match self.timer.as_mut() {
            Some(t) => {
                if self.armed_ns != deadline_ns {
                    t.reset(wait);
                }
                t
            }
            None => self.timer.insert(Timer::new(wait)),
        };
        self.armed_ns = deadline_ns;
        match Pin::new(timer).poll(cx) {
            Poll::Ready(_) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Builds the next content event into `buf`.
    fn content_event(&mut self, count: u32) {
        let last = self.run.remaining() == count;
        let chat = self.run.spec.endpoint == Endpoint::Chat;
        self.buf.reserve(self.event_bytes_max);
        self.buf.put_slice(&self.head);
        self.buf.put_slice(if chat { CHAT_OPEN } else { TEXT_OPEN });
        self.run.produce(count, &mut self.buf);
        let close = match (chat, last, self.run.spec.plan.finish_reason) {
            (true, false, _) => CHAT_CLOSE,
            (true, true, "stop") => CHAT_CLOSE_STOP,
            (true, true, _) => CHAT_CLOSE_LENGTH,
            (false, false, _) => TEXT_CLOSE,
            (false, true, "stop") => TEXT_CLOSE_STOP,
            (false, true, _) => TEXT_CLOSE_LENGTH,
        };
        self.buf.put_slice(close);
        if self.continuous_usage {
            self.buf.put_slice(b"}],\"usage\":");
            let s = &self.run.spec;
            let (p, c, k) = (
                s.prompt_tokens,
                u64::from(self.run.produced),
                s.report_cached.then_some(s.cached_tokens),
            );
            put_usage(&mut self.buf, p, c, k);
            self.buf.put_slice(b"}\n\n");
        } else {
            self.buf.put_slice(EVENT_END);
        }
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        loop {
            match this.phase {
                Phase::Prelude => {
                    this.phase = Phase::Content;
                    this.buf.reserve(this.head.len() + CHAT_PRELUDE.len());
                    this.buf.put_slice(&this.head);
                    this.buf.put_slice(CHAT_PRELUDE);
                    return Poll::Ready(Some(Ok(this.take())));
                }
                Phase::Content => {
                    let remaining = this.run.remaining();
                    if remaining == 0 {
                        this.phase = Phase::Usage;
                        continue;
                    }
                    let count = remaining.min(this.run.spec.tokens_per_chunk);
                    let deadline = this.run.token_deadline_ns(this.run.produced + count - 1);
                    if this.poll_deadline(cx, deadline).is_pending() {
                        return Poll::Pending;
                    }
                    this.content_event(count);
                    this.run.note_sent(now_ns());
                    return Poll::Ready(Some(Ok(this.take())));
                }
                Phase::Usage => {
                    this.phase = Phase::Done;
                    if this.include_usage {
                        let s = &this.run.spec;
                        let (p, c, k) = (
                            s.prompt_tokens,
                            u64::from(this.run.produced),
                            s.report_cached.then_some(s.cached_tokens),
                        );
                        this.buf.reserve(this.head.len() + 160);
                        this.buf.put_slice(&this.head);
                        this.buf.put_slice(b"\"choices\":[],\"usage\":");
                        put_usage(&mut this.buf, p, c, k);
                        this.buf.put_slice(b"}\n\n");
                        return Poll::Ready(Some(Ok(this.take())));
                    }
                }
                Phase::Done => {
                    this.phase = Phase::End;
                    this.run.end(now_ns(), false);
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(DONE)))));
                }
                Phase::End => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.phase == Phase::End
    }
}

/// Builds the whole non-stream reply (`chat.completion` / `text_completion` JSON) once the last
/// token's deadline has passed, and ends the run.
pub(crate) fn full_reply(mut run: Run) -> Bytes {
    let spec_endpoint = run.spec.endpoint;
    let mut text =
        BytesMut::with_capacity(run.spec.plan.tokens as usize * run.shared.words.max_escaped_len());
    let n = run.remaining();
    run.produce(n, &mut text);
    let mut out = BytesMut::with_capacity(text.len() + 512);
    let s = &run.spec;
    let (id_prefix, object) = match spec_endpoint {
        Endpoint::Chat => ("chatcmpl", "chat.completion"),
        Endpoint::Completions => ("cmpl", "text_completion"),
    };
    {
        use std::fmt::Write;
        let _ = write!(
            out,
            "{{\"id\":\"{id_prefix}-{}\",\"object\":\"{object}\",\"created\":{},\"model\":{},\
             \"choices\":[{{\"index\":0,",
            s.request_id, s.created, run.shared.model_json
        );
    }
    match spec_endpoint {
        Endpoint::Chat => {
            out.put_slice(b"\"message\":{\"role\":\"assistant\",\"content\":\"");
            out.put_slice(&text);
            out.put_slice(b"\",\"tool_calls\":[]},");
        }
        Endpoint::Completions => {
            out.put_slice(b"\"text\":\"");
            out.put_slice(&text);
            out.put_slice(b"\",");
        }
    }
    out.put_slice(b"\"logprobs\":null,\"finish_reason\":\"");
    out.put_slice(s.plan.finish_reason.as_bytes());
    out.put_slice(b"\",\"stop_reason\":null}],\"usage\":");
    let (p, c, k) = (
        s.prompt_tokens,
        u64::from(run.produced),
        s.report_cached.then_some(s.cached_tokens),
    );
    if s.report_usage {
        put_usage(&mut out, p, c, k);
    } else {
        out.put_slice(b"null");
    }
    out.put_slice(b"}");
    let at = now_ns();
    run.note_sent(at);
    run.end(at, false);
    out.freeze()
}

/// Every response body the sim sends.
pub(crate) enum SimBody {
    Full(Option<Bytes>),
    Sse(Box<SseBody>),
}

impl SimBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        SimBody::Full(Some(bytes.into()))
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            SimBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            SimBody::Sse(s) => Pin::new(s.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SimBody::Full(b) => b.is_none(),
            SimBody::Sse(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SimBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            SimBody::Full(None) => SizeHint::with_exact(0),
            SimBody::Sse(_) => SizeHint::default(),
        }
    }
}
