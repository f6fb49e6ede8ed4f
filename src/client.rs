//! One turn over one keep-alive HTTP/1.1 connection: send the request, stream the reply through
//! SSE framing and chunk parsing, and time every output-bearing event.
//!
//! Everything here runs on an engine executor, once per request and once per body frame, so it
//! allocates nothing per event: the framer, reply string and ITL buffer belong to the slot, the
//! chunk parser to the executor, and all are reused across requests.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};

use crate::chunk::{ChunkError, ChunkInfo, ChunkParser, Finish, Usage};
use crate::clock;
use crate::net::{HyperIo, ReadStamp, SegmentsBody, StampedTcp, WriteStamp};
use crate::sse::{SseError, SseFramer};
use crate::tls::{TlsConnector, TlsTarget};

/// How a request failed; every failure is counted under exactly one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// TCP connect failed or timed out.
    Connect,
    /// The TLS handshake of an https target failed (certificate not trusted or not valid for
    /// the host, no common protocol, the peer not speaking TLS) or timed out.
    Tls,
    /// No socket could be opened: this process (EMFILE) or the system (ENFILE) is out of file
    /// descriptors — a client-side limit, not the server's fault.
    TooManyOpenFiles,
    /// The server answered with a non-2xx status.
    HttpStatus(u16),
    /// The connection broke (reset, EOF) before the response was complete.
    Io,
    /// No bytes for longer than `--read-timeout`.
    ReadTimeout,
    /// The whole request took longer than `--request-timeout`.
    RequestTimeout,
    /// An SSE event was not valid JSON or was too large.
    MalformedSse,
    /// The server sent an error object inside the stream or body.
    ServerError,
    /// The body ended cleanly, without `[DONE]` and without a `finish_reason`: the reply was
    /// cut short.
    Incomplete,
    /// `finish_reason: "abort"`: the server aborted the reply (vLLM does at shutdown), even if
    /// usage and `[DONE]` followed.
    Aborted,
    /// `finish_reason: "error"`: generation failed on the server.
    FinishError,
    /// The stream ended with `[DONE]` but no `finish_reason` was ever sent (non-stream: the body
    /// had none).
    NoFinishReason,
    /// The reply ended normally but carried no output at all (no content, reasoning, text or
    /// tool call), though parley always asks for at least one token.
    EmptyReply,
}

impl FailureKind {
    /// A stable label for reports ("http_500", "io", …).
    pub fn label(&self) -> String {
        match self {
            FailureKind::Connect => "connect".into(),
            FailureKind::Tls => "tls".into(),
            FailureKind::TooManyOpenFiles => "too_many_open_files".into(),
            FailureKind::HttpStatus(code) => format!("http_{code}"),
            FailureKind::Io => "io".into(),
            FailureKind::ReadTimeout => "read_timeout".into(),
            FailureKind::RequestTimeout => "request_timeout".into(),
            FailureKind::MalformedSse => "malformed_sse".into(),
            FailureKind::ServerError => "server_error".into(),
            FailureKind::Incomplete => "incomplete".into(),
            FailureKind::Aborted => "aborted".into(),
            FailureKind::FinishError => "finish_error".into(),
            FailureKind::NoFinishReason => "no_finish_reason".into(),
            FailureKind::EmptyReply => "empty_reply".into(),
        }
    }
}

/// The verdict on a reply whose body ended cleanly (the success rules, `docs/metrics.md`):
/// `finish`: the last `finish_reason` seen; `done`: `[DONE]` arrived (non-stream: always
/// true, the body is complete); `output`: some output-bearing event or content arrived.
pub(crate) fn verdict(finish: Option<Finish>, done: bool, output: bool) -> Result<(), FailureKind> {
    match finish {
        Some(Finish::Abort) => Err(FailureKind::Aborted),
        Some(Finish::Error) => Err(FailureKind::FinishError),
        None if done => Err(FailureKind::NoFinishReason),
        None => Err(FailureKind::Incomplete),
        // parley never asks for 0 tokens (`--max-tokens` and every dataset's lengths are at
        // least 1), so a normal end with nothing in it is a broken reply, not a short one.
        Some(Finish::Normal) if !output => Err(FailureKind::EmptyReply),
        Some(Finish::Normal) => Ok(()),
    }
}

