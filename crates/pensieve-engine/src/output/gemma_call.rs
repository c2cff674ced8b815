//! Calls in the syntax of the Gemma family: `call:name{key:value,...}` between the
//! format's markers, where strings are `<delim>text<delim>`, keys are bare, and numbers,
//! booleans, objects and arrays are written as in JSON. FunctionGemma delimits strings
//! with `<escape>`, Gemma 4 with `<|"|>`. The arguments are translated to JSON as they
//! stream.

use super::json::JsonScanner;
use super::{is_tool_name, CallReader, Core, Next, Segment};

/// How far `call:name` may run without its `{` before the call is taken for text.
const MAX_HEAD: usize = 256;

/// One family member's markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GemmaSyntax {
    /// Opens a call.
    pub open: &'static str,
    /// Closes a call.
    pub close: &'static str,
    /// Delimits a string on both sides.
    pub delim: &'static str,
}

/// One call being read.
#[derive(Debug)]
pub(crate) struct GemmaCall {
    syntax: GemmaSyntax,
    /// The text before the arguments' `{`: `call:name`.
    head: String,
    /// Set once the name is read.
    args: Option<Translator>,
    /// The arguments are complete; the closing marker may follow.
    args_done: bool,
}

impl GemmaCall {
    pub(crate) fn new(syntax: GemmaSyntax) -> GemmaCall {
        GemmaCall {
            syntax,
            head: String::new(),
            args: None,
            args_done: false,
        }
    }

    /// What followed the marker is no call: give it back as text.
    fn not_a_call(&mut self, p: &mut Core, out: &mut Vec<Segment>) -> Next {
        tracing::warn!(body = %self.head, "a tool call could not be parsed; returned as text");
        let text = format!("{}{}", self.syntax.open, self.head);
        p.emit(out, Segment::Text(text));
        Next::Text
    }
}

impl CallReader for GemmaCall {
    fn read(&mut self, p: &mut Core, out: &mut Vec<Segment>) -> Next {
        let Some(args) = self.args.as_mut() else {
            let at = p.held.find('{');
            self.head.extend(p.held.drain(..at.unwrap_or(p.held.len())));
            if !is_call_head(&self.head) || self.head.len() > MAX_HEAD {
                return self.not_a_call(p, out);
            }
            if at.is_none() {
                return Next::Wait;
            }
            let head = self.head.trim();
            let name = head.strip_prefix("call:").unwrap_or(head).trim().to_owned();
            if !is_tool_name(&name) {
                return self.not_a_call(p, out);
            }
            self.args = Some(Translator::new(self.syntax.delim));
            p.start_call(out, name);
            return Next::Again;
        };
        if !self.args_done {
            let (consumed, json, status) = args.push(&p.held);
            p.held.drain(..consumed);
            if !json.is_empty() {
                out.push(Segment::CallArguments(json));
            }
            match status {
                Status::More => return Next::Wait,
                Status::Done => self.args_done = true,
                Status::Invalid => {
                    tracing::warn!("a tool call's arguments are not well-formed; closed");
                    let rest = args.completion();
                    if !rest.is_empty() {
                        out.push(Segment::CallArguments(rest));
                    }
                    self.args_done = true;
                }
            }
        }
        // The closing marker, when it comes, belongs to the call.
        let close = self.syntax.close;
        let trimmed = p.held.trim_start();
        if trimmed.is_empty() || (close.starts_with(trimmed) && trimmed != close) {
            return Next::Wait;
        }
        if let Some(rest) = trimmed.strip_prefix(close) {
            p.held = rest.to_owned();
        }
        p.end_call(out);
        Next::Text
    }

    /// The output ended inside a call.
    fn finish(&mut self, p: &mut Core, out: &mut Vec<Segment>) {
        let held = std::mem::take(&mut p.held);
        match self.args.as_mut() {
            Some(args) => {
                if !self.args_done {
                    let (_, mut json, status) = args.push(&held);
                    if status == Status::Done {
                        p.calls += 1;
                    } else {
                        json.push_str(&args.completion());
                        tracing::info!("a tool call was cut off; its arguments were closed");
                    }
                    if !json.is_empty() {
                        out.push(Segment::CallArguments(json));
                    }
                } else {
                    p.calls += 1;
                }
                out.push(Segment::CallEnd);
            }
            None => {
                tracing::info!(body = %format!("{}{held}", self.head), "a tool call was cut off before its arguments; dropped");
            }
        }
    }
}

