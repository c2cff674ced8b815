//! Kimi K2's calls, which Kimi K2 (Instruct, 0905), K2-Thinking and K2.5 write: one
//! section holds one or more calls, each named by its call id `functions.NAME:IDX`, its
//! arguments one JSON object:
//!
//! ```text
//! <think>Need the listing.</think><|tool_calls_section_begin|><|tool_call_begin|>functions.Bash:0<|tool_call_argument_begin|>{"command": "ls -la"}<|tool_call_end|><|tool_calls_section_end|>
//! ```
//!
//! The markers are control tokens of Kimi's vocabulary. The model also writes
//! `<|tool_call_section_begin|>` / `<|tool_call_section_end|>` (singular), and calls with
//! no section around them; both are read as calls (vLLM and llama.cpp accept them too).
//!
//! IDX counts the calls of the whole conversation from 0, and Moonshot's templates print
//! a call's id in history as the client sends it back: an id of another shape (our
//! `toolu_...`) would leave the model without the name of its earlier calls. So earlier
//! calls get their `functions.NAME:IDX` back when the prompt is rendered (see
//! [`Format::history`]), as llama.cpp's copies of the templates compute them.
//! K2-Thinking writes `<think>` itself; K2.5's prompt opens it.

use std::borrow::Cow;

use super::{Format, GrammarStart};
use crate::constrain::{calls_lark, literal, schema_for_grammar};
use crate::output::{
    find_marker, is_tool_name, stream_json, CallReader, Core, Found, JsonScanner, Next, Segment,
};
use crate::request::{Message, ToolSpec};

const SECTION_OPEN: &str = "<|tool_calls_section_begin|>";
const SECTION_CLOSE: &str = "<|tool_calls_section_end|>";
const SECTION_OPEN_SINGULAR: &str = "<|tool_call_section_begin|>";
const SECTION_CLOSE_SINGULAR: &str = "<|tool_call_section_end|>";
const CALL_OPEN: &str = "<|tool_call_begin|>";
const ARGS: &str = "<|tool_call_argument_begin|>";
const CALL_CLOSE: &str = "<|tool_call_end|>";

const MARKERS: &[&str] = &[
    SECTION_OPEN,
    SECTION_CLOSE,
    SECTION_OPEN_SINGULAR,
    SECTION_CLOSE_SINGULAR,
    CALL_OPEN,
    ARGS,
    CALL_CLOSE,
];

/// What may follow a call's arguments: its end, or (the end left out) the next call or
/// the section's end.
const AFTER_ARGS: &[&str] = &[CALL_CLOSE, CALL_OPEN, SECTION_CLOSE, SECTION_CLOSE_SINGULAR];

/// How far a call id, or text after a call's arguments, may run before it is taken for
/// no call.
const MAX_HEAD: usize = 256;

/// The prefix of a call's id; its name follows.
const ID_PREFIX: &str = "functions.";

pub(super) struct KimiK2;

impl Format for KimiK2 {
    fn names(&self) -> &'static [&'static str] {
        &["kimi_k2", "kimi"]
    }

    fn models(&self) -> &'static str {
        "Kimi K2, K2-Thinking, K2.5"
    }

    fn detect(&self, template: &str) -> bool {
        template.contains(SECTION_OPEN)
    }

    fn markers(&self) -> &'static [&'static str] {
        MARKERS
    }

    fn open(&self) -> &'static str {
        SECTION_OPEN
    }

    fn open_variants(&self) -> &'static [&'static str] {
        &[SECTION_OPEN_SINGULAR]
    }

    /// A call the model writes without its section.
    fn bare_open(&self) -> Option<&'static str> {
        Some(CALL_OPEN)
    }

    fn reader(&self) -> Box<dyn CallReader> {
        Box::new(Section::default())
    }

    /// Earlier calls under the ids the model reads, as llama.cpp's copies of the
    /// templates compute them.
    fn history(&self, conversation: &mut Vec<Message>, _tools: &mut Cow<'_, [ToolSpec]>) {
        super::rename_call_ids(conversation, |name, index| {
            format!("{ID_PREFIX}{name}:{index}")
        });
    }

    /// The index in a call's id is the model's to count: any digits (bounded, so that a
    /// model can't spin in them). One lark for every conversation keeps it cached.
    fn grammar(&self, tools: &[&ToolSpec], start: GrammarStart) -> String {
        let (open, close, separator) = match start {
            GrammarStart::Forced => (literal(SECTION_OPEN), SECTION_CLOSE, None),
            GrammarStart::AfterMarker { parallel } => {
                (literal(""), SECTION_CLOSE, parallel.then_some(""))
            }
            // Without its section: the call alone, which ends it.
            GrammarStart::Bare => (literal(""), "", None),
        };
        calls_lark(&open, close, separator, tools, |i, tool, lark| {
            let head = literal(&format!("{CALL_OPEN}{ID_PREFIX}{}:", tool.name));
            lark.push_str(&format!(
                "c{i}: {head} /[0-9]{{1,6}}/ {} a{i} {}\n",
                literal(ARGS),
                literal(CALL_CLOSE)
            ));
            lark.push_str(&format!(
                "a{i}: %json {}\n",
                schema_for_grammar(&tool.parameters)
            ));
            format!("c{i}")
        })
    }
}

