//! The conversation cursor: one conversation's history from turn to turn, how it is sent (the
//! context mode), the client's prompt-token estimate, and the request body built from it.
//!
//! The history is a list of shared byte segments (`Bytes`), so building turn k clones k
//! reference counts and re-serialises nothing; the segments are the dataset's pre-serialised
//! messages and the live replies, each serialised once when it arrives.
//!
//! Two body forms ([`EndpointKind`]): chat (`"messages":[…]`, the history is JSON message
//! objects joined by commas) and completions (`"prompt":"…"`, the history is the conversation
//! rendered as text — see [`completions_delta`] — as escaped pieces of one JSON string).

use bytes::Bytes;

use crate::net::SegmentsBody;
use crate::workload::{escape_piece, message_json, ContextMode, Conversation, Turn, COMMA};

/// Which OpenAI endpoint the requests go to, and so the body's form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    /// `/v1/chat/completions`: `"messages": [...]`.
    #[default]
    Chat,
    /// `/v1/completions`: `"prompt": "..."`, the history rendered as text.
    Completions,
}

impl EndpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Chat => "chat",
            EndpointKind::Completions => "completions",
        }
    }

    /// The OpenAI path of this endpoint.
    pub fn default_path(self) -> &'static str {
        match self {
            EndpointKind::Chat => "/v1/chat/completions",
            EndpointKind::Completions => "/v1/completions",
        }
    }

    /// The endpoint a request path visibly names (`…/chat/completions`, `…/completions`).
    pub fn named_by(path: &str) -> Option<EndpointKind> {
        let path = path.trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            Some(EndpointKind::Chat)
        } else if path.ends_with("/completions") {
            Some(EndpointKind::Completions)
        } else {
            None
        }
    }
}

/// The fixed byte pieces every request body is assembled from.
#[derive(Clone, Debug)]
pub struct BodyShape {
    /// `{` + every body field (with the run's `max_tokens`) + `,"messages":[` (chat) or
    /// `,"prompt":"` (completions).
    pub open: Bytes,
    /// The same fields without `max_tokens` + `,"messages":[` / `,"prompt":"`; sent after a
    /// per-turn `{"max_tokens":N,` when the dataset sets one.
    pub open_without_max: Bytes,
    /// Name of the max-tokens field (`max_tokens` or `max_completion_tokens`).
    pub max_tokens_field: &'static str,
    /// The body's form: what the history holds and how the body closes.
    pub kind: EndpointKind,
}

impl BodyShape {
    /// What follows the history: `]}`, or the completions generation cue and `"}`.
    fn close(&self) -> Bytes {
        match self.kind {
            EndpointKind::Chat => CLOSE,
            EndpointKind::Completions => PROMPT_CLOSE,
        }
    }
}

const CLOSE: Bytes = Bytes::from_static(b"]}");

// The completions rendering is ChatML, written as the inside of a JSON string (so `\n` is an
// escaped newline): each message is `<|im_start|>ROLE\n` + content + `<|im_end|>\n`, and every
// prompt ends with the generation cue `<|im_start|>assistant\n`; the live reply then joins the
// history as the content of that assistant message. Why ChatML rather than "User: …":
// - it is the chat template of the Qwen family and of `parley sim` (`tokenizer::render_chat`),
//   so on those models a completions run sends exactly the tokens the chat endpoint would (same
//   prompt_tokens, same prefix-cache behaviour), and the two runs compare;
// - every turn's prompt extends the previous one byte for byte (history + cue + reply + end +
//   next turn), so prefix caching works as it does for chat;
// - turns stay distinct and unambiguous whatever the text holds. On a model with another
//   template the markers are plain text, a few tokens per message.

/// Opens a message of role `assistant` in the completions rendering (the generation cue).
const ASSISTANT_OPEN: Bytes = Bytes::from_static(b"<|im_start|>assistant\\n");
/// Ends a message in the completions rendering.
const MESSAGE_END: Bytes = Bytes::from_static(b"<|im_end|>\\n");
/// The generation cue and the end of the prompt string and body.
const PROMPT_CLOSE: Bytes = Bytes::from_static(b"<|im_start|>assistant\\n\"}");

/// Opens a message of `role` in the completions rendering (static for the usual roles).
fn message_open(role: &str) -> Bytes {
    match role {
        "user" => Bytes::from_static(b"<|im_start|>user\\n"),
        "assistant" => ASSISTANT_OPEN,
        "system" => Bytes::from_static(b"<|im_start|>system\\n"),
        "tool" => Bytes::from_static(b"<|im_start|>tool\\n"),
        "developer" => Bytes::from_static(b"<|im_start|>developer\\n"),
        other => {
            let mut piece = b"<|im_start|>".to_vec();
            piece.extend_from_slice(&escape_piece(other));
            piece.extend_from_slice(b"\\n");
            Bytes::from(piece)
        }
    }
}

