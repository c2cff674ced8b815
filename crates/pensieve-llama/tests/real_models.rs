//! The llama.cpp backend against the real test models (fetched by
//! `scripts/fetch-test-models.sh` into `$PENSIEVE_TEST_MODELS`).

use std::path::PathBuf;

use pensieve_engine::settings::FlashAttn;
use pensieve_engine::{
    BatchToken, Engine, EngineConfig, FinishReason, GenerateRequest, GenerationEvent, LoadedModel,
    Message, ModelRunner, Pick, Role, RunsOn, SamplingParams, SeqId, TokenId, TokenMask, Tokenizer,
};
use pensieve_llama::{load, LlamaOptions};

fn model_path(file: &str) -> PathBuf {
    let dir = std::env::var_os("PENSIEVE_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/pensieve/test-models")
        });
    let path = dir.join(file);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-test-models.sh",
        path.display()
    );
    path
}

fn smollm2(context: u32) -> LoadedModel {
    smollm2_with(context, None)
}

/// SmolLM2 with greedy tokens picked in llama.cpp's graph (`Some(true)`) or on the host.
fn smollm2_with(context: u32, backend_sampling: Option<bool>) -> LoadedModel {
    let mut options = LlamaOptions::new(model_path("SmolLM2-135M-Instruct.Q4_1.gguf"));
    options.asked.flags.ctx = Some(context);
    options.asked.flags.threads = Some(2);
    // Tests use sequences 0 to 2.
    options.asked.flags.parallel = Some(4);
    options.asked.flags.backend_sampling = backend_sampling;
    load(&options).expect("SmolLM2 loads")
}

#[test]
fn reads_metadata_and_special_tokens() {
    let model = smollm2(1024);
    let info = &model.info;
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.train_context, 8192);
    assert_eq!(info.context_size, 1024);
    assert_eq!(info.id, "SmolLM2-135M-Instruct.Q4_1");
    assert!(info
        .chat_template
        .as_deref()
        .is_some_and(|t| t.contains("<|im_start|>")));
    assert_eq!(info.bos_token, "<|im_start|>");
    assert_eq!(info.eos_token, "<|im_end|>");
    let tok = &model.tokenizer;
    // Special tokens written in the prompt become their ids; no BOS is added for SmolLM2.
    let ids = tok.encode("<|im_start|>user\nhi<|im_end|>\n");
    assert_eq!(ids.first(), Some(&1));
    assert!(ids.contains(&2));
    for eog in [0, 2] {
        assert!(tok.is_end_of_generation(eog), "token {eog} ends generation");
    }
    assert!(!tok.is_end_of_generation(ids[1]));
    // Control tokens render as nothing; text tokens as their bytes.
    assert!(tok.token_bytes(2).is_empty());
    let hello = tok.encode("hello");
    let text: Vec<u8> = hello.iter().flat_map(|t| tok.token_bytes(*t)).collect();
    assert_eq!(text, b"hello");
}

#[test]
fn gemma_without_template_gets_a_bos() {
    let mut options = LlamaOptions::new(model_path("gemma-3-270m-q4_k_m.gguf"));
    options.asked.flags.ctx = Some(512);
    options.asked.flags.threads = Some(2);
    let model = load(&options).expect("Gemma 3 loads");
    assert_eq!(model.info.architecture, "gemma3");
    assert!(model.info.chat_template.is_none());
    assert_eq!(model.info.bos_token, "<bos>");
    let ids = model.tokenizer.encode("hello");
    assert_eq!(ids[0], 2, "Gemma wants a BOS and the text had none");
    // Written by a template, the BOS is not doubled.
    assert_eq!(model.tokenizer.encode("<bos>hello"), ids);
}

#[test]
fn runs_on_the_gpu_llama_cpp_finds_else_the_cpu() {
    let model = smollm2(1024);
    match pensieve_llama::device::facts().gpu {
        None => assert_eq!(model.runs_on, RunsOn::Cpu { threads: 2 }),
        Some(_) => assert!(
            matches!(
                model.runs_on,
                RunsOn::Gpu { layers, total_layers, .. } if layers == total_layers
            ),
            "every layer is offloaded by default: {}",
            model.runs_on
        ),
    }
}

#[test]
fn a_zero_context_is_refused_before_loading() {
    let mut options = LlamaOptions::new(model_path("SmolLM2-135M-Instruct.Q4_1.gguf"));
    options.asked.env.ctx = Some(0);
    let err = load(&options).err().expect("a context of 0 is refused");
    assert_eq!(err.to_string(), "PENSIEVE_CTX must be at least 1");
}

