//! The model's chat template: rendered, as a chat server renders a request before tokenizing
//! it, for the client's prompt-token estimate (used when the server sends no `usage`) and for
//! `parley sim --tokenizer-path DIR`.
//!
//! Where it comes from (as in `transformers`): a tokenizer directory's `chat_template.jinja`,
//! else `tokenizer_config.json`'s `chat_template` — a string, or a list of `{name, template}` of
//! which the one named `default` is used. `bos_token` / `eos_token` come from
//! `tokenizer_config.json` (a string or an `{"content": …}` object).
//!
//! How it renders (as `transformers`' `apply_chat_template`, which vLLM uses): Jinja with
//! `trim_blocks` and `lstrip_blocks`, loop controls, `raise_exception(msg)`,
//! `strftime_now(format)`, `tojson` with Python's `json.dumps` separators (`", "`, `": "`), and
//! Python string / dict methods (`.strip()`, `.startswith()`, `.items()`, … from
//! `minijinja-contrib`'s pycompat); the context is `messages`, `add_generation_prompt`,
//! `bos_token` and `eos_token`. A message whose content is a list of text parts is given to the
//! template as their texts joined with `\n` (what vLLM does for templates that expect a string).
//!
//! The rendered text is counted with the tokenizer **without adding special tokens** (vLLM
//! renders, then encodes with `add_special_tokens=False`): a BOS the template writes is counted
//! once, and a tokenizer's own BOS post-processor is never applied on top of it.
//!
//! A template that does not parse, or does not render a small sample conversation, is an error
//! naming its file, never a silent fallback: falling back would bring back the very
//! under-estimate the template is there to fix. Point `--tokenizer-path` at the directory's
//! `tokenizer.json` file instead to count without a template.

use std::path::{Path, PathBuf};

use minijinja::{Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;

use crate::tokenizer::{IncrementalCount, Tokenizer};
use crate::workload::{ContextMode, Conversation};

/// The name the template is registered under in its environment.
const NAME: &str = "chat_template";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{}: {reason}", path.display())]
    Load { path: PathBuf, reason: String },
    #[error(
        "{}: the chat template does not render {what}: {reason} (point --tokenizer-path at the \
         tokenizer.json file to count prompts without the template)",
        path.display()
    )]
    Render {
        path: PathBuf,
        what: String,
        reason: String,
    },
}

