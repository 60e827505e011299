//! The cheap numeric pass: finds digit-bearing tokens (card numbers, SSNs,
//! IBANs, WIF keys, ABA routing numbers) in a byte stream and confirms them
//! with `validators`. These shapes have no literal for Hyperscan to anchor
//! on, so instead of regexes a block classifier (`blocks`) skips clean text and
//! a tiny state machine runs only around digits. State is constant per
//! stream (a 64-byte token, its 40-byte left context and a 64-byte tail).
use super::{
    blocks::{HotBlocks, Pass},
    tail::Tail,
    validators,
};
use crate::scan::engine::patterns::NumericKind;

const MAX_TOK: usize = 64;
const MAX_SEGS: usize = 12;
const CTX: usize = 40;
/// Longest alnum run looked back over when a digit is found.
const LOOKBACK: usize = 60;

/// A validated numeric finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumericHit {
    pub kind: NumericKind,
    /// Absolute stream offset where the token starts.
    pub start: u64,
    /// The matched characters without separators (secret: never log it).
    pub value: Vec<u8>,
}

/// Streaming state of the numeric pass.
#[derive(Clone, Debug)]
pub struct NumericScanner {
    offset: u64,
    tail: Tail,
    active: bool,
    skip_alnum: bool,
    tok: [u8; MAX_TOK],
    tok_len: usize,
    tok_start: u64,
    /// (start in `tok`, length) per segment.
    segs: [(u8, u8); MAX_SEGS],
    nsegs: usize,
    /// Separator before segment `i` is `seps[i - 1]`.
    seps: [u8; MAX_SEGS],
    pending_sep: Option<u8>,
    ctx: [u8; CTX],
    ctx_len: usize,
}

impl Default for NumericScanner {
    fn default() -> Self {
        NumericScanner {
            offset: 0,
            tail: Tail::default(),
            active: false,
            skip_alnum: false,
            tok: [0; MAX_TOK],
            tok_len: 0,
            tok_start: 0,
            segs: [(0, 0); MAX_SEGS],
            nsegs: 0,
            seps: [0; MAX_SEGS],
            pending_sep: None,
            ctx: [0; CTX],
            ctx_len: 0,
        }
    }
}

#[inline]
fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

