//! The tool-call formats models write, one module per format behind [`Format`], listed
//! once in [`REGISTRY`].
//!
//! A format owns everything that is particular to it: its names for `--tool-parser`, how
//! a chat template shows it, its marker text (which a model may have as control tokens),
//! the reader that turns a call into the neutral call segments as it streams, and the
//! grammars that make a forced or lazily started call valid by construction. The generic
//! machinery it builds on lives elsewhere: the streaming text/reasoning parser and the
//! shared call readers in [`crate::output`], the grammar plumbing in [`crate::constrain`].
//!
//! Adding a format is one new module here and one line in [`REGISTRY`].

mod deepseek_dsml;
mod deepseek_v31;
mod functiongemma;
mod gemma4;
mod glm;
mod harmony;
mod hermes;
mod kimi;
mod lfm2;
mod llama3;
mod minimax;
mod mistral;
mod mistral_json;
mod qwen3_coder;
#[cfg(test)]
mod test_support;

use std::borrow::Cow;

use crate::output::{CallReader, THINK_CLOSE, THINK_OPEN};
use crate::request::{Message, Role, ToolCall, ToolSpec};

/// How a model writes tool calls (and the reasoning around them). Implemented once per
/// format; see the module docs.
pub(crate) trait Format: Send + Sync + 'static {
    /// Names `--tool-parser` takes; the first is the one shown (vLLM's, where it has one).
    fn names(&self) -> &'static [&'static str];

    /// The models that write it, for `--tool-parser` help, `pensieve show` and the README.
    fn models(&self) -> &'static str;

    /// Whether a chat template teaches its model this format. [`REGISTRY`] is asked in
    /// order, so a format whose template also holds a more general one's marker (Qwen's
    /// XML has Hermes' `<tool_call>`) comes before it.
    fn detect(&self, template: &str) -> bool;

    /// The marker text the format writes. A model may have each as one control token,
    /// which then must read as this text (see [`crate::output::marker_tokens`]).
    fn markers(&self) -> &'static [&'static str];

    /// The marker that opens a call (for Llama 3, may): the output parser hands what
    /// follows it to [`Format::reader`], and a lazy grammar starts at it.
    fn open(&self) -> &'static str;

    /// Other text that opens calls as [`Format::open`] does (Kimi's singular
    /// `<|tool_call_section_begin|>`). A lazy grammar starts only at `open`.
    fn open_variants(&self) -> &'static [&'static str] {
        &[]
    }

    /// Reads one call (or, for arrays, the calls) after [`Format::open`].
    fn reader(&self) -> Box<dyn CallReader>;

    /// Whether the model may write a JSON call object with no marker before it: Llama 3
    /// always does, small Hermes models often drop their tags.
    fn bare_calls(&self) -> bool {
        false
    }

    /// Text that opens a call without its marker, which models write too (Qwen's
    /// `<function=` without `<tool_call>`). The output parser reads a call from it, and
    /// the call's grammar ([`GrammarStart::Bare`], starting with it) starts there.
    fn bare_open(&self) -> Option<&'static str> {
        None
    }

    /// The marker that follows a call's name, for formats whose models also write a
    /// call without its opening marker, name first (GLM writes `Bash<arg_key>...` for
    /// `<tool_call>Bash<arg_key>...`, and users see it as text). A block that starts with
    /// an offered tool's name and then this is read as a call. No grammar starts there:
    /// only the text is recovered.
    fn bare_name_then(&self) -> Option<&'static str> {
        None
    }

    /// The markers around reasoning: `<think>` and `</think>` unless the format has its
    /// own (Gemma 4's thought channel).
    fn reasoning(&self) -> (&'static str, &'static str) {
        (THINK_OPEN, THINK_CLOSE)
    }

    /// The label a reasoning block opens with, when its open marker is a channel's: the
    /// label and the line breaks just inside both markers are markup, not reasoning
    /// (Gemma 4 writes `<|channel>thought\n...\n<channel|>`).
    fn reasoning_label(&self) -> Option<&'static str> {
        None
    }

    /// Whether [`Format::reader`] reads the whole output from its first token, text and
    /// reasoning included (Harmony's channels), rather than one call after its marker.
    /// Such a reader is used whether or not the request offers tools; it makes calls only
    /// when `Core::format.tools` is set.
    fn owns_output(&self) -> bool {
        false
    }

    /// The key of a JSON call object that holds its arguments.
    fn arguments_key(&self) -> &'static str {
        "arguments"
    }

    /// Lark for the calls, from where `start` says up to and with what closes them.
    fn grammar(&self, tools: &[&ToolSpec], start: GrammarStart) -> String;

    /// The tools described as the format's models were taught to read them, for
    /// templates that leave that to the caller (DeepSeek V3.1's): it goes into the system
    /// prompt. `None` when the format documents no such text; the `<tool_call>`
    /// convention is used then.
    fn tool_prompt(&self, _tools: &[ToolSpec]) -> Option<String> {
        None
    }

    /// Earlier calls as the model wrote them, for templates that render only a turn's
    /// text (LFM2's first template: its models read their calls back from the text).
    /// `None`: the format has no such text, and those templates drop the calls.
    fn calls_as_text(&self, _calls: &[ToolCall]) -> Option<String> {
        None
    }

    /// Reshapes a (normalized) conversation and its tools into what the format's own
    /// templates accept, where clients send history the model would not have written:
    /// gpt-oss's template renders one call per assistant message and needs every tool
    /// described. Runs before every render, so it must be pure.
    fn history(&self, _conversation: &mut Vec<Message>, _tools: &mut Cow<'_, [ToolSpec]>) {}
}

