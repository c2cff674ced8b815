//! The upstream engine's I/O: a model's replicas, and one streamed Chat Completions
//! request per generation. A request goes where [`crate::route`] says; one that cannot
//! connect (nothing was sent) is tried on another replica, and that replica is left out
//! until `retry_after` has passed. Nothing is retried once the answer has started. The
//! generation's owner dropping its events ends the upstream request (its connection
//! closes, which OpenAI-compatible servers take as a cancel).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pensieve_engine::{
    EngineError, EngineMetrics, GenerateRequest, Generation, GenerationEvent, UpstreamRecord, Usage,
};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use crate::chat::chat_request;
use crate::chunks::{upstream_error, ChunkReader};
use crate::route::{conversation_key, Replica, Router, Routing};
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
    /// How long a replica that refused a connection is left out (unless a health check
    /// finds it up sooner).
    pub retry_after: Duration,
    /// How often each replica's `/models` is asked whether it is up.
    pub health_interval: Duration,
    /// Requests that may wait for a place when every replica is full; past that, 529.
    /// A request waits at most `first_byte_timeout`.
    pub queue: usize,
    /// Whether Anthropic requests go to the replicas' own `/v1/messages`, untranslated.
    pub api: UpstreamApi,
    /// How a replica is chosen.
    pub routing: Routing,
}

/// The API the replicas are asked Anthropic requests in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UpstreamApi {
    /// Translated into Chat Completions (every OpenAI-compatible server takes them).
    #[default]
    OpenAi,
    /// Passed on untranslated: the replicas speak `/v1/messages` themselves.
    Anthropic,
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
            health_interval: Duration::from_secs(5),
            queue: 1024,
            api: UpstreamApi::OpenAi,
            routing: Routing::CacheAware,
        }
    }
}

/// Cheap to clone; clones share the replicas' state.
#[derive(Clone)]
pub struct Upstream {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: UpstreamConfig,
    http: reqwest::Client,
    router: Mutex<Router>,
    replicas: Vec<ReplicaState>,
    pub(crate) metrics: Arc<EngineMetrics>,
    /// Signalled when a place may have come free: a request ended, a replica came up.
    freed: tokio::sync::Notify,
    /// Requests waiting for a place.
    waiting: AtomicUsize,
}

struct ReplicaState {
    in_flight: AtomicUsize,
    /// When it last refused a connection or failed a health check; None: healthy.
    down_since: Mutex<Option<Instant>>,
}

/// One replica as `/health` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub url: String,
    /// In use; false while left out after failing.
    pub up: bool,
    pub in_flight: usize,
}

/// Conversations the router remembers, and how much busier than the least busy replica a
/// conversation's own may be before it moves.
const ROUTER_MEMORY: usize = 4096;
const ROUTER_IMBALANCE: usize = 4;

