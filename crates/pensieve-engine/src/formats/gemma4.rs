//! Gemma 4 (E2B, E4B, 12B, 26B-A4B, 31B), FunctionGemma's successor:
//!
//! ```text
//! <|channel>thought
//! Need the listing.
//! <channel|><|tool_call>call:Bash{command:<|"|>ls -la<|"|>,timeout:30}<tool_call|>
//! ```
//!
//! Calls are the Gemma family's `call:name{...}` ([`GemmaCall`]): keys bare, strings
//! between `<|"|>` tokens with nothing escaped inside, numbers, booleans, objects and
//! arrays as in JSON; several calls follow one another, each in its own markers.
//!
//! Reasoning is a channel rather than `<think>`: `<|channel>` opens it, `<channel|>`
//! closes it, and the model labels it `thought` on a line of its own. The template writes
//! reasoning back as `<|channel>thought\n` + reasoning + `\n<channel|>`, so the label and
//! those two line breaks are markup ([`Format::reasoning_label`]); read that way, the
//! reasoning the client gets back renders as the model wrote it. The generation prompt
//! never opens the channel: with thinking on it ends `<|turn>model\n`, with thinking off
//! it holds an empty, closed one (`<|channel>thought\n<channel|>`).

use super::{Format, GrammarStart};
use crate::constrain::gemma;
use crate::output::{CallReader, GemmaCall, GemmaSyntax};
use crate::request::ToolSpec;

const SYNTAX: GemmaSyntax = GemmaSyntax {
    open: "<|tool_call>",
    close: "<tool_call|>",
    delim: "<|\"|>",
};

const CHANNEL_OPEN: &str = "<|channel>";
const CHANNEL_CLOSE: &str = "<channel|>";

pub(super) struct Gemma4;

