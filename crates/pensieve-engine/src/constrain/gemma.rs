//! The Gemma family's argument syntax as lark, from a tool's JSON schema: keys bare,
//! strings between the format's delimiters (FunctionGemma's `<escape>`, Gemma 4's
//! `<|"|>`), the rest as in JSON. An object's properties come in the schema's order, the
//! required ones always, the others when the model writes them.

use serde_json::{Map, Value};

use super::{calls_lark, literal, one_of, schema_types};
use crate::formats::GrammarStart;
use crate::output::GemmaSyntax;
use crate::request::ToolSpec;

/// Lark for the calls of a Gemma-family format: `call:NAME{...}` with the arguments of
/// one of `tools`, then the closing marker; from the opening marker when forced. `string`
/// is the lark of a delimited string ([`ESCAPE_STRING`], [`delimited_string`]).
pub(crate) fn calls(
    syntax: GemmaSyntax,
    string: &str,
    tools: &[&ToolSpec],
    start: GrammarStart,
) -> String {
    let open = match start {
        GrammarStart::Forced => literal(syntax.open),
        GrammarStart::AfterMarker { .. } | GrammarStart::Bare => literal(""),
    };
    let mut lark = calls_lark(&open, syntax.close, None, tools, |i, tool, lark| {
        let mut rules = Rules::new(&format!("g{i}_"), syntax.delim);
        let value = rules.value(&tool.parameters);
        lark.push_str(&format!(
            "c{i}: {} {value}\n",
            literal(&format!("call:{}", tool.name))
        ));
        lark.push_str(&rules.into_lark());
        format!("c{i}")
    });
    lark.push_str(&terminals(string));
    lark
}

/// FunctionGemma's strings: they can't hold `<e` (the start of the delimiter) or end in
/// `<`, a simple regex that rules out a little more than the delimiter.
pub(crate) const ESCAPE_STRING: &str = r#"/<escape>([^<]|<[^e<])*<escape>/"#;

/// A string between two `delim`s that holds anything but `delim` itself (llguidance's
/// `&` and `~`): code in a string keeps its `<<` and `<|`.
pub(crate) fn delimited_string(delim: &str) -> String {
    let d = literal(delim);
    format!("{d} FG_BODY {d}\nFG_BODY: /(?s:.*)/ & ~(/(?s:.*)/ {d} /(?s:.*)/)")
}

/// Terminals and rules for values the schema leaves open; `string` is the lark of a
/// delimited string ([`ESCAPE_STRING`], [`delimited_string`]).
fn terminals(string: &str) -> String {
    format!("FG_STR: {string}\n{TERMINALS}")
}

/// Numbers have few enough digits that a model can't write one forever, as in JSON
/// (see `schema`): integers 18 (an `i64` holds them), numbers 16 before the point and 10
/// after it.
const TERMINALS: &str = r#"FG_INT: /-?(0|[1-9][0-9]{0,17})/
FG_NUM: /-?(0|[1-9][0-9]{0,15})(\.[0-9]{1,10})?([eE][+-]?[0-9]{1,3})?/
FG_KEY: /[A-Za-z_][A-Za-z0-9_\-]*/
fg_any: FG_STR | FG_NUM | "true" | "false" | "null" | fg_obj | fg_arr
fg_obj: "{" [fg_pair ("," fg_pair)*] "}"
fg_pair: FG_KEY ":" fg_any
fg_arr: "[" [fg_any ("," fg_any)*] "]"
"#;

/// The rules one tool's arguments need.
struct Rules {
    prefix: String,
    /// The string delimiter, for constants.
    delim: &'static str,
    lark: String,
    count: usize,
}

impl Rules {
    /// Rule names start with `prefix` (one per tool, so tools' rules don't clash);
    /// strings are between `delim`s.
    fn new(prefix: &str, delim: &'static str) -> Rules {
        Rules {
            prefix: prefix.to_owned(),
            delim,
            lark: String::new(),
            count: 0,
        }
    }

