//! AIPerf's own JSONL formats: `multi_turn` (one session per line, `turns[]`) and `single_turn`
//! (one request per line, grouped into sessions by `session_id`).
//!
//! A turn is `text` (one content string) or `texts` (several contents: sent as one message whose
//! content is an array of text parts), a `role` (default user), a think time (`delay`, ms) or a
//! recorded send time (`timestamp`, ms), `output_length` (the turn's `max_tokens`) and `extra`
//! (body fields for this request only).
//!
//! **Timing.** Without `--fixed-schedule` there is no absolute send schedule: a session starts
//! when a `--parallel` slot is free. Inside a session, turn k ≥ 2 waits `delay` if given, else the
//! difference between its `timestamp` and the previous turn's `timestamp` (both must be there),
//! counted from the end of the previous reply. So the recorded gap between *sends* becomes a gap
//! between the previous *reply* and the next send: the realised send gap is that plus the previous
//! turn's latency. The first turn's `delay`/`timestamp` is validated but not waited. Each turn's
//! `timestamp` is also kept as it is ([`Turn::timestamp_ns`]) for fixed-schedule replay
//! ([`super::fixed`]).
//!
//! **History.** `multi_turn` sessions are live conversations (AIPerf `deltas_without_responses`):
//! each turn's message is appended to the history with the model's live replies. `single_turn`
//! rows of one session are sent one after the other *without* history, as AIPerf does
//! (reference §5: "sequential, no history"): each request carries only its own message, so those
//! sessions are [`ContextMode::Verbatim`].

use bytes::Bytes;
use serde_json::{Map, Value};

use super::input::{
    as_array, as_object, index, join, jsonl_values, opt_count, opt_nonneg_f64, opt_str, to_u32,
    type_name, FieldError, Loc,
};
use super::synth;
use super::{
    BuildContext, Built, ContextMode, Conversation, DatasetError, DatasetFlag, PathUse, Source,
    Turn, COMMA,
};

/// `--dataset multi_turn`.
pub struct MultiTurnSource;

/// `--dataset single_turn`.
pub struct SingleTurnSource;

/// Roles a dataset turn may send. An assistant turn is the model's job (its live reply), and a
/// `tool` message needs the `tool_call_id` of a live tool call, which a file cannot know.
const ROLES: &[&str] = &["user", "system", "developer"];

/// Modalities AIPerf accepts that a text-only chat benchmark cannot send.
const UNSUPPORTED: &[&str] = &["image", "images", "audio", "audios", "video", "videos"];

/// One parsed turn, before it becomes a [`Turn`].
#[derive(Clone, Debug)]
pub(crate) struct RowTurn {
    /// The serialised message object.
    pub message: Vec<u8>,
    /// Its content strings (token counting happens later, only for selected sessions).
    pub texts: Vec<String>,
    pub max_tokens: Option<u32>,
    pub timing: Timing,
    pub extra: Option<Box<Map<String, Value>>>,
}

/// A row's `delay` or `timestamp`, in milliseconds (at most one of them as read; the trace
/// sources then derive `delay_ms` from the timestamps and keep both).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Timing {
    pub delay_ms: Option<f64>,
    pub timestamp_ms: Option<f64>,
}

/// Reads `delay` and `timestamp` (ms) from `obj`; giving both is an error.
pub(crate) fn parse_timing(obj: &Map<String, Value>, parent: &str) -> Result<Timing, FieldError> {
    let delay_ms = opt_nonneg_f64(obj, "delay", parent)?;
    let timestamp_ms = opt_nonneg_f64(obj, "timestamp", parent)?;
    if delay_ms.is_some() && timestamp_ms.is_some() {
        return Err(FieldError::new(
            join(parent, "delay"),
            "give `timestamp` or `delay`, not both",
        ));
    }
    Ok(Timing {
        delay_ms,
        timestamp_ms,
    })
}

