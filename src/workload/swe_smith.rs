//! `swe_smith`: long-context coding-agent conversations cut from SWE-smith trajectories, as
//! evalscope's `swe_smith` plugin (`plugin/datasets/swe_smith.py`) and its builder
//! (`examples/perf/build_swe_smith_dataset.py`) make them.
//!
//! `--dataset-path` is one of two formats, told apart by content ([`detect`]):
//!
//! - **pre-built** `agentic_dataset.json`: `{"metadata": {…}, "conversations": [[turn, …], …]}`,
//!   each turn `{"messages": [{"role", "content"}, …], "prompt_tokens": n}` holding only that
//!   turn's new messages. Loaded as it is, in file order.
//! - **trajectories** (JSONL, one `{"messages": …}` per line, `messages` an array or a JSON string
//!   of one, as in `SWE-bench/SWE-smith-trajectories`; or a JSON array of such objects): built
//!   live. Only user and tool messages are used (tool becomes user, as evalscope does); turn 1
//!   takes whole messages while they fit in `first_turn_length` bare tokens and cuts the first
//!   one that does not fit to the tokens left; each later turn does the same with
//!   `subsequent_turn_length`. A trajectory that runs out before its sampled turn count is
//!   dropped (counted in `filtered`), as is one with fewer user/tool characters than the
//!   `chars_per_token` pre-filter asks for.
//!
//! **Determinism.** The surviving trajectories are shuffled with a generator seeded from `--seed`;
//! the lengths and turn count of the conversation at shuffled position `j` come from
//! [`item_rng`]`(seed, j)`, so the result depends on the input, the arguments and the tokenizer,
//! never on the thread count. `parley dataset build swe-smith` writes exactly the conversations
//! a live run with the same arguments makes ([`build_file`]), so either can be run.
//!
//! **Exact lengths.** Where evalscope cuts a message by decoding a token prefix (which may
//! re-encode to a different count), the cut here is moved until the prefix counts exactly the
//! tokens left with the run's tokenizer, so a turn is exactly its target unless the trajectory
//! ran out of messages mid-turn (its last turn is then shorter, as in evalscope) or no prefix of
//! the cut message counts exactly (then the closest count below; has not been seen in practice).

use std::convert::Infallible;
use std::path::Path;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

use crate::tokenizer::Tokenizer;
use crate::workload::input::{
    self, as_array, as_count, as_object, index, opt_count, req_str, required, to_u32, type_name,
    FieldError, Loc, Problems,
};
use crate::workload::synth::{item_rng, par_map_with, stream_seed};
use crate::workload::{
    message_json, BuildContext, Built, Conversation, DatasetError, DatasetFlag, DatasetParams,
    PathUse, Selection, Source, Turn, COMMA,
};

/// evalscope's defaults (`MultiTurnArgs`).
pub const DEFAULT_FIRST_TURN_LENGTH: u32 = 65_000;
pub const DEFAULT_SUBSEQUENT_TURN_LENGTH: u32 = 500;
pub const DEFAULT_CHARS_PER_TOKEN: f64 = 3.0;
/// Conversations `parley dataset build swe-smith` writes by default (evalscope's builder).
pub const DEFAULT_BUILD_CONVERSATIONS: u64 = 128;

/// The `--dataset-args` keys this source reads (`num_workers` is evalscope's older spelling of
/// `workers`).
const KEYS: [&str; 5] = [
    "first_turn_length",
    "subsequent_turn_length",
    "chars_per_token",
    "workers",
    "num_workers",
];

/// Candidates built per step at least: the step size must not depend on the thread count, or
/// the `filtered` count would.
const MIN_BUILD_STEP: usize = 32;

/// A token length: one value, or a range `[min, max]` sampled uniformly per conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Length {
    pub min: u32,
    pub max: u32,
}

impl Length {
    pub fn fixed(n: u32) -> Length {
        Length { min: n, max: n }
    }

    fn sample(&self, rng: &mut SmallRng) -> u32 {
        rng.random_range(self.min..=self.max)
    }

    /// As given: an integer, or `[min, max]`.
    fn to_json(self) -> Value {
        if self.min == self.max {
            json!(self.min)
        } else {
            json!([self.min, self.max])
        }
    }

    fn parse(v: &Value, key: &str) -> Result<Length, FieldError> {
        let one = |v: &Value, path: &str| -> Result<u32, FieldError> {
            let n = to_u32(as_count(v, path)?, path)?;
            if n == 0 {
                return Err(FieldError::new(path, "must be at least 1 token"));
            }
            Ok(n)
        };
        match v {
            Value::Array(a) if a.len() == 2 => {
                let (min, max) = (one(&a[0], &index(key, 0))?, one(&a[1], &index(key, 1))?);
                if min > max {
                    return Err(FieldError::new(
                        key,
                        format!("range [{min}, {max}] has min above max"),
                    ));
                }
                Ok(Length { min, max })
            }
            Value::Array(a) => Err(FieldError::new(
                key,
                format!("a range is [min, max], got {} elements", a.len()),
            )),
            v => one(v, key).map(Length::fixed),
        }
    }
}

/// Live-construction arguments, from `--dataset-args`, `--min-turns`, `--max-turns`, `--seed`.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveArgs {
    pub first_turn_length: Length,
    pub subsequent_turn_length: Length,
    pub chars_per_token: f64,
    /// Threads for parsing and building (default: every core).
    pub workers: usize,
    pub min_turns: u32,
    pub max_turns: u32,
    pub seed: u64,
}

