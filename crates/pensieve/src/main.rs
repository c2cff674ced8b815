//! The `pensieve` command line.

mod catalog;
mod chat;
mod claude;
mod codex;
mod config;
mod local_server;
mod paths;
mod recommend;
mod resolve;
mod serve;
mod setup;
mod template_override;
mod upstream;

use clap::{CommandFactory, FromArgMatches, Subcommand};

/// A local LLM server for Claude Code, the Anthropic SDKs and OpenAI-compatible clients.
#[derive(Debug, clap::Parser)]
#[command(name = "pensieve", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a model over HTTP (Anthropic Messages and OpenAI APIs).
    Serve(Box<serve::ServeArgs>),
    /// Run Claude Code on a local model (starts the server if none is running).
    Claude(claude::ClaudeArgs),
    /// Run OpenAI's Codex CLI on a local model (starts the server if none is running).
    Codex(codex::CodexArgs),
    /// Chat with a model in the terminal (a running server's, or one started for the chat).
    Chat(chat::ChatArgs),
    /// Download a model from the Hugging Face Hub into its standard cache.
    Pull(catalog::PullArgs),
    /// List the models on this machine.
    List(catalog::ListArgs),
    /// Show a model's metadata, chat template and tool-call support.
    Show(catalog::ShowArgs),
    /// Remove a model from the Hugging Face cache.
    Rm(catalog::RmArgs),
    /// Install what an engine needs (`pensieve setup mlx`).
    Setup(setup::SetupArgs),
}

fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Serve(mut args) => {
            // The settings tell a flag from its PENSIEVE_* variable, which clap merges.
            if let Some(serve) = matches.subcommand_matches("serve") {
                args.note_sources(serve);
            }
            serve::run(*args)
        }
        Command::Claude(args) => claude::run(args),
        Command::Codex(args) => codex::run(args),
        Command::Chat(args) => chat::run(args),
        Command::Pull(args) => catalog::pull(args),
        Command::List(args) => catalog::list(args),
        Command::Show(args) => catalog::show(args),
        Command::Rm(args) => catalog::rm(args),
        Command::Setup(args) => setup::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
