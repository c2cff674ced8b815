//! FunctionGemma (Gemma 3 270M):
//! `<start_function_call>call:name{key:<escape>text<escape>,n:1}<end_function_call>`.

use super::{Format, GrammarStart};
use crate::constrain::gemma;
use crate::output::{CallReader, GemmaCall, GemmaSyntax};
use crate::request::ToolSpec;

const SYNTAX: GemmaSyntax = GemmaSyntax {
    open: "<start_function_call>",
    close: "<end_function_call>",
    delim: "<escape>",
};

pub(super) struct FunctionGemma;

impl Format for FunctionGemma {
    fn names(&self) -> &'static [&'static str] {
        &["functiongemma", "gemma"]
    }

    fn models(&self) -> &'static str {
        "FunctionGemma (Gemma 3 270M)"
    }

    fn detect(&self, template: &str) -> bool {
        template.contains(SYNTAX.open)
    }

    fn markers(&self) -> &'static [&'static str] {
        &[SYNTAX.open, SYNTAX.close, SYNTAX.delim]
    }

    fn open(&self) -> &'static str {
        SYNTAX.open
    }

    fn reader(&self) -> Box<dyn CallReader> {
        Box::new(GemmaCall::new(SYNTAX))
    }

    fn grammar(&self, tools: &[&ToolSpec], start: GrammarStart) -> String {
        gemma::calls(SYNTAX, gemma::ESCAPE_STRING, tools, start)
    }
}
