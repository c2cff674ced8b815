//! The upstream engine's I/O: a model's replicas, and one streamed Chat Completions
//! request per generation. A request goes where [`crate::route`] says; one that cannot
//! connect (nothing was sent) is tried on another replica, and that replica is left out
//! until `retry_after` has passed. Nothing is retried once the answer has started. The
//! generation's owner dropping its events ends the upstream request (its connection
//! closes, which OpenAI-compatible servers take as a cancel).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pensieve_engine::{EngineError, GenerateRequest, Generation, GenerationEvent, Usage};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use crate::chat::chat_request;
use crate::chunks::{upstream_error, ChunkReader};
use crate::route::{conversation_key, Replica, Router};
use crate::sse::SseDecoder;
use crate::UpstreamError;

/// How to reach one model's replicas.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Each replica's OpenAI API base, e.g. `http://gpu1:8000/v1`.
    pub replicas: Vec<String>,
    /// The model name the replicas serve it under.
    pub model: String,
    /// Sent as `Authorization: Bearer`.
    pub key: Option<String>,
    /// Requests in flight at most, per replica.
    pub per_replica: usize,
    pub connect_timeout: Duration,
    /// Until the answer's first bytes (a long prompt's prefill comes first).
    pub first_byte_timeout: Duration,
    /// Between two pieces of a streaming answer.
    pub idle_timeout: Duration,
    /// How long a replica that refused a connection is left out.
    pub retry_after: Duration,
}

impl UpstreamConfig {
    pub fn new(replicas: Vec<String>, model: impl Into<String>) -> Self {
        UpstreamConfig {
            replicas,
            model: model.into(),
            key: None,
            per_replica: 64,
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(120),
            retry_after: Duration::from_secs(10),
        }
    }
}

/// Cheap to clone; clones share the replicas' state.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    config: UpstreamConfig,
    http: reqwest::Client,
    router: Mutex<Router>,
    replicas: Vec<ReplicaState>,
}

struct ReplicaState {
    in_flight: AtomicUsize,
    /// When it last refused a connection; None: healthy.
    down_since: Mutex<Option<Instant>>,
}

/// Conversations the router remembers, and how much busier than the least busy replica a
/// conversation's own may be before it moves.
const ROUTER_MEMORY: usize = 4096;
const ROUTER_IMBALANCE: usize = 4;

impl Upstream {
    pub fn new(config: UpstreamConfig) -> Result<Self, UpstreamError> {
        if config.replicas.is_empty() {
            return Err(UpstreamError::Unsupported(
                "an upstream needs at least one replica URL".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| UpstreamError::Unsupported(format!("HTTP client: {e}")))?;
        let replicas = config
            .replicas
            .iter()
            .map(|_| ReplicaState {
                in_flight: AtomicUsize::new(0),
                down_since: Mutex::new(None),
            })
            .collect();
        Ok(Upstream {
            inner: Arc::new(Inner {
                config,
                http,
                router: Mutex::new(Router::new(ROUTER_MEMORY, ROUTER_IMBALANCE)),
                replicas,
            }),
        })
    }

    /// Start generating `request` upstream (within a tokio runtime). Fails at once only
    /// for a request the upstream's API cannot carry.
    pub fn submit(&self, request: &GenerateRequest) -> Result<Generation, EngineError> {
        let body = chat_request(request, &self.inner.config.model).map_err(to_engine_error)?;
        let key = conversation_key(request);
        let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if let Err(e) = inner.generate(&body, key, &events).await {
                let _ = events.send(GenerationEvent::Failed(e));
            }
        });
        Ok(Generation {
            events: receiver,
            queued_usage: Usage::default(),
        })
    }

    /// Whether each replica is in use now (not left out after a refused connection).
    pub fn healthy(&self) -> Vec<bool> {
        let now = Instant::now();
        (0..self.inner.replicas.len())
            .map(|i| self.inner.healthy(i, now))
            .collect()
    }

    /// Requests in flight on each replica.
    pub fn in_flight(&self) -> Vec<usize> {
        self.inner
            .replicas
            .iter()
            .map(|r| r.in_flight.load(Ordering::Relaxed))
            .collect()
    }
}