/// A parsed chat template with the special tokens it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// The file the template came from (`chat_template.jinja` or `tokenizer_config.json`).
    path: PathBuf,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// The chat template of a tokenizer directory, if it has one (module docs for where it is
    /// looked for). Errors name the file at fault.
    pub fn from_dir(dir: &Path) -> Result<Option<ChatTemplate>, TemplateError> {
        let config_path = dir.join("tokenizer_config.json");
        let config: Option<Json> = match std::fs::read_to_string(&config_path) {
            Ok(text) => Some(
                serde_json::from_str(&text).map_err(|e| TemplateError::Load {
                    path: config_path.clone(),
                    reason: format!("not valid JSON: {e}"),
                })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(TemplateError::Load {
                    path: config_path,
                    reason: e.to_string(),
                })
            }
        };
        let token = |field: &str| -> Result<String, TemplateError> {
            match config.as_ref().map(|c| &c[field]) {
                None | Some(Json::Null) => Ok(String::new()),
                Some(Json::String(s)) => Ok(s.clone()),
                Some(v) => match v.get("content") {
                    Some(Json::String(s)) => Ok(s.clone()),
                    _ => Err(TemplateError::Load {
                        path: config_path.clone(),
                        reason: format!(
                            "`{field}` is neither a string nor an object with a string `content`"
                        ),
                    }),
                },
            }
        };
        let (bos, eos) = (token("bos_token")?, token("eos_token")?);
        let jinja_path = dir.join("chat_template.jinja");
        let (source, path) = match std::fs::read_to_string(&jinja_path) {
            Ok(text) => (text, jinja_path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let Some(config) = &config else {
                    return Ok(None);
                };
                match config_template(config) {
                    Ok(Some(text)) => (text, config_path),
                    Ok(None) => return Ok(None),
                    Err(reason) => {
                        return Err(TemplateError::Load {
                            path: config_path,
                            reason,
                        })
                    }
                }
            }
            Err(e) => {
                return Err(TemplateError::Load {
                    path: jinja_path,
                    reason: e.to_string(),
                })
            }
        };
        let template = ChatTemplate::new(source, bos, eos, path)?;
        template.check()?;
        Ok(Some(template))
    }

    /// Parses `source`; `path` names it in errors.
    pub fn new(
        source: String,
        bos_token: String,
        eos_token: String,
        path: PathBuf,
    ) -> Result<ChatTemplate, TemplateError> {
        let mut env = Environment::new();
        // transformers renders with trim_blocks and lstrip_blocks; templates are written for it.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TemplateError::Load {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source)
            .map_err(|e| TemplateError::Load {
                path: path.clone(),
                reason: format!("the chat template does not parse: {}", describe(&e)),
            })?;
        Ok(ChatTemplate {
            env,
            path,
            bos_token,
            eos_token,
        })
    }

    /// The file the template came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renders `messages` (OpenAI message objects) with `add_generation_prompt`.
    pub fn render(&self, messages: &[Json], add_generation_prompt: bool) -> Result<String, String> {
        let messages: Vec<Value> = messages.iter().map(message_value).collect();
        self.render_values(&messages, add_generation_prompt)
    }

    /// [`ChatTemplate::render`] of messages already converted by [`message_value`] (cloning a
    /// `Value` is a reference count, so a history converted once renders turn after turn).
    fn render_values(
        &self,
        messages: &[Value],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let template = self.env.get_template(NAME).map_err(|e| describe(&e))?;
        template
            .render(minijinja::context! {
                messages => Value::from(messages.to_vec()),
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(|e| describe(&e))
    }

    /// Renders `(role, content)` pairs (the sim's view of a request).
    pub fn render_pairs<'a>(
        &self,
        messages: impl IntoIterator<Item = (&'a str, &'a str)>,
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let messages: Vec<Json> = messages
            .into_iter()
            .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
            .collect();
        self.render(&messages, add_generation_prompt)
    }

    /// Renders a small conversation, so that a template that cannot render at all fails when
    /// it is loaded rather than on the first request.
    fn check(&self) -> Result<(), TemplateError> {
        let sample = [
            ("user", "Hello"),
            ("assistant", "Hi there."),
            ("user", "How are you?"),
        ];
        self.render_pairs(sample, true)
            .map(drop)
            .map_err(|reason| TemplateError::Render {
                path: self.path.clone(),
                what: "a sample conversation (user, assistant, user)".into(),
                reason,
            })
    }
}

/// `tokenizer_config.json`'s `chat_template`: a string, or the `default` of a named list.
fn config_template(config: &Json) -> Result<Option<String>, String> {
    match &config["chat_template"] {
        Json::Null => Ok(None),
        Json::String(s) => Ok(Some(s.clone())),
        Json::Array(list) => {
            for entry in list {
                if entry["name"] == "default" {
                    return match &entry["template"] {
                        Json::String(s) => Ok(Some(s.clone())),
                        _ => Err("`chat_template` entry `default` has no string `template`".into()),
                    };
                }
            }
            let names: Vec<&str> = list.iter().filter_map(|e| e["name"].as_str()).collect();
            Err(format!(
                "`chat_template` is a list without an entry named `default` (it has: {})",
                names.join(", ")
            ))
        }
        _ => Err("`chat_template` is neither a string nor a list of {name, template}".into()),
    }
}

/// A message as the template sees it: a content that is a list of text parts becomes their
/// texts joined by `\n`.
fn message_value(m: &Json) -> Value {
    Value::from(minijinja::value::Serde(flatten_text_parts(m).as_ref()))
}

