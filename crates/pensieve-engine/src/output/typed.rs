//! Raw argument text typed by the tool's JSON schema. The XML-style formats (Qwen3-Coder,
//! GLM, MiniMax) write every value as bare text: a string as it is, newlines and `<`
//! included, other values as the template printed them (JSON for objects and arrays,
//! and, in older Qwen templates, Python's `True` and `None`). The schema says which is
//! which; a string is never reinterpreted, so `"42"` stays text where the tool wants text.

use serde_json::{Number, Value};

/// How a value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Text, kept verbatim and streamed as it comes; `null` when the schema allows it and
    /// the model wrote exactly `null` or `None`.
    Text { nullable: bool },
    /// Anything else: read whole, then converted.
    Typed,
}

/// The kind of a value of `schema`: text when the schema allows a string (or says
/// nothing, for a parameter the tool does not name).
pub(crate) fn kind(schema: Option<&Value>) -> Kind {
    let Some(schema) = schema else {
        return Kind::Text { nullable: false };
    };
    let types = types(schema);
    if types.contains(&"string") {
        Kind::Text {
            nullable: types.contains(&"null"),
        }
    } else {
        Kind::Typed
    }
}

/// The value `raw` stands for under `schema` (a [`Kind::Typed`] one). What fits none of
/// the schema's types is kept as text rather than lost.
pub(crate) fn convert(raw: &str, schema: Option<&Value>) -> Value {
    let text = raw.trim();
    let types = schema.map(types).unwrap_or_default();
    for ty in &types {
        let value = match *ty {
            "integer" => integer(text),
            "number" => number(text),
            "boolean" => boolean(text),
            "null" => matches!(text, "null" | "None").then_some(Value::Null),
            "object" => json(text).filter(Value::is_object),
            "array" => json(text).filter(Value::is_array),
            _ => None,
        };
        if let Some(value) = value {
            return value;
        }
    }
    // No type said, or none fits: JSON if it is, else the text.
    json(text)
        .or_else(|| boolean(text))
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

/// The value of a [`Kind::Text`] parameter.
pub(crate) fn text(raw: &str, nullable: bool) -> Value {
    if nullable && matches!(raw.trim(), "null" | "None") {
        Value::Null
    } else {
        Value::String(raw.to_owned())
    }
}

/// The JSON types a schema allows, from `type`, `enum`, `const`, `anyOf` and `oneOf`.
fn types(schema: &Value) -> Vec<&'static str> {
    let mut out = Vec::new();
    collect_types(schema, &mut out, 0);
    out
}

fn collect_types(schema: &Value, out: &mut Vec<&'static str>, depth: usize) {
    const ALL: [&str; 7] = [
        "string", "integer", "number", "boolean", "null", "object", "array",
    ];
    let mut add = |name: &str| {
        if let Some(t) = ALL.iter().find(|t| **t == name) {
            if !out.contains(t) {
                out.push(t);
            }
        }
    };
    match schema.get("type") {
        Some(Value::String(t)) => add(t),
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).for_each(&mut add),
        _ => {}
    }
    let constants = schema
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(schema.get("const"));
    for value in constants {
        add(match value {
            Value::String(_) => "string",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::Bool(_) => "boolean",
            Value::Null => "null",
            Value::Object(_) => "object",
            Value::Array(_) => "array",
        });
    }
    if depth < 8 {
        for key in ["anyOf", "oneOf", "allOf"] {
            for option in schema
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                collect_types(option, out, depth + 1);
            }
        }
    }
    if out.is_empty() && schema.get("properties").is_some() {
        out.push("object");
    }
}

fn integer(text: &str) -> Option<Value> {
    if let Ok(n) = text.parse::<i64>() {
        return Some(Value::from(n));
    }
    // `30.0` for an integer.
    let f = text.parse::<f64>().ok()?;
    (f.fract() == 0.0 && f.abs() < 9.0e15).then(|| Value::from(f as i64))
}

fn number(text: &str) -> Option<Value> {
    if let Ok(n) = serde_json::from_str::<Number>(text) {
        return Some(Value::Number(n));
    }
    text.parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .map(Value::Number)
}

fn boolean(text: &str) -> Option<Value> {
    match text {
        "true" | "True" => Some(Value::Bool(true)),
        "false" | "False" => Some(Value::Bool(false)),
        _ => None,
    }
}

fn json(text: &str) -> Option<Value> {
    serde_json::from_str(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_take_the_schemas_type() {
        let int = json!({"type": "integer"});
        assert_eq!(convert("30", Some(&int)), json!(30));
        assert_eq!(convert(" 30.0\n", Some(&int)), json!(30));
        assert_eq!(convert("thirty", Some(&int)), json!("thirty"));
        let num = json!({"type": "number"});
        assert_eq!(convert("2.5", Some(&num)), json!(2.5));
        let flag = json!({"type": "boolean"});
        assert_eq!(convert("True", Some(&flag)), json!(true));
        assert_eq!(convert("false", Some(&flag)), json!(false));
        let obj = json!({"type": "object", "properties": {}});
        assert_eq!(convert("{\"a\": [1]}", Some(&obj)), json!({"a": [1]}));
        let arr = json!({"type": "array", "items": {"type": "string"}});
        assert_eq!(convert("[\"x\", \"y\"]", Some(&arr)), json!(["x", "y"]));
        let opt = json!({"anyOf": [{"type": "integer"}, {"type": "null"}]});
        assert_eq!(convert("None", Some(&opt)), Value::Null);
        assert_eq!(convert("7", Some(&opt)), json!(7));
        // No type: JSON when it is JSON.
        assert_eq!(convert("[1, 2]", Some(&json!({}))), json!([1, 2]));
        assert_eq!(convert("a b", Some(&json!({}))), json!("a b"));
    }

    #[test]
    fn strings_win_and_stay_verbatim() {
        assert_eq!(
            kind(Some(&json!({"type": "string"}))),
            Kind::Text { nullable: false }
        );
        assert_eq!(
            kind(Some(&json!({"type": ["string", "null"]}))),
            Kind::Text { nullable: true }
        );
        assert_eq!(
            kind(Some(&json!({"enum": ["a", "b"]}))),
            Kind::Text { nullable: false }
        );
        assert_eq!(kind(Some(&json!({"type": "integer"}))), Kind::Typed);
        // A parameter the tool does not name is text.
        assert_eq!(kind(None), Kind::Text { nullable: false });
        assert_eq!(text("42", false), json!("42"));
        assert_eq!(text("None", true), Value::Null);
        assert_eq!(text("None", false), json!("None"));
    }
}
