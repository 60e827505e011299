//! Decoding for scanning: streaming `Content-Encoding` decoders (gzip,
//! deflate, br, zstd, chained) with decompression-bomb limits, and bounded
//! decoding of encoded secret candidates (percent, hex, base64, base64url,
//! base32) found as runs in the text.
use std::io::Write;

use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};

/// Input is fed to a decoder in slices this small, so one slice can expand
/// to at most ~1000× its size before the limits are checked.
const SLICE: usize = 256;

/// One content coding (RFC 9110 §8.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentCoding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

impl ContentCoding {
    /// Parses one token; `None` for codings we cannot decode.
    pub fn parse(token: &str) -> Option<ContentCoding> {
        let t = token.trim();
        Some(match t.to_ascii_lowercase().as_str() {
            "" | "identity" => ContentCoding::Identity,
            "gzip" | "x-gzip" => ContentCoding::Gzip,
            "deflate" => ContentCoding::Deflate,
            "br" => ContentCoding::Brotli,
            "zstd" => ContentCoding::Zstd,
            _ => return None,
        })
    }

    /// Parses a `Content-Encoding` value (codings in the order applied).
    pub fn parse_list(value: &str) -> Result<Vec<ContentCoding>, String> {
        value
            .split(',')
            .map(|t| ContentCoding::parse(t).ok_or_else(|| t.trim().to_owned()))
            .filter(|c| !matches!(c, Ok(ContentCoding::Identity)))
            .collect()
    }
}

/// Limits against decompression bombs.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Decoded bytes after which a body is cut off regardless of ratio.
    pub max_output: u64,
    /// Decoded/encoded ratio above which a body is a bomb...
    pub max_ratio: u64,
    /// ...once at least this many bytes were decoded.
    pub ratio_min_output: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_output: 1 << 30,
            max_ratio: 100,
            ratio_min_output: 8 << 20,
        }
    }
}

/// What a decoder did with a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeStatus {
    Ok,
    /// A limit was hit; nothing more will be decoded.
    Bomb,
    /// The data is corrupt; nothing more will be decoded.
    Failed,
}

enum Stage {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Zlib(flate2::write::ZlibDecoder<Vec<u8>>),
    RawDeflate(flate2::write::DeflateDecoder<Vec<u8>>),
    /// `deflate`: zlib-wrapped or raw, decided by the first byte.
    DeflateUndecided,
    Brotli(Box<brotli_decompressor::DecompressorWriter<Vec<u8>>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, Vec<u8>>>),
}

impl Stage {
    fn new(c: ContentCoding) -> Result<Option<Stage>, std::io::Error> {
        Ok(Some(match c {
            ContentCoding::Identity => return Ok(None),
            ContentCoding::Gzip => Stage::Gzip(flate2::write::GzDecoder::new(Vec::new())),
            ContentCoding::Deflate => Stage::DeflateUndecided,
            ContentCoding::Brotli => Stage::Brotli(Box::new(
                brotli_decompressor::DecompressorWriter::new(Vec::new(), 4096),
            )),
            ContentCoding::Zstd => {
                Stage::Zstd(Box::new(zstd::stream::write::Decoder::new(Vec::new())?))
            }
        }))
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        if let Stage::DeflateUndecided = self {
            let Some(&b0) = data.first() else {
                return Ok(());
            };
            *self = if b0 & 0x0f == 8 && (b0 >> 4) <= 7 {
                Stage::Zlib(flate2::write::ZlibDecoder::new(Vec::new()))
            } else {
                Stage::RawDeflate(flate2::write::DeflateDecoder::new(Vec::new()))
            };
        }
        match self {
            Stage::Gzip(d) => d.write_all(data),
            Stage::Zlib(d) => d.write_all(data),
            Stage::RawDeflate(d) => d.write_all(data),
            Stage::Brotli(d) => d.write_all(data),
            Stage::Zstd(d) => d.write_all(data),
            Stage::DeflateUndecided => Ok(()),
        }
    }

