//! The engine: one pinned glommio executor per core, each owning a disjoint share of the
//! concurrency slots, its own connections and its own [`Recorder`].
//!
//! A slot runs one conversation at a time, turn by turn, over its own keep-alive connection.
//! Conversations are claimed first come, first served from one atomic counter (the only state
//! the cores share while the run is hot), cycling through the pool, until exactly `number` have
//! been claimed. Each executor returns its recorder from `join()`; they are merged once at the end.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam::utils::CachePadded;
use glommio::{LocalExecutorBuilder, Placement};

use crate::chunk::ChunkParser;
use crate::client::{self, Connection, Endpoint, FailureKind, Scratch, TurnTiming};
use crate::clock;
use crate::metrics::{self, CacheSource, Recorder, Success};
use crate::net::SegmentsBody;
use crate::signal;
use crate::workload::{message_json, ContextMode, Conversation, COMMA};

/// The fixed byte pieces every request body is assembled from.
#[derive(Clone, Debug)]
pub struct BodyShape {
    /// `{` + every body field (with the run's `max_tokens`) + `,"messages":[`.
    pub open: Bytes,
    /// The same fields without `max_tokens` + `,"messages":[`; sent after a per-turn
    /// `{"max_tokens":N,` when the dataset sets one.
    pub open_without_max: Bytes,
    /// Name of the max-tokens field (`max_tokens` or `max_completion_tokens`).
    pub max_tokens_field: &'static str,
}

const CLOSE: Bytes = Bytes::from_static(b"]}");

/// Everything the executors share, read-only except the claim counter and per-core progress.
pub struct Shared {
    pub endpoint: Endpoint,
    pub body: BodyShape,
    pub conversations: Arc<Vec<Conversation>>,
    /// Conversations to claim in total (`--number`).
    pub number: u64,
    claims: AtomicU64,
    progress: Vec<CachePadded<CoreProgress>>,
}

/// Written only by its own core; read by the progress printer.
#[derive(Default)]
pub struct CoreProgress {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub done: AtomicBool,
}

/// Where and how wide to run.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// CPU ids to pin one executor each to.
    pub cpus: Vec<usize>,
    /// Total concurrency slots, split across `cpus`.
    pub concurrency: usize,
    /// Executors spin instead of parking when idle (`--spin`).
    pub spin: bool,
}

/// How long an idle `--spin` executor polls before parking. Longer than any gap between events
/// of a loaded run, so a busy executor never parks. Not unbounded: with an unbounded spin, one of
/// six paced runs (512 × 10 ms) had a request stall ≈ 147 s until its read-timeout watchdog
/// timer (600 s / 4) fired — a wake-up glommio's spin loop missed and the next timer recovered.
/// Parking after this much idleness caps such a stall at this bound. (Cause not established.)
const SPIN_BEFORE_PARK: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot start an executor on CPU {cpu}: {reason}")]
    Executor { cpu: usize, reason: String },
}

/// Slots per core: `concurrency` split as evenly as possible, earlier cores taking the remainder.
pub fn split_slots(concurrency: usize, cores: usize) -> Vec<usize> {
    (0..cores)
        .map(|i| concurrency / cores + usize::from(i < concurrency % cores))
        .collect()
}

/// A progress snapshot for the console.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub claimed: u64,
    pub number: u64,
    pub succeeded: u64,
    pub failed: u64,
}

impl Shared {
    pub fn new(
        endpoint: Endpoint,
        body: BodyShape,
        conversations: Arc<Vec<Conversation>>,
        number: u64,
        cores: usize,
    ) -> Shared {
        Shared {
            endpoint,
            body,
            conversations,
            number,
            claims: AtomicU64::new(0),
            progress: (0..cores)
                .map(|_| CachePadded::new(CoreProgress::default()))
                .collect(),
        }
    }

    pub fn progress(&self) -> Progress {
        let mut p = Progress {
            claimed: self.claims.load(Ordering::Relaxed).min(self.number),
            number: self.number,
            succeeded: 0,
            failed: 0,
        };
        for c in &self.progress {
            p.succeeded += c.succeeded.load(Ordering::Relaxed);
            p.failed += c.failed.load(Ordering::Relaxed);
        }
        p
    }

