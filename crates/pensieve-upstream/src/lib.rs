//! The `upstream` engine: one model served by OpenAI-compatible replicas elsewhere (vLLM,
//! SGLang, TGI, llama-server, Ollama), which do the math; Pensieve keeps its APIs, aliases,
//! keys and metrics in front of them.
//!
//! - [`client`]: the replicas, and one streamed request per generation (the I/O).
//!
//! The pure parts it drives, each tested on its own:
//! - [`chat`]: the neutral request as an OpenAI Chat Completions body.
//! - [`sse`]: server-sent events out of the bytes of a response, as they arrive.
//! - [`chunks`]: a stream's `chat.completion.chunk`s back into the engine's events.
//! - [`route`]: which replica takes a request (cache-aware, least outstanding).
//! - [`count`]: `count_tokens` through the upstream's tokenizer endpoint.
//! - [`relay`]: requests the replicas take as they are (OpenAI's, and Anthropic's where
//!   they speak it), their answers relayed byte for byte.

pub mod chat;
pub mod chunks;
pub mod client;
pub mod count;
pub mod relay;
pub mod route;
pub mod sse;

pub use client::{ReplicaStatus, Upstream, UpstreamApi, UpstreamConfig};
pub use relay::{Endpoint, Relayed};
pub use route::{conversation_key, Routing};

/// What can go wrong between Pensieve and an upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The request has something the upstream's API cannot carry.
    #[error("{0}")]
    Unsupported(String),
    /// The upstream answered with an error (an HTTP status, or an error in its stream).
    #[error("the upstream answered {status}: {message}")]
    Upstream { status: u16, message: String },
    /// The upstream's answer is not what its API says it sends.
    #[error("the upstream sent a malformed stream: {0}")]
    Malformed(String),
    /// The stream ended before the answer did.
    #[error("the upstream closed the stream before the answer ended")]
    EndedEarly,
}
