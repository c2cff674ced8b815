//! The non-streaming `/v1/messages` response and the usage block shared with streaming.

use pensieve_engine::{Completion, FinishReason, Usage};
use serde::Serialize;

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
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseBlock {
    Text { text: String },
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
    pub fn new(id: String, model: String, text: String, completion: &Completion) -> Self {
        let (stop_reason, stop_sequence) = stop_reason(&completion.reason);
        let content = if text.is_empty() {
            Vec::new()
        } else {
            vec![ResponseBlock::Text { text }]
        };
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
        let r = MessageResponse::new("msg_1".into(), "claude-x".into(), "hi".into(), &completion);
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
    fn p3_stop_reasons() {
        assert_eq!(stop_reason(&FinishReason::EndOfTurn), ("end_turn", None));
        assert_eq!(stop_reason(&FinishReason::MaxTokens), ("max_tokens", None));
        assert_eq!(
            stop_reason(&FinishReason::ContextWindow),
            ("model_context_window_exceeded", None)
        );
    }
}
