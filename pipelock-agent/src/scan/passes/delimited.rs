//! Delimited and escaped byte sequences, decoded for secret scanning: hex
//! pairs joined by `:`, `-`, a space or a comma (`41:4b:49`, `41 4b 49`),
//! C and JSON escapes (`\x41\x4b`, `\u0041\u004b`), array literals
//! (`0x41, 0x4b`) and HTML character references (`&#65;&#x4B;`). The run
//! pass cannot see these (their pieces are too short); Hyperscan flags a
//! buffer holding one ([`TRIGGERS`]), and only then is it read byte by byte
//! here. Pairs joined by `:`, a space or a comma have no trigger (an
//! expression without a literal to anchor on cost Hyperscan 20–50 % of its
//! clean-text throughput, measured with `cargo xtask bench scan` and on
//! 8 MB of /usr/share/doc): in bodies the block classifier flags pairs
//! joined by spaces (`blocks`, [`has_pairs`] at a chunk's end); URLs and
//! headers are read for every shape (`text::scan_dlp_field`); pairs joined
//! by `-` are runs of the run pass and decoded there
//! (`decode::decode_candidates`). A
//! sequence counts from [`MIN_BYTES`] decoded bytes and is kept up to a
//! caller-given length.

/// Fewest decoded bytes a sequence needs (shorter ones hold no secret).
pub const MIN_BYTES: usize = 8;

/// Hyperscan expressions (caseless) that mark a buffer as holding a
/// sequence of at least [`MIN_BYTES`] pieces; the decoder below reads it.
pub const TRIGGERS: &[&str] = &[
    r"(?:\\x[0-9a-f]{2}){8}",
    r"(?:\\u00[0-9a-f]{2}){8}",
    r"(?:0x[0-9a-f]{2},[ \t]?){7}0x",
    r"(?:&#(?:x[0-9a-f]{1,2}|[0-9]{1,3});){8}",
];

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|v| v as u8)
}

fn hex_pair(s: &[u8], at: usize) -> Option<u8> {
    Some(hex(*s.get(at)?)? << 4 | hex(*s.get(at + 1)?)?)
}

/// The shape of one piece, so a sequence keeps one shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// `\xHH`
    CEscape,
    /// `\u00HH`
    JsonEscape,
    /// `0xHH`
    Literal,
    /// `&#DDD;` or `&#xHH;`
    CharRef,
    /// `HH` followed by a delimiter
    Bare,
}

/// One piece at `at`: its shape, the byte and where it ends.
fn piece(s: &[u8], at: usize) -> Option<(Shape, u8, usize)> {
    let rest = s.get(at..)?;
    match rest {
        [b'\\', b'x' | b'X', ..] => Some((Shape::CEscape, hex_pair(s, at + 2)?, at + 4)),
        [b'\\', b'u' | b'U', b'0', b'0', ..] => {
            Some((Shape::JsonEscape, hex_pair(s, at + 4)?, at + 6))
        }
        [b'0', b'x' | b'X', ..] => Some((Shape::Literal, hex_pair(s, at + 2)?, at + 4)),
        [b'&', b'#', b'x' | b'X', ..] => {
            let n = rest[3..]
                .iter()
                .take(3)
                .take_while(|b| b.is_ascii_hexdigit())
                .count();
            let v = u32::from_str_radix(std::str::from_utf8(&rest[3..3 + n]).ok()?, 16).ok()?;
            (n > 0 && rest.get(3 + n) == Some(&b';'))
                .then(|| u8::try_from(v).ok())
                .flatten()
                .map(|b| (Shape::CharRef, b, at + 4 + n))
        }
        [b'&', b'#', ..] => {
            let n = rest[2..]
                .iter()
                .take(4)
                .take_while(|b| b.is_ascii_digit())
                .count();
            let v: u32 = std::str::from_utf8(&rest[2..2 + n]).ok()?.parse().ok()?;
            (n > 0 && rest.get(2 + n) == Some(&b';'))
                .then(|| u8::try_from(v).ok())
                .flatten()
                .map(|b| (Shape::CharRef, b, at + 3 + n))
        }
        _ => {
            let b = hex_pair(s, at)?;
            // A bare pair must stand alone: not inside a longer hex word.
            let before = at.checked_sub(1).and_then(|i| s.get(i));
            let after = s.get(at + 2);
            (!before.is_some_and(u8::is_ascii_alphanumeric)
                && !after.is_some_and(u8::is_ascii_alphanumeric))
            .then_some((Shape::Bare, b, at + 2))
        }
    }
}

/// Skips one delimiter (`: - , ;` or a space, a comma or semicolon may be
/// followed by one space) after a piece ending at `at`.
fn delimiter(s: &[u8], at: usize) -> usize {
    match s.get(at) {
        Some(b',' | b';') if s.get(at + 1) == Some(&b' ') => at + 2,
        Some(b':' | b'-' | b',' | b';' | b' ') => at + 1,
        _ => at,
    }
}

