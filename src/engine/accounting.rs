//! Token and cache accounting for the turns of one conversation.
//!
//! The rules, in one place (definitions in `docs/metrics.md`): token counts come from the
//! server's `usage` when it sent one, else from the client's estimate (the prompt's bare tokens,
//! one output token per output-bearing event); cached tokens come from
//! `usage.prompt_tokens_details.cached_tokens` when present, else evalscope's estimate — the
//! previous successful turn's prompt plus completion tokens.

use crate::chunk::Usage;
use crate::metrics::CacheSource;

/// What one successful turn counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TurnTokens {
    pub prompt: u64,
    pub completion: u64,
    /// Whether `prompt` and `completion` came from `usage`.
    pub from_usage: bool,
    pub cached: u64,
    pub cache_source: CacheSource,
}

/// The running state of one conversation's accounting.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Accounting {
    prev_prompt: u64,
    prev_completion: u64,
}

impl Accounting {
    /// Counts a successful turn and remembers it for the next turn's cache estimate.
    pub(crate) fn on_success(
        &mut self,
        usage: Option<Usage>,
        estimated_prompt: u64,
        output_events: u32,
    ) -> TurnTokens {
        let (prompt, completion, from_usage) = match usage {
            Some(u) => (u.prompt_tokens, u.completion_tokens, true),
            None => (estimated_prompt, output_events as u64, false),
        };
        let (cached, cache_source) = match usage.and_then(|u| u.cached_tokens) {
            Some(c) => (c, CacheSource::Server),
            None => (
                self.prev_prompt + self.prev_completion,
                CacheSource::Estimated,
            ),
        };
        self.prev_prompt = prompt;
        self.prev_completion = completion;
        TurnTokens {
            prompt,
            completion,
            from_usage,
            cached,
            cache_source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_figures_win_and_estimates_chain() {
        let mut a = Accounting::default();
        let first = a.on_success(None, 40, 7);
        assert_eq!(
            first,
            TurnTokens {
                prompt: 40,
                completion: 7,
                from_usage: false,
                cached: 0,
                cache_source: CacheSource::Estimated
            }
        );
        let usage = Usage {
            prompt_tokens: 90,
            completion_tokens: 5,
            cached_tokens: None,
        };
        let second = a.on_success(Some(usage), 0, 3);
        assert_eq!((second.prompt, second.completion), (90, 5));
        assert_eq!(second.cached, 47, "previous prompt + completion");
        let third = a.on_success(
            Some(Usage {
                cached_tokens: Some(80),
                ..usage
            }),
            0,
            3,
        );
        assert_eq!(
            (third.cached, third.cache_source),
            (80, CacheSource::Server)
        );
    }
}
