//! An Anthropic Messages (or count_tokens) body, as `/v1/messages` takes it: the lenient
//! parse, the checks and the translation into the neutral request, then the engine's
//! validation of it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pensieve_protocol::anthropic::{parse_count_tokens, parse_messages, strip_billing_line};

#[path = "common_engine.rs"]
mod common_engine;

fuzz_target!(|body: &[u8]| {
    if let Ok(parsed) = parse_messages(body) {
        let _ = parsed.asks_for_caching();
        let _ = parsed.is_stream();
        if let Ok(request) = parsed.into_generate() {
            common_engine::validate(&request);
        }
    }
    if let Ok(parsed) = parse_count_tokens(body) {
        let _ = parsed.into_generate();
    }
    // The upstream relay edits the body as JSON before passing it on.
    if let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(body) {
        strip_billing_line(&mut value);
    }
});
