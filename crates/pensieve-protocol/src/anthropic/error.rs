//! Anthropic's error envelope: `{"type":"error","error":{"type","message"},"request_id"}`.

use pensieve_engine::EngineError;
use serde_json::{json, Value};

/// The error types Anthropic's API uses, each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Authentication,
    Permission,
    NotFound,
    RequestTooLarge,
    /// The client did not send its request in time (408; Anthropic has no type of its own
    /// for it, so it is an `invalid_request_error`).
    RequestTimeout,
    RateLimit,
    Api,
    Overloaded,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Authentication => 401,
            ErrorKind::Permission => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::RequestTooLarge => 413,
            ErrorKind::RateLimit => 429,
            ErrorKind::Api => 500,
            ErrorKind::Overloaded => 529,
        }
    }

    /// The API error type an engine failure is reported as.
    pub fn of_engine_error(error: &EngineError) -> Self {
        match error {
            EngineError::Upstream { status: 413, .. } => ErrorKind::RequestTooLarge,
            e if e.is_client_error() => ErrorKind::InvalidRequest,
            EngineError::Upstream {
                status: 429 | 503 | 529,
                ..
            } => ErrorKind::Overloaded,
            EngineError::Overloaded { .. }
            | EngineError::ShuttingDown
            | EngineError::BackendRestarted(_) => ErrorKind::Overloaded,
            _ => ErrorKind::Api,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::RequestTimeout => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::Permission => "permission_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::RequestTooLarge => "request_too_large",
            ErrorKind::RateLimit => "rate_limit_error",
            ErrorKind::Api => "api_error",
            ErrorKind::Overloaded => "overloaded_error",
        }
    }
}

/// The JSON body of an error response (or of an SSE `error` event when `request_id` is None).
pub fn error_body(kind: ErrorKind, message: &str, request_id: Option<&str>) -> Value {
    let mut body = json!({
        "type": "error",
        "error": { "type": kind.as_str(), "message": message },
    });
    if let Some(id) = request_id {
        body["request_id"] = Value::String(id.to_owned());
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_the_api() {
        let table = [
            (ErrorKind::InvalidRequest, 400, "invalid_request_error"),
            (ErrorKind::Authentication, 401, "authentication_error"),
            (ErrorKind::Permission, 403, "permission_error"),
            (ErrorKind::NotFound, 404, "not_found_error"),
            (ErrorKind::RequestTimeout, 408, "invalid_request_error"),
            (ErrorKind::RequestTooLarge, 413, "request_too_large"),
            (ErrorKind::RateLimit, 429, "rate_limit_error"),
            (ErrorKind::Api, 500, "api_error"),
            (ErrorKind::Overloaded, 529, "overloaded_error"),
        ];
        for (kind, status, name) in table {
            assert_eq!(kind.status(), status);
            assert_eq!(kind.as_str(), name);
        }
    }

    #[test]
    fn envelope_shape() {
        let body = error_body(ErrorKind::NotFound, "no such model", Some("req_1"));
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "not_found_error");
        assert_eq!(body["error"]["message"], "no such model");
        assert_eq!(body["request_id"], "req_1");
        assert!(error_body(ErrorKind::Api, "x", None)
            .get("request_id")
            .is_none());
    }
}
