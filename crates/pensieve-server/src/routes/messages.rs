//! `POST /v1/messages` (streaming and not) and `POST /v1/messages/count_tokens`:
//! where an Anthropic request becomes an engine request, and engine events become
//! Anthropic responses. Where an upstream's replicas speak `/v1/messages` themselves
//! (`api = "anthropic"`), they take the request as it is.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pensieve_engine::GenerateRequest;
use pensieve_protocol::anthropic::{
    parse_count_tokens, parse_messages, CountTokensRequest, MessageCollector, MessagesRequest,
    StreamEncoder,
};
use pensieve_upstream::{conversation_key, Endpoint, Upstream, UpstreamApi};
use serde_json::json;

use super::extract::{reject, Parse, Parsed};
use super::generate::{Generate, ReplyHead};
use super::io::blocking;
use super::relay;
use crate::error::{ApiError, Dialect};
use crate::models::Backend;
use crate::state::AppState;

/// A message's options that shape its reply.
pub struct Messages {
    stream: bool,
}

impl Parse for Messages {
    type Request = MessagesRequest;
    const DIALECT: Dialect = Dialect::Anthropic;

    fn parse(bytes: &[u8]) -> Result<MessagesRequest, ApiError> {
        Ok(parse_messages(bytes)?)
    }
}

impl Generate for Messages {
    type Encoder = StreamEncoder;
    type Collector = MessageCollector;
    const ID_PREFIX: &'static str = "msg_";

    fn prepare(
        request: MessagesRequest,
        state: &AppState,
    ) -> Result<(Self, GenerateRequest), ApiError> {
        let stream = request.is_stream();
        let request = request.into_generate_with(&state.config.sampling)?;
        Ok((Messages { stream }, request))
    }

    fn relay_to(upstream: &Upstream) -> Option<Endpoint> {
        (upstream.api() == UpstreamApi::Anthropic).then_some(Endpoint::Messages)
    }

    fn is_stream(&self) -> bool {
        self.stream
    }

    /// `message_start` goes out at once, with the prompt's cache split as it was when the
    /// request was queued.
    fn encoder(self, reply: ReplyHead) -> StreamEncoder {
        StreamEncoder::new(reply.id, reply.model, reply.queued)
    }

    fn collector(self, reply: ReplyHead) -> MessageCollector {
        MessageCollector::new(reply.id, reply.model)
    }
}

/// The body of `count_tokens`.
pub struct CountTokens;

impl Parse for CountTokens {
    type Request = CountTokensRequest;
    const DIALECT: Dialect = Dialect::Anthropic;

    fn parse(bytes: &[u8]) -> Result<CountTokensRequest, ApiError> {
        Ok(parse_count_tokens(bytes)?)
    }
}

pub async fn count_tokens(State(state): State<AppState>, body: Parsed<CountTokens>) -> Response {
    let Parsed {
        request,
        bytes,
        request_id,
    } = body;
    let result = async {
        let mut request = request.into_generate()?;
        let count = match state.backend_for(&request.model).clone() {
            Backend::Local(engine) => {
                super::generate::fetch_allowed_images(&state, &mut request).await?;
                super::generate::text_only_images(&state, &request, &request_id)?;
                blocking(move || engine.prompt_tokens(&request))
                    .await??
                    .len()
            }
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
    result.unwrap_or_else(|e| reject(e, CountTokens::DIALECT, &request_id))
}
