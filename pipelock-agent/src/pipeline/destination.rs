//! Destination policy: what a request's destination alone says, before any
//! payload is read. The SSRF guard judges the address actually connected to
//! (so DNS rebinding changes nothing) and IP literals in the Host, written
//! in any form (decimal, octal, hex, short, IPv4-mapped) after
//! normalisation; the blocklist (Pipelock's default paste and file-drop
//! sites, globs) judges the verified TLS name and the Host; DNS-exfiltration
//! hostnames (long random or encoded labels) and high-entropy URL path
//! segments and query values are flagged with sensible exclusions (UUIDs,
//! hex digests, signatures, OAuth state). Returns rule ids; the verdict is
//! the pipeline's.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::scan::passes::judge::entropy;

/// Pipelock's default `fetch_proxy.monitoring.blocklist`.
pub const DEFAULT_BLOCKLIST: &[&str] = &[
    "*.pastebin.com",
    "*.hastebin.com",
    "*.paste.ee",
    "*.transfer.sh",
    "*.file.io",
    "*.requestbin.com",
];

/// Hosts of API providers: opaque values in their URLs (keys, signatures)
/// are how they are called.
const ENTROPY_EXEMPT_HOSTS: &[&str] = &[
    "googleapis.com",
    "amazonaws.com",
    "openai.com",
    "anthropic.com",
    "github.com",
    "githubusercontent.com",
    "stripe.com",
    "plaid.com",
    "slack.com",
    "windows.net",
];

/// Query parameters that carry random values by design.
const RANDOM_BY_DESIGN: &[&str] = &[
    "state",
    "nonce",
    "code",
    "code_challenge",
    "code_verifier",
    "signature",
    "sig",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "integrity",
    "etag",
    "cursor",
    "page_token",
    "pagetoken",
    "continuation",
];

/// One destination finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestFinding {
    /// A cloud metadata or link-local address (connected to or written in the Host).
    Ssrf,
    /// A blocklisted host.
    Blocklist,
    /// A hostname that looks like data encoded into DNS labels.
    DnsExfil,
    /// A high-entropy URL path segment or query value.
    UrlEntropy,
}

impl DestFinding {
    /// The rule id of the finding.
    pub fn rule_id(self) -> &'static str {
        match self {
            DestFinding::Ssrf => "dest.ssrf",
            DestFinding::Blocklist => "dest.blocklist",
            DestFinding::DnsExfil => "dest.dns_exfil",
            DestFinding::UrlEntropy => "dest.url_entropy",
        }
    }
}

/// What the policy knows besides its defaults.
#[derive(Clone, Debug, Default)]
pub struct DestPolicy {
    /// Extra blocklist globs (`*.x` covers x and its subdomains).
    pub blocklist: Vec<String>,
    /// Hosts exempt from the SSRF, DNS-exfiltration and entropy checks
    /// (Pipelock's `trusted_domains`), judged on the verified name only.
    pub trusted_domains: Vec<String>,
}

/// [`is_metadata_addr`]'s ranges as CIDRs, for the kernel's deny map
/// (`interceptor.deny_cidrs`' default).
pub const METADATA_CIDRS: &[&str] = &[
    "169.254.0.0/16",
    "100.100.100.200/32",
    "fd00:ec2::254/128",
    "fe80::/10",
];