/// Whether `head` is, or may become, `call:name`.
fn is_call_head(head: &str) -> bool {
    let head = head.trim_start();
    match head.strip_prefix("call:") {
        Some(name) => name.is_empty() || is_tool_name(name.trim_end()),
        None => "call:".starts_with(head),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// The arguments go on.
    More,
    /// The arguments object is complete.
    Done,
    /// What came can't continue them.
    Invalid,
}

/// Where the translator is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// A value must come.
    Value,
    /// Inside an object, where a key (or, first, `}`) comes; the key so far.
    Key {
        first: bool,
        key: String,
    },
    /// Inside a delimited string.
    Str,
    /// A bare literal: a number, `true`, `false`, `null`, or a word taken for a string.
    Literal(String),
    /// After a value: `,` or the end of its container.
    After,
    Done,
}

/// The Gemma family's argument syntax in, JSON out.
#[derive(Debug, Clone)]
struct Translator {
    /// The string delimiter.
    delim: &'static str,
    state: State,
    /// Open containers: true for objects.
    stack: Vec<bool>,
    /// A value must follow the `,` just written in an array: `]` can't close it there.
    after_comma: bool,
    /// The JSON written so far, followed to close it if the output is cut off.
    shadow: JsonScanner,
}

impl Translator {
    fn new(delim: &'static str) -> Self {
        Translator {
            delim,
            state: State::Value,
            stack: Vec::new(),
            after_comma: false,
            shadow: JsonScanner::default(),
        }
    }
}

impl Translator {
    /// Translate what it can of `text`: (bytes consumed, JSON, status). Text that may be
    /// the start of `<escape>` waits for more.
    fn push(&mut self, text: &str) -> (usize, String, Status) {
        let mut json = String::new();
        let mut at = 0;
        let status = loop {
            let rest = &text[at..];
            let Some(c) = rest.chars().next() else {
                break Status::More;
            };
            if self.state == State::Str {
                match rest.find(self.delim) {
                    Some(end) => {
                        json.push_str(&escape_json(&rest[..end]));
                        json.push('"');
                        at += end + self.delim.len();
                        self.state = State::After;
                    }
                    None => {
                        let keep = partial_marker(rest, self.delim);
                        json.push_str(&escape_json(&rest[..rest.len() - keep]));
                        at = text.len() - keep;
                        break Status::More;
                    }
                }
                continue;
            }
            if rest.starts_with('<') && self.state == State::Value {
                if rest.starts_with(self.delim) {
                    json.push('"');
                    at += self.delim.len();
                    self.state = State::Str;
                    continue;
                }
                if self.delim.starts_with(rest) {
                    break Status::More;
                }
                break Status::Invalid;
            }
            match self.step(c, &mut json) {
                Status::More => at += c.len_utf8(),
                Status::Done => {
                    at += c.len_utf8();
                    break Status::Done;
                }
                Status::Invalid => break Status::Invalid,
            }
        };
        for c in json.chars() {
            self.shadow.push(c);
        }
        (at, json, status)
    }

