//! The `llama` engine: GGUF models run in-process through llama.cpp (`llama-cpp-2`).
//!
//! - [`load`]: opens a GGUF file, reads what the engine needs from its metadata, resolves
//!   its settings, and builds a context.
//! - [`device`]: what llama.cpp can run on here (its GPUs, the host's memory), read at run
//!   time.
//! - [`tokenizer`]: the model's vocabulary behind the engine's `Tokenizer` trait.
//! - [`runner`]: one llama.cpp context behind the engine's step-level `ModelRunner` trait.
//! - [`vision`]: a vision model's projector (mmproj) through llama.cpp's mtmd.

pub mod device;
pub mod load;
pub mod runner;
pub mod tokenizer;
pub mod vision;

pub use load::{load, LlamaError, LlamaOptions};
