//! The Responses API's event sequence, a pure state machine from engine events: both the
//! SSE frames of a streamed response and the final response object of one that is not.
//!
//! `response.created` and `response.in_progress` open it. Each output item then goes
//! `output_item.added`, its parts and deltas (`content_part.added`, `output_text.delta` or
//! `reasoning_text.delta`, `*.done`, `content_part.done`; a function call's
//! `function_call_arguments.delta` and `.done`), `output_item.done`. `response.completed`,
//! `response.incomplete` (out of tokens) or `response.failed` close it, carrying the
//! whole response. Every event has a `sequence_number`.

use pensieve_engine::{Completion, EngineError, GenerationEvent, Usage};
use serde_json::{json, Value};

use super::output::{output_text, Head, Item, Status};
use crate::encode::{Collector, SseEncoder};
use crate::ids::random_id;

pub struct ResponseEncoder {
    head: Head,
    /// Finished items, then the one being written.
    items: Vec<Item>,
    open: bool,
    sequence: u64,
    status: Status,
    usage: Option<Usage>,
}

impl ResponseEncoder {
    pub fn new(head: Head) -> Self {
        ResponseEncoder {
            head,
            items: Vec::new(),
            open: false,
            sequence: 0,
            status: Status::InProgress,
            usage: None,
        }
    }

    /// The first frames: `response.created`, `response.in_progress`.
    pub fn start(&mut self) -> Vec<String> {
        let response = self.response();
        vec![
            self.frame("response.created", json!({ "response": response })),
            self.frame("response.in_progress", json!({ "response": response })),
        ]
    }

    /// A comment frame that keeps the connection busy during a long prefill.
    pub fn ping() -> String {
        ": ping\n\n".into()
    }

    pub fn is_finished(&self) -> bool {
        self.status != Status::InProgress
    }

    /// The response object as it stands (the whole of it once finished).
    pub fn response(&self) -> Value {
        self.head
            .response(&self.status, &self.items, self.usage.as_ref())
    }

