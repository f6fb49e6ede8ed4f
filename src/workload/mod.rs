//! Conversation sources and the immutable turn data the engine sends.
//!
//! A source turns its input (flags, files) into [`Conversation`]s before the run. Each turn's new
//! messages are serialised to JSON once, here, as byte segments; the engine only concatenates
//! segments, so a part shared by many conversations (a system prompt, a prefix, a hash block) is
//! one `Bytes` referenced from each, stored once.
//!
//! Every source implements [`Source`] and is listed once in [`SOURCES`]. A source gets a
//! [`BuildContext`] (tokenizer, parameters, which conversations to keep, where to report bad
//! input) and returns its conversations; [`build`] looks the source up by name and runs it. Each
//! source declares the dataset-shaping flags it reads ([`Source::flags`]); [`check_flags`]
//! rejects any other that was given. [`sampling`] maps claims to pool entries and [`fixed`]
//! turns recorded send times into a fixed schedule.

pub mod aiperf;
pub mod custom_multi_turn;
pub mod fixed;
pub mod input;
pub mod mooncake;
pub mod random_multi_turn;
pub mod sampling;
pub mod share_gpt;
pub mod swe_smith;
pub mod synth;
pub mod synthetic;
pub mod trie;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::tokenizer::Tokenizer;

/// One turn of a conversation as the dataset defines it: the new (non-assistant) messages to
/// append to the history before sending. The model's live reply is appended by the engine.
#[derive(Clone, Debug, Default)]
pub struct Turn {
    /// The turn's new messages as JSON objects joined by commas, e.g.
    /// `{"role":"user","content":"…"}`, split into segments that concatenate to that text (a
    /// segment may end inside a string: shared blocks are spliced into one message's content).
    /// Never empty. In [`ContextMode::Verbatim`] this is the whole message array to send.
    pub delta: Vec<Bytes>,
    /// Tokens of the turn's new message contents (bare, without chat template), when known.
    pub delta_tokens: Option<u32>,
    /// Per-turn `max_tokens` override.
    pub max_tokens: Option<u32>,
    /// Wait before sending this turn (think time / tool latency), in nanoseconds. Honoured for
    /// turns after the first; a first turn starts as soon as a slot claims the conversation.
    pub delay_ns: u64,
    /// The dataset's recorded send time of this turn, in nanoseconds on the trace's own clock
    /// (not offset), for sources that record one (`timestamp`). `delay_ns` already holds the gap
    /// to the previous turn; this absolute time is what a fixed-schedule replay
    /// ([`fixed::fixed_schedule`]) sends by.
    pub timestamp_ns: Option<u64>,
    /// The dataset's own assistant reply to this turn, as a serialised message object; sent as
    /// history instead of the live reply in [`ContextMode::Canned`].
    pub reply: Option<Bytes>,
    /// Extra body fields for this turn only (AIPerf's per-turn `extra`); they win over the run's.
    pub extra: Option<Box<Map<String, Value>>>,
    /// The whole body opening for this turn (`{` … `"messages":[`), set by the resources when the
    /// turn has `extra` fields; the engine then uses it instead of the run's opening.
    pub open: Option<Bytes>,
}

impl Turn {
    /// A turn of one user message with plain text content.
    pub fn user(text: &str, tokens: Option<u32>) -> Turn {
        Turn {
            delta: vec![Bytes::from(message_json("user", text))],
            delta_tokens: tokens,
            ..Turn::default()
        }
    }

    /// The delta as one contiguous byte string (tests, dataset building; not the hot path).
    pub fn delta_bytes(&self) -> Vec<u8> {
        self.delta.concat()
    }
}

/// How a conversation's history is built from turn to turn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ContextMode {
    /// History = earlier deltas and the model's live replies (evalscope; AIPerf
    /// `deltas_without_responses`).
    #[default]
    Live,
    /// History = earlier deltas and the dataset's recorded replies; live replies are discarded
    /// (AIPerf `deltas_with_responses`).
    Canned,
    /// Each turn's messages are the whole array to send, verbatim (AIPerf
    /// `message_array_with_responses`).
    Verbatim,
}

impl ContextMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ContextMode::Live => "live",
            ContextMode::Canned => "canned",
            ContextMode::Verbatim => "verbatim",
        }
    }
}

