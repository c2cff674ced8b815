//! Harmony, the message format of gpt-oss-20b and -120b (vLLM's `openai` parser). A turn
//! is a run of messages, each a header, `<|message|>`, its content and an end marker:
//!
//! ```text
//! <|channel|>analysis<|message|>Need to list the files.<|end|>
//! <|start|>assistant<|channel|>commentary to=functions.Bash <|constrain|>json<|message|>{"command":"ls -la"}<|call|>
//! ```
//!
//! The channel says what a message is: `analysis` is reasoning, `final` the answer,
//! `commentary` a preamble to the user, or a call when the header names a recipient
//! `to=functions.NAME` (before or after `<|channel|>`: the template writes it in the role
//! header, the model mostly in the channel's). The content type (` json`,
//! `<|constrain|>json`) may be left out. The prompt ends with `<|start|>assistant`, so the
//! output starts inside the first header.
//!
//! This module owns all of it: the reader reads the whole output ([`Format::owns_output`])
//! into reasoning, text and calls, the grammars write a call's message, and [`history`]
//! reshapes what clients send back into what the template takes.

mod history;

use std::borrow::Cow;

use super::{Format, GrammarStart};
use crate::constrain::{calls_lark, literal, schema_for_grammar};
use crate::output::{
    find_marker, is_tool_name, stream_json, CallReader, Core, Found, JsonScanner, Next, Segment,
};
use crate::request::{Message, ToolSpec};

const START: &str = "<|start|>";
const CHANNEL: &str = "<|channel|>";
const MESSAGE: &str = "<|message|>";
const CONSTRAIN: &str = "<|constrain|>";
const END: &str = "<|end|>";
const CALL: &str = "<|call|>";
const RETURN: &str = "<|return|>";

const MARKERS: &[&str] = &[START, CHANNEL, MESSAGE, CONSTRAIN, END, CALL, RETURN];

/// What may begin a message where one can start: a marker, or the recipient that the
/// model writes right after the prompt's `<|start|>assistant`.
const HEADS: &[&str] = &[START, CHANNEL, MESSAGE, CONSTRAIN, END, CALL, RETURN, "to="];

/// The markers that end a message.
const ENDS: &[&str] = &[END, CALL, RETURN];

/// The recipient prefix of the request's own tools.
const FUNCTIONS: &str = "functions.";

pub(super) struct Harmony;

impl Format for Harmony {
    fn names(&self) -> &'static [&'static str] {
        &["harmony", "openai", "gpt_oss"]
    }

    fn models(&self) -> &'static str {
        "gpt-oss-20b, gpt-oss-120b"
    }

    fn detect(&self, template: &str) -> bool {
        template.contains(CHANNEL)
    }

    fn markers(&self) -> &'static [&'static str] {
        MARKERS
    }

    /// `<|constrain|>` comes only in a call's header (`<|constrain|>json`), after the
    /// tool's name: the lazy grammar takes the arguments of any offered tool from there.
    /// `<|channel|>` would also open reasoning and answers; ` to=functions` is no single
    /// token. A call written with ` json` instead runs unconstrained.
    fn open(&self) -> &'static str {
        CONSTRAIN
    }

    fn reader(&self) -> Box<dyn CallReader> {
        Box::new(HarmonyReader::default())
    }

    /// An analysis message's opening, so that a prompt ending in it starts in reasoning.
    fn reasoning(&self) -> (&'static str, &'static str) {
        ("<|channel|>analysis<|message|>", END)
    }

    fn owns_output(&self) -> bool {
        true
    }

    /// `<|call|>` is optional after the arguments: gpt-oss has it as an end-of-generation
    /// token, which a grammar allows once it is complete but would not take as the text
    /// it requires (a tokenizer without it as one may still write it).
    fn history(&self, conversation: &mut Vec<Message>, tools: &mut Cow<'_, [ToolSpec]>) {
        history::history(conversation, tools);
    }

    fn grammar(&self, tools: &[&ToolSpec], start: GrammarStart) -> String {
        let close = format!("{}?", literal(CALL));
        match start {
            GrammarStart::Forced | GrammarStart::Bare => {
                let open = literal(&format!("{CHANNEL}commentary to={FUNCTIONS}"));
                calls_lark(&open, "", None, tools, |i, tool, lark| {
                    let head = literal(&format!("{} {CONSTRAIN}json{MESSAGE}", tool.name));
                    lark.push_str(&format!("c{i}: {head} a{i} {close}\n"));
                    lark.push_str(&arguments_rule(i, tool));
                    format!("c{i}")
                })
            }
            // The name came before the trigger: the arguments of any of the tools.
            GrammarStart::AfterMarker { .. } => {
                let open = literal(&format!("json{MESSAGE}"));
                calls_lark(&open, "", None, tools, |i, tool, lark| {
                    lark.push_str(&format!("c{i}: a{i} {close}\n"));
                    lark.push_str(&arguments_rule(i, tool));
                    format!("c{i}")
                })
            }
        }
    }
}

