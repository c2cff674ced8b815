//! The non-streaming `/v1/messages` response and the usage block shared with streaming.

use pensieve_engine::{Completion, FinishReason, GenerationEvent, Usage};
use serde::Serialize;
use serde_json::Value;

use crate::encode::Collector;
use crate::ids::random_id;

/// `usage` as Anthropic reports it: the prompt split into uncached, newly cached and
/// cache-read tokens (their sum is the whole prompt).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct ResponseUsage {
    pub input_tokens: u32,
    pub cache_creation_input_tokens: u32,
    pub cache_read_input_tokens: u32,
    pub output_tokens: u32,
}

impl From<Usage> for ResponseUsage {
    fn from(u: Usage) -> Self {
        ResponseUsage {
            input_tokens: u.plain_prompt_tokens(),
            cache_creation_input_tokens: u.cache_creation_tokens,
            cache_read_input_tokens: u.cached_prompt_tokens,
            output_tokens: u.completion_tokens,
        }
    }
}

/// The `stop_reason` and `stop_sequence` of a finished generation.
pub fn stop_reason(reason: &FinishReason) -> (&'static str, Option<String>) {
    match reason {
        FinishReason::EndOfTurn | FinishReason::Cancelled => ("end_turn", None),
        FinishReason::MaxTokens => ("max_tokens", None),
        FinishReason::StopSequence(s) => ("stop_sequence", Some(s.clone())),
        FinishReason::ContextWindow => ("model_context_window_exceeded", None),
        FinishReason::ToolUse => ("tool_use", None),
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseBlock {
    Thinking {
        thinking: String,
        signature: String,
    },
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
}

/// Gathers a generation's events into content blocks, in order.
#[derive(Debug, Default)]
pub struct ContentCollector {
    blocks: Vec<ResponseBlock>,
    /// The arguments of the call being read.
    arguments: String,
}

impl ContentCollector {
    /// Take one engine event (those that are not content are ignored).
    pub fn push(&mut self, event: &GenerationEvent) {
        match event {
            GenerationEvent::Text(t) => match self.blocks.last_mut() {
                Some(ResponseBlock::Text { text }) => text.push_str(t),
                _ => self.blocks.push(ResponseBlock::Text { text: t.clone() }),
            },
            GenerationEvent::Thinking(t) => match self.blocks.last_mut() {
                Some(ResponseBlock::Thinking { thinking, .. }) => thinking.push_str(t),
                _ => self.blocks.push(ResponseBlock::Thinking {
                    thinking: t.clone(),
                    signature: String::new(),
                }),
            },
            GenerationEvent::ToolCallStart { name } => {
                self.arguments.clear();
                self.blocks.push(ResponseBlock::ToolUse {
                    id: random_id("toolu_"),
                    name: name.clone(),
                    input: Value::Object(Default::default()),
                });
            }
            GenerationEvent::ToolCallArguments(a) => self.arguments.push_str(a),
            GenerationEvent::ToolCallEnd => {
                if let Some(ResponseBlock::ToolUse { input, .. }) = self.blocks.last_mut() {
                    // The engine's output parser always closes the arguments into an
                    // object (it logs what it had to repair); `{}` stays otherwise.
                    if let Ok(v @ Value::Object(_)) = serde_json::from_str(&self.arguments) {
                        *input = v;
                    }
                }
            }
            GenerationEvent::PrefillDone { .. }
            | GenerationEvent::Logprob(_)
            | GenerationEvent::Done(_)
            | GenerationEvent::Failed(_) => {}
        }
    }

    pub fn into_blocks(self) -> Vec<ResponseBlock> {
        self.blocks
    }
}

/// The body of a non-streaming `/v1/messages` response.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MessageResponse {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub role: &'static str,
    pub model: String,
    pub content: Vec<ResponseBlock>,
    pub stop_reason: &'static str,
    pub stop_sequence: Option<String>,
    pub usage: ResponseUsage,
}

impl MessageResponse {
    pub fn new(
        id: String,
        model: String,
        content: Vec<ResponseBlock>,
        completion: &Completion,
    ) -> Self {
        let (stop_reason, stop_sequence) = stop_reason(&completion.reason);
        MessageResponse {
            id,
            kind: "message",
            role: "assistant",
            model,
            content,
            stop_reason,
            stop_sequence,
            usage: completion.usage.into(),
        }
    }
}

/// A whole non-streamed message: its content, gathered, under the reply's id and model.
pub struct MessageCollector {
    id: String,
    /// The name the client asked for, echoed back.
    model: String,
    content: ContentCollector,
}

impl MessageCollector {
    pub fn new(id: String, model: String) -> Self {
        MessageCollector {
            id,
            model,
            content: ContentCollector::default(),
        }
    }
}

impl Collector for MessageCollector {
    type Body = MessageResponse;

    fn push(&mut self, event: GenerationEvent) {
        self.content.push(&event);
    }

    fn finish(self, completion: Completion) -> MessageResponse {
        let blocks = self.content.into_blocks();
        MessageResponse::new(self.id, self.model, blocks, &completion)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pensieve_engine::Timings;
    use serde_json::json;

    #[test]
    fn p1_shape() {
        let completion = Completion {
            reason: FinishReason::StopSequence("END".into()),
            usage: Usage {
                prompt_tokens: 10,
                cached_prompt_tokens: 4,
                cache_creation_tokens: 5,
                completion_tokens: 3,
            },
            timings: Timings::default(),
        };
        let text = vec![ResponseBlock::Text { text: "hi".into() }];
        let r = MessageResponse::new("msg_1".into(), "claude-x".into(), text, &completion);
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                "content": [{"type": "text", "text": "hi"}],
                "stop_reason": "stop_sequence", "stop_sequence": "END",
                "usage": {"input_tokens": 1, "cache_creation_input_tokens": 5,
                          "cache_read_input_tokens": 4, "output_tokens": 3}
            })
        );
    }

    #[test]
    fn p2_blocks_in_order_with_tool_input_as_an_object() {
        let mut c = ContentCollector::default();
        for e in [
            GenerationEvent::Thinking("a".into()),
            GenerationEvent::Thinking("b".into()),
            GenerationEvent::Text("t".into()),
            GenerationEvent::ToolCallStart { name: "f".into() },
            GenerationEvent::ToolCallArguments("{\"x\":".into()),
            GenerationEvent::ToolCallArguments(" [1]}".into()),
            GenerationEvent::ToolCallEnd,
        ] {
            c.push(&e);
        }
        let blocks = serde_json::to_value(c.into_blocks()).unwrap();
        assert_eq!(
            blocks[0],
            json!({"type": "thinking", "thinking": "ab", "signature": ""})
        );
        assert_eq!(blocks[1], json!({"type": "text", "text": "t"}));
        assert_eq!(blocks[2]["type"], "tool_use");
        assert_eq!(blocks[2]["name"], "f");
        assert_eq!(blocks[2]["input"], json!({"x": [1]}));
        assert!(blocks[2]["id"].as_str().unwrap().starts_with("toolu_"));
    }

    #[test]
    fn p3_stop_reasons() {
        assert_eq!(stop_reason(&FinishReason::EndOfTurn), ("end_turn", None));
        assert_eq!(stop_reason(&FinishReason::MaxTokens), ("max_tokens", None));
        assert_eq!(
            stop_reason(&FinishReason::ContextWindow),
            ("model_context_window_exceeded", None)
        );
        assert_eq!(stop_reason(&FinishReason::ToolUse), ("tool_use", None));
    }
}
