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
//!
//! This module owns the loop, admission, drafting and preemption; `plan` decides each
//! batch, `prefix` where a sequence's KV comes from and what it leaves to the cache, `slots`
//! the sequence slots, `sample` what happens to each sampled token, `active` one request's
//! state, `draft_model` the drafts of a draft model.

mod active;
mod draft_model;
mod plan;
mod prefix;
mod sample;
mod slots;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cache::{CacheConfig, PrefixCache};
use crate::metrics::{EngineMetrics, GaugeShare};
use crate::model::{BatchToken, ModelRunner, RunnerError, SeqId, Tokenizer};
use crate::speculate::{size_drafts, History, Speculative, StepCost, HISTORY_TOKENS, MAX_DRAFT};
use crate::EngineError;
use active::Follow;
pub(crate) use active::{Active, Job};
pub(crate) use draft_model::DraftModel;
use draft_model::Want;
use plan::{plan_batch, BatchPlan, Candidate, Limits};
use prefix::checkpoints;

/// What the engine thread is asked to do.
pub(crate) enum Command {
    /// Boxed: a request's grammar makes it large.
    Run(Box<Job>),
    /// Wake up and notice the shutdown.
    Stop,
}

/// Limits of the scheduler, and what it speculates with.
pub(crate) struct SchedulerConfig {
    /// Sequences running at once.
    pub parallel: usize,
    pub cache: CacheConfig,
    /// Tokens that render as the marker text they are.
    pub markers: HashMap<crate::TokenId, Vec<u8>>,
    pub speculative: Speculative,
    /// Drafts for `Speculative::Draft`.
    pub draft_model: Option<DraftModel>,
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
    /// Decoding sequences draft tokens (see [`crate::speculate`]): from the draft model
    /// if there is one, else by prompt lookup.
    speculate: bool,
    draft_model: Option<DraftModel>,
    /// Earlier requests' outputs, for prompt lookup across requests.
    history: History,
    /// What decode steps cost by their size, to size drafts.
    step_cost: StepCost,
}

/// Where one batch entry came from.
struct Planned {
    /// Index into `running`.
    index: usize,
    /// Its pending tokens in the batch (drafted ones not counted).
    tokens: usize,
    /// Batch index of the logits to sample from, when this completes the pending tokens;
    /// the drafted tokens' logits follow.
    logits: Option<usize>,
    drafted: usize,
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
        let speculate = config.speculative != Speculative::Off && runner.can_speculate();
        if config.speculative != Speculative::Off && !speculate {
            tracing::warn!("this backend cannot check drafted tokens: speculation is off");
        }
        let draft_model = config
            .draft_model
            .filter(|_| speculate && config.speculative == Speculative::Draft);
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
            speculate,
            draft_model,
            history: History::new(HISTORY_TOKENS),
            step_cost: StepCost::default(),
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
            let reused = self.cut_before_media(seq, &active.job.request.media, reused);
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
            // A computation never stops inside an image.
            let media = &active.job.request.media;
            active
                .checkpoints
                .retain(|&(at, _)| !media.iter().any(|m| m.splits_at(at)));
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

