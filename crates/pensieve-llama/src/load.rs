//! Loading a GGUF model and creating its context, with the settings resolved for that
//! model on this machine (`pensieve_engine::settings`): the loader measures, the settings
//! decide.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use pensieve_engine::settings::{
    self, Asked, DeviceFacts, FlashAttn, KvType, ModelFacts, Settings, SettingsError,
};
use pensieve_engine::{LoadedModel, ModelInfo, RunsOn};

use crate::device;
use crate::runner::{LlamaRunner, RunnerLayout};
use crate::tokenizer::LlamaTokenizer;
use crate::vision::LlamaVision;

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LlamaOptions {
    pub path: PathBuf,
    /// Name to list the model under; defaults to the file stem.
    pub id: Option<String>,
    /// What flags, variables and the config file ask for; everything else is the
    /// settings' default for this model on this machine.
    pub asked: Asked,
    /// The vision projector (`--mmproj`): images are then shown to the model.
    pub mmproj: Option<PathBuf>,
}

impl LlamaOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LlamaOptions {
            path: path.into(),
            id: None,
            asked: Asked::default(),
            mmproj: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LlamaError {
    #[error("model file {0} does not exist")]
    NotFound(PathBuf),
    #[error("vision projector (--mmproj) {0} does not exist")]
    ProjectorNotFound(PathBuf),
    #[error("llama.cpp could not initialise: {0}")]
    Backend(String),
    #[error("llama.cpp could not load {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("cannot create a context of {context} tokens: {reason}")]
    Context { context: u32, reason: String },
    #[error(transparent)]
    Settings(#[from] SettingsError),
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

/// Load the model file, resolve its settings, and create a context for it.
pub fn load(options: &LlamaOptions) -> Result<LoadedModel, LlamaError> {
    if !options.path.is_file() {
        return Err(LlamaError::NotFound(options.path.clone()));
    }
    // Before the model's load, which can take minutes.
    if let Some(mmproj) = options.mmproj.as_ref().filter(|p| !p.is_file()) {
        return Err(LlamaError::ProjectorNotFound(mmproj.clone()));
    }
    // Refuse a 0 before spending the time to load.
    options.asked.validate()?;
    let backend = backend()?;
    let before = device::facts();
    let offload = settings::offload(&options.asked, &before);
    let params = LlamaModelParams::default().with_n_gpu_layers(offload.requested());
    let model = LlamaModel::load_from_file(backend, &options.path, &params).map_err(|e| {
        LlamaError::Load {
            path: options.path.clone(),
            reason: e.to_string(),
        }
    })?;
    // The model lives as long as the process: contexts borrow it, and the engine thread
    // that owns the context outlives every request.
    let model: &'static LlamaModel = Box::leak(Box::new(model));
    let architecture = model
        .meta_val_str("general.architecture")
        .unwrap_or_else(|_| "unknown".to_owned());
    let facts = ModelFacts {
        train_context: model.n_ctx_train(),
        layers: model.n_layer(),
        kv_bytes_per_token: kv_bytes_per_token(model, &architecture),
        vocab: u32::try_from(model.n_vocab()).unwrap_or(0),
        // Mapped, not yet read: still counted as available memory below.
        weights_bytes: model.size(),
        heads: model.n_head(),
    };
    // Measured now, so the KV cache is sized from what the weights left free.
    let settings = settings::resolve(&options.asked, &facts, &device::facts())?;
    settings::warn_about(&settings, &facts);
    let context = new_context(backend, model, &settings)?;
    let runs_on = runs_on(&settings, &before, &device::facts());
    let mut layout = layout(model, &options.path, &architecture, &settings, &facts);
    let tokenizer = Arc::new(LlamaTokenizer::new(model));
    let vision = match &options.mmproj {
        Some(path) => {
            let vision = LlamaVision::load(
                path,
                model,
                tokenizer.clone(),
                settings.threads,
                settings.gpu_layers > 0,
            )?;
            // Cached images were computed by this projector.
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            layout.fingerprint.push_str(&format!("/mmproj={size}"));
            tracing::info!(mmproj = %path.display(), "vision projector loaded");
            Some(vision)
        }
        None => None,
    };
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
        train_context: facts.train_context,
        context_size: settings.ctx,
        chat_template,
        bos_token: tokenizer.bos_text(),
        eos_token: tokenizer.eos_text(),
    };
    tracing::info!(
        model = %options.path.display(),
        architecture = %info.architecture,
        context_size = settings.ctx,
        train_context = facts.train_context,
        parallel = settings.parallel,
        kv_cells = layout.cells,
        kv_on_gpu = settings.kv_on_gpu,
        cache_type_k = %settings.cache_type_k,
        cache_type_v = %settings.cache_type_v,
        flash_attn = %settings.flash_attn,
        backend_sampling_slots = settings.backend_sampling_slots,
        can_truncate = layout.can_truncate,
        has_template = info.chat_template.is_some(),
        "model loaded on {runs_on}"
    );
    let mut runner = LlamaRunner::new(context, layout);
    if let Some(vision) = &vision {
        runner = runner.with_vision(vision.context());
    }
    Ok(LoadedModel {
        info,
        tokenizer,
        runner: Box::new(runner),
        vision: vision.map(|v| Arc::new(v) as Arc<dyn pensieve_engine::Vision>),
        parallel: settings.parallel,
        runs_on,
    })
}

/// A context of `parallel` sequences of `ctx` positions each.
fn new_context(
    backend: &LlamaBackend,
    model: &'static LlamaModel,
    settings: &Settings,
) -> Result<LlamaContext<'static>, LlamaError> {
    let threads = i32::try_from(settings.threads).unwrap_or(i32::MAX);
    let cells = cells(settings);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(cells))
        .with_n_batch(settings.batch)
        .with_n_ubatch(settings.batch)
        .with_n_seq_max(settings.parallel as u32)
        // One KV stream per sequence: a token attends only to its own sequence's cells.
        // In one unified pool every token's attention walks the cells of all sequences
        // (masked), which made 8 streams ~20% slower per step than llama-server's
        // `-np 8`. A prefix is then shared by copying it, or by continuing in its slot.
        .with_kv_unified(false)
        // The KV cache and attention go with the offloaded layers: on the GPU they are
        // the step's largest memory traffic.
        .with_offload_kqv(settings.kv_on_gpu)
        // A quantized V needs flash attention, which llama.cpp's default (auto) turns on
        // where the backend has it; where it has not, creating the context says so.
        .with_type_k(kv_cache_type(settings.cache_type_k))
        .with_type_v(kv_cache_type(settings.cache_type_v))
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        // llama.cpp's `llama_flash_attn_type` (llama-cpp-2 takes the raw value).
        .with_flash_attention_policy(match settings.flash_attn {
            FlashAttn::Auto => -1,
            FlashAttn::Off => 0,
            FlashAttn::On => 1,
        });
    let context = if settings.backend_sampling_slots > 0 {
        // A greedy chain on each of those slots, for good: attaching or detaching one
        // later makes llama.cpp reserve its compute graphs again, a stall for every
        // sequence. The logits still reach the host, so masks, chains and
        // log-probabilities work as without it.
        // At most `parallel`: the settings bound it.
        let slots = 0..i32::try_from(settings.backend_sampling_slots).unwrap_or(i32::MAX);
        let greedy = slots.map(|s| (s, LlamaSampler::chain_simple([LlamaSampler::greedy()])));
        model.new_context_with_samplers(backend, params, greedy)
    } else {
        model.new_context(backend, params)
    };
    context.map_err(|e| LlamaError::Context {
        context: cells,
        reason: e.to_string(),
    })
}

