//! `random_multi_turn`: evalscope's synthetic multi-turn source. (Owned by the tokenizer work.)
//!
//! As evalscope (`plugin/datasets/multi_turn.py`): each conversation has `U[min_turns,
//! max_turns]` user turns, each `U[min_prompt_tokens, max_prompt_tokens]` bare tokens long (no chat
//! template counted), made of a contiguous slice of the vocabulary starting at a random offset.
//! Where evalscope slices token ids and then decodes / re-encodes / truncates to converge on the
//! length, we slice the tokenizer's [single-token words](Tokenizer::single_token_words) (wrapping
//! around the list), so the text is `n` tokens by construction. Every turn is then counted with
//! the tokenizer ([`Tokenizer::count_words_text`]: its own pre-tokenization must split the text
//! into exactly the placed words, else a full count) and a mismatch is an error
//! ([`SynthesisError::NotExact`]), never a silently wrong length.
//!
//! `--shared-system-prompt-length`, `--prefix-length` and `--prefix-count` work as for
//! `synthetic` ([`SharedSpec`]): the system prompt and prefix go in front of the first turn, on top
//! of its drawn length.
//!
//! **Determinism.** Conversation `i` draws from its own `SmallRng` seeded from `(seed, i)`, so the
//! output depends only on the parameters, the tokenizer and the `rand` version — not on how many
//! threads build it. Conversations are built in parallel on `available_parallelism()` threads.

use rand::Rng;

use crate::tokenizer::Tokenizer;
pub use crate::workload::synth::SynthesisError;
use crate::workload::synth::{self, Synth};
use crate::workload::synthetic::SharedSpec;
use crate::workload::{
    BuildContext, Built, Conversation, DatasetError, DatasetFlag, PathUse, Selection, Source, Turn,
};

/// Parameters, already validated by the plan.
#[derive(Clone, Debug)]
pub struct RandomMultiTurn {
    pub conversations: usize,
    pub min_turns: u32,
    pub max_turns: u32,
    pub min_prompt_tokens: u32,
    pub max_prompt_tokens: u32,
    pub seed: u64,
}

/// The registered source.
pub struct RandomMultiTurnSource;

/// Defaults when the flags are not given (evalscope requires --max-turns; we default it).
pub const DEFAULT_MIN_TURNS: u32 = 1;
pub const DEFAULT_MAX_TURNS: u32 = 4;
pub const DEFAULT_MIN_PROMPT_LENGTH: u32 = 64;
pub const DEFAULT_MAX_PROMPT_LENGTH: u32 = 256;

impl Source for RandomMultiTurnSource {
    fn names(&self) -> &'static [&'static str] {
        &["random_multi_turn"]
    }

    fn path_use(&self) -> PathUse {
        PathUse::None
    }

    fn describe(&self) -> &'static str {
        "evalscope's synthetic multi-turn: U[min,max] turns of U[min,max]-token user messages"
    }

    fn flags(&self) -> &'static [DatasetFlag] {
        &[
            DatasetFlag::MinTurns,
            DatasetFlag::MaxTurns,
            DatasetFlag::MinPromptLength,
            DatasetFlag::MaxPromptLength,
            DatasetFlag::PrefixLength,
            DatasetFlag::PrefixCount,
            DatasetFlag::SharedSystemPromptLength,
        ]
    }

    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Built, DatasetError> {
        let p = ctx.params;
        let params = RandomMultiTurn {
            conversations: ctx.selection.limit,
            min_turns: p.min_turns.unwrap_or(DEFAULT_MIN_TURNS),
            max_turns: p.max_turns.unwrap_or(DEFAULT_MAX_TURNS),
            min_prompt_tokens: p.min_prompt_length.unwrap_or(DEFAULT_MIN_PROMPT_LENGTH),
            max_prompt_tokens: p.max_prompt_length.unwrap_or(DEFAULT_MAX_PROMPT_LENGTH),
            seed: p.seed,
        };
        // --shared-system-prompt-length / --prefix-length / --prefix-count, as for `synthetic`.
        let shared = SharedSpec::from_params(p)?;
        let mut conversations = params.build_selected(ctx.tokenizer, ctx.selection)?;
        if !shared.is_empty() {
            let indices: Vec<u64> = ctx.selection.generated().collect();
            let parts = shared.build(Synth::new(ctx.tokenizer)?, params.seed, &indices)?;
            for (c, &i) in conversations.iter_mut().zip(&indices) {
                parts.apply_to_user_turn(i, &mut c.turns[0])?;
            }
        }
        Ok(Built {
            conversations,
            filtered: 0,
        })
    }
}

