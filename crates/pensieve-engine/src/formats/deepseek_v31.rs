//! DeepSeek V3.1's calls (V3.1, V3.1-Terminus): control tokens around a name and its
//! JSON arguments, every call of a turn in one block, run together:
//!
//! ```text
//! <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>Bash<｜tool▁sep｜>{"command": "ls -la"}<｜tool▁call▁end｜><｜tool▁call▁begin｜>Read<｜tool▁sep｜>{"file_path": "a.rs"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>
//! ```
//!
//! (`｜` is U+FF5C, `▁` U+2581.) DeepSeek V3 and R1 wrote `function<｜tool▁sep｜>NAME`
//! and the arguments in a ```` ```json ```` fence between the same tokens (vLLM's
//! `deepseek_v3`): another format, not read here. The template's generation prompt ends
//! with `<think>` in thinking mode and with `</think>` (llama.cpp's copy:
//! `<think></think>`) without, so reasoning is `<think>`'s.

use super::{Format, GrammarStart};
use crate::constrain::{calls_lark, literal, schema_for_grammar};
use crate::output::{
    find_marker, is_tool_name, stream_json, CallReader, Core, Found, JsonScanner, Next, Segment,
};
use crate::request::ToolSpec;

const CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
const CALLS_END: &str = "<｜tool▁calls▁end｜>";
const CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
const CALL_END: &str = "<｜tool▁call▁end｜>";
const SEP: &str = "<｜tool▁sep｜>";

/// How far a name may run without `<｜tool▁sep｜>` before the call is taken for text.
const MAX_NAME: usize = 256;

pub(super) struct DeepSeekV31;

impl Format for DeepSeekV31 {
    fn names(&self) -> &'static [&'static str] {
        &["deepseek_v31"]
    }

    fn models(&self) -> &'static str {
        "DeepSeek V3.1, V3.1-Terminus"
    }

    /// V3 and R1 templates hold the same tokens but fence the arguments as JSON code.
    fn detect(&self, template: &str) -> bool {
        template.contains(CALLS_BEGIN) && template.contains(SEP) && !template.contains("```json")
    }

    fn markers(&self) -> &'static [&'static str] {
        &[CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, SEP]
    }

    fn open(&self) -> &'static str {
        CALLS_BEGIN
    }

    fn reader(&self) -> Box<dyn CallReader> {
        Box::new(CallsBlock {
            state: State::Between,
            calls: 0,
        })
    }

    /// Neither V3.1 template writes the tools: DeepSeek's model card has the caller
    /// append this to the system prompt (after a blank line, which the render's merge of
    /// system turns puts there), the parameters printed by Python's `json.dumps`.
    fn tool_prompt(&self, tools: &[ToolSpec]) -> Option<String> {
        let mut text = String::from("## Tools\nYou have access to the following tools:\n\n");
        for tool in tools {
            let description = tool.description.as_deref().unwrap_or_default();
            let parameters = crate::template::python_json(&tool.parameters);
            text.push_str(&format!(
                "### {}\nDescription: {description}\n\nParameters: {parameters}\n\n",
                tool.name
            ));
        }
        text.push_str(&format!(
            "IMPORTANT: ALWAYS adhere to this exact format for tool use:\n\
             {CALLS_BEGIN}{CALL_BEGIN}tool_call_name{SEP}tool_call_arguments{CALL_END}\
             {{additional_tool_calls}}{CALLS_END}\n\n\
             Where:\n\
             - `tool_call_name` must be an exact match to one of the available tools\n\
             - `tool_call_arguments` must be valid JSON that strictly follows the tool's \
             Parameters Schema\n\
             - For multiple tool calls, chain them directly without separators or spaces"
        ));
        Some(text)
    }

    /// Parallel calls are more calls in the one block, as the template writes them.
    fn grammar(&self, tools: &[&ToolSpec], start: GrammarStart) -> String {
        let (open, separator) = match start {
            GrammarStart::Forced => (literal(CALLS_BEGIN), None),
            GrammarStart::AfterMarker { parallel } => (literal(""), parallel.then_some("")),
            GrammarStart::Bare => (literal(""), None),
        };
        calls_lark(&open, CALLS_END, separator, tools, |i, tool, lark| {
            lark.push_str(&format!(
                "c{i}: {} %json {} {}\n",
                literal(&format!("{CALL_BEGIN}{}{SEP}", tool.name)),
                schema_for_grammar(&tool.parameters),
                literal(CALL_END)
            ));
            format!("c{i}")
        })
    }
}

