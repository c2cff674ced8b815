//! Hostile chat-template text compiled and rendered as a model's own template would be,
//! over a small fixed conversation with tools. Syntax and render errors are fine; a panic,
//! a render that runs past the fuzzer's 1 s timeout or allocates past its memory limit is
//! the bug (the environment's fuel and output limits must stop it first).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pensieve_engine::template::{ChatTemplate, RenderOptions, SpecialTokens};
use pensieve_engine::{Message, Role, ToolCall, ToolFormat, ToolSpec};

fn conversation() -> (Vec<Message>, Vec<ToolSpec>) {
    let call = Message {
        reasoning: Some("The user wants the weather.".into()),
        tool_calls: vec![ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: serde_json::json!({"city": "Paris", "days": 2}),
        }],
        ..Message::text(Role::Assistant, "")
    };
    let result = Message {
        tool_call_id: Some("call_1".into()),
        name: Some("get_weather".into()),
        ..Message::text(Role::Tool, "{\"temp\": 21}")
    };
    let messages = vec![
        Message::text(Role::System, "You are terse."),
        Message::text(Role::User, "Weather in Paris?"),
        call,
        result,
        Message::text(Role::User, "And tomorrow?"),
    ];
    let tools = vec![ToolSpec {
        name: "get_weather".into(),
        description: Some("The weather of a city.".into()),
        parameters: serde_json::json!({"type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"]}),
    }];
    (messages, tools)
}

fuzz_target!(|data: &[u8]| {
    let source = String::from_utf8_lossy(data);
    let tokens = SpecialTokens {
        bos: "<s>".into(),
        eos: "</s>".into(),
    };
    let Ok(template) = ChatTemplate::from_source(&source, tokens) else {
        return;
    };
    let (mut messages, tools) = conversation();
    let opts = RenderOptions {
        enable_thinking: true,
        reasoning_effort: Some("high".into()),
        tool_format: ToolFormat::detect(&source),
    };
    let _ = template.render(&messages, &tools, &opts);
    // A final assistant turn with text is continued as a prefill.
    messages.push(Message::text(Role::Assistant, "Tomorrow"));
    let _ = template.render(&messages, &[], &RenderOptions::default());
});
