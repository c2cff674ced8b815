//! Speculative decoding's decisions, apart from the engine thread: which tokens to draft
//! for a sequence by prompt lookup (the tokens that followed the last place its recent
//! tokens occurred before, in the sequence itself or in earlier requests' outputs:
//! [`History`]), whether a draft model shares the model's tokenizer (its drafts come from
//! `scheduler::draft_model`), and how many drafted tokens to check, from how often its
//! drafts were accepted and from what a step of more tokens costs on this machine
//! ([`StepCost`], [`size_drafts`]). A GPU checks 8 tokens for about the price of one; two
//! CPU cores pay for most of each, so there only drafts that are likely to stand are worth
//! checking.
//!
//! A draft is checked in the next step: the sequence's pending token and its draft are
//! evaluated in one pass, with logits at each position, and the sampler runs over them in
//! order; a drafted token stands while it equals the token sampled before it. Prompt
//! lookup and a greedy draft model draft one token with certainty, so this is the
//! standard acceptance rule (a draft token `x` is kept with probability `p(x)`, and
//! otherwise the token comes from `p` without `x`): greedy output is unchanged token for
//! token, sampled output in distribution.

use std::collections::HashMap;

use crate::{TokenId, Tokenizer};

/// How the engine speculates (`--speculative`, `speculative` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Speculative {
    /// One token a step.
    #[default]
    Off,
    /// Drafts from the sequence's own prompt and output (prompt lookup).
    Ngram,
    /// Drafts from a smaller model of the same vocabulary (`--draft-model`).
    Draft,
}

impl std::fmt::Display for Speculative {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Speculative::Off => "off",
            Speculative::Ngram => "ngram",
            Speculative::Draft => "draft",
        })
    }
}

impl std::str::FromStr for Speculative {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Speculative::Off),
            "ngram" => Ok(Speculative::Ngram),
            "draft" => Ok(Speculative::Draft),
            other => Err(format!(
                "{other:?} is not a kind of speculation (off, ngram, draft)"
            )),
        }
    }
}

/// Token ids past the shorter vocabulary that the longer one may have: models of one
/// family pad their embedding (Qwen2.5's 7B has 128 ids more than its 0.5B), and those ids
/// never come out of a tokenizer.
const VOCAB_PADDING: usize = 128;

/// Whether a draft model's token ids mean what the model's do: every id both have renders
/// as the same bytes and ends a turn alike, and the two sizes differ by padding at most.
/// Drafts are ids, so a draft model of another tokenizer would draft nonsense.
pub fn check_vocabulary(model: &dyn Tokenizer, draft: &dyn Tokenizer) -> Result<(), String> {
    let (ours, theirs) = (model.vocab_size(), draft.vocab_size());
    if ours.abs_diff(theirs) > VOCAB_PADDING {
        return Err(format!(
            "its vocabulary has {theirs} tokens, the model's {ours}: they do not share a tokenizer"
        ));
    }
    for id in 0..ours.min(theirs) {
        let token = TokenId::try_from(id).unwrap_or(TokenId::MAX);
        let (a, b) = (model.token_bytes(token), draft.token_bytes(token));
        if a != b || model.is_end_of_generation(token) != draft.is_end_of_generation(token) {
            return Err(format!(
                "token {id} is {:?} to the model and {:?} to the draft model: they do not share \
                 a tokenizer",
                String::from_utf8_lossy(&a),
                String::from_utf8_lossy(&b),
            ));
        }
    }
    Ok(())
}

/// The longest run of recent tokens looked up, and the shortest worth a draft: a single
/// token repeats too often to predict what follows it.
const MAX_NGRAM: usize = 4;
const MIN_NGRAM: usize = 2;
/// The most tokens drafted at once. Where an output copies text (a file written back with
/// an edit) the longest drafts pay most: on a GPU a step of 9 tokens costs little more than
/// one of 2 (see `StepCost::at`), and on two CPU cores a step of 33 tokens costs 15 to 22
/// of one. `size_drafts` checks only what pays at the measured cost.
/// (llama-server's ngram-mod drafts 48 to 64.)
pub const MAX_DRAFT: usize = 32;

/// Where each run of `MIN_NGRAM` to `MAX_NGRAM` tokens of one sequence last occurred with a
/// token after it, kept up to date as the sequence grows: a draft is then a few hash lookups
/// instead of a scan of the whole context every step (32k tokens of Claude Code's prompt).
#[derive(Debug, Default)]
pub struct NgramIndex {
    /// (n, hash of the n tokens) -> the position of the token after their latest occurrence.
    last: HashMap<(u8, u64), usize>,
    /// Positions before this one are in `last`.
    indexed: usize,
}

impl NgramIndex {
    /// Up to `k` tokens that may follow `tokens`: where its last `n` tokens (for `n` from
    /// `MAX_NGRAM` down to `MIN_NGRAM`) occurred before, most recently, what came after
    /// them. `tokens` only grows from one call to the next.
    pub fn draft(&mut self, tokens: &[TokenId], k: usize) -> Vec<TokenId> {
        if k == 0 {
            return Vec::new();
        }
        self.extend(tokens);
        for n in (MIN_NGRAM..=MAX_NGRAM).rev() {
            let Some(from) = tokens.len().checked_sub(n) else {
                continue;
            };
            let suffix = &tokens[from..];
            let Some(&at) = self.last.get(&(n as u8, hash(suffix))) else {
                continue;
            };
            // Another run with the same hash: no draft from this length.
            if tokens.get(at - n..at) != Some(suffix) {
                continue;
            }
            let after = &tokens[at..];
            return after[..after.len().min(k)].to_vec();
        }
        Vec::new()
    }

