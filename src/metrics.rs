//! Per-core recording of request outcomes, merged once after the executors join.
//!
//! A [`Recorder`] lives on one executor and is only touched by that executor's tasks, so recording
//! is plain arithmetic on owned data: no atomics, no locks. Its memory is fixed at creation (HDR
//! histograms with a fixed range; counters), so nothing grows with the number of requests.
//! Durations are recorded in microseconds, 1 µs to 1 h, 3 significant digits; means come from
//! exact sums kept beside the histograms.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use crate::client::{FailureKind, TurnTiming};
use crate::timeline::Timeline;
use crate::trace::TraceStats;
use crate::turns::{ByTurn, TurnSample};

const SIGFIG: u8 = 3;
const MAX_US: u64 = 3_600_000_000;
const MAX_TOKENS: u64 = 100_000_000;
const MAX_NS: u64 = MAX_US * 1_000;
/// Rates in milli-tokens/s, up to 10⁹ tokens/s.
const MAX_MILLI_TPS: u64 = 1_000_000_000_000;

/// A histogram with an exact sum and sum of squares beside it (HDR means are bucket-rounded).
#[derive(Clone, Debug)]
pub struct Dist {
    pub hist: Histogram<u64>,
    pub sum: u128,
    pub sum_sq: u128,
}

impl Dist {
    pub(crate) fn new(max: u64) -> Dist {
        Dist::with_sigfig(max, SIGFIG)
    }

    /// Fewer significant digits cost less memory (2: ≈ 25 KiB for 1 µs–1 h instead of ≈ 180);
    /// for figures kept many times over, such as one per turn index.
    pub(crate) fn with_sigfig(max: u64, sigfig: u8) -> Dist {
        Dist {
            hist: Histogram::new_with_bounds(1, max, sigfig).expect("valid histogram bounds"),
            sum: 0,
            sum_sq: 0,
        }
    }

    #[inline]
    pub fn record(&mut self, value: u64) {
        // Durations below the unit count as one unit in the histogram (the sums stay exact);
        // values beyond the range are clamped rather than dropped, so counts stay exact.
        self.hist.saturating_record(value.max(1));
        self.add_sums(value);
    }

    /// Records a value for which 0 is a real figure (a 0 % cache hit rate), not a duration
    /// below the unit.
    #[inline]
    pub fn record_zero_ok(&mut self, value: u64) {
        self.hist.saturating_record(value);
        self.add_sums(value);
    }

    #[inline]
    fn add_sums(&mut self, value: u64) {
        self.sum += value as u128;
        self.sum_sq += value as u128 * value as u128;
    }

    /// Population standard deviation from the exact sums.
    pub fn std(&self) -> Option<f64> {
        let n = self.count();
        (n > 0).then(|| {
            let mean = self.sum as f64 / n as f64;
            (self.sum_sq as f64 / n as f64 - mean * mean)
                .max(0.0)
                .sqrt()
        })
    }