/// A section of calls, from after its opening marker (or from a call's own marker, for
/// a call without its section) to the section's end.
#[derive(Debug, Default)]
struct Section {
    state: State,
}

#[derive(Debug, Default)]
enum State {
    /// Between calls: `<|tool_call_begin|>` opens one, the section's end ends them.
    #[default]
    Between,
    /// The call id, up to `<|tool_call_argument_begin|>`.
    Id,
    /// The call was announced; its arguments' `{` comes next.
    ArgsStart,
    /// The arguments, streaming.
    Args(JsonScanner),
    /// The arguments are over: up to the call's end.
    AfterArgs,
    /// A call whose id could not be read: dropped, up to its end.
    Skip,
}

impl CallReader for Section {
    fn read(&mut self, p: &mut Core, out: &mut Vec<Segment>) -> Next {
        match &mut self.state {
            State::Between => self.between(p),
            State::Id => self.id(p, out),
            State::ArgsStart => {
                let trimmed = p.held.trim_start();
                if trimmed.is_empty() {
                    p.held.clear();
                    return Next::Wait;
                }
                if trimmed.starts_with('{') {
                    let ws = p.held.len() - trimmed.len();
                    p.held.drain(..ws);
                    self.state = State::Args(JsonScanner::default());
                } else {
                    tracing::warn!(body = %p.held, "a tool call's arguments are no JSON object; called with none");
                    out.push(Segment::CallArguments("{}".into()));
                    self.state = State::AfterArgs;
                }
                Next::Again
            }
            State::Args(scanner) => {
                let (consumed, fragment, done) = stream_json(scanner, &p.held, &p.held);
                p.held.drain(..consumed);
                if !fragment.is_empty() {
                    out.push(Segment::CallArguments(fragment));
                }
                if !done {
                    return Next::Wait;
                }
                self.state = State::AfterArgs;
                Next::Again
            }
            State::AfterArgs => match find_marker(&p.held, AFTER_ARGS) {
                Found::At(at, marker) => {
                    if !p.held[..at].trim().is_empty() {
                        tracing::warn!(rest = %&p.held[..at], "text after a tool call's arguments; dropped");
                    }
                    let end = if marker == CALL_CLOSE {
                        at + marker.len()
                    } else {
                        at
                    };
                    p.held.drain(..end);
                    p.end_call(out);
                    self.state = State::Between;
                    Next::Again
                }
                Found::No { safe } => {
                    if p.held[..safe].trim().is_empty() {
                        p.held.drain(..safe);
                        Next::Wait
                    } else if p.held.len() > MAX_HEAD {
                        // The call's end never came: what follows it is text.
                        p.end_call(out);
                        Next::Text
                    } else {
                        Next::Wait
                    }
                }
            },
            State::Skip => match find_marker(&p.held, AFTER_ARGS) {
                Found::At(at, marker) => {
                    let end = if marker == CALL_CLOSE {
                        at + marker.len()
                    } else {
                        at
                    };
                    p.held.drain(..end);
                    self.state = State::Between;
                    Next::Again
                }
                Found::No { safe } => {
                    p.held.drain(..safe);
                    Next::Wait
                }
            },
        }
    }

    /// Cut off: a call with arguments is closed; one without is dropped.
    fn finish(&mut self, p: &mut Core, out: &mut Vec<Segment>) {
        match &self.state {
            State::Between | State::Skip => {}
            State::Id => {
                tracing::info!(id = %p.held, "a tool call was cut off before its arguments; dropped");
            }
            State::ArgsStart => {
                out.push(Segment::CallArguments("{}".into()));
                out.push(Segment::CallEnd);
            }
            State::Args(scanner) => {
                let rest = scanner.completion();
                if !rest.is_empty() {
                    out.push(Segment::CallArguments(rest));
                }
                tracing::info!("a tool call was cut off; its arguments were closed");
                out.push(Segment::CallEnd);
            }
            // Only the call's end is missing.
            State::AfterArgs => p.end_call(out),
        }
    }
}

