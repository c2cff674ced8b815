//! What every handler can reach: the models, the edge's settings, the kept responses,
//! and the id of the request being handled.

use std::sync::Arc;
use std::time::Duration;

use pensieve_engine::{EngineMetrics, SamplingDefaults};

use crate::browser::BrowserPolicy;
use crate::models::{Backend, ModelRouter};
use crate::response_store::ResponseStore;

/// Settings of the HTTP edge.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// When set, every API route needs this key.
    pub api_key: Option<String>,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// How often a stream without other traffic gets a `ping` (prefill can take minutes).
    pub ping_interval: Duration,
    /// Which hosts and browser origins are answered.
    pub browser: BrowserPolicy,
    /// How long a client may take to send a request's headers (slow-loris), and then its
    /// body.
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// The sampling of requests that leave a setting out (translated ones; a request
    /// relayed to an upstream as it is gets the upstream's own defaults).
    pub sampling: SamplingDefaults,
    /// What a model without vision makes of the images it is sent.
    pub images: ImagePolicy,
    /// Fetch images given by http(s) URL for a model that sees images
    /// (`--allow-image-urls`); otherwise the server makes no network calls of its own.
    pub allow_image_urls: bool,
}

/// What a model without vision makes of an image (`--images`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImagePolicy {
    /// The model reads a short placeholder where the image was, so that a conversation
    /// that once held a screenshot goes on.
    #[default]
    Placeholder,
    /// The request is refused (400), naming the image's block.
    Reject,
}

impl std::str::FromStr for ImagePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "placeholder" => Ok(ImagePolicy::Placeholder),
            "reject" => Ok(ImagePolicy::Reject),
            other => Err(format!(
                "{other:?} is not an image policy (placeholder, reject)"
            )),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            api_key: None,
            body_limit: 32 * 1024 * 1024,
            ping_interval: Duration::from_secs(3),
            browser: BrowserPolicy::default(),
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            sampling: SamplingDefaults::default(),
            images: ImagePolicy::default(),
            allow_image_urls: false,
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub models: Arc<ModelRouter>,
    pub config: Arc<ServerConfig>,
    /// Responses kept for `previous_response_id` and `GET /v1/responses/{id}`.
    pub responses: Arc<ResponseStore>,
}

impl AppState {
    pub fn new(models: Arc<ModelRouter>, config: ServerConfig) -> Self {
        AppState {
            models,
            config: Arc::new(config),
            responses: Arc::new(ResponseStore::default()),
        }
    }

    /// The backend of the model that serves requests for `requested`.
    pub fn backend_for(&self, requested: &str) -> &Backend {
        &self.models.route(requested).backend
    }

    /// The metrics every engine records into.
    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        self.models.default_model().backend.metrics()
    }
}

/// The id of the request being handled, also sent back as the `request-id` header.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);
