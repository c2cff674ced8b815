//! `pensieve chat`: a terminal chat over a server's `/v1/messages` (Anthropic Messages API,
//! streamed). The server is one already running at `--url`, or, on a loopback URL with nothing
//! there, one started for the chat with `--model` and stopped when the chat ends.
//!
//! Interactive on a terminal (line editing, history, `"""` blocks, Ctrl-C stops an answer);
//! with piped input, each line is a turn (a `"""` block is one), and only the answers are
//! printed on stdout.
//!
//! This module owns the command-line arguments, the session (its /commands and turns) and
//! their printing; `client` talks to the server, `input` puts typed lines together.

mod client;
mod input;
mod tty;

use std::io::{IsTerminal, Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

use crate::local_server::{self, LaunchOptions};
use crate::paths;
use client::{Api, StreamEvent};
use input::{Assembler, Input};

const HELP: &str = "\
Commands:
  /help              this list
  /exit, /bye        quit (also Ctrl-D)
  /clear             forget the conversation (the system prompt stays)
  /system [TEXT]     set the system prompt, or show it
  /model [NAME]      switch the model asked for, or show it
  /retry             answer the last message again
  /save FILE         write the conversation as JSON (system and messages)
Input:
  \"\"\"                on a line of its own, starts and ends a multi-line message
  a trailing \\       continues the message on the next line
  Ctrl-C             stops an answer; at the prompt, clears the line";

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The server [default: http://HOST:PORT from the config, 127.0.0.1:7777]. On a loopback
    /// address with nothing answering, a server is started for the chat (this needs --model)
    /// and stopped when it ends.
    #[arg(long, env = "PENSIEVE_URL", value_name = "URL")]
    url: Option<String>,
    /// The server's API key (sent as x-api-key); a server started here requires it.
    #[arg(
        long,
        env = "PENSIEVE_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
    /// The model to ask for [default: the first the server lists]. When a server is started
    /// for the chat, the model it loads (a GGUF file or an MLX model folder).
    #[arg(long, short = 'm', value_name = "NAME")]
    model: Option<String>,
    /// The system prompt.
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// Most tokens in one answer.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    max_tokens: u32,
    /// Sampling temperature [default: the server's].
    #[arg(long, value_name = "T")]
    temperature: Option<f64>,
    /// Context length of a server started for the chat [default: the model's, at most 32768].
    #[arg(long, value_name = "N")]
    ctx: Option<u32>,
    /// After each answer, show its output tokens and tokens per second.
    #[arg(long, short = 'v')]
    verbose: bool,
}

pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    // Ctrl-C stops an answer instead of the process (and the server started for it).
    local_server::catch_sigint();
    let interactive = std::io::stdin().is_terminal();
    let url = match args.url.clone() {
        Some(url) => url,
        None => crate::config::load()?.server.local_url(),
    };
    if args.model.is_none() && !local_server::is_running(&url)? {
        bail!(
            "no server answers at {url}: start one with `pensieve serve --model PATH`, or pass \
             --model PATH to start one for the chat"
        );
    }
    let mut serve_args = Vec::new();
    if let Some(model) = &args.model {
        serve_args.extend(["--model".into(), model.into()]);
    }
    if let Some(ctx) = args.ctx {
        serve_args.extend(["--ctx".into(), ctx.to_string().into()]);
    }
    let server = local_server::ensure(LaunchOptions {
        api_key: args.api_key.clone(),
        serve_args,
        ..LaunchOptions::new(url)
    })?;
    if args.ctx.is_some() && !server.started_here() {
        eprintln!(
            "note: --ctx applies to a server started for the chat; the one at {} keeps its own",
            server.base_url
        );
    }
    let api = Api::new(&server.base_url, server.api_key.clone())?;
    let model = match args.model {
        Some(model) => model,
        None => api.first_model()?,
    };
    let mut chat = Chat {
        api,
        model,
        system: args.system,
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        verbose: args.verbose,
        interactive,
        messages: Vec::new(),
    };
    let result = if interactive {
        chat.interactive()
    } else {
        chat.piped()
    };
    drop(server);
    result
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Quit,
}

