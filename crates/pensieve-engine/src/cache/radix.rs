//! A radix tree over token ids: which stored sequences share the longest prefix with a
//! new prompt.
//!
//! Edges carry runs of tokens, so a tree of a few long prompts has a few nodes however
//! long the prompts are. Every node knows the entries stored at or below it, so the
//! deepest point a prompt reaches names the entries that hold that whole prefix.

use std::collections::{HashMap, HashSet};

use crate::model::TokenId;

/// The id a caller stores with a token sequence.
pub type EntryId = u64;

#[derive(Debug, Default)]
struct Node {
    /// Tokens on the edge from the parent to this node.
    label: Vec<TokenId>,
    children: HashMap<TokenId, usize>,
    parent: usize,
    /// Entries whose sequence ends exactly here.
    ends: Vec<EntryId>,
    /// Entries whose sequence ends here or below.
    below: HashSet<EntryId>,
}

/// Token sequences by id, searchable by longest common prefix.
#[derive(Debug)]
pub struct RadixTree {
    nodes: Vec<Node>,
    free: Vec<usize>,
}

/// The result of [`RadixTree::longest_match`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// Tokens of the query that some entry shares.
    pub len: usize,
    /// Every entry that holds those `len` tokens as its prefix.
    pub entries: Vec<EntryId>,
}

const ROOT: usize = 0;

impl Default for RadixTree {
    fn default() -> Self {
        RadixTree {
            nodes: vec![Node::default()],
            free: Vec::new(),
        }
    }
}

impl RadixTree {
    /// Store `tokens` under `id`. The same id must not be inserted twice.
    pub fn insert(&mut self, tokens: &[TokenId], id: EntryId) {
        let mut node = ROOT;
        let mut i = 0;
        self.nodes[ROOT].below.insert(id);
        while i < tokens.len() {
            let Some(&child) = self.nodes[node].children.get(&tokens[i]) else {
                let leaf = self.alloc(Node {
                    label: tokens[i..].to_vec(),
                    parent: node,
                    ..Node::default()
                });
                self.nodes[node].children.insert(tokens[i], leaf);
                node = leaf;
                self.nodes[node].below.insert(id);
                i = tokens.len();
                break;
            };
            let common = common_prefix(&self.nodes[child].label, &tokens[i..]);
            if common < self.nodes[child].label.len() {
                self.split(child, common);
            }
            node = child;
            self.nodes[node].below.insert(id);
            i += common;
        }
        debug_assert_eq!(i, tokens.len());
        self.nodes[node].ends.push(id);
    }

    /// Forget `id`, stored under `tokens`.
    pub fn remove(&mut self, tokens: &[TokenId], id: EntryId) {
        let mut path = vec![ROOT];
        let mut node = ROOT;
        let mut i = 0;
        while i < tokens.len() {
            let Some(&child) = self.nodes[node].children.get(&tokens[i]) else {
                return;
            };
            let label = &self.nodes[child].label;
            if tokens.len() - i < label.len() || tokens[i..i + label.len()] != label[..] {
                return;
            }
            i += label.len();
            node = child;
            path.push(node);
        }
        self.nodes[node].ends.retain(|e| *e != id);
        for &n in &path {
            self.nodes[n].below.remove(&id);
        }
        // Drop the nodes nothing is stored under any more, deepest first.
        for &n in path.iter().rev() {
            if n == ROOT || !self.nodes[n].below.is_empty() {
                break;
            }
            let parent = self.nodes[n].parent;
            let first = self.nodes[n].label[0];
            self.nodes[parent].children.remove(&first);
            self.nodes[n] = Node::default();
            self.free.push(n);
        }
    }

