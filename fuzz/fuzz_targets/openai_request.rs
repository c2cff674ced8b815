//! An OpenAI Chat Completions, Completions or Responses body: the lenient parse, the checks
//! and the translation into the neutral request (a Responses one after a stored
//! conversation too), then the engine's validation of it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pensieve_engine::{Message, Role, SamplingDefaults};
use pensieve_protocol::openai::responses::parse_responses;
use pensieve_protocol::openai::{parse_chat, parse_completion};

#[path = "common_engine.rs"]
mod common_engine;

fuzz_target!(|body: &[u8]| {
    if let Ok(parsed) = parse_chat(body) {
        let _ = (
            parsed.is_stream(),
            parsed.include_usage(),
            parsed.wants_logprobs(),
        );
        if let Ok(request) = parsed.into_generate() {
            common_engine::validate(&request);
        }
    }
    if let Ok(parsed) = parse_completion(body) {
        let _ = (
            parsed.is_stream(),
            parsed.include_usage(),
            parsed.wants_logprobs(),
        );
        if let Ok(request) = parsed.into_generate() {
            common_engine::validate(&request);
        }
    }
    if let Ok(parsed) = parse_responses(body) {
        let _ = parsed.is_stream();
        let previous = [Message::text(Role::User, "earlier")];
        let stored = parsed.previous_response_id.is_some().then_some(&previous[..]);
        if let Ok(prepared) = parsed.prepare(&SamplingDefaults::default(), stored) {
            common_engine::validate(&prepared.request);
        }
    }
});
