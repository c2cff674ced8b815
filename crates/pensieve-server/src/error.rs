//! One error type for every handler, rendered in the envelope of the API the request
//! came to: Anthropic's, or OpenAI's on its routes.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use pensieve_engine::EngineError;
use pensieve_protocol::anthropic::{error_body, ErrorKind, RequestError};
use pensieve_protocol::openai::{self, OpenAiError};

/// Which API's error envelope a response uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dialect {
    #[default]
    Anthropic,
    OpenAi,
}

impl Dialect {
    /// The dialect of the API served at `path`.
    pub fn of_path(path: &str) -> Dialect {
        let path = path.trim_start_matches("/v1");
        if path.starts_with("/chat/completions")
            || path.starts_with("/completions")
            || path.starts_with("/responses")
        {
            Dialect::OpenAi
        } else {
            Dialect::Anthropic
        }
    }
}

/// Seconds a client should wait before retrying when the server is busy.
const RETRY_AFTER_SECS: u64 = 2;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    pub request_id: Option<String>,
    pub dialect: Dialect,
    /// OpenAI's `param` and `code`.
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            request_id: None,
            dialect: Dialect::Anthropic,
            param: None,
            code: None,
        }
    }

    pub fn in_dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    pub fn with_request_id(mut self, id: &str) -> Self {
        self.request_id = Some(id.to_owned());
        self
    }

    pub fn status(&self) -> StatusCode {
        let status = match self.dialect {
            Dialect::Anthropic => self.kind.status(),
            Dialect::OpenAi => openai::error::status(self.kind),
        };
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<OpenAiError> for ApiError {
    fn from(e: OpenAiError) -> Self {
        let mut error =
            ApiError::new(ErrorKind::InvalidRequest, e.message).in_dialect(Dialect::OpenAi);
        error.param = e.param;
        error
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        ApiError::new(ErrorKind::InvalidRequest, e.0)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let (code, param) = openai::engine_error_detail(&e);
        let mut error = ApiError::new(ErrorKind::of_engine_error(&e), e.to_string());
        error.code = code.map(str::to_owned);
        error.param = param.map(str::to_owned);
        error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.dialect {
            Dialect::Anthropic => error_body(self.kind, &self.message, self.request_id.as_deref()),
            Dialect::OpenAi => openai::error_body(
                self.kind,
                &self.message,
                self.param.as_deref(),
                self.code.as_deref(),
            ),
        };
        let mut response = (self.status(), axum::Json(body)).into_response();
        if matches!(self.kind, ErrorKind::Overloaded | ErrorKind::RateLimit) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_statuses() {
        let cases = [
            (EngineError::PromptTooLong { tokens: 9, max: 8 }, 400),
            (EngineError::InvalidRequest("x".into()), 400),
            (EngineError::Overloaded { waiting: 1 }, 529),
            (EngineError::ShuttingDown, 529),
            (EngineError::Backend("x".into()), 500),
            (EngineError::BackendRestarted("x".into()), 529),
            (EngineError::EngineStopped, 500),
        ];
        let upstream = |status| EngineError::Upstream {
            status,
            message: "x".into(),
        };
        let cases = cases.into_iter().chain([
            // The upstream's own verdicts on the request pass on; its setup and faults are ours.
            (upstream(400), 400),
            (upstream(422), 400),
            (upstream(413), 413),
            (upstream(401), 500),
            (upstream(404), 500),
            (upstream(429), 529),
            (upstream(503), 529),
            (upstream(500), 500),
            (upstream(502), 500),
            (upstream(504), 500),
        ]);
        for (e, status) in cases {
            assert_eq!(ApiError::from(e).status().as_u16(), status);
        }
    }

    #[test]
    fn prompt_too_long_keeps_claude_codes_wording() {
        let e = ApiError::from(EngineError::PromptTooLong {
            tokens: 9000,
            max: 8191,
        });
        assert_eq!(e.message, "prompt is too long: 9000 tokens > 8191 maximum");
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
    }

    #[test]
    fn overloaded_sets_retry_after() {
        let r = ApiError::from(EngineError::Overloaded { waiting: 1 }).into_response();
        assert_eq!(r.status().as_u16(), 529);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }
}
