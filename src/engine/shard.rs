//! One core's share of a run: its phases, its schedule, its conversation tasks, its pooled
//! connections and its recorders. Everything here runs on the core's own executor and touches
//! only that core's state (`Rc`/`RefCell`), except the progress counters and the phase barrier.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use glommio::sync::{Semaphore, StaticPermit};

use super::accounting::Accounting;
use super::cursor::Cursor;
use super::schedule::{ClosedLoop, Fixed, OpenLoop, Schedule};
use super::{split_slots, CoreProgress, Load, Shape, Shared};
use crate::chunk::ChunkParser;
use crate::client::{self, Connection, FailureKind, Scratch, TurnTiming};
use crate::clock;
use crate::metrics::{self, Recorder, Success};
use crate::records::{Attempt, CoreRecords, Request, Status, Tokens};
use crate::signal;
use crate::trace::{TraceAcc, TurnFacts};
use crate::workload::sampling::Sampler;
use crate::workload::Conversation;

/// What a core hands back at `join()`.
pub(crate) struct ShardOutput {
    pub recorder: Recorder,
    pub warmup: Option<Recorder>,
}

/// A conversation task's reusable buffers; pooled per core so a closed loop allocates them once
/// per slot, not once per conversation.
struct SlotState {
    scratch: Scratch,
    history: Vec<Bytes>,
    /// A request is on the wire (so a cancellation cancels a request, not only a wait).
    in_flight: bool,
    /// Which request that is, for its record if it is cancelled.
    sending: Option<Attempt>,
}

/// The core's state, shared by its tasks.
struct Core {
    shared: Arc<Shared>,
    /// This core's index among the active cores, and their number.
    index: usize,
    cores: usize,
    parser: Rc<RefCell<ChunkParser>>,
    read_buf: Option<usize>,
    /// Idle keep-alive connections per endpoint, most recently used last.
    idle: RefCell<Vec<Vec<Connection>>>,
    /// Per endpoint, this core's own TLS connector for an https one: its `ClientConfig`, and
    /// so the session cache reconnects resume from, is not shared with any other core.
    tls: Vec<Option<crate::tls::TlsConnector>>,
    states: RefCell<Vec<SlotState>>,
    sampler: RefCell<Sampler>,
    /// Connection attempts that failed in a row on this core (any success resets it), and how
    /// many halt the run (0: never).
    connect_failures: std::cell::Cell<u64>,
    connect_limit: u64,
    stop: Stop,
    /// This core's per-request records (`None`: `--no-records`); taken, flushed and dropped
    /// when the core's run ends, so the writer sees every record and its channel close.
    records: RefCell<Option<CoreRecords>>,
}

/// How this core's tasks learn of a signal. The signal handler may only set an atomic, so a
/// watcher task ([`watch_signals`]) polls it every [`SIGNAL_POLL`] and closes these
/// semaphores, which wakes every task waiting on them at once — one timer per core, not one per
/// waiting conversation (10,000 think-time waits each polling a flag would cost 500,000 wake-ups
/// a second). An eventfd or self-pipe would wake a parked executor sooner, but glommio has no
/// public way to wait on an arbitrary fd, and 20 ms is well inside what a person or a process
/// manager notices.
struct Stop {
    /// Closed at the first signal: stop claiming, cut waits (think time, arrivals, slots) short.
    stopping: Rc<Semaphore>,
    /// Closed when requests in flight are to be cancelled: `--grace` after the first signal,
    /// or at once on a second.
    cancel: Rc<Semaphore>,
}

impl Stop {
    fn new() -> Stop {
        Stop {
            stopping: Rc::new(Semaphore::new(0)),
            cancel: Rc::new(Semaphore::new(0)),
        }
    }
}

/// How often each core looks at the signal flags.
const SIGNAL_POLL: Duration = Duration::from_millis(20);

/// Resolves when `sem` (never signalled, only closed) is closed.
async fn closed(sem: &Semaphore) {
    let _ = sem.acquire(1).await;
}

/// `fut`'s output, or `None` if the run is stopped (a signal) first.
async fn unless_stopped<T>(stop: &Stop, fut: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        closed(&stop.stopping).await;
        None
    })
    .await
}

