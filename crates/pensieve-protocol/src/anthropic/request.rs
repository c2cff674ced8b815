//! `/v1/messages` and `/v1/messages/count_tokens` requests, parsed leniently (unknown
//! fields and block types are ignored, as Claude Code sends many) and translated into
//! the engine's [`GenerateRequest`].

use std::collections::HashMap;

use pensieve_engine::{
    Breakpoint, Effort, GenerateRequest, Image, Message, Role, SamplingDefaults, SamplingParams,
    ToolCall, ToolChoice, ToolSpec,
};
use serde::Deserialize;
use serde_json::Value;

use crate::fields;

/// Anthropic's longest client tool name (the pattern is `^[a-zA-Z0-9_-]{1,128}$`);
/// MCP tools (`mcp__server__tool`) often pass OpenAI's 64.
const MAX_TOOL_NAME: usize = 128;
/// Anthropic's smallest thinking budget.
const MIN_THINKING_BUDGET: u32 = 1024;

/// Claude Code's attribution line: metadata for Anthropic's billing, not for the model,
/// and different per request in some versions, so it would defeat prefix caching.
const BILLING_HEADER: &str = "x-anthropic-billing-header:";

/// A request the edge must refuse, with a message naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(pub String);

fn field_required(name: &str) -> RequestError {
    RequestError(format!("{name}: Field required"))
}

/// Anthropic refuses an empty conversation rather than inventing a prompt.
fn at_least_one(messages: &[InputMessage]) -> Result<(), RequestError> {
    if messages.is_empty() {
        return Err(RequestError(
            "messages: at least one message is required".into(),
        ));
    }
    Ok(())
}

/// `name` within `[min, max]`, worded as Anthropic words it.
fn in_range(name: &str, value: f64, min: f64, max: f64) -> Result<(), RequestError> {
    if value.is_nan() || value < min {
        return Err(RequestError(format!(
            "{name}: Input should be greater than or equal to {min}"
        )));
    }
    if value > max {
        return Err(RequestError(format!(
            "{name}: Input should be less than or equal to {max}"
        )));
    }
    Ok(())
}

/// The body of `POST /v1/messages`.
#[derive(Debug, Clone, Deserialize)]
pub struct MessagesRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<InputMessage>>,
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub system: Option<SystemPrompt>,
    #[serde(default)]
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub tools: Option<Vec<Tool>>,
    #[serde(default)]
    pub tool_choice: Option<ToolChoiceParam>,
    #[serde(default)]
    pub thinking: Option<ThinkingParam>,
    /// Claude Code's `{"effort": "low" | "medium" | "high" | "max"}`.
    #[serde(default)]
    pub output_config: Option<OutputConfig>,
    /// Only checked: `user_id` must be a string.
    #[serde(default)]
    pub metadata: Option<Metadata>,
    /// Automatic caching of the whole prompt.
    #[serde(default)]
    pub cache_control: Option<Value>,
}

