//! `GET /v1/models` and `GET /v1/models/{id}`.
//!
//! The list holds the loaded models. Any other name routes to one of them (an alias, else
//! the default model: Claude Code asks for `claude-*` names), so retrieving it succeeds
//! too, naming the model that serves it. Each entry carries the fields of both APIs'
//! model objects (Anthropic's `type`, `display_name`, `created_at`; OpenAI's `object`,
//! `created`, `owned_by`), so both SDKs read the same list.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use pensieve_protocol::anthropic::ErrorKind;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::models::ServedModel;
use crate::state::{AppState, RequestId};

fn model_entry(id: &str, served: &ServedModel) -> Value {
    let created = humantime::format_rfc3339_seconds(served.created).to_string();
    let display_name = if id == served.id {
        served.id.clone()
    } else {
        format!("{id} (served by {})", served.id)
    };
    let created_unix = served
        .created
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({"type": "model", "id": id, "display_name": display_name, "created_at": created,
           "object": "model", "created": created_unix, "owned_by": "pensieve"})
}

pub async fn list(State(state): State<AppState>) -> Json<Value> {
    let models = state.models.models();
    let data: Vec<Value> = models.iter().map(|m| model_entry(&m.id, m)).collect();
    Json(json!({
        "object": "list",
        "data": data,
        "has_more": false,
        "first_id": models.first().map(|m| &m.id),
        "last_id": models.last().map(|m| &m.id),
    }))
}

pub async fn retrieve(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let served = state.models.route(&id);
    let aliased = state
        .models
        .aliases()
        .any(|(p, _)| crate::models::glob_match(p, &id));
    if id == served.id || id.starts_with("claude-") || aliased {
        Ok(Json(model_entry(&id, served)))
    } else {
        Err(ApiError::new(
            ErrorKind::NotFound,
            format!("model: {id} is not served here"),
        )
        .with_request_id(&request_id.0))
    }
}
