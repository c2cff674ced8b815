//! The router, its shared state, and the middleware every request passes through
//! (metrics, the browser guard, CORS, request id, authentication, the body's type).

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use pensieve_protocol::anthropic::ErrorKind;
use pensieve_protocol::ids::random_id;

use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use crate::auth::is_authorized;
use crate::browser::{is_json, BrowserPolicy};
use crate::error::{ApiError, Dialect};
use crate::routes::chat::Chat;
use crate::routes::completions::TextCompletion;
use crate::routes::generate::generate;
use crate::routes::messages::Messages;
use crate::routes::responses::Responses;
use crate::state::RequestId;
pub use crate::state::{AppState, ServerConfig};
use crate::{request_metrics, routes};

/// The whole API.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/messages", post(generate::<Messages>))
        .route("/v1/v1/messages", post(generate::<Messages>))
        .route(
            "/v1/messages/count_tokens",
            post(routes::messages::count_tokens),
        )
        .route(
            "/v1/v1/messages/count_tokens",
            post(routes::messages::count_tokens),
        )
        .route("/v1/chat/completions", post(generate::<Chat>))
        .route("/chat/completions", post(generate::<Chat>))
        .route("/v1/responses", post(generate::<Responses>))
        .route("/responses", post(generate::<Responses>))
        .route(
            "/v1/responses/{id}",
            get(routes::responses::retrieve).delete(routes::responses::delete),
        )
        .route("/v1/completions", post(generate::<TextCompletion>))
        .route("/completions", post(generate::<TextCompletion>))
        .route("/v1/models", get(routes::models::list))
        .route("/v1/models/{id}", get(routes::models::retrieve))
        .route("/health", get(routes::health::health))
        .route("/metrics", get(routes::metrics::metrics))
        .route("/", get(routes::health::root).head(routes::health::root))
        .fallback(routes::health::not_found);
    // The last layer added runs first: metrics, then the browser guard, then CORS (which
    // answers preflights of allowed origins), then `edge`. Refused requests count too.
    api.layer(axum::middleware::from_fn_with_state(state.clone(), edge))
        .layer(cors(&state.config.browser))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_metrics::record,
        ))
        .with_state(state)
}

/// CORS headers for the origins the user allowed; the guard has refused the others.
fn cors(policy: &BrowserPolicy) -> CorsLayer {
    let policy = policy.clone();
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            origin.to_str().is_ok_and(|o| policy.origin_allowed(o))
        }))
        .allow_methods([Method::GET, Method::POST, Method::HEAD, Method::DELETE])
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([HeaderName::from_static("request-id"), header::RETRY_AFTER])
        .max_age(Duration::from_secs(600))
}

/// Refuse what a web page may send but no client of ours does: a foreign `Host` on a
/// loopback bind (DNS rebinding), and a browser `Origin` the user did not allow.
async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let policy = &state.config.browser;
    let host = request
        .headers()
        .get(header::HOST)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .or_else(|| request.uri().authority().map(|a| a.to_string()));
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let refusal = if !policy.host_allowed(host.as_deref()) {
        let host = host.unwrap_or_default();
        Some(format!(
            "Host {host:?} is not allowed: this server answers only to names of this machine \
             (localhost, 127.0.0.1, [::1]); start it with --allowed-host NAME to answer to another"
        ))
    } else {
        origin.filter(|o| !policy.origin_allowed(o)).map(|o| {
            format!(
                "Origin {o:?} may not call this server from a browser; start it with \
                 --cors-origin {o} to allow it"
            )
        })
    };
    match refusal {
        Some(message) => {
            let path = request.uri().path().to_owned();
            tracing::warn!(%path, "{message}");
            ApiError::new(ErrorKind::Permission, message)
                .in_dialect(Dialect::of_path(&path))
                .into_response()
        }
        None => next.run(request).await,
    }
}

/// A `POST` whose body is not declared JSON. A page can POST text/plain or a form
/// anywhere without asking the server first; JSON it cannot.
fn not_json(method: &Method, headers: &HeaderMap) -> Option<ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE);
    if method != Method::POST || is_json(content_type.and_then(|v| v.to_str().ok())) {
        return None;
    }
    let given = content_type.map_or_else(
        || "none".to_owned(),
        |v| format!("{:?}", String::from_utf8_lossy(v.as_bytes())),
    );
    Some(ApiError::new(
        ErrorKind::InvalidRequest,
        format!("Content-Type must be application/json, not {given}"),
    ))
}

/// Paths that answer without a key: liveness checks and metrics carry no prompts or
/// outputs, only counts and timings.
fn is_public(method: &Method, path: &str) -> bool {
    path == "/health"
        || path == "/metrics"
        || (path == "/" && (method == Method::GET || method == Method::HEAD))
}

/// Assign the request id, check the key and the body's type, and stamp the id on the
/// response.
async fn edge(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let id = random_id("req_");
    request.extensions_mut().insert(RequestId(id.clone()));
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let refusal = match &state.config.api_key {
        Some(key) if !is_public(&method, &path) && !is_authorized(request.headers(), key) => Some(
            ApiError::new(ErrorKind::Authentication, "invalid x-api-key"),
        ),
        _ => None,
    };
    let refusal = refusal.or_else(|| not_json(&method, request.headers()));
    let mut response = match refusal {
        Some(error) => error
            .in_dialect(Dialect::of_path(&path))
            .with_request_id(&id)
            .into_response(),
        None => next.run(request).await,
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
