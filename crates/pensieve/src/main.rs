//! The `pensieve` command line.

mod paths;
mod serve;
mod setup;

use clap::{Parser, Subcommand};

/// A local LLM server for Claude Code, the Anthropic SDKs and OpenAI-compatible clients.
#[derive(Debug, Parser)]
#[command(name = "pensieve", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a model over HTTP (Anthropic Messages API).
    Serve(serve::ServeArgs),
    /// Install what an engine needs (`pensieve setup mlx`).
    Setup(setup::SetupArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
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
