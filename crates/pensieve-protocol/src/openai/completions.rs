//! The legacy `/v1/completions` API: a prompt continued as it is (no chat template), its
//! response, and its SSE encoder (a pure state machine, as for chat).

use std::collections::HashMap;

use pensieve_engine::{
    Completion, EngineError, GenerateRequest, GenerationEvent, RawPrompt, SamplingDefaults,
    TokenLogprob,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::OpenAiError;
use super::request::CommonParams;
use super::response::{finish_reason, ChatUsage};
use super::stream::{error_frames, frame, StreamHead};
use crate::encode::{Collector, SseEncoder};

/// OpenAI's default `max_tokens` for completions.
const DEFAULT_MAX_TOKENS: u32 = 16;
/// OpenAI's limit on `logprobs` here.
const MAX_LOGPROBS: u32 = 5;

/// The body of `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<PromptParam>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(flatten)]
    pub common: CommonParams,
    #[serde(default)]
    pub best_of: Option<u32>,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(default)]
    pub suffix: Option<String>,
    /// How many alternatives to report per token (0-5); the token's own always comes.
    #[serde(default)]
    pub logprobs: Option<u32>,
}

/// A prompt: text or token ids, alone or as a list of one.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptParam {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<i32>),
    TokenLists(Vec<Vec<i32>>),
}

/// Parse a body; a value of the wrong type is refused with its path as `param`.
pub fn parse_completion(bytes: &[u8]) -> Result<CompletionRequest, OpenAiError> {
    super::request::parse_body(bytes)
}

impl CompletionRequest {
    pub fn is_stream(&self) -> bool {
        self.common.is_stream()
    }

    pub fn include_usage(&self) -> bool {
        self.common.include_usage()
    }

    pub fn wants_logprobs(&self) -> bool {
        self.logprobs.is_some()
    }

    pub fn into_generate(self) -> Result<GenerateRequest, OpenAiError> {
        self.into_generate_with(&SamplingDefaults::default())
    }

    /// As [`CompletionRequest::into_generate`], the sampling settings the request leaves
    /// out taken from `defaults` (the server's).
    pub fn into_generate_with(
        self,
        defaults: &SamplingDefaults,
    ) -> Result<GenerateRequest, OpenAiError> {
        let model = self
            .model
            .ok_or_else(|| OpenAiError::invalid(Some("model"), "model: Field required"))?;
        let one_only = |what: &str| {
            OpenAiError::invalid(
                Some("prompt"),
                format!("prompt: one {what} per request is supported"),
            )
        };
        let prompt = match self.prompt {
            None => {
                return Err(OpenAiError::invalid(
                    Some("prompt"),
                    "prompt: Field required",
                ))
            }
            Some(PromptParam::Text(t)) => RawPrompt::Text(t),
            Some(PromptParam::Texts(mut v)) if v.len() == 1 => RawPrompt::Text(v.remove(0)),
            Some(PromptParam::Texts(_)) => return Err(one_only("prompt")),
            Some(PromptParam::Tokens(t)) => RawPrompt::Tokens(t),
            Some(PromptParam::TokenLists(mut v)) if v.len() == 1 => RawPrompt::Tokens(v.remove(0)),
            Some(PromptParam::TokenLists(_)) => return Err(one_only("prompt")),
        };
        let empty = match &prompt {
            RawPrompt::Text(t) => t.is_empty(),
            RawPrompt::Tokens(t) => t.is_empty(),
        };
        if empty {
            return Err(OpenAiError::invalid(
                Some("prompt"),
                "prompt: must not be empty",
            ));
        }
        self.common.check()?;
        for (name, refused) in [
            ("best_of", self.best_of.is_some_and(|n| n != 1)),
            ("echo", self.echo == Some(true)),
            (
                "suffix",
                self.suffix.as_ref().is_some_and(|s| !s.is_empty()),
            ),
        ] {
            if refused {
                return Err(OpenAiError::invalid(
                    Some(name),
                    format!("{name}: not supported by this server"),
                ));
            }
        }
        if let Some(n) = self.logprobs.filter(|n| *n > MAX_LOGPROBS) {
            return Err(OpenAiError::invalid(
                Some("logprobs"),
                format!("logprobs: must be between 0 and {MAX_LOGPROBS}, got {n}"),
            ));
        }
        // OpenAI takes 0 here only with `echo`, which this server refuses.
        super::request::at_least_one_token("max_tokens", self.max_tokens)?;
        let max_tokens = self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        let mut request = GenerateRequest::new(model, Vec::new(), max_tokens);
        request.raw_prompt = Some(prompt);
        request.sampling = self
            .common
            .sampling(self.logprobs.map(|n| n as usize), defaults)?;
        request.stop_sequences = self.common.stop_sequences();
        Ok(request)
    }
}

