//! The numbers a model is loaded and served with, resolved once: its context, the
//! sequences that generate at once, CPU threads, batch size and GPU layers (and the
//! engine's queue and prefix-cache defaults).
//!
//! Each number comes from the highest source that names it (a command-line flag, then a
//! `PENSIEVE_*` variable, then the config file), else from a default that depends on the
//! model and the machine: the model's trained context and KV size ([`ModelFacts`]), and
//! whether a GPU is present and how much of its memory is free once the weights are in
//! ([`DeviceFacts`]). Both are plain numbers the backends gather, so every rule is unit
//! tested here without a model; the backends load with the [`Settings`] that [`resolve`]
//! returns and keep no defaults of their own.

use std::fmt;
use std::str::FromStr;

/// Slots whose greedy tokens llama.cpp's graph picks on a GPU unless asked otherwise.
pub const DEFAULT_BACKEND_SAMPLING_SLOTS: usize = 2;

/// Longest default context when the KV cache lives in host memory (CPU, MLX): enough for
/// Claude Code, bounded for RAM.
pub const HOST_MAX_CONTEXT: u32 = 32_768;
/// Longest default context when the KV cache lives on a GPU.
pub const GPU_MAX_CONTEXT: u32 = 131_072;
/// A default GPU context is halved until a sequence fits, but not below this.
pub const MIN_FITTED_CONTEXT: u32 = 4_096;
/// Most sequences by default when the KV cache lives in host memory.
pub const HOST_MAX_PARALLEL: usize = 4;
/// Most sequences by default on a GPU.
pub const GPU_MAX_PARALLEL: usize = 16;
/// Sequences by default when KV memory grows as it is used (MLX): this bounds work, not
/// memory.
pub const GROWING_PARALLEL: usize = 4;
/// llama.cpp's limit on sequences in one context.
pub const MAX_PARALLEL: usize = 256;
/// Tokens per decode step (prefill chunks plus one token per stream).
pub const DEFAULT_BATCH: u32 = 512;

/// Tokens per step when the layers run on a GPU (llama-server's `-b` default): a GPU step
/// costs about the same for a few hundred tokens as for one, so bigger prefill chunks
/// admit waiting prompts sooner.
pub const DEFAULT_GPU_BATCH: u32 = 2048;
/// Requests that may wait for a free sequence before more are refused as overloaded.
pub const DEFAULT_QUEUE: usize = 64;
/// Disk space for prefix-cache snapshots in a cache directory.
pub const DEFAULT_CACHE_DISK: u64 = 16 << 30;
/// RAM for prefix-cache snapshots where the available memory is unknown.
pub const FALLBACK_CACHE_RAM: u64 = 2 << 30;
/// The least RAM for prefix-cache snapshots.
const MIN_CACHE_RAM: u64 = 256 << 20;

/// Share of the available host memory the KV cache may take by default.
const HOST_KV_SHARE: f64 = 0.25;
/// Share of the GPU memory free after the weights that the KV cache and the compute
/// buffers may take: the rest is left to other processes and to fragmentation.
const GPU_KV_SHARE: f64 = 0.8;
/// llama.cpp's compute buffers on the GPU: a fixed part, and a part that grows with the
/// batch (activations of every token of a step).
const GPU_COMPUTE_BASE: u64 = 1 << 30;
const GPU_COMPUTE_PER_BATCH_TOKEN: u64 = 1 << 20;

/// How many layers to offload to the GPU: a number, or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuLayers {
    All,
    Count(u32),
}

impl GpuLayers {
    /// llama.cpp's `n_gpu_layers`: "all" asks for more than any model has, and llama.cpp
    /// offloads at most what there is.
    pub fn requested(self) -> u32 {
        match self {
            GpuLayers::All => u32::MAX,
            GpuLayers::Count(n) => n,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither a number of layers nor `all`")]
pub struct GpuLayersError(String);

impl FromStr for GpuLayers {
    type Err = GpuLayersError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            return Ok(GpuLayers::All);
        }
        s.parse()
            .map(GpuLayers::Count)
            .map_err(|_| GpuLayersError(s.to_owned()))
    }
}

impl fmt::Display for GpuLayers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuLayers::All => f.write_str("all"),
            GpuLayers::Count(n) => write!(f, "{n}"),
        }
    }
}

