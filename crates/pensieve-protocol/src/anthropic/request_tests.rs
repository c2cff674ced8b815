//! Request parsing against the R-items of anthropic-api.md.

use super::*;
use serde_json::json;

fn generate(body: Value) -> Result<GenerateRequest, RequestError> {
    parse_messages(body.to_string().as_bytes())?.into_generate()
}

fn base() -> Value {
    json!({"model": "claude-opus-5-5", "max_tokens": 64,
           "messages": [{"role": "user", "content": "hi"}]})
}

#[test]
fn r3_required_fields_are_named() {
    for field in ["model", "messages", "max_tokens"] {
        let mut body = base();
        body.as_object_mut().unwrap().remove(field);
        let err = generate(body).unwrap_err();
        assert_eq!(err.0, format!("{field}: Field required"));
    }
}

#[test]
fn values_out_of_the_apis_ranges_are_refused() {
    // (field, value, the error; None: accepted)
    let table: [(&str, Value, Option<&str>); 13] = [
        (
            "messages",
            json!([]),
            Some("messages: at least one message is required"),
        ),
        (
            "max_tokens",
            json!(0),
            Some("max_tokens: Input should be greater than or equal to 1"),
        ),
        ("max_tokens", json!(1), None),
        ("max_tokens", json!(-1), Some("max_tokens: invalid value")),
        ("max_tokens", json!("64"), Some("max_tokens: invalid type")),
        ("temperature", json!(0.0), None),
        ("temperature", json!(1.0), None),
        (
            "temperature",
            json!(1.5),
            Some("temperature: Input should be less than or equal to 1"),
        ),
        (
            "temperature",
            json!(-0.1),
            Some("temperature: Input should be greater than or equal to 0"),
        ),
        (
            "top_p",
            json!(1.01),
            Some("top_p: Input should be less than or equal to 1"),
        ),
        ("top_p", json!(0.5), None),
        ("top_k", json!(-3), Some("top_k: invalid value")),
        (
            "stop_sequences",
            json!("END"),
            Some("stop_sequences: invalid type"),
        ),
    ];
    for (field, value, want) in table {
        let mut body = base();
        body[field] = value.clone();
        match (generate(body), want) {
            (Ok(_), None) => {}
            (Err(e), Some(want)) => assert!(e.0.starts_with(want), "{field}={value}: {}", e.0),
            (got, want) => panic!("{field}={value}: got {got:?}, want {want:?}"),
        }
    }
    let count = parse_count_tokens(json!({"model": "m", "messages": []}).to_string().as_bytes())
        .unwrap()
        .into_generate()
        .unwrap_err();
    assert_eq!(count.0, "messages: at least one message is required");
}

#[test]
fn r4_unknown_top_level_fields_are_ignored() {
    let mut body = base();
    body["context_management"] = json!({"edits": [{"type": "clear_thinking_20251015"}]});
    body["output_config"] = json!({"effort": "medium"});
    body["metadata"] = json!({"user_id": "{\"a\":1}"});
    body["service_tier"] = json!("auto");
    body["container"] = json!(null);
    body["thinking"] = json!({"type": "adaptive", "display": "omitted"});
    let req = generate(body).unwrap();
    assert!(req.thinking);
    assert_eq!(req.model, "claude-opus-5-5");
}

#[test]
fn r5_content_as_string_or_blocks() {
    let mut body = base();
    body["messages"] = json!([
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]);
    let req = generate(body).unwrap();
    assert_eq!(req.messages[0].content, "a\n\nb");
    assert_eq!(generate(base()).unwrap().messages[0].content, "hi");
}

