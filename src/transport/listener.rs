//! The server's tunnel port: QUIC on UDP and TLS + WebSocket on TCP, on the
//! same port number; each accepted attempt completes its handshake separately.

use std::{net::SocketAddr, sync::Arc};

use super::{error::TransportError, quic, session::Session, tuning::TransportTuning, ws};

/// The server's tunnel port: QUIC on UDP and WebSocket on TCP, same number.
pub struct Listener {
    quic: quic::Listener,
    tcp: tokio::net::TcpListener,
    ws: Arc<ws::Acceptor>,
}

/// An agent connection attempt, not yet through its handshake.
pub enum Accepting {
    Quic(Box<quinn::Incoming>),
    Ws {
        tcp: tokio::net::TcpStream,
        remote: SocketAddr,
        acceptor: Arc<ws::Acceptor>,
    },
}

impl Accepting {
    pub fn remote_addr(&self) -> SocketAddr {
        match self {
            Accepting::Quic(incoming) => incoming.remote_address(),
            Accepting::Ws { remote, .. } => *remote,
        }
    }

    /// Turns the attempt away before any handshake work (QUIC: a
    /// CONNECTION_REFUSED close; WebSocket: the TCP connection is closed).
    pub fn refuse(self) {
        match self {
            Accepting::Quic(incoming) => incoming.refuse(),
            Accepting::Ws { .. } => {}
        }
    }

    /// Completes the transport handshake (TLS, and the upgrade for WS).
    pub async fn establish(self) -> Result<Session, TransportError> {
        match self {
            Accepting::Quic(incoming) => quic::establish(*incoming).await,
            Accepting::Ws {
                tcp,
                remote,
                acceptor,
            } => acceptor.establish(tcp, remote).await,
        }
    }
}

impl Listener {
    /// Binds UDP and TCP on `addr` (with port 0, both get the same free
    /// port), the TCP side with room for `backlog` waiting connections;
    /// `reset_secret` keys QUIC stateless resets
    /// (keep it stable across restarts: see `quic::Listener::bind`).
    pub async fn bind(
        addr: SocketAddr,
        tls: rustls::ServerConfig,
        tuning: &TransportTuning,
        reset_secret: [u8; 32],
        backlog: u32,
    ) -> Result<Self, TransportError> {
        // With port 0 the UDP port is picked first; if its TCP twin is taken,
        // try again (a handful of times) with another.
        let attempts = if addr.port() == 0 { 8 } else { 1 };
        let mut last = None;
        for _ in 0..attempts {
            let quic = quic::Listener::bind(addr, tls.clone(), tuning, reset_secret)?;
            let port = quic.local_addr()?.port();
            match crate::accept::bind(SocketAddr::new(addr.ip(), port), backlog) {
                Ok(tcp) => {
                    let mut ws_tls = tls.clone();
                    ws_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
                    return Ok(Listener {
                        quic,
                        tcp,
                        ws: Arc::new(ws::Acceptor::new(ws_tls, tuning)),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(TransportError::Io(last.expect("at least one attempt")))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.quic.local_addr()
    }

    /// The next connection attempt on either transport; `None` once closed.
    pub async fn accept(&self) -> Option<Accepting> {
        tokio::select! {
            incoming = self.quic.accept() => incoming.map(|i| Accepting::Quic(Box::new(i))),
            (tcp, remote) = crate::accept::next(&self.tcp, "TCP tunnel") => {
                Some(Accepting::Ws { tcp, remote, acceptor: self.ws.clone() })
            }
        }
    }

    pub async fn close(&self) {
        self.quic.close().await;
    }
}
