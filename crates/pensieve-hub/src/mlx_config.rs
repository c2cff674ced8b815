//! MLX / Hugging Face model folders: what `config.json` and the tokenizer files say about the model
//! (type, context, quantisation, chat template), and whether a folder is one the mlx engine can run.
//!
//! Configs are read as loose JSON rather than into fixed structs: every model family lays them out
//! a little differently, and a field of an unexpected type should read as absent, not fail the
//! whole folder.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;

/// What an MLX / Hugging Face model folder says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MlxInfo {
    /// `model_type`, e.g. "llama", "qwen2".
    pub model_type: Option<String>,
    /// `architectures`, e.g. ["LlamaForCausalLM"].
    pub architectures: Vec<String>,
    /// `max_position_embeddings`, else `text_config.max_position_embeddings` (multimodal configs).
    pub context_length: Option<u64>,
    /// `quantization.bits` (mlx-lm), else `quantization_config.bits` (transformers).
    pub quant_bits: Option<u32>,
    /// `group_size` from the same places.
    pub quant_group_size: Option<u32>,
    /// `chat_template` from tokenizer_config.json (a string, or the "default" entry of a list of
    /// `{name, template}`), else chat_template.jinja, else chat_template.json.
    pub chat_template: Option<String>,
}

#[derive(Debug, Error)]
pub enum MlxConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} has no config.json: not a Hugging Face / MLX model folder", folder.display())]
    NoConfig { folder: PathBuf },
    #[error("{} is not valid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Reads `folder`'s config.json (required) and its chat template (optional).
pub fn read_info(folder: &Path) -> Result<MlxInfo, MlxConfigError> {
    let config =
        read_json(&folder.join("config.json"))?.ok_or_else(|| MlxConfigError::NoConfig {
            folder: folder.to_path_buf(),
        })?;
    let quant = |field: &str| {
        ["quantization", "quantization_config"]
            .iter()
            .find_map(|section| config.get(section)?.get(field)?.as_u64())
            .and_then(|v| u32::try_from(v).ok())
    };
    Ok(MlxInfo {
        model_type: config
            .get("model_type")
            .and_then(Value::as_str)
            .map(str::to_owned),
        architectures: config
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        context_length: config
            .get("max_position_embeddings")
            .or_else(|| config.get("text_config")?.get("max_position_embeddings"))
            .and_then(Value::as_u64),
        quant_bits: quant("bits"),
        quant_group_size: quant("group_size"),
        chat_template: chat_template(folder)?,
    })
}

/// Whether `folder` looks like a model the mlx engine can run: a config.json and at least one
/// `*.safetensors` file.
pub fn is_model_folder(folder: &Path) -> bool {
    if !folder.join("config.json").is_file() {
        return false;
    }
    let Ok(entries) = fs::read_dir(folder) else {
        return false;
    };
    entries.flatten().any(|e| {
        let path = e.path();
        path.extension().is_some_and(|x| x == "safetensors") && path.is_file()
    })
}

/// The chat template, wherever this folder keeps it; `None` if nowhere.
fn chat_template(folder: &Path) -> Result<Option<String>, MlxConfigError> {
    if let Some(config) = read_json(&folder.join("tokenizer_config.json"))? {
        match config.get("chat_template") {
            Some(Value::String(t)) => return Ok(Some(t.clone())),
            // Several named templates (tool use, RAG...); the "default" one is for chat.
            Some(Value::Array(list)) => {
                let default = list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"));
                if let Some(t) = default
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                {
                    return Ok(Some(t.to_owned()));
                }
            }
            _ => {}
        }
    }
    // Newer transformers save the template beside the tokenizer config rather than in it.
    let jinja = folder.join("chat_template.jinja");
    match fs::read_to_string(&jinja) {
        Ok(t) => return Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(MlxConfigError::Io {
                path: jinja,
                source,
            })
        }
    }
    let from_json = read_json(&folder.join("chat_template.json"))?;
    Ok(from_json.and_then(|v| v.get("chat_template")?.as_str().map(str::to_owned)))
}

