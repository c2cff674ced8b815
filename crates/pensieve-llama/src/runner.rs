//! One llama.cpp context as the engine's step-level [`ModelRunner`]: a KV stream per
//! sequence slot, one batch per step, one sampler per slot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use llama_cpp_2::context::session::LlamaStateSeqFlags;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::mtmd::MtmdContext;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::DecodeError;
use pensieve_engine::{
    BatchToken, Media, ModelRunner, Pick, RunnerError, SamplingParams, SeqId, TokenId, TokenMask,
};
use rayon::prelude::*;

/// What the runner knows about its context that llama.cpp does not tell afterwards.
pub(crate) struct RunnerLayout {
    pub batch_size: usize,
    pub sequences: usize,
    pub cells: usize,
    /// False with sliding-window or recurrent layers.
    pub can_truncate: bool,
    /// Some layers run on a GPU: results depend on the batch's shape, and a prefill
    /// chunk costs about what one token does.
    pub on_gpu: bool,
    /// The KV cache lives in the GPU's memory.
    pub kv_on_gpu: bool,
    /// Slots `0..backend_greedy` have a greedy chain in llama.cpp's graph: their outputs'
    /// argmaxes are made where the logits are.
    pub backend_greedy: usize,
    pub kv_bytes_per_token: u64,
    pub fingerprint: String,
    pub n_vocab: i32,
}

/// Owns a context and its batch buffer; lives on the engine thread.
pub struct LlamaRunner {
    context: LlamaContext<'static>,
    batch: LlamaBatch<'static>,
    layout: RunnerLayout,
    samplers: HashMap<SeqId, Sampler>,
    /// Whole-stream copies (source, destination) that llama.cpp makes at the start of
    /// the next decode. Until then the destination's cells are listed but not filled:
    /// neither may be saved over or read out.
    pending_copies: Vec<(SeqId, SeqId)>,
    /// The vision projector's context, when one is loaded (see [`crate::vision`]).
    vision: Option<Arc<Mutex<MtmdContext>>>,
}

/// How one sequence picks its next token.
enum Sampler {
    /// The most likely token, read straight from the logits (llama.cpp's greedy sampler
    /// first copies the whole vocabulary into a candidate array, every token).
    Greedy,
    Chain(Chain),
}

/// A llama.cpp sampler chain with the candidate array it fills each step, kept between
/// steps (for a 150k vocabulary it is 1.8 MB).
struct Chain {
    sampler: LlamaSampler,
    candidates: Vec<LlamaTokenData>,
}

impl Chain {
    fn new(sampler: LlamaSampler) -> Self {
        Chain {
            sampler,
            candidates: Vec::new(),
        }
    }

    /// One step of the chain over `logits`, tokens the mask forbids at -inf, as llama.cpp's
    /// `llama_sampler_sample` does it: apply, pick, accept (the penalties count what was
    /// generated).
    fn sample(&mut self, logits: &[f32], mask: Option<TokenMask<'_>>) -> TokenId {
        let mut data = std::mem::take(&mut self.candidates);
        data.clear();
        data.extend(logits.iter().enumerate().map(|(i, &logit)| {
            let id = TokenId::try_from(i).unwrap_or(TokenId::MAX);
            let allowed = mask.is_none_or(|m| m.allows(id));
            LlamaTokenData::new(
                LlamaToken(id),
                if allowed { logit } else { f32::NEG_INFINITY },
                0.0,
            )
        }));
        let mut candidates = LlamaTokenDataArray::new(data, false);
        candidates.apply_sampler(&mut self.sampler);
        let token = candidates
            .selected_token()
            .map_or_else(|| argmax_allowed(logits, mask), |t| t.0);
        self.sampler.accept(LlamaToken(token));
        self.candidates = candidates.data;
        token
    }
}