    fn all_done(&self) -> bool {
        self.progress.iter().all(|c| c.done.load(Ordering::Acquire))
    }

    /// Claims the next conversation: its claim index, or `None` once `number` are claimed.
    fn claim(&self) -> Option<u64> {
        if signal::interrupted() {
            return None;
        }
        let n = self.claims.fetch_add(1, Ordering::Relaxed);
        (n < self.number).then_some(n)
    }
}

/// Runs the benchmark to completion (or interrupt) and returns the merged recorder.
/// `on_tick` is called about every 200 ms on the calling thread while the run is hot.
pub fn run(
    config: &EngineConfig,
    shared: Arc<Shared>,
    mut on_tick: impl FnMut(Progress),
) -> Result<Recorder, EngineError> {
    let slots = split_slots(config.concurrency, config.cpus.len());
    let mut handles = Vec::new();
    for (core, (&cpu, &n_slots)) in config.cpus.iter().zip(&slots).enumerate() {
        if n_slots == 0 {
            shared.progress[core].done.store(true, Ordering::Release);
            continue;
        }
        let shared = shared.clone();
        let spin = config.spin;
        let mut builder = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("parley-{core}"))
            // glommio pre-faults io_memory per executor; we do not use its DMA buffers.
            .io_memory(64 << 10);
        if spin {
            // glommio spins only on executors bound to a CPU, which ours always are.
            builder = builder.spin_before_park(SPIN_BEFORE_PARK);
        }
        let handle = builder
            .spawn(move || async move { run_shard(shared, core, n_slots, spin).await })
            .map_err(|e| EngineError::Executor {
                cpu,
                reason: e.to_string(),
            })?;
        handles.push((cpu, handle));
    }
    while !shared.all_done() {
        std::thread::sleep(Duration::from_millis(200));
        on_tick(shared.progress());
    }
    let mut merged = Recorder::new();
    for (cpu, h) in handles {
        let rec = h.join().map_err(|e| EngineError::Executor {
            cpu,
            reason: e.to_string(),
        })?;
        merged.merge(&rec);
    }
    Ok(merged)
}

async fn run_shard(shared: Arc<Shared>, core: usize, n_slots: usize, spin: bool) -> Recorder {
    // Take (and so reset) glommio's counters: with --spin they are the only busy measure.
    let _ = glommio::executor().executor_stats();
    let (cpu_start_ns, wall_start_ns) = (clock::thread_cpu_ns(), clock::now_ns());
    let recorder = Rc::new(RefCell::new(Recorder::new()));
    let parser = Rc::new(RefCell::new(ChunkParser::new()));
    let read_buf = client::read_buf_for(n_slots);
    let tasks: Vec<_> = (0..n_slots)
        .map(|_| {
            let scratch = Scratch::new(parser.clone());
            glommio::spawn_local(run_slot(
                shared.clone(),
                core,
                recorder.clone(),
                scratch,
                read_buf,
            ))
        })
        .collect();
    for t in tasks {
        t.await;
    }
    let mut recorder = Rc::try_unwrap(recorder)
        .expect("every slot task has finished")
        .into_inner();
    let cpu_ns = if spin {
        // A spinning thread's CPU time is its wall time; glommio's run time (tasks + I/O
        // polling, spin loops excluded) is what the executor actually worked.
        glommio::executor()
            .executor_stats()
            .total_runtime()
            .as_nanos() as u64
    } else {
        clock::thread_cpu_ns() - cpu_start_ns
    };
    recorder.core_loads.push(metrics::CoreLoad {
        cpu_ns,
        wall_ns: clock::now_ns() - wall_start_ns,
    });
    shared.progress[core].done.store(true, Ordering::Release);
    recorder
}

/// How a conversation ended.
enum Ending {
    Completed,
    Abandoned,
    Interrupted,
}

