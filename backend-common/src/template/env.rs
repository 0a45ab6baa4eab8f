//! The minijinja environment, set up like transformers' `ImmutableSandboxedEnvironment`:
//! `trim_blocks` and `lstrip_blocks` on, trailing newline dropped, jinja2's lenient
//! undefined, loop controls, Python string/dict methods, and the globals transformers adds
//! (`raise_exception`, `strftime_now`) plus its `tojson`.

use std::fmt::Write as _;
use std::sync::Arc;

use chrono::NaiveDateTime;
use minijinja::syntax::SyntaxConfig;
use minijinja::value::ValueKind;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior, Value};

use super::tojson::{python_float_repr, tojson_filter};

/// Where `strftime_now` reads the time from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Clock {
    /// The local wall clock, as Python's `datetime.now()`.
    Local,
    /// A fixed instant, for reproducible renders.
    Fixed(NaiveDateTime),
}

/// Marks an error raised by the template's own `raise_exception(message)`.
#[derive(Debug)]
pub(crate) struct RaisedException(pub(crate) String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

/// Builds an environment with transformers' settings and globals.
pub(crate) fn new_environment(clock: Clock) -> Result<Environment<'static>, Error> {
    let mut env = Environment::new();
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()?,
    );
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(python_formatter);
    env.add_filter("tojson", tojson_filter);
    env.add_test("iterable", is_iterable);
    env.add_function("raise_exception", raise_exception);
    set_clock(&mut env, clock);
    Ok(env)
}

/// (Re)registers `strftime_now` to read `clock`.
pub(crate) fn set_clock(env: &mut Environment<'static>, clock: Clock) {
    let clock = Arc::new(clock);
    env.add_function("strftime_now", move |format: String| {
        strftime_now(*clock, &format)
    });
}

/// jinja2's `iterable` test is Python's `iter(x)` succeeding: true for strings,
/// containers and undefined, false for `none` (which minijinja would iterate as empty).
fn is_iterable(value: &Value) -> bool {
    matches!(
        value.kind(),
        ValueKind::Undefined
            | ValueKind::String
            | ValueKind::Bytes
            | ValueKind::Seq
            | ValueKind::Map
            | ValueKind::Iterable
    )
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone())
        .with_source(RaisedException(message)))
}

fn strftime_now(clock: Clock, format: &str) -> Result<Value, Error> {
    let now = match clock {
        Clock::Local => chrono::Local::now().naive_local(),
        Clock::Fixed(now) => now,
    };
    let mut out = String::new();
    // `write!` reports a bad format string as an error where `to_string()` would panic.
    write!(out, "{}", now.format(format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now(): invalid format string {format:?}"),
        )
    })?;
    Ok(Value::from(out))
}

/// Prints values as Python's `str()` does; minijinja already does for all but floats,
/// which Python writes as `1e+16` / `1e-05` outside positional range.
fn python_formatter(
    out: &mut minijinja::Output,
    state: &mut minijinja::State,
    value: &Value,
) -> Result<(), Error> {
    if value.kind() == ValueKind::Number
        && !value.is_integer()
        && let Ok(float) = f64::try_from(value.clone())
    {
        return out
            .write_str(&python_float_repr(float))
            .map_err(Error::from);
    }
    minijinja::escape_formatter(out, state, value)
}

/// Rewrites transformers' `{% generation %}...{% endgeneration %}` (which only marks
/// assistant tokens) to `{% with %}...{% endwith %}`: same output and whitespace control,
/// and like jinja2's call block the body gets its own scope.
pub(crate) fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let (before, tag) = rest.split_at(start);
        out.push_str(before);
        out.push_str("{%");
        let after_open = &tag[2..];
        let modifier = after_open
            .chars()
            .next()
            .filter(|c| *c == '-' || *c == '+')
            .map_or(0, char::len_utf8);
        let (modifier_text, body) = after_open.split_at(modifier);
        out.push_str(modifier_text);
        let trimmed = body.trim_start();
        out.push_str(&body[..body.len() - trimmed.len()]);
        let replaced = [("endgeneration", "endwith"), ("generation", "with")]
            .into_iter()
            .find_map(|(keyword, with)| {
                let tail = trimmed.strip_prefix(keyword)?;
                let closes = tail
                    .trim_start()
                    .trim_start_matches(['-', '+'])
                    .starts_with("%}");
                closes.then_some((with, tail))
            });
        rest = match replaced {
            Some((with, tail)) => {
                out.push_str(with);
                tail
            }
            None => trimmed,
        };
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_become_scoped_blocks() {
        assert_eq!(
            rewrite_generation_tags("a{%- generation -%}b{% endgeneration %}c{%+generation%}"),
            "a{%- with -%}b{% endwith %}c{%+with%}"
        );
        // Other tags and look-alike names are untouched.
        let other = "{% if generation_prompt %}{{ generation }}{% endif %}{% generations %}";
        assert_eq!(rewrite_generation_tags(other), other);
        assert_eq!(rewrite_generation_tags("{%"), "{%");
        assert_eq!(rewrite_generation_tags("{%-é"), "{%-é");
    }

    #[test]
    fn strftime_now_uses_the_clock_and_rejects_bad_formats() {
        let clock = Clock::Fixed("2025-07-26T10:30:00".parse().unwrap());
        assert_eq!(
            strftime_now(clock, "%d %b %Y").map(|v| v.to_string()).ok(),
            Some("26 Jul 2025".to_owned())
        );
        assert!(strftime_now(clock, "%Q").is_err());
    }

    #[test]
    fn raise_exception_carries_its_message() {
        let env = new_environment(Clock::Local).unwrap();
        let err = env
            .render_str("{{ raise_exception('no system role') }}", ())
            .err();
        let raised = err.as_ref().and_then(|e| {
            std::iter::successors(std::error::Error::source(e), |s| s.source())
                .find_map(|s| s.downcast_ref::<RaisedException>())
        });
        assert_eq!(raised.map(|r| r.0.as_str()), Some("no system role"));
    }

    #[test]
    fn environment_prints_like_python() {
        let env = new_environment(Clock::Local).unwrap();
        let out = env.render_str(
            "{% for x in [1, 2, 3] %}{% if x == 2 %}{% continue %}{% endif %}{{ x }}{% endfor %}\n\
             {{ none }} {{ true }} {{ 1e16 }} {{ 0.5 }} {{ {'a': 'b'} }}\n\
             {{ none is iterable }} {{ undefined is iterable }} {{ 'x' is iterable }} {{ 1 is iterable }}\n",
            (),
        );
        assert_eq!(
            out.ok().as_deref(),
            Some("13None True 1e+16 0.5 {'a': 'b'}\nFalse True True False")
        );
    }
}
