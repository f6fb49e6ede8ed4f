//! Parsing and validating a generation request body, and the output-length rules.
//!
//! Bodies are parsed with serde into borrowed strings where possible (a long conversation history
//! is not copied). Anything malformed becomes a [`BadRequest`] that the server turns into an
//! HTTP 400 with an OpenAI-style error body; nothing here panics on input.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// Which endpoint a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
        }
    }
}

/// A rejected request: the message goes to the client in the error body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct BadRequest {
    pub(crate) message: String,
    /// The offending field, when one is to blame (the error body's `param`).
    pub(crate) param: Option<&'static str>,
}

impl BadRequest {
    pub(crate) fn new(message: impl Into<String>, param: Option<&'static str>) -> Self {
        BadRequest {
            message: message.into(),
            param,
        }
    }
}

/// Message content: a string, `null`, or an array of content parts whose `text`s are joined.
#[derive(Debug, Default)]
pub(crate) struct Content<'a>(pub(crate) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Content<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, null, or an array of {\"type\":\"text\",\"text\":…} parts")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Content(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Content(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Content(Cow::Owned(v)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Content(Cow::Borrowed("")))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Content(Cow::Borrowed("")))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut texts: Vec<Cow<'a, str>> = Vec::new();
                while let Some(part) = seq.next_element::<Part<'a>>()? {
                    if part.kind != "text" {
                        return Err(de::Error::custom(format_args!(
                            "content part type `{}` is not supported (only `text`)",
                            part.kind
                        )));
                    }
                    texts.push(part.text.unwrap_or(Cow::Borrowed("")));
                }
                Ok(Content(match texts.len() {
                    0 => Cow::Borrowed(""),
                    1 => texts.pop().unwrap_or_default(),
                    _ => Cow::Owned(texts.join("\n")),
                }))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Debug)]
pub(crate) struct WireMessage<'a> {
    #[serde(borrow)]
    pub(crate) role: Cow<'a, str>,
    #[serde(borrow, default)]
    pub(crate) content: Content<'a>,
}

/// `/v1/completions` prompt: a string, one string in an array, or token ids.
#[derive(Debug)]
pub(crate) enum Prompt<'a> {
    Text(Cow<'a, str>),
    Ids(Vec<u32>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Prompt<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Prompt<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, an array of one string, or an array of token ids")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Prompt::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Prompt::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Prompt::Text(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let first = match seq.next_element::<PromptItem<'a>>()? {
                    None => return Err(de::Error::custom("the prompt is an empty array")),
                    Some(x) => x,
                };
                match first {
                    PromptItem::Text(s) => {
                        if seq.next_element::<de::IgnoredAny>()?.is_some() {
                            return Err(de::Error::custom(
                                "only one prompt per request is supported",
                            ));
                        }
                        Ok(Prompt::Text(s))
                    }
                    PromptItem::Id(id) => {
                        let mut ids = vec![id];
                        while let Some(id) = seq.next_element::<u32>()? {
                            ids.push(id);
                        }
                        Ok(Prompt::Ids(ids))
                    }
                    PromptItem::Ids(ids) => {
                        if seq.next_element::<de::IgnoredAny>()?.is_some() {
                            return Err(de::Error::custom(
                                "only one prompt per request is supported",
                            ));
                        }
                        Ok(Prompt::Ids(ids))
                    }
                }
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PromptItem<'a> {
    Id(u32),
    #[serde(borrow)]
    Text(Cow<'a, str>),
    Ids(Vec<u32>),
}

#[derive(Deserialize, Default, Debug)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
    #[serde(default)]
    continuous_usage_stats: Option<bool>,
}

/// The fields the sim reads; unknown fields are ignored, as servers do.
#[derive(Deserialize, Debug)]
struct WireRequest<'a> {
    #[serde(borrow, default)]
    messages: Option<Vec<WireMessage<'a>>>,
    #[serde(borrow, default)]
    prompt: Option<Prompt<'a>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    min_tokens: Option<u64>,
    #[serde(default)]
    ignore_eos: Option<bool>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<u64>,
}

