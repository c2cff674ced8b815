//! Batch planning: which tokens of which running sequences go into the next step. A pure
//! function of the sequences' progress and the backend's limits, so it is tested without a
//! model.
//!
//! Decoding sequences (one pending token) come first, so their streams never wait behind a
//! long prompt; prefills follow, oldest first, in chunks that stop at their snapshot points.
//! While anything decodes, prefills get a smaller share of the step. What room is left goes
//! to speculative drafts: tokens checked after a decoding sequence's own. The plan lists its
//! parts in slot order: llama.cpp computes a batch in one pass only over consecutive KV
//! streams in order.

use crate::model::SeqId;

/// One running sequence, as the planner sees it.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    /// Its slot; none while it has none.
    pub seq: Option<SeqId>,
    /// Admission order (older first among prefills).
    pub order: u64,
    /// Tokens already in its KV cache.
    pub computed: usize,
    /// Tokens known (prompt and output so far): `len - computed` are pending.
    pub len: usize,
    /// The next snapshot point past `computed`, where a prefill chunk must stop.
    pub checkpoint: Option<usize>,
    /// Waiting for another sequence to compute a shared prefix: not in this step.
    pub following: bool,
    /// Tokens drafted to follow its pending one (when decoding).
    pub draft: usize,
    /// Its next image stretch not computed yet (`at..end`): computed whole in a step of
    /// its own, never split, and a prefill chunk before it stops at it.
    pub media: Option<(usize, usize)>,
}

impl Candidate {
    fn pending(&self) -> usize {
        self.len.saturating_sub(self.computed)
    }
}

/// What the backend allows a step.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Tokens in one batch.
    pub batch: usize,
    /// Prompt tokens in one batch while other sequences decode.
    pub prefill_while_decoding: usize,
}

/// One sequence's share of the batch: positions `from..from + len` of it, the last
/// `drafted` of them drafted tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Part {
    /// Index of the sequence among the candidates.
    pub index: usize,
    pub seq: SeqId,
    pub from: usize,
    pub len: usize,
    /// This completes its pending tokens: the logits after them are sampled (and after
    /// each drafted token).
    pub logits: bool,
    pub drafted: usize,
    /// This is an image stretch (see [`Candidate::media`]), not tokens for the batch.
    pub media: bool,
}

/// The next batch, in slot order, and how many runs of consecutive slots it spans (each
/// one a pass over the weights on llama.cpp's per-sequence streams).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct BatchPlan {
    pub parts: Vec<Part>,
    pub slot_runs: usize,
}

