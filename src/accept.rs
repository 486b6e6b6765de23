//! Listening and accepting TCP connections: a listen backlog sized for bursts
//! (the 128 that `TcpListener::bind` asks for overflows when a few hundred
//! clients connect at once, and each overflow costs its client a 1 s
//! retransmission), and no spinning: a failed accept (typically EMFILE, out
//! of file descriptors) pauses briefly instead of retrying at once. Every TCP
//! listener uses it: the client API, the cluster link and the WebSocket side
//! of the tunnel port. And the descriptors to accept with: at
//! start the server raises its soft limit to the hard one (1,024 by default
//! on Linux, which a thousand idle clients would exhaust).

use std::{net::SocketAddr, time::Duration};

use tokio::net::{TcpListener, TcpStream};

/// Pause after a failed accept: long enough for closing connections to free
/// descriptors, short enough that clients barely notice.
const BACKOFF: Duration = Duration::from_millis(50);

/// Default listen backlog: 4,096 connections may wait for `accept` (a room's
/// worth of listeners seeking at once, a thousand agents returning after a
/// restart); the kernel caps it at `net.core.somaxconn`.
pub const DEFAULT_BACKLOG: u32 = 4096;

/// A TCP listener on `addr` with room for `backlog` connections waiting to
/// be accepted (address reuse on, as `TcpListener::bind` has it).
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// The next accepted connection; `what` names the listener in the log.
pub async fn next(listener: &TcpListener, what: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(pair) => return pair,
            Err(e) => {
                tracing::warn!("accepting a {what} connection failed: {e}");
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }
}

/// Stops listening and hands over the connections already waiting in the
/// kernel's accept queue (their clients finished the handshake and sent, or
/// are sending, a request): closing the socket with them queued would reset
/// them. Each is a real `accept(2)` until the queue is empty: tokio's
/// `accept` would answer "pending" for connections whose readiness its
/// driver has not yet seen, and those would be reset.
pub fn backlog(listener: TcpListener, what: &str) -> Vec<(TcpStream, SocketAddr)> {
    let mut waiting = Vec::new();
    let listener = match listener.into_std() {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!("draining the {what} listener failed: {e}");
            return waiting;
        }
    };
    // Non-blocking already (tokio's), so this ends at an empty queue; the
    // queue is bounded by the listen backlog.
    while let Ok((stream, peer)) = listener.accept() {
        match stream
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(stream))
        {
            Ok(stream) => waiting.push((stream, peer)),
            Err(e) => tracing::warn!("taking a waiting {what} connection failed: {e}"),
        }
    }
    waiting
}

/// Raises this process's soft limit on open files to its hard limit;
/// returns `(before, now)`.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere
pub fn raise_fd_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur as u64;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur as u64))
}
