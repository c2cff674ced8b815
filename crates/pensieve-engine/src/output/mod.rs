//! What the model's output text becomes: plain text, reasoning and tool calls, recognised
//! in the model's own format as the text streams, so that no marker reaches the client
//! and a call's arguments stream as soon as they are generated.
//!
//! [`OutputParser`] splits text from `<think>` reasoning and finds where a call opens;
//! the format ([`crate::formats`]) gives the [`CallReader`] that reads the call. Readers
//! several formats share live here: `json_call` reads JSON call objects (Hermes, Llama 3,
//! Mistral's arrays), `gemma_call` the `call:name{key:<delim>value<delim>}` syntax of the
//! Gemma family, `xml_call` the XML-style calls whose values are raw text typed by the
//! tool's schema (Qwen3-Coder, GLM, MiniMax).

mod gemma_call;
mod json;
mod json_call;
mod pythonic_call;
mod typed;
mod xml_call;

use std::collections::HashMap;

use crate::model::{TokenId, Tokenizer};
use crate::request::ToolSpec;

pub use crate::formats::ToolFormat;
pub(crate) use gemma_call::{GemmaCall, GemmaSyntax};
pub(crate) use json::JsonScanner;
pub(crate) use json_call::{bare_call_name, stream_json, BareName, JsonCall};
pub(crate) use pythonic_call::{PythonicCall, PythonicSyntax};
pub(crate) use xml_call::{XmlCall, XmlSyntax};

pub(crate) const THINK_OPEN: &str = "<think>";
pub(crate) const THINK_CLOSE: &str = "</think>";

/// Code fences a call written without its tags may come in (the first: none). Such a
/// call starts `{"name"`, with or without whitespace after the brace.
pub(crate) const FENCES: [&str; 3] = ["", "```json\n", "```\n"];

/// The model's tokens that are exactly a marker of its tool-call format or of reasoning.
/// Models often have their markers as control tokens, which detokenize to nothing;
/// generated, they must read as the marker.
pub fn marker_tokens(
    tokenizer: &dyn Tokenizer,
    format: Option<ToolFormat>,
) -> HashMap<TokenId, Vec<u8>> {
    let tools = format.map_or(&[][..], ToolFormat::markers);
    let (open, close) = format.map_or((THINK_OPEN, THINK_CLOSE), ToolFormat::reasoning);
    [THINK_OPEN, THINK_CLOSE, open, close]
        .iter()
        .chain(tools)
        .filter_map(|m| Some((tokenizer.single_token(m)?, m.as_bytes().to_vec())))
        .collect()
}

/// What the output parser of one request looks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputFormat {
    /// Tool calls, when the request offers tools.
    pub tools: Option<ToolFormat>,
    /// The model's format, whether or not tools are offered: its reasoning markers, and
    /// its reader when that reads the whole output (Harmony). None: `tools`'.
    pub model: Option<ToolFormat>,
    /// Reasoning (`<think>...</think>`, or the model format's own markers).
    pub reasoning: bool,
    /// The prompt already opened a reasoning block.
    pub starts_thinking: bool,
    /// Reasoning is read (so that it never reaches the text) but not reported.
    pub hide_reasoning: bool,
}

impl OutputFormat {
    /// The model's format.
    pub fn model(&self) -> Option<ToolFormat> {
        self.model.or(self.tools)
    }

    /// The markers that open and close reasoning.
    pub fn reasoning_markers(&self) -> (&'static str, &'static str) {
        self.model()
            .map_or((THINK_OPEN, THINK_CLOSE), ToolFormat::reasoning)
    }

    /// The label reasoning opens with, if the model's format has one (see
    /// [`ToolFormat::reasoning_label`]).
    pub fn reasoning_label(&self) -> Option<&'static str> {
        self.model().and_then(ToolFormat::reasoning_label)
    }
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

/// Reads a call after its format's opening marker, from [`Core::held`].
pub(crate) trait CallReader: std::fmt::Debug + Send {
    /// Read what can be read of `p.held`; say what comes next.
    fn read(&mut self, p: &mut Core, out: &mut Vec<Segment>) -> Next;
    /// The output ended inside the call, with `p.held` not yet read: close what was
    /// streamed so that its arguments still parse, or drop a call that never got a name.
    fn finish(&mut self, p: &mut Core, out: &mut Vec<Segment>);
}

/// What a [`CallReader`] says after reading.
#[derive(Debug)]
pub(crate) enum Next {
    /// It needs more text.
    Wait,
    /// It read something: read again.
    Again,
    /// The call is over (or was no call, given back as text): text follows.
    Text,
    /// Another reader goes on from here.
    Reader(Box<dyn CallReader>),
}

