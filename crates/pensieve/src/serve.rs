//! `pensieve serve`: find the model (pulling it if needed), load it and any alias targets,
//! start their engines, serve HTTP until Ctrl-C or SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytesize::ByteSize;
use clap::Args;
use pensieve_engine::settings::{self, Asked, FlashAttn, GpuLayers, KvType, Layer};
use pensieve_engine::speculate::Speculative;
use pensieve_engine::{
    CacheConfig, DraftModel, Engine, EngineConfig, EngineMetrics, LoadedModel, SamplingDefaults,
    ToolFormat,
};
use pensieve_hub::ModelFormat;
use pensieve_llama::LlamaOptions;
use pensieve_server::{
    AppState, BrowserPolicy, ImagePolicy, ModelRouter, ServedModel, ServerConfig,
};

use crate::config::{Config, EngineKind, UpstreamApi, UpstreamRouting};
use crate::resolve::{self, Fetch, Resolved};
use crate::template_override::TemplateOverride;
use crate::{paths, recommend};

/// How long open streams get to end after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The model: a `pensieve list` name or `org/name[:QUANT]` on the Hugging Face Hub
    /// (pulled if missing), a GGUF file, an MLX folder, or a `[models]` name from the
    /// config [default: the config's default_model, else a recommended coding model].
    #[arg(long, short = 'm', env = "PENSIEVE_MODEL", value_name = "MODEL")]
    model: Option<String>,
    /// The model for `claude-*haiku*` requests (Claude Code's quick side requests)
    /// [default: the config's small_model, else the main model].
    #[arg(long, env = "PENSIEVE_SMALL_MODEL", value_name = "MODEL")]
    small_model: Option<String>,
    /// The engine that runs the model [default: mlx for MLX folders, llama for GGUF].
    #[arg(long, value_enum, env = "PENSIEVE_ENGINE", value_name = "ENGINE")]
    engine: Option<EngineKind>,
    /// Serve the model from the OpenAI-compatible server at this base URL (vLLM, SGLang,
    /// TGI, llama-server, Ollama; e.g. http://gpu1:8000/v1) instead of loading one here.
    /// Repeat the flag for each replica.
    #[arg(long, value_name = "URL", conflicts_with_all = ["model", "engine"])]
    upstream: Vec<String>,
    /// The upstream's name for the model [default: the first one its /v1/models lists].
    #[arg(long, value_name = "NAME", requires = "upstream")]
    upstream_model: Option<String>,
    /// The key the upstream asks for (sent as a bearer token).
    #[arg(
        long,
        env = "PENSIEVE_UPSTREAM_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    upstream_key: Option<String>,
    /// `anthropic`: the upstream speaks /v1/messages itself (vLLM, SGLang, llama-server,
    /// Ollama), and Anthropic requests go to it untranslated [default: openai].
    #[arg(long, value_enum, value_name = "API", requires = "upstream")]
    upstream_api: Option<UpstreamApi>,
    /// How requests are spread over the replicas [default: cache-aware].
    #[arg(long, value_enum, value_name = "POLICY", requires = "upstream")]
    upstream_routing: Option<UpstreamRouting>,
    /// The Python of the mlx engine's worker [default: the venv of `pensieve setup mlx`].
    #[arg(long, env = "PENSIEVE_MLX_PYTHON", value_name = "PATH")]
    python: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1]. Anything but loopback needs --api-key
    /// (or --insecure-no-auth).
    #[arg(long, env = "PENSIEVE_HOST", value_name = "ADDR")]
    host: Option<IpAddr>,
    /// [default: 7777]
    #[arg(long, short = 'p', env = "PENSIEVE_PORT", value_name = "PORT")]
    port: Option<u16>,
    /// Context length of each sequence in tokens [default: the model's, at most 32768; on
    /// a GPU at most 131072, halved until one sequence fits its free memory].
    #[arg(long, env = "PENSIEVE_CTX", value_name = "N")]
    ctx: Option<u32>,
    /// Sequences generating at once (continuous batching) [default: what fits at full
    /// context in a quarter of the available memory, at most 4; on a GPU in 80% of its
    /// free memory, at most 16].
    #[arg(long, short = 'n', env = "PENSIEVE_PARALLEL", value_name = "N")]
    parallel: Option<usize>,
    /// RAM for prefix-cache snapshots, e.g. 4GiB [default: a quarter of the memory
    /// available after loading, at least 256MiB].
    #[arg(long, env = "PENSIEVE_CACHE_RAM", value_name = "SIZE")]
    cache_ram: Option<ByteSize>,
    /// Keep prefix-cache snapshots in this directory too, so they survive a restart.
    #[arg(long, env = "PENSIEVE_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Disk space for prefix-cache snapshots in --cache-dir [default: 16GiB].
    #[arg(long, value_name = "SIZE")]
    cache_disk: Option<ByteSize>,
    /// CPU threads [default: the number of physical cores].
    #[arg(long, short = 't', env = "PENSIEVE_THREADS", value_name = "N")]
    threads: Option<usize>,
    /// Require this key (x-api-key or Authorization: Bearer) on every API request.
    #[arg(
        long,
        env = "PENSIEVE_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
    /// Allow listening on a non-loopback address without an API key.
    #[arg(long)]
    insecure_no_auth: bool,
    /// On a loopback address, also answer requests whose Host header names HOST (a
    /// reverse proxy's or a tunnel's name; `.example.com` for a domain and its
    /// subdomains; `*` for any). Others are refused against DNS rebinding.
    #[arg(
        long = "allowed-host",
        env = "PENSIEVE_ALLOWED_HOSTS",
        value_name = "HOST",
        value_delimiter = ','
    )]
    allowed_hosts: Vec<String>,
    /// Let web pages of ORIGIN (e.g. http://localhost:3000; `*` for any) call the API from
    /// a browser. Requests with any other Origin are refused.
    #[arg(
        long = "cors-origin",
        env = "PENSIEVE_CORS_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    cors_origins: Vec<String>,
    /// Name the model is listed under [default: its `pensieve list` name, or the file
    /// name without extension].
    #[arg(long, value_name = "NAME")]
    model_id: Option<String>,
    /// Requests that may wait for a free sequence; more get 529 overloaded [default: 64].
    #[arg(long, value_name = "N")]
    queue: Option<usize>,
    /// Tokens per decode step: prefill chunks and one token per stream [default: 512].
    #[arg(long, value_name = "N")]
    batch: Option<u32>,
    /// Model layers to offload to the GPU, a number or `all`; 0 keeps the model on the CPU
    /// [default: all when llama.cpp finds a GPU, else 0].
    #[arg(long, env = "PENSIEVE_GPU_LAYERS", value_name = "N|all")]
    gpu_layers: Option<GpuLayers>,
    /// Pick every slot's greedy tokens inside llama.cpp's graph, on the GPU, instead of on
    /// the host (as llama-server's --backend-sampling); false: none [default: the first
    /// two slots' when the model is on a GPU and does not speculate].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    backend_sampling: Option<bool>,
    /// The K cache's element type: f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0 or
    /// iq4_nl, as llama-server's; q8_0 halves its memory [default: f16].
    #[arg(long, value_name = "TYPE")]
    cache_type_k: Option<KvType>,
    /// The V cache's element type, as --cache-type-k; a quantized V needs flash attention
    /// [default: f16].
    #[arg(long, value_name = "TYPE")]
    cache_type_v: Option<KvType>,
    /// Flash attention: on, off or auto, as llama-server's. Off decodes faster on a CPU at
    /// long contexts, but a quantized V cache needs it, and speculating without it may
    /// change a greedy token [default: auto, llama.cpp's choice].
    #[arg(long, value_name = "on|off|auto")]
    flash_attn: Option<FlashAttn>,
    /// Largest request body in MiB [default: 32].
    #[arg(long, value_name = "MIB")]
    max_body_mib: Option<usize>,
    /// What a model without vision makes of an image: `placeholder`, a short line such as
    /// "[image: PNG 1280×720, not shown: this model has no vision]" where the image was
    /// (a session that once held a screenshot goes on), or `reject`: a 400 naming the
    /// image [default: placeholder].
    #[arg(long, value_name = "placeholder|reject")]
    images: Option<ImagePolicy>,
    /// Sampling temperature of requests that name none, 0 for greedy (as llama-server's
    /// --temp; Claude Code sends none) [default: 1, the APIs' own].
    #[arg(long = "temp", value_name = "T", value_parser = in_range(0.0, 2.0))]
    temperature: Option<f32>,
    /// Nucleus sampling of requests that leave top_p out [default: off].
    #[arg(long, value_name = "P", value_parser = in_range(0.0, 1.0))]
    top_p: Option<f32>,
    /// Top-k sampling of requests that leave top_k out; 0: off [default: off].
    #[arg(long, value_name = "K")]
    top_k: Option<u32>,
    /// Min-p sampling of requests (no API sends it) [default: off].
    #[arg(long, value_name = "P", value_parser = in_range(0.0, 1.0))]
    min_p: Option<f32>,
    /// Seed of requests that name none, so that sampled answers repeat [default: a
    /// random one per request].
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Speculative decoding: `ngram` drafts tokens from the conversation itself (prompt
    /// lookup) and checks them in the next step; `draft` drafts them with --draft-model;
    /// `off`: one token a step [default: draft with --draft-model, else off].
    #[arg(long, value_name = "off|ngram|draft")]
    speculative: Option<Speculative>,
    /// A smaller model of the same tokenizer that drafts tokens for the main model to
    /// check (as llama-server's --model-draft), named as --model names one; e.g.
    /// Qwen2.5-Coder-0.5B for Qwen2.5-Coder-7B. The llama engine only.
    #[arg(long, value_name = "MODEL")]
    draft_model: Option<String>,
    /// How the model writes tool calls [default: as its chat template shows].
    #[arg(long, value_name = "FORMAT", value_parser = tool_format_parser())]
    tool_parser: Option<ToolFormat>,
    /// A Jinja chat template file that replaces the model's own (as llama-server's
    /// --chat-template-file); it also decides the tool-call format detected
    /// [default: the model's, else a built-in one for its architecture].
    #[arg(long, value_name = "FILE")]
    chat_template: Option<PathBuf>,
    /// The model's vision projector, an mmproj GGUF (as llama-server's --mmproj): images
    /// in requests are then shown to the model [default: the mmproj file pulled with the
    /// model, if its repository has one]. The llama engine only.
    #[arg(long, value_name = "FILE")]
    mmproj: Option<PathBuf>,
    /// Fetch images that requests give by http(s) URL, for a model that sees images
    /// (without it the server makes no network calls of its own, and such an image is
    /// shown as a placeholder).
    #[arg(long)]
    allow_image_urls: bool,
    /// Which model settings clap took from `PENSIEVE_*` variables rather than flags.
    #[arg(skip)]
    from_env: FromEnv,
}