    /// One character outside strings.
    fn step(&mut self, c: char, json: &mut String) -> Status {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Done | State::Str => Status::Invalid,
            State::Value => match c {
                c if c.is_whitespace() => {
                    self.state = State::Value;
                    Status::More
                }
                '{' => {
                    json.push('{');
                    self.stack.push(true);
                    self.state = State::Key {
                        first: true,
                        key: String::new(),
                    };
                    Status::More
                }
                '[' => {
                    json.push('[');
                    self.stack.push(false);
                    self.after_comma = false;
                    self.state = State::Value;
                    Status::More
                }
                // `[]`: an empty array; `[x,]` is no JSON (nor Gemma's syntax).
                ']' if self.stack.last() == Some(&false) && self.after_comma => Status::Invalid,
                ']' if self.stack.last() == Some(&false) => {
                    self.state = State::After;
                    self.after(c, json)
                }
                ',' | '}' | ':' => Status::Invalid,
                c => {
                    self.state = State::Literal(c.to_string());
                    Status::More
                }
            },
            // A key between delimiters (Gemma 4's template writes the keys of objects in
            // tool declarations so) may hold what would end a bare one.
            State::Key { first, mut key } if in_delimited(&key, self.delim) => {
                key.push(c);
                self.state = State::Key { first, key };
                Status::More
            }
            State::Key { first, mut key } => match c {
                '}' if first && key.trim().is_empty() => {
                    self.state = State::After;
                    self.after(c, json)
                }
                ':' if !key.trim().is_empty() => {
                    let name = key.trim().trim_matches('"');
                    let name = name.strip_prefix(self.delim).unwrap_or(name);
                    let name = name.strip_suffix(self.delim).unwrap_or(name);
                    if !first {
                        json.push(',');
                    }
                    json.push_str(&serde_json::Value::String(name.to_owned()).to_string());
                    json.push(':');
                    self.state = State::Value;
                    Status::More
                }
                ',' | '{' | '}' | '[' | ']' => Status::Invalid,
                c => {
                    key.push(c);
                    self.state = State::Key { first, key };
                    Status::More
                }
            },
            State::Literal(mut word) => match c {
                ',' | '}' | ']' => {
                    json.push_str(&literal_json(&word));
                    self.state = State::After;
                    self.after(c, json)
                }
                c => {
                    word.push(c);
                    self.state = State::Literal(word);
                    Status::More
                }
            },
            State::After => self.after(c, json),
        }
    }

    fn after(&mut self, c: char, json: &mut String) -> Status {
        match (c, self.stack.last()) {
            (c, _) if c.is_whitespace() => {
                self.state = State::After;
                Status::More
            }
            (',', Some(true)) => {
                // The comma is written with the next key.
                self.state = State::Key {
                    first: false,
                    key: String::new(),
                };
                Status::More
            }
            (',', Some(false)) => {
                json.push(',');
                self.after_comma = true;
                self.state = State::Value;
                Status::More
            }
            ('}', Some(true)) | (']', Some(false)) => {
                json.push(c);
                self.stack.pop();
                if self.stack.is_empty() {
                    self.state = State::Done;
                    Status::Done
                } else {
                    self.state = State::After;
                    Status::More
                }
            }
            _ => Status::Invalid,
        }
    }

    /// JSON that closes what was written so far.
    fn completion(&self) -> String {
        let mut shadow = self.shadow.clone();
        let mut out = match &self.state {
            State::Literal(word) => literal_json(word),
            _ => String::new(),
        };
        for c in out.chars() {
            shadow.push(c);
        }
        out.push_str(&shadow.completion());
        out
    }
}

/// Whether `key` opened with the delimiter and has not yet closed it.
fn in_delimited(key: &str, delim: &str) -> bool {
    key.trim_start()
        .strip_prefix(delim)
        .is_some_and(|inside| !inside.contains(delim))
}

/// A bare literal as JSON: itself when it is a JSON number or keyword, else a string.
fn literal_json(word: &str) -> String {
    let word = word.trim();
    let is_json = matches!(word, "true" | "false" | "null")
        || serde_json::from_str::<serde_json::Number>(word).is_ok();
    if is_json {
        word.to_owned()
    } else {
        serde_json::Value::String(word.to_owned()).to_string()
    }
}

/// `text` as the inside of a JSON string.
fn escape_json(text: &str) -> String {
    let quoted = serde_json::Value::String(text.to_owned()).to_string();
    quoted[1..quoted.len() - 1].to_owned()
}

/// The length of the longest tail of `text` that could grow into `marker`.
fn partial_marker(text: &str, marker: &str) -> usize {
    (1..marker.len())
        .rev()
        .find(|&len| marker.is_char_boundary(len) && text.ends_with(&marker[..len]))
        .unwrap_or(0)
}
