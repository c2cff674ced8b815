//! The `/v1/messages` SSE encoder: a pure state machine from engine events to Anthropic
//! stream events, so event order and framing are unit-tested without a server.

use pensieve_engine::{Completion, EngineError, GenerationEvent};
use serde_json::{json, Value};

use super::error::{error_body, ErrorKind};
use super::response::{stop_reason, ResponseUsage};

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

/// Encodes one message's stream.
#[derive(Debug)]
pub struct StreamEncoder {
    id: String,
    model: String,
    input_tokens: u32,
    /// Index of the open content block, if any.
    open_block: Option<u32>,
    next_index: u32,
    finished: bool,
}

impl StreamEncoder {
    pub fn new(id: String, model: String, input_tokens: u32) -> Self {
        StreamEncoder {
            id,
            model,
            input_tokens,
            open_block: None,
            next_index: 0,
            finished: false,
        }
    }

    /// The first event: sent before prefill starts, with the real prompt size.
    pub fn start(&self) -> SseEvent {
        SseEvent::new(
            "message_start",
            json!({
                "type": "message_start",
                "message": {
                    "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": self.input_tokens, "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 0, "output_tokens": 0}
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
            GenerationEvent::PrefillDone { .. } => Vec::new(),
            GenerationEvent::Text(text) => self.text(text),
            GenerationEvent::Done(completion) => self.done(&completion),
            GenerationEvent::Failed(error) => vec![self.error(&error)],
        }
    }

    fn text(&mut self, text: String) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let index = match self.open_block {
            Some(i) => i,
            None => {
                let i = self.next_index;
                self.next_index += 1;
                self.open_block = Some(i);
                out.push(SseEvent::new(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": i,
                           "content_block": {"type": "text", "text": ""}}),
                ));
                i
            }
        };
        out.push(SseEvent::new(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index,
                   "delta": {"type": "text_delta", "text": text}}),
        ));
        out
    }

    fn close_block(&mut self, out: &mut Vec<SseEvent>) {
        if let Some(i) = self.open_block.take() {
            out.push(SseEvent::new(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": i}),
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
        let kind = ErrorKind::of_engine_error(error);
        SseEvent::new("error", error_body(kind, &error.to_string(), None))
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

    fn run(events: Vec<GenerationEvent>) -> Vec<SseEvent> {
        let mut enc = StreamEncoder::new("msg_1".into(), "claude-x".into(), 12);
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
    fn s2_s12_framing() {
        assert_eq!(
            StreamEncoder::ping().to_frame(),
            "event: ping\ndata: {\"type\":\"ping\"}\n\n"
        );
    }

    #[test]
    fn s15_error_after_start_ends_the_stream() {
        let mut enc = StreamEncoder::new("msg_1".into(), "m".into(), 1);
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
