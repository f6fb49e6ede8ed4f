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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use glommio::timer::Timer;
use hyper::body::{Body, Frame, SizeHint};

use super::cache::ChainTail;
use super::conn::{set_reset_on_close, Tracked};
use super::fault::{FaultKind, FaultSpec};
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

/// A fault the stream itself carries out (`--fault`), with the socket for a reset.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamFault {
    pub(crate) spec: FaultSpec,
    /// The connection's socket (-1 when unknown).
    pub(crate) fd: std::os::fd::RawFd,
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
    /// A fault cut the reply short or made it unusable: the record says not completed.
    faulted: bool,
    /// The finish reason a fault sent instead of the planned one (`abort`).
    fault_finish: Option<&'static str>,
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
            faulted: false,
            fault_finish: None,
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
            r.completed = !aborted && !self.faulted;
            r.reply_hash = Some(hash_hex(self.spec.reply.hash()));
            if aborted {
                r.finish_reason = None;
            }
            if let Some(f) = self.fault_finish {
                r.finish_reason = Some(f.to_owned());
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
    /// `ping_forever`: a comment every interval, nothing else.
    Ping,
    /// `stall_mid_stream`: nothing more, ever.
    Stalled,
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
    /// A mid-stream fault still to happen.
    fault: Option<StreamFault>,
    /// `ping_forever`: the interval, and when the next ping is due (0: at once).
    ping_every_ns: u64,
    ping_next_ns: u64,
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
const MALFORMED_EVENT: &[u8] =
    b"data: {\"id\":\"broken\",\"choices\":[{\"delta\":{\"content\":\"x\"}\n\n";
const ERROR_EVENT: &[u8] = b"data: {\"error\":{\"message\":\"injected in-band error (--fault in_band_error_event)\",\"type\":\"InternalServerError\",\"param\":null,\"code\":500}}\n\n";
const CHAT_ABORT: &[u8] = b"\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"abort\",\"stop_reason\":null}]}\n\n";
const TEXT_ABORT: &[u8] = b"\"choices\":[{\"index\":0,\"text\":\"\",\"logprobs\":null,\"finish_reason\":\"abort\",\"stop_reason\":null}]}\n\n";
const PING: &[u8] = b": ping\n\n";

type FrameResult = Result<Frame<Bytes>, std::io::Error>;

fn fault_error(kind: FaultKind) -> std::io::Error {
    std::io::Error::other(format!("injected fault {kind}"))
}

impl SseBody {
    pub(crate) fn new(
        mut run: Run,
        include_usage: bool,
        continuous_usage: bool,
        fault: Option<StreamFault>,
    ) -> Self {
        let head = event_head(&run.shared, &run.spec);
        let words = run.spec.tokens_per_chunk.min(run.spec.plan.tokens) as usize
            * run.shared.words.max_escaped_len();
        let event_bytes_max = head.len() + words + 256;
        let phase = match (run.spec.endpoint, fault.map(|f| f.spec.kind)) {
            (_, Some(FaultKind::PingForever)) => {
                run.faulted = true;
                Phase::Ping
            }
            (Endpoint::Chat, _) => Phase::Prelude,
            (Endpoint::Completions, _) => Phase::Content,
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
            fault: fault.filter(|f| f.spec.kind.mid_stream()),
            ping_every_ns: fault.map_or(0, |f| f.spec.after_ms.max(1) * 1_000_000),
            ping_next_ns: 0,
        }
    }

    /// Carries out the mid-stream fault once half the reply has gone out (at least one token,
    /// never the last: the planned finish_reason is not sent before it).
    fn poll_fault(&mut self) -> Option<Poll<Option<FrameResult>>> {
        let f = self.fault?;
        let half = (self.run.spec.plan.tokens / 2).max(1);
        if self.run.produced < half {
            return None;
        }
        self.fault = None;
        self.run.faulted = true;
        let kind = f.spec.kind;
        Some(match kind {
            FaultKind::ResetMidStream => {
                if f.fd >= 0 {
                    set_reset_on_close(f.fd);
                }
                Poll::Ready(Some(Err(fault_error(kind))))
            }
            FaultKind::TruncatedChunkedBody => Poll::Ready(Some(Err(fault_error(kind)))),
            FaultKind::MalformedJsonEvent => {
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(MALFORMED_EVENT)))))
            }
            FaultKind::InBandErrorEvent => {
                self.phase = Phase::Done;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(ERROR_EVENT)))))
            }
            FaultKind::AbortMidStream => {
                self.phase = Phase::Usage;
                self.run.fault_finish = Some("abort");
                let close = match self.run.spec.endpoint {
                    Endpoint::Chat => CHAT_ABORT,
                    Endpoint::Completions => TEXT_ABORT,
                };
                self.buf.reserve(self.head.len() + close.len());
                self.buf.put_slice(&self.head);
                self.buf.put_slice(close);
                Poll::Ready(Some(Ok(self.take())))
            }
            _ => {
                self.phase = Phase::Stalled;
                Poll::Pending
            }
        })
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
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
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
                    if let Some(p) = this.poll_fault() {
                        return p;
                    }
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
                Phase::Stalled => return Poll::Pending,
                Phase::Ping => {
                    if this.ping_next_ns != 0
                        && this.poll_deadline(cx, this.ping_next_ns).is_pending()
                    {
                        return Poll::Pending;
                    }
                    this.ping_next_ns = now_ns() + this.ping_every_ns;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(PING)))));
                }
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
    /// On a connection of a sim with `--fault`.
    Tracked(Box<Tracked>),
}

impl SimBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        SimBody::Full(Some(bytes.into()))
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            SimBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            SimBody::Sse(s) => Pin::new(s.as_mut()).poll_frame(cx),
            SimBody::Tracked(t) => Pin::new(t.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SimBody::Full(b) => b.is_none(),
            SimBody::Sse(s) => s.is_end_stream(),
            SimBody::Tracked(t) => t.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SimBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            SimBody::Full(None) => SizeHint::with_exact(0),
            SimBody::Sse(_) => SizeHint::default(),
            SimBody::Tracked(t) => t.size_hint(),
        }
    }
}
