//! Zero-copy byte relay between two TCP sockets with `splice(2)` through a
//! pipe (socket → pipe → socket), driven by tokio's readiness: used for raw
//! relays, where nothing is scanned and the bytes need never be copied into
//! the agent. End of stream is passed on as a half-close, as
//! `tokio::io::copy_bidirectional` does.
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    sync::atomic::{AtomicU64, Ordering},
};

use tokio::{io::Interest, net::TcpStream};

/// The pipe's default capacity, and bytes moved per `splice(2)` call when
/// it cannot be raised.
const CHUNK: usize = 64 * 1024;
/// Capacity asked for each pipe (`F_SETPIPE_SZ`): a bulk relay moves four
/// times as much per pair of calls. Pages are taken only while bytes are
/// in flight.
const PIPE_SIZE: usize = 256 * 1024;

/// A pipe, both ends non-blocking and close-on-exec.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes it holds.
    capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned here only.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor owned here; it returns the new
        // capacity, or fails (over a user's pipe limit) leaving the default.
        let grown = unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_SIZE as libc::c_int,
            )
        };
        let capacity = usize::try_from(grown).unwrap_or(CHUNK).max(CHUNK);
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }
}

/// One `splice(2)` call, non-blocking.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors, null offsets (sockets and pipes have none).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Moves bytes from `from` to `to` until `from` ends, then shuts down the
/// writing side of `to`; adds each byte delivered to `count`. Returns the
/// total.
pub async fn copy(from: &TcpStream, to: &TcpStream, count: &AtomicU64) -> io::Result<u64> {
    let pipe = Pipe::new()?;
    let (pr, pw) = (pipe.read.as_raw_fd(), pipe.write.as_raw_fd());
    let mut total = 0u64;
    loop {
        // Fill the pipe from the source (it is empty here).
        let mut in_pipe = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), pw, pipe.capacity)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if in_pipe == 0 {
            socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write)?;
            return Ok(total);
        }
        // Drain it into the destination.
        while in_pipe > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || splice(pr, to.as_raw_fd(), in_pipe)) {
                Ok(n) => {
                    in_pipe -= n;
                    total += n as u64;
                    count.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.expect("connect"), s.expect("accept").0)
    }

    /// 8 MB each way through two spliced socket pairs arrive intact, and an
    /// end of stream on one side reaches the other as EOF.
    #[tokio::test]
    async fn relays_both_ways_and_passes_eof_on() {
        let (mut client, agent_down) = pair().await;
        let (agent_up, mut server) = pair().await;
        let data: Vec<u8> = (0..8u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let relay = async {
            tokio::try_join!(
                copy(&agent_down, &agent_up, &up),
                copy(&agent_up, &agent_down, &down)
            )
        };
        let ends = async {
            let d = data.clone();
            let to_server = async {
                client.write_all(&d).await.expect("client write");
                client.shutdown().await.expect("client shutdown");
                let mut back = Vec::new();
                client.read_to_end(&mut back).await.expect("client read");
                back
            };
            let at_server = async {
                let mut got = Vec::new();
                server.read_to_end(&mut got).await.expect("server read");
                server.write_all(&got).await.expect("server write");
                server.shutdown().await.expect("server shutdown");
                got
            };
            tokio::join!(to_server, at_server)
        };
        let (r, (back, got)) = tokio::join!(relay, ends);
        let (a, b) = r.expect("relay");
        assert_eq!(got, data);
        assert_eq!(back, data);
        assert_eq!((a, b), (data.len() as u64, data.len() as u64));
        assert_eq!(up.load(Ordering::Relaxed), data.len() as u64);
        assert_eq!(down.load(Ordering::Relaxed), data.len() as u64);
    }
}
