//! The cache policy over the scripted backend: hits by tier, redundancy, budgets,
//! shared prefixes kept longest, and the disk tier across instances.

use super::*;
use crate::testing::ScriptedRunner;

fn tokens(n: usize, base: TokenId) -> Vec<TokenId> {
    (0..n as TokenId).map(|i| base + i).collect()
}

fn cache(host_bytes: u64) -> PrefixCache {
    PrefixCache::new(
        CacheConfig {
            host_bytes,
            ..CacheConfig::default()
        },
        true,
        true,
        "test",
    )
}

/// Put `t` into slot `seq` of the runner, as a finished request would leave it.
fn fill(runner: &mut ScriptedRunner, seq: SeqId, t: &[TokenId]) {
    let batch: Vec<_> = t
        .iter()
        .enumerate()
        .map(|(i, tok)| crate::BatchToken {
            seq,
            token: *tok,
            pos: i as u32,
            logits: false,
        })
        .collect();
    runner.batch = batch.len().max(1);
    runner.decode(&batch).unwrap();
}

#[test]
fn a_context_entry_is_shared_and_its_prefixes_are_redundant() {
    let mut r = ScriptedRunner::new("");
    let mut c = cache(1 << 20);
    let short = tokens(10, 100);
    fill(&mut r, 0, &short);
    assert!(c.insert_context(&short, 10, 0, false).is_empty());
    let mut long = short.clone();
    long.extend(tokens(5, 500));
    fill(&mut r, 1, &long);
    // The longer entry covers the shorter one, whose slot comes back.
    assert_eq!(c.insert_context(&long, 15, 1, false), vec![0]);

    let mut query = short.clone();
    query.extend([7, 7, 7]);
    let hit = c.lookup(&query).unwrap();
    assert_eq!((hit.len, hit.source_len), (10, 15));
    assert!(matches!(hit.source, Source::Context(1)));
    // The whole query matching still leaves the last token to evaluate.
    let hit = c.lookup(&long).unwrap();
    assert_eq!(hit.len, 14);
}

#[test]
fn a_few_tokens_of_a_long_entry_are_no_hit() {
    let mut r = ScriptedRunner::new("");
    let mut c = cache(1 << 20);
    let long = tokens(400, 100);
    fill(&mut r, 0, &long);
    c.insert_context(&long, 400, 0, false);
    // The template's opening, say: not worth taking a 400-token entry for.
    let mut query = tokens(10, 100);
    query.push(7);
    assert!(c.lookup(&query).is_none());
    // Out of a short entry, the same few tokens are.
    let short = tokens(40, 5000);
    fill(&mut r, 1, &short);
    c.insert_context(&short, 40, 1, false);
    let mut query = tokens(10, 5000);
    query.push(7);
    assert_eq!(c.lookup(&query).map(|h| h.len), Some(10));
}

#[test]
fn eviction_moves_context_entries_to_ram_within_budget() {
    let mut r = ScriptedRunner::new("");
    // Snapshots are 4 bytes a token: room for 25 tokens.
    let mut c = cache(100);
    for seq in 0..3u32 {
        let t = tokens(10, 1000 * (seq as TokenId + 1));
        fill(&mut r, seq, &t);
        c.insert_context(&t, 10, seq, false);
    }
    assert_eq!(c.evict_context(&mut r), Some(0));
    assert_eq!(c.evict_context(&mut r), Some(1));
    assert_eq!(c.evict_context(&mut r), Some(2));
    assert_eq!(c.evict_context(&mut r), None);
    let s = c.stats();
    assert_eq!(
        (s.context_entries, s.host_entries, s.host_bytes),
        (0, 2, 80)
    );
    // The oldest went out of RAM, and without a disk it is gone.
    assert!(c.lookup(&tokens(11, 1000)).is_none());
    let hit = c.lookup(&tokens(11, 3000)).unwrap();
    assert!(matches!(hit.source, Source::Snapshot(_)));
    assert_eq!(hit.len, 10);
    assert_eq!(r.log.lock().unwrap().used_cells(), 0);
}

#[test]
fn shared_prefixes_are_evicted_last() {
    let mut r = ScriptedRunner::new("");
    let mut c = cache(1 << 20);
    let system = tokens(100, 1);
    fill(&mut r, 0, &system);
    c.insert_context(&system, 100, 0, true);
    for seq in 1..4u32 {
        let t = tokens(10, 1000 * seq as TokenId);
        fill(&mut r, seq, &t);
        c.insert_context(&t, 10, seq, false);
    }
    // The shared one is the oldest, yet the others go first.
    assert_eq!(c.evict_context(&mut r), Some(1));
    assert_eq!(c.evict_context(&mut r), Some(2));
    assert_eq!(c.evict_context(&mut r), Some(3));
    assert_eq!(c.evict_context(&mut r), Some(0));
}