#[test]
fn missing_file_is_a_clear_error() {
    let err = load(&LlamaOptions::new("/nonexistent/model.gguf"))
        .err()
        .expect("loading a missing file fails");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// Evaluate `prompt[from..]` into `seq` in one batch, then 8 greedy tokens.
fn greedy_run(
    runner: &mut dyn ModelRunner,
    seq: SeqId,
    prompt: &[TokenId],
    from: usize,
) -> Vec<TokenId> {
    let greedy = SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    };
    let batch: Vec<BatchToken> = (from..prompt.len())
        .map(|i| BatchToken {
            seq,
            token: prompt[i],
            pos: i as u32,
            logits: i == prompt.len() - 1,
        })
        .collect();
    runner.decode(&batch).unwrap();
    runner.start_sampling(seq, &greedy);
    let mut out = Vec::new();
    let mut index = batch.len() - 1;
    for i in 0..8 {
        let t = runner.sample(seq, index, None);
        out.push(t);
        let pos = (prompt.len() + i) as u32;
        runner
            .decode(&[BatchToken {
                seq,
                token: t,
                pos,
                logits: true,
            }])
            .unwrap();
        index = 0;
    }
    out
}

#[test]
fn greedy_decoding_after_cache_reuse_matches_a_cold_run() {
    let mut model = smollm2(1024);
    assert!(model.runner.can_truncate());
    let prompt = model
        .tokenizer
        .encode("<|im_start|>user\nList three colours.<|im_end|>\n<|im_start|>assistant\n");
    let last = prompt.len() - 1;
    let runner: &mut dyn ModelRunner = model.runner.as_mut();
    let cold = greedy_run(runner, 0, &prompt, 0);
    // Cut back to the last prompt token and go again: same greedy continuation.
    assert!(runner.truncate(0, last as u32));
    let snapshot = runner.save(0).unwrap();
    assert_eq!(greedy_run(runner, 0, &prompt, last), cold);
    // A second sequence given a copy of the prefix continues the same way.
    assert!(runner.truncate(0, last as u32));
    assert!(runner.share(0, 1, last as u32));
    assert_eq!(greedy_run(runner, 1, &prompt, last), cold);
    // And so does one restored from a snapshot.
    runner.restore(2, &snapshot).unwrap();
    assert_eq!(greedy_run(runner, 2, &prompt, last), cold);
    // Snapshots are about 23 KB a token of SmolLM2's f16 KV.
    let per_token = snapshot.len() / last;
    assert!(
        (15_000..40_000).contains(&per_token),
        "{per_token} bytes a token"
    );
}

#[test]
fn greedy_tokens_picked_in_the_graph_are_the_hosts_and_the_logits_still_arrive() {
    let mut host = smollm2_with(512, Some(false));
    let mut graph = smollm2_with(512, Some(true));
    let prompts: Vec<Vec<TokenId>> = ["List three colours.", "Write a haiku about rain."]
        .iter()
        .map(|q| {
            host.tokenizer.encode(&format!(
                "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
            ))
        })
        .collect();
    // One sequence at a time (`sample`) ...
    for (seq, prompt) in prompts.iter().enumerate() {
        let want = greedy_run(host.runner.as_mut(), seq as SeqId, prompt, 0);
        let got = greedy_run(graph.runner.as_mut(), seq as SeqId, prompt, 0);
        assert_eq!(got, want, "sequence {seq}");
    }
    // ... and two in one batch (`sample_all`): each output row maps to its sequence,
    // and a masked sequence is sampled on the host from logits that still arrived.
    let allowed: Vec<u32> = vec![0xF0F0_F0F0; 49_152 / 32 + 1];
    let step = |model: &mut LoadedModel| {
        let runner = model.runner.as_mut();
        let mut batch = Vec::new();
        let mut outputs = Vec::new();
        for (k, prompt) in prompts.iter().enumerate() {
            let seq = 2 + k as SeqId;
            runner.release(seq);
            runner.start_sampling(
                seq,
                &SamplingParams {
                    temperature: 0.0,
                    logprobs: Some(3),
                    ..SamplingParams::default()
                },
            );
            for (i, &token) in prompt.iter().enumerate() {
                batch.push(BatchToken {
                    seq,
                    token,
                    pos: i as u32,
                    logits: i == prompt.len() - 1,
                });
            }
            outputs.push((seq, batch.len() - 1));
        }
        runner.decode(&batch).unwrap();
        let plain: Vec<Pick<'_>> = outputs
            .iter()
            .map(|&(seq, index)| Pick {
                seq,
                index,
                mask: None,
            })
            .collect();
        let tokens = runner.sample_all(&plain);
        let masked = runner.sample_all(&[Pick {
            seq: outputs[1].0,
            index: outputs[1].1,
            mask: Some(TokenMask(&allowed)),
        }]);
        let top = runner.logprobs(outputs[0].1, tokens[0], 3).unwrap().1;
        (tokens, masked[0], top[0].0)
    };
    let (host_tokens, host_masked, host_top) = step(&mut host);
    let (graph_tokens, graph_masked, graph_top) = step(&mut graph);
    assert_eq!(graph_tokens, host_tokens);
    assert_eq!(graph_masked, host_masked);
    assert!(TokenMask(&allowed).allows(graph_masked));
    assert_eq!((graph_top, host_top), (host_tokens[0], host_tokens[0]));
}

