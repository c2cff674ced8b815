//! `pensieve serve`: find the model (pulling it if needed), load it and any alias targets,
//! start their engines, serve HTTP until Ctrl-C or SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytesize::ByteSize;
use clap::Args;
use pensieve_engine::{CacheConfig, Engine, EngineConfig, EngineMetrics, ToolFormat};
use pensieve_hub::ModelFormat;
use pensieve_llama::LlamaOptions;
use pensieve_server::{AppState, ModelRouter, ServedModel, ServerConfig};

use crate::config::{Config, EngineKind};
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
    /// Context length of each sequence in tokens [default: the model's, at most 32768].
    #[arg(long, env = "PENSIEVE_CTX", value_name = "N")]
    ctx: Option<u32>,
    /// Sequences generating at once (continuous batching) [default: what fits in a
    /// quarter of the available memory at full context, at most 4].
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
    /// Name the model is listed under [default: its `pensieve list` name, or the file
    /// name without extension].
    #[arg(long, value_name = "NAME")]
    model_id: Option<String>,
    /// Requests that may wait for a free sequence; more get 529 overloaded [default: 64].
    #[arg(long, value_name = "N")]
    queue: Option<usize>,
    /// Tokens per prefill step [default: 512].
    #[arg(long, value_name = "N")]
    batch: Option<u32>,
    /// Model layers to offload to the GPU (builds with cuda, metal or vulkan) [default: 0].
    #[arg(long, value_name = "N")]
    gpu_layers: Option<u32>,
    /// Largest request body in MiB [default: 32].
    #[arg(long, value_name = "MIB")]
    max_body_mib: Option<usize>,
    /// How the model writes tool calls [default: as its chat template shows].
    #[arg(long, value_name = "FORMAT", value_parser = tool_format_parser())]
    tool_parser: Option<ToolFormat>,
    /// A Jinja chat template file that replaces the model's own (as llama-server's
    /// --chat-template-file); it also decides the tool-call format detected
    /// [default: the model's, else a built-in one for its architecture].
    #[arg(long, value_name = "FILE")]
    chat_template: Option<PathBuf>,
}

/// What both engines hand to the scheduler.
struct Loaded {
    info: pensieve_engine::ModelInfo,
    tokenizer: Arc<dyn pensieve_engine::Tokenizer>,
    runner: Box<dyn pensieve_engine::ModelRunner>,
    parallel: usize,
}

/// Everything one model is loaded with: its own config settings under the flags.
struct LoadPlan {
    model: Resolved,
    engine: EngineKind,
    id: Option<String>,
    ctx: Option<u32>,
    threads: Option<usize>,
    parallel: Option<usize>,
    batch: u32,
    gpu_layers: u32,
    tool_parser: Option<ToolFormat>,
    chat_template: Option<TemplateOverride>,
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
        Ok(LoadPlan {
            engine,
            id: args.model_id.clone().filter(|_| main).or(model.id.clone()),
            ctx: args.ctx.filter(|_| main).or(s.ctx),
            threads: args.threads.or(s.threads),
            parallel: args.parallel.filter(|_| main).or(s.parallel),
            batch: args.batch.or(s.batch).unwrap_or(512),
            gpu_layers: args.gpu_layers.or(s.gpu_layers).unwrap_or(0),
            tool_parser,
            chat_template,
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

fn load_model(plan: &LoadPlan, python: Option<&PathBuf>) -> anyhow::Result<Loaded> {
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
                context_size: plan.ctx,
                threads: plan.threads,
                batch_size: plan.batch,
                gpu_layers: plan.gpu_layers,
                parallel: plan.parallel,
                ..LlamaOptions::new(path)
            };
            let loaded = pensieve_llama::load(&options)
                .with_context(|| format!("cannot load {}", path.display()))?;
            Ok(Loaded {
                info: loaded.info,
                tokenizer: loaded.tokenizer,
                runner: Box::new(loaded.runner),
                parallel: loaded.parallel,
            })
        }
        EngineKind::Mlx => {
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
                context_size: plan.ctx,
                parallel: plan.parallel,
                batch_size: plan.batch,
            };
            let loaded = pensieve_mlx::load(&options)
                .with_context(|| format!("cannot load {}", path.display()))?;
            Ok(Loaded {
                info: loaded.info,
                tokenizer: loaded.tokenizer,
                runner: Box::new(loaded.runner),
                parallel: loaded.parallel,
            })
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

/// Start one engine, recording into `metrics`.
fn start_engine(
    plan: &LoadPlan,
    args: &ServeArgs,
    config: &Config,
    metrics: &Arc<EngineMetrics>,
) -> anyhow::Result<ServedModel> {
    let loaded = load_model(plan, args.python.as_ref())?;
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
    let engine = Engine::start(
        info,
        loaded.tokenizer,
        loaded.runner,
        EngineConfig {
            queue_capacity: args.queue.or(config.server.queue).unwrap_or(64),
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
                    .map_or(16 << 30, |b| b.as_u64()),
            },
            tool_format: plan.tool_parser,
            metrics: Some(metrics.clone()),
        },
    )
    .context("cannot start the engine")?;
    Ok(ServedModel {
        id: engine.info().id.clone(),
        engine,
        created: plan.model.created(),
    })
}

/// The main model, then each alias target (`claude-*haiku*` -> the small model, the
/// config's `[aliases]`) that is another model. An alias whose model can't be had is
/// served by the main model, with a warning.
fn load_models(args: &ServeArgs, config: &Config) -> anyhow::Result<ModelRouter> {
    let metrics = Arc::new(EngineMetrics::new());
    let (main_name, recommended) = main_model_name(args, config);
    let main = match resolve::resolve(&main_name, config, Fetch::IfMissing) {
        Err(e) if recommended => {
            return Err(e.context(format!(
                "the recommended model, {main_name}, is not downloaded yet"
            )))
        }
        result => result?,
    };
    let mut router = ModelRouter::new(start_engine(
        &LoadPlan::new(args, main, true)?,
        args,
        config,
        &metrics,
    )?);
    let small = args.small_model.clone().or(config.small_model.clone());
    let mut loaded: Vec<(String, usize)> = vec![(main_name.clone(), 0)];
    for (pattern, target) in config.aliases(small.as_deref()) {
        let index = match loaded.iter().find(|(name, _)| *name == target) {
            Some(&(_, index)) => index,
            None => {
                let started = resolve::resolve(&target, config, Fetch::IfMissing)
                    .and_then(|m| LoadPlan::new(args, m, false))
                    .and_then(|plan| start_engine(&plan, args, config, &metrics));
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
    Ok(router)
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
        model.engine.shutdown();
    }
    for model in router.models() {
        model.engine.join();
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
    let state = AppState {
        models: models.clone(),
        config: Arc::new(config),
    };
    tracing::info!(%addr, model = %models.default_model().id, "listening");
    let signal = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let signal = signal.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down: ending open streams");
            // Running and queued generations end with an error event, so streams close.
            for model in models.models() {
                model.engine.shutdown();
            }
            signal.cancel();
        }
    });
    let server = axum::serve(listener, pensieve_server::app(state))
        .with_graceful_shutdown(signal.clone().cancelled_owned());
    let server = tokio::spawn(async move { server.await });
    signal.cancelled().await;
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(result)) => result.context("server error"),
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

/// A quarter of the memory available now (the model and its KV cache are loaded), at
/// least 256 MiB.
fn default_cache_ram() -> u64 {
    let quarter = pensieve_llama::load::available_memory().map_or(2 << 30, |b| b / 4);
    let bytes = quarter.max(256 << 20);
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
