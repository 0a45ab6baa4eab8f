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

/// Finds the earliest marker in `input` (the longest one on a tie); see [`Markers::scan`].
///
/// For marker lists used once; lists searched for every piece are kept as [`Markers`] or
/// [`MarkerList`] so that their first bytes are worked out once.
pub(crate) fn scan(input: &str, markers: &[&str], end: End) -> Scan {
    Markers::new(markers).scan(input, end)
}

/// A set of byte values, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ByteSet([u64; 4]);

impl ByteSet {
    /// The first bytes of `markers`; `const` so that fixed marker sets are built at compile time.
    const fn of_first_bytes(markers: &[&str]) -> ByteSet {
        let mut words = [0u64; 4];
        let mut i = 0;
        while i < markers.len() {
            if let Some(&first) = markers[i].as_bytes().first() {
                words[(first >> 6) as usize] |= 1 << (first & 63);
            }
            i += 1;
        }
        ByteSet(words)
    }

    fn contains(self, byte: u8) -> bool {
        self.0[usize::from(byte >> 6)] & (1 << (byte & 63)) != 0
    }

    fn is_empty(self) -> bool {
        self.0 == [0; 4]
    }
}

/// Markers searched together, with the set of their first bytes worked out in advance: a piece
/// without any of those bytes is cleared with one test per byte.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Markers<'a> {
    list: &'a [&'a str],
    firsts: ByteSet,
    /// The first byte when all markers share it (the usual `<`): one comparison per byte.
    only_first: Option<u8>,
}

impl<'a> Markers<'a> {
    pub(crate) const fn new(list: &'a [&'a str]) -> Markers<'a> {
        Markers {
            list,
            firsts: ByteSet::of_first_bytes(list),
            only_first: only_first_byte(list),
        }
    }

    /// The markers, indexed as in [`Scan::Found`].
    pub(crate) fn list(&self) -> &'a [&'a str] {
        self.list
    }

    /// Finds the earliest marker in `input` (the longest one on a tie).
    ///
    /// While `end` allows more text, a suffix that is a proper prefix of some marker is reported
    /// as [`Scan::Partial`] when it starts at or before the first full match.
    ///
    /// Only positions holding the first byte of some marker are examined, so text without such a
    /// byte costs one pass and nothing else: a test per byte on a short piece, a `memchr` on long
    /// input.
    pub(crate) fn scan(&self, input: &str, end: End) -> Scan {
        if self.firsts.is_empty() {
            return Scan::Clear;
        }
        let bytes = input.as_bytes();
        if bytes.len() < SHORT_INPUT {
            let mut from = 0;
            while let Some(offset) = self.next_first(&bytes[from..]) {
                let at = from + offset;
                if let Some(scan) = self.scan_at(&bytes[at..], at, end) {
                    return scan;
                }
                from = at + 1;
            }
            return Scan::Clear;
        }
        let mut candidates = Candidates::new(input, self.firsts);
        while let Some(at) = candidates.next() {
            if let Some(scan) = self.scan_at(&bytes[at..], at, end) {
                return scan;
            }
        }
        Scan::Clear
    }

    /// The offset of the first byte of `bytes` that is some marker's first byte.
    fn next_first(&self, bytes: &[u8]) -> Option<usize> {
        match self.only_first {
            Some(first) => bytes.iter().position(|&b| b == first),
            None => bytes.iter().position(|&b| self.firsts.contains(b)),
        }
    }

    /// What starts at `at`, the start of `tail`: a cut marker (held back while more text may
    /// come, even when a shorter marker matches there), the longest whole marker, or nothing.
    fn scan_at(&self, tail: &[u8], at: usize, end: End) -> Option<Scan> {
        if end.may_continue_marker()
            && self
                .list
                .iter()
                .any(|m| m.len() > tail.len() && m.as_bytes().starts_with(tail))
        {
            return Some(Scan::Partial { at });
        }
        let mut best: Option<&str> = None;
        let mut found = None;
        for (index, marker) in self.list.iter().enumerate() {
            let longer = best.is_none_or(|b| marker.len() > b.len());
            if longer && !marker.is_empty() && tail.starts_with(marker.as_bytes()) {
                best = Some(marker);
                found = Some(Scan::Found { at, marker: index });
            }
        }
        found
    }
}

/// A marker list built at run time, owning what [`Markers`] borrows.
#[derive(Debug, Clone)]
pub(crate) struct MarkerList {
    list: Vec<&'static str>,
    firsts: ByteSet,
    only_first: Option<u8>,
}

impl MarkerList {
    /// The markers as a [`Markers`] to search with.
    pub(crate) fn markers(&self) -> Markers<'_> {
        Markers {
            list: &self.list,
            firsts: self.firsts,
            only_first: self.only_first,
        }
    }
}

