//! Calls written as XML-like tags around raw text: Qwen3-Coder's
//! `<function=NAME><parameter=K>\nV\n</parameter></function>`, GLM's
//! `NAME<arg_key>K</arg_key><arg_value>V</arg_value>`, MiniMax's
//! `<invoke name="NAME"><parameter name="K">V</parameter></invoke>`, DeepSeek's DSML
//! (MiniMax's with `｜DSML｜` tags and `string="true|false"`). Values are bare text,
//! typed by the tool's schema (`typed`); string values stream as they are generated,
//! JSON-escaped, so a long file's content does not wait for its end.

use serde_json::Value;

use super::typed::{self, Kind};
use super::{find_marker, is_tool_name, CallReader, Core, Found, Next, Segment};

/// How far a name or key may run before the call is taken for text.
const MAX_NAME: usize = 256;

/// One format's tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct XmlSyntax {
    /// The marker that opened the block (given back with the text if no call follows).
    pub open: &'static str,
    /// Before a call's name; empty when the name follows the marker (GLM).
    pub name_open: &'static str,
    /// After the name; empty when the name ends at a line break or the first key (GLM).
    pub name_close: &'static str,
    pub key_open: &'static str,
    pub key_close: &'static str,
    /// Before a value, after whitespace; empty when the value follows its key at once.
    pub value_open: &'static str,
    pub value_close: &'static str,
    /// Each value is wrapped in one line break on either side, which is markup (Qwen).
    pub value_newlines: bool,
    /// The key's tag may go on after the key's closing quote with `string="true"` or
    /// `string="false"` (DeepSeek's DSML): `false` says the value is JSON, whatever the
    /// schema says.
    pub string_attr: bool,
    /// Ends a call.
    pub call_close: &'static str,
    /// Ends the block, after one or more calls, where that is not the call's own end.
    pub block_close: Option<&'static str>,
}

/// Where the reader is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Before a call's name (and its opening tag).
    Name(String),
    /// Between parameters: a key, or the end of the call.
    Params,
    /// Inside a key.
    Key(String),
    /// After a key: the value's opening tag, if the format has one.
    BeforeValue,
    /// Inside a value.
    Value,
    /// After a call: another, or the end of the block.
    AfterCall,
}

/// One block of calls being read.
#[derive(Debug)]
pub(crate) struct XmlCall {
    syntax: XmlSyntax,
    state: State,
    /// The call being read: its name, once known.
    name: Option<String>,
    /// Parameters written so far in this call.
    params: usize,
    /// The value being read: its key and kind.
    key: String,
    kind: Kind,
    /// The value's schema, when the tool names the parameter.
    param_schema: Option<Value>,
    /// The value's text not yet written out (all of it, for a typed value).
    value: String,
    /// The value's opening line break has been dealt with.
    lead_done: bool,
    /// The value's key (and, for text, its opening quote) has been written.
    value_started: bool,
    /// Calls this block made.
    calls: usize,
}

impl XmlCall {
    pub(crate) fn new(syntax: XmlSyntax) -> XmlCall {
        XmlCall {
            syntax,
            state: State::Name(String::new()),
            name: None,
            params: 0,
            key: String::new(),
            kind: Kind::Typed,
            param_schema: None,
            value: String::new(),
            lead_done: false,
            value_started: false,
            calls: 0,
        }
    }

    /// What followed the marker is no call: give it back as text.
    fn not_a_call(&mut self, p: &mut Core, out: &mut Vec<Segment>, seen: &str) -> Next {
        tracing::warn!(body = %seen, "a tool call could not be parsed; returned as text");
        let text = format!("{}{seen}", self.syntax.open);
        p.emit(out, Segment::Text(text));
        Next::Text
    }

