//! `GET /metrics`: the Prometheus scrape endpoint.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::state::AppState;

/// What prometheus-client's text encoder writes is OpenMetrics (`# UNIT`, `# EOF`, counters
/// typed under their name without `_total`); read as the older 0.0.4 text format, the
/// counters' `TYPE` lines would not match their samples and they would come out untyped.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let metrics = state.metrics();
    // Read at scrape time: handlers fill the queues and the engine threads drain them,
    // so no one place sees every change.
    let queued = state
        .models
        .models()
        .iter()
        .map(|m| m.backend.queue_depth());
    metrics.set_queue_depth(queued.sum());
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode())
}