/// Parses the JSON file at `path`; `None` if there is no such file.
fn read_json(path: &Path) -> Result<Option<Value>, MlxConfigError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(MlxConfigError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| MlxConfigError::Json {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh, empty folder under the system temp dir; the caller removes it.
    fn temp_folder(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pensieve-hub-mlx-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    fn write(dir: &Path, file: &str, text: &str) {
        fs::write(dir.join(file), text).expect("write");
    }

    #[test]
    fn reads_synthetic_folder() {
        let dir = temp_folder("synthetic");
        write(
            &dir,
            "config.json",
            r#"{"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
                "max_position_embeddings": 32768,
                "quantization": {"group_size": 64, "bits": 4, "model.embed_tokens": {"bits": 8}}}"#,
        );
        write(
            &dir,
            "tokenizer_config.json",
            r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
        );
        assert!(!is_model_folder(&dir), "no weights yet");
        write(&dir, "model.safetensors", "");
        assert!(is_model_folder(&dir));
        let info = read_info(&dir);
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(
            info.expect("read"),
            MlxInfo {
                model_type: Some("qwen2".into()),
                architectures: vec!["Qwen2ForCausalLM".into()],
                context_length: Some(32768),
                quant_bits: Some(4),
                quant_group_size: Some(64),
                chat_template: Some("D".into()),
            }
        );
    }

    #[test]
    fn falls_back_to_text_config_and_jinja() {
        let dir = temp_folder("fallbacks");
        write(
            &dir,
            "config.json",
            r#"{"model_type": "gemma3", "architectures": null,
                "text_config": {"max_position_embeddings": 131072},
                "quantization_config": {"bits": 8, "group_size": 32}}"#,
        );
        write(&dir, "tokenizer_config.json", r#"{"bos_token": "<bos>"}"#);
        write(&dir, "chat_template.jinja", "{{ bos_token }}");
        let info = read_info(&dir);
        let _ = fs::remove_dir_all(&dir);
        let info = info.expect("read");
        assert!(info.architectures.is_empty());
        assert_eq!(info.context_length, Some(131072));
        assert_eq!(
            (info.quant_bits, info.quant_group_size),
            (Some(8), Some(32))
        );
        assert_eq!(info.chat_template.as_deref(), Some("{{ bos_token }}"));
    }

    #[test]
    fn missing_or_bad_config_is_an_error() {
        let dir = temp_folder("bad");
        let missing = read_info(&dir);
        write(&dir, "config.json", "{ not json");
        let bad = read_info(&dir);
        let _ = fs::remove_dir_all(&dir);
        assert!(matches!(missing, Err(MlxConfigError::NoConfig { .. })));
        assert!(matches!(bad, Err(MlxConfigError::Json { .. })));
        assert!(!is_model_folder(Path::new("/nonexistent/model")));
    }

    #[test]
    fn real_mlx_smollm2() {
        let dir = std::env::var_os("PENSIEVE_TEST_MODELS")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|h| PathBuf::from(h).join(".cache/pensieve/test-models"))
            })
            .map(|d| d.join("mlx/SmolLM2-135M-Instruct.Q4_1"));
        let Some(dir) = dir.filter(|d| d.is_dir()) else {
            eprintln!("skipping: no MLX SmolLM2 folder under the test models");
            return;
        };
        assert!(is_model_folder(&dir));
        let info = read_info(&dir).expect("read");
        assert_eq!(info.model_type.as_deref(), Some("llama"));
        assert_eq!(info.architectures, ["LlamaForCausalLM"]);
        assert_eq!(info.context_length, Some(8192));
        assert_eq!(
            (info.quant_bits, info.quant_group_size),
            (Some(4), Some(32))
        );
        assert!(info
            .chat_template
            .is_some_and(|t| t.contains("<|im_start|>")));
    }
}
