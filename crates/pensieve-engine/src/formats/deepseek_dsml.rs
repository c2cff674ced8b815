//! DeepSeek's DSML calls, which DeepSeek V3.2 and V4 write: MiniMax's XML with
//! `｜DSML｜` in every tag, and each parameter saying whether its value is raw text
//! (`string="true"`) or JSON (`string="false"`):
//!
//! ```text
//! <｜DSML｜function_calls>
//! <｜DSML｜invoke name="Bash">
//! <｜DSML｜parameter name="command" string="true">ls -la</｜DSML｜parameter>
//! <｜DSML｜parameter name="timeout" string="false">30</｜DSML｜parameter>
//! </｜DSML｜invoke>
//! </｜DSML｜function_calls>
//! ```
//!
//! V4 (and V4-Flash) names the block `<｜DSML｜tool_calls>`; all else is V3.2's, so one
//! type has both as values. Text values are typed by the tool's schema as the other
//! XML formats' are; a JSON one is parsed. DeepSeek ships these models' prompt format as
//! a Python encoder, not a chat template: the templates engines use are their own (the
//! fixture is llama.cpp's). The generation prompt opens `<think>` in thinking mode and
//! writes `<think></think>` (V4: `</think>`) without.

use super::{Format, GrammarStart};
use crate::constrain::xml::{call_rule, XmlShape};
use crate::constrain::{calls_lark, literal};
use crate::output::{CallReader, XmlCall, XmlSyntax};
use crate::request::ToolSpec;

/// Every DSML tag has this after its `<` (or `</`).
const DSML: &str = "｜DSML｜";
const INVOKE: &str = "<｜DSML｜invoke name=\"";
const INVOKE_CLOSE: &str = "</｜DSML｜invoke>";
const PARAMETER: &str = "<｜DSML｜parameter name=\"";
const PARAMETER_CLOSE: &str = "</｜DSML｜parameter>";

/// As the template writes a call: each invoke on a line after the block's marker (or
/// the invoke before it), each parameter on a line of its own, text values with
/// `string="true"` and others as JSON with `string="false"`.
const SHAPE: XmlShape = XmlShape {
    head: |name| format!("\n<｜DSML｜invoke name=\"{name}\">\n"),
    param_open: |key| format!("<｜DSML｜parameter name=\"{key}\" string=\"true\">"),
    json_param_open: Some(|key| format!("<｜DSML｜parameter name=\"{key}\" string=\"false\">")),
    param_close: "</｜DSML｜parameter>\n",
    tail: "</｜DSML｜invoke>",
};

/// One DSML generation: what sets it apart is its names and its block's tags.
pub(super) struct Dsml {
    names: &'static [&'static str],
    models: &'static str,
    open: &'static str,
    close: &'static str,
    markers: &'static [&'static str],
}

/// DeepSeek V3.2 (and V3.2-Exp, V3.2-Speciale).
pub(super) const DEEPSEEK_V32: Dsml = Dsml {
    names: &["deepseek_v32"],
    models: "DeepSeek V3.2",
    open: "<｜DSML｜function_calls>",
    close: "</｜DSML｜function_calls>",
    markers: &[
        "<｜DSML｜function_calls>",
        "</｜DSML｜function_calls>",
        INVOKE_CLOSE,
        PARAMETER_CLOSE,
    ],
};

/// DeepSeek V4 and V4-Flash.
pub(super) const DEEPSEEK_V4: Dsml = Dsml {
    names: &["deepseek_v4"],
    models: "DeepSeek V4, V4-Flash",
    open: "<｜DSML｜tool_calls>",
    close: "</｜DSML｜tool_calls>",
    markers: &[
        "<｜DSML｜tool_calls>",
        "</｜DSML｜tool_calls>",
        INVOKE_CLOSE,
        PARAMETER_CLOSE,
    ],
};

impl Dsml {
    fn syntax(&self) -> XmlSyntax {
        XmlSyntax {
            open: self.open,
            name_open: INVOKE,
            name_close: "\">",
            key_open: PARAMETER,
            key_close: "\">",
            value_open: "",
            value_close: PARAMETER_CLOSE,
            // The template writes values bare: a file's trailing line break is its own.
            value_newlines: false,
            string_attr: true,
            call_close: INVOKE_CLOSE,
            block_close: Some(self.close),
        }
    }
}