impl LlamaRunner {
    pub(crate) fn new(context: LlamaContext<'static>, layout: RunnerLayout) -> Self {
        LlamaRunner {
            context,
            batch: LlamaBatch::new(layout.batch_size, 1),
            layout,
            samplers: HashMap::new(),
            pending_copies: Vec::new(),
            vision: None,
        }
    }

    /// Computes images with this projector's context.
    pub(crate) fn with_vision(mut self, mtmd: Arc<Mutex<MtmdContext>>) -> Self {
        self.vision = Some(mtmd);
        self
    }

    /// Copying a whole KV stream (every cell of it, on the device) beats a snapshot of
    /// `len` tokens through host memory: always on a GPU, on the CPU only for streams
    /// barely longer than the prefix.
    fn copies_whole_streams(&self, len: u32) -> bool {
        let stream = self.layout.cells / self.layout.sequences.max(1);
        self.layout.kv_on_gpu || stream <= 2 * len as usize
    }

    /// The greedy token llama.cpp's graph picked for entry `index` of the last batch.
    fn picked(&self, seq: SeqId, index: i32) -> Option<TokenId> {
        if usize::try_from(seq).unwrap_or(usize::MAX) >= self.layout.backend_greedy {
            return None;
        }
        self.context.sampled_token_ith(index).map(|t| t.0)
    }

    fn copy_pending(&self, seq: SeqId) -> bool {
        self.pending_copies
            .iter()
            .any(|&(src, dst)| src == seq || dst == seq)
    }
}

/// How many generated tokens the penalties look back on.
const PENALTY_WINDOW: i32 = 4096;

/// The sampler chain for one request, in llama.cpp's usual order.
fn build_sampler(params: &SamplingParams, n_vocab: i32) -> Sampler {
    if params.is_greedy() && !params.adjusts_logits() {
        return Sampler::Greedy;
    }
    let mut chain = Vec::new();
    if !params.logit_bias.is_empty() {
        let biases: Vec<LlamaLogitBias> = params
            .logit_bias
            .iter()
            .map(|&(token, bias)| LlamaLogitBias::new(LlamaToken(token), bias))
            .collect();
        chain.push(LlamaSampler::logit_bias(n_vocab, &biases));
    }
    if params.presence_penalty != 0.0 || params.frequency_penalty != 0.0 {
        chain.push(LlamaSampler::penalties(
            n_vocab,
            PENALTY_WINDOW,
            1.0,
            params.frequency_penalty,
            params.presence_penalty,
        ));
    }
    if params.is_greedy() {
        chain.push(LlamaSampler::greedy());
        return Sampler::Chain(Chain::new(LlamaSampler::chain_simple(chain)));
    }
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
    Sampler::Chain(Chain::new(LlamaSampler::chain_simple(chain)))
}

/// Whether a step's sampling goes to all cores. With the model on a GPU the cores are
/// free: on the H200's host an argmax over a 150k vocabulary took 120 microseconds a
/// sequence on one core, and 64 took 0.8 ms on all, against 14 ms for the step; a sampler
/// chain at temperature 1 takes about ten times an argmax. One greedy sequence alone
/// decoded about 3% slower with its vocabulary spread (waking the threads costs about
/// what the argmax does). On the CPU the cores are llama.cpp's, and a decode takes a
/// thousand times longer than an argmax.
fn spreads_sampling(on_gpu: bool, sequences: usize) -> bool {
    on_gpu && sequences > 1
}

/// What one sequence samples from this step: its logits, its grammar's mask, its
/// sampler chain (none: greedy), and the greedy token llama.cpp's graph picked, if any.
struct Job<'a> {
    logits: &'a [f32],
    mask: Option<TokenMask<'a>>,
    chain: Option<&'a mut Chain>,
    picked: Option<TokenId>,
}

