//! The server's Prometheus metrics: one registry holding every `pensieve_*` series, the
//! methods the scheduler and the HTTP edge record through, and the text rendering that
//! `GET /metrics` serves.
//!
//! Every method takes `&self` (the metrics are atomics, label families take a short
//! lock), so one `Arc<EngineMetrics>` is shared by the engine thread and the handlers.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::{text, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Time to first token, in seconds: from a few milliseconds (a cached prompt on a GPU) to
/// ten minutes (a long prompt prefilled on a CPU); slower ones land in `+Inf`.
const TTFT_BUCKETS: [f64; 15] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Time between two generated tokens, in seconds: about 1 ms to 5 s.
const INTER_TOKEN_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A whole HTTP request, in seconds: a streamed generation can run for many minutes, so
/// the same range as time to first token.
const REQUEST_BUCKETS: [f64; 15] = TTFT_BUCKETS;

/// Where cached prompt state lives: in a live llama.cpp context, in host memory, or on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheTier {
    Context,
    Host,
    Disk,
}

impl CacheTier {
    const ALL: [CacheTier; 3] = [CacheTier::Context, CacheTier::Host, CacheTier::Disk];

    /// The `tier` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheTier::Context => "context",
            CacheTier::Host => "host",
            CacheTier::Disk => "disk",
        }
    }
}

impl EncodeLabelValue for CacheTier {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    /// The matched route template (`/v1/models/{id}`), never the raw path, so the
    /// number of series stays bounded.
    route: String,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReplicaLabels {
    /// The replica's base URL: a handful per server, from its flags or config.
    replica: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReplicaOutcomeLabels {
    replica: String,
    /// `ok`, or `error` (the replica's own error, a timeout, a broken stream, no connection).
    outcome: String,
}

/// What one upstream request did, for [`EngineMetrics::record_upstream`].
#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamRecord {
    pub ok: bool,
    /// Until the first generated piece, when there was one.
    pub first_token: Option<Duration>,
    pub duration: Duration,
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub generated_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TierLabels {
    tier: CacheTier,
}

type UGauge = Gauge<u64, AtomicU64>;

/// What one engine last added to the shared gauges (see `publish_share`).
#[derive(Debug, Default)]
pub struct GaugeShare {
    running: u64,
    /// (entries, bytes) per tier, in `CacheTier::ALL` order.
    cache: [(u64, u64); 3],
}

/// Move `gauge` by the change from `*last` to `now`.
fn shift(gauge: &UGauge, last: &mut u64, now: u64) {
    if now > *last {
        gauge.inc_by(now - *last);
    } else {
        gauge.dec_by(*last - now);
    }
    *last = now;
}

/// Every metric the server exports, and the registry that renders them.
#[derive(Debug)]
pub struct EngineMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    queue_depth: UGauge,
    running: UGauge,
    ttft: Histogram,
    inter_token: Histogram,
    prompt_tokens: Counter,
    cached_prompt_tokens: Counter,
    cache_created_tokens: Counter,
    generated_tokens: Counter,
    draft_tokens: Counter,
    draft_accepted_tokens: Counter,
    cache_entries: Family<TierLabels, UGauge>,
    cache_bytes: Family<TierLabels, UGauge>,
    upstream_requests: Family<ReplicaOutcomeLabels, Counter>,
    upstream_ttft: Family<ReplicaLabels, Histogram, fn() -> Histogram>,
    upstream_duration: Family<ReplicaLabels, Histogram, fn() -> Histogram>,
    upstream_prompt_tokens: Family<ReplicaLabels, Counter>,
    upstream_cached_tokens: Family<ReplicaLabels, Counter>,
    upstream_in_flight: Family<ReplicaLabels, UGauge>,
    upstream_up: Family<ReplicaLabels, UGauge>,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        EngineMetrics::new()
    }
}

