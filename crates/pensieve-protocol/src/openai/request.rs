//! `/v1/chat/completions` requests, parsed leniently (unknown fields are ignored) and
//! translated into the engine's [`GenerateRequest`].

use std::collections::HashMap;

use pensieve_engine::{
    Effort, GenerateRequest, Image, Message, Role, SamplingDefaults, SamplingParams, ToolCall,
    ToolChoice, ToolSpec,
};
use serde::Deserialize;
use serde_json::Value;

use super::error::OpenAiError;
use crate::fields;

/// What `max_tokens` is when the client gives none: the rest of the context.
const NO_LIMIT: u32 = u32::MAX;
/// OpenAI's limit on `top_logprobs`.
const MAX_TOP_LOGPROBS: u32 = 20;
/// OpenAI's limit on `stop` sequences.
const MAX_STOPS: usize = 4;
/// OpenAI's longest function name (`^[a-zA-Z0-9_-]{1,64}$`).
const MAX_FUNCTION_NAME: usize = 64;

/// The body of `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(flatten)]
    pub common: CommonParams,
    #[serde(default)]
    pub tools: Option<Vec<ChatTool>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    /// `none`, `minimal`, `low`, `medium` or `high`: reasoning on (at that effort) or off.
    #[serde(default)]
    pub reasoning_effort: Option<String>,
    /// Extra template variables, as vLLM and llama-server take them; `enable_thinking`
    /// is honoured.
    #[serde(default)]
    pub chat_template_kwargs: Option<serde_json::Map<String, Value>>,
}

/// Settings both OpenAI endpoints take.
#[derive(Debug, Clone, Deserialize)]
pub struct CommonParams {
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Any 64-bit integer, negative ones included, as OpenAI takes it.
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub logit_bias: Option<HashMap<String, f32>>,
}

impl CommonParams {
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether a streamed reply ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// One choice per request is what the engine makes.
    pub(super) fn check_n(&self) -> Result<(), OpenAiError> {
        match self.n.filter(|n| *n != 1) {
            Some(n) => Err(OpenAiError::invalid(
                Some("n"),
                format!("n: only 1 choice per request is supported, got {n}"),
            )),
            None => Ok(()),
        }
    }

    /// The ranges and combinations OpenAI checks on the settings both endpoints take.
    pub(super) fn check(&self) -> Result<(), OpenAiError> {
        self.check_n()?;
        for (name, value, min, max) in [
            ("temperature", self.temperature, 0.0, 2.0),
            ("top_p", self.top_p, 0.0, 1.0),
            ("presence_penalty", self.presence_penalty, -2.0, 2.0),
            ("frequency_penalty", self.frequency_penalty, -2.0, 2.0),
        ] {
            if let Some(v) = value {
                in_range(name, v, min, max)?;
            }
        }
        if let Some(Stop::Many(stops)) = &self.stop {
            if stops.len() > MAX_STOPS {
                return Err(OpenAiError::invalid(
                    Some("stop"),
                    format!(
                        "stop: at most {MAX_STOPS} sequences are allowed, got {}",
                        stops.len()
                    ),
                ));
            }
        }
        if self.stream_options.is_some() && !self.is_stream() {
            return Err(OpenAiError::invalid(
                Some("stream_options"),
                "stream_options: only allowed when stream is true",
            ));
        }
        Ok(())
    }

    /// The sampling settings, reporting `logprobs` alternatives when given (after
    /// [`CommonParams::check`]).
    /// The settings the request leaves out come from `defaults` (the server's).
    pub(super) fn sampling(
        &self,
        logprobs: Option<usize>,
        defaults: &SamplingDefaults,
    ) -> Result<SamplingParams, OpenAiError> {
        let asked = SamplingParams {
            top_p: self.top_p,
            // The engine's seed is 64 bits wide: a negative seed is a seed all the same.
            seed: self.seed.map(|s| s as u64),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            logit_bias: logit_bias(self.logit_bias.clone().unwrap_or_default())?,
            logprobs,
            ..SamplingParams::default()
        };
        let mut sampling = defaults.fill(asked, self.temperature);
        // top_p 1 keeps every token: no nucleus filter at all.
        sampling.top_p = sampling.top_p.filter(|p| *p != 1.0);
        Ok(sampling)
    }

