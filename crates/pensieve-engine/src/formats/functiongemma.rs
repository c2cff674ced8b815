//! FunctionGemma (Gemma 3 270M):
//! `<start_function_call>call:name{key:<escape>text<escape>,n:1}<end_function_call>`.

use super::{Format, GrammarStart};
use crate::constrain::{calls_lark, gemma, literal};
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
        let open = match start {
            GrammarStart::Forced => literal(SYNTAX.open),
            GrammarStart::AfterMarker { .. } | GrammarStart::Bare => literal(""),
        };
        let mut lark = calls_lark(&open, SYNTAX.close, None, tools, |i, tool, lark| {
            let mut rules = gemma::Rules::new(&format!("g{i}_"));
            let value = rules.value(&tool.parameters);
            lark.push_str(&format!(
                "c{i}: {} {value}\n",
                literal(&format!("call:{}", tool.name))
            ));
            lark.push_str(&rules.into_lark());
            format!("c{i}")
        });
        lark.push_str(gemma::TERMINALS);
        lark
    }
}
