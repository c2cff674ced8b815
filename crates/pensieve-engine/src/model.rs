//! The two seams between the engine and a backend.
//!
//! [`Tokenizer`] is shared with the HTTP side (count_tokens, validation) and must be
//! thread-safe. [`ModelRunner`] is step-level: it evaluates tokens and samples, and is
//! owned by the one engine thread (llama.cpp contexts are not `Sync`).

use crate::SamplingParams;

/// A token id of the model's vocabulary.
pub type TokenId = i32;

/// What the engine needs to know about the loaded model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The name it is listed under in `/v1/models` (the file stem unless configured).
    pub id: String,
    /// `general.architecture`, e.g. "llama", "qwen2", "gemma3".
    pub architecture: String,
    /// The context length the model was trained with.
    pub train_context: u32,
    /// Positions available to one sequence in this server.
    pub context_size: u32,
    /// The model's own Jinja chat template, when it has one.
    pub chat_template: Option<String>,
    /// Text of the BOS and EOS tokens, as chat templates expect them.
    pub bos_token: String,
    pub eos_token: String,
}

/// Text <-> token ids for the loaded model.
pub trait Tokenizer: Send + Sync {
    /// Tokenize a rendered prompt. Special tokens written in the text (`<|im_start|>`)
    /// become their ids; a BOS is added when the model wants one and the text has none.
    fn encode(&self, text: &str) -> Vec<TokenId>;
    /// The bytes a generated token stands for (control tokens render as nothing).
    fn token_bytes(&self, token: TokenId) -> Vec<u8>;
    /// Whether generating this token ends the turn.
    fn is_end_of_generation(&self, token: TokenId) -> bool;
}

/// A failure inside the backend while evaluating tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunnerError {
    /// The KV cache has no room left for the batch.
    #[error("the KV cache is full")]
    CacheFull,
    #[error("{0}")]
    Failed(String),
}

/// Step-level access to one sequence of a loaded model.
pub trait ModelRunner: Send {
    /// The most tokens one [`ModelRunner::evaluate`] call accepts.
    fn batch_size(&self) -> usize;
    /// Drop cached positions from `position` on. Returns false when the backend cannot
    /// cut its cache there (sliding-window layers), in which case everything is dropped.
    fn truncate(&mut self, position: u32) -> bool;
    /// Evaluate `tokens` at positions `start..`; keeps the logits of the last one.
    fn evaluate(&mut self, tokens: &[TokenId], start: u32) -> Result<(), RunnerError>;
    /// Prepare a sampler for a new generation.
    fn start_sampling(&mut self, params: &SamplingParams);
    /// Sample the next token from the last evaluated logits.
    fn sample(&mut self) -> TokenId;
}
