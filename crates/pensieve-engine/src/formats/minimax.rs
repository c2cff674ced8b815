//! MiniMax's XML calls, which MiniMax M2, M2.1, M2.5 and M2.7 write: one block holds one
//! or more `<invoke>`s, each value raw between its tags (no line breaks around it):
//!
//! ```text
//! <minimax:tool_call>
//! <invoke name="Bash">
//! <parameter name="command">ls -la</parameter>
//! <parameter name="timeout">30</parameter>
//! </invoke>
//! </minimax:tool_call>
//! ```
//!
//! Values are typed by the tool's schema: the template writes a string as it is and
//! anything else as JSON. The prompt opens `<think>\n`; the model writes only `</think>`.

use super::{Format, GrammarStart};
use crate::constrain::xml::{call_rule, XmlShape};
use crate::constrain::{calls_lark, literal};
use crate::output::{CallReader, XmlCall, XmlSyntax};
use crate::request::ToolSpec;

const OPEN: &str = "<minimax:tool_call>";
const CLOSE: &str = "</minimax:tool_call>";

const SYNTAX: XmlSyntax = XmlSyntax {
    open: OPEN,
    name_open: "<invoke name=\"",
    name_close: "\">",
    key_open: "<parameter name=\"",
    key_close: "\">",
    value_open: "",
    value_close: "</parameter>",
    // The template writes values bare: a file's trailing line break is its own.
    value_newlines: false,
    string_attr: false,
    call_close: "</invoke>",
    block_close: Some(CLOSE),
};

/// As the template writes a call: each invoke on a line after the marker (or the invoke
/// before it), each parameter on a line of its own, and the block's end on the next.
const SHAPE: XmlShape = XmlShape {
    head: |name| format!("\n<invoke name=\"{name}\">\n"),
    param_open: |key| format!("<parameter name=\"{key}\">"),
    json_param_open: None,
    param_close: "</parameter>\n",
    tail: "</invoke>",
};

pub(super) struct MiniMaxM2;

