//! The HTTP side of `pensieve chat`: the server's API (listing models, streaming
//! `/v1/messages`), its error bodies, and the parsing of the server-sent events of a stream.

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

/// The server's HTTP API.
pub(super) struct Api {
    client: reqwest::blocking::Client,
    pub(super) base_url: String,
    api_key: Option<String>,
}

impl Api {
    pub(super) fn new(base_url: &str, api_key: Option<String>) -> anyhow::Result<Api> {
        let loopback = reqwest::Url::parse(base_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .is_some_and(|h| {
                let h = h.trim_start_matches('[').trim_end_matches(']');
                h.eq_ignore_ascii_case("localhost")
                    || h.parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
        // No overall timeout: a long prompt's prefill can take minutes (pings keep it going).
        let mut builder = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(None);
        if loopback {
            builder = builder.no_proxy();
        }
        Ok(Api {
            client: builder.build().context("cannot create an HTTP client")?,
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base_url))
            .header("anthropic-version", "2023-06-01");
        if let Some(key) = &self.api_key {
            request = request.header("x-api-key", key);
        }
        request
    }

    /// The first id of GET /v1/models.
    pub(super) fn first_model(&self) -> anyhow::Result<String> {
        let response = self
            .request(reqwest::Method::GET, "/v1/models")
            .timeout(Duration::from_secs(30))
            .send()
            .with_context(|| format!("cannot list the models of {}", self.base_url))?;
        let status = response.status();
        let body = response.text().unwrap_or_default();
        if !status.is_success() {
            bail!("GET /v1/models: {}", error_message(status, &body));
        }
        let models: Value = serde_json::from_str(&body).context("GET /v1/models: not JSON")?;
        models["data"][0]["id"]
            .as_str()
            .map(str::to_owned)
            .context("the server lists no model; pass --model NAME")
    }

    /// POST /v1/messages with `stream: true` on a thread of its own, its events sent on the
    /// returned channel; dropping the receiver closes the response at the next event.
    pub(super) fn stream(&self, body: Value) -> mpsc::Receiver<StreamEvent> {
        let request = self
            .request(reqwest::Method::POST, "/v1/messages")
            .json(&body);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let event = match request.send() {
                Err(e) => StreamEvent::Error(format!("{:#}", anyhow::Error::from(e))),
                Ok(response) if !response.status().is_success() => {
                    let status = response.status();
                    let body = response.text().unwrap_or_default();
                    StreamEvent::Error(error_message(status, &body))
                }
                Ok(response) => match read_sse(BufReader::new(response), &tx) {
                    Ok(true) => StreamEvent::Done,
                    Ok(false) => return, // the receiver is gone
                    Err(e) => StreamEvent::Error(format!("the stream broke: {e}")),
                },
            };
            let _ = tx.send(event);
        });
        rx
    }
}

/// The API's `error.message`, else the body, with the status.
fn error_message(status: reqwest::StatusCode, body: &str) -> String {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().chars().take(500).collect());
    if message.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("{message} (HTTP {})", status.as_u16())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum StreamEvent {
    Text(String),
    /// `message_delta`: output tokens so far, and why it stopped.
    Delta {
        output_tokens: Option<u64>,
        stop_reason: Option<String>,
    },
    Error(String),
    Done,
}

/// Read server-sent events, sending what matters; Ok(false) once the receiver is gone,
/// Ok(true) at `message_stop`, an error event or the end of the body.
fn read_sse(mut reader: impl BufRead, tx: &mpsc::Sender<StreamEvent>) -> std::io::Result<bool> {
    let mut event = String::new();
    let mut data = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        let at_end = reader.read_line(&mut line)? == 0;
        let trimmed = line.trim_end_matches(['\r', '\n']);
        if at_end || trimmed.is_empty() {
            if !data.is_empty() {
                match parse_event(&event, &data) {
                    Parsed::Send(e) => {
                        let last = matches!(e, StreamEvent::Error(_));
                        if tx.send(e).is_err() {
                            return Ok(false);
                        }
                        if last {
                            return Ok(true);
                        }
                    }
                    Parsed::Stop => return Ok(true),
                    Parsed::Skip => {}
                }
            }
            event.clear();
            data.clear();
            if at_end {
                return Ok(true);
            }
            continue;
        }
        if trimmed.starts_with(':') {
            continue;
        }
        let (field, value) = trimmed.split_once(':').unwrap_or((trimmed, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = value.to_string(),
            "data" => {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            _ => {}
        }
    }
}

enum Parsed {
    Send(StreamEvent),
    Stop,
    Skip,
}

fn parse_event(event: &str, data: &str) -> Parsed {
    let Ok(value) = serde_json::from_str::<Value>(data) else {
        return Parsed::Skip;
    };
    let kind = if event.is_empty() {
        value["type"].as_str().unwrap_or_default()
    } else {
        event
    };
    match kind {
        "content_block_delta" if value["delta"]["type"] == "text_delta" => {
            Parsed::Send(StreamEvent::Text(
                value["delta"]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ))
        }
        // Sent on, so that a Ctrl-C is noticed while the model thinks or prefills.
        "content_block_delta" | "ping" => Parsed::Send(StreamEvent::Text(String::new())),
        "message_delta" => Parsed::Send(StreamEvent::Delta {
            output_tokens: value["usage"]["output_tokens"].as_u64(),
            stop_reason: value["delta"]["stop_reason"].as_str().map(str::to_owned),
        }),
        "error" => Parsed::Send(StreamEvent::Error(
            value["error"]["message"]
                .as_str()
                .map_or_else(|| data.to_owned(), str::to_owned),
        )),
        "message_stop" => Parsed::Stop,
        _ => Parsed::Skip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events_of(sse: &str) -> (Vec<StreamEvent>, bool) {
        let (tx, rx) = mpsc::channel();
        let ended = read_sse(sse.as_bytes(), &tx).unwrap();
        drop(tx);
        (rx.into_iter().collect(), ended)
    }

    #[test]
    fn sse_events() {
        let sse = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\n\
                   event: ping\ndata: {\"type\": \"ping\"}\n\n\
                   : a comment\n\
                   event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hmm\"}}\r\n\r\n\
                   event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n\
                   event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}\n\n\
                   event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n\
                   event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n\
                   event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"never\"}}\n\n";
        let (events, ended) = events_of(sse);
        assert!(ended);
        let text: String = events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "Hello");
        assert!(events.contains(&StreamEvent::Delta {
            output_tokens: Some(2),
            stop_reason: Some("end_turn".into())
        }));
    }

    #[test]
    fn sse_error_event() {
        let sse = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
                   event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"shutting down\"}}\n\n";
        let (events, _) = events_of(sse);
        assert_eq!(
            events,
            [
                StreamEvent::Text("Hi".into()),
                StreamEvent::Error("shutting down".into())
            ]
        );
    }

    #[test]
    fn error_messages() {
        let status = reqwest::StatusCode::BAD_REQUEST;
        let body = r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 9 tokens > 5 maximum"}}"#;
        assert_eq!(
            error_message(status, body),
            "prompt is too long: 9 tokens > 5 maximum (HTTP 400)"
        );
        assert_eq!(
            error_message(reqwest::StatusCode::BAD_GATEWAY, "upstream down\n"),
            "upstream down (HTTP 502)"
        );
        assert_eq!(
            error_message(reqwest::StatusCode::BAD_GATEWAY, ""),
            "HTTP 502 Bad Gateway"
        );
    }
}
