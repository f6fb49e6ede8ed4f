//! `synthetic`: AIPerf-style synthetic multi-turn conversations, and the shared system prompt and
//! prefixes (`--shared-system-prompt-length`, `--prefix-length`, `--prefix-count`) that
//! `random_multi_turn` reuses.
//!
//! As AIPerf's synthetic composer (`dataset/composer/synthetic.py`): a conversation has
//! `max(1, ceil(N(turn_mean, turn_stddev)))` turns; each turn is one new user message of
//! `max(1, ceil(N(isl_mean, isl_stddev)))` bare tokens, a `max_tokens` drawn the same way from
//! `--output-tokens-mean/stddev` when given (else the run's `--max-tokens`), and for turns ≥ 2 a
//! think time of `max(1, ceil(N(delay_mean, delay_stddev)))` ms × `--conversation-turn-delay-ratio`
//! when the delay mean is positive. Normal draws are truncated at zero by rejection, as AIPerf's
//! `sample_positive_normal` does; with a zero stddev the draw is the mean itself.
//!
//! **Shared parts.** `--prefix-count` prefixes of `--prefix-length` tokens exist; conversation
//! `i`'s first user message starts with prefix `i mod count` (AIPerf picks one at random; a fixed
//! assignment makes cache behaviour predictable). The ISL does not include the prefix, as in
//! AIPerf (`f"{prefix} {content}"`): that message is prefix + ISL tokens. A shared system prompt of
//! `--shared-system-prompt-length` tokens is one system message at the start of every
//! conversation's first turn. Each shared part is synthesized once and held as one `Bytes`
//! referenced from every turn that uses it, so 100k conversations do not hold 100k copies.
//!
//! **Determinism.** Conversation `i` draws everything from `item_rng(seed, i)`, the system prompt
//! and prefixes from their own streams, so a conversation is the same whatever `--dataset-offset`,
//! `--shard` and `--number` select and however many threads build it.

use std::collections::BTreeMap;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::Rng;

use crate::workload::synth::{self, Synth, SynthesisError};
use crate::workload::{
    content_open, escape_piece, message_json, BuildContext, Built, Conversation, DatasetError,
    DatasetFlag, DatasetParams, PathUse, Source, Turn, COMMA, CONTENT_CLOSE,
};

/// The flags `synthetic` reads: AIPerf's synthetic flags and the shared parts.
const SYNTHETIC_FLAGS: [DatasetFlag; 12] = [
    DatasetFlag::ConversationTurnMean,
    DatasetFlag::ConversationTurnStddev,
    DatasetFlag::SyntheticInputTokensMean,
    DatasetFlag::SyntheticInputTokensStddev,
    DatasetFlag::OutputTokensMean,
    DatasetFlag::OutputTokensStddev,
    DatasetFlag::ConversationTurnDelayMean,
    DatasetFlag::ConversationTurnDelayStddev,
    DatasetFlag::ConversationTurnDelayRatio,
    DatasetFlag::PrefixLength,
    DatasetFlag::PrefixCount,
    DatasetFlag::SharedSystemPromptLength,
];

/// AIPerf's defaults (`--conversation-turn-mean 1`, `--isl 550`, delays 0, ratio 1.0).
pub const DEFAULT_TURN_MEAN: f64 = 1.0;
pub const DEFAULT_ISL_MEAN: f64 = 550.0;
pub const DEFAULT_DELAY_RATIO: f64 = 1.0;

/// Limits on the flags, so a typo cannot make a build that exhausts memory: at most this many
/// turns per conversation and tokens per sampled length (draws above are capped here).
pub const MAX_TURNS: u32 = 10_000;
pub const MAX_TOKENS: u32 = 1 << 24;
/// Longest think time a draw may give: one day, in milliseconds.
pub const MAX_DELAY_MS: f64 = 86_400_000.0;

/// Rejection draws before a truncated normal falls back to its (clamped) mean, as AIPerf.
const NORMAL_REJECTION_LIMIT: usize = 100;

