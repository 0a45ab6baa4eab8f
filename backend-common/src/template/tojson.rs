//! The `tojson` filter as transformers defines it: Python's
//! `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
//!
//! minijinja's own `tojson` sorts keys, writes compact JSON and escapes HTML; models were
//! trained on Python's output (insertion order, `", "` and `": "`), so we reproduce it.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Rest, ValueKind, ValueOrKwargs};
use minijinja::{Error, ErrorKind, Value};

/// Deepest nesting we serialise; Python stops with a RecursionError at about this depth.
const MAX_DEPTH: usize = 512;

/// How to write JSON, mirroring `json.dumps`' keyword arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DumpOptions {
    ensure_ascii: bool,
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
    sort_keys: bool,
}

impl Default for DumpOptions {
    fn default() -> Self {
        DumpOptions {
            ensure_ascii: false,
            indent: None,
            item_separator: ", ".to_owned(),
            key_separator: ": ".to_owned(),
            sort_keys: false,
        }
    }
}

/// The `tojson` filter: `x|tojson(ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
pub(crate) fn tojson_filter(value: &Value, args: Rest<ValueOrKwargs>) -> Result<Value, Error> {
    let options = parse_options(&args.into_values())?;
    dumps(value, &options).map(Value::from)
}

/// Reads positional and keyword arguments in the order of the Python signature.
fn parse_options(args: &[Value]) -> Result<DumpOptions, Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    let mut slots: [Option<Value>; 4] = Default::default();
    let mut positional = 0;
    for arg in args {
        if arg.is_kwargs() {
            let kwargs = Kwargs::try_from(arg.clone())?;
            for (slot, name) in slots.iter_mut().zip(NAMES) {
                if let Some(value) = kwargs.get::<Option<Value>>(name)? {
                    if slot.is_some() {
                        return Err(Error::new(
                            ErrorKind::TooManyArguments,
                            format!("tojson() got multiple values for argument '{name}'"),
                        ));
                    }
                    *slot = Some(value);
                }
            }
            kwargs.assert_all_used()?;
        } else {
            let slot = slots.get_mut(positional).ok_or_else(|| {
                Error::new(
                    ErrorKind::TooManyArguments,
                    "tojson() takes at most 4 arguments",
                )
            })?;
            *slot = Some(arg.clone());
            positional += 1;
        }
    }
    let [ensure_ascii, indent, separators, sort_keys] = slots;
    let mut options = DumpOptions {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
        ..DumpOptions::default()
    };
    options.indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(indent_string(&v)?),
    };
    if options.indent.is_some() {
        // json.dumps drops the space after commas when indenting, since lines end there.
        options.item_separator = ",".to_owned();
    }
    if let Some(separators) = separators.filter(|v| !v.is_none()) {
        let (item, key) = separator_pair(&separators)?;
        options.item_separator = item;
        options.key_separator = key;
    }
    Ok(options)
}

/// `indent` is either a string used as is or a number of spaces (0 or less: newlines only).
fn indent_string(value: &Value) -> Result<String, Error> {
    if let Some(text) = value.as_str() {
        return Ok(text.to_owned());
    }
    match value.as_i64() {
        Some(n) if value.is_integer() || value.kind() == ValueKind::Bool => {
            Ok(" ".repeat(usize::try_from(n).unwrap_or(0).min(1024)))
        }
        _ => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "tojson(): indent must be an int or a string, not {}",
                value.kind()
            ),
        )),
    }
}

