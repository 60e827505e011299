//! [`SeedScanner`]: the streaming pass, skipping blocks with the
//! classification and running the tokeniser where a phrase may be.

use super::{
    MIN_SPAN, MIN_WORDS, PEND, SeedHit,
    classify::{Simd, has_zero_run, later, unescape},
    tokenise::Tokenizer,
    wordlist::table,
};
use crate::scan::passes::blocks::BLOCK;

/// Streaming state of the seed-phrase pass.
#[derive(Clone, Debug)]
pub struct SeedScanner {
    /// Absolute offset of the next byte fed.
    offset: u64,
    /// Class bits of the previous 64 bytes (most recent at bit 63).
    hist_letter: u64,
    hist_digit: u64,
    /// Letters that are not the `n`, `t`, `r` of an escape, and backslashes.
    hist_word_letter: u64,
    hist_bslash: u64,
    /// The tokeniser is running (a clean run could hold a phrase).
    tokenizing: bool,
    tk: Tokenizer,
    /// While skipping: the bytes since the last break position that came
    /// in earlier chunks, and the word starts among them.
    pend: [u8; PEND],
    pend_len: usize,
    pend_words: u32,
    /// The state after that break position is `Tok::Bad` (else `Tok::None`).
    pend_bad: bool,
    simd: Simd,
}

impl Default for SeedScanner {
    fn default() -> Self {
        SeedScanner {
            offset: 0,
            hist_letter: 0,
            hist_digit: 0,
            hist_word_letter: 0,
            hist_bslash: 0,
            tokenizing: false,
            tk: Tokenizer::default(),
            pend: [0; PEND],
            pend_len: 0,
            pend_words: 0,
            pend_bad: false,
            simd: Simd::detect(),
        }
    }
}

/// Bits `from..to` (`to` ≤ 64) set.
#[inline]
fn bit_range(from: u32, to: u32) -> u64 {
    let below = |k: u32| if k >= 64 { !0 } else { (1u64 << k) - 1 };
    below(to) & !below(from)
}

/// Word starts in the run after break position `last` (to the block end).
#[inline]
fn words_after(ws: u64, last: u32) -> u32 {
    (ws >> last >> 1).count_ones()
}

/// One classified block: break positions, which of them leave the
/// tokeniser in `Tok::Bad`, and word starts.
#[derive(Clone, Copy)]
struct BlockBits {
    breaks: u64,
    bad: u64,
    words: u64,
}

impl BlockBits {
    /// Position of the last break (the block has one).
    #[inline]
    fn last(&self) -> u32 {
        63 - self.breaks.leading_zeros()
    }

    /// A run inside this block (between two breaks, or after the last one)
    /// has enough word starts for a phrase. `n` is the block length.
    fn inner_run_may_hold(&self, n: usize) -> bool {
        let valid = if n == BLOCK { !0 } else { (1u64 << n) - 1 };
        let b = self.breaks | !valid;
        if !has_zero_run(b, MIN_SPAN) {
            return false;
        }
        let mut start = self.breaks.trailing_zeros() + 1;
        while start < 64 {
            let rest = b >> start;
            let end = if rest == 0 {
                64
            } else {
                start + rest.trailing_zeros()
            };
            if (self.words & bit_range(start, end)).count_ones() >= MIN_WORDS as u32 {
                return true;
            }
            start = end + 1;
        }
        false
    }
}

impl SeedScanner {
    /// A scanner that classifies blocks with `simd` (tests pin each kind).
    #[cfg(test)]
    pub(super) fn with_simd(simd: Simd) -> Self {
        SeedScanner {
            simd,
            ..SeedScanner::default()
        }
    }

