//! OpenAI's error envelope: `{"error": {"message", "type", "param", "code"}}`. The error
//! classes (and most statuses) are the ones the Anthropic side uses; a busy server is a
//! 503 here, as OpenAI sends it.

use pensieve_engine::EngineError;
use serde_json::{json, Value};

use crate::anthropic::ErrorKind;

/// A request the OpenAI edge refuses: 400, naming the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OpenAiError {
    pub message: String,
    pub param: Option<String>,
}

impl OpenAiError {
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        OpenAiError {
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }
}

/// The HTTP status of an error class.
pub fn status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::Overloaded => 503,
        other => other.status(),
    }
}

fn error_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidRequest
        | ErrorKind::Authentication
        | ErrorKind::NotFound
        | ErrorKind::RequestTooLarge
        | ErrorKind::RequestTimeout => "invalid_request_error",
        ErrorKind::Permission => "permission_error",
        ErrorKind::RateLimit => "rate_limit_error",
        ErrorKind::Api | ErrorKind::Overloaded => "server_error",
    }
}

fn default_code(kind: ErrorKind) -> Option<&'static str> {
    match kind {
        ErrorKind::Authentication => Some("invalid_api_key"),
        ErrorKind::NotFound => Some("not_found"),
        ErrorKind::Overloaded => Some("overloaded"),
        _ => None,
    }
}

/// The `code` and `param` OpenAI gives an engine failure, where it has one.
pub fn engine_error_detail(e: &EngineError) -> (Option<&'static str>, Option<&'static str>) {
    match e {
        EngineError::PromptTooLong { .. } => (Some("context_length_exceeded"), Some("messages")),
        _ => (None, None),
    }
}

/// The JSON body of an error response (or of an in-stream error).
pub fn error_body(
    kind: ErrorKind,
    message: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Value {
    json!({
        "error": {
            "message": message,
            "type": error_type(kind),
            "param": param,
            "code": code.or(default_code(kind)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_shape_and_statuses() {
        let body = error_body(ErrorKind::InvalidRequest, "bad", Some("n"), None);
        assert_eq!(
            body,
            json!({"error": {"message": "bad", "type": "invalid_request_error", "param": "n", "code": null}})
        );
        let body = error_body(ErrorKind::Authentication, "no key", None, None);
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert_eq!(status(ErrorKind::Overloaded), 503);
        assert_eq!(status(ErrorKind::NotFound), 404);
        let e = EngineError::PromptTooLong { tokens: 9, max: 8 };
        assert_eq!(
            engine_error_detail(&e),
            (Some("context_length_exceeded"), Some("messages"))
        );
    }
}
