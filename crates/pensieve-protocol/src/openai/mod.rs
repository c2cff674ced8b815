//! The OpenAI Chat Completions API (`/v1/chat/completions`), the legacy Completions
//! API (`/v1/completions`, in [`completions`]) and the Responses API (`/v1/responses`, in
//! [`responses`]).
//!
//! - [`request`]: lenient request types and their translation to a `GenerateRequest`.
//! - [`response`]: the non-streaming response, finish reasons and usage.
//! - [`stream`]: the SSE encoder, a pure state machine over engine events.
//! - [`logprobs`]: tokens with their log-probabilities.
//! - [`error`]: the error envelope.

pub mod completions;
pub mod error;
pub mod logprobs;
pub mod request;
pub mod response;
pub mod responses;
pub mod stream;

pub use completions::{
    parse_completion, CompletionCollector, CompletionRequest, TextChunkEncoder, TextCollector,
};
pub use error::{engine_error_detail, error_body, OpenAiError};
pub use request::{parse_chat, ChatRequest};
pub use response::{ChatCollector, ChatCompletion, MessageCollector};
pub use stream::ChunkEncoder;
