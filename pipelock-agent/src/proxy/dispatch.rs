//! Decides how one redirected connection is served, from its first bytes
//! (`sniff`): a TLS ClientHello is intercepted (or relayed undecrypted for a
//! passthrough domain), plaintext HTTP is proxied, anything else is relayed
//! or reset per `--non-http`. The upstream is connected while the client's
//! first bytes are awaited, so server-speaks-first protocols are recognised
//! (and relayed) as soon as the server talks.
//!
//! ALPN: the agent connects to the upstream first, offering `h2` and
//! `http/1.1` when the client offered `h2` (else `http/1.1` only), then
//! offers the client exactly the protocol the upstream chose. When the client
//! offered only `h2` but the upstream speaks HTTP/1.1 the agent translates
//! (HTTP/2 towards the client, HTTP/1.1 connections upstream).
use std::{sync::Arc, time::Duration};

use http::uri::{Authority, Scheme};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

use super::{
    ConnSummary, Error, ProxyContext,
    counting::{Counters, CountingIo},
    http::{self as proxy_http, HttpConn},
    relay,
    sniff::{ClientHelloInfo, ClientStream, Rewind, Sniffed},
    upstream::{self, Keep, Proto, Target, TlsTarget, UpstreamPool},
};
use crate::{
    config::{Mode, NonHttpAction},
    pipeline::ConnMeta,
    tls::{
        AlpnOffer, LeafName,
        config::{H2, HTTP11},
    },
};

/// How long the client's TLS handshake with the agent may take.
const CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one accepted, redirected connection whose original destination is known.
pub async fn serve<S: ClientStream>(
    client: S,
    meta: Arc<ConnMeta>,
    ctx: Arc<ProxyContext>,
    summary: &mut ConnSummary,
) -> Result<(), Error> {
    serve_as(client, meta, ctx, None, summary).await
}