    fn finish(&mut self) -> std::io::Result<()> {
        match self {
            Stage::Gzip(d) => d.try_finish(),
            Stage::Zlib(d) => d.try_finish(),
            Stage::RawDeflate(d) => d.try_finish(),
            // Both fail on a stream that stopped before its end: a
            // truncated body is undecodable, not a shorter one.
            Stage::Brotli(d) => d.close(),
            Stage::Zstd(d) => d.do_finish(),
            Stage::DeflateUndecided => Ok(()),
        }
    }

    /// The decoded-output buffer (`None` before `deflate` saw its first byte).
    fn output(&mut self) -> Option<&mut Vec<u8>> {
        match self {
            Stage::Gzip(d) => Some(d.get_mut()),
            Stage::Zlib(d) => Some(d.get_mut()),
            Stage::RawDeflate(d) => Some(d.get_mut()),
            Stage::Brotli(d) => Some(d.get_mut()),
            Stage::Zstd(d) => Some(d.get_mut()),
            Stage::DeflateUndecided => None,
        }
    }
}

/// Streaming decoder for a body's content codings, bounded by [`DecodeLimits`].
pub struct ContentDecoder {
    /// In decoding order (reverse of the header order).
    stages: Vec<Stage>,
    limits: DecodeLimits,
    input: u64,
    output: u64,
    status: DecodeStatus,
}

impl std::fmt::Debug for ContentDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentDecoder")
            .field("stages", &self.stages.len())
            .field("input", &self.input)
            .field("output", &self.output)
            .field("status", &self.status)
            .finish()
    }
}

impl ContentDecoder {
    /// A decoder for codings listed as in `Content-Encoding` (applied order).
    pub fn new(
        codings: &[ContentCoding],
        limits: DecodeLimits,
    ) -> Result<Self, crate::scan::Error> {
        let mut stages = Vec::new();
        for c in codings.iter().rev() {
            let stage = Stage::new(*c).map_err(|source| crate::scan::Error::Decode {
                encoding: "zstd",
                source,
            })?;
            stages.extend(stage);
        }
        Ok(ContentDecoder {
            stages,
            limits,
            input: 0,
            output: 0,
            status: DecodeStatus::Ok,
        })
    }

    /// True when the body passes through undecoded.
    pub fn is_identity(&self) -> bool {
        self.stages.is_empty()
    }

    /// Decoded bytes so far.
    pub fn output_bytes(&self) -> u64 {
        self.output
    }

    /// Decodes `chunk`, handing decoded bytes to `sink`.
    pub fn feed(&mut self, chunk: &[u8], eos: bool, sink: &mut dyn FnMut(&[u8])) -> DecodeStatus {
        if self.status != DecodeStatus::Ok {
            return self.status;
        }
        self.input += chunk.len() as u64;
        if self.stages.is_empty() {
            self.output += chunk.len() as u64;
            sink(chunk);
            return DecodeStatus::Ok;
        }
        if eos && self.input == 0 {
            // An empty body under any coding: nothing to decode or check.
            return DecodeStatus::Ok;
        }
        for slice in chunk.chunks(SLICE) {
            if let Err(status) = self.push(0, slice, false, sink) {
                self.status = status;
                return status;
            }
        }
        if eos && let Err(status) = self.push(0, &[], true, sink) {
            self.status = status;
            return status;
        }
        DecodeStatus::Ok
    }

    /// Writes `data` into stage `k` and forwards its output down the chain.
    fn push(
        &mut self,
        k: usize,
        data: &[u8],
        finish: bool,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), DecodeStatus> {
        if k == self.stages.len() {
            self.output += data.len() as u64;
            if self.output > self.limits.max_output
                || (self.output > self.limits.ratio_min_output
                    && self.output > self.limits.max_ratio.saturating_mul(self.input.max(1)))
            {
                return Err(DecodeStatus::Bomb);
            }
            sink(data);
            return Ok(());
        }
        let stage = &mut self.stages[k];
        if !data.is_empty() {
            stage.write(data).map_err(|_| DecodeStatus::Failed)?;
        }
        if finish {
            stage.finish().map_err(|_| DecodeStatus::Failed)?;
        }
        let mut out = stage.output().map(std::mem::take).unwrap_or_default();
        for piece in out.chunks(SLICE * 64) {
            self.push(k + 1, piece, false, sink)?;
        }
        out.clear();
        // Give the buffer back to keep its capacity.
        if let Some(buf) = self.stages[k].output() {
            *buf = out;
        }
        if finish {
            self.push(k + 1, &[], true, sink)?;
        }
        Ok(())
    }
}

