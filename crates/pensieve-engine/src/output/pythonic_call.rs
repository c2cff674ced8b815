//! Calls written as a Python list of function calls with keyword arguments, between the
//! format's markers (LFM2 and LFM2.5):
//!
//! ```text
//! <|tool_call_start|>[Bash(command="ls -la", timeout=30), Read(file_path='/tmp/a')]<|tool_call_end|>
//! ```
//!
//! Values are Python literals: strings in either quote (with Python's escapes; also
//! triple-quoted and raw), numbers, `True`/`False`/`None`, lists, tuples and dicts, which
//! become JSON as they stream; a string's text streams as it comes. What the models write
//! besides Python is read too: JSON's `true`/`false`/`null`, raw line breaks inside a
//! string, keys that are no identifiers (Claude Code's `-n`), and a quote of the
//! string's own kind left unescaped inside it (`'sed -n '1,9p' a.py'`, as LFM2.5's
//! template writes strings back): a quote closes the string only where a `,`, `)`, `]`,
//! `}` or `:` follows it.
//!
//! LFM2 often repeats the call text after the closing marker, sometimes capped with a
//! second closing marker; a repeat of exactly the block just read is dropped.

use super::json::JsonScanner;
use super::{is_tool_name, CallReader, Core, Next, Segment};

/// How long a key may run before the call is taken for no call.
const MAX_KEY: usize = 256;
/// How long a bare literal (a number, `None`) may run.
const MAX_WORD: usize = 256;

/// The markers around a block of calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PythonicSyntax {
    pub open: &'static str,
    pub close: &'static str,
}

/// The block of calls after the opening marker, one call after the other.
#[derive(Debug)]
pub(crate) struct PythonicCall {
    syntax: PythonicSyntax,
    state: State,
    /// Open containers of the current call, the call's arguments at the bottom.
    stack: Vec<Frame>,
    /// The calls are in a list (`[...]`), as the models write them.
    bracketed: bool,
    /// A `,` was read; it is written before the next value, so that a trailing one
    /// never reaches the JSON.
    comma: bool,
    /// The block's text up to its closing marker, which a repeat after it must match.
    block: String,
    /// The current call's JSON so far, to close it when it is cut off.
    shadow: JsonScanner,
    /// JSON not yet emitted.
    json: String,
    /// String text read but not yet written into `json`.
    text: String,
    /// Calls started in this block.
    calls: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quote {
    ch: char,
    triple: bool,
    raw: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// After the marker: `[`, or a call's name.
    Open,
    /// A call's name, up to its `(`.
    Name(String),
    /// In a call's arguments: a key up to its `=`, or the call's `)`.
    Key(String),
    /// A value must come (or, where allowed, its container's end).
    Value,
    /// A bare literal: a number, `True`, `None`, or a string's prefix (`r`).
    Word(String),
    Str(Quote),
    /// After a quote that may close the string, and the whitespace after it: what
    /// follows says whether it does.
    Closing {
        quote: Quote,
        space: String,
    },
    /// After a value: `,` or its container's end.
    After,
    /// After a call's `)`: `,` and another call, or the list's `]`.
    AfterCall,
    /// After the list: the closing marker.
    AfterList,
    /// The block is not well-formed: skipped up to its closing marker.
    Skip,
    /// After the closing marker: a repeat of the block is dropped.
    Echo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// A call's keyword arguments.
    Args,
    /// A list or tuple, closed by this character.
    List(char),
    /// A dict; `value`: its key and `:` were read.
    Dict { value: bool },
}

/// What one step of reading did.
enum Step {
    /// It read this many bytes (none: the state changed and the text is read again).
    Took(usize),
    /// It needs more text.
    Wait,
    /// The block is over; what follows is text.
    Text,
    /// What follows can't continue the block.
    Invalid,
}

impl PythonicCall {
    pub(crate) fn new(syntax: PythonicSyntax) -> PythonicCall {
        PythonicCall {
            syntax,
            state: State::Open,
            stack: Vec::new(),
            bracketed: false,
            comma: false,
            block: String::new(),
            shadow: JsonScanner::default(),
            json: String::new(),
            text: String::new(),
            calls: 0,
        }
    }

