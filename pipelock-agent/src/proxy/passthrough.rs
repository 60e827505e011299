//! Passthrough domains (`--passthrough-domain`, glob patterns such as
//! `*.bank.example`): TLS connections to these names are relayed without
//! decryption, for certificate-pinned clients. Matching is case-insensitive;
//! `*` matches any run of characters (dots included); a pattern that is an
//! IP address also matches SNI-less connections to that address.
//!
//! The SNI is the client's word, so before a connection is relayed for a
//! name, the agent proves that the destination address serves that name: it
//! completes a TLS handshake of its own with the destination for the name
//! and verifies the certificate (system roots plus `interceptor.upstream_ca`).
//! [`VerifiedNames`] caches the answer per (address, name).
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};

use rustls_pki_types::ServerName;

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

/// How long a proof that an address serves a name is trusted.
const VERIFIED_TTL: Duration = Duration::from_secs(600);
/// How long a failed proof is remembered (no new probe meanwhile).
const FAILED_TTL: Duration = Duration::from_secs(30);
/// Entries kept at most; the cache is emptied when it is full.
const MAX_ENTRIES: usize = 4096;

/// (address, lower-case name) → when it was checked, and the answer.
type Proofs = HashMap<(IpAddr, String), (Instant, Result<(), String>)>;

/// Answers "does `addr` serve a certificate valid for `name`?", cached.
#[derive(Debug, Default)]
pub struct VerifiedNames {
    cache: Mutex<Proofs>,
}

impl VerifiedNames {
    /// Ok when `dst` proved, by a verified TLS handshake, to serve `name`;
    /// the reason otherwise.
    pub async fn check(
        &self,
        dst: SocketAddr,
        name: &str,
        tls: &std::sync::Arc<crate::tls::Tls>,
        connect_timeout: Duration,
    ) -> Result<(), String> {
        let key = (dst.ip(), name.trim_end_matches('.').to_ascii_lowercase());
        if let Some((at, r)) = self.lock().get(&key)
            && at.elapsed() < if r.is_ok() { VERIFIED_TTL } else { FAILED_TTL }
        {
            return r.clone();
        }
        let result = probe(dst, &key.1, tls, connect_timeout).await;
        let mut cache = self.lock();
        if cache.len() >= MAX_ENTRIES {
            cache.clear();
        }
        cache.insert(key, (Instant::now(), result.clone()));
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Proofs> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One verified handshake with `dst` for `name` (then closed).
async fn probe(
    dst: SocketAddr,
    name: &str,
    tls: &std::sync::Arc<crate::tls::Tls>,
    connect_timeout: Duration,
) -> Result<(), String> {
    use super::upstream::{Proto, Target, TlsTarget, dial};
    let server_name =
        ServerName::try_from(name.to_owned()).map_err(|e| format!("unusable SNI: {e}"))?;
    let target = Target {
        addr: dst,
        tls: Some(TlsTarget {
            tls: tls.clone(),
            server_name,
            offer: crate::tls::AlpnOffer::Http11,
        }),
        connect_timeout,
        response_timeout: connect_timeout,
    };
    dial(&target, Proto::Http1, None)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
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