    /// Index the runs that end before each position not indexed yet.
    fn extend(&mut self, tokens: &[TokenId]) {
        if tokens.len() < self.indexed {
            // Not the sequence it indexed: start again.
            *self = NgramIndex::default();
        }
        for at in self.indexed.max(MIN_NGRAM)..tokens.len() {
            for n in MIN_NGRAM..=MAX_NGRAM.min(at) {
                self.last.insert((n as u8, hash(&tokens[at - n..at])), at);
            }
        }
        self.indexed = tokens.len();
    }
}

/// What earlier requests wrote, for drafts across requests (SuffixDecoding's idea, arXiv
/// 2411.04975): agents repeat themselves from one request to the next (the scaffolding of
/// a tool call, a file written again by a subagent), and a sequence whose own tokens hold
/// no match may find one there. It keeps the outputs of finished requests, the newest
/// `capacity` tokens of them, with where each run of `HISTORY_MIN_NGRAM` to `MAX_NGRAM`
/// tokens last occurred.
#[derive(Debug)]
pub struct History {
    /// Outputs, oldest first, each with its number (numbers only grow).
    outputs: std::collections::VecDeque<(u64, Vec<TokenId>)>,
    next: u64,
    tokens: usize,
    capacity: usize,
    /// (n, hash of the n tokens) -> (output number, position of the token after them).
    last: HashMap<(u8, u64), (u64, usize)>,
}

/// A run this short is too common across requests to say what follows it.
const HISTORY_MIN_NGRAM: usize = 3;
/// Tokens of earlier outputs kept (with three index entries each, some 20 MB).
pub const HISTORY_TOKENS: usize = 1 << 18;

impl History {
    pub fn new(capacity: usize) -> History {
        History {
            outputs: std::collections::VecDeque::new(),
            next: 0,
            tokens: 0,
            capacity,
            last: HashMap::new(),
        }
    }

    /// Keep a finished request's output; the oldest go past `capacity` tokens.
    pub fn add(&mut self, output: &[TokenId]) {
        if output.len() <= HISTORY_MIN_NGRAM || output.len() > self.capacity {
            return;
        }
        let number = self.next;
        self.next += 1;
        self.index(number, output);
        self.outputs.push_back((number, output.to_vec()));
        self.tokens += output.len();
        while self.tokens > self.capacity {
            let Some((_, old)) = self.outputs.pop_front() else {
                break;
            };
            self.tokens -= old.len();
        }
        // Entries that point into evicted outputs are never followed (`draft` finds their
        // output gone, and an entry always names the latest occurrence, so no live one
        // hides behind it); they are dropped by indexing again once they outnumber the
        // live ones, not at every eviction: a full history evicts with every request.
        if self.last.len() > 4 * self.tokens {
            self.last.clear();
            let outputs = std::mem::take(&mut self.outputs);
            for (number, output) in &outputs {
                self.index(*number, output);
            }
            self.outputs = outputs;
        }
    }

    fn index(&mut self, number: u64, output: &[TokenId]) {
        for at in HISTORY_MIN_NGRAM..output.len() {
            for n in HISTORY_MIN_NGRAM..=MAX_NGRAM.min(at) {
                self.last
                    .insert((n as u8, hash(&output[at - n..at])), (number, at));
            }
        }
    }

    /// Up to `k` tokens that followed the last `n` tokens of `tokens` (longest `n` first)
    /// in the latest earlier output that has them.
    pub fn draft(&self, tokens: &[TokenId], k: usize) -> Vec<TokenId> {
        if k == 0 {
            return Vec::new();
        }
        let first = self.outputs.front().map_or(0, |(number, _)| *number);
        for n in (HISTORY_MIN_NGRAM..=MAX_NGRAM).rev() {
            let Some(from) = tokens.len().checked_sub(n) else {
                continue;
            };
            let suffix = &tokens[from..];
            let Some(&(number, at)) = self.last.get(&(n as u8, hash(suffix))) else {
                continue;
            };
            let Some((_, output)) = number
                .checked_sub(first)
                .and_then(|i| self.outputs.get(i as usize))
            else {
                continue;
            };
            if output.get(at - n..at) != Some(suffix) {
                continue;
            }
            let after = &output[at..];
            return after[..after.len().min(k)].to_vec();
        }
        Vec::new()
    }
}

