//! `GET /metrics`: the Prometheus scrape endpoint.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::app::AppState;

/// What prometheus-client's text encoder writes is OpenMetrics (`# UNIT`, `# EOF`, counters
/// typed under their name without `_total`); read as the older 0.0.4 text format, the
/// counters' `TYPE` lines would not match their samples and they would come out untyped.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let metrics = state.engine.metrics();
    // Read at scrape time: handlers fill the queue and the engine thread drains it, so
    // no one place sees every change.
    metrics.set_queue_depth(state.engine.queue_depth());
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode())
}
