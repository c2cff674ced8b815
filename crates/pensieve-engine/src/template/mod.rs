//! Chat templates: turning a conversation into the prompt text a model was tuned on.
//!
//! This module owns rendering a model's own `tokenizer.chat_template` (Hugging Face
//! Jinja) with minijinja under HF's conventions, the built-in fallbacks for models
//! that ship none (ChatML, Gemma, Llama 3), and the reshaping every conversation
//! goes through first (what every session sends alike before what names its project or
//! day, merging same-role turns, folding mid-conversation system turns when a template
//! refuses them, continuing a final assistant prefill).
//!
//! HF renders with jinja2 (`trim_blocks`, `lstrip_blocks`, loop controls), its own
//! `tojson` (`json.dumps`, unsorted keys, no HTML escaping), `raise_exception` and
//! `strftime_now`, and passes `messages`, `tools` (None when there are none),
//! `add_generation_prompt` and the special tokens. We mirror that, and print values
//! the way Python does, so a prompt matches what `apply_chat_template` would give.
//! Rendering is deterministic apart from `strftime_now`'s date: `count_tokens` must
//! see exactly the prompt generation will.

mod breakpoints;
mod limits;
mod normalize;
mod operators;
mod python;
mod stable;
mod strftime;
#[cfg(test)]
mod tests;
mod tool_prompt;

use std::borrow::Cow;
use std::error::Error as StdError;
use std::sync::Arc;

use minijinja::machinery::WhitespaceConfig;
use minijinja::{context, AutoEscape, Environment, Error, ErrorKind, Value};
use serde::Serialize;

use crate::formats::ToolFormat;
use crate::request::{Breakpoint, Message, ToolSpec};

/// The name the template is stored under; it shows in error locations.
const TEMPLATE_NAME: &str = "chat_template";

// A template is code from a model file or a config, rendered on every request: these bound
// what one render may cost, so that a hostile or broken one fails that request with a
// clear error instead of hanging the engine or exhausting memory (see `limits`).

/// minijinja instructions one render may run, for a conversation of `items` messages and
/// tools: a base for the template's own work, and room for templates that look back over
/// the conversation for each message, which makes them quadratic in it (gpt-oss's, Gemma
/// 4's and DeepSeek V3.2's take about 5 n² for n messages) four times over. A template that
/// never ends stops within a few hundred milliseconds on a short conversation.
fn fuel_for(items: usize) -> u64 {
    const BASE: u64 = 1_000_000;
    const PER_ITEM_SQUARED: u64 = 20;
    const MAX: u64 = 1_000_000_000;
    let n = u64::try_from(items).unwrap_or(u64::MAX);
    PER_ITEM_SQUARED
        .saturating_mul(n.saturating_mul(n))
        .saturating_add(BASE)
        .min(MAX)
}
/// The longest text a render may produce, and the longest string a template may build
/// with the filters that multiply text, however long the conversation: far over any
/// model's context. Shorter conversations get less ([`limits::cap_for`]).
const MAX_TEXT: usize = 16 << 20;
/// How deep a value printed or passed to `tojson` may nest (serde_json's own limit on the
/// JSON a request carries).
const MAX_VALUE_DEPTH: usize = 128;
/// The widest indent `tojson` and `indent` take.
const MAX_INDENT: usize = 256;

/// Stands in for a prefill's text while rendering, so we can find where the
/// template puts the content of the final assistant turn.
const PREFILL_MARKER: &str = "<<pensieve-prefill-marker>>";

/// Why a template could not be compiled or rendered. The server answers with 400:
/// these come from the model's template refusing the conversation's shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("the chat template has a syntax error: {0}")]
    Syntax(String),
    /// The template failed, including its own `raise_exception(message)`, whose
    /// message is carried verbatim.
    #[error("the chat template failed to render the conversation: {0}")]
    Render(String),
    #[error(
        "the chat template does not render the final assistant message, so it cannot be continued as a prefill"
    )]
    PrefillDropped,
}

/// The special-token strings templates refer to as `bos_token` and `eos_token`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: String,
    pub eos: String,
}

/// The fallback templates for models without `tokenizer.chat_template`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinTemplate {
    ChatMl,
    Gemma,
    Llama3,
}