async fn run_slot(
    shared: Arc<Shared>,
    core: usize,
    recorder: Rc<RefCell<Recorder>>,
    mut scratch: Scratch,
    read_buf: Option<usize>,
) {
    let mut conn: Option<Connection> = None;
    let mut history: Vec<Bytes> = Vec::new();
    while let Some(claim) = shared.claim() {
        let pool = &shared.conversations;
        let conv = &pool[(claim % pool.len() as u64) as usize];
        history.clear();
        let ending = run_conversation(
            &shared,
            core,
            claim,
            conv,
            &mut conn,
            &mut scratch,
            &mut history,
            &recorder,
            read_buf,
        )
        .await;
        let mut rec = recorder.borrow_mut();
        match ending {
            Ending::Completed => rec.conversations_completed += 1,
            Ending::Abandoned => rec.conversations_abandoned += 1,
            Ending::Interrupted => rec.conversations_interrupted += 1,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_conversation(
    shared: &Shared,
    core: usize,
    claim: u64,
    conv: &Conversation,
    conn: &mut Option<Connection>,
    scratch: &mut Scratch,
    history: &mut Vec<Bytes>,
    recorder: &Rc<RefCell<Recorder>>,
    read_buf: Option<usize>,
) -> Ending {
    let endpoint = &shared.endpoint;
    let progress = &shared.progress[core];
    let mut prev_prompt = 0u64;
    let mut prev_completion = 0u64;
    // Client-side prompt estimate for servers that send no usage: bare tokens of every message.
    let mut estimated_prompt = 0u64;
    // When the slot could send the current turn: the claim for the first turn; the previous
    // reply's last byte plus the turn's delay after that. Send lag is measured from here, so
    // the client's own processing of the previous reply and timer overshoot both count.
    let mut ready_ns = clock::now_ns();
    let mut prev_end_ns = ready_ns;
    for (k, turn) in conv.turns.iter().enumerate() {
        if k > 0 {
            if signal::interrupted() {
                return Ending::Interrupted;
            }
            ready_ns = prev_end_ns + turn.delay_ns;
            // An absolute deadline, so time spent processing the reply is not added to the delay.
            let now_ns = clock::now_ns();
            if ready_ns > now_ns {
                glommio::timer::sleep(Duration::from_nanos(ready_ns - now_ns)).await;
            }
            if conv.context == ContextMode::Verbatim {
                // The turn carries the whole array; nothing accumulates.
                history.clear();
                estimated_prompt = 0;
            } else {
                history.push(COMMA);
            }
        }
        history.extend(turn.delta.iter().cloned());
        estimated_prompt += turn.delta_tokens.unwrap_or(0) as u64;

        let c = match ensure_connection(conn, endpoint, read_buf).await {
            Ok((c, opened)) => {
                ready_ns = if opened {
                    // Connection setup is the network's time, not the client's lag.
                    ready_ns.max(clock::now_ns())
                } else {
                    // Nor is waiting for the end of the previous response after its last event.
                    ready_ns.max(c.last_read_ns())
                };
                c
            }
            Err(kind) => {
                let now = clock::now_ns();
                let timing = TurnTiming {
                    start_ns: now,
                    end_ns: now,
                    ..TurnTiming::default()
                };
                recorder.borrow_mut().record_failure(&timing, kind);
                progress.failed.fetch_add(1, Ordering::Relaxed);
                return Ending::Abandoned;
            }
        };

        let body = match &turn.open {
            Some(open) => assemble_body_with(open.clone(), history),
            None => assemble_body(&shared.body, turn.max_tokens, history),
        };
        let sent = client::send_turn(c, endpoint, body, claim, k as u32, scratch).await;
        let timing = match &sent {
            Ok(timing) => timing,
            Err(failure) => &failure.timing,
        };
        if let Some(written_ns) = timing.first_write_ns {
            recorder.borrow_mut().record_send_lag(ready_ns, written_ns);
        }
        prev_end_ns = timing.end_ns;
        match sent {
            Ok(timing) => {
                let (prompt, completion, from_usage) =
                    metrics::tokens_of(timing.usage, estimated_prompt, timing.output_chunks);
                let (cached, source) = match timing.usage.and_then(|u| u.cached_tokens) {
                    Some(c) => (c, CacheSource::Server),
                    None => (prev_prompt + prev_completion, CacheSource::Estimated),
                };
                recorder.borrow_mut().record_success(Success {
                    timing: &timing,
                    itl_ns: &scratch.itl_ns,
                    turn: k as u32,
                    prompt_tokens: prompt,
                    completion_tokens: completion,
                    tokens_from_usage: from_usage,
                    cached_tokens: cached,
                    cache_source: source,
                });
                progress.succeeded.fetch_add(1, Ordering::Relaxed);
                prev_prompt = prompt;
                prev_completion = completion;
                estimated_prompt += completion;
                if k + 1 < conv.turns.len() {
                    match conv.context {
                        ContextMode::Live => {
                            history.push(COMMA);
                            history.push(Bytes::from(message_json("assistant", &scratch.reply)));
                        }
                        ContextMode::Canned => {
                            if let Some(reply) = &turn.reply {
                                history.push(COMMA);
                                history.push(reply.clone());
                            }
                        }
                        ContextMode::Verbatim => {}
                    }
                }
            }
            Err(failure) => {
                recorder
                    .borrow_mut()
                    .record_failure(&failure.timing, failure.kind);
                progress.failed.fetch_add(1, Ordering::Relaxed);
                // After a clean error status the connection is still in sync; after anything
                // else its state is unknown, so start the next conversation on a fresh one.
                if !matches!(failure.kind, FailureKind::HttpStatus(_)) {
                    *conn = None;
                }
                return Ending::Abandoned;
            }
        }
    }
    Ending::Completed
}

/// The slot's connection, opened (or reopened) if needed; `true` when it was just opened.
async fn ensure_connection<'a>(
    conn: &'a mut Option<Connection>,
    endpoint: &Endpoint,
    read_buf: Option<usize>,
) -> Result<(&'a mut Connection, bool), FailureKind> {
    if let Some(c) = conn.as_mut() {
        if !c.ready().await {
            *conn = None;
        }
    }
    let opened = conn.is_none();
    if opened {
        *conn = Some(Connection::open(endpoint, read_buf).await?);
    }
    Ok((conn.as_mut().expect("set above"), opened))
}

/// The request body for the current turn (public for `benches/turn_and_record.rs`): the fixed opening, the history segments (shared
/// `Bytes`, no copy), and the closing brackets.
pub fn assemble_body(
    shape: &BodyShape,
    max_tokens: Option<u32>,
    history: &[Bytes],
) -> SegmentsBody {
    let mut segments = Vec::with_capacity(history.len() + 3);
    match max_tokens {
        None => segments.push(shape.open.clone()),
        Some(n) => {
            segments.push(Bytes::from(format!(
                "{{\"{}\":{n},",
                shape.max_tokens_field
            )));
            segments.push(shape.open_without_max.clone());
        }
    }
    segments.extend(history.iter().cloned());
    segments.push(CLOSE);
    SegmentsBody::new(segments)
}

/// [`assemble_body`] with a turn's own opening (per-turn extra fields).
fn assemble_body_with(open: Bytes, history: &[Bytes]) -> SegmentsBody {
    let mut segments = Vec::with_capacity(history.len() + 2);
    segments.push(open);
    segments.extend(history.iter().cloned());
    segments.push(CLOSE);
    SegmentsBody::new(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_split_evenly() {
        assert_eq!(split_slots(10, 3), vec![4, 3, 3]);
        assert_eq!(split_slots(1, 2), vec![1, 0]);
        assert_eq!(split_slots(4, 2), vec![2, 2]);
    }

    #[test]
    fn body_is_valid_json_with_history() {
        let shape = BodyShape {
            open: Bytes::from_static(b"{\"model\":\"m\",\"max_tokens\":8,\"messages\":["),
            open_without_max: Bytes::from_static(b"\"model\":\"m\",\"messages\":["),
            max_tokens_field: "max_tokens",
        };
        let history = vec![
            Bytes::from(message_json("user", "hi \"there\"")),
            COMMA,
            Bytes::from(message_json("assistant", "hello\n")),
            COMMA,
            Bytes::from(message_json("user", "again")),
        ];
        for max in [None, Some(3)] {
            let mut body = assemble_body(&shape, max, &history);
            let len = body.len();
            let mut bytes = Vec::new();
            use hyper::body::Body;
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            while let std::task::Poll::Ready(Some(Ok(frame))) =
                std::pin::Pin::new(&mut body).poll_frame(&mut cx)
            {
                bytes.extend_from_slice(frame.data_ref().unwrap());
            }
            assert_eq!(bytes.len() as u64, len);
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["messages"].as_array().unwrap().len(), 3);
            assert_eq!(v["messages"][1]["content"], "hello\n");
            assert_eq!(v["max_tokens"], max.unwrap_or(8));
        }
    }
}
