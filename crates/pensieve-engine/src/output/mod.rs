//! What the model's output text becomes: plain text, reasoning and tool calls, recognised
//! in the model's own format as the text streams, so that no marker reaches the client
//! and a call's arguments stream as soon as they are generated.

mod json;

use std::collections::HashMap;

use crate::model::{TokenId, Tokenizer};
use json::{JsonScanner, Scan};

/// How a model writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// Hermes and Qwen: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.
    Hermes,
}

impl ToolFormat {
    /// Names accepted by `--tool-parser`.
    pub const NAMES: &'static [&'static str] = &["hermes", "qwen"];

    /// The format a chat template teaches its model, when it is one we parse.
    pub fn detect(template: &str) -> Option<ToolFormat> {
        template
            .contains("<tool_call>")
            .then_some(ToolFormat::Hermes)
    }

    pub fn from_name(name: &str) -> Option<ToolFormat> {
        match name {
            "hermes" | "qwen" => Some(ToolFormat::Hermes),
            _ => None,
        }
    }

    fn open(self) -> &'static str {
        match self {
            ToolFormat::Hermes => CALL_OPEN,
        }
    }

    fn close(self) -> &'static str {
        match self {
            ToolFormat::Hermes => CALL_CLOSE,
        }
    }
}

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";

/// How a call written without its tags starts.
const BARE_CALL: &str = "{\"name\"";

/// Code fences a bare call may come in, each with how such a call starts.
pub(crate) const BARE_FENCES: [(&str, &str); 3] = [
    ("", BARE_CALL),
    ("```json\n", "```json\n{\"name\""),
    ("```\n", "```\n{\"name\""),
];

/// The Hermes call markers.
pub(crate) const CALL_OPEN: &str = "<tool_call>";
const CALL_CLOSE: &str = "</tool_call>";

/// Every marker a parser looks for.
const MARKERS: &[&str] = &[CALL_OPEN, CALL_CLOSE, THINK_OPEN, THINK_CLOSE];

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
}

#[derive(Debug)]
enum Mode {
    Text,
    Thinking,
    Call(Call),
}

