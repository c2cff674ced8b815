//! Loading an MLX model folder: what the engine needs from its JSON files, its tokenizer,
//! and a worker that has loaded its weights.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pensieve_engine::ModelInfo;
use serde_json::Value;

use crate::runner::{MlxRunner, RunnerLayout};
use crate::tokenizer::{HfTokenizer, SpecialTokens, TokenizerError};
use crate::worker::{Worker, WorkerError, WorkerSpec};

/// Context length used when none is asked for (as the llama engine).
pub const DEFAULT_MAX_CONTEXT: u32 = 32_768;

/// Sequences generating at once when `--parallel` is not given (MLX allocates KV as it
/// grows, so this bounds work, not memory).
pub const DEFAULT_PARALLEL: usize = 4;

#[derive(Debug, Clone)]
pub struct MlxOptions {
    /// The model folder (config.json, tokenizer.json, *.safetensors).
    pub path: PathBuf,
    /// The venv's Python, with `mlx` and `mlx-lm` installed.
    pub python: PathBuf,
    /// Where the worker's source is written.
    pub script: PathBuf,
    pub id: Option<String>,
    pub context_size: Option<u32>,
    pub parallel: Option<usize>,
    /// Tokens per decode call during prefill.
    pub batch_size: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum MlxError {
    #[error("{0} is not an MLX model folder (no config.json in it)")]
    NotAModel(PathBuf),
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error("invalid option: {0}")]
    Options(String),
}

/// A loaded model: its description, its tokenizer and a runner over its worker.
pub struct LoadedModel {
    pub info: ModelInfo,
    pub tokenizer: Arc<HfTokenizer>,
    pub runner: MlxRunner,
    pub parallel: usize,
}

fn read_json(path: &Path) -> Result<Option<Value>, MlxError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(MlxError::Read {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| MlxError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// A token named in tokenizer_config.json: a string, or `{"content": ...}`.
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => m.get("content").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// `eos_token_id`: one id or a list.
fn ids(v: &Value) -> Vec<u32> {
    match v {
        Value::Number(n) => n.as_u64().map(|n| n as u32).into_iter().collect(),
        Value::Array(items) => items.iter().flat_map(ids).collect(),
        _ => Vec::new(),
    }
}

/// The chat template: `chat_template.jinja`, else tokenizer_config's (a string, or a list
/// of named templates of which "default" is used).
fn chat_template(folder: &Path, config: &Value) -> Option<String> {
    if let Ok(t) = std::fs::read_to_string(folder.join("chat_template.jinja")) {
        return Some(t);
    }
    match &config["chat_template"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(str::to_owned),
        _ => None,
    }
    .filter(|t| !t.trim().is_empty())
}

/// Start the worker on the folder and build everything around it.
pub fn load(options: &MlxOptions) -> Result<LoadedModel, MlxError> {
    let folder = &options.path;
    let Some(config) = read_json(&folder.join("config.json"))? else {
        return Err(MlxError::NotAModel(folder.clone()));
    };
    let tok_config = read_json(&folder.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
    let generation = read_json(&folder.join("generation_config.json"))?.unwrap_or(Value::Null);
    let train_context = config["max_position_embeddings"]
        .as_u64()
        .map_or(DEFAULT_MAX_CONTEXT, |n| n.min(u64::from(u32::MAX)) as u32);
    let context_size = match options.context_size {
        Some(0) => return Err(MlxError::Options("--ctx must be at least 1".into())),
        Some(n) => n,
        None => train_context.min(DEFAULT_MAX_CONTEXT),
    };
    let parallel = match options.parallel {
        Some(0) => return Err(MlxError::Options("--parallel must be at least 1".into())),
        Some(n) => n,
        None => DEFAULT_PARALLEL,
    };
    let spec = WorkerSpec {
        python: options.python.clone(),
        script: options.script.clone(),
        model: folder.display().to_string(),
        sequences: parallel,
        context: context_size,
    };
    let worker = Worker::start(&spec)?;
    let hello = worker.hello.clone();

    let mut eos_ids = ids(&generation["eos_token_id"]);
    eos_ids.extend(ids(&config["eos_token_id"]));
    let special = SpecialTokens {
        bos: token_text(&tok_config["bos_token"]),
        eos: token_text(&tok_config["eos_token"]),
        add_bos: tok_config["add_bos_token"].as_bool().unwrap_or(false),
        eos_ids,
    };
    let tokenizer = Arc::new(HfTokenizer::from_file(
        &folder.join("tokenizer.json"),
        &special,
        hello.vocab_size,
    )?);
    let weights: u64 = std::fs::read_dir(folder)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    let fingerprint = format!(
        "mlx/{model_type}/weights={weights}/config={config_len}/kv={kv}/mlx={mlx}",
        model_type = hello.model_type,
        config_len = config.to_string().len(),
        kv = hello.kv_bytes_per_token,
        mlx = hello.mlx,
    );
    let layout = RunnerLayout {
        batch_size: options.batch_size.clamp(1, context_size) as usize,
        sequences: parallel,
        cells: context_size as usize * parallel,
        fingerprint,
    };
    let id = options.id.clone().unwrap_or_else(|| {
        folder
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".to_owned())
    });
    let info = ModelInfo {
        id,
        architecture: hello.model_type.clone(),
        train_context,
        context_size,
        chat_template: chat_template(folder, &tok_config),
        bos_token: tokenizer.bos_text(),
        eos_token: special.eos.clone().unwrap_or_default(),
    };
    tracing::info!(
        model = %folder.display(),
        architecture = %info.architecture,
        context_size,
        parallel,
        can_truncate = hello.can_truncate,
        has_template = info.chat_template.is_some(),
        "model loaded (mlx)"
    );
    Ok(LoadedModel {
        info,
        tokenizer,
        runner: MlxRunner::new(worker, layout),
        parallel,
    })
}
