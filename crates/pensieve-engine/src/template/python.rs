//! Python-compatible value printing for chat templates.
//!
//! Hugging Face renders templates with Python's jinja2, so what a template prints
//! is Python's text: `{{ true }}` is `True`, `{{ none }}` is `None`, a dict prints
//! as its `repr`, and `tojson` is `json.dumps(x, ensure_ascii=False)` with `", "`
//! and `": "` separators and unsorted keys. minijinja prints `true`, `none`, JSON
//! maps, and its own `tojson` is compact and HTML-escapes `<`, `>`, `&` and `'`.
//! This module owns the Python flavour of all of that: the output formatter, the
//! `string` filter, the `tojson` filter, and the type tests (`iterable`, `sequence`,
//! `number`) whose answers differ between the two engines.

use std::fmt::Write;

use minijinja::value::{from_args, Kwargs, Rest, ValueKind};
use minijinja::{Error, ErrorKind, Output, State, Value};

use super::limits::{count_printed, mib, text_cap};
use super::{MAX_INDENT, MAX_VALUE_DEPTH};

/// The formatter for `{{ ... }}`: strings verbatim, everything else as Python's `str()`.
pub(super) fn format_output(out: &mut Output, _state: &State, value: &Value) -> Result<(), Error> {
    // A long string is counted before it is copied.
    if let Some(text) = value.as_str() {
        count_printed(text.len())?;
        if text.len() > text_cap() {
            return Err(too_long("printing a value"));
        }
    }
    let mut text = String::new();
    write_str(&mut text, value)?;
    if value.as_str().is_none() {
        count_printed(text.len())?;
    }
    out.write_str(&text).map_err(|err| {
        Error::new(ErrorKind::WriteFailure, "cannot write template output").with_source(err)
    })
}

/// The `string` filter, as Python's `str()`.
pub(super) fn string_filter(value: &Value) -> Result<String, Error> {
    let mut text = String::new();
    write_str(&mut text, value)?;
    Ok(text)
}

/// Python's `str(value)`: like `repr` except that a top-level string is itself.
fn write_str(out: &mut String, value: &Value) -> Result<(), Error> {
    match value.kind() {
        // Lenient undefined prints nothing, as in jinja2.
        ValueKind::Undefined => Ok(()),
        ValueKind::String => {
            out.push_str(value.as_str().unwrap_or_default());
            Ok(())
        }
        _ => write_repr(out, value, 0),
    }
}

/// Fails once a value printed by a template is nested past [`MAX_VALUE_DEPTH`] (a
/// namespace can hold itself) or its text is past the text limit (a list repeated many
/// times over holds the same long string many times).
fn check_size(what: &str, out: &str, depth: usize) -> Result<(), Error> {
    if depth > MAX_VALUE_DEPTH {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("{what}: the value is nested more than {MAX_VALUE_DEPTH} deep"),
        ));
    }
    if out.len() > text_cap() {
        return Err(too_long(what));
    }
    Ok(())
}

fn too_long(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "{what}: the text is over the {} this conversation allows",
            mib(text_cap())
        ),
    )
}

/// Python's `repr(value)` for the values a template can hold.
fn write_repr(out: &mut String, value: &Value, depth: usize) -> Result<(), Error> {
    check_size("printing a value", out, depth)?;
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => write_number(out, value, PyFloat::Repr),
        ValueKind::String => write_repr_string(out, value.as_str().unwrap_or_default()),
        ValueKind::Seq => {
            out.push('[');
            for (i, item) in iter(value).enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &item, depth + 1)?;
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in iter(value).enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &key, depth + 1)?;
                out.push_str(": ");
                write_repr(out, &value.get_item(&key).unwrap_or_default(), depth + 1)?;
            }
            out.push('}');
        }
        // Objects without a Python counterpart (loop, namespace internals, `[x] * n`):
        // minijinja's text, cut off at the limit (a repeated list is lazy and can be long).
        _ => {
            if write!(Bounded(out), "{value}").is_err() {
                return Err(too_long("printing a value"));
            }
        }
    }
    Ok(())
}

/// A `fmt::Write` into a string that fails once the string is past the text limit.
struct Bounded<'a>(&'a mut String);