fn arguments_rule(i: usize, tool: &ToolSpec) -> String {
    format!("a{i}: %json {}\n", schema_for_grammar(&tool.parameters))
}

/// Reads a whole Harmony output, message by message.
#[derive(Debug, Default)]
struct HarmonyReader {
    state: State,
    /// The first read has happened (the prompt may have opened reasoning).
    begun: bool,
    /// The last segment emitted was reasoning: a new analysis message is set apart.
    after_thought: bool,
}

#[derive(Debug, Default)]
enum State {
    /// Where a message may start.
    #[default]
    Between,
    /// A header, up to `<|message|>`.
    Header(String),
    /// A message's content, as reasoning or text; `started` once some was emitted.
    Content { thinking: bool, started: bool },
    /// A call's content, before its arguments open.
    CallOpen(String),
    /// The arguments stream.
    Arguments(JsonScanner),
    /// Content that does not open an object: read whole at the message's end.
    CallBuffered { name: String, body: String },
    /// Up to the message's end: what follows a call's arguments.
    Skip,
}

impl CallReader for HarmonyReader {
    fn read(&mut self, p: &mut Core, out: &mut Vec<Segment>) -> Next {
        if !self.begun {
            self.begun = true;
            if p.format.starts_thinking {
                self.state = State::Content {
                    thinking: true,
                    started: false,
                };
            }
        }
        match std::mem::take(&mut self.state) {
            State::Between => self.between(p),
            State::Header(header) => self.header(p, header),
            State::Content { thinking, started } => self.content(p, out, thinking, started),
            State::CallOpen(name) => self.call_open(p, out, name),
            State::Arguments(mut scanner) => {
                let (consumed, fragment, done) = stream_json(&mut scanner, &p.held, "");
                p.held.drain(..consumed);
                if !fragment.is_empty() {
                    out.push(Segment::CallArguments(fragment));
                }
                if done {
                    p.end_call(out);
                    self.state = State::Skip;
                    Next::Again
                } else {
                    self.state = State::Arguments(scanner);
                    Next::Wait
                }
            }
            State::CallBuffered { name, mut body } => match find_marker(&p.held, MARKERS) {
                Found::At(at, marker) => {
                    body.extend(p.held.drain(..at));
                    if ends_message(p, marker) {
                        self.buffered_call(p, out, name, &body);
                    } else {
                        self.state = State::CallBuffered { name, body };
                    }
                    Next::Again
                }
                Found::No { safe } => {
                    body.extend(p.held.drain(..safe));
                    self.state = State::CallBuffered { name, body };
                    Next::Wait
                }
            },
            State::Skip => match find_marker(&p.held, MARKERS) {
                Found::At(at, marker) => {
                    p.held.drain(..at);
                    if !ends_message(p, marker) {
                        self.state = State::Skip;
                    }
                    Next::Again
                }
                Found::No { safe } => {
                    p.held.drain(..safe);
                    self.state = State::Skip;
                    Next::Wait
                }
            },
        }
    }

