//! Connecting to the original destination and relaying bytes both ways with
//! backpressure (bounded buffers, half-close propagated), cut when idle or
//! too old ([`relay_limited`]: raw relays, passthrough, unscanned upgrades).
use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpSocket, TcpStream},
};

use super::{
    Error,
    counting::{Counters, CountingIo},
};

/// Per-direction relay buffer.
const RELAY_BUFFER: usize = 64 * 1024;

/// SO_MARK put on every upstream socket (0: none). Set once at start.
static SOCKET_MARK: AtomicU32 = AtomicU32::new(0);

/// Marks every upstream socket from now on with `mark`, which the kernel
/// program exempts from redirection (`interceptor.socket_mark`).
pub fn set_socket_mark(mark: u32) {
    SOCKET_MARK.store(mark, Ordering::Relaxed);
}

/// Connects to `dst` within `timeout`. The socket carries the agent's mark,
/// so the kernel never redirects it back to the agent, whatever pid or
/// network namespace the agent runs in.
pub async fn connect_upstream(dst: SocketAddr, timeout: Duration) -> Result<TcpStream, Error> {
    let fail = |source| Error::Connect { addr: dst, source };
    let socket = if dst.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(fail)?;
    let mark = SOCKET_MARK.load(Ordering::Relaxed);
    if mark != 0 {
        socket2::SockRef::from(&socket)
            .set_mark(mark)
            .map_err(|e| {
                fail(std::io::Error::new(
                    e.kind(),
                    format!("setting SO_MARK {mark:#x} (needs CAP_NET_ADMIN): {e}"),
                ))
            })?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(dst))
        .await
        .map_err(|_| Error::ConnectTimeout(dst))?
        .map_err(fail)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Copies both ways until both sides are done; returns (client→upstream,
/// upstream→client) byte counts.
pub async fn relay<C, U>(client: &mut C, upstream: &mut U) -> Result<(u64, u64), Error>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(client, upstream, RELAY_BUFFER, RELAY_BUFFER)
        .await
        .map_err(Error::Relay)
}

/// Idle and lifetime limits of a relay.
#[derive(Clone, Copy, Debug)]
pub struct RelayLimits {
    /// Closed when no byte moved either way for this long.
    pub idle: Duration,
    /// Closed when it lasted this long (None: no limit).
    pub max: Option<Duration>,
}

/// Why a limited relay ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides finished (or one failed: see the result).
    Done,
    /// No byte moved for `idle`.
    Idle,
    /// It reached `max`.
    Lifetime,
}

impl RelayEnd {
    /// For log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            RelayEnd::Done => "done",
            RelayEnd::Idle => "idle limit reached",
            RelayEnd::Lifetime => "lifetime limit reached",
        }
    }
}

/// [`relay`] under `limits`, checked once a second. Returns how it ended
/// and the (client→upstream, upstream→client) byte counts so far.
pub async fn relay_limited<C, U>(
    client: C,
    upstream: &mut U,
    limits: RelayLimits,
) -> (Result<RelayEnd, Error>, (u64, u64))
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let counters = Counters::default();
    let mut counted = CountingIo::new(client, counters.clone());
    let relaying = relay(&mut counted, upstream);
    limited(relaying, &counters, limits).await
}

/// [`relay_limited`] between two TCP sockets with `splice(2)`: the bytes
/// go from one socket to the other through a kernel pipe and are never
/// copied into the agent (nothing of a raw relay is scanned). `prefix`,
/// already read from the client (the sniffed bytes), is sent first.
pub async fn relay_limited_tcp(
    client: TcpStream,
    prefix: &[u8],
    upstream: &mut TcpStream,
    limits: RelayLimits,
) -> (Result<RelayEnd, Error>, (u64, u64)) {
    let counters = Counters::default();
    let relaying = async {
        use tokio::io::AsyncWriteExt as _;
        upstream.write_all(prefix).await.map_err(Error::Relay)?;
        counters
            .read
            .fetch_add(prefix.len() as u64, Ordering::Relaxed);
        let upstream = &*upstream;
        tokio::try_join!(
            super::splice::copy(&client, upstream, &counters.read),
            super::splice::copy(upstream, &client, &counters.written),
        )
        .map_err(Error::Relay)
    };
    limited(relaying, &counters, limits).await
}

/// Runs `relaying` until it ends or `limits` cut it (checked once a second
/// against `counters`).
async fn limited<T>(
    relaying: impl std::future::Future<Output = Result<T, Error>>,
    counters: &Counters,
    limits: RelayLimits,
) -> (Result<RelayEnd, Error>, (u64, u64)) {
    tokio::pin!(relaying);
    let started = tokio::time::Instant::now();
    let mut last = counters.get();
    let mut last_move = started;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let result = loop {
        tokio::select! {
            r = &mut relaying => break r.map(|_| RelayEnd::Done),
            _ = tick.tick() => {
                let now = tokio::time::Instant::now();
                let seen = counters.get();
                if seen != last {
                    last = seen;
                    last_move = now;
                }
                if now.duration_since(last_move) >= limits.idle {
                    break Ok(RelayEnd::Idle);
                }
                if limits.max.is_some_and(|max| now.duration_since(started) >= max) {
                    break Ok(RelayEnd::Lifetime);
                }
            }
        }
    };
    (result, counters.get())
}

/// Closes `stream` with a TCP reset instead of a FIN, so the client sees the
/// failure at once (used when the upstream cannot be reached).
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