impl BuiltinTemplate {
    /// Picks a fallback from the GGUF `general.architecture` and the vocabulary's
    /// special tokens: Llama 3 shares the `llama` architecture with Llama 2 and
    /// SmolLM, so it is recognised by its `<|begin_of_text|>` / `<|eot_id|>` tokens.
    pub fn for_model(architecture: &str, tokens: &SpecialTokens) -> Self {
        let llama3_tokens = ["<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>"];
        if architecture.starts_with("gemma") {
            BuiltinTemplate::Gemma
        } else if llama3_tokens.contains(&tokens.bos.as_str())
            || llama3_tokens.contains(&tokens.eos.as_str())
        {
            BuiltinTemplate::Llama3
        } else {
            BuiltinTemplate::ChatMl
        }
    }

    fn source(self) -> &'static str {
        match self {
            BuiltinTemplate::ChatMl => include_str!("builtin/chatml.jinja"),
            BuiltinTemplate::Gemma => include_str!("builtin/gemma.jinja"),
            BuiltinTemplate::Llama3 => include_str!("builtin/llama3.jinja"),
        }
    }

    fn description(self) -> &'static str {
        match self {
            BuiltinTemplate::ChatMl => "built-in chatml",
            BuiltinTemplate::Gemma => "built-in gemma",
            BuiltinTemplate::Llama3 => "built-in llama3",
        }
    }
}

/// `value` as Python's `json.dumps(value, ensure_ascii=False)` prints it: what a model's
/// documented tool prompt holds ([`crate::formats`]' tool prompts).
pub(crate) fn python_json(value: &serde_json::Value) -> String {
    python::dumps(&Value::from_serialize(value)).unwrap_or_else(|_| value.to_string())
}

/// Per-request switches passed to the template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// Passed as `enable_thinking` (Qwen 3 style templates open or close a think block with
    /// it) and as `thinking` (DeepSeek V3.1's template reads only that).
    pub enable_thinking: bool,
    /// Passed as `reasoning_effort` only when set (gpt-oss's template writes it into its
    /// system message, and defaults to "medium" when it is not defined).
    pub reasoning_effort: Option<String>,
    /// The model's tool-call format, whose [`ToolFormat::history`] reshapes the
    /// conversation for its templates first.
    pub tool_format: Option<ToolFormat>,
}