/// Streams of the shared parts, apart from the conversations' `item_rng(seed, i)`.
const SYSTEM_STREAM: u64 = 0x5359_5354_454d_0001;
const PREFIX_STREAM: u64 = 0x5052_4546_4958_0001;

/// A normal distribution sampled as AIPerf's `sample_positive_normal_integer`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normal {
    pub mean: f64,
    pub stddev: f64,
}

impl Normal {
    pub fn new(mean: f64, stddev: f64) -> Normal {
        Normal { mean, stddev }
    }

    /// A draw truncated at zero: rejection sampling, then the mean if every draw was negative.
    pub fn sample_nonneg(&self, rng: &mut SmallRng) -> f64 {
        if self.stddev <= 0.0 {
            return self.mean.max(0.0);
        }
        for _ in 0..NORMAL_REJECTION_LIMIT {
            let x = self.mean + self.stddev * standard_normal(rng);
            if x >= 0.0 {
                return x;
            }
        }
        self.mean.max(0.0)
    }

    /// `max(1, ceil(draw))`, at most `cap`.
    pub fn sample_count(&self, rng: &mut SmallRng, cap: u32) -> u32 {
        let x = self.sample_nonneg(rng).ceil();
        // `as` saturates (and maps NaN to 0, which max(1) then lifts).
        (x.min(f64::from(cap)) as u32).max(1)
    }
}

/// One standard normal draw (Box–Muller; `rand` alone has no normal distribution).
fn standard_normal(rng: &mut SmallRng) -> f64 {
    // u1 in (0, 1] so the logarithm is finite.
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// The shared system prompt and prefixes a run asked for (validated flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SharedSpec {
    /// Tokens of the system prompt every conversation starts with (0 = none).
    pub system_prompt_tokens: u32,
    /// Tokens of each prefix (0 = no prefixes).
    pub prefix_tokens: u32,
    /// Distinct prefixes; conversation i uses prefix i mod count.
    pub prefix_count: u32,
}

impl SharedSpec {
    /// From `--shared-system-prompt-length`, `--prefix-length`, `--prefix-count`.
    /// `--prefix-length` alone means one prefix shared by all; `--prefix-count` alone is an error
    /// (it would be silently ignored).
    pub fn from_params(p: &DatasetParams) -> Result<SharedSpec, DatasetError> {
        let spec = SharedSpec {
            system_prompt_tokens: p.shared_system_prompt_length.unwrap_or(0),
            prefix_tokens: p.prefix_length.unwrap_or(0),
            prefix_count: p.prefix_count.unwrap_or(1),
        };
        if p.prefix_count.is_some() && spec.prefix_tokens == 0 {
            return Err(param(
                "prefix-count",
                "needs --prefix-length (the tokens of each prefix) above 0",
            ));
        }
        if spec.prefix_count == 0 {
            return Err(param("prefix-count", "must be at least 1"));
        }
        if spec.system_prompt_tokens > MAX_TOKENS {
            return Err(param(
                "shared-system-prompt-length",
                format!("at most {MAX_TOKENS} tokens"),
            ));
        }
        if spec.prefix_tokens > MAX_TOKENS {
            return Err(param(
                "prefix-length",
                format!("at most {MAX_TOKENS} tokens"),
            ));
        }
        Ok(spec)
    }

    pub fn is_empty(&self) -> bool {
        self.system_prompt_tokens == 0 && self.prefix_tokens == 0
    }