    pub(super) fn stop_sequences(&self) -> Vec<String> {
        let mut stops = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        stops.retain(|s| !s.is_empty());
        stops
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<ChatContent>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Vec<ChatToolCall>>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// Reasoning an earlier reply carried (as this server sends it).
    #[serde(default)]
    pub reasoning_content: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ChatContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text {
        #[serde(default)]
        text: String,
    },
    ImageUrl {
        /// `{"url": ..., "detail": ...}`, or the URL alone as some clients send it.
        #[serde(default)]
        image_url: Value,
    },
    InputAudio {},
    File {},
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatToolCall {
    #[serde(default)]
    pub id: String,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// A JSON object, as a string.
    #[serde(default)]
    pub arguments: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatTool {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    pub function: Option<FunctionDef>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub json_schema: Option<JsonSchemaFormat>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct JsonSchemaFormat {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub schema: Option<Value>,
}

/// Parse a body; a value of the wrong type is refused with its path as `param`.
pub fn parse_chat(bytes: &[u8]) -> Result<ChatRequest, OpenAiError> {
    parse_body(bytes)
}

/// A body of either endpoint: JSON, an object, then the request, every type error named
/// by its path (`messages[0].content`).
pub(super) fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, OpenAiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        OpenAiError::invalid(None, format!("the request body is not valid JSON: {e}"))
    })?;
    if !value.is_object() {
        return Err(OpenAiError::invalid(
            None,
            "the request body must be a JSON object",
        ));
    }
    // Fields of a `#[serde(flatten)]` struct lose their path, so the shared settings are
    // read on their own first: a type error there is named too.
    from_value::<CommonParams>(&value)?;
    from_value(&value)
}

fn from_value<'a, T: Deserialize<'a>>(value: &'a Value) -> Result<T, OpenAiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let param = fields::bracketed(e.path());
        let message = e.into_inner().to_string();
        let message = fields::shape_message(&message).map_or(message, str::to_owned);
        if param.is_empty() {
            OpenAiError::invalid(None, message)
        } else {
            OpenAiError::invalid(Some(&param), format!("{param}: {message}"))
        }
    })
}

/// `name` within `[min, max]`.
pub(super) fn in_range(name: &str, value: f32, min: f32, max: f32) -> Result<(), OpenAiError> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(OpenAiError::invalid(
        Some(name),
        format!("{name}: must be between {min} and {max}, got {value}"),
    ))
}

/// `max_tokens` or `max_completion_tokens`, when given, at least 1 as OpenAI requires.
pub(super) fn at_least_one_token(name: &str, value: Option<u32>) -> Result<(), OpenAiError> {
    if value == Some(0) {
        return Err(OpenAiError::invalid(
            Some(name),
            format!("{name}: must be at least 1"),
        ));
    }
    Ok(())
}

impl ChatRequest {
    pub fn is_stream(&self) -> bool {
        self.common.is_stream()
    }

    pub fn include_usage(&self) -> bool {
        self.common.include_usage()
    }

    pub fn wants_logprobs(&self) -> bool {
        self.logprobs == Some(true)
    }

    /// The neutral request. Settings the engine can't honour are refused by name
    /// rather than ignored.
    pub fn into_generate(self) -> Result<GenerateRequest, OpenAiError> {
        self.into_generate_with(&SamplingDefaults::default())
    }

    /// As [`ChatRequest::into_generate`], the sampling settings the request leaves out
    /// taken from `defaults` (the server's).
    pub fn into_generate_with(
        self,
        defaults: &SamplingDefaults,
    ) -> Result<GenerateRequest, OpenAiError> {
        let model = self
            .model
            .ok_or_else(|| OpenAiError::invalid(Some("model"), "model: Field required"))?;
        let messages = self
            .messages
            .ok_or_else(|| OpenAiError::invalid(Some("messages"), "messages: Field required"))?;
        if messages.is_empty() {
            return Err(OpenAiError::invalid(
                Some("messages"),
                "messages: at least one message is required",
            ));
        }
        self.common.check()?;
        at_least_one_token("max_tokens", self.max_tokens)?;
        at_least_one_token("max_completion_tokens", self.max_completion_tokens)?;
        if let Some(n) = self.top_logprobs {
            if n > MAX_TOP_LOGPROBS {
                return Err(OpenAiError::invalid(
                    Some("top_logprobs"),
                    format!("top_logprobs: must be between 0 and {MAX_TOP_LOGPROBS}"),
                ));
            }
            if self.logprobs != Some(true) {
                return Err(OpenAiError::invalid(
                    Some("top_logprobs"),
                    "top_logprobs: logprobs must be true when top_logprobs is set",
                ));
            }
        }
        let max_tokens = self
            .max_completion_tokens
            .or(self.max_tokens)
            .unwrap_or(NO_LIMIT);
        let sampling = self.common.sampling(
            (self.logprobs == Some(true)).then(|| self.top_logprobs.unwrap_or(0) as usize),
            defaults,
        )?;
        let tools = self
            .tools
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, t)| tool_spec(i, t))
            .collect::<Result<Vec<_>, _>>()?;
        let mut images = Vec::new();
        let messages = conversation(messages, &mut images)?;
        let mut request = GenerateRequest::new(model, messages, max_tokens);
        request.images = images;
        request.sampling = sampling;
        request.tools = tools;
        request.tool_choice = tool_choice(self.tool_choice)?;
        request.parallel_tool_calls = self.parallel_tool_calls.unwrap_or(true);
        request.stop_sequences = self.common.stop_sequences();
        request.output_schema = output_schema(self.response_format)?;
        if let Some(effort) = self.reasoning_effort.as_deref() {
            request.thinking = effort != "none";
            request.effort = Effort::from_word(effort);
            if request.thinking && request.effort.is_none() {
                return Err(OpenAiError::invalid(
                    Some("reasoning_effort"),
                    format!("reasoning_effort: unknown value {effort:?}; expected none, minimal, low, medium or high"),
                ));
            }
        }
        let kwargs = self.chat_template_kwargs.unwrap_or_default();
        if let Some(on) = kwargs.get("enable_thinking").and_then(Value::as_bool) {
            request.thinking = on;
        }
        Ok(request)
    }
}

