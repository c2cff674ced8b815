//! What the generation routes share: reading the body within the limit, running CPU
//! work (rendering, tokenizing) off the reactor, and the SSE response.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use pensieve_engine::{Completion, EngineError, GenerateRequest, Generation, GenerationEvent};
use pensieve_protocol::anthropic::ErrorKind;
use pensieve_protocol::encode::SseEncoder;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::ApiError;
use crate::models::Backend;
use crate::state::ServerConfig;

/// Read the whole body, refusing one over the limit with 413 and one that does not arrive
/// within the body timeout with 408 (a client that trickles its body holds no task for ever).
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    config: &ServerConfig,
) -> Result<Bytes, ApiError> {
    let limit = config.body_limit;
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
    let wait = config.body_timeout;
    let read = tokio::time::timeout(wait, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorKind::RequestTimeout,
                format!(
                    "the request body did not arrive within {}",
                    humantime::format_duration(wait)
                ),
            )
        })?;
    read.map_err(|e| {
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

pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(ErrorKind::Api, format!("internal task failed: {e}")))
}

/// Validate `request` (rendering and tokenizing a long prompt is CPU work: off the
/// reactor) and queue it. Returns the request back and the generation.
pub async fn submit(
    state: &crate::state::AppState,
    request: GenerateRequest,
) -> Result<(GenerateRequest, Generation), ApiError> {
    let backend = state.backend_for(&request.model).clone();
    if let Backend::Upstream { upstream, .. } = &backend {
        // Nothing to render: the upstream's own template does it.
        let generation = upstream.submit(&request)?;
        return Ok((request, generation));
    }
    let (request, generation) = blocking(move || {
        let generation = backend.submit_blocking(&request);
        (request, generation)
    })
    .await?;
    Ok((request, generation?))
}

/// Wait for the whole generation: each content event goes to `push`; returns how it
/// ended.
pub async fn collect(
    mut generation: Generation,
    mut push: impl FnMut(GenerationEvent),
) -> Result<Completion, EngineError> {
    while let Some(event) = generation.events.recv().await {
        match event {
            GenerationEvent::Done(completion) => return Ok(completion),
            GenerationEvent::Failed(e) => return Err(e),
            other => push(other),
        }
    }
    Err(EngineError::EngineStopped)
}

/// One log line per finished generation, with its tokens and timings.
pub fn log_outcome(
    request_id: &str,
    model: &str,
    stream: bool,
    outcome: Result<&Completion, &EngineError>,
) {
    match outcome {
        Ok(c) => tracing::info!(
            request_id = %request_id,
            model = %model,
            stream,
            prompt_tokens = c.usage.prompt_tokens,
            cached_tokens = c.usage.cached_prompt_tokens,
            output_tokens = c.usage.completion_tokens,
            queued_ms = c.timings.queued.as_millis() as u64,
            prefill_ms = c.timings.prefill.as_millis() as u64,
            decode_ms = c.timings.decode.as_millis() as u64,
            stop = ?c.reason,
            "message done"
        ),
        Err(e) => {
            tracing::warn!(request_id = %request_id, model = %model, error = %e, "message failed")
        }
    }
}

/// How a finished generation is logged: its completion, or its failure.
pub type LogOutcome = Box<dyn Fn(Result<&Completion, &EngineError>) + Send>;

/// Stream `generation` as SSE: the encoder's first frames at once, then those of the
/// engine's events, and a ping every `ping_interval` so clients see bytes during a long
/// prefill. Returns the response whose body is that stream.
pub fn stream_sse<E: SseEncoder>(
    request_id: String,
    mut encoder: E,
    mut generation: Generation,
    ping_interval: std::time::Duration,
    log: LogOutcome,
) -> Response {
    let first = encoder.start();
    let (frames, response) = sse_response();
    tokio::spawn(async move {
        let send = |frame: String| {
            let frames = frames.clone();
            async move { frames.send(Ok(Bytes::from(frame))).await.is_ok() }
        };
        for frame in first {
            if !send(frame).await {
                return;
            }
        }
        let start = tokio::time::Instant::now() + ping_interval;
        let mut ping = tokio::time::interval_at(start, ping_interval);
        loop {
            let out = tokio::select! {
                event = generation.events.recv() => match event {
                    Some(GenerationEvent::Done(completion)) => {
                        log(Ok(&completion));
                        encoder.on_event(GenerationEvent::Done(completion))
                    }
                    Some(GenerationEvent::Failed(e)) => {
                        log(Err(&e));
                        encoder.on_event(GenerationEvent::Failed(e))
                    }
                    Some(event) => encoder.on_event(event),
                    // The engine dropped the request without a word: report it in-band.
                    None => encoder.error(&EngineError::EngineStopped),
                },
                _ = ping.tick() => vec![encoder.ping()],
                // The client went away: dropping `generation` cancels it in the engine.
                _ = frames.closed() => {
                    tracing::info!(request_id = %request_id, "client disconnected; generation cancelled");
                    return;
                }
            };
            for frame in out {
                if !send(frame).await {
                    return;
                }
            }
            if encoder.is_finished() {
                return;
            }
        }
    });
    response
}

/// Where SSE frames are written, and the response that streams them.
pub(super) fn sse_response() -> (mpsc::Sender<Result<Bytes, Infallible>>, Response) {
    let (frames, body) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    let mut response = Response::new(Body::from_stream(ReceiverStream::new(body)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    (frames, response)
}
