//! An incremental JSON scanner: it follows one JSON value character by character, says
//! where the value ends, and can close a value cut off mid-way so that what was already
//! streamed parses.

/// An open container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    Object,
    Array,
}

/// Where the scanner is inside the value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// A value must come (start, after `:` or after `,` in an array).
    Value,
    /// The value must be an object: whitespace, then `{`.
    Object,
    /// Just after `[`: a value or `]`.
    ArrayStart,
    /// Just after `{`: a key or `}`.
    ObjectStart,
    /// After `,` in an object: a key.
    Key,
    /// Inside a key string.
    InKey(Str),
    /// After a key: `:`.
    Colon,
    /// Inside a string value.
    InString(Str),
    /// Inside a number or a `true` / `false` / `null` literal.
    Literal(String),
    /// After a value inside a container: `,` or the container's end.
    AfterValue,
    /// The top-level value is complete.
    Done,
}

/// Where the scanner is inside a string: JSON allows no raw control characters, only
/// the escapes `\" \\ \/ \b \f \n \r \t \uXXXX`, and a `\u` surrogate only in a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Str {
    Plain,
    /// After `\`.
    Escape,
    /// In `\uXXXX`, `digits` read so far making `value`; `low`: the second half of a
    /// surrogate pair.
    Unicode {
        digits: u8,
        value: u16,
        low: bool,
    },
    /// After a high surrogate's `\uD8XX`: its low half's `\u` must follow.
    HighSurrogate,
    /// After the `\` that opens the low half.
    HighSurrogateEscape,
}

const LOW_SURROGATES: std::ops::RangeInclusive<u32> = 0xDC00..=0xDFFF;
const HIGH_SURROGATES: std::ops::RangeInclusive<u32> = 0xD800..=0xDBFF;

impl Str {
    /// The next character of a string: `Ok(None)` when it closes it, `Err` when it can't
    /// come here.
    fn push(self, c: char) -> Result<Option<Str>, ()> {
        Ok(Some(match (self, c) {
            (Str::Plain, '"') => return Ok(None),
            (Str::Plain, '\\') => Str::Escape,
            (Str::Plain, c) if c < ' ' => return Err(()),
            (Str::Plain, _) => Str::Plain,
            (Str::Escape, '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't') => Str::Plain,
            (Str::Escape, 'u') => Str::Unicode {
                digits: 0,
                value: 0,
                low: false,
            },
            (Str::Unicode { digits, value, low }, c) => {
                let digit = c.to_digit(16).ok_or(())?;
                let (digits, value) = (digits + 1, (value << 4) | digit as u16);
                // The values these digits can still become: a lone low surrogate, or a
                // second half that is not one, can't be finished validly.
                let left = 4 * u32::from(4 - digits);
                let (min, max) = (
                    u32::from(value) << left,
                    ((u32::from(value) + 1) << left) - 1,
                );
                let all_low = LOW_SURROGATES.contains(&min) && LOW_SURROGATES.contains(&max);
                let some_low = min <= *LOW_SURROGATES.end() && max >= *LOW_SURROGATES.start();
                if (low && !some_low) || (!low && all_low) {
                    return Err(());
                }
                match digits {
                    4 if !low && HIGH_SURROGATES.contains(&min) => Str::HighSurrogate,
                    4 => Str::Plain,
                    _ => Str::Unicode { digits, value, low },
                }
            }
            (Str::HighSurrogate, '\\') => Str::HighSurrogateEscape,
            (Str::HighSurrogateEscape, 'u') => Str::Unicode {
                digits: 0,
                value: 0,
                low: true,
            },
            _ => return Err(()),
        }))
    }

    /// Text that ends the escape in progress validly (the quote not included).
    fn completion(self) -> String {
        match self {
            Str::Plain => String::new(),
            // The backslash escapes itself.
            Str::Escape => "\\".to_owned(),
            Str::Unicode { digits, value, low } => {
                let left = 4 * u32::from(4 - digits);
                let mut target = u32::from(value) << left;
                if low {
                    target = target.max(*LOW_SURROGATES.start());
                }
                let mut out = format!("{target:04x}")[usize::from(digits)..].to_owned();
                if !low && HIGH_SURROGATES.contains(&target) {
                    out.push_str("\\udc00");
                }
                out
            }
            Str::HighSurrogate => "\\udc00".to_owned(),
            Str::HighSurrogateEscape => "udc00".to_owned(),
        }
    }
}

/// What one character did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Part of the value (or whitespace inside it).
    Inside,
    /// The character completed the value; it belongs to the value.
    Complete,
    /// The value had already ended before this character (a literal at the top level
    /// ends only when something else follows); the character is not part of it.
    EndedBefore,
    /// The character cannot continue a JSON value.
    Invalid,
}