fn flatten_text_parts(m: &Json) -> std::borrow::Cow<'_, Json> {
    use std::borrow::Cow;
    let Some(Json::Array(parts)) = m.get("content") else {
        return Cow::Borrowed(m);
    };
    let texts: Option<Vec<&str>> = parts
        .iter()
        .map(|p| match p["type"].as_str() {
            Some("text") => Some(p["text"].as_str().unwrap_or("")),
            _ => None,
        })
        .collect();
    match texts {
        Some(texts) => {
            let mut m = m.clone();
            m["content"] = Json::String(texts.join("\n"));
            Cow::Owned(m)
        }
        // Images and the like: left as they are, for templates that handle parts.
        None => Cow::Borrowed(m),
    }
}

/// An error with its template line, for messages.
fn describe(e: &Error) -> String {
    let mut s = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        s.push_str(&format!(" (template line {line})"));
    }
    s
}

/// `raise_exception(msg)`: HF templates refuse a conversation this way.
fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {msg}"),
    ))
}

/// `strftime_now(format)`: the local time now, formatted by the C library's `strftime` (the
/// formats Python's `strftime` takes).
fn strftime_now(format: String) -> Result<Value, Error> {
    let bad = |m: &str| Error::new(ErrorKind::InvalidOperation, format!("strftime_now: {m}"));
    let fmt = std::ffi::CString::new(format).map_err(|_| bad("NUL in format"))?;
    // SAFETY: `time` and `localtime_r` write only to the locals given; `strftime` writes at
    // most `buf.len()` bytes into `buf` and reads the NUL-terminated `fmt`.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return Err(bad("no local time"));
        }
        let mut buf = [0u8; 256];
        let n = libc::strftime(buf.as_mut_ptr().cast(), buf.len(), fmt.as_ptr(), &tm);
        Ok(Value::from(String::from_utf8_lossy(&buf[..n]).into_owned()))
    }
}

/// `tojson` as transformers defines it (`json.dumps(x, ensure_ascii=False, indent=indent)`):
/// Python's separators `", "` and `": "` (or newlines with `indent`), no HTML escaping.
fn tojson(value: Value, kwargs: minijinja::value::Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = Vec::new();
    let written = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let f = serde_json::ser::PrettyFormatter::with_indent(&pad);
            serde::Serialize::serialize(
                &json,
                &mut serde_json::Serializer::with_formatter(&mut out, f),
            )
        }
        None => serde::Serialize::serialize(
            &json,
            &mut serde_json::Serializer::with_formatter(&mut out, PythonFormatter),
        ),
    };
    written.map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(Value::from_safe_string(
        String::from_utf8(out).expect("serde_json writes UTF-8"),
    ))
}

/// serde_json's compact output with Python's default separators.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// The word that stands for a live reply when turns are rendered before the run (its bare
/// token count is subtracted again; see [`template_delta_tokens`]).
const REPLY_PLACEHOLDER: &str = " the";

