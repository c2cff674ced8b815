//! The tool-call formats of the model families people run locally, each as the model
//! writes it (from each family's chat template and model card), split every way a
//! stream can split it, and cut off at every point.

use super::tests::{call, parse, parse_in};
use super::*;

fn format(tools: ToolFormat) -> OutputFormat {
    OutputFormat {
        model: None,
        tools: Some(tools),
        reasoning: false,
        starts_thinking: false,
        hide_reasoning: false,
    }
}

/// Cut `text` after every character: whatever was streamed of a call must close into
/// arguments that parse, and no marker may reach the text.
pub(crate) fn every_cut_parses(tools: ToolFormat, text: &str) {
    let chars: Vec<char> = text.chars().collect();
    for cut in 0..=chars.len() {
        let prefix: String = chars[..cut].iter().collect();
        let (segments, _) = parse_in(format(tools), &prefix, 3);
        for s in &segments {
            match s {
                Segment::CallArguments(args) => {
                    serde_json::from_str::<serde_json::Value>(args)
                        .unwrap_or_else(|e| panic!("{prefix:?}: {args:?}: {e}"));
                }
                Segment::Text(t) => {
                    for m in tools.markers().iter().chain(&[THINK_OPEN, THINK_CLOSE]) {
                        assert!(!t.contains(m), "{prefix:?} leaked {m}: {segments:?}");
                    }
                }
                _ => {}
            }
        }
    }
}

// Llama 3.1 / 3.2: the JSON its template asks for ("parameters"), alone in the turn.
const LLAMA_CALL: &str = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}";

#[test]
fn llama3_json_calls() {
    let f = format(ToolFormat::LLAMA3_JSON);
    assert_eq!(
        parse(f, LLAMA_CALL).0,
        call("get_weather", "{\"city\": \"Paris\"}")
    );
    // After the python tag, and several separated by `;`.
    let text = format!(
        "<|python_tag|>{LLAMA_CALL}; {{\"name\": \"get_time\", \"parameters\": {{\"tz\": \"CET\"}}}}"
    );
    let (segments, calls) = parse(f, &text);
    let mut expected = call("get_weather", "{\"city\": \"Paris\"}");
    expected.extend(call("get_time", "{\"tz\": \"CET\"}"));
    assert_eq!(segments, expected);
    assert_eq!(calls, 2);
    // An answer is text.
    let (segments, calls) = parse(f, "It is sunny in Paris.");
    assert_eq!(
        segments,
        vec![Segment::Text("It is sunny in Paris.".into())]
    );
    assert_eq!(calls, 0);
    every_cut_parses(ToolFormat::LLAMA3_JSON, &text);
}

// Mistral Small 3.2 / Devstral (tokenizer v11+): `[TOOL_CALLS]name[ARGS]{...}` per call.
const MISTRAL_CALLS_V11: &str =
    "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]get_time[ARGS]{\"tz\": \"CET\"}";

#[test]
fn mistral_name_and_args_calls() {
    let f = format(ToolFormat::MISTRAL);
    let (segments, calls) = parse(f, MISTRAL_CALLS_V11);
    let mut expected = call("get_weather", "{\"city\": \"Paris\"}");
    expected.extend(call("get_time", "{\"tz\": \"CET\"}"));
    assert_eq!(segments, expected);
    assert_eq!(calls, 2);
    // Text first, and a call id between the name and the arguments.
    let text = "Checking.[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{\"city\": \"Paris\"}";
    let (segments, _) = parse(f, text);
    let mut expected = vec![Segment::Text("Checking.".into())];
    expected.extend(call("get_weather", "{\"city\": \"Paris\"}"));
    assert_eq!(segments, expected);
    every_cut_parses(ToolFormat::MISTRAL, MISTRAL_CALLS_V11);
}