/// hyper's HTTP/1.1 handshake over `io`, its connection task spawned on this executor.
async fn handshake<S>(
    builder: &hyper::client::conn::http1::Builder,
    io: HyperIo<S>,
) -> Result<SendRequest<SegmentsBody>, FailureKind>
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    let (sender, conn) = builder
        .handshake(io)
        .await
        .map_err(|_| FailureKind::Connect)?;
    // The connection ends when the server closes it or the sender is dropped; either way the
    // slot notices on its next request and reconnects, so its result is not needed. Spawned as
    // is rather than inside `async move { conn.await }`: such a block keeps the captured
    // connection and the awaited one side by side, doubling the task (≈ 1.6 KiB instead of
    // ≈ 0.8 KiB per stream).
    glommio::spawn_local(conn).detach();
    Ok(sender)
}

/// Fixed, per-run parts of every request.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: HeaderValue,
    /// Request path, e.g. `/v1/chat/completions`.
    pub path: hyper::Uri,
    pub authorization: Option<HeaderValue>,
    /// Sent with every request (`--header`), after parley's own.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The header that carries the conversation id (`--session-header`), e.g. `X-Session-ID`
    /// for session-affinity routers.
    pub session_header: HeaderName,
    pub stream: bool,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Longest a whole request may take, first byte sent to last byte read (`None`: no limit).
    pub request_timeout: Option<Duration>,
    /// An https target's TLS settings and server name (`None`: plain http).
    pub tls: Option<TlsTarget>,
}

/// Why a connection could not be opened: `Connect`, `TooManyOpenFiles` or `Tls`, with what
/// went wrong when there is more to say (a TLS alert, a certificate error).
#[derive(Debug)]
pub struct ConnectError {
    pub kind: FailureKind,
    pub message: Option<String>,
}

impl From<FailureKind> for ConnectError {
    fn from(kind: FailureKind) -> Self {
        ConnectError {
            kind,
            message: None,
        }
    }
}

/// A keep-alive connection owned by one slot.
pub struct Connection {
    sender: SendRequest<SegmentsBody>,
    stamp: ReadStamp,
    write_stamp: WriteStamp,
}

impl Connection {
    /// When the last bytes arrived on this connection (0: none yet). After a response, the
    /// connection is ready for the next request only once the server has sent the response's
    /// very end, which may follow the last SSE event; that wait is the server's, not ours.
    pub fn last_read_ns(&self) -> u64 {
        self.stamp.get()
    }

    /// Opens a connection. `read_buf_exact`: hyper's read buffer size, fixed (see
    /// [`read_buf_for`]); `None` keeps hyper's adaptive buffer (8 KiB, growing under load).
    /// `tls`: this core's connector, for an https endpoint (its session cache lets a reconnect
    /// resume the session instead of a full handshake).
    pub async fn open(
        endpoint: &Endpoint,
        read_buf_exact: Option<usize>,
        tls: Option<&TlsConnector>,
    ) -> Result<Connection, ConnectError> {
        let stream =
            glommio::net::TcpStream::connect_timeout(endpoint.addr, endpoint.connect_timeout)
                .await
                .map_err(|e| match std::io::Error::from(e).raw_os_error() {
                    Some(libc::EMFILE | libc::ENFILE) => FailureKind::TooManyOpenFiles,
                    _ => FailureKind::Connect,
                })?;
        // Each SSE event must leave our send path immediately, and requests are single writes.
        let _ = stream.set_nodelay(true);
        let (tcp, stamp, write_stamp) = StampedTcp::new(stream);
        let mut builder = hyper::client::conn::http1::Builder::new();
        if read_buf_exact.is_some() {
            builder.read_buf_exact_size(read_buf_exact);
        }
        // TLS sits between the stamping socket and hyper, so the stamps stay the socket's.
        let sender = match (tls, &endpoint.tls) {
            // Boxed: the TLS handshake's future is several KiB; plain connections should not
            // carry its size while they open.
            (Some(connector), Some(target)) => {
                Box::pin(async {
                    let name = target.server_name.clone();
                    let tls = crate::tls::connect(connector, name, tcp, endpoint.connect_timeout)
                        .await
                        .map_err(|message| ConnectError {
                            kind: FailureKind::Tls,
                            message: Some(message),
                        })?;
                    Ok::<_, ConnectError>(handshake(&builder, HyperIo::wrap(tls)).await?)
                })
                .await?
            }
            _ => handshake(&builder, HyperIo::wrap(tcp)).await?,
        };
        Ok(Connection {
            sender,
            stamp,
            write_stamp,
        })
    }

    /// Whether the connection can take another request (keep-alive still up).
    pub async fn ready(&mut self) -> bool {
        self.sender.ready().await.is_ok()
    }
}