/// One decoded sequence of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequence {
    /// The decoded bytes (at most the caller's limit).
    pub bytes: Vec<u8>,
    /// Whether the sequence reaches the end of the buffer (it may go on in
    /// the next chunk).
    pub at_end: bool,
}

/// Every sequence of at least [`MIN_BYTES`] pieces in `s`, each decoded
/// up to `max` bytes.
pub fn sequences(s: &[u8], max: usize) -> Vec<Sequence> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let Some((shape, first, mut end)) = piece(s, i) else {
            i += 1;
            continue;
        };
        let mut bytes = vec![first];
        let mut pieces = 1;
        let mut last = end;
        loop {
            let next = delimiter(s, end);
            // Bare pairs need a delimiter between them.
            if shape == Shape::Bare && next == end {
                break;
            }
            match piece(s, next) {
                Some((sh, b, e)) if sh == shape => {
                    if bytes.len() < max {
                        bytes.push(b);
                    }
                    pieces += 1;
                    end = e;
                    last = e;
                }
                _ => break,
            }
        }
        if pieces >= MIN_BYTES {
            out.push(Sequence {
                bytes,
                at_end: delimiter(s, last) >= s.len(),
            });
        }
        i = last.max(i + 1);
    }
    out
}

/// Whether `s` holds [`MIN_BYTES`] bare hex pairs in a row joined by
/// single spaces, read byte by byte: the shape the block classifier looks
/// for in its windows (`blocks`), for the few bytes at a chunk's end that
/// no window covers.
pub fn has_pairs(s: &[u8]) -> bool {
    let mut count = 0;
    let mut i = 0;
    while i + 1 < s.len() {
        let pair = s[i].is_ascii_hexdigit()
            && s[i + 1].is_ascii_hexdigit()
            && (i == 0 || !s[i - 1].is_ascii_alphanumeric())
            && !s.get(i + 2).is_some_and(u8::is_ascii_alphanumeric);
        if pair {
            count += 1;
            if count >= MIN_BYTES {
                return true;
            }
            if s.get(i + 2) == Some(&b' ') {
                i += 3;
                continue;
            }
        }
        count = 0;
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(s: &str) -> Vec<String> {
        sequences(s.as_bytes(), 4096)
            .into_iter()
            .map(|q| String::from_utf8_lossy(&q.bytes).into_owned())
            .collect()
    }

    #[test]
    fn every_shape_decodes() {
        let want = "ghp_secret42";
        let hexes: Vec<String> = want.bytes().map(|b| format!("{b:02x}")).collect();
        for text in [
            hexes.join(":"),
            hexes.join("-").to_uppercase(),
            hexes.join(" "),
            hexes.join(", "),
            hexes.iter().map(|h| format!("\\x{h}")).collect::<String>(),
            hexes
                .iter()
                .map(|h| format!("\\u00{h}"))
                .collect::<String>(),
            hexes
                .iter()
                .map(|h| format!("0x{h}"))
                .collect::<Vec<_>>()
                .join(", "),
            want.bytes().map(|b| format!("&#{b};")).collect::<String>(),
            want.bytes()
                .map(|b| format!("&#x{b:X};"))
                .collect::<String>(),
        ] {
            assert_eq!(decoded(&format!("x = [{text}] ok")), [want], "{text}");
        }
    }

    #[test]
    fn text_and_short_sequences_are_not_sequences() {
        for text in [
            "on 12 03 2024 at 10:30:00 we met",
            "de ad be ef",
            "aa bb cc dd ee ff",
            "the cafe de la fe at 10 am",
            "deadbeefdeadbeef01",
            "&#65;&#66;",
            "the word face-to-face-ad-ab-cd-ef",
        ] {
            assert!(decoded(text).is_empty(), "{text}");
        }
        // A MAC address (6 bytes) is too short; a long one counts.
        assert!(decoded("mac 00:1a:2b:3c:4d:5e up").is_empty());
        assert_eq!(decoded("00:1a:2b:3c:4d:5e:6f:70").len(), 1);
    }

    #[test]
    fn has_pairs_agrees_with_the_decoder_on_spaces() {
        for text in [
            "x 41 4b 49 41 4d 5a 43 4f y",
            "41 4b 49 41 4d 5a 43 4f",
            "on 12 03 2024 at 10:30:00 we met",
            "de ad be ef",
            "mac 00:1a:2b:3c:4d:5e up",
            "deadbeefdeadbeef01",
            "41 4b 49 41 4d 5a 43x4f",
        ] {
            let bare = sequences(text.as_bytes(), 64).len();
            assert_eq!(has_pairs(text.as_bytes()), bare > 0, "{text}");
        }
    }

    #[test]
    fn reaching_the_end_is_reported_and_length_is_capped() {
        let s = "41:42:43:44:45:46:47:48:49";
        let q = sequences(s.as_bytes(), 4);
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].bytes, b"ABCD");
        assert!(q[0].at_end);
        assert!(!sequences(format!("{s} end").as_bytes(), 64)[0].at_end);
    }
}
