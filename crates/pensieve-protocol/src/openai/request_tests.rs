//! Chat Completions requests into the neutral request.

use super::*;
use serde_json::json;

fn parse(body: Value) -> Result<GenerateRequest, OpenAiError> {
    parse_chat(body.to_string().as_bytes())?.into_generate()
}

#[test]
fn roles_content_parts_and_tool_turns() {
    let r = parse(json!({
        "model": "m",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"}
        ],
        "max_completion_tokens": 7, "stop": "END", "seed": 3, "temperature": 0
    }))
    .unwrap();
    assert_eq!(r.messages[0].role, Role::System);
    assert_eq!(r.messages[1].content, "a\n\nb");
    assert_eq!(r.messages[2].tool_calls[0].arguments, json!({"x": 1}));
    assert_eq!(r.messages[3].role, Role::Tool);
    assert_eq!(r.messages[3].name.as_deref(), Some("f"));
    assert_eq!(r.messages[3].tool_call_id.as_deref(), Some("call_1"));
    assert_eq!(r.max_tokens, 7);
    assert_eq!(r.stop_sequences, vec!["END".to_owned()]);
    assert_eq!(r.sampling.seed, Some(3));
    assert!(r.sampling.is_greedy());
}

#[test]
fn the_servers_sampling_fills_only_what_the_request_leaves_out() {
    let defaults = SamplingDefaults {
        temperature: Some(0.0),
        top_p: Some(0.8),
        top_k: Some(20),
        min_p: None,
        seed: Some(9),
    };
    let into = |body: Value| {
        parse_chat(body.to_string().as_bytes())
            .unwrap()
            .into_generate_with(&defaults)
            .unwrap()
            .sampling
    };
    let s = into(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(
        (s.temperature, s.top_p, s.top_k, s.seed),
        (0.0, Some(0.8), Some(20), Some(9))
    );
    // A client's top_p of 1 means no nucleus filter, whatever the server's default.
    let s = into(
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                        "temperature": 0.7, "top_p": 1, "seed": -1}),
    );
    assert_eq!(
        (s.temperature, s.top_p, s.seed),
        (0.7, None, Some(u64::MAX))
    );
}

#[test]
fn tools_choices_and_response_formats() {
    let base = json!({
        "model": "m", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    });
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        parse(b)
    };
    assert_eq!(
        with("tool_choice", json!("required")).unwrap().tool_choice,
        ToolChoice::Required
    );
    assert_eq!(
        with("tool_choice", json!("none")).unwrap().tool_choice,
        ToolChoice::None
    );
    assert_eq!(
        with(
            "tool_choice",
            json!({"type": "function", "function": {"name": "f"}})
        )
        .unwrap()
        .tool_choice,
        ToolChoice::Named("f".into())
    );
    assert!(with("tool_choice", json!("sometimes")).is_err());
    assert!(
        !with("parallel_tool_calls", json!(false))
            .unwrap()
            .parallel_tool_calls
    );
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    let r = with(
        "response_format",
        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}),
    )
    .unwrap();
    assert_eq!(r.output_schema, Some(schema));
    let r = with("response_format", json!({"type": "json_object"})).unwrap();
    assert_eq!(r.output_schema, Some(json!({"type": "object"})));
    assert_eq!(
        with("response_format", json!({"type": "text"}))
            .unwrap()
            .output_schema,
        None
    );
}

#[test]
fn what_the_server_cannot_honour_is_refused_by_name() {
    let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    for (key, value, param) in [
        ("n", json!(2), "n"),
        ("top_logprobs", json!(21), "top_logprobs"),
        ("logit_bias", json!({"x": 5}), "logit_bias"),
        ("logit_bias", json!({"42": 500}), "logit_bias"),
        ("max_tokens", json!(0), "max_tokens"),
        ("temperature", json!(3), "temperature"),
    ] {
        let mut b = base.clone();
        b[key] = value;
        let e = parse(b).unwrap_err();
        assert_eq!(e.param.as_deref(), Some(param), "{key}: {e}");
    }
    // Defaults that change nothing are accepted.
    let mut b = base.clone();
    b["n"] = json!(1);
    b["logprobs"] = json!(false);
    b["frequency_penalty"] = json!(0);
    assert!(parse(b).is_ok());
    let mut b = base.clone();
    b["presence_penalty"] = json!(0.5);
    b["frequency_penalty"] = json!(1);
    b["logit_bias"] = json!({"42": -100, "7": 3.5});
    b["logprobs"] = json!(true);
    b["top_logprobs"] = json!(3);
    let s = parse(b).unwrap().sampling;
    assert_eq!(s.logprobs, Some(3));
    assert_eq!((s.presence_penalty, s.frequency_penalty), (0.5, 1.0));
    assert_eq!(s.logit_bias, vec![(7, 3.5), (42, -100.0)]);
    let e = parse(json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})).unwrap_err();
    assert!(e.message.contains("an image URL must be"), "{e}");
    assert!(parse(json!({"messages": []})).is_err());
    assert!(parse_chat(b"{not json").is_err());
}

