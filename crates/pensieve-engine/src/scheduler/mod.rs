//! The engine thread: continuous batching over one backend.
//!
//! Every step builds one batch: the next token of every decoding sequence first, then
//! chunks of pending prefills under the token budget, so a long prompt never stalls the
//! streams already running. Requests are admitted while a sequence slot is free and the
//! KV cells they need fit; a sequence that runs the cache out of cells is preempted (its
//! computed prefix goes to the prefix cache) and resumed later where it was. A cancelled
//! request leaves the batch and frees its slot before the next step. Requests that arrive
//! together with a long common prefix (one system prompt, several subagents) compute it
//! once: the later ones wait for the first to get past it and copy its KV.

mod active;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cache::{CacheConfig, Hit, PrefixCache, Source};
use crate::constrain::{Constraint, LazyCall};
use crate::metrics::{EngineMetrics, GaugeShare};
use crate::model::{BatchToken, ModelRunner, Pick, RunnerError, SeqId, TokenMask, Tokenizer};
use crate::output::BareName;
use crate::EngineError;
pub(crate) use active::{Active, Job};
use active::{Follow, Step};

/// The fewest prompt tokens worth waiting for another running sequence to compute.
const MIN_FOLLOW: usize = 8;

/// What the engine thread is asked to do.
pub(crate) enum Command {
    /// Boxed: a request's grammar makes it large.
    Run(Box<Job>),
    /// Wake up and notice the shutdown.
    Stop,
}

/// Limits of the scheduler.
#[derive(Debug, Clone)]
pub(crate) struct SchedulerConfig {
    /// Sequences running at once.
    pub parallel: usize,
    pub cache: CacheConfig,
    /// Tokens that render as the marker text they are.
    pub markers: HashMap<crate::TokenId, Vec<u8>>,
}

/// State shared with the engine handle.
pub(crate) struct Counters {
    /// Requests submitted and not yet admitted (the queue depth).
    pub waiting: AtomicUsize,
    /// Sequences admitted and not finished.
    pub running: AtomicUsize,
}

pub(crate) struct Scheduler {
    runner: Box<dyn ModelRunner>,
    tokenizer: Arc<dyn Tokenizer>,
    commands: mpsc::UnboundedReceiver<Command>,
    shutdown: CancellationToken,
    counters: Arc<Counters>,
    metrics: Arc<EngineMetrics>,
    /// This engine's part of the gauges (other models' engines may share `metrics`).
    gauges: GaugeShare,
    parallel: usize,
    /// Slots no request or cache entry holds.
    free: Vec<SeqId>,
    waiting: VecDeque<Active>,
    running: Vec<Active>,
    cache: PrefixCache,
    /// Tokens that render as the marker text they are (tool calls, reasoning).
    markers: HashMap<crate::TokenId, Vec<u8>>,
    admissions: u64,
    closed: bool,
}

/// Where one batch entry came from.
struct Planned {
    /// Index into `running`.
    index: usize,
    tokens: usize,
    /// Batch index of the logits to sample from, when this completes the pending tokens.
    logits: Option<usize>,
}

impl Scheduler {
    pub fn new(
        runner: Box<dyn ModelRunner>,
        tokenizer: Arc<dyn Tokenizer>,
        commands: mpsc::UnboundedReceiver<Command>,
        shutdown: CancellationToken,
        counters: Arc<Counters>,
        metrics: Arc<EngineMetrics>,
        config: SchedulerConfig,
    ) -> Scheduler {
        let slots = runner.max_sequences().max(1);
        let parallel = config.parallel.clamp(1, slots);
        let cache = PrefixCache::new(
            config.cache,
            runner.can_truncate(),
            runner.batch_invariant(),
            &runner.fingerprint(),
        );
        Scheduler {
            free: (0..slots as SeqId).rev().collect(),
            runner,
            tokenizer,
            commands,
            shutdown,
            counters,
            metrics,
            gauges: GaugeShare::default(),
            parallel,
            waiting: VecDeque::new(),
            running: Vec::new(),
            cache,
            markers: config.markers,
            admissions: 0,
            closed: false,
        }
    }

    /// The prefix cache's index, for estimates off this thread.
    pub fn cache_index(&self) -> crate::cache::CacheIndex {
        self.cache.index()
    }

    /// Run until shutdown (or until every engine handle is gone).
    pub fn run(mut self) {
        // The disk tier is known before the first request.
        self.publish();
        loop {
            self.receive();
            if self.shutdown.is_cancelled() || (self.closed && self.is_idle()) {
                break;
            }
            self.drop_cancelled();
            self.admit();
            if !self.running.is_empty() {
                self.step();
            }
            self.publish();
        }
        self.stop();
    }

    fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    /// Take new requests; block while there is nothing to do.
    fn receive(&mut self) {
        if self.is_idle() && !self.closed {
            match self.commands.blocking_recv() {
                Some(command) => self.take(command),
                None => self.closed = true,
            }
        }
        loop {
            match self.commands.try_recv() {
                Ok(command) => self.take(command),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.closed = true;
                    break;
                }
            }
        }
    }

    fn take(&mut self, command: Command) {
        match command {
            Command::Run(job) => self.waiting.push_back(Active::new(*job)),
            Command::Stop => {}
        }
    }

    /// Requests whose client left: out of the queue, and out of the batch with their
    /// slot freed (what they computed is kept in RAM for a retry).
    fn drop_cancelled(&mut self) {
        let mut gone = 0;
        self.waiting.retain(|a| {
            let cancelled = a.is_cancelled();
            // Preempted requests were taken off the queue count when first admitted.
            if cancelled && a.cached.is_none() {
                gone += 1;
            }
            !cancelled
        });
        self.counters.waiting.fetch_sub(gone, Ordering::Relaxed);
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].is_cancelled() {
                let mut active = self.running.swap_remove(i);
                tracing::debug!(computed = active.computed, "request cancelled");
                self.stash(&mut active);
            } else {
                i += 1;
            }
        }
    }

    /// Move waiting requests into free slots while their KV fits.
    fn admit(&mut self) {
        while self.running.len() < self.parallel {
            let Some(next) = self.waiting.front() else {
                return;
            };
            // Admission by capacity: the cells of what runs plus the newcomer's prompt.
            let in_use: usize = self.running.iter().map(|a| a.tokens.len()).sum();
            let cells = self.runner.cache_cells();
            if !self.running.is_empty() && in_use + next.tokens.len() > cells {
                return;
            }
            let Some(mut active) = self.waiting.pop_front() else {
                return;
            };
            let Some((seq, reused)) = self.place(&active.tokens) else {
                self.waiting.push_front(active);
                return;
            };
            // First admission (not a resumed preempted one): it leaves the queue.
            let first = active.cached.is_none();
            if first {
                self.counters.waiting.fetch_sub(1, Ordering::Relaxed);
            }
            self.admissions += 1;
            active.seq = Some(seq);
            active.mark_admitted(self.admissions, reused);
            active.follow = self
                .leader_for(&active, reused)
                .map(|(leader, len)| Follow {
                    leader,
                    len,
                    count_usage: first,
                });
            if first && active.follow.is_none() {
                self.count_prompt(active.prompt_len, reused);
            }
            active.checkpoints = checkpoints(
                &active.tokens[..active.prompt_len],
                reused,
                &active.job.request.cache_points,
                self.runner.can_truncate(),
                self.tokenizer.as_ref(),
            );
            self.runner
                .start_sampling(seq, &active.job.request.sampling);
            self.running.push(active);
        }
    }

    fn count_prompt(&self, prompt_len: usize, reused: usize) {
        let cached = reused.min(prompt_len);
        self.metrics.add_prompt_tokens(prompt_len as u64);
        self.metrics.add_cached_prompt_tokens(cached as u64);
        self.metrics
            .add_cache_created_tokens((prompt_len - cached) as u64);
    }

    /// A running sequence whose tokens start with more of `active`'s than the cache gave
    /// it (`reused`): its admission order and the shared length. Requests that come
    /// together with the same system prompt (subagents, side requests) compute it once:
    /// the others wait for it and copy it.
    fn leader_for(&self, active: &Active, reused: usize) -> Option<(u64, usize)> {
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
                // A copy moves all of the leader's cells, cheap next to computing them
                // but not free: the gain must not be a sliver of them.
                let gain = len.saturating_sub(reused);
                (gain >= MIN_FOLLOW.max(leader.tokens.len() / 256)).then_some((leader.order, len))
            })
            .max_by_key(|&(order, len)| (len, std::cmp::Reverse(order)))
    }

    /// Followers whose leader has computed the shared prefix copy it; those whose leader
    /// left first take what the prefix cache has now.
    fn take_over_prefixes(&mut self) {
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

    /// A follower leaving before its prefix came: its prompt is counted as it stands.
    fn unfollow(&self, active: &mut Active) {
        if let Some(follow) = active.follow.take() {
            if follow.count_usage {
                self.count_prompt(active.prompt_len, active.computed);
            }
        }
    }

    /// A slot for `tokens`, holding the longest cached prefix of them: the slot and how
    /// many tokens it holds. None when no slot is free.
    fn place(&mut self, tokens: &[crate::TokenId]) -> Option<(SeqId, usize)> {
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

    /// One batch: decode tokens first, then prefill chunks.
    fn step(&mut self) {
        self.take_over_prefixes();
        let budget = self.runner.batch_size().max(1);
        let mut batch: Vec<BatchToken> = Vec::with_capacity(budget);
        let mut plan: Vec<Planned> = Vec::new();
        let mut order: Vec<usize> = (0..self.running.len()).collect();
        // Decoders (one pending token) first, then prefills oldest first.
        order.sort_by_key(|&i| (self.running[i].pending() > 1, self.running[i].order));
        let decoding = order.iter().any(|&i| self.running[i].pending() == 1);
        // While streams are decoding, prefill in smaller chunks so their next token
        // is not held up long.
        let prefill_budget = if decoding {
            self.runner.prefill_while_decoding().clamp(1, budget)
        } else {
            budget
        };
        let mut prefill_used = 0;
        let mut room = budget;
        // What each sequence contributes: (index into `running`, its slot, tokens).
        let mut chosen: Vec<(usize, SeqId, usize)> = Vec::new();
        for i in order {
            let a = &self.running[i];
            let Some(seq) = a.seq else { continue };
            if a.follow.is_some() {
                continue;
            }
            if room == 0 {
                break;
            }
            let mut n = a.pending().min(room);
            if a.pending() > 1 {
                n = n.min(prefill_budget.saturating_sub(prefill_used));
                if let Some(&(stop, _)) = a.checkpoints.iter().find(|(c, _)| *c > a.computed) {
                    n = n.min(stop - a.computed);
                }
                if n == 0 {
                    continue;
                }
                prefill_used += n;
            }
            room -= n;
            chosen.push((i, seq, n));
        }
        // In slot order: llama.cpp runs one KV stream per slot and computes a batch in
        // one pass only over consecutive slots, in order; anything else splits it into
        // several passes, each reading all the weights again.
        chosen.sort_by_key(|&(_, seq, _)| seq);
        let slot_runs = chosen.windows(2).filter(|w| w[1].1 != w[0].1 + 1).count() + 1;
        for (i, seq, n) in chosen {
            let a = &self.running[i];
            let completes = n == a.pending();
            for k in 0..n {
                let pos = a.computed + k;
                batch.push(BatchToken {
                    seq,
                    token: a.tokens[pos],
                    pos: pos as u32,
                    logits: completes && k == n - 1,
                });
            }
            plan.push(Planned {
                index: i,
                tokens: n,
                logits: completes.then(|| batch.len() - 1),
            });
        }
        if batch.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let result = self.runner.decode(&batch);
        let decoded = started.elapsed();
        match result {
            Ok(()) => {
                let sampling = self.after_decode(plan);
                tracing::trace!(
                    tokens = batch.len(),
                    slot_runs,
                    decode_us = decoded.as_micros() as u64,
                    sample_us = sampling.as_micros() as u64,
                    step_us = started.elapsed().as_micros() as u64,
                    "step"
                );
            }
            Err(RunnerError::CacheFull) => self.relieve_pressure(),
            Err(RunnerError::Failed(e)) => {
                tracing::error!("decode failed: {e}");
                self.fail_all(EngineError::Backend(e));
            }
            Err(RunnerError::Restarted(e)) => {
                tracing::error!("the model backend restarted: {e}");
                self.fail_all(EngineError::BackendRestarted(e));
            }
        }
    }

    /// Account for a decoded batch and hand out its sampled tokens. Returns how long the
    /// sampling took (for the step trace).
    fn after_decode(&mut self, plan: Vec<Planned>) -> std::time::Duration {
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
            let mask = a.constraint.as_mut().and_then(Constraint::mask);
            if mask.is_none() {
                a.constraint = None;
            }
            due.push((p.index, seq, index, mask));
        }
        // All at once: the backend may sample them in parallel.
        let picks: Vec<Pick<'_>> = due
            .iter()
            .map(|(_, seq, index, mask)| Pick {
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
        for ((i, _, index, _), token) in due.into_iter().zip(tokens) {
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
            active.finish(reason);
        }
        sampling
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

    /// A finished request's slot becomes a cache entry (prompt and reply).
    fn keep(&mut self, active: &Active) {
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
    fn stash(&mut self, active: &mut Active) {
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
    fn checkpoint(&mut self, seq: SeqId, tokens: &[crate::TokenId], shared: bool) {
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

    /// The cache ran out of cells: evict a cached entry, or else preempt the newest
    /// running sequence. The batch is built again next step.
    fn relieve_pressure(&mut self) {
        if self.evict_one() {
            return;
        }
        if self.running.len() > 1 {
            let newest = (0..self.running.len())
                .max_by_key(|&i| self.running[i].order)
                .unwrap_or(0);
            let mut active = self.running.swap_remove(newest);
            tracing::info!(
                tokens = active.tokens.len(),
                "KV cache full: preempting a sequence"
            );
            self.stash(&mut active);
            active.preempted();
            self.waiting.push_front(active);
            return;
        }
        tracing::error!("the KV cache is full with one sequence running");
        self.fail_all(EngineError::Backend("the KV cache is full".into()));
    }

    /// A backend failure: every running request ends with it, and cached slots are
    /// dropped (their state is unknown).
    fn fail_all(&mut self, error: EngineError) {
        for mut active in std::mem::take(&mut self.running) {
            self.unfollow(&mut active);
            active.fail(error.clone());
            if let Some(seq) = active.seq {
                self.runner.release(seq);
                self.free.push(seq);
            }
        }
        let freed = self.cache.drop_context(self.runner.as_mut());
        self.free.extend(freed);
    }

    /// Move the least recently used context entry out of the KV cache; false when none.
    fn evict_one(&mut self) -> bool {
        match self.cache.evict_context(self.runner.as_mut()) {
            Some(slot) => {
                self.free.push(slot);
                true
            }
            None => false,
        }
    }

    /// A slot for a new sequence: a free one next to the running slots if there is one
    /// (see [`pick_slot`]), else one a cache entry gives up.
    fn take_slot(&mut self) -> Option<SeqId> {
        let running: Vec<SeqId> = self.running.iter().filter_map(|a| a.seq).collect();
        match pick_slot(&self.free, &running) {
            Some(i) => Some(self.free.swap_remove(i)),
            None => self.cache.evict_context(self.runner.as_mut()),
        }
    }

    fn release_slots(&mut self, slots: Vec<SeqId>) {
        for s in slots {
            self.runner.release(s);
            self.free.push(s);
        }
    }

    /// Gauges for `/metrics` (queue depth is read at scrape time, from every engine).
    fn publish(&mut self) {
        self.counters
            .running
            .store(self.running.len(), Ordering::Relaxed);
        self.cache.forget_failed_writes();
        let s = self.cache.stats();
        let context_bytes = s.context_tokens * self.runner.kv_bytes_per_token();
        self.metrics.publish_share(
            &mut self.gauges,
            self.running.len(),
            [
                (s.context_entries, context_bytes),
                (s.host_entries, s.host_bytes),
                (s.disk_entries, s.disk_bytes),
            ],
        );
    }

    /// Shutdown: fail what is queued or running, and write the cache to disk.
    fn stop(&mut self) {
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            self.take(command);
        }
        for active in self.waiting.drain(..) {
            if active.cached.is_none() {
                self.counters.waiting.fetch_sub(1, Ordering::Relaxed);
            }
            active.fail(EngineError::ShuttingDown);
        }
        for mut active in std::mem::take(&mut self.running) {
            active.fail(EngineError::ShuttingDown);
            self.stash(&mut active);
        }
        let written = self.cache.persist(self.runner.as_mut());
        if written > 0 {
            tracing::info!(entries = written, "prefix cache written to disk");
        }
        self.publish();
        tracing::debug!("engine thread exiting");
    }
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
fn checkpoints(
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

/// Which of the `free` slots a new sequence should take: the one that leaves the running
/// slots in the fewest runs of consecutive ids, the lowest of equals. A batch over
/// consecutive slots is one pass of llama.cpp's per-slot KV streams; every gap adds a
/// pass that reads all the weights again.
fn pick_slot(free: &[SeqId], running: &[SeqId]) -> Option<usize> {
    let taken: std::collections::HashSet<SeqId> = running.iter().copied().collect();
    // Runs after adding `s`: one more, one fewer when `s` joins two, or as many.
    let runs_delta = |s: SeqId| -> i32 {
        let below = s.checked_sub(1).is_some_and(|b| taken.contains(&b));
        let above = s.checked_add(1).is_some_and(|a| taken.contains(&a));
        1 - i32::from(below) - i32::from(above)
    };
    free.iter()
        .enumerate()
        .min_by_key(|&(_, &s)| (runs_delta(s), s))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::{checkpoints, pick_slot};
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

    fn pick(free: &[u32], running: &[u32]) -> Option<u32> {
        pick_slot(free, running).map(|i| free[i])
    }

    #[test]
    fn a_new_sequence_joins_the_running_slots() {
        // Nothing runs: the lowest slot.
        assert_eq!(pick(&[3, 1, 2], &[]), Some(1));
        // Next to what runs, not the lowest free slot.
        assert_eq!(pick(&[0, 5, 6], &[3, 4]), Some(5));
        assert_eq!(pick(&[0, 2, 7], &[3, 4]), Some(2));
        // Filling a gap joins two runs.
        assert_eq!(pick(&[0, 2, 7], &[1, 3]), Some(2));
        // No neighbour free: the lowest.
        assert_eq!(pick(&[7, 0], &[3, 4]), Some(0));
        assert_eq!(pick(&[], &[1]), None);
    }
}
