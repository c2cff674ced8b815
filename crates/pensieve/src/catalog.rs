//! `pensieve pull`, `list`, `show` and `rm`: the models on this machine, in the Hugging
//! Face cache every other tool shares, plus the paths named in the config file.

use std::path::{Path, PathBuf};

use anyhow::bail;
use bytesize::ByteSize;
use clap::Args;
use pensieve_hub::{gguf, mlx_config, HfCache, ModelFormat, ModelRef};
use serde::Serialize;

use crate::config::{self, Config};
use crate::resolve::{self, Fetch};
use crate::template_override::TemplateOverride;

#[derive(Debug, Args)]
pub struct PullArgs {
    /// `org/name` on the Hugging Face Hub, with `:QUANT` (e.g. `:Q4_K_M`) or `:FILE` to
    /// pick one GGUF; a repo without GGUF files (MLX) is pulled whole.
    #[arg(value_name = "REPO[:TAG]")]
    model: String,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    revision: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A name from `pensieve list`, a config name, or a path.
    model: String,
    #[arg(long)]
    json: bool,
    /// Show the model with this Jinja chat template in place of its own (as `serve
    /// --chat-template` would run it), and the tool-call format detected from it.
    #[arg(long, value_name = "FILE")]
    chat_template: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// A name from `pensieve list` (`org/name:QUANT`, or `org/name` for the whole repo).
    model: String,
}

pub fn pull(args: PullArgs) -> anyhow::Result<()> {
    let ModelRef::Repo { repo, tag } = ModelRef::parse(&args.model) else {
        bail!(
            "{} is not a Hugging Face repo id: pull takes org/name or org/name:QUANT",
            args.model
        );
    };
    let model = resolve::pull(&repo, tag.as_deref(), &args.revision, resolve::Caller::Pull)?;
    println!(
        "pulled {} ({})",
        model.name,
        ByteSize::b(model.size).display().iec()
    );
    Ok(())
}

/// One row of `list`, and `show`'s fields.
#[derive(Debug, Serialize)]
struct Entry {
    name: String,
    path: PathBuf,
    size_bytes: u64,
    format: &'static str,
    architecture: Option<String>,
    quantization: Option<String>,
    context_length: Option<u64>,
    #[serde(skip)]
    chat_template: Option<String>,
    /// Replicas' base URLs, for a model served upstream (`[models.NAME] upstream`).
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_model: Option<String>,
}

fn describe(name: String, path: &Path, size: u64, format: ModelFormat) -> Entry {
    let mut entry = Entry {
        name,
        path: path.to_owned(),
        size_bytes: size,
        format: format.as_str(),
        architecture: None,
        quantization: None,
        context_length: None,
        chat_template: None,
        upstream: None,
        upstream_model: None,
    };
    match format {
        ModelFormat::Gguf => match gguf::read_info(path) {
            Ok(info) => {
                entry.quantization = info
                    .file_type
                    .and_then(gguf::file_type_name)
                    .map(str::to_owned)
                    .or_else(|| file_quant(path));
                entry.architecture = info.architecture;
                entry.context_length = info.context_length;
                entry.chat_template = info.chat_template;
            }
            Err(e) => tracing::warn!("{e}"),
        },
        ModelFormat::Folder => match mlx_config::read_info(path) {
            Ok(info) => {
                entry.architecture = info.model_type.or(info.architectures.first().cloned());
                entry.quantization = info.quant_bits.map(|b| format!("{b}-bit"));
                entry.context_length = info.context_length;
                entry.chat_template = info.chat_template;
            }
            Err(e) => tracing::warn!("{e}"),
        },
    }
    entry
}

fn file_quant(path: &Path) -> Option<String> {
    gguf::quant_in_file_name(&path.file_name()?.to_string_lossy())
}

fn format_of(path: &Path) -> ModelFormat {
    if path.is_dir() {
        ModelFormat::Folder
    } else {
        ModelFormat::Gguf
    }
}

fn size_of(path: &Path) -> u64 {
    if path.is_dir() {
        pensieve_hub::cache::dir_size(path)
    } else {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }
}

fn entries(config: &Config) -> Vec<Entry> {
    let mut out: Vec<Entry> = HfCache::from_env()
        .models()
        .into_iter()
        .map(|m| describe(m.name, &m.path, m.size, m.format))
        .collect();
    for (name, settings) in &config.models {
        if let Some(replicas) = &settings.upstream {
            out.push(Entry {
                name: name.clone(),
                path: PathBuf::new(),
                size_bytes: 0,
                format: "upstream",
                architecture: None,
                quantization: None,
                context_length: None,
                chat_template: None,
                upstream: Some(replicas.clone()),
                upstream_model: settings.upstream_model.clone(),
            });
            continue;
        }
        let Some(target) = &settings.model else {
            continue;
        };
        if let ModelRef::Path(path) = ModelRef::parse(target) {
            if path.exists() {
                out.push(describe(
                    name.clone(),
                    &path,
                    size_of(&path),
                    format_of(&path),
                ));
            }
        }
    }
    out
}

