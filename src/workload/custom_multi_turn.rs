//! `custom_multi_turn`: the user's own conversations, one OpenAI messages array per JSONL line
//! (or `{"messages": [...]}` per line), as evalscope's `custom_multi_turn`.
//!
//! Each run of non-assistant messages (system, user, tool, developer) is one turn's delta; the
//! assistant messages after it end the turn and are kept as its recorded reply (sent only in
//! `--context-mode canned|verbatim`; live mode sends the model's own reply instead). A message
//! is sent as the file gives it, minus our per-turn `max_tokens` key.
//!
//! This module also holds the pieces every file source of whole conversations shares (the
//! ShareGPT source uses them too): splitting messages into turns ([`Splitter`]), and
//! [`assemble`], which applies `--max-turns` truncation, the `--min-turns` and first-user-message
//! length filters, the selection, and serialises the selected conversations in parallel.

use std::borrow::Cow;
use std::convert::Infallible;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::input::FieldError;
use super::input::{self, as_count, as_object, index, join, req_str, to_u32, type_name};
use super::{
    synth, BuildContext, Built, Conversation, DatasetError, DatasetFlag, PathUse, Source, Turn,
    COMMA,
};
use crate::tokenizer::Tokenizer;

/// The registered source.
pub struct CustomMultiTurnSource;

/// Roles a message may have (the OpenAI chat roles).
pub const ROLES: [&str; 5] = ["system", "user", "assistant", "tool", "developer"];

/// Our per-turn key on a non-assistant message: that turn's `max_tokens`. It is removed from the
/// message before sending (a server would reject an unknown message field).
pub const MAX_TOKENS_KEY: &str = "max_tokens";

/// evalscope's defaults for the first-user-message length filter (`--min-prompt-length`,
/// `--max-prompt-length`), used when the flags are not given.
pub const DEFAULT_MIN_PROMPT_LENGTH: u32 = 0;
pub const DEFAULT_MAX_PROMPT_LENGTH: u32 = 131_072;

impl Source for CustomMultiTurnSource {
    fn names(&self) -> &'static [&'static str] {
        &["custom_multi_turn"]
    }

    fn path_use(&self) -> PathUse {
        PathUse::Required
    }

    fn describe(&self) -> &'static str {
        "your conversations: JSONL, one OpenAI messages array per line"
    }

    fn flags(&self) -> &'static [DatasetFlag] {
        &FILE_FLAGS
    }

    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Built, DatasetError> {
        let path = ctx.path.ok_or_else(|| DatasetError::PathRequired {
            name: ctx.name.to_string(),
        })?;
        let mut conversations = Vec::new();
        input::each_jsonl(
            path,
            ctx.problems,
            |loc, v, problems| match parse_conversation(v) {
                Ok(turns) => conversations.push(turns),
                Err(e) => problems.report(loc, e),
            },
        )?;
        assemble(ctx, conversations, 0)
    }
}

/// The flags the sources of whole recorded conversations read (custom_multi_turn, share_gpt):
/// truncation, the turn-count filter and the first-user-message length filter ([`assemble`]).
pub(crate) const FILE_FLAGS: [DatasetFlag; 4] = [
    DatasetFlag::MinTurns,
    DatasetFlag::MaxTurns,
    DatasetFlag::MinPromptLength,
    DatasetFlag::MaxPromptLength,
];

/// A turn as read from a file, before selection: its messages as given (our key removed).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct RawTurn {
    /// The delta: non-assistant messages (and assistant messages that precede every other one).
    /// Each message serialised once as read, so a 70k-conversation file costs about its own
    /// size in memory, not a JSON tree per message.
    pub messages: Vec<Bytes>,
    pub max_tokens: Option<u32>,
    /// The recorded assistant message(s) that ended the turn, serialised.
    pub replies: Vec<Bytes>,
}

