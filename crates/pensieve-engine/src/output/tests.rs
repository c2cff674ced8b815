//! The output parser over whole outputs, fed in every way a stream can split them.

use super::*;

const HERMES: OutputFormat = OutputFormat {
    model: None,
    tools: Some(ToolFormat::HERMES),
    reasoning: true,
    starts_thinking: false,
    hide_reasoning: false,
};

/// Segments of `text` fed in pieces of `size` characters, merged (adjacent text,
/// thinking and argument fragments joined) so splits can be compared.
pub(crate) fn parse_in(format: OutputFormat, text: &str, size: usize) -> (Vec<Segment>, usize) {
    let mut p = OutputParser::new(format);
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    for piece in chars.chunks(size.max(1)) {
        out.extend(p.push(&piece.iter().collect::<String>()));
    }
    out.extend(p.finish());
    (merge(out), p.calls())
}

pub(crate) fn merge(segments: Vec<Segment>) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    for s in segments {
        match (out.last_mut(), s) {
            (Some(Segment::Text(a)), Segment::Text(b)) => a.push_str(&b),
            (Some(Segment::Thinking(a)), Segment::Thinking(b)) => a.push_str(&b),
            (Some(Segment::CallArguments(a)), Segment::CallArguments(b)) => a.push_str(&b),
            (_, s) => out.push(s),
        }
    }
    out
}

/// As [`parse`], for a request offering `tools` (whose schemas type raw values).
pub(crate) fn parse_with(
    format: OutputFormat,
    tools: &[ToolSpec],
    text: &str,
) -> (Vec<Segment>, usize) {
    let run = |size: usize| {
        let mut p = OutputParser::new(format).with_tools(tools);
        let mut out = Vec::new();
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(size.max(1)) {
            out.extend(p.push(&piece.iter().collect::<String>()));
        }
        out.extend(p.finish());
        (merge(out), p.calls())
    };
    let whole = run(usize::MAX);
    for size in [1, 2, 3, 5, 7, 13] {
        assert_eq!(run(size), whole, "split every {size} chars");
    }
    whole
}

/// The same segments however the text is split.
pub(crate) fn parse(format: OutputFormat, text: &str) -> (Vec<Segment>, usize) {
    let whole = parse_in(format, text, usize::MAX);
    for size in [1, 2, 3, 5, 7, 13] {
        assert_eq!(
            parse_in(format, text, size),
            whole,
            "split every {size} chars"
        );
    }
    whole
}

pub(crate) fn call(name: &str, args: &str) -> Vec<Segment> {
    vec![
        Segment::CallStart { name: name.into() },
        Segment::CallArguments(args.into()),
        Segment::CallEnd,
    ]
}

// The Hermes format, as Qwen2.5's chat template asks for it.
const QWEN_CALL: &str =
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";

#[test]
fn whitespace_waits_only_where_a_block_can_follow_it() {
    let plain = OutputFormat {
        model: None,
        tools: None,
        reasoning: false,
        starts_thinking: false,
        hide_reasoning: false,
    };
    // Nothing can follow but text: a paragraph break streams with its token.
    let mut p = OutputParser::new(plain);
    assert_eq!(p.push("  Hello"), vec![Segment::Text("Hello".into())]);
    assert_eq!(p.push("\n\n"), vec![Segment::Text("\n\n".into())]);
    assert_eq!(p.push("World"), vec![Segment::Text("World".into())]);
    assert!(p.finish().is_empty());
    // Whitespace alone is still no block.
    assert_eq!(parse(plain, " \n "), (vec![], 0));
    // A call may follow: the break waits, and is dropped before the call.
    let mut p = OutputParser::new(HERMES);
    assert_eq!(p.push("Hello"), vec![Segment::Text("Hello".into())]);
    assert!(p.push("\n\n").is_empty());
    assert_eq!(p.push("World"), vec![Segment::Text("\n\nWorld".into())]);
}

#[test]
fn a_hermes_call_becomes_a_call() {
    let (segments, calls) = parse(HERMES, QWEN_CALL);
    assert_eq!(segments, call("get_weather", "{\"city\": \"Paris\"}"));
    assert_eq!(calls, 1);
}

#[test]
fn text_before_and_two_calls() {
    let text = format!(
        "I'll look both up.\n{QWEN_CALL}\n<tool_call>\n{{\"name\": \"get_time\", \"arguments\": {{\"zone\": \"CET\", \"fmt\": [\"h\", \"m\"]}}}}\n</tool_call>"
    );
    let (segments, calls) = parse(HERMES, &text);
    let mut expected = vec![Segment::Text("I'll look both up.".into())];
    expected.extend(call("get_weather", "{\"city\": \"Paris\"}"));
    expected.extend(call(
        "get_time",
        "{\"zone\": \"CET\", \"fmt\": [\"h\", \"m\"]}",
    ));
    assert_eq!(segments, expected);
    assert_eq!(calls, 2);
}

