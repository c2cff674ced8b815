//! GLM's calls: the name after `<tool_call>`, then `<arg_key>K</arg_key>` and
//! `<arg_value>V</arg_value>` per argument, values raw and typed by the tool's schema.
//! GLM-4.5 and 4.6 put a line break after the name and after each part; GLM-4.7 and
//! 5.x run the parts together (and their prompt pre-opens `<think>`). One reader takes
//! both; each has its own grammar.

use super::{Format, GrammarStart};
use crate::constrain::xml::{call_rule, XmlShape};
use crate::constrain::{calls_lark, literal};
use crate::output::{CallReader, XmlCall, XmlSyntax};
use crate::request::ToolSpec;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
const KEY: &str = "<arg_key>";

const SYNTAX: XmlSyntax = XmlSyntax {
    open: OPEN,
    name_open: "",
    name_close: "",
    key_open: KEY,
    key_close: "</arg_key>",
    value_open: "<arg_value>",
    value_close: "</arg_value>",
    value_newlines: false,
    string_attr: false,
    call_close: CLOSE,
    block_close: None,
};

const MARKERS: &[&str] = &[
    OPEN,
    CLOSE,
    KEY,
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
];

/// One GLM layout: what sets it apart is its names, how its template is told and how
/// its parts are spaced.
pub(super) struct Glm {
    names: &'static [&'static str],
    models: &'static str,
    /// A template of this layout holds this text.
    template_mark: &'static str,
    shape: XmlShape,
}

/// GLM-4.5 and 4.6: parts on lines of their own.
pub(super) const GLM45: Glm = Glm {
    names: &["glm45", "glm"],
    models: "GLM-4.5, GLM-4.5-Air, GLM-4.6",
    template_mark: KEY,
    shape: XmlShape {
        head: |name| format!("{name}\n"),
        param_open: |key| format!("<arg_key>{key}</arg_key>\n<arg_value>"),
        json_param_open: None,
        param_close: "</arg_value>\n",
        tail: "",
    },
};

/// GLM-4.7, 4.7-Flash and 5.x: the parts run together (the compact template writes the
/// value's tag right after the key's).
pub(super) const GLM47: Glm = Glm {
    names: &["glm47"],
    models: "GLM-4.7, GLM-4.7-Flash, GLM-5",
    template_mark: "</arg_key><arg_value>",
    shape: XmlShape {
        head: |name| name.to_owned(),
        param_open: |key| format!("<arg_key>{key}</arg_key><arg_value>"),
        json_param_open: None,
        param_close: "</arg_value>",
        tail: "",
    },
};

