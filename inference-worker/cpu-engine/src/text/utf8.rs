//! Incremental detokenization: token pieces are raw bytes, and a multi-byte character can be
//! split across two tokens (byte-fallback tokens, emoji, CJK). Text events must be valid UTF-8
//! and never split a character, so bytes wait here until they form whole characters.

/// Buffers token bytes and releases the longest valid UTF-8 prefix.
#[derive(Debug, Default)]
pub(crate) struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    /// Adds `bytes` and returns every complete character available so far. Byte sequences that
    /// can never become valid UTF-8 turn into U+FFFD rather than blocking the stream.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(valid) => {
                    out.push_str(valid);
                    self.pending.clear();
                    return out;
                }
                Err(err) => {
                    let valid_up_to = err.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid_up_to]));
                    match err.error_len() {
                        // Invalid bytes: replace them and keep decoding what follows.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid_up_to + bad);
                        }
                        // An incomplete character at the end: wait for the next token.
                        None => {
                            self.pending.drain(..valid_up_to);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// At the end of generation: whatever is left can never complete, so it is replaced.
    pub(crate) fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_split_characters() {
        let euro = "€".as_bytes(); // 3 bytes
        let mut d = Utf8Decoder::default();
        assert_eq!(d.push(b"a"), "a");
        assert_eq!(d.push(&euro[..1]), "");
        assert_eq!(d.push(&euro[1..2]), "");
        let mut tail = euro[2..].to_vec();
        tail.extend_from_slice(b"b");
        assert_eq!(d.push(&tail), "€b");
        assert_eq!(d.finish(), "");
    }

    #[test]
    fn replaces_invalid_bytes_and_leftovers() {
        let mut d = Utf8Decoder::default();
        assert_eq!(d.push(&[b'x', 0xff, b'y']), "x\u{fffd}y");
        assert_eq!(d.push(&[0xe2, 0x82]), "");
        assert_eq!(d.finish(), "\u{fffd}");
    }
}