/// Serves one connection; `connect_host` is the host a CONNECT tunnel was
/// opened for (forward proxy): a ClientHello must name it (else it is domain
/// fronting and refused), and it is the name the upstream's certificate is
/// verified against.
pub async fn serve_as<S: ClientStream>(
    mut client: S,
    meta: Arc<ConnMeta>,
    ctx: Arc<ProxyContext>,
    connect_host: Option<String>,
    summary: &mut ConnSummary,
) -> Result<(), Error> {
    let dst = meta.orig_dst.ok_or(Error::NoOrigDst(meta.peer))?;
    // An idle upstream connection to this destination, kept for this pod,
    // says the destination speaks HTTP: no connection of its own is
    // opened while sniffing (one is, after, if the client needs it).
    let keep = Keep::for_conn(&ctx, &meta);
    let connect_early = !keep.any_ready(dst);
    let (sniffed, prefix, pre) =
        match sniff_or_server_first(&mut client, &ctx, dst, connect_early).await {
            Ok(s) => s,
            Err(e) => {
                summary.kind = if matches!(e, Error::Sniff(_)) {
                    "malformed"
                } else {
                    "relay"
                };
                client.abort();
                return Err(e);
            }
        };
    let client = Rewind::new(client, prefix);
    let connect_host = connect_host.map(|h| h.trim_end_matches('.').to_ascii_lowercase());
    if let (Sniffed::Tls(hello), Some(host)) = (&sniffed, &connect_host) {
        let sni = hello
            .sni
            .as_deref()
            .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
        if let Some(sni) = sni.filter(|s| s != host) {
            if ctx.forward.sni_verification {
                summary.kind = "refused";
                abort(client);
                return Err(Error::DomainFronting {
                    connect: host.clone(),
                    sni,
                });
            }
            // The operator turned the check off: the CONNECT host's
            // address must still prove the SNI name with its certificate.
            tracing::warn!(
                target: "pipelock::conn",
                conn = meta.id,
                connect = %host,
                sni = %sni,
                "TLS SNI differs from the CONNECT host; allowed (forward_proxy.sni_verification: false), the upstream is verified for the SNI"
            );
        }
    }
    // Inside a tunnel the CONNECT host names the destination when the
    // ClientHello does not.
    let sniffed = match (sniffed, &connect_host) {
        (Sniffed::Tls(mut hello), Some(host)) => {
            if hello.sni.is_none() && host.parse::<std::net::IpAddr>().is_err() {
                hello.sni = Some(host.clone());
            }
            Sniffed::Tls(hello)
        }
        (s, _) => s,
    };
    match sniffed {
        Sniffed::Closed => {
            summary.kind = "empty";
            Ok(())
        }
        Sniffed::Other => {
            let mode = ctx.pipeline.mode_for(&meta);
            let relay = match ctx.non_http {
                NonHttpAction::Relay => true,
                NonHttpAction::Reset => false,
                NonHttpAction::Refuse => mode == Mode::Audit || ctx.non_http_relay.allows(dst),
            };
            if !relay {
                summary.kind = if ctx.non_http == NonHttpAction::Reset {
                    "reset"
                } else {
                    "refused"
                };
                abort(client);
                return Err(Error::NonHttpRefused);
            }
            if ctx.non_http == NonHttpAction::Refuse && !ctx.non_http_relay.allows(dst) {
                tracing::warn!(
                    target: "pipelock::conn",
                    conn = meta.id,
                    orig_dst = %dst,
                    mode = mode.as_str(),
                    "unscannable traffic (neither TLS nor HTTP) relayed in audit mode; strict and balanced refuse it"
                );
            }
            blind_relay(client, pre, &meta, &ctx, dst, "relay", summary).await
        }
        Sniffed::Http {
            h2c_prior_knowledge,
        } => {
            summary.kind = "http";
            let proto = if h2c_prior_knowledge {
                Proto::Http2
            } else {
                Proto::Http1
            };
            let counters = Counters::default();
            let r = plain_http(client, pre, proto, keep, &meta, &ctx, &counters).await;
            (summary.bytes_up, summary.bytes_down) = counters.get();
            r
        }
        Sniffed::Tls(hello) if ctx.passthrough.matches(hello.sni.as_deref(), dst.ip()) => {
            // A name is the client's word: the destination must prove it
            // serves it (an IP pattern is the address connected to).
            if let Some(sni) = &hello.sni
                && let Err(reason) = ctx
                    .passthrough_verified
                    .check(dst, sni, &ctx.tls, ctx.connect_timeout)
                    .await
            {
                let mode = ctx.pipeline.mode_for(&meta);
                if mode != Mode::Audit {
                    summary.kind = "refused";
                    abort(client);
                    return Err(Error::PassthroughUnverified {
                        sni: sni.clone(),
                        orig_dst: dst,
                        reason,
                    });
                }
                tracing::warn!(
                    target: "pipelock::tls",
                    conn = meta.id,
                    sni = %sni,
                    orig_dst = %dst,
                    reason = %reason,
                    "passthrough name not proven by the destination; relayed in audit mode, strict and balanced refuse it"
                );
            }
            tracing::info!(
                target: "pipelock::tls",
                conn = meta.id,
                sni = hello.sni.as_deref().unwrap_or(""),
                orig_dst = %dst,
                "passthrough domain: relaying without decryption"
            );
            blind_relay(client, pre, &meta, &ctx, dst, "passthrough", summary).await
        }
        Sniffed::Tls(hello) => {
            summary.kind = "tls";
            let counters = Counters::default();
            let r = intercept(client, pre, hello, keep, &meta, &ctx, &counters).await;
            (summary.bytes_up, summary.bytes_down) = counters.get();
            r
        }
    }
}