/// A Gemma array with a trailing comma ends the call there, closed as JSON, not written as
/// `[1,]` (the `tool_calls` fuzz target found it).
#[test]
fn gemma_arrays_with_a_trailing_comma_still_make_json() {
    let f = format(ToolFormat::FUNCTIONGEMMA);
    let text = "<start_function_call>call:get_weather{days:[1,]}<end_function_call>";
    let (segments, _) = parse(f, text);
    let args: String = segments
        .iter()
        .filter_map(|s| match s {
            Segment::CallArguments(a) => Some(a.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(args, "{\"days\":[1,null]}");
}

/// Arguments that are no object make a call without arguments, not a call whose arguments
/// are a number (the `tool_calls` fuzz target found `[ARGS]6`).
#[test]
fn mistral_arguments_that_are_no_object_are_none() {
    let f = format(ToolFormat::MISTRAL);
    let (segments, _) = parse(f, "[TOOL_CALLS]get_weather[ARGS]6 and more");
    let mut expected = call("get_weather", "{}");
    expected.push(Segment::Text("6 and more".into()));
    assert_eq!(segments, expected);
}

// Mistral 7B v0.3 / Nemo: a JSON array after `[TOOL_CALLS]` (Nemo adds an "id").
const MISTRAL_ARRAY: &str = "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}, \"id\": \"a1b2c3d4e\"}, {\"name\": \"get_time\", \"arguments\": {\"tz\": \"CET\"}}]";

#[test]
fn mistral_json_array_calls() {
    for tools in [ToolFormat::MISTRAL_JSON, ToolFormat::MISTRAL] {
        let (segments, calls) = parse(format(tools), MISTRAL_ARRAY);
        let mut expected = call("get_weather", "{\"city\": \"Paris\"}");
        expected.extend(call("get_time", "{\"tz\": \"CET\"}"));
        assert_eq!(segments, expected, "{tools:?}");
        assert_eq!(calls, 2);
    }
    every_cut_parses(ToolFormat::MISTRAL_JSON, MISTRAL_ARRAY);
}

#[test]
fn mistral_output_that_is_no_call_is_text() {
    let f = format(ToolFormat::MISTRAL);
    let text = "[TOOL_CALLS]what is this? not a name";
    let (segments, calls) = parse(f, text);
    assert_eq!(merge_text(segments), text);
    assert_eq!(calls, 0);
}

// FunctionGemma: its call syntax, strings between `<escape>` tokens.
const GEMMA_CALL: &str = "<start_function_call>call:get_current_temperature{location:<escape>Paris, \"FR\"<escape>,unit:<escape>celsius<escape>}<end_function_call>";

#[test]
fn functiongemma_calls() {
    let f = format(ToolFormat::FUNCTIONGEMMA);
    assert_eq!(
        parse(f, GEMMA_CALL).0,
        call(
            "get_current_temperature",
            "{\"location\":\"Paris, \\\"FR\\\"\",\"unit\":\"celsius\"}"
        )
    );
    // Parallel calls; numbers, booleans, arrays, nested objects, braces in strings.
    let text = "<start_function_call>call:a{}<end_function_call><start_function_call>call:b{n:-2.5,ok:true,none:null,tags:[<escape>x<escape>,<escape>y}<escape>],opt:{deep:<escape>{z}<escape>,k:3},word:celsius}<end_function_call>";
    let (segments, calls) = parse(f, text);
    let mut expected = call("a", "{}");
    expected.extend(call(
        "b",
        "{\"n\":-2.5,\"ok\":true,\"none\":null,\"tags\":[\"x\",\"y}\"],\"opt\":{\"deep\":\"{z}\",\"k\":3},\"word\":\"celsius\"}",
    ));
    assert_eq!(segments, expected);
    assert_eq!(calls, 2);
    every_cut_parses(ToolFormat::FUNCTIONGEMMA, text);
    every_cut_parses(ToolFormat::FUNCTIONGEMMA, GEMMA_CALL);
}

#[test]
fn functiongemma_text_around_calls() {
    let f = format(ToolFormat::FUNCTIONGEMMA);
    let text = format!("Let me check.{GEMMA_CALL}");
    let (segments, _) = parse(f, &text);
    assert_eq!(segments[0], Segment::Text("Let me check.".into()));
    assert_eq!(segments.len(), 4);
    // After the marker, something that is no call comes back as text.
    let text = "<start_function_call>I cannot do that.";
    let (segments, calls) = parse(f, text);
    assert_eq!(merge_text(segments), text);
    assert_eq!(calls, 0);
}

#[test]
fn each_family_is_found_in_its_template() {
    let cases = [
        ("{%- for t in tools %}<tool_call>{{ t }}</tool_call>", ToolFormat::HERMES),
        (
            "{{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}",
            ToolFormat::LLAMA3_JSON,
        ),
        ("{{- '<|python_tag|>' + tool_call.name + '.call(' }}", ToolFormat::LLAMA3_JSON),
        ("{{- '[TOOL_CALLS]' + name + '[ARGS]' + arguments }}", ToolFormat::MISTRAL),
        ("{{- '[TOOL_CALLS] [' + calls|tojson + ']' }}", ToolFormat::MISTRAL_JSON),
        ("{{- '<start_function_call>call:' + name }}", ToolFormat::FUNCTIONGEMMA),
    ];
    for (template, expected) in cases {
        assert_eq!(ToolFormat::detect(template), Some(expected), "{template}");
    }
    for name in ToolFormat::names() {
        assert!(ToolFormat::from_name(name).is_some(), "{name}");
    }
}

fn merge_text(segments: Vec<Segment>) -> String {
    segments
        .into_iter()
        .map(|s| match s {
            Segment::Text(t) => t,
            other => panic!("not text: {other:?}"),
        })
        .collect()
}