#[test]
fn r6_system_role_inside_messages() {
    let mut body = base();
    body["messages"] = json!([
        {"role": "user", "content": "hi"},
        {"role": "system", "content": [{"type": "text", "text": "env", "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": [{"type": "mid_conv_system", "text": "note"}, {"type": "text", "text": "go"}]}
    ]);
    let req = generate(body).unwrap();
    let roles: Vec<_> = req
        .messages
        .iter()
        .map(|m| (m.role, m.content.as_str()))
        .collect();
    assert_eq!(
        roles,
        vec![
            (Role::User, "hi"),
            (Role::System, "env"),
            (Role::System, "note"),
            (Role::User, "go")
        ]
    );
}

#[test]
fn r9_cache_control_and_citations_accepted() {
    let mut body = base();
    body["messages"] = json!([{"role": "user", "content": [
        {"type": "text", "text": "x", "cache_control": {"type": "ephemeral", "ttl": "1h"}, "citations": []}
    ]}]);
    assert_eq!(generate(body).unwrap().messages[0].content, "x");
}

/// A PNG's signature and header, base64: all that is read of an image.
fn png_1280x720() -> &'static str {
    "iVBORw0KGgoAAAANSUhEUgAABQAAAALQCAYAAAAAAAAA"
}

#[test]
fn r10_images_become_placeholders_that_name_them() {
    let mut body = base();
    body["messages"] = json!([{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png_1280x720()}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}}
    ]}]);
    let request = generate(body).unwrap();
    assert_eq!(
        request.messages[0].content,
        "What is this?\n\n[image: PNG 1280×720, not shown: this model has no vision]\n\n\
         [image: https://example.com/a.jpg, not shown: this model has no vision]"
    );
    let at: Vec<_> = request.images.iter().map(|i| i.at.as_str()).collect();
    assert_eq!(at, ["messages.0.content.1", "messages.0.content.2"]);
}

#[test]
fn r10_an_image_in_a_tool_result_is_a_placeholder_in_the_result() {
    let mut body = base();
    body["messages"] = json!([
        {"role": "user", "content": "look at shot.png"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "shot.png"}}
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png_1280x720()}}
            ]}
        ]}
    ]);
    let request = generate(body).unwrap();
    let result = request.messages.last().unwrap();
    assert_eq!(result.role, Role::Tool);
    assert_eq!(
        result.content,
        "[image: PNG 1280×720, not shown: this model has no vision]"
    );
    assert_eq!(request.images[0].at, "messages.2.content.0.content.0");
}

#[test]
fn r10_a_bad_image_is_a_clear_400_naming_its_block() {
    for (source, says) in [
        (
            json!({"type": "base64", "media_type": "image/png", "data": "AAAA"}),
            "not an image",
        ),
        (
            json!({"type": "base64", "media_type": "image/png"}),
            "source.data: Field required",
        ),
        (
            json!({"type": "bytes"}),
            "source.type: expected base64, url or file",
        ),
    ] {
        let mut body = base();
        body["messages"] = json!([{"role": "user", "content": [
            {"type": "text", "text": "x"}, {"type": "image", "source": source}
        ]}]);
        let err = generate(body).unwrap_err();
        assert!(err.0.starts_with("messages.0.content.1"), "{}", err.0);
        assert!(err.0.contains(says), "{}", err.0);
    }
}

#[test]
fn r11_r12_tool_use_and_results() {
    let mut body = base();
    body["messages"] = json!([
        {"role": "user", "content": "make a file"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "ok"},
            {"type": "tool_use", "id": "toolu_01", "name": "Write", "input": {"file_path": "/a", "content": "hi"}}
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": "done", "cache_control": {"type": "ephemeral"}},
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"type": "tool_result", "tool_use_id": "toolu_01"},
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": "boom", "is_error": true},
            {"type": "text", "text": "thanks"}
        ]}
    ]);
    let req = generate(body).unwrap();
    let m = &req.messages;
    assert_eq!(m[1].role, Role::Assistant);
    assert_eq!(m[1].tool_calls[0].name, "Write");
    assert_eq!(m[1].tool_calls[0].arguments["content"], "hi");
    let results: Vec<_> = m[2..6]
        .iter()
        .map(|m| (m.role, m.content.as_str()))
        .collect();
    assert_eq!(
        results,
        vec![
            (Role::Tool, "done"),
            (Role::Tool, "a\n\nb"),
            (Role::Tool, ""),
            (Role::Tool, "Error: boom")
        ]
    );
    assert_eq!(m[2].tool_call_id.as_deref(), Some("toolu_01"));
    assert_eq!(m[2].name.as_deref(), Some("Write"));
    assert_eq!((m[6].role, m[6].content.as_str()), (Role::User, "thanks"));
    assert_eq!(m.len(), 7);
}

#[test]
fn only_tool_results_make_no_empty_user_turn() {
    let mut body = base();
    body["messages"] = json!([
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "out"}]}
    ]);
    let req = generate(body).unwrap();
    assert_eq!(req.messages.len(), 3);
    assert_eq!(req.messages[2].role, Role::Tool);
}

