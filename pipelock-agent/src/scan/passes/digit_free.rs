//! Encoded runs without a digit. The run pass (`runs`) starts from digits,
//! which nearly every encoded secret holds; about one base64 encoding of a
//! 20-byte key in a hundred has none (and base32 of upper-case text often
//! has none). In a short field (a URL, a header value) every such run is
//! decoded (`text::scan_dlp_field`). Bodies are not read this way: the
//! encoded forms of well-known key prefixes as Hyperscan literals, which
//! flagged such runs in bodies, cost Hyperscan about a quarter of its
//! clean-text throughput (`cargo xtask bench scan`, Hyperscan DLP alone at
//! 10 KB: 4564 MB/s without them, 3458 with), so a digit-free encoding in a
//! body is a known miss.

/// Shortest digit-free run decoded.
const MIN_RUN: usize = 24;

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
    fn only_long_digit_free_runs() {
        let text = b"a QUtJQUFPTjZSWUlaNEFVNFhGREs= b abc123abc123abc123abc123abc1 c short";
        let runs: Vec<&[u8]> = digit_free_runs(text, 4096).collect();
        assert_eq!(runs, [&b"QUtJQUFPTjZSWUlaNEFVNFhGREs="[..]]);
    }
}