/// A conversation: at least one turn.
#[derive(Clone, Debug, Default)]
pub struct Conversation {
    pub turns: Vec<Turn>,
    pub context: ContextMode,
}

impl Conversation {
    pub fn live(turns: Vec<Turn>) -> Conversation {
        Conversation {
            turns,
            context: ContextMode::Live,
        }
    }

    /// Converts to `mode`, or says why the conversation cannot be sent that way.
    ///
    /// - to canned: every turn but the last needs a recorded reply;
    /// - to verbatim: turn k becomes every earlier delta and recorded reply plus its own delta
    ///   (segments are shared, so this costs pointers, not copies); needs the replies too;
    /// - from verbatim to anything else: impossible (the arrays hold no separable deltas).
    ///
    /// In verbatim, a turn's `delta_tokens` becomes the whole array's: earlier deltas plus
    /// `reply_tokens` of each recorded reply (None when any part is unknown); in canned, a
    /// turn's gains the recorded reply before it. So the client's prompt estimate for servers
    /// that send no usage stays right.
    pub fn convert(
        &mut self,
        mode: ContextMode,
        reply_tokens: impl Fn(&Bytes) -> Option<u32>,
    ) -> Result<(), String> {
        if self.context == mode {
            return Ok(());
        }
        if self.context == ContextMode::Verbatim {
            return Err(format!(
                "the dataset gives whole message arrays; they can only be sent verbatim, not as {}",
                mode.as_str()
            ));
        }
        let n = self.turns.len();
        if mode != ContextMode::Live {
            if let Some(k) = self.turns[..n.saturating_sub(1)]
                .iter()
                .position(|t| t.reply.is_none())
            {
                return Err(format!(
                    "turn {} has no recorded assistant reply to send as history",
                    k + 1
                ));
            }
        }
        if mode == ContextMode::Canned {
            // The history holds each recorded reply before the next turn's delta: its tokens
            // join that delta's (the cursor adds no live output in canned mode).
            for k in 1..n {
                let reply = self.turns[k - 1].reply.as_ref().and_then(&reply_tokens);
                let t = &mut self.turns[k];
                t.delta_tokens = t.delta_tokens.zip(reply).map(|(d, r)| d.saturating_add(r));
            }
        }
        if mode == ContextMode::Verbatim {
            let mut history: Vec<Bytes> = Vec::new();
            let mut history_tokens = Some(0u32);
            for t in &mut self.turns {
                if !history.is_empty() {
                    history.push(COMMA);
                }
                history.extend(t.delta.iter().cloned());
                t.delta = history.clone();
                history_tokens = history_tokens
                    .zip(t.delta_tokens)
                    .map(|(h, d)| h.saturating_add(d));
                t.delta_tokens = history_tokens;
                if let Some(r) = &t.reply {
                    history.push(COMMA);
                    history.push(r.clone());
                    history_tokens = history_tokens
                        .zip(reply_tokens(r))
                        .map(|(h, d)| h.saturating_add(d));
                }
            }
        }
        self.context = mode;
        Ok(())
    }
}

/// The separator between message objects in a segment list.
pub const COMMA: Bytes = Bytes::from_static(b",");

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

/// `text` JSON-escaped without the surrounding quotes: a piece of a string that can be spliced
/// between [`content_open`] and [`CONTENT_CLOSE`] next to other pieces.
pub fn escape_piece(text: &str) -> Bytes {
    let mut out = Vec::with_capacity(text.len() + 2);
    serde_json::to_writer(&mut out, text).expect("writing to a Vec cannot fail");
    Bytes::copy_from_slice(&out[1..out.len() - 1])
}

/// `{"role":"ROLE","content":"` — the opening of a message whose content follows as escaped
/// pieces ([`escape_piece`]) and ends with [`CONTENT_CLOSE`].
pub fn content_open(role: &str) -> Bytes {
    let mut out = Vec::with_capacity(role.len() + 24);
    out.extend_from_slice(b"{\"role\":");
    serde_json::to_writer(&mut out, role).expect("writing to a Vec cannot fail");
    out.extend_from_slice(b",\"content\":\"");
    Bytes::from(out)
}

/// Closes a message opened with [`content_open`].
pub const CONTENT_CLOSE: Bytes = Bytes::from_static(b"\"}");

