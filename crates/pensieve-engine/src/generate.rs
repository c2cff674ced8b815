//! The generation loop of one sequence: reuse the cached prefix, prefill the rest in
//! chunks, then sample, detokenize and match stop sequences token by token.
//!
//! It runs on the engine thread and checks for cancellation between every step, so a
//! client that disconnects stops costing compute within one step.

use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::detok::Utf8Stream;
use crate::event::{Completion, FinishReason, GenerationEvent, Timings, Usage};
use crate::model::{ModelRunner, RunnerError, TokenId, Tokenizer};
use crate::stop::{StopMatcher, StopOutcome};
use crate::{EngineError, ValidRequest};

/// A request waiting for, or being worked on by, the engine thread.
pub(crate) struct Job {
    pub request: ValidRequest,
    pub events: UnboundedSender<GenerationEvent>,
    pub submitted: Instant,
}

/// The engine thread's state across jobs: what the runner's cache holds.
#[derive(Default)]
pub(crate) struct Sequence {
    /// Tokens whose KV is in the runner's cache, in position order.
    cached: Vec<TokenId>,
}

/// Why a job stopped before it finished.
enum Interrupt {
    ClientGone,
    Shutdown,
    Failed(RunnerError),
}

impl Sequence {
    pub fn run(
        &mut self,
        runner: &mut dyn ModelRunner,
        tokenizer: &dyn Tokenizer,
        job: Job,
        shutdown: &CancellationToken,
    ) {
        let queued = job.submitted.elapsed();
        let events = &job.events;
        let interrupted = |shutdown: &CancellationToken| {
            if shutdown.is_cancelled() {
                Some(Interrupt::Shutdown)
            } else if events.is_closed() {
                Some(Interrupt::ClientGone)
            } else {
                None
            }
        };
        let request = &job.request;
        let prompt = &request.prompt;

        let prefill_start = Instant::now();
        let cached = match self.prefill(runner, prompt, || interrupted(shutdown)) {
            Ok(cached) => cached,
            Err(interrupt) => return self.abort(runner, events, interrupt),
        };
        let _ = events.send(GenerationEvent::PrefillDone {
            cached_prompt_tokens: cached,
        });
        let prefill = prefill_start.elapsed();

        let decode_start = Instant::now();
        let mut utf8 = Utf8Stream::default();
        let mut stops = StopMatcher::new(&request.stop_sequences);
        let mut generated = 0u32;
        runner.start_sampling(&request.sampling);
        let reason = loop {
            if let Some(interrupt) = interrupted(shutdown) {
                return self.abort(runner, events, interrupt);
            }
            let token = runner.sample();
            if tokenizer.is_end_of_generation(token) {
                break FinishReason::EndOfTurn;
            }
            generated += 1;
            let text = utf8.push(&tokenizer.token_bytes(token));
            match stops.push(&text) {
                StopOutcome::Continue(text) => send_text(events, text),
                StopOutcome::Stopped { text, sequence } => {
                    send_text(events, text);
                    break FinishReason::StopSequence(sequence);
                }
            }
            if generated >= request.max_tokens {
                break if request.max_tokens < request.requested_max_tokens {
                    FinishReason::ContextWindow
                } else {
                    FinishReason::MaxTokens
                };
            }
            let position = self.cached.len() as u32;
            if let Err(e) = runner.evaluate(&[token], position) {
                return self.abort(runner, events, Interrupt::Failed(e));
            }
            self.cached.push(token);
        };
        if !matches!(reason, FinishReason::StopSequence(_)) {
            let rest = utf8.finish();
            let rest = match stops.push(&rest) {
                StopOutcome::Continue(t) => t + &stops.finish(),
                StopOutcome::Stopped { text, .. } => text,
            };
            send_text(events, rest);
        }
        let _ = events.send(GenerationEvent::Done(Completion {
            reason,
            usage: Usage {
                prompt_tokens: prompt.len() as u32,
                cached_prompt_tokens: cached,
                completion_tokens: generated,
            },
            timings: Timings {
                queued,
                prefill,
                decode: decode_start.elapsed(),
            },
        }));
    }

    /// Bring the cache to hold exactly `prompt`, computing only what is not there yet.
    /// Returns how many prompt tokens were reused.
    fn prefill(
        &mut self,
        runner: &mut dyn ModelRunner,
        prompt: &[TokenId],
        interrupted: impl Fn() -> Option<Interrupt>,
    ) -> Result<u32, Interrupt> {
        let mut reuse = common_prefix(&self.cached, prompt);
        // The last prompt token is always evaluated again: sampling needs its logits.
        if reuse == prompt.len() {
            reuse = reuse.saturating_sub(1);
        }
        if reuse < self.cached.len() && !runner.truncate(reuse as u32) {
            reuse = 0;
        }
        self.cached.truncate(reuse);
        for chunk in prompt[reuse..].chunks(runner.batch_size().max(1)) {
            if let Some(interrupt) = interrupted() {
                return Err(interrupt);
            }
            let start = self.cached.len() as u32;
            runner.evaluate(chunk, start).map_err(Interrupt::Failed)?;
            self.cached.extend_from_slice(chunk);
        }
        Ok(reuse as u32)
    }

    fn abort(
        &mut self,
        runner: &mut dyn ModelRunner,
        events: &UnboundedSender<GenerationEvent>,
        interrupt: Interrupt,
    ) {
        let event = match interrupt {
            // Nobody is listening; the cache keeps what was computed for the next request.
            Interrupt::ClientGone => return,
            Interrupt::Shutdown => GenerationEvent::Failed(EngineError::ShuttingDown),
            Interrupt::Failed(e) => {
                // The cache state after a failed decode is unknown: start from nothing.
                self.cached.clear();
                runner.truncate(0);
                GenerationEvent::Failed(EngineError::Backend(e.to_string()))
            }
        };
        let _ = events.send(event);
    }
}

fn send_text(events: &UnboundedSender<GenerationEvent>, text: String) {
    if !text.is_empty() {
        let _ = events.send(GenerationEvent::Text(text));
    }
}

fn common_prefix(a: &[TokenId], b: &[TokenId]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
