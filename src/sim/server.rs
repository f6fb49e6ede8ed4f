//! The sim's executors: one glommio executor per core, each with its own `SO_REUSEPORT` listener
//! and one task per connection running hyper's HTTP/1.1 server; and the request handler that
//! routes, parses, prices the prompt against the shared prefix cache and starts the reply.
//!
//! State: [`Shared`] (config, reply words, prefix cache, counters, record sender) is shared by all
//! executors; [`Exec`] (the prompt encoder and its message cache, the stop signal, the connection
//! count) belongs to one executor.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::net::TcpListener;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Response, StatusCode};

use super::cache::{fmix64, PrefixCache};
use super::config::Config;
use super::conn::{self, set_reset_on_close, ConnCtl, Tracked};
use super::fault::{self, FaultKind};
use super::metrics::Metrics;
use super::prompt::{Msg, PromptEncoder};
use super::record::{content_hash, hash_hex, Record, RecordSender};
use super::reply::{ReplyGen, ReplyWords};
use super::request::{self, BadRequest, Endpoint, Input, Prompt};
use super::stream::{full_reply, Run, RunSpec, SimBody, SseBody, StreamFault};
use super::SimError;
use crate::clock::{instant_at, now_ns};
use crate::net::{HyperIo, ReadStamp, StampedTcp};
use crate::tokenizer::Tokenizer;

/// State shared by every executor.
pub(crate) struct Shared {
    pub(crate) cfg: Config,
    pub(crate) tokenizer: Arc<Tokenizer>,
    pub(crate) words: ReplyWords,
    /// One prefix cache for the whole server, as a real server has. A `Mutex` is fine in the
    /// sim: it is the test fixture, not the client's hot path.
    cache: Mutex<PrefixCache>,
    pub(crate) metrics: Metrics,
    pub(crate) record: Option<RecordSender>,
    /// The served model name as a JSON string (quotes included).
    pub(crate) model_json: String,
    /// Unix seconds at start (for `/v1/models`).
    started_unix: u64,
    /// `--tls-cert`: every connection's TLS handshake is accepted with this (one config for
    /// all executors, so a ticket issued by one resumes on any other).
    pub(crate) tls: Option<futures_rustls::TlsAcceptor>,
}

impl Shared {
    pub(crate) fn new(
        cfg: Config,
        tokenizer: Arc<Tokenizer>,
        words: ReplyWords,
        record: Option<RecordSender>,
    ) -> Self {
        let model_json = serde_json::Value::from(cfg.model.as_str()).to_string();
        Shared {
            cache: Mutex::new(PrefixCache::new(cfg.block_size, cfg.cache_capacity_tokens)),
            cfg,
            tokenizer,
            words,
            metrics: Metrics::default(),
            record,
            model_json,
            started_unix: unix_now(),
            tls: None,
        }
    }