/// Polls the signal flags for this core: closes `stopping` at the first signal and `cancel`
/// `grace_ns` later or at a second signal. Runs until the core ends (its task is dropped).
async fn watch_signals(core: Rc<Core>, grace_ns: u64) {
    loop {
        glommio::timer::sleep(SIGNAL_POLL).await;
        if signal::interrupted() {
            break;
        }
    }
    core.stop.stopping.close();
    let deadline_ns = clock::now_ns().saturating_add(grace_ns);
    while !signal::cancel_now() && clock::now_ns() < deadline_ns {
        glommio::timer::sleep(SIGNAL_POLL).await;
    }
    core.stop.cancel.close();
}

impl Core {
    fn progress(&self) -> &CoreProgress {
        &self.shared.progress[self.index]
    }

    fn take_state(&self) -> SlotState {
        self.states.borrow_mut().pop().unwrap_or_else(|| SlotState {
            scratch: Scratch::new(self.parser.clone()),
            history: Vec::new(),
            in_flight: false,
            sending: None,
        })
    }

    /// Counts a connection attempt; after `max_consecutive_connect_failures` failures in a row
    /// halts the run on every core (through `Shared`).
    fn note_connect(&self, ok: bool) {
        if ok {
            self.connect_failures.set(0);
            return;
        }
        let n = self.connect_failures.get() + 1;
        self.connect_failures.set(n);
        if self.connect_limit > 0 && n >= self.connect_limit {
            self.shared.halted.store(true, Ordering::Relaxed);
        }
    }

    /// Stop starting conversations and turns: Ctrl-C, or the target is unreachable.
    fn stopping(&self) -> bool {
        signal::interrupted() || self.shared.halted()
    }

    fn take_conn(&self, url: usize) -> Option<Connection> {
        self.idle.borrow_mut()[url].pop()
    }

    /// The conversation with sequence number `seq` in a phase of `shape`, and its pool index.
    fn conversation(&self, shape: &Shape, seq: u64) -> (usize, &Conversation) {
        let i = match shape {
            Shape::Fixed { schedule, .. } => schedule.entries[seq as usize].conversation,
            _ => self.sampler.borrow_mut().pool_index(seq),
        };
        (i, &self.shared.conversations[i])
    }

    /// Writes one request attempt's record, when records are on.
    fn record(&self, request: Request<'_>) {
        if let Some(sink) = self.records.borrow_mut().as_mut() {
            sink.push(request);
        }
    }
}

/// One phase as this core runs it.
struct Phase {
    /// 0 = warmup, 1 = measured.
    id: usize,
    load: Load,
    recorder: Rc<RefCell<Recorder>>,
}

