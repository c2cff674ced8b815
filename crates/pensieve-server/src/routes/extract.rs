//! The extractor every generation route (and `count_tokens`) reads its request with: the
//! body within the server's limit and timeout, parsed by the API's own parser, and any
//! failure answered in that API's error envelope with the request's id.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use pensieve_protocol::anthropic::ErrorKind;

use super::io::read_body;
use crate::error::{ApiError, Dialect};
use crate::state::{AppState, RequestId};

/// How one API reads a request body.
pub trait Parse: Send + 'static {
    /// The request as the API's parser gives it.
    type Request: Send;
    /// The envelope the API's errors use.
    const DIALECT: Dialect;
    fn parse(bytes: &[u8]) -> Result<Self::Request, ApiError>;
}

/// A request read and parsed for API `P`.
pub struct Parsed<P: Parse> {
    pub request: P::Request,
    /// The body as it came, for an upstream that takes the request as it is.
    pub bytes: Bytes,
    pub request_id: String,
}

impl<P: Parse> FromRequest<AppState> for Parsed<P> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let (parts, body) = request.into_parts();
        // The middleware in `app` gives every request its id before any handler runs.
        let Some(RequestId(request_id)) = parts.extensions.get::<RequestId>().cloned() else {
            let e = ApiError::new(ErrorKind::Api, "the request has no id");
            return Err(e.in_dialect(P::DIALECT).into_response());
        };
        let parsed = async {
            let bytes = read_body(&parts.headers, body, &state.config).await?;
            let request = P::parse(&bytes)?;
            Ok::<_, ApiError>((request, bytes))
        };
        match parsed.await {
            Ok((request, bytes)) => Ok(Parsed {
                request,
                bytes,
                request_id,
            }),
            Err(e) => Err(reject(e, P::DIALECT, &request_id)),
        }
    }
}

/// `e` as the API with `dialect` says it, naming the request.
pub fn reject(e: ApiError, dialect: Dialect, request_id: &str) -> Response {
    e.in_dialect(dialect)
        .with_request_id(request_id)
        .into_response()
}
