//! `pensieve serve --upstream URL`: the main model served by OpenAI-compatible replicas
//! elsewhere (vLLM, SGLang, TGI, llama-server, Ollama) instead of loaded here.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use pensieve_engine::EngineMetrics;
use pensieve_server::{Backend, ServedModel};
use pensieve_upstream::{Upstream, UpstreamConfig};
use serde_json::Value;

use crate::config::{UpstreamApi, UpstreamRouting};

/// What `serve` was asked of the upstream.
pub struct UpstreamArgs<'a> {
    pub replicas: &'a [String],
    pub model: Option<&'a str>,
    pub key: Option<&'a str>,
    /// The name to list the model under [default: the upstream's].
    pub id: Option<&'a str>,
    pub api: UpstreamApi,
    pub routing: UpstreamRouting,
}

/// The served model of `args`, recording into `metrics`. Without `--upstream-model`, asks
/// the first replica's `/models` (so it must be up when Pensieve starts).
pub fn start(args: &UpstreamArgs<'_>, metrics: &Arc<EngineMetrics>) -> anyhow::Result<ServedModel> {
    for url in args.replicas {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("--upstream {url}: not an http:// or https:// URL");
        }
    }
    let model = match args.model {
        Some(m) => m.to_owned(),
        None => first_model(&args.replicas[0], args.key)?,
    };
    let mut config = UpstreamConfig::new(args.replicas.to_vec(), model.clone());
    config.key = args.key.map(str::to_owned);
    config.api = match args.api {
        UpstreamApi::Openai => pensieve_upstream::UpstreamApi::OpenAi,
        UpstreamApi::Anthropic => pensieve_upstream::UpstreamApi::Anthropic,
    };
    config.routing = match args.routing {
        UpstreamRouting::CacheAware => pensieve_upstream::Routing::CacheAware,
        UpstreamRouting::RoundRobin => pensieve_upstream::Routing::RoundRobin,
    };
    let upstream = Upstream::new(config, metrics.clone())?;
    tracing::info!(
        model = %model,
        replicas = args.replicas.len(),
        api = ?args.api,
        routing = ?args.routing,
        "serving from upstream {}",
        args.replicas.join(", ")
    );
    Ok(ServedModel {
        id: args.id.map_or(model, str::to_owned),
        backend: Backend::Upstream {
            upstream,
            metrics: metrics.clone(),
        },
        created: SystemTime::now(),
        runs_on: format!("upstream {}", args.replicas.join(", ")),
    })
}

/// The first model the OpenAI API at `base` lists.
fn first_model(base: &str, key: Option<&str>) -> anyhow::Result<String> {
    let url = format!("{}/models", base.trim_end_matches('/'));
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut request = client.get(&url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let listed: Value = request
        .send()
        .and_then(reqwest::blocking::Response::error_for_status)
        .and_then(reqwest::blocking::Response::json)
        .with_context(|| {
            format!("cannot list the upstream's models at {url} (or pass --upstream-model)")
        })?;
    listed["data"]
        .as_array()
        .and_then(|models| models.first())
        .and_then(|m| m["id"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("{url} lists no model; pass --upstream-model"))
}