impl EngineMetrics {
    /// A fresh registry with every series registered at zero.
    pub fn new() -> Self {
        let m = EngineMetrics {
            registry: Registry::with_prefix("pensieve"),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS)),
            queue_depth: UGauge::default(),
            running: UGauge::default(),
            ttft: Histogram::new(TTFT_BUCKETS),
            inter_token: Histogram::new(INTER_TOKEN_BUCKETS),
            prompt_tokens: Counter::default(),
            cached_prompt_tokens: Counter::default(),
            cache_created_tokens: Counter::default(),
            generated_tokens: Counter::default(),
            draft_tokens: Counter::default(),
            draft_accepted_tokens: Counter::default(),
            cache_entries: Family::default(),
            cache_bytes: Family::default(),
            upstream_requests: Family::default(),
            upstream_ttft: Family::new_with_constructor(|| Histogram::new(TTFT_BUCKETS)),
            upstream_duration: Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS)),
            upstream_prompt_tokens: Family::default(),
            upstream_cached_tokens: Family::default(),
            upstream_in_flight: Family::default(),
            upstream_up: Family::default(),
        };
        // Every tier is reported from the start, so a tier that is empty (or not built
        // yet) reads 0 rather than missing.
        for tier in CacheTier::ALL {
            m.set_cache(tier, 0, 0);
        }
        m.register()
    }

    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "requests",
            "HTTP requests answered, by matched route and status code",
            self.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "HTTP request time, from arrival to the end of the response body",
            Unit::Seconds,
            self.request_duration.clone(),
        );
        r.register(
            "queue_depth",
            "Requests waiting to be scheduled",
            self.queue_depth.clone(),
        );
        r.register(
            "running_sequences",
            "Sequences being prefilled or decoded",
            self.running.clone(),
        );
        r.register_with_unit(
            "time_to_first_token",
            "Time from admission into the queue to the first generated token",
            Unit::Seconds,
            self.ttft.clone(),
        );
        r.register_with_unit(
            "inter_token_latency",
            "Time between consecutive generated tokens of one sequence",
            Unit::Seconds,
            self.inter_token.clone(),
        );
        r.register(
            "prompt_tokens",
            "Prompt tokens of admitted requests, cached or not",
            self.prompt_tokens.clone(),
        );
        r.register(
            "cached_prompt_tokens",
            "Prompt tokens served from the prefix cache instead of prefilled",
            self.cached_prompt_tokens.clone(),
        );
        r.register(
            "cache_created_tokens",
            "Prompt tokens prefilled and written into the prefix cache",
            self.cache_created_tokens.clone(),
        );
        r.register(
            "generated_tokens",
            "Tokens generated",
            self.generated_tokens.clone(),
        );
        r.register(
            "draft_tokens",
            "Tokens drafted by speculative decoding and checked",
            self.draft_tokens.clone(),
        );
        r.register(
            "draft_accepted_tokens",
            "Drafted tokens that the model's own sampling kept",
            self.draft_accepted_tokens.clone(),
        );
        r.register(
            "cache_entries",
            "Prefix cache entries held, by tier",
            self.cache_entries.clone(),
        );
        r.register_with_unit(
            "cache",
            "Prefix cache size, by tier",
            Unit::Bytes,
            self.cache_bytes.clone(),
        );
        r.register(
            "upstream_requests",
            "Requests sent to an upstream replica, by replica and outcome",
            self.upstream_requests.clone(),
        );
        r.register_with_unit(
            "upstream_time_to_first_token",
            "Time from sending a request to a replica to its first generated piece",
            Unit::Seconds,
            self.upstream_ttft.clone(),
        );
        r.register_with_unit(
            "upstream_request_duration",
            "Time from sending a request to a replica to the end of its answer",
            Unit::Seconds,
            self.upstream_duration.clone(),
        );
        r.register(
            "upstream_prompt_tokens",
            "Prompt tokens a replica reported, cached or not",
            self.upstream_prompt_tokens.clone(),
        );
        r.register(
            "upstream_cached_prompt_tokens",
            "Prompt tokens a replica reported read from its prefix cache",
            self.upstream_cached_tokens.clone(),
        );
        r.register(
            "upstream_in_flight",
            "Requests in flight on a replica",
            self.upstream_in_flight.clone(),
        );
        r.register(
            "upstream_up",
            "Whether a replica is in use (1) or left out after failing (0)",
            self.upstream_up.clone(),
        );
        self
    }

    /// Requests admitted but not yet running.
    pub fn set_queue_depth(&self, n: usize) {
        self.queue_depth.set(to_u64(n));
    }

    /// Sequences currently being prefilled or decoded.
    pub fn set_running(&self, n: usize) {
        self.running.set(to_u64(n));
    }

    /// Report one engine's gauges when several engines (one per served model) share
    /// these metrics: each adds the change since its last report, so the gauges read
    /// the server's totals.
    pub fn publish_share(&self, share: &mut GaugeShare, running: usize, cache: [(usize, u64); 3]) {
        shift(&self.running, &mut share.running, to_u64(running));
        for (i, tier) in CacheTier::ALL.into_iter().enumerate() {
            let labels = TierLabels { tier };
            let (entries, bytes) = cache[i];
            shift(
                &self.cache_entries.get_or_create(&labels),
                &mut share.cache[i].0,
                to_u64(entries),
            );
            shift(
                &self.cache_bytes.get_or_create(&labels),
                &mut share.cache[i].1,
                bytes,
            );
        }
    }

    /// From the request's admission into the queue to its first generated token
    /// (queue wait and prefill included).
    pub fn observe_ttft(&self, d: Duration) {
        self.ttft.observe(d.as_secs_f64());
    }

    /// Between two consecutive tokens of one sequence.
    pub fn observe_inter_token(&self, d: Duration) {
        self.inter_token.observe(d.as_secs_f64());
    }

    /// All prompt tokens of a request, including those then found in the cache.
    pub fn add_prompt_tokens(&self, n: u64) {
        self.prompt_tokens.inc_by(n);
    }

    /// Prompt tokens reused from the prefix cache (cache hits).
    pub fn add_cached_prompt_tokens(&self, n: u64) {
        self.cached_prompt_tokens.inc_by(n);
    }

    /// Prompt tokens newly written into the prefix cache.
    pub fn add_cache_created_tokens(&self, n: u64) {
        self.cache_created_tokens.inc_by(n);
    }

    pub fn add_generated_tokens(&self, n: u64) {
        self.generated_tokens.inc_by(n);
    }

    /// A speculative draft was checked: `drafted` tokens, of which `accepted` were kept.
    pub fn add_draft(&self, drafted: u64, accepted: u64) {
        self.draft_tokens.inc_by(drafted);
        self.draft_accepted_tokens.inc_by(accepted);
    }

    /// The current size of one cache tier (replaces the previous reading).
    pub fn set_cache(&self, tier: CacheTier, entries: usize, bytes: u64) {
        let labels = TierLabels { tier };
        self.cache_entries
            .get_or_create(&labels)
            .set(to_u64(entries));
        self.cache_bytes.get_or_create(&labels).set(bytes);
    }

    /// Count one answered HTTP request. `route` must be a route template or a fixed
    /// word like `unmatched`, never a raw path: each distinct value is a new series.
    pub fn record_request(&self, route: &str, status: u16) {
        let labels = RequestLabels {
            route: route.to_owned(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
    }

    /// How long one HTTP request took; `route` as in [`EngineMetrics::record_request`].
    pub fn observe_request_duration(&self, route: &str, d: Duration) {
        let labels = RouteLabels {
            route: route.to_owned(),
        };
        self.request_duration
            .get_or_create(&labels)
            .observe(d.as_secs_f64());
    }

    /// One request a replica answered or failed; also counted in the server's own token
    /// totals, as a local engine's would be.
    pub fn record_upstream(&self, replica: &str, record: &UpstreamRecord) {
        let labels = ReplicaLabels {
            replica: replica.to_owned(),
        };
        let outcome = ReplicaOutcomeLabels {
            replica: replica.to_owned(),
            outcome: if record.ok { "ok" } else { "error" }.to_owned(),
        };
        self.upstream_requests.get_or_create(&outcome).inc();
        if let Some(first) = record.first_token {
            self.upstream_ttft
                .get_or_create(&labels)
                .observe(first.as_secs_f64());
            self.observe_ttft(first);
        }
        self.upstream_duration
            .get_or_create(&labels)
            .observe(record.duration.as_secs_f64());
        self.upstream_prompt_tokens
            .get_or_create(&labels)
            .inc_by(record.prompt_tokens);
        self.upstream_cached_tokens
            .get_or_create(&labels)
            .inc_by(record.cached_prompt_tokens);
        self.add_prompt_tokens(record.prompt_tokens);
        self.add_cached_prompt_tokens(record.cached_prompt_tokens);
        self.add_generated_tokens(record.generated_tokens);
    }

    /// A replica's state now: requests in flight, and whether it is in use.
    pub fn set_upstream_state(&self, replica: &str, in_flight: usize, up: bool) {
        let labels = ReplicaLabels {
            replica: replica.to_owned(),
        };
        self.upstream_in_flight
            .get_or_create(&labels)
            .set(to_u64(in_flight));
        self.upstream_up.get_or_create(&labels).set(u64::from(up));
    }

    /// Everything, in the OpenMetrics text format (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // The encoder's only errors are its writer's, and writing to a String cannot fail.
        if let Err(e) = text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// `usize` always fits in `u64` on the targets we build for; saturate rather than panic.
fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
