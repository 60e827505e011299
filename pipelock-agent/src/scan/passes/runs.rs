//! Encoded-run detection for secret decoding: finds runs of base64 /
//! base64url / hex / base32 / percent-encoding characters with a part
//! (between dots) at least [`RUN_MIN_LEN`] long that holds a digit
//! (virtually every encoded secret does; English words do not) and may
//! decode ([`may_decode`]). Like the numeric pass it jumps from digit to
//! digit, skipping 64-byte blocks with no such part nearby (`blocks`), so
//! clean text costs little; state per stream is a 64-byte tail and one run
//! buffer of at most `max_run` bytes.
use super::{
    blocks::{BLOCK, HotBlocks, Pass},
    tail::Tail,
};

/// Shortest run worth decoding.
pub const RUN_MIN_LEN: usize = 24;

/// Byte classes of the run alphabet, looked up once per byte.
const RUN: u8 = 1;
const SLASH: u8 = 2;
const PLUS: u8 = 4;
/// `-` or `_`: base64url.
const URL: u8 = 8;
const PCT: u8 = 16;
const DIGIT: u8 = 32;

const RUN_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = match c {
            b'/' => RUN | SLASH,
            b'+' => RUN | PLUS,
            b'-' | b'_' => RUN | URL,
            b'%' => RUN | PCT,
            b'=' | b'.' => RUN,
            _ if c.is_ascii_digit() => RUN | DIGIT,
            _ if c.is_ascii_alphanumeric() => RUN,
            _ => 0,
        };
        b += 1;
    }
    t
};

#[inline]
fn is_run_byte(b: u8) -> bool {
    RUN_CLASS[usize::from(b)] & RUN != 0
}

/// Run-byte mask of a 64-byte block (SSE2): alphanumerics and `+ / = - _ % .`.
#[cfg(target_arch = "x86_64")]
#[inline]
fn block_run_mask(b: &[u8; BLOCK]) -> u64 {
    use crate::scan::simd::{Lanes, Sse2};
    let mut m = 0;
    // SAFETY: SSE2 is part of the x86_64 baseline; lanes 0..4 of a block.
    unsafe {
        for l in 0..Sse2::N {
            let v = Sse2::load(b, l);
            // Letters of either case (`| 0x20` moves no other byte into
            // a..z); `- . /` and the digits are one range.
            let x = Sse2::or(
                Sse2::range(Sse2::fold_case(v), b'a', 26),
                Sse2::range(v, b'-', 13),
            );
            let y = Sse2::or(
                Sse2::or(Sse2::eq(v, b'+'), Sse2::eq(v, b'=')),
                Sse2::or(Sse2::eq(v, b'_'), Sse2::eq(v, b'%')),
            );
            m |= Sse2::bits(Sse2::or(x, y), l);
        }
    }
    m
}

#[cfg(not(target_arch = "x86_64"))]
fn block_run_mask(b: &[u8; BLOCK]) -> u64 {
    bytes_run_mask(b)
}

/// Run-byte mask of up to 64 bytes, one at a time.
fn bytes_run_mask(b: &[u8]) -> u64 {
    b.iter()
        .enumerate()
        .fold(0, |m, (i, &c)| m | u64::from(is_run_byte(c)) << i)
}

/// Bit `i` set when `buf[at + i]` is a run byte, for the (up to) 64 bytes
/// from `at`; bytes past the end count as not.
#[inline]
fn run_mask(buf: &[u8], at: usize) -> u64 {
    match buf.get(at..at + BLOCK) {
        Some(b) => <&[u8; BLOCK]>::try_from(b).map_or(0, block_run_mask),
        None => bytes_run_mask(buf.get(at..).unwrap_or_default()),
    }
}