/// Where a call's grammar starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrammarStart {
    /// The whole output is exactly one call, marker included (a forced call).
    Forced,
    /// Right after the opening marker (`tool_choice: auto`); with `parallel`, formats
    /// that hold several calls after one marker (Mistral's arrays) allow them.
    AfterMarker { parallel: bool },
    /// A call without its marker, perhaps after whitespace: a JSON call object, or
    /// what starts with [`Format::bare_open`].
    Bare,
}

/// Every format, in the order templates are matched against them.
pub(crate) static REGISTRY: &[&dyn Format] = &[
    &harmony::Harmony,
    &qwen3_coder::Qwen3Coder,
    &glm::GLM47,
    &glm::GLM45,
    &gemma4::Gemma4,
    &minimax::MiniMaxM2,
    &deepseek_dsml::DEEPSEEK_V4,
    &deepseek_dsml::DEEPSEEK_V32,
    &deepseek_v31::DeepSeekV31,
    &kimi::KimiK2,
    &lfm2::Lfm2,
    &hermes::Hermes,
    &mistral::Mistral,
    &mistral_json::MistralJson,
    &functiongemma::FunctionGemma,
    &llama3::Llama3Json,
];

/// A handle on one of the [`REGISTRY`]'s formats: cheap to copy, compared by name.
#[derive(Clone, Copy)]
pub struct ToolFormat(&'static dyn Format);

impl ToolFormat {
    pub const HERMES: ToolFormat = ToolFormat(&hermes::Hermes);
    pub const LLAMA3_JSON: ToolFormat = ToolFormat(&llama3::Llama3Json);
    pub const MISTRAL: ToolFormat = ToolFormat(&mistral::Mistral);
    pub const MISTRAL_JSON: ToolFormat = ToolFormat(&mistral_json::MistralJson);
    pub const FUNCTIONGEMMA: ToolFormat = ToolFormat(&functiongemma::FunctionGemma);
    pub const GEMMA4: ToolFormat = ToolFormat(&gemma4::Gemma4);
    pub const QWEN3_CODER: ToolFormat = ToolFormat(&qwen3_coder::Qwen3Coder);
    pub const GLM45: ToolFormat = ToolFormat(&glm::GLM45);
    pub const GLM47: ToolFormat = ToolFormat(&glm::GLM47);
    pub const HARMONY: ToolFormat = ToolFormat(&harmony::Harmony);
    pub const MINIMAX_M2: ToolFormat = ToolFormat(&minimax::MiniMaxM2);
    pub const DEEPSEEK_V31: ToolFormat = ToolFormat(&deepseek_v31::DeepSeekV31);
    pub const DEEPSEEK_V32: ToolFormat = ToolFormat(&deepseek_dsml::DEEPSEEK_V32);
    pub const DEEPSEEK_V4: ToolFormat = ToolFormat(&deepseek_dsml::DEEPSEEK_V4);
    pub const KIMI_K2: ToolFormat = ToolFormat(&kimi::KimiK2);
    pub const LFM2: ToolFormat = ToolFormat(&lfm2::Lfm2);

    /// Every format.
    pub fn all() -> impl Iterator<Item = ToolFormat> {
        REGISTRY.iter().map(|f| ToolFormat(*f))
    }

    /// The format a chat template teaches its model, when it is one we parse.
    pub fn detect(template: &str) -> Option<ToolFormat> {
        Self::all().find(|f| f.0.detect(template))
    }

    /// The format `--tool-parser` names.
    pub fn from_name(name: &str) -> Option<ToolFormat> {
        Self::all().find(|f| f.0.names().contains(&name))
    }

    /// Every name `--tool-parser` takes.
    pub fn names() -> impl Iterator<Item = &'static str> {
        REGISTRY.iter().flat_map(|f| f.names().iter().copied())
    }

    /// The name shown for it.
    pub fn name(self) -> &'static str {
        self.0.names()[0]
    }

    /// Other names `--tool-parser` takes for it.
    pub fn aliases(self) -> &'static [&'static str] {
        &self.0.names()[1..]
    }

    /// The models that write it.
    pub fn models(self) -> &'static str {
        self.0.models()
    }

    pub fn markers(self) -> &'static [&'static str] {
        self.0.markers()
    }

    pub fn open(self) -> &'static str {
        self.0.open()
    }

    pub fn open_variants(self) -> &'static [&'static str] {
        self.0.open_variants()
    }

    pub fn bare_calls(self) -> bool {
        self.0.bare_calls()
    }

    pub fn bare_open(self) -> Option<&'static str> {
        self.0.bare_open()
    }

    pub fn bare_name_then(self) -> Option<&'static str> {
        self.0.bare_name_then()
    }

    pub fn arguments_key(self) -> &'static str {
        self.0.arguments_key()
    }

    pub fn reasoning(self) -> (&'static str, &'static str) {
        self.0.reasoning()
    }

    pub fn reasoning_label(self) -> Option<&'static str> {
        self.0.reasoning_label()
    }

    pub fn owns_output(self) -> bool {
        self.0.owns_output()
    }

    pub(crate) fn reader(self) -> Box<dyn CallReader> {
        self.0.reader()
    }

    pub(crate) fn grammar(self, tools: &[&ToolSpec], start: GrammarStart) -> String {
        self.0.grammar(tools, start)
    }

    pub fn tool_prompt(self, tools: &[ToolSpec]) -> Option<String> {
        self.0.tool_prompt(tools)
    }

    /// Whether the format has its own [`Format::tool_prompt`].
    pub fn has_tool_prompt(self) -> bool {
        self.0.tool_prompt(&[]).is_some()
    }

    pub(crate) fn calls_as_text(self, calls: &[ToolCall]) -> Option<String> {
        self.0.calls_as_text(calls)
    }

    pub(crate) fn history(self, conversation: &mut Vec<Message>, tools: &mut Cow<'_, [ToolSpec]>) {
        self.0.history(conversation, tools)
    }
}