/// The config file's `gpu_layers`: a number, or `"all"`.
impl<'de> serde::Deserialize<'de> for GpuLayers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{Error, Unexpected};

        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = GpuLayers;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of layers or \"all\"")
            }

            fn visit_u64<E: Error>(self, v: u64) -> Result<GpuLayers, E> {
                u32::try_from(v)
                    .map(GpuLayers::Count)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
            }

            fn visit_i64<E: Error>(self, v: i64) -> Result<GpuLayers, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
                }
            }

            fn visit_str<E: Error>(self, v: &str) -> Result<GpuLayers, E> {
                v.parse()
                    .map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The element type of the K or V cache, named as llama-server's `--cache-type-k/-v`
/// name it. Quantized types trade a little quality for memory per token: an agent
/// session is long, so that memory decides how many sessions and how much context fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvType {
    F32,
    #[default]
    F16,
    Bf16,
    Q8_0,
    Q5_1,
    Q5_0,
    Q4_1,
    Q4_0,
    Iq4Nl,
}

impl KvType {
    pub const ALL: [KvType; 9] = [
        KvType::F32,
        KvType::F16,
        KvType::Bf16,
        KvType::Q8_0,
        KvType::Q5_1,
        KvType::Q5_0,
        KvType::Q4_1,
        KvType::Q4_0,
        KvType::Iq4Nl,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Bf16 => "bf16",
            KvType::Q8_0 => "q8_0",
            KvType::Q5_1 => "q5_1",
            KvType::Q5_0 => "q5_0",
            KvType::Q4_1 => "q4_1",
            KvType::Q4_0 => "q4_0",
            KvType::Iq4Nl => "iq4_nl",
        }
    }

    /// Bytes of a block of 32 elements (ggml's block sizes; scales included).
    fn bytes_per_32(self) -> u64 {
        match self {
            KvType::F32 => 128,
            KvType::F16 | KvType::Bf16 => 64,
            KvType::Q8_0 => 34,
            KvType::Q5_1 => 24,
            KvType::Q5_0 => 22,
            KvType::Q4_1 => 20,
            KvType::Q4_0 | KvType::Iq4Nl => 18,
        }
    }

    /// A block-quantized type: llama.cpp can store V so only with flash attention.
    pub fn is_quantized(self) -> bool {
        !matches!(self, KvType::F32 | KvType::F16 | KvType::Bf16)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a KV cache type (f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0, iq4_nl)")]
pub struct KvTypeError(String);

impl FromStr for KvType {
    type Err = KvTypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        KvType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| KvTypeError(s.to_owned()))
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The config file's `cache_type_k` / `cache_type_v`: a type's name.
impl<'de> serde::Deserialize<'de> for KvType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether llama.cpp computes attention with its fused flash-attention kernel (llama-server's
/// `--flash-attn on|off|auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashAttn {
    /// As llama.cpp decides: on where the backend has the kernel.
    Auto,
    On,
    Off,
}

impl FlashAttn {
    pub fn name(self) -> &'static str {
        match self {
            FlashAttn::Auto => "auto",
            FlashAttn::On => "on",
            FlashAttn::Off => "off",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a flash-attention setting (on, off, auto)")]
pub struct FlashAttnError(String);

impl FromStr for FlashAttn {
    type Err = FlashAttnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(FlashAttn::Auto),
            "on" | "true" | "1" => Ok(FlashAttn::On),
            "off" | "false" | "0" => Ok(FlashAttn::Off),
            _ => Err(FlashAttnError(s.trim().to_owned())),
        }
    }
}

impl fmt::Display for FlashAttn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The config file's `flash_attn`: "on", "off", "auto", or a boolean.
impl<'de> serde::Deserialize<'de> for FlashAttn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Name(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bool(true) => Ok(FlashAttn::On),
            Raw::Bool(false) => Ok(FlashAttn::Off),
            Raw::Name(name) => name.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Bytes per token of a K and V cache of these types, from what the same cache takes in
/// f16 (half K, half V).
pub fn kv_bytes_with(f16_bytes: u64, k: KvType, v: KvType) -> u64 {
    let half = f16_bytes / 2;
    (half * k.bytes_per_32() + half * v.bytes_per_32()) / 64
}

/// What one source says about the model's settings; None: nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layer {
    pub ctx: Option<u32>,
    pub parallel: Option<usize>,
    pub threads: Option<usize>,
    pub batch: Option<u32>,
    pub gpu_layers: Option<GpuLayers>,
    /// Greedy tokens picked inside llama.cpp's graph (on the GPU) rather than on the host,
    /// for every slot (true) or none (false).
    pub backend_sampling: Option<bool>,
    pub cache_type_k: Option<KvType>,
    pub cache_type_v: Option<KvType>,
    pub flash_attn: Option<FlashAttn>,
}

/// Where a value came from, so that an error names it as the user wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    Config,
}

