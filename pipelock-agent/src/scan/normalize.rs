//! Streaming text normalisation for injection matching: UTF-8 decoding
//! across chunk boundaries, removal of zero-width/invisible and control
//! characters, NFKC, homoglyph (Cyrillic/Greek/Armenian/small-caps) and
//! leetspeak folding, combining marks dropped, whitespace runs collapsed.
//! Pure-ASCII input takes a table-driven fast path. State is constant: at
//! most 3 carried UTF-8 bytes and a short pending run of characters.
use unicode_normalization::{UnicodeNormalization, char::canonical_combining_class};

/// Pending characters held back for NFKC composition (bounded).
const MAX_PENDING: usize = 32;

/// ASCII byte map: 0 = drop, b' ' = whitespace, otherwise the folded byte.
const ASCII_MAP: [u8; 128] = build_ascii_map();

const fn build_ascii_map() -> [u8; 128] {
    let mut m = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        m[i] = i as u8;
        i += 1;
    }
    // Controls dropped, except newline (kept) and blank-like (space).
    let mut c = 0;
    while c < 32 {
        m[c] = 0;
        c += 1;
    }
    m[127] = 0;
    m[b'\n' as usize] = b'\n';
    m[b'\t' as usize] = b' ';
    m[b'\r' as usize] = b' ';
    m[0x0b] = b' ';
    m[0x0c] = b' ';
    // Leetspeak.
    m[b'0' as usize] = b'o';
    m[b'1' as usize] = b'i';
    m[b'3' as usize] = b'e';
    m[b'4' as usize] = b'a';
    m[b'5' as usize] = b's';
    m[b'7' as usize] = b't';
    m[b'@' as usize] = b'a';
    m[b'$' as usize] = b's';
    m
}

/// Zero-width, bidi-control, tag and other invisible code points.
pub fn is_invisible(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180E
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0x3164 | 0xFE00..=0xFE0F | 0xFEFF | 0xFFA0 | 0xFFF9..=0xFFFB
        | 0x1D173..=0x1D17A | 0xE0000..=0xE007F | 0xE0100..=0xE01EF
        | 0x0080..=0x009F)
}

/// Maps look-alike letters to ASCII (after NFKC).
pub fn fold_homoglyph(c: char) -> char {
    match c {
        'а' | 'α' | 'ᴀ' => 'a',
        'в' | 'ʙ' => 'b',
        'с' | 'ϲ' | 'ᴄ' => 'c',
        'ԁ' | 'ᴅ' => 'd',
        'е' | 'ε' | 'ᴇ' | 'ё' => 'e',
        'ɢ' | 'ց' => 'g',
        'һ' | 'ʜ' | 'հ' => 'h',
        'і' | 'ι' | 'ı' | 'ɪ' | 'ї' => 'i',
        'ј' | 'ᴊ' => 'j',
        'κ' | 'ᴋ' | 'к' => 'k',
        'ʟ' | 'ӏ' => 'l',
        'ᴍ' | 'м' => 'm',
        'ɴ' | 'ո' | 'п' => 'n',
        'о' | 'ο' | 'ᴏ' | 'օ' | 'σ' => 'o',
        'р' | 'ρ' | 'ᴘ' => 'p',
        'ԛ' => 'q',
        'ʀ' | 'г' => 'r',
        'ѕ' | 'ꜱ' => 's',
        'τ' | 'ᴛ' | 'т' => 't',
        'υ' | 'ᴜ' | 'ս' => 'u',
        'ν' | 'ᴠ' => 'v',
        'ԝ' | 'ᴡ' | 'ω' => 'w',
        'х' | 'χ' => 'x',
        'у' | 'ʏ' | 'γ' => 'y',
        'ᴢ' => 'z',
        'А' | 'Α' | 'Ꭺ' => 'A',
        'В' | 'Β' | 'Ᏼ' => 'B',
        'С' | 'Ϲ' | 'Ꮯ' => 'C',
        'Е' | 'Ε' | 'Ꭼ' => 'E',
        'Н' | 'Η' | 'Ꮋ' => 'H',
        'І' | 'Ι' => 'I',
        'Ј' => 'J',
        'К' | 'Κ' => 'K',
        'М' | 'Μ' | 'Ꮇ' => 'M',
        'Ν' => 'N',
        'О' | 'Ο' | 'Օ' => 'O',
        'Р' | 'Ρ' | 'Ꮲ' => 'P',
        'Ѕ' | 'Ꮪ' => 'S',
        'Т' | 'Τ' | 'Ꭲ' => 'T',
        'Х' | 'Χ' => 'X',
        'У' | 'Υ' => 'Y',
        'Ζ' => 'Z',
        _ => c,
    }
}

/// Streaming normaliser (one per text stream).
#[derive(Clone, Debug, Default)]
pub struct Normalizer {
    carry: [u8; 4],
    carry_len: usize,
    pending: String,
    last_space: bool,
}

