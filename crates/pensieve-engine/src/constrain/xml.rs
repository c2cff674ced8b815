//! Grammars for the XML-style call formats (Qwen3-Coder, GLM, MiniMax, DeepSeek's DSML),
//! whose values are raw text: a string runs, unescaped, to its closing tag; an integer,
//! number or boolean is written bare and bounded; objects and arrays are JSON of their
//! schema. The tool's parameters come in the schema's order, the required ones always.

use serde_json::Value;

use super::{literal, schema_for_grammar};
use crate::request::ToolSpec;

/// The text around one call's parts, for one format.
pub(crate) struct XmlShape {
    /// Before the parameters, given the tool's name.
    pub head: fn(&str) -> String,
    /// Before a value, given its key.
    pub param_open: fn(&str) -> String,
    /// Before a value that is not text, where the tag says so (DeepSeek's DSML writes
    /// `string="false"` and JSON): then [`XmlShape::param_open`] is a text value's.
    pub json_param_open: Option<fn(&str) -> String>,
    /// After a value.
    pub param_close: &'static str,
    /// After the parameters.
    pub tail: &'static str,
}

/// Up to 18 digits: any such integer fits an i64. Numbers as `schema` bounds JSON ones:
/// 16 digits before the point, 10 after.
const INT: &str = r"/-?(0|[1-9][0-9]{0,17})/";
const NUM: &str = r"/-?(0|[1-9][0-9]{0,15})(\.[0-9]{1,10})?([eE][-+]?[0-9]{1,3})?/";

/// The rules of one call of tool `i`; returns the rule's name.
pub(crate) fn call_rule(shape: &XmlShape, i: usize, tool: &ToolSpec, lark: &mut String) -> String {
    let schema = &tool.parameters;
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut parts = vec![literal(&(shape.head)(&tool.name))];
    match schema.get("properties").and_then(Value::as_object) {
        Some(props) => {
            for (j, (key, prop)) in props.iter().enumerate() {
                let rule = format!("c{i}_p{j}");
                let param = match shape.json_param_open {
                    None => format!(
                        "{} {}",
                        literal(&(shape.param_open)(key)),
                        value_expr(shape, &format!("{rule}_v"), prop, lark)
                    ),
                    Some(json_open) => {
                        let opens = ((shape.param_open)(key), json_open(key));
                        tagged_value(
                            shape,
                            (&opens.0, &opens.1),
                            &format!("{rule}_v"),
                            prop,
                            lark,
                        )
                    }
                };
                lark.push_str(&format!("{rule}: {param}\n"));
                if required.contains(&key.as_str()) {
                    parts.push(rule);
                } else {
                    parts.push(format!("[{rule}]"));
                }
            }
        }
        // Arguments the schema does not describe: any keys, text values.
        None => {
            let rule = format!("c{i}_any");
            let text = text_rule(shape, &format!("{rule}_v"), lark);
            lark.push_str(&format!("{rule}_k: /[A-Za-z_][A-Za-z0-9_.\\-]{{0,63}}/\n"));
            let open = (shape.param_open)("\u{0}");
            let (before, after) = open.split_once('\u{0}').unwrap_or((&open, ""));
            lark.push_str(&format!(
                "{rule}: {} {rule}_k {} {text}\n",
                literal(before),
                literal(after)
            ));
            parts.push(format!("{rule}*"));
        }
    }
    if !shape.tail.is_empty() {
        parts.push(literal(shape.tail));
    }
    lark.push_str(&format!("c{i}: {}\n", parts.join(" ")));
    format!("c{i}")
}

