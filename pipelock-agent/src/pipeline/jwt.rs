//! Credential audience of JSON Web Tokens: the sites a token names as its
//! issuer (`iss`) and audience (`aud`), and whether a request's verified
//! TLS name belongs to one of them. A JWT sent to its own site is normal
//! authentication; the same token sent anywhere else is a leak.
use base64::Engine as _;

/// JWT-shaped tokens (`eyJ….eyJ….sig`) in a header value.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
        .filter(|t| t.starts_with(b"eyJ") && t.iter().filter(|&&b| b == b'.').count() == 2)
}

/// The host of an `iss`/`aud` value (a URL or a bare host), lower case.
fn host_of(v: &str) -> Option<String> {
    let rest = v.split_once("://").map_or(v, |(_, r)| r);
    let host = rest
        .split(['/', ':', '?', '#'])
        .next()?
        .to_ascii_lowercase();
    (host.contains('.') && !host.is_empty()).then_some(host)
}

/// Hosts a token names in `iss` and `aud` (empty when it names none or
/// cannot be decoded).
pub fn named_hosts(token: &[u8]) -> Vec<String> {
    let Some(payload) = token.split(|&b| b == b'.').nth(1) else {
        return Vec::new();
    };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.strip_suffix(b"=").unwrap_or(payload))
    else {
        return Vec::new();
    };
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(&json) else {
        return Vec::new();
    };
    let mut hosts = Vec::new();
    for key in ["iss", "aud"] {
        match &claims[key] {
            serde_json::Value::String(s) => hosts.extend(host_of(s)),
            serde_json::Value::Array(a) => {
                hosts.extend(a.iter().filter_map(|v| v.as_str()).filter_map(host_of))
            }
            _ => {}
        }
    }
    hosts
}

/// The registrable part of a host, approximated by its last two labels.
fn site(host: &str) -> &str {
    let h = host.trim_end_matches('.');
    match h.rmatch_indices('.').nth(1) {
        Some((i, _)) => &h[i + 1..],
        None => h,
    }
}

/// True when every JWT in `value` may go where the request goes: to a
/// site it names as issuer or audience (judged by the verified TLS name),
/// or, in an auth header, when it names no site at all (a first-party
/// session token). True when there is no JWT.
pub fn audience_ok(value: &[u8], auth_header: bool, verified_name: Option<&str>) -> bool {
    tokens(value).all(|t| {
        let hosts = named_hosts(t);
        if hosts.is_empty() {
            return auth_header;
        }
        verified_name.is_some_and(|n| hosts.iter().any(|h| site(h) == site(n)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.c2lnbmF0dXJlc2lnbmF0dXJl",
            e(r#"{"alg":"RS256"}"#),
            e(claims)
        )
    }

    #[test]
    fn audience_by_issuer_and_audience_sites() {
        let own = jwt(r#"{"iss":"https://auth.example.test/","sub":"1"}"#);
        let v = format!("Bearer {own}");
        assert!(audience_ok(v.as_bytes(), true, Some("api.example.test")));
        assert!(!audience_ok(
            v.as_bytes(),
            true,
            Some("collector.evil.test")
        ));
        assert!(!audience_ok(v.as_bytes(), true, None));
        let aud = jwt(
            r#"{"iss":"https://login.microsoftonline.com/t/v2.0","aud":["https://graph.microsoft.com"]}"#,
        );
        assert!(audience_ok(
            aud.as_bytes(),
            true,
            Some("graph.microsoft.com")
        ));
        let anon = jwt(r#"{"sub":"1"}"#);
        assert!(audience_ok(anon.as_bytes(), true, Some("x.test")));
        assert!(!audience_ok(anon.as_bytes(), false, Some("x.test")));
        assert!(audience_ok(b"no token here", false, None));
    }
}