    /// Reads `p.held`; at the `end` of the output, nothing more will come.
    fn run(&mut self, p: &mut Core, out: &mut Vec<Segment>, end: bool) -> Next {
        // Taken out while it is read: the steps write to the rest of `p`.
        let held = std::mem::take(&mut p.held);
        let mut at = 0;
        let next = loop {
            if self.state == State::Echo {
                break None;
            }
            let rest = &held[at..];
            match self.step(rest, end, p, out) {
                Step::Took(n) => {
                    if self.state != State::Echo {
                        self.block.push_str(&rest[..n]);
                    }
                    at += n;
                }
                Step::Wait => break Some(Next::Wait),
                Step::Text => break Some(Next::Text),
                Step::Invalid if self.calls == 0 => {
                    // Nothing was a call: the marker and what followed it are text.
                    tracing::warn!(body = %self.block, "a tool call could not be parsed; returned as text");
                    let text = format!("{}{}", self.syntax.open, self.block);
                    p.held = held[at..].to_owned();
                    p.emit(out, Segment::Text(text));
                    return Next::Text;
                }
                Step::Invalid => {
                    tracing::warn!(body = %self.block, "a tool call is not well-formed; closed, and the rest of its block dropped");
                    self.cut(p, out);
                    self.state = State::Skip;
                }
            }
        };
        self.emit(out);
        p.held = held[at..].to_owned();
        match next {
            Some(next) => next,
            None => self.echo(p, end),
        }
    }