impl NumericScanner {
    /// Scans the next chunk; validated hits are appended to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<NumericHit>) {
        let mut hot = HotBlocks::default();
        hot.compute(chunk);
        self.feed_with(chunk, &hot, out);
    }

    /// [`Self::feed`] with the chunk's blocks already classified (shared with
    /// the encoded-run pass).
    pub fn feed_with(&mut self, chunk: &[u8], hot: &HotBlocks, out: &mut Vec<NumericHit>) {
        let len = chunk.len();
        let mut i = 0;
        while i < len {
            if self.skip_alnum {
                while i < len && is_alnum(chunk[i]) {
                    i += 1;
                }
                if i == len {
                    break;
                }
                self.skip_alnum = false;
            }
            if !self.active {
                let Some(p) = hot.next_digit(chunk, i, Pass::Numeric) else {
                    break;
                };
                self.begin_token(chunk, p);
                i = p;
                if !self.active {
                    continue;
                }
            }
            let b = chunk[i];
            i += 1;
            if is_alnum(b) {
                self.push_alnum(b, out);
            } else if (b == b' ' || b == b'-') && self.pending_sep.is_none() {
                self.pending_sep = Some(b);
            } else {
                self.end_token(out);
            }
        }
        self.tail.push(chunk);
        self.offset += len as u64;
    }

    /// Ends the stream: a token running to the end is evaluated.
    pub fn finish(&mut self, out: &mut Vec<NumericHit>) {
        if self.active {
            self.end_token(out);
        }
    }

    /// Starts a token at the alnum run containing the digit at `p`.
    fn begin_token(&mut self, chunk: &[u8], p: usize) {
        let kept = self.tail;
        let tail = kept.bytes();
        // Walk left over the alnum run (in this chunk, then the previous tail).
        let mut s = p;
        while s > 0 && is_alnum(chunk[s - 1]) && p - s < LOOKBACK {
            s -= 1;
        }
        let mut from_tail = 0;
        if s == 0 {
            while from_tail < tail.len()
                && is_alnum(tail[tail.len() - 1 - from_tail])
                && p + from_tail < LOOKBACK
            {
                from_tail += 1;
            }
        }
        let run = (p - s) + from_tail;
        let at_limit = (s > 0 && is_alnum(chunk[s - 1]))
            || (s == 0 && from_tail < tail.len() && is_alnum(tail[tail.len() - 1 - from_tail]));
        if run >= LOOKBACK || at_limit {
            // Part of a long alnum run (hash, base64): nothing we look for.
            self.skip_alnum = true;
            return;
        }
        self.active = true;
        self.tok_len = 0;
        self.nsegs = 1;
        self.segs[0] = (0, 0);
        self.pending_sep = None;
        self.tok_start = self.offset + p as u64 - run as u64;
        for k in 0..from_tail {
            let b = tail[tail.len() - from_tail + k];
            self.push_raw(b);
        }
        for &b in &chunk[s..p] {
            self.push_raw(b);
        }
        // Left context (for "routing number: ..."), up to CTX bytes.
        let mut ctx = [0u8; CTX];
        let mut n = 0;
        let in_chunk = s.min(CTX);
        let from_prev = if s < CTX {
            (CTX - s).min(tail.len() - from_tail)
        } else {
            0
        };
        let tail_end = tail.len() - from_tail;
        ctx[..from_prev].copy_from_slice(&tail[tail_end - from_prev..tail_end]);
        n += from_prev;
        ctx[n..n + in_chunk].copy_from_slice(&chunk[s - in_chunk..s]);
        n += in_chunk;
        self.ctx = ctx;
        self.ctx_len = n;
    }

    fn push_raw(&mut self, b: u8) {
        if self.tok_len < MAX_TOK {
            self.tok[self.tok_len] = b;
            self.tok_len += 1;
            self.segs[self.nsegs - 1].1 += 1;
        }
    }

    fn push_alnum(&mut self, b: u8, out: &mut Vec<NumericHit>) {
        if let Some(sep) = self.pending_sep.take() {
            if self.nsegs == MAX_SEGS {
                self.end_token(out);
                self.skip_alnum = true;
                return;
            }
            self.seps[self.nsegs - 1] = sep;
            self.segs[self.nsegs] = (self.tok_len as u8, 0);
            self.nsegs += 1;
        }
        let seg_len = usize::from(self.segs[self.nsegs - 1].1);
        if self.nsegs > 1 && (seg_len >= 6 || b.is_ascii_lowercase()) {
            // Not a group of a card number / IBAN: the token ended before this segment.
            let (start, _) = self.segs[self.nsegs - 1];
            self.nsegs -= 1;
            self.tok_len = usize::from(start);
            self.end_token(out);
            self.skip_alnum = true;
            return;
        }
        if self.tok_len == MAX_TOK {
            if self.nsegs == 1 {
                self.active = false;
            } else {
                self.end_token(out);
            }
            self.skip_alnum = true;
            return;
        }
        self.push_raw(b);
    }

    fn seg(&self, k: usize) -> &[u8] {
        let (s, l) = self.segs[k];
        &self.tok[usize::from(s)..usize::from(s) + usize::from(l)]
    }

    fn end_token(&mut self, out: &mut Vec<NumericHit>) {
        self.active = false;
        self.pending_sep = None;
        if self.tok_len == 0 {
            return;
        }
        self.evaluate(out);
    }

    fn hit(&self, kind: NumericKind, value: &[u8], out: &mut Vec<NumericHit>) {
        out.push(NumericHit {
            kind,
            start: self.tok_start,
            value: value.to_vec(),
        });
    }

    fn evaluate(&self, out: &mut Vec<NumericHit>) {
        let first = self.seg(0);
        let all_digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
        if all_digits(first) {
            // SSN: ddd-dd-dddd
            if self.nsegs >= 3
                && self.seps[0] == b'-'
                && self.seps[1] == b'-'
                && first.len() == 3
                && self.seg(1).len() == 2
                && self.seg(2).len() == 4
                && all_digits(self.seg(1))
                && all_digits(self.seg(2))
                && (self.nsegs == 3 || self.seps[2] != b'-')
            {
                let mut d = [0u8; 9];
                d[..3].copy_from_slice(first);
                d[3..5].copy_from_slice(self.seg(1));
                d[5..].copy_from_slice(self.seg(2));
                if validators::ssn(&d) {
                    self.hit(NumericKind::Ssn, &d, out);
                }
            }
            // Card number: digit groups with one kind of separator, 13–19 digits.
            let mut digits = [0u8; MAX_TOK];
            let mut n = 0;
            let mut best = None;
            for k in 0..self.nsegs {
                let s = self.seg(k);
                if !all_digits(s) || (k >= 1 && self.seps[k - 1] != self.seps[0]) {
                    break;
                }
                digits[n..n + s.len()].copy_from_slice(s);
                n += s.len();
                if n > 19 {
                    break;
                }
                if n >= 13 && validators::credit_card(&digits[..n]) {
                    best = Some(n);
                }
            }
            if let Some(n) = best {
                self.hit(NumericKind::CreditCard, &digits[..n], out);
            }
            if first.len() == 9
                && has_routing_context(&self.ctx[..self.ctx_len])
                && validators::aba_routing(first)
            {
                self.hit(NumericKind::AbaRouting, first, out);
            }
            return;
        }
        // Wallet addresses: BTC base58 (1…/3…), bech32 (bc1…), ETH (0x…).
        let wallet = match first.first() {
            Some(b'1' | b'3') => validators::btc_base58_address(first),
            Some(b'b' | b'B') => validators::btc_bech32_address(first),
            Some(b'0') => validators::eth_address(first),
            _ => false,
        };
        if wallet {
            self.hit(NumericKind::WalletAddress, first, out);
            return;
        }
        // WIF: one base58 segment of 51 (5…) or 52 (K…/L…) characters.
        let wif_shape = (first.len() == 51 && first[0] == b'5')
            || (first.len() == 52 && (first[0] == b'K' || first[0] == b'L'));
        if wif_shape && validators::wif(first) {
            self.hit(NumericKind::Wif, first, out);
            return;
        }
        // IBAN, compact or in groups of four.
        if first.len() >= 15 {
            if validators::iban(first) {
                self.hit(NumericKind::Iban, first, out);
            }
            return;
        }
        if first.len() == 4
            && first[..2].iter().all(u8::is_ascii_uppercase)
            && all_digits(&first[2..])
            && self.nsegs > 1
        {
            let mut buf = [0u8; MAX_TOK];
            buf[..4].copy_from_slice(first);
            let mut n = 4;
            let mut best = None;
            for k in 1..self.nsegs {
                let s = self.seg(k);
                if self.seps[k - 1] != b' '
                    || s.len() > 4
                    || !s
                        .iter()
                        .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
                {
                    break;
                }
                buf[n..n + s.len()].copy_from_slice(s);
                n += s.len();
                if n >= 15 && validators::iban(&buf[..n]) {
                    best = Some(n);
                }
                if s.len() < 4 {
                    break;
                }
            }
            if let Some(n) = best {
                self.hit(NumericKind::Iban, &buf[..n], out);
            }
        }
    }
}