/// Converts a chat delta (JSON message objects joined by commas, as segments, the form every
/// source builds) into completions prompt pieces: each message rendered as
/// `<|im_start|>ROLE\n` + content + `<|im_end|>\n`, escaped for a JSON string. Runs at plan
/// time, once per turn. A string content's escaped bytes are reused as they are, as slices of
/// the original segments, so a block shared by many conversations stays one allocation; a
/// content given as text parts is their texts joined with `\n` (as servers join them). Fields
/// other than `role` and `content` (tool calls, names) have no place in a text prompt and are
/// left out.
pub fn completions_delta(delta: &[Bytes]) -> Result<Vec<Bytes>, String> {
    let all = delta.concat();
    let mut starts = Vec::with_capacity(delta.len());
    let mut at = 0;
    for seg in delta {
        starts.push(at);
        at += seg.len();
    }
    // Slices of the original segments covering `all[range]`.
    let slices = |range: std::ops::Range<usize>, out: &mut Vec<Bytes>| {
        for (seg, &start) in delta.iter().zip(&starts) {
            let end = start + seg.len();
            let (from, to) = (range.start.max(start), range.end.min(end));
            if from < to {
                out.push(seg.slice(from - start..to - start));
            }
        }
    };
    let mut out = Vec::new();
    let mut scan = Scanner { buf: &all, pos: 0 };
    let mut index = 0;
    loop {
        scan.skip_ws();
        if scan.pos == all.len() {
            break;
        }
        if index > 0 {
            scan.expect(b',')?;
            scan.skip_ws();
        }
        scan.expect(b'{')?;
        let mut role: Option<String> = None;
        let mut content = Content::Absent;
        let mut first_field = true;
        loop {
            scan.skip_ws();
            if scan.peek() == Some(b'}') {
                scan.pos += 1;
                break;
            }
            if !first_field {
                scan.expect(b',')?;
                scan.skip_ws();
            }
            first_field = false;
            let key = scan.value()?;
            let key: String = serde_json::from_slice(&all[key]).map_err(|e| e.to_string())?;
            scan.skip_ws();
            scan.expect(b':')?;
            scan.skip_ws();
            let value = scan.value()?;
            match key.as_str() {
                "role" => {
                    role = Some(
                        serde_json::from_slice(&all[value])
                            .map_err(|_| format!("message {index}: `role` is not a string"))?,
                    )
                }
                "content" if all[value.start] == b'"' => {
                    content = Content::Escaped(value.start + 1..value.end - 1)
                }
                "content" => {
                    let v: serde_json::Value =
                        serde_json::from_slice(&all[value]).map_err(|e| e.to_string())?;
                    content =
                        Content::Text(part_texts(&v).map_err(|e| format!("message {index}: {e}"))?);
                }
                _ => {}
            }
        }
        let role = role.ok_or_else(|| format!("message {index} has no `role`"))?;
        out.push(message_open(&role));
        match content {
            Content::Escaped(range) => slices(range, &mut out),
            Content::Text(text) if !text.is_empty() => out.push(escape_piece(&text)),
            Content::Text(_) | Content::Absent => {}
        }
        out.push(MESSAGE_END);
        index += 1;
    }
    if index == 0 {
        return Err("no message".into());
    }
    Ok(out)
}

/// Converts a conversation built in chat form (every source builds that) to the completions
/// form, in place: each turn's delta and recorded reply become [`completions_delta`] pieces.
/// Done once per conversation at plan time.
pub fn convert_to_completions(conv: &mut Conversation) -> Result<(), String> {
    for (k, turn) in conv.turns.iter_mut().enumerate() {
        turn.delta = completions_delta(&turn.delta).map_err(|e| format!("turn {}: {e}", k + 1))?;
        if let Some(reply) = &turn.reply {
            let pieces = completions_delta(std::slice::from_ref(reply))
                .map_err(|e| format!("turn {}'s recorded reply: {e}", k + 1))?;
            turn.reply = Some(Bytes::from(pieces.concat()));
        }
    }
    Ok(())
}

enum Content {
    Absent,
    /// The escaped inside of a JSON string, as a range of the concatenated delta.
    Escaped(std::ops::Range<usize>),
    Text(String),
}