impl Source {
    /// `setting` (`gpu_layers`) as this source spells it: `--gpu-layers`,
    /// `PENSIEVE_GPU_LAYERS`, or `gpu_layers in the config file`.
    pub fn name(self, setting: &str) -> String {
        match self {
            Source::Flag => format!("--{}", setting.replace('_', "-")),
            Source::Env => format!("PENSIEVE_{}", setting.to_ascii_uppercase()),
            Source::Config => format!("{setting} in the config file"),
        }
    }
}

/// What every source says, highest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Asked {
    pub flags: Layer,
    pub env: Layer,
    pub config: Layer,
}

impl Asked {
    /// Flags alone (tests, and callers with no environment or config file).
    pub fn flags(flags: Layer) -> Asked {
        Asked {
            flags,
            ..Asked::default()
        }
    }

    /// The highest source's value of one setting, and that source.
    fn pick<T>(&self, get: impl Fn(&Layer) -> Option<T>) -> Option<(T, Source)> {
        get(&self.flags)
            .map(|v| (v, Source::Flag))
            .or_else(|| get(&self.env).map(|v| (v, Source::Env)))
            .or_else(|| get(&self.config).map(|v| (v, Source::Config)))
    }

    /// Reject what no default can mend: a context or a sequence count of 0, more
    /// sequences than llama.cpp has, or a quantized V cache without flash attention. A
    /// backend checks this before loading anything.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if let (Some((FlashAttn::Off, fa)), Some((v, source))) =
            (self.pick(|l| l.flash_attn), self.pick(|l| l.cache_type_v))
        {
            if v.is_quantized() {
                return Err(SettingsError::NeedsFlashAttn {
                    v,
                    name: source.name("cache_type_v"),
                    flash_attn: fa.name("flash_attn"),
                });
            }
        }
        if let Some((0, source)) = self.pick(|l| l.ctx) {
            return Err(SettingsError::TooSmall {
                name: source.name("ctx"),
                min: 1,
            });
        }
        match self.pick(|l| l.parallel) {
            Some((0, source)) => Err(SettingsError::TooSmall {
                name: source.name("parallel"),
                min: 1,
            }),
            Some((n, source)) if n > MAX_PARALLEL => Err(SettingsError::TooLarge {
                name: source.name("parallel"),
                max: MAX_PARALLEL as u64,
            }),
            _ => Ok(()),
        }
    }
}

