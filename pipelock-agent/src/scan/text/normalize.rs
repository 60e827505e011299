//! Streaming text normalisation for injection matching: JSON string escapes
//! decoded (`text::unescape`), UTF-8 decoding across chunk boundaries,
//! removal of zero-width/invisible and control characters, NFKC, homoglyph
//! (Cyrillic/Greek/Armenian/small-caps) and leetspeak folding, combining
//! marks dropped, and every whitespace run collapsed to one byte (`\n` if it
//! held a line break, else a space). Pure-ASCII input takes a table-driven
//! fast path that copies whole 16-byte blocks when nothing in them changes
//! (SSE2 test on x86_64); input with non-ASCII bytes (other scripts, binary
//! bodies) goes by 64-byte blocks in which only the bytes that may start a
//! character are decoded one by one and invalid UTF-8 is dropped. State is
//! constant: at most 3 carried UTF-8 bytes, one deferred whitespace byte and
//! a short pending run of characters.
use unicode_normalization::{UnicodeNormalization, char::canonical_combining_class};

use super::unescape::JsonUnescape;
use crate::scan::passes::blocks::BLOCK;

/// Pending characters held back for NFKC composition (bounded).
const MAX_PENDING: usize = 32;

/// ASCII byte map: 0 = drop, b' ' = whitespace, otherwise the folded byte.
const ASCII_MAP: [u8; 128] = build_ascii_map();

/// [`ASCII_MAP`] for every byte: bytes outside ASCII are dropped (used where
/// they are known not to start a character).
const BYTE_MAP: [u8; 256] = {
    let mut m = [0u8; 256];
    let mut i = 0;
    while i < 128 {
        m[i] = ASCII_MAP[i];
        i += 1;
    }
    m
};

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
///
/// Output invariant the injection expressions rely on: every run of
/// whitespace (after invisibles are dropped) becomes exactly one byte, `\n`
/// when the run held a line break and a space otherwise. The byte is held
/// back until the next visible character (or [`Normalizer::finish`]), so the
/// invariant holds across chunk boundaries.
#[derive(Clone, Debug, Default)]
pub struct Normalizer {
    carry: [u8; 4],
    carry_len: usize,
    pending: String,
    /// Whitespace byte held back between calls: 0, `b' '` or `b'\n'`.
    ws: u8,
    /// Within a call: the last byte written to `out` is whitespace (and may
    /// still be merged with more whitespace).
    in_ws: bool,
    unescape: JsonUnescape,
    /// Unescaped text of the current chunk (reused; only for chunks with a
    /// backslash).
    unescaped: Vec<u8>,
}

/// One step of UTF-8 decoding at a non-ASCII byte.
enum Utf8 {
    /// A character and its encoded length.
    Char(char, usize),
    /// Not the start of a valid sequence: skip one byte.
    Invalid,
    /// A valid but truncated sequence (end of the buffer).
    Incomplete,
}

/// Decodes the character at the start of `s` (`s[0]` is not ASCII).
#[inline]
fn decode_utf8(s: &[u8]) -> Utf8 {
    let b0 = s[0];
    let (len, lo, hi) = match b0 {
        0xC2..=0xDF => (2, 0x80, 0xBF),
        0xE0 => (3, 0xA0, 0xBF),
        0xE1..=0xEC | 0xEE..=0xEF => (3, 0x80, 0xBF),
        0xED => (3, 0x80, 0x9F),
        0xF0 => (4, 0x90, 0xBF),
        0xF1..=0xF3 => (4, 0x80, 0xBF),
        0xF4 => (4, 0x80, 0x8F),
        _ => return Utf8::Invalid,
    };
    let mut cp = u32::from(b0) & (0x7F >> len);
    for i in 1..len {
        let Some(&b) = s.get(i) else {
            return Utf8::Incomplete;
        };
        let ok = if i == 1 {
            (lo..=hi).contains(&b)
        } else {
            b & 0xC0 == 0x80
        };
        if !ok {
            return Utf8::Invalid;
        }
        cp = (cp << 6) | u32::from(b & 0x3F);
    }
    match char::from_u32(cp) {
        Some(c) => Utf8::Char(c, len),
        None => Utf8::Invalid,
    }
}

