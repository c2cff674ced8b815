//! Bounds what minijinja's own operators build. `*` makes strings of up to 100 MB, and `~` and
//! `+` concatenate without a limit: a loop that doubles a string through a namespace runs the
//! process out of memory in a few steps, and a string of megabytes handed to a filter can take
//! seconds. minijinja has no hook on its operators, so before the template is compiled each
//! `a ~ b` and `a + b` in it becomes `__pensieve_bounded(a ~ b)` (the same value, refused past
//! the render's text limit, [`super::limits`]) and each `a * b` becomes
//! `__pensieve_multiply(a , b)` (refused before it is built). The rewrite follows minijinja's
//! own parse of the template (its `machinery` API), so it takes exactly the operator
//! expressions, whatever their parentheses, and keeps the lines where they were (error
//! locations keep their line). A template that does not parse is left as it is, for the
//! compiler to report.

use minijinja::machinery::ast::{BinOpKind, CallArg, Expr, Stmt};
use minijinja::machinery::{parse, WhitespaceConfig};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::ValueKind;
use minijinja::{Error, ErrorKind, Value};

use super::limits::{mib, text_cap};

/// The function `~` and `+` expressions are wrapped in.
pub(super) const BOUNDED: &str = "__pensieve_bounded";
const BOUNDED_OPEN: &str = "__pensieve_bounded(";
/// The function `*` expressions become.
pub(super) const MULTIPLY: &str = "__pensieve_multiply";
const MULTIPLY_OPEN: &str = "__pensieve_multiply(";

/// The most items a list built by an operator may have (`[x] * n`, lists joined with `+`):
/// each is a value of its own once a filter turns the list into one.
const MAX_ITEMS: usize = 1_000_000;

/// How an operator expression is rewritten.
enum Rewrite {
    /// `a ~ b` into `__pensieve_bounded(a ~ b)`.
    Wrap,
    /// `a * b` into `__pensieve_multiply(a , b)`, with the operator's offset: its size is
    /// checked before it is built.
    Call { operator: usize },
}

/// `source` with every `*`, `+` and `~` expression rewritten, parsed with the whitespace
/// settings the environment compiles it with.
pub(super) fn bound_operators(source: &str, whitespace: WhitespaceConfig) -> String {
    let Ok(ast) = parse(source, "", SyntaxConfig, whitespace) else {
        return source.to_owned();
    };
    let mut found = Found {
        source,
        list: Vec::new(),
    };
    stmt(&ast, &mut found);
    if found.list.is_empty() {
        return source.to_owned();
    }
    // (offset, closes before opens, nesting rank, text, source bytes replaced): at one offset
    // closings come first, the inner one first; openings then, the outer one first.
    let mut edits: Vec<(usize, u8, usize, &str, usize)> = Vec::with_capacity(found.list.len() * 3);
    for (start, end, rewrite) in found.list {
        let outer_first = usize::MAX - (end - start);
        match rewrite {
            Rewrite::Wrap => edits.push((start, 2, outer_first, BOUNDED_OPEN, 0)),
            Rewrite::Call { operator } => {
                edits.push((start, 2, outer_first, MULTIPLY_OPEN, 0));
                edits.push((operator, 1, 0, ",", 1));
            }
        }
        edits.push((end, 0, end - start, ")", 0));
    }
    edits.sort_by_key(|&(at, order, rank, _, _)| (at, order, rank));
    let mut out = String::with_capacity(source.len() + edits.len() * MULTIPLY_OPEN.len());
    let mut done = 0;
    for (at, _, _, text, replaced) in edits {
        // Spans that overlap without nesting would be minijinja's bug: then no rewrite.
        let Some(between) = source.get(done..at) else {
            return source.to_owned();
        };
        out.push_str(between);
        out.push_str(text);
        done = at + replaced;
    }
    out.push_str(source.get(done..).unwrap_or_default());
    out
}

/// The value of an operator expression, or an error when it is past the render's limits.
pub(super) fn bounded(value: Value) -> Result<Value, Error> {
    if let Some(text) = value.as_str() {
        bounded_len(text.len(), 0)?;
    } else if matches!(value.kind(), ValueKind::Seq | ValueKind::Iterable) {
        bounded_len(0, value.len().unwrap_or(0))?;
    }
    Ok(value)
}

