//! Arbitrary sequences of engine events through every SSE encoder (Anthropic's, OpenAI's
//! chat and text completions, Responses') and the non-streaming collectors. Nothing may panic, and every
//! frame must be well-formed: `event:`/`data:` lines whose data is JSON (or `[DONE]`).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use pensieve_engine::{
    Completion, EngineError, FinishReason, GenerationEvent, Timings, TokenLogprob, Usage,
};
use pensieve_protocol::anthropic::{ContentCollector, MessageResponse, StreamEncoder};
use pensieve_protocol::openai::responses::{reply_message, Echo, Head, ResponseEncoder};
use pensieve_protocol::openai::{
    ChatCompletion, ChunkEncoder, MessageCollector, TextChunkEncoder, TextCollector,
};

/// Usage as the engine reports it: cached and cache-creation tokens are parts of the
/// prompt (`Usage::plain_prompt_tokens` relies on it), and prompt and completion share one
/// context, whose size is a `u32` (OpenAI's `total_tokens` adds them).
fn usage(u: &mut Unstructured) -> arbitrary::Result<Usage> {
    let prompt_tokens = u32::arbitrary(u)?;
    let cached_prompt_tokens = u.int_in_range(0..=prompt_tokens)?;
    let cache_creation_tokens = u.int_in_range(0..=prompt_tokens - cached_prompt_tokens)?;
    Ok(Usage {
        prompt_tokens,
        cached_prompt_tokens,
        cache_creation_tokens,
        completion_tokens: u.int_in_range(0..=u32::MAX - prompt_tokens)?,
    })
}

fn completion(u: &mut Unstructured) -> arbitrary::Result<Completion> {
    let reason = match u.int_in_range(0..=5)? {
        0 => FinishReason::EndOfTurn,
        1 => FinishReason::MaxTokens,
        2 => FinishReason::StopSequence(String::arbitrary(u)?),
        3 => FinishReason::ContextWindow,
        4 => FinishReason::ToolUse,
        _ => FinishReason::Cancelled,
    };
    Ok(Completion {
        reason,
        usage: usage(u)?,
        timings: Timings::default(),
    })
}

fn error(u: &mut Unstructured) -> arbitrary::Result<EngineError> {
    Ok(match u.int_in_range(0..=9)? {
        0 => EngineError::PromptTooLong {
            tokens: u32::arbitrary(u)?,
            max: u32::arbitrary(u)?,
        },
        1 => EngineError::InvalidRequest(String::arbitrary(u)?),
        2 => EngineError::Overloaded {
            waiting: usize::arbitrary(u)?,
        },
        3 => EngineError::ShuttingDown,
        4 => EngineError::EngineStopped,
        5 => EngineError::Backend(String::arbitrary(u)?),
        6 => EngineError::BackendRestarted(String::arbitrary(u)?),
        7 => EngineError::Template(pensieve_engine::template::TemplateError::Render(
            String::arbitrary(u)?,
        )),
        _ => EngineError::Upstream {
            status: u16::arbitrary(u)?,
            message: String::arbitrary(u)?,
        },
    })
}

fn event(u: &mut Unstructured) -> arbitrary::Result<GenerationEvent> {
    Ok(match u.int_in_range(0..=8)? {
        0 => GenerationEvent::PrefillDone {
            cached_prompt_tokens: u32::arbitrary(u)?,
        },
        1 => GenerationEvent::Logprob(TokenLogprob {
            token: Vec::arbitrary(u)?,
            logprob: f32::arbitrary(u)?,
            top: Vec::arbitrary(u)?,
        }),
        2 => GenerationEvent::Text(String::arbitrary(u)?),
        3 => GenerationEvent::Thinking(String::arbitrary(u)?),
        4 => GenerationEvent::ToolCallStart {
            name: String::arbitrary(u)?,
        },
        5 => GenerationEvent::ToolCallArguments(String::arbitrary(u)?),
        6 => GenerationEvent::ToolCallEnd,
        7 => GenerationEvent::Done(completion(u)?),
        _ => GenerationEvent::Failed(error(u)?),
    })
}