impl Format for Dsml {
    fn names(&self) -> &'static [&'static str] {
        self.names
    }

    fn models(&self) -> &'static str {
        self.models
    }

    /// Templates build the tags from a `dsml_token` variable, so the block's name is
    /// looked for on its own: V4's is its only mark (V3.2's templates say `tool_calls`
    /// too, of messages).
    fn detect(&self, template: &str) -> bool {
        let block = self.open.trim_start_matches('<').trim_start_matches(DSML);
        template.contains(DSML)
            && (template.contains(self.open) || template.contains(&format!("'{block}")))
    }

    fn markers(&self) -> &'static [&'static str] {
        self.markers
    }

    fn open(&self) -> &'static str {
        self.open
    }

    fn reader(&self) -> Box<dyn CallReader> {
        Box::new(XmlCall::new(self.syntax()))
    }

    /// Parallel calls are several invokes in one block, as the template writes them.
    fn grammar(&self, tools: &[&ToolSpec], start: GrammarStart) -> String {
        let (open, separator) = match start {
            GrammarStart::Forced => (literal(self.open), None),
            GrammarStart::AfterMarker { parallel } => (literal(""), parallel.then_some("")),
            GrammarStart::Bare => (literal(""), None),
        };
        calls_lark(
            &open,
            &format!("\n{}", self.close),
            separator,
            tools,
            |i, tool, lark| call_rule(&SHAPE, i, tool, lark),
        )
    }
}