    fn finish(&mut self, p: &mut Core, out: &mut Vec<Segment>) {
        let held = std::mem::take(&mut p.held);
        match std::mem::take(&mut self.state) {
            // A header cut off (or whitespace): nothing to show.
            State::Between | State::Header(_) | State::Skip => {}
            State::Content { thinking, started } => {
                self.emit(p, out, cut_marker_off(&held).trim_end(), thinking, started);
            }
            State::CallOpen(name) => {
                tracing::info!(%name, "a tool call was cut off before its arguments; dropped");
            }
            State::Arguments(scanner) => {
                let rest = scanner.completion();
                if !rest.is_empty() {
                    out.push(Segment::CallArguments(rest));
                }
                out.push(Segment::CallEnd);
                tracing::info!("a tool call was cut off; its arguments were closed");
            }
            State::CallBuffered { name, mut body } => {
                body.push_str(cut_marker_off(&held));
                self.buffered_call(p, out, name, &body);
            }
        }
    }
}

impl HarmonyReader {
    /// Between messages: whitespace is dropped; a header starts, or (a prompt that
    /// ended inside a message's content) text does.
    fn between(&mut self, p: &mut Core) -> Next {
        let ws = p.held.len() - p.held.trim_start().len();
        p.held.drain(..ws);
        if HEADS.iter().any(|h| p.held.starts_with(h)) {
            self.state = State::Header(String::new());
            Next::Again
        } else if p.held.is_empty() || HEADS.iter().any(|h| h.starts_with(p.held.as_str())) {
            Next::Wait
        } else {
            self.state = State::Content {
                thinking: false,
                started: false,
            };
            Next::Again
        }
    }

    fn header(&mut self, p: &mut Core, mut header: String) -> Next {
        match find_marker(&p.held, &[MESSAGE, END, CALL, RETURN]) {
            Found::At(at, marker) => {
                header.push_str(&p.held[..at]);
                p.held.drain(..at + marker.len());
                self.state = if marker == MESSAGE {
                    self.open_message(p, &header)
                } else {
                    tracing::debug!(%header, "a message header without content; dropped");
                    State::Between
                };
                Next::Again
            }
            Found::No { safe } => {
                header.extend(p.held.drain(..safe));
                self.state = State::Header(header);
                Next::Wait
            }
        }
    }

    /// What a message is, from its header.
    fn open_message(&self, p: &Core, header: &str) -> State {
        // A header that restarts (`<|start|>` inside it) is the last one's.
        let header = header.rsplit(START).next().unwrap_or(header);
        let channel = header.split(CHANNEL).nth(1).map(first_word);
        let recipient = header.find("to=").map(|at| first_word(&header[at + 3..]));
        if let Some(recipient) = recipient {
            let name = recipient.strip_prefix(FUNCTIONS).unwrap_or(recipient);
            let tool = recipient.starts_with(FUNCTIONS) || p.tools.iter().any(|t| t.name == name);
            if tool && is_tool_name(name) {
                if p.format.tools.is_some() {
                    return State::CallOpen(name.to_owned());
                }
                // The model saw tools in its history but none are offered now: what it
                // wrote is shown rather than lost, and never a call the client can't take.
                tracing::info!(%name, "a tool call without tools offered; returned as text");
                return State::Content {
                    thinking: false,
                    started: false,
                };
            }
        }
        State::Content {
            thinking: channel == Some("analysis"),
            started: false,
        }
    }

    /// Reasoning or text, up to the message's end.
    fn content(
        &mut self,
        p: &mut Core,
        out: &mut Vec<Segment>,
        thinking: bool,
        started: bool,
    ) -> Next {
        match find_marker(&p.held, MARKERS) {
            Found::At(at, marker) => {
                let content: String = p.held.drain(..at).collect();
                if ends_message(p, marker) {
                    self.emit(p, out, content.trim_end(), thinking, started);
                } else {
                    // Whitespace before the dropped marker may still lead to more content.
                    p.held.insert_str(0, &content);
                    self.state = State::Content { thinking, started };
                }
                Next::Again
            }
            Found::No { safe } => {
                // Trailing whitespace waits: the message may end after it.
                let keep = p.held[..safe].trim_end().len();
                let content: String = p.held.drain(..keep).collect();
                let started = self.emit(p, out, &content, thinking, started);
                self.state = State::Content { thinking, started };
                Next::Wait
            }
        }
    }