/// The start of the run of run bytes ending at `end`, no lower than `lo`.
fn run_start(buf: &[u8], lo: usize, end: usize) -> usize {
    let mut end = end;
    while end > lo {
        let at = end.saturating_sub(BLOCK);
        // Bits of `at..end`, the highest one for `end - 1`.
        let not_run = !run_mask(buf, at) & (u64::MAX >> (BLOCK - (end - at)));
        if not_run != 0 {
            let s = at + (BLOCK - not_run.leading_zeros() as usize);
            return s.max(lo);
        }
        end = at;
    }
    lo
}

/// The end of the run of run bytes starting at `from` (`buf.len()` when the
/// run reaches the end).
fn run_end(buf: &[u8], from: usize) -> usize {
    let mut at = from;
    while at < buf.len() {
        let not_run = !run_mask(buf, at);
        if not_run != 0 {
            return (at + not_run.trailing_zeros() as usize).min(buf.len());
        }
        at += BLOCK;
    }
    buf.len()
}

/// Bytes a long run's next segment repeats from the one before, so a
/// secret across the cut is whole in one of them (an encoded key is far
/// shorter).
const SEGMENT_OVERLAP: usize = 256;

/// Streaming encoded-run finder. A run longer than `max_run` (a large
/// base64 blob) is reported in segments of `max_run` bytes that overlap by
/// [`SEGMENT_OVERLAP`], each starting on an 8-byte boundary of its part
/// (base64, base32 and hex stay aligned), so a secret anywhere in it is
/// decoded with bounded memory.
#[derive(Clone, Debug)]
pub struct RunScanner {
    tail: Tail,
    in_run: bool,
    buf: Vec<u8>,
    max_run: usize,
}

impl RunScanner {
    /// A scanner reporting runs in segments of at most `max_run` bytes.
    pub fn new(max_run: usize) -> Self {
        RunScanner {
            tail: Tail::default(),
            in_run: false,
            buf: Vec::new(),
            max_run: (max_run.max(2 * SEGMENT_OVERLAP) / 8) * 8,
        }
    }

    fn push(&mut self, mut bytes: &[u8], out: &mut Vec<Vec<u8>>) {
        while !bytes.is_empty() {
            let take = bytes.len().min(self.max_run - self.buf.len());
            let (now, later) = bytes.split_at(take);
            self.buf.extend_from_slice(now);
            bytes = later;
            if self.buf.len() == self.max_run {
                self.cut(out);
            }
        }
    }

    /// A full buffer: reports it and keeps its aligned end as the start of
    /// the next segment. The current part begins after the buffer's last
    /// `.` or `=`, else at its start (a segment starts aligned to its part).
    fn cut(&mut self, out: &mut Vec<Vec<u8>>) {
        if decodable_parts(&self.buf).any(may_decode) {
            out.push(self.buf.clone());
        }
        let part_start = memchr::memrchr2(b'.', b'=', &self.buf).map_or(0, |i| i + 1);
        let mut keep_from = self.buf.len() - SEGMENT_OVERLAP;
        if part_start <= keep_from {
            keep_from -= (keep_from - part_start) % 8;
        }
        self.buf.drain(..keep_from);
    }

    fn end_run(&mut self, out: &mut Vec<Vec<u8>>) {
        self.in_run = false;
        if self.buf.len() >= RUN_MIN_LEN && decodable_parts(&self.buf).any(may_decode) {
            out.push(std::mem::take(&mut self.buf));
        } else {
            self.buf.clear();
        }
    }