/// The parser's state apart from its mode, which call readers read and write.
#[derive(Debug)]
pub(crate) struct Core {
    pub format: OutputFormat,
    /// Text seen but not yet emitted: it may be the start of a marker, or whitespace
    /// that leads nowhere.
    pub held: String,
    /// Calls completed so far.
    pub calls: usize,
    /// The last segment emitted was text (whitespace that would open a text block is
    /// dropped).
    pub in_text: bool,
    /// Inside Mistral's `[TOOL_CALLS][...]` array: call objects separated by `,`.
    pub in_array: bool,
    /// The offered tools: an object without a marker is a call only when it names one
    /// of them (any name, when there are none); raw argument text is typed by their
    /// schemas.
    pub tools: Vec<ToolSpec>,
}

impl Core {
    pub fn emit(&mut self, out: &mut Vec<Segment>, segment: Segment) {
        self.in_text = matches!(segment, Segment::Text(_));
        out.push(segment);
    }

    /// Text, without the whitespace that would open a block.
    pub fn emit_text(&mut self, out: &mut Vec<Segment>, text: &str) {
        let text = if self.in_text {
            text
        } else {
            text.trim_start()
        };
        if !text.is_empty() {
            self.emit(out, Segment::Text(text.to_owned()));
        }
    }

    /// A call started: its name is known.
    pub fn start_call(&mut self, out: &mut Vec<Segment>, name: String) {
        self.in_text = false;
        out.push(Segment::CallStart { name });
    }

    /// A call ended: text follows, or another call.
    pub fn end_call(&mut self, out: &mut Vec<Segment>) {
        out.push(Segment::CallEnd);
        self.calls += 1;
        self.in_text = false;
    }

    /// Whether a call without its marker may name `name`.
    pub fn offers(&self, name: &str) -> bool {
        self.tools.is_empty() || self.tools.iter().any(|t| t.name == name)
    }

    /// The JSON schema of a tool's arguments, when the tool was offered.
    pub fn schema(&self, tool: &str) -> Option<&serde_json::Value> {
        self.tools
            .iter()
            .find(|t| t.name == tool)
            .map(|t| &t.parameters)
    }
}

/// Splits one request's output text into [`Segment`]s as it streams.
#[derive(Debug)]
pub struct OutputParser {
    core: Core,
    mode: Mode,
    /// Reasoning has just opened in a format whose reasoning has a label: the label and
    /// its line break may come next.
    label: bool,
}

#[derive(Debug)]
enum Mode {
    Text,
    Thinking,
    Call(Box<dyn CallReader>),
}

impl OutputParser {
    pub fn new(format: OutputFormat) -> Self {
        let mode = match format.model() {
            Some(model) if model.owns_output() => Mode::Call(model.reader()),
            _ if format.starts_thinking && format.reasoning => Mode::Thinking,
            _ => Mode::Text,
        };
        OutputParser {
            // A prompt that ends with the open marker leaves the label to the model.
            label: matches!(mode, Mode::Thinking) && format.reasoning_label().is_some(),
            mode,
            core: Core {
                format,
                held: String::new(),
                calls: 0,
                in_text: false,
                in_array: false,
                tools: Vec::new(),
            },
        }
    }

    /// The tools the request offers: a call without its marker must name one of them,
    /// and their schemas type the raw argument values of the XML-style formats.
    pub fn with_tools(mut self, tools: &[ToolSpec]) -> Self {
        self.core.tools = tools.to_vec();
        self
    }

    /// Complete tool calls so far.
    pub fn calls(&self) -> usize {
        self.core.calls
    }

    /// Feed generated text; returns what it completes.
    pub fn push(&mut self, text: &str) -> Vec<Segment> {
        let mut out = Vec::new();
        self.core.held.push_str(text);
        loop {
            let progressed = match &mut self.mode {
                Mode::Text => self.text(&mut out),
                Mode::Thinking => self.thinking(&mut out),
                Mode::Call(reader) => match reader.read(&mut self.core, &mut out) {
                    Next::Wait => false,
                    Next::Again => true,
                    Next::Text => {
                        self.mode = Mode::Text;
                        true
                    }
                    Next::Reader(next) => {
                        self.mode = Mode::Call(next);
                        true
                    }
                },
            };
            if !progressed {
                return self.shown(out);
            }
        }
    }

    fn shown(&self, mut out: Vec<Segment>) -> Vec<Segment> {
        if self.core.format.hide_reasoning {
            out.retain(|s| !matches!(s, Segment::Thinking(_)));
        }
        out
    }

