//! Prompt token ids as a chat server computes them: the messages rendered with
//! [`crate::tokenizer::render_chat`] and tokenized.
//!
//! Tokenizing costs about 1 µs per token, and a multi-turn conversation resends its whole history
//! every turn. The ChatML separators are special tokens, so each rendered message tokenizes on its
//! own; the encoder therefore caches each message's ids (per executor, bounded, LRU) and a turn
//! only tokenizes its new messages. At start-up it checks on a sample that per-message encoding
//! equals encoding the whole rendering with this tokenizer; if not (a tokenizer without those
//! special tokens), it encodes whole renderings instead.
//!
//! With a chat template (`--tokenizer-path DIR` whose directory has one, see
//! [`crate::template`]) the request's messages are rendered with it instead, and the whole
//! rendering is encoded per request (no per-message cache: a template may render a message
//! differently by its position), like a chat server does.

use std::rc::Rc;
use std::sync::Arc;

use super::cache::{fmix64, Lru};
use super::record::content_hash;
use crate::tokenizer::{render_chat, Tokenizer};

/// A message as the encoder sees it.
pub(crate) struct Msg<'a> {
    pub(crate) role: &'a str,
    pub(crate) content: &'a str,
    /// [`content_hash`] of `content`.
    pub(crate) content_hash: u64,
}

impl<'a> Msg<'a> {
    pub(crate) fn new(role: &'a str, content: &'a str) -> Self {
        Msg {
            role,
            content,
            content_hash: content_hash(content),
        }
    }

    /// Cache key of the rendered message.
    fn key(&self) -> u64 {
        fmix64(
            self.content_hash
                ^ fmix64(content_hash(self.role) ^ (self.content.len() as u64).rotate_left(32)),
        )
    }
}

struct Entry {
    /// Ids of the rendered message (template included).
    ids: Rc<[u32]>,
    /// Tokens of the bare content, once asked for.
    bare: Option<u64>,
}

/// Per-executor prompt encoder with a bounded cache of message encodings.
pub(crate) struct PromptEncoder {
    tokenizer: Arc<Tokenizer>,
    /// Rendering of no messages: the generation prompt every chat prompt ends with.
    generation_prompt: String,
    generation_ids: Vec<u32>,
    /// Whether per-message encoding equals whole-prompt encoding for this tokenizer.
    independent: bool,
    cache: Lru<Entry>,
    scratch: String,
}

impl PromptEncoder {
    /// `capacity_tokens` bounds the cached ids (4 bytes each).
    pub(crate) fn new(tokenizer: Arc<Tokenizer>, capacity_tokens: u64) -> Self {
        let mut generation_prompt = String::new();
        render_chat(std::iter::empty(), &mut generation_prompt);
        let generation_ids = tokenizer.encode(&generation_prompt);
        let mut enc = PromptEncoder {
            tokenizer,
            generation_prompt,
            generation_ids,
            independent: true,
            cache: Lru::new(capacity_tokens),
            scratch: String::new(),
        };
        enc.independent = enc.check_independence();
        enc
    }

    /// Whether messages are encoded one by one (and cached).
    #[cfg(test)]
    pub(crate) fn per_message(&self) -> bool {
        self.independent
    }

    fn check_independence(&mut self) -> bool {
        let sample = [
            Msg::new("system", "You are a helpful assistant.\n"),
            Msg::new("user", " Hello there!\n\nHow are you?  "),
            Msg::new("assistant", " alpha beta gamma"),
            Msg::new("user", "\n\nmore: 12345 ünïcödé 你好"),
        ];
        let mut whole = String::new();
        render_chat(sample.iter().map(|m| (m.role, m.content)), &mut whole);
        let expected = self.tokenizer.encode(&whole);
        let mut got = Vec::new();
        for m in &sample {
            got.extend_from_slice(&self.encode_message(m));
        }
        got.extend_from_slice(&self.generation_ids);
        // Don't keep the sample in the cache.
        self.cache.clear();
        got == expected
    }

    /// Ids of one rendered message, from the cache or freshly encoded.
    fn encode_message(&mut self, m: &Msg<'_>) -> Rc<[u32]> {
        let key = m.key();
        if let Some(e) = self.cache.get(key) {
            return e.ids.clone();
        }
        self.scratch.clear();
        render_chat([(m.role, m.content)], &mut self.scratch);
        let len = self.scratch.len() - self.generation_prompt.len();
        self.scratch.truncate(len);
        let ids: Rc<[u32]> = self.tokenizer.encode(&self.scratch).into();
        let weight = ids.len() as u64 + 1;
        self.cache.insert(
            key,
            Entry {
                ids: ids.clone(),
                bare: None,
            },
            weight,
        );
        ids
    }

    /// Appends the prompt ids of a chat request to `out`; an error when the model's chat
    /// template refuses the messages (`raise_exception`), as a server answers 400 then.
    pub(crate) fn chat_ids(
        &mut self,
        messages: &[Msg<'_>],
        out: &mut Vec<u32>,
    ) -> Result<(), String> {
        if let Some(template) = self.tokenizer.chat_template() {
            let text = template.render_pairs(messages.iter().map(|m| (m.role, m.content)), true)?;
            out.extend(self.tokenizer.encode(&text));
            return Ok(());
        }
        if !self.independent {
            self.scratch.clear();
            render_chat(
                messages.iter().map(|m| (m.role, m.content)),
                &mut self.scratch,
            );
            out.extend(self.tokenizer.encode(&self.scratch));
            return Ok(());
        }
        for m in messages {
            let ids = self.encode_message(m);
            out.extend_from_slice(&ids);
        }
        out.extend_from_slice(&self.generation_ids);
        Ok(())
    }

    /// The text a chat request's prompt is tokenized from (`--record-prompts`).
    pub(crate) fn chat_text(&self, messages: &[Msg<'_>]) -> String {
        let pairs = messages.iter().map(|m| (m.role, m.content));
        match self.tokenizer.chat_template() {
            Some(template) => template.render_pairs(pairs, true).unwrap_or_default(),
            None => {
                let mut text = String::new();
                render_chat(pairs, &mut text);
                text
            }
        }
    }

    /// Ids of a plain text prompt (`/v1/completions`).
    pub(crate) fn text_ids(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(text)
    }

    /// Tokens of a message's bare content (no template), cached alongside its ids when the
    /// message is cached.
    pub(crate) fn bare_tokens(&mut self, m: &Msg<'_>) -> u64 {
        let key = m.key();
        if let Some(e) = self.cache.get(key) {
            if let Some(b) = e.bare {
                return b;
            }
        }
        let n = self.tokenizer.count(m.content) as u64;
        if let Some(e) = self.cache.get_mut(key) {
            e.bare = Some(n);
        }
        n
    }
}