/// `{"token id": bias}`, the bias between -100 and 100.
pub(super) fn logit_bias(bias: HashMap<String, f32>) -> Result<Vec<(i32, f32)>, OpenAiError> {
    let mut out: Vec<(i32, f32)> = bias
        .into_iter()
        .map(|(token, value)| {
            let id = token.trim().parse::<i32>().ok().filter(|t| *t >= 0);
            match id {
                Some(id) if (-100.0..=100.0).contains(&value) => Ok((id, value)),
                Some(_) => Err(OpenAiError::invalid(
                    Some("logit_bias"),
                    format!("logit_bias.{token}: must be between -100 and 100"),
                )),
                None => Err(OpenAiError::invalid(
                    Some("logit_bias"),
                    format!("logit_bias: {token:?} is not a token id"),
                )),
            }
        })
        .collect::<Result<_, _>>()?;
    out.sort_by_key(|(t, _)| *t);
    Ok(out)
}

fn tool_spec(index: usize, tool: ChatTool) -> Result<ToolSpec, OpenAiError> {
    let at = |field: &str| format!("tools[{index}].{field}");
    if tool.kind.as_deref().is_some_and(|k| k != "function") {
        let param = at("type");
        return Err(OpenAiError::invalid(
            Some(&param),
            format!("{param}: only function tools are supported"),
        ));
    }
    let f = tool.function.ok_or_else(|| {
        let param = at("function");
        OpenAiError::invalid(Some(&param), format!("{param}: Field required"))
    })?;
    if !fields::is_tool_name(&f.name, MAX_FUNCTION_NAME) {
        let param = at("function.name");
        return Err(OpenAiError::invalid(
            Some(&param),
            format!("{param}: must match ^[a-zA-Z0-9_-]{{1,{MAX_FUNCTION_NAME}}}$"),
        ));
    }
    if f.parameters.as_ref().is_some_and(|p| !p.is_object()) {
        let param = at("function.parameters");
        return Err(OpenAiError::invalid(
            Some(&param),
            format!("{param}: must be a JSON Schema object"),
        ));
    }
    Ok(ToolSpec {
        name: f.name,
        description: f.description,
        parameters: f
            .parameters
            .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
    })
}

/// `"none" | "auto" | "required" | {"type": "function", "function": {"name": ...}}`.
fn tool_choice(choice: Option<Value>) -> Result<ToolChoice, OpenAiError> {
    parse_tool_choice(
        choice.as_ref(),
        "/function/name",
        r#"{"type": "function", "function": {"name": ...}}"#,
    )
}