#[test]
fn r13_thinking_blocks_in_history() {
    let mut body = base();
    body["messages"] = json!([
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": ""},
            {"type": "redacted_thinking", "data": "xyz"},
            {"type": "text", "text": "a"}
        ]},
        {"role": "user", "content": "more"}
    ]);
    let req = generate(body).unwrap();
    assert_eq!(req.messages[1].reasoning.as_deref(), Some("hmm"));
    assert_eq!(req.messages[1].content, "a");
}

#[test]
fn r14_documents() {
    let mut body = base();
    body["messages"] = json!([{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc text"}},
        {"type": "text", "text": "summarise"}
    ]}]);
    assert_eq!(
        generate(body).unwrap().messages[0].content,
        "doc text\n\nsummarise"
    );
    let mut body = base();
    body["messages"] = json!([{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "AAAA"}}
    ]}]);
    assert!(generate(body).unwrap_err().0.contains("not supported"));
}

#[test]
fn r15_unknown_block_types_are_ignored() {
    let mut body = base();
    body["messages"] = json!([
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [
            {"type": "server_tool_use", "id": "s1", "name": "web_search", "input": {}},
            {"type": "web_search_tool_result", "tool_use_id": "s1", "content": []},
            {"type": "text", "text": "a"}
        ]},
        {"role": "user", "content": [{"type": "tool_reference", "tool_name": "x"}, {"type": "text", "text": "b"}]}
    ]);
    let req = generate(body).unwrap();
    assert_eq!(req.messages[1].content, "a");
    assert_eq!(req.messages[2].content, "b");
}

#[test]
fn r16_system_string_or_blocks_without_billing_line() {
    let mut body = base();
    body["system"] = json!([
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.328.abc; cc_entrypoint=cli; cch=123;"},
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Be brief."}
    ]);
    let req = generate(body).unwrap();
    assert_eq!(req.messages[0].role, Role::System);
    assert_eq!(req.messages[0].content, "You are Claude Code.\n\nBe brief.");

    let mut body = base();
    body["system"] =
        json!("x-anthropic-billing-header: cc_version=1; cc_entrypoint=cli;\nBe brief.");
    assert_eq!(generate(body).unwrap().messages[0].content, "Be brief.");

    let mut body = base();
    body["system"] = json!("plain");
    assert_eq!(generate(body).unwrap().messages[0].content, "plain");
}

#[test]
fn r17_sampling_and_stops() {
    let mut body = base();
    body["temperature"] = json!(0.0);
    body["top_p"] = json!(0.9);
    body["top_k"] = json!(40);
    body["stop_sequences"] = json!(["END"]);
    body["stream"] = json!(true);
    let parsed = parse_messages(body.to_string().as_bytes()).unwrap();
    assert!(parsed.is_stream());
    let req = parsed.into_generate().unwrap();
    assert_eq!(req.sampling.temperature, 0.0);
    assert_eq!(req.sampling.top_p, Some(0.9));
    assert_eq!(req.sampling.top_k, Some(40));
    assert_eq!(req.stop_sequences, vec!["END".to_string()]);
    assert_eq!(req.max_tokens, 64);
}

#[test]
fn the_servers_sampling_fills_only_what_the_request_leaves_out() {
    let defaults = SamplingDefaults {
        temperature: Some(1.5),
        top_p: Some(0.8),
        top_k: Some(20),
        min_p: Some(0.05),
        seed: Some(9),
    };
    let into = |body: Value| {
        parse_messages(body.to_string().as_bytes())
            .unwrap()
            .into_generate_with(&defaults)
            .unwrap()
            .sampling
    };
    // Claude Code sends no temperature: a server's 1.5 is fine, though a client's is not.
    let s = into(base());
    assert_eq!(
        (s.temperature, s.top_p, s.top_k, s.min_p, s.seed),
        (1.5, Some(0.8), Some(20), Some(0.05), Some(9))
    );
    let mut body = base();
    body["temperature"] = json!(0.0);
    body["top_k"] = json!(1);
    let s = into(body);
    assert_eq!((s.temperature, s.top_k, s.top_p), (0.0, Some(1), Some(0.8)));
    // Without server defaults, Anthropic's own: temperature 1, nothing else.
    assert_eq!(
        generate(base()).unwrap().sampling,
        SamplingParams::default()
    );
}

