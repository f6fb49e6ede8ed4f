//! When each conversation starts: the load shape.
//!
//! A [`Schedule`] yields, for one core, the conversations that core starts: each one's sequence
//! number (the index of the conversation in the run, which picks its pool entry and names it on
//! the wire) and its *intended* start. Adding a load shape is one new type here.
//!
//! - [`ClosedLoop`]: a conversation starts when a slot frees (`--parallel`); claims are first come,
//!   first served across cores through one atomic counter, so a fast core takes more.
//! - [`OpenLoop`]: arrivals at a rate (`--request-rate`), constant, Poisson or gamma, optionally
//!   ramped. Every core computes the same seeded global sequence of arrival times and keeps every
//!   `cores`-th arrival, so the run as a whole follows the process exactly with no cross-core
//!   traffic, and the schedule is absolute: a late core catches up instead of drifting.
//! - [`Fixed`]: recorded timestamps (`--fixed-schedule`), each conversation's first turn at its
//!   offset from the schedule origin.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Exp, Gamma};

/// One conversation start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Arrival {
    /// Position of the conversation in the run's sequence (0-based, per phase).
    pub seq: u64,
    /// Intended start, ns on the run clock; `None` in closed loop: as soon as a slot is free.
    pub at_ns: Option<u64>,
}

/// A core's share of the run's conversation starts.
pub(crate) trait Schedule {
    /// Closed loop: a slot must be free before the next start is drawn (drawing claims it).
    fn slot_driven(&self) -> bool {
        false
    }
    /// The next start on this core, or `None` when this core starts no more.
    fn next(&mut self) -> Option<Arrival>;
}

/// How arrivals are spaced in an open loop.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ArrivalMode {
    /// Exactly 1/rate apart.
    Constant,
    /// Exponential gaps (a Poisson process).
    Poisson,
    /// Gamma gaps of shape `--burstiness` (1 = Poisson; < 1 burstier; > 1 smoother), as vLLM.
    Gamma,
}

/// How an open-loop rate ramps from `start_per_s` to the target.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RampStrategy {
    Linear,
    Exponential,
}

/// A rate ramp: `start_per_s` → the target rate, over a time or over the arrivals (vLLM ramps
/// over the request index when no duration is given).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct RateRamp {
    pub strategy: RampStrategy,
    pub start_per_s: f64,
    /// Ramp over this much time from the first arrival; `None`: over the arrival index, reaching
    /// the target at the last of `limit` arrivals.
    pub duration_ns: Option<u64>,
}

/// An open-loop arrival process.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct RateSpec {
    pub per_s: f64,
    pub mode: ArrivalMode,
    /// Gamma shape (only for [`ArrivalMode::Gamma`]).
    pub burstiness: f64,
    pub ramp: Option<RateRamp>,
}

impl RateSpec {
    /// The rate in force at offset `t_ns` for arrival `index` of `limit`.
    fn rate_at(&self, t_ns: f64, index: u64, limit: Option<u64>) -> f64 {
        let Some(ramp) = self.ramp else {
            return self.per_s;
        };
        let progress = match (ramp.duration_ns, limit) {
            (Some(d), _) if d > 0 => (t_ns / d as f64).min(1.0),
            (Some(_), _) => 1.0,
            (None, Some(n)) if n > 1 => index as f64 / (n - 1) as f64,
            (None, _) => 1.0,
        };
        match ramp.strategy {
            RampStrategy::Linear => ramp.start_per_s + (self.per_s - ramp.start_per_s) * progress,
            RampStrategy::Exponential => {
                ramp.start_per_s * (self.per_s / ramp.start_per_s).powf(progress)
            }
        }
    }
}

/// Draws the gaps of one arrival process; the same seed gives the same sequence on every core.
struct Gaps {
    spec: RateSpec,
    rng: SmallRng,
    unit_exp: Exp<f64>,
    unit_gamma: Option<Gamma<f64>>,
}

impl Gaps {
    fn new(spec: RateSpec, seed: u64) -> Gaps {
        let unit_gamma = match spec.mode {
            // Gamma(shape k, scale 1/k) has mean 1: scaled by 1/rate per gap below.
            ArrivalMode::Gamma => Some(
                Gamma::new(spec.burstiness, 1.0 / spec.burstiness)
                    .expect("burstiness validated positive"),
            ),
            _ => None,
        };
        Gaps {
            spec,
            rng: SmallRng::seed_from_u64(seed),
            unit_exp: Exp::new(1.0).expect("rate 1 is valid"),
            unit_gamma,
        }
    }

