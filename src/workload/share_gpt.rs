//! `share_gpt_zh_multi_turn` / `share_gpt_en_multi_turn`: real chat conversations from ShareGPT,
//! as evalscope's multi-turn ShareGPT plugins, read from a local file in either layout:
//!
//! - evalscope's (ModelScope `swift/sharegpt`, `common_{zh,en}_70k.jsonl`), one object per line:
//!   `{"conversation": [{"human": "…", "assistant": "…"}, …]}`;
//! - the original ShareGPT dump, a JSON array or JSONL of
//!   `{"conversations": [{"from": "human"|"gpt"|"system", "value": "…"}, …]}`.
//!
//! Texts are trimmed and empty human messages skipped, as evalscope does; recorded gpt replies
//! are kept as each turn's reply (for `--context-mode canned|verbatim`). Turns, `--max-turns`
//! truncation, the `--min-turns` filter and the first-user-message length filter are the shared
//! ones in [`custom_multi_turn`](super::custom_multi_turn).

use bytes::Bytes;
use serde::de::{Deserializer as _, SeqAccess, Visitor};
use serde_json::Value;

use std::cell::Cell;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use super::custom_multi_turn::{assemble, RawTurn, Splitter, FILE_FLAGS};
use super::input::{self, as_array, as_object, index, join, opt_str, req_str};
use super::input::{FieldError, Loc};
use super::{message_json, BuildContext, Built, DatasetError, DatasetFlag, PathUse, Source};

/// The registered source.
pub struct ShareGptSource;

impl Source for ShareGptSource {
    fn names(&self) -> &'static [&'static str] {
        &["share_gpt_zh_multi_turn", "share_gpt_en_multi_turn"]
    }

    /// evalscope downloads the file when no path is given; we explain instead (see `build`).
    fn path_use(&self) -> PathUse {
        PathUse::Optional
    }

    fn describe(&self) -> &'static str {
        "ShareGPT conversations (evalscope's swift/sharegpt JSONL or the original JSON/JSONL)"
    }

    fn flags(&self) -> &'static [DatasetFlag] {
        &FILE_FLAGS
    }

    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Built, DatasetError> {
        let Some(path) = ctx.path else {
            let file = if ctx.name.contains("_zh_") {
                "common_zh_70k.jsonl"
            } else {
                "common_en_70k.jsonl"
            };
            return Err(DatasetError::Param {
                flag: "dataset-path".into(),
                reason: format!(
                    "--dataset {} needs a local file: evalscope downloads {file} from ModelScope \
                     (dataset swift/sharegpt), parley does not download datasets; fetch it once \
                     and give its path",
                    ctx.name
                ),
            });
        };
        let mut conversations = Vec::new();
        let mut no_human = 0u64;
        let mut take = |loc: Loc, v: &Value, problems: &mut input::Problems| match parse_entry(v) {
            Ok(turns) if turns.is_empty() => no_human += 1,
            Ok(turns) => conversations.push(turns),
            Err(e) => problems.report(loc, e),
        };
        if starts_with_bracket(path)? {
            each_item(path, ctx.problems, take)?;
        } else {
            input::each_jsonl(path, ctx.problems, |loc, v, problems| {
                take(loc, &v, problems)
            })?;
        }
        assemble(ctx, conversations, no_human)
    }
}

/// Visits a JSON array, handing each item to the closure with its index.
struct EachItem<F>(F);

impl<'de, F: FnMut(usize, Value)> Visitor<'de> for EachItem<F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of conversations")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while let Some(v) = seq.next_element::<Value>()? {
            (self.0)(i, v);
            i += 1;
        }
        Ok(())
    }
}

/// Whether the file's first non-blank byte (after a byte-order mark) is `[` (one JSON array
/// rather than JSONL).
fn starts_with_bracket(path: &Path) -> Result<bool, DatasetError> {
    let io = |source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::new(File::open(path).map_err(io)?);
    skip_bom(&mut reader).map_err(io)?;
    loop {
        let buf = reader.fill_buf().map_err(io)?;
        let Some(&first) = buf.iter().find(|b| !b.is_ascii_whitespace()) else {
            if buf.is_empty() {
                return Ok(false);
            }
            let n = buf.len();
            reader.consume(n);
            continue;
        };
        return Ok(first == b'[');
    }
}