/// Where the reader is in a block.
#[derive(Debug)]
enum State {
    /// Before a call (`<｜tool▁call▁begin｜>`) or the block's end.
    Between,
    /// The name, up to `<｜tool▁sep｜>`.
    Name,
    /// Before the arguments' `{`.
    BeforeArguments,
    /// The arguments, streaming.
    Arguments(JsonScanner),
    /// After the arguments: `<｜tool▁call▁end｜>`.
    AfterArguments,
}

/// One block of calls after `<｜tool▁calls▁begin｜>`.
#[derive(Debug)]
struct CallsBlock {
    state: State,
    /// Calls this block made.
    calls: usize,
}

impl CallsBlock {
    /// What followed the marker is no call: give it back as text.
    fn not_a_call(&mut self, p: &mut Core, out: &mut Vec<Segment>) -> Next {
        let held = std::mem::take(&mut p.held);
        tracing::warn!(body = %held, "a tool call could not be parsed; returned as text");
        p.emit(out, Segment::Text(format!("{CALLS_BEGIN}{held}")));
        Next::Text
    }

    fn between(&mut self, p: &mut Core) -> Next {
        let trimmed = p.held.trim_start();
        let ws = p.held.len() - trimmed.len();
        if trimmed.starts_with(CALL_BEGIN) {
            p.held.drain(..ws + CALL_BEGIN.len());
            self.state = State::Name;
            return Next::Again;
        }
        if trimmed.starts_with(CALLS_END) {
            p.held.drain(..ws + CALLS_END.len());
            return Next::Text;
        }
        if trimmed.is_empty()
            || [CALL_BEGIN, CALLS_END]
                .iter()
                .any(|m| m.starts_with(trimmed))
        {
            return Next::Wait;
        }
        // The name straight after the block's marker (the call's own left out).
        if self.calls == 0 {
            self.state = State::Name;
            return Next::Again;
        }
        // After a call, anything but another one ends the block.
        Next::Text
    }

    fn name(&mut self, p: &mut Core, out: &mut Vec<Segment>) -> Next {
        match find_marker(&p.held, &[SEP]) {
            Found::At(at, _) => {
                let name = p.held[..at].trim().to_owned();
                if !is_tool_name(&name) {
                    return self.give_up(p, out);
                }
                p.held.drain(..at + SEP.len());
                p.start_call(out, name);
                self.state = State::BeforeArguments;
                Next::Again
            }
            Found::No { safe } => {
                let name = p.held[..safe].trim();
                if p.held.len() > MAX_NAME || !(name.is_empty() || is_tool_name(name)) {
                    return self.give_up(p, out);
                }
                Next::Wait
            }
        }
    }

    /// A call that can't be read: the block is text when it is the first, else the
    /// block ends at what came before it.
    fn give_up(&mut self, p: &mut Core, out: &mut Vec<Segment>) -> Next {
        if self.calls == 0 {
            return self.not_a_call(p, out);
        }
        tracing::warn!(body = %p.held, "a tool call could not be parsed; returned as text");
        let text = format!("{CALL_BEGIN}{}", std::mem::take(&mut p.held));
        p.emit_text(out, &text);
        Next::Text
    }

    fn before_arguments(&mut self, p: &mut Core, out: &mut Vec<Segment>) -> Next {
        let trimmed = p.held.trim_start();
        if trimmed.is_empty() {
            return Next::Wait;
        }
        let ws = p.held.len() - trimmed.len();
        if trimmed.starts_with('{') {
            p.held.drain(..ws);
            self.state = State::Arguments(JsonScanner::default());
            return Next::Again;
        }
        // Arguments that are no object: the call gets none.
        tracing::warn!(body = %p.held, "a tool call's arguments are not a JSON object; dropped");
        out.push(Segment::CallArguments("{}".to_owned()));
        self.end_call(p, out);
        Next::Again
    }

