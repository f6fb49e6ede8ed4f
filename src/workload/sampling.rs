//! Which pool entry the k-th claimed conversation runs (`--dataset-sampling-strategy`, AIPerf's
//! names).
//!
//! The engine claims conversations with one atomic counter; claim k (0-based, run-wide) runs pool
//! entry [`Sampler::pool_index`]`(k)`. The mapping is a pure function of (strategy, seed, pool
//! size, k), so every core computes it for its own claims from its own copy of the [`Sampler`],
//! without coordination, and a run is reproducible from its seed:
//!
//! - `sequential` (default): k mod len, cycling through the pool in order;
//! - `random`: uniform with replacement, one hash of (seed, k) per claim;
//! - `shuffle`: pass p = k div len runs a fresh seeded permutation of the pool, so every entry
//!   runs exactly once per pass and passes differ. A core caches the permutation of the pass it
//!   last used (memory bounded by the pool: 4 bytes an entry); claims grow on every core, so it
//!   rebuilds it at most once per pass.

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::synth::stream_seed;

/// `--dataset-sampling-strategy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SamplingStrategy {
    /// Claim k runs entry k mod len: the pool in order, cycling.
    #[default]
    Sequential,
    /// Uniform over the pool with replacement, seeded by --seed.
    Random,
    /// A fresh seeded permutation of the pool for each pass: every entry once per pass.
    Shuffle,
}

impl SamplingStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            SamplingStrategy::Sequential => "sequential",
            SamplingStrategy::Random => "random",
            SamplingStrategy::Shuffle => "shuffle",
        }
    }
}

/// Keep the sampling streams apart from synthesis, which also draws from `--seed`.
const RANDOM_STREAM: u64 = 0x7361_6d70_6c65_0001;
const SHUFFLE_STREAM: u64 = 0x7361_6d70_6c65_0002;

/// Maps claim numbers to pool indices (see the module docs). Clone one per engine core.
#[derive(Clone, Debug)]
pub struct Sampler {
    strategy: SamplingStrategy,
    seed: u64,
    len: usize,
    /// Shuffle: the pass whose permutation `order` holds.
    pass: Option<u64>,
    /// Shuffle: pool indices in the order pass `pass` runs them.
    order: Vec<u32>,
}

impl Sampler {
    /// A sampler over a pool of `len` entries. Panics when `len` is 0 (the resources never build an
    /// empty pool) or does not fit in u32 (pools are bounded far below).
    pub fn new(strategy: SamplingStrategy, seed: u64, len: usize) -> Sampler {
        assert!(len > 0, "a sampler needs a non-empty pool");
        assert!(
            u32::try_from(len).is_ok(),
            "pool of {len} entries is too large"
        );
        Sampler {
            strategy,
            seed,
            len,
            pass: None,
            order: Vec::new(),
        }
    }

    pub fn strategy(&self) -> SamplingStrategy {
        self.strategy
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Entries in the pool.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a sampler's pool has at least one entry.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The pool entry claim `k` runs. O(1), except that `shuffle` rebuilds its permutation
    /// (O(len)) when `k` is in another pass than the previous call's.
    pub fn pool_index(&mut self, k: u64) -> usize {
        let len = self.len as u64;
        match self.strategy {
            SamplingStrategy::Sequential => (k % len) as usize,
            SamplingStrategy::Random => {
                let x = stream_seed(stream_seed(self.seed, RANDOM_STREAM), k);
                // Multiply-high maps 64 random bits onto [0, len) with a bias below len / 2^64.
                ((u128::from(x) * u128::from(len)) >> 64) as usize
            }
            SamplingStrategy::Shuffle => {
                let pass = k / len;
                if self.pass != Some(pass) {
                    self.shuffle(pass);
                }
                self.order[(k % len) as usize] as usize
            }
        }
    }

    /// Fills `order` with pass `pass`'s permutation (Fisher–Yates from its own seeded stream).
    fn shuffle(&mut self, pass: u64) {
        self.order.clear();
        self.order.extend(0..self.len as u32);
        let mut rng =
            SmallRng::seed_from_u64(stream_seed(stream_seed(self.seed, SHUFFLE_STREAM), pass));
        self.order.shuffle(&mut rng);
        self.pass = Some(pass);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn indices(s: &mut Sampler, ks: std::ops::Range<u64>) -> Vec<usize> {
        ks.map(|k| s.pool_index(k)).collect()
    }

    #[test]
    fn sequential_cycles_through_the_pool() {
        let mut s = Sampler::new(SamplingStrategy::Sequential, 7, 3);
        assert_eq!(indices(&mut s, 0..7), [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(s.pool_index(3_000_000_001), 1);
    }

    #[test]
    fn random_is_deterministic_per_seed_and_roughly_uniform() {
        let mut a = Sampler::new(SamplingStrategy::Random, 42, 10);
        let mut b = Sampler::new(SamplingStrategy::Random, 42, 10);
        let mut other = Sampler::new(SamplingStrategy::Random, 43, 10);
        let xs = indices(&mut a, 0..10_000);
        assert_eq!(xs, indices(&mut b, 0..10_000));
        assert_ne!(xs, indices(&mut other, 0..10_000));
        // Any core computes claim k alone: the same answer out of order.
        let mut c = Sampler::new(SamplingStrategy::Random, 42, 10);
        assert_eq!(c.pool_index(9_999), xs[9_999]);
        assert_eq!(c.pool_index(5), xs[5]);
        // 10,000 draws over 10 entries: each expected 1,000 (sd ≈ 30).
        let mut counts = [0u32; 10];
        for &x in &xs {
            counts[x] += 1;
        }
        assert!(
            counts.iter().all(|&n| (850..=1150).contains(&n)),
            "{counts:?}"
        );
        // With replacement: some entry repeats within the first pass.
        let first: std::collections::HashSet<usize> = xs[..10].iter().copied().collect();
        assert!(first.len() < 10);
    }

    #[test]
    fn shuffle_runs_each_entry_once_per_pass_and_passes_differ() {
        let len = 50;
        let mut s = Sampler::new(SamplingStrategy::Shuffle, 3, len);
        let passes: Vec<Vec<usize>> = (0..4)
            .map(|p| indices(&mut s, p * len as u64..(p + 1) * len as u64))
            .collect();
        for pass in &passes {
            let mut sorted = pass.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..len).collect::<Vec<_>>());
        }
        assert_ne!(passes[0], passes[1]);
        assert_ne!(passes[1], passes[2]);
        assert_ne!(passes[0], (0..len).collect::<Vec<_>>(), "shuffled");
        // Deterministic per seed, whatever order the claims come in.
        let mut t = Sampler::new(SamplingStrategy::Shuffle, 3, len);
        assert_eq!(t.pool_index(2 * len as u64 + 7), passes[2][7]);
        assert_eq!(t.pool_index(3), passes[0][3]);
        let mut u = Sampler::new(SamplingStrategy::Shuffle, 4, len);
        assert_ne!(indices(&mut u, 0..len as u64), passes[0]);
    }

    #[test]
    fn a_pool_of_one_always_gives_entry_zero() {
        for strategy in [
            SamplingStrategy::Sequential,
            SamplingStrategy::Random,
            SamplingStrategy::Shuffle,
        ] {
            let mut s = Sampler::new(strategy, 1, 1);
            assert_eq!(indices(&mut s, 0..5), [0; 5]);
        }
    }
}