fn separator_pair(value: &Value) -> Result<(String, String), Error> {
    let bad = || {
        Error::new(
            ErrorKind::InvalidOperation,
            "tojson(): separators must be a pair of strings such as (',', ':')",
        )
    };
    let items: Vec<Value> = value.try_iter().map_err(|_| bad())?.collect();
    match items.as_slice() {
        [item, key] => match (item.as_str(), key.as_str()) {
            (Some(item), Some(key)) => Ok((item.to_owned(), key.to_owned())),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// Serialises `value` exactly as Python's `json.dumps` would with these options.
pub(crate) fn dumps(value: &Value, options: &DumpOptions) -> Result<String, Error> {
    let mut out = String::new();
    write_value(&mut out, value, options, 0)?;
    Ok(out)
}

fn not_serializable(value: &Value) -> Error {
    let kind = match value.kind() {
        ValueKind::Undefined => "Undefined".to_owned(),
        ValueKind::Iterable => "generator".to_owned(),
        other => other.to_string(),
    };
    Error::new(
        ErrorKind::InvalidOperation,
        format!("Object of type {kind} is not JSON serializable"),
    )
}

fn write_value(
    out: &mut String,
    value: &Value,
    options: &DumpOptions,
    depth: usize,
) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson(): value is nested too deeply",
        ));
    }
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, value)?,
        ValueKind::String => write_string(
            out,
            value.as_str().unwrap_or_default(),
            options.ensure_ascii,
        ),
        ValueKind::Seq => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, ('[', ']'), items.len(), options, depth, |out, i| {
                items
                    .get(i)
                    .map_or(Ok(()), |item| write_value(out, item, options, depth + 1))
            })?;
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((key_string(&key)?, key, item));
            }
            if options.sort_keys {
                sort_entries(&mut entries)?;
            }
            write_container(out, ('{', '}'), entries.len(), options, depth, |out, i| {
                let Some((key, _, item)) = entries.get(i) else {
                    return Ok(());
                };
                write_string(out, key, options.ensure_ascii);
                out.push_str(&options.key_separator);
                write_value(out, item, options, depth + 1)
            })?;
        }
        _ => return Err(not_serializable(value)),
    }
    Ok(())
}

/// Writes `[...]`/`{...}` with Python's layout: inline without indent, one item a line with it.
fn write_container(
    out: &mut String,
    (open, close): (char, char),
    len: usize,
    options: &DumpOptions,
    depth: usize,
    mut write_item: impl FnMut(&mut String, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(indent) = &options.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
    };
    for i in 0..len {
        if i > 0 {
            out.push_str(&options.item_separator);
        }
        newline(out, depth + 1);
        write_item(out, i)?;
    }
    newline(out, depth);
    out.push(close);
    Ok(())
}

/// Python converts str, int, float, bool and None keys to strings and rejects the rest.
fn key_string(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
        ValueKind::None => Ok("null".to_owned()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_owned()),
        ValueKind::Number => {
            let mut text = String::new();
            write_number(&mut text, key)?;
            Ok(text)
        }
        other => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("keys must be str, int, float, bool or None, not {other}"),
        )),
    }
}

/// `sort_keys` compares the original keys, which Python can only do for one kind of key.
fn sort_entries(entries: &mut [(String, Value, Value)]) -> Result<(), Error> {
    let first_kind = entries.first().map(|(_, key, _)| key.kind());
    if entries
        .iter()
        .any(|(_, key, _)| Some(key.kind()) != first_kind)
    {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson(sort_keys=True): keys of different types cannot be compared",
        ));
    }
    entries.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(())
}

fn write_number(out: &mut String, value: &Value) -> Result<(), Error> {
    if value.is_integer() {
        let _ = write!(out, "{value}");
        return Ok(());
    }
    let float = f64::try_from(value.clone())?;
    out.push_str(&json_float(float));
    Ok(())
}

/// Python's float encoding in JSON: `repr`, except for the non-finite values.
fn json_float(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else {
        python_float_repr(value)
    }
}

