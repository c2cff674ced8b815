//! One request on the engine thread: its tokens, how far its KV is computed, and what
//! its generated tokens become (text, stop sequences, the final usage).

use std::collections::HashMap;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use crate::constrain::{Constraint, LazyCall};
use crate::detok::Utf8Stream;
use crate::event::{Completion, FinishReason, GenerationEvent, Timings, TokenLogprob, Usage};
use crate::model::{SeqId, TokenId, Tokenizer};
use crate::output::{OutputParser, Segment};
use crate::speculate::{DraftLength, NgramIndex, Shadow};
use crate::stop::{StopMatcher, StopOutcome};
use crate::{EngineError, ValidRequest};

/// A request waiting for, or being worked on by, the engine thread.
pub(crate) struct Job {
    pub request: ValidRequest,
    pub events: UnboundedSender<GenerationEvent>,
    pub submitted: Instant,
}

/// A request the scheduler owns, from the queue to its end.
pub(crate) struct Active {
    pub job: Job,
    /// Its slot in the backend's cache while it runs.
    pub seq: Option<SeqId>,
    /// The prompt, then every generated token.
    pub tokens: Vec<TokenId>,
    pub prompt_len: usize,
    /// `tokens[..computed]` have their KV in the slot.
    pub computed: usize,
    /// Prompt tokens served from the prefix cache at first admission.
    pub cached: Option<u32>,
    /// Admission order, newest highest: the newest is preempted first.
    pub order: u64,
    /// Positions where a snapshot is taken on the way, in order, each with whether other
    /// conversations start with it too (see [`super::checkpoints`]).
    pub checkpoints: Vec<(usize, bool)>,
    /// Waiting for another running sequence to compute a prefix it shares, to copy it
    /// instead of computing it again.
    pub follow: Option<Follow>,
    /// The grammar its output must follow now, if any.
    pub constraint: Option<Constraint>,
    /// The grammar of a call, started when the model opens one.
    pub lazy_call: Option<LazyCall>,
    /// Where an object that may be a call without its marker starts in `tokens`, while
    /// its name is being written.
    pub bare_from: Option<usize>,
    /// The output's start was read for such an object (it is only looked for there).
    pub bare_checked: bool,
    /// Where to look on for the text that opens a call without its marker (Qwen's
    /// `<function=`), in `tokens`.
    pub bare_text_from: usize,
    /// Tokens drafted to follow the pending one this step (speculative decoding).
    pub draft: Vec<TokenId>,
    pub draft_length: DraftLength,
    /// A draft not checked, followed as the sequence goes on (n-gram drafts).
    pub shadow: Shadow,
    /// Where its runs of tokens occurred, for drafts (filled once it speculates).
    pub ngrams: NgramIndex,
    generated: u32,
    utf8: Utf8Stream,
    stops: StopMatcher,
    output: OutputParser,
    /// The generated text as the model wrote it (markers included), for the debug log.
    raw: String,
    admitted: Option<Instant>,
    prefill_done: Option<Instant>,
    last_token: Option<Instant>,
}

/// A prefix to take from another running sequence once that one has computed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Follow {
    /// The other sequence's admission order.
    pub leader: u64,
    /// Tokens shared.
    pub len: usize,
    /// The prompt's usage is counted when the prefix arrives (first admission).
    pub count_usage: bool,
}

/// What a sampled token did to the request.
pub(crate) enum Step {
    Continue,
    Finished(FinishReason),
}

/// Timestamps the metrics want from one sampled token.
pub(crate) struct TokenTiming {
    /// Submission -> this token, when it is the first.
    pub first: Option<std::time::Duration>,
    /// Since the previous token, otherwise.
    pub gap: Option<std::time::Duration>,
}

impl Active {
    /// The tokens its grammar allows next, if it follows one; a grammar that failed is
    /// dropped (generation goes on unconstrained).
    pub fn grammar_mask(&mut self) -> Option<llguidance::toktrie::SimpleVob> {
        let mask = self.constraint.as_mut().and_then(Constraint::mask);
        if mask.is_none() {
            self.constraint = None;
        }
        mask
    }

    /// Whether it decodes this step: one token pending, its own (not following a leader).
    pub fn decodes(&self) -> bool {
        self.follow.is_none() && self.tokens.len() == self.computed + 1
    }

    /// Cut its draft where its grammar (a tool call's) forbids a token.
    pub fn cut_to_grammar(&mut self) {
        if let Some(c) = self.constraint.as_mut() {
            let allowed = c.allowed_prefix(&self.draft);
            self.draft.truncate(allowed);
        }
    }

    pub fn new(job: Job) -> Active {
        let tokens = job.request.prompt.clone();
        let stops = StopMatcher::new(&job.request.stop_sequences);
        let constraint = job.request.constraint.clone();
        let lazy_call = job.request.lazy_call.clone();
        let output = OutputParser::new(job.request.output).with_tools(&job.request.tools);
        Active {
            prompt_len: tokens.len(),
            tokens,
            job,
            seq: None,
            computed: 0,
            cached: None,
            order: 0,
            checkpoints: Vec::new(),
            follow: None,
            constraint,
            lazy_call,
            bare_from: None,
            bare_checked: false,
            bare_text_from: 0,
            draft: Vec::new(),
            draft_length: DraftLength::default(),
            shadow: Shadow::default(),
            ngrams: NgramIndex::default(),
            generated: 0,
            utf8: Utf8Stream::default(),
            stops,
            output,
            raw: String::new(),
            admitted: None,
            prefill_done: None,
            last_token: None,
        }
    }