/// The model settings whose value came from a `PENSIEVE_*` variable: clap merges a flag
/// and its variable, and the settings tell them apart (to name the one an error is about).
#[derive(Debug, Clone, Copy, Default)]
struct FromEnv {
    ctx: bool,
    parallel: bool,
    threads: bool,
    gpu_layers: bool,
}

impl ServeArgs {
    /// Note which values came from the environment; `matches` are `serve`'s own.
    pub fn note_sources(&mut self, matches: &clap::ArgMatches) {
        let env = |id| matches.value_source(id) == Some(clap::parser::ValueSource::EnvVariable);
        self.from_env = FromEnv {
            ctx: env("ctx"),
            parallel: env("parallel"),
            threads: env("threads"),
            gpu_layers: env("gpu_layers"),
        };
    }

    /// What the flags and the variables ask of one model. `main`: the model `--model`
    /// names, whose context and sequences they are; threads, batch and GPU layers apply to
    /// every model.
    fn layers(&self, main: bool) -> (Layer, Layer) {
        let from = self.from_env;
        let (ctx, env_ctx) = split(self.ctx.filter(|_| main), from.ctx);
        let (parallel, env_parallel) = split(self.parallel.filter(|_| main), from.parallel);
        let (threads, env_threads) = split(self.threads, from.threads);
        let (gpu_layers, env_gpu_layers) = split(self.gpu_layers, from.gpu_layers);
        let flags = Layer {
            ctx,
            parallel,
            threads,
            batch: self.batch,
            gpu_layers,
            backend_sampling: self.backend_sampling,
            cache_type_k: self.cache_type_k,
            cache_type_v: self.cache_type_v,
            flash_attn: self.flash_attn,
        };
        let env = Layer {
            ctx: env_ctx,
            parallel: env_parallel,
            threads: env_threads,
            batch: None,
            gpu_layers: env_gpu_layers,
            backend_sampling: None,
            cache_type_k: None,
            cache_type_v: None,
            flash_attn: None,
        };
        (flags, env)
    }
}