impl Format for MiniMaxM2 {
    fn names(&self) -> &'static [&'static str] {
        &["minimax_m2", "minimax"]
    }

    fn models(&self) -> &'static str {
        "MiniMax M2, M2.1, M2.5, M2.7"
    }

    fn detect(&self, template: &str) -> bool {
        template.contains(OPEN)
    }

    fn markers(&self) -> &'static [&'static str] {
        &[OPEN, CLOSE]
    }

    fn open(&self) -> &'static str {
        OPEN
    }

    fn reader(&self) -> Box<dyn CallReader> {
        Box::new(XmlCall::new(SYNTAX))
    }

    /// Parallel calls are several invokes in one block, as the template writes them.
    fn grammar(&self, tools: &[&ToolSpec], start: GrammarStart) -> String {
        let (open, separator) = match start {
            GrammarStart::Forced => (literal(OPEN), None),
            GrammarStart::AfterMarker { parallel } => (literal(""), parallel.then_some("")),
            GrammarStart::Bare => (literal(""), None),
        };
        calls_lark(
            &open,
            &format!("\n{CLOSE}"),
            separator,
            tools,
            |i, tool, lark| call_rule(&SHAPE, i, tool, lark),
        )
    }
}

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
            "command": {"type": "string"},
            "timeout": {"type": "integer"},
            "background": {"type": "boolean"},
            "env": {"type": "object"},
            "note": {"type": ["string", "null"]}},
            "required": ["command"]});
        let write = json!({"type": "object", "properties": {
            "file_path": {"type": "string"}, "content": {"type": "string"}}});
        // Claude Code's Grep: keys that are flags.
        let grep = json!({"type": "object", "properties": {
            "pattern": {"type": "string"}, "-n": {"type": "boolean"}, "-A": {"type": "number"}}});
        vec![tool("Bash", bash), tool("Write", write), tool("Grep", grep)]
    }

    const MINIMAX: OutputFormat = OutputFormat {
        model: None,
        tools: Some(ToolFormat::MINIMAX_M2),
        reasoning: true,
        starts_thinking: false,
        hide_reasoning: false,
    };

    /// The prompt opened `<think>`, as MiniMax's always does.
    const THINKING: OutputFormat = OutputFormat {
        starts_thinking: true,
        ..MINIMAX
    };

    const BASH: &str = "<minimax:tool_call>\n<invoke name=\"Bash\">\n<parameter name=\"command\">ls -la</parameter>\n<parameter name=\"timeout\">30</parameter>\n</invoke>\n</minimax:tool_call>";
    const BASH_ARGS: &str = "{\"command\": \"ls -la\", \"timeout\": 30}";

    const TWO_INVOKES: &str = "<minimax:tool_call>\n<invoke name=\"Bash\">\n<parameter name=\"command\">pwd</parameter>\n</invoke>\n<invoke name=\"Write\">\n<parameter name=\"file_path\">/tmp/a.rs</parameter>\n<parameter name=\"content\">fn main() {\n    if 1 < 2 { println!(\"<parameter name=\\\"x\\\">\"); }\n}\n</parameter>\n</invoke>\n</minimax:tool_call>";

    #[test]
    fn the_documented_output_is_reasoning_then_a_call() {
        let text = format!("Need the listing.</think>\n\n{BASH}");
        let (segments, calls) = parse_with(THINKING, &tools(), &text);
        let mut expected = vec![Segment::Thinking("Need the listing.".into())];
        expected.extend(call("Bash", BASH_ARGS));
        assert_eq!(segments, expected);
        assert_eq!(calls, 1);
        // Text after the reasoning, then the call; and an answer after it.
        let text = format!("Hm.</think>\n\nLet me look.\n{BASH}\nDone.");
        let (segments, _) = parse_with(THINKING, &tools(), &text);
        let mut expected = vec![
            Segment::Thinking("Hm.".into()),
            Segment::Text("Let me look.".into()),
        ];
        expected.extend(call("Bash", BASH_ARGS));
        expected.push(Segment::Text("Done.".into()));
        assert_eq!(segments, expected);
    }

    #[test]
    fn the_prompt_opens_reasoning() {
        // The engine starts in reasoning when the prompt ends with `<think>`.
        for case in [
            "tools",
            "tool_call_with_text_and_reasoning",
            "agent_loop_thinking",
        ] {
            let path = fixtures().join(format!("expected/minimax-m2/{case}.txt"));
            let prompt = std::fs::read_to_string(&path).unwrap();
            assert!(prompt.ends_with("]~b]ai\n<think>\n"), "{case}");
        }
    }

    #[test]
    fn a_call_inside_reasoning_is_a_call() {
        let text = format!("I will list the files.\n{BASH}");
        let (segments, calls) = parse_with(THINKING, &tools(), &text);
        let mut expected = vec![Segment::Thinking("I will list the files.\n".into())];
        expected.extend(call("Bash", BASH_ARGS));
        assert_eq!(segments, expected);
        assert_eq!(calls, 1);
    }

    #[test]
    fn values_are_typed_by_the_schema() {
        let text = "<minimax:tool_call>\n<invoke name=\"Bash\">\n<parameter name=\"command\">42</parameter>\n<parameter name=\"timeout\">30</parameter>\n<parameter name=\"background\">true</parameter>\n<parameter name=\"env\">{\"A\": \"1\"}</parameter>\n<parameter name=\"note\">null</parameter>\n</invoke>\n</minimax:tool_call>";
        let (segments, _) = parse_with(MINIMAX, &tools(), text);
        assert_eq!(
            segments,
            call(
                "Bash",
                "{\"command\": \"42\", \"timeout\": 30, \"background\": true, \"env\": {\"A\":\"1\"}, \"note\": null}"
            )
        );
        // Flags as keys; a key the tool does not name is text.
        let text = "<minimax:tool_call>\n<invoke name=\"Grep\">\n<parameter name=\"pattern\">fn main</parameter>\n<parameter name=\"-n\">true</parameter>\n<parameter name=\"-A\">3</parameter>\n<parameter name=\"glob\">*.rs</parameter>\n</invoke>\n</minimax:tool_call>";
        let (segments, _) = parse_with(MINIMAX, &tools(), text);
        assert_eq!(
            calls_in(&segments),
            [(
                "Grep".to_owned(),
                json!({"pattern": "fn main", "-n": true, "-A": 3, "glob": "*.rs"})
            )]
        );
    }

    #[test]
    fn string_values_are_kept_and_stream() {
        // No line break is markup: a file's own leading and trailing ones stay.
        let text = "<minimax:tool_call>\n<invoke name=\"Write\">\n<parameter name=\"file_path\">a.txt</parameter>\n<parameter name=\"content\">\nline\n\n</parameter>\n</invoke>\n</minimax:tool_call>";
        let (segments, _) = parse_with(MINIMAX, &tools(), text);
        assert_eq!(
            calls_in(&segments),
            [(
                "Write".to_owned(),
                json!({"file_path": "a.txt", "content": "\nline\n\n"})
            )]
        );
        let mut p = OutputParser::new(MINIMAX).with_tools(&tools());
        let out = p.push(
            "<minimax:tool_call>\n<invoke name=\"Write\">\n<parameter name=\"content\">line one\n",
        );
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
            p.push("line two</para"),
            [Segment::CallArguments("line two".into())]
        );
    }

    #[test]
    fn several_invokes_in_one_block_are_several_calls() {
        let text = format!("Sure.\n{TWO_INVOKES}");
        let (segments, calls) = parse_with(MINIMAX, &tools(), &text);
        assert_eq!(segments[0], Segment::Text("Sure.".into()));
        let content =
            "fn main() {\n    if 1 < 2 { println!(\"<parameter name=\\\"x\\\">\"); }\n}\n";
        assert_eq!(
            calls_in(&segments[1..]),
            [
                ("Bash".to_owned(), json!({"command": "pwd"})),
                (
                    "Write".to_owned(),
                    json!({"file_path": "/tmp/a.rs", "content": content})
                )
            ]
        );
        assert_eq!(calls, 2);
        assert_eq!(segments.len(), 7);
    }

    #[test]
    fn two_blocks_and_text_around_them() {
        let text = format!("First this.\n{BASH}\nThen that.\n{BASH}\n\nDone.");
        let (segments, calls) = parse_with(MINIMAX, &tools(), &text);
        let mut expected = vec![Segment::Text("First this.".into())];
        expected.extend(call("Bash", BASH_ARGS));
        expected.push(Segment::Text("Then that.".into()));
        expected.extend(call("Bash", BASH_ARGS));
        expected.push(Segment::Text("Done.".into()));
        assert_eq!(segments, expected);
        assert_eq!(calls, 2);
        // Back to back.
        let (segments, calls) = parse_with(MINIMAX, &tools(), &format!("{BASH}{BASH}"));
        let mut expected = call("Bash", BASH_ARGS);
        expected.extend(call("Bash", BASH_ARGS));
        assert_eq!(segments, expected);
        assert_eq!(calls, 2);
    }

    #[test]
    fn a_call_without_arguments() {
        let text =
            "<minimax:tool_call>\n<invoke name=\"list_files\">\n</invoke>\n</minimax:tool_call>";
        let (segments, calls) = parse_with(MINIMAX, &[], text);
        assert_eq!(segments, call("list_files", "{}"));
        assert_eq!(calls, 1);
    }

    #[test]
    fn output_that_is_no_call_is_text() {
        let text = "<minimax:tool_call> is the tag it writes.";
        let (segments, calls) = parse_with(MINIMAX, &tools(), text);
        assert_eq!(segments, [Segment::Text(text.into())]);
        assert_eq!(calls, 0);
        // No `</minimax:tool_call>` after the call: what follows is text.
        let text = "<minimax:tool_call>\n<invoke name=\"Bash\">\n<parameter name=\"command\">ls</parameter>\n</invoke>\nAll listed.";
        let (segments, _) = parse_with(MINIMAX, &tools(), text);
        let mut expected = call("Bash", "{\"command\": \"ls\"}");
        expected.push(Segment::Text("All listed.".into()));
        assert_eq!(segments, expected);
    }

    #[test]
    fn cut_off_calls_close_into_valid_arguments() {
        let text = "<minimax:tool_call>\n<invoke name=\"Write\">\n<parameter name=\"file_path\">a.rs</parameter>\n<parameter name=\"content\">fn ma";
        let (segments, calls) = parse_with(MINIMAX, &tools(), text);
        assert_eq!(
            segments,
            call("Write", "{\"file_path\": \"a.rs\", \"content\": \"fn ma\"}")
        );
        assert_eq!(calls, 1);
        // Cut before the name: nothing.
        let (segments, _) = parse_with(MINIMAX, &tools(), "Wait.\n<minimax:tool_call>\n<inv");
        assert_eq!(segments, [Segment::Text("Wait.".into())]);
        every_cut_parses(
            ToolFormat::MINIMAX_M2,
            &format!("Let me look.\n{TWO_INVOKES}\nAnd:\n{BASH}"),
        );
    }

    #[test]
    fn the_template_is_detected() {
        let template = std::fs::read_to_string(fixtures().join("minimax-m2.jinja")).unwrap();
        assert_eq!(ToolFormat::detect(&template), Some(ToolFormat::MINIMAX_M2));
        assert_eq!(
            ToolFormat::from_name("minimax"),
            Some(ToolFormat::MINIMAX_M2)
        );
    }

    /// Every call the real template writes in history (rendered by Python's jinja2),
    /// read back: the same calls, the same arguments.
    #[test]
    fn the_templates_own_calls_read_back() {
        let cases: Value =
            serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
                .unwrap();
        let mut checked = 0;
        for case in cases["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let path = fixtures().join(format!("expected/minimax-m2/{name}.txt"));
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
            let tools: Vec<ToolSpec> = cases["tool_sets"][case["tools"].as_str().unwrap()]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| tool(t["name"].as_str().unwrap(), t["parameters"].clone()))
                .collect();
            // The conversation, after the system turn (whose example is no call).
            let (_, conversation) = render.split_once("[e~[").unwrap();
            let mut got = Vec::new();
            for (at, _) in conversation.match_indices(super::OPEN) {
                let block = &conversation[at..];
                let end = block.find(super::CLOSE).unwrap() + super::CLOSE.len();
                let (segments, _) = parse_with(MINIMAX, &tools, &block[..end]);
                got.extend(calls_in(&segments));
            }
            assert_eq!(got, expected, "{name}");
            checked += 1;
        }
        assert!(checked >= 4, "{checked} cases");
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
    /// end of the turn, the parser reads it back, and the arguments fit the schema.
    #[test]
    fn a_forced_call_is_the_models_own() {
        let own = "<minimax:tool_call>\n<invoke name=\"get_weather\">\n<parameter name=\"city\">Oslo</parameter>\n<parameter name=\"days\">2</parameter>\n</invoke>\n</minimax:tool_call>";
        let forced = || {
            grammars()
                .forced_call(ToolFormat::MINIMAX_M2, &[weather()], None)
                .unwrap()
        };
        let mut c = forced();
        assert!(takes(&mut c, own));
        assert!(c.is_complete());
        let end = crate::testing::EOG;
        assert!(c
            .mask()
            .is_some_and(|m| TokenMask(m.as_slice()).allows(end)));
        let (segments, calls) = parse_with(MINIMAX, &[weather()], own);
        assert_eq!(
            calls_in(&segments),
            [("get_weather".to_owned(), json!({"city": "Oslo", "days": 2}))]
        );
        assert_eq!(calls, 1);
        // Text first, a required key left out, text for a number, a second invoke.
        let head = "<minimax:tool_call>\n<invoke name=\"get_weather\">\n";
        assert!(!takes(&mut forced(), "Sure!"));
        assert!(!takes(
            &mut forced(),
            &format!("{head}<parameter name=\"days\">")
        ));
        assert!(!takes(
            &mut forced(),
            &format!(
                "{head}<parameter name=\"city\">Oslo</parameter>\n<parameter name=\"days\">two"
            )
        ));
        let one = own.strip_suffix("\n</minimax:tool_call>").unwrap();
        assert!(!takes(&mut forced(), &format!("{one}\n<invoke")));
    }

    /// Under `auto`, parallel calls are more invokes in the block; without, one.
    #[test]
    fn a_lazy_call_holds_more_invokes_when_parallel() {
        let invoke = "\n<invoke name=\"get_weather\">\n<parameter name=\"city\">Oslo</parameter>\n<parameter name=\"days\">2</parameter>\n</invoke>";
        let two = format!("{invoke}{invoke}\n</minimax:tool_call>");
        for parallel in [true, false] {
            let lazy = grammars()
                .call_body(ToolFormat::MINIMAX_M2, &[weather()], parallel)
                .unwrap();
            let mut c = lazy.after_marker(super::OPEN.as_bytes()).unwrap();
            assert_eq!(takes(&mut c, &two), parallel);
            let mut c = lazy.after_marker(super::OPEN.as_bytes()).unwrap();
            assert!(takes(&mut c, &format!("{invoke}\n</minimax:tool_call>")));
            assert!(c.is_complete());
        }
    }
}
