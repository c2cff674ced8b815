//! The config file: default model, per-model settings, server settings and aliases.
//!
//! Precedence, lowest first: built-in defaults, this file, `PENSIEVE_*` environment
//! variables, command-line flags. clap merges the last two (a flag wins over its
//! variable); callers then fall back to the file with `Option::or`.
//!
//! ```toml
//! default_model = "Qwen/Qwen2.5-Coder-7B-Instruct-GGUF:Q4_K_M"
//! small_model = "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF:Q4_K_M"   # claude-*haiku*
//!
//! [server]
//! port = 7777
//! cache_dir = "~/.cache/pensieve/kv"
//! temperature = 0.7               # for requests that name none (Claude Code's)
//!
//! [models."Qwen/Qwen2.5-Coder-7B-Instruct-GGUF:Q4_K_M"]
//! ctx = 32768
//! chat_template = "~/templates/qwen-tools.jinja"   # replaces the model's own
//! mmproj = "~/models/mmproj-F16.gguf"              # its vision projector
//!
//! [models.tiny]                   # a name of your own for a file
//! model = "/models/tiny.gguf"
//!
//! [aliases]
//! "gpt-4o*" = "tiny"
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use bytesize::ByteSize;
use pensieve_engine::settings::{FlashAttn, GpuLayers, KvType};
use pensieve_engine::speculate::Speculative;
use pensieve_server::ImagePolicy;
use serde::Deserialize;

use crate::paths;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What `serve` loads when no model is named.
    pub default_model: Option<String>,
    /// What `claude-*haiku*` requests get (Claude Code's quick side requests).
    pub small_model: Option<String>,
    #[serde(default)]
    pub server: ServerSettings,
    /// Settings per model, keyed by the name used to ask for it (a repo reference, a
    /// path, or a name of your own with `model = ...`).
    #[serde(default)]
    pub models: BTreeMap<String, ModelSettings>,
    /// Requested-name patterns (`*` wildcards) -> model names.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: Option<IpAddr>,
    pub port: Option<u16>,
    pub api_key: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub cache_ram: Option<ByteSize>,
    pub cache_disk: Option<ByteSize>,
    pub queue: Option<usize>,
    pub max_body_mib: Option<usize>,
    /// What a model without vision makes of an image (`--images`).
    pub images: Option<ImagePolicy>,
    /// Fetch images given by URL for a model that sees images (`--allow-image-urls`).
    pub allow_image_urls: Option<bool>,
    /// Host names answered on a loopback bind besides this machine's (`--allowed-host`).
    pub allowed_hosts: Option<Vec<String>>,
    /// Browser origins allowed to call the API (`--cors-origin`).
    pub cors_origins: Option<Vec<String>>,
    /// Sampling of requests that leave it out (`--temp`, `--top-p`, `--top-k`, `--min-p`,
    /// `--seed`).
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    /// Speculative decoding (`--speculative`).
    pub speculative: Option<Speculative>,
    /// The draft model of the main model (`--draft-model`).
    pub draft_model: Option<String>,
}

impl ServerSettings {
    /// The address `serve` listens on unless told otherwise.
    pub fn host(&self) -> IpAddr {
        self.host.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    pub fn port(&self) -> u16 {
        self.port.unwrap_or(DEFAULT_PORT)
    }

    /// Where clients on this machine (`chat`, `claude`) find that server.
    pub fn local_url(&self) -> String {
        let host = match self.host() {
            h if h.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            h => h,
        };
        format!("http://{}", SocketAddr::new(host, self.port()))
    }
}

pub const DEFAULT_PORT: u16 = 7777;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// What to load: a path or `org/name[:tag]` [default: the table's own name].
    pub model: Option<String>,
    pub engine: Option<EngineKind>,
    pub ctx: Option<u32>,
    pub threads: Option<usize>,
    pub parallel: Option<usize>,
    pub batch: Option<u32>,
    /// A number, or "all".
    pub gpu_layers: Option<GpuLayers>,
    pub backend_sampling: Option<bool>,
    /// The K and V caches' element types ("f16", "q8_0", "q4_0", ...).
    pub cache_type_k: Option<KvType>,
    pub cache_type_v: Option<KvType>,
    /// "on", "off" or "auto" (or a boolean).
    pub flash_attn: Option<FlashAttn>,
    pub tool_parser: Option<String>,
    /// A Jinja file that replaces the model's own chat template.
    pub chat_template: Option<PathBuf>,
    /// The vision projector (an mmproj GGUF): images are shown to the model.
    pub mmproj: Option<PathBuf>,
    /// Served by these OpenAI-compatible replicas (base URLs) instead of loaded here.
    pub upstream: Option<Vec<String>>,
    /// The upstream's name for the model [default: the first one its /v1/models lists].
    pub upstream_model: Option<String>,
    /// Sent to the upstream as a bearer token.
    pub upstream_key: Option<String>,
    /// "anthropic": the replicas speak `/v1/messages` and take Anthropic requests untranslated.
    #[serde(alias = "api")]
    pub upstream_api: Option<UpstreamApi>,
    /// How requests are spread over the replicas [default: cache-aware].
    pub upstream_routing: Option<UpstreamRouting>,
}

