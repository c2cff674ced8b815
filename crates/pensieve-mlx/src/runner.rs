//! The worker behind the engine's step-level [`ModelRunner`] trait.
//!
//! The worker samples every sequence right after DECODE (one round trip per step); a
//! grammar mask that forbids the token it chose costs one more (SAMPLE). When the worker
//! dies it is restarted at once, and the next decode reports [`RunnerError::Restarted`] so
//! the scheduler fails what was running and forgets what the old worker held.

use std::cell::RefCell;
use std::collections::HashMap;

use pensieve_engine::{
    BatchToken, Media, ModelRunner, RunnerError, SamplingParams, SeqId, TokenId, TokenMask,
};

use crate::protocol::{self, Op};
use crate::vision::ImageBytes;
use crate::worker::{Worker, WorkerError};

/// What the scheduler needs to know about the cache.
#[derive(Debug, Clone)]
pub(crate) struct RunnerLayout {
    pub batch_size: usize,
    pub sequences: usize,
    pub cells: usize,
    pub fingerprint: String,
}

pub struct MlxRunner {
    /// A cell: `logprobs` asks through `&self`. Only the engine thread uses it.
    worker: RefCell<Worker>,
    layout: RunnerLayout,
    /// Tokens the worker sampled in the last DECODE, by batch index.
    sampled: HashMap<usize, TokenId>,
    /// Why the worker was restarted since the last decode, if it was.
    restarted: RefCell<Option<String>>,
}

impl MlxRunner {
    pub(crate) fn new(worker: Worker, layout: RunnerLayout) -> Self {
        MlxRunner {
            worker: RefCell::new(worker),
            layout,
            sampled: HashMap::new(),
            restarted: RefCell::new(None),
        }
    }

    /// One request; a dead worker is replaced before this returns.
    fn call(&self, op: Op, body: &[u8]) -> Result<Vec<u8>, WorkerError> {
        let mut worker = self.worker.borrow_mut();
        let result = worker.call(op, body);
        if let Err(WorkerError::Died(reason)) = &result {
            tracing::error!("{reason}; restarting the MLX worker");
            if let Err(e) = worker.restart() {
                tracing::error!("{e}");
            }
            self.restarted.replace(Some(reason.clone()));
        }
        result
    }

    /// Before a step's first request: a worker that exited is replaced, and a replacement
    /// since the last step is reported, so the scheduler forgets what the old one held.
    fn ready(&mut self) -> Result<(), RunnerError> {
        {
            let mut worker = self.worker.borrow_mut();
            if worker.exited() {
                let reason = "the process exited".to_owned();
                tracing::error!("the MLX worker {reason}; restarting it");
                worker
                    .restart()
                    .map_err(|e| RunnerError::Failed(e.to_string()))?;
                self.restarted.replace(Some(reason));
            }
        }
        if let Some(reason) = self.restarted.take() {
            return Err(RunnerError::Restarted(reason));
        }
        Ok(())
    }

    fn warn(&self, what: &str, e: &WorkerError) {
        tracing::warn!("MLX worker, {what}: {e}");
    }
}

fn sampling_json(params: &SamplingParams) -> serde_json::Value {
    let bias: serde_json::Map<String, serde_json::Value> = params
        .logit_bias
        .iter()
        .map(|(t, b)| (t.to_string(), serde_json::json!(b)))
        .collect();
    serde_json::json!({
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "min_p": params.min_p,
        "seed": params.seed,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "logit_bias": bias,
    })
}

