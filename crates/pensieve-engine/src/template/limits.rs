//! What bounds one render of a hostile or broken template. minijinja's own limits cover
//! part of it (500 nested calls, `range` up to 100,000 items); fuel bounds the time
//! ([`super::fuel_for`]), and the rest bounds the text it can build: the output, what `{{ }}`
//! prints into captures, the filters that multiply text by an argument, and (through
//! [`super::operators`]) what `*`, `+` and `~` build. The text limit scales with the conversation ([`cap_for`]): a real template's
//! prompt is its conversation with a few headers, so a render of a short one that builds
//! megabytes is refused at once rather than after seconds of string work.

use std::cell::Cell;
use std::io;

use minijinja::value::{Kwargs, StringInput};
use minijinja::{Error, ErrorKind, State, Template, Value};

use super::{MAX_INDENT, MAX_TEXT};

thread_local! {
    /// The text limit of the render running on this thread ([`MAX_TEXT`] outside one).
    static CAP: Cell<usize> = const { Cell::new(MAX_TEXT) };
    /// What that render's `{{ }}` printed so far, into its output or into captures.
    static PRINTED: Cell<usize> = const { Cell::new(0) };
}

/// How many times its text limit a render may print in all: a template may build a part
/// of the prompt in a `{% set %}` block or a macro, then print it.
const PRINTED_PER_CAP: usize = 4;

/// The text limit for a conversation of `bytes` of text and tool definitions: 1 MiB over
/// eight times the conversation (tool schemas pretty-printed, headers on every turn), and
/// never over [`MAX_TEXT`].
pub(super) fn cap_for(bytes: usize) -> usize {
    bytes
        .saturating_mul(8)
        .saturating_add(1 << 20)
        .min(MAX_TEXT)
}

/// The longest text the render on this thread may build.
pub(super) fn text_cap() -> usize {
    CAP.with(Cell::get)
}

/// The limits of one render, in force on this thread until dropped. minijinja renders on
/// the calling thread, so the filters it calls see them.
pub(super) struct RenderLimits {
    outer: (usize, usize),
}

impl RenderLimits {
    pub(super) fn enter(cap: usize) -> Self {
        RenderLimits {
            outer: (CAP.with(|c| c.replace(cap)), PRINTED.with(|p| p.replace(0))),
        }
    }
}

impl Drop for RenderLimits {
    fn drop(&mut self) {
        CAP.with(|c| c.set(self.outer.0));
        PRINTED.with(|p| p.set(self.outer.1));
    }
}

/// Counts `len` bytes that `{{ }}` is about to print, failing past [`PRINTED_PER_CAP`]
/// times the text limit: macros and `{% set %}` blocks capture what they print, and a
/// macro that prints its argument twice doubles a string at each call.
pub(super) fn count_printed(len: usize) -> Result<(), Error> {
    let printed = PRINTED.with(|p| {
        let total = p.get().saturating_add(len);
        p.set(total);
        total
    });
    if printed > text_cap().saturating_mul(PRINTED_PER_CAP) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "the chat template printed over {} in all, {PRINTED_PER_CAP} times what this conversation allows",
                mib(text_cap().saturating_mul(PRINTED_PER_CAP))
            ),
        ));
    }
    Ok(())
}

/// `bytes` in MiB, for the errors.
pub(super) fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// How a render that ran out of fuel is reported; the retries look for it.
pub(super) const OUT_OF_FUEL: &str = "the chat template ran too long";

/// Whether a render failed for want of fuel: trying again, reshaped, would fail again.
pub(super) fn out_of_fuel(err: &super::TemplateError) -> bool {
    matches!(err, super::TemplateError::Render(m) if m.starts_with(OUT_OF_FUEL))
}

/// Renders into memory, failing once the output is over the text limit.
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
            format!(
                "the chat template's output is over the {} this conversation allows",
                mib(text_cap())
            ),
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
        if self.buf.len() + data.len() > text_cap() {
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
        format!(
            "{what}: the result would be over the {} this conversation allows",
            mib(text_cap())
        ),
    )
}

/// Fails when `text`, or `text` with each `from` replaced by `to`, is over the text limit.
/// Counts matches only up to what would pass the limit: a long text has many.
pub(super) fn check_replace(text: &str, from: &str, to: &str) -> Result<(), Error> {
    // Already over (minijinja's `*` makes strings of up to 100 MB): refused before any scan.
    let cap = text_cap();
    if text.len() > cap {
        return Err(too_large("replace"));
    }
    if to.len() <= from.len() {
        return Ok(());
    }
    let room = cap - text.len();
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

/// minijinja's `replace` filter, refusing a result over the text limit: each match of a short
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
    // Every line may get the width (blank ones too, on request): a text of newlines grows
    // by up to that many times.
    let text = value.as_str();
    let grown = if text.len() > text_cap() {
        usize::MAX
    } else {
        let lines = text.bytes().filter(|b| *b == b'\n').count() + 1;
        lines
            .saturating_mul(width.or(width_kwarg).unwrap_or(4))
            .saturating_add(text.len())
    };
    if grown > text_cap() {
        return Err(too_large("indent"));
    }
    minijinja::filters::indent(
        value,
        width.or(width_kwarg),
        indent_first_line,
        indent_blank_lines,
        kwargs,
    )
}

/// Fails when `items` joined by `sep` would be over the text limit: `[s] * 100000` is a
/// cheap list of 100,000 copies of a long string.
pub(super) fn check_join(items: &Value, sep: &str) -> Result<(), Error> {
    let cap = text_cap();
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
        if len > cap {
            return Err(too_large("join"));
        }
    }
    Ok(())
}

/// minijinja's `join` filter, refusing a result over the text limit.
pub(super) fn join(
    state: &State,
    value: &Value,
    joiner: Option<StringInput<'_>>,
) -> Result<Value, Error> {
    let sep = joiner.as_ref().map_or("", |j| j.as_str());
    if let Some(text) = value.as_str() {
        // A string joins its characters: the joiner comes between every two of them.
        let cap = text_cap();
        let joins = if sep.is_empty() || text.len() > cap {
            0
        } else {
            text.chars()
                .take(cap / sep.len() + 2)
                .count()
                .saturating_sub(1)
        };
        if text.len() > cap || joins.saturating_mul(sep.len()) > cap - text.len() {
            return Err(too_large("join"));
        }
    } else if !value.is_undefined() && !value.is_none() {
        check_join(value, sep)?;
    }
    minijinja::filters::join(state, value, joiner)
}
