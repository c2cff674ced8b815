//! The `/v1/chat/completions` SSE encoder: a pure state machine from engine events to
//! `data:` frames of `chat.completion.chunk` objects, ending with `data: [DONE]`.
//!
//! The first chunk carries the role; text, `reasoning_content` and tool calls follow as
//! deltas (a call's id and name first, then its arguments in fragments, each call with
//! its own index); the last choice chunk carries `finish_reason`, and with
//! `stream_options.include_usage` a chunk with no choices carries the usage.

use pensieve_engine::{EngineError, GenerationEvent, Usage};
use serde_json::{json, Value};

use super::error::{engine_error_detail, error_body};
use super::logprobs::LogprobEntry;
use super::response::{finish_reason, ChatUsage};
use crate::anthropic::ErrorKind;
use crate::encode::SseEncoder;
use crate::ids::random_id;

pub struct ChunkEncoder {
    head: StreamHead,
    /// Calls started so far; the current one's index is one less.
    calls: usize,
    finished: bool,
    /// Tokens' log-probabilities not yet sent: they go with the next delta.
    logprobs: Vec<LogprobEntry>,
}

impl ChunkEncoder {
    pub fn new(id: String, model: String, created: u64, include_usage: bool) -> Self {
        ChunkEncoder {
            head: StreamHead {
                id,
                object: "chat.completion.chunk",
                model,
                created,
                include_usage,
            },
            calls: 0,
            finished: false,
            logprobs: Vec::new(),
        }
    }

    /// The first frame: the assistant's role.
    pub fn start(&mut self) -> String {
        self.delta(json!({"role": "assistant", "content": ""}), None)
    }

    /// A comment frame that keeps the connection busy during a long prefill.
    pub fn ping() -> String {
        ": ping\n\n".into()
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    pub fn on_event(&mut self, event: GenerationEvent) -> Vec<String> {
        if self.finished {
            return Vec::new();
        }
        match event {
            GenerationEvent::PrefillDone { .. } | GenerationEvent::ToolCallEnd => Vec::new(),
            GenerationEvent::Logprob(t) => {
                self.logprobs.push((&t).into());
                Vec::new()
            }
            GenerationEvent::Text(t) => vec![self.delta(json!({"content": t}), None)],
            GenerationEvent::Thinking(t) => {
                vec![self.delta(json!({"reasoning_content": t}), None)]
            }
            GenerationEvent::ToolCallStart { name } => {
                self.calls += 1;
                let call = json!({
                    "index": self.calls - 1,
                    "id": random_id("call_"),
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                });
                vec![self.delta(json!({"tool_calls": [call]}), None)]
            }
            GenerationEvent::ToolCallArguments(a) => {
                let call =
                    json!({"index": self.calls.saturating_sub(1), "function": {"arguments": a}});
                vec![self.delta(json!({"tool_calls": [call]}), None)]
            }
            GenerationEvent::Done(completion) => {
                self.finished = true;
                let last = self.delta(json!({}), Some(finish_reason(&completion.reason)));
                self.head.closing(last, completion.usage)
            }
            GenerationEvent::Failed(e) => self.error(&e),
        }
    }

    /// The stream ends with an error: an `error` object, then `[DONE]`.
    pub fn error(&mut self, e: &EngineError) -> Vec<String> {
        self.finished = true;
        error_frames(e)
    }

    fn delta(&mut self, delta: Value, finish: Option<&str>) -> String {
        let logprobs = if self.logprobs.is_empty() {
            Value::Null
        } else {
            json!({"content": std::mem::take(&mut self.logprobs)})
        };
        let choice =
            json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish});
        frame(&self.head.chunk(vec![choice]))
    }
}

/// What every chunk of one OpenAI stream carries, and how the stream closes.
pub(super) struct StreamHead {
    pub id: String,
    /// `chat.completion.chunk` or `text_completion`.
    pub object: &'static str,
    pub model: String,
    pub created: u64,
    /// With `stream_options.include_usage`: every chunk has `usage` (null until the
    /// last), and a chunk with no choices carries it.
    pub include_usage: bool,
}

impl StreamHead {
    pub(super) fn chunk(&self, choices: Vec<Value>) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    /// `last` (the frame with `finish_reason`), the usage when asked for, `[DONE]`.
    pub(super) fn closing(&self, last: String, usage: Usage) -> Vec<String> {
        let mut frames = vec![last];
        if self.include_usage {
            let mut chunk = self.chunk(Vec::new());
            chunk["usage"] = json!(ChatUsage::from(usage));
            frames.push(frame(&chunk));
        }
        frames.push(DONE.into());
        frames
    }
}

