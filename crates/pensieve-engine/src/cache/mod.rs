//! The prefix cache policy: which computed token sequences are kept, where, and for how
//! long.
//!
//! An entry is a token sequence whose KV the backend computed once. It lives in up to
//! three tiers:
//! - **context**: a sequence slot of the backend's KV cache holds it; a new request
//!   shares its cells ([`ModelRunner::share`]) or, when each sequence has cells of its
//!   own, takes the slot over ([`PrefixCache::adopt`]);
//! - **host**: a snapshot in RAM ([`ModelRunner::save`]), bounded in bytes;
//! - **disk**: the same snapshot in `--cache-dir`, which outlives the process.
//!
//! A [`RadixTree`] over the token ids finds the entry sharing the longest prefix with a
//! new prompt. Eviction is least-recently-used, tier by tier (context -> host -> disk ->
//! gone), and entries that several conversations share (a system prompt with tool
//! schemas) go last. The tree is a [`CacheIndex`] the request side reads too: it looks
//! up what a prompt will reuse when the request is queued.

mod disk;
mod index;
pub mod radix;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::model::{ModelRunner, SeqId, TokenId};
use disk::DiskStore;
pub use index::CacheIndex;
pub use radix::{EntryId, RadixTree};

/// How much the cache may keep.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Bytes of snapshots kept in RAM.
    pub host_bytes: u64,
    /// Where snapshots are written to survive a restart (none: RAM only).
    pub disk_dir: Option<PathBuf>,
    /// Bytes of snapshots kept on disk.
    pub disk_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            host_bytes: crate::settings::FALLBACK_CACHE_RAM,
            disk_dir: None,
            disk_bytes: crate::settings::DEFAULT_CACHE_DISK,
        }
    }
}

/// Prefixes shorter than this are not worth a slot of their own.
const MIN_SHARED_PREFIX: usize = 64;

/// A hit shorter than [`MIN_SHARED_PREFIX`] is used only when its entry holds at most this
/// many times its length.
const MAX_WASTE: usize = 16;

#[derive(Debug)]
struct Entry {
    tokens: Arc<[TokenId]>,
    /// How many of `tokens` were prompt (the rest was generated).
    prompt_len: usize,
    /// The sequence slot holding it in the backend's cache.
    seq: Option<SeqId>,
    host: Option<Arc<Vec<u8>>>,
    /// Size of its snapshot file, when it has one.
    disk: Option<u64>,
    last_used: u64,
    /// Several conversations start with it: evicted after the others.
    shared: bool,
}

impl Entry {
    fn eviction_key(&self) -> (bool, u64) {
        (self.shared, self.last_used)
    }
}

/// Where a hit's KV comes from.
#[derive(Debug, Clone)]
pub enum Source {
    Context(SeqId),
    Snapshot(Arc<Vec<u8>>),
}

/// The best cached prefix of a prompt.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Prompt tokens it covers.
    pub len: usize,
    /// Tokens the source holds; more than `len` means the source must be cut back.
    pub source_len: usize,
    pub source: Source,
    /// The hit is part of another conversation's prompt: a prefix worth an entry of its own.
    pub shared_prefix: bool,
}

/// Sizes, for metrics and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub context_entries: usize,
    pub context_tokens: u64,
    pub host_entries: usize,
    pub host_bytes: u64,
    pub disk_entries: usize,
    pub disk_bytes: u64,
}

/// The prefix cache of one engine.
pub struct PrefixCache {
    /// The entries' token sequences; the engine thread is its only writer.
    tree: CacheIndex,
    entries: HashMap<EntryId, Entry>,
    next_id: EntryId,
    clock: u64,
    host_bytes: u64,
    config: CacheConfig,
    disk: Option<DiskStore>,
}

impl PrefixCache {
    /// A cache for a backend; with a disk directory, the snapshots stored there for the
    /// same `fingerprint` are indexed at once.
    pub fn new(
        config: CacheConfig,
        can_truncate: bool,
        batch_invariant: bool,
        fingerprint: &str,
    ) -> Self {
        let mut cache = PrefixCache {
            tree: CacheIndex::new(can_truncate, batch_invariant),
            entries: HashMap::new(),
            next_id: 1,
            clock: 0,
            host_bytes: 0,
            disk: None,
            config,
        };
        if let Some(dir) = cache.config.disk_dir.clone() {
            match DiskStore::open(&dir, fingerprint) {
                Ok((store, found)) => {
                    let n = found.len();
                    for file in found {
                        let id = cache.add(file.tokens, file.prompt_len);
                        if let Some(e) = cache.entries.get_mut(&id) {
                            e.disk = Some(file.bytes);
                            e.last_used = file.age_rank;
                        }
                    }
                    cache.clock = cache.entries.len() as u64;
                    tracing::info!(dir = %store.dir().display(), entries = n, "prefix cache on disk");
                    cache.disk = Some(store);
                    cache.trim_disk();
                }
                Err(e) => tracing::warn!(
                    dir = %dir.display(),
                    "serving without the prefix cache on disk: {e}"
                ),
            }
        }
        cache
    }