/// How a secret candidate was encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretEncoding {
    Percent,
    Hex,
    Base64,
    Base64Url,
    Base32,
}

impl SecretEncoding {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretEncoding::Percent => "percent",
            SecretEncoding::Hex => "hex",
            SecretEncoding::Base64 => "base64",
            SecretEncoding::Base64Url => "base64url",
            SecretEncoding::Base32 => "base32",
        }
    }
}

const B64_CFG: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_allow_trailing_bits(true)
    .with_decode_padding_mode(DecodePaddingMode::Indifferent);
const B64_STD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, B64_CFG);
const B64_URL: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, B64_CFG);

/// Percent-decodes; `None` if there was nothing to decode.
pub fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let hex = |b: u8| (b as char).to_digit(16).map(|v| v as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut changed = false;
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%'
            && i + 2 < s.len()
            && let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2]))
        {
            out.push(h << 4 | l);
            changed = true;
            i += 3;
            continue;
        }
        out.push(s[i]);
        i += 1;
    }
    changed.then_some(out)
}

/// Percent-decodes repeatedly (at most `rounds` times).
pub fn percent_decode_iter(s: &[u8], rounds: usize) -> Vec<u8> {
    let mut cur = s.to_vec();
    for _ in 0..rounds {
        match percent_decode(&cur) {
            Some(next) => cur = next,
            None => break,
        }
    }
    cur
}

fn mostly_printable(b: &[u8]) -> bool {
    if b.len() < 8 {
        return false;
    }
    let printable = b
        .iter()
        .filter(|&&c| (0x20..0x7f).contains(&c) || c == b'\n' || c == b'\r' || c == b'\t')
        .count();
    printable * 10 >= b.len() * 9
}

