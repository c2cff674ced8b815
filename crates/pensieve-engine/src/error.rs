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
    /// The backend's worker died mid-request and was restarted; a retry runs on the new one.
    #[error("the model worker restarted ({0}); retry the request")]
    BackendRestarted(String),
}

impl EngineError {
    /// Whether the fault lies with the request (a retry of the same request fails the same way).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            EngineError::PromptTooLong { .. }
                | EngineError::Template(_)
                | EngineError::InvalidRequest(_)
        )
    }
}