/// The API Anthropic requests go to an upstream in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamApi {
    /// Translated into Chat Completions.
    #[default]
    Openai,
    /// Passed on to the replicas' own /v1/messages.
    Anthropic,
}

/// How requests are spread over an upstream's replicas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamRouting {
    /// A conversation's turns go back to the replica that holds its prefix in cache.
    #[default]
    CacheAware,
    /// Each request to the next replica in turn.
    RoundRobin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// llama.cpp in-process (GGUF files).
    Llama,
    /// MLX through a supervised mlx-lm worker (MLX model folders).
    Mlx,
}

impl Config {
    /// The settings of model `name` and what it points to (`model = ...`, else `name`).
    pub fn model(&self, name: &str) -> (String, ModelSettings) {
        match self.models.get(name) {
            Some(settings) => (
                settings.model.clone().unwrap_or_else(|| name.to_owned()),
                settings.clone(),
            ),
            None => (name.to_owned(), ModelSettings::default()),
        }
    }

    /// Every alias: the file's, then the built-in `claude-*haiku*` -> small model.
    pub fn aliases(&self, small_model: Option<&str>) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .aliases
            .iter()
            .map(|(p, m)| (p.clone(), m.clone()))
            .collect();
        if let Some(small) = small_model {
            if !out
                .iter()
                .any(|(p, _)| p.eq_ignore_ascii_case("claude-*haiku*"))
            {
                out.push(("claude-*haiku*".to_owned(), small.to_owned()));
            }
        }
        out
    }
}

