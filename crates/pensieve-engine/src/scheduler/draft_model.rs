//! Drafts from a smaller model of the same vocabulary (`--draft-model`, `--speculative
//! draft`). The draft model has a KV slot for each of the model's slots and holds there the
//! sequence's last tokens, at most `window` of them (its position 0 is the sequence's
//! position `start`): a small model drafts from recent context about as well as from all
//! of it, and a 30k-token Claude Code prompt then costs it a window, not 30k tokens.
//!
//! Each step it catches up with what each drafting sequence gained since (what it held
//! past the first difference, rejected drafts among it, is cut off), then runs greedy
//! steps, all sequences in one batch, until each has the tokens asked of it. Catching up
//! takes at most a batch of its tokens a step, drafting sequences first: a prompt is taken
//! in while the model computes it, so that the first draft does not wait for a window's
//! worth of tokens, and a long one never stalls every stream at once.
//!
//! Greedy drafts are one token with certainty at each position, so the acceptance rule of
//! prompt lookup holds unchanged (see [`crate::speculate`]).

use crate::model::{BatchToken, ModelRunner, Pick, RunnerError, SeqId, TokenId};
use crate::speculate::StepCost;
use crate::SamplingParams;

/// What the draft model is asked for one sequence.
pub(crate) struct Want<'a> {
    /// Its slot; one the draft model does not have (`SeqId::MAX`): nothing is asked.
    pub seq: SeqId,
    /// The sequence's tokens, the pending one last.
    pub tokens: &'a [TokenId],
    /// Tokens to draft after them; 0: only catch up with them (a prompt the model is
    /// computing), so that its first draft does not wait for the whole window.
    pub k: usize,
}

/// The draft model and what its slots hold.
pub(crate) struct DraftModel {
    runner: Box<dyn ModelRunner>,
    held: Vec<Held>,
    window: usize,
    /// It failed once: no more drafts (the model's own output is unaffected).
    failed: bool,
    /// What its steps cost by their size: drafting a token more costs the model's step
    /// one of them.
    cost: StepCost,
}

/// What one slot of the draft model holds.
#[derive(Debug, Default, Clone)]
struct Held {
    /// The sequence position of the slot's position 0.
    start: usize,
    /// The sequence's tokens from `start` that the slot's KV holds.
    tokens: Vec<TokenId>,
}