    fn step(&mut self, rest: &str, end: bool, p: &mut Core, out: &mut Vec<Segment>) -> Step {
        let Some(c) = rest.chars().next() else {
            return Step::Wait;
        };
        let close = self.syntax.close;
        // The closing marker ends the block wherever it comes outside a string: a call
        // it cuts short is closed.
        let in_string = matches!(self.state, State::Str(_) | State::Closing { .. });
        if c == '<' && !in_string {
            if rest.starts_with(close) {
                if !matches!(self.state, State::Skip | State::AfterList | State::Open) {
                    if !self.stack.is_empty() {
                        tracing::info!("a tool call was cut short by its block's end; closed");
                    }
                    self.cut(p, out);
                }
                self.state = State::Echo;
                return Step::Took(close.len());
            }
            if close.starts_with(rest) && !end {
                return Step::Wait;
            }
        }
        let len = c.len_utf8();
        match std::mem::replace(&mut self.state, State::Skip) {
            State::Open => match c {
                c if c.is_whitespace() => {
                    self.state = State::Open;
                    Step::Took(len)
                }
                '[' => {
                    self.bracketed = true;
                    self.state = State::Name(String::new());
                    Step::Took(1)
                }
                c if is_name_char(c) => {
                    self.state = State::Name(String::new());
                    Step::Took(0)
                }
                _ => Step::Invalid,
            },
            State::Name(mut name) => match c {
                c if c.is_whitespace() && name.is_empty() => {
                    self.state = State::Name(name);
                    Step::Took(len)
                }
                // An empty list, or a comma after the last call.
                ']' if name.is_empty() && self.bracketed => {
                    self.state = State::AfterList;
                    Step::Took(1)
                }
                '(' if is_tool_name(&name) => {
                    self.emit(out);
                    p.start_call(out, name);
                    self.calls += 1;
                    self.shadow = JsonScanner::default();
                    self.stack.push(Frame::Args);
                    self.write("{");
                    self.state = State::Key(String::new());
                    Step::Took(1)
                }
                c if is_name_char(c) && name.len() < 128 => {
                    name.push(c);
                    self.state = State::Name(name);
                    Step::Took(len)
                }
                _ => Step::Invalid,
            },
            State::Key(mut key) => match c {
                ')' if key.trim().is_empty() => {
                    self.comma = false;
                    self.end_call(p, out)
                }
                '=' => {
                    let key = key.trim();
                    if key.is_empty() || key.contains(char::is_whitespace) {
                        return Step::Invalid;
                    }
                    self.begin_value();
                    self.write(&format!("{}: ", json_string(key)));
                    self.state = State::Value;
                    Step::Took(1)
                }
                '(' | ')' | '[' | ']' | '{' | '}' | ',' | '\'' | '"' | ':' | '<' => Step::Invalid,
                c if c.is_whitespace() && key.is_empty() => {
                    self.state = State::Key(key);
                    Step::Took(len)
                }
                c if key.len() < MAX_KEY => {
                    key.push(c);
                    self.state = State::Key(key);
                    Step::Took(len)
                }
                _ => Step::Invalid,
            },
            State::Value => self.value(c, rest, end),
            State::Word(mut word) => match c {
                c if is_word_char(c) && word.len() < MAX_WORD => {
                    word.push(c);
                    self.state = State::Word(word);
                    Step::Took(len)
                }
                '\'' | '"' if is_string_prefix(&word) => {
                    let raw = word.contains(['r', 'R']);
                    self.string(c, rest, end, raw, State::Word(word))
                }
                _ => {
                    self.literal(&word);
                    self.state = State::After;
                    Step::Took(0)
                }
            },
            State::Str(quote) => self.in_string(quote, rest, end),
            State::Closing { quote, mut space } => match c {
                ' ' | '\t' | '\n' | '\r' => {
                    space.push(c);
                    self.state = State::Closing { quote, space };
                    Step::Took(1)
                }
                ',' | ')' | ']' | '}' | ':' => {
                    self.write("\"");
                    self.state = State::After;
                    Step::Took(0)
                }
                '<' if rest.starts_with(close) => {
                    self.write("\"");
                    self.state = State::After;
                    Step::Took(0)
                }
                '<' if close.starts_with(rest) && !end => {
                    self.state = State::Closing { quote, space };
                    Step::Wait
                }
                // The quote was the string's own text.
                _ => {
                    self.text.push(quote.ch);
                    self.text.push_str(&space);
                    self.state = State::Str(quote);
                    Step::Took(0)
                }
            },
            State::After => self.after(c, p, out),
            State::AfterCall => match c {
                c if c.is_whitespace() => {
                    self.state = State::AfterCall;
                    Step::Took(len)
                }
                ',' => {
                    self.state = State::Name(String::new());
                    Step::Took(1)
                }
                ']' if self.bracketed => {
                    self.state = State::AfterList;
                    Step::Took(1)
                }
                _ if self.bracketed => Step::Invalid,
                // A call without the list's brackets, and text after it.
                _ => Step::Text,
            },
            State::AfterList => match c {
                c if c.is_whitespace() => {
                    self.state = State::AfterList;
                    Step::Took(len)
                }
                // No closing marker: what follows the list is text.
                _ => Step::Text,
            },
            State::Skip => {
                self.state = State::Skip;
                match rest.find('<') {
                    Some(0) => Step::Took(1),
                    Some(at) => Step::Took(at),
                    None => Step::Took(rest.len()),
                }
            }
            State::Echo => {
                self.state = State::Echo;
                Step::Wait
            }
        }
    }

    /// Where a value must come.
    fn value(&mut self, c: char, rest: &str, end: bool) -> Step {
        let top = self.stack.last().copied();
        match c {
            c if c.is_whitespace() => {
                self.state = State::Value;
                Step::Took(c.len_utf8())
            }
            '\'' | '"' => self.string(c, rest, end, false, State::Value),
            '[' | '(' | '{' => {
                if top == Some(Frame::Dict { value: false }) {
                    // A list or dict can't be a key.
                    return Step::Invalid;
                }
                self.begin_value();
                let (json, frame) = match c {
                    '[' => ("[", Frame::List(']')),
                    '(' => ("[", Frame::List(')')),
                    _ => ("{", Frame::Dict { value: false }),
                };
                self.write(json);
                self.stack.push(frame);
                self.state = State::Value;
                Step::Took(1)
            }
            // An empty container, or one with a comma after its last item.
            ']' | ')' | '}' if self.closes(c, true) => self.close_container(),
            c if is_word_char(c) => {
                self.state = State::Word(String::new());
                Step::Took(0)
            }
            _ => Step::Invalid,
        }
    }

