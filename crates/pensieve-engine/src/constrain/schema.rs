//! A JSON schema as llguidance compiles it: lenient about keywords it does not implement,
//! the top object closed to keys the schema does not name, and numbers bounded.
//!
//! llguidance's JSON grammar takes an integer or number without `minimum`/`maximum` as
//! any number of digits (`-?(0|[1-9][0-9]*)`), and a number's fraction as any number of
//! digits even with bounds; a small model under greedy decoding writes `1000000000…`
//! until `max_tokens`. So each number the schema leaves open gets bounds, added to the
//! schema (llguidance turns them into a regex): integers within what an `i64` holds,
//! other numbers below 10^16 (16 digits before the point, as llama.cpp's grammars) with
//! at most 10 after it (`multipleOf`; that also leaves out exponents). A bound the schema
//! sets is kept, never loosened. `maxLength` and `maxItems` llguidance honours as
//! written.

use serde_json::{json, Map, Value};

/// The largest integer bound: the largest `i64` an `f64` holds exactly (llguidance reads
/// bounds as `f64`, and `i64::MAX` would round up to 2^63, past every `i64`).
pub(super) const INTEGER_LIMIT: i64 = i64::MAX - 1023;

/// Numbers (not integers) stay strictly below this in magnitude: 16 digits before the point.
pub(super) const NUMBER_LIMIT: f64 = 1e16;

/// The finest step of a number: 10 digits after the point (as `multipleOf`; llguidance
/// reads it back exactly down to 1e-10, not finer).
pub(super) const NUMBER_STEP: f64 = 1e-10;

