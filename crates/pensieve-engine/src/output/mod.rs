//! What the model's output text becomes: plain text, reasoning and tool calls, recognised
//! in the model's own format as the text streams, so that no marker reaches the client
//! and a call's arguments stream as soon as they are generated.
//!
//! `call` reads JSON call objects (Hermes, Llama 3, Mistral's arrays), `mistral` the
//! `name[ARGS]{...}` form, `gemma` FunctionGemma's `call:name{key:<escape>value<escape>}`.

mod call;
mod gemma;
mod json;
mod mistral;

use std::collections::HashMap;

use crate::model::{TokenId, Tokenizer};
use call::Call;
use gemma::GemmaCall;

/// How a model writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// Hermes and Qwen: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.
    Hermes,
    /// Llama 3.x: `{"name": ..., "parameters": {...}}` alone, perhaps after
    /// `<|python_tag|>`, several separated by `;`.
    Llama3Json,
    /// Mistral since tokenizer v11 (Mistral Small 3.2, Devstral, Magistral):
    /// `[TOOL_CALLS]name[ARGS]{...}`, once per call.
    Mistral,
    /// Earlier Mistral (7B v0.3, Nemo, Small 3.1):
    /// `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`.
    MistralJson,
    /// FunctionGemma (Gemma 3 270M):
    /// `<start_function_call>call:name{key:<escape>text<escape>,n:1}<end_function_call>`.
    FunctionGemma,
}

impl ToolFormat {
    /// Names accepted by `--tool-parser` (vLLM's names for the same formats).
    pub const NAMES: &'static [&'static str] = &[
        "hermes",
        "qwen",
        "llama3_json",
        "mistral",
        "mistral_json",
        "functiongemma",
    ];

    /// The format a chat template teaches its model, when it is one we parse.
    pub fn detect(template: &str) -> Option<ToolFormat> {
        if template.contains(CALL_OPEN) {
            Some(ToolFormat::Hermes)
        } else if template.contains(MISTRAL_CALLS) {
            Some(if template.contains(MISTRAL_ARGS) {
                ToolFormat::Mistral
            } else {
                ToolFormat::MistralJson
            })
        } else if template.contains(GEMMA_CALL_OPEN) {
            Some(ToolFormat::FunctionGemma)
        } else if template.contains(PYTHON_TAG)
            || template.contains("{\"name\": function name, \"parameters\"")
        {
            Some(ToolFormat::Llama3Json)
        } else {
            None
        }
    }

    /// The name `--tool-parser` takes for it.
    pub fn name(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "hermes",
            ToolFormat::Llama3Json => "llama3_json",
            ToolFormat::Mistral => "mistral",
            ToolFormat::MistralJson => "mistral_json",
            ToolFormat::FunctionGemma => "functiongemma",
        }
    }

    pub fn from_name(name: &str) -> Option<ToolFormat> {
        match name {
            "hermes" | "qwen" => Some(ToolFormat::Hermes),
            "llama3_json" | "llama3" => Some(ToolFormat::Llama3Json),
            "mistral" => Some(ToolFormat::Mistral),
            "mistral_json" => Some(ToolFormat::MistralJson),
            "functiongemma" | "gemma" => Some(ToolFormat::FunctionGemma),
            _ => None,
        }
    }

    /// The marker that opens a call (or, for Llama 3, may).
    pub fn open(self) -> &'static str {
        match self {
            ToolFormat::Hermes => CALL_OPEN,
            ToolFormat::Llama3Json => PYTHON_TAG,
            ToolFormat::Mistral | ToolFormat::MistralJson => MISTRAL_CALLS,
            ToolFormat::FunctionGemma => GEMMA_CALL_OPEN,
        }
    }

    /// Whether the model may write a call object with no marker before it: Llama 3
    /// always does, small Hermes models often drop their tags.
    pub fn bare_calls(self) -> bool {
        matches!(self, ToolFormat::Hermes | ToolFormat::Llama3Json)
    }

    /// The key of a call object that holds its arguments.
    pub fn arguments_key(self) -> &'static str {
        match self {
            ToolFormat::Llama3Json => "parameters",
            _ => "arguments",
        }
    }
}

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";

/// Code fences a call written without its tags may come in (the first: none). Such a
/// call starts `{"name"`, with or without whitespace after the brace.
pub(crate) const FENCES: [&str; 3] = ["", "```json\n", "```\n"];

pub(crate) use call::{bare_call_name, BareName};

