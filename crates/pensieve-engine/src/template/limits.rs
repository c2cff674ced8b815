//! What bounds one render of a hostile or broken template. minijinja's own limits cover
//! part of it (500 nested calls, `range` up to 100,000 items, `*` on strings up to 100 MB);
//! fuel bounds the time ([`super::fuel_for`]), and the rest bounds the text it can build: the
//! output, and the filters that multiply text by an argument.

use std::cell::Cell;
use std::io;

use minijinja::value::{Kwargs, StringInput};
use minijinja::{Error, ErrorKind, State, Template, Value};

use super::{MAX_INDENT, MAX_TEXT};

/// How a render that ran out of fuel is reported; the retries look for it.
pub(super) const OUT_OF_FUEL: &str = "the chat template ran too long";

/// Whether a render failed for want of fuel: trying again, reshaped, would fail again.
pub(super) fn out_of_fuel(err: &super::TemplateError) -> bool {
    matches!(err, super::TemplateError::Render(m) if m.starts_with(OUT_OF_FUEL))
}

/// Renders into memory, failing once the output is over [`MAX_TEXT`].
pub(super) fn render_capped(template: &Template<'_, '_>, ctx: Value) -> Result<String, Error> {
    let over = Cell::new(false);
    let mut out = Capped {
        buf: Vec::new(),
        over: &over,
    };
    match template.render_captured_to(ctx, &mut out) {
        Ok(_) => String::from_utf8(out.buf).map_err(|_| {
            Error::new(
                ErrorKind::WriteFailure,
                "the chat template wrote invalid UTF-8",
            )
        }),
        Err(_) if over.get() => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("the chat template's output is over {} MiB", MAX_TEXT >> 20),
        )),
        Err(err) => Err(err),
    }
}

struct Capped<'a> {
    buf: Vec<u8>,
    over: &'a Cell<bool>,
}

impl io::Write for Capped<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > MAX_TEXT {
            self.over.set(true);
            return Err(io::Error::other("output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The message for an error that a limit here raised, wherever in the chain it is.
pub(super) fn describe(err: &Error) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = current {
        if let Some(e) = cause.downcast_ref::<Error>() {
            if e.kind() == ErrorKind::OutOfFuel {
                return Some(format!(
                    "{OUT_OF_FUEL}: it used up its instruction budget for this conversation (an endless or too large loop?)"
                ));
            }
        }
        current = cause.source();
    }
    None
}

fn too_large(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("{what}: the result would be over {} MiB", MAX_TEXT >> 20),
    )
}

/// Fails when `text`, or `text` with each `from` replaced by `to`, is over [`MAX_TEXT`].
/// Counts matches only up to what would pass the limit: a long text has many.
pub(super) fn check_replace(text: &str, from: &str, to: &str) -> Result<(), Error> {
    // Already over (minijinja's `*` makes strings of up to 100 MB): refused before any scan.
    if text.len() > MAX_TEXT {
        return Err(too_large("replace"));
    }
    if to.len() <= from.len() {
        return Ok(());
    }
    let room = MAX_TEXT - text.len();
    let allowed = room / (to.len() - from.len());
    // An empty pattern matches between every two characters and at both ends.
    let matches = if from.is_empty() {
        text.chars().take(allowed).count() + 1
    } else {
        text.matches(from).take(allowed + 1).count()
    };
    if matches > allowed {
        return Err(too_large("replace"));
    }
    Ok(())
}

/// minijinja's `replace` filter, refusing a result over [`MAX_TEXT`]: each match of a short
/// pattern can become a string of 100 MB.
pub(super) fn replace(
    state: &State,
    value: StringInput<'_>,
    from: StringInput<'_>,
    to: StringInput<'_>,
) -> Result<Value, Error> {
    check_replace(value.as_str(), from.as_str(), to.as_str())?;
    minijinja::filters::replace(state, value, from, to)
}

/// minijinja's `indent` filter with its width bounded: every line gets that many spaces.
pub(super) fn indent(
    value: StringInput<'_>,
    width: Option<usize>,
    indent_first_line: Option<bool>,
    indent_blank_lines: Option<bool>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let width_kwarg = kwargs.get::<Option<usize>>("width")?;
    if let Some(w) = width.or(width_kwarg).filter(|w| *w > MAX_INDENT) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("indent: a width of {w} is over {MAX_INDENT}"),
        ));
    }
    minijinja::filters::indent(
        value,
        width.or(width_kwarg),
        indent_first_line,
        indent_blank_lines,
        kwargs,
    )
}

/// Fails when `items` joined by `sep` would be over [`MAX_TEXT`]: `[s] * 100000` is a
/// cheap list of 100,000 copies of a long string.
pub(super) fn check_join(items: &Value, sep: &str) -> Result<(), Error> {
    let mut len = 0usize;
    for (i, item) in items.try_iter()?.enumerate() {
        let item_len = match item.as_str() {
            Some(text) => text.len(),
            // Printed as a template prints it, which fails past the limit itself (a
            // list of such lists) or on a namespace that holds itself.
            None => super::python::string_filter(&item)?.len(),
        };
        len = len
            .saturating_add(item_len)
            .saturating_add(if i > 0 { sep.len() } else { 0 });
        if len > MAX_TEXT {
            return Err(too_large("join"));
        }
    }
    Ok(())
}

/// minijinja's `join` filter, refusing a result over [`MAX_TEXT`].
pub(super) fn join(
    state: &State,
    value: &Value,
    joiner: Option<StringInput<'_>>,
) -> Result<Value, Error> {
    // A string joins its characters; the result is no longer than it with the joiner.
    if value.as_str().is_none() && !value.is_undefined() && !value.is_none() {
        check_join(value, joiner.as_ref().map_or("", |j| j.as_str()))?;
    }
    minijinja::filters::join(state, value, joiner)
}