impl LiveArgs {
    pub fn from_params(p: &DatasetParams) -> Result<LiveArgs, DatasetError> {
        let bad = |e: FieldError| DatasetError::Param {
            flag: "dataset-args".into(),
            reason: format!("{}: {}", e.field, e.reason),
        };
        let empty = Map::new();
        let a = p.dataset_args.as_ref().unwrap_or(&empty);
        if let Some(k) = a.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(bad(FieldError::new(
                k.as_str(),
                format!("unknown key for swe_smith (known: {})", KEYS.join(", ")),
            )));
        }
        let length = |key: &str, default: u32| match a.get(key) {
            None | Some(Value::Null) => Ok(Length::fixed(default)),
            Some(v) => Length::parse(v, key).map_err(bad),
        };
        let chars_per_token = match a.get("chars_per_token") {
            None | Some(Value::Null) => DEFAULT_CHARS_PER_TOKEN,
            Some(v) => input::as_nonneg_f64(v, "chars_per_token").map_err(bad)?,
        };
        let workers = match a.get("workers").or_else(|| a.get("num_workers")) {
            None | Some(Value::Null) => 0,
            Some(v) => as_count(v, "workers").map_err(bad)? as usize,
        };
        let workers = if workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            workers
        };
        // evalscope: --min-turns defaults to 1 and --max-turns to --min-turns.
        let min_turns = p.min_turns.unwrap_or(1).max(1);
        let max_turns = p.max_turns.unwrap_or(min_turns);
        if max_turns < min_turns {
            return Err(DatasetError::Param {
                flag: "max-turns".into(),
                reason: format!("{max_turns} is below --min-turns {min_turns}"),
            });
        }
        Ok(LiveArgs {
            first_turn_length: length("first_turn_length", DEFAULT_FIRST_TURN_LENGTH)?,
            subsequent_turn_length: length(
                "subsequent_turn_length",
                DEFAULT_SUBSEQUENT_TURN_LENGTH,
            )?,
            chars_per_token,
            workers,
            min_turns,
            max_turns,
            seed: p.seed,
        })
    }

    /// evalscope's pre-filter: a trajectory needs at least this many user/tool characters,
    /// `(upper(first) + upper(subsequent) × (max_turns − 1)) × chars_per_token`.
    pub fn min_chars(&self) -> u64 {
        let tokens = self.first_turn_length.max as f64
            + self.subsequent_turn_length.max as f64 * (self.max_turns - 1) as f64;
        (tokens * self.chars_per_token) as u64
    }

    /// Lengths and turn count of the conversation at shuffled position `j`.
    fn plan(&self, j: usize) -> (u32, u32, u32) {
        let mut rng = item_rng(self.seed, j as u64);
        let first = self.first_turn_length.sample(&mut rng);
        let subsequent = self.subsequent_turn_length.sample(&mut rng);
        let turns = rng.random_range(self.min_turns..=self.max_turns);
        (first, subsequent, turns)
    }
}

/// One message of a turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// One turn: its new messages and, when known, their bare token count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweTurn {
    pub messages: Vec<Message>,
    pub delta_tokens: Option<u32>,
}

/// A conversation in this source's own form (what the pre-built file stores).
pub type SweConversation = Vec<SweTurn>;

/// Turns into the engine's form, truncated to `max_turns` when given.
pub fn to_conversation(turns: &[SweTurn], max_turns: Option<u32>) -> Conversation {
    let keep = max_turns.map_or(turns.len(), |m| turns.len().min(m as usize));
    Conversation::live(
        turns[..keep]
            .iter()
            .map(|t| {
                let mut delta = Vec::with_capacity(t.messages.len() * 2);
                for (i, m) in t.messages.iter().enumerate() {
                    if i > 0 {
                        delta.push(COMMA);
                    }
                    delta.push(message_json(&m.role, &m.content).into());
                }
                Turn {
                    delta,
                    delta_tokens: t.delta_tokens,
                    ..Turn::default()
                }
            })
            .collect(),
    )
}

/// What a `--dataset-path` file holds.
#[derive(Debug)]
pub enum Format<'t> {
    /// An `agentic_dataset.json` document.
    Prebuilt(Value),
    /// Trajectories, one per JSONL line.
    Lines(Vec<(Loc, &'t str)>),
    /// Trajectories as items of a JSON array.
    Items(Vec<Value>),
}

/// Tells the two formats apart by content: one JSON document with `conversations` is pre-built;
/// JSONL (or a JSON array) of objects is trajectories. Otherwise says what was expected.
pub fn detect(text: &str) -> Result<Format<'_>, FieldError> {
    const EXPECTED: &str = "expected a pre-built agentic_dataset.json ({\"metadata\": …, \
                            \"conversations\": [[{\"messages\": […]}, …], …]}) or SWE-smith \
                            trajectories as JSONL (one {\"messages\": …} object per line)";
    let lines = || -> Vec<(Loc, &str)> {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (Loc::Line(i + 1), l))
            .collect()
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(o)) if o.contains_key("conversations") => {
            Ok(Format::Prebuilt(Value::Object(o)))
        }
        // A one-line JSONL file is also one JSON document.
        Ok(Value::Object(_)) => Ok(Format::Lines(lines())),
        Ok(Value::Array(items)) => Ok(Format::Items(items)),
        Ok(v) => Err(FieldError::new(
            "",
            format!("the file is {}; {EXPECTED}", type_name(&v)),
        )),
        Err(e) => {
            let lines = lines();
            let Some(&(Loc::Line(first_no), first)) = lines.first() else {
                return Err(FieldError::new(
                    "",
                    format!("the file is empty; {EXPECTED}"),
                ));
            };
            // The first value failed past its first line while that line alone is not JSON: one
            // document spread over lines (as evalscope's builder writes it, indented) that does
            // not parse, not JSONL with a bad first line.
            let first_is_json = serde_json::from_str::<serde::de::IgnoredAny>(first).is_ok();
            if !first_is_json && e.line() > first_no {
                return Err(FieldError::new(
                    "",
                    format!("not valid JSON ({e}); {EXPECTED}"),
                ));
            }
            Ok(Format::Lines(lines))
        }
    }
}

/// The user/tool texts of one trajectory, in order (evalscope's `_extract_messages` then the
/// user filter: list contents are their text parts joined by `\n`; empty contents are skipped).
pub fn trajectory_texts(v: &Value) -> Result<Vec<String>, FieldError> {
    let obj = as_object(v, "")?;
    let raw = required(obj, "messages", "")?;
    let parsed;
    let messages = match raw {
        Value::Array(a) => a,
        Value::String(s) => {
            parsed = serde_json::from_str::<Value>(s).map_err(|e| {
                FieldError::new("messages", format!("a string that is not valid JSON ({e})"))
            })?;
            as_array(&parsed, "messages")?
        }
        v => {
            return Err(FieldError::new(
                "messages",
                format!(
                    "expected an array of messages (or a JSON string of one), got {}",
                    type_name(v)
                ),
            ))
        }
    };
    let mut texts = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let at = index("messages", i);
        let m = as_object(m, &at)?;
        let role = req_str(m, "role", &at)?;
        let wanted = match role {
            "user" | "tool" => true,
            "system" | "assistant" | "developer" => false,
            other => {
                return Err(FieldError::new(
                    input::join(&at, "role"),
                    format!(
                        "unknown role {other:?} (expected system, user, assistant, tool, developer)"
                    ),
                ))
            }
        };
        let content_at = input::join(&at, "content");
        let content = match m.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for (k, p) in parts.iter().enumerate() {
                    match p {
                        Value::String(s) => texts.push(s.as_str()),
                        // Non-text parts (images) carry no prompt text here, as in evalscope.
                        Value::Object(o)
                            if o.get("type").and_then(Value::as_str) == Some("text") =>
                        {
                            texts.push(req_str(o, "text", &index(&content_at, k))?)
                        }
                        Value::Object(_) => {}
                        v => {
                            return Err(FieldError::new(
                                index(&content_at, k),
                                format!(
                                    "expected a string or a content part, got {}",
                                    type_name(v)
                                ),
                            ))
                        }
                    }
                }
                texts.join("\n")
            }
            Some(v) => {
                return Err(FieldError::new(
                    content_at,
                    format!(
                        "expected a string or an array of parts, got {}",
                        type_name(v)
                    ),
                ))
            }
        };
        if wanted && !content.is_empty() {
            texts.push(content);
        }
    }
    Ok(texts)
}