/// The wait before each turn of a session, in nanoseconds (the first is always 0): `delay` if
/// given, else this turn's `timestamp` minus the previous turn's, else 0. A timestamp earlier
/// than the previous one is an error at that turn (index, field).
pub(crate) fn session_delays_ns(
    timings: &[Timing],
    field: impl Fn(usize) -> String,
) -> Result<Vec<u64>, (usize, FieldError)> {
    let mut out = Vec::with_capacity(timings.len());
    for (k, t) in timings.iter().enumerate() {
        if k == 0 {
            out.push(0);
            continue;
        }
        let ms = match (t.delay_ms, t.timestamp_ms, timings[k - 1].timestamp_ms) {
            (Some(d), _, _) => d,
            (None, Some(ts), Some(prev)) if ts >= prev => ts - prev,
            (None, Some(ts), Some(prev)) => {
                return Err((
                    k,
                    FieldError::new(
                        field(k),
                        format!("{ts} is earlier than the previous turn's timestamp {prev}"),
                    ),
                ))
            }
            _ => 0.0,
        };
        out.push(ms_to_ns(ms));
    }
    Ok(out)
}

/// Milliseconds (finite, non-negative: checked when read) to nanoseconds, saturating.
pub(crate) fn ms_to_ns(ms: f64) -> u64 {
    (ms * 1e6).round().min(u64::MAX as f64) as u64
}

/// Per-turn `max_tokens` from `output_length` (0 is an error: servers reject `max_tokens: 0`).
pub(crate) fn parse_output_length(
    obj: &Map<String, Value>,
    parent: &str,
) -> Result<Option<u32>, FieldError> {
    let path = join(parent, "output_length");
    match opt_count(obj, "output_length", parent)? {
        None => Ok(None),
        Some(0) => Err(FieldError::new(path, "must be at least 1")),
        Some(n) => to_u32(n, &path).map(Some),
    }
}

/// `extra`: an object of body fields for this request; it may not replace what parley builds.
pub(crate) fn parse_extra(
    obj: &Map<String, Value>,
    parent: &str,
) -> Result<Option<Box<Map<String, Value>>>, FieldError> {
    let path = join(parent, "extra");
    match obj.get("extra") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let m = as_object(v, &path)?;
            check_body_fields(m, &path)?;
            Ok(Some(Box::new(m.clone())))
        }
    }
}

/// Body fields from a dataset may set anything but the messages and streaming, which parley owns.
pub(crate) fn check_body_fields(m: &Map<String, Value>, path: &str) -> Result<(), FieldError> {
    for key in ["messages", "prompt", "stream", "stream_options"] {
        if m.contains_key(key) {
            return Err(FieldError::new(
                join(path, key),
                "is set by parley (messages from the dataset, streaming from --stream) and \
                 cannot be given here",
            ));
        }
    }
    Ok(())
}

/// One turn object of either format.
pub(crate) fn parse_turn(obj: &Map<String, Value>, parent: &str) -> Result<RowTurn, FieldError> {
    for key in UNSUPPORTED {
        if obj.get(*key).is_some_and(|v| !v.is_null()) {
            return Err(FieldError::new(
                join(parent, key),
                "non-text inputs are not supported (parley sends text chat requests)",
            ));
        }
    }
    let role = opt_str(obj, "role", parent)?.unwrap_or("user");
    if !ROLES.contains(&role) {
        return Err(FieldError::new(
            join(parent, "role"),
            format!(
                "unsupported role \"{role}\" (expected {}; replies come from the model)",
                ROLES.join(", ")
            ),
        ));
    }
    let text = opt_str(obj, "text", parent)?;
    let texts = match obj.get("texts") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_texts(v, &join(parent, "texts"))?),
    };
    let texts = match (text, texts) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                join(parent, "texts"),
                "give `text` or `texts`, not both",
            ))
        }
        (Some(t), None) => vec![t.to_string()],
        (None, Some(ts)) => ts,
        (None, None) => {
            return Err(FieldError::new(
                join(parent, "text"),
                "missing (a turn needs `text` or `texts`)",
            ))
        }
    };
    let message = if texts.len() == 1 {
        super::message_json(role, &texts[0])
    } else {
        let parts: Vec<Value> = texts
            .iter()
            .map(|t| serde_json::json!({"type": "text", "text": t}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"role": role, "content": parts}))
            .expect("serialising a JSON value cannot fail")
    };
    Ok(RowTurn {
        message,
        texts,
        max_tokens: parse_output_length(obj, parent)?,
        timing: parse_timing(obj, parent)?,
        extra: parse_extra(obj, parent)?,
    })
}