/// Splits a conversation's messages into turns: each run of non-assistant messages is one turn's
/// delta, and the assistant messages after it end the turn and are its recorded reply. Assistant
/// messages before any other message answer no turn; they stay at the head of the first turn's
/// delta, as the history the file recorded.
#[derive(Debug, Default)]
pub(crate) struct Splitter {
    turns: Vec<RawTurn>,
    current: RawTurn,
    /// The current turn has had its assistant reply: the next non-assistant message opens a new
    /// turn.
    answered: bool,
    leading: Vec<Bytes>,
}

impl Splitter {
    /// A non-assistant message, with its turn's `max_tokens` if it gives one. `Err` if the turn
    /// already has a `max_tokens` (the caller names the field).
    pub fn message(&mut self, message: Bytes, max_tokens: Option<u32>) -> Result<(), ()> {
        if self.answered {
            self.turns.push(std::mem::take(&mut self.current));
            self.answered = false;
        }
        self.current.messages.push(message);
        if let Some(n) = max_tokens {
            if self.current.max_tokens.is_some() {
                return Err(());
            }
            self.current.max_tokens = Some(n);
        }
        Ok(())
    }

    /// An assistant message (`None`: the turn ends but the recorded reply is empty).
    pub fn assistant(&mut self, message: Option<Bytes>) {
        if self.current.messages.is_empty() {
            self.leading.extend(message);
            return;
        }
        self.answered = true;
        self.current.replies.extend(message);
    }

    pub fn finish(mut self) -> Vec<RawTurn> {
        if !self.current.messages.is_empty() {
            self.turns.push(self.current);
        }
        if let Some(first) = self.turns.first_mut() {
            first.messages.splice(0..0, self.leading);
        }
        self.turns
    }
}

/// One JSONL line: a messages array or an object with one. Errors name the field, e.g.
/// `[2].role` or `messages[2].role`.
pub(crate) fn parse_conversation(v: Value) -> Result<Vec<RawTurn>, FieldError> {
    let (messages, base) =
        match v {
            Value::Array(a) => (a, ""),
            Value::Object(mut o) => match o.remove("messages") {
                Some(Value::Array(a)) => (a, "messages"),
                Some(other) => {
                    return Err(FieldError::new(
                        "messages",
                        format!("expected an array of messages, got {}", type_name(&other)),
                    ))
                }
                None => return Err(FieldError::new(
                    "messages",
                    "missing (a line is a messages array, or an object with a `messages` array)",
                )),
            },
            other => {
                return Err(FieldError::new(
                    "",
                    format!(
                        "expected a messages array (or {{\"messages\": [...]}}), got {}",
                        type_name(&other)
                    ),
                ))
            }
        };
    if messages.is_empty() {
        return Err(FieldError::new(base, "empty conversation (no messages)"));
    }
    let mut split = Splitter::default();
    let mut has_user = false;
    for (i, m) in messages.into_iter().enumerate() {
        let path = index(base, i);
        let Value::Object(mut obj) = m else {
            return Err(FieldError::new(
                path,
                format!("expected a message object, got {}", type_name(&m)),
            ));
        };
        let role = req_str(&obj, "role", &path)?;
        if !ROLES.contains(&role) {
            return Err(FieldError::new(
                join(&path, "role"),
                format!(
                    "unknown role {} (expected {})",
                    Value::from(role),
                    ROLES.join(", ")
                ),
            ));
        }
        let assistant = role == "assistant";
        has_user |= role == "user";
        check_content(&obj, &path, assistant)?;
        let max_path = join(&path, MAX_TOKENS_KEY);
        let max_tokens =
            match obj.remove(MAX_TOKENS_KEY) {
                None | Some(Value::Null) => None,
                Some(_) if assistant => return Err(FieldError::new(
                    max_path,
                    "belongs on the turn's non-assistant message (the request it limits), not on \
                     the assistant reply",
                )),
                Some(v) => match to_u32(as_count(&v, &max_path)?, &max_path)? {
                    0 => return Err(FieldError::new(max_path, "must be at least 1")),
                    n => Some(n),
                },
            };
        let message = Bytes::from(json_bytes(&Value::Object(obj)));
        if assistant {
            split.assistant(Some(message));
        } else if split.message(message, max_tokens).is_err() {
            return Err(FieldError::new(
                max_path,
                "a second max_tokens in the same turn (give it on one message of the turn)",
            ));
        }
    }
    if !has_user {
        return Err(FieldError::new(
            base,
            "no user message (a conversation needs at least one)",
        ));
    }
    Ok(split.finish())
}

