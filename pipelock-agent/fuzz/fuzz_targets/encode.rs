//! Real encoders for each content coding, so fuzzed payloads also reach
//! the decoders as valid streams (shared by `decode` and `pipeline`).
use std::io::Write as _;

use pipelock_agent::scan::text::decode::ContentCoding;

/// `data` encoded with `c` (`zlib`: zlib-wrapped rather than raw deflate).
pub fn encode(c: ContentCoding, data: &[u8], zlib: bool) -> Vec<u8> {
    match c {
        ContentCoding::Identity => data.to_vec(),
        ContentCoding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        // `deflate` is zlib-wrapped or raw; the decoder tells by the first byte.
        ContentCoding::Deflate if zlib => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        ContentCoding::Deflate => {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        ContentCoding::Brotli => {
            let mut out = Vec::new();
            let mut e = brotli::CompressorWriter::new(&mut out, 4096, 1, 18);
            e.write_all(data).unwrap();
            drop(e);
            out
        }
        ContentCoding::Zstd => zstd::encode_all(data, 1).unwrap(),
    }
}
