//! The middleware that counts every answered request by route and status, and times it
//! until its response body has been sent or dropped (a streamed generation counts until
//! its last event, or until the client left).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use pensieve_engine::EngineMetrics;

use crate::state::AppState;

/// The `route` label of requests that matched no route (the 404 fallback).
pub const UNMATCHED: &str = "unmatched";

/// Count the request under its route template once the response is ready, and time it
/// until its body is done. Must wrap the authentication layer, so refusals are counted.
pub async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // The template (`/v1/models/{id}`), not the path: any client-chosen string as a
    // label would let clients grow the number of series without bound.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
        .to_owned();
    let response = next.run(request).await;
    let metrics = state.metrics().clone();
    metrics.record_request(&route, response.status().as_u16());
    let (parts, body) = response.into_parts();
    let timer = Timer {
        metrics,
        route,
        started,
    };
    Response::from_parts(
        parts,
        Body::new(TimedBody {
            inner: body,
            _timer: timer,
        }),
    )
}

/// Observes the request's duration when dropped.
struct Timer {
    metrics: Arc<EngineMetrics>,
    route: String,
    started: Instant,
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.metrics
            .observe_request_duration(&self.route, self.started.elapsed());
    }
}

/// A response body that carries the [`Timer`]: the server drops the body once it has
/// been sent or the client has gone, which is when the request is over.
struct TimedBody {
    inner: Body,
    /// Never read: only its drop matters.
    _timer: Timer,
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    // Forwarded so the server still sends content-length for fixed-size bodies.
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}
