//! The API through `Router::oneshot` over the scripted engine backend: status codes,
//! error envelopes, headers, auth and the SSE stream, without a model or a socket.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::StreamExt;
use http_body_util::BodyExt;
use pensieve_engine::testing::{model_info, ByteTokenizer, ScriptedRunner};
use pensieve_engine::{Engine, EngineConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::BrowserPolicy;

fn state_with(reply: &str, config: ServerConfig, context: u32) -> AppState {
    let engine = Engine::start(
        model_info(context),
        Arc::new(ByteTokenizer),
        Box::new(ScriptedRunner::new(reply)),
        EngineConfig::default(),
    )
    .unwrap();
    AppState::new(
        Arc::new(crate::ModelRouter::new(crate::ServedModel {
            id: engine.info().id.clone(),
            backend: engine.into(),
            created: std::time::SystemTime::UNIX_EPOCH,
            runs_on: "CPU, 2 threads".into(),
        })),
        config,
    )
}

fn router(reply: &str) -> Router {
    app(state_with(reply, ServerConfig::default(), 4096))
}

async fn send(
    router: Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    send_with(router, method, uri, body, &[]).await
}

async fn send_with(
    router: Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut builder = Request::builder().method(method).uri(uri);
    let typed = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
    if body.is_some() && !typed {
        builder = builder.header("content-type", "application/json");
    }
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let body = match body {
        Some(v) => Body::from(v.to_string()),
        None => Body::empty(),
    };
    let response = router.oneshot(builder.body(body).unwrap()).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, bytes)
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

fn message(stream: bool) -> Value {
    json!({"model": "claude-opus-5-5", "max_tokens": 100, "stream": stream,
           "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn non_streaming_message() {
    let (status, headers, body) = send(
        router("Hello!"),
        "POST",
        "/v1/messages?beta=true",
        Some(message(false)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["request-id"].to_str().unwrap().starts_with("req_"));
    let body = json_of(&body);
    assert!(body["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(body["model"], "claude-opus-5-5");
    assert_eq!(body["content"], json!([{"type": "text", "text": "Hello!"}]));
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["usage"]["output_tokens"], 6);
    assert!(body["usage"]["input_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn streaming_message_frames_and_order() {
    let (status, headers, body) =
        send(router("Hi"), "POST", "/v1/messages", Some(message(true))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    let text = String::from_utf8(body).unwrap();
    let frames: Vec<&str> = text.split("\n\n").filter(|f| !f.is_empty()).collect();
    let names: Vec<&str> = frames
        .iter()
        .map(|f| f.lines().next().unwrap().trim_start_matches("event: "))
        .collect();
    assert_eq!(
        names,
        vec![
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    for frame in &frames {
        let data = frame
            .lines()
            .nth(1)
            .unwrap()
            .strip_prefix("data: ")
            .unwrap();
        let event: Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            event["type"],
            frame.lines().next().unwrap().trim_start_matches("event: ")
        );
    }
    let start: Value = serde_json::from_str(
        frames[0]
            .lines()
            .nth(1)
            .unwrap()
            .trim_start_matches("data: "),
    )
    .unwrap();
    assert!(start["message"]["usage"]["input_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn v1_v1_path_is_accepted() {
    let (status, _, _) = send(router("x"), "POST", "/v1/v1/messages", Some(message(false))).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn missing_max_tokens_is_400_with_envelope() {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let (status, headers, body) = send(router("x"), "POST", "/v1/messages", Some(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let body = json_of(&body);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["message"], "max_tokens: Field required");
    assert_eq!(body["request_id"], headers["request-id"].to_str().unwrap());
}

#[tokio::test]
async fn prompt_too_long_is_400_with_claude_code_wording() {
    let state = state_with("x", ServerConfig::default(), 32);
    let mut body = message(false);
    body["messages"][0]["content"] = json!("y".repeat(100));
    let (status, _, body) = send(app(state), "POST", "/v1/messages", Some(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = json_of(&body)["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.starts_with("prompt is too long: "), "{message}");
    assert!(message.ends_with(" tokens > 31 maximum"), "{message}");
}

#[tokio::test]
async fn count_tokens_matches_generation() {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "system": "be brief"});
    let (status, _, counted) = send(
        router("x"),
        "POST",
        "/v1/messages/count_tokens",
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let counted = json_of(&counted)["input_tokens"].as_u64().unwrap();
    let mut gen = body;
    gen["max_tokens"] = json!(5);
    let (_, _, served) = send(router("x"), "POST", "/v1/messages", Some(gen)).await;
    let usage = &json_of(&served)["usage"];
    let total = usage["input_tokens"].as_u64().unwrap()
        + usage["cache_read_input_tokens"].as_u64().unwrap();
    assert_eq!(counted, total);
}

#[tokio::test]
async fn models_list_and_retrieve() {
    let (status, _, body) = send(router("x"), "GET", "/v1/models", None).await;
    assert_eq!(status, StatusCode::OK);
    let body = json_of(&body);
    assert_eq!(body["data"][0]["id"], "scripted");
    assert_eq!(body["data"][0]["type"], "model");
    assert!(body["data"][0]["created_at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(body["has_more"], false);
    assert_eq!(body["first_id"], "scripted");

    let (status, _, _) = send(router("x"), "GET", "/v1/models/scripted", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = send(router("x"), "GET", "/v1/models/claude-haiku-4-5", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(&body)["id"], "claude-haiku-4-5");
    let (status, _, body) = send(router("x"), "GET", "/v1/models/gpt-99", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json_of(&body)["error"]["type"], "not_found_error");
}

#[tokio::test]
async fn head_root_and_health() {
    let (status, _, _) = send(router("x"), "HEAD", "/", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = send(router("x"), "GET", "/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(&body)["status"], "ok");
    assert_eq!(json_of(&body)["runs_on"], "CPU, 2 threads");
}

#[tokio::test]
async fn unknown_route_is_404_envelope() {
    let (status, _, body) = send(router("x"), "GET", "/v2/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json_of(&body)["error"]["type"], "not_found_error");
}

#[tokio::test]
async fn api_key_is_enforced() {
    let config = ServerConfig {
        api_key: Some("sekrit".into()),
        ..ServerConfig::default()
    };
    let state = state_with("ok", config, 4096);
    let (status, _, body) = send_with(
        app(state.clone()),
        "POST",
        "/v1/messages",
        Some(message(false)),
        &[("x-api-key", "wrong")],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json_of(&body)["error"]["type"], "authentication_error");
    let (status, _, _) = send(app(state.clone()), "GET", "/v1/models", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = send_with(
        app(state.clone()),
        "POST",
        "/v1/messages",
        Some(message(false)),
        &[("x-api-key", "sekrit")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send_with(
        app(state.clone()),
        "POST",
        "/v1/messages",
        Some(message(false)),
        &[("authorization", "Bearer sekrit")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Liveness needs no key.
    let (status, _, _) = send(app(state), "GET", "/health", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn oversized_body_is_413() {
    let config = ServerConfig {
        body_limit: 1024,
        ..ServerConfig::default()
    };
    let mut body = message(false);
    body["messages"][0]["content"] = json!("z".repeat(4096));
    let (status, _, bytes) = send(
        app(state_with("x", config, 100_000)),
        "POST",
        "/v1/messages",
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json_of(&bytes)["error"]["type"], "request_too_large");
}

#[tokio::test]
async fn oversized_chunked_body_is_413() {
    // No content-length: the limit is found while reading.
    let config = ServerConfig {
        body_limit: 1024,
        ..ServerConfig::default()
    };
    let chunks = (0..8).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 512])));
    let request = Request::builder()
        .method("POST")
        .uri("/v1/messages")
        .header("content-type", "application/json")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let response = app(state_with("x", config, 4096))
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_body_that_never_ends_is_408() {
    let config = ServerConfig {
        body_timeout: std::time::Duration::from_millis(100),
        ..ServerConfig::default()
    };
    // A few bytes, then nothing: the client promised more and stalls.
    let first = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{"))]);
    let stalled = first.chain(futures::stream::pending());
    let request = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from_stream(stalled))
        .unwrap();
    let response = app(state_with("x", config, 4096))
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(json_of(&body)["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn unknown_fields_and_beta_headers_are_ignored() {
    let mut body = message(false);
    body["context_management"] = json!({"edits": []});
    body["output_config"] = json!({"effort": "medium"});
    body["thinking"] = json!({"type": "adaptive", "display": "omitted"});
    let (status, _, _) = send_with(
        router("x"),
        "POST",
        "/v1/messages?beta=true",
        Some(body),
        &[
            (
                "anthropic-beta",
                "claude-code-20250219,interleaved-thinking-2025-05-14",
            ),
            ("anthropic-version", "2023-06-01"),
            ("x-app", "cli"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn invalid_json_is_400() {
    let request = Request::builder()
        .method("POST")
        .uri("/v1/messages")
        .header("content-type", "application/json")
        .body(Body::from("{nope"))
        .unwrap();
    let response = router("x").oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

/// The value of the sample line that starts with `series` (name plus labels, exactly).
fn sample(text: &str, series: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(str::to_owned)
}

async fn scrape(router: Router) -> String {
    let (status, headers, body) = send(router, "GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    String::from_utf8(body).unwrap()
}

#[tokio::test]
async fn metrics_needs_no_key_and_counts_requests_by_status() {
    let config = ServerConfig {
        api_key: Some("sekrit".into()),
        ..ServerConfig::default()
    };
    let state = state_with("ok", config, 4096);
    let (status, _, _) = send(
        app(state.clone()),
        "POST",
        "/v1/messages",
        Some(message(false)),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for _ in 0..2 {
        let (status, _, _) = send_with(
            app(state.clone()),
            "POST",
            "/v1/messages",
            Some(message(false)),
            &[("x-api-key", "sekrit")],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let text = scrape(app(state)).await;
    assert!(text.ends_with("# EOF\n"), "{text}");
    let requests = |status: &str| {
        sample(
            &text,
            &format!("pensieve_requests_total{{route=\"/v1/messages\",status=\"{status}\"}}"),
        )
    };
    assert_eq!(requests("401").as_deref(), Some("1"), "{text}");
    assert_eq!(requests("200").as_deref(), Some("2"), "{text}");
    // Each body was read to the end before the scrape, so each request was timed.
    assert_eq!(
        sample(
            &text,
            "pensieve_request_duration_seconds_count{route=\"/v1/messages\"}"
        )
        .as_deref(),
        Some("3"),
        "{text}"
    );
    assert_eq!(sample(&text, "pensieve_queue_depth").as_deref(), Some("0"));
}

#[tokio::test]
async fn metrics_labels_use_route_templates_not_paths() {
    let state = state_with("x", ServerConfig::default(), 4096);
    send(
        app(state.clone()),
        "GET",
        "/v1/models/claude-haiku-4-5",
        None,
    )
    .await;
    send(app(state.clone()), "GET", "/v2/nothing", None).await;
    send(app(state.clone()), "GET", "/v1/messages", None).await;
    let text = scrape(app(state)).await;
    for (series, value) in [
        ("{route=\"/v1/models/{id}\",status=\"200\"}", "1"),
        ("{route=\"unmatched\",status=\"404\"}", "1"),
        ("{route=\"/v1/messages\",status=\"405\"}", "1"),
    ] {
        let series = format!("pensieve_requests_total{series}");
        assert_eq!(
            sample(&text, &series).as_deref(),
            Some(value),
            "{series} in:\n{text}"
        );
    }
    assert!(!text.contains("claude-haiku"), "{text}");
    assert!(!text.contains("/v2/nothing"), "{text}");
}

#[tokio::test]
async fn timed_bodies_keep_their_length() {
    // The metrics layer wraps every body; a JSON reply must still have a known size, so
    // it is sent with content-length rather than chunked.
    let request = Request::builder()
        .method("GET")
        .uri("/v1/models")
        .body(Body::empty())
        .unwrap();
    let response = router("x").oneshot(request).await.unwrap();
    assert!(axum::body::HttpBody::size_hint(response.body())
        .exact()
        .is_some());
}

fn chat(stream: bool) -> Value {
    let mut body = json!({"model": "gpt-local", "max_tokens": 100, "stream": stream,
                          "messages": [{"role": "user", "content": "hi"}]});
    // OpenAI takes stream_options only with stream.
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

#[tokio::test]
async fn chat_completion_and_its_stream() {
    let (status, _, body) = send(
        router("Hello"),
        "POST",
        "/v1/chat/completions",
        Some(chat(false)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v = json_of(&body);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-local");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 5);

    let (status, headers, body) = send(
        router("Hello"),
        "POST",
        "/v1/chat/completions",
        Some(chat(true)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    let text = String::from_utf8(body).unwrap();
    let frames: Vec<&str> = text
        .split("\n\n")
        .filter(|f| f.starts_with("data: "))
        .collect();
    assert_eq!(frames.last(), Some(&"data: [DONE]"));
    let chunks: Vec<Value> = frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str(&f["data: ".len()..]).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 5);
}

#[tokio::test]
async fn openai_routes_answer_errors_in_openais_shape() {
    let (status, _, body) = send(
        router("x"),
        "POST",
        "/v1/chat/completions",
        Some(json!({"model": "m"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let v = json_of(&body);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["param"], "messages");
    let state = state_with(
        "x",
        ServerConfig {
            api_key: Some("k".into()),
            ..ServerConfig::default()
        },
        4096,
    );
    let (status, _, body) = send(
        app(state),
        "POST",
        "/v1/chat/completions",
        Some(chat(false)),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json_of(&body)["error"]["code"], "invalid_api_key");
    // A prompt over the context: OpenAI's code for it.
    let long = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(5000)}]});
    let (status, _, body) = send(router("x"), "POST", "/v1/chat/completions", Some(long)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json_of(&body)["error"]["code"], "context_length_exceeded");
}

/// Two models behind one router: `big` by default, `small` for haiku names.
fn two_models() -> Router {
    let metrics = Arc::new(pensieve_engine::EngineMetrics::new());
    let start = |reply: &str| {
        Engine::start(
            model_info(4096),
            Arc::new(ByteTokenizer),
            Box::new(ScriptedRunner::new(reply)),
            EngineConfig {
                metrics: Some(metrics.clone()),
                ..EngineConfig::default()
            },
        )
        .unwrap()
    };
    let served = |id: &str, engine: Engine| crate::ServedModel {
        id: id.to_owned(),
        backend: engine.into(),
        created: std::time::SystemTime::UNIX_EPOCH,
        runs_on: "CPU, 2 threads".into(),
    };
    let mut models = crate::ModelRouter::new(served("big", start("from big")));
    let small = models.add(served("small", start("from small")));
    models.alias("claude-*haiku*", small);
    app(AppState::new(Arc::new(models), ServerConfig::default()))
}

#[tokio::test]
async fn requested_names_route_to_their_model() {
    let router = two_models();
    for (model, reply) in [
        ("claude-opus-5-5", "from big"),
        ("claude-haiku-4-5-20251001", "from small"),
        ("small", "from small"),
        ("big", "from big"),
        ("gpt-4o", "from big"),
    ] {
        let mut request = message(false);
        request["model"] = json!(model);
        let (status, _, body) = send(router.clone(), "POST", "/v1/messages", Some(request)).await;
        assert_eq!(status, StatusCode::OK, "{model}");
        let body = json_of(&body);
        assert_eq!(body["content"][0]["text"], reply, "{model}");
        assert_eq!(body["model"], model);
    }
    let (_, _, body) = send(router.clone(), "GET", "/v1/models", None).await;
    let ids: Vec<_> = json_of(&body)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["big", "small"]);
    let (_, _, body) = send(router.clone(), "GET", "/v1/models/claude-3-5-haiku", None).await;
    assert_eq!(
        json_of(&body)["display_name"],
        "claude-3-5-haiku (served by small)"
    );
    // Both engines count into the one registry.
    let text = scrape(router).await;
    let generated = text
        .lines()
        .find(|l| l.starts_with("pensieve_generated_tokens_total"))
        .unwrap();
    let expected = 3 * "from big".len() + 2 * "from small".len();
    assert!(generated.ends_with(&format!(" {expected}")), "{generated}");
}

/// The `(event, data)` of each frame of an Anthropic stream.
fn sse_events(body: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(body).unwrap();
    text.split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|f| {
            let mut lines = f.lines();
            let name = lines.next().unwrap().trim_start_matches("event: ");
            let data = lines.next().unwrap().trim_start_matches("data: ");
            (name.to_owned(), serde_json::from_str(data).unwrap())
        })
        .collect()
}

/// Stream `body` through `/v1/messages`: the usage of its `message_start` and of its
/// `message_delta`.
async fn start_and_final_usage(state: &AppState, body: Value) -> (Value, Value) {
    let (status, _, bytes) = send(app(state.clone()), "POST", "/v1/messages", Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    let events = sse_events(&bytes);
    let usage_of = |name: &str| {
        let (_, data) = events.iter().find(|(n, _)| n == name).unwrap();
        match name {
            "message_start" => data["message"]["usage"].clone(),
            _ => data["usage"].clone(),
        }
    };
    (usage_of("message_start"), usage_of("message_delta"))
}

/// The prompt's split (all but the output tokens) of a usage block.
fn split(usage: &Value) -> [u64; 3] {
    [
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ]
    .map(|k| usage[k].as_u64().unwrap())
}

#[tokio::test]
async fn message_start_reports_the_cache_split_the_stream_ends_with() {
    let state = state_with("Hello!", ServerConfig::default(), 4096);
    let system = json!([{"type": "text", "text": "You answer briefly. ".repeat(10),
                         "cache_control": {"type": "ephemeral"}}]);
    let first = json!({"role": "user", "content": "hi"});
    let cold = json!({"model": "m", "max_tokens": 10, "stream": true, "system": system,
                      "messages": [first]});
    let (start, last) = start_and_final_usage(&state, cold).await;
    let [input, created, read] = split(&start);
    // Nothing cached yet: the system prompt, up to its breakpoint, is cache creation;
    // the turn after it is plain input.
    assert_eq!(read, 0, "{start}");
    assert!(created > 200 && input > 0 && input < 60, "{start}");
    assert_eq!(split(&start), split(&last), "{start} then {last}");
    assert_eq!(start["output_tokens"], 0);

    // The next turn: the system prompt and the first turn come from the cache.
    let warm = json!({"model": "m", "max_tokens": 10, "stream": true, "system": system,
                      "messages": [first, {"role": "assistant", "content": "Hello!"},
                                   {"role": "user", "content": "and then?"}]});
    let (start, last) = start_and_final_usage(&state, warm).await;
    let [input, created, read] = split(&start);
    // The breakpoint is read from the cache; nothing after it is marked.
    assert!(read > 200 && input > 0 && created == 0, "{start}");
    assert_eq!(split(&start), split(&last), "{start} then {last}");
    assert_eq!(last["output_tokens"], 6);
}

#[tokio::test]
async fn a_warm_chat_stream_ends_with_its_cached_tokens() {
    let state = state_with("Hello", ServerConfig::default(), 4096);
    let mut body = chat(true);
    body["messages"][0]["content"] = json!("a question long enough to be worth caching");
    let usage: Vec<(u64, u64)> = {
        let mut found = Vec::new();
        for _ in 0..2 {
            let (status, _, bytes) = send(
                app(state.clone()),
                "POST",
                "/v1/chat/completions",
                Some(body.clone()),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            let text = String::from_utf8(bytes).unwrap();
            let chunks: Vec<Value> = text
                .split("\n\n")
                .filter_map(|f| f.strip_prefix("data: "))
                .filter(|d| *d != "[DONE]")
                .map(|d| serde_json::from_str(d).unwrap())
                .collect();
            let (usage, before) = chunks.split_last().unwrap();
            // Only the last chunk carries usage: the true one.
            assert!(before.iter().all(|c| c["usage"].is_null()), "{text}");
            let usage = &usage["usage"];
            found.push((
                usage["prompt_tokens"].as_u64().unwrap(),
                usage["prompt_tokens_details"]["cached_tokens"]
                    .as_u64()
                    .unwrap(),
            ));
        }
        found
    };
    let (prompt, cached) = usage[0];
    assert_eq!(cached, 0);
    // The same prompt again: all but its last token.
    assert_eq!(usage[1], (prompt, prompt - 1));
}

// What web pages send: the headers below are the ones Chrome sends for a page's fetch().

fn browser_router(origins: &[&str]) -> Router {
    let config = ServerConfig {
        browser: BrowserPolicy::new(
            true,
            vec!["box.lan".into()],
            origins.iter().map(|o| o.to_string()).collect(),
        ),
        ..ServerConfig::default()
    };
    app(state_with("hello", config, 4096))
}

#[tokio::test]
async fn a_foreign_host_is_refused_on_loopback() {
    // DNS rebinding: the page's own name now points at 127.0.0.1.
    let rebound = [
        ("host", "rebind.example:7777"),
        ("origin", "http://rebind.example:7777"),
        ("sec-fetch-site", "same-origin"),
    ];
    let (status, _, body) = send_with(
        browser_router(&[]),
        "POST",
        "/v1/messages",
        Some(message(false)),
        &rebound,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let body = json_of(&body);
    assert_eq!(body["error"]["type"], "permission_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--allowed-host"));
    // Even a GET without an Origin (a navigation to the rebound name).
    let (status, _, body) = send_with(
        browser_router(&[]),
        "GET",
        "/v1/models",
        None,
        &[("host", "rebind.example:7777")],
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "{}",
        String::from_utf8_lossy(&body)
    );
    // OpenAI's routes answer in OpenAI's shape.
    let (status, _, body) = send_with(
        browser_router(&[]),
        "POST",
        "/v1/chat/completions",
        Some(chat(false)),
        &[("host", "rebind.example")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(json_of(&body)["error"]["message"].is_string());
    for host in [
        "127.0.0.1:7777",
        "localhost:7777",
        "[::1]:7777",
        "box.lan:7777",
    ] {
        let (status, _, _) = send_with(
            browser_router(&[]),
            "GET",
            "/v1/models",
            None,
            &[("host", host)],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{host}");
    }
}

#[tokio::test]
async fn a_page_of_another_origin_is_refused_and_gets_no_cors_headers() {
    // A "simple" request: text/plain needs no preflight, so the browser sends it as it is.
    let simple = [
        ("host", "127.0.0.1:7777"),
        ("origin", "https://evil.example"),
        ("content-type", "text/plain;charset=UTF-8"),
        ("sec-fetch-mode", "no-cors"),
        ("sec-fetch-site", "cross-site"),
    ];
    let (status, headers, body) = send_with(
        browser_router(&[]),
        "POST",
        "/v1/messages",
        Some(message(false)),
        &simple,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(json_of(&body)["error"]["type"], "permission_error");
    assert!(headers.get("access-control-allow-origin").is_none());
    // The preflight of a JSON request is refused too, so the browser never sends it.
    let preflight = [
        ("host", "127.0.0.1:7777"),
        ("origin", "https://evil.example"),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "content-type,x-api-key"),
        ("sec-fetch-mode", "cors"),
    ];
    let (status, headers, _) = send_with(
        browser_router(&[]),
        "OPTIONS",
        "/v1/messages",
        None,
        &preflight,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(headers.get("access-control-allow-origin").is_none());
    // A loopback page is a page too: it needs --cors-origin like any other.
    let (status, _, _) = send_with(
        browser_router(&["http://localhost:3000"]),
        "GET",
        "/v1/models",
        None,
        &[("origin", "http://localhost:3001")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_allowed_origin_gets_its_preflight_and_cors_headers() {
    let origin = "http://localhost:3000";
    let preflight = [
        ("host", "127.0.0.1:7777"),
        ("origin", origin),
        ("access-control-request-method", "POST"),
        (
            "access-control-request-headers",
            "anthropic-version,content-type,x-api-key",
        ),
    ];
    let (status, headers, _) = send_with(
        browser_router(&[origin]),
        "OPTIONS",
        "/v1/messages",
        None,
        &preflight,
    )
    .await;
    assert!(status.is_success(), "{status}");
    assert_eq!(headers["access-control-allow-origin"], origin);
    let allowed = headers["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed.contains("x-api-key"), "{allowed}");
    assert!(headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    let (status, headers, body) = send_with(
        browser_router(&[origin]),
        "POST",
        "/v1/messages",
        Some(message(false)),
        &[("host", "127.0.0.1:7777"), ("origin", origin)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["access-control-allow-origin"], origin);
    assert!(headers["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("request-id"));
    assert_eq!(json_of(&body)["content"][0]["text"], "hello");
}

#[tokio::test]
async fn bodies_must_be_json() {
    for content_type in [
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=----x",
    ] {
        let (status, _, body) = send_with(
            router("x"),
            "POST",
            "/v1/messages",
            Some(message(false)),
            &[("content-type", content_type)],
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{content_type}");
        let body = json_of(&body);
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("application/json"));
    }
    // No Content-Type at all (a fetch() of a Blob without a type sends none).
    let request = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .body(Body::from(chat(false).to_string()))
        .unwrap();
    let response = router("x").oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

/// A value of the wrong type or out of range is a 400 in each API's envelope, naming the
/// field (OpenAI's `param` too), never a 422 or a 500.
#[tokio::test]
async fn field_errors_are_400_naming_the_field_on_every_route() {
    let hi = json!([{"role": "user", "content": "hi"}]);
    let anthropic = [
        (
            json!({"model": "m", "max_tokens": "10", "messages": hi}),
            "max_tokens: invalid type",
        ),
        (
            json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": 5}]}),
            "messages.0.content: expected a string or an array of content blocks",
        ),
        (
            json!({"model": "m", "max_tokens": 8, "messages": hi, "top_k": -1}),
            "top_k: invalid value",
        ),
        (
            json!({"model": "m", "max_tokens": 8, "messages": hi, "tools": [{"name": "a b"}]}),
            "tools.0.name: String should match pattern",
        ),
    ];
    for (body, want) in anthropic {
        let (status, _, out) = send(router("x"), "POST", "/v1/messages", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let v = json_of(&out);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(want), "{body}: {message}");
    }
    let openai = [
        (
            "/v1/chat/completions",
            json!({"model": "m", "messages": hi, "max_tokens": "10"}),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "m", "messages": hi, "temperature": "hot"}),
            "temperature",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "m", "messages": hi, "top_p": 2}),
            "top_p",
        ),
        (
            "/v1/completions",
            json!({"model": "m", "prompt": "x", "stop": 5}),
            "stop",
        ),
        (
            "/v1/completions",
            json!({"model": "m", "prompt": "x", "frequency_penalty": -3}),
            "frequency_penalty",
        ),
    ];
    for (path, body, param) in openai {
        let (status, _, out) = send(router("x"), "POST", path, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let v = json_of(&out);
        assert_eq!(v["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(v["error"]["param"], param, "{body}");
        assert_eq!(v["error"]["code"], Value::Null, "{body}");
    }
}

#[tokio::test]
async fn a_response_is_kept_continued_retrieved_and_deleted() {
    let router = router("Hello");
    let ask = |extra: Value| {
        let mut body = json!({"model": "gpt-local", "input": "Hi", "instructions": "Be brief."});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let (status, _, body) = send(
        router.clone(),
        "POST",
        "/v1/responses",
        Some(ask(json!({}))),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let first = json_of(&body);
    assert_eq!(first["object"], "response");
    assert_eq!(first["status"], "completed");
    assert_eq!(first["output"][0]["content"][0]["text"], "Hello");
    let id = first["id"].as_str().unwrap().to_owned();

    // The follow-up's prompt holds the first turn and its reply: more input tokens.
    let (status, _, body) = send(
        router.clone(),
        "POST",
        "/v1/responses",
        Some(ask(json!({"previous_response_id": id, "input": "Again"}))),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let second = json_of(&body);
    assert_eq!(second["previous_response_id"], id.as_str());
    assert!(
        second["usage"]["input_tokens"].as_u64() > first["usage"]["input_tokens"].as_u64(),
        "{second}"
    );

    let uri = format!("/v1/responses/{id}");
    let (status, _, body) = send(router.clone(), "GET", &uri, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(&body), first);
    let (status, _, body) = send(router.clone(), "DELETE", &uri, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        json_of(&body),
        json!({"id": id, "object": "response", "deleted": true})
    );
    let (status, _, body) = send(router.clone(), "GET", &uri, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json_of(&body)["error"]["type"], "invalid_request_error");
    let (status, _, body) = send(
        router.clone(),
        "POST",
        "/v1/responses",
        Some(ask(json!({"previous_response_id": id}))),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = &json_of(&body)["error"];
    assert_eq!(error["param"], "previous_response_id");
    assert_eq!(error["code"], "previous_response_not_found");

    // store: false keeps nothing.
    let (_, _, body) = send(
        router.clone(),
        "POST",
        "/v1/responses",
        Some(ask(json!({"store": false}))),
    )
    .await;
    let unstored = json_of(&body);
    assert_eq!(unstored["store"], false);
    let uri = format!("/v1/responses/{}", unstored["id"].as_str().unwrap());
    let (status, _, _) = send(router, "GET", &uri, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_streamed_response_is_kept_when_it_completes() {
    let router = router("Hello");
    let body = json!({"model": "gpt-local", "input": "Hi", "stream": true});
    let (status, headers, bytes) = send(router.clone(), "POST", "/v1/responses", Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    let text = String::from_utf8(bytes).unwrap();
    let events: Vec<Value> = text
        .split("\n\n")
        .filter_map(|f| f.split_once("\ndata: "))
        .map(|(_, data)| serde_json::from_str(data).unwrap())
        .collect();
    assert_eq!(events[0]["type"], "response.created");
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.completed");
    let id = last["response"]["id"].as_str().unwrap();
    let (status, _, body) = send(router, "GET", &format!("/v1/responses/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(&body), last["response"]);
}
