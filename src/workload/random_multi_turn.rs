//! `random_multi_turn`: evalscope's synthetic multi-turn source. (Owned by the tokenizer work.)

use crate::tokenizer::Tokenizer;
use crate::workload::Conversation;

/// Parameters, already validated by the plan.
#[derive(Clone, Debug)]
pub struct RandomMultiTurn {
    pub conversations: usize,
    pub min_turns: u32,
    pub max_turns: u32,
    pub min_prompt_tokens: u32,
    pub max_prompt_tokens: u32,
    pub seed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SynthesisError {
    #[error("could not synthesise a prompt of exactly {target} tokens (got {got})")]
    NotExact { target: u32, got: u32 },
}

impl RandomMultiTurn {
    pub fn build(&self, _tok: &Tokenizer) -> Result<Vec<Conversation>, SynthesisError> {
        unimplemented!()
    }
}
