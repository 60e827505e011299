//! 64-byte block classification for the digit-driven passes (`numeric`,
//! `runs`): each block becomes two bitmasks (ASCII digits, printable
//! non-space ASCII) with SSE2 on x86_64, and a block whose neighbourhood
//! cannot hold anything those passes report is skipped without looking at
//! its bytes one by one. Stateless; works on one buffer.

/// Bytes per block.
pub const BLOCK: usize = 64;

/// Bit `i` set when byte `i` of a block is in the class.
#[derive(Clone, Copy, Debug, Default)]
struct Masks {
    digit: u64,
    upper: u64,
    lower: u64,
    space: u64,
    dash: u64,
    /// `+ / = _ %`: the other bytes of encoded runs.
    enc: u64,
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn classify(b: &[u8; BLOCK]) -> Masks {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8, _mm_sub_epi8, _mm_xor_si128,
    };
    // SAFETY: SSE2 is part of the x86_64 baseline; every load reads 16 bytes
    // inside the 64-byte array.
    unsafe {
        let bias = _mm_set1_epi8(i8::MIN);
        // Unsigned range check lo..lo+len: (v - lo) ^ 0x80 < i8::MIN + len, signed.
        let range = |v: __m128i, lo: u8, len: i8| {
            _mm_cmplt_epi8(
                _mm_xor_si128(_mm_sub_epi8(v, _mm_set1_epi8(lo as i8)), bias),
                _mm_set1_epi8(i8::MIN + len),
            )
        };
        let eq = |v: __m128i, c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
        let bits = |x: __m128i| u64::from(_mm_movemask_epi8(x) as u16);
        let mut m = Masks::default();
        for i in 0..BLOCK / 16 {
            let v = _mm_loadu_si128(b.as_ptr().add(16 * i).cast::<__m128i>());
            let sh = 16 * i;
            m.digit |= bits(range(v, b'0', 10)) << sh;
            m.upper |= bits(range(v, b'A', 26)) << sh;
            m.lower |= bits(range(v, b'a', 26)) << sh;
            m.space |= bits(eq(v, b' ')) << sh;
            m.dash |= bits(eq(v, b'-')) << sh;
            let enc = _mm_or_si128(
                _mm_or_si128(eq(v, b'+'), eq(v, b'/')),
                _mm_or_si128(_mm_or_si128(eq(v, b'='), eq(v, b'_')), eq(v, b'%')),
            );
            m.enc |= bits(enc) << sh;
        }
        m
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn classify(b: &[u8; BLOCK]) -> Masks {
    let mut m = Masks::default();
    for (i, &c) in b.iter().enumerate() {
        m.digit |= u64::from(c.is_ascii_digit()) << i;
        m.upper |= u64::from(c.is_ascii_uppercase()) << i;
        m.lower |= u64::from(c.is_ascii_lowercase()) << i;
        m.space |= u64::from(c == b' ') << i;
        m.dash |= u64::from(c == b'-') << i;
        m.enc |= u64::from(matches!(c, b'+' | b'/' | b'=' | b'_' | b'%')) << i;
    }
    m
}

/// Bit `i` set when bits `i + 1 - len ..= i` of `m` are all set.
#[inline]
fn run_ends(m: u128, len: u32) -> u128 {
    let mut r = m;
    let mut have = 1;
    while have < len {
        let s = (len - have).min(have);
        r &= r << s;
        have += s;
    }
    r
}

/// Two adjacent blocks as one 128-bit window, `lo` first.
fn wide(lo: u64, hi: u64) -> u128 {
    u128::from(lo) | (u128::from(hi) << 64)
}

/// Bits of the window that are digits joined by single separators in `sep`
/// (a separator counts only between two bytes of `d`).
fn joined(d: u128, sep: u128) -> u128 {
    d | (sep & (d << 1) & (d >> 1))
}

/// Whether the numeric pass can report a token whose digits lie in the
/// window: every reported shape has 9 digits in a row (ABA, card), 11+ bytes
/// of digits joined by single spaces or dashes (SSN, grouped card), 15+
/// alphanumerics in a row (compact IBAN, WIF) or 18+ bytes of digits and
/// capitals joined by single spaces (grouped IBAN).
fn numeric_hot(lo: Masks, hi: Masks) -> bool {
    let d = wide(lo.digit, hi.digit);
    let du = d | wide(lo.upper, hi.upper);
    let al = du | wide(lo.lower, hi.lower);
    let space = wide(lo.space, hi.space);
    let sep = space | wide(lo.dash, hi.dash);
    (run_ends(d, 9)
        | run_ends(joined(d, sep), 11)
        | run_ends(al, 15)
        | run_ends(joined(du, space), 18))
        != 0
}

/// Digits of the window that sit in a run of at least `RUN` encoded-run bytes
/// (alphanumerics and `+ / = _ % -`), give or take a few bytes before it.
fn run_digits(lo: Masks, hi: Masks, run: u32) -> u128 {
    let d = wide(lo.digit, hi.digit);
    let rb = d | wide(
        lo.upper | lo.lower | lo.dash | lo.enc,
        hi.upper | hi.lower | hi.dash | hi.enc,
    );
    // Smear every run end back over the run (31 >= run - 1 bytes).
    let mut x = run_ends(rb, run);
    x |= x >> 1;
    x |= x >> 2;
    x |= x >> 4;
    x |= x >> 8;
    x |= x >> 16;
    x & d
}

/// Shortest encoded run the run pass reports.
const RUN: u32 = super::runs::RUN_MIN_LEN as u32;

/// Which 64-byte blocks of one buffer the numeric and encoded-run passes must
/// look at byte by byte: one bit per block, computed in one classification
/// pass and shared by both. The first and the last two blocks are always
/// marked (their neighbours lie in other chunks), so nothing split across
/// chunks is missed. Reused across chunks; its size follows the chunk size.
#[derive(Clone, Debug, Default)]
pub struct HotBlocks {
    numeric: Vec<u64>,
    runs: Vec<u64>,
}

/// The pass asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Numeric,
    Runs,
}

fn set(bits: &mut [u64], k: usize) {
    bits[k / 64] |= 1 << (k % 64);
}

impl HotBlocks {
    /// Classifies `buf`.
    pub fn compute(&mut self, buf: &[u8]) {
        let nblocks = buf.len().div_ceil(BLOCK);
        let words = nblocks.div_ceil(64);
        for v in [&mut self.numeric, &mut self.runs] {
            v.clear();
            v.resize(words, 0);
        }
        let full = buf.len() / BLOCK;
        let block = |k: usize| -> Masks {
            match buf
                .get(k * BLOCK..(k + 1) * BLOCK)
                .map(<&[u8; BLOCK]>::try_from)
            {
                Some(Ok(b)) => classify(b),
                _ => Masks::default(),
            }
        };
        // Edges: the first block and everything from the last full one on.
        for k in (0..nblocks.min(1)).chain(full.saturating_sub(1)..nblocks) {
            set(&mut self.numeric, k);
            set(&mut self.runs, k);
        }
        if full < 3 {
            return;
        }
        let mut prev = block(0);
        let mut cur = block(1);
        for k in 1..full - 1 {
            let next = block(k + 1);
            if cur.digit != 0 {
                if numeric_hot(prev, cur) || numeric_hot(cur, next) {
                    set(&mut self.numeric, k);
                }
                if (run_digits(prev, cur, RUN) >> 64) != 0
                    || (run_digits(cur, next, RUN) as u64) != 0
                {
                    set(&mut self.runs, k);
                }
            }
            prev = cur;
            cur = next;
        }
    }