/// The last frame of every OpenAI stream.
pub(super) const DONE: &str = "data: [DONE]\n\n";

pub(super) fn frame(value: &Value) -> String {
    format!("data: {value}\n\n")
}

/// A stream's end by failure: an `error` object, then `[DONE]`.
pub fn error_frames(e: &EngineError) -> Vec<String> {
    let (code, param) = engine_error_detail(e);
    let body = error_body(ErrorKind::of_engine_error(e), &e.to_string(), param, code);
    vec![frame(&body), DONE.into()]
}

impl SseEncoder for ChunkEncoder {
    fn start(&mut self) -> Vec<String> {
        vec![ChunkEncoder::start(self)]
    }

    fn on_event(&mut self, event: GenerationEvent) -> Vec<String> {
        ChunkEncoder::on_event(self, event)
    }

    fn error(&mut self, error: &EngineError) -> Vec<String> {
        ChunkEncoder::error(self, error)
    }

    fn ping(&self) -> String {
        ChunkEncoder::ping()
    }

    fn is_finished(&self) -> bool {
        ChunkEncoder::is_finished(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pensieve_engine::{Completion, FinishReason, Timings, Usage};

    fn data(frame: &str) -> Value {
        let body = frame
            .strip_prefix("data: ")
            .and_then(|f| f.strip_suffix("\n\n"))
            .unwrap();
        serde_json::from_str(body).unwrap()
    }

    fn done(reason: FinishReason) -> GenerationEvent {
        GenerationEvent::Done(Completion {
            reason,
            usage: Usage {
                prompt_tokens: 5,
                cached_prompt_tokens: 2,
                cache_creation_tokens: 0,
                completion_tokens: 3,
            },
            timings: Timings::default(),
        })
    }

    #[test]
    fn text_then_finish_then_usage_then_done() {
        let mut e = ChunkEncoder::new("chatcmpl-1".into(), "m".into(), 9, true);
        let first = data(&e.start());
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(
            first["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(first["usage"], Value::Null);
        let text = e.on_event(GenerationEvent::Text("Hi".into()));
        assert_eq!(
            data(&text[0])["choices"][0]["delta"],
            json!({"content": "Hi"})
        );
        let end = e.on_event(done(FinishReason::MaxTokens));
        assert_eq!(end.len(), 3);
        assert_eq!(data(&end[0])["choices"][0]["finish_reason"], "length");
        let usage = data(&end[1]);
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 8);
        assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
        assert_eq!(end[2], "data: [DONE]\n\n");
        assert!(e.is_finished());
        assert!(e.on_event(GenerationEvent::Text("late".into())).is_empty());
    }

    #[test]
    fn tool_calls_stream_with_indexes_and_ids() {
        let mut e = ChunkEncoder::new("c".into(), "m".into(), 0, false);
        let mut frames = Vec::new();
        for event in [
            GenerationEvent::ToolCallStart { name: "f".into() },
            GenerationEvent::ToolCallArguments("{\"a\":".into()),
            GenerationEvent::ToolCallArguments("1}".into()),
            GenerationEvent::ToolCallEnd,
            GenerationEvent::ToolCallStart { name: "g".into() },
            GenerationEvent::ToolCallArguments("{}".into()),
            GenerationEvent::ToolCallEnd,
            done(FinishReason::ToolUse),
        ] {
            frames.extend(e.on_event(event));
        }
        let calls: Vec<Value> = frames[..5]
            .iter()
            .map(|f| data(f)["choices"][0]["delta"]["tool_calls"][0].clone())
            .collect();
        assert_eq!(calls[0]["index"], 0);
        assert_eq!(calls[0]["function"]["name"], "f");
        assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(
            calls[1],
            json!({"index": 0, "function": {"arguments": "{\"a\":"}})
        );
        assert_eq!(calls[3]["index"], 1);
        assert_eq!(calls[3]["function"]["name"], "g");
        assert_eq!(
            data(&frames[5])["choices"][0]["finish_reason"],
            "tool_calls"
        );
        assert!(data(&frames[5]).get("usage").is_none());
        assert_eq!(frames.len(), 7);
    }

    #[test]
    fn a_failure_is_an_error_object_then_done() {
        let mut e = ChunkEncoder::new("c".into(), "m".into(), 0, false);
        let frames = e.on_event(GenerationEvent::Failed(EngineError::Backend("boom".into())));
        assert_eq!(data(&frames[0])["error"]["type"], "server_error");
        assert_eq!(frames[1], "data: [DONE]\n\n");
        assert!(e.is_finished());
    }
}