#[test]
fn arguments_stream_before_the_call_ends() {
    let mut p = OutputParser::new(HERMES);
    let out = p.push("<tool_call>\n{\"name\": \"write\", \"arguments\": {\"path\": \"a.txt\", ");
    assert_eq!(
        out,
        vec![
            Segment::CallStart {
                name: "write".into()
            },
            Segment::CallArguments("{\"path\": \"a.txt\", ".into())
        ]
    );
    let out = p.push("\"text\": \"</tool_call> is fine in a string\"}}");
    assert_eq!(
        out,
        vec![Segment::CallArguments(
            "\"text\": \"</tool_call> is fine in a string\"}".into()
        )]
    );
    assert_eq!(p.push("\n</tool_call>"), vec![Segment::CallEnd]);
}

#[test]
fn markers_never_leak_into_text() {
    let (segments, _) = parse(HERMES, &format!("Sure.{QWEN_CALL}"));
    for s in &segments {
        if let Segment::Text(t) = s {
            assert!(!t.contains('<'), "{t:?}");
        }
    }
    // Something that only looks like the start of a marker is text after all.
    let (segments, calls) = parse(HERMES, "a <tool and <b> and <tool_cal");
    assert_eq!(
        segments,
        vec![Segment::Text("a <tool and <b> and <tool_cal".into())]
    );
    assert_eq!(calls, 0);
}

#[test]
fn a_call_cut_off_is_closed_so_it_parses() {
    let cut =
        "<tool_call>\n{\"name\": \"write\", \"arguments\": {\"path\": \"a.txt\", \"text\": \"hel";
    let (segments, calls) = parse(HERMES, cut);
    assert_eq!(calls, 0, "a cut-off call is not a complete call");
    let Segment::CallArguments(args) = &segments[1] else {
        panic!("{segments:?}");
    };
    let value: serde_json::Value = serde_json::from_str(args).unwrap();
    assert_eq!(value["text"], "hel");
    assert_eq!(segments.last(), Some(&Segment::CallEnd));
}

#[test]
fn a_call_cut_off_before_its_name_emits_nothing() {
    let (segments, calls) = parse(HERMES, "Let me check.\n<tool_call>\n{\"na");
    assert_eq!(segments, vec![Segment::Text("Let me check.".into())]);
    assert_eq!(calls, 0);
}

#[test]
fn other_key_orders_and_string_arguments_are_parsed_whole() {
    let text = "<tool_call>{\"arguments\": {\"q\": 1}, \"name\": \"search\"}</tool_call>";
    assert_eq!(parse(HERMES, text).0, call("search", "{\"q\":1}"));
    let text = "<tool_call>{\"name\": \"search\", \"arguments\": \"{\\\"q\\\": 1}\"}</tool_call>";
    assert_eq!(parse(HERMES, text).0, call("search", "{\"q\":1}"));
}

#[test]
fn a_call_that_is_not_json_is_returned_as_text() {
    let text = "<tool_call>search for cats</tool_call>";
    let (segments, calls) = parse(HERMES, text);
    assert_eq!(segments, vec![Segment::Text(text.into())]);
    assert_eq!(calls, 0);
}

#[test]
fn a_call_without_a_name_is_returned_as_text() {
    // Found by the tool_calls fuzz target: a call named "" streamed as a call.
    let text = "<tool_call>\n{\"name\": \"\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    let (segments, calls) = parse(HERMES, text);
    assert_eq!(segments, vec![Segment::Text(text.into())]);
    assert_eq!(calls, 0);
    // Cut off: nothing.
    let (segments, calls) = parse(
        HERMES,
        "<tool_call>\n{\"name\": \"\", \"arguments\": {\"city\": \"Par",
    );
    assert!(segments.is_empty(), "{segments:?}");
    assert_eq!(calls, 0);
}

#[test]
fn a_missing_closing_marker_still_ends_the_call() {
    let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n";
    let (segments, calls) = parse(HERMES, text);
    assert_eq!(segments, call("get_weather", "{\"city\": \"Paris\"}"));
    assert_eq!(calls, 1);
}