/// Slots per core from which connections use a small fixed read buffer instead of hyper's
/// adaptive one. hyper's adaptive buffer starts at 8 KiB and ends up resident in full (10k
/// streams: 34.1 → 26.6 KiB each with a 1 KiB buffer instead). A small
/// buffer costs bulk throughput, though — more reads per event when events arrive back to back
/// (64 bulk streams: +15 % CPU per event at 1 KiB, +4 % at 4 KiB) — so it is only used where
/// memory is what limits: thousands of mostly idle streams per core, each read carrying an event
/// or two. The paced case (512 streams) stays below this.
pub const SMALL_READ_BUF_FROM_SLOTS: usize = 1024;

/// The fixed read buffer of [`SMALL_READ_BUF_FROM_SLOTS`]: one or two typical chunk events
/// (≈ 300–500 bytes each); a larger event just takes more reads.
pub const SMALL_READ_BUF: usize = 1024;

/// hyper's read buffer for connections of a core running `slots` slots (see
/// [`SMALL_READ_BUF_FROM_SLOTS`]).
pub fn read_buf_for(slots: usize) -> Option<usize> {
    (slots >= SMALL_READ_BUF_FROM_SLOTS).then_some(SMALL_READ_BUF)
}

/// Per-slot scratch state reused across requests.
pub struct Scratch {
    pub framer: SseFramer,
    /// Shared by every slot of one executor: a chunk is parsed to completion without awaiting,
    /// so one parser per core serves them all, and an idle stream holds none of simd-json's
    /// ≈ 7 KiB of tape and buffers (docs/performance.md, "10k idle streams").
    pub parser: Rc<RefCell<ChunkParser>>,
    /// The reply text of the current turn (content + reasoning).
    pub reply: String,
    /// Gaps between consecutive output-bearing events of the current request, in ns.
    pub itl_ns: Vec<u64>,
}

impl Scratch {
    /// Scratch for one slot, parsing with its executor's `parser`.
    pub fn new(parser: Rc<RefCell<ChunkParser>>) -> Self {
        Scratch {
            framer: SseFramer::default(),
            parser,
            reply: String::new(),
            itl_ns: Vec::new(),
        }
    }
}

/// What happened to one request.
#[derive(Clone, Copy, Debug, Default)]
pub struct TurnTiming {
    /// When the request's first write was issued to the socket; before anything is written
    /// (and for a request that never was), just before it was built and handed to the
    /// connection.
    pub start_ns: u64,
    /// When the request's first write was issued to the socket (`None`: nothing written).
    pub first_write_ns: Option<u64>,
    /// Read time of the first output-bearing event (TTFT end).
    pub first_output_ns: Option<u64>,
    /// Read time of the last byte of the response.
    pub end_ns: u64,
    /// Output-bearing events received.
    pub output_chunks: u32,
    pub usage: Option<Usage>,
}

#[derive(Debug)]
pub struct TurnFailure {
    pub kind: FailureKind,
    pub timing: TurnTiming,
    /// Not a byte of the response arrived (so the server may never have seen the request).
    pub before_response: bool,
    /// A 429's `Retry-After`, in seconds (`None`: absent or not a number of seconds).
    pub retry_after_s: Option<u64>,
    /// What the server or the connection said, when anything: an error status's body (its
    /// JSON `message` when it has one), an in-band error's message, the transport's or the
    /// parser's error. Built only on failure, never on the success path.
    pub message: Option<String>,
}

/// A failure with its message, while the request is still being read.
#[derive(Debug)]
struct Fault {
    kind: FailureKind,
    message: Option<String>,
}

impl From<FailureKind> for Fault {
    fn from(kind: FailureKind) -> Self {
        Fault {
            kind,
            message: None,
        }
    }
}

impl Fault {
    fn with(kind: FailureKind, message: impl ToString) -> Fault {
        Fault {
            kind,
            message: Some(message.to_string()),
        }
    }
}

enum StreamError {
    Sse(SseError),
    Chunk(ChunkError),
    Server,
}

impl From<SseError> for StreamError {
    fn from(e: SseError) -> Self {
        StreamError::Sse(e)
    }
}

impl From<ChunkError> for StreamError {
    fn from(e: ChunkError) -> Self {
        StreamError::Chunk(e)
    }
}

/// The default `--session-header`: the conversation id the sim records requests by.
pub const SESSION_HEADER: &str = "x-parley-conversation";

/// The turn index (0-based) within the conversation.
pub const TURN_HEADER: &str = "x-parley-turn";

