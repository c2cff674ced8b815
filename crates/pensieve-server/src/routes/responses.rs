//! `POST /v1/responses` (streaming and not), `GET` and `DELETE /v1/responses/{id}`: where
//! a Responses request becomes an engine request after the stored conversation it
//! continues, and engine events become Responses events. Errors use OpenAI's envelope.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use pensieve_engine::{EngineError, GenerationEvent, Message};
use pensieve_protocol::anthropic::ErrorKind;
use pensieve_protocol::ids::random_id;
use pensieve_protocol::openai::responses::{
    parse_responses, reply_message, Head, ResponseEncoder, Status,
};
use pensieve_protocol::openai::OpenAiError;
use serde_json::json;

use super::io::{collect, log_outcome, read_body, stream_sse, submit, FrameEncoder, LogOutcome};
use crate::error::{ApiError, Dialect};
use crate::response_store::{ResponseStore, Stored};
use crate::state::{AppState, RequestId};

pub async fn create(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match start(&state, &request_id.0, &headers, body).await {
        Ok(response) => response,
        Err(e) => openai_error(e, &request_id.0),
    }
}

pub async fn retrieve(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Path(id): Path<String>,
) -> Response {
    match state.responses.get(&id) {
        Some(stored) => Json(stored.response).into_response(),
        None => openai_error(not_found(&id), &request_id.0),
    }
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Path(id): Path<String>,
) -> Response {
    if state.responses.remove(&id) {
        Json(json!({"id": id, "object": "response", "deleted": true})).into_response()
    } else {
        openai_error(not_found(&id), &request_id.0)
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!("Response with id '{id}' not found."),
    )
}

fn openai_error(e: ApiError, request_id: &str) -> Response {
    e.in_dialect(Dialect::OpenAi)
        .with_request_id(request_id)
        .into_response()
}

async fn start(
    state: &AppState,
    request_id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(headers, body, &state.config).await?;
    let parsed = parse_responses(&bytes)?;
    let previous = match parsed.previous_response_id.as_deref() {
        Some(id) => Some(state.responses.get(id).ok_or_else(|| {
            let mut e = ApiError::from(OpenAiError::invalid(
                Some("previous_response_id"),
                format!("Previous response with id '{id}' not found."),
            ));
            e.code = Some("previous_response_not_found".into());
            e
        })?),
        None => None,
    };
    let prepared = parsed.prepare(
        &state.config.sampling,
        previous.as_ref().map(|p| p.conversation.as_slice()),
    )?;
    let (request, generation) = submit(state, prepared.request).await?;
    let head = Head {
        id: random_id("resp_"),
        created_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: request.model.clone(),
        echo: prepared.echo,
    };
    let encoder = ResponseFrames {
        encoder: ResponseEncoder::new(head),
        keep: prepared.store.then(|| Keep {
            store: state.responses.clone(),
            history: prepared.history,
        }),
    };
    let model = request.model;
    let request_id = request_id.to_owned();
    if prepared.stream {
        let mut encoder = encoder;
        let first = encoder.encoder.start();
        let log: LogOutcome =
            Box::new(move |outcome| log_outcome(&request_id.clone(), &model, true, outcome));
        let interval = state.config.ping_interval;
        let id = encoder.encoder.id().to_owned();
        Ok(stream_sse(id, encoder, first, generation, interval, log))
    } else {
        let mut encoder = encoder;
        let outcome = collect(generation, |event| {
            encoder.on_event(event);
        })
        .await;
        log_outcome(&request_id, &model, false, outcome.as_ref());
        match outcome {
            Ok(completion) => {
                encoder.on_event(GenerationEvent::Done(completion));
                Ok(Json(encoder.encoder.response()).into_response())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Where a finished response is kept, with the conversation it answered.
struct Keep {
    store: Arc<ResponseStore>,
    history: Vec<Message>,
}

/// The Responses encoder, keeping the response when it ends well and `store` asked for it.
struct ResponseFrames {
    encoder: ResponseEncoder,
    keep: Option<Keep>,
}

impl ResponseFrames {
    fn keep_if_done(&mut self) {
        if !matches!(
            self.encoder.status(),
            Status::Completed | Status::Incomplete
        ) {
            return;
        }
        if let Some(Keep { store, mut history }) = self.keep.take() {
            history.push(reply_message(self.encoder.items()));
            store.insert(
                self.encoder.id().to_owned(),
                Stored {
                    response: self.encoder.response(),
                    conversation: Arc::new(history),
                },
            );
        }
    }
}

impl FrameEncoder for ResponseFrames {
    fn on_event(&mut self, event: GenerationEvent) -> Vec<String> {
        let frames = self.encoder.on_event(event);
        self.keep_if_done();
        frames
    }

    fn error(&mut self, error: &EngineError) -> Vec<String> {
        self.encoder.error(error)
    }

    fn ping(&self) -> String {
        ResponseEncoder::ping()
    }

    fn is_finished(&self) -> bool {
        self.encoder.is_finished()
    }
}