    /// Whether a token of `bytes` next would open a call without its marker: a `{` where
    /// the output starts, or right after a code fence that starts it.
    pub fn opens_bare_call(&self, bytes: &[u8]) -> bool {
        let so_far = self.raw.trim();
        let at_start = crate::output::FENCES
            .iter()
            .any(|fence| fence.trim() == so_far);
        at_start && bytes.trim_ascii_start().starts_with(b"{")
    }

    /// Whether the client is gone (its receiver dropped).
    pub fn is_cancelled(&self) -> bool {
        self.job.events.is_closed()
    }

    pub fn mark_admitted(&mut self, order: u64, reused: usize) {
        self.order = order;
        self.computed = reused;
        if self.cached.is_none() {
            self.cached = Some(reused.min(self.prompt_len) as u32);
            self.admitted = Some(Instant::now());
        }
    }

    /// Tokens it may still generate.
    pub fn tokens_left(&self) -> usize {
        self.job.request.max_tokens.saturating_sub(self.generated) as usize
    }

    /// Back to the queue after losing its slot; it continues where it was.
    pub fn preempted(&mut self) {
        self.computed = 0;
        self.follow = None;
    }

    /// The logits after `tokens[..computed]` were sampled into `token`.
    /// `markers`: tokens that render as their marker text (see [`crate::output`]).
    pub fn accept(
        &mut self,
        token: TokenId,
        tokenizer: &dyn Tokenizer,
        markers: &HashMap<TokenId, Vec<u8>>,
    ) -> (Step, TokenTiming) {
        let now = Instant::now();
        if self.prefill_done.is_none() {
            self.prefill_done = Some(now);
            let _ = self.job.events.send(GenerationEvent::PrefillDone {
                cached_prompt_tokens: self.cached.unwrap_or(0),
            });
        }
        let timing = TokenTiming {
            first: self.last_token.is_none().then(|| now - self.job.submitted),
            gap: self.last_token.map(|t| now - t),
        };
        self.last_token = Some(now);
        if tokenizer.is_end_of_generation(token) {
            return (Step::Finished(FinishReason::EndOfTurn), timing);
        }
        self.generated += 1;
        self.tokens.push(token);
        let text = match markers.get(&token) {
            Some(marker) => self.utf8.push(marker),
            None => self.utf8.push(&tokenizer.token_bytes(token)),
        };
        match self.stops.push(&text) {
            StopOutcome::Continue(text) => self.send_text(text),
            StopOutcome::Stopped { text, sequence } => {
                self.send_text(text);
                return (Step::Finished(FinishReason::StopSequence(sequence)), timing);
            }
        }
        let request = &self.job.request;
        if self.generated >= request.max_tokens {
            let reason = if request.max_tokens < request.requested_max_tokens {
                FinishReason::ContextWindow
            } else {
                FinishReason::MaxTokens
            };
            return (Step::Finished(reason), timing);
        }
        (Step::Continue, timing)
    }

    /// Flush held-back text and report the end. Returns the usage it reported.
    pub fn finish(&mut self, reason: FinishReason) -> Usage {
        if !matches!(reason, FinishReason::StopSequence(_)) {
            let rest = self.utf8.finish();
            let rest = match self.stops.push(&rest) {
                StopOutcome::Continue(t) => t + &self.stops.finish(),
                StopOutcome::Stopped { text, .. } => text,
            };
            self.send_text(rest);
        }
        for segment in self.output.finish() {
            self.send_segment(segment);
        }
        tracing::debug!(output = %self.raw, "generated");
        let reason = match reason {
            FinishReason::EndOfTurn if self.output.calls() > 0 => FinishReason::ToolUse,
            other => other,
        };
        let now = Instant::now();
        let admitted = self.admitted.unwrap_or(now);
        let prefill_done = self.prefill_done.unwrap_or(now);
        let cached = self.cached.unwrap_or(0) as usize;
        let usage = Usage {
            completion_tokens: self.generated,
            ..Usage::for_prompt(&self.job.request, cached)
        };
        let _ = self.job.events.send(GenerationEvent::Done(Completion {
            reason,
            usage,
            timings: Timings {
                queued: admitted - self.job.submitted,
                prefill: prefill_done - admitted,
                decode: now - prefill_done,
            },
        }));
        usage
    }

    /// The sampled token's log-probability, before its text.
    pub fn send_logprob(
        &self,
        token: TokenId,
        logprob: f32,
        top: &[(TokenId, f32)],
        tokenizer: &dyn Tokenizer,
    ) {
        let _ = self.job.events.send(GenerationEvent::Logprob(TokenLogprob {
            token: tokenizer.token_bytes(token),
            logprob,
            top: top
                .iter()
                .map(|&(t, l)| (tokenizer.token_bytes(t), l))
                .collect(),
        }));
    }

    pub fn fail(&self, error: EngineError) {
        let _ = self.job.events.send(GenerationEvent::Failed(error));
    }

    fn send_text(&mut self, text: String) {
        if text.is_empty() {
            return;
        }
        self.raw.push_str(&text);
        for segment in self.output.push(&text) {
            self.send_segment(segment);
        }
    }

    fn send_segment(&self, segment: Segment) {
        let event = match segment {
            Segment::Text(t) => GenerationEvent::Text(t),
            Segment::Thinking(t) => GenerationEvent::Thinking(t),
            Segment::CallStart { name } => GenerationEvent::ToolCallStart { name },
            Segment::CallArguments(a) => GenerationEvent::ToolCallArguments(a),
            Segment::CallEnd => GenerationEvent::ToolCallEnd,
        };
        let _ = self.job.events.send(event);
    }
}
