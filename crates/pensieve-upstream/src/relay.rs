//! Requests a replica takes as they are: OpenAI requests, and Anthropic ones where the
//! replicas speak `/v1/messages` themselves (`api = "anthropic"`). The body goes on with only
//! its `model` changed, through the same placement, queue, retries and metrics as a
//! translated request, and the answer comes back byte for byte. What Pensieve reads of it:
//! whether a stream ended the way its API ends one (a stream cut short gets an error event
//! from the edge, in the client's API), the time to its first token, and the usage.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use pensieve_engine::{EngineError, UpstreamRecord, Usage};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::chunks::read_usage;
use crate::client::{timed_out, to_engine_error, InFlight, Inner, Upstream};
use crate::sse::{SseDecoder, SseEvent};
use crate::UpstreamError;

/// Where a relayed request goes, under a replica's API base (`http://host/v1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Messages,
    CountTokens,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat/completions",
            Endpoint::Completions => "completions",
            Endpoint::Messages => "messages",
            Endpoint::CountTokens => "messages/count_tokens",
        }
    }

    /// Anthropic's API rather than OpenAI's.
    pub fn is_anthropic(self) -> bool {
        matches!(self, Endpoint::Messages | Endpoint::CountTokens)
    }
}

/// A relayed answer.
pub enum Relayed {
    /// A whole JSON body.
    Whole(Bytes),
    /// A stream's bytes as they come. An Err is its last item: the stream broke off, stalled
    /// or was malformed, and the edge ends it with an error event in its API.
    Stream(mpsc::Receiver<Result<Bytes, EngineError>>),
}

/// What a relayed answer's events say.
#[derive(Debug)]
pub struct Watch {
    anthropic: bool,
    ended: bool,
    first_token: bool,
    usage: Usage,
}

impl Watch {
    pub fn new(endpoint: Endpoint) -> Self {
        Watch {
            anthropic: endpoint.is_anthropic(),
            ended: false,
            first_token: false,
            usage: Usage::default(),
        }
    }

    /// Read one event of a stream; true when it carries the first generated token.
    pub fn event(&mut self, event: &SseEvent) -> bool {
        if self.ended {
            return false;
        }
        let data: Option<Value> = serde_json::from_str(&event.data).ok();
        let token = if self.anthropic {
            self.anthropic_event(event.event.as_deref(), data.as_ref())
        } else {
            self.openai_event(&event.data, data.as_ref())
        };
        let first = token && !self.first_token;
        self.first_token |= token;
        first
    }

    /// Read a whole (not streamed) answer.
    pub fn body(&mut self, body: &[u8]) {
        self.ended = true;
        let Ok(answer) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        if let Some(usage) = answer.get("usage").filter(|u| u.is_object()) {
            self.usage = if self.anthropic {
                anthropic_usage(usage, Usage::default())
            } else {
                read_usage(usage)
            };
        }
    }