impl RandomMultiTurn {
    pub fn build(&self, tok: &Tokenizer) -> Result<Vec<Conversation>, SynthesisError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.build_with_threads(tok, threads)
    }

    /// [`RandomMultiTurn::build`] on at most `threads` threads (the result does not depend on it).
    pub fn build_with_threads(
        &self,
        tok: &Tokenizer,
        threads: usize,
    ) -> Result<Vec<Conversation>, SynthesisError> {
        let sel = Selection {
            limit: self.conversations,
            ..Selection::default()
        };
        self.build_inner(tok, sel, threads)
    }

    /// The conversations `selection` picks from the unbounded sequence this seed defines.
    pub fn build_selected(
        &self,
        tok: &Tokenizer,
        selection: Selection,
    ) -> Result<Vec<Conversation>, SynthesisError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.build_inner(tok, selection, threads)
    }

    fn build_inner(
        &self,
        tok: &Tokenizer,
        selection: Selection,
        threads: usize,
    ) -> Result<Vec<Conversation>, SynthesisError> {
        self.validate()?;
        let synth = match Synth::new(tok) {
            Ok(s) => Some(s),
            Err(e) if self.max_prompt_tokens > 0 => return Err(e),
            Err(_) => None,
        };
        let indices: Vec<u64> = selection.generated().collect();
        synth::par_map_with(indices.len(), threads, "synthesizing", |k| {
            self.conversation(synth, indices[k])
        })
    }

    fn validate(&self) -> Result<(), SynthesisError> {
        let bad = |m: String| Err(SynthesisError::Invalid(m));
        if self.min_turns == 0 || self.min_turns > self.max_turns {
            return bad(format!(
                "turns must satisfy 1 <= min ({}) <= max ({})",
                self.min_turns, self.max_turns
            ));
        }
        if self.min_prompt_tokens > self.max_prompt_tokens {
            return bad(format!(
                "prompt tokens must satisfy min ({}) <= max ({})",
                self.min_prompt_tokens, self.max_prompt_tokens
            ));
        }
        Ok(())
    }

    /// Conversation `index`, from its own RNG stream.
    fn conversation(
        &self,
        synth: Option<Synth<'_>>,
        index: u64,
    ) -> Result<Conversation, SynthesisError> {
        let mut rng = synth::item_rng(self.seed, index);
        let turns = rng.random_range(self.min_turns..=self.max_turns);
        let mut conv = Conversation::live(Vec::with_capacity(turns as usize));
        for _ in 0..turns {
            let target = rng.random_range(self.min_prompt_tokens..=self.max_prompt_tokens);
            let text = match synth {
                Some(s) => s.text(target, &mut rng)?,
                None => String::new(),
            };
            conv.turns.push(Turn::user(&text, Some(target)));
        }
        Ok(conv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::tokenizer::test_builtin as tok;

    fn params(seed: u64) -> RandomMultiTurn {
        RandomMultiTurn {
            conversations: 40,
            min_turns: 1,
            max_turns: 6,
            min_prompt_tokens: 1,
            max_prompt_tokens: 700,
            seed,
        }
    }

    fn content(turn: &Turn) -> String {
        let v: serde_json::Value = serde_json::from_slice(&turn.delta_bytes()).unwrap();
        assert_eq!(v["role"], "user");
        v["content"].as_str().unwrap().to_string()
    }

    #[test]
    fn exact_token_counts_and_ranges() {
        let p = params(1);
        let convs = p.build(tok()).unwrap();
        assert_eq!(convs.len(), p.conversations);
        let mut turns_seen = std::collections::BTreeSet::new();
        let mut total = 0;
        for c in &convs {
            assert!((1..=6).contains(&c.turns.len()));
            turns_seen.insert(c.turns.len());
            for t in &c.turns {
                let n = t.delta_tokens.unwrap();
                assert!((1..=700).contains(&n));
                // Counted independently, through the full tokenizers pipeline.
                assert_eq!(tok().encode_reference(&content(t)).len(), n as usize);
                assert_eq!(t.max_tokens, None);
                assert_eq!(t.delay_ns, 0);
                total += 1;
            }
        }
        assert!(total > 80, "{total} turns");
        assert!(turns_seen.len() >= 4, "turn counts {turns_seen:?}");
    }

    #[test]
    fn many_exact_lengths_including_range_ends() {
        // Small range: both ends must occur; and lengths 0 and 1.
        for (lo, hi) in [(0, 3), (1, 1), (255, 258), (4000, 4100)] {
            let p = RandomMultiTurn {
                conversations: 30,
                min_turns: 2,
                max_turns: 3,
                min_prompt_tokens: lo,
                max_prompt_tokens: hi,
                seed: 9,
            };
            let convs = p.build(tok()).unwrap();
            let lens: Vec<u32> = convs
                .iter()
                .flat_map(|c| c.turns.iter().map(|t| t.delta_tokens.unwrap()))
                .collect();
            assert!(lens.iter().all(|n| (lo..=hi).contains(n)));
            if hi - lo < 8 {
                assert!(
                    lens.contains(&lo) && lens.contains(&hi),
                    "{lo}..{hi}: {lens:?}"
                );
            }
            for c in &convs {
                for t in &c.turns {
                    let text = content(t);
                    assert_eq!(
                        tok().encode_reference(&text).len() as u32,
                        t.delta_tokens.unwrap()
                    );
                }
            }
        }
    }

    #[test]
    fn contiguous_word_slices() {
        let words = tok().single_token_words();
        let convs = params(3).build(tok()).unwrap();
        let text = content(&convs[0].turns[0]);
        let first = format!(" {}", text.split(' ').nth(1).unwrap());
        let start = words.iter().position(|w| *w == first).unwrap();
        let n = convs[0].turns[0].delta_tokens.unwrap() as usize;
        let expect: String = (0..n)
            .map(|k| words[(start + k) % words.len()].as_str())
            .collect();
        assert_eq!(text, expect);
    }

    #[test]
    fn deterministic_per_seed_and_thread_count() {
        let key = |cs: &[Conversation]| -> Vec<(Vec<u8>, Option<u32>)> {
            cs.iter()
                .flat_map(|c| c.turns.iter().map(|t| (t.delta_bytes(), t.delta_tokens)))
                .collect()
        };
        let a = key(&params(42).build_with_threads(tok(), 1).unwrap());
        let b = key(&params(42).build_with_threads(tok(), 3).unwrap());
        let c = key(&params(42).build(tok()).unwrap());
        assert_eq!(a, b);
        assert_eq!(a, c);
        let d = key(&params(43).build(tok()).unwrap());
        assert_ne!(a, d);
        // Conversations differ from one another too.
        let convs = params(42).build(tok()).unwrap();
        assert_ne!(convs[0].turns[0].delta, convs[1].turns[0].delta);
    }

    #[test]
    fn invalid_parameters_are_errors() {
        let mut p = params(1);
        p.min_turns = 0;
        assert!(matches!(p.build(tok()), Err(SynthesisError::Invalid(_))));
        let mut p = params(1);
        p.min_prompt_tokens = 10;
        p.max_prompt_tokens = 9;
        assert!(matches!(p.build(tok()), Err(SynthesisError::Invalid(_))));
        let mut p = params(1);
        p.conversations = 0;
        assert!(p.build(tok()).unwrap().is_empty());
    }

    fn word_level(dir_name: &str, vocab: &str) -> Tokenizer {
        let dir =
            std::env::temp_dir().join(format!("parley-rmt-{}-{dir_name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = format!(
            r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
            "normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,
            "model":{{"type":"WordLevel","vocab":{vocab},"unk_token":"[UNK]"}}}}"#
        );
        std::fs::write(dir.join("tokenizer.json"), json).unwrap();
        let t = Tokenizer::from_path(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        t
    }

    #[test]
    fn tokenizer_without_words_is_an_error() {
        let t = word_level("nowords", r#"{"a":0,"[UNK]":1}"#);
        let e = params(1).build(&t).unwrap_err();
        assert!(matches!(e, SynthesisError::NoWords { .. }), "{e}");
    }

    /// A tokenizer whose single-token words do not join (no pre-tokenizer: the whole text is
    /// one "word") must give NotExact, not a wrong length.
    #[test]
    fn non_composable_tokenizer_is_not_exact() {
        let t = word_level("nojoin", r#"{" ab":0," cd":1," ab cd":2,"[UNK]":3}"#);
        assert_eq!(t.single_token_words(), [" ab", " cd"]);
        let mut p = params(1);
        p.min_prompt_tokens = 2;
        p.max_prompt_tokens = 2;
        let e = p.build(&t).unwrap_err();
        assert!(
            matches!(e, SynthesisError::NotExact { target: 2, got: 1 }),
            "{e}"
        );
    }

    /// `cargo test --profile bench-fast --lib random_multi_turn -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn synthesis_time() {
        let p = RandomMultiTurn {
            conversations: 100,
            min_turns: 5,
            max_turns: 5,
            min_prompt_tokens: 512,
            max_prompt_tokens: 512,
            seed: 1,
        };
        let tok = tok();
        for threads in [1, 2] {
            for _ in 0..3 {
                let t0 = std::time::Instant::now();
                let convs = p.build_with_threads(tok, threads).unwrap();
                let el = t0.elapsed();
                let turns: usize = convs.iter().map(|c| c.turns.len()).sum();
                println!("{threads} thread(s): 100 conversations x 5 turns x 512 tokens ({turns} turns) in {el:?}");
            }
        }
        let t0 = std::time::Instant::now();
        let t = Tokenizer::builtin().unwrap();
        let load = t0.elapsed();
        let t1 = std::time::Instant::now();
        p.build(&t).unwrap();
        println!("cold: load {load:?} + first build {:?}", t1.elapsed());
    }
}
