//! After a step: sampling the sequences whose prompt or last token was computed (all at
//! once, so the backend may spread them), and what each sampled token does to its request:
//! the grammar of a forced or opened tool call, log-probabilities, the stream, and the end.

use crate::constrain::LazyCall;
use crate::model::{Pick, SeqId, TokenMask};
use crate::output::BareName;

use super::active::Step;
use super::{Planned, Scheduler};

impl Scheduler {
    /// Account for a decoded batch and hand out its sampled tokens. Returns how long the
    /// sampling took (for the step trace).
    pub(super) fn after_decode(&mut self, plan: Vec<Planned>) -> std::time::Duration {
        // Sequences to sample for: (index into `running`, slot, batch entry, mask).
        let mut due = Vec::new();
        for p in plan {
            let a = &mut self.running[p.index];
            a.computed += p.tokens;
            let Some(seq) = a.seq else { continue };
            if let Some(&(at, shared)) = a.checkpoints.first().filter(|(at, _)| *at == a.computed) {
                a.checkpoints.remove(0);
                let tokens = a.tokens[..at].to_vec();
                self.checkpoint(seq, &tokens, shared);
            }
            let a = &mut self.running[p.index];
            let Some(index) = p.logits else { continue };
            // A grammar (a forced tool call) decides which tokens may come.
            let mask = a.grammar_mask();
            due.push((p.index, seq, index, mask, p.drafted));
        }
        // All at once: the backend may sample them in parallel.
        let picks: Vec<Pick<'_>> = due
            .iter()
            .map(|(_, seq, index, mask, _)| Pick {
                seq: *seq,
                index: *index,
                mask: mask.as_ref().map(|m| TokenMask(m.as_slice())),
            })
            .collect();
        let started = std::time::Instant::now();
        let tokens = self.runner.sample_all(&picks);
        let sampling = started.elapsed();
        debug_assert_eq!(tokens.len(), picks.len());
        drop(picks);
        let mut finished = Vec::new();
        for ((i, seq, index, _, drafted), token) in due.into_iter().zip(tokens) {
            let mut step = self.take_token(i, index, token);
            if drafted == 0 {
                let a = &mut self.running[i];
                if let Some((drafted, stood)) = a.shadow.follow(token) {
                    a.draft_length.observe(drafted, stood);
                }
                if let Step::Finished(reason) = step {
                    finished.push((i, reason));
                }
                continue;
            }
            // A drafted token stands while it is the one sampled before it: then its KV
            // is right, and the logits after it are sampled in turn.
            // Under a grammar, each position samples under the mask of the tokens before
            // it, as it would have one step at a time.
            let mut token = token;
            let mut kept = 0;
            while kept < drafted
                && matches!(step, Step::Continue)
                && self.running[i].draft.get(kept) == Some(&token)
            {
                self.running[i].computed += 1;
                kept += 1;
                let mask = self.running[i].grammar_mask();
                let mask = mask.as_ref().map(|m| TokenMask(m.as_slice()));
                token = self.runner.sample(seq, index + kept, mask);
                step = self.take_token(i, index + kept, token);
            }
            self.checked_draft(i, seq, drafted, kept);
            if let Step::Finished(reason) = step {
                finished.push((i, reason));
            }
        }
        // Highest index first, so swap_remove leaves the others' indices valid.
        finished.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        for (i, reason) in finished {
            let mut active = self.running.swap_remove(i);
            // Into the cache before the client hears of the end: a next turn sent at once
            // is estimated against this one when it is queued.
            self.keep(&active);
            if self.speculate && self.draft_model.is_none() {
                self.history.add(&active.tokens[active.prompt_len..]);
            }
            if self.speculate {
                tracing::debug!(
                    drafted = active.draft_length.drafted,
                    accepted = active.draft_length.accepted,
                    step_cost = ?self.step_cost,
                    "speculation of a finished request"
                );
            }
            active.finish(reason);
        }
        sampling
    }

    /// What one sampled token does to request `i`: its log-probability, its grammar, its
    /// text and the metrics; whether it ended the request.
    fn take_token(&mut self, i: usize, index: usize, token: crate::TokenId) -> Step {
        let a = &mut self.running[i];
        if let Some(top) = a.job.request.sampling.logprobs {
            if !self.tokenizer.is_end_of_generation(token) {
                if let Some((logprob, top)) = self.runner.logprobs(index, token, top) {
                    a.send_logprob(token, logprob, &top, self.tokenizer.as_ref());
                }
            }
        }
        self.follow_grammar(i, token);
        let a = &mut self.running[i];
        let (step, timing) = a.accept(token, self.tokenizer.as_ref(), &self.markers);
        self.watch_bare_call(i);
        if let Some(d) = timing.first {
            self.metrics.observe_ttft(d);
        }
        if let Some(d) = timing.gap {
            self.metrics.observe_inter_token(d);
        }
        if !matches!(step, Step::Finished(crate::FinishReason::EndOfTurn)) {
            self.metrics.add_generated_tokens(1);
        }
        step
    }