impl Job<'_> {
    /// The graph's pick is this sequence's token: greedy, over the whole vocabulary.
    fn is_picked(&self) -> Option<TokenId> {
        self.picked
            .filter(|_| self.chain.is_none() && self.mask.is_none())
    }

    fn sample(&mut self, spread: bool) -> TokenId {
        if let Some(token) = self.is_picked() {
            return token;
        }
        match self.chain.as_deref_mut() {
            Some(chain) => chain.sample(self.logits, self.mask),
            // Alone on the cores, one argmax goes faster in slices of the vocabulary.
            None if spread => argmax_spread(self.logits, self.mask),
            None => argmax_allowed(self.logits, self.mask),
        }
    }
}

/// Each job's next token, in order; with `spread`, the jobs side by side on all cores.
/// Chains are each a sequence's own state, so their order across sequences is free.
fn sample_jobs(jobs: &mut [Job<'_>], spread: bool) -> Vec<TokenId> {
    // Tokens the graph picked cost nothing here: spread only the host's own work.
    let host_work = jobs.iter().filter(|j| j.is_picked().is_none()).count();
    let spread = spread && host_work > 1;
    if spread {
        jobs.par_iter_mut().map(|job| job.sample(true)).collect()
    } else {
        jobs.iter_mut().map(|job| job.sample(false)).collect()
    }
}

/// Index of the largest logit among the allowed tokens (the first of equals, as
/// llama.cpp's greedy sampler).
fn argmax_allowed(logits: &[f32], mask: Option<TokenMask<'_>>) -> TokenId {
    to_token(best_allowed(logits, 0, mask))
}

/// [`argmax_allowed`] over slices of the vocabulary on all cores.
fn argmax_spread(logits: &[f32], mask: Option<TokenMask<'_>>) -> TokenId {
    // Big enough that a slice costs far more than handing it to a thread.
    const SLICE: usize = 16 * 1024;
    to_token(
        logits
            .par_chunks(SLICE)
            .enumerate()
            .filter_map(|(k, slice)| best_allowed(slice, k * SLICE, mask))
            .reduce_with(|a, b| {
                if b.1 > a.1 || (b.1 == a.1 && b.0 < a.0) {
                    b
                } else {
                    a
                }
            }),
    )
}

fn to_token(best: Option<(usize, f32)>) -> TokenId {
    best.and_then(|(i, _)| TokenId::try_from(i).ok())
        .unwrap_or(0)
}

/// The first largest allowed logit of a slice of the vocabulary that starts at token
/// `offset`: its token and value (NaN counts as -inf). None when it allows none.
fn best_allowed(
    logits: &[f32],
    offset: usize,
    mask: Option<TokenMask<'_>>,
) -> Option<(usize, f32)> {
    let real = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    let Some(mask) = mask else {
        let i = argmax(logits);
        return logits.get(i).map(|&v| (offset + i, real(v)));
    };
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        let allowed = mask.allows(TokenId::try_from(offset + i).unwrap_or(-1));
        if allowed && best.is_none_or(|(_, b)| real(l) > b) {
            best = Some((offset + i, real(l)));
        }
    }
    best
}

/// Index of the largest value, the first of equals (0 when there is none). Eight running
/// maxima first, which the compiler turns into vector code: a vocabulary of 150k takes
/// a fraction of the plain loop's time, for every sequence at every step.
fn argmax(values: &[f32]) -> usize {
    const LANES: usize = 8;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    let max = lanes
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    values.iter().position(|&v| v == max).unwrap_or(0)
}

/// The log-probability of `token` under the softmax of `logits`, and the `top` most
/// likely tokens with theirs, most likely first.
fn log_softmax_at(logits: &[f32], token: TokenId, top: usize) -> (f32, Vec<(TokenId, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln() + max;
    let of = |i: usize| logits.get(i).map_or(f32::NEG_INFINITY, |l| l - log_sum);
    let mut best: Vec<usize> = (0..logits.len()).collect();
    let top = top.min(best.len());
    if top > 0 {
        best.select_nth_unstable_by(top - 1, |a, b| logits[*b].total_cmp(&logits[*a]));
        best.truncate(top);
        best.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]));
    } else {
        best.clear();
    }
    let top = best
        .into_iter()
        .filter_map(|i| Some((TokenId::try_from(i).ok()?, of(i))))
        .collect();
    (of(usize::try_from(token).unwrap_or(usize::MAX)), top)
}