/// The longest prefix of `text` that is at most `n` tokens, and its count; exactly `n` whenever
/// some prefix counts `n`. Cuts at the end of token `n` (offsets of the full encoding), then
/// moves the cut by the difference until the prefix re-counts exactly (a cut can merge or split
/// the last pre-token differently); a few steps at most in practice.
///
/// Only a window of the text's start is encoded, grown until it holds a few tokens more than `n`:
/// the full encoding with offsets costs about 300 bytes a token, so a 50 MB trajectory text cut
/// to a few thousand tokens would otherwise take gigabytes.
pub fn truncate_to_tokens<'t>(tok: &Tokenizer, text: &'t str, n: u32) -> (&'t str, u32) {
    let n = n as usize;
    let mut window = n.saturating_add(64).saturating_mul(16);
    let (enc, end) = loop {
        let mut end = window.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let Ok(enc) = tok.hf().encode(&text[..end], false) else {
            return ("", 0);
        };
        // Tokens near the window's end may differ from the whole text's; those up to n do not
        // once a margin follows them (and the loop below re-counts every cut anyway).
        if end == text.len() || enc.get_offsets().len() > n.saturating_add(8) {
            break (enc, end);
        }
        window = window.saturating_mul(4);
    };
    let offsets = enc.get_offsets();
    if end == text.len() && n >= offsets.len() {
        return (text, offsets.len() as u32);
    }
    let cut_after = |k: usize| -> usize {
        if k == 0 {
            return 0;
        }
        let mut end = offsets[k - 1].1.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        end
    };
    let (mut best, mut best_count) = (0, 0);
    let mut k = n;
    for _ in 0..16 {
        let cut = cut_after(k);
        let got = tok.count(&text[..cut]);
        if got == n {
            return (&text[..cut], n as u32);
        }
        if got < n && got > best_count {
            (best, best_count) = (cut, got);
        }
        let next = if got > n {
            k.saturating_sub((got - n).max(1))
        } else {
            (k + (n - got)).min(offsets.len())
        };
        if next == k {
            break;
        }
        k = next;
    }
    (&text[..best], best_count as u32)
}

/// Adds whole texts from `texts[start..]` while they fit in `target` tokens and cuts the first
/// that does not to the tokens left (evalscope's `_collect_until`). Returns the turn, its tokens
/// and the next unused text (a cut text is used up).
fn collect_until(
    tok: &Tokenizer,
    texts: &[String],
    start: usize,
    target: u32,
) -> (Vec<Message>, u32, usize) {
    let mut messages = Vec::new();
    let mut tokens = 0u32;
    let mut i = start;
    while i < texts.len() {
        let n = tok.count(&texts[i]) as u32;
        if tokens + n <= target {
            messages.push(user(texts[i].clone()));
            tokens += n;
            i += 1;
            continue;
        }
        let left = target - tokens;
        if left == 0 {
            break;
        }
        let (cut, got) = truncate_to_tokens(tok, &texts[i], left);
        if !cut.is_empty() {
            messages.push(user(cut.to_string()));
            tokens += got;
        }
        i += 1;
        break;
    }
    (messages, tokens, i)
}

fn user(content: String) -> Message {
    Message {
        role: "user".into(),
        content,
    }
}

/// One conversation of `turns` turns from a trajectory's user/tool texts, or `None` when the
/// texts run out first (evalscope's `_build_conversation`).
pub fn build_conversation(
    tok: &Tokenizer,
    texts: &[String],
    first: u32,
    subsequent: u32,
    turns: u32,
) -> Option<SweConversation> {
    let mut out = Vec::with_capacity(turns as usize);
    let mut next = 0;
    for k in 0..turns {
        if next >= texts.len() {
            return None;
        }
        let target = if k == 0 { first } else { subsequent };
        let (messages, tokens, after) = collect_until(tok, texts, next, target);
        if messages.is_empty() {
            return None;
        }
        out.push(SweTurn {
            messages,
            delta_tokens: Some(tokens),
        });
        next = after;
    }
    Some(out)
}

/// Conversations built from trajectories, and how many were dropped by the documented rules.
#[derive(Debug, Default)]
pub struct LiveBuild {
    /// The conversations `selection` picks, in order.
    pub conversations: Vec<SweConversation>,
    /// Trajectories below the character pre-filter.
    pub short: u64,
    /// Trajectories that ran out of messages before their sampled turn count.
    pub exhausted: u64,
    /// Trajectories read (valid or not).
    pub total: usize,
}

impl LiveBuild {
    pub fn filtered(&self) -> u64 {
        self.short + self.exhausted
    }
}

enum Parsed {
    Bad(FieldError),
    Short,
    Candidate(Vec<String>),
}