/// A clap parser for a number in `[low, high]`.
fn in_range(low: f32, high: f32) -> impl Fn(&str) -> Result<f32, String> + Clone {
    move |text| {
        let value: f32 = text.parse().map_err(|e| format!("{e}"))?;
        if (low..=high).contains(&value) {
            Ok(value)
        } else {
            Err(format!("must be between {low} and {high}"))
        }
    }
}

/// The sampling flags over the config's `[server]` ones; top_k 0 is off.
fn sampling_defaults(args: &ServeArgs, config: &Config) -> anyhow::Result<SamplingDefaults> {
    let s = &config.server;
    let defaults = SamplingDefaults {
        temperature: args.temperature.or(s.temperature),
        top_p: args.top_p.or(s.top_p),
        top_k: args.top_k.or(s.top_k).filter(|k| *k > 0),
        min_p: args.min_p.or(s.min_p),
        seed: args.seed.or(s.seed),
    };
    for (name, value, high) in [
        ("temperature", defaults.temperature, 2.0),
        ("top_p", defaults.top_p, 1.0),
        ("min_p", defaults.min_p, 1.0),
    ] {
        if value.is_some_and(|v| !(0.0..=high).contains(&v)) {
            bail!("[server] {name} must be between 0 and {high}");
        }
    }
    Ok(defaults)
}

/// A value as (from a flag, from a variable).
fn split<T>(value: Option<T>, from_env: bool) -> (Option<T>, Option<T>) {
    if from_env {
        (None, value)
    } else {
        (value, None)
    }
}

