//! Token-exact prompt synthesis shared by every source that makes text to a length, and the
//! parallel builder they run on.
//!
//! A prompt of `n` tokens is a contiguous run of the tokenizer's [single-token
//! words](Tokenizer::single_token_words) (each a space plus letters, never a special token)
//! starting at some offset and wrapping around the list. The tokenizer's pre-tokenization splits
//! such text at each space, so the count is `n` by construction; every text is still counted
//! ([`Tokenizer::count_words_text`]) and a mismatch is an error, never a silently wrong length.
//! Texts made this way can also be concatenated (blocks, prefixes) and their counts add up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::tokenizer::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum SynthesisError {
    #[error("could not synthesise a prompt of exactly {target} tokens (got {got})")]
    NotExact { target: u32, got: u32 },
    #[error(
        "tokenizer {tokenizer} has no single-token words (a space and 2-12 ASCII letters) to \
         build prompts from"
    )]
    NoWords { tokenizer: String },
    #[error("invalid synthesis parameters: {0}")]
    Invalid(String),
}

/// Makes exact-length texts with one tokenizer.
#[derive(Clone, Copy)]
pub struct Synth<'t> {
    tok: &'t Tokenizer,
    words: &'t [String],
}

impl<'t> Synth<'t> {
    pub fn new(tok: &'t Tokenizer) -> Result<Synth<'t>, SynthesisError> {
        let words = tok.single_token_words();
        if words.is_empty() {
            return Err(SynthesisError::NoWords {
                tokenizer: tok.name().to_string(),
            });
        }
        Ok(Synth { tok, words })
    }

    pub fn tokenizer(&self) -> &'t Tokenizer {
        self.tok
    }

    /// How many distinct offsets there are.
    pub fn vocabulary(&self) -> usize {
        self.words.len()
    }

    /// `n` tokens starting at a random offset drawn from `rng`.
    pub fn text(&self, n: u32, rng: &mut SmallRng) -> Result<String, SynthesisError> {
        let offset = rng.random_range(0..self.words.len());
        self.text_at(n, offset)
    }

    /// `n` tokens starting at word `offset` (mod the vocabulary).
    pub fn text_at(&self, n: u32, offset: usize) -> Result<String, SynthesisError> {
        let len = self.words.len();
        let mut text = String::with_capacity(n as usize * 8);
        for k in 0..n as usize {
            text.push_str(&self.words[(offset + k) % len]);
        }
        let got = self
            .tok
            .count_words_text(&text, (0..n as usize).map(|k| (offset + k) % len));
        if got != n as usize {
            return Err(SynthesisError::NotExact {
                target: n,
                got: got as u32,
            });
        }
        Ok(text)
    }
}

/// An RNG for item `index` of a build seeded with `seed`: independent of thread count and of
/// which other items are built, so `--dataset-offset`/`--shard` select the same items a full
/// build would make.
pub fn item_rng(seed: u64, index: u64) -> SmallRng {
    SmallRng::seed_from_u64(stream_seed(seed, index))
}

/// Both inputs through splitmix64, so neighbouring seeds and indices give unrelated streams.
pub fn stream_seed(seed: u64, index: u64) -> u64 {
    fn splitmix64(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    splitmix64(splitmix64(seed) ^ index)
}

/// Below this many items per thread, threads cost more than they save.
const MIN_ITEMS_PER_THREAD: usize = 8;

/// After this long, [`par_map`] shows a progress line on a terminal.
const PROGRESS_AFTER: Duration = Duration::from_secs(1);

/// `f(0..n)` on up to `available_parallelism()` threads, results in index order. Stops at the
/// first error (in index order). Shows `label: done/n` on stderr when it takes over a second and
/// stderr is a terminal.
pub fn par_map<T, E, F>(n: usize, label: &str, f: F) -> Result<Vec<T>, E>
where
    T: Send,
    E: Send,
    F: Fn(usize) -> Result<T, E> + Sync,
{
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    par_map_with(n, threads, label, f)
}

/// [`par_map`] on at most `threads` threads (the result does not depend on it).
pub fn par_map_with<T, E, F>(n: usize, threads: usize, label: &str, f: F) -> Result<Vec<T>, E>
where
    T: Send,
    E: Send,
    F: Fn(usize) -> Result<T, E> + Sync,
{
    use std::io::{IsTerminal, Write};
    let threads = threads.min(n.div_ceil(MIN_ITEMS_PER_THREAD)).max(1);
    if threads == 1 {
        return (0..n).map(f).collect();
    }
    let done = AtomicUsize::new(0);
    let next = AtomicUsize::new(0);
    // Items are handed out in small batches so a slow item does not stall one thread's range.
    let batch = (n / (threads * 16)).clamp(1, 64);
    let started = Instant::now();
    let show = std::io::stderr().is_terminal();
    let results: Vec<Vec<(usize, Result<T, E>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let lo = next.fetch_add(batch, Ordering::Relaxed);
                        if lo >= n {
                            break;
                        }
                        for i in lo..(lo + batch).min(n) {
                            let r = f(i);
                            let failed = r.is_err();
                            out.push((i, r));
                            done.fetch_add(1, Ordering::Relaxed);
                            if failed {
                                // Make the others stop taking work; the error is reported below.
                                next.store(n, Ordering::Relaxed);
                                return out;
                            }
                        }
                    }
                    out
                })
            })
            .collect();
        let mut shown = false;
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
            if show && started.elapsed() > PROGRESS_AFTER {
                eprint!("\r{label}: {}/{n}   ", done.load(Ordering::Relaxed));
                let _ = std::io::stderr().flush();
                shown = true;
            }
        }
        if shown {
            eprintln!("\r{label}: {n}/{n}   ");
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut slots: Vec<Option<Result<T, E>>> = (0..n).map(|_| None).collect();
    for part in results {
        for (i, r) in part {
            slots[i] = Some(r);
        }
    }
    let mut out = Vec::with_capacity(n);
    for slot in slots {
        match slot {
            Some(Ok(v)) => out.push(v),
            Some(Err(e)) => return Err(e),
            // Not built because an earlier-claimed item failed; that error comes first or later
            // in index order, and is returned when reached.
            None => continue,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::tokenizer::test_builtin as tok;

    #[test]
    fn texts_are_exact_and_concatenate() {
        let s = Synth::new(tok()).unwrap();
        let mut rng = item_rng(1, 2);
        let a = s.text(37, &mut rng).unwrap();
        let b = s.text(5, &mut rng).unwrap();
        assert_eq!(tok().encode_reference(&a).len(), 37);
        assert_eq!(tok().encode_reference(&format!("{a}{b}")).len(), 42);
        assert_eq!(s.text_at(0, 5).unwrap(), "");
    }

    #[test]
    fn par_map_keeps_order_and_stops_on_error() {
        let v = par_map_with(100, 3, "t", |i| Ok::<_, String>(i * 2)).unwrap();
        assert_eq!(v, (0..100).map(|i| i * 2).collect::<Vec<_>>());
        let e = par_map_with(100, 3, "t", |i| if i == 40 { Err(i) } else { Ok(i) });
        assert_eq!(e, Err(40));
    }
}
