//! Streaming JSON string unescaping for injection matching: LLM and MCP
//! responses carry their text inside JSON strings, where a line break is
//! `\n` and any character may be written `\u0069`, so `ig\u200bnore` and
//! `previous\ninstructions` would otherwise slip past the patterns. Every
//! escape JSON defines is decoded (surrogate pairs combined, lone surrogates
//! dropped); a backslash that starts no escape is kept. An escape cut by a
//! chunk boundary waits (at most 11 bytes) for the next chunk.

/// Longest escape: a surrogate pair, `\uD83D\uDE00`.
const LONGEST: usize = 12;

/// Streaming unescaper state: the start of an escape cut by a chunk boundary.
#[derive(Clone, Debug, Default)]
pub struct JsonUnescape {
    pending: [u8; LONGEST],
    len: usize,
}

/// What the bytes at a backslash are.
enum Escape {
    /// Too few bytes to tell.
    Incomplete,
    /// `consumed` bytes decode to `ch` (`None`: to nothing, a lone surrogate).
    Char { consumed: usize, ch: Option<char> },
    /// Not an escape: the backslash stands for itself.
    Literal,
}

fn hex4(s: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(s.get(..4)?).ok()?;
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// Whether `s` could still grow into a `\uXXXX` escape.
fn may_be_unicode(s: &[u8]) -> bool {
    s.len() < 6 && s.starts_with(b"\\u") && s[2..].iter().all(u8::is_ascii_hexdigit)
}

/// Reads the escape at the start of `s` (`s[0]` is a backslash).
fn parse(s: &[u8]) -> Escape {
    let Some(&kind) = s.get(1) else {
        return Escape::Incomplete;
    };
    let simple = |ch: char| Escape::Char {
        consumed: 2,
        ch: Some(ch),
    };
    match kind {
        b'n' => simple('\n'),
        b'r' => simple('\r'),
        b't' => simple('\t'),
        b'b' => simple('\u{8}'),
        b'f' => simple('\u{c}'),
        b'"' => simple('"'),
        b'\\' => simple('\\'),
        b'/' => simple('/'),
        b'u' => {
            if may_be_unicode(s) {
                return Escape::Incomplete;
            }
            let Some(hi) = s.get(2..).and_then(hex4) else {
                return Escape::Literal;
            };
            if !(0xD800..=0xDBFF).contains(&hi) {
                // A character, or a lone low surrogate (dropped).
                return Escape::Char {
                    consumed: 6,
                    ch: char::from_u32(hi),
                };
            }
            // A high surrogate: a low one should follow.
            let rest = &s[6..];
            if rest.len() < 6 && (rest.is_empty() || rest == &b"\\"[..] || may_be_unicode(rest)) {
                return Escape::Incomplete;
            }
            match rest.strip_prefix(b"\\u").and_then(hex4) {
                Some(lo) if (0xDC00..=0xDFFF).contains(&lo) => Escape::Char {
                    consumed: 12,
                    ch: char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)),
                },
                _ => Escape::Char {
                    consumed: 6,
                    ch: None,
                },
            }
        }
        _ => Escape::Literal,
    }
}

fn put(ch: Option<char>, out: &mut Vec<u8>) {
    if let Some(c) = ch {
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
}

impl JsonUnescape {
    /// No escape is waiting for more bytes.
    pub fn is_idle(&self) -> bool {
        self.len == 0
    }

    /// Unescapes the next chunk, appending to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.len == 0 {
            self.feed_from(input, out);
        } else {
            // An escape was cut by the last boundary (rare): read on from it.
            let mut joined = Vec::with_capacity(self.len + input.len());
            joined.extend_from_slice(&self.pending[..self.len]);
            joined.extend_from_slice(input);
            self.len = 0;
            self.feed_from(&joined, out);
        }
    }

    fn feed_from(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len());
        while let Some(i) = memchr::memchr(b'\\', input) {
            out.extend_from_slice(&input[..i]);
            input = &input[i..];
            match parse(input) {
                // (Always shorter than the longest escape; see `parse`.)
                Escape::Incomplete if input.len() < LONGEST => {
                    self.pending[..input.len()].copy_from_slice(input);
                    self.len = input.len();
                    return;
                }
                Escape::Char { consumed, ch } => {
                    put(ch, out);
                    input = &input[consumed.min(input.len())..];
                }
                Escape::Literal | Escape::Incomplete => {
                    out.push(b'\\');
                    input = &input[1..];
                }
            }
        }
        out.extend_from_slice(input);
    }

    /// Ends the stream: an unfinished escape is kept as written.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.pending[..self.len]);
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(s: &[u8]) -> Vec<u8> {
        let mut u = JsonUnescape::default();
        let mut out = Vec::new();
        u.feed(s, &mut out);
        u.finish(&mut out);
        out
    }

    #[test]
    fn decodes_every_json_escape() {
        assert_eq!(
            whole(br#"a\nb\tc\rd\"e\\f\/g\bh\fi"#),
            b"a\nb\tc\rd\"e\\f/g\x08h\x0ci"
        );
        assert_eq!(
            whole(br"ig\u200bnore \u0069t"),
            "ig\u{200b}nore it".as_bytes()
        );
        assert_eq!(whole(br"\uD83D\uDE00!"), "\u{1F600}!".as_bytes());
        // Lone surrogates are dropped, the rest kept.
        assert_eq!(whole(br"x\uD83Dy\uDE00z"), b"xyz");
        assert_eq!(whole(br"x\uD83D\u0041"), b"xA");
    }

    #[test]
    fn backslashes_that_start_no_escape_are_kept() {
        assert_eq!(
            whole(br"C:\Users\x \q \u12 \uXYZW"),
            br"C:\Users\x \q \u12 \uXYZW"
        );
        assert_eq!(whole(b"end\\"), b"end\\");
        assert_eq!(whole(br"\u00"), br"\u00");
    }

    #[test]
    fn every_split_point_gives_the_same_text() {
        let text: &[u8] = br#"{"t":"ig\u200bnore\nall \"previous\" \uD83D\uDE00 \uD83D\u0041 C:\Users\u12 \\n end\"#;
        let want = whole(text);
        for cut in 0..=text.len() {
            let mut u = JsonUnescape::default();
            let mut out = Vec::new();
            u.feed(&text[..cut], &mut out);
            u.feed(&text[cut..], &mut out);
            u.finish(&mut out);
            assert_eq!(out, want, "split at {cut}");
        }
        let mut u = JsonUnescape::default();
        let mut out = Vec::new();
        for b in text.chunks(1) {
            u.feed(b, &mut out);
        }
        u.finish(&mut out);
        assert_eq!(out, want, "byte by byte");
    }
}