    fn name(&mut self, p: &mut Core, out: &mut Vec<Segment>, mut seen: String) -> Next {
        let s = self.syntax;
        seen.push_str(&std::mem::take(&mut p.held));
        let trimmed = seen.trim_start();
        // Some models write a JSON call between the same tags (as Qwen2.5 and Qwen3 did).
        if self.calls == 0 && trimmed.starts_with('{') {
            p.held = trimmed.to_owned();
            let close = s.block_close.unwrap_or(s.call_close);
            return Next::Reader(Box::new(super::JsonCall::tagged(close)));
        }
        let Some(rest) = trimmed.strip_prefix(s.name_open) else {
            if s.name_open.starts_with(trimmed) {
                self.state = State::Name(seen);
                return Next::Wait;
            }
            // After a call, anything but another one ends the block.
            if self.calls > 0 {
                p.held = seen;
                return Next::Text;
            }
            return self.not_a_call(p, out, &seen);
        };
        // The name runs to its closing tag, or (GLM) to a line break or the first key.
        let ends: Vec<&str> = if s.name_close.is_empty() {
            vec!["\n", s.key_open, s.call_close]
        } else {
            vec![s.name_close]
        };
        match find_marker(rest, &ends) {
            Found::At(at, end) => {
                let name = rest[..at].trim().to_owned();
                if !is_tool_name(&name) {
                    return self.not_a_call(p, out, &seen);
                }
                let skip = if s.name_close.is_empty() {
                    0
                } else {
                    end.len()
                };
                p.held = rest[at + skip..].to_owned();
                p.start_call(out, name.clone());
                self.name = Some(name);
                self.params = 0;
                self.state = State::Params;
                Next::Again
            }
            Found::No { safe } => {
                let name = rest[..safe].trim();
                if rest.len() > MAX_NAME || !(name.is_empty() || is_tool_name(name)) {
                    return self.not_a_call(p, out, &seen);
                }
                self.state = State::Name(seen);
                Next::Wait
            }
        }
    }

    fn params(&mut self, p: &mut Core, out: &mut Vec<Segment>) -> Next {
        let s = self.syntax;
        let trimmed = p.held.trim_start();
        let ws = p.held.len() - trimmed.len();
        if let Some(rest) = trimmed.strip_prefix(s.key_open) {
            p.held = rest.to_owned();
            self.state = State::Key(String::new());
            return Next::Again;
        }
        if trimmed.starts_with(s.call_close) {
            p.held.drain(..ws + s.call_close.len());
            return self.end_call(p, out);
        }
        let ends = [s.key_open, s.call_close];
        if trimmed.is_empty() || ends.iter().any(|e| e.starts_with(trimmed)) {
            return Next::Wait;
        }
        // Text where a tag should be: skip to the next tag.
        match find_marker(trimmed, &ends) {
            Found::At(at, _) => {
                p.held.drain(..ws + at);
                Next::Again
            }
            Found::No { safe } => {
                p.held.drain(..ws + safe);
                Next::Wait
            }
        }
    }

    fn key(&mut self, p: &mut Core, out: &mut Vec<Segment>, mut key: String) -> Next {
        let s = self.syntax;
        key.push_str(&std::mem::take(&mut p.held));
        match find_marker(&key, &[s.key_close]) {
            Found::At(at, end) => {
                p.held = key[at + end.len()..].to_owned();
                key.truncate(at);
                let json = s.string_attr && split_string_attr(&mut key) == Some("false");
                self.key = key.trim().to_owned();
                let schema = self.name.as_deref().and_then(|n| p.schema(n));
                let param = schema
                    .and_then(|s| s.get("properties"))
                    .and_then(|props| props.get(&self.key));
                self.kind = if json {
                    Kind::Typed
                } else {
                    typed::kind(param)
                };
                self.param_schema = param.cloned();
                self.value.clear();
                self.lead_done = !s.value_newlines;
                self.value_started = false;
                self.state = State::BeforeValue;
                Next::Again
            }
            Found::No { .. } if key.len() > MAX_NAME => {
                tracing::warn!(key = %key, "a tool call's parameter name runs on; the call is closed");
                self.end_call(p, out)
            }
            Found::No { .. } => {
                self.state = State::Key(key);
                Next::Wait
            }
        }
    }