    /// At a quote where a value starts (after its prefix, if any); `back` is the state
    /// to read it again from when more text is needed.
    fn string(&mut self, ch: char, rest: &str, end: bool, raw: bool, back: State) -> Step {
        let three: String = [ch; 3].iter().collect();
        let triple = rest.starts_with(&three);
        if !triple && !end && rest.len() < 3 && rest.chars().all(|c| c == ch) {
            // `''` may be an empty string or the start of `'''`.
            self.state = back;
            return Step::Wait;
        }
        self.begin_value();
        self.write("\"");
        self.state = State::Str(Quote { ch, triple, raw });
        Step::Took(if triple { 3 } else { 1 })
    }

    /// Inside a string.
    fn in_string(&mut self, quote: Quote, rest: &str, end: bool) -> Step {
        self.state = State::Str(quote);
        let close = self.syntax.close;
        let special = |c: char| c == quote.ch || c == '\\' || c == '<';
        let plain = rest.find(special).unwrap_or(rest.len());
        if plain > 0 {
            self.text.push_str(&rest[..plain]);
            return Step::Took(plain);
        }
        let Some(c) = rest.chars().next() else {
            return Step::Wait;
        };
        match c {
            '\\' if quote.raw => match rest[1..].chars().next() {
                // In a raw string a backslash keeps what follows, and a quote after it
                // does not close the string.
                Some(next) => {
                    self.text.push('\\');
                    self.text.push(next);
                    Step::Took(1 + next.len_utf8())
                }
                None if end => {
                    self.text.push('\\');
                    Step::Took(1)
                }
                None => Step::Wait,
            },
            '\\' => match escape(rest, end) {
                Some((len, text)) => {
                    self.text.push_str(&text);
                    Step::Took(len)
                }
                None => Step::Wait,
            },
            '<' if rest.starts_with(close) => {
                // The block's end inside a string: the call was cut short.
                self.state = State::After;
                Step::Took(0)
            }
            '<' if close.starts_with(rest) && !end => Step::Wait,
            '<' => {
                self.text.push('<');
                Step::Took(1)
            }
            _ if quote.triple => {
                let three: String = [quote.ch; 3].iter().collect();
                if rest.starts_with(&three) {
                    self.write("\"");
                    self.state = State::After;
                    Step::Took(3)
                } else if !end && rest.len() < 3 && rest.chars().all(|c| c == quote.ch) {
                    Step::Wait
                } else {
                    self.text.push(quote.ch);
                    Step::Took(1)
                }
            }
            _ => {
                self.state = State::Closing {
                    quote,
                    space: String::new(),
                };
                Step::Took(1)
            }
        }
    }

    /// After a value: `,`, `:` after a dict's key, or its container's end.
    fn after(&mut self, c: char, p: &mut Core, out: &mut Vec<Segment>) -> Step {
        self.state = State::After;
        let top = self.stack.last().copied();
        match (c, top) {
            (c, _) if c.is_whitespace() => Step::Took(c.len_utf8()),
            (',', Some(Frame::Args)) => {
                self.comma = true;
                self.state = State::Key(String::new());
                Step::Took(1)
            }
            (',', Some(Frame::List(_))) => {
                self.comma = true;
                self.state = State::Value;
                Step::Took(1)
            }
            (',', Some(Frame::Dict { value: true })) => {
                self.comma = true;
                self.set_top(Frame::Dict { value: false });
                self.state = State::Value;
                Step::Took(1)
            }
            (':', Some(Frame::Dict { value: false })) => {
                self.write(": ");
                self.set_top(Frame::Dict { value: true });
                self.state = State::Value;
                Step::Took(1)
            }
            (')', Some(Frame::Args)) => self.end_call(p, out),
            (']' | ')' | '}', _) if self.closes(c, false) => self.close_container(),
            _ => Step::Invalid,
        }
    }

    /// Whether `c` closes the innermost container here: right after a value, or where a
    /// value would come (`empty`: the container is empty or its last item had a comma).
    fn closes(&self, c: char, empty: bool) -> bool {
        match self.stack.last() {
            Some(Frame::List(close)) => c == *close,
            Some(Frame::Dict { value }) => c == '}' && (*value != empty),
            _ => false,
        }
    }

