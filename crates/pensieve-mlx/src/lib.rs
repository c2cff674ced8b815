//! The `mlx` engine: Apple's MLX through a supervised Python worker running `mlx-lm`.
//!
//! MLX has no Rust binding that builds off macOS, so the model runs in a Python process;
//! everything above the tensor math (tokenisation, templates, scheduling, the prefix
//! cache) stays in Rust, shared with the llama.cpp engine.
//!
//! - [`protocol`]: the length-prefixed binary protocol (`python/pensieve_mlx/PROTOCOL.md`).
//! - [`worker`]: the process: start, requests, restart, stop.
//! - [`runner`]: the worker behind the engine's step-level `ModelRunner` trait.
//! - [`tokenizer`]: the model's `tokenizer.json` behind the engine's `Tokenizer` trait.
//! - [`vision`]: a vision model's images (mlx-vlm in the worker), laid out for the engine.
//! - [`load`]: a model folder's JSON files, the worker and the tokenizer together.

pub mod load;
pub mod protocol;
pub mod runner;
pub mod tokenizer;
pub mod vision;
pub mod worker;

pub use load::{load, MlxError, MlxOptions};