#[test]
fn reasoning_effort_and_template_kwargs_switch_thinking() {
    let with = |extra: Value| {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        parse(body)
    };
    let r = with(json!({})).unwrap();
    assert!(!r.thinking && r.effort.is_none() && r.show_thinking);
    let r = with(json!({"reasoning_effort": "high"})).unwrap();
    assert!(r.thinking);
    assert_eq!(r.effort, Some(pensieve_engine::Effort::High));
    let r = with(json!({"reasoning_effort": "minimal"})).unwrap();
    assert_eq!(r.effort, Some(pensieve_engine::Effort::Low));
    assert!(!with(json!({"reasoning_effort": "none"})).unwrap().thinking);
    assert!(with(json!({"reasoning_effort": "lots"})).is_err());
    let kwargs = json!({"chat_template_kwargs": {"enable_thinking": true}});
    assert!(with(kwargs).unwrap().thinking);
}

/// `body` with the row's top-level fields replaced.
fn with(mut body: Value, extra: &Value) -> Value {
    for (k, v) in extra.as_object().into_iter().flatten() {
        body[k] = v.clone();
    }
    body
}

/// One row per field and value, each refused one with the `param` OpenAI names and the
/// start of the message (None: accepted).
#[test]
fn every_chat_field_is_checked_with_its_param() {
    let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let tool = |name: &str| json!([{"type": "function", "function": {"name": name}}]);
    let table: Vec<(Value, Option<(&str, &str)>)> = vec![
        // Types: the path is the param, also inside the flattened shared settings.
        (json!({"model": 5}), Some(("model", "model: invalid type"))),
        (
            json!({"temperature": "hot"}),
            Some(("temperature", "temperature: invalid type")),
        ),
        (
            json!({"top_p": "x"}),
            Some(("top_p", "top_p: invalid type")),
        ),
        (
            json!({"stream": "yes"}),
            Some(("stream", "stream: invalid type")),
        ),
        (
            json!({"max_tokens": "10"}),
            Some(("max_tokens", "max_tokens: invalid type")),
        ),
        (
            json!({"max_tokens": -1}),
            Some(("max_tokens", "max_tokens: invalid value")),
        ),
        (
            json!({"logprobs": 1}),
            Some(("logprobs", "logprobs: invalid type")),
        ),
        (json!({"seed": 1.5}), Some(("seed", "seed: invalid type"))),
        (
            json!({"stream_options": {"include_usage": "yes"}, "stream": true}),
            Some((
                "stream_options.include_usage",
                "stream_options.include_usage: invalid type",
            )),
        ),
        (
            json!({"messages": [{"role": "user", "content": 5}]}),
            Some((
                "messages[0].content",
                "messages[0].content: expected a string or an array of content parts",
            )),
        ),
        (
            json!({"messages": [{"role": "user", "content": "a"}, {"content": "b"}]}),
            Some(("messages[1]", "messages[1]: missing field `role`")),
        ),
        (
            json!({"stop": 5}),
            Some(("stop", "stop: expected a string or an array of strings")),
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": 5}}]}),
            Some((
                "tools[0].function.name",
                "tools[0].function.name: invalid type",
            )),
        ),
        // Ranges.
        (json!({"temperature": 0}), None),
        (json!({"temperature": 2}), None),
        (
            json!({"temperature": 2.01}),
            Some(("temperature", "temperature: must be between 0 and 2")),
        ),
        (
            json!({"temperature": -0.5}),
            Some(("temperature", "temperature: must be between 0 and 2")),
        ),
        (json!({"top_p": 0}), None),
        (json!({"top_p": 1}), None),
        (
            json!({"top_p": 1.1}),
            Some(("top_p", "top_p: must be between 0 and 1")),
        ),
        (json!({"presence_penalty": -2}), None),
        (json!({"presence_penalty": 2}), None),
        (
            json!({"presence_penalty": 2.5}),
            Some((
                "presence_penalty",
                "presence_penalty: must be between -2 and 2",
            )),
        ),
        (
            json!({"frequency_penalty": -2.5}),
            Some((
                "frequency_penalty",
                "frequency_penalty: must be between -2 and 2",
            )),
        ),
        (json!({"n": 1}), None),
        (json!({"n": 0}), Some(("n", "n: only 1 choice"))),
        (json!({"n": 2}), Some(("n", "n: only 1 choice"))),
        (json!({"max_tokens": 1}), None),
        (
            json!({"max_tokens": 0}),
            Some(("max_tokens", "max_tokens: must be at least 1")),
        ),
        (json!({"max_completion_tokens": 1}), None),
        (
            json!({"max_completion_tokens": 0}),
            Some((
                "max_completion_tokens",
                "max_completion_tokens: must be at least 1",
            )),
        ),
        (json!({"logprobs": true, "top_logprobs": 0}), None),
        (json!({"logprobs": true, "top_logprobs": 20}), None),
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            Some(("top_logprobs", "top_logprobs: must be between 0 and 20")),
        ),
        (
            json!({"top_logprobs": 2}),
            Some(("top_logprobs", "top_logprobs: logprobs must be true")),
        ),
        (json!({"seed": -7}), None),
        (
            json!({"seed": 18446744073709551615_u64}),
            Some(("seed", "seed: invalid value")),
        ),
        // stop: a string or up to 4 strings.
        (json!({"stop": "END"}), None),
        (json!({"stop": ["a", "b", "c", "d"]}), None),
        (
            json!({"stop": ["a", "b", "c", "d", "e"]}),
            Some(("stop", "stop: at most 4 sequences")),
        ),
        (
            json!({"stop": [1]}),
            Some(("stop", "stop: expected a string or an array of strings")),
        ),
        // stream_options only with stream.
        (
            json!({"stream": true, "stream_options": {"include_usage": true}}),
            None,
        ),
        (
            json!({"stream_options": {"include_usage": true}}),
            Some((
                "stream_options",
                "stream_options: only allowed when stream is true",
            )),
        ),
        (
            json!({"stream": false, "stream_options": {"include_usage": true}}),
            Some((
                "stream_options",
                "stream_options: only allowed when stream is true",
            )),
        ),
        (json!({"stream_options": null}), None),
        // Messages: at least one, known roles, tool results naming their call.
        (
            json!({"messages": []}),
            Some(("messages", "messages: at least one message is required")),
        ),
        (
            json!({"messages": [{"role": "robot", "content": "x"}]}),
            Some((
                "messages[0].role",
                "messages[0].role: expected system, developer, user, assistant or tool",
            )),
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "42"}]}),
            Some((
                "messages[1].tool_call_id",
                "messages[1].tool_call_id: Field required",
            )),
        ),
        (
            json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}),
            Some((
                "messages[0].tool_calls[0].function.arguments",
                "messages[0].tool_calls[0].function.arguments: not a JSON object",
            )),
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            Some((
                "messages[0].content[0]",
                "messages[0].content[0]: an image URL must be http(s)",
            )),
        ),
        // Tools: function tools, names matching ^[a-zA-Z0-9_-]{1,64}$, object parameters.
        (json!({"tools": tool("get_weather-2")}), None),
        (json!({"tools": tool(&"a".repeat(64))}), None),
        (
            json!({"tools": tool(&"a".repeat(65))}),
            Some((
                "tools[0].function.name",
                "tools[0].function.name: must match",
            )),
        ),
        (
            json!({"tools": tool("get.weather")}),
            Some((
                "tools[0].function.name",
                "tools[0].function.name: must match",
            )),
        ),
        (
            json!({"tools": tool("")}),
            Some((
                "tools[0].function.name",
                "tools[0].function.name: must match",
            )),
        ),
        (
            json!({"tools": [{"type": "web_search", "function": {"name": "f"}}]}),
            Some((
                "tools[0].type",
                "tools[0].type: only function tools are supported",
            )),
        ),
        (
            json!({"tools": [{"type": "function"}]}),
            Some(("tools[0].function", "tools[0].function: Field required")),
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": "none"}}]}),
            Some((
                "tools[0].function.parameters",
                "tools[0].function.parameters: must be a JSON Schema object",
            )),
        ),
        // tool_choice: none, auto, required, or a named function.
        (json!({"tool_choice": "auto"}), None),
        (
            json!({"tool_choice": {"type": "function", "function": {"name": "f"}}}),
            None,
        ),
        (
            json!({"tool_choice": "sometimes"}),
            Some(("tool_choice", "tool_choice: expected")),
        ),
        (
            json!({"tool_choice": {"function": {"name": "f"}}}),
            Some(("tool_choice", "tool_choice: expected")),
        ),
        (
            json!({"tool_choice": {"type": "function"}}),
            Some(("tool_choice", "tool_choice: expected")),
        ),
        (
            json!({"tool_choice": 1}),
            Some(("tool_choice", "tool_choice: expected")),
        ),
        // response_format: text, json_object, json_schema with a schema.
        (json!({"response_format": {"type": "text"}}), None),
        (
            json!({"response_format": {"type": "yaml"}}),
            Some((
                "response_format",
                "response_format.type: expected text, json_object or json_schema",
            )),
        ),
        (
            json!({"response_format": {"type": "json_schema"}}),
            Some((
                "response_format",
                "response_format.json_schema.schema: Field required",
            )),
        ),
        (
            json!({"response_format": {}}),
            Some(("response_format", "response_format: missing field `type`")),
        ),
        (
            json!({"reasoning_effort": "lots"}),
            Some(("reasoning_effort", "reasoning_effort: unknown value")),
        ),
    ];
    for (extra, want) in table {
        match (parse(with(base.clone(), &extra)), want) {
            (Ok(_), None) => {}
            (Err(e), Some((param, message))) => {
                assert_eq!(e.param.as_deref(), Some(param), "{extra}: {e}");
                assert!(e.message.starts_with(message), "{extra}: {e}");
            }
            (got, want) => panic!("{extra}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn a_body_that_is_no_object_has_no_param() {
    for body in [&b"{not json"[..], b"[1, 2]", b"\"hi\"", b""] {
        let e = parse_chat(body).unwrap_err();
        assert_eq!(e.param, None, "{e}");
        let e = crate::openai::parse_completion(body).unwrap_err();
        assert_eq!(e.param, None, "{e}");
    }
}

#[test]
fn every_completions_field_is_checked_with_its_param() {
    let base = json!({"model": "m", "prompt": "Once upon"});
    let table: Vec<(Value, Option<(&str, &str)>)> = vec![
        (
            json!({"prompt": 5}),
            Some((
                "prompt",
                "prompt: expected a string, an array of strings, or token ids",
            )),
        ),
        (
            json!({"prompt": ""}),
            Some(("prompt", "prompt: must not be empty")),
        ),
        (
            json!({"prompt": ["a", "b"]}),
            Some(("prompt", "prompt: one prompt per request")),
        ),
        (json!({"max_tokens": 1}), None),
        (
            json!({"max_tokens": 0}),
            Some(("max_tokens", "max_tokens: must be at least 1")),
        ),
        (
            json!({"max_tokens": "8"}),
            Some(("max_tokens", "max_tokens: invalid type")),
        ),
        (json!({"temperature": 2}), None),
        (
            json!({"temperature": 2.5}),
            Some(("temperature", "temperature: must be between 0 and 2")),
        ),
        (
            json!({"temperature": "x"}),
            Some(("temperature", "temperature: invalid type")),
        ),
        (
            json!({"top_p": -0.1}),
            Some(("top_p", "top_p: must be between 0 and 1")),
        ),
        (
            json!({"presence_penalty": 3}),
            Some((
                "presence_penalty",
                "presence_penalty: must be between -2 and 2",
            )),
        ),
        (json!({"n": 3}), Some(("n", "n: only 1 choice"))),
        (json!({"logprobs": 5}), None),
        (
            json!({"logprobs": 6}),
            Some(("logprobs", "logprobs: must be between 0 and 5")),
        ),
        (
            json!({"logprobs": true}),
            Some(("logprobs", "logprobs: invalid type")),
        ),
        (
            json!({"stop": ["a", "b", "c", "d", "e"]}),
            Some(("stop", "stop: at most 4 sequences")),
        ),
        (
            json!({"stream_options": {"include_usage": true}}),
            Some((
                "stream_options",
                "stream_options: only allowed when stream is true",
            )),
        ),
        (json!({"echo": true}), Some(("echo", "echo: not supported"))),
        (
            json!({"best_of": 2}),
            Some(("best_of", "best_of: not supported")),
        ),
        (json!({"seed": -1}), None),
    ];
    for (extra, want) in table {
        let got =
            crate::openai::parse_completion(with(base.clone(), &extra).to_string().as_bytes())
                .and_then(|r| r.into_generate());
        match (got, want) {
            (Ok(_), None) => {}
            (Err(e), Some((param, message))) => {
                assert_eq!(e.param.as_deref(), Some(param), "{extra}: {e}");
                assert!(e.message.starts_with(message), "{extra}: {e}");
            }
            (got, want) => panic!("{extra}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn images_become_placeholders_in_their_message() {
    // A PNG's signature and header (1280×720): all that is read of an image.
    let png = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAABQAAAALQCAYAAAAAAAAA";
    let body = json!({"model": "m", "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "Compare"},
            {"type": "image_url", "image_url": {"url": png, "detail": "high"}},
            {"type": "image_url", "image_url": "https://example.com/b.webp"}
        ]}
    ]});
    let request = parse(body).unwrap();
    assert_eq!(
        request.messages[0].content,
        "Compare\n\n[image: PNG 1280×720, not shown: this model has no vision]\n\n\
         [image: https://example.com/b.webp, not shown: this model has no vision]"
    );
    let at: Vec<_> = request.images.iter().map(|i| i.at.as_str()).collect();
    assert_eq!(at, ["messages[0].content[1]", "messages[0].content[2]"]);
    let e = parse(
        json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}]}),
    )
    .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages[0].content[0]"));
    assert!(e.message.contains("not an image"), "{e}");
}