    /// One batch: decode tokens first, then prefill chunks, then drafts (see [`plan`]).
    fn step(&mut self) {
        self.take_over_prefixes();
        if self.speculate {
            self.draft();
        }
        let candidates: Vec<Candidate> = self
            .running
            .iter()
            .map(|a| Candidate {
                seq: a.seq,
                order: a.order,
                computed: a.computed,
                len: a.tokens.len(),
                checkpoint: a
                    .checkpoints
                    .iter()
                    .map(|&(at, _)| at)
                    .find(|&at| at > a.computed),
                following: a.follow.is_some(),
                draft: a.draft.len(),
                media: a
                    .job
                    .request
                    .media
                    .iter()
                    .find(|m| m.end() > a.computed)
                    .map(|m| (m.at, m.end())),
            })
            .collect();
        let limits = Limits {
            batch: self.runner.batch_size(),
            prefill_while_decoding: self.runner.prefill_while_decoding(),
        };
        let BatchPlan { parts, slot_runs } = plan_batch(&candidates, limits);
        let mut batch: Vec<BatchToken> = Vec::with_capacity(limits.batch);
        let mut planned: Vec<Planned> = Vec::with_capacity(parts.len());
        let mut images = Vec::new();
        for part in parts {
            if part.media {
                images.push(part);
                continue;
            }
            let a = &self.running[part.index];
            let known = a.tokens.len();
            let end = part.from + part.len;
            // The last pending token's logits, then each drafted token's.
            let first_logits = batch.len() + part.len - part.drafted - 1;
            for pos in part.from..end {
                let token = match pos.checked_sub(known) {
                    Some(d) => a.draft[d],
                    None => a.tokens[pos],
                };
                batch.push(BatchToken {
                    seq: part.seq,
                    token,
                    pos: pos as u32,
                    logits: part.logits && pos + 1 + part.drafted >= end,
                });
            }
            planned.push(Planned {
                index: part.index,
                tokens: part.len - part.drafted,
                logits: part.logits.then_some(first_logits),
                drafted: part.drafted,
            });
        }
        // Images first: their decodes leave no logits, the batch's are the ones sampled.
        for part in images {
            let a = &self.running[part.index];
            let Some(media) = a
                .job
                .request
                .media
                .iter()
                .find(|m| m.at == part.from)
                .cloned()
            else {
                continue;
            };
            let started = std::time::Instant::now();
            let result = self.runner.decode_media(part.seq, &media);
            tracing::debug!(
                tokens = part.len,
                ms = started.elapsed().as_millis() as u64,
                "image computed"
            );
            match result {
                Ok(()) => {}
                // This image's own failure: its request fails, the others go on. A
                // refusal (an image the backend cannot decode) is the request's fault.
                Err(RunnerError::Refused(why)) => {
                    let why = format!("{}: {why}", media.block);
                    return self.fail_one(part.index, EngineError::InvalidRequest(why));
                }
                Err(RunnerError::Failed(e)) => {
                    tracing::warn!("an image could not be computed: {e}");
                    return self.fail_one(part.index, EngineError::Backend(e));
                }
                Err(e) => return self.decode_failed(e),
            }
            self.after_decode(vec![Planned {
                index: part.index,
                tokens: part.len,
                logits: None,
                drafted: 0,
            }]);
        }
        if batch.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let result = self.runner.decode(&batch);
        let decoded = started.elapsed();
        match result {
            Ok(()) => {
                let decode_only = planned.iter().all(|p| p.tokens == 1);
                let sampling = self.after_decode(planned);
                let step = started.elapsed();
                // Decode steps (no prompt tokens) tell what checking drafts costs. The
                // whole step counts, sampling included: on a GPU `decode` only queues the
                // work, which the first read of logits waits for, and each checked token
                // is one more row of logits to sample.
                if self.speculate && decode_only {
                    let seconds = self.runner.modelled_step_seconds();
                    let seconds = seconds.unwrap_or(step.as_secs_f64());
                    self.step_cost.record(batch.len(), seconds);
                }
                tracing::trace!(
                    tokens = batch.len(),
                    slot_runs,
                    decode_us = decoded.as_micros() as u64,
                    sample_us = sampling.as_micros() as u64,
                    step_us = step.as_micros() as u64,
                    "step"
                );
            }
            Err(e) => self.decode_failed(e),
        }
    }

    fn decode_failed(&mut self, error: RunnerError) {
        match error {
            RunnerError::CacheFull => self.relieve_pressure(),
            RunnerError::Failed(e) => {
                tracing::error!("decode failed: {e}");
                self.fail_all(EngineError::Backend(e));
            }
            RunnerError::Restarted(e) => {
                tracing::error!("the model backend restarted: {e}");
                self.fail_all(EngineError::BackendRestarted(e));
            }
            // Only images are refused, and those are handled where they are computed.
            RunnerError::Refused(e) => {
                tracing::error!("decode refused: {e}");
                self.fail_all(EngineError::Backend(e));
            }
        }
    }