impl Format for Gemma4 {
    fn names(&self) -> &'static [&'static str] {
        &["gemma4"]
    }

    fn models(&self) -> &'static str {
        "Gemma 4 (E2B, E4B, 12B, 26B-A4B, 31B)"
    }

    /// FunctionGemma's template has `<start_function_call>` instead, and no other
    /// format's has `<|tool_call>` (Hermes' `<tool_call>` is not in it).
    fn detect(&self, template: &str) -> bool {
        template.contains(SYNTAX.open)
    }

    /// All control tokens in Gemma 4's vocabulary, which must read as their text.
    fn markers(&self) -> &'static [&'static str] {
        &[
            SYNTAX.open,
            SYNTAX.close,
            SYNTAX.delim,
            CHANNEL_OPEN,
            CHANNEL_CLOSE,
        ]
    }

    fn open(&self) -> &'static str {
        SYNTAX.open
    }

    fn reader(&self) -> Box<dyn CallReader> {
        Box::new(GemmaCall::new(SYNTAX))
    }

    /// The channel's own markers rather than `<|channel>thought`: `<|channel>` is one
    /// token, so a label the model writes otherwise (or a cut-off one) can't leave the
    /// marker in the text.
    fn reasoning(&self) -> (&'static str, &'static str) {
        (CHANNEL_OPEN, CHANNEL_CLOSE)
    }

    fn reasoning_label(&self) -> Option<&'static str> {
        Some("thought")
    }

    fn grammar(&self, tools: &[&ToolSpec], start: GrammarStart) -> String {
        // Exactly "anything but the delimiter" in strings: code in arguments keeps its
        // `<<` and `<|`.
        gemma::calls(SYNTAX, &gemma::delimited_string(SYNTAX.delim), tools, start)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use serde_json::{json, Value};

    use crate::constrain::Grammars;
    use crate::model::{TokenMask, Tokenizer};
    use crate::output::family_tests::every_cut_parses;
    use crate::output::tests::{call, merge, parse_in, parse_with};
    use crate::output::{OutputFormat, OutputParser, Segment};
    use crate::request::{GenerateRequest, Message, Role, ToolSpec};
    use crate::testing::{model_info, ByteTokenizer, ScriptedRunner};
    use crate::{Engine, EngineConfig, ToolFormat};

    fn tools() -> Vec<ToolSpec> {
        let bash = json!({"type": "object", "properties": {
            "command": {"type": "string"},
            "timeout": {"type": "integer"},
            "background": {"type": "boolean"},
            "env": {"type": "object"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "unit": {"type": "string", "enum": ["s", "ms"]}},
            "required": ["command"]});
        vec![ToolSpec {
            name: "Bash".into(),
            description: None,
            parameters: bash,
        }]
    }

    const GEMMA4: OutputFormat = OutputFormat {
        model: None,
        tools: Some(ToolFormat::GEMMA4),
        reasoning: true,
        starts_thinking: false,
        hide_reasoning: false,
    };

    const BASH: &str = "<|tool_call>call:Bash{command:<|\"|>ls -la<|\"|>,timeout:30}<tool_call|>";
    const BASH_ARGS: &str = "{\"command\":\"ls -la\",\"timeout\":30}";

    #[test]
    fn is_found_in_its_template_and_not_in_functiongemma_s() {
        let template = include_str!("../template/fixtures/gemma4.jinja");
        assert_eq!(ToolFormat::detect(template), Some(ToolFormat::GEMMA4));
        assert_eq!(
            ToolFormat::detect("{{- '<start_function_call>call:' + name }}"),
            Some(ToolFormat::FUNCTIONGEMMA)
        );
        assert_eq!(ToolFormat::from_name("gemma4"), Some(ToolFormat::GEMMA4));
    }

    #[test]
    fn reasoning_then_a_call() {
        let text = format!("<|channel>thought\nNeed the listing.\n<channel|>{BASH}");
        let (segments, calls) = parse_with(GEMMA4, &tools(), &text);
        let mut expected = vec![Segment::Thinking("Need the listing.".into())];
        expected.extend(call("Bash", BASH_ARGS));
        assert_eq!(segments, expected);
        assert_eq!(calls, 1);
        // Line breaks inside the reasoning are its own; an empty channel is nothing.
        let text = "<|channel>thought\n\nA\n\nB\n\n<channel|>Done.";
        let (segments, _) = parse_with(GEMMA4, &tools(), text);
        assert_eq!(
            segments,
            [
                Segment::Thinking("\nA\n\nB\n".into()),
                Segment::Text("Done.".into())
            ]
        );
        let (segments, _) = parse_with(GEMMA4, &tools(), "<|channel>thought\n<channel|>Hi.");
        assert_eq!(segments, [Segment::Text("Hi.".into())]);
    }

    #[test]
    fn the_label_is_markup_however_it_comes() {
        let cases = [
            // No line break after the label, or no label at all.
            ("<|channel>thought<channel|>Hi.", None),
            ("<|channel>\nPlan.\n<channel|>Hi.", Some("Plan.")),
            // A word that only starts like the label is reasoning.
            (
                "<|channel>thoughtful plan<channel|>Hi.",
                Some("thoughtful plan"),
            ),
        ];
        for (text, thought) in cases {
            let (segments, _) = parse_with(GEMMA4, &tools(), text);
            let mut expected: Vec<Segment> = thought
                .map(|t| Segment::Thinking(t.into()))
                .into_iter()
                .collect();
            expected.push(Segment::Text("Hi.".into()));
            assert_eq!(segments, expected, "{text:?}");
        }
        // Cut off inside the label: no reasoning yet.
        let (segments, _) = parse_with(GEMMA4, &tools(), "<|channel>thou");
        assert_eq!(segments, []);
        // A prompt that opened the channel leaves the label to the model.
        let opened = OutputFormat {
            starts_thinking: true,
            ..GEMMA4
        };
        let (segments, _) = parse_with(opened, &tools(), "thought\nPlan.\n<channel|>Hi.");
        assert_eq!(
            segments,
            [
                Segment::Thinking("Plan.".into()),
                Segment::Text("Hi.".into())
            ]
        );
    }

    #[test]
    fn text_around_calls_and_several_calls() {
        let text = format!(
            "Let me look.{BASH}<|tool_call>call:Bash{{command:<|\"|>pwd<|\"|>}}<tool_call|>"
        );
        let (segments, calls) = parse_with(GEMMA4, &tools(), &text);
        let mut expected = vec![Segment::Text("Let me look.".into())];
        expected.extend(call("Bash", BASH_ARGS));
        expected.extend(call("Bash", "{\"command\":\"pwd\"}"));
        assert_eq!(segments, expected);
        assert_eq!(calls, 2);
        // Text after a call; a call inside reasoning is a call.
        let text = format!("<|channel>thought\nList.\n{BASH}Listed.");
        let (segments, calls) = parse_with(GEMMA4, &tools(), &text);
        let mut expected = vec![Segment::Thinking("List.\n".into())];
        expected.extend(call("Bash", BASH_ARGS));
        expected.push(Segment::Text("Listed.".into()));
        assert_eq!(segments, expected);
        assert_eq!(calls, 1);
    }

    #[test]
    fn strings_hold_anything_but_the_delimiter() {
        let command =
            "cat <<EOF > a.rs\nfn main() { let x = [1, 2]; }\nEOF\necho \"a:b, {c}\" \\ <|x|>";
        let text = format!(
            "<|tool_call>call:Bash{{command:<|\"|>{command}<|\"|>,env:{{<|\"|>A:B,C<|\"|>:<|\"|>1<|\"|>}}}}<tool_call|>"
        );
        let (segments, calls) = parse_with(GEMMA4, &tools(), &text);
        let args = json!({"command": command, "env": {"A:B,C": "1"}});
        assert_eq!(arguments(&segments), args);
        assert_eq!(calls, 1);
    }

    #[test]
    fn nested_arguments_and_bare_values() {
        let text = "<|tool_call>call:Bash{command:<|\"|>x<|\"|>,timeout:-1.5e2,background:false,env:{PATH:<|\"|>/bin<|\"|>,depth:{n:null,ok:true}},tags:[<|\"|>a<|\"|>,[],{}],unit:ms}<tool_call|>";
        let (segments, calls) = parse_with(GEMMA4, &tools(), text);
        let args = json!({"command": "x", "timeout": -150.0, "background": false,
            "env": {"PATH": "/bin", "depth": {"n": null, "ok": true}},
            "tags": ["a", [], {}], "unit": "ms"});
        assert_eq!(arguments(&segments), args);
        assert_eq!(calls, 1);
        // No arguments at all.
        let (segments, _) = parse_with(GEMMA4, &tools(), "<|tool_call>call:Bash{}<tool_call|>");
        assert_eq!(segments, call("Bash", "{}"));
    }

    #[test]
    fn what_is_no_call_is_text_and_markers_never_are() {
        let text = "<|tool_call>I cannot do that.";
        let (segments, calls) = parse_with(GEMMA4, &tools(), text);
        assert_eq!(segments, [Segment::Text(text.into())]);
        assert_eq!(calls, 0);
        // Cut after every character, reasoning and all.
        let text = format!(
            "<|channel>thought\nHm.\n<channel|>Sure.{BASH}<|tool_call>call:Bash{{env:{{a:[1,<|\"|>}}<|\"|>]}}}}<tool_call|>"
        );
        every_cut_parses(ToolFormat::GEMMA4, &text[text.find("Sure").unwrap_or(0)..]);
        let chars: Vec<char> = text.chars().collect();
        for cut in 0..=chars.len() {
            let prefix: String = chars[..cut].iter().collect();
            let (segments, _) = parse_in(GEMMA4, &prefix, 3);
            for s in &segments {
                match s {
                    Segment::CallArguments(args) => {
                        serde_json::from_str::<Value>(args)
                            .unwrap_or_else(|e| panic!("{prefix:?}: {args:?}: {e}"));
                    }
                    Segment::Text(t) | Segment::Thinking(t) => {
                        for m in ToolFormat::GEMMA4.markers() {
                            assert!(!t.contains(m), "{prefix:?} leaked {m}: {segments:?}");
                        }
                        assert!(!t.contains("thought"), "{prefix:?}: {segments:?}");
                    }
                    _ => {}
                }
            }
        }
    }

    /// What the template renders for the assistant turns of a fixture case reads back as
    /// the reasoning and calls those turns held.
    #[test]
    fn rendered_calls_read_back_as_the_same_calls() {
        let cases: Value =
            serde_json::from_str(include_str!("../template/fixtures/cases.json")).unwrap();
        let renders = [
            (
                "agent_loop_thinking",
                include_str!("../template/fixtures/expected/gemma4/agent_loop_thinking.txt"),
            ),
            (
                "nested_tool_calls",
                include_str!("../template/fixtures/expected/gemma4/nested_tool_calls.txt"),
            ),
            (
                "tool_calls",
                include_str!("../template/fixtures/expected/gemma4/tool_calls.txt"),
            ),
        ];
        for (name, render) in renders {
            let case = cases["cases"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["name"] == name))
                .unwrap_or_else(|| panic!("{name} is a case"));
            let turns: Vec<&Value> = case["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["tool_calls"].is_array())
                .collect();
            // What the model wrote: from its turn's start, or the end of the tool
            // responses before it, up to the next tool response.
            let written: Vec<&str> = render
                .split("<|tool_response>")
                .map(|piece| {
                    let start = ["<|turn>model\n", "<tool_response|>"]
                        .iter()
                        .filter_map(|m| piece.rfind(m).map(|at| at + m.len()))
                        .max()
                        .unwrap_or(0);
                    &piece[start..]
                })
                .filter(|piece| piece.contains("<|tool_call>"))
                .collect();
            assert_eq!(written.len(), turns.len(), "{name}");
            for (text, turn) in written.into_iter().zip(turns) {
                let (segments, _) = parse_with(GEMMA4, &[], text);
                let mut expected: Vec<Segment> = turn["reasoning"]
                    .as_str()
                    .map(|r| Segment::Thinking(r.into()))
                    .into_iter()
                    .collect();
                for c in turn["tool_calls"].as_array().into_iter().flatten() {
                    expected.extend(call(
                        c["name"].as_str().unwrap_or_default(),
                        &c["arguments"].to_string(),
                    ));
                }
                // Arguments compare as JSON values (the template sorts the keys).
                let normal = |segments: Vec<Segment>| -> Vec<Value> {
                    segments
                        .into_iter()
                        .map(|s| match s {
                            Segment::CallArguments(a) => {
                                serde_json::from_str(&a).unwrap_or(Value::String(a))
                            }
                            s => Value::String(format!("{s:?}")),
                        })
                        .collect()
                };
                assert_eq!(normal(segments), normal(expected), "{name}: {text}");
            }
        }
    }

    #[test]
    fn a_forced_call_lets_the_model_s_own_call_through() {
        let grammars = Grammars::new(&ByteTokenizer, &HashMap::new()).unwrap();
        let own = "<|tool_call>call:Bash{command:<|\"|>cat <<EOF\n{a: 1, b}\n<|x|> <\nEOF<|\"|>,timeout:30,tags:[<|\"|>x<|\"|>],unit:<|\"|>ms<|\"|>}<tool_call|>";
        let allowed = |text: &str| {
            let mut c = grammars
                .forced_call(ToolFormat::GEMMA4, &tools(), None)
                .unwrap();
            let fits = ByteTokenizer.encode(text).into_iter().all(|t| {
                let ok = c.mask().is_some_and(|m| TokenMask(m.as_slice()).allows(t));
                c.accept(t);
                ok
            });
            fits && c.is_complete()
        };
        assert!(allowed(own));
        let mut parser = OutputParser::new(GEMMA4).with_tools(&tools());
        let mut segments = parser.push(own);
        segments.extend(parser.finish());
        let segments = merge(segments);
        assert_eq!(parser.calls(), 1);
        assert_eq!(
            arguments(&segments),
            json!({"command": "cat <<EOF\n{a: 1, b}\n<|x|> <\nEOF", "timeout": 30,
                   "tags": ["x"], "unit": "ms"})
        );
        // The schema holds: the required key, the types, the enum, only named keys.
        let open = "<|tool_call>call:Bash{";
        for wrong in [
            "timeout:30}",
            "command:30",
            "command:<|\"|>x<|\"|>,timeout:<|\"|>",
            "command:<|\"|>x<|\"|>,unit:<|\"|>h<|\"|>",
            "command:<|\"|>x<|\"|>,other:",
            // The delimiter ends a string wherever it comes.
            "command:<|\"|>x<|\"|>y",
        ] {
            assert!(!allowed(&format!("{open}{wrong}")), "{wrong}");
        }
        // Unconstrained text is no call: the grammar starts with the marker.
        assert!(!allowed("Sure!"));
    }

    #[test]
    fn the_prompt_never_opens_the_channel() {
        let mut info = model_info(4096);
        info.chat_template = Some(include_str!("../template/fixtures/gemma4.jinja").into());
        let engine = Engine::start(
            info,
            Arc::new(ByteTokenizer),
            Box::new(ScriptedRunner::new("")),
            EngineConfig {
                queue_capacity: 4,
                parallel: 1,
                cache: Default::default(),
                ..EngineConfig::default()
            },
        )
        .unwrap();
        for thinking in [false, true] {
            let mut request = GenerateRequest::new("m", vec![Message::text(Role::User, "Hi.")], 16);
            request.thinking = thinking;
            request.tools = tools();
            let output = engine.validate(&request).unwrap().output;
            assert_eq!(output.tools, Some(ToolFormat::GEMMA4));
            assert!(output.reasoning, "thinking: {thinking}");
            assert!(!output.starts_thinking, "thinking: {thinking}");
        }
    }

    /// The arguments of the one call in `segments`.
    fn arguments(segments: &[Segment]) -> Value {
        let args: String = segments
            .iter()
            .filter_map(|s| match s {
                Segment::CallArguments(a) => Some(a.as_str()),
                _ => None,
            })
            .collect();
        serde_json::from_str(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }
}