    pub(crate) fn lock_cache(&self) -> MutexGuard<'_, PrefixCache> {
        // A panic elsewhere while holding the lock leaves the cache consistent enough for a sim.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn block_size(&self) -> usize {
        self.cfg.block_size
    }

    pub(crate) fn metrics_text(&self) -> String {
        let cache_tokens = self.lock_cache().tokens();
        match self.cfg.metrics_style {
            super::MetricsStyle::Vllm => {
                self.metrics
                    .render(&self.cfg.model, self.cfg.block_size, cache_tokens)
            }
            super::MetricsStyle::Sglang => self.metrics.render_sglang(&self.cfg.model),
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A stop signal local to one executor that any number of tasks can wait on.
#[derive(Default)]
pub(crate) struct LocalStop {
    stopped: Cell<bool>,
    /// One waker slot per waiting future.
    wakers: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl LocalStop {
    pub(crate) fn stopped(&self) -> bool {
        self.stopped.get()
    }

    pub(crate) fn trigger(&self) {
        self.stopped.set(true);
        let wakers: Vec<_> = self
            .wakers
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    /// A future that completes once [`LocalStop::trigger`] was called.
    pub(crate) fn wait(self: &Rc<Self>) -> StopWait {
        let slot = match self.free.borrow_mut().pop() {
            Some(s) => s,
            None => {
                let mut w = self.wakers.borrow_mut();
                w.push(None);
                w.len() - 1
            }
        };
        StopWait {
            stop: self.clone(),
            slot,
        }
    }
}

pub(crate) struct StopWait {
    stop: Rc<LocalStop>,
    slot: usize,
}

impl Future for StopWait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.stop.stopped.get() {
            return Poll::Ready(());
        }
        let mut wakers = self.stop.wakers.borrow_mut();
        let slot = &mut wakers[self.slot];
        match slot {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for StopWait {
    fn drop(&mut self) {
        self.stop.wakers.borrow_mut()[self.slot] = None;
        self.stop.free.borrow_mut().push(self.slot);
    }
}

/// One executor's state.
pub(crate) struct Exec {
    shared: Arc<Shared>,
    encoder: RefCell<PromptEncoder>,
    stop: Rc<LocalStop>,
    connections: Cell<usize>,
}

/// Decrements the connection count when a connection task ends, however it ends.
struct ConnGuard(Rc<Exec>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections.set(self.0.connections.get() - 1);
    }
}

/// How often an executor looks at the shutdown flag.
const STOP_POLL: Duration = Duration::from_millis(20);
/// How long an executor waits for its connections to wind down at shutdown.
const DRAIN_MAX: Duration = Duration::from_secs(2);

/// Starts executor `index`; it binds `addr`, reports the bound address on `ready`, and serves
/// until `stop` is set.
pub(crate) fn start_executor(
    index: usize,
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<Result<SocketAddr, SimError>>,
) -> Result<ExecutorJoinHandle<()>, SimError> {
    let placement = match shared.cfg.pin_cpus.as_slice() {
        [] => Placement::Unbound,
        cpus => Placement::Fixed(cpus[index % cpus.len()]),
    };
    LocalExecutorBuilder::new(placement)
        .name(&format!("parley-sim-{index}"))
        .io_memory(64 * 1024)
        .spawn(move || serve(shared, addr, stop, ready))
        .map_err(|e| SimError::Executor(e.to_string()))
}

async fn serve(
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<Result<SocketAddr, SimError>>,
) {
    let listener = match TcpListener::bind(addr).and_then(|l| l.local_addr().map(|a| (l, a))) {
        Ok((l, bound)) => {
            let _ = ready.send(Ok(bound));
            l
        }
        Err(e) => {
            let _ = ready.send(Err(SimError::Bind {
                addr: addr.to_string(),
                source: std::io::Error::other(e.to_string()),
            }));
            return;
        }
    };
    drop(ready);
    let encoder = PromptEncoder::new(shared.tokenizer.clone(), shared.cfg.encode_cache_tokens);
    let exec = Rc::new(Exec {
        shared,
        encoder: RefCell::new(encoder),
        stop: Rc::new(LocalStop::default()),
        connections: Cell::new(0),
    });

    let watcher_stop = exec.stop.clone();
    glommio::spawn_local(async move {
        while !stop.load(Ordering::Acquire) {
            glommio::timer::sleep(STOP_POLL).await;
        }
        watcher_stop.trigger();
    })
    .detach();

    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            exec.stop.wait().await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok(stream)) => {
                exec.connections.set(exec.connections.get() + 1);
                let guard = ConnGuard(exec.clone());
                glommio::spawn_local(serve_connection(guard, stream)).detach();
            }
            Some(Err(_)) => {
                // EMFILE and friends: back off instead of spinning.
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    drop(listener);
    let until = Instant::now() + DRAIN_MAX;
    while exec.connections.get() > 0 && Instant::now() < until {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// One accepted connection: the TLS handshake first with `--tls-cert` (a failed one just ends
/// the connection: the client sees and counts it), then HTTP/1.1, on the faulty path when the
/// sim has `--fault`s. TLS sits between the stamping socket and hyper, as on the client, so
/// arrival times stay the socket's.
async fn serve_connection(guard: ConnGuard, stream: glommio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let exec = guard.0.clone();
    // Small writes (one SSE event) must leave at once.
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let (tcp, stamp, _) = StampedTcp::new(stream);
    let Some(acceptor) = exec.shared.tls.clone() else {
        return serve_http(guard, fd, tcp, stamp, None).await;
    };
    let accepted = futures_lite::future::or(async { Some(acceptor.accept(tcp).await) }, async {
        exec.stop.wait().await;
        None
    })
    .await;
    if let Some(Ok(tls)) = accepted {
        let kind = match tls.get_ref().1.handshake_kind() {
            Some(rustls::HandshakeKind::Resumed) => "resumed",
            _ => "full",
        };
        serve_http(guard, fd, tls, stamp, Some(kind)).await;
    }
}

/// HTTP/1.1 over `io` (plain TCP or TLS; `fd` is the socket's, for the connection faults).
async fn serve_http<S>(
    guard: ConnGuard,
    fd: std::os::fd::RawFd,
    io: S,
    stamp: ReadStamp,
    tls: Option<&'static str>,
) where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    if guard.0.shared.cfg.faults.is_empty() {
        serve_plain(guard, HyperIo::wrap(io), stamp, tls).await
    } else {
        serve_faulty(guard, fd, HyperIo::wrap(io), stamp, tls).await
    }
}

async fn serve_plain<S>(
    guard: ConnGuard,
    io: HyperIo<S>,
    stamp: ReadStamp,
    tls: Option<&'static str>,
) where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    let exec = guard.0.clone();
    let svc_exec = exec.clone();
    let service = hyper::service::service_fn(move |req| {
        handle(svc_exec.clone(), stamp.clone(), tls, None, req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    futures_lite::future::or(
        async {
            // Errors here are clients going away mid-response; the request's own record says so.
            let _ = conn.await;
        },
        exec.stop.wait(),
    )
    .await;
    drop(guard);
}

/// How long a `close_after_response` connection waits for the client's next request.
const HOLD_MAX: Duration = Duration::from_secs(60);

/// [`serve_plain`] for a sim with `--fault`: the same, plus the connection-level faults
/// (reset, close when idle, close after a response; see [`conn`]). They act on the socket
/// (`fd`), under any TLS session, so they work the same over https.
async fn serve_faulty<S>(
    guard: ConnGuard,
    fd: std::os::fd::RawFd,
    io: HyperIo<S>,
    stamp: ReadStamp,
    tls: Option<&'static str>,
) where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    let exec = guard.0.clone();
    let ctl = ConnCtl::new(fd);
    let io = ctl.io(io);
    let (svc_exec, svc_ctl) = (exec.clone(), ctl.clone());
    let service = hyper::service::service_fn(move |req| {
        handle(
            svc_exec.clone(),
            stamp.clone(),
            tls,
            Some(svc_ctl.clone()),
            req,
        )
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    // In a block: the connection (and its socket) must be gone before a held socket waits.
    {
        let mut conn = std::pin::pin!(conn);
        let idle_ms = fault::close_idle_ms(&exec.shared.cfg.faults);
        enum Event {
            Done,
            Changed,
            Idle,
        }
        loop {
            let idle = async {
                match (idle_ms, ctl.idle_since()) {
                    (Some(ms), Some(since)) => {
                        let at = since + Duration::from_millis(ms);
                        glommio::timer::sleep(at.saturating_duration_since(Instant::now())).await;
                        Event::Idle
                    }
                    _ => std::future::pending().await,
                }
            };
            let event = futures_lite::future::or(
                futures_lite::future::or(
                    async {
                        let _ = conn.as_mut().await;
                        Event::Done
                    },
                    async {
                        exec.stop.wait().await;
                        Event::Done
                    },
                ),
                futures_lite::future::or(
                    async {
                        ctl.changed().await;
                        Event::Changed
                    },
                    idle,
                ),
            )
            .await;
            match event {
                Event::Done => break,
                Event::Changed if ctl.reset.get() => break,
                Event::Changed => {
                    if ctl.take_shutdown() {
                        conn.as_mut().graceful_shutdown();
                    }
                }
                Event::Idle => {
                    if ctl.idle_since().is_some() {
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
    if let Some(fd) = ctl.take_held() {
        let stop = exec.stop.clone();
        conn::reset_on_next_request(fd, HOLD_MAX, move || stop.stopped()).await;
    }
    drop(guard);
}

type Resp = Response<SimBody>;

fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(SimBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// An OpenAI-style error body: `{"error":{"message","type","param","code"}}`.
fn error_response(status: StatusCode, message: &str, param: Option<&str>) -> Resp {
    let kind = match status {
        StatusCode::BAD_REQUEST => "BadRequestError",
        StatusCode::NOT_FOUND => "NotFoundError",
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
        StatusCode::PAYLOAD_TOO_LARGE => "RequestTooLarge",
        _ => "InternalServerError",
    };
    let body = serde_json::json!({
        "error": {"message": message, "type": kind, "param": param, "code": status.as_u16()}
    });
    json_response(status, body.to_string())
}

/// `tls`: the connection's handshake (`"full"`, `"resumed"`) over https, for the record.
async fn handle(
    exec: Rc<Exec>,
    stamp: ReadStamp,
    tls: Option<&'static str>,
    ctl: Option<Rc<ConnCtl>>,
    req: hyper::Request<Incoming>,
) -> Result<Resp, Infallible> {
    let Some(ctl) = ctl else {
        return route(exec, stamp, tls, None, req).await;
    };
    let in_flight = ctl.begin();
    let (resp, close_after) = {
        let close_after = Cell::new(false);
        let resp = route(exec, stamp, tls, Some((&ctl, &close_after)), req).await?;
        (resp, close_after.get())
    };
    let (parts, inner) = resp.into_parts();
    let body = SimBody::Tracked(Box::new(Tracked {
        inner,
        ctl,
        close_after,
        _in_flight: in_flight,
    }));
    Ok(Response::from_parts(parts, body))
}

/// The connection's fault state, and where to say that the connection is to be closed after
/// this response.
type FaultCtx<'a> = Option<(&'a Rc<ConnCtl>, &'a Cell<bool>)>;

async fn route(
    exec: Rc<Exec>,
    stamp: ReadStamp,
    tls: Option<&'static str>,
    faults: FaultCtx<'_>,
    req: hyper::Request<Incoming>,
) -> Result<Resp, Infallible> {
    let now = now_ns();
    let arrival_ns = match stamp.get() {
        0 => now,
        s => s.min(now),
    };
    let shared = &exec.shared;
    let endpoint = match (req.method(), req.uri().path()) {
        (&Method::POST, "/v1/chat/completions") => Endpoint::Chat,
        (&Method::POST, "/v1/completions") => Endpoint::Completions,
        (&Method::GET, "/health") => return Ok(Response::new(SimBody::Full(None))),
        (&Method::GET, "/v1/models") => {
            let body = serde_json::json!({
                "object": "list",
                "data": [{
                    "id": shared.cfg.model, "object": "model", "created": shared.started_unix,
                    "owned_by": "parley", "root": shared.cfg.model, "parent": null,
                    "max_model_len": shared.cfg.max_model_len,
                }]
            });
            return Ok(json_response(StatusCode::OK, body.to_string()));
        }
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(SimBody::full(shared.metrics_text()));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            return Ok(r);
        }
        (_, "/v1/chat/completions" | "/v1/completions" | "/health" | "/v1/models" | "/metrics") => {
            return Ok(error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("method {} is not allowed here", req.method()),
                None,
            ));
        }
        (_, path) => {
            return Ok(error_response(
                StatusCode::NOT_FOUND,
                &format!("no route for {path}"),
                None,
            ));
        }
    };
    let conn = ConnFacts { stamp: &stamp, tls };
    Ok(generate(exec.clone(), conn, endpoint, req, arrival_ns, faults).await)
}

/// A header's value for the record: a number when it is one.
fn header_id(req: &hyper::Request<Incoming>, name: &str) -> Option<serde_json::Value> {
    let v = req.headers().get(name)?.to_str().ok()?.trim();
    Some(match v.parse::<u64>() {
        Ok(n) => n.into(),
        Err(_) => v.into(),
    })
}

/// Answers with an error and records it.
fn reject(
    shared: &Shared,
    record: Option<Box<Record>>,
    status: StatusCode,
    message: &str,
    param: Option<&str>,
) -> Resp {
    if status != StatusCode::INTERNAL_SERVER_ERROR {
        shared.metrics.rejected.fetch_add(1, Ordering::Relaxed);
    }
    if let (Some(mut r), Some(tx)) = (record, shared.record.as_ref()) {
        r.status = status.as_u16();
        r.error = Some(message.to_owned());
        r.end_ns = now_ns();
        tx.send(r);
    }
    error_response(status, message, param)
}

/// What a request's handler knows of its connection.
struct ConnFacts<'a> {
    /// The socket's last read time.
    stamp: &'a ReadStamp,
    /// The TLS handshake, over https.
    tls: Option<&'static str>,
}

async fn generate(
    exec: Rc<Exec>,
    conn: ConnFacts<'_>,
    endpoint: Endpoint,
    req: hyper::Request<Incoming>,
    arrival_ns: u64,
    faults: FaultCtx<'_>,
) -> Resp {
    let shared = exec.shared.clone();
    let cfg = &shared.cfg;
    let request_id = shared.metrics.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let fault = fault::pick(&cfg.faults, request_id);
    let mut record = shared.record.as_ref().map(|_| {
        Box::new(Record {
            request_id,
            conversation: header_id(&req, &cfg.session_header),
            turn: header_id(&req, crate::client::TURN_HEADER),
            endpoint: endpoint.name().to_owned(),
            arrival_ns,
            fault: fault.map(|f| f.kind.name().to_owned()),
            tls: conn.tls.map(str::to_owned),
            ..Record::default()
        })
    });

    let body = match Limited::new(req.into_body(), cfg.max_body_bytes)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            let (status, msg) = if e.is::<http_body_util::LengthLimitError>() {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body is larger than {} bytes", cfg.max_body_bytes),
                )
            } else {
                (StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
            };
            return reject(&shared, record, status, &msg, None);
        }
    };
    let t0_ns = conn.stamp.get().clamp(arrival_ns, now_ns());
    if let Some(r) = record.as_mut() {
        r.t0_ns = t0_ns;
    }

    let mut stream_fault = None;
    if let Some(f) = fault {
        let status = match f.kind {
            FaultKind::Http500 => Some(StatusCode::INTERNAL_SERVER_ERROR),
            FaultKind::Http503 => Some(StatusCode::SERVICE_UNAVAILABLE),
            FaultKind::Http429 => Some(StatusCode::TOO_MANY_REQUESTS),
            _ => None,
        };
        if let Some(status) = status {
            shared
                .metrics
                .failed_injected
                .fetch_add(1, Ordering::Relaxed);
            if let Some(r) = record.as_mut() {
                r.failed = true;
            }
            let msg = format!(
                "injected failure: request {request_id} (--fault {}:every={}; --fail-every)",
                f.kind, f.every
            );
            let mut resp = reject(&shared, record, status, &msg, None);
            if f.kind == FaultKind::Http429 {
                let secs = f.after_ms.div_ceil(1000).max(1);
                resp.headers_mut()
                    .insert(hyper::header::RETRY_AFTER, HeaderValue::from(secs));
            }
            return resp;
        }
        match f.kind {
            FaultKind::StallBeforeHeaders | FaultKind::ResetBeforeHeaders => {
                if let (Some(mut r), Some(tx)) = (record.take(), shared.record.as_ref()) {
                    r.end_ns = now_ns();
                    tx.send(r);
                }
                if let (FaultKind::ResetBeforeHeaders, Some((ctl, _))) = (f.kind, faults) {
                    set_reset_on_close(ctl.fd);
                    ctl.reset.set(true);
                    ctl.notify();
                }
                // Never answered: the client goes away, the connection is reset, or the sim stops.
                exec.stop.wait().await;
                return error_response(StatusCode::SERVICE_UNAVAILABLE, "stopping", None);
            }
            FaultKind::CloseAfterResponse => {
                if let Some((_, close)) = faults {
                    close.set(true);
                }
            }
            FaultKind::SlowHeaders => {
                glommio::timer::sleep(Duration::from_millis(f.after_ms)).await;
            }
            _ => {
                stream_fault = Some(StreamFault {
                    spec: f,
                    fd: faults.map_or(-1, |(ctl, _)| ctl.fd),
                });
            }
        }
    }

    let parsed = match request::parse(endpoint, &body) {
        Ok(p) => p,
        Err(BadRequest { message, param }) => {
            return reject(&shared, record, StatusCode::BAD_REQUEST, &message, param);
        }
    };
    if cfg.strict_model {
        if let Some(m) = parsed.model.as_deref() {
            if m != cfg.model {
                let msg = format!("The model `{m}` does not exist.");
                return reject(&shared, record, StatusCode::NOT_FOUND, &msg, Some("model"));
            }
        }
    }
    if let Some(r) = record.as_mut() {
        r.stream = parsed.stream;
        r.max_tokens = parsed.max_tokens;
        r.min_tokens = parsed.min_tokens;
        r.ignore_eos = parsed.ignore_eos;
        r.include_usage = parsed.include_usage;
    }

    // Prompt token ids, and a key of the request's content for the reply generator.
    let mut ids = Vec::new();
    let request_key;
    let mut template_error = None;
    {
        let mut enc = exec.encoder.borrow_mut();
        match &parsed.input {
            Input::Chat(messages) => {
                let msgs: Vec<Msg<'_>> = messages
                    .iter()
                    .map(|m| Msg::new(&m.role, &m.content.0))
                    .collect();
                if let Err(e) = enc.chat_ids(&msgs, &mut ids) {
                    template_error = Some(format!("the chat template refused the messages: {e}"));
                }
                let mut key = 0x6368_6174u64; // "chat"
                for m in &msgs {
                    key = fmix64(key ^ m.content_hash).wrapping_add(content_hash(m.role));
                }
                request_key = key;
                if let Some(r) = record.as_mut() {
                    r.messages = msgs.len() as u32;
                    r.message_roles = msgs.iter().map(|m| m.role.to_owned()).collect();
                    r.message_hashes = msgs.iter().map(|m| hash_hex(m.content_hash)).collect();
                    r.message_tokens = msgs.iter().map(|m| enc.bare_tokens(m)).collect();
                    if cfg.record_prompts {
                        r.prompt_text = Some(enc.chat_text(&msgs));
                    }
                }
            }
            Input::Completion(Prompt::Text(text)) => {
                ids = enc.text_ids(text);
                let h = content_hash(text);
                request_key = fmix64(0x636d_706c ^ h);
                if let Some(r) = record.as_mut() {
                    r.messages = 1;
                    r.message_roles = vec!["prompt".to_owned()];
                    r.message_hashes = vec![hash_hex(h)];
                    r.message_tokens = vec![ids.len() as u64];
                    if cfg.record_prompts {
                        r.prompt_text = Some(text.to_string());
                    }
                }
            }
            Input::Completion(Prompt::Ids(prompt_ids)) => {
                ids.clone_from(prompt_ids);
                request_key = ids
                    .iter()
                    .fold(0x0069_6473_u64, |k, &t| fmix64(k ^ u64::from(t)));
                if let Some(r) = record.as_mut() {
                    r.messages = 1;
                    r.message_roles = vec!["prompt".to_owned()];
                    r.message_tokens = vec![ids.len() as u64];
                }
            }
        }
    }
    if let Some(msg) = template_error {
        return reject(&shared, record, StatusCode::BAD_REQUEST, &msg, None);
    }
    let prompt_tokens = ids.len() as u64;
    if prompt_tokens == 0 {
        return reject(
            &shared,
            record,
            StatusCode::BAD_REQUEST,
            "the prompt is empty",
            None,
        );
    }
    let requested = parsed.max_tokens.unwrap_or(0);
    if prompt_tokens.saturating_add(requested) > cfg.max_model_len
        || prompt_tokens >= cfg.max_model_len
    {
        let msg = format!(
            "This model's maximum context length is {} tokens. However, you requested {} tokens \
             ({prompt_tokens} in the messages, {requested} in the completion). Please reduce the \
             length of the messages or completion.",
            cfg.max_model_len,
            prompt_tokens.saturating_add(requested),
        );
        return reject(&shared, record, StatusCode::BAD_REQUEST, &msg, None);
    }
    let plan = request::output_plan(
        parsed.ignore_eos,
        parsed.max_tokens,
        parsed.min_tokens,
        cfg.default_output_tokens,
    );
    let (lookup, tail) = shared.lock_cache().lookup_and_insert(&ids);
    drop(ids);
    {
        let m = &shared.metrics;
        m.prompt_tokens.fetch_add(prompt_tokens, Ordering::Relaxed);
        m.cache_queries.fetch_add(prompt_tokens, Ordering::Relaxed);
        m.cache_hits
            .fetch_add(lookup.cached_tokens, Ordering::Relaxed);
    }
    let uncached = lookup.prompt_tokens - lookup.cached_tokens;
    let first_ns = t0_ns
        .saturating_add(cfg.ttft_base_ns)
        .saturating_add(uncached.saturating_mul(cfg.ttft_per_uncached_token_ns));
    let chunks = plan.tokens.div_ceil(cfg.tokens_per_chunk);
    if let Some(r) = record.as_mut() {
        r.status = 200;
        r.prompt_tokens = prompt_tokens;
        r.cached_tokens = lookup.cached_tokens;
        r.planned_tokens = u64::from(plan.tokens);
        r.finish_reason = Some(plan.finish_reason.to_owned());
        r.chunk_ns = Vec::with_capacity(if parsed.stream { chunks as usize } else { 1 });
    }
    if stream_fault.is_some() && !parsed.stream {
        let msg = format!(
            "injected failure: request {request_id} (--fault {} on a non-streaming request)",
            fault.map_or("?", |f| f.kind.name())
        );
        if let Some(r) = record.as_mut() {
            r.failed = true;
        }
        return reject(
            &shared,
            record,
            StatusCode::INTERNAL_SERVER_ERROR,
            &msg,
            None,
        );
    }
    let spec = RunSpec {
        endpoint,
        request_id,
        created: unix_now(),
        plan,
        prompt_tokens,
        cached_tokens: lookup.cached_tokens,
        first_ns,
        itl_ns: cfg.itl_ns,
        tokens_per_chunk: cfg.tokens_per_chunk,
        reply: ReplyGen::new(cfg.seed, request_key),
        chain: cfg.cache_output_tokens.then_some(tail),
        record,
        report_cached: cfg.usage == super::UsageMode::Full,
        report_usage: cfg.usage != super::UsageMode::None,
    };
    let run = Run::new(shared.clone(), spec);
    if parsed.stream {
        let usage = cfg.usage != super::UsageMode::None;
        let body = SseBody::new(
            run,
            parsed.include_usage && usage,
            parsed.continuous_usage && usage,
            stream_fault,
        );
        let mut r = Response::new(SimBody::Sse(Box::new(body)));
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r
    } else {
        // If the client goes away while we wait, hyper drops this future and with it the run,
        // which records the abort.
        let last = run.last_deadline_ns();
        let now = now_ns();
        if last > now {
            glommio::timer::sleep(instant_at(last).saturating_duration_since(Instant::now())).await;
        }
        json_response(StatusCode::OK, full_reply(run))
    }
}