/// `texts`: a non-empty array of strings, or of AIPerf `{"name": …, "contents": [str…]}`
/// objects (every content becomes one text part).
fn parse_texts(v: &Value, path: &str) -> Result<Vec<String>, FieldError> {
    let arr = as_array(v, path)?;
    let mut out = Vec::with_capacity(arr.len());
    for (i, item) in arr.iter().enumerate() {
        let p = index(path, i);
        match item {
            Value::String(s) => out.push(s.clone()),
            Value::Object(o) => {
                let cp = join(&p, "contents");
                let contents = as_array(o.get("contents").unwrap_or(&Value::Null), &cp)?;
                for (j, c) in contents.iter().enumerate() {
                    match c.as_str() {
                        Some(s) => out.push(s.to_string()),
                        None => {
                            return Err(FieldError::new(
                                index(&cp, j),
                                format!("expected a string, got {}", type_name(c)),
                            ))
                        }
                    }
                }
            }
            other => {
                return Err(FieldError::new(
                    p,
                    format!(
                        "expected a string or a {{\"contents\": [...]}} object, got {}",
                        type_name(other)
                    ),
                ))
            }
        }
    }
    if out.is_empty() {
        return Err(FieldError::new(path, "is empty"));
    }
    Ok(out)
}

/// A session id: a string or a number (`"7"` and `7` are different sessions).
pub(crate) fn session_key(v: &Value, path: &str) -> Result<String, FieldError> {
    match v {
        Value::String(_) | Value::Number(_) => Ok(v.to_string()),
        other => Err(FieldError::new(
            path,
            format!("expected a string or a number, got {}", type_name(other)),
        )),
    }
}

/// Groups items by key in order of first appearance; items without a key are sessions alone.
pub(crate) fn group_sessions<'k>(
    keys: impl IntoIterator<Item = Option<&'k str>>,
) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_key: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, key) in keys.into_iter().enumerate() {
        match key {
            None => groups.push(vec![i]),
            Some(k) => match by_key.get(k) {
                Some(&g) => groups[g].push(i),
                None => {
                    by_key.insert(k, groups.len());
                    groups.push(vec![i]);
                }
            },
        }
    }
    groups
}

/// A parsed session, ready to become a conversation.
struct Session {
    turns: Vec<RowTurn>,
    delays_ns: Vec<u64>,
}

/// Makes the selected sessions' conversations (token counting runs in parallel).
fn build_sessions(
    ctx: &BuildContext<'_>,
    sessions: Vec<Session>,
    context: ContextMode,
) -> Result<Built, DatasetError> {
    let picked = ctx.selection.pick(sessions.len());
    let tok = ctx.tokenizer;
    let conversations = synth::par_map(picked.len(), "reading sessions", |k| {
        let s = &sessions[picked[k]];
        let turns = s
            .turns
            .iter()
            .zip(&s.delays_ns)
            .map(|(t, &delay_ns)| Turn {
                delta: vec![Bytes::copy_from_slice(&t.message)],
                delta_tokens: Some(t.texts.iter().map(|x| tok.count(x) as u32).sum()),
                max_tokens: t.max_tokens,
                delay_ns,
                timestamp_ns: t.timing.timestamp_ms.map(ms_to_ns),
                reply: None,
                extra: t.extra.clone(),
                open: None,
            })
            .collect();
        Ok::<_, DatasetError>(Conversation { turns, context })
    })?;
    Ok(Built {
        conversations,
        filtered: 0,
    })
}

impl Source for MultiTurnSource {
    fn names(&self) -> &'static [&'static str] {
        &["multi_turn"]
    }

    fn path_use(&self) -> PathUse {
        PathUse::Required
    }

    fn describe(&self) -> &'static str {
        "AIPerf multi_turn JSONL: {\"session_id\", \"turns\": [{text|texts, delay, output_length, extra}]}"
    }

    fn flags(&self) -> &'static [DatasetFlag] {
        // Every turn's text, length and timing come from the file.
        &[]
    }

    fn has_timestamps(&self) -> bool {
        true
    }

    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Built, DatasetError> {
        let path = ctx.path.expect("path_use is Required");
        let rows = jsonl_values(path, ctx.problems)?;
        let mut sessions = Vec::with_capacity(rows.len());
        for (loc, v) in rows {
            match parse_multi_turn(&v) {
                Ok(s) => sessions.push(s),
                Err(e) => ctx.problems.report(loc, e),
            }
        }
        build_sessions(ctx, sessions, ContextMode::Live)
    }
}