/// Everything one model is loaded with: its own config settings under the flags.
struct LoadPlan {
    model: Resolved,
    engine: EngineKind,
    id: Option<String>,
    /// What flags, variables and its config table ask for (the backend resolves the rest).
    asked: Asked,
    tool_parser: Option<ToolFormat>,
    chat_template: Option<TemplateOverride>,
    /// The vision projector to load with it.
    mmproj: Option<PathBuf>,
}

impl LoadPlan {
    /// `main`: the flags that only make sense for one model (ctx, id, tool parser, chat
    /// template) apply.
    fn new(args: &ServeArgs, model: Resolved, main: bool) -> anyhow::Result<LoadPlan> {
        let s = model.settings.clone();
        let engine = args
            .engine
            .filter(|_| main)
            .or(s.engine)
            .unwrap_or_else(|| engine_for(&model));
        let tool_parser = match (main.then_some(args.tool_parser).flatten(), &s.tool_parser) {
            (Some(flag), _) => Some(flag),
            (None, Some(name)) => Some(parse_tool_format(name).map_err(anyhow::Error::msg)?),
            (None, None) => None,
        };
        let chat_template =
            TemplateOverride::for_model(args.chat_template.as_deref().filter(|_| main), &s)?;
        let (flags, env) = args.layers(main);
        Ok(LoadPlan {
            engine,
            id: args.model_id.clone().filter(|_| main).or(model.id.clone()),
            asked: Asked {
                flags,
                env,
                config: Layer {
                    ctx: s.ctx,
                    parallel: s.parallel,
                    threads: s.threads,
                    batch: s.batch,
                    gpu_layers: s.gpu_layers,
                    backend_sampling: s.backend_sampling,
                    cache_type_k: s.cache_type_k,
                    cache_type_v: s.cache_type_v,
                    flash_attn: s.flash_attn,
                },
            },
            tool_parser,
            chat_template,
            mmproj: args
                .mmproj
                .clone()
                .filter(|_| main)
                .or(s.mmproj.clone())
                .or_else(|| model.mmproj.clone()),
            model,
        })
    }
}

/// An explicit choice, else what the model is: MLX folders need the mlx engine, GGUF files
/// the llama one.
fn engine_for(model: &Resolved) -> EngineKind {
    match model.format {
        Some(ModelFormat::Folder) => EngineKind::Mlx,
        Some(ModelFormat::Gguf) => EngineKind::Llama,
        None if model.path.is_dir() => EngineKind::Mlx,
        None => EngineKind::Llama,
    }
}

fn load_model(plan: &LoadPlan, python: Option<&PathBuf>) -> anyhow::Result<LoadedModel> {
    let path = &plan.model.path;
    match plan.engine {
        EngineKind::Llama => {
            if path.is_dir() {
                bail!(
                    "{} is a folder; the llama engine runs GGUF files (for an MLX model folder, \
                     pass --engine mlx)",
                    path.display()
                );
            }
            let options = LlamaOptions {
                id: plan.id.clone(),
                asked: plan.asked,
                mmproj: plan.mmproj.clone(),
                ..LlamaOptions::new(path)
            };
            pensieve_llama::load(&options)
                .with_context(|| format!("cannot load {}", path.display()))
        }
        EngineKind::Mlx => {
            if let Some(mmproj) = &plan.mmproj {
                bail!(
                    "{} is a projector for the llama engine; the mlx engine loads none",
                    mmproj.display()
                );
            }
            if !path.is_dir() {
                bail!(
                    "the mlx engine runs MLX model folders; {} is not one (for a GGUF file, \
                     pass --engine llama)",
                    path.display()
                );
            }
            let python = python.cloned().unwrap_or_else(paths::mlx_python);
            if !python.exists() {
                bail!(
                    "the mlx engine needs Python with MLX: {} does not exist. Run `pensieve \
                     setup mlx` once, or pass --python PATH",
                    python.display()
                );
            }
            let script = paths::data_dir().join("mlx").join("pensieve_worker.py");
            if let Some(dir) = script.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let options = pensieve_mlx::MlxOptions {
                path: path.clone(),
                python,
                script,
                id: plan.id.clone(),
                asked: plan.asked,
            };
            pensieve_mlx::load(&options).with_context(|| format!("cannot load {}", path.display()))
        }
    }
}

fn parse_tool_format(name: &str) -> Result<ToolFormat, String> {
    ToolFormat::from_name(name).ok_or_else(|| {
        format!(
            "unknown tool-call format {name:?}; known: {}",
            ToolFormat::names().collect::<Vec<_>>().join(", ")
        )
    })
}

/// `--tool-parser`'s values, each with the models that write it, from the registry.
fn tool_format_parser() -> impl clap::builder::TypedValueParser<Value = ToolFormat> {
    use clap::builder::TypedValueParser;
    let values = ToolFormat::all().map(|format| {
        clap::builder::PossibleValue::new(format.name())
            .aliases(format.aliases().iter().copied())
            .help(format.models())
    });
    clap::builder::PossibleValuesParser::new(values)
        .try_map(|name: String| parse_tool_format(&name))
}