    /// Scans the next chunk; completed runs are appended to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Vec<u8>>) {
        let mut hot = HotBlocks::default();
        hot.compute(chunk);
        self.feed_with(chunk, &hot, out);
    }

    /// [`Self::feed`] with the chunk's blocks already classified (shared with
    /// the numeric pass).
    pub fn feed_with(&mut self, chunk: &[u8], hot: &HotBlocks, out: &mut Vec<Vec<u8>>) {
        let len = chunk.len();
        let mut i = 0;
        while i < len {
            if !self.in_run {
                let Some(p) = hot.next_digit(chunk, i, Pass::Runs) else {
                    break;
                };
                let s = run_start(chunk, i.max(p.saturating_sub(self.max_run)), p);
                self.buf.clear();
                if s == 0 && i == 0 {
                    let kept = self.tail;
                    let tail = kept.bytes();
                    let k = tail.iter().rev().take_while(|&&b| is_run_byte(b)).count();
                    self.push(&tail[tail.len() - k..], out);
                }
                self.push(&chunk[s..p], out);
                self.in_run = true;
                i = p;
            }
            let start = i;
            i = run_end(chunk, i);
            self.push(&chunk[start..i], out);
            if i < len {
                self.end_run(out);
                i += 1;
            }
        }
        self.tail.push(chunk);
    }

    /// Ends the stream.
    pub fn finish(&mut self, out: &mut Vec<Vec<u8>>) {
        if self.in_run {
            self.end_run(out);
        }
    }
}

/// A Discord bot token: `[MNO]` + 23–25 alnum, `.`, 6, `.`, 27+ of
/// `[A-Za-z0-9_-]` (trailing dots allowed: sentence end).
pub fn discord_token(run: &[u8]) -> bool {
    let run = run.strip_suffix(b".").unwrap_or(run);
    let mut parts = run.split(|&b| b == b'.');
    let (Some(a), Some(b), Some(c), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let tok = |s: &[u8]| {
        s.iter()
            .all(|&x| x.is_ascii_alphanumeric() || x == b'_' || x == b'-')
    };
    (24..=26).contains(&a.len())
        && matches!(a[0], b'M' | b'N' | b'O')
        && a.iter().all(u8::is_ascii_alphanumeric)
        && b.len() == 6
        && tok(b)
        && c.len() >= 27
        && tok(c)
}

/// Whether one part of a run (no `.`) can be an encoding worth decoding:
/// it holds a digit, and is percent-encoded, or of one base64 alphabet (not
/// mixing `+ /` with `- _`) and not path-like (`/` at least every 12 bytes:
/// base64 of binary has one in 64, base64 of ASCII text almost none).
pub fn may_decode(part: &[u8]) -> bool {
    let mut slashes = 0usize;
    let mut seen = 0u8;
    for &b in part {
        let c = RUN_CLASS[usize::from(b)];
        slashes += usize::from(c & SLASH != 0);
        seen |= c;
    }
    let std = seen & (SLASH | PLUS) != 0;
    let url = seen & URL != 0;
    seen & DIGIT != 0
        && (seen & PCT != 0 || !((std && url) || (slashes >= 3 && slashes * 12 >= part.len())))
}

/// The parts of a run worth decoding (at least [`RUN_MIN_LEN`]): split at
/// `.` and after every `=` run that something follows, so `key=value`
/// (a query or form field, a cookie pair) yields the value, padding kept.
pub fn decodable_parts(run: &[u8]) -> impl Iterator<Item = &[u8]> {
    run.split(|&b| b == b'.')
        .flat_map(|dotted| AssignmentParts { rest: dotted })
        .filter(|p| p.len() >= RUN_MIN_LEN)
}

/// Splits after each `=` run that is not at the end.
struct AssignmentParts<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for AssignmentParts<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let mut cut = self.rest.len();
        if let Some(eq) = memchr::memchr(b'=', self.rest) {
            let after = eq + self.rest[eq..].iter().take_while(|&&b| b == b'=').count();
            if after < self.rest.len() {
                cut = after;
            }
        }
        let (part, rest) = self.rest.split_at(cut);
        self.rest = rest;
        Some(part)
    }
}