/// Plan the next batch.
pub(super) fn plan_batch(candidates: &[Candidate], limits: Limits) -> BatchPlan {
    let budget = limits.batch.max(1);
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| (candidates[i].pending() > 1, candidates[i].order));
    let decoding = candidates.iter().any(|c| c.pending() == 1);
    // While streams are decoding, prefill in smaller chunks so their next token is not
    // held up long.
    let prefill_budget = if decoding {
        limits.prefill_while_decoding.clamp(1, budget)
    } else {
        budget
    };
    let mut prefill_used = 0;
    let mut room = budget;
    let mut parts = Vec::new();
    for i in order {
        let c = &candidates[i];
        let Some(seq) = c.seq else { continue };
        if c.following {
            continue;
        }
        if room == 0 {
            break;
        }
        let pending = c.pending();
        let mut n = pending.min(room);
        let mut media = false;
        if pending > 1 {
            let share = prefill_budget.saturating_sub(prefill_used);
            n = n.min(share);
            if let Some(stop) = c.checkpoint.filter(|&at| at > c.computed) {
                n = n.min(stop - c.computed);
            }
            match c.media {
                // An image goes whole, whatever its size, where the step has room for
                // prompt work at all.
                Some((at, end)) if at == c.computed => {
                    media = share > 0;
                    n = if media { end - at } else { 0 };
                }
                Some((at, _)) if at > c.computed => n = n.min(at - c.computed),
                _ => {}
            }
            prefill_used += n;
        }
        if n == 0 {
            continue;
        }
        room = room.saturating_sub(n);
        parts.push(Part {
            index: i,
            seq,
            from: c.computed,
            len: n,
            logits: n == pending,
            drafted: 0,
            media,
        });
    }
    // Drafts last, from the room left: they may be rejected, the rest is sure work.
    for part in &mut parts {
        let c = &candidates[part.index];
        if c.pending() == 1 && room > 0 {
            part.drafted = c.draft.min(room);
            part.len += part.drafted;
            room -= part.drafted;
        }
    }
    parts.sort_by_key(|p| p.seq);
    let slot_runs = if parts.is_empty() {
        0
    } else {
        parts
            .windows(2)
            .filter(|w| w[1].seq != w[0].seq + 1)
            .count()
            + 1
    };
    BatchPlan { parts, slot_runs }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoding(seq: SeqId, order: u64) -> Candidate {
        Candidate {
            seq: Some(seq),
            order,
            computed: 10,
            len: 11,
            checkpoint: None,
            following: false,
            draft: 0,
            media: None,
        }
    }

    fn prefill(seq: SeqId, order: u64, prompt: usize) -> Candidate {
        Candidate {
            seq: Some(seq),
            order,
            computed: 0,
            len: prompt,
            checkpoint: None,
            following: false,
            draft: 0,
            media: None,
        }
    }

    fn limits(batch: usize, prefill_while_decoding: usize) -> Limits {
        Limits {
            batch,
            prefill_while_decoding,
        }
    }

    /// (seq, from, len, logits) of each part.
    fn shape(plan: &BatchPlan) -> Vec<(SeqId, usize, usize, bool)> {
        plan.parts
            .iter()
            .map(|p| (p.seq, p.from, p.len, p.logits))
            .collect()
    }

    #[test]
    fn alone_a_prompt_takes_the_whole_batch_in_chunks() {
        let plan = plan_batch(&[prefill(0, 1, 20)], limits(8, 2));
        assert_eq!(shape(&plan), vec![(0, 0, 8, false)]);
        let last = Candidate {
            computed: 16,
            ..prefill(0, 1, 20)
        };
        assert_eq!(
            shape(&plan_batch(&[last], limits(8, 2))),
            vec![(0, 16, 4, true)]
        );
    }

    #[test]
    fn decoders_go_first_and_prefills_get_their_share() {
        // Four decoding streams and two prompts; a batch of 8 with 2 prompt tokens while
        // anything decodes: every stream gets its token, the older prompt its 2.
        let c = [
            prefill(5, 1, 100),
            decoding(1, 2),
            decoding(2, 3),
            prefill(6, 4, 100),
            decoding(3, 5),
            decoding(4, 6),
        ];
        let plan = plan_batch(&c, limits(8, 2));
        assert_eq!(
            shape(&plan),
            vec![
                (1, 10, 1, true),
                (2, 10, 1, true),
                (3, 10, 1, true),
                (4, 10, 1, true),
                (5, 0, 2, false),
            ]
        );
        assert_eq!(plan.slot_runs, 1);
        assert_eq!(plan.parts[4].index, 0);
    }

    #[test]
    fn a_full_batch_leaves_the_rest_for_the_next_step() {
        let c: Vec<Candidate> = (0..5).map(|s| decoding(s, u64::from(s))).collect();
        let plan = plan_batch(&c, limits(3, 1));
        assert_eq!(
            plan.parts.iter().map(|p| p.seq).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn a_prefill_chunk_stops_at_its_snapshot_point() {
        let c = Candidate {
            computed: 4,
            checkpoint: Some(7),
            ..prefill(0, 1, 50)
        };
        assert_eq!(
            shape(&plan_batch(&[c], limits(16, 16))),
            vec![(0, 4, 3, false)]
        );
        // A point already passed does not hold it back.
        let c = Candidate {
            computed: 8,
            checkpoint: Some(7),
            ..prefill(0, 1, 50)
        };
        assert_eq!(
            shape(&plan_batch(&[c], limits(16, 16))),
            vec![(0, 8, 16, false)]
        );
    }

    #[test]
    fn followers_and_sequences_without_a_slot_wait() {
        let c = [
            Candidate {
                following: true,
                ..prefill(0, 1, 30)
            },
            Candidate {
                seq: None,
                ..decoding(1, 2)
            },
            Candidate {
                computed: 11,
                ..decoding(2, 3)
            },
        ];
        // Nothing pending in the third either: an empty plan.
        assert_eq!(plan_batch(&c, limits(8, 2)), BatchPlan::default());
    }

    #[test]
    fn the_plan_is_in_slot_order_and_counts_its_runs() {
        let c = [
            decoding(7, 1),
            decoding(2, 2),
            decoding(3, 3),
            prefill(9, 4, 5),
        ];
        let plan = plan_batch(&c, limits(16, 16));
        assert_eq!(
            plan.parts.iter().map(|p| p.seq).collect::<Vec<_>>(),
            vec![2, 3, 7, 9]
        );
        // 2-3, 7, 9.
        assert_eq!(plan.slot_runs, 3);
        assert_eq!(
            plan.parts.iter().map(|p| p.index).collect::<Vec<_>>(),
            vec![1, 2, 0, 3]
        );
    }

    #[test]
    fn older_prompts_prefill_first() {
        let c = [prefill(0, 9, 10), prefill(1, 3, 10)];
        let plan = plan_batch(&c, limits(12, 4));
        // Nothing decodes: the whole batch, the older prompt first.
        assert_eq!(shape(&plan), vec![(0, 0, 2, false), (1, 0, 10, true)]);
    }

    #[test]
    fn drafts_take_what_room_is_left_after_sure_work() {
        let c = [
            Candidate {
                draft: 4,
                ..decoding(0, 1)
            },
            Candidate {
                draft: 8,
                ..decoding(1, 2)
            },
            prefill(2, 3, 100),
        ];
        // 2 decode tokens and 4 prompt tokens first; 4 left: the older stream's draft.
        let plan = plan_batch(&c, limits(10, 4));
        assert_eq!(
            plan.parts
                .iter()
                .map(|p| (p.seq, p.from, p.len, p.drafted))
                .collect::<Vec<_>>(),
            vec![(0, 10, 5, 4), (1, 10, 1, 0), (2, 0, 4, 0)]
        );
        // Room for both drafts, the second cut short.
        let plan = plan_batch(&c, limits(16, 4));
        assert_eq!(
            plan.parts.iter().map(|p| p.drafted).collect::<Vec<_>>(),
            vec![4, 6, 0]
        );
        // A draft is only for a sequence that decodes.
        let prefilling = Candidate {
            draft: 4,
            ..prefill(0, 1, 3)
        };
        assert_eq!(plan_batch(&[prefilling], limits(16, 4)).parts[0].drafted, 0);
    }

    #[test]
    fn an_image_is_computed_whole_in_its_own_part() {
        // An image at 10..50 of a prompt of 60.
        let with_image = |computed| Candidate {
            computed,
            media: Some((10, 50)),
            ..prefill(0, 1, 60)
        };
        let parts = |c: Candidate, l| {
            plan_batch(&[c], l)
                .parts
                .iter()
                .map(|p| (p.from, p.len, p.media))
                .collect::<Vec<_>>()
        };
        // The text before it stops at it.
        assert_eq!(parts(with_image(0), limits(32, 8)), vec![(0, 10, false)]);
        // Then the image, whole, though it is larger than the batch.
        assert_eq!(parts(with_image(10), limits(32, 8)), vec![(10, 40, true)]);
        // While others decode it still goes whole, where prompt work has a share.
        let plan = plan_batch(&[decoding(1, 2), with_image(10)], limits(32, 8));
        assert_eq!(
            plan.parts
                .iter()
                .map(|p| (p.seq, p.len, p.media))
                .collect::<Vec<_>>(),
            vec![(0, 40, true), (1, 1, false)]
        );
        // A prefill that used the share leaves it to the next step.
        let plan = plan_batch(&[prefill(2, 0, 100), with_image(10)], limits(32, 32));
        assert_eq!(shape(&plan), vec![(2, 0, 32, false)]);
    }
}
