//! Encoded runs without a digit. The run pass (`runs`) starts from digits,
//! which nearly every encoded secret holds; about one base64 encoding of a
//! 20-byte key in a hundred has none (and base32 of upper-case text often
//! has none). Here the well-known key prefixes (`AKIA`, `ghp_`, `sk_live_`,
//! …) are written in base64, base64url and base32 at every alignment, as
//! literals for Hyperscan ([`literals`]); a buffer holding one is split into
//! its digit-free runs ([`digit_free_runs`]), which the caller decodes.

use base64::Engine as _;

/// Key prefixes whose encoded forms mark a run worth decoding.
const PREFIXES: &[&[u8]] = &[
    b"AKIA",
    b"ASIA",
    b"ghp_",
    b"gho_",
    b"ghs_",
    b"ghu_",
    b"github_pat_",
    b"glpat-",
    b"sk-ant-",
    b"sk-proj-",
    b"sk_live_",
    b"rk_live_",
    b"xoxb-",
    b"xoxp-",
    b"AIza",
    b"hf_",
    b"npm_",
    b"whsec_",
    b"PRIVATE KEY",
];

/// Fewest encoded characters a literal keeps. Shorter ones match by chance
/// and, worse, slow Hyperscan down for everything: with the 4- and
/// 5-character forms the DLP database scanned clean text about 20 % slower,
/// with 6 and more no slower than without them (measured on 8 MB of
/// /usr/share/doc). So `AKIA` is found in base32 at three alignments of
/// five but in base64 at none; longer prefixes at all.
const MIN_LITERAL: usize = 6;

/// Shortest digit-free run decoded.
const MIN_RUN: usize = 24;

/// The characters of `encoded` fully determined by the bytes from bit
/// `from` to bit `to` of the input, `bits` per character.
fn determined(encoded: &[u8], from: usize, to: usize, bits: usize) -> &[u8] {
    let first = from.div_ceil(bits);
    let last = (to / bits).min(encoded.len());
    encoded.get(first..last).unwrap_or_default()
}

/// Every encoded form of every prefix: base64 and base64url at the three
/// byte alignments, base32 at the five.
pub fn literals() -> Vec<Vec<u8>> {
    literals_of(PREFIXES)
}

/// [`literals`] of the given prefixes.
fn literals_of(prefixes: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for prefix in prefixes {
        for k in 0..5 {
            let mut input = vec![0u8; k];
            input.extend_from_slice(prefix);
            let (from, to) = (8 * k, 8 * (k + prefix.len()));
            if k < 3 {
                for engine in [
                    &base64::engine::general_purpose::STANDARD_NO_PAD,
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                ] {
                    let e = engine.encode(&input);
                    out.push(determined(e.as_bytes(), from, to, 6).to_vec());
                }
            }
            let e = data_encoding::BASE32_NOPAD.encode(&input);
            out.push(determined(e.as_bytes(), from, to, 5).to_vec());
        }
    }
    out.retain(|l| l.len() >= MIN_LITERAL);
    out.sort();
    out.dedup();
    out
}

fn is_run_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_' | b'=')
}

/// The runs of base64/base32 characters in `s` at least [`MIN_RUN`] long
/// that hold no digit (the run pass decodes the others), at most `max`
/// bytes each.
pub fn digit_free_runs(s: &[u8], max: usize) -> impl Iterator<Item = &[u8]> {
    s.split(|&b| !is_run_byte(b))
        .filter(|r| r.len() >= MIN_RUN && !r.iter().any(u8::is_ascii_digit))
        .map(move |r| &r[..r.len().min(max)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_found_in_encodings_at_every_offset() {
        let lits = literals();
        assert!(lits.iter().all(|l| l.len() >= MIN_LITERAL));
        let key = b"sk_live_AON6RYIZ4AU4XFDK";
        for pad in 0..8 {
            let mut input = b"x".repeat(pad);
            input.extend_from_slice(key);
            for enc in [
                base64::engine::general_purpose::STANDARD.encode(&input),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&input),
                data_encoding::BASE32.encode(&input),
            ] {
                assert!(
                    lits.iter()
                        .any(|l| memchr::memmem::find(enc.as_bytes(), l).is_some()),
                    "{enc}"
                );
            }
        }
    }

    #[test]
    fn only_long_digit_free_runs() {
        let text = b"a QUtJQUFPTjZSWUlaNEFVNFhGREs= b abc123abc123abc123abc123abc1 c short";
        let runs: Vec<&[u8]> = digit_free_runs(text, 4096).collect();
        assert_eq!(runs, [&b"QUtJQUFPTjZSWUlaNEFVNFhGREs="[..]]);
    }
}
