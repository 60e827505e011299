//! Connecting to the original destination and relaying bytes both ways with
//! backpressure (bounded buffers, half-close propagated).
use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use super::Error;

/// Per-direction relay buffer.
const RELAY_BUFFER: usize = 64 * 1024;

/// Connects to `dst` within `timeout`. The agent runs outside the target
/// cgroup and the kernel skips its tgid, so this socket is never redirected.
pub async fn connect_upstream(dst: SocketAddr, timeout: Duration) -> Result<TcpStream, Error> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(dst))
        .await
        .map_err(|_| Error::ConnectTimeout(dst))?
        .map_err(|source| Error::Connect { addr: dst, source })?;
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

/// Closes `stream` with a TCP reset instead of a FIN, so the client sees the
/// failure at once (used when the upstream cannot be reached).
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
