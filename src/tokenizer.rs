//! Tokenizer: the builtin Qwen2 BPE vocabulary or a user's `tokenizer.json` / HF model directory,
//! plus the ChatML-like rendering that the sim counts prompt tokens over.
//!
//! The builtin is Qwen2's byte-level BPE (151,643 ranks + `<|endoftext|>`, `<|im_start|>`,
//! `<|im_end|>`), embedded as a compact merge table (`assets/qwen2-bpe.bin.gz`, built by
//! `scripts/build-builtin-tokenizer.py`; see `assets/README.md`). At load it is expanded into the
//! same `tokenizers::Tokenizer` that Qwen2's `tokenizer.json` would give: Split on Qwen2's regex
//! (Isolated), ByteLevel without regex, BPE whose merge order equals the rank order, ByteLevel
//! decoder, no normalizer.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot load tokenizer from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("the builtin tokenizer is corrupt: {0}")]
    Builtin(String),
}

/// The compact builtin asset (see the module docs).
static BUILTIN_ASSET: &[u8] = include_bytes!("../assets/qwen2-bpe.bin.gz");

/// Qwen2's pre-tokenization regex (identical to tiktoken's `PAT_STR` for Qwen).
pub const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Letters in a [`Tokenizer::single_token_words`] word (after its leading space).
const WORD_LETTERS: std::ops::RangeInclusive<usize> = 2..=12;

/// A loaded tokenizer. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    name: String,
    /// Sorted; computed once at load.
    allowed: Vec<u32>,
    /// Computed on first use (it encodes every candidate word once).
    words: OnceLock<Vec<String>>,
}

impl Tokenizer {
    /// The builtin tokenizer (no download needed).
    pub fn builtin() -> Result<Tokenizer, TokenizerError> {
        let inner = build_builtin(BUILTIN_ASSET)?;
        Ok(Self::wrap(inner, "builtin:qwen2".to_string()))
    }

