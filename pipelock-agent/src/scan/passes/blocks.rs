//! 64-byte block classification for the digit-driven passes (`numeric`,
//! `runs`): each block becomes byte-class bitmasks (digits, letters,
//! separators, base64 extras) with SSE2 or AVX2, once per chunk
//! ([`HotBlocks`]), and a block whose two-block neighbourhood cannot hold a
//! token those passes report is skipped without reading its bytes one by one.

/// Bytes per block.
pub const BLOCK: usize = 64;

#[cfg(target_arch = "x86_64")]
use crate::scan::simd::{Avx2, Lanes, Sse2};

/// Bit `i` set when byte `i` of a block is in the class.
#[derive(Clone, Copy, Debug, Default)]
struct Masks {
    digit: u64,
    upper: u64,
    lower: u64,
    space: u64,
    dash: u64,
    /// `+ / =`: base64 beyond the alphanumerics.
    std_extra: u64,
    /// `- _ =`: base64url beyond the alphanumerics.
    url_extra: u64,
    pct: u64,
}

/// Digit mask of a block, one generic body for every lane width.
///
/// # Safety
/// As for [`Lanes`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn digits_with<L: Lanes>(b: &[u8; BLOCK]) -> u64 {
    unsafe { (0..L::N).fold(0, |m, l| m | L::bits(L::range(L::load(b, l), b'0', 10), l)) }
}

