//! `scan::text::decode::ContentDecoder` (gzip, deflate, br, zstd, chained)
//! with small `DecodeLimits`, fed in random chunkings. Nothing panics; the
//! bytes decoded never exceed `max_output`; two chunkings that both end
//! `Ok` decode the same bytes; and a payload compressed here first (mode
//! bit) decodes back to itself unless a limit cut it off.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pipelock_agent::scan::text::decode::{
    ContentCoding, ContentDecoder, DecodeLimits, DecodeStatus,
};

mod common;
mod encode;
use encode::encode;

const CODINGS: [ContentCoding; 5] = [
    ContentCoding::Identity,
    ContentCoding::Gzip,
    ContentCoding::Deflate,
    ContentCoding::Brotli,
    ContentCoding::Zstd,
];

fn run(
    codings: &[ContentCoding],
    limits: DecodeLimits,
    pieces: &[&[u8]],
) -> (Vec<u8>, DecodeStatus) {
    let mut d = ContentDecoder::new(codings, limits).expect("decoder");
    let mut out = Vec::new();
    let mut status = DecodeStatus::Ok;
    if pieces.is_empty() {
        status = d.feed(&[], true, &mut |b| out.extend_from_slice(b));
    }
    for (i, p) in pieces.iter().enumerate() {
        status = d.feed(p, i + 1 == pieces.len(), &mut |b| out.extend_from_slice(b));
    }
    // (An identity body is passed through unlimited: nothing is decompressed.)
    if !d.is_identity() {
        assert!(
            out.len() as u64 <= limits.max_output,
            "output over max_output"
        );
    }
    assert!(d.output_bytes() >= out.len() as u64);
    (out, status)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (head, data) = data.split_at(4);
    // head[0]: two codings (applied order) and whether to compress here.
    let codings: Vec<ContentCoding> = [head[0] % 5, (head[0] / 5) % 5]
        .iter()
        .map(|&i| CODINGS[usize::from(i)])
        .filter(|&c| c != ContentCoding::Identity || head[0] & 0x80 == 0)
        .collect();
    let compress = head[0] & 0x80 != 0;
    let limits = DecodeLimits {
        max_output: 64 + u64::from(head[1]) * 512,
        max_ratio: 1 + u64::from(head[2]),
        ratio_min_output: u64::from(head[3]) * 64,
    };
    let (sizes, payload) = common::plan(data);
    let body = if compress {
        let mut b = payload.to_vec();
        for (i, &c) in codings.iter().enumerate() {
            b = encode(c, &b, (head[3] >> i) & 1 == 1);
        }
        b
    } else {
        payload.to_vec()
    };
    let (whole, ws) = run(&codings, limits, &[&body]);
    let (split, ss) = run(&codings, limits, &common::chunks(&body, sizes));
    if ws == DecodeStatus::Ok && ss == DecodeStatus::Ok {
        assert_eq!(whole, split, "chunking changed the decoded bytes");
    }
    if compress {
        assert!(
            payload.starts_with(&whole),
            "decoded bytes are not the payload's"
        );
    }
    if compress && ws == DecodeStatus::Ok {
        assert_eq!(whole, payload, "round trip through the encoders failed");
    }
    if compress && ws == DecodeStatus::Failed {
        panic!("our own encoding failed to decode: {codings:?}");
    }
});