/// [`METADATA_CIDRS`] parsed.
pub fn metadata_nets() -> Vec<ipnet::IpNet> {
    METADATA_CIDRS
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// Cloud metadata addresses and ranges no workload should reach by HTTP
/// through the interceptor: link-local (AWS/GCP/Azure 169.254.169.254,
/// ECS 169.254.170.2), Alibaba's 100.100.100.200, AWS's IPv6 fd00:ec2::254,
/// IPv6 link-local.
pub fn is_metadata_addr(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_metadata_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_metadata_v4(v4);
            }
            v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

fn is_metadata_v4(v4: Ipv4Addr) -> bool {
    v4.is_link_local() || v4 == Ipv4Addr::new(100, 100, 100, 200)
}

/// Parses one IPv4 part as inet_aton does: `0x` hex, leading-0 octal or decimal.
fn aton_part(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() {
        return (radix == 16).then_some(0);
    }
    u64::from_str_radix(digits, radix).ok()
}

/// A host as the IP address a resolver would make of it: bracketed IPv6
/// (IPv4-mapped included) and IPv4 in inet_aton's forms (`2852039166`,
/// `0xa9fea9fe`, `0251.0376.0251.0376`, `169.254.43518`).
pub fn normalise_ip(host: &str) -> Option<IpAddr> {
    let h = host.trim_end_matches('.');
    if let Some(inner) = h.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(v6) = h.parse::<Ipv6Addr>() {
        return Some(IpAddr::V6(v6));
    }
    let parts: Vec<&str> = h.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let nums: Option<Vec<u64>> = parts.iter().map(|p| aton_part(p)).collect();
    let nums = nums?;
    let (last, head) = nums.split_last()?;
    if head.iter().any(|&n| n > 255) {
        return None;
    }
    let rest_bits = 8 * (4 - head.len() as u32);
    if *last >= 1u64 << rest_bits {
        return None;
    }
    let mut v: u64 = 0;
    for (i, &n) in head.iter().enumerate() {
        v |= n << (24 - 8 * i as u32);
    }
    v |= last;
    Some(IpAddr::V4(Ipv4Addr::from(v as u32)))
}

/// `host` matches a glob: `*.x` matches x and any subdomain; otherwise
/// equality (ASCII case-insensitive, a trailing dot ignored; no allocation:
/// it runs for every request).
pub fn glob_matches(glob: &str, host: &str) -> bool {
    let glob = glob.trim();
    match glob.strip_prefix("*.") {
        Some(suffix) => suffix_matches(suffix, host),
        None => host.trim_end_matches('.').eq_ignore_ascii_case(glob),
    }
}

/// `host` is `suffix` or a subdomain of it (as the glob `*.suffix`).
fn suffix_matches(suffix: &str, host: &str) -> bool {
    let (h, s) = (host.trim_end_matches('.').as_bytes(), suffix.as_bytes());
    h.eq_ignore_ascii_case(s)
        || (h.len() > s.len()
            && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
            && h[h.len() - s.len() - 1] == b'.')
}

fn on_suffix(host: &str, suffixes: &[&str]) -> bool {
    suffixes.iter().any(|s| suffix_matches(s, host))
}

/// A DNS label that carries data: long and random, or long hex/base32.
fn exfil_label(label: &str) -> bool {
    let l = label.as_bytes();
    if l.starts_with(b"xn--") || l.len() < 20 {
        return false;
    }
    let digits = l.iter().filter(|b| b.is_ascii_digit()).count();
    let hex = l.iter().all(u8::is_ascii_hexdigit);
    let base32 = l
        .iter()
        .all(|b| b.is_ascii_alphabetic() || (b'2'..=b'7').contains(b));
    (hex && digits > 0)
        || (l.len() >= 24 && base32 && digits > 0 && entropy(l) >= 3.5)
        || (digits > 0 && entropy(l) >= 3.8)
}

/// Hostnames that look like data encoded into labels.
pub fn is_dns_exfil(host: &str) -> bool {
    let labels: Vec<&str> = host.trim_end_matches('.').split('.').collect();
    if labels.len() < 3 {
        return false;
    }
    let sub = &labels[..labels.len() - 2];
    let carrying = sub.iter().filter(|l| exfil_label(l)).count();
    let long_total: usize = sub.iter().map(|l| l.len()).sum();
    carrying >= 1 || (long_total >= 100 && sub.len() >= 4)
}

/// A URL part that is opaque, random data rather than a name, an id or a
/// digest: 32+ characters of a base64/base62 alphabet with high entropy.
fn opaque_value(v: &str) -> bool {
    let v = v
        .split_once(':')
        .filter(|(algo, _)| algo.starts_with("sha") || algo.starts_with("md5"))
        .map_or(v, |(_, d)| d);
    let b = v.as_bytes();
    if b.len() < 32 {
        return false;
    }
    // Hex digests, UUIDs, version ids.
    if b.iter().all(|c| c.is_ascii_hexdigit() || *c == b'-') {
        return false;
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'+' | b'/' | b'=' | b'%'))
    {
        return false;
    }
    entropy(b) >= 4.5
}

/// High-entropy path segments or query values.
pub fn has_url_entropy(path_and_query: &str) -> bool {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    if path.split('/').any(opaque_value) {
        return true;
    }
    query.split('&').any(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or(("", pair));
        !RANDOM_BY_DESIGN.iter().any(|r| r.eq_ignore_ascii_case(k)) && opaque_value(v)
    })
}

