//! The 64-byte block classification that finds break positions (punctuation,
//! too short or too long words, long digit runs) and the clean runs between
//! them that can hold a phrase.

use crate::scan::passes::blocks::BLOCK;
#[cfg(target_arch = "x86_64")]
use crate::scan::simd::{Avx2, Lanes, Sse2};

pub(super) const C_OTHER: u8 = 0;
pub(super) const C_LETTER: u8 = 1;
pub(super) const C_DIGIT: u8 = 2;
pub(super) const C_SEP: u8 = 3;
/// `.` or `)`: ends a numbering, otherwise a break.
pub(super) const C_DOT: u8 = 4;
/// `\`: starts an escape; `\n`, `\t`, `\r` separate, any other breaks.
pub(super) const C_BSLASH: u8 = 5;

pub(super) const CLASS: [u8; 256] = {
    let mut t = [C_OTHER; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = if c.is_ascii_alphabetic() {
            C_LETTER
        } else if c.is_ascii_digit() {
            C_DIGIT
        } else if (c >= 9 && c <= 13) || c == b' ' || c == b',' {
            C_SEP
        } else if c == b'.' || c == b')' {
            C_DOT
        } else if c == b'\\' {
            C_BSLASH
        } else {
            C_OTHER
        };
        b += 1;
    }
    t
};

/// Bit `i` set when byte `i` of a block is in the class.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Masks {
    pub(super) letter: u64,
    pub(super) digit: u64,
    pub(super) sep: u64,
    pub(super) dot: u64,
    pub(super) bslash: u64,
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
            let lower = L::fold_case(v);
            m.letter |= L::bits(L::range(lower, b'a', 26), l);
            m.digit |= L::bits(L::range(v, b'0', 10), l);
            // Tab, newline, vertical tab, form feed, CR; space; comma.
            let blank = L::range(v, 9, 5);
            m.sep |= L::bits(L::or(blank, L::or(L::eq(v, b' '), L::eq(v, b','))), l);
            m.dot |= L::bits(L::or(L::eq(v, b'.'), L::eq(v, b')')), l);
            m.bslash |= L::bits(L::eq(v, b'\\'), l);
        }
    }
    m
}

#[cfg(target_arch = "x86_64")]
#[inline]
pub(super) fn classify_sse2(b: &[u8; BLOCK]) -> Masks {
    // SAFETY: SSE2 is part of the x86_64 baseline.
    unsafe { classify_with::<Sse2>(b) }
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn classify_avx2(b: &[u8; BLOCK]) -> Masks {
    unsafe { classify_with::<Avx2>(b) }
}

/// Portable classification (also the reference the SIMD versions are tested against).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
pub(super) fn classify_scalar(b: &[u8; BLOCK]) -> Masks {
    let mut m = Masks::default();
    for (i, &c) in b.iter().enumerate() {
        let k = CLASS[usize::from(c)];
        m.letter |= u64::from(k == C_LETTER) << i;
        m.digit |= u64::from(k == C_DIGIT) << i;
        m.sep |= u64::from(k == C_SEP) << i;
        m.dot |= u64::from(k == C_DOT) << i;
        m.bslash |= u64::from(k == C_BSLASH) << i;
    }
    m
}

/// Block classifier chosen once per stream.
#[derive(Clone, Copy, Debug)]
pub(super) enum Simd {
    #[cfg(target_arch = "x86_64")]
    Sse2,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(not(target_arch = "x86_64"))]
    Scalar,
}

impl Simd {
    pub(super) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            // Every AVX2 CPU has these, but a hypervisor may hide some.
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("popcnt")
                && std::arch::is_x86_feature_detected!("bmi1")
                && std::arch::is_x86_feature_detected!("lzcnt")
            {
                Simd::Avx2
            } else {
                Simd::Sse2
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Simd::Scalar
        }
    }

    #[inline]
    pub(super) fn classify(self, b: &[u8; BLOCK]) -> Masks {
        match self {
            #[cfg(target_arch = "x86_64")]
            Simd::Sse2 => classify_sse2(b),
            // SAFETY: chosen only when the CPU has AVX2.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { classify_avx2(b) },
            #[cfg(not(target_arch = "x86_64"))]
            Simd::Scalar => classify_scalar(b),
        }
    }
}

/// `m` shifted `k` bytes later, the previous block's bytes (`h`, most
/// recent at bit 63) shifted in.
#[inline]
pub(super) fn later(m: u64, h: u64, k: u32) -> u64 {
    (m << k) | (h >> (64 - k))
}

/// `letters` less the `n`, `t`, `r` of escapes: bytes at the `escaped`
/// positions of `blk` (those right after a backslash) are looked at one by
/// one, as backslashes are rare.
#[cold]
pub(super) fn unescape(letters: u64, mut escaped: u64, blk: &[u8]) -> u64 {
    let mut w = letters;
    while escaped != 0 {
        let i = escaped.trailing_zeros();
        if matches!(blk.get(i as usize), Some(b'n' | b't' | b'r')) {
            w &= !(1 << i);
        }
        escaped &= escaped - 1;
    }
    w
}

/// A run of at least `len` zero bits in `x`.
#[inline]
pub(super) fn has_zero_run(x: u64, len: usize) -> bool {
    let mut r = !x;
    let mut have = 1;
    while have < len {
        let s = (len - have).min(have);
        r &= r >> s;
        have += s;
    }
    r != 0
}
