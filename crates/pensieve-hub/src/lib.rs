//! Models on disk and on the Hugging Face Hub: where a model name points (a path, a repo in
//! the standard HF cache, a quant inside a GGUF repo), pulling into that cache, and what a
//! model file says about itself (architecture, quantisation, context, chat template).

pub mod cache;
pub mod gguf;
pub mod mlx_config;
pub mod pull;
pub mod reference;
pub mod select;
pub mod verify;

pub use cache::{CachedModel, HfCache, ModelFormat};
pub use pull::{Hub, Plan, PullError, PullProgress};
pub use reference::ModelRef;
