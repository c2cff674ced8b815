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
    assert!(e.message.contains("text only"), "{e}");
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