#[test]
fn a_partial_hit_on_another_prompt_is_a_shared_prefix() {
    let mut r = ScriptedRunner::new("");
    let mut c = cache(1 << 20);
    let mut a = tokens(100, 1);
    a.extend(tokens(20, 5000));
    fill(&mut r, 0, &a);
    c.insert_context(&a, 120, 0, false);
    let mut b = tokens(100, 1);
    b.extend(tokens(20, 9000));
    let hit = c.lookup(&b).unwrap();
    assert_eq!(hit.len, 100);
    assert!(hit.shared_prefix);
}

#[test]
fn the_disk_tier_survives_a_new_cache() {
    let dir = std::env::temp_dir().join(format!("pensieve-disk-test-{}", rand::random::<u64>()));
    let config = CacheConfig {
        host_bytes: 1 << 20,
        disk_dir: Some(dir.clone()),
        disk_bytes: 1 << 20,
    };
    let t = tokens(50, 7);
    {
        let mut r = ScriptedRunner::new("");
        let mut c = PrefixCache::new(config.clone(), true, true, "model-a");
        fill(&mut r, 0, &t);
        c.insert_context(&t, 50, 0, false);
        assert_eq!(c.persist(&mut r), 1);
    }
    let mut again = t.clone();
    again.push(1);
    // Another model's cache sees none of it.
    assert!(PrefixCache::new(config.clone(), true, true, "model-b")
        .lookup(&again)
        .is_none());
    let mut c = PrefixCache::new(config, true, true, "model-a");
    assert_eq!(c.stats().disk_entries, 1);
    let hit = c.lookup(&again).unwrap();
    assert_eq!(hit.len, 50);
    let Source::Snapshot(bytes) = hit.source else {
        panic!("expected a snapshot");
    };
    assert_eq!(bytes.len(), 200);
    let _ = std::fs::remove_dir_all(dir);
}

/// The estimate made off the engine thread and the engine's own lookup agree on
/// `prompt`; returns the length they agree on. The estimate goes first: a lookup may
/// change the cache (a disk entry read into RAM, or dropped when unreadable).
fn agrees(c: &mut PrefixCache, index: &CacheIndex, prompt: &[TokenId]) -> usize {
    let estimate = index.estimate(prompt);
    let hit = c.lookup(prompt).map_or(0, |h| h.len);
    assert_eq!(estimate, hit, "a prompt of {} tokens", prompt.len());
    hit
}

fn cat(parts: &[&[TokenId]]) -> Vec<TokenId> {
    parts.concat()
}

#[test]
fn the_queued_estimate_equals_the_lookup_over_context_entries() {
    let mut r = ScriptedRunner::new("");
    let mut c = cache(1 << 20);
    // Taken before anything is stored: it follows the cache as it changes.
    let index = c.index();
    let system = tokens(100, 1);
    let a = cat(&[&system, &tokens(20, 5000)]);
    assert_eq!(agrees(&mut c, &index, &a), 0);
    fill(&mut r, 0, &a);
    c.insert_context(&a, 120, 0, false);
    // The same prompt again: all but its last token.
    assert_eq!(agrees(&mut c, &index, &a), 119);
    // Longer: the whole entry. Another question: the shared part of an entry.
    assert_eq!(agrees(&mut c, &index, &cat(&[&a, &[9, 9]])), 120);
    assert_eq!(agrees(&mut c, &index, &cat(&[&system, &[7; 30]])), 100);
    assert_eq!(agrees(&mut c, &index, &[1]), 0);
    assert_eq!(agrees(&mut c, &index, &[]), 0);
    assert_eq!(agrees(&mut c, &index, &tokens(50, 900)), 0);
    // A longer turn of the same conversation makes `a` redundant: it leaves both.
    let a2 = cat(&[&a, &tokens(30, 7000)]);
    fill(&mut r, 1, &a2);
    assert_eq!(c.insert_context(&a2, 150, 1, false), vec![0]);
    assert_eq!(agrees(&mut c, &index, &cat(&[&a2, &[3]])), 150);
    assert_eq!(agrees(&mut c, &index, &cat(&[&a, &[3]])), 120);
}

