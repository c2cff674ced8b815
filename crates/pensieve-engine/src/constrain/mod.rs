//! Constrained decoding with llguidance: grammars over the model's vocabulary that make
//! what the model writes valid by construction. A forced tool call (`tool_choice: any`
//! or a named tool) is the model's format around arguments that match the tool's JSON
//! schema, then the end of the turn; under `auto` the same grammar starts when the model
//! opens a call. Structured output is one JSON value of a schema. `gemma` writes
//! FunctionGemma's argument syntax.

use std::collections::HashMap;
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

#[cfg(doc)]
use crate::model::TokenMask;
use crate::model::{TokenId, Tokenizer};
use crate::output::ToolFormat;
use crate::request::ToolSpec;

mod cache;
mod gemma;
mod schema;

pub use cache::CacheStats;

/// Builds grammars for one model's vocabulary (built once: it walks the vocabulary).
pub struct Grammars {
    factory: ParserFactory,
    /// Compiled grammars, by their lark.
    cache: cache::GrammarCache,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Grammars")
    }
}

impl Grammars {
    /// `markers`: control tokens that stand for marker text, so a grammar's `<tool_call>`
    /// can be that one token.
    pub fn new(
        tokenizer: &dyn Tokenizer,
        markers: &HashMap<TokenId, Vec<u8>>,
    ) -> Result<Grammars, String> {
        let size = tokenizer.vocab_size();
        let mut words = Vec::with_capacity(size);
        let mut ends = Vec::new();
        for id in 0..size {
            let token = TokenId::try_from(id).map_err(|e| e.to_string())?;
            if tokenizer.is_end_of_generation(token) {
                ends.push(token as u32);
            }
            let bytes = match markers.get(&token) {
                Some(marker) => marker.clone(),
                None => tokenizer.token_bytes(token),
            };
            words.push(bytes);
        }
        let Some(&eos) = ends.first() else {
            return Err("the vocabulary has no end-of-generation token".into());
        };
        let info = TokRxInfo::new(size as u32, eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&ends);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        // llguidance logs to stderr by default; errors come back as values here.
        factory.set_stderr_log_level(0);
        Ok(Grammars {
            factory,
            cache: cache::GrammarCache::new(cache::CAPACITY),
        })
    }

    /// A grammar for exactly one call of one of `tools` (only `name`, when given), in the
    /// model's format, then the end of the turn.
    pub fn forced_call(
        &self,
        format: ToolFormat,
        tools: &[ToolSpec],
        name: Option<&str>,
    ) -> Result<Constraint, String> {
        let chosen: Vec<&ToolSpec> = tools
            .iter()
            .filter(|t| name.is_none_or(|n| t.name == n))
            .collect();
        if chosen.is_empty() {
            return Err(match name {
                Some(n) => format!("tool_choice names {n:?}, which is not among the tools"),
                None => "tool_choice requires a tool call, but no tools were given".into(),
            });
        }
        let frame = Frame::of(format);
        let open = format!("{}{}", frame.marker, frame.after_marker);
        let lark = calls_lark(format, &literal(&open), frame.close, &chosen, false);
        self.constraint(lark)
    }

    /// For `tool_choice: auto`: the grammars a call must follow once the model opens
    /// one, with its marker or, in the formats that allow it, with a bare object at the
    /// start of the output that names one of the tools. Without `parallel`, the turn ends after the first call.
    pub fn call_body(
        &self,
        format: ToolFormat,
        tools: &[ToolSpec],
        parallel: bool,
    ) -> Result<LazyCall, String> {
        let tools: Vec<&ToolSpec> = tools.iter().collect();
        let frame = Frame::of(format);
        let tagged = calls_lark(
            format,
            &literal(frame.after_marker),
            frame.close,
            &tools,
            parallel,
        );
        // A bare call's first token may carry the newline after a code fence.
        let bare = match format.bare_calls() {
            true => Some(self.constraint(calls_lark(format, WS, "", &tools, false))?),
            false => None,
        };
        Ok(LazyCall {
            tagged: self.constraint(tagged)?,
            bare,
            trigger: format.open(),
            parallel,
            names: tools.iter().map(|t| t.name.clone()).collect(),
        })
    }

