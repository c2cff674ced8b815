//! The engine: everything between a neutral request and tokens, independent of any wire
//! protocol and of any particular backend.
//!
//! - [`request`]: the neutral request every API edge builds.
//! - [`template`]: the model's chat template, rendered with minijinja.
//! - [`engine`]: validation, the bounded queue, and the engine handle.
//! - `scheduler`: the engine thread: continuous batching, admission, preemption,
//!   cancellation, and the generation of each sequence.
//! - [`cache`]: the prefix cache (radix tree, context/RAM/disk tiers, eviction).
//! - [`speculate`]: speculative decoding's drafts and draft lengths.
//! - [`stop`], [`detok`]: stop sequences and UTF-8-safe detokenisation.
//! - [`output`]: the model's output split into text, reasoning and tool calls.
//! - [`formats`]: the tool-call formats, one module each, and their registry.
//! - [`media`]: images for a vision model: their stretches of a prompt and the [`Vision`]
//!   seam.
//! - [`model`]: the seams a backend implements ([`Tokenizer`], [`ModelRunner`]) and what
//!   its loader returns ([`LoadedModel`]).
//! - [`settings`]: the numbers a model is loaded with, resolved once from flags, variables,
//!   the config file and defaults that depend on the model and the machine.
//! - [`event`]: what the engine reports back.
//! - [`metrics`]: the Prometheus metrics ([`EngineMetrics`]) the engine and the HTTP edge record.
//! - [`testing`]: a scripted backend for tests of the engine and the HTTP edge.

pub mod cache;
pub mod constrain;
pub mod detok;
pub mod engine;
pub mod error;
pub mod event;
pub mod formats;
pub mod media;
pub mod metrics;
pub mod model;
pub mod output;
pub mod request;
mod scheduler;
pub mod settings;
pub mod speculate;
pub mod stop;
pub mod template;
pub mod testing;

pub use cache::CacheConfig;
pub use engine::{CachePoint, DraftModel, Engine, EngineConfig, Generation, ValidRequest};
pub use error::EngineError;
pub use event::{Completion, FinishReason, GenerationEvent, Timings, TokenLogprob, Usage};
pub use formats::ToolFormat;
pub use media::{
    is_media_token, media_token, media_token_of, Media, MediaPrompt, Vision, VisionError,
};
pub use metrics::{CacheTier, EngineMetrics, UpstreamRecord};
pub use model::{
    BatchToken, LoadedModel, ModelInfo, ModelRunner, Pick, RunnerError, RunsOn, SeqId, TokenId,
    TokenMask, Tokenizer,
};
pub use output::OutputFormat;
pub use request::{
    Breakpoint, Effort, GenerateRequest, Image, Message, RawPrompt, Role, SamplingDefaults,
    SamplingParams, ToolCall, ToolChoice, ToolSpec,
};