/// Gives each call of `conversation` the id `id(name, index)` returns (`index` counting
/// the conversation's calls from 0), and points each tool result at its call's new id
/// (a result answers the latest call with its id). For formats whose models read their
/// calls' ids (Kimi's `functions.NAME:IDX`): the ids clients send back are ours, which
/// the model never wrote. Depends only on the calls' order, so earlier turns render the
/// same in every later request (the prefix cache relies on it).
pub(super) fn rename_call_ids(conversation: &mut [Message], id: impl Fn(&str, usize) -> String) {
    let mut ids = std::collections::HashMap::new();
    let mut index = 0;
    for message in conversation {
        for call in &mut message.tool_calls {
            let new = id(&call.name, index);
            index += 1;
            ids.insert(std::mem::replace(&mut call.id, new.clone()), new);
        }
        if message.role == Role::Tool {
            if let Some(id) = message.tool_call_id.as_mut() {
                if let Some(new) = ids.get(id) {
                    id.clone_from(new);
                }
            }
        }
    }
}

impl PartialEq for ToolFormat {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for ToolFormat {}

impl std::fmt::Debug for ToolFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for ToolFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        let mut seen = std::collections::HashSet::new();
        for name in ToolFormat::names() {
            assert!(seen.insert(name), "{name} twice");
            assert!(ToolFormat::from_name(name).is_some(), "{name}");
        }
        for format in ToolFormat::all() {
            assert_eq!(ToolFormat::from_name(format.name()), Some(format));
            assert!(format.markers().contains(&format.open()) || format.open().is_empty());
        }
    }
}

