//! Template tests. The fixture tests compare our renders with Python's jinja2 set
//! up as Hugging Face's `apply_chat_template` sets it up: `fixtures/generate.py`
//! renders every case in `fixtures/cases.json` with every template and writes
//! `fixtures/expected/<template>/<case>.txt`. `smollm2.jinja` and
//! `qwen2.5-coder.jinja` are the `tokenizer.chat_template` strings of
//! SmolLM2-135M-Instruct.Q4_1.gguf and Qwen2.5-Coder-0.5B-Instruct.gguf, read with
//! the `gguf` Python package; the BOS/EOS strings in `cases.json` come from the same
//! files. The templates of current coding models (Qwen3-Coder, Qwen3.5, Nemotron 3
//! Nano, GLM-4.6, GLM-4.7-Flash, gpt-oss, Gemma 4, MiniMax-M2) are stored unmodified;
//! `fixtures/SOURCES.md` names where each comes from. A case jinja2 refuses is
//! expected as `<case>.error`, and must fail here too. After changing a case or a
//! built-in template, rerun `generate.py`.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::*;
use crate::request::{Role, ToolCall};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/template/fixtures")
}

fn tokens(bos: &str, eos: &str) -> SpecialTokens {
    SpecialTokens {
        bos: bos.to_owned(),
        eos: eos.to_owned(),
    }
}

fn user(text: &str) -> Message {
    Message::text(Role::User, text)
}

fn system(text: &str) -> Message {
    Message::text(Role::System, text)
}

fn assistant(text: &str) -> Message {
    Message::text(Role::Assistant, text)
}