    fn close_container(&mut self) -> Step {
        self.comma = false;
        match self.stack.pop() {
            Some(Frame::Dict { .. }) => self.write("}"),
            _ => self.write("]"),
        }
        self.state = State::After;
        Step::Took(1)
    }

    /// The call's `)`.
    fn end_call(&mut self, p: &mut Core, out: &mut Vec<Segment>) -> Step {
        self.write("}");
        self.emit(out);
        self.stack.clear();
        p.end_call(out);
        self.state = State::AfterCall;
        Step::Took(1)
    }

    fn set_top(&mut self, frame: Frame) {
        if let Some(top) = self.stack.last_mut() {
            *top = frame;
        }
    }

    /// A value starts: the comma before it is written now.
    fn begin_value(&mut self) {
        if std::mem::take(&mut self.comma) {
            self.write(", ");
        }
    }

    /// A bare literal, as JSON (a dict's key as a string).
    fn literal(&mut self, word: &str) {
        self.begin_value();
        let mut json = python_literal(word);
        if self.stack.last() == Some(&Frame::Dict { value: false }) && !json.starts_with('"') {
            json = json_string(&json);
        }
        self.write(&json);
    }

    /// Appends JSON, after the string text read before it.
    fn write(&mut self, json: &str) {
        self.flush_text();
        for c in json.chars() {
            self.shadow.push(c);
        }
        self.json.push_str(json);
    }

    fn flush_text(&mut self) {
        if self.text.is_empty() {
            return;
        }
        let escaped = escape_json(&std::mem::take(&mut self.text));
        for c in escaped.chars() {
            self.shadow.push(c);
        }
        self.json.push_str(&escaped);
    }

    /// Emits the JSON written so far.
    fn emit(&mut self, out: &mut Vec<Segment>) {
        self.flush_text();
        if !self.json.is_empty() {
            out.push(Segment::CallArguments(std::mem::take(&mut self.json)));
        }
    }

    /// Closes the call that is open, if any, so that its arguments parse.
    fn cut(&mut self, p: &mut Core, out: &mut Vec<Segment>) {
        if self.stack.is_empty() {
            return;
        }
        if let State::Word(word) = std::mem::replace(&mut self.state, State::Skip) {
            self.literal(&word);
        }
        self.flush_text();
        let rest = self.shadow.completion();
        self.json.push_str(&rest);
        self.emit(out);
        self.stack.clear();
        self.comma = false;
        p.end_call(out);
    }

    /// After the closing marker: drops a repeat of the block (and of the marker).
    fn echo(&mut self, p: &mut Core, end: bool) -> Next {
        let held = p.held.trim_start();
        if held.is_empty() && !end {
            return Next::Wait;
        }
        let block = self.block.trim();
        let repeat = format!("{block}{}", self.syntax.close);
        if repeat.starts_with(held) {
            if end {
                // Cut off inside the repeat.
                p.held.clear();
                return Next::Text;
            }
            return Next::Wait;
        }
        let drop = if held.starts_with(&repeat) {
            repeat.len()
        } else if !block.is_empty() && held.starts_with(block) {
            block.len()
        } else {
            return Next::Text;
        };
        tracing::debug!("the model repeated its tool call after it; dropped");
        let skip = p.held.len() - held.len() + drop;
        p.held.drain(..skip);
        Next::Text
    }
}

impl CallReader for PythonicCall {
    fn read(&mut self, p: &mut Core, out: &mut Vec<Segment>) -> Next {
        if self.state == State::Echo {
            return self.echo(p, false);
        }
        self.run(p, out, false)
    }

    fn finish(&mut self, p: &mut Core, out: &mut Vec<Segment>) {
        if self.state != State::Echo {
            self.run(p, out, true);
        }
        match &self.state {
            State::Echo | State::AfterCall | State::AfterList | State::Skip => {}
            State::Open | State::Name(_) if self.calls == 0 => {
                tracing::info!(body = %self.block, "a tool call was cut off before its name; dropped");
            }
            _ => {
                if !self.stack.is_empty() {
                    tracing::info!("a tool call was cut off; its arguments were closed");
                }
                self.cut(p, out);
            }
        }
        p.held.clear();
    }
}

/// Characters of a call's name (dotted names too: `grocery.order`).
fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// Characters of a bare literal: `-1.5e-3`, `0x1F`, `1_000`, `True`.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '+' | '-')
}