    pub fn min(&self) -> Option<u64> {
        (self.count() > 0).then(|| self.hist.min())
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    pub fn mean(&self) -> Option<f64> {
        let n = self.count();
        (n > 0).then(|| self.sum as f64 / n as f64)
    }

    /// Nearest-rank percentile (HDR's highest equivalent value at the quantile).
    pub fn quantile(&self, q: f64) -> Option<u64> {
        (self.count() > 0).then(|| self.hist.value_at_quantile(q))
    }

    pub fn max(&self) -> Option<u64> {
        (self.count() > 0).then(|| self.hist.max())
    }

    pub(crate) fn merge(&mut self, other: &Dist) {
        self.hist
            .add(&other.hist)
            .expect("same bounds on every core");
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
    }
}

/// Distinct messages kept per failure class (`requests.failure_messages`).
pub const MESSAGES_PER_CLASS: usize = 3;

/// Longest failure message kept, in characters (longer ones end in `…`).
pub const MESSAGE_MAX_CHARS: usize = 300;

/// A failure message as reports show it: whitespace runs (newlines of an HTML error page, say)
/// made single spaces, cut to [`MESSAGE_MAX_CHARS`].
pub fn clean_message(message: &str) -> String {
    let mut out = String::new();
    for (i, word) in message.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
    }
    if let Some((cut, _)) = out.char_indices().nth(MESSAGE_MAX_CHARS) {
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// Adds `message` to `kept` unless it is already there or `kept` is full.
fn keep_message(kept: &mut Vec<String>, message: String) {
    if kept.len() < MESSAGES_PER_CLASS && !kept.contains(&message) {
        kept.push(message);
    }
}

/// `--goodput`: the limits a successful request must all meet to count as good, in ns (`None`:
/// no limit on that figure). Decided on the request's own core when it ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct GoodputLimits {
    /// Time to first token.
    pub ttft_ns: Option<u64>,
    /// (end − first output) / (completion tokens − 1). A request with one token or none has
    /// no TPOT and meets this limit (vLLM's rule).
    pub tpot_ns: Option<u64>,
    /// The request's mean gap between output-bearing events. With fewer than two events it has
    /// none and meets this limit.
    pub itl_ns: Option<u64>,
    /// End-to-end latency.
    pub e2el_ns: Option<u64>,
}

impl GoodputLimits {
    /// Whether a request with these figures (ns) meets every limit.
    pub fn is_good(
        &self,
        ttft_ns: Option<u64>,
        tpot_ns: Option<u64>,
        itl_ns: Option<u64>,
        e2el_ns: u64,
    ) -> bool {
        // A missing TTFT fails a TTFT limit (it cannot be shown to meet it); a missing TPOT or
        // ITL means there was no decode gap to judge.
        let within = |limit: Option<u64>, value: Option<u64>, missing_ok: bool| match (limit, value)
        {
            (None, _) => true,
            (Some(l), Some(v)) => v <= l,
            (Some(_), None) => missing_ok,
        };
        within(self.ttft_ns, ttft_ns, false)
            && within(self.tpot_ns, tpot_ns, true)
            && within(self.itl_ns, itl_ns, true)
            && within(self.e2el_ns, Some(e2el_ns), false)
    }
}

/// How the cached-token figure of a request was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheSource {
    /// `usage.prompt_tokens_details.cached_tokens` from the server.
    Server,
    /// evalscope's estimate: the previous turn's prompt + completion tokens.
    Estimated,
}

/// One successful request, as the engine hands it to the recorder.
#[derive(Clone, Copy, Debug)]
pub struct Success<'a> {
    pub timing: &'a TurnTiming,
    /// When the request was meant to be sent (its schedule; see `docs/metrics.md`).
    pub intended_ns: u64,
    /// Index of the endpoint (`--url`) it went to.
    pub url: usize,
    /// Gaps between output-bearing events, ns.
    pub itl_ns: &'a [u64],
    /// 0-based turn index within the conversation.
    pub turn: u32,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Whether token counts came from `usage` (false: estimated by the client).
    pub tokens_from_usage: bool,
    pub cached_tokens: u64,
    pub cache_source: CacheSource,
}

/// How busy one engine core was: its executor thread's CPU time (user + system, so kernel work
/// for its sockets counts) over the wall time it ran.
#[derive(Clone, Copy, Debug, Default)]
pub struct CoreLoad {
    /// The CPU the executor was pinned to.
    pub cpu: usize,
    pub cpu_ns: u64,
    pub wall_ns: u64,
}

impl CoreLoad {
    pub fn busy_fraction(&self) -> f64 {
        if self.wall_ns == 0 {
            0.0
        } else {
            self.cpu_ns as f64 / self.wall_ns as f64
        }
    }
}

/// The figures kept per endpoint when a run has several `--url`s.
#[derive(Clone, Debug)]
pub struct UrlStats {
    pub requests_succeeded: u64,
    pub requests_failed: u64,
    pub ttft_us: Dist,
    pub latency_us: Dist,
    pub output_tokens: u64,
}