    /// The longest prefix of `query` that any entry holds, and the entries holding it.
    pub fn longest_match(&self, query: &[TokenId]) -> Match {
        let mut node = ROOT;
        let mut i = 0;
        while i < query.len() {
            let Some(&child) = self.nodes[node].children.get(&query[i]) else {
                break;
            };
            let common = common_prefix(&self.nodes[child].label, &query[i..]);
            i += common;
            node = child;
            if common < self.nodes[child].label.len() {
                break;
            }
        }
        Match {
            len: i,
            entries: self.nodes[node].below.iter().copied().collect(),
        }
    }

    /// Entries whose whole sequence is a prefix of `query`, as `(length, id)`, shortest
    /// first. Used when a cache can only be resumed at its exact end.
    pub fn prefixes_of(&self, query: &[TokenId]) -> Vec<(usize, EntryId)> {
        let mut found: Vec<(usize, EntryId)> =
            self.nodes[ROOT].ends.iter().map(|e| (0, *e)).collect();
        let mut node = ROOT;
        let mut i = 0;
        while i < query.len() {
            let Some(&child) = self.nodes[node].children.get(&query[i]) else {
                break;
            };
            let label = &self.nodes[child].label;
            if query.len() - i < label.len() || query[i..i + label.len()] != label[..] {
                break;
            }
            i += label.len();
            node = child;
            found.extend(self.nodes[node].ends.iter().map(|e| (i, *e)));
        }
        found
    }

    /// Tokens in the union of the entries that `keep` selects: a prefix several of them
    /// share is counted once.
    pub fn distinct_tokens(&self, keep: impl Fn(EntryId) -> bool) -> usize {
        let mut total = 0;
        let mut stack = vec![ROOT];
        while let Some(n) = stack.pop() {
            let node = &self.nodes[n];
            if !node.below.iter().any(|id| keep(*id)) {
                continue;
            }
            total += node.label.len();
            stack.extend(node.children.values().copied());
        }
        total
    }

    /// Entries stored in the tree.
    pub fn len(&self) -> usize {
        self.nodes[ROOT].below.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cut `node`'s edge after `at` tokens: `node` keeps the first part (and its id, so
    /// callers and the parent's map stay valid); a new node below it takes the rest.
    fn split(&mut self, node: usize, at: usize) {
        let upper = &mut self.nodes[node];
        let tail = upper.label.split_off(at);
        let lower = Node {
            label: tail,
            children: std::mem::take(&mut upper.children),
            parent: node,
            ends: std::mem::take(&mut upper.ends),
            below: upper.below.clone(),
        };
        let first = lower.label[0];
        let lower = self.alloc(lower);
        let grandchildren: Vec<usize> = self.nodes[lower].children.values().copied().collect();
        for c in grandchildren {
            self.nodes[c].parent = lower;
        }
        self.nodes[node].children.insert(first, lower);
    }

    fn alloc(&mut self, node: Node) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        }
    }
}