impl Normalizer {
    /// Normalises the next chunk, appending to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut input = input;
        // Complete a UTF-8 sequence carried from the previous chunk.
        while self.carry_len > 0 && !input.is_empty() {
            self.carry[self.carry_len] = input[0];
            self.carry_len += 1;
            input = &input[1..];
            let carry = self.carry;
            match std::str::from_utf8(&carry[..self.carry_len]) {
                Ok(s) => {
                    self.carry_len = 0;
                    self.chars(s, out);
                }
                Err(e) if e.error_len().is_some() || self.carry_len == 4 => {
                    // Invalid sequence: drop it.
                    self.carry_len = 0;
                }
                Err(_) => {}
            }
        }
        while !input.is_empty() {
            let n = ascii_prefix(input);
            if n > 0 {
                self.flush_pending(out);
                ascii_into(&input[..n], &mut self.last_space, out);
                input = &input[n..];
                continue;
            }
            // A non-ASCII segment, up to the next ASCII byte.
            let m = input.iter().position(u8::is_ascii).unwrap_or(input.len());
            match std::str::from_utf8(&input[..m]) {
                Ok(s) => {
                    self.chars(s, out);
                    input = &input[m..];
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    if let Ok(s) = std::str::from_utf8(&input[..valid]) {
                        self.chars(s, out);
                    }
                    match e.error_len() {
                        Some(bad) => input = &input[valid + bad..],
                        None if m == input.len() => {
                            // Incomplete sequence at the end of the chunk: carry it.
                            let tail = &input[valid..];
                            self.carry[..tail.len()].copy_from_slice(tail);
                            self.carry_len = tail.len();
                            input = &[];
                        }
                        None => input = &input[m..],
                    }
                }
            }
        }
    }

    /// Flushes held-back characters at the end of the stream.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.carry_len = 0;
        self.flush_pending(out);
    }

    fn flush_pending(&mut self, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            emit_nfkc(&self.pending, &mut self.last_space, out);
            self.pending.clear();
        }
    }

    fn chars(&mut self, s: &str, out: &mut Vec<u8>) {
        for c in s.chars() {
            if is_invisible(c) {
                continue;
            }
            if canonical_combining_class(c) == 0 {
                // A starter: everything before it is stable.
                self.flush_pending(out);
            }
            self.pending.push(c);
            if self.pending.len() >= MAX_PENDING {
                self.flush_pending(out);
            }
        }
    }
}

/// Length of the leading ASCII part of `b`.
fn ascii_prefix(b: &[u8]) -> usize {
    let mut i = 0;
    while i + 32 <= b.len() && b[i..i + 32].is_ascii() {
        i += 32;
    }
    i + b[i..]
        .iter()
        .position(|c| !c.is_ascii())
        .unwrap_or(b.len() - i)
}

/// Maps ASCII bytes through [`ASCII_MAP`], collapsing whitespace runs.
fn ascii_into(input: &[u8], last_space: &mut bool, out: &mut Vec<u8>) {
    out.reserve(input.len());
    let mut ls = *last_space;
    for &b in input {
        let m = ASCII_MAP[usize::from(b & 0x7f)];
        if m == b' ' {
            if !ls {
                out.push(b' ');
                ls = true;
            }
        } else if m != 0 {
            out.push(m);
            ls = false;
        }
    }
    *last_space = ls;
}

fn emit_nfkc(s: &str, last_space: &mut bool, out: &mut Vec<u8>) {
    let mut buf = [0u8; 4];
    for c in s.nfkc() {
        if is_invisible(c) || canonical_combining_class(c) != 0 {
            continue;
        }
        let c = fold_homoglyph(c);
        if c.is_ascii() {
            ascii_into(&[c as u8], last_space, out);
        } else if c.is_whitespace() {
            ascii_into(b" ", last_space, out);
        } else {
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            *last_space = false;
        }
    }
}

/// Normalises a whole buffer (block mode).
pub fn normalize(input: &[u8]) -> Vec<u8> {
    let mut n = Normalizer::default();
    let mut out = Vec::with_capacity(input.len());
    n.feed(input, &mut out);
    n.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        String::from_utf8(normalize(s.as_bytes())).unwrap()
    }

    #[test]
    fn folds_evasions() {
        assert_eq!(norm("ig\u{200b}nore  all\tprevious"), "ignore all previous");
        assert_eq!(norm("іgnоrе"), "ignore", "Cyrillic homoglyphs");
        assert_eq!(norm("ｉｇｎｏｒｅ"), "ignore", "fullwidth via NFKC");
        assert_eq!(norm("1gn0r3 pr3v10u5"), "ignore previous");
        assert_eq!(
            norm("caf\u{e9} e\u{301}x"),
            "café ex",
            "combining marks dropped"
        );
        assert_eq!(norm("忽略之前的指令"), "忽略之前的指令");
    }

    #[test]
    fn streaming_equals_block_at_every_split() {
        let text = "Ｉg\u{200d}nore é prеvious 指令 <|im_start|>".as_bytes();
        let whole = normalize(text);
        for cut in 0..=text.len() {
            let mut n = Normalizer::default();
            let mut out = Vec::new();
            n.feed(&text[..cut], &mut out);
            n.feed(&text[cut..], &mut out);
            n.finish(&mut out);
            assert_eq!(out, whole, "split at {cut}");
        }
    }
}