    /// Output that is one JSON value matching `schema` (structured output), then the end
    /// of the turn.
    pub fn json_output(&self, schema: &Value) -> Result<Constraint, String> {
        self.constraint(format!("start: %json {}\n", schema_for_grammar(schema)))
    }

    fn constraint(&self, lark: String) -> Result<Constraint, String> {
        let matcher = self.cache.get_or_compile(&lark, || self.matcher(&lark))?;
        Ok(Constraint { lark, matcher })
    }

    /// How often a grammar was found compiled, and how many are held.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    fn matcher(&self, lark: &str) -> Result<Matcher, String> {
        let grammar = TopLevelGrammar::from_lark(lark.to_owned());
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| format!("cannot build the grammar: {e}"))?;
        Ok(Matcher::new(Ok(parser)))
    }
}

/// A request's grammar and where its generation stands in it.
pub struct Constraint {
    lark: String,
    matcher: Matcher,
}

impl Constraint {
    /// The tokens allowed next (see [`TokenMask`]); None when the grammar has failed
    /// (then nothing is constrained any more, and the failure is logged once).
    pub fn mask(&mut self) -> Option<SimpleVob> {
        // Once the grammar is complete, only the end of the turn is allowed.
        match self.matcher.compute_mask_or_eos() {
            Ok(mask) => Some(mask),
            Err(e) => {
                tracing::warn!("grammar failed, generation continues unconstrained: {e}");
                None
            }
        }
    }

    /// The token sampled under the last mask.
    pub fn accept(&mut self, token: TokenId) {
        // A complete grammar has only the end of the turn left: nothing to consume.
        if self.matcher.is_stopped() {
            return;
        }
        if let Err(e) = self.matcher.consume_token(token as u32) {
            tracing::warn!("grammar rejected a token: {e}");
        }
    }
}

impl Constraint {
    /// The grammar is complete (a lazily started call has ended).
    pub fn is_complete(&mut self) -> bool {
        self.matcher.is_stopped() || self.matcher.is_accepting().unwrap_or(false)
    }

    /// Whether the token can start (or continue) what the grammar wants.
    fn try_accept(&mut self, token: TokenId) -> bool {
        self.matcher.consume_token(token as u32).is_ok() && !self.matcher.is_error()
    }
}

/// The grammars of a call under `tool_choice: auto`, started when the model opens one.
#[derive(Debug, Clone, PartialEq)]
pub struct LazyCall {
    /// After the opening marker, up to and with the closing one.
    tagged: Constraint,
    /// A call's object alone (Llama 3; Hermes models that drop the tags).
    bare: Option<Constraint>,
    /// The marker that opens a call.
    trigger: &'static str,
    /// More calls may follow one; without, the grammar of a finished call keeps only the
    /// end of the turn allowed.
    parallel: bool,
    /// The tools' names: a call without its marker must name one of them.
    names: Vec<String>,
}

impl LazyCall {
    /// Whether the model may go on after a call.
    pub fn allows_more(&self) -> bool {
        self.parallel
    }

    /// The constraint for what follows the marker, when `marker` opens a call.
    pub fn after_marker(&self, marker: &[u8]) -> Option<Constraint> {
        (marker == self.trigger.as_bytes()).then(|| self.tagged.clone())
    }

    /// Whether the format has calls without a marker.
    pub fn has_bare_calls(&self) -> bool {
        self.bare.is_some()
    }

    /// The names of the tools a call may name.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Once a call without its marker has named a tool: the constraint for the rest of
    /// the call, with `tokens` (the call so far) consumed. None when they don't fit it.
    pub fn bare_after(&self, tokens: &[TokenId]) -> Option<Constraint> {
        let mut c = self.bare.clone()?;
        tokens.iter().all(|t| c.try_accept(*t)).then_some(c)
    }
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("lark", &self.lark)
            .finish()
    }
}

