//! `pipelock-agent healthcheck --addr HOST:PORT`, for container probes:
//! one plain HTTP/1.1 `GET /health`; healthy means status 200 and a JSON
//! body with `"status":"healthy"`. Everything must happen within the timeout.
use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Probes `addr`; `Ok` when healthy (the process then exits 0), an error
/// saying what was wrong otherwise (exit 1).
pub fn run(addr: &str, timeout_secs: u64) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(timeout_secs.max(1));
    let status = probe(addr, timeout)?;
    println!("{addr}: healthy ({status})");
    Ok(())
}

/// The probe itself: the mode reported, or why it is not healthy.
pub fn probe(addr: &str, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    let target = addr
        .to_socket_addrs()
        .with_context(|| format!("healthcheck: cannot resolve {addr}"))?
        .next()
        .with_context(|| format!("healthcheck: {addr} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&target, timeout)
        .with_context(|| format!("healthcheck: cannot connect to {addr}"))?;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    stream.set_write_timeout(Some(left()))?;
    write!(
        stream,
        "GET /health HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: pipelock-agent-healthcheck\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("healthcheck: sending to {addr}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if Instant::now() >= deadline {
            bail!("healthcheck: {addr} did not answer within {timeout:?}");
        }
        stream.set_read_timeout(Some(left()))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!("healthcheck: {addr} did not answer within {timeout:?}")
            }
            Err(e) => return Err(e).with_context(|| format!("healthcheck: reading from {addr}")),
        }
        if raw.len() > 1 << 20 {
            bail!("healthcheck: {addr} answered more than 1 MiB");
        }
    }
    judge(&raw).map_err(|why| anyhow::anyhow!("healthcheck: {addr}: {why}"))
}

/// Reads a raw HTTP/1.1 answer: the reported mode when healthy.
fn judge(raw: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("not an HTTP answer")?;
    let status_line = head.lines().next().unwrap_or_default();
    let code = status_line.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        return Err(format!("not healthy: {status_line}"));
    }
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    let v: serde_json::Value =
        serde_json::from_str(body.trim()).map_err(|e| format!("/health is not JSON: {e}"))?;
    match v["status"].as_str() {
        Some("healthy") => Ok(format!(
            "mode {}, kill switch {}",
            v["mode"].as_str().unwrap_or("?"),
            if v["kill_switch_active"] == true {
                "on"
            } else {
                "off"
            }
        )),
        other => Err(format!("status is {other:?}, not \"healthy\"")),
    }
}

/// Joins the chunks of a chunked body (enough for a small JSON document).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_status_and_body() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"status\":\"healthy\",\"mode\":\"balanced\"}";
        assert_eq!(judge(ok).unwrap(), "mode balanced, kill switch off");
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n14\r\n{\"status\":\"healthy\"}\r\n0\r\n\r\n";
        assert!(judge(chunked).is_ok(), "{:?}", judge(chunked));
        let down = b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"error\":\"kill_switch_active\"}";
        assert!(judge(down).unwrap_err().contains("503"));
        let sick = b"HTTP/1.1 200 OK\r\n\r\n{\"status\":\"degraded\"}";
        assert!(judge(sick).is_err());
        assert!(judge(b"garbage").is_err());
    }

    #[test]
    fn nothing_listening_is_unhealthy() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = probe(&format!("127.0.0.1:{port}"), Duration::from_secs(1)).unwrap_err();
        assert!(format!("{e:#}").contains("cannot connect"), "{e:#}");
    }
}