/// What to prompt with.
#[derive(Debug)]
pub(crate) enum Input<'a> {
    Chat(Vec<WireMessage<'a>>),
    Completion(Prompt<'a>),
}

/// A parsed, validated request.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub(crate) input: Input<'a>,
    pub(crate) model: Option<Cow<'a, str>>,
    /// `max_completion_tokens`, else `max_tokens`.
    pub(crate) max_tokens: Option<u64>,
    pub(crate) min_tokens: Option<u64>,
    pub(crate) ignore_eos: bool,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    pub(crate) continuous_usage: bool,
}

/// Parses a request body for `endpoint`.
pub(crate) fn parse(endpoint: Endpoint, body: &[u8]) -> Result<Request<'_>, BadRequest> {
    let wire: WireRequest<'_> = serde_json::from_slice(body)
        .map_err(|e| BadRequest::new(format!("invalid request body: {e}"), None))?;
    let input = match endpoint {
        Endpoint::Chat => {
            let messages = wire
                .messages
                .ok_or_else(|| BadRequest::new("missing field `messages`", Some("messages")))?;
            if messages.is_empty() {
                return Err(BadRequest::new(
                    "`messages` must not be empty",
                    Some("messages"),
                ));
            }
            Input::Chat(messages)
        }
        Endpoint::Completions => Input::Completion(
            wire.prompt
                .ok_or_else(|| BadRequest::new("missing field `prompt`", Some("prompt")))?,
        ),
    };
    if let Some(n) = wire.n {
        if n != 1 {
            return Err(BadRequest::new(
                format!("n = {n} is not supported (only 1)"),
                Some("n"),
            ));
        }
    }
    let max_tokens = wire.max_completion_tokens.or(wire.max_tokens);
    if max_tokens == Some(0) {
        return Err(BadRequest::new(
            "max_tokens must be at least 1",
            Some("max_tokens"),
        ));
    }
    let stream = wire.stream.unwrap_or(false);
    let opts = wire.stream_options.unwrap_or_default();
    if !stream && (opts.include_usage.is_some() || opts.continuous_usage_stats.is_some()) {
        // vLLM rejects stream_options without stream; so does OpenAI.
        return Err(BadRequest::new(
            "stream_options is only allowed when stream is true",
            Some("stream_options"),
        ));
    }
    Ok(Request {
        input,
        model: wire.model,
        max_tokens,
        min_tokens: wire.min_tokens,
        ignore_eos: wire.ignore_eos.unwrap_or(false),
        stream,
        include_usage: opts.include_usage.unwrap_or(false),
        continuous_usage: opts.continuous_usage_stats.unwrap_or(false),
    })
}

/// How many tokens to generate and why generation stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OutputPlan {
    pub(crate) tokens: u32,
    /// `"length"` when the limit stopped it (always with `ignore_eos`), else `"stop"`.
    pub(crate) finish_reason: &'static str,
}

