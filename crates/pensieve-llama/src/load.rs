//! Loading a GGUF model and creating its context.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use pensieve_engine::ModelInfo;

use crate::runner::LlamaRunner;
use crate::tokenizer::LlamaTokenizer;

/// Context length used when none is asked for: enough for Claude Code, bounded for memory.
pub const DEFAULT_MAX_CONTEXT: u32 = 32_768;

/// How to load and run a model.
#[derive(Debug, Clone)]
pub struct LlamaOptions {
    pub path: PathBuf,
    /// Name to list the model under; defaults to the file stem.
    pub id: Option<String>,
    /// Context length per sequence; defaults to the trained length, capped at [`DEFAULT_MAX_CONTEXT`].
    pub context_size: Option<u32>,
    /// CPU threads for prefill and decode; defaults to the physical cores.
    pub threads: Option<usize>,
    /// Tokens per decode call during prefill.
    pub batch_size: u32,
    /// Layers to offload to a GPU (when built with one); 0 keeps everything on the CPU.
    pub gpu_layers: u32,
}

impl LlamaOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LlamaOptions {
            path: path.into(),
            id: None,
            context_size: None,
            threads: None,
            batch_size: 512,
            gpu_layers: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LlamaError {
    #[error("model file {0} does not exist")]
    NotFound(PathBuf),
    #[error("llama.cpp could not initialise: {0}")]
    Backend(String),
    #[error("llama.cpp could not load {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("cannot create a context of {context} tokens: {reason}")]
    Context { context: u32, reason: String },
    #[error("invalid option: {0}")]
    Options(String),
}

/// A loaded model: its description, its tokenizer and a runner over a fresh context.
pub struct LoadedModel {
    pub info: ModelInfo,
    pub tokenizer: Arc<LlamaTokenizer>,
    pub runner: LlamaRunner,
}

/// llama.cpp's global state is initialised once per process (a second init fails, so
/// concurrent first loads must wait for one another: `get_or_init` does that).
fn backend() -> Result<&'static LlamaBackend, LlamaError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp logs through tracing, under the `llama-cpp-2` target.
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| LlamaError::Backend(e.clone()))
}

/// Load the model file and create a context for it.
pub fn load(options: &LlamaOptions) -> Result<LoadedModel, LlamaError> {
    if !options.path.is_file() {
        return Err(LlamaError::NotFound(options.path.clone()));
    }
    let backend = backend()?;
    let params = LlamaModelParams::default().with_n_gpu_layers(options.gpu_layers);
    let model = LlamaModel::load_from_file(backend, &options.path, &params).map_err(|e| {
        LlamaError::Load {
            path: options.path.clone(),
            reason: e.to_string(),
        }
    })?;
    // The model lives as long as the process: contexts borrow it, and the engine thread
    // that owns the context outlives every request.
    let model: &'static LlamaModel = Box::leak(Box::new(model));

    let train_context = model.n_ctx_train();
    let context_size = match options.context_size {
        Some(0) => return Err(LlamaError::Options("--ctx must be at least 1".into())),
        Some(n) => n,
        None => train_context.min(DEFAULT_MAX_CONTEXT),
    };
    if context_size > train_context {
        tracing::warn!(
            context_size,
            train_context,
            "the context is longer than the model was trained for; quality may suffer"
        );
    }
    let threads = options
        .threads
        .unwrap_or_else(num_cpus::get_physical)
        .max(1);
    let threads = i32::try_from(threads).unwrap_or(i32::MAX);
    let batch = options.batch_size.clamp(1, context_size);
    let ctx_params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(context_size))
        .with_n_batch(batch)
        .with_n_ubatch(batch)
        .with_n_seq_max(1)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let context = model
        .new_context(backend, ctx_params)
        .map_err(|e| LlamaError::Context {
            context: context_size,
            reason: e.to_string(),
        })?;

    let tokenizer = Arc::new(LlamaTokenizer::new(model));
    let architecture = model
        .meta_val_str("general.architecture")
        .unwrap_or_else(|_| "unknown".to_owned());
    let chat_template = model
        .chat_template(None)
        .ok()
        .and_then(|t| t.to_string().ok())
        .filter(|t| !t.trim().is_empty());
    let id = options.id.clone().unwrap_or_else(|| {
        options
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".to_owned())
    });
    let info = ModelInfo {
        id,
        architecture,
        train_context,
        context_size,
        chat_template,
        bos_token: tokenizer.bos_text(),
        eos_token: tokenizer.eos_text(),
    };
    tracing::info!(
        model = %options.path.display(),
        architecture = %info.architecture,
        context_size,
        train_context,
        threads,
        has_template = info.chat_template.is_some(),
        "model loaded"
    );
    Ok(LoadedModel {
        info,
        tokenizer,
        runner: LlamaRunner::new(context, batch as usize),
    })
}