    /// Position of the next ASCII digit at or after `from` in a block marked
    /// for `pass` (`buf` must be the buffer last given to [`Self::compute`]).
    pub fn next_digit(&self, buf: &[u8], from: usize, pass: Pass) -> Option<usize> {
        let bits = match pass {
            Pass::Numeric => &self.numeric,
            Pass::Runs => &self.runs,
        };
        let mut k = from / BLOCK;
        while k / 64 < bits.len() {
            let word = bits[k / 64] & (!0u64 << (k % 64));
            if word == 0 {
                k = (k / 64 + 1) * 64;
                continue;
            }
            k = (k / 64) * 64 + word.trailing_zeros() as usize;
            let lo = (k * BLOCK).max(from);
            let hi = ((k + 1) * BLOCK).min(buf.len());
            if let Some(p) = buf.get(lo..hi)?.iter().position(u8::is_ascii_digit) {
                return Some(lo + p);
            }
            k += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hot_digits(text: &[u8], pass: Pass) -> Vec<usize> {
        let mut hot = HotBlocks::default();
        hot.compute(text);
        let mut from = 0;
        let mut got = Vec::new();
        while let Some(p) = hot.next_digit(text, from, pass) {
            got.push(p);
            from = p + 1;
        }
        got
    }

    #[test]
    fn classify_matches_the_byte_predicates() {
        let mut b = [0u8; BLOCK];
        for start in (0..256).step_by(BLOCK) {
            for (i, x) in b.iter_mut().enumerate() {
                *x = (start + i) as u8;
            }
            let m = classify(&b);
            for (i, &c) in b.iter().enumerate() {
                let bit = |m: u64| m >> i & 1 == 1;
                assert_eq!(bit(m.digit), c.is_ascii_digit(), "{c:#x}");
                assert_eq!(bit(m.upper), c.is_ascii_uppercase(), "{c:#x}");
                assert_eq!(bit(m.lower), c.is_ascii_lowercase(), "{c:#x}");
                assert_eq!(bit(m.space), c == b' ', "{c:#x}");
                assert_eq!(bit(m.dash), c == b'-', "{c:#x}");
                assert_eq!(bit(m.enc), b"+/=_%".contains(&c), "{c:#x}");
            }
        }
    }

    #[test]
    fn run_ends_marks_long_runs_only() {
        let m: u128 = 0b0111_1110_0111;
        assert_eq!(run_ends(m, 3), 0b0111_1000_0100);
        assert_eq!(run_ends(m, 6), 0b0100_0000_0000);
        assert_eq!(run_ends(m, 7), 0);
        assert_eq!(run_ends(u128::MAX, 64).count_ones(), 128 - 63);
    }

    #[test]
    fn short_buffers_are_all_edge() {
        let text = b"abc 12 def 3 ".repeat(10);
        let want: Vec<usize> = (0..text.len())
            .filter(|&i| text[i].is_ascii_digit())
            .collect();
        assert_eq!(hot_digits(&text, Pass::Numeric), want);
        assert_eq!(hot_digits(&text, Pass::Runs), want);
        assert!(hot_digits(b"", Pass::Runs).is_empty());
        assert_eq!(hot_digits(b"ab7", Pass::Numeric), vec![2]);
    }

    #[test]
    fn quiet_blocks_are_skipped_and_hot_ones_found() {
        // Dates, versions and years in prose: nothing the passes report.
        let prose = b"Copyright 1999-2005, 2007 Foo; version 2.0 of 2019-03-14 ok. ".repeat(30);
        let n = prose.len();
        let edge = |p: &usize| *p < BLOCK || *p >= (n / BLOCK - 1) * BLOCK;
        assert!(hot_digits(&prose, Pass::Numeric).iter().all(edge));
        assert!(hot_digits(&prose, Pass::Runs).iter().all(edge));
        for (token, pass) in [
            (&b"4111 1111 1111 1111"[..], Pass::Numeric),
            (b"4111-1111-1111-1111", Pass::Numeric),
            (b"123-45-6789", Pass::Numeric),
            (b"021000021", Pass::Numeric),
            (b"GB82WEST12345698765432", Pass::Numeric),
            (b"GB82 WEST 1234 5698 7654 32", Pass::Numeric),
            (
                b"5HueCGU8rMjxEXxiPuD5BDku4MkFqeZyd4dZ1jvhTVqvbTLvyTJ",
                Pass::Numeric,
            ),
            (b"aGVsbG8gd29ybGQgaGVsbG8gd2xk", Pass::Runs),
            (b"ghp_aB3dE5gH7jK9mN1pQ2sT4vW6yZ8", Pass::Runs),
        ] {
            for at in 5 * BLOCK..7 * BLOCK {
                let mut text = prose.clone();
                text[at..at + token.len()].copy_from_slice(token);
                let first = token.iter().position(u8::is_ascii_digit).map(|p| at + p);
                let got = hot_digits(&text, pass);
                assert!(
                    got.iter().any(|&p| Some(p) == first),
                    "{} at {at}: first digit not visited",
                    String::from_utf8_lossy(token)
                );
                let mut blocks: Vec<usize> = got.iter().map(|p| p / BLOCK).collect();
                blocks.dedup();
                assert!(blocks.len() <= 7, "too few blocks skipped: {blocks:?}");
            }
        }
    }
}
