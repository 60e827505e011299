//! Passthrough domains (`--passthrough-domain`, glob patterns such as
//! `*.bank.example`): TLS connections to these names are relayed without
//! decryption, for certificate-pinned clients. Matching is case-insensitive;
//! `*` matches any run of characters (dots included); a pattern that is an
//! IP address also matches SNI-less connections to that address.
use std::net::IpAddr;

/// The configured passthrough patterns.
#[derive(Clone, Debug, Default)]
pub struct PassthroughDomains {
    patterns: Vec<String>,
}

impl PassthroughDomains {
    /// From the flag values (empty entries ignored).
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(patterns: I) -> Self {
        Self {
            patterns: patterns
                .into_iter()
                .map(|p| p.as_ref().trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|p| !p.is_empty())
                .collect(),
        }
    }

    /// True when the connection (SNI, else destination IP) must not be decrypted.
    pub fn matches(&self, sni: Option<&str>, dst: IpAddr) -> bool {
        let name = match sni {
            Some(s) => s.trim_end_matches('.').to_ascii_lowercase(),
            None => dst.to_string(),
        };
        self.patterns
            .iter()
            .any(|p| glob(p.as_bytes(), name.as_bytes()))
    }
}

/// `*` wildcard matching, iterative with single backtracking point (linear-ish, no recursion).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let d = PassthroughDomains::new(["*.Bank.example", "pinned.test", "10.0.0.1"]);
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        assert!(d.matches(Some("api.bank.example"), ip));
        assert!(d.matches(Some("a.b.BANK.example."), ip));
        assert!(!d.matches(Some("bank.example"), ip));
        assert!(!d.matches(Some("evilbank.example"), ip));
        assert!(d.matches(Some("pinned.test"), ip));
        assert!(!d.matches(Some("pinned.test.evil"), ip));
        assert!(d.matches(None, "10.0.0.1".parse().expect("ip")));
        assert!(!d.matches(None, ip));
        assert!(!PassthroughDomains::default().matches(Some("x"), ip));
    }
}
