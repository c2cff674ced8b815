//! What the engine says back while it works on a request.
//!
//! Each protocol edge turns these into its own wire events (SSE or one JSON body).

use std::time::Duration;

use crate::{EngineError, ValidRequest};

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// The model emitted an end-of-generation token.
    EndOfTurn,
    /// The request's `max_tokens` was reached.
    MaxTokens,
    /// One of the request's stop sequences appeared; it is cut from the output.
    StopSequence(String),
    /// The context window filled up before `max_tokens` was reached.
    ContextWindow,
    /// The model ended its turn after calling tools.
    ToolUse,
    /// The client went away or the server is shutting down.
    Cancelled,
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// All prompt tokens, cached or not.
    pub prompt_tokens: u32,
    /// Prompt tokens whose KV was already in the cache and was not computed again.
    pub cached_prompt_tokens: u32,
    /// Prompt tokens computed by this request and stored in the prefix cache, when the
    /// request asked for caching (0 otherwise).
    pub cache_creation_tokens: u32,
    pub completion_tokens: u32,
}

impl Usage {
    /// The prompt's split for `request` when `cached` of its tokens come from the prefix
    /// cache (no completion tokens yet). The one rule for both the split announced when
    /// the request is queued and the final one: what counts as cache creation depends on
    /// the request alone, so it is read from it here.
    pub fn for_prompt(request: &ValidRequest, cached: usize) -> Usage {
        let prompt_tokens = u32::try_from(request.prompt.len()).unwrap_or(u32::MAX);
        let cached = u32::try_from(cached).unwrap_or(u32::MAX).min(prompt_tokens);
        Usage {
            prompt_tokens,
            cached_prompt_tokens: cached,
            // What the request stores up to its last cache breakpoint (the whole prompt
            // when the client asked for caching without placing one), as Anthropic
            // counts it; the rest of the uncached prompt is plain input.
            cache_creation_tokens: if request.cache_requested {
                let until = request
                    .cache_points
                    .last()
                    .map_or(prompt_tokens, |p| u32::try_from(p.at).unwrap_or(u32::MAX))
                    .min(prompt_tokens);
                until.saturating_sub(cached)
            } else {
                0
            },
            completion_tokens: 0,
        }
    }

    /// Prompt tokens that had to be computed.
    pub fn uncached_prompt_tokens(&self) -> u32 {
        self.prompt_tokens - self.cached_prompt_tokens
    }

    /// Prompt tokens neither read from nor reported as written to the cache (Anthropic's
    /// `input_tokens`: the three add up to the prompt).
    pub fn plain_prompt_tokens(&self) -> u32 {
        self.uncached_prompt_tokens() - self.cache_creation_tokens
    }
}

/// Where the time of one request went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// From submission until the engine picked the request up.
    pub queued: Duration,
    pub prefill: Duration,
    pub decode: Duration,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
}

/// A sampled token's log-probability under the model, with the most likely tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's bytes (a piece of a UTF-8 character, perhaps).
    pub token: Vec<u8>,
    pub logprob: f32,
    /// The most likely tokens at this position, most likely first.
    pub top: Vec<(Vec<u8>, f32)>,
}

/// One message from the engine to the request's owner.
#[derive(Debug)]
pub enum GenerationEvent {
    /// The prompt is in the cache; `cached_prompt_tokens` of it were reused.
    PrefillDone {
        cached_prompt_tokens: u32,
    },
    /// The log-probability of the token just sampled (when the request asked for them),
    /// sent before the text it makes.
    Logprob(TokenLogprob),
    /// Newly generated text (whole UTF-8 characters, stop sequences already cut).
    Text(String),
    /// Reasoning the model wrote before its answer.
    Thinking(String),
    /// A tool call begins.
    ToolCallStart {
        name: String,
    },
    /// Part of the current call's arguments: a call's fragments make one JSON object.
    ToolCallArguments(String),
    ToolCallEnd,
    /// Generation ended normally; nothing follows.
    Done(Completion),
    /// Generation failed; nothing follows.
    Failed(EngineError),
}
