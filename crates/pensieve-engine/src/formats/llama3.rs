//! Llama 3.x: `{"name": ..., "parameters": {...}}` alone in the turn, perhaps after
//! `<|python_tag|>`, several separated by `;`. The tag only announces the object, which
//! the output parser reads as a bare call.

use super::{Format, GrammarStart};
use crate::constrain::{calls_lark, json_call_rule, literal, WS};
use crate::output::{CallReader, MarkerOnly};
use crate::request::ToolSpec;

const PYTHON_TAG: &str = "<|python_tag|>";

pub(super) struct Llama3Json;

impl Format for Llama3Json {
    fn names(&self) -> &'static [&'static str] {
        &["llama3_json", "llama3"]
    }

    fn models(&self) -> &'static str {
        "Llama 3.1, 3.2, 3.3"
    }

    fn detect(&self, template: &str) -> bool {
        template.contains(PYTHON_TAG)
            || template.contains("{\"name\": function name, \"parameters\"")
    }

    fn markers(&self) -> &'static [&'static str] {
        &[PYTHON_TAG]
    }

    fn open(&self) -> &'static str {
        PYTHON_TAG
    }

    fn reader(&self) -> Box<dyn CallReader> {
        Box::new(MarkerOnly)
    }

    fn bare_calls(&self) -> bool {
        true
    }

    fn arguments_key(&self) -> &'static str {
        "parameters"
    }

    fn grammar(&self, tools: &[&ToolSpec], start: GrammarStart) -> String {
        // Llama 3 writes its JSON calls without the tag (that is for built-in tools).
        let open = match start {
            GrammarStart::Forced | GrammarStart::AfterMarker { .. } => literal(""),
            GrammarStart::Bare => WS.to_owned(),
        };
        calls_lark(&open, "", None, tools, |i, tool, lark| {
            json_call_rule(i, tool, "parameters", lark)
        })
    }
}