    /// The gap in ns before the arrival after one at offset `t_ns` with index `index`.
    fn next_ns(&mut self, t_ns: f64, index: u64, limit: Option<u64>) -> f64 {
        let rate = self.spec.rate_at(t_ns, index, limit).max(f64::MIN_POSITIVE);
        let unit = match self.spec.mode {
            ArrivalMode::Constant => 1.0,
            ArrivalMode::Poisson => self.unit_exp.sample(&mut self.rng),
            ArrivalMode::Gamma => self
                .unit_gamma
                .as_ref()
                .expect("built for gamma")
                .sample(&mut self.rng),
        };
        unit / rate * 1e9
    }
}

/// Closed loop: claims from a counter shared by every core.
pub(crate) struct ClosedLoop {
    claims: Arc<AtomicU64>,
    limit: Option<u64>,
}

impl ClosedLoop {
    pub(crate) fn new(claims: Arc<AtomicU64>, limit: Option<u64>) -> ClosedLoop {
        ClosedLoop { claims, limit }
    }
}

impl Schedule for ClosedLoop {
    fn slot_driven(&self) -> bool {
        true
    }

    fn next(&mut self) -> Option<Arrival> {
        let seq = self.claims.fetch_add(1, Ordering::Relaxed);
        if self.limit.is_some_and(|l| seq >= l) {
            return None;
        }
        Some(Arrival { seq, at_ns: None })
    }
}

/// Open loop: this core's share (every `cores`-th) of one seeded global arrival sequence that
/// starts at `start_ns`.
pub(crate) struct OpenLoop {
    gaps: Gaps,
    start_ns: u64,
    limit: Option<u64>,
    core: u64,
    cores: u64,
    /// Offset of arrival `index` from `start_ns`, in ns (f64: exact to well under a ns for
    /// runs of days, and gaps below a ns do not truncate to zero).
    t_ns: f64,
    index: u64,
}

impl OpenLoop {
    pub(crate) fn new(
        spec: RateSpec,
        seed: u64,
        start_ns: u64,
        limit: Option<u64>,
        core: usize,
        cores: usize,
    ) -> OpenLoop {
        assert!(core < cores, "core {core} of {cores}");
        OpenLoop {
            gaps: Gaps::new(spec, seed),
            start_ns,
            limit,
            core: core as u64,
            cores: cores as u64,
            t_ns: 0.0,
            index: 0,
        }
    }
}

impl Schedule for OpenLoop {
    fn next(&mut self) -> Option<Arrival> {
        loop {
            if self.limit.is_some_and(|l| self.index >= l) {
                return None;
            }
            let (index, t_ns) = (self.index, self.t_ns);
            // The first arrival is at the start; each later one a drawn gap after the previous.
            self.t_ns += self.gaps.next_ns(t_ns, index, self.limit);
            self.index += 1;
            if index % self.cores == self.core {
                return Some(Arrival {
                    seq: index,
                    at_ns: Some(self.start_ns + t_ns as u64),
                });
            }
        }
    }
}

/// Fixed schedule: every `cores`-th of a sorted list of first-turn offsets.
pub(crate) struct Fixed {
    offsets_ns: Arc<Vec<u64>>,
    start_ns: u64,
    core: usize,
    cores: usize,
    next: usize,
}

impl Fixed {
    pub(crate) fn new(
        offsets_ns: Arc<Vec<u64>>,
        start_ns: u64,
        core: usize,
        cores: usize,
    ) -> Fixed {
        Fixed {
            offsets_ns,
            start_ns,
            core,
            cores,
            next: core,
        }
    }
}