impl Asked {
    /// For an engine that keeps its KV cache and computes attention as it likes (mlx):
    /// refuse a cache type or a flash-attention setting asked for.
    pub fn refuse_kv_types(&self, engine: &'static str) -> Result<(), SettingsError> {
        if let Some((f, source)) = self.pick(|l| l.flash_attn) {
            return Err(SettingsError::LlamaOnly {
                name: format!("{} {f}", source.name("flash_attn")),
                engine,
            });
        }
        for (setting, t) in [
            ("cache_type_k", self.pick(|l| l.cache_type_k)),
            ("cache_type_v", self.pick(|l| l.cache_type_v)),
        ] {
            if let Some((t, source)) = t.filter(|(t, _)| *t != KvType::F16) {
                return Err(SettingsError::Unsupported {
                    name: format!("{} asks for {t}", source.name(setting)),
                    engine,
                });
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("{name}, but the {engine} engine keeps its KV cache in the model's own type")]
    Unsupported { name: String, engine: &'static str },
    #[error("{name} is a setting of the llama engine, not of the {engine} engine")]
    LlamaOnly { name: String, engine: &'static str },
    #[error("a {v} V cache ({name}) needs flash attention, which {flash_attn} turns off")]
    NeedsFlashAttn {
        v: KvType,
        name: String,
        flash_attn: String,
    },
    #[error("{name} must be at least {min}")]
    TooSmall { name: String, min: u64 },
    #[error("{name} must be at most {max}")]
    TooLarge { name: String, max: u64 },
    #[error(
        "the model does not fit in memory: its weights ({}) and a KV cache of {parallel} x \
         {ctx} tokens ({}){} need {}, and {} is available; ask for a smaller --ctx or \
         --parallel, or a smaller --cache-type-k/-v (q8_0 halves the cache)",
        gib(*weights), gib(*kv), scores_text(*scores), gib(weights + kv + scores),
        gib(*available)
    )]
    DoesNotFit {
        weights: u64,
        kv: u64,
        /// Attention scores without flash attention (0 with it).
        scores: u64,
        available: u64,
        ctx: u32,
        parallel: usize,
    },
    #[error(
        "the KV cache does not fit the GPU: {parallel} x {ctx} tokens take {} on the GPU, and \
         {} of {device}'s memory is free after the weights; ask for a smaller --ctx or \
         --parallel, a smaller --cache-type-k/-v (q8_0 halves the cache), or fewer --gpu-layers",
        gib(*kv), gib(*free)
    )]
    DoesNotFitGpu {
        kv: u64,
        free: u64,
        device: String,
        ctx: u32,
        parallel: usize,
    },
}

fn scores_text(scores: u64) -> String {
    if scores == 0 {
        String::new()
    } else {
        format!(
            " and attention scores without flash attention ({}; --flash-attn on saves them)",
            gib(scores)
        )
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// What the model is, as its backend read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelFacts {
    /// The context length it was trained with (0: unknown).
    pub train_context: u32,
    /// Its repeating layers (llama.cpp's `n_layer`); the output layer is one more to
    /// offload, and holds no KV.
    pub layers: u32,
    /// Bytes of K and V one token of one sequence takes over all layers (0: unknown).
    pub kv_bytes_per_token: u64,
    /// Tokens in its vocabulary (0: unknown): a row of logits.
    pub vocab: u32,
    /// Bytes of its weights (0: unknown).
    pub weights_bytes: u64,
    /// Its attention (query) heads (0: unknown).
    pub heads: u32,
}

/// The GPU llama.cpp offloads to (several are summed: it splits layers across them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// As the driver names it, e.g. "NVIDIA H200".
    pub description: String,
    /// ggml's backend, e.g. "CUDA", "Metal", "Vulkan".
    pub backend: String,
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// How a backend allocates its KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvAllocation {
    /// Every sequence's cells at full context, when the context is created (llama.cpp).
    UpFront,
    /// As sequences grow (MLX): the sequence count bounds work, not memory.
    Growing,
}

/// What the machine offers, measured by the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFacts {
    /// None without a GPU, whatever the build supports.
    pub gpu: Option<Gpu>,
    /// Host memory available (Linux's MemAvailable); None where unknown.
    pub host_available_bytes: Option<u64>,
    pub physical_cores: usize,
    pub kv: KvAllocation,
}