/// Python's `repr(float)`: the shortest round-trip digits, in positional notation for
/// decimal exponents from -5 to 15 and in `1e+16` style outside that range.
pub(crate) fn python_float_repr(value: f64) -> String {
    if value.is_nan() {
        return "nan".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    // Rust's `{:e}` gives the same shortest round-trip digits as Python's repr.
    let scientific = format!("{value:e}");
    let (sign, unsigned) = match scientific.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", scientific.as_str()),
    };
    let (mantissa, exponent) = unsigned.split_once('e').unwrap_or((unsigned, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let point = exponent + 1; // value = 0.<digits> * 10^point
    let mut out = String::from(sign);
    if point <= -4 || point > 16 {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        let _ = write!(out, "e{exp_sign}{:02}", exponent.unsigned_abs());
    } else if point <= 0 {
        out.push_str("0.");
        out.push_str(&"0".repeat(point.unsigned_abs() as usize));
        out.push_str(&digits);
    } else {
        let point = point as usize;
        if point >= digits.len() {
            out.push_str(&digits);
            out.push_str(&"0".repeat(point - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..point]);
            out.push('.');
            out.push_str(&digits[point..]);
        }
    }
    out
}

/// Python's string escaping: `"`, `\\` and control characters; with `ensure_ascii`
/// also everything outside printable ASCII, as `\uXXXX` (surrogate pairs above U+FFFF).
fn write_string(out: &mut String, text: &str, ensure_ascii: bool) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::Environment;

    /// Renders `{{ value|tojson<args> }}` with our filter.
    fn render(expr: &str) -> String {
        let mut env = Environment::new();
        env.add_filter("tojson", tojson_filter);
        let data = Value::from_pairs(vec![
            ("name", Value::from("get_weather")),
            ("text", Value::from("é \"q\" <b>&'\n\t\u{1}\u{7f}😀")),
            (
                "list",
                Value::from(vec![
                    Value::from(1),
                    Value::from(2.5),
                    Value::from(()),
                    Value::from(true),
                ]),
            ),
            ("empty", Value::from(Vec::<Value>::new())),
            (
                "nested",
                Value::from_pairs(vec![("z", Value::from(1e16)), ("a", Value::from(1e-5))]),
            ),
        ]);
        env.render_str(expr, minijinja::context! { data => data })
            .unwrap_or_else(|e| format!("ERROR: {e}"))
    }

    // Expected strings come from Python 3.11: json.dumps(data, ensure_ascii=False, ...).
    #[test]
    fn default_matches_python() {
        assert_eq!(
            render("{{ data|tojson }}"),
            "{\"name\": \"get_weather\", \"text\": \"é \\\"q\\\" <b>&'\\n\\t\\u0001\u{7f}😀\", \
             \"list\": [1, 2.5, null, true], \"empty\": [], \"nested\": {\"z\": 1e+16, \"a\": 1e-05}}"
        );
    }

    #[test]
    fn indent_matches_python() {
        assert_eq!(
            render(
                "{{ data.nested|tojson(indent=2) }}|{{ data.list|tojson(indent=4) }}|{{ data.empty|tojson(indent=2) }}"
            ),
            "{\n  \"z\": 1e+16,\n  \"a\": 1e-05\n}|[\n    1,\n    2.5,\n    null,\n    true\n]|[]"
        );
        assert_eq!(
            render("{{ {'a': [1]}|tojson(indent=0) }}"),
            "{\n\"a\": [\n1\n]\n}"
        );
        assert_eq!(
            render("{{ {'a': 1}|tojson(indent='\t') }}"),
            "{\n\t\"a\": 1\n}"
        );
    }

    #[test]
    fn separators_sort_keys_and_ensure_ascii_match_python() {
        assert_eq!(
            render("{{ data.nested|tojson(separators=(',', ':'), sort_keys=true) }}"),
            "{\"a\":1e-05,\"z\":1e+16}"
        );
        assert_eq!(
            render("{{ data.text|tojson(ensure_ascii=true) }}"),
            "\"\\u00e9 \\\"q\\\" <b>&'\\n\\t\\u0001\\u007f\\ud83d\\ude00\""
        );
        assert_eq!(render("{{ 'é'|tojson(true) }}"), "\"\\u00e9\"");
    }

    #[test]
    fn unserializable_values_are_errors() {
        assert!(render("{{ missing|tojson }}").contains("Undefined is not JSON serializable"));
        assert!(render("{{ data|tojson(indent=[1]) }}").starts_with("ERROR"));
        assert!(render("{{ data|tojson(1, 2, 3, 4, 5) }}").starts_with("ERROR"));
        assert!(render("{{ data|tojson(bogus=1) }}").starts_with("ERROR"));
    }

    #[test]
    fn float_repr_matches_python() {
        // repr() of each float in Python 3.11.
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (0.75, "0.75"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123456789012345.6, "123456789012345.6"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e16, "1.2345e+16"),
            (1e100, "1e+100"),
            (-2.5e-300, "-2.5e-300"),
            (f64::MAX, "1.7976931348623157e+308"),
        ];
        for (value, expected) in cases {
            assert_eq!(python_float_repr(value), expected, "{value}");
        }
        assert_eq!(json_float(f64::NAN), "NaN");
        assert_eq!(json_float(f64::NEG_INFINITY), "-Infinity");
    }
}
