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
        let mut c = PrefixCache::new(config.clone(), true, "model-a");
        fill(&mut r, 0, &t);
        c.insert_context(&t, 50, 0, false);
        assert_eq!(c.persist(&mut r), 1);
    }
    let mut again = t.clone();
    again.push(1);
    // Another model's cache sees none of it.
    assert!(PrefixCache::new(config.clone(), true, "model-b")
        .lookup(&again)
        .is_none());
    let mut c = PrefixCache::new(config, true, "model-a");
    assert_eq!(c.stats().disk_entries, 1);
    let hit = c.lookup(&again).unwrap();
    assert_eq!(hit.len, 50);
    let Source::Snapshot(bytes) = hit.source else {
        panic!("expected a snapshot");
    };
    assert_eq!(bytes.len(), 200);
    let _ = std::fs::remove_dir_all(dir);
}
