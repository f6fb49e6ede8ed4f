//! Conversation sources and the immutable turn data the engine sends.
//!
//! A source turns its input (flags, files) into [`Conversation`]s before the run. Each turn's new
//! messages are serialised to JSON once, here, so the engine only concatenates byte segments.

pub mod random_multi_turn;

use bytes::Bytes;

/// One turn of a conversation as the dataset defines it: the new (non-assistant) messages to
/// append to the history before sending. The model's live reply is appended by the engine.
#[derive(Clone, Debug)]
pub struct Turn {
    /// The turn's new messages as JSON objects joined by commas, e.g.
    /// `{"role":"user","content":"…"}`; never empty.
    pub delta_json: Bytes,
    /// Tokens of the turn's new message contents (bare, without chat template), when known.
    pub delta_tokens: Option<u32>,
    /// Per-turn `max_tokens` override.
    pub max_tokens: Option<u32>,
    /// Wait before sending this turn (think time / tool latency), in nanoseconds.
    pub delay_ns: u64,
}

/// A conversation: at least one turn.
#[derive(Clone, Debug, Default)]
pub struct Conversation {
    pub turns: Vec<Turn>,
}

/// Serialises one message as a JSON object (`{"role":…,"content":…}`).
pub fn message_json(role: &str, content: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + role.len() + 32);
    out.extend_from_slice(b"{\"role\":");
    serde_json::to_writer(&mut out, role).expect("writing to a Vec cannot fail");
    out.extend_from_slice(b",\"content\":");
    serde_json::to_writer(&mut out, content).expect("writing to a Vec cannot fail");
    out.push(b'}');
    out
}
