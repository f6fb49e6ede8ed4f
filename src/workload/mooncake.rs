//! Trace replay: `mooncake_trace` and `bailian_trace` JSONL, with `hash_ids` turned into shared
//! token blocks so a server's prefix cache sees the sharing the trace recorded.
//!
//! **mooncake_trace** rows carry exactly one input: `input_length` (a synthetic prompt of that
//! many tokens, optionally laid out from `hash_ids`), `text_input` (a user message), `messages`
//! (+ `tools`: a whole message array) or `payload` (a whole request body). `session_id` groups rows
//! into sessions in file order; a row without one is a session alone. `input_length`/`text_input`
//! rows are live turns (each row's prompt is a *new* user message appended to the history with
//! the model's replies, as AIPerf's `deltas_without_responses` does, so a multi-row session's
//! prompt grows past the recorded `input_length`); `messages`/`payload` rows are sent verbatim
//! ([`ContextMode::Verbatim`]). `message_mode: "delta"` makes a `messages` row a live delta.
//!
//! **bailian_trace** rows (`chat_id`, `parent_chat_id` = −1 for a root, `timestamp` in seconds,
//! `input_length`, `output_length`, `turn`, `hash_ids`) chain into sessions through their parent.
//! In this trace `input_length` and `hash_ids` describe a request's *whole* prompt (a child's
//! hash_ids start with its parent's), so each request sends one user message of exactly
//! `input_length` tokens, verbatim; the shared history reaches the server as shared blocks.
//!
//! **hash_ids → prompt** (as AIPerf `_build_token_sequence`): with block size B
//! (`--isl-block-size`, default 512 for mooncake, 16 for bailian), M ids and length L, block i is
//! the text of hash_id i, B tokens long; if M·B > L the last block is L − (M−1)·B tokens; if
//! M·B < L the prompt ends with L − M·B fresh tokens. One hash_id's block is one `Bytes`, made
//! once from `(--seed, hash_id)` and referenced by every turn that uses it. Blocks are runs of
//! single-token words that each start with a space, so blocks concatenate without merging and
//! the prompt is exactly L tokens. A hash_id used at two block sizes, or more hash_ids than L
//! tokens can hold, is a bad entry.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::aiperf::{
    check_body_fields, group_sessions, join_messages, parse_extra, parse_output_length,
    parse_timing, session_delays_ns, session_key, Timing,
};
use super::input::{
    as_array, as_count, as_object, index, join, jsonl_values, opt_count, opt_str, required, to_u32,
    type_name, FieldError, Loc,
};
use super::synth::{self, stream_seed, Synth};
use super::{
    content_open, escape_piece, BuildContext, Built, ContextMode, Conversation, DatasetError,
    DatasetFlag, PathUse, Source, Turn, CONTENT_CLOSE,
};

/// `--dataset mooncake_trace`.
pub struct MooncakeSource;

/// `--dataset bailian_trace`.
pub struct BailianSource;

pub const MOONCAKE_BLOCK_SIZE: u32 = 512;
pub const BAILIAN_BLOCK_SIZE: u32 = 16;

/// Keeps the padding tokens' RNG streams apart from the blocks' (both are keyed by a number).
const PAD_STREAM: u64 = 0x7061_645f_746f_6b73;

/// Roles a verbatim message array may hold.
const MESSAGE_ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

/// What one row sends.
#[derive(Debug)]
enum Input {
    /// A synthetic user message of `len` tokens: blocks of `hash_ids`, then `pad` fresh tokens.
    Length {
        len: u32,
        hash_ids: Vec<u64>,
        pad: u32,
    },
    /// A user message with this text.
    Text(String),
    /// Serialised message objects, sent verbatim (or as a live delta).
    Messages(Vec<Bytes>),
}

#[derive(Debug)]
struct Row {
    loc: Loc,
    /// 0-based row number among the file's valid rows: seeds the row's fresh tokens.
    ordinal: u64,
    input: Input,
    verbatim: bool,
    max_tokens: Option<u32>,
    timing: Timing,
    extra: Option<Box<Map<String, Value>>>,
}

/// Block sizes of every hash_id seen, with the line that fixed each size.
#[derive(Default)]
struct BlockSizes {
    sizes: HashMap<u64, (u32, Loc)>,
}