/// The schema as llguidance's `%json` takes it: lenient about keywords it does not
/// implement (tool schemas carry `$schema`, `format`, ...), an object when the tool gave
/// none, and bounded.
pub(super) fn for_grammar(schema: &Value) -> String {
    let mut schema = match schema {
        Value::Object(o) if !o.is_empty() => Value::Object(o.clone()),
        _ => json!({"type": "object"}),
    };
    bound(&mut schema);
    if let Value::Object(o) = &mut schema {
        // The arguments take only the properties the tool names (as OpenAI's strict
        // mode): left open, a small model invents keys until `max_tokens`.
        if o.contains_key("properties") && !o.contains_key("additionalProperties") {
            o.insert("additionalProperties".into(), Value::Bool(false));
        }
        o.insert(
            "x-guidance".into(),
            // Spaced as Python's json.dumps, which is how chat templates show calls.
            json!({"lenient": true, "whitespace_flexible": false,
                   "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema.to_string()
}

/// Adds bounds to every number the schema (and each schema inside it) leaves unbounded.
pub(super) fn bound(schema: &mut Value) {
    let Value::Object(o) = schema else {
        return;
    };
    bound_number(o);
    for (key, sub) in o.iter_mut() {
        match key.as_str() {
            // Maps of names to schemas.
            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => {
                if let Value::Object(subs) = sub {
                    subs.values_mut().for_each(bound);
                }
            }
            // A schema, or a list of them.
            "items"
            | "prefixItems"
            | "additionalItems"
            | "additionalProperties"
            | "unevaluatedItems"
            | "unevaluatedProperties"
            | "contains"
            | "anyOf"
            | "oneOf"
            | "allOf"
            | "then"
            | "else" => match sub {
                Value::Array(subs) => subs.iter_mut().for_each(bound),
                _ => bound(sub),
            },
            // `not` and `if` test a value: a bound there would change what passes.
            _ => {}
        }
    }
}

fn bound_number(o: &mut Map<String, Value>) {
    let types: Vec<&str> = match o.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return,
    };
    // A fixed set of values is bounded already.
    if o.contains_key("enum") || o.contains_key("const") {
        return;
    }
    let (number, integer) = (types.contains(&"number"), types.contains(&"integer"));
    let (low, high) = match (number, integer) {
        (true, _) => (
            ("exclusiveMinimum", json!(-NUMBER_LIMIT)),
            ("exclusiveMaximum", json!(NUMBER_LIMIT)),
        ),
        (false, true) => (
            ("minimum", json!(-INTEGER_LIMIT)),
            ("maximum", json!(INTEGER_LIMIT)),
        ),
        (false, false) => return,
    };
    // A bound the schema sets, as a number (draft 4's `exclusiveMinimum: true` is a flag
    // on `minimum`).
    let set = |o: &Map<String, Value>, keys: [&str; 2]| -> Option<f64> {
        keys.iter().find_map(|k| o.get(*k).and_then(Value::as_f64))
    };
    let min_set = set(o, ["minimum", "exclusiveMinimum"]);
    let max_set = set(o, ["maximum", "exclusiveMaximum"]);
    let (low_value, high_value) = (low.1.as_f64(), high.1.as_f64());
    // Added only where it leaves the schema satisfiable (a maximum below our minimum is
    // left as the schema has it).
    if min_set.is_none() && max_set.is_none_or(|max| Some(max) > low_value) {
        o.insert(low.0.into(), low.1);
    }
    if max_set.is_none() && min_set.is_none_or(|min| Some(min) < high_value) {
        o.insert(high.0.into(), high.1);
    }
    if number && !o.contains_key("multipleOf") {
        o.insert("multipleOf".into(), json!(NUMBER_STEP));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::constrain::{Constraint, Grammars};
    use crate::model::{TokenMask, Tokenizer};
    use crate::output::ToolFormat;
    use crate::testing::ByteTokenizer;

    fn grammars() -> Grammars {
        Grammars::new(&ByteTokenizer, &HashMap::new()).unwrap()
    }

    /// Drives the grammar with a "model" that writes `prefer` while it may and then
    /// keeps preferring `forever` (say, the next digit of an endless number), else the
    /// first token allowed. Stops at the end of the turn or after `limit` tokens.
    fn generate(c: &mut Constraint, prefer: &str, forever: &str, limit: usize) -> String {
        let tokenizer = ByteTokenizer;
        let mut prefer = tokenizer.encode(prefer).into_iter().peekable();
        let forever = tokenizer.encode(forever);
        let mut out = Vec::new();
        for _ in 0..limit {
            let mask = c.mask().expect("the grammar holds");
            let m = TokenMask(mask.as_slice());
            let wanted = prefer.peek().copied().filter(|t| m.allows(*t));
            if wanted.is_some() {
                prefer.next();
            } else {
                prefer = Vec::new().into_iter().peekable();
            }
            let token = wanted
                .into_iter()
                .chain(forever.iter().copied())
                // The end of the turn before anything else once the grammar is complete.
                .chain(0..257)
                .find(|t| m.allows(*t))
                .expect("something is allowed");
            if tokenizer.is_end_of_generation(token) {
                return String::from_utf8(out).unwrap();
            }
            c.accept(token);
            out.extend(tokenizer.token_bytes(token));
        }
        panic!(
            "no end after {limit} tokens: {}",
            String::from_utf8_lossy(&out)
        );
    }

    fn output_text(schema: Value, prefer: &str, forever: &str) -> String {
        let mut c = grammars().json_output(&schema).unwrap();
        let text = generate(&mut c, prefer, forever, 400);
        match serde_json::from_str::<Value>(&text) {
            Ok(_) => text,
            Err(e) => panic!("{text:?}: {e}"),
        }
    }

    fn output(schema: Value, prefer: &str, forever: &str) -> Value {
        serde_json::from_str(&output_text(schema, prefer, forever)).unwrap()
    }

    #[test]
    fn an_endless_integer_ends_within_an_i64() {
        let schema = json!({"type": "object", "properties": {"age": {"type": "integer"}},
                            "required": ["age"]});
        let value = output(schema, "{\"age\": 1", "0");
        // As many zeros as fit: 10^18.
        assert_eq!(value, json!({"age": 1_000_000_000_000_000_000_i64}));
        let value = output(json!({"type": "integer"}), "-", "9");
        assert_eq!(value, json!(-999_999_999_999_999_999_i64));
    }

    #[test]
    fn an_endless_number_ends_with_few_digits() {
        let schema = json!({"type": "array", "items": {"type": "number"}, "maxItems": 2});
        let text = output_text(schema.clone(), "[3.", "3");
        assert_eq!(text, "[3.3333333333, 3333333333333333.3333333333]");
        let text = output_text(schema, "[-", "7");
        let seven = "7".repeat(16);
        assert_eq!(text, format!("[-{seven}, {seven}.7777777777]"));
    }

    /// Bounds reach numbers wherever they sit: under properties, items, anyOf, $defs.
    #[test]
    fn nested_numbers_are_bounded() {
        let schema = json!({
            "type": "object",
            "properties": {
                "a": {"anyOf": [{"type": "null"}, {"type": ["integer", "null"]}]},
                "b": {"type": "array", "items": {"$ref": "#/$defs/n"}, "maxItems": 1},
                "c": {"type": "object", "properties": {"d": {"type": "integer"}}, "required": ["d"]}
            },
            "required": ["a", "b", "c"],
            "$defs": {"n": {"type": "integer"}}
        });
        // (Closing the inner object: it is open to other keys.)
        let value = output(schema, "{\"a\": 5", "5}");
        let fives = 5_555_555_555_555_555_555_i64;
        assert_eq!(value, json!({"a": fives, "b": [fives], "c": {"d": fives}}));
    }

    #[test]
    fn bounds_the_schema_sets_are_kept() {
        let mut schema = json!({"type": "integer", "minimum": 3});
        bound(&mut schema);
        assert_eq!(
            schema,
            json!({"type": "integer", "minimum": 3, "maximum": INTEGER_LIMIT})
        );
        let mut schema = json!({"type": "number", "exclusiveMaximum": 1e30, "multipleOf": 0.5});
        bound(&mut schema);
        assert_eq!(
            schema,
            json!({"type": "number", "exclusiveMaximum": 1e30, "multipleOf": 0.5,
                   "exclusiveMinimum": -NUMBER_LIMIT})
        );
        // Where ours would leave nothing, none is added.
        let mut schema = json!({"type": "integer", "maximum": -1e30});
        bound(&mut schema);
        assert_eq!(schema, json!({"type": "integer", "maximum": -1e30}));
        // Fixed values, tests of values and values of any type are left alone.
        for fixed in [
            json!({"type": "integer", "enum": [1, 2]}),
            json!({"not": {"type": "integer"}}),
            json!({"if": {"type": "integer"}, "then": {"type": "string"}}),
            json!({"minimum": 2}),
        ] {
            let mut schema = fixed.clone();
            bound(&mut schema);
            assert_eq!(schema, fixed);
        }
        // A schema's own bounds hold.
        let value = output(json!({"type": "integer", "maximum": 500}), "4", "9");
        assert_eq!(value, json!(499));
        let text = output_text(
            json!({"type": "number", "minimum": 0, "maximum": 1}),
            "0.",
            "5",
        );
        assert_eq!(text, "0.5555555555");
    }

    #[test]
    fn max_length_and_max_items_hold() {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 5},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 2}, "maxItems": 3}
            },
            "required": ["name", "tags"]
        });
        let value = output(schema, "{\"name\": \"abcdefgh", "x");
        assert_eq!(value["name"], "abcde");
        let tags = value["tags"].as_array().unwrap();
        assert!(tags.len() <= 3, "{value}");
        // A model that wants more items and longer ones gets as many as allowed.
        let schema =
            json!({"type": "array", "items": {"type": "string", "maxLength": 2}, "maxItems": 3});
        let value = output(schema, "[\"abc", "\", ");
        assert_eq!(value, json!(["ab", "", ""]));
    }

    #[test]
    fn tool_arguments_are_bounded_too() {
        let grammars = grammars();
        let tool = crate::request::ToolSpec {
            name: "wait".into(),
            description: None,
            parameters: json!({"type": "object", "properties": {"seconds": {"type": "integer"}},
                               "required": ["seconds"]}),
        };
        let tools = [tool];
        let mut c = grammars
            .forced_call(ToolFormat::HERMES, &tools, None)
            .unwrap();
        let text = generate(
            &mut c,
            "<tool_call>\n{\"name\": \"wait\", \"arguments\": {\"seconds\": 1",
            "0}",
            400,
        );
        assert!(
            text.ends_with("{\"seconds\": 1000000000000000000}}\n</tool_call>"),
            "{text}"
        );
        // FunctionGemma's arguments are not JSON; its numbers have their own bounds.
        let mut c = grammars
            .forced_call(ToolFormat::FUNCTIONGEMMA, &tools, None)
            .unwrap();
        let text = generate(
            &mut c,
            "<start_function_call>call:wait{seconds:1",
            "0}",
            400,
        );
        assert!(
            text.ends_with("{seconds:100000000000000000}<end_function_call>"),
            "{text}"
        );
    }
}