#[test]
fn a_prefix_copied_as_a_whole_kv_stream_continues_like_a_cold_run() {
    // Streams of 128 cells and a prompt of over 64 tokens: copying the whole stream is
    // cheaper than a snapshot, as it always is on a GPU.
    let mut model = smollm2(128);
    let prompt = model.tokenizer.encode(
        "<|im_start|>user\nHere is a list of fruit: apples, pears, plums, cherries, \
         oranges, lemons, limes, grapes, figs, dates, melons, mangoes, kiwis and \
         peaches. Which of them are citrus fruit, and which grow on vines? Answer in one short sentence.\
         <|im_end|>\n<|im_start|>assistant\n",
    );
    assert!(
        (65..110).contains(&prompt.len()),
        "{} prompt tokens",
        prompt.len()
    );
    let last = prompt.len() - 1;
    let runner: &mut dyn ModelRunner = model.runner.as_mut();
    let cold = greedy_run(runner, 0, &prompt, 0);
    assert!(runner.truncate(0, last as u32));
    let snapshot = runner.save(0).unwrap();
    assert!(runner.share(0, 1, last as u32));
    // llama.cpp makes the copy at the start of the next decode: until then the copy
    // can't be read out, nor its source or destination overwritten.
    assert!(runner.save(1).is_err());
    assert!(runner.restore(0, &snapshot).is_err());
    assert!(runner.restore(1, &snapshot).is_err());
    assert_eq!(greedy_run(runner, 1, &prompt, last), cold);
    assert!(runner.save(1).is_ok());
    // The source is untouched by the copy.
    assert_eq!(greedy_run(runner, 0, &prompt, last), cold);
}

#[test]
fn sliding_window_models_resume_from_whole_snapshots() {
    let mut options = LlamaOptions::new(model_path("gemma-3-270m-q4_k_m.gguf"));
    options.asked.flags.ctx = Some(2048);
    options.asked.flags.threads = Some(2);
    options.asked.flags.parallel = Some(4);
    let mut model = load(&options).expect("Gemma 3 loads");
    assert!(
        !model.runner.can_truncate(),
        "Gemma 3 has sliding-window layers"
    );
    let prompt = model
        .tokenizer
        .encode("<start_of_turn>user\nName three colours.<end_of_turn>\n<start_of_turn>model\n");
    let last = prompt.len() - 1;
    let runner: &mut dyn ModelRunner = model.runner.as_mut();
    // Prefill all but the last token, snapshot there; continuing in place and from a
    // restored snapshot give the same tokens.
    let batch: Vec<BatchToken> = (0..last)
        .map(|i| BatchToken {
            seq: 0,
            token: prompt[i],
            pos: i as u32,
            logits: false,
        })
        .collect();
    runner.decode(&batch).unwrap();
    let snapshot = runner.save(0).unwrap();
    runner.restore(3, &snapshot).unwrap();
    let from_restore = greedy_run(runner, 3, &prompt, last);
    let in_place = greedy_run(runner, 0, &prompt, last);
    assert_eq!(from_restore, in_place);
}