    /// Emit a message's content; returns whether the message has started showing. A
    /// message's leading whitespace is dropped, and one set apart from the message of
    /// the same kind before it.
    fn emit(
        &mut self,
        p: &mut Core,
        out: &mut Vec<Segment>,
        content: &str,
        thinking: bool,
        started: bool,
    ) -> bool {
        let content = if started {
            content
        } else {
            content.trim_start()
        };
        if content.is_empty() {
            return started;
        }
        let apart = !started
            && if thinking {
                self.after_thought
            } else {
                p.in_text
            };
        let content = if apart {
            format!("\n\n{content}")
        } else {
            content.to_owned()
        };
        p.emit(
            out,
            if thinking {
                Segment::Thinking(content)
            } else {
                Segment::Text(content)
            },
        );
        self.after_thought = thinking;
        true
    }

    /// A call's content: its arguments stream once they open an object.
    fn call_open(&mut self, p: &mut Core, out: &mut Vec<Segment>, name: String) -> Next {
        let trimmed = p.held.trim_start();
        if trimmed.is_empty() {
            self.state = State::CallOpen(name);
            return Next::Wait;
        }
        if trimmed.starts_with('{') {
            let ws = p.held.len() - trimmed.len();
            p.held.drain(..ws);
            p.start_call(out, name);
            self.after_thought = false;
            self.state = State::Arguments(JsonScanner::default());
        } else {
            self.state = State::CallBuffered {
                name,
                body: String::new(),
            };
        }
        Next::Again
    }

    /// A call whose content was not streamed: its arguments are an object (or a string
    /// holding one; none at all is an empty object), or it is text.
    fn buffered_call(&mut self, p: &mut Core, out: &mut Vec<Segment>, name: String, body: &str) {
        let body = body.trim();
        let arguments = if body.is_empty() {
            Some("{}".to_owned())
        } else {
            match serde_json::from_str::<serde_json::Value>(body) {
                Ok(value @ serde_json::Value::Object(_)) => Some(value.to_string()),
                Ok(serde_json::Value::String(s)) => serde_json::from_str::<serde_json::Value>(&s)
                    .ok()
                    .filter(serde_json::Value::is_object)
                    .map(|v| v.to_string()),
                _ => None,
            }
        };
        match arguments {
            Some(arguments) => {
                p.start_call(out, name);
                out.push(Segment::CallArguments(arguments));
                p.end_call(out);
                self.after_thought = false;
            }
            None => {
                tracing::warn!(%name, %body, "a tool call's arguments are no JSON object; returned as text");
                self.emit(p, out, body, false, false);
            }
        }
    }
}

/// At `marker`, at the start of `p.held`: whether it ends the message. End markers
/// go, and so do out-of-place ones (the content goes on); a new header stays to be read.
fn ends_message(p: &mut Core, marker: &str) -> bool {
    if matches!(marker, START | CHANNEL) {
        return true;
    }
    p.held.drain(..marker.len());
    ENDS.contains(&marker)
}

/// What was held at the end of the output, without a marker cut off there.
fn cut_marker_off(held: &str) -> &str {
    match find_marker(held, MARKERS) {
        Found::At(at, _) => &held[..at],
        Found::No { safe } if held[safe..].starts_with("<|") => &held[..safe],
        Found::No { .. } => held,
    }
}

