//! `POST /v1/messages` (streaming and not) and `POST /v1/messages/count_tokens`:
//! where an Anthropic request becomes an engine request, and engine events become
//! Anthropic responses.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use pensieve_engine::{Completion, EngineError, Generation, GenerationEvent};
use pensieve_protocol::anthropic::{
    parse_count_tokens, parse_messages, ContentCollector, ErrorKind, MessageResponse, SseEvent,
    StreamEncoder,
};
use pensieve_protocol::ids::random_id;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::app::{AppState, RequestId};
use crate::error::ApiError;

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
        let bytes = read_body(&headers, body, state.config.body_limit).await?;
        let request = parse_count_tokens(&bytes)?.into_generate()?;
        let engine = state.engine.clone();
        let tokens = blocking(move || engine.prompt_tokens(&request)).await??;
        Ok::<_, ApiError>(Json(json!({"input_tokens": tokens.len()})).into_response())
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
    let bytes = read_body(headers, body, state.config.body_limit).await?;
    let parsed = parse_messages(&bytes)?;
    let stream = parsed.is_stream();
    let request = parsed.into_generate()?;
    let engine = state.engine.clone();
    // Rendering and tokenizing a 50k-character prompt is CPU work: keep it off the reactor.
    let (request, valid) = blocking(move || {
        let valid = engine.validate(&request);
        (request, valid)
    })
    .await?;
    let valid = valid?;
    let prompt_tokens = valid.prompt.len() as u32;
    let generation = state.engine.submit(valid)?;
    let reply = Reply {
        request_id: request_id.to_owned(),
        message_id: random_id("msg_"),
        model: request.model,
        prompt_tokens,
    };
    if stream {
        Ok(reply.stream(generation, state.config.ping_interval))
    } else {
        reply.collect(generation).await
    }
}

/// Read the whole body, refusing one over `limit` with 413.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorKind::RequestTooLarge,
            format!("request body is larger than the server's limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let is_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if is_limit {
            too_large()
        } else {
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!("cannot read the request body: {e}"),
            )
        }
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(ErrorKind::Api, format!("internal task failed: {e}")))
}

/// What the response needs besides the engine's events.
struct Reply {
    request_id: String,
    message_id: String,
    /// The name the client asked for, echoed back.
    model: String,
    prompt_tokens: u32,
}

impl Reply {
    /// Gather the whole generation into one JSON message.
    async fn collect(self, mut generation: Generation) -> Result<Response, ApiError> {
        let mut content = ContentCollector::default();
        while let Some(event) = generation.events.recv().await {
            match event {
                GenerationEvent::Done(completion) => {
                    self.log(false, &completion);
                    let blocks = content.into_blocks();
                    let body =
                        MessageResponse::new(self.message_id, self.model, blocks, &completion);
                    return Ok(Json(body).into_response());
                }
                GenerationEvent::Failed(e) => {
                    self.log_failure(&e);
                    return Err(e.into());
                }
                other => content.push(&other),
            }
        }
        Err(EngineError::EngineStopped.into())
    }

    /// Stream the generation as SSE. Headers and `message_start` go out at once, and a
    /// `ping` every `ping_interval`, so clients see bytes during a long prefill.
    fn stream(self, generation: Generation, ping_interval: std::time::Duration) -> Response {
        let (frames, body) = mpsc::channel::<Result<Bytes, Infallible>>(64);
        tokio::spawn(self.pump(generation, frames, ping_interval));
        let mut response = Response::new(Body::from_stream(ReceiverStream::new(body)));
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        response
    }

    async fn pump(
        self,
        mut generation: Generation,
        frames: mpsc::Sender<Result<Bytes, Infallible>>,
        ping_interval: std::time::Duration,
    ) {
        let send = |event: SseEvent| {
            let frames = frames.clone();
            async move { frames.send(Ok(Bytes::from(event.to_frame()))).await.is_ok() }
        };
        let mut encoder = StreamEncoder::new(
            self.message_id.clone(),
            self.model.clone(),
            self.prompt_tokens,
        );
        if !send(encoder.start()).await {
            return;
        }
        let start = tokio::time::Instant::now() + ping_interval;
        let mut ping = tokio::time::interval_at(start, ping_interval);
        loop {
            let events = tokio::select! {
                event = generation.events.recv() => match event {
                    Some(GenerationEvent::Done(completion)) => {
                        self.log(true, &completion);
                        encoder.on_event(GenerationEvent::Done(completion))
                    }
                    Some(GenerationEvent::Failed(e)) => {
                        self.log_failure(&e);
                        encoder.on_event(GenerationEvent::Failed(e))
                    }
                    Some(event) => encoder.on_event(event),
                    // The engine dropped the request without a word: report it in-band.
                    None => vec![encoder.error(&EngineError::EngineStopped)],
                },
                _ = ping.tick() => vec![StreamEncoder::ping()],
                // The client went away: dropping `generation` cancels it in the engine.
                _ = frames.closed() => {
                    tracing::info!(request_id = %self.request_id, "client disconnected; generation cancelled");
                    return;
                }
            };
            for event in events {
                if !send(event).await {
                    return;
                }
            }
            if encoder.is_finished() {
                return;
            }
        }
    }

    fn log_failure(&self, e: &EngineError) {
        tracing::warn!(request_id = %self.request_id, model = %self.model, error = %e, "message failed");
    }

    /// One line per finished request.
    fn log(&self, stream: bool, c: &Completion) {
        tracing::info!(
            request_id = %self.request_id,
            model = %self.model,
            stream,
            prompt_tokens = c.usage.prompt_tokens,
            cached_tokens = c.usage.cached_prompt_tokens,
            output_tokens = c.usage.completion_tokens,
            queued_ms = c.timings.queued.as_millis() as u64,
            prefill_ms = c.timings.prefill.as_millis() as u64,
            decode_ms = c.timings.decode.as_millis() as u64,
            stop = ?c.reason,
            "message done"
        );
    }
}
