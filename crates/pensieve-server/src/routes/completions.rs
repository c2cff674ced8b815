//! `POST /v1/completions` (streaming and not): a prompt continued as it is, through the
//! same engine as chat; an upstream's replicas take it as it is. Errors use OpenAI's
//! envelope.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use pensieve_engine::{Completion, EngineError, GenerationEvent};
use pensieve_protocol::ids::random_id;
use pensieve_protocol::openai::{parse_completion, TextChunkEncoder, TextCollector};
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
    let parsed = parse_completion(&bytes)?;
    let (stream, include_usage) = (parsed.is_stream(), parsed.include_usage());
    let logprobs = parsed.wants_logprobs();
    let request = parsed.into_generate_with(&state.config.sampling)?;
    if let Backend::Upstream { upstream, .. } = state.backend_for(&request.model) {
        let key = conversation_key(&request);
        return relay(upstream, Endpoint::Completions, &bytes, key).await;
    }
    let (request, generation) = submit(state, request).await?;
    let model = request.model;
    let id = random_id("cmpl-");
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (log_id, log_model) = (request_id.to_owned(), model.clone());
    let log = move |stream: bool, outcome: Result<&Completion, &EngineError>| {
        log_outcome(&log_id, &log_model, stream, outcome);
    };
    if stream {
        let encoder = TextChunkEncoder::new(id, model, created, include_usage, logprobs);
        let log: LogOutcome = Box::new(move |outcome| log(true, outcome));
        let interval = state.config.ping_interval;
        return Ok(stream_sse(
            request_id.to_owned(),
            encoder,
            Vec::new(),
            generation,
            interval,
            log,
        ));
    }
    let mut text = TextCollector::new(logprobs);
    let outcome = collect(generation, |event| text.push(&event)).await;
    log(false, outcome.as_ref());
    let completion = outcome?;
    Ok(Json(text.into_response(id, model, created, &completion)).into_response())
}

impl FrameEncoder for TextChunkEncoder {
    fn on_event(&mut self, event: GenerationEvent) -> Vec<String> {
        TextChunkEncoder::on_event(self, event)
    }

    fn error(&mut self, error: &EngineError) -> Vec<String> {
        TextChunkEncoder::error(self, error)
    }

    fn ping(&self) -> String {
        ": ping\n\n".into()
    }

    fn is_finished(&self) -> bool {
        TextChunkEncoder::is_finished(self)
    }
}
