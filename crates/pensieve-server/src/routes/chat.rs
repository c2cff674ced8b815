//! `POST /v1/chat/completions` (streaming and not): where an OpenAI request becomes an
//! engine request, and engine events become chat completions; an upstream's replicas take
//! it as it is. Errors use OpenAI's envelope.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use pensieve_engine::{Completion, EngineError, Generation, GenerationEvent};
use pensieve_protocol::ids::random_id;
use pensieve_protocol::openai::{parse_chat, ChatCompletion, ChunkEncoder, MessageCollector};
use pensieve_upstream::{conversation_key, Endpoint};

use super::io::{collect, log_outcome, read_body, stream_sse, submit, FrameEncoder, LogOutcome};
use super::relay::relay;
use crate::error::{ApiError, Dialect};
use crate::models::Backend;
use crate::state::{AppState, RequestId};

pub async fn completions(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match start(&state, &request_id.0, &headers, body).await {
        Ok(response) => response,
        Err(e) => e
            .in_dialect(Dialect::OpenAi)
            .with_request_id(&request_id.0)
            .into_response(),
    }
}

async fn start(
    state: &AppState,
    request_id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(headers, body, &state.config).await?;
    let parsed = parse_chat(&bytes)?;
    let (stream, include_usage) = (parsed.is_stream(), parsed.include_usage());
    let logprobs = parsed.wants_logprobs();
    let request = parsed.into_generate_with(&state.config.sampling)?;
    if let Backend::Upstream { upstream, .. } = state.backend_for(&request.model) {
        let key = conversation_key(&request);
        return relay(upstream, Endpoint::ChatCompletions, &bytes, key).await;
    }
    let (request, generation) = submit(state, request).await?;
    let reply = Reply {
        request_id: request_id.to_owned(),
        id: random_id("chatcmpl-"),
        model: request.model,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        logprobs,
    };
    if stream {
        let mut encoder = ChunkEncoder::new(
            reply.id.clone(),
            reply.model.clone(),
            reply.created,
            include_usage,
        );
        let first = vec![encoder.start()];
        let request_id = reply.request_id.clone();
        let log: LogOutcome = Box::new(move |outcome| reply.log(true, outcome));
        let interval = state.config.ping_interval;
        Ok(stream_sse(
            request_id, encoder, first, generation, interval, log,
        ))
    } else {
        reply.collect(generation).await
    }
}

impl FrameEncoder for ChunkEncoder {
    fn on_event(&mut self, event: GenerationEvent) -> Vec<String> {
        ChunkEncoder::on_event(self, event)
    }

    fn error(&mut self, error: &EngineError) -> Vec<String> {
        ChunkEncoder::error(self, error)
    }

    fn ping(&self) -> String {
        ChunkEncoder::ping()
    }

    fn is_finished(&self) -> bool {
        ChunkEncoder::is_finished(self)
    }
}

/// What the response needs besides the engine's events.
struct Reply {
    request_id: String,
    id: String,
    /// The name the client asked for, echoed back.
    model: String,
    created: u64,
    /// The request asked for log-probabilities.
    logprobs: bool,
}

impl Reply {
    async fn collect(self, generation: Generation) -> Result<Response, ApiError> {
        let mut message = MessageCollector::new(self.logprobs);
        let outcome = collect(generation, |event| message.push(&event)).await;
        self.log(false, outcome.as_ref());
        let completion = outcome?;
        let body = ChatCompletion::new(self.id, self.model, self.created, message, &completion);
        Ok(Json(body).into_response())
    }

    fn log(&self, stream: bool, outcome: Result<&Completion, &EngineError>) {
        log_outcome(&self.request_id, &self.model, stream, outcome);
    }
}
