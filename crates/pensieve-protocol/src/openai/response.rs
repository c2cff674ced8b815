//! The non-streaming `/v1/chat/completions` response, and what it shares with the
//! stream: finish reasons and usage.

use pensieve_engine::{Completion, FinishReason, GenerationEvent, Usage};
use serde::Serialize;

use super::logprobs::LogprobEntry;
use crate::encode::Collector;
use crate::ids::random_id;

/// `finish_reason` of a finished generation.
pub fn finish_reason(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::EndOfTurn | FinishReason::Cancelled | FinishReason::StopSequence(_) => "stop",
        FinishReason::MaxTokens | FinishReason::ContextWindow => "length",
        FinishReason::ToolUse => "tool_calls",
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct PromptTokensDetails {
    pub cached_tokens: u32,
}

/// `usage`, with the prompt tokens read from the prefix cache.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct ChatUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
}

impl From<Usage> for ChatUsage {
    fn from(u: Usage) -> Self {
        ChatUsage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: u.cached_prompt_tokens,
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FunctionOut {
    pub name: String,
    /// The arguments object as a JSON string.
    pub arguments: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ToolCallOut {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionOut,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReplyMessage {
    pub role: &'static str,
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
}

/// Gathers a generation's events into one assistant message (and its tokens'
/// log-probabilities, when asked for).
#[derive(Debug, Default)]
pub struct MessageCollector {
    text: String,
    reasoning: String,
    calls: Vec<ToolCallOut>,
    logprobs: Option<Vec<LogprobEntry>>,
}

impl MessageCollector {
    pub fn new(logprobs: bool) -> Self {
        MessageCollector {
            logprobs: logprobs.then(Vec::new),
            ..MessageCollector::default()
        }
    }

    /// `logprobs.content`, when the request asked for it.
    pub fn take_logprobs(&mut self) -> Option<Logprobs> {
        self.logprobs.take().map(|content| Logprobs { content })
    }

    /// Take one engine event (those that are not content are ignored).
    pub fn push(&mut self, event: &GenerationEvent) {
        match event {
            GenerationEvent::Text(t) => self.text.push_str(t),
            GenerationEvent::Thinking(t) => self.reasoning.push_str(t),
            GenerationEvent::ToolCallStart { name } => self.calls.push(ToolCallOut {
                id: random_id("call_"),
                kind: "function",
                function: FunctionOut {
                    name: name.clone(),
                    arguments: String::new(),
                },
            }),
            GenerationEvent::ToolCallArguments(a) => {
                if let Some(call) = self.calls.last_mut() {
                    call.function.arguments.push_str(a);
                }
            }
            GenerationEvent::ToolCallEnd => {
                if let Some(call) = self.calls.last_mut() {
                    if call.function.arguments.trim().is_empty() {
                        call.function.arguments = "{}".into();
                    }
                }
            }
            GenerationEvent::Logprob(t) => {
                if let Some(entries) = self.logprobs.as_mut() {
                    entries.push(t.into());
                }
            }
            GenerationEvent::PrefillDone { .. }
            | GenerationEvent::Done(_)
            | GenerationEvent::Failed(_) => {}
        }
    }

    pub fn into_message(self) -> ReplyMessage {
        ReplyMessage {
            role: "assistant",
            // OpenAI sends null content beside tool calls.
            content: (!self.text.is_empty() || self.calls.is_empty()).then_some(self.text),
            reasoning_content: (!self.reasoning.is_empty()).then_some(self.reasoning),
            tool_calls: self.calls,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Logprobs {
    pub content: Vec<LogprobEntry>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Choice {
    pub index: u32,
    pub message: ReplyMessage,
    pub finish_reason: &'static str,
    pub logprobs: Option<Logprobs>,
}

/// The body of a non-streaming `/v1/chat/completions` response.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: ChatUsage,
    pub system_fingerprint: Option<String>,
}

impl ChatCompletion {
    pub fn new(
        id: String,
        model: String,
        created: u64,
        mut collected: MessageCollector,
        completion: &Completion,
    ) -> Self {
        let logprobs = collected.take_logprobs();
        let message = collected.into_message();
        ChatCompletion {
            id,
            object: "chat.completion",
            created,
            model,
            choices: vec![Choice {
                index: 0,
                message,
                finish_reason: finish_reason(&completion.reason),
                logprobs,
            }],
            usage: completion.usage.into(),
            system_fingerprint: None,
        }
    }
}

/// A whole non-streamed chat completion: its message, gathered, under the reply's id,
/// model and creation time.
pub struct ChatCollector {
    id: String,
    /// The name the client asked for, echoed back.
    model: String,
    created: u64,
    message: MessageCollector,
}

impl ChatCollector {
    pub fn new(id: String, model: String, created: u64, logprobs: bool) -> Self {
        ChatCollector {
            id,
            model,
            created,
            message: MessageCollector::new(logprobs),
        }
    }
}

impl Collector for ChatCollector {
    type Body = ChatCompletion;

    fn push(&mut self, event: GenerationEvent) {
        self.message.push(&event);
    }

    fn finish(self, completion: Completion) -> ChatCompletion {
        ChatCompletion::new(self.id, self.model, self.created, self.message, &completion)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pensieve_engine::Timings;
    use serde_json::json;

    fn completion(reason: FinishReason) -> Completion {
        Completion {
            reason,
            usage: Usage {
                prompt_tokens: 10,
                cached_prompt_tokens: 4,
                cache_creation_tokens: 0,
                completion_tokens: 3,
            },
            timings: Timings::default(),
        }
    }

    #[test]
    fn a_text_reply() {
        let mut c = MessageCollector::default();
        c.push(&GenerationEvent::Thinking("plan".into()));
        c.push(&GenerationEvent::Text("hi".into()));
        let r = ChatCompletion::new(
            "chatcmpl-1".into(),
            "m".into(),
            7,
            c,
            &completion(FinishReason::StopSequence("END".into())),
        );
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
                             "message": {"role": "assistant", "content": "hi",
                                         "reasoning_content": "plan"}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13,
                          "prompt_tokens_details": {"cached_tokens": 4}},
                "system_fingerprint": null
            })
        );
    }

    #[test]
    fn tool_calls_carry_ids_and_string_arguments() {
        let mut c = MessageCollector::default();
        for e in [
            GenerationEvent::ToolCallStart { name: "f".into() },
            GenerationEvent::ToolCallArguments("{\"x\":".into()),
            GenerationEvent::ToolCallArguments(" 1}".into()),
            GenerationEvent::ToolCallEnd,
            GenerationEvent::ToolCallStart { name: "g".into() },
            GenerationEvent::ToolCallEnd,
        ] {
            c.push(&e);
        }
        let m = serde_json::to_value(c.into_message()).unwrap();
        assert_eq!(m["content"], json!(null));
        assert_eq!(
            m["tool_calls"][0]["function"],
            json!({"name": "f", "arguments": "{\"x\": 1}"})
        );
        assert_eq!(m["tool_calls"][1]["function"]["arguments"], "{}");
        assert!(m["tool_calls"][0]["id"]
            .as_str()
            .unwrap()
            .starts_with("call_"));
        assert_eq!(m["tool_calls"][0]["type"], "function");
        assert_eq!(finish_reason(&FinishReason::ToolUse), "tool_calls");
        assert_eq!(finish_reason(&FinishReason::MaxTokens), "length");
    }
}
