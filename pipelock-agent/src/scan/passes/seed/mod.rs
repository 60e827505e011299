//! Streaming BIP-39 seed-phrase detector (English word list): 12, 15, 18, 21
//! or 24 consecutive list words, case-insensitive, separated by whitespace,
//! commas, numbering ("1. word 2) word") or the JSON/C escapes `\n`, `\t`
//! and `\r` (a phrase typed one word per line, sent in a JSON body), whose
//! checksum is valid.
//!
//! A phrase lies inside a "clean run": a stretch with none of the break
//! positions a 64-byte block classification finds cheaply (punctuation,
//! words shorter than 3 or longer than 8 letters, long digit runs), holding
//! at least 12 word starts. Blocks are skipped until a clean run has that
//! many, and only then the exact tokeniser runs. After a break position the
//! tokeniser's state does not depend on earlier bytes, which makes skipping
//! exact. State is constant per stream: the last 24 word indices, one
//! partial word and at most `PEND` pending bytes.
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use super::blocks::BLOCK;
#[cfg(target_arch = "x86_64")]
use crate::scan::simd::{Avx2, Lanes, Sse2};

/// Shortest phrase, in words.
const MIN_WORDS: usize = 12;
/// Longest phrase, in words (longer runs are cut into phrases).
const MAX_WORDS: usize = 24;
/// Phrase lengths tried, longest first.
const LENGTHS: [usize; 5] = [24, 21, 18, 15, 12];
/// Longest BIP-39 English word.
const MAX_WORD: u8 = 8;
/// Longest numbering ("24.").
const MAX_NUM: u8 = 2;
/// Shortest byte span of a phrase: 12 three-letter words, 11 separators.
const MIN_SPAN: usize = 47;
/// Longest clean run kept pending while skipping; a longer one (few words
/// among many separators) is tokenised instead.
const PEND: usize = 256;

/// A seed phrase found in the stream (the words themselves are not kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedHit {
    /// Absolute stream offset of the first word.
    pub start: u64,
    /// Number of words (12, 15, 18, 21 or 24).
    pub words: usize,
}

// ---------------------------------------------------------------- word list

/// Open-addressing table: word packed little-endian in a `u64` → index.
const SLOTS: usize = 4096;

struct Table {
    keys: Vec<u64>,
    idx: Vec<u16>,
}

#[inline]
fn slot(key: u64) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - 12)) as usize
}

fn pack(word: &str) -> u64 {
    word.bytes()
        .take(8)
        .enumerate()
        .fold(0, |acc, (i, b)| acc | u64::from(b) << (8 * i))
}

fn table() -> &'static Table {
    static T: OnceLock<Table> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = Table {
            keys: vec![0; SLOTS],
            idx: vec![0; SLOTS],
        };
        for (i, w) in bip39::Language::English.word_list().iter().enumerate() {
            let key = pack(w);
            let mut s = slot(key);
            while t.keys[s] != 0 {
                s = (s + 1) % SLOTS;
            }
            t.keys[s] = key;
            t.idx[s] = i as u16;
        }
        t
    })
}

/// Index of a lowercase word packed by [`pack`], if it is a BIP-39 word.
#[inline]
fn lookup(t: &Table, key: u64) -> Option<u16> {
    let mut s = slot(key);
    loop {
        let k = t.keys[s];
        if k == key {
            return Some(t.idx[s]);
        }
        if k == 0 {
            return None;
        }
        s = (s + 1) % SLOTS;
    }
}

/// At least a third of the words are distinct. Generated phrases always are
/// (12 random words of 2048); repetitive text ("test test test …", padding)
/// would otherwise pass the 4–8-bit checksum by chance, and so do the
/// all-`abandon` / all-`zoo` test vectors, which are public anyway.
fn varied(idx: &[u16]) -> bool {
    let mut seen = [0u64; 32];
    let mut distinct = 0;
    for &i in idx {
        let (w, b) = (usize::from(i / 64) % 32, i % 64);
        if seen[w] >> b & 1 == 0 {
            seen[w] |= 1 << b;
            distinct += 1;
        }
    }
    distinct * 3 >= idx.len()
}