/// The request for one turn: fixed headers from `endpoint` plus the conversation and turn ids.
fn build_request(
    endpoint: &Endpoint,
    body: SegmentsBody,
    conversation: u64,
    turn: u32,
) -> Request<SegmentsBody> {
    let content_length = body.len();
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(endpoint.path.clone())
        .header(HOST, endpoint.host.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(
            hyper::header::CONTENT_LENGTH,
            HeaderValue::from(content_length),
        )
        .header(&endpoint.session_header, HeaderValue::from(conversation))
        .header(TURN_HEADER, HeaderValue::from(turn));
    if let Some(auth) = &endpoint.authorization {
        builder = builder.header(AUTHORIZATION, auth.clone());
    }
    for (name, value) in &endpoint.headers {
        builder = builder.header(name, value.clone());
    }
    builder
        .body(body)
        .expect("request parts are valid by construction")
}

/// Upper bound on a non-stream or error body we buffer.
const MAX_BODY_BYTES: usize = 64 << 20;

/// How much of an error status's body is kept for its message (the rest is drained unread).
const ERROR_BODY_KEEP: usize = 4096;

/// The message of an error status's body: its JSON error message when it has one (OpenAI's
/// `error.message`, vLLM's top-level `message`, FastAPI's `detail`), else the text itself.
pub(crate) fn error_body_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let text = v
            .pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .or_else(|| v.get("detail"));
        match text {
            Some(serde_json::Value::String(s)) => return s.clone(),
            Some(other) if !other.is_null() => return other.to_string(),
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".into()
    } else {
        text.into()
    }
}

/// Sends one request and consumes its response.
pub async fn send_turn(
    conn: &mut Connection,
    endpoint: &Endpoint,
    body: SegmentsBody,
    conversation: u64,
    turn: u32,
    scratch: &mut Scratch,
) -> Result<TurnTiming, TurnFailure> {
    let mut timing = TurnTiming::default();
    scratch.reply.clear();
    scratch.itl_ns.clear();
    scratch.framer.reset();

    conn.write_stamp.set(0);
    let start_ns = clock::now_ns();
    timing.start_ns = start_ns;
    let mut retry_after_s = None;

    let work = async {
        // Built here rather than before this block: a request captured by the block stays in
        // the slot's task for the whole response (the task was 2,520 bytes that way, 2,080
        // this way).
        let request = build_request(endpoint, body, conversation, turn);
        let response = match conn.sender.send_request(request).await {
            Ok(r) => r,
            Err(e) => return Err(Fault::with(FailureKind::Io, e)),
        };
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            retry_after_s = response
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
        }
        let mut body = response.into_body();
        if status != StatusCode::OK {
            // Drain (bounded) so the connection stays reusable, keeping the start of the body
            // for its message. Failures are rare: this allocation is off the success path.
            let mut kept = Vec::new();
            let mut drained = 0usize;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            let room = ERROR_BODY_KEEP.saturating_sub(kept.len());
                            kept.extend_from_slice(&d[..d.len().min(room)]);
                            drained += d.len();
                        }
                    }
                    Err(_) => break,
                }
                if drained > MAX_BODY_BYTES {
                    break;
                }
            }
            return Err(Fault::with(
                FailureKind::HttpStatus(status.as_u16()),
                error_body_message(&kept),
            ));
        }
        if endpoint.stream {
            read_stream(&mut body, &conn.stamp, scratch, &mut timing).await
        } else {
            read_whole(&mut body, &conn.stamp, scratch, &mut timing).await
        }
    };
    let result = with_timeouts(
        work,
        &conn.stamp,
        start_ns,
        endpoint.read_timeout,
        endpoint.request_timeout,
    )
    .await;
    let last_read_ns = conn.stamp.get();
    let written_ns = conn.write_stamp.get();
    timing.first_write_ns = (written_ns != 0).then_some(written_ns);
    // TTFT and latency count from the request's first write, not from when it was handed to
    // the connection: on a busy client core the time between the two is the client's own
    // queueing (reported as send lag), and it must not inflate the server's figures.
    if let Some(written_ns) = timing.first_write_ns {
        timing.start_ns = written_ns.max(start_ns);
    }
    timing.end_ns = last_read_ns.max(timing.start_ns);
    match result {
        Ok(()) => Ok(timing),
        Err(Fault { kind, message }) => Err(TurnFailure {
            kind,
            timing,
            before_response: last_read_ns < start_ns,
            retry_after_s,
            message,
        }),
    }
}

