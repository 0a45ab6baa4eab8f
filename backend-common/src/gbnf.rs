//! GBNF, llama.cpp's grammar format, as the constrained-decoding paths write it.

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
    fn literals_are_escaped() {
        assert_eq!(literal(""), None);
        assert_eq!(
            literal("<tool_call>\n\"a\\b\"").as_deref(),
            Some(r#""<tool_call>\n\"a\\b\"""#)
        );
    }
}
