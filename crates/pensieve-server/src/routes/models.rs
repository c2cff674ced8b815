//! `GET /v1/models` and `GET /v1/models/{id}`.
//!
//! The server runs one model. `claude-*` names are served by it too (Claude Code asks
//! for them), so they are reported as existing. Each entry carries the fields of both
//! APIs' model objects (Anthropic's `type`, `display_name`, `created_at`; OpenAI's
//! `object`, `created`, `owned_by`), so both SDKs read the same list.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use pensieve_protocol::anthropic::ErrorKind;
use serde_json::{json, Value};

use crate::app::{AppState, RequestId};
use crate::error::ApiError;

fn model_entry(state: &AppState, id: &str) -> Value {
    let created = humantime::format_rfc3339_seconds(state.config.model_created).to_string();
    let served = &state.engine.info().id;
    let display_name = if id == served {
        served.clone()
    } else {
        format!("{id} (served by {served})")
    };
    let created_unix = state
        .config
        .model_created
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({"type": "model", "id": id, "display_name": display_name, "created_at": created,
           "object": "model", "created": created_unix, "owned_by": "pensieve"})
}

pub async fn list(State(state): State<AppState>) -> Json<Value> {
    let id = state.engine.info().id.clone();
    Json(json!({
        "object": "list",
        "data": [model_entry(&state, &id)],
        "has_more": false,
        "first_id": id,
        "last_id": id,
    }))
}

pub async fn retrieve(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if id == state.engine.info().id || id.starts_with("claude-") {
        Ok(Json(model_entry(&state, &id)))
    } else {
        Err(ApiError::new(
            ErrorKind::NotFound,
            format!("model: {id} is not served here"),
        )
        .with_request_id(&request_id.0))
    }
}