    /// Synthesizes the parts the conversations `indices` use: the system prompt and each prefix
    /// `i mod count` once.
    pub fn build(
        &self,
        synth: Synth<'_>,
        seed: u64,
        indices: &[u64],
    ) -> Result<SharedParts, SynthesisError> {
        let user_open = content_open("user");
        let system = if self.system_prompt_tokens > 0 {
            let mut rng = synth::item_rng(synth::stream_seed(seed, SYSTEM_STREAM), 0);
            let text = synth.text(self.system_prompt_tokens, &mut rng)?;
            Some(Bytes::from(message_json("system", &text)))
        } else {
            None
        };
        let mut prefixes = BTreeMap::new();
        if self.prefix_tokens > 0 {
            let vocabulary = synth.vocabulary();
            if self.prefix_count as usize > vocabulary {
                return Err(SynthesisError::Invalid(format!(
                    "--prefix-count {} is more than the {vocabulary} distinct prefixes this \
                     tokenizer's words allow",
                    self.prefix_count
                )));
            }
            // Prefix j starts at word base + j: distinct prefixes differ at every position, so
            // no two share a cache block by chance.
            let mut rng = synth::item_rng(synth::stream_seed(seed, PREFIX_STREAM), 0);
            let base = rng.random_range(0..vocabulary);
            let needed: Vec<u32> = {
                let mut v: Vec<u32> = indices
                    .iter()
                    .map(|&i| (i % u64::from(self.prefix_count)) as u32)
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            };
            let built = synth::par_map(needed.len(), "synthesizing prefixes", |k| {
                let j = needed[k];
                synth
                    .text_at(self.prefix_tokens, (base + j as usize) % vocabulary)
                    .map(|t| (j, escape_piece(&t)))
            })?;
            prefixes.extend(built);
        }
        Ok(SharedParts {
            spec: *self,
            system,
            prefixes,
            user_open,
        })
    }
}

/// The synthesized shared parts, each stored once.
#[derive(Clone, Debug)]
pub struct SharedParts {
    spec: SharedSpec,
    /// The whole system message, `{"role":"system","content":"…"}`.
    system: Option<Bytes>,
    /// Prefix index → the prefix as an escaped piece of a JSON string.
    prefixes: BTreeMap<u32, Bytes>,
    /// `{"role":"user","content":"`.
    user_open: Bytes,
}

impl SharedParts {
    /// Tokens the shared parts add to conversation `index`'s first turn.
    pub fn added_tokens(&self) -> u32 {
        self.spec.system_prompt_tokens + self.spec.prefix_tokens
    }

    /// The segments before the rest of conversation `index`'s first user message content:
    /// `[system, ","]` (if any), the user message opening and the prefix (if any).
    fn head(&self, index: u64) -> Vec<Bytes> {
        let mut out = Vec::with_capacity(4);
        if let Some(s) = &self.system {
            out.push(s.clone());
            out.push(COMMA);
        }
        out.push(self.user_open.clone());
        if self.spec.prefix_tokens > 0 {
            let j = (index % u64::from(self.spec.prefix_count)) as u32;
            // Every selected index's prefix was built by `SharedSpec::build`.
            let prefix = self.prefixes.get(&j);
            debug_assert!(prefix.is_some(), "prefix {j} was not built");
            if let Some(p) = prefix {
                out.push(p.clone());
            }
        }
        out
    }

    /// Conversation `index`'s first turn: the shared parts, then `rest` (`rest_tokens` tokens)
    /// in the same user message.
    pub fn first_turn(&self, index: u64, rest: &str, rest_tokens: u32) -> Turn {
        let mut delta = self.head(index);
        delta.push(escape_piece(rest));
        delta.push(CONTENT_CLOSE);
        Turn {
            delta,
            delta_tokens: Some(rest_tokens + self.added_tokens()),
            ..Turn::default()
        }
    }

    /// Rewrites a first turn made by [`Turn::user`] (one user message) to start with the shared
    /// parts. The message's content is reused as it is (a slice of its bytes, no copy).
    pub fn apply_to_user_turn(&self, index: u64, turn: &mut Turn) -> Result<(), SynthesisError> {
        let [only] = turn.delta.as_slice() else {
            return Err(SynthesisError::Invalid(
                "shared parts need a first turn of one user message".into(),
            ));
        };
        if !only.starts_with(&self.user_open) {
            return Err(SynthesisError::Invalid(
                "shared parts need a first turn of one user message".into(),
            ));
        }
        let tail = only.slice(self.user_open.len()..);
        let mut delta = self.head(index);
        delta.push(tail);
        turn.delta = delta;
        turn.delta_tokens = turn.delta_tokens.map(|n| n + self.added_tokens());
        Ok(())
    }
}