impl FromIterator<&'static str> for MarkerList {
    fn from_iter<I: IntoIterator<Item = &'static str>>(iter: I) -> MarkerList {
        let list: Vec<&'static str> = iter.into_iter().collect();
        MarkerList {
            firsts: ByteSet::of_first_bytes(&list),
            only_first: only_first_byte(&list),
            list,
        }
    }
}

/// The first byte shared by all non-empty markers, if there is exactly one.
const fn only_first_byte(markers: &[&str]) -> Option<u8> {
    let mut only = None;
    let mut i = 0;
    while i < markers.len() {
        if let Some(&first) = markers[i].as_bytes().first() {
            match only {
                Some(seen) if seen != first => return None,
                _ => only = Some(first),
            }
        }
        i += 1;
    }
    only
}

/// Inputs shorter than this are searched byte by byte; longer ones with `memchr` (through
/// [`Candidates`]), whose set-up costs more than it saves on a few bytes.
const SHORT_INPUT: usize = 64;

/// Most distinct first bytes searched with one `memchr` each; more fall back to a test per byte.
const MAX_MEMCHR_BYTES: usize = 4;

/// The positions of a long `input`, in order, that hold the first byte of some marker: the only
/// places where a marker, or a cut one, can start.
///
/// A marker is a `str`, so its first byte is never a UTF-8 continuation byte and every position
/// found is a char boundary.
struct Candidates<'a> {
    input: &'a str,
    firsts: ByteSet,
    /// The distinct first bytes when they are few and all ASCII, so that `str::find(char)` (a
    /// `memchr`) can look for each; empty otherwise.
    ascii: [u8; MAX_MEMCHR_BYTES],
    ascii_len: usize,
    from: usize,
}

impl<'a> Candidates<'a> {
    fn new(input: &'a str, firsts: ByteSet) -> Candidates<'a> {
        let mut ascii = [0u8; MAX_MEMCHR_BYTES];
        let mut ascii_len = 0;
        let mut few_ascii = true;
        // The members of the set, from its bits; ASCII bytes live in the first two words.
        for (word, mut bits) in firsts.0.into_iter().enumerate() {
            while bits != 0 {
                let bit = bits.trailing_zeros() as u8;
                bits &= bits - 1;
                if word >= 2 || ascii_len == MAX_MEMCHR_BYTES {
                    few_ascii = false;
                } else {
                    ascii[ascii_len] = if word == 0 { bit } else { 64 + bit };
                    ascii_len += 1;
                }
            }
        }
        if !few_ascii {
            ascii_len = 0;
        }
        Candidates {
            input,
            firsts,
            ascii,
            ascii_len,
            from: 0,
        }
    }

    /// The next candidate position.
    fn next(&mut self) -> Option<usize> {
        let at = if self.ascii_len == 0 {
            let bytes = self.input.as_bytes().get(self.from..)?;
            self.from + bytes.iter().position(|&b| self.firsts.contains(b))?
        } else {
            // `from` follows an ASCII byte, so it is a char boundary. Each byte is looked for
            // only before the earliest one found so far: the work is bounded by the distance to
            // the next candidate.
            let rest = self.input.get(self.from..)?;
            let mut best: Option<usize> = None;
            for &byte in &self.ascii[..self.ascii_len] {
                let window = &rest[..best.unwrap_or(rest.len())];
                if let Some(at) = window.find(char::from(byte)) {
                    best = Some(at);
                }
            }
            self.from + best?
        };
        self.from = at + 1;
        Some(at)
    }
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

    #[test]
    fn long_input_is_searched_by_first_bytes() {
        let markers = ["<ab>", "```", "\n\n"];
        let text = format!("{}`x\n<a{}<ab>", "y".repeat(100), "z".repeat(100));
        let at = text.len() - 4;
        assert_eq!(
            scan(&text, &markers, End::Open),
            Scan::Found { at, marker: 0 }
        );
        let cut = format!("{}<a", "y".repeat(100));
        assert_eq!(scan(&cut, &markers, End::Open), Scan::Partial { at: 100 });
        assert_eq!(scan(&cut, &markers, End::Eof), Scan::Clear);
    }

    #[test]
    fn long_input_with_a_non_ascii_first_byte() {
        let markers = ["é!", "<a>"];
        let text = format!("{}<a>", "é".repeat(50));
        assert_eq!(
            scan(&text, &markers, End::Open),
            Scan::Found { at: 100, marker: 1 }
        );
        let text = format!("{}é!", "x".repeat(70));
        assert_eq!(
            scan(&text, &markers, End::Open),
            Scan::Found { at: 70, marker: 0 }
        );
    }
}