/// Consumes a UTF-8 byte-order mark at the reader's start, if there is one.
fn skip_bom(reader: &mut impl BufRead) -> std::io::Result<()> {
    if reader.fill_buf()?.starts_with(b"\xEF\xBB\xBF") {
        reader.consume(3);
    }
    Ok(())
}

/// The original dump: one JSON array, read item by item so that only one item's tree is alive at
/// once (the dump is hundreds of MB). An item longer than `--max-line-bytes` stops the read (the
/// dump may be one line, so the limit bounds items here); invalid JSON is one problem at its
/// line, and the items before it are kept.
fn each_item(
    path: &Path,
    problems: &mut input::Problems,
    mut take: impl FnMut(Loc, &Value, &mut input::Problems),
) -> Result<(), DatasetError> {
    let io = |source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::new(File::open(path).map_err(io)?);
    skip_bom(&mut reader).map_err(io)?;
    let max = problems.max_line_bytes();
    let item_bytes = Cell::new(0usize);
    let over = Cell::new(false);
    let items = Cell::new(0usize);
    let limited = ItemLimit {
        inner: reader,
        item_bytes: &item_bytes,
        over: &over,
        max,
    };
    let mut de = serde_json::Deserializer::from_reader(limited);
    let read = de
        .deserialize_seq(EachItem(|i, v: Value| {
            take(Loc::Item(i), &v, problems);
            items.set(i + 1);
            item_bytes.set(0);
        }))
        .and_then(|()| de.end());
    match read {
        Ok(()) => Ok(()),
        Err(_) if over.get() => Err(DatasetError::TooLong {
            path: path.to_path_buf(),
            loc: Loc::Item(items.get()),
            max,
        }),
        Err(e) if e.is_io() => Err(io(std::io::Error::other(e))),
        Err(e) => {
            let loc = if e.line() > 0 {
                Loc::Line(e.line())
            } else {
                Loc::File
            };
            problems.report(loc, FieldError::new("", format!("invalid JSON ({e})")));
            Ok(())
        }
    }
}

/// A reader that fails once the current array item has taken more than `max` bytes.
struct ItemLimit<'a, R> {
    inner: R,
    item_bytes: &'a Cell<usize>,
    over: &'a Cell<bool>,
    max: usize,
}

impl<R: Read> Read for ItemLimit<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let used = self.item_bytes.get() + n;
        self.item_bytes.set(used);
        if used > self.max {
            self.over.set(true);
            return Err(std::io::Error::other("item longer than --max-line-bytes"));
        }
        Ok(n)
    }
}

/// One conversation in either layout. Empty when it has no non-empty human message (the caller
/// counts it as filtered, as evalscope skips it).
fn parse_entry(v: &Value) -> Result<Vec<RawTurn>, FieldError> {
    let obj = as_object(v, "")?;
    match (obj.get("conversation"), obj.get("conversations")) {
        (Some(c), None) => evalscope_layout(c),
        (None, Some(c)) => sharegpt_layout(c),
        (Some(_), Some(_)) => Err(FieldError::new(
            "",
            "has both `conversation` (evalscope layout) and `conversations` (ShareGPT layout); \
             expected one",
        )),
        (None, None) => Err(FieldError::new(
            "conversations",
            "missing (expected ShareGPT's `conversations` [{from, value}] or evalscope's \
             `conversation` [{human, assistant}])",
        )),
    }
}

fn message(role: &str, text: &str) -> Bytes {
    Bytes::from(message_json(role, text))
}

/// `[{"human": …, "assistant": …}, …]`: one turn per non-empty human, its assistant the reply.
fn evalscope_layout(c: &Value) -> Result<Vec<RawTurn>, FieldError> {
    let items = as_array(c, "conversation")?;
    let mut turns = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = index("conversation", i);
        let o = as_object(item, &path)?;
        let human = opt_str(o, "human", &path)?.unwrap_or("").trim();
        let assistant = opt_str(o, "assistant", &path)?.unwrap_or("").trim();
        if human.is_empty() {
            continue;
        }
        turns.push(RawTurn {
            messages: vec![message("user", human)],
            max_tokens: None,
            replies: if assistant.is_empty() {
                Vec::new()
            } else {
                vec![message("assistant", assistant)]
            },
        });
    }
    Ok(turns)
}