    fn arguments(
        &mut self,
        p: &mut Core,
        out: &mut Vec<Segment>,
        mut scanner: JsonScanner,
    ) -> Next {
        let (consumed, fragment, done) = stream_json(&mut scanner, &p.held, &p.held);
        p.held.drain(..consumed);
        if !fragment.is_empty() {
            out.push(Segment::CallArguments(fragment));
        }
        if !done {
            self.state = State::Arguments(scanner);
            return Next::Wait;
        }
        self.end_call(p, out);
        Next::Again
    }

    /// The call's arguments are complete: it ends now, not at `<｜tool▁call▁end｜>`.
    fn end_call(&mut self, p: &mut Core, out: &mut Vec<Segment>) {
        p.end_call(out);
        self.calls += 1;
        self.state = State::AfterArguments;
    }

    fn after_arguments(&mut self, p: &mut Core) -> Next {
        let trimmed = p.held.trim_start();
        let ws = p.held.len() - trimmed.len();
        if trimmed.starts_with(CALL_END) {
            p.held.drain(..ws + CALL_END.len());
            self.state = State::Between;
            return Next::Again;
        }
        if trimmed.is_empty() || CALL_END.starts_with(trimmed) {
            return Next::Wait;
        }
        // Its end left out: another call, the block's end, or text.
        self.state = State::Between;
        Next::Again
    }
}

impl CallReader for CallsBlock {
    fn read(&mut self, p: &mut Core, out: &mut Vec<Segment>) -> Next {
        match std::mem::replace(&mut self.state, State::Between) {
            State::Between => self.between(p),
            State::Name => {
                self.state = State::Name;
                self.name(p, out)
            }
            State::BeforeArguments => {
                self.state = State::BeforeArguments;
                self.before_arguments(p, out)
            }
            State::Arguments(scanner) => self.arguments(p, out, scanner),
            State::AfterArguments => {
                self.state = State::AfterArguments;
                self.after_arguments(p)
            }
        }
    }

    fn finish(&mut self, p: &mut Core, out: &mut Vec<Segment>) {
        match std::mem::replace(&mut self.state, State::Between) {
            State::Between | State::AfterArguments => {}
            State::Name => {
                tracing::info!(body = %p.held, "a tool call was cut off before its name; dropped");
            }
            State::BeforeArguments => {
                tracing::info!("a tool call was cut off; its arguments were closed");
                out.push(Segment::CallArguments("{}".to_owned()));
                p.end_call(out);
            }
            State::Arguments(mut scanner) => {
                tracing::info!("a tool call was cut off; its arguments were closed");
                let (_, fragment, done) = stream_json(&mut scanner, &p.held, &p.held);
                let rest = if done {
                    String::new()
                } else {
                    scanner.completion()
                };
                let arguments = format!("{fragment}{rest}");
                if !arguments.is_empty() {
                    out.push(Segment::CallArguments(arguments));
                }
                p.end_call(out);
            }
        }
    }
}

/// The markers are control tokens of DeepSeek's vocabulary, which no test model has:
/// these tests read text (and run grammars over a byte tokenizer).
#[cfg(test)]
mod tests {
    use crate::formats::test_support::{calls_in, fixtures, grammars, takes, tool};

    use serde_json::{json, Value};

    use crate::model::TokenMask;
    use crate::output::family_tests::every_cut_parses;
    use crate::output::tests::{call, parse_with};
    use crate::output::{OutputFormat, OutputParser, Segment};
    use crate::request::ToolSpec;

    use crate::ToolFormat;

