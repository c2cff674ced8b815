//! The router, its shared state, and the middleware every request passes through
//! (metrics, request id, authentication).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use pensieve_protocol::anthropic::ErrorKind;
use pensieve_protocol::ids::random_id;

use crate::auth::is_authorized;
use crate::error::{ApiError, Dialect};
use crate::models::{Backend, ModelRouter};
use crate::{request_metrics, routes};
use pensieve_engine::EngineMetrics;

/// Settings of the HTTP edge.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// When set, every API route needs this key.
    pub api_key: Option<String>,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// How often a stream without other traffic gets a `ping` (prefill can take minutes).
    pub ping_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            api_key: None,
            body_limit: 32 * 1024 * 1024,
            ping_interval: Duration::from_secs(3),
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub models: Arc<ModelRouter>,
    pub config: Arc<ServerConfig>,
}

impl AppState {
    /// The backend of the model that serves requests for `requested`.
    pub fn backend_for(&self, requested: &str) -> &Backend {
        &self.models.route(requested).backend
    }

    /// The metrics every engine records into.
    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        self.models.default_model().backend.metrics()
    }
}

/// The id of the request being handled, also sent back as the `request-id` header.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The whole API.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/messages", post(routes::messages::messages))
        .route("/v1/v1/messages", post(routes::messages::messages))
        .route(
            "/v1/messages/count_tokens",
            post(routes::messages::count_tokens),
        )
        .route(
            "/v1/v1/messages/count_tokens",
            post(routes::messages::count_tokens),
        )
        .route("/v1/chat/completions", post(routes::chat::completions))
        .route("/chat/completions", post(routes::chat::completions))
        .route("/v1/completions", post(routes::completions::completions))
        .route("/completions", post(routes::completions::completions))
        .route("/v1/models", get(routes::models::list))
        .route("/v1/models/{id}", get(routes::models::retrieve))
        .route("/health", get(routes::health::health))
        .route("/metrics", get(routes::metrics::metrics))
        .route("/", get(routes::health::root).head(routes::health::root))
        .fallback(routes::health::not_found);
    // The last layer added runs first: metrics wrap `edge`, so refused requests count too.
    api.layer(axum::middleware::from_fn_with_state(state.clone(), edge))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_metrics::record,
        ))
        .with_state(state)
}

/// Paths that answer without a key: liveness checks and metrics carry no prompts or
/// outputs, only counts and timings.
fn is_public(method: &Method, path: &str) -> bool {
    path == "/health"
        || path == "/metrics"
        || (path == "/" && (method == Method::GET || method == Method::HEAD))
}

/// Assign the request id, check the key, and stamp the id on the response.
async fn edge(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let id = random_id("req_");
    request.extensions_mut().insert(RequestId(id.clone()));
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let mut response = match &state.config.api_key {
        Some(key) if !is_public(&method, &path) && !is_authorized(request.headers(), key) => {
            ApiError::new(ErrorKind::Authentication, "invalid x-api-key")
                .in_dialect(Dialect::of_path(&path))
                .with_request_id(&id)
                .into_response()
        }
        _ => next.run(request).await,
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("request-id", value);
    }
    // Successful generations log their own line with tokens and timings.
    if response.status().is_client_error() || response.status().is_server_error() {
        tracing::info!(request_id = %id, %method, %path, status = response.status().as_u16(), "request refused");
    }
    response
}

#[cfg(test)]
#[path = "app_tests.rs"]
mod tests;
