//! The engine: one pinned glommio executor per core, each owning a disjoint share of the run's
//! conversations, its own connections and its own [`Recorder`].
//!
//! A run is one or two phases (an optional warmup, then the measured phase). In each phase every
//! core follows its [`schedule::Schedule`] — closed loop, open loop or fixed — starting each
//! conversation as a task that walks it turn by turn ([`cursor`], [`accounting`]) over a pooled
//! keep-alive connection. The cores share only read-only data, the closed-loop claim counter,
//! their progress counters and a barrier between phases; each returns its recorders from `join()`
//! and they are merged once at the end.

pub mod accounting;
pub mod cursor;
pub mod progress;
pub mod schedule;
mod shard;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::utils::CachePadded;
use glommio::{LocalExecutorBuilder, Placement};

use crate::client::Endpoint;
use crate::metrics::Recorder;
use crate::workload::fixed::FixedSchedule;
use crate::workload::sampling::Sampler;
use crate::workload::Conversation;

pub use cursor::{
    assemble_body, completions_delta, convert_to_completions, BodyShape, EndpointKind,
};
pub use schedule::{ArrivalMode, RampStrategy, RateRamp, RateSpec};

/// How conversations start in one phase.
#[derive(Clone, Debug)]
pub enum Shape {
    /// `concurrency` conversations in flight; the next starts when one ends.
    Closed {
        concurrency: usize,
        /// Slot starts spread evenly over this time (`--ramp-up-duration`).
        ramp_up_ns: Option<u64>,
    },
    /// Arrivals at a rate; `cap` (`--parallel` given with a rate) bounds conversations in
    /// flight: arrivals that find it full wait for a slot.
    Rate { spec: RateSpec, cap: Option<usize> },
    /// Recorded send times (`--fixed-schedule`): conversation `seq` is the schedule's entry
    /// `seq`, its first turn at that entry's offset from the phase start, a later turn at its
    /// own recorded offset or when the previous reply ends, whichever is later.
    Fixed {
        schedule: Arc<FixedSchedule>,
        cap: Option<usize>,
    },
}

impl Shape {
    /// Conversations in flight at most, when bounded.
    pub fn cap(&self) -> Option<usize> {
        match self {
            Shape::Closed { concurrency, .. } => Some(*concurrency),
            Shape::Rate { cap, .. } | Shape::Fixed { cap, .. } => *cap,
        }
    }
}

/// One phase's load: its shape and when it stops starting conversations.
#[derive(Clone, Debug)]
pub struct Load {
    pub shape: Shape,
    /// Conversations to start in total (`None`: until `duration_ns`).
    pub limit: Option<u64>,
    /// Soft end: no conversation starts after this long from the phase start; in-flight ones
    /// run every remaining turn.
    pub duration_ns: Option<u64>,
    /// Hard end after the soft one: in-flight requests are cancelled this long after
    /// `duration_ns` and counted as `cancelled`.
    pub grace_ns: Option<u64>,
}

/// Where and how wide to run.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// CPU ids to pin one executor each to.
    pub cpus: Vec<usize>,
    /// Executors spin instead of parking when idle (`--spin`).
    pub spin: bool,
    /// The warmup phase, if any: run first, excluded from every figure.
    pub warmup: Option<Load>,
    pub load: Load,
    /// Open every slot's connection before the first phase starts.
    pub preconnect: bool,
    /// Seed of the open-loop arrival process.
    pub seed: u64,
    /// Retry 429s after their Retry-After (`--retry-429`).
    pub retry_429: bool,
    /// Stop the run after this many failed connects in a row on one core (0: never; `None`:
    /// [`DEFAULT_MAX_CONNECT_FAILURES`] or the core's slots, whichever is larger).
    pub max_consecutive_connect_failures: Option<u64>,
    /// After a signal: how long requests in flight may finish before they are cancelled
    /// (`--grace`).
    pub interrupt_grace_ns: u64,
    /// `--goodput`: each core counts the successes that meet these limits.
    pub goodput: Option<crate::metrics::GoodputLimits>,
}

/// Failed connects in a row on one core that stop the run, unless the core has more slots.
pub const DEFAULT_MAX_CONNECT_FAILURES: u64 = 100;