/// A content that is not a string: null (no text) or text parts, joined with `\n`.
fn part_texts(v: &serde_json::Value) -> Result<String, String> {
    match v {
        serde_json::Value::Null => Ok(String::new()),
        serde_json::Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for p in parts {
                match (p["type"].as_str(), p["text"].as_str()) {
                    (Some("text"), Some(t)) => texts.push(t),
                    (Some("text"), None) => texts.push(""),
                    (kind, _) => {
                        return Err(format!(
                            "a content part of type {} cannot be sent as completions text",
                            kind.unwrap_or("(none)")
                        ))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        other => Err(format!("content {other} is not text")),
    }
}

/// Finds value boundaries in JSON that is known to be valid (serialised by parley).
struct Scanner<'b> {
    buf: &'b [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), String> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!(
                "expected `{}` at byte {} of the turn's messages",
                b as char, self.pos
            ))
        }
    }

    /// Skips one value; returns its byte range.
    fn value(&mut self) -> Result<std::ops::Range<usize>, String> {
        let start = self.pos;
        let eof = || "the turn's messages end inside a value".to_string();
        match self.peek().ok_or_else(eof)? {
            b'"' => self.string()?,
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek().ok_or_else(eof)? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.pos += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.pos += 1;
                }
            }
            _ => {
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.pos += 1;
                }
            }
        }
        Ok(start..self.pos)
    }

    /// Skips a string starting at its opening quote.
    fn string(&mut self) -> Result<(), String> {
        self.pos += 1;
        loop {
            match self.peek() {
                None => return Err("the turn's messages end inside a string".into()),
                Some(b'\\') => self.pos += 2,
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(_) => self.pos += 1,
            }
        }
    }
}

/// Walks one conversation turn by turn over a reusable history buffer.
pub(crate) struct Cursor<'a> {
    conv: &'a Conversation,
    history: &'a mut Vec<Bytes>,
    /// Index of the turn [`Cursor::advance`] returns next.
    next: usize,
    /// Tokens of everything in the history (dataset deltas — bare, or with the chat template's
    /// overhead when the tokenizer directory has one, see `template::template_delta_tokens` —
    /// plus earlier live replies' output tokens): the prompt estimate for servers that send no
    /// usage.
    estimated_prompt: u64,
    /// The form of the bodies built from the history (set by [`Cursor::body`], which runs before
    /// every reply): chat separates messages with commas, completions text needs no separator
    /// and gets the live reply as ChatML text.
    kind: EndpointKind,
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
            kind: EndpointKind::Chat,
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
            } else if self.kind == EndpointKind::Chat {
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

    /// The request body of the current turn, in `shape`'s form (`Resources::build` converted
    /// the conversation's deltas and recorded replies to that form).
    pub(crate) fn body(&mut self, shape: &BodyShape, turn: &Turn) -> SegmentsBody {
        self.kind = shape.kind;
        match &turn.open {
            Some(open) => assemble_body_with(open.clone(), self.history, shape.close()),
            None => assemble_body(shape, turn.max_tokens, self.history),
        }
    }

    /// Records the current turn's reply: in live mode its output tokens join the estimate; the reply the
    /// context mode calls for (live, the dataset's, or none) joins the history when another turn
    /// follows.
    pub(crate) fn on_reply(&mut self, turn: &Turn, completion_tokens: u64, live_reply: &str) {
        // Only a live reply joins the history; canned turns' deltas already count the recorded
        // reply before them, and verbatim turns count their whole array.
        if self.conv.context == ContextMode::Live {
            self.estimated_prompt += completion_tokens;
        }
        if self.at_last_turn() {
            return;
        }
        match (self.conv.context, self.kind) {
            (ContextMode::Live, EndpointKind::Chat) => {
                self.history.push(COMMA);
                self.history
                    .push(Bytes::from(message_json("assistant", live_reply)));
            }
            (ContextMode::Live, EndpointKind::Completions) => {
                // The prompt ended with the generation cue; the reply is that message's content.
                self.history.push(ASSISTANT_OPEN);
                self.history.push(escape_piece(live_reply));
                self.history.push(MESSAGE_END);
            }
            (ContextMode::Canned, kind) => {
                if let Some(reply) = &turn.reply {
                    if kind == EndpointKind::Chat {
                        self.history.push(COMMA);
                    }
                    self.history.push(reply.clone());
                }
            }
            (ContextMode::Verbatim, _) => {}
        }
    }
}

/// The request body for the current turn (public for `benches/turn_and_record.rs`): the fixed
/// opening, the history segments (shared `Bytes`, no copy), and the closing brackets (for
/// completions, the generation cue and the closing quote).
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
    segments.push(shape.close());
    SegmentsBody::new(segments)
}

