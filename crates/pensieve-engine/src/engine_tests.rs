//! Engine behaviour over the scripted backend: generation, limits, stops, prefix reuse,
//! cancellation, admission and shutdown.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::testing::{model_info, ByteTokenizer, ScriptedRunner, EOG};
use crate::{
    CacheConfig, Completion, FinishReason, GenerateRequest, Message, OutputFormat, Role, SeqId,
    Usage,
};

fn start(runner: ScriptedRunner, context: u32, queue: usize) -> Engine {
    start_with(runner, context, queue, 4, CacheConfig::default())
}

fn start_with(
    runner: ScriptedRunner,
    context: u32,
    queue: usize,
    parallel: usize,
    cache: CacheConfig,
) -> Engine {
    Engine::start(
        model_info(context),
        Arc::new(ByteTokenizer),
        Box::new(runner),
        EngineConfig {
            queue_capacity: queue,
            parallel,
            cache,
            ..EngineConfig::default()
        },
    )
    .unwrap()
}

fn valid(prompt: &str, max_tokens: u32) -> ValidRequest {
    ValidRequest {
        prompt: ByteTokenizer.encode(prompt),
        max_tokens,
        requested_max_tokens: max_tokens,
        sampling: SamplingParams::default(),
        stop_sequences: Vec::new(),
        cache_requested: true,
        cache_points: Vec::new(),
        output: OutputFormat::default(),
        constraint: None,
        lazy_call: None,
        tools: Vec::new(),
        media: Vec::new(),
    }
}

/// A prompt of messages ended by end-of-turn tokens (0): "system text", then `user`.
fn chat_turn(user: &str) -> ValidRequest {
    let mut p = ByteTokenizer.encode("system text");
    p.push(EOG);
    p.extend(ByteTokenizer.encode(user));
    p.push(EOG);
    p.extend(ByteTokenizer.encode("assistant:"));
    ValidRequest {
        prompt: p,
        ..valid("", 3)
    }
}

/// Drain a generation: its text and how it ended.
async fn finish(mut g: Generation) -> (String, Result<Completion, EngineError>) {
    let mut text = String::new();
    while let Some(event) = g.events.recv().await {
        match event {
            GenerationEvent::Text(t) => text.push_str(&t),
            GenerationEvent::PrefillDone { .. }
            | GenerationEvent::Logprob(_)
            | GenerationEvent::Thinking(_)
            | GenerationEvent::ToolCallStart { .. }
            | GenerationEvent::ToolCallArguments(_)
            | GenerationEvent::ToolCallEnd => {}
            GenerationEvent::Done(c) => return (text, Ok(c)),
            GenerationEvent::Failed(e) => return (text, Err(e)),
        }
    }
    panic!("generation ended without Done or Failed");
}

#[tokio::test]
async fn generates_until_end_of_turn() {
    let engine = start(ScriptedRunner::new("hello"), 256, 4);
    let (text, done) = finish(engine.submit(valid("prompt", 50)).unwrap()).await;
    let done = done.unwrap();
    assert_eq!(text, "hello");
    assert_eq!(done.reason, FinishReason::EndOfTurn);
    assert_eq!(done.usage.prompt_tokens, 6);
    assert_eq!(done.usage.completion_tokens, 5);
}

#[tokio::test]
async fn max_tokens_and_context_window() {
    let engine = start(ScriptedRunner::new("hello world"), 256, 4);
    let (text, done) = finish(engine.submit(valid("p", 3)).unwrap()).await;
    assert_eq!(text, "hel");
    assert_eq!(done.unwrap().reason, FinishReason::MaxTokens);

    let mut clamped = valid("p", 2);
    clamped.requested_max_tokens = 100_000;
    let (_, done) = finish(engine.submit(clamped).unwrap()).await;
    assert_eq!(done.unwrap().reason, FinishReason::ContextWindow);
}

#[tokio::test]
async fn stop_sequences_are_cut() {
    let engine = start(ScriptedRunner::new("one, two, three"), 256, 4);
    let mut req = valid("p", 50);
    req.stop_sequences = vec![", thr".into()];
    let (text, done) = finish(engine.submit(req).unwrap()).await;
    assert_eq!(text, "one, two");
    assert_eq!(
        done.unwrap().reason,
        FinishReason::StopSequence(", thr".into())
    );
}

/// The `(seq, start, count)` of every decode call, flattened.
fn decodes(log: &Arc<std::sync::Mutex<crate::testing::RunnerLog>>) -> Vec<(SeqId, u32, usize)> {
    log.lock()
        .unwrap()
        .decodes
        .iter()
        .flatten()
        .copied()
        .collect()
}

#[tokio::test]
async fn shared_prefix_is_not_computed_again() {
    // KV streams of each slot's own (both real backends), and one unified cache.
    for runner in [ScriptedRunner::new("ok"), shared_cells()] {
        let log = runner.log.clone();
        let engine = start(runner, 256, 4);
        let (_, first) = finish(
            engine
                .submit(valid("system prompt; question one", 5))
                .unwrap(),
        )
        .await;
        let first = first.unwrap();
        assert_eq!(first.usage.cached_prompt_tokens, 0);
        assert_eq!(first.usage.cache_creation_tokens, 27);
        log.lock().unwrap().decodes.clear();

        let (_, second) = finish(
            engine
                .submit(valid("system prompt; question two", 5))
                .unwrap(),
        )
        .await;
        let second = second.unwrap();
        let shared = "system prompt; question ".len() as u32;
        assert_eq!(second.usage.cached_prompt_tokens, shared);
        assert_eq!(second.usage.cache_creation_tokens, 27 - shared);
        // Prefill starts where the shared prefix ends: only the suffix is computed.
        let d = decodes(&log);
        assert_eq!((d[0].1, d[0].2), (shared, 3));
    }
}

/// A backend whose slots share one pool of cells (llama.cpp's unified KV cache).
fn shared_cells() -> ScriptedRunner {
    let mut runner = ScriptedRunner::new("ok");
    runner.shared_cells = true;
    runner
}

#[tokio::test]
async fn identical_prompt_reuses_all_but_the_last_token() {
    let engine = start(ScriptedRunner::new("ok"), 256, 4);
    let (_, _) = finish(engine.submit(valid("abcdef", 1)).unwrap()).await;
    let (_, again) = finish(engine.submit(valid("abcdef", 1)).unwrap()).await;
    assert_eq!(again.unwrap().usage.cached_prompt_tokens, 5);
}

#[tokio::test]
async fn prefill_runs_in_batch_sized_chunks() {
    let runner = ScriptedRunner::new("");
    let log = runner.log.clone();
    let engine = start(runner, 256, 4);
    let _ = finish(engine.submit(valid(&"x".repeat(20), 1)).unwrap()).await;
    let chunks: Vec<_> = decodes(&log).iter().map(|(_, p, n)| (*p, *n)).collect();
    assert_eq!(chunks, vec![(0, 8), (8, 8), (16, 4)]);
}

#[tokio::test]
async fn two_concurrent_streams_both_progress() {
    let mut runner = ScriptedRunner::new("abc");
    runner.endless = true;
    runner.step_delay = Duration::from_millis(2);
    let log = runner.log.clone();
    let engine = start_with(runner, 4096, 4, 2, CacheConfig::default());
    let a = engine.submit(valid("first", 40)).unwrap();
    let b = engine.submit(valid("second", 40)).unwrap();
    let (a, b) = tokio::join!(finish(a), finish(b));
    assert_eq!(a.0.len(), 40);
    assert_eq!(b.0.len(), 40);
    // Both were decoded in the same steps: some decode call carries a token of each.
    let log = log.lock().unwrap();
    let together = log
        .decodes
        .iter()
        .filter(|call| call.len() == 2 && call.iter().all(|(_, _, n)| *n == 1))
        .count();
    assert!(together >= 30, "only {together} shared decode steps");
}