impl BlockSizes {
    /// Lays out `len` tokens over `ids` with block size `b`: the tokens left for padding, after
    /// checking every block's size against earlier uses. Sizes are recorded only if the row is
    /// valid as a whole (the caller calls [`BlockSizes::record`]).
    fn layout(&self, len: u32, ids: &[u64], b: u32, field: &str) -> Result<u32, FieldError> {
        let m = ids.len() as u64;
        let (len64, b64) = (u64::from(len), u64::from(b));
        if m == 0 {
            return Ok(len);
        }
        if (m - 1) * b64 >= len64 {
            return Err(FieldError::new(
                field,
                format!(
                    "{m} hash_ids of {b}-token blocks need more than {} tokens, but input_length \
                     is {len} (block size: --isl-block-size)",
                    (m - 1) * b64
                ),
            ));
        }
        for (i, id) in ids.iter().enumerate() {
            let size = block_size(len, m, b, i);
            if let Some(&(prev, loc)) = self.sizes.get(id) {
                if prev != size {
                    return Err(FieldError::new(
                        index(field, i),
                        format!(
                            "hash_id {id} is a block of {prev} tokens at {loc} but of {size} \
                             tokens here (one hash_id, one block)"
                        ),
                    ));
                }
            }
        }
        // Equal ids within one row at different sizes (the last block shorter).
        let mut own: HashMap<u64, u32> = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            let size = block_size(len, m, b, i);
            if let Some(&prev) = own.get(id) {
                if prev != size {
                    return Err(FieldError::new(
                        index(field, i),
                        format!(
                            "hash_id {id} is a block of {prev} tokens earlier in this row but of \
                             {size} tokens here (one hash_id, one block)"
                        ),
                    ));
                }
            }
            own.insert(*id, size);
        }
        Ok(len.saturating_sub((m * b64).min(u64::from(u32::MAX)) as u32))
    }

    fn record(&mut self, len: u32, ids: &[u64], b: u32, loc: Loc) {
        let m = ids.len() as u64;
        for (i, id) in ids.iter().enumerate() {
            self.sizes
                .entry(*id)
                .or_insert((block_size(len, m, b, i), loc));
        }
    }
}

/// Tokens of block `i` of `m` for a prompt of `len` tokens (the layout was checked).
fn block_size(len: u32, m: u64, b: u32, i: usize) -> u32 {
    if (i as u64) + 1 < m {
        b
    } else {
        let before = (m - 1) * u64::from(b);
        (u64::from(len) - before).min(u64::from(b)) as u32
    }
}

/// `hash_ids`: an array of non-negative integers.
fn parse_hash_ids(obj: &Map<String, Value>, parent: &str) -> Result<Vec<u64>, FieldError> {
    let path = join(parent, "hash_ids");
    match obj.get("hash_ids") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v) => as_array(v, &path)?
            .iter()
            .enumerate()
            .map(|(i, x)| as_count(x, &index(&path, i)))
            .collect(),
    }
}

/// `input_length` ≥ 1.
fn parse_input_length(obj: &Map<String, Value>) -> Result<u32, FieldError> {
    let n = as_count(required(obj, "input_length", "")?, "input_length")?;
    if n == 0 {
        return Err(FieldError::new("input_length", "must be at least 1"));
    }
    to_u32(n, "input_length")
}

/// A message array: non-empty, objects with a known role.
fn parse_messages(v: &Value, path: &str) -> Result<Vec<Bytes>, FieldError> {
    let arr = as_array(v, path)?;
    if arr.is_empty() {
        return Err(FieldError::new(path, "is empty"));
    }
    arr.iter()
        .enumerate()
        .map(|(i, m)| {
            let p = index(path, i);
            let o = as_object(m, &p)?;
            let role = super::input::req_str(o, "role", &p)?;
            if !MESSAGE_ROLES.contains(&role) {
                return Err(FieldError::new(
                    join(&p, "role"),
                    format!(
                        "unknown role \"{role}\" (expected {})",
                        MESSAGE_ROLES.join(", ")
                    ),
                ));
            }
            match o.get("content") {
                None | Some(Value::Null | Value::String(_) | Value::Array(_)) => {}
                Some(other) => {
                    return Err(FieldError::new(
                        join(&p, "content"),
                        format!("expected a string or an array, got {}", type_name(other)),
                    ))
                }
            }
            Ok(Bytes::from(
                serde_json::to_vec(m).expect("serialising a JSON value cannot fail"),
            ))
        })
        .collect()
}

/// A row's input, whether it is a whole array (verbatim), and its body fields.
type ParsedInput = (Input, bool, Option<Box<Map<String, Value>>>);

