//! Prefix reuse: where a new sequence's KV comes from (a cached slot, a snapshot, or a
//! running sequence computing the same prefix), and what a sequence leaves to the prefix
//! cache as it goes (snapshot points) and when it ends (its slot, or a snapshot in RAM).

use crate::cache::{Hit, Source};
use crate::model::{SeqId, Tokenizer};

use super::active::Active;
use super::Scheduler;

/// The fewest prompt tokens worth waiting for another running sequence to compute.
pub(super) const MIN_FOLLOW: usize = 8;

impl Scheduler {
    /// A running sequence whose tokens start with more of `active`'s than the cache gave
    /// it (`reused`): its admission order and the shared length. Requests that come
    /// together with the same system prompt (subagents, side requests) compute it once:
    /// the others wait for it and copy it.
    pub(super) fn leader_for(&self, active: &Active, reused: usize) -> Option<(u64, usize)> {
        // The copy is cut back to the shared length, which sliding-window caches can't do.
        if !self.runner.can_truncate() {
            return None;
        }
        // The last prompt token is computed here in any case, for its logits.
        let most = active.tokens.len().saturating_sub(1);
        self.running
            .iter()
            .filter_map(|leader| {
                let len = common_prefix(&leader.tokens, &active.tokens).min(most);
                let len = before_media(&active.job.request.media, len);
                // A copy moves all of the leader's cells, cheap next to computing them
                // but not free: the gain must not be a sliver of them.
                let gain = len.saturating_sub(reused);
                (gain >= MIN_FOLLOW.max(leader.tokens.len() / 256)).then_some((leader.order, len))
            })
            .max_by_key(|&(order, len)| (len, std::cmp::Reverse(order)))
    }

    /// Followers whose leader has computed the shared prefix copy it; those whose leader
    /// left first take what the prefix cache has now.
    pub(super) fn take_over_prefixes(&mut self) {
        for i in 0..self.running.len() {
            let (Some(follow), Some(seq)) = (self.running[i].follow, self.running[i].seq) else {
                continue;
            };
            let leader = self
                .running
                .iter()
                .find(|l| l.order == follow.leader)
                .map(|l| (l.seq, l.computed));
            let got = match leader {
                Some((_, computed)) if computed < follow.len => continue,
                Some((Some(src), _)) => {
                    self.runner.release(seq);
                    if self.runner.share(src, seq, follow.len as u32) {
                        follow.len
                    } else {
                        0
                    }
                }
                _ => {
                    self.runner.release(seq);
                    let tokens = self.running[i].tokens.clone();
                    let hit = self.cache.lookup(&tokens);
                    self.load_prefix(seq, &tokens, hit)
                }
            };
            let got = self.cut_before_media(seq, &self.running[i].job.request.media.clone(), got);
            tracing::debug!(shared = got, "prefix taken from a running sequence");
            // Emptying the slot dropped its sampler too.
            self.runner
                .start_sampling(seq, &self.running[i].job.request.sampling);
            let a = &mut self.running[i];
            a.follow = None;
            a.computed = got;
            if follow.count_usage {
                a.cached = Some(got.min(a.prompt_len) as u32);
                let prompt_len = a.prompt_len;
                self.count_prompt(prompt_len, got);
            }
        }
    }

    /// `seq` holds `len` tokens of a prompt with these images. An image is computed whole,
    /// so a prefix that ends inside one is cut back to its start (or dropped, where the
    /// cache can't be cut). Returns what `seq` holds then.
    pub(super) fn cut_before_media(
        &mut self,
        seq: SeqId,
        media: &[crate::Media],
        len: usize,
    ) -> usize {
        let cut = before_media(media, len);
        if cut == len {
            return len;
        }
        if self.runner.truncate(seq, cut as u32) {
            return cut;
        }
        self.runner.release(seq);
        0
    }

    /// A follower leaving before its prefix came: its prompt is counted as it stands.
    pub(super) fn unfollow(&self, active: &mut Active) {
        if let Some(follow) = active.follow.take() {
            if follow.count_usage {
                self.count_prompt(active.prompt_len, active.computed);
            }
        }
    }

