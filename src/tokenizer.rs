//! Tokenizer: the builtin Qwen2 BPE vocabulary or a user's `tokenizer.json` / HF model directory,
//! plus the ChatML-like rendering that the sim counts prompt tokens over.
//!
//! The builtin is Qwen2's byte-level BPE (151,643 ranks + `<|endoftext|>`, `<|im_start|>`,
//! `<|im_end|>`), embedded as a compact merge table (`assets/qwen2-bpe.bin.gz`, ≈ 0.5 MB, built by
//! `scripts/build-builtin-tokenizer.py`; see `assets/README.md`). At load it is expanded into the
//! same `tokenizers::Tokenizer` that Qwen2's `tokenizer.json` would give: Split on Qwen2's regex
//! (Isolated), ByteLevel without regex, BPE whose merge order equals the rank order, ByteLevel
//! decoder, no normalizer.
//!
//! **Fast path.** For tokenizers of exactly that shape (no normalizer; Split(regex, Isolated) then
//! ByteLevel(no prefix space, no regex); BPE without dropout or affixes; plain added tokens — the
//! builtin, Qwen2/2.5/3 and Llama-3 `tokenizer.json` files), [`Tokenizer::encode`] and
//! [`Tokenizer::count`] run the same steps as `tokenizers` — leftmost-longest added-token split, the
//! tokenizer's own compiled split regex, byte-level mapping, the tokenizer's own BPE model — but
//! without building an `Encoding` (offsets, alignments, token strings), which is most of its cost.
//! A pre-token that is a whole vocabulary token maps straight to its id when that is what BPE would
//! give anyway (`ignore_merges`, or the builtin, whose every token is reachable through its own
//! merges — checked by a unit test). `tests` compare both paths on tiktoken's reference ids.
//! [`Tokenizer::encode_reference`] always uses the full `tokenizers` pipeline.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::utils::SysRegex;
use tokenizers::{AddedToken, Model, ModelWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::template::ChatTemplate;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot load tokenizer from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("the builtin tokenizer is corrupt: {0}")]
    Builtin(String),
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
}

/// The compact builtin asset (see the module docs).
static BUILTIN_ASSET: &[u8] = include_bytes!("../assets/qwen2-bpe.bin.gz");

/// Qwen2's pre-tokenization regex (identical to tiktoken's `PAT_STR` for Qwen).
pub const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Letters in a [`Tokenizer::single_token_words`] word (after its leading space).
const WORD_LETTERS: std::ops::RangeInclusive<usize> = 2..=12;

/// GPT-2's byte → printable char table used by HF ByteLevel.
const BYTE_CHARS: [char; 256] = {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    let mut b = 0usize;
    while b < 256 {
        let printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        table[b] = if printable {
            b as u8 as char
        } else {
            n += 1;
            match char::from_u32(256 + n - 1) {
                Some(c) => c,
                None => '\0',
            }
        };
        b += 1;
    }
    table
};

/// A loaded tokenizer. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    name: String,
    /// Sorted; computed once at load.
    allowed: Vec<u32>,
    /// Precomputed for the builtin; computed on first use for others.
    words: OnceLock<Vec<String>>,
    fast: Option<FastPath>,
    /// The directory's chat template (`crate::template`), when loaded from a directory with one.
    chat_template: Option<ChatTemplate>,
}

impl Tokenizer {
    /// The builtin tokenizer (no download needed). Each call builds a new one (≈ 0.1 s); see
    /// [`Tokenizer::builtin_shared`] to build it once per process.
    pub fn builtin() -> Result<Tokenizer, TokenizerError> {
        let Builtin {
            inner,
            allowed,
            words,
        } = build_builtin(BUILTIN_ASSET)?;
        let fast = FastPath::new(&inner, true);
        if fast.is_none() {
            return Err(TokenizerError::Builtin("unexpected pipeline shape".into()));
        }
        Ok(Tokenizer {
            inner,
            name: "builtin:qwen2".to_string(),
            allowed,
            words: OnceLock::from(words),
            fast,
            chat_template: None,
        })
    }