    /// The index the request side reads: what a prompt would reuse, without asking the
    /// engine thread.
    pub fn index(&self) -> CacheIndex {
        self.tree.clone()
    }

    /// The longest usable cached prefix of `prompt`, leaving at least its last token to
    /// be evaluated (its logits start the generation). Its length follows
    /// [`CacheIndex::usable`], as the estimate made when a request is queued does.
    pub fn lookup(&mut self, prompt: &[TokenId]) -> Option<Hit> {
        let radix::Match {
            len,
            entries: candidates,
        } = self.tree.usable(prompt);
        if len == 0 {
            return None;
        }
        // Cheapest source first: a context slot, then RAM, then disk; newest among equals.
        let best = candidates.into_iter().max_by_key(|id| {
            let e = &self.entries[id];
            let tier = if e.seq.is_some() {
                2
            } else if e.host.is_some() {
                1
            } else {
                0
            };
            (tier, std::cmp::Reverse(e.tokens.len()), e.last_used)
        })?;
        self.clock += 1;
        let clock = self.clock;
        let entry = self.entries.get_mut(&best)?;
        // The chat template's first few tokens match everything: that is no reason to
        // keep an entry longer.
        if len >= MIN_SHARED_PREFIX {
            entry.last_used = clock;
        }
        let shared_prefix = len < entry.prompt_len && len >= MIN_SHARED_PREFIX;
        let source_len = entry.tokens.len();
        let source = if let Some(seq) = entry.seq {
            Source::Context(seq)
        } else if let Some(bytes) = &entry.host {
            Source::Snapshot(bytes.clone())
        } else {
            match self.read_disk(best) {
                Some(bytes) => Source::Snapshot(bytes),
                None => return self.lookup(prompt),
            }
        };
        Some(Hit {
            len,
            source_len,
            source,
            shared_prefix,
        })
    }

    /// Keep `tokens`, held by the backend's slot `seq`, as an entry. Entries it makes
    /// redundant (its own prefixes, when the backend can cut a sequence back) are
    /// dropped; returns the slots that frees.
    pub fn insert_context(
        &mut self,
        tokens: &[TokenId],
        prompt_len: usize,
        seq: SeqId,
        shared: bool,
    ) -> Vec<SeqId> {
        let mut freed = Vec::new();
        for (len, id) in self.tree.prefixes_of(tokens) {
            let redundant =
                len == tokens.len() || (self.tree.can_truncate() && !self.entries[&id].shared);
            if redundant {
                if let Some(s) = self.remove(id) {
                    freed.push(s);
                }
            }
        }
        let id = self.add(tokens.into(), prompt_len);
        if let Some(e) = self.entries.get_mut(&id) {
            e.seq = Some(seq);
            e.shared = shared;
        }
        freed
    }

    /// Keep a snapshot of `tokens` in RAM (spilling older ones to disk or dropping them
    /// to stay in budget); `shared` marks a prefix several conversations start with.
    pub fn insert_snapshot(
        &mut self,
        tokens: &[TokenId],
        prompt_len: usize,
        bytes: Vec<u8>,
        shared: bool,
    ) {
        let id = self.add(tokens.into(), prompt_len);
        if let Some(e) = self.entries.get_mut(&id) {
            e.shared = shared;
        }
        self.put_host(id, Arc::new(bytes));
    }

    /// A request takes over slot `seq` and the entry it holds (with cells of each
    /// sequence's own, continuing in place beats copying), keeping its first `len` tokens.
    ///
    /// A request that covers the entry's whole prompt is the same conversation's next turn
    /// (or a retry): the entry's generated tail, which the conversation moved past, is
    /// dropped, and nothing is copied, so the turn starts at once. Requests that start
    /// meanwhile with the same prefix copy it from the running sequence (see the
    /// scheduler's followers). A request that leaves the entry's prompt before its end is
    /// another conversation: the entry is saved to RAM first, unless it is stored there
    /// already, so its own conversation still finds it whole. So is it when the backend
    /// can't cut sequences back, since nothing can follow a running sequence there.
    pub fn adopt(&mut self, seq: SeqId, len: usize, runner: &mut dyn ModelRunner) {
        let Some(id) = self
            .entries
            .iter()
            .find(|(_, e)| e.seq == Some(seq))
            .map(|(id, _)| *id)
        else {
            return;
        };
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        entry.seq = None;
        let same_conversation = self.tree.can_truncate() && len + 1 >= entry.prompt_len;
        if entry.host.is_none() && !same_conversation {
            let started = std::time::Instant::now();
            match runner.save(seq) {
                Ok(bytes) => {
                    tracing::debug!(
                        tokens = entry.tokens.len(),
                        bytes = bytes.len(),
                        ms = started.elapsed().as_millis() as u64,
                        "a branched-from entry saved to RAM"
                    );
                    self.put_host(id, Arc::new(bytes));
                }
                Err(e) => tracing::warn!("cannot save a cache entry: {e}"),
            }
        }
        self.drop_if_empty(id);
    }