    fn before_value(&mut self, p: &mut Core) -> Next {
        let open = self.syntax.value_open;
        if open.is_empty() {
            self.state = State::Value;
            return Next::Again;
        }
        let trimmed = p.held.trim_start();
        if let Some(rest) = trimmed.strip_prefix(open) {
            p.held = rest.to_owned();
            self.state = State::Value;
            return Next::Again;
        }
        if trimmed.is_empty() || open.starts_with(trimmed) {
            return Next::Wait;
        }
        // A value without its opening tag: take it as it is.
        self.state = State::Value;
        Next::Again
    }

    fn value(&mut self, p: &mut Core, out: &mut Vec<Segment>) -> Next {
        let s = self.syntax;
        if !self.lead_done {
            if p.held.is_empty() {
                return Next::Wait;
            }
            if p.held.starts_with('\n') {
                p.held.remove(0);
            }
            self.lead_done = true;
        }
        // A missing closing tag is forgiven where the call or the block ends.
        let mut ends = vec![s.value_close, s.call_close];
        ends.extend(s.block_close);
        match find_marker(&p.held, &ends) {
            Found::At(at, end) => {
                let mut piece: String = p.held.drain(..at).collect();
                if s.value_newlines && piece.ends_with('\n') {
                    piece.pop();
                }
                self.value_piece(out, &piece, true);
                if end == s.value_close {
                    p.held.drain(..end.len());
                    self.state = State::Params;
                    return Next::Again;
                }
                if end == s.call_close {
                    p.held.drain(..end.len());
                }
                self.close_arguments(out);
                let next = self.end_call(p, out);
                if Some(end) == s.block_close {
                    // The block's end is read after the call.
                    self.state = State::AfterCall;
                    return Next::Again;
                }
                next
            }
            Found::No { safe } => {
                let mut keep = safe;
                // A line break may be the markup before the closing tag.
                if s.value_newlines && p.held[..keep].ends_with('\n') {
                    keep -= 1;
                }
                let piece: String = p.held.drain(..keep).collect();
                self.value_piece(out, &piece, false);
                Next::Wait
            }
        }
    }

    /// Part of a value's text; `last` when the value ends with it.
    fn value_piece(&mut self, out: &mut Vec<Segment>, piece: &str, last: bool) {
        self.value.push_str(piece);
        match self.kind {
            Kind::Text { nullable } => {
                // `null` or `None` may still come: wait while the text could be one.
                let undecided = nullable
                    && !self.value_started
                    && ["null", "None"]
                        .iter()
                        .any(|n| n.starts_with(self.value.trim()));
                if undecided && !last {
                    return;
                }
                if undecided {
                    let value = typed::text(&self.value, true);
                    self.write_key(out);
                    out.push(Segment::CallArguments(value.to_string()));
                    self.value_started = true;
                    return;
                }
                let mut json = String::new();
                if !self.value_started {
                    json.push_str(&self.key_json());
                    json.push('"');
                    self.value_started = true;
                }
                json.push_str(&escape_json(&self.value));
                self.value.clear();
                if last {
                    json.push('"');
                }
                if !json.is_empty() {
                    out.push(Segment::CallArguments(json));
                }
            }
            Kind::Typed if last => {
                let value = self.typed_value();
                let json = format!("{}{value}", self.key_json());
                self.value_started = true;
                out.push(Segment::CallArguments(json));
            }
            Kind::Typed => {}
        }
    }

    /// The typed value read so far.
    fn typed_value(&self) -> Value {
        typed::convert(&self.value, self.param_schema.as_ref())
    }

    /// `{"key": ` or `, "key": `, for the value about to be written.
    fn key_json(&mut self) -> String {
        let sep = if self.params == 0 { "{" } else { ", " };
        self.params += 1;
        format!("{sep}{}: ", Value::String(self.key.clone()))
    }

