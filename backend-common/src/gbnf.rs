//! GBNF, llama.cpp's grammar format: literals as the constrained-decoding paths write them,
//! and the checks a user's grammar passes before an engine parses it.

/// Deepest nesting of parenthesised groups accepted. llama.cpp's GBNF parser recurses once per
/// level on the calling thread's stack, which a few thousand levels overflow (the process
/// aborts); no real grammar comes near this.
pub const MAX_GROUP_DEPTH: usize = 128;

/// Where a grammar nests groups deeper than [`MAX_GROUP_DEPTH`]: the 1-based line and column
/// of the first `(` over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "groups nested more than {MAX_GROUP_DEPTH} deep at line {line}, column {column}; flatten them into named rules"
)]
pub struct TooDeep {
    /// Line of the `(` that goes over the limit.
    pub line: usize,
    /// Column (in characters) of that `(`.
    pub column: usize,
}

/// Checks that `grammar` nests groups at most [`MAX_GROUP_DEPTH`] deep. Parentheses inside
/// string literals, character classes and comments do not count.
pub fn check_group_depth(grammar: &str) -> Result<(), TooDeep> {
    #[derive(Clone, Copy, PartialEq)]
    enum In {
        Rules,
        Literal,
        Class,
        Comment,
    }
    let mut state = In::Rules;
    let mut escaped = false;
    let mut depth = 0usize;
    let (mut line, mut column) = (1, 0);
    for c in grammar.chars() {
        column += 1;
        if c == '\n' {
            (line, column) = (line + 1, 0);
        }
        if escaped {
            escaped = false;
            continue;
        }
        state = match (state, c) {
            (In::Literal | In::Class, '\\') => {
                escaped = true;
                state
            }
            (In::Literal, '"') | (In::Class, ']') => In::Rules,
            (In::Comment, '\n') => In::Rules,
            (In::Rules, '"') => In::Literal,
            (In::Rules, '[') => In::Class,
            (In::Rules, '#') => In::Comment,
            (In::Rules, '(') => {
                depth += 1;
                if depth > MAX_GROUP_DEPTH {
                    return Err(TooDeep { line, column });
                }
                In::Rules
            }
            (In::Rules, ')') => {
                depth = depth.saturating_sub(1);
                In::Rules
            }
            (state, _) => state,
        };
    }
    Ok(())
}

/// `text` as a GBNF string literal; `None` for empty text (GBNF has no empty literal).
pub fn literal(text: &str) -> Option<String> {
    if text.is_empty() {
        return None;
    }
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_depth_is_bounded_and_located() {
        let nested = |n: usize| format!("root ::= {}\"a\"{}", "(".repeat(n), ")".repeat(n));
        assert_eq!(check_group_depth(&nested(MAX_GROUP_DEPTH)), Ok(()));
        assert_eq!(
            check_group_depth(&format!("# a comment\n{}", nested(5000))),
            Err(TooDeep {
                line: 2,
                column: "root ::= ".len() + MAX_GROUP_DEPTH + 1
            })
        );
        // Parentheses in literals, classes and comments are text, not groups.
        let text = "(".repeat(MAX_GROUP_DEPTH + 1);
        for quiet in [
            format!("root ::= \"{text}\\\"{text}\""),
            format!("root ::= [{text}\\]{text}]"),
            format!("root ::= \"a\" # {text}"),
        ] {
            assert_eq!(check_group_depth(&quiet), Ok(()), "{quiet}");
        }
    }

    #[test]
    fn literals_are_escaped() {
        assert_eq!(literal(""), None);
        assert_eq!(
            literal("<tool_call>\n\"a\\b\"").as_deref(),
            Some(r#""<tool_call>\n\"a\\b\"""#)
        );
    }
}