#[derive(Debug, Clone)]
pub struct JsonScanner {
    stack: Vec<Frame>,
    state: State,
}

impl Default for JsonScanner {
    fn default() -> Self {
        JsonScanner {
            stack: Vec::new(),
            state: State::Value,
        }
    }
}

impl JsonScanner {
    /// A scanner for a call's arguments, which must be an object.
    pub fn object() -> Self {
        JsonScanner {
            stack: Vec::new(),
            state: State::Object,
        }
    }

    /// A scanner already inside an object, after one of its values: it completes at the
    /// object's `}` (what remains of a call object once its arguments were read).
    pub fn rest_of_object() -> Self {
        JsonScanner {
            stack: vec![Frame::Object],
            state: State::AfterValue,
        }
    }

    #[cfg(test)]
    fn is_done(&self) -> bool {
        self.state == State::Done
    }

    pub fn push(&mut self, c: char) -> Scan {
        let before = self.state.clone();
        let scan = self.step(c);
        // What can't continue the value leaves it as it was, so that it can be closed.
        if scan == Scan::Invalid {
            self.state = before;
        }
        scan
    }

    fn step(&mut self, c: char) -> Scan {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Done => Scan::Invalid,
            State::Value => self.value(c),
            State::Object if is_json_space(c) => {
                self.state = State::Object;
                Scan::Inside
            }
            State::Object if c == '{' => self.value(c),
            State::Object => Scan::Invalid,
            State::ArrayStart if c == ']' => self.close(Frame::Array),
            State::ArrayStart if is_json_space(c) => {
                self.state = State::ArrayStart;
                Scan::Inside
            }
            State::ArrayStart => self.value(c),
            State::ObjectStart if c == '}' => self.close(Frame::Object),
            State::ObjectStart => self.key(c, State::ObjectStart),
            State::Key => self.key(c, State::Key),
            State::InKey(s) => match s.push(c) {
                Ok(next) => {
                    self.state = next.map_or(State::Colon, State::InKey);
                    Scan::Inside
                }
                Err(()) => Scan::Invalid,
            },
            State::Colon => match c {
                ':' => {
                    self.state = State::Value;
                    Scan::Inside
                }
                c if is_json_space(c) => {
                    self.state = State::Colon;
                    Scan::Inside
                }
                _ => Scan::Invalid,
            },
            State::InString(s) => match s.push(c) {
                Ok(Some(next)) => {
                    self.state = State::InString(next);
                    Scan::Inside
                }
                Ok(None) => self.value_done(),
                Err(()) => Scan::Invalid,
            },
            State::Literal(mut s) => {
                // Only what can still become a literal: `2P` can't, and no completion
                // would make it one.
                s.push(c);
                if literal_prefix_is_valid(&s) {
                    self.state = State::Literal(s);
                    return Scan::Inside;
                }
                s.pop();
                if !literal_is_valid(&s) {
                    return Scan::Invalid;
                }
                match self.value_done() {
                    Scan::Complete => Scan::EndedBefore,
                    _ => self.after_value(c),
                }
            }
            State::AfterValue => self.after_value(c),
        }
    }

    /// Text that closes the value as it stands now (empty when it is complete or
    /// nothing has started). The result is valid JSON, if not the value the model meant.
    pub fn completion(&self) -> String {
        let mut out = String::new();
        match &self.state {
            State::Done => return out,
            State::Value if self.stack.is_empty() => return out,
            // Nothing but whitespace came: no arguments.
            State::Object => return "{}".to_owned(),
            State::Value => out.push_str("null"),
            State::ArrayStart | State::ObjectStart | State::AfterValue => {}
            State::Key => out.push_str("\"\":null"),
            State::InKey(s) => {
                out.push_str(&s.completion());
                out.push_str("\":null");
            }
            State::Colon => out.push_str(":null"),
            State::InString(s) => {
                out.push_str(&s.completion());
                out.push('"');
            }
            State::Literal(s) => out.push_str(&complete_literal(s)),
        }
        for frame in self.stack.iter().rev() {
            out.push(match frame {
                Frame::Object => '}',
                Frame::Array => ']',
            });
        }
        out
    }

    fn value(&mut self, c: char) -> Scan {
        match c {
            c if is_json_space(c) => {
                self.state = State::Value;
                Scan::Inside
            }
            '{' => {
                self.stack.push(Frame::Object);
                self.state = State::ObjectStart;
                Scan::Inside
            }
            '[' => {
                self.stack.push(Frame::Array);
                self.state = State::ArrayStart;
                Scan::Inside
            }
            '"' => {
                self.state = State::InString(Str::Plain);
                Scan::Inside
            }
            c if c == '-' || c.is_ascii_digit() || matches!(c, 't' | 'f' | 'n') => {
                self.state = State::Literal(c.to_string());
                Scan::Inside
            }
            _ => Scan::Invalid,
        }
    }

    /// A key must start; whitespace keeps the scanner in `waiting`.
    fn key(&mut self, c: char, waiting: State) -> Scan {
        match c {
            '"' => {
                self.state = State::InKey(Str::Plain);
                Scan::Inside
            }
            c if is_json_space(c) => {
                self.state = waiting;
                Scan::Inside
            }
            _ => Scan::Invalid,
        }
    }

    /// A value just ended.
    fn value_done(&mut self) -> Scan {
        if self.stack.is_empty() {
            self.state = State::Done;
            Scan::Complete
        } else {
            self.state = State::AfterValue;
            Scan::Inside
        }
    }

    fn after_value(&mut self, c: char) -> Scan {
        match (c, self.stack.last()) {
            (c, _) if is_json_space(c) => {
                self.state = State::AfterValue;
                Scan::Inside
            }
            (',', Some(Frame::Object)) => {
                self.state = State::Key;
                Scan::Inside
            }
            (',', Some(Frame::Array)) => {
                self.state = State::Value;
                Scan::Inside
            }
            ('}', Some(Frame::Object)) => self.close(Frame::Object),
            (']', Some(Frame::Array)) => self.close(Frame::Array),
            _ => Scan::Invalid,
        }
    }

    fn close(&mut self, frame: Frame) -> Scan {
        if self.stack.pop() != Some(frame) {
            return Scan::Invalid;
        }
        self.value_done()
    }
}

