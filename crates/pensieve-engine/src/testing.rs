//! A tiny deterministic backend for tests of the engine and of the HTTP edge: bytes are
//! tokens, and the "model" replays a fixed reply.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::model::{ModelInfo, ModelRunner, RunnerError, TokenId, Tokenizer};
use crate::SamplingParams;

/// The end-of-generation token of [`ByteTokenizer`].
pub const EOG: TokenId = 0;

/// One token per byte (`id = byte + 1`); token 0 ends the turn.
pub struct ByteTokenizer;

impl Tokenizer for ByteTokenizer {
    fn encode(&self, text: &str) -> Vec<TokenId> {
        text.bytes().map(|b| TokenId::from(b) + 1).collect()
    }

    fn token_bytes(&self, token: TokenId) -> Vec<u8> {
        match u8::try_from(token - 1) {
            Ok(b) if token != EOG => vec![b],
            _ => Vec::new(),
        }
    }

    fn is_end_of_generation(&self, token: TokenId) -> bool {
        token == EOG
    }
}

/// What the scripted runner saw, for assertions.
#[derive(Debug, Default, Clone)]
pub struct RunnerLog {
    /// `(start position, token count)` of every evaluate call.
    pub evaluations: Vec<(u32, usize)>,
    pub truncations: Vec<u32>,
}

/// Replies with `reply` (then EOG, unless `endless`), whatever the prompt.
pub struct ScriptedRunner {
    reply: Vec<TokenId>,
    next: usize,
    pub endless: bool,
    /// Sleep per evaluate call, to make cancellation observable.
    pub step_delay: Duration,
    pub batch: usize,
    pub log: Arc<Mutex<RunnerLog>>,
}

impl ScriptedRunner {
    pub fn new(reply: &str) -> Self {
        ScriptedRunner {
            reply: ByteTokenizer.encode(reply),
            next: 0,
            endless: false,
            step_delay: Duration::ZERO,
            batch: 8,
            log: Arc::default(),
        }
    }
}

impl ModelRunner for ScriptedRunner {
    fn batch_size(&self) -> usize {
        self.batch
    }

    fn truncate(&mut self, position: u32) -> bool {
        if let Ok(mut log) = self.log.lock() {
            log.truncations.push(position);
        }
        true
    }

    fn evaluate(&mut self, tokens: &[TokenId], start: u32) -> Result<(), RunnerError> {
        std::thread::sleep(self.step_delay);
        if let Ok(mut log) = self.log.lock() {
            log.evaluations.push((start, tokens.len()));
        }
        Ok(())
    }

    fn start_sampling(&mut self, _params: &SamplingParams) {
        self.next = 0;
    }

    fn sample(&mut self) -> TokenId {
        let token = match self.reply.get(self.next) {
            Some(t) => *t,
            None if self.endless => self.reply[self.next % self.reply.len().max(1)],
            None => EOG,
        };
        self.next += 1;
        token
    }
}

/// A model description for the scripted backend (no template: the ChatML fallback).
pub fn model_info(context_size: u32) -> ModelInfo {
    ModelInfo {
        id: "scripted".into(),
        architecture: "test".into(),
        train_context: context_size,
        context_size,
        chat_template: None,
        bos_token: String::new(),
        eos_token: String::new(),
    }
}
