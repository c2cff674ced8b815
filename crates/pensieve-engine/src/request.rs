//! The neutral request: what every API edge translates its wire request into.
//!
//! Nothing here knows about Anthropic or OpenAI field names. An edge builds a
//! [`GenerateRequest`]; the engine renders it through the model's chat template,
//! tokenizes it and validates it into a [`crate::ValidRequest`].

use std::sync::Arc;

use serde_json::Value;

use crate::model::TokenId;

/// Who speaks a message, in the chat-template sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    /// The result of a tool call, fed back to the model.
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// A tool call the assistant made earlier in the conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON object.
    pub arguments: Value,
}

/// One turn of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    /// The text of the turn; several text blocks are joined with blank lines by the edge.
    pub content: String,
    /// Reasoning the assistant produced before its answer (kept for templates that render it).
    pub reasoning: Option<String>,
    /// Tool calls made by an assistant turn.
    pub tool_calls: Vec<ToolCall>,
    /// For [`Role::Tool`]: the id of the call this result answers.
    pub tool_call_id: Option<String>,
    /// For [`Role::Tool`]: the name of the tool that produced the result, where known.
    pub name: Option<String>,
}

impl Message {
    pub fn text(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            reasoning: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }
}

/// A tool the model may call, as a JSON-schema function definition.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Value,
}

/// A place in the prompt the client asked the prefix cache to keep (Anthropic's
/// `cache_control`): a request that starts with the same text up to there reads it from
/// the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breakpoint {
    /// After the system prompt and the tools, what every conversation of the client
    /// starts with (Anthropic caches tools, then system: a mark on either covers both).
    /// Where the conversation has parts that name the project or the day, they come
    /// after it (see the README's "How the prompt is built").
    Preamble,
    /// After the text of this message (an index into `messages`).
    After(usize),
}

/// How the model may use the tools it is given.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum ToolChoice {
    #[default]
    Auto,
    /// Must call some tool.
    Required,
    /// Must call this tool.
    Named(String),
    /// Must not call tools.
    None,
}

/// Sampling settings. `temperature == 0` means greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    /// Subtracted from the logit of every token already generated (OpenAI's meaning).
    pub presence_penalty: f32,
    /// Subtracted once per earlier occurrence of the token in the output.
    pub frequency_penalty: f32,
    /// Added to the logits of these tokens.
    pub logit_bias: Vec<(TokenId, f32)>,
    /// Report each sampled token's log-probability, with this many alternatives.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: None,
            top_k: None,
            min_p: None,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            logprobs: None,
        }
    }
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == Some(1)
    }

    /// Whether the logits are changed before sampling (penalties, biases).
    pub fn adjusts_logits(&self) -> bool {
        self.presence_penalty != 0.0 || self.frequency_penalty != 0.0 || !self.logit_bias.is_empty()
    }
}

/// The sampling a request gets for each setting it leaves out: the server's `--temp`,
/// `--top-p`, `--top-k`, `--min-p` and `--seed` (as llama-server's), else the APIs' own
/// defaults (temperature 1, the rest off). Claude Code sends no temperature, so these are
/// how a model gets the sampling its makers recommend.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SamplingDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
}

impl SamplingDefaults {
    /// The settings a client asked for (`asked`, already validated), each one it left
    /// out taken from these defaults.
    pub fn fill(&self, asked: SamplingParams, asked_temperature: Option<f32>) -> SamplingParams {
        SamplingParams {
            temperature: asked_temperature.or(self.temperature).unwrap_or(1.0),
            top_p: asked.top_p.or(self.top_p),
            top_k: asked.top_k.or(self.top_k),
            min_p: asked.min_p.or(self.min_p),
            seed: asked.seed.or(self.seed),
            ..asked
        }
    }
}

/// How hard the model should reason, where its template has a switch for it (gpt-oss's
/// `reasoning_effort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effort {
    Low,
    Medium,
    High,
}