impl std::fmt::Write for Bounded<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.0.len() + s.len() > text_cap() {
            return Err(std::fmt::Error);
        }
        self.0.push_str(s);
        Ok(())
    }
}

fn iter(value: &Value) -> impl Iterator<Item = Value> + '_ {
    value.try_iter().into_iter().flatten()
}

/// Python's string `repr`: single quotes unless the text holds one and no double quote.
fn write_repr_string(out: &mut String, text: &str) {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            // Python escapes what it deems unprintable; controls and non-space
            // whitespace cover what realistic tool schemas contain.
            c if c.is_control() || (c.is_whitespace() && c != ' ') => {
                let code = u32::from(c);
                let _ = match code {
                    0..=0xff => write!(out, "\\x{code:02x}"),
                    0x100..=0xffff => write!(out, "\\u{code:04x}"),
                    _ => write!(out, "\\U{code:08x}"),
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// How a float is spelled: `repr` for printing, JSON for `tojson` (which differs only
/// for the non-finite values).
#[derive(Clone, Copy)]
enum PyFloat {
    Repr,
    Json,
}

fn write_number(out: &mut String, value: &Value, style: PyFloat) {
    if value.is_integer() {
        // Every minijinja integer fits in i128.
        if let Ok(int) = i128::try_from(value.clone()) {
            let _ = write!(out, "{int}");
            return;
        }
    }
    match f64::try_from(value.clone()) {
        Ok(float) => write_float(out, float, style),
        Err(_) => {
            let _ = write!(out, "{value}");
        }
    }
}

/// Python's float `repr`: the shortest round-tripping digits, positional with a
/// trailing `.0` when the decimal exponent is in [-4, 16), scientific (`1e-05`,
/// `1.5e+16`) outside it.
fn write_float(out: &mut String, float: f64, style: PyFloat) {
    if float.is_nan() {
        out.push_str(match style {
            PyFloat::Repr => "nan",
            PyFloat::Json => "NaN",
        });
        return;
    }
    if float.is_infinite() {
        let sign = if float < 0.0 { "-" } else { "" };
        let name = match style {
            PyFloat::Repr => "inf",
            PyFloat::Json => "Infinity",
        };
        out.push_str(sign);
        out.push_str(name);
        return;
    }
    // Rust's `{:e}` gives the same shortest digits as Python; only the layout differs.
    let scientific = format!("{float:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    out.push_str(sign);
    if !(-4..16).contains(&exponent) {
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        let _ = write!(out, "{mantissa}e{exp_sign}{:02}", exponent.unsigned_abs());
    } else if exponent < 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-exponent - 1) as usize));
        out.push_str(&digits);
    } else {
        let int_len = exponent as usize + 1;
        if digits.len() <= int_len {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', int_len - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..int_len]);
            out.push('.');
            out.push_str(&digits[int_len..]);
        }
    }
}

/// jinja2's `iterable` test (`iter(value)` succeeds): strings, lists, dicts and
/// undefined (jinja2's Undefined iterates as empty) but not None, which minijinja
/// iterates as empty. Qwen3-Coder's and Nemotron's `tools is iterable and tools |
/// length > 0` relies on None failing the test when HF passes `tools=None`.
pub(super) fn is_iterable(value: &Value) -> bool {
    match value.kind() {
        ValueKind::None => false,
        ValueKind::Undefined => true,
        _ => value.try_iter().is_ok(),
    }
}

/// jinja2's `sequence` test (has `len` and `[]`): lists, strings, dicts and undefined;
/// minijinja's answers true for lists only.
pub(super) fn is_sequence(value: &Value) -> bool {
    matches!(
        value.kind(),
        ValueKind::Seq | ValueKind::String | ValueKind::Map | ValueKind::Undefined
    )
}

/// jinja2's `number` test (`isinstance(value, Number)`), which booleans pass.
pub(super) fn is_number(value: &Value) -> bool {
    matches!(value.kind(), ValueKind::Number | ValueKind::Bool)
}