    fn into_lark(self) -> String {
        self.lark
    }

    fn rule(&mut self, body: &str) -> String {
        let name = format!("{}{}", self.prefix, self.count);
        self.count += 1;
        self.lark.push_str(&format!("{name}: {body}\n"));
        name
    }

    /// A lark expression for a value of `schema`.
    fn value(&mut self, schema: &Value) -> String {
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            if !values.is_empty() {
                return one_of(values.iter().map(|v| constant(v, self.delim)));
            }
        }
        if let Some(value) = schema.get("const") {
            return constant(value, self.delim);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(options) = schema.get(key).and_then(Value::as_array) {
                let options: Vec<String> = options.iter().map(|o| self.value(o)).collect();
                if !options.is_empty() {
                    return one_of(options.into_iter());
                }
            }
        }
        let types = schema_types(schema);
        if types.is_empty() {
            return "fg_any".into();
        }
        let options: Vec<String> = types.iter().map(|t| self.typed(t, schema)).collect();
        one_of(options.into_iter())
    }

    fn typed(&mut self, ty: &str, schema: &Value) -> String {
        match ty {
            "string" => "FG_STR".into(),
            "integer" => "FG_INT".into(),
            "number" => "FG_NUM".into(),
            "boolean" => "(\"true\" | \"false\")".into(),
            "null" => "\"null\"".into(),
            "array" => {
                let item = match schema.get("items") {
                    Some(items) if items.is_object() => self.value(items),
                    _ => "fg_any".into(),
                };
                self.rule(&format!("\"[\" [{item} (\",\" {item})*] \"]\""))
            }
            // Only the properties named, as for JSON calls.
            "object" => match schema.get("properties").and_then(Value::as_object) {
                Some(props) if props.is_empty() => "\"{}\"".into(),
                Some(props) => self.object(props, schema),
                None => "fg_obj".into(),
            },
            _ => "fg_any".into(),
        }
    }

    /// `{key:value,...}` with the properties in order; the required ones must come.
    fn object(&mut self, props: &Map<String, Value>, schema: &Value) -> String {
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let pairs: Vec<(String, bool)> = props
            .iter()
            .map(|(key, value)| {
                let value = self.value(value);
                (
                    format!("{} {value}", literal(&format!("{key}:"))),
                    required.contains(&key.as_str()),
                )
            })
            .collect();
        // after[i]: properties i.. when one was written before (each after a comma).
        let mut after: Vec<Option<String>> = vec![None; pairs.len() + 1];
        for i in (0..pairs.len()).rev() {
            let (pair, needed) = &pairs[i];
            let this = if *needed {
                format!("\",\" {pair}")
            } else {
                format!("[\",\" {pair}]")
            };
            let body = match &after[i + 1] {
                Some(rest) => format!("{this} {rest}"),
                None => this,
            };
            after[i] = Some(self.rule(&body));
        }
        // first[i]: properties i.., at least one, none written before.
        let mut first: Vec<Option<String>> = vec![None; pairs.len() + 1];
        for i in (0..pairs.len()).rev() {
            let (pair, needed) = &pairs[i];
            let mut body = match &after[i + 1] {
                Some(rest) => format!("{pair} {rest}"),
                None => pair.clone(),
            };
            if !*needed {
                if let Some(skip) = &first[i + 1] {
                    body = format!("{body} | {skip}");
                }
            }
            first[i] = Some(self.rule(&body));
        }
        let inner = first[0].clone().unwrap_or_default();
        if pairs.iter().any(|(_, needed)| *needed) {
            self.rule(&format!("\"{{\" {inner} \"}}\""))
        } else {
            self.rule(&format!("\"{{\" [{inner}] \"}}\""))
        }
    }
}

/// A schema constant as the model writes it.
fn constant(value: &Value, delim: &str) -> String {
    match value {
        Value::String(s) => literal(&format!("{delim}{s}{delim}")),
        other => literal(&other.to_string()),
    }
}