#[tokio::test]
async fn a_long_prefill_does_not_stall_decoding() {
    let mut runner = ScriptedRunner::new("abc");
    runner.endless = true;
    runner.step_delay = Duration::from_millis(1);
    let log = runner.log.clone();
    let engine = start_with(runner, 4096, 4, 2, CacheConfig::default());
    let mut a = engine.submit(valid("short", 500)).unwrap();
    // Wait until A is decoding, then send a prompt of 400 tokens.
    while let Some(e) = a.events.recv().await {
        if matches!(e, GenerationEvent::Text(_)) {
            break;
        }
    }
    let b = engine.submit(valid(&"y".repeat(400), 1)).unwrap();
    let _ = finish(b).await;
    drop(a);
    let log = log.lock().unwrap();
    // Every step of B's prefill also carried A's next token, and B's chunks were
    // small enough to keep that step short.
    let b_steps: Vec<_> = log
        .decodes
        .iter()
        .skip(1) // A's own prefill
        .filter(|call| call.iter().any(|(_, _, n)| *n > 1))
        .collect();
    assert!(b_steps.len() >= 100, "{} steps", b_steps.len());
    for call in b_steps {
        assert_eq!(call.len(), 2, "{call:?}");
        assert!(call.iter().all(|(_, _, n)| *n <= 2), "{call:?}");
    }
}

#[tokio::test]
async fn dropping_the_generation_frees_its_cells() {
    let mut runner = ScriptedRunner::new("abc");
    runner.endless = true;
    runner.step_delay = Duration::from_millis(5);
    let log = runner.log.clone();
    let engine = start(runner, 100_000, 4);
    let mut g = engine.submit(valid("p", 50_000)).unwrap();
    // Wait for some output, then hang up.
    while let Some(e) = g.events.recv().await {
        if matches!(e, GenerationEvent::Text(_)) {
            break;
        }
    }
    assert!(log.lock().unwrap().used_cells() > 0);
    drop(g);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after_drop = log.lock().unwrap().decodes.len();
    assert_eq!(log.lock().unwrap().used_cells(), 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(log.lock().unwrap().decodes.len(), after_drop);
    assert_eq!(engine.running(), 0);
    // What it computed was kept in RAM: a retry reuses it.
    let (_, done) = finish(engine.submit(valid("p", 2)).unwrap()).await;
    assert!(done.is_ok());
}

#[tokio::test]
async fn a_preempted_sequence_resumes_where_it_was() {
    // 60 cells for two sequences that need 10 + 40 each: one must give way.
    let mut runner = ScriptedRunner::new("abcdefghij");
    runner.positional = true;
    runner.endless = true;
    runner.cells = 60;
    let log = runner.log.clone();
    let engine = start_with(runner, 60, 4, 2, CacheConfig::default());
    let a = engine.submit(valid("0123456789", 40)).unwrap();
    let b = engine.submit(valid("9876543210", 40)).unwrap();
    let (a, b) = tokio::join!(finish(a), finish(b));
    // The reply depends only on positions: both continue exactly as if alone.
    let expected: String = (10..50).map(|i| (b'a' + (i % 10) as u8) as char).collect();
    assert_eq!(a.0, expected);
    assert_eq!(b.0, expected);
    assert_eq!(a.1.unwrap().usage.completion_tokens, 40);
    assert_eq!(b.1.unwrap().usage.completion_tokens, 40);
    assert!(log.lock().unwrap().saves >= 1, "nothing was preempted");
}

#[tokio::test]
async fn host_snapshots_stay_within_their_budget() {
    // Two slots: one runs, one caches; older entries are saved to RAM (4 bytes a
    // token here) and the oldest of those dropped past 200 bytes.
    let mut runner = ScriptedRunner::new("ok");
    runner.sequences = 2;
    let cache = CacheConfig {
        host_bytes: 200,
        ..CacheConfig::default()
    };
    let engine = start_with(runner, 4096, 4, 1, cache);
    for i in 0..12 {
        let prompt = format!("{i} distinct prompt number {i}");
        let _ = finish(engine.submit(valid(&prompt, 2)).unwrap()).await;
        let text = engine.metrics().encode();
        let host = metric(&text, "pensieve_cache_bytes{tier=\"host\"}");
        assert!(host <= 200.0, "{host} bytes in RAM");
    }
    let text = engine.metrics().encode();
    assert!(metric(&text, "pensieve_cache_bytes{tier=\"host\"}") > 0.0);
    // At most both slots hold an entry.
    assert!(metric(&text, "pensieve_cache_entries{tier=\"context\"}") <= 2.0);
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("{name} missing in {text}"))
}

