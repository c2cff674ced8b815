use super::*;
use serde_json::json;

fn prepare(body: Value) -> Result<Prepared, OpenAiError> {
    parse_responses(body.to_string().as_bytes())?.prepare(&SamplingDefaults::default(), None)
}

fn refused(body: Value) -> OpenAiError {
    prepare(body).expect_err("refused")
}

#[test]
fn a_string_input_with_instructions() {
    let p = prepare(
        json!({"model": "m", "input": "Hi", "instructions": "Be brief.",
                           "max_output_tokens": 9, "temperature": 0.5, "stream": true}),
    )
    .unwrap();
    let r = &p.request;
    assert_eq!(r.messages.len(), 2);
    assert_eq!(
        (r.messages[0].role, r.messages[0].content.as_str()),
        (Role::System, "Be brief.")
    );
    assert_eq!(
        (r.messages[1].role, r.messages[1].content.as_str()),
        (Role::User, "Hi")
    );
    assert_eq!(r.max_tokens, 9);
    assert_eq!(r.sampling.temperature, 0.5);
    assert!(p.stream && p.store);
    // The instructions are not part of what a follow-up continues.
    assert_eq!(p.history.len(), 1);
    assert_eq!(p.echo.instructions.as_deref(), Some("Be brief."));
    assert_eq!(p.echo.text, json!({"format": {"type": "text"}}));
    assert_eq!(p.echo.tool_choice, json!("auto"));
}

#[test]
fn items_make_one_assistant_turn_of_reasoning_text_and_calls() {
    let p = prepare(json!({"model": "m", "input": [
        {"role": "developer", "content": "Use tools."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "sum"}],
         "content": [{"type": "reasoning_text", "text": "think"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me look."}]},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{\"city\":\"Oslo\"}"},
        {"type": "function_call", "call_id": "c2", "name": "time", "arguments": ""},
        {"type": "function_call_output", "call_id": "c1", "output": "rain"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "noon"}]},
    ]}))
    .unwrap();
    let m = &p.request.messages;
    assert_eq!(m.len(), 5);
    assert_eq!(m[0].role, Role::System);
    assert_eq!(m[1].content, "Weather?");
    assert_eq!(m[2].role, Role::Assistant);
    assert_eq!(m[2].reasoning.as_deref(), Some("think"));
    assert_eq!(m[2].content, "Let me look.");
    assert_eq!(m[2].tool_calls.len(), 2);
    assert_eq!(m[2].tool_calls[0].arguments, json!({"city": "Oslo"}));
    assert_eq!(m[2].tool_calls[1].arguments, json!({}));
    assert_eq!(m[3].role, Role::Tool);
    assert_eq!(m[3].tool_call_id.as_deref(), Some("c1"));
    assert_eq!(m[3].name.as_deref(), Some("weather"));
    assert_eq!(
        (m[4].content.as_str(), m[4].name.as_deref()),
        ("noon", Some("time"))
    );
}

#[test]
fn a_summary_stands_in_for_reasoning_the_client_did_not_keep() {
    let p = prepare(json!({"model": "m", "input": [
        {"role": "user", "content": "q"},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "short"}],
         "encrypted_content": "opaque"},
        {"role": "assistant", "content": "a"},
    ]}))
    .unwrap();
    assert_eq!(p.request.messages[1].reasoning.as_deref(), Some("short"));
    assert_eq!(p.request.messages[1].content, "a");
}

#[test]
fn previous_conversation_comes_first_and_names_its_calls() {
    let mut earlier = Message::text(Role::Assistant, "");
    earlier.tool_calls.push(ToolCall {
        id: "c9".into(),
        name: "ls".into(),
        arguments: json!({}),
    });
    let previous = vec![Message::text(Role::User, "list"), earlier];
    let body = json!({"model": "m", "previous_response_id": "resp_1", "instructions": "new",
                      "input": [{"type": "function_call_output", "call_id": "c9", "output": "a b"}]});
    let p = parse_responses(body.to_string().as_bytes())
        .unwrap()
        .prepare(&SamplingDefaults::default(), Some(&previous))
        .unwrap();
    let m = &p.request.messages;
    assert_eq!(m.len(), 4);
    assert_eq!(m[0].content, "new");
    assert_eq!(m[1].content, "list");
    assert_eq!(m[3].name.as_deref(), Some("ls"));
    assert_eq!(p.history.len(), 3);
    assert_eq!(p.echo.previous_response_id.as_deref(), Some("resp_1"));
}