impl Section {
    /// Between calls: the next call, or the section's end. Anything else ends the
    /// section unclosed, and is text.
    fn between(&mut self, p: &mut Core) -> Next {
        let trimmed = p.held.trim_start();
        let ws = p.held.len() - trimmed.len();
        if trimmed.starts_with(CALL_OPEN) {
            p.held.drain(..ws + CALL_OPEN.len());
            self.state = State::Id;
            return Next::Again;
        }
        for close in [SECTION_CLOSE, SECTION_CLOSE_SINGULAR] {
            if trimmed.starts_with(close) {
                p.held.drain(..ws + close.len());
                return Next::Text;
            }
        }
        if [CALL_OPEN, SECTION_CLOSE, SECTION_CLOSE_SINGULAR]
            .iter()
            .any(|m| m.starts_with(trimmed))
        {
            p.held.drain(..ws);
            return Next::Wait;
        }
        Next::Text
    }

    /// The call id, `functions.NAME:IDX`: once it is read, the call starts.
    fn id(&mut self, p: &mut Core, out: &mut Vec<Segment>) -> Next {
        let markers = [
            ARGS,
            CALL_CLOSE,
            CALL_OPEN,
            SECTION_CLOSE,
            SECTION_CLOSE_SINGULAR,
        ];
        let (at, marker) = match find_marker(&p.held, &markers) {
            Found::At(at, marker) => (at, marker),
            Found::No { safe } => {
                let so_far = p.held[..safe].trim();
                if p.held.len() <= MAX_HEAD && so_far.chars().all(is_id_char) {
                    return Next::Wait;
                }
                tracing::warn!(id = %p.held, "a tool call's id could not be read; dropped");
                self.state = State::Skip;
                return Next::Again;
            }
        };
        let Some(name) = call_name(p.held[..at].trim(), p) else {
            tracing::warn!(id = %&p.held[..at], "a tool call's id could not be read; dropped");
            p.held.drain(..at);
            self.state = State::Skip;
            return Next::Again;
        };
        match marker {
            ARGS => {
                p.held.drain(..at + ARGS.len());
                p.start_call(out, name);
                self.state = State::ArgsStart;
            }
            // A call without arguments.
            CALL_CLOSE => {
                p.held.drain(..at + CALL_CLOSE.len());
                p.start_call(out, name);
                out.push(Segment::CallArguments("{}".into()));
                p.end_call(out);
                self.state = State::Between;
            }
            // The id ran into the next call or the section's end: no call.
            _ => {
                tracing::warn!(id = %&p.held[..at], "a tool call without arguments or end; dropped");
                p.held.drain(..at);
                self.state = State::Between;
            }
        }
        Next::Again
    }
}

fn is_id_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')
}

/// The tool a call id names: `functions.NAME:IDX`, the prefix and the index optional.
/// A name under another prefix (`default_api.Bash`) is the offered tool's when it names
/// one.
fn call_name(id: &str, p: &Core) -> Option<String> {
    let base = match id.rsplit_once(':') {
        Some((base, index)) if index.chars().all(|c| c.is_ascii_digit()) => base,
        _ => id,
    };
    let mut name = base.strip_prefix(ID_PREFIX).unwrap_or(base);
    if !p.offers(name) {
        if let Some((_, last)) = name.rsplit_once('.').filter(|(_, last)| p.offers(last)) {
            name = last;
        }
    }
    is_tool_name(name).then(|| name.to_owned())
}

/// Text-level tests: the markers are control tokens of Kimi's vocabulary, which no test
/// model has, so outputs are fed as text and grammars run over the byte tokenizer.
#[cfg(test)]
mod tests {
    use crate::formats::test_support::{calls_in, fixtures, grammars, takes, tool};
    use std::borrow::Cow;

    use std::time::Instant;

    use serde_json::{json, Value};

    use crate::model::{TokenMask, Tokenizer};
    use crate::output::family_tests::every_cut_parses;
    use crate::output::tests::{call, parse_with};
    use crate::output::{OutputFormat, OutputParser, Segment};
    use crate::request::{Message, Role, ToolCall, ToolSpec};
    use crate::template::{ChatTemplate, RenderOptions, SpecialTokens};
    use crate::testing::ByteTokenizer;
    use crate::ToolFormat;

    fn tools() -> Vec<ToolSpec> {
        let bash = json!({"type": "object", "properties": {
            "command": {"type": "string"}, "timeout": {"type": "integer"}},
            "required": ["command"]});
        let write = json!({"type": "object", "properties": {
            "file_path": {"type": "string"}, "content": {"type": "string"}}});
        vec![tool("Bash", bash), tool("Write", write)]
    }

    const KIMI: OutputFormat = OutputFormat {
        model: None,
        tools: Some(ToolFormat::KIMI_K2),
        reasoning: true,
        starts_thinking: false,
        hide_reasoning: false,
    };

    /// K2.5's prompt opens `<think>`.
    const THINKING: OutputFormat = OutputFormat {
        starts_thinking: true,
        ..KIMI
    };

