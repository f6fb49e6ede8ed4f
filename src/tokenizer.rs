//! Tokenizer: the builtin Qwen2 BPE vocabulary or a user's `tokenizer.json` / HF model directory,
//! plus the ChatML-like rendering that the sim counts prompt tokens over.
//!
//! (Interface fixed; implementation owned by the tokenizer work.)

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot load tokenizer from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("the builtin tokenizer is corrupt: {0}")]
    Builtin(String),
}

/// A loaded tokenizer. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Tokenizer {
    _private: (),
}

impl Tokenizer {
    /// The builtin tokenizer (no download needed).
    pub fn builtin() -> Result<Tokenizer, TokenizerError> {
        unimplemented!()
    }

    /// A `tokenizer.json` file, or a directory that holds one (a local HF model directory).
    pub fn from_path(_path: &Path) -> Result<Tokenizer, TokenizerError> {
        unimplemented!()
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
        unimplemented!()
    }

    /// Token ids of `text`, without adding special tokens.
    pub fn encode(&self, _text: &str) -> Vec<u32> {
        unimplemented!()
    }

    /// Number of tokens in `text`, without adding special tokens.
    pub fn count(&self, text: &str) -> usize {
        self.encode(text).len()
    }

    pub fn decode(&self, _ids: &[u32]) -> String {
        unimplemented!()
    }

    /// Ids usable for synthetic text: no special tokens, no `<0xHH>` byte-fallback tokens.
    pub fn allowed_ids(&self) -> &[u32] {
        unimplemented!()
    }

    /// Words that start with a space and are each exactly one token, so joining N of them gives
    /// text of exactly N tokens. The sim builds its replies from these.
    pub fn single_token_words(&self) -> &[String] {
        unimplemented!()
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
