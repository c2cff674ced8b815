//! Two new sessions of an agent, in two projects on two days, render to prompts that share
//! their system prompt and tools: what names the project or the day comes after them
//! (`pensieve_engine::template`'s prompt assembly). The requests are real first requests
//! (`fixtures/README.md`), rendered through Qwen2.5-Coder's template (tools in its system
//! turn) and SmolLM2's (tools described by Pensieve), as the server would.

use std::path::{Path, PathBuf};

use pensieve_engine::request::GenerateRequest;
use pensieve_engine::template::{ChatTemplate, RenderOptions, SpecialTokens};
use pensieve_engine::{Breakpoint, ToolFormat};

use super::parse_messages;

/// The share of the prompt the second session must find cached (issue 17's target).
const SHARED_AT_LEAST: f64 = 0.9;

fn fixture(name: &str) -> GenerateRequest {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/anthropic/fixtures")
        .join(name);
    let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_messages(&body)
        .and_then(|r| r.into_generate())
        .unwrap_or_else(|e| panic!("{name}: {}", e.0))
}

fn template(file: &str, bos: &str, eos: &str) -> ChatTemplate {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../pensieve-engine/src/template/fixtures")
        .join(file);
    let source =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tokens = SpecialTokens {
        bos: bos.to_owned(),
        eos: eos.to_owned(),
    };
    ChatTemplate::from_source(&source, tokens).expect("the template compiles")
}

fn render(template: &ChatTemplate, request: &GenerateRequest) -> String {
    let opts = RenderOptions {
        enable_thinking: request.thinking,
        reasoning_effort: request.effort.map(|e| e.as_str().to_owned()),
        tool_format: Some(ToolFormat::HERMES),
    };
    template
        .render(&request.messages, &request.tools, &opts)
        .expect("the request renders")
}

/// The prompt up to the system prompt's cache breakpoint (the request marks it).
fn preamble_text<'a>(
    template: &ChatTemplate,
    request: &GenerateRequest,
    prompt: &'a str,
) -> &'a str {
    let opts = RenderOptions {
        enable_thinking: request.thinking,
        reasoning_effort: request.effort.map(|e| e.as_str().to_owned()),
        tool_format: Some(ToolFormat::HERMES),
    };
    let (marked, found) = template
        .render_with_breakpoints(
            &request.messages,
            &request.tools,
            &opts,
            &request.breakpoints,
        )
        .expect("the request renders");
    assert_eq!(marked, prompt, "breakpoints changed the prompt");
    let at = found
        .iter()
        .find(|(_, p)| *p == Breakpoint::Preamble)
        .map(|(at, _)| *at)
        .expect("the system prompt's breakpoint is placed");
    &prompt[..at]
}

/// How much of `b`'s prompt is `a`'s prefix, in characters, and what follows it in `b`.
fn shared(a: &str, b: &str) -> (f64, String) {
    let at = a
        .char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i);
    let next: String = b[at..].chars().take(80).collect();
    (at as f64 / b.len() as f64, next)
}

fn assert_sessions_share(agent: &str, must_contain: &[&str]) {
    let a = fixture(&format!("{agent}-a.json"));
    let b = fixture(&format!("{agent}-b.json"));
    for (name, template) in [
        (
            "qwen2.5-coder",
            template("qwen2.5-coder.jinja", "<|endoftext|>", "<|im_end|>"),
        ),
        (
            "smollm2",
            template("smollm2.jinja", "<|im_start|>", "<|im_end|>"),
        ),
    ] {
        let (pa, pb) = (render(&template, &a), render(&template, &b));
        let (share, next) = shared(&pa, &pb);
        eprintln!(
            "{agent} through {name}: {:.1}% of {} characters shared",
            share * 100.0,
            pb.len()
        );
        assert!(
            share >= SHARED_AT_LEAST,
            "{agent} through {name}: the sessions share {:.1}% of the prompt; it parts at {next:?}",
            share * 100.0
        );
        // The system prompt's cache breakpoint falls after the same text in both
        // sessions, so the second reads all of that from the first's snapshot.
        let (ta, tb) = (
            preamble_text(&template, &a, &pa),
            preamble_text(&template, &b, &pb),
        );
        assert_eq!(ta, tb, "{agent} through {name}: the preambles differ");
        let covered = tb.len() as f64 / pb.len() as f64;
        eprintln!(
            "{agent} through {name}: the system prompt's breakpoint covers {:.1}%",
            covered * 100.0
        );
        assert!(
            covered >= SHARED_AT_LEAST,
            "{agent} through {name}: the system prompt's breakpoint covers {:.1}%",
            covered * 100.0
        );
        // Nothing is dropped: what names each session is still in its prompt.
        for (prompt, session) in [(&pa, "a"), (&pb, "b")] {
            for text in must_contain {
                let text = text.replace("{session}", &session.to_uppercase());
                assert!(
                    prompt.contains(&text),
                    "{agent}-{session}: {text:?} is missing"
                );
            }
        }
    }
}

#[test]
fn two_claude_agent_sdk_sessions_share_the_system_prompt_and_the_tools() {
    assert_sessions_share(
        "claude-agent-sdk",
        &[
            "Primary working directory: /tmp/proj{session}",
            "/.claude/projects/-tmp-proj{session}/memory/",
            "Today's date is 2026-12-0",
        ],
    );
}

#[test]
fn two_opencode_sessions_share_the_system_prompt_and_the_tools() {
    assert_sessions_share(
        "opencode",
        &[
            "Working directory: /tmp/proj{session}",
            "Today's date: ",
            "Is directory a git repo: ",
        ],
    );
}
