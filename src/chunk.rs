//! Parsing one OpenAI streaming chunk (or a whole non-stream response) with simd-json.
//! (Owned by the SSE work.)

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
    /// `choices[0].finish_reason` was a non-null string.
    pub finished: bool,
    pub usage: Option<Usage>,
    /// The chunk was an in-band error (`error` key or `object == "error"`).
    pub error: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("malformed JSON in SSE data: {0}")]
    Json(String),
}

/// Reusable parser; holds simd-json's scratch buffers so parsing allocates nothing per chunk.
pub struct ChunkParser {
    _private: (),
}

impl Default for ChunkParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkParser {
    pub fn new() -> Self {
        unimplemented!()
    }

    /// `true` for the `[DONE]` sentinel (surrounding whitespace allowed).
    pub fn is_done(payload: &[u8]) -> bool {
        payload.trim_ascii() == b"[DONE]"
    }

    /// Parses one chunk in place, appending its output text (content, then reasoning) to `reply`.
    pub fn parse_chunk(
        &mut self,
        _payload: &mut [u8],
        _reply: &mut String,
    ) -> Result<ChunkInfo, ChunkError> {
        unimplemented!()
    }

    /// Parses a non-stream response body (`choices[0].message` or `.text`, plus `usage`).
    pub fn parse_response(
        &mut self,
        _body: &mut [u8],
        _reply: &mut String,
    ) -> Result<ChunkInfo, ChunkError> {
        unimplemented!()
    }
}
