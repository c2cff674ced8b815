use super::*;
use crate::openai::responses::output::reply_message;
use crate::openai::responses::request::Echo;
use pensieve_engine::{FinishReason, Timings};

fn encoder() -> ResponseEncoder {
    ResponseEncoder::new(Head {
        id: "resp_1".into(),
        created_at: 7,
        model: "m".into(),
        echo: Echo {
            store: true,
            temperature: 1.0,
            top_p: 1.0,
            parallel_tool_calls: true,
            ..Echo::default()
        },
    })
}

/// (event type, data) of each frame, checking the frame's shape and numbering.
fn events(frames: &[String], first_sequence: u64) -> Vec<(String, Value)> {
    frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let (event, data) = f
                .strip_prefix("event: ")
                .and_then(|f| f.strip_suffix("\n\n"))
                .and_then(|f| f.split_once("\ndata: "))
                .expect("an event: and a data: line");
            let data: Value = serde_json::from_str(data).unwrap();
            assert_eq!(data["type"], event);
            assert_eq!(data["sequence_number"], first_sequence + i as u64);
            (event.to_owned(), data)
        })
        .collect()
}

fn done(reason: FinishReason) -> GenerationEvent {
    GenerationEvent::Done(Completion {
        reason,
        usage: Usage {
            prompt_tokens: 10,
            cached_prompt_tokens: 4,
            cache_creation_tokens: 0,
            completion_tokens: 3,
        },
        timings: Timings::default(),
    })
}

fn run(e: &mut ResponseEncoder, input: Vec<GenerationEvent>) -> Vec<String> {
    let mut frames = e.start();
    for event in input {
        frames.extend(e.on_event(event));
    }
    frames
}

#[test]
fn reasoning_then_text_then_completed() {
    let mut e = encoder();
    let frames = run(
        &mut e,
        vec![
            GenerationEvent::PrefillDone {
                cached_prompt_tokens: 4,
            },
            GenerationEvent::Thinking("hm".into()),
            GenerationEvent::Text("Hel".into()),
            GenerationEvent::Text("lo".into()),
            done(FinishReason::EndOfTurn),
        ],
    );
    let ev = events(&frames, 0);
    let kinds: Vec<&str> = ev.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.reasoning_text.delta",
            "response.reasoning_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    assert_eq!(ev[0].1["response"]["status"], "in_progress");
    assert_eq!(ev[0].1["response"]["usage"], Value::Null);
    assert_eq!(ev[8].1["item"]["type"], "message");
    assert_eq!(ev[8].1["output_index"], 1);
    assert_eq!(ev[12].1["text"], "Hello");
    assert_eq!(ev[14].1["item"]["content"][0]["text"], "Hello");
    let response = &ev[15].1["response"];
    assert_eq!(response["status"], "completed");
    assert_eq!(response["output"][0]["content"][0]["text"], "hm");
    assert_eq!(response["output"][1]["content"][0]["type"], "output_text");
    assert_eq!(
        response["usage"]["input_tokens_details"]["cached_tokens"],
        4
    );
    assert_eq!(response["usage"]["total_tokens"], 13);
    assert_eq!(*response, e.response());
    assert!(e.is_finished());
    assert!(e.on_event(GenerationEvent::Text("late".into())).is_empty());
}

#[test]
fn function_calls_stream_their_arguments() {
    let mut e = encoder();
    let frames = run(
        &mut e,
        vec![
            GenerationEvent::ToolCallStart { name: "f".into() },
            GenerationEvent::ToolCallArguments("{\"a\":".into()),
            GenerationEvent::ToolCallArguments("1}".into()),
            GenerationEvent::ToolCallEnd,
            GenerationEvent::ToolCallStart { name: "g".into() },
            GenerationEvent::ToolCallEnd,
            done(FinishReason::ToolUse),
        ],
    );
    let ev = events(&frames, 0);
    assert_eq!(ev[2].0, "response.output_item.added");
    let added = &ev[2].1["item"];
    assert_eq!(added["type"], "function_call");
    assert_eq!(added["status"], "in_progress");
    assert!(added["call_id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(ev[3].1["delta"], "{\"a\":");
    assert_eq!(ev[3].1["item_id"], added["id"]);
    assert_eq!(ev[5].0, "response.function_call_arguments.done");
    assert_eq!(ev[5].1["arguments"], "{\"a\":1}");
    assert_eq!(ev[6].1["item"]["status"], "completed");
    assert_eq!(ev[6].1["item"]["call_id"], added["call_id"]);
    let response = e.response();
    assert_eq!(response["output"][1]["name"], "g");
    assert_eq!(response["output"][1]["arguments"], "{}");
    let reply = reply_message(e.items());
    assert_eq!(reply.tool_calls.len(), 2);
    assert_eq!(reply.tool_calls[0].arguments, serde_json::json!({"a": 1}));
    assert_eq!(reply.tool_calls[0].id, added["call_id"]);
}

#[test]
fn out_of_tokens_is_incomplete() {
    let mut e = encoder();
    let frames = run(
        &mut e,
        vec![
            GenerationEvent::Text("cut".into()),
            done(FinishReason::MaxTokens),
        ],
    );
    let (kind, last) = events(&frames, 0).pop().unwrap();
    assert_eq!(kind, "response.incomplete");
    assert_eq!(last["response"]["status"], "incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    assert_eq!(last["response"]["output"][0]["content"][0]["text"], "cut");
}

#[test]
fn a_failure_closes_the_item_and_fails_the_response() {
    let mut e = encoder();
    let frames = run(
        &mut e,
        vec![
            GenerationEvent::Text("par".into()),
            GenerationEvent::Failed(EngineError::Backend("boom".into())),
        ],
    );
    let ev = events(&frames, 0);
    let (kind, last) = ev.last().unwrap();
    assert_eq!(kind, "response.failed");
    assert_eq!(last["response"]["status"], "failed");
    assert_eq!(last["response"]["error"]["code"], "server_error");
    assert_eq!(ev[ev.len() - 2].0, "response.output_item.done");
    assert!(e.is_finished());
}