/// The word at the start of a header part: up to whitespace or the next marker.
fn first_word(s: &str) -> &str {
    let s = s.trim_start();
    let end = s
        .find(|c: char| c.is_whitespace() || c == '<')
        .unwrap_or(s.len());
    &s[..end]
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::constrain::{Constraint, Grammars};
    use crate::model::{TokenMask, Tokenizer};
    use crate::output::family_tests::every_cut_parses;
    use crate::output::tests::{call, parse_in, parse_with};
    use crate::output::{OutputFormat, OutputParser, Segment};
    use crate::request::ToolSpec;
    use crate::testing::ByteTokenizer;
    use crate::ToolFormat;
    use serde_json::{json, Value};

    use super::MARKERS;

    fn tools() -> Vec<ToolSpec> {
        let bash = json!({"type": "object", "properties": {
            "command": {"type": "string"}, "timeout": {"type": "integer"}},
            "required": ["command"]});
        vec![ToolSpec {
            name: "Bash".into(),
            description: None,
            parameters: bash,
        }]
    }

    /// gpt-oss with tools offered.
    const GPT_OSS: OutputFormat = OutputFormat {
        model: None,
        tools: Some(ToolFormat::HARMONY),
        reasoning: true,
        starts_thinking: false,
        hide_reasoning: false,
    };

    /// gpt-oss, for a request without tools.
    const NO_TOOLS: OutputFormat = OutputFormat {
        model: Some(ToolFormat::HARMONY),
        tools: None,
        ..GPT_OSS
    };

    const THOUGHT: &str = "<|channel|>analysis<|message|>Need to list the files.<|end|>";
    /// A call as the model writes it: the recipient in the channel's header.
    const CALL: &str = "<|start|>assistant<|channel|>commentary to=functions.Bash <|constrain|>json<|message|>{\"command\":\"ls -la\"}<|call|>";
    const ARGS: &str = "{\"command\":\"ls -la\"}";

    fn thinking(text: &str) -> Segment {
        Segment::Thinking(text.into())
    }

    fn text(text: &str) -> Segment {
        Segment::Text(text.into())
    }

    /// Segments, checked to be the same however the output is split, and cut after
    /// every character: arguments close, and no marker reaches text or reasoning.
    fn parse(format: OutputFormat, output: &str) -> (Vec<Segment>, usize) {
        every_cut_parses(ToolFormat::HARMONY, output);
        let chars: Vec<char> = output.chars().collect();
        for cut in 0..=chars.len() {
            let prefix: String = chars[..cut].iter().collect();
            for s in parse_in(format, &prefix, 2).0 {
                if let Segment::Text(t) | Segment::Thinking(t) = &s {
                    for m in MARKERS {
                        assert!(!t.contains(m), "{prefix:?} leaked {m}: {s:?}");
                    }
                }
            }
        }
        parse_with(format, &tools(), output)
    }

    #[test]
    fn analysis_then_a_call() {
        let (segments, calls) = parse(GPT_OSS, &format!("{THOUGHT}{CALL}"));
        let mut expected = vec![thinking("Need to list the files.")];
        expected.extend(call("Bash", ARGS));
        assert_eq!(segments, expected);
        assert_eq!(calls, 1);
        // `<|call|>` ends generation, so the output usually stops at the arguments.
        let cut = CALL.strip_suffix("<|call|>").unwrap_or(CALL);
        let (segments, calls) = parse(GPT_OSS, &format!("{THOUGHT}{cut}"));
        assert_eq!(segments, expected);
        assert_eq!(calls, 1);
    }

    #[test]
    fn analysis_then_the_answer() {
        let output = format!(
            "{THOUGHT}<|start|>assistant<|channel|>final<|message|>Here they are.<|return|>"
        );
        let (segments, calls) = parse(GPT_OSS, &output);
        assert_eq!(
            segments,
            vec![thinking("Need to list the files."), text("Here they are.")]
        );
        assert_eq!(calls, 0);
        // The same without tools: reasoning is reasoning whatever the request.
        assert_eq!(parse(NO_TOOLS, &output).0, segments);
    }

    #[test]
    fn a_preamble_is_text_before_the_call() {
        let output = format!(
            "{THOUGHT}<|start|>assistant<|channel|>commentary<|message|>Listing the files.<|end|>{CALL}"
        );
        let (segments, calls) = parse(GPT_OSS, &output);
        let mut expected = vec![
            thinking("Need to list the files."),
            text("Listing the files."),
        ];
        expected.extend(call("Bash", ARGS));
        assert_eq!(segments, expected);
        assert_eq!(calls, 1);
    }

    #[test]
    fn the_recipient_may_stand_in_either_header() {
        let args = "{\"command\": \"ls\"}";
        for output in [
            // As the template renders history, right after the prompt's `<|start|>assistant`.
            format!(" to=functions.Bash<|channel|>commentary json<|message|>{args}<|call|>"),
            format!("<|start|>assistant to=functions.Bash<|channel|>commentary json<|message|>{args}<|call|>"),
            // As the model writes it.
            format!("<|channel|>commentary to=functions.Bash <|constrain|>json<|message|>{args}<|call|>"),
        ] {
            let (segments, calls) = parse(GPT_OSS, &output);
            assert_eq!(segments, call("Bash", args), "{output}");
            assert_eq!(calls, 1);
        }
    }

    #[test]
    fn the_content_type_may_be_written_any_way_or_left_out() {
        for head in [
            "<|channel|>commentary to=functions.Bash <|constrain|>json",
            "<|channel|>commentary to=functions.Bash<|constrain|>json",
            "<|channel|>commentary to=functions.Bash json",
            "<|channel|>commentary to=functions.Bash",
            "<|channel|>commentary to=functions.Bash code",
        ] {
            let output = format!("{head}<|message|> {ARGS}<|call|>");
            assert_eq!(parse(GPT_OSS, &output).0, call("Bash", ARGS), "{head}");
        }
    }

    #[test]
    fn several_messages_in_one_turn() {
        let output = format!(
            "{THOUGHT}<|start|>assistant<|channel|>analysis<|message|>Then check the size.<|end|>\
             <|start|>assistant<|channel|>commentary<|message|>Checking.<|end|>\
             <|start|>assistant<|channel|>commentary<|message|>Still checking.<|end|>{CALL}"
        );
        let (segments, calls) = parse(GPT_OSS, &output);
        let mut expected = vec![
            thinking("Need to list the files.\n\nThen check the size."),
            text("Checking.\n\nStill checking."),
        ];
        expected.extend(call("Bash", ARGS));
        assert_eq!(segments, expected);
        assert_eq!(calls, 1);
        // A message that starts without its predecessor's end marker.
        let output =
            "<|channel|>analysis<|message|>Hm.<|start|>assistant<|channel|>final<|message|>Done.";
        assert_eq!(
            parse(GPT_OSS, output).0,
            vec![thinking("Hm."), text("Done.")]
        );
    }

    #[test]
    fn a_call_is_no_call_when_no_tools_are_offered() {
        // Its arguments are shown as text, not lost, and never a call.
        let (segments, calls) = parse(NO_TOOLS, &format!("{THOUGHT}{CALL}"));
        assert_eq!(
            segments,
            vec![thinking("Need to list the files."), text(ARGS)]
        );
        assert_eq!(calls, 0);
    }

    #[test]
    fn cut_off_calls() {
        // Mid-arguments: closed into valid JSON, not counted as complete.
        let output = "<|channel|>commentary to=functions.Bash <|constrain|>json<|message|>{\"command\":\"ls -";
        let (segments, calls) = parse(GPT_OSS, output);
        assert_eq!(segments, call("Bash", "{\"command\":\"ls -\"}"));
        assert_eq!(calls, 0);
        // Before the arguments: dropped.
        let output = "<|channel|>commentary to=functions.Bash <|constrain|>json<|message|>";
        assert_eq!(parse(GPT_OSS, output), (vec![], 0));
        // Inside reasoning: what was thought.
        let output = "<|channel|>analysis<|message|>Need to <|e";
        assert_eq!(parse(GPT_OSS, output).0, vec![thinking("Need to")]);
    }

    #[test]
    fn arguments_stream_as_they_are_generated() {
        let mut p = OutputParser::new(GPT_OSS).with_tools(&tools());
        let head = "<|channel|>commentary to=functions.Bash <|constrain|>json<|message|>";
        assert_eq!(p.push(head), vec![]);
        assert_eq!(
            p.push("{\"command\":\"ls"),
            vec![
                Segment::CallStart {
                    name: "Bash".into()
                },
                Segment::CallArguments("{\"command\":\"ls".into())
            ]
        );
        assert_eq!(
            p.push(" -la\"}"),
            vec![Segment::CallArguments(" -la\"}".into()), Segment::CallEnd]
        );
        assert_eq!(p.calls(), 1);
        // Reasoning streams too, holding back only what may be a marker.
        let mut p = OutputParser::new(GPT_OSS);
        assert_eq!(
            p.push("<|channel|>analysis<|message|>Let me <|"),
            vec![thinking("Let me")]
        );
        assert_eq!(p.push("end|>"), vec![]);
    }

    #[test]
    fn markers_in_arguments_are_argument_text() {
        let args = "{\"content\":\"ends with <|end|> and <|call|>\"}";
        let output =
            format!("<|channel|>commentary to=functions.Write json<|message|>{args}<|call|>");
        assert_eq!(parse(GPT_OSS, &output).0, call("Write", args));
    }

    #[test]
    fn arguments_that_are_no_object() {
        // A JSON string holding the object.
        let output = "<|channel|>commentary to=functions.Bash json<|message|>\"{\\\"command\\\": \\\"ls\\\"}\"<|call|>";
        assert_eq!(
            parse(GPT_OSS, output).0,
            call("Bash", "{\"command\":\"ls\"}")
        );
        // None at all: an empty object.
        let output = "<|channel|>commentary to=functions.Bash json<|message|><|call|>";
        assert_eq!(parse(GPT_OSS, output).0, call("Bash", "{}"));
        // Anything else is text, also when it is cut off.
        let output = "<|channel|>commentary to=functions.Bash json<|message|>ls -la<|call|>";
        assert_eq!(parse(GPT_OSS, output), (vec![text("ls -la")], 0));
        let output = "<|channel|>commentary to=functions.Bash json<|message|>ls -la<|ca";
        assert_eq!(parse(GPT_OSS, output), (vec![text("ls -la")], 0));
    }

    #[test]
    fn output_without_a_header_is_text() {
        // A prompt that ended inside a message (a prefilled answer) goes on in its content.
        let (segments, _) = parse(NO_TOOLS, " rusts in the rain<|return|>");
        assert_eq!(segments, vec![text("rusts in the rain")]);
        // A prompt that opened reasoning.
        let format = OutputFormat {
            starts_thinking: true,
            ..GPT_OSS
        };
        let (segments, _) = parse(
            format,
            "Hm.<|end|><|start|>assistant<|channel|>final<|message|>Hi.",
        );
        assert_eq!(segments, vec![thinking("Hm."), text("Hi.")]);
    }

    #[test]
    fn other_recipients_are_no_calls() {
        // gpt-oss's built-in tools are not the request's.
        let output = "<|channel|>analysis to=python code<|message|>print(1)<|call|>";
        assert_eq!(parse(GPT_OSS, output), (vec![thinking("print(1)")], 0));
    }

    /// The golden render of an agent loop shows history as the parser must read it back:
    /// what follows each `<|start|>assistant` up to the tool's answer is what the model
    /// wrote, and it is the reasoning and the call the history was made of.
    #[test]
    fn history_as_the_template_renders_it_reads_back() {
        let golden =
            include_str!("../../template/fixtures/expected/gpt-oss/agent_loop_thinking.txt");
        let turns: Vec<&str> = golden
            .split("<|start|>user<|message|>Where is the parser?<|end|><|start|>assistant")
            .nth(1)
            .unwrap_or_default()
            .split("<|start|>functions.")
            .collect();
        let mut first = vec![thinking("I should search the code.")];
        first.extend(call(
            "search_code",
            "{\"query\": \"parse\", \"max_results\": 3, \"filters\": {\"language\": \"rust\"}}",
        ));
        let (segments, calls) = parse(GPT_OSS, turns[0]);
        assert_eq!(segments, first);
        assert_eq!(calls, 1);
        // The next turn, after the tool's answer and the prompt's `<|start|>assistant`.
        let second = turns[1]
            .split_once("<|end|><|start|>assistant")
            .map_or("", |(_, rest)| rest);
        let mut expected = vec![thinking("Now read the file.")];
        expected.extend(call("read_file", "{\"path\": \"src/parse.rs\"}"));
        assert_eq!(parse(GPT_OSS, second).0, expected);
    }

    #[test]
    fn the_template_is_recognised() {
        let template = include_str!("../../template/fixtures/gpt-oss.jinja");
        assert_eq!(ToolFormat::detect(template), Some(ToolFormat::HARMONY));
        for name in ["harmony", "openai", "gpt_oss"] {
            assert_eq!(ToolFormat::from_name(name), Some(ToolFormat::HARMONY));
        }
    }

    fn weather() -> ToolSpec {
        ToolSpec {
            name: "get_weather".into(),
            description: None,
            parameters: json!({"type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"]}),
        }
    }

    /// Drive a grammar, taking `prefer`'s next byte when it is allowed, else something
    /// that closes what is open, else the first token allowed.
    fn generate(c: &mut Constraint, prefer: &str) -> String {
        let mut out = Vec::new();
        let mut prefer = ByteTokenizer.encode(prefer).into_iter();
        for _ in 0..400 {
            let Some(mask) = c.mask() else {
                panic!(
                    "the grammar failed after {:?}",
                    String::from_utf8_lossy(&out)
                )
            };
            let m = TokenMask(mask.as_slice());
            let token = match prefer.next() {
                Some(t) if m.allows(t) => t,
                _ => ByteTokenizer
                    .encode("\"}1,")
                    .into_iter()
                    .chain(0..257)
                    .find(|t| m.allows(*t))
                    .unwrap_or(crate::testing::EOG),
            };
            if ByteTokenizer.is_end_of_generation(token) {
                break;
            }
            c.accept(token);
            out.extend(ByteTokenizer.token_bytes(token));
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn arguments(segments: &[Segment]) -> Value {
        let args: String = segments
            .iter()
            .filter_map(|s| match s {
                Segment::CallArguments(a) => Some(a.as_str()),
                _ => None,
            })
            .collect();
        serde_json::from_str(&args).unwrap_or(Value::Null)
    }

    #[test]
    fn a_forced_grammar_lets_the_models_own_call_through() {
        let grammars = Grammars::new(&ByteTokenizer, &HashMap::new()).expect("grammars");
        let own = "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Oslo\", \"days\": 2}<|call|>";
        let mut c = grammars
            .forced_call(ToolFormat::HARMONY, &[weather()], None)
            .expect("grammar");
        let written = generate(&mut c, own);
        assert_eq!(written, own);
        let (segments, calls) = parse_with(GPT_OSS, &[weather()], &written);
        assert_eq!(arguments(&segments), json!({"city": "Oslo", "days": 2}));
        assert_eq!(calls, 1);
        // A model that would rather think or chat is made to call.
        let mut c = grammars
            .forced_call(ToolFormat::HARMONY, &[weather()], None)
            .expect("grammar");
        let written = generate(&mut c, "<|channel|>analysis<|message|>Hm.");
        let (segments, calls) = parse_with(GPT_OSS, &[weather()], &written);
        assert!(arguments(&segments)["days"].is_i64(), "{written}");
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_lazy_grammar_starts_at_constrain() {
        let grammars = Grammars::new(&ByteTokenizer, &HashMap::new()).expect("grammars");
        let lazy = grammars
            .call_body(ToolFormat::HARMONY, &[weather()], false)
            .expect("grammar");
        assert!(lazy.after_marker(b"<|channel|>").is_none());
        let mut c = lazy.after_marker(b"<|constrain|>").expect("the trigger");
        let rest = "json<|message|>{\"city\": \"Oslo\", \"days\": 2}<|call|>";
        assert_eq!(generate(&mut c, rest), rest);
        assert!(c.is_complete());
        // Arguments that fit no tool are not let through.
        let mut c = lazy.after_marker(b"<|constrain|>").expect("the trigger");
        let written = generate(&mut c, "json<|message|>{\"town\": \"Oslo\"}");
        assert!(written.starts_with("json<|message|>{\"city\""), "{written}");
    }
}
