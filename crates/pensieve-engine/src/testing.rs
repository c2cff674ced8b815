//! A tiny deterministic backend for tests of the engine and of the HTTP edge: bytes are
//! tokens, the KV cache is simulated cell by cell, and the "model" replays a fixed reply.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::model::{
    BatchToken, ModelInfo, ModelRunner, RunnerError, SeqId, TokenId, TokenMask, Tokenizer,
};
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

    fn single_token(&self, _text: &str) -> Option<TokenId> {
        None
    }

    fn vocab_size(&self) -> usize {
        257
    }
}

/// What the scripted runner's cache holds and what it was asked, for assertions.
#[derive(Debug, Default, Clone)]
pub struct RunnerLog {
    /// Every decode call: `(seq, first position, token count)` per sequence in it.
    pub decodes: Vec<Vec<(SeqId, u32, usize)>>,
    /// The tokens each slot holds, by position; each position names a cell.
    pub slots: HashMap<SeqId, Vec<(TokenId, u64)>>,
    /// How many slots use each cell.
    pub cells: HashMap<u64, usize>,
    next_cell: u64,
    pub saves: usize,
    pub restores: usize,
    /// Prefixes copied from one slot to another (unless `shared_cells`).
    pub copies: usize,
    /// Every image computed: `(seq, first position, token count)`.
    pub images: Vec<(SeqId, u32, usize)>,
}

impl RunnerLog {
    /// Cells in use by any slot.
    pub fn used_cells(&self) -> usize {
        self.cells.len()
    }

    /// The token ids slot `seq` holds.
    pub fn tokens_of(&self, seq: SeqId) -> Vec<TokenId> {
        self.slots
            .get(&seq)
            .map(|s| s.iter().map(|(t, _)| *t).collect())
            .unwrap_or_default()
    }

    fn drop_cells(&mut self, cells: impl IntoIterator<Item = u64>) {
        for c in cells {
            if let Some(n) = self.cells.get_mut(&c) {
                *n -= 1;
                if *n == 0 {
                    self.cells.remove(&c);
                }
            }
        }
    }

    fn new_cell(&mut self) -> u64 {
        self.next_cell += 1;
        self.cells.insert(self.next_cell, 1);
        self.next_cell
    }
}

/// A simulated backend: a KV cache of `cells` cells for `sequences` slots, with the
/// semantics of llama.cpp's per-sequence KV streams, as both real backends run (or, with
/// `shared_cells`, of its unified cache), and a "model" that replies
/// with `reply` (then EOG, unless `endless`), whatever the prompt.
pub struct ScriptedRunner {
    reply: Vec<TokenId>,
    next: HashMap<SeqId, usize>,
    pub endless: bool,
    /// Reply with `reply[slot length % reply length]`: the output depends only on
    /// positions, so a sequence that was preempted and resumed must continue exactly.
    pub positional: bool,
    /// Sleep per decode call, to make concurrency and cancellation observable.
    pub step_delay: Duration,
    /// Sleep per token of a decode call: with `step_delay`, what a step costs by its size
    /// (speculation sizes drafts by that).
    pub token_delay: Duration,
    /// What the last decode cost by the delays above.
    last_step: Duration,
    pub batch: usize,
    pub sequences: usize,
    pub cells: usize,
    pub truncatable: bool,
    /// Results depend on the batch's shape, as on a GPU.
    pub batch_variant: bool,
    /// Prompt tokens a step may take while others decode (the trait's default if None).
    pub prefill_while_decoding: Option<usize>,
    /// One pool of cells that slots share, as llama.cpp's unified KV cache: `share` adds
    /// a slot to the cells instead of copying them. No real backend runs this way today.
    pub shared_cells: bool,
    pub log: Arc<Mutex<RunnerLog>>,
}

impl ScriptedRunner {
    pub fn new(reply: &str) -> Self {
        ScriptedRunner {
            reply: ByteTokenizer.encode(reply),
            next: HashMap::new(),
            endless: false,
            positional: false,
            step_delay: Duration::ZERO,
            token_delay: Duration::ZERO,
            last_step: Duration::ZERO,
            batch: 8,
            sequences: 16,
            cells: 4096,
            truncatable: true,
            batch_variant: false,
            prefill_while_decoding: None,
            shared_cells: false,
            log: Arc::default(),
        }
    }