/// OpenAI's `tool_choice`: a mode, or an object of type `function` whose name stands at
/// `name_at` (Chat Completions nests it, Responses does not; `shape` says so in errors).
pub(super) fn parse_tool_choice(
    choice: Option<&Value>,
    name_at: &str,
    shape: &str,
) -> Result<ToolChoice, OpenAiError> {
    let bad = || {
        OpenAiError::invalid(
            Some("tool_choice"),
            format!(r#"tool_choice: expected "none", "auto", "required" or {shape}"#),
        )
    };
    match choice {
        None => Ok(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            _ => Err(bad()),
        },
        Some(v) if v.get("type").and_then(Value::as_str) == Some("function") => v
            .pointer(name_at)
            .and_then(Value::as_str)
            .map(|n| ToolChoice::Named(n.to_owned()))
            .ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

/// The schema a JSON reply must follow: any object for `json_object`.
fn output_schema(format: Option<ResponseFormat>) -> Result<Option<Value>, OpenAiError> {
    let Some(format) = format else {
        return Ok(None);
    };
    match format.kind.as_str() {
        "text" => Ok(None),
        "json_object" => Ok(Some(serde_json::json!({"type": "object"}))),
        "json_schema" => format
            .json_schema
            .and_then(|s| s.schema)
            .map(Some)
            .ok_or_else(|| {
                OpenAiError::invalid(
                    Some("response_format"),
                    "response_format.json_schema.schema: Field required",
                )
            }),
        other => Err(OpenAiError::invalid(
            Some("response_format"),
            format!(
                "response_format.type: expected text, json_object or json_schema; got {other:?}"
            ),
        )),
    }
}

/// The messages as one neutral conversation; the images in them are gathered in `images`.
fn conversation(
    messages: Vec<ChatMessage>,
    images: &mut Vec<Image>,
) -> Result<Vec<Message>, OpenAiError> {
    // Tool results name their call by id; templates often want the tool's name too.
    let mut tool_names: HashMap<String, String> = HashMap::new();
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" | "function" => Role::Tool,
            other => {
                let param = format!("messages[{i}].role");
                return Err(OpenAiError::invalid(
                    Some(&param),
                    format!("{param}: expected system, developer, user, assistant or tool; got {other:?}"),
                ));
            }
        };
        if role == Role::Tool && m.role == "tool" && m.tool_call_id.is_none() {
            let param = format!("messages[{i}].tool_call_id");
            return Err(OpenAiError::invalid(
                Some(&param),
                format!("{param}: Field required for messages with role tool"),
            ));
        }
        let mut message = Message::text(role, content_text(m.content, i, images)?);
        message.reasoning = m.reasoning_content.filter(|r| !r.is_empty());
        for (j, call) in m.tool_calls.unwrap_or_default().into_iter().enumerate() {
            let arguments = if call.function.arguments.trim().is_empty() {
                Value::Object(Default::default())
            } else {
                serde_json::from_str(&call.function.arguments).map_err(|e| {
                    let param = format!("messages[{i}].tool_calls[{j}].function.arguments");
                    OpenAiError::invalid(Some(&param), format!("{param}: not a JSON object ({e})"))
                })?
            };
            tool_names.insert(call.id.clone(), call.function.name.clone());
            message.tool_calls.push(ToolCall {
                id: call.id,
                name: call.function.name,
                arguments,
            });
        }
        if role == Role::Tool {
            message.name = m.name.or_else(|| {
                m.tool_call_id
                    .as_ref()
                    .and_then(|id| tool_names.get(id).cloned())
            });
            message.tool_call_id = m.tool_call_id;
        }
        out.push(message);
    }
    Ok(out)
}

/// A message's text: its text parts joined, each image as its placeholder.
fn content_text(
    content: Option<ChatContent>,
    index: usize,
    images: &mut Vec<Image>,
) -> Result<String, OpenAiError> {
    match content {
        None => Ok(String::new()),
        Some(ChatContent::Text(t)) => Ok(t),
        Some(ChatContent::Parts(parts)) => {
            let mut texts = Vec::new();
            for (j, part) in parts.into_iter().enumerate() {
                match part {
                    ContentPart::Text { text } => texts.push(text),
                    ContentPart::Other => {}
                    ContentPart::ImageUrl { image_url } => {
                        let param = format!("messages[{index}].content[{j}]");
                        let url = image_url
                            .as_str()
                            .or_else(|| image_url.get("url").and_then(Value::as_str));
                        let Some(url) = url else {
                            let param = format!("{param}.image_url.url");
                            return Err(OpenAiError::invalid(
                                Some(&param),
                                format!("{param}: Field required"),
                            ));
                        };
                        let image = crate::image::from_url(url, &param)
                            .map_err(|e| OpenAiError::invalid(Some(&param), e))?;
                        texts.push(image.placeholder());
                        images.push(image);
                    }
                    ContentPart::InputAudio {} | ContentPart::File {} => {
                        let param = format!("messages[{index}].content[{j}]");
                        return Err(OpenAiError::invalid(
                            Some(&param),
                            format!("{param}: this model accepts text only"),
                        ));
                    }
                }
            }
            Ok(texts.join("\n\n"))
        }
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