/// The Hermes call markers.
const CALL_OPEN: &str = "<tool_call>";
const CALL_CLOSE: &str = "</tool_call>";
/// Llama 3's marker before a call.
const PYTHON_TAG: &str = "<|python_tag|>";
/// Mistral's markers: before the calls, before a call's arguments, before a call's id.
const MISTRAL_CALLS: &str = "[TOOL_CALLS]";
const MISTRAL_ARGS: &str = "[ARGS]";
const MISTRAL_CALL_ID: &str = "[CALL_ID]";
/// FunctionGemma's markers, and its string delimiter.
const GEMMA_CALL_OPEN: &str = "<start_function_call>";
const GEMMA_CALL_CLOSE: &str = "<end_function_call>";
const GEMMA_ESCAPE: &str = "<escape>";

/// Every marker a parser looks for.
const MARKERS: &[&str] = &[
    CALL_OPEN,
    CALL_CLOSE,
    THINK_OPEN,
    THINK_CLOSE,
    PYTHON_TAG,
    MISTRAL_CALLS,
    MISTRAL_ARGS,
    MISTRAL_CALL_ID,
    GEMMA_CALL_OPEN,
    GEMMA_CALL_CLOSE,
    GEMMA_ESCAPE,
];

/// The model's tokens that are exactly a marker. Models often have their markers as
/// control tokens, which detokenize to nothing; generated, they must read as the marker.
pub fn marker_tokens(tokenizer: &dyn Tokenizer) -> HashMap<TokenId, Vec<u8>> {
    MARKERS
        .iter()
        .filter_map(|m| Some((tokenizer.single_token(m)?, m.as_bytes().to_vec())))
        .collect()
}

/// What the output parser of one request looks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputFormat {
    /// Tool calls, when the request offers tools.
    pub tools: Option<ToolFormat>,
    /// `<think>...</think>` reasoning.
    pub reasoning: bool,
    /// The prompt already opened a `<think>` block.
    pub starts_thinking: bool,
}

/// One piece of parsed output, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Text(String),
    Thinking(String),
    /// A tool call begins; its name is known.
    CallStart {
        name: String,
    },
    /// Part of the call's arguments: the fragments of one call make one JSON object.
    CallArguments(String),
    CallEnd,
}

/// Splits one request's output text into [`Segment`]s as it streams.
#[derive(Debug)]
pub struct OutputParser {
    format: OutputFormat,
    mode: Mode,
    /// Text seen but not yet emitted: it may be the start of a marker, or whitespace
    /// that leads nowhere.
    held: String,
    /// Calls completed so far.
    calls: usize,
    /// The last segment emitted was text (whitespace that would open a text block is
    /// dropped).
    in_text: bool,
    /// Inside Mistral's `[TOOL_CALLS][...]` array: call objects separated by `,`.
    in_array: bool,
    /// The offered tools' names: an object without a marker is a call only when it names
    /// one of them (all names, when empty).
    names: Vec<String>,
}

#[derive(Debug)]
enum Mode {
    Text,
    Thinking,
    /// A JSON call object.
    Call(Call),
    /// After Mistral's `[TOOL_CALLS]`: a name and `[ARGS]`, or an array of call objects.
    MistralHead,
    /// FunctionGemma's `call:name{...}`.
    Gemma(GemmaCall),
}

impl OutputParser {
    pub fn new(format: OutputFormat) -> Self {
        OutputParser {
            mode: if format.starts_thinking && format.reasoning {
                Mode::Thinking
            } else {
                Mode::Text
            },
            format,
            held: String::new(),
            calls: 0,
            in_text: false,
            in_array: false,
            names: Vec::new(),
        }
    }

    /// Only objects naming one of these tools are calls without their marker.
    pub fn with_tool_names(mut self, names: &[String]) -> Self {
        self.names = names.to_vec();
        self
    }

    /// Complete tool calls so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Feed generated text; returns what it completes.
    pub fn push(&mut self, text: &str) -> Vec<Segment> {
        let mut out = Vec::new();
        self.held.push_str(text);
        loop {
            let progressed = match self.mode {
                Mode::Text => self.text(&mut out),
                Mode::Thinking => self.thinking(&mut out),
                Mode::Call(_) => self.call(&mut out),
                Mode::MistralHead => self.mistral_head(&mut out),
                Mode::Gemma(_) => self.gemma_call(&mut out),
            };
            if !progressed {
                return out;
            }
        }
    }

    /// The output ended: flush what is held. A call cut off mid-way is closed so that its
    /// arguments still parse (the request ends with `max_tokens` anyway); one whose name
    /// never arrived is dropped and logged.
    pub fn finish(&mut self) -> Vec<Segment> {
        let mut out = Vec::new();
        let held = std::mem::take(&mut self.held);
        match std::mem::replace(&mut self.mode, Mode::Text) {
            // Whitespace ends the text it follows; alone, it is not worth a block.
            Mode::Text => {
                if self.in_text || !held.trim().is_empty() {
                    self.emit_text(&mut out, &held);
                }
            }
            Mode::Thinking => {
                if !held.is_empty() {
                    self.emit(&mut out, Segment::Thinking(held));
                }
            }
            Mode::Call(call) => self.finish_call(&mut out, call, &held),
            Mode::MistralHead => {
                tracing::info!(body = %held, "a tool call was cut off before its arguments; dropped");
            }
            Mode::Gemma(call) => self.finish_gemma(&mut out, call, &held),
        }
        out
    }

