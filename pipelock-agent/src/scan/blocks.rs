//! 64-byte block classification for the digit-driven passes (`numeric`,
//! `runs`): each block becomes two bitmasks (ASCII digits, printable
//! non-space ASCII) with SSE2 on x86_64, and a block whose neighbourhood
//! cannot hold anything those passes report is skipped without looking at
//! its bytes one by one. Stateless; works on one buffer.

/// Bytes per block.
pub const BLOCK: usize = 64;

/// When a digit's block is worth the byte-level pass.
#[derive(Clone, Copy, Debug)]
pub struct HotRule {
    /// The block and the next one hold at least this many digits.
    pub min_digits: u32,
    /// Or a run of at least this many printable non-space bytes ends in the
    /// block or the next one (at most [`BLOCK`]).
    pub run_len: u32,
}

/// Bit `i` set when byte `i` of a block is in the class.
#[derive(Clone, Copy, Debug, Default)]
struct Masks {
    digit: u64,
    /// `0x21..=0x7e`: a superset of every byte the passes treat as part of a token.
    word: u64,
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn classify(b: &[u8; BLOCK]) -> Masks {
    use std::arch::x86_64::{
        __m128i, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8, _mm_sub_epi8,
        _mm_xor_si128,
    };
    // SAFETY: SSE2 is part of the x86_64 baseline; every load reads 16 bytes
    // inside the 64-byte array.
    unsafe {
        let bias = _mm_set1_epi8(i8::MIN);
        let zero = _mm_set1_epi8(b'0' as i8);
        let digit_lim = _mm_set1_epi8(i8::MIN + 10);
        let bang = _mm_set1_epi8(0x21);
        let word_lim = _mm_set1_epi8(i8::MIN + 0x5e);
        let mut m = Masks::default();
        for i in 0..BLOCK / 16 {
            let v = _mm_loadu_si128(b.as_ptr().add(16 * i).cast::<__m128i>());
            // Unsigned range checks: (v - lo) ^ 0x80 < (len ^ 0x80), signed.
            let d = _mm_cmplt_epi8(_mm_xor_si128(_mm_sub_epi8(v, zero), bias), digit_lim);
            let w = _mm_cmplt_epi8(_mm_xor_si128(_mm_sub_epi8(v, bang), bias), word_lim);
            m.digit |= u64::from(_mm_movemask_epi8(d) as u16) << (16 * i);
            m.word |= u64::from(_mm_movemask_epi8(w) as u16) << (16 * i);
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
        m.word |= u64::from((0x21..=0x7e).contains(&c)) << i;
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

/// A run of at least `len` word bytes ends in `cur` (looking back into `prev`).
#[inline]
fn run_ends_in(prev: Masks, cur: Masks, len: u32) -> bool {
    let w = u128::from(prev.word) | (u128::from(cur.word) << 64);
    (run_ends(w, len) >> 64) != 0
}

fn block(buf: &[u8], k: usize) -> &[u8; BLOCK] {
    buf[k * BLOCK..(k + 1) * BLOCK]
        .try_into()
        .expect("block index is within the buffer's full blocks")
}

/// Position of the next ASCII digit at or after `from` that is worth the
/// byte-level pass under `rule`. Digits in the first and last full block and
/// in the partial tail are always returned (their neighbours lie in other
/// chunks), so a token split across chunks is never missed.
pub fn next_hot_digit(buf: &[u8], from: usize, rule: HotRule) -> Option<usize> {
    let full = buf.len() / BLOCK;
    let mut k = from / BLOCK;
    if k < full {
        let mut prev = if k > 0 {
            classify(block(buf, k - 1))
        } else {
            Masks::default()
        };
        let mut cur = classify(block(buf, k));
        let mut first = true;
        while k < full {
            let next = if k + 1 < full {
                classify(block(buf, k + 1))
            } else {
                Masks::default()
            };
            let mut digits = cur.digit;
            if first {
                digits &= !0u64 << (from % BLOCK);
                first = false;
            }
            if digits != 0 {
                let edge = k == 0 || k + 1 >= full;
                let hot = edge
                    || cur.digit.count_ones() + next.digit.count_ones() >= rule.min_digits
                    || run_ends_in(prev, cur, rule.run_len)
                    || run_ends_in(cur, next, rule.run_len);
                if hot {
                    return Some(k * BLOCK + digits.trailing_zeros() as usize);
                }
            }
            prev = cur;
            cur = next;
            k += 1;
        }
    }
    let start = (full * BLOCK).max(from);
    buf.get(start..)?
        .iter()
        .position(u8::is_ascii_digit)
        .map(|p| start + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANY: HotRule = HotRule {
        min_digits: 1,
        run_len: 64,
    };
    const NINE: HotRule = HotRule {
        min_digits: 9,
        run_len: 24,
    };

    #[test]
    fn classify_matches_the_byte_predicates() {
        let mut b = [0u8; BLOCK];
        for start in (0..256).step_by(BLOCK) {
            for (i, x) in b.iter_mut().enumerate() {
                *x = (start + i) as u8;
            }
            let m = classify(&b);
            for (i, &c) in b.iter().enumerate() {
                assert_eq!(m.digit >> i & 1 == 1, c.is_ascii_digit(), "digit {c:#x}");
                assert_eq!(
                    m.word >> i & 1 == 1,
                    (0x21..=0x7e).contains(&c),
                    "word {c:#x}"
                );
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
    fn with_every_digit_hot_it_is_a_plain_digit_search() {
        let text = b"abc 12 def 3 ".repeat(40);
        let mut from = 0;
        let mut got = Vec::new();
        while let Some(p) = next_hot_digit(&text, from, ANY) {
            got.push(p);
            from = p + 1;
        }
        let want: Vec<usize> = (0..text.len())
            .filter(|&i| text[i].is_ascii_digit())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn quiet_blocks_are_skipped_and_hot_ones_found() {
        // Sparse short numbers in prose: skipped, except in the edge blocks.
        let mut text = b"released in version 2 of the thing, see page 7 ok. ".repeat(20);
        let n = text.len();
        let first = next_hot_digit(&text, BLOCK, NINE);
        assert!(
            first.is_none_or(|p| p >= (n / BLOCK - 1) * BLOCK),
            "middle digits skipped: {first:?}"
        );
        // A card number in the middle makes its block and the one before hot.
        let at = 5 * BLOCK + 10;
        text[at..at + 19].copy_from_slice(b"4111 1111 1111 1111");
        let p = next_hot_digit(&text, BLOCK, NINE).expect("found");
        assert!((4 * BLOCK..at).contains(&p), "{p}");
        let mut from = p + 1;
        while let Some(q) = next_hot_digit(&text, from, NINE).filter(|&q| q < at) {
            from = q + 1;
        }
        assert_eq!(next_hot_digit(&text, from, NINE), Some(at));
        // So is a long token with few digits.
        let mut text = b"released in version 2 of the thing, see page 7 ok. ".repeat(20);
        let at = 7 * BLOCK + 30;
        text[at..at + 28].copy_from_slice(b"aGVsbG8gd29ybGQgaGVsbG8gd2xk");
        let mut from = BLOCK;
        let mut found = false;
        while let Some(p) = next_hot_digit(&text, from, NINE) {
            assert!(p >= 6 * BLOCK, "{p}");
            found |= (at..at + 28).contains(&p);
            from = p + 1;
        }
        assert!(found);
    }

    #[test]
    fn tail_and_short_buffers() {
        assert_eq!(next_hot_digit(b"", 0, NINE), None);
        assert_eq!(next_hot_digit(b"ab7", 0, NINE), Some(2));
        assert_eq!(next_hot_digit(b"ab7", 3, NINE), None);
        assert_eq!(next_hot_digit(b"ab7", 9, NINE), None);
    }
}