/// How long an idle `--spin` executor polls before parking. Longer than any gap between events
/// of a loaded run, so a busy executor never parks. Not unbounded: with an unbounded spin, one of
/// six paced runs (512 × 10 ms) had a request stall ≈ 147 s until its read-timeout watchdog
/// timer (600 s / 4) fired — a wake-up glommio's spin loop missed and the next timer recovered.
/// Parking after this much idleness caps such a stall at this bound. (Cause not established.)
const SPIN_BEFORE_PARK: Duration = Duration::from_millis(10);

/// Marks its core done when the executor's thread unwinds from a panic, so the run's wait for
/// every core ends and the join reports the panic as an error instead of waiting forever.
struct DoneIfPanicking(Arc<Shared>, usize);

impl Drop for DoneIfPanicking {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.progress[self.1].done.store(true, Ordering::Release);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot start an executor on CPU {cpu}: {reason}")]
    Executor { cpu: usize, reason: String },
    #[error("the executor on CPU {cpu} stopped before its share of the run ended ({reason}); this is a bug in parley, the panic message above says where")]
    Stopped { cpu: usize, reason: String },
}

/// Slots per core: `concurrency` split as evenly as possible, earlier cores taking the remainder.
pub fn split_slots(concurrency: usize, cores: usize) -> Vec<usize> {
    (0..cores)
        .map(|i| concurrency / cores + usize::from(i < concurrency % cores))
        .collect()
}

/// Cores a phase runs on: with a cap below the core count, only as many cores as slots.
fn active_cores(config: &EngineConfig) -> usize {
    let cores = config.cpus.len();
    let caps = [
        config.load.shape.cap(),
        config.warmup.as_ref().and_then(|w| w.shape.cap()),
    ];
    caps.iter()
        .flatten()
        .fold(cores, |n, &cap| n.min(cap.max(1)))
}

/// A progress snapshot for the console (measured phase only).
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Still in the warmup phase.
    pub warming_up: bool,
    pub started: u64,
    pub limit: Option<u64>,
    pub succeeded: u64,
    pub failed: u64,
    pub completed: u64,
    pub in_flight: u64,
    /// Σ output tokens of successful requests.
    pub output_tokens: u64,
    /// Failures by [`progress::FAILURE_SLOTS`].
    pub failures: [u64; progress::FAILURE_SLOTS.len()],
    /// Successful requests by TTFT bucket ([`progress::ttft_bucket`]).
    pub ttft: [u64; progress::TTFT_BUCKETS],
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            warming_up: false,
            started: 0,
            limit: None,
            succeeded: 0,
            failed: 0,
            completed: 0,
            in_flight: 0,
            output_tokens: 0,
            failures: [0; progress::FAILURE_SLOTS.len()],
            ttft: [0; progress::TTFT_BUCKETS],
        }
    }
}

/// Written only by its own core; read by the progress printer and the phase barrier.
#[derive(Default)]
pub(crate) struct CoreProgress {
    pub started: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub completed: AtomicU64,
    pub in_flight: AtomicU64,
    /// Conversations this core started in the warmup phase (the measured sequence continues
    /// after the warmup's).
    pub warmup_started: AtomicU64,
    pub done: AtomicBool,
    pub live: progress::LiveCounters,
}

/// Everything the executors share: read-only except the claim counters, the progress counters
/// and the phase barrier.
pub struct Shared {
    /// One per `--url`; conversation `seq` goes to `endpoints[seq % len]`.
    pub endpoints: Vec<Endpoint>,
    pub body: BodyShape,
    pub conversations: Arc<Vec<Conversation>>,
    /// Picks the pool entry of each sequence number (`--dataset-sampling-strategy`); each core
    /// works on its own copy.
    pub sampler: Sampler,
    config: EngineConfig,
    /// Closed-loop claim counters, one per phase.
    claims: [Arc<AtomicU64>; 2],
    /// Cores that reached the barrier before each phase.
    arrived: [AtomicUsize; 2],
    /// Start of each phase (ns), published by the last core at its barrier; 0 before.
    phase_start_ns: [AtomicU64; 2],
    /// Sequence number of each phase's first conversation.
    phase_base: [AtomicU64; 2],
    warming_up: AtomicBool,
    progress: Vec<CachePadded<CoreProgress>>,
    /// Set by the first core that sees `max_consecutive_connect_failures` connects fail in a
    /// row; every core stops starting conversations when it sees it.
    halted: AtomicBool,
    /// Where each core hands its per-request records (`None`: `--no-records`).
    records: Option<crate::records::RecordsChannel>,
}

