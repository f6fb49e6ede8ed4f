//! Parsing one OpenAI streaming chunk (or a whole non-stream response) with simd-json.
//! (Owned by the SSE work.)
//!
//! simd-json builds a flat tape (`Vec<Node>`) whose strings borrow the (in place unescaped)
//! payload; both the tape and simd-json's scratch [`Buffers`] are kept in the parser and reused,
//! so a chunk costs no allocation once they have grown. Only the few keys we need are looked at;
//! nested values we skip (`logprobs`, `prompt_token_ids`, …) are stepped over in O(1) using the
//! node counts on the tape.

use std::mem;

use simd_json::{Buffers, Node, StaticNode, Tape};

/// Token usage as the server reported it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// `usage.prompt_tokens_details.cached_tokens`, when the server sent it (even 0).
    pub cached_tokens: Option<u64>,
}

/// What one chunk carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Non-empty `content`, `reasoning_content`/`reasoning`, `text` or `tool_calls` in
    /// `choices[0]`: this chunk stops the TTFT clock / is an ITL point.
    pub output: bool,
    /// `choices[0].finish_reason`, when it was a string.
    pub finish: Option<Finish>,
    pub usage: Option<Usage>,
    /// The chunk was an in-band error (`error` key or `object == "error"`).
    pub error: bool,
}

/// What a `finish_reason` string says about how the reply ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The reply ended as the model or the request meant it to: `stop`, `length`, `tool_calls`,
    /// `function_call`, `content_filter`, and any other string but the two below (servers name
    /// normal ends their own way, e.g. TGI's `eos_token` and `stop_sequence`).
    Normal,
    /// `abort`: the server cut the reply short (vLLM aborts requests at shutdown or when the
    /// client's request is cancelled, then still sends usage and `[DONE]`).
    Abort,
    /// `error`: generation failed on the server.
    Error,
}

impl Finish {
    /// The finish a `finish_reason` string stands for.
    pub fn of(reason: &str) -> Finish {
        match reason {
            "abort" => Finish::Abort,
            "error" => Finish::Error,
            _ => Finish::Normal,
        }
    }
}

/// Longest in-band error message kept ([`ChunkParser::error_message`]), in bytes.
const MAX_ERROR_MESSAGE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("malformed JSON in SSE data: {0}")]
    Json(String),
}

/// Reusable parser; holds simd-json's scratch buffers so parsing allocates nothing per chunk.
pub struct ChunkParser {
    buffers: Buffers,
    /// Empty between calls; only its allocation is kept.
    tape: Tape<'static>,
    /// The message of the last in-band error parsed (empty when it had none). Copied out here
    /// because the payload is unescaped in place and the tape that points into it is reset.
    error_message: String,
}

impl Default for ChunkParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkParser {
    pub fn new() -> Self {
        Self {
            buffers: Buffers::new(1024),
            tape: Tape(Vec::with_capacity(128)),
            error_message: String::new(),
        }
    }

    /// The message of the last chunk or body parsed, when it was an in-band error with one
    /// (`error.message`, a string `error`, or a top-level `message` beside
    /// `"object": "error"`); empty otherwise.
    pub fn error_message(&self) -> &str {
        &self.error_message
    }

    /// `true` for the `[DONE]` sentinel (surrounding whitespace allowed).
    pub fn is_done(payload: &[u8]) -> bool {
        payload.trim_ascii() == b"[DONE]"
    }

    /// Parses one chunk in place, appending its output text (content, then reasoning) to `reply`.
    pub fn parse_chunk(
        &mut self,
        payload: &mut [u8],
        reply: &mut String,
    ) -> Result<ChunkInfo, ChunkError> {
        self.parse(payload, reply, "delta")
    }

    /// Parses a non-stream response body (`choices[0].message` or `.text`, plus `usage`).
    pub fn parse_response(
        &mut self,
        body: &mut [u8],
        reply: &mut String,
    ) -> Result<ChunkInfo, ChunkError> {
        self.parse(body, reply, "message")
    }