impl Phase {
    fn measured(&self) -> bool {
        self.id == 1
    }
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    index: usize,
    cores: usize,
    spin: bool,
) -> ShardOutput {
    // Take (and so reset) glommio's counters: with --spin they are the only busy measure.
    let _ = glommio::executor().executor_stats();
    let (cpu_start_ns, wall_start_ns) = (clock::thread_cpu_ns(), clock::now_ns());
    let config = shared.config.clone();
    let slots = config
        .load
        .shape
        .cap()
        .map(|cap| split_slots(cap, cores)[index]);
    let core = Rc::new(Core {
        index,
        cores,
        parser: Rc::new(RefCell::new(ChunkParser::new())),
        read_buf: client::read_buf_for(slots.unwrap_or(0)),
        idle: RefCell::new(shared.endpoints.iter().map(|_| Vec::new()).collect()),
        tls: shared
            .endpoints
            .iter()
            .map(|e| e.tls.as_ref().map(|t| t.client.config().into()))
            .collect(),
        states: RefCell::new(Vec::new()),
        sampler: RefCell::new(shared.sampler.clone()),
        connect_failures: std::cell::Cell::new(0),
        connect_limit: config
            .max_consecutive_connect_failures
            .unwrap_or_else(|| super::DEFAULT_MAX_CONNECT_FAILURES.max(slots.unwrap_or(0) as u64)),
        stop: Stop::new(),
        records: RefCell::new(shared.records.as_ref().map(|ch| ch.sink(index))),
        shared,
    });
    // Dropped (and so stopped) when this function returns.
    let _watcher = glommio::spawn_local(watch_signals(core.clone(), config.interrupt_grace_ns));
    if config.preconnect {
        if let Some(n) = slots {
            unless_stopped(&core.stop, preconnect(&core, n)).await;
        }
    }
    let mut phases = Vec::new();
    if let Some(w) = &config.warmup {
        phases.push(Phase {
            id: 0,
            load: w.clone(),
            recorder: Rc::new(RefCell::new(recorder_for(&core))),
        });
    }
    phases.push(Phase {
        id: 1,
        load: config.load.clone(),
        recorder: Rc::new(RefCell::new(recorder_for(&core))),
    });
    let mut out = ShardOutput {
        recorder: Recorder::new(),
        warmup: None,
    };
    for phase in phases {
        let (start_ns, base) = barrier(&core, phase.id).await;
        // Every core gets the same phase start, so their time buckets line up when merged.
        phase.recorder.borrow_mut().timeline.set_origin(start_ns);
        drive(&core, &phase, start_ns, base).await;
        let measured = phase.measured();
        let rec = Rc::try_unwrap(phase.recorder)
            .map_err(|_| ())
            .expect("every conversation task of the phase has finished")
            .into_inner();
        if measured {
            out.recorder = rec;
        } else {
            out.warmup = Some(rec);
        }
    }
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
    out.recorder.core_loads.push(metrics::CoreLoad {
        cpu: core.shared.config.cpus[index],
        cpu_ns,
        wall_ns: clock::now_ns() - wall_start_ns,
    });
    // Flushed and closed before the core reports done: everything measured reaches the file.
    drop(core.records.borrow_mut().take());
    core.progress().done.store(true, Ordering::Release);
    out
}

fn recorder_for(core: &Core) -> Recorder {
    let mut rec = Recorder::new();
    rec.with_urls(core.shared.endpoints.len());
    rec.goodput = core.shared.config.goodput;
    rec
}