    /// The answer ended as its API ends one (or with the upstream's own error event).
    pub fn ended(&self) -> bool {
        self.ended
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Chat Completions and Completions chunks: `data: [DONE]` ends them.
    fn openai_event(&mut self, raw: &str, data: Option<&Value>) -> bool {
        if raw.trim() == "[DONE]" {
            self.ended = true;
            return false;
        }
        let Some(chunk) = data else { return false };
        if chunk.get("error").is_some() {
            self.ended = true;
            return false;
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = read_usage(usage);
        }
        let has = |v: Option<&Value>| {
            v.is_some_and(|v| !v.is_null() && v != "" && v != &Value::Array(vec![]))
        };
        chunk["choices"].as_array().is_some_and(|choices| {
            choices.iter().any(|c| {
                let d = &c["delta"];
                has(c.get("text"))
                    || has(d.get("content"))
                    || has(d.get("reasoning_content"))
                    || has(d.get("reasoning"))
                    || has(d.get("tool_calls"))
            })
        })
    }

    /// Anthropic's events: `message_stop` (or `error`) ends them.
    fn anthropic_event(&mut self, name: Option<&str>, data: Option<&Value>) -> bool {
        let kind = name.or_else(|| data.and_then(|d| d["type"].as_str()));
        match kind {
            Some("message_stop" | "error") => self.ended = true,
            Some("message_start") => {
                if let Some(usage) = data.and_then(|d| d.pointer("/message/usage")) {
                    self.usage = anthropic_usage(usage, self.usage);
                }
            }
            Some("message_delta") => {
                if let Some(usage) = data.and_then(|d| d.get("usage")) {
                    self.usage = anthropic_usage(usage, self.usage);
                }
            }
            Some("content_block_delta") => return true,
            _ => {}
        }
        false
    }
}

/// Anthropic's usage over `so_far`: its `input_tokens` leave out what was read from or
/// written to the cache, which the engine's prompt count includes.
fn anthropic_usage(usage: &Value, so_far: Usage) -> Usage {
    let count = |key: &str| {
        usage
            .get(key)
            .and_then(Value::as_u64)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    };
    let mut out = so_far;
    let (read, written) = (
        count("cache_read_input_tokens"),
        count("cache_creation_input_tokens"),
    );
    if let Some(input) = count("input_tokens") {
        out.prompt_tokens = input
            .saturating_add(read.unwrap_or(0))
            .saturating_add(written.unwrap_or(0));
    }
    if let Some(read) = read {
        out.cached_prompt_tokens = read;
    }
    if let Some(written) = written {
        out.cache_creation_tokens = written;
    }
    if let Some(output) = count("output_tokens") {
        out.completion_tokens = output;
    }
    out
}

impl Upstream {
    /// Send `body` to `endpoint` of the replica that `key`'s conversation goes to, with the
    /// upstream's model name in it; a replica that refuses the connection is passed over
    /// for another. Returns once the answer's status is in: an error status is the
    /// upstream's error. Dropping the stream's receiver cancels the upstream request.
    pub async fn relay(
        &self,
        endpoint: Endpoint,
        mut body: Value,
        key: u64,
    ) -> Result<Relayed, EngineError> {
        let inner = &self.inner;
        if let Some(fields) = body.as_object_mut() {
            fields.insert("model".into(), Value::from(inner.config.model.clone()));
        }
        let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
        let mut tried = Vec::new();
        loop {
            // The client going away drops this future, and with it the wait.
            let waited = inner
                .wait_for_replica(key, &tried, std::future::pending())
                .await?;
            let Some((i, place)) = waited else {
                return Err(EngineError::EngineStopped);
            };
            inner.publish(i);
            let started = Instant::now();
            let mut record = UpstreamRecord::default();
            let response = match inner.send(i, endpoint.path(), &body).await {
                Ok(Some(response)) => response,
                Ok(None) => {
                    inner.finish(i, place, started, record);
                    tried.push(i);
                    continue;
                }
                Err(e) => {
                    inner.finish(i, place, started, record);
                    return Err(e);
                }
            };
            if !stream {
                let mut watch = Watch::new(endpoint);
                let wait = inner.config.first_byte_timeout;
                let whole = match tokio::time::timeout(wait, response.bytes()).await {
                    Err(_) => Err(timed_out("answer", wait)),
                    Ok(Err(e)) => Err(broke_off(&e)),
                    Ok(Ok(bytes)) => Ok(bytes),
                };
                if let Ok(bytes) = &whole {
                    watch.body(bytes);
                    record.ok = true;
                    record.first_token = Some(started.elapsed());
                    note_usage(&mut record, watch.usage());
                }
                inner.finish(i, place, started, record);
                return whole.map(Relayed::Whole);
            }
            let (sender, receiver) = mpsc::channel(64);
            let relay = StreamRelay {
                inner: inner.clone(),
                replica: i,
                place,
                started,
                watch: Watch::new(endpoint),
            };
            tokio::spawn(relay.run(response, sender));
            return Ok(Relayed::Stream(receiver));
        }
    }
}

/// A relayed stream on its way to the client.
struct StreamRelay {
    inner: Arc<Inner>,
    replica: usize,
    place: InFlight,
    started: Instant,
    watch: Watch,
}

impl StreamRelay {
    async fn run(
        mut self,
        mut response: reqwest::Response,
        sender: mpsc::Sender<Result<Bytes, EngineError>>,
    ) {
        let mut record = UpstreamRecord::default();
        let mut sse = SseDecoder::new();
        let mut wait = self.inner.config.first_byte_timeout;
        let outcome = loop {
            let piece = tokio::select! {
                // The client went away: dropping the response closes the connection.
                () = sender.closed() => break Ok(()),
                piece = tokio::time::timeout(wait, response.chunk()) => piece,
            };
            let bytes = match piece {
                Err(_) => break Err(timed_out("further output", wait)),
                Ok(Err(e)) => break Err(broke_off(&e)),
                Ok(Ok(None)) if self.watch.ended() => break Ok(()),
                Ok(Ok(None)) => break Err(to_engine_error(UpstreamError::EndedEarly)),
                Ok(Ok(Some(bytes))) => bytes,
            };
            wait = self.inner.config.idle_timeout;
            let events = match sse.push(&bytes) {
                Ok(events) => events,
                Err(e) => break Err(to_engine_error(UpstreamError::Malformed(e))),
            };
            for event in &events {
                if self.watch.event(event) {
                    record.first_token = Some(self.started.elapsed());
                }
            }
            if sender.send(Ok(bytes)).await.is_err() {
                break Ok(());
            }
            if self.watch.ended() {
                break Ok(());
            }
        };
        record.ok = outcome.is_ok();
        note_usage(&mut record, self.watch.usage());
        if let Err(e) = outcome {
            tracing::warn!(replica = %self.inner.config.replicas[self.replica], "relayed stream failed: {e}");
            let _ = sender.send(Err(e)).await;
        }
        self.inner
            .finish(self.replica, self.place, self.started, record);
    }
}

impl Inner {
    /// A relayed request is over: its place is given back and its metrics recorded.
    fn finish(&self, i: usize, place: InFlight, started: Instant, mut record: UpstreamRecord) {
        drop(place);
        record.duration = started.elapsed();
        tracing::info!(
            replica = %self.config.replicas[i],
            ok = record.ok,
            prompt_tokens = record.prompt_tokens,
            cached_tokens = record.cached_prompt_tokens,
            output_tokens = record.generated_tokens,
            ms = record.duration.as_millis() as u64,
            "relayed request done"
        );
        self.metrics
            .record_upstream(&self.config.replicas[i], &record);
        self.publish(i);
    }
}

fn note_usage(record: &mut UpstreamRecord, usage: Usage) {
    record.prompt_tokens = u64::from(usage.prompt_tokens);
    record.cached_prompt_tokens = u64::from(usage.cached_prompt_tokens);
    record.generated_tokens = u64::from(usage.completion_tokens);
}

fn broke_off(e: &reqwest::Error) -> EngineError {
    EngineError::Upstream {
        status: 502,
        message: format!("the stream broke off: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn events(body: &str) -> Vec<SseEvent> {
        SseDecoder::new().push(body.as_bytes()).unwrap()
    }

    fn watch(endpoint: Endpoint, body: &str) -> (Watch, Vec<bool>) {
        let mut w = Watch::new(endpoint);
        let firsts = events(body).iter().map(|e| w.event(e)).collect();
        (w, firsts)
    }

    #[test]
    fn an_openai_stream_ends_with_done_and_its_usage_counts() {
        let body = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"!\"}}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1200,\"completion_tokens\":2,",
            "\"prompt_tokens_details\":{\"cached_tokens\":1024}}}\n\n",
        );
        let (w, firsts) = watch(Endpoint::ChatCompletions, body);
        assert_eq!(firsts, vec![false, true, false, false]);
        assert!(!w.ended(), "no [DONE] yet: a close here is a cut stream");
        let usage = w.usage();
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.cached_prompt_tokens,
                usage.completion_tokens
            ),
            (1200, 1024, 2)
        );
        let (w, _) = watch(
            Endpoint::ChatCompletions,
            &format!("{body}data: [DONE]\n\n"),
        );
        assert!(w.ended());
        // Completions carry `text`; an error chunk ends the stream too.
        let (w, firsts) = watch(
            Endpoint::Completions,
            "data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: {\"error\":{\"message\":\"x\"}}\n\n",
        );
        assert_eq!(firsts, vec![true, false]);
        assert!(w.ended());
    }

    #[test]
    fn an_anthropic_stream_ends_with_message_stop_and_its_usage_adds_up() {
        let start = json!({"type": "message_start", "message": {"usage": {"input_tokens": 10,
            "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 5, "output_tokens": 1}}});
        let body = format!(
            "event: message_start\ndata: {start}\n\n\
             event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":0}}\n\n\
             event: ping\ndata: {{\"type\":\"ping\"}}\n\n\
             event: content_block_delta\ndata: {{\"type\":\"content_block_delta\"}}\n\n\
             event: content_block_delta\ndata: {{\"type\":\"content_block_delta\"}}\n\n\
             event: message_delta\ndata: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":7}}}}\n\n"
        );
        let (w, firsts) = watch(Endpoint::Messages, &body);
        assert_eq!(firsts, vec![false, false, false, true, false, false]);
        assert!(!w.ended());
        let usage = w.usage();
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.cached_prompt_tokens,
                usage.cache_creation_tokens,
                usage.completion_tokens
            ),
            (1015, 1000, 5, 7)
        );
        let (w, _) = watch(
            Endpoint::Messages,
            &format!("{body}event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"),
        );
        assert!(w.ended());
        let (w, _) = watch(
            Endpoint::Messages,
            "event: error\ndata: {\"type\":\"error\"}\n\n",
        );
        assert!(w.ended());
    }

    #[test]
    fn a_whole_answer_is_ended_and_its_usage_read_in_its_api() {
        let mut w = Watch::new(Endpoint::Messages);
        w.body(
            br#"{"usage": {"input_tokens": 3, "cache_read_input_tokens": 4, "output_tokens": 2}}"#,
        );
        assert!(w.ended());
        assert_eq!(
            (w.usage().prompt_tokens, w.usage().cached_prompt_tokens),
            (7, 4)
        );
        let mut w = Watch::new(Endpoint::ChatCompletions);
        w.body(br#"{"usage": {"prompt_tokens": 9, "completion_tokens": 1}}"#);
        assert_eq!(
            (w.usage().prompt_tokens, w.usage().completion_tokens),
            (9, 1)
        );
        let mut w = Watch::new(Endpoint::CountTokens);
        w.body(br#"{"input_tokens": 9}"#);
        assert!(w.ended());
        assert_eq!(w.usage().prompt_tokens, 0);
    }
}