    /// A slot for `tokens`, holding the longest cached prefix of them: the slot and how
    /// many tokens it holds. None when no slot is free.
    pub(super) fn place(&mut self, tokens: &[crate::TokenId]) -> Option<(SeqId, usize)> {
        if self.runner.shares_cells() {
            // Take the slot first: freeing one may move an entry out of the context,
            // and the lookup must not return it as a context entry after that.
            let seq = self.take_slot()?;
            let hit = self.cache.lookup(tokens);
            return Some((seq, self.load_prefix(seq, tokens, hit)));
        }
        // Cells of each sequence's own: sharing would copy, so continue in the slot
        // that holds the prefix when there is one.
        let hit = self.cache.lookup(tokens);
        if let Some(Hit {
            source: Source::Context(src),
            len,
            source_len,
            ..
        }) = hit
        {
            self.cache.adopt(src, len, self.runner.as_mut());
            if len == source_len || self.runner.truncate(src, len as u32) {
                return Some((src, self.keep_shared(src, tokens, hit)));
            }
            self.runner.release(src);
            return Some((src, 0));
        }
        let seq = self.take_slot()?;
        Some((seq, self.load_prefix(seq, tokens, hit)))
    }

    /// Fill the empty `seq` with a cached prefix of `tokens`; returns its length.
    fn load_prefix(&mut self, seq: SeqId, tokens: &[crate::TokenId], hit: Option<Hit>) -> usize {
        let Some(hit) = hit else {
            return 0;
        };
        let loaded = match &hit.source {
            Source::Context(src) => self.runner.share(*src, seq, hit.len as u32),
            Source::Snapshot(bytes) => loop {
                match self.runner.restore(seq, bytes) {
                    Ok(()) => {
                        break hit.len == hit.source_len
                            || self.runner.truncate(seq, hit.len as u32);
                    }
                    // No room for it: make some by moving a cached entry out of the
                    // context, then try again.
                    Err(_) if self.evict_one() => continue,
                    Err(e) => {
                        tracing::warn!("cannot restore a cached prefix: {e}");
                        break false;
                    }
                }
            },
        };
        if !loaded {
            self.runner.release(seq);
            return 0;
        }
        self.keep_shared(seq, tokens, Some(hit))
    }

    /// `seq` holds the hit's prefix of `tokens`. A prefix other conversations start with
    /// too gets an entry of its own: another slot sharing it when cells are shared, else
    /// a snapshot in RAM. Returns the prefix length.
    fn keep_shared(&mut self, seq: SeqId, tokens: &[crate::TokenId], hit: Option<Hit>) -> usize {
        let Some(hit) = hit else {
            return 0;
        };
        if !hit.shared_prefix {
            return hit.len;
        }
        let prefix = &tokens[..hit.len];
        if !self.runner.shares_cells() {
            match self.runner.save(seq) {
                Ok(bytes) => self.cache.insert_snapshot(prefix, hit.len, bytes, true),
                Err(e) => tracing::warn!("cannot save a shared prefix: {e}"),
            }
        } else if let Some(slot) = self.free.pop() {
            if self.runner.share(seq, slot, hit.len as u32) {
                let freed = self.cache.insert_context(prefix, hit.len, slot, true);
                self.release_slots(freed);
            } else {
                self.free.push(slot);
            }
        }
        hit.len
    }

    /// A finished request's slot becomes a cache entry (prompt and reply).
    pub(super) fn keep(&mut self, active: &Active) {
        let Some(seq) = active.seq else { return };
        let computed = &active.tokens[..active.computed];
        if computed.is_empty() {
            self.runner.release(seq);
            self.free.push(seq);
            return;
        }
        let freed =
            self.cache
                .insert_context(computed, active.prompt_len.min(computed.len()), seq, false);
        self.release_slots(freed);
    }

    /// Save what a request computed to RAM and free its slot (cancelled or preempted).
    pub(super) fn stash(&mut self, active: &mut Active) {
        self.unfollow(active);
        let Some(seq) = active.seq.take() else { return };
        if active.computed > 0 {
            match self.runner.save(seq) {
                Ok(bytes) => self.cache.insert_snapshot(
                    &active.tokens[..active.computed],
                    active.prompt_len.min(active.computed),
                    bytes,
                    false,
                ),
                Err(e) => tracing::warn!("cannot save a sequence: {e}"),
            }
        }
        self.runner.release(seq);
        self.free.push(seq);
    }

