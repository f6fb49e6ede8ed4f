//! Incremental Server-Sent Events framing over arbitrary body frames. (Owned by the SSE work.)
//!
//! Bytes arrive split and coalesced at any boundary; events end at a blank line (`\n\n`,
//! `\r\n\r\n`, or mixed). Only `data:` lines matter; comments (`:`), `event:`, `id:` and `retry:`
//! lines are dropped. One buffer per connection, reused for the whole run.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("SSE event larger than {limit} bytes")]
    EventTooLarge { limit: usize },
}

/// Per-connection SSE framer.
pub struct SseFramer {
    _private: (),
}

impl Default for SseFramer {
    fn default() -> Self {
        Self::new()
    }
}

impl SseFramer {
    pub fn new() -> Self {
        unimplemented!()
    }

    /// Forgets any partial event (call between responses).
    pub fn reset(&mut self) {
        unimplemented!()
    }

    /// Feeds `bytes`; calls `on_data` with the data payload of every event completed by them
    /// (several `data:` lines of one event joined with `\n`). Events without data are skipped.
    /// The payload is mutable so it can be parsed in place (simd-json).
    pub fn feed<E>(
        &mut self,
        _bytes: &[u8],
        _on_data: impl FnMut(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<SseError>,
    {
        unimplemented!()
    }

    /// At end of stream: emits a final event left without its blank line, if any.
    pub fn finish<E>(&mut self, _on_data: impl FnMut(&mut [u8]) -> Result<(), E>) -> Result<(), E>
    where
        E: From<SseError>,
    {
        unimplemented!()
    }
}