/// Python methods on values, for templates that call `str.rsplit` and friends:
/// the few string methods minijinja-contrib's pycompat lacks, then pycompat.
pub(super) fn unknown_method(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    if let Some(text) = value.as_str() {
        match method {
            "rsplit" => {
                let (positional, kwargs) = split_kwargs(args.to_vec())?;
                let mut positional = positional.into_iter();
                let sep = arg(positional.next(), &kwargs, "sep")?.filter(|s| !s.is_none());
                let maxsplit = match arg(positional.next(), &kwargs, "maxsplit")? {
                    Some(v) => i64::try_from(v)?,
                    None => -1,
                };
                kwargs.assert_all_used()?;
                let sep = match &sep {
                    Some(sep) => Some(sep.as_str().ok_or_else(|| {
                        Error::new(
                            ErrorKind::InvalidOperation,
                            "rsplit: the separator must be a string",
                        )
                    })?),
                    None => None,
                };
                return rsplit(text, sep, maxsplit).map(Value::from);
            }
            // Done by pycompat below, once the size of the result is known to be sane.
            "replace" => {
                if let (Some(from), Some(to)) = (
                    args.first().and_then(Value::as_str),
                    args.get(1).and_then(Value::as_str),
                ) {
                    super::limits::check_replace(text, from, to)?;
                }
            }
            "join" => {
                if let Some(items) = args.first() {
                    super::limits::check_join(items, text)?;
                }
            }
            "removeprefix" => {
                let (prefix,): (&str,) = from_args(args)?;
                return Ok(Value::from(text.strip_prefix(prefix).unwrap_or(text)));
            }
            "removesuffix" => {
                let (suffix,): (&str,) = from_args(args)?;
                return Ok(Value::from(text.strip_suffix(suffix).unwrap_or(text)));
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// Python's `str.rsplit(sep, maxsplit)`; without `sep`, runs of whitespace split
/// and leading or trailing whitespace yields no empty parts.
fn rsplit(text: &str, sep: Option<&str>, maxsplit: i64) -> Result<Vec<String>, Error> {
    let limit = usize::try_from(maxsplit).ok();
    let mut parts: Vec<String> = match sep {
        Some("") => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "rsplit: empty separator",
            ))
        }
        Some(sep) => match limit {
            Some(limit) => text.rsplitn(limit + 1, sep).map(str::to_owned).collect(),
            None => text.rsplit(sep).map(str::to_owned).collect(),
        },
        None => {
            let mut parts = Vec::new();
            let mut rest = text.trim_end();
            while !rest.is_empty() && limit.is_none_or(|limit| parts.len() < limit) {
                match rest.char_indices().rev().find(|(_, c)| c.is_whitespace()) {
                    Some((at, c)) => {
                        parts.push(rest[at + c.len_utf8()..].to_owned());
                        rest = rest[..at].trim_end();
                    }
                    None => {
                        parts.push(rest.to_owned());
                        rest = "";
                    }
                }
            }
            if !rest.is_empty() {
                parts.push(rest.to_owned());
            }
            parts
        }
    };
    parts.reverse();
    Ok(parts)
}

/// HF's `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`,
/// a thin wrapper over Python's `json.dumps`; positional arguments follow that order.
pub(super) fn tojson(value: &Value, args: Rest<Value>) -> Result<Value, Error> {
    // minijinja allows five parameters per filter, so the arguments are parsed here.
    let (positional, kwargs) = split_kwargs(args.0)?;
    if positional.len() > 4 {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most ensure_ascii, indent, separators and sort_keys",
        ));
    }
    let mut positional = positional.into_iter();
    let ensure_ascii =
        arg(positional.next(), &kwargs, "ensure_ascii")?.is_some_and(|v| v.is_true());
    let indent = match arg(positional.next(), &kwargs, "indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::String => {
            let indent = v.as_str().unwrap_or_default();
            // Each line repeats it once per level: a long one multiplies the output.
            if indent.len() > MAX_INDENT {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "tojson: an indent of {} bytes is over {MAX_INDENT}",
                        indent.len()
                    ),
                ));
            }
            Some(indent.to_owned())
        }
        // Python multiplies: `' ' * indent`, so True is one space and negatives none.
        Some(v) => {
            let width = i64::try_from(v.clone()).map_err(|_| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be a number or a string",
                )
            })?;
            let width = usize::try_from(width).unwrap_or(0);
            if width > MAX_INDENT {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: an indent of {width} is over {MAX_INDENT}"),
                ));
            }
            Some(" ".repeat(width))
        }
    };
    let (item_sep, key_sep) = match arg(positional.next(), &kwargs, "separators")? {
        Some(v) if !v.is_none() => separator_pair(&v)?,
        _ if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        _ => (", ".to_owned(), ": ".to_owned()),
    };
    let sort_keys = arg(positional.next(), &kwargs, "sort_keys")?.is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;

    let mut writer = JsonWriter {
        out: String::new(),
        ensure_ascii,
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    writer.write(value, 0)?;
    Ok(Value::from(writer.out))
}

