//! `pensieve codex [ARGS...]`: OpenAI's Codex CLI on a local model in one command. Finds
//! the server (or starts one, as `pensieve claude` does), then runs `codex` with a model
//! provider for it that speaks the Responses API, and stops a server it started when
//! Codex exits.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use clap::Args;

use crate::claude::{api_key, find_program, start_server};
use crate::config;

/// The variable the provider reads its key from (Codex sends it as a bearer token).
const KEY_VARIABLE: &str = "PENSIEVE_CODEX_API_KEY";

#[derive(Debug, Args)]
pub struct CodexArgs {
    /// The model a server started here loads (see `pensieve serve --model`).
    #[arg(long, short = 'm', env = "PENSIEVE_MODEL", value_name = "MODEL")]
    model: Option<String>,
    /// The server to use [default: http://HOST:PORT from the config, 127.0.0.1:7777].
    #[arg(long, env = "PENSIEVE_URL", value_name = "URL")]
    url: Option<String>,
    /// The Codex executable [default: `codex` on PATH].
    #[arg(long, env = "PENSIEVE_CODEX_BIN", value_name = "PATH")]
    codex: Option<PathBuf>,
    /// Arguments for Codex, e.g. `exec "Say hello"` (after `--` if one looks like a flag
    /// of this command).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<OsString>,
}

pub fn run(args: CodexArgs) -> anyhow::Result<()> {
    let config = config::load()?;
    let codex = find_program(
        args.codex.as_deref(),
        "codex",
        "Codex CLI is not installed (no `codex` on PATH): `npm install -g @openai/codex` \
         installs it, or pass --codex PATH",
    )?;
    let base_url = args
        .url
        .clone()
        .unwrap_or_else(|| config.server.local_url());
    let key = api_key(&config);
    let (server, served) = start_server(base_url, key.clone(), &args.model, &None)?;
    let mut command = Command::new(&codex);
    command.args(provider_overrides(
        &server.base_url,
        &served.main,
        served.context_size,
    ));
    command.args(&args.args);
    command.env(KEY_VARIABLE, key.as_deref().unwrap_or("pensieve"));
    let status = command
        .status()
        .with_context(|| format!("cannot run {}", codex.display()))?;
    drop(server);
    std::process::exit(status.code().unwrap_or(1));
}

/// Codex's `-c` settings that make the server its model provider: the Responses API at
/// `base_url`, `model` unless the user names another (`-m` wins over `-c`), and the
/// model's real context window so that Codex compacts before the server has to refuse.
fn provider_overrides(base_url: &str, model: &str, context: Option<u64>) -> Vec<String> {
    let provider = format!(
        "model_providers.pensieve={{name=\"Pensieve\", base_url=\"{}/v1\", \
         wire_api=\"responses\", env_key=\"{KEY_VARIABLE}\", \
         stream_idle_timeout_ms=3600000}}",
        base_url.trim_end_matches('/')
    );
    let mut out = vec![
        "-c".into(),
        "model_provider=\"pensieve\"".into(),
        "-c".into(),
        provider,
        "-c".into(),
        format!("model={}", toml_string(model)),
    ];
    if let Some(context) = context {
        out.extend(["-c".into(), format!("model_context_window={context}")]);
    }
    out
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_name_the_provider_model_and_window() {
        let o = provider_overrides("http://127.0.0.1:7777/", "Qwen2.5 \"coder\"", Some(32768));
        assert_eq!(o[1], "model_provider=\"pensieve\"");
        assert!(
            o[3].contains("base_url=\"http://127.0.0.1:7777/v1\""),
            "{}",
            o[3]
        );
        assert!(o[3].contains("wire_api=\"responses\""));
        assert_eq!(o[5], r#"model="Qwen2.5 \"coder\"""#);
        assert_eq!(o[7], "model_context_window=32768");
        assert_eq!(provider_overrides("http://h:1", "m", None).len(), 6);
    }
}