/// `content` must be a string or an array of text parts; an assistant's may be null or absent
/// (a tool-calling reply).
fn check_content(obj: &Map<String, Value>, path: &str, assistant: bool) -> Result<(), FieldError> {
    let p = join(path, "content");
    match obj.get("content") {
        Some(Value::String(_)) => Ok(()),
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                let pp = index(&p, j);
                let o = as_object(part, &pp)?;
                let kind = req_str(o, "type", &pp)?;
                if kind != "text" {
                    return Err(FieldError::new(
                        join(&pp, "type"),
                        format!(
                            "content part type {} is not supported (only \"text\" parts)",
                            Value::from(kind)
                        ),
                    ));
                }
                req_str(o, "text", &pp)?;
            }
            Ok(())
        }
        None | Some(Value::Null) if assistant => Ok(()),
        None => Err(FieldError::new(p, "missing")),
        Some(v) => Err(FieldError::new(
            p,
            format!(
                "expected a string or an array of content parts, got {}",
                type_name(v)
            ),
        )),
    }
}

/// A validated message's text: its string content, or its text parts joined with `\n` (as the
/// sim and chat templates join them).
pub(crate) fn content_text(message: &Value) -> Cow<'_, str> {
    match message.get("content") {
        Some(Value::String(s)) => Cow::Borrowed(s),
        Some(Value::Array(parts)) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            match texts.as_slice() {
                [one] => Cow::Borrowed(one),
                _ => Cow::Owned(texts.join("\n")),
            }
        }
        _ => Cow::Borrowed(""),
    }
}

/// A stored message as JSON again (it was valid when stored).
fn reparse(message: &[u8]) -> Value {
    serde_json::from_slice(message).unwrap_or(Value::Null)
}

/// The first user message's text, for the length filter.
fn first_user_text(turns: &[RawTurn]) -> Option<String> {
    turns
        .iter()
        .flat_map(|t| &t.messages)
        .map(|m| reparse(m))
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| content_text(&m).into_owned())
}

/// From every valid conversation of a file (in file order) to the run's: truncate to
/// `--max-turns`; leave out (counting them in `filtered`, with `already_filtered` added) those
/// with fewer than `--min-turns` turns or whose first user message is outside
/// `[--min-prompt-length, --max-prompt-length]` bare tokens; number the rest in order, pick the
/// selection, and serialise those turns (on every core).
pub(crate) fn assemble(
    ctx: &BuildContext<'_>,
    mut conversations: Vec<Vec<RawTurn>>,
    already_filtered: u64,
) -> Result<Built, DatasetError> {
    let p = ctx.params;
    let tok = ctx.tokenizer;
    if let Some(max) = p.max_turns {
        for c in &mut conversations {
            c.truncate(max as usize);
        }
    }
    let min_turns = p.min_turns.unwrap_or(1) as usize;
    let min_len = p.min_prompt_length.unwrap_or(DEFAULT_MIN_PROMPT_LENGTH) as usize;
    let max_len = p.max_prompt_length.unwrap_or(DEFAULT_MAX_PROMPT_LENGTH) as usize;
    let keep = synth::par_map(conversations.len(), "checking lengths", |i| {
        let c = &conversations[i];
        let len_ok =
            first_user_text(c).is_some_and(|text| (min_len..=max_len).contains(&tok.count(&text)));
        Ok::<_, Infallible>(c.len() >= min_turns && len_ok)
    })
    .unwrap_or_else(|e| match e {});
    let total = conversations.len();
    let kept: Vec<Vec<RawTurn>> = conversations
        .into_iter()
        .zip(keep)
        .filter_map(|(c, k)| k.then_some(c))
        .collect();
    let filtered = already_filtered + (total - kept.len()) as u64;
    let picked = ctx.selection.pick(kept.len());
    let conversations = synth::par_map(picked.len(), "loading", |k| {
        Ok::<_, Infallible>(Conversation::live(
            kept[picked[k]].iter().map(|t| to_turn(t, tok)).collect(),
        ))
    })
    .unwrap_or_else(|e| match e {});
    Ok(Built {
        conversations,
        filtered,
    })
}

