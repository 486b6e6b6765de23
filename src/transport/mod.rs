//! The one seam between QUIC and WebSocket+yamux.
//!
//! Everything above this module sees a [`Session`]: an authenticated, encrypted
//! connection between one agent and one server node that can open and accept
//! bidirectional byte streams. Which transport carries it is known only here.
//! Streams end with FIN (complete) or reset (truncated); readers can tell the two
//! apart, which is how a truncated response becomes an error to the client.

mod error;
mod listener;
mod mux;
pub mod quic;
// Public for the fuzz targets in tests/fuzz; not part of the transport seam.
#[doc(hidden)]
pub mod segment;
mod session;
mod stream;
mod tuning;
pub mod ws;

use std::{net::SocketAddr, time::Duration};

pub use error::TransportError;
pub use listener::{Accepting, Listener};
pub use session::{Session, TransportKind};
pub use stream::{RecvStream, SendStream};
pub use tuning::TransportTuning;

/// Where and how an agent dials.
pub struct Dial<'a> {
    pub addr: SocketAddr,
    /// TLS name to verify.
    pub server_name: &'a str,
    /// `host:port` for the WebSocket request.
    pub host: &'a str,
    pub client_id: &'a str,
    pub tls: rustls::ClientConfig,
    pub tuning: &'a TransportTuning,
    pub timeout: Duration,
}

/// Dials the server over one transport.
pub async fn connect(kind: TransportKind, dial: Dial<'_>) -> Result<Session, TransportError> {
    match kind {
        TransportKind::Quic => {
            quic::connect(
                dial.addr,
                dial.server_name,
                dial.tls,
                dial.tuning,
                dial.timeout,
            )
            .await
        }
        TransportKind::Ws => {
            let mut tls = dial.tls;
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            ws::connect(
                dial.addr,
                dial.server_name,
                dial.host,
                dial.client_id,
                tls,
                dial.tuning,
                dial.timeout,
            )
            .await
        }
    }
}

/// A session over an in-memory pipe, for unit tests above this module that
/// need a `Session` but no network (its peer is a session of its own).
#[cfg(test)]
pub(crate) fn test_session() -> Session {
    use tokio_util::compat::TokioAsyncReadCompatExt;
    let (a, b) = tokio::io::duplex(1 << 16);
    let addr: SocketAddr = "127.0.0.1:1".parse().expect("literal");
    let tuning = TransportTuning::default();
    let peer = mux::session(
        b.compat(),
        None,
        Default::default(),
        mux::Role::Server,
        addr,
        &tuning,
    );
    // The peer lives as long as the test's runtime.
    std::mem::forget(peer);
    Session::from_mux(mux::session(
        a.compat(),
        None,
        Default::default(),
        mux::Role::Client,
        addr,
        &tuning,
    ))
}