fn seq_i32(seq: SeqId) -> i32 {
    // Slots are below llama.cpp's limit of 256 sequences.
    i32::try_from(seq).unwrap_or(i32::MAX)
}

impl ModelRunner for LlamaRunner {
    fn batch_size(&self) -> usize {
        self.layout.batch_size
    }

    fn max_sequences(&self) -> usize {
        self.layout.sequences
    }

    fn cache_cells(&self) -> usize {
        self.layout.cells
    }

    fn shares_cells(&self) -> bool {
        false
    }

    fn can_truncate(&self) -> bool {
        self.layout.can_truncate
    }

    fn can_speculate(&self) -> bool {
        // Tokens the graph picks (backend sampling) come one a sequence; drafts need the
        // host to sample each position.
        self.layout.can_truncate && self.layout.backend_greedy == 0
    }

    fn batch_invariant(&self) -> bool {
        !self.layout.on_gpu
    }

    fn prefill_while_decoding(&self) -> usize {
        if self.layout.on_gpu {
            self.layout.batch_size
        } else {
            (self.layout.batch_size / 4).max(1)
        }
    }

    fn decode(&mut self, tokens: &[BatchToken]) -> Result<(), RunnerError> {
        if tokens.is_empty() {
            return Ok(());
        }
        if tokens.len() > self.layout.batch_size {
            return Err(RunnerError::Failed(format!(
                "{} tokens exceed the batch size of {}",
                tokens.len(),
                self.layout.batch_size
            )));
        }
        self.batch.clear();
        for t in tokens {
            let pos = i32::try_from(t.pos)
                .map_err(|_| RunnerError::Failed("position out of range".into()))?;
            self.batch
                .add(LlamaToken(t.token), pos, &[seq_i32(t.seq)], t.logits)
                .map_err(|e| RunnerError::Failed(e.to_string()))?;
        }
        let result = self.context.decode(&mut self.batch);
        // llama.cpp makes queued stream copies before it looks for room for the batch;
        // after any other failure they may still be queued.
        if matches!(result, Ok(()) | Err(DecodeError::NoKvCacheSlot)) {
            self.pending_copies.clear();
        }
        result.map_err(|e| match e {
            DecodeError::NoKvCacheSlot => RunnerError::CacheFull,
            other => RunnerError::Failed(other.to_string()),
        })
    }

    fn decode_media(&mut self, seq: SeqId, media: &Media) -> Result<(), RunnerError> {
        let Some(mtmd) = &self.vision else {
            return Err(RunnerError::Failed(
                "this model has no vision projector".into(),
            ));
        };
        let n_batch = i32::try_from(self.layout.batch_size).unwrap_or(i32::MAX);
        let result = crate::vision::eval(mtmd, &mut self.context, seq_i32(seq), media, n_batch);
        // Its decodes made the queued stream copies (see `decode`).
        if matches!(result, Ok(()) | Err(RunnerError::CacheFull)) {
            self.pending_copies.clear();
        }
        result
    }

    fn start_sampling(&mut self, seq: SeqId, params: &SamplingParams) {
        self.samplers
            .insert(seq, build_sampler(params, self.layout.n_vocab));
    }

    fn sample(&mut self, seq: SeqId, index: usize, mask: Option<TokenMask<'_>>) -> TokenId {
        let index = i32::try_from(index).unwrap_or(i32::MAX);
        let picked = self.picked(seq, index);
        let chain = match self.samplers.get_mut(&seq) {
            Some(Sampler::Chain(chain)) => Some(chain),
            Some(Sampler::Greedy) | None => None,
        };
        Job {
            logits: self.context.get_logits_ith(index),
            mask,
            chain,
            picked,
        }
        .sample(false)
    }