    fn parse(
        &mut self,
        input: &mut [u8],
        reply: &mut String,
        message_key: &str,
    ) -> Result<ChunkInfo, ChunkError> {
        let mut tape = mem::replace(&mut self.tape, Tape(Vec::new())).reset();
        self.error_message.clear();
        let error_message = &mut self.error_message;
        let r = simd_json::fill_tape(input, &mut self.buffers, &mut tape)
            .map(|()| extract(&tape.0, reply, message_key, error_message))
            .map_err(|e| ChunkError::Json(e.to_string()));
        self.tape = tape.reset();
        r
    }
}

/// Reads what we need from the tape of one chunk / response.
fn extract(
    root: &[Node<'_>],
    reply: &mut String,
    message_key: &str,
    error_message: &mut String,
) -> ChunkInfo {
    let mut info = ChunkInfo::default();
    let Some(fields) = object(root) else {
        return info;
    };
    let mut choices = None;
    // Candidates for the error's text; only read when the chunk turns out to be an error.
    let (mut top_message, mut error_text) = (None, None);
    for (key, value) in fields {
        match key {
            "choices" => choices = Some(value),
            "usage" => info.usage = usage(value),
            // `"error": null` is not an error (some proxies send it on every chunk).
            "error" => {
                info.error |= !is_null(value);
                error_text = as_str(value).or_else(|| {
                    object(value)?
                        .find(|(k, _)| *k == "message")
                        .and_then(|(_, v)| as_str(v))
                });
            }
            "object" => info.error |= as_str(value) == Some("error"),
            "message" => top_message = as_str(value),
            _ => {}
        }
    }
    if info.error {
        if let Some(text) = error_text.or(top_message) {
            let mut end = text.len().min(MAX_ERROR_MESSAGE);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            error_message.push_str(&text[..end]);
        }
    }
    let Some(choice) = choices.and_then(first_element).and_then(object) else {
        return info;
    };

    let mut text = None;
    let mut message = None;
    for (key, value) in choice {
        match key {
            // A string everywhere we know of; an object `{"type": "stop", …}` (SGLang's
            // native form) is read by its type rather than taken for no finish at all.
            "finish_reason" => {
                info.finish = as_str(value)
                    .or_else(|| {
                        object(value)?
                            .find(|(k, _)| *k == "type")
                            .and_then(|(_, v)| as_str(v))
                    })
                    .map(Finish::of)
            }
            "text" => text = as_str(value),
            k if k == message_key => message = object(value),
            _ => {}
        }
    }
    if let Some(message) = message {
        let (mut content, mut reasoning_content, mut reasoning) = (None, None, None);
        for (key, value) in message {
            match key {
                "content" => content = as_str(value),
                "reasoning_content" => reasoning_content = as_str(value),
                "reasoning" => reasoning = as_str(value),
                "tool_calls" => info.output |= non_empty_array(value),
                _ => {}
            }
        }
        // Like evalscope: content + (reasoning_content or reasoning).
        let reasoning = reasoning_content.filter(|s| !s.is_empty()).or(reasoning);
        for s in [content, reasoning].into_iter().flatten() {
            if !s.is_empty() {
                reply.push_str(s);
                info.output = true;
            }
        }
    }
    if let Some(s) = text.filter(|s| !s.is_empty()) {
        reply.push_str(s);
        info.output = true;
    }
    info
}

fn usage(value: &[Node<'_>]) -> Option<Usage> {
    let mut u = Usage::default();
    for (key, value) in object(value)? {
        match key {
            "prompt_tokens" => u.prompt_tokens = as_u64(value).unwrap_or(0),
            "completion_tokens" => u.completion_tokens = as_u64(value).unwrap_or(0),
            "prompt_tokens_details" => {
                u.cached_tokens = object(value)
                    .and_then(|mut d| d.find(|(k, _)| *k == "cached_tokens"))
                    .and_then(|(_, v)| as_u64(v));
            }
            _ => {}
        }
    }
    Some(u)
}

/// Number of tape nodes the value starting at `node` spans.
#[inline]
fn span(node: &Node<'_>) -> usize {
    match node {
        Node::Object { count, .. } | Node::Array { count, .. } => count.saturating_add(1),
        _ => 1,
    }
}

/// Key/value pairs of an object value; every value is the tape slice it spans.
struct Fields<'t, 'i> {
    rest: &'t [Node<'i>],
    left: usize,
}

impl<'t, 'i> Iterator for Fields<'t, 'i> {
    type Item = (&'i str, &'t [Node<'i>]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (Node::String(key), rest) = self.rest.split_first()? else {
            return None;
        };
        let n = span(rest.first()?);
        let (value, tail) = (rest.get(..n)?, rest.get(n..)?);
        self.rest = tail;
        Some((key, value))
    }
}

#[inline]
fn object<'t, 'i>(value: &'t [Node<'i>]) -> Option<Fields<'t, 'i>> {
    match value.first()? {
        Node::Object { len, count } => Some(Fields {
            rest: value.get(1..)?.get(..*count)?,
            left: *len,
        }),
        _ => None,
    }
}

