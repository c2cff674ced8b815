//! Liquid AI's LFM2 and LFM2.5 (vLLM's `lfm2`): a Python list of calls with keyword
//! arguments between two control tokens, text before it and (LFM2.5-8B-A1B) reasoning
//! in `<think>...</think>` before that:
//!
//! ```text
//! <think>Need the listing.</think><|tool_call_start|>[Bash(command="ls -la", timeout=30)]<|tool_call_end|>
//! ```
//!
//! The calls are read by [`PythonicCall`], which also drops the repeat of the calls
//! that LFM2 often writes after the closing token. The prompt never opens `<think>`.
//! LFM2's template lists the tools between `<|tool_list_start|>` and
//! `<|tool_list_end|>`; LFM2.5's after a plain `List of tools: [` (llama.cpp keys on the
//! same texts).

use super::{Format, GrammarStart};
use crate::constrain::pythonic;
use crate::output::{CallReader, PythonicCall, PythonicSyntax};
use serde_json::Value;

use crate::request::{ToolCall, ToolSpec};

const SYNTAX: PythonicSyntax = PythonicSyntax {
    open: "<|tool_call_start|>",
    close: "<|tool_call_end|>",
};

pub(super) struct Lfm2;

impl Format for Lfm2 {
    fn names(&self) -> &'static [&'static str] {
        &["lfm2"]
    }

    fn models(&self) -> &'static str {
        "LFM2, LFM2.5"
    }

    fn detect(&self, template: &str) -> bool {
        ["<|tool_list_start|>", SYNTAX.open, "List of tools: ["]
            .iter()
            .any(|marker| template.contains(marker))
    }

    fn markers(&self) -> &'static [&'static str] {
        &[SYNTAX.open, SYNTAX.close]
    }

    fn open(&self) -> &'static str {
        SYNTAX.open
    }

    fn reader(&self) -> Box<dyn CallReader> {
        Box::new(PythonicCall::new(SYNTAX))
    }

    /// After the turn's text, as LFM2.5's template writes them.
    fn calls_as_text(&self, calls: &[ToolCall]) -> Option<String> {
        let calls: Vec<String> = calls
            .iter()
            .map(|call| {
                let arguments: Vec<String> = match &call.arguments {
                    Value::Object(arguments) => arguments
                        .iter()
                        .map(|(key, value)| format!("{key}={}", python_literal(value)))
                        .collect(),
                    _ => Vec::new(),
                };
                format!("{}({})", call.name, arguments.join(", "))
            })
            .collect();
        Some(format!(
            "{}[{}]{}",
            SYNTAX.open,
            calls.join(", "),
            SYNTAX.close
        ))
    }

    /// Parallel calls are more items in the list, as the template writes them.
    fn grammar(&self, tools: &[&ToolSpec], start: GrammarStart) -> String {
        pythonic::calls(SYNTAX, tools, start)
    }
}

