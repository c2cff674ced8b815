//! Engine behaviour over the scripted backend: generation, limits, stops, prefix reuse,
//! cancellation, admission and shutdown.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::testing::{model_info, ByteTokenizer, ScriptedRunner};
use crate::{Completion, FinishReason, Message, Role};

fn start(runner: ScriptedRunner, context: u32, queue: usize) -> Engine {
    Engine::start(
        model_info(context),
        Arc::new(ByteTokenizer),
        Box::new(runner),
        EngineConfig {
            queue_capacity: queue,
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
    }
}

/// Drain a generation: its text and how it ended.
async fn finish(mut g: Generation) -> (String, Result<Completion, EngineError>) {
    let mut text = String::new();
    while let Some(event) = g.events.recv().await {
        match event {
            GenerationEvent::Text(t) => text.push_str(&t),
            GenerationEvent::PrefillDone { .. } => {}
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

#[tokio::test]
async fn shared_prefix_is_not_computed_again() {
    let runner = ScriptedRunner::new("ok");
    let log = runner.log.clone();
    let engine = start(runner, 256, 4);
    let (_, first) = finish(
        engine
            .submit(valid("system prompt; question one", 5))
            .unwrap(),
    )
    .await;
    assert_eq!(first.unwrap().usage.cached_prompt_tokens, 0);
    log.lock().unwrap().evaluations.clear();

    let (_, second) = finish(
        engine
            .submit(valid("system prompt; question two", 5))
            .unwrap(),
    )
    .await;
    let second = second.unwrap();
    let shared = "system prompt; question ".len() as u32;
    assert_eq!(second.usage.cached_prompt_tokens, shared);
    let log = log.lock().unwrap();
    // Prefill starts where the shared prefix ends, and the cache was cut there.
    assert_eq!(log.evaluations[0], (shared, 3));
    assert_eq!(log.truncations.last(), Some(&shared));
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
    let chunks: Vec<_> = log.lock().unwrap().evaluations.clone();
    assert_eq!(chunks, vec![(0, 8), (8, 8), (16, 4)]);
}

#[tokio::test]
async fn dropping_the_generation_stops_the_engine() {
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
    drop(g);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after_drop = log.lock().unwrap().evaluations.len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(log.lock().unwrap().evaluations.len(), after_drop);
    // The engine is free for the next request.
    let (_, done) = finish(engine.submit(valid("p", 2)).unwrap()).await;
    assert!(done.is_ok());
}

#[tokio::test]
async fn a_full_queue_is_overloaded() {
    let mut runner = ScriptedRunner::new("abc");
    runner.endless = true;
    runner.step_delay = Duration::from_millis(20);
    let engine = start(runner, 100_000, 1);
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
