//! `POST /v1/responses` (streaming and not), `GET` and `DELETE /v1/responses/{id}`: where
//! a Responses request becomes an engine request after the stored conversation it
//! continues, and engine events become Responses events; a finished response is kept
//! when the request asks for it. Errors use OpenAI's envelope.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use pensieve_engine::{Completion, EngineError, GenerateRequest, GenerationEvent, Message};
use pensieve_protocol::anthropic::ErrorKind;
use pensieve_protocol::encode::{Collector, SseEncoder};
use pensieve_protocol::openai::responses::{
    parse_responses, reply_message, Echo, Head, ResponseEncoder, ResponsesRequest, Status,
};
use pensieve_protocol::openai::OpenAiError;
use serde_json::{json, Value};

use super::extract::{reject, Parse};
use super::generate::{Generate, ReplyHead};
use crate::error::{ApiError, Dialect};
use crate::response_store::{ResponseStore, Stored};
use crate::state::{AppState, RequestId};

pub async fn retrieve(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Path(id): Path<String>,
) -> Response {
    match state.responses.get(&id) {
        Some(stored) => Json(stored.response).into_response(),
        None => reject(not_found(&id), Dialect::OpenAi, &request_id.0),
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
        reject(not_found(&id), Dialect::OpenAi, &request_id.0)
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!("Response with id '{id}' not found."),
    )
}

/// What a response repeats of its request, and where it is kept once finished.
pub struct Responses {
    stream: bool,
    echo: Echo,
    keep: Option<Keep>,
}

impl Parse for Responses {
    type Request = ResponsesRequest;
    const DIALECT: Dialect = Dialect::OpenAi;

    fn parse(bytes: &[u8]) -> Result<ResponsesRequest, ApiError> {
        Ok(parse_responses(bytes)?)
    }
}

impl Generate for Responses {
    type Encoder = ResponseFrames;
    type Collector = ResponseFrames;
    const ID_PREFIX: &'static str = "resp_";

    /// The request continues the stored conversation of `previous_response_id`.
    fn prepare(
        request: ResponsesRequest,
        state: &AppState,
    ) -> Result<(Self, GenerateRequest), ApiError> {
        let previous = match request.previous_response_id.as_deref() {
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
        let prepared = request.prepare(
            &state.config.sampling,
            previous.as_ref().map(|p| p.conversation.as_slice()),
        )?;
        let responses = Responses {
            stream: prepared.stream,
            echo: prepared.echo,
            keep: prepared.store.then(|| Keep {
                store: state.responses.clone(),
                history: prepared.history,
            }),
        };
        Ok((responses, prepared.request))
    }

    fn is_stream(&self) -> bool {
        self.stream
    }

    fn encoder(self, reply: ReplyHead) -> ResponseFrames {
        let head = Head {
            id: reply.id,
            created_at: reply.created,
            model: reply.model,
            echo: self.echo,
        };
        ResponseFrames {
            encoder: ResponseEncoder::new(head),
            keep: self.keep,
        }
    }

    /// A response that is not streamed is the encoder's last state.
    fn collector(self, reply: ReplyHead) -> ResponseFrames {
        self.encoder(reply)
    }
}

/// Where a finished response is kept, with the conversation it answered.
struct Keep {
    store: Arc<ResponseStore>,
    history: Vec<Message>,
}

/// The Responses encoder, keeping the response when it ends well and `store` asked for
/// it, whether it was streamed or not.
pub struct ResponseFrames {
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

impl SseEncoder for ResponseFrames {
    fn start(&mut self) -> Vec<String> {
        SseEncoder::start(&mut self.encoder)
    }

    fn on_event(&mut self, event: GenerationEvent) -> Vec<String> {
        let frames = SseEncoder::on_event(&mut self.encoder, event);
        self.keep_if_done();
        frames
    }

    fn error(&mut self, error: &EngineError) -> Vec<String> {
        SseEncoder::error(&mut self.encoder, error)
    }

    fn ping(&self) -> String {
        SseEncoder::ping(&self.encoder)
    }

    fn is_finished(&self) -> bool {
        SseEncoder::is_finished(&self.encoder)
    }
}

impl Collector for ResponseFrames {
    type Body = Value;

    fn push(&mut self, event: GenerationEvent) {
        SseEncoder::on_event(self, event);
    }

    fn finish(mut self, completion: Completion) -> Value {
        SseEncoder::on_event(&mut self, GenerationEvent::Done(completion));
        self.encoder.response()
    }
}