    /// The builtin tokenizer, built once per process and shared (e.g. by the sim and the client).
    pub fn builtin_shared() -> Result<Arc<Tokenizer>, TokenizerError> {
        static SHARED: OnceLock<Arc<Tokenizer>> = OnceLock::new();
        if let Some(t) = SHARED.get() {
            return Ok(t.clone());
        }
        let t = Arc::new(Self::builtin()?);
        Ok(SHARED.get_or_init(|| t).clone())
    }

    /// A `tokenizer.json` file, or a directory that holds one (a local HF model directory) and
    /// maybe a chat template (`chat_template.jinja`, `tokenizer_config.json`; see
    /// `crate::template`). A file alone has no template.
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
        let chat_template = if meta.is_dir() {
            ChatTemplate::from_dir(path)?
        } else {
            None
        };
        let allowed = compute_allowed(&inner);
        let fast = FastPath::new(&inner, false);
        Ok(Tokenizer {
            inner,
            name: path.display().to_string(),
            allowed,
            words: OnceLock::new(),
            fast,
            chat_template,
        })
    }

    /// `--tokenizer-path` semantics: `None` or `"builtin"` gives the builtin.
    pub fn load(path: Option<&Path>) -> Result<Tokenizer, TokenizerError> {
        match path {
            None => Self::builtin(),
            Some(p) if p.as_os_str() == "builtin" => Self::builtin(),
            Some(p) => Self::from_path(p),
        }
    }

    /// A short name for reports ("builtin:qwen2" or the path).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model's chat template, when the tokenizer directory has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// [`Tokenizer::count`] of `text`, reusing what `state` remembers of the previous text
    /// counted with it: the tokens up to an added token that both texts share (and far enough
    /// from where they differ that no longer added token could start there) are not counted
    /// again. Exact: the fast path splits added tokens first, left to right, and counts each
    /// stretch between them on its own, so its count after an added token depends only on the
    /// text up to it. Without the fast path, a plain count.
    pub fn count_incremental(&self, state: &mut IncrementalCount, text: String) -> u64 {
        let Some(fast) = &self.fast else {
            return self.count(&text) as u64;
        };
        let shared = state
            .text
            .bytes()
            .zip(text.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        let longest = fast.added.first().map_or(0, |(t, _)| t.len());
        let keep = state
            .marks
            .partition_point(|&(pos, _)| pos + longest <= shared);
        state.marks.truncate(keep);
        let (start, before) = state.marks.last().copied().unwrap_or((0, 0));
        let n = std::cell::Cell::new(before);
        let marks = std::cell::RefCell::new(std::mem::take(&mut state.marks));
        let counted = fast.encode_from(
            &self.inner,
            &text,
            start,
            &mut |_| n.set(n.get() + 1),
            &mut |end| marks.borrow_mut().push((end, n.get())),
        );
        state.marks = marks.into_inner();
        let total = match counted {
            Ok(()) => n.get(),
            Err(_) => {
                state.marks.clear();
                self.count(&text) as u64
            }
        };
        state.text = text;
        total
    }

    /// The underlying HF tokenizer (e.g. to serialise it as `tokenizer.json`).
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Whether [`Tokenizer::encode`] / [`Tokenizer::count`] use the fast path (module docs).
    pub fn has_fast_path(&self) -> bool {
        self.fast.is_some()
    }

    /// Token ids of `text`, without adding special tokens (special tokens written in the text,
    /// like `<|im_start|>`, are still recognised, as chat servers do).
    pub fn try_encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let mut ids = Vec::with_capacity(text.len() / 4 + 1);
        match &self.fast {
            Some(f) => f.encode(&self.inner, text, &mut |id| ids.push(id))?,
            None => return self.try_encode_reference(text),
        }
        Ok(ids)
    }

    /// Like [`Tokenizer::try_encode`] but always through the full `tokenizers` pipeline.
    pub fn try_encode_reference(&self, text: &str) -> Result<Vec<u32>, String> {
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

    /// [`Tokenizer::encode`] through the full `tokenizers` pipeline (slower; for validation).
    pub fn encode_reference(&self, text: &str) -> Vec<u32> {
        self.try_encode_reference(text).unwrap_or_default()
    }

    /// Number of tokens in `text`, without adding special tokens.
    pub fn count(&self, text: &str) -> usize {
        match &self.fast {
            Some(f) => {
                let mut n = 0;
                match f.encode(&self.inner, text, &mut |_| n += 1) {
                    Ok(()) => n,
                    Err(_) => 0,
                }
            }
            None => self.encode(text).len(),
        }
    }

    /// [`Tokenizer::count`] for `text` = the concatenation of `single_token_words()[i]` for the
    /// given indices (how synthetic prompts are built), exact and cheaper: it checks with the
    /// tokenizer's own pre-tokenization that `text` splits into exactly those words and that no
    /// added token occurs in it; each word alone is one token (checked when the list is made) and
    /// pre-tokens are encoded independently, so the count is the number of words. If any check
    /// fails, or the tokenizer has no fast path, this is `count(text)`.
    pub fn count_words_text(
        &self,
        text: &str,
        word_indices: impl IntoIterator<Item = usize>,
    ) -> usize {
        let Some(fast) = &self.fast else {
            return self.count(text);
        };
        let Some((_, own)) = split_regex(&self.inner) else {
            return self.count(text);
        };
        if text.bytes().any(|b| fast.added_first[b as usize]) {
            return self.count(text);
        }
        let words = self.single_token_words();
        let mut indices = word_indices.into_iter();
        let (mut ok, mut n, mut prev) = (true, 0usize, 0usize);
        fast.splitter.for_each(own, text, |start, end| {
            ok &= start == prev
                && indices
                    .next()
                    .and_then(|i| words.get(i))
                    .is_some_and(|w| w.as_str() == &text[start..end]);
            n += 1;
            prev = end;
        });
        if ok && prev == text.len() && indices.next().is_none() {
            n
        } else {
            self.count(text)
        }
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
    /// Each is a space followed by 2–12 ASCII letters and encodes to exactly its own token; sorted
    /// by token id. For the builtin they are found at load; for other tokenizers on first call
    /// (one decode + encode per candidate).
    pub fn single_token_words(&self) -> &[String] {
        self.words.get_or_init(|| compute_words(self))
    }
}

/// What [`Tokenizer::count_incremental`] remembers of the last text it counted.
#[derive(Default)]
pub struct IncrementalCount {
    text: String,
    /// (byte offset just after an added token, tokens up to there), in order.
    marks: Vec<(usize, u64)>,
}

/// The checked-at-load facts that make the fast path equal to the full pipeline.
struct FastPath {
    /// Added tokens (all plain: no strip/single-word/normalized flags), longest first.
    added: Vec<(String, u32)>,
    /// `added_first[b]`: some added token starts with byte `b`.
    added_first: [bool; 256],
    /// A pre-token that is a whole vocabulary token encodes to that token.
    whole_token_shortcut: bool,
    /// How to run the split regex.
    splitter: Splitter,
}

/// The tokenizer's split regex, ideally on the `regex` crate (≈ 20× faster than `fancy-regex`).
enum Splitter {
    /// The tokenizer's own compiled `fancy-regex`.
    Own,
    /// The same pattern without fancy features, on the `regex` crate.
    Plain(regex::Regex),
    /// A pattern `A|\s+(?!\S)|\s+` (Qwen2, Llama-3, GPT-4's cl100k) as `A|\s+`, plus `(?:A)|(\s+)`
    /// to tell which branch matched. When the `\s+` branch matched a run of ≥ 2 chars that is
    /// followed by a non-space, the lookahead version would have stopped one char earlier (so
    /// that the last space joins the next word): the match is shortened by its last char.
    LookaheadFree {
        find: regex::Regex,
        tail: regex::Regex,
    },
}

const LOOKAHEAD_TAIL: &str = r"|\s+(?!\S)|\s+";

impl Splitter {
    fn new(pattern: &str, own: &SysRegex, trusted: bool) -> Splitter {
        let candidate = if let Some(a) = pattern.strip_suffix(LOOKAHEAD_TAIL) {
            match (
                regex::Regex::new(&format!(r"{a}|\s+")),
                regex::Regex::new(&format!(r"(?:{a})|(\s+)")),
            ) {
                (Ok(find), Ok(tail)) => Splitter::LookaheadFree { find, tail },
                _ => return Splitter::Own,
            }
        } else {
            match regex::Regex::new(pattern) {
                Ok(re) => Splitter::Plain(re),
                Err(_) => return Splitter::Own,
            }
        };
        // A user's pattern must split a battery of awkward strings exactly like its own regex.
        if !trusted {
            for s in SELF_CHECK {
                let mut got = Vec::new();
                candidate.for_each(own, s, |a, b| got.push((a, b)));
                if got != own.find_iter(s).collect::<Vec<_>>() {
                    return Splitter::Own;
                }
            }
        }
        candidate
    }

    /// Calls `f(start, end)` for each match of the split regex in `s`, in order (`own`: the
    /// tokenizer's own compiled regex).
    fn for_each(&self, own: &SysRegex, s: &str, mut f: impl FnMut(usize, usize)) {
        let (find, tail) = match self {
            Splitter::Own => {
                own.find_iter(s).for_each(|(a, b)| f(a, b));
                return;
            }
            Splitter::Plain(re) => {
                re.find_iter(s).for_each(|m| f(m.start(), m.end()));
                return;
            }
            Splitter::LookaheadFree { find, tail } => (find, tail),
        };
        let mut pos = 0;
        let mut locs = tail.capture_locations();
        while let Some(m) = find.find_at(s, pos) {
            let (start, mut end) = (m.start(), m.end());
            if end == start {
                // Like fancy-regex's iterator, step over an empty match.
                f(start, end);
                pos = end + s[end..].chars().next().map_or(1, char::len_utf8);
                if pos > s.len() {
                    break;
                }
                continue;
            }
            let last = s[start..end].chars().next_back().unwrap_or('x');
            // Only an all-whitespace match can come from the `\s+` branch.
            if last.is_whitespace()
                && end < s.len()
                && end - start > last.len_utf8()
                && tail.captures_read_at(&mut locs, s, start).is_some()
                && locs.get(1).is_some()
            {
                end -= last.len_utf8();
            }
            f(start, end);
            pos = end;
        }
    }
}

/// Strings on which a user's split pattern must agree with its fancy-regex original.
const SELF_CHECK: &[&str] = &[
    "Hello world, it's 2024!  I'LL   go\t\tnow.\n\n  x",
    "   leading and trailing   ",
    "a\u{a0}\u{a0}b \u{3000}\u{3000}c\r\n\r\n  d\n \n e",
    "fn main() {\n    let x = 1_000;\n\treturn x;\n}\n",
    "数据 тест naïve ﬁ 😀😀 \u{301}x 123456 ٣٤ ½",
    " \t \n",
    "''s 'S 're've'm'll'd 'x",
];

impl FastPath {
    fn new(inner: &tokenizers::Tokenizer, builtin: bool) -> Option<FastPath> {
        if inner.get_normalizer().is_some() {
            return None;
        }
        let (pattern, own) = split_regex(inner)?;
        let ModelWrapper::BPE(bpe) = inner.get_model() else {
            return None;
        };
        let empty = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
        if bpe.dropout.is_some()
            || !empty(&bpe.continuing_subword_prefix)
            || !empty(&bpe.end_of_word_suffix)
        {
            return None;
        }
        let mut added = Vec::new();
        let mut added_first = [false; 256];
        for (id, t) in inner.get_added_tokens_decoder() {
            if t.lstrip || t.rstrip || t.single_word || t.normalized || t.content.is_empty() {
                return None;
            }
            added_first[t.content.as_bytes()[0] as usize] = true;
            added.push((t.content, id));
        }
        added.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Some(FastPath {
            added,
            added_first,
            whole_token_shortcut: builtin || bpe.ignore_merges,
            splitter: Splitter::new(pattern, own, builtin),
        })
    }

    fn encode(
        &self,
        inner: &tokenizers::Tokenizer,
        text: &str,
        out: &mut impl FnMut(u32),
    ) -> Result<(), String> {
        self.encode_from(inner, text, 0, out, &mut |_| {})
    }

    /// [`FastPath::encode`] of `text[start..]`, where `start` is 0 or just after an added token;
    /// `mark(end)` is called after each added token's id, with the offset just after it.
    fn encode_from(
        &self,
        inner: &tokenizers::Tokenizer,
        text: &str,
        start: usize,
        out: &mut impl FnMut(u32),
        mark: &mut impl FnMut(usize),
    ) -> Result<(), String> {
        let (Some((_, regex)), ModelWrapper::BPE(bpe)) = (split_regex(inner), inner.get_model())
        else {
            return Err("fast path unavailable".to_string());
        };
        let mut buf = String::new();
        let bytes = text.as_bytes();
        let (mut seg, mut i) = (start, start);
        // Added tokens first (leftmost-longest, as tokenizers' AddedVocabulary), then each segment
        // in between through the split regex and the model.
        while i < bytes.len() {
            if self.added_first[bytes[i] as usize] {
                let rest = &bytes[i..];
                if let Some((tok, id)) = self
                    .added
                    .iter()
                    .find(|(t, _)| rest.starts_with(t.as_bytes()))
                {
                    self.segment(regex, bpe, &text[seg..i], &mut buf, out)?;
                    out(*id);
                    i += tok.len();
                    mark(i);
                    seg = i;
                    continue;
                }
            }
            i += 1;
        }
        self.segment(regex, bpe, &text[seg..], &mut buf, out)
    }

    fn segment(
        &self,
        regex: &SysRegex,
        bpe: &BPE,
        seg: &str,
        buf: &mut String,
        out: &mut impl FnMut(u32),
    ) -> Result<(), String> {
        let mut prev = 0;
        let mut result = Ok(());
        let on_match = |start: usize, end: usize| {
            if result.is_err() {
                return;
            }
            if prev != start {
                result = self.piece(bpe, &seg[prev..start], buf, out);
            }
            if result.is_ok() {
                result = self.piece(bpe, &seg[start..end], buf, out);
            }
            prev = end;
        };
        self.splitter.for_each(regex, seg, on_match);
        result?;
        if prev != seg.len() {
            self.piece(bpe, &seg[prev..], buf, out)?;
        }
        Ok(())
    }

    fn piece(
        &self,
        bpe: &BPE,
        piece: &str,
        buf: &mut String,
        out: &mut impl FnMut(u32),
    ) -> Result<(), String> {
        if piece.is_empty() {
            return Ok(());
        }
        buf.clear();
        buf.extend(piece.bytes().map(|b| BYTE_CHARS[b as usize]));
        if self.whole_token_shortcut {
            if let Some(id) = bpe.token_to_id(buf) {
                out(id);
                return Ok(());
            }
        }
        for t in bpe.tokenize(buf).map_err(|e| e.to_string())? {
            out(t.id);
        }
        Ok(())
    }
}

/// The compiled split regex of a `Sequence[Split(regex, Isolated), ByteLevel(no prefix, no
/// regex)]` pre-tokenizer, the shape the fast path supports.
fn split_regex(inner: &tokenizers::Tokenizer) -> Option<(&str, &SysRegex)> {
    let Some(PreTokenizerWrapper::Sequence(seq)) = inner.get_pre_tokenizer() else {
        return None;
    };
    match seq.as_ref() {
        [PreTokenizerWrapper::Split(split), PreTokenizerWrapper::ByteLevel(bl)]
            if split.behavior == SplitDelimiterBehavior::Isolated
                && !split.invert
                && !bl.add_prefix_space
                && !bl.use_regex =>
        {
            match &split.pattern {
                SplitPattern::Regex(p) => Some((p.as_str(), &split.regex)),
                SplitPattern::String(_) => None,
            }
        }
        _ => None,
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

/// The generic search: candidates by the model's own spelling ("Ġword", "▁word", " word": one
/// marker char, then letters), kept if they decode to a space-led word that encodes back to
/// exactly that token.
fn compute_words(tok: &Tokenizer) -> Vec<String> {
    let vocab = tok.inner.get_vocab(false);
    let mut found: Vec<(u32, String)> = Vec::new();
    for (piece, id) in vocab {
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

struct Builtin {
    inner: tokenizers::Tokenizer,
    allowed: Vec<u32>,
    words: Vec<String>,
}

/// Decodes the compact asset (format in `scripts/build-builtin-tokenizer.py`) into a tokenizer.
fn build_builtin(asset: &[u8]) -> Result<Builtin, TokenizerError> {
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

    // Every token as byte-level chars: ranks 0..255 are single bytes, rank r ≥ 256 is the
    // concatenation of its two (lower-ranked) merge parts.
    let mut tokens: Vec<String> = Vec::with_capacity(n);
    tokens.extend(first.iter().map(|&b| BYTE_CHARS[b as usize].to_string()));
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

    // Byte-level spells a space as 'Ġ' and ASCII letters as themselves. That such a token encodes
    // back to itself (and so joins exactly) is checked for every word by a unit test.
    let space = BYTE_CHARS[b' ' as usize];
    let words = tokens
        .iter()
        .filter_map(|t| {
            let rest = t.strip_prefix(space)?;
            let word = format!(" {rest}");
            is_space_word(&word).then_some(word)
        })
        .collect();
    let allowed = (0..n as u32)
        .filter(|&id| !is_byte_fallback(&tokens[id as usize]))
        .collect();

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

    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre));
    inner.with_post_processor(Some(byte_level));
    inner.with_decoder(Some(byte_level));
    for (id, content) in specials {
        inner.add_special_tokens(&[AddedToken::from(content.clone(), true)]);
        if inner.token_to_id(&content) != Some(id) {
            return Err(TokenizerError::Builtin(format!(
                "special token {content} did not get id {id}"
            )));
        }
    }
    Ok(Builtin {
        inner,
        allowed,
        words,
    })
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

/// The builtin tokenizer for unit tests, built once per test binary.
#[cfg(test)]
pub(crate) fn test_builtin() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::builtin().expect("builtin loads"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use crate::tokenizer::test_builtin as tok;

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
        assert!(t.has_fast_path());
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
    /// With `PARLEY_GOLDEN=file` (written by the script with `--golden-limit 0 --golden file`)
    /// the file is checked as well.
    #[test]
    fn matches_tiktoken_golden() {
        let mut golden = include_str!("../assets/qwen2-golden.jsonl").to_string();
        if let Ok(p) = std::env::var("PARLEY_GOLDEN") {
            golden.push_str(&std::fs::read_to_string(p).unwrap());
        }
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
            assert_eq!(tok().encode(text), want, "fast path, text {text:?}");
            assert_eq!(
                tok().encode_reference(text),
                want,
                "tokenizers, text {text:?}"
            );
            assert_eq!(tok().count(text), want.len());
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
        // Every word, through the full tokenizers pipeline.
        for x in w {
            assert_eq!(t.encode_reference(x).len(), 1, "{x:?}");
        }
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..300 {
            let n = rng.random_range(1..=300);
            let mut s = String::new();
            for _ in 0..n {
                s.push_str(&w[rng.random_range(0..w.len())]);
            }
            assert_eq!(t.count(&s), n, "{s:?}");
            assert_eq!(t.encode_reference(&s).len(), n, "{s:?}");
        }
    }

    #[test]
    fn generic_word_search_agrees_with_builtin_words() {
        let t = tok();
        assert_eq!(compute_words(t), t.single_token_words());
    }

    /// The fast path maps a pre-token that is a whole vocabulary token straight to it; valid
    /// because BPE reaches every builtin token from its bytes.
    #[test]
    fn every_builtin_token_is_reachable_by_its_merges() {
        let t = tok();
        let ModelWrapper::BPE(bpe) = t.hf().get_model() else {
            panic!("not BPE")
        };
        for id in 0..151_643u32 {
            let s = bpe.id_to_token(id).unwrap();
            let ids: Vec<u32> = bpe.tokenize(&s).unwrap().iter().map(|x| x.id).collect();
            assert_eq!(ids, [id], "token {s:?}");
        }
    }

    fn random_text(rng: &mut SmallRng, t: &Tokenizer) -> String {
        const PIECES: &[&str] = &[
            " ",
            "  ",
            "\n",
            "\r\n",
            "\t",
            "\n\n ",
            "a",
            "Z",
            "'s",
            "'LL",
            "1",
            "42",
            "3.5",
            ",",
            ".",
            "!?",
            "é",
            "数据",
            "😀",
            "\u{a0}",
            "\u{3000}",
            "<|im_start|>",
            "<|im_end|>",
            "<|endoftext|>",
            "<|",
            "|>",
            "<|im_start",
            "fn()",
            "{}",
            "\u{301}",
            "ß",
            "İ",
        ];
        let mut s = String::new();
        for _ in 0..rng.random_range(0..60) {
            match rng.random_range(0..4) {
                0 => s.push_str(PIECES[rng.random_range(0..PIECES.len())]),
                1 => s.push_str(&t.single_token_words()[rng.random_range(0..40_000)]),
                2 => {
                    let id = rng.random_range(0..151_643);
                    s.push_str(&t.decode(&[id]));
                }
                _ => {
                    if let Some(c) = char::from_u32(rng.random_range(0..0x2_0000)) {
                        s.push(c);
                    }
                }
            }
        }
        s
    }

    #[test]
    fn fast_path_matches_tokenizers_on_random_text() {
        let t = tok();
        assert!(t.has_fast_path());
        let mut rng = SmallRng::seed_from_u64(11);
        for _ in 0..3000 {
            let s = random_text(&mut rng, t);
            let want = t.encode_reference(&s);
            assert_eq!(t.encode(&s), want, "{s:?}");
            assert_eq!(t.count(&s), want.len(), "{s:?}");
        }
    }

    /// The regex-crate splitter (lookahead emulated) against the tokenizer's own fancy-regex, on
    /// whitespace-heavy text where the `\s+(?!\S)` branch matters.
    #[test]
    fn lookahead_free_splitter_matches_fancy_regex() {
        let t = tok();
        let f = t.fast.as_ref().unwrap();
        assert!(matches!(f.splitter, Splitter::LookaheadFree { .. }));
        let (_, own) = split_regex(t.hf()).unwrap();
        const WS: &[&str] = &[
            " ", " ", " ", "\t", "\n", "\r", "\u{a0}", "\u{3000}", "\u{2009}", "\u{85}", "\u{b}",
            "\u{c}", "a", "Zz", "1", "!", "'s", "é", "数", "\u{301}", "\u{200b}", ".\n",
        ];
        let mut rng = SmallRng::seed_from_u64(5);
        for _ in 0..20_000 {
            let s: String = (0..rng.random_range(0..24))
                .map(|_| WS[rng.random_range(0..WS.len())])
                .collect();
            let mut got = Vec::new();
            f.splitter.for_each(own, &s, |a, b| got.push((a, b)));
            assert_eq!(got, own.find_iter(&s).collect::<Vec<_>>(), "{s:?}");
        }
        for s in SELF_CHECK {
            let mut got = Vec::new();
            f.splitter.for_each(own, s, |a, b| got.push((a, b)));
            assert_eq!(got, own.find_iter(s).collect::<Vec<_>>(), "{s:?}");
        }
    }

    #[test]
    fn count_words_text_is_exact_and_falls_back() {
        let t = tok();
        let w = t.single_token_words();
        let mut rng = SmallRng::seed_from_u64(3);
        for _ in 0..200 {
            let idx: Vec<usize> = (0..rng.random_range(0..200))
                .map(|_| rng.random_range(0..w.len()))
                .collect();
            let text: String = idx.iter().map(|&i| w[i].as_str()).collect();
            assert_eq!(t.count_words_text(&text, idx.iter().copied()), idx.len());
            assert_eq!(t.encode_reference(&text).len(), idx.len());
        }
        // Whatever the indices claim, the result is the text's true count.
        let text = " alpha beta<|im_end|> gamma  delta\n";
        let want = t.encode_reference(text).len();
        assert_eq!(t.count_words_text(text, [0, 1, 2]), want);
        let idx = [5, 6, 7];
        let text: String = idx.iter().map(|&i| w[i].as_str()).collect();
        let cases = [
            (text.clone(), vec![5, 6]),
            (text.clone(), vec![5, 6, 8]),
            (text.clone(), vec![5, 6, 7, 7]),
            (format!("{text}x"), idx.to_vec()),
            (format!("{text} "), idx.to_vec()),
            (format!("<|im_start|>{text}"), idx.to_vec()),
        ];
        for (s, i) in cases {
            assert_eq!(
                t.count_words_text(&s, i),
                t.encode_reference(&s).len(),
                "{s:?}"
            );
        }
    }

    /// User tokenizer.json files with other split patterns: one the `regex` crate runs as is, one
    /// that needs fancy-regex (a lookahead that is not the usual tail). Both use the fast path
    /// and must agree with the full pipeline.
    #[test]
    fn fast_path_with_other_split_patterns() {
        let base: serde_json::Value =
            serde_json::from_str(&tok().hf().to_string(false).unwrap()).unwrap();
        let plain = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";
        let fancy = format!("{QWEN2_PATTERN}|x(?=y)");
        let dir = scratch_dir("patterns");
        let mut rng = SmallRng::seed_from_u64(21);
        for (name, pattern) in [("plain", plain), ("fancy", fancy.as_str())] {
            let mut v = base.clone();
            v["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = pattern.into();
            let file = dir.join(format!("{name}.json"));
            std::fs::write(&file, v.to_string()).unwrap();
            let t = Tokenizer::from_path(&file).unwrap();
            let f = t.fast.as_ref().expect("fast path");
            match name {
                "plain" => assert!(matches!(f.splitter, Splitter::Plain(_))),
                _ => assert!(matches!(f.splitter, Splitter::Own)),
            }
            for _ in 0..500 {
                let s = random_text(&mut rng, tok());
                assert_eq!(t.encode(&s), t.encode_reference(&s), "{name}: {s:?}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn builtin_shared_is_built_once() {
        let a = Tokenizer::builtin_shared().unwrap();
        let b = Tokenizer::builtin_shared().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.encode("Hello world"), vec![9707, 1879]);
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
        assert!(by_dir.has_fast_path());
        assert!(matches!(
            by_dir.fast.as_ref().unwrap().splitter,
            Splitter::LookaheadFree { .. }
        ));
        assert_eq!(
            by_dir.single_token_words()[..100],
            tok().single_token_words()[..100]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A tokenizer.json outside the fast path's shape (here: with a normalizer) goes through the
    /// full pipeline, and truncation configured in the file is ignored.
    #[test]
    fn from_path_general_pipeline() {
        let mut v: serde_json::Value =
            serde_json::from_str(&tok().hf().to_string(false).unwrap()).unwrap();
        v["normalizer"] = serde_json::json!({"type": "NFC"});
        v["truncation"] = serde_json::json!({"direction": "Right", "max_length": 4,
            "strategy": "LongestFirst", "stride": 0});
        let dir = scratch_dir("nfc");
        let file = dir.join("custom.json");
        std::fs::write(&file, v.to_string()).unwrap();
        let t = Tokenizer::from_path(&file).unwrap();
        assert!(!t.has_fast_path());
        let text = " one two three four five six";
        assert_eq!(t.encode(text), tok().encode(text));
        assert_eq!(t.count(text), 6);
        // NFC: a decomposed "é" becomes the composed one.
        assert_eq!(t.encode("e\u{301}"), tok().encode("\u{e9}"));
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
            let w = t.single_token_words();
            let mut rng = SmallRng::seed_from_u64(1);
            let text: String = (0..8192)
                .map(|_| w[rng.random_range(0..w.len())].as_str())
                .collect();
            let t1 = std::time::Instant::now();
            let n = t.count(&text);
            let fast = t1.elapsed();
            let t2 = std::time::Instant::now();
            let n2 = t.encode_reference(&text).len();
            let reference = t2.elapsed();
            assert_eq!(n, n2);
            let mixed = random_text(&mut rng, &t).repeat(50);
            let t3 = std::time::Instant::now();
            let m = t.count(&mixed);
            let mixed_t = t3.elapsed();
            let per = |d: std::time::Duration, n: usize| d.as_secs_f64() * 1e6 / n as f64;
            println!(
                "builtin load {load:?}; {n} random words: count {:.3} µs/token, \
                 tokenizers encode {:.3} µs/token; mixed text count {:.3} µs/token",
                per(fast, n),
                per(reference, n),
                per(mixed_t, m)
            );
        }
        if let Ok(p) = std::env::var("PARLEY_DUMP_TOKENIZER_JSON") {
            std::fs::write(&p, tok().hf().to_string(false).unwrap()).unwrap();
            println!("wrote {p}");
        }
    }
}
