//! The `/v1/messages` SSE encoder: a pure state machine from engine events to Anthropic
//! stream events, so event order and framing are unit-tested without a server.

use pensieve_engine::{Completion, EngineError, GenerationEvent, Usage};
use serde_json::{json, Value};

use super::error::{error_body, ErrorKind};
use super::response::{stop_reason, ResponseUsage};
use crate::encode::SseEncoder;
use crate::ids::random_id;

/// One server-sent event: `event: <name>\ndata: <json>\n\n`.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub event: &'static str,
    pub data: Value,
}

impl SseEvent {
    fn new(event: &'static str, data: Value) -> Self {
        SseEvent { event, data }
    }

    /// The event as it goes on the wire.
    pub fn to_frame(&self) -> String {
        format!("event: {}\ndata: {}\n\n", self.event, self.data)
    }
}

/// The kinds of content block a stream opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    ToolUse,
}

/// Encodes one message's stream.
#[derive(Debug)]
pub struct StreamEncoder {
    id: String,
    model: String,
    /// The prompt's split as the prefix cache stood when the request was queued.
    queued: Usage,
    /// Index and kind of the open content block, if any.
    open_block: Option<(u32, Block)>,
    next_index: u32,
    finished: bool,
}

impl StreamEncoder {
    /// `queued`: the prompt's usage split when the request was queued
    /// ([`pensieve_engine::Generation::queued_usage`]).
    pub fn new(id: String, model: String, queued: Usage) -> Self {
        StreamEncoder {
            id,
            model,
            queued,
            open_block: None,
            next_index: 0,
            finished: false,
        }
    }

    /// The first event: sent before prefill starts, with the real prompt size split as
    /// Anthropic's API does (uncached, cache creation, cache read). The split is what the
    /// prefix cache held when the request was queued; `message_delta` repeats it as
    /// admission found it, correcting it where they differ.
    pub fn start(&self) -> SseEvent {
        let usage = ResponseUsage::from(Usage {
            completion_tokens: 0,
            ..self.queued
        });
        SseEvent::new(
            "message_start",
            json!({
                "type": "message_start",
                "message": {
                    "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": usage
                }
            }),
        )
    }

    pub fn ping() -> SseEvent {
        SseEvent::new("ping", json!({"type": "ping"}))
    }

    /// Whether the stream has ended (after `message_stop` or `error`).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Translate one engine event into zero or more stream events.
    pub fn on_event(&mut self, event: GenerationEvent) -> Vec<SseEvent> {
        if self.finished {
            return Vec::new();
        }
        match event {
            GenerationEvent::PrefillDone { .. } | GenerationEvent::Logprob(_) => Vec::new(),
            GenerationEvent::Text(text) => self.delta(
                Block::Text,
                json!({"type": "text", "text": ""}),
                json!({"type": "text_delta", "text": text}),
            ),
            GenerationEvent::Thinking(thinking) => self.delta(
                Block::Thinking,
                json!({"type": "thinking", "thinking": ""}),
                json!({"type": "thinking_delta", "thinking": thinking}),
            ),
            GenerationEvent::ToolCallStart { name } => {
                let mut out = Vec::new();
                self.close_block(&mut out);
                let block = json!({"type": "tool_use", "id": random_id("toolu_"),
                                   "name": name, "input": {}});
                out.push(self.open(Block::ToolUse, block));
                out
            }
            GenerationEvent::ToolCallArguments(json) => match self.open_block {
                Some((index, Block::ToolUse)) => vec![SseEvent::new(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                           "delta": {"type": "input_json_delta", "partial_json": json}}),
                )],
                _ => Vec::new(),
            },
            GenerationEvent::ToolCallEnd => {
                let mut out = Vec::new();
                self.close_block(&mut out);
                out
            }
            GenerationEvent::Done(completion) => self.done(&completion),
            GenerationEvent::Failed(error) => vec![self.error(&error)],
        }
    }

    /// A delta for a block of `kind`: into the open one, or a new one (`empty` is its
    /// start event's accumulator).
    fn delta(&mut self, kind: Block, empty: Value, delta: Value) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let index = match self.open_block {
            Some((i, open)) if open == kind => i,
            _ => {
                self.close_block(&mut out);
                out.push(self.open(kind, empty));
                self.next_index - 1
            }
        };
        out.push(SseEvent::new(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
        ));
        out
    }

    fn open(&mut self, kind: Block, content_block: Value) -> SseEvent {
        let index = self.next_index;
        self.next_index += 1;
        self.open_block = Some((index, kind));
        SseEvent::new(
            "content_block_start",
            json!({"type": "content_block_start", "index": index,
                   "content_block": content_block}),
        )
    }

    fn close_block(&mut self, out: &mut Vec<SseEvent>) {
        if let Some((index, kind)) = self.open_block.take() {
            if kind == Block::Thinking {
                // Nothing is signed here; the contract still wants the delta.
                out.push(SseEvent::new(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                           "delta": {"type": "signature_delta", "signature": ""}}),
                ));
            }
            out.push(SseEvent::new(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    fn done(&mut self, completion: &Completion) -> Vec<SseEvent> {
        let mut out = Vec::new();
        self.close_block(&mut out);
        let (reason, sequence) = stop_reason(&completion.reason);
        let usage = ResponseUsage::from(completion.usage);
        out.push(SseEvent::new(
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": reason, "stop_sequence": sequence},
                   "usage": usage}),
        ));
        out.push(SseEvent::new(
            "message_stop",
            json!({"type": "message_stop"}),
        ));
        self.finished = true;
        out
    }

    /// An error after the 200 has gone out: reported in-band, then the stream ends.
    pub fn error(&mut self, error: &EngineError) -> SseEvent {
        self.finished = true;
        error_event(error)
    }
}