/// A value of `schema` and its closing tag, as a lark expression.
fn value_expr(shape: &XmlShape, rule: &str, schema: &Value, lark: &mut String) -> String {
    let close = literal(shape.param_close);
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let options: Vec<String> = values
            .iter()
            .map(|v| match v {
                Value::String(s) => literal(s),
                other => literal(&other.to_string()),
            })
            .collect();
        if !options.is_empty() {
            return format!("({}) {close}", options.join(" | "));
        }
    }
    let types = types(schema);
    let unconstrained = schema.as_object().is_none_or(|o| {
        o.keys()
            .all(|k| matches!(k.as_str(), "description" | "title" | "default" | "examples"))
    });
    if types.iter().any(|t| t == "string") || unconstrained {
        return text_rule(shape, rule, lark);
    }
    if types.is_empty() {
        // Described but untyped (a `$ref`, an `allOf`): JSON of the schema.
        return format!("%json {} {close}", schema_for_grammar(schema));
    }
    format!("({}) {close}", typed_options(&types, schema).join(" | "))
}

/// A value whose open tag says whether it is text or JSON (`opens`: the text one's, the
/// JSON one's), as the template writes it: each alternative with its own tag.
fn tagged_value(
    shape: &XmlShape,
    (text_open, json_open): (&str, &str),
    rule: &str,
    schema: &Value,
    lark: &mut String,
) -> String {
    let close = literal(shape.param_close);
    let text_open = literal(text_open);
    let json_open = literal(json_open);
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let (texts, others): (Vec<&Value>, Vec<&Value>) =
            values.iter().partition(|v| v.is_string());
        let mut alternatives = Vec::new();
        let texts: Vec<String> = texts
            .iter()
            .filter_map(|v| v.as_str())
            .map(literal)
            .collect();
        if !texts.is_empty() {
            alternatives.push(format!("{text_open} ({}) {close}", texts.join(" | ")));
        }
        let others: Vec<String> = others.iter().map(|v| literal(&v.to_string())).collect();
        if !others.is_empty() {
            alternatives.push(format!("{json_open} ({}) {close}", others.join(" | ")));
        }
        if !alternatives.is_empty() {
            return alternatives.join(" | ");
        }
    }
    let types = types(schema);
    let unconstrained = schema.as_object().is_none_or(|o| {
        o.keys()
            .all(|k| matches!(k.as_str(), "description" | "title" | "default" | "examples"))
    });
    let mut alternatives = Vec::new();
    if types.iter().any(|t| t == "string") || unconstrained {
        alternatives.push(format!("{text_open} {}", text_rule(shape, rule, lark)));
    }
    let others: Vec<String> = types.into_iter().filter(|t| t != "string").collect();
    if !others.is_empty() {
        let options = typed_options(&others, schema).join(" | ");
        alternatives.push(format!("{json_open} ({options}) {close}"));
    } else if alternatives.is_empty() {
        // Described but untyped (a `$ref`, an `allOf`): JSON of the schema.
        alternatives.push(format!(
            "{json_open} %json {} {close}",
            schema_for_grammar(schema)
        ));
    }
    alternatives.join(" | ")
}

/// A value of each of `types` (none of them a string), as lark expressions.
fn typed_options(types: &[String], schema: &Value) -> Vec<String> {
    types
        .iter()
        .map(|t| match t.as_str() {
            "integer" => INT.to_owned(),
            "number" => NUM.to_owned(),
            "boolean" => "(\"true\" | \"false\")".to_owned(),
            "null" => "\"null\"".to_owned(),
            _ => format!("%json {}", schema_for_grammar(schema)),
        })
        .collect()
}

/// Text up to (and with) the closing tag, which it can't hold.
fn text_rule(shape: &XmlShape, rule: &str, lark: &mut String) -> String {
    lark.push_str(&format!(
        "{rule}[suffix={}]: /(.|\\n)*/\n",
        literal(shape.param_close)
    ));
    rule.to_owned()
}

/// The types a schema names (`type`, or its `anyOf` / `oneOf` options').
fn types(schema: &Value) -> Vec<String> {
    let mut out: Vec<String> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    for key in ["anyOf", "oneOf"] {
        for option in schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for t in types(option) {
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
    }
    if out.is_empty() && schema.get("properties").is_some() {
        out.push("object".to_owned());
    }
    out
}