    /// The finished output items.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    pub fn id(&self) -> &str {
        &self.head.id
    }

    pub fn on_event(&mut self, event: GenerationEvent) -> Vec<String> {
        if self.is_finished() {
            return Vec::new();
        }
        let mut frames = Vec::new();
        match event {
            GenerationEvent::PrefillDone { .. } | GenerationEvent::Logprob(_) => {}
            GenerationEvent::Thinking(t) => {
                if !matches!(self.current(), Some(Item::Reasoning { .. })) {
                    self.close(&mut frames);
                    self.open_item(
                        Item::Reasoning {
                            id: random_id("rs_"),
                            text: String::new(),
                        },
                        &mut frames,
                    );
                }
                if let Some(Item::Reasoning { text, .. }) = self.items.last_mut() {
                    text.push_str(&t);
                }
                frames.push(self.delta("response.reasoning_text.delta", &t));
            }
            GenerationEvent::Text(t) => {
                if !matches!(self.current(), Some(Item::Message { .. })) {
                    self.close(&mut frames);
                    self.open_item(
                        Item::Message {
                            id: random_id("msg_"),
                            text: String::new(),
                        },
                        &mut frames,
                    );
                }
                if let Some(Item::Message { text, .. }) = self.items.last_mut() {
                    text.push_str(&t);
                }
                frames.push(self.delta("response.output_text.delta", &t));
            }
            GenerationEvent::ToolCallStart { name } => {
                self.close(&mut frames);
                self.open_item(
                    Item::FunctionCall {
                        id: random_id("fc_"),
                        call_id: random_id("call_"),
                        name,
                        arguments: String::new(),
                    },
                    &mut frames,
                );
            }
            GenerationEvent::ToolCallArguments(a) => {
                if let Some(Item::FunctionCall { arguments, .. }) = self.current_mut() {
                    arguments.push_str(&a);
                    let body = json!({
                        "item_id": self.items[self.items.len() - 1].id(),
                        "output_index": self.items.len() - 1,
                        "delta": a,
                    });
                    frames.push(self.frame("response.function_call_arguments.delta", body));
                }
            }
            GenerationEvent::ToolCallEnd => self.close(&mut frames),
            GenerationEvent::Done(completion) => frames = self.finish(&completion),
            GenerationEvent::Failed(e) => frames = self.error(&e),
        }
        frames
    }

    /// The stream ends with `e`: the item being written is closed, then `response.failed`.
    /// Nothing once the response has ended.
    pub fn error(&mut self, e: &EngineError) -> Vec<String> {
        if self.is_finished() {
            return Vec::new();
        }
        let mut frames = Vec::new();
        self.close(&mut frames);
        self.status = Status::Failed(e.clone());
        let response = self.response();
        frames.push(self.frame("response.failed", json!({ "response": response })));
        frames
    }

    fn finish(&mut self, completion: &Completion) -> Vec<String> {
        let mut frames = Vec::new();
        self.close(&mut frames);
        self.status = Status::of(completion);
        self.usage = Some(completion.usage);
        let kind = match self.status {
            Status::Incomplete => "response.incomplete",
            _ => "response.completed",
        };
        let response = self.response();
        frames.push(self.frame(kind, json!({ "response": response })));
        frames
    }

    fn current(&self) -> Option<&Item> {
        self.items.last().filter(|_| self.open)
    }

    fn current_mut(&mut self) -> Option<&mut Item> {
        self.items.last_mut().filter(|_| self.open)
    }

    /// Start `item`: `output_item.added`, and for text its empty content part.
    fn open_item(&mut self, item: Item, frames: &mut Vec<String>) {
        let index = self.items.len();
        let added = json!({"output_index": index, "item": item.to_json(false)});
        let part = part(&item, "");
        let id = item.id().to_owned();
        self.items.push(item);
        self.open = true;
        frames.push(self.frame("response.output_item.added", added));
        if let Some(part) = part {
            let body =
                json!({"item_id": id, "output_index": index, "content_index": 0, "part": part});
            frames.push(self.frame("response.content_part.added", body));
        }
    }

    /// Finish the item being written, if any: its `*.done` events, then
    /// `output_item.done`.
    fn close(&mut self, frames: &mut Vec<String>) {
        if !self.open {
            return;
        }
        self.open = false;
        let index = self.items.len() - 1;
        if let Item::FunctionCall { arguments, .. } = &mut self.items[index] {
            if arguments.trim().is_empty() {
                *arguments = "{}".into();
            }
        }
        let item = self.items[index].clone();
        let id = item.id();
        match &item {
            Item::Reasoning { text, .. } | Item::Message { text, .. } => {
                let kind = if matches!(item, Item::Reasoning { .. }) {
                    "response.reasoning_text.done"
                } else {
                    "response.output_text.done"
                };
                let mut body =
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text});
                if kind == "response.output_text.done" {
                    body["logprobs"] = json!([]);
                }
                frames.push(self.frame(kind, body));
                let body = json!({"item_id": id, "output_index": index, "content_index": 0,
                                  "part": part(&item, text)});
                frames.push(self.frame("response.content_part.done", body));
            }
            Item::FunctionCall {
                name, arguments, ..
            } => {
                let body = json!({"item_id": id, "output_index": index, "name": name,
                                  "arguments": arguments});
                frames.push(self.frame("response.function_call_arguments.done", body));
            }
        }
        let body = json!({"output_index": index, "item": item.to_json(true)});
        frames.push(self.frame("response.output_item.done", body));
    }

    /// A text delta of the item being written.
    fn delta(&mut self, kind: &str, text: &str) -> String {
        let index = self.items.len() - 1;
        let mut body = json!({"item_id": self.items[index].id(), "output_index": index,
                              "content_index": 0, "delta": text});
        if kind == "response.output_text.delta" {
            body["logprobs"] = json!([]);
        }
        self.frame(kind, body)
    }

    /// One SSE event: `event:` names its type, `data:` carries it with its sequence
    /// number.
    fn frame(&mut self, kind: &str, mut body: Value) -> String {
        body["type"] = json!(kind);
        body["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        format!("event: {kind}\ndata: {body}\n\n")
    }
}

/// The content part of a text item, holding `text`; None for a function call.
fn part(item: &Item, text: &str) -> Option<Value> {
    match item {
        Item::Reasoning { .. } => Some(json!({"type": "reasoning_text", "text": text})),
        Item::Message { .. } => Some(output_text(text)),
        Item::FunctionCall { .. } => None,
    }
}

impl SseEncoder for ResponseEncoder {
    fn start(&mut self) -> Vec<String> {
        ResponseEncoder::start(self)
    }

    fn on_event(&mut self, event: GenerationEvent) -> Vec<String> {
        ResponseEncoder::on_event(self, event)
    }

    fn error(&mut self, error: &EngineError) -> Vec<String> {
        ResponseEncoder::error(self, error)
    }

    fn ping(&self) -> String {
        ResponseEncoder::ping()
    }

    fn is_finished(&self) -> bool {
        ResponseEncoder::is_finished(self)
    }
}

/// A response that is not streamed is the encoder's last state: the events go through
/// it, and their frames are dropped.
impl Collector for ResponseEncoder {
    type Body = Value;

    fn push(&mut self, event: GenerationEvent) {
        ResponseEncoder::on_event(self, event);
    }

    fn finish(mut self, completion: Completion) -> Value {
        ResponseEncoder::on_event(&mut self, GenerationEvent::Done(completion));
        self.response()
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