/// A compiled chat template: built once per model, shared across requests.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Arc<Environment<'static>>,
    tokens: SpecialTokens,
    description: &'static str,
    /// Whether the template writes the `tools` it is given into the prompt. When it
    /// does not (SmolLM2's), we describe the tools in the system prompt ourselves:
    /// dropping them would hide them from the model and undercount the prompt.
    renders_tools: bool,
    /// Whether the template writes an assistant turn's `tool_calls`. When it does not
    /// (LFM2's first template), the calls are written into the turn's text in the
    /// model's format ([`ToolFormat::calls_as_text`]), where its model reads them.
    renders_calls: bool,
    /// Tests render with a part of the fuel, to show the margin real templates have.
    #[cfg(test)]
    fuel_divisor: u64,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("description", &self.description)
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles a model's own template; syntax errors are reported here, not per request.
    pub fn from_source(source: &str, tokens: SpecialTokens) -> Result<Self, TemplateError> {
        Self::compile(source, tokens, "model template")
    }

    /// One of the built-in fallbacks.
    pub fn builtin(kind: BuiltinTemplate, tokens: SpecialTokens) -> Self {
        match Self::compile(kind.source(), tokens, kind.description()) {
            Ok(template) => template,
            // The built-in sources are fixed and compiled by the unit tests.
            Err(err) => panic!("built-in template {kind:?} does not compile: {err}"),
        }
    }

    /// The model's template when it has one (a blank one counts as none), else the
    /// fallback for its architecture and vocabulary.
    pub fn for_model(
        source: Option<&str>,
        architecture: &str,
        tokens: SpecialTokens,
    ) -> Result<Self, TemplateError> {
        match source.filter(|s| !s.trim().is_empty()) {
            Some(source) => Self::from_source(source, tokens),
            None => {
                let kind = BuiltinTemplate::for_model(architecture, &tokens);
                Ok(Self::builtin(kind, tokens))
            }
        }
    }

    /// "model template" or "built-in <name>", for logs.
    pub fn describe(&self) -> &str {
        self.description
    }

    /// Whether the template writes the tools itself; when not, the engine describes them
    /// in the system prompt in the `<tool_call>` convention.
    pub fn renders_tools(&self) -> bool {
        self.renders_tools
    }

    /// Renders the conversation into prompt text, ending with the opening of the
    /// assistant's turn, or with the assistant's partial text when the last message
    /// is a prefill. Special tokens appear as text: tokenize with special-token
    /// parsing on and without adding BOS (templates that want BOS print it).
    pub fn render(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
        opts: &RenderOptions,
    ) -> Result<String, TemplateError> {
        self.render_inner(messages, tools, opts, None)
    }

    /// [`ChatTemplate::render`], and where the client's cache breakpoints fall in the
    /// prompt: `(byte offset, breakpoint)` for each one the template keeps in place (see
    /// [`breakpoints`]). The prompt is the same as without breakpoints.
    pub fn render_with_breakpoints(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
        opts: &RenderOptions,
        points: &[Breakpoint],
    ) -> Result<(String, Vec<(usize, Breakpoint)>), TemplateError> {
        let prompt = self.render(messages, tools, opts)?;
        if points.is_empty() {
            return Ok((prompt, Vec::new()));
        }
        let Some(marked) = breakpoints::place(messages, points) else {
            return Ok((prompt, Vec::new()));
        };
        let preamble = points
            .iter()
            .position(|p| *p == Breakpoint::Preamble)
            .map(breakpoints::mark);
        let placed = match self.render_inner(&marked, tools, opts, preamble.as_deref()) {
            Ok(rendered) => {
                let (clean, found) = breakpoints::strip(&rendered);
                if clean == prompt {
                    found.into_iter().map(|(i, at)| (at, points[i])).collect()
                } else {
                    tracing::debug!(
                        template = self.description,
                        "cache breakpoints dropped: the template changes text around them"
                    );
                    Vec::new()
                }
            }
            Err(_) => Vec::new(),
        };
        Ok((prompt, placed))
    }

    fn render_inner(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
        opts: &RenderOptions,
        preamble_mark: Option<&str>,
    ) -> Result<String, TemplateError> {
        let with_tools;
        let (messages, tools) = if tools.is_empty() || self.renders_tools {
            (messages, tools)
        } else {
            with_tools = tool_prompt::with_tool_system_prompt(messages, tools, opts.tool_format)?;
            (with_tools.as_slice(), &[][..])
        };
        let mut conversation = normalize::normalize_marked(messages, preamble_mark);
        let mut tools = Cow::Borrowed(tools);
        if let Some(format) = opts.tool_format {
            format.history(&mut conversation, &mut tools);
            if !self.renders_calls {
                normalize::calls_into_text(&mut conversation, |calls| format.calls_as_text(calls));
            }
        }
        let tools = &tools[..];
        let first_error = match self.render_conversation(&conversation, tools, opts) {
            Ok(prompt) => return Ok(prompt),
            Err(err) => err,
        };
        // A template that ran out of fuel would only run out again.
        if limits::out_of_fuel(&first_error) {
            return Err(first_error);
        }
        if let Some(as_text) = normalize::arguments_as_text(&conversation) {
            if let Ok(prompt) = self.render_conversation(&as_text, tools, opts) {
                tracing::debug!(
                    template = self.description,
                    error = %first_error,
                    "rendered the chat template with tool-call arguments as JSON text"
                );
                return Ok(prompt);
            }
        }
        // Many templates refuse a system turn after the first message; retry once
        // with those folded into user turns rather than failing the request.
        match normalize::fold_mid_system(&conversation) {
            Some(folded) => {
                tracing::debug!(
                    template = self.description,
                    error = %first_error,
                    "retrying the chat template with mid-conversation system messages folded into user turns"
                );
                self.render_conversation(&folded, tools, opts)
            }
            None => Err(first_error),
        }
    }

    fn render_conversation(
        &self,
        conversation: &[Message],
        tools: &[ToolSpec],
        opts: &RenderOptions,
    ) -> Result<String, TemplateError> {
        let Some(prefill) = normalize::prefill(conversation) else {
            return self.render_raw(conversation, None, tools, opts);
        };
        // Render the prefill turn as a finished turn holding a marker, then cut at
        // the marker: whatever the template puts before the content (role header,
        // reasoning) stays, whatever closes the turn goes.
        let marker = unique_marker(conversation);
        let rendered = self.render_raw(conversation, Some(&marker), tools, opts)?;
        let cut = rendered
            .find(&marker)
            .ok_or(TemplateError::PrefillDropped)?;
        let mut prompt = String::with_capacity(cut + prefill.len());
        prompt.push_str(&rendered[..cut]);
        prompt.push_str(prefill);
        Ok(prompt)
    }

    /// One template render. With a `prefill_marker`, the marker replaces the final
    /// message's content and no generation prompt is added: that turn is continued.
    fn render_raw(
        &self,
        conversation: &[Message],
        prefill_marker: Option<&str>,
        tools: &[ToolSpec],
        opts: &RenderOptions,
    ) -> Result<String, TemplateError> {
        let items = conversation.len() + tools.len();
        let cap = limits::cap_for(text_bytes(conversation, tools));
        let last = conversation.len().saturating_sub(1);
        let messages: Vec<TemplateMessage<'_>> = conversation
            .iter()
            .enumerate()
            .map(|(i, message)| {
                let content = if i == last { prefill_marker } else { None };
                TemplateMessage::new(message, content)
            })
            .collect();
        // HF passes `tools=None` without tools; `{% if tools is defined %}` is then true.
        let tools = if tools.is_empty() {
            Value::from(())
        } else {
            Value::from_serialize(tools.iter().map(TemplateTool::new).collect::<Vec<_>>())
        };
        let mut ctx = context! {
            messages => Value::from_serialize(&messages),
            tools => tools,
            add_generation_prompt => prefill_marker.is_none(),
            bos_token => self.tokens.bos.as_str(),
            eos_token => self.tokens.eos.as_str(),
            enable_thinking => opts.enable_thinking,
            thinking => opts.enable_thinking,
        };
        // Left undefined when unset, so `reasoning_effort is defined` and the template's
        // own default behave as with HF's `apply_chat_template` without the kwarg.
        if let Some(effort) = &opts.reasoning_effort {
            ctx = context! { reasoning_effort => effort.as_str(), ..ctx };
        }
        // The fuel is the environment's: a render gets its own copy (one compiled template,
        // the filters: cheap next to the render).
        let mut env = (*self.env).clone();
        let fuel = fuel_for(items);
        #[cfg(test)]
        let fuel = fuel / self.fuel_divisor;
        env.set_fuel(Some(fuel));
        let template = env
            .get_template(TEMPLATE_NAME)
            .map_err(|err| TemplateError::Render(err.to_string()))?;
        let _limits = limits::RenderLimits::enter(cap);
        limits::render_capped(&template, ctx).map_err(render_error)
    }

    fn compile(
        source: &str,
        tokens: SpecialTokens,
        description: &'static str,
    ) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        // jinja2 as HF configures it.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(python::unknown_method);
        env.set_formatter(python::format_output);
        env.add_filter("tojson", python::tojson);
        env.add_filter("string", python::string_filter);
        env.add_test("iterable", python::is_iterable);
        env.add_test("sequence", python::is_sequence);
        env.add_test("number", python::is_number);
        // minijinja's own, with the size of what they build bounded.
        env.add_filter("indent", limits::indent);
        env.add_filter("replace", limits::replace);
        env.add_filter("join", limits::join);
        // jinja2 built-ins that minijinja keeps in its contrib crate.
        env.add_filter("truncate", minijinja_contrib::filters::truncate);
        env.add_filter("striptags", minijinja_contrib::filters::striptags);
        env.add_filter("filesizeformat", minijinja_contrib::filters::filesizeformat);
        env.add_function("cycler", minijinja_contrib::globals::cycler);
        env.add_function("joiner", minijinja_contrib::globals::joiner);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime::strftime_now);
        env.add_function(operators::BOUNDED, operators::bounded);
        env.add_function(operators::MULTIPLY, operators::multiply);
        let whitespace = WhitespaceConfig {
            keep_trailing_newline: false,
            lstrip_blocks: true,
            trim_blocks: true,
        };
        let source = operators::bound_operators(&strip_generation_tags(source), whitespace);
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|err| TemplateError::Syntax(err.to_string()))?;
        let mut template = ChatTemplate {
            env: Arc::new(env),
            tokens,
            description,
            renders_tools: true,
            renders_calls: true,
            #[cfg(test)]
            fuel_divisor: 1,
        };
        // A template that runs out of fuel on the probes' two-turn conversations would on
        // every request: refused here, where the model is loaded.
        template.renders_tools = template.probe_renders_tools()?;
        template.renders_calls = template.probe_renders_calls()?;
        Ok(template)
    }

    /// Makes `strftime_now` read `now` instead of the clock, so tests of templates that
    /// print today's date (gpt-oss) have fixed expected prompts.
    #[cfg(test)]
    fn with_fixed_now(mut self, now: chrono::NaiveDateTime) -> Self {
        let env = Arc::get_mut(&mut self.env).expect("the template is not shared yet");
        env.add_function("strftime_now", move |format: &str| {
            strftime::format_time(&now.and_utc(), format)
        });
        self
    }

    /// Render a call and its result and look for the call's name. A template that
    /// refuses the probe is left as it is.
    fn probe_renders_calls(&self) -> Result<bool, TemplateError> {
        let name = "pensieve_probe_call_7f3a";
        let call = Message {
            tool_calls: vec![crate::request::ToolCall {
                id: "call_probe".to_owned(),
                name: name.to_owned(),
                arguments: serde_json::json!({}),
            }],
            ..Message::text(crate::request::Role::Assistant, "")
        };
        let result = Message {
            tool_call_id: Some("call_probe".to_owned()),
            ..Message::text(crate::request::Role::Tool, "ok")
        };
        let messages = [
            Message::text(crate::request::Role::User, "hi"),
            call,
            result,
        ];
        match self.render_raw(&messages, None, &[], &RenderOptions::default()) {
            Ok(prompt) => Ok(prompt.contains(name)),
            Err(err) if limits::out_of_fuel(&err) => Err(err),
            Err(_) => Ok(true),
        }
    }

    /// Render a one-message conversation with a probe tool and look for its name.
    fn probe_renders_tools(&self) -> Result<bool, TemplateError> {
        let name = "pensieve_probe_tool_7f3a";
        let tool = ToolSpec {
            name: name.to_owned(),
            description: Some("probe".to_owned()),
            parameters: serde_json::json!({"type": "object", "properties": {}}),
        };
        let messages = [Message::text(crate::request::Role::User, "hi")];
        match self.render_raw(&messages, None, &[tool], &RenderOptions::default()) {
            Ok(prompt) => Ok(prompt.contains(name)),
            Err(err) if limits::out_of_fuel(&err) => Err(err),
            Err(_) => Ok(false),
        }
    }
}