pub fn list(args: ListArgs) -> anyhow::Result<()> {
    let entries = entries(&config::load()?);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let rows: Vec<[String; 6]> = entries
        .into_iter()
        .map(|e| {
            let (size, format) = match &e.upstream {
                // Nothing here: where it is served from instead.
                Some(replicas) => ("-".to_owned(), format!("upstream {}", replicas.join(","))),
                None => (
                    ByteSize::b(e.size_bytes).display().iec().to_string(),
                    e.format.to_owned(),
                ),
            };
            [
                e.name,
                size,
                format,
                dash(e.architecture),
                dash(e.quantization),
                dash(e.context_length.map(|c| c.to_string())),
            ]
        })
        .collect();
    let header = ["NAME", "SIZE", "FORMAT", "ARCH", "QUANT", "CONTEXT"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    if rows.is_empty() {
        eprintln!("no models yet: `pensieve pull org/name:QUANT` downloads one");
    }
    Ok(())
}

pub fn show(args: ShowArgs) -> anyhow::Result<()> {
    let config = config::load()?;
    let resolved = resolve::resolve(&args.model, &config, Fetch::Never)?;
    let format = resolved.format.unwrap_or_else(|| format_of(&resolved.path));
    let name = resolved.id.clone().unwrap_or_else(|| args.model.clone());
    let size = match format {
        ModelFormat::Gguf => split_size(&resolved.path),
        ModelFormat::Folder => size_of(&resolved.path),
    };
    let mut entry = describe(name, &resolved.path, size, format);
    // What `serve` would run: the flag's template, else the config entry's.
    let replaced = TemplateOverride::for_model(args.chat_template.as_deref(), &resolved.settings)?;
    let had_template = entry.chat_template.is_some();
    if let Some(template) = &replaced {
        entry.chat_template = Some(template.source.clone());
    }
    let tools = entry
        .chat_template
        .as_deref()
        .and_then(pensieve_engine::ToolFormat::detect)
        .map(pensieve_engine::ToolFormat::name);
    if args.json {
        let mut value = serde_json::to_value(&entry)?;
        value["chat_template"] = entry.chat_template.clone().into();
        value["chat_template_file"] = replaced
            .as_ref()
            .map(|t| t.path.display().to_string())
            .into();
        value["tool_calls"] = tools.unwrap_or("none").into();
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    println!("name            {}", entry.name);
    println!("path            {}", entry.path.display());
    println!(
        "size            {}",
        ByteSize::b(entry.size_bytes).display().iec()
    );
    println!("format          {}", entry.format);
    println!("architecture    {}", dash(&entry.architecture));
    println!("quantization    {}", dash(&entry.quantization));
    println!(
        "context_length  {}",
        dash(&entry.context_length.map(|c| c.to_string()))
    );
    println!("tool_calls      {}", tools.unwrap_or("none detected"));
    match (&entry.chat_template, &replaced) {
        (Some(t), Some(file)) => println!(
            "chat_template   from {} (replaces {})\n{}",
            file.path.display(),
            if had_template {
                "the model's own"
            } else {
                "the built-in fallback"
            },
            indent(t)
        ),
        (Some(t), None) => println!("chat_template\n{}", indent(t)),
        (None, _) => {
            println!("chat_template   none (a base model: prompts are sent as plain text)")
        }
    }
    Ok(())
}

/// All parts of a split GGUF, whose first part `path` is.
fn split_size(path: &Path) -> u64 {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let Some((_, count)) = name.as_deref().and_then(gguf::split_part) else {
        return size_of(path);
    };
    let Some(name) = name else { return 0 };
    let first = format!("-00001-of-{count:05}");
    (1..=count)
        .map(|i| {
            let part = name.replace(&first, &format!("-{i:05}-of-{count:05}"));
            size_of(&path.with_file_name(part))
        })
        .sum()
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn rm(args: RmArgs) -> anyhow::Result<()> {
    let cache = HfCache::from_env();
    let models = cache.models();
    let wanted = args.model.as_str();
    let found = models
        .iter()
        .find(|m| m.name == wanted)
        .or_else(|| models.iter().find(|m| m.name.eq_ignore_ascii_case(wanted)));
    let removed: Vec<_> = match found {
        Some(m) => vec![m.clone()],
        // `org/name` alone: every model of that repo.
        None => models
            .iter()
            .filter(|m| m.repo.eq_ignore_ascii_case(wanted))
            .cloned()
            .collect(),
    };
    if removed.is_empty() {
        bail!(
            "model {wanted} not found in the Hugging Face cache ({}); `pensieve list` shows \
             what is there",
            cache.root().display()
        );
    }
    for model in removed {
        let freed = cache.remove(&model)?;
        let size = ByteSize::b(model.size).display().iec();
        if freed < model.size {
            // Blobs other files of the repo still link to stay.
            let kept = ByteSize::b(model.size - freed).display().iec();
            println!(
                "deleted {} ({size}; {kept} still used by other files)",
                model.name
            );
        } else {
            println!("deleted {} ({size})", model.name);
        }
    }
    Ok(())
}