/// Output length rules:
/// - `ignore_eos`: exactly the limit (`max_completion_tokens`, else `max_tokens`), or
///   `default_tokens` when neither is given;
/// - otherwise `min(limit, default_tokens)`: the sim's model "emits EOS" after `default_tokens`;
/// - never fewer than `min_tokens`, never more than the limit.
pub(crate) fn output_plan(
    ignore_eos: bool,
    limit: Option<u64>,
    min_tokens: Option<u64>,
    default_tokens: u32,
) -> OutputPlan {
    let default_tokens = u64::from(default_tokens.max(1));
    let mut n = match (ignore_eos, limit) {
        (true, Some(l)) => l,
        (true, None) => default_tokens,
        (false, Some(l)) => l.min(default_tokens),
        (false, None) => default_tokens,
    };
    if let Some(min) = min_tokens {
        n = n.max(min);
    }
    if let Some(l) = limit {
        n = n.min(l);
    }
    let n = n.clamp(1, u64::from(u32::MAX));
    let finish_reason = if ignore_eos || limit == Some(n) {
        "length"
    } else {
        "stop"
    };
    OutputPlan {
        tokens: n as u32,
        finish_reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(ignore: bool, limit: Option<u64>, min: Option<u64>) -> (u32, &'static str) {
        let p = output_plan(ignore, limit, min, 64);
        (p.tokens, p.finish_reason)
    }

    #[test]
    fn output_length_rules() {
        // ignore_eos: exactly the limit, or the default without one.
        assert_eq!(plan(true, Some(300), None), (300, "length"));
        assert_eq!(plan(true, Some(5), None), (5, "length"));
        assert_eq!(plan(true, None, None), (64, "length"));
        // Without ignore_eos the model stops at the default, capped by the limit.
        assert_eq!(plan(false, Some(300), None), (64, "stop"));
        assert_eq!(plan(false, Some(10), None), (10, "length"));
        assert_eq!(plan(false, Some(64), None), (64, "length"));
        assert_eq!(plan(false, None, None), (64, "stop"));
        // min_tokens raises it, capped by the limit.
        assert_eq!(plan(false, Some(300), Some(100)), (100, "stop"));
        assert_eq!(plan(false, Some(80), Some(100)), (80, "length"));
        assert_eq!(plan(false, None, Some(100)), (100, "stop"));
        assert_eq!(plan(true, Some(10), Some(20)), (10, "length"));
        assert_eq!(plan(false, Some(300), Some(3)), (64, "stop"));
    }

    #[test]
    fn parses_chat_with_parts_and_options() {
        let body = br#"{"model":"m","messages":[{"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b\u00e9"}]},
            {"role":"assistant","content":null,"tool_calls":[]}],
            "max_tokens":10,"max_completion_tokens":12,"ignore_eos":true,"stream":true,
            "stream_options":{"include_usage":true},"unknown":{"x":[1,2]}}"#;
        let r = parse(Endpoint::Chat, body).unwrap();
        let Input::Chat(m) = &r.input else {
            panic!("chat")
        };
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].content.0, "be brief");
        assert!(matches!(m[0].content.0, Cow::Borrowed(_)));
        assert_eq!(m[1].content.0, "a\nbé");
        assert_eq!(m[2].content.0, "");
        assert_eq!(r.max_tokens, Some(12));
        assert!(r.ignore_eos && r.stream && r.include_usage && !r.continuous_usage);
    }

    #[test]
    fn parses_completion_prompts() {
        fn p(b: &[u8]) -> Result<Input<'_>, BadRequest> {
            parse(Endpoint::Completions, b).map(|r| r.input)
        }
        assert!(
            matches!(p(br#"{"prompt":"hi"}"#), Ok(Input::Completion(Prompt::Text(s))) if s == "hi")
        );
        assert!(
            matches!(p(br#"{"prompt":["hi"]}"#), Ok(Input::Completion(Prompt::Text(s))) if s == "hi")
        );
        assert!(
            matches!(p(br#"{"prompt":[1,2,3]}"#), Ok(Input::Completion(Prompt::Ids(v))) if v == [1,2,3])
        );
        assert!(
            matches!(p(br#"{"prompt":[[4,5]]}"#), Ok(Input::Completion(Prompt::Ids(v))) if v == [4,5])
        );
        assert!(p(br#"{"prompt":["a","b"]}"#).is_err());
        assert!(p(br#"{"prompt":[]}"#).is_err());
        assert!(p(br#"{"prompt":7}"#).is_err());
    }

    #[test]
    fn rejects_bad_input_with_a_message() {
        let e = |b: &[u8]| parse(Endpoint::Chat, b).unwrap_err();
        assert!(e(b"not json").message.contains("invalid request body"));
        assert_eq!(e(br#"{"model":"m"}"#).param, Some("messages"));
        assert_eq!(e(br#"{"messages":[]}"#).param, Some("messages"));
        assert!(e(br#"{"messages":[{"content":"x"}]}"#)
            .message
            .contains("role"));
        assert!(e(br#"{"messages":[{"role":"user","content":5}]}"#)
            .message
            .contains("invalid"));
        assert!(
            e(br#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#)
                .message
                .contains("image_url")
        );
        assert_eq!(
            e(br#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#).param,
            Some("max_tokens")
        );
        assert!(
            e(br#"{"messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#)
                .message
                .contains("invalid")
        );
        assert_eq!(
            e(br#"{"messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}"#)
                .param,
            Some("stream_options")
        );
        assert_eq!(
            e(br#"{"messages":[{"role":"user","content":"x"}],"n":2}"#).param,
            Some("n")
        );
    }
}