    /// Scans the next chunk; phrases found are appended to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SeedHit>) {
        match self.simd {
            // SAFETY: chosen only when the CPU has AVX2, POPCNT, BMI1 and LZCNT.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { self.feed_avx2(chunk, out) },
            _ => self.feed_body(chunk, out),
        }
    }

    /// [`Self::feed`] compiled for AVX2 CPUs: the block classifier is inlined
    /// and bit counts are single instructions.
    ///
    /// # Safety
    /// The CPU must support AVX2, POPCNT, BMI1 and LZCNT.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,popcnt,bmi1,lzcnt")]
    unsafe fn feed_avx2(&mut self, chunk: &[u8], out: &mut Vec<SeedHit>) {
        self.feed_body(chunk, out);
    }

    /// The body of [`Self::feed`], compiled once per target.
    #[inline(always)]
    fn feed_body(&mut self, chunk: &[u8], out: &mut Vec<SeedHit>) {
        let base = self.offset;
        // While skipping: absolute offset just after the last break position,
        // and the word starts since then in earlier blocks.
        let mut pstart = base - self.pend_len as u64;
        let mut pwords = self.pend_words;
        let mut pos = 0;
        while pos < chunk.len() {
            let n = (chunk.len() - pos).min(BLOCK);
            let blk = &chunk[pos..pos + n];
            let bb = self.breaks(blk);
            let babs = base + pos as u64;
            if !self.tokenizing {
                let first = bb.breaks.trailing_zeros().min(n as u32);
                let may_hold = if bb.breaks == 0 {
                    pwords += bb.words.count_ones();
                    // Too long to keep pending: tokenise it instead.
                    pwords >= MIN_WORDS as u32 || (babs + n as u64 - pstart) as usize > PEND
                } else {
                    pwords + (bb.words & bit_range(0, first)).count_ones() >= MIN_WORDS as u32
                        || bb.inner_run_may_hold(n)
                };
                if !may_hold {
                    if bb.breaks != 0 {
                        let last = bb.last();
                        pstart = babs + u64::from(last) + 1;
                        pwords = words_after(bb.words, last);
                        self.pend_bad = bb.bad >> last & 1 == 1;
                    }
                    pos += n;
                    continue;
                }
                // Tokenise from the last break position on.
                self.tokenizing = true;
                let t = table();
                self.tk.reset(pstart, self.pend_bad);
                let from = if pstart < base {
                    self.tk.run(&self.pend[..self.pend_len], t, out);
                    0
                } else {
                    (pstart - base) as usize
                };
                self.tk.run(&chunk[from..pos], t, out);
            }
            self.tk.run(blk, table(), out);
            if bb.breaks != 0 {
                let last = bb.last();
                let words = words_after(bb.words, last);
                if words < MIN_WORDS as u32 {
                    // The tokeniser's state after `last` is context-free and
                    // what follows cannot hold a phrase yet: skip again.
                    self.tokenizing = false;
                    pstart = babs + u64::from(last) + 1;
                    pwords = words;
                    self.pend_bad = bb.bad >> last & 1 == 1;
                }
            }
            pos += n;
        }
        self.offset = base + chunk.len() as u64;
        self.pend_words = pwords;
        if self.tokenizing {
            self.pend_len = 0;
        } else if pstart >= base {
            let rest = &chunk[(pstart - base) as usize..];
            self.pend[..rest.len()].copy_from_slice(rest);
            self.pend_len = rest.len();
        } else {
            // The clean run started in an earlier chunk and spans this one.
            let end = self.pend_len + chunk.len();
            self.pend[self.pend_len..end].copy_from_slice(chunk);
            self.pend_len = end;
        }
    }

    /// Ends the stream: a run reaching the end is evaluated.
    pub fn finish(&mut self, out: &mut Vec<SeedHit>) {
        if self.tokenizing {
            self.tk.finish(table(), out);
            self.tokenizing = false;
        }
        self.pend_len = 0;
        self.pend_words = 0;
    }

    /// Classifies a block (at most 64 bytes). A break position is one after
    /// which the tokeniser's state is context-free with an empty run;
    /// `bad` tells which of the two states (after a letter or digit).
    #[inline(always)]
    fn breaks(&mut self, blk: &[u8]) -> BlockBits {
        let n = blk.len();
        let m = match <&[u8; BLOCK]>::try_from(blk) {
            Ok(a) => self.simd.classify(a),
            Err(_) => {
                let mut a = [0u8; BLOCK];
                a[..n].copy_from_slice(blk);
                self.simd.classify(&a)
            }
        };
        let (hl, hd) = (self.hist_letter, self.hist_digit);
        let (hw, hb) = (self.hist_word_letter, self.hist_bslash);
        let (l, d) = (m.letter, m.digit);
        // The `n` of `\n` (and `t`, `r`) separates: not a word letter. A
        // backslash that is itself escaped (`\\n`) is taken for an escape
        // here, which only ever hides a break, never invents one.
        let valid = if n == BLOCK { !0 } else { (1u64 << n) - 1 };
        let l1 = later(l, hl, 1);
        let l2 = later(l, hl, 2);
        let l3 = later(l, hl, 3);
        // Without a backslash here or in the block before, word letters are
        // letters (an escaped letter of the block before could only be its
        // first byte, too far back to matter).
        let (w, w1, hw) = if m.bslash | hb == 0 {
            (l, l1, hl)
        } else {
            let w = unescape(l, later(m.bslash, hb, 1) & valid, blk);
            (w, later(w, hw, 1), hw)
        };
        let d1 = later(d, hd, 1);
        let d2 = later(d, hd, 2);
        let d3 = later(d, hd, 3);
        let tok = l | d;
        // Nine word letters/digits in a row: the token is bad whatever came before.
        let c = (u128::from(w | d) << 64) | u128::from(hw | hd);
        let mut r = c & (c << 1);
        r &= r << 2;
        r &= r << 4;
        r &= c << 8;
        let t9 = (r >> 64) as u64;
        // A backslash is not a break: what follows decides.
        let other = !(tok | m.sep | m.dot | m.bslash);
        let x = other | (m.dot & !d1) | (m.sep & w1 & !(l2 & l3)) | (m.sep & d1 & d2 & d3) | t9;
        let words = l & !l1;
        if n == BLOCK {
            self.hist_letter = l;
            self.hist_digit = d;
            self.hist_word_letter = w;
            self.hist_bslash = m.bslash;
            BlockBits {
                breaks: x,
                bad: tok,
                words,
            }
        } else {
            let s = (BLOCK - n) as u32;
            let shift = |h: u64, m: u64| (h >> n) | (m << s);
            self.hist_letter = shift(hl, l);
            self.hist_digit = shift(hd, d);
            self.hist_word_letter = shift(hw, w);
            self.hist_bslash = shift(hb, m.bslash);
            BlockBits {
                breaks: x & valid,
                bad: tok,
                words: words & valid,
            }
        }
    }
}