impl UrlStats {
    fn new() -> UrlStats {
        UrlStats {
            requests_succeeded: 0,
            requests_failed: 0,
            ttft_us: Dist::new(MAX_US),
            latency_us: Dist::new(MAX_US),
            output_tokens: 0,
        }
    }

    fn merge(&mut self, other: &UrlStats) {
        self.requests_succeeded += other.requests_succeeded;
        self.requests_failed += other.requests_failed;
        self.ttft_us.merge(&other.ttft_us);
        self.latency_us.merge(&other.latency_us);
        self.output_tokens += other.output_tokens;
    }
}

/// Everything one core measured.
#[derive(Clone, Debug)]
pub struct Recorder {
    pub ttft_us: Dist,
    pub itl_us: Dist,
    pub tpot_us: Dist,
    pub latency_us: Dist,
    pub input_tokens: Dist,
    pub output_tokens: Dist,
    pub first_turn_ttft_us: Dist,
    pub subsequent_turn_ttft_us: Dist,
    /// Per request: from when the slot was ready to send it to when its first bytes were
    /// written to the socket (see `docs/metrics.md`). Nanoseconds, because a healthy client
    /// keeps it in the tens of microseconds.
    pub send_lag_ns: Dist,
    /// Per request sent: its start − its intended start (the schedule), µs.
    pub schedule_lag_us: Dist,
    /// TTFT and latency counted from the intended start instead of the actual one, µs.
    pub ttft_from_schedule_us: Dist,
    pub latency_from_schedule_us: Dist,
    /// Per conversation of an open loop with a cap: time its arrival waited for a free slot, µs.
    pub cap_wait_us: Dist,
    /// Per successful request, in milli-tokens/s: output / latency, (input + output) / latency,
    /// and 1 / TPOT (the exports' per-request rates).
    pub output_milli_tps: Dist,
    pub total_milli_tps: Dist,
    pub decode_milli_tps: Dist,
    pub requests_succeeded: u64,
    /// Requests sent a second time: on a fresh connection after a reused one was closed before
    /// any byte of the response, or after a 429 with `--retry-429`. Not in `requests.total`.
    pub requests_retried: u64,
    /// In flight at the hard end of the run (`--duration-grace`): cancelled, not failed.
    pub requests_cancelled: u64,
    pub requests_failed: u64,
    pub failures: BTreeMap<FailureKind, u64>,
    /// Per failure class, the first [`MESSAGES_PER_CLASS`] distinct messages (cleaned).
    pub failure_messages: BTreeMap<FailureKind, Vec<String>>,
    /// `--goodput`'s limits, when given; `requests_good` counts the successes that met them.
    pub goodput: Option<GoodputLimits>,
    pub requests_good: u64,
    pub conversations_completed: u64,
    pub conversations_abandoned: u64,
    /// Conversations cut short by Ctrl-C (not failures).
    pub conversations_interrupted: u64,
    /// Conversations cut off at the hard end of the run (`--duration` + `--duration-grace`).
    pub conversations_cancelled: u64,
    /// Conversations started, and the first and last start (ns; when their task began).
    pub conversations_started: u64,
    pub first_conversation_start_ns: u64,
    pub last_conversation_start_ns: u64,
    /// Per endpoint, when there are several (empty otherwise).
    pub by_url: Vec<UrlStats>,
    /// Σ(turn index + 1) over successful requests (evalscope's Turns/Req numerator).
    pub turn_depth_sum: u64,
    /// Σprompt and Σcached over successful requests with prompt > 0.
    pub cache_prompt_tokens: u64,
    pub cache_cached_tokens: u64,
    pub cache_from_server: u64,
    pub cache_estimated: u64,
    /// Successful requests whose token counts were estimated (no `usage`).
    pub tokens_estimated: u64,
    /// Σ output-bearing SSE events over successful requests.
    pub output_events: u64,
    pub first_start_ns: u64,
    pub last_end_ns: u64,
    /// One entry per engine core (in core order after merging).
    pub core_loads: Vec<CoreLoad>,
    /// Completed conversations' figures (`trace.rs`).
    pub traces: TraceStats,
    /// Requests and tokens by when they ended (`timeline.rs`).
    pub timeline: Timeline,
    /// Figures by turn index (`turns.rs`).
    pub by_turn: ByTurn,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            ttft_us: Dist::new(MAX_US),
            itl_us: Dist::new(MAX_US),
            tpot_us: Dist::new(MAX_US),
            latency_us: Dist::new(MAX_US),
            input_tokens: Dist::new(MAX_TOKENS),
            output_tokens: Dist::new(MAX_TOKENS),
            first_turn_ttft_us: Dist::new(MAX_US),
            subsequent_turn_ttft_us: Dist::new(MAX_US),
            send_lag_ns: Dist::new(MAX_NS),
            schedule_lag_us: Dist::new(MAX_US),
            ttft_from_schedule_us: Dist::new(MAX_US),
            latency_from_schedule_us: Dist::new(MAX_US),
            cap_wait_us: Dist::new(MAX_US),
            output_milli_tps: Dist::new(MAX_MILLI_TPS),
            total_milli_tps: Dist::new(MAX_MILLI_TPS),
            decode_milli_tps: Dist::new(MAX_MILLI_TPS),
            requests_succeeded: 0,
            requests_retried: 0,
            requests_cancelled: 0,
            requests_failed: 0,
            failures: BTreeMap::new(),
            failure_messages: BTreeMap::new(),
            goodput: None,
            requests_good: 0,
            conversations_completed: 0,
            conversations_abandoned: 0,
            conversations_interrupted: 0,
            conversations_cancelled: 0,
            conversations_started: 0,
            first_conversation_start_ns: u64::MAX,
            last_conversation_start_ns: 0,
            by_url: Vec::new(),
            turn_depth_sum: 0,
            cache_prompt_tokens: 0,
            cache_cached_tokens: 0,
            cache_from_server: 0,
            cache_estimated: 0,
            tokens_estimated: 0,
            output_events: 0,
            first_start_ns: u64::MAX,
            last_end_ns: 0,
            core_loads: Vec::new(),
            traces: TraceStats::default(),
            timeline: Timeline::default(),
            by_turn: ByTurn::default(),
        }
    }

    /// Keeps per-endpoint figures for `urls` endpoints (only when there are several).
    pub fn with_urls(&mut self, urls: usize) {
        self.by_url = if urls > 1 {
            (0..urls).map(|_| UrlStats::new()).collect()
        } else {
            Vec::new()
        };
    }

    /// A conversation started at `now_ns`.
    pub fn record_conversation_start(&mut self, now_ns: u64) {
        self.conversations_started += 1;
        self.first_conversation_start_ns = self.first_conversation_start_ns.min(now_ns);
        self.last_conversation_start_ns = self.last_conversation_start_ns.max(now_ns);
    }

    /// A request meant to be sent at `intended_ns` started at `start_ns`.
    #[inline]
    pub fn record_schedule_lag(&mut self, intended_ns: u64, start_ns: u64) {
        self.schedule_lag_us
            .record(start_ns.saturating_sub(intended_ns) / 1_000);
    }

    /// An open-loop arrival waited `waited_ns` for a slot under the cap.
    #[inline]
    pub fn record_cap_wait(&mut self, waited_ns: u64) {
        self.cap_wait_us.record(waited_ns / 1_000);
    }

    fn span(&mut self, timing: &TurnTiming) {
        self.first_start_ns = self.first_start_ns.min(timing.start_ns);
        self.last_end_ns = self.last_end_ns.max(timing.end_ns);
    }

    pub fn record_success(&mut self, s: Success<'_>) {
        let t = s.timing;
        self.span(t);
        self.requests_succeeded += 1;
        let latency_ns = t.end_ns.saturating_sub(t.start_ns);
        self.latency_us.record(latency_ns / 1_000);
        self.latency_from_schedule_us
            .record(t.end_ns.saturating_sub(s.intended_ns) / 1_000);
        if let Some(u) = self.by_url.get_mut(s.url) {
            u.requests_succeeded += 1;
            u.latency_us.record(latency_ns / 1_000);
            u.output_tokens += s.completion_tokens;
            if let Some(first) = t.first_output_ns {
                u.ttft_us.record(first.saturating_sub(t.start_ns) / 1_000);
            }
        }
        let mut ttft_ns = None;
        let mut tpot_ns = None;
        if let Some(first) = t.first_output_ns {
            let ttft = first.saturating_sub(t.start_ns);
            ttft_ns = Some(ttft);
            let ttft_ns = ttft;
            self.ttft_us.record(ttft_ns / 1_000);
            self.ttft_from_schedule_us
                .record(first.saturating_sub(s.intended_ns) / 1_000);
            if s.turn == 0 {
                self.first_turn_ttft_us.record(ttft_ns / 1_000);
            } else {
                self.subsequent_turn_ttft_us.record(ttft_ns / 1_000);
            }
            if s.completion_tokens > 1 {
                let decode_ns = t.end_ns.saturating_sub(first);
                let tpot = decode_ns / (s.completion_tokens - 1);
                tpot_ns = Some(tpot);
                self.tpot_us.record(tpot / 1_000);
                if decode_ns > 0 {
                    self.decode_milli_tps
                        .record(milli_per_s(s.completion_tokens - 1, decode_ns));
                }
            }
        }
        if let Some(limits) = &self.goodput {
            let itl_ns = (!s.itl_ns.is_empty())
                .then(|| s.itl_ns.iter().sum::<u64>() / s.itl_ns.len() as u64);
            if limits.is_good(ttft_ns, tpot_ns, itl_ns, latency_ns) {
                self.requests_good += 1;
            }
        }
        for &gap_ns in s.itl_ns {
            self.itl_us.record(gap_ns / 1_000);
        }
        self.input_tokens.record(s.prompt_tokens);
        self.output_tokens.record(s.completion_tokens);
        if latency_ns > 0 {
            self.output_milli_tps
                .record_zero_ok(milli_per_s(s.completion_tokens, latency_ns));
            self.total_milli_tps.record_zero_ok(milli_per_s(
                s.prompt_tokens + s.completion_tokens,
                latency_ns,
            ));
        }
        self.timeline.record_success(
            t.end_ns,
            s.prompt_tokens,
            s.cached_tokens,
            s.completion_tokens,
        );
        self.by_turn.record(TurnSample {
            turn: s.turn,
            ttft_ns: t.first_output_ns.map(|f| f.saturating_sub(t.start_ns)),
            latency_ns,
            prompt_tokens: s.prompt_tokens,
            cached_tokens: s.cached_tokens,
            output_tokens: s.completion_tokens,
        });
        self.turn_depth_sum += s.turn as u64 + 1;
        self.output_events += t.output_chunks as u64;
        if !s.tokens_from_usage {
            self.tokens_estimated += 1;
        }
        if s.prompt_tokens > 0 {
            self.cache_prompt_tokens += s.prompt_tokens;
            self.cache_cached_tokens += s.cached_tokens.min(s.prompt_tokens);
            match s.cache_source {
                CacheSource::Server => self.cache_from_server += 1,
                CacheSource::Estimated => self.cache_estimated += 1,
            }
        }
    }

    /// Records one request's send lag: `ready_ns` is when the slot could have sent it,
    /// `written_ns` when its first bytes reached the socket. A write before the ready time
    /// (clock granularity) counts as no lag.
    #[inline]
    pub fn record_send_lag(&mut self, ready_ns: u64, written_ns: u64) {
        self.send_lag_ns.record(written_ns.saturating_sub(ready_ns));
    }

    pub fn record_failure(&mut self, timing: &TurnTiming, kind: FailureKind, url: usize) {
        self.span(timing);
        self.requests_failed += 1;
        self.timeline.record_failure(timing.end_ns);
        if let Some(u) = self.by_url.get_mut(url) {
            u.requests_failed += 1;
        }
        *self.failures.entry(kind).or_insert(0) += 1;
    }

    /// Keeps what the server or connection said about a failure of class `kind` (recorded
    /// with [`Recorder::record_failure`]), if that class has room for another distinct one.
    pub fn record_failure_message(&mut self, kind: FailureKind, message: &str) {
        let kept = self.failure_messages.entry(kind).or_default();
        if kept.len() < MESSAGES_PER_CLASS {
            keep_message(kept, clean_message(message));
        }
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.ttft_us.merge(&other.ttft_us);
        self.itl_us.merge(&other.itl_us);
        self.tpot_us.merge(&other.tpot_us);
        self.latency_us.merge(&other.latency_us);
        self.input_tokens.merge(&other.input_tokens);
        self.output_tokens.merge(&other.output_tokens);
        self.first_turn_ttft_us.merge(&other.first_turn_ttft_us);
        self.subsequent_turn_ttft_us
            .merge(&other.subsequent_turn_ttft_us);
        self.send_lag_ns.merge(&other.send_lag_ns);
        self.schedule_lag_us.merge(&other.schedule_lag_us);
        self.ttft_from_schedule_us
            .merge(&other.ttft_from_schedule_us);
        self.latency_from_schedule_us
            .merge(&other.latency_from_schedule_us);
        self.cap_wait_us.merge(&other.cap_wait_us);
        self.output_milli_tps.merge(&other.output_milli_tps);
        self.total_milli_tps.merge(&other.total_milli_tps);
        self.decode_milli_tps.merge(&other.decode_milli_tps);
        self.requests_succeeded += other.requests_succeeded;
        self.requests_cancelled += other.requests_cancelled;
        self.requests_retried += other.requests_retried;
        self.requests_failed += other.requests_failed;
        for (k, v) in &other.failures {
            *self.failures.entry(*k).or_insert(0) += v;
        }
        for (k, messages) in &other.failure_messages {
            let kept = self.failure_messages.entry(*k).or_default();
            for m in messages {
                keep_message(kept, m.clone());
            }
        }
        self.goodput = self.goodput.or(other.goodput);
        self.requests_good += other.requests_good;
        self.conversations_completed += other.conversations_completed;
        self.conversations_abandoned += other.conversations_abandoned;
        self.conversations_interrupted += other.conversations_interrupted;
        self.conversations_cancelled += other.conversations_cancelled;
        self.conversations_started += other.conversations_started;
        self.first_conversation_start_ns = self
            .first_conversation_start_ns
            .min(other.first_conversation_start_ns);
        self.last_conversation_start_ns = self
            .last_conversation_start_ns
            .max(other.last_conversation_start_ns);
        if self.by_url.is_empty() {
            self.by_url = other.by_url.clone();
        } else {
            for (a, b) in self.by_url.iter_mut().zip(&other.by_url) {
                a.merge(b);
            }
        }
        self.turn_depth_sum += other.turn_depth_sum;
        self.cache_prompt_tokens += other.cache_prompt_tokens;
        self.cache_cached_tokens += other.cache_cached_tokens;
        self.cache_from_server += other.cache_from_server;
        self.cache_estimated += other.cache_estimated;
        self.tokens_estimated += other.tokens_estimated;
        self.output_events += other.output_events;
        self.first_start_ns = self.first_start_ns.min(other.first_start_ns);
        self.last_end_ns = self.last_end_ns.max(other.last_end_ns);
        self.core_loads.extend_from_slice(&other.core_loads);
        self.traces.merge(&other.traces);
        self.timeline.merge(&other.timeline);
        self.by_turn.merge(&other.by_turn);
    }

    /// Conversations started per second between the first and the last start (`None` with
    /// fewer than two).
    pub fn conversation_start_rate_per_s(&self) -> Option<f64> {
        let span_ns = self
            .last_conversation_start_ns
            .checked_sub(self.first_conversation_start_ns)?;
        (self.conversations_started > 1 && span_ns > 0)
            .then(|| (self.conversations_started - 1) as f64 / (span_ns as f64 / 1e9))
    }

    /// Wall time from the first request's start to the last response's end, in seconds.
    pub fn duration_s(&self) -> f64 {
        if self.last_end_ns > self.first_start_ns {
            (self.last_end_ns - self.first_start_ns) as f64 / 1e9
        } else {
            0.0
        }
    }
}