/// Which conversations of a source's full list a run keeps: skip `offset`, then every
/// `shard_count`-th starting at `shard_index`, then at most `limit`.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Selection {
    pub offset: u64,
    pub shard_index: u64,
    pub shard_count: u64,
    /// `null` in the run config when unlimited (`usize::MAX`).
    #[serde(serialize_with = "limit_or_null")]
    pub limit: usize,
}

fn limit_or_null<S: serde::Serializer>(limit: &usize, s: S) -> Result<S::Ok, S::Error> {
    match *limit {
        usize::MAX => s.serialize_none(),
        n => s.serialize_u64(n as u64),
    }
}

impl Default for Selection {
    fn default() -> Self {
        Selection {
            offset: 0,
            shard_index: 0,
            shard_count: 1,
            limit: usize::MAX,
        }
    }
}

impl Selection {
    /// Indices into a list of `total` conversations, in order.
    pub fn pick(&self, total: usize) -> Vec<usize> {
        self.generated()
            .take_while(|&i| i < total as u64)
            .map(|i| i as usize)
            .collect()
    }

    /// Indices into an unbounded generated sequence (synthetic sources): `limit` of them.
    pub fn generated(&self) -> impl Iterator<Item = u64> + '_ {
        let step = self.shard_count.max(1);
        (0..self.limit as u64).map(move |k| self.offset + self.shard_index + k * step)
    }
}

/// Every dataset-shaping flag, as plain values (sources do not see clap). `None` means the flag
/// was not given, so each source can apply its own default.
///
/// Serialized into the run config (`summary.json` `config.flags.dataset.params`) under the
/// flags' own names, units appended.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DatasetParams {
    pub min_turns: Option<u32>,
    pub max_turns: Option<u32>,
    pub min_prompt_length: Option<u32>,
    pub max_prompt_length: Option<u32>,
    pub seed: u64,
    /// AIPerf synthetic: turns per conversation ~ max(1, ceil(N(mean, stddev))).
    #[serde(rename = "conversation_turn_mean")]
    pub turn_mean: Option<f64>,
    #[serde(rename = "conversation_turn_stddev")]
    pub turn_stddev: Option<f64>,
    /// AIPerf synthetic: user tokens per turn ~ N(mean, stddev).
    #[serde(rename = "synthetic_input_tokens_mean")]
    pub isl_mean: Option<f64>,
    #[serde(rename = "synthetic_input_tokens_stddev")]
    pub isl_stddev: Option<f64>,
    /// AIPerf synthetic: per-turn max_tokens ~ N(mean, stddev).
    #[serde(rename = "output_tokens_mean")]
    pub osl_mean: Option<f64>,
    #[serde(rename = "output_tokens_stddev")]
    pub osl_stddev: Option<f64>,
    /// AIPerf synthetic: think time before turns >= 2, milliseconds ~ N(mean, stddev) x ratio.
    #[serde(rename = "conversation_turn_delay_mean_ms")]
    pub turn_delay_mean_ms: Option<f64>,
    #[serde(rename = "conversation_turn_delay_stddev_ms")]
    pub turn_delay_stddev_ms: Option<f64>,
    #[serde(rename = "conversation_turn_delay_ratio")]
    pub turn_delay_ratio: Option<f64>,
    /// Shared prefixes: `prefix_count` distinct prefixes of `prefix_length` tokens; conversation
    /// i's first user turn starts with prefix i mod count.
    pub prefix_length: Option<u32>,
    pub prefix_count: Option<u32>,
    /// One system prompt of this many tokens shared by every conversation.
    pub shared_system_prompt_length: Option<u32>,
    /// mooncake/bailian: tokens per hash_id block.
    pub isl_block_size: Option<u32>,
    /// `--dataset-args` / `--multi-turn-args`: a source-specific JSON object.
    pub dataset_args: Option<Map<String, Value>>,
}