    /// The output ended: flush what is held. A call cut off mid-way is closed so that its
    /// arguments still parse (the request ends with `max_tokens` anyway); one whose name
    /// never arrived is dropped and logged.
    pub fn finish(&mut self) -> Vec<Segment> {
        let mut out = Vec::new();
        match std::mem::replace(&mut self.mode, Mode::Text) {
            // Whitespace ends the text it follows; alone, it is not worth a block.
            Mode::Text => {
                let held = std::mem::take(&mut self.core.held);
                if self.core.in_text || !held.trim().is_empty() {
                    self.core.emit_text(&mut out, &held);
                }
            }
            Mode::Thinking => {
                let mut held = std::mem::take(&mut self.core.held);
                if let Some(label) = self.core.format.reasoning_label().filter(|_| self.label) {
                    held.drain(..label_len(&held, label, true).unwrap_or(0));
                }
                if !held.is_empty() {
                    self.core.emit(&mut out, Segment::Thinking(held));
                }
            }
            Mode::Call(mut reader) => {
                reader.finish(&mut self.core, &mut out);
                self.core.held.clear();
            }
        }
        self.shown(out)
    }

    /// Plain text: emit up to the next marker (or up to a possible marker start).
    fn text(&mut self, out: &mut Vec<Segment>) -> bool {
        let core = &mut self.core;
        // Small models often drop the tags and write the call's object alone, where a
        // block starts; some wrap it in a code fence. Llama 3 writes calls that way.
        let bare = core.format.tools.is_some_and(ToolFormat::bare_calls) || core.in_array;
        if bare && !core.in_text {
            match json_call::bare_call_start(core) {
                json_call::BareStart::Started(call) => {
                    self.mode = Mode::Call(Box::new(call));
                    return true;
                }
                // Whitespace, or what may still become a bare call: wait.
                json_call::BareStart::Maybe => return false,
                json_call::BareStart::No => {}
            }
        }
        if let (Some(tools), false) = (core.format.tools, core.in_text) {
            match tools
                .bare_name_then()
                .map(|then| bare_named_call(core, then))
            {
                Some(BareStart::Started) => {
                    self.mode = Mode::Call(tools.reader());
                    return true;
                }
                Some(BareStart::Maybe) => return false,
                Some(BareStart::No) | None => {}
            }
        }
        let open = core.format.tools.map(ToolFormat::open);
        let bare_open = core.format.tools.and_then(ToolFormat::bare_open);
        let (think_open, think_close) = core.format.reasoning_markers();
        let variants = core.format.tools.map_or(&[][..], ToolFormat::open_variants);
        let mut markers: Vec<&str> = open.into_iter().chain(bare_open).collect();
        markers.extend(variants);
        if core.format.reasoning {
            // A `</think>` in text closes a block whose opening we did not see (a call
            // inside reasoning ended it, or the prompt opened it): it is no text.
            markers.extend([think_open, think_close]);
        }
        match find_marker(&core.held, &markers) {
            Found::At(at, marker) => {
                let before: String = core.held[..at].to_owned();
                // A call opened without its marker is read from its first text.
                let skip = if Some(marker) == bare_open {
                    0
                } else {
                    marker.len()
                };
                core.held.drain(..at + skip);
                // Whitespace between blocks is not worth a text block of its own.
                core.emit_text(out, before.trim_end());
                core.in_text = false;
                self.label = marker == think_open && core.format.reasoning_label().is_some();
                self.mode = match core.format.tools {
                    _ if marker == think_open => Mode::Thinking,
                    _ if marker == think_close => Mode::Text,
                    Some(tools) => Mode::Call(tools.reader()),
                    None => Mode::Text,
                };
                true
            }
            Found::No { safe } => {
                // Trailing whitespace waits to see whether text or a block follows it;
                // where no block can follow, waiting would only delay it a token.
                let keep = if markers.is_empty() && !bare {
                    safe
                } else {
                    core.held[..safe].trim_end().len()
                };
                if keep > 0 {
                    let text: String = core.held.drain(..keep).collect();
                    core.emit_text(out, &text);
                }
                false
            }
        }
    }