/// The legacy logprobs object: parallel lists, one entry per token.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LegacyLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<HashMap<String, f32>>,
    pub text_offset: Vec<usize>,
    /// Where the next token's text starts in the completion.
    #[serde(skip)]
    next_offset: usize,
}

impl LegacyLogprobs {
    fn push(&mut self, t: &TokenLogprob) {
        let entry = super::logprobs::LogprobEntry::from(t);
        self.tokens.push(entry.token);
        self.token_logprobs.push(entry.logprob);
        self.top_logprobs.push(
            entry
                .top_logprobs
                .into_iter()
                .map(|t| (t.token, t.logprob))
                .collect(),
        );
        self.text_offset.push(self.next_offset);
        self.next_offset += t.token.len();
    }

    /// The entries so far, for one chunk; the offsets go on from there.
    fn take(&mut self) -> Option<LegacyLogprobs> {
        if self.tokens.is_empty() {
            return None;
        }
        let next_offset = self.next_offset;
        let taken = std::mem::take(self);
        self.next_offset = next_offset;
        Some(taken)
    }
}

/// Gathers a completion's text (and logprobs, when asked for).
#[derive(Debug, Default)]
pub struct TextCollector {
    text: String,
    logprobs: Option<LegacyLogprobs>,
}

impl TextCollector {
    pub fn new(logprobs: bool) -> Self {
        TextCollector {
            logprobs: logprobs.then(LegacyLogprobs::default),
            ..TextCollector::default()
        }
    }

    pub fn push(&mut self, event: &GenerationEvent) {
        match event {
            GenerationEvent::Text(t) => self.text.push_str(t),
            GenerationEvent::Logprob(t) => {
                if let Some(l) = self.logprobs.as_mut() {
                    l.push(t);
                }
            }
            _ => {}
        }
    }

    /// The response body.
    pub fn into_response(
        self,
        id: String,
        model: String,
        created: u64,
        completion: &Completion,
    ) -> Value {
        json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "text": self.text,
                "logprobs": self.logprobs,
                "finish_reason": finish_reason(&completion.reason),
            }],
            "usage": ChatUsage::from(completion.usage),
        })
    }
}

/// The `/v1/completions` SSE encoder.
pub struct TextChunkEncoder {
    head: StreamHead,
    logprobs: Option<LegacyLogprobs>,
    finished: bool,
}

impl TextChunkEncoder {
    pub fn new(
        id: String,
        model: String,
        created: u64,
        include_usage: bool,
        logprobs: bool,
    ) -> Self {
        TextChunkEncoder {
            head: StreamHead {
                id,
                object: "text_completion",
                model,
                created,
                include_usage,
            },
            logprobs: logprobs.then(LegacyLogprobs::default),
            finished: false,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    pub fn on_event(&mut self, event: GenerationEvent) -> Vec<String> {
        if self.finished {
            return Vec::new();
        }
        match event {
            GenerationEvent::Text(t) => vec![self.chunk(&t, None)],
            GenerationEvent::Logprob(t) => {
                if let Some(l) = self.logprobs.as_mut() {
                    l.push(&t);
                }
                Vec::new()
            }
            GenerationEvent::Done(completion) => {
                self.finished = true;
                let last = self.chunk("", Some(finish_reason(&completion.reason)));
                self.head.closing(last, completion.usage)
            }
            GenerationEvent::Failed(e) => self.error(&e),
            _ => Vec::new(),
        }
    }

    pub fn error(&mut self, e: &EngineError) -> Vec<String> {
        self.finished = true;
        error_frames(e)
    }

    fn chunk(&mut self, text: &str, finish: Option<&str>) -> String {
        // Logprobs go with the text that follows them.
        let logprobs = json!(self.logprobs.as_mut().and_then(LegacyLogprobs::take));
        let choice =
            json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish});
        frame(&self.head.chunk(vec![choice]))
    }
}