#[tokio::test]
async fn engine_generates_and_reports_cache_reuse() {
    let model = smollm2(2048);
    let engine = Engine::start(
        model.info,
        model.tokenizer.clone(),
        model.runner,
        EngineConfig {
            parallel: model.parallel,
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let mut request = GenerateRequest::new(
        "claude-test",
        vec![
            Message::text(Role::System, "You are terse."),
            Message::text(Role::User, "Count from 1 to 20, separated by commas."),
        ],
        40,
    );
    request.sampling.temperature = 0.0;
    let mut outputs = Vec::new();
    for _ in 0..2 {
        let valid = engine.validate(&request).unwrap();
        let prompt_len = valid.prompt.len() as u32;
        let mut generation = engine.submit(valid).unwrap();
        let mut text = String::new();
        let completion = loop {
            match generation.events.recv().await.expect("engine answers") {
                GenerationEvent::Text(t) => text.push_str(&t),
                GenerationEvent::Done(c) => break c,
                GenerationEvent::Failed(e) => panic!("generation failed: {e}"),
                GenerationEvent::PrefillDone { .. } => {}
                other => panic!("no tools were offered: {other:?}"),
            }
        };
        assert_eq!(completion.usage.prompt_tokens, prompt_len);
        assert!(matches!(
            completion.reason,
            FinishReason::EndOfTurn | FinishReason::MaxTokens
        ));
        outputs.push((text, completion.usage.cached_prompt_tokens));
    }
    assert!(!outputs[0].0.is_empty());
    assert_eq!(outputs[0].1, 0, "the first request is cold");
    // The second request reuses all of the prompt but its last token.
    let prompt_len = engine.prompt_tokens(&request).unwrap().len() as u32;
    assert_eq!(outputs[1].1, prompt_len - 1);
    assert_eq!(outputs[0].0, outputs[1].0, "greedy output is the same");
    engine.shutdown();
    engine.join();
}

#[test]
fn qwen_writes_its_tool_call_markers_as_single_tokens() {
    let mut options = LlamaOptions::new(model_path("Qwen2.5-Coder-0.5B-Instruct.gguf"));
    options.asked.flags.ctx = Some(512);
    options.asked.flags.threads = Some(2);
    options.asked.flags.parallel = Some(1);
    let model = load(&options).expect("Qwen loads");
    let tokenizer: &dyn Tokenizer = model.tokenizer.as_ref();
    let markers = pensieve_engine::output::marker_tokens(
        tokenizer,
        Some(pensieve_engine::ToolFormat::HERMES),
    );
    let open = tokenizer.single_token("<tool_call>").expect("one token");
    let close = tokenizer.single_token("</tool_call>").expect("one token");
    assert_eq!(
        markers.get(&open).map(Vec::as_slice),
        Some(&b"<tool_call>"[..])
    );
    assert_eq!(
        markers.get(&close).map(Vec::as_slice),
        Some(&b"</tool_call>"[..])
    );
    assert_eq!(tokenizer.single_token("hello world"), None);
}

/// The grammars of Claude Code's tools over Qwen's vocabulary (151k tokens), in each tool
/// format: they build, and a second request's come from the cache. The times are printed
/// (`--nocapture`), not judged.
#[test]
fn claude_code_grammars_build_once_over_a_real_vocabulary() {
    use pensieve_engine::constrain::Grammars;
    use pensieve_engine::ToolFormat;
    use std::time::Instant;

    let mut options = LlamaOptions::new(model_path("Qwen2.5-Coder-0.5B-Instruct.gguf"));
    options.asked.flags.ctx = Some(512);
    options.asked.flags.threads = Some(2);
    options.asked.flags.parallel = Some(1);
    let model = load(&options).expect("Qwen loads");
    let tokenizer: &dyn Tokenizer = model.tokenizer.as_ref();
    let markers = pensieve_engine::output::marker_tokens(tokenizer, Some(ToolFormat::QWEN3_CODER));
    let start = Instant::now();
    let grammars = Grammars::new(tokenizer, &markers).expect("grammars");
    eprintln!(
        "{} tokens: the vocabulary's trie in {:.2?}",
        tokenizer.vocab_size(),
        start.elapsed()
    );
    let tools = pensieve_engine::testing::claude_code_tools();
    for format in ToolFormat::all() {
        let name = format.name();
        let before = grammars.cache_stats();
        let start = Instant::now();
        let mut forced = grammars.forced_call(format, &tools, None).expect(name);
        let built = start.elapsed();
        let start = Instant::now();
        assert!(forced.mask().is_some(), "{name}");
        let mask = start.elapsed();
        let start = Instant::now();
        grammars.call_body(format, &tools, true).expect(name);
        let lazy = start.elapsed();
        let first = grammars.cache_stats();
        let start = Instant::now();
        grammars.forced_call(format, &tools, None).expect(name);
        grammars.call_body(format, &tools, true).expect(name);
        let cached = start.elapsed();
        let second = grammars.cache_stats();
        assert_eq!(second.misses, first.misses, "{name}: compiled again");
        let asked = first.hits + first.misses - before.hits - before.misses;
        assert_eq!(second.hits - first.hits, asked, "{name}");
        eprintln!(
            "{name:>13}: forced {built:>9.2?} (first mask {mask:>8.2?}), lazy {lazy:>9.2?} \
             ({} of {asked} grammars compiled); again, from the cache: {cached:.2?}",
            first.misses - before.misses
        );
    }
    // The masks along a whole call: the lexer's states are built as the call goes, in
    // each request's copy of the grammar.
    let call = "<tool_call>\n{\"name\": \"Bash\", \"arguments\": {\"command\": \"ls -la\", \
                \"description\": \"List the files\"}}\n</tool_call>";
    let tokens = tokenizer.encode(call);
    for round in ["first", "second"] {
        let mut c = grammars
            .forced_call(ToolFormat::HERMES, &tools, None)
            .expect("hermes");
        let start = Instant::now();
        for &token in &tokens {
            let mask = c.mask().expect("the grammar holds");
            assert!(TokenMask(mask.as_slice()).allows(token), "{token}");
            c.accept(token);
        }
        eprintln!(
            "a Bash call's {} masks, {round} request: {:.2?}",
            tokens.len(),
            start.elapsed()
        );
    }
}

/// One greedy generation through `engine`: its text and completion tokens.
async fn greedy_text(engine: &Engine, user: &str, max_tokens: u32) -> (String, u32) {
    let mut request = GenerateRequest::new("m", vec![Message::text(Role::User, user)], max_tokens);
    request.sampling.temperature = 0.0;
    let mut generation = engine.submit(engine.validate(&request).unwrap()).unwrap();
    let mut text = String::new();
    loop {
        match generation.events.recv().await.expect("engine answers") {
            GenerationEvent::Text(t) => text.push_str(&t),
            GenerationEvent::Done(c) => return (text, c.usage.completion_tokens),
            GenerationEvent::Failed(e) => panic!("generation failed: {e}"),
            _ => {}
        }
    }
}

/// Greedy output with n-gram speculation, and with a draft model (a second copy of the
/// same model: its drafts stand unless numerics differ), is the output without it, token
/// for token, on both test models: code quoted back (where drafts stand) and plain chat.
#[tokio::test]
async fn speculation_keeps_greedy_output_token_for_token() {
    use pensieve_engine::speculate::Speculative;
    let code = "def area(width, height):\n    if width < 0 or height < 0:\n        raise \
                ValueError(\"negative size\")\n    return width * height\n";
    let prompts = [
        format!("Rename the function to rect_area and repeat the rest exactly:\n{code}"),
        "Name three colours and say one thing about each.".to_owned(),
    ];
    for file in [
        "Qwen2.5-Coder-0.5B-Instruct.gguf",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    ] {
        let mut outputs = Vec::new();
        for speculative in [Speculative::Off, Speculative::Ngram, Speculative::Draft] {
            let mut options = LlamaOptions::new(model_path(file));
            options.asked.flags.ctx = Some(1024);
            options.asked.flags.threads = Some(2);
            options.asked.flags.parallel = Some(1);
            // With llama.cpp's flash attention (its default), whose sums do not depend on
            // how many tokens a step holds: without it one answer here parted after 40.
            options.asked.flags.flash_attn = Some(FlashAttn::Auto);
            let model = load(&options).expect("the model loads");
            assert!(model.runner.can_speculate());
            let draft = (speculative == Speculative::Draft).then(|| {
                let drafter = load(&options).expect("the draft model loads");
                pensieve_engine::DraftModel {
                    tokenizer: drafter.tokenizer,
                    runner: drafter.runner,
                    window: 1024,
                }
            });
            let engine = Engine::start_with_draft(
                model.info,
                model.tokenizer.clone(),
                model.runner,
                draft,
                EngineConfig {
                    parallel: 1,
                    speculative,
                    ..EngineConfig::default()
                },
            )
            .unwrap();
            let mut texts = Vec::new();
            for prompt in &prompts {
                texts.push(greedy_text(&engine, prompt, 96).await);
            }
            let metrics = engine.metrics().encode();
            let accepted = metrics
                .lines()
                .find_map(|l| l.strip_prefix("pensieve_draft_accepted_tokens_total "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            outputs.push((texts, accepted));
            engine.shutdown();
            engine.join();
        }
        for (kind, (texts, accepted)) in ["n-gram", "draft model"].iter().zip(&outputs[1..]) {
            assert_eq!(
                &outputs[0].0, texts,
                "{file}: {kind} speculation changed the output"
            );
            assert!(*accepted > 0.0, "{file}: no {kind} drafted token was kept");
        }
        assert_eq!(outputs[0].1, 0.0);
    }
}
