//! JSON call objects, `{"name": "...", "arguments": {...}}`: between Hermes tags, bare
//! (Llama 3, small models that drop their tags, code fences), or as the elements of
//! Mistral's `[TOOL_CALLS][...]` array. The header is read first so that the arguments
//! can stream as they are generated.

use super::json::{JsonScanner, Scan};
use super::{find_marker, CallReader, Core, Found, Next, Segment, ToolFormat, FENCES};

/// A call object being read.
#[derive(Debug, Default)]
pub(crate) struct JsonCall {
    /// The call's text after the opening marker.
    body: String,
    /// Set once `{"name": "...", "arguments":` has been read and the call announced.
    args: Option<JsonScanner>,
    /// The arguments are complete (or were closed).
    args_done: bool,
    /// The header is not of the streamable shape: wait for the closing marker.
    buffered: bool,
    /// Between tags: the closing one ends the call. Else the call ends with its object.
    close: Option<&'static str>,
    /// The call is its arguments alone (Mistral's `name[ARGS]{...}`): it ends with them.
    arguments_only: bool,
    /// The object after its arguments (other keys, such as Mistral's `"id"`), until `}`.
    rest: Option<JsonScanner>,
    /// A bare call inside a code fence: the fence's opening, given back as text should
    /// the object not be a call.
    fence: &'static str,
    /// What may follow a bare call's object, each optional, in order: the fence's "```",
    /// an array's `,` or `]`, Llama's `;`.
    closers: Vec<&'static str>,
}

impl JsonCall {
    pub(crate) fn tagged(close: &'static str) -> JsonCall {
        JsonCall {
            close: Some(close),
            ..JsonCall::default()
        }
    }

    /// A call whose name was read: its arguments follow, and end it.
    pub(crate) fn arguments_only(scanner: JsonScanner) -> JsonCall {
        JsonCall {
            args: Some(scanner),
            arguments_only: true,
            ..JsonCall::default()
        }
    }
}

/// Whether a call object without its marker starts where text mode stands.
pub(super) enum BareStart {
    Started(JsonCall),
    /// Whitespace, or what may still become one: wait.
    Maybe,
    No,
}

/// Where a block starts, a call object without its marker (perhaps in a code fence).
pub(super) fn bare_call_start(p: &mut Core) -> BareStart {
    let trimmed = p.held.trim_start();
    let mut may_start = false;
    for fence in FENCES {
        match bare_object(trimmed, fence) {
            Bare::Yes => {
                let skip = p.held.len() - trimmed.len() + fence.len();
                p.held.drain(..skip);
                let mut closers = Vec::new();
                if !fence.is_empty() {
                    closers.push("```");
                }
                if p.in_array {
                    closers.extend([",", "]"]);
                }
                if p.format.tools == Some(ToolFormat::LLAMA3_JSON) {
                    closers.push(";");
                }
                return BareStart::Started(JsonCall {
                    fence,
                    closers,
                    ..JsonCall::default()
                });
            }
            Bare::Maybe => may_start = true,
            Bare::No => {}
        }
    }
    if may_start {
        BareStart::Maybe
    } else {
        BareStart::No
    }
}

impl CallReader for JsonCall {
    fn read(&mut self, p: &mut Core, out: &mut Vec<Segment>) -> Next {
        // Arguments stream until the scanner says the object ended.
        if let (false, Some(scanner)) = (self.args_done, self.args.as_mut()) {
            let (consumed, fragment, done) = stream_json(scanner, &p.held, &self.body);
            self.body.extend(p.held.drain(..consumed));
            if !fragment.is_empty() {
                out.push(Segment::CallArguments(fragment));
            }
            if !done {
                return Next::Wait;
            }
            self.args_done = true;
        }
        let Some(close) = self.close else {
            return self.bare_call(p, out);
        };
        // The closing marker ends the call; what comes between the arguments and it is
        // ignored.
        match find_marker(&p.held, &[close]) {
            Found::At(at, marker) => {
                self.body.extend(p.held.drain(..at));
                if self.read_header(p, out) {
                    return Next::Again;
                }
                p.held.drain(..marker.len());
                self.end_tagged_call(p, out, close);
                Next::Text
            }
            Found::No { safe } => {
                self.body.extend(p.held.drain(..safe));
                if self.read_header(p, out) {
                    Next::Again
                } else {
                    Next::Wait
                }
            }
        }
    }