/// One `mooncake_trace` row (without its session id).
fn parse_mooncake_row(
    obj: &Map<String, Value>,
    blocks: &BlockSizes,
    block_tokens: u32,
) -> Result<ParsedInput, FieldError> {
    const INPUTS: [&str; 4] = ["input_length", "text_input", "messages", "payload"];
    let given: Vec<&str> = INPUTS
        .iter()
        .copied()
        .filter(|k| obj.get(*k).is_some_and(|v| !v.is_null()))
        .collect();
    let kind =
        match given.as_slice() {
            [one] => *one,
            [] => return Err(FieldError::new(
                "input_length",
                "missing (a row needs exactly one of input_length, text_input, messages, payload)",
            )),
            [_, second, ..] => {
                return Err(FieldError::new(
                    *second,
                    format!(
                        "a row takes exactly one of input_length, text_input, messages, payload; \
                     this one has {}",
                        given.join(" and ")
                    ),
                ))
            }
        };
    if kind != "input_length" && obj.get("hash_ids").is_some_and(|v| !v.is_null()) {
        return Err(FieldError::new(
            "hash_ids",
            "only applies to input_length rows",
        ));
    }
    if kind != "messages" && obj.get("tools").is_some_and(|v| !v.is_null()) {
        return Err(FieldError::new("tools", "only applies to messages rows"));
    }
    let mode = opt_str(obj, "message_mode", "")?;
    let verbatim = match (kind, mode) {
        ("messages", None | Some("history")) | ("payload", None | Some("history")) => true,
        ("messages", Some("delta")) | (_, None | Some("delta")) => false,
        (_, Some("history")) => {
            return Err(FieldError::new(
                "message_mode",
                format!("\"history\" applies to messages and payload rows, not {kind}"),
            ))
        }
        (_, Some(other)) => {
            return Err(FieldError::new(
                "message_mode",
                format!("unknown mode \"{other}\" (expected history or delta)"),
            ))
        }
    };
    if kind == "payload" && !verbatim {
        return Err(FieldError::new(
            "message_mode",
            "a payload is a whole request; it cannot be a delta",
        ));
    }
    let mut extra = parse_extra(obj, "")?;
    let input = match kind {
        "input_length" => {
            let len = parse_input_length(obj)?;
            let hash_ids = parse_hash_ids(obj, "")?;
            let pad = blocks.layout(len, &hash_ids, block_tokens, "hash_ids")?;
            Input::Length { len, hash_ids, pad }
        }
        "text_input" => Input::Text(super::input::req_str(obj, "text_input", "")?.to_string()),
        "messages" => {
            let messages = parse_messages(&obj["messages"], "messages")?;
            if let Some(tools) = obj.get("tools").filter(|v| !v.is_null()) {
                as_array(tools, "tools")?;
                extra
                    .get_or_insert_with(Default::default)
                    .insert("tools".into(), tools.clone());
            }
            Input::Messages(messages)
        }
        _ => {
            let payload = as_object(&obj["payload"], "payload")?;
            let messages = parse_messages(
                required(payload, "messages", "payload")?,
                "payload.messages",
            )?;
            // The body's other fields ride along as this request's extra fields; the model and
            // streaming stay the run's (--model, --stream).
            let mut fields: Map<String, Value> = payload
                .iter()
                .filter(|(k, _)| {
                    !["messages", "model", "stream", "stream_options"].contains(&k.as_str())
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            check_body_fields(&fields, "payload")?;
            if let Some(e) = extra.take() {
                fields.extend(*e);
            }
            if !fields.is_empty() {
                extra = Some(Box::new(fields));
            }
            Input::Messages(messages)
        }
    };
    Ok((input, verbatim, extra))
}

/// Parsed rows grouped into sessions; bad rows and bad sessions are reported.
fn mooncake_sessions(
    rows: Vec<(Loc, Value)>,
    block_tokens: u32,
    ctx: &mut BuildContext<'_>,
) -> Vec<Vec<Row>> {
    let mut blocks = BlockSizes::default();
    let mut good: Vec<(Option<String>, Row)> = Vec::with_capacity(rows.len());
    for (loc, v) in rows {
        let parsed = as_object(&v, "").and_then(|obj| {
            let key = match obj.get("session_id").filter(|v| !v.is_null()) {
                Some(id) => Some(session_key(id, "session_id")?),
                None => None,
            };
            let (input, verbatim, extra) = parse_mooncake_row(obj, &blocks, block_tokens)?;
            let row = Row {
                loc,
                ordinal: 0,
                input,
                verbatim,
                max_tokens: parse_output_length(obj, "")?,
                timing: parse_timing(obj, "")?,
                extra,
            };
            Ok((key, row))
        });
        match parsed {
            Ok((key, mut row)) => {
                if let Input::Length { len, hash_ids, .. } = &row.input {
                    blocks.record(*len, hash_ids, block_tokens, loc);
                }
                row.ordinal = good.len() as u64;
                good.push((key, row));
            }
            Err(e) => ctx.problems.report(loc, e),
        }
    }
    let groups = group_sessions(good.iter().map(|(k, _)| k.as_deref()));
    let mut slots: Vec<Option<Row>> = good.into_iter().map(|(_, r)| Some(r)).collect();
    let mut sessions = Vec::with_capacity(groups.len());
    for g in groups {
        let rows: Vec<Row> = g.iter().filter_map(|&i| slots[i].take()).collect();
        if let Some(k) = rows.iter().position(|r| r.verbatim != rows[0].verbatim) {
            ctx.problems.report(
                rows[k].loc,
                FieldError::new(
                    "session_id",
                    "this session mixes whole message arrays (messages/payload) with live turns \
                     (input_length/text_input/delta messages); its whole session is left out",
                ),
            );
            continue;
        }
        if let Some(rows) = with_delays(rows, "timestamp", ctx) {
            sessions.push(rows);
        }
    }
    sessions
}

/// Checks the session's timestamps are in order (else reports and drops it); the delays go
/// into each row's timing as `delay_ms`, next to the recorded `timestamp_ms` (kept for
/// fixed-schedule replay).
fn with_delays(mut rows: Vec<Row>, field: &str, ctx: &mut BuildContext<'_>) -> Option<Vec<Row>> {
    let timings: Vec<Timing> = rows.iter().map(|r| r.timing).collect();
    match session_delays_ns(&timings, |_| field.to_string()) {
        Ok(delays) => {
            for (r, d) in rows.iter_mut().zip(delays) {
                r.timing.delay_ms = Some(d as f64 / 1e6);
            }
            Some(rows)
        }
        Err((k, mut e)) => {
            e.reason.push_str(" (its whole session is left out)");
            ctx.problems.report(rows[k].loc, e);
            None
        }
    }
}

/// Makes the selected sessions' conversations: first every distinct hash block they use (once
/// each, in parallel), then the turns (padding in parallel).
fn build_conversations(
    ctx: &BuildContext<'_>,
    sessions: Vec<Vec<Row>>,
    block_tokens: u32,
) -> Result<Built, DatasetError> {
    let picked = ctx.selection.pick(sessions.len());
    let seed = ctx.params.seed;
    // Distinct blocks of the selected sessions, with their sizes (consistent: checked).
    let mut wanted: HashMap<u64, u32> = HashMap::new();
    let mut needs_synth = false;
    for &s in &picked {
        for r in &sessions[s] {
            if let Input::Length { len, hash_ids, .. } = &r.input {
                needs_synth = true;
                let m = hash_ids.len() as u64;
                for (i, id) in hash_ids.iter().enumerate() {
                    wanted.insert(*id, block_size(*len, m, block_tokens, i));
                }
            }
        }
    }
    let synth = if needs_synth {
        Some(Synth::new(ctx.tokenizer)?)
    } else {
        None
    };
    let mut ids: Vec<(u64, u32)> = wanted.into_iter().collect();
    ids.sort_unstable();
    let texts = match synth {
        Some(s) => synth::par_map(ids.len(), "hash blocks", |k| {
            let (id, size) = ids[k];
            let offset = (stream_seed(seed, id) % s.vocabulary() as u64) as usize;
            s.text_at(size, offset).map(|t| escape_piece(&t))
        })?,
        None => Vec::new(),
    };
    let blocks: HashMap<u64, Bytes> = ids.iter().map(|&(id, _)| id).zip(texts).collect();
    let user_open = content_open("user");
    let tok = ctx.tokenizer;
    let conversations = synth::par_map(picked.len(), "building turns", |k| {
        let rows = &sessions[picked[k]];
        let mut turns = Vec::with_capacity(rows.len());
        for r in rows {
            let (delta, delta_tokens) = match &r.input {
                Input::Length { len, hash_ids, pad } => {
                    let mut d = Vec::with_capacity(hash_ids.len() + 3);
                    d.push(user_open.clone());
                    d.extend(hash_ids.iter().map(|id| blocks[id].clone()));
                    if *pad > 0 {
                        let s = synth.expect("synth exists when a row has input_length");
                        let mut rng = synth::item_rng(seed ^ PAD_STREAM, r.ordinal);
                        d.push(escape_piece(&s.text(*pad, &mut rng)?));
                    }
                    d.push(CONTENT_CLOSE);
                    (d, Some(*len))
                }
                Input::Text(t) => (
                    vec![Bytes::from(super::message_json("user", t))],
                    Some(tok.count(t) as u32),
                ),
                Input::Messages(ms) => (join_messages(ms.iter().cloned()), None),
            };
            turns.push(Turn {
                delta,
                delta_tokens,
                max_tokens: r.max_tokens,
                delay_ns: r.timing.delay_ms.map_or(0, super::aiperf::ms_to_ns),
                timestamp_ns: r.timing.timestamp_ms.map(super::aiperf::ms_to_ns),
                reply: None,
                extra: r.extra.clone(),
                open: None,
            });
        }
        let context = if rows[0].verbatim {
            ContextMode::Verbatim
        } else {
            ContextMode::Live
        };
        Ok::<_, DatasetError>(Conversation { turns, context })
    })?;
    Ok(Built {
        conversations,
        filtered: 0,
    })
}

fn block_tokens(ctx: &BuildContext<'_>, default: u32) -> u32 {
    ctx.params.isl_block_size.unwrap_or(default).max(1)
}

impl Source for MooncakeSource {
    fn names(&self) -> &'static [&'static str] {
        &["mooncake_trace"]
    }

    fn path_use(&self) -> PathUse {
        PathUse::Required
    }

    fn describe(&self) -> &'static str {
        "Mooncake trace JSONL: input_length+hash_ids | text_input | messages | payload, output_length, timestamp/delay, session_id"
    }

    fn flags(&self) -> &'static [DatasetFlag] {
        &[DatasetFlag::IslBlockSize]
    }

    fn has_timestamps(&self) -> bool {
        true
    }

    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Built, DatasetError> {
        let path = ctx.path.expect("path_use is Required");
        let b = block_tokens(ctx, MOONCAKE_BLOCK_SIZE);
        let rows = jsonl_values(path, ctx.problems)?;
        let sessions = mooncake_sessions(rows, b, ctx);
        build_conversations(ctx, sessions, b)
    }
}