struct Chat {
    api: Api,
    model: String,
    system: Option<String>,
    max_tokens: u32,
    temperature: Option<f64>,
    verbose: bool,
    interactive: bool,
    /// Alternating user and assistant messages, `{"role", "content"}` with text content.
    messages: Vec<Value>,
}

impl Chat {
    fn interactive(&mut self) -> anyhow::Result<()> {
        use rustyline::error::ReadlineError;

        let config = rustyline::Config::builder()
            .auto_add_history(false)
            .max_history_size(2000)
            .context("history size")?
            .build();
        let mut editor =
            rustyline::DefaultEditor::with_config(config).context("cannot set up the terminal")?;
        let history = paths::data_dir().join("chat_history");
        if let Some(dir) = history.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = editor.load_history(&history);
        eprintln!(
            "Chatting with {} at {}. /help for commands, /bye or Ctrl-D to quit, \"\"\" for a \
             multi-line message.",
            self.model, self.api.base_url
        );
        let mut lines = Assembler::default();
        loop {
            let prompt = if lines.pending() { "... " } else { ">>> " };
            let input = match editor.readline(prompt) {
                // A multi-line entry recalled from the history is one input.
                Ok(line) if line.contains('\n') && !lines.pending() => Some(Input {
                    text: line,
                    block: true,
                }),
                Ok(line) => lines.feed(&line),
                Err(ReadlineError::Interrupted) => {
                    lines.reset();
                    continue;
                }
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(e).context("cannot read the terminal"),
            };
            let Some(input) = input else { continue };
            if !input.text.trim().is_empty() {
                let _ = editor.add_history_entry(input.text.as_str());
                let _ = editor.append_history(&history);
            }
            if self.handle(input)? == Flow::Quit {
                break;
            }
        }
        Ok(())
    }

    fn piped(&mut self) -> anyhow::Result<()> {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read stdin")?;
        let mut lines = Assembler::default();
        for line in text.lines() {
            if let Some(input) = lines.feed(line) {
                if self.handle(input)? == Flow::Quit {
                    return Ok(());
                }
            }
        }
        if let Some(input) = lines.finish() {
            self.handle(input)?;
        }
        Ok(())
    }

    fn handle(&mut self, input: Input) -> anyhow::Result<Flow> {
        if input.text.trim().is_empty() {
            return Ok(Flow::Continue);
        }
        if !input.block && input.text.trim_start().starts_with('/') {
            return self.command(input.text.trim());
        }
        self.messages
            .push(json!({"role": "user", "content": input.text}));
        self.answer()
    }

    fn command(&mut self, line: &str) -> anyhow::Result<Flow> {
        let (name, rest) = line
            .split_once(char::is_whitespace)
            .map_or((line, ""), |(n, r)| (n, r.trim()));
        match name {
            "/help" | "/?" => println!("{HELP}"),
            "/exit" | "/bye" | "/quit" => return Ok(Flow::Quit),
            "/clear" => {
                self.messages.clear();
                eprintln!("Cleared the conversation.");
            }
            "/system" if rest.is_empty() => match &self.system {
                Some(system) => println!("{system}"),
                None => eprintln!("No system prompt; /system TEXT sets one."),
            },
            "/system" => {
                self.system = Some(rest.to_string());
                eprintln!("Set the system prompt.");
            }
            "/model" if rest.is_empty() => println!("{}", self.model),
            "/model" => {
                self.model = rest.to_string();
                eprintln!("Asking for {}.", self.model);
            }
            "/retry" => {
                if self
                    .messages
                    .last()
                    .is_some_and(|m| m["role"] == "assistant")
                {
                    self.messages.pop();
                }
                if self.messages.last().is_some_and(|m| m["role"] == "user") {
                    return self.answer();
                }
                eprintln!("Nothing to retry.");
            }
            "/save" if rest.is_empty() => eprintln!("Usage: /save FILE"),
            "/save" => {
                let path = paths::expand_home(std::path::Path::new(rest));
                match self.save(&path) {
                    Ok(()) => eprintln!("Saved the conversation to {}.", path.display()),
                    Err(e) => eprintln!("error: {e:#}"),
                }
            }
            _ => eprintln!("Unknown command {name}; /help lists the commands."),
        }
        Ok(Flow::Continue)
    }

    fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let mut conversation = json!({"model": self.model, "messages": self.messages});
        if let Some(system) = &self.system {
            conversation["system"] = json!(system);
        }
        let text = serde_json::to_string_pretty(&conversation)? + "\n";
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Stream an answer to the conversation (which ends with a user message) and keep it as
    /// the assistant's turn; an answer that fails before any text drops that user message.
    fn answer(&mut self) -> anyhow::Result<Flow> {
        let mut body = json!({
            "model": self.model,
            "max_tokens": self.max_tokens,
            "stream": true,
            "messages": self.messages,
        });
        if let Some(system) = &self.system {
            body["system"] = json!(system);
        }
        if let Some(t) = self.temperature {
            body["temperature"] = json!(t);
        }
        let _ = local_server::take_sigint();
        let _keep_output = self
            .interactive
            .then(tty::KeepOutputOnInterrupt::new)
            .flatten();
        let started = Instant::now();
        let events = self.api.stream(body);
        let mut stdout = std::io::stdout().lock();
        let mut text = String::new();
        let mut first_text: Option<Instant> = None;
        let mut output_tokens = None;
        let mut stop_reason = None;
        let mut error = None;
        let mut interrupted = false;
        loop {
            let event = events.recv_timeout(Duration::from_millis(50));
            // Checked after the wait, so that nothing is printed after the Ctrl-C.
            if local_server::take_sigint() {
                interrupted = true;
                break;
            }
            match event {
                Ok(StreamEvent::Text(delta)) if !delta.is_empty() => {
                    first_text.get_or_insert_with(Instant::now);
                    text.push_str(&delta);
                    stdout.write_all(delta.as_bytes())?;
                    stdout.flush()?;
                }
                Ok(StreamEvent::Text(_)) => {}
                Ok(StreamEvent::Delta {
                    output_tokens: tokens,
                    stop_reason: reason,
                }) => {
                    output_tokens = tokens.or(output_tokens);
                    stop_reason = reason.or(stop_reason);
                }
                Ok(StreamEvent::Error(message)) => {
                    error = Some(message);
                    break;
                }
                Ok(StreamEvent::Done) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        // Dropping the receiver closes the response (and so stops the generation).
        drop(events);
        let finished = Instant::now();
        // After an interrupt the cursor is after the terminal's "^C".
        if (interrupted && self.interactive) || (!text.is_empty() && !text.ends_with('\n')) {
            stdout.write_all(b"\n")?;
        }
        stdout.flush()?;
        drop(stdout);
        if let Some(message) = &error {
            eprintln!("error: {message}");
        }
        if text.is_empty() {
            // Nothing to keep: the conversation goes on as if this message was not sent.
            self.messages.pop();
        } else {
            self.messages
                .push(json!({"role": "assistant", "content": text}));
        }
        if self.verbose && error.is_none() {
            let mut parts = Vec::new();
            if interrupted {
                parts.push(format!(
                    "stopped after {:.1} s",
                    finished.duration_since(started).as_secs_f64()
                ));
            } else {
                let tokens = output_tokens.unwrap_or(0);
                parts.push(format!("{tokens} tokens"));
                if let Some(first) = first_text {
                    let secs = finished.duration_since(first).as_secs_f64();
                    if tokens > 1 && secs > 0.0 {
                        // The first token's time is the prompt's: the rate is the rest's.
                        parts.push(format!("{:.1} tokens/s", (tokens - 1) as f64 / secs));
                    }
                }
            }
            if let Some(first) = first_text {
                parts.push(format!(
                    "first token after {:.2} s",
                    first.duration_since(started).as_secs_f64()
                ));
            }
            if !interrupted && stop_reason.as_deref() == Some("max_tokens") {
                parts.push("cut at --max-tokens".to_string());
            }
            dim(&parts.join(", "));
        }
        if interrupted && !self.interactive {
            return Ok(Flow::Quit);
        }
        Ok(Flow::Continue)
    }
}

/// A line on stderr, dim on a terminal.
fn dim(line: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("\x1b[2m{line}\x1b[0m");
    } else {
        eprintln!("{line}");
    }
}