/// The model to serve when none is named: the config's, else the recommended one (a pull
/// of it announces its size before downloading).
fn main_model_name(args: &ServeArgs, config: &Config) -> (String, bool) {
    match args.model.clone().or(config.default_model.clone()) {
        Some(name) => (name, false),
        None => {
            let name = recommend::recommended_model();
            eprintln!(
                "No model named (--model, PENSIEVE_MODEL or default_model in {}): using the \
                 recommended coding model for this machine, {name}, with tool calling and 32k \
                 context.",
                crate::config::path().display()
            );
            (name, true)
        }
    }
}

/// How the main model speculates, and the draft model it drafts with: `draft` when a
/// draft model is named and nothing else is asked. A draft model the flags turn off is
/// not loaded.
fn speculation(args: &ServeArgs, config: &Config) -> anyhow::Result<(Speculative, Option<String>)> {
    let asked = args.speculative.or(config.server.speculative);
    let draft = args
        .draft_model
        .clone()
        .or(config.server.draft_model.clone());
    match (asked, draft) {
        (None | Some(Speculative::Draft), Some(draft)) => Ok((Speculative::Draft, Some(draft))),
        (Some(Speculative::Draft), None) => bail!(
            "--speculative draft needs a draft model: name one with --draft-model (or \
             draft_model under [server] in the config)"
        ),
        (Some(asked), Some(draft)) => {
            tracing::warn!("speculation is {asked}: the draft model {draft} is not loaded");
            Ok((asked, None))
        }
        (asked, None) => Ok((asked.unwrap_or_default(), None)),
    }
}

/// The context the draft model holds of each sequence: its last this many tokens.
const DRAFT_WINDOW: u32 = 4096;

/// Load the draft model of a main model that `plan` loaded into `parallel` sequences of
/// `ctx` positions: one slot for each of the main model's, with the main model's threads,
/// batch and GPU layers.
fn load_draft(
    name: &str,
    plan: &LoadPlan,
    parallel: usize,
    ctx: u32,
    args: &ServeArgs,
    config: &Config,
) -> anyhow::Result<DraftModel> {
    if plan.engine != EngineKind::Llama {
        bail!("--draft-model works with the llama engine; the mlx engine has no draft models");
    }
    let model = resolve::resolve(name, config, Fetch::IfMissing)
        .with_context(|| format!("draft model {name}"))?;
    let mut draft = LoadPlan::new(args, model, false)?;
    if draft.engine != EngineKind::Llama {
        bail!("the draft model {name} is not a GGUF file: the llama engine drafts");
    }
    let window = DRAFT_WINDOW.min(ctx);
    draft.asked.flags.ctx = Some(window);
    draft.asked.flags.parallel = Some(parallel);
    // Its tokens are picked on the host, each draft step's for every sequence at once.
    draft.asked.flags.backend_sampling = Some(false);
    let loaded = load_model(&draft, None).with_context(|| format!("draft model {name}"))?;
    tracing::info!(draft_model = %loaded.info.id, window, "draft model loaded on {}", loaded.runs_on);
    Ok(DraftModel {
        tokenizer: loaded.tokenizer,
        runner: loaded.runner,
        window: window as usize,
    })
}