/// One streamed reply as its events arrive: timing, reply text and what the success rules
/// need at its end. Synchronous, so recorded byte streams replay through it in unit tests.
struct StreamReader<'a> {
    parser: &'a RefCell<ChunkParser>,
    reply: &'a mut String,
    itl_ns: &'a mut Vec<u64>,
    timing: &'a mut TurnTiming,
    done: bool,
    /// The last `finish_reason` seen: a server that aborts after a normal-looking chunk has
    /// aborted.
    finish: Option<Finish>,
    last_output_ns: u64,
}

impl StreamReader<'_> {
    /// One event's data, read from the socket at `now_ns`.
    fn on_data(&mut self, payload: &mut [u8], now_ns: u64) -> Result<(), StreamError> {
        if self.done {
            return Ok(());
        }
        if ChunkParser::is_done(payload) {
            self.done = true;
            return Ok(());
        }
        // Never held across an await: the callback runs synchronously inside `feed`.
        let info: ChunkInfo = self.parser.borrow_mut().parse_chunk(payload, self.reply)?;
        if info.error {
            return Err(StreamError::Server);
        }
        let timing = &mut *self.timing;
        if info.output {
            match timing.first_output_ns {
                None => timing.first_output_ns = Some(now_ns),
                // Saturating: read stamps never go back on one connection, but a gap must not
                // wrap into a huge ITL if a clock ever did.
                Some(_) => self.itl_ns.push(now_ns.saturating_sub(self.last_output_ns)),
            }
            self.last_output_ns = now_ns;
            timing.output_chunks += 1;
        }
        if info.finish.is_some() {
            self.finish = info.finish;
        }
        if info.usage.is_some() {
            timing.usage = info.usage;
        }
        Ok(())
    }

    /// The verdict once the body ended cleanly, or the error a feed gave.
    fn end(&self, fed: Result<(), StreamError>) -> Result<(), Fault> {
        fed.map_err(|e| classify(e, &self.parser.borrow()))?;
        Ok(verdict(
            self.finish,
            self.done,
            self.timing.output_chunks > 0,
        )?)
    }
}

async fn read_stream(
    body: &mut hyper::body::Incoming,
    stamp: &ReadStamp,
    scratch: &mut Scratch,
    timing: &mut TurnTiming,
) -> Result<(), Fault> {
    let Scratch {
        framer,
        parser,
        reply,
        itl_ns,
    } = scratch;
    let mut reader = StreamReader {
        parser,
        reply,
        itl_ns,
        timing,
        done: false,
        finish: None,
        last_output_ns: 0,
    };
    let mut fed = Ok(());
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Fault::with(FailureKind::Io, e))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        // The time the bytes were read from the socket, not the time we got to them.
        let now_ns = stamp.get();
        fed = framer.feed(data, |p: &mut [u8]| reader.on_data(p, now_ns));
        if fed.is_err() {
            break;
        }
    }
    if fed.is_ok() {
        let now_ns = stamp.get();
        fed = framer.finish(|p: &mut [u8]| reader.on_data(p, now_ns));
    }
    reader.end(fed)
}

fn classify(e: StreamError, parser: &ChunkParser) -> Fault {
    match e {
        StreamError::Sse(e) => Fault::with(FailureKind::MalformedSse, e),
        StreamError::Chunk(e) => Fault::with(FailureKind::MalformedSse, e),
        StreamError::Server => Fault {
            kind: FailureKind::ServerError,
            message: Some(parser.error_message().to_string()).filter(|m| !m.is_empty()),
        },
    }
}

async fn read_whole(
    body: &mut hyper::body::Incoming,
    stamp: &ReadStamp,
    scratch: &mut Scratch,
    timing: &mut TurnTiming,
) -> Result<(), Fault> {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Fault::with(FailureKind::Io, e))?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > MAX_BODY_BYTES {
                return Err(Fault::with(
                    FailureKind::MalformedSse,
                    format!("response body larger than {MAX_BODY_BYTES} bytes"),
                ));
            }
            buf.extend_from_slice(data);
        }
    }
    let now_ns = stamp.get();
    let mut parser = scratch.parser.borrow_mut();
    judge_whole(&mut parser, &mut buf, &mut scratch.reply, timing, now_ns)
}

/// Parses a whole (non-stream) body read by `now_ns` and gives its verdict. A whole body is
/// complete by definition: only its finish_reason and content decide.
fn judge_whole(
    parser: &mut ChunkParser,
    buf: &mut [u8],
    reply: &mut String,
    timing: &mut TurnTiming,
    now_ns: u64,
) -> Result<(), Fault> {
    let info = parser
        .parse_response(buf, reply)
        .map_err(|e| Fault::with(FailureKind::MalformedSse, e))?;
    if info.error {
        return Err(classify(StreamError::Server, parser));
    }
    // Without streaming the first token arrives with the whole body: TTFT = latency.
    if info.output {
        timing.first_output_ns = Some(now_ns);
        timing.output_chunks = 1;
    }
    timing.usage = info.usage;
    Ok(verdict(info.finish, true, info.output)?)
}