/// A dataset-shaping flag: one a source may read or ignore. Each [`Source`] lists the ones it
/// reads ([`Source::flags`]) and [`check_flags`] rejects any other that was given, so no flag is
/// silently ignored. Flags every source honours are not listed: `--seed`, `--dataset-offset`,
/// `--shard`, `--skip-invalid`, `--context-mode`, `--tokenizer-path`, `--num-dataset-entries`,
/// `--dataset-sampling-strategy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetFlag {
    MinTurns,
    MaxTurns,
    MinPromptLength,
    MaxPromptLength,
    ConversationTurnMean,
    ConversationTurnStddev,
    SyntheticInputTokensMean,
    SyntheticInputTokensStddev,
    OutputTokensMean,
    OutputTokensStddev,
    ConversationTurnDelayMean,
    ConversationTurnDelayStddev,
    ConversationTurnDelayRatio,
    PrefixLength,
    PrefixCount,
    SharedSystemPromptLength,
    IslBlockSize,
    DatasetArgs,
}

impl DatasetFlag {
    /// Every flag, in the order `--help` lists them (the first one given that a source does not
    /// read is the one an error names).
    pub const ALL: [DatasetFlag; 18] = [
        DatasetFlag::MinTurns,
        DatasetFlag::MaxTurns,
        DatasetFlag::MinPromptLength,
        DatasetFlag::MaxPromptLength,
        DatasetFlag::PrefixLength,
        DatasetFlag::PrefixCount,
        DatasetFlag::SharedSystemPromptLength,
        DatasetFlag::IslBlockSize,
        DatasetFlag::DatasetArgs,
        DatasetFlag::ConversationTurnMean,
        DatasetFlag::ConversationTurnStddev,
        DatasetFlag::SyntheticInputTokensMean,
        DatasetFlag::SyntheticInputTokensStddev,
        DatasetFlag::OutputTokensMean,
        DatasetFlag::OutputTokensStddev,
        DatasetFlag::ConversationTurnDelayMean,
        DatasetFlag::ConversationTurnDelayStddev,
        DatasetFlag::ConversationTurnDelayRatio,
    ];

    /// The AIPerf synthetic flags: given without `--dataset`, they select `synthetic`.
    pub const AIPERF_SYNTHETIC: [DatasetFlag; 9] = [
        DatasetFlag::ConversationTurnMean,
        DatasetFlag::ConversationTurnStddev,
        DatasetFlag::SyntheticInputTokensMean,
        DatasetFlag::SyntheticInputTokensStddev,
        DatasetFlag::OutputTokensMean,
        DatasetFlag::OutputTokensStddev,
        DatasetFlag::ConversationTurnDelayMean,
        DatasetFlag::ConversationTurnDelayStddev,
        DatasetFlag::ConversationTurnDelayRatio,
    ];

    /// The long flag name without its dashes, e.g. `min-turns`.
    pub fn name(self) -> &'static str {
        match self {
            DatasetFlag::MinTurns => "min-turns",
            DatasetFlag::MaxTurns => "max-turns",
            DatasetFlag::MinPromptLength => "min-prompt-length",
            DatasetFlag::MaxPromptLength => "max-prompt-length",
            DatasetFlag::ConversationTurnMean => "conversation-turn-mean",
            DatasetFlag::ConversationTurnStddev => "conversation-turn-stddev",
            DatasetFlag::SyntheticInputTokensMean => "synthetic-input-tokens-mean",
            DatasetFlag::SyntheticInputTokensStddev => "synthetic-input-tokens-stddev",
            DatasetFlag::OutputTokensMean => "output-tokens-mean",
            DatasetFlag::OutputTokensStddev => "output-tokens-stddev",
            DatasetFlag::ConversationTurnDelayMean => "conversation-turn-delay-mean",
            DatasetFlag::ConversationTurnDelayStddev => "conversation-turn-delay-stddev",
            DatasetFlag::ConversationTurnDelayRatio => "conversation-turn-delay-ratio",
            DatasetFlag::PrefixLength => "prefix-length",
            DatasetFlag::PrefixCount => "prefix-count",
            DatasetFlag::SharedSystemPromptLength => "shared-system-prompt-length",
            DatasetFlag::IslBlockSize => "isl-block-size",
            DatasetFlag::DatasetArgs => "dataset-args",
        }
    }

    /// Whether the user gave this flag (defaults are applied by each source, so `None` is "not
    /// given"). An empty `--dataset-args '{}'` asks for nothing and counts as not given, so
    /// scripts that always pass one keep working with every source.
    pub fn given(self, p: &DatasetParams) -> bool {
        match self {
            DatasetFlag::MinTurns => p.min_turns.is_some(),
            DatasetFlag::MaxTurns => p.max_turns.is_some(),
            DatasetFlag::MinPromptLength => p.min_prompt_length.is_some(),
            DatasetFlag::MaxPromptLength => p.max_prompt_length.is_some(),
            DatasetFlag::ConversationTurnMean => p.turn_mean.is_some(),
            DatasetFlag::ConversationTurnStddev => p.turn_stddev.is_some(),
            DatasetFlag::SyntheticInputTokensMean => p.isl_mean.is_some(),
            DatasetFlag::SyntheticInputTokensStddev => p.isl_stddev.is_some(),
            DatasetFlag::OutputTokensMean => p.osl_mean.is_some(),
            DatasetFlag::OutputTokensStddev => p.osl_stddev.is_some(),
            DatasetFlag::ConversationTurnDelayMean => p.turn_delay_mean_ms.is_some(),
            DatasetFlag::ConversationTurnDelayStddev => p.turn_delay_stddev_ms.is_some(),
            DatasetFlag::ConversationTurnDelayRatio => p.turn_delay_ratio.is_some(),
            DatasetFlag::PrefixLength => p.prefix_length.is_some(),
            DatasetFlag::PrefixCount => p.prefix_count.is_some(),
            DatasetFlag::SharedSystemPromptLength => p.shared_system_prompt_length.is_some(),
            DatasetFlag::IslBlockSize => p.isl_block_size.is_some(),
            DatasetFlag::DatasetArgs => p.dataset_args.as_ref().is_some_and(|m| !m.is_empty()),
        }
    }
}

