//! `/v1/responses` requests, parsed leniently (unknown fields are ignored) and translated
//! into the engine's [`GenerateRequest`]: `instructions` become the system turn, `input`
//! (a string, or items: messages, function calls and their outputs, reasoning) the
//! conversation, after the stored conversation of `previous_response_id` when there is
//! one.

use std::collections::HashMap;

use pensieve_engine::{
    Effort, GenerateRequest, Image, Message, Role, SamplingDefaults, SamplingParams, ToolCall,
    ToolChoice, ToolSpec,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::fields;
use crate::openai::error::OpenAiError;
use crate::openai::request::{at_least_one_token, in_range, parse_body, parse_tool_choice};

/// OpenAI's longest function name.
const MAX_FUNCTION_NAME: usize = 64;

/// The body of `POST /v1/responses`.
#[derive(Debug, Clone, Deserialize)]
pub struct ResponsesRequest {
    pub model: Option<String>,
    #[serde(default)]
    pub input: Option<Input>,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// `{"format": {"type": "text" | "json_object" | "json_schema", "schema": ...}}`.
    #[serde(default)]
    pub text: Option<Value>,
    #[serde(default)]
    pub reasoning: Option<ReasoningSettings>,
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub stream: Option<bool>,
    /// Keep the response for `previous_response_id` and `GET` [default: true].
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    pub background: Option<bool>,
    #[serde(default)]
    pub conversation: Option<Value>,
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Items(Vec<Value>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReasoningSettings {
    #[serde(default)]
    pub effort: Option<String>,
}

/// A request ready for the engine, with what the response echoes and stores.
#[derive(Debug)]
pub struct Prepared {
    pub request: GenerateRequest,
    /// The conversation without the instructions: the previous response's, then this
    /// input. The reply is added to it when the response is stored.
    pub history: Vec<Message>,
    /// The request's settings as the response object reports them.
    pub echo: Echo,
    pub stream: bool,
    pub store: bool,
}

/// What a response object repeats of its request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Echo {
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u32>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    pub effort: Option<String>,
    pub store: bool,
    pub temperature: f32,
    pub top_p: f32,
    /// `text`, `tool_choice` and `tools` as the request gave them (their defaults else).
    pub text: Value,
    pub tool_choice: Value,
    pub tools: Value,
    pub metadata: Value,
    pub user: Option<String>,
}

/// Parse a body; a value of the wrong type is refused with its path as `param`.
pub fn parse_responses(bytes: &[u8]) -> Result<ResponsesRequest, OpenAiError> {
    parse_body(bytes)
}

impl ResponsesRequest {
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// The neutral request, after `previous` (the conversation of the response named by
    /// `previous_response_id`, which the caller looked up). Settings the engine can't
    /// honour are refused by name rather than ignored.
    pub fn prepare(
        self,
        defaults: &SamplingDefaults,
        previous: Option<&[Message]>,
    ) -> Result<Prepared, OpenAiError> {
        let model = self
            .model
            .ok_or_else(|| OpenAiError::invalid(Some("model"), "model: Field required"))?;
        if self.background == Some(true) {
            return Err(OpenAiError::invalid(
                Some("background"),
                "background: background responses are not supported; stream instead",
            ));
        }
        if self.conversation.as_ref().is_some_and(|c| !c.is_null()) {
            return Err(OpenAiError::invalid(
                Some("conversation"),
                "conversation: the Conversations API is not supported; use previous_response_id",
            ));
        }
        if self.top_logprobs.is_some_and(|n| n > 0) {
            return Err(OpenAiError::invalid(
                Some("top_logprobs"),
                "top_logprobs: log-probabilities are not supported on /v1/responses; use /v1/chat/completions",
            ));
        }
        at_least_one_token("max_output_tokens", self.max_output_tokens)?;
        for (name, value, min, max) in [
            ("temperature", self.temperature, 0.0, 2.0),
            ("top_p", self.top_p, 0.0, 1.0),
        ] {
            if let Some(v) = value {
                in_range(name, v, min, max)?;
            }
        }
        let mut history = previous.map(<[Message]>::to_vec).unwrap_or_default();
        let mut images = Vec::new();
        match self.input {
            None if previous.is_none() => {
                return Err(OpenAiError::invalid(Some("input"), "input: Field required"))
            }
            None => {}
            Some(Input::Text(text)) => history.push(Message::text(Role::User, text)),
            Some(Input::Items(items)) => conversation(items, &mut history, &mut images)?,
        }
        if !history.iter().any(|m| m.role != Role::System) {
            return Err(OpenAiError::invalid(
                Some("input"),
                "input: at least one message is required",
            ));
        }
        let tools = self.tools.clone().unwrap_or_default();
        let specs = tools
            .iter()
            .enumerate()
            .filter_map(|(i, t)| tool_spec(i, t).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        let format = self
            .text
            .as_ref()
            .and_then(|t| t.get("format"))
            .filter(|f| !f.is_null());
        let asked = SamplingParams {
            top_p: self.top_p,
            ..SamplingParams::default()
        };
        let mut sampling = defaults.fill(asked, self.temperature);
        sampling.top_p = sampling.top_p.filter(|p| *p != 1.0);

        let mut messages = Vec::with_capacity(history.len() + 1);
        if let Some(instructions) = self.instructions.as_ref().filter(|i| !i.is_empty()) {
            messages.push(Message::text(Role::System, instructions.clone()));
        }
        messages.extend(history.iter().cloned());
        let mut request =
            GenerateRequest::new(model, messages, self.max_output_tokens.unwrap_or(u32::MAX));
        request.sampling = sampling;
        request.tools = specs;
        request.tool_choice = tool_choice(self.tool_choice.as_ref())?;
        request.parallel_tool_calls = self.parallel_tool_calls.unwrap_or(true);
        request.output_schema = output_schema(format)?;
        request.images = images;
        let effort = self.reasoning.as_ref().and_then(|r| r.effort.clone());
        if let Some(word) = effort.as_deref() {
            request.thinking = word != "none";
            request.effort = Effort::from_word(word);
            if request.thinking && request.effort.is_none() {
                return Err(OpenAiError::invalid(
                    Some("reasoning.effort"),
                    format!("reasoning.effort: unknown value {word:?}; expected none, minimal, low, medium or high"),
                ));
            }
        }
        let store = self.store.unwrap_or(true);
        let echo = Echo {
            instructions: self.instructions,
            max_output_tokens: self.max_output_tokens,
            parallel_tool_calls: request.parallel_tool_calls,
            previous_response_id: self.previous_response_id,
            effort,
            store,
            temperature: request.sampling.temperature,
            top_p: self.top_p.unwrap_or(1.0),
            text: match format {
                Some(f) => serde_json::json!({ "format": f }),
                None => serde_json::json!({"format": {"type": "text"}}),
            },
            tool_choice: self.tool_choice.unwrap_or_else(|| "auto".into()),
            tools: Value::Array(tools),
            metadata: self.metadata.unwrap_or_else(|| serde_json::json!({})),
            user: self.user,
        };
        Ok(Prepared {
            request,
            history,
            echo,
            stream: self.stream.unwrap_or(false),
            store,
        })
    }
}

/// One input item read as `T`, a type error named by its path (`input[2].call_id`).
fn item<T: DeserializeOwned>(value: &Value, index: usize) -> Result<T, OpenAiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = fields::bracketed(e.path());
        let param = if inner.is_empty() {
            format!("input[{index}]")
        } else {
            format!("input[{index}].{inner}")
        };
        let message = e.into_inner().to_string();
        let message = fields::shape_message(&message).map_or(message, str::to_owned);
        OpenAiError::invalid(Some(&param), format!("{param}: {message}"))
    })
}

