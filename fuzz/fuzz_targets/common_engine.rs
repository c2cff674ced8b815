// Shared by the request targets: one engine over the scripted backend (byte tokenizer, no
// model), built once, whose `validate` runs what a server does with a parsed request before
// it queues it: the chat template, tokenization, the context check and the tool grammars.
use std::sync::{Arc, OnceLock};

use pensieve_engine::testing::{model_info, ByteTokenizer, ScriptedRunner};
use pensieve_engine::{Engine, EngineConfig, GenerateRequest};

pub fn validate(request: &GenerateRequest) {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    let engine = ENGINE.get_or_init(|| {
        Engine::start(
            model_info(32768),
            Arc::new(ByteTokenizer),
            Box::new(ScriptedRunner::new("")),
            EngineConfig::default(),
        )
        .expect("the scripted engine starts")
    });
    // Refusals are fine; a panic or a hang is the bug.
    let _ = engine.validate(request);
}
