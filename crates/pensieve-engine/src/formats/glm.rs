//! GLM's calls: the name after `<tool_call>`, then `<arg_key>K</arg_key>` and
//! `<arg_value>V</arg_value>` per argument, values raw and typed by the tool's schema.
//! GLM-4.5 and 4.6 put a line break after the name and after each part; GLM-4.7 and
//! 5.x run the parts together (and their prompt pre-opens `<think>`). One reader takes
//! both; each has its own grammar.

use super::{Format, GrammarStart};
use crate::constrain::xml::{call_rule, XmlShape};
use crate::constrain::{calls_lark, literal};
use crate::output::{CallReader, XmlCall, XmlSyntax};
use crate::request::ToolSpec;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
const KEY: &str = "<arg_key>";

const SYNTAX: XmlSyntax = XmlSyntax {
    open: OPEN,
    name_open: "",
    name_close: "",
    key_open: KEY,
    key_close: "</arg_key>",
    value_open: "<arg_value>",
    value_close: "</arg_value>",
    value_newlines: false,
    call_close: CLOSE,
    block_close: None,
};

const MARKERS: &[&str] = &[
    OPEN,
    CLOSE,
    KEY,
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
];

fn grammar(shape: &XmlShape, tools: &[&ToolSpec], start: GrammarStart) -> String {
    let open = match start {
        GrammarStart::Forced => literal(OPEN),
        GrammarStart::AfterMarker { .. } | GrammarStart::Bare => literal(""),
    };
    calls_lark(&open, CLOSE, None, tools, |i, tool, lark| {
        call_rule(shape, i, tool, lark)
    })
}

/// GLM-4.5 and 4.6: parts on lines of their own.
pub(super) struct Glm45;

impl Format for Glm45 {
    fn names(&self) -> &'static [&'static str] {
        &["glm45", "glm"]
    }

    fn models(&self) -> &'static str {
        "GLM-4.5, GLM-4.5-Air, GLM-4.6"
    }

    fn detect(&self, template: &str) -> bool {
        template.contains(KEY)
    }

    fn markers(&self) -> &'static [&'static str] {
        MARKERS
    }

    fn open(&self) -> &'static str {
        OPEN
    }

    fn reader(&self) -> Box<dyn CallReader> {
        Box::new(XmlCall::new(SYNTAX))
    }

    fn grammar(&self, tools: &[&ToolSpec], start: GrammarStart) -> String {
        const SHAPE: XmlShape = XmlShape {
            head: |name| format!("{name}\n"),
            param_open: |key| format!("<arg_key>{key}</arg_key>\n<arg_value>"),
            param_close: "</arg_value>\n",
            tail: "",
        };
        grammar(&SHAPE, tools, start)
    }
}

/// GLM-4.7, 4.7-Flash and 5.x: the parts run together.
pub(super) struct Glm47;

impl Format for Glm47 {
    fn names(&self) -> &'static [&'static str] {
        &["glm47"]
    }

    fn models(&self) -> &'static str {
        "GLM-4.7, GLM-4.7-Flash, GLM-5"
    }

    /// The compact template writes the value's tag right after the key's.
    fn detect(&self, template: &str) -> bool {
        template.contains(KEY) && template.contains("</arg_key><arg_value>")
    }

    fn markers(&self) -> &'static [&'static str] {
        MARKERS
    }

    fn open(&self) -> &'static str {
        OPEN
    }

    fn reader(&self) -> Box<dyn CallReader> {
        Box::new(XmlCall::new(SYNTAX))
    }

    fn grammar(&self, tools: &[&ToolSpec], start: GrammarStart) -> String {
        const SHAPE: XmlShape = XmlShape {
            head: |name| name.to_owned(),
            param_open: |key| format!("<arg_key>{key}</arg_key><arg_value>"),
            param_close: "</arg_value>",
            tail: "",
        };
        grammar(&SHAPE, tools, start)
    }
}