impl Clone for Constraint {
    fn clone(&self) -> Self {
        Constraint {
            lark: self.lark.clone(),
            matcher: self.matcher.deep_clone(),
        }
    }
}

impl PartialEq for Constraint {
    fn eq(&self, other: &Self) -> bool {
        self.lark == other.lark
    }
}

/// Whitespace, as lark expressions: before a call, and inside a call's opening.
const WS: &str = "/[ \\t\\n]*/";
const INDENT: &str = "/[ \\t\\n]{0,16}/";

/// The text around a format's calls.
struct Frame {
    /// The marker that opens a call.
    marker: &'static str,
    /// What the model writes after it, before the call.
    after_marker: &'static str,
    /// What closes a call (or, for arrays, the calls).
    close: &'static str,
}

impl Frame {
    fn of(format: ToolFormat) -> Frame {
        let (after_marker, close) = match format {
            ToolFormat::Hermes => ("\n", "\n</tool_call>"),
            ToolFormat::Llama3Json | ToolFormat::Mistral => ("", ""),
            ToolFormat::MistralJson => ("[", "]"),
            ToolFormat::FunctionGemma => ("", "<end_function_call>"),
        };
        Frame {
            // Llama 3 writes its JSON calls without the tag (that is for built-in tools).
            marker: match format {
                ToolFormat::Llama3Json => "",
                _ => format.open(),
            },
            after_marker,
            close,
        }
    }
}

/// Lark for `open` (a lark expression), one call of one of the tools (several, separated
/// by `, `, in Mistral's arrays when `parallel`), `close`.
fn calls_lark(
    format: ToolFormat,
    open: &str,
    close: &str,
    tools: &[&ToolSpec],
    parallel: bool,
) -> String {
    let calls = match (format, parallel) {
        (ToolFormat::MistralJson, true) => "call (\", \" call)*",
        _ => "call",
    };
    let close = if close.is_empty() {
        String::new()
    } else {
        literal(close)
    };
    let mut lark = format!("start: {open} {calls} {close}\n");
    let alternatives: Vec<String> = (0..tools.len()).map(|i| format!("c{i}")).collect();
    lark.push_str(&format!("call: {}\n", alternatives.join(" | ")));
    for (i, tool) in tools.iter().enumerate() {
        let name = &tool.name;
        // The head as a lark expression. A JSON call may be pretty-printed, as small
        // models write it: a little whitespace around its keys (bounded, so that a model
        // can't spin in it), which a bare call's replay needs too (a token can carry the
        // line break after the name).
        let (head, tail) = match format {
            ToolFormat::Hermes | ToolFormat::Llama3Json | ToolFormat::MistralJson => {
                let (name, key) = (json_string(name), json_string(format.arguments_key()));
                let pieces = ["{", "\"name\"", ":", &name, ",", &key, ":"].map(literal);
                (
                    format!("{} {INDENT}", pieces.join(&format!(" {INDENT} "))),
                    format!("{INDENT} {}", literal("}")),
                )
            }
            ToolFormat::Mistral => (literal(&format!("{name}[ARGS]")), String::new()),
            ToolFormat::FunctionGemma => (literal(&format!("call:{name}")), String::new()),
        };
        lark.push_str(&format!("c{i}: {head} a{i} {tail}\n"));
        match format {
            ToolFormat::FunctionGemma => {
                let mut rules = gemma::Rules::new(&format!("g{i}_"));
                let value = rules.value(&tool.parameters);
                lark.push_str(&format!("a{i}: {value}\n"));
                lark.push_str(&rules.into_lark());
            }
            _ => lark.push_str(&format!(
                "a{i}: %json {}\n",
                schema_for_grammar(&tool.parameters)
            )),
        }
    }
    if format == ToolFormat::FunctionGemma {
        lark.push_str(gemma::TERMINALS);
    }
    lark
}

