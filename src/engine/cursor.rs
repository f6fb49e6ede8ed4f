//! The conversation cursor: one conversation's history from turn to turn, how it is sent (the
//! context mode), the client's prompt-token estimate, and the request body built from it.
//!
//! The history is a list of shared byte segments (`Bytes`), so building turn k clones k
//! reference counts and re-serialises nothing; the segments are the dataset's pre-serialised
//! messages and the live replies, each serialised once when it arrives.

use bytes::Bytes;

use crate::net::SegmentsBody;
use crate::workload::{message_json, ContextMode, Conversation, Turn, COMMA};

/// The fixed byte pieces every request body is assembled from.
#[derive(Clone, Debug)]
pub struct BodyShape {
    /// `{` + every body field (with the run's `max_tokens`) + `,"messages":[`.
    pub open: Bytes,
    /// The same fields without `max_tokens` + `,"messages":[`; sent after a per-turn
    /// `{"max_tokens":N,` when the dataset sets one.
    pub open_without_max: Bytes,
    /// Name of the max-tokens field (`max_tokens` or `max_completion_tokens`).
    pub max_tokens_field: &'static str,
}

const CLOSE: Bytes = Bytes::from_static(b"]}");

/// Walks one conversation turn by turn over a reusable history buffer.
pub(crate) struct Cursor<'a> {
    conv: &'a Conversation,
    history: &'a mut Vec<Bytes>,
    /// Index of the turn [`Cursor::advance`] returns next.
    next: usize,
    /// Bare tokens of everything in the history (dataset deltas plus earlier replies' output
    /// tokens): the prompt estimate for servers that send no usage.
    estimated_prompt: u64,
}

impl<'a> Cursor<'a> {
    /// A cursor at the conversation's first turn; `history` is cleared (its capacity is kept).
    pub(crate) fn new(conv: &'a Conversation, history: &'a mut Vec<Bytes>) -> Cursor<'a> {
        history.clear();
        Cursor {
            conv,
            history,
            next: 0,
            estimated_prompt: 0,
        }
    }

    /// Moves to the next turn, appending its new messages to the history; `None` after the last.
    pub(crate) fn advance(&mut self) -> Option<(usize, &'a Turn)> {
        let k = self.next;
        let turn = self.conv.turns.get(k)?;
        self.next += 1;
        if k > 0 {
            if self.conv.context == ContextMode::Verbatim {
                // The turn carries the whole array; nothing accumulates.
                self.history.clear();
                self.estimated_prompt = 0;
            } else {
                self.history.push(COMMA);
            }
        }
        self.history.extend(turn.delta.iter().cloned());
        self.estimated_prompt += turn.delta_tokens.unwrap_or(0) as u64;
        Some((k, turn))
    }

    /// Whether the turn last returned by [`Cursor::advance`] is the conversation's last.
    pub(crate) fn at_last_turn(&self) -> bool {
        self.next >= self.conv.turns.len()
    }

    pub(crate) fn estimated_prompt(&self) -> u64 {
        self.estimated_prompt
    }

    /// The request body of the current turn.
    pub(crate) fn body(&self, shape: &BodyShape, turn: &Turn) -> SegmentsBody {
        match &turn.open {
            Some(open) => assemble_body_with(open.clone(), self.history),
            None => assemble_body(shape, turn.max_tokens, self.history),
        }
    }

    /// Records the current turn's reply: its output tokens join the estimate, and the reply the
    /// context mode calls for (live, the dataset's, or none) joins the history when another turn
    /// follows.
    pub(crate) fn on_reply(&mut self, turn: &Turn, completion_tokens: u64, live_reply: &str) {
        self.estimated_prompt += completion_tokens;
        if self.at_last_turn() {
            return;
        }
        match self.conv.context {
            ContextMode::Live => {
                self.history.push(COMMA);
                self.history
                    .push(Bytes::from(message_json("assistant", live_reply)));
            }
            ContextMode::Canned => {
                if let Some(reply) = &turn.reply {
                    self.history.push(COMMA);
                    self.history.push(reply.clone());
                }
            }
            ContextMode::Verbatim => {}
        }
    }
}

/// The request body for the current turn (public for `benches/turn_and_record.rs`): the fixed
/// opening, the history segments (shared `Bytes`, no copy), and the closing brackets.
pub fn assemble_body(
    shape: &BodyShape,
    max_tokens: Option<u32>,
    history: &[Bytes],
) -> SegmentsBody {
    let mut segments = Vec::with_capacity(history.len() + 3);
    match max_tokens {
        None => segments.push(shape.open.clone()),
        Some(n) => {
            segments.push(Bytes::from(format!(
                "{{\"{}\":{n},",
                shape.max_tokens_field
            )));
            segments.push(shape.open_without_max.clone());
        }
    }
    segments.extend(history.iter().cloned());
    segments.push(CLOSE);
    SegmentsBody::new(segments)
}