/// Start one engine, recording into `metrics`; it speculates as `speculative` says,
/// drafting with the model `draft` names if there is one, and then picks its tokens on
/// the host unless backend sampling is asked for.
fn start_engine(
    mut plan: LoadPlan,
    args: &ServeArgs,
    config: &Config,
    metrics: &Arc<EngineMetrics>,
    (speculative, draft): (Speculative, Option<&str>),
) -> anyhow::Result<ServedModel> {
    let asked = &mut plan.asked;
    let sampling_asked = [&asked.flags, &asked.env, &asked.config]
        .iter()
        .find_map(|layer| layer.backend_sampling);
    match sampling_asked {
        // Drafts are checked against the host's logits, which a token picked inside
        // llama.cpp's graph would skip: speculation takes the GPU's default for itself.
        None if speculative != Speculative::Off => asked.flags.backend_sampling = Some(false),
        Some(true) if speculative != Speculative::Off && plan.engine == EngineKind::Llama => {
            tracing::warn!(
                "speculation is {speculative}, but --backend-sampling picks greedy tokens \
                 inside llama.cpp's graph, where drafts can't be checked: nothing is drafted"
            );
        }
        _ => {}
    }
    // Without flash attention, llama.cpp's attention over a step of several tokens is a
    // matrix product that sums in another order than a step of one: a checked draft could
    // then change a greedy token (one did, on SmolLM2).
    let fa_off = [&asked.flags, &asked.env, &asked.config]
        .iter()
        .find_map(|layer| layer.flash_attn)
        == Some(FlashAttn::Off);
    if fa_off && speculative != Speculative::Off {
        tracing::warn!(
            "speculation is {speculative} and flash attention is off: a checked draft may \
             change a greedy token where two are nearly tied"
        );
    }
    let plan = &plan;
    let loaded = load_model(plan, args.python.as_ref())?;
    let draft = match draft {
        Some(name) => Some(load_draft(
            name,
            plan,
            loaded.parallel,
            loaded.info.context_size,
            args,
            config,
        )?),
        None => None,
    };
    let mut info = loaded.info;
    if let Some(template) = &plan.chat_template {
        tracing::info!(
            model = %info.id,
            file = %template.path.display(),
            replaces = if info.chat_template.is_some() {
                "the model's own"
            } else {
                "the built-in fallback"
            },
            "chat template from the override file"
        );
        // The engine compiles this source and detects the tool-call format from it.
        info.chat_template = Some(template.source.clone());
    }
    let engine = Engine::start_with_draft(
        info,
        loaded.tokenizer,
        loaded.runner,
        draft,
        EngineConfig {
            queue_capacity: args
                .queue
                .or(config.server.queue)
                .unwrap_or(settings::DEFAULT_QUEUE),
            parallel: loaded.parallel,
            cache: CacheConfig {
                host_bytes: args
                    .cache_ram
                    .or(config.server.cache_ram)
                    .map_or_else(default_cache_ram, |b| b.as_u64()),
                disk_dir: args.cache_dir.clone().or(config.server.cache_dir.clone()),
                disk_bytes: args
                    .cache_disk
                    .or(config.server.cache_disk)
                    .map_or(settings::DEFAULT_CACHE_DISK, |b| b.as_u64()),
            },
            tool_format: plan.tool_parser,
            metrics: Some(metrics.clone()),
            speculative,
            vision: loaded.vision,
        },
    )
    .context("cannot start the engine")?;
    Ok(ServedModel {
        id: engine.info().id.clone(),
        backend: engine.into(),
        created: plan.model.created(),
        runs_on: loaded.runs_on.to_string(),
    })
}

/// The main model, then each alias target (`claude-*haiku*` -> the small model, the
/// config's `[aliases]`) that is another model. An alias whose model can't be had is
/// served by the main model, with a warning.
fn load_models(args: &ServeArgs, config: &Config) -> anyhow::Result<ModelRouter> {
    let metrics = Arc::new(EngineMetrics::new());
    if !args.upstream.is_empty() {
        let main = crate::upstream::start(
            &crate::upstream::UpstreamArgs {
                replicas: &args.upstream,
                model: args.upstream_model.as_deref(),
                key: args.upstream_key.as_deref(),
                id: args.model_id.as_deref(),
                api: args.upstream_api.unwrap_or_default(),
                routing: args.upstream_routing.unwrap_or_default(),
            },
            &metrics,
        )?;
        return Ok(ModelRouter::new(main));
    }
    let (main_name, recommended) = main_model_name(args, config);
    let mut router =
        match configured_upstream(&main_name, config, args.model_id.as_deref(), &metrics) {
            Some(upstream) => ModelRouter::new(upstream?),
            None => ModelRouter::new(start_main(args, config, &main_name, recommended, &metrics)?),
        };
    add_aliases(&mut router, args, config, &main_name, &metrics);
    Ok(router)
}

/// A model whose config table names upstream replicas (`upstream = [...]`), served from
/// them under `id` [default: the table's name]; None for a model to load here.
fn configured_upstream(
    name: &str,
    config: &Config,
    id: Option<&str>,
    metrics: &Arc<EngineMetrics>,
) -> Option<anyhow::Result<ServedModel>> {
    let settings = config.models.get(name)?;
    let replicas = settings.upstream.as_ref()?;
    if replicas.is_empty() {
        return Some(Err(anyhow::anyhow!(
            "[models.{name}] upstream = []: name at least one replica URL"
        )));
    }
    Some(
        crate::upstream::start(
            &crate::upstream::UpstreamArgs {
                replicas,
                model: settings.upstream_model.as_deref(),
                key: settings.upstream_key.as_deref(),
                id: Some(id.unwrap_or(name)),
                api: settings.upstream_api.unwrap_or_default(),
                routing: settings.upstream_routing.unwrap_or_default(),
            },
            metrics,
        )
        .with_context(|| format!("[models.{name}]")),
    )
}

fn start_main(
    args: &ServeArgs,
    config: &Config,
    main_name: &str,
    recommended: bool,
    metrics: &Arc<EngineMetrics>,
) -> anyhow::Result<ServedModel> {
    let main = match resolve::resolve(main_name, config, Fetch::IfMissing) {
        Err(e) if recommended => {
            return Err(e.context(format!(
                "the recommended model, {main_name}, is not downloaded yet"
            )))
        }
        result => result?,
    };
    let (speculative, draft) = speculation(args, config)?;
    start_engine(
        LoadPlan::new(args, main, true)?,
        args,
        config,
        metrics,
        (speculative, draft.as_deref()),
    )
}