impl Upstream {
    /// Replicas of `config`, recording into `metrics`. Health checks start with
    /// [`Upstream::spawn_health_checks`], inside a runtime.
    pub fn new(config: UpstreamConfig, metrics: Arc<EngineMetrics>) -> Result<Self, UpstreamError> {
        if config.replicas.is_empty() {
            return Err(UpstreamError::Unsupported(
                "an upstream needs at least one replica URL".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| UpstreamError::Unsupported(format!("HTTP client: {e}")))?;
        let routing = config.routing;
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
                router: Mutex::new(Router::new(routing, ROUTER_MEMORY, ROUTER_IMBALANCE)),
                replicas,
                metrics,
                freed: tokio::sync::Notify::new(),
                waiting: AtomicUsize::new(0),
            }),
        })
        .inspect(Upstream::publish)
    }

    /// Ask each replica whether it is up every `health_interval`, for as long as this
    /// upstream (any clone of it) lives: a replica that fails is left out, and one that
    /// answers again is used at once.
    pub fn spawn_health_checks(&self) {
        let weak = Arc::downgrade(&self.inner);
        let interval = self.inner.config.health_interval;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let checks = (0..inner.replicas.len()).map(|i| inner.check(i));
                futures::future::join_all(checks).await;
                Upstream { inner }.publish();
            }
        });
    }

    /// The prompt tokens of `request` as the upstream's tokenizer counts them, asked of the
    /// first replica in use.
    pub async fn count_tokens(&self, request: &GenerateRequest) -> Result<usize, EngineError> {
        let chat = chat_request(request, &self.inner.config.model).map_err(to_engine_error)?;
        let now = Instant::now();
        let i = (0..self.inner.replicas.len())
            .find(|&i| self.inner.healthy(i, now))
            .unwrap_or(0);
        let root = crate::count::server_root(&self.inner.config.replicas[i]);
        crate::count::count_tokens(
            &self.inner.http,
            root,
            self.inner.config.key.as_deref(),
            &chat,
        )
        .await
    }

    /// The API Anthropic requests are sent in.
    pub fn api(&self) -> UpstreamApi {
        self.inner.config.api
    }

    /// Requests waiting for a place on a full replica.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed)
    }

    /// Each replica's state now.
    pub fn replicas(&self) -> Vec<ReplicaStatus> {
        let now = Instant::now();
        self.inner
            .config
            .replicas
            .iter()
            .enumerate()
            .map(|(i, url)| ReplicaStatus {
                url: url.clone(),
                up: self.inner.healthy(i, now),
                in_flight: self.inner.replicas[i].in_flight.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The replicas' gauges, as of now.
    fn publish(&self) {
        (0..self.inner.replicas.len()).for_each(|i| self.inner.publish(i));
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
}

/// A request's place on a replica, given back when it ends however it ends.
pub(crate) struct InFlight {
    inner: Arc<Inner>,
    replica: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.inner.replicas[self.replica]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
        self.inner.freed.notify_waiters();
    }
}

/// A request's place in the queue for a replica.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
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
        self: &Arc<Self>,
        key: u64,
        tried: &[usize],
    ) -> Result<(usize, InFlight), EngineError> {
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
        Ok((
            i,
            InFlight {
                inner: self.clone(),
                replica: i,
            },
        ))
    }

    /// [`Inner::take_replica`], waiting while every replica is full: for a place to come
    /// free, up to `first_byte_timeout`, with at most `queue` requests waiting. None when
    /// `client_gone` comes first.
    pub(crate) async fn wait_for_replica(
        self: &Arc<Self>,
        key: u64,
        tried: &[usize],
        client_gone: impl std::future::Future<Output = ()>,
    ) -> Result<Option<(usize, InFlight)>, EngineError> {
        let deadline = tokio::time::Instant::now() + self.config.first_byte_timeout;
        let mut queued = None;
        tokio::pin!(client_gone);
        loop {
            // Listening before looking, so that a place freed in between is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let full = match self.take_replica(key, tried) {
                Err(EngineError::Overloaded { waiting }) => waiting,
                other => return other.map(Some),
            };
            if queued.is_none() {
                let waiting = self.waiting.fetch_add(1, Ordering::Relaxed);
                queued = Some(Waiting(&self.waiting));
                if waiting >= self.config.queue {
                    return Err(EngineError::Overloaded {
                        waiting: full + waiting,
                    });
                }
            }
            tokio::select! {
                () = &mut client_gone => return Ok(None),
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(EngineError::Overloaded {
                        waiting: full + self.waiting.load(Ordering::Relaxed),
                    })
                }
                () = &mut freed => {}
            }
        }
    }

    async fn generate(
        self: &Arc<Self>,
        body: &Value,
        key: u64,
        events: &UnboundedSender<GenerationEvent>,
    ) -> Result<(), EngineError> {
        let mut tried = Vec::new();
        loop {
            let waited = self.wait_for_replica(key, &tried, events.closed()).await?;
            let Some((i, place)) = waited else {
                // The client left while waiting.
                return Ok(());
            };
            self.publish(i);
            let started = Instant::now();
            let mut record = UpstreamRecord::default();
            let result = self.attempt(i, body, events, started, &mut record).await;
            drop(place);
            record.ok = matches!(result, Ok(true));
            record.duration = started.elapsed();
            self.metrics
                .record_upstream(&self.config.replicas[i], &record);
            self.publish(i);
            match result {
                // Refused before anything was sent: another replica may take it.
                Ok(false) => tried.push(i),
                Ok(true) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// One try on replica `i`: Ok(true) once answered, Ok(false) when it refused the
    /// connection (it is then left out for a while).
    async fn attempt(
        &self,
        i: usize,
        body: &Value,
        events: &UnboundedSender<GenerationEvent>,
        started: Instant,
        record: &mut UpstreamRecord,
    ) -> Result<bool, EngineError> {
        let Some(response) = self.send(i, "chat/completions", body).await? else {
            return Ok(false);
        };
        self.stream(response, events, started, record).await?;
        Ok(true)
    }

    /// POST `body` to `path` under replica `i`'s base: its answer once its status says it
    /// is one, None when the replica refused the connection (it is then left out for a
    /// while), Err for an error status or no answer in time.
    pub(crate) async fn send(
        &self,
        i: usize,
        path: &str,
        body: &Value,
    ) -> Result<Option<reqwest::Response>, EngineError> {
        let url = format!("{}/{path}", self.config.replicas[i].trim_end_matches('/'));
        let post = authorized(self.http.post(&url).json(body), self.config.key.as_deref());
        let response = match tokio::time::timeout(self.config.first_byte_timeout, post.send()).await
        {
            Err(_) => return Err(timed_out("answer", self.config.first_byte_timeout)),
            Ok(Err(e)) if e.is_connect() => {
                tracing::warn!(replica = %self.config.replicas[i], "upstream refused a connection: {e}");
                self.set_down(i, true);
                return Ok(None);
            }
            Ok(Err(e)) => {
                return Err(EngineError::Upstream {
                    status: 502,
                    message: format!("request to {url} failed: {e}"),
                })
            }
            Ok(Ok(response)) => response,
        };
        self.set_down(i, false);
        if !response.status().is_success() {
            return Err(self.error_answer(response).await);
        }
        Ok(Some(response))
    }

    fn set_down(&self, i: usize, down: bool) {
        if let Ok(mut since) = self.replicas[i].down_since.lock() {
            *since = down.then(Instant::now);
        }
    }

    /// Replica `i`'s gauges, as of now.
    pub(crate) fn publish(&self, i: usize) {
        self.metrics.set_upstream_state(
            &self.config.replicas[i],
            self.replicas[i].in_flight.load(Ordering::Relaxed),
            self.healthy(i, Instant::now()),
        );
    }

    /// A health check: any answer to `GET /models` below 500 means up (a replica still
    /// loading its model answers 503); no answer in `connect_timeout` means down.
    async fn check(&self, i: usize) {
        let url = format!("{}/models", self.config.replicas[i].trim_end_matches('/'));
        let get = self.http.get(&url).timeout(self.config.connect_timeout);
        let up = authorized(get, self.config.key.as_deref())
            .send()
            .await
            .is_ok_and(|r| !r.status().is_server_error());
        let was_up = self.healthy(i, Instant::now());
        if up != was_up {
            tracing::info!(replica = %self.config.replicas[i], "upstream replica is {}", if up { "up" } else { "down" });
        }
        // A failed check while down renews the time left out: out until a check passes.
        self.set_down(i, !up);
        if up && !was_up {
            self.freed.notify_waiters();
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
        started: Instant,
        record: &mut UpstreamRecord,
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
                    note(record, started, &last);
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
                note(record, started, &out);
                let done = out.iter().any(|e| matches!(e, GenerationEvent::Done(_)));
                send_all(events, out);
                if done {
                    return Ok(());
                }
            }
        }
    }
}

/// `request` with the upstream's key, when it has one.
pub(crate) fn authorized(
    request: reqwest::RequestBuilder,
    key: Option<&str>,
) -> reqwest::RequestBuilder {
    match key {
        Some(key) => request.bearer_auth(key),
        None => request,
    }
}

/// What a request's metrics need from its events: when the first piece came, and the usage.
fn note(record: &mut UpstreamRecord, started: Instant, out: &[GenerationEvent]) {
    for e in out {
        match e {
            GenerationEvent::Text(_)
            | GenerationEvent::Thinking(_)
            | GenerationEvent::ToolCallStart { .. } => {
                record.first_token.get_or_insert_with(|| started.elapsed());
            }
            GenerationEvent::Done(done) => {
                record.prompt_tokens = u64::from(done.usage.prompt_tokens);
                record.cached_prompt_tokens = u64::from(done.usage.cached_prompt_tokens);
                record.generated_tokens = u64::from(done.usage.completion_tokens);
            }
            _ => {}
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

pub(crate) fn timed_out(what: &str, after: Duration) -> EngineError {
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
