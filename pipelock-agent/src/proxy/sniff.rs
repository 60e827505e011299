//! Protocol sniffing on a redirected connection, by peeking (nothing is
//! consumed, so any branch can still relay the original bytes): a TLS
//! ClientHello (parsed by rustls' `Acceptor` for SNI and ALPN), plaintext
//! HTTP/1 (a known method token, or the h2c prior-knowledge preface), or
//! anything else. A client that sends nothing within the sniff timeout (a
//! server-speaks-first protocol) counts as "other". A partial first message
//! is looked at again only when the socket reports new bytes.
use std::time::Duration;

use tokio::{io::Interest, net::TcpStream, time::Instant};

/// Largest ClientHello the agent waits for (several records are allowed).
const MAX_HELLO: usize = 64 * 1024;
/// How long the rest of a started ClientHello or request line may take.
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(10);

/// The parts of a ClientHello the proxy decides on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// Server Name Indication (a DNS name), if sent.
    pub sni: Option<String>,
    /// ALPN protocols offered, in the client's order.
    pub alpn: Vec<Vec<u8>>,
}

/// What the first bytes of a connection look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// A TLS handshake.
    Tls(ClientHelloInfo),
    /// Plaintext HTTP/1.x (`h2c_prior_knowledge`: the HTTP/2 preface instead).
    Http { h2c_prior_knowledge: bool },
    /// Something else (including a client that waits for the server).
    Other,
    /// The client closed before sending anything.
    Closed,
}

/// Why sniffing gave up on a connection.
#[derive(Debug, thiserror::Error)]
pub enum SniffError {
    #[error("reading the first bytes: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed TLS ClientHello: {0}")]
    BadHello(String),
    #[error("TLS ClientHello larger than {MAX_HELLO} bytes")]
    HelloTooLarge,
    #[error("client stopped sending in the middle of its first message ({0} bytes)")]
    Stalled(usize),
}

const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

enum Verdict {
    Done(Sniffed),
    NeedMore,
}

/// Classifies `stream` by its first bytes; `idle` bounds the wait for the first byte.
/// Waits on readiness: a partial first message is looked at again only when
/// the kernel says more bytes arrived, never on a timer.
pub async fn sniff(stream: &TcpStream, idle: Duration) -> Result<Sniffed, SniffError> {
    let mut buf = vec![0u8; 2048];
    let first_deadline = Instant::now() + idle;
    let mut complete_deadline: Option<Instant> = None;
    let mut last_len = 0;
    loop {
        let deadline = complete_deadline.unwrap_or(first_deadline);
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Err(_) if complete_deadline.is_none() => return Ok(Sniffed::Other),
            Err(_) => return Err(SniffError::Stalled(last_len)),
            Ok(r) => r?,
        }
        // Peeks without consuming. Nothing new since the last look counts
        // as "would block", which clears the readiness the queued bytes left
        // (unless an event came in meanwhile), so the next wait is for new data.
        let peeked = stream.try_io(Interest::READABLE, || {
            let n = peek(stream, &mut buf)?;
            if n != 0 && n == last_len {
                Err(std::io::ErrorKind::WouldBlock.into())
            } else {
                Ok(n)
            }
        });
        let n = match peeked {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Ok(if last_len == 0 {
                Sniffed::Closed
            } else {
                Sniffed::Other
            });
        }
        match classify(&buf[..n])? {
            Verdict::Done(s) => return Ok(s),
            Verdict::NeedMore => {}
        }
        complete_deadline.get_or_insert(Instant::now() + COMPLETE_TIMEOUT);
        if n == buf.len() {
            if buf.len() >= MAX_HELLO {
                return Err(SniffError::HelloTooLarge);
            }
            buf.resize((buf.len() * 2).min(MAX_HELLO), 0);
        }
        last_len = n;
    }
}

