//! Compiled grammars by their lark text. A client such as Claude Code sends the same
//! tools with every request; writing their lark is cheap, compiling it is not (see
//! `compile_times` in the tests), so each distinct grammar is compiled once and each
//! request gets a copy of the fresh parser.

use std::collections::HashMap;
use std::sync::Mutex;

use llguidance::Matcher;

/// How many grammars are kept: the least recently used goes first.
pub(super) const CAPACITY: usize = 32;

/// Compiled grammars, shared by the request handlers (behind a lock, which is not held
/// while compiling).
pub(super) struct GrammarCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Each grammar's fresh parser, and when it was last asked for.
    entries: HashMap<String, (Matcher, u64)>,
    clock: u64,
    stats: CacheStats,
}

/// What the cache has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Grammars found compiled.
    pub hits: u64,
    /// Grammars compiled.
    pub misses: u64,
    /// Grammars held now.
    pub len: usize,
}

impl GrammarCache {
    pub(super) fn new(capacity: usize) -> GrammarCache {
        GrammarCache {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// A copy of `lark`'s parser, compiled by `compile` unless it is held. A grammar that
    /// fails to compile is not kept.
    pub(super) fn get_or_compile(
        &self,
        lark: &str,
        compile: impl FnOnce() -> Result<Matcher, String>,
    ) -> Result<Matcher, String> {
        {
            let mut inner = self.lock();
            inner.clock += 1;
            let now = inner.clock;
            if let Some((matcher, used)) = inner.entries.get_mut(lark) {
                *used = now;
                let copy = matcher.deep_clone();
                inner.stats.hits += 1;
                return Ok(copy);
            }
            inner.stats.misses += 1;
        }
        let matcher = compile()?;
        let copy = matcher.deep_clone();
        let mut inner = self.lock();
        if !inner.entries.contains_key(lark) && inner.entries.len() >= self.capacity {
            let oldest = inner
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(lark, _)| lark.clone());
            if let Some(oldest) = oldest {
                inner.entries.remove(&oldest);
            }
        }
        inner.clock += 1;
        let now = inner.clock;
        inner.entries.insert(lark.to_owned(), (matcher, now));
        Ok(copy)
    }

    pub(super) fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            len: inner.entries.len(),
            ..inner.stats
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map is consistent after any panic (a compile runs outside the lock).
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Instant;

    use super::*;
    use crate::constrain::Grammars;
    use crate::model::{TokenMask, Tokenizer};
    use crate::output::ToolFormat;
    use crate::testing::ByteTokenizer;

    fn grammars() -> Grammars {
        Grammars::new(&ByteTokenizer, &HashMap::new()).unwrap()
    }

    fn json_lark(n: usize) -> String {
        format!("start: %json {{\"const\": {n}}}\n")
    }

    #[test]
    fn a_grammar_is_compiled_once_and_each_copy_starts_fresh() {
        let grammars = grammars();
        let schema = serde_json::json!({"type": "integer", "maximum": 30});
        let mut first = grammars.json_output(&schema).unwrap();
        assert_eq!(
            grammars.cache_stats(),
            CacheStats {
                hits: 0,
                misses: 1,
                len: 1
            }
        );
        // The first copy's progress does not reach the next one.
        first.accept(ByteTokenizer.encode("3")[0]);
        let mut second = grammars.json_output(&schema).unwrap();
        assert_eq!(grammars.cache_stats().hits, 1);
        let four = ByteTokenizer.encode("4")[0];
        let mask = second.mask().unwrap();
        assert!(TokenMask(mask.as_slice()).allows(four));
        let mask = first.mask().unwrap();
        assert!(!TokenMask(mask.as_slice()).allows(four));
    }

    #[test]
    fn the_least_recently_used_grammar_goes_first() {
        let grammars = grammars();
        let cache = GrammarCache::new(2);
        let compile = |n: usize| {
            cache
                .get_or_compile(&json_lark(n), || grammars.matcher(&json_lark(n)))
                .unwrap()
        };
        compile(1);
        compile(2);
        compile(1); // 2 is now the oldest.
        compile(3);
        assert_eq!(
            cache.stats(),
            CacheStats {
                hits: 1,
                misses: 3,
                len: 2
            }
        );
        compile(1);
        assert_eq!(cache.stats().hits, 2);
        compile(2);
        assert_eq!(cache.stats().misses, 4);
    }

    #[test]
    fn a_grammar_that_fails_is_not_kept() {
        let grammars = grammars();
        let bad = "start: nope\n";
        for _ in 0..2 {
            assert!(grammars
                .cache
                .get_or_compile(bad, || grammars.matcher(bad))
                .is_err());
        }
        assert_eq!(
            grammars.cache_stats(),
            CacheStats {
                hits: 0,
                misses: 2,
                len: 0
            }
        );
    }

    /// Builds the grammars of Claude Code's tools in every tool format, forced and lazy,
    /// twice: the second time comes from the cache. Prints how long the first took, and
    /// the forced grammar's first mask (with `--nocapture`; over ByteTokenizer's 257
    /// tokens, so the grammar's own cost: crates/pensieve-llama/tests/real_models.rs
    /// measures it over a real vocabulary).
    #[test]
    fn compile_times() {
        let tools = crate::testing::claude_code_tools();
        assert_eq!(tools.len(), 12);
        let grammars = grammars();
        for format in ToolFormat::all() {
            let name = format.name();
            let before = grammars.cache_stats();
            let start = Instant::now();
            let mut forced = grammars.forced_call(format, &tools, None).unwrap();
            let built = start.elapsed();
            let start = Instant::now();
            assert!(forced.mask().is_some(), "{name}");
            let mask = start.elapsed();
            let start = Instant::now();
            grammars.call_body(format, &tools, true).unwrap();
            let lazy = start.elapsed();
            let first = grammars.cache_stats();
            let start = Instant::now();
            grammars.forced_call(format, &tools, None).unwrap();
            grammars.call_body(format, &tools, true).unwrap();
            let cached = start.elapsed();
            let second = grammars.cache_stats();
            let asked = first.hits + first.misses - before.hits - before.misses;
            assert_eq!(second.misses, first.misses, "{name}: compiled again");
            assert_eq!(second.hits - first.hits, asked, "{name}");
            let compiled = first.misses - before.misses;
            eprintln!(
                "{name:>13}: forced {built:>9.2?} (first mask {mask:>8.2?}), lazy {lazy:>9.2?} \
                 ({compiled} of {asked} grammars compiled); again, from the cache: {cached:.2?}"
            );
        }
    }
}
