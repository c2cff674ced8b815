//! Pythonic calls as lark, from each tool's JSON schema: `[Name(key=value, ...)]`
//! between the format's markers, each value a Python literal of its property's schema.
//! Keyword arguments come in the schema's order, the required ones always; nested
//! objects are dicts with quoted keys (`{'k': v}` or `{"k": v}`), arrays are lists.
//!
//! Strings take either quote, any escape, raw line breaks, and a quote of their own kind
//! where what follows it shows that it does not close them (see
//! [`crate::output::PythonicCall`]): the models write strings that way, and the reader
//! reads each back as written. They never hold the closing marker. Numbers are bounded
//! as in JSON (see `schema`); booleans and `None` are Python's or JSON's words.

use serde_json::{Map, Value};

use super::{calls_lark, literal, one_of, schema_types};
use crate::formats::GrammarStart;
use crate::output::PythonicSyntax;
use crate::request::ToolSpec;

/// Lark for the block of calls: from the opening marker when forced, else from after
/// it; several calls in the list when `parallel`.
pub(crate) fn calls(syntax: PythonicSyntax, tools: &[&ToolSpec], start: GrammarStart) -> String {
    let (open, separator) = match start {
        GrammarStart::Forced => (literal(&format!("{}[", syntax.open)), None),
        GrammarStart::AfterMarker { parallel } => (literal("["), parallel.then_some(", ")),
        GrammarStart::Bare => (literal("["), None),
    };
    let close = format!("]{}", syntax.close);
    let mut lark = calls_lark(&open, &close, separator, tools, |i, tool, lark| {
        let mut rules = Rules::new(&format!("p{i}_"));
        let args = rules.arguments(&tool.parameters);
        lark.push_str(&format!(
            "c{i}: {} {args} {}\n",
            literal(&format!("{}(", tool.name)),
            literal(")")
        ));
        lark.push_str(&rules.lark);
        format!("c{i}")
    });
    lark.push_str(&terminals(syntax.close));
    lark
}