    /// A snapshot point: keep the slot's state as it is now, in a cache slot sharing it
    /// (or in RAM); `shared` when other conversations start with it too.
    pub(super) fn checkpoint(&mut self, seq: SeqId, tokens: &[crate::TokenId], shared: bool) {
        if !self.runner.shares_cells() {
            // A slot of its own would cost a whole sequence's cells: RAM instead.
            let started = std::time::Instant::now();
            match self.runner.save(seq) {
                Ok(bytes) => {
                    tracing::debug!(
                        tokens = tokens.len(),
                        shared,
                        ms = started.elapsed().as_millis() as u64,
                        "snapshot point saved"
                    );
                    self.cache
                        .insert_snapshot(tokens, tokens.len(), bytes, shared)
                }
                Err(e) => tracing::warn!("cannot save a checkpoint: {e}"),
            }
            return;
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => match self.cache.evict_context(self.runner.as_mut()) {
                Some(s) => s,
                None => return,
            },
        };
        if self.runner.share(seq, slot, tokens.len() as u32) {
            let freed = self
                .cache
                .insert_context(tokens, tokens.len(), slot, shared);
            self.release_slots(freed);
        } else {
            self.free.push(slot);
        }
    }
}

/// `len`, or the start of the image it ends inside.
pub(super) fn before_media(media: &[crate::Media], len: usize) -> usize {
    media
        .iter()
        .find(|m| m.splits_at(len))
        .map_or(len, |m| m.at)
}

/// Where a prompt's snapshots go, beyond what is cached already (`reused`), each with
/// whether other conversations start with it too:
/// - the client's cache breakpoints (`points`) that end the system prompt and tools,
///   which other conversations share: so they outlive this conversation's entry;
/// - when the backend can't cut a sequence back, where only whole entries can be used:
///   the client's other breakpoints too, and the end of every message (after each
///   end-of-turn token).
///
/// When it can, every prefix of the finished request's entry serves later requests, so
/// other points would only cost a copy.
pub(super) fn checkpoints(
    prompt: &[crate::TokenId],
    reused: usize,
    points: &[crate::CachePoint],
    can_truncate: bool,
    tokenizer: &dyn Tokenizer,
) -> Vec<(usize, bool)> {
    let worth = |at: usize| at > reused && at < prompt.len();
    let mut out: Vec<(usize, bool)> = points
        .iter()
        .filter(|p| worth(p.at) && (p.shared || !can_truncate))
        .map(|p| (p.at, p.shared))
        .collect();
    if !can_truncate {
        out.extend(
            prompt
                .iter()
                .enumerate()
                .filter(|(i, t)| worth(*i + 1) && tokenizer.is_end_of_generation(**t))
                .map(|(i, _)| (i + 1, false)),
        );
    }
    // One snapshot a position; a shared one where both fall together.
    out.sort_by_key(|&(at, shared)| (at, !shared));
    out.dedup_by_key(|p| p.0);
    out
}

fn common_prefix(a: &[crate::TokenId], b: &[crate::TokenId]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::checkpoints;
    use crate::testing::{ByteTokenizer, EOG};
    use crate::CachePoint;

    #[test]
    fn snapshot_points_are_the_breakpoints_worth_a_copy() {
        // "sys" EOG "question" EOG "a:"
        let mut prompt: Vec<crate::TokenId> =
            b"sys".iter().map(|&b| crate::TokenId::from(b)).collect();
        prompt.push(EOG);
        prompt.extend(b"question".iter().map(|&b| crate::TokenId::from(b)));
        prompt.push(EOG);
        prompt.extend(b"a:".iter().map(|&b| crate::TokenId::from(b)));
        let points = [
            CachePoint {
                at: 4,
                shared: true,
            },
            CachePoint {
                at: 8,
                shared: false,
            },
            CachePoint {
                at: 13,
                shared: false,
            },
        ];
        let t = &ByteTokenizer;
        // Cutting back serves every prefix of the finished entry: only the shared point.
        assert_eq!(checkpoints(&prompt, 0, &points, true, t), vec![(4, true)]);
        // Without it: every breakpoint and every message end, one snapshot a position.
        assert_eq!(
            checkpoints(&prompt, 0, &points, false, t),
            vec![(4, true), (8, false), (13, false)]
        );
        // Nothing already cached, nothing at the prompt's end.
        assert_eq!(
            checkpoints(&prompt, 8, &points, false, t),
            vec![(13, false)]
        );
        let end = [CachePoint {
            at: prompt.len(),
            shared: true,
        }];
        assert!(checkpoints(&prompt, 0, &end, true, t).is_empty());
    }
}