fn common_prefix(a: &[TokenId], b: &[TokenId]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut v: Vec<EntryId>) -> Vec<EntryId> {
        v.sort_unstable();
        v
    }

    #[test]
    fn longest_match_across_branches() {
        let mut t = RadixTree::default();
        t.insert(&[1, 2, 3, 4, 5], 1);
        t.insert(&[1, 2, 3, 9], 2);
        t.insert(&[7, 8], 3);
        let m = t.longest_match(&[1, 2, 3, 4, 6]);
        assert_eq!((m.len, m.entries), (4, vec![1]));
        let m = t.longest_match(&[1, 2, 3, 7]);
        assert_eq!(m.len, 3);
        assert_eq!(sorted(m.entries), vec![1, 2]);
        let m = t.longest_match(&[1, 2]);
        assert_eq!((m.len, sorted(m.entries)), (2, vec![1, 2]));
        assert_eq!(t.longest_match(&[5]).len, 0);
        assert_eq!(t.longest_match(&[7, 8, 9]).entries, vec![3]);
        assert_eq!(t.len(), 3);
        // [1 2 3] + [4 5] + [9] + [7 8]
        assert_eq!(t.distinct_tokens(|_| true), 8);
        assert_eq!(t.distinct_tokens(|id| id != 3), 6);
        assert_eq!(t.distinct_tokens(|id| id == 2), 4);
    }

    #[test]
    fn prefixes_of_lists_whole_entries_only() {
        let mut t = RadixTree::default();
        t.insert(&[1, 2], 1);
        t.insert(&[1, 2, 3, 4], 2);
        t.insert(&[1, 2, 3, 4, 5, 6], 3);
        t.insert(&[1, 5], 4);
        assert_eq!(t.prefixes_of(&[1, 2, 3, 4, 5]), vec![(2, 1), (4, 2)]);
        assert_eq!(t.prefixes_of(&[1, 2, 3]), vec![(2, 1)]);
        assert_eq!(t.prefixes_of(&[9]), vec![]);
    }

    #[test]
    fn remove_prunes_and_keeps_others() {
        let mut t = RadixTree::default();
        t.insert(&[1, 2, 3], 1);
        t.insert(&[1, 2, 4], 2);
        t.insert(&[1, 2], 3);
        t.remove(&[1, 2, 3], 1);
        assert_eq!(t.longest_match(&[1, 2, 3]).len, 2);
        assert_eq!(sorted(t.longest_match(&[1, 2, 3]).entries), vec![2, 3]);
        t.remove(&[1, 2], 3);
        assert_eq!(t.prefixes_of(&[1, 2, 4]), vec![(3, 2)]);
        t.remove(&[1, 2, 4], 2);
        assert!(t.is_empty());
        assert_eq!(t.longest_match(&[1, 2, 4]).len, 0);
        // Freed nodes are reused and the tree still works.
        t.insert(&[5, 6, 7], 9);
        t.insert(&[5, 6, 8], 10);
        assert_eq!(t.longest_match(&[5, 6, 7]).entries, vec![9]);
    }

    #[test]
    fn removing_an_unknown_sequence_changes_nothing() {
        let mut t = RadixTree::default();
        t.insert(&[1, 2, 3], 1);
        t.remove(&[1, 2], 1);
        t.remove(&[4], 1);
        assert_eq!(t.longest_match(&[1, 2, 3]).entries, vec![1]);
    }

    #[test]
    fn matches_a_brute_force_search() {
        // Random sequences over a small alphabet share many prefixes.
        let mut state = 12345u64;
        let mut next = move |n: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        let mut t = RadixTree::default();
        let mut stored: Vec<(EntryId, Vec<TokenId>)> = Vec::new();
        for id in 0..300u64 {
            let len = next(12) as usize;
            let seq: Vec<TokenId> = (0..len).map(|_| next(3) as TokenId).collect();
            if next(4) == 0 && !stored.is_empty() {
                let (old, tokens) = stored.remove(next(stored.len() as u64) as usize);
                t.remove(&tokens, old);
            }
            t.insert(&seq, id);
            stored.push((id, seq));
            let query: Vec<TokenId> = (0..next(14)).map(|_| next(3) as TokenId).collect();
            let best = stored
                .iter()
                .map(|(_, s)| common_prefix(s, &query))
                .max()
                .unwrap_or(0);
            let m = t.longest_match(&query);
            assert_eq!(m.len, best, "query {query:?}");
            let want: Vec<EntryId> = stored
                .iter()
                .filter(|(_, s)| common_prefix(s, &query) >= best)
                .map(|(id, _)| *id)
                .collect();
            assert_eq!(sorted(m.entries), sorted(want));
            let mut exact: Vec<(usize, EntryId)> = stored
                .iter()
                .filter(|(_, s)| query.starts_with(s))
                .map(|(id, s)| (s.len(), *id))
                .collect();
            exact.sort_unstable();
            let mut got = t.prefixes_of(&query);
            got.sort_unstable();
            assert_eq!(got, exact);
        }
    }
}