#[test]
fn thinking_is_its_own_segment() {
    let text = "<think>\nThe user wants the weather.\n</think>\n\nChecking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>";
    let (segments, _) = parse(HERMES, text);
    let mut expected = vec![
        Segment::Thinking("\nThe user wants the weather.\n".into()),
        Segment::Text("Checking.".into()),
    ];
    expected.extend(call("get_weather", "{}"));
    assert_eq!(segments, expected);
    // A template that opens the block in the prompt: output starts inside it.
    let format = OutputFormat {
        starts_thinking: true,
        ..HERMES
    };
    let (segments, _) = parse(format, "plan</think>answer");
    assert_eq!(
        segments,
        vec![
            Segment::Thinking("plan".into()),
            Segment::Text("answer".into())
        ]
    );
}

#[test]
fn without_tools_markers_are_text() {
    let format = OutputFormat::default();
    let (segments, calls) = parse(format, QWEN_CALL);
    assert_eq!(segments, vec![Segment::Text(QWEN_CALL.into())]);
    assert_eq!(calls, 0);
}

#[test]
fn the_format_comes_from_the_template() {
    assert_eq!(
        ToolFormat::detect("...<tool_call>\\n{\"name\": ...</tool_call>..."),
        Some(ToolFormat::HERMES)
    );
    assert_eq!(ToolFormat::detect("{{ messages }}"), None);
    assert_eq!(ToolFormat::from_name("hermes"), Some(ToolFormat::HERMES));
    assert_eq!(ToolFormat::from_name("nope"), None);
}

// Qwen2.5-Coder-0.5B-Instruct's own greedy answer to "What is the weather in Paris right
// now?" with a get_weather tool: the object, without the tags its template asks for.
const QWEN_BARE: &str = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}";

#[test]
fn a_call_without_its_tags_is_still_a_call() {
    let (segments, calls) = parse(HERMES, QWEN_BARE);
    assert_eq!(segments, call("get_weather", "{\"city\": \"Paris\"}"));
    assert_eq!(calls, 1);
    let (segments, calls) = parse(HERMES, &format!("\n{QWEN_BARE}\n{QWEN_BARE}"));
    assert_eq!(segments.len(), 6, "{segments:?}");
    assert_eq!(calls, 2);
}

#[test]
fn json_that_is_not_a_call_stays_text() {
    for text in [
        "{\"name\": \"Ada\", \"born\": 1815}",
        "{\"age\": 3}",
        "Here: {\"name\": \"x\", \"arguments\": {}}",
    ] {
        let (segments, calls) = parse(HERMES, text);
        assert_eq!(segments, vec![Segment::Text(text.into())], "{text}");
        assert_eq!(calls, 0);
    }
}

#[test]
fn a_bare_call_in_a_code_fence_is_a_call() {
    let text = format!("```json\n{QWEN_BARE}\n```");
    let (segments, calls) = parse(HERMES, &text);
    assert_eq!(segments, call("get_weather", "{\"city\": \"Paris\"}"));
    assert_eq!(calls, 1);
    // A fenced object that is no call stays text, fence and all.
    let text = "```json\n{\"name\": \"Ada\", \"born\": 1815}\n```";
    assert_eq!(parse(HERMES, text).0, vec![Segment::Text(text.into())]);
}

#[test]
fn without_its_marker_an_object_must_name_an_offered_tool() {
    let parse_with = |text: &str| {
        let tool = ToolSpec {
            name: "get_weather".into(),
            description: None,
            parameters: serde_json::json!({"type": "object"}),
        };
        let mut p = OutputParser::new(HERMES).with_tools(&[tool]);
        let mut out = p.push(text);
        out.extend(p.finish());
        (merge(out), p.calls())
    };
    assert_eq!(parse_with(QWEN_BARE).1, 1);
    let other = "{\"name\": \"helloworld\", \"arguments\": {}}";
    assert_eq!(parse_with(other), (vec![Segment::Text(other.into())], 0));
    // With its marker, the model meant a call: it is one, whatever it names.
    let tagged = "<tool_call>\n{\"name\": \"helloworld\", \"arguments\": {}}\n</tool_call>";
    assert_eq!(parse_with(tagged).1, 1);
    assert_eq!(
        bare_call_name("\n{\n  \"name\": \"get_wea"),
        BareName::Pending
    );
    assert_eq!(
        bare_call_name("{\"name\": \"get_weather\", \"argu"),
        BareName::Named("get_weather".into())
    );
    assert_eq!(bare_call_name("{\"age\": 3"), BareName::NotACall);
}

#[test]
fn a_pretty_printed_call_is_a_call() {
    // Qwen2.5-Coder-0.5B's answer to Claude Code's "Say hello" (with its ~20 tools).
    let text = "```json\n{\n  \"name\": \"helloworld\",\n  \"arguments\": {}\n}\n```";
    let (segments, calls) = parse(HERMES, text);
    assert_eq!(segments, call("helloworld", "{}"));
    assert_eq!(calls, 1);
}