/// BIP-39 checksum of a 12/15/18/21/24-word sequence of indices.
fn checksum_ok(idx: &[u16]) -> bool {
    let n = idx.len();
    let mut buf = [0u8; 33];
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut k = 0;
    for &i in idx {
        acc = (acc << 11) | u32::from(i & 0x7ff);
        bits += 11;
        while bits >= 8 {
            bits -= 8;
            buf[k] = (acc >> bits) as u8;
            k += 1;
        }
        acc &= (1 << bits) - 1;
    }
    let ent = n * 4 / 3;
    let cs_bits = n / 3;
    let cs = if bits == 0 { u32::from(buf[32]) } else { acc };
    let h = Sha256::digest(&buf[..ent]);
    u32::from(h[0] >> (8 - cs_bits)) == cs
}

// ------------------------------------------------------------ classification

const C_OTHER: u8 = 0;
const C_LETTER: u8 = 1;
const C_DIGIT: u8 = 2;
const C_SEP: u8 = 3;
/// `.` or `)`: ends a numbering, otherwise a break.
const C_DOT: u8 = 4;
/// `\`: starts an escape; `\n`, `\t`, `\r` separate, any other breaks.
const C_BSLASH: u8 = 5;

const CLASS: [u8; 256] = {
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
struct Masks {
    letter: u64,
    digit: u64,
    sep: u64,
    dot: u64,
    bslash: u64,
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
fn classify_sse2(b: &[u8; BLOCK]) -> Masks {
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
fn classify_scalar(b: &[u8; BLOCK]) -> Masks {
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
enum Simd {
    #[cfg(target_arch = "x86_64")]
    Sse2,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(not(target_arch = "x86_64"))]
    Scalar,
}

impl Simd {
    fn detect() -> Self {
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
    fn classify(self, b: &[u8; BLOCK]) -> Masks {
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
fn later(m: u64, h: u64, k: u32) -> u64 {
    (m << k) | (h >> (64 - k))
}

/// `letters` less the `n`, `t`, `r` of escapes: bytes at the `escaped`
/// positions of `blk` (those right after a backslash) are looked at one by
/// one, as backslashes are rare.
#[cold]
fn unescape(letters: u64, mut escaped: u64, blk: &[u8]) -> u64 {
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
fn has_zero_run(x: u64, len: usize) -> bool {
    let mut r = !x;
    let mut have = 1;
    while have < len {
        let s = (len - have).min(have);
        r &= r >> s;
        have += s;
    }
    r != 0
}

// ------------------------------------------------------------------ tokeniser

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    /// Between tokens.
    None,
    /// Inside a letter run of at most 8 letters.
    Word,
    /// Inside a numbering of at most 2 digits.
    Num,
    /// Right after a numbering's `.` or `)`.
    NumEnd,
    /// Right after a `\` (the run goes on if an `n`, `t` or `r` follows).
    Esc,
    /// Inside a token that is neither (the run was broken when it turned bad).
    Bad,
}

/// The exact byte-level tokeniser and the current run of list words.
#[derive(Clone, Debug)]
struct Tokenizer {
    /// Absolute offset of the next byte.
    pos: u64,
    tok: Tok,
    word: u64,
    word_len: u8,
    word_start: u64,
    num_len: u8,
    /// Current run (oldest first): word indices and start offsets.
    idx: [u16; MAX_WORDS],
    starts: [u64; MAX_WORDS],
    len: usize,
}

impl Default for Tokenizer {
    fn default() -> Self {
        Tokenizer {
            pos: 0,
            tok: Tok::None,
            word: 0,
            word_len: 0,
            word_start: 0,
            num_len: 0,
            idx: [0; MAX_WORDS],
            starts: [0; MAX_WORDS],
            len: 0,
        }
    }
}

impl Tokenizer {
    /// Restarts at `pos` in one of the two context-free states.
    fn reset(&mut self, pos: u64, bad: bool) {
        self.pos = pos;
        self.tok = if bad { Tok::Bad } else { Tok::None };
        self.len = 0;
    }

    /// Steps over every byte of `bytes`.
    #[inline(never)]
    fn run(&mut self, bytes: &[u8], t: &Table, out: &mut Vec<SeedHit>) {
        for &b in bytes {
            self.step(b, t, out);
        }
    }

    #[inline(always)]
    fn step(&mut self, b: u8, t: &Table, out: &mut Vec<SeedHit>) {
        if self.tok == Tok::Esc {
            // `\n`, `\t`, `\r` separate; any other escaped byte ends the run.
            if matches!(b, b'n' | b't' | b'r') {
                self.tok = Tok::None;
            } else {
                self.break_run(out);
                self.tok = if b.is_ascii_alphanumeric() {
                    Tok::Bad
                } else {
                    Tok::None
                };
            }
            self.pos += 1;
            return;
        }
        match CLASS[usize::from(b)] {
            // (`Tok::Esc` was handled above.)
            C_LETTER => match self.tok {
                Tok::None | Tok::NumEnd | Tok::Esc => {
                    self.tok = Tok::Word;
                    self.word = u64::from(b | 0x20);
                    self.word_len = 1;
                    self.word_start = self.pos;
                }
                Tok::Word => {
                    if self.word_len == MAX_WORD {
                        self.bad(out);
                    } else {
                        self.word |= u64::from(b | 0x20) << (8 * self.word_len);
                        self.word_len += 1;
                    }
                }
                Tok::Num => self.bad(out),
                Tok::Bad => {}
            },
            C_DIGIT => match self.tok {
                Tok::None | Tok::Esc => {
                    self.tok = Tok::Num;
                    self.num_len = 1;
                }
                Tok::Num => {
                    if self.num_len == MAX_NUM {
                        self.bad(out);
                    } else {
                        self.num_len += 1;
                    }
                }
                Tok::Word | Tok::NumEnd => self.bad(out),
                Tok::Bad => {}
            },
            C_SEP => {
                if self.tok == Tok::Word {
                    self.end_word(t, out);
                }
                self.tok = Tok::None;
            }
            C_BSLASH => {
                if self.tok == Tok::Word {
                    self.end_word(t, out);
                }
                self.tok = Tok::Esc;
            }
            C_DOT if self.tok == Tok::Num => self.tok = Tok::NumEnd,
            // Any other `.` or `)`, and everything else: the run ends here.
            _ => {
                if self.tok == Tok::Word {
                    self.end_word(t, out);
                }
                self.break_run(out);
                self.tok = Tok::None;
            }
        }
        self.pos += 1;
    }

    fn bad(&mut self, out: &mut Vec<SeedHit>) {
        self.break_run(out);
        self.tok = Tok::Bad;
    }

    fn end_word(&mut self, t: &Table, out: &mut Vec<SeedHit>) {
        let found = if self.word_len >= 3 {
            lookup(t, self.word)
        } else {
            None
        };
        match found {
            Some(i) => {
                self.idx[self.len] = i;
                self.starts[self.len] = self.word_start;
                self.len += 1;
                if self.len == MAX_WORDS {
                    self.settle(out);
                }
            }
            None => self.break_run(out),
        }
    }

    /// Decides the oldest word of the run: the longest valid phrase starting
    /// there is reported and dropped, otherwise just that word is dropped.
    fn settle(&mut self, out: &mut Vec<SeedHit>) {
        let mut drop = 1;
        for n in LENGTHS {
            if n <= self.len && varied(&self.idx[..n]) && checksum_ok(&self.idx[..n]) {
                out.push(SeedHit {
                    start: self.starts[0],
                    words: n,
                });
                drop = n;
                break;
            }
        }
        self.idx.copy_within(drop..self.len, 0);
        self.starts.copy_within(drop..self.len, 0);
        self.len -= drop;
    }

    fn break_run(&mut self, out: &mut Vec<SeedHit>) {
        while self.len >= MIN_WORDS {
            self.settle(out);
        }
        self.len = 0;
    }

    fn finish(&mut self, t: &Table, out: &mut Vec<SeedHit>) {
        if self.tok == Tok::Word {
            self.end_word(t, out);
        }
        self.break_run(out);
        self.tok = Tok::None;
    }
}

// -------------------------------------------------------------------- scanner

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

#[cfg(test)]
mod tests {
    use super::*;

    const V12: &[&str] = &[
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about",
        "legal winner thank year wave sausage worth useful legal winner thank yellow",
        "letter advice cage absurd amount doctor acoustic avoid letter advice cage above",
        "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo wrong",
        "scheme spot photo card baby mountain device kick cradle pact join borrow",
    ];
    const V18: &str = "abandon abandon abandon abandon abandon abandon abandon abandon abandon \
                       abandon abandon abandon abandon abandon abandon abandon abandon agent";
    const V24: &[&str] = &[
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon \
         abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon \
         abandon art",
        "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo \
         zoo vote",
        "void come effort suffer camp survey warrior heavy shoot primary clutch crush open amazing \
         screen patrol group space point ten exist slush involve unfold",
    ];
    const PROSE: &str = "Permission is hereby granted, free of charge, to any person obtaining a \
        copy of this software and associated documentation files (the \"Software\"), to deal in \
        the Software without restriction. Seed words like abandon ability able about above \
        absent absorb abstract and the rest of the list: twelve words make up a wallet \
        recovery phrase, which should never leave your computer, never travel over the \
        network and never be typed into a website asking for your seed words again. ";

    fn scan_chunks(data: &[u8], sizes: &mut dyn FnMut() -> usize) -> Vec<SeedHit> {
        scan_chunks_with(Simd::detect(), data, sizes)
    }

    fn scan_chunks_with(simd: Simd, data: &[u8], sizes: &mut dyn FnMut() -> usize) -> Vec<SeedHit> {
        let mut s = SeedScanner {
            simd,
            ..SeedScanner::default()
        };
        let mut out = Vec::new();
        let mut i = 0;
        while i < data.len() {
            let n = sizes().max(1).min(data.len() - i);
            s.feed(&data[i..i + n], &mut out);
            i += n;
        }
        s.finish(&mut out);
        out
    }

    fn scan(data: &[u8]) -> Vec<SeedHit> {
        scan_chunks(data, &mut || 4096)
    }

    /// The tokeniser alone over the whole input (no block skipping).
    fn reference(data: &[u8]) -> Vec<SeedHit> {
        let t = table();
        let mut tk = Tokenizer::default();
        let mut out = Vec::new();
        for &b in data {
            tk.step(b, t, &mut out);
        }
        tk.finish(t, &mut out);
        out
    }

    fn hit(start: usize, words: usize) -> SeedHit {
        SeedHit {
            start: start as u64,
            words,
        }
    }

    /// Small deterministic PRNG (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn mnemonic(words: usize, rng: &mut Rng) -> String {
        let mut ent = [0u8; 32];
        for b in ent.iter_mut() {
            *b = rng.next() as u8;
        }
        let m = bip39::Mnemonic::from_entropy_in(bip39::Language::English, &ent[..words * 4 / 3]);
        m.map(|m| m.to_string()).unwrap_or_default()
    }

    #[test]
    fn official_vectors_found() {
        for v in V12.iter().chain(V24).chain([&V18]) {
            if v.starts_with("abandon abandon") || v.starts_with("zoo zoo") {
                // Valid, but repetitive: not reported (see `varied`).
                assert!(scan(v.as_bytes()).is_empty(), "{v}");
                continue;
            }
            let n = v.split_whitespace().count();
            let text = format!("mnemonic: \"{v}\"\n");
            assert_eq!(scan(text.as_bytes()), vec![hit(11, n)], "{v}");
            assert_eq!(scan(v.as_bytes()), vec![hit(0, n)], "{v}");
        }
    }

    #[test]
    fn generated_phrases_of_every_length_found() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for words in [12, 15, 18, 21, 24] {
            for _ in 0..20 {
                let m = mnemonic(words, &mut rng);
                assert!(bip39::Mnemonic::parse_in_normalized(bip39::Language::English, &m).is_ok());
                let text = format!("The key is {m}. Keep it safe.");
                assert_eq!(scan(text.as_bytes()), vec![hit(11, words)], "{m}");
            }
        }
    }

    #[test]
    fn bad_checksum_not_found() {
        // "abandon x11 abandon": the checksum wants "about" (and the phrase
        // is too repetitive to report anyway).
        let v = ["abandon"; 12].join(" ");
        assert!(scan(v.as_bytes()).is_empty());
        let v = V12[1].replace("yellow", "year");
        assert!(scan(v.as_bytes()).is_empty());
        for v in V12 {
            let (head, _) = v.rsplit_once(' ').unwrap_or_default();
            for last in ["abandon", "zoo", "wallet"] {
                let w = format!("{head} {last}");
                if w != *v {
                    assert!(scan(w.as_bytes()).is_empty(), "{w}");
                }
            }
        }
        // A 24-word phrase with a wrong last word is not reported as one
        // (its 12- to 21-word prefixes are random windows: 1 in 16 to 1 in
        // 128 of those pass by chance, as with any BIP-39 checker).
        let v = V24[2].replace("unfold", "zoo");
        assert!(scan(v.as_bytes()).iter().all(|h| h.words < 24));
    }

    #[test]
    fn eleven_words_not_found() {
        let v: Vec<&str> = V12[1].split(' ').skip(1).collect();
        assert!(scan(v.join(" ").as_bytes()).is_empty());
        // A non-list word in the middle breaks the phrase.
        let v = V12[1].replace("wave", "waves");
        assert!(scan(v.as_bytes()).is_empty());
        // So does punctuation.
        let v = V12[1].replace("wave ", "wave; ");
        assert!(scan(v.as_bytes()).is_empty());
    }

    #[test]
    fn prose_not_found() {
        assert!(scan(PROSE.repeat(50).as_bytes()).is_empty());
        for f in [
            "/usr/share/common-licenses/GPL-3",
            "/usr/share/common-licenses/Apache-2.0",
        ] {
            if let Ok(b) = std::fs::read(f) {
                assert!(scan(&b).is_empty(), "{f}");
            }
        }
    }

    #[test]
    fn case_and_separators() {
        let v = V12[2].to_uppercase().replace(' ', "\n");
        assert_eq!(scan(v.as_bytes()), vec![hit(0, 12)]);
        let v = V12[2].replace(' ', ",\t ");
        assert_eq!(scan(v.as_bytes()), vec![hit(0, 12)]);
        let words: Vec<&str> = V24[2].split(' ').collect();
        let numbered: String = words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i % 2 == 0 {
                    format!("{}. {w}\n", i + 1)
                } else {
                    format!("{}) {w} ", i + 1)
                }
            })
            .collect();
        assert_eq!(scan(numbered.as_bytes()), vec![hit(3, 24)]);
        let v = format!("<p>{}</p>", V12[4].replace(' ', "\r\n"));
        assert_eq!(scan(v.as_bytes()), vec![hit(3, 12)]);
        // Mixed case within a word.
        let v = V12[4].replace("mountain", "MounTain");
        assert_eq!(scan(v.as_bytes()), vec![hit(0, 12)]);
    }

    #[test]
    fn json_escaped_line_breaks_separate() {
        // One word per line, as a JSON string: `"scheme\nspot\n…"`.
        for sep in ["\\n", "\\r\\n", "\\t", " \\n ", "\\n\\n"] {
            let v = format!("{{\"content\":\"{}\"}}", V12[4].replace(' ', sep));
            assert_eq!(scan(v.as_bytes()), vec![hit(12, 12)], "{sep}");
            for cut in 0..v.len() {
                assert_eq!(
                    scan_chunks(v.as_bytes(), &mut || cut.max(1)),
                    vec![hit(12, 12)],
                    "{sep}, chunks of {cut}"
                );
            }
        }
        // Other escapes end the run: an escaped backslash before `n`, a
        // unicode escape, an escaped quote.
        for sep in ["\\\\n", "\\u0020", "\\\""] {
            let v = V12[4].replacen(' ', sep, 1).replace(' ', "\\n");
            assert_eq!(scan(v.as_bytes()), vec![], "{sep}");
            assert_eq!(scan(v.as_bytes()), reference(v.as_bytes()), "{sep}");
        }
    }

    #[test]
    fn longest_reported_once_and_long_runs_cut() {
        // 24-word vector: its 12-word prefix is not reported separately.
        assert_eq!(scan(V24[2].as_bytes()), vec![hit(0, 24)]);
        // Two phrases back to back (one run of 36 words).
        let v = format!("{} {}", V24[2], V12[1]);
        let second = V24[2].len() + 1;
        assert_eq!(scan(v.as_bytes()), vec![hit(0, 24), hit(second, 12)]);
        let v = format!("{} {}", V12[1], V12[2]);
        assert_eq!(
            scan(v.as_bytes()),
            vec![hit(0, 12), hit(V12[1].len() + 1, 12)]
        );
        // The same phrase twice, separately.
        let v = format!("{}\n\"{}\"", V12[4], V12[4]);
        assert_eq!(
            scan(v.as_bytes()),
            vec![hit(0, 12), hit(V12[4].len() + 2, 12)]
        );
    }

    #[test]
    fn words_glued_to_other_tokens_do_not_count() {
        for v in [
            format!("x{}", V12[1]),
            format!("{}x", V12[1]),
            format!("1{}", V12[1]),
            format!("{}1", V12[1]),
        ] {
            assert!(scan(v.as_bytes()).is_empty(), "{v}");
        }
        // Words around the phrase that are not list words do not hurt.
        let v = format!("seedphrase {} thereafter", V12[1]);
        assert_eq!(scan(v.as_bytes()), vec![hit(11, 12)]);
    }

    #[test]
    fn every_split_point_and_byte_chunks() {
        let text = format!("{}wallet backup:\n{}\nend of it. ", PROSE, V24[2]);
        let data = text.as_bytes();
        let want = vec![hit(PROSE.len() + 15, 24)];
        assert_eq!(scan(data), want);
        for split in 0..=data.len() {
            let mut s = SeedScanner::default();
            let mut out = Vec::new();
            s.feed(&data[..split], &mut out);
            s.feed(&data[split..], &mut out);
            s.finish(&mut out);
            assert_eq!(out, want, "split at {split}");
        }
        assert_eq!(scan_chunks(data, &mut || 1), want);
        let mut rng = Rng(77);
        for _ in 0..200 {
            assert_eq!(scan_chunks(data, &mut || rng.below(130)), want);
        }
    }

    #[test]
    fn skipping_matches_the_plain_tokeniser() {
        // Random mixtures of list words, English words, numbering and
        // punctuation, with phrases planted: the block-skipping scanner must
        // agree with the tokeniser run over every byte.
        let list = bip39::Language::English.word_list();
        let extra = [
            "a",
            "of",
            "to",
            "in",
            "the",
            "The",
            "and",
            "AND",
            "hand",
            "sand",
            "bathe",
            "is",
            "software",
            "copyright",
            "2024",
            "12",
            "3.",
            "7)",
            "x1",
            "abc123",
            "longerword",
            "zz",
            "—",
            "ünï",
        ];
        let seps = [
            " ", " ", " ", "\n", ", ", "\t", ". ", "; ", "\"", "(", ")", "..", " 1. ", "\\n",
            "\\n", "\\r\\n", "\\t", "\\\\", "\\\\n", "\\\"", "\\u00e9", "\\", "\\\\\\n",
        ];
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        let mut found = 0;
        for round in 0..300 {
            let mut text = String::new();
            while text.len() < 3000 {
                match rng.below(20) {
                    0 => text.push_str(&mnemonic([12, 15, 18, 21, 24][rng.below(5)], &mut rng)),
                    1..=11 => text.push_str(list[rng.below(2048)]),
                    12..=13 => text.push_str(&list[rng.below(2048)].to_uppercase()),
                    // A phrase spread wide: longer than the pending buffer.
                    14 if rng.below(4) == 0 => {
                        let wide = " ".repeat(1 + rng.below(40));
                        text.push_str(&mnemonic(12, &mut rng).replace(' ', &wide));
                    }
                    // A phrase one word per line, JSON-escaped.
                    15 if rng.below(3) == 0 => {
                        text.push_str(&mnemonic(12, &mut rng).replace(' ', "\\n"));
                    }
                    _ => text.push_str(extra[rng.below(extra.len())]),
                }
                let sep = if rng.below(4) == 0 {
                    seps[rng.below(seps.len())]
                } else {
                    " "
                };
                text.push_str(sep);
                if rng.below(40) == 0 {
                    // Long blank runs (padding, indentation).
                    text.push_str(&" \n".repeat(rng.below(200)));
                }
            }
            let mut data = text.into_bytes();
            if round % 10 == 0 {
                for _ in 0..20 {
                    let i = rng.below(data.len());
                    data[i] = rng.next() as u8;
                }
            }
            let want = reference(&data);
            found += want.len();
            assert_eq!(scan(&data), want, "round {round}");
            let mut r2 = Rng(round + 1);
            assert_eq!(
                scan_chunks(&data, &mut || r2.below(100)),
                want,
                "round {round}"
            );
            // The portable build of the scanner, whatever this CPU has.
            #[cfg(target_arch = "x86_64")]
            assert_eq!(
                scan_chunks_with(Simd::Sse2, &data, &mut || 4096),
                want,
                "round {round}, SSE2"
            );
        }
        assert!(found > 100, "only {found} phrases");
    }

    #[test]
    fn binary_input_no_panic() {
        let mut rng = Rng(99);
        let data: Vec<u8> = (0..200_000).map(|_| rng.next() as u8).collect();
        assert!(scan(&data).is_empty());
        assert_eq!(scan(&data), reference(&data));
        // Long runs of letters, spaces, digits.
        for fill in [&b"a"[..], b" ", b"1", b"aaa ", b"1. ", b"\n"] {
            let d = fill.repeat(5000);
            assert!(scan(&d).is_empty());
        }
        let mut s = SeedScanner::default();
        let mut out = Vec::new();
        s.feed(&[], &mut out);
        s.finish(&mut out);
        s.finish(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn simd_classification_matches_scalar() {
        let all: Vec<u8> = (0..=255).collect();
        for blk in all.chunks_exact(BLOCK) {
            let Ok(a) = <&[u8; BLOCK]>::try_from(blk) else {
                continue;
            };
            let want = classify_scalar(a);
            let got = Simd::detect().classify(a);
            assert_eq!(format!("{got:?}"), format!("{want:?}"));
            #[cfg(target_arch = "x86_64")]
            {
                let got = classify_sse2(a);
                assert_eq!(format!("{got:?}"), format!("{want:?}"));
            }
        }
    }

    #[test]
    fn checksum_matches_bip39_crate() {
        let mut rng = Rng(5);
        let list = bip39::Language::English.word_list();
        for words in [12, 15, 18, 21, 24] {
            for _ in 0..200 {
                let idx: Vec<u16> = (0..words).map(|_| rng.below(2048) as u16).collect();
                let phrase: Vec<&str> = idx.iter().map(|&i| list[usize::from(i)]).collect();
                let crate_ok = bip39::Mnemonic::parse_in_normalized(
                    bip39::Language::English,
                    &phrase.join(" "),
                )
                .is_ok();
                assert_eq!(checksum_ok(&idx), crate_ok);
            }
        }
        let t = table();
        for (i, w) in list.iter().enumerate() {
            assert_eq!(lookup(t, pack(w)), Some(i as u16));
        }
        assert_eq!(lookup(t, pack("abando")), None);
        assert_eq!(lookup(t, pack("the")), None);
    }
}