    /// The output ended inside a call object.
    fn finish(&mut self, p: &mut Core, out: &mut Vec<Segment>) {
        self.body.push_str(&std::mem::take(&mut p.held));
        match &self.args {
            Some(scanner) => {
                if self.args_done {
                    // Only what follows the arguments is missing.
                    p.calls += 1;
                } else {
                    let rest = scanner.completion();
                    if !rest.is_empty() {
                        out.push(Segment::CallArguments(rest));
                    }
                    tracing::info!("a tool call was cut off; its arguments were closed");
                }
                out.push(Segment::CallEnd);
            }
            None if self.close.is_none() => {
                tracing::info!(body = %self.body, "a tool call was cut off before its arguments; dropped");
            }
            None => match parse_whole_call(&self.body) {
                Some((name, arguments)) => {
                    p.emit(out, Segment::CallStart { name });
                    out.push(Segment::CallArguments(arguments));
                    out.push(Segment::CallEnd);
                    p.calls += 1;
                }
                None => {
                    tracing::info!(body = %self.body, "a tool call was cut off before its name; dropped");
                }
            },
        }
    }
}

impl JsonCall {
    /// A call without tags: it ends where its object does.
    fn bare_call(&mut self, p: &mut Core, out: &mut Vec<Segment>) -> Next {
        if self.args_done && self.arguments_only {
            p.end_call(out);
            return Next::Text;
        }
        if self.args_done {
            // The rest of the object: other keys are skipped.
            let rest = self.rest.get_or_insert_with(JsonScanner::rest_of_object);
            let mut consumed = None;
            for (i, c) in p.held.char_indices() {
                match rest.push(c) {
                    Scan::Inside => {}
                    Scan::Complete => {
                        consumed = Some(i + c.len_utf8());
                        break;
                    }
                    Scan::EndedBefore | Scan::Invalid => {
                        consumed = Some(i);
                        break;
                    }
                }
            }
            let Some(consumed) = consumed else {
                p.held.clear();
                return Next::Wait;
            };
            p.held.drain(..consumed);
            // Then what may follow the object; anything else is text.
            while let Some(&closer) = self.closers.first() {
                let trimmed = p.held.trim_start();
                if trimmed.is_empty() || (closer.starts_with(trimmed) && trimmed != closer) {
                    return Next::Wait;
                }
                let ws = p.held.len() - trimmed.len();
                if trimmed.starts_with(closer) {
                    p.held.drain(..ws + closer.len());
                    if closer == "]" {
                        p.in_array = false;
                    }
                }
                self.closers.remove(0);
            }
            p.end_call(out);
            return Next::Text;
        }
        self.body.extend(p.held.drain(..));
        if self.read_header(p, out) {
            return Next::Again;
        }
        // Not a call after all: it was text.
        if self.buffered {
            let text = format!("{}{}", self.fence, self.body);
            p.in_array = false;
            p.emit_text(out, &text);
            return Next::Text;
        }
        Next::Wait
    }

    /// Before its arguments stream: once `{"name": "...", "arguments": ` is read, announce
    /// the call and put the arguments back to be streamed. True when it did.
    fn read_header(&mut self, p: &mut Core, out: &mut Vec<Segment>) -> bool {
        if self.args.is_some() || self.buffered {
            return false;
        }
        let tagged = self.close.is_some();
        match parse_header(&self.body) {
            // Without its marker, an object naming no offered tool is text.
            Header::Complete { name, .. } if !tagged && !p.offers(&name) => {
                self.buffered = true;
                false
            }
            Header::Complete { name, value_start } if self.body[value_start..].starts_with('{') => {
                let value = self.body.split_off(value_start);
                p.held.insert_str(0, &value);
                self.args = Some(JsonScanner::default());
                p.start_call(out, name);
                true
            }
            Header::Incomplete => false,
            Header::Complete { .. } | Header::Mismatch => {
                self.buffered = true;
                false
            }
        }
    }

