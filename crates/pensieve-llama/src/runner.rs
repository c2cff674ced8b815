//! One llama.cpp context as the engine's step-level [`ModelRunner`].

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::DecodeError;
use pensieve_engine::{ModelRunner, RunnerError, SamplingParams, TokenId};

/// Owns a context and its batch buffer; lives on the engine thread.
pub struct LlamaRunner {
    context: LlamaContext<'static>,
    batch: LlamaBatch<'static>,
    batch_size: usize,
    sampler: LlamaSampler,
    /// Batch index of the token whose logits the next sample reads.
    last_logits: i32,
}

impl LlamaRunner {
    pub(crate) fn new(context: LlamaContext<'static>, batch_size: usize) -> Self {
        LlamaRunner {
            context,
            batch: LlamaBatch::new(batch_size, 1),
            batch_size,
            sampler: LlamaSampler::greedy(),
            last_logits: 0,
        }
    }
}

/// The sampler chain for one request, in llama.cpp's usual order.
fn build_sampler(params: &SamplingParams) -> LlamaSampler {
    if params.is_greedy() {
        return LlamaSampler::greedy();
    }
    let mut chain = Vec::new();
    if let Some(k) = params.top_k.filter(|k| *k > 0) {
        chain.push(LlamaSampler::top_k(i32::try_from(k).unwrap_or(i32::MAX)));
    }
    if let Some(p) = params.top_p.filter(|p| *p < 1.0) {
        chain.push(LlamaSampler::top_p(p, 1));
    }
    if let Some(p) = params.min_p.filter(|p| *p > 0.0) {
        chain.push(LlamaSampler::min_p(p, 1));
    }
    chain.push(LlamaSampler::temp(params.temperature));
    let seed = params.seed.map_or_else(rand::random::<u32>, |s| s as u32);
    chain.push(LlamaSampler::dist(seed));
    LlamaSampler::chain_simple(chain)
}

impl ModelRunner for LlamaRunner {
    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn truncate(&mut self, position: u32) -> bool {
        let cut = self
            .context
            .clear_kv_cache_seq(Some(0), Some(position), None)
            .unwrap_or(false);
        if !cut {
            self.context.clear_kv_cache();
        }
        cut
    }

    fn evaluate(&mut self, tokens: &[TokenId], start: u32) -> Result<(), RunnerError> {
        if tokens.is_empty() {
            return Ok(());
        }
        if tokens.len() > self.batch_size {
            return Err(RunnerError::Failed(format!(
                "{} tokens exceed the batch size of {}",
                tokens.len(),
                self.batch_size
            )));
        }
        self.batch.clear();
        let last = tokens.len() - 1;
        for (i, &token) in tokens.iter().enumerate() {
            let pos = i32::try_from(start as usize + i)
                .map_err(|_| RunnerError::Failed("position out of range".into()))?;
            self.batch
                .add(LlamaToken(token), pos, &[0], i == last)
                .map_err(|e| RunnerError::Failed(e.to_string()))?;
        }
        self.context.decode(&mut self.batch).map_err(|e| match e {
            DecodeError::NoKvCacheSlot => RunnerError::CacheFull,
            other => RunnerError::Failed(other.to_string()),
        })?;
        self.last_logits = last as i32;
        Ok(())
    }

    fn start_sampling(&mut self, params: &SamplingParams) {
        self.sampler = build_sampler(params);
    }

    fn sample(&mut self) -> TokenId {
        self.sampler.sample(&self.context, self.last_logits).0
    }
}
