//! Loading a GGUF model and creating its context.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use pensieve_engine::ModelInfo;

use crate::runner::{LlamaRunner, RunnerLayout};
use crate::tokenizer::LlamaTokenizer;

/// Context length used when none is asked for: enough for Claude Code, bounded for memory.
pub const DEFAULT_MAX_CONTEXT: u32 = 32_768;

/// Most sequences generating at once when `--parallel` is not given.
pub const DEFAULT_MAX_PARALLEL: usize = 4;

/// Share of available memory the KV cache may take when sizing `--parallel`.
const KV_MEMORY_SHARE: f64 = 0.25;

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
    /// Sequences generating at once; defaults to what the KV cache fits in memory (at
    /// most [`DEFAULT_MAX_PARALLEL`]).
    pub parallel: Option<usize>,
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
            parallel: None,
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
    /// Sequences the context was sized for.
    pub parallel: usize,
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
    let architecture = model
        .meta_val_str("general.architecture")
        .unwrap_or_else(|_| "unknown".to_owned());
    let kv_bytes_per_token = kv_bytes_per_token(model, &architecture);
    let parallel = match options.parallel {
        Some(0) => return Err(LlamaError::Options("--parallel must be at least 1".into())),
        Some(n) => n,
        None => default_parallel(context_size, kv_bytes_per_token),
    };
    // llama.cpp allows 256 sequences.
    if parallel > 256 {
        return Err(LlamaError::Options("--parallel must be at most 256".into()));
    }
    let sequences = parallel;
    let cells = (context_size as u64 * parallel as u64).min(u32::MAX as u64) as u32;
    let ctx_params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(cells))
        .with_n_batch(batch)
        .with_n_ubatch(batch)
        .with_n_seq_max(sequences as u32)
        // One KV stream per sequence: a token attends only to its own sequence's cells.
        // In one unified pool every token's attention walks the cells of all sequences
        // (masked), which made 8 streams ~20% slower per step than llama-server's
        // `-np 8`. A prefix is then shared by copying it, or by continuing in its slot.
        .with_kv_unified(false)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let context = model
        .new_context(backend, ctx_params)
        .map_err(|e| LlamaError::Context {
            context: cells,
            reason: e.to_string(),
        })?;
    let can_truncate = !(model.is_recurrent()
        || model.is_hybrid()
        || meta_u64(model, &format!("{architecture}.attention.sliding_window")).is_some());
    let file_size = std::fs::metadata(&options.path)
        .map(|m| m.len())
        .unwrap_or(0);
    let fingerprint = format!(
        "llama.cpp/{arch}/params={params}/file={file_size}/layers={layers}/embd={embd}/kv_heads={kv}/kv=f16/streams={sequences}",
        arch = architecture,
        params = model.n_params(),
        layers = model.n_layer(),
        embd = model.n_embd(),
        kv = model.n_head_kv(),
    );
    let layout = RunnerLayout {
        batch_size: batch as usize,
        sequences,
        cells: cells as usize,
        can_truncate,
        kv_bytes_per_token,
        fingerprint,
        n_vocab: model.n_vocab(),
    };

    let tokenizer = Arc::new(LlamaTokenizer::new(model));
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
        parallel,
        kv_cells = cells,
        can_truncate,
        has_template = info.chat_template.is_some(),
        "model loaded"
    );
    Ok(LoadedModel {
        info,
        tokenizer,
        runner: LlamaRunner::new(context, layout),
        parallel,
    })
}

/// f16 K and V of every layer for one token.
fn kv_bytes_per_token(model: &LlamaModel, architecture: &str) -> u64 {
    let heads = u64::from(model.n_head().max(1));
    let head_dim = meta_u64(model, &format!("{architecture}.attention.key_length"))
        .unwrap_or_else(|| model.n_embd().max(0) as u64 / heads);
    u64::from(model.n_layer()) * u64::from(model.n_head_kv()) * head_dim * 2 * 2
}

fn meta_u64(model: &LlamaModel, key: &str) -> Option<u64> {
    model.meta_val_str(key).ok()?.trim().parse().ok()
}

/// As many sequences as a share of the available memory holds at full context, between
/// 1 and [`DEFAULT_MAX_PARALLEL`].
fn default_parallel(context: u32, kv_bytes_per_token: u64) -> usize {
    let per_sequence = (u64::from(context) * kv_bytes_per_token).max(1);
    let Some(available) = available_memory() else {
        return DEFAULT_MAX_PARALLEL;
    };
    let fits = (available as f64 * KV_MEMORY_SHARE / per_sequence as f64) as usize;
    fits.clamp(1, DEFAULT_MAX_PARALLEL)
}

/// `MemAvailable` on Linux; None elsewhere.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
