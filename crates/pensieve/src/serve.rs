//! `pensieve serve`: load a model, start the engine, serve HTTP until Ctrl-C or SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use bytesize::ByteSize;
use clap::Args;
use pensieve_engine::{CacheConfig, Engine, EngineConfig, ToolFormat};
use pensieve_llama::LlamaOptions;
use pensieve_server::{AppState, ServerConfig};

use crate::paths;

/// How long open streams get to end after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A GGUF model file (llama engine), or an MLX model folder or a Hugging Face repo id in
    /// the local cache (mlx engine).
    #[arg(long, short = 'm', value_name = "PATH")]
    model: PathBuf,
    /// The engine that runs the model [default: mlx on Apple Silicon once `pensieve setup
    /// mlx` has run, llama elsewhere].
    #[arg(long, value_enum, value_name = "ENGINE")]
    engine: Option<EngineKind>,
    /// The Python of the mlx engine's worker [default: the venv of `pensieve setup mlx`].
    #[arg(long, env = "PENSIEVE_MLX_PYTHON", value_name = "PATH")]
    python: Option<PathBuf>,
    /// Address to listen on. Anything but loopback needs --api-key (or --insecure-no-auth).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    #[arg(long, short = 'p', default_value_t = 7777)]
    port: u16,
    /// Context length of each sequence in tokens [default: the model's, at most 32768].
    #[arg(long, value_name = "N")]
    ctx: Option<u32>,
    /// Sequences generating at once (continuous batching) [default: what fits in a
    /// quarter of the available memory at full context, at most 4].
    #[arg(long, short = 'n', value_name = "N")]
    parallel: Option<usize>,
    /// RAM for prefix-cache snapshots, e.g. 4GiB [default: a quarter of the memory
    /// available after loading, at least 256MiB].
    #[arg(long, value_name = "SIZE")]
    cache_ram: Option<ByteSize>,
    /// Keep prefix-cache snapshots in this directory too, so they survive a restart.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Disk space for prefix-cache snapshots in --cache-dir.
    #[arg(long, value_name = "SIZE", default_value = "16GiB")]
    cache_disk: ByteSize,
    /// CPU threads [default: the number of physical cores].
    #[arg(long, short = 't', value_name = "N")]
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
    /// Name the model is listed under [default: the file name without extension].
    #[arg(long, value_name = "NAME")]
    model_id: Option<String>,
    /// Requests that may wait for a free sequence; more get 529 overloaded.
    #[arg(long, default_value_t = 64, value_name = "N")]
    queue: usize,
    /// Tokens per prefill step.
    #[arg(long, default_value_t = 512, value_name = "N")]
    batch: u32,
    /// Model layers to offload to the GPU (builds with cuda, metal or vulkan).
    #[arg(long, default_value_t = 0, value_name = "N")]
    gpu_layers: u32,
    /// Largest request body in MiB.
    #[arg(long, default_value_t = 32, value_name = "MIB")]
    max_body_mib: usize,
    /// How the model writes tool calls: hermes (also qwen), llama3_json, mistral,
    /// mistral_json, functiongemma [default: as its chat template shows].
    #[arg(long, value_name = "FORMAT", value_parser = parse_tool_format)]
    tool_parser: Option<ToolFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EngineKind {
    /// llama.cpp in-process (GGUF files).
    Llama,
    /// MLX through a supervised mlx-lm worker (MLX model folders).
    Mlx,
}

impl EngineKind {
    fn default_for_platform() -> EngineKind {
        let apple_silicon = cfg!(all(target_os = "macos", target_arch = "aarch64"));
        if apple_silicon && paths::mlx_python().exists() {
            EngineKind::Mlx
        } else {
            EngineKind::Llama
        }
    }
}

/// What both engines hand to the scheduler.
struct Loaded {
    info: pensieve_engine::ModelInfo,
    tokenizer: Arc<dyn pensieve_engine::Tokenizer>,
    runner: Box<dyn pensieve_engine::ModelRunner>,
    parallel: usize,
}