    /// The reply's next token.
    fn scripted(&mut self, seq: SeqId, _index: usize) -> TokenId {
        if self.positional {
            let len = self.log().slots.get(&seq).map_or(0, Vec::len);
            return self.reply[len % self.reply.len().max(1)];
        }
        let next = self
            .next
            .get_mut(&seq)
            .expect("sampling was not started for this sequence");
        let token = match self.reply.get(*next) {
            Some(t) => *t,
            None if self.endless => self.reply[*next % self.reply.len().max(1)],
            None => EOG,
        };
        *next += 1;
        token
    }

    fn log(&self) -> std::sync::MutexGuard<'_, RunnerLog> {
        match self.log.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

impl ModelRunner for ScriptedRunner {
    fn batch_size(&self) -> usize {
        self.batch
    }

    fn max_sequences(&self) -> usize {
        self.sequences
    }

    fn cache_cells(&self) -> usize {
        self.cells
    }

    fn shares_cells(&self) -> bool {
        self.shared_cells
    }

    fn can_truncate(&self) -> bool {
        self.truncatable
    }

    fn can_speculate(&self) -> bool {
        self.truncatable && !self.positional
    }

    fn batch_invariant(&self) -> bool {
        !self.batch_variant
    }

    fn prefill_while_decoding(&self) -> usize {
        self.prefill_while_decoding
            .unwrap_or_else(|| (self.batch / 4).max(1))
    }

    /// The step's cost as the delays model it: a loaded machine's late wake-ups would
    /// otherwise make the tests that size drafts by it flaky.
    fn modelled_step_seconds(&self) -> Option<f64> {
        Some(self.last_step.as_secs_f64())
    }

    fn decode(&mut self, batch: &[BatchToken]) -> Result<(), RunnerError> {
        self.last_step = self.step_delay + self.token_delay * batch.len() as u32;
        std::thread::sleep(self.last_step);
        assert!(batch.len() <= self.batch, "batch over budget");
        let cells = self.cells;
        let mut log = self.log();
        if log.used_cells() + batch.len() > cells {
            return Err(RunnerError::CacheFull);
        }
        let mut call: Vec<(SeqId, u32, usize)> = Vec::new();
        for t in batch {
            let expected = log.slots.get(&t.seq).map_or(0, Vec::len) as u32;
            assert_eq!(
                t.pos, expected,
                "seq {} gets position {} out of order",
                t.seq, t.pos
            );
            let cell = log.new_cell();
            log.slots.entry(t.seq).or_default().push((t.token, cell));
            match call.last_mut() {
                Some((seq, _, n)) if *seq == t.seq => *n += 1,
                _ => call.push((t.seq, t.pos, 1)),
            }
        }
        log.decodes.push(call);
        Ok(())
    }

    fn decode_media(&mut self, seq: SeqId, media: &crate::Media) -> Result<(), RunnerError> {
        // A test's stand-in for an image the backend cannot decode.
        if let Some(why) = media.unit.downcast_ref::<&str>() {
            return Err(RunnerError::Refused((*why).to_owned()));
        }
        let Some(tokens) = media.unit.downcast_ref::<Vec<TokenId>>() else {
            return Err(RunnerError::Failed("not a scripted image".into()));
        };
        let mut log = self.log();
        if log.used_cells() + tokens.len() > self.cells {
            return Err(RunnerError::CacheFull);
        }
        let expected = log.slots.get(&seq).map_or(0, Vec::len);
        assert_eq!(media.at, expected, "seq {seq} gets an image out of order");
        for &t in tokens {
            let cell = log.new_cell();
            log.slots.entry(seq).or_default().push((t, cell));
        }
        log.images.push((seq, media.at as u32, tokens.len()));
        Ok(())
    }

    fn start_sampling(&mut self, seq: SeqId, _params: &SamplingParams) {
        self.next.insert(seq, 0);
    }

    fn sample(&mut self, seq: SeqId, index: usize, mask: Option<TokenMask<'_>>) -> TokenId {
        let token = self.scripted(seq, index);
        match mask {
            // A grammar overrides the script, as it would the model's preference: the
            // first token it allows.
            Some(mask) if !mask.allows(token) => (0..257).find(|t| mask.allows(*t)).unwrap_or(EOG),
            _ => token,
        }
    }

    fn truncate(&mut self, seq: SeqId, from: u32) -> bool {
        if !self.truncatable {
            return false;
        }
        let mut log = self.log();
        let removed: Vec<u64> = match log.slots.get_mut(&seq) {
            Some(s) if (from as usize) < s.len() => {
                s.drain(from as usize..).map(|(_, c)| c).collect()
            }
            _ => Vec::new(),
        };
        log.drop_cells(removed);
        true
    }