    const BASH: &str = "<|tool_calls_section_begin|><|tool_call_begin|>functions.Bash:0<|tool_call_argument_begin|>{\"command\": \"ls -la\"}<|tool_call_end|><|tool_calls_section_end|>";
    const BASH_ARGS: &str = "{\"command\": \"ls -la\"}";

    /// Two calls in one section, a string holding marker-like text and a line break.
    const TWO_CALLS: &str = "<|tool_calls_section_begin|><|tool_call_begin|>functions.Bash:3<|tool_call_argument_begin|>{\"command\": \"pwd\"}<|tool_call_end|><|tool_call_begin|>functions.Write:4<|tool_call_argument_begin|>{\"file_path\": \"/tmp/a.md\", \"content\": \"end: <|tool_call_end|>\\n\"}<|tool_call_end|><|tool_calls_section_end|>";

    #[test]
    fn the_documented_output_is_reasoning_then_a_call() {
        // K2-Thinking writes `<think>` itself.
        let text = format!("<think>Need the listing.</think>{BASH}");
        let (segments, calls) = parse_with(KIMI, &tools(), &text);
        let mut expected = vec![Segment::Thinking("Need the listing.".into())];
        expected.extend(call("Bash", BASH_ARGS));
        assert_eq!(segments, expected);
        assert_eq!(calls, 1);
        // K2.5's prompt opened it.
        let text = format!("Need the listing.</think>{BASH}");
        assert_eq!(parse_with(THINKING, &tools(), &text).0, expected);
        // Text around the section.
        let text = format!("Let me look.\n{BASH}\nDone.");
        let (segments, _) = parse_with(KIMI, &tools(), &text);
        let mut expected = vec![Segment::Text("Let me look.".into())];
        expected.extend(call("Bash", BASH_ARGS));
        expected.push(Segment::Text("Done.".into()));
        assert_eq!(segments, expected);
    }

    #[test]
    fn a_call_inside_reasoning_is_a_call() {
        // K2-Thinking calls before closing its reasoning; the `</think>` it writes after
        // the section is no text.
        let text = format!("<think>I will list the files.{BASH}</think>Listed.");
        let (segments, calls) = parse_with(KIMI, &tools(), &text);
        let mut expected = vec![Segment::Thinking("I will list the files.".into())];
        expected.extend(call("Bash", BASH_ARGS));
        expected.push(Segment::Text("Listed.".into()));
        assert_eq!(segments, expected);
        assert_eq!(calls, 1);
        let (segments, _) = parse_with(THINKING, &tools(), &format!("Hm.\n{TWO_CALLS}"));
        assert_eq!(segments[0], Segment::Thinking("Hm.\n".into()));
        assert_eq!(calls_in(&segments).len(), 2);
    }

    #[test]
    fn several_calls_in_one_section_are_several_calls() {
        let (segments, calls) = parse_with(KIMI, &tools(), TWO_CALLS);
        assert_eq!(
            calls_in(&segments),
            [
                ("Bash".to_owned(), json!({"command": "pwd"})),
                (
                    "Write".to_owned(),
                    json!({"file_path": "/tmp/a.md", "content": "end: <|tool_call_end|>\n"})
                )
            ]
        );
        assert_eq!(calls, 2);
        assert_eq!(segments.len(), 6);
        // Two sections back to back, and line breaks between every part.
        let spaced = "<|tool_calls_section_begin|>\n<|tool_call_begin|>\nfunctions.Bash:0<|tool_call_argument_begin|>\n{\"command\": \"ls -la\"}\n<|tool_call_end|>\n<|tool_calls_section_end|>";
        let (segments, calls) = parse_with(KIMI, &tools(), &format!("{BASH}{spaced}"));
        let mut expected = call("Bash", BASH_ARGS);
        expected.extend(call("Bash", BASH_ARGS));
        assert_eq!(segments, expected);
        assert_eq!(calls, 2);
    }

    #[test]
    fn the_singular_section_markers_and_a_call_without_its_section() {
        let singular = BASH
            .replace("tool_calls_section", "tool_call_section")
            .replace("Bash:0", "Bash:12");
        let (segments, calls) = parse_with(KIMI, &tools(), &format!("Sure.{singular}"));
        let mut expected = vec![Segment::Text("Sure.".into())];
        expected.extend(call("Bash", BASH_ARGS));
        assert_eq!(segments, expected);
        assert_eq!(calls, 1);
        // A call with no section around it, in text and in reasoning.
        let bare = "<|tool_call_begin|>functions.Bash:0<|tool_call_argument_begin|>{\"command\": \"ls -la\"}<|tool_call_end|>";
        let (segments, _) = parse_with(KIMI, &tools(), &format!("Sure.{bare}\nDone."));
        let mut expected = vec![Segment::Text("Sure.".into())];
        expected.extend(call("Bash", BASH_ARGS));
        expected.push(Segment::Text("Done.".into()));
        assert_eq!(segments, expected);
        let (segments, _) = parse_with(THINKING, &tools(), &format!("Hm.{bare}"));
        let mut expected = vec![Segment::Thinking("Hm.".into())];
        expected.extend(call("Bash", BASH_ARGS));
        assert_eq!(segments, expected);
        every_cut_parses(ToolFormat::KIMI_K2, &format!("A{singular}B{bare}C"));
    }