/// Sets each turn's `delta_tokens` so that the cursor's running estimate (the sum of the deltas
/// so far, plus the live replies' output tokens in live mode) equals the tokens of the turn's
/// prompt rendered with the model's chat template. Runs once per conversation while the dataset
/// is built, never on the hot path.
///
/// - verbatim: a turn's delta is its whole message array, rendered as is;
/// - canned: the history holds the dataset's replies, so they are rendered in place;
/// - live: the replies are only known at run time. Each earlier reply is rendered as a
///   one-word placeholder whose bare tokens are taken off again, and the cursor adds the reply's
///   output tokens when it arrives. So the template's overhead for an assistant message (its
///   role header, its end marker) is counted exactly, and the reply's text as its output
///   tokens: exact when the template copies the reply verbatim between special tokens (ChatML,
///   Qwen), approximate by a token or so per reply when it transforms it (Llama 3 trims it, so
///   the reply's first word loses its space; templates that drop earlier turns' reasoning).
///
/// A turn whose rendering is shorter than the previous turn's (a template that drops earlier
/// content) gets a delta of 0: the estimate then stays above the prompt.
///
/// Rendering turn k re-renders the k turns before it, but counting reuses the previous turn's
/// count up to the last added token they share ([`Tokenizer::count_incremental`]), so the
/// tokenizer runs over each conversation's text about once.
pub(crate) fn template_delta_tokens(
    conv: &mut Conversation,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
) -> Result<(), String> {
    let placeholder_tokens = tokenizer.count(REPLY_PLACEHOLDER) as u64;
    let mut history: Vec<Value> = Vec::new();
    let mut counter = IncrementalCount::default();
    let mut previous_total = 0u64;
    for (k, turn) in conv.turns.iter_mut().enumerate() {
        let delta = parse_messages(&turn.delta).map_err(|e| format!("turn {}: {e}", k + 1))?;
        let delta = delta.iter().map(message_value);
        match conv.context {
            ContextMode::Verbatim => history = delta.collect(),
            ContextMode::Canned | ContextMode::Live => history.extend(delta),
        }
        // Placeholders in this rendering: one per earlier turn's live reply.
        let live_replies = if conv.context == ContextMode::Live {
            k as u64
        } else {
            0
        };
        let text = template
            .render_values(&history, true)
            .map_err(|e| format!("turn {}: {e}", k + 1))?;
        let rendered = tokenizer.count_incremental(&mut counter, text);
        let total = rendered.saturating_sub(live_replies * placeholder_tokens);
        let delta_tokens = if conv.context == ContextMode::Verbatim {
            total
        } else {
            total.saturating_sub(previous_total)
        };
        turn.delta_tokens = Some(u32::try_from(delta_tokens).unwrap_or(u32::MAX));
        previous_total = previous_total.max(total);
        // The reply that follows this turn in the history of the next.
        match conv.context {
            ContextMode::Live => history.push(message_value(&serde_json::json!({
                "role": "assistant",
                "content": REPLY_PLACEHOLDER,
            }))),
            ContextMode::Canned => {
                if let Some(reply) = &turn.reply {
                    let reply = parse_messages(std::slice::from_ref(reply))
                        .map_err(|e| format!("turn {}'s recorded reply: {e}", k + 1))?;
                    history.extend(reply.iter().map(message_value));
                }
            }
            ContextMode::Verbatim => {}
        }
    }
    Ok(())
}