/// Copies an event: `GenerationEvent` is not `Clone` (it is sent once), but each encoder
/// takes its own.
fn copy(e: &GenerationEvent) -> GenerationEvent {
    match e {
        GenerationEvent::PrefillDone {
            cached_prompt_tokens,
        } => GenerationEvent::PrefillDone {
            cached_prompt_tokens: *cached_prompt_tokens,
        },
        GenerationEvent::Logprob(t) => GenerationEvent::Logprob(t.clone()),
        GenerationEvent::Text(t) => GenerationEvent::Text(t.clone()),
        GenerationEvent::Thinking(t) => GenerationEvent::Thinking(t.clone()),
        GenerationEvent::ToolCallStart { name } => {
            GenerationEvent::ToolCallStart { name: name.clone() }
        }
        GenerationEvent::ToolCallArguments(a) => GenerationEvent::ToolCallArguments(a.clone()),
        GenerationEvent::ToolCallEnd => GenerationEvent::ToolCallEnd,
        GenerationEvent::Done(c) => GenerationEvent::Done(c.clone()),
        GenerationEvent::Failed(e) => GenerationEvent::Failed(e.clone()),
    }
}

/// An SSE frame: lines of `event: <name>` or `data: <json>`, ended by a blank line; or a
/// comment frame.
fn check_frame(frame: &str) {
    let body = frame
        .strip_suffix("\n\n")
        .unwrap_or_else(|| panic!("frame not ended by a blank line: {frame:?}"));
    assert!(!body.is_empty(), "empty frame");
    for line in body.split('\n') {
        if let Some(data) = line.strip_prefix("data: ") {
            if data != "[DONE]" {
                serde_json::from_str::<serde_json::Value>(data)
                    .unwrap_or_else(|e| panic!("data line is not JSON ({e}): {data:?}"));
            }
        } else if let Some(name) = line.strip_prefix("event: ") {
            assert!(
                !name.is_empty() && !name.contains(['\r', '\n']),
                "bad event name: {name:?}"
            );
        } else {
            assert!(
                line.starts_with(':'),
                "line is neither field nor comment: {line:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(queued) = usage(&mut u) else { return };
    let Ok(include_usage) = bool::arbitrary(&mut u) else {
        return;
    };
    let Ok(logprobs) = bool::arbitrary(&mut u) else {
        return;
    };
    let mut events = Vec::new();
    // Enough for every state an encoder has; more only slows the run down.
    while !u.is_empty() && events.len() < 32 {
        match event(&mut u) {
            Ok(e) => events.push(e),
            Err(_) => break,
        }
    }

    let mut anthropic = StreamEncoder::new("msg_1".into(), "m".into(), queued);
    check_frame(&anthropic.start().to_frame());
    check_frame(&StreamEncoder::ping().to_frame());
    let mut chat = ChunkEncoder::new("chatcmpl-1".into(), "m".into(), 0, include_usage);
    check_frame(&chat.start());
    check_frame(&ChunkEncoder::ping());
    let mut text = TextChunkEncoder::new("cmpl-1".into(), "m".into(), 0, include_usage, logprobs);
    let mut responses = ResponseEncoder::new(Head {
        id: "resp_1".into(),
        created_at: 0,
        model: "m".into(),
        echo: Echo::default(),
    });
    for f in responses.start() {
        check_frame(&f);
    }
    check_frame(&ResponseEncoder::ping());
    let mut content = ContentCollector::default();
    let mut message = MessageCollector::new(logprobs);
    let mut text_collected = TextCollector::new(logprobs);
    let mut done = None;

    for e in &events {
        for f in anthropic.on_event(copy(e)) {
            check_frame(&f.to_frame());
        }
        for f in chat.on_event(copy(e)) {
            check_frame(&f);
        }
        for f in text.on_event(copy(e)) {
            check_frame(&f);
        }
        for f in responses.on_event(copy(e)) {
            check_frame(&f);
        }
        content.push(e);
        message.push(e);
        text_collected.push(e);
        if let GenerationEvent::Done(c) = e {
            done.get_or_insert_with(|| c.clone());
        }
    }
    // A stream cut off by an error after the events.
    if let Ok(err) = error(&mut u) {
        check_frame(&anthropic.error(&err).to_frame());
        for f in chat.error(&err) {
            check_frame(&f);
        }
        for f in text.error(&err) {
            check_frame(&f);
        }
        for f in responses.error(&err) {
            check_frame(&f);
        }
    }
    // The response object, whatever its state, and the turn it would store.
    serde_json::to_string(&responses.response()).expect("the response serializes");
    let _ = reply_message(responses.items());
    // The non-streaming bodies must serialize.
    if let Some(c) = done {
        let body = MessageResponse::new("msg_1".into(), "m".into(), content.into_blocks(), &c);
        serde_json::to_string(&body).expect("the message serializes");
        let body = ChatCompletion::new("chatcmpl-1".into(), "m".into(), 0, message, &c);
        serde_json::to_string(&body).expect("the completion serializes");
        let body = text_collected.into_response("cmpl-1".into(), "m".into(), 0, &c);
        serde_json::to_string(&body).expect("the text completion serializes");
    }
});
