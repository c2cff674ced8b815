//! Model output through the streaming output parser of every tool-call format: the first
//! byte picks the format, the second the parser's switches, and the rest is the text, cut
//! into the chunks it streams in at each 0xFF byte (never part of UTF-8). The parser must
//! not panic, must emit calls well nested, and each call's argument fragments must make
//! one JSON object, as the engine's events promise.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pensieve_engine::output::{OutputParser, Segment};
use pensieve_engine::{OutputFormat, ToolFormat, ToolSpec};

fn tools() -> Vec<ToolSpec> {
    let tool = |name: &str, parameters: serde_json::Value| ToolSpec {
        name: name.into(),
        description: None,
        parameters,
    };
    vec![
        tool(
            "get_weather",
            serde_json::json!({"type": "object", "properties": {
                "city": {"type": "string"}, "days": {"type": "integer"},
                "metric": {"type": "boolean"}, "tags": {"type": "array"}}}),
        ),
        tool(
            "Bash",
            serde_json::json!({"type": "object", "properties": {
                "command": {"type": "string"}, "timeout": {"type": "number"}}}),
        ),
    ]
}

/// Checks the segments of a whole output: calls nest, their arguments parse.
struct Calls {
    in_call: bool,
    arguments: String,
}

impl Calls {
    fn push(&mut self, segment: &Segment) {
        match segment {
            Segment::CallStart { name } => {
                assert!(!self.in_call, "a call started inside a call");
                assert!(!name.is_empty(), "a call without a name");
                self.in_call = true;
                self.arguments.clear();
            }
            Segment::CallArguments(a) => {
                assert!(self.in_call, "arguments outside a call: {a:?}");
                self.arguments.push_str(a);
            }
            Segment::CallEnd => {
                assert!(self.in_call, "a call ended that never started");
                self.in_call = false;
                // No fragments at all reads as `{}` downstream.
                if !self.arguments.is_empty() {
                    let parsed = serde_json::from_str::<serde_json::Value>(&self.arguments);
                    // serde_json stops at 128 levels: deeper JSON is still JSON.
                    let too_deep =
                        matches!(&parsed, Err(e) if e.to_string().contains("recursion limit"));
                    assert!(
                        too_deep || matches!(parsed, Ok(serde_json::Value::Object(_))),
                        "arguments are not a JSON object: {:?}",
                        self.arguments
                    );
                }
            }
            Segment::Text(_) | Segment::Thinking(_) => {
                assert!(!self.in_call, "text inside a call: {segment:?}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [which, flags, text @ ..] = data else {
        return;
    };
    let formats: Vec<ToolFormat> = ToolFormat::all().collect();
    let format = formats[usize::from(*which) % formats.len()];
    let offered = flags & 1 != 0;
    let output = OutputFormat {
        tools: offered.then_some(format),
        model: Some(format),
        reasoning: flags & 2 != 0,
        starts_thinking: flags & 4 != 0,
        hide_reasoning: flags & 8 != 0,
    };
    let mut parser = OutputParser::new(output);
    if flags & 16 != 0 {
        parser = parser.with_tools(&tools());
    }
    let mut calls = Calls {
        in_call: false,
        arguments: String::new(),
    };
    for chunk in text.split(|b| *b == 0xFF) {
        for segment in parser.push(&String::from_utf8_lossy(chunk)) {
            calls.push(&segment);
        }
    }
    for segment in parser.finish() {
        calls.push(&segment);
    }
    assert!(!calls.in_call, "the output ended inside a call");
});