fn kv_cache_type(t: KvType) -> KvCacheType {
    match t {
        KvType::F32 => KvCacheType::F32,
        KvType::F16 => KvCacheType::F16,
        KvType::Bf16 => KvCacheType::BF16,
        KvType::Q8_0 => KvCacheType::Q8_0,
        KvType::Q5_1 => KvCacheType::Q5_1,
        KvType::Q5_0 => KvCacheType::Q5_0,
        KvType::Q4_1 => KvCacheType::Q4_1,
        KvType::Q4_0 => KvCacheType::Q4_0,
        KvType::Iq4Nl => KvCacheType::IQ4_NL,
    }
}

/// KV cells of all sequences together.
fn cells(settings: &Settings) -> u32 {
    (u64::from(settings.ctx) * settings.parallel as u64).min(u64::from(u32::MAX)) as u32
}

/// Where the model runs, from the GPU's free memory before loading and after the
/// context was created.
fn runs_on(settings: &Settings, before: &DeviceFacts, after: &DeviceFacts) -> RunsOn {
    match (&before.gpu, &after.gpu) {
        (Some(before), Some(after)) if settings.gpu_layers > 0 => RunsOn::Gpu {
            device: after.description.clone(),
            backend: after.backend.clone(),
            layers: settings.gpu_layers,
            total_layers: settings.total_layers,
            used_bytes: before.free_bytes.saturating_sub(after.free_bytes),
            free_bytes: after.free_bytes,
            threads: settings.threads,
        },
        _ => RunsOn::Cpu {
            threads: settings.threads,
        },
    }
}

/// What the runner needs to know of the context's shape.
fn layout(
    model: &LlamaModel,
    path: &std::path::Path,
    architecture: &str,
    settings: &Settings,
    facts: &ModelFacts,
) -> RunnerLayout {
    let can_truncate = !(model.is_recurrent()
        || model.is_hybrid()
        || meta_u64(model, &format!("{architecture}.attention.sliding_window")).is_some());
    let file_size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let fingerprint = format!(
        "llama.cpp/{architecture}/params={params}/file={file_size}/layers={layers}/embd={embd}/kv_heads={kv}/kv={k}/{v}/streams={sequences}{v_layout}",
        params = model.n_params(),
        layers = model.n_layer(),
        embd = model.n_embd(),
        kv = model.n_head_kv(),
        sequences = settings.parallel,
        k = settings.cache_type_k,
        v = settings.cache_type_v,
        // Without flash attention llama.cpp stores V transposed: a sequence saved one way
        // cannot be restored the other.
        v_layout = if settings.flash_attn == FlashAttn::Off {
            "/v_transposed"
        } else {
            ""
        },
    );
    RunnerLayout {
        batch_size: settings.batch as usize,
        sequences: settings.parallel,
        cells: cells(settings) as usize,
        can_truncate,
        on_gpu: settings.gpu_layers > 0,
        kv_on_gpu: settings.gpu_layers > 0 && settings.kv_on_gpu,
        backend_greedy: settings.backend_sampling_slots,
        kv_bytes_per_token: settings::kv_bytes_with(
            facts.kv_bytes_per_token,
            settings.cache_type_k,
            settings.cache_type_v,
        ),
        fingerprint,
        n_vocab: model.n_vocab(),
    }
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