/// `a * b`, refused before it is built when it would be a string past the render's text
/// limit or a list past [`MAX_ITEMS`]; minijinja computes it (numbers, and its own errors).
pub(super) fn multiply(a: Value, b: Value) -> Result<Value, Error> {
    let (item, count) = if a.kind() == ValueKind::Number {
        (&b, &a)
    } else {
        (&a, &b)
    };
    if let Ok(n) = usize::try_from(count.clone()) {
        if let Some(text) = item.as_str() {
            bounded_len(text.len().saturating_mul(n), 0)?;
        } else if matches!(item.kind(), ValueKind::Seq | ValueKind::Iterable) {
            bounded_len(0, item.len().unwrap_or(0).saturating_mul(n))?;
        }
    }
    // A small environment of its own: the template's runs this function.
    static OPERATOR: std::sync::LazyLock<minijinja::Environment<'static>> =
        std::sync::LazyLock::new(minijinja::Environment::new);
    OPERATOR
        .compile_expression("a * b")?
        .eval(minijinja::context! { a, b })
}

fn bounded_len(bytes: usize, items: usize) -> Result<(), Error> {
    if bytes > text_cap() {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "an operator's result would be a string of {}, over the {} this conversation allows",
                mib(bytes),
                mib(text_cap())
            ),
        ));
    }
    if items > MAX_ITEMS {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("an operator's result would be a list of over {MAX_ITEMS} items"),
        ));
    }
    Ok(())
}

/// The operator expressions of a template, with its source to find the operators in.
struct Found<'s> {
    source: &'s str,
    list: Vec<(usize, usize, Rewrite)>,
}

impl Found<'_> {
    fn push(&mut self, start: usize, end: usize, rewrite: Rewrite) {
        // A span outside the source would be minijinja's bug; the expression is then left as
        // it is rather than the template cut wrongly (`is_char_boundary` is false past the end).
        if start < end && self.source.is_char_boundary(start) && self.source.is_char_boundary(end) {
            self.list.push((start, end, rewrite));
        }
    }
}