/// FNV-1a over token ids.
fn hash(tokens: &[TokenId]) -> u64 {
    tokens.iter().fold(0xcbf2_9ce4_8422_2325, |h, &t| {
        (h ^ u64::from(t.cast_unsigned())).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One sequence's draft length, adapted to how its drafts fare: longer while they are
/// accepted whole, as long as the accepted run when one fails, and after drafts that gain
/// nothing, a pause that doubles each time (so a sequence where speculation does not pay
/// costs next to nothing). It also estimates how likely its next drafted token is to
/// stand, for [`size_drafts`].
#[derive(Debug, Clone)]
pub struct DraftLength {
    next: usize,
    misses: u32,
    pause: u32,
    /// Decayed counts of drafted tokens that stood, and of tokens checked (those that
    /// stood and the first rejected one): the acceptance rate per token.
    stood: f64,
    checked: f64,
    /// Drafted and accepted tokens, for `/metrics`.
    pub drafted: u64,
    pub accepted: u64,
}

impl Default for DraftLength {
    fn default() -> Self {
        DraftLength {
            next: 4,
            misses: 0,
            pause: 0,
            stood: 0.0,
            checked: 0.0,
            drafted: 0,
            accepted: 0,
        }
    }
}

/// How fast the acceptance estimate forgets: a sequence that starts copying (a Write of a
/// file after a sentence of prose) is trusted again within a few drafts.
const RATE_DECAY: f64 = 0.5;

impl DraftLength {
    /// How many tokens to draft this step (0: none).
    pub fn want(&mut self) -> usize {
        if self.pause > 0 {
            self.pause -= 1;
            return 0;
        }
        self.next
    }

    /// Whether its next draft is a probe: the first, or the first after a pause. A probe
    /// checks at least one token, whatever its rate says, so the rate is learnt again.
    pub fn probing(&self) -> bool {
        self.misses > 0 || self.checked == 0.0
    }

    /// The chance that a drafted token stands, given the ones before it did (a Laplace
    /// estimate over recent drafts: 1/2 before the first).
    pub fn rate(&self) -> f64 {
        (self.stood + 1.0) / (self.checked + 2.0)
    }

    /// A draft of `drafted` tokens had its first `accepted` kept.
    pub fn record(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        self.drafted += drafted as u64;
        self.accepted += accepted as u64;
        self.learn(drafted, accepted);
        if accepted == 0 {
            self.misses += 1;
            self.pause = (1u32 << self.misses.min(6)) - 1;
        } else {
            self.misses = 0;
        }
    }
}

impl DraftLength {
    /// What an unchecked draft would have done (see [`Shadow`]): the rate and the next
    /// length learn from it as from a check, the counters do not count it, and one that
    /// would have stood in part ends a pause.
    pub fn observe(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        self.learn(drafted, accepted);
        if accepted > 0 {
            self.misses = 0;
            self.pause = 0;
        }
    }

    fn learn(&mut self, drafted: usize, accepted: usize) {
        let rejected = usize::from(accepted < drafted);
        self.stood = self.stood * RATE_DECAY + accepted as f64;
        self.checked = self.checked * RATE_DECAY + (accepted + rejected) as f64;
        self.next = if accepted == drafted {
            (self.next * 2).max(drafted).min(MAX_DRAFT)
        } else {
            accepted.clamp(1, MAX_DRAFT)
        };
    }
}

/// A draft left unchecked (checking it did not pay here, or its sequence pauses), followed
/// against the tokens the sequence goes on to produce: how far it would have stood, learnt
/// at no cost. Where a checked token is dear (a CPU) a sequence's rate would otherwise stay
/// where its last checks left it, too low for any check to pay, even once it starts copying
/// a file; followed drafts raise it there, to where a long check pays.
#[derive(Debug, Clone, Default)]
pub struct Shadow {
    draft: Vec<TokenId>,
    stood: usize,
}

impl Shadow {
    /// Follow `draft`, unless one is followed already.
    pub fn start(&mut self, draft: Vec<TokenId>) {
        if self.draft.is_empty() {
            self.draft = draft;
            self.stood = 0;
        }
    }

    pub fn clear(&mut self) {
        self.draft.clear();
        self.stood = 0;
    }

    /// The sequence produced `token`. Once the draft failed or stood whole: as a check
    /// would have gone, `(drafted, accepted)`, and it is done.
    pub fn follow(&mut self, token: TokenId) -> Option<(usize, usize)> {
        let &expected = self.draft.get(self.stood)?;
        if expected == token {
            self.stood += 1;
            if self.stood < self.draft.len() {
                return None;
            }
        }
        let seen = (self.draft.len(), self.stood);
        self.clear();
        Some(seen)
    }
}

/// What a decode step costs by how many tokens it carries, measured as the engine runs
/// (steps without prompt tokens only): a smoothed time for each batch size seen.
#[derive(Debug, Default)]
pub struct StepCost {
    /// Index `n - 1`: the smoothed seconds of a step of `n` tokens, and how many steps of
    /// that size were seen.
    by_size: Vec<(f64, u32)>,
    /// Index `n - 1`: whether the first step of `n` tokens, which is not counted, ran.
    warmed: Vec<bool>,
}

/// Batch sizes beyond this are not told apart (a step that large is not one drafts decide).
const COST_SIZES: usize = 1024;
/// Steps of one size after which a new one moves the estimate by this share.
const COST_SMOOTHING: f64 = 0.2;

impl StepCost {
    /// A step of `tokens` tokens took `seconds`.
    pub fn record(&mut self, tokens: usize, seconds: f64) {
        if tokens == 0 || tokens > COST_SIZES || !seconds.is_finite() || seconds <= 0.0 {
            return;
        }
        if self.by_size.len() < tokens {
            self.by_size.resize(tokens, (0.0, 0));
            self.warmed.resize(tokens, false);
        }
        // The first step of a size pays one-time costs that later ones do not (on an H100
        // the first 2-token step took 6.4 ms, later ones about 3). Counted, it made drafts
        // look dear enough that none were checked again to correct it.
        if !std::mem::replace(&mut self.warmed[tokens - 1], true) {
            return;
        }
        let (mean, seen) = &mut self.by_size[tokens - 1];
        // An average until a few are seen, then a moving one: costs drift with context.
        let weight = (1.0 / f64::from(*seen + 1)).max(COST_SMOOTHING);
        *mean += weight * (seconds - *mean);
        *seen += 1;
    }

    /// `(a, b)` of the line `a + b * n` that fits the measured sizes near `n` (weighted
    /// by how often each was seen); None until two sizes there were measured.
    fn line_near(&self, n: usize) -> Option<(f64, f64)> {
        let near = |m: usize| m + MAX_DRAFT >= n && m <= n + 2 * MAX_DRAFT;
        let points: Vec<(f64, f64, f64)> = self
            .by_size
            .iter()
            .enumerate()
            .filter(|&(i, &(_, seen))| seen > 0 && near(i + 1))
            .map(|(i, &(t, seen))| ((i + 1) as f64, t, f64::from(seen.min(16))))
            .collect();
        if points.len() < 2 {
            return None;
        }
        let w: f64 = points.iter().map(|p| p.2).sum();
        let mx = points.iter().map(|p| p.2 * p.0).sum::<f64>() / w;
        let my = points.iter().map(|p| p.2 * p.1).sum::<f64>() / w;
        let sxx: f64 = points.iter().map(|p| p.2 * (p.0 - mx).powi(2)).sum();
        let sxy: f64 = points.iter().map(|p| p.2 * (p.0 - mx) * (p.1 - my)).sum();
        // Noise can tilt a line through close points either way: a step never gets
        // cheaper with more tokens, nor costs less than nothing.
        let b = (sxy / sxx).max(0.0);
        let a = my - b * mx;
        if a >= 0.0 {
            return Some((a, b));
        }
        // Through the origin instead.
        let sx2: f64 = points.iter().map(|p| p.2 * p.0 * p.0).sum();
        let sxy0: f64 = points.iter().map(|p| p.2 * p.0 * p.1).sum();
        Some((0.0, (sxy0 / sx2).max(0.0)))
    }

    /// Whether a step within a quarter of `n` tokens' size was measured (counted).
    fn measured_near(&self, n: usize) -> bool {
        self.by_size
            .iter()
            .enumerate()
            .any(|(i, &(_, seen))| seen > 0 && (i + 1).abs_diff(n) * 4 <= n)
    }

    /// What a step of `n` tokens costs: on the line through the sizes measured near it,
    /// else what the nearest size measured cost; None before any step.
    pub fn seconds(&self, n: usize) -> Option<f64> {
        if let Some((a, b)) = self.line_near(n) {
            return Some(a + b * n as f64);
        }
        self.by_size
            .iter()
            .enumerate()
            .filter(|(_, &(_, seen))| seen > 0)
            .min_by_key(|(i, _)| (i + 1).abs_diff(n))
            .map(|(_, &(mean, _))| mean)
    }

    /// By how much a step of `n` tokens grows with each further token, as a share of its
    /// cost; None until steps of two sizes near `n` were measured. (What `size_drafts`
    /// weighs, read apart for the tests of the line.)
    #[cfg(test)]
    fn growth(&self, n: usize) -> Option<f64> {
        let (a, b) = self.line_near(n)?;
        let at = a + b * n as f64;
        Some(if at > 0.0 { b / at } else { 0.0 })
    }
}

/// Steps of one size after which their own average is trusted over the line.
const MEASURED: u32 = 3;

impl StepCost {
    /// What a step of `n` tokens costs for sizing drafts: its own average once measured
    /// often enough, else on the line through the sizes near it. A GPU's cost is not a
    /// line (an H100 with a 0.5B model: 1.3 ms for one token, 2.7-3.4 ms for 2 to 8, 4.5 ms
    /// for 9), so the sizes measured speak for themselves.
    fn at(&self, n: usize) -> Option<f64> {
        match self.by_size.get(n.wrapping_sub(1)) {
            Some(&(mean, seen)) if seen >= MEASURED => Some(mean),
            _ => self.line_near(n).map(|(a, b)| a + b * n as f64),
        }
    }
}

/// How many tokens of each draft to check in a step of `decoding` sequences (one token
/// each, and one sampled token each). `drafts[i]` is sequence `i`'s draft
/// length and its per-token acceptance rate `r`: its `j`-th drafted token adds `r^j`
/// tokens in expectation. Drafted tokens are taken most likely first, and of all the
/// steps that makes (none of them, the likeliest, the two likeliest, ...) the one with the
/// most expected tokens per second is run: `e(n) / c(n)`, with `c` what [`StepCost`]
/// measured. The best is not always reached token by token: where one more token makes a
/// step much dearer and the ones after it cost little (a GPU), only a long draft pays.
/// Where drafting costs time too (a draft model: `draft_step` seconds for each token of
/// the longest draft), that time counts in the step's: a deeper draft must pay for its
/// draft step as well. A sequence whose first token is not worth it still checks one when
/// `probe` says so (after a pause: see [`DraftLength`]), so that its rate is learnt.
/// While what a bigger step costs is unknown, each draft checks one token: that step
/// measures it, at the price of one token where tokens are dear.
pub fn size_drafts(
    decoding: usize,
    drafts: &[(usize, f64)],
    probe: &[bool],
    cost: &StepCost,
    draft_step: f64,
) -> Vec<usize> {
    let mut take = vec![0; drafts.len()];
    if drafts.iter().all(|&(len, _)| len == 0) {
        return take;
    }
    if cost.line_near(decoding).is_none() {
        return drafts.iter().map(|&(len, _)| len.min(1)).collect();
    }
    let mut n = decoding;
    let mut expected = decoding as f64;
    // The drafted tokens in the order they are taken, and the best step so far: its
    // tokens per second and how many of them it takes.
    let mut order = Vec::new();
    let mut best = (0.0, 0);
    if let Some(c) = cost.at(n).filter(|&c| c > 0.0) {
        best.0 = expected / c;
    }
    loop {
        // The most likely next token among the drafts: the next of the sequence whose
        // next token's chance `r^(taken + 1)` is highest.
        let next = drafts
            .iter()
            .enumerate()
            .filter(|&(i, &(len, _))| take[i] < len)
            .map(|(i, &(_, r))| (i, r.powi(take[i] as i32 + 1)))
            .max_by(|x, y| x.1.total_cmp(&y.1));
        let Some((i, value)) = next else { break };
        take[i] += 1;
        n += 1;
        expected += value;
        order.push(i);
        let depth = take.iter().copied().max().unwrap_or(0);
        let Some(c) = cost.at(n) else { break };
        let seconds = c + draft_step * depth as f64;
        if seconds > 0.0 && expected / seconds > best.0 {
            best = (expected / seconds, order.len());
        }
    }
    take.iter_mut().for_each(|t| *t = 0);
    for &i in &order[..best.1] {
        take[i] += 1;
    }
    // A draft model's tokens cost a draft step each: not drafted to explore.
    if draft_step == 0.0 {
        explore(decoding, drafts, cost, &mut take);
    }
    for (i, t) in take.iter_mut().enumerate() {
        if *t == 0 && probe.get(i).copied().unwrap_or(false) && drafts[i].0 > 0 {
            *t = 1;
        }
    }
    take
}

/// A draft at least this likely per token, and this long, is checked whole where no step
/// near that size was measured yet (see [`explore`]).
const EXPLORE_RATE: f64 = 0.9;
const EXPLORE_LEN: usize = 8;

/// Check the longest likely draft whole once its step's size is far from every size
/// measured: what a long step costs is not read off a line through short ones. On two CPU
/// cores (Qwen2.5-Coder-0.5B, 3k tokens of context) the second token of a step costs about
/// a whole step and each one after it a half; drawn through sizes 1 and 2 alone, the line
/// priced a step of 33 tokens at nearly twice what it costs, and no draft was ever checked
/// long enough to show it. The first step of a size is not counted, so a size is explored twice.
fn explore(decoding: usize, drafts: &[(usize, f64)], cost: &StepCost, take: &mut [usize]) {
    let Some((i, len)) = drafts
        .iter()
        .enumerate()
        .filter(|&(_, &(len, rate))| len >= EXPLORE_LEN && rate >= EXPLORE_RATE)
        .max_by_key(|&(_, &(len, _))| len)
        .map(|(i, &(len, _))| (i, len))
    else {
        return;
    };
    if take[i] >= len {
        return;
    }
    let size = decoding + take.iter().sum::<usize>() - take[i] + len;
    if !cost.measured_near(size) {
        take[i] = len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Up to `k` tokens that may follow `tokens`: where the last `n` tokens (for `n` from
    /// `MAX_NGRAM` down to `MIN_NGRAM`) occurred before, most recently, what came after them.
    /// The definition, by a scan, that [`NgramIndex`] must agree with.
    fn lookup(tokens: &[TokenId], k: usize) -> Vec<TokenId> {
        if k == 0 {
            return Vec::new();
        }
        for n in (MIN_NGRAM..=MAX_NGRAM).rev() {
            if tokens.len() <= n {
                continue;
            }
            let suffix = &tokens[tokens.len() - n..];
            // Latest earlier occurrence that has at least one token after it.
            let found = (0..tokens.len() - n)
                .rev()
                .find(|&i| &tokens[i..i + n] == suffix);
            if let Some(i) = found {
                let after = &tokens[i + n..];
                return after[..after.len().min(k)].to_vec();
            }
        }
        Vec::new()
    }

    fn t(s: &str) -> Vec<TokenId> {
        s.bytes().map(TokenId::from).collect()
    }

    /// The byte tokenizer with some ids spelled otherwise, or a vocabulary of another size.
    struct Altered {
        vocab: usize,
        spelled: Option<(TokenId, &'static [u8])>,
        eog: TokenId,
    }

    impl Tokenizer for Altered {
        fn encode(&self, text: &str) -> Vec<TokenId> {
            crate::testing::ByteTokenizer.encode(text)
        }
        fn token_bytes(&self, token: TokenId) -> Vec<u8> {
            match self.spelled {
                Some((id, bytes)) if id == token => bytes.to_vec(),
                _ => crate::testing::ByteTokenizer.token_bytes(token),
            }
        }
        fn is_end_of_generation(&self, token: TokenId) -> bool {
            token == self.eog
        }
        fn single_token(&self, _text: &str) -> Option<TokenId> {
            None
        }
        fn vocab_size(&self) -> usize {
            self.vocab
        }
    }

    #[test]
    fn a_draft_model_must_share_the_tokenizer() {
        let bytes = crate::testing::ByteTokenizer;
        let same = Altered {
            vocab: 257,
            spelled: None,
            eog: 0,
        };
        assert_eq!(check_vocabulary(&bytes, &same), Ok(()));
        // Padding ids past the shorter vocabulary are fine; more are another tokenizer.
        let padded = Altered {
            vocab: 257 + 128,
            ..same
        };
        assert_eq!(check_vocabulary(&bytes, &padded), Ok(()));
        let larger = Altered {
            vocab: 257 + 129,
            ..same
        };
        let error = check_vocabulary(&bytes, &larger).unwrap_err();
        assert!(error.contains("386 tokens, the model's 257"), "{error}");
        // One id spelled otherwise, or ending the turn where the model's does not.
        let respelled = Altered {
            spelled: Some((66, b"hello")),
            ..same
        };
        let error = check_vocabulary(&bytes, &respelled).unwrap_err();
        assert!(
            error.contains(r#"token 66 is "A" to the model and "hello" to the draft"#),
            "{error}"
        );
        let other_end = Altered { eog: 3, ..same };
        assert!(check_vocabulary(&bytes, &other_end)
            .unwrap_err()
            .starts_with("token 0 "));
    }

    #[test]
    fn kinds_of_speculation_read_as_they_are_written() {
        for kind in [Speculative::Off, Speculative::Ngram, Speculative::Draft] {
            assert_eq!(kind.to_string().parse::<Speculative>(), Ok(kind));
        }
        assert_eq!(
            "eagle".parse::<Speculative>(),
            Err("\"eagle\" is not a kind of speculation (off, ngram, draft)".to_owned())
        );
    }

    #[test]
    fn earlier_outputs_draft_for_other_requests() {
        let mut history = History::new(64);
        history.add(&t("<call>{\"name\": \"Read\", \"path\": \"a.rs\"}"));
        // Another request opening the same call: the rest of the earlier one.
        assert_eq!(
            history.draft(&t("I will read it. <call>{\"na"), 6),
            t("me\": \"")
        );
        // Two tokens are too few to go by across requests; k = 0 drafts nothing.
        assert!(history.draft(&t("xx<c"), 4).is_empty());
        assert!(history.draft(&t("<call>"), 0).is_empty());
        // The latest output wins.
        history.add(&t("<call>{\"name\": \"Edit\"}"));
        assert_eq!(history.draft(&t("<call>{\"name\": \""), 4), t("Edit"));
        // Past its capacity the oldest outputs go, and what they alone held with them.
        history.add(&t("0123456789012345678901234567890123456789"));
        assert!(history.tokens <= 64);
        assert!(history.draft(&t("\"path"), 4).is_empty());
        assert_eq!(history.draft(&t("\"Ed"), 2), t("it"));
        assert_eq!(history.draft(&t("345"), 3), t("678"));
        // An output larger than all it keeps is not kept.
        history.add(&t(&"y".repeat(65)));
        assert!(history.draft(&t("yyy"), 2).is_empty());
    }

    #[test]
    fn a_repeated_run_drafts_what_followed_it_last() {
        // "abcd" came before, followed by "XY", then again by "ZW": the later one wins.
        let tokens = t("abcdXY..abcdZW..abcd");
        assert_eq!(lookup(&tokens, 2), t("ZW"));
        assert_eq!(lookup(&tokens, 8), t("ZW..abcd"));
        assert!(lookup(&tokens, 0).is_empty());
    }

    #[test]
    fn shorter_runs_are_tried_when_the_longest_never_came() {
        // "xcd" never came before, "cd" did.
        assert_eq!(lookup(&t("abcdEF..xcd"), 3), t("EF."));
        // A single token is not enough, nor a run seen only where it ends the text.
        assert!(lookup(&t("abzd"), 4).is_empty());
        assert!(lookup(&t("ab"), 4).is_empty());
        assert!(lookup(&t(""), 4).is_empty());
    }

    #[test]
    fn the_index_drafts_what_a_scan_finds() {
        // Random sequences over a few tokens repeat runs of every length; the index, grown
        // a token at a time, agrees with the scan at each length.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for alphabet in [2u64, 3, 5, 20] {
            let mut tokens = Vec::new();
            let mut index = NgramIndex::default();
            for _ in 0..400 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                tokens.push((state % alphabet) as TokenId);
                for k in [1, 3, 8] {
                    assert_eq!(index.draft(&tokens, k), lookup(&tokens, k), "{tokens:?}");
                }
            }
        }
        let mut index = NgramIndex::default();
        assert!(index.draft(&t("abcdXYabcd"), 0).is_empty());
        assert_eq!(index.draft(&t("abcdXYabcd"), 2), t("XY"));
        // A shorter sequence than the one indexed is another sequence.
        assert_eq!(index.draft(&t("xyzxy"), 2), t("zx"));
    }

    /// A step cost of `a + b * n` seconds, measured at sizes `sizes` (after a first
    /// step of each size that took a second and is not counted).
    fn measured(a: f64, b: f64, sizes: &[usize]) -> StepCost {
        let mut cost = StepCost::default();
        for &n in sizes {
            cost.record(n, 1.0);
            cost.record(n, a + b * n as f64);
        }
        cost
    }

    #[test]
    fn the_first_step_of_each_size_is_not_counted() {
        let mut cost = StepCost::default();
        cost.record(1, 0.010);
        cost.record(2, 0.500);
        // Warm-ups only: nothing known yet.
        assert_eq!(cost.seconds(1), None);
        cost.record(1, 0.010);
        cost.record(2, 0.011);
        let (a, b) = cost.line_near(1).unwrap();
        assert!(
            (a - 0.009).abs() < 1e-9 && (b - 0.001).abs() < 1e-9,
            "{a} {b}"
        );
    }

    #[test]
    fn the_step_cost_is_a_line_through_the_sizes_seen() {
        let cost = measured(0.010, 0.002, &[1, 3, 5, 9]);
        let (a, b) = cost.line_near(1).unwrap();
        assert!((a - 0.010).abs() < 1e-9 && (b - 0.002).abs() < 1e-9);
        // One more token on a step of 1: 0.002 / 0.012.
        assert!((cost.growth(1).unwrap() - 0.002 / 0.012).abs() < 1e-9);
        // One size alone says nothing.
        assert_eq!(measured(0.01, 0.002, &[1, 1, 1]).growth(1), None);
        assert_eq!(StepCost::default().growth(4), None);
        // Only sizes near the step count: a 64-stream step is not sized from single streams.
        let mut far = measured(0.010, 0.002, &[1, 2]);
        far.record(64, 0.5);
        assert_eq!(far.growth(64), None);
        assert!(far.growth(1) > Some(0.0));
        // Noise that makes more tokens look cheaper reads as free, never as negative.
        let mut noisy = measured(0.012, 0.0, &[1]);
        noisy.record(2, 0.011);
        noisy.record(2, 0.011);
        assert_eq!(noisy.growth(1), Some(0.0));
        // Nonsense is ignored.
        noisy.record(0, 1.0);
        noisy.record(3, f64::NAN);
        noisy.record(3, -1.0);
        assert_eq!(noisy.line_near(1).map(|_| ()), Some(()));
        assert_eq!(noisy.by_size.len(), 2);
    }

    #[test]
    fn a_step_costs_what_the_sizes_near_it_did() {
        assert_eq!(StepCost::default().seconds(3), None);
        // One size measured: its cost, whatever the size asked.
        let one = measured(0.01, 0.002, &[2]);
        assert!((one.seconds(7).unwrap() - 0.014).abs() < 1e-9);
        // Two: on their line.
        let two = measured(0.01, 0.002, &[1, 2]);
        assert!((two.seconds(4).unwrap() - 0.018).abs() < 1e-9);
    }

    #[test]
    fn the_step_cost_follows_a_change() {
        let mut cost = measured(0.010, 0.002, &[1, 2]);
        // The context grew: steps of 1 now take twice as long; the average moves there.
        for _ in 0..30 {
            cost.record(1, 0.024);
        }
        let at_one = cost.by_size[0].0;
        assert!((at_one - 0.024).abs() < 0.001, "{at_one}");
    }

    #[test]
    fn a_likely_long_draft_is_checked_whole_where_no_step_near_its_size_was_measured() {
        // Two CPU cores: the second token costs three quarters of a step. Through sizes 1
        // and 2 alone, a step of 33 tokens would cost 25 steps and no draft pay.
        let mut cpu = StepCost::default();
        for _ in 0..2 {
            cpu.record(1, 0.040);
            cpu.record(2, 0.070);
        }
        assert_eq!(size_drafts(1, &[(32, 0.5)], &[false], &cpu, 0.0), vec![0]);
        assert_eq!(size_drafts(1, &[(32, 0.97)], &[false], &cpu, 0.0), vec![32]);
        // Short drafts are sized by the line, which prices short steps well enough.
        assert_eq!(size_drafts(1, &[(4, 0.97)], &[false], &cpu, 0.0), vec![4]);
        assert_eq!(size_drafts(1, &[(4, 0.7)], &[false], &cpu, 0.0), vec![0]);
        // Drafted by a draft model, whose every token costs a draft step: not explored.
        assert_eq!(size_drafts(1, &[(32, 0.97)], &[false], &cpu, 0.04), vec![0]);
        // The first step of a size is not counted: explored again.
        cpu.record(33, 1.0);
        assert_eq!(size_drafts(1, &[(32, 0.97)], &[false], &cpu, 0.0), vec![32]);
        // Measured (15 steps' time): long drafts pay, and are checked because they do (as
        // long as the line through the sizes measured says pays best), not to explore.
        cpu.record(33, 0.600);
        assert!(cpu.measured_near(33) && cpu.measured_near(30) && !cpu.measured_near(20));
        let k = size_drafts(1, &[(32, 0.97)], &[false], &cpu, 0.0)[0];
        assert!(k >= 8, "{k}");
        assert_eq!(size_drafts(1, &[(32, 0.3)], &[false], &cpu, 0.0), vec![0]);
    }

    #[test]
    fn drafts_are_checked_while_they_pay_for_their_cost() {
        // Unmeasured: one token each, which measures a bigger step.
        let unknown = StepCost::default();
        assert_eq!(
            size_drafts(2, &[(8, 0.9), (0, 0.9)], &[false, false], &unknown, 0.0),
            vec![1, 0]
        );
        // Free extra tokens (a GPU): every drafted token is checked.
        let free = measured(0.01, 0.0, &[1, 2]);
        assert_eq!(size_drafts(1, &[(8, 0.1)], &[false], &free, 0.0), vec![8]);
        // Each token costs as much as the step itself (compute-bound): nothing pays.
        let linear = measured(0.0, 0.01, &[1, 2, 3, 9]);
        assert_eq!(
            size_drafts(1, &[(8, 0.95)], &[false], &linear, 0.0),
            vec![0]
        );
        // Half the step is fixed: tokens likely to stand pay, up to where the chance of
        // the next falls below the cost (0.9: 3 tokens, see the module's rule).
        let half = measured(0.005, 0.005, &[1, 2, 3, 4, 9]);
        assert_eq!(size_drafts(1, &[(8, 0.9)], &[false], &half, 0.0), vec![3]);
        assert_eq!(size_drafts(1, &[(8, 0.3)], &[false], &half, 0.0), vec![0]);
        // A probe checks one token whatever its rate; a sequence without a draft none.
        assert_eq!(size_drafts(1, &[(8, 0.3)], &[true], &half, 0.0), vec![1]);
        assert_eq!(size_drafts(1, &[(0, 0.9)], &[true], &half, 0.0), vec![0]);
        // Drafting costs too (a draft model): a fifth of a step for each drafted token
        // stops a likely draft short of its end; as much as a step, even before its start.
        let deep = size_drafts(1, &[(8, 0.9)], &[false], &free, 0.002)[0];
        assert!((3..8).contains(&deep), "{deep}");
        assert_eq!(size_drafts(1, &[(8, 0.5)], &[false], &free, 0.01), vec![0]);
        // Among sequences, the likelier drafts get the room.
        let two = size_drafts(2, &[(8, 0.5), (8, 0.95)], &[false, false], &half, 0.0);
        assert_eq!(two[0], 0);
        assert!(two[1] >= 3, "{two:?}");
    }

    #[test]
    fn a_draft_that_pays_only_when_long_is_checked_whole() {
        // An H100 with a 0.5B model (the bench's debug log): one token 1.3 ms, 2 to 8
        // about 3.2 ms, 9 tokens 4.6 ms. Token by token the second token never pays;
        // a draft of 6 likely tokens does (3.4 tokens expected in 3.2 ms).
        let mut gpu = StepCost::default();
        for (n, ms) in [(1, 1.3), (2, 3.0), (3, 3.1), (4, 3.2), (5, 3.2), (6, 3.2)] {
            for _ in 0..=MEASURED {
                gpu.record(n, ms / 1000.0);
            }
        }
        for (n, ms) in [(7, 3.2), (8, 3.3), (9, 4.6)] {
            for _ in 0..=MEASURED {
                gpu.record(n, ms / 1000.0);
            }
        }
        assert_eq!(size_drafts(1, &[(8, 0.7)], &[false], &gpu, 0.0), vec![6]);
        // Unlikely drafts: none, short or long.
        assert_eq!(size_drafts(1, &[(8, 0.3)], &[false], &gpu, 0.0), vec![0]);
        // A short draft cannot reach where checking pays.
        assert_eq!(size_drafts(1, &[(2, 0.7)], &[false], &gpu, 0.0), vec![0]);
        // Nothing drafted: nothing checked, whatever is known.
        assert_eq!(
            size_drafts(1, &[(0, 0.9)], &[false], &StepCost::default(), 0.0),
            vec![0]
        );
    }

    #[test]
    fn the_rate_follows_what_stood_lately() {
        let mut d = DraftLength::default();
        assert_eq!(d.rate(), 0.5);
        assert!(d.probing());
        d.record(4, 4);
        assert!(!d.probing());
        let high = d.rate();
        assert!(high > 0.8, "{high}");
        // Rejections at once: the rate falls, and the next draft after the pause probes.
        d.record(4, 0);
        d.record(1, 0);
        assert!(d.rate() < 0.5, "{}", d.rate());
        assert!(d.probing());
        // Copying again: trusted again within a few drafts.
        for _ in 0..4 {
            d.record(8, 8);
        }
        assert!(d.rate() > 0.85, "{}", d.rate());
    }

    #[test]
    fn a_followed_draft_reports_how_far_it_would_have_stood() {
        let mut s = Shadow::default();
        assert_eq!(s.follow(7), None, "nothing followed");
        s.start(vec![1, 2, 3]);
        // A second draft waits for the first to end.
        s.start(vec![9]);
        assert_eq!((s.follow(1), s.follow(2)), (None, None));
        assert_eq!(s.follow(3), Some((3, 3)), "stood whole");
        assert_eq!(s.follow(3), None, "done");
        s.start(vec![1, 2, 3]);
        assert_eq!(s.follow(1), None);
        assert_eq!(s.follow(5), Some((3, 1)), "failed at its second token");
        s.start(vec![4]);
        s.clear();
        assert_eq!(s.follow(4), None);
    }

    #[test]
    fn followed_drafts_teach_the_rate_without_counting() {
        let mut d = DraftLength::default();
        // Checks that failed: a low rate and a pause.
        d.record(4, 0);
        d.record(1, 0);
        assert!(d.rate() < 0.3, "{}", d.rate());
        assert_eq!(d.want(), 0);
        // The sequence starts copying: followed drafts that stood raise the rate past
        // where a long check pays on a CPU, and end the pause.
        d.observe(MAX_DRAFT, MAX_DRAFT);
        d.observe(MAX_DRAFT, MAX_DRAFT);
        assert!(d.rate() > 0.95, "{}", d.rate());
        assert_eq!(d.want(), MAX_DRAFT);
        assert!(!d.probing());
        assert_eq!((d.drafted, d.accepted), (5, 0), "only checks are counted");
        // One that fails: as long as the run that stood, as a check.
        d.observe(MAX_DRAFT, 5);
        assert_eq!(d.want(), 5);
    }

    #[test]
    fn the_draft_length_follows_acceptance() {
        let mut d = DraftLength::default();
        assert_eq!(d.want(), 4);
        d.record(4, 4);
        assert_eq!(d.want(), 8);
        d.record(8, 8);
        assert_eq!(d.want(), 16);
        d.record(16, 16);
        assert_eq!(d.want(), MAX_DRAFT);
        d.record(MAX_DRAFT, MAX_DRAFT);
        assert_eq!(d.want(), MAX_DRAFT);
        // A partial acceptance: as long as the accepted run.
        d.record(8, 3);
        assert_eq!(d.want(), 3);
        // Nothing accepted: pauses of 1, 3, 7 ... steps, then a draft of 1.
        d.record(3, 0);
        assert_eq!((d.want(), d.want()), (0, 1));
        d.record(1, 0);
        assert_eq!([d.want(), d.want(), d.want(), d.want()], [0, 0, 0, 1]);
        // An accepted one ends the pauses.
        d.record(1, 1);
        assert_eq!(d.want(), 2);
        assert_eq!(
            (d.drafted, d.accepted),
            (
                4 + 8 + 16 + MAX_DRAFT as u64 + 8 + 3 + 1 + 1,
                4 + 8 + 16 + MAX_DRAFT as u64 + 3 + 1
            )
        );
        // A step without a draft changes nothing.
        d.record(0, 0);
        assert_eq!(d.want(), 2);
    }
}