    fn end_tagged_call(&mut self, p: &mut Core, out: &mut Vec<Segment>, close: &str) {
        if self.args.is_some() {
            p.end_call(out);
            return;
        }
        // Not streamed: parse the whole body now.
        match parse_whole_call(&self.body) {
            Some((name, arguments)) => {
                p.emit(out, Segment::CallStart { name });
                out.push(Segment::CallArguments(arguments));
                p.end_call(out);
            }
            None => {
                tracing::warn!(body = %self.body, "a tool call could not be parsed; returned as text");
                let open = p.format.tools.map_or("", ToolFormat::open);
                let text = format!("{open}{}{close}", self.body);
                p.emit(out, Segment::Text(text));
            }
        }
    }
}

/// How far the start of an object without a marker names a tool.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BareName {
    /// `{"name": "...` so far.
    Pending,
    /// `{"name": "<name>"` written.
    Named(String),
    /// Not the start of a call object.
    NotACall,
}

/// Reads `{"name": "<name>"` (whitespace allowed) at the start of `text`.
pub(crate) fn bare_call_name(text: &str) -> BareName {
    let mut rest = text.trim_start();
    for part in ["{", "\"name\"", ":", "\""] {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix(part) {
            rest = r;
        } else if part.starts_with(rest) {
            return BareName::Pending;
        } else {
            return BareName::NotACall;
        }
    }
    match string_end(rest) {
        Some(end) => serde_json::from_str::<String>(&format!("\"{}", &rest[..=end]))
            .map_or(BareName::NotACall, BareName::Named),
        None => BareName::Pending,
    }
}

enum Bare {
    Yes,
    /// Not yet: more text will tell.
    Maybe,
    No,
}

/// Whether `text` starts with `fence` and then `{"name"` (whitespace allowed after `{`).
fn bare_object(text: &str, fence: &str) -> Bare {
    let Some(rest) = text.strip_prefix(fence) else {
        return if fence.starts_with(text) {
            Bare::Maybe
        } else {
            Bare::No
        };
    };
    let Some(rest) = rest.strip_prefix('{') else {
        return if rest.is_empty() {
            Bare::Maybe
        } else {
            Bare::No
        };
    };
    let rest = rest.trim_start();
    if rest.starts_with("\"name\"") {
        Bare::Yes
    } else if "\"name\"".starts_with(rest) {
        Bare::Maybe
    } else {
        Bare::No
    }
}

/// Feed `held` to an arguments scanner: (bytes consumed, the JSON they add, whether the
/// value is complete). Text that can't continue the value ends it, closed.
pub(crate) fn stream_json(
    scanner: &mut JsonScanner,
    held: &str,
    body: &str,
) -> (usize, String, bool) {
    let mut fragment = String::new();
    for (i, c) in held.char_indices() {
        match scanner.push(c) {
            Scan::Inside => fragment.push(c),
            Scan::Complete => {
                fragment.push(c);
                return (i + c.len_utf8(), fragment, true);
            }
            Scan::EndedBefore | Scan::Invalid => {
                // Not JSON any more: close what was streamed.
                tracing::warn!(body = %body, "a tool call's arguments are not valid JSON; closed");
                fragment.push_str(&scanner.completion());
                return (i, fragment, true);
            }
        }
    }
    (held.len(), fragment, false)
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
    // A call names a tool: one named "" is parsed whole at its end, and refused there.
    if name.is_empty() {
        return Header::Mismatch;
    }
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
    let name = value
        .get("name")?
        .as_str()
        .filter(|n| !n.is_empty())?
        .to_owned();
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