impl Normalizer {
    /// Normalises the next chunk, appending to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.unescape.is_idle() && memchr::memchr(b'\\', input).is_none() {
            self.feed_text(input, out);
            return;
        }
        let mut text = std::mem::take(&mut self.unescaped);
        text.clear();
        self.unescape.feed(input, &mut text);
        self.feed_text(&text, out);
        self.unescaped = text;
    }

    /// [`Self::feed`] after unescaping.
    fn feed_text(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + 1);
        self.resume(out);
        let mut input = input;
        // Complete a UTF-8 sequence carried from the previous chunk.
        while self.carry_len > 0 && !input.is_empty() {
            let mut tmp = [0u8; 4];
            let have = self.carry_len;
            let take = (4 - have).min(input.len());
            tmp[..have].copy_from_slice(&self.carry[..have]);
            tmp[have..have + take].copy_from_slice(&input[..take]);
            match decode_utf8(&tmp[..have + take]) {
                Utf8::Char(c, len) => {
                    self.carry_len = 0;
                    input = &input[len - have..];
                    self.char(c, out);
                }
                // The carried bytes cannot start a character: drop them
                // (their continuation bytes are invalid on their own too).
                Utf8::Invalid => self.carry_len = 0,
                Utf8::Incomplete => {
                    self.carry[have..have + take].copy_from_slice(&input[..take]);
                    self.carry_len = have + take;
                    input = &[];
                }
            }
        }
        while !input.is_empty() {
            let n = ascii_prefix(input);
            if n > 0 {
                self.flush_pending(out);
                ascii_into(&input[..n], &mut self.in_ws, out);
                input = &input[n..];
                continue;
            }
            if input.len() >= MIXED_MIN {
                input = self.feed_mixed(input, out);
                continue;
            }
            // Non-ASCII characters, one at a time up to the next ASCII byte.
            while let Some(&b) = input.first() {
                if b.is_ascii() {
                    break;
                }
                match decode_utf8(input) {
                    Utf8::Char(c, len) => {
                        self.char(c, out);
                        input = &input[len..];
                    }
                    Utf8::Invalid => input = &input[1..],
                    Utf8::Incomplete => {
                        self.carry[..input.len()].copy_from_slice(input);
                        self.carry_len = input.len();
                        input = &[];
                    }
                }
            }
        }
        // A trailing whitespace byte waits: the run may go on in the next chunk.
        if self.in_ws {
            self.ws = out.pop().unwrap_or(0);
            self.in_ws = false;
        }
    }

    /// Normalises 64-byte blocks holding non-ASCII bytes (binary data, or
    /// text in another script) until a block starts with 16 ASCII bytes or
    /// fewer than [`MIXED_MIN`] bytes are left; returns the rest. Only bytes that may
    /// start a character (a lead byte followed by a continuation byte) are
    /// decoded one by one; the bytes between them are mapped in one
    /// branch-free pass that drops every other non-ASCII byte, which is what
    /// decoding them one at a time would do.
    fn feed_mixed<'a>(&mut self, mut input: &'a [u8], out: &mut Vec<u8>) -> &'a [u8] {
        while input.len() >= MIXED_MIN {
            let Ok(block) = <&[u8; BLOCK]>::try_from(&input[..BLOCK]) else {
                break;
            };
            let m = utf8_masks(block);
            if m.non_ascii & 0xFFFF == 0 {
                // Text again (or a character here and there in it): the
                // ASCII path copies whole blocks.
                break;
            }
            let next_cont = u64::from(matches!(input[BLOCK], 0x80..=0xBF));
            let starts = m.lead & ((m.cont >> 1) | (next_cont << 63));
            let seg = if starts == 0 {
                BLOCK
            } else {
                starts.trailing_zeros() as usize
            };
            if seg > 0 {
                let below = u64::MAX >> (BLOCK - seg);
                if !m.non_ascii & below != 0 {
                    // An ASCII byte ends any pending composition.
                    self.flush_pending(out);
                }
                if m.non_ascii & below == 0 && seg >= 16 {
                    ascii_into(&input[..seg], &mut self.in_ws, out);
                } else {
                    put_ascii(&input[..seg], &mut self.in_ws, out);
                }
                input = &input[seg..];
            }
            if starts != 0 {
                // At least 4 bytes remain, so the sequence is never cut.
                match decode_utf8(input) {
                    Utf8::Char(c, len) => {
                        self.char(c, out);
                        input = &input[len..];
                    }
                    Utf8::Invalid | Utf8::Incomplete => input = &input[1..],
                }
            }
        }
        input
    }

    /// Puts back the whitespace byte held from the previous call.
    fn resume(&mut self, out: &mut Vec<u8>) {
        if self.ws != 0 {
            out.push(self.ws);
            self.ws = 0;
            self.in_ws = true;
        }
    }

    /// Flushes held-back characters at the end of the stream.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let mut rest = Vec::new();
        self.unescape.finish(&mut rest);
        if !rest.is_empty() {
            self.feed_text(&rest, out);
        }
        self.unescaped = Vec::new();
        self.carry_len = 0;
        self.resume(out);
        self.flush_pending(out);
        self.in_ws = false;
    }

    fn flush_pending(&mut self, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            emit_nfkc(&self.pending, &mut self.in_ws, out);
            self.pending.clear();
        }
    }

    #[inline]
    fn char(&mut self, c: char, out: &mut Vec<u8>) {
        if is_invisible(c) {
            return;
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

/// Shortest input [`Normalizer::feed_mixed`] works on: one block and the
/// three bytes a character starting at its end may take.
const MIXED_MIN: usize = BLOCK + 3;

/// Byte classes of a block for UTF-8 decoding, one bit per byte.
struct Utf8Masks {
    non_ascii: u64,
    /// `C2..=F4`: may start a multi-byte character.
    lead: u64,
    /// `80..=BF`.
    cont: u64,
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn utf8_masks(b: &[u8; BLOCK]) -> Utf8Masks {
    use crate::scan::simd::{Lanes, Sse2};
    let mut m = Utf8Masks {
        non_ascii: 0,
        lead: 0,
        cont: 0,
    };
    // SAFETY: SSE2 is part of the x86_64 baseline; lanes 0..4 of a block.
    unsafe {
        for l in 0..Sse2::N {
            let v = Sse2::load(b, l);
            m.non_ascii |= Sse2::bits(Sse2::or(Sse2::range(v, 0x80, 127), Sse2::eq(v, 0xFF)), l);
            // C2..=F4: 51 bytes.
            m.lead |= Sse2::bits(Sse2::range(v, 0xC2, 51), l);
            m.cont |= Sse2::bits(Sse2::range(v, 0x80, 0x40), l);
        }
    }
    m
}

#[cfg(not(target_arch = "x86_64"))]
fn utf8_masks(b: &[u8; BLOCK]) -> Utf8Masks {
    let mut m = Utf8Masks {
        non_ascii: 0,
        lead: 0,
        cont: 0,
    };
    for (i, &c) in b.iter().enumerate() {
        m.non_ascii |= u64::from(!c.is_ascii()) << i;
        m.lead |= u64::from((0xC2..=0xF4).contains(&c)) << i;
        m.cont |= u64::from((0x80..=0xBF).contains(&c)) << i;
    }
    m
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

/// One mapped byte (from [`ASCII_MAP`]) into the output: dropped when 0,
/// merged into the previous byte when both are whitespace (a line break wins).
#[inline]
fn put(m: u8, in_ws: &mut bool, out: &mut Vec<u8>) {
    if m == 0 {
        return;
    }
    let w = m == b' ' || m == b'\n';
    match out.last_mut() {
        Some(last) if w && *in_ws => *last = (*last).min(m),
        _ => out.push(m),
    }
    *in_ws = w;
}

/// [`put`] for a short run of bytes through [`BYTE_MAP`] (non-ASCII bytes
/// dropped), without data-dependent branches (and without reading back what
/// it wrote, which would chain the bytes).
fn put_ascii(bytes: &[u8], in_ws: &mut bool, out: &mut Vec<u8>) {
    let mut j = out.len();
    let mut last = out.last().copied().unwrap_or(0);
    out.resize(j + bytes.len(), 0);
    let buf = out.as_mut_slice();
    let mut iw = usize::from(*in_ws);
    for &b in bytes {
        let m = BYTE_MAP[usize::from(b)];
        let w = usize::from(m == b' ') | usize::from(m == b'\n');
        let keep = usize::from(m != 0);
        // Whitespace after whitespace overwrites it (`' ' > '\n'`, so `min`
        // keeps a line break); `iw == 1` implies a byte was written before.
        let merge = w & iw & keep;
        let v = if merge != 0 { last.min(m) } else { m };
        if let Some(slot) = buf.get_mut(j.saturating_sub(merge)) {
            *slot = v;
        }
        last = if keep != 0 { v } else { last };
        j = j + keep - merge;
        iw = if keep != 0 { w } else { iw };
    }
    out.truncate(j);
    *in_ws = iw != 0;
}

/// Two masks over a 16-byte ASCII block: bit `i` of the first is set when
/// byte `i` is one the map changes or drops, of the second when it is
/// whitespace (`' '` or `'\n'`).
#[cfg(target_arch = "x86_64")]
#[inline]
fn block_masks(block: &[u8; 16]) -> (u32, u32) {
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_andnot_si128, _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_cmplt_epi8,
        _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of the x86_64 baseline; the load reads exactly the
    // 16 bytes of `block`.
    let (special, ws) = unsafe {
        let v = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
        let nl = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\n' as i8));
        let sp = _mm_cmpeq_epi8(v, _mm_set1_epi8(b' ' as i8));
        // Controls other than '\n' (bytes are ASCII, so the signed compare works).
        let ctrl = _mm_andnot_si128(nl, _mm_cmplt_epi8(v, _mm_set1_epi8(0x20)));
        // '0'..='7' (covers the leet digits; 2 and 6 just take the slow path).
        let digit = _mm_and_si128(
            _mm_cmpgt_epi8(v, _mm_set1_epi8(b'0' as i8 - 1)),
            _mm_cmplt_epi8(v, _mm_set1_epi8(b'8' as i8)),
        );
        let other = _mm_or_si128(
            _mm_or_si128(
                _mm_cmpeq_epi8(v, _mm_set1_epi8(b'@' as i8)),
                _mm_cmpeq_epi8(v, _mm_set1_epi8(b'$' as i8)),
            ),
            _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f)),
        );
        let special = _mm_or_si128(_mm_or_si128(ctrl, digit), other);
        (
            _mm_movemask_epi8(special) as u32,
            _mm_movemask_epi8(_mm_or_si128(nl, sp)) as u32,
        )
    };
    (special, ws)
}

/// Portable version of the block test.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn block_masks(block: &[u8; 16]) -> (u32, u32) {
    let mut special = 0u32;
    let mut ws = 0u32;
    for (i, &b) in block.iter().enumerate() {
        special |= u32::from(ASCII_MAP[usize::from(b & 0x7f)] != b) << i;
        ws |= u32::from(b == b' ' || b == b'\n') << i;
    }
    (special, ws)
}

/// The block mapped through [`ASCII_MAP`] and its whitespace mask, unless
/// some byte of it is dropped (a control other than whitespace, DEL).
#[cfg(target_arch = "x86_64")]
#[inline]
fn block_map(block: &[u8; 16]) -> Option<([u8; 16], u32)> {
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_andnot_si128, _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_cmplt_epi8,
        _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8, _mm_storeu_si128,
    };
    const PAIRS: [(u8, u8); 8] = [
        (b'0', b'o'),
        (b'1', b'i'),
        (b'3', b'e'),
        (b'4', b'a'),
        (b'5', b's'),
        (b'7', b't'),
        (b'@', b'a'),
        (b'$', b's'),
    ];
    let mut mapped = [0u8; 16];
    // SAFETY: SSE2 is part of the x86_64 baseline; the load reads exactly the
    // 16 bytes of `block` and the store writes exactly the 16 of `mapped`.
    let (drop, ws) = unsafe {
        let v = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
        let nl = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\n' as i8));
        // \t \v \f \r (9..=13 but not \n) become a space.
        let blank = _mm_andnot_si128(
            nl,
            _mm_and_si128(
                _mm_cmpgt_epi8(v, _mm_set1_epi8(8)),
                _mm_cmplt_epi8(v, _mm_set1_epi8(14)),
            ),
        );
        let ctrl = _mm_cmplt_epi8(v, _mm_set1_epi8(0x20));
        let drop = _mm_or_si128(
            _mm_andnot_si128(_mm_or_si128(nl, blank), ctrl),
            _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f)),
        );
        let space = _mm_set1_epi8(b' ' as i8);
        let mut m = _mm_or_si128(_mm_andnot_si128(blank, v), _mm_and_si128(blank, space));
        for (from, to) in PAIRS {
            let eq = _mm_cmpeq_epi8(v, _mm_set1_epi8(from as i8));
            m = _mm_or_si128(
                _mm_andnot_si128(eq, m),
                _mm_and_si128(eq, _mm_set1_epi8(to as i8)),
            );
        }
        _mm_storeu_si128(mapped.as_mut_ptr().cast::<__m128i>(), m);
        let ws = _mm_or_si128(nl, _mm_cmpeq_epi8(m, space));
        (_mm_movemask_epi8(drop), _mm_movemask_epi8(ws) as u32)
    };
    (drop == 0).then_some((mapped, ws))
}

