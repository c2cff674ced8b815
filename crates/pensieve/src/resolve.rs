//! From the name a user gives (`--model`, the config's default, `pensieve show X`) to
//! files on disk: a config entry, a path, or a Hub repo in the HF cache, pulled when it
//! is missing and the command may download. Also the terminal side of a pull: progress
//! bars, Ctrl-C, and errors that say what to do.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context};
use bytesize::ByteSize;
use indicatif::{ProgressBar, ProgressStyle};
use pensieve_hub::{CachedModel, HfCache, Hub, ModelFormat, ModelRef, Plan, PullError};

use crate::config::{Config, ModelSettings};

/// A model ready to load.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The name it is served and listed under; None: the loader's (the file's stem).
    pub id: Option<String>,
    /// A GGUF file (the first part of a split one) or a model folder.
    pub path: PathBuf,
    /// Known for models from the HF cache.
    pub format: Option<ModelFormat>,
    pub settings: ModelSettings,
    /// The vision projector pulled with it.
    pub mmproj: Option<PathBuf>,
}

impl Resolved {
    pub fn created(&self) -> SystemTime {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// Whether resolving may download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    Never,
    IfMissing,
}

/// Find `name`: a `[models.NAME]` entry of the config, a path, or `org/name[:tag]` in
/// the HF cache (pulled first when `fetch` allows).
pub fn resolve(name: &str, config: &Config, fetch: Fetch) -> anyhow::Result<Resolved> {
    let (target, settings) = config.model(name);
    // A config entry of its own name is listed under that name.
    let own_name = (target != name).then(|| name.to_owned());
    match ModelRef::parse(&target) {
        ModelRef::Path(path) => {
            if !path.exists() {
                bail!(
                    "model {name:?} not found: no such file or folder, no [models] entry of \
                     that name in {}, and not a Hugging Face repo id (org/name[:quant]). \
                     `pensieve list` shows the models on this machine",
                    crate::config::path().display()
                );
            }
            Ok(Resolved {
                id: own_name,
                path,
                format: None,
                settings,
                mmproj: None,
            })
        }
        ModelRef::Repo { repo, tag } => {
            let cache = HfCache::from_env();
            let found = cache.find(&repo, tag.as_deref(), "main")?;
            let model = match (found, fetch) {
                (Some(model), _) => model,
                (None, Fetch::IfMissing) => {
                    eprintln!(
                        "{target} is not in the Hugging Face cache ({}): pulling it",
                        cache.root().display()
                    );
                    pull(&repo, tag.as_deref(), "main", Caller::Serve)?
                }
                (None, Fetch::Never) => bail!(
                    "model {target} not found in the Hugging Face cache ({}): `pensieve pull \
                     {target}` downloads it, `pensieve list` shows what is there",
                    cache.root().display()
                ),
            };
            Ok(Resolved {
                id: Some(own_name.unwrap_or(model.name)),
                path: model.path,
                format: Some(model.format),
                settings,
                mmproj: model.mmproj,
            })
        }
    }
}

/// Who is pulling, for the advice an unreachable Hub gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Pull,
    Serve,
}

/// Pull `repo[:tag]` with progress on the terminal; Ctrl-C stops it (the partial
/// download stays, and the same command resumes it).
pub fn pull(
    repo: &str,
    tag: Option<&str>,
    revision: &str,
    caller: Caller,
) -> anyhow::Result<CachedModel> {
    with_hub(caller, |hub| async move {
        let plan = hub.plan(repo, tag, revision).await?;
        announce(&plan);
        hub.pull(&plan, Arc::new(TerminalProgress::default())).await
    })
}

fn with_hub<T, F, Fut>(caller: Caller, f: F) -> anyhow::Result<T>
where
    F: FnOnce(Arc<Hub>) -> Fut,
    Fut: std::future::Future<Output = Result<T, PullError>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let hub = Arc::new(Hub::from_env(HfCache::from_env())?);
    let endpoint = hub.endpoint().to_owned();
    let result = runtime.block_on(async {
        tokio::select! {
            result = f(hub) => Some(result),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    // Chunk downloads run as tasks of their own: don't wait for them.
    runtime.shutdown_background();
    match result {
        None => {
            eprintln!("\ninterrupted: run the same command again to resume the download");
            std::process::exit(130);
        }
        Some(Ok(value)) => Ok(value),
        Some(Err(e @ PullError::Unreachable { .. })) => Err(anyhow::anyhow!(
            "{e}\n{}",
            offline_advice(caller, &endpoint)
        )),
        Some(Err(e)) => Err(e.into()),
    }
}

fn offline_advice(caller: Caller, endpoint: &str) -> String {
    let mirror = if endpoint == pensieve_hub::pull::DEFAULT_ENDPOINT {
        "set HF_ENDPOINT to reach a mirror"
    } else {
        "check HF_ENDPOINT"
    };
    match caller {
        Caller::Pull => format!("Check the network connection, or {mirror}."),
        Caller::Serve => format!(
            "Offline options: `pensieve serve --model PATH` with a GGUF file or MLX folder \
             on disk, or a model already downloaded (`pensieve list` shows them); or \
             {mirror}."
        ),
    }
}

fn announce(plan: &Plan) {
    let files = plan.files.len();
    eprintln!(
        "{} ({}, {files} file{}) from {}",
        plan.name,
        ByteSize::b(plan.size()).display().iec(),
        if files == 1 { "" } else { "s" },
        plan.repo
    );
}

/// One bar per file on a terminal; a line per file otherwise (logs, CI).
#[derive(Default)]
struct TerminalProgress {
    current: Mutex<Option<(ProgressBar, Instant, u64)>>,
}

impl pensieve_hub::PullProgress for TerminalProgress {
    fn start(&self, file: &str, size: u64) {
        let bar = ProgressBar::new(size);
        let style = ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .map(|s| s.progress_chars("=> "));
        if let Ok(style) = style {
            bar.set_style(style);
        }
        bar.set_message(file.to_owned());
        if bar.is_hidden() {
            eprintln!("downloading {file} ({})", ByteSize::b(size).display().iec());
        }
        if let Ok(mut current) = self.current.lock() {
            *current = Some((bar, Instant::now(), size));
        }
    }

    fn advance(&self, bytes: u64) {
        if let Ok(current) = self.current.lock() {
            if let Some((bar, _, _)) = current.as_ref() {
                bar.inc(bytes);
            }
        }
    }

    fn finish(&self, file: &str) {
        let Ok(mut current) = self.current.lock() else {
            return;
        };
        if let Some((bar, started, size)) = current.take() {
            bar.finish_and_clear();
            let secs = started.elapsed().as_secs_f64().max(0.001);
            eprintln!(
                "downloaded {file} ({}, {:.1} s, {}/s)",
                ByteSize::b(size).display().iec(),
                secs,
                ByteSize::b((size as f64 / secs) as u64).display().iec()
            );
        }
    }

    fn note(&self, message: &str) {
        match self
            .current
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|(b, ..)| b.clone()))
        {
            Some(bar) if !bar.is_hidden() => bar.println(message),
            _ => eprintln!("{message}"),
        }
    }
}