/// A tool call being read.
#[derive(Debug, Default)]
struct Call {
    /// The call's text after the opening marker.
    body: String,
    /// Set once `{"name": "...", "arguments":` has been read and the call announced.
    args: Option<JsonScanner>,
    /// The arguments object is complete (or was closed).
    args_done: bool,
    /// The header is not of the streamable shape: wait for the closing marker.
    buffered: bool,
    /// Opened without a marker (`{"name": ...` where a block starts): the call ends
    /// with its object.
    bare: bool,
    /// A bare call inside a code fence: the fence's opening, given back as text should
    /// the object not be a call.
    fence: &'static str,
    /// What still closes a bare call after its arguments: `}`, then the fence's "```".
    closers: Vec<&'static str>,
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
        }
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
            Mode::Text => {
                if !held.trim().is_empty() {
                    self.emit_text(&mut out, &held);
                }
            }
            Mode::Thinking => {
                if !held.is_empty() {
                    self.emit(&mut out, Segment::Thinking(held));
                }
            }
            Mode::Call(mut call) => {
                call.body.push_str(&held);
                match call.args {
                    Some(scanner) => {
                        if call.args_done {
                            // Only the closing marker is missing.
                            self.calls += 1;
                        } else {
                            let rest = scanner.completion();
                            if !rest.is_empty() {
                                out.push(Segment::CallArguments(rest));
                            }
                            tracing::info!("a tool call was cut off; its arguments were closed");
                        }
                        out.push(Segment::CallEnd);
                    }
                    None if call.bare => {
                        tracing::info!(body = %call.body, "a tool call was cut off before its arguments; dropped");
                    }
                    None => match parse_whole_call(&call.body) {
                        Some((name, arguments)) => {
                            self.emit(&mut out, Segment::CallStart { name });
                            out.push(Segment::CallArguments(arguments));
                            out.push(Segment::CallEnd);
                            self.calls += 1;
                        }
                        None => {
                            tracing::info!(body = %call.body, "a tool call was cut off before its name; dropped");
                        }
                    },
                }
            }
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

    /// Plain text: emit up to the next marker (or up to a possible marker start).
    fn text(&mut self, out: &mut Vec<Segment>) -> bool {
        // Small models often drop the tags and write the call's object alone, where a
        // block starts.
        // Some wrap it in a code fence.
        if self.format.tools.is_some() && !self.in_text {
            let trimmed = self.held.trim_start();
            for (fence, start) in BARE_FENCES {
                if trimmed.starts_with(start) {
                    let skip = self.held.len() - trimmed.len() + fence.len();
                    self.held.drain(..skip);
                    let mut closers = vec!["}"];
                    if !fence.is_empty() {
                        closers.push("```");
                    }
                    self.mode = Mode::Call(Call {
                        bare: true,
                        fence,
                        closers,
                        ..Call::default()
                    });
                    return true;
                }
            }
            if BARE_FENCES
                .iter()
                .any(|(_, start)| start.starts_with(trimmed))
            {
                // Whitespace, or what may still become a bare call: wait.
                return false;
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
                self.mode = if marker == THINK_OPEN {
                    Mode::Thinking
                } else {
                    Mode::Call(Call::default())
                };
                true
            }
            Found::No { safe } => {
                // Trailing whitespace waits to see whether text or a block follows it.
                let keep = self.held[..safe].trim_end().len();
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

    fn call(&mut self, out: &mut Vec<Segment>) -> bool {
        let Some(tools) = self.format.tools else {
            return false;
        };
        let Mode::Call(call) = &mut self.mode else {
            return false;
        };
        // Arguments stream until the scanner says the object ended.
        if let (false, Some(scanner)) = (call.args_done, call.args.as_mut()) {
            let mut consumed = self.held.len();
            let mut done = false;
            let mut fragment = String::new();
            for (i, c) in self.held.char_indices() {
                match scanner.push(c) {
                    Scan::Inside => fragment.push(c),
                    Scan::Complete => {
                        fragment.push(c);
                        consumed = i + c.len_utf8();
                        done = true;
                        break;
                    }
                    Scan::EndedBefore | Scan::Invalid => {
                        // Not JSON any more: close what was streamed.
                        tracing::warn!(body = %call.body, "a tool call's arguments are not valid JSON; closed");
                        fragment.push_str(&scanner.completion());
                        consumed = i;
                        done = true;
                        break;
                    }
                }
            }
            call.body.extend(self.held.drain(..consumed));
            if !fragment.is_empty() {
                out.push(Segment::CallArguments(fragment));
            }
            if !done {
                return false;
            }
            call.args_done = true;
        }
        if call.bare {
            return self.bare_call(out);
        }
        // The closing marker ends the call; what comes between the arguments and it is
        // ignored.
        match find_marker(&self.held, &[tools.close()]) {
            Found::At(at, marker) => {
                call.body.extend(self.held.drain(..at));
                if self.read_header(out) {
                    return true;
                }
                self.held.drain(..marker.len());
                if let Mode::Call(call) = std::mem::replace(&mut self.mode, Mode::Text) {
                    self.end_call(out, call, tools);
                }
                true
            }
            Found::No { safe } => {
                call.body.extend(self.held.drain(..safe));
                self.read_header(out)
            }
        }
    }

    /// A call without tags: it ends where its object does.
    fn bare_call(&mut self, out: &mut Vec<Segment>) -> bool {
        let Mode::Call(call) = &mut self.mode else {
            return false;
        };
        if call.args_done {
            // The object's closing brace, then the fence's; anything else is text.
            while let Some(&closer) = call.closers.first() {
                let trimmed = self.held.trim_start();
                if trimmed.is_empty() || (closer.starts_with(trimmed) && trimmed != closer) {
                    return false;
                }
                let ws = self.held.len() - trimmed.len();
                if !trimmed.starts_with(closer) {
                    self.held.drain(..ws);
                    break;
                }
                self.held.drain(..ws + closer.len());
                call.closers.remove(0);
            }
            self.mode = Mode::Text;
            out.push(Segment::CallEnd);
            self.calls += 1;
            return true;
        }
        call.body.extend(self.held.drain(..));
        if self.read_header(out) {
            return true;
        }
        // Not a call after all: it was text.
        let Mode::Call(call) = &mut self.mode else {
            return false;
        };
        if call.buffered {
            let text = format!("{}{}", call.fence, call.body);
            self.mode = Mode::Text;
            self.emit_text(out, &text);
        }
        false
    }

    /// Before its arguments stream: once `{"name": "...", "arguments": ` is read, announce
    /// the call and put the arguments back to be streamed. True when it did.
    fn read_header(&mut self, out: &mut Vec<Segment>) -> bool {
        let Mode::Call(call) = &mut self.mode else {
            return false;
        };
        if call.args.is_some() || call.buffered {
            return false;
        }
        match parse_header(&call.body) {
            Header::Complete { name, value_start } if call.body[value_start..].starts_with('{') => {
                let value = call.body.split_off(value_start);
                self.held.insert_str(0, &value);
                call.args = Some(JsonScanner::default());
                self.in_text = false;
                out.push(Segment::CallStart { name });
                true
            }
            Header::Incomplete => false,
            Header::Complete { .. } | Header::Mismatch => {
                call.buffered = true;
                false
            }
        }
    }

    fn end_call(&mut self, out: &mut Vec<Segment>, call: Call, tools: ToolFormat) {
        if call.args.is_some() {
            out.push(Segment::CallEnd);
            self.calls += 1;
            return;
        }
        // Not streamed: parse the whole body now.
        match parse_whole_call(&call.body) {
            Some((name, arguments)) => {
                self.emit(out, Segment::CallStart { name });
                out.push(Segment::CallArguments(arguments));
                out.push(Segment::CallEnd);
                self.calls += 1;
            }
            None => {
                tracing::warn!(body = %call.body, "a tool call could not be parsed; returned as text");
                let text = format!("{}{}{}", tools.open(), call.body, tools.close());
                self.emit(out, Segment::Text(text));
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

enum Header {
    /// `{"name": "<name>", "arguments": ` read; the value starts at this byte offset.
    Complete {
        name: String,
        value_start: usize,
    },
    Incomplete,
    /// Not the usual shape (another key order, say): parse the call whole at its end.
    Mismatch,
}

/// Reads `{"name": "...", "arguments"|"parameters": ` at the start of a call body.
fn parse_header(body: &str) -> Header {
    let mut rest = body;
    macro_rules! expect {
        ($lit:expr) => {{
            rest = rest.trim_start();
            if rest.is_empty() {
                return Header::Incomplete;
            }
            if let Some(r) = rest.strip_prefix($lit) {
                rest = r;
            } else if $lit.starts_with(rest) {
                return Header::Incomplete;
            } else {
                return Header::Mismatch;
            }
        }};
    }
    expect!("{");
    expect!("\"name\"");
    expect!(":");
    expect!("\"");
    let Some(end) = string_end(rest) else {
        return Header::Incomplete;
    };
    let Ok(name) = serde_json::from_str::<String>(&format!("\"{}", &rest[..=end])) else {
        return Header::Mismatch;
    };
    rest = &rest[end + 1..];
    expect!(",");
    expect!("\"");
    let Some(end) = string_end(rest) else {
        let partial = rest;
        return if "arguments".starts_with(partial) || "parameters".starts_with(partial) {
            Header::Incomplete
        } else {
            Header::Mismatch
        };
    };
    if !matches!(&rest[..end], "arguments" | "parameters") {
        return Header::Mismatch;
    }
    rest = &rest[end + 1..];
    expect!(":");
    rest = rest.trim_start();
    if rest.is_empty() {
        return Header::Incomplete;
    }
    Header::Complete {
        name,
        value_start: body.len() - rest.len(),
    }
}

/// Byte offset of the `"` that ends a JSON string whose opening quote is already read.
fn string_end(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => return Some(i),
            _ => {}
        }
    }
    None
}

/// A whole call body as JSON: `{"name", "arguments" | "parameters"}` in any order, the
/// arguments an object or a string holding one. Returns the name and the arguments' JSON.
fn parse_whole_call(body: &str) -> Option<(String, String)> {
    let value: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    let name = value.get("name")?.as_str()?.to_owned();
    let arguments = value
        .get("arguments")
        .or_else(|| value.get("parameters"))
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    let arguments = match arguments {
        serde_json::Value::String(s) => serde_json::from_str(&s).ok()?,
        other => other,
    };
    if !arguments.is_object() {
        return None;
    }
    Some((name, arguments.to_string()))
}

#[cfg(test)]
mod tests;