/// One `multi_turn` line.
fn parse_multi_turn(v: &Value) -> Result<Session, FieldError> {
    let obj = as_object(v, "")?;
    if let Some(id) = obj.get("session_id").filter(|v| !v.is_null()) {
        session_key(id, "session_id")?;
    }
    let turns_v = as_array(super::input::required(obj, "turns", "")?, "turns")?;
    if turns_v.is_empty() {
        return Err(FieldError::new(
            "turns",
            "is empty (a session needs a turn)",
        ));
    }
    let mut turns = Vec::with_capacity(turns_v.len());
    for (k, t) in turns_v.iter().enumerate() {
        let p = index("turns", k);
        turns.push(parse_turn(as_object(t, &p)?, &p)?);
    }
    let timings: Vec<Timing> = turns.iter().map(|t| t.timing).collect();
    let delays_ns =
        session_delays_ns(&timings, |k| format!("turns[{k}].timestamp")).map_err(|(_, e)| e)?;
    Ok(Session { turns, delays_ns })
}

impl Source for SingleTurnSource {
    fn names(&self) -> &'static [&'static str] {
        &["single_turn"]
    }

    fn path_use(&self) -> PathUse {
        PathUse::Required
    }

    fn describe(&self) -> &'static str {
        "AIPerf single_turn JSONL: one request per line; rows sharing session_id run in order, without history"
    }

    fn flags(&self) -> &'static [DatasetFlag] {
        &[]
    }

    fn has_timestamps(&self) -> bool {
        true
    }

    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Built, DatasetError> {
        let path = ctx.path.expect("path_use is Required");
        let rows = jsonl_values(path, ctx.problems)?;
        // (line, session key, turn) of every valid row.
        let mut good: Vec<(Loc, Option<String>, RowTurn)> = Vec::with_capacity(rows.len());
        for (loc, v) in rows {
            let parsed = as_object(&v, "").and_then(|obj| {
                let key = match obj.get("session_id").filter(|v| !v.is_null()) {
                    Some(id) => Some(session_key(id, "session_id")?),
                    None => None,
                };
                Ok((key, parse_turn(obj, "")?))
            });
            match parsed {
                Ok((key, turn)) => good.push((loc, key, turn)),
                Err(e) => ctx.problems.report(loc, e),
            }
        }
        let groups = group_sessions(good.iter().map(|(_, k, _)| k.as_deref()));
        let mut sessions = Vec::with_capacity(groups.len());
        for g in groups {
            let timings: Vec<Timing> = g.iter().map(|&i| good[i].2.timing).collect();
            match session_delays_ns(&timings, |_| "timestamp".to_string()) {
                Ok(delays_ns) => sessions.push(Session {
                    turns: g.iter().map(|&i| good[i].2.clone()).collect(),
                    delays_ns,
                }),
                Err((k, mut e)) => {
                    e.reason.push_str(" (its whole session is left out)");
                    ctx.problems.report(good[g[k]].0, e);
                }
            }
        }
        build_sessions(ctx, sessions, ContextMode::Verbatim)
    }
}