    fn release(&mut self, seq: SeqId) {
        // As llama.cpp's runner: the sampler goes with the sequence.
        self.next.remove(&seq);
        let mut log = self.log();
        if let Some(s) = log.slots.remove(&seq) {
            log.drop_cells(s.into_iter().map(|(_, c)| c));
        }
    }

    fn share(&mut self, src: SeqId, dst: SeqId, len: u32) -> bool {
        let mut log = self.log();
        let shared: Vec<(TokenId, u64)> = log
            .slots
            .get(&src)
            .map(|s| s.iter().take(len as usize).copied().collect())
            .unwrap_or_default();
        assert_eq!(
            shared.len(),
            len as usize,
            "share of positions {src} does not hold"
        );
        assert!(
            log.slots.get(&dst).is_none_or(Vec::is_empty),
            "share into a slot that is in use"
        );
        let shared = if !self.shared_cells {
            log.copies += 1;
            shared
                .into_iter()
                .map(|(t, _)| (t, log.new_cell()))
                .collect()
        } else {
            for (_, c) in &shared {
                *log.cells.entry(*c).or_insert(0) += 1;
            }
            shared
        };
        log.slots.insert(dst, shared);
        true
    }

    fn save(&mut self, seq: SeqId) -> Result<Vec<u8>, RunnerError> {
        let mut log = self.log();
        log.saves += 1;
        Ok(log
            .tokens_of(seq)
            .iter()
            .flat_map(|t| t.to_le_bytes())
            .collect())
    }

    fn restore(&mut self, seq: SeqId, state: &[u8]) -> Result<(), RunnerError> {
        let mut log = self.log();
        log.restores += 1;
        assert!(
            log.slots.get(&seq).is_none_or(Vec::is_empty),
            "restore into a used slot"
        );
        let tokens: Vec<TokenId> = state
            .chunks_exact(4)
            .map(|c| TokenId::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mut slot = Vec::new();
        for t in tokens {
            let cell = log.new_cell();
            slot.push((t, cell));
        }
        log.slots.insert(seq, slot);
        Ok(())
    }

    fn kv_bytes_per_token(&self) -> u64 {
        4
    }

    fn fingerprint(&self) -> String {
        "scripted".into()
    }
}

/// A vision projector for the scripted backend: `<image>` marks an image, which becomes
/// [`ScriptedVision::TOKENS`] media tokens of its content.
pub struct ScriptedVision;

impl ScriptedVision {
    pub const TOKENS: usize = 8;
}

impl crate::Vision for ScriptedVision {
    fn marker(&self) -> &str {
        "<image>"
    }

    fn tokenize(
        &self,
        text: &str,
        images: &[&[u8]],
    ) -> Result<crate::MediaPrompt, crate::VisionError> {
        let pieces: Vec<&str> = text.split(self.marker()).collect();
        if pieces.len() != images.len() + 1 {
            return Err(crate::VisionError::Prompt(format!(
                "{} markers for {} images",
                pieces.len() - 1,
                images.len()
            )));
        }
        let mut prompt = crate::MediaPrompt::default();
        for (i, piece) in pieces.iter().enumerate() {
            prompt.tokens.extend(ByteTokenizer.encode(piece));
            let Some(image) = images.get(i) else { break };
            if image.is_empty() {
                return Err(crate::VisionError::Image {
                    index: i,
                    reason: "it is empty".into(),
                });
            }
            let tokens = vec![crate::media_token_of(image); Self::TOKENS];
            prompt.media.push(crate::Media {
                at: prompt.tokens.len(),
                len: tokens.len(),
                block: String::new(),
                unit: Arc::new(tokens.clone()),
            });
            prompt.tokens.extend(tokens);
        }
        Ok(prompt)
    }

    fn describe(&self) -> String {
        "scripted".into()
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

/// Claude Code's tools as its pinned version sends them (`constrain/fixtures/`): a real,
/// large tool set for grammar tests.
pub fn claude_code_tools() -> Vec<crate::ToolSpec> {
    let tools: serde_json::Value =
        serde_json::from_str(include_str!("constrain/fixtures/claude_code_tools.json"))
            .expect("the fixture is JSON");
    let tools = tools.as_array().expect("the fixture is a list");
    tools
        .iter()
        .map(|t| crate::ToolSpec {
            name: t["name"].as_str().unwrap_or_default().to_owned(),
            description: t["description"].as_str().map(str::to_owned),
            parameters: t["input_schema"].clone(),
        })
        .collect()
}