/// `tokens / ns` in milli-tokens per second.
#[inline]
fn milli_per_s(tokens: u64, ns: u64) -> u64 {
    (tokens as u128 * 1_000_000_000_000 / ns as u128) as u64
}

/// CPU time this process has used so far (user + system), in nanoseconds.
pub fn process_cpu_ns() -> u64 {
    // SAFETY: getrusage only writes into the provided struct.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(start: u64, first: u64, end: u64) -> TurnTiming {
        TurnTiming {
            start_ns: start,
            first_write_ns: Some(start),
            first_output_ns: Some(first),
            end_ns: end,
            output_chunks: 3,
            usage: None,
        }
    }

    #[test]
    fn records_and_merges_exactly() {
        let t1 = timing(1_000_000, 21_000_000, 101_000_000);
        let t2 = timing(200_000_000, 205_000_000, 305_000_000);
        let mut a = Recorder::new();
        a.record_success(Success {
            timing: &t1,
            intended_ns: 0,
            url: 0,
            itl_ns: &[10_000_000, 12_000_000],
            turn: 0,
            prompt_tokens: 100,
            completion_tokens: 11,
            tokens_from_usage: true,
            cached_tokens: 0,
            cache_source: CacheSource::Server,
        });
        let mut b = Recorder::new();
        b.record_success(Success {
            timing: &t2,
            intended_ns: 100_000_000,
            url: 0,
            itl_ns: &[],
            turn: 1,
            prompt_tokens: 300,
            completion_tokens: 1,
            tokens_from_usage: true,
            cached_tokens: 96,
            cache_source: CacheSource::Server,
        });
        b.record_failure(
            &timing(400_000_000, 0, 410_000_000),
            FailureKind::HttpStatus(500),
            0,
        );
        a.merge(&b);
        assert_eq!(a.requests_succeeded, 2);
        assert_eq!(a.requests_failed, 1);
        assert_eq!(a.failures[&FailureKind::HttpStatus(500)], 1);
        // TTFT 20 ms and 5 ms; exact mean from sums.
        assert_eq!(a.ttft_us.mean(), Some(12_500.0));
        assert_eq!(a.first_turn_ttft_us.count(), 1);
        assert_eq!(a.subsequent_turn_ttft_us.mean(), Some(5_000.0));
        // From the schedule: 21 ms and 105 ms.
        assert_eq!(a.ttft_from_schedule_us.mean(), Some(63_000.0));
        assert_eq!(a.latency_from_schedule_us.sum, 101_000 + 205_000);
        // TPOT only for completion > 1: (101 − 21) ms / 10 = 8 ms.
        assert_eq!(a.tpot_us.count(), 1);
        assert_eq!(a.tpot_us.mean(), Some(8_000.0));
        assert_eq!(a.itl_us.count(), 2);
        assert_eq!(a.turn_depth_sum, 3);
        assert_eq!(a.cache_cached_tokens, 96);
        assert_eq!(a.cache_prompt_tokens, 400);
        assert_eq!(a.first_start_ns, 1_000_000);
        assert_eq!(a.last_end_ns, 410_000_000);
        assert!((a.duration_s() - 0.409).abs() < 1e-9);
        let p50 = a.ttft_us.quantile(0.5).unwrap();
        assert!((4_995..=5_005).contains(&p50), "{p50}");
    }

    #[test]
    fn failure_messages_are_few_distinct_and_merged() {
        let mut a = Recorder::new();
        let kind = FailureKind::HttpStatus(400);
        a.record_failure_message(kind, "too   long\n context");
        a.record_failure_message(kind, "too long context");
        a.record_failure_message(FailureKind::Aborted, "x");
        let mut b = Recorder::new();
        for m in ["b1", "too long context", "b2", "b3", "b4"] {
            b.record_failure_message(kind, m);
        }
        a.merge(&b);
        assert_eq!(a.failure_messages[&kind], ["too long context", "b1", "b2"]);
        assert_eq!(a.failure_messages[&FailureKind::Aborted], ["x"]);
        let long = clean_message(&"é".repeat(1000));
        assert_eq!(long.chars().count(), MESSAGE_MAX_CHARS + 1);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn goodput_is_decided_per_request_and_merged() {
        let limits = GoodputLimits {
            ttft_ns: Some(25_000_000),
            tpot_ns: Some(9_000_000),
            itl_ns: Some(11_000_000),
            e2el_ns: Some(200_000_000),
        };
        let success = |rec: &mut Recorder, t: &TurnTiming, itl: &[u64], completion: u64| {
            rec.record_success(Success {
                timing: t,
                intended_ns: 0,
                url: 0,
                itl_ns: itl,
                turn: 0,
                prompt_tokens: 10,
                completion_tokens: completion,
                tokens_from_usage: true,
                cached_tokens: 0,
                cache_source: CacheSource::Server,
            })
        };
        let mut a = Recorder::new();
        a.goodput = Some(limits);
        // TTFT 20 ms, TPOT (101 − 21) / 10 = 8 ms, mean ITL 10 ms, latency 100 ms: good.
        let t = timing(1_000_000, 21_000_000, 101_000_000);
        success(&mut a, &t, &[10_000_000, 10_000_000], 11);
        // Same, but one ITL gap of 14 ms makes the mean 12 ms: not good.
        success(&mut a, &t, &[10_000_000, 14_000_000], 11);
        // TPOT 80 / 8 = 10 ms: not good.
        success(&mut a, &t, &[10_000_000], 9);
        // One token: no TPOT or ITL to judge; TTFT and latency are within: good.
        success(&mut a, &t, &[], 1);
        // TTFT 30 ms: not good.
        success(&mut a, &timing(0, 30_000_000, 50_000_000), &[], 1);
        assert_eq!(a.requests_good, 2);
        // Without limits nothing is counted; the merge keeps the limits and sums the counts.
        let mut merged = Recorder::new();
        merged.merge(&a);
        assert_eq!((merged.goodput, merged.requests_good), (Some(limits), 2));
        let mut plain = Recorder::new();
        success(&mut plain, &t, &[], 1);
        assert_eq!(plain.requests_good, 0);
    }

    #[test]
    fn send_lag_records_per_core_and_merges() {
        let mut a = Recorder::new();
        a.record_send_lag(1_000, 21_000); // 20 µs
        a.record_send_lag(5_000, 4_000); // written "before" ready: clock granularity, 0 lag
        let mut b = Recorder::new();
        b.record_send_lag(0, 3_000_000); // 3 ms
        a.merge(&b);
        assert_eq!(a.send_lag_ns.count(), 3);
        assert_eq!(a.send_lag_ns.sum, 3_020_000);
        let max = a.send_lag_ns.max().unwrap();
        assert!((2_998_000..=3_002_000).contains(&max), "{max}");
        let p50 = a.send_lag_ns.quantile(0.5).unwrap();
        assert!((19_980..=20_020).contains(&p50), "{p50}");
    }
}
