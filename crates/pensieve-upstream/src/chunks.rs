//! A streamed Chat Completions answer (`chat.completion.chunk` events, then `[DONE]`) back
//! into the engine's events, which every API edge already turns into its own wire format.
//!
//! What the servers send differs in the details this reads past: reasoning comes as
//! `reasoning_content` (llama-server, vLLM, SGLang) or `reasoning` (vLLM's newer name,
//! Ollama); a tool call's id and name come in its first fragment, its arguments in pieces;
//! the usage comes in a last chunk without choices; vLLM names the stop string that ended
//! the answer in `stop_reason`.

use pensieve_engine::{Completion, FinishReason, GenerationEvent, Timings, Usage};
use serde_json::Value;

use crate::UpstreamError;

/// Reads one answer's chunks in order.
#[derive(Debug, Default)]
pub struct ChunkReader {
    /// The upstream's index of the tool call whose arguments are arriving.
    open_call: Option<u64>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    done: bool,
}

impl ChunkReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// The events one SSE `data` field makes: a chunk, an error, or `[DONE]` (which ends
    /// the answer with [`GenerationEvent::Done`]).
    pub fn data(&mut self, data: &str) -> Result<Vec<GenerationEvent>, UpstreamError> {
        if self.done {
            return Ok(Vec::new());
        }
        if data.trim() == "[DONE]" {
            return self.end();
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|e| UpstreamError::Malformed(format!("{e} in {}", clip(data))))?;
        if let Some(error) = chunk.get("error") {
            return Err(upstream_error(error));
        }
        let mut out = Vec::new();
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(read_usage(usage));
        }
        let choices = chunk.get("choices").and_then(Value::as_array);
        // Only the first choice: Pensieve asks for one.
        let Some(choice) = choices.and_then(|c| c.first()) else {
            return Ok(out);
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        for key in ["reasoning_content", "reasoning"] {
            if let Some(text) = delta
                .get(key)
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                out.push(GenerationEvent::Thinking(text.to_owned()));
            }
        }
        if let Some(text) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.close_call(&mut out);
            out.push(GenerationEvent::Text(text.to_owned()));
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.call_fragment(call, &mut out)?;
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.close_call(&mut out);
            self.finish = Some(finish_reason(reason, choice.get("stop_reason")));
        }
        Ok(out)
    }

    /// The body ended: without `[DONE]`, the answer counts as whole if its finish reason
    /// came (some servers end there), else the stream was cut.
    pub fn end_of_body(&mut self) -> Result<Vec<GenerationEvent>, UpstreamError> {
        if self.done {
            return Ok(Vec::new());
        }
        if self.finish.is_none() {
            return Err(UpstreamError::EndedEarly);
        }
        self.end()
    }

    fn end(&mut self) -> Result<Vec<GenerationEvent>, UpstreamError> {
        let Some(reason) = self.finish.take() else {
            return Err(UpstreamError::Malformed(
                "[DONE] before a finish reason".into(),
            ));
        };
        self.done = true;
        let mut out = Vec::new();
        self.close_call(&mut out);
        out.push(GenerationEvent::Done(Completion {
            reason,
            usage: self.usage.unwrap_or_default(),
            timings: Timings::default(),
        }));
        Ok(out)
    }

    fn call_fragment(
        &mut self,
        call: &Value,
        out: &mut Vec<GenerationEvent>,
    ) -> Result<(), UpstreamError> {
        // Servers that send one call at a time may leave the index out.
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let function = call.get("function").unwrap_or(&Value::Null);
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty());
        if self.open_call != Some(index) {
            let Some(name) = name else {
                return Err(UpstreamError::Malformed(format!(
                    "tool call {index} began without a name"
                )));
            };
            self.close_call(out);
            self.open_call = Some(index);
            out.push(GenerationEvent::ToolCallStart {
                name: name.to_owned(),
            });
        }
        match function.get("arguments") {
            Some(Value::String(part)) if !part.is_empty() => {
                out.push(GenerationEvent::ToolCallArguments(part.clone()));
            }
            // A server that sends the arguments as an object, whole.
            Some(object @ Value::Object(_)) => {
                out.push(GenerationEvent::ToolCallArguments(object.to_string()));
            }
            _ => {}
        }
        Ok(())
    }

    fn close_call(&mut self, out: &mut Vec<GenerationEvent>) {
        if self.open_call.take().is_some() {
            out.push(GenerationEvent::ToolCallEnd);
        }
    }
}

fn finish_reason(reason: &str, stop: Option<&Value>) -> FinishReason {
    match reason {
        "length" => FinishReason::MaxTokens,
        "tool_calls" | "function_call" => FinishReason::ToolUse,
        "stop" => match stop.and_then(Value::as_str) {
            Some(s) => FinishReason::StopSequence(s.to_owned()),
            None => FinishReason::EndOfTurn,
        },
        _ => FinishReason::EndOfTurn,
    }
}

pub(crate) fn read_usage(usage: &Value) -> Usage {
    let count = |v: Option<&Value>| {
        v.and_then(Value::as_u64)
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
    };
    let prompt_tokens = count(usage.get("prompt_tokens"));
    Usage {
        prompt_tokens,
        cached_prompt_tokens: count(usage.pointer("/prompt_tokens_details/cached_tokens"))
            .min(prompt_tokens),
        cache_creation_tokens: 0,
        completion_tokens: count(usage.get("completion_tokens")),
    }
}