#[tokio::test]
async fn a_restart_with_a_cache_dir_still_hits() {
    let dir = std::env::temp_dir().join(format!("pensieve-cache-test-{}", rand::random::<u64>()));
    let cache = CacheConfig {
        disk_dir: Some(dir.clone()),
        ..CacheConfig::default()
    };
    let prompt = "a long system prompt that every session starts with; hello";
    let engine = start_with(ScriptedRunner::new("ok"), 4096, 4, 2, cache.clone());
    let _ = finish(engine.submit(valid(prompt, 2)).unwrap()).await;
    engine.shutdown();
    tokio::task::spawn_blocking({
        let e = engine.clone();
        move || e.join()
    })
    .await
    .unwrap();

    let runner = ScriptedRunner::new("ok");
    let log = runner.log.clone();
    let engine = start_with(runner, 4096, 4, 2, cache);
    let (_, done) = finish(engine.submit(valid(prompt, 2)).unwrap()).await;
    assert_eq!(
        done.unwrap().usage.cached_prompt_tokens,
        prompt.len() as u32 - 1
    );
    assert_eq!(log.lock().unwrap().restores, 1);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn without_truncation_prefixes_resume_at_message_boundaries() {
    // Sliding-window backends can't cut back: snapshots are taken at end-of-turn
    // tokens (0 here) and a new prompt resumes from the last one it shares.
    let mut runner = ScriptedRunner::new("ok");
    runner.truncatable = false;
    let log = runner.log.clone();
    let engine = start(runner, 4096, 4);
    let (_, first) = finish(engine.submit(chat_turn("first question")).unwrap()).await;
    assert_eq!(first.unwrap().usage.cached_prompt_tokens, 0);
    let (_, second) = finish(engine.submit(chat_turn("second question")).unwrap()).await;
    assert_eq!(second.unwrap().usage.cached_prompt_tokens, 12);
    // Nothing was ever cut back.
    assert!(log.lock().unwrap().decodes.len() > 2);
}

#[tokio::test]
async fn where_results_depend_on_the_batch_a_repeated_prompt_is_computed_as_the_first_time() {
    // On a GPU, continuing the first request's entry one token short of its prompt would
    // compute that token alone instead of inside the prompt's batch: other numbers, and
    // a repeated greedy request could answer differently.
    let mut runner = ScriptedRunner::new("ok");
    runner.batch_variant = true;
    let engine = start(runner, 4096, 4);
    let turn = chat_turn("same question");
    let (a, first) = finish(engine.submit(turn.clone()).unwrap()).await;
    assert_eq!(first.unwrap().usage.cached_prompt_tokens, 0);
    let (b, again) = finish(engine.submit(turn.clone()).unwrap()).await;
    assert_eq!(a, b);
    // The repeat ends inside the first request's prompt: computed whole again, as the
    // first time.
    assert_eq!(again.unwrap().usage.cached_prompt_tokens, 0);
    // The next turn goes past the first prompt's end: it continues the entry.
    let mut next = turn.clone();
    next.prompt.extend(ByteTokenizer.encode("ok"));
    next.prompt.push(EOG);
    next.prompt.extend(ByteTokenizer.encode("and then?"));
    let (_, next) = finish(engine.submit(next).unwrap()).await;
    assert!(next.unwrap().usage.cached_prompt_tokens as usize >= turn.prompt.len());

    // The same on the CPU continues from all but the last prompt token.
    let engine = start(ScriptedRunner::new("ok"), 4096, 4);
    let turn = chat_turn("same question");
    finish(engine.submit(turn.clone()).unwrap())
        .await
        .1
        .unwrap();
    let again = finish(engine.submit(turn.clone()).unwrap())
        .await
        .1
        .unwrap();
    assert_eq!(
        again.usage.cached_prompt_tokens as usize,
        turn.prompt.len() - 1
    );
}

#[tokio::test]
async fn a_gpu_backend_prefills_whole_batches_while_others_decode() {
    for (share, largest) in [(None, 2), (Some(8), 7)] {
        let mut runner = ScriptedRunner::new("abc");
        runner.endless = true;
        runner.prefill_while_decoding = share;
        runner.step_delay = Duration::from_millis(2);
        let log = runner.log.clone();
        let engine = start(runner, 4096, 4);
        let mut decoding = engine.submit(valid("p", 10_000)).unwrap();
        while let Some(e) = decoding.events.recv().await {
            if matches!(e, GenerationEvent::Text(_)) {
                break;
            }
        }
        let (_, done) = finish(engine.submit(valid(&"q".repeat(40), 1)).unwrap()).await;
        done.unwrap();
        // The second prompt's chunks, in steps where the first sequence decoded too.
        let chunks: Vec<usize> = log
            .lock()
            .unwrap()
            .decodes
            .iter()
            .filter(|d| d.len() == 2)
            .flat_map(|d| d.iter().map(|&(_, _, n)| n).filter(|&n| n > 1))
            .collect();
        assert_eq!(chunks.iter().max().copied(), Some(largest), "{chunks:?}");
        engine.shutdown();
    }
}

#[tokio::test]
async fn a_full_queue_is_overloaded() {
    let mut runner = ScriptedRunner::new("abc");
    runner.endless = true;
    runner.step_delay = Duration::from_millis(20);
    let engine = start_with(runner, 100_000, 1, 1, CacheConfig::default());
    let mut running = engine.submit(valid("p", 1000)).unwrap();
    // Make sure the first one left the queue and is running.
    while let Some(e) = running.events.recv().await {
        if matches!(e, GenerationEvent::PrefillDone { .. }) {
            break;
        }
    }
    let _waiting = engine.submit(valid("p", 1)).unwrap();
    let err = engine.submit(valid("p", 1)).unwrap_err();
    assert_eq!(err, EngineError::Overloaded { waiting: 1 });
}

#[tokio::test]
async fn shutdown_ends_running_generations() {
    let mut runner = ScriptedRunner::new("abc");
    runner.endless = true;
    runner.step_delay = Duration::from_millis(5);
    let engine = start(runner, 100_000, 4);
    let g = engine.submit(valid("p", 50_000)).unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    engine.shutdown();
    let (_, result) = finish(g).await;
    assert_eq!(result.unwrap_err(), EngineError::ShuttingDown);
    let joiner = engine.clone();
    tokio::task::spawn_blocking(move || joiner.join())
        .await
        .unwrap();
    assert_eq!(
        engine.submit(valid("p", 1)).unwrap_err(),
        EngineError::ShuttingDown
    );
}

#[test]
fn validation_checks_the_context() {
    let engine = start(ScriptedRunner::new(""), 64, 4);
    let long = GenerateRequest::new("m", vec![Message::text(Role::User, "x".repeat(100))], 10);
    let err = engine.validate(&long).unwrap_err();
    let EngineError::PromptTooLong { tokens, max } = err else {
        panic!("expected PromptTooLong, got {err:?}");
    };
    assert!(tokens > 100);
    assert_eq!(max, 63);
    assert_eq!(
        EngineError::PromptTooLong { tokens, max }.to_string(),
        format!("prompt is too long: {tokens} tokens > 63 maximum")
    );

    let short = GenerateRequest::new("m", vec![Message::text(Role::User, "hi")], 128_000);
    let v = engine.validate(&short).unwrap();
    assert_eq!(v.max_tokens as usize, 64 - v.prompt.len());
    assert_eq!(v.requested_max_tokens, 128_000);
    assert_eq!(engine.prompt_tokens(&short).unwrap(), v.prompt);

    let mut bad = short.clone();
    bad.sampling.temperature = -1.0;
    assert!(matches!(
        engine.validate(&bad),
        Err(EngineError::InvalidRequest(_))
    ));
}

/// A backend whose sequences each have cells of their own (llama.cpp's KV streams, the
/// scripted runner's default), with one slot per running sequence.
fn own_cells(slots: usize) -> ScriptedRunner {
    let mut runner = ScriptedRunner::new("ok");
    runner.sequences = slots;
    runner
}

#[tokio::test]
async fn own_cells_a_next_turn_continues_in_the_same_slot() {
    let runner = own_cells(2);
    let log = runner.log.clone();
    let engine = start_with(runner, 4096, 4, 2, CacheConfig::default());
    let first = "system prompt; question one";
    let (reply, _) = finish(engine.submit(valid(first, 5)).unwrap()).await;
    let next = format!("{first}{reply} and a follow-up");
    let (_, second) = finish(engine.submit(valid(&next, 5)).unwrap()).await;
    // Prompt and reply were all still in the slot: nothing saved, copied or restored
    // before the second turn could start.
    let computed = (first.len() + reply.len()) as u32;
    assert_eq!(second.unwrap().usage.cached_prompt_tokens, computed);
    let log = log.lock().unwrap();
    assert_eq!((log.copies, log.saves, log.restores), (0, 0, 0));
}

#[tokio::test]
async fn own_cells_a_turn_running_in_the_slot_is_followed_by_newcomers() {
    // The second turn takes the first's slot over without saving it; a request with the
    // same conversation arriving while that turn runs copies the prefix from it.
    let mut runner = own_cells(2);
    runner.step_delay = Duration::from_millis(2);
    let log = runner.log.clone();
    let engine = start_with(runner, 4096, 4, 2, CacheConfig::default());
    let first = "s".repeat(300);
    let (reply, _) = finish(engine.submit(valid(&first, 5)).unwrap()).await;
    let next = format!("{first}{reply} and then");
    let turn = engine
        .submit(valid(&format!("{next}{}", "x".repeat(200)), 5))
        .unwrap();
    let side = engine
        .submit(valid(&format!("{next} meanwhile"), 5))
        .unwrap();
    let ((_, turn), (_, side)) = tokio::join!(finish(turn), finish(side));
    let whole_turn = (first.len() + reply.len()) as u32;
    assert_eq!(turn.unwrap().usage.cached_prompt_tokens, whole_turn);
    assert!(side.unwrap().usage.cached_prompt_tokens >= whole_turn);
    let log = log.lock().unwrap();
    // The newcomer's copy; nothing was saved before the turn began.
    assert_eq!((log.copies, log.saves, log.restores), (1, 0, 0));
}

#[tokio::test]
async fn own_cells_an_unrelated_request_leaves_a_long_entry_alone() {
    // A request sharing only a few tokens with a long cached conversation starts in a
    // free slot: taking the conversation's slot over would save the whole of it first.
    let runner = own_cells(2);
    let log = runner.log.clone();
    let engine = start_with(runner, 4096, 4, 2, CacheConfig::default());
    let first = format!("sys{}", "a".repeat(400));
    let (reply, _) = finish(engine.submit(valid(&first, 5)).unwrap()).await;
    let (_, other) = finish(engine.submit(valid("sys: a title?", 5)).unwrap()).await;
    assert_eq!(other.unwrap().usage.cached_prompt_tokens, 0);
    let next = format!("{first}{reply} more");
    let (_, second) = finish(engine.submit(valid(&next, 5)).unwrap()).await;
    let whole_turn = (first.len() + reply.len()) as u32;
    assert_eq!(second.unwrap().usage.cached_prompt_tokens, whole_turn);
    let log = log.lock().unwrap();
    assert_eq!((log.copies, log.saves, log.restores), (0, 0, 0));
}

#[tokio::test]
async fn own_cells_a_batch_lists_its_slots_in_order() {
    // The first request's slot (0) becomes a cache entry; three requests at once then
    // take slots 1, 2 and, last, 0 again. llama.cpp computes a batch in one pass only
    // over consecutive slots in order, so every decode call lists them 0, 1, 2.
    let mut runner = own_cells(3);
    runner.endless = true;
    runner.step_delay = Duration::from_millis(1);
    let log = runner.log.clone();
    let engine = start_with(runner, 4096, 4, 3, CacheConfig::default());
    let _ = finish(engine.submit(valid("warm up", 2)).unwrap()).await;
    let a = engine.submit(valid("one", 12)).unwrap();
    let b = engine.submit(valid("two", 12)).unwrap();
    let c = engine.submit(valid("six", 12)).unwrap();
    let _ = tokio::join!(finish(a), finish(b), finish(c));
    let log = log.lock().unwrap();
    let mut all_three = 0;
    for call in &log.decodes {
        let seqs: Vec<SeqId> = call.iter().map(|(s, _, _)| *s).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        if seqs == [0, 1, 2] {
            all_three += 1;
        }
    }
    assert!(all_three >= 5, "{:?}", log.decodes);
}

#[tokio::test]
async fn own_cells_a_branch_keeps_the_conversation_it_left() {
    // One slot: B starts from A's system prompt in A's slot, so A's turn goes to RAM
    // first and comes back whole for A's next turn.
    let runner = own_cells(1);
    let log = runner.log.clone();
    let engine = start_with(runner, 4096, 4, 1, CacheConfig::default());
    let system = "s".repeat(200);
    let a = format!("{system}{}", "a".repeat(100));
    let b = format!("{system}{}", "b".repeat(100));
    let (a_reply, _) = finish(engine.submit(valid(&a, 5)).unwrap()).await;
    let (_, b_done) = finish(engine.submit(valid(&b, 5)).unwrap()).await;
    assert_eq!(b_done.unwrap().usage.cached_prompt_tokens, 200);
    {
        let log = log.lock().unwrap();
        // A's entry, and the shared system prompt as an entry of its own.
        assert_eq!((log.copies, log.saves, log.restores), (0, 2, 0));
    }
    let a2 = format!("{a}{a_reply} next");
    let (_, a2_done) = finish(engine.submit(valid(&a2, 5)).unwrap()).await;
    let whole_turn = (a.len() + a_reply.len()) as u32;
    assert_eq!(a2_done.unwrap().usage.cached_prompt_tokens, whole_turn);
    assert_eq!(log.lock().unwrap().restores, 1);
}

#[tokio::test]
async fn own_cells_without_truncation_checkpoints_go_to_ram() {
    let mut runner = own_cells(1);
    runner.truncatable = false;
    let log = runner.log.clone();
    let engine = start_with(runner, 4096, 4, 1, CacheConfig::default());
    let (_, first) = finish(engine.submit(chat_turn("first question")).unwrap()).await;
    assert_eq!(first.unwrap().usage.cached_prompt_tokens, 0);
    assert!(log.lock().unwrap().saves >= 1);
    let (_, second) = finish(engine.submit(chat_turn("second question")).unwrap()).await;
    assert_eq!(second.unwrap().usage.cached_prompt_tokens, 12);
    assert_eq!(log.lock().unwrap().restores, 1);
}

#[tokio::test]
async fn a_tool_call_in_the_output_becomes_call_events_and_ends_in_tool_use() {
    let reply = "Checking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    let engine = start(ScriptedRunner::new(reply), 4096, 4);
    let mut request = valid("weather?", 200);
    request.output = OutputFormat {
        model: None,
        tools: Some(crate::ToolFormat::HERMES),
        ..OutputFormat::default()
    };
    let mut g = engine.submit(request).unwrap();
    let (mut text, mut name, mut args) = (String::new(), None, String::new());
    let (mut fragments, mut ended) = (0, false);
    while let Some(e) = g.events.recv().await {
        match e {
            GenerationEvent::Text(t) => {
                assert!(name.is_none(), "text after the call: {t:?}");
                text.push_str(&t);
            }
            GenerationEvent::ToolCallStart { name: n } => name = Some(n),
            GenerationEvent::ToolCallArguments(a) => {
                fragments += 1;
                args.push_str(&a);
            }
            GenerationEvent::ToolCallEnd => ended = true,
            GenerationEvent::Done(c) => {
                assert_eq!(c.reason, FinishReason::ToolUse);
                break;
            }
            GenerationEvent::Failed(e) => panic!("{e}"),
            GenerationEvent::PrefillDone { .. }
            | GenerationEvent::Logprob(_)
            | GenerationEvent::Thinking(_) => {}
        }
    }
    assert_eq!(text, "Checking.");
    assert_eq!(name.as_deref(), Some("get_weather"));
    assert_eq!(args, "{\"city\": \"Paris\"}");
    assert!(ended);
    assert!(fragments > 1, "the arguments streamed in pieces");
}

#[tokio::test]
async fn own_cells_a_request_starting_beside_the_continued_turn_still_hits() {
    // A's next turn takes over A's slot; B, which starts from A's system prompt at the
    // same time (a subagent), reads it from the copy kept in RAM.
    let runner = own_cells(2);
    let engine = start_with(runner, 4096, 4, 2, CacheConfig::default());
    let system = "s".repeat(120);
    let a = format!("{system} question A");
    let (a_reply, _) = finish(engine.submit(valid(&a, 5)).unwrap()).await;
    let a2 = engine
        .submit(valid(&format!("{a}{a_reply} more"), 5))
        .unwrap();
    let b = engine
        .submit(valid(&format!("{system} question B"), 5))
        .unwrap();
    let ((_, a2), (_, b)) = tokio::join!(finish(a2), finish(b));
    assert_eq!(
        a2.unwrap().usage.cached_prompt_tokens as usize,
        a.len() + a_reply.len()
    );
    assert_eq!(
        b.unwrap().usage.cached_prompt_tokens as usize,
        system.len() + 1 + "question ".len()
    );
}

/// A tool without arguments, as the scripted tests call it.
fn list_files(closed: bool) -> crate::ToolSpec {
    let mut parameters = serde_json::json!({"type": "object", "properties": {}});
    if closed {
        parameters["additionalProperties"] = serde_json::Value::Bool(false);
    }
    crate::ToolSpec {
        name: "list_files".into(),
        description: None,
        parameters,
    }
}

/// A request whose output is read for Hermes calls.
fn tool_request() -> ValidRequest {
    let mut request = valid("files?", 200);
    request.output = OutputFormat {
        model: None,
        tools: Some(crate::ToolFormat::HERMES),
        ..OutputFormat::default()
    };
    request
}

fn grammars() -> crate::constrain::Grammars {
    crate::constrain::Grammars::new(&ByteTokenizer, &std::collections::HashMap::new()).unwrap()
}

/// What a generation said: text, calls as (name, arguments), and how it ended.
async fn drain_calls(mut g: Generation) -> (String, Vec<(String, String)>, FinishReason) {
    let (mut text, mut calls) = (String::new(), Vec::new());
    loop {
        match g.events.recv().await.expect("the engine answers") {
            GenerationEvent::Text(t) => text.push_str(&t),
            GenerationEvent::ToolCallStart { name } => calls.push((name, String::new())),
            GenerationEvent::ToolCallArguments(a) => {
                if let Some((_, args)) = calls.last_mut() {
                    args.push_str(&a);
                }
            }
            GenerationEvent::Done(c) => return (text, calls, c.reason),
            GenerationEvent::Failed(e) => panic!("{e}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_forced_tool_call_is_made_whatever_the_model_prefers() {
    // The "model" wants to chat; the grammar of `tool_choice: any` makes it call.
    let engine = start(ScriptedRunner::new("Sure, happy to help!"), 4096, 4);
    let mut request = tool_request();
    request.constraint = Some(
        grammars()
            .forced_call(crate::ToolFormat::HERMES, &[list_files(true)], None)
            .unwrap(),
    );
    let (text, calls, reason) = drain_calls(engine.submit(request).unwrap()).await;
    assert_eq!(reason, FinishReason::ToolUse, "text: {text:?}");
    assert_eq!(text, "");
    assert_eq!(calls, vec![("list_files".to_owned(), "{}".to_owned())]);
}

#[tokio::test]
async fn under_auto_a_call_the_model_opens_follows_the_tools_schema() {
    // The "model" names the tool, then passes an argument the schema does not have; once
    // it named the tool, the grammar only lets it write the tool's arguments.
    let reply = "{\"name\": \"list_files\", \"arguments\": {\"x\": 1}}";
    let engine = start(ScriptedRunner::new(reply), 4096, 4);
    let mut request = tool_request();
    request.lazy_call = Some(
        grammars()
            .call_body(crate::ToolFormat::HERMES, &[list_files(false)], true)
            .unwrap(),
    );
    let (_, calls, reason) = drain_calls(engine.submit(request).unwrap()).await;
    assert_eq!(reason, FinishReason::ToolUse);
    assert_eq!(calls, vec![("list_files".to_owned(), "{}".to_owned())]);
}

#[tokio::test]
async fn an_object_naming_no_tool_stays_text() {
    // Without its marker, JSON that names no offered tool is not made into a call.
    let reply = "{\"name\": \"helloworld\", \"arguments\": {}}";
    let engine = start(ScriptedRunner::new(reply), 4096, 4);
    let mut request = tool_request();
    request.lazy_call = Some(
        grammars()
            .call_body(crate::ToolFormat::HERMES, &[list_files(false)], true)
            .unwrap(),
    );
    request.tools = vec![list_files(false)];
    let (text, calls, reason) = drain_calls(engine.submit(request).unwrap()).await;
    assert_eq!(reason, FinishReason::EndOfTurn);
    assert!(calls.is_empty());
    assert_eq!(text, reply);
}

#[tokio::test]
async fn without_parallel_calls_the_turn_ends_after_the_first() {
    let one = "{\"name\": \"list_files\", \"arguments\": {}}";
    let engine = start(ScriptedRunner::new(&format!("{one}\n{one}")), 4096, 4);
    for (parallel, expected) in [(true, 2), (false, 1)] {
        let mut request = tool_request();
        request.lazy_call = Some(
            grammars()
                .call_body(crate::ToolFormat::HERMES, &[list_files(false)], parallel)
                .unwrap(),
        );
        let (_, calls, reason) = drain_calls(engine.submit(request).unwrap()).await;
        assert_eq!(reason, FinishReason::ToolUse);
        assert_eq!(calls.len(), expected, "parallel calls allowed: {parallel}");
    }
}

#[tokio::test]
async fn a_forced_call_comes_out_as_a_call_in_every_format() {
    let engine = start(ScriptedRunner::new("Sure, happy to help!"), 4096, 4);
    for format in crate::ToolFormat::all() {
        let mut request = tool_request();
        request.output.tools = Some(format);
        request.constraint = Some(
            grammars()
                .forced_call(format, &[list_files(true)], None)
                .unwrap(),
        );
        let (text, calls, reason) = drain_calls(engine.submit(request).unwrap()).await;
        assert_eq!(reason, FinishReason::ToolUse, "{format:?}: {text:?}");
        assert_eq!(text, "", "{format:?}");
        assert_eq!(
            calls,
            vec![("list_files".to_owned(), "{}".to_owned())],
            "{format:?}"
        );
    }
}

#[tokio::test]
async fn requests_arriving_together_compute_their_shared_prefix_once() {
    let mut runner = own_cells(4);
    runner.step_delay = Duration::from_millis(1);
    let log = runner.log.clone();
    let engine = start_with(runner, 4096, 4, 4, CacheConfig::default());
    let system = "s".repeat(100);
    let prompts: Vec<String> = ["A", "B", "C"]
        .iter()
        .map(|q| format!("{system} question {q}"))
        .collect();
    let runs: Vec<_> = prompts
        .iter()
        .map(|p| engine.submit(valid(p, 5)).unwrap())
        .collect();
    let (a, b, c) = {
        let mut it = runs.into_iter();
        let (a, b, c) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        tokio::join!(finish(a), finish(b), finish(c))
    };
    let shared = format!("{system} question ").len() as u32;
    let cached: Vec<u32> = [a, b, c]
        .into_iter()
        .map(|(text, done)| {
            assert_eq!(text, "ok");
            done.unwrap().usage.cached_prompt_tokens
        })
        .collect();
    assert_eq!(cached, vec![0, shared, shared]);
    let d = decodes(&log);
    // Position 0 was computed for one sequence only; the other two got copies.
    assert_eq!(d.iter().filter(|(_, pos, _)| *pos == 0).count(), 1, "{d:?}");
    let prefill: usize = d.iter().map(|(_, _, n)| n).sum();
    let prompt_total: usize = prompts.iter().map(String::len).sum();
    assert!(
        prefill < prompt_total - 2 * shared as usize + 20,
        "{prefill} tokens computed"
    );
    assert_eq!(log.lock().unwrap().copies, 2);
}

#[tokio::test]
async fn a_request_whose_leader_leaves_still_completes() {
    let mut runner = own_cells(4);
    runner.step_delay = Duration::from_millis(2);
    let engine = start_with(runner, 4096, 4, 4, CacheConfig::default());
    let system = "s".repeat(400);
    let leader = engine
        .submit(valid(&format!("{system} question A"), 5))
        .unwrap();
    let follower = engine
        .submit(valid(&format!("{system} question B"), 5))
        .unwrap();
    // The leader leaves while its prompt (50 steps of 8 tokens) is being computed.
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(leader);
    let (text, done) = finish(follower).await;
    assert_eq!(text, "ok");
    let cached = done.unwrap().usage.cached_prompt_tokens;
    // What the leader had computed when it left was saved and read back.
    assert!(cached > 0 && cached < 400, "{cached}");
}

#[tokio::test]
async fn reasoning_follows_the_requests_thinking_switches() {
    let mut info = model_info(4096);
    info.chat_template = Some(
        "{% for m in messages %}{{ m.content }}{% endfor %}{% if enable_thinking %}<think>{% endif %}"
            .into(),
    );
    let engine = Engine::start(
        info,
        Arc::new(ByteTokenizer),
        Box::new(ScriptedRunner::new("Plan.</think>Done.")),
        EngineConfig::default(),
    )
    .unwrap();
    let run = |thinking: bool, show: bool| {
        let mut r = GenerateRequest::new("m", vec![Message::text(Role::User, "hi")], 50);
        r.thinking = thinking;
        r.show_thinking = show;
        let valid = engine.validate(&r).unwrap();
        let mut g = engine.submit(valid).unwrap();
        async move {
            let (mut thought, mut text) = (String::new(), String::new());
            while let Some(event) = g.events.recv().await {
                match event {
                    GenerationEvent::Thinking(t) => thought.push_str(&t),
                    GenerationEvent::Text(t) => text.push_str(&t),
                    GenerationEvent::Done(_) => break,
                    _ => {}
                }
            }
            (thought, text)
        }
    };
    // The prompt opened `<think>`: the reply's reasoning is thinking.
    assert_eq!(run(true, true).await, ("Plan.".into(), "Done.".into()));
    // Reasoning that was not asked to be shown is dropped, never turned into text.
    assert_eq!(run(true, false).await, (String::new(), "Done.".into()));
    // A forced call renders with thinking off: its grammar starts at the call.
    let mut forced = GenerateRequest::new("m", vec![Message::text(Role::User, "hi")], 50);
    forced.thinking = true;
    forced.tools = vec![list_files(true)];
    forced.tool_choice = crate::ToolChoice::Required;
    let prompt = |r: &GenerateRequest| -> String {
        let tokens = engine.prompt_tokens(r).unwrap();
        let bytes: Vec<u8> = tokens
            .into_iter()
            .flat_map(|t| ByteTokenizer.token_bytes(t))
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    assert!(!prompt(&forced).ends_with("<think>"));
    forced.tool_choice = crate::ToolChoice::Auto;
    assert!(prompt(&forced).ends_with("<think>"));
}

#[tokio::test]
async fn a_qwen_call_without_its_marker_still_follows_the_grammar() {
    // Small Qwen models write `<function=...>` without `<tool_call>`: the call's grammar
    // takes over there. Unconstrained, the parameter the tool does not have would pass.
    let reply = "Sure.\n<function=list_files>\n<parameter=junk>\nx\n</parameter>\n</function>";
    let engine = start(ScriptedRunner::new(reply), 4096, 4);
    let mut request = tool_request();
    request.output.tools = Some(crate::ToolFormat::QWEN3_CODER);
    request.tools = vec![list_files(true)];
    request.lazy_call = Some(
        grammars()
            .call_body(crate::ToolFormat::QWEN3_CODER, &[list_files(true)], false)
            .unwrap(),
    );
    let (text, calls, reason) = drain_calls(engine.submit(request).unwrap()).await;
    assert_eq!(text, "Sure.");
    assert_eq!(calls, vec![("list_files".to_owned(), "{}".to_owned())]);
    assert_eq!(reason, FinishReason::ToolUse);
}

#[test]
fn the_prompt_split_follows_cache_control() {
    let asked = valid("0123456789", 1);
    let split = Usage::for_prompt(&asked, 4);
    assert_eq!(
        split,
        Usage {
            prompt_tokens: 10,
            cached_prompt_tokens: 4,
            cache_creation_tokens: 6,
            completion_tokens: 0,
        }
    );
    assert_eq!(split.plain_prompt_tokens(), 0);
    let plain = ValidRequest {
        cache_requested: false,
        ..asked
    };
    let split = Usage::for_prompt(&plain, 4);
    assert_eq!(
        (split.cache_creation_tokens, split.plain_prompt_tokens()),
        (0, 6)
    );
    // Never more cached than the prompt.
    assert_eq!(Usage::for_prompt(&plain, 99).cached_prompt_tokens, 10);
}

/// Run `request`: the usage announced when it was queued, and the final one.
async fn queued_and_final(engine: &Engine, request: ValidRequest) -> (Usage, Usage) {
    let generation = engine.submit(request).unwrap();
    let queued = generation.queued_usage;
    let (_, done) = finish(generation).await;
    (queued, done.unwrap().usage)
}

#[tokio::test]
async fn the_split_announced_when_queued_is_the_final_one() {
    // Cells shared between slots, and cells of each slot's own.
    for runner in [shared_cells(), own_cells(2)] {
        let engine = start_with(runner, 4096, 4, 2, CacheConfig::default());
        let first = "system prompt; question one";
        let cases = [
            // Cold.
            (valid(first, 5), 0),
            // Another question after the same system prompt.
            (valid("system prompt; question two", 5), 24),
            // The first again, without cache_control: all but the last token.
            (
                ValidRequest {
                    cache_requested: false,
                    ..valid(first, 5)
                },
                26,
            ),
            // The first conversation's next turn, sent as soon as the last one ended:
            // its prompt and reply ("ok") are in the cache.
            (valid(&format!("{first}ok; and three"), 5), 29),
        ];
        for (request, cached) in cases {
            let (queued, done) = queued_and_final(&engine, request).await;
            assert_eq!(done.cached_prompt_tokens, cached);
            assert_eq!(
                queued,
                Usage {
                    completion_tokens: 0,
                    ..done
                }
            );
        }
    }
}

#[tokio::test]
async fn without_truncation_the_queued_split_counts_whole_snapshots() {
    let mut runner = ScriptedRunner::new("ok");
    runner.truncatable = false;
    let engine = start(runner, 4096, 4);
    let (queued, done) = queued_and_final(&engine, chat_turn("first question")).await;
    assert_eq!(
        (queued.cached_prompt_tokens, done.cached_prompt_tokens),
        (0, 0)
    );
    let (queued, done) = queued_and_final(&engine, chat_turn("second question")).await;
    assert_eq!(done.cached_prompt_tokens, 12);
    assert_eq!(
        queued,
        Usage {
            completion_tokens: 0,
            ..done
        }
    );
}

/// A counter's value in the metrics text.
fn counter(engine: &Engine, name: &str) -> u64 {
    let text = engine.metrics().encode();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// `request` through a scripted `reply`, with speculation `on` or not: the text, the
/// usage, the decode calls made and the tokens the slot holds after. Its steps cost about
/// the same whatever their size, as decode does where memory bounds it.
async fn speculated(
    reply: &str,
    request: ValidRequest,
    on: bool,
) -> (String, Completion, usize, Vec<crate::TokenId>, Engine) {
    let mut runner = ScriptedRunner::new(reply);
    runner.step_delay = Duration::from_millis(2);
    speculated_on(runner, request, on).await
}

/// An engine over `runner`, speculating (n-gram) when `on`.
fn speculating(runner: ScriptedRunner, on: bool) -> Engine {
    Engine::start(
        model_info(4096),
        Arc::new(ByteTokenizer),
        Box::new(runner),
        EngineConfig {
            speculative: if on {
                crate::speculate::Speculative::Ngram
            } else {
                crate::speculate::Speculative::Off
            },
            ..EngineConfig::default()
        },
    )
    .unwrap()
}

async fn speculated_on(
    runner: ScriptedRunner,
    request: ValidRequest,
    on: bool,
) -> (String, Completion, usize, Vec<crate::TokenId>, Engine) {
    let log = runner.log.clone();
    let engine = speculating(runner, on);
    let (text, done) = finish(engine.submit(request).unwrap()).await;
    let log = log.lock().unwrap();
    let calls = log.decodes.len();
    (text, done.unwrap(), calls, log.tokens_of(0), engine)
}

#[tokio::test]
async fn speculation_changes_no_token_and_saves_steps() {
    // The reply quotes the prompt, then parts from it: drafts stand, then fail.
    let prompt = "Edit: fn add(a: i32, b: i32) -> i32 { a + b }\nNew: ";
    let reply = "fn add(a: i32, b: i32) -> i32 { a + b + 1 } // fn add(a: i32";
    let (plain, plain_done, plain_calls, plain_kv, plain_engine) =
        speculated(reply, valid(prompt, 200), false).await;
    let (spec, spec_done, spec_calls, spec_kv, engine) =
        speculated(reply, valid(prompt, 200), true).await;
    assert_eq!(spec, reply);
    assert_eq!(spec, plain);
    assert_eq!(spec_done.usage, plain_done.usage);
    assert_eq!(spec_done.reason, plain_done.reason);
    // The slot holds exactly what was computed, rejected drafts cut off.
    let mut all = ByteTokenizer.encode(prompt);
    all.extend(ByteTokenizer.encode(reply));
    assert_eq!(spec_kv, all);
    assert_eq!(plain_kv, all);
    // A third of the steps saved at least (the first draft checks one token, to measure
    // what a bigger step costs).
    assert!(
        spec_calls * 3 < plain_calls * 2,
        "{spec_calls} steps with speculation, {plain_calls} without"
    );
    let drafted = counter(&engine, "pensieve_draft_tokens_total");
    let accepted = counter(&engine, "pensieve_draft_accepted_tokens_total");
    assert!(
        accepted > 20 && drafted > accepted,
        "{accepted} of {drafted}"
    );
    assert_eq!(counter(&plain_engine, "pensieve_draft_tokens_total"), 0);
}

#[tokio::test]
async fn where_each_token_costs_a_step_few_drafts_are_checked() {
    // Compute-bound steps: a draft of k tokens costs k steps' time. Only probes check a
    // token, however well drafts would stand; the output is the same.
    let prompt = "Edit: fn add(a: i32, b: i32) -> i32 { a + b }\nNew: ";
    let reply = "fn add(a: i32, b: i32) -> i32 { a + b } fn add(a: i32, b: i32) -> i32";
    let compute_bound = || {
        let mut runner = ScriptedRunner::new(reply);
        // The scripted backend reports this modelled cost, so a loaded machine's late
        // wake-ups do not make steps look fixed (timed, a run beside a build checked 17).
        runner.token_delay = Duration::from_millis(5);
        runner
    };
    let (plain, plain_done, ..) = speculated_on(compute_bound(), valid(prompt, 200), false).await;
    let (spec, spec_done, _, _, engine) =
        speculated_on(compute_bound(), valid(prompt, 200), true).await;
    assert_eq!((spec, spec_done.usage), (plain, plain_done.usage));
    let drafted = counter(&engine, "pensieve_draft_tokens_total");
    // The first draft (one token) measures what a bigger step costs; after it, probes
    // of one token. With memory-bound steps the same reply checks dozens.
    assert!(drafted <= 12, "{drafted} drafted tokens checked");
}

#[tokio::test]
async fn drafts_inside_a_tool_call_follow_its_grammar() {
    // A Write-like call quotes the prompt: the drafts that stand are under the call's
    // grammar, and the call is the one made without speculation.
    let code = "fn add(a: i32, b: i32) -> i32 { a + b }";
    let reply =
        format!("{{\"name\": \"write\", \"arguments\": {{\"content\": \"{code} {code}\"}}}}");
    let write = crate::ToolSpec {
        name: "write".into(),
        description: None,
        parameters: serde_json::json!({
            "type": "object",
            "properties": {"content": {"type": "string"}},
            "required": ["content"],
            "additionalProperties": false,
        }),
    };
    let mut outcomes = Vec::new();
    for on in [false, true] {
        let mut runner = ScriptedRunner::new(&reply);
        runner.step_delay = Duration::from_millis(2);
        let log = runner.log.clone();
        let engine = speculating(runner, on);
        let mut request = valid(&format!("Write this twice: {code}\n"), 400);
        request.output.tools = Some(crate::ToolFormat::HERMES);
        request.tools = vec![write.clone()];
        request.lazy_call = Some(
            grammars()
                .call_body(
                    crate::ToolFormat::HERMES,
                    std::slice::from_ref(&write),
                    false,
                )
                .unwrap(),
        );
        let outcome = drain_calls(engine.submit(request).unwrap()).await;
        let steps = log.lock().unwrap().decodes.len();
        let accepted = counter(&engine, "pensieve_draft_accepted_tokens_total");
        outcomes.push((outcome, steps, accepted));
    }
    let ((plain, plain_steps, _), (spec, spec_steps, accepted)) = (&outcomes[0], &outcomes[1]);
    assert_eq!(spec, plain);
    assert_eq!(spec.2, FinishReason::ToolUse);
    assert_eq!(
        spec.1,
        vec![(
            "write".to_owned(),
            format!("{{\"content\": \"{code} {code}\"}}")
        )]
    );
    assert!(*accepted >= 20, "{accepted} drafted tokens stood");
    assert!(
        spec_steps < plain_steps,
        "{spec_steps} steps, {plain_steps} without"
    );
}

#[tokio::test]
async fn an_earlier_requests_output_drafts_for_the_next() {
    // Two requests of unrelated prompts write the same thing (as subagents making the same
    // call): the second drafts from the first's output, and writes what it would have.
    let reply = "<call>{\"name\": \"Read\", \"file_path\": \"/src/main.rs\"}</call>";
    let mut runner = ScriptedRunner::new(reply);
    runner.step_delay = Duration::from_millis(2);
    let engine = speculating(runner, true);
    let accepted = || counter(&engine, "pensieve_draft_accepted_tokens_total");
    let (first, _) = finish(engine.submit(valid("Look at the code.\n", 200)).unwrap()).await;
    let after_first = accepted();
    let (second, _) = finish(
        engine
            .submit(valid("Which file is the entry point?\n", 200))
            .unwrap(),
    )
    .await;
    assert_eq!((first.as_str(), second.as_str()), (reply, reply));
    let from_history = accepted() - after_first;
    assert!(
        from_history >= after_first + 20,
        "{from_history} drafted tokens stood in the second request, {after_first} in the first"
    );
}

/// A draft model that predicts `text` (a positional script: what it drafts depends only on
/// how much it holds), taking `batch` tokens a step.
fn scripted_draft(text: &str, batch: usize) -> ScriptedRunner {
    let mut draft = ScriptedRunner::new(text);
    draft.positional = true;
    draft.batch = batch;
    draft.prefill_while_decoding = Some(batch);
    draft
}

/// An engine over `runner` that drafts with `draft`, which holds `window` positions.
fn drafting(runner: ScriptedRunner, draft: ScriptedRunner, window: usize) -> Engine {
    Engine::start_with_draft(
        model_info(4096),
        Arc::new(ByteTokenizer),
        Box::new(runner),
        Some(crate::DraftModel {
            tokenizer: Arc::new(ByteTokenizer),
            runner: Box::new(draft),
            window,
        }),
        EngineConfig {
            speculative: crate::speculate::Speculative::Draft,
            ..EngineConfig::default()
        },
    )
    .unwrap()
}

/// An engine over a scripted `reply` whose draft model predicts `predicted` after `prompt`,
/// with a window of `window` positions; the two models' logs come back too.
fn with_draft_model(
    reply: &str,
    prompt: &str,
    predicted: &str,
    window: usize,
) -> (
    Engine,
    Arc<std::sync::Mutex<crate::testing::RunnerLog>>,
    Arc<std::sync::Mutex<crate::testing::RunnerLog>>,
) {
    let mut runner = ScriptedRunner::new(reply);
    // The model's step dearer than the draft model's (no delay). Both report these
    // modelled costs, so a loaded machine does not make drafting look dear (timed, it
    // did in a CI run).
    runner.step_delay = Duration::from_millis(2);
    let draft = scripted_draft(&format!("{prompt}{predicted}"), 512);
    let (log, draft_log) = (runner.log.clone(), draft.log.clone());
    (drafting(runner, draft, window), log, draft_log)
}

#[tokio::test]
async fn a_draft_model_changes_no_token_and_saves_steps() {
    let prompt = "Write a poem.\n";
    let reply = "Roses are red, violets are blue, drafts that stand save steps for you.";
    let (plain, plain_done, plain_calls, ..) = speculated(reply, valid(prompt, 200), false).await;
    // A draft model right but for every 12th token.
    let predicted: String = reply
        .chars()
        .enumerate()
        .map(|(i, c)| if i % 12 == 11 { '#' } else { c })
        .collect();
    let (engine, log, draft_log) = with_draft_model(reply, prompt, &predicted, 4096);
    let (text, done) = finish(engine.submit(valid(prompt, 200)).unwrap()).await;
    let done = done.unwrap();
    assert_eq!(text, plain);
    assert_eq!(
        (done.usage, done.reason),
        (plain_done.usage, plain_done.reason)
    );
    let log = log.lock().unwrap();
    // The slot holds exactly prompt and reply: rejected drafts were cut off.
    let mut all = ByteTokenizer.encode(prompt);
    all.extend(ByteTokenizer.encode(reply));
    assert_eq!(log.tokens_of(0), all);
    let calls = log.decodes.len();
    assert!(
        calls * 2 < plain_calls,
        "{calls} steps with a draft model, {plain_calls} without"
    );
    let drafted = counter(&engine, "pensieve_draft_tokens_total");
    let accepted = counter(&engine, "pensieve_draft_accepted_tokens_total");
    assert!(
        accepted > 30 && drafted > accepted,
        "{accepted} of {drafted}"
    );
    // The draft model held the prompt as it is, and no more than a draft past the reply.
    let held = draft_log.lock().unwrap().tokens_of(0);
    assert!(held.starts_with(&ByteTokenizer.encode(prompt)));
    assert!(
        held.len() <= all.len() + crate::speculate::MAX_DRAFT,
        "{}",
        held.len()
    );
}

#[tokio::test]
async fn a_draft_model_takes_in_the_prompt_while_it_is_computed() {
    // A prompt of 25 steps' chunks, and a draft model that takes 16 tokens a step: it has
    // the prompt when the first token is sampled, and drafts in the first decode step.
    let prompt = "x".repeat(199) + "\n";
    let reply = "a reply that the draft model knows";
    let mut runner = ScriptedRunner::new(reply);
    runner.step_delay = Duration::from_millis(1);
    let log = runner.log.clone();
    let engine = drafting(
        runner,
        scripted_draft(&format!("{prompt}{reply}"), 16),
        4096,
    );
    let (text, _) = finish(engine.submit(valid(&prompt, 100)).unwrap()).await;
    assert_eq!(text, reply);
    let log = log.lock().unwrap();
    let first_decode = log
        .decodes
        .iter()
        .flatten()
        .find(|&&(_, pos, _)| pos as usize == prompt.len())
        .copied();
    assert!(
        matches!(first_decode, Some((0, _, n)) if n >= 2),
        "the first decode step was {first_decode:?}"
    );
}

#[tokio::test]
async fn a_draft_model_that_is_always_wrong_or_short_of_context_changes_nothing() {
    let prompt = "Count: ";
    let reply = "one two three four five six seven eight nine ten eleven twelve";
    let (plain, plain_done, ..) = speculated(reply, valid(prompt, 200), false).await;
    // Wrong everywhere; and right, but with a window shorter than the sequence (its
    // positions then no longer line up with the script: wrong too, and moved often).
    for (predicted, window) in [("#".repeat(reply.len()), 4096), (reply.to_owned(), 24)] {
        let (engine, log, draft_log) = with_draft_model(reply, prompt, &predicted, window);
        let (text, done) = finish(engine.submit(valid(prompt, 200)).unwrap()).await;
        let done = done.unwrap();
        assert_eq!(text, plain);
        assert_eq!(done.usage, plain_done.usage);
        let mut all = ByteTokenizer.encode(prompt);
        all.extend(ByteTokenizer.encode(reply));
        assert_eq!(log.lock().unwrap().tokens_of(0), all);
        let held = draft_log.lock().unwrap().tokens_of(0).len();
        assert!(
            held <= window.max(2 * crate::speculate::MAX_DRAFT + 2),
            "{held} held"
        );
    }
}

#[test]
fn a_draft_model_of_another_tokenizer_is_refused() {
    struct Wider;
    impl crate::Tokenizer for Wider {
        fn encode(&self, text: &str) -> Vec<crate::TokenId> {
            ByteTokenizer.encode(text)
        }
        fn token_bytes(&self, token: crate::TokenId) -> Vec<u8> {
            ByteTokenizer.token_bytes(token)
        }
        fn is_end_of_generation(&self, token: crate::TokenId) -> bool {
            token == EOG
        }
        fn single_token(&self, _: &str) -> Option<crate::TokenId> {
            None
        }
        fn vocab_size(&self) -> usize {
            32_000
        }
    }
    let result = Engine::start_with_draft(
        model_info(4096),
        Arc::new(ByteTokenizer),
        Box::new(ScriptedRunner::new("hi")),
        Some(crate::DraftModel {
            tokenizer: Arc::new(Wider),
            runner: Box::new(ScriptedRunner::new("hi")),
            window: 4096,
        }),
        EngineConfig {
            speculative: crate::speculate::Speculative::Draft,
            ..EngineConfig::default()
        },
    );
    let Err(error) = result else {
        panic!("a draft model of 32000 tokens drafted for one of 257");
    };
    assert_eq!(
        error.to_string(),
        "the draft model cannot draft for this model: its vocabulary has 32000 tokens, the \
         model's 257: they do not share a tokenizer"
    );
}

#[tokio::test]
async fn a_draft_stops_where_the_request_does() {
    let prompt = "the quick brown fox jumps over the lazy dog; the quick brown fox ";
    let reply = "jumps over the lazy dog; the quick brown fox jumps";
    // Stop sequence, max_tokens and end of turn inside drafted runs.
    let stopped = ValidRequest {
        stop_sequences: vec!["lazy".into()],
        ..valid(prompt, 200)
    };
    for request in [stopped, valid(prompt, 17), valid(prompt, 200)] {
        let (plain, plain_done, ..) = speculated(reply, request.clone(), false).await;
        let (spec, spec_done, _, spec_kv, _) = speculated(reply, request, true).await;
        assert_eq!(spec, plain);
        assert_eq!(spec_done.usage, plain_done.usage);
        assert_eq!(spec_done.reason, plain_done.reason);
        // Nothing past what the request kept is in the slot.
        let mut all = ByteTokenizer.encode(prompt);
        all.extend(ByteTokenizer.encode(reply));
        assert!(all.starts_with(&spec_kv), "{spec_kv:?}");
        assert!(
            spec_kv.len()
                <= ByteTokenizer.encode(prompt).len() + plain_done.usage.completion_tokens as usize
        );
    }
}

fn image(bytes: &[u8]) -> crate::Image {
    crate::Image {
        at: "messages.0.content.1".into(),
        summary: "PNG 2×2".into(),
        data: Some(bytes.into()),
        url: None,
    }
}

/// An engine over `runner` with the scripted vision projector.
fn seeing(runner: ScriptedRunner) -> Engine {
    Engine::start(
        model_info(512),
        Arc::new(ByteTokenizer),
        Box::new(runner),
        EngineConfig {
            vision: Some(Arc::new(crate::testing::ScriptedVision)),
            ..EngineConfig::default()
        },
    )
    .unwrap()
}

/// A user turn that shows `images`: each one's placeholder where it was sent.
fn showing(images: Vec<crate::Image>) -> GenerateRequest {
    let shown: Vec<String> = images.iter().map(crate::Image::placeholder).collect();
    let text = format!("Look at {}, then say ok.", shown.join(" and "));
    let mut request = GenerateRequest::new("m", vec![Message::text(Role::User, text)], 3);
    request.images = images;
    request
}

#[tokio::test]
async fn an_image_is_computed_once_then_read_from_the_cache_by_its_content() {
    let runner = ScriptedRunner::new("ok");
    let log = runner.log.clone();
    let engine = seeing(runner);
    assert!(engine.sees_images());
    let first = showing(vec![image(b"first image")]);
    let valid = engine.validate(&first).unwrap();
    let [media] = &valid.media[..] else {
        panic!("one image: {:?}", valid.media);
    };
    assert_eq!(media.len, crate::testing::ScriptedVision::TOKENS);
    assert!(valid.prompt[media.at..media.end()]
        .iter()
        .all(|&t| crate::is_media_token(t)));
    // The placeholder's text is gone: the image stands in its place.
    let text: Vec<u8> = valid
        .prompt
        .iter()
        .flat_map(|&t| ByteTokenizer.token_bytes(t))
        .collect();
    assert!(!String::from_utf8_lossy(&text).contains("not shown"));
    // count_tokens counts what generation will.
    assert_eq!(engine.prompt_tokens(&first).unwrap(), valid.prompt);

    let (text, done) = finish(engine.submit(valid.clone()).unwrap()).await;
    assert_eq!(text, "ok");
    let usage = done.unwrap().usage;
    assert_eq!(usage.prompt_tokens as usize, valid.prompt.len());
    assert_eq!(usage.cached_prompt_tokens, 0);
    assert_eq!(
        log.lock().unwrap().images,
        vec![(0, media.at as u32, media.len)]
    );

    // The same image again: its prefix, image included, comes from the cache.
    let (_, done) = finish(engine.submit(engine.validate(&first).unwrap()).unwrap()).await;
    assert!(done.unwrap().usage.cached_prompt_tokens as usize >= media.end());
    assert_eq!(log.lock().unwrap().images.len(), 1);

    // Another image: computed, the cache read stops where the images differ.
    let (_, done) = finish(
        engine
            .submit(
                engine
                    .validate(&showing(vec![image(b"other image")]))
                    .unwrap(),
            )
            .unwrap(),
    )
    .await;
    assert!(done.unwrap().usage.cached_prompt_tokens as usize <= media.at);
    assert_eq!(log.lock().unwrap().images.len(), 2);

    // Two images in one turn, each its own stretch; a bad one is named by its block.
    let two = engine
        .validate(&showing(vec![image(b"first image"), image(b"third")]))
        .unwrap();
    assert_eq!(two.media.len(), 2);
    assert!(two.media[0].end() < two.media[1].at);
    let (text, done) = finish(engine.submit(two).unwrap()).await;
    assert_eq!((text.as_str(), done.is_ok()), ("ok", true));
    let err = engine.validate(&showing(vec![image(b"")])).unwrap_err();
    assert!(
        err.to_string()
            .contains("messages.0.content.1: it is empty"),
        "{err}"
    );
}

#[test]
fn a_model_without_vision_reads_the_placeholder() {
    let engine = start(ScriptedRunner::new("ok"), 512, 4);
    assert!(!engine.sees_images());
    let request = showing(vec![image(b"first image")]);
    let valid = engine.validate(&request).unwrap();
    assert!(valid.media.is_empty());
    let text: Vec<u8> = valid
        .prompt
        .iter()
        .flat_map(|&t| ByteTokenizer.token_bytes(t))
        .collect();
    assert!(String::from_utf8_lossy(&text).contains("[image: PNG 2×2, not shown"));
}

#[tokio::test]
async fn an_image_the_backend_cannot_compute_fails_its_request_alone() {
    let runner = ScriptedRunner::new("ok");
    let engine = seeing(runner);
    let mut broken = engine
        .validate(&showing(vec![image(b"first image")]))
        .unwrap();
    // A unit the scripted backend can't read: it refuses to compute the image.
    broken.media[0].unit = Arc::new(());
    let broken = engine.submit(broken).unwrap();
    let fine = engine.submit(chat_turn("hello")).unwrap();
    let (_, failed) = finish(broken).await;
    assert!(matches!(failed, Err(EngineError::Backend(_))), "{failed:?}");
    let (text, done) = finish(fine).await;
    assert_eq!((text.as_str(), done.is_ok()), ("ok", true));
}

#[tokio::test]
async fn an_image_the_backend_cannot_decode_is_the_requests_fault() {
    let engine = seeing(ScriptedRunner::new("ok"));
    let mut refused = engine
        .validate(&showing(vec![image(b"first image")]))
        .unwrap();
    assert_eq!(refused.media[0].block, "messages.0.content.1");
    // What the scripted backend takes for an image it cannot decode.
    refused.media[0].unit = Arc::new("not an image it can decode");
    let (_, failed) = finish(engine.submit(refused).unwrap()).await;
    match failed {
        Err(EngineError::InvalidRequest(why)) => {
            assert_eq!(why, "messages.0.content.1: not an image it can decode")
        }
        other => panic!("{other:?}"),
    }
    let (text, _) = finish(engine.submit(chat_turn("hello")).unwrap()).await;
    assert_eq!(text, "ok");
}