/// `json.dumps(value, ensure_ascii=False, separators=(",", ":"))`: compact JSON that
/// prints numbers as Python does, for text we write into prompts ourselves.
pub(super) fn compact_json(value: &Value) -> Result<String, Error> {
    let mut writer = JsonWriter {
        out: String::new(),
        ensure_ascii: false,
        indent: None,
        item_sep: ",".to_owned(),
        key_sep: ":".to_owned(),
        sort_keys: false,
    };
    writer.write(value, 0)?;
    Ok(writer.out)
}

/// `json.dumps(value, ensure_ascii=False)`: Python's default separators, for prompt text
/// a model's own documentation builds with `json.dumps`.
pub(super) fn dumps(value: &Value) -> Result<String, Error> {
    let mut writer = JsonWriter {
        out: String::new(),
        ensure_ascii: false,
        indent: None,
        item_sep: ", ".to_owned(),
        key_sep: ": ".to_owned(),
        sort_keys: false,
    };
    writer.write(value, 0)?;
    Ok(writer.out)
}

/// Separates keyword arguments, which arrive as a trailing kwargs value.
fn split_kwargs(mut args: Vec<Value>) -> Result<(Vec<Value>, Kwargs), Error> {
    let kwargs = match args.last() {
        Some(last) if last.is_kwargs() => Kwargs::try_from(args.pop().unwrap_or_default())?,
        _ => Kwargs::from_iter(std::iter::empty::<(String, Value)>()),
    };
    Ok((args, kwargs))
}

/// An argument given either positionally or by keyword.
fn arg(positional: Option<Value>, kwargs: &Kwargs, name: &str) -> Result<Option<Value>, Error> {
    match positional {
        Some(v) => Ok(Some(v)),
        None => kwargs.get::<Option<Value>>(name),
    }
}

fn separator_pair(value: &Value) -> Result<(String, String), Error> {
    let parts: Vec<Value> = iter(value).collect();
    match parts.as_slice() {
        [item, key] if item.as_str().is_some() && key.as_str().is_some() => Ok((
            item.as_str().unwrap_or_default().to_owned(),
            key.as_str().unwrap_or_default().to_owned(),
        )),
        _ => Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: separators must be a pair of strings",
        )),
    }
}

