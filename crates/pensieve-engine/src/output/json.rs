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
    /// Just after `[`: a value or `]`.
    ArrayStart,
    /// Just after `{`: a key or `}`.
    ObjectStart,
    /// After `,` in an object: a key.
    Key,
    /// Inside a key string.
    InKey { escaped: bool },
    /// After a key: `:`.
    Colon,
    /// Inside a string value.
    InString { escaped: bool },
    /// Inside a number or a `true` / `false` / `null` literal.
    Literal(String),
    /// After a value inside a container: `,` or the container's end.
    AfterValue,
    /// The top-level value is complete.
    Done,
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
            State::ArrayStart if c == ']' => self.close(Frame::Array),
            State::ArrayStart if c.is_whitespace() => {
                self.state = State::ArrayStart;
                Scan::Inside
            }
            State::ArrayStart => self.value(c),
            State::ObjectStart if c == '}' => self.close(Frame::Object),
            State::ObjectStart => self.key(c, State::ObjectStart),
            State::Key => self.key(c, State::Key),
            State::InKey { escaped } => {
                self.state = match (escaped, c) {
                    (true, _) => State::InKey { escaped: false },
                    (false, '\\') => State::InKey { escaped: true },
                    (false, '"') => State::Colon,
                    (false, _) => State::InKey { escaped: false },
                };
                Scan::Inside
            }
            State::Colon => match c {
                ':' => {
                    self.state = State::Value;
                    Scan::Inside
                }
                c if c.is_whitespace() => {
                    self.state = State::Colon;
                    Scan::Inside
                }
                _ => Scan::Invalid,
            },
            State::InString { escaped } => match (escaped, c) {
                (true, _) => {
                    self.state = State::InString { escaped: false };
                    Scan::Inside
                }
                (false, '\\') => {
                    self.state = State::InString { escaped: true };
                    Scan::Inside
                }
                (false, '"') => self.value_done(),
                (false, _) => {
                    self.state = State::InString { escaped: false };
                    Scan::Inside
                }
            },
            State::Literal(mut s) => {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.') {
                    s.push(c);
                    self.state = State::Literal(s);
                    return Scan::Inside;
                }
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
            State::Value => out.push_str("null"),
            State::ArrayStart | State::ObjectStart | State::AfterValue => {}
            State::Key => out.push_str("\"\":null"),
            State::InKey { escaped } => {
                if *escaped {
                    out.push('\\');
                }
                out.push_str("\":null");
            }
            State::Colon => out.push_str(":null"),
            State::InString { escaped } => {
                if *escaped {
                    out.push('\\');
                }
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
            c if c.is_whitespace() => {
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
                self.state = State::InString { escaped: false };
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
                self.state = State::InKey { escaped: false };
                Scan::Inside
            }
            c if c.is_whitespace() => {
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
            (c, _) if c.is_whitespace() => {
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

fn literal_is_valid(s: &str) -> bool {
    matches!(s, "true" | "false" | "null") || serde_json::from_str::<f64>(s).is_ok()
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
        ] {
            let mut s = JsonScanner::default();
            let at = text.chars().position(|c| s.push(c) == Scan::Invalid);
            let at = at.unwrap_or_else(|| panic!("{text}"));
            let kept: String = text.chars().take(at).collect();
            assert_eq!(format!("{kept}{}", s.completion()), closed, "{text}");
        }
    }

    #[test]
    fn every_cut_of_a_value_can_be_closed() {
        let full = r#"{"path": "a\"b.txt", "n": -1.5e3, "ok": true, "list": [1, null, {"k": "v"}], "e": {}}"#;
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