/// JSON's whitespace: not every Unicode space (a vertical tab in a value breaks it).
fn is_json_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

fn literal_is_valid(s: &str) -> bool {
    matches!(s, "true" | "false" | "null") || serde_json::from_str::<f64>(s).is_ok()
}

/// Whether `s` starts a JSON literal: a prefix of `true`, `false`, `null` or of a number
/// (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`).
fn literal_prefix_is_valid(s: &str) -> bool {
    if ["true", "false", "null"].iter().any(|w| w.starts_with(s)) {
        return true;
    }
    let b = s.as_bytes();
    let digits = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = usize::from(b.first() == Some(&b'-'));
    match b.get(i) {
        None => return true,
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(i),
        Some(_) => return false,
    }
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = digits(start);
        if i == b.len() {
            return true;
        }
        if i == start {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(i);
    }
    i == b.len()
}

/// The shortest text that makes a cut-off literal valid.
fn complete_literal(s: &str) -> String {
    for word in ["true", "false", "null"] {
        if let Some(rest) = word.strip_prefix(s) {
            return rest.to_owned();
        }
    }
    if literal_is_valid(s) {
        String::new()
    } else {
        // "-", "1.", "1e", "1e+": a digit finishes each.
        "0".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> (JsonScanner, Vec<Scan>) {
        let mut s = JsonScanner::default();
        let r = text.chars().map(|c| s.push(c)).collect();
        (s, r)
    }

    #[test]
    fn finds_the_end_of_an_object() {
        let (s, r) = scan(r#"{"a": [1, "x}", {"b": null}, [ ], { }], "c\"}": true}"#);
        assert!(s.is_done());
        assert_eq!(r.last(), Some(&Scan::Complete));
        assert_eq!(r.iter().filter(|x| **x == Scan::Complete).count(), 1);
        assert!(!r.contains(&Scan::Invalid));
    }

    #[test]
    fn the_rest_of_an_object_ends_at_its_brace() {
        let mut s = JsonScanner::rest_of_object();
        let r: Vec<Scan> = r#", "id": "a}b"} x"#.chars().map(|c| s.push(c)).collect();
        assert_eq!(r.iter().position(|x| *x == Scan::Complete), Some(13));
        let mut s = JsonScanner::rest_of_object();
        assert_eq!(s.push('}'), Scan::Complete);
    }

    #[test]
    fn a_top_level_literal_ends_at_the_next_character() {
        let (_, r) = scan("12 ");
        assert_eq!(r, vec![Scan::Inside, Scan::Inside, Scan::EndedBefore]);
    }

    #[test]
    fn rejects_what_is_not_json() {
        let (_, r) = scan("{a");
        assert_eq!(r[1], Scan::Invalid);
        let (_, r) = scan("[1 2]");
        assert!(r.contains(&Scan::Invalid));
    }

    /// Arguments that stop being JSON are closed where they stopped (Python quotes, text
    /// after a value, a bad literal).
    #[test]
    fn a_value_that_goes_wrong_can_be_closed_where_it_stood() {
        for (text, closed) in [
            (r#"{"a": "x" 'b'"#, r#"{"a": "x" }"#),
            (r#"{"a": [1 x"#, r#"{"a": [1 ]}"#),
            (r#"{'a'"#, "{}"),
            (r#"{"a": tru}"#, r#"{"a": true}"#),
            // The `tool_calls` fuzz target found this one closed as `2Paris0`.
            (r#"{"a": 2Paris"}"#, r#"{"a": 2}"#),
            (r#"{"a": -x"#, r#"{"a": -0}"#),
            (r#"{"a": 01"#, r#"{"a": 0}"#),
            (r#"{"a": 1.e5"#, r#"{"a": 1.0}"#),
            (r#"{"a": 1e5.5"#, r#"{"a": 1e5}"#),
            ("{\"a\":\u{b}1}", "{\"a\":null}"),
        ] {
            let mut s = JsonScanner::default();
            let at = text.chars().position(|c| s.push(c) == Scan::Invalid);
            let at = at.unwrap_or_else(|| panic!("{text}"));
            let kept: String = text.chars().take(at).collect();
            assert_eq!(format!("{kept}{}", s.completion()), closed, "{text}");
        }
    }

    /// Strings hold only what JSON allows: a raw control character, an unknown escape or a
    /// lone surrogate stops the value, and what came before still closes into valid JSON.
    /// (The `tool_calls` fuzz target found a call whose arguments kept a raw newline.)
    #[test]
    fn what_json_forbids_in_a_string_stops_it() {
        for (text, closed) in [
            ("{\"ci}}\n</tool_call>", "{\"ci}}\":null}"),
            ("{\"a\": \"x\ty\"}", "{\"a\": \"x\"}"),
            (r#"{"a": "x\q"}"#, r#"{"a": "x\\"}"#),
            (r#"{"a": "\u12g4"}"#, r#"{"a": "\u1200"}"#),
            (r#"{"a": "\udc00"}"#, r#"{"a": "\ud000"}"#),
            (r#"{"a": "\ud83d x"}"#, r#"{"a": "\ud83d\udc00"}"#),
            (r#"{"a": "\ud83d\n"}"#, r#"{"a": "\ud83d\udc00"}"#),
            (r#"{"a": "\ud83d\u0041"}"#, r#"{"a": "\ud83d\udc00"}"#),
        ] {
            let mut s = JsonScanner::default();
            let at = text.chars().position(|c| s.push(c) == Scan::Invalid);
            let at = at.unwrap_or_else(|| panic!("{text}"));
            let kept: String = text.chars().take(at).collect();
            let got = format!("{kept}{}", s.completion());
            assert_eq!(got, closed, "{text:?}");
            assert!(
                serde_json::from_str::<serde_json::Value>(&got).is_ok(),
                "{got}"
            );
        }
    }

    #[test]
    fn arguments_must_be_an_object() {
        for (text, closed) in [("6", "{}"), (" [1]", " {}"), ("  ", "  {}"), (" {", " {}")] {
            let mut s = JsonScanner::object();
            let kept: String = text
                .chars()
                .take_while(|c| s.push(*c) != Scan::Invalid)
                .collect();
            assert_eq!(format!("{kept}{}", s.completion()), closed, "{text:?}");
        }
    }

    #[test]
    fn every_cut_of_a_value_can_be_closed() {
        let full = r#"{"path": "a\"b.txt", "n": -1.5e3, "ok": true, "list": [1, null, {"k": "v"}], "e": {}, "u\u00e9": "\ud83d\ude00 \/\b\f\r\t\u20AC"}"#;
        for cut in 0..full.len() {
            let prefix = &full[..cut];
            let (s, r) = scan(prefix);
            assert!(!r.contains(&Scan::Invalid), "{prefix}");
            let closed = format!("{prefix}{}", s.completion());
            if cut == 0 {
                assert_eq!(closed, "");
                continue;
            }
            assert!(
                serde_json::from_str::<serde_json::Value>(&closed).is_ok(),
                "{prefix:?} closed as {closed:?}"
            );
        }
    }
}
