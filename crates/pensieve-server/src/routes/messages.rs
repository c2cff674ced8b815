//! `POST /v1/messages` (streaming and not) and `POST /v1/messages/count_tokens`:
//! where an Anthropic request becomes an engine request, and engine events become
//! Anthropic responses. Where an upstream's replicas speak `/v1/messages` themselves
//! (`api = "anthropic"`), they take the request as it is.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use pensieve_engine::{Completion, EngineError, Generation, GenerationEvent};
use pensieve_protocol::anthropic::{
    parse_count_tokens, parse_messages, ContentCollector, MessageResponse, SseEvent, StreamEncoder,
};
use pensieve_protocol::ids::random_id;
use pensieve_upstream::{conversation_key, Endpoint, UpstreamApi};
use serde_json::json;

use super::io::{
    blocking, collect, log_outcome, read_body, stream_sse, submit, FrameEncoder, LogOutcome,
};
use super::relay::{self, relay};
use crate::error::ApiError;
use crate::models::Backend;
use crate::state::{AppState, RequestId};

pub async fn messages(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match start_message(&state, &request_id.0, &headers, body).await {
        Ok(response) => response,
        Err(e) => e.with_request_id(&request_id.0).into_response(),
    }
}

pub async fn count_tokens(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let bytes = read_body(&headers, body, &state.config).await?;
        let request = parse_count_tokens(&bytes)?.into_generate()?;
        let count = match state.backend_for(&request.model).clone() {
            Backend::Local(engine) => blocking(move || engine.prompt_tokens(&request))
                .await??
                .len(),
            Backend::Upstream { upstream, .. } if upstream.api() == UpstreamApi::Anthropic => {
                let key = conversation_key(&request);
                match relay::count_tokens(&upstream, &bytes, key).await? {
                    Some(answer) => return Ok(answer),
                    // A replica with `/v1/messages` but no `count_tokens`: its tokenizer.
                    None => upstream.count_tokens(&request).await?,
                }
            }
            Backend::Upstream { upstream, .. } => upstream.count_tokens(&request).await?,
        };
        Ok::<_, ApiError>(Json(json!({"input_tokens": count})).into_response())
    }
    .await;
    result.unwrap_or_else(|e| e.with_request_id(&request_id.0).into_response())
}

async fn start_message(
    state: &AppState,
    request_id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(headers, body, &state.config).await?;
    let parsed = parse_messages(&bytes)?;
    let stream = parsed.is_stream();
    let request = parsed.into_generate_with(&state.config.sampling)?;
    if let Backend::Upstream { upstream, .. } = state.backend_for(&request.model) {
        if upstream.api() == UpstreamApi::Anthropic {
            let key = conversation_key(&request);
            return relay(upstream, Endpoint::Messages, &bytes, key).await;
        }
    }
    let (request, generation) = submit(state, request).await?;
    let reply = Reply {
        request_id: request_id.to_owned(),
        message_id: random_id("msg_"),
        model: request.model,
    };
    if stream {
        Ok(reply.stream(generation, state.config.ping_interval))
    } else {
        reply.collect(generation).await
    }
}

/// Anthropic's SSE events as frames.
struct AnthropicFrames(StreamEncoder);

impl FrameEncoder for AnthropicFrames {
    fn on_event(&mut self, event: GenerationEvent) -> Vec<String> {
        self.0
            .on_event(event)
            .iter()
            .map(SseEvent::to_frame)
            .collect()
    }

    fn error(&mut self, error: &EngineError) -> Vec<String> {
        vec![self.0.error(error).to_frame()]
    }

    fn ping(&self) -> String {
        StreamEncoder::ping().to_frame()
    }

    fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

/// What the response needs besides the engine's events.
struct Reply {
    request_id: String,
    message_id: String,
    /// The name the client asked for, echoed back.
    model: String,
}

impl Reply {
    /// Gather the whole generation into one JSON message.
    async fn collect(self, generation: Generation) -> Result<Response, ApiError> {
        let mut content = ContentCollector::default();
        let outcome = collect(generation, |event| content.push(&event)).await;
        self.log(false, outcome.as_ref());
        let completion = outcome?;
        let blocks = content.into_blocks();
        let body = MessageResponse::new(self.message_id, self.model, blocks, &completion);
        Ok(Json(body).into_response())
    }

    /// Stream the generation as SSE: `message_start` at once, with the prompt's cache
    /// split as it was when the request was queued, then the encoder's events.
    fn stream(self, generation: Generation, ping_interval: std::time::Duration) -> Response {
        let encoder = AnthropicFrames(StreamEncoder::new(
            self.message_id.clone(),
            self.model.clone(),
            generation.queued_usage,
        ));
        let first = vec![encoder.0.start().to_frame()];
        let request_id = self.request_id.clone();
        let log: LogOutcome = Box::new(move |outcome| self.log(true, outcome));
        stream_sse(request_id, encoder, first, generation, ping_interval, log)
    }

    fn log(&self, stream: bool, outcome: Result<&Completion, &EngineError>) {
        log_outcome(&self.request_id, &self.model, stream, outcome);
    }
}