/// Opens `n` connections (spread over the endpoints) before traffic, so the first turns do not
/// pay for a connect storm. A failure here is not counted: the conversation that would have used
/// the connection connects itself, and its failure is counted then.
async fn preconnect(core: &Rc<Core>, n: usize) {
    let endpoints = core.shared.endpoints.len();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let core = core.clone();
            let url = (core.index + i * core.cores) % endpoints;
            glommio::spawn_local(async move {
                let endpoint = &core.shared.endpoints[url];
                let tls = core.tls[url].as_ref();
                if let Ok(c) = Connection::open(endpoint, core.read_buf, tls).await {
                    core.idle.borrow_mut()[url].push(c);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await;
    }
}

/// Waits until every active core is ready for `phase`; returns the phase's start time and the
/// sequence number of its first conversation. The last core to arrive publishes both: the
/// start a little ahead, so every core sees it before it passes.
async fn barrier(core: &Core, phase: usize) -> (u64, u64) {
    let shared = &core.shared;
    let arrived = shared.arrived[phase].fetch_add(1, Ordering::AcqRel) + 1;
    if arrived == core.cores {
        let base = if phase == 1 {
            shared.phase_base[0].load(Ordering::Acquire)
                + shared.progress[..core.cores]
                    .iter()
                    .map(|p| p.warmup_started.load(Ordering::Acquire))
                    .sum::<u64>()
        } else {
            0
        };
        shared.phase_base[phase].store(base, Ordering::Release);
        if phase == 1 {
            shared.warming_up.store(false, Ordering::Relaxed);
        }
        let start = clock::now_ns() + PHASE_LEAD_NS;
        shared.phase_start_ns[phase].store(start, Ordering::Release);
    }
    loop {
        let start = shared.phase_start_ns[phase].load(Ordering::Acquire);
        if start != 0 {
            sleep_until(start).await;
            return (start, shared.phase_base[phase].load(Ordering::Acquire));
        }
        glommio::timer::sleep(Duration::from_micros(200)).await;
    }
}

/// How far ahead of "now" the last core at a barrier puts the phase start: longer than the
/// other cores' polling period, so all start together.
const PHASE_LEAD_NS: u64 = 2_000_000;

/// Sleeps until `deadline_ns` on the run clock (absolute: time spent before the call counts).
async fn sleep_until(deadline_ns: u64) {
    let now_ns = clock::now_ns();
    if deadline_ns > now_ns {
        glommio::timer::sleep(Duration::from_nanos(deadline_ns - now_ns)).await;
    }
}

/// Runs one phase on this core: draws starts from the schedule and spawns a task per
/// conversation, then waits for all of them.
async fn drive(core: &Rc<Core>, phase: &Phase, start_ns: u64, base: u64) {
    let shared = &core.shared;
    let load = &phase.load;
    let (index, cores) = (core.index, core.cores);
    let slots = load.shape.cap().map(|cap| split_slots(cap, cores)[index]);
    let mut schedule: Box<dyn Schedule> = match &load.shape {
        Shape::Closed { .. } => {
            Box::new(ClosedLoop::new(shared.claims[phase.id].clone(), load.limit))
        }
        Shape::Rate { spec, .. } => Box::new(OpenLoop::new(
            *spec,
            // Warmup draws from another stream than the measured phase.
            shared.config.seed ^ (phase.id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            start_ns,
            load.limit,
            index,
            cores,
        )),
        Shape::Fixed { schedule, .. } => Box::new(Fixed::new(
            Arc::new(schedule.entries.iter().map(|e| e.offset_ns).collect()),
            start_ns,
            index,
            cores,
        )),
    };
    let soft_end_ns = load.duration_ns.map(|d| start_ns + d);
    let hard_end_ns = soft_end_ns.and_then(|s| load.grace_ns.map(|g| s + g));
    // Slots: permits for conversations in flight on this core (none: unbounded).
    let permits = slots.map(|n| {
        let ramped = matches!(
            load.shape,
            Shape::Closed {
                ramp_up_ns: Some(_),
                ..
            }
        );
        Rc::new(Semaphore::new(if ramped { 0 } else { n as u64 }))
    });
    // Closed-loop ramp-up: this core's k-th slot is the run's slot k·cores + index, opened at
    // its share of the ramp.
    let _ramp = match (&load.shape, &permits, slots) {
        (
            Shape::Closed {
                concurrency,
                ramp_up_ns: Some(ramp_ns),
            },
            Some(sem),
            Some(n),
        ) => {
            let (sem, total, ramp_ns) = (sem.clone(), *concurrency as u64, *ramp_ns);
            Some(glommio::spawn_local(async move {
                for k in 0..n as u64 {
                    let slot = k * cores as u64 + index as u64;
                    sleep_until(start_ns + ramp_ns * slot / total).await;
                    sem.signal(1);
                }
            }))
        }
        _ => None,
    };
    let finished = Rc::new(Semaphore::new(0));
    let mut spawned = 0u64;
    loop {
        if core.stopping() {
            break;
        }
        // `ready_ns`: when the conversation could be sent, for the send-lag figure: its intended
        // start, or when a slot freed if it had to wait for one.
        let (arrival, permit, intended_ns, ready_ns) = if schedule.slot_driven() {
            let permit = match &permits {
                Some(p) => match unless_stopped(&core.stop, p.acquire_static_permit(1)).await {
                    Some(permit) => Some(permit.expect("never closed")),
                    None => break,
                },
                None => None,
            };
            let now = clock::now_ns();
            if soft_end_ns.is_some_and(|end| now >= end) || core.stopping() {
                break;
            }
            let Some(arrival) = schedule.next() else {
                break;
            };
            (arrival, permit, now, now)
        } else {
            let Some(arrival) = schedule.next() else {
                break;
            };
            let at_ns = arrival.at_ns.expect("open schedules give times");
            if soft_end_ns.is_some_and(|end| at_ns >= end) {
                break;
            }
            if unless_stopped(&core.stop, sleep_until(at_ns))
                .await
                .is_none()
            {
                break;
            }
            let (permit, ready_ns) = match &permits {
                Some(p) => match p.try_acquire_static_permit(1) {
                    Ok(permit) => {
                        phase.recorder.borrow_mut().record_cap_wait(0);
                        (Some(permit), at_ns)
                    }
                    Err(_) => {
                        let Some(permit) =
                            unless_stopped(&core.stop, p.acquire_static_permit(1)).await
                        else {
                            break;
                        };
                        let permit = permit.expect("never closed");
                        let now = clock::now_ns();
                        phase
                            .recorder
                            .borrow_mut()
                            .record_cap_wait(now.saturating_sub(at_ns));
                        (Some(permit), now)
                    }
                },
                None => (None, at_ns),
            };
            (arrival, permit, at_ns, ready_ns)
        };
        let progress = core.progress();
        if phase.measured() {
            progress.started.fetch_add(1, Ordering::Relaxed);
            progress.in_flight.fetch_add(1, Ordering::Relaxed);
        } else {
            progress.warmup_started.fetch_add(1, Ordering::Relaxed);
        }
        spawned += 1;
        let task = Task {
            core: core.clone(),
            shape: load.shape.clone(),
            phase_start_ns: start_ns,
            recorder: phase.recorder.clone(),
            measured: phase.measured(),
            seq: base + arrival.seq,
            intended_ns,
            ready_ns,
            hard_end_ns,
        };
        glommio::spawn_local(conversation_task(task, permit, finished.clone())).detach();
    }
    if spawned > 0 {
        finished.acquire(spawned).await.expect("never closed");
    }
}

/// The task spawned per conversation: runs it, then frees its slot and counts it finished.
///
/// Every stream holds one for its whole life, so its size is per-stream memory (≈ 1.9 KiB:
/// [`Task::run`]'s state, mostly the request's). glommio stores a task's future inline below
/// 2,048 bytes and in a second allocation from there on. Not an `async fn`: that would keep
/// its arguments twice (as arguments and as the body's bindings).
#[allow(clippy::manual_async_fn)] // deliberately not an `async fn`: see above
fn conversation_task(
    task: Task,
    permit: Option<StaticPermit>,
    finished: Rc<Semaphore>,
) -> impl std::future::Future<Output = ()> {
    async move {
        task.run().await;
        drop(permit);
        finished.signal(1);
    }
}

/// glommio 0.9 (`task_impl::spawn_local`) boxes a future of this many bytes or more.
#[cfg(test)]
const GLOMMIO_BOXES_FROM: usize = 2048;

/// How a conversation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Completed,
    Abandoned,
    Interrupted,
    /// Cut off at the hard end of the phase (`--duration` + `--duration-grace`).
    Cancelled,
}

/// One conversation, as a task.
struct Task {
    core: Rc<Core>,
    shape: Shape,
    phase_start_ns: u64,
    recorder: Rc<RefCell<Recorder>>,
    measured: bool,
    /// Sequence number in the run (names the conversation on the wire, picks its pool entry and
    /// its endpoint).
    seq: u64,
    /// When the conversation was meant to start (closed loop: when its slot freed).
    intended_ns: u64,
    /// When it could be sent: `intended_ns`, or later if it waited for a slot.
    ready_ns: u64,
    hard_end_ns: Option<u64>,
}

impl Task {
    /// Borrows the task rather than taking it: the spawned block owns it, and an `async fn`
    /// taking `self` by value would keep two more copies in its own state (the argument and its
    /// binding), 288 bytes per stream.
    async fn run(&self) {
        let core = &self.core;
        let shared = &core.shared;
        let url = (self.seq % shared.endpoints.len() as u64) as usize;
        let (pool_index, conv) = core.conversation(&self.shape, self.seq);
        let mut state = core.take_state();
        let mut conn = core.take_conn(url);
        self.recorder
            .borrow_mut()
            .record_conversation_start(clock::now_ns());
        let walk = self.walk(conv, pool_index, url, &mut conn, &mut state);
        // Cut off at the hard end of the phase, or when a signal's grace has run out.
        let hard_end_ns = self.hard_end_ns;
        let cancel = &core.stop.cancel;
        let cut = async move {
            match hard_end_ns {
                Some(end_ns) => futures_lite::future::or(sleep_until(end_ns), closed(cancel)).await,
                None => closed(cancel).await,
            }
            Ending::Cancelled
        };
        let ending = futures_lite::future::or(walk, cut).await;
        {
            let mut rec = self.recorder.borrow_mut();
            match ending {
                Ending::Completed => rec.conversations_completed += 1,
                Ending::Abandoned => rec.conversations_abandoned += 1,
                Ending::Interrupted => rec.conversations_interrupted += 1,
                Ending::Cancelled => {
                    rec.conversations_cancelled += 1;
                    if state.in_flight {
                        rec.requests_cancelled += 1;
                    }
                }
            }
        }
        if self.measured {
            let progress = core.progress();
            progress.in_flight.fetch_sub(1, Ordering::Relaxed);
            if ending == Ending::Completed {
                progress.completed.fetch_add(1, Ordering::Relaxed);
            }
        }
        if ending == Ending::Cancelled {
            if let (true, Some(at)) = (state.in_flight, state.sending) {
                core.record(Request {
                    at,
                    start_ns: None,
                    send_ns: None,
                    first_token_ns: None,
                    end_ns: clock::now_ns(),
                    itl_ns: &mut [],
                    tokens: Tokens::default(),
                    status: Status::Cancelled,
                });
            }
            // A request was dropped mid-response: the connection is out of step.
            conn = None;
            state.in_flight = false;
        }
        state.sending = None;
        if let Some(c) = conn {
            core.idle.borrow_mut()[url].push(c);
        }
        core.states.borrow_mut().push(state);
    }

    /// Walks the conversation turn by turn.
    async fn walk(
        &self,
        conv: &Conversation,
        pool_index: usize,
        url: usize,
        conn: &mut Option<Connection>,
        state: &mut SlotState,
    ) -> Ending {
        let core = &self.core;
        let endpoint = &core.shared.endpoints[url];
        let progress = core.progress();
        let SlotState {
            scratch,
            history,
            in_flight,
            sending,
        } = state;
        let mut cursor = Cursor::new(conv, history);
        let mut accounting = Accounting::default();
        let mut trace = TraceAcc::default();
        // When the turn was meant to be sent: the conversation's intended start for the first;
        // the previous reply's last byte plus the turn's delay after that.
        let mut intended_ns = self.intended_ns;
        let mut ready_ns = self.ready_ns;
        let mut prev_end_ns = intended_ns;
        while let Some((k, turn)) = cursor.advance() {
            if k > 0 {
                if signal::interrupted() {
                    return Ending::Interrupted;
                }
                intended_ns = match &self.shape {
                    // A recorded send time, but never before the previous reply has ended.
                    Shape::Fixed { schedule, .. } => match schedule.turn_offset_ns(turn) {
                        Some(offset_ns) => (self.phase_start_ns + offset_ns).max(prev_end_ns),
                        None => prev_end_ns + turn.delay_ns,
                    },
                    _ => prev_end_ns + turn.delay_ns,
                };
                ready_ns = intended_ns;
                // A signal ends think time at once: no new turn is sent after it.
                if unless_stopped(&core.stop, sleep_until(intended_ns))
                    .await
                    .is_none()
                {
                    return Ending::Interrupted;
                }
            }
            let mut at = Attempt {
                measured: self.measured,
                conversation: self.seq,
                pool_index,
                turn: k as u32,
                attempt: 0,
                url,
                intended_ns,
            };
            // Send lag is measured from when the client could send: connection setup is the
            // network's time, and waiting for the end of the previous response after its last
            // event is the server's.
            let (c, opened) = match self.connect(conn, at).await {
                Ok(pair) => pair,
                Err(()) => return Ending::Abandoned,
            };
            ready_ns = if opened {
                ready_ns.max(clock::now_ns())
            } else {
                ready_ns.max(c.last_read_ns())
            };
            // The signal may have come while connecting, or just before a conversation's first
            // turn.
            if signal::interrupted() {
                return Ending::Interrupted;
            }
            *in_flight = true;
            *sending = Some(at);
            let mut sent = client::send_turn(
                c,
                endpoint,
                cursor.body(&core.shared.body, turn),
                self.seq,
                k as u32,
                scratch,
            )
            .await;
            let mut attempts_429 = 0;
            // A reused keep-alive connection the server closed before any byte of the response
            // (the close crossed our request): the server never answered, so send it once more
            // on a fresh connection. After a response byte, a retry could run a request twice.
            // And a 429, when --retry-429 asks, after its Retry-After.
            loop {
                let retry = match &sent {
                    Err(f) if f.kind == FailureKind::Io && f.before_response && !opened => {
                        Some(Duration::ZERO)
                    }
                    Err(f)
                        if f.kind == FailureKind::HttpStatus(429)
                            && core.shared.config.retry_429
                            && attempts_429 < RETRIES_429 =>
                    {
                        attempts_429 += 1;
                        Some(Duration::from_secs(
                            f.retry_after_s.unwrap_or(1).min(RETRY_AFTER_MAX_S),
                        ))
                    }
                    _ => None,
                };
                let Some(wait) = retry else { break };
                if let Err(f) = &sent {
                    core.record(at.timed(
                        &f.timing,
                        &mut scratch.itl_ns,
                        Tokens::of_failure(
                            f.timing.usage,
                            cursor.estimated_prompt(),
                            f.timing.output_chunks,
                        ),
                        Status::Retried {
                            kind: f.kind,
                            message: f.message.as_deref(),
                        },
                    ));
                }
                at.attempt += 1;
                *sending = Some(at);
                if matches!(&sent, Err(f) if f.kind == FailureKind::Io) {
                    *conn = None;
                }
                self.recorder.borrow_mut().requests_retried += 1;
                if !wait.is_zero() {
                    glommio::timer::sleep(wait).await;
                }
                let c = match self.connect(conn, at).await {
                    Ok((c, _)) => c,
                    Err(()) => {
                        *in_flight = false;
                        return Ending::Abandoned;
                    }
                };
                sent = client::send_turn(
                    c,
                    endpoint,
                    cursor.body(&core.shared.body, turn),
                    self.seq,
                    k as u32,
                    scratch,
                )
                .await;
                if matches!(&sent, Err(f) if f.kind == FailureKind::Io) {
                    // A second close on a fresh connection is a real failure.
                    break;
                }
            }
            *in_flight = false;
            let timing = match &sent {
                Ok(timing) => timing,
                Err(failure) => &failure.timing,
            };
            {
                let mut rec = self.recorder.borrow_mut();
                if let Some(written_ns) = timing.first_write_ns {
                    rec.record_send_lag(ready_ns, written_ns);
                }
                rec.record_schedule_lag(intended_ns, timing.start_ns);
            }
            prev_end_ns = timing.end_ns;
            match sent {
                Ok(timing) => {
                    let tokens = accounting.on_success(
                        timing.usage,
                        cursor.estimated_prompt(),
                        timing.output_chunks,
                    );
                    self.recorder.borrow_mut().record_success(Success {
                        timing: &timing,
                        intended_ns,
                        itl_ns: &scratch.itl_ns,
                        turn: k as u32,
                        url,
                        prompt_tokens: tokens.prompt,
                        completion_tokens: tokens.completion,
                        tokens_from_usage: tokens.from_usage,
                        cached_tokens: tokens.cached,
                        cache_source: tokens.cache_source,
                    });
                    if self.measured {
                        progress.succeeded.fetch_add(1, Ordering::Relaxed);
                        progress.live.on_success(
                            timing
                                .first_output_ns
                                .map(|f| f.saturating_sub(timing.start_ns) / 1_000),
                            tokens.completion,
                        );
                    }
                    trace.on_turn(TurnFacts {
                        start_ns: timing.start_ns,
                        first_output_ns: timing.first_output_ns,
                        end_ns: timing.end_ns,
                        prompt_tokens: tokens.prompt,
                        cached_tokens: tokens.cached,
                        completion_tokens: tokens.completion,
                    });
                    core.record(at.timed(
                        &timing,
                        &mut scratch.itl_ns,
                        Tokens {
                            prompt: Some(tokens.prompt),
                            cached: Some(tokens.cached),
                            output: Some(tokens.completion),
                            from_usage: tokens.from_usage,
                        },
                        Status::Ok,
                    ));
                    cursor.on_reply(turn, tokens.completion, &scratch.reply);
                }
                Err(failure) => {
                    core.record(at.timed(
                        &failure.timing,
                        &mut scratch.itl_ns,
                        Tokens::of_failure(
                            failure.timing.usage,
                            cursor.estimated_prompt(),
                            failure.timing.output_chunks,
                        ),
                        Status::Failed {
                            kind: failure.kind,
                            message: failure.message.as_deref(),
                        },
                    ));
                    {
                        let mut rec = self.recorder.borrow_mut();
                        rec.record_failure(&failure.timing, failure.kind, url);
                        if let Some(message) = &failure.message {
                            rec.record_failure_message(failure.kind, message);
                        }
                    }
                    if self.measured {
                        progress.failed.fetch_add(1, Ordering::Relaxed);
                        progress.live.on_failure(failure.kind);
                    }
                    // After a clean error status the connection is still in sync; after
                    // anything else its state is unknown, so the next conversation opens a
                    // fresh one.
                    if !matches!(failure.kind, FailureKind::HttpStatus(_)) {
                        *conn = None;
                    }
                    return Ending::Abandoned;
                }
            }
        }
        // Only completed conversations are traces (evalscope also keeps the turns a failed
        // conversation got before it failed; see docs/metrics.md).
        self.recorder.borrow_mut().traces.record(&trace);
        Ending::Completed
    }
}

/// How often one request is retried after a 429 (`--retry-429`), and the longest Retry-After
/// honoured (a server asking for more gets this).
const RETRIES_429: u32 = 3;
const RETRY_AFTER_MAX_S: u64 = 60;

impl Task {
    /// The conversation's connection, opened if needed (`true`: just opened). A failed connect
    /// is recorded as the turn's failure (`Err`: the conversation is abandoned).
    async fn connect<'a>(
        &self,
        conn: &'a mut Option<Connection>,
        at: Attempt,
    ) -> Result<(&'a mut Connection, bool), ()> {
        let core = &self.core;
        let url = at.url;
        let endpoint = &core.shared.endpoints[url];
        match ensure_connection(conn, endpoint, core.read_buf, core.tls[url].as_ref()).await {
            Ok((c, opened)) => {
                if opened {
                    core.note_connect(true);
                }
                Ok((c, opened))
            }
            Err(client::ConnectError { kind, message }) => {
                core.note_connect(false);
                let now = clock::now_ns();
                let timing = TurnTiming {
                    start_ns: now,
                    end_ns: now,
                    ..TurnTiming::default()
                };
                {
                    let mut rec = self.recorder.borrow_mut();
                    rec.record_failure(&timing, kind, url);
                    if let Some(m) = &message {
                        rec.record_failure_message(kind, m);
                    }
                }
                core.record(at.timed(
                    &timing,
                    &mut [],
                    Tokens::default(),
                    Status::Failed {
                        kind,
                        message: message.as_deref(),
                    },
                ));
                if self.measured {
                    let progress = core.progress();
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                    progress.live.on_failure(kind);
                }
                Err(())
            }
        }
    }
}

/// The connection, opened (or reopened) if needed; `true` when it was just opened.
async fn ensure_connection<'a>(
    conn: &'a mut Option<Connection>,
    endpoint: &crate::client::Endpoint,
    read_buf: Option<usize>,
    tls: Option<&crate::tls::TlsConnector>,
) -> Result<(&'a mut Connection, bool), client::ConnectError> {
    if let Some(c) = conn.as_mut() {
        if !c.ready().await {
            *conn = None;
        }
    }
    let opened = conn.is_none();
    if opened {
        // Boxed (one allocation per connection opened): inline, opening's state (connect,
        // TLS, hyper's handshake) would be part of every conversation's task for its whole
        // life, past glommio's inline task size (`GLOMMIO_BOXES_FROM`).
        *conn = Some(Box::pin(Connection::open(endpoint, read_buf, tls)).await?);
    }
    Ok((conn.as_mut().expect("set above"), opened))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn returned_size<A, B, C, R>(_f: fn(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn a_conversation_task_fits_glommios_inline_task() {
        // Was 2,816 bytes (boxed by glommio: 2,872 per stream in two allocations) while
        // `Task::run` took `self` by value and `client::with_timeouts` was an `async fn`: both
        // kept copies of their arguments in their state. Growing past the limit costs every
        // stream the growth plus a second allocation; docs/performance.md, "10k idle streams".
        let size = returned_size(conversation_task);
        assert!(
            size < GLOMMIO_BOXES_FROM,
            "the per-conversation task is {size} bytes, glommio boxes it from {GLOMMIO_BOXES_FROM}"
        );
    }
}
