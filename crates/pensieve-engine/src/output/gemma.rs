//! FunctionGemma's calls: `<start_function_call>call:name{key:value,...}<end_function_call>`,
//! where strings are `<escape>text<escape>`, keys are bare, and numbers, booleans,
//! objects and arrays are written as in JSON. The arguments are translated to JSON as
//! they stream.

use super::json::JsonScanner;
use super::{is_tool_name, Mode, OutputParser, Segment, GEMMA_CALL_CLOSE, GEMMA_ESCAPE};

/// How far `call:name` may run without its `{` before the call is taken for text.
const MAX_HEAD: usize = 256;

/// One call being read.
#[derive(Debug, Default)]
pub(super) struct GemmaCall {
    /// The text before the arguments' `{`: `call:name`.
    head: String,
    /// Set once the name is read.
    args: Option<Translator>,
    /// The arguments are complete; the closing marker may follow.
    args_done: bool,
}

impl OutputParser {
    pub(super) fn gemma_call(&mut self, out: &mut Vec<Segment>) -> bool {
        let Mode::Gemma(call) = &mut self.mode else {
            return false;
        };
        let Some(args) = call.args.as_mut() else {
            let at = self.held.find('{');
            call.head
                .extend(self.held.drain(..at.unwrap_or(self.held.len())));
            if !is_call_head(&call.head) || call.head.len() > MAX_HEAD {
                return self.gemma_not_a_call(out);
            }
            if at.is_none() {
                return false;
            }
            let head = call.head.trim();
            let name = head.strip_prefix("call:").unwrap_or(head).trim().to_owned();
            if !is_tool_name(&name) {
                return self.gemma_not_a_call(out);
            }
            call.args = Some(Translator::default());
            self.in_text = false;
            out.push(Segment::CallStart { name });
            return true;
        };
        if !call.args_done {
            let (consumed, json, status) = args.push(&self.held);
            self.held.drain(..consumed);
            if !json.is_empty() {
                out.push(Segment::CallArguments(json));
            }
            match status {
                Status::More => return false,
                Status::Done => call.args_done = true,
                Status::Invalid => {
                    tracing::warn!("a tool call's arguments are not well-formed; closed");
                    let rest = args.completion();
                    if !rest.is_empty() {
                        out.push(Segment::CallArguments(rest));
                    }
                    call.args_done = true;
                }
            }
        }
        // The closing marker, when it comes, belongs to the call.
        let trimmed = self.held.trim_start();
        if trimmed.is_empty()
            || (GEMMA_CALL_CLOSE.starts_with(trimmed) && trimmed != GEMMA_CALL_CLOSE)
        {
            return false;
        }
        if let Some(rest) = trimmed.strip_prefix(GEMMA_CALL_CLOSE) {
            self.held = rest.to_owned();
        }
        self.end_call(out);
        true
    }

    /// What followed the marker is no call: give it back as text.
    fn gemma_not_a_call(&mut self, out: &mut Vec<Segment>) -> bool {
        let Mode::Gemma(call) = std::mem::replace(&mut self.mode, Mode::Text) else {
            return false;
        };
        tracing::warn!(body = %call.head, "a tool call could not be parsed; returned as text");
        let text = format!("{}{}", super::GEMMA_CALL_OPEN, call.head);
        self.emit(out, Segment::Text(text));
        true
    }

    /// The output ended inside a call.
    pub(super) fn finish_gemma(&mut self, out: &mut Vec<Segment>, mut call: GemmaCall, held: &str) {
        match call.args.as_mut() {
            Some(args) => {
                if !call.args_done {
                    let (_, json, status) = args.push(held);
                    let mut json = json;
                    if status == Status::Done {
                        self.calls += 1;
                    } else {
                        json.push_str(&args.completion());
                        tracing::info!("a tool call was cut off; its arguments were closed");
                    }
                    if !json.is_empty() {
                        out.push(Segment::CallArguments(json));
                    }
                } else {
                    self.calls += 1;
                }
                out.push(Segment::CallEnd);
            }
            None => {
                tracing::info!(body = %format!("{}{held}", call.head), "a tool call was cut off before its arguments; dropped");
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
    /// Inside `<escape>...<escape>`.
    Str,
    /// A bare literal: a number, `true`, `false`, `null`, or a word taken for a string.
    Literal(String),
    /// After a value: `,` or the end of its container.
    After,
    Done,
}

/// FunctionGemma's argument syntax in, JSON out.
#[derive(Debug, Clone)]
struct Translator {
    state: State,
    /// Open containers: true for objects.
    stack: Vec<bool>,
    /// The JSON written so far, followed to close it if the output is cut off.
    shadow: JsonScanner,
}

impl Default for Translator {
    fn default() -> Self {
        Translator {
            state: State::Value,
            stack: Vec::new(),
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
                match rest.find(GEMMA_ESCAPE) {
                    Some(end) => {
                        json.push_str(&escape_json(&rest[..end]));
                        json.push('"');
                        at += end + GEMMA_ESCAPE.len();
                        self.state = State::After;
                    }
                    None => {
                        let keep = partial_escape(rest);
                        json.push_str(&escape_json(&rest[..rest.len() - keep]));
                        at = text.len() - keep;
                        break Status::More;
                    }
                }
                continue;
            }
            if rest.starts_with('<') && self.state == State::Value {
                if rest.starts_with(GEMMA_ESCAPE) {
                    json.push('"');
                    at += GEMMA_ESCAPE.len();
                    self.state = State::Str;
                    continue;
                }
                if GEMMA_ESCAPE.starts_with(rest) {
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
                    self.state = State::Value;
                    Status::More
                }
                // `[]`: an empty array.
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
            State::Key { first, mut key } => match c {
                '}' if first && key.trim().is_empty() => {
                    self.state = State::After;
                    self.after(c, json)
                }
                ':' if !key.trim().is_empty() => {
                    let name = key.trim().trim_matches('"');
                    let name = name.strip_prefix(GEMMA_ESCAPE).unwrap_or(name);
                    let name = name.strip_suffix(GEMMA_ESCAPE).unwrap_or(name);
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

/// The length of the longest tail of `text` that could grow into `<escape>`.
fn partial_escape(text: &str) -> usize {
    (1..GEMMA_ESCAPE.len())
        .rev()
        .find(|&len| text.ends_with(&GEMMA_ESCAPE[..len]))
        .unwrap_or(0)
}