/// A non-blocking `recv(MSG_PEEK)` into `buf`.
fn peek(stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: `buf` is valid for writes of its length; the fd is the
    // stream's own, open for the duration of the call.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The classifier `sniff` runs on each peek, as a pure function: `Ok(None)`
/// means the first message is not complete yet (more bytes are needed).
/// Public as an entry point for the fuzz targets (`pipelock-agent/fuzz`).
pub fn classify_bytes(data: &[u8]) -> Result<Option<Sniffed>, SniffError> {
    Ok(match classify(data)? {
        Verdict::Done(s) => Some(s),
        Verdict::NeedMore => None,
    })
}

fn classify(data: &[u8]) -> Result<Verdict, SniffError> {
    // (`sniff` never passes an empty peek; an empty slice needs more bytes.)
    if data.first() == Some(&0x16) {
        // TLS handshake record; version major 3 (SSL3 .. TLS 1.3 all say 3).
        if data.len() >= 2 && data[1] != 0x03 {
            return Ok(Verdict::Done(Sniffed::Other));
        }
        return parse_hello(data);
    }
    if is_prefix_of_any(data, &[H2_PREFACE]) {
        return Ok(if data.len() >= H2_PREFACE.len() {
            Verdict::Done(Sniffed::Http {
                h2c_prior_knowledge: true,
            })
        } else {
            Verdict::NeedMore
        });
    }
    for m in METHODS {
        if data.starts_with(m) {
            return Ok(Verdict::Done(Sniffed::Http {
                h2c_prior_knowledge: false,
            }));
        }
    }
    if is_prefix_of_any(data, METHODS) {
        return Ok(Verdict::NeedMore);
    }
    Ok(Verdict::Done(Sniffed::Other))
}

fn is_prefix_of_any(data: &[u8], candidates: &[&[u8]]) -> bool {
    candidates
        .iter()
        .any(|c| c.starts_with(data) || data.starts_with(c))
}

fn parse_hello(data: &[u8]) -> Result<Verdict, SniffError> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = data;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(SniffError::BadHello(e.to_string())),
        }
    }
    match acceptor.accept() {
        Ok(None) => Ok(Verdict::NeedMore),
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            Ok(Verdict::Done(Sniffed::Tls(ClientHelloInfo {
                sni: hello.server_name().map(str::to_owned),
                alpn: hello
                    .alpn()
                    .map(|it| it.map(<[u8]>::to_vec).collect())
                    .unwrap_or_default(),
            })))
        }
        Err((e, _alert)) => Err(SniffError::BadHello(e.to_string())),
    }
}

/// Sniffs a stream that cannot be peeked (a CONNECT tunnel's upgraded
/// stream) by reading its first message into a buffer; the bytes read are
/// returned so they can be replayed ([`Rewind`]).
pub async fn sniff_read<S>(stream: &mut S, idle: Duration) -> Result<(Sniffed, Vec<u8>), SniffError>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = vec![0u8; 4096];
    let first_deadline = Instant::now() + idle;
    let mut complete_deadline: Option<Instant> = None;
    loop {
        let deadline = complete_deadline.unwrap_or(first_deadline);
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) if complete_deadline.is_none() => return Ok((Sniffed::Other, buf)),
            Err(_) => return Err(SniffError::Stalled(buf.len())),
            Ok(r) => r?,
        };
        if n == 0 {
            let s = if buf.is_empty() {
                Sniffed::Closed
            } else {
                Sniffed::Other
            };
            return Ok((s, buf));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Verdict::Done(s) = classify(&buf)? {
            return Ok((s, buf));
        }
        if buf.len() >= MAX_HELLO {
            return Err(SniffError::HelloTooLarge);
        }
        complete_deadline.get_or_insert(Instant::now() + COMPLETE_TIMEOUT);
    }
}

