//! The neutral request as an OpenAI Chat Completions body, streamed, in the dialect the
//! OpenAI-compatible servers share: `top_k`, `min_p` and `chat_template_kwargs` are not
//! OpenAI's own, but vLLM, SGLang and llama-server read them and the others ignore them.

use pensieve_engine::{GenerateRequest, Message, Role, ToolChoice};
use serde_json::{json, Map, Value};

use crate::UpstreamError;

/// The body of `POST {base}/chat/completions` for `request`, asking the upstream's
/// `model` for a stream that ends with its usage.
pub fn chat_request(request: &GenerateRequest, model: &str) -> Result<Value, UpstreamError> {
    if request.raw_prompt.is_some() {
        return Err(UpstreamError::Unsupported(
            "a text completion has no chat form: it goes to the upstream's /v1/completions".into(),
        ));
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert(
        "messages".into(),
        Value::Array(request.messages.iter().map(message).collect()),
    );
    body.insert("max_tokens".into(), json!(request.max_tokens));
    body.insert("stream".into(), json!(true));
    body.insert("stream_options".into(), json!({"include_usage": true}));
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                let mut function = Map::new();
                function.insert("name".into(), json!(t.name));
                if let Some(d) = &t.description {
                    function.insert("description".into(), json!(d));
                }
                function.insert("parameters".into(), t.parameters.clone());
                json!({"type": "function", "function": function})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
        body.insert("tool_choice".into(), tool_choice(&request.tool_choice));
        body.insert(
            "parallel_tool_calls".into(),
            json!(request.parallel_tool_calls),
        );
    }
    let s = &request.sampling;
    body.insert("temperature".into(), json!(s.temperature));
    if let Some(p) = s.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if let Some(k) = s.top_k {
        body.insert("top_k".into(), json!(k));
    }
    if let Some(p) = s.min_p {
        body.insert("min_p".into(), json!(p));
    }
    if let Some(seed) = s.seed {
        body.insert("seed".into(), json!(seed));
    }
    if s.presence_penalty != 0.0 {
        body.insert("presence_penalty".into(), json!(s.presence_penalty));
    }
    if s.frequency_penalty != 0.0 {
        body.insert("frequency_penalty".into(), json!(s.frequency_penalty));
    }
    if !s.logit_bias.is_empty() {
        let bias: Map<String, Value> = s
            .logit_bias
            .iter()
            .map(|(token, b)| (token.to_string(), json!(b)))
            .collect();
        body.insert("logit_bias".into(), Value::Object(bias));
    }
    if !request.stop_sequences.is_empty() {
        body.insert("stop".into(), json!(request.stop_sequences));
    }
    // As the local engine passes it to the chat template: a reasoning model thinks when
    // the client asked for thinking.
    body.insert(
        "chat_template_kwargs".into(),
        json!({"enable_thinking": request.thinking}),
    );
    if let Some(effort) = request.effort {
        body.insert("reasoning_effort".into(), json!(effort.as_str()));
    }
    if let Some(schema) = &request.output_schema {
        body.insert(
            "response_format".into(),
            json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": true}}),
        );
    }
    Ok(Value::Object(body))
}

fn tool_choice(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => json!("auto"),
        ToolChoice::Required => json!("required"),
        ToolChoice::None => json!("none"),
        ToolChoice::Named(name) => json!({"type": "function", "function": {"name": name}}),
    }
}