#[inline]
fn first_element<'t, 'i>(value: &'t [Node<'i>]) -> Option<&'t [Node<'i>]> {
    match value.first()? {
        Node::Array { len, .. } if *len > 0 => {
            let body = value.get(1..)?;
            body.get(..span(body.first()?))
        }
        _ => None,
    }
}

#[inline]
fn non_empty_array(value: &[Node<'_>]) -> bool {
    matches!(value.first(), Some(Node::Array { len, .. }) if *len > 0)
}

#[inline]
fn as_str<'i>(value: &[Node<'i>]) -> Option<&'i str> {
    match value.first()? {
        Node::String(s) => Some(s),
        _ => None,
    }
}

#[inline]
fn is_null(value: &[Node<'_>]) -> bool {
    matches!(value.first(), Some(Node::Static(StaticNode::Null)))
}

#[inline]
fn as_u64(value: &[Node<'_>]) -> Option<u64> {
    match value.first()? {
        Node::Static(StaticNode::U64(n)) => Some(*n),
        Node::Static(StaticNode::I64(n)) => u64::try_from(*n).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> (ChunkInfo, String) {
        let mut p = ChunkParser::new();
        let mut reply = String::new();
        let mut buf = s.as_bytes().to_vec();
        let info = p.parse_chunk(&mut buf, &mut reply).expect("valid chunk");
        (info, reply)
    }

    fn parse_resp(s: &str) -> (ChunkInfo, String) {
        let mut p = ChunkParser::new();
        let mut reply = String::new();
        let mut buf = s.as_bytes().to_vec();
        let info = p.parse_response(&mut buf, &mut reply).expect("valid body");
        (info, reply)
    }

    const OUT: ChunkInfo = ChunkInfo {
        output: true,
        finish: None,
        usage: None,
        error: false,
    };

    #[test]
    fn vllm_role_prelude_is_not_output() {
        let s = r#"{"id":"chatcmpl-7f3a","object":"chat.completion.chunk","created":1733000000,"model":"Qwen/Qwen2.5-0.5B-Instruct","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"prompt_token_ids":[151644,8948,198,2610,525,264,10950,17847,13]}"#;
        assert_eq!(parse(s), (ChunkInfo::default(), String::new()));
    }

    #[test]
    fn vllm_content_chunk_with_extra_fields() {
        let s = r#"{"id":"chatcmpl-7f3a","object":"chat.completion.chunk","created":1733000000,"model":"Qwen/Qwen2.5-0.5B-Instruct","choices":[{"index":0,"delta":{"content":" world"},"logprobs":null,"finish_reason":null,"stop_reason":null,"token_ids":[1879]}]}"#;
        assert_eq!(parse(s), (OUT, " world".to_string()));
    }

    #[test]
    fn vllm_finish_chunk() {
        let s = r#"{"id":"chatcmpl-7f3a","object":"chat.completion.chunk","created":1733000000,"model":"m","choices":[{"index":0,"delta":{"content":"."},"logprobs":null,"finish_reason":"length","stop_reason":null,"token_ids":[13]}]}"#;
        let (info, reply) = parse(s);
        assert!(info.output && info.finish == Some(Finish::Normal) && !info.error);
        assert_eq!(reply, ".");
        // EOS: finish_reason with empty content is finished but not output.
        let s = r#"{"choices":[{"index":0,"delta":{"content":""},"finish_reason":"stop","stop_reason":151645}]}"#;
        let (info, reply) = parse(s);
        assert!(!info.output && info.finish == Some(Finish::Normal));
        assert_eq!(reply, "");
        // null / missing / non-string finish_reason is not finished.
        for s in [
            r#"{"choices":[{"delta":{},"finish_reason":null}]}"#,
            r#"{"choices":[{"delta":{}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":1}]}"#,
        ] {
            assert_eq!(parse(s), (ChunkInfo::default(), String::new()), "{s}");
        }
    }

    #[test]
    fn vllm_usage_only_chunk() {
        let s = r#"{"id":"chatcmpl-7f3a","object":"chat.completion.chunk","created":1733000000,"model":"m","choices":[],"usage":{"prompt_tokens":18,"total_tokens":21,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":0,"created_cache_tokens":0}}}"#;
        let (info, reply) = parse(s);
        assert_eq!(
            info,
            ChunkInfo {
                usage: Some(Usage {
                    prompt_tokens: 18,
                    completion_tokens: 3,
                    cached_tokens: Some(0),
                }),
                ..ChunkInfo::default()
            }
        );
        assert_eq!(reply, "");
    }

    #[test]
    fn usage_variants() {
        let u = |s: &str| parse(s).0.usage;
        assert_eq!(u(r#"{"choices":[],"usage":null}"#), None);
        assert_eq!(u(r#"{"choices":[]}"#), None);
        assert_eq!(
            u(r#"{"usage":{"prompt_tokens":900,"completion_tokens":64}}"#),
            Some(Usage {
                prompt_tokens: 900,
                completion_tokens: 64,
                cached_tokens: None
            })
        );
        assert_eq!(
            u(
                r#"{"usage":{"prompt_tokens":900,"completion_tokens":64,"prompt_tokens_details":null}}"#
            ),
            Some(Usage {
                prompt_tokens: 900,
                completion_tokens: 64,
                cached_tokens: None
            })
        );
        assert_eq!(
            u(
                r#"{"usage":{"prompt_tokens_details":{"cached_tokens":896},"prompt_tokens":900,"completion_tokens":64}}"#
            ),
            Some(Usage {
                prompt_tokens: 900,
                completion_tokens: 64,
                cached_tokens: Some(896)
            })
        );
        // continuous_usage_stats: usage on a content chunk too.
        let (info, reply) = parse(
            r#"{"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}],"usage":{"prompt_tokens":5,"total_tokens":6,"completion_tokens":1}}"#,
        );
        assert!(info.output);
        assert_eq!(info.usage.map(|u| u.completion_tokens), Some(1));
        assert_eq!(reply, "a");
        // Large counts (u64 range) survive.
        assert_eq!(
            u(r#"{"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":-1}}"#),
            Some(Usage {
                prompt_tokens: u64::MAX,
                completion_tokens: 0,
                cached_tokens: None
            })
        );
    }

    #[test]
    fn reasoning_fields() {
        // vLLM reasoning parser: reasoning_content.
        let (info, reply) =
            parse(r#"{"choices":[{"index":0,"delta":{"reasoning_content":"Let me think"}}]}"#);
        assert_eq!((info, reply.as_str()), (OUT, "Let me think"));
        // SGLang / newer servers: reasoning.
        let (info, reply) =
            parse(r#"{"choices":[{"index":0,"delta":{"content":null,"reasoning":"hmm"}}]}"#);
        assert_eq!((info, reply.as_str()), (OUT, "hmm"));
        // Content first, then reasoning; reasoning_content preferred over reasoning.
        let (info, reply) = parse(
            r#"{"choices":[{"delta":{"reasoning":"r2","reasoning_content":"r1","content":"c"}}]}"#,
        );
        assert_eq!((info, reply.as_str()), (OUT, "cr1"));
        let (info, reply) =
            parse(r#"{"choices":[{"delta":{"reasoning_content":"","reasoning":"r2"}}]}"#);
        assert_eq!((info, reply.as_str()), (OUT, "r2"));
        let (info, _) =
            parse(r#"{"choices":[{"delta":{"reasoning_content":null,"reasoning":""}}]}"#);
        assert!(!info.output);
    }

    #[test]
    fn tool_calls_are_output_but_not_text() {
        let (info, reply) = parse(
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}"#,
        );
        assert_eq!((info, reply.as_str()), (OUT, ""));
        let (info, _) = parse(r#"{"choices":[{"delta":{"content":"","tool_calls":[]}}]}"#);
        assert!(!info.output);
        let (info, _) = parse(r#"{"choices":[{"delta":{"tool_calls":null}}]}"#);
        assert!(!info.output);
    }

    #[test]
    fn completions_text() {
        let (info, reply) = parse(
            r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":" foo","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_logprobs":null}]}"#,
        );
        assert_eq!((info, reply.as_str()), (OUT, " foo"));
        let (info, reply) = parse(r#"{"choices":[{"index":0,"text":"","finish_reason":"stop"}]}"#);
        assert!(!info.output && info.finish == Some(Finish::Normal));
        assert_eq!(reply, "");
    }

    #[test]
    fn only_first_choice_counts() {
        let (info, reply) = parse(
            r#"{"choices":[{"index":0,"delta":{"content":""},"logprobs":{"content":[{"token":"a","logprob":-0.1,"top_logprobs":[]}]}},{"index":1,"delta":{"content":"x"},"finish_reason":"stop"}]}"#,
        );
        assert_eq!((info, reply.as_str()), (ChunkInfo::default(), ""));
    }

    #[test]
    fn errors_in_band() {
        let (info, _) = parse(
            r#"{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError","param":null,"code":404}"#,
        );
        assert!(info.error);
        let (info, _) = parse(r#"{"error":{"message":"overloaded","type":"server_error"}}"#);
        assert!(info.error);
        let (info, _) = parse(r#"{"error":"boom"}"#);
        assert!(info.error);
        let (info, _) = parse(r#"{"error":null,"choices":[{"delta":{"content":"a"}}]}"#);
        assert!(!info.error && info.output);
        let (info, _) = parse(r#"{"object":"chat.completion.chunk","choices":[]}"#);
        assert!(!info.error);
    }

    #[test]
    fn finish_reasons_are_told_apart() {
        let finish = |reason: &str| {
            parse(&format!(
                r#"{{"choices":[{{"index":0,"delta":{{}},"finish_reason":"{reason}"}}]}}"#
            ))
            .0
            .finish
        };
        for normal in [
            "stop",
            "length",
            "tool_calls",
            "function_call",
            "content_filter",
            "eos_token",
        ] {
            assert_eq!(finish(normal), Some(Finish::Normal), "{normal}");
        }
        assert_eq!(finish("abort"), Some(Finish::Abort));
        let (info, _) =
            parse(r#"{"choices":[{"delta":{},"finish_reason":{"type":"abort","message":"x"}}]}"#);
        assert_eq!(info.finish, Some(Finish::Abort));
        assert_eq!(finish("error"), Some(Finish::Error));
        // vLLM's abort chunk, as it sends it when it aborts a request.
        let (info, _) = parse(
            r#"{"id":"chatcmpl-9","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"abort","stop_reason":null}]}"#,
        );
        assert_eq!(info.finish, Some(Finish::Abort));
        assert!(!info.output && !info.error);
        // Non-stream bodies too.
        let (info, _) = parse_resp(
            r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"ab"},"finish_reason":"abort"}]}"#,
        );
        assert_eq!(info.finish, Some(Finish::Abort));
    }

    #[test]
    fn error_messages_are_kept() {
        let mut p = ChunkParser::new();
        let mut reply = String::new();
        let mut msg = |s: &str| {
            let mut buf = s.as_bytes().to_vec();
            let info = p.parse_chunk(&mut buf, &mut reply).unwrap();
            (info.error, p.error_message().to_string())
        };
        // vLLM's error object (HTTP body or in-band), escapes decoded.
        assert_eq!(
            msg(
                r#"{"object":"error","message":"This model's maximum context length is 4096 tokens. \"x\"","type":"BadRequestError","param":null,"code":400}"#
            ),
            (
                true,
                "This model's maximum context length is 4096 tokens. \"x\"".to_string()
            )
        );
        assert_eq!(
            msg(r#"{"error":{"message":"overloaded","type":"server_error"}}"#),
            (true, "overloaded".to_string())
        );
        assert_eq!(msg(r#"{"error":"boom"}"#), (true, "boom".to_string()));
        assert_eq!(msg(r#"{"error":{"code":500}}"#), (true, String::new()));
        // Not an error: nothing kept, even with a `message` key.
        assert_eq!(
            msg(r#"{"message":"hi","choices":[]}"#),
            (false, String::new())
        );
        // Long messages are cut at a character boundary.
        let long = "é".repeat(2000);
        let (error, text) = msg(&format!(r#"{{"error":"{long}"}}"#));
        assert!(error && text.len() <= MAX_ERROR_MESSAGE && text.len() >= MAX_ERROR_MESSAGE - 1);
    }

    #[test]
    fn escapes_and_unicode_are_decoded() {
        let (_, reply) = parse(
            r#"{"choices":[{"delta":{"content":"line\nnext \"q\" \\ \u00e9 \ud83d\ude00 中文"}}]}"#,
        );
        assert_eq!(reply, "line\nnext \"q\" \\ é 😀 中文");
    }

    #[test]
    fn unknown_shapes_are_ignored() {
        for s in [
            "{}",
            "[]",
            "1",
            "\"s\"",
            "null",
            r#"{"choices":null}"#,
            r#"{"choices":{}}"#,
            r#"{"choices":[1]}"#,
            r#"{"choices":[{"delta":"x"}]}"#,
            r#"{"choices":[{"delta":{"content":5}}]}"#,
            r#"{"usage":"x"}"#,
            r#"{"object":1}"#,
            " {\"x\": [ {\"y\": {}} ] } ",
        ] {
            let (info, reply) = parse(s);
            assert_eq!((info, reply.as_str()), (ChunkInfo::default(), ""), "{s}");
        }
    }

    #[test]
    fn malformed_json_is_an_error() {
        let mut p = ChunkParser::new();
        let mut reply = String::new();
        for s in [
            &b""[..],
            b"[DONE]",
            b"{",
            b"{\"a\":}",
            b"{\"a\":1} x",
            b"{\"a\":\"\xff\"}",
            b"{\"a\":\"\x01\"}",
            b"data: {}",
        ] {
            let mut buf = s.to_vec();
            let r = p.parse_chunk(&mut buf, &mut reply);
            assert!(matches!(r, Err(ChunkError::Json(_))), "{:?}", s);
        }
        // The parser is still fine afterwards.
        let mut buf = br#"{"choices":[{"delta":{"content":"ok"}}]}"#.to_vec();
        assert!(p.parse_chunk(&mut buf, &mut reply).unwrap().output);
        assert_eq!(reply, "ok");
    }

    #[test]
    fn is_done_sentinel() {
        assert!(ChunkParser::is_done(b"[DONE]"));
        assert!(ChunkParser::is_done(b" [DONE]\r\n"));
        assert!(!ChunkParser::is_done(b"[DONE"));
        assert!(!ChunkParser::is_done(b"{}"));
    }

    #[test]
    fn reuse_across_many_chunks_accumulates_reply() {
        let mut p = ChunkParser::new();
        let mut reply = String::new();
        let mut outputs = 0;
        for i in 0..1000 {
            // Growing sizes exercise buffer regrowth, then reuse.
            let pad = "x".repeat(i % 300);
            let s = format!(
                r#"{{"choices":[{{"index":0,"delta":{{"content":"{i} "}},"pad":"{pad}"}}]}}"#
            );
            let mut buf = s.into_bytes();
            outputs += usize::from(p.parse_chunk(&mut buf, &mut reply).unwrap().output);
        }
        assert_eq!(outputs, 1000);
        assert!(reply.starts_with("0 1 2 "));
        assert!(reply.ends_with("998 999 "));
    }

    #[test]
    fn non_stream_response() {
        let s = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there","reasoning_content":"think","tool_calls":[]},"logprobs":null,"finish_reason":"stop","stop_reason":null}],"usage":{"prompt_tokens":10,"total_tokens":13,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":0}},"prompt_logprobs":null}"#;
        let (info, reply) = parse_resp(s);
        assert_eq!(
            info,
            ChunkInfo {
                output: true,
                finish: Some(Finish::Normal),
                usage: Some(Usage {
                    prompt_tokens: 10,
                    completion_tokens: 3,
                    cached_tokens: Some(0)
                }),
                error: false
            }
        );
        assert_eq!(reply, "Hello therethink");
        // Completions-style body.
        let (info, reply) = parse_resp(
            r#"{"object":"text_completion","choices":[{"index":0,"text":"abc","finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":3}}"#,
        );
        assert!(info.output && info.finish == Some(Finish::Normal));
        assert_eq!(reply, "abc");
        // Empty content: not output.
        let (info, reply) = parse_resp(
            r#"{"choices":[{"message":{"role":"assistant","content":""},"finish_reason":"stop"}]}"#,
        );
        assert!(!info.output && info.finish == Some(Finish::Normal));
        assert_eq!(reply, "");
        // `delta` is not read for a response, `message` not for a chunk.
        assert!(
            !parse_resp(r#"{"choices":[{"delta":{"content":"a"}}]}"#)
                .0
                .output
        );
        assert!(
            !parse(r#"{"choices":[{"message":{"content":"a"}}]}"#)
                .0
                .output
        );
        // Error body.
        assert!(
            parse_resp(r#"{"object":"error","message":"bad","code":400}"#)
                .0
                .error
        );
    }

    use crate::sse::tests::Rng;

    #[test]
    fn fuzz_never_panics() {
        let mut p = ChunkParser::new();
        let mut reply = String::new();
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        let seed = br#"{"id":"c","choices":[{"index":0,"delta":{"content":"a\n\u00e9","reasoning":"r","tool_calls":[{"x":1}]},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":0}},"error":null}"#;
        let tokens: &[&[u8]] = &[
            b"{",
            b"}",
            b"[",
            b"]",
            b":",
            b",",
            b"\"",
            b"\\",
            b"\"choices\"",
            b"\"delta\"",
            b"\"content\"",
            b"\"usage\"",
            b"null",
            b"1",
            b"-1.5e3",
            b"\"x\"",
            b" ",
            b"\xff",
            b"\xe4\xb8",
            b"\\u00",
            b"\\ud83d",
        ];
        for round in 0..20_000 {
            let mut buf: Vec<u8> = match round % 3 {
                // Random bytes.
                0 => (0..rng.below(400)).map(|_| rng.next() as u8).collect(),
                // Random JSON-ish tokens.
                1 => (0..rng.below(60))
                    .flat_map(|_| tokens[rng.below(tokens.len())].iter().copied())
                    .collect(),
                // Mutations of a valid chunk.
                _ => {
                    let mut b = seed.to_vec();
                    for _ in 0..1 + rng.below(4) {
                        if b.is_empty() {
                            break;
                        }
                        let i = rng.below(b.len());
                        match rng.below(3) {
                            0 => b[i] = rng.next() as u8,
                            1 => {
                                b.remove(i);
                            }
                            _ => b.truncate(i),
                        }
                    }
                    b
                }
            };
            let _ = p.parse_chunk(&mut buf, &mut reply);
            let _ = p.parse_response(&mut buf, &mut reply);
            reply.clear();
        }
    }
}
