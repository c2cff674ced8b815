//! gpt-oss's vocabulary as llama.cpp reads it, on the tiny random-weight model that
//! `scripts/make-harmony-test-model.py` builds with gpt-oss's real tokenizer and template
//! (into `$PENSIEVE_TEST_MODELS`). The token ids are checked against tiktoken's own
//! `o200k_harmony` (`fixtures/o200k_harmony.json`, written by that script's `--goldens`),
//! then the Harmony format's grammars are built over the 201,088 tokens and walked along
//! a call in its real tokens.

use std::path::PathBuf;
use std::time::Instant;

use pensieve_engine::constrain::Grammars;
use pensieve_engine::output::marker_tokens;
use pensieve_engine::LoadedModel;
use pensieve_engine::{TokenId, TokenMask, Tokenizer, ToolFormat};
use pensieve_llama::{load, LlamaOptions};
use serde_json::Value;

const MODEL: &str = "harmony-tiny-random.gguf";
const TEMPLATE: &str = include_str!("../../pensieve-engine/src/template/fixtures/gpt-oss.jinja");

/// The Harmony markers and their ids in o200k_harmony.
const MARKERS: [(&str, TokenId); 7] = [
    ("<|return|>", 200002),
    ("<|constrain|>", 200003),
    ("<|channel|>", 200005),
    ("<|start|>", 200006),
    ("<|end|>", 200007),
    ("<|message|>", 200008),
    ("<|call|>", 200012),
];

fn harmony_model() -> LoadedModel {
    let dir = std::env::var_os("PENSIEVE_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/pensieve/test-models")
        });
    let path = dir.join(MODEL);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/make-harmony-test-model.py (scripts/setup-test-env.sh does)",
        path.display()
    );
    let mut options = LlamaOptions::new(path);
    options.asked.flags.ctx = Some(512);
    options.asked.flags.threads = Some(2);
    options.asked.flags.parallel = Some(1);
    load(&options).expect("the Harmony test model loads")
}

#[test]
fn token_ids_are_tiktoken_o200k_harmony() {
    let model = harmony_model();
    let tokenizer = model.tokenizer.as_ref();
    assert_eq!(tokenizer.vocab_size(), 201_088);
    let goldens: Value =
        serde_json::from_str(include_str!("fixtures/o200k_harmony.json")).expect("goldens");
    let cases = goldens["cases"].as_array().expect("cases");
    assert!(cases.len() > 20);
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want: Vec<TokenId> = serde_json::from_value(case["ids"].clone()).expect("ids");
        assert_eq!(tokenizer.encode(text), want, "{text:?}");
        // What has no marker reads back as it was written.
        if !text.contains("<|") {
            let bytes: Vec<u8> = want
                .iter()
                .flat_map(|t| tokenizer.token_bytes(*t))
                .collect();
            assert_eq!(String::from_utf8_lossy(&bytes), text);
        }
    }
}

#[test]
fn the_model_is_gpt_oss_to_the_server() {
    let model = harmony_model();
    let info = &model.info;
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.chat_template.as_deref(), Some(TEMPLATE));
    assert_eq!(ToolFormat::detect(TEMPLATE), Some(ToolFormat::HARMONY));
    assert_eq!(info.bos_token, "<|startoftext|>");
    assert_eq!(info.eos_token, "<|return|>");

    let tokenizer: &dyn Tokenizer = model.tokenizer.as_ref();
    let markers = marker_tokens(tokenizer, Some(ToolFormat::HARMONY));
    for (marker, id) in MARKERS {
        assert_eq!(tokenizer.single_token(marker), Some(id), "{marker}");
        assert_eq!(markers.get(&id).map(Vec::as_slice), Some(marker.as_bytes()));
    }
    // llama.cpp ends generation on `<|return|>` and `<|call|>`, and not on `<|end|>`,
    // after which the model goes on with its next message.
    for (id, ends) in [
        (200002, true),
        (200012, true),
        (199999, true),
        (200007, false),
    ] {
        assert_eq!(tokenizer.is_end_of_generation(id), ends, "{id}");
    }
    // No BOS is added to a Harmony prompt (the template writes none); `user` is 1428
    // in o200k_harmony.
    assert_eq!(tokenizer.encode("<|start|>user"), [200006, 1428]);
}

/// Claude Code's tools under Harmony's grammars over the 201,088 tokens: they build, a
/// second request's come from the cache, and a call written in its real tokens (each
/// marker one control token) passes every mask. The times are printed (`--nocapture`).
#[test]
fn harmony_grammars_take_a_call_in_its_real_tokens() {
    let model = harmony_model();
    let tokenizer: &dyn Tokenizer = model.tokenizer.as_ref();
    let markers = marker_tokens(tokenizer, Some(ToolFormat::HARMONY));
    let start = Instant::now();
    let grammars = Grammars::new(tokenizer, &markers).expect("grammars");
    eprintln!(
        "{} tokens: the vocabulary's trie in {:.2?}",
        tokenizer.vocab_size(),
        start.elapsed()
    );
    let tools = pensieve_engine::testing::claude_code_tools();
    let format = ToolFormat::HARMONY;

    let start = Instant::now();
    let mut forced = grammars.forced_call(format, &tools, None).expect("forced");
    let built = start.elapsed();
    let start = Instant::now();
    assert!(forced.mask().is_some());
    let first_mask = start.elapsed();
    let start = Instant::now();
    let lazy = grammars.call_body(format, &tools, true).expect("lazy");
    let lazy_built = start.elapsed();
    let compiled = grammars.cache_stats();
    let start = Instant::now();
    grammars.forced_call(format, &tools, None).expect("forced");
    grammars.call_body(format, &tools, true).expect("lazy");
    let cached = start.elapsed();
    assert_eq!(
        grammars.cache_stats().misses,
        compiled.misses,
        "compiled again"
    );
    eprintln!(
        "harmony: forced {built:.2?} (first mask {first_mask:.2?}), lazy {lazy_built:.2?}; \
         again, from the cache: {cached:.2?}"
    );

    let head = "<|channel|>commentary to=functions.Bash <|constrain|>";
    let body = "json<|message|>{\"command\": \"ls -la\", \"description\": \"List the files\"}";
    let call = tokenizer.encode(&format!("{head}{body}<|call|>"));
    for marker in [200005, 200003, 200008, 200012] {
        assert!(call.contains(&marker), "{marker} in {call:?}");
    }
    let start = Instant::now();
    for &token in &call {
        let mask = forced.mask().expect("the grammar holds");
        assert!(TokenMask(mask.as_slice()).allows(token), "{token}");
        forced.accept(token);
    }
    eprintln!(
        "a Bash call's {} masks: {:.2?}",
        call.len(),
        start.elapsed()
    );
    assert!(forced.is_complete());

    // Under `auto` the grammar starts after the model's `<|constrain|>`.
    let mut after = lazy
        .after_marker(b"<|constrain|>")
        .expect("<|constrain|> opens a call");
    for &token in &tokenizer.encode(&format!("{body}<|call|>")) {
        let mask = after.mask().expect("the grammar holds");
        assert!(TokenMask(mask.as_slice()).allows(token), "{token}");
        after.accept(token);
    }
    assert!(after.is_complete());
}