/// Portable version of the block mapping.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn block_map(block: &[u8; 16]) -> Option<([u8; 16], u32)> {
    let mut mapped = [0u8; 16];
    let mut ws = 0u32;
    for (i, &b) in block.iter().enumerate() {
        let m = ASCII_MAP[usize::from(b & 0x7f)];
        if m == 0 {
            return None;
        }
        mapped[i] = m;
        ws |= u32::from(m == b' ' || m == b'\n') << i;
    }
    Some((mapped, ws))
}

/// Copies a block the map leaves alone, less the bytes that extend a
/// whitespace run (merged into the byte before them; a line break wins).
#[inline(always)]
fn copy_block(block: &[u8; 16], wsmask: u32, in_ws: &mut bool, out: &mut Vec<u8>) {
    let mut adjacent = wsmask & ((wsmask << 1) | u32::from(*in_ws));
    *in_ws = wsmask & 0x8000 != 0;
    if adjacent == 0 {
        // The common case: a fixed-size copy the compiler inlines.
        out.extend_from_slice(block);
        return;
    }
    let mut start = 0;
    while adjacent != 0 {
        let i = adjacent.trailing_zeros() as usize;
        out.extend_from_slice(&block[start..i]);
        if block[i] == b'\n'
            && let Some(last) = out.last_mut()
        {
            *last = b'\n';
        }
        start = i + 1;
        adjacent &= adjacent - 1;
    }
    out.extend_from_slice(&block[start..]);
}