    fn emit(&mut self, out: &mut Vec<Segment>, segment: Segment) {
        self.in_text = matches!(segment, Segment::Text(_));
        out.push(segment);
    }

    /// Text, without the whitespace that would open a block.
    fn emit_text(&mut self, out: &mut Vec<Segment>, text: &str) {
        let text = if self.in_text {
            text
        } else {
            text.trim_start()
        };
        if !text.is_empty() {
            self.emit(out, Segment::Text(text.to_owned()));
        }
    }

    /// A call ended: text follows, or another call.
    fn end_call(&mut self, out: &mut Vec<Segment>) {
        out.push(Segment::CallEnd);
        self.calls += 1;
        self.in_text = false;
        self.mode = Mode::Text;
    }

    /// Plain text: emit up to the next marker (or up to a possible marker start).
    fn text(&mut self, out: &mut Vec<Segment>) -> bool {
        // Small models often drop the tags and write the call's object alone, where a
        // block starts; some wrap it in a code fence. Llama 3 writes calls that way.
        let bare = self.format.tools.is_some_and(ToolFormat::bare_calls) || self.in_array;
        if bare && !self.in_text {
            match self.bare_call_start() {
                Some(true) => return true,
                // Whitespace, or what may still become a bare call: wait.
                Some(false) => return false,
                None => {}
            }
        }
        let mut markers: Vec<&str> = Vec::new();
        if let Some(tools) = self.format.tools {
            markers.push(tools.open());
        }
        if self.format.reasoning {
            markers.push(THINK_OPEN);
        }
        match find_marker(&self.held, &markers) {
            Found::At(at, marker) => {
                let before: String = self.held[..at].to_owned();
                self.held.drain(..at + marker.len());
                // Whitespace between blocks is not worth a text block of its own.
                self.emit_text(out, before.trim_end());
                self.in_text = false;
                self.mode = match marker {
                    THINK_OPEN => Mode::Thinking,
                    CALL_OPEN => Mode::Call(Call::tagged(CALL_CLOSE)),
                    MISTRAL_CALLS => Mode::MistralHead,
                    GEMMA_CALL_OPEN => Mode::Gemma(GemmaCall::default()),
                    // Llama 3's tag: the call object follows, as a bare one.
                    _ => Mode::Text,
                };
                true
            }
            Found::No { safe } => {
                // Trailing whitespace waits to see whether text or a block follows it;
                // where no block can follow, waiting would only delay it a token.
                let keep = if markers.is_empty() && !bare {
                    safe
                } else {
                    self.held[..safe].trim_end().len()
                };
                if keep > 0 {
                    let text: String = self.held.drain(..keep).collect();
                    self.emit_text(out, &text);
                }
                false
            }
        }
    }

    fn thinking(&mut self, out: &mut Vec<Segment>) -> bool {
        match find_marker(&self.held, &[THINK_CLOSE]) {
            Found::At(at, _) => {
                let thought = self.held[..at].to_owned();
                self.held.drain(..at + THINK_CLOSE.len());
                if !thought.is_empty() {
                    self.emit(out, Segment::Thinking(thought));
                }
                self.mode = Mode::Text;
                true
            }
            Found::No { safe } => {
                if safe > 0 {
                    let thought: String = self.held.drain(..safe).collect();
                    self.emit(out, Segment::Thinking(thought));
                }
                false
            }
        }
    }
}

enum Found<'m> {
    /// A marker starts at this byte offset.
    At(usize, &'m str),
    /// No marker; text up to `safe` can't be the start of one.
    No { safe: usize },
}

fn find_marker<'m>(text: &str, markers: &[&'m str]) -> Found<'m> {
    let first = markers
        .iter()
        .filter_map(|m| text.find(m).map(|at| (at, *m)))
        .min_by_key(|(at, _)| *at);
    if let Some((at, m)) = first {
        return Found::At(at, m);
    }
    // Hold back the longest tail that could grow into a marker.
    let mut safe = text.len();
    for m in markers {
        for len in (1..m.len()).rev() {
            if text.ends_with(&m[..len]) {
                safe = safe.min(text.len() - len);
                break;
            }
        }
    }
    Found::No { safe }
}

/// Whether `name` can be a tool's name (the part of a call before its arguments, in the
/// formats that write it bare).
fn is_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod family_tests;
#[cfg(test)]
mod tests;
