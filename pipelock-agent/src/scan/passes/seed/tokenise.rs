//! The exact tokeniser, run only inside a clean run that may hold a phrase:
//! words, numbering and escapes, and the phrases their checksums confirm.

use super::{
    LENGTHS, MAX_NUM, MAX_WORD, MAX_WORDS, MIN_WORDS, SeedHit,
    classify::{C_BSLASH, C_DIGIT, C_DOT, C_LETTER, C_SEP, CLASS},
    wordlist::{Table, checksum_ok, lookup, varied},
};

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
pub(super) struct Tokenizer {
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
    pub(super) fn reset(&mut self, pos: u64, bad: bool) {
        self.pos = pos;
        self.tok = if bad { Tok::Bad } else { Tok::None };
        self.len = 0;
    }

    /// Steps over every byte of `bytes`.
    #[inline(never)]
    pub(super) fn run(&mut self, bytes: &[u8], t: &Table, out: &mut Vec<SeedHit>) {
        for &b in bytes {
            self.step(b, t, out);
        }
    }

    #[inline(always)]
    pub(super) fn step(&mut self, b: u8, t: &Table, out: &mut Vec<SeedHit>) {
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

    pub(super) fn finish(&mut self, t: &Table, out: &mut Vec<SeedHit>) {
        if self.tok == Tok::Word {
            self.end_word(t, out);
        }
        self.break_run(out);
        self.tok = Tok::None;
    }
}