/// Python's string prefixes (`r`, `b`, `u`, `f`, `rb`, ...).
fn is_string_prefix(word: &str) -> bool {
    (1..=2).contains(&word.len()) && word.chars().all(|c| "rRbBuUfF".contains(c))
}

/// A Python literal as JSON: `True` and `None` (and JSON's own `true`, `null`), numbers
/// in Python's forms (`07`, `1_000`, `0x1F`, `1.`, `.5`); any other word as a string.
fn python_literal(word: &str) -> String {
    match word {
        "True" | "true" => return "true".into(),
        "False" | "false" => return "false".into(),
        "None" | "null" => return "null".into(),
        _ => {}
    }
    let plain = word.replace('_', "");
    let (sign, digits) = match plain.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", plain.strip_prefix('+').unwrap_or(&plain)),
    };
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        let trimmed = digits.trim_start_matches('0');
        return format!("{sign}{}", if trimmed.is_empty() { "0" } else { trimmed });
    }
    for (prefix, radix) in [
        ("0x", 16),
        ("0X", 16),
        ("0o", 8),
        ("0O", 8),
        ("0b", 2),
        ("0B", 2),
    ] {
        if let Some(n) = digits
            .strip_prefix(prefix)
            .and_then(|d| u128::from_str_radix(d, radix).ok())
        {
            return format!("{sign}{n}");
        }
    }
    let number = plain
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && digits.bytes().any(|b| b.is_ascii_digit()))
        .and_then(serde_json::Number::from_f64);
    match number {
        Some(n) => n.to_string(),
        None => json_string(word),
    }
}

/// A Python escape at the start of `s` (which starts with `\`): the bytes it takes and
/// the text it stands for; None while it may go on past the end of `s`. What is no
/// escape keeps its backslash, as Python keeps it.
fn escape(s: &str, end: bool) -> Option<(usize, String)> {
    let Some(c) = s[1..].chars().next() else {
        return end.then(|| (1, "\\".to_owned()));
    };
    let simple = match c {
        '\\' => Some("\\"),
        '\'' => Some("'"),
        '"' => Some("\""),
        'a' => Some("\u{7}"),
        'b' => Some("\u{8}"),
        'f' => Some("\u{c}"),
        'n' => Some("\n"),
        'r' => Some("\r"),
        't' => Some("\t"),
        'v' => Some("\u{b}"),
        // A line continued.
        '\n' => Some(""),
        _ => None,
    };
    if let Some(text) = simple {
        return Some((2, text.to_owned()));
    }
    let digits = |radix: u32, most: usize| -> Option<(usize, String)> {
        let body = &s[2..];
        let count = body
            .chars()
            .take(most)
            .take_while(|d| d.is_digit(radix))
            .count();
        if count < most && count == body.len() && !end {
            return None;
        }
        let value = u32::from_str_radix(&body[..count], radix).ok();
        Some(match value.and_then(char::from_u32) {
            Some(ch) if count == most => (2 + count, ch.to_string()),
            _ => (2, s[..2].to_owned()),
        })
    };
    match c {
        'x' => digits(16, 2),
        'u' => digits(16, 4),
        'U' => digits(16, 8),
        '0'..='7' => {
            let body = &s[1..];
            let count = body.chars().take(3).take_while(|d| d.is_digit(8)).count();
            if count < 3 && count == body.len() && !end {
                return None;
            }
            let ch = u32::from_str_radix(&body[..count], 8)
                .ok()
                .and_then(char::from_u32)
                .unwrap_or('\u{fffd}');
            Some((1 + count, ch.to_string()))
        }
        c => Some((1 + c.len_utf8(), format!("\\{c}"))),
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// `text` as the inside of a JSON string.
fn escape_json(text: &str) -> String {
    let quoted = json_string(text);
    quoted[1..quoted.len() - 1].to_owned()
}