impl std::fmt::Display for DatasetFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "--{}", self.name())
    }
}

/// `--a, --b` (or `none of the dataset-shaping flags`), for messages and `--help`.
pub fn flag_list(flags: &[DatasetFlag]) -> String {
    if flags.is_empty() {
        return "none of the dataset-shaping flags".to_string();
    }
    flags
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a source gets to build from.
pub struct BuildContext<'a> {
    /// The `--dataset` name it was chosen by (one source may serve several names).
    pub name: &'a str,
    pub path: Option<&'a Path>,
    pub tokenizer: &'a Tokenizer,
    pub params: &'a DatasetParams,
    pub selection: Selection,
    pub problems: &'a mut input::Problems,
}

/// What a source built.
#[derive(Debug, Default)]
pub struct Built {
    pub conversations: Vec<Conversation>,
    /// Conversations the source dropped by a documented rule (not invalid input), e.g. the
    /// first-message length filter; the report shows the count.
    pub filtered: u64,
}

/// Whether a source reads `--dataset-path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathUse {
    /// Synthetic: a path is an error.
    None,
    /// Required.
    Required,
    /// Optional (e.g. a builtin file or a live mode without one).
    Optional,
}

/// A conversation source.
pub trait Source: Sync {
    /// The `--dataset` names this source answers to.
    fn names(&self) -> &'static [&'static str];
    fn path_use(&self) -> PathUse;
    /// One line for `--help` and errors.
    fn describe(&self) -> &'static str;
    /// The dataset-shaping flags this source reads; [`check_flags`] rejects any other given.
    fn flags(&self) -> &'static [DatasetFlag];
    /// Whether the format records send times (`Turn::timestamp_ns`), so `--fixed-schedule` can
    /// replay it.
    fn has_timestamps(&self) -> bool {
        false
    }
    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Built, DatasetError>;
}

impl std::fmt::Debug for dyn Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Source({})", self.names().join(", "))
    }
}

/// Every source; adding one is its module plus one line here.
pub static SOURCES: &[&dyn Source] = &[
    &random_multi_turn::RandomMultiTurnSource,
    &synthetic::SyntheticSource,
    &trie::TrieSource,
    &swe_smith::SweSmithSource,
    &aiperf::MultiTurnSource,
    &aiperf::SingleTurnSource,
    &mooncake::MooncakeSource,
    &mooncake::BailianSource,
    &custom_multi_turn::CustomMultiTurnSource,
    &share_gpt::ShareGptSource,
];

/// The source answering to `name`.
pub fn find(name: &str) -> Option<&'static dyn Source> {
    SOURCES.iter().copied().find(|s| s.names().contains(&name))
}