/// The terminals and rules every tool shares.
fn terminals(close: &str) -> String {
    // A quote inside a string of its kind is followed (after spaces) by what can't
    // follow a string's end.
    let quoted = |q: &str| {
        let e = if q == "\"" { "\\\"" } else { q };
        format!(r#"/{e}([^{e}\\]|\\(?s:.)|{e}[ \t]*[^{e}\\,)\]}}:< \t\n\r])*{e}/"#)
    };
    let close = literal(close);
    format!(
        "PY_STR: ({} | {}) & ~(/(?s:.*)/ {close} /(?s:.*)/)\n{TERMINALS}",
        quoted("'"),
        quoted("\"")
    )
}

/// Integers have up to 18 digits (an `i64` holds them), numbers 16 before the point
/// and 10 after it, as `schema` bounds JSON's.
const TERMINALS: &str = r#"PY_INT: /-?(0|[1-9][0-9]{0,17})/
PY_NUM: /-?(0|[1-9][0-9]{0,15})(\.[0-9]{1,10})?([eE][+-]?[0-9]{1,3})?/
PY_KEY: /[A-Za-z_][A-Za-z0-9_]{0,63}/
py_bool: "True" | "False" | "true" | "false"
py_null: "None" | "null"
py_any: PY_STR | PY_NUM | py_bool | py_null | py_dict | py_list
py_dict: "{" [py_pair (", " py_pair)*] "}"
py_pair: PY_STR ": " py_any
py_list: "[" [py_any (", " py_any)*] "]"
py_kwarg: PY_KEY "=" py_any
"#;

/// The rules one tool's arguments need.
struct Rules {
    prefix: String,
    lark: String,
    count: usize,
}

impl Rules {
    /// Rule names start with `prefix`, one per tool.
    fn new(prefix: &str) -> Rules {
        Rules {
            prefix: prefix.to_owned(),
            lark: String::new(),
            count: 0,
        }
    }

    fn rule(&mut self, body: &str) -> String {
        let name = format!("{}{}", self.prefix, self.count);
        self.count += 1;
        self.lark.push_str(&format!("{name}: {body}\n"));
        name
    }

    /// What goes between a call's parentheses: `key=value, ...`.
    fn arguments(&mut self, schema: &Value) -> String {
        match schema.get("properties").and_then(Value::as_object) {
            Some(props) => self
                .pairs(props, schema, |key| literal(&format!("{key}=")))
                .unwrap_or_else(|| "\"\"".into()),
            // Arguments the schema does not describe.
            None => "[py_kwarg (\", \" py_kwarg)*]".into(),
        }
    }

    /// A lark expression for a value of `schema`.
    fn value(&mut self, schema: &Value) -> String {
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            if !values.is_empty() {
                return one_of(values.iter().map(constant));
            }
        }
        if let Some(value) = schema.get("const") {
            return constant(value);
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
            return "py_any".into();
        }
        let options: Vec<String> = types.iter().map(|t| self.typed(t, schema)).collect();
        one_of(options.into_iter())
    }

    fn typed(&mut self, ty: &str, schema: &Value) -> String {
        match ty {
            "string" => "PY_STR".into(),
            "integer" => "PY_INT".into(),
            "number" => "PY_NUM".into(),
            "boolean" => "py_bool".into(),
            "null" => "py_null".into(),
            "array" => {
                let item = match schema.get("items") {
                    Some(items) if items.is_object() => self.value(items),
                    _ => "py_any".into(),
                };
                self.rule(&format!("\"[\" [{item} (\", \" {item})*] \"]\""))
            }
            // Only the properties named, as for JSON calls.
            "object" => match schema.get("properties").and_then(Value::as_object) {
                Some(props) => {
                    let key = |key: &str| {
                        let quoted =
                            one_of(['\'', '"'].map(|q| literal(&py_string(key, q))).into_iter());
                        format!("{quoted} \": \"")
                    };
                    match self.pairs(props, schema, key) {
                        Some(inner) => self.rule(&format!("\"{{\" {inner} \"}}\"")),
                        None => "\"{}\"".into(),
                    }
                }
                None => "py_dict".into(),
            },
            _ => "py_any".into(),
        }
    }

    /// The properties in order, each as `key(name) value`, separated by `, `; the
    /// required ones must come (and when none is, none may). None when there are none.
    fn pairs(
        &mut self,
        props: &Map<String, Value>,
        schema: &Value,
        key: impl Fn(&str) -> String,
    ) -> Option<String> {
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let pairs: Vec<(String, bool)> = props
            .iter()
            .map(|(name, value)| {
                let value = self.value(value);
                (
                    format!("{} {value}", key(name)),
                    required.contains(&name.as_str()),
                )
            })
            .collect();
        // after[i]: properties i.. when one was written before (each after a comma).
        let mut after: Vec<Option<String>> = vec![None; pairs.len() + 1];
        for i in (0..pairs.len()).rev() {
            let (pair, needed) = &pairs[i];
            let this = if *needed {
                format!("\", \" {pair}")
            } else {
                format!("[\", \" {pair}]")
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
        let needed = pairs.iter().any(|(_, needed)| *needed);
        let inner = first.into_iter().next().flatten()?;
        Some(if needed { inner } else { format!("[{inner}]") })
    }
}

/// A schema constant as a Python literal, in either quote when it is a string.
fn constant(value: &Value) -> String {
    match value {
        Value::String(s) => one_of(['\'', '"'].map(|q| literal(&py_string(s, q))).into_iter()),
        Value::Bool(true) => "(\"True\" | \"true\")".into(),
        Value::Bool(false) => "(\"False\" | \"false\")".into(),
        Value::Null => "py_null".into(),
        other => literal(&other.to_string()),
    }
}

/// `s` as a Python string literal in `quote`.
fn py_string(s: &str, quote: char) -> String {
    let mut out = String::from(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}
