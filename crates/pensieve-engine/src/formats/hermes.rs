//! Hermes: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, as Hermes 2/3,
//! Qwen2.5, Qwen3 (before 3.5), SmolLM and Granite write it. Small models often drop the
//! tags and write the object alone, so bare call objects count too.

use super::{Format, GrammarStart};
use crate::constrain::{calls_lark, json_call_rule, literal, WS};
use crate::output::{CallReader, JsonCall};
use crate::request::ToolSpec;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

pub(super) struct Hermes;

impl Format for Hermes {
    fn names(&self) -> &'static [&'static str] {
        &["hermes", "qwen"]
    }

    fn models(&self) -> &'static str {
        "Hermes 2/3, Qwen2.5, Qwen3 (to 3.2), SmolLM, Granite 4"
    }

    /// Checked after the formats that also write `<tool_call>` (Qwen XML, GLM).
    fn detect(&self, template: &str) -> bool {
        template.contains(OPEN)
    }

    fn markers(&self) -> &'static [&'static str] {
        &[OPEN, CLOSE]
    }

    fn open(&self) -> &'static str {
        OPEN
    }

    fn reader(&self) -> Box<dyn CallReader> {
        Box::new(JsonCall::tagged(CLOSE))
    }

    fn bare_calls(&self) -> bool {
        true
    }

    fn grammar(&self, tools: &[&ToolSpec], start: GrammarStart) -> String {
        let (open, close) = match start {
            GrammarStart::Forced => (literal(&format!("{OPEN}\n")), format!("\n{CLOSE}")),
            GrammarStart::AfterMarker { .. } => (literal("\n"), format!("\n{CLOSE}")),
            GrammarStart::Bare => (WS.to_owned(), String::new()),
        };
        calls_lark(&open, &close, None, tools, |i, tool, lark| {
            json_call_rule(i, tool, "arguments", lark)
        })
    }
}
