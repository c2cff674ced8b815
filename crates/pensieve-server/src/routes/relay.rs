//! Requests an upstream's replicas take as they are (`pensieve_upstream::relay`): the
//! answer goes to the client as it comes, and a stream that fails after its 200 ends with
//! an error event in the client's API.

use axum::body::Bytes;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use pensieve_engine::EngineError;
use pensieve_protocol::{anthropic, openai};
use pensieve_upstream::{Endpoint, Relayed, Upstream};
use serde_json::Value;

use super::io::sse_response;
use crate::error::ApiError;

/// Relay `body` (already read and parsed by the route, so within Pensieve's limits) to
/// `endpoint` of the replica for conversation `key`.
pub async fn relay(
    upstream: &Upstream,
    endpoint: Endpoint,
    body: &[u8],
    key: u64,
) -> Result<Response, ApiError> {
    let relayed = upstream.relay(endpoint, json(body, endpoint)?, key).await?;
    Ok(respond(relayed, endpoint))
}

/// `count_tokens` as the replicas answer it; None when they have no such endpoint.
pub async fn count_tokens(
    upstream: &Upstream,
    body: &[u8],
    key: u64,
) -> Result<Option<Response>, ApiError> {
    let mut body = json(body, Endpoint::CountTokens)?;
    if let Some(fields) = body.as_object_mut() {
        fields.remove("stream");
    }
    match upstream.relay(Endpoint::CountTokens, body, key).await {
        Err(EngineError::Upstream { status: 404, .. }) => Ok(None),
        relayed => Ok(Some(respond(relayed?, Endpoint::CountTokens))),
    }
}

/// The body to send: as the client sent it, less Claude Code's billing line (it changes
/// from request to request and would defeat the replica's prefix cache).
fn json(body: &[u8], endpoint: Endpoint) -> Result<Value, ApiError> {
    let mut body = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            anthropic::ErrorKind::InvalidRequest,
            format!("the body is not JSON: {e}"),
        )
    })?;
    if endpoint.is_anthropic() {
        anthropic::strip_billing_line(&mut body);
    }
    Ok(body)
}

fn respond(relayed: Relayed, endpoint: Endpoint) -> Response {
    match relayed {
        Relayed::Whole(bytes) => {
            let mut response = bytes.into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Relayed::Stream(mut pieces) => {
            let (frames, response) = sse_response();
            tokio::spawn(async move {
                while let Some(piece) = pieces.recv().await {
                    let bytes = match piece {
                        Ok(bytes) => bytes,
                        Err(e) => Bytes::from(if endpoint.is_anthropic() {
                            anthropic::stream::error_event(&e).to_frame()
                        } else {
                            openai::stream::error_frames(&e).concat()
                        }),
                    };
                    // The client went away: dropping `pieces` ends the upstream request.
                    if frames.send(Ok(bytes)).await.is_err() {
                        return;
                    }
                }
            });
            response
        }
    }
}