/// Parameters of a synthetic build, validated.
#[derive(Clone, Debug)]
pub struct Synthetic {
    pub turns: Normal,
    pub isl: Normal,
    /// Per-turn `max_tokens`; `None` leaves the run's `--max-tokens`.
    pub osl: Option<Normal>,
    /// Think time before turns ≥ 2 in milliseconds; `None` when the mean is 0 (no wait).
    pub delay_ms: Option<Normal>,
    pub delay_ratio: f64,
    pub shared: SharedSpec,
    pub seed: u64,
}

fn param(flag: &str, reason: impl Into<String>) -> DatasetError {
    DatasetError::Param {
        flag: flag.to_string(),
        reason: reason.into(),
    }
}

impl Synthetic {
    /// From the run's flags. Flags of other sources were rejected by
    /// [`check_flags`](crate::workload::check_flags) (`SYNTHETIC_FLAGS`); these are ignored here.
    pub fn from_params(p: &DatasetParams) -> Result<Synthetic, DatasetError> {
        // The plan has already rejected negative and non-finite values, naming the flag.
        let turn_mean = p.turn_mean.unwrap_or(DEFAULT_TURN_MEAN);
        if turn_mean > f64::from(MAX_TURNS) {
            return Err(param(
                "conversation-turn-mean",
                format!("{turn_mean} is above the limit of {MAX_TURNS} turns"),
            ));
        }
        let isl_mean = p.isl_mean.unwrap_or(DEFAULT_ISL_MEAN);
        if isl_mean <= 0.0 {
            return Err(param(
                "synthetic-input-tokens-mean",
                "must be above 0 (every turn sends a user message)",
            ));
        }
        if isl_mean > f64::from(MAX_TOKENS) {
            return Err(param(
                "synthetic-input-tokens-mean",
                format!("{isl_mean} is above the limit of {MAX_TOKENS} tokens"),
            ));
        }
        let osl = match (p.osl_mean, p.osl_stddev) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(param(
                    "output-tokens-stddev",
                    "needs --output-tokens-mean (without it the run's --max-tokens is sent)",
                ))
            }
            (Some(m), _) if m <= 0.0 || m > f64::from(MAX_TOKENS) => {
                return Err(param(
                    "output-tokens-mean",
                    format!("{m} must be above 0 and at most {MAX_TOKENS}"),
                ))
            }
            (Some(m), s) => Some(Normal::new(m, s.unwrap_or(0.0))),
        };
        let delay_mean = p.turn_delay_mean_ms.unwrap_or(0.0);
        if delay_mean > MAX_DELAY_MS {
            return Err(param(
                "conversation-turn-delay-mean",
                format!("{delay_mean} ms is above the limit of one day"),
            ));
        }
        let delay_ms = if delay_mean > 0.0 {
            Some(Normal::new(
                delay_mean,
                p.turn_delay_stddev_ms.unwrap_or(0.0),
            ))
        } else {
            // AIPerf draws no delay when the mean is 0; a stddev or ratio would do nothing.
            for (flag, set) in [
                (
                    "conversation-turn-delay-stddev",
                    p.turn_delay_stddev_ms.is_some_and(|s| s > 0.0),
                ),
                (
                    "conversation-turn-delay-ratio",
                    p.turn_delay_ratio.is_some(),
                ),
            ] {
                if set {
                    return Err(param(
                        flag,
                        "needs --conversation-turn-delay-mean above 0 (no think time otherwise)",
                    ));
                }
            }
            None
        };
        Ok(Synthetic {
            turns: Normal::new(turn_mean, p.turn_stddev.unwrap_or(0.0)),
            isl: Normal::new(isl_mean, p.isl_stddev.unwrap_or(0.0)),
            osl,
            delay_ms,
            delay_ratio: p.turn_delay_ratio.unwrap_or(DEFAULT_DELAY_RATIO),
            shared: SharedSpec::from_params(p)?,
            seed: p.seed,
        })
    }

    /// Conversations `indices` of the sequence this seed defines, built in parallel.
    pub fn build(
        &self,
        synth: Synth<'_>,
        indices: &[u64],
    ) -> Result<Vec<Conversation>, SynthesisError> {
        let shared = self.shared.build(synth, self.seed, indices)?;
        synth::par_map(indices.len(), "synthesizing", |k| {
            self.conversation(synth, &shared, indices[k])
        })
    }

    /// Conversation `index`, from its own RNG stream.
    pub fn conversation(
        &self,
        synth: Synth<'_>,
        shared: &SharedParts,
        index: u64,
    ) -> Result<Conversation, SynthesisError> {
        let mut rng = synth::item_rng(self.seed, index);
        let turns = self.turns.sample_count(&mut rng, MAX_TURNS);
        let mut conv = Conversation::live(Vec::with_capacity(turns as usize));
        for k in 0..turns {
            // Draw order is fixed (length, max_tokens, delay, text) so a conversation does not
            // change with the thread count.
            let isl = self.isl.sample_count(&mut rng, MAX_TOKENS);
            let max_tokens = self.osl.map(|n| n.sample_count(&mut rng, MAX_TOKENS));
            let delay_ns = match self.delay_ms {
                Some(d) if k > 0 => {
                    let ms = d.sample_count(&mut rng, MAX_DELAY_MS as u32);
                    (f64::from(ms) * self.delay_ratio * 1e6).round() as u64
                }
                _ => 0,
            };
            let text = synth.text(isl, &mut rng)?;
            let mut turn = if k == 0 {
                shared.first_turn(index, &text, isl)
            } else {
                Turn::user(&text, Some(isl))
            };
            turn.max_tokens = max_tokens;
            turn.delay_ns = delay_ns;
            conv.turns.push(turn);
        }
        Ok(conv)
    }
}