/// A schema as llguidance takes it (see [`schema`]).
fn schema_for_grammar(schema: &Value) -> String {
    schema::for_grammar(schema)
}

fn json_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// A lark string literal for `s`.
fn literal(s: &str) -> String {
    json_string(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TokenMask;
    use crate::testing::ByteTokenizer;
    use serde_json::json;

    fn weather() -> ToolSpec {
        ToolSpec {
            name: "get_weather".into(),
            description: None,
            parameters: json!({
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"],
                "additionalProperties": false
            }),
        }
    }

    /// Drive the grammar with a preference: `prefer`'s next byte when allowed.
    fn generate(c: &mut Constraint, prefer: &str) -> String {
        let tokenizer = ByteTokenizer;
        let mut out = Vec::new();
        let mut prefer = ByteTokenizer.encode(prefer).into_iter();
        for _ in 0..400 {
            let mask = match c.matcher.compute_mask_or_eos() {
                Ok(m) => m,
                Err(e) => panic!("{e} after {:?}", String::from_utf8_lossy(&out)),
            };
            let m = TokenMask(mask.as_slice());
            let wanted = prefer.next();
            // Else something that ends what is open, else the first token allowed.
            let closers = ByteTokenizer.encode("\"}1,");
            let token = match wanted {
                Some(t) if m.allows(t) => t,
                _ => closers
                    .into_iter()
                    .chain(0..257)
                    .find(|t| m.allows(*t))
                    .expect("something is allowed"),
            };
            if tokenizer.is_end_of_generation(token) {
                break;
            }
            c.accept(token);
            out.extend(tokenizer.token_bytes(token));
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_forced_call_matches_the_schema() {
        let grammars = Grammars::new(&ByteTokenizer, &HashMap::new()).unwrap();
        let tools = [weather()];
        let mut c = grammars
            .forced_call(ToolFormat::Hermes, &tools, None)
            .unwrap();
        // The "model" wants to chat; the grammar makes it call.
        let text = generate(&mut c, "Sure! The weather is nice.");
        let body = text
            .strip_prefix("<tool_call>\n")
            .and_then(|t| t.strip_suffix("\n</tool_call>"))
            .unwrap_or_else(|| panic!("{text:?}"));
        let call: Value = serde_json::from_str(body).unwrap();
        assert_eq!(call["name"], "get_weather");
        assert!(call["arguments"]["city"].is_string(), "{call}");
        assert!(call["arguments"]["days"].is_i64(), "{call}");
    }

    #[test]
    fn a_bare_call_follows_the_schema_once_it_names_a_tool() {
        let grammars = Grammars::new(&ByteTokenizer, &HashMap::new()).unwrap();
        let lazy = grammars
            .call_body(ToolFormat::Hermes, &[weather()], true)
            .unwrap();
        assert_eq!(lazy.names(), ["get_weather".to_owned()]);
        let other = ByteTokenizer.encode("{\"name\": \"get_time\"");
        assert!(lazy.bare_after(&other).is_none());
        let named = ByteTokenizer.encode("{\"name\": \"get_weather\"");
        let mut c = lazy.bare_after(&named).unwrap();
        let rest = ", \"arguments\": {\"city\": \"Oslo\", \"days\": 2}}";
        assert_eq!(generate(&mut c, rest), rest);
        assert!(c.is_complete());
        // Pretty-printed, as small models write it, after a code fence's newline.
        let named = ByteTokenizer.encode("\n{\n  \"name\": \"get_weather\"");
        let mut c = lazy.bare_after(&named).unwrap();
        assert_eq!(generate(&mut c, rest), rest);
        // The token that closes the name may carry the line break after it (Qwen has
        // `",\n`): the replay must still fit, and the rest keep its layout.
        let named = ByteTokenizer.encode("{\n  \"name\": \"get_weather\",\n  ");
        let mut c = lazy.bare_after(&named).unwrap();
        let rest = "\"arguments\": {\"city\": \"Oslo\", \"days\": 2}\n}";
        assert_eq!(generate(&mut c, rest), rest);
        assert!(c.is_complete());
    }

    /// The model's own call in each format: the forced grammar lets it through whole,
    /// the output parser reads it back as the call, and the arguments fit the schema.
    #[test]
    fn each_format_forces_its_own_call() {
        use crate::output::{OutputFormat, OutputParser, Segment};
        let grammars = Grammars::new(&ByteTokenizer, &HashMap::new()).unwrap();
        let cases = [
            (ToolFormat::Hermes, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": 2}}\n</tool_call>"),
            (ToolFormat::Llama3Json, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\", \"days\": 2}}"),
            (ToolFormat::Mistral, "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Oslo\", \"days\": 2}"),
            (ToolFormat::MistralJson, "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": 2}}]"),
            (ToolFormat::FunctionGemma, "<start_function_call>call:get_weather{city:<escape>Oslo<escape>,days:2}<end_function_call>"),
        ];
        for (format, own) in cases {
            let mut c = grammars.forced_call(format, &[weather()], None).unwrap();
            let text = generate(&mut c, own);
            assert_eq!(text, own, "{format:?}");
            let mut parser = OutputParser::new(OutputFormat {
                tools: Some(format),
                ..OutputFormat::default()
            });
            let mut segments = parser.push(&text);
            segments.extend(parser.finish());
            let args: String = segments
                .iter()
                .filter_map(|s| match s {
                    Segment::CallArguments(a) => Some(a.as_str()),
                    _ => None,
                })
                .collect();
            let args: Value = serde_json::from_str(&args).unwrap();
            assert_eq!(args, json!({"city": "Oslo", "days": 2}), "{format:?}");
            assert_eq!(parser.calls(), 1, "{format:?}");
        }
    }

    #[test]
    fn functiongemma_arguments_follow_the_schema() {
        let grammars = Grammars::new(&ByteTokenizer, &HashMap::new()).unwrap();
        let allowed = |text: &str| {
            let mut c = grammars
                .forced_call(ToolFormat::FunctionGemma, &[weather()], None)
                .unwrap();
            ByteTokenizer.encode(text).into_iter().all(|t| {
                let ok = c.mask().is_some_and(|m| TokenMask(m.as_slice()).allows(t));
                c.accept(t);
                ok
            })
        };
        let open = "<start_function_call>call:get_weather{";
        assert!(allowed(&format!(
            "{open}city:<escape>Oslo<escape>,days:2}}"
        )));
        // A required key left out, another key, a string for a number.
        assert!(!allowed(&format!("{open}days:2}}")));
        assert!(!allowed(&format!("{open}town:")));
        assert!(!allowed(&format!(
            "{open}city:<escape>Oslo<escape>,days:<escape>"
        )));
    }

    #[test]
    fn structured_output_matches_its_schema() {
        let grammars = Grammars::new(&ByteTokenizer, &HashMap::new()).unwrap();
        let mut c = grammars.json_output(&weather().parameters).unwrap();
        let text = generate(&mut c, "Sure! {\"city\": \"Oslo\"");
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(
            value["city"].is_string() && value["days"].is_i64(),
            "{value}"
        );
    }

    #[test]
    fn a_named_tool_is_the_one_called() {
        let grammars = Grammars::new(&ByteTokenizer, &HashMap::new()).unwrap();
        let mut other = weather();
        other.name = "get_time".into();
        let tools = [weather(), other];
        let mut c = grammars
            .forced_call(ToolFormat::Hermes, &tools, Some("get_time"))
            .unwrap();
        let text = generate(&mut c, "<tool_call>\n{\"name\": \"get_weather\"");
        assert!(text.contains("\"name\": \"get_time\""), "{text}");
        assert!(grammars
            .forced_call(ToolFormat::Hermes, &tools, Some("nope"))
            .is_err());
    }
}