/// DeepSeek's vocabulary has none of these tags as a special token that a test model
/// shares: these tests read text (and run grammars over a byte tokenizer).
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
            "env": {"type": "object"},
            "note": {"type": ["string", "null"]}},
            "required": ["command"]});
        let write = json!({"type": "object", "properties": {
            "file_path": {"type": "string"}, "content": {"type": "string"}}});
        vec![tool("Bash", bash), tool("Write", write)]
    }

    fn format(tools: ToolFormat, starts_thinking: bool) -> OutputFormat {
        OutputFormat {
            model: None,
            tools: Some(tools),
            reasoning: true,
            starts_thinking,
            hide_reasoning: false,
        }
    }

    const V32: OutputFormat = OutputFormat {
        model: None,
        tools: Some(ToolFormat::DEEPSEEK_V32),
        reasoning: true,
        starts_thinking: false,
        hide_reasoning: false,
    };

    /// The example in the brief and the tool prompt of the V3.2 template.
    const BASH: &str = "<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"Bash\">\n<｜DSML｜parameter name=\"command\" string=\"true\">ls -la</｜DSML｜parameter>\n<｜DSML｜parameter name=\"timeout\" string=\"false\">30</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>";
    const BASH_ARGS: &str = "{\"command\": \"ls -la\", \"timeout\": 30}";

    /// vLLM's docstring example: two invokes in one block, values in Chinese.
    const TWO_INVOKES: &str = "<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"location\" string=\"true\">杭州</｜DSML｜parameter>\n<｜DSML｜parameter name=\"date\" string=\"true\">2024-01-16</｜DSML｜parameter>\n</｜DSML｜invoke>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"location\" string=\"true\">北京</｜DSML｜parameter>\n<｜DSML｜parameter name=\"date\" string=\"true\">2024-01-16</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>";

    fn v4(text: &str) -> String {
        text.replace("function_calls>", "tool_calls>")
    }

    #[test]
    fn reasoning_text_and_a_call_in_both_generations() {
        for (dsml, text) in [
            (ToolFormat::DEEPSEEK_V32, BASH.to_owned()),
            (ToolFormat::DEEPSEEK_V4, v4(BASH)),
        ] {
            // Thinking mode: the prompt opened `<think>`; the template puts a blank line
            // between the content and the block.
            let output = format!("Need the listing.</think>Let me look.\n\n{text}");
            let (segments, calls) = parse_with(format(dsml, true), &tools(), &output);
            let mut expected = vec![
                Segment::Thinking("Need the listing.".into()),
                Segment::Text("Let me look.".into()),
            ];
            expected.extend(call("Bash", BASH_ARGS));
            assert_eq!((segments, calls), (expected, 1), "{dsml}");
            // Each reads only its own block.
            let other = if dsml == ToolFormat::DEEPSEEK_V4 {
                BASH.to_owned()
            } else {
                v4(BASH)
            };
            let (segments, calls) = parse_with(format(dsml, false), &tools(), &other);
            assert_eq!(calls, 0, "{dsml}");
            assert!(matches!(&segments[..], [Segment::Text(_)]), "{dsml}");
        }
    }

    #[test]
    fn several_invokes_in_one_block_are_several_calls() {
        let (segments, calls) = parse_with(V32, &[], TWO_INVOKES);
        let args = |city: &str| json!({"location": city, "date": "2024-01-16"});
        assert_eq!(
            calls_in(&segments),
            [
                ("get_weather".to_owned(), args("杭州")),
                ("get_weather".to_owned(), args("北京"))
            ]
        );
        assert_eq!(calls, 2);
        assert_eq!(segments.len(), 6);
    }

    #[test]
    fn a_call_inside_reasoning_is_a_call() {
        let text = format!("I will list the files.\n\n{BASH}");
        let (segments, calls) = parse_with(format(ToolFormat::DEEPSEEK_V32, true), &tools(), &text);
        let mut expected = vec![Segment::Thinking("I will list the files.\n\n".into())];
        expected.extend(call("Bash", BASH_ARGS));
        assert_eq!((segments, calls), (expected, 1));
    }

    /// `string="true"` is text (typed by the schema where it wants no string);
    /// `string="false"` is JSON, a JSON string included.
    #[test]
    fn the_string_attribute_says_text_or_json() {
        let param = |key: &str, string: bool, value: &str| {
            format!("<｜DSML｜parameter name=\"{key}\" string=\"{string}\">{value}</｜DSML｜parameter>\n")
        };
        let text = format!(
            "<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"Bash\">\n{}{}{}{}{}</｜DSML｜invoke>\n</｜DSML｜function_calls>",
            param("command", true, "42"),
            param("timeout", true, "30"),
            param("env", false, "{\"A\": \"1\"}"),
            param("note", false, "null"),
            param("extra", false, "[1, \"two\"]"),
        );
        let (segments, _) = parse_with(V32, &tools(), &text);
        assert_eq!(
            calls_in(&segments),
            [(
                "Bash".to_owned(),
                json!({"command": "42", "timeout": 30, "env": {"A": "1"}, "note": null, "extra": [1, "two"]})
            )]
        );
        // A JSON string for a string; raw text of a key the tool does not name.
        let text = format!(
            "<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"Write\">\n{}{}</｜DSML｜invoke>\n</｜DSML｜function_calls>",
            param("file_path", false, "\"a.txt\""),
            param("mode", true, "0644"),
        );
        let (segments, _) = parse_with(V32, &tools(), &text);
        assert_eq!(
            calls_in(&segments),
            [(
                "Write".to_owned(),
                json!({"file_path": "a.txt", "mode": "0644"})
            )]
        );
    }

    #[test]
    fn string_values_are_kept_and_stream() {
        let content = "fn main() {\n    println!(\"</parameter> <｜DSML｜invoke\");\n}\n";
        let text = format!("<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"Write\">\n<｜DSML｜parameter name=\"file_path\" string=\"true\">a.rs</｜DSML｜parameter>\n<｜DSML｜parameter name=\"content\" string=\"true\">{content}</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>");
        let (segments, _) = parse_with(V32, &tools(), &text);
        assert_eq!(
            calls_in(&segments),
            [(
                "Write".to_owned(),
                json!({"file_path": "a.rs", "content": content})
            )]
        );
        let mut p = OutputParser::new(V32).with_tools(&tools());
        let out = p.push("<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"Write\">\n<｜DSML｜parameter name=\"content\" string=\"true\">line one\n");
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
            p.push("line two</｜DSML｜para"),
            [Segment::CallArguments("line two".into())]
        );
    }

    #[test]
    fn cut_off_calls_close_into_valid_arguments() {
        let text = "<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"Write\">\n<｜DSML｜parameter name=\"file_path\" string=\"true\">a.rs</｜DSML｜parameter>\n<｜DSML｜parameter name=\"content\" string=\"true\">fn ma";
        let (segments, calls) = parse_with(V32, &tools(), text);
        assert_eq!(
            segments,
            call("Write", "{\"file_path\": \"a.rs\", \"content\": \"fn ma\"}")
        );
        assert_eq!(calls, 1);
        // Cut in the attribute: the key is known, the value never came.
        let text = "<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"Bash\">\n<｜DSML｜parameter name=\"timeout\" string=\"fa";
        let (segments, _) = parse_with(V32, &tools(), text);
        assert_eq!(segments, call("Bash", "{}"));
        // Cut before the name: nothing.
        let (segments, _) = parse_with(
            V32,
            &tools(),
            "Wait.\n\n<｜DSML｜function_calls>\n<｜DSML｜inv",
        );
        assert_eq!(segments, [Segment::Text("Wait.".into())]);
        let text = format!("Let me look.\n\n{TWO_INVOKES}\nAnd:\n\n{BASH}");
        every_cut_parses(ToolFormat::DEEPSEEK_V32, &text);
        every_cut_parses(ToolFormat::DEEPSEEK_V4, &v4(&text));
    }

    #[test]
    fn the_templates_are_detected() {
        let template = std::fs::read_to_string(fixtures().join("deepseek-v3.2.jinja")).unwrap();
        assert_eq!(
            ToolFormat::detect(&template),
            Some(ToolFormat::DEEPSEEK_V32)
        );
        // V4's (SGLang's template, in its words) writes the block's tag whole.
        let v4 = "{{ '\\n\\n<｜DSML｜tool_calls>' -}}{%- for tc in m.tool_calls -%}{{ '\\n<｜DSML｜invoke name=\"' + name + '\">' -}}";
        assert_eq!(ToolFormat::detect(v4), Some(ToolFormat::DEEPSEEK_V4));
    }

    /// The prompt opens `<think>` in thinking mode (also after tool results) and closes
    /// it without.
    #[test]
    fn the_prompt_opens_reasoning_in_thinking_mode_only() {
        let prompt = |case: &str| {
            let path = fixtures().join(format!("expected/deepseek-v3.2/{case}.txt"));
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"))
        };
        assert!(prompt("reasoning_and_thinking").ends_with("<｜Assistant｜><think>"));
        assert!(prompt("agent_loop_thinking").ends_with("</function_results>\n\n<think>"));
        assert!(prompt("tools").ends_with("<｜Assistant｜><think></think>"));
        assert!(prompt("agent_loop_no_thinking").ends_with("\n\n<think></think>"));
    }

    /// Every call the template writes in history (rendered by Python's jinja2), read
    /// back: the same calls, the same arguments.
    #[test]
    fn the_templates_own_calls_read_back() {
        let cases: Value =
            serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
                .unwrap();
        let mut checked = 0;
        for case in cases["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let path = fixtures().join(format!("expected/deepseek-v3.2/{name}.txt"));
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
            // The conversation, after the system prompt (whose example is no call).
            let (_, conversation) = render.split_once("</functions>").unwrap();
            let mut got = Vec::new();
            for (at, _) in conversation.match_indices(DEEPSEEK_V32_OPEN) {
                let block = &conversation[at..];
                let end = block.find(DEEPSEEK_V32_CLOSE).unwrap() + DEEPSEEK_V32_CLOSE.len();
                let (segments, _) = parse_with(V32, &tools, &block[..end]);
                got.extend(calls_in(&segments));
            }
            assert_eq!(got, expected, "{name}");
            checked += 1;
        }
        assert!(checked >= 4, "{checked} cases");
    }

    const DEEPSEEK_V32_OPEN: &str = super::DEEPSEEK_V32.open;
    const DEEPSEEK_V32_CLOSE: &str = super::DEEPSEEK_V32.close;

    fn weather() -> ToolSpec {
        tool(
            "get_weather",
            json!({
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "unit": {"enum": ["c", "f", 0]},
                    "note": {"type": ["string", "null"]}
                },
                "required": ["city", "days"]
            }),
        )
    }

    /// The template's own call: the forced grammar lets it through whole, text values
    /// with `string="true"`, others as JSON with `string="false"`, and the parser reads
    /// it back. Each value's attribute must fit its type.
    #[test]
    fn a_forced_call_is_the_templates_own() {
        let param = |key: &str, string: bool, value: &str| {
            format!("<｜DSML｜parameter name=\"{key}\" string=\"{string}\">{value}</｜DSML｜parameter>\n")
        };
        let head = "<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"get_weather\">\n";
        let tail = "</｜DSML｜invoke>\n</｜DSML｜function_calls>";
        for dsml in [ToolFormat::DEEPSEEK_V32, ToolFormat::DEEPSEEK_V4] {
            let at = |text: &str| {
                if dsml == ToolFormat::DEEPSEEK_V4 {
                    v4(text)
                } else {
                    text.to_owned()
                }
            };
            let forced = || grammars().forced_call(dsml, &[weather()], None).unwrap();
            let own = at(&format!(
                "{head}{}{}{}{}{tail}",
                param("city", true, "Oslo"),
                param("days", false, "2"),
                param("unit", false, "0"),
                param("note", false, "null"),
            ));
            let mut c = forced();
            assert!(takes(&mut c, &own), "{dsml}");
            assert!(c.is_complete());
            assert!(c
                .mask()
                .is_some_and(|m| TokenMask(m.as_slice()).allows(crate::testing::EOG)));
            let (segments, calls) = parse_with(format(dsml, false), &[weather()], &own);
            assert_eq!(
                calls_in(&segments),
                [(
                    "get_weather".to_owned(),
                    json!({"city": "Oslo", "days": 2, "unit": 0, "note": null})
                )]
            );
            assert_eq!(calls, 1);
            // A string enum value and a text note are `string="true"`.
            let text_values = at(&format!(
                "{head}{}{}{}{}{tail}",
                param("city", true, "Oslo"),
                param("days", false, "2"),
                param("unit", true, "f"),
                param("note", true, "warm </b>"),
            ));
            assert!(takes(&mut forced(), &text_values), "{dsml}");
            // Wrong attributes: a number as text, a string as JSON.
            let city = param("city", true, "Oslo");
            for wrong in [
                format!("{head}{city}{}", param("days", true, "2")),
                format!("{head}{}", param("city", false, "\"Oslo\"")),
            ] {
                assert!(!takes(&mut forced(), &at(&wrong)), "{wrong}");
            }
            // Text first; a required key left out.
            assert!(!takes(&mut forced(), "Sure!"));
            assert!(!takes(
                &mut forced(),
                &at(&format!("{head}{}", param("days", false, "2")))
            ));
        }
    }

    /// Under `auto`, parallel calls are more invokes in the block; without, one.
    #[test]
    fn a_lazy_call_holds_more_invokes_when_parallel() {
        let invoke = "\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"city\" string=\"true\">Oslo</｜DSML｜parameter>\n<｜DSML｜parameter name=\"days\" string=\"false\">2</｜DSML｜parameter>\n</｜DSML｜invoke>";
        let close = "\n</｜DSML｜function_calls>";
        for parallel in [true, false] {
            let lazy = grammars()
                .call_body(ToolFormat::DEEPSEEK_V32, &[weather()], parallel)
                .unwrap();
            let mut c = lazy.after_marker(DEEPSEEK_V32_OPEN.as_bytes()).unwrap();
            assert_eq!(takes(&mut c, &format!("{invoke}{invoke}{close}")), parallel);
            let mut c = lazy.after_marker(DEEPSEEK_V32_OPEN.as_bytes()).unwrap();
            assert!(takes(&mut c, &format!("{invoke}{close}")));
            assert!(c.is_complete());
        }
    }
}
