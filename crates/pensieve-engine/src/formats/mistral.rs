//! Mistral since tokenizer v11 (Mistral Small 3.2, Devstral, Magistral):
//! `[TOOL_CALLS]name[ARGS]{...}`, once per call, perhaps with `[CALL_ID]id` before
//! `[ARGS]`. After the marker an array of call objects (the earlier form) is read too.

use super::mistral_json::CALLS;
use super::{Format, GrammarStart};
use crate::constrain::{calls_lark, literal, schema_for_grammar};
use crate::output::{
    find_marker, is_tool_name, CallReader, Core, Found, JsonCall, JsonScanner, Next, Segment,
};
use crate::request::ToolSpec;

const ARGS: &str = "[ARGS]";
const CALL_ID: &str = "[CALL_ID]";
pub(super) const MARKERS: &[&str] = &[CALLS, ARGS, CALL_ID];

/// How far a name may run without `[ARGS]` before the call is taken for text.
const MAX_HEAD: usize = 256;

pub(super) struct Mistral;

impl Format for Mistral {
    fn names(&self) -> &'static [&'static str] {
        &["mistral"]
    }

    fn models(&self) -> &'static str {
        "Mistral Small 3.2, Devstral, Magistral, Ministral 3"
    }

    fn detect(&self, template: &str) -> bool {
        template.contains(CALLS) && template.contains(ARGS)
    }

    fn markers(&self) -> &'static [&'static str] {
        MARKERS
    }

    fn open(&self) -> &'static str {
        CALLS
    }

    fn reader(&self) -> Box<dyn CallReader> {
        head_reader()
    }

    fn grammar(&self, tools: &[&ToolSpec], start: GrammarStart) -> String {
        let open = match start {
            GrammarStart::Forced => literal(CALLS),
            GrammarStart::AfterMarker { .. } | GrammarStart::Bare => literal(""),
        };
        calls_lark(&open, "", None, tools, |i, tool, lark| {
            lark.push_str(&format!(
                "c{i}: {} a{i}\n",
                literal(&format!("{}{ARGS}", tool.name))
            ));
            lark.push_str(&format!(
                "a{i}: %json {}\n",
                schema_for_grammar(&tool.parameters)
            ));
            format!("c{i}")
        })
    }
}

pub(super) fn head_reader() -> Box<dyn CallReader> {
    Box::new(MistralHead)
}

/// What follows `[TOOL_CALLS]`: a call's name, perhaps `[CALL_ID]` and an id, then
/// `[ARGS]` and the arguments object; or a JSON array of call objects.
#[derive(Debug)]
struct MistralHead;

impl CallReader for MistralHead {
    fn read(&mut self, p: &mut Core, out: &mut Vec<Segment>) -> Next {
        let trimmed = p.held.trim_start();
        if trimmed.is_empty() {
            return Next::Wait;
        }
        // `[{...}, ...]`, or a lone object: call objects, read as bare ones.
        if trimmed.starts_with('{') || trimmed.starts_with('[') {
            let ws = p.held.len() - trimmed.len();
            let skip = if trimmed.starts_with('[') { ws + 1 } else { ws };
            p.held.drain(..skip);
            p.in_array = true;
            p.in_text = false;
            return Next::Text;
        }
        // The name runs to `[ARGS]` (or `[CALL_ID]`); some models go straight from the
        // name to its arguments' `{`.
        let name_end = p.held.find(['[', '{']).unwrap_or(p.held.len());
        let name = p.held[..name_end].trim();
        let name_so_far = name.is_empty() || is_tool_name(name);
        let (head, marker_len) = match find_marker(&p.held, &[ARGS, "{"]) {
            Found::At(at, marker) if name_so_far && !name.is_empty() => (
                p.held[..at].to_owned(),
                if marker == "{" { 0 } else { marker.len() },
            ),
            Found::No { .. } if name_so_far && p.held.len() <= MAX_HEAD => return Next::Wait,
            _ => {
                tracing::warn!(body = %p.held, "a tool call could not be parsed; returned as text");
                let text = format!("{CALLS}{}", std::mem::take(&mut p.held));
                p.emit(out, Segment::Text(text));
                return Next::Text;
            }
        };
        let name = name.to_owned();
        p.held.drain(..head.len() + marker_len);
        p.start_call(out, name);
        // The call is its arguments, an object: it ends with them.
        Next::Reader(Box::new(JsonCall::arguments_only(JsonScanner::object())))
    }

    fn finish(&mut self, p: &mut Core, _: &mut Vec<Segment>) {
        tracing::info!(body = %p.held, "a tool call was cut off before its arguments; dropped");
    }
}