/// A request's place on a replica, given back when it ends however it ends.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Inner {
    fn healthy(&self, i: usize, now: Instant) -> bool {
        let down = self.replicas[i]
            .down_since
            .lock()
            .map(|d| *d)
            .unwrap_or(None);
        down.is_none_or(|t| now.duration_since(t) >= self.config.retry_after)
    }

    /// A replica for `key` with its place taken, leaving out `tried`.
    fn take_replica(
        &self,
        key: u64,
        tried: &[usize],
    ) -> Result<(usize, InFlight<'_>), EngineError> {
        let now = Instant::now();
        let view: Vec<Replica> = self
            .replicas
            .iter()
            .enumerate()
            .map(|(i, r)| Replica {
                healthy: self.healthy(i, now),
                in_flight: r.in_flight.load(Ordering::Relaxed),
                limit: self.config.per_replica,
            })
            .collect();
        let chosen = self
            .router
            .lock()
            .ok()
            .and_then(|mut router| router.choose(key, &view, tried));
        let Some(i) = chosen else {
            let up = (0..view.len()).any(|i| view[i].healthy && !tried.contains(&i));
            return Err(if up {
                EngineError::Overloaded {
                    waiting: self.config.per_replica * view.len(),
                }
            } else {
                EngineError::Upstream {
                    status: 503,
                    message: "no upstream replica can be reached".into(),
                }
            });
        };
        self.replicas[i].in_flight.fetch_add(1, Ordering::Relaxed);
        Ok((i, InFlight(&self.replicas[i].in_flight)))
    }

    async fn generate(
        &self,
        body: &Value,
        key: u64,
        events: &UnboundedSender<GenerationEvent>,
    ) -> Result<(), EngineError> {
        let mut tried = Vec::new();
        loop {
            let (i, _place) = self.take_replica(key, &tried)?;
            let url = format!(
                "{}/chat/completions",
                self.config.replicas[i].trim_end_matches('/')
            );
            let mut post = self.http.post(&url).json(body);
            if let Some(key) = &self.config.key {
                post = post.bearer_auth(key);
            }
            let response = match tokio::time::timeout(self.config.first_byte_timeout, post.send())
                .await
            {
                Err(_) => return Err(timed_out("answer", self.config.first_byte_timeout)),
                Ok(Err(e)) if e.is_connect() => {
                    tracing::warn!(replica = %self.config.replicas[i], "upstream refused a connection: {e}");
                    if let Ok(mut down) = self.replicas[i].down_since.lock() {
                        *down = Some(Instant::now());
                    }
                    tried.push(i);
                    continue;
                }
                Ok(Err(e)) => {
                    return Err(EngineError::Upstream {
                        status: 502,
                        message: format!("request to {url} failed: {e}"),
                    })
                }
                Ok(Ok(response)) => response,
            };
            if let Ok(mut down) = self.replicas[i].down_since.lock() {
                *down = None;
            }
            if !response.status().is_success() {
                return Err(self.error_answer(response).await);
            }
            return self.stream(response, events).await;
        }
    }

    /// An error status's body, as the client's error.
    async fn error_answer(&self, response: reqwest::Response) -> EngineError {
        let status = response.status().as_u16();
        let text = tokio::time::timeout(self.config.idle_timeout, response.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("error").map(upstream_error))
            .map_or_else(
                || text.chars().take(500).collect(),
                |e| match e {
                    UpstreamError::Upstream { message, .. } => message,
                    other => other.to_string(),
                },
            );
        EngineError::Upstream { status, message }
    }

    async fn stream(
        &self,
        mut response: reqwest::Response,
        events: &UnboundedSender<GenerationEvent>,
    ) -> Result<(), EngineError> {
        let mut sse = SseDecoder::new();
        let mut reader = ChunkReader::new();
        let mut wait = self.config.first_byte_timeout;
        loop {
            let piece = tokio::select! {
                // The client went away: dropping the response closes the connection.
                _ = events.closed() => return Ok(()),
                piece = tokio::time::timeout(wait, response.chunk()) => piece,
            };
            let bytes = match piece {
                Err(_) => return Err(timed_out("further output", wait)),
                Ok(Err(e)) => {
                    return Err(EngineError::Upstream {
                        status: 502,
                        message: format!("the stream broke off: {e}"),
                    })
                }
                Ok(Ok(None)) => {
                    let last = reader.end_of_body().map_err(to_engine_error)?;
                    send_all(events, last);
                    return Ok(());
                }
                Ok(Ok(Some(bytes))) => bytes,
            };
            wait = self.config.idle_timeout;
            let found = sse
                .push(&bytes)
                .map_err(|e| to_engine_error(UpstreamError::Malformed(e)))?;
            for event in found {
                if event.event.as_deref() == Some("error") {
                    let error = serde_json::from_str::<Value>(&event.data)
                        .map(|v| upstream_error(v.get("error").unwrap_or(&v)))
                        .unwrap_or(UpstreamError::Upstream {
                            status: 502,
                            message: event.data,
                        });
                    return Err(to_engine_error(error));
                }
                let out = reader.data(&event.data).map_err(to_engine_error)?;
                let done = out.iter().any(|e| matches!(e, GenerationEvent::Done(_)));
                send_all(events, out);
                if done {
                    return Ok(());
                }
            }
        }
    }
}

/// Hands `out` on; a receiver that is gone (the client left) is noticed by the stream's
/// next wait.
fn send_all(events: &UnboundedSender<GenerationEvent>, out: Vec<GenerationEvent>) {
    for e in out {
        if events.send(e).is_err() {
            break;
        }
    }
}

fn timed_out(what: &str, after: Duration) -> EngineError {
    EngineError::Upstream {
        status: 504,
        message: format!(
            "the upstream sent no {what} within {} s",
            after.as_secs_f32()
        ),
    }
}

/// The engine's error for an upstream fault; a malformed or cut stream is a bad gateway.
pub fn to_engine_error(e: UpstreamError) -> EngineError {
    match e {
        UpstreamError::Unsupported(m) => EngineError::InvalidRequest(m),
        UpstreamError::Upstream { status, message } => EngineError::Upstream { status, message },
        other @ (UpstreamError::Malformed(_) | UpstreamError::EndedEarly) => {
            EngineError::Upstream {
                status: 502,
                message: other.to_string(),
            }
        }
    }
}