/// The message objects of a delta (JSON objects joined by commas, as segments).
fn parse_messages(delta: &[bytes::Bytes]) -> Result<Vec<Json>, String> {
    let mut text = Vec::with_capacity(delta.iter().map(|d| d.len()).sum::<usize>() + 2);
    text.push(b'[');
    for d in delta {
        text.extend_from_slice(d);
    }
    text.push(b']');
    serde_json::from_slice(&text).map_err(|e| format!("the messages are not valid JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::test_builtin as tok;
    use crate::workload::{message_json, Turn};
    use bytes::Bytes;
    use serde_json::json;

    /// A copy of `tests/data/templates/NAME` with a `tokenizer.json`: the builtin's, plus the
    /// special tokens the fixture's `added_tokens_decoder` lists (and, when it has a BOS, a
    /// post-processor that adds it, as Llama 3's tokenizer.json does).
    pub(crate) fn fixture(name: &str) -> tempfile::TempDir {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/templates")
            .join(name);
        let dir = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
        }
        let config: Json =
            serde_json::from_slice(&std::fs::read(src.join("tokenizer_config.json")).unwrap())
                .unwrap();
        let mut t: Json = serde_json::from_str(&tok().hf().to_string(false).unwrap()).unwrap();
        if let Some(added) = config["added_tokens_decoder"].as_object() {
            for (id, a) in added {
                let mut a = a.clone();
                a["id"] = json!(id.parse::<u32>().unwrap());
                t["added_tokens"].as_array_mut().unwrap().push(a);
            }
        }
        if let Some(bos) = config["bos_token"]["content"].as_str() {
            let id = config["added_tokens_decoder"]
                .as_object()
                .unwrap()
                .iter()
                .find(|(_, a)| a["content"] == bos)
                .map(|(id, _)| id.parse::<u32>().unwrap())
                .unwrap();
            t["post_processor"] = json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [id], "tokens": [bos]}}
            });
        }
        std::fs::write(dir.path().join("tokenizer.json"), t.to_string()).unwrap();
        dir
    }

    fn template(source: &str) -> ChatTemplate {
        ChatTemplate::new(source.into(), "<s>".into(), "</s>".into(), "t.jinja".into()).unwrap()
    }

    fn pairs(t: &ChatTemplate, m: &[(&str, &str)], gen: bool) -> Result<String, String> {
        t.render_pairs(m.iter().copied(), gen)
    }

    const CONV: [(&str, &str); 3] = [
        ("user", "Hi there"),
        ("assistant", " Hello!"),
        ("user", "  What is 2+2?\n"),
    ];

    #[test]
    fn chatml_renders_as_qwen_does() {
        let dir = fixture("chatml");
        let t = Tokenizer::from_path(dir.path()).unwrap();
        let ct = t.chat_template().expect("template");
        assert!(ct.path().ends_with("tokenizer_config.json"));
        let want = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful \
                    assistant.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>\
                    assistant\n Hello!<|im_end|>\n<|im_start|>user\n  What is 2+2?\n<|im_end|>\n\
                    <|im_start|>assistant\n";
        assert_eq!(pairs(ct, &CONV, true).unwrap(), want);
        let no_gen = pairs(ct, &CONV, false).unwrap();
        assert_eq!(
            no_gen,
            want.strip_suffix("<|im_start|>assistant\n").unwrap()
        );
        // Its own system message replaces the default one; tool calls go through tojson.
        let m = [
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": [{"type": "text", "text": "a"},
                                               {"type": "text", "text": "b"}]}),
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"function": {"name": "f", "arguments": {"x": [1, "<y>"]}}}]}),
        ];
        assert_eq!(
            ct.render(&m, false).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\na\nb<|im_end|>\n\
             <|im_start|>assistant\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": [1, \
             \"<y>\"]}}\n</tool_call><|im_end|>\n"
        );
        // Against the builtin ChatML rendering: the same text after the default system prompt.
        let mut plain = String::new();
        crate::tokenizer::render_chat(CONV, &mut plain);
        assert!(want.ends_with(&plain));
    }

    #[test]
    fn llama3_counts_its_bos_once() {
        let dir = fixture("llama3");
        let t = Tokenizer::from_path(dir.path()).unwrap();
        let ct = t.chat_template().expect("template");
        // chat_template.jinja wins over tokenizer_config.json's chat_template.
        assert!(ct.path().ends_with("chat_template.jinja"));
        let text = pairs(ct, &CONV, true).unwrap();
        assert_eq!(
            text,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        let bos = t.hf().token_to_id("<|begin_of_text|>").unwrap();
        let ids = t.encode(&text);
        assert_eq!(ids.iter().filter(|&&i| i == bos).count(), 1);
        assert_eq!(t.count(&text), ids.len());
        // The tokenizer would add a second BOS if asked to add special tokens; vLLM does not
        // ask (add_special_tokens=False after rendering), and neither does parley.
        let with_specials = t.hf().encode(text.as_str(), true).unwrap();
        assert_eq!(
            with_specials
                .get_ids()
                .iter()
                .filter(|&&i| i == bos)
                .count(),
            2
        );
        assert_eq!(with_specials.get_ids().len(), ids.len() + 1);
    }

    #[test]
    fn list_form_picks_default_and_config_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("tokenizer_config.json");
        let write = |v: Json| std::fs::write(&cfg, v.to_string()).unwrap();
        write(json!({"bos_token": {"content": "<B>"}, "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": "{{ bos_token }}{% for m in messages %}{{ m.content }}|{% endfor %}"},
        ]}));
        let t = ChatTemplate::from_dir(dir.path()).unwrap().unwrap();
        assert_eq!(
            pairs(&t, &CONV[..2], false).unwrap(),
            "<B>Hi there| Hello!|"
        );

        let cases = [
            (
                json!({"chat_template": [{"name": "tool_use", "template": "x"}]}),
                "tool_use",
            ),
            (json!({"chat_template": 7}), "neither a string nor a list"),
            (json!({"chat_template": "x", "eos_token": 3}), "`eos_token`"),
            (json!({"chat_template": "{% for %}"}), "does not parse"),
        ];
        for (v, needle) in cases {
            write(v);
            let e = ChatTemplate::from_dir(dir.path()).unwrap_err().to_string();
            assert!(
                e.contains(&cfg.display().to_string()) && e.contains(needle),
                "{e}"
            );
        }
        std::fs::write(&cfg, "{oops").unwrap();
        let e = ChatTemplate::from_dir(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("not valid JSON") && e.contains("tokenizer_config.json"),
            "{e}"
        );

        // No template anywhere: none, and the tokenizer counts without one.
        write(json!({"bos_token": "<s>"}));
        assert!(ChatTemplate::from_dir(dir.path()).unwrap().is_none());
        // A template that refuses the sample conversation fails at load, naming its file.
        let jinja = dir.path().join("chat_template.jinja");
        std::fs::write(
            &jinja,
            "{% if messages[1].role == 'assistant' %}{{ raise_exception('no assistants') }}{% endif %}",
        )
        .unwrap();
        let e = ChatTemplate::from_dir(dir.path()).unwrap_err();
        assert!(matches!(e, TemplateError::Render { .. }));
        let e = e.to_string();
        assert!(
            e.contains(&jinja.display().to_string()) && e.contains("no assistants"),
            "{e}"
        );
        assert!(
            e.contains("tokenizer.json file"),
            "says how to go without: {e}"
        );
    }

    #[test]
    fn a_tokenizer_file_has_no_template_and_a_broken_one_fails_the_load() {
        let dir = fixture("chatml");
        let file = Tokenizer::from_path(&dir.path().join("tokenizer.json")).unwrap();
        assert!(file.chat_template().is_none());
        std::fs::write(dir.path().join("chat_template.jinja"), "{{ unclosed").unwrap();
        let e = Tokenizer::from_path(dir.path()).err().unwrap().to_string();
        assert!(
            e.contains("chat_template.jinja") && e.contains("does not parse"),
            "{e}"
        );
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn hf_template_features() {
        let t = template(
            "{% for m in messages %}{% if loop.index0 == 2 %}{% break %}{% endif %}\
             {% if m.content.startswith(' ') %}[{{ m.content.strip() }}]{% else %}{{ m.content.upper() }}{% endif %}\
             {% endfor %}|{{ {'a': 1, 'b': [true, none, 'x<']} | tojson }}|{{ [1] | tojson(indent=2) }}\
             |{{ strftime_now('%Y') | length }}|{{ bos_token }}{{ eos_token }}",
        );
        assert_eq!(
            pairs(&t, &CONV, false).unwrap(),
            "HI THERE[Hello!]|{\"a\": 1, \"b\": [true, null, \"x<\"]}|[\n  1\n]|4|<s></s>"
        );
        // trim_blocks / lstrip_blocks, as transformers renders.
        let t = template("{% for m in messages %}\n    {% if true %}\n{{ m.role }}\n    {% endif %}\n{% endfor %}");
        assert_eq!(pairs(&t, &CONV[..2], false).unwrap(), "user\nassistant\n");
        let t = template("{{ raise_exception('Conversation roles must alternate') }}");
        let e = pairs(&t, &CONV, true).unwrap_err();
        assert!(e.contains("Conversation roles must alternate"), "{e}");
    }

    /// Prompts of a conversation rendered with `replies` after each turn but the last.
    fn full_counts(t: &Tokenizer, turns: &[&str], replies: &[&str]) -> Vec<u64> {
        let ct = t.chat_template().unwrap();
        (0..turns.len())
            .map(|k| {
                let mut m = Vec::new();
                for j in 0..=k {
                    m.push(("user", turns[j]));
                    if j < k {
                        m.push(("assistant", replies[j]));
                    }
                }
                t.count(&pairs(ct, &m, true).unwrap()) as u64
            })
            .collect()
    }

    /// The cursor's estimate from `template_delta_tokens`: the deltas so far, plus the earlier
    /// live replies' tokens in live mode.
    fn estimates(conv: &Conversation, reply_tokens: &[u64]) -> Vec<u64> {
        let mut sum = 0;
        let mut out = Vec::new();
        for (k, t) in conv.turns.iter().enumerate() {
            let d = u64::from(t.delta_tokens.unwrap());
            match conv.context {
                ContextMode::Verbatim => sum = d,
                ContextMode::Live => sum += d + if k > 0 { reply_tokens[k - 1] } else { 0 },
                ContextMode::Canned => sum += d,
            }
            out.push(sum);
        }
        out
    }

    #[test]
    fn delta_tokens_sum_to_the_rendered_prompts() {
        let turns = [" alpha beta", " gamma\n\ndelta", " epsilon"];
        let dir = fixture("chatml");
        let t = Tokenizer::from_path(dir.path()).unwrap();
        let words = tok().single_token_words();
        let replies: Vec<String> = (0..2)
            .map(|k| words[100 * k..100 * k + 5 + k].concat())
            .collect();
        let reply_refs: Vec<&str> = replies.iter().map(String::as_str).collect();
        let reply_tokens: Vec<u64> = replies.iter().map(|r| t.count(r) as u64).collect();
        let with_replies = |mode: ContextMode| {
            let mut c = Conversation::live(
                turns
                    .iter()
                    .enumerate()
                    .map(|(k, u)| Turn {
                        reply: replies
                            .get(k)
                            .map(|r| Bytes::from(message_json("assistant", r))),
                        ..Turn::user(u, Some(1))
                    })
                    .collect(),
            );
            c.convert(mode, |_| Some(0)).unwrap();
            template_delta_tokens(&mut c, &t, t.chat_template().unwrap()).unwrap();
            c
        };
        // ChatML copies the reply verbatim between special tokens: exact in every mode.
        let want = full_counts(&t, &turns, &reply_refs);
        for mode in [
            ContextMode::Live,
            ContextMode::Canned,
            ContextMode::Verbatim,
        ] {
            assert_eq!(
                estimates(&with_replies(mode), &reply_tokens),
                want,
                "{mode:?}"
            );
        }
        // Without the template, the bare estimate is lower by the template's overhead.
        let bare: u64 =
            turns.iter().map(|u| t.count(u) as u64).sum::<u64>() + reply_tokens.iter().sum::<u64>();
        assert!(want[2] > bare + 20, "{} vs {bare}", want[2]);

        // Llama 3 trims the reply: live mode is approximate (within a token per reply), the
        // modes that know the history are exact.
        let dir = fixture("llama3");
        let t3 = Tokenizer::from_path(dir.path()).unwrap();
        let want = full_counts(&t3, &turns, &reply_refs);
        let mut c = Conversation::live(turns.iter().map(|u| Turn::user(u, None)).collect());
        template_delta_tokens(&mut c, &t3, t3.chat_template().unwrap()).unwrap();
        for (k, (got, want)) in estimates(&c, &reply_tokens).iter().zip(&want).enumerate() {
            assert!(got.abs_diff(*want) <= k as u64, "turn {k}: {got} vs {want}");
        }
        let mut c = Conversation::live(
            turns
                .iter()
                .enumerate()
                .map(|(k, u)| Turn {
                    reply: replies
                        .get(k)
                        .map(|r| Bytes::from(message_json("assistant", r))),
                    ..Turn::user(u, None)
                })
                .collect(),
        );
        c.convert(ContextMode::Canned, |_| None).unwrap();
        template_delta_tokens(&mut c, &t3, t3.chat_template().unwrap()).unwrap();
        assert_eq!(estimates(&c, &reply_tokens), want);
    }

    #[test]
    fn a_conversation_the_template_refuses_is_an_error_naming_the_turn() {
        let t = Tokenizer::builtin().unwrap();
        let ct =
            template("{% if messages | length > 2 %}{{ raise_exception('too long') }}{% endif %}x");
        let mut c = Conversation::live(vec![Turn::user("a", None), Turn::user("b", None)]);
        let e = template_delta_tokens(&mut c, &t, &ct).unwrap_err();
        assert!(e.starts_with("turn 2:") && e.contains("too long"), "{e}");
    }

    /// Cost of the estimate at dataset build (run with `cargo test --lib template -- --ignored
    /// --nocapture`): live conversations of 20 turns of 500 tokens, ChatML template, against
    /// counting each conversation's last prompt once (a fresh tokenizer each time, so that its
    /// BPE cache is as cold as for the estimate). The two should be close: the counting is
    /// incremental and rendering is cheap beside tokenizing.
    #[test]
    #[ignore]
    fn delta_tokens_build_time() {
        let dir = fixture("chatml");
        let t = Tokenizer::from_path(dir.path()).unwrap();
        let words = tok().single_token_words();
        let conversation = |c: usize| {
            Conversation::live(
                (0..20)
                    .map(|k| {
                        let text: String = (0..500)
                            .map(|i| words[(c * 7919 + k * 500 + i) % words.len()].as_str())
                            .collect();
                        Turn::user(&text, None)
                    })
                    .collect(),
            )
        };
        let n = 50;
        let mut convs: Vec<Conversation> = (0..n).map(conversation).collect();
        let t0 = std::time::Instant::now();
        for c in &mut convs {
            template_delta_tokens(c, &t, t.chat_template().unwrap()).unwrap();
        }
        let estimate = t0.elapsed();
        let mut once = std::time::Duration::ZERO;
        for c in 0..n {
            let cold = Tokenizer::from_path(dir.path()).unwrap();
            let mut m = Vec::new();
            for turn in &conversation(c).turns {
                m.extend(parse_messages(&turn.delta).unwrap());
                m.push(json!({"role": "assistant", "content": REPLY_PLACEHOLDER}));
            }
            m.pop();
            let text = t.chat_template().unwrap().render(&m, true).unwrap();
            let t1 = std::time::Instant::now();
            cold.count(&text);
            once += t1.elapsed();
        }
        println!(
            "{n} conversations × 20 turns × 500 tokens: estimate {estimate:?} ({:.0} µs per \
             turn); counting each last prompt once {once:?}",
            estimate.as_secs_f64() * 1e6 / (n * 20) as f64
        );
    }

    #[test]
    fn incremental_count_equals_count() {
        use rand::{Rng, SeedableRng};
        let t = tok();
        let pieces = [
            "<|im_start|>",
            "<|im_end|>",
            "<|endoftext|>",
            "user\n",
            " alpha",
            " beta",
            "\n\n",
            "  ",
            "x",
            "数据",
            "<|im_",
            "end|>",
        ];
        let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
        let mut state = IncrementalCount::default();
        let mut text = String::new();
        for _ in 0..3000 {
            // Mostly growing texts (a conversation's turns), sometimes cut back or replaced.
            match rng.random_range(0..10) {
                0 => text.clear(),
                1 => {
                    let cut = rng.random_range(0..=text.len());
                    while !text.is_char_boundary(cut.min(text.len())) {
                        text.pop();
                    }
                    text.truncate(cut.min(text.len()));
                }
                _ => {}
            }
            for _ in 0..rng.random_range(0..6) {
                text.push_str(pieces[rng.random_range(0..pieces.len())]);
            }
            let got = t.count_incremental(&mut state, text.clone());
            assert_eq!(got, t.count(&text) as u64, "{text:?}");
        }
    }
}