    fn write_key(&mut self, out: &mut Vec<Segment>) {
        let key = self.key_json();
        out.push(Segment::CallArguments(key));
    }

    /// The arguments' closing brace (or the whole of empty ones).
    fn close_arguments(&mut self, out: &mut Vec<Segment>) {
        let json = if self.params == 0 { "{}" } else { "}" };
        out.push(Segment::CallArguments(json.to_owned()));
    }

    fn end_call(&mut self, p: &mut Core, out: &mut Vec<Segment>) -> Next {
        if self.state == State::Params {
            self.close_arguments(out);
        }
        p.end_call(out);
        self.calls += 1;
        self.name = None;
        match self.syntax.block_close {
            Some(_) => {
                self.state = State::AfterCall;
                Next::Again
            }
            None => Next::Text,
        }
    }

    fn after_call(&mut self, p: &mut Core, out: &mut Vec<Segment>) -> Next {
        let Some(close) = self.syntax.block_close else {
            return Next::Text;
        };
        let trimmed = p.held.trim_start();
        if let Some(rest) = trimmed.strip_prefix(close) {
            p.held = rest.to_owned();
            return Next::Text;
        }
        if trimmed.is_empty() || close.starts_with(trimmed) {
            return Next::Wait;
        }
        self.state = State::Name(String::new());
        self.name(p, out, String::new())
    }
}

impl CallReader for XmlCall {
    fn read(&mut self, p: &mut Core, out: &mut Vec<Segment>) -> Next {
        match std::mem::replace(&mut self.state, State::Params) {
            State::Name(seen) => self.name(p, out, seen),
            State::Params => self.params(p, out),
            State::Key(key) => self.key(p, out, key),
            State::BeforeValue => {
                self.state = State::BeforeValue;
                self.before_value(p)
            }
            State::Value => {
                self.state = State::Value;
                self.value(p, out)
            }
            State::AfterCall => {
                self.state = State::AfterCall;
                self.after_call(p, out)
            }
        }
    }

    fn finish(&mut self, p: &mut Core, out: &mut Vec<Segment>) {
        let held = std::mem::take(&mut p.held);
        match std::mem::replace(&mut self.state, State::AfterCall) {
            State::Name(seen) => {
                if self.calls == 0 {
                    tracing::info!(body = %format!("{seen}{held}"), "a tool call was cut off before its name; dropped");
                }
            }
            State::AfterCall => {}
            State::Params | State::Key(_) | State::BeforeValue => {
                tracing::info!("a tool call was cut off; its arguments were closed");
                self.close_arguments(out);
                p.end_call(out);
            }
            State::Value => {
                tracing::info!("a tool call was cut off; its arguments were closed");
                if !self.lead_done && held.starts_with('\n') {
                    self.value_piece(out, &held[1..], true);
                } else {
                    self.value_piece(out, &held, true);
                }
                self.close_arguments(out);
                p.end_call(out);
            }
        }
    }
}

/// Cuts `name" string="VALUE` (a key, then its tag's attribute up to its last quote) to
/// the key; returns the attribute's value.
fn split_string_attr(key: &mut String) -> Option<&'static str> {
    let quote = key.find('"')?;
    let attr = key[quote + 1..].trim();
    let value = attr
        .strip_prefix("string")
        .map(str::trim_start)
        .and_then(|a| a.strip_prefix('='))
        .map(|a| a.trim_start().trim_start_matches('"').trim_end_matches('"'));
    let value = match value {
        Some("true") => Some("true"),
        Some("false") => Some("false"),
        _ => None,
    };
    key.truncate(quote);
    value
}

/// `text` as the inside of a JSON string.
fn escape_json(text: &str) -> String {
    let quoted = Value::String(text.to_owned()).to_string();
    quoted[1..quoted.len() - 1].to_owned()
}