impl Schedule for Fixed {
    fn next(&mut self) -> Option<Arrival> {
        let i = self.next;
        let offset = *self.offsets_ns.get(i)?;
        self.next += self.cores;
        debug_assert!(i % self.cores == self.core);
        Some(Arrival {
            seq: i as u64,
            at_ns: Some(self.start_ns + offset),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(per_s: f64, mode: ArrivalMode) -> RateSpec {
        RateSpec {
            per_s,
            mode,
            burstiness: 1.0,
            ramp: None,
        }
    }

    fn all(mut s: impl Schedule) -> Vec<Arrival> {
        std::iter::from_fn(|| s.next()).collect()
    }

    #[test]
    fn constant_rate_is_exact_and_absolute() {
        let a = all(OpenLoop::new(
            spec(1000.0, ArrivalMode::Constant),
            1,
            5_000,
            Some(4),
            0,
            1,
        ));
        let at: Vec<u64> = a.iter().map(|a| a.at_ns.unwrap()).collect();
        assert_eq!(at, [5_000, 1_005_000, 2_005_000, 3_005_000]);
        assert_eq!(a.iter().map(|a| a.seq).collect::<Vec<_>>(), [0, 1, 2, 3]);
    }

    #[test]
    fn cores_split_one_sequence_without_overlap() {
        let one = all(OpenLoop::new(
            spec(500.0, ArrivalMode::Poisson),
            9,
            0,
            Some(1000),
            0,
            1,
        ));
        let mut merged: Vec<Arrival> = (0..3)
            .flat_map(|c| {
                all(OpenLoop::new(
                    spec(500.0, ArrivalMode::Poisson),
                    9,
                    0,
                    Some(1000),
                    c,
                    3,
                ))
            })
            .collect();
        merged.sort_by_key(|a| a.seq);
        assert_eq!(
            merged, one,
            "three cores together give the one-core sequence"
        );
    }

    #[test]
    fn poisson_and_gamma_have_the_asked_mean_rate() {
        for (mode, burstiness) in [(ArrivalMode::Poisson, 1.0), (ArrivalMode::Gamma, 0.25)] {
            let s = RateSpec {
                burstiness,
                ..spec(2000.0, mode)
            };
            let a = all(OpenLoop::new(s, 3, 0, Some(20_001), 0, 1));
            let span_s = a.last().unwrap().at_ns.unwrap() as f64 / 1e9;
            let rate = 20_000.0 / span_s;
            assert!((rate / 2000.0 - 1.0).abs() < 0.05, "{mode:?}: {rate}");
        }
    }

    #[test]
    fn gamma_burstiness_changes_the_spread() {
        let cv = |burstiness: f64| {
            let s = RateSpec {
                burstiness,
                ..spec(100.0, ArrivalMode::Gamma)
            };
            let a = all(OpenLoop::new(s, 5, 0, Some(5_000), 0, 1));
            let gaps: Vec<f64> = a
                .windows(2)
                .map(|w| (w[1].at_ns.unwrap() - w[0].at_ns.unwrap()) as f64)
                .collect();
            let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
            let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
            var.sqrt() / mean
        };
        // Gamma shape k has coefficient of variation 1/sqrt(k).
        assert!((cv(0.25) - 2.0).abs() < 0.2, "{}", cv(0.25));
        assert!((cv(4.0) - 0.5).abs() < 0.05, "{}", cv(4.0));
    }

    #[test]
    fn ramps_reach_the_target() {
        let ramp = |strategy, duration_ns| RateSpec {
            ramp: Some(RateRamp {
                strategy,
                start_per_s: 10.0,
                duration_ns,
            }),
            ..spec(1000.0, ArrivalMode::Constant)
        };
        // Over the index: gaps shrink from 1/10 s to 1/1000 s.
        let a = all(OpenLoop::new(
            ramp(RampStrategy::Linear, None),
            0,
            0,
            Some(101),
            0,
            1,
        ));
        let gap = |i: usize| a[i + 1].at_ns.unwrap() - a[i].at_ns.unwrap();
        assert_eq!(gap(0), 100_000_000);
        assert!(gap(99) < 1_020_000, "{}", gap(99));
        // Over 1 s: rate(t) = 10 · 100^t; after the ramp, exactly the target.
        let a = all(OpenLoop::new(
            ramp(RampStrategy::Exponential, Some(1_000_000_000)),
            0,
            0,
            Some(2_000),
            0,
            1,
        ));
        let last = a.len() - 1;
        assert_eq!(
            a[last].at_ns.unwrap() - a[last - 1].at_ns.unwrap(),
            1_000_000
        );
        assert_eq!(a[1].at_ns.unwrap(), 100_000_000);
    }

    #[test]
    fn closed_loop_claims_up_to_the_limit_across_cores() {
        let claims = Arc::new(AtomicU64::new(0));
        let mut a = ClosedLoop::new(claims.clone(), Some(3));
        let mut b = ClosedLoop::new(claims, Some(3));
        let seqs: Vec<Option<u64>> = [a.next(), b.next(), a.next(), b.next()]
            .iter()
            .map(|x| x.map(|a| a.seq))
            .collect();
        assert_eq!(seqs, [Some(0), Some(1), Some(2), None]);
        assert!(a.slot_driven());
    }

    #[test]
    fn fixed_splits_offsets() {
        let offsets = Arc::new(vec![0, 10, 20, 30, 40]);
        let a = all(Fixed::new(offsets.clone(), 100, 1, 2));
        assert_eq!(
            a,
            [
                Arrival {
                    seq: 1,
                    at_ns: Some(110)
                },
                Arrival {
                    seq: 3,
                    at_ns: Some(130)
                }
            ]
        );
    }
}
