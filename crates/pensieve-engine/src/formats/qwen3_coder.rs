//! Qwen's XML calls, which Qwen3-Coder(-Next), Qwen3.5/3.6 and Nemotron 3 write:
//!
//! ```text
//! <tool_call>
//! <function=Bash>
//! <parameter=command>
//! ls -la
//! </parameter>
//! </function>
//! </tool_call>
//! ```
//!
//! Values are raw text wrapped in one line break each side (markup), typed by the tool's
//! schema. The template also writes Hermes' `<tool_call>`, so this is matched first.

use super::{Format, GrammarStart};
use crate::constrain::xml::{call_rule, XmlShape};
use crate::constrain::{calls_lark, literal, WS};
use crate::output::{CallReader, XmlCall, XmlSyntax};
use crate::request::ToolSpec;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

const SYNTAX: XmlSyntax = XmlSyntax {
    open: OPEN,
    name_open: "<function=",
    name_close: ">",
    key_open: "<parameter=",
    key_close: ">",
    value_open: "",
    value_close: "</parameter>",
    value_newlines: true,
    string_attr: false,
    call_close: "</function>",
    block_close: Some(CLOSE),
};

const SHAPE: XmlShape = XmlShape {
    head: |name| format!("\n<function={name}>\n"),
    param_open: |key| format!("<parameter={key}>\n"),
    json_param_open: None,
    param_close: "\n</parameter>\n",
    tail: "</function>\n",
};

/// A function written without `<tool_call>` around it.
const BARE_SHAPE: XmlShape = XmlShape {
    head: |name| format!("<function={name}>\n"),
    tail: "</function>",
    ..SHAPE
};

pub(super) struct Qwen3Coder;