#[test]
fn tools_choice_format_and_effort() {
    let p = prepare(json!({"model": "m", "input": "x",
        "tools": [{"type": "function", "name": "f", "description": "d",
                   "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}, "strict": true}],
        "tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": false,
        "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}}},
        "reasoning": {"effort": "low", "summary": "auto"}, "store": false}))
    .unwrap();
    let r = &p.request;
    assert_eq!(r.tools[0].name, "f");
    assert_eq!(r.tools[0].description.as_deref(), Some("d"));
    assert_eq!(r.tool_choice, ToolChoice::Named("f".into()));
    assert!(!r.parallel_tool_calls);
    assert_eq!(r.output_schema, Some(json!({"type": "object"})));
    assert!(r.thinking);
    assert_eq!(r.effort, Some(Effort::Low));
    assert!(!p.store);
    assert_eq!(p.echo.tools[0]["strict"], true);
    assert_eq!(p.echo.text["format"]["name"], "out");
    let p = prepare(json!({"model": "m", "input": "x", "reasoning": {"effort": "none"}})).unwrap();
    assert!(!p.request.thinking);
    // Codex asks for summaries without an effort: no reasoning switched on.
    let p = prepare(json!({"model": "m", "input": "x", "reasoning": {"summary": "auto"}})).unwrap();
    assert!(!p.request.thinking);
}

#[test]
fn hosted_tools_and_namespaces_are_not_offered_but_echoed() {
    let p = prepare(json!({"model": "m", "input": "x", "tools": [
        {"type": "web_search", "external_web_access": false},
        {"type": "namespace", "name": "agents", "tools": [{"type": "function", "name": "spawn"}]},
        {"type": "function", "name": "exec_command", "strict": false,
         "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}},
    ]}))
    .unwrap();
    let names: Vec<&str> = p.request.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["exec_command"]);
    assert_eq!(p.echo.tools.as_array().unwrap().len(), 3);
}

#[test]
fn refusals_name_their_parameter() {
    for (body, param) in [
        (json!({"input": "x"}), "model"),
        (json!({"model": "m"}), "input"),
        (json!({"model": "m", "input": []}), "input"),
        (
            json!({"model": "m", "input": "x", "temperature": 3}),
            "temperature",
        ),
        (
            json!({"model": "m", "input": "x", "max_output_tokens": 0}),
            "max_output_tokens",
        ),
        (
            json!({"model": "m", "input": "x", "tools": [{"name": "f"}]}),
            "tools[0].type",
        ),
        (
            json!({"model": "m", "input": "x", "tools": [{"type": "function", "name": "a b"}]}),
            "tools[0].name",
        ),
        (
            json!({"model": "m", "input": "x", "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"model": "m", "input": "x", "text": {"format": {"type": "xml"}}}),
            "text.format.type",
        ),
        (
            json!({"model": "m", "input": "x", "text": {"format": {"type": "json_schema"}}}),
            "text.format.schema",
        ),
        (
            json!({"model": "m", "input": "x", "reasoning": {"effort": "huge"}}),
            "reasoning.effort",
        ),
        (
            json!({"model": "m", "input": "x", "background": true}),
            "background",
        ),
        (
            json!({"model": "m", "input": "x", "conversation": "conv_1"}),
            "conversation",
        ),
        (
            json!({"model": "m", "input": [{"role": "robot", "content": "x"}]}),
            "input[0].role",
        ),
        (
            json!({"model": "m", "input": [{"type": "function_call", "name": "f"}]}),
            "input[0]",
        ),
        (
            json!({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{"}]}),
            "input[0].arguments",
        ),
        (
            json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}),
            "input[0]",
        ),
        (
            json!({"model": "m", "input": [{"type": "computer_call"}]}),
            "input[0].type",
        ),
        (
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}),
            "input[0].content[0]",
        ),
        (json!({"model": "m", "input": 5}), "input"),
    ] {
        let e = refused(body.clone());
        assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        assert!(e.message.starts_with(param), "{body}: {}", e.message);
    }
}

#[test]
fn input_images_become_placeholders() {
    let png = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAABQAAAALQCAYAAAAAAAAA";
    let p = prepare(json!({"model": "m", "input": [
        {"role": "user", "content": [
            {"type": "input_text", "text": "What is it?"},
            {"type": "input_image", "image_url": png, "detail": "auto"},
            {"type": "input_image", "file_id": "file-1"}
        ]}
    ]}))
    .unwrap();
    let m = p.request.messages.last().unwrap();
    assert_eq!(
        m.content,
        "What is it?\n\n[image: PNG 1280×720, not shown: this model has no vision]\n\n\
         [image: file file-1, not shown: this model has no vision]"
    );
    assert_eq!(p.request.images.len(), 2);
    assert_eq!(p.request.images[1].at, "input[0].content[2]");
}