#[test]
fn r19_r20_tools_with_extra_fields_and_server_tools() {
    let mut body = base();
    body["tools"] = json!([
        {"name": "Read", "description": "read", "input_schema": {"type": "object"},
         "cache_control": {"type": "ephemeral"}, "strict": true, "defer_loading": true,
         "eager_input_streaming": true, "input_examples": []},
        {"name": "NoSchema"},
        {"type": "custom", "name": "Custom", "input_schema": {"type": "object"}},
        {"type": "web_search_20250305", "name": "web_search"},
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}
    ]);
    let req = generate(body).unwrap();
    let names: Vec<_> = req.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["Read", "NoSchema", "Custom"]);
    assert_eq!(req.tools[1].parameters, json!({}));
}

#[test]
fn r21_tool_choice() {
    let cases = [
        (json!({"type": "auto"}), ToolChoice::Auto),
        (
            json!({"type": "any", "disable_parallel_tool_use": true}),
            ToolChoice::Required,
        ),
        (
            json!({"type": "tool", "name": "Read"}),
            ToolChoice::Named("Read".into()),
        ),
        (json!({"type": "none"}), ToolChoice::None),
    ];
    for (choice, expected) in cases {
        let mut body = base();
        body["tool_choice"] = choice;
        assert_eq!(generate(body).unwrap().tool_choice, expected);
    }
    let mut body = base();
    body["tool_choice"] = json!({"type": "tool"});
    assert_eq!(
        generate(body).unwrap_err().0,
        "tool_choice.name: Field required"
    );
    // disable_parallel_tool_use: at most one call.
    let mut body = base();
    assert!(generate(body.clone()).unwrap().parallel_tool_calls);
    body["tool_choice"] = json!({"type": "auto", "disable_parallel_tool_use": true});
    assert!(!generate(body).unwrap().parallel_tool_calls);
}

#[test]
fn r22_thinking_variants() {
    for (thinking, on) in [
        (json!({"type": "enabled", "budget_tokens": 1024}), true),
        (json!({"type": "disabled"}), false),
        (json!({"type": "adaptive", "display": "summarized"}), true),
    ] {
        let mut body = base();
        // Above the budget, as Anthropic requires.
        body["max_tokens"] = json!(2048);
        body["thinking"] = thinking;
        assert_eq!(generate(body).unwrap().thinking, on);
    }
}

#[test]
fn type_errors_name_the_field() {
    let mut body = base();
    body["max_tokens"] = json!("lots");
    let err = parse_messages(body.to_string().as_bytes()).unwrap_err();
    assert!(err.0.starts_with("max_tokens:"), "{}", err.0);
    let err = parse_messages(b"{not json").unwrap_err();
    assert!(err.0.contains("not valid JSON"), "{}", err.0);
}

#[test]
fn bad_role_is_named() {
    let mut body = base();
    body["messages"] = json!([{"role": "robot", "content": "x"}]);
    assert!(generate(body).unwrap_err().0.starts_with("messages.0.role"));
}

#[test]
fn count_tokens_needs_no_max_tokens() {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                      "system": "s", "tools": [{"name": "T", "input_schema": {}}]});
    let req = parse_count_tokens(body.to_string().as_bytes())
        .unwrap()
        .into_generate()
        .unwrap();
    assert_eq!(req.messages.len(), 2);
    assert_eq!(req.tools.len(), 1);
}

#[test]
fn cache_control_anywhere_asks_for_caching() {
    assert!(!generate(base()).unwrap().cache_requested);
    let marked = json!({"type": "ephemeral"});
    let mut system = base();
    system["system"] = json!([{"type": "text", "text": "s", "cache_control": marked}]);
    let mut message = base();
    message["messages"] = json!([{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": marked}]}]);
    let mut result = base();
    result["messages"] = json!([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok",
                                      "cache_control": marked}]}
    ]);
    let mut tool = base();
    tool["tools"] = json!([{"name": "f", "input_schema": {}, "cache_control": marked}]);
    let mut top = base();
    top["cache_control"] = marked;
    for body in [system, message, result, tool, top] {
        assert!(generate(body.clone()).unwrap().cache_requested, "{body}");
    }
}