impl Format for Qwen3Coder {
    fn names(&self) -> &'static [&'static str] {
        &["qwen3_coder", "qwen3_xml"]
    }

    fn models(&self) -> &'static str {
        "Qwen3-Coder, Qwen3-Coder-Next, Qwen3.5, Qwen3.6, Nemotron 3"
    }

    fn detect(&self, template: &str) -> bool {
        template.contains("<function=") && template.contains("<parameter=")
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

    /// Small and quantised models often leave `<tool_call>` out.
    fn bare_open(&self) -> Option<&'static str> {
        Some(SYNTAX.name_open)
    }

    fn grammar(&self, tools: &[&ToolSpec], start: GrammarStart) -> String {
        let open = match start {
            GrammarStart::Forced => literal(OPEN),
            GrammarStart::AfterMarker { .. } => literal(""),
            // Without the marker: the function alone, which ends the call.
            GrammarStart::Bare => {
                return calls_lark(WS, "", None, tools, |i, tool, lark| {
                    call_rule(&BARE_SHAPE, i, tool, lark)
                })
            }
        };
        calls_lark(&open, CLOSE, None, tools, |i, tool, lark| {
            call_rule(&SHAPE, i, tool, lark)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::output::family_tests::every_cut_parses;
    use crate::output::tests::{call, parse_with};
    use crate::output::{OutputFormat, Segment};
    use crate::request::ToolSpec;
    use crate::ToolFormat;
    use serde_json::json;

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
        vec![
            ToolSpec {
                name: "Bash".into(),
                description: None,
                parameters: bash,
            },
            ToolSpec {
                name: "Write".into(),
                description: None,
                parameters: write,
            },
        ]
    }

    const QWEN: OutputFormat = OutputFormat {
        model: None,
        tools: Some(ToolFormat::QWEN3_CODER),
        reasoning: true,
        starts_thinking: false,
        hide_reasoning: false,
    };

    /// Qwen3.5 with thinking on: the prompt opened `<think>`.
    const QWEN35: OutputFormat = OutputFormat {
        starts_thinking: true,
        ..QWEN
    };

    const BASH: &str = "<tool_call>\n<function=Bash>\n<parameter=command>\nls -la\n</parameter>\n<parameter=timeout>\n30\n</parameter>\n</function>\n</tool_call>";

    #[test]
    fn a_call_after_reasoning() {
        let text = format!("The user wants the listing.\n</think>\n\n{BASH}");
        let (segments, calls) = parse_with(QWEN35, &tools(), &text);
        let mut expected = vec![Segment::Thinking("The user wants the listing.\n".into())];
        expected.extend(call("Bash", "{\"command\": \"ls -la\", \"timeout\": 30}"));
        assert_eq!(segments, expected);
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_call_inside_reasoning_is_a_call() {
        // Qwen3.5 often calls without closing its reasoning first.
        let text = format!("I will list the files.\n\n{BASH}");
        let (segments, calls) = parse_with(QWEN35, &tools(), &text);
        let mut expected = vec![Segment::Thinking("I will list the files.\n\n".into())];
        expected.extend(call("Bash", "{\"command\": \"ls -la\", \"timeout\": 30}"));
        assert_eq!(segments, expected);
        assert_eq!(calls, 1);
        // A `</think>` after such a call is no text.
        let (segments, _) =
            parse_with(QWEN35, &tools(), &format!("Hm.\n{BASH}\n</think>\n\nDone."));
        assert_eq!(segments.last(), Some(&Segment::Text("Done.".into())));
    }

    #[test]
    fn text_then_several_calls() {
        let write = "<tool_call>\n<function=Write>\n<parameter=file_path>\n/tmp/a.rs\n</parameter>\n<parameter=content>\nfn main() {\n    if 1 < 2 { println!(\"<tool_call>\"); }\n}\n\n</parameter>\n</function>\n</tool_call>";
        let text = format!("Sure.\n\n{BASH}\n{write}");
        let (segments, calls) = parse_with(QWEN, &tools(), &text);
        let mut expected = vec![Segment::Text("Sure.".into())];
        expected.extend(call("Bash", "{\"command\": \"ls -la\", \"timeout\": 30}"));
        let content = "fn main() {\n    if 1 < 2 { println!(\"<tool_call>\"); }\n}\n";
        let args = json!({"file_path": "/tmp/a.rs", "content": content});
        let segs = &segments[4..];
        assert_eq!(&segments[..4], &expected[..]);
        assert_eq!(
            segs[0],
            Segment::CallStart {
                name: "Write".into()
            }
        );
        let Segment::CallArguments(got) = &segs[1] else {
            panic!("{segs:?}")
        };
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(got).unwrap(),
            args
        );
        assert_eq!(calls, 2);
    }

    #[test]
    fn values_are_typed_by_the_schema() {
        let text = "<tool_call>\n<function=Bash>\n<parameter=command>\n42\n</parameter>\n<parameter=background>\nTrue\n</parameter>\n<parameter=env>\n{\"A\": \"1\"}\n</parameter>\n<parameter=note>\nNone\n</parameter>\n</function>\n</tool_call>";
        let (segments, _) = parse_with(QWEN, &tools(), text);
        assert_eq!(
            segments,
            call(
                "Bash",
                "{\"command\": \"42\", \"background\": true, \"env\": {\"A\":\"1\"}, \"note\": null}"
            )
        );
    }

    #[test]
    fn string_values_stream_as_they_come() {
        let mut p = crate::output::OutputParser::new(QWEN).with_tools(&tools());
        let head = "<tool_call>\n<function=Write>\n<parameter=content>\nline one\n";
        let out = p.push(head);
        assert_eq!(
            out[0],
            Segment::CallStart {
                name: "Write".into()
            }
        );
        // The line break waits: it may be markup before `</parameter>`.
        assert_eq!(
            out[1..],
            [Segment::CallArguments("{\"content\": \"line one".into())]
        );
        assert_eq!(
            p.push("line two"),
            [Segment::CallArguments("\\nline two".into())]
        );
    }

    #[test]
    fn sloppy_calls_still_parse() {
        // No `</parameter>` before `</function>`; a Hermes JSON call between the tags.
        let text =
            "<tool_call>\n<function=Bash>\n<parameter=command>\npwd\n</function>\n</tool_call>";
        assert_eq!(
            parse_with(QWEN, &tools(), text).0,
            call("Bash", "{\"command\": \"pwd\"}")
        );
        let json = "<tool_call>\n{\"name\": \"Bash\", \"arguments\": {\"command\": \"pwd\"}}\n</tool_call>";
        assert_eq!(
            parse_with(QWEN, &tools(), json).0,
            call("Bash", "{\"command\": \"pwd\"}")
        );
        // No call after the marker: text, marker and all.
        let (segments, calls) = parse_with(QWEN, &tools(), "<tool_call> is a tag.");
        assert_eq!(
            segments,
            vec![Segment::Text("<tool_call> is a tag.".into())]
        );
        assert_eq!(calls, 0);
    }

    #[test]
    fn a_function_without_its_marker_is_a_call() {
        // As small Qwen models write it, and as users report it leaking as text.
        let text =
            "Checking.\n<function=Bash>\n<parameter=command>\nls\n</parameter>\n</function>\nDone.";
        let (segments, calls) = parse_with(QWEN, &tools(), text);
        let mut expected = vec![Segment::Text("Checking.".into())];
        expected.extend(call("Bash", "{\"command\": \"ls\"}"));
        expected.push(Segment::Text("Done.".into()));
        assert_eq!((segments, calls), (expected, 1));
    }

    #[test]
    fn every_cut_closes_into_valid_arguments() {
        every_cut_parses(
            ToolFormat::QWEN3_CODER,
            &format!("Let me look.{BASH}{BASH}"),
        );
    }
}