    /// A `tokenizer.json` file, or a directory that holds one (a local HF model directory).
    pub fn from_path(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let err = |reason: String| TokenizerError::Load {
            path: path.to_path_buf(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        let file = if meta.is_dir() {
            let f = path.join("tokenizer.json");
            if !f.is_file() {
                return Err(err(
                    "the directory has no tokenizer.json (only HF tokenizer.json files are supported)"
                        .to_string(),
                ));
            }
            f
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file)
            .map_err(|e| err(format!("reading {}: {e}", file.display())))?;
        let mut inner: tokenizers::Tokenizer = text
            .parse()
            .map_err(|e| err(format!("not a valid tokenizer.json: {e}")))?;
        // Counting must see the whole text: a file's own truncation/padding would distort it.
        inner
            .with_truncation(None)
            .map_err(|e| err(format!("cannot disable truncation: {e}")))?;
        inner.with_padding(None);
        Ok(Self::wrap(inner, path.display().to_string()))
    }

    /// `--tokenizer-path` semantics: `None` or `"builtin"` gives the builtin.
    pub fn load(path: Option<&Path>) -> Result<Tokenizer, TokenizerError> {
        match path {
            None => Self::builtin(),
            Some(p) if p.as_os_str() == "builtin" => Self::builtin(),
            Some(p) => Self::from_path(p),
        }
    }

    fn wrap(inner: tokenizers::Tokenizer, name: String) -> Tokenizer {
        let allowed = compute_allowed(&inner);
        Tokenizer {
            inner,
            name,
            allowed,
            words: OnceLock::new(),
        }
    }

    /// A short name for reports ("builtin:qwen2" or the path).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The underlying HF tokenizer (e.g. to serialise it as `tokenizer.json`).
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text`, without adding special tokens (special tokens written in the text,
    /// like `<|im_start|>`, are still recognised, as chat servers do).
    pub fn try_encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.inner
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| e.to_string())
    }

    /// Token ids of `text`, without adding special tokens. Empty if the tokenizer fails, which a
    /// byte-level BPE never does (see [`Tokenizer::try_encode`]).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.try_encode(text).unwrap_or_default()
    }

    /// Number of tokens in `text`, without adding special tokens.
    pub fn count(&self, text: &str) -> usize {
        self.encode(text).len()
    }

    /// Text of `ids` (special tokens kept). Empty if an id is unknown to the tokenizer.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_default()
    }

    /// Ids usable for synthetic text: no special tokens, no `<0xHH>` byte-fallback tokens.
    pub fn allowed_ids(&self) -> &[u32] {
        &self.allowed
    }

    /// Words that start with a space and are each exactly one token, so joining N of them gives
    /// text of exactly N tokens. The sim builds its replies from these.
    ///
    /// Each is a space followed by 2–12 ASCII letters and encodes back to exactly its own token;
    /// sorted by token id. Computed on first call (≈ one encode per candidate).
    pub fn single_token_words(&self) -> &[String] {
        self.words.get_or_init(|| compute_words(self))
    }
}

/// Model vocabulary minus added/special tokens and `<0xHH>` byte-fallback tokens, sorted.
fn compute_allowed(inner: &tokenizers::Tokenizer) -> Vec<u32> {
    let added = inner.get_added_tokens_decoder();
    let mut ids: Vec<u32> = inner
        .get_vocab(false)
        .into_iter()
        .filter(|(tok, id)| !added.contains_key(id) && !is_byte_fallback(tok))
        .map(|(_, id)| id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn is_byte_fallback(tok: &str) -> bool {
    let b = tok.as_bytes();
    b.len() == 6
        && b.starts_with(b"<0x")
        && b[5] == b'>'
        && b[3].is_ascii_hexdigit()
        && b[4].is_ascii_hexdigit()
}

fn is_space_word(w: &str) -> bool {
    let b = w.as_bytes();
    b.first() == Some(&b' ')
        && WORD_LETTERS.contains(&(b.len() - 1))
        && b[1..].iter().all(u8::is_ascii_alphabetic)
}

fn compute_words(tok: &Tokenizer) -> Vec<String> {
    let vocab = tok.inner.get_vocab(false);
    let mut found: Vec<(u32, String)> = Vec::new();
    for (piece, id) in vocab {
        // Cheap filter on the model's own spelling ("Ġword", "▁word", " word"): one marker char
        // and then the letters. The decode/encode checks below are the real test.
        let mut chars = piece.chars();
        if chars.next().is_none() {
            continue;
        }
        let rest = chars.as_str();
        if !WORD_LETTERS.contains(&rest.len()) || !rest.bytes().all(|c| c.is_ascii_alphabetic()) {
            continue;
        }
        if tok.allowed.binary_search(&id).is_err() {
            continue;
        }
        let word = tok.decode(&[id]);
        if is_space_word(&word) && tok.try_encode(&word).is_ok_and(|ids| ids == [id]) {
            found.push((id, word));
        }
    }
    found.sort_unstable_by_key(|(id, _)| *id);
    found.into_iter().map(|(_, w)| w).collect()
}

/// GPT-2's byte → printable char table used by HF ByteLevel.
fn byte_level_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + n).expect("below the surrogate range");
            n += 1;
            c
        };
    }
    table
}

/// Decodes the compact asset (format in `scripts/build-builtin-tokenizer.py`) into a tokenizer.
fn build_builtin(asset: &[u8]) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let bad = |m: &str| TokenizerError::Builtin(m.to_string());
    let mut raw = Vec::with_capacity(1 << 21);
    flate2::read::GzDecoder::new(asset)
        .read_to_end(&mut raw)
        .map_err(|e| TokenizerError::Builtin(format!("gunzip: {e}")))?;
    let mut cur = Cursor(&raw);
    if cur.take(4)? != b"PQB1" {
        return Err(bad("bad magic"));
    }
    let n = cur.u32()? as usize;
    if !(256..(1 << 24)).contains(&n) {
        return Err(bad("bad rank count"));
    }
    let first = cur.take(256)?;
    let m = n - 256;
    let planes = cur.take(6 * m)?;
    let part = |side: usize, i: usize| -> usize {
        let p = |k: usize| planes[(side * 3 + k) * m + i] as usize;
        p(0) | p(1) << 8 | p(2) << 16
    };

    // Every token's bytes, as byte-level chars: ranks 0..255 are single bytes, rank r ≥ 256 is
    // the concatenation of its two (lower-ranked) merge parts.
    let table = byte_level_chars();
    let mut tokens: Vec<String> = Vec::with_capacity(n);
    tokens.extend(first.iter().map(|&b| table[b as usize].to_string()));
    let mut merges: Vec<(String, String)> = Vec::with_capacity(m);
    for i in 0..m {
        let (l, r) = (part(0, i), part(1, i));
        if l >= tokens.len() || r >= tokens.len() {
            return Err(bad("a merge refers to a later rank"));
        }
        let mut t = String::with_capacity(tokens[l].len() + tokens[r].len());
        t.push_str(&tokens[l]);
        t.push_str(&tokens[r]);
        merges.push((tokens[l].clone(), tokens[r].clone()));
        tokens.push(t);
    }
    let mut specials = Vec::new();
    for _ in 0..cur.u32()? {
        let id = cur.u32()?;
        let len = cur.u16()? as usize;
        let content = std::str::from_utf8(cur.take(len)?)
            .map_err(|_| bad("special token is not UTF-8"))?
            .to_string();
        specials.push((id, content));
    }
    if !cur.0.is_empty() {
        return Err(bad("trailing bytes"));
    }

    let vocab: Vocab = tokens
        .into_iter()
        .enumerate()
        .map(|(id, t)| (t, id as u32))
        .collect();
    if vocab.len() != n {
        return Err(bad("duplicate tokens"));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| TokenizerError::Builtin(format!("BPE: {e}")))?;

    let split = Split::new(
        SplitPattern::Regex(QWEN2_PATTERN.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| TokenizerError::Builtin(format!("regex: {e}")))?;
    let byte_level = ByteLevel::new(false, false, false);
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(byte_level),
    ]);

    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre));
    tok.with_post_processor(Some(byte_level));
    tok.with_decoder(Some(byte_level));
    for (id, content) in specials {
        tok.add_special_tokens(&[AddedToken::from(content.clone(), true)]);
        if tok.token_to_id(&content) != Some(id) {
            return Err(TokenizerError::Builtin(format!(
                "special token {content} did not get id {id}"
            )));
        }
    }
    Ok(tok)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, k: usize) -> Result<&'a [u8], TokenizerError> {
        if self.0.len() < k {
            return Err(TokenizerError::Builtin("truncated asset".to_string()));
        }
        let (head, tail) = self.0.split_at(k);
        self.0 = tail;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, TokenizerError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u16(&mut self) -> Result<u16, TokenizerError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
}

/// Appends the ChatML-like rendering of `messages` (role, content) to `out`, ending with the
/// generation prompt for the assistant, as chat servers render a request before tokenizing it.
pub fn render_chat<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str)>, out: &mut String) {
    for (role, content) in messages {
        out.push_str("<|im_start|>");
        out.push_str(role);
        out.push('\n');
        out.push_str(content);
        out.push_str("<|im_end|>\n");
    }
    out.push_str("<|im_start|>assistant\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::sync::OnceLock;

    fn tok() -> &'static Tokenizer {
        static T: OnceLock<Tokenizer> = OnceLock::new();
        T.get_or_init(|| Tokenizer::builtin().expect("builtin loads"))
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("parley-tok-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn builtin_shape() {
        let t = tok();
        assert_eq!(t.name(), "builtin:qwen2");
        assert_eq!(t.hf().get_vocab_size(false), 151_643);
        assert_eq!(t.hf().token_to_id("<|endoftext|>"), Some(151_643));
        assert_eq!(t.hf().token_to_id("<|im_start|>"), Some(151_644));
        assert_eq!(t.hf().token_to_id("<|im_end|>"), Some(151_645));
        assert_eq!(t.encode(""), Vec::<u32>::new());
        // Known Qwen2 ids.
        assert_eq!(t.encode("Hello world"), vec![9707, 1879]);
        assert_eq!(t.encode("!"), vec![0]);
    }

    /// Reference encodings produced by tiktoken with the original ranks and regex (written by
    /// `scripts/build-builtin-tokenizer.py --validate`): ASCII, unicode, code, whitespace,
    /// digits, random tokens/bytes, text with special tokens.
    #[test]
    fn matches_tiktoken_golden() {
        let golden = include_str!("../assets/qwen2-golden.jsonl");
        let mut n = 0;
        for line in golden.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = v["text"].as_str().unwrap();
            let want: Vec<u32> = v["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(tok().encode(text), want, "text {text:?}");
            n += 1;
        }
        assert!(n >= 300, "golden has {n} lines");
    }

    #[test]
    fn special_tokens_in_text_are_recognised_and_decode_roundtrips() {
        let t = tok();
        let mut s = String::new();
        render_chat([("user", "Hi there")], &mut s);
        let ids = t.encode(&s);
        assert_eq!(ids[0], 151_644);
        assert_eq!(ids.iter().filter(|&&i| i == 151_645).count(), 1);
        assert_eq!(t.decode(&ids), s);
        let text = "naïve café — 数据 😀\n\tfn main() { 0x1F }";
        assert_eq!(t.decode(&t.encode(text)), text);
    }

    #[test]
    fn allowed_ids_exclude_specials() {
        let t = tok();
        let a = t.allowed_ids();
        assert_eq!(a.len(), 151_643);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        for special in [151_643, 151_644, 151_645] {
            assert!(a.binary_search(&special).is_err());
        }
    }

    #[test]
    fn byte_fallback_detection() {
        assert!(is_byte_fallback("<0x0A>"));
        assert!(is_byte_fallback("<0xfF>"));
        assert!(!is_byte_fallback("<0x0A"));
        assert!(!is_byte_fallback("<0xZZ>"));
        assert!(!is_byte_fallback("<0x0AB>"));
    }

    #[test]
    fn single_token_words_are_single_tokens_and_join_exactly() {
        let t = tok();
        let w = t.single_token_words();
        assert!(w.len() > 20_000, "only {} words", w.len());
        assert!(w.iter().all(|x| is_space_word(x)));
        for x in w.iter().step_by(97) {
            assert_eq!(t.count(x), 1, "{x:?}");
        }
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..300 {
            let n = rng.random_range(1..=300);
            let mut s = String::new();
            for _ in 0..n {
                s.push_str(&w[rng.random_range(0..w.len())]);
            }
            assert_eq!(t.count(&s), n, "{s:?}");
        }
    }

    #[test]
    fn from_path_file_and_directory() {
        // Serialise the builtin as tokenizer.json, load it back both ways, compare encodings.
        let json = tok().hf().to_string(false).unwrap();
        let dir = scratch_dir("dir");
        std::fs::write(dir.join("tokenizer.json"), &json).unwrap();
        let by_dir = Tokenizer::from_path(&dir).unwrap();
        let by_file = Tokenizer::load(Some(&dir.join("tokenizer.json"))).unwrap();
        assert_eq!(by_dir.name(), dir.display().to_string());
        let text = "The quick brown fox — 123 <|im_end|>\n\n  x";
        assert_eq!(by_dir.encode(text), tok().encode(text));
        assert_eq!(by_file.encode(text), tok().encode(text));
        assert_eq!(by_dir.allowed_ids(), tok().allowed_ids());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn from_path_errors_name_the_path() {
        let dir = scratch_dir("errors");
        let cases = [
            dir.join("missing.json"),
            dir.clone(), // a directory without tokenizer.json
            {
                let p = dir.join("garbage.json");
                std::fs::write(&p, "{not json").unwrap();
                p
            },
        ];
        for p in cases {
            let e = Tokenizer::from_path(&p).err().expect("must fail");
            let msg = e.to_string();
            assert!(msg.contains(&p.display().to_string()), "{msg}");
            assert!(matches!(e, TokenizerError::Load { .. }));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_asset_is_an_error() {
        assert!(matches!(
            build_builtin(b"not gzip"),
            Err(TokenizerError::Builtin(_))
        ));
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(BUILTIN_ASSET)
            .read_to_end(&mut raw)
            .unwrap();
        raw.truncate(raw.len() / 2);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        let e = build_builtin(&gz.finish().unwrap()).err().unwrap();
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    /// Timing (run with `cargo test --profile bench-fast --lib tokenizer -- --ignored
    /// --nocapture`). With PARLEY_DUMP_TOKENIZER_JSON=path it also writes the builtin as a
    /// tokenizer.json, for `scripts/build-builtin-tokenizer.py --check-json path --validate N`.
    #[test]
    #[ignore]
    fn builtin_load_time() {
        for _ in 0..3 {
            let t0 = std::time::Instant::now();
            let t = Tokenizer::builtin().unwrap();
            let load = t0.elapsed();
            let t1 = std::time::Instant::now();
            let words = t.single_token_words().len();
            let words_t = t1.elapsed();
            let text: String = t.single_token_words()[..4096].concat();
            let t2 = std::time::Instant::now();
            let n = t.count(&text);
            let enc = t2.elapsed();
            println!(
                "builtin load {load:?}; single_token_words {words} in {words_t:?}; \
                 encode {n} tokens in {enc:?} ({:.2} µs/token)",
                enc.as_secs_f64() * 1e6 / n as f64
            );
        }
        if let Ok(p) = std::env::var("PARLEY_DUMP_TOKENIZER_JSON") {
            std::fs::write(&p, tok().hf().to_string(false).unwrap()).unwrap();
            println!("wrote {p}");
        }
    }
}