/// The body of `POST /v1/messages/count_tokens`: a messages request without `max_tokens`.
#[derive(Debug, Clone, Deserialize)]
pub struct CountTokensRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<InputMessage>>,
    #[serde(default)]
    pub system: Option<SystemPrompt>,
    #[serde(default)]
    pub tools: Option<Vec<Tool>>,
    #[serde(default)]
    pub tool_choice: Option<ToolChoiceParam>,
    #[serde(default)]
    pub thinking: Option<ThinkingParam>,
    #[serde(default)]
    pub output_config: Option<OutputConfig>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub user_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OutputConfig {
    #[serde(default)]
    pub effort: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SystemPrompt {
    Text(String),
    Blocks(Vec<ContentBlock>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct InputMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Blocks(Vec<ContentBlock>),
}

/// A content block. Fields the server has no use for (`cache_control`, `citations`,
/// `signature`) are accepted and ignored; unknown block types become [`ContentBlock::Other`].
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    Text {
        #[serde(default)]
        text: String,
        #[serde(default)]
        cache_control: Option<Value>,
    },
    Image {
        #[serde(default)]
        source: Value,
    },
    Document {
        #[serde(default)]
        source: Value,
    },
    ToolUse {
        #[serde(default)]
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    ToolResult {
        #[serde(default)]
        tool_use_id: String,
        #[serde(default)]
        content: Option<Content>,
        #[serde(default)]
        is_error: Option<bool>,
        #[serde(default)]
        cache_control: Option<Value>,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    RedactedThinking {},
    /// A system note placed mid-conversation by some clients.
    MidConvSystem {
        #[serde(default)]
        text: String,
        #[serde(default)]
        content: Option<Box<Content>>,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Tool {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub input_schema: Option<Value>,
    #[serde(default)]
    pub cache_control: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ToolChoiceParam {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub disable_parallel_tool_use: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ThinkingParam {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub budget_tokens: Option<u32>,
}

/// Parse a `/v1/messages` body; errors name the offending field.
pub fn parse_messages(body: &[u8]) -> Result<MessagesRequest, RequestError> {
    parse(body)
}

/// Parse a `/v1/messages/count_tokens` body.
pub fn parse_count_tokens(body: &[u8]) -> Result<CountTokensRequest, RequestError> {
    parse(body)
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, RequestError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = fields::dotted(e.path());
        let inner = e.into_inner();
        let message = inner.to_string();
        let message = fields::shape_message(&message).map_or(message, str::to_owned);
        if inner.is_syntax() || inner.is_eof() {
            RequestError(format!("the request body is not valid JSON: {inner}"))
        } else if path.is_empty() {
            RequestError(message)
        } else {
            RequestError(format!("{path}: {message}"))
        }
    })
}

impl MessagesRequest {
    /// Check the required fields and translate into the engine's request.
    pub fn into_generate(self) -> Result<GenerateRequest, RequestError> {
        self.into_generate_with(&SamplingDefaults::default())
    }

    /// As [`MessagesRequest::into_generate`], the sampling settings the request leaves out
    /// taken from `defaults` (the server's).
    pub fn into_generate_with(
        self,
        defaults: &SamplingDefaults,
    ) -> Result<GenerateRequest, RequestError> {
        let cache_requested = self.asks_for_caching();
        let model = self.model.ok_or_else(|| field_required("model"))?;
        let messages = self.messages.ok_or_else(|| field_required("messages"))?;
        let max_tokens = self
            .max_tokens
            .ok_or_else(|| field_required("max_tokens"))?;
        at_least_one(&messages)?;
        in_range(
            "max_tokens",
            f64::from(max_tokens),
            1.0,
            f64::from(u32::MAX),
        )?;
        for (name, value) in [("temperature", self.temperature), ("top_p", self.top_p)] {
            if let Some(v) = value {
                in_range(name, f64::from(v), 0.0, 1.0)?;
            }
        }
        check_tools(self.tools.as_deref())?;
        let budget = check_thinking(self.thinking.as_ref())?;
        if budget.is_some_and(|b| b >= max_tokens) {
            return Err(RequestError(
                "max_tokens: must be greater than thinking.budget_tokens".into(),
            ));
        }
        let marked_tools = self
            .tools
            .iter()
            .flatten()
            .any(|t| t.cache_control.is_some());
        let mut conversation = conversation(self.system, messages)?;
        let breakpoints = &mut conversation.breakpoints;
        if marked_tools && !breakpoints.contains(&Breakpoint::Preamble) {
            breakpoints.push(Breakpoint::Preamble);
        }
        let mut request = GenerateRequest::new(model, conversation.messages, max_tokens);
        request.breakpoints = conversation.breakpoints;
        request.images = conversation.images;
        request.tools = tools(self.tools.unwrap_or_default());
        request.parallel_tool_calls = !self
            .tool_choice
            .as_ref()
            .and_then(|c| c.disable_parallel_tool_use)
            .unwrap_or(false);
        request.tool_choice = tool_choice(self.tool_choice)?;
        set_reasoning(
            &mut request,
            self.thinking.as_ref(),
            self.output_config.as_ref(),
        );
        request.cache_requested = cache_requested;
        request.stop_sequences = self.stop_sequences.unwrap_or_default();
        let asked = SamplingParams {
            top_p: self.top_p,
            top_k: self.top_k,
            ..SamplingParams::default()
        };
        request.sampling = defaults.fill(asked, self.temperature);
        Ok(request)
    }

    /// Whether the client marked anything with `cache_control` (then what the prefix
    /// cache newly stores is reported as `cache_creation_input_tokens`, as Anthropic does).
    pub fn asks_for_caching(&self) -> bool {
        let content =
            |c: &Content| matches!(c, Content::Blocks(blocks) if blocks.iter().any(is_marked));
        self.cache_control.is_some()
            || matches!(&self.system, Some(SystemPrompt::Blocks(b)) if b.iter().any(is_marked))
            || self
                .messages
                .iter()
                .flatten()
                .any(|m| m.content.as_ref().is_some_and(content))
            || self
                .tools
                .iter()
                .flatten()
                .any(|t| t.cache_control.is_some())
    }

    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }
}

impl CountTokensRequest {
    /// Translate into the engine's request (only its prompt is used).
    pub fn into_generate(self) -> Result<GenerateRequest, RequestError> {
        let model = self.model.ok_or_else(|| field_required("model"))?;
        let messages = self.messages.ok_or_else(|| field_required("messages"))?;
        at_least_one(&messages)?;
        check_tools(self.tools.as_deref())?;
        check_thinking(self.thinking.as_ref())?;
        let conversation = conversation(self.system, messages)?;
        let mut request = GenerateRequest::new(model, conversation.messages, 1);
        request.images = conversation.images;
        request.tools = tools(self.tools.unwrap_or_default());
        request.tool_choice = tool_choice(self.tool_choice)?;
        set_reasoning(
            &mut request,
            self.thinking.as_ref(),
            self.output_config.as_ref(),
        );
        Ok(request)
    }
}

/// Client tools as Anthropic checks them: a name matching its pattern, unique, and an
/// `input_schema` that is an object when given (a missing one stands for `{}`, R19).
/// Server tools (`web_search_*`, ...) are dropped later, so only their shape matters.
fn check_tools(tools: Option<&[Tool]>) -> Result<(), RequestError> {
    let mut seen = std::collections::HashSet::new();
    for (i, tool) in tools.unwrap_or_default().iter().enumerate() {
        let Some(name) = tool.name.as_deref() else {
            return Err(field_required(&format!("tools.{i}.name")));
        };
        if !is_client_tool(tool) {
            continue;
        }
        if !fields::is_tool_name(name, MAX_TOOL_NAME) {
            return Err(RequestError(format!(
                "tools.{i}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,{MAX_TOOL_NAME}}}$'"
            )));
        }
        if tool.input_schema.as_ref().is_some_and(|s| !s.is_object()) {
            return Err(RequestError(format!(
                "tools.{i}.input_schema: Input should be a valid dictionary"
            )));
        }
        if !seen.insert(name) {
            return Err(RequestError(format!(
                "tools: Tool names must be unique; {name:?} is given twice"
            )));
        }
    }
    Ok(())
}

fn is_client_tool(tool: &Tool) -> bool {
    tool.kind.as_deref().is_none_or(|k| k == "custom")
}

/// `thinking`'s type, and an enabled one's budget (required, at least 1,024), which is
/// returned for the check against `max_tokens`.
fn check_thinking(thinking: Option<&ThinkingParam>) -> Result<Option<u32>, RequestError> {
    let Some(thinking) = thinking else {
        return Ok(None);
    };
    match thinking.kind.as_str() {
        "enabled" => {
            let budget = thinking
                .budget_tokens
                .ok_or_else(|| field_required("thinking.budget_tokens"))?;
            in_range(
                "thinking.budget_tokens",
                f64::from(budget),
                f64::from(MIN_THINKING_BUDGET),
                f64::from(u32::MAX),
            )?;
            Ok(Some(budget))
        }
        "disabled" | "adaptive" => Ok(None),
        other => Err(RequestError(format!(
            "thinking.type: expected one of enabled, disabled, adaptive; got {other:?}"
        ))),
    }
}

/// `thinking` (enabled with a budget, adaptive, disabled) and `output_config.effort` as
/// the template switches: thinking on or off, and an effort level. An explicit effort
/// wins; else a budget gives one (Anthropic's smallest is 1,024 tokens).
fn set_reasoning(
    request: &mut GenerateRequest,
    thinking: Option<&ThinkingParam>,
    output: Option<&OutputConfig>,
) {
    let kind = thinking.map(|t| t.kind.as_str());
    request.thinking = matches!(kind, Some("enabled" | "adaptive"));
    request.show_thinking = request.thinking;
    let budget = thinking
        .filter(|t| t.kind == "enabled")
        .and_then(|t| t.budget_tokens)
        .map(|b| match b {
            0..4096 => Effort::Low,
            4096..16384 => Effort::Medium,
            _ => Effort::High,
        });
    let asked = output
        .and_then(|o| o.effort.as_deref())
        .and_then(Effort::from_word);
    request.effort = asked.or(budget);
}

/// Only client tools reach the model; Anthropic's server tools (`web_search_*`,
/// `bash_*`, ...) are the hosted API's business and are dropped.
fn tools(tools: Vec<Tool>) -> Vec<ToolSpec> {
    tools
        .into_iter()
        .filter(is_client_tool)
        .filter_map(|t| {
            Some(ToolSpec {
                name: t.name.filter(|n| !n.is_empty())?,
                description: t.description,
                parameters: t
                    .input_schema
                    .unwrap_or_else(|| Value::Object(Default::default())),
            })
        })
        .collect()
}

fn tool_choice(choice: Option<ToolChoiceParam>) -> Result<ToolChoice, RequestError> {
    let Some(choice) = choice else {
        return Ok(ToolChoice::Auto);
    };
    match choice.kind.as_str() {
        "auto" => Ok(ToolChoice::Auto),
        "any" => Ok(ToolChoice::Required),
        "none" => Ok(ToolChoice::None),
        "tool" => choice
            .name
            .map(ToolChoice::Named)
            .ok_or_else(|| field_required("tool_choice.name")),
        other => Err(RequestError(format!(
            "tool_choice.type: expected one of auto, any, tool, none; got {other:?}"
        ))),
    }
}

/// A request's system prompt and messages as one neutral conversation.
#[derive(Default)]
struct Conversation {
    messages: Vec<Message>,
    /// The cache breakpoints marked in it.
    breakpoints: Vec<Breakpoint>,
    /// The images it holds, each read as its placeholder in its message's text.
    images: Vec<Image>,
}

fn conversation(
    system: Option<SystemPrompt>,
    messages: Vec<InputMessage>,
) -> Result<Conversation, RequestError> {
    let mut conv = Conversation::default();
    let (out, breakpoints) = (&mut conv.messages, &mut conv.breakpoints);
    if let Some(SystemPrompt::Blocks(blocks)) = &system {
        if blocks.iter().any(is_marked) {
            breakpoints.push(Breakpoint::Preamble);
        }
    }
    if let Some(SystemPrompt::Blocks(blocks)) = &system {
        // Anthropic takes only text blocks in `system`.
        if let Some(i) = blocks
            .iter()
            .position(|b| !matches!(b, ContentBlock::Text { .. }))
        {
            return Err(RequestError(format!(
                "system.{i}.type: only text blocks are allowed in system"
            )));
        }
    }
    if let Some(system) = system {
        let text = match system {
            SystemPrompt::Text(t) => strip_billing_header(&t),
            SystemPrompt::Blocks(blocks) => join_texts(
                blocks
                    .iter()
                    .filter_map(|b| match b {
                        ContentBlock::Text { text, .. } => Some(strip_billing_header(text)),
                        _ => None,
                    })
                    .filter(|t| !t.is_empty()),
            ),
        };
        if !text.is_empty() {
            out.push(Message::text(Role::System, text));
        }
    }
    // Tool results name their tool only by id; templates often want the name too.
    let mut tool_names: HashMap<String, String> = HashMap::new();
    for (i, message) in messages.into_iter().enumerate() {
        let role = match message.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "system" => Role::System,
            other => {
                return Err(RequestError(format!(
                    "messages.{i}.role: expected user, assistant or system; got {other:?}"
                )))
            }
        };
        let blocks = match message.content {
            None => Vec::new(),
            Some(Content::Text(t)) => vec![ContentBlock::Text {
                text: t,
                cache_control: None,
            }],
            Some(Content::Blocks(b)) => b,
        };
        translate_turn(role, blocks, i, &mut tool_names, &mut conv)?;
    }
    Ok(conv)
}

/// Whether a block carries `cache_control`.
fn is_marked(block: &ContentBlock) -> bool {
    matches!(
        block,
        ContentBlock::Text {
            cache_control: Some(_),
            ..
        } | ContentBlock::ToolResult {
            cache_control: Some(_),
            ..
        }
    )
}

/// One wire message can become several neutral ones: tool results are their own turns
/// (placed before the user's text of the same turn) and mid-conversation system blocks too.
fn translate_turn(
    role: Role,
    blocks: Vec<ContentBlock>,
    index: usize,
    tool_names: &mut HashMap<String, String>,
    conv: &mut Conversation,
) -> Result<(), RequestError> {
    let Conversation {
        messages: out,
        breakpoints,
        images,
    } = conv;
    // A mark on a text block holds at the end of the turn's text, where the blocks are
    // joined.
    let text_marked = blocks
        .iter()
        .any(|b| matches!(b, ContentBlock::Text { .. }) && is_marked(b));
    let mut texts = Vec::new();
    let mut reasoning = Vec::new();
    let mut calls = Vec::new();
    let mut results = 0;
    for (j, block) in blocks.into_iter().enumerate() {
        let at = || format!("messages.{index}.content.{j}");
        match block {
            ContentBlock::Text { text, .. } => texts.push(text),
            ContentBlock::Thinking { thinking } => reasoning.push(thinking),
            ContentBlock::RedactedThinking {} | ContentBlock::Other => {}
            ContentBlock::Image { source } => {
                let image = read_image(&source, &at())?;
                texts.push(image.placeholder());
                images.push(image);
            }
            ContentBlock::Document { source } => texts.push(document_text(&source, &at(), images)?),
            ContentBlock::MidConvSystem { text, content } => {
                let body = match content.map(|c| *c) {
                    Some(c) => content_text(c, &at(), images)?,
                    None => text,
                };
                out.push(Message::text(Role::System, body));
            }
            ContentBlock::ToolUse { id, name, input } => {
                if role != Role::Assistant {
                    return Err(RequestError(format!(
                        "{}: tool_use blocks belong in assistant messages",
                        at()
                    )));
                }
                tool_names.insert(id.clone(), name.clone());
                let arguments = match input {
                    Value::Null => Value::Object(Default::default()),
                    v => v,
                };
                calls.push(ToolCall {
                    id,
                    name,
                    arguments,
                });
            }
            ContentBlock::ToolResult {
                tool_use_id,
                content,
                is_error,
                cache_control,
            } => {
                if cache_control.is_some() {
                    breakpoints.push(Breakpoint::After(out.len()));
                }
                let mut text = match content {
                    Some(c) => content_text(c, &format!("{}.content", at()), images)?,
                    None => String::new(),
                };
                if is_error == Some(true) {
                    text = format!("Error: {text}");
                }
                let mut m = Message::text(Role::Tool, text);
                m.name = tool_names.get(&tool_use_id).cloned();
                m.tool_call_id = Some(tool_use_id);
                out.push(m);
                results += 1;
            }
        }
    }
    if role == Role::User && texts.is_empty() && results > 0 {
        // A user turn that only carried tool results has no text turn of its own.
        return Ok(());
    }
    if text_marked {
        breakpoints.push(Breakpoint::After(out.len()));
    }
    let mut m = Message::text(role, join_texts(texts.into_iter()));
    m.tool_calls = calls;
    if !reasoning.is_empty() {
        m.reasoning = Some(reasoning.join("\n"));
    }
    out.push(m);
    Ok(())
}

fn join_texts(texts: impl Iterator<Item = String>) -> String {
    texts.collect::<Vec<_>>().join("\n\n")
}

/// `body` (a Messages request's JSON) without Claude Code's billing line in its system
/// prompt, for an upstream that takes the request as it is: its prefix cache would miss
/// from the first line on. A system block left empty is dropped.
pub fn strip_billing_line(body: &mut Value) {
    let Some(system) = body.get_mut("system") else {
        return;
    };
    match system {
        Value::String(text) if text.contains(BILLING_HEADER) => {
            *text = strip_billing_header(text);
        }
        Value::Array(blocks) => {
            for block in blocks.iter_mut() {
                if let Some(Value::String(text)) = block.get_mut("text") {
                    if text.contains(BILLING_HEADER) {
                        *text = strip_billing_header(text);
                    }
                }
            }
            blocks.retain(|b| b.get("text").and_then(Value::as_str) != Some(""));
        }
        _ => {}
    }
}

fn strip_billing_header(text: &str) -> String {
    if !text.contains(BILLING_HEADER) {
        return text.to_owned();
    }
    text.lines()
        .filter(|l| !l.trim_start().starts_with(BILLING_HEADER))
        .collect::<Vec<_>>()
        .join("\n")
        .trim_start_matches('\n')
        .to_owned()
}

/// The text of a tool result or nested content (at `at`): text blocks joined, images as
/// their placeholders (gathered in `images`); other blocks dropped.
fn content_text(
    content: Content,
    at: &str,
    images: &mut Vec<Image>,
) -> Result<String, RequestError> {
    let blocks = match content {
        Content::Text(t) => return Ok(t),
        Content::Blocks(blocks) => blocks,
    };
    let mut texts = Vec::new();
    for (k, block) in blocks.into_iter().enumerate() {
        match block {
            ContentBlock::Text { text, .. } => texts.push(text),
            ContentBlock::Image { source } => {
                let image = read_image(&source, &format!("{at}.{k}"))?;
                texts.push(image.placeholder());
                images.push(image);
            }
            _ => {}
        }
    }
    Ok(join_texts(texts.into_iter()))
}

/// An image block's `source`: inline base64 data, a URL (not fetched) or a file id.
fn read_image(source: &Value, at: &str) -> Result<Image, RequestError> {
    let field = |name: &str| source.get(name).and_then(Value::as_str);
    let required = |name: &str| field_required(&format!("{at}.source.{name}"));
    let read = match field("type") {
        Some("base64") => {
            let data = field("data").ok_or_else(|| required("data"))?;
            crate::image::from_base64(data, at)
        }
        Some("url") => {
            let url = field("url").ok_or_else(|| required("url"))?;
            crate::image::from_url(url, at)
        }
        Some("file") => {
            let id = field("file_id").ok_or_else(|| required("file_id"))?;
            Ok(crate::image::from_file_id(id, at))
        }
        other => Err(format!(
            "{at}.source.type: expected base64, url or file; got {}",
            other.map_or("nothing".to_owned(), |t| format!("{t:?}"))
        )),
    };
    read.map_err(RequestError)
}

/// Documents with a text source are read as text (a `content` source's images as their
/// placeholders, gathered in `images`); anything else (PDF) is refused.
fn document_text(
    source: &Value,
    at: &str,
    images: &mut Vec<Image>,
) -> Result<String, RequestError> {
    match source.get("type").and_then(Value::as_str) {
        Some("text") => Ok(source
            .get("data")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()),
        Some("content") => {
            let content: Option<Content> = source
                .get("content")
                .and_then(|c| serde_json::from_value(c.clone()).ok());
            match content {
                Some(c) => content_text(c, &format!("{at}.source.content"), images),
                None => Ok(String::new()),
            }
        }
        other => Err(RequestError(format!(
            "{at}: document source {} is not supported; send the document as text",
            other.unwrap_or("(missing)")
        ))),
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
