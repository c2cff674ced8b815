//! The Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`, `/v1/models`).
//!
//! - [`request`]: lenient request types and their translation to a `GenerateRequest`.
//! - [`response`]: the non-streaming response and usage.
//! - [`stream`]: the SSE encoder, a pure state machine over engine events.
//! - [`error`]: the error envelope.

pub mod error;
pub mod request;
pub mod response;
pub mod stream;

#[cfg(test)]
mod sessions_tests;

pub use error::{error_body, ErrorKind};
pub use request::{
    parse_count_tokens, parse_messages, strip_billing_line, CountTokensRequest, MessagesRequest,
    RequestError,
};
pub use response::{
    stop_reason, ContentCollector, MessageCollector, MessageResponse, ResponseBlock, ResponseUsage,
};
pub use stream::{SseEvent, StreamEncoder};