impl Shared {
    pub fn new(
        endpoints: Vec<Endpoint>,
        body: BodyShape,
        conversations: Arc<Vec<Conversation>>,
        sampler: Sampler,
        config: EngineConfig,
    ) -> Shared {
        assert!(!endpoints.is_empty(), "at least one endpoint");
        assert_eq!(
            sampler.len(),
            conversations.len(),
            "the sampler covers the pool"
        );
        let cores = config.cpus.len();
        Shared {
            endpoints,
            body,
            conversations,
            sampler,
            warming_up: AtomicBool::new(config.warmup.is_some()),
            config,
            claims: [Arc::default(), Arc::default()],
            arrived: Default::default(),
            phase_start_ns: Default::default(),
            phase_base: Default::default(),
            progress: (0..cores)
                .map(|_| CachePadded::new(CoreProgress::default()))
                .collect(),
            halted: AtomicBool::new(false),
            records: None,
        }
    }

    /// Every request attempt is written to `channel`'s `records.jsonl`.
    pub fn with_records(mut self, channel: crate::records::RecordsChannel) -> Shared {
        self.records = Some(channel);
        self
    }

    /// The run was stopped because the target could not be reached.
    pub(crate) fn halted(&self) -> bool {
        self.halted.load(Ordering::Relaxed)
    }

    pub fn progress(&self) -> Progress {
        let mut p = Progress {
            warming_up: self.warming_up.load(Ordering::Relaxed),
            limit: self.config.load.limit,
            ..Progress::default()
        };
        for c in &self.progress {
            p.started += c.started.load(Ordering::Relaxed);
            p.succeeded += c.succeeded.load(Ordering::Relaxed);
            p.failed += c.failed.load(Ordering::Relaxed);
            p.completed += c.completed.load(Ordering::Relaxed);
            p.in_flight += c.in_flight.load(Ordering::Relaxed);
            c.live.add_to(&mut p);
        }
        p
    }

    fn all_done(&self) -> bool {
        self.progress.iter().all(|c| c.done.load(Ordering::Acquire))
    }
}

/// What the engine measured: the measured phase's recorder and the warmup's, if one ran.
pub struct Measured {
    pub recorder: Recorder,
    pub warmup: Option<Recorder>,
    /// Why the run stopped before its end, when it did (the target could not be reached).
    pub halted: Option<String>,
}

/// Runs the benchmark to completion (or interrupt) and returns the merged recorders.
/// `on_tick` is called about every 200 ms on the calling thread while the run is hot.
pub fn run(shared: Shared, mut on_tick: impl FnMut(Progress)) -> Result<Measured, EngineError> {
    let shared = Arc::new(shared);
    let config = shared.config.clone();
    let active = active_cores(&config);
    let mut handles = Vec::new();
    for (core, &cpu) in config.cpus.iter().enumerate() {
        if core >= active {
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
            .spawn(move || async move {
                let _mark = DoneIfPanicking(shared.clone(), core);
                shard::run(shared, core, active, spin).await
            })
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
    let mut recorder = Recorder::new();
    let mut warmup: Option<Recorder> = None;
    for (cpu, h) in handles {
        let out = h.join().map_err(|e| EngineError::Stopped {
            cpu,
            reason: e.to_string(),
        })?;
        recorder.merge(&out.recorder);
        if let Some(w) = out.warmup {
            warmup.get_or_insert_with(Recorder::new).merge(&w);
        }
    }
    let halted = shared.halted().then(|| {
        "stopped early: connection attempts kept failing, none succeeding (the target is down \
         or unreachable); see --max-consecutive-connect-failures"
            .to_owned()
    });
    Ok(Measured {
        recorder,
        warmup,
        halted,
    })
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
    fn a_small_cap_uses_fewer_cores() {
        let load = |cap| Load {
            shape: Shape::Rate {
                spec: RateSpec {
                    per_s: 1.0,
                    mode: ArrivalMode::Poisson,
                    burstiness: 1.0,
                    ramp: None,
                },
                cap,
            },
            limit: Some(1),
            duration_ns: None,
            grace_ns: None,
        };
        let config = |cap| EngineConfig {
            cpus: vec![0, 1, 2, 3],
            spin: false,
            warmup: None,
            load: load(cap),
            preconnect: true,
            seed: 0,
            retry_429: false,
            max_consecutive_connect_failures: None,
            interrupt_grace_ns: 0,
            goodput: None,
        };
        assert_eq!(active_cores(&config(Some(2))), 2);
        assert_eq!(active_cores(&config(None)), 4);
        assert_eq!(active_cores(&config(Some(9))), 4);
    }
}