impl Source for BailianSource {
    fn names(&self) -> &'static [&'static str] {
        &["bailian_trace"]
    }

    fn path_use(&self) -> PathUse {
        PathUse::Required
    }

    fn describe(&self) -> &'static str {
        "Alibaba Bailian trace JSONL: chat_id, parent_chat_id, timestamp (s), input_length, output_length, hash_ids"
    }

    fn flags(&self) -> &'static [DatasetFlag] {
        &[DatasetFlag::IslBlockSize]
    }

    fn has_timestamps(&self) -> bool {
        true
    }

    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Built, DatasetError> {
        let path = ctx.path.expect("path_use is Required");
        let b = block_tokens(ctx, BAILIAN_BLOCK_SIZE);
        let rows = jsonl_values(path, ctx.problems)?;
        let mut blocks = BlockSizes::default();
        // Sessions as lists of rows; for each chat_id, (session index, position in it).
        let mut sessions: Vec<Vec<Row>> = Vec::new();
        let mut chats: HashMap<String, (usize, usize)> = HashMap::new();
        let mut ordinal = 0u64;
        for (loc, v) in rows {
            let parsed = as_object(&v, "").and_then(|obj| parse_bailian_row(obj, &blocks, b));
            let (chat, parent, row) = match parsed {
                Ok(x) => x,
                Err(e) => {
                    ctx.problems.report(loc, e);
                    continue;
                }
            };
            if chats.contains_key(&chat) {
                ctx.problems.report(
                    loc,
                    FieldError::new("chat_id", format!("{chat} appears on an earlier line")),
                );
                continue;
            }
            let row = Row {
                loc,
                ordinal,
                ..row
            };
            ordinal += 1;
            let slot = match parent {
                None => None,
                Some(p) => match chats.get(&p) {
                    Some(&slot) => Some(slot),
                    None => {
                        ctx.problems.report(
                            loc,
                            FieldError::new(
                                "parent_chat_id",
                                format!("chat {p} is not on an earlier valid line"),
                            ),
                        );
                        continue;
                    }
                },
            };
            if let Input::Length { len, hash_ids, .. } = &row.input {
                blocks.record(*len, hash_ids, b, loc);
            }
            let at = match slot {
                // The parent ends its session: this request continues it.
                Some((s, pos)) if pos + 1 == sessions[s].len() => {
                    if let Some(prev) = sessions[s][pos].timing.timestamp_ms {
                        if row.timing.timestamp_ms.is_some_and(|t| t < prev) {
                            ctx.problems.report(
                                loc,
                                FieldError::new(
                                    "timestamp",
                                    "is earlier than its parent's timestamp",
                                ),
                            );
                            continue;
                        }
                    }
                    s
                }
                // A root, or a second child of one parent (a branch): a new session. Its
                // blocks still share the parent's prefix.
                _ => {
                    sessions.push(Vec::new());
                    sessions.len() - 1
                }
            };
            chats.insert(chat, (at, sessions[at].len()));
            sessions[at].push(row);
        }
        let sessions: Vec<Vec<Row>> = sessions
            .into_iter()
            .filter_map(|rows| with_delays(rows, "timestamp", ctx))
            .collect();
        build_conversations(ctx, sessions, b)
    }
}