/// Each alias target (`claude-*haiku*` -> the small model, the config's `[aliases]`) that
/// is another model, local or upstream. An alias whose model can't be had is served by the
/// main model, with a warning.
fn add_aliases(
    router: &mut ModelRouter,
    args: &ServeArgs,
    config: &Config,
    main_name: &str,
    metrics: &Arc<EngineMetrics>,
) {
    let small = args.small_model.clone().or(config.small_model.clone());
    // The draft model drafts for the main model only: the others speculate as asked,
    // without one.
    let asked = args.speculative.or(config.server.speculative);
    let alias_speculation = (
        asked
            .filter(|s| *s != Speculative::Draft)
            .unwrap_or_default(),
        None,
    );
    let mut loaded: Vec<(String, usize)> = vec![(main_name.to_owned(), 0)];
    for (pattern, target) in config.aliases(small.as_deref()) {
        let index = match loaded.iter().find(|(name, _)| *name == target) {
            Some(&(_, index)) => index,
            None => {
                let started =
                    configured_upstream(&target, config, None, metrics).unwrap_or_else(|| {
                        resolve::resolve(&target, config, Fetch::IfMissing)
                            .and_then(|m| LoadPlan::new(args, m, false))
                            .and_then(|plan| {
                                start_engine(plan, args, config, metrics, alias_speculation)
                            })
                    });
                match started {
                    Ok(model) => {
                        let index = router.add(model);
                        loaded.push((target.clone(), index));
                        index
                    }
                    Err(e) => {
                        tracing::warn!(
                            "alias {pattern} -> {target}: {e:#}; the main model serves those \
                             requests"
                        );
                        loaded.push((target.clone(), 0));
                        0
                    }
                }
            }
        };
        router.alias(&pattern, index);
    }
    for (pattern, id) in router.aliases() {
        tracing::info!(alias = pattern, model = id, "alias");
    }
}