/// Maps ASCII bytes through [`ASCII_MAP`], collapsing whitespace runs.
/// Blocks of 16 bytes are mapped and copied whole (SSE2 on x86_64), less
/// the bytes that extend a whitespace run; only blocks with bytes to drop
/// go byte by byte.
fn ascii_into(input: &[u8], in_ws: &mut bool, out: &mut Vec<u8>) {
    out.reserve(input.len() + 1);
    let mut chunks = input.chunks_exact(16);
    for chunk in &mut chunks {
        let Ok(block) = <&[u8; 16]>::try_from(chunk) else {
            break;
        };
        let (special, wsmask) = block_masks(block);
        if special == 0 {
            copy_block(block, wsmask, in_ws, out);
        } else if let Some((mapped, wsmask)) = block_map(block) {
            copy_block(&mapped, wsmask, in_ws, out);
        } else {
            put_ascii(block, in_ws, out);
        }
    }
    put_ascii(chunks.remainder(), in_ws, out);
}

fn emit_nfkc(s: &str, in_ws: &mut bool, out: &mut Vec<u8>) {
    let mut buf = [0u8; 4];
    for c in s.nfkc() {
        if is_invisible(c) || canonical_combining_class(c) != 0 {
            continue;
        }
        let c = fold_homoglyph(c);
        if c.is_ascii() {
            put(ASCII_MAP[c as usize], in_ws, out);
        } else if c.is_whitespace() {
            put(b' ', in_ws, out);
        } else {
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            *in_ws = false;
        }
    }
}