/// Validates every trajectory, pre-filters, shuffles, then builds until `selection` is served.
pub fn build_live(
    tok: &Tokenizer,
    format: Format<'_>,
    args: &LiveArgs,
    selection: Selection,
    problems: &mut Problems,
) -> LiveBuild {
    let min_chars = args.min_chars();
    let classify = |v: &Value| -> Parsed {
        let texts = match trajectory_texts(v) {
            Ok(t) => t,
            Err(e) => return Parsed::Bad(e),
        };
        let chars: u64 = texts.iter().map(|t| t.chars().count() as u64).sum();
        if chars < min_chars {
            Parsed::Short
        } else {
            Parsed::Candidate(texts)
        }
    };
    // Parsing is most of the cost on a large file: in parallel, in order.
    let label = "reading trajectories";
    let parsed = match &format {
        Format::Lines(lines) => par_map_with(lines.len(), args.workers, label, |i| {
            Ok::<_, Infallible>(match serde_json::from_str::<Value>(lines[i].1) {
                Ok(v) => classify(&v),
                Err(e) => Parsed::Bad(FieldError::new("", format!("invalid JSON ({e})"))),
            })
        }),
        Format::Items(items) => par_map_with(items.len(), args.workers, label, |i| {
            Ok::<_, Infallible>(classify(&items[i]))
        }),
        Format::Prebuilt(_) => Ok(Vec::new()),
    };
    let parsed = match parsed {
        Ok(p) => p,
        Err(never) => match never {},
    };
    let locs: Vec<Loc> = match &format {
        Format::Lines(lines) => lines.iter().map(|l| l.0).collect(),
        Format::Items(items) => (0..items.len()).map(Loc::Item).collect(),
        Format::Prebuilt(_) => Vec::new(),
    };
    drop(format);
    let mut out = LiveBuild {
        total: parsed.len(),
        ..LiveBuild::default()
    };
    let mut candidates = Vec::new();
    for (loc, p) in locs.into_iter().zip(parsed) {
        match p {
            Parsed::Bad(e) => problems.report(loc, e),
            Parsed::Short => out.short += 1,
            Parsed::Candidate(t) => candidates.push(t),
        }
    }
    // Nothing will be sent: do not spend time building.
    if problems.count() > 0 && !problems.skip_invalid() {
        return out;
    }
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.shuffle(&mut SmallRng::seed_from_u64(stream_seed(
        args.seed,
        u64::MAX,
    )));

    // Build in shuffled order until the last conversation the selection can pick exists.
    let needed = if selection.limit == 0 {
        0
    } else {
        selection
            .offset
            .saturating_add(selection.shard_index)
            .saturating_add(
                (selection.limit as u64 - 1).saturating_mul(selection.shard_count.max(1)),
            )
            .saturating_add(1)
            .min(usize::MAX as u64) as usize
    };
    let mut built: Vec<SweConversation> = Vec::new();
    let mut next = 0;
    while built.len() < needed && next < order.len() {
        let want = needed - built.len();
        let step = want
            .saturating_add(want / 4)
            .max(MIN_BUILD_STEP)
            .min(order.len() - next);
        let results = match par_map_with(
            step,
            args.workers,
            "building swe_smith conversations",
            |k| {
                let j = next + k;
                let (first, subsequent, turns) = args.plan(j);
                Ok::<_, Infallible>(build_conversation(
                    tok,
                    &candidates[order[j]],
                    first,
                    subsequent,
                    turns,
                ))
            },
        ) {
            Ok(r) => r,
            Err(never) => match never {},
        };
        for r in results {
            if built.len() == needed {
                break;
            }
            match r {
                Some(c) => built.push(c),
                None => out.exhausted += 1,
            }
        }
        next += step;
    }
    let picks = selection.pick(built.len());
    let mut slots: Vec<Option<SweConversation>> = built.into_iter().map(Some).collect();
    out.conversations = picks.into_iter().filter_map(|i| slots[i].take()).collect();
    out
}

/// Reads a pre-built document; every conversation is validated, bad ones reported by item.
/// `delta_tokens` are kept only when the file was built with the run's tokenizer.
pub fn parse_prebuilt(
    doc: &Value,
    tokenizer_name: &str,
    problems: &mut Problems,
) -> Vec<SweConversation> {
    let report_file = |problems: &mut Problems, e: FieldError| {
        problems.report(Loc::File, e);
        Vec::new()
    };
    let Some(obj) = doc.as_object() else {
        return report_file(problems, FieldError::new("", "expected a JSON object"));
    };
    let same_tokenizer = match obj.get("metadata") {
        None | Some(Value::Null) => false,
        Some(Value::Object(m)) => {
            m.get("tokenizer").and_then(Value::as_str) == Some(tokenizer_name)
        }
        Some(v) => {
            return report_file(
                problems,
                FieldError::new(
                    "metadata",
                    format!("expected an object, got {}", type_name(v)),
                ),
            )
        }
    };
    let convs = match obj
        .get("conversations")
        .map(|c| as_array(c, "conversations"))
    {
        Some(Ok(c)) => c,
        Some(Err(e)) => return report_file(problems, e),
        None => return report_file(problems, FieldError::new("conversations", "missing")),
    };
    let mut out = Vec::with_capacity(convs.len());
    for (i, c) in convs.iter().enumerate() {
        match prebuilt_conversation(c, same_tokenizer) {
            Ok(c) => out.push(c),
            Err(e) => problems.report(Loc::Item(i), e),
        }
    }
    out
}

fn prebuilt_conversation(v: &Value, keep_tokens: bool) -> Result<SweConversation, FieldError> {
    let turns = as_array(v, "")?;
    if turns.is_empty() {
        return Err(FieldError::new("", "empty conversation (no turns)"));
    }
    let mut out = Vec::with_capacity(turns.len());
    for (j, t) in turns.iter().enumerate() {
        let at = index("", j);
        let t = as_object(t, &at)?;
        let msgs_at = input::join(&at, "messages");
        let msgs = as_array(required(t, "messages", &at)?, &msgs_at)?;
        if msgs.is_empty() {
            return Err(FieldError::new(msgs_at, "no messages"));
        }
        let mut messages = Vec::with_capacity(msgs.len());
        for (k, m) in msgs.iter().enumerate() {
            let m_at = index(&msgs_at, k);
            let m = as_object(m, &m_at)?;
            let role = req_str(m, "role", &m_at)?;
            match role {
                "user" | "system" | "developer" | "tool" => {}
                "assistant" => {
                    return Err(FieldError::new(
                        input::join(&m_at, "role"),
                        "a turn holds only the new messages sent before the reply; the reply \
                         is the model's live one",
                    ))
                }
                other => {
                    return Err(FieldError::new(
                        input::join(&m_at, "role"),
                        format!("unknown role {other:?} (expected system, user, tool, developer)"),
                    ))
                }
            }
            let content = req_str(m, "content", &m_at)?;
            messages.push(Message {
                role: role.to_string(),
                content: content.to_string(),
            });
        }
        opt_count(t, "prompt_tokens", &at)?;
        let delta_tokens = match opt_count(t, "delta_tokens", &at)? {
            Some(n) => Some(to_u32(n, &input::join(&at, "delta_tokens"))?),
            None => None,
        };
        out.push(SweTurn {
            messages,
            delta_tokens: delta_tokens.filter(|_| keep_tokens),
        });
    }
    Ok(out)
}

/// The registered source.
pub struct SweSmithSource;

impl Source for SweSmithSource {
    fn names(&self) -> &'static [&'static str] {
        &["swe_smith"]
    }

    fn path_use(&self) -> PathUse {
        PathUse::Required
    }

    fn describe(&self) -> &'static str {
        "SWE-smith agent trajectories: a pre-built agentic_dataset.json, or built live from a \
         trajectories JSONL to first/subsequent turn token lengths"
    }

    fn flags(&self) -> &'static [DatasetFlag] {
        &[
            DatasetFlag::MinTurns,
            DatasetFlag::MaxTurns,
            DatasetFlag::DatasetArgs,
        ]
    }

    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Built, DatasetError> {
        let path = ctx.path.ok_or_else(|| DatasetError::PathRequired {
            name: ctx.name.to_string(),
        })?;
        // Validated in both modes, so a typo is caught even when a pre-built file ignores them.
        let args = LiveArgs::from_params(ctx.params)?;
        let text = input::read_text(path, ctx.problems)?;
        let format = match detect(&text) {
            Ok(f) => f,
            Err(e) => {
                ctx.problems.report(Loc::File, e);
                return Ok(Built::default());
            }
        };
        if let Format::Prebuilt(doc) = &format {
            let all = parse_prebuilt(doc, ctx.tokenizer.name(), ctx.problems);
            let conversations = ctx
                .selection
                .pick(all.len())
                .into_iter()
                .map(|i| to_conversation(&all[i], ctx.params.max_turns))
                .collect();
            return Ok(Built {
                conversations,
                filtered: 0,
            });
        }
        let live = build_live(ctx.tokenizer, format, &args, ctx.selection, ctx.problems);
        if live.conversations.is_empty() && ctx.problems.count() == 0 {
            return Err(nothing_built(ctx.name, &live, &args));
        }
        Ok(Built {
            filtered: live.filtered(),
            conversations: live
                .conversations
                .iter()
                .map(|c| to_conversation(c, None))
                .collect(),
        })
    }
}

