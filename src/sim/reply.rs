//! Reply text: N words drawn from the tokenizer's single-token words, so a reply of N words is
//! exactly N tokens, deterministic from `--seed` and the request.
//!
//! The words are JSON-escaped once at start-up; producing a chunk only copies escaped bytes.

use bytes::BufMut;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::cache::fmix64;
use super::record::fnv1a_update;
use super::SimError;
use crate::tokenizer::Tokenizer;

/// The vocabulary replies are made of.
pub(crate) struct ReplyWords {
    /// The word as text (with its leading space).
    raw: Vec<Box<str>>,
    /// The word as the inside of a JSON string.
    escaped: Vec<Box<str>>,
    /// Its token id.
    ids: Vec<u32>,
    /// Longest escaped word, to size chunk buffers.
    max_escaped_len: usize,
}

impl ReplyWords {
    /// Takes `tokenizer.single_token_words()`, keeping those that really encode to one token.
    pub(crate) fn new(tokenizer: &Tokenizer) -> Result<Self, SimError> {
        Self::from_words(
            tokenizer
                .single_token_words()
                .iter()
                .map(|w| (w.as_str(), tokenizer.encode(w))),
        )
    }

    pub(crate) fn from_words<'a>(
        words: impl IntoIterator<Item = (&'a str, Vec<u32>)>,
    ) -> Result<Self, SimError> {
        let mut out = ReplyWords {
            raw: Vec::new(),
            escaped: Vec::new(),
            ids: Vec::new(),
            max_escaped_len: 0,
        };
        for (word, ids) in words {
            if ids.len() != 1 || word.is_empty() {
                continue;
            }
            let quoted = serde_json::to_string(word).map_err(|e| SimError::Words(e.to_string()))?;
            let escaped: Box<str> = quoted[1..quoted.len() - 1].into();
            out.max_escaped_len = out.max_escaped_len.max(escaped.len());
            out.raw.push(word.into());
            out.escaped.push(escaped);
            out.ids.push(ids[0]);
        }
        if out.raw.is_empty() {
            return Err(SimError::Words(
                "the tokenizer offers no single-token words to build replies from".into(),
            ));
        }
        Ok(out)
    }

    pub(crate) fn len(&self) -> usize {
        self.raw.len()
    }

    pub(crate) fn max_escaped_len(&self) -> usize {
        self.max_escaped_len
    }
}

/// Produces one reply word by word; owned by a running request.
pub(crate) struct ReplyGen {
    rng: SmallRng,
    /// FNV-1a of the raw text produced so far.
    hash: u64,
}

impl ReplyGen {
    /// `seed` is `--seed`; `request_key` identifies the request's content.
    pub(crate) fn new(seed: u64, request_key: u64) -> Self {
        ReplyGen {
            rng: SmallRng::seed_from_u64(fmix64(seed ^ fmix64(request_key))),
            hash: super::record::fnv1a_start(),
        }
    }

    /// Appends `count` escaped words to `out` and their token ids to `ids` (if given).
    #[inline]
    pub(crate) fn push_words(
        &mut self,
        words: &ReplyWords,
        count: u32,
        out: &mut impl BufMut,
        mut ids: Option<&mut Vec<u32>>,
    ) {
        for _ in 0..count {
            let i = self.rng.random_range(0..words.len());
            out.put_slice(words.escaped[i].as_bytes());
            self.hash = fnv1a_update(self.hash, words.raw[i].as_bytes());
            if let Some(ids) = ids.as_deref_mut() {
                ids.push(words.ids[i]);
            }
        }
    }

    /// [`super::record::content_hash`] of the text produced so far.
    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sim::record::content_hash;

    pub(crate) fn toy_words() -> ReplyWords {
        let words = [
            (" alpha", vec![1]),
            (" beta", vec![2]),
            (" two words", vec![3, 4]), // not one token: skipped
            (" say\"hi\"", vec![5]),
            (" gamma", vec![6]),
        ];
        ReplyWords::from_words(words.iter().map(|(w, i)| (*w, i.clone()))).unwrap()
    }

    #[test]
    fn escapes_once_and_skips_multi_token_words() {
        let w = toy_words();
        assert_eq!(w.len(), 4);
        assert_eq!(&*w.escaped[2], " say\\\"hi\\\"");
        assert_eq!(w.ids, vec![1, 2, 5, 6]);
        assert!(ReplyWords::from_words(std::iter::empty()).is_err());
    }

    #[test]
    fn deterministic_and_hash_matches_text() {
        let w = toy_words();
        let run = |seed, key, chunks: &[u32]| {
            let mut g = ReplyGen::new(seed, key);
            let mut out: Vec<u8> = Vec::new();
            let mut ids = Vec::new();
            for &c in chunks {
                g.push_words(&w, c, &mut out, Some(&mut ids));
            }
            (String::from_utf8(out).unwrap(), ids, g.hash())
        };
        // The same words however the reply is cut into chunks.
        let (a, ids_a, ha) = run(7, 42, &[10]);
        let (b, ids_b, hb) = run(7, 42, &[3, 3, 4]);
        assert_eq!(a, b);
        assert_eq!(ids_a, ids_b);
        assert_eq!(ha, hb);
        assert_eq!(ids_a.len(), 10);
        // The hash is over the unescaped text.
        let text: String = serde_json::from_str(&format!("\"{a}\"")).unwrap();
        assert_eq!(ha, content_hash(&text));
        // Another seed or another request gives another reply.
        assert_ne!(run(8, 42, &[10]).0, a);
        assert_ne!(run(7, 43, &[10]).0, a);
    }
}