/// `value` as a Python literal: JSON's strings (which Python reads), `True`, `False`,
/// `None`.
fn python_literal(value: &Value) -> String {
    match value {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(n) => n.to_string(),
        Value::String(_) => value.to_string(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(python_literal).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(entries) => {
            let entries: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), python_literal(v)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
    }
}

/// The markers are control tokens of LFM2's vocabulary, which no test model has: these
/// tests read text, and drive the grammars over the byte tokenizer.
#[cfg(test)]
mod tests {
    use crate::formats::test_support::{calls_in, fixtures, grammars, takes, tool};

    use serde_json::{json, Value};

    use crate::constrain::Grammars;
    use crate::model::{TokenMask, Tokenizer};
    use crate::output::family_tests::every_cut_parses;
    use crate::output::tests::{call, parse_with};
    use crate::output::{OutputFormat, OutputParser, Segment};
    use crate::request::ToolSpec;
    use crate::testing::ByteTokenizer;
    use crate::ToolFormat;

    const LFM2: OutputFormat = OutputFormat {
        model: None,
        tools: Some(ToolFormat::LFM2),
        reasoning: true,
        starts_thinking: false,
        hide_reasoning: false,
    };

    const BASH: &str = "<|tool_call_start|>[Bash(command=\"ls -la\", timeout=30)]<|tool_call_end|>";
    const BASH_ARGS: &str = "{\"command\": \"ls -la\", \"timeout\": 30}";

    /// The arguments of the one call `body` (the list's inside) makes.
    fn arguments(body: &str) -> Value {
        let text = format!("<|tool_call_start|>[{body}]<|tool_call_end|>");
        let (segments, calls) = parse_with(LFM2, &[], &text);
        let got = calls_in(&segments);
        assert_eq!((got.len(), calls), (1, 1), "{text}: {segments:?}");
        assert_eq!(segments.len(), 3, "{text}: {segments:?}");
        got[0].1.clone()
    }

    /// Calls an LFM2 template can't render are written into the turn's text: as the
    /// model writes them, so they read back as the same calls.
    #[test]
    fn calls_written_as_text_read_back() {
        let calls = vec![
            crate::request::ToolCall {
                id: "a".into(),
                name: "Write".into(),
                arguments: json!({"file_path": "a.py", "content": "print(\"hi\")\n# it's ok", "n": 1.5,
                    "flags": [true, null], "env": {"A": "x y"}}),
            },
            crate::request::ToolCall {
                id: "b".into(),
                name: "Bash".into(),
                arguments: json!({}),
            },
        ];
        let text = ToolFormat::LFM2.calls_as_text(&calls).unwrap();
        assert!(
            text.starts_with("<|tool_call_start|>[Write(file_path=\"a.py\", "),
            "{text}"
        );
        let (segments, _) = parse_with(LFM2, &[], &text);
        let expected: Vec<(String, Value)> =
            calls.into_iter().map(|c| (c.name, c.arguments)).collect();
        assert_eq!(calls_in(&segments), expected);
    }

    #[test]
    fn reasoning_then_a_call_and_text_around_it() {
        let text = format!("<think>Need the listing.</think>{BASH}");
        let (segments, calls) = parse_with(LFM2, &[], &text);
        let mut expected = vec![Segment::Thinking("Need the listing.".into())];
        expected.extend(call("Bash", BASH_ARGS));
        assert_eq!(segments, expected);
        assert_eq!(calls, 1);
        // Text before the call and after it.
        let text = format!("Let me look.{BASH}\nChecking the listing.");
        let (segments, _) = parse_with(LFM2, &[], &text);
        let mut expected = vec![Segment::Text("Let me look.".into())];
        expected.extend(call("Bash", BASH_ARGS));
        expected.push(Segment::Text("Checking the listing.".into()));
        assert_eq!(segments, expected);
        // A call inside reasoning is a call.
        let text = format!("<think>I will list the files.\n{BASH}");
        let (segments, calls) = parse_with(LFM2, &[], &text);
        let mut expected = vec![Segment::Thinking("I will list the files.\n".into())];
        expected.extend(call("Bash", BASH_ARGS));
        assert_eq!(segments, expected);
        assert_eq!(calls, 1);
    }

    #[test]
    fn python_literals_become_json() {
        assert_eq!(
            arguments("register_user(name='John Doe', age=37, address={'city': 'San Francisco', 'state': 'CA'}, role=None, passed_test=True, aliases=['John', 'Johnny'])"),
            json!({"name": "John Doe", "age": 37, "address": {"city": "San Francisco", "state": "CA"},
                   "role": null, "passed_test": true, "aliases": ["John", "Johnny"]})
        );
        // JSON's words, as LFM2.5's template writes dicts; numbers in Python's forms;
        // tuples; keys that are numbers; empty containers and trailing commas.
        assert_eq!(
            arguments("f(config={\"enabled\": true, \"note\": null, \"off\": false}, month=07, big=1_000, hex=0x1F, neg=-2.5, exp=1e3, half=.5, pair=(1, 'a'), ids={1: 'x', True: None}, e=[], d={}, t=(), l=[1, 2,], )"),
            json!({"config": {"enabled": true, "note": null, "off": false}, "month": 7,
                   "big": 1000, "hex": 31, "neg": -2.5, "exp": 1000.0, "half": 0.5,
                   "pair": [1, "a"], "ids": {"1": "x", "true": null}, "e": [], "d": {}, "t": [],
                   "l": [1, 2]})
        );
        // Spaces the models put around the parts; keys that are no identifiers (Claude
        // Code's Grep has `-n`); a word that is no literal is a string.
        assert_eq!(
            arguments("  Grep( pattern = 'fn main' , -n=True, -A=3, mode=content )  "),
            json!({"pattern": "fn main", "-n": true, "-A": 3, "mode": "content"})
        );
    }

    #[test]
    fn strings_hold_anything() {
        let cases = [
            // Brackets, parentheses, the other quote, commas.
            (
                r#"exec(command='grep -F "]" log.txt) [a], {b}')"#,
                r#"grep -F "]" log.txt) [a], {b}"#,
            ),
            // Escapes.
            (
                r#"f(s='Martha\'s Vineyard\n\t\\ \x41\u00e9\U0001F600 \101 \q \N{DASH}')"#,
                "Martha's Vineyard\n\t\\ A\u{e9}\u{1F600} A \\q \\N{DASH}",
            ),
            (r#"f(s="say \"hi\"")"#, "say \"hi\""),
            // Raw line breaks, as the template writes them.
            (
                "f(s='cat > f.py << EOF\nimport csv\nprint(1)\nEOF')",
                "cat > f.py << EOF\nimport csv\nprint(1)\nEOF",
            ),
            // A quote of the string's kind that does not close it.
            (
                "bash(command='sed -n '360,450p' /testbed/common.py')",
                "sed -n '360,450p' /testbed/common.py",
            ),
            ("f(s='it's a ' test')", "it's a ' test"),
            // Triple quotes, raw strings, a line continued.
            (
                "f(s='''a 'quoted' \"\"\" line\n''')",
                "a 'quoted' \"\"\" line\n",
            ),
            (r#"f(s=r'\d+\'', t=b"x")"#, r"\d+\'"),
            ("f(s='one \\\ntwo')", "one two"),
            // Marker-like text that is no marker.
            (
                "f(s='a <|tool_call_start|> b <| c')",
                "a <|tool_call_start|> b <| c",
            ),
            ("f(s='')", ""),
        ];
        for (body, expected) in cases {
            let args = arguments(body);
            assert_eq!(
                args["s"].as_str().or(args["command"].as_str()),
                Some(expected),
                "{body}"
            );
        }
    }

    /// A string's text streams as it comes; a quote waits for what follows it.
    #[test]
    fn string_values_stream() {
        let mut p = OutputParser::new(LFM2);
        let out = p.push("<|tool_call_start|>[Write(file_path='a.rs', content='fn main() {\n");
        assert_eq!(
            out,
            [
                Segment::CallStart {
                    name: "Write".into()
                },
                Segment::CallArguments(
                    "{\"file_path\": \"a.rs\", \"content\": \"fn main() {\\n".into()
                )
            ]
        );
        assert_eq!(p.push("    it'"), [Segment::CallArguments("    it".into())]);
        assert_eq!(p.push("s\n}'"), [Segment::CallArguments("'s\\n}".into())]);
        assert_eq!(
            p.push(")]<|tool_call_end|>"),
            [Segment::CallArguments("\"}".into()), Segment::CallEnd]
        );
        assert_eq!(p.calls(), 1);
    }

    #[test]
    fn several_calls_and_several_blocks() {
        let text = "<|tool_call_start|>[get_candidate_status(candidate_id='12345'), get_weather(), grocery.orderIngredients(ingredientList=[{'name': 'Lasagna noodles', 'amount': 250}], deliveryAddress='845 Willow Lane')]<|tool_call_end|>";
        let (segments, calls) = parse_with(LFM2, &[], text);
        assert_eq!(
            calls_in(&segments),
            [
                (
                    "get_candidate_status".to_owned(),
                    json!({"candidate_id": "12345"})
                ),
                ("get_weather".to_owned(), json!({})),
                (
                    "grocery.orderIngredients".to_owned(),
                    json!({"ingredientList": [{"name": "Lasagna noodles", "amount": 250}],
                        "deliveryAddress": "845 Willow Lane"})
                ),
            ]
        );
        assert_eq!(calls, 3);
        assert_eq!(segments.len(), 9);
        // One block after another, and a call without the list's brackets.
        let text =
            format!("{BASH}{BASH} <|tool_call_start|>Read(file_path='a.rs')<|tool_call_end|>Done.");
        let (segments, calls) = parse_with(LFM2, &[], &text);
        let mut expected = call("Bash", BASH_ARGS);
        expected.extend(call("Bash", BASH_ARGS));
        expected.extend(call("Read", "{\"file_path\": \"a.rs\"}"));
        expected.push(Segment::Text("Done.".into()));
        assert_eq!(segments, expected);
        assert_eq!(calls, 3);
    }

    /// LFM2 writes the call list again after the closing token, capped with another
    /// closing token or not (vLLM's lfm2 parser drops it too); the repeat is no text.
    #[test]
    fn the_models_repeat_of_its_calls_is_dropped() {
        let body = "[grocery.orderIngredients(ingredientList=[{'name': 'apple', 'quantity': '2'}], deliveryAddress='123 Main St')]";
        let args = json!({"ingredientList": [{"name": "apple", "quantity": "2"}], "deliveryAddress": "123 Main St"});
        let expected = vec![("grocery.orderIngredients".to_owned(), args)];
        for after in [
            format!("{body}<|tool_call_end|>"),
            format!("\n{body}<|tool_call_end|>"),
            body.to_owned(),
            format!("{body}\n"),
            // Cut off inside the repeat.
            body[..body.len() / 2].to_owned(),
        ] {
            let text = format!("<|tool_call_start|>{body}<|tool_call_end|>{after}");
            let (segments, calls) = parse_with(LFM2, &[], &text);
            assert_eq!(calls_in(&segments), expected, "{after:?}");
            assert_eq!((segments.len(), calls), (3, 1), "{after:?}: {segments:?}");
        }
        // Text after the repeat is text; text that only starts like it too.
        let text =
            format!("<|tool_call_start|>{body}<|tool_call_end|>{body}<|tool_call_end|>Ordered.");
        let (segments, _) = parse_with(LFM2, &[], &text);
        assert_eq!(segments.last(), Some(&Segment::Text("Ordered.".into())));
        for other in [
            "[grocery.orderIngredients] is the tool I used.",
            "[link](https://example.com)",
        ] {
            let text = format!("{BASH}{other}");
            let (segments, _) = parse_with(LFM2, &[], &text);
            assert_eq!(
                segments.last(),
                Some(&Segment::Text(other.into())),
                "{other}"
            );
        }
        every_cut_parses(
            ToolFormat::LFM2,
            &format!("<|tool_call_start|>{body}<|tool_call_end|>{body}<|tool_call_end|>Ordered."),
        );
    }

    #[test]
    fn cut_off_calls_close_into_valid_arguments() {
        let (segments, calls) = parse_with(
            LFM2,
            &[],
            "<|tool_call_start|>[Write(file_path='a.rs', content='fn ma",
        );
        assert_eq!(
            segments,
            call("Write", "{\"file_path\": \"a.rs\", \"content\": \"fn ma\"}")
        );
        assert_eq!(calls, 1);
        let (segments, _) = parse_with(LFM2, &[], "<|tool_call_start|>[f(n=12, d={'a': [Tr");
        assert_eq!(
            calls_in(&segments),
            [("f".to_owned(), json!({"n": 12, "d": {"a": ["Tr"]}}))]
        );
        // The closing token cuts a call short.
        let (segments, _) = parse_with(
            LFM2,
            &[],
            "<|tool_call_start|>[f(s='a, b<|tool_call_end|>Hm.",
        );
        let mut expected = call("f", "{\"s\": \"a, b\"}");
        expected.push(Segment::Text("Hm.".into()));
        assert_eq!(segments, expected);
        // Cut before the name: nothing.
        let (segments, _) = parse_with(LFM2, &[], "Wait.<|tool_call_start|>[Ba");
        assert_eq!(segments, [Segment::Text("Wait.".into())]);
        for text in [
            format!("Let me look.{BASH}"),
            "Hm.<|tool_call_start|>[a(s='x\\'y\\n', n=-1.5e3, l=[1, (2, 3), {'k': None}]), b(), c(q=\"it's ') ok\")]<|tool_call_end|>Done.".to_owned(),
            "<|tool_call_start|>[f(s='''x''y''', t=r'\\'', u='\\x4', v=True)]<|tool_call_end|>".to_owned(),
        ] {
            every_cut_parses(ToolFormat::LFM2, &text);
        }
    }

    #[test]
    fn what_is_no_call_is_text() {
        let text = "<|tool_call_start|>I cannot do that.";
        let (segments, calls) = parse_with(LFM2, &[], text);
        assert_eq!(segments, [Segment::Text(text.into())]);
        assert_eq!(calls, 0);
        // An empty list is no call, and nothing.
        let (segments, calls) = parse_with(LFM2, &[], "<|tool_call_start|>[ ]<|tool_call_end|>Hi.");
        assert_eq!((segments, calls), (vec![Segment::Text("Hi.".into())], 0));
        // A call that breaks off: closed, and the rest of its block dropped.
        let text = "<|tool_call_start|>[f(a=1) g(b=2)]<|tool_call_end|>Hi.";
        let (segments, calls) = parse_with(LFM2, &[], text);
        let mut expected = call("f", "{\"a\": 1}");
        expected.push(Segment::Text("Hi.".into()));
        assert_eq!((segments, calls), (expected, 1));
        let (segments, _) = parse_with(
            LFM2,
            &[],
            "<|tool_call_start|>[f(a=1, 'x')]<|tool_call_end|>",
        );
        assert_eq!(segments, call("f", "{\"a\": 1}"));
        // Markdown with no marker is text.
        let text = "Use [link text](url), e.g. [Wikipedia](https://www.wikipedia.org).";
        assert_eq!(parse_with(LFM2, &[], text).0, [Segment::Text(text.into())]);
    }

    #[test]
    fn the_templates_are_detected() {
        for name in ["lfm2-8b-a1b", "lfm2.5-8b-a1b"] {
            let template =
                std::fs::read_to_string(fixtures().join(format!("{name}.jinja"))).unwrap();
            assert_eq!(
                ToolFormat::detect(&template),
                Some(ToolFormat::LFM2),
                "{name}"
            );
        }
        // LFM2.5-Instruct's (llama.cpp's models/templates/LFM2.5-Instruct.jinja) shows
        // neither marker, only the plain tool list.
        let instruct = r#"{%- set ns.system_prompt = ns.system_prompt + ("\n" if ns.system_prompt else "") + "List of tools: [" -%}"#;
        assert_eq!(ToolFormat::detect(instruct), Some(ToolFormat::LFM2));
        assert_eq!(ToolFormat::from_name("lfm2"), Some(ToolFormat::LFM2));
    }

    /// Every assistant turn LFM2.5's template renders (by Python's jinja2) reads back as
    /// the reasoning, text and calls it was given: strings written back unescaped
    /// (`'it's'`, raw line breaks), lists and `True` as Python writes them, dicts as JSON.
    #[test]
    fn the_templates_own_turns_read_back() {
        let cases: Value =
            serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
                .unwrap();
        let mut checked = 0;
        for case in cases["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let path = fixtures().join(format!("expected/lfm2.5-8b-a1b/{name}.txt"));
            let Ok(render) = std::fs::read_to_string(&path) else {
                continue;
            };
            let turns: Vec<&Value> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["role"] == "assistant" && m["tool_calls"].is_array())
                .collect();
            let written: Vec<&str> = render
                .split("<|im_start|>assistant\n")
                .skip(1)
                .filter_map(|t| t.split_once("<|im_end|>").map(|(turn, _)| turn))
                .filter(|t| t.contains("<|tool_call_start|>"))
                .collect();
            assert_eq!(written.len(), turns.len(), "{name}");
            for (text, turn) in written.into_iter().zip(turns) {
                let (segments, _) = parse_with(LFM2, &[], text);
                let mut expected = Vec::new();
                // Reasoning before the last user turn is not rendered.
                if text.starts_with("<think>") {
                    expected.push(Segment::Thinking(
                        turn["reasoning"].as_str().unwrap().into(),
                    ));
                }
                if let Some(content) = turn["content"].as_str().filter(|c| !c.is_empty()) {
                    expected.push(Segment::Text(content.into()));
                }
                let got: Vec<Segment> = segments.iter().take(expected.len()).cloned().collect();
                assert_eq!(got, expected, "{name}: {text}");
                let calls: Vec<(String, Value)> = turn["tool_calls"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| {
                        (
                            c["name"].as_str().unwrap().to_owned(),
                            c["arguments"].clone(),
                        )
                    })
                    .collect();
                assert_eq!(calls_in(&segments), calls, "{name}: {text}");
                checked += 1;
            }
        }
        assert!(checked >= 6, "{checked} turns");
    }

    fn weather() -> ToolSpec {
        tool(
            "get_weather",
            json!({
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "unit": {"type": "string", "enum": ["c", "it's"]},
                    "where": {"type": "object", "properties": {"lat": {"type": "number"}, "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["lat"]},
                    "exact": {"type": ["boolean", "null"]}
                },
                "required": ["city", "days"]
            }),
        )
    }

    /// The model's own calls: the forced grammar lets them through whole and then only
    /// the end of the turn, and the parser reads back what the model meant.
    #[test]
    fn a_forced_call_is_the_models_own() {
        let forced = || {
            grammars()
                .forced_call(ToolFormat::LFM2, &[weather()], None)
                .unwrap()
        };
        let own = [
            ("<|tool_call_start|>[get_weather(city='Oslo', days=2)]<|tool_call_end|>",
             json!({"city": "Oslo", "days": 2})),
            ("<|tool_call_start|>[get_weather(city=\"it's \\\"x\\\"\\n\", days=-3, unit='it\\'s', where={'lat': 1.5, 'tags': ['a', \"b\"]}, exact=None)]<|tool_call_end|>",
             json!({"city": "it's \"x\"\n", "days": -3, "unit": "it's", "where": {"lat": 1.5, "tags": ["a", "b"]}, "exact": null})),
            // As LFM2.5's template writes strings and dicts back.
            ("<|tool_call_start|>[get_weather(city='sed -n '1,9p' a.py\nnext', days=0, unit=\"it's\", where={\"lat\": -0.25}, exact=true)]<|tool_call_end|>",
             json!({"city": "sed -n '1,9p' a.py\nnext", "days": 0, "unit": "it's", "where": {"lat": -0.25}, "exact": true})),
        ];
        for (text, args) in own {
            let mut c = forced();
            assert!(takes(&mut c, text), "{text}");
            assert!(c.is_complete(), "{text}");
            let end = crate::testing::EOG;
            assert!(c
                .mask()
                .is_some_and(|m| TokenMask(m.as_slice()).allows(end)));
            let (segments, calls) = parse_with(LFM2, &[weather()], text);
            assert_eq!(
                calls_in(&segments),
                [("get_weather".to_owned(), args)],
                "{text}"
            );
            assert_eq!(calls, 1);
        }
        let head = "<|tool_call_start|>[get_weather(";
        for wrong in [
            "Sure!".to_owned(),
            // A required key left out, text for an integer, a key not in the schema, a
            // value out of the enum, a word after a fixed value.
            format!("{head}days=2"),
            format!("{head}city='Oslo', days='2'"),
            format!("{head}city='Oslo', days=2, town="),
            format!("{head}city='Oslo', days=2, unit='f'"),
            format!("{head}city='Oslo', days=2, unit='c'x"),
            // An integer longer than an i64, the closing token inside a string.
            format!("{head}city='Oslo', days=1234567890123456789"),
            format!("{head}city='Oslo<|tool_call_end|>"),
            // A second call.
            format!("{head}city='Oslo', days=2), get_weather("),
        ] {
            assert!(!takes(&mut forced(), &wrong), "{wrong}");
        }
    }

    /// Under `auto`, parallel calls are more items in the list; without, one.
    #[test]
    fn a_lazy_call_holds_more_calls_when_parallel() {
        let one = "get_weather(city='Oslo', days=2)";
        for parallel in [true, false] {
            let lazy = grammars()
                .call_body(ToolFormat::LFM2, &[weather()], parallel)
                .unwrap();
            let mut c = lazy.after_marker(super::SYNTAX.open.as_bytes()).unwrap();
            assert_eq!(
                takes(&mut c, &format!("[{one}, {one}]<|tool_call_end|>")),
                parallel
            );
            let mut c = lazy.after_marker(super::SYNTAX.open.as_bytes()).unwrap();
            assert!(takes(&mut c, &format!("[{one}]<|tool_call_end|>")));
            assert!(c.is_complete());
        }
    }

    /// Drives the forced grammar of Claude Code's `tool` as a "model" would: it writes
    /// `inside` into the first string it opens, then closes what is open (a string with
    /// its quote and a follower, the rest with the first thing allowed).
    fn drive(grammars: &Grammars, tools: &[ToolSpec], tool: &str, inside: &str) -> String {
        let mut c = grammars
            .forced_call(ToolFormat::LFM2, tools, Some(tool))
            .unwrap();
        let mut inside = ByteTokenizer.encode(inside).into_iter().peekable();
        // The quote of the string it is in, and whether its last byte was that quote.
        let (mut quote, mut closing) = (None, false);
        let mut out = Vec::new();
        for _ in 0..4000 {
            let mask = c.mask().expect("the grammar holds");
            let m = TokenMask(mask.as_slice());
            let order = match quote {
                Some(_) if closing => ",)]}1",
                Some(b'"') => "\"",
                Some(_) => "'",
                None => "'\")]},1",
            };
            let wanted = inside
                .peek()
                .copied()
                .filter(|t| quote.is_some() && m.allows(*t));
            if wanted.is_some() {
                inside.next();
            }
            let token = wanted
                .into_iter()
                .chain(ByteTokenizer.encode(order))
                .chain(0..257)
                .find(|t| m.allows(*t))
                .expect("something is allowed");
            if ByteTokenizer.is_end_of_generation(token) {
                return String::from_utf8(out).unwrap();
            }
            c.accept(token);
            let byte = ByteTokenizer.token_bytes(token)[0];
            match quote {
                None if byte == b'\'' || byte == b'"' => quote = Some(byte),
                Some(_) if closing && b",)]}:".contains(&byte) => {
                    // Once it closes its first string, it writes no more.
                    quote = None;
                    inside = Vec::new().into_iter().peekable();
                }
                _ => {}
            }
            closing = quote.is_some() && quote == Some(byte) && !closing;
            out.push(byte);
        }
        panic!("no end: {}", String::from_utf8_lossy(&out));
    }

    /// What the forced grammar of each of Claude Code's tools lets a model write, the
    /// parser reads back as one call of it, its first string as the model meant it.
    #[test]
    fn grammar_output_parses_back() {
        let tools = crate::testing::claude_code_tools();
        let grammars = grammars();
        let inside = "it's 'x' \"q\" \\n(a) [b] {c}, d: e'f";
        for tool in &tools {
            let text = drive(&grammars, &tools, &tool.name, inside);
            assert!(text.ends_with("<|tool_call_end|>"), "{}: {text}", tool.name);
            let (segments, calls) = parse_with(LFM2, &tools, &text);
            let got = calls_in(&segments);
            assert_eq!(
                (got.len(), calls, segments.len()),
                (1, 1, 3),
                "{text}: {segments:?}"
            );
            assert_eq!(got[0].0, tool.name);
            assert!(got[0].1.is_object(), "{text}");
            if text.contains("it's") {
                let args = got[0].1.to_string();
                assert!(
                    args.contains(r#"it's 'x' \"q\" \n(a) [b] {c}, d: e'f"#),
                    "{text}: {args}"
                );
            }
        }
    }
}