#[test]
fn thinking_and_effort_become_the_templates_switches() {
    let with = |thinking: Value, effort: Option<&str>| {
        let mut body = base();
        // Above any budget below, as Anthropic requires.
        body["max_tokens"] = json!(64000);
        body["thinking"] = thinking;
        if let Some(e) = effort {
            body["output_config"] = json!({"effort": e});
        }
        let r = generate(body).unwrap();
        (r.thinking, r.show_thinking, r.effort)
    };
    // Claude Code: adaptive thinking with an effort.
    assert_eq!(
        with(json!({"type": "adaptive"}), Some("medium")),
        (true, true, Some(Effort::Medium))
    );
    assert_eq!(
        with(json!({"type": "adaptive"}), Some("max")),
        (true, true, Some(Effort::High))
    );
    // A budget gives an effort when none is named.
    assert_eq!(
        with(json!({"type": "enabled", "budget_tokens": 1024}), None),
        (true, true, Some(Effort::Low))
    );
    assert_eq!(
        with(json!({"type": "enabled", "budget_tokens": 32000}), None),
        (true, true, Some(Effort::High))
    );
    // Disabled (or absent): no thinking, and none shown.
    assert_eq!(
        with(json!({"type": "disabled"}), None),
        (false, false, None)
    );
    let r = generate(base()).unwrap();
    assert!(!r.thinking && !r.show_thinking);
}

#[test]
fn the_billing_line_leaves_a_relayed_body() {
    let line = "x-anthropic-billing-header: cc_version=2.1.3; cch=1a2b3;";
    let mut body = serde_json::json!({"system": [
        {"type": "text", "text": line},
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
    ], "messages": []});
    strip_billing_line(&mut body);
    assert_eq!(
        body["system"],
        serde_json::json!([{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}])
    );
    let mut body = serde_json::json!({"system": format!("{line}\nBe brief.")});
    strip_billing_line(&mut body);
    assert_eq!(body["system"], "Be brief.");
    let mut untouched = serde_json::json!({"messages": [{"role": "user", "content": line}]});
    let before = untouched.clone();
    strip_billing_line(&mut untouched);
    assert_eq!(untouched, before);
}