/// Every number a backend loads a model with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Positions of one sequence.
    pub ctx: u32,
    /// Sequences generating at once.
    pub parallel: usize,
    pub threads: usize,
    /// Tokens per decode step, at most `ctx`.
    pub batch: u32,
    /// Layers on the GPU (0: everything on the CPU), out of `total_layers`.
    pub gpu_layers: u32,
    /// The model's layers and its output layer, as llama.cpp counts them for offloading.
    pub total_layers: u32,
    /// The KV cache and attention run on the GPU (llama.cpp's `offload_kqv`).
    pub kv_on_gpu: bool,
    /// Slots (from the first) whose greedy token is the argmax of llama.cpp's graph, made
    /// where the logits are (as llama-server's `--backend-sampling`); 0: none. The logits
    /// still come to the host for everything else (grammars, sampler chains,
    /// log-probabilities).
    pub backend_sampling_slots: usize,
    /// The default context before it was halved to fit the GPU's free memory.
    pub shrunk_from: Option<u32>,
    /// By the estimate, the KV cache does not fit the GPU's free memory (the context and
    /// sequences were asked for, or the smallest context tried did not fit either).
    pub may_not_fit: bool,
    /// The K and V caches' element types.
    pub cache_type_k: KvType,
    pub cache_type_v: KvType,
    /// Flash attention as asked, else as llama.cpp decides (on where the backend has the
    /// kernel). Off is faster on a CPU at long contexts (llama.cpp's CPU kernel walks the
    /// whole context once per query token and head; without it attention is a matrix
    /// product): with Qwen2.5-Coder-0.5B on two EPYC cores, a one-token step at 3,000 tokens
    /// of context took 52-65 ms against 72, at 6,000 72-98 ms against 115. It is not the
    /// default because a step of several tokens then sums attention in another order than
    /// a step of one, and a checked draft could change a greedy token.
    pub flash_attn: FlashAttn,
}

/// Layers to ask llama.cpp to offload, decided before the weights are loaded: what is
/// asked, else all of them when a GPU is present (as Ollama and llama-server do), else
/// none.
pub fn offload(asked: &Asked, device: &DeviceFacts) -> GpuLayers {
    match asked.pick(|l| l.gpu_layers) {
        Some((layers, _)) => layers,
        None if device.gpu.is_some() => GpuLayers::All,
        None => GpuLayers::Count(0),
    }
}

/// The settings of one model: what the sources ask for, else the defaults for this model
/// on this machine. `device` is measured after the weights are loaded, so that the GPU's
/// free memory is what the KV cache can have.
pub fn resolve(
    asked: &Asked,
    model: &ModelFacts,
    device: &DeviceFacts,
) -> Result<Settings, SettingsError> {
    asked.validate()?;
    let total_layers = model.layers.saturating_add(1);
    let gpu_layers = match (&device.gpu, device.kv) {
        (Some(_), KvAllocation::UpFront) => offload(asked, device).requested().min(total_layers),
        _ => 0,
    };
    let kv_on_gpu = gpu_layers > 0;
    // One argmax over a 150k vocabulary took ~120 us on a host core after the logits
    // arrived, against microseconds on the GPU; but llama.cpp's graph gives every sampled
    // sequence a kernel of its own, one after another, while the host spreads many
    // sequences' argmaxes over its cores. By default the graph picks for the first slots
    // only, which a lone session (or two) takes.
    let backend_sampling_slots = match asked.pick(|l| l.backend_sampling) {
        Some((true, _)) => usize::MAX,
        Some((false, _)) => 0,
        None if gpu_layers > 0 => DEFAULT_BACKEND_SAMPLING_SLOTS,
        None => 0,
    };
    let threads = asked
        .pick(|l| l.threads)
        .map_or(device.physical_cores, |(n, _)| n)
        .max(1);
    let batch = asked
        .pick(|l| l.batch)
        .map_or(
            if gpu_layers > 0 {
                DEFAULT_GPU_BATCH
            } else {
                DEFAULT_BATCH
            },
            |(n, _)| n,
        )
        .max(1);
    // llama.cpp's sampling graph keeps a copy of a whole batch of logits on the GPU.
    let sampling_bytes = if backend_sampling_slots > 0 {
        u64::from(batch) * u64::from(model.vocab) * 4
    } else {
        0
    };
    let cache_type_k = asked
        .pick(|l| l.cache_type_k)
        .map_or(KvType::F16, |(t, _)| t);
    let cache_type_v = asked
        .pick(|l| l.cache_type_v)
        .map_or(KvType::F16, |(t, _)| t);
    let flash_attn = asked
        .pick(|l| l.flash_attn)
        .map_or(FlashAttn::Auto, |(f, _)| f);
    // The budget counts the cache at the types asked for.
    let model = &ModelFacts {
        kv_bytes_per_token: kv_bytes_with(model.kv_bytes_per_token, cache_type_k, cache_type_v),
        ..*model
    };
    let budget = Budget::new(model, device, gpu_layers, batch, sampling_bytes);
    let sized = budget.size(
        model.train_context,
        asked.pick(|l| l.ctx).map(|(n, _)| n),
        asked.pick(|l| l.parallel).map(|(n, _)| n),
    );
    // In host memory, the weights and every sequence's KV must fit what is available:
    // llama.cpp would otherwise allocate past it and the process be killed, later.
    if let (0, Some(available), KvAllocation::UpFront) =
        (gpu_layers, device.host_available_bytes, device.kv)
    {
        let kv = model.kv_bytes_per_token * u64::from(sized.ctx) * sized.parallel as u64;
        let scores = if flash_attn == FlashAttn::Off {
            attention_scores_bytes(model, batch.min(sized.ctx), sized.ctx)
        } else {
            0
        };
        if model.weights_bytes + kv + scores > available {
            return Err(SettingsError::DoesNotFit {
                weights: model.weights_bytes,
                kv,
                scores,
                available,
                ctx: sized.ctx,
                parallel: sized.parallel,
            });
        }
    }
    // On a GPU, the offloaded layers' KV must fit what the weights left free: that much is
    // sure not to (the margin for compute buffers is an estimate, so past it only a warning).
    if let (Some(gpu), Some((_, per_token)), KvAllocation::UpFront) =
        (&device.gpu, budget.gpu, device.kv)
    {
        let kv = per_token
            .saturating_mul(u64::from(sized.ctx))
            .saturating_mul(sized.parallel as u64);
        if kv > gpu.free_bytes {
            return Err(SettingsError::DoesNotFitGpu {
                kv,
                free: gpu.free_bytes,
                device: gpu.description.clone(),
                ctx: sized.ctx,
                parallel: sized.parallel,
            });
        }
    }
    Ok(Settings {
        ctx: sized.ctx,
        parallel: sized.parallel,
        threads,
        batch: batch.min(sized.ctx),
        gpu_layers,
        total_layers,
        kv_on_gpu,
        backend_sampling_slots: backend_sampling_slots.min(sized.parallel),
        shrunk_from: sized.shrunk_from,
        may_not_fit: sized.may_not_fit,
        cache_type_k,
        cache_type_v,
        flash_attn,
    })
}