fn str_field(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn parse_message(value: &Value) -> Message {
    let role = match value["role"].as_str() {
        Some("system") => Role::System,
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("tool") => Role::Tool,
        other => panic!("fixture message has an unknown role {other:?}"),
    };
    let tool_calls = value
        .get("tool_calls")
        .and_then(Value::as_array)
        .map(|calls| {
            calls
                .iter()
                .map(|call| ToolCall {
                    id: str_field(call, "id").unwrap_or_default(),
                    name: str_field(call, "name").unwrap_or_default(),
                    arguments: call["arguments"].clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    Message {
        role,
        content: str_field(value, "content").unwrap_or_default(),
        reasoning: str_field(value, "reasoning"),
        tool_calls,
        tool_call_id: str_field(value, "tool_call_id"),
        name: str_field(value, "name"),
    }
}

fn parse_tool(value: &Value) -> ToolSpec {
    ToolSpec {
        name: str_field(value, "name").unwrap_or_default(),
        description: str_field(value, "description"),
        parameters: value["parameters"].clone(),
    }
}

/// `generate.py`'s FIXED_NOW: what `strftime_now` sees in the fixture renders.
fn fixed_now() -> chrono::NaiveDateTime {
    chrono::NaiveDate::from_ymd_opt(2024, 7, 26)
        .and_then(|day| day.and_hms_opt(9, 5, 3))
        .expect("a valid date")
}

fn fixture_template(info: &Value) -> ChatTemplate {
    let tokens = tokens(
        info["bos"].as_str().unwrap_or_default(),
        info["eos"].as_str().unwrap_or_default(),
    );
    if let Some(file) = info["file"].as_str() {
        let source =
            std::fs::read_to_string(fixtures().join(file)).expect("fixture template is readable");
        return ChatTemplate::from_source(&source, tokens)
            .expect("fixture template compiles")
            .with_fixed_now(fixed_now());
    }
    let kind = match info["builtin"].as_str() {
        Some("chatml") => BuiltinTemplate::ChatMl,
        Some("gemma") => BuiltinTemplate::Gemma,
        Some("llama3") => BuiltinTemplate::Llama3,
        other => panic!("unknown built-in template {other:?}"),
    };
    ChatTemplate::builtin(kind, tokens)
}

/// `fixtures/cases.json`: templates, tool sets and cases.
fn cases() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("cases.json")).expect("cases.json is readable"),
    )
    .expect("cases.json is JSON")
}

#[test]
fn renders_like_hugging_face_jinja2() {
    let spec = cases();
    let templates = spec["templates"]
        .as_object()
        .expect("templates is an object");
    let default_templates: Vec<&str> = templates
        .keys()
        .map(String::as_str)
        .filter(|name| *name != "python-compat")
        .collect();
    let mut failures = Vec::new();
    let mut checked = 0;
    let (mut rendered, mut with_points) = (0, 0);
    for (name, info) in templates {
        let template = fixture_template(info);
        for case in spec["cases"].as_array().expect("cases is an array") {
            let case_name = case["name"].as_str().unwrap_or_default();
            let applies = match case.get("templates").and_then(Value::as_array) {
                Some(list) => list.iter().any(|t| t.as_str() == Some(name.as_str())),
                None => default_templates.contains(&name.as_str()),
            };
            if !applies {
                continue;
            }
            let messages: Vec<Message> = case["messages"]
                .as_array()
                .expect("messages is an array")
                .iter()
                .map(parse_message)
                .collect();
            let tools: Vec<ToolSpec> = match case["tools"].as_str() {
                Some(set) => spec["tool_sets"][set]
                    .as_array()
                    .expect("tool set exists")
                    .iter()
                    .map(parse_tool)
                    .collect(),
                None => Vec::new(),
            };
            let opts = RenderOptions {
                enable_thinking: case["enable_thinking"].as_bool().unwrap_or(false),
                reasoning_effort: str_field(case, "reasoning_effort"),
                tool_format: info["format"].as_str().map(|name| {
                    ToolFormat::from_name(name).unwrap_or_else(|| panic!("no format {name}"))
                }),
            };
            let dir = fixtures().join("expected").join(name);
            checked += 1;
            // jinja2 refused the case: the template must refuse it here too.
            let refused = dir.join(format!("{case_name}.error"));
            if refused.exists() {
                if let Ok(actual) = template.render(&messages, &tools, &opts) {
                    let why = std::fs::read_to_string(&refused).unwrap_or_default();
                    failures.push(format!(
                        "{name}/{case_name}: jinja2 failed ({}) but minijinja rendered:\n{actual}\n",
                        why.trim()
                    ));
                }
                continue;
            }
            let path = dir.join(format!("{case_name}.txt"));
            let expected =
                std::fs::read_to_string(&path).expect("expected output exists; run generate.py");
            // Cache breakpoints after every message and the preamble never change the
            // prompt; where the template keeps them, they are places in it.
            let points: Vec<Breakpoint> = std::iter::once(Breakpoint::Preamble)
                .chain((0..messages.len()).map(Breakpoint::After))
                .collect();
            match template.render_with_breakpoints(&messages, &tools, &opts, &points) {
                Ok((prompt, found)) => {
                    rendered += 1;
                    with_points += usize::from(!found.is_empty());
                    let misplaced = found
                        .iter()
                        .any(|(at, _)| *at > prompt.len() || !prompt.is_char_boundary(*at));
                    if prompt != expected || misplaced {
                        failures.push(format!("{name}/{case_name}: breakpoints {found:?}"));
                    }
                }
                Err(err) => failures.push(format!("{name}/{case_name} with breakpoints: {err}")),
            }
            match template.render(&messages, &tools, &opts) {
                Ok(actual) if actual == expected => {}
                Ok(actual) => failures.push(format!(
                    "{name}/{case_name}:\n--- expected (jinja2)\n{expected}\n--- actual (minijinja)\n{actual}\n"
                )),
                Err(err) => failures.push(format!("{name}/{case_name}: {err}")),
            }
        }
    }
    assert!(checked >= 489, "only {checked} fixture renders ran");
    assert_eq!(
        with_points, rendered,
        "renders that lost their cache breakpoints"
    );
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn raise_exception_surfaces_as_render_error_with_its_message() {
    let source = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with ' ~ 'a user') }}{% endif %}ok";
    let template = ChatTemplate::from_source(source, SpecialTokens::default()).expect("compiles");
    let err = template
        .render(
            &[assistant("hi"), user("q")],
            &[],
            &RenderOptions::default(),
        )
        .expect_err("the template refuses");
    assert_eq!(
        err,
        TemplateError::Render("Conversation must start with a user".to_owned())
    );
    assert!(err
        .to_string()
        .contains("Conversation must start with a user"));
}

#[test]
fn raise_exception_inside_a_macro_keeps_its_message() {
    let source = "{% macro check(m) %}{{ raise_exception('bad role ' ~ m.role) }}{% endmacro %}{{ check(messages[0]) }}";
    let template = ChatTemplate::from_source(source, SpecialTokens::default()).expect("compiles");
    let err = template
        .render(&[user("q")], &[], &RenderOptions::default())
        .expect_err("raises");
    assert_eq!(err, TemplateError::Render("bad role user".to_owned()));
}

#[test]
fn other_render_failures_name_the_cause_and_location() {
    let template =
        ChatTemplate::from_source("{{ messages[0].content + 1 }}", SpecialTokens::default())
            .expect("compiles");
    let err = template
        .render(&[user("q")], &[], &RenderOptions::default())
        .expect_err("fails");
    let TemplateError::Render(message) = err else {
        panic!("expected a render error, got {err:?}");
    };
    assert!(message.contains("chat_template"), "{message}");
}

#[test]
fn syntax_errors_surface_at_compile_time() {
    let err = ChatTemplate::from_source(
        "{% for m in messages %}{{ m.content }}",
        SpecialTokens::default(),
    )
    .expect_err("unclosed for");
    assert!(matches!(err, TemplateError::Syntax(_)), "{err:?}");
    assert!(err.to_string().contains("syntax error"), "{err}");
}

/// `{%}` is a syntax error, not a panic while the generation tags are rewritten (the
/// `chat_template` fuzz target found it: the `%}` search overlapped the `{%`).
#[test]
fn a_tag_closed_by_its_own_percent_is_a_syntax_error() {
    for source in ["{%}", "{%}{% generation %}x{% endgeneration %}", "a{%-}"] {
        let err = ChatTemplate::from_source(source, SpecialTokens::default())
            .expect_err("not a template");
        assert!(matches!(err, TemplateError::Syntax(_)), "{source}: {err:?}");
    }
    let template = ChatTemplate::from_source(
        "{%- generation -%}ok{%- endgeneration -%}",
        SpecialTokens::default(),
    )
    .expect("compiles");
    let prompt = template.render(&[user("q")], &[], &RenderOptions::default());
    assert_eq!(prompt.as_deref(), Ok("ok"));
}

#[test]
fn mid_conversation_system_is_folded_when_the_template_refuses_it() {
    let source = "{% for m in messages %}{% if m.role == 'system' and not loop.first %}{{ raise_exception('System message must be first') }}{% endif %}[{{ m.role }}:{{ m.content }}]{% endfor %}";
    let template = ChatTemplate::from_source(source, SpecialTokens::default()).expect("compiles");
    let conversation = [
        system("s"),
        user("q"),
        system("reminder"),
        assistant("a"),
        user("q2"),
        system("late"),
    ];
    let prompt = template
        .render(&conversation, &[], &RenderOptions::default())
        .expect("renders after folding");
    assert_eq!(
        prompt,
        // "reminder" and "late" follow user turns, so they move above them, into the
        // start of the user's turn (the system prompt stays as it was).
        "[system:s][user:reminder\n\nq][assistant:a][user:late\n\nq2]"
    );
}

#[test]
fn the_retry_error_is_returned_when_folding_does_not_help() {
    let source = "{% if messages|length > 1 %}{{ raise_exception('one message only') }}{% endif %}";
    let template = ChatTemplate::from_source(source, SpecialTokens::default()).expect("compiles");
    let err = template
        .render(
            &[user("q"), system("s"), assistant("a"), user("q2")],
            &[],
            &RenderOptions::default(),
        )
        .expect_err("still fails");
    assert_eq!(err, TemplateError::Render("one message only".to_owned()));
}

#[test]
fn prefill_fails_clearly_when_the_template_drops_the_last_message() {
    let source = "{% for m in messages[:-1] %}{{ m.content }}{% endfor %}";
    let template = ChatTemplate::from_source(source, SpecialTokens::default()).expect("compiles");
    let err = template
        .render(
            &[user("q"), assistant("partial")],
            &[],
            &RenderOptions::default(),
        )
        .expect_err("no place to continue");
    assert_eq!(err, TemplateError::PrefillDropped);
}

#[test]
fn prefill_marker_never_collides_with_message_text() {
    let conversation = [user(PREFILL_MARKER), assistant("go")];
    let marker = unique_marker(&conversation);
    assert!(!conversation.iter().any(|m| m.content.contains(&marker)));
    let template = ChatTemplate::from_source(
        "{% for m in messages %}<{{ m.content }}>{% endfor %}",
        SpecialTokens::default(),
    )
    .expect("compiles");
    let prompt = template
        .render(&conversation, &[], &RenderOptions::default())
        .expect("renders");
    assert_eq!(prompt, format!("<{PREFILL_MARKER}><go"));
}

#[test]
fn rendering_is_deterministic() {
    let template = ChatTemplate::builtin(BuiltinTemplate::ChatMl, SpecialTokens::default());
    let tools = [ToolSpec {
        name: "f".into(),
        description: None,
        parameters: json!({"type": "object", "properties": {"z": {}, "a": {}, "m": {}}}),
    }];
    let conversation = [system("s"), user("q")];
    let first = template
        .render(&conversation, &tools, &RenderOptions::default())
        .expect("renders");
    for _ in 0..10 {
        let again = template
            .render(&conversation, &tools, &RenderOptions::default())
            .expect("renders");
        assert_eq!(again, first);
    }
    // Keys keep the client's order, as Python dicts do.
    assert!(first.contains(r#"{"z": {}, "a": {}, "m": {}}"#), "{first}");
}

#[test]
fn fallback_is_chosen_by_architecture_and_vocabulary() {
    let plain = tokens("<s>", "</s>");
    let llama3 = tokens("<|begin_of_text|>", "<|eot_id|>");
    assert_eq!(
        BuiltinTemplate::for_model("gemma3", &plain),
        BuiltinTemplate::Gemma
    );
    assert_eq!(
        BuiltinTemplate::for_model("gemma2", &plain),
        BuiltinTemplate::Gemma
    );
    assert_eq!(
        BuiltinTemplate::for_model("gemma", &plain),
        BuiltinTemplate::Gemma
    );
    assert_eq!(
        BuiltinTemplate::for_model("llama", &llama3),
        BuiltinTemplate::Llama3
    );
    assert_eq!(
        BuiltinTemplate::for_model("llama", &plain),
        BuiltinTemplate::ChatMl
    );
    assert_eq!(
        BuiltinTemplate::for_model("qwen2", &plain),
        BuiltinTemplate::ChatMl
    );

    let gemma =
        ChatTemplate::for_model(None, "gemma3", tokens("<bos>", "<eos>")).expect("fallback");
    assert_eq!(gemma.describe(), "built-in gemma");
    let blank = ChatTemplate::for_model(Some("  \n"), "llama", plain.clone()).expect("fallback");
    assert_eq!(blank.describe(), "built-in chatml");
    let own = ChatTemplate::for_model(Some("{{ messages[0].content }}"), "gemma3", plain)
        .expect("compiles");
    assert_eq!(own.describe(), "model template");
}

#[test]
fn builtin_templates_compile() {
    for kind in [
        BuiltinTemplate::ChatMl,
        BuiltinTemplate::Gemma,
        BuiltinTemplate::Llama3,
    ] {
        let template = ChatTemplate::builtin(kind, SpecialTokens::default());
        template
            .render(&[user("q")], &[], &RenderOptions::default())
            .expect("renders");
    }
}

#[test]
fn gemma_puts_system_text_at_the_start_of_the_first_user_turn() {
    let template = ChatTemplate::builtin(BuiltinTemplate::Gemma, tokens("<bos>", "<eos>"));
    let prompt = template
        .render(
            &[
                system("Be brief."),
                user("Hi"),
                assistant("Hello"),
                user("Bye"),
            ],
            &[],
            &RenderOptions::default(),
        )
        .expect("renders");
    assert_eq!(
        prompt,
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n\
         <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    );
}

#[test]
fn llama3_uses_header_tokens() {
    let template = ChatTemplate::builtin(
        BuiltinTemplate::Llama3,
        tokens("<|begin_of_text|>", "<|eot_id|>"),
    );
    let prompt = template
        .render(&[user(" Hi ")], &[], &RenderOptions::default())
        .expect("renders");
    assert_eq!(
        prompt,
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn enable_thinking_and_special_tokens_are_passed_through() {
    let template = ChatTemplate::from_source(
        "{{ bos_token }}|{{ eos_token }}|{{ enable_thinking }}|{{ add_generation_prompt }}|{{ tools }}",
        tokens("<s>", "</s>"),
    )
    .expect("compiles");
    let opts = RenderOptions {
        enable_thinking: true,
        ..RenderOptions::default()
    };
    let prompt = template.render(&[user("q")], &[], &opts).expect("renders");
    assert_eq!(prompt, "<s>|</s>|True|True|None");
}

#[test]
fn reasoning_effort_is_defined_only_when_set() {
    let template = ChatTemplate::from_source(
        "{{ reasoning_effort is defined }}|{{ reasoning_effort | default('medium') }}",
        SpecialTokens::default(),
    )
    .expect("compiles");
    let unset = template
        .render(&[user("q")], &[], &RenderOptions::default())
        .expect("renders");
    assert_eq!(unset, "False|medium");
    let opts = RenderOptions {
        reasoning_effort: Some("high".to_owned()),
        ..RenderOptions::default()
    };
    let set = template.render(&[user("q")], &[], &opts).expect("renders");
    assert_eq!(set, "True|high");
}

#[test]
fn reasoning_reaches_templates_as_reasoning_content_and_thinking() {
    let template = ChatTemplate::from_source(
        "{% for m in messages %}[{{ m.reasoning_content }}|{{ m.thinking }}|{{ 'thinking' in m }}]{% endfor %}",
        SpecialTokens::default(),
    )
    .expect("compiles");
    let thought = Message {
        reasoning: Some("because".to_owned()),
        ..assistant("answer")
    };
    let empty = Message {
        reasoning: Some(String::new()),
        ..assistant("again")
    };
    let prompt = template
        .render(
            &[user("q"), thought, user("q2"), empty, user("q3")],
            &[],
            &RenderOptions::default(),
        )
        .expect("renders");
    assert_eq!(
        prompt,
        "[||False][because|because|True][||False][||False][||False]"
    );
}

#[test]
fn strftime_now_can_be_pinned_for_fixtures() {
    let template = ChatTemplate::from_source(
        "{{ strftime_now('%Y-%m-%d %H:%M') }}",
        SpecialTokens::default(),
    )
    .expect("compiles")
    .with_fixed_now(fixed_now());
    let prompt = template
        .render(&[user("q")], &[], &RenderOptions::default())
        .expect("renders");
    assert_eq!(prompt, "2024-07-26 09:05");
}

#[test]
fn tools_none_is_not_iterable_as_in_jinja2() {
    // Qwen3-Coder's and Nemotron's guard; minijinja alone iterates None as empty,
    // so `tools | length` then failed on None.
    let template = ChatTemplate::from_source(
        "{% if tools is iterable and tools | length > 0 %}tools{% else %}none{% endif %}",
        SpecialTokens::default(),
    )
    .expect("compiles");
    let prompt = template
        .render(&[user("q")], &[], &RenderOptions::default())
        .expect("renders");
    assert_eq!(prompt, "none");
}

#[test]
fn generation_tags_become_plain_blocks_with_the_same_whitespace_control() {
    assert_eq!(
        strip_generation_tags(
            "a{%- generation -%}b{% endgeneration %}c{% if x %}{%+endgeneration+%}"
        ),
        "a{%- if true -%}b{% endif %}c{% if x %}{%+ endif +%}"
    );
}

#[test]
fn chat_template_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatTemplate>();
}

#[test]
fn claude_codes_breakpoints_fall_after_the_tools_and_the_shared_environment() {
    let spec = cases();
    let case = spec["cases"]
        .as_array()
        .and_then(|cases| {
            cases
                .iter()
                .find(|c| c["name"] == "claude_code_environment")
        })
        .expect("the claude_code_environment case");
    let messages: Vec<Message> = case["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(parse_message)
        .collect();
    let tools: Vec<ToolSpec> = spec["tool_sets"]["coding"]
        .as_array()
        .expect("the coding tools")
        .iter()
        .map(parse_tool)
        .collect();
    // Claude Code marks its system prompt, its environment turn and its last message.
    let points = [
        Breakpoint::Preamble,
        Breakpoint::After(2),
        Breakpoint::After(1),
    ];
    for name in ["qwen2.5-coder", "qwen3-coder", "glm-4.6"] {
        let template = fixture_template(&spec["templates"][name]);
        let opts = RenderOptions::default();
        let (prompt, found) = template
            .render_with_breakpoints(&messages, &tools, &opts, &points)
            .expect("renders");
        assert_eq!(prompt, template.render(&messages, &tools, &opts).unwrap());
        let at = |point| found.iter().find(|(_, p)| *p == point).map(|(at, _)| *at);
        let preamble = at(Breakpoint::Preamble).expect("the preamble is placed");
        let before = &prompt[..preamble];
        // The system prompt, every tool and the environment's shared lines come first.
        assert!(before.contains("You are an agent."), "{name}: {before}");
        assert!(
            before.contains("\"read_file\"") || before.contains("read_file"),
            "{name}"
        );
        assert!(before.contains("Platform: linux"), "{name}: {before}");
        assert!(before.contains("Skills: dataviz"), "{name}: {before}");
        // What names the project or the day comes after it.
        let after = &prompt[preamble..];
        for volatile in [
            "/work/app",
            "-work-app",
            "Is a git repository",
            "Today's date",
        ] {
            assert!(
                after.contains(volatile),
                "{name}: {volatile} after the preamble"
            );
            assert!(
                !before.contains(volatile),
                "{name}: {volatile} before the preamble"
            );
        }
        // The environment turn ends before the user's text, which ends the last point.
        let env_end = at(Breakpoint::After(2)).expect("the environment's end is placed");
        let last = at(Breakpoint::After(1)).expect("the last message's end is placed");
        assert!(preamble < env_end && env_end < last, "{name}: {found:?}");
        assert!(prompt[..env_end].ends_with("2026-12-03."), "{name}");
        assert!(prompt[..last].ends_with("say hi"), "{name}");
    }
}

// Hostile templates: each must fail with an error that says why, and soon (see `limits`).

/// Renders `source` over a short conversation: compile and render errors alike, as text.
fn render_hostile(source: &str) -> Result<String, String> {
    let started = std::time::Instant::now();
    let result = ChatTemplate::from_source(source, SpecialTokens::default())
        .and_then(|t| {
            t.render(
                &[user("q"), assistant("a"), user("q")],
                &[],
                &RenderOptions::default(),
            )
        })
        .map_err(|e| e.to_string());
    // Each case builds up to the text limit (1 MiB here), a few times over (the probes):
    // seconds in an unoptimised build. The fuzz target holds release builds to 1 s.
    let limit = std::time::Duration::from_secs(if cfg!(debug_assertions) { 120 } else { 10 });
    let took = started.elapsed();
    assert!(took < limit, "{source}: {took:?}");
    result
}

#[test]
fn an_endless_loop_runs_out_of_fuel() {
    let endless =
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
    // Endless on the probes' conversation: refused where the model loads.
    let err =
        ChatTemplate::from_source(endless, SpecialTokens::default()).expect_err("runs out of fuel");
    assert!(limits::out_of_fuel(&err), "{err}");
    assert!(err.to_string().contains("ran too long"), "{err}");
    // Endless only on a longer conversation: that request fails, without the retries.
    let source = format!(
        "{{% if messages|length > 2 %}}{endless}{{% endif %}}{{{{ messages[0].content }}}}"
    );
    let err = render_hostile(&source).expect_err("runs out of fuel");
    assert!(err.contains("ran too long"), "{err}");
}

#[test]
fn endless_recursion_hits_the_recursion_limit() {
    for source in [
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "{% macro f(n) %}{% for m in messages %}{{ f(n) }}{% endfor %}{% endmacro %}{{ f(0) }}",
        "{% for m in messages recursive %}{{ loop([m]) }}{% endfor %}",
    ] {
        let err = render_hostile(source).expect_err(source);
        assert!(err.contains("recursion"), "{source}: {err}");
    }
}

#[test]
fn huge_allocations_fail_with_an_error() {
    let mib = "{% set s = 'x' * 1000000 %}";
    for (source, says) in [
        (
            "{{ 'x' * 10**10 }}".to_owned(),
            "a string of 9536.7 MiB, over the 1.0 MiB",
        ),
        ("{{ range(10**9)|length }}".to_owned(), "too many elements"),
        (
            format!("{mib}{{{{ s|replace('x', s) }}}}"),
            "over the 1.0 MiB this conversation allows",
        ),
        (
            format!("{mib}{{{{ s.replace('x', s) }}}}"),
            "over the 1.0 MiB this conversation allows",
        ),
        // A string over the limit is refused where an operator built it.
        (
            "{% set s = 'x' * 70000000 %}{{ s|replace('y', s) }}".to_owned(),
            "an operator's result would be a string of 66.8 MiB, over the 1.0 MiB",
        ),
        // Doubled without end through a namespace, or a macro's argument: out of memory in
        // a few steps without the operators' bound.
        (
            "{% set ns = namespace(s='x' * 1000) %}{% for i in range(60) %}\
             {% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"
                .to_owned(),
            "an operator's result would be a string of 2.0 MiB, over the 1.0 MiB",
        ),
        (
            "{% macro d(s, n) %}{% if n %}{{ d(s + s, n - 1) }}{% endif %}{% endmacro %}\
             {{ d('x', 60) }}"
                .to_owned(),
            "an operator's result would be a string of",
        ),
        (
            "{{ ([1] * 10**7)|list|length }}".to_owned(),
            "an operator's result would be a list of over 1000000 items",
        ),
        ("{{ 'a\nb'|indent(10**12) }}".to_owned(), "over 256"),
        (
            "{{ messages|tojson(indent=10**12) }}".to_owned(),
            "over 256",
        ),
        (
            format!("{mib}{{{{ ([s] * 100000)|join }}}}"),
            "over the 1.0 MiB this conversation allows",
        ),
        // A string joins its characters, the joiner between each two.
        (
            format!("{mib}{{{{ s|join('0123456789') }}}}"),
            "over the 1.0 MiB this conversation allows",
        ),
        (
            format!("{mib}{{{{ ','.join([s] * 100000) }}}}"),
            "over the 1.0 MiB this conversation allows",
        ),
        (
            format!("{mib}{{{{ ([s] * 100000)|tojson }}}}"),
            "over the 1.0 MiB this conversation allows",
        ),
        (
            format!("{mib}{{{{ ([s] * 100000)|list }}}}"),
            "over the 1.0 MiB this conversation allows",
        ),
        (
            format!("{mib}{{{{ ([s] * 100000)|string }}}}"),
            "over the 1.0 MiB this conversation allows",
        ),
        (
            "{% for i in range(100000) %}{{ 'x' * 10000 }}{% endfor %}".to_owned(),
            "output is over the 1.0 MiB",
        ),
        // Captured prints double a string at each call of a macro that prints it twice.
        (
            "{% macro d(s) %}{{ s }}{{ s }}{% endmacro %}{{ d(d(d(d(d(d('x' * 100000)))))) }}"
                .to_owned(),
            "printed over 4.0 MiB in all",
        ),
        (
            "{{ ('\n' * 100000)|indent(100, blank=true) }}".to_owned(),
            "indent: the result would be over the 1.0 MiB",
        ),
        (
            "{% set ns = namespace(a=1) %}{% set ns.a = ns %}{{ [ns] }}".to_owned(),
            "nested more than 128 deep",
        ),
        (
            "{% set ns = namespace(a=1) %}{% set ns.a = ns %}{{ ns|tojson }}".to_owned(),
            "nested more than 128 deep",
        ),
    ] {
        let err = render_hostile(&source).expect_err(&source);
        assert!(err.contains(says), "{source}: {err}");
    }
}

/// The text limit grows with the conversation: a template that prints a 3 MB message
/// twice renders, where the same template building 3 MB out of a short one is refused.
#[test]
fn the_text_limit_scales_with_the_conversation() {
    assert_eq!(limits::cap_for(0), 1 << 20);
    assert_eq!(limits::cap_for(1 << 20), 9 << 20);
    assert_eq!(limits::cap_for(usize::MAX), super::MAX_TEXT);
    let twice = "{{ messages[0].content }}{{ messages[0].content|replace('x', 'yy') }}";
    let template = ChatTemplate::from_source(twice, SpecialTokens::default()).expect("compiles");
    let long = "x".repeat(3_000_000);
    let prompt = template
        .render(&[user(&long)], &[], &RenderOptions::default())
        .expect("renders a long conversation");
    assert_eq!(prompt.len(), 9_000_000);
    let built = "{{ 'x' * 3000000 }}{{ messages[0].content }}";
    let err = render_hostile(built).expect_err("a short conversation");
    assert!(err.contains("over the 1.0 MiB"), "{err}");
    // A string's characters joined, within the limit.
    assert_eq!(
        render_hostile("{{ 'abc'|join('--') }}{{ 'de'|join }}").as_deref(),
        Ok("a--b--cde")
    );
}

/// The real templates render long agent sessions with Claude Code's tools on a quarter of
/// their fuel: the quadratic ones (gpt-oss, Gemma 4, DeepSeek V3.2) need about 5 n² for n
/// messages, measured up to 3,000 messages.
#[test]
fn real_templates_render_long_sessions_on_a_quarter_of_the_fuel() {
    let spec = cases();
    let tools = crate::testing::claude_code_tools();
    let mut session = vec![system("You are a coding agent."), user("Fix the bug.")];
    for i in 0..1000 {
        session.push(Message {
            tool_calls: vec![ToolCall {
                id: format!("call_{i}"),
                name: "Bash".into(),
                arguments: json!({"command": format!("grep -rn bug src/{i}"), "timeout": 1000}),
            }],
            ..assistant("Looking.")
        });
        session.push(Message {
            tool_call_id: Some(format!("call_{i}")),
            ..Message::text(Role::Tool, "src/x.rs:1: bug")
        });
        session.push(user("Go on."));
    }
    for (name, info) in spec["templates"].as_object().expect("templates") {
        let mut template = fixture_template(info);
        template.fuel_divisor = 4;
        let opts = RenderOptions {
            tool_format: info["format"].as_str().and_then(ToolFormat::from_name),
            ..RenderOptions::default()
        };
        for turns in [&session[..32], &session[..302], &session[..]] {
            if let Err(err) = template.render(turns, &tools, &opts) {
                assert!(!limits::out_of_fuel(&err), "{name}, {}: {err}", turns.len());
            }
        }
    }
}

/// The inputs on which the fuzz target (coverage-instrumented, ~5 renders an input) passed
/// its time limit when the text limit was 16 MiB whatever the conversation: strings of
/// 5-100 MB from `*`, then scanned or rewritten by `replace` (the last one: 5.6 million
/// replacements). Now refused at this short conversation's 1 MiB before any scan; what is
/// left is minijinja's `*` itself (printed with --nocapture). The seventh stays under the
/// limit (a million replacements in a string of 1 MB, about 17 ms a render optimised): it
/// passed 1 s only with the fuzzer's instrumentation on a machine busy building. The
/// eighth joined the characters of a 1 MB string with a 100-byte joiner, 100 MB built
/// (630 ms optimised) before the printed-bytes count refused it; now refused first.
#[test]
fn what_the_fuzzer_found_slow_ends_quickly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/template/fixtures/slow");
    for i in 1..=8 {
        let path = dir.join(format!("fuzz-slow-{i}.bin"));
        let bytes = std::fs::read(&path).expect("fixture");
        let source = String::from_utf8_lossy(&bytes);
        let started = std::time::Instant::now();
        let result = render_hostile(&source);
        eprintln!(
            "{}: {:?} in {:?}",
            path.display(),
            result.as_ref().map(String::len),
            started.elapsed()
        );
    }
}