/// All runs of a whole buffer.
pub fn runs_in(data: &[u8], max_run: usize) -> Vec<Vec<u8>> {
    let mut s = RunScanner::new(max_run);
    let mut out = Vec::new();
    s.feed(data, &mut out);
    s.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_runs_with_digits_across_splits() {
        let run = "Z2hwX2FCM2RFNWdIN2pLOW1OMXBRMnNUNHZXNnlaOA==";
        let text = format!("blob: {run}, words without digits aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa end");
        assert!(!discord_token(run.as_bytes()));
        let b = text.as_bytes();
        for cut in 0..=b.len() {
            let mut s = RunScanner::new(4096);
            let mut out = Vec::new();
            s.feed(&b[..cut], &mut out);
            s.feed(&b[cut..], &mut out);
            s.finish(&mut out);
            assert_eq!(out, vec![run.as_bytes().to_vec()], "split at {cut}");
        }
    }

    #[test]
    fn found_anywhere_in_long_text_with_quiet_blocks() {
        let prose = b"Version 2 of the licence, see section 7 for the terms. ".repeat(40);
        let run = b"Z2hwX2FCM2RFNWdIN2pLOW1OMXBRMnNUNHZXNnlaOA==";
        for at in 1000..1000 + 2 * crate::scan::passes::blocks::BLOCK {
            let mut text = prose[..at].to_vec();
            text.extend_from_slice(b"\n");
            text.extend_from_slice(run);
            text.extend_from_slice(b"\n");
            text.extend_from_slice(&prose[at..]);
            for chunk in [text.len(), 4096, 1000] {
                let mut s = RunScanner::new(4096);
                let mut out = Vec::new();
                for c in text.chunks(chunk) {
                    s.feed(c, &mut out);
                }
                s.finish(&mut out);
                assert_eq!(out, vec![run.to_vec()], "at {at}, chunks of {chunk}");
            }
        }
    }

    #[test]
    fn short_runs_and_plain_text_ignored() {
        assert!(runs_in(b"version 1.2.3 of 2024-01-01, abc123 ok", 4096).is_empty());
        assert_eq!(runs_in(b"x deadbeefdeadbeefdeadbeef01 y", 4096).len(), 1);
    }

    #[test]
    fn paths_and_mixed_alphabets_are_not_decoded() {
        for path in [
            "/usr/share/common-licenses/GPL-2",
            "libs/fusion/include/boost/fusion/container/vector/detail/cpp03",
            "41/Adwaita/scalable/ui/pan-down-symbolic",
        ] {
            assert!(!may_decode(path.as_bytes()), "{path}");
            assert!(runs_in(format!("see {path} ok").as_bytes(), 4096).is_empty());
        }
        for enc in [
            "Z2hwX2FCM2RFNWdIN2pLOW1OMXBRMnNUNHZXNnlaOA==",
            "nzv/fiHApNXm9wgZKjtMXf5vcIHyo7TF1uf4CRorPE0=",
            "nzv_fiHApNXm9wgZKjtMXf5vcIHyo7TF1uf4CRorPE0",
            "secret%3Dabc%2Fdef%26token%3Dxyz123",
        ] {
            assert!(may_decode(enc.as_bytes()), "{enc}");
        }
    }

    #[test]
    fn byte_classes_match_the_plain_predicates() {
        // The table-driven forms against the rules written out.
        fn reference(part: &[u8]) -> bool {
            let slashes = part.iter().filter(|&&b| b == b'/').count();
            let std = part.iter().any(|&b| b == b'/' || b == b'+');
            let url = part.iter().any(|&b| b == b'-' || b == b'_');
            let pct = part.contains(&b'%');
            let digit = part.iter().any(u8::is_ascii_digit);
            digit && (pct || !((std && url) || (slashes >= 3 && slashes * 12 >= part.len())))
        }
        for b in 0..=255u8 {
            let want = b.is_ascii_alphanumeric() || b"+/=_%-.".contains(&b);
            assert_eq!(is_run_byte(b), want, "{b:#x}");
        }
        let alphabet = b"aZ9/+-_%=";
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = 24 + (x % 60) as usize;
            // A slash density around the path threshold and a few extras.
            let density = 6 + (x >> 8) % 12;
            let mut y = x;
            let part: Vec<u8> = (0..len)
                .map(|_| {
                    y = y
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let r = y >> 33;
                    if r.is_multiple_of(density) {
                        b'/'
                    } else if r % 23 == 1 {
                        alphabet[(r / 23) as usize % alphabet.len()]
                    } else {
                        b'k'
                    }
                })
                .collect();
            assert_eq!(
                may_decode(&part),
                reference(&part),
                "{}",
                String::from_utf8_lossy(&part)
            );
        }
    }

    #[test]
    fn block_masks_find_the_run_ends_bytes_do() {
        for b in 0..=255u8 {
            let mut block = [b'a'; BLOCK];
            block[17] = b;
            let want = u64::from(is_run_byte(b)) << 17 | !(1u64 << 17);
            assert_eq!(block_run_mask(&block), want, "{b:#x}");
        }
        // Runs of every length up to a few blocks, cut anywhere.
        let alphabet = b"aZ9+/=-_%. ,\n:\x80";
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let buf: Vec<u8> = (0..3000)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Long stretches of run bytes, now and then a separator.
                let sep = (x >> 40).is_multiple_of(if i % 700 < 350 { 97 } else { 5 });
                let k = (x >> 8) as usize % if sep { alphabet.len() } else { 10 };
                alphabet[k]
            })
            .collect();
        for end in 0..=buf.len() {
            let mut s = end;
            while s > 0 && is_run_byte(buf[s - 1]) {
                s -= 1;
            }
            let lo = end.saturating_sub(150);
            assert_eq!(run_start(&buf, lo, end), s.max(lo), "start before {end}");
            let mut e = end;
            while e < buf.len() && is_run_byte(buf[e]) {
                e += 1;
            }
            assert_eq!(run_end(&buf, end), e, "end after {end}");
            // A buffer ending inside a run.
            let from = end.saturating_sub(3);
            let mut f = from;
            while f < end && is_run_byte(buf[f]) {
                f += 1;
            }
            assert_eq!(run_end(&buf[..end], from), f, "end after {from} of {end}");
        }
    }

    #[test]
    fn assignments_yield_their_values() {
        let parts = |r: &str| {
            decodable_parts(r.as_bytes())
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>()
        };
        let v = "QUtJQUFPTjZSWUlaNEFVNFhGREs=";
        assert_eq!(parts(&format!("d={v}")), [v]);
        assert_eq!(parts(&format!("state={v}")), [v]);
        assert_eq!(parts(v), [v]);
        assert_eq!(parts(&format!("x.{v}.y")), [v]);
        assert_eq!(
            parts("payload=736b5f6c6976655f4c477368486254377a48525439414c6f5973423033707337=="),
            ["736b5f6c6976655f4c477368486254377a48525439414c6f5973423033707337=="]
        );
        assert!(parts("a=b=c").is_empty());
    }

    #[test]
    fn long_runs_come_in_aligned_overlapping_segments() {
        use base64::Engine as _;
        // A key deep inside a large base64 blob, after a `key=` prefix of
        // odd length: every segment starts on a 4-byte boundary of the value.
        let mut blob = vec![0x9fu8; 6000];
        blob.extend_from_slice(b"ghp_secretsecretsecretsecret0123456789");
        blob.extend_from_slice(&[0x7eu8; 3000]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&blob);
        let text = format!("blob=\"x data={b64}\" end");
        let runs = runs_in(text.as_bytes(), 1024);
        assert!(runs.len() > 8, "{} segments", runs.len());
        assert!(runs.iter().all(|r| r.len() <= 1024));
        let decoded: Vec<Vec<u8>> = runs
            .iter()
            .flat_map(|r| decodable_parts(r))
            .flat_map(crate::scan::text::decode::decode_candidates)
            .map(|(_, d)| d)
            .collect();
        assert!(
            decoded.iter().any(|d| memchr::memmem::find(
                d,
                b"ghp_secretsecretsecretsecret0123456789"
            )
            .is_some()),
            "the key is whole in one decoded segment"
        );
    }
}