fn nothing_built(name: &str, live: &LiveBuild, args: &LiveArgs) -> DatasetError {
    DatasetError::Empty {
        name: name.to_string(),
        reason: format!(
            "no conversation from {} trajectories: {} have fewer than {} user/tool characters \
             ((upper first_turn_length + upper subsequent_turn_length × (max_turns − 1)) × \
             chars_per_token), {} ran out of messages before their sampled turn count (or none \
             are selected after --dataset-offset/--shard)",
            live.total,
            live.short,
            args.min_chars(),
            live.exhausted
        ),
    }
}

/// `parley dataset build swe-smith`: what to build.
pub struct FileBuild<'a> {
    pub trajectories: &'a Path,
    pub output: &'a Path,
    pub tokenizer: &'a Tokenizer,
    pub params: &'a DatasetParams,
    pub conversations: usize,
    pub skip_invalid: bool,
    /// `--max-line-bytes`.
    pub max_line_bytes: usize,
}

/// What [`build_file`] wrote.
#[derive(Debug)]
pub struct FileBuildReport {
    /// Conversations asked for (`--number`) and written (fewer when the input runs out).
    pub requested: usize,
    pub conversations: usize,
    pub turns: usize,
    pub trajectories: usize,
    pub filtered_short: u64,
    pub filtered_exhausted: u64,
    pub skipped_invalid: u64,
    /// Bare tokens of turn 1, and of later turns, over all conversations: (min, max).
    pub first_turn_tokens: (u32, u32),
    pub subsequent_turn_tokens: Option<(u32, u32)>,
}

/// `--dataset-args` etc. for `parley dataset build`, as `parley bench` reads them.
pub fn dataset_params(
    min_turns: Option<u32>,
    max_turns: Option<u32>,
    seed: u64,
    dataset_args: Option<&str>,
) -> Result<DatasetParams, DatasetError> {
    let bad = |reason: String| DatasetError::Param {
        flag: "dataset-args".into(),
        reason,
    };
    let dataset_args = match dataset_args {
        None => None,
        Some(raw) => match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(m)) => Some(m),
            Ok(_) => return Err(bad("must be a JSON object".into())),
            Err(e) => return Err(bad(format!("not valid JSON ({e})"))),
        },
    };
    Ok(DatasetParams {
        min_turns,
        max_turns,
        seed,
        dataset_args,
        ..DatasetParams::default()
    })
}

/// Builds conversations from a trajectories file exactly as a live run with the same arguments
/// would (its first `conversations`), and writes them as a pre-built `agentic_dataset.json`.
pub fn build_file(b: &FileBuild<'_>) -> Result<FileBuildReport, DatasetError> {
    let args = LiveArgs::from_params(b.params)?;
    let mut problems =
        Problems::new(Some(b.trajectories), b.skip_invalid).with_max_line_bytes(b.max_line_bytes);
    let text = input::read_text(b.trajectories, &mut problems)?;
    let format = match detect(&text) {
        Ok(Format::Prebuilt(_)) => {
            problems.report(
                Loc::File,
                FieldError::new(
                    "",
                    "this is already a pre-built agentic_dataset.json; give the trajectories \
                     JSONL to build from",
                ),
            );
            problems.finish()?;
            return Err(DatasetError::Empty {
                name: "swe_smith".into(),
                reason: "nothing to build".into(),
            });
        }
        Ok(f) => f,
        Err(e) => {
            problems.report(Loc::File, e);
            problems.finish()?;
            return Err(DatasetError::Empty {
                name: "swe_smith".into(),
                reason: "nothing to build".into(),
            });
        }
    };
    let selection = Selection {
        limit: b.conversations,
        ..Selection::default()
    };
    let live = build_live(b.tokenizer, format, &args, selection, &mut problems);
    let skipped_invalid = problems.finish()?;
    if live.conversations.is_empty() {
        return Err(nothing_built("swe_smith", &live, &args));
    }
    let doc = prebuilt_document(b, &args, &live.conversations);
    let write = || -> std::io::Result<()> {
        let file = std::fs::File::create(b.output)?;
        let mut w = std::io::BufWriter::new(file);
        serde_json::to_writer_pretty(&mut w, &doc)?;
        std::io::Write::flush(&mut w)
    };
    write().map_err(|source| DatasetError::Io {
        path: b.output.to_path_buf(),
        source,
    })?;
    let tokens = |skip: usize, take: usize| -> Option<(u32, u32)> {
        let it = live
            .conversations
            .iter()
            .flat_map(|c| c.iter().skip(skip).take(take))
            .map(|t| t.delta_tokens.unwrap_or(0));
        it.clone().min().zip(it.max())
    };
    Ok(FileBuildReport {
        requested: b.conversations,
        conversations: live.conversations.len(),
        turns: live.conversations.iter().map(Vec::len).sum(),
        trajectories: live.total,
        filtered_short: live.short,
        filtered_exhausted: live.exhausted,
        skipped_invalid,
        first_turn_tokens: tokens(0, 1).unwrap_or((0, 0)),
        subsequent_turn_tokens: tokens(1, usize::MAX),
    })
}

