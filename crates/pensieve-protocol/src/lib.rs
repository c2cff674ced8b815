//! Wire types of the APIs Pensieve speaks, and their translation to and from the
//! engine's neutral types. Nothing here does I/O.
//!
//! - [`anthropic`]: the Messages API (requests, responses, the SSE encoder, errors).
//! - [`openai`]: the Chat Completions API, translated into the same neutral types.
//! - [`encode`]: the traits every API's SSE encoder and reply collector implement.
//! - [`image`]: images as the APIs send them, read for a text-only model's placeholder.

pub mod anthropic;
pub mod encode;
mod fields;
pub mod ids;
pub mod image;
pub mod openai;