/// Races `work` against a watchdog that fails it once no byte has been read for `read_limit`
/// (`read_timeout`) or once it has run for `request_limit` (`request_timeout`). One timer per
/// request (not per event): the watchdog wakes every quarter of the shorter limit and checks the
/// read stamp and the clock.
///
/// A plain function returning the race, not an `async fn`: an `async fn` keeps its `work`
/// argument in its own state beside the copy moved into the race, so every slot's task carried
/// `work` twice (488 bytes per stream; docs/performance.md, "10k idle streams").
#[allow(clippy::manual_async_fn)] // deliberately not an `async fn`: see above
fn with_timeouts<'a, F>(
    work: F,
    stamp: &'a ReadStamp,
    start_ns: u64,
    read_limit: Duration,
    request_limit: Option<Duration>,
) -> impl std::future::Future<Output = Result<(), Fault>> + 'a
where
    F: std::future::Future<Output = Result<(), Fault>> + 'a,
{
    let read_limit_ns = read_limit.as_nanos() as u64;
    let request_limit_ns = request_limit.map_or(u64::MAX, |d| d.as_nanos() as u64);
    let watchdog = async move {
        let shortest = request_limit.map_or(read_limit, |r| r.min(read_limit));
        let tick = (shortest / 4).max(Duration::from_millis(1));
        loop {
            LazyTimer::new(tick).await;
            let now = clock::now_ns();
            if now.saturating_sub(start_ns) >= request_limit_ns {
                return Err(FailureKind::RequestTimeout.into());
            }
            let last = stamp.get().max(start_ns);
            if now.saturating_sub(last) >= read_limit_ns {
                return Err(FailureKind::ReadTimeout.into());
            }
        }
    };
    futures_lite::future::or(work, watchdog)
}

/// A glommio timer that is registered once. `future::or` polls the watchdog every time the
/// request's task wakes — once per SSE event — and glommio's `Timer::poll` re-registers itself
/// on every poll (a timer-map removal and insertion and a waker clone). This one registers on the
/// first poll and then only reads the clock until it is due: the task's waker stays registered.
struct LazyTimer {
    timer: glommio::timer::Timer,
    due_ns: u64,
    armed: bool,
}

impl LazyTimer {
    fn new(after: Duration) -> Self {
        // Read before the timer takes its own `now`, so `due_ns` is never later than the
        // timer's deadline: once it has fired, the clock check below lets the poll through.
        let due_ns = clock::now_ns() + after.as_nanos() as u64;
        LazyTimer {
            timer: glommio::timer::Timer::new(after),
            due_ns,
            armed: false,
        }
    }
}

impl std::future::Future for LazyTimer {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.armed && clock::now_ns() < self.due_ns {
            return std::task::Poll::Pending;
        }
        self.armed = true;
        std::pin::Pin::new(&mut self.timer).poll(cx).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_race_holds_its_work_once() {
        // Every slot's task holds this race for the whole response: as an `async fn` it kept
        // `work` twice (its argument and the copy in the race).
        let stamp: ReadStamp = Rc::new(std::cell::Cell::new(0));
        let held = [1u8; 1024];
        let work = async move {
            futures_lite::future::yield_now().await;
            if held[0] == 1 {
                Ok(())
            } else {
                Err(FailureKind::Io.into())
            }
        };
        let work_bytes = std::mem::size_of_val(&work);
        assert!(work_bytes >= 1024);
        let raced = with_timeouts(work, &stamp, 0, Duration::from_secs(1), None);
        let raced_bytes = std::mem::size_of_val(&raced);
        assert!(
            raced_bytes < work_bytes + 512,
            "the race is {raced_bytes} bytes for {work_bytes} bytes of work"
        );
    }