/// A stream whose first bytes (read while sniffing) are replayed before the
/// rest of it.
pub struct Rewind<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(inner: S, prefix: Vec<u8>) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }

    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The stream and the prefix bytes not read yet.
    pub fn into_parts(mut self) -> (S, Vec<u8>) {
        self.prefix.drain(..self.pos);
        (self.inner, self.prefix)
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(out.remaining());
            out.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A client connection dispatch can serve: a redirected `TcpStream`
/// (sniffed by peeking, reset on failure) or any other byte stream, such as
/// a CONNECT tunnel (sniffed by reading and replaying, closed on failure).
pub trait ClientStream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static
{
    /// Classifies the first bytes; returns what was consumed to get there.
    fn sniff_first(
        &mut self,
        idle: Duration,
    ) -> impl std::future::Future<Output = Result<(Sniffed, Vec<u8>), SniffError>> + Send;
    /// Closes the connection abruptly (a TCP reset where there is one).
    fn abort(self);
    /// The TCP socket itself, when the stream is one (raw relays then
    /// splice it); else the stream back.
    fn into_tcp(self) -> Result<TcpStream, Self>
    where
        Self: Sized,
    {
        Err(self)
    }
}

impl ClientStream for TcpStream {
    async fn sniff_first(&mut self, idle: Duration) -> Result<(Sniffed, Vec<u8>), SniffError> {
        Ok((sniff(self, idle).await?, Vec::new()))
    }
    fn abort(self) {
        super::relay::reset(self);
    }
    fn into_tcp(self) -> Result<TcpStream, Self> {
        Ok(self)
    }
}

impl ClientStream for hyper_util::rt::TokioIo<hyper::upgrade::Upgraded> {
    async fn sniff_first(&mut self, idle: Duration) -> Result<(Sniffed, Vec<u8>), SniffError> {
        sniff_read(self, idle).await
    }
    fn abort(self) {
        drop(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt as _;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.expect("connect"), s.expect("accept").0)
    }

    #[tokio::test]
    async fn http_methods_and_other() {
        for (bytes, want) in [
            (
                &b"GET / HTTP/1.1\r\n"[..],
                Sniffed::Http {
                    h2c_prior_knowledge: false,
                },
            ),
            (
                b"POST /x HTTP/1.1\r\n",
                Sniffed::Http {
                    h2c_prior_knowledge: false,
                },
            ),
            (
                H2_PREFACE,
                Sniffed::Http {
                    h2c_prior_knowledge: true,
                },
            ),
            (b"SSH-2.0-OpenSSH_9\r\n", Sniffed::Other),
            (b"\x00\x01\x02binary", Sniffed::Other),
        ] {
            let (mut c, s) = pair().await;
            c.write_all(bytes).await.expect("write");
            assert_eq!(
                sniff(&s, Duration::from_secs(2)).await.expect("sniff"),
                want
            );
        }
    }

    #[tokio::test]
    async fn split_method_waits_for_more() {
        let (mut c, s) = pair().await;
        c.write_all(b"GE").await.expect("write");
        let task = tokio::spawn(async move { sniff(&s, Duration::from_secs(2)).await });
        tokio::time::sleep(Duration::from_millis(30)).await;
        c.write_all(b"T / HTTP/1.1\r\n").await.expect("write");
        let got = task.await.expect("join").expect("sniff");
        assert_eq!(
            got,
            Sniffed::Http {
                h2c_prior_knowledge: false
            }
        );
    }

    #[tokio::test]
    async fn silent_client_is_other_and_closed_is_closed() {
        let (_c, s) = pair().await;
        assert_eq!(
            sniff(&s, Duration::from_millis(50)).await.expect("sniff"),
            Sniffed::Other
        );
        let (c, s) = pair().await;
        drop(c);
        assert_eq!(
            sniff(&s, Duration::from_secs(2)).await.expect("sniff"),
            Sniffed::Closed
        );
    }

    #[tokio::test]
    async fn client_hello_gives_sni_and_alpn() {
        let (c, s) = pair().await;
        let mut roots = rustls::RootCertStore::empty();
        let ck = rcgen::generate_simple_self_signed(vec!["x.test".into()]).expect("cert");
        roots.add(ck.cert.der().clone()).expect("root");
        let mut cfg = rustls::ClientConfig::builder_with_provider(crate::tls::config::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let name = rustls_pki_types::ServerName::try_from("Api.Example.test").expect("name");
        let client = tokio::spawn(async move { connector.connect(name, c).await.map(|_| ()) });
        let got = sniff(&s, Duration::from_secs(2)).await.expect("sniff");
        assert_eq!(
            got,
            Sniffed::Tls(ClientHelloInfo {
                sni: Some("api.example.test".into()),
                alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            })
        );
        drop(s);
        let _ = client.await;
    }

    /// A ClientHello that arrives in pieces, with pauses between them, is
    /// waited for on readiness and parsed once whole.
    #[tokio::test]
    async fn split_client_hello_is_waited_for_on_readiness() {
        let hello = {
            let cfg = rustls::ClientConfig::builder_with_provider(crate::tls::config::provider())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            let name = rustls_pki_types::ServerName::try_from("split.test").expect("name");
            let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("conn");
            let mut out = Vec::new();
            conn.write_tls(&mut out).expect("hello");
            out
        };
        let (mut c, s) = pair().await;
        let pieces = [
            hello[..3].to_vec(),
            hello[3..40].to_vec(),
            hello[40..].to_vec(),
        ];
        let writer = tokio::spawn(async move {
            for p in pieces {
                c.write_all(&p).await.expect("write");
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            c
        });
        let started = std::time::Instant::now();
        let got = sniff(&s, Duration::from_secs(2)).await.expect("sniff");
        assert!(started.elapsed() >= Duration::from_millis(250));
        let Sniffed::Tls(info) = got else {
            panic!("not TLS: {got:?}")
        };
        assert_eq!(info.sni.as_deref(), Some("split.test"));
        drop(writer.await);
    }

    #[tokio::test]
    async fn garbage_after_tls_header_is_an_error() {
        let (mut c, s) = pair().await;
        c.write_all(b"\x16\x03\x01\x00\x05\x63\x00\x00\x01\x00")
            .await
            .expect("write");
        assert!(sniff(&s, Duration::from_secs(2)).await.is_err());
    }
}