    #[test]
    fn the_name_is_read_from_the_call_id() {
        let id_call = |id: &str| {
            format!("<|tool_calls_section_begin|><|tool_call_begin|>{id}<|tool_call_argument_begin|>{{}}<|tool_call_end|><|tool_calls_section_end|>")
        };
        for (id, name) in [
            ("functions.Bash:0", "Bash"),
            ("Bash:7", "Bash"),
            ("functions.Bash", "Bash"),
            // Another namespace before an offered tool's name.
            ("functions.default_api.Bash:2", "Bash"),
            // A dotted name that is no offered tool stays whole.
            ("functions.mcp.search:1", "mcp.search"),
            (" functions.Write:10 ", "Write"),
        ] {
            let (segments, calls) = parse_with(KIMI, &tools(), &id_call(id));
            assert_eq!(segments, call(name, "{}"), "{id}");
            assert_eq!(calls, 1);
        }
        // An id that names nothing: the call is dropped, and no marker reaches the text.
        for id in ["functions.:0", "<b>bold</b>:0", &"x".repeat(300)] {
            let text = format!("{}Next.", id_call(id));
            let (segments, calls) = parse_with(KIMI, &tools(), &text);
            assert_eq!(segments, [Segment::Text("Next.".into())], "{id}");
            assert_eq!(calls, 0);
        }
        // A call without arguments.
        let text = "<|tool_calls_section_begin|><|tool_call_begin|>functions.list_files:0<|tool_call_end|><|tool_calls_section_end|>";
        assert_eq!(parse_with(KIMI, &[], text).0, call("list_files", "{}"));
    }

    #[test]
    fn arguments_stream_as_they_are_generated() {
        let mut p = OutputParser::new(KIMI).with_tools(&tools());
        let out = p.push("<|tool_calls_section_begin|><|tool_call_begin|>functions.Write:0<|tool_call_argument_begin|>{\"content\": \"line one\\n");
        assert_eq!(
            out,
            [
                Segment::CallStart {
                    name: "Write".into()
                },
                Segment::CallArguments("{\"content\": \"line one\\n".into())
            ]
        );
        assert_eq!(
            p.push("line two\"}<|tool_call_e"),
            [Segment::CallArguments("line two\"}".into())]
        );
        assert_eq!(p.push("nd|>"), [Segment::CallEnd]);
        assert!(p.push("<|tool_calls_section_end|>").is_empty());
        assert!(p.finish().is_empty());
        assert_eq!(p.calls(), 1);
    }

    #[test]
    fn broken_calls_still_give_valid_arguments_and_no_markers() {
        // Arguments that are no JSON object: the call is made without them.
        let text = "<|tool_calls_section_begin|><|tool_call_begin|>functions.Bash:0<|tool_call_argument_begin|>ls -la<|tool_call_end|><|tool_calls_section_end|>";
        assert_eq!(parse_with(KIMI, &tools(), text).0, call("Bash", "{}"));
        // JSON that goes wrong is closed; the rest up to the call's end is dropped.
        let text = "<|tool_calls_section_begin|><|tool_call_begin|>functions.Bash:0<|tool_call_argument_begin|>{\"command\": \"ls\" 'x'}<|tool_call_end|><|tool_calls_section_end|>OK.";
        let (segments, _) = parse_with(KIMI, &tools(), text);
        let mut expected = call("Bash", "{\"command\": \"ls\" }");
        expected.push(Segment::Text("OK.".into()));
        assert_eq!(segments, expected);
        assert_eq!(calls_in(&segments)[0].1, json!({"command": "ls"}));
        // The call's end left out before the next call and the section's end.
        let text = "<|tool_calls_section_begin|><|tool_call_begin|>functions.Bash:0<|tool_call_argument_begin|>{\"command\": \"a\"}<|tool_call_begin|>functions.Bash:1<|tool_call_argument_begin|>{\"command\": \"b\"}<|tool_calls_section_end|>";
        let (segments, calls) = parse_with(KIMI, &tools(), text);
        let mut expected = call("Bash", "{\"command\": \"a\"}");
        expected.extend(call("Bash", "{\"command\": \"b\"}"));
        assert_eq!(segments, expected);
        assert_eq!(calls, 2);
        // A section never closed: what follows its calls is text.
        let text = "<|tool_calls_section_begin|><|tool_call_begin|>functions.Bash:0<|tool_call_argument_begin|>{\"command\": \"a\"}<|tool_call_end|>\nAll done.";
        let (segments, _) = parse_with(KIMI, &tools(), text);
        let mut expected = call("Bash", "{\"command\": \"a\"}");
        expected.push(Segment::Text("All done.".into()));
        assert_eq!(segments, expected);
        // A section holding no call.
        let text = "<|tool_calls_section_begin|>Oops.";
        assert_eq!(
            parse_with(KIMI, &tools(), text).0,
            [Segment::Text("Oops.".into())]
        );
    }