fn has_routing_context(ctx: &[u8]) -> bool {
    let lower: Vec<u8> = ctx.iter().map(u8::to_ascii_lowercase).collect();
    [&b"routing"[..], b"aba", b"rtn", b"transit"]
        .iter()
        .any(|w| lower.windows(w.len()).any(|win| win == *w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(parts: &[&[u8]]) -> Vec<NumericHit> {
        let mut s = NumericScanner::default();
        let mut out = Vec::new();
        for p in parts {
            s.feed(p, &mut out);
        }
        s.finish(&mut out);
        out
    }

    fn kinds(text: &str) -> Vec<NumericKind> {
        scan(&[text.as_bytes()])
            .into_iter()
            .map(|h| h.kind)
            .collect()
    }

    #[test]
    fn finds_each_kind() {
        assert_eq!(
            kinds("card 4111 1111 1111 1111 exp"),
            vec![NumericKind::CreditCard]
        );
        assert_eq!(
            kinds("card 4111-1111-1111-1111."),
            vec![NumericKind::CreditCard]
        );
        assert_eq!(kinds("pan=5555555555554444"), vec![NumericKind::CreditCard]);
        assert_eq!(kinds("ssn 123-45-6789 ok"), vec![NumericKind::Ssn]);
        assert_eq!(
            kinds("iban GB82WEST12345698765432"),
            vec![NumericKind::Iban]
        );
        assert_eq!(
            kinds("IBAN: GB82 WEST 1234 5698 7654 32"),
            vec![NumericKind::Iban]
        );
        assert_eq!(
            kinds("routing number: 021000021"),
            vec![NumericKind::AbaRouting]
        );
        assert_eq!(
            kinds("key 5HueCGU8rMjxEXxiPuD5BDku4MkFqeZyd4dZ1jvhTVqvbTLvyTJ end"),
            vec![NumericKind::Wif]
        );
    }

    #[test]
    fn near_misses() {
        for text in [
            "card 4111 1111 1111 1112 exp",
            "order 1234567890123 shipped",
            "ssn 000-45-6789",
            "phone 555-12-34567",
            "iban GB82WEST12345698765433",
            "zip 021000021 (no context)",
            "routing number: 021000022",
            "key 5HueCGU8rMjxEXxiPuD5BDku4MkFqeZyd4dZ1jvhTVqvbTLvyTK end",
            "sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "x4111111111111111",
            "released in 2019 and 2020, version 1.2.3",
        ] {
            assert!(
                kinds(text).is_empty(),
                "false positive on {text:?}: {:?}",
                kinds(text)
            );
        }
    }

    #[test]
    fn found_anywhere_in_long_text_with_quiet_blocks() {
        // Prose with sparse numbers, so most blocks are skipped by `blocks`.
        let prose = b"Version 2 of the licence, see section 7 for the terms. ".repeat(40);
        for (token, kind) in [
            (&b"4111 1111 1111 1111"[..], NumericKind::CreditCard),
            (b"123-45-6789", NumericKind::Ssn),
            (b"GB82WEST12345698765432", NumericKind::Iban),
            (b"GB82 WEST 1234 5698 7654 32", NumericKind::Iban),
            (b"routing 021000021", NumericKind::AbaRouting),
            (
                b"5HueCGU8rMjxEXxiPuD5BDku4MkFqeZyd4dZ1jvhTVqvbTLvyTJ",
                NumericKind::Wif,
            ),
        ] {
            for at in 1000..1000 + 2 * crate::scan::passes::blocks::BLOCK {
                let mut text = prose[..at].to_vec();
                text.extend_from_slice(b"\n");
                text.extend_from_slice(token);
                text.extend_from_slice(b"\n");
                text.extend_from_slice(&prose[at..]);
                for chunk in [text.len(), 4096, 1000] {
                    let parts: Vec<&[u8]> = text.chunks(chunk).collect();
                    let got: Vec<_> = scan(&parts).into_iter().map(|h| h.kind).collect();
                    assert_eq!(
                        got,
                        vec![kind],
                        "{:?} at {at}, chunks of {chunk}",
                        String::from_utf8_lossy(token)
                    );
                }
            }
        }
    }

    #[test]
    fn split_at_every_offset() {
        for text in [
            "pay with 4111 1111 1111 1111 now",
            "to: GB82WEST12345698765432 thanks",
            "ABA routing 021000021.",
            "ssn: 123-45-6789\n",
        ] {
            let whole = kinds(text);
            assert_eq!(whole.len(), 1, "{text}");
            let b = text.as_bytes();
            for cut in 0..=b.len() {
                let got: Vec<_> = scan(&[&b[..cut], &b[cut..]])
                    .into_iter()
                    .map(|h| h.kind)
                    .collect();
                assert_eq!(got, whole, "{text:?} split at {cut}");
            }
        }
    }
}