    /// `kept` of request `i`'s `drafted` tokens stood: the KV of the others is cut off
    /// (before anything else reads the slot), and the next draft's length follows.
    fn checked_draft(&mut self, i: usize, seq: SeqId, drafted: usize, kept: usize) {
        let a = &mut self.running[i];
        a.draft.clear();
        a.draft_length.record(drafted, kept);
        self.metrics.add_draft(drafted as u64, kept as u64);
        if kept < drafted && !self.runner.truncate(seq, a.computed as u32) {
            // Cannot happen where drafts are made (they need truncation); if it did, the
            // slot's KV would be wrong past `computed`: compute it all again.
            tracing::error!("cannot drop rejected draft tokens: recomputing the sequence");
            self.runner.release(seq);
            self.runner.start_sampling(seq, &a.job.request.sampling);
            a.computed = 0;
        }
    }

    /// After `token` was sampled: advance the request's grammar; under `tool_choice:
    /// auto`, start a call's grammar when the model opens one with its marker, and note
    /// where an object that may be a call without its marker starts (`{` where the output
    /// starts, perhaps in a code fence); drop the grammar when the call is complete.
    fn follow_grammar(&mut self, index: usize, token: crate::TokenId) {
        let a = &mut self.running[index];
        if let Some(c) = a.constraint.as_mut() {
            c.accept(token);
            // A finished call frees the model, unless one call is all it may make: then
            // the complete grammar leaves only the end of the turn.
            if a.lazy_call.as_ref().is_some_and(LazyCall::allows_more) && c.is_complete() {
                a.constraint = None;
            }
            return;
        }
        let Some(lazy) = &a.lazy_call else {
            return;
        };
        if let Some(c) = self.markers.get(&token).and_then(|m| lazy.after_marker(m)) {
            tracing::debug!("a tool call opened: its grammar is on");
            a.constraint = Some(c);
        } else if lazy.has_bare_calls()
            && !a.bare_checked
            && a.opens_bare_call(&self.tokenizer.token_bytes(token))
        {
            a.bare_checked = true;
            a.bare_from = Some(a.tokens.len());
        }
    }

    /// An object without a marker becomes a call (and follows its tool's schema) only
    /// once it names one of the tools: a model that writes some other JSON is not made to
    /// call a tool it never named.
    fn watch_bare_call(&mut self, index: usize) {
        self.watch_bare_text(index);
        let a = &mut self.running[index];
        let (Some(from), Some(lazy)) = (a.bare_from, &a.lazy_call) else {
            return;
        };
        let text: Vec<u8> = a.tokens[from..]
            .iter()
            .flat_map(|t| self.tokenizer.token_bytes(*t))
            .collect();
        match crate::output::bare_call_name(&String::from_utf8_lossy(&text)) {
            BareName::Pending => {}
            BareName::Named(name) if lazy.names().contains(&name) => {
                a.constraint = lazy.bare_after(&a.tokens[from..]);
                a.bare_from = None;
                if a.constraint.is_some() {
                    tracing::debug!(%name, "a tool call opened: its grammar is on");
                }
            }
            BareName::Named(_) | BareName::NotACall => a.bare_from = None,
        }
    }

    /// Where the model opens a call with text instead of its marker (Qwen's bare
    /// `<function=`), the call's grammar takes over from the token that began that text,
    /// when the tokens so far fit it.
    fn watch_bare_text(&mut self, index: usize) {
        let a = &mut self.running[index];
        let Some(open) = a.lazy_call.as_ref().and_then(LazyCall::bare_open) else {
            return;
        };
        if a.constraint.is_some() {
            a.bare_text_from = a.tokens.len();
            return;
        }
        // Only the last few tokens can hold the text's start.
        let from = a
            .bare_text_from
            .max(a.prompt_len)
            .max(a.tokens.len().saturating_sub(open.len() + 1));
        let pieces: Vec<Vec<u8>> = a.tokens[from..]
            .iter()
            .map(|t| self.tokenizer.token_bytes(*t))
            .collect();
        let text: Vec<u8> = pieces.concat();
        let Some(at) = text.windows(open.len()).position(|w| w == open.as_bytes()) else {
            return;
        };
        // The token the text starts in.
        let mut start = from;
        let mut seen = 0;
        for piece in &pieces {
            if seen + piece.len() > at {
                break;
            }
            seen += piece.len();
            start += 1;
        }
        a.bare_text_from = a.tokens.len();
        let lazy = a.lazy_call.as_ref();
        a.constraint = lazy.and_then(|l| l.bare_after(&a.tokens[start..]));
        if a.constraint.is_some() {
            tracing::debug!("a tool call opened without its marker: its grammar is on");
        }
    }
}