/// Normalises a whole buffer (block mode).
pub fn normalize(input: &[u8]) -> Vec<u8> {
    let mut n = Normalizer::default();
    let mut out = Vec::with_capacity(input.len() + 1);
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

    /// Byte-at-a-time reference for ASCII input.
    fn reference(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut ws = 0u8;
        for &b in input {
            match ASCII_MAP[usize::from(b)] {
                0 => {}
                b' ' if ws == 0 => ws = b' ',
                b' ' => {}
                b'\n' => ws = b'\n',
                m => {
                    if ws != 0 {
                        out.push(ws);
                        ws = 0;
                    }
                    out.push(m);
                }
            }
        }
        if ws != 0 {
            out.push(ws);
        }
        out
    }

    /// Deterministic pseudo-random bytes (xorshift).
    fn random_bytes(n: usize, mut seed: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn whitespace_runs_become_one_byte() {
        assert_eq!(norm("a  \t b"), "a b");
        assert_eq!(norm("a \n\r\n  b"), "a\nb", "a line break wins");
        assert_eq!(
            norm("a\u{200b} \u{200b}\n b"),
            "a\nb",
            "invisibles inside a run"
        );
        assert_eq!(norm("a\u{a0}\u{3000} b"), "a b", "Unicode spaces");
        assert_eq!(norm("  a  "), " a ");
        // Across chunk boundaries: the run is held back until it ends.
        let mut n = Normalizer::default();
        let mut out = Vec::new();
        for part in ["ignore ", " ", "\n", "\t", "previous"] {
            n.feed(part.as_bytes(), &mut out);
        }
        n.finish(&mut out);
        assert_eq!(out, b"ignore\nprevious");
    }

    #[test]
    fn ascii_fast_path_equals_reference() {
        // Letters, whitespace, leet digits, controls, DEL: every block kind.
        let alphabet = b"abcXYZ .,;:!  \n\n\t\r0123456789@$\x00\x07\x1b\x7f-_/";
        let raw = random_bytes(20_000, 0x9e37_79b9_7f4a_7c15);
        let text: Vec<u8> = raw
            .iter()
            .map(|b| alphabet[usize::from(*b) % alphabet.len()])
            .collect();
        for len in [0, 1, 15, 16, 17, 31, 33, 100, 1000, text.len()] {
            assert_eq!(
                normalize(&text[..len]),
                reference(&text[..len]),
                "len {len}"
            );
        }
        let words = b"The quick brown fox jumps over the lazy dog.  Version 1.2.3\n\n".repeat(50);
        assert_eq!(normalize(&words), reference(&words));
    }

    #[test]
    fn binary_input_is_bounded_and_splits_cleanly() {
        let data = random_bytes(64 * 1024, 0x2545_f491_4f6c_dd1d);
        let whole = normalize(&data);
        // Random bytes are mostly invalid UTF-8 and controls: output stays
        // smaller than the input (NFKC expansion of the rare valid
        // characters is far from filling it).
        assert!(
            whole.len() <= data.len(),
            "{} > {}",
            whole.len(),
            data.len()
        );
        for chunk in [1, 2, 3, 7, 64, 4096] {
            let mut n = Normalizer::default();
            let mut out = Vec::new();
            for c in data.chunks(chunk) {
                n.feed(c, &mut out);
            }
            n.finish(&mut out);
            assert_eq!(out, whole, "chunk size {chunk}");
        }
        // Truncated and invalid sequences around ASCII.
        assert_eq!(normalize(b"a\xe2\x82b\xff\xc3"), b"ab");
        assert_eq!(normalize("x\u{20ac}y".as_bytes()), "x\u{20ac}y".as_bytes());
    }

    #[test]
    fn mixed_blocks_equal_char_by_char_decoding() {
        // Text, binary and everything between: ASCII (with controls, leet
        // digits, whitespace), characters that NFKC, folding or dropping
        // change, other scripts, and every kind of invalid UTF-8. Whole
        // buffers take the 64-byte mixed path; chunks shorter than
        // `MIXED_MIN` never do, so they decode one character at a time.
        let pieces: [&[u8]; 24] = [
            b"a",
            b"Zq",
            b" ",
            b"\n",
            b"\t\r",
            b"0",
            b"\x00",
            b"\x7f",
            "é".as_bytes(),
            "e\u{301}".as_bytes(),
            "\u{301}".as_bytes(),
            "\u{200b}".as_bytes(),
            "Ｉ".as_bytes(),
            "о".as_bytes(),
            "指令".as_bytes(),
            "😀".as_bytes(),
            "\u{a0}".as_bytes(),
            b"\x80",
            b"\xbf\xbf",
            b"\xc3",
            b"\xe2\x82",
            b"\xc0\xaf",
            b"\xed\xa0\x80",
            b"\xf8\xff\xf5",
        ];
        let raw = random_bytes(40_000, 0x51_7cc1_b727_220a);
        for (mix, dense) in [(0usize, 2usize), (1, 5), (2, 24)] {
            // `dense`: one piece in `dense` is non-ASCII or invalid.
            let mut data = Vec::new();
            for (i, r) in raw.iter().enumerate() {
                let r = usize::from(*r) + i * mix;
                let k = if r % dense == 0 {
                    8 + r / dense % 16
                } else {
                    r % 8
                };
                data.extend_from_slice(pieces[k]);
            }
            let whole = normalize(&data);
            for chunk in [MIXED_MIN - 1, 7, 1] {
                let mut n = Normalizer::default();
                let mut out = Vec::new();
                for c in data.chunks(chunk) {
                    n.feed(c, &mut out);
                }
                n.finish(&mut out);
                assert!(out == whole, "density 1/{dense}, chunks of {chunk}");
            }
        }
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
