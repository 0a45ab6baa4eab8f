//! Stop sequences (`StopPrompts`), matched across token boundaries.
//!
//! Text that could be the start of a stop sequence is held back until the next text
//! either completes the sequence (then generation stops and the sequence is never emitted)
//! or rules it out (then the held text is released).

/// Result of feeding text to a [`StopMatcher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopScan {
    /// Text that is safe to emit now.
    pub emit: String,
    /// Whether a stop sequence was found; nothing after it is emitted.
    pub stopped: bool,
}

/// Finds the first occurrence of any stop sequence in streamed text.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// A matcher for these sequences; empty strings are ignored.
    pub fn new<S: AsRef<str>>(stops: &[S]) -> Self {
        StopMatcher {
            stops: stops
                .iter()
                .map(|s| s.as_ref().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Feeds new text.
    pub fn push(&mut self, text: &str) -> StopScan {
        if self.stopped {
            return StopScan {
                emit: String::new(),
                stopped: true,
            };
        }
        self.held.push_str(text);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            self.stopped = true;
            let emit = self.held[..at].to_string();
            self.held.clear();
            return StopScan {
                emit,
                stopped: true,
            };
        }
        let keep = self.partial_suffix_len();
        let cut = self.held.len() - keep;
        let emit = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopScan {
            emit,
            stopped: false,
        }
    }

    /// Ends the stream: held text that never became a stop sequence is released.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of the held text that is a proper prefix of a stop
    /// sequence, on a char boundary.
    fn partial_suffix_len(&self) -> usize {
        let held = self.held.as_str();
        held.char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let suffix = &held[i..];
                self.stops.iter().any(|s| s.starts_with(suffix))
            })
            .map_or(0, |i| held.len() - i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], chunks: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops);
        let mut out = String::new();
        for c in chunks {
            let s = m.push(c);
            out += &s.emit;
            if s.stopped {
                return (out, true);
            }
        }
        out += &m.finish();
        (out, false)
    }

    #[test]
    fn stop_inside_one_chunk() {
        assert_eq!(run(&["\n\n"], &["ab\n\ncd"]), ("ab".into(), true));
    }

    #[test]
    fn stop_across_chunks_is_never_emitted() {
        assert_eq!(
            run(&["<|end|>"], &["hi <|", "en", "d|> more"]),
            ("hi ".into(), true)
        );
    }

    #[test]
    fn false_start_is_released() {
        assert_eq!(run(&["<|end|>"], &["a <|", "x"]), ("a <|x".into(), false));
        assert_eq!(run(&["STOP"], &["ST"]), ("ST".into(), false));
    }

    #[test]
    fn held_text_is_exactly_the_ambiguous_part() {
        let mut m = StopMatcher::new(&["abc"]);
        assert_eq!(m.push("xxab").emit, "xx");
        assert_eq!(m.push("d").emit, "abd");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(
            run(&["world", "lo"], &["hello world"]),
            ("hel".into(), true)
        );
    }

    #[test]
    fn every_split_point_gives_the_same_text() {
        let text = "Paris is the capital.\nUser: next";
        for i in 0..=text.len() {
            if text.is_char_boundary(i) {
                assert_eq!(
                    run(&["\nUser:"], &[&text[..i], &text[i..]]),
                    ("Paris is the capital.".into(), true)
                );
            }
        }
    }
}
