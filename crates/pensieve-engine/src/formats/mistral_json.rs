//! Earlier Mistral (7B v0.3, Nemo, Small 3.1): `[TOOL_CALLS][{"name": ..., "arguments":
//! {...}}, ...]`, an array of call objects after the marker.

use super::{Format, GrammarStart};
use crate::constrain::{calls_lark, json_call_rule, literal};
use crate::output::CallReader;
use crate::request::ToolSpec;

pub(super) const CALLS: &str = "[TOOL_CALLS]";

pub(super) struct MistralJson;

impl Format for MistralJson {
    fn names(&self) -> &'static [&'static str] {
        &["mistral_json"]
    }

    fn models(&self) -> &'static str {
        "Mistral 7B v0.3, Mistral Nemo, Mistral Small 3.1"
    }

    /// Checked after Mistral's `[ARGS]` form.
    fn detect(&self, template: &str) -> bool {
        template.contains(CALLS)
    }

    fn markers(&self) -> &'static [&'static str] {
        super::mistral::MARKERS
    }

    fn open(&self) -> &'static str {
        CALLS
    }

    /// What follows the marker is read as Mistral's: a name and `[ARGS]`, or an array.
    fn reader(&self) -> Box<dyn CallReader> {
        super::mistral::head_reader()
    }

    fn grammar(&self, tools: &[&ToolSpec], start: GrammarStart) -> String {
        let (open, separator) = match start {
            GrammarStart::Forced => (literal(&format!("{CALLS}[")), None),
            GrammarStart::AfterMarker { parallel } => (literal("["), parallel.then_some(", ")),
            GrammarStart::Bare => (literal("["), None),
        };
        calls_lark(&open, "]", separator, tools, |i, tool, lark| {
            json_call_rule(i, tool, "arguments", lark)
        })
    }
}
