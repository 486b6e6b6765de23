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

/// Two sessions joined by an in-memory pipe, for unit tests that need a
/// `Session` but no network.
#[cfg(test)]
pub(crate) fn test_pair() -> (Session, Session) {
    use tokio_util::compat::TokioAsyncReadCompatExt;
    let (a, b) = tokio::io::duplex(1 << 16);
    let addr: SocketAddr = "127.0.0.1:1".parse().expect("literal");
    let tuning = TransportTuning::default();
    let session = |io: tokio::io::DuplexStream, role| {
        Session::from_mux(mux::session(
            io.compat(),
            None,
            Default::default(),
            role,
            addr,
            &tuning,
        ))
    };
    (session(a, mux::Role::Client), session(b, mux::Role::Server))
}

/// One session of a [`test_pair`] (its peer lives as long as the runtime).
#[cfg(test)]
pub(crate) fn test_session() -> Session {
    let (session, peer) = test_pair();
    std::mem::forget(peer);
    session
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control stream's reader keeps a buffer the size of its frames, not
    /// of a request stream's first read: an idle connection lives for days.
    #[tokio::test]
    async fn small_reads_keep_a_small_buffer() {
        let (client, server) = test_pair();
        let (mut send, _) = client.open().await.unwrap();
        for seq in 0..20 {
            let ping = warren_proto::Control::Ping { seq };
            send.write_frame(&ping, 1024).await.unwrap();
        }
        let (_, mut recv) = server.accept().await.unwrap();
        recv.small_reads(crate::control::CONTROL_READ);
        for seq in 0..20 {
            let frame: warren_proto::Control = recv.read_frame(1024).await.unwrap();
            assert_eq!(frame, warren_proto::Control::Ping { seq });
        }
        let held = recv.buffer_capacity();
        assert!(
            held <= 4 * crate::control::CONTROL_READ,
            "{held} bytes held for tiny frames"
        );
    }
}
