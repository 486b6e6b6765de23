//! A [`Session`]: one agent↔server connection that opens and accepts
//! bidirectional streams, whichever transport carries it.

use std::{fmt, net::SocketAddr, sync::Arc};

use warren_proto::CloseCode;

use super::{
    error::{self, TransportError},
    mux,
    stream::{RecvInner, RecvStream, SendStream},
};

/// Which transport carries a session (recorded in the registry and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Quic,
    /// WebSocket (over TLS/TCP) carrying a yamux session.
    Ws,
}

impl TransportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Quic => "quic",
            TransportKind::Ws => "ws",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One agent↔server connection, whatever carries it.
#[derive(Clone)]
pub struct Session {
    inner: SessionInner,
}

#[derive(Clone)]
enum SessionInner {
    Quic {
        conn: quinn::Connection,
        /// Client-side endpoint, kept alive as long as the session.
        _endpoint: Option<quinn::Endpoint>,
    },
    Mux(Arc<mux::MuxSession>),
}

impl Session {
    pub(crate) fn from_quic(conn: quinn::Connection, endpoint: Option<quinn::Endpoint>) -> Self {
        Session {
            inner: SessionInner::Quic {
                conn,
                _endpoint: endpoint,
            },
        }
    }

    pub(crate) fn from_mux(session: Arc<mux::MuxSession>) -> Self {
        Session {
            inner: SessionInner::Mux(session),
        }
    }

    pub fn kind(&self) -> TransportKind {
        match &self.inner {
            SessionInner::Quic { .. } => TransportKind::Quic,
            SessionInner::Mux(_) => TransportKind::Ws,
        }
    }

    pub fn remote_addr(&self) -> SocketAddr {
        match &self.inner {
            SessionInner::Quic { conn, .. } => conn.remote_address(),
            SessionInner::Mux(m) => m.remote,
        }
    }

    /// Opens a new bidirectional stream. Waits while the peer's stream limit is reached.
    pub async fn open(&self) -> Result<(SendStream, RecvStream), TransportError> {
        match &self.inner {
            SessionInner::Quic { conn, .. } => {
                let (send, recv) = conn.open_bi().await.map_err(error::conn_error)?;
                Ok((
                    SendStream::Quic(send),
                    RecvStream::new(RecvInner::Quic(recv)),
                ))
            }
            SessionInner::Mux(m) => {
                let (send, recv) = m.open().await?;
                Ok((SendStream::Mux(send), RecvStream::new(RecvInner::Mux(recv))))
            }
        }
    }

    /// Accepts the next stream the peer opened; `None` once the session is closed.
    pub async fn accept(&self) -> Option<(SendStream, RecvStream)> {
        match &self.inner {
            SessionInner::Quic { conn, .. } => match conn.accept_bi().await {
                Ok((send, recv)) => Some((
                    SendStream::Quic(send),
                    RecvStream::new(RecvInner::Quic(recv)),
                )),
                Err(_) => None,
            },
            SessionInner::Mux(m) => {
                let (send, recv) = m.accept().await?;
                Some((SendStream::Mux(send), RecvStream::new(RecvInner::Mux(recv))))
            }
        }
    }

    pub fn close(&self, code: CloseCode, reason: &str) {
        match &self.inner {
            SessionInner::Quic { conn, .. } => {
                conn.close(quinn::VarInt::from_u32(code as u32), reason.as_bytes())
            }
            // yamux has no close codes; the control stream already said why.
            SessionInner::Mux(m) => m.close(),
        }
    }

    /// Resolves when the session is closed, with the reason.
    pub async fn closed(&self) -> String {
        match &self.inner {
            SessionInner::Quic { conn, .. } => error::conn_error(conn.closed().await).to_string(),
            SessionInner::Mux(m) => m.closed().await,
        }
    }

    /// A count that grows whenever anything arrives from the peer (QUIC: any
    /// datagram, acknowledgements included; WebSocket: any message). It
    /// shows the peer alive even when no stream data can move: QUIC's
    /// connection-wide flow control, exhausted by streams whose readers
    /// stalled, blocks every stream's writes, the control stream's too, but
    /// not acknowledgements and keep-alives.
    pub fn heard(&self) -> u64 {
        match &self.inner {
            SessionInner::Quic { conn, .. } => conn.stats().udp_rx.datagrams,
            SessionInner::Mux(m) => m.heard.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The transport's estimate of the round trip, where it keeps one (QUIC).
    pub fn rtt(&self) -> Option<std::time::Duration> {
        match &self.inner {
            SessionInner::Quic { conn, .. } => Some(conn.rtt()),
            SessionInner::Mux(_) => None,
        }
    }

    /// Whether the session is already closed.
    pub fn is_closed(&self) -> bool {
        match &self.inner {
            SessionInner::Quic { conn, .. } => conn.close_reason().is_some(),
            SessionInner::Mux(m) => m.close_reason().is_some(),
        }
    }
}