/// Every known `--dataset` name, for messages.
pub fn known_names() -> Vec<&'static str> {
    SOURCES
        .iter()
        .flat_map(|s| s.names().iter().copied())
        .collect()
}

/// The source answering to `name`, or an error listing the known names.
pub fn find_source(name: &str) -> Result<&'static dyn Source, DatasetError> {
    find(name).ok_or_else(|| DatasetError::Unknown {
        name: name.to_string(),
        known: known_names().join(", "),
    })
}

/// Rejects a given dataset-shaping flag that source `name` does not read, naming both: a flag
/// silently ignored would run a workload other than the one asked for. Pure and cheap, so the
/// plan calls it before loading a tokenizer or reading a file; [`build`] calls it again.
pub fn check_flags(
    name: &str,
    params: &DatasetParams,
) -> Result<&'static dyn Source, DatasetError> {
    let source = find_source(name)?;
    let reads = source.flags();
    if let Some(&flag) = DatasetFlag::ALL
        .iter()
        .find(|f| f.given(params) && !reads.contains(f))
    {
        return Err(DatasetError::FlagNotRead {
            flag,
            name: name.to_string(),
            reads,
        });
    }
    Ok(source)
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("--dataset {name}: unknown dataset (known: {known})")]
    Unknown { name: String, known: String },
    #[error("--dataset {name} reads a file: give it with --dataset-path")]
    PathRequired { name: String },
    #[error("--dataset {name} is synthetic and reads no file (--dataset-path {})", path.display())]
    PathNotUsed { name: String, path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(input::InvalidInput),
    /// Not skippable: the rest of such a line is not read, and skipping to its end could mean
    /// reading forever (`/dev/zero`).
    #[error(
        "{}: {loc}: longer than --max-line-bytes ({max} bytes); stopped reading it (a binary \
         file, /dev/zero, or a whole JSON dump on one line?). If the line is real, raise \
         --max-line-bytes",
        path.display()
    )]
    TooLong {
        path: PathBuf,
        loc: input::Loc,
        max: usize,
    },
    #[error("{}: the file is empty (no entries to read)", path.display())]
    EmptyFile { path: PathBuf },
    #[error("--{flag}: {reason}")]
    Param { flag: String, reason: String },
    #[error("synthesizing prompts: {0}")]
    Synthesis(#[from] synth::SynthesisError),
    #[error("--dataset {name}: {reason}")]
    Empty { name: String, reason: String },
    #[error("{flag} is not read by --dataset {name} (it reads: {})", flag_list(.reads))]
    FlagNotRead {
        flag: DatasetFlag,
        name: String,
        reads: &'static [DatasetFlag],
    },
}

