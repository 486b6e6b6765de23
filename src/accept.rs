//! Accepting TCP connections without spinning: a failed accept (typically
//! EMFILE, out of file descriptors) pauses briefly instead of retrying at once.
//! Every TCP listener uses it: the client API, the cluster link and the
//! WebSocket side of the tunnel port.

use std::{net::SocketAddr, time::Duration};

use tokio::net::{TcpListener, TcpStream};

/// Pause after a failed accept: long enough for closing connections to free
/// descriptors, short enough that clients barely notice.
const BACKOFF: Duration = Duration::from_millis(50);

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