/// The format each real chat template in the template fixtures is detected as.
#[cfg(test)]
mod detection_tests {
    use super::ToolFormat;

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/src/template/fixtures/{name}.jinja",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn real_templates_are_detected_as_their_format() {
        let cases = [
            ("qwen2.5-coder", Some(ToolFormat::HERMES)),
            ("qwen3-coder", Some(ToolFormat::QWEN3_CODER)),
            ("qwen3.5", Some(ToolFormat::QWEN3_CODER)),
            ("nemotron3-nano", Some(ToolFormat::QWEN3_CODER)),
            ("glm-4.6", Some(ToolFormat::GLM45)),
            ("glm-4.7-flash", Some(ToolFormat::GLM47)),
            ("gpt-oss", Some(ToolFormat::HARMONY)),
            ("gemma4", Some(ToolFormat::GEMMA4)),
            ("minimax-m2", Some(ToolFormat::MINIMAX_M2)),
            ("deepseek-v3.1", Some(ToolFormat::DEEPSEEK_V31)),
            ("deepseek-v3.1-llamacpp", Some(ToolFormat::DEEPSEEK_V31)),
            ("deepseek-v3.2", Some(ToolFormat::DEEPSEEK_V32)),
            ("kimi-k2", Some(ToolFormat::KIMI_K2)),
            ("kimi-k2-instruct", Some(ToolFormat::KIMI_K2)),
            ("kimi-k2-thinking", Some(ToolFormat::KIMI_K2)),
            ("lfm2-8b-a1b", Some(ToolFormat::LFM2)),
            ("lfm2.5-8b-a1b", Some(ToolFormat::LFM2)),
            ("smollm2", None),
        ];
        for (name, expected) in cases {
            assert_eq!(ToolFormat::detect(&fixture(name)), expected, "{name}");
        }
    }
}

/// The README's list of formats is the registry's.
#[cfg(test)]
mod readme_tests {
    #[test]
    fn the_readme_lists_every_format_with_its_models() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
        let readme = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let readme = readme.split_whitespace().collect::<Vec<_>>().join(" ");
        for format in super::ToolFormat::all() {
            let entry = format!("`{}` ({}", format.name(), format.models());
            assert!(readme.contains(&entry), "README lacks {entry:?}");
        }
    }
}