/// One `bailian_trace` row: (chat id, parent chat id unless a root, row).
fn parse_bailian_row(
    obj: &Map<String, Value>,
    blocks: &BlockSizes,
    b: u32,
) -> Result<(String, Option<String>, Row), FieldError> {
    let chat = session_key(required(obj, "chat_id", "")?, "chat_id")?;
    let parent_v = required(obj, "parent_chat_id", "")?;
    let parent = match parent_v.as_i64() {
        Some(-1) => None,
        _ => Some(session_key(parent_v, "parent_chat_id")?),
    };
    if parent.as_deref() == Some(chat.as_str()) {
        return Err(FieldError::new(
            "parent_chat_id",
            "is the row's own chat_id",
        ));
    }
    let ts_s = super::input::opt_nonneg_f64(obj, "timestamp", "")?;
    opt_count(obj, "turn", "")?;
    let len = parse_input_length(obj)?;
    let hash_ids = parse_hash_ids(obj, "")?;
    let pad = blocks.layout(len, &hash_ids, b, "hash_ids")?;
    let row = Row {
        loc: Loc::File,
        ordinal: 0,
        input: Input::Length { len, hash_ids, pad },
        // The whole prompt every time: see the module docs.
        verbatim: true,
        max_tokens: parse_output_length(obj, "")?,
        timing: Timing {
            delay_ms: None,
            timestamp_ms: ts_s.map(|s| s * 1e3),
        },
        extra: parse_extra(obj, "")?,
    };
    Ok((chat, parent, row))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::workload::input::Problems;
    use crate::workload::{DatasetParams, Selection};

    use crate::tokenizer::test_builtin as tok;

    fn run(
        source: &dyn Source,
        text: &str,
        block: Option<u32>,
        skip: bool,
    ) -> Result<(Built, Problems), DatasetError> {
        run_selected(source, text, block, skip, Selection::default())
    }

    fn run_selected(
        source: &dyn Source,
        text: &str,
        block: Option<u32>,
        skip: bool,
        selection: Selection,
    ) -> Result<(Built, Problems), DatasetError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(&path, text).unwrap();
        let params = DatasetParams {
            isl_block_size: block,
            seed: 5,
            ..DatasetParams::default()
        };
        let mut problems = Problems::new(Some(&path), skip);
        let built = {
            let mut ctx = BuildContext {
                name: source.names()[0],
                path: Some(&path),
                tokenizer: tok(),
                params: &params,
                selection,
                problems: &mut problems,
            };
            source.build(&mut ctx)?
        };
        Ok((built, problems))
    }

    fn content(t: &Turn) -> String {
        let v: Value = serde_json::from_slice(&t.delta_bytes()).unwrap();
        v["content"].as_str().unwrap().to_string()
    }

    #[test]
    fn hash_blocks_are_exact_shared_and_stored_once() {
        // Block size 8: full blocks, a short last block, padding, no hash_ids.
        let data = r#"{"input_length":20,"hash_ids":[1,2,3],"output_length":4}
{"input_length":16,"hash_ids":[1,2]}
{"input_length":30,"hash_ids":[1,2]}
{"input_length":5}
"#;
        let (b, p) = run(&MooncakeSource, data, Some(8), false).unwrap();
        assert_eq!(p.count(), 0);
        let c = &b.conversations;
        assert_eq!(c.len(), 4);
        for (conv, len) in c.iter().zip([20, 16, 30, 5]) {
            let t = &conv.turns[0];
            assert_eq!(t.delta_tokens, Some(len));
            assert_eq!(tok().encode_reference(&content(t)).len(), len as usize);
            assert_eq!(conv.context, ContextMode::Live);
        }
        assert_eq!(c[0].turns[0].max_tokens, Some(4));
        // hash_id 1 is the same buffer in every row (pointer-equal: stored once).
        let first = |i: usize| c[i].turns[0].delta[1].as_ptr();
        assert_eq!(first(0), first(1));
        assert_eq!(first(0), first(2));
        assert_eq!(c[0].turns[0].delta[2], c[2].turns[0].delta[2]);
        // The first 16 tokens of rows 0..3 are the same text.
        let words = |i: usize| -> Vec<String> {
            content(&c[i].turns[0])
                .split(' ')
                .map(str::to_string)
                .collect()
        };
        assert_eq!(words(0)[..17], words(1)[..17]);
        assert_eq!(words(0)[..17], words(2)[..17]);
        assert_ne!(words(0)[17], words(2)[17]);
    }

    /// Sessions are numbered in order of first appearance; every row is validated, selected or
    /// not, and a session's blocks are the same whichever sessions are selected.
    #[test]
    fn selection_picks_sessions_and_still_validates_all() {
        let data = r#"{"session_id":"a","input_length":10,"hash_ids":[1]}
{"session_id":"b","input_length":12,"hash_ids":[1]}
{"session_id":"a","input_length":5}
{"session_id":"c","input_length":3,"hash_ids":[1,2]}
{"session_id":"d","input_length":0}
"#;
        let all = run(&MooncakeSource, data, Some(8), true).unwrap().0;
        let sel = Selection {
            offset: 1,
            limit: 1,
            ..Selection::default()
        };
        let (one, p) = run_selected(&MooncakeSource, data, Some(8), true, sel).unwrap();
        assert_eq!(one.conversations.len(), 1);
        assert_eq!(one.conversations[0].turns[0].delta_tokens, Some(12));
        assert_eq!(
            one.conversations[0].turns[0].delta_bytes(),
            all.conversations[1].turns[0].delta_bytes()
        );
        assert_eq!(all.conversations[0].turns.len(), 2);
        let lines: Vec<Loc> = p.listed().iter().map(|e| e.loc).collect();
        assert_eq!(lines, [Loc::Line(4), Loc::Line(5)]);
    }

    #[test]
    fn deterministic_per_seed() {
        let data = "{\"input_length\":40,\"hash_ids\":[9,10]}\n{\"input_length\":30}\n";
        let a = run(&MooncakeSource, data, Some(16), false).unwrap().0;
        let b = run(&MooncakeSource, data, Some(16), false).unwrap().0;
        for (x, y) in a.conversations.iter().zip(&b.conversations) {
            assert_eq!(x.turns[0].delta_bytes(), y.turns[0].delta_bytes());
        }
    }

    #[test]
    fn contradictions_name_the_field() {
        let data = r#"{"input_length":16,"hash_ids":[1,2,3]}
{"input_length":20,"hash_ids":[1,2,3]}
{"input_length":24,"hash_ids":[7,3]}
{"input_length":10,"text_input":"x"}
{"output_length":3}
{"input_length":-4}
{"messages":[{"role":"bot","content":"x"}]}
{"input_length":9,"session_id":"s","timestamp":10}
{"input_length":9,"session_id":"s","timestamp":5}
{"messages":[{"role":"user","content":"x"}],"session_id":"m"}
{"input_length":4,"session_id":"m"}
{"text_input":"a","hash_ids":[1]}
"#;
        let (_, p) = run(&MooncakeSource, data, Some(8), true).unwrap();
        let got: Vec<(Loc, &str)> = p
            .listed()
            .iter()
            .map(|e| (e.loc, e.error.field.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (Loc::Line(1), "hash_ids"),
                // hash_id 3 is the 4-token last block on line 2, a full 8-token block here.
                (Loc::Line(3), "hash_ids[1]"),
                (Loc::Line(4), "text_input"),
                (Loc::Line(5), "input_length"),
                (Loc::Line(6), "input_length"),
                (Loc::Line(7), "messages[0].role"),
                (Loc::Line(12), "hash_ids"),
                (Loc::Line(9), "timestamp"),
                (Loc::Line(11), "session_id"),
            ]
        );
        assert!(
            p.listed()[0].error.reason.contains("input_length is 16"),
            "{}",
            p.listed()[0].error.reason
        );
    }

    #[test]
    fn messages_and_payload_are_verbatim() {
        let data = r#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}],"tools":[{"type":"function","function":{"name":"f"}}],"output_length":5}
{"payload":{"model":"x","messages":[{"role":"user","content":"p"}],"temperature":0.5,"stream":true}}
{"session_id":"d","text_input":"hello"}
{"session_id":"d","messages":[{"role":"user","content":"more"}],"message_mode":"delta","delay":20}
"#;
        let (b, p) = run(&MooncakeSource, data, None, false).unwrap();
        assert_eq!(p.count(), 0);
        let c = &b.conversations;
        assert_eq!(c[0].context, ContextMode::Verbatim);
        let arr: Vec<Value> = serde_json::from_str(&format!(
            "[{}]",
            String::from_utf8(c[0].turns[0].delta_bytes()).unwrap()
        ))
        .unwrap();
        assert_eq!(arr.len(), 2);
        assert!(c[0].turns[0].extra.as_ref().unwrap().contains_key("tools"));
        assert_eq!(c[0].turns[0].max_tokens, Some(5));
        let e = c[1].turns[0].extra.as_ref().unwrap();
        assert_eq!(e["temperature"], 0.5);
        assert!(!e.contains_key("model") && !e.contains_key("stream"));
        assert_eq!(c[2].context, ContextMode::Live);
        assert_eq!(c[2].turns.len(), 2);
        assert_eq!(c[2].turns[1].delay_ns, 20_000_000);
    }

    #[test]
    fn mooncake_keeps_recorded_times_next_to_delays() {
        let data = r#"{"input_length":4,"session_id":"s","timestamp":1000}
{"input_length":4,"session_id":"s","timestamp":1250.5}
{"input_length":4,"session_id":"s","delay":30}
{"input_length":4}
"#;
        let (b, _) = run(&MooncakeSource, data, None, false).unwrap();
        let c = &b.conversations;
        let t = &c[0].turns;
        assert_eq!(
            t.iter().map(|t| t.timestamp_ns).collect::<Vec<_>>(),
            [Some(1_000_000_000), Some(1_250_500_000), None]
        );
        assert_eq!(
            t.iter().map(|t| t.delay_ns).collect::<Vec<_>>(),
            [0, 250_500_000, 30_000_000]
        );
        assert_eq!(c[1].turns[0].timestamp_ns, None);
    }

    #[test]
    fn bailian_chains_by_parent() {
        let data = r#"{"chat_id":1,"parent_chat_id":-1,"timestamp":1.5,"input_length":48,"output_length":5,"turn":1,"hash_ids":[1,2,3]}
{"chat_id":2,"parent_chat_id":-1,"timestamp":1.6,"input_length":10,"output_length":5,"turn":1,"hash_ids":[4]}
{"chat_id":3,"parent_chat_id":1,"timestamp":2.0,"input_length":60,"output_length":5,"turn":2,"hash_ids":[1,2,3,5]}
{"chat_id":4,"parent_chat_id":1,"timestamp":2.5,"input_length":50,"output_length":5,"turn":2,"hash_ids":[1,2,3,6]}
{"chat_id":5,"parent_chat_id":9,"timestamp":3,"input_length":5,"output_length":5,"turn":2}
"#;
        let (b, p) = run(&BailianSource, data, None, true).unwrap();
        assert_eq!(p.listed().len(), 1);
        assert_eq!(p.listed()[0].error.field, "parent_chat_id");
        let c = &b.conversations;
        assert_eq!(c.len(), 3, "two roots and one branch");
        assert_eq!(c[0].turns.len(), 2);
        assert_eq!(c[0].context, ContextMode::Verbatim);
        assert_eq!(c[0].turns[1].delay_ns, 500_000_000);
        assert_eq!(c[0].turns[1].delta_tokens, Some(60));
        assert_eq!(tok().encode_reference(&content(&c[0].turns[1])).len(), 60);
        assert_eq!(c[2].turns.len(), 1);
        assert_eq!(c[2].turns[0].delay_ns, 0);
        // Recorded send times (seconds in this trace) are kept, in ns, for fixed schedules.
        let times = |c: &Conversation| -> Vec<Option<u64>> {
            c.turns.iter().map(|t| t.timestamp_ns).collect()
        };
        assert_eq!(times(&c[0]), [Some(1_500_000_000), Some(2_000_000_000)]);
        assert_eq!(times(&c[1]), [Some(1_600_000_000)]);
        assert_eq!(times(&c[2]), [Some(2_500_000_000)]);
        // The child starts with its parent's 48 block tokens (16-token blocks, default).
        let p0 = content(&c[0].turns[0]);
        let p1 = content(&c[0].turns[1]);
        assert!(p1.starts_with(&p0));
    }
}
