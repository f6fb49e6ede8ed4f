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

use crate::chunk::{ChunkError, ChunkInfo, ChunkParser, Usage};
use crate::clock;
use crate::net::{HyperIo, ReadStamp, SegmentsBody, WriteStamp};
use crate::sse::{SseError, SseFramer};

/// How a request failed; every failure is counted under exactly one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// TCP connect failed or timed out.
    Connect,
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
    /// The body ended without `[DONE]` or a `finish_reason`.
    Incomplete,
}

impl FailureKind {
    /// A stable label for reports ("http_500", "io", …).
    pub fn label(&self) -> String {
        match self {
            FailureKind::Connect => "connect".into(),
            FailureKind::TooManyOpenFiles => "too_many_open_files".into(),
            FailureKind::HttpStatus(code) => format!("http_{code}"),
            FailureKind::Io => "io".into(),
            FailureKind::ReadTimeout => "read_timeout".into(),
            FailureKind::RequestTimeout => "request_timeout".into(),
            FailureKind::MalformedSse => "malformed_sse".into(),
            FailureKind::ServerError => "server_error".into(),
            FailureKind::Incomplete => "incomplete".into(),
        }
    }
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
    pub async fn open(
        endpoint: &Endpoint,
        read_buf_exact: Option<usize>,
    ) -> Result<Connection, FailureKind> {
        let stream =
            glommio::net::TcpStream::connect_timeout(endpoint.addr, endpoint.connect_timeout)
                .await
                .map_err(|e| match std::io::Error::from(e).raw_os_error() {
                    Some(libc::EMFILE | libc::ENFILE) => FailureKind::TooManyOpenFiles,
                    _ => FailureKind::Connect,
                })?;
        // Each SSE event must leave our send path immediately, and requests are single writes.
        let _ = stream.set_nodelay(true);
        let (io, stamp, write_stamp) = HyperIo::new(stream);
        let mut builder = hyper::client::conn::http1::Builder::new();
        if read_buf_exact.is_some() {
            builder.read_buf_exact_size(read_buf_exact);
        }
        let (sender, conn) = builder
            .handshake(io)
            .await
            .map_err(|_| FailureKind::Connect)?;
        // The connection ends when the server closes it or the sender is dropped; either way
        // the slot notices on its next request and reconnects, so its result is not needed.
        // Spawned as is rather than inside `async move { conn.await }`: such a block keeps
        // the captured connection and the awaited one side by side, doubling the task
        // (≈ 1.6 KiB instead of ≈ 0.8 KiB per stream).
        glommio::spawn_local(conn).detach();
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
    /// Just before the request was built (its headers, well under a µs) and handed to the
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
}

enum StreamError {
    Sse,
    Chunk,
    Server,
}

impl From<SseError> for StreamError {
    fn from(_: SseError) -> Self {
        StreamError::Sse
    }
}

impl From<ChunkError> for StreamError {
    fn from(_: ChunkError) -> Self {
        StreamError::Chunk
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
            Err(_) => return Err(FailureKind::Io),
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
            // Drain (bounded) so the connection stays reusable; the body is not needed.
            let mut drained = 0usize;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => drained += f.data_ref().map_or(0, |d| d.len()),
                    Err(_) => break,
                }
                if drained > MAX_BODY_BYTES {
                    break;
                }
            }
            return Err(FailureKind::HttpStatus(status.as_u16()));
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
    timing.end_ns = last_read_ns.max(timing.start_ns);
    let written_ns = conn.write_stamp.get();
    timing.first_write_ns = (written_ns != 0).then_some(written_ns);
    match result {
        Ok(()) => Ok(timing),
        Err(kind) => Err(TurnFailure {
            kind,
            timing,
            before_response: last_read_ns < start_ns,
            retry_after_s,
        }),
    }
}