/// `error` as a stream's `error` event.
pub fn error_event(error: &EngineError) -> SseEvent {
    let kind = ErrorKind::of_engine_error(error);
    SseEvent::new("error", error_body(kind, &error.to_string(), None))
}

impl SseEncoder for StreamEncoder {
    fn start(&mut self) -> Vec<String> {
        vec![StreamEncoder::start(self).to_frame()]
    }

    fn on_event(&mut self, event: GenerationEvent) -> Vec<String> {
        StreamEncoder::on_event(self, event)
            .iter()
            .map(SseEvent::to_frame)
            .collect()
    }

    fn error(&mut self, error: &EngineError) -> Vec<String> {
        vec![StreamEncoder::error(self, error).to_frame()]
    }

    fn ping(&self) -> String {
        StreamEncoder::ping().to_frame()
    }

    fn is_finished(&self) -> bool {
        StreamEncoder::is_finished(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pensieve_engine::{FinishReason, Timings, Usage};

    fn done(reason: FinishReason) -> GenerationEvent {
        GenerationEvent::Done(Completion {
            reason,
            usage: Usage {
                prompt_tokens: 12,
                cached_prompt_tokens: 2,
                cache_creation_tokens: 0,
                completion_tokens: 2,
            },
            timings: Timings::default(),
        })
    }

    /// A 12-token prompt the cache had nothing of when it was queued.
    fn cold() -> Usage {
        Usage {
            prompt_tokens: 12,
            ..Usage::default()
        }
    }

    fn run(events: Vec<GenerationEvent>) -> Vec<SseEvent> {
        run_from(cold(), events)
    }

    fn run_from(queued: Usage, events: Vec<GenerationEvent>) -> Vec<SseEvent> {
        let mut enc = StreamEncoder::new("msg_1".into(), "claude-x".into(), queued);
        let mut out = vec![enc.start()];
        for e in events {
            out.extend(enc.on_event(e));
        }
        out
    }

    #[test]
    fn s3_s5_event_order_and_indexes() {
        let out = run(vec![
            GenerationEvent::PrefillDone {
                cached_prompt_tokens: 2,
            },
            GenerationEvent::Text("Hel".into()),
            GenerationEvent::Text("lo".into()),
            done(FinishReason::EndOfTurn),
        ]);
        let names: Vec<_> = out.iter().map(|e| e.event).collect();
        assert_eq!(
            names,
            vec![
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(out[1].data["index"], 0);
        assert_eq!(
            out[1].data["content_block"],
            json!({"type": "text", "text": ""})
        );
        assert_eq!(
            out[3].data["delta"],
            json!({"type": "text_delta", "text": "lo"})
        );
        assert_eq!(out[4].data["index"], 0);
    }

    #[test]
    fn s4_message_start_carries_real_input_tokens() {
        let out = run(vec![]);
        let m = &out[0].data["message"];
        assert_eq!(m["usage"]["input_tokens"], 12);
        assert_eq!(m["content"], json!([]));
        assert_eq!(m["stop_reason"], Value::Null);
        assert_eq!(m["model"], "claude-x");
        assert_eq!(m["role"], "assistant");
    }

    #[test]
    fn message_start_carries_the_split_found_when_queued() {
        // 8 of 12 tokens read from the cache; the request asked for caching, so the
        // other 4 are cache creation. The final usage agrees.
        let split = Usage {
            prompt_tokens: 12,
            cached_prompt_tokens: 8,
            cache_creation_tokens: 4,
            completion_tokens: 0,
        };
        let last = GenerationEvent::Done(Completion {
            reason: FinishReason::EndOfTurn,
            usage: Usage {
                completion_tokens: 3,
                ..split
            },
            timings: Timings::default(),
        });
        let out = run_from(split, vec![GenerationEvent::Text("hi".into()), last]);
        let start = &out[0].data["message"]["usage"];
        assert_eq!(
            *start,
            json!({"input_tokens": 0, "cache_creation_input_tokens": 4,
                   "cache_read_input_tokens": 8, "output_tokens": 0})
        );
        let delta = &out[out.len() - 2];
        assert_eq!(delta.event, "message_delta");
        assert_eq!(
            delta.data["usage"],
            json!({"input_tokens": 0, "cache_creation_input_tokens": 4,
                   "cache_read_input_tokens": 8, "output_tokens": 3})
        );
    }

    #[test]
    fn message_delta_corrects_a_split_that_admission_did_not_find() {
        // Queued when 8 tokens were cached; the entry left the cache before admission,
        // which found 2. The stream ends with the truth.
        let queued = Usage {
            prompt_tokens: 12,
            cached_prompt_tokens: 8,
            cache_creation_tokens: 0,
            completion_tokens: 0,
        };
        let out = run_from(queued, vec![done(FinishReason::EndOfTurn)]);
        let start = &out[0].data["message"]["usage"];
        assert_eq!(
            (&start["input_tokens"], &start["cache_read_input_tokens"]),
            (&json!(4), &json!(8))
        );
        let delta = &out[1].data["usage"];
        assert_eq!(out[1].event, "message_delta");
        assert_eq!(
            *delta,
            json!({"input_tokens": 10, "cache_creation_input_tokens": 0,
                   "cache_read_input_tokens": 2, "output_tokens": 2})
        );
    }

    #[test]
    fn s10_message_delta_has_reason_and_usage() {
        let out = run(vec![done(FinishReason::StopSequence("END".into()))]);
        let delta = &out[1].data;
        assert_eq!(out[1].event, "message_delta");
        assert_eq!(
            delta["delta"],
            json!({"stop_reason": "stop_sequence", "stop_sequence": "END"})
        );
        assert_eq!(delta["usage"]["output_tokens"], 2);
        assert_eq!(delta["usage"]["input_tokens"], 10);
        assert_eq!(delta["usage"]["cache_read_input_tokens"], 2);
    }

    #[test]
    fn s6_s8_thinking_then_text_then_two_tool_calls() {
        let out = run(vec![
            GenerationEvent::Thinking("plan".into()),
            GenerationEvent::Text("Checking.".into()),
            GenerationEvent::ToolCallStart {
                name: "get_weather".into(),
            },
            GenerationEvent::ToolCallArguments("{\"city\": ".into()),
            GenerationEvent::ToolCallArguments("\"Paris\"}".into()),
            GenerationEvent::ToolCallEnd,
            GenerationEvent::ToolCallStart {
                name: "get_time".into(),
            },
            GenerationEvent::ToolCallArguments("{}".into()),
            GenerationEvent::ToolCallEnd,
            done(FinishReason::ToolUse),
        ]);
        let names: Vec<_> = out.iter().map(|e| e.event).collect();
        assert_eq!(
            names,
            vec![
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(
            out[1].data["content_block"],
            json!({"type": "thinking", "thinking": ""})
        );
        assert_eq!(
            out[3].data["delta"],
            json!({"type": "signature_delta", "signature": ""})
        );
        let tool = &out[8].data;
        assert_eq!(tool["index"], 2);
        assert_eq!(tool["content_block"]["type"], "tool_use");
        assert_eq!(tool["content_block"]["name"], "get_weather");
        assert_eq!(tool["content_block"]["input"], json!({}));
        assert!(tool["content_block"]["id"]
            .as_str()
            .unwrap()
            .starts_with("toolu_"));
        let json: String = [&out[9], &out[10]]
            .iter()
            .map(|e| {
                assert_eq!(e.data["delta"]["type"], "input_json_delta");
                e.data["delta"]["partial_json"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&json).unwrap(),
            json!({"city": "Paris"})
        );
        assert_eq!(out[12].data["index"], 3);
        assert_ne!(
            out[12].data["content_block"]["id"],
            tool["content_block"]["id"]
        );
        assert_eq!(out[15].data["delta"]["stop_reason"], "tool_use");
    }

    #[test]
    fn s2_s12_framing() {
        assert_eq!(
            StreamEncoder::ping().to_frame(),
            "event: ping\ndata: {\"type\":\"ping\"}\n\n"
        );
    }

    #[test]
    fn s15_error_after_start_ends_the_stream() {
        let mut enc = StreamEncoder::new("msg_1".into(), "m".into(), cold());
        let out = enc.on_event(GenerationEvent::Failed(EngineError::Backend("boom".into())));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].event, "error");
        assert_eq!(out[0].data["type"], "error");
        assert_eq!(out[0].data["error"]["type"], "api_error");
        assert!(enc.is_finished());
        assert!(enc
            .on_event(GenerationEvent::Text("late".into()))
            .is_empty());
    }
}
