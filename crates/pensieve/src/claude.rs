//! `pensieve claude [ARGS...]`: Claude Code on a local model in one command. Finds the
//! server (or starts one, with the prefix cache on disk so that a new session reuses the
//! system prompt and tool schemas every session shares), then runs `claude` with the
//! environment that points it there, and stops a server it started when Claude Code exits.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use crate::local_server::{self, LaunchOptions};
use crate::{config, paths};

#[derive(Debug, Args)]
pub struct ClaudeArgs {
    /// The model a server started here loads (see `pensieve serve --model`).
    #[arg(long, short = 'm', env = "PENSIEVE_MODEL", value_name = "MODEL")]
    model: Option<String>,
    /// The model for Claude Code's quick (haiku) requests.
    #[arg(long, env = "PENSIEVE_SMALL_MODEL", value_name = "MODEL")]
    small_model: Option<String>,
    /// The server to use [default: http://HOST:PORT from the config, 127.0.0.1:7777].
    #[arg(long, env = "PENSIEVE_URL", value_name = "URL")]
    url: Option<String>,
    /// The Claude Code executable [default: `claude` on PATH].
    #[arg(long, env = "PENSIEVE_CLAUDE_BIN", value_name = "PATH")]
    claude: Option<PathBuf>,
    /// Arguments for Claude Code, e.g. `-p "Say hello"` (after `--` if one looks like a
    /// flag of this command).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<OsString>,
}

pub fn run(args: ClaudeArgs) -> anyhow::Result<()> {
    let config = config::load()?;
    let claude = find_claude(args.claude.as_deref())?;
    let base_url = args
        .url
        .clone()
        .unwrap_or_else(|| config.server.local_url());
    let api_key = api_key(&config);
    let (server, served) = start_server(base_url, api_key.clone(), &args.model, &args.small_model)?;
    let mut command = Command::new(&claude);
    command.args(&args.args);
    command
        .env("ANTHROPIC_BASE_URL", &server.base_url)
        .env(
            "ANTHROPIC_AUTH_TOKEN",
            api_key.as_deref().unwrap_or("pensieve"),
        )
        // A real Anthropic key in the environment would be sent to the local server.
        .env_remove("ANTHROPIC_API_KEY")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1");
    let mut set_default = |key: &str, value: &str| {
        if std::env::var_os(key).is_none() {
            command.env(key, value);
        }
    };
    set_default("ANTHROPIC_MODEL", &served.main);
    set_default("ANTHROPIC_DEFAULT_OPUS_MODEL", &served.main);
    set_default("ANTHROPIC_DEFAULT_SONNET_MODEL", &served.main);
    set_default("ANTHROPIC_DEFAULT_HAIKU_MODEL", &served.haiku);
    set_default("ANTHROPIC_SMALL_FAST_MODEL", &served.haiku);
    // Claude Code knows no window for a local model's name: told the real one, it
    // compacts the conversation before the server has to refuse it.
    if let Some(context) = served.context_size {
        set_default("CLAUDE_CODE_MAX_CONTEXT_TOKENS", &context.to_string());
    }
    // A cold prefill on a CPU takes minutes; the server pings meanwhile.
    set_default("API_TIMEOUT_MS", "3600000");
    let status = command
        .status()
        .with_context(|| format!("cannot run {}", claude.display()))?;
    drop(server);
    std::process::exit(status.code().unwrap_or(1));
}

/// The key the server wants, from the environment or the config.
pub(crate) fn api_key(config: &config::Config) -> Option<String> {
    std::env::var("PENSIEVE_API_KEY")
        .ok()
        .filter(|k| !k.is_empty())
        .or(config.server.api_key.clone())
}

/// The server at `base_url`, started here with `model` and `small_model` when none
/// answers there, and what it serves. An agent's long system prompt and tools are the
/// same in every session: a server started here keeps its prefix cache on disk, so a new
/// session after a restart prefills only what is new.
pub(crate) fn start_server(
    base_url: String,
    api_key: Option<String>,
    model: &Option<String>,
    small_model: &Option<String>,
) -> anyhow::Result<(local_server::LocalServer, Served)> {
    let config = config::load()?;
    let mut serve_args: Vec<OsString> = Vec::new();
    if let Some(model) = model {
        serve_args.extend(["--model".into(), model.into()]);
    }
    if let Some(small) = small_model {
        serve_args.extend(["--small-model".into(), small.into()]);
    }
    if config.server.cache_dir.is_none() && std::env::var_os("PENSIEVE_CACHE_DIR").is_none() {
        let dir = paths::data_dir().join("prefix-cache");
        serve_args.extend(["--cache-dir".into(), dir.into()]);
    }
    local_server::catch_sigint();
    let server = local_server::ensure(LaunchOptions {
        api_key,
        serve_args,
        startup_timeout: Duration::from_secs(60 * 60),
        ..LaunchOptions::new(base_url)
    })?;
    let served = served_models(&server.base_url)?;
    if !server.started_here() {
        if let Some(model) = model.as_deref().filter(|m| *m != served.main) {
            eprintln!(
                "note: a server is already running at {} with {}; --model {model} applies only \
                 to a server started here (stop that one, or pass --url)",
                server.base_url, served.main
            );
        }
    }
    Ok((server, served))
}

/// What the server serves, from its `/health`.
pub(crate) struct Served {
    pub main: String,
    /// What `claude-*haiku*` requests get.
    pub haiku: String,
    pub context_size: Option<u64>,
}

pub(crate) fn served_models(base_url: &str) -> anyhow::Result<Served> {
    let health: serde_json::Value = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?
        .get(format!("{base_url}/health"))
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json())
        .with_context(|| format!("cannot read {base_url}/health"))?;
    let main = health["model"]
        .as_str()
        .context("the server's /health names no model")?
        .to_owned();
    Ok(Served {
        haiku: health["haiku_model"].as_str().unwrap_or(&main).to_owned(),
        context_size: health["context_size"].as_u64(),
        main,
    })
}

fn find_claude(explicit: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    find_program(
        explicit,
        "claude",
        "Claude Code is not installed (no `claude` on PATH): `npm install -g \
         @anthropic-ai/claude-code` installs it, or pass --claude PATH",
    )
}

/// `explicit`, else `name` on PATH; `missing` says how to get it.
pub(crate) fn find_program(
    explicit: Option<&std::path::Path>,
    name: &str,
    missing: &str,
) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    let name = if cfg!(windows) {
        format!("{name}.exe")
    } else {
        name.to_owned()
    };
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(&name))
            .find(|p| p.is_file())
    });
    match found {
        Some(path) => Ok(path),
        None => bail!("{missing}"),
    }
}