/// evalscope's document, plus `delta_tokens` per turn (bare tokens of its messages, which
/// evalscope's loader ignores) and `tokenizer`/`seed`/`chars_per_token` in the metadata.
/// `prompt_tokens` is evalscope's cumulative templated count of the turn's messages so far
/// (no replies), here with a ChatML template (`tokenizer::render_chat`) and the build's
/// tokenizer: informational, exact only for ChatML models.
fn prebuilt_document(b: &FileBuild<'_>, args: &LiveArgs, convs: &[SweConversation]) -> Value {
    let tok = b.tokenizer;
    let reply_open = tok.count("<|im_start|>assistant\n") as u64;
    // Counting re-tokenizes every message: in parallel, like the build.
    let conversations = par_map_with(convs.len(), args.workers, "writing", |i| {
        let mut cumulative = 0u64;
        let mut rendered = String::new();
        let turns = convs[i]
            .iter()
            .map(|t| {
                for m in &t.messages {
                    rendered.clear();
                    rendered.push_str("<|im_start|>");
                    rendered.push_str(&m.role);
                    rendered.push('\n');
                    rendered.push_str(&m.content);
                    rendered.push_str("<|im_end|>\n");
                    cumulative += tok.count(&rendered) as u64;
                }
                let messages: Vec<Value> = t
                    .messages
                    .iter()
                    .map(|m| json!({"role": m.role, "content": m.content}))
                    .collect();
                json!({
                    "messages": messages,
                    "prompt_tokens": cumulative + reply_open,
                    "delta_tokens": t.delta_tokens,
                })
            })
            .collect();
        Ok::<_, Infallible>(Value::Array(turns))
    });
    let conversations: Vec<Value> = match conversations {
        Ok(c) => c,
        Err(never) => match never {},
    };
    json!({
        "metadata": {
            "builder": concat!("parley ", env!("CARGO_PKG_VERSION")),
            "model_path": tok.name(),
            "tokenizer": tok.name(),
            "dataset_name": b.trajectories.file_name().map(|n| n.to_string_lossy().into_owned()),
            "dataset_path": b.trajectories.display().to_string(),
            "split": Value::Null,
            "first_turn_length": args.first_turn_length.to_json(),
            "subsequent_turn_length": args.subsequent_turn_length.to_json(),
            "min_turns": args.min_turns,
            "max_turns": args.max_turns,
            "chars_per_token": args.chars_per_token,
            "seed": args.seed,
            "num_conversations": convs.len(),
        },
        "conversations": conversations,
    })
}