impl SseEncoder for TextChunkEncoder {
    /// Legacy completions open with the first text chunk: nothing to send before it.
    fn start(&mut self) -> Vec<String> {
        Vec::new()
    }

    fn on_event(&mut self, event: GenerationEvent) -> Vec<String> {
        TextChunkEncoder::on_event(self, event)
    }

    fn error(&mut self, error: &EngineError) -> Vec<String> {
        TextChunkEncoder::error(self, error)
    }

    fn ping(&self) -> String {
        ": ping\n\n".into()
    }

    fn is_finished(&self) -> bool {
        TextChunkEncoder::is_finished(self)
    }
}

/// A whole non-streamed text completion: its text, gathered, under the reply's id, model
/// and creation time.
pub struct CompletionCollector {
    id: String,
    /// The name the client asked for, echoed back.
    model: String,
    created: u64,
    text: TextCollector,
}

impl CompletionCollector {
    pub fn new(id: String, model: String, created: u64, logprobs: bool) -> Self {
        CompletionCollector {
            id,
            model,
            created,
            text: TextCollector::new(logprobs),
        }
    }
}

impl Collector for CompletionCollector {
    type Body = Value;

    fn push(&mut self, event: GenerationEvent) {
        self.text.push(&event);
    }

    fn finish(self, completion: Completion) -> Value {
        self.text
            .into_response(self.id, self.model, self.created, &completion)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pensieve_engine::{FinishReason, Timings, Usage};

    fn request(body: Value) -> Result<GenerateRequest, OpenAiError> {
        parse_completion(body.to_string().as_bytes())?.into_generate()
    }

    #[test]
    fn prompts_and_refusals() {
        let r = request(json!({"model": "m", "prompt": "Once upon"})).unwrap();
        assert_eq!(r.raw_prompt, Some(RawPrompt::Text("Once upon".into())));
        assert_eq!(r.max_tokens, DEFAULT_MAX_TOKENS);
        let r = request(json!({"model": "m", "prompt": [[1, 2, 3]], "logprobs": 2})).unwrap();
        assert_eq!(r.raw_prompt, Some(RawPrompt::Tokens(vec![1, 2, 3])));
        assert_eq!(r.sampling.logprobs, Some(2));
        for (key, value) in [
            ("n", json!(2)),
            ("echo", json!(true)),
            ("suffix", json!("x")),
            ("logprobs", json!(6)),
            ("prompt", json!(["a", "b"])),
            ("prompt", json!("")),
        ] {
            let mut body = json!({"model": "m", "prompt": "x"});
            body[key] = value;
            assert_eq!(
                request(body).unwrap_err().param.as_deref(),
                Some(key),
                "{key}"
            );
        }
    }

    #[test]
    fn text_chunks_with_logprobs_then_finish() {
        let mut e = TextChunkEncoder::new("cmpl-1".into(), "m".into(), 3, false, true);
        let logprob = TokenLogprob {
            token: b"Hi".to_vec(),
            logprob: -0.1,
            top: vec![(b"Hi".to_vec(), -0.1)],
        };
        assert!(e.on_event(GenerationEvent::Logprob(logprob)).is_empty());
        let frames = e.on_event(GenerationEvent::Text("Hi".into()));
        let chunk: Value =
            serde_json::from_str(&frames[0]["data: ".len()..frames[0].len() - 2]).unwrap();
        assert_eq!(chunk["object"], "text_completion");
        assert_eq!(chunk["choices"][0]["text"], "Hi");
        assert_eq!(chunk["choices"][0]["logprobs"]["tokens"], json!(["Hi"]));
        assert_eq!(chunk["choices"][0]["logprobs"]["text_offset"], json!([0]));
        let end = e.on_event(GenerationEvent::Done(Completion {
            reason: FinishReason::MaxTokens,
            usage: Usage::default(),
            timings: Timings::default(),
        }));
        assert!(end[0].contains("\"finish_reason\":\"length\""));
        assert_eq!(
            end.last().map(String::as_str),
            Some(super::super::stream::DONE)
        );
    }
}
