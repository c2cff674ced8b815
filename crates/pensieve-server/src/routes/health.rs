//! `GET /health`, `GET|HEAD /`, and the 404 fallback.

use axum::extract::State;
use axum::http::Uri;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use pensieve_protocol::anthropic::ErrorKind;
use serde_json::json;

use crate::app::{AppState, RequestId};
use crate::error::ApiError;

/// 200 once the model is loaded (the server only listens after that).
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    Json(json!({
        "status": "ok",
        "model": state.engine.info().id,
        "queue_depth": state.engine.queue_depth(),
    }))
}

pub async fn root() -> &'static str {
    "Pensieve is running.\n"
}

pub async fn not_found(Extension(id): Extension<RequestId>, uri: Uri) -> ApiError {
    ApiError::new(ErrorKind::NotFound, format!("no route for {}", uri.path()))
        .with_request_id(&id.0)
}