impl DestPolicy {
    /// Judges one request: the address connected to, the verified name
    /// (TLS) and the Host (lower case, no port), the request target.
    pub fn check(
        &self,
        connected: Option<IpAddr>,
        verified_name: Option<&str>,
        host: &str,
        path_and_query: &str,
    ) -> Vec<DestFinding> {
        let mut out = Vec::new();
        let trusted = verified_name.is_some_and(|n| {
            self.trusted_domains
                .iter()
                .any(|g| glob_matches(g, n) || suffix_matches(g.trim_end(), n))
        });
        let host_ip = normalise_ip(host);
        if !trusted
            && (connected.is_some_and(is_metadata_addr) || host_ip.is_some_and(is_metadata_addr))
        {
            out.push(DestFinding::Ssrf);
        }
        let names = [verified_name, (!host.is_empty()).then_some(host)];
        let blocked = names.iter().flatten().any(|n| {
            DEFAULT_BLOCKLIST
                .iter()
                .copied()
                .chain(self.blocklist.iter().map(String::as_str))
                .any(|g| glob_matches(g, n))
        });
        if blocked {
            out.push(DestFinding::Blocklist);
        }
        let name = verified_name.unwrap_or(host);
        if trusted || host_ip.is_some() {
            return out;
        }
        if is_dns_exfil(name) {
            out.push(DestFinding::DnsExfil);
        }
        if !on_suffix(name, ENTROPY_EXEMPT_HOSTS) && has_url_entropy(path_and_query) {
            out.push(DestFinding::UrlEntropy);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_forms_normalised() {
        // The kernel's default deny list is the same set.
        assert_eq!(metadata_nets().len(), METADATA_CIDRS.len());
        for net in metadata_nets() {
            assert!(is_metadata_addr(net.network()), "{net}");
            assert!(is_metadata_addr(net.broadcast()), "{net}");
        }
        let md: IpAddr = "169.254.169.254".parse().unwrap();
        for h in [
            "169.254.169.254",
            "2852039166",
            "0xa9fea9fe",
            "0251.0376.0251.0376",
            "169.254.43518",
            "0xa9.0xfe.0xa9.0xfe",
        ] {
            assert_eq!(normalise_ip(h), Some(md), "{h}");
        }
        assert!(is_metadata_addr(
            normalise_ip("[::ffff:169.254.169.254]").unwrap()
        ));
        assert!(is_metadata_addr(normalise_ip("[fd00:ec2::254]").unwrap()));
        assert_eq!(normalise_ip("api.example.test"), None);
        assert_eq!(normalise_ip("1.2.3.4.5"), None);
        assert_eq!(normalise_ip("256.1.1.1"), None);
        assert!(!is_metadata_addr("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn blocklist_globs() {
        assert!(glob_matches("*.pastebin.com", "pastebin.com"));
        assert!(glob_matches("*.pastebin.com", "api.pastebin.com"));
        assert!(!glob_matches("*.pastebin.com", "notpastebin.com"));
        assert!(!glob_matches("*.pastebin.com", "pastebin.com.evil.test"));
        assert!(glob_matches(" *.PasteBin.com ", "API.pastebin.COM."));
        assert!(glob_matches("Exact.Test", "exact.test."));
        assert!(!glob_matches("exact.test", "sub.exact.test"));
        assert!(!glob_matches("*.é.test", "x.É.test"));
        assert!(on_suffix("api.github.com", ENTROPY_EXEMPT_HOSTS));
        assert!(!on_suffix("evilgithub.com", ENTROPY_EXEMPT_HOSTS));
    }

    #[test]
    fn dns_exfil_and_entropy() {
        assert!(is_dns_exfil(
            "ovzwk4r5mfwgsy3fhnrwc4temq6dkmzz.exfil.example.test"
        ));
        assert!(is_dns_exfil("414b4941414243444546474849.attacker.test"));
        assert!(!is_dns_exfil("api.eu-west-1.example.test"));
        assert!(!is_dns_exfil("d1a2b3c4d5e6f7.cloudfront.net"));
        assert!(!is_dns_exfil("xn--bcher-kva.example.test"));
        assert!(has_url_entropy(
            "/upload/Zk9xQm2vLp7RtW4yNc8BjH3sDf6GaK1eZk9xQm2vLp7RtW4y"
        ));
        assert!(!has_url_entropy(
            "/v1/accounts/3f1c9a7e-2b4d-4e8f-9a61-7c2d5b8e0f13/transactions?page=2"
        ));
        assert!(!has_url_entropy(
            "/v2/app/blobs/sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        ));
        assert!(!has_url_entropy(
            "/authorize?state=Zk9xQm2vLp7RtW4yNc8BjH3sDf6GaK1eZk9xQm2&code_challenge=Zk9xQm2vLp7RtW4yNc8BjH3sDf6GaK1eZk9xQm2"
        ));
    }
}