/// All masks of a block, one generic body for every lane width.
///
/// # Safety
/// As for [`Lanes`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn classify_with<L: Lanes>(b: &[u8; BLOCK]) -> Masks {
    let mut m = Masks::default();
    unsafe {
        for l in 0..L::N {
            let v = L::load(b, l);
            let equals = L::eq(v, b'=');
            let dash = L::eq(v, b'-');
            m.digit |= L::bits(L::range(v, b'0', 10), l);
            m.upper |= L::bits(L::range(v, b'A', 26), l);
            m.lower |= L::bits(L::range(v, b'a', 26), l);
            m.space |= L::bits(L::eq(v, b' '), l);
            m.dash |= L::bits(dash, l);
            m.std_extra |= L::bits(L::or(L::or(L::eq(v, b'+'), L::eq(v, b'/')), equals), l);
            m.url_extra |= L::bits(L::or(L::or(dash, L::eq(v, b'_')), equals), l);
            m.pct |= L::bits(L::eq(v, b'%'), l);
        }
    }
    m
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn digits(b: &[u8; BLOCK]) -> u64 {
    // SAFETY: SSE2 is always present on x86_64.
    unsafe { digits_with::<Sse2>(b) }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn classify(b: &[u8; BLOCK]) -> Masks {
    // SAFETY: SSE2 is always present on x86_64.
    unsafe { classify_with::<Sse2>(b) }
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn digits_avx2(b: &[u8; BLOCK]) -> u64 {
    unsafe { digits_with::<Avx2>(b) }
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn classify_avx2(b: &[u8; BLOCK]) -> Masks {
    unsafe { classify_with::<Avx2>(b) }
}

#[cfg(not(target_arch = "x86_64"))]
fn digits(b: &[u8; BLOCK]) -> u64 {
    b.iter()
        .enumerate()
        .fold(0, |m, (i, c)| m | u64::from(c.is_ascii_digit()) << i)
}

#[cfg(not(target_arch = "x86_64"))]
fn classify(b: &[u8; BLOCK]) -> Masks {
    let mut m = Masks::default();
    for (i, &c) in b.iter().enumerate() {
        m.digit |= u64::from(c.is_ascii_digit()) << i;
        m.upper |= u64::from(c.is_ascii_uppercase()) << i;
        m.lower |= u64::from(c.is_ascii_lowercase()) << i;
        m.space |= u64::from(c == b' ') << i;
        m.dash |= u64::from(c == b'-') << i;
        m.std_extra |= u64::from(matches!(c, b'+' | b'/' | b'=')) << i;
        m.url_extra |= u64::from(matches!(c, b'-' | b'_' | b'=')) << i;
        m.pct |= u64::from(c == b'%') << i;
    }
    m
}

/// Bit `i` set when the `len` bits of `m` ending at `i` (or, with `BEGIN`,
/// beginning at `i`) are all set.
#[inline]
fn full_runs<const BEGIN: bool>(m: u128, len: u32) -> u128 {
    let mut r = m;
    let mut have = 1;
    while have < len {
        let s = (len - have).min(have);
        r &= if BEGIN { r >> s } else { r << s };
        have += s;
    }
    r
}

/// Bit `i` set when bits `i + 1 - len ..= i` of `m` are all set.
#[inline]
fn run_ends(m: u128, len: u32) -> u128 {
    full_runs::<false>(m, len)
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

/// Whether the window holds hex pairs joined by single spaces
/// (`41 4b 49 41`, a hex dump), [`delimited::MIN_BYTES`] of them in a row:
/// a shape Hyperscan has no literal for (`delimited`). Alphanumerics stand
/// in for hex digits; the decoder reads the bytes. Printable ASCII in hex
/// has a digit in every pair, so the window is classified whenever one is
/// there. Colons and commas are not looked for: one more byte class cost
/// the classification about 3 % (`cargo xtask bench scan`), so pairs joined
/// by them are decoded in URLs and headers only.
///
/// [`delimited::MIN_BYTES`]: super::delimited::MIN_BYTES
#[inline(always)]
fn pairs_hot(lo: Masks, hi: Masks) -> bool {
    // Cheapest first: a digit in each of `MIN_BYTES - 1` pairs at least.
    if lo.digit.count_ones() + hi.digit.count_ones() < super::delimited::MIN_BYTES as u32 - 1 {
        return false;
    }
    let al = wide(
        lo.digit | lo.upper | lo.lower,
        hi.digit | hi.upper | hi.lower,
    );
    let sep = wide(lo.space, hi.space);
    // Cheap first: printable ASCII in hex has a digit two bytes before
    // each separator; prose seldom has seven such in one window.
    let d = wide(lo.digit, hi.digit);
    if (d & (sep >> 2)).count_ones() < super::delimited::MIN_BYTES as u32 - 1 {
        return false;
    }
    // A separator with exactly two alphanumerics before it and two after.
    let s = sep & (al << 1) & (al << 2) & !(al << 3) & (al >> 1) & (al >> 2);
    if s == 0 {
        return false;
    }
    // `MIN_BYTES - 1` separators three bytes apart.
    let mut chain = s;
    for k in 1..super::delimited::MIN_BYTES as u32 - 1 {
        chain &= s >> (3 * k);
    }
    chain != 0
}

/// Bit `i` set when bits `i ..= i + len - 1` of `m` are all set.
#[inline]
fn run_begins(m: u128, len: u32) -> u128 {
    full_runs::<true>(m, len)
}

/// Whether the window's low and high block each hold a digit inside a run
/// of at least `run` bytes of one encoded alphabet (base64: alphanumerics
/// and `+ / =`; base64url: alphanumerics and `- _ =`; with a `%` nearby,
/// any of them and `%`). A run in a part (the bytes between dots) that
/// mixes `+ /` with `- _` and has no `%` decodes no way
/// (`runs::may_decode`), so a path such as
/// `lib/sf_performance_bessel_11.cpp` is not worth reading.
// Inlined so that it is compiled into the AVX2/BMI loop with that loop's
// instruction set (about 15% of the classification pass).
#[inline(always)]
fn run_digits(lo: Masks, hi: Masks, run: u32) -> [bool; 2] {
    let d = wide(lo.digit, hi.digit);
    let al = d | wide(lo.upper | lo.lower, hi.upper | hi.lower);
    let std_extra = wide(lo.std_extra, hi.std_extra);
    let url_extra = wide(lo.url_extra, hi.url_extra);
    let std = al | std_extra;
    let url = al | url_extra;
    // Every byte of a long run: spread up from where a long run starts
    // (most windows have none).
    let over = |m: u128| match run_begins(m, run) & !(m << 1) {
        0 => 0,
        starts => fill_up(starts, m),
    };
    let long = over(std) | over(url);
    let pct = wide(lo.pct, hi.pct);
    if pct != 0 {
        let x = (long | over(std | url | pct)) & d;
        return [x as u64 != 0, (x >> 64) as u64 != 0];
    }
    let x = long & d;
    if x == 0 {
        return [false; 2];
    }
    // A part is told by its last byte, which a fill up from any byte of
    // the part reaches. The part may reach out of the window; a mix seen
    // inside it is a mix all the same.
    let part = std | url;
    let last = part & !(part >> 1);
    let mixed =
        last & fill_up(std_extra & !url_extra, part) & fill_up(url_extra & !std_extra, part);
    let unmixed = |half: u128| last & !mixed & fill_up(x & half, part) != 0;
    [
        unmixed(u128::from(u64::MAX)),
        unmixed(u128::from(u64::MAX) << 64),
    ]
}

/// The bits of `m` reached from a bit of `seed` going up through set bits
/// of `m`. Adding the seeds to `m` carries each one up to the end of its
/// run (seeds above it in the same run are toggled back by the `| s`), and
/// the bit a carry lands on is outside `m`.
#[inline]
fn fill_up(seed: u128, m: u128) -> u128 {
    let s = seed & m;
    ((m.wrapping_add(s) ^ m) & m) | s
}

/// Shortest encoded run the run pass reports.
const RUN: u32 = super::runs::RUN_MIN_LEN as u32;

/// Which 64-byte blocks of one buffer the numeric and encoded-run passes must
/// look at byte by byte: one bit per block, computed in one classification
/// pass and shared by both. Blocks whose neighbours lie in chunks not seen
/// (the last full one and a partial tail of a stream chunk; the first too
/// when the bytes before it are not given) are always marked, so nothing
/// split across chunks is missed. Reused across chunks; its size follows
/// the chunk size.
#[derive(Clone, Debug, Default)]
pub struct HotBlocks {
    numeric: Vec<u64>,
    runs: Vec<u64>,
    /// Where hex pairs joined by spaces were seen ([`pairs_hot`], and at a
    /// stream chunk's end [`super::delimited::has_pairs`]): from the start
    /// of the first window holding them to the end of the last.
    pairs: Option<(usize, usize)>,
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

/// What lies around a classified buffer.
#[derive(Clone, Copy, Debug)]
enum Around<'a> {
    /// A chunk of a stream whose earlier bytes are unknown: its first and
    /// last blocks are always marked.
    Unknown,
    /// A chunk of a stream after these bytes (the last up to 64 bytes
    /// before it; empty at the stream start): its last block is always
    /// marked, as the next chunk is not known yet.
    After(&'a [u8]),
    /// A whole body: nothing lies before or after it.
    Nothing,
}

impl HotBlocks {
    /// Classifies `buf`, one chunk of a stream, not knowing what came
    /// before: its first and last blocks are always marked.
    pub fn compute(&mut self, buf: &[u8]) {
        self.compute_for(buf, Around::Unknown);
    }

    /// Classifies `buf`, the chunk of a stream that follows `prev` (the
    /// bytes right before it, any length, empty at the stream start): only
    /// its last block is always marked (its neighbour is in the next chunk).
    pub fn compute_after(&mut self, prev: &[u8], buf: &[u8]) {
        self.compute_for(buf, Around::After(prev));
    }

    /// Classifies `buf`, a whole body: nothing lies before or after it, so
    /// its first and last blocks are marked only when they may hold a token.
    pub fn compute_whole(&mut self, buf: &[u8]) {
        self.compute_for(buf, Around::Nothing);
    }

    fn compute_for(&mut self, buf: &[u8], around: Around) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("bmi1")
            && std::is_x86_feature_detected!("bmi2")
        {
            // SAFETY: AVX2, BMI1 and BMI2 were just detected.
            unsafe { self.compute_avx2(buf, around) };
            return;
        }
        self.compute_with(buf, around, digits, classify);
    }

    /// # Safety
    /// The CPU must support AVX2, BMI1 and BMI2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,bmi1,bmi2")]
    unsafe fn compute_avx2(&mut self, buf: &[u8], around: Around) {
        // SAFETY: the caller checked AVX2, BMI1 and BMI2.
        self.compute_with(
            buf,
            around,
            |b| unsafe { digits_avx2(b) },
            |b| unsafe { classify_avx2(b) },
        );
    }

    #[inline(always)]
    fn compute_with(
        &mut self,
        buf: &[u8],
        around: Around,
        digits: impl Fn(&[u8; BLOCK]) -> u64,
        classify: impl Fn(&[u8; BLOCK]) -> Masks,
    ) {
        // Zero bytes belong to no class: they stand for "nothing here".
        const ZERO: [u8; BLOCK] = [0; BLOCK];
        let nblocks = buf.len().div_ceil(BLOCK);
        let words = nblocks.div_ceil(64);
        for v in [&mut self.numeric, &mut self.runs] {
            v.clear();
            v.resize(words, 0);
        }
        self.pairs = None;
        let full = buf.len() / BLOCK;
        let fulls = buf
            .chunks_exact(BLOCK)
            .filter_map(|b| <&[u8; BLOCK]>::try_from(b).ok());
        // The block before the first: the bytes before it, right-aligned.
        let mut before = ZERO;
        if let Around::After(prev) = around {
            let prev = &prev[prev.len().saturating_sub(BLOCK)..];
            before[BLOCK - prev.len()..].copy_from_slice(prev);
        }
        if let Around::Nothing = around {
            // A zero block after the last, and the partial tail zero-padded.
            let rest = &buf[full * BLOCK..];
            let mut tail = ZERO;
            tail[..rest.len()].copy_from_slice(rest);
            let tail = (!rest.is_empty()).then_some(&tail);
            let seq = std::iter::once(&before)
                .chain(fulls)
                .chain(tail)
                .chain(std::iter::once(&ZERO));
            self.mark_windows(seq, digits, classify);
            return;
        }
        // The next chunk is unknown: everything from the last full block on
        // is marked, and the first block too when the previous is unknown.
        let first = usize::from(matches!(around, Around::Unknown)).min(nblocks);
        for k in (0..first).chain(full.saturating_sub(1)..nblocks) {
            set(&mut self.numeric, k);
            set(&mut self.runs, k);
        }
        if full >= 2 {
            self.mark_windows(std::iter::once(&before).chain(fulls), digits, classify);
        }
        // The windows above end at the last full block; hex pairs reaching
        // into the rest (or across a chunk too short for a window) are
        // looked for byte by byte, from where such a sequence reaching the
        // rest may begin (at most 63 + 23 bytes; 64 + 127 in a short chunk),
        // and only when a digit is there.
        if self.pairs.is_none() {
            // Bytes of the shortest sequence, less one.
            const REACH: usize = 3 * super::delimited::MIN_BYTES - 2;
            let has_digit = |b: &[u8]| b.iter().any(u8::is_ascii_digit);
            let found = if full >= 2 {
                let end = &buf[full * BLOCK - REACH..];
                buf.len() > full * BLOCK && has_digit(end) && super::delimited::has_pairs(end)
            } else if has_digit(buf) {
                let prev = match around {
                    Around::After(prev) => &prev[prev.len().saturating_sub(BLOCK)..],
                    _ => &[],
                };
                let mut joined = [0u8; 3 * BLOCK];
                joined[..prev.len()].copy_from_slice(prev);
                joined[prev.len()..prev.len() + buf.len()].copy_from_slice(buf);
                super::delimited::has_pairs(&joined[..prev.len() + buf.len()])
            } else {
                false
            };
            if found {
                self.pairs = Some(((full * BLOCK).saturating_sub(REACH), buf.len()));
            }
        }
    }

    /// Whether the buffer last classified holds hex pairs joined by spaces
    /// (`41 4b 49…`), which only the delimited pass decodes.
    pub fn pairs(&self) -> bool {
        self.pairs.is_some()
    }

    /// The first and last byte offsets of where [`Self::pairs`] saw them.
    pub fn pairs_span(&self) -> Option<(usize, usize)> {
        self.pairs
    }

    /// Marks the blocks of `seq` (whose first block is numbered -1 and is
    /// never marked) with a digit in a hot window of two blocks: block k is
    /// hot when the window before or after it is. Full masks are computed
    /// only where a digit is near.
    #[inline(always)]
    fn mark_windows<'a>(
        &mut self,
        mut seq: impl Iterator<Item = &'a [u8; BLOCK]>,
        digits: impl Fn(&[u8; BLOCK]) -> u64,
        classify: impl Fn(&[u8; BLOCK]) -> Masks,
    ) {
        let Some(mut cur) = seq.next() else {
            return;
        };
        let mut d_cur = digits(cur);
        let mut m_cur: Option<Masks> = None;
        let mut prev_numeric = false;
        let mut prev_runs = false;
        // `k` numbers `next`; `cur` is block k - 1.
        for (k, next) in seq.enumerate() {
            let d_next = digits(next);
            let mut m_next = None;
            let (w_numeric, w_runs) = if d_cur | d_next != 0 {
                let mc = *m_cur.get_or_insert_with(|| classify(cur));
                let mn = *m_next.insert(classify(next));
                if pairs_hot(mc, mn) {
                    // `cur` is block k - 1 of the buffer (-1: the bytes before).
                    let at = k.saturating_sub(1) * BLOCK;
                    let end = at + 2 * BLOCK;
                    self.pairs = Some(self.pairs.map_or((at, end), |(a, _)| (a, end)));
                }
                (numeric_hot(mc, mn), run_digits(mc, mn, RUN))
            } else {
                (false, [false; 2])
            };
            if k > 0 && d_cur != 0 {
                if prev_numeric || w_numeric {
                    set(&mut self.numeric, k - 1);
                }
                if prev_runs || w_runs[0] {
                    set(&mut self.runs, k - 1);
                }
            }
            prev_numeric = w_numeric;
            prev_runs = w_runs[1];
            cur = next;
            d_cur = d_next;
            m_cur = m_next;
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
            let at = k * BLOCK;
            let lo = at.max(from);
            if let Some(block) = buf.get(at..at + BLOCK) {
                let block = <&[u8; BLOCK]>::try_from(block).ok()?;
                let d = digits(block) & (u64::MAX << (lo - at));
                if d != 0 {
                    return Some(at + d.trailing_zeros() as usize);
                }
            } else if let Some(p) = buf.get(lo..)?.iter().position(u8::is_ascii_digit) {
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
    use crate::scan::passes::{
        numeric::{NumericHit, NumericScanner},
        runs::RunScanner,
    };

    fn hot_digits(text: &[u8], pass: Pass) -> Vec<usize> {
        hot_digits_of(text, pass, false)
    }

    fn hot_digits_of(text: &[u8], pass: Pass, whole: bool) -> Vec<usize> {
        let mut hot = HotBlocks::default();
        if whole {
            hot.compute_whole(text);
        } else {
            hot.compute(text);
        }
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
                assert_eq!(bit(m.std_extra), b"+/=".contains(&c), "{c:#x}");
                assert_eq!(bit(m.url_extra), b"-_=".contains(&c), "{c:#x}");
                assert_eq!(bit(m.pct), c == b'%', "{c:#x}");
                assert_eq!(digits(&b), m.digit);
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: AVX2 was just detected.
                    let a = unsafe { classify_avx2(&b) };
                    assert_eq!(format!("{a:?}"), format!("{m:?}"));
                    assert_eq!(unsafe { digits_avx2(&b) }, m.digit);
                }
            }
        }
    }

    #[test]
    fn hex_pairs_are_flagged_wherever_they_lie() {
        let hex: String = b"xoxb-7912928353-wuuGHJpo2dK"
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        let clean = "Meet on 12 03 2024 at 10:30:00, room 4 b; a 1 b 2. ".repeat(40);
        {
            let seq = hex.clone();
            for at in [0, 1, 63, 64, 100, 500, clean.len()] {
                let text = format!("{}{seq}{}", &clean[..at], &clean[at..]);
                let mut hot = HotBlocks::default();
                hot.compute_whole(text.as_bytes());
                assert!(hot.pairs(), "whole, at {at}");
                // In chunks: a chunk holding the sequence, or the next one
                // (which sees the last bytes before it), flags it.
                for size in [17, 64, 100, 128, 200, 1000] {
                    let mut flagged = false;
                    for (k, c) in text.as_bytes().chunks(size).enumerate() {
                        let start = k * size;
                        hot.compute_after(&text.as_bytes()[start.saturating_sub(64)..start], c);
                        flagged |= hot.pairs();
                    }
                    assert!(flagged, "chunks of {size}, at {at}");
                }
            }
        }
        let mut hot = HotBlocks::default();
        hot.compute_whole(clean.as_bytes());
        assert!(!hot.pairs());
        for c in clean.as_bytes().chunks(100) {
            hot.compute_after(&[], c);
            assert!(!hot.pairs());
        }
    }

    /// Every block marked: the passes then read every digit.
    fn all_hot(len: usize) -> HotBlocks {
        let words = len.div_ceil(BLOCK).div_ceil(64);
        HotBlocks {
            numeric: vec![!0; words],
            runs: vec![!0; words],
            pairs: Some((0, len)),
        }
    }

    /// Numeric and run findings of `text` fed in `chunks`, with the blocks
    /// judged (`judged`) or all read.
    fn findings(text: &[u8], chunks: usize, judged: bool) -> (Vec<NumericHit>, Vec<Vec<u8>>) {
        let mut num = NumericScanner::default();
        let mut runs = RunScanner::new(4096);
        let (mut nh, mut rh) = (Vec::new(), Vec::new());
        let mut hot = HotBlocks::default();
        let mut done = 0;
        for c in text.chunks(chunks) {
            if !judged {
                hot = all_hot(c.len());
            } else if chunks >= text.len() {
                hot.compute_whole(c);
            } else {
                hot.compute_after(&text[..done], c);
            }
            num.feed_with(c, &hot, &mut nh);
            runs.feed_with(c, &hot, &mut rh);
            done += c.len();
        }
        num.finish(&mut nh);
        runs.finish(&mut rh);
        (nh, rh)
    }

    #[test]
    fn judged_blocks_find_what_reading_every_block_finds() {
        // Random prose with digits, words, separators, and tokens of every
        // shape (valid and not): skipping blocks must not change a finding,
        // whole or streamed in chunks.
        let words: [&[u8]; 21] = [
            b"the",
            b"licence",
            b"section",
            b"2",
            b"v1.0",
            b"1999-2005,",
            b"GPL-2+",
            b"THE SOFTWARE IS",
            b"responsibilities",
            b"(c)",
            b"12",
            b"2024",
            b"abc123def",
            b"path/to/file_9.txt",
            b"ID 4411",
            b"x",
            // Paths whose long `_` runs hold digits (mixed: never decoded),
            // and encodings next to them in one run.
            b"libs/multiprecision/performance/sf_performance_bessel_11.cpp",
            b"performance_files/sf_performance_poly_08_and_more.cpp",
            b"docs/v2/sf%2Fperformance_bessel_11_files",
            b"Z2hwX2FCM2RFNWdIN2pLOW1OMXBRMnNUNHZXNnlaOA.sf_perf/x_1",
            b"nzv_fiHApNXm9wgZKjtMXf5vcIHyo7TF1uf4CRorPE0/x",
        ];
        let seps: [&[u8]; 5] = [b" ", b" ", b"\n", b", ", b" - "];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut found = 0;
        for round in 0..400 {
            let mut text = Vec::new();
            while text.len() < 1500 {
                let r = next();
                if r % 9 == 0 {
                    let (token, _) = TOKENS[(r >> 8) as usize % TOKENS.len()];
                    text.extend_from_slice(token);
                    if r % 2 == 0 {
                        // A near miss: one character changed.
                        let i = text.len() - 1 - (r >> 20) as usize % token.len();
                        text[i] = if text[i].is_ascii_digit() { b'7' } else { b'Q' };
                    }
                } else {
                    text.extend_from_slice(words[(r >> 8) as usize % words.len()]);
                }
                text.extend_from_slice(seps[(r >> 16) as usize % seps.len()]);
            }
            let want = findings(&text, text.len(), false);
            found += want.0.len() + want.1.len();
            assert_eq!(
                findings(&text, text.len(), true),
                want,
                "round {round}, whole"
            );
            let chunks = 64 + (next() % 400) as usize;
            assert_eq!(
                findings(&text, chunks, true),
                want,
                "round {round}, chunks of {chunks}"
            );
        }
        assert!(found > 300, "only {found} findings");
    }

    #[test]
    fn fill_up_spreads_through_connected_bits_only() {
        let m: u128 = 0b0111_1110_0111 | (0xFFFF << 100);
        assert_eq!(fill_up(0b0000_0100_0000, m), 0b0111_1100_0000);
        assert_eq!(
            fill_up(0b0001_0100_0000, m),
            0b0111_1100_0000,
            "two seeds, one run"
        );
        assert_eq!(fill_up(0b0000_0000_0010, m), 0b0000_0000_0110);
        assert_eq!(fill_up(0b1000_0000_0000, m), 0, "seed outside m");
        assert_eq!(fill_up(1 << 100, m), 0xFFFF << 100, "to the top of its run");
        assert_eq!(fill_up(1 << 115, m), 1 << 115);
        assert_eq!(fill_up(m, m), m);
        // Long runs: the fill crosses the 64-bit halves; a run up to the
        // top bit loses its carry.
        assert_eq!(fill_up(1, u128::MAX), u128::MAX);
        assert_eq!(fill_up(1 << 60, u128::MAX << 60), u128::MAX << 60);
        // Against one step at a time, on every seed of a ragged mask.
        let ragged: u128 = 0x0F0F_FF00_7FFF_0001_FFFF_FFFF_0E0E_F0F3;
        for i in 0..128 {
            let mut want = 0;
            let mut j = i;
            while j < 128 && ragged >> j & 1 == 1 {
                want |= 1 << j;
                j += 1;
            }
            assert_eq!(fill_up(1 << i, ragged), want, "seed {i}");
        }
    }

    #[test]
    fn paths_mixing_alphabets_leave_blocks_cold() {
        let line = b" libs/multiprecision/performance/sf_files/sf_performance_bessel_11.cpp\n";
        let text = line.repeat(60);
        // Only where a `_` run starts a window (its `/` just out of
        // sight) is a digit read: a few of the 60 lines.
        let hot = hot_digits_of(&text, Pass::Runs, true);
        assert!(hot.len() <= 6, "{} digits read: {hot:?}", hot.len());
        // The same names with a `%` in them may be percent-encoded: read.
        let text = b" libs/x%2Fprecision/sf_performance_bessel_11.cpp\n".repeat(60);
        let mut hot = HotBlocks::default();
        hot.compute_whole(&text);
        assert!(hot.next_digit(&text, 0, Pass::Runs).is_some());
    }

    #[test]
    fn run_ends_marks_long_runs_only() {
        let m: u128 = 0b0111_1110_0111;
        assert_eq!(run_ends(m, 3), 0b0111_1000_0100);
        assert_eq!(run_ends(m, 6), 0b0100_0000_0000);
        assert_eq!(run_ends(m, 7), 0);
        assert_eq!(run_ends(u128::MAX, 64).count_ones(), 128 - 63);
        assert_eq!(run_begins(m, 3), 0b0001_1110_0001);
        assert_eq!(run_begins(m, 6), 0b0000_0010_0000);
        assert_eq!(run_begins(m, 7), 0);
        assert_eq!(run_begins(u128::MAX, 64).count_ones(), 128 - 63);
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

    /// Tokens of every shape either pass reports.
    const TOKENS: [(&[u8], Pass); 12] = [
        (b"4111 1111 1111 1111", Pass::Numeric),
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
        (b"d2hvYW1pP/9+dGhlcmU/Pz8/Pz8/", Pass::Runs),
        (b"d2hvYW1pP_9-dGhlcmU_Pz8_Pz8_", Pass::Runs),
        (b"secret%3Dabc%26token%3Dxyz123", Pass::Runs),
    ];

    /// Writes `token` over `text` at `at`, set apart by a space each side
    /// (glued to the prose, a run may become part of a path).
    fn place(text: &mut [u8], at: usize, token: &[u8]) {
        text[at..at + token.len()].copy_from_slice(token);
        if let Some(b) = at.checked_sub(1).and_then(|i| text.get_mut(i)) {
            *b = b' ';
        }
        if let Some(b) = text.get_mut(at + token.len()) {
            *b = b' ';
        }
    }

    #[test]
    fn whole_bodies_mark_their_edges_only_when_hot() {
        let prose = b"Copyright 1999-2005, 2007 Foo; version 2.0 of 2019-03-14 ok. ".repeat(12);
        for len in [0, 1, 63, 64, 65, 127, 128, 500, prose.len()] {
            let text = &prose[..len];
            assert!(hot_digits_of(text, Pass::Numeric, true).is_empty(), "{len}");
            assert!(hot_digits_of(text, Pass::Runs, true).is_empty(), "{len}");
        }
        // A token at every offset of the first and last two blocks, in
        // bodies ending on and off a block boundary.
        for (token, pass) in TOKENS {
            for len in [8 * BLOCK, 8 * BLOCK + 37] {
                let starts = (0..2 * BLOCK).chain(len - 2 * BLOCK..=len - token.len());
                for at in starts {
                    let mut text = prose[..len].to_vec();
                    place(&mut text, at, token);
                    let first = token.iter().position(u8::is_ascii_digit).map(|p| at + p);
                    let got = hot_digits_of(&text, pass, true);
                    assert!(
                        got.iter().any(|&p| Some(p) == first),
                        "{} at {at} of {len}: first digit not visited",
                        String::from_utf8_lossy(token)
                    );
                }
            }
        }
    }

    #[test]
    fn quiet_blocks_are_skipped_and_hot_ones_found() {
        // Dates, versions and years in prose: nothing the passes report.
        let prose = b"Copyright 1999-2005, 2007 Foo; version 2.0 of 2019-03-14 ok. \
            See /usr/share/common-licenses/GPL-2 and https://example.org/doc/copyright-format/1.0/ "
            .repeat(15);
        let n = prose.len();
        let edge = |p: &usize| *p < BLOCK || *p >= (n / BLOCK - 1) * BLOCK;
        assert!(hot_digits(&prose, Pass::Numeric).iter().all(edge));
        assert!(hot_digits(&prose, Pass::Runs).iter().all(edge));
        for (token, pass) in TOKENS {
            for at in 5 * BLOCK..7 * BLOCK {
                let mut text = prose.clone();
                place(&mut text, at, token);
                let first = token.iter().position(u8::is_ascii_digit).map(|p| at + p);
                for whole in [false, true] {
                    let got = hot_digits_of(&text, pass, whole);
                    assert!(
                        got.iter().any(|&p| Some(p) == first),
                        "{} at {at}: first digit not visited",
                        String::from_utf8_lossy(token)
                    );
                }
                let got = hot_digits(&text, pass);
                let mut blocks: Vec<usize> = got.iter().map(|p| p / BLOCK).collect();
                blocks.dedup();
                assert!(blocks.len() <= 7, "too few blocks skipped: {blocks:?}");
            }
        }
    }
}
