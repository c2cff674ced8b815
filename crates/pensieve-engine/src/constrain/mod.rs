//! Constrained decoding with llguidance: grammars over the model's vocabulary that make
//! what the model writes valid by construction. A forced tool call (`tool_choice: any`
//! or a named tool) is the model's format around arguments that match the tool's JSON
//! schema, then the end of the turn; under `auto` the same grammar starts when the model
//! opens a call. Structured output is one JSON value of a schema. Each format
//! ([`crate::formats`]) writes its own grammar with the helpers here; `gemma` writes
//! FunctionGemma's argument syntax, `xml` the raw values of the XML-style formats.

use std::collections::HashMap;
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::formats::{GrammarStart, ToolFormat};
#[cfg(doc)]
use crate::model::TokenMask;
use crate::model::{TokenId, Tokenizer};
use crate::request::ToolSpec;

mod cache;
pub(crate) mod gemma;
pub(crate) mod pythonic;
mod schema;
pub(crate) mod xml;

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
        self.constraint(format.grammar(&chosen, GrammarStart::Forced))
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
        let tagged = format.grammar(&tools, GrammarStart::AfterMarker { parallel });
        // A bare call's first token may carry the newline after a code fence.
        let bare = match format.bare_calls() || format.bare_open().is_some() {
            true => Some(self.constraint(format.grammar(&tools, GrammarStart::Bare))?),
            false => None,
        };
        Ok(LazyCall {
            tagged: self.constraint(tagged)?,
            bare,
            bare_open: format.bare_open(),
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
    /// How many of `tokens`, in order, the grammar allows from here; its state is left as
    /// it is. Drafts are cut there: a token the mask forbids cannot stand.
    pub fn allowed_prefix(&mut self, tokens: &[TokenId]) -> usize {
        if self.matcher.is_stopped() {
            return 0;
        }
        let ids: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
        self.matcher.validate_tokens(&ids).unwrap_or(0)
    }

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
    /// A call without its marker: a call's object alone (Llama 3; Hermes models that
    /// drop the tags), or from `bare_open`.
    bare: Option<Constraint>,
    /// The text that opens a call without its marker, where that is no JSON object.
    bare_open: Option<&'static str>,
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

    /// Whether the format has JSON call objects without a marker.
    pub fn has_bare_calls(&self) -> bool {
        self.bare.is_some() && self.bare_open.is_none()
    }

    /// The text that opens a call without its marker (Qwen's `<function=`).
    pub fn bare_open(&self) -> Option<&'static str> {
        self.bare_open.filter(|_| self.bare.is_some())
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
pub(crate) const WS: &str = "/[ \\t\\n]*/";
pub(crate) const INDENT: &str = "/[ \\t\\n]{0,16}/";

/// Lark for `open` (a lark expression), one call of one of the tools (or, with
/// `separator`, one or more separated by it), `close` (text). `call(i, tool, lark)`
/// writes the rules of a call of tool `i` into `lark` and returns the expression for it.
pub(crate) fn calls_lark(
    open: &str,
    close: &str,
    separator: Option<&str>,
    tools: &[&ToolSpec],
    mut call: impl FnMut(usize, &ToolSpec, &mut String) -> String,
) -> String {
    let calls = match separator {
        Some(sep) => format!("call ({} call)*", literal(sep)),
        None => "call".to_owned(),
    };
    let close = if close.is_empty() {
        String::new()
    } else {
        literal(close)
    };
    let mut lark = format!("start: {open} {calls} {close}\n");
    let mut rules = String::new();
    let alternatives: Vec<String> = tools
        .iter()
        .enumerate()
        .map(|(i, tool)| call(i, tool, &mut rules))
        .collect();
    lark.push_str(&format!("call: {}\n", alternatives.join(" | ")));
    lark.push_str(&rules);
    lark
}

/// The rules of a JSON call object `{"name": ..., "<key>": {...}}` for tool `i`. A JSON
/// call may be pretty-printed, as small models write it: a little whitespace around its
/// keys (bounded, so that a model can't spin in it), which a bare call's replay needs
/// too (a token can carry the line break after the name).
pub(crate) fn json_call_rule(i: usize, tool: &ToolSpec, key: &str, lark: &mut String) -> String {
    let (name, key) = (json_string(&tool.name), json_string(key));
    let pieces = ["{", "\"name\"", ":", &name, ",", &key, ":"].map(literal);
    let head = format!("{} {INDENT}", pieces.join(&format!(" {INDENT} ")));
    let tail = format!("{INDENT} {}", literal("}"));
    lark.push_str(&format!("c{i}: {head} a{i} {tail}\n"));
    lark.push_str(&format!(
        "a{i}: %json {}\n",
        schema_for_grammar(&tool.parameters)
    ));
    format!("c{i}")
}

/// A schema as llguidance takes it (see [`schema`]).
pub(crate) fn schema_for_grammar(schema: &Value) -> String {
    schema::for_grammar(schema)
}

pub(crate) fn json_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// A lark string literal for `s`.
pub(crate) fn literal(s: &str) -> String {
    json_string(s)
}

/// Lark alternatives, parenthesised when there are several.
pub(crate) fn one_of(options: impl Iterator<Item = String>) -> String {
    let options: Vec<String> = options.collect();
    if options.len() == 1 {
        return options.into_iter().next().unwrap_or_default();
    }
    format!("({})", options.join(" | "))
}

/// The JSON types a schema allows: its `type`, one or a list, or `object` for a
/// schema with properties and no type; none when it says nothing.
pub(crate) fn schema_types(schema: &serde_json::Value) -> Vec<&str> {
    match schema.get("type") {
        Some(serde_json::Value::String(t)) => vec![t.as_str()],
        Some(serde_json::Value::Array(ts)) => ts.iter().filter_map(|t| t.as_str()).collect(),
        _ if schema.get("properties").is_some() => vec!["object"],
        _ => Vec::new(),
    }
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
            .forced_call(ToolFormat::HERMES, &tools, None)
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
            .call_body(ToolFormat::HERMES, &[weather()], true)
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
            (ToolFormat::HERMES, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": 2}}\n</tool_call>"),
            (ToolFormat::LLAMA3_JSON, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\", \"days\": 2}}"),
            (ToolFormat::MISTRAL, "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Oslo\", \"days\": 2}"),
            (ToolFormat::MISTRAL_JSON, "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": 2}}]"),
            (ToolFormat::FUNCTIONGEMMA, "<start_function_call>call:get_weather{city:<escape>Oslo<escape>,days:2}<end_function_call>"),
            (ToolFormat::QWEN3_CODER, "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>"),
            (ToolFormat::GLM45, "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Oslo</arg_value>\n<arg_key>days</arg_key>\n<arg_value>2</arg_value>\n</tool_call>"),
            (ToolFormat::GLM47, "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Oslo</arg_value><arg_key>days</arg_key><arg_value>2</arg_value></tool_call>"),
        ];
        for (format, own) in cases {
            let mut c = grammars.forced_call(format, &[weather()], None).unwrap();
            let text = generate(&mut c, own);
            assert_eq!(text, own, "{format:?}");
            let mut parser = OutputParser::new(OutputFormat {
                model: None,
                tools: Some(format),
                ..OutputFormat::default()
            })
            .with_tools(&[weather()]);
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
                .forced_call(ToolFormat::FUNCTIONGEMMA, &[weather()], None)
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
    fn xml_arguments_follow_the_schema() {
        let grammars = Grammars::new(&ByteTokenizer, &HashMap::new()).unwrap();
        let allowed = |format: ToolFormat, text: &str| {
            let mut c = grammars.forced_call(format, &[weather()], None).unwrap();
            ByteTokenizer.encode(text).into_iter().all(|t| {
                let ok = c.mask().is_some_and(|m| TokenMask(m.as_slice()).allows(t));
                c.accept(t);
                ok
            })
        };
        let q = ToolFormat::QWEN3_CODER;
        let open = "<tool_call>\n<function=get_weather>\n";
        let city = "<parameter=city>\nOs</lo\n</parameter>\n";
        assert!(allowed(
            q,
            &format!("{open}{city}<parameter=days>\n12\n</parameter>\n</function>\n</tool_call>")
        ));
        // A required parameter left out, an unknown one, text for an integer, and an
        // integer longer than an i64.
        assert!(!allowed(q, &format!("{open}<parameter=days>")));
        assert!(!allowed(q, &format!("{open}<parameter=town>")));
        assert!(!allowed(q, &format!("{open}{city}<parameter=days>\nsoon")));
        assert!(!allowed(
            q,
            &format!("{open}{city}<parameter=days>\n1234567890123456789")
        ));
        let g = ToolFormat::GLM47;
        let open = "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Oslo</arg_value>";
        assert!(allowed(
            g,
            &format!("{open}<arg_key>days</arg_key><arg_value>2</arg_value></tool_call>")
        ));
        assert!(!allowed(
            g,
            &format!("{open}<arg_key>days</arg_key><arg_value>two")
        ));
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
            .forced_call(ToolFormat::HERMES, &tools, Some("get_time"))
            .unwrap();
        let text = generate(&mut c, "<tool_call>\n{\"name\": \"get_weather\"");
        assert!(text.contains("\"name\": \"get_time\""), "{text}");
        assert!(grammars
            .forced_call(ToolFormat::HERMES, &tools, Some("nope"))
            .is_err());
    }
}
