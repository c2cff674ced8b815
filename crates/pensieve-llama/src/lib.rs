//! The `llama` engine: GGUF models run in-process through llama.cpp (`llama-cpp-2`).
//!
//! - [`load`]: opens a GGUF file, reads what the engine needs from its metadata, and
//!   builds a context.
//! - [`tokenizer`]: the model's vocabulary behind the engine's `Tokenizer` trait.
//! - [`runner`]: one llama.cpp context behind the engine's step-level `ModelRunner` trait.

pub mod load;
pub mod runner;
pub mod tokenizer;

pub use load::{load, LlamaError, LlamaOptions, LoadedModel};