    fn tools() -> Vec<ToolSpec> {
        let bash = json!({"type": "object", "properties": {
            "command": {"type": "string"}, "timeout": {"type": "integer"}},
            "required": ["command"]});
        let read = json!({"type": "object", "properties": {"file_path": {"type": "string"}}});
        vec![tool("Bash", bash), tool("Read", read)]
    }

    const V31: OutputFormat = OutputFormat {
        model: None,
        tools: Some(ToolFormat::DEEPSEEK_V31),
        reasoning: true,
        starts_thinking: false,
        hide_reasoning: false,
    };

    /// Thinking mode: the prompt opened `<think>`.
    const THINKING: OutputFormat = OutputFormat {
        starts_thinking: true,
        ..V31
    };

    const BASH: &str = "<｜tool▁call▁begin｜>Bash<｜tool▁sep｜>{\"command\": \"ls -la\", \"timeout\": 30}<｜tool▁call▁end｜>";
    const BASH_ARGS: &str = "{\"command\": \"ls -la\", \"timeout\": 30}";
    const READ: &str =
        "<｜tool▁call▁begin｜>Read<｜tool▁sep｜>{\"file_path\": \"src/a.rs\"}<｜tool▁call▁end｜>";

    fn block(calls: &[&str]) -> String {
        format!(
            "<｜tool▁calls▁begin｜>{}<｜tool▁calls▁end｜>",
            calls.concat()
        )
    }

    #[test]
    fn a_block_of_calls_is_read_call_by_call() {
        // Thinking mode: reasoning, its end, then the calls.
        let text = format!("Need the listing.</think>{}", block(&[BASH, READ]));
        let (segments, calls) = parse_with(THINKING, &tools(), &text);
        let mut expected = vec![Segment::Thinking("Need the listing.".into())];
        expected.extend(call("Bash", BASH_ARGS));
        expected.extend(call("Read", "{\"file_path\": \"src/a.rs\"}"));
        assert_eq!((segments, calls), (expected, 2));
        // vLLM's test outputs: text around the block, arguments as the model spaced them.
        let text = "some prefix text<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>foo<｜tool▁sep｜>{\"x\":1}<｜tool▁call▁end｜><｜tool▁call▁begin｜>bar<｜tool▁sep｜>{\"y\":2}<｜tool▁call▁end｜><｜tool▁calls▁end｜> some suffix text";
        let (segments, calls) = parse_with(V31, &[], text);
        let mut expected = vec![Segment::Text("some prefix text".into())];
        expected.extend(call("foo", "{\"x\":1}"));
        expected.extend(call("bar", "{\"y\":2}"));
        expected.push(Segment::Text("some suffix text".into()));
        assert_eq!((segments, calls), (expected, 2));
    }

    #[test]
    fn a_call_inside_reasoning_is_a_call() {
        let text = format!("I will list the files.\n{}", block(&[BASH]));
        let (segments, calls) = parse_with(THINKING, &tools(), &text);
        let mut expected = vec![Segment::Thinking("I will list the files.\n".into())];
        expected.extend(call("Bash", BASH_ARGS));
        assert_eq!((segments, calls), (expected, 1));
    }

