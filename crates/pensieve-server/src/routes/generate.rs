//! The one handler behind every generation route (`/v1/messages`, `/v1/chat/completions`,
//! `/v1/completions`, `/v1/responses`): an API's parsed request becomes an engine request,
//! goes as it is to an upstream that speaks the API or is queued, and its events come
//! back streamed by the API's encoder or gathered by its collector. Each API says how in
//! one [`Generate`] impl.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pensieve_engine::{Completion, EngineError, GenerateRequest, Usage};
use pensieve_protocol::anthropic::ErrorKind;
use pensieve_protocol::encode::{Collector, SseEncoder};
use pensieve_protocol::ids::random_id;
use pensieve_upstream::{conversation_key, Endpoint, Upstream};

use super::extract::{reject, Parse, Parsed};
use super::io::{collect, log_outcome, stream_sse, submit, LogOutcome};
use super::relay::relay;
use crate::error::ApiError;
use crate::models::Backend;
use crate::state::{AppState, ImagePolicy};

/// One generation API. `Self` is what the reply needs to remember of the request (whether
/// it streams, its options) once the engine request is made from it.
pub trait Generate: Parse + Sized {
    type Encoder: SseEncoder;
    type Collector: Collector;
    /// How the reply's id begins.
    const ID_PREFIX: &'static str;

    /// The engine request, and what the reply keeps of the API's.
    fn prepare(
        request: Self::Request,
        state: &AppState,
    ) -> Result<(Self, GenerateRequest), ApiError>;

    /// The endpoint of `upstream`'s replicas that takes the request as the client sent
    /// it, when they speak this API; None to translate it like a local model's.
    fn relay_to(_upstream: &Upstream) -> Option<Endpoint> {
        None
    }

    fn is_stream(&self) -> bool;
    fn encoder(self, reply: ReplyHead) -> Self::Encoder;
    fn collector(self, reply: ReplyHead) -> Self::Collector;
}

/// What every reply carries besides the engine's events.
pub struct ReplyHead {
    pub id: String,
    /// The name the client asked for, echoed back.
    pub model: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// The prompt's usage as the prefix cache stood when the request was queued.
    pub queued: Usage,
}

pub async fn generate<A: Generate>(State(state): State<AppState>, body: Parsed<A>) -> Response {
    let request_id = body.request_id.clone();
    match run::<A>(&state, body).await {
        Ok(response) => response,
        Err(e) => reject(e, A::DIALECT, &request_id),
    }
}

async fn run<A: Generate>(state: &AppState, body: Parsed<A>) -> Result<Response, ApiError> {
    let (api, request) = A::prepare(body.request, state)?;
    if let Backend::Upstream { upstream, .. } = state.backend_for(&request.model) {
        if let Some(endpoint) = A::relay_to(upstream) {
            let key = conversation_key(&request);
            return relay(upstream, endpoint, &body.bytes, key).await;
        }
    }
    let mut request = request;
    fetch_allowed_images(state, &mut request).await?;
    text_only_images(state, &request, &body.request_id)?;
    let (request, generation) = submit(state, request).await?;
    let reply = ReplyHead {
        id: random_id(A::ID_PREFIX),
        model: request.model,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        queued: generation.queued_usage,
    };
    let log = {
        let (request_id, model) = (body.request_id.clone(), reply.model.clone());
        move |stream: bool, outcome: Result<&Completion, &EngineError>| {
            log_outcome(&request_id, &model, stream, outcome);
        }
    };
    if api.is_stream() {
        let encoder = api.encoder(reply);
        let log: LogOutcome = Box::new(move |outcome| log(true, outcome));
        let interval = state.config.ping_interval;
        return Ok(stream_sse(
            body.request_id,
            encoder,
            generation,
            interval,
            log,
        ));
    }
    let mut collector = api.collector(reply);
    let outcome = collect(generation, |event| collector.push(event)).await;
    log(false, outcome.as_ref());
    Ok(Json(collector.finish(outcome?)).into_response())
}

/// Images given by URL, fetched when the server allows it (`--allow-image-urls`) and the
/// model sees images.
pub async fn fetch_allowed_images(
    state: &AppState,
    request: &mut GenerateRequest,
) -> Result<(), ApiError> {
    let sees = matches!(state.backend_for(&request.model), Backend::Local(e) if e.sees_images());
    if sees && state.config.allow_image_urls {
        crate::fetch_images::fetch_images(request).await?;
    }
    Ok(())
}

/// The images of a request that its model does not see: left as the placeholders the
/// translation put in their place (said once per request in the log), or refused with
/// `--images reject`. A model with a vision projector sees those sent inline; one given
/// by URL or file id stays a placeholder.
pub fn text_only_images(
    state: &AppState,
    request: &GenerateRequest,
    request_id: &str,
) -> Result<(), ApiError> {
    let sees = matches!(state.backend_for(&request.model), Backend::Local(e) if e.sees_images());
    let mut unseen = request.images.iter().filter(|i| !sees || i.data.is_none());
    let Some(first) = unseen.next() else {
        return Ok(());
    };
    match state.config.images {
        ImagePolicy::Reject => {
            let why = if sees {
                "this server does not fetch images by URL or file id; send it inline (base64)"
            } else {
                "this model does not accept images (the server runs with --images reject)"
            };
            let mut e = ApiError::new(ErrorKind::InvalidRequest, format!("{}: {why}", first.at));
            e.param = Some(first.at.clone());
            Err(e)
        }
        ImagePolicy::Placeholder => {
            tracing::info!(
                request_id,
                images = 1 + unseen.count(),
                first = %first.summary,
                at = %first.at,
                "images shown to the model as placeholders: {}",
                if sees { "not sent inline" } else { "it has no vision" }
            );
            Ok(())
        }
    }
}