impl ModelRunner for MlxRunner {
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
        self.worker.borrow().hello.can_truncate
    }

    /// DECODE keeps the logits of every flagged entry and samples each in order, so one
    /// call checks a draft; TRUNCATE cuts the rejected tokens off (PROTOCOL.md).
    fn can_speculate(&self) -> bool {
        self.can_truncate()
    }

    fn decode(&mut self, batch: &[BatchToken]) -> Result<(), RunnerError> {
        self.sampled.clear();
        self.ready()?;
        match self.call(Op::Decode, &protocol::decode(batch)) {
            Ok(body) => {
                let tokens = protocol::parse_decode(&body)
                    .map_err(|e| RunnerError::Failed(e.to_string()))?;
                self.sampled.extend(tokens);
                Ok(())
            }
            Err(WorkerError::Died(reason)) => {
                self.restarted.take();
                Err(RunnerError::Restarted(reason))
            }
            Err(e) => Err(RunnerError::Failed(e.to_string())),
        }
    }

    /// The image's bytes to the worker, which decodes and computes it into `seq` (DECODE_MEDIA).
    /// A refusal (Pillow can't decode it) is this request's failure alone.
    fn decode_media(&mut self, seq: SeqId, media: &Media) -> Result<(), RunnerError> {
        self.ready()?;
        let Some(image) = media.unit.downcast_ref::<ImageBytes>() else {
            return Err(RunnerError::Failed(
                "an image prepared for another backend".into(),
            ));
        };
        let (Ok(at), Ok(len)) = (u32::try_from(media.at), u32::try_from(media.len)) else {
            return Err(RunnerError::Failed("image position out of range".into()));
        };
        match self.call(
            Op::DecodeMedia,
            &protocol::decode_media(seq, at, len, &image.0),
        ) {
            Ok(_) => Ok(()),
            Err(WorkerError::Died(reason)) => {
                self.restarted.take();
                Err(RunnerError::Restarted(reason))
            }
            // Pillow could not decode it, or it does not fit: the request's own fault.
            Err(WorkerError::Refused(why)) => Err(RunnerError::Refused(why)),
            Err(e) => Err(RunnerError::Failed(e.to_string())),
        }
    }

    fn start_sampling(&mut self, seq: SeqId, params: &SamplingParams) {
        let body = protocol::seq_json(seq, &sampling_json(params));
        if let Err(e) = self.call(Op::StartSampling, &body) {
            self.warn("start sampling", &e);
        }
    }

    fn sample(&mut self, seq: SeqId, index: usize, mask: Option<TokenMask<'_>>) -> TokenId {
        let chosen = self.sampled.get(&index).copied();
        match (chosen, mask) {
            (Some(token), None) => token,
            (Some(token), Some(mask)) if mask.allows(token) => token,
            (chosen, mask) => {
                let words = mask.map_or(&[][..], |m| m.0);
                match self
                    .call(Op::Sample, &protocol::sample(seq, index, words))
                    .map_err(|e| e.to_string())
                    .and_then(|b| protocol::parse_token(&b).map_err(|e| e.to_string()))
                {
                    Ok(token) => token,
                    Err(e) => {
                        // Only a dying worker gets here; the next decode reports it.
                        tracing::warn!("MLX worker, sample: {e}");
                        chosen.unwrap_or(0)
                    }
                }
            }
        }
    }

    fn logprobs(
        &self,
        index: usize,
        token: TokenId,
        top: usize,
    ) -> Option<(f32, Vec<(TokenId, f32)>)> {
        match self.call(Op::Logprobs, &protocol::logprobs(index, token, top)) {
            Ok(body) => protocol::parse_logprobs(&body).ok(),
            Err(e) => {
                self.warn("logprobs", &e);
                None
            }
        }
    }

    fn truncate(&mut self, seq: SeqId, from: u32) -> bool {
        match self.call(Op::Truncate, &protocol::words(&[seq, from])) {
            Ok(body) => protocol::parse_flag(&body).unwrap_or(false),
            Err(e) => {
                self.warn("truncate", &e);
                false
            }
        }
    }

    fn release(&mut self, seq: SeqId) {
        if let Err(e) = self.call(Op::Release, &protocol::words(&[seq])) {
            self.warn("release", &e);
        }
    }

    fn share(&mut self, src: SeqId, dst: SeqId, len: u32) -> bool {
        match self.call(Op::Share, &protocol::words(&[src, dst, len])) {
            Ok(_) => true,
            Err(e) => {
                self.warn("share", &e);
                self.release(dst);
                false
            }
        }
    }

    fn save(&mut self, seq: SeqId) -> Result<Vec<u8>, RunnerError> {
        self.call(Op::Save, &protocol::words(&[seq]))
            .map_err(|e| RunnerError::Failed(e.to_string()))
    }

    fn restore(&mut self, seq: SeqId, state: &[u8]) -> Result<(), RunnerError> {
        match self.call(Op::Restore, &protocol::restore(seq, state)) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.release(seq);
                Err(RunnerError::Failed(e.to_string()))
            }
        }
    }

    fn kv_bytes_per_token(&self) -> u64 {
        self.worker.borrow().hello.kv_bytes_per_token
    }

    fn fingerprint(&self) -> String {
        self.layout.fingerprint.clone()
    }
}
