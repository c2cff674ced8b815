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
    /// The one token that is exactly `text` (a marker such as `<tool_call>`, which is
    /// often a control token), if there is one.
    fn single_token(&self, text: &str) -> Option<TokenId>;
    /// How many token ids there are.
    fn vocab_size(&self) -> usize;
}

/// Which tokens may come next: bit `t % 32` of word `t / 32` allows token `t`.
#[derive(Debug, Clone, Copy)]
pub struct TokenMask<'a>(pub &'a [u32]);

impl TokenMask<'_> {
    pub fn allows(&self, token: TokenId) -> bool {
        let Ok(t) = usize::try_from(token) else {
            return false;
        };
        self.0.get(t / 32).is_some_and(|w| (w >> (t % 32)) & 1 == 1)
    }
}

/// A failure inside the backend while evaluating tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunnerError {
    /// The KV cache has no room left for the batch.
    #[error("the KV cache is full")]
    CacheFull,
    #[error("{0}")]
    Failed(String),
    /// The backend lost every sequence (its worker process died and was restarted).
    #[error("the model backend restarted: {0}")]
    Restarted(String),
}

/// A sequence slot of the backend's KV cache: `0..max_sequences()`.
pub type SeqId = u32;

/// One token of a batch: evaluate `token` at `pos` of sequence `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchToken {
    pub seq: SeqId,
    pub token: TokenId,
    pub pos: u32,
    /// Keep this token's logits, to sample from them after the decode.
    pub logits: bool,
}

/// Step-level access to a loaded model with a KV cache for many sequences.
///
/// Sequences are slots. Their cells are either one pool shared by all of them, where a
/// cell can belong to several sequences at once and [`ModelRunner::share`] costs nothing,
/// or cells of each sequence's own ([`ModelRunner::shares_cells`] is false), where every
/// token attends only to its own sequence's cells and `share` copies.
pub trait ModelRunner: Send {
    /// The most tokens one [`ModelRunner::decode`] call accepts.
    fn batch_size(&self) -> usize;
    /// How many sequence slots exist.
    fn max_sequences(&self) -> usize;
    /// KV cells of all sequences together.
    fn cache_cells(&self) -> usize;
    /// Whether all sequences draw on one pool of cells (see the trait's docs).
    fn shares_cells(&self) -> bool;
    /// Whether a sequence can be cut back to any position. False for sliding-window or
    /// recurrent layers: their state before the end is gone.
    fn can_truncate(&self) -> bool;
    /// Evaluate one batch. Its tokens come a sequence at a time, sequences in slot order
    /// (llama.cpp's per-slot KV streams compute consecutive slots in one pass).
    fn decode(&mut self, batch: &[BatchToken]) -> Result<(), RunnerError>;
    /// Prepare the sampler of `seq` for a new generation.
    fn start_sampling(&mut self, seq: SeqId, params: &SamplingParams);
    /// Sample the next token of `seq` from the logits of entry `index` of the last batch,
    /// among the tokens `mask` allows (all without one).
    fn sample(&mut self, seq: SeqId, index: usize, mask: Option<TokenMask<'_>>) -> TokenId;
    /// The log-probability of `token` at entry `index` of the last batch, and the `top`
    /// most likely tokens there with theirs (most likely first). None when the backend
    /// can't tell.
    fn logprobs(
        &self,
        index: usize,
        token: TokenId,
        top: usize,
    ) -> Option<(f32, Vec<(TokenId, f32)>)> {
        let _ = (index, token, top);
        None
    }
    /// Drop positions `from..` of `seq`. False when the cache cannot be cut there.
    fn truncate(&mut self, seq: SeqId, from: u32) -> bool;
    /// Forget `seq` entirely; its cells are freed unless another sequence shares them.
    fn release(&mut self, seq: SeqId);
    /// Give `dst` (empty) positions `0..len` of `src`: by reference when cells are
    /// shared, else by copying them. False when the copy failed (`dst` is left empty).
    fn share(&mut self, src: SeqId, dst: SeqId, len: u32) -> bool;
    /// A snapshot of everything `seq` holds, for [`ModelRunner::restore`].
    fn save(&mut self, seq: SeqId) -> Result<Vec<u8>, RunnerError>;
    /// Load a snapshot into the empty `seq`.
    fn restore(&mut self, seq: SeqId, state: &[u8]) -> Result<(), RunnerError>;
    /// Bytes of KV one cached token takes (for reporting the cache's size).
    fn kv_bytes_per_token(&self) -> u64;
    /// Identifies the model and cache layout a snapshot belongs to (snapshots on disk
    /// are only loaded into the same).
    fn fingerprint(&self) -> String;
}
