//! `count_tokens` against servers on loopback shaped like vLLM (messages in, `count` out), like
//! llama-server (`/apply-template`, then `/tokenize` of text), and like one with neither.

use std::sync::Arc;

use axum::routing::post;
use axum::{Json, Router};
use pensieve_engine::{EngineError, GenerateRequest, Message, Role};
use pensieve_upstream::{Upstream, UpstreamConfig};
use serde_json::{json, Value};

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}

fn upstream(base: String) -> Upstream {
    Upstream::new(
        UpstreamConfig::new(vec![base], "served-model"),
        Arc::default(),
    )
    .unwrap()
}

fn request() -> GenerateRequest {
    GenerateRequest::new(
        "claude-opus-5-5",
        vec![
            Message::text(Role::System, "Be brief."),
            Message::text(Role::User, "Hi"),
        ],
        16,
    )
}

#[tokio::test]
async fn vllm_counts_the_messages() {
    let app = Router::new().route(
        "/tokenize",
        post(|Json(body): Json<Value>| async move {
            // The chat as sent upstream: the model's name, both messages, a generation prompt.
            assert_eq!(body["model"], "served-model");
            assert_eq!(body["messages"].as_array().map(Vec::len), Some(2));
            assert_eq!(body["add_generation_prompt"], true);
            Json(json!({"count": 42, "max_model_len": 32768, "tokens": []}))
        }),
    );
    let n = upstream(serve(app).await).count_tokens(&request()).await;
    assert_eq!(n.unwrap(), 42);
}

#[tokio::test]
async fn llama_server_renders_then_tokenizes() {
    let app = Router::new()
        .route(
            "/tokenize",
            post(|Json(body): Json<Value>| async move {
                // Messages are not its input: an empty text's tokens, as llama-server answers.
                let text = body["content"].as_str().unwrap_or("");
                let tokens: Vec<usize> = text.split_whitespace().map(str::len).collect();
                Json(json!({"tokens": tokens}))
            }),
        )
        .route(
            "/apply-template",
            post(|Json(body): Json<Value>| async move {
                let n = body["messages"].as_array().map_or(0, Vec::len);
                Json(json!({"prompt": vec!["tok"; n * 3].join(" ")}))
            }),
        );
    let n = upstream(serve(app).await).count_tokens(&request()).await;
    assert_eq!(n.unwrap(), 6);
}

#[tokio::test]
async fn a_server_without_a_tokenizer_says_it_cannot_count() {
    let n = upstream(serve(Router::new()).await)
        .count_tokens(&request())
        .await;
    match n {
        Err(EngineError::InvalidRequest(m)) => assert!(m.contains("cannot count"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Nothing there at all: the client hears it as the upstream's fault.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", listener.local_addr().unwrap())
    };
    match upstream(closed).count_tokens(&request()).await {
        Err(EngineError::Upstream { status: 502, .. }) => {}
        other => panic!("{other:?}"),
    }
}