    #[test]
    fn cut_off_calls_close_into_valid_arguments() {
        let text = "<|tool_calls_section_begin|><|tool_call_begin|>functions.Write:0<|tool_call_argument_begin|>{\"file_path\": \"a.rs\", \"content\": \"fn ma";
        let (segments, calls) = parse_with(KIMI, &tools(), text);
        assert_eq!(
            segments,
            call("Write", "{\"file_path\": \"a.rs\", \"content\": \"fn ma\"}")
        );
        assert_eq!(calls, 0);
        // Cut before the arguments: nothing.
        let text = "Wait.<|tool_calls_section_begin|><|tool_call_begin|>functions.Wri";
        let (segments, _) = parse_with(KIMI, &tools(), text);
        assert_eq!(segments, [Segment::Text("Wait.".into())]);
        // Cut after the arguments: only the ends are missing.
        let text = "<|tool_calls_section_begin|><|tool_call_begin|>functions.Bash:0<|tool_call_argument_begin|>{\"command\": \"ls -la\"}<|tool_call";
        assert_eq!(
            parse_with(KIMI, &tools(), text),
            (call("Bash", BASH_ARGS), 1)
        );
        every_cut_parses(
            ToolFormat::KIMI_K2,
            &format!("Let me look.\n{TWO_CALLS}\nAnd:\n{BASH}"),
        );
    }

    #[test]
    fn the_templates_are_detected() {
        for name in ["kimi-k2", "kimi-k2-instruct", "kimi-k2-thinking"] {
            let template = std::fs::read_to_string(fixtures().join(format!("{name}.jinja")));
            assert_eq!(
                ToolFormat::detect(&template.unwrap()),
                Some(ToolFormat::KIMI_K2),
                "{name}"
            );
        }
        assert_eq!(ToolFormat::from_name("kimi"), Some(ToolFormat::KIMI_K2));
    }

    /// K2 and K2-Thinking end the prompt with the assistant's header: K2-Thinking writes
    /// `<think>` itself (K2.5's prompt opens it, which the engine sees as it does Qwen's).
    #[test]
    fn the_generation_prompt_leaves_reasoning_to_the_model() {
        for template in ["kimi-k2", "kimi-k2-instruct", "kimi-k2-thinking"] {
            for case in ["tools", "reasoning_and_thinking"] {
                let path = fixtures().join(format!("expected/{template}/{case}.txt"));
                let prompt = std::fs::read_to_string(&path).unwrap();
                assert!(
                    prompt.ends_with("<|im_assistant|>assistant<|im_middle|>"),
                    "{template}/{case}"
                );
            }
        }
    }