fn load_model(args: &ServeArgs) -> anyhow::Result<Loaded> {
    let engine = args.engine.unwrap_or_else(EngineKind::default_for_platform);
    match engine {
        EngineKind::Llama => {
            if args.model.is_dir() {
                bail!(
                    "{} is a folder; the llama engine runs GGUF files (for an MLX model folder, \
                     pass --engine mlx)",
                    args.model.display()
                );
            }
            let options = LlamaOptions {
                id: args.model_id.clone(),
                context_size: args.ctx,
                threads: args.threads,
                batch_size: args.batch,
                gpu_layers: args.gpu_layers,
                parallel: args.parallel,
                ..LlamaOptions::new(&args.model)
            };
            let loaded = pensieve_llama::load(&options)
                .with_context(|| format!("cannot load {}", args.model.display()))?;
            Ok(Loaded {
                info: loaded.info,
                tokenizer: loaded.tokenizer,
                runner: Box::new(loaded.runner),
                parallel: loaded.parallel,
            })
        }
        EngineKind::Mlx => {
            let folder = pensieve_mlx::resolve_model(&args.model.to_string_lossy())?;
            if !folder.is_dir() {
                bail!(
                    "the mlx engine runs MLX model folders; {} is not one (for a GGUF file, \
                     pass --engine llama)",
                    args.model.display()
                );
            }
            let python = args.python.clone().unwrap_or_else(paths::mlx_python);
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
            // A repo id is the model's name; a folder's name is its own.
            let id = args.model_id.clone().or_else(|| {
                (folder != args.model).then(|| args.model.to_string_lossy().into_owned())
            });
            let options = pensieve_mlx::MlxOptions {
                path: folder,
                python,
                script,
                id,
                context_size: args.ctx,
                parallel: args.parallel,
                batch_size: args.batch,
            };
            let loaded = pensieve_mlx::load(&options)
                .with_context(|| format!("cannot load {}", args.model.display()))?;
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
            ToolFormat::NAMES.join(", ")
        )
    })
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    if !args.host.is_loopback() && args.api_key.is_none() && !args.insecure_no_auth {
        bail!(
            "refusing to listen on {} without --api-key: anyone on the network could use the \
             model. Pass --api-key KEY, or --insecure-no-auth if you really mean it",
            args.host
        );
    }
    if args.api_key.as_deref() == Some("") {
        bail!("--api-key must not be empty");
    }
    let loaded = load_model(&args)?;
    let engine = Engine::start(
        loaded.info,
        loaded.tokenizer,
        loaded.runner,
        EngineConfig {
            queue_capacity: args.queue,
            parallel: loaded.parallel,
            cache: CacheConfig {
                host_bytes: args
                    .cache_ram
                    .map_or_else(default_cache_ram, |b| b.as_u64()),
                disk_dir: args.cache_dir.clone(),
                disk_bytes: args.cache_disk.as_u64(),
            },
            tool_format: args.tool_parser,
        },
    )
    .context("cannot start the engine")?;
    let config = ServerConfig {
        api_key: args.api_key.clone(),
        body_limit: args.max_body_mib.saturating_mul(1024 * 1024),
        model_created: std::fs::metadata(&args.model)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH),
        ..ServerConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let addr = SocketAddr::new(args.host, args.port);
    let result = runtime.block_on(serve(addr, engine.clone(), config));
    engine.shutdown();
    engine.join();
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve(addr: SocketAddr, engine: Engine, config: ServerConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let state = AppState {
        engine: engine.clone(),
        config: Arc::new(config),
    };
    tracing::info!(%addr, model = %engine.info().id, "listening");
    let signal = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let signal = signal.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down: ending open streams");
            // Running and queued generations end with an error event, so streams close.
            engine.shutdown();
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