/// Joins serialised message objects into one delta (tests and verbatim arrays).
pub(crate) fn join_messages(messages: impl IntoIterator<Item = Bytes>) -> Vec<Bytes> {
    let mut out = Vec::new();
    for m in messages {
        if !out.is_empty() {
            out.push(COMMA);
        }
        out.push(m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::workload::input::Problems;
    use crate::workload::{DatasetParams, Selection};

    use crate::tokenizer::test_builtin as tok;

    fn run(source: &dyn Source, text: &str, skip: bool) -> Result<(Built, Problems), DatasetError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, text).unwrap();
        let params = DatasetParams::default();
        let mut problems = Problems::new(Some(&path), skip);
        let built = {
            let mut ctx = BuildContext {
                name: source.names()[0],
                path: Some(&path),
                tokenizer: tok(),
                params: &params,
                selection: Selection::default(),
                problems: &mut problems,
            };
            source.build(&mut ctx)?
        };
        Ok((built, problems))
    }

    fn message(t: &Turn) -> Value {
        serde_json::from_slice(&t.delta_bytes()).unwrap()
    }

    #[test]
    fn multi_turn_fields() {
        let data = r#"{"session_id":"a","turns":[{"text":"hello there","output_length":7,"delay":5},{"texts":["x","y"],"delay":250,"extra":{"ignore_eos":true}},{"texts":[{"name":"q","contents":["p"]}],"role":"system"}]}
{"turns":[{"text":"a","timestamp":1000},{"text":"b","timestamp":1750.5}]}
"#;
        let (b, p) = run(&MultiTurnSource, data, false).unwrap();
        assert_eq!(p.count(), 0);
        let c = &b.conversations;
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].context, ContextMode::Live);
        let t = &c[0].turns;
        assert_eq!(t.len(), 3);
        assert_eq!(message(&t[0])["content"], "hello there");
        assert_eq!(t[0].delta_tokens, Some(2));
        assert_eq!(t[0].max_tokens, Some(7));
        assert_eq!(t[0].delay_ns, 0, "the first turn's delay is not waited");
        assert_eq!(t[1].delay_ns, 250_000_000);
        assert_eq!(message(&t[1])["content"][1]["text"], "y");
        assert_eq!(t[1].extra.as_ref().unwrap()["ignore_eos"], true);
        assert_eq!(message(&t[2])["role"], "system");
        assert_eq!(c[1].turns[1].delay_ns, 750_500_000);
        // Recorded send times are kept as they are (ns), beside the delays made from them.
        assert_eq!(c[1].turns[0].timestamp_ns, Some(1_000_000_000));
        assert_eq!(c[1].turns[1].timestamp_ns, Some(1_750_500_000));
        assert!(c[0].turns.iter().all(|t| t.timestamp_ns.is_none()));
    }

    #[test]
    fn multi_turn_bad_entries_name_the_field() {
        let data = r#"{"turns":[{"text":"a"},{"text":"b","role":"bot"}]}
{"turns":[]}
{"turns":[{"text":"a","timestamp":5},{"text":"b","timestamp":3}]}
{"turns":[{"text":"a","delay":-1}]}
{"turns":[{"text":"a","delay":1,"timestamp":1}]}
{"turns":[{"text":"a","output_length":0}]}
{"turns":[{"image":"x.png"}]}
{"turns":[{"text":"a","extra":{"messages":[]}}]}
{"turns":[{"texts":[]}]}
{"turns":[{"text":"ok"}]}
"#;
        let (b, p) = run(&MultiTurnSource, data, true).unwrap();
        assert_eq!(b.conversations.len(), 1);
        let fields: Vec<(Loc, &str)> = p
            .listed()
            .iter()
            .map(|e| (e.loc, e.error.field.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                (Loc::Line(1), "turns[1].role"),
                (Loc::Line(2), "turns"),
                (Loc::Line(3), "turns[1].timestamp"),
                (Loc::Line(4), "turns[0].delay"),
                (Loc::Line(5), "turns[0].delay"),
                (Loc::Line(6), "turns[0].output_length"),
                (Loc::Line(7), "turns[0].image"),
                (Loc::Line(8), "turns[0].extra.messages"),
                (Loc::Line(9), "turns[0].texts"),
            ]
        );
    }

    #[test]
    fn single_turn_groups_by_session_in_file_order() {
        let data = r#"{"text":"one","session_id":"s"}
{"text":"alone"}
{"text":"two","session_id":"s","delay":40}
{"text":"x","session_id":7,"timestamp":100}
{"text":"y","session_id":7,"timestamp":160,"output_length":3}
"#;
        let (b, _) = run(&SingleTurnSource, data, false).unwrap();
        let c = &b.conversations;
        let contents: Vec<Vec<String>> = c
            .iter()
            .map(|c| {
                c.turns
                    .iter()
                    .map(|t| message(t)["content"].as_str().unwrap().to_string())
                    .collect()
            })
            .collect();
        assert_eq!(
            contents,
            [vec!["one", "two"], vec!["alone"], vec!["x", "y"]]
        );
        assert!(c.iter().all(|c| c.context == ContextMode::Verbatim));
        assert_eq!(c[0].turns[1].delay_ns, 40_000_000);
        assert_eq!(c[2].turns[1].delay_ns, 60_000_000);
        assert_eq!(c[2].turns[1].timestamp_ns, Some(160_000_000));
        assert_eq!(c[2].turns[1].max_tokens, Some(3));
    }

    #[test]
    fn single_turn_bad_timestamp_drops_its_session() {
        let data = "{\"text\":\"a\",\"session_id\":1,\"timestamp\":9}\n{\"text\":\"b\",\"session_id\":1,\"timestamp\":2}\n{\"text\":\"c\"}\n";
        let (b, p) = run(&SingleTurnSource, data, true).unwrap();
        assert_eq!(b.conversations.len(), 1);
        assert_eq!(p.listed()[0].loc, Loc::Line(2));
        assert_eq!(p.listed()[0].error.field, "timestamp");
        assert!(p.listed()[0].error.reason.contains("left out"));
    }
}