    /// Free one context slot: the least recently used entry held in one is saved to RAM
    /// and its slot released. None when no entry holds a slot.
    pub fn evict_context(&mut self, runner: &mut dyn ModelRunner) -> Option<SeqId> {
        let id = self
            .entries
            .iter()
            .filter(|(_, e)| e.seq.is_some())
            .min_by_key(|(_, e)| e.eviction_key())
            .map(|(id, _)| *id)?;
        let entry = self.entries.get_mut(&id)?;
        let seq = entry.seq.take()?;
        if entry.host.is_none() && entry.disk.is_none() {
            match runner.save(seq) {
                Ok(bytes) => self.put_host(id, Arc::new(bytes)),
                Err(e) => tracing::warn!("cannot save a cache entry: {e}"),
            }
        }
        runner.release(seq);
        self.drop_if_empty(id);
        Some(seq)
    }

    /// Forget every entry held in a context slot (after a backend failure their cells
    /// can't be trusted); returns the slots.
    pub fn drop_context(&mut self, runner: &mut dyn ModelRunner) -> Vec<SeqId> {
        let ids: Vec<EntryId> = self
            .entries
            .iter()
            .filter(|(_, e)| e.seq.is_some())
            .map(|(id, _)| *id)
            .collect();
        let mut freed = Vec::new();
        for id in ids {
            if let Some(seq) = self.entries.get_mut(&id).and_then(|e| e.seq.take()) {
                runner.release(seq);
                freed.push(seq);
            }
            self.drop_if_empty(id);
        }
        freed
    }

    /// Before the process exits: write every entry that is not on disk yet (context
    /// entries are saved first). Returns how many were written. Without a disk, nothing.
    pub fn persist(&mut self, runner: &mut dyn ModelRunner) -> usize {
        if self.disk.is_none() {
            return 0;
        }
        let mut ids: Vec<EntryId> = self
            .entries
            .iter()
            .filter(|(_, e)| e.disk.is_none())
            .map(|(id, _)| *id)
            .collect();
        // Most recently used first, in case the disk budget can't take them all.
        ids.sort_by_key(|id| std::cmp::Reverse(self.entries[id].last_used));
        let mut written = 0;
        for id in ids {
            let Some(entry) = self.entries.get(&id) else {
                continue;
            };
            let bytes = match (&entry.host, entry.seq) {
                (Some(b), _) => b.clone(),
                (None, Some(seq)) => match runner.save(seq) {
                    Ok(b) => Arc::new(b),
                    Err(e) => {
                        tracing::warn!("cannot save a cache entry: {e}");
                        continue;
                    }
                },
                (None, None) => continue,
            };
            if self.write_disk(id, &bytes) {
                written += 1;
            }
        }
        if let Some(disk) = &mut self.disk {
            disk.flush();
        }
        self.forget_failed_writes();
        written
    }

    pub fn stats(&self) -> CacheStats {
        // Context entries share the cells of their common prefixes: count those once.
        let mut s = CacheStats {
            context_tokens: self
                .tree
                .distinct_tokens(|id| self.entries.get(&id).is_some_and(|e| e.seq.is_some()))
                as u64,
            ..CacheStats::default()
        };
        for e in self.entries.values() {
            if e.seq.is_some() {
                s.context_entries += 1;
            }
            if let Some(b) = &e.host {
                s.host_entries += 1;
                s.host_bytes += b.len() as u64;
            }
            if let Some(b) = e.disk {
                s.disk_entries += 1;
                s.disk_bytes += b;
            }
        }
        s
    }

    fn add(&mut self, tokens: Arc<[TokenId]>, prompt_len: usize) -> EntryId {
        let id = self.next_id;
        self.next_id += 1;
        self.clock += 1;
        self.tree.insert(&tokens, prompt_len, id);
        self.entries.insert(
            id,
            Entry {
                tokens,
                prompt_len,
                seq: None,
                host: None,
                disk: None,
                last_used: self.clock,
                shared: false,
            },
        );
        id
    }