    #[test]
    fn arguments_stream_and_the_call_ends_with_them() {
        let mut p = OutputParser::new(V31).with_tools(&tools());
        let out = p.push(
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>Bash<｜tool▁sep｜>{\"command\": \"ls",
        );
        assert_eq!(
            out,
            [
                Segment::CallStart {
                    name: "Bash".into()
                },
                Segment::CallArguments("{\"command\": \"ls".into())
            ]
        );
        assert_eq!(
            p.push(" -la\"}<｜tool▁"),
            [Segment::CallArguments(" -la\"}".into()), Segment::CallEnd]
        );
        assert_eq!(p.calls(), 1);
        assert!(p.push("call▁end｜><｜tool▁calls▁end｜>").is_empty());
        assert!(p.finish().is_empty());
    }

    #[test]
    fn cut_off_calls_close_into_valid_arguments() {
        let text = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>Bash<｜tool▁sep｜>{\"command\": \"ls -la\", \"time";
        let (segments, calls) = parse_with(V31, &tools(), text);
        assert_eq!(
            calls_in(&segments),
            [(
                "Bash".to_owned(),
                json!({"command": "ls -la", "time": null})
            )]
        );
        assert_eq!(calls, 1);
        // vLLM's: cut off in the name, which never came whole.
        let text = "Let me look that up.<｜tool▁calls▁begin｜>get_weather";
        let (segments, calls) = parse_with(V31, &tools(), text);
        assert_eq!(
            (segments, calls),
            (vec![Segment::Text("Let me look that up.".into())], 0)
        );
        every_cut_parses(
            ToolFormat::DEEPSEEK_V31,
            &format!("Let me look.{}Done.", block(&[BASH, READ])),
        );
    }

    #[test]
    fn a_call_without_its_own_marker_is_still_read() {
        // vLLM's parser takes this for text; the call is plain enough to keep.
        let text = "<｜tool▁calls▁begin｜>foo<｜tool▁sep｜>{\"x\":1}<｜tool▁calls▁end｜>";
        let (segments, calls) = parse_with(V31, &[], text);
        assert_eq!((segments, calls), (call("foo", "{\"x\":1}"), 1));
        // A call's end left out before the next call and before the block's end.
        let text = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>foo<｜tool▁sep｜>{}<｜tool▁call▁begin｜>bar<｜tool▁sep｜>{\"y\": [1]}<｜tool▁calls▁end｜>";
        let (segments, calls) = parse_with(V31, &[], text);
        let mut expected = call("foo", "{}");
        expected.extend(call("bar", "{\"y\": [1]}"));
        assert_eq!((segments, calls), (expected, 2));
    }

    #[test]
    fn output_that_is_no_call_is_text() {
        let text = "<｜tool▁calls▁begin｜> opens a call.";
        let (segments, calls) = parse_with(V31, &tools(), text);
        assert_eq!((segments, calls), (vec![Segment::Text(text.into())], 0));
        // Arguments that are no object: the call has none.
        let text = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>Read<｜tool▁sep｜>src/a.rs<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
        let (segments, _) = parse_with(V31, &tools(), text);
        assert_eq!(segments[..3], call("Read", "{}")[..]);
    }

    /// The model's template reads `thinking` (which Pensieve passes as it passes
    /// `enable_thinking`): the prompt opens `<think>` in thinking mode and closes it
    /// without, which the engine tells by the prompt's end. After a tool's output there
    /// is no generation prompt: the model goes on, without reasoning.
    #[test]
    fn the_prompt_opens_reasoning_in_thinking_mode_only() {
        let prompt = |template: &str, case: &str| {
            let path = fixtures().join(format!("expected/{template}/{case}.txt"));
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"))
        };
        for (template, closed) in [
            ("deepseek-v3.1", "<｜Assistant｜></think>"),
            ("deepseek-v3.1-llamacpp", "<｜Assistant｜><think></think>"),
        ] {
            let thinking = prompt(template, "reasoning_and_thinking");
            assert!(thinking.ends_with("<｜Assistant｜><think>"), "{template}");
            for case in ["tools", "basic"] {
                assert!(
                    prompt(template, case).ends_with(closed),
                    "{template} {case}"
                );
            }
        }
        let after_tool = prompt("deepseek-v3.1-llamacpp", "agent_loop_thinking");
        assert!(after_tool.ends_with("<｜tool▁output▁end｜>"));
    }

    #[test]
    fn the_templates_are_detected() {
        for name in ["deepseek-v3.1", "deepseek-v3.1-llamacpp"] {
            let template =
                std::fs::read_to_string(fixtures().join(format!("{name}.jinja"))).unwrap();
            assert_eq!(
                ToolFormat::detect(&template),
                Some(ToolFormat::DEEPSEEK_V31),
                "{name}"
            );
        }
        // V3 and R1 fence their arguments between the same tokens: not this format.
        let v3 = "{{'<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}";
        assert_eq!(ToolFormat::detect(v3), None);
    }

    /// Every call both templates write in history (rendered by Python's jinja2), read
    /// back: llama.cpp's, and the model's own, which adds the arguments to a string and
    /// so renders with them as JSON text (the render's retry).
    #[test]
    fn the_templates_own_calls_read_back() {
        let cases: Value =
            serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
                .unwrap();
        let mut checked = 0;
        for (template, case) in ["deepseek-v3.1-llamacpp", "deepseek-v3.1"]
            .into_iter()
            .flat_map(|t| {
                cases["cases"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(move |c| (t, c))
            })
        {
            let name = case["name"].as_str().unwrap();
            let path = fixtures().join(format!("expected/{template}/{name}.txt"));
            let Ok(render) = std::fs::read_to_string(&path) else {
                continue;
            };
            let expected: Vec<(String, Value)> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|m| m["tool_calls"].as_array().cloned().unwrap_or_default())
                .map(|c| {
                    (
                        c["name"].as_str().unwrap().to_owned(),
                        c["arguments"].clone(),
                    )
                })
                .collect();
            if expected.is_empty() {
                continue;
            }
            // The tool prompt's example block comes before the first user turn.
            let render = &render[render.find("<｜User｜>").unwrap_or(0)..];
            let mut got = Vec::new();
            for (at, _) in render.match_indices(super::CALLS_BEGIN) {
                let block = &render[at..];
                let end = block.find(super::CALLS_END).unwrap() + super::CALLS_END.len();
                let (segments, _) = parse_with(V31, &[], &block[..end]);
                got.extend(calls_in(&segments));
            }
            assert_eq!(got, expected, "{template}/{name}");
            checked += 1;
        }
        assert!(checked >= 16, "{checked} cases");
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

    /// The model's own call: the forced grammar lets it through whole and then only the
    /// end of the turn, and the parser reads it back.
    #[test]
    fn a_forced_call_is_the_models_own() {
        let own = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Oslo\", \"days\": 2}<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
        let forced = || {
            grammars()
                .forced_call(ToolFormat::DEEPSEEK_V31, &[weather()], None)
                .unwrap()
        };
        let mut c = forced();
        assert!(takes(&mut c, own));
        assert!(c.is_complete());
        assert!(c
            .mask()
            .is_some_and(|m| TokenMask(m.as_slice()).allows(crate::testing::EOG)));
        let (segments, calls) = parse_with(V31, &[weather()], own);
        assert_eq!(
            calls_in(&segments),
            [("get_weather".to_owned(), json!({"city": "Oslo", "days": 2}))]
        );
        assert_eq!(calls, 1);
        // Text first, another tool's name, a required key left out, a second call.
        assert!(!takes(&mut forced(), "Sure!"));
        let head = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>";
        assert!(!takes(&mut forced(), &format!("{head}Bash")));
        assert!(!takes(
            &mut forced(),
            &format!("{head}get_weather<｜tool▁sep｜>{{\"city\": \"Oslo\"}}")
        ));
        let one = own.strip_suffix("<｜tool▁calls▁end｜>").unwrap();
        assert!(!takes(
            &mut forced(),
            &format!("{one}<｜tool▁call▁begin｜>")
        ));
    }

    /// Under `auto`, parallel calls are more calls in the block; without, one.
    #[test]
    fn a_lazy_call_holds_more_calls_when_parallel() {
        let one = "<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Oslo\", \"days\": 2}<｜tool▁call▁end｜>";
        for parallel in [true, false] {
            let lazy = grammars()
                .call_body(ToolFormat::DEEPSEEK_V31, &[weather()], parallel)
                .unwrap();
            let mut c = lazy.after_marker(super::CALLS_BEGIN.as_bytes()).unwrap();
            assert_eq!(
                takes(&mut c, &format!("{one}{one}<｜tool▁calls▁end｜>")),
                parallel
            );
            let mut c = lazy.after_marker(super::CALLS_BEGIN.as_bytes()).unwrap();
            assert!(takes(&mut c, &format!("{one}<｜tool▁calls▁end｜>")));
            assert!(c.is_complete());
        }
    }
}