    fn sample_all(&mut self, picks: &[Pick<'_>]) -> Vec<TokenId> {
        if picks.is_empty() {
            return Vec::new();
        }
        let started = Instant::now();
        // Reading logits waits for the GPU anyway: do it first, so the trace tells the
        // wait from the sampling.
        self.context.synchronize();
        let waited = started.elapsed();
        let picked: Vec<Option<TokenId>> = picks
            .iter()
            .map(|p| self.picked(p.seq, i32::try_from(p.index).unwrap_or(i32::MAX)))
            .collect();
        // A sequence samples once a step, so its chain (if it has one) goes to one job.
        let mut chains: HashMap<SeqId, &mut Chain> = self
            .samplers
            .iter_mut()
            .filter_map(|(&seq, sampler)| match sampler {
                Sampler::Chain(chain) => Some((seq, chain)),
                Sampler::Greedy => None,
            })
            .collect();
        let mut jobs: Vec<Job<'_>> = picks
            .iter()
            .zip(picked)
            .map(|(p, picked)| Job {
                logits: self
                    .context
                    .get_logits_ith(i32::try_from(p.index).unwrap_or(i32::MAX)),
                mask: p.mask,
                chain: chains.remove(&p.seq),
                picked,
            })
            .collect();
        let spread = spreads_sampling(self.layout.on_gpu, jobs.len());
        let tokens = sample_jobs(&mut jobs, spread);
        tracing::trace!(
            sequences = picks.len(),
            wait_us = waited.as_micros() as u64,
            sample_us = (started.elapsed() - waited).as_micros() as u64,
            "sampled"
        );
        tokens
    }

    fn logprobs(
        &self,
        index: usize,
        token: TokenId,
        top: usize,
    ) -> Option<(f32, Vec<(TokenId, f32)>)> {
        let index = i32::try_from(index).ok()?;
        Some(log_softmax_at(
            self.context.get_logits_ith(index),
            token,
            top,
        ))
    }

    fn truncate(&mut self, seq: SeqId, from: u32) -> bool {
        if !self.layout.can_truncate {
            return false;
        }
        self.context
            .clear_kv_cache_seq(Some(seq), Some(from), None)
            .unwrap_or(false)
    }

    fn release(&mut self, seq: SeqId) {
        self.samplers.remove(&seq);
        // A whole-sequence removal always succeeds.
        let _ = self.context.clear_kv_cache_seq(Some(seq), None, None);
    }

    fn share(&mut self, src: SeqId, dst: SeqId, len: u32) -> bool {
        // Each sequence has a KV stream of its own. llama.cpp copies between streams only
        // whole ones, at the start of the next decode (which the sharer is part of); the
        // other way is a snapshot through host memory, which on a GPU took seconds for a
        // 13k-token prefix.
        if self.copies_whole_streams(len) {
            if let Err(e) = self
                .context
                .copy_kv_cache_seq(seq_i32(src), seq_i32(dst), None, None)
            {
                tracing::warn!("cannot copy a cached prefix: {e}");
                return false;
            }
            self.pending_copies.push((src, dst));
            if self.layout.can_truncate {
                let _ = self.context.clear_kv_cache_seq(Some(dst), Some(len), None);
            }
            return true;
        }
        let copied = self.save(src).and_then(|state| self.restore(dst, &state));
        if let Err(e) = copied {
            tracing::warn!("cannot copy a cached prefix: {e}");
            self.release(dst);
            return false;
        }
        if self.layout.can_truncate {
            let _ = self.context.clear_kv_cache_seq(Some(dst), Some(len), None);
        }
        true
    }

    fn save(&mut self, seq: SeqId) -> Result<Vec<u8>, RunnerError> {
        if self.pending_copies.iter().any(|&(_, dst)| dst == seq) {
            return Err(RunnerError::Failed(
                "the sequence's cells are still being copied".into(),
            ));
        }
        let flags = LlamaStateSeqFlags::empty();
        let size = self.context.state_seq_get_size_ext(seq_i32(seq), flags);
        let mut bytes = vec![0u8; size];
        // SAFETY: the buffer has the size llama.cpp asked for.
        let written = unsafe {
            self.context
                .state_seq_get_data_ext(bytes.as_mut_ptr(), seq_i32(seq), flags)
        };
        if written != size {
            return Err(RunnerError::Failed(format!(
                "sequence state: {written} of {size} bytes written"
            )));
        }
        Ok(bytes)
    }

    fn restore(&mut self, seq: SeqId, state: &[u8]) -> Result<(), RunnerError> {
        if self.copy_pending(seq) {
            return Err(RunnerError::Failed(
                "the sequence's cells are part of a copy not made yet".into(),
            ));
        }
        // SAFETY: llama.cpp reads at most `state.len()` bytes and checks what it reads
        // (a mismatch makes it fail, not crash); snapshots only come from `save` of a
        // context with the same fingerprint.
        let ok = unsafe {
            self.context
                .state_seq_set_data_ext(state, seq_i32(seq), LlamaStateSeqFlags::empty())
        };
        if ok {
            Ok(())
        } else {
            let _ = self.context.clear_kv_cache_seq(Some(seq), None, None);
            Err(RunnerError::Failed(
                "the snapshot does not fit this context".into(),
            ))
        }
    }

    fn kv_bytes_per_token(&self) -> u64 {
        self.layout.kv_bytes_per_token
    }

    fn fingerprint(&self) -> String {
        self.layout.fingerprint.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_gives_the_token_and_the_most_likely() {
        let logits = [0.0, 2.0_f32.ln(), 1.0_f32.ln() - 10.0, 1.0_f32.ln()];
        let (lp, top) = log_softmax_at(&logits, 1, 2);
        let total: f32 = logits.iter().map(|l| l.exp()).sum();
        assert!((lp - (2.0 / total).ln()).abs() < 1e-5);
        assert_eq!(top.iter().map(|(t, _)| *t).collect::<Vec<_>>(), vec![1, 0]);
        assert!(top[0].1 > top[1].1);
        assert!(log_softmax_at(&logits, 0, 0).1.is_empty());
    }

    #[test]
    fn a_steps_picks_are_the_same_on_all_cores() {
        // Pseudo-random logits with ties; every third sequence under a mask, every other
        // one with a seeded sampler chain (temperature 1), the rest greedy.
        let mut state = 7u32;
        let logits: Vec<Vec<f32>> = (0..9)
            .map(|_| {
                (0..1000)
                    .map(|_| {
                        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        (state >> 24) as f32 / 32.0
                    })
                    .collect()
            })
            .collect();
        let words: Vec<u32> = (0..32).map(|w| 0x5555_5555u32.rotate_left(w)).collect();
        let mask = |k: usize| k.is_multiple_of(3).then_some(TokenMask(&words));
        let chains = || -> Vec<Option<Chain>> {
            (0..9u32)
                .map(|k| {
                    k.is_multiple_of(2).then(|| Chain {
                        sampler: LlamaSampler::chain_simple([
                            LlamaSampler::temp(1.0),
                            LlamaSampler::dist(100 + k),
                        ]),
                        candidates: Vec::new(),
                    })
                })
                .collect()
        };
        let (mut serial_chains, mut spread_chains) = (chains(), chains());
        // Outside the 1,000-token vocabulary: no chain can draw it.
        const PICKED: TokenId = 5_000;
        fn jobs<'a>(
            logits: &'a [Vec<f32>],
            words: &'a [u32],
            chains: &'a mut [Option<Chain>],
        ) -> Vec<Job<'a>> {
            chains
                .iter_mut()
                .enumerate()
                .map(|(k, chain)| Job {
                    logits: &logits[k],
                    mask: k.is_multiple_of(3).then_some(TokenMask(words)),
                    chain: chain.as_mut(),
                    // As if the graph had picked its greedy token for every sequence.
                    picked: Some(PICKED),
                })
                .collect()
        }
        assert!(spreads_sampling(true, 2));
        assert!(!spreads_sampling(true, 1));
        assert!(!spreads_sampling(false, 64));
        // Several steps: the chains' random states advance alike either way.
        for _ in 0..3 {
            let serial = sample_jobs(&mut jobs(&logits, &words, &mut serial_chains), false);
            let spread = sample_jobs(&mut jobs(&logits, &words, &mut spread_chains), true);
            assert_eq!(spread, serial);
            for (k, &token) in serial.iter().enumerate() {
                assert!(mask(k).is_none_or(|m| m.allows(token)), "sequence {k}");
                match (k % 2 == 1, mask(k)) {
                    // Greedy without a mask: the graph's pick stands.
                    (true, None) => assert_eq!(token, PICKED),
                    // A mask the graph knows nothing of: the host's argmax over the logits.
                    (true, Some(m)) => assert_eq!(token, argmax_allowed(&logits[k], Some(m))),
                    // A chain samples the logits whatever the graph picked.
                    (false, _) => assert_ne!(token, PICKED, "sequence {k}"),
                }
            }
        }
        // A vocabulary of several slices, with its maximum in two of them: the first wins.
        let mut long = vec![0.5f32; 40_000];
        long[39_000] = 3.0;
        long[17_000] = 3.0;
        long[100] = f32::NAN;
        assert_eq!(argmax_spread(&long, None), 17_000);
        assert_eq!(argmax_allowed(&long, None), 17_000);
        let odd: Vec<u32> = vec![0xAAAA_AAAA; 1250];
        assert_eq!(argmax_spread(&long, Some(TokenMask(&odd))), 1);
        long[33_333] = 4.0;
        assert_eq!(argmax_spread(&long, Some(TokenMask(&odd))), 33_333);
        assert_eq!(argmax_allowed(&long, Some(TokenMask(&odd))), 33_333);
    }