/// The registered source.
pub struct SyntheticSource;

impl Source for SyntheticSource {
    fn names(&self) -> &'static [&'static str] {
        &["synthetic"]
    }

    fn path_use(&self) -> PathUse {
        PathUse::None
    }

    fn describe(&self) -> &'static str {
        "AIPerf-style synthetic multi-turn: N(mean, stddev) turns, input and output lengths, \
         think times; shared system prompt and prefixes"
    }

    fn flags(&self) -> &'static [DatasetFlag] {
        &SYNTHETIC_FLAGS
    }

    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Built, DatasetError> {
        let params = Synthetic::from_params(ctx.params)?;
        let synth = Synth::new(ctx.tokenizer)?;
        let indices: Vec<u64> = ctx.selection.generated().collect();
        Ok(Built {
            conversations: params.build(synth, &indices)?,
            filtered: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::Value;

    use crate::tokenizer::test_builtin as tok;

    fn messages(turn: &Turn) -> Vec<Value> {
        let s = format!("[{}]", String::from_utf8(turn.delta_bytes()).unwrap());
        serde_json::from_str(&s).unwrap()
    }

    fn content_tokens(turn: &Turn) -> Vec<(String, usize)> {
        messages(turn)
            .iter()
            .map(|m| {
                let c = m["content"].as_str().unwrap();
                (
                    m["role"].as_str().unwrap().to_string(),
                    tok().encode_reference(c).len(),
                )
            })
            .collect()
    }

    fn params() -> DatasetParams {
        DatasetParams {
            seed: 5,
            ..DatasetParams::default()
        }
    }

    fn build(p: &DatasetParams, indices: &[u64]) -> Vec<Conversation> {
        let s = Synthetic::from_params(p).unwrap();
        s.build(Synth::new(tok()).unwrap(), indices).unwrap()
    }

    #[test]
    fn aiperf_defaults_one_turn_of_550_tokens() {
        let convs = build(&params(), &[0, 1, 2]);
        for c in &convs {
            assert_eq!(c.turns.len(), 1);
            let t = &c.turns[0];
            assert_eq!(t.delta_tokens, Some(550));
            assert_eq!(content_tokens(t), [("user".to_string(), 550)]);
            assert_eq!(t.max_tokens, None, "the run's --max-tokens");
            assert_eq!(t.delay_ns, 0);
        }
    }

    #[test]
    fn fixed_values_with_zero_stddev() {
        let p = DatasetParams {
            turn_mean: Some(3.0),
            isl_mean: Some(40.0),
            osl_mean: Some(17.0),
            turn_delay_mean_ms: Some(200.0),
            turn_delay_ratio: Some(0.5),
            ..params()
        };
        for c in build(&p, &[0, 7, 100]) {
            assert_eq!(c.turns.len(), 3);
            for (k, t) in c.turns.iter().enumerate() {
                assert_eq!(content_tokens(t), [("user".to_string(), 40)]);
                assert_eq!(t.max_tokens, Some(17));
                assert_eq!(t.delay_ns, if k == 0 { 0 } else { 100_000_000 });
            }
        }
    }

    #[test]
    fn distributions_are_roughly_right() {
        let p = DatasetParams {
            turn_mean: Some(4.0),
            turn_stddev: Some(1.5),
            isl_mean: Some(60.0),
            isl_stddev: Some(20.0),
            osl_mean: Some(30.0),
            osl_stddev: Some(10.0),
            turn_delay_mean_ms: Some(50.0),
            turn_delay_stddev_ms: Some(10.0),
            ..params()
        };
        let indices: Vec<u64> = (0..400).collect();
        let convs = build(&p, &indices);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let sd = |v: &[f64]| {
            let m = mean(v);
            (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        let turns: Vec<f64> = convs.iter().map(|c| c.turns.len() as f64).collect();
        let isl: Vec<f64> = convs
            .iter()
            .flat_map(|c| c.turns.iter().map(|t| f64::from(t.delta_tokens.unwrap())))
            .collect();
        let osl: Vec<f64> = convs
            .iter()
            .flat_map(|c| c.turns.iter().map(|t| f64::from(t.max_tokens.unwrap())))
            .collect();
        let delay_ms: Vec<f64> = convs
            .iter()
            .flat_map(|c| c.turns.iter().skip(1).map(|t| t.delay_ns as f64 / 1e6))
            .collect();
        // ceil() adds about half a unit to each mean.
        assert!((mean(&turns) - 4.5).abs() < 0.3, "turns {}", mean(&turns));
        assert!((sd(&turns) - 1.5).abs() < 0.3, "turns sd {}", sd(&turns));
        assert!((mean(&isl) - 60.5).abs() < 2.0, "isl {}", mean(&isl));
        assert!((sd(&isl) - 20.0).abs() < 2.0, "isl sd {}", sd(&isl));
        assert!((mean(&osl) - 30.5).abs() < 1.5, "osl {}", mean(&osl));
        assert!(
            (mean(&delay_ms) - 50.5).abs() < 1.5,
            "delay {}",
            mean(&delay_ms)
        );
        assert!(turns.iter().all(|&t| t >= 1.0));
        assert!(isl.iter().chain(&osl).all(|&n| n >= 1.0));
        assert!(delay_ms.iter().all(|&d| d >= 1.0 && d.fract() == 0.0));
        // Every prompt is exact.
        for c in convs.iter().take(20) {
            for t in &c.turns {
                assert_eq!(content_tokens(t)[0].1 as u32, t.delta_tokens.unwrap());
            }
        }
    }

    #[test]
    fn deterministic_and_independent_of_selection() {
        let p = DatasetParams {
            turn_mean: Some(3.0),
            turn_stddev: Some(2.0),
            isl_mean: Some(30.0),
            isl_stddev: Some(10.0),
            prefix_length: Some(12),
            prefix_count: Some(3),
            shared_system_prompt_length: Some(9),
            ..params()
        };
        let key = |cs: &[Conversation]| -> Vec<Vec<u8>> {
            cs.iter()
                .flat_map(|c| c.turns.iter().map(|t| t.delta_bytes()))
                .collect()
        };
        let all = build(&p, &(0..10).collect::<Vec<_>>());
        let some = build(&p, &[4, 8]);
        assert_eq!(key(&some), key(&[all[4].clone(), all[8].clone()]));
        assert_eq!(key(&all), key(&build(&p, &(0..10).collect::<Vec<_>>())));
        let other = build(
            &DatasetParams { seed: 6, ..p },
            &(0..10).collect::<Vec<_>>(),
        );
        assert_ne!(key(&all), key(&other));
    }

    #[test]
    fn shared_prefix_and_system_prompt_are_one_buffer() {
        let p = DatasetParams {
            turn_mean: Some(2.0),
            isl_mean: Some(25.0),
            prefix_length: Some(30),
            prefix_count: Some(2),
            shared_system_prompt_length: Some(11),
            ..params()
        };
        let convs = build(&p, &[0, 1, 2, 3]);
        for (i, c) in convs.iter().enumerate() {
            let first = &c.turns[0];
            assert_eq!(first.delta_tokens, Some(11 + 30 + 25));
            let msgs = content_tokens(first);
            assert_eq!(
                msgs,
                [("system".to_string(), 11), ("user".to_string(), 55)],
                "conversation {i}"
            );
            // Later turns carry neither.
            assert_eq!(content_tokens(&c.turns[1]), [("user".to_string(), 25)]);
            // Segments: system, comma, user opening, prefix, rest, close.
            assert_eq!(first.delta.len(), 6);
        }
        let ptr = |c: &Conversation, k: usize| c.turns[0].delta[k].as_ptr();
        // The system prompt is one allocation for all; prefix i mod 2.
        assert_eq!(ptr(&convs[0], 0), ptr(&convs[3], 0));
        assert_eq!(ptr(&convs[0], 3), ptr(&convs[2], 3));
        assert_eq!(ptr(&convs[1], 3), ptr(&convs[3], 3));
        assert_ne!(convs[0].turns[0].delta[3], convs[1].turns[0].delta[3]);
        // The prefix text is exactly the first 30 tokens of the user message.
        let user = messages(&convs[2].turns[0])[1]["content"]
            .as_str()
            .unwrap()
            .to_string();
        let prefix = String::from_utf8(convs[0].turns[0].delta[3].to_vec()).unwrap();
        assert!(user.starts_with(&prefix));
        assert_eq!(tok().encode_reference(&prefix).len(), 30);
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let err = |p: DatasetParams| Synthetic::from_params(&p).unwrap_err().to_string();
        assert!(err(DatasetParams {
            isl_mean: Some(0.0),
            ..params()
        })
        .starts_with("--synthetic-input-tokens-mean:"));
        assert!(err(DatasetParams {
            osl_stddev: Some(3.0),
            ..params()
        })
        .starts_with("--output-tokens-stddev:"));
        assert!(err(DatasetParams {
            turn_delay_stddev_ms: Some(3.0),
            ..params()
        })
        .starts_with("--conversation-turn-delay-stddev:"));
        assert!(err(DatasetParams {
            turn_delay_ratio: Some(2.0),
            ..params()
        })
        .starts_with("--conversation-turn-delay-ratio:"));
        assert!(err(DatasetParams {
            prefix_count: Some(3),
            ..params()
        })
        .starts_with("--prefix-count:"));
        // Flags of other sources are rejected before the source runs.
        let e = crate::workload::check_flags(
            "synthetic",
            &DatasetParams {
                max_turns: Some(3),
                ..params()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--max-turns is not read by --dataset synthetic"),
            "{e}"
        );
        assert!(err(DatasetParams {
            turn_mean: Some(1e9),
            ..params()
        })
        .starts_with("--conversation-turn-mean:"));
    }

    #[test]
    fn truncated_normal_never_negative_and_zero_stddev_is_the_mean() {
        let mut rng = synth::item_rng(1, 1);
        let n = Normal::new(1.0, 5.0);
        for _ in 0..1000 {
            assert!(n.sample_nonneg(&mut rng) >= 0.0);
            assert!(n.sample_count(&mut rng, 10) <= 10);
        }
        assert_eq!(Normal::new(2.5, 0.0).sample_count(&mut rng, 100), 3);
        assert_eq!(Normal::new(0.0, 0.0).sample_count(&mut rng, 100), 1);
    }
}