/// Builds `name`'s conversations and applies the run-wide context mode (if any).
pub fn build(
    name: &str,
    path: Option<&Path>,
    tokenizer: &Tokenizer,
    params: &DatasetParams,
    selection: Selection,
    skip_invalid: bool,
    max_line_bytes: usize,
) -> Result<(Built, u64), DatasetError> {
    let source = check_flags(name, params)?;
    match (source.path_use(), path) {
        (PathUse::Required, None) => {
            return Err(DatasetError::PathRequired {
                name: name.to_string(),
            })
        }
        (PathUse::None, Some(p)) => {
            return Err(DatasetError::PathNotUsed {
                name: name.to_string(),
                path: p.to_path_buf(),
            })
        }
        _ => {}
    }
    let mut problems = input::Problems::new(path, skip_invalid).with_max_line_bytes(max_line_bytes);
    let built = {
        let mut ctx = BuildContext {
            name,
            path,
            tokenizer,
            params,
            selection,
            problems: &mut problems,
        };
        source.build(&mut ctx)?
    };
    let skipped = problems.finish()?;
    if built.conversations.is_empty() {
        return Err(DatasetError::Empty {
            name: name.to_string(),
            reason: "no conversations to run (after --dataset-offset, --shard and filters)".into(),
        });
    }
    Ok((built, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(flag: DatasetFlag) -> DatasetParams {
        let mut p = DatasetParams::default();
        match flag {
            DatasetFlag::MinTurns => p.min_turns = Some(1),
            DatasetFlag::MaxTurns => p.max_turns = Some(1),
            DatasetFlag::MinPromptLength => p.min_prompt_length = Some(1),
            DatasetFlag::MaxPromptLength => p.max_prompt_length = Some(1),
            DatasetFlag::ConversationTurnMean => p.turn_mean = Some(1.0),
            DatasetFlag::ConversationTurnStddev => p.turn_stddev = Some(1.0),
            DatasetFlag::SyntheticInputTokensMean => p.isl_mean = Some(1.0),
            DatasetFlag::SyntheticInputTokensStddev => p.isl_stddev = Some(1.0),
            DatasetFlag::OutputTokensMean => p.osl_mean = Some(1.0),
            DatasetFlag::OutputTokensStddev => p.osl_stddev = Some(1.0),
            DatasetFlag::ConversationTurnDelayMean => p.turn_delay_mean_ms = Some(1.0),
            DatasetFlag::ConversationTurnDelayStddev => p.turn_delay_stddev_ms = Some(1.0),
            DatasetFlag::ConversationTurnDelayRatio => p.turn_delay_ratio = Some(1.0),
            DatasetFlag::PrefixLength => p.prefix_length = Some(1),
            DatasetFlag::PrefixCount => p.prefix_count = Some(1),
            DatasetFlag::SharedSystemPromptLength => p.shared_system_prompt_length = Some(1),
            DatasetFlag::IslBlockSize => p.isl_block_size = Some(1),
            DatasetFlag::DatasetArgs => {
                p.dataset_args = Some(serde_json::json!({"k": 1}).as_object().unwrap().clone())
            }
        }
        p
    }

    #[test]
    fn every_flag_is_detected_when_given_and_only_then() {
        for flag in DatasetFlag::ALL {
            let p = given(flag);
            let set: Vec<DatasetFlag> = DatasetFlag::ALL
                .into_iter()
                .filter(|f| f.given(&p))
                .collect();
            assert_eq!(set, [flag]);
        }
        // An empty --dataset-args asks for nothing.
        let empty = DatasetParams {
            dataset_args: Some(Map::new()),
            ..DatasetParams::default()
        };
        assert!(!DatasetFlag::DatasetArgs.given(&empty));
    }

    /// Issue 9: flags a source ignored silently are now errors naming the flag and the source.
    #[test]
    fn a_flag_the_source_does_not_read_is_an_error_naming_both() {
        let e = check_flags("random_multi_turn", &given(DatasetFlag::IslBlockSize))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "--isl-block-size is not read by --dataset random_multi_turn (it reads: --min-turns, \
             --max-turns, --min-prompt-length, --max-prompt-length, --prefix-length, \
             --prefix-count, --shared-system-prompt-length)"
        );
        let e = check_flags("mooncake_trace", &given(DatasetFlag::PrefixLength))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "--prefix-length is not read by --dataset mooncake_trace (it reads: --isl-block-size)"
        );
        let e = check_flags("multi_turn", &given(DatasetFlag::MaxTurns))
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("(it reads: none of the dataset-shaping flags)"),
            "{e}"
        );
        assert!(matches!(
            check_flags("nope", &DatasetParams::default()),
            Err(DatasetError::Unknown { .. })
        ));
    }

    /// What each source reads, as worked out from its module; every other flag is an error.
    #[test]
    fn each_source_reads_exactly_its_flags() {
        use DatasetFlag::*;
        let table: [(&str, &[DatasetFlag]); 13] = [
            (
                "random_multi_turn",
                &[
                    MinTurns,
                    MaxTurns,
                    MinPromptLength,
                    MaxPromptLength,
                    PrefixLength,
                    PrefixCount,
                    SharedSystemPromptLength,
                ],
            ),
            (
                "synthetic",
                &[
                    ConversationTurnMean,
                    ConversationTurnStddev,
                    SyntheticInputTokensMean,
                    SyntheticInputTokensStddev,
                    OutputTokensMean,
                    OutputTokensStddev,
                    ConversationTurnDelayMean,
                    ConversationTurnDelayStddev,
                    ConversationTurnDelayRatio,
                    PrefixLength,
                    PrefixCount,
                    SharedSystemPromptLength,
                ],
            ),
            (
                "custom_multi_turn",
                &[MinTurns, MaxTurns, MinPromptLength, MaxPromptLength],
            ),
            (
                "share_gpt_zh_multi_turn",
                &[MinTurns, MaxTurns, MinPromptLength, MaxPromptLength],
            ),
            (
                "share_gpt_en_multi_turn",
                &[MinTurns, MaxTurns, MinPromptLength, MaxPromptLength],
            ),
            ("swe_smith", &[MinTurns, MaxTurns, DatasetArgs]),
            ("trie_agentic_coding", &[MaxTurns]),
            ("trie_code_qa", &[MaxTurns]),
            ("trie_office_work", &[MaxTurns]),
            ("multi_turn", &[]),
            ("single_turn", &[]),
            ("mooncake_trace", &[IslBlockSize]),
            ("bailian_trace", &[IslBlockSize]),
        ];
        assert_eq!(
            table.len(),
            known_names().len(),
            "every source is in the table"
        );
        for (name, reads) in table {
            for flag in DatasetFlag::ALL {
                let r = check_flags(name, &given(flag));
                assert_eq!(r.is_ok(), reads.contains(&flag), "--dataset {name} {flag}");
            }
        }
    }

    #[test]
    fn timestamped_sources() {
        let with: Vec<&str> = SOURCES
            .iter()
            .filter(|s| s.has_timestamps())
            .flat_map(|s| s.names().iter().copied())
            .collect();
        assert_eq!(
            with,
            [
                "multi_turn",
                "single_turn",
                "mooncake_trace",
                "bailian_trace"
            ]
        );
    }

    #[test]
    fn selection_offset_shard_limit() {
        let s = Selection {
            offset: 2,
            shard_index: 1,
            shard_count: 3,
            limit: 10,
        };
        assert_eq!(s.pick(12), vec![3, 6, 9]);
        assert_eq!(s.generated().take(2).collect::<Vec<_>>(), vec![3, 6]);
        let all = Selection::default();
        assert_eq!(all.pick(3), vec![0, 1, 2]);
        let lim = Selection {
            limit: 2,
            ..Selection::default()
        };
        assert_eq!(lim.pick(5), vec![0, 1]);
    }

    #[test]
    fn spliced_pieces_make_one_valid_message() {
        let segs = [
            content_open("user"),
            escape_piece("a \"quoted\" "),
            escape_piece("line\nbreak"),
            CONTENT_CLOSE,
        ];
        let v: Value = serde_json::from_slice(&segs.concat()).unwrap();
        assert_eq!(v["content"], "a \"quoted\" line\nbreak");
        assert_eq!(v["role"], "user");
    }

    fn turn(user: &str, reply: Option<&str>) -> Turn {
        Turn {
            reply: reply.map(|r| Bytes::from(message_json("assistant", r))),
            ..Turn::user(user, Some(1))
        }
    }

    #[test]
    fn verbatim_conversion_accumulates_recorded_replies() {
        let mut c = Conversation::live(vec![
            turn("u1", Some("a1")),
            turn("u2", Some("a2")),
            turn("u3", None),
        ]);
        c.convert(ContextMode::Verbatim, |_| Some(10)).unwrap();
        let arr = |t: &Turn| -> Vec<Value> {
            let s = format!("[{}]", String::from_utf8(t.delta_bytes()).unwrap());
            serde_json::from_str(&s).unwrap()
        };
        assert_eq!(arr(&c.turns[0]).len(), 1);
        // Whole-array tokens: deltas of 1 and replies of 10.
        let tokens: Vec<Option<u32>> = c.turns.iter().map(|t| t.delta_tokens).collect();
        assert_eq!(tokens, [Some(1), Some(12), Some(23)]);
        let third = arr(&c.turns[2]);
        let contents: Vec<&str> = third
            .iter()
            .map(|m| m["content"].as_str().unwrap())
            .collect();
        assert_eq!(contents, ["u1", "a1", "u2", "a2", "u3"]);
        assert!(c.convert(ContextMode::Live, |_| None).is_err());
    }

    #[test]
    fn canned_needs_replies() {
        let mut c = Conversation::live(vec![turn("u1", None), turn("u2", None)]);
        let e = c.convert(ContextMode::Canned, |_| None).unwrap_err();
        assert!(e.contains("turn 1"), "{e}");
        let mut one = Conversation::live(vec![turn("u1", None)]);
        one.convert(ContextMode::Canned, |_| None).unwrap();
    }
}