impl FileBuildReport {
    /// What `parley dataset build` prints.
    pub fn render(&self, output: &Path) -> String {
        let mut s = format!(
            "wrote {} conversations ({} turns) to {}\n  trajectories read: {}; left out: {} \
             below the character pre-filter, {} ran out of messages, {} invalid\n  turn 1 \
             tokens: {}..={}",
            self.conversations,
            self.turns,
            output.display(),
            self.trajectories,
            self.filtered_short,
            self.filtered_exhausted,
            self.skipped_invalid,
            self.first_turn_tokens.0,
            self.first_turn_tokens.1,
        );
        if let Some((lo, hi)) = self.subsequent_turn_tokens {
            s.push_str(&format!("; later turns: {lo}..={hi}"));
        }
        if self.conversations < self.requested {
            s.push_str(&format!(
                "\nnote: {} conversations were asked for; the input gave only {}",
                self.requested, self.conversations
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::tokenizer::test_builtin as tok;

    /// Deterministic text of about `words` words with punctuation, digits, newlines and
    /// non-ASCII, so cuts land in awkward places.
    fn text(seed: u64, words: usize) -> String {
        const W: [&str; 12] = [
            "def",
            "parser",
            "return",
            "self.value",
            "Traceback",
            "(most",
            "recent)",
            "✓",
            "über",
            "→",
            "12345",
            "x_y\n",
        ];
        let mut rng = item_rng(seed, 99);
        (0..words)
            .map(|_| W[rng.random_range(0..W.len())])
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn params(args: Value, min: Option<u32>, max: Option<u32>) -> DatasetParams {
        DatasetParams {
            min_turns: min,
            max_turns: max,
            seed: 5,
            dataset_args: args.as_object().cloned(),
            ..DatasetParams::default()
        }
    }

    #[test]
    fn lengths_parse_as_int_or_range() {
        let p = |v: Value| Length::parse(&v, "first_turn_length");
        assert_eq!(p(json!(7)).unwrap(), Length::fixed(7));
        assert_eq!(p(json!([3, 9])).unwrap(), Length { min: 3, max: 9 });
        assert_eq!(p(json!([3, 1])).unwrap_err().field, "first_turn_length");
        assert_eq!(p(json!([0, 1])).unwrap_err().field, "first_turn_length[0]");
        assert!(p(json!([1, 2, 3]))
            .unwrap_err()
            .reason
            .contains("3 elements"));
        assert!(p(json!("8")).is_err());
        assert!(p(json!(-1)).unwrap_err().reason.contains("negative"));
    }

    #[test]
    fn live_args_defaults_keys_and_prefilter() {
        let a = LiveArgs::from_params(&params(json!({}), None, None)).unwrap();
        assert_eq!(a.first_turn_length, Length::fixed(65_000));
        assert_eq!(a.subsequent_turn_length, Length::fixed(500));
        assert_eq!((a.min_turns, a.max_turns), (1, 1));
        assert_eq!(a.min_chars(), 195_000);
        let a = LiveArgs::from_params(&params(
            json!({"first_turn_length": [100, 200], "subsequent_turn_length": 30,
                   "chars_per_token": 2.5, "num_workers": 3}),
            Some(2),
            Some(5),
        ))
        .unwrap();
        // (200 + 30 × 4) × 2.5
        assert_eq!(a.min_chars(), 800);
        assert_eq!(a.workers, 3);
        let e = LiveArgs::from_params(&params(json!({"first_turn": 1}), None, None)).unwrap_err();
        assert!(e.to_string().contains("first_turn: unknown key"), "{e}");
        let e = LiveArgs::from_params(&params(json!({"chars_per_token": -1}), None, None));
        assert!(e.unwrap_err().to_string().contains("chars_per_token"));
        // --max-turns defaults to --min-turns.
        let a = LiveArgs::from_params(&params(json!({}), Some(4), None)).unwrap();
        assert_eq!((a.min_turns, a.max_turns), (4, 4));
    }

    #[test]
    fn formats_are_told_apart_by_content() {
        assert!(matches!(
            detect("{\"metadata\": {}, \"conversations\": []}"),
            Ok(Format::Prebuilt(_))
        ));
        assert!(matches!(
            detect("{\n  \"conversations\": [\n  ]\n}\n"),
            Ok(Format::Prebuilt(_))
        ));
        match detect("{\"messages\": []}\n\n{\"messages\": []}\n") {
            Ok(Format::Lines(l)) => assert_eq!(
                l.iter().map(|x| x.0).collect::<Vec<_>>(),
                [Loc::Line(1), Loc::Line(3)]
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(detect("{\"messages\": []}"), Ok(Format::Lines(_))));
        assert!(matches!(
            detect("[{\"messages\": []}]"),
            Ok(Format::Items(_))
        ));
        // A JSONL file whose first line is broken is still JSONL (the line is reported).
        assert!(matches!(
            detect("{oops\n{\"messages\": []}\n"),
            Ok(Format::Lines(_))
        ));
        let e = detect("{\n  \"conversations\": [\n").unwrap_err();
        assert!(e.reason.starts_with("not valid JSON"), "{}", e.reason);
        assert!(e
            .reason
            .contains("expected a pre-built agentic_dataset.json"));
        assert!(detect("  \n").unwrap_err().reason.contains("empty"));
        assert!(detect("42").unwrap_err().reason.contains("a number"));
    }

    #[test]
    fn trajectory_texts_follow_evalscope_extraction() {
        let msgs = json!([
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, "b", {"type": "image_url"}]},
            {"role": "assistant", "content": null, "tool_calls": []},
            {"role": "tool", "content": "out"},
            {"role": "user", "content": ""}
        ]);
        let as_array = trajectory_texts(&json!({ "messages": msgs })).unwrap();
        assert_eq!(as_array, ["a\nb", "out"]);
        let as_string = trajectory_texts(&json!({ "messages": msgs.to_string() })).unwrap();
        assert_eq!(as_string, as_array);

        let err = |v: Value| trajectory_texts(&v).unwrap_err();
        assert_eq!(err(json!({})).field, "messages");
        assert_eq!(err(json!([])).reason, "expected an object, got an array");
        assert!(err(json!({"messages": "[oops"}))
            .reason
            .contains("not valid JSON"));
        let e = err(json!({"messages": [{"role": "user"}, {"role": "bot", "content": "x"}]}));
        assert_eq!(e.field, "messages[1].role");
        assert!(e.reason.contains("unknown role \"bot\""));
        assert_eq!(
            err(json!({"messages": [{"content": "x"}]})).field,
            "messages[0].role"
        );
        assert_eq!(
            err(json!({"messages": [{"role": "user", "content": [1]}]})).field,
            "messages[0].content[0]"
        );
        assert_eq!(
            err(json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]})).field,
            "messages[0].content[0].text"
        );
    }

    #[test]
    fn truncation_is_exact_and_never_over() {
        let t = text(1, 400);
        let total = tok().count(&t) as u32;
        assert!(total > 300);
        for n in (1..total).step_by(7).chain([1, 2, total - 1]) {
            let (cut, got) = truncate_to_tokens(tok(), &t, n);
            assert!(t.starts_with(cut));
            assert_eq!(got, n, "cut to {n}");
            assert_eq!(tok().encode_reference(cut).len() as u32, n);
        }
        assert_eq!(
            truncate_to_tokens(tok(), &t, total + 5),
            (t.as_str(), total)
        );
        assert_eq!(truncate_to_tokens(tok(), "", 3), ("", 0));
    }

    fn texts(lens: &[usize]) -> Vec<String> {
        lens.iter()
            .enumerate()
            .map(|(i, &n)| text(i as u64 + 10, n))
            .collect()
    }

    fn turn_tokens(c: &SweConversation) -> Vec<u32> {
        c.iter()
            .map(|t| {
                let n: usize = t.messages.iter().map(|m| tok().count(&m.content)).sum();
                assert_eq!(Some(n as u32), t.delta_tokens);
                assert!(t.messages.iter().all(|m| m.role == "user"));
                n as u32
            })
            .collect()
    }

    #[test]
    fn turns_fill_their_targets_whole_messages_then_a_cut() {
        let tx = texts(&[60, 60, 60, 60, 60, 60, 60, 60]);
        let c = build_conversation(tok(), &tx, 150, 40, 3).unwrap();
        assert_eq!(turn_tokens(&c), [150, 40, 40]);
        // Turn 1 = whole messages while they fit, then the first that does not, cut.
        let n0 = tok().count(&tx[0]) as u32;
        assert_eq!(c[0].messages[0].content, tx[0]);
        assert!(c[0].messages.len() >= 2 && n0 < 150);
        let last = c[0].messages.last().unwrap();
        assert!(tx[c[0].messages.len() - 1].starts_with(&last.content));
        // A cut message is used up: turn 2 starts at the next one.
        assert!(tx[c[0].messages.len()].starts_with(&c[1].messages[0].content));

        // Running out before the sampled turn count drops the conversation.
        assert!(build_conversation(tok(), &texts(&[60, 60]), 100, 40, 4).is_none());
        // Running out mid-turn keeps the short last turn (evalscope).
        let short = build_conversation(tok(), &texts(&[30, 10]), 1000, 40, 1).unwrap();
        assert_eq!(short.len(), 1);
        assert!(short[0].delta_tokens.unwrap() < 1000);
    }

    fn jsonl(n: usize, seed: u64) -> String {
        let mut rng = item_rng(seed, 0);
        let mut out = String::new();
        for i in 0..n {
            let mut msgs = vec![json!({"role": "system", "content": "agent"})];
            msgs.push(
                json!({"role": "user", "content": text(i as u64, rng.random_range(50..300))}),
            );
            for k in 0..rng.random_range(1..10) {
                msgs.push(json!({"role": "assistant", "content": null}));
                msgs.push(json!({"role": "tool", "content": text(i as u64 * 100 + k, rng.random_range(5..120))}));
            }
            out.push_str(&json!({ "messages": msgs }).to_string());
            out.push('\n');
        }
        out
    }

    fn live(text: &str, args: &LiveArgs, selection: Selection) -> LiveBuild {
        let mut p = Problems::new(None, false);
        let b = build_live(tok(), detect(text).unwrap(), args, selection, &mut p);
        assert_eq!(p.count(), 0);
        b
    }

    fn args(workers: usize) -> LiveArgs {
        LiveArgs {
            first_turn_length: Length { min: 80, max: 120 },
            subsequent_turn_length: Length { min: 10, max: 30 },
            chars_per_token: 1.0,
            workers,
            min_turns: 2,
            max_turns: 4,
            seed: 3,
        }
    }

    #[test]
    fn live_build_is_deterministic_and_selection_is_a_slice_of_it() {
        let data = jsonl(80, 1);
        let all = Selection {
            limit: 40,
            ..Selection::default()
        };
        let a = live(&data, &args(1), all);
        let b = live(&data, &args(3), all);
        assert_eq!(a.conversations, b.conversations);
        assert_eq!(a.filtered(), b.filtered());
        assert_eq!(a.conversations.len(), 40);
        let mut exact_last = 0;
        for c in &a.conversations {
            assert!((2..=4).contains(&c.len()));
            let t = turn_tokens(c);
            assert!((80..=120).contains(&t[0]));
            // One subsequent length per conversation: every later turn is exactly it, except a
            // last turn cut short by the end of the trajectory.
            let (middle, last) = (&t[1..t.len() - 1], t[t.len() - 1]);
            let sub = middle.first().copied().unwrap_or(30);
            assert!(middle.iter().all(|&n| n == sub), "{t:?}");
            assert!((10..=30).contains(&sub) && last <= sub, "{t:?}");
            exact_last += usize::from(t[t.len() - 1] >= 10);
        }
        assert!(exact_last > 30, "{exact_last} of 40 end on a full turn");
        // Offset and shard pick from the same sequence.
        let sel = Selection {
            offset: 3,
            shard_index: 1,
            shard_count: 2,
            limit: 5,
        };
        let s = live(&data, &args(2), sel);
        let expect: Vec<_> = [4, 6, 8, 10, 12]
            .iter()
            .map(|&i| a.conversations[i].clone())
            .collect();
        assert_eq!(s.conversations, expect);
        // Another seed, another order.
        let mut other = args(1);
        other.seed = 4;
        assert_ne!(live(&data, &other, all).conversations, a.conversations);
        // The pre-filter: (120 + 30 × 3) × 1.0 = 210 characters.
        assert_eq!(args(1).min_chars(), 210);
    }

    #[test]
    fn bad_trajectories_are_reported_by_line_and_nothing_is_built() {
        let mut data = jsonl(5, 2);
        data.push_str("{\"messages\": [{\"role\": \"user\", \"content\": 3}]}\n");
        data.push_str("not json\n");
        let mut p = Problems::new(None, false);
        let b = build_live(
            tok(),
            detect(&data).unwrap(),
            &args(2),
            Selection::default(),
            &mut p,
        );
        assert!(b.conversations.is_empty());
        let listed: Vec<String> = p.listed().iter().map(|e| e.to_string()).collect();
        assert_eq!(listed.len(), 2);
        assert!(
            listed[0].starts_with("line 6, field `messages[0].content`"),
            "{listed:?}"
        );
        assert!(listed[1].starts_with("line 7: invalid JSON"), "{listed:?}");
        // --skip-invalid: the rest is built.
        let mut p = Problems::new(None, true);
        let b = build_live(
            tok(),
            detect(&data).unwrap(),
            &args(2),
            Selection::default(),
            &mut p,
        );
        assert_eq!(p.count(), 2);
        assert!(!b.conversations.is_empty());
    }

    #[test]
    fn prebuilt_errors_name_item_and_field() {
        let doc = json!({"conversations": [
            [{"messages": [{"role": "user", "content": "a"}], "prompt_tokens": 3}],
            [],
            [{"messages": [{"role": "user", "content": "a"}]}, {"messages": [{"role": "assistant", "content": "b"}]}],
            [{"messages": []}],
            [{"messages": [{"role": "user", "content": "a"}], "prompt_tokens": -1}],
            [{"prompt_tokens": 1}]
        ]});
        let mut p = Problems::new(None, true);
        let convs = parse_prebuilt(&doc, "t", &mut p);
        assert_eq!(convs.len(), 1);
        let listed: Vec<String> = p.listed().iter().map(|e| e.to_string()).collect();
        assert_eq!(listed[0], "item 1: empty conversation (no turns)");
        assert!(
            listed[1].starts_with("item 2, field `[1].messages[0].role`"),
            "{listed:?}"
        );
        assert_eq!(listed[2], "item 3, field `[0].messages`: no messages");
        assert!(
            listed[3].starts_with("item 4, field `[0].prompt_tokens`"),
            "{listed:?}"
        );
        assert_eq!(listed[4], "item 5, field `[0].messages`: missing");
        // --max-turns truncates a pre-built conversation.
        let two = json!({"conversations": [[{"messages": [{"role": "user", "content": "a"}]},
                                            {"messages": [{"role": "user", "content": "b"}]}]]});
        let convs = parse_prebuilt(&two, "t", &mut p);
        assert_eq!(to_conversation(&convs[0], None).turns.len(), 2);
        assert_eq!(to_conversation(&convs[0], Some(1)).turns.len(), 1);
        let mut p = Problems::new(None, true);
        parse_prebuilt(&json!({"conversations": 3}), "t", &mut p);
        assert_eq!(
            p.listed()[0].to_string(),
            "file, field `conversations`: expected an array, got a number"
        );
    }

    #[test]
    fn built_file_runs_the_same_conversations_as_live() {
        let dir = tempfile::tempdir().unwrap();
        let traj = dir.path().join("t.jsonl");
        let out = dir.path().join("agentic_dataset.json");
        std::fs::write(&traj, jsonl(60, 7)).unwrap();
        let params = dataset_params(
            Some(2),
            Some(4),
            3,
            Some(r#"{"first_turn_length": [80, 120], "subsequent_turn_length": [10, 30], "chars_per_token": 1}"#),
        )
        .unwrap();
        let report = build_file(&FileBuild {
            trajectories: &traj,
            output: &out,
            tokenizer: tok(),
            params: &params,
            conversations: 12,
            skip_invalid: false,
            max_line_bytes: input::DEFAULT_MAX_LINE_BYTES,
        })
        .unwrap();
        assert_eq!(report.conversations, 12);
        let run = |path: &Path, selection: Selection| -> Vec<(Vec<u8>, Option<u32>)> {
            let mut problems = Problems::new(Some(path), false);
            let mut ctx = BuildContext {
                name: "swe_smith",
                path: Some(path),
                tokenizer: tok(),
                params: &params,
                selection,
                problems: &mut problems,
            };
            let built = SweSmithSource.build(&mut ctx).unwrap();
            assert_eq!(problems.count(), 0);
            built
                .conversations
                .iter()
                .flat_map(|c| c.turns.iter().map(|t| (t.delta_bytes(), t.delta_tokens)))
                .collect()
        };
        for sel in [
            Selection {
                limit: 12,
                ..Selection::default()
            },
            Selection {
                offset: 2,
                shard_index: 1,
                shard_count: 3,
                limit: 3,
            },
        ] {
            let from_file = run(&out, sel);
            assert!(!from_file.is_empty());
            assert_eq!(from_file, run(&traj, sel), "{sel:?}");
        }
        // The document is evalscope's shape, prompt_tokens growing turn by turn.
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(doc["metadata"]["num_conversations"], 12);
        assert_eq!(doc["metadata"]["first_turn_length"], json!([80, 120]));
        let c0 = doc["conversations"][0].as_array().unwrap();
        let pt: Vec<u64> = c0
            .iter()
            .map(|t| t["prompt_tokens"].as_u64().unwrap())
            .collect();
        assert!(pt.windows(2).all(|w| w[0] < w[1]), "{pt:?}");
        assert!(pt[0] > c0[0]["delta_tokens"].as_u64().unwrap());
        // Building from a pre-built file is an error that says so.
        let e = build_file(&FileBuild {
            trajectories: &out,
            output: &dir.path().join("x.json"),
            tokenizer: tok(),
            params: &params,
            conversations: 1,
            skip_invalid: false,
            max_line_bytes: input::DEFAULT_MAX_LINE_BYTES,
        })
        .unwrap_err();
        assert!(e.to_string().contains("already a pre-built"), "{e}");
    }
}