impl Effort {
    /// The word templates take.
    pub fn as_str(self) -> &'static str {
        match self {
            Effort::Low => "low",
            Effort::Medium => "medium",
            Effort::High => "high",
        }
    }

    /// An API's effort word: OpenAI's `minimal` is low, Anthropic's `max` (and `xhigh`)
    /// high. None for words that name no level (`none` switches reasoning off instead).
    pub fn from_word(word: &str) -> Option<Effort> {
        match word {
            "minimal" | "low" => Some(Effort::Low),
            "medium" => Some(Effort::Medium),
            "high" | "xhigh" | "max" => Some(Effort::High),
            _ => None,
        }
    }
}

/// A chat request in the engine's own terms.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// The model name the client asked for; echoed back, never used to refuse.
    pub model: String,
    /// The conversation, system turns included, in order.
    pub messages: Vec<Message>,
    pub tools: Vec<ToolSpec>,
    pub tool_choice: ToolChoice,
    /// Whether the model may make several tool calls in one turn.
    pub parallel_tool_calls: bool,
    pub sampling: SamplingParams,
    /// The most tokens to generate; clamped to what the context has left.
    pub max_tokens: u32,
    pub stop_sequences: Vec<String>,
    /// Whether the client asked for extended thinking (passed to templates as
    /// `enable_thinking`).
    pub thinking: bool,
    /// How hard to reason (passed to templates as `reasoning_effort`), when asked.
    pub effort: Option<Effort>,
    /// Whether reasoning the model writes reaches the client. Anthropic's API shows
    /// thinking blocks only when thinking was enabled; a model that reasons anyway
    /// (MiniMax always does) has its reasoning dropped otherwise.
    pub show_thinking: bool,
    /// Whether the client marked cache breakpoints: then the prompt tokens this request
    /// stores in the prefix cache are reported as cache creation.
    pub cache_requested: bool,
    /// The cache breakpoints the client marked, in no particular order.
    pub breakpoints: Vec<Breakpoint>,
    /// Structured output: the reply is one JSON value of this schema.
    pub output_schema: Option<Value>,
    /// A prompt given as it is (text completion): no chat template, and the output is
    /// plain text. `messages` is ignored.
    pub raw_prompt: Option<RawPrompt>,
    /// The images the client sent, in order. A text-only model reads each one's
    /// [`Image::placeholder`] in its message where the image was.
    pub images: Vec<Image>,
}

/// An image in a request, as the API translation read it (its header only: no pixels
/// are decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Where the request had it (`messages.2.content.0`), for errors and logs.
    pub at: String,
    /// What it is: its format and size (`PNG 1280×720`), or its URL when it was not sent
    /// inline.
    pub summary: String,
    /// Its bytes as sent (PNG, JPEG, ...), when sent inline: a model with vision sees
    /// them.
    pub data: Option<Arc<[u8]>>,
    /// Its http(s) address, when given by one (fetched only with `--allow-image-urls`).
    pub url: Option<String>,
}

impl Image {
    /// What a model without vision reads in its place.
    pub fn placeholder(&self) -> String {
        format!(
            "[image: {}, not shown: this model has no vision]",
            self.summary
        )
    }
}

/// A text-completion prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum RawPrompt {
    /// Tokenized as it is (special tokens in it are read as such).
    Text(String),
    Tokens(Vec<TokenId>),
}

impl GenerateRequest {
    /// A request with default settings, for tests and simple callers.
    pub fn new(model: impl Into<String>, messages: Vec<Message>, max_tokens: u32) -> Self {
        GenerateRequest {
            model: model.into(),
            messages,
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
            parallel_tool_calls: true,
            sampling: SamplingParams::default(),
            max_tokens,
            stop_sequences: Vec::new(),
            thinking: false,
            effort: None,
            show_thinking: true,
            cache_requested: false,
            breakpoints: Vec::new(),
            output_schema: None,
            raw_prompt: None,
            images: Vec::new(),
        }
    }
}
