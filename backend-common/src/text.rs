//! Turning token bytes into text as they arrive.
//!
//! A token's bytes may end in the middle of a multi-byte character (byte-level BPE splits
//! emoji and CJK characters); such a tail is held until the next token completes it.
//! Bytes that can never become valid UTF-8 are replaced with U+FFFD.

/// Incremental UTF-8 decoder for token pieces.
#[derive(Debug, Default)]
pub struct Utf8Assembler {
    pending: Vec<u8>,
}

impl Utf8Assembler {
    /// Appends bytes and returns the text that is complete so far.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        None => {
                            // An incomplete character at the end: wait for more bytes.
                            self.pending.drain(..valid);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: an incomplete trailing character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_characters_are_joined() {
        let bytes = "héllo 🙂 世界".as_bytes();
        for split in 0..=bytes.len() {
            let mut a = Utf8Assembler::default();
            let mut s = a.push(&bytes[..split]);
            s += &a.push(&bytes[split..]);
            s += &a.finish();
            assert_eq!(s, "héllo 🙂 世界", "split at {split}");
        }
    }

    #[test]
    fn byte_at_a_time() {
        let mut a = Utf8Assembler::default();
        let s: String = "🙂x".bytes().map(|b| a.push(&[b])).collect();
        assert_eq!(s, "🙂x");
    }

    #[test]
    fn invalid_bytes_become_replacement() {
        let mut a = Utf8Assembler::default();
        assert_eq!(a.push(&[b'a', 0xff, b'b']), "a\u{fffd}b");
        assert_eq!(a.push(&[0xe4, 0xb8]), "");
        assert_eq!(a.finish(), "\u{fffd}");
    }
}