/// Speakers of the original dump (`from`), by the chat role they become.
const HUMAN: [&str; 2] = ["human", "user"];
const GPT: [&str; 5] = ["gpt", "assistant", "chatgpt", "bing", "bard"];

/// `[{"from": …, "value": …}, …]`: runs of human/system messages are turns, gpt ends a turn.
fn sharegpt_layout(c: &Value) -> Result<Vec<RawTurn>, FieldError> {
    let items = as_array(c, "conversations")?;
    let mut split = Splitter::default();
    let mut has_human = false;
    for (i, item) in items.iter().enumerate() {
        let path = index("conversations", i);
        let o = as_object(item, &path)?;
        let from = req_str(o, "from", &path)?;
        let value = req_str(o, "value", &path)?.trim();
        if GPT.contains(&from) {
            // An empty reply still ends the turn; it just has nothing to replay.
            split.assistant((!value.is_empty()).then(|| message("assistant", value)));
            continue;
        }
        let role = if HUMAN.contains(&from) {
            "user"
        } else if from == "system" {
            "system"
        } else {
            return Err(FieldError::new(
                join(&path, "from"),
                format!(
                    "unknown speaker {} (expected human, gpt or system; also user, assistant, \
                     chatgpt, bing, bard)",
                    Value::from(from)
                ),
            ));
        };
        if value.is_empty() {
            continue;
        }
        has_human |= role == "user";
        // No per-turn max_tokens in ShareGPT, so the turn can never have two.
        let _ = split.message(message(role, value), None);
    }
    Ok(if has_human {
        split.finish()
    } else {
        Vec::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::workload::{input::Problems, DatasetParams, Selection};
    use serde_json::json;

    use crate::tokenizer::test_builtin as tok;

    fn build(
        name: &str,
        text: Option<&str>,
        params: DatasetParams,
    ) -> (Result<Built, DatasetError>, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        if let Some(t) = text {
            std::fs::write(&path, t).unwrap();
        }
        let mut problems = Problems::new(Some(&path), true);
        let built = {
            let mut ctx = BuildContext {
                name,
                path: text.map(|_| path.as_path()),
                tokenizer: tok(),
                params: &params,
                selection: Selection::default(),
                problems: &mut problems,
            };
            ShareGptSource.build(&mut ctx)
        };
        let listed = problems.listed().iter().map(|b| b.to_string()).collect();
        (built, listed)
    }

    fn first_contents(b: &Built) -> Vec<String> {
        b.conversations
            .iter()
            .map(|c| {
                let v: Value = serde_json::from_slice(&c.turns[0].delta_bytes()).unwrap();
                v["content"].as_str().unwrap().to_string()
            })
            .collect()
    }

    #[test]
    fn evalscope_layout_trims_skips_empty_humans_and_keeps_replies() {
        let text = [
            json!({"conversation": [
                {"human": "  hi  ", "assistant": " hello "},
                {"human": "", "assistant": "lost"},
                {"human": "more", "assistant": ""},
                {"human": "last"},
            ]}),
            json!({"conversation": [{"human": "  ", "assistant": "x"}]}),
        ]
        .map(|v| v.to_string())
        .join("\n");
        let (b, listed) = build(
            "share_gpt_en_multi_turn",
            Some(&text),
            DatasetParams::default(),
        );
        let b = b.unwrap();
        assert!(listed.is_empty(), "{listed:?}");
        assert_eq!(b.filtered, 1, "a conversation with no human text");
        let c = &b.conversations[0];
        assert_eq!(c.turns.len(), 3);
        let msg: Value = serde_json::from_slice(&c.turns[0].delta_bytes()).unwrap();
        assert_eq!(msg, json!({"role": "user", "content": "hi"}));
        let reply: Value = serde_json::from_slice(c.turns[0].reply.as_ref().unwrap()).unwrap();
        assert_eq!(reply["content"], "hello");
        assert!(c.turns[1].reply.is_none());
    }

    #[test]
    fn original_layout_as_array_and_jsonl() {
        let convs = [
            json!({"id": "a", "conversations": [
                {"from": "system", "value": "be nice"},
                {"from": "human", "value": "q1"},
                {"from": "gpt", "value": "r1"},
                {"from": "human", "value": "q2"},
                {"from": "gpt", "value": "r2"},
            ]}),
            json!({"id": "b", "conversations": [{"from": "gpt", "value": "only me"}]}),
            json!({"id": "c", "conversations": []}),
        ];
        // Leading blank space before the array is still the array layout.
        let array = format!("\n  \n{}", Value::Array(convs.to_vec()));
        let jsonl = convs.map(|v| v.to_string()).join("\n");
        for text in [array, jsonl] {
            let (b, listed) = build(
                "share_gpt_zh_multi_turn",
                Some(&text),
                DatasetParams::default(),
            );
            let b = b.unwrap();
            assert!(listed.is_empty(), "{listed:?}");
            assert_eq!(b.filtered, 2);
            let c = &b.conversations[0];
            assert_eq!(c.turns.len(), 2);
            let delta: Value = serde_json::from_str(&format!(
                "[{}]",
                String::from_utf8(c.turns[0].delta_bytes()).unwrap()
            ))
            .unwrap();
            assert_eq!(
                delta,
                json!([{"role": "system", "content": "be nice"}, {"role": "user", "content": "q1"}])
            );
            assert!(c.turns[1].reply.is_some(), "a trailing reply is kept");
        }
    }

    #[test]
    fn max_turns_and_first_message_length_filter() {
        let long = "word ".repeat(50);
        let text = [
            json!({"conversation": [{"human": "a b c"}, {"human": "2"}, {"human": "3"}]}),
            json!({"conversation": [{"human": long}, {"human": "2"}]}),
            json!({"conversation": [{"human": "x"}, {"human": "2"}]}),
        ]
        .map(|v| v.to_string())
        .join("\n");
        let params = DatasetParams {
            max_turns: Some(2),
            min_prompt_length: Some(2),
            max_prompt_length: Some(20),
            ..DatasetParams::default()
        };
        let (b, _) = build("share_gpt_en_multi_turn", Some(&text), params);
        let b = b.unwrap();
        // "x" is 1 token (< 2), the long one is 50 (> 20).
        assert_eq!(b.filtered, 2);
        assert_eq!(first_contents(&b), ["a b c"]);
        assert_eq!(b.conversations[0].turns.len(), 2);
    }

    #[test]
    fn bad_entries_and_missing_path() {
        let text = [
            r#"{"conversations":[{"from":"robot","value":"x"}]}"#,
            r#"{"conversation":[{"human":5}]}"#,
            r#"{"something":"else"}"#,
            r#"{"conversations":[{"from":"human"}]}"#,
            r#"{"conversation":[{"human":"fine"}]}"#,
        ]
        .join("\n");
        let (b, listed) = build(
            "share_gpt_en_multi_turn",
            Some(&text),
            DatasetParams::default(),
        );
        assert_eq!(b.unwrap().conversations.len(), 1);
        let want = [
            "line 1, field `conversations[0].from`: unknown speaker \"robot\"",
            "line 2, field `conversation[0].human`: expected a string, got a number",
            "line 3, field `conversations`: missing",
            "line 4, field `conversations[0].value`: missing",
        ];
        assert_eq!(listed.len(), want.len(), "{listed:#?}");
        for (g, w) in listed.iter().zip(want) {
            assert!(g.starts_with(w), "got {g:?}\nwant {w:?}");
        }
        let (b, listed) = build(
            "share_gpt_en_multi_turn",
            Some("[{\"a\":"),
            DatasetParams::default(),
        );
        assert!(b.unwrap().conversations.is_empty());
        // The array format names the line the JSON breaks on.
        assert!(listed[0].starts_with("line 1: invalid JSON"), "{listed:?}");
        let args = DatasetParams {
            dataset_args: Some(json!({"target_input_len": 5}).as_object().unwrap().clone()),
            ..DatasetParams::default()
        };
        // Rejected before the source runs (it reads no --dataset-args).
        let e = crate::workload::check_flags("share_gpt_en_multi_turn", &args).unwrap_err();
        assert!(
            e.to_string().starts_with("--dataset-args is not read"),
            "{e}"
        );
        let e = build("share_gpt_zh_multi_turn", None, DatasetParams::default())
            .0
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--dataset-path") && e.contains("common_zh_70k.jsonl"),
            "{e}"
        );
    }
}