/// Marks errors that a template raised on purpose, so their message is reported as is.
#[derive(Debug)]
struct RaisedByTemplate;

impl std::fmt::Display for RaisedByTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("raised by the chat template")
    }
}

impl StdError for RaisedByTemplate {}

/// `raise_exception(message)`: templates call it to refuse a conversation.
fn raise_exception(message: Value) -> Result<Value, Error> {
    let message = match message.as_str() {
        Some(text) => text.to_owned(),
        None => message.to_string(),
    };
    Err(Error::new(ErrorKind::InvalidOperation, message).with_source(RaisedByTemplate))
}

fn render_error(err: Error) -> TemplateError {
    if let Some(limit) = limits::describe(&err) {
        return TemplateError::Render(limit);
    }
    // minijinja may wrap the error raised inside a macro or include; look down the chain.
    let mut current: Option<&(dyn StdError + 'static)> = Some(&err);
    while let Some(cause) = current {
        if let Some(raised) = cause.downcast_ref::<Error>() {
            if raised.source().is_some_and(|s| s.is::<RaisedByTemplate>()) {
                return TemplateError::Render(raised.detail().unwrap_or_default().to_owned());
            }
        }
        current = cause.source();
    }
    TemplateError::Render(err.to_string())
}

/// The text a conversation brings to a render, which its text limit scales with: messages,
/// reasoning, tool calls and tool definitions, their JSON as printed compactly.
fn text_bytes(conversation: &[Message], tools: &[ToolSpec]) -> usize {
    let json = |value: &serde_json::Value| serde_json::to_vec(value).map_or(0, |v| v.len());
    let messages: usize = conversation
        .iter()
        .map(|m| {
            let calls: usize = m
                .tool_calls
                .iter()
                .map(|c| c.id.len() + c.name.len() + json(&c.arguments))
                .sum();
            m.content.len()
                + m.reasoning.as_ref().map_or(0, String::len)
                + m.name.as_ref().map_or(0, String::len)
                + m.tool_call_id.as_ref().map_or(0, String::len)
                + calls
        })
        .sum();
    let tools: usize = tools
        .iter()
        .map(|t| t.name.len() + t.description.as_ref().map_or(0, String::len) + json(&t.parameters))
        .sum();
    messages + tools
}

/// A marker that appears in no message, so finding it in the output is unambiguous.
fn unique_marker(conversation: &[Message]) -> String {
    let mut marker = PREFILL_MARKER.to_owned();
    while conversation.iter().any(|m| m.content.contains(&marker)) {
        marker.push('#');
    }
    marker
}

/// HF's jinja2 has a `{% generation %}...{% endgeneration %}` block that marks
/// assistant text for training masks and renders its body unchanged. minijinja has
/// no such tag, so it becomes an always-true `if` with the same whitespace control.
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        match rewrite_generation_tag(tag) {
            Some((replacement, consumed)) => {
                out.push_str(&replacement);
                rest = &tag[consumed..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// For a `tag` starting with `{%`: the rewrite and its length in bytes when it is
/// `{% generation %}` or `{% endgeneration %}` (with any `-`/`+` modifiers).
fn rewrite_generation_tag(tag: &str) -> Option<(String, usize)> {
    // After the opening `{%`: in `{%}` the `%` would close what it opens.
    let end = tag[2..].find("%}")? + 2;
    let inner = &tag[2..end];
    let (left, inner) = split_modifier_start(inner);
    let (inner, right) = split_modifier_end(inner);
    let body = match inner.trim() {
        "generation" => "if true",
        "endgeneration" => "endif",
        _ => return None,
    };
    Some((format!("{{%{left} {body} {right}%}}"), end + 2))
}

fn split_modifier_start(inner: &str) -> (&str, &str) {
    match inner.chars().next() {
        Some(c @ ('-' | '+')) => (&inner[..c.len_utf8()], &inner[c.len_utf8()..]),
        _ => ("", inner),
    }
}

fn split_modifier_end(inner: &str) -> (&str, &str) {
    match inner.chars().last() {
        Some(c @ ('-' | '+')) => {
            let at = inner.len() - c.len_utf8();
            (&inner[..at], &inner[at..])
        }
        _ => (inner, ""),
    }
}

/// A message as HF templates expect it: `content` always a string, tool calls in
/// OpenAI shape with `arguments` as an object, reasoning under both names clients send
/// it as: `reasoning_content` (Qwen, GLM, MiniMax, Nemotron, Gemma 4 templates) and
/// `thinking` (gpt-oss's). Absent when empty: templates test `"thinking" in message`.
#[derive(Serialize)]
struct TemplateMessage<'a> {
    role: &'static str,
    content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<TemplateToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

impl<'a> TemplateMessage<'a> {
    fn new(message: &'a Message, content: Option<&'a str>) -> Self {
        let reasoning = message.reasoning.as_deref().filter(|r| !r.is_empty());
        TemplateMessage {
            role: message.role.as_str(),
            content: content.unwrap_or(&message.content),
            reasoning_content: reasoning,
            thinking: reasoning,
            tool_calls: message
                .tool_calls
                .iter()
                .map(|call| TemplateToolCall {
                    id: &call.id,
                    kind: "function",
                    function: TemplateFunctionCall {
                        name: &call.name,
                        arguments: &call.arguments,
                    },
                })
                .collect(),
            tool_call_id: message.tool_call_id.as_deref(),
            name: message.name.as_deref(),
        }
    }
}

#[derive(Serialize)]
struct TemplateToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: TemplateFunctionCall<'a>,
}

#[derive(Serialize)]
struct TemplateFunctionCall<'a> {
    name: &'a str,
    arguments: &'a serde_json::Value,
}

/// A tool in the OpenAI function shape HF templates iterate over.
#[derive(Serialize)]
pub(super) struct TemplateTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: TemplateFunction<'a>,
}

impl<'a> TemplateTool<'a> {
    pub(super) fn new(tool: &'a ToolSpec) -> Self {
        TemplateTool {
            kind: "function",
            function: TemplateFunction {
                name: &tool.name,
                description: tool.description.as_deref(),
                parameters: &tool.parameters,
            },
        }
    }
}

#[derive(Serialize)]
struct TemplateFunction<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    parameters: &'a serde_json::Value,
}
