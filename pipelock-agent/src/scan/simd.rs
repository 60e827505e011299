//! The x86_64 SIMD primitives the 64-byte block classifiers (`blocks`,
//! `seed`) are written in: a classifier is one generic body over [`Lanes`],
//! instantiated for SSE2 (the x86_64 baseline, four 16-byte lanes) and for
//! AVX2 (two 32-byte lanes, behind a runtime check).
use std::arch::x86_64::{
    __m128i, __m256i, _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8,
    _mm_or_si128, _mm_set1_epi8, _mm_sub_epi8, _mm_xor_si128, _mm256_cmpeq_epi8, _mm256_cmpgt_epi8,
    _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256, _mm256_set1_epi8, _mm256_sub_epi8,
    _mm256_xor_si256,
};

use super::passes::blocks::BLOCK;

/// One block as `N` vector lanes; each operation works on one lane.
///
/// # Safety
/// Every function needs the instruction set of the implementation (SSE2 is
/// always there on x86_64; AVX2 only after a runtime check) and `lane < N`.
pub trait Lanes {
    type V: Copy;
    const N: usize;
    unsafe fn load(b: &[u8; BLOCK], lane: usize) -> Self::V;
    /// Bytes in `lo..lo + len` (unsigned).
    unsafe fn range(v: Self::V, lo: u8, len: i8) -> Self::V;
    unsafe fn eq(v: Self::V, c: u8) -> Self::V;
    unsafe fn or(a: Self::V, b: Self::V) -> Self::V;
    /// ASCII letters folded to lower case (`| 0x20`; other bytes move too).
    unsafe fn fold_case(v: Self::V) -> Self::V;
    /// The lane's byte mask, placed at its bit offset in the block.
    unsafe fn bits(x: Self::V, lane: usize) -> u64;
}

/// Four 16-byte lanes.
pub struct Sse2;

/// Two 32-byte lanes.
pub struct Avx2;

impl Lanes for Sse2 {
    type V = __m128i;
    const N: usize = BLOCK / 16;

    #[inline(always)]
    unsafe fn load(b: &[u8; BLOCK], lane: usize) -> __m128i {
        // SAFETY (caller): lane < 4, so the 16 bytes are inside the block.
        unsafe { _mm_loadu_si128(b.as_ptr().add(16 * lane).cast::<__m128i>()) }
    }

    #[inline(always)]
    unsafe fn range(v: __m128i, lo: u8, len: i8) -> __m128i {
        // (v - lo) ^ 0x80 < i8::MIN + len, signed.
        unsafe {
            _mm_cmplt_epi8(
                _mm_xor_si128(
                    _mm_sub_epi8(v, _mm_set1_epi8(lo as i8)),
                    _mm_set1_epi8(i8::MIN),
                ),
                _mm_set1_epi8(i8::MIN + len),
            )
        }
    }

    #[inline(always)]
    unsafe fn eq(v: __m128i, c: u8) -> __m128i {
        unsafe { _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8)) }
    }

    #[inline(always)]
    unsafe fn or(a: __m128i, b: __m128i) -> __m128i {
        unsafe { _mm_or_si128(a, b) }
    }

    #[inline(always)]
    unsafe fn fold_case(v: __m128i) -> __m128i {
        unsafe { _mm_or_si128(v, _mm_set1_epi8(0x20)) }
    }

    #[inline(always)]
    unsafe fn bits(x: __m128i, lane: usize) -> u64 {
        unsafe { u64::from(_mm_movemask_epi8(x) as u16) << (16 * lane) }
    }
}

impl Lanes for Avx2 {
    type V = __m256i;
    const N: usize = BLOCK / 32;

    #[inline(always)]
    unsafe fn load(b: &[u8; BLOCK], lane: usize) -> __m256i {
        // SAFETY (caller): lane < 2, so the 32 bytes are inside the block.
        unsafe { _mm256_loadu_si256(b.as_ptr().add(32 * lane).cast::<__m256i>()) }
    }

    #[inline(always)]
    unsafe fn range(v: __m256i, lo: u8, len: i8) -> __m256i {
        // i8::MIN + len > (v - lo) ^ 0x80, signed.
        unsafe {
            let t = _mm256_xor_si256(
                _mm256_sub_epi8(v, _mm256_set1_epi8(lo as i8)),
                _mm256_set1_epi8(i8::MIN),
            );
            _mm256_cmpgt_epi8(_mm256_set1_epi8(i8::MIN + len), t)
        }
    }

    #[inline(always)]
    unsafe fn eq(v: __m256i, c: u8) -> __m256i {
        unsafe { _mm256_cmpeq_epi8(v, _mm256_set1_epi8(c as i8)) }
    }

    #[inline(always)]
    unsafe fn or(a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_or_si256(a, b) }
    }

    #[inline(always)]
    unsafe fn fold_case(v: __m256i) -> __m256i {
        unsafe { _mm256_or_si256(v, _mm256_set1_epi8(0x20)) }
    }

    #[inline(always)]
    unsafe fn bits(x: __m256i, lane: usize) -> u64 {
        unsafe { u64::from(_mm256_movemask_epi8(x) as u32) << (32 * lane) }
    }
}