impl Format for Glm {
    fn names(&self) -> &'static [&'static str] {
        self.names
    }

    fn models(&self) -> &'static str {
        self.models
    }

    fn detect(&self, template: &str) -> bool {
        template.contains(KEY) && template.contains(self.template_mark)
    }

    fn markers(&self) -> &'static [&'static str] {
        MARKERS
    }

    fn open(&self) -> &'static str {
        OPEN
    }

    fn reader(&self) -> Box<dyn CallReader> {
        Box::new(XmlCall::new(SYNTAX))
    }

    /// GLM models drop `<tool_call>` before a call's name, and the call reaches the
    /// client as text (zai-org/GLM-5#84); small models under GLM's template do too.
    fn bare_name_then(&self) -> Option<&'static str> {
        Some(KEY)
    }

    fn grammar(&self, tools: &[&ToolSpec], start: GrammarStart) -> String {
        let open = match start {
            GrammarStart::Forced => literal(OPEN),
            GrammarStart::AfterMarker { .. } | GrammarStart::Bare => literal(""),
        };
        calls_lark(&open, CLOSE, None, tools, |i, tool, lark| {
            call_rule(&self.shape, i, tool, lark)
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
        vec![ToolSpec {
            name: "Bash".into(),
            description: None,
            parameters: json!({"type": "object", "properties": {
                "command": {"type": "string"}, "timeout": {"type": "integer"}}}),
        }]
    }

    fn format(tools: ToolFormat, starts_thinking: bool) -> OutputFormat {
        OutputFormat {
            tools: Some(tools),
            model: None,
            reasoning: true,
            starts_thinking,
            hide_reasoning: false,
        }
    }

    const GLM45: &str = "<think>Need the listing.</think>\n<tool_call>Bash\n<arg_key>command</arg_key>\n<arg_value>ls -la</arg_value>\n<arg_key>timeout</arg_key>\n<arg_value>30</arg_value>\n</tool_call>";
    const GLM47: &str = "Need the listing.</think><tool_call>Bash<arg_key>command</arg_key><arg_value>ls -la</arg_value><arg_key>timeout</arg_key><arg_value>30</arg_value></tool_call>";

    #[test]
    fn both_layouts_read_as_the_same_call() {
        let mut expected = vec![Segment::Thinking("Need the listing.".into())];
        expected.extend(call("Bash", "{\"command\": \"ls -la\", \"timeout\": 30}"));
        let (segments, calls) = parse_with(format(ToolFormat::GLM45, false), &tools(), GLM45);
        assert_eq!((segments, calls), (expected.clone(), 1));
        // GLM-4.7's prompt opened `<think>`.
        let (segments, calls) = parse_with(format(ToolFormat::GLM47, true), &tools(), GLM47);
        assert_eq!((segments, calls), (expected, 1));
    }

    #[test]
    fn values_keep_their_whitespace() {
        // No markup around GLM values: every space and line break is the value's.
        let text = "<tool_call>Bash<arg_key>command</arg_key><arg_value>\n  echo '<a>'\n</arg_value></tool_call>";
        let (segments, _) = parse_with(format(ToolFormat::GLM47, false), &tools(), text);
        assert_eq!(
            segments,
            call("Bash", "{\"command\": \"\\n  echo '<a>'\\n\"}")
        );
    }

    #[test]
    fn calls_without_arguments_and_several_calls() {
        let text = "Two.<tool_call>Bash</tool_call><tool_call>Bash<arg_key>timeout</arg_key><arg_value>5</arg_value></tool_call>";
        let (segments, calls) = parse_with(format(ToolFormat::GLM47, false), &tools(), text);
        let mut expected = vec![Segment::Text("Two.".into())];
        expected.extend(call("Bash", "{}"));
        expected.extend(call("Bash", "{\"timeout\": 5}"));
        assert_eq!((segments, calls), (expected, 2));
    }

    #[test]
    fn a_call_without_its_marker_is_read_from_an_offered_tools_name() {
        let bash = "{\"command\": \"ls\", \"timeout\": 7}";
        // What Qwen2.5-Coder-0.5B writes under GLM-4.6's template, and GLM models do
        // too: the name first, no `<tool_call>`, no `</tool_call>`, then stray text.
        let text = "\nBash\n<arg_key>command</arg_key>\n<arg_value>ls</arg_value>\n<arg_key>timeout</arg_key>\n<arg_value>7</arg_value>\n<|system|>";
        let (segments, calls) = parse_with(format(ToolFormat::GLM45, false), &tools(), text);
        assert_eq!((segments, calls), (call("Bash", bash), 1));
        // GLM-4.7's run-together layout, after reasoning.
        let text = "Need it.</think>Bash<arg_key>command</arg_key><arg_value>ls</arg_value><arg_key>timeout</arg_key><arg_value>7</arg_value></tool_call>";
        let (segments, _) = parse_with(format(ToolFormat::GLM47, true), &tools(), text);
        let mut expected = vec![Segment::Thinking("Need it.".into())];
        expected.extend(call("Bash", bash));
        assert_eq!(segments, expected);
        // Cut anywhere, it is text that cannot yet be a call, or a call that closes.
        let full = "Bash\n<arg_key>command</arg_key>\n<arg_value>ls</arg_value>\n";
        for cut in 0..=full.len() {
            let (segments, _) =
                parse_with(format(ToolFormat::GLM45, false), &tools(), &full[..cut]);
            for s in segments {
                match s {
                    Segment::CallArguments(args) => {
                        assert!(serde_json::from_str::<serde_json::Value>(&args).is_ok())
                    }
                    Segment::Text(t) => assert!(!t.contains("<arg_key>"), "{t:?}"),
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn text_that_starts_like_a_tool_name_stays_text() {
        for text in [
            "Bash is a shell.",
            "Bas",
            "Bash",
            "Bash\n\nruns commands: <arg_key> is GLM's.",
            "I would run Bash<arg_key>command</arg_key>",
        ] {
            let (segments, calls) = parse_with(format(ToolFormat::GLM45, false), &tools(), text);
            assert_eq!(calls, 0, "{text:?}");
            assert_eq!(segments, vec![Segment::Text(text.into())], "{text:?}");
        }
        // Without offered tools no name makes a call.
        let text = "Bash<arg_key>command</arg_key><arg_value>ls</arg_value>";
        let (_, calls) = parse_with(format(ToolFormat::GLM47, false), &[], text);
        assert_eq!(calls, 0);
    }

    #[test]
    fn every_cut_closes_into_valid_arguments() {
        every_cut_parses(
            ToolFormat::GLM45,
            &GLM45[GLM45.find("<tool_call>").unwrap_or(0)..],
        );
        every_cut_parses(
            ToolFormat::GLM47,
            &GLM47[GLM47.find("<tool_call>").unwrap_or(0)..],
        );
    }
}