/// An error object, as OpenAI-compatible servers send one in a stream or a body.
pub fn upstream_error(error: &Value) -> UpstreamError {
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| error.as_str().map(str::to_owned))
        .unwrap_or_else(|| error.to_string());
    let status = error
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..600).contains(c))
        .unwrap_or(502);
    UpstreamError::Upstream { status, message }
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(chunks: &[Value]) -> Result<Vec<GenerationEvent>, UpstreamError> {
        let mut reader = ChunkReader::new();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(reader.data(&c.to_string())?);
        }
        out.extend(reader.data("[DONE]")?);
        Ok(out)
    }

    fn delta(d: Value) -> Value {
        json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": d, "finish_reason": null}]})
    }

    fn finish(reason: &str) -> Value {
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
    }

    #[test]
    fn text_reasoning_and_usage_with_its_cached_share() {
        let events = read(&[
            delta(json!({"role": "assistant", "content": ""})),
            delta(json!({"reasoning_content": "Think."})),
            delta(json!({"reasoning": " More."})),
            delta(json!({"content": "Hello"})),
            delta(json!({"content": " there"})),
            finish("stop"),
            json!({"choices": [], "usage": {"prompt_tokens": 1200, "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 1024}}}),
        ])
        .unwrap();
        let texts: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                GenerationEvent::Thinking(t) => Some(format!("think:{t}")),
                GenerationEvent::Text(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(texts, ["think:Think.", "think: More.", "Hello", " there"]);
        let Some(GenerationEvent::Done(done)) = events.last() else {
            panic!("{events:?}")
        };
        assert_eq!(done.reason, FinishReason::EndOfTurn);
        assert_eq!(
            (
                done.usage.prompt_tokens,
                done.usage.cached_prompt_tokens,
                done.usage.completion_tokens
            ),
            (1200, 1024, 3)
        );
    }

    #[test]
    fn two_tool_calls_in_pieces_open_and_close_in_turn() {
        let events = read(&[
            delta(json!({"content": "Let me check."})),
            delta(
                json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]}),
            ),
            delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]})),
            delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]})),
            delta(json!({"tool_calls": [{"index": 1, "id": "call_b",
                "function": {"name": "get_time", "arguments": "{}"}}]})),
            finish("tool_calls"),
        ])
        .unwrap();
        let shape: Vec<String> = events
            .iter()
            .map(|e| match e {
                GenerationEvent::Text(t) => format!("text {t}"),
                GenerationEvent::ToolCallStart { name } => format!("start {name}"),
                GenerationEvent::ToolCallArguments(a) => format!("args {a}"),
                GenerationEvent::ToolCallEnd => "end".into(),
                GenerationEvent::Done(c) => format!("done {:?}", c.reason),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            shape,
            [
                "text Let me check.",
                "start get_weather",
                "args {\"city\": ",
                "args \"Paris\"}",
                "end",
                "start get_time",
                "args {}",
                "end",
                "done ToolUse",
            ]
        );
    }

    #[test]
    fn finish_reasons_and_a_named_stop_string() {
        let reason = |chunk: Value| match read(&[chunk]).unwrap().pop() {
            Some(GenerationEvent::Done(c)) => c.reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(reason(finish("length")), FinishReason::MaxTokens);
        assert_eq!(reason(finish("content_filter")), FinishReason::EndOfTurn);
        assert_eq!(
            reason(
                json!({"choices": [{"delta": {}, "finish_reason": "stop", "stop_reason": "</a>"}]})
            ),
            FinishReason::StopSequence("</a>".into())
        );
        assert_eq!(
            reason(
                json!({"choices": [{"delta": {}, "finish_reason": "stop", "stop_reason": 151645}]})
            ),
            FinishReason::EndOfTurn,
            "vLLM gives a stop token's id as a number"
        );
    }

    #[test]
    fn errors_malformed_chunks_and_cut_streams_are_errors() {
        let err =
            read(&[json!({"error": {"message": "context too long", "code": 400}})]).unwrap_err();
        assert_eq!(
            err,
            UpstreamError::Upstream {
                status: 400,
                message: "context too long".into()
            }
        );
        let mut reader = ChunkReader::new();
        assert!(matches!(
            reader.data("{\"choices\": [oops"),
            Err(UpstreamError::Malformed(_))
        ));
        // A body that ends before the finish reason was cut; one that ends after it is whole.
        let mut reader = ChunkReader::new();
        reader
            .data(&delta(json!({"content": "Hel"})).to_string())
            .unwrap();
        assert_eq!(reader.end_of_body().unwrap_err(), UpstreamError::EndedEarly);
        let mut reader = ChunkReader::new();
        reader.data(&finish("stop").to_string()).unwrap();
        assert!(matches!(
            reader.end_of_body().unwrap().pop(),
            Some(GenerationEvent::Done(_))
        ));
        assert!(
            reader.data("[DONE]").unwrap().is_empty(),
            "nothing after the end"
        );
        // [DONE] with no finish reason before it.
        assert!(matches!(
            ChunkReader::new().data("[DONE]"),
            Err(UpstreamError::Malformed(_))
        ));
        // A call that starts without a name.
        assert!(matches!(
            read(&[delta(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]})
            )]),
            Err(UpstreamError::Malformed(_))
        ));
    }
}
