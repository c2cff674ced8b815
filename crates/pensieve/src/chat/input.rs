//! Input assembly for `pensieve chat`: typed or piped lines put together into inputs, a line
//! (with `\` continuations) or a `"""` block.

const BLOCK: &str = "\"\"\"";

/// One input: a line (with `\` continuations) or a `"""` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Input {
    pub(super) text: String,
    /// A `"""` block: never a /command.
    pub(super) block: bool,
}

/// Puts lines together into inputs.
#[derive(Debug, Default)]
pub(super) struct Assembler {
    block: Option<Vec<String>>,
    continued: Vec<String>,
}

impl Assembler {
    /// Whether the next line continues an input.
    pub(super) fn pending(&self) -> bool {
        self.block.is_some() || !self.continued.is_empty()
    }

    pub(super) fn reset(&mut self) {
        *self = Assembler::default();
    }

    pub(super) fn feed(&mut self, line: &str) -> Option<Input> {
        if let Some(block) = &mut self.block {
            let end = line.trim_end();
            if let Some(last) = end.strip_suffix(BLOCK) {
                if !last.is_empty() {
                    block.push(last.to_string());
                }
                let text = block.join("\n");
                self.block = None;
                return Some(Input { text, block: true });
            }
            block.push(line.to_string());
            return None;
        }
        if self.continued.is_empty() {
            if let Some(rest) = line.trim_start().strip_prefix(BLOCK) {
                let rest_end = rest.trim_end();
                if let Some(text) = rest_end.strip_suffix(BLOCK) {
                    // """text""" on one line.
                    return Some(Input {
                        text: text.to_string(),
                        block: true,
                    });
                }
                let first = if rest_end.trim().is_empty() {
                    vec![]
                } else {
                    vec![rest.to_string()]
                };
                self.block = Some(first);
                return None;
            }
        }
        if let Some(head) = line.strip_suffix('\\') {
            self.continued.push(head.to_string());
            return None;
        }
        self.continued.push(line.to_string());
        let text = self.continued.join("\n");
        self.continued.clear();
        Some(Input { text, block: false })
    }

    /// At the end of the input: what is pending, as one input.
    pub(super) fn finish(&mut self) -> Option<Input> {
        let input = if let Some(block) = self.block.take() {
            Some(Input {
                text: block.join("\n"),
                block: true,
            })
        } else if !self.continued.is_empty() {
            Some(Input {
                text: self.continued.join("\n"),
                block: false,
            })
        } else {
            None
        };
        self.reset();
        input
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(lines: &[&str]) -> Vec<Input> {
        let mut a = Assembler::default();
        let mut out: Vec<Input> = lines.iter().filter_map(|l| a.feed(l)).collect();
        out.extend(a.finish());
        out
    }

    fn line(text: &str) -> Input {
        Input {
            text: text.into(),
            block: false,
        }
    }

    fn block(text: &str) -> Input {
        Input {
            text: text.into(),
            block: true,
        }
    }

    #[test]
    fn lines_blocks_and_continuations() {
        assert_eq!(feed_all(&["hi", "/bye"]), [line("hi"), line("/bye")]);
        assert_eq!(
            feed_all(&["\"\"\"", "one", "", "/two", "\"\"\"", "after"]),
            [block("one\n\n/two"), line("after")]
        );
        assert_eq!(
            feed_all(&["\"\"\"first", "second\"\"\""]),
            [block("first\nsecond")]
        );
        assert_eq!(feed_all(&["\"\"\"one line\"\"\""]), [block("one line")]);
        assert_eq!(
            feed_all(&["a\\", "b\\", "c", "d"]),
            [line("a\nb\nc"), line("d")]
        );
        // Unterminated at the end of input: still one input.
        assert_eq!(feed_all(&["\"\"\"", "x"]), [block("x")]);
        assert_eq!(feed_all(&["x\\"]), [line("x")]);
        let mut a = Assembler::default();
        assert!(a.feed("\"\"\"").is_none());
        assert!(a.pending());
        a.reset();
        assert!(!a.pending());
    }
}
