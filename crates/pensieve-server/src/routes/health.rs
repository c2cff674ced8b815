//! `GET /health`, `GET|HEAD /`, and the 404 fallback.

use axum::extract::State;
use axum::http::Uri;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use pensieve_protocol::anthropic::ErrorKind;
use serde_json::json;

use crate::error::ApiError;
use crate::state::{AppState, RequestId};

/// 200 once the model is loaded (the server only listens after that).
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let models = state.models.models();
    Json(json!({
        "status": "ok",
        "model": state.models.default_model().id,
        "context_size": state.models.default_model().backend.context_size(),
        "runs_on": state.models.default_model().runs_on,
        "models": models.iter().map(|m| &m.id).collect::<Vec<_>>(),
        // What Claude Code's quick requests get (`pensieve claude` sets its haiku model).
        "haiku_model": state.models.route("claude-haiku-4-5").id,
        "queue_depth": models.iter().map(|m| m.backend.queue_depth()).sum::<usize>(),
        // Each upstream model's replicas: which are in use, and how busy.
        "upstreams": models
            .iter()
            .filter_map(|m| {
                let replicas = m.backend.replicas();
                (!replicas.is_empty()).then(|| json!({
                    "model": m.id,
                    "replicas": replicas
                        .iter()
                        .map(|r| json!({
                            "url": r.url,
                            "state": if r.up { "up" } else { "down" },
                            "in_flight": r.in_flight,
                        }))
                        .collect::<Vec<_>>(),
                }))
            })
            .collect::<Vec<_>>(),
    }))
}

pub async fn root() -> &'static str {
    "Pensieve is running.\n"
}

pub async fn not_found(Extension(id): Extension<RequestId>, uri: Uri) -> ApiError {
    ApiError::new(ErrorKind::NotFound, format!("no route for {}", uri.path()))
        .with_request_id(&id.0)
}