#[derive(Deserialize)]
struct MessageItem {
    role: String,
    #[serde(default)]
    content: Option<MessageContent>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum MessageContent {
    Text(String),
    Parts(Vec<Value>),
}

#[derive(Deserialize)]
struct FunctionCallItem {
    call_id: String,
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize)]
struct FunctionCallOutputItem {
    call_id: String,
    output: MessageContent,
}

#[derive(Deserialize)]
struct ReasoningItem {
    #[serde(default)]
    summary: Vec<Value>,
    #[serde(default)]
    content: Option<Vec<Value>>,
}

/// The items as neutral messages, after `out`: reasoning and function calls join the
/// assistant turn they belong to, as one chat turn carries them. Their images are
/// gathered in `images`.
fn conversation(
    items: Vec<Value>,
    out: &mut Vec<Message>,
    images: &mut Vec<Image>,
) -> Result<(), OpenAiError> {
    // Outputs name their call by id; templates often want the tool's name too.
    let mut names: HashMap<String, String> = out
        .iter()
        .flat_map(|m| &m.tool_calls)
        .map(|c| (c.id.clone(), c.name.clone()))
        .collect();
    for (i, value) in items.iter().enumerate() {
        let kind = match value.get("type") {
            None => "message",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                let param = format!("input[{i}].type");
                return Err(OpenAiError::invalid(
                    Some(&param),
                    format!("{param}: expected a string"),
                ));
            }
        };
        match kind {
            "message" => {
                let m: MessageItem = item(value, i)?;
                let role = match m.role.as_str() {
                    "system" | "developer" => Role::System,
                    "user" => Role::User,
                    "assistant" => Role::Assistant,
                    other => {
                        let param = format!("input[{i}].role");
                        return Err(OpenAiError::invalid(
                            Some(&param),
                            format!("{param}: expected user, assistant, system or developer; got {other:?}"),
                        ));
                    }
                };
                let text = content_text(m.content, &format!("input[{i}].content"), images)?;
                match out.last_mut() {
                    // After its reasoning, the assistant's answer is the same turn.
                    Some(last)
                        if role == Role::Assistant
                            && last.role == Role::Assistant
                            && last.content.is_empty()
                            && last.tool_calls.is_empty() =>
                    {
                        last.content = text
                    }
                    _ => out.push(Message::text(role, text)),
                }
            }
            "function_call" | "custom_tool_call" => {
                let (call_id, name, arguments) = if kind == "function_call" {
                    let c: FunctionCallItem = item(value, i)?;
                    let arguments = if c.arguments.trim().is_empty() {
                        Value::Object(Default::default())
                    } else {
                        serde_json::from_str(&c.arguments).map_err(|e| {
                            let param = format!("input[{i}].arguments");
                            OpenAiError::invalid(
                                Some(&param),
                                format!("{param}: not a JSON object ({e})"),
                            )
                        })?
                    };
                    (c.call_id, c.name, arguments)
                } else {
                    // A freeform tool's call: its text as the one argument.
                    let c: CustomCallItem = item(value, i)?;
                    (c.call_id, c.name, serde_json::json!({ "input": c.input }))
                };
                names.insert(call_id.clone(), name.clone());
                let call = ToolCall {
                    id: call_id,
                    name,
                    arguments,
                };
                match out.last_mut() {
                    Some(last) if last.role == Role::Assistant => last.tool_calls.push(call),
                    _ => {
                        let mut m = Message::text(Role::Assistant, "");
                        m.tool_calls.push(call);
                        out.push(m);
                    }
                }
            }
            "function_call_output" | "custom_tool_call_output" => {
                let o: FunctionCallOutputItem = item(value, i)?;
                let mut m = Message::text(
                    Role::Tool,
                    content_text(Some(o.output), &format!("input[{i}].output"), images)?,
                );
                m.name = names.get(&o.call_id).cloned();
                m.tool_call_id = Some(o.call_id);
                out.push(m);
            }
            "reasoning" => {
                let r: ReasoningItem = item(value, i)?;
                // The reasoning itself when the client kept it, else its summary.
                let parts = r.content.filter(|c| !c.is_empty()).unwrap_or(r.summary);
                let text = parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n\n");
                let mut m = Message::text(Role::Assistant, "");
                m.reasoning = (!text.is_empty()).then_some(text);
                out.push(m);
            }
            "item_reference" => {
                let param = format!("input[{i}]");
                return Err(OpenAiError::invalid(
                    Some(&param),
                    format!("{param}: item references are not supported; pass the items, or previous_response_id"),
                ));
            }
            other => {
                let param = format!("input[{i}].type");
                return Err(OpenAiError::invalid(
                    Some(&param),
                    format!("{param}: {other:?} items are not supported; expected message, function_call, function_call_output or reasoning"),
                ));
            }
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct CustomCallItem {
    call_id: String,
    name: String,
    #[serde(default)]
    input: String,
}

/// The text of a message's content (or a call's output): text parts joined with blank
/// lines, images as their placeholders (gathered in `images`); files and audio refused.
fn content_text(
    content: Option<MessageContent>,
    at: &str,
    images: &mut Vec<Image>,
) -> Result<String, OpenAiError> {
    let parts = match content {
        None => return Ok(String::new()),
        Some(MessageContent::Text(t)) => return Ok(t),
        Some(MessageContent::Parts(parts)) => parts,
    };
    let mut texts = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
        match kind {
            "input_text" | "output_text" | "text" | "summary_text" | "reasoning_text" => texts
                .push(
                    part.get("text")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                ),
            "refusal" => texts.push(
                part.get("refusal")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            ),
            "input_image" => {
                let param = format!("{at}[{j}]");
                let field = |name: &str| part.get(name).and_then(Value::as_str);
                let image = match (field("image_url"), field("file_id")) {
                    (Some(url), _) => crate::image::from_url(url, &param),
                    (None, Some(id)) => Ok(crate::image::from_file_id(id, &param)),
                    (None, None) => Err(format!("{param}.image_url: Field required")),
                }
                .map_err(|e| OpenAiError::invalid(Some(&param), e))?;
                texts.push(image.placeholder());
                images.push(image);
            }
            "input_file" | "input_audio" => {
                let param = format!("{at}[{j}]");
                return Err(OpenAiError::invalid(
                    Some(&param),
                    format!("{param}: this model accepts text only"),
                ));
            }
            other => {
                let param = format!("{at}[{j}].type");
                return Err(OpenAiError::invalid(
                    Some(&param),
                    format!("{param}: unknown content type {other:?}"),
                ));
            }
        }
    }
    Ok(texts.join("\n\n"))
}

/// A function tool (`{"type": "function", "name", "description", "parameters"}`, flat,
/// unlike Chat Completions'). None for the others: hosted tools (`web_search`,
/// `file_search`, ...) can't run here and tool namespaces are not offered, so the model
/// does not see them; clients such as Codex send them by default, and a refusal would
/// stop those clients altogether.
fn tool_spec(index: usize, tool: &Value) -> Result<Option<ToolSpec>, OpenAiError> {
    let at = |field: &str| format!("tools[{index}].{field}");
    match tool.get("type").and_then(Value::as_str) {
        Some("function") => {}
        Some(_) => return Ok(None),
        None => {
            let param = at("type");
            return Err(OpenAiError::invalid(
                Some(&param),
                format!("{param}: Field required"),
            ));
        }
    }
    let name = tool.get("name").and_then(Value::as_str).unwrap_or_default();
    if !fields::is_tool_name(name, MAX_FUNCTION_NAME) {
        let param = at("name");
        return Err(OpenAiError::invalid(
            Some(&param),
            format!("{param}: must match ^[a-zA-Z0-9_-]{{1,{MAX_FUNCTION_NAME}}}$"),
        ));
    }
    let parameters = match tool.get("parameters") {
        None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
        Some(p) if p.is_object() => p.clone(),
        Some(_) => {
            let param = at("parameters");
            return Err(OpenAiError::invalid(
                Some(&param),
                format!("{param}: must be a JSON Schema object"),
            ));
        }
    };
    Ok(Some(ToolSpec {
        name: name.to_owned(),
        description: tool
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_owned),
        parameters,
    }))
}

/// `"none" | "auto" | "required" | {"type": "function", "name": ...}`.
fn tool_choice(choice: Option<&Value>) -> Result<ToolChoice, OpenAiError> {
    parse_tool_choice(choice, "/name", r#"{"type": "function", "name": ...}"#)
}

/// The schema a JSON reply must follow (`text.format`): any object for `json_object`.
fn output_schema(format: Option<&Value>) -> Result<Option<Value>, OpenAiError> {
    let Some(format) = format else {
        return Ok(None);
    };
    match format
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
    {
        "text" => Ok(None),
        "json_object" => Ok(Some(serde_json::json!({"type": "object"}))),
        "json_schema" => match format.get("schema") {
            Some(schema) if schema.is_object() => Ok(Some(schema.clone())),
            _ => Err(OpenAiError::invalid(
                Some("text.format.schema"),
                "text.format.schema: Field required (a JSON Schema object)",
            )),
        },
        other => Err(OpenAiError::invalid(
            Some("text.format.type"),
            format!("text.format.type: expected text, json_object or json_schema; got {other:?}"),
        )),
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
