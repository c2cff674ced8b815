//! The prefix cache's index of stored token sequences, readable off the engine thread.
//!
//! The engine thread owns the cache and is the only writer. The request side reads the
//! index when a request is queued, to tell the client how much of its prompt the cache
//! will serve (Anthropic's `message_start` usage) without waiting for the engine thread,
//! which may be in the middle of a long decode step. Both sides apply one rule for
//! what a prompt can reuse: [`CacheIndex::usable`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::radix::{EntryId, Match, RadixTree};
use crate::model::TokenId;

/// The radix tree over the cache's entries and the backend's truncation rule. Clones
/// share one tree.
#[derive(Debug, Clone)]
pub struct CacheIndex {
    tree: Arc<Mutex<Tree>>,
    /// Whether the backend can cut a cached sequence back to any position. When it
    /// cannot, only entries that are whole prefixes of a prompt can be used.
    can_truncate: bool,
    /// Whether the backend gives the same numbers however a prompt is split into
    /// batches (the CPU; not a GPU). When it does not, a prompt that ends or branches
    /// inside a cached entry's prompt does not continue from the branch point, where the
    /// entry's computation did not stop: it takes the longest whole entry instead (the
    /// snapshot points), so a repeated greedy request gives the same answer. A prompt
    /// that continues past an entry's prompt (the next turn) still continues it.
    batch_invariant: bool,
}

/// The radix tree, and how long each entry and its prompt are.
#[derive(Debug, Default)]
struct Tree {
    radix: RadixTree,
    lengths: HashMap<EntryId, usize>,
    prompt_lengths: HashMap<EntryId, usize>,
}

impl CacheIndex {
    pub(super) fn new(can_truncate: bool, batch_invariant: bool) -> Self {
        CacheIndex {
            tree: Arc::default(),
            can_truncate,
            batch_invariant,
        }
    }

    /// Whether the backend can cut a cached sequence back to any position.
    pub(super) fn can_truncate(&self) -> bool {
        self.can_truncate
    }

    /// How many tokens of `prompt` the cache would serve if the request were admitted
    /// now. The entry may still leave the cache, or another may come, before the engine
    /// admits it: what admission finds is the truth.
    pub fn estimate(&self, prompt: &[TokenId]) -> usize {
        self.usable(prompt).len
    }

    /// The longest cached prefix of `prompt` a request can start from, and the entries
    /// holding it. At least the prompt's last token is left to evaluate (its logits
    /// start the generation); without truncation, only whole entries count.
    pub(super) fn usable(&self, prompt: &[TokenId]) -> Match {
        let usable = &prompt[..prompt.len().saturating_sub(1)];
        let tree = self.tree();
        let longest = self.can_truncate.then(|| {
            let mut m = tree.radix.longest_match(usable);
            if !self.batch_invariant {
                // Only entries whose prompt ended by then: the rest computed there
                // inside a prompt batch.
                let len = m.len;
                m.entries
                    .retain(|id| tree.prompt_lengths.get(id).is_some_and(|&p| p <= len));
            }
            m
        });
        let found = if let Some(found) = longest.filter(|m| !m.entries.is_empty()) {
            found
        } else {
            let found = tree.radix.prefixes_of(usable);
            let len = found.iter().map(|(len, _)| *len).max().unwrap_or(0);
            Match {
                len,
                entries: found
                    .into_iter()
                    .filter(|(l, _)| *l == len)
                    .map(|(_, id)| id)
                    .collect(),
            }
        };
        // A few tokens (the chat template's opening) out of long entries only: loading
        // or taking over an entry would cost more than computing them.
        let shortest = found
            .entries
            .iter()
            .filter_map(|id| tree.lengths.get(id))
            .min()
            .copied()
            .unwrap_or(0);
        if found.len < super::MIN_SHARED_PREFIX && found.len * super::MAX_WASTE < shortest {
            return Match {
                len: 0,
                entries: Vec::new(),
            };
        }
        found
    }

    pub(super) fn insert(&self, tokens: &[TokenId], prompt_len: usize, id: EntryId) {
        let mut tree = self.tree();
        tree.radix.insert(tokens, id);
        tree.lengths.insert(id, tokens.len());
        tree.prompt_lengths.insert(id, prompt_len);
    }

    pub(super) fn remove(&self, tokens: &[TokenId], id: EntryId) {
        let mut tree = self.tree();
        tree.radix.remove(tokens, id);
        tree.lengths.remove(&id);
        tree.prompt_lengths.remove(&id);
    }

    /// See [`RadixTree::prefixes_of`].
    pub(super) fn prefixes_of(&self, query: &[TokenId]) -> Vec<(usize, EntryId)> {
        self.tree().radix.prefixes_of(query)
    }

    /// See [`RadixTree::distinct_tokens`].
    pub(super) fn distinct_tokens(&self, keep: impl Fn(EntryId) -> bool) -> usize {
        self.tree().radix.distinct_tokens(keep)
    }

    fn tree(&self) -> MutexGuard<'_, Tree> {
        // A panic on the engine thread while it held the lock ends that engine; an
        // estimate read from whatever tree it left is still only an estimate.
        self.tree
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