/// A list flag's values, else the config's.
fn or_config(flag: &[String], config: &Option<Vec<String>>) -> Vec<String> {
    if flag.is_empty() {
        config.clone().unwrap_or_default()
    } else {
        flag.to_vec()
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    let config = crate::config::load()?;
    let host = args.host.unwrap_or_else(|| config.server.host());
    let port = args.port.unwrap_or_else(|| config.server.port());
    let api_key = args.api_key.clone().or(config.server.api_key.clone());
    if !host.is_loopback() && api_key.is_none() && !args.insecure_no_auth {
        bail!(
            "refusing to listen on {host} without --api-key: anyone on the network could use \
             the model. Pass --api-key KEY, or --insecure-no-auth if you really mean it"
        );
    }
    if api_key.as_deref() == Some("") {
        bail!("--api-key must not be empty");
    }
    let router = load_models(&args, &config)?;
    let server_config = ServerConfig {
        api_key,
        body_limit: args
            .max_body_mib
            .or(config.server.max_body_mib)
            .unwrap_or(32)
            .saturating_mul(1024 * 1024),
        browser: BrowserPolicy::new(
            host.is_loopback(),
            or_config(&args.allowed_hosts, &config.server.allowed_hosts),
            or_config(&args.cors_origins, &config.server.cors_origins),
        ),
        sampling: sampling_defaults(&args, &config)?,
        images: args.images.or(config.server.images).unwrap_or_default(),
        allow_image_urls: args.allow_image_urls || config.server.allow_image_urls.unwrap_or(false),
        ..ServerConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let addr = SocketAddr::new(host, port);
    let router = Arc::new(router);
    let result = runtime.block_on(serve(addr, router.clone(), server_config));
    for model in router.models() {
        model.backend.shutdown();
    }
    for model in router.models() {
        model.backend.join();
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve(
    addr: SocketAddr,
    models: Arc<ModelRouter>,
    config: ServerConfig,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let state = AppState::new(models.clone(), config);
    for model in models.models() {
        model.backend.start_background();
    }
    tracing::info!(%addr, model = %models.default_model().id, "listening");
    let signal = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let signal = signal.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down: ending open streams");
            // Running and queued generations end with an error event, so streams close.
            for model in models.models() {
                model.backend.shutdown();
            }
            signal.cancel();
        }
    });
    let header_timeout = state.config.header_timeout;
    let server = tokio::spawn(pensieve_server::listen::serve(
        listener,
        pensieve_server::app(state),
        header_timeout,
        signal.clone().cancelled_owned(),
    ));
    signal.cancelled().await;
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).context("server task failed"),
        Err(_) => {
            tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; exiting anyway");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// The prefix cache's RAM unless asked, from the memory available now that the model and
/// its KV cache are loaded.
fn default_cache_ram() -> u64 {
    let bytes = settings::cache_ram(pensieve_llama::device::available_memory());
    tracing::info!(cache_ram = %ByteSize::b(bytes), "prefix cache RAM budget");
    bytes
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // llama.cpp is chatty at info level; its warnings and errors still show.
    let filter = EnvFilter::try_from_env("PENSIEVE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,llama-cpp-2=warn,llama_cpp_2=warn"));
    // Colours only for a terminal: a log file (`pensieve claude`'s server) stays greppable.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(argv: &[&str]) -> Result<ServeArgs, clap::Error> {
        let argv = std::iter::once("serve").chain(argv.iter().copied());
        let matches = Cmd::command().try_get_matches_from(argv)?;
        let mut cmd = Cmd::from_arg_matches(&matches)?;
        cmd.serve.note_sources(&matches);
        Ok(cmd.serve)
    }

    #[test]
    fn upstream_replicas_repeat_and_exclude_a_local_model() {
        let args = parse(&[
            "--upstream",
            "http://gpu1:8000/v1",
            "--upstream",
            "http://gpu2:8000/v1",
            "--upstream-model",
            "Qwen/Qwen3-32B",
        ])
        .unwrap();
        assert_eq!(
            args.upstream,
            ["http://gpu1:8000/v1", "http://gpu2:8000/v1"]
        );
        assert_eq!(args.upstream_model.as_deref(), Some("Qwen/Qwen3-32B"));
        for argv in [
            &["--upstream", "http://gpu1:8000/v1", "--model", "x.gguf"][..],
            &["--upstream", "http://gpu1:8000/v1", "--engine", "mlx"][..],
            &["--upstream-model", "Qwen/Qwen3-32B"][..],
        ] {
            assert!(parse(argv).is_err(), "{argv:?}");
        }
    }

    #[test]
    fn sampling_flags_win_over_the_config_and_are_checked() {
        let config: Config =
            toml::from_str("[server]\ntemperature = 0.7\ntop_k = 20\nseed = 3\n").unwrap();
        let args = parse(&["--temp", "0", "--top-p", "0.8", "--top-k", "0"]).unwrap();
        assert_eq!(
            sampling_defaults(&args, &config).unwrap(),
            SamplingDefaults {
                temperature: Some(0.0),
                top_p: Some(0.8),
                top_k: None,
                min_p: None,
                seed: Some(3),
            }
        );
        for argv in [
            &["--temp", "2.5"][..],
            &["--temp", "nan"][..],
            &["--top-p", "-0.1"][..],
            &["--min-p", "1.5"][..],
            &["--top-k", "-1"][..],
        ] {
            assert!(parse(argv).is_err(), "{argv:?}");
        }
        let config: Config = toml::from_str("[server]\ntop_p = 1.5\n").unwrap();
        let e = sampling_defaults(&parse(&[]).unwrap(), &config).unwrap_err();
        assert!(e.to_string().contains("top_p"), "{e}");
    }

    /// The only test that sets a variable: clap reads it from the process, and no other
    /// test parses `serve`'s arguments.
    #[test]
    fn flags_and_variables_land_in_their_own_layers() {
        let args = parse(&[
            "--ctx",
            "2048",
            "-n",
            "2",
            "--gpu-layers",
            "all",
            "--batch",
            "256",
            "--threads",
            "3",
            "--backend-sampling",
            "false",
            "--cache-type-k",
            "q8_0",
            "--cache-type-v",
            "Q4_0",
            "--flash-attn",
            "on",
        ])
        .unwrap();
        let (flags, env) = args.layers(true);
        assert_eq!(
            flags,
            Layer {
                ctx: Some(2048),
                parallel: Some(2),
                threads: Some(3),
                batch: Some(256),
                gpu_layers: Some(GpuLayers::All),
                backend_sampling: Some(false),
                cache_type_k: Some(KvType::Q8_0),
                cache_type_v: Some(KvType::Q4_0),
                flash_attn: Some(FlashAttn::On),
            }
        );
        assert_eq!(env, Layer::default());
        // The context and sequences are the main model's own.
        let (flags, _) = args.layers(false);
        assert_eq!(
            (flags.ctx, flags.parallel, flags.threads),
            (None, None, Some(3))
        );

        let err = parse(&["--gpu-layers", "most"]).unwrap_err().to_string();
        assert!(
            err.contains("neither a number of layers nor `all`"),
            "{err}"
        );

        std::env::set_var("PENSIEVE_GPU_LAYERS", "0");
        let from_env = parse(&["--ctx", "1024"]);
        let over_env = parse(&["--gpu-layers", "7"]);
        std::env::remove_var("PENSIEVE_GPU_LAYERS");
        let (flags, env) = from_env.unwrap().layers(true);
        assert_eq!(
            (flags.gpu_layers, env.gpu_layers),
            (None, Some(GpuLayers::Count(0)))
        );
        let (flags, env) = over_env.unwrap().layers(true);
        assert_eq!(
            (flags.gpu_layers, env.gpu_layers),
            (Some(GpuLayers::Count(7)), None)
        );
    }
}