/// [`assemble_body`] with a turn's own opening (per-turn extra fields).
fn assemble_body_with(open: Bytes, history: &[Bytes]) -> SegmentsBody {
    let mut segments = Vec::with_capacity(history.len() + 2);
    segments.push(open);
    segments.extend(history.iter().cloned());
    segments.push(CLOSE);
    SegmentsBody::new(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(mut body: SegmentsBody) -> Vec<u8> {
        use hyper::body::Body;
        let len = body.len();
        let mut bytes = Vec::new();
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        while let std::task::Poll::Ready(Some(Ok(frame))) =
            std::pin::Pin::new(&mut body).poll_frame(&mut cx)
        {
            bytes.extend_from_slice(frame.data_ref().unwrap());
        }
        assert_eq!(bytes.len() as u64, len);
        bytes
    }

    fn shape() -> BodyShape {
        BodyShape {
            open: Bytes::from_static(b"{\"model\":\"m\",\"max_tokens\":8,\"messages\":["),
            open_without_max: Bytes::from_static(b"\"model\":\"m\",\"messages\":["),
            max_tokens_field: "max_tokens",
        }
    }

    #[test]
    fn body_is_valid_json_with_history() {
        let history = vec![
            Bytes::from(message_json("user", "hi \"there\"")),
            COMMA,
            Bytes::from(message_json("assistant", "hello\n")),
            COMMA,
            Bytes::from(message_json("user", "again")),
        ];
        for max in [None, Some(3)] {
            let bytes = bytes_of(assemble_body(&shape(), max, &history));
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["messages"].as_array().unwrap().len(), 3);
            assert_eq!(v["messages"][1]["content"], "hello\n");
            assert_eq!(v["max_tokens"], max.unwrap_or(8));
        }
    }

    fn messages(cursor: &Cursor<'_>, turn: &Turn) -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_slice(&bytes_of(cursor.body(&shape(), turn))).unwrap();
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn live_history_carries_the_real_replies_and_the_estimate() {
        let conv = Conversation::live(vec![
            Turn::user("u1", Some(3)),
            Turn::user("u2", Some(4)),
            Turn::user("u3", Some(5)),
        ]);
        let mut history = vec![COMMA]; // left over from an earlier conversation
        let mut c = Cursor::new(&conv, &mut history);
        let (k, t) = c.advance().unwrap();
        assert_eq!((k, messages(&c, t)), (0, vec!["u1".to_string()]));
        assert_eq!(c.estimated_prompt(), 3);
        c.on_reply(t, 10, "a1");
        let (_, t) = c.advance().unwrap();
        assert_eq!(messages(&c, t), ["u1", "a1", "u2"]);
        assert_eq!(c.estimated_prompt(), 17);
        c.on_reply(t, 1, "a2");
        let (k, t) = c.advance().unwrap();
        assert_eq!(
            (k, messages(&c, t)),
            (
                2,
                vec!["u1", "a1", "u2", "a2", "u3"]
                    .into_iter()
                    .map(String::from)
                    .collect::<Vec<_>>()
            )
        );
        assert!(c.at_last_turn());
        c.on_reply(t, 9, "a3");
        assert!(c.advance().is_none());
    }

    #[test]
    fn canned_and_verbatim_ignore_the_live_reply() {
        let with_reply = |u: &str, r: &str| Turn {
            reply: Some(Bytes::from(message_json("assistant", r))),
            ..Turn::user(u, Some(1))
        };
        let mut conv = Conversation::live(vec![with_reply("u1", "r1"), Turn::user("u2", Some(1))]);
        conv.context = ContextMode::Canned;
        let mut history = Vec::new();
        let mut c = Cursor::new(&conv, &mut history);
        let (_, t) = c.advance().unwrap();
        c.on_reply(t, 1, "live");
        let (_, t) = c.advance().unwrap();
        assert_eq!(messages(&c, t), ["u1", "r1", "u2"]);

        conv.context = ContextMode::Live;
        conv.convert(ContextMode::Verbatim, |_| Some(1)).unwrap();
        let mut c = Cursor::new(&conv, &mut history);
        let (_, t) = c.advance().unwrap();
        c.on_reply(t, 1, "live");
        let (_, t) = c.advance().unwrap();
        assert_eq!(messages(&c, t), ["u1", "r1", "u2"]);
        assert_eq!(
            c.estimated_prompt(),
            3,
            "the whole array's tokens, not accumulated"
        );
    }
}