/// [`assemble_body`] with a turn's own opening (per-turn extra fields).
fn assemble_body_with(open: Bytes, history: &[Bytes], close: Bytes) -> SegmentsBody {
    let mut segments = Vec::with_capacity(history.len() + 2);
    segments.push(open);
    segments.extend(history.iter().cloned());
    segments.push(close);
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
            kind: EndpointKind::Chat,
        }
    }

    fn completions_shape() -> BodyShape {
        BodyShape {
            open: Bytes::from_static(b"{\"model\":\"m\",\"max_tokens\":8,\"prompt\":\""),
            open_without_max: Bytes::from_static(b"\"model\":\"m\",\"prompt\":\""),
            max_tokens_field: "max_tokens",
            kind: EndpointKind::Completions,
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

    fn messages(cursor: &mut Cursor<'_>, turn: &Turn) -> Vec<String> {
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
        assert_eq!((k, messages(&mut c, t)), (0, vec!["u1".to_string()]));
        assert_eq!(c.estimated_prompt(), 3);
        c.on_reply(t, 10, "a1");
        let (_, t) = c.advance().unwrap();
        assert_eq!(messages(&mut c, t), ["u1", "a1", "u2"]);
        assert_eq!(c.estimated_prompt(), 17);
        c.on_reply(t, 1, "a2");
        let (k, t) = c.advance().unwrap();
        assert_eq!(
            (k, messages(&mut c, t)),
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
        assert_eq!(messages(&mut c, t), ["u1", "r1", "u2"]);

        conv.context = ContextMode::Live;
        conv.convert(ContextMode::Verbatim, |_| Some(1)).unwrap();
        let mut c = Cursor::new(&conv, &mut history);
        let (_, t) = c.advance().unwrap();
        c.on_reply(t, 1, "live");
        let (_, t) = c.advance().unwrap();
        assert_eq!(messages(&mut c, t), ["u1", "r1", "u2"]);
        assert_eq!(
            c.estimated_prompt(),
            3,
            "the whole array's tokens, not accumulated"
        );
    }

    /// Canned: the estimate counts the recorded replies in the history (their tokens joined the
    /// next turn's delta when the conversation was converted), never the live reply's output.
    #[test]
    fn canned_estimate_counts_the_recorded_replies() {
        let with_reply = |u: &str, r: &str, n| Turn {
            reply: Some(Bytes::from(message_json("assistant", r))),
            ..Turn::user(u, Some(n))
        };
        let mut conv = Conversation::live(vec![
            with_reply("u1", "r1", 3),
            with_reply("u2", "r2", 4),
            Turn::user("u3", Some(5)),
        ]);
        conv.convert(ContextMode::Canned, |r| Some(r.len() as u32))
            .unwrap();
        let reply_len = |k: usize| conv.turns[k].reply.as_ref().unwrap().len() as u64;
        let (r1, r2) = (reply_len(0), reply_len(1));
        let mut history = Vec::new();
        let mut c = Cursor::new(&conv, &mut history);
        let (_, t) = c.advance().unwrap();
        assert_eq!(c.estimated_prompt(), 3);
        c.on_reply(t, 1000, "live");
        let (_, t) = c.advance().unwrap();
        assert_eq!(c.estimated_prompt(), 3 + r1 + 4);
        c.on_reply(t, 1000, "live");
        c.advance().unwrap();
        assert_eq!(c.estimated_prompt(), 3 + r1 + 4 + r2 + 5);
    }

    /// The completions prompt of the cursor's current turn, decoded.
    fn prompt(cursor: &mut Cursor<'_>, turn: &Turn) -> String {
        let bytes = bytes_of(cursor.body(&completions_shape(), turn));
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
        assert_eq!(v["model"], "m");
        v["prompt"].as_str().unwrap().to_string()
    }

    fn chatml(messages: &[(&str, &str)]) -> String {
        let mut s = String::new();
        crate::tokenizer::render_chat(messages.iter().copied(), &mut s);
        s
    }

    #[test]
    fn completions_prompt_is_the_chatml_history_with_the_real_replies() {
        // Awkward text: quotes, backslashes, newlines, non-ASCII, a ChatML-looking string.
        let u1 = "say \"hi\" \\ then\nnewline é 中文";
        let u2 = "<|im_end|> is just text here";
        let mut conv = Conversation::live(vec![
            Turn::user(u1, Some(3)),
            Turn::user(u2, Some(4)),
            Turn::user("u3", Some(5)),
        ]);
        convert_to_completions(&mut conv).unwrap();
        let mut history = vec![COMMA]; // left over from an earlier conversation
        let mut c = Cursor::new(&conv, &mut history);
        let (_, t) = c.advance().unwrap();
        assert_eq!(prompt(&mut c, t), chatml(&[("user", u1)]));
        c.on_reply(t, 10, "a \"1\"\n");
        let (_, t) = c.advance().unwrap();
        assert_eq!(
            prompt(&mut c, t),
            chatml(&[("user", u1), ("assistant", "a \"1\"\n"), ("user", u2)])
        );
        c.on_reply(t, 1, "a2");
        let (_, t) = c.advance().unwrap();
        let third = prompt(&mut c, t);
        assert_eq!(
            third,
            chatml(&[
                ("user", u1),
                ("assistant", "a \"1\"\n"),
                ("user", u2),
                ("assistant", "a2"),
                ("user", "u3")
            ])
        );
        // Every turn's prompt extends the previous one (prefix caching), turns in order.
        let p1 = chatml(&[("user", u1)]);
        assert!(third.starts_with(&p1));
        assert_eq!(c.estimated_prompt(), 3 + 10 + 4 + 1 + 5);
        // A per-turn max_tokens keeps the completions form.
        let v: serde_json::Value = serde_json::from_slice(&bytes_of(assemble_body(
            &completions_shape(),
            Some(5),
            c.history,
        )))
        .unwrap();
        assert_eq!(v["max_tokens"], 5);
        assert_eq!(v["prompt"], third.as_str());
    }

    #[test]
    fn completions_conversion_keeps_shared_pieces_and_renders_every_message() {
        // A delta as the synthetic sources build it: a shared block spliced into a message
        // between its opening and its own text, then a second whole message.
        let shared = escape_piece("shared \"block\" ");
        let delta = vec![
            crate::workload::content_open("system"),
            shared.clone(),
            escape_piece("own"),
            crate::workload::CONTENT_CLOSE,
            COMMA,
            Bytes::from(
                br#"{"role":"user","name":"x","content":[{"type":"text","text":"p1"},{"type":"text","text":"p2"}],"tool_calls":[{"id":"c","function":{"arguments":"{\"a\":[1,2]}"}}]}"#
                    .to_vec(),
            ),
            COMMA,
            Bytes::from(br#"{"content":null,"role":"assistant"}"#.to_vec()),
        ];
        let pieces = completions_delta(&delta).unwrap();
        assert!(
            pieces.iter().any(|p| p.as_ptr() == shared.as_ptr()),
            "the shared block is reused, not copied"
        );
        let text: String =
            serde_json::from_slice(&[b"\"", &pieces.concat()[..], b"\""].concat()).unwrap();
        let mut want = String::new();
        crate::tokenizer::render_chat(
            [
                ("system", "shared \"block\" own"),
                ("user", "p1\np2"),
                ("assistant", ""),
            ],
            &mut want,
        );
        assert_eq!(text, want.trim_end_matches("<|im_start|>assistant\n"));
        assert!(completions_delta(&[]).is_err());
        assert!(completions_delta(&[Bytes::from_static(br#"{"content":"x"}"#)]).is_err());
        let image = br#"{"role":"user","content":[{"type":"image_url","image_url":{}}]}"#;
        assert!(completions_delta(&[Bytes::from_static(image)])
            .unwrap_err()
            .contains("image_url"));
    }

    #[test]
    fn completions_canned_and_verbatim_send_the_recorded_replies() {
        let with_reply = |u: &str, r: &str| Turn {
            reply: Some(Bytes::from(message_json("assistant", r))),
            ..Turn::user(u, Some(1))
        };
        let want = chatml(&[("user", "u1"), ("assistant", "r1"), ("user", "u2")]);
        for mode in [ContextMode::Canned, ContextMode::Verbatim] {
            let mut conv =
                Conversation::live(vec![with_reply("u1", "r1"), Turn::user("u2", Some(1))]);
            conv.convert(mode, |_| Some(1)).unwrap();
            convert_to_completions(&mut conv).unwrap();
            let mut history = Vec::new();
            let mut c = Cursor::new(&conv, &mut history);
            let (_, t) = c.advance().unwrap();
            assert_eq!(prompt(&mut c, t), chatml(&[("user", "u1")]));
            c.on_reply(t, 1, "live");
            let (_, t) = c.advance().unwrap();
            assert_eq!(prompt(&mut c, t), want, "{mode:?}");
        }
    }
}