/// Sniffs the client's first bytes while connecting to the upstream (every
/// branch but a refused or empty connection needs that socket, and the
/// connect overlaps the client's first flight). If the upstream speaks before
/// the client (SMTP, MySQL, …: server-speaks-first protocols), the connection
/// is "other" at once instead of after the whole sniff timeout. Without
/// `connect_early` it only sniffs.
async fn sniff_or_server_first<S: ClientStream>(
    client: &mut S,
    ctx: &ProxyContext,
    dst: std::net::SocketAddr,
    connect_early: bool,
) -> Result<(Sniffed, Vec<u8>, Option<TcpStream>), Error> {
    let sniffing = client.sniff_first(ctx.sniff_timeout);
    if !connect_early {
        let (s, prefix) = sniffing.await.map_err(Error::Sniff)?;
        return Ok((s, prefix, None));
    }
    let connecting = relay::connect_upstream(dst, ctx.connect_timeout);
    tokio::pin!(sniffing, connecting);
    let upstream = tokio::select! {
        s = &mut sniffing => {
            let (s, prefix) = s.map_err(Error::Sniff)?;
            if matches!(s, Sniffed::Closed) {
                return Ok((s, prefix, None));
            }
            return Ok((s, prefix, Some(connecting.await?)));
        }
        c = &mut connecting => c?,
    };
    let mut probe = [0u8; 1];
    tokio::select! {
        s = &mut sniffing => {
            let (s, prefix) = s.map_err(Error::Sniff)?;
            Ok((s, prefix, Some(upstream)))
        }
        _ = upstream.peek(&mut probe) => {
            Ok((Sniffed::Other, Vec::new(), Some(upstream)))
        }
    }
}