    /// Each sequence that decodes and may speculate drafts: by prompt lookup, what its
    /// recent tokens were followed by before, as many tokens as its acceptance so far
    /// suggests, then sized to what checking them costs here (see
    /// [`crate::speculate::size_drafts`]); with a draft model, it is asked for as many as
    /// that sizing takes (each costs it a step). Drafts are cut where the sequence's
    /// grammar (a tool call's) forbids a token.
    fn draft(&mut self) {
        let mut decoding = 0;
        let mut drafts = Vec::with_capacity(self.running.len());
        let mut probes = Vec::with_capacity(self.running.len());
        // Each n-gram draft at full length: what is not checked is followed (`Shadow`).
        let mut whole = Vec::with_capacity(self.running.len());
        let by_model = self.draft_model.is_some();
        for a in &mut self.running {
            a.draft.clear();
            let decodes = a.decodes();
            decoding += usize::from(decodes);
            let mut k = 0;
            let mut full = Vec::new();
            // No log-probabilities to report per drafted position. A prompt with images
            // is not drafted for: a draft model can't read them.
            let images = !a.job.request.media.is_empty();
            if decodes && a.job.request.sampling.logprobs.is_none() && !images {
                let left = a.tokens_left().saturating_sub(1);
                k = a.draft_length.want().min(left);
                if !by_model {
                    // Its own tokens first; else what followed its last tokens in an
                    // earlier request's output.
                    let most = MAX_DRAFT.min(left);
                    full = a.ngrams.draft(&a.tokens, most);
                    if full.is_empty() {
                        full = self.history.draft(&a.tokens, most);
                    }
                    // What followed in a prompt with images may be one.
                    if let Some(i) = full.iter().position(|&t| crate::is_media_token(t)) {
                        full.truncate(i);
                    }
                    a.draft = full[..k.min(full.len())].to_vec();
                    a.cut_to_grammar();
                    k = a.draft.len();
                }
            }
            whole.push(full);
            drafts.push((k, a.draft_length.rate()));
            probes.push(a.draft_length.probing());
        }
        // What a draft step costs; unknown before the first, which is one token each.
        let draft_step = self
            .draft_model
            .as_ref()
            .and_then(|m| m.step_seconds(decoding))
            .unwrap_or(0.0);
        let sizes = size_drafts(decoding, &drafts, &probes, &self.step_cost, draft_step);
        if let Some(model) = self.draft_model.as_mut() {
            // Sequences that do not decode yet catch up with their prompt (k = 0); one that
            // decodes without a draft this step does not: catching up costs the draft model
            // a step too, and where drafts do not pay (a CPU) it is not paid for nothing.
            let wants: Vec<Want<'_>> = self
                .running
                .iter()
                .zip(&sizes)
                .map(|(a, &k)| Want {
                    // No slot: nothing asked of the draft model.
                    seq: match a.seq {
                        Some(seq) if a.job.request.media.is_empty() && (k > 0 || !a.decodes()) => {
                            seq
                        }
                        _ => SeqId::MAX,
                    },
                    tokens: &a.tokens,
                    k,
                })
                .collect();
            let drafted = model.draft(&wants, decoding > 0);
            for (a, d) in self.running.iter_mut().zip(drafted) {
                a.draft = d;
                a.cut_to_grammar();
            }
        }
        for ((a, k), full) in self.running.iter_mut().zip(sizes).zip(whole) {
            a.draft.truncate(k);
            if k > 0 {
                // A check learns more than a followed draft.
                a.shadow.clear();
            } else if !full.is_empty() {
                a.shadow.start(full);
            }
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
    /// End one running request with `error`; its slot is emptied.
    fn fail_one(&mut self, index: usize, error: EngineError) {
        let mut active = self.running.remove(index);
        self.unfollow(&mut active);
        active.fail(error);
        if let Some(seq) = active.seq {
            self.runner.release(seq);
            self.free.push(seq);
        }
    }

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