/// One row per field and value: `base()` with the row's top-level fields replaced, and
/// the start of the error Anthropic's API would give (None: accepted).
#[test]
fn every_field_is_checked_as_anthropic_checks_it() {
    let tool = |name: &str| json!({"name": name, "input_schema": {"type": "object"}});
    let table: Vec<(Value, Option<&str>)> = vec![
        // Types: a 400 naming the field's path, never a 422 or 500.
        (
            json!({"max_tokens": "10"}),
            Some("max_tokens: invalid type"),
        ),
        (json!({"max_tokens": 1.5}), Some("max_tokens: invalid type")),
        (json!({"model": 5}), Some("model: invalid type")),
        (json!({"stream": "yes"}), Some("stream: invalid type")),
        (
            json!({"temperature": "hot"}),
            Some("temperature: invalid type"),
        ),
        (
            json!({"messages": {"role": "user"}}),
            Some("messages: invalid type"),
        ),
        (
            json!({"messages": [{"role": "user", "content": 5}]}),
            Some("messages.0.content: expected a string or an array of content blocks"),
        ),
        (
            json!({"messages": [{"content": "x"}]}),
            Some("messages.0: missing field `role`"),
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}, {"role": 3, "content": "y"}]}),
            Some("messages.1.role: invalid type"),
        ),
        // top_k: an integer, 0 or more.
        (json!({"top_k": 0}), None),
        (json!({"top_k": 500}), None),
        (json!({"top_k": -1}), Some("top_k: invalid value")),
        (json!({"top_k": 2.5}), Some("top_k: invalid type")),
        // stop_sequences: an array of strings.
        (json!({"stop_sequences": []}), None),
        (json!({"stop_sequences": ["\n\nHuman:", "END"]}), None),
        (
            json!({"stop_sequences": [1]}),
            Some("stop_sequences.0: invalid type"),
        ),
        // Roles: user and assistant, and system as Claude Code sends it (R6).
        (
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            Some("messages.0.role: expected user, assistant or system"),
        ),
        // system: a string or text blocks.
        (json!({"system": ""}), None),
        (json!({"system": []}), None),
        (
            json!({"system": 5}),
            Some("system: expected a string or an array of content blocks"),
        ),
        (
            json!({"system": [{"type": "text", "text": "a"}, {"type": "image", "source": {}}]}),
            Some("system.1.type: only text blocks are allowed in system"),
        ),
        // metadata.user_id: a string.
        (json!({"metadata": {"user_id": "u-1"}}), None),
        (json!({"metadata": {"user_id": null}}), None),
        (
            json!({"metadata": {"user_id": 5}}),
            Some("metadata.user_id: invalid type"),
        ),
        (json!({"metadata": "me"}), Some("metadata: invalid type")),
        // Tools: a name matching ^[a-zA-Z0-9_-]{1,128}$, unique; input_schema an object.
        (
            json!({"tools": [tool("mcp__github__create_pull_request")]}),
            None,
        ),
        (json!({"tools": [tool(&"a".repeat(128))]}), None),
        (
            json!({"tools": [{"input_schema": {}}]}),
            Some("tools.0.name: Field required"),
        ),
        (
            json!({"tools": [tool("has space")]}),
            Some("tools.0.name: String should match pattern"),
        ),
        (
            json!({"tools": [tool("")]}),
            Some("tools.0.name: String should match pattern"),
        ),
        (
            json!({"tools": [tool("ok"), tool(&"a".repeat(129))]}),
            Some("tools.1.name: String should match pattern"),
        ),
        (
            json!({"tools": [{"name": "t", "input_schema": "object"}]}),
            Some("tools.0.input_schema: Input should be a valid dictionary"),
        ),
        (
            json!({"tools": [tool("t"), tool("t")]}),
            Some("tools: Tool names must be unique"),
        ),
        (json!({"tools": "Read"}), Some("tools: invalid type")),
        // Server tools keep their own names.
        (
            json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            None,
        ),
        // tool_choice: auto, any, none, or tool with a name.
        (
            json!({"tool_choice": {"type": "sometimes"}}),
            Some("tool_choice.type: expected one of auto, any, tool, none"),
        ),
        (
            json!({"tool_choice": {"name": "x"}}),
            Some("tool_choice: missing field `type`"),
        ),
        (
            json!({"tool_choice": "auto"}),
            Some("tool_choice: invalid type"),
        ),
        (
            json!({"tool_choice": {"type": "tool", "name": 5}}),
            Some("tool_choice.name: invalid type"),
        ),
        // thinking: enabled with 1,024 <= budget < max_tokens; disabled; adaptive.
        (
            json!({"max_tokens": 2048, "thinking": {"type": "enabled", "budget_tokens": 1024}}),
            None,
        ),
        (
            json!({"max_tokens": 1025, "thinking": {"type": "enabled", "budget_tokens": 1024}}),
            None,
        ),
        (
            json!({"max_tokens": 2048, "thinking": {"type": "enabled", "budget_tokens": 1023}}),
            Some("thinking.budget_tokens: Input should be greater than or equal to 1024"),
        ),
        (
            json!({"max_tokens": 2048, "thinking": {"type": "enabled"}}),
            Some("thinking.budget_tokens: Field required"),
        ),
        (
            json!({"max_tokens": 1024, "thinking": {"type": "enabled", "budget_tokens": 1024}}),
            Some("max_tokens: must be greater than thinking.budget_tokens"),
        ),
        (json!({"thinking": {"type": "disabled"}}), None),
        (json!({"thinking": {"type": "adaptive"}}), None),
        (
            json!({"thinking": {"type": "on"}}),
            Some("thinking.type: expected one of enabled, disabled, adaptive"),
        ),
        (
            json!({"thinking": {"type": "enabled", "budget_tokens": "lots"}}),
            Some("thinking.budget_tokens: invalid type"),
        ),
    ];
    for (extra, want) in table {
        let mut body = base();
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        match (generate(body), want) {
            (Ok(_), None) => {}
            (Err(e), Some(want)) => assert!(e.0.starts_with(want), "{extra}: {}", e.0),
            (got, want) => panic!("{extra}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn count_tokens_checks_tools_and_thinking_too() {
    let count = |extra: Value| {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        parse_count_tokens(body.to_string().as_bytes())?.into_generate()
    };
    assert!(count(json!({"thinking": {"type": "enabled", "budget_tokens": 50000}})).is_ok());
    let table = [
        (
            json!({"tools": [{"name": "a b"}]}),
            "tools.0.name: String should match pattern",
        ),
        (
            json!({"thinking": {"type": "enabled", "budget_tokens": 10}}),
            "thinking.budget_tokens: Input should be greater than or equal to 1024",
        ),
        (json!({"system": 1}), "system: expected a string"),
    ];
    for (extra, want) in table {
        let err = count(extra.clone()).unwrap_err();
        assert!(err.0.starts_with(want), "{extra}: {}", err.0);
    }
}