#[test]
fn the_queued_estimate_equals_the_lookup_over_host_and_disk_entries() {
    let dir = std::env::temp_dir().join(format!("pensieve-index-test-{}", rand::random::<u64>()));
    let config = CacheConfig {
        // Room for one 60-token snapshot in RAM: the other goes to disk.
        host_bytes: 300,
        disk_dir: Some(dir.clone()),
        disk_bytes: 1 << 20,
    };
    let a = tokens(60, 10);
    let b = cat(&[&tokens(30, 10), &tokens(30, 3000)]);
    {
        let mut r = ScriptedRunner::new("");
        let mut c = PrefixCache::new(config.clone(), true, true, "model");
        let index = c.index();
        fill(&mut r, 0, &a);
        c.insert_context(&a, 60, 0, false);
        fill(&mut r, 1, &b);
        c.insert_context(&b, 60, 1, false);
        assert_eq!(c.evict_context(&mut r), Some(0));
        assert_eq!(c.evict_context(&mut r), Some(1));
        let s = c.stats();
        assert_eq!(
            (s.context_entries, s.host_entries, s.disk_entries),
            (0, 1, 1)
        );
        assert_eq!(agrees(&mut c, &index, &cat(&[&a, &[1]])), 60);
        assert_eq!(agrees(&mut c, &index, &cat(&[&b, &[1]])), 60);
        assert_eq!(
            agrees(&mut c, &index, &cat(&[&tokens(30, 10), &[1, 2]])),
            30
        );
        c.persist(&mut r);
    }
    // A new cache over the same directory: entries known only on disk.
    let mut c = PrefixCache::new(config, true, true, "model");
    let index = c.index();
    assert_eq!(c.stats().disk_entries, 2);
    assert_eq!(agrees(&mut c, &index, &cat(&[&tokens(45, 10), &[1]])), 45);
    assert_eq!(agrees(&mut c, &index, &cat(&[&b, &[1]])), 60);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn without_truncation_the_queued_estimate_counts_whole_entries_only() {
    let mut c = PrefixCache::new(CacheConfig::default(), false, true, "test");
    let index = c.index();
    // Snapshots at two message boundaries of one conversation.
    let first = tokens(40, 1);
    let second = cat(&[&first, &tokens(25, 500)]);
    c.insert_snapshot(&first, 40, vec![0; 160], false);
    c.insert_snapshot(&second, 65, vec![0; 260], false);
    // Past the second boundary: the second snapshot.
    assert_eq!(agrees(&mut c, &index, &cat(&[&second, &[7, 7]])), 65);
    // Between them, or branching off inside the second: only the first is whole.
    assert_eq!(
        agrees(&mut c, &index, &cat(&[&first, &tokens(10, 500), &[7]])),
        40
    );
    // Exactly the second: its last token is evaluated, so only the first serves.
    assert_eq!(agrees(&mut c, &index, &second), 40);
    // Inside the first: nothing (a truncating backend would serve 30).
    assert_eq!(agrees(&mut c, &index, &tokens(31, 1)), 0);
    let mut truncating = cache(1 << 20);
    truncating.insert_snapshot(&first, 40, vec![0; 160], false);
    let index = truncating.index();
    assert_eq!(agrees(&mut truncating, &index, &tokens(31, 1)), 30);
}

#[test]
fn the_queued_estimate_equals_the_lookup_in_random_cache_states() {
    let mut state = 99u64;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    for can_truncate in [true, false] {
        let mut r = ScriptedRunner::new("");
        // A small RAM budget: snapshots come and go.
        let mut c = PrefixCache::new(
            CacheConfig {
                host_bytes: 400,
                ..CacheConfig::default()
            },
            can_truncate,
            true,
            "test",
        );
        let index = c.index();
        let mut free: Vec<SeqId> = (0..8).collect();
        let mut hits = 0;
        let mut stored: Vec<Vec<TokenId>> = vec![Vec::new()];
        for _ in 0..400 {
            // Sequences over a small alphabet share many prefixes.
            let len = 1 + next(30) as usize;
            let seq: Vec<TokenId> = (0..len).map(|_| next(3) as TokenId).collect();
            match next(4) {
                0 => {
                    let bytes = vec![0; 4 * len];
                    c.insert_snapshot(&seq, len, bytes, next(3) == 0);
                }
                1 => {
                    let slot = match free.pop() {
                        Some(s) => s,
                        None => c.evict_context(&mut r).expect("a slot held by an entry"),
                    };
                    r.release(slot);
                    fill(&mut r, slot, &seq);
                    free.extend(c.insert_context(&seq, len, slot, next(3) == 0));
                }
                2 => {
                    if let Some(slot) = c.evict_context(&mut r) {
                        free.push(slot);
                    }
                }
                _ => {}
            }
            // Half the queries continue a sequence stored earlier (a next turn).
            let mut query: Vec<TokenId> = if next(2) == 0 {
                stored[next(stored.len() as u64) as usize].clone()
            } else {
                Vec::new()
            };
            stored.push(seq);
            query.extend((0..next(12)).map(|_| next(3) as TokenId));
            if agrees(&mut c, &index, &query) > 0 {
                hits += 1;
            }
        }
        // Whole entries only are fewer hits: most sequences left the small cache.
        let least = if can_truncate { 200 } else { 40 };
        assert!(
            hits > least,
            "{hits} hits: the cases compared were mostly misses"
        );
    }
}
