//! Speculative decoding's decisions, apart from the engine thread: which tokens to draft
//! for a sequence (prompt lookup: the tokens that followed the last place its recent
//! tokens occurred before), and how many to draft next, from how many were accepted.
//!
//! A draft is checked in the next step: the sequence's pending token and its draft are
//! evaluated in one pass, with logits at each position, and the sampler runs over them in
//! order; a drafted token stands while it equals the token sampled before it. Prompt
//! lookup drafts one token with certainty, so this is the standard acceptance rule (a
//! draft token `x` is kept with probability `p(x)`, and otherwise the token comes from
//! `p` without `x`): greedy output is unchanged token for token, sampled output in
//! distribution.

use std::collections::HashMap;

use crate::TokenId;

/// How the engine speculates (`--speculative`, `speculative` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Speculative {
    /// One token a step.
    #[default]
    Off,
    /// Drafts from the sequence's own prompt and output (prompt lookup).
    Ngram,
}

impl std::str::FromStr for Speculative {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Speculative::Off),
            "ngram" => Ok(Speculative::Ngram),
            other => Err(format!(
                "{other:?} is not a kind of speculation (off, ngram)"
            )),
        }
    }
}

/// The longest run of recent tokens looked up, and the shortest worth a draft: a single
/// token repeats too often to predict what follows it.
const MAX_NGRAM: usize = 4;
const MIN_NGRAM: usize = 2;
/// The most tokens drafted at once.
pub const MAX_DRAFT: usize = 8;

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

/// FNV-1a over token ids.
fn hash(tokens: &[TokenId]) -> u64 {
    tokens.iter().fold(0xcbf2_9ce4_8422_2325, |h, &t| {
        (h ^ u64::from(t.cast_unsigned())).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One sequence's draft length, adapted to how its drafts fare: longer while they are
/// accepted whole, as long as the accepted run when one fails, and after drafts that gain
/// nothing, a pause that doubles each time (so a sequence where speculation does not pay
/// costs next to nothing).
#[derive(Debug, Clone)]
pub struct DraftLength {
    next: usize,
    misses: u32,
    pause: u32,
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
            drafted: 0,
            accepted: 0,
        }
    }
}

impl DraftLength {
    /// How many tokens to draft this step (0: none).
    pub fn want(&mut self) -> usize {
        if self.pause > 0 {
            self.pause -= 1;
            return 0;
        }
        self.next
    }

    /// A draft of `drafted` tokens had its first `accepted` kept.
    pub fn record(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        self.drafted += drafted as u64;
        self.accepted += accepted as u64;
        if accepted == drafted {
            self.next = (self.next * 2).min(MAX_DRAFT);
            self.misses = 0;
        } else {
            self.next = accepted.clamp(1, MAX_DRAFT);
        }
        if accepted == 0 {
            self.misses += 1;
            self.pause = (1u32 << self.misses.min(6)) - 1;
        } else {
            self.misses = 0;
        }
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

    #[test]
    fn the_draft_length_follows_acceptance() {
        let mut d = DraftLength::default();
        assert_eq!(d.want(), 4);
        d.record(4, 4);
        assert_eq!(d.want(), 8);
        d.record(8, 8);
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
            (4 + 8 + 8 + 3 + 1 + 1, 4 + 8 + 3 + 1)
        );
        // A step without a draft changes nothing.
        d.record(0, 0);
        assert_eq!(d.want(), 2);
    }
}
