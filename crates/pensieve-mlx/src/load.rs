//! Loading an MLX model folder: what the engine needs from its JSON files, its tokenizer,
//! and a worker that has loaded its weights.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pensieve_engine::settings::{
    self, Asked, DeviceFacts, KvAllocation, ModelFacts, SettingsError,
};
use pensieve_engine::{LoadedModel, ModelInfo, RunsOn};
use serde_json::Value;

use crate::runner::{MlxRunner, RunnerLayout};
use crate::tokenizer::{HfTokenizer, SpecialTokens, TokenizerError};
use crate::vision::MlxVision;
use crate::worker::{Worker, WorkerError, WorkerSpec};

#[derive(Debug, Clone)]
pub struct MlxOptions {
    /// The model folder (config.json, tokenizer.json, *.safetensors).
    pub path: PathBuf,
    /// The venv's Python, with `mlx` and `mlx-lm` installed.
    pub python: PathBuf,
    /// Where the worker's source is written.
    pub script: PathBuf,
    pub id: Option<String>,
    /// What flags, variables and the config file ask for; everything else is the
    /// settings' default for a backend whose KV cache grows as it is used.
    pub asked: Asked,
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
    #[error(transparent)]
    Settings(#[from] SettingsError),
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
    let facts = ModelFacts {
        // 0 where config.json does not say: the settings' default context then applies. A
        // vision model says it of its language model (`text_config`).
        train_context: config["max_position_embeddings"]
            .as_u64()
            .or_else(|| config["text_config"]["max_position_embeddings"].as_u64())
            .map_or(0, |n| n.min(u64::from(u32::MAX)) as u32),
        layers: 0,
        kv_bytes_per_token: 0,
        // Nothing is sized from memory for the mlx engine.
        vocab: 0,
        weights_bytes: 0,
        heads: 0,
    };
    let device = DeviceFacts {
        gpu: None,
        host_available_bytes: None,
        physical_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kv: KvAllocation::Growing,
    };
    options.asked.refuse_kv_types("mlx")?;
    let settings = settings::resolve(&options.asked, &facts, &device)?;
    settings::warn_about(&settings, &facts);
    let spec = WorkerSpec {
        python: options.python.clone(),
        script: options.script.clone(),
        model: folder.display().to_string(),
        sequences: settings.parallel,
        context: settings.ctx,
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
    let mut fingerprint = format!(
        "mlx/{model_type}/weights={weights}/config={config_len}/kv={kv}/mlx={mlx}",
        model_type = hello.model_type,
        config_len = config.to_string().len(),
        kv = hello.kv_bytes_per_token,
        mlx = hello.mlx,
    );
    if let Some(v) = &hello.vision {
        // Cached images are mlx-vlm's computation (preprocessing, tower, projector): another
        // version may compute them differently.
        fingerprint.push_str(&format!("/mlx-vlm={}", v.mlx_vlm));
    }
    let layout = RunnerLayout {
        batch_size: settings.batch as usize,
        sequences: settings.parallel,
        cells: settings.ctx as usize * settings.parallel,
        fingerprint,
    };
    let id = options.id.clone().unwrap_or_else(|| {
        folder
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".to_owned())
    });
    let vision = hello.vision.clone().map(|layout| {
        let tokenizer: Arc<dyn pensieve_engine::Tokenizer> = tokenizer.clone();
        Arc::new(MlxVision::new(tokenizer, layout, &hello.model_type))
            as Arc<dyn pensieve_engine::Vision>
    });
    let runs_on = RunsOn::Mlx {
        version: hello.mlx.clone(),
    };
    let info = ModelInfo {
        id,
        architecture: hello.model_type.clone(),
        train_context: facts.train_context,
        context_size: settings.ctx,
        chat_template: chat_template(folder, &tok_config),
        bos_token: tokenizer.bos_text(),
        eos_token: special.eos.clone().unwrap_or_default(),
    };
    tracing::info!(
        model = %folder.display(),
        architecture = %info.architecture,
        context_size = settings.ctx,
        parallel = settings.parallel,
        can_truncate = hello.can_truncate,
        has_template = info.chat_template.is_some(),
        vision = vision.as_ref().map(|v| v.describe()),
        "model loaded on {runs_on}"
    );
    Ok(LoadedModel {
        info,
        tokenizer,
        runner: Box::new(MlxRunner::new(worker, layout)),
        vision,
        parallel: settings.parallel,
        runs_on,
    })
}