/// Serialises one turn: its messages joined by commas, its bare token count, its reply.
fn to_turn(raw: &RawTurn, tok: &Tokenizer) -> Turn {
    let mut delta = Vec::with_capacity(raw.messages.len() * 2);
    let mut tokens = 0u64;
    for (i, m) in raw.messages.iter().enumerate() {
        if i > 0 {
            delta.push(COMMA);
        }
        delta.push(m.clone());
        tokens += tok.count(&content_text(&reparse(m))) as u64;
    }
    let reply = (!raw.replies.is_empty()).then(|| {
        let mut out = Vec::new();
        for (i, r) in raw.replies.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(r);
        }
        Bytes::from(out)
    });
    Turn {
        delta,
        delta_tokens: Some(u32::try_from(tokens).unwrap_or(u32::MAX)),
        max_tokens: raw.max_tokens,
        reply,
        ..Turn::default()
    }
}

fn json_bytes(v: &Value) -> Vec<u8> {
    // A `Value` has string keys only, so serialising it cannot fail.
    serde_json::to_vec(v).expect("a JSON value always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::input::{self, Loc, Problems};
    use crate::workload::{DatasetParams, Selection};
    use serde_json::json;

    use crate::tokenizer::test_builtin as tok;

    /// Parses a whole JSONL text, collecting bad lines.
    fn parse_text(text: &str) -> (Vec<Vec<RawTurn>>, input::Problems) {
        let mut problems = input::Problems::new(None, true);
        let mut out = Vec::new();
        for (loc, v) in input::jsonl_values_of(text, &mut problems) {
            match parse_conversation(v) {
                Ok(c) => out.push(c),
                Err(e) => problems.report(loc, e),
            }
        }
        (out, problems)
    }

    fn parse(v: Value) -> Result<Vec<RawTurn>, FieldError> {
        parse_conversation(v)
    }

    fn val(m: &Bytes) -> Value {
        serde_json::from_slice(m).unwrap()
    }

    fn contents(msgs: &[Bytes]) -> Vec<String> {
        msgs.iter()
            .map(|m| val(m)["content"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn runs_of_non_assistant_messages_are_turns() {
        let turns = parse(json!([
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "u2", "max_tokens": 7},
            {"role": "assistant", "content": "a2a"},
            {"role": "assistant", "content": "a2b"},
            {"role": "tool", "content": "t3", "tool_call_id": "x"},
            {"role": "developer", "content": "d3"},
            {"role": "assistant", "content": "a3"},
        ]))
        .unwrap();
        assert_eq!(turns.len(), 3);
        assert_eq!(contents(&turns[0].messages), ["s", "u1"]);
        assert_eq!(contents(&turns[0].replies), ["a1"]);
        assert_eq!(turns[0].max_tokens, None);
        assert_eq!(contents(&turns[1].messages), ["u2"]);
        assert_eq!(turns[1].max_tokens, Some(7));
        // Our key is stripped; other keys are kept as given.
        assert!(val(&turns[1].messages[0]).get("max_tokens").is_none());
        assert_eq!(contents(&turns[1].replies), ["a2a", "a2b"]);
        assert_eq!(contents(&turns[2].messages), ["t3", "d3"]);
        assert_eq!(val(&turns[2].messages[0])["tool_call_id"], "x");
        // A trailing assistant message is the last turn's reply.
        assert_eq!(contents(&turns[2].replies), ["a3"]);
    }

    #[test]
    fn messages_object_and_leading_assistant_and_parts() {
        let turns = parse(json!({"id": 3, "messages": [
            {"role": "assistant", "content": "hello, how can I help?"},
            {"role": "user", "content": [{"type": "text", "text": "p1"}, {"type": "text", "text": "p2"}]},
        ]}))
        .unwrap();
        assert_eq!(turns.len(), 1);
        assert_eq!(turns[0].messages.len(), 2);
        assert_eq!(val(&turns[0].messages[0])["role"], "assistant");
        assert_eq!(content_text(&val(&turns[0].messages[1])), "p1\np2");
        assert!(turns[0].replies.is_empty());
        // An assistant tool call with null content is a valid reply.
        let t = parse(json!([
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": null, "tool_calls": []},
            {"role": "tool", "content": "out"},
        ]))
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(val(&t[0].replies[0])["tool_calls"], json!([]));
    }

    #[test]
    fn bad_entries_name_line_and_field() {
        let text = [
            r#"[{"role":"user","content":"ok"}]"#,
            r#"[{"role":"user","content":"x"},{"role":"bot","content":"y"}]"#,
            r#"{"oops"#,
            r#"{"role":"user","content":"not an array"}"#,
            r#"[{"role":"user","content":"x"}, 5]"#,
            r#"[{"content":"x"}]"#,
            r#"[{"role":"user","content":3}]"#,
            r#"[]"#,
            r#"[{"role":"system","content":"s"},{"role":"assistant","content":"a"}]"#,
            r#"[{"role":"user","content":"x","max_tokens":-4}]"#,
            r#"[{"role":"user","content":"x","max_tokens":2.5}]"#,
            r#"[{"role":"user","content":"x"},{"role":"assistant","content":"a","max_tokens":3}]"#,
            r#"[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]"#,
            r#"{"messages":[{"role":"user"}]}"#,
            r#"[{"role":"user","content":"x","max_tokens":1},{"role":"tool","content":"y","max_tokens":2}]"#,
            r#"7"#,
        ]
        .join("\n");
        let (ok, p) = parse_text(&text);
        let mut bom = Problems::new(None, true);
        let mut n = 0;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bom.jsonl");
        std::fs::write(&path, "\u{feff}[{\"role\":\"user\",\"content\":\"x\"}]\r\n").unwrap();
        input::each_jsonl(&path, &mut bom, |_, v, _| n += parse(v).unwrap().len()).unwrap();
        assert_eq!((n, bom.count()), (1, 0), "BOM and CRLF are not content");
        assert_eq!(ok.len(), 1);
        // Invalid JSON is found while reading, before the lines are parsed: sort by line.
        let mut listed = p.listed().to_vec();
        listed.sort_by_key(|b| match b.loc {
            Loc::Line(n) => n,
            _ => 0,
        });
        let got: Vec<String> = listed.iter().map(|b| b.to_string()).collect();
        let want = [
            "line 2, field `[1].role`: unknown role \"bot\" (expected system, user, assistant, tool, developer)",
            "line 3: invalid JSON",
            "line 4, field `messages`: missing",
            "line 5, field `[1]`: expected a message object, got a number",
            "line 6, field `[0].role`: missing",
            "line 7, field `[0].content`: expected a string or an array of content parts, got a number",
            "line 8: empty conversation",
            "line 9: no user message",
            "line 10, field `[0].max_tokens`: must not be negative, got -4",
            "line 11, field `[0].max_tokens`: expected a whole number, got 2.5",
            "line 12, field `[1].max_tokens`: belongs on the turn's non-assistant message",
            "line 13, field `[0].content[0].type`: content part type \"image_url\" is not supported",
            "line 14, field `messages[0].content`: missing",
            "line 15, field `[1].max_tokens`: a second max_tokens in the same turn",
            "line 16: expected a messages array",
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.starts_with(w), "got {g:?}\nwant {w:?}");
        }
    }

    fn ctx_build(text: &str, params: DatasetParams, selection: Selection) -> (Built, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        std::fs::write(&path, text).unwrap();
        let mut problems = Problems::new(Some(&path), true);
        let built = {
            let mut ctx = BuildContext {
                name: "custom_multi_turn",
                path: Some(&path),
                tokenizer: tok(),
                params: &params,
                selection,
                problems: &mut problems,
            };
            CustomMultiTurnSource.build(&mut ctx).unwrap()
        };
        let listed = problems.listed().iter().map(|b| b.to_string()).collect();
        (built, listed)
    }

    fn line(users: &[&str]) -> String {
        let mut msgs = Vec::new();
        for (i, u) in users.iter().enumerate() {
            msgs.push(json!({"role": "user", "content": u}));
            msgs.push(json!({"role": "assistant", "content": format!("reply {i}")}));
        }
        Value::Array(msgs).to_string()
    }

    #[test]
    fn truncation_filters_selection_and_serialisation() {
        let text = [
            line(&["one two three", "b"]),
            line(&["x"]),
            line(&["alpha beta", "c", "d"]),
            line(&[
                "a very long first message indeed, more than eight tokens here",
                "e",
            ]),
            line(&["gamma", "f", "g"]),
        ]
        .join("\n");
        let params = DatasetParams {
            max_turns: Some(2),
            min_turns: Some(2),
            max_prompt_length: Some(8),
            ..DatasetParams::default()
        };
        let (built, listed) = ctx_build(&text, params.clone(), Selection::default());
        assert!(listed.is_empty());
        // Line 2 has one turn, line 4's first message is over 8 tokens.
        assert_eq!(built.filtered, 2);
        assert_eq!(built.conversations.len(), 3);
        let c = &built.conversations[1];
        assert_eq!(c.turns.len(), 2, "truncated to --max-turns");
        let first: Value = serde_json::from_slice(&c.turns[0].delta_bytes()).unwrap();
        assert_eq!(first, json!({"role": "user", "content": "alpha beta"}));
        assert_eq!(
            c.turns[0].delta_tokens,
            Some(tok().encode_reference("alpha beta").len() as u32)
        );
        let reply: Value = serde_json::from_slice(c.turns[0].reply.as_ref().unwrap()).unwrap();
        assert_eq!(reply["content"], "reply 0");
        // Selection numbers the conversations left after the filters.
        let sel = Selection {
            offset: 1,
            shard_index: 1,
            shard_count: 2,
            limit: usize::MAX,
        };
        let (built, _) = ctx_build(&text, params, sel);
        assert_eq!(built.conversations.len(), 1);
        let first: Value =
            serde_json::from_slice(&built.conversations[0].turns[0].delta_bytes()).unwrap();
        assert_eq!(first["content"], "gamma");
    }

    #[test]
    fn multi_message_delta_is_a_valid_array() {
        let text = json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "q", "max_tokens": 5},
            {"role": "assistant", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "r"},
        ])
        .to_string();
        let (built, _) = ctx_build(&text, DatasetParams::default(), Selection::default());
        let t = &built.conversations[0].turns[0];
        let arr: Value = serde_json::from_str(&format!(
            "[{}]",
            String::from_utf8(t.delta_bytes()).unwrap()
        ))
        .unwrap();
        assert_eq!(arr.as_array().unwrap().len(), 2);
        assert_eq!(t.max_tokens, Some(5));
        let replies: Value = serde_json::from_str(&format!(
            "[{}]",
            std::str::from_utf8(t.reply.as_ref().unwrap()).unwrap()
        ))
        .unwrap();
        assert_eq!(replies[1]["content"], "b");
    }
}