/// `$PENSIEVE_CONFIG`, else `config.toml` in the platform's config directory:
/// `$XDG_CONFIG_HOME/pensieve` or `~/.config/pensieve` on Linux,
/// `~/Library/Application Support/pensieve` on macOS, `%APPDATA%\pensieve` on Windows.
pub fn path() -> PathBuf {
    if let Some(p) = std::env::var_os("PENSIEVE_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    paths::config_dir().join("config.toml")
}

/// The config file, or the defaults when there is none. A file that exists but does
/// not parse is an error naming the file and the line.
pub fn load() -> anyhow::Result<Config> {
    load_from(&path())
}

pub fn load_from(path: &Path) -> anyhow::Result<Config> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut config: Config =
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))?;
    if let Some(dir) = &config.server.cache_dir {
        config.server.cache_dir = Some(paths::expand_home(dir));
    }
    for settings in config.models.values_mut() {
        if let Some(file) = &settings.mmproj {
            settings.mmproj = Some(paths::expand_home(file));
        }
        if let Some(file) = &settings.chat_template {
            settings.chat_template = Some(paths::expand_home(file));
        }
        if let Some(model) = &settings.model {
            settings.model = Some(
                paths::expand_home(Path::new(model))
                    .to_string_lossy()
                    .into(),
            );
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_section() {
        let config: Config = toml::from_str(
            r#"
            default_model = "Qwen/Qwen2.5-Coder-7B-Instruct-GGUF:Q4_K_M"
            small_model = "tiny"
            [server]
            host = "0.0.0.0"
            port = 8080
            cache_ram = "2GiB"
            speculative = "ngram"
            draft_model = "tiny-draft"
            images = "reject"
            [models.tiny]
            model = "/m/tiny.gguf"
            ctx = 4096
            gpu_layers = 12
            engine = "llama"
            chat_template = "/t/tiny.jinja"
            [models."Qwen/Qwen2.5-Coder-7B-Instruct-GGUF:Q4_K_M"]
            ctx = 32768
            gpu_layers = "all"
            cache_type_k = "q8_0"
            cache_type_v = "q4_0"
            [aliases]
            "gpt-*" = "tiny"
            "#,
        )
        .unwrap();
        assert_eq!(config.server.port, Some(8080));
        assert_eq!(config.server.cache_ram, Some(ByteSize::gib(2)));
        assert_eq!(config.server.speculative, Some(Speculative::Ngram));
        assert_eq!(config.server.draft_model.as_deref(), Some("tiny-draft"));
        assert_eq!(config.server.images, Some(ImagePolicy::Reject));
        let (target, settings) = config.model("tiny");
        assert_eq!(target, "/m/tiny.gguf");
        assert_eq!(settings.ctx, Some(4096));
        assert_eq!(settings.gpu_layers, Some(GpuLayers::Count(12)));
        assert_eq!(settings.engine, Some(EngineKind::Llama));
        assert_eq!(settings.chat_template, Some(PathBuf::from("/t/tiny.jinja")));
        let (target, settings) = config.model("Qwen/Qwen2.5-Coder-7B-Instruct-GGUF:Q4_K_M");
        assert_eq!(target, "Qwen/Qwen2.5-Coder-7B-Instruct-GGUF:Q4_K_M");
        assert_eq!(settings.ctx, Some(32768));
        assert_eq!(settings.gpu_layers, Some(GpuLayers::All));
        assert_eq!(
            (settings.cache_type_k, settings.cache_type_v),
            (Some(KvType::Q8_0), Some(KvType::Q4_0))
        );
        assert_eq!(config.model("other").0, "other");
        assert_eq!(
            config.aliases(config.small_model.as_deref()),
            [
                ("gpt-*".to_owned(), "tiny".to_owned()),
                ("claude-*haiku*".to_owned(), "tiny".to_owned())
            ]
        );
    }

    #[test]
    fn an_upstream_model_names_its_replicas() {
        let config: Config = toml::from_str(
            r#"
[models.big]
upstream = ["http://gpu1:8000/v1", "http://gpu2:8000/v1"]
upstream_model = "Qwen/Qwen3-32B"
upstream_key = "k"
api = "anthropic"
upstream_routing = "round-robin"
"#,
        )
        .unwrap();
        let big = &config.models["big"];
        assert_eq!(
            big.upstream.as_deref(),
            Some(
                &[
                    "http://gpu1:8000/v1".to_owned(),
                    "http://gpu2:8000/v1".to_owned()
                ][..]
            )
        );
        assert_eq!(big.upstream_model.as_deref(), Some("Qwen/Qwen3-32B"));
        assert_eq!(big.upstream_key.as_deref(), Some("k"));
        assert_eq!(big.upstream_api, Some(UpstreamApi::Anthropic));
        assert_eq!(big.upstream_routing, Some(UpstreamRouting::RoundRobin));
        assert!(toml::from_str::<Config>("[models.x]\nupstreams = []\n").is_err());
    }

    #[test]
    fn mistakes_are_named() {
        let dir = std::env::temp_dir().join(format!("pensieve-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.toml");
        std::fs::write(&file, "[server]\nprot = 1\n").unwrap();
        let err = format!("{:#}", load_from(&file).unwrap_err());
        assert!(err.contains("config.toml") && err.contains("prot"), "{err}");
        assert!(load_from(&dir.join("absent.toml"))
            .unwrap()
            .default_model
            .is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn chat_template_paths_expand_home() {
        let dir = std::env::temp_dir().join(format!("pensieve-config-tpl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.toml");
        std::fs::write(&file, "[models.a]\nchat_template = \"~/t.jinja\"\n").unwrap();
        let config = load_from(&file).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            config.model("a").1.chat_template,
            Some(paths::expand_home(Path::new("~/t.jinja")))
        );
        assert!(!config.models["a"]
            .chat_template
            .as_ref()
            .unwrap()
            .starts_with("~"));
    }
}