fn stmts(body: &[Stmt<'_>], found: &mut Found<'_>) {
    for s in body {
        stmt(s, found);
    }
}

fn stmt(s: &Stmt<'_>, found: &mut Found<'_>) {
    match s {
        Stmt::Template(t) => stmts(&t.children, found),
        Stmt::EmitExpr(e) => expr(&e.expr, found),
        Stmt::EmitRaw(_) | Stmt::Continue(_) | Stmt::Break(_) => {}
        Stmt::ForLoop(f) => {
            expr(&f.iter, found);
            if let Some(filter) = &f.filter_expr {
                expr(filter, found);
            }
            stmts(&f.body, found);
            stmts(&f.else_body, found);
        }
        Stmt::IfCond(i) => {
            expr(&i.expr, found);
            stmts(&i.true_body, found);
            stmts(&i.false_body, found);
        }
        Stmt::WithBlock(w) => {
            for (_, value) in &w.assignments {
                expr(value, found);
            }
            stmts(&w.body, found);
        }
        Stmt::Set(set) => expr(&set.expr, found),
        Stmt::SetBlock(set) => {
            if let Some(filter) = &set.filter {
                expr(filter, found);
            }
            stmts(&set.body, found);
        }
        Stmt::AutoEscape(a) => {
            expr(&a.enabled, found);
            stmts(&a.body, found);
        }
        Stmt::FilterBlock(f) => {
            expr(&f.filter, found);
            stmts(&f.body, found);
        }
        Stmt::Block(b) => stmts(&b.body, found),
        Stmt::Import(i) => expr(&i.expr, found),
        Stmt::FromImport(i) => expr(&i.expr, found),
        Stmt::Extends(e) => expr(&e.name, found),
        Stmt::Include(i) => expr(&i.name, found),
        Stmt::Macro(m) => {
            for default in &m.defaults {
                expr(default, found);
            }
            stmts(&m.body, found);
        }
        Stmt::CallBlock(c) => {
            expr(&c.call.expr, found);
            args(&c.call.args, found);
            stmts(&c.macro_decl.body, found);
        }
        Stmt::Do(d) => {
            expr(&d.call.expr, found);
            args(&d.call.args, found);
        }
    }
}

fn args(call_args: &[CallArg<'_>], found: &mut Found<'_>) {
    for arg in call_args {
        match arg {
            CallArg::Pos(e)
            | CallArg::Kwarg(_, e)
            | CallArg::PosSplat(e)
            | CallArg::KwargSplat(e) => expr(e, found),
        }
    }
}

fn expr(e: &Expr<'_>, found: &mut Found<'_>) {
    match e {
        Expr::Var(_) | Expr::Const(_) => {}
        Expr::Slice(s) => {
            expr(&s.expr, found);
            for part in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                expr(part, found);
            }
        }
        Expr::UnaryOp(u) => expr(&u.expr, found),
        Expr::BinOp(b) => {
            let span = b.span();
            let (start, end) = (span.start_offset as usize, span.end_offset as usize);
            match b.op {
                BinOpKind::Add | BinOpKind::Concat => found.push(start, end, Rewrite::Wrap),
                BinOpKind::Mul => {
                    // Between the operands: the `*`, spaces and parentheses.
                    let from = b.left.span().end_offset as usize;
                    let to = b.right.span().start_offset as usize;
                    let operator = found
                        .source
                        .get(from..to)
                        .and_then(|between| between.find('*'))
                        .map(|at| from + at);
                    match operator {
                        Some(operator) => found.push(start, end, Rewrite::Call { operator }),
                        None => found.push(start, end, Rewrite::Wrap),
                    }
                }
                _ => {}
            }
            expr(&b.left, found);
            expr(&b.right, found);
        }
        Expr::Compare(c) => {
            expr(&c.expr, found);
            for op in &c.ops {
                expr(&op.expr, found);
            }
        }
        Expr::IfExpr(i) => {
            expr(&i.test_expr, found);
            expr(&i.true_expr, found);
            if let Some(f) = &i.false_expr {
                expr(f, found);
            }
        }
        Expr::Filter(f) => {
            if let Some(inner) = &f.expr {
                expr(inner, found);
            }
            args(&f.args, found);
        }
        Expr::Test(t) => {
            expr(&t.expr, found);
            args(&t.args, found);
        }
        Expr::GetAttr(g) => expr(&g.expr, found),
        Expr::GetItem(g) => {
            expr(&g.expr, found);
            expr(&g.subscript_expr, found);
        }
        Expr::Call(c) => {
            expr(&c.expr, found);
            args(&c.args, found);
        }
        Expr::List(l) => {
            for item in &l.items {
                expr(item, found);
            }
        }
        Expr::Map(m) => {
            for item in m.keys.iter().chain(&m.values) {
                expr(item, found);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(source: &str) -> String {
        bound_operators(
            source,
            WhitespaceConfig {
                keep_trailing_newline: false,
                lstrip_blocks: true,
                trim_blocks: true,
            },
        )
    }

    #[test]
    fn each_operator_expression_is_wrapped_whole() {
        let (b, m) = (BOUNDED, MULTIPLY);
        for (source, expected) in [
            ("{{ a ~ b }}", format!("{{{{ {b}(a ~ b) }}}}")),
            ("{{ a ~ b ~ c }}", format!("{{{{ {b}({b}(a ~ b) ~ c) }}}}")),
            (
                "{{ (a + 1) * 2 }}",
                format!("{{{{ {m}(({b}(a + 1)) , 2) }}}}"),
            ),
            ("{{ x|f(a * 2) }}", format!("{{{{ x|f({m}(a , 2)) }}}}")),
            (
                "{{ a * b * -c }}",
                format!("{{{{ {m}({m}(a , b) , -c) }}}}"),
            ),
            ("{{ a ** 2 * 3 }}", format!("{{{{ {m}(a ** 2 , 3) }}}}")),
            (
                "{% set ns.s = ns.s ~ m['content'] %}",
                format!("{{% set ns.s = {b}(ns.s ~ m['content']) %}}"),
            ),
            ("{{ a - b // 2 }}", "{{ a - b // 2 }}".to_owned()),
            (
                "text {# a ~ b #} {{ 'a + b' }}",
                "text {# a ~ b #} {{ 'a + b' }}".to_owned(),
            ),
            // Not a template minijinja parses: left for the compiler to report.
            ("{{ a ~ }}", "{{ a ~ }}".to_owned()),
        ] {
            assert_eq!(rewrite(source), expected, "{source}");
        }
    }
}
