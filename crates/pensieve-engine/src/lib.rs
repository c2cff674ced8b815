//! The engine: everything between a neutral request and tokens, independent of any wire
//! protocol and of any particular backend.
//!
//! - [`request`]: the neutral request every API edge builds.
//! - [`template`]: the model's chat template, rendered with minijinja.
//! - [`engine`]: validation, the bounded queue, and the engine thread.
//! - `generate`: the per-sequence generation loop (prefix reuse, prefill, sampling).
//! - [`stop`], [`detok`]: stop sequences and UTF-8-safe detokenisation.
//! - [`model`]: the seams a backend implements ([`Tokenizer`], [`ModelRunner`]).
//! - [`event`]: what the engine reports back.
//! - [`metrics`]: the Prometheus metrics ([`EngineMetrics`]) the engine and the HTTP edge record.
//! - [`testing`]: a scripted backend for tests of the engine and the HTTP edge.

pub mod detok;
pub mod engine;
pub mod error;
pub mod event;
mod generate;
pub mod metrics;
pub mod model;
pub mod request;
pub mod stop;
pub mod template;
pub mod testing;

pub use engine::{Engine, EngineConfig, Generation, ValidRequest};
pub use error::EngineError;
pub use event::{Completion, FinishReason, GenerationEvent, Timings, Usage};
pub use metrics::{CacheTier, EngineMetrics};
pub use model::{ModelInfo, ModelRunner, RunnerError, TokenId, Tokenizer};
pub use request::{GenerateRequest, Message, Role, SamplingParams, ToolCall, ToolChoice, ToolSpec};
