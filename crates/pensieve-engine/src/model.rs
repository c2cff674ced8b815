//! The two seams between the engine and a backend.
//!
//! [`Tokenizer`] is shared with the HTTP side (count_tokens, validation) and must be
//! thread-safe. [`ModelRunner`] is step-level: it evaluates tokens and samples, and is
//! owned by the one engine thread (llama.cpp contexts are not `Sync`). Every backend's
//! loader returns the two, with the model's description, as one [`LoadedModel`].

use std::fmt;
use std::sync::Arc;

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
    /// The context length the model was trained with (0: the model does not say).
    pub train_context: u32,
    /// Positions available to one sequence in this server.
    pub context_size: u32,
    /// The model's own Jinja chat template, when it has one.
    pub chat_template: Option<String>,
    /// Text of the BOS and EOS tokens, as chat templates expect them.
    pub bos_token: String,
    pub eos_token: String,
}

/// What a backend's loader returns: everything the engine starts with.
pub struct LoadedModel {
    pub info: ModelInfo,
    pub tokenizer: Arc<dyn Tokenizer>,
    pub runner: Box<dyn ModelRunner>,
    /// The vision projector, when the model has one loaded (`--mmproj`).
    pub vision: Option<Arc<dyn crate::Vision>>,
    /// Sequences the runner was sized for.
    pub parallel: usize,
    /// Where it runs, for the start-up log and `/health`.
    pub runs_on: RunsOn,
}

/// Where a loaded model runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunsOn {
    /// llama.cpp on the CPU.
    Cpu { threads: usize },
    /// llama.cpp with `layers` of `total_layers` (the output layer counted, as llama.cpp
    /// does) on a GPU.
    Gpu {
        /// As the driver names it, e.g. "NVIDIA H200".
        device: String,
        /// ggml's backend, e.g. "CUDA".
        backend: String,
        layers: u32,
        total_layers: u32,
        /// GPU memory the weights, the KV cache and the compute buffers took.
        used_bytes: u64,
        /// GPU memory free once they were in.
        free_bytes: u64,
        /// The CPU threads of the layers left there.
        threads: usize,
    },
    /// The mlx engine's Python worker.
    Mlx { version: String },
}

impl fmt::Display for RunsOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gib = |bytes: u64| bytes as f64 / f64::from(1u32 << 30);
        match self {
            RunsOn::Cpu { threads } => write!(f, "CPU, {threads} threads"),
            RunsOn::Gpu {
                device,
                backend,
                layers,
                total_layers,
                used_bytes,
                free_bytes,
                threads,
            } => {
                write!(
                    f,
                    "{device} ({backend}), {layers}/{total_layers} layers, {:.1} GiB used, \
                     {:.1} GiB free",
                    gib(*used_bytes),
                    gib(*free_bytes)
                )?;
                if layers < total_layers {
                    write!(f, ", the rest on the CPU with {threads} threads")?;
                }
                Ok(())
            }
            RunsOn::Mlx { version } if version.is_empty() => f.write_str("MLX worker"),
            RunsOn::Mlx { version } => write!(f, "MLX {version} worker"),
        }
    }
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

/// One sequence to sample for: from the logits of entry `index` of the last batch, among
/// the tokens `mask` allows (all without one).
#[derive(Debug, Clone, Copy)]
pub struct Pick<'a> {
    pub seq: SeqId,
    pub index: usize,
    pub mask: Option<TokenMask<'a>>,
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
    /// The backend refused this sequence's input (an image it cannot decode): the
    /// request's own fault, and only its request fails.
    #[error("{0}")]
    Refused(String),
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
    /// Whether a token's result is the same whatever else shares its batch. True on the
    /// CPU; GPU kernels pick other tilings and reduction orders by batch size, so there a
    /// prefix continued from the cache at a position where the first computation did not
    /// stop gives slightly other numbers than computing it cold, enough to flip a greedy
    /// near-tie. The cache then reuses only where a computation stopped.
    fn batch_invariant(&self) -> bool {
        true
    }
    /// Prompt tokens a step may take while other sequences are decoding. On the CPU a
    /// quarter of the batch, so the decoders' next token is not held up long; a GPU
    /// computes a full batch in about the time of a few tokens.
    fn prefill_while_decoding(&self) -> usize {
        (self.batch_size() / 4).max(1)
    }
    /// Whether a step may evaluate drafted tokens after a sequence's pending one, with
    /// logits at each, sample them in order with [`ModelRunner::sample`], and then cut
    /// the rejected ones off with [`ModelRunner::truncate`] (see [`crate::speculate`]).
    fn can_speculate(&self) -> bool {
        false
    }
    /// What the last [`ModelRunner::decode`] cost, where the backend models its costs
    /// rather than spends them (the scripted test backend); None: the scheduler times the
    /// step by the wall clock, as for every real backend.
    fn modelled_step_seconds(&self) -> Option<f64> {
        None
    }
    /// Evaluate one batch. Its tokens come a sequence at a time, sequences in slot order
    /// (llama.cpp's per-slot KV streams compute consecutive slots in one pass).
    fn decode(&mut self, batch: &[BatchToken]) -> Result<(), RunnerError>;
    /// Evaluate an image's stretch of `seq` (see [`crate::Media`]) at positions
    /// `media.at..media.end()`, all of them at once, keeping no logits. The engine calls
    /// it before the step's [`ModelRunner::decode`], whose logits are the ones sampled.
    fn decode_media(&mut self, seq: SeqId, media: &crate::Media) -> Result<(), RunnerError> {
        let _ = (seq, media);
        Err(RunnerError::Failed(
            "this model has no vision projector".into(),
        ))
    }
    /// Prepare the sampler of `seq` for a new generation.
    fn start_sampling(&mut self, seq: SeqId, params: &SamplingParams);
    /// Sample the next token of `seq` from the logits of entry `index` of the last batch,
    /// among the tokens `mask` allows (all without one).
    fn sample(&mut self, seq: SeqId, index: usize, mask: Option<TokenMask<'_>>) -> TokenId;
    /// The next token of each of `picks`, in their order. Sequences sample independently,
    /// so a backend may spread them over cores: at 64 streams on a GPU, a serial argmax
    /// over a 150k vocabulary each takes a sizeable part of the step.
    fn sample_all(&mut self, picks: &[Pick<'_>]) -> Vec<TokenId> {
        picks
            .iter()
            .map(|p| self.sample(p.seq, p.index, p.mask))
            .collect()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_a_model_runs_reads_as_one_line() {
        assert_eq!(RunsOn::Cpu { threads: 2 }.to_string(), "CPU, 2 threads");
        let gpu = |layers| RunsOn::Gpu {
            device: "NVIDIA H200".into(),
            backend: "CUDA".into(),
            layers,
            total_layers: 29,
            used_bytes: 6 << 30,
            free_bytes: 3 << 29,
            threads: 16,
        };
        assert_eq!(
            gpu(29).to_string(),
            "NVIDIA H200 (CUDA), 29/29 layers, 6.0 GiB used, 1.5 GiB free"
        );
        assert!(gpu(10).to_string().ends_with(
            "10/29 layers, 6.0 GiB used, 1.5 GiB free, the rest on the CPU with 16 threads"
        ));
        let mlx = RunsOn::Mlx {
            version: "0.29.1".into(),
        };
        assert_eq!(mlx.to_string(), "MLX 0.29.1 worker");
    }
}
