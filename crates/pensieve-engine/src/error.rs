//! The engine's error type. The HTTP edge maps each variant to a status and an API error type.

use crate::template::TemplateError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The wording Claude Code looks for to compact its conversation.
    #[error("prompt is too long: {tokens} tokens > {max} maximum")]
    PromptTooLong { tokens: u32, max: u32 },
    #[error("chat template: {0}")]
    Template(#[from] TemplateError),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the server is busy: {waiting} requests are already waiting; retry shortly")]
    Overloaded { waiting: usize },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the engine has stopped")]
    EngineStopped,
    #[error("model backend failed: {0}")]
    Backend(String),
    /// The draft model can't draft for this model.
    #[error("the draft model cannot draft for this model: {0}")]
    Draft(String),
    /// The backend's worker died mid-request and was restarted; a retry runs on the new one.
    #[error("the model worker restarted ({0}); retry the request")]
    BackendRestarted(String),
    /// An upstream server (the `upstream` engine) answered with an error, or broke off;
    /// `status` is its HTTP status, or the one that stands for the fault (502, 504).
    #[error("upstream: {message}")]
    Upstream { status: u16, message: String },
}

impl EngineError {
    /// Whether the fault lies with the request (a retry of the same request fails the same way).
    pub fn is_client_error(&self) -> bool {
        match self {
            EngineError::PromptTooLong { .. }
            | EngineError::Template(_)
            | EngineError::InvalidRequest(_) => true,
            // The upstream judged the request (too long, a bad parameter); its 401, 404, 408
            // and 429 say something of the server's own setup or load instead.
            EngineError::Upstream { status, .. } => {
                (400..500).contains(status) && ![401, 403, 404, 408, 429].contains(status)
            }
            _ => false,
        }
    }
}