impl DraftModel {
    /// `window`: the most positions of a sequence the draft model holds (its context).
    pub fn new(mut runner: Box<dyn ModelRunner>, window: usize) -> DraftModel {
        let greedy = SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        };
        let slots = runner.max_sequences();
        for seq in 0..slots {
            runner.start_sampling(seq as SeqId, &greedy);
        }
        DraftModel {
            runner,
            held: vec![Held::default(); slots],
            window: window.max(2 * crate::speculate::MAX_DRAFT + 2),
            failed: false,
            cost: StepCost::default(),
        }
    }

    /// What one of its steps costs for `sequences` drafting sequences, once measured.
    pub fn step_seconds(&self, sequences: usize) -> Option<f64> {
        self.cost.seconds(sequences.max(1))
    }

    fn decode(&mut self, batch: &[BatchToken]) -> Result<(), RunnerError> {
        let started = std::time::Instant::now();
        self.runner.decode(batch)?;
        let seconds = self.runner.modelled_step_seconds();
        let seconds = seconds.unwrap_or(started.elapsed().as_secs_f64());
        self.cost.record(batch.len(), seconds);
        Ok(())
    }

    /// Up to `k` drafted tokens for each of `wants`, in their order: none for a sequence
    /// still catching up, or with no slot here. `decoding`: some sequence of the model
    /// decodes this step, so catching up takes a share of a batch, as prefill does then;
    /// else a whole one (the step computes a prompt and takes long anyway).
    pub fn draft(&mut self, wants: &[Want<'_>], decoding: bool) -> Vec<Vec<TokenId>> {
        let mut drafts = vec![Vec::new(); wants.len()];
        if self.failed {
            return drafts;
        }
        if let Err(e) = self.try_draft(wants, decoding, &mut drafts) {
            tracing::warn!("the draft model failed ({e}); drafting stops");
            self.failed = true;
            drafts.iter_mut().for_each(Vec::clear);
        }
        drafts
    }

    fn try_draft(
        &mut self,
        wants: &[Want<'_>],
        decoding: bool,
        drafts: &mut [Vec<TokenId>],
    ) -> Result<(), RunnerError> {
        // Sequences that draft first, then those that only catch up (a prompt being
        // computed), while the step's budget lasts.
        let mut order: Vec<usize> = (0..wants.len())
            .filter(|&i| (wants[i].seq as usize) < self.held.len())
            .filter(|&i| wants[i].tokens.len() > usize::from(wants[i].k == 0))
            .collect();
        order.sort_by_key(|&i| (wants[i].k == 0, wants[i].seq));
        let mut room = if decoding {
            self.runner.prefill_while_decoding()
        } else {
            self.runner.batch_size()
        }
        .max(1);
        // (want, first position fed, tokens fed, whether that catches it up)
        let mut feeds: Vec<(usize, usize, usize, bool)> = Vec::new();
        for i in order {
            if room == 0 {
                break;
            }
            let w = &wants[i];
            let held = &mut self.held[w.seq as usize];
            let start = window_start(held.start, w.tokens.len(), w.k, self.window);
            let mut keep = if start == held.start {
                common_prefix(&held.tokens, &w.tokens[start..])
            } else {
                0
            };
            // The last token is evaluated again if need be: its logits give the first
            // draft. Catching up only, it waits for the draft.
            keep = keep.min(w.tokens.len() - start - 1);
            if keep < held.tokens.len() {
                if !self.runner.truncate(w.seq, keep as u32) {
                    return Err(RunnerError::Failed("its cache cannot be cut back".into()));
                }
                held.tokens.truncate(keep);
            }
            held.start = start;
            let end = w.tokens.len() - usize::from(w.k == 0);
            let fed = (end - start - keep).min(room);
            room -= fed;
            if fed > 0 {
                feeds.push((i, keep, fed, w.k > 0 && start + keep + fed == end));
            }
        }
        // Tokens of a batch come a sequence at a time, in slot order.
        feeds.sort_by_key(|&(i, ..)| wants[i].seq);
        let mut batch: Vec<BatchToken> = Vec::new();
        // (want, batch index of the logits its first draft comes from)
        let mut ready: Vec<(usize, usize)> = Vec::new();
        for (i, keep, fed, catches_up) in feeds {
            let w = &wants[i];
            let held = &mut self.held[w.seq as usize];
            let from = held.start + keep;
            for (j, &token) in w.tokens[from..from + fed].iter().enumerate() {
                batch.push(BatchToken {
                    seq: w.seq,
                    token,
                    pos: (keep + j) as u32,
                    logits: catches_up && j + 1 == fed,
                });
            }
            held.tokens.extend_from_slice(&w.tokens[from..from + fed]);
            if catches_up {
                ready.push((i, batch.len() - 1));
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.decode(&batch)?;
        // Greedy steps until every ready sequence has its tokens; each step's batch holds
        // the token each sampled last.
        while !ready.is_empty() {
            let picks: Vec<Pick<'_>> = ready
                .iter()
                .map(|&(i, index)| Pick {
                    seq: wants[i].seq,
                    index,
                    mask: None,
                })
                .collect();
            let tokens = self.runner.sample_all(&picks);
            batch.clear();
            let mut next = Vec::with_capacity(ready.len());
            for (&(i, _), token) in ready.iter().zip(tokens) {
                drafts[i].push(token);
                if drafts[i].len() < wants[i].k {
                    let held = &mut self.held[wants[i].seq as usize];
                    batch.push(BatchToken {
                        seq: wants[i].seq,
                        token,
                        pos: held.tokens.len() as u32,
                        logits: true,
                    });
                    held.tokens.push(token);
                    next.push((i, batch.len() - 1));
                }
            }
            ready = next;
            if !batch.is_empty() {
                self.decode(&batch)?;
            }
        }
        Ok(())
    }
}

/// Where the draft model's window over a sequence of `len` tokens starts, to draft `k`
/// more: where it did while they fit in it, else so that half the window is left for the
/// sequence to grow into (moving it means computing the window again).
fn window_start(current: usize, len: usize, k: usize, window: usize) -> usize {
    if current < len && len + k <= current + window {
        current
    } else if len + k <= window {
        // Another sequence in the slot, that fits.
        0
    } else {
        (len + k - window / 2).min(len.saturating_sub(1))
    }
}

fn common_prefix(a: &[TokenId], b: &[TokenId]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_stays_while_the_sequence_fits_in_it() {
        // A sequence that fits starts at 0 and stays there.
        assert_eq!(window_start(0, 10, 4, 64), 0);
        assert_eq!(window_start(0, 60, 4, 64), 0);
        // One token more: half a window back from where the draft would end.
        assert_eq!(window_start(0, 61, 4, 64), 33);
        // It stays until the sequence outgrows it again.
        assert_eq!(window_start(33, 90, 4, 64), 33);
        assert_eq!(window_start(33, 94, 4, 64), 66);
        // Another request in the slot, shorter than where the window was: from 0.
        assert_eq!(window_start(66, 20, 4, 64), 0);
        // A long new prompt: its last half window.
        assert_eq!(window_start(66, 1000, 4, 64), 972);
    }

    #[test]
    fn held_tokens_are_kept_up_to_the_first_difference() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
    }
}