    /// Replays a recorded response body, split into the given reads, through the framer and
    /// the stream reader exactly as [`read_stream`] does; each read is stamped 1 ms later.
    fn replay(reads: &[&[u8]]) -> (Result<(), Fault>, TurnTiming, String) {
        let parser = RefCell::new(ChunkParser::new());
        let mut framer = SseFramer::default();
        let (mut reply, mut itl_ns, mut timing) =
            (String::new(), Vec::new(), TurnTiming::default());
        let mut reader = StreamReader {
            parser: &parser,
            reply: &mut reply,
            itl_ns: &mut itl_ns,
            timing: &mut timing,
            done: false,
            finish: None,
            last_output_ns: 0,
        };
        let mut fed = Ok(());
        for (i, data) in reads.iter().enumerate() {
            let now_ns = (i as u64 + 1) * 1_000_000;
            fed = framer.feed(data, |p: &mut [u8]| reader.on_data(p, now_ns));
            if fed.is_err() {
                break;
            }
        }
        if fed.is_ok() {
            fed = framer.finish(|p: &mut [u8]| reader.on_data(p, 99_000_000));
        }
        let result = reader.end(fed);
        (result, timing, reply)
    }

    fn kind(reads: &[&[u8]]) -> Result<(), FailureKind> {
        replay(reads).0.map_err(|f| f.kind)
    }

    const PRELUDE: &[u8] = b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n";
    const HELLO: &[u8] = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n";
    const USAGE: &[u8] =
        b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n";
    const DONE: &[u8] = b"data: [DONE]\n\n";