fn message(m: &Message) -> Value {
    match m.role {
        Role::System | Role::User => json!({"role": m.role.as_str(), "content": m.content}),
        Role::Tool => json!({
            "role": "tool",
            "tool_call_id": m.tool_call_id.clone().unwrap_or_default(),
            "content": m.content,
        }),
        Role::Assistant => {
            let mut out = Map::new();
            out.insert("role".into(), json!("assistant"));
            // OpenAI's shape for a turn that only calls tools: no text, `null` content.
            out.insert(
                "content".into(),
                if m.content.is_empty() && !m.tool_calls.is_empty() {
                    Value::Null
                } else {
                    json!(m.content)
                },
            );
            if !m.tool_calls.is_empty() {
                let calls: Vec<Value> = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        json!({
                            "id": c.id,
                            "type": "function",
                            // OpenAI carries arguments as a JSON string.
                            "function": {"name": c.name, "arguments": c.arguments.to_string()},
                        })
                    })
                    .collect();
                out.insert("tool_calls".into(), Value::Array(calls));
            }
            Value::Object(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pensieve_engine::{Effort, RawPrompt, SamplingParams, ToolCall, ToolSpec};

    fn conversation() -> GenerateRequest {
        let mut call = Message::text(Role::Assistant, "");
        call.tool_calls.push(ToolCall {
            id: "toolu_1".into(),
            name: "get_weather".into(),
            arguments: json!({"city": "Paris"}),
        });
        let mut result = Message::text(Role::Tool, "Sunny, 22 degrees.");
        result.tool_call_id = Some("toolu_1".into());
        let mut request = GenerateRequest::new(
            "claude-opus-5-5",
            vec![
                Message::text(Role::System, "Be brief."),
                Message::text(Role::User, "Weather in Paris?"),
                call,
                result,
            ],
            256,
        );
        request.tools.push(ToolSpec {
            name: "get_weather".into(),
            description: Some("The weather now.".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
        });
        request
    }

    #[test]
    fn a_tool_conversation_takes_openais_shape() {
        let body = chat_request(&conversation(), "Qwen/Qwen3-32B").unwrap();
        assert_eq!(body["model"], "Qwen/Qwen3-32B");
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["max_tokens"], 256);
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(
            messages[0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(messages[1]["role"], "user");
        assert_eq!(messages[2]["content"], Value::Null);
        let call = &messages[2]["tool_calls"][0];
        assert_eq!(call["id"], "toolu_1");
        assert_eq!(call["function"]["name"], "get_weather");
        let arguments: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments, json!({"city": "Paris"}));
        assert_eq!(
            messages[3],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny, 22 degrees."})
        );
        let tool = &body["tools"][0];
        assert_eq!(tool["type"], "function");
        assert_eq!(tool["function"]["description"], "The weather now.");
        assert_eq!(tool["function"]["parameters"]["type"], "object");
        assert_eq!(body["tool_choice"], "auto");
        assert_eq!(body["parallel_tool_calls"], true);
    }

    #[test]
    fn tool_choices_and_sampling_map_to_their_fields() {
        let mut request = conversation();
        for (choice, want) in [
            (ToolChoice::Required, json!("required")),
            (ToolChoice::None, json!("none")),
            (
                ToolChoice::Named("get_weather".into()),
                json!({"type": "function", "function": {"name": "get_weather"}}),
            ),
        ] {
            request.tool_choice = choice;
            assert_eq!(chat_request(&request, "m").unwrap()["tool_choice"], want);
        }
        request.sampling = SamplingParams {
            temperature: 0.7,
            top_p: Some(0.9),
            top_k: Some(40),
            min_p: Some(0.05),
            seed: Some(7),
            presence_penalty: 0.5,
            frequency_penalty: 0.0,
            logit_bias: vec![(13, -100.0)],
            logprobs: None,
        };
        request.stop_sequences = vec!["</answer>".into()];
        request.thinking = true;
        request.effort = Some(Effort::High);
        request.output_schema = Some(json!({"type": "object"}));
        let body = chat_request(&request, "m").unwrap();
        assert_eq!(body["temperature"].as_f64().unwrap() as f32, 0.7);
        assert_eq!(body["top_p"].as_f64().unwrap() as f32, 0.9);
        assert_eq!(
            (body["top_k"].clone(), body["seed"].clone()),
            (json!(40), json!(7))
        );
        assert_eq!(body["presence_penalty"], 0.5);
        assert!(
            body.get("frequency_penalty").is_none(),
            "zero is the default"
        );
        assert_eq!(body["logit_bias"], json!({"13": -100.0}));
        assert_eq!(body["stop"], json!(["</answer>"]));
        assert_eq!(body["chat_template_kwargs"]["enable_thinking"], true);
        assert_eq!(body["reasoning_effort"], "high");
        assert_eq!(
            body["response_format"]["json_schema"]["schema"],
            json!({"type": "object"})
        );
    }

    #[test]
    fn without_tools_no_tool_fields_and_a_text_completion_is_refused() {
        let request = GenerateRequest::new("m", vec![Message::text(Role::User, "Hi")], 16);
        let body = chat_request(&request, "m").unwrap();
        for field in [
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "stop",
            "top_k",
        ] {
            assert!(body.get(field).is_none(), "{field}");
        }
        assert_eq!(body["chat_template_kwargs"]["enable_thinking"], false);
        let mut raw = request;
        raw.raw_prompt = Some(RawPrompt::Text("Once upon".into()));
        assert!(matches!(
            chat_request(&raw, "m"),
            Err(UpstreamError::Unsupported(_))
        ));
    }
}