async fn read_stream(
    body: &mut hyper::body::Incoming,
    stamp: &ReadStamp,
    scratch: &mut Scratch,
    timing: &mut TurnTiming,
) -> Result<(), FailureKind> {
    let Scratch {
        framer,
        parser,
        reply,
        itl_ns,
    } = scratch;
    let mut done = false;
    let mut finished = false;
    let mut last_output_ns = 0u64;
    let mut on_data = |payload: &mut [u8], now_ns: u64| -> Result<(), StreamError> {
        if done {
            return Ok(());
        }
        if ChunkParser::is_done(payload) {
            done = true;
            return Ok(());
        }
        // Never held across an await: the callback runs synchronously inside `feed`.
        let info: ChunkInfo = parser.borrow_mut().parse_chunk(payload, reply)?;
        if info.error {
            return Err(StreamError::Server);
        }
        if info.output {
            match timing.first_output_ns {
                None => timing.first_output_ns = Some(now_ns),
                Some(_) => itl_ns.push(now_ns - last_output_ns),
            }
            last_output_ns = now_ns;
            timing.output_chunks += 1;
        }
        finished |= info.finished;
        if info.usage.is_some() {
            timing.usage = info.usage;
        }
        Ok(())
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| FailureKind::Io)?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        // The time the bytes were read from the socket, not the time we got to them.
        let now_ns = stamp.get();
        framer
            .feed(data, |p: &mut [u8]| on_data(p, now_ns))
            .map_err(classify)?;
    }
    let now_ns = stamp.get();
    framer
        .finish(|p: &mut [u8]| on_data(p, now_ns))
        .map_err(classify)?;
    if done || finished {
        Ok(())
    } else {
        Err(FailureKind::Incomplete)
    }
}

fn classify(e: StreamError) -> FailureKind {
    match e {
        StreamError::Sse | StreamError::Chunk => FailureKind::MalformedSse,
        StreamError::Server => FailureKind::ServerError,
    }
}

async fn read_whole(
    body: &mut hyper::body::Incoming,
    stamp: &ReadStamp,
    scratch: &mut Scratch,
    timing: &mut TurnTiming,
) -> Result<(), FailureKind> {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| FailureKind::Io)?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > MAX_BODY_BYTES {
                return Err(FailureKind::MalformedSse);
            }
            buf.extend_from_slice(data);
        }
    }
    let info = scratch
        .parser
        .borrow_mut()
        .parse_response(&mut buf, &mut scratch.reply)
        .map_err(|_| FailureKind::MalformedSse)?;
    if info.error {
        return Err(FailureKind::ServerError);
    }
    // Without streaming the first token arrives with the whole body: TTFT = latency.
    let now_ns = stamp.get();
    if info.output {
        timing.first_output_ns = Some(now_ns);
        timing.output_chunks = 1;
    }
    timing.usage = info.usage;
    Ok(())
}

/// Races `work` against a watchdog that fails it once no byte has been read for `read_limit`
/// (`read_timeout`) or once it has run for `request_limit` (`request_timeout`). One timer per
/// request (not per event): the watchdog wakes every quarter of the shorter limit and checks the
/// read stamp and the clock.
async fn with_timeouts<F>(
    work: F,
    stamp: &ReadStamp,
    start_ns: u64,
    read_limit: Duration,
    request_limit: Option<Duration>,
) -> Result<(), FailureKind>
where
    F: std::future::Future<Output = Result<(), FailureKind>>,
{
    let read_limit_ns = read_limit.as_nanos() as u64;
    let request_limit_ns = request_limit.map_or(u64::MAX, |d| d.as_nanos() as u64);
    let watchdog = async {
        let shortest = request_limit.map_or(read_limit, |r| r.min(read_limit));
        let tick = (shortest / 4).max(Duration::from_millis(1));
        loop {
            glommio::timer::sleep(tick).await;
            let now = clock::now_ns();
            if now.saturating_sub(start_ns) >= request_limit_ns {
                return Err(FailureKind::RequestTimeout);
            }
            let last = stamp.get().max(start_ns);
            if now.saturating_sub(last) >= read_limit_ns {
                return Err(FailureKind::ReadTimeout);
            }
        }
    };
    futures_lite::future::or(work, watchdog).await
}

#[cfg(test)]
mod tests {
    use super::*;

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