    fn finish(reason: &str) -> Vec<u8> {
        format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"\"}},\"finish_reason\":\"{reason}\"}}]}}\n\n"
        )
        .into_bytes()
    }

    #[test]
    fn a_normal_stream_succeeds_with_or_without_done() {
        for reason in [
            "stop",
            "length",
            "tool_calls",
            "function_call",
            "content_filter",
        ] {
            let stop = finish(reason);
            let (r, timing, reply) = replay(&[PRELUDE, HELLO, &stop, USAGE, DONE]);
            assert!(r.is_ok(), "{reason}: {r:?}");
            assert_eq!((timing.output_chunks, reply.as_str()), (1, "Hello"));
            assert_eq!(timing.usage.map(|u| u.completion_tokens), Some(2));
            // A clean end of body after the finish_reason is enough.
            assert!(kind(&[PRELUDE, HELLO, &stop]).is_ok(), "{reason}");
        }
    }

    /// Issue 11: vLLM's aborted stream (finish_reason "abort", usage, [DONE]) counted as a
    /// success, putting truncated replies into every figure.
    #[test]
    fn an_aborted_stream_fails_as_aborted() {
        let abort = finish("abort");
        assert_eq!(
            kind(&[PRELUDE, HELLO, &abort, USAGE, DONE]),
            Err(FailureKind::Aborted)
        );
        // Split at every byte boundary: same verdict.
        let whole = [PRELUDE, HELLO, &abort, USAGE, DONE].concat();
        for cut in 1..whole.len() {
            let (a, b) = whole.split_at(cut);
            assert_eq!(kind(&[a, b]), Err(FailureKind::Aborted), "cut at {cut}");
        }
        assert_eq!(
            kind(&[PRELUDE, HELLO, &finish("error"), DONE]),
            Err(FailureKind::FinishError)
        );
        // The last finish_reason wins.
        assert_eq!(
            kind(&[PRELUDE, HELLO, &finish("stop"), &abort, DONE]),
            Err(FailureKind::Aborted)
        );
    }

    /// Issue 11: a stream of only the role prelude and [DONE] counted as a success with 0
    /// tokens.
    #[test]
    fn streams_without_finish_or_output_fail_by_class() {
        assert_eq!(kind(&[PRELUDE, DONE]), Err(FailureKind::NoFinishReason));
        assert_eq!(
            kind(&[PRELUDE, HELLO, USAGE, DONE]),
            Err(FailureKind::NoFinishReason)
        );
        // Cut short: no [DONE], no finish_reason.
        assert_eq!(kind(&[PRELUDE, HELLO]), Err(FailureKind::Incomplete));
        assert_eq!(kind(&[]), Err(FailureKind::Incomplete));
        // Finished normally, but nothing in it.
        assert_eq!(
            kind(&[PRELUDE, &finish("stop"), USAGE, DONE]),
            Err(FailureKind::EmptyReply)
        );
        // Reasoning and tool calls are output.
        let reasoning: &[u8] =
            b"data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"hm\"}}]}\n\n";
        let tool: &[u8] = b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0}]}}]}\n\n";
        for out in [reasoning, tool] {
            assert!(kind(&[PRELUDE, out, &finish("tool_calls"), DONE]).is_ok());
        }
    }

    #[test]
    fn in_band_errors_and_bad_json_keep_their_message() {
        let error: &[u8] = b"data: {\"object\":\"error\",\"message\":\"This model's maximum context length is 4096 tokens.\",\"type\":\"BadRequestError\",\"code\":400}\n\n";
        let (r, _, _) = replay(&[PRELUDE, error, DONE]);
        let f = r.unwrap_err();
        assert_eq!(f.kind, FailureKind::ServerError);
        assert_eq!(
            f.message.as_deref(),
            Some("This model's maximum context length is 4096 tokens.")
        );
        let (r, _, _) = replay(&[PRELUDE, b"data: {\"choices\": [}\n\n", DONE]);
        let f = r.unwrap_err();
        assert_eq!(f.kind, FailureKind::MalformedSse);
        assert!(f.message.unwrap().starts_with("malformed JSON in SSE data"));
    }

    #[test]
    fn whole_bodies_follow_the_same_rules() {
        let judge = |body: &str| {
            let mut parser = ChunkParser::new();
            let (mut reply, mut timing) = (String::new(), TurnTiming::default());
            let mut buf = body.as_bytes().to_vec();
            judge_whole(&mut parser, &mut buf, &mut reply, &mut timing, 7)
                .map(|()| (timing.first_output_ns, reply))
                .map_err(|f| (f.kind, f.message))
        };
        let body = |content: &str, finish: &str| {
            format!(
                r#"{{"object":"chat.completion","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}"}},"finish_reason":{finish}}}],"usage":{{"prompt_tokens":3,"completion_tokens":2}}}}"#
            )
        };
        assert_eq!(judge(&body("Hi", r#""stop""#)), Ok((Some(7), "Hi".into())));
        assert_eq!(
            judge(&body("Hi", r#""abort""#)),
            Err((FailureKind::Aborted, None))
        );
        assert_eq!(
            judge(&body("Hi", r#""error""#)),
            Err((FailureKind::FinishError, None))
        );
        assert_eq!(
            judge(&body("Hi", "null")),
            Err((FailureKind::NoFinishReason, None))
        );
        assert_eq!(
            judge(&body("", r#""stop""#)),
            Err((FailureKind::EmptyReply, None))
        );
        assert_eq!(
            judge(r#"{"object":"error","message":"bad request","code":400}"#),
            Err((FailureKind::ServerError, Some("bad request".into())))
        );
    }

    #[test]
    fn verdict_table() {
        use Finish::*;
        assert_eq!(verdict(Some(Normal), false, true), Ok(()));
        assert_eq!(
            verdict(Some(Normal), true, false),
            Err(FailureKind::EmptyReply)
        );
        assert_eq!(verdict(Some(Abort), true, true), Err(FailureKind::Aborted));
        assert_eq!(
            verdict(Some(Error), true, true),
            Err(FailureKind::FinishError)
        );
        assert_eq!(verdict(None, true, true), Err(FailureKind::NoFinishReason));
        assert_eq!(verdict(None, false, true), Err(FailureKind::Incomplete));
        for (k, label) in [
            (FailureKind::Aborted, "aborted"),
            (FailureKind::FinishError, "finish_error"),
            (FailureKind::NoFinishReason, "no_finish_reason"),
            (FailureKind::EmptyReply, "empty_reply"),
        ] {
            assert_eq!(k.label(), label);
        }
    }

    #[test]
    fn error_bodies_give_their_message() {
        assert_eq!(
            error_body_message(
                br#"{"object":"error","message":"This model's maximum context length is 4096 tokens.","type":"BadRequestError","param":null,"code":400}"#
            ),
            "This model's maximum context length is 4096 tokens."
        );
        assert_eq!(
            error_body_message(br#"{"error":{"message":"rate limited","type":"x"}}"#),
            "rate limited"
        );
        assert_eq!(
            error_body_message(br#"{"detail":"Not Found"}"#),
            "Not Found"
        );
        assert_eq!(
            error_body_message(b"<html>\n502 Bad Gateway\n</html>"),
            "<html>\n502 Bad Gateway\n</html>"
        );
        assert_eq!(error_body_message(b"  "), "(empty body)");
    }

    #[test]
    fn small_read_buffer_only_for_many_slots() {
        // The bulk and paced cases (64 and 512 slots) keep hyper's adaptive buffer.
        assert_eq!(read_buf_for(64), None);
        assert_eq!(read_buf_for(512), None);
        assert_eq!(
            read_buf_for(SMALL_READ_BUF_FROM_SLOTS),
            Some(SMALL_READ_BUF)
        );
        assert_eq!(read_buf_for(10_000), Some(SMALL_READ_BUF));
    }
}