/// Host memory for a step's attention scores without flash attention, at most: every
/// head's `batch x ctx` matrix of f32 scores (llama.cpp reserves its compute buffer for
/// them when the context is created). Unknown heads count as none.
fn attention_scores_bytes(model: &ModelFacts, batch: u32, ctx: u32) -> u64 {
    u64::from(batch) * u64::from(ctx) * u64::from(model.heads) * 4
}

/// RAM for prefix-cache snapshots unless asked: a quarter of what is available once the
/// models are loaded, at least 256 MiB.
pub fn cache_ram(available: Option<u64>) -> u64 {
    available
        .map_or(FALLBACK_CACHE_RAM, |b| b / 4)
        .max(MIN_CACHE_RAM)
}

/// Log what a default chose that the user may not expect, or what may fail.
pub fn warn_about(settings: &Settings, model: &ModelFacts) {
    if let Some(from) = settings.shrunk_from {
        tracing::warn!(
            from,
            context_size = settings.ctx,
            "the GPU's free memory holds no sequence of the default context; it is shorter \
             (--ctx chooses)"
        );
    }
    if settings.may_not_fit {
        tracing::warn!(
            context_size = settings.ctx,
            parallel = settings.parallel,
            "by the estimate, the KV cache does not fit the GPU's free memory"
        );
    }
    if model.train_context > 0 && settings.ctx > model.train_context {
        tracing::warn!(
            context_size = settings.ctx,
            train_context = model.train_context,
            "the context is longer than the model was trained for; quality may suffer"
        );
    }
}

/// Memory for the KV cache, and how many sequences of a context it holds.
struct Budget {
    /// Bytes of KV the GPU may hold, and what one token takes there.
    gpu: Option<(u64, u64)>,
    /// Bytes of KV host memory may hold, and what one token takes there.
    host: Option<(u64, u64)>,
    max_context: u32,
    max_parallel: usize,
    /// Fit the context to the memory (GPU): halve a default one until a sequence fits.
    fitted: bool,
}