    /// Reasoning, up to `</think>` or a call: models call tools from inside their
    /// reasoning too (Qwen3.5 often leaves `</think>` out before a call).
    ///
    /// A format whose reasoning has a label (Gemma 4's `<|channel>thought\n`) writes the
    /// label and a line break after the open marker, and a line break before the close
    /// one: markup, which its template writes back around the reasoning it is given.
    fn thinking(&mut self, out: &mut Vec<Segment>) -> bool {
        let core = &mut self.core;
        let label = core.format.reasoning_label();
        if let Some(label) = label.filter(|_| self.label) {
            match label_len(&core.held, label, false) {
                None => return false,
                Some(len) => {
                    core.held.drain(..len);
                    self.label = false;
                }
            }
        }
        let open = core.format.tools.map(ToolFormat::open);
        let bare_open = core.format.tools.and_then(ToolFormat::bare_open);
        let (_, think_close) = core.format.reasoning_markers();
        let mut markers = vec![think_close];
        markers.extend(open.filter(|o| !o.is_empty()));
        markers.extend(bare_open);
        markers.extend(core.format.tools.map_or(&[][..], ToolFormat::open_variants));
        match find_marker(&core.held, &markers) {
            Found::At(at, marker) => {
                let mut thought = core.held[..at].to_owned();
                if label.is_some() && marker == think_close && thought.ends_with('\n') {
                    thought.pop();
                }
                let skip = if Some(marker) == bare_open {
                    0
                } else {
                    marker.len()
                };
                core.held.drain(..at + skip);
                if !thought.is_empty() {
                    core.emit(out, Segment::Thinking(thought));
                }
                self.mode = match core.format.tools {
                    Some(tools) if marker != think_close => {
                        core.in_text = false;
                        Mode::Call(tools.reader())
                    }
                    _ => Mode::Text,
                };
                true
            }
            Found::No { mut safe } => {
                // A line break may be the close marker's.
                if label.is_some() && core.held[..safe].ends_with('\n') {
                    safe -= 1;
                }
                if safe > 0 {
                    let thought: String = core.held.drain(..safe).collect();
                    core.emit(out, Segment::Thinking(thought));
                }
                false
            }
        }
    }
}

enum BareStart {
    Started,
    /// Whitespace, or what may still become one: wait.
    Maybe,
    No,
}

/// Whether `held`, where a block starts, is a call without its opening marker: an
/// offered tool's name, perhaps whitespace, then `then` (see
/// [`ToolFormat::bare_name_then`]). On a start, the whitespace before the name is
/// dropped and the call's reader reads from the name.
fn bare_named_call(core: &mut Core, then: &str) -> BareStart {
    let trimmed = core.held.trim_start();
    if trimmed.is_empty() {
        return if core.tools.is_empty() {
            BareStart::No
        } else {
            BareStart::Maybe
        };
    }
    let mut maybe = false;
    for tool in &core.tools {
        match trimmed.strip_prefix(tool.name.as_str()) {
            Some(rest) => {
                let rest = rest.trim_start();
                if rest.starts_with(then) {
                    let ws = core.held.len() - trimmed.len();
                    core.held.drain(..ws);
                    return BareStart::Started;
                }
                maybe |= then.starts_with(rest);
            }
            None => maybe |= tool.name.starts_with(trimmed),
        }
    }
    if maybe {
        BareStart::Maybe
    } else {
        BareStart::No
    }
}

/// How much of `held`, the start of a reasoning block, is its `label` and the line break
/// after it; None while it may still be the label. At the `end` of the output, what may
/// be a cut-off label is one.
fn label_len(held: &str, label: &str, end: bool) -> Option<usize> {
    if held.len() <= label.len() && label.starts_with(held) {
        return end.then_some(held.len());
    }
    // The label is a word of its own.
    let labelled = held
        .strip_prefix(label)
        .is_some_and(|rest| !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_'));
    let len = if labelled { label.len() } else { 0 };
    Some(len + usize::from(held[len..].starts_with('\n')))
}

pub(crate) enum Found<'m> {
    /// A marker starts at this byte offset.
    At(usize, &'m str),
    /// No marker; text up to `safe` can't be the start of one.
    No { safe: usize },
}

pub(crate) fn find_marker<'m>(text: &str, markers: &[&'m str]) -> Found<'m> {
    let first = markers
        .iter()
        .filter(|m| !m.is_empty())
        .filter_map(|m| text.find(m).map(|at| (at, *m)))
        .min_by_key(|(at, _)| *at);
    if let Some((at, m)) = first {
        return Found::At(at, m);
    }
    // Hold back the longest tail that could grow into a marker.
    let mut safe = text.len();
    for m in markers {
        for len in (1..m.len()).rev() {
            if m.is_char_boundary(len) && text.ends_with(&m[..len]) {
                safe = safe.min(text.len() - len);
                break;
            }
        }
    }
    Found::No { safe }
}

/// Whether `name` can be a tool's name (the part of a call before its arguments, in the
/// formats that write it bare).
pub(crate) fn is_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A reader for formats whose marker only announces a call that follows as a bare JSON
/// object (Llama 3's `<|python_tag|>`): text mode reads it.
#[derive(Debug)]
pub(crate) struct MarkerOnly;

impl CallReader for MarkerOnly {
    fn read(&mut self, _: &mut Core, _: &mut Vec<Segment>) -> Next {
        Next::Text
    }

    fn finish(&mut self, _: &mut Core, _: &mut Vec<Segment>) {}
}

#[cfg(test)]
pub(crate) mod family_tests;
#[cfg(test)]
pub(crate) mod tests;