    /// Drop an entry from every tier; returns its context slot, which the caller frees.
    fn remove(&mut self, id: EntryId) -> Option<SeqId> {
        let entry = self.entries.remove(&id)?;
        self.tree.remove(&entry.tokens, id);
        if let Some(b) = &entry.host {
            self.host_bytes -= b.len() as u64;
        }
        if entry.disk.is_some() {
            if let Some(disk) = &mut self.disk {
                disk.delete(&entry.tokens);
            }
        }
        entry.seq
    }

    fn drop_if_empty(&mut self, id: EntryId) {
        if let Some(e) = self.entries.get(&id) {
            if e.seq.is_none() && e.host.is_none() && e.disk.is_none() {
                self.remove(id);
            }
        }
    }

    fn put_host(&mut self, id: EntryId, bytes: Arc<Vec<u8>>) {
        let size = bytes.len() as u64;
        if size > self.config.host_bytes {
            // Too big for RAM: straight to disk, if there is one.
            self.write_disk(id, &bytes);
            self.drop_if_empty(id);
            return;
        }
        while self.host_bytes + size > self.config.host_bytes {
            let Some(victim) = self
                .entries
                .iter()
                .filter(|(other, e)| **other != id && e.host.is_some())
                .min_by_key(|(_, e)| e.eviction_key())
                .map(|(id, _)| *id)
            else {
                break;
            };
            self.evict_host(victim);
        }
        if let Some(e) = self.entries.get_mut(&id) {
            self.host_bytes += size;
            e.host = Some(bytes);
        }
    }

    /// Move an entry's snapshot from RAM to disk (or drop it without a disk).
    fn evict_host(&mut self, id: EntryId) {
        let Some(bytes) = self.entries.get_mut(&id).and_then(|e| e.host.take()) else {
            return;
        };
        self.host_bytes -= bytes.len() as u64;
        if self.entries.get(&id).is_some_and(|e| e.disk.is_none()) {
            self.write_disk(id, &bytes);
        }
        self.drop_if_empty(id);
    }

    fn write_disk(&mut self, id: EntryId, bytes: &Arc<Vec<u8>>) -> bool {
        let Some(disk) = &mut self.disk else {
            return false;
        };
        let Some(entry) = self.entries.get_mut(&id) else {
            return false;
        };
        if !disk.write(id, entry.tokens.clone(), entry.prompt_len, bytes.clone()) {
            return false;
        }
        entry.disk = Some(bytes.len() as u64);
        self.trim_disk();
        true
    }

    /// Forget the disk copies whose write failed (a full disk, an I/O error): they
    /// are not there to read.
    pub fn forget_failed_writes(&mut self) {
        let Some(disk) = &mut self.disk else {
            return;
        };
        for id in disk.failed_writes() {
            if let Some(e) = self.entries.get_mut(&id) {
                e.disk = None;
            }
            self.drop_if_empty(id);
        }
    }

    fn read_disk(&mut self, id: EntryId) -> Option<Arc<Vec<u8>>> {
        let tokens = self.entries.get(&id)?.tokens.clone();
        let bytes = self.disk.as_mut().and_then(|d| d.read(&tokens));
        match bytes {
            Some(b) => {
                let b = Arc::new(b);
                self.put_host(id, b.clone());
                Some(b)
            }
            None => {
                // The file is gone or unreadable: forget it.
                if let Some(e) = self.entries.get_mut(&id) {
                    e.disk = None;
                }
                self.drop_if_empty(id);
                None
            }
        }
    }

    /// Delete the least recently used snapshot files past the disk budget.
    fn trim_disk(&mut self) {
        loop {
            let total: u64 = self.entries.values().filter_map(|e| e.disk).sum();
            if total <= self.config.disk_bytes {
                return;
            }
            let Some(victim) = self
                .entries
                .iter()
                .filter(|(_, e)| e.disk.is_some())
                .min_by_key(|(_, e)| e.eviction_key())
                .map(|(id, _)| *id)
            else {
                return;
            };
            if let (Some(disk), Some(e)) = (&mut self.disk, self.entries.get_mut(&victim)) {
                disk.delete(&e.tokens);
                e.disk = None;
            }
            self.drop_if_empty(victim);
        }
    }
}

/// The disk tier's reader over the bytes of one file, every check made: what the fuzz
/// targets drive (the tokens the file must hold are the ones its header names).
#[doc(hidden)]
pub fn read_snapshot_file(bytes: &[u8], fingerprint: &str) -> std::io::Result<Vec<u8>> {
    let len = bytes.len() as u64;
    let header = disk::parse_header(&mut &bytes[..], fingerprint, len)?;
    disk::decode_file(&mut &bytes[..], fingerprint, &header.tokens, len)
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