    /// Every call the first K2 template writes in history (rendered by Python's jinja2),
    /// read back: the same calls, the same arguments.
    #[test]
    fn the_templates_own_calls_read_back() {
        let cases: Value =
            serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
                .unwrap();
        let mut checked = 0;
        for case in cases["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let path = fixtures().join(format!("expected/kimi-k2/{name}.txt"));
            let Ok(render) = std::fs::read_to_string(&path) else {
                continue;
            };
            let expected: Vec<(String, Value)> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|m| m["tool_calls"].as_array().cloned().unwrap_or_default())
                .map(|c| {
                    let name = c["name"].as_str().unwrap().to_owned();
                    (name, c["arguments"].clone())
                })
                .collect();
            if expected.is_empty() {
                continue;
            }
            let mut got = Vec::new();
            for (at, _) in render.match_indices(super::SECTION_OPEN) {
                let section = &render[at..];
                let end = section.find(super::SECTION_CLOSE).unwrap() + super::SECTION_CLOSE.len();
                let (segments, _) = parse_with(KIMI, &[], &section[..end]);
                got.extend(calls_in(&segments));
            }
            assert_eq!(got, expected, "{name}");
            checked += 1;
        }
        assert!(checked >= 4, "{checked} cases");
    }

    fn history() -> Vec<Message> {
        let call = |id: &str, name: &str, arguments: Value| ToolCall {
            id: id.into(),
            name: name.into(),
            arguments,
        };
        let result = |id: &str, content: &str| Message {
            tool_call_id: Some(id.into()),
            ..Message::text(Role::Tool, content)
        };
        vec![
            Message::text(Role::User, "List, then read."),
            Message {
                tool_calls: vec![
                    call("toolu_01A", "Bash", json!({"command": "ls"})),
                    call("toolu_01B", "Bash", json!({"command": "pwd"})),
                ],
                ..Message::text(Role::Assistant, "")
            },
            result("toolu_01B", "/repo"),
            result("toolu_01A", "a.rs"),
            Message {
                tool_calls: vec![call("call_9", "Read", json!({"path": "a.rs"}))],
                ..Message::text(Role::Assistant, "Reading.")
            },
            result("call_9", "fn main() {}"),
        ]
    }

    #[test]
    fn earlier_calls_get_the_ids_the_model_reads() {
        let reshaped = |format: ToolFormat, mut conversation: Vec<Message>| {
            format.history(&mut conversation, &mut Cow::Owned(Vec::new()));
            conversation
        };
        let ours = reshaped(ToolFormat::KIMI_K2, history());
        let ids: Vec<&str> = ours
            .iter()
            .flat_map(|m| m.tool_calls.iter().map(|c| c.id.as_str()))
            .collect();
        assert_eq!(
            ids,
            ["functions.Bash:0", "functions.Bash:1", "functions.Read:2"]
        );
        let results: Vec<&str> = ours
            .iter()
            .filter_map(|m| m.tool_call_id.as_deref())
            .collect();
        assert_eq!(
            results,
            ["functions.Bash:1", "functions.Bash:0", "functions.Read:2"]
        );
        // Nothing else changes; other formats keep the client's ids.
        assert_eq!(ours.len(), history().len());
        assert_eq!(ours[4].content, "Reading.");
        assert_eq!(reshaped(ToolFormat::HERMES, history()), history());
    }

    /// Moonshot's own templates print a call's id as the client sends it back (llama.cpp's
    /// copies compute it, with a list `append` that Hugging Face's sandbox refuses, so
    /// their history cases fail in `expected/`). The K2-Thinking fixture with its id
    /// lines written Moonshot's way, rendered by the engine, shows the model its own ids.
    #[tokio::test]
    async fn the_engine_renders_history_with_the_models_ids() {
        let fixture = std::fs::read_to_string(fixtures().join("kimi-k2-thinking.jinja")).unwrap();
        let queue = "{%- if tool_response_queue.ids -%}\n      {%- set tool_call_id = tool_response_queue.ids.pop(0) -%}\n    {%- else -%}\n      {%- set tool_call_id = 'functions.' + message.get('name', 'unknown') + ':' + (tool_call_counter.value | string) -%}\n    {%- endif -%}";
        assert_eq!(fixture.matches(queue).count(), 2);
        let moonshot = fixture
            .replace(
                "'functions.' + tool_call['function']['name'] + ':' + (tool_call_counter.value | string)",
                "tool_call['id']",
            )
            .replace("{%- set _ = tool_response_queue.ids.append(formatted_id) -%}", "")
            .replace(queue, "{%- set tool_call_id = message.tool_call_id -%}");
        assert!(!moonshot.contains("append"));
        let mut info = crate::testing::model_info(8192);
        info.chat_template = Some(moonshot.clone());
        let engine = crate::Engine::start(
            info,
            std::sync::Arc::new(ByteTokenizer),
            Box::new(crate::testing::ScriptedRunner::new("")),
            crate::EngineConfig::default(),
        )
        .unwrap();
        let mut request = crate::GenerateRequest::new("m", history(), 10);
        request.tools = tools();
        let tokens = engine.prompt_tokens(&request).unwrap();
        let bytes: Vec<u8> = tokens
            .into_iter()
            .flat_map(|t| ByteTokenizer.token_bytes(t))
            .collect();
        let prompt = String::from_utf8(bytes).unwrap();
        for line in [
            "<|tool_call_begin|>functions.Bash:0<|tool_call_argument_begin|>{\"command\": \"ls\"}<|tool_call_end|>",
            "<|tool_call_begin|>functions.Bash:1<|tool_call_argument_begin|>",
            "<|tool_call_begin|>functions.Read:2<|tool_call_argument_begin|>",
            "## Return of functions.Bash:1\n/repo<|im_end|>",
            "## Return of functions.Read:2\nfn main() {}",
        ] {
            assert!(prompt.contains(line), "{line:?} not in {prompt}");
        }
        assert!(!prompt.contains("toolu_") && !prompt.contains("call_9"));
        // Without the engine's ids, the template shows the model the client's.
        let template = ChatTemplate::from_source(&moonshot, SpecialTokens::default()).unwrap();
        let plain = template
            .render(&history(), &tools(), &RenderOptions::default())
            .unwrap();
        assert!(plain.contains("<|tool_call_begin|>toolu_01A<|tool_call_argument_begin|>"));
    }

    fn weather() -> ToolSpec {
        tool(
            "get_weather",
            json!({
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"]
            }),
        )
    }

    const OWN: &str = "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:3<|tool_call_argument_begin|>{\"city\": \"Oslo\", \"days\": 2}<|tool_call_end|><|tool_calls_section_end|>";

    /// The model's own call: the forced grammar lets it through whole and then only the
    /// end of the turn, and the parser reads it back.
    #[test]
    fn a_forced_call_is_the_models_own() {
        let forced = || {
            grammars()
                .forced_call(ToolFormat::KIMI_K2, &[weather()], None)
                .unwrap()
        };
        let mut c = forced();
        assert!(takes(&mut c, OWN));
        assert!(c.is_complete());
        let end = crate::testing::EOG;
        assert!(c
            .mask()
            .is_some_and(|m| TokenMask(m.as_slice()).allows(end)));
        let (segments, calls) = parse_with(KIMI, &[weather()], OWN);
        assert_eq!(
            calls_in(&segments),
            [("get_weather".to_owned(), json!({"city": "Oslo", "days": 2}))]
        );
        assert_eq!(calls, 1);
        // Text first, another name, no index, an index without end, a missing key.
        let head = "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:";
        assert!(!takes(&mut forced(), "Sure!"));
        assert!(!takes(
            &mut forced(),
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.Bash:"
        ));
        assert!(!takes(
            &mut forced(),
            &format!("{head}<|tool_call_argument_begin|>")
        ));
        assert!(!takes(&mut forced(), &format!("{head}1234567")));
        assert!(!takes(
            &mut forced(),
            &format!("{head}0<|tool_call_argument_begin|>{{\"days\": 2}}")
        ));
        // One call only.
        let one = OWN.strip_suffix("<|tool_calls_section_end|>").unwrap();
        assert!(!takes(&mut forced(), &format!("{one}<|tool_call_begin|>")));
    }

    /// Under `auto`, parallel calls are more calls in the section; without, one. A call
    /// without its section follows the bare grammar.
    #[test]
    fn a_lazy_call_holds_more_calls_when_parallel() {
        let one = "<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{\"city\": \"Oslo\", \"days\": 2}<|tool_call_end|>";
        let two = format!("{one}{one}<|tool_calls_section_end|>");
        for parallel in [true, false] {
            let lazy = grammars()
                .call_body(ToolFormat::KIMI_K2, &[weather()], parallel)
                .unwrap();
            let mut c = lazy.after_marker(super::SECTION_OPEN.as_bytes()).unwrap();
            assert_eq!(takes(&mut c, &two), parallel);
            let mut c = lazy.after_marker(super::SECTION_OPEN.as_bytes()).unwrap();
            assert!(takes(&mut c, &format!("{one}<|tool_calls_section_end|>")));
            assert!(c.is_complete());
            assert_eq!(lazy.bare_open(), Some(super::CALL_OPEN));
            let mut c = lazy.bare_after(&[]).unwrap();
            assert!(takes(&mut c, one));
            assert!(c.is_complete());
        }
    }

    /// Claude Code's 12 tools, forced and lazy: the grammars compile, quickly, and a
    /// call the forced grammar lets through reads back as that call.
    #[test]
    fn claude_codes_tools_compile_and_read_back() {
        let tools = crate::testing::claude_code_tools();
        let grammars = grammars();
        let start = Instant::now();
        let mut forced = grammars
            .forced_call(ToolFormat::KIMI_K2, &tools, None)
            .unwrap();
        let forced_time = start.elapsed();
        let start = Instant::now();
        grammars
            .call_body(ToolFormat::KIMI_K2, &tools, true)
            .unwrap();
        let lazy_time = start.elapsed();
        let start = Instant::now();
        grammars
            .forced_call(ToolFormat::KIMI_K2, &tools, None)
            .unwrap();
        grammars
            .call_body(ToolFormat::KIMI_K2, &tools, true)
            .unwrap();
        let cached = start.elapsed();
        eprintln!(
            "kimi_k2: forced {forced_time:.2?}, lazy {lazy_time:.2?}, both again {cached:.2?}"
        );
        let text = "<|tool_calls_section_begin|><|tool_call_begin|>functions.Bash:0<|tool_call_argument_begin|>{\"command\": \"ls -la\", \"description\": \"List files\"}<|tool_call_end|><|tool_calls_section_end|>";
        assert!(takes(&mut forced, text));
        assert!(forced.is_complete());
        let (segments, calls) = parse_with(KIMI, &tools, text);
        assert_eq!(
            calls_in(&segments),
            [(
                "Bash".to_owned(),
                json!({"command": "ls -la", "description": "List files"})
            )]
        );
        assert_eq!(calls, 1);
    }
}
