//! The response object (`"object": "response"`) a generation becomes: its output items
//! (reasoning, a message, function calls), status, usage and the request settings it
//! repeats, and the assistant turn it adds to a stored conversation.

use pensieve_engine::{Completion, EngineError, FinishReason, Message, Role, ToolCall, Usage};
use serde_json::{json, Value};

use super::request::Echo;

/// One finished output item.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Reasoning {
        id: String,
        text: String,
    },
    Message {
        id: String,
        text: String,
    },
    FunctionCall {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

impl Item {
    pub fn id(&self) -> &str {
        match self {
            Item::Reasoning { id, .. }
            | Item::Message { id, .. }
            | Item::FunctionCall { id, .. } => id,
        }
    }

    /// The item as the API writes it; `done`: finished (`in_progress` while it streams).
    pub fn to_json(&self, done: bool) -> Value {
        let status = if done { "completed" } else { "in_progress" };
        match self {
            Item::Reasoning { id, text } => json!({
                "type": "reasoning",
                "id": id,
                "summary": [],
                "content": if done { json!([{"type": "reasoning_text", "text": text}]) } else { json!([]) },
            }),
            Item::Message { id, text } => json!({
                "type": "message",
                "id": id,
                "status": status,
                "role": "assistant",
                "content": if done { json!([output_text(text)]) } else { json!([]) },
            }),
            Item::FunctionCall {
                id,
                call_id,
                name,
                arguments,
            } => json!({
                "type": "function_call",
                "id": id,
                "call_id": call_id,
                "name": name,
                "arguments": if done { arguments.as_str() } else { "" },
                "status": status,
            }),
        }
    }
}

/// An `output_text` content part.
pub fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// The assistant turn of these items, to store after the conversation that asked for it.
pub fn reply_message(items: &[Item]) -> Message {
    let mut m = Message::text(Role::Assistant, "");
    for item in items {
        match item {
            Item::Reasoning { text, .. } => {
                m.reasoning = Some(m.reasoning.take().map_or(text.clone(), |r| r + text))
            }
            Item::Message { text, .. } => m.content.push_str(text),
            Item::FunctionCall {
                call_id,
                name,
                arguments,
                ..
            } => m.tool_calls.push(ToolCall {
                id: call_id.clone(),
                name: name.clone(),
                arguments: serde_json::from_str(arguments)
                    .unwrap_or_else(|_| Value::Object(Default::default())),
            }),
        }
    }
    m
}

/// Where a response stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    InProgress,
    Completed,
    /// Cut short: `max_output_tokens` (or the context) ran out.
    Incomplete,
    Failed(EngineError),
}

impl Status {
    pub fn of(completion: &Completion) -> Status {
        match completion.reason {
            FinishReason::MaxTokens | FinishReason::ContextWindow => Status::Incomplete,
            _ => Status::Completed,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Incomplete => "incomplete",
            Status::Failed(_) => "failed",
        }
    }
}

/// `usage`, with the prompt tokens read from the prefix cache.
pub fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

/// What every response object of one request carries.
#[derive(Debug, Clone)]
pub struct Head {
    pub id: String,
    pub created_at: u64,
    /// The name the client asked for, echoed back.
    pub model: String,
    pub echo: Echo,
}

impl Head {
    /// The response object as it stands.
    pub fn response(&self, status: &Status, items: &[Item], usage: Option<&Usage>) -> Value {
        let e = &self.echo;
        let error = match status {
            Status::Failed(err) => json!({"code": error_code(err), "message": err.to_string()}),
            _ => Value::Null,
        };
        let incomplete = match status {
            Status::Incomplete => json!({"reason": "max_output_tokens"}),
            _ => Value::Null,
        };
        let done = !matches!(status, Status::InProgress);
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status.as_str(),
            "error": error,
            "incomplete_details": incomplete,
            "instructions": e.instructions,
            "max_output_tokens": e.max_output_tokens,
            "model": self.model,
            "output": items.iter().map(|i| i.to_json(done)).collect::<Vec<_>>(),
            "parallel_tool_calls": e.parallel_tool_calls,
            "previous_response_id": e.previous_response_id,
            "reasoning": {"effort": e.effort, "summary": null},
            "store": e.store,
            "temperature": e.temperature,
            "text": e.text,
            "tool_choice": e.tool_choice,
            "tools": e.tools,
            "top_p": e.top_p,
            "truncation": "disabled",
            "usage": usage.map(usage_json),
            "user": e.user,
            "metadata": e.metadata,
        })
    }
}

/// The `code` of a failed response's `error`.
fn error_code(e: &EngineError) -> &'static str {
    match e {
        EngineError::PromptTooLong { .. } => "context_length_exceeded",
        EngineError::Overloaded { .. } | EngineError::ShuttingDown => "server_is_overloaded",
        EngineError::InvalidRequest(_) => "invalid_prompt",
        _ => "server_error",
    }
}
