//! Marker search that is safe on streamed text: a marker may be cut at the end of the input, in
//! which case the possible start is reported so that the caller holds it back.

use super::stream::End;

/// Result of searching for the first of several markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// `markers[marker]` starts at byte `at`.
    Found { at: usize, marker: usize },
    /// The input from byte `at` on may be the beginning of a marker: hold it back.
    Partial { at: usize },
    /// No marker starts in the input.
    Clear,
}

/// Finds the earliest marker in `input` (the longest one on a tie).
///
/// While `end` allows more text, a suffix that is a proper prefix of some marker is reported as
/// [`Scan::Partial`] when it starts at or before the first full match.
pub(crate) fn scan(input: &str, markers: &[&str], end: End) -> Scan {
    // Fast path for the common case, text without any marker's first byte: nothing can match or
    // begin in it.
    let bytes = input.as_bytes();
    if !markers
        .iter()
        .filter_map(|m| m.as_bytes().first())
        .any(|first| bytes.contains(first))
    {
        return Scan::Clear;
    }
    let mut found: Option<(usize, usize)> = None;
    for (index, marker) in markers.iter().enumerate() {
        if marker.is_empty() {
            continue;
        }
        // Only the part that could still beat the current best needs searching.
        let limit = match found {
            Some((at, _)) => (at + marker.len()).min(input.len()),
            None => input.len(),
        };
        let mut window_end = limit;
        while !input.is_char_boundary(window_end) {
            window_end += 1;
        }
        if let Some(at) = input[..window_end].find(marker) {
            let better = match found {
                None => true,
                Some((best_at, best)) => {
                    at < best_at || (at == best_at && marker.len() > markers[best].len())
                }
            };
            if better {
                found = Some((at, index));
            }
        }
    }
    let partial = if end.may_continue_marker() {
        partial_start(input, markers)
    } else {
        None
    };
    match (found, partial) {
        (Some((at, _)), Some(p)) if p <= at => Scan::Partial { at: p },
        (Some((at, marker)), _) => Scan::Found { at, marker },
        (None, Some(p)) => Scan::Partial { at: p },
        (None, None) => Scan::Clear,
    }
}

/// Earliest byte from which the rest of `input` is a proper prefix of some marker.
fn partial_start(input: &str, markers: &[&str]) -> Option<usize> {
    let longest = markers.iter().map(|m| m.len()).max()?;
    let from = input.len().saturating_sub(longest.saturating_sub(1));
    (from..input.len())
        .filter(|&p| input.is_char_boundary(p))
        .find(|&p| {
            let tail = &input[p..];
            markers
                .iter()
                .any(|m| m.len() > tail.len() && m.starts_with(tail))
        })
}

/// How `input` relates to an expected literal at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prefix {
    /// The input starts with the literal.
    Yes,
    /// The input is a proper prefix of the literal and more text may complete it.
    Undecided,
    /// The input does not start with the literal.
    No,
}

/// Checks whether `input` starts with `literal`, holding back while it cannot yet tell.
///
/// Empty input is undecided until the end: even at a special-token boundary the literal may
/// begin with the next piece.
pub(crate) fn starts_with(input: &str, literal: &str, end: End) -> Prefix {
    if input.is_empty() {
        return if end.is_eof() {
            Prefix::No
        } else {
            Prefix::Undecided
        };
    }
    if input.starts_with(literal) {
        Prefix::Yes
    } else if literal.starts_with(input) && end.may_continue_marker() {
        Prefix::Undecided
    } else {
        Prefix::No
    }
}

/// Length of the longest prefix of `text` made of chars accepted by `ok`, such that a name that
/// already has `so_far` bytes stays within `max` bytes.
///
/// Names are cut at the first bad char (not at a chunk edge) so that the result does not depend
/// on how the text was split.
pub(crate) fn name_prefix(
    text: &str,
    so_far: usize,
    max: usize,
    ok: impl Fn(char) -> bool,
) -> usize {
    let mut len = 0;
    for c in text.chars() {
        if !ok(c) || so_far + len + c.len_utf8() > max {
            break;
        }
        len += c.len_utf8();
    }
    len
}

/// Length of the leading whitespace of `input`.
pub(crate) fn leading_ws(input: &str) -> usize {
    input.len() - input.trim_start().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_earliest_marker() {
        let scan = scan("ab<x>cd<y>", &["<y>", "<x>"], End::Open);
        assert_eq!(scan, Scan::Found { at: 2, marker: 1 });
    }

    #[test]
    fn holds_back_a_cut_marker_only_while_text_may_follow() {
        assert_eq!(
            scan("hello <tool_", &["<tool_call>"], End::Open),
            Scan::Partial { at: 6 }
        );
        assert_eq!(
            scan("hello <tool_", &["<tool_call>"], End::Boundary),
            Scan::Clear
        );
        assert_eq!(
            scan("hello <tool_", &["<tool_call>"], End::Eof),
            Scan::Clear
        );
    }

    #[test]
    fn prefers_a_longer_marker_that_may_still_complete() {
        assert_eq!(
            scan("x<tool", &["<tool", "<tool_call>"], End::Open),
            Scan::Partial { at: 1 }
        );
        assert_eq!(
            scan("x<tool", &["<tool", "<tool_call>"], End::Eof),
            Scan::Found { at: 1, marker: 0 }
        );
    }

    #[test]
    fn respects_char_boundaries() {
        assert_eq!(
            scan("é<｜tool", &["<｜tool▁calls▁begin｜>"], End::Open),
            Scan::Partial { at: 2 }
        );
    }
}