async fn blind_relay<S: ClientStream>(
    client: Rewind<S>,
    pre: Option<TcpStream>,
    meta: &ConnMeta,
    ctx: &ProxyContext,
    dst: std::net::SocketAddr,
    kind: &'static str,
    summary: &mut ConnSummary,
) -> Result<(), Error> {
    summary.kind = kind;
    if ctx.pipeline.refuse_connection(meta) {
        summary.kind = "kill_switch";
        abort(client);
        return Err(Error::KillSwitch);
    }
    let mut upstream = match pre {
        Some(u) => u,
        None => match relay::connect_upstream(dst, ctx.connect_timeout).await {
            Ok(u) => u,
            Err(e) => {
                abort(client);
                return Err(e);
            }
        },
    };
    // Bytes are counted as they pass, so the relay can be cut when nothing
    // moved for `relay_idle` or when it outlived `relay_max`.
    let limits = ctx.relay_limits();
    // A redirected socket is spliced to the upstream (zero-copy); a
    // forward-proxy tunnel's stream is copied.
    let (inner, prefix) = client.into_parts();
    let (result, counts) = match inner.into_tcp() {
        Ok(tcp) => relay::relay_limited_tcp(tcp, &prefix, &mut upstream, limits).await,
        Err(inner) => relay::relay_limited(Rewind::new(inner, prefix), &mut upstream, limits).await,
    };
    (summary.bytes_up, summary.bytes_down) = counts;
    match result {
        Ok(relay::RelayEnd::Done) => Ok(()),
        Ok(end) => {
            tracing::info!(target: "pipelock::conn", orig_dst = %dst, kind, "relay {}; closing", end.as_str());
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn plain_http<S: ClientStream>(
    client: Rewind<S>,
    pre: Option<TcpStream>,
    proto: Proto,
    keep: Keep,
    meta: &Arc<ConnMeta>,
    ctx: &Arc<ProxyContext>,
    counters: &Counters,
) -> Result<(), Error> {
    let dst = meta.orig_dst.ok_or(Error::NoOrigDst(meta.peer))?;
    let target = Target {
        addr: dst,
        tls: None,
        connect_timeout: ctx.connect_timeout,
        response_timeout: ctx.upstream_response_timeout,
    };
    // A kept connection (one may have come free while sniffing) stands in
    // for the one dialled early.
    let pool = if proto == Proto::Http1 && keep.has_ready(&target) {
        drop(pre);
        Ok(UpstreamPool::new(target, proto, keep))
    } else {
        let (io, up_proto) = match upstream::dial(&target, proto, pre).await {
            Ok(x) => x,
            Err(e) => {
                abort(client);
                return Err(e);
            }
        };
        UpstreamPool::with_first(target, io, up_proto, keep)
            .await
            .map_err(|e| e.to_string())
    };
    let conn = Arc::new(HttpConn::new(
        ctx,
        meta.clone(),
        pool,
        Scheme::HTTP,
        Authority::try_from(dst.to_string()).ok(),
        TaskTracker::new(),
    ));
    let io = CountingIo::new(client, counters.clone());
    let result = proxy_http::serve(io, proto, conn.clone()).await;
    conn.end_tasks().await;
    result.map_err(downstream_http)
}

async fn intercept<S: ClientStream>(
    client: Rewind<S>,
    pre: Option<TcpStream>,
    hello: ClientHelloInfo,
    keep: Keep,
    meta: &Arc<ConnMeta>,
    ctx: &Arc<ProxyContext>,
    counters: &Counters,
) -> Result<(), Error> {
    // The handshakes run in a boxed future of their own, freed once they
    // are done: inline, their state (and what they leave in scope: the
    // ClientHello, the upstream dial's result, the TLS stream before it
    // moved into hyper) would size the connection's task for its whole life.
    let Intercepted {
        stream,
        negotiated,
        conn,
        upstream_failure,
    } = Box::pin(intercept_handshakes(
        client, pre, hello, keep, meta, ctx, counters,
    ))
    .await?;
    let result = proxy_http::serve(stream, negotiated, conn.clone()).await;
    conn.end_tasks().await;
    if let Some(e) = upstream_failure {
        return Err(e);
    }
    result.map_err(downstream_http)
}

/// A client connection whose TLS the agent terminated, ready to be served.
struct Intercepted<S: ClientStream> {
    stream: tokio_rustls::server::TlsStream<CountingIo<Rewind<S>>>,
    negotiated: Proto,
    conn: Arc<HttpConn>,
    /// Why the upstream could not be reached (its requests get 502).
    upstream_failure: Option<Error>,
}

/// Dials the upstream and completes both TLS handshakes (upstream first:
/// its ALPN choice decides what the client is offered). An idle HTTP/1.1
/// connection kept for the same address, verified name, ALPN offer and pod
/// stands in for the dial: it was verified for that name, and it speaks
/// HTTP/1.1.
async fn intercept_handshakes<S: ClientStream>(
    client: Rewind<S>,
    pre: Option<TcpStream>,
    hello: ClientHelloInfo,
    keep: Keep,
    meta: &Arc<ConnMeta>,
    ctx: &Arc<ProxyContext>,
    counters: &Counters,
) -> Result<Intercepted<S>, Error> {
    let dst = meta.orig_dst.ok_or(Error::NoOrigDst(meta.peer))?;
    let (leaf_name, server_name, authority) = match &hello.sni {
        Some(sni) => {
            let name = ServerName::try_from(sni.clone()).map_err(|e| Error::DownstreamTls {
                sni: sni.clone(),
                reason: format!("unusable SNI: {e}"),
            })?;
            let authority = if dst.port() == 443 {
                sni.clone()
            } else {
                format!("{sni}:{}", dst.port())
            };
            (LeafName::dns(sni), name, authority)
        }
        None => (
            LeafName::Ip(dst.ip()),
            ServerName::IpAddress(dst.ip().into()),
            dst.to_string(),
        ),
    };
    let client_h2 = hello.alpn.iter().any(|p| p == H2);
    let client_h1 = hello.alpn.is_empty() || hello.alpn.iter().any(|p| p == HTTP11);
    let target = Target {
        addr: dst,
        tls: Some(TlsTarget {
            tls: ctx.tls.clone(),
            server_name,
            offer: if client_h2 {
                AlpnOffer::Both
            } else {
                AlpnOffer::Http11
            },
        }),
        connect_timeout: ctx.connect_timeout,
        response_timeout: ctx.upstream_response_timeout,
    };

    // Upstream first: its ALPN choice decides what the client is offered, and
    // a TCP-level failure is mirrored to the client as a reset.
    let dialled = if keep.has_ready(&target) {
        drop(pre);
        Ok((None, Proto::Http1))
    } else {
        upstream::dial(&target, Proto::Http1, pre)
            .await
            .map(|(io, proto)| (Some(io), proto))
    };
    let (upstream, up_proto) = match dialled {
        Ok((io, proto)) => (Ok(io), proto),
        Err(e @ (Error::Connect { .. } | Error::ConnectTimeout(_))) => {
            abort(client);
            return Err(e);
        }
        Err(e) => {
            tracing::warn!(
                target: "pipelock::tls",
                conn = meta.id,
                sni = hello.sni.as_deref().unwrap_or(""),
                orig_dst = %dst,
                error = %e,
                "upstream TLS failed; the client gets 502"
            );
            (Err(e), Proto::Http1)
        }
    };
    let down_proto = match up_proto {
        Proto::Http2 => Proto::Http2,
        Proto::Http1 if client_h1 => Proto::Http1,
        Proto::Http1 => Proto::Http2,
    };
    let alpn: Vec<&[u8]> = match (hello.alpn.is_empty(), down_proto) {
        (true, _) => vec![],
        (false, Proto::Http1) => vec![HTTP11],
        (false, Proto::Http2) => vec![H2],
    };
    let server_cfg = match ctx.tls.server_config(&leaf_name, &alpn) {
        Ok(c) => c,
        Err(e) => {
            abort(client);
            return Err(Error::Tls(e));
        }
    };
    let io = CountingIo::new(client, counters.clone());
    let accept = tokio_rustls::TlsAcceptor::from(server_cfg).accept(io);
    let sni_text = hello.sni.clone().unwrap_or_else(|| dst.ip().to_string());
    let stream = match tokio::time::timeout(CLIENT_HANDSHAKE_TIMEOUT, accept).await {
        Err(_) => {
            return Err(Error::DownstreamTls {
                sni: sni_text,
                reason: "client TLS handshake timed out".into(),
            });
        }
        Ok(Err(e)) => {
            return Err(Error::DownstreamTls {
                sni: sni_text,
                reason: client_tls_reason(&e),
            });
        }
        Ok(Ok(s)) => s,
    };
    let negotiated = match stream.get_ref().1.alpn_protocol() {
        Some(p) if p == H2 => Proto::Http2,
        _ => Proto::Http1,
    };
    tracing::debug!(
        target: "pipelock::tls",
        conn = meta.id,
        sni = hello.sni.as_deref().unwrap_or(""),
        orig_dst = %dst,
        client = ?negotiated,
        upstream = ?up_proto,
        "intercepting"
    );
    let (pool, upstream_failure) = match upstream {
        Ok(None) => (Ok(UpstreamPool::new(target, up_proto, keep)), None),
        Ok(Some(io)) => match UpstreamPool::with_first(target, io, up_proto, keep).await {
            Ok(p) => (Ok(p), None),
            Err(e) => (Err(e.to_string()), Some(e)),
        },
        Err(e) => (Err(e.to_string()), Some(e)),
    };
    // Requests on this connection go to the upstream that proved, by its
    // certificate, to be the SNI name: that name is what exemptions trust.
    let meta = match (&pool, &hello.sni) {
        (Ok(_), Some(sni)) => Arc::new(ConnMeta {
            verified_name: Some(sni.trim_end_matches('.').to_ascii_lowercase()),
            ..(**meta).clone()
        }),
        _ => meta.clone(),
    };
    let conn = Arc::new(HttpConn::new(
        ctx,
        meta,
        pool,
        Scheme::HTTPS,
        Authority::try_from(authority).ok(),
        TaskTracker::new(),
    ));
    Ok(Intercepted {
        stream,
        negotiated,
        conn,
        upstream_failure,
    })
}

/// Closes a client connection abruptly.
fn abort<S: ClientStream>(client: Rewind<S>) {
    client.into_inner().abort();
}

fn downstream_http(e: hyper::Error) -> Error {
    Error::DownstreamHttp(e.to_string())
}

/// Explains a failed client handshake, pointing at the CA when the client
/// rejected the agent's certificate.
fn client_tls_reason(e: &std::io::Error) -> String {
    use rustls::AlertDescription as A;
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::AlertReceived(
            alert @ (A::UnknownCA
            | A::BadCertificate
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::AccessDenied),
        )) => format!(
            "the client rejected the agent's certificate ({alert:?}): it does not trust the pipelock CA; \
             give it the output of `pipelock-agent ca export` (SSL_CERT_FILE / SSL_CA_FILE), \
             or list the domain with --passthrough-domain if it pins certificates"
        ),
        Some(other) => other.to_string(),
        None => e.to_string(),
    }
}