/// Decodes an encoded run every plausible way; keeps printable results only.
pub fn decode_candidates(run: &[u8]) -> Vec<(SecretEncoding, Vec<u8>)> {
    let mut out = Vec::new();
    if run.contains(&b'%')
        && let Some(d) = percent_decode(run)
    {
        out.push((SecretEncoding::Percent, d));
        // A percent-encoded run is not also base64/hex.
        out.retain(|(_, d)| mostly_printable(d));
        return out;
    }
    if let Some(bytes) = dashed_hex(run) {
        out.push((SecretEncoding::Hex, bytes));
    }
    let pad = run.iter().rev().take_while(|&&b| b == b'=').count();
    let body = &run[..run.len() - pad.min(6)];
    if body.contains(&b'=') {
        return out;
    }
    if body.len() >= 16 && body.len().is_multiple_of(2) && body.iter().all(u8::is_ascii_hexdigit) {
        let mut bytes = Vec::with_capacity(body.len() / 2);
        for pair in body.chunks(2) {
            let hex = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
            bytes.push(hex(pair[0]) << 4 | hex(pair[1]));
        }
        out.push((SecretEncoding::Hex, bytes));
    }
    let url = body.iter().any(|&b| b == b'-' || b == b'_');
    let std = body.iter().any(|&b| b == b'+' || b == b'/');
    if !(url && std) {
        let mut b = body;
        if b.len() % 4 == 1 {
            b = &b[..b.len() - 1];
        }
        let (engine, enc) = if url {
            (&B64_URL, SecretEncoding::Base64Url)
        } else {
            (&B64_STD, SecretEncoding::Base64)
        };
        if let Ok(d) = engine.decode(b) {
            out.push((enc, d));
        }
    }
    if body.len() >= 16
        && body
            .iter()
            .all(|&b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
    {
        let valid = body.len() - body.len() % 8;
        let mut padded = body[..valid].to_vec();
        let rest = &body[valid..];
        // Keep only complete 8-char groups plus a padded tail when its length is valid.
        if matches!(rest.len(), 2 | 4 | 5 | 7) {
            padded.extend_from_slice(rest);
            padded.resize(valid + 8, b'=');
        }
        if let Ok(d) = data_encoding::BASE32.decode(&padded) {
            out.push((SecretEncoding::Base32, d));
        }
    }
    // Binary (a blob, an archive): its printable stretches, as `strings`
    // would show them, may hold a key.
    let mut kept = Vec::with_capacity(out.len());
    for (enc, d) in out {
        if mostly_printable(&d) {
            kept.push((enc, d));
        } else {
            kept.extend(printable_spans(&d).map(|s| (enc, s.to_vec())));
        }
    }
    kept
}

/// Hex pairs joined by `-` (`67-68-70-5F`), at least 8 of them.
fn dashed_hex(run: &[u8]) -> Option<Vec<u8>> {
    if run.len() < 8 * 3 - 1 || run.len() % 3 != 2 {
        return None;
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|v| v as u8);
    run.chunks(3)
        .map(|c| match c {
            [h, l] | [h, l, b'-'] => Some(hex(*h)? << 4 | hex(*l)?),
            _ => None,
        })
        .collect()
}

/// Shortest printable stretch of binary decoded bytes worth scanning.
const MIN_PRINTABLE_SPAN: usize = 16;

/// The stretches of at least [`MIN_PRINTABLE_SPAN`] printable ASCII bytes.
fn printable_spans(d: &[u8]) -> impl Iterator<Item = &[u8]> {
    d.split(|c| !(0x20..0x7f).contains(c))
        .filter(|s| s.len() >= MIN_PRINTABLE_SPAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(dec: &mut ContentDecoder, body: &[u8], chunk: usize) -> (Vec<u8>, DecodeStatus) {
        let mut out = Vec::new();
        let mut status = DecodeStatus::Ok;
        let chunks: Vec<&[u8]> = body.chunks(chunk.max(1)).collect();
        for (i, c) in chunks.iter().enumerate() {
            status = dec.feed(c, i + 1 == chunks.len(), &mut |d| out.extend_from_slice(d));
            if status != DecodeStatus::Ok {
                break;
            }
        }
        (out, status)
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn decodes_each_coding_in_small_chunks() {
        let text: Vec<u8> = b"hello world, some text to compress. ".repeat(200);
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(&text).unwrap();
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&text).unwrap();
        let mut br = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
            w.write_all(&text).unwrap();
        }
        let zst = zstd::encode_all(&text[..], 3).unwrap();
        let cases = [
            (ContentCoding::Gzip, gzip(&text)),
            (ContentCoding::Deflate, zlib.finish().unwrap()),
            (ContentCoding::Deflate, raw.finish().unwrap()),
            (ContentCoding::Brotli, br),
            (ContentCoding::Zstd, zst),
        ];
        for (coding, body) in cases {
            for chunk in [1, 7, 1000] {
                let mut d = ContentDecoder::new(&[coding], DecodeLimits::default()).unwrap();
                let (out, status) = decode_all(&mut d, &body, chunk);
                assert_eq!(status, DecodeStatus::Ok, "{coding:?} chunk {chunk}");
                assert_eq!(out, text, "{coding:?} chunk {chunk}");
            }
        }
    }

    /// A body cut before its stream's end fails whole and in any chunking,
    /// for every coding (Brotli and zstd used to end `Ok` with what they had
    /// flushed, so the output depended on the chunking: fuzz `decode`).
    #[test]
    fn truncated_streams_are_undecodable() {
        let text: Vec<u8> = b"some text that compresses, then is cut short. ".repeat(100);
        let mut br = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
            w.write_all(&text).unwrap();
        }
        let zst = zstd::encode_all(&text[..], 3).unwrap();
        for (coding, body) in [
            (ContentCoding::Gzip, gzip(&text)),
            (ContentCoding::Brotli, br),
            (ContentCoding::Zstd, zst),
        ] {
            let cut = &body[..body.len() / 2];
            for chunk in [1, 13, cut.len()] {
                let mut d = ContentDecoder::new(&[coding], DecodeLimits::default()).unwrap();
                let (_, status) = decode_all(&mut d, cut, chunk);
                assert_eq!(status, DecodeStatus::Failed, "{coding:?} chunk {chunk}");
            }
        }
        // Raw bytes that are no Brotli stream at all (the fuzz finding).
        let mut d = ContentDecoder::new(&[ContentCoding::Brotli], DecodeLimits::default()).unwrap();
        let (_, status) = decode_all(&mut d, b"\x0b\x00\x80plain text, not brotli", 5);
        assert_eq!(status, DecodeStatus::Failed);
    }

    /// An empty body (HEAD, 204, 304 with a `Content-Encoding`) is empty.
    #[test]
    fn empty_body_is_empty_under_any_coding() {
        for coding in [
            ContentCoding::Gzip,
            ContentCoding::Deflate,
            ContentCoding::Brotli,
            ContentCoding::Zstd,
        ] {
            let mut d = ContentDecoder::new(&[coding], DecodeLimits::default()).unwrap();
            let mut out = Vec::new();
            let status = d.feed(&[], true, &mut |b| out.extend_from_slice(b));
            assert_eq!((status, out.len()), (DecodeStatus::Ok, 0), "{coding:?}");
        }
    }

    #[test]
    fn chained_codings() {
        let text = b"chained body".repeat(50);
        let body = zstd::encode_all(&gzip(&text)[..], 3).unwrap();
        let codings = ContentCoding::parse_list("gzip, zstd").unwrap();
        let mut d = ContentDecoder::new(&codings, DecodeLimits::default()).unwrap();
        let (out, status) = decode_all(&mut d, &body, 100);
        assert_eq!(status, DecodeStatus::Ok);
        assert_eq!(out, text);
    }

    #[test]
    fn bomb_is_cut_off() {
        let zeros = vec![0u8; 64 << 20];
        let body = gzip(&zeros);
        assert!(body.len() < 1 << 20);
        let limits = DecodeLimits {
            max_output: 1 << 30,
            max_ratio: 100,
            ratio_min_output: 1 << 20,
        };
        let mut d = ContentDecoder::new(&[ContentCoding::Gzip], limits).unwrap();
        let (out, status) = decode_all(&mut d, &body, 16 * 1024);
        assert_eq!(status, DecodeStatus::Bomb);
        assert!(
            out.len() < 4 << 20,
            "decoded {} bytes before cut-off",
            out.len()
        );
    }

    #[test]
    fn corrupt_body_fails() {
        let mut d = ContentDecoder::new(&[ContentCoding::Gzip], DecodeLimits::default()).unwrap();
        let (_, status) = decode_all(&mut d, b"this is not gzip at all, not even close", 8);
        assert_eq!(status, DecodeStatus::Failed);
    }

    #[test]
    fn unknown_coding_is_reported() {
        assert_eq!(
            ContentCoding::parse_list("gzip, compress"),
            Err("compress".to_owned())
        );
        assert_eq!(ContentCoding::parse_list("identity"), Ok(vec![]));
    }

    #[test]
    fn secret_candidates() {
        let secret = b"ghp_0123456789abcdefghijklmnopqrstuvwxyzAB";
        let b64 = B64_STD.encode(secret);
        let got = decode_candidates(b64.as_bytes());
        assert!(
            got.iter()
                .any(|(e, d)| *e == SecretEncoding::Base64 && d == secret)
        );
        let url = B64_URL.encode(b"\xfb\xff key=sk-ant-api03-abcdefghijkl~~");
        let got = decode_candidates(url.as_bytes());
        assert!(
            got.iter().any(|(e, _)| *e == SecretEncoding::Base64Url),
            "{url}"
        );
        let dashed = secret
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join("-");
        let got = decode_candidates(dashed.as_bytes());
        assert!(
            got.iter()
                .any(|(e, d)| *e == SecretEncoding::Hex && d == secret)
        );
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let got = decode_candidates(hex.as_bytes());
        assert!(
            got.iter()
                .any(|(e, d)| *e == SecretEncoding::Hex && d == secret)
        );
        let b32 = data_encoding::BASE32.encode(secret);
        let got = decode_candidates(b32.as_bytes());
        assert!(
            got.iter()
                .any(|(e, d)| *e == SecretEncoding::Base32 && d == secret)
        );
        let pct = b"token%3Dghp_0123456789abcdefghijklmnopqrstuvwxyzAB";
        let got = decode_candidates(pct);
        assert!(
            got.iter()
                .any(|(e, d)| *e == SecretEncoding::Percent && d.starts_with(b"token=ghp_"))
        );
        assert!(decode_candidates(b"abcdefghijklmnopqrstuvwxyzabcdefghij").is_empty());
    }
}