/// `json.dumps` with the options `tojson` passes through.
struct JsonWriter {
    out: String,
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl JsonWriter {
    fn write(&mut self, value: &Value, depth: usize) -> Result<(), Error> {
        check_size("tojson", &self.out, depth)?;
        match value.kind() {
            ValueKind::Undefined | ValueKind::None => self.out.push_str("null"),
            ValueKind::Bool => self
                .out
                .push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => write_number(&mut self.out, value, PyFloat::Json),
            ValueKind::String => self.write_string(value.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                // Streamed, not collected: `[x] * n` is a lazy list of any length.
                self.write_container(iter(value), depth, ('[', ']'), |writer, item, depth| {
                    writer.write(&item, depth)
                })?;
            }
            ValueKind::Map => {
                let mut entries: Vec<(String, Value)> = iter(value)
                    .map(|key| {
                        let item = value.get_item(&key).unwrap_or_default();
                        (json_key(&key), item)
                    })
                    .collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                let entries = entries.into_iter();
                self.write_container(entries, depth, ('{', '}'), |writer, (key, item), depth| {
                    writer.write_string(&key);
                    let key_sep = writer.key_sep.clone();
                    writer.out.push_str(&key_sep);
                    writer.write(&item, depth)
                })?;
            }
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: a value of kind {other} is not JSON serializable"),
                ));
            }
        }
        Ok(())
    }

    /// Python's layout: with an indent, each item on its own line and `item_sep`
    /// (default `,`) before the newline; empty containers stay `[]` / `{}`.
    fn write_container<T>(
        &mut self,
        items: impl Iterator<Item = T>,
        depth: usize,
        (open, close): (char, char),
        mut write_item: impl FnMut(&mut Self, T, usize) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.out.push(open);
        let mut items = items.peekable();
        if items.peek().is_none() {
            self.out.push(close);
            return Ok(());
        }
        for (i, item) in items.enumerate() {
            if i > 0 {
                let item_sep = self.item_sep.clone();
                self.out.push_str(&item_sep);
            }
            self.newline(depth + 1);
            write_item(self, item, depth + 1)?;
        }
        self.newline(depth);
        self.out.push(close);
        Ok(())
    }

    fn newline(&mut self, depth: usize) {
        if let Some(indent) = &self.indent {
            self.out.push('\n');
            for _ in 0..depth {
                self.out.push_str(indent);
            }
        }
    }

    fn write_string(&mut self, text: &str) {
        self.out.push('"');
        for c in text.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                '\u{08}' => self.out.push_str("\\b"),
                '\u{0c}' => self.out.push_str("\\f"),
                c if u32::from(c) < 0x20 => {
                    let _ = write!(self.out, "\\u{:04x}", u32::from(c));
                }
                // ensure_ascii escapes everything outside printable ASCII, astral
                // characters as UTF-16 surrogate pairs, exactly like Python.
                c if self.ensure_ascii && !(' '..='~').contains(&c) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(self.out, "\\u{unit:04x}");
                    }
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }
}

/// Python turns non-string dict keys into JSON strings: `True` -> `"true"`, `None` -> `"null"`.
fn json_key(key: &Value) -> String {
    match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
        ValueKind::None | ValueKind::Undefined => "null".to_owned(),
        ValueKind::Bool => if key.is_true() { "true" } else { "false" }.to_owned(),
        _ => {
            // Keys are numbers here: nothing nested, nothing long.
            let mut text = String::new();
            let _ = write_repr(&mut text, key, 0);
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float_repr(float: f64) -> String {
        let mut out = String::new();
        write_float(&mut out, float, PyFloat::Repr);
        out
    }

    #[test]
    fn floats_print_like_python_repr() {
        // Expected values are Python 3.11's repr() of the same floats.
        let cases = [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (-2.25, "-2.25"),
            (100.0, "100.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456.789, "123456.789"),
            (1e100, "1e+100"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-0.0, "-0.0"),
            (f64::INFINITY, "inf"),
        ];
        for (float, expected) in cases {
            assert_eq!(float_repr(float), expected, "repr({float:?})");
        }
    }

    #[test]
    fn type_tests_answer_as_jinja2_does() {
        // Expected answers are jinja2 3.1's `x is iterable` / `sequence` / `number`.
        let undefined = Value::UNDEFINED;
        let none = Value::from(());
        let text = Value::from("ab");
        let list = Value::from(vec![1, 2]);
        let map = Value::from_serialize(serde_json::json!({"k": 1}));
        let int = Value::from(3);
        let float = Value::from(1.5);
        let boolean = Value::from(true);
        let table = [
            (&undefined, true, true, false),
            (&none, false, false, false),
            (&text, true, true, false),
            (&list, true, true, false),
            (&map, true, true, false),
            (&int, false, false, true),
            (&float, false, false, true),
            (&boolean, false, false, true),
        ];
        for (value, iterable, sequence, number) in table {
            assert_eq!(is_iterable(value), iterable, "{value:?} is iterable");
            assert_eq!(is_sequence(value), sequence, "{value:?} is sequence");
            assert_eq!(is_number(value), number, "{value:?} is number");
        }
    }

    #[test]
    fn strings_repr_with_python_quoting() {
        let repr = |text: &str| {
            let mut out = String::new();
            write_repr_string(&mut out, text);
            out
        };
        assert_eq!(repr("plain"), "'plain'");
        assert_eq!(repr("it's"), "\"it's\"");
        assert_eq!(repr("both ' and \""), "'both \\' and \"'");
        assert_eq!(repr("a\nb\\c\u{1}"), "'a\\nb\\\\c\\x01'");
        assert_eq!(repr("é\u{a0}"), "'é\\xa0'");
    }
}