    #[test]
    fn argmax_takes_the_first_of_equal_maxima() {
        assert_eq!(argmax_allowed(&[0.5, 2.0, -1.0, 2.0], None), 1);
        assert_eq!(argmax_allowed(&[f32::NEG_INFINITY, -3.0], None), 1);
        assert_eq!(argmax_allowed(&[1.0], None), 0);
    }

    #[test]
    fn the_vector_argmax_matches_the_plain_loop() {
        let mut state = 12345u32;
        for len in [0, 1, 7, 8, 9, 63, 1000, 49_152] {
            let mut values: Vec<f32> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 8) as f32 / 65_536.0 - 128.0
                })
                .collect();
            if len > 10 {
                // Equal maxima: the first wins.
                values[len / 3] = 1e6;
                values[len / 2] = 1e6;
            }
            let plain = values
                .iter()
                .enumerate()
                .fold(None, |best: Option<(usize, f32)>, (i, &v)| match best {
                    Some((_, b)) if v <= b => best,
                    _ => Some((i, v)),
                })
                .map_or(0, |(i, _)| i);
            assert_eq!(argmax(&values), plain, "len {len}");
        }
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NAN, -1.0]), 2);
    }

    #[test]
    fn argmax_keeps_to_the_mask() {
        let allow_0_and_2 = [0b101u32];
        let mask = Some(TokenMask(&allow_0_and_2));
        assert_eq!(argmax_allowed(&[0.5, 2.0, -1.0, 3.0], mask), 0);
        assert_eq!(argmax_allowed(&[0.5, 2.0, 1.0, 3.0], mask), 2);
    }
}