/// A context and sequence count, and how they were arrived at.
struct Sized {
    ctx: u32,
    parallel: usize,
    shrunk_from: Option<u32>,
    may_not_fit: bool,
}

impl Budget {
    /// `sampling_bytes`: what the GPU keeps for sampling in the graph, beyond the usual
    /// compute buffers.
    fn new(
        model: &ModelFacts,
        device: &DeviceFacts,
        gpu_layers: u32,
        batch: u32,
        sampling_bytes: u64,
    ) -> Budget {
        let kv = model.kv_bytes_per_token;
        let host_share = |per_token: u64| {
            device
                .host_available_bytes
                .map(|b| ((b as f64 * HOST_KV_SHARE) as u64, per_token))
        };
        match (&device.gpu, device.kv) {
            (_, KvAllocation::Growing) => Budget {
                gpu: None,
                host: None,
                max_context: HOST_MAX_CONTEXT,
                max_parallel: GROWING_PARALLEL,
                fitted: false,
            },
            (Some(gpu), KvAllocation::UpFront) if gpu_layers > 0 => {
                // Each offloaded layer keeps its KV on the GPU; the rest stays in RAM.
                let on_gpu = if model.layers == 0 {
                    kv
                } else {
                    kv * u64::from(gpu_layers.min(model.layers)) / u64::from(model.layers)
                };
                let margin = GPU_COMPUTE_BASE
                    + u64::from(batch) * GPU_COMPUTE_PER_BATCH_TOKEN
                    + sampling_bytes;
                let free = (gpu.free_bytes as f64 * GPU_KV_SHARE) as u64;
                Budget {
                    gpu: Some((free.saturating_sub(margin), on_gpu)),
                    host: host_share(kv - on_gpu).filter(|&(_, t)| t > 0),
                    max_context: GPU_MAX_CONTEXT,
                    max_parallel: GPU_MAX_PARALLEL,
                    fitted: true,
                }
            }
            _ => Budget {
                gpu: None,
                host: host_share(kv),
                max_context: HOST_MAX_CONTEXT,
                max_parallel: HOST_MAX_PARALLEL,
                fitted: false,
            },
        }
    }

    /// Sequences of `ctx` tokens the memory holds; None when nothing bounds them.
    fn fits(&self, ctx: u32) -> Option<usize> {
        [self.gpu, self.host]
            .into_iter()
            .flatten()
            .filter(|&(_, per_token)| per_token > 0)
            .map(|(bytes, per_token)| {
                let per_sequence = u64::from(ctx).max(1) * per_token;
                usize::try_from(bytes / per_sequence).unwrap_or(usize::MAX)
            })
            .min()
    }

    fn default_parallel(&self, ctx: u32) -> usize {
        self.fits(ctx)
            .map_or(self.max_parallel, |n| n.clamp(1, self.max_parallel))
    }

    /// The context and sequence count: each as asked, else the default. A default GPU
    /// context that holds not even the sequences needed is halved (to a power of two, not
    /// below [`MIN_FITTED_CONTEXT`]) until they fit.
    fn size(&self, train: u32, ctx: Option<u32>, parallel: Option<usize>) -> Sized {
        let cap = if train == 0 {
            self.max_context
        } else {
            train.min(self.max_context)
        };
        let (ctx, shrunk_from) = match ctx {
            Some(ctx) => (ctx, None),
            None => {
                let need = parallel.unwrap_or(1);
                let mut ctx = cap;
                while self.fitted
                    && ctx > MIN_FITTED_CONTEXT
                    && self.fits(ctx).is_some_and(|n| n < need)
                {
                    ctx = halve(ctx).max(MIN_FITTED_CONTEXT);
                }
                (ctx, (ctx < cap).then_some(cap))
            }
        };
        let parallel = parallel.unwrap_or_else(|| self.default_parallel(ctx));
        Sized {
            ctx,
            parallel,
            shrunk_from,
            may_not_fit: self.fitted && self.fits(ctx).is_some_and(|n| n < parallel),
        }
    }
}

/// The power of two below `n`.
fn halve(n: u32) -> u32 {
    if n.is_power_of_two() {
        n / 2
    } else {
        1 << (31 - n.leading_zeros())
    }
}

#[cfg(test)]
#[path = "settings_tests.rs"]
mod tests;
